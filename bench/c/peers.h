/*
 * Process plumbing shared by the kdbus and the sd-bus programs: forking the peers of a run
 * (the callee, the fan-out receivers), waiting until they are connected, the shared page
 * where receivers stamp the moment a signal reached them; and the payload every caller sends.
 */
#ifndef BENCH_PEERS_H
#define BENCH_PEERS_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define MAX_PEERS 1024
#define READY_TIMEOUT_NS (60ULL * 1000 * 1000 * 1000)

__attribute__((format(printf, 1, 2), noreturn))
static void die(const char *fmt, ...)
{
	va_list ap;
	int e = errno;
	va_start(ap, fmt);
	fprintf(stderr, "[%d] ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (e)
		fprintf(stderr, ": %s", strerror(e));
	fputc('\n', stderr);
	_exit(1);
}

/* The payload of a call: the same bytes in every program, so their costs compare. */
static inline uint8_t *call_payload(size_t size)
{
	uint8_t *payload = malloc(size ? size : 1);
	if (!payload)
		die("malloc");
	for (size_t i = 0; i < size; i++)
		payload[i] = (uint8_t)(i * 7 + 1);
	return payload;
}

/* Lives in a MAP_SHARED page, so the forked peers and the parent see one copy. */
struct shared {
	int n_peers;
	atomic_int ready;
	atomic_int got;
	int done_pipe[2];
	_Atomic uint64_t stamp[MAX_PEERS];
};

static struct shared *g_shared;
static pid_t g_pids[MAX_PEERS];
static int g_n_pids;

static inline void shared_init(int n_peers)
{
	g_shared = mmap(NULL, sizeof *g_shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (g_shared == MAP_FAILED)
		die("mmap shared page");
	g_shared->n_peers = n_peers;
	if (pipe(g_shared->done_pipe) < 0)
		die("pipe");
}

/* Forks a peer running fn(index); it never returns into the caller's code. */
static inline void spawn_peer(void (*fn)(int), int index)
{
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		/* Peers die with the parent, whatever ends it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			die("prctl");
		fn(index);
		_exit(0);
	}
	g_pids[g_n_pids++] = pid;
}

static inline void peer_ready(void)
{
	atomic_fetch_add(&g_shared->ready, 1);
}

/* Waits until every peer has called peer_ready(); fails if one of them died first. */
static inline void wait_peers_ready(void)
{
	uint64_t until = now_ns() + READY_TIMEOUT_NS;
	while (atomic_load(&g_shared->ready) < g_n_pids) {
		int status;
		pid_t dead = waitpid(-1, &status, WNOHANG);
		if (dead > 0)
			die("peer %d ended before it was ready (status %#x)", (int)dead, status);
		if (now_ns() > until)
			die("only %d of %d peers ready after 60 s", atomic_load(&g_shared->ready), g_n_pids);
		usleep(1000);
	}
}

static inline void stop_peers(void)
{
	for (int i = 0; i < g_n_pids; i++)
		kill(g_pids[i], SIGKILL);
	for (int i = 0; i < g_n_pids; i++)
		waitpid(g_pids[i], NULL, 0);
	g_n_pids = 0;
}

/* A fan-out receiver got the signal: stamp it; the last one of the round wakes the sender. */
static inline void fanout_received(int index)
{
	atomic_store_explicit(&g_shared->stamp[index], now_ns(), memory_order_relaxed);
	if (atomic_fetch_add(&g_shared->got, 1) + 1 == g_shared->n_peers) {
		if (write(g_shared->done_pipe[1], "x", 1) != 1)
			die("write done pipe");
	}
}

static inline void fanout_round_start(void)
{
	atomic_store(&g_shared->got, 0);
}

/* Blocks until all receivers had the signal; the latest receipt minus t0. */
static inline uint64_t fanout_round_wait(uint64_t t0)
{
	char c;
	if (read(g_shared->done_pipe[0], &c, 1) != 1)
		die("read done pipe");
	uint64_t last = 0;
	for (int i = 0; i < g_shared->n_peers; i++) {
		uint64_t s = atomic_load(&g_shared->stamp[i]);
		if (s > last)
			last = s;
	}
	return last - t0;
}

#endif
