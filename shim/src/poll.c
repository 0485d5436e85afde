/*
 * poll and ppoll: sets with a CUSE kdbus descriptor are served by cuse-poll.c; every other
 * set goes to libc, and socket-poll.c reports connections that are gone as kdbus did. With
 * _FORTIFY_SOURCE, glibc's headers turn a poll of an array whose length the compiler knows
 * into __poll_chk and __ppoll_chk (sd-bus's own wait is one), so those are taken too.
 */
#include "cuse-poll.h"
#include "real.h"
#include "socket-poll.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>

KC_NEXT_SLOT(poll);
KC_NEXT_SLOT(ppoll);

KC_EXPORT int ppoll(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask)
{
	int (*next)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *) = KC_NEXT(ppoll);
	if (!next)
		return kc_next_missing();
	if (!kc_cuse_poll_wanted(fds, nfds))
		return kc_socket_poll_settle(fds, nfds, next(fds, nfds, timeout, sigmask));
	return kc_socket_poll_settle(fds, nfds, kc_cuse_poll(fds, nfds, timeout, sigmask, next));
}

KC_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	int (*next)(struct pollfd *, nfds_t, int) = KC_NEXT(poll);
	if (!next)
		return kc_next_missing();
	if (!kc_cuse_poll_wanted(fds, nfds))
		return kc_socket_poll_settle(fds, nfds, next(fds, nfds, timeout));
	int (*next_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *) = KC_NEXT(ppoll);
	if (!next_ppoll)
		return next(fds, nfds, timeout);
	struct timespec t = { timeout / 1000, (long)(timeout % 1000) * 1000000 };
	return kc_socket_poll_settle(fds, nfds, kc_cuse_poll(fds, nfds, timeout < 0 ? NULL : &t, NULL, next_ppoll));
}

#ifdef __GLIBC__
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask, size_t fdslen);

KC_NEXT_SLOT(__poll_chk);
KC_NEXT_SLOT(__ppoll_chk);

KC_EXPORT int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen)
{
	/* An array shorter than nfds: glibc's own check ends the program. */
	if (fdslen / sizeof *fds < nfds) {
		int (*next)(struct pollfd *, nfds_t, int, size_t) = KC_NEXT(__poll_chk);
		return next ? next(fds, nfds, timeout, fdslen) : kc_next_missing();
	}
	return poll(fds, nfds, timeout);
}

KC_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask,
			  size_t fdslen)
{
	if (fdslen / sizeof *fds < nfds) {
		int (*next)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *, size_t) = KC_NEXT(__ppoll_chk);
		return next ? next(fds, nfds, timeout, sigmask, fdslen) : kc_next_missing();
	}
	return ppoll(fds, nfds, timeout, sigmask);
}
#endif
