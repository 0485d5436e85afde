/*
 * poll() of CUSE kdbus descriptors from their side channels. The kernel asks the daemon
 * (FUSE_POLL) every time a program polls a CUSE device, and again after every wake-up:
 * two round trips to the daemon for each message a waiting program receives. The side
 * channel already says when the queue has a message (side-channel.h), so the shim waits on
 * it instead, wherever the channel follows the queue; every other descriptor in the set,
 * and a CUSE descriptor whose channel does not, is polled as given.
 */
#ifndef KC_CUSE_POLL_H
#define KC_CUSE_POLL_H

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

typedef int (*kc_ppoll_fn)(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask);

/* CLOCK_MONOTONIC in ns: what timeouts of waits that start over are measured against. */
int64_t kc_monotonic_ns(void);

/* Whether fds has a descriptor the table knows as a CUSE device (then kc_cuse_poll serves it). */
bool kc_cuse_poll_wanted(const struct pollfd *fds, nfds_t nfds);

/* ppoll() with the CUSE descriptors waited for on their channels; next is the real ppoll. */
int kc_cuse_poll(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask, kc_ppoll_fn next);

#endif
