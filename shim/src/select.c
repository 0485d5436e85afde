/*
 * select and pselect: sets with a CUSE kdbus descriptor are served through the poll of
 * cuse-poll.c (cuse-select.h); every other set goes to libc.
 */
#include "cuse-select.h"
#include "real.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/select.h>
#include <time.h>

KC_NEXT_SLOT(select);
KC_NEXT_SLOT(pselect);
KC_NEXT_SLOT(ppoll);

KC_EXPORT int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
	int (*next)(int, fd_set *, fd_set *, fd_set *, struct timeval *) = KC_NEXT(select);
	if (!next)
		return kc_next_missing();
	kc_ppoll_fn next_ppoll = KC_NEXT(ppoll);
	if (!next_ppoll || !kc_cuse_select_wanted(nfds, r, w, e))
		return next(nfds, r, w, e, tv);
	if (tv && (tv->tv_sec < 0 || tv->tv_usec < 0 || tv->tv_usec >= 1000000)) {
		errno = EINVAL;
		return -1;
	}
	struct timespec t = { tv ? tv->tv_sec : 0, tv ? tv->tv_usec * 1000 : 0 };
	int64_t start = kc_monotonic_ns();
	int rc = kc_cuse_select(nfds, r, w, e, tv ? &t : NULL, NULL, next_ppoll);
	if (tv) {
		/* Linux's select leaves the time it did not wait in the timeout. */
		int64_t left = (int64_t)t.tv_sec * 1000000000 + t.tv_nsec - (kc_monotonic_ns() - start);
		if (left < 0)
			left = 0;
		tv->tv_sec = left / 1000000000;
		tv->tv_usec = (left % 1000000000) / 1000;
	}
	return rc;
}

KC_EXPORT int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *timeout, const sigset_t *sigmask)
{
	int (*next)(int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *) = KC_NEXT(pselect);
	if (!next)
		return kc_next_missing();
	kc_ppoll_fn next_ppoll = KC_NEXT(ppoll);
	if (!next_ppoll || !kc_cuse_select_wanted(nfds, r, w, e))
		return next(nfds, r, w, e, timeout, sigmask);
	if (timeout && (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
		errno = EINVAL;
		return -1;
	}
	return kc_cuse_select(nfds, r, w, e, timeout, sigmask, next_ppoll);
}
