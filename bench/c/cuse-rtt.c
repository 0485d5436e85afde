/*
 * The floor under every CUSE ioctl: a minimal CUSE device served in C, single-threaded with
 * blocking reads of /dev/cuse, answering each ioctl at once with EAGAIN (as a RECV on an
 * empty queue does), and a forked client timing ioctls on it.
 *
 *   cuse-rtt <iterations>
 *
 * Needs /dev/cuse (root). Prints one JSON line of latency statistics (stats.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define BUF_SIZE (132 * 1024)
#define BENCH_IOCTL _IO('B', 1)

static char g_devname[64];

static void reply(int cuse, uint64_t unique, int error, const void *data, size_t len)
{
	struct fuse_out_header h = { .len = (uint32_t)(sizeof h + len), .error = error, .unique = unique };
	struct iovec iov[2] = { { &h, sizeof h }, { (void *)data, len } };
	if (writev(cuse, iov, len ? 2 : 1) < 0 && errno != ENOENT)
		perror("cuse-rtt: reply");
}

static void client(long iterations)
{
	char path[96];
	snprintf(path, sizeof path, "/dev/%s", g_devname);
	int fd = -1;
	for (int i = 0; i < 5000 && fd < 0; i++) {
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			usleep(1000);
	}
	if (fd < 0) {
		perror(path);
		_exit(1);
	}
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 10;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		int rc = ioctl(fd, BENCH_IOCTL);
		uint64_t t1 = now_ns();
		if (rc == 0 || errno != EAGAIN) {
			perror("cuse-rtt: ioctl: expected EAGAIN");
			_exit(1);
		}
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	close(fd);
	samples_print(&s, NULL);
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <iterations>\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[1]);
	snprintf(g_devname, sizeof g_devname, "bench-cuse-rtt-%d", (int)getpid());
	int cuse = open("/dev/cuse", O_RDWR | O_CLOEXEC);
	if (cuse < 0) {
		perror("cuse-rtt: /dev/cuse");
		return 1;
	}
	static char buf[BUF_SIZE];
	pid_t child = -1;
	for (;;) {
		ssize_t n = read(cuse, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR || errno == ENOENT)
				continue;
			perror("cuse-rtt: read /dev/cuse");
			return 1;
		}
		const struct fuse_in_header *in = (const void *)buf;
		switch (in->opcode) {
		case CUSE_INIT: {
			struct {
				struct cuse_init_out o;
				char info[80];
			} out;
			memset(&out, 0, sizeof out);
			out.o.major = FUSE_KERNEL_VERSION;
			out.o.minor = FUSE_KERNEL_MINOR_VERSION;
			out.o.flags = CUSE_UNRESTRICTED_IOCTL;
			out.o.max_read = 65536;
			out.o.max_write = 65536;
			int len = snprintf(out.info, sizeof out.info, "DEVNAME=%s", g_devname) + 1;
			reply(cuse, in->unique, 0, &out, sizeof out.o + (size_t)len);
			child = fork();
			if (child < 0) {
				perror("fork");
				return 1;
			}
			if (child == 0) {
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				close(cuse);
				client(iterations);
			}
			break;
		}
		case FUSE_OPEN: {
			struct fuse_open_out o = { .fh = 1 };
			reply(cuse, in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_IOCTL: {
			struct fuse_ioctl_out o = { .result = -EAGAIN };
			reply(cuse, in->unique, 0, &o, sizeof o);
			break;
		}
		case FUSE_RELEASE: {
			reply(cuse, in->unique, 0, NULL, 0);
			int status;
			waitpid(child, &status, 0);
			return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
		}
		case FUSE_INTERRUPT:
			break;
		case FUSE_FLUSH:
			reply(cuse, in->unique, 0, NULL, 0);
			break;
		default:
			reply(cuse, in->unique, -ENOSYS, NULL, 0);
			break;
		}
	}
}
