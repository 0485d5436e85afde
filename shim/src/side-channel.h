/*
 * The side channel of a CUSE kdbus file (docs/socket-protocol.md, CUSE clients). CUSE carries
 * ioctls, poll and close, but neither the pool mapping nor file descriptors. So the shim gets
 * a token from the device (only the holder of the open file can), presents it on a socket to
 * the daemon (ATTACH) with numbers it reserved, and that socket then brings the pool (POOL)
 * and the files RECV or a synchronous SEND installs (INSTALL, onto those numbers, which the
 * daemon has already written into the message); RESERVE gives the numbers, before the first
 * ioctl that may install files (a file that never receives holds none) and after each install.
 *
 * Over the same channel the daemon tells the queue's state (WAKE, HEAD, EMPTY, HUP), so the
 * shim can answer RECV on an empty queue and RECV of the message a HEAD names itself, and
 * takes FREEs of slices it published, and those RECVs, without answering them
 * (kc_side_queue_empty, kc_side_take_head, kc_side_free).
 *
 * Forked children share the channel. All I/O on it happens under a robust lock in a page the
 * processes share, so frames are always read whole; any thread of a process may apply any
 * INSTALL, since the numbers are the process's, and a thread waiting for its files only
 * waits until they are no longer placeholders.
 */
#ifndef KC_SIDE_CHANNEL_H
#define KC_SIDE_CHANNEL_H

#include "kdbus-abi.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

struct kc_conn;
struct kc_side_page;

/*
 * Numbers the daemon holds for installs: as many as one message can bring, far above the
 * numbers programs use, so holding them takes no number a program would get.
 */
#define KC_SIDE_RESERVE KDBUS_MAX_INSTALLED_FDS
/*
 * The lowest free numbers, offered for a single ioctl (kdbus installed files there): the
 * daemon uses them first and forgets them when that ioctl ends, and the shim then frees
 * those it did not use, so they displace nothing either.
 */
#define KC_SIDE_TRANSIENT 2
/* Room for the reserve and the transient numbers of concurrent ioctls. */
#define KC_SIDE_CAPACITY (2 * KC_SIDE_RESERVE)

enum kc_side_state {
	KC_SIDE_NONE,      /* this process has not attached */
	KC_SIDE_ATTACHING, /* a thread of this process is attaching */
	KC_SIDE_READY,
	KC_SIDE_FAILED,    /* attaching failed, or the channel broke: err says why; not tried again */
	KC_SIDE_FOREIGN,   /* the device refused the token: not the daemon's, libc serves it all */
};

/* In struct kc_conn; under kc_lock. */
struct kc_side {
	enum kc_side_state state;
	int err;
	bool warned; /* a problem was reported on stderr; once per file is enough */
	struct kc_side_page *page;
	/* The numbers the daemon holds for this process, each still a placeholder here. */
	int reserved[KC_SIDE_CAPACITY];
	/* Which of them are transient (offered for one ioctl). */
	bool transient[KC_SIDE_CAPACITY];
	unsigned n_reserved;
	unsigned n_transient;
};

/* The transient numbers one ioctl offered, to free after it. */
struct kc_side_offer {
	int numbers[KC_SIDE_TRANSIENT];
	unsigned n;
};

/* Where this process is with c's side channel. */
enum kc_side_state kc_side_state(struct kc_conn *c);

/*
 * Attaches this process to the side channel of c, the device fd, unless it did before.
 * 0 when attached; -ENOTTY if the device refused the token (not the daemon's); else the
 * -errno attaching failed with, now and on every later call.
 */
int kc_side_attach(struct kc_conn *c, int fd);

/*
 * Before an ioctl that may install files: makes sure the daemon holds numbers for them
 * (the reserve) and offers the lowest free numbers for this ioctl alone (recorded in
 * offer). 0 or -errno.
 */
int kc_side_prepare(struct kc_conn *c, struct kc_side_offer *offer);

/* After that ioctl (and its installs): frees the offered numbers no file went to. */
void kc_side_withdraw(struct kc_conn *c, const struct kc_side_offer *offer);

/* Asks for the pool (POOL) and keeps it in c; 0 or -errno (EBADFD before HELLO). */
int kc_side_fetch_pool(struct kc_conn *c);

/*
 * The eventfd the daemon keeps to c's readiness (READY, docs/socket-protocol.md), made and
 * handed over at the first call in this process: non-zero while the file polls readable or
 * hung up, one more at each wake-up. It stands for the file in epoll sets (cuse-epoll.h).
 * The number (the shim's own) or -errno: -EOPNOTSUPP where the channel does not follow the
 * queue, and what attaching failed with.
 */
int kc_side_ready(struct kc_conn *c);

/* Applies the INSTALL frames that have arrived; does not wait, nor read when another thread does. */
void kc_side_drain(struct kc_conn *c);

/*
 * Whether c's queue is known to be empty and the connection alive: the ATTACH's RESULT said
 * the channel follows the queue (KC_RESULT_EXACT_WAKES), and of the WAKE and EMPTY frames
 * that have arrived (read first) the last was EMPTY, with no HUP. The daemon sends WAKE when
 * the queue becomes readable and EMPTY when a RECV left it empty, each before it answers the
 * ioctl that caused it (docs/socket-protocol.md, CUSE clients). False when another thread
 * is reading the channel.
 */
bool kc_side_queue_empty(struct kc_conn *c);

/* A RECV of the file goes to the kernel: a HEAD read before the daemon took it is stale. */
void kc_side_count_recv(struct kc_conn *c);

/*
 * A plain RECV (docs/socket-protocol.md, CUSE clients): if the last HEAD that arrived (read
 * first) names the queue's head, with no HUP, counts the RECV, notes the slice as published
 * and sends the RECV (iov: an IOCTL frame with seq 0 and no segments) on the channel, where
 * the daemon takes that message off the queue before any later request of the file; true
 * then, with the slice in *offset and *size, for the program's write-backs. Otherwise the
 * RECV is the kernel's.
 */
bool kc_side_take_head(struct kc_conn *c, uint64_t *offset, uint64_t *size, struct iovec *iov, int iovcnt);

/* Records a slice the daemon published to the program (a RECV's message, a synchronous SEND's reply). */
void kc_side_note_published(struct kc_conn *c, uint64_t offset);

/*
 * A FREE of offset: forgets the slice. If it was published and the channel follows the
 * queue with no HUP arrived, and answer says the program's write-back was made, sends the
 * FREE (iov: an IOCTL frame with seq 0) on the channel, where the daemon runs it before any
 * later ioctl of the file and answers nothing; true then. Otherwise the FREE is the kernel's.
 */
bool kc_side_free(struct kc_conn *c, uint64_t offset, bool (*answer)(uint64_t arg), uint64_t arg,
		  struct iovec *iov, int iovcnt);

/*
 * Waits until none of numbers[n] is still a placeholder the daemon may put a file on,
 * applying INSTALL frames as they come, for at most timeout_ms; a timeout is reported on
 * stderr (once). 0, -ETIMEDOUT, or -errno of a channel that broke.
 */
int kc_side_await(struct kc_conn *c, const int *numbers, unsigned n, int timeout_ms);

/*
 * poll() of the file from the channel, without the kernel's FUSE_POLL round trips to the
 * daemon (cuse-poll.c). The daemon keeps the channel readable whenever the queue's state
 * changes (WAKE, HEAD, EMPTY, HUP); frames another thread reads are off the socket, so who
 * reads them wakes the pollers through the file's eventfd.
 */
enum {
	KC_SIDE_POLL_KERNEL = -1, /* no channel that follows the queue (or it broke): the kernel's poll serves */
	KC_SIDE_POLL_WAIT = 0,    /* not readable: wait for sock and wake, then ask again */
	KC_SIDE_POLL_READY = 1,   /* revents is the file's poll mask now */
};

struct kc_side_waiter {
	int sock, wake;
	short revents;    /* READY: the mask; WAIT: what is true meanwhile (POLLOUT) */
	struct kc_side_page *page;
};

/* What the channel says of c's readiness; after WAIT, kc_side_poll_end once the wait is over. */
int kc_side_poll_begin(struct kc_conn *c, struct kc_side_waiter *w);
void kc_side_poll_end(struct kc_side_waiter *w);

/* In a forked child, under kc_lock: an attach another thread of the parent was making is void. */
void kc_side_in_child_locked(struct kc_conn *c);

/*
 * The process's last descriptor of the file is gone and its socket closed: gives the reserved
 * numbers back and drops the shared page.
 */
void kc_side_finish(struct kc_side *s);

#endif
