/*
 * A kdbus connection as this process sees it: the daemon socket (which the program's
 * descriptors share), the pool once HELLO handed it over, and the page it
 * shares with the other processes that hold it (the multiplexer and the reference count).
 * An open CUSE device is one too (cuse): the kernel carries the file, the socket is the side
 * channel (side-channel.h), and there is no multiplexer.
 *
 * References: every program descriptor of the connection and every operation in flight
 * holds one, in this process (refs) and in the shared count. The last one in this process
 * closes the shim's own descriptors and unmaps the page. The last one anywhere sends CLOSE
 * first, so the daemon releases the handle before close() returns, as kdbus did at the
 * last close (docs/socket-protocol.md, Release).
 */
#ifndef KC_CONN_H
#define KC_CONN_H

#include "fd-table.h"
#include "mux.h"
#include "side-channel.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Which file a descriptor number must still refer to. */
struct kc_ident {
	dev_t dev;
	ino_t ino;
};

struct kc_conn {
	/* Under kc_lock, like the descriptors below. */
	unsigned refs;     /* program descriptors in this process + operations in flight */
	unsigned user_fds; /* program descriptors in this process */
	/* Whether the shared count sees every reference: false for a descriptor the shim did not open. */
	bool counted;
	bool release_handle; /* the shared count reached zero: send CLOSE before going */
	int sock;            /* the shim's own descriptor of the socket; -1 if it was lost */
	int pool;            /* the read-only pool; -1 until HELLO or POOL brought it */
	/* cuse: the eventfd that wakes the file's pollers (side-channel.h); -1 without one */
	int wake;
	/* cuse: the eventfd the daemon keeps to the file's readiness, for epoll (cuse-epoll.h); -1 until asked */
	int ready;
	uint64_t pool_size;
	bool shortcuts;      /* HELLO here said the daemon's WAKEs are exact, and this is no policy holder */
	struct kc_ident sock_id, pool_id, wake_id, ready_id;
	struct kc_mux *mux;
	struct kc_conn *next; /* this process's connections, for fork */
	bool cuse;
	struct kc_ident dev_id; /* cuse: the device the program's descriptors are */
	struct kc_side side;    /* cuse: the side channel in this process (its socket is sock) */
};

/*
 * Takes over a connected socket the program holds as user_fd, with its multiplexer, and records user_fd as the program's. counted says whether the mux's
 * reference count covers every reference (true for a socket the shim just opened). NULL
 * with errno on failure (then nothing was taken over); EEXIST if another thread took
 * user_fd over first.
 */
struct kc_conn *kc_conn_create(int user_fd, struct kc_mux *mux, bool counted);

/*
 * Records the program's descriptor fd, just opened or not yet known, as a CUSE device (a
 * connection of its own). Returns its connection (another thread may have recorded it
 * first); NULL if fd is no character device or memory runs out. errno is kept.
 */
struct kc_conn *kc_conn_create_cuse(int fd);

/* The connection behind the program's descriptor fd, referenced; NULL if fd is not one. */
struct kc_conn *kc_conn_acquire(int fd);
/* The same for a CUSE device. */
struct kc_conn *kc_cuse_acquire(int fd);
void kc_conn_release(struct kc_conn *c);

/*
 * For a descriptor the table does not know: if it is a socket connected to the daemon (the
 * program inherited it across exec or received it from another process), takes it over and
 * returns its connection, referenced. NULL otherwise, with errno unchanged.
 */
struct kc_conn *kc_conn_attach(int fd);

/*
 * fd is another descriptor of the socket some connection of this process already uses
 * (both survived exec): records it there and returns the connection, referenced; NULL if
 * no connection uses that socket.
 */
struct kc_conn *kc_conn_join(int fd, const struct kc_ident *sock_id);

/*
 * What the table says about fd, after checking with fstat that the number still refers to
 * that file (something may have closed it behind the shim's back); stale entries are
 * dropped and read as KC_FD_NONE. For paths that already know fd is in the table.
 */
enum kc_fd_kind kc_fd_check(int fd);

/* The socket descriptor for I/O: the shim's own, re-made from user_fd if it was lost. */
int kc_conn_socket(struct kc_conn *c, int user_fd);

/* Keeps the pool descriptor HELLO or POOL brought (or closes it if one is already known). */
void kc_conn_set_pool(struct kc_conn *c, int pool);
/* The pool descriptor and size; -1 if unknown. */
int kc_conn_pool(struct kc_conn *c, uint64_t *size);

/*
 * HELLO made c a connection that may RECV and FREE (no policy holder) on a daemon whose
 * WAKEs follow the queue exactly: RECV on an empty queue and FREE of a published slice
 * may be answered here (ioctl.c).
 */
void kc_conn_allow_shortcuts(struct kc_conn *c);
/* Whether they may, with the pool's size; false before HELLO or without the pool. */
bool kc_conn_shortcuts(struct kc_conn *c, uint64_t *pool_size);

/* newfd is another program descriptor of fd's connection or device (dup); nothing if fd is not kdbus. */
void kc_conn_dup(int fd, int newfd);

/*
 * The program is about to close fd (or replace it): for a kdbus descriptor, drop its
 * reference — which, for the last one, releases the handle in the daemon first (over CUSE,
 * the kernel's release does that; the last one closes the side channel).
 */
void kc_conn_closing(int fd);

/* Before fork(): the child's copies of the program's descriptors count as references. */
void kc_conn_before_fork_locked(void);
/* In the child: only the descriptors came along, not the parent's operations in flight. */
void kc_conn_in_child_locked(void);

/*
 * The program's dup2/dup3 will replace newfd, which is one of the shim's descriptors: move
 * the shim's file elsewhere (or, for a reserved number, give it up). Under kc_lock.
 */
void kc_conn_evict_locked(int newfd);

#endif
