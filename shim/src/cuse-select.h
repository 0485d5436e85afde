/*
 * select() and pselect() of sets with a CUSE kdbus descriptor, as the poll of the same
 * descriptors (cuse-poll.h): the kernel would ask the daemon (FUSE_POLL) for the device at
 * every call and after every wake-up. The sets become a pollfd array (read: POLLIN, write:
 * POLLOUT, except: POLLPRI) and come back from what poll reported, as the kernel's select
 * reads a poll mask: readable on POLLIN, POLLHUP or POLLERR, writable on POLLOUT or
 * POLLERR, exceptional on POLLPRI; a descriptor that is not open fails the call with EBADF.
 */
#ifndef KC_CUSE_SELECT_H
#define KC_CUSE_SELECT_H

#include "cuse-poll.h"

#include <stdbool.h>
#include <sys/select.h>

/* Whether the sets hold a descriptor the table knows as a CUSE device (then kc_cuse_select serves them). */
bool kc_cuse_select_wanted(int nfds, const fd_set *r, const fd_set *w, const fd_set *e);

/* pselect() through kc_cuse_poll; next is the real ppoll. */
int kc_cuse_select(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *timeout, const sigset_t *sigmask,
		   kc_ppoll_fn next);

#endif
