/* epoll_ctl of CUSE kdbus descriptors through stand-ins (see cuse-epoll.h). */
#include "cuse-epoll.h"
#include "conn.h"
#include "fd-table.h"
#include "self.h"
#include "side-channel.h"
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Registrations a process keeps through stand-ins; beyond, the kernel serves the descriptor. */
#define REGISTRATIONS 64

enum { READY, CHANNEL, STANDINS };

/* One program descriptor in one epoll set. Under kc_lock. */
struct registration {
	struct kc_conn *c; /* NULL: a free slot */
	int fd, epfd;
	pid_t pid;         /* the process that registered: a forked child's copy is not its own */
	struct epoll_event event;
	int standin[STANDINS];
};

static struct registration regs[REGISTRATIONS];

/* The real call, never the shim's: these run under kc_lock. */
static int sys_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
	return (int)syscall(SYS_epoll_ctl, epfd, op, fd, event);
}

/* What a stand-in is watched for: the program's events, or only the hang-up epoll always reports. */
static struct epoll_event event_of(const struct registration *r, int which)
{
	struct epoll_event e = r->event;
	if (which == CHANNEL)
		e.events &= EPOLLET | EPOLLONESHOT;
	return e;
}

static struct registration *find_locked(int fd, int epfd)
{
	for (int i = 0; i < REGISTRATIONS; i++)
		if (regs[i].c && regs[i].fd == fd && regs[i].epfd == epfd)
			return &regs[i];
	return NULL;
}

static void drop_standins_locked(struct registration *r)
{
	for (int k = 0; k < STANDINS; k++) {
		if (r->standin[k] < 0)
			continue;
		kc_fd_clear(r->standin[k]);
		kc_sys_close(r->standin[k]);
	}
	r->c = NULL;
}

/* Leaves the set, then forgets r; the READY stand-in's answer is the program's. */
static int remove_locked(struct registration *r)
{
	if (r->standin[CHANNEL] >= 0)
		(void)sys_epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->standin[CHANNEL], NULL);
	int rc = -1, err = ENOENT;
	if (r->standin[READY] >= 0 && (rc = sys_epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->standin[READY], NULL)) < 0)
		err = errno;
	drop_standins_locked(r);
	if (rc < 0)
		errno = err;
	return rc;
}

/* Stand-ins for fd of c in a free slot; NULL if there is none, or c's descriptors are gone. */
static struct registration *make_locked(struct kc_conn *c, int fd, int epfd)
{
	struct registration *r = NULL;
	for (int i = 0; i < REGISTRATIONS && !r; i++)
		if (!regs[i].c)
			r = &regs[i];
	if (!r || c->sock < 0 || c->ready < 0)
		return NULL;
	int from[STANDINS] = { c->ready, c->sock };
	for (int k = 0; k < STANDINS; k++) {
		r->standin[k] = kc_sys_fcntl(from[k], F_DUPFD_CLOEXEC, 3);
		if (r->standin[k] < 0 || kc_fd_set(r->standin[k], KC_FD_INTERNAL, c) < 0) {
			if (r->standin[k] >= 0)
				kc_sys_close(r->standin[k]);
			while (k-- > 0) {
				kc_fd_clear(r->standin[k]);
				kc_sys_close(r->standin[k]);
			}
			return NULL;
		}
	}
	r->c = c;
	r->fd = fd;
	r->epfd = epfd;
	r->pid = kc_self_pid();
	return r;
}

static int add(int epfd, int fd, struct epoll_event *event, kc_epoll_ctl_fn next)
{
	struct kc_conn *c = kc_cuse_acquire(fd);
	if (!c)
		return next(epfd, EPOLL_CTL_ADD, fd, event);
	if (kc_side_ready(c) < 0) {
		kc_conn_release(c);
		return next(epfd, EPOLL_CTL_ADD, fd, event);
	}
	int rc = 0, err = 0;
	kc_lock();
	/* One kept from before is live (the kernel says EEXIST) or its set was closed since. */
	struct registration *r = find_locked(fd, epfd);
	bool fresh = !r;
	if (fresh)
		r = make_locked(c, fd, epfd);
	if (!r) {
		rc = 1;
	} else if (r->standin[READY] < 0 || sys_epoll_ctl(epfd, EPOLL_CTL_ADD, r->standin[READY], event) < 0) {
		err = r->standin[READY] < 0 ? EEXIST : errno;
		rc = -1;
		if (fresh)
			drop_standins_locked(r);
	} else {
		r->event = *event;
		/* The channel's stand-in only adds the daemon's hang-up: without it, the rest still holds. */
		struct epoll_event e = event_of(r, CHANNEL);
		if (r->standin[CHANNEL] >= 0)
			(void)sys_epoll_ctl(epfd, EPOLL_CTL_ADD, r->standin[CHANNEL], &e);
	}
	kc_unlock();
	kc_conn_release(c);
	if (rc == 1)
		return next(epfd, EPOLL_CTL_ADD, fd, event);
	if (rc)
		errno = err;
	return rc;
}

int kc_cuse_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event, kc_epoll_ctl_fn next)
{
	if (op == EPOLL_CTL_ADD)
		return event ? add(epfd, fd, event, next) : next(epfd, op, fd, event);
	kc_lock();
	struct registration *r = find_locked(fd, epfd);
	int rc = 0;
	if (r && op == EPOLL_CTL_DEL) {
		rc = remove_locked(r);
	} else if (r && op == EPOLL_CTL_MOD && event && r->standin[READY] >= 0) {
		rc = sys_epoll_ctl(epfd, EPOLL_CTL_MOD, r->standin[READY], event);
		if (rc == 0) {
			r->event = *event;
			struct epoll_event e = event_of(r, CHANNEL);
			if (r->standin[CHANNEL] >= 0)
				(void)sys_epoll_ctl(epfd, EPOLL_CTL_MOD, r->standin[CHANNEL], &e);
		}
	} else {
		r = NULL;
	}
	kc_unlock();
	/* Not through stand-ins: the kernel holds the descriptor itself (or nothing), or says what is wrong. */
	return r ? rc : next(epfd, op, fd, event);
}

/*
 * Ends r: out of its set if this process made it (a forked child's copy is the parent's
 * registration), with the program's descriptor put in its place if asked. errno is kept.
 */
static void end_locked(struct registration *r, bool device_instead)
{
	int err = errno;
	if (r->pid != kc_self_pid()) {
		drop_standins_locked(r);
	} else {
		remove_locked(r);
		if (device_instead)
			(void)sys_epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->fd, &r->event);
	}
	errno = err;
}

void kc_cuse_epoll_forget_locked(int fd)
{
	for (int i = 0; i < REGISTRATIONS; i++)
		if (regs[i].c && regs[i].fd == fd)
			end_locked(&regs[i], false);
}

void kc_cuse_epoll_fall_back_locked(struct kc_conn *c)
{
	for (int i = 0; i < REGISTRATIONS; i++)
		if (regs[i].c == c)
			end_locked(&regs[i], true);
}

bool kc_cuse_epoll_standin_locked(int fd, const struct kc_ident **id)
{
	for (int i = 0; i < REGISTRATIONS; i++) {
		if (!regs[i].c)
			continue;
		if (regs[i].standin[READY] == fd) {
			*id = &regs[i].c->ready_id;
			return true;
		}
		if (regs[i].standin[CHANNEL] == fd) {
			*id = &regs[i].c->sock_id;
			return true;
		}
	}
	return false;
}

void kc_cuse_epoll_lost_locked(int fd)
{
	for (int i = 0; i < REGISTRATIONS; i++)
		for (int k = 0; regs[i].c && k < STANDINS; k++)
			if (regs[i].standin[k] == fd)
				regs[i].standin[k] = -1;
}

bool kc_cuse_epoll_evict_locked(int fd)
{
	for (int i = 0; i < REGISTRATIONS; i++) {
		struct registration *r = &regs[i];
		for (int k = 0; r->c && k < STANDINS; k++) {
			if (r->standin[k] != fd)
				continue;
			int moved = kc_sys_fcntl(fd, F_DUPFD_CLOEXEC, 3);
			struct epoll_event e = event_of(r, k);
			(void)sys_epoll_ctl(r->epfd, EPOLL_CTL_DEL, fd, NULL);
			kc_fd_clear(fd);
			kc_sys_close(fd);
			if (moved >= 0 && kc_fd_set(moved, KC_FD_INTERNAL, r->c) == 0 &&
			    sys_epoll_ctl(r->epfd, EPOLL_CTL_ADD, moved, &e) == 0) {
				r->standin[k] = moved;
				return true;
			}
			/* Nowhere to go: the registration ends, as if the program had closed its descriptor. */
			if (moved >= 0) {
				kc_fd_clear(moved);
				kc_sys_close(moved);
			}
			r->standin[k] = -1;
			remove_locked(r);
			return true;
		}
	}
	return false;
}
