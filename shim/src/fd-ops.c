/*
 * close, dup and fcntl keep the descriptor table right. A dup of a kdbus descriptor (or CUSE
 * device) is another reference to the same connection; close drops one. The shim's own descriptors
 * are not the program's to close or replace: close() on one succeeds without closing it
 * (programs that close "all other descriptors" must not cut the shim off), dup2 onto one
 * first moves the shim's file elsewhere, and close_range/closefrom step around them.
 */
#include "conn.h"
#include "real.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <unistd.h>

KC_NEXT_SLOT(close);
KC_NEXT_SLOT(dup);
KC_NEXT_SLOT(dup2);
KC_NEXT_SLOT(dup3);
KC_NEXT_SLOT(fcntl);

static bool known(int fd)
{
	return kc_fd_get(fd).kind != KC_FD_NONE;
}

/* Bookkeeping after a successful dup onto newfd; leaves errno alone. */
static void after_dup(int fd, int newfd)
{
	if (!known(fd) && !known(newfd))
		return;
	int saved = errno;
	kc_conn_dup(fd, newfd);
	errno = saved;
}

/*
 * Before the program's dup2/dup3 replaces newfd: keep the shim's file if newfd is one; if
 * it is a kdbus descriptor, this is its close. (Only when the dup can succeed: with a bad
 * fd, dup2 leaves newfd alone.)
 */
static void before_replace(int fd, int newfd)
{
	enum kc_fd_kind kind = kc_fd_get(newfd).kind;
	if (kind == KC_FD_NONE)
		return;
	int saved = errno;
	if (kc_sys_fcntl(fd, F_GETFD, 0) < 0) {
		errno = saved;
		return;
	}
	if (kind == KC_FD_INTERNAL) {
		kc_lock();
		kc_conn_evict_locked(newfd);
		kc_unlock();
	} else {
		kc_conn_closing(newfd);
	}
	errno = saved;
}

KC_EXPORT int close(int fd)
{
	int (*next)(int) = KC_NEXT(close);
	if (!next)
		return kc_next_missing();
	struct kc_fd_entry e = kc_fd_get(fd);
	if (e.kind != KC_FD_NONE) {
		int saved = errno;
		if (e.kind == KC_FD_INTERNAL && kc_fd_check(fd) == KC_FD_INTERNAL) {
			errno = saved;
			return 0;
		}
		kc_conn_closing(fd);
		errno = saved;
	}
	return next(fd);
}

KC_EXPORT int dup(int fd)
{
	int (*next)(int) = KC_NEXT(dup);
	if (!next)
		return kc_next_missing();
	int newfd = next(fd);
	if (newfd >= 0)
		after_dup(fd, newfd);
	return newfd;
}

KC_EXPORT int dup2(int fd, int newfd)
{
	int (*next)(int, int) = KC_NEXT(dup2);
	if (!next)
		return kc_next_missing();
	if (fd == newfd)
		return next(fd, newfd);
	before_replace(fd, newfd);
	int rc = next(fd, newfd);
	if (rc >= 0)
		after_dup(fd, newfd);
	return rc;
}

KC_EXPORT int dup3(int fd, int newfd, int flags)
{
	int (*next)(int, int, int) = KC_NEXT(dup3);
	if (!next)
		return kc_next_missing();
	if (fd == newfd)
		return next(fd, newfd, flags);
	before_replace(fd, newfd);
	int rc = next(fd, newfd, flags);
	if (rc >= 0)
		after_dup(fd, newfd);
	return rc;
}

/* fcntl commands that make descriptors, after libc did them successfully. */
static void after_fcntl(int fd, int cmd, int rc)
{
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		after_dup(fd, rc);
}

KC_EXPORT int fcntl(int fd, int cmd, ...)
{
	/* As libc does, take the optional argument as a word; the kernel reads what cmd needs. */
	va_list ap;
	va_start(ap, cmd);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	int (*next)(int, int, ...) = KC_NEXT(fcntl);
	if (!next)
		return kc_next_missing();
	int rc = next(fd, cmd, arg);
	if (rc >= 0)
		after_fcntl(fd, cmd, rc);
	return rc;
}

#ifdef __GLIBC__
/* Programs built with _FILE_OFFSET_BITS=64 call fcntl64 (glibc 2.28 and later). */
int fcntl64(int fd, int cmd, ...);
KC_NEXT_SLOT(fcntl64);

KC_EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	int (*next)(int, int, ...) = KC_NEXT(fcntl64);
	if (!next)
		return kc_next_missing();
	int rc = next(fd, cmd, arg);
	if (rc >= 0)
		after_fcntl(fd, cmd, rc);
	return rc;
}
#endif

#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
KC_NEXT_SLOT(close_range);
KC_NEXT_SLOT(closefrom);

/* Closes [lo, hi], one by one where the kernel has no close_range (before Linux 5.9). */
static void close_span(unsigned lo, unsigned hi, int flags, int *rc)
{
	int (*next)(unsigned, unsigned, int) = KC_NEXT(close_range);
	if (next && next(lo, hi, flags) == 0)
		return;
	if (next && errno != ENOSYS) {
		*rc = -1;
		return;
	}
	for (unsigned fd = lo; fd <= hi; fd++)
		kc_sys_close((int)fd);
}

/*
 * Closes what the program may close in [first, last] up to the shim's last descriptor there,
 * forgetting kdbus descriptors on the way. Returns where the rest of the range starts, for
 * libc to close as asked (first when there was nothing to step around).
 */
static unsigned close_pieces(unsigned first, unsigned last, int flags, int *rc)
{
	unsigned highest = (unsigned)kc_fd_highest();
	unsigned from = first;
	for (unsigned fd = first; fd <= last && fd <= highest; fd++) {
		enum kc_fd_kind kind = kc_fd_get((int)fd).kind;
		if (kind == KC_FD_USER || kind == KC_FD_CUSE) {
			kc_conn_closing((int)fd);
		} else if (kind == KC_FD_INTERNAL && kc_fd_check((int)fd) == KC_FD_INTERNAL) {
			if (fd > from)
				close_span(from, fd - 1, flags, rc);
			from = fd + 1;
		}
	}
	return from;
}

KC_EXPORT int close_range(unsigned first, unsigned last, int flags)
{
	int (*next)(unsigned, unsigned, int) = KC_NEXT(close_range);
	if (!next)
		return kc_next_missing();
	/* Marking close-on-exec closes nothing; the shim's descriptors are close-on-exec anyway. */
	if (flags & CLOSE_RANGE_CLOEXEC)
		return next(first, last, flags);
	int saved = errno, rc = 0;
	unsigned from = close_pieces(first, last, flags, &rc);
	if (from > last)
		return rc;
	if (rc == 0)
		errno = saved;
	return next(from, last, flags) < 0 ? -1 : rc;
}

KC_EXPORT void closefrom(int lowfd)
{
	void (*next)(int) = KC_NEXT(closefrom);
	int saved = errno, rc = 0;
	unsigned from = close_pieces(lowfd < 0 ? 0 : (unsigned)lowfd, ~0u, 0, &rc);
	errno = saved;
	if (next)
		next((int)from);
}
#endif
