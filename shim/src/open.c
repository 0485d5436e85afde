/*
 * The open family. A path below KDBUS_CUSE_ROOT that names a kdbus node goes to the daemon
 * unless it is a character device (a CUSE node: the kernel serves it, libc opens it and the
 * shim records the descriptor, see cuse.h) or a directory (bus directories are listed and
 * opened as files). Everything else goes to libc untouched; the first test costs a string
 * comparison, so ordinary opens pay nothing more.
 */
#include "config.h"
#include "cuse.h"
#include "handshake.h"
#include "path.h"
#include "real.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* Returned by route() when libc should open the path itself; for a CUSE node, to be recorded. */
#define NOT_KDBUS (-2)
#define CUSE_NODE (-3)

/* The absolute form of path as seen from dirfd; -1 if it cannot be known. */
static int absolute(int dirfd, const char *path, char *out, size_t cap)
{
	char base[PATH_MAX];
	if (path[0] == '/')
		return kc_path_normalize(path, out, cap);
	if (dirfd == AT_FDCWD) {
		if (!getcwd(base, sizeof base))
			return -1;
	} else {
		char link[32];
		snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
		ssize_t n = readlink(link, base, sizeof base - 1);
		if (n <= 0 || base[0] != '/')
			return -1;
		base[n] = '\0';
	}
	char joined[PATH_MAX];
	if (kc_path_join(base, path, joined, sizeof joined) < 0)
		return -1;
	return kc_path_normalize(joined, out, cap);
}

/*
 * Opens path through the daemon if it is a kdbus node; NOT_KDBUS or CUSE_NODE when libc
 * should open it (errno untouched).
 */
static int route(int dirfd, const char *path, int flags)
{
	if (!path || (flags & (O_DIRECTORY | O_PATH)) || !kc_path_may_be_node(path))
		return NOT_KDBUS;
	int saved = errno;
	const struct kc_config *config = kc_config();
	char abs[PATH_MAX];
	const char *rel = NULL;
	struct stat st;
	if (config->root[0] && absolute(dirfd, path, abs, sizeof abs) >= 0)
		rel = kc_path_below(abs, config->root);
	int routed = rel ? 0 : NOT_KDBUS;
	if (rel && fstatat(dirfd, path, &st, 0) == 0 && (S_ISCHR(st.st_mode) || S_ISDIR(st.st_mode)))
		routed = S_ISCHR(st.st_mode) ? CUSE_NODE : NOT_KDBUS;
	errno = saved;
	return routed ? routed : kc_handshake(rel, abs, flags);
}

/* What libc's open gave for a path route() left to it. */
static int opened(int routed, int fd)
{
	return routed == CUSE_NODE ? kc_cuse_opened(fd) : fd;
}

static bool needs_mode(int flags)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

KC_NEXT_SLOT(open);
KC_NEXT_SLOT(openat);

KC_EXPORT int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (needs_mode(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	int fd = route(AT_FDCWD, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(const char *, int, ...) = KC_NEXT(open);
	return opened(fd, next ? next(path, flags, mode) : kc_next_missing());
}

KC_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (needs_mode(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	int fd = route(dirfd, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(int, const char *, int, ...) = KC_NEXT(openat);
	return opened(fd, next ? next(dirfd, path, flags, mode) : kc_next_missing());
}

#ifdef __GLIBC__
/*
 * glibc's other entry points: the 64-bit-offset names programs built with
 * _FILE_OFFSET_BITS=64 call, and the _FORTIFY_SOURCE checking variants (no mode argument).
 */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

KC_NEXT_SLOT(open64);
KC_NEXT_SLOT(openat64);
KC_NEXT_SLOT(__open_2);
KC_NEXT_SLOT(__open64_2);
KC_NEXT_SLOT(__openat_2);
KC_NEXT_SLOT(__openat64_2);

KC_EXPORT int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (needs_mode(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	int fd = route(AT_FDCWD, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(const char *, int, ...) = KC_NEXT(open64);
	return opened(fd, next ? next(path, flags, mode) : kc_next_missing());
}

KC_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (needs_mode(flags)) {
		va_list ap;
		va_start(ap, flags);
		mode = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	int fd = route(dirfd, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(int, const char *, int, ...) = KC_NEXT(openat64);
	return opened(fd, next ? next(dirfd, path, flags, mode) : kc_next_missing());
}

KC_EXPORT int __open_2(const char *path, int flags)
{
	int fd = route(AT_FDCWD, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(const char *, int) = KC_NEXT(__open_2);
	return opened(fd, next ? next(path, flags) : kc_next_missing());
}

KC_EXPORT int __open64_2(const char *path, int flags)
{
	int fd = route(AT_FDCWD, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(const char *, int) = KC_NEXT(__open64_2);
	return opened(fd, next ? next(path, flags) : kc_next_missing());
}

KC_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
	int fd = route(dirfd, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(int, const char *, int) = KC_NEXT(__openat_2);
	return opened(fd, next ? next(dirfd, path, flags) : kc_next_missing());
}

KC_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
	int fd = route(dirfd, path, flags);
	if (fd != NOT_KDBUS && fd != CUSE_NODE)
		return fd;
	int (*next)(int, const char *, int) = KC_NEXT(__openat64_2);
	return opened(fd, next ? next(dirfd, path, flags) : kc_next_missing());
}
#endif
