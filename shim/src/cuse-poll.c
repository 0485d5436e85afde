/* poll() of CUSE kdbus descriptors from their side channels (see cuse-poll.h). */
#include "cuse-poll.h"
#include "conn.h"
#include "fd-table.h"
#include "side-channel.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Sets of up to this many CUSE descriptors need no allocation. */
#define ON_STACK 8

struct watched {
	nfds_t index;
	struct kc_conn *c;
	int state;
	short mask;       /* what poll reports for it now; 0 while it waits */
	nfds_t wake_at;   /* its eventfd's entry in the set polled, while it waits */
	struct kc_side_waiter w;
};

static bool is_cuse(const struct pollfd *p)
{
	return p->fd >= 0 && kc_fd_get(p->fd).kind == KC_FD_CUSE;
}

bool kc_cuse_poll_wanted(const struct pollfd *fds, nfds_t nfds)
{
	for (nfds_t i = 0; i < nfds; i++)
		if (is_cuse(&fds[i]))
			return true;
	return false;
}

int64_t kc_monotonic_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* What is left of the caller's timeout in *left; NULL for none (wait forever). */
static const struct timespec *remaining(int64_t deadline, struct timespec *left)
{
	if (deadline < 0)
		return NULL;
	int64_t ns = deadline - kc_monotonic_ns();
	if (ns < 0)
		ns = 0;
	left->tv_sec = ns / 1000000000;
	left->tv_nsec = ns % 1000000000;
	return left;
}

/* A wait that ended: the channels no longer count the waiters. */
static void end_waits(struct watched *ws, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (ws[k].state == KC_SIDE_POLL_WAIT)
			kc_side_poll_end(&ws[k].w);
}

struct call {
	struct watched *ws, *stack_ws;
	struct pollfd *work, *stack_work;
	size_t n;
};

/* The end of the call: returns or, poll being a cancellation point, the thread cancelled in it. */
static void finish(struct call *call)
{
	for (size_t k = 0; k < call->n; k++)
		if (call->ws[k].c)
			kc_conn_release(call->ws[k].c);
	if (call->ws != call->stack_ws)
		free(call->ws);
	if (call->work != call->stack_work)
		free(call->work);
}

static void cancelled(void *arg)
{
	struct call *call = arg;
	end_waits(call->ws, call->n);
	finish(call);
}

/* The kernel's poll of the set, a cancellation point: a cancelled thread ends the call first. */
static int poll_set(kc_ppoll_fn next, struct pollfd *work, nfds_t total, const struct timespec *timeout, const sigset_t *sigmask,
		struct call *call)
{
	int got;
	pthread_cleanup_push(cancelled, call);
	got = next(work, total, timeout, sigmask);
	pthread_cleanup_pop(0);
	return got;
}

/* Asks each channel; true if some descriptor is ready now. */
static bool begin_all(const struct pollfd *fds, struct watched *ws, size_t n)
{
	bool ready = false;
	for (size_t k = 0; k < n; k++) {
		struct watched *x = &ws[k];
		x->state = x->c ? kc_side_poll_begin(x->c, &x->w) : KC_SIDE_POLL_KERNEL;
		x->mask = 0;
		if (x->state == KC_SIDE_POLL_KERNEL)
			continue;
		/* kdbus reports its errors and hang-up whatever was asked, like every poll. */
		short events = fds[x->index].events | POLLERR | POLLHUP;
		x->mask = x->w.revents & events;
		ready |= x->mask != 0;
	}
	return ready;
}

/* The set the kernel polls: the caller's, with each waiting CUSE descriptor's channel instead. */
static nfds_t build(const struct pollfd *fds, nfds_t nfds, struct watched *ws, size_t n, struct pollfd *work)
{
	memcpy(work, fds, sizeof *fds * nfds);
	nfds_t extra = nfds;
	for (size_t k = 0; k < n; k++) {
		struct watched *x = &ws[k];
		if (x->state == KC_SIDE_POLL_KERNEL)
			continue;
		struct pollfd *p = &work[x->index];
		p->fd = -1;
		if (x->state != KC_SIDE_POLL_WAIT)
			continue;
		p->fd = x->w.sock;
		p->events = POLLIN;
		x->wake_at = extra;
		work[extra].fd = x->w.wake;
		work[extra].events = POLLIN;
		work[extra++].revents = 0;
	}
	return extra;
}

int kc_cuse_poll(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask, kc_ppoll_fn next)
{
	size_t n = 0;
	for (nfds_t i = 0; i < nfds; i++)
		n += is_cuse(&fds[i]);
	struct watched stack_ws[ON_STACK];
	struct pollfd stack_work[ON_STACK * 2];
	struct call call = { stack_ws, stack_ws, stack_work, stack_work, 0 };
	if (n > ON_STACK)
		call.ws = malloc(sizeof *call.ws * n);
	if (nfds + n > ON_STACK * 2)
		call.work = malloc(sizeof *call.work * (nfds + n));
	if (!call.ws || !call.work) {
		finish(&call);
		/* Nothing to wait with but the kernel's own poll. */
		return next(fds, nfds, timeout, sigmask);
	}
	struct watched *ws = call.ws;
	struct pollfd *work = call.work;
	size_t k = 0;
	for (nfds_t i = 0; i < nfds && k < n; i++) {
		if (!is_cuse(&fds[i]))
			continue;
		ws[k].index = i;
		ws[k++].c = kc_cuse_acquire(fds[i].fd);
	}
	n = call.n = k;
	int64_t deadline = timeout ? kc_monotonic_ns() + (int64_t)timeout->tv_sec * 1000000000 + timeout->tv_nsec : -1;
	const struct timespec zero = { 0, 0 };
	int result;
	for (;;) {
		bool ready = begin_all(fds, ws, n);
		nfds_t total = build(fds, nfds, ws, n, work);
		struct timespec left;
		int got = poll_set(next, work, total, ready ? &zero : remaining(deadline, &left), sigmask, &call);
		int err = errno;
		end_waits(ws, n);
		bool stirred = false;
		for (k = 0; k < n; k++)
			if (ws[k].state == KC_SIDE_POLL_WAIT)
				stirred |= work[ws[k].index].revents != 0 || work[ws[k].wake_at].revents != 0;
		if (got < 0) {
			errno = err;
			result = -1;
			break;
		}
		result = 0;
		for (nfds_t i = 0; i < nfds; i++)
			fds[i].revents = work[i].revents;
		for (k = 0; k < n; k++)
			if (ws[k].state != KC_SIDE_POLL_KERNEL)
				fds[ws[k].index].revents = ws[k].mask;
		for (nfds_t i = 0; i < nfds; i++)
			result += fds[i].revents != 0;
		/* A channel that stirred may have made its descriptor ready: ask again, the time left. */
		if (result > 0 || !stirred)
			break;
	}
	finish(&call);
	return result;
}
