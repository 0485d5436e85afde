/*
 * System calls the shim makes for itself. Those on its own descriptors go straight to the
 * kernel: the shim's descriptors must never pass through its own interposed close/dup/fcntl
 * wrappers (which would treat them as the program's) nor through another preloaded library.
 */
#ifndef KC_SYS_H
#define KC_SYS_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int kc_sys_close(int fd)
{
	return (int)syscall(SYS_close, fd);
}

static inline int kc_sys_fcntl(int fd, int cmd, long arg)
{
	return (int)syscall(SYS_fcntl, fd, cmd, arg);
}

static inline ssize_t kc_sys_read(int fd, void *buf, size_t len)
{
	return syscall(SYS_read, fd, buf, len);
}

static inline ssize_t kc_sys_write(int fd, const void *buf, size_t len)
{
	return syscall(SYS_write, fd, buf, len);
}

static inline int kc_sys_dup3(int oldfd, int newfd, int flags)
{
	return (int)syscall(SYS_dup3, oldfd, newfd, flags);
}

static inline int kc_sys_openat(int dirfd, const char *path, int flags, int mode)
{
	return (int)syscall(SYS_openat, dirfd, path, flags, mode);
}

/* Whether process pid still exists (one we may not signal counts as existing); errno kept. */
static inline bool kc_sys_alive(pid_t pid)
{
	int saved = errno;
	bool gone = kill(pid, 0) < 0 && errno == ESRCH;
	errno = saved;
	return !gone;
}

static inline int kc_sys_gettid(void)
{
	return (int)syscall(SYS_gettid);
}

/*
 * Descriptors 0-2 are the program's stdio even when it closed them: a shim descriptor
 * there would receive what the program writes to stdout. Moves fd to 3 or above (closing
 * the original) and sets close-on-exec as asked. Returns the new number or -1.
 */
static inline int kc_sys_settle_fd(int fd, int cloexec)
{
	if (fd >= 3) {
		if (!cloexec && kc_sys_fcntl(fd, F_SETFD, 0) < 0)
			return -1;
		return fd;
	}
	int moved = kc_sys_fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 3);
	kc_sys_close(fd);
	return moved;
}

#endif
