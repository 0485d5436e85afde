/*
 * Floors under the transports' round trips: one small write and its answer between two
 * processes over unix stream sockets, with C at both ends and nothing else done.
 *
 *   socket-rtt <iterations>                      the two ends share a socket pair
 *   socket-rtt <iterations> <relay> [<arg>...]   each end connects to a relay, which
 *                                                forwards what one end writes to the other
 *
 * The relay is started as `<relay> [<arg>...] <socket path>`, must listen there, and may be
 * killed when the run is over. A relayed round trip is the path of a call through a bus
 * (caller, bus, callee, bus, caller) with no work done on it.
 *
 * Prints one JSON line of latency statistics (stats.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"

#define FRAME 64
/* A relay in Node takes a while to start, more under emulation. */
#define RELAY_START_SECONDS 120

static void echo_forever(int fd)
{
	char buf[FRAME];
	/* A relay may forward a frame in pieces. */
	while (recv(fd, buf, sizeof buf, MSG_WAITALL) == (ssize_t)sizeof buf)
		if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
			break;
	_exit(0);
}

/* The echoing end, a child that dies with this process. */
static int start_echo(int fd, int keep)
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return -1;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(keep);
		echo_forever(fd);
	}
	close(fd);
	return 0;
}

static int connect_to(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	/* The socket file appears at bind(), a moment before the relay listens. */
	for (int tries = 0; tries < 100; tries++) {
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			return -1;
		if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
			return s;
		int e = errno;
		close(s);
		errno = e;
		if (e != ECONNREFUSED)
			return -1;
		nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
	}
	return -1;
}

/* Starts the relay on a socket of its own; fills *relay, path. Returns 0 or -1. */
static int start_relay(char **argv, int argc, pid_t *relay, char *dir, char *path, size_t path_size)
{
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return -1;
	}
	snprintf(path, path_size, "%s/relay.sock", dir);
	char **args = calloc((size_t)argc + 2, sizeof *args);
	if (!args)
		return -1;
	for (int i = 0; i < argc; i++)
		args[i] = argv[i];
	args[argc] = path;
	*relay = fork();
	if (*relay < 0) {
		perror("fork");
		free(args);
		return -1;
	}
	if (*relay == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execvp(args[0], args);
		fprintf(stderr, "socket-rtt: cannot run the relay %s: %s\n", args[0], strerror(errno));
		_exit(127);
	}
	free(args);
	struct stat st;
	for (int i = 0; i < RELAY_START_SECONDS * 100; i++) {
		if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		int status;
		if (waitpid(*relay, &status, WNOHANG) == *relay) {
			fprintf(stderr, "socket-rtt: the relay %s ended before it listened\n", argv[0]);
			return -1;
		}
		nanosleep(&(struct timespec){ 0, 10 * 1000 * 1000 }, NULL);
	}
	fprintf(stderr, "socket-rtt: the relay %s did not listen at %s within %d s\n", argv[0], path, RELAY_START_SECONDS);
	return -1;
}

static void stop_relay(pid_t relay, const char *dir, const char *path)
{
	if (relay > 0) {
		kill(relay, SIGKILL);
		waitpid(relay, NULL, 0);
	}
	unlink(path);
	rmdir(dir);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s <iterations> [<relay> [<arg>...]]\n", argv[0]);
		return 2;
	}
	long iterations = atol(argv[1]);
	int ends[2];
	pid_t relay = -1;
	char dir[] = "/tmp/socket-rtt-XXXXXX";
	char path[sizeof dir + 16] = "";
	if (argc == 2) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) < 0) {
			perror("socketpair");
			return 1;
		}
	} else {
		if (start_relay(argv + 2, argc - 2, &relay, dir, path, sizeof path) < 0) {
			stop_relay(relay, dir, path);
			return 1;
		}
		/* The relay forwards between the first two connections it takes. */
		ends[1] = connect_to(path);
		ends[0] = ends[1] < 0 ? -1 : connect_to(path);
		if (ends[0] < 0) {
			perror("connect to the relay");
			stop_relay(relay, dir, path);
			return 1;
		}
	}
	if (start_echo(ends[1], ends[0]) < 0) {
		stop_relay(relay, dir, path);
		return 1;
	}
	char buf[FRAME] = { 0 };
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 10;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		if (write(ends[0], buf, sizeof buf) != (ssize_t)sizeof buf ||
		    recv(ends[0], buf, sizeof buf, MSG_WAITALL) != (ssize_t)sizeof buf) {
			perror("socket round trip");
			stop_relay(relay, dir, path);
			return 1;
		}
		if (i >= warm)
			samples_add(&s, now_ns() - t0);
	}
	close(ends[0]);
	stop_relay(relay, dir, path);
	samples_print(&s, NULL);
	return 0;
}
