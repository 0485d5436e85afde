/*
 * The descriptor table (see fd-table.h): a two-level array indexed by descriptor number. The
 * first chunk is static, so programs with few descriptors never allocate; further chunks
 * are allocated when a shim descriptor lands there and are never freed, which keeps
 * lock-free lookups safe.
 */
#include "fd-table.h"
#include "fork.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define CHUNK_BITS KC_FD_CHUNK_BITS
#define CHUNK KC_FD_CHUNK
#define CHUNKS KC_FD_CHUNKS

typedef _Atomic uintptr_t slot_t;

static slot_t first_chunk[CHUNK];
slot_t *_Atomic kc_fd_chunks[CHUNKS] = { first_chunk };
static atomic_int highest_chunk;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fork_hooks_once = PTHREAD_ONCE_INIT;

void kc_lock(void)
{
	/* Registered on first use, so programs that never touch kdbus get no fork hooks. */
	pthread_once(&fork_hooks_once, kc_fork_hooks_install);
	pthread_mutex_lock(&lock);
}

void kc_unlock(void)
{
	pthread_mutex_unlock(&lock);
}

int kc_fd_set(int fd, enum kc_fd_kind kind, struct kc_conn *owner)
{
	if (fd < 0 || fd >= CHUNKS * CHUNK)
		return -1;
	int c = fd >> CHUNK_BITS;
	slot_t *chunk = atomic_load_explicit(&kc_fd_chunks[c], memory_order_relaxed);
	if (!chunk) {
		chunk = calloc(CHUNK, sizeof *chunk);
		if (!chunk)
			return -1;
		atomic_store_explicit(&kc_fd_chunks[c], chunk, memory_order_release);
	}
	if (c > atomic_load_explicit(&highest_chunk, memory_order_relaxed))
		atomic_store_explicit(&highest_chunk, c, memory_order_relaxed);
	atomic_store_explicit(&chunk[fd & (CHUNK - 1)], (uintptr_t)owner | (uintptr_t)kind, memory_order_release);
	return 0;
}

void kc_fd_clear(int fd)
{
	if (fd < 0 || fd >= CHUNKS * CHUNK)
		return;
	slot_t *chunk = atomic_load_explicit(&kc_fd_chunks[fd >> CHUNK_BITS], memory_order_relaxed);
	if (chunk)
		atomic_store_explicit(&chunk[fd & (CHUNK - 1)], 0, memory_order_release);
}

int kc_fd_highest(void)
{
	return ((atomic_load_explicit(&highest_chunk, memory_order_relaxed) + 1) << CHUNK_BITS) - 1;
}
