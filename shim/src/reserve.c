/*
 * The reserve of descriptor numbers for installed files (see reserve.h). Each reserved
 * number holds an empty memfd with a name of its own, so the shim can tell, when the
 * program closes or replaces a number, whether it still holds one of its reserved files
 * or something closed it behind the shim's back and the number now is the program's.
 */
#include "reserve.h"
#include "fd-table.h"
#include "kdbus-abi.h"
#include "sys.h"

#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <string.h>

#define RESERVED_NAME "kdbus-cuse-reserved"

static int cache[KDBUS_MAX_INSTALLED_FDS];
static int cached;

static int open_reserved(void)
{
	int fd = (int)syscall(SYS_memfd_create, RESERVED_NAME, MFD_CLOEXEC);
	return fd < 0 ? -1 : kc_sys_settle_fd(fd, 1);
}

bool kc_reserve_holds(int fd)
{
	char link[32], target[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof target - 1);
	if (n < 0)
		return true; /* without /proc there is no telling; keep trusting the table */
	target[n] = '\0';
	return strncmp(target, "/memfd:" RESERVED_NAME " ", sizeof "/memfd:" RESERVED_NAME) == 0;
}

int kc_reserve_take(int *out, int want)
{
	int n = 0;
	kc_lock();
	while (n < want && cached > 0)
		out[n++] = cache[--cached];
	kc_unlock();
	while (n < want) {
		int fd = open_reserved();
		if (fd < 0)
			break;
		kc_lock();
		bool ok = kc_fd_set(fd, KC_FD_INTERNAL, NULL) == 0;
		kc_unlock();
		if (!ok) {
			kc_sys_close(fd);
			break;
		}
		out[n++] = fd;
	}
	return n;
}

static bool record(int fd)
{
	kc_lock();
	bool ok = kc_fd_set(fd, KC_FD_INTERNAL, NULL) == 0;
	kc_unlock();
	if (!ok)
		kc_sys_close(fd);
	return ok;
}

int kc_reserve_take_lowest(int *out, int want)
{
	int n = 0;
	while (n < want) {
		int fd = open_reserved();
		if (fd < 0 || !record(fd))
			break;
		out[n++] = fd;
	}
	return n;
}

/* Half the descriptor limit, at most 4096: out of the way of programs, cheap for the kernel's table. */
static int high_base(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 4096;
	rlim_t half = rl.rlim_cur / 2;
	return half > 4096 ? 4096 : half < 3 ? 3 : (int)half;
}

int kc_reserve_take_high(int *out, int want)
{
	int base = high_base();
	int n = 0;
	while (n < want) {
		int fd = open_reserved();
		if (fd < 0)
			break;
		if (fd < base) {
			int high = kc_sys_fcntl(fd, F_DUPFD_CLOEXEC, base);
			/* With no room up there the low number still serves; it only displaces. */
			if (high >= 0) {
				kc_sys_close(fd);
				fd = high;
			}
		}
		if (!record(fd))
			break;
		out[n++] = fd;
	}
	return n;
}

void kc_reserve_return(const int *fds, int n)
{
	kc_lock();
	for (int i = 0; i < n; i++) {
		struct kc_fd_entry e = kc_fd_get(fds[i]);
		/* The program may have dup2'ed over it meanwhile; then it is not ours any more. */
		if (e.kind != KC_FD_INTERNAL || e.owner)
			continue;
		if (cached < KDBUS_MAX_INSTALLED_FDS) {
			cache[cached++] = fds[i];
		} else {
			kc_fd_clear(fds[i]);
			kc_sys_close(fds[i]);
		}
	}
	kc_unlock();
}

bool kc_reserve_is_placeholder_locked(int fd)
{
	struct kc_fd_entry e = kc_fd_get(fd);
	return e.kind == KC_FD_INTERNAL && !e.owner;
}

void kc_reserve_install_locked(int reserved, int file)
{
	if (kc_reserve_is_placeholder_locked(reserved)) {
		/* The number is in the message now and belongs to the program, whatever dup3 says. */
		kc_sys_dup3(file, reserved, O_CLOEXEC);
		kc_fd_clear(reserved);
	}
}

void kc_reserve_install(int reserved, int file)
{
	kc_lock();
	kc_reserve_install_locked(reserved, file);
	kc_unlock();
	kc_sys_close(file);
}

void kc_reserve_forget_locked(int fd)
{
	kc_fd_clear(fd);
	for (int i = 0; i < cached; i++) {
		if (cache[i] == fd) {
			cache[i] = cache[--cached];
			break;
		}
	}
}
