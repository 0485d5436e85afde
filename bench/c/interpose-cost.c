/*
 * What the shim costs programs that never touch kdbus: tight loops of calls the shim
 * interposes, on descriptors that are not kdbus's. The orchestrator runs this binary with
 * and without LD_PRELOAD, once per libc, and prints the difference.
 *
 *   interpose-cost <scratch-dir>
 *
 * Prints one JSON object: nanoseconds per operation (median of 5 runs) for each loop.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <unistd.h>

#include "stats.h"

#define RUNS 5

static int g_pipe[2];
static int g_memfd, g_epoll;
static char g_file[4096], g_bus_like[4096];

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

static void op_fionread(void)
{
	int n;
	if (ioctl(g_pipe[0], FIONREAD, &n) < 0)
		fail("ioctl FIONREAD");
}

static void op_fcntl(void)
{
	if (fcntl(g_pipe[0], F_GETFL) < 0)
		fail("fcntl F_GETFL");
}

static void op_poll(void)
{
	struct pollfd p[2] = { { g_pipe[0], POLLIN, 0 }, { g_pipe[1], POLLOUT, 0 } };
	if (poll(p, 2, 0) != 1)
		fail("poll");
}

static void op_select(void)
{
	fd_set r, w;
	FD_ZERO(&r);
	FD_ZERO(&w);
	FD_SET(g_pipe[0], &r);
	FD_SET(g_pipe[1], &w);
	struct timeval none = { 0, 0 };
	if (select(g_pipe[1] + 1, &r, &w, NULL, &none) != 1)
		fail("select");
}

static void op_epoll_ctl(void)
{
	struct epoll_event ev = { .events = EPOLLIN };
	if (epoll_ctl(g_epoll, EPOLL_CTL_ADD, g_pipe[0], &ev) < 0 || epoll_ctl(g_epoll, EPOLL_CTL_DEL, g_pipe[0], NULL) < 0)
		fail("epoll_ctl");
}

static void op_pipe_rw(void)
{
	char c = 'x';
	if (write(g_pipe[1], &c, 1) != 1 || read(g_pipe[0], &c, 1) != 1)
		fail("pipe write/read");
}

static void open_read_close(const char *path)
{
	char buf[64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail(path);
	if (read(fd, buf, sizeof buf) < 0)
		fail("read");
	close(fd);
}

static void op_open_file(void)
{
	open_read_close(g_file);
}

/* The last component could name a kdbus node, so the shim looks closer (outside its root). */
static void op_open_bus_named(void)
{
	open_read_close(g_bus_like);
}

static void op_mmap(void)
{
	void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, g_memfd, 0);
	if (p == MAP_FAILED)
		fail("mmap");
	munmap(p, 4096);
}

static void op_dup_close(void)
{
	int fd = dup(g_pipe[0]);
	if (fd < 0)
		fail("dup");
	close(fd);
}

struct op {
	const char *name;
	void (*fn)(void);
	long n;
};

static const struct op OPS[] = {
	{ "ioctl_fionread", op_fionread, 100000 },
	{ "fcntl_getfl", op_fcntl, 100000 },
	{ "pipe_write_read", op_pipe_rw, 50000 },
	{ "poll_pipe", op_poll, 100000 },
	{ "select_pipe", op_select, 100000 },
	{ "epoll_ctl_add_del", op_epoll_ctl, 50000 },
	{ "dup_close", op_dup_close, 50000 },
	{ "mmap_munmap", op_mmap, 25000 },
	{ "open_read_close", op_open_file, 15000 },
	{ "open_read_close_bus_named", op_open_bus_named, 15000 },
};

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <scratch-dir>\n", argv[0]);
		return 2;
	}
	snprintf(g_file, sizeof g_file, "%s/interpose-cost.dat", argv[1]);
	snprintf(g_bus_like, sizeof g_bus_like, "%s/bus", argv[1]);
	const char *files[] = { g_file, g_bus_like };
	for (int i = 0; i < 2; i++) {
		int fd = open(files[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || write(fd, "0123456789abcdef", 16) != 16)
			fail(files[i]);
		close(fd);
	}
	if (pipe(g_pipe) < 0)
		fail("pipe");
	g_memfd = memfd_create("interpose-cost", MFD_CLOEXEC);
	if (g_memfd < 0 || ftruncate(g_memfd, 4096) < 0)
		fail("memfd");
	g_epoll = epoll_create1(EPOLL_CLOEXEC);
	if (g_epoll < 0)
		fail("epoll_create1");

	printf("{");
	for (size_t k = 0; k < sizeof OPS / sizeof OPS[0]; k++) {
		const struct op *op = &OPS[k];
		uint64_t per_op[RUNS];
		for (long i = 0; i < op->n / 10; i++)
			op->fn();
		for (int r = 0; r < RUNS; r++) {
			uint64_t t0 = now_ns();
			for (long i = 0; i < op->n; i++)
				op->fn();
			per_op[r] = (now_ns() - t0) * 1000 / (uint64_t)op->n;
		}
		struct samples s = { per_op, RUNS, RUNS };
		qsort(s.ns, RUNS, sizeof *s.ns, cmp_u64);
		printf("%s\"%s\":%.1f", k ? "," : "", op->name, samples_pct(&s, 0.5) / 1000.0);
	}
	printf("}\n");
	unlink(g_file);
	unlink(g_bus_like);
	return 0;
}
