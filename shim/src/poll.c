/*
 * poll and ppoll: sets with a CUSE kdbus descriptor are served by cuse-poll.c; every other
 * set goes to libc untouched.
 */
#include "cuse-poll.h"
#include "real.h"

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
		return next(fds, nfds, timeout, sigmask);
	return kc_cuse_poll(fds, nfds, timeout, sigmask, next);
}

KC_EXPORT int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	int (*next)(struct pollfd *, nfds_t, int) = KC_NEXT(poll);
	if (!next)
		return kc_next_missing();
	if (!kc_cuse_poll_wanted(fds, nfds))
		return next(fds, nfds, timeout);
	int (*next_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *) = KC_NEXT(ppoll);
	if (!next_ppoll)
		return next(fds, nfds, timeout);
	struct timespec t = { timeout / 1000, (long)(timeout % 1000) * 1000000 };
	return kc_cuse_poll(fds, nfds, timeout < 0 ? NULL : &t, NULL, next_ppoll);
}
