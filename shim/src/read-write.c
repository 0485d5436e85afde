/*
 * kdbus files had no read or write: the kernel answered EINVAL. The shim must say the same,
 * or the program's bytes would go into (or come out of) the daemon's stream.
 */
#include "conn.h"
#include "real.h"

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

KC_NEXT_SLOT(read);
KC_NEXT_SLOT(write);
KC_NEXT_SLOT(readv);
KC_NEXT_SLOT(writev);
KC_NEXT_SLOT(pread);
KC_NEXT_SLOT(pwrite);

/* True (with errno EINVAL) for a kdbus descriptor. */
static bool refuse(int fd)
{
	if (kc_fd_get(fd).kind != KC_FD_USER || kc_fd_check(fd) != KC_FD_USER)
		return false;
	errno = EINVAL;
	return true;
}

KC_EXPORT ssize_t read(int fd, void *buf, size_t count)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, void *, size_t) = KC_NEXT(read);
	return next ? next(fd, buf, count) : kc_next_missing();
}

KC_EXPORT ssize_t write(int fd, const void *buf, size_t count)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, const void *, size_t) = KC_NEXT(write);
	return next ? next(fd, buf, count) : kc_next_missing();
}

KC_EXPORT ssize_t readv(int fd, const struct iovec *iov, int iovcnt)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, const struct iovec *, int) = KC_NEXT(readv);
	return next ? next(fd, iov, iovcnt) : kc_next_missing();
}

KC_EXPORT ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, const struct iovec *, int) = KC_NEXT(writev);
	return next ? next(fd, iov, iovcnt) : kc_next_missing();
}

KC_EXPORT ssize_t pread(int fd, void *buf, size_t count, off_t offset)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, void *, size_t, off_t) = KC_NEXT(pread);
	return next ? next(fd, buf, count, offset) : kc_next_missing();
}

KC_EXPORT ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, const void *, size_t, off_t) = KC_NEXT(pwrite);
	return next ? next(fd, buf, count, offset) : kc_next_missing();
}

#ifdef __GLIBC__
/* What programs built with _FILE_OFFSET_BITS=64 call. */
KC_NEXT_SLOT(pread64);
KC_NEXT_SLOT(pwrite64);

KC_EXPORT ssize_t pread64(int fd, void *buf, size_t count, off64_t offset)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, void *, size_t, off64_t) = KC_NEXT(pread64);
	return next ? next(fd, buf, count, offset) : kc_next_missing();
}

KC_EXPORT ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset)
{
	if (refuse(fd))
		return -1;
	ssize_t (*next)(int, const void *, size_t, off64_t) = KC_NEXT(pwrite64);
	return next ? next(fd, buf, count, offset) : kc_next_missing();
}
#endif
