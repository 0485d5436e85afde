/*
 * The floor under every shim round trip: one small write and its answer between two
 * processes over a unix stream socket, with C at both ends and nothing else done.
 *
 *   socket-rtt <iterations>
 *
 * Prints one JSON line of latency statistics (stats.h).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include "stats.h"

#define FRAME 64

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <iterations>\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[1]);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		perror("socketpair");
		return 1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	char buf[FRAME] = { 0 };
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(sv[0]);
		while (read(sv[1], buf, sizeof buf) == (ssize_t)sizeof buf)
			if (write(sv[1], buf, sizeof buf) != (ssize_t)sizeof buf)
				break;
		_exit(0);
	}
	close(sv[1]);
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 10;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		if (write(sv[0], buf, sizeof buf) != (ssize_t)sizeof buf || read(sv[0], buf, sizeof buf) != (ssize_t)sizeof buf) {
			perror("socket round trip");
			return 1;
		}
		if (i >= warm)
			samples_add(&s, now_ns() - t0);
	}
	close(sv[0]);
	samples_print(&s, NULL);
	return 0;
}
