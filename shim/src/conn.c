/* Connections and the descriptors that belong to them (see conn.h). */
#include "conn.h"
#include "cuse-epoll.h"
#include "request.h"
#include "reserve.h"
#include "self.h"
#include "sys.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static struct kc_conn *conns;

static bool ident_of(int fd, struct kc_ident *id)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return false;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	return true;
}

static bool same_ident(const struct kc_ident *a, const struct kc_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino;
}

static bool still_is(int fd, const struct kc_ident *id)
{
	struct kc_ident now;
	return ident_of(fd, &now) && same_ident(&now, id);
}

/* The process that forks; the child moves its references from there to itself. */
static pid_t forking_pid;

void kc_conn_before_fork_locked(void)
{
	/* Until the child counts its copies itself, the parent holds them for it. */
	forking_pid = getpid();
	for (struct kc_conn *c = conns; c; c = c->next)
		if (c->counted)
			kc_holders_add(kc_mux_holders(c->mux), forking_pid, (int)c->user_fds);
}

void kc_conn_in_child_locked(void)
{
	pid_t self = getpid();
	for (struct kc_conn *c = conns; c; c = c->next) {
		c->refs = c->user_fds;
		if (c->cuse)
			kc_side_in_child_locked(c);
		if (c->counted) {
			kc_holders_add(kc_mux_holders(c->mux), self, (int)c->user_fds);
			kc_holders_add(kc_mux_holders(c->mux), forking_pid, -(int)c->user_fds);
		}
	}
}

/* The field of c that holds fd, with the file it must be; NULL if none does. */
static int *field_of(struct kc_conn *c, int fd, const struct kc_ident **id)
{
	if (c->sock == fd) {
		*id = &c->sock_id;
		return &c->sock;
	}
	if (c->pool == fd) {
		*id = &c->pool_id;
		return &c->pool;
	}
	if (c->wake == fd) {
		*id = &c->wake_id;
		return &c->wake;
	}
	if (c->ready == fd) {
		*id = &c->ready_id;
		return &c->ready;
	}
	return NULL;
}

static void take_ref_locked(struct kc_conn *c, bool user_fd)
{
	c->refs++;
	if (user_fd)
		c->user_fds++;
	if (c->counted)
		kc_holders_add(kc_mux_holders(c->mux), kc_self_pid(), 1);
}

/*
 * Drops a reference. Returns c when it was this process's last: c is then out of the list
 * and the table, and the caller hands it to finish() once kc_lock is released.
 */
static struct kc_conn *drop_ref_locked(struct kc_conn *c, bool user_fd)
{
	if (user_fd)
		c->user_fds--;
	if (c->counted && kc_holders_add(kc_mux_holders(c->mux), kc_self_pid(), -1) == 0 &&
	    kc_holders_last(kc_mux_holders(c->mux)))
		c->release_handle = true;
	if (--c->refs > 0)
		return NULL;
	for (struct kc_conn **p = &conns; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	int own[] = { c->sock, c->pool, c->wake, c->ready };
	for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
		if (own[i] >= 0)
			kc_fd_clear(own[i]);
	return c;
}

/* The end of a connection in this process, outside kc_lock (CLOSE waits for the daemon). */
static void finish(struct kc_conn *c)
{
	if (!c)
		return;
	if (c->release_handle && c->sock >= 0) {
		struct kc_inbound in;
		struct kc_result r;
		/* Whatever the daemon answers, the descriptor goes; a dead stream has nothing to release. */
		if (kc_request_bare(c, c->sock, KC_FRAME_CLOSE, &in, &r) == 0)
			kc_inbound_release(&in);
	}
	int own[] = { c->sock, c->pool, c->wake, c->ready };
	for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
		if (own[i] >= 0)
			kc_sys_close(own[i]);
	if (c->mux)
		kc_mux_unmap(c->mux);
	if (c->cuse)
		kc_side_finish(&c->side);
	free(c);
}

/* Forgets whatever the table says about fd, which no longer is (or never was) that file. */
static struct kc_conn *clear_entry_locked(int fd)
{
	struct kc_fd_entry e = kc_fd_get(fd);
	const struct kc_ident *id;
	int *field;
	switch (e.kind) {
	case KC_FD_NONE:
		return NULL;
	case KC_FD_USER:
		kc_fd_clear(fd);
		return drop_ref_locked(e.owner, true);
	case KC_FD_CUSE:
		kc_cuse_epoll_forget_locked(fd);
		kc_fd_clear(fd);
		return drop_ref_locked(e.owner, true);
	case KC_FD_INTERNAL:
		if (!e.owner) {
			kc_reserve_forget_locked(fd);
			return NULL;
		}
		kc_fd_clear(fd);
		field = field_of(e.owner, fd, &id);
		if (field)
			*field = -1;
		else
			kc_cuse_epoll_lost_locked(fd);
		return NULL;
	}
	return NULL;
}

struct kc_conn *kc_conn_create(int user_fd, struct kc_mux *mux, bool counted)
{
	struct kc_conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->refs = c->user_fds = 1;
	c->counted = counted;
	c->pool = c->wake = c->ready = -1;
	c->mux = mux;
	if (!ident_of(user_fd, &c->sock_id))
		goto fail;
	c->sock = kc_sys_fcntl(user_fd, F_DUPFD_CLOEXEC, 3);
	if (c->sock < 0)
		goto fail_sock;
	kc_lock();
	struct kc_fd_entry e = kc_fd_get(user_fd);
	if (e.kind == KC_FD_USER && still_is(user_fd, &e.owner->sock_id)) {
		/* Another thread attached the same descriptor first. */
		kc_unlock();
		errno = EEXIST;
		goto fail_sock;
	}
	struct kc_conn *stale = clear_entry_locked(user_fd);
	bool ok = kc_fd_set(user_fd, KC_FD_USER, c) == 0 && kc_fd_set(c->sock, KC_FD_INTERNAL, c) == 0;
	if (ok) {
		c->next = conns;
		conns = c;
	} else {
		kc_fd_clear(user_fd);
		kc_fd_clear(c->sock);
	}
	kc_unlock();
	finish(stale);
	if (ok)
		return c;
	errno = EMFILE;
fail_sock:
	if (c->sock >= 0)
		kc_sys_close(c->sock);
fail:
	free(c);
	return NULL;
}

/* The file a program descriptor of c must be. */
static const struct kc_ident *user_ident(const struct kc_conn *c)
{
	return c->cuse ? &c->dev_id : &c->sock_id;
}

struct kc_conn *kc_conn_create_cuse(int fd)
{
	int saved = errno;
	struct stat st;
	struct kc_conn *c = NULL;
	if (fstat(fd, &st) < 0 || !S_ISCHR(st.st_mode) || !(c = calloc(1, sizeof *c)))
		goto out;
	c->refs = c->user_fds = 1;
	c->cuse = true;
	c->sock = c->pool = c->wake = c->ready = -1;
	c->dev_id.dev = st.st_dev;
	c->dev_id.ino = st.st_ino;
	kc_lock();
	struct kc_fd_entry e = kc_fd_get(fd);
	if (e.kind == KC_FD_CUSE && still_is(fd, &e.owner->dev_id)) {
		/* Another thread recorded it first. */
		kc_unlock();
		free(c);
		c = e.owner;
		goto out;
	}
	struct kc_conn *stale = clear_entry_locked(fd);
	if (kc_fd_set(fd, KC_FD_CUSE, c) == 0) {
		c->next = conns;
		conns = c;
	} else {
		free(c);
		c = NULL;
	}
	kc_unlock();
	finish(stale);
out:
	errno = saved;
	return c;
}

static struct kc_conn *acquire(int fd, enum kc_fd_kind kind)
{
	if (kc_fd_get(fd).kind != kind)
		return NULL;
	struct kc_conn *c = NULL, *stale = NULL;
	kc_lock();
	struct kc_fd_entry e = kc_fd_get(fd);
	if (e.kind == kind) {
		if (still_is(fd, user_ident(e.owner))) {
			c = e.owner;
			take_ref_locked(c, false);
		} else {
			stale = clear_entry_locked(fd);
		}
	}
	kc_unlock();
	finish(stale);
	return c;
}

struct kc_conn *kc_conn_acquire(int fd)
{
	return acquire(fd, KC_FD_USER);
}

struct kc_conn *kc_cuse_acquire(int fd)
{
	return acquire(fd, KC_FD_CUSE);
}

void kc_conn_release(struct kc_conn *c)
{
	kc_lock();
	struct kc_conn *last = drop_ref_locked(c, false);
	kc_unlock();
	finish(last);
}

struct kc_conn *kc_conn_join(int fd, const struct kc_ident *sock_id)
{
	struct kc_conn *c;
	kc_lock();
	/* A CUSE device's side channel is a daemon socket too, but never a program's descriptor. */
	for (c = conns; c; c = c->next)
		if (!c->cuse && same_ident(&c->sock_id, sock_id))
			break;
	if (c && kc_fd_get(fd).kind == KC_FD_NONE && kc_fd_set(fd, KC_FD_USER, c) == 0) {
		take_ref_locked(c, true);
		take_ref_locked(c, false);
	} else if (c && kc_fd_get(fd).kind == KC_FD_USER && kc_fd_get(fd).owner == c) {
		take_ref_locked(c, false); /* another thread joined it first */
	} else {
		c = NULL;
	}
	kc_unlock();
	return c;
}

enum kc_fd_kind kc_fd_check(int fd)
{
	struct kc_conn *stale = NULL;
	kc_lock();
	struct kc_fd_entry e = kc_fd_get(fd);
	const struct kc_ident *id = NULL;
	bool valid = true;
	if (e.kind == KC_FD_USER || e.kind == KC_FD_CUSE)
		valid = still_is(fd, user_ident(e.owner));
	else if (e.kind == KC_FD_INTERNAL && e.owner)
		valid = (field_of(e.owner, fd, &id) || kc_cuse_epoll_standin_locked(fd, &id)) && still_is(fd, id);
	else if (e.kind == KC_FD_INTERNAL)
		valid = kc_reserve_holds(fd);
	if (!valid) {
		stale = clear_entry_locked(fd);
		e.kind = KC_FD_NONE;
	}
	kc_unlock();
	finish(stale);
	return e.kind;
}

int kc_conn_socket(struct kc_conn *c, int user_fd)
{
	kc_lock();
	if (c->sock < 0) {
		int s = kc_sys_fcntl(user_fd, F_DUPFD_CLOEXEC, 3);
		if (s >= 0 && kc_fd_set(s, KC_FD_INTERNAL, c) == 0)
			c->sock = s;
		else if (s >= 0)
			kc_sys_close(s);
	}
	int sock = c->sock;
	kc_unlock();
	return sock;
}

void kc_conn_set_pool(struct kc_conn *c, int pool)
{
	struct stat st;
	pool = kc_sys_settle_fd(pool, 1);
	if (pool < 0)
		return;
	if (fstat(pool, &st) < 0) {
		kc_sys_close(pool);
		return;
	}
	kc_lock();
	bool keep = c->pool < 0 && kc_fd_set(pool, KC_FD_INTERNAL, c) == 0;
	if (keep) {
		c->pool = pool;
		c->pool_size = (uint64_t)st.st_size;
		c->pool_id.dev = st.st_dev;
		c->pool_id.ino = st.st_ino;
	}
	kc_unlock();
	if (!keep)
		kc_sys_close(pool);
}

int kc_conn_pool(struct kc_conn *c, uint64_t *size)
{
	kc_lock();
	int pool = c->pool;
	*size = c->pool_size;
	kc_unlock();
	return pool;
}

void kc_conn_allow_shortcuts(struct kc_conn *c)
{
	kc_lock();
	c->shortcuts = true;
	kc_unlock();
}

bool kc_conn_shortcuts(struct kc_conn *c, uint64_t *pool_size)
{
	kc_lock();
	bool known = c->shortcuts && c->pool >= 0;
	*pool_size = c->pool_size;
	kc_unlock();
	return known;
}

void kc_conn_dup(int fd, int newfd)
{
	kc_lock();
	struct kc_conn *stale = clear_entry_locked(newfd);
	struct kc_fd_entry e = kc_fd_get(fd);
	if ((e.kind == KC_FD_USER || e.kind == KC_FD_CUSE) && kc_fd_set(newfd, e.kind, e.owner) == 0)
		take_ref_locked(e.owner, true);
	kc_unlock();
	finish(stale);
}

void kc_conn_closing(int fd)
{
	struct kc_conn *last = NULL;
	kc_lock();
	enum kc_fd_kind kind = kc_fd_get(fd).kind;
	if (kind == KC_FD_USER || kind == KC_FD_CUSE)
		last = clear_entry_locked(fd);
	kc_unlock();
	finish(last);
}

void kc_conn_evict_locked(int newfd)
{
	struct kc_fd_entry e = kc_fd_get(newfd);
	if (e.kind != KC_FD_INTERNAL)
		return;
	if (e.owner) {
		if (kc_cuse_epoll_evict_locked(newfd))
			return;
		const struct kc_ident *id;
		int *field = field_of(e.owner, newfd, &id);
		if (field && still_is(newfd, id)) {
			int cloexec = kc_sys_fcntl(newfd, F_GETFD, 0) & FD_CLOEXEC;
			int moved = kc_sys_fcntl(newfd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 3);
			if (moved >= 0 && kc_fd_set(moved, KC_FD_INTERNAL, e.owner) == 0) {
				kc_fd_clear(newfd);
				*field = moved;
				kc_sys_close(newfd);
				return;
			}
			if (moved >= 0)
				kc_sys_close(moved);
		}
		clear_entry_locked(newfd);
		return;
	}
	bool held = kc_reserve_holds(newfd);
	kc_reserve_forget_locked(newfd);
	if (held)
		kc_sys_close(newfd);
}
