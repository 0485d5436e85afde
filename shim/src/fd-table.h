/*
 * What the shim knows about a descriptor number in this process: nothing (almost every
 * descriptor), a kdbus descriptor the program holds (over the socket transport, or a CUSE
 * device the kernel carries), or one of the shim's own descriptors.
 * Looking a number up takes no lock and allocates nothing, because every read, write,
 * close, ioctl and mmap of the program does it. Changes happen under kc_lock().
 */
#ifndef KC_FD_TABLE_H
#define KC_FD_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct kc_conn;

enum kc_fd_kind {
	KC_FD_NONE = 0,
	KC_FD_USER,     /* the program's kdbus descriptor; owner is its connection */
	KC_FD_INTERNAL, /* the shim's own; owner is its connection, or NULL for a reserved number */
	KC_FD_CUSE,     /* the program's CUSE kdbus device; owner is its open file (a connection) */
};

struct kc_fd_entry {
	enum kc_fd_kind kind;
	struct kc_conn *owner;
};

/* The table's layout, for the inlined lookup: chunks of entries indexed by number. */
#define KC_FD_CHUNK_BITS 10
#define KC_FD_CHUNK (1 << KC_FD_CHUNK_BITS)
#define KC_FD_CHUNKS 4096 /* 4 Mi descriptors, beyond the kernel's default nr_open */
/* An entry is the owner pointer with the kind in its low bits (owners are 8-aligned). */
extern _Atomic uintptr_t *_Atomic kc_fd_chunks[KC_FD_CHUNKS];

static inline struct kc_fd_entry kc_fd_get(int fd)
{
	struct kc_fd_entry e = { KC_FD_NONE, NULL };
	if (fd < 0 || fd >= KC_FD_CHUNKS * KC_FD_CHUNK)
		return e;
	_Atomic uintptr_t *chunk = atomic_load_explicit(&kc_fd_chunks[fd >> KC_FD_CHUNK_BITS], memory_order_acquire);
	if (!chunk)
		return e;
	uintptr_t v = atomic_load_explicit(&chunk[fd & (KC_FD_CHUNK - 1)], memory_order_acquire);
	e.kind = (enum kc_fd_kind)(v & 3);
	e.owner = (struct kc_conn *)(v & ~(uintptr_t)3);
	return e;
}

/* Records fd; -1 if the number is beyond what the table holds or memory runs out. */
int kc_fd_set(int fd, enum kc_fd_kind kind, struct kc_conn *owner);
void kc_fd_clear(int fd);

/* The highest number the table may hold an entry for, to bound scans over ranges. */
int kc_fd_highest(void);

/*
 * The lock over the table and the process-local state hanging off it (connections, the
 * reserve). Never held across blocking I/O. Held across fork() (see fork.h), so a child
 * never inherits it locked and sees that state whole.
 */
void kc_lock(void);
void kc_unlock(void);

#endif
