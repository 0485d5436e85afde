/*
 * ioctl: kdbus commands go to the daemon as IOCTL frames, everything else to libc. A kdbus
 * ioctl behaves as the kernel's did: the daemon reads the command through the shim's
 * segments and FETCHes, writes its results back through RESULT, and the files it installs
 * land on the numbers the shim reserved. On a CUSE device the kernel carries every ioctl;
 * the shim only sees to the files RECV and SEND install (cuse.h).
 */
#include "caller-memory.h"
#include "conn.h"
#include "cuse.h"
#include "kdbus-abi.h"
#include "prefetch.h"
#include "real.h"
#include "request.h"
#include "reserve.h"
#include "self.h"
#include "shortcuts.h"
#include "sys.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>

/* glibc and musl declare ioctl's request differently; the definition must match the header. */
#ifdef __GLIBC__
typedef unsigned long kc_ioctl_request;
#else
typedef int kc_ioctl_request;
#endif

KC_NEXT_SLOT(ioctl);

/* RESULT writes applied per system call. */
#define WRITE_BATCH 16

/* The VFS answered these before a driver saw them, for kdbus files as for any other. */
static bool handled_by_vfs(uint32_t cmd)
{
	return cmd == FIOCLEX || cmd == FIONCLEX || cmd == FIONBIO || cmd == FIOASYNC;
}

/* RECV installs the message's files; so does SEND when it waits for the reply. */
static bool may_install_files(uint32_t cmd, const struct kc_prefetch *pf)
{
	if (cmd == KDBUS_CMD_RECV)
		return true;
	return cmd == KDBUS_CMD_SEND && pf->have_flags && (pf->flags & KDBUS_SEND_SYNC_REPLY);
}

/*
 * Applies a RESULT: write-backs into the caller's memory, the pool, installed files.
 * Returns the command's -errno (or 0); *installed says how many reserved numbers were used.
 */
static int apply_result(struct kc_conn *c, struct kc_inbound *in, const struct kc_result *r,
			const int *reserved, unsigned n_reserved, unsigned *installed)
{
	int err = r->err;
	size_t pos = 0;
	uint64_t address;
	const uint8_t *data;
	uint32_t length;
	struct iovec local[WRITE_BATCH], remote[WRITE_BATCH];
	unsigned n = 0;
	bool more = true;
	while (more) {
		more = kc_result_next_write(r, &pos, &address, &data, &length);
		if (more) {
			local[n] = (struct iovec){ (void *)data, length };
			remote[n] = (struct iovec){ (void *)(uintptr_t)address, length };
			n++;
		}
		if (n == WRITE_BATCH || (!more && n > 0)) {
			if (kc_caller_write_all(local, remote, n) < 0 && err == 0)
				err = EFAULT;
			n = 0;
		}
	}
	unsigned next = 0;
	if (r->flags & KC_RESULT_POOL) {
		if (in->n_fds == 0)
			return -(err ? err : EPROTO);
		kc_conn_set_pool(c, in->fds[0]);
		in->fds[0] = -1;
		next = 1;
	}
	if (in->n_fds - next != r->n_fds || r->n_fds > n_reserved)
		return -(err ? err : EPROTO);
	for (unsigned i = 0; i < r->n_fds; i++) {
		kc_reserve_install(reserved[i], in->fds[next + i]);
		in->fds[next + i] = -1;
	}
	*installed = r->n_fds;
	return -err;
}

/* Where cmd, having succeeded, wrote the offset of a pool slice it published; 0 if nowhere. */
static uint32_t published_offset_field(uint32_t cmd, const struct kc_prefetch *pf)
{
	switch (cmd) {
	case KDBUS_CMD_RECV:
		return pf->have_flags && (pf->flags & KDBUS_RECV_DROP) ? 0 : KDBUS_RECV_MSG_OFFSET_OFF;
	case KDBUS_CMD_SEND:
		return pf->have_flags && (pf->flags & KDBUS_SEND_SYNC_REPLY) ? KDBUS_SEND_REPLY_OFFSET_OFF : 0;
	case KDBUS_CMD_HELLO:
		return KDBUS_HELLO_OFFSET_OFF;
	case KDBUS_CMD_CONN_INFO:
	case KDBUS_CMD_BUS_CREATOR_INFO:
		return KDBUS_INFO_OFFSET_OFF;
	case KDBUS_CMD_LIST:
		return KDBUS_LIST_OFFSET_OFF;
	}
	return 0;
}

/*
 * After a successful RESULT: the slice the command published, as its write-backs tell
 * (an empty reply, at the pool's end, is no slice).
 */
static void note_published(struct kc_conn *c, uint32_t cmd, uint64_t arg, const struct kc_prefetch *pf,
			   const struct kc_result *r)
{
	uint32_t field = published_offset_field(cmd, pf);
	uint64_t pool_size;
	if (!field || !kc_conn_shortcuts(c, &pool_size))
		return;
	uint64_t want = arg + field, address, offset;
	const uint8_t *data;
	uint32_t length;
	size_t pos = 0;
	bool found = false;
	while (kc_result_next_write(r, &pos, &address, &data, &length)) {
		if (address <= want && want + sizeof offset <= address + length) {
			memcpy(&offset, data + (want - address), sizeof offset);
			found = true;
		}
	}
	if (found && offset < pool_size)
		kc_mux_note_published(c->mux, offset);
}

static int exchange(struct kc_conn *c, int sock, uint32_t cmd, uint64_t arg, const struct kc_prefetch *pf,
		    const int *reserved, unsigned n_reserved, unsigned *installed, bool unanswered)
{
	uint8_t head[KC_FRAME_HEADER + KC_IOCTL_FIXED + 4 * (KC_MAX_LISTED_FDS + KDBUS_MAX_INSTALLED_FDS)];
	int32_t reserved32[KDBUS_MAX_INSTALLED_FDS];
	int pass[KC_MAX_LISTED_FDS];
	unsigned n_pass = 0;
	for (unsigned i = 0; i < n_reserved; i++)
		reserved32[i] = reserved[i];
	for (unsigned i = 0; i < pf->n_fds; i++)
		if (pf->fds[i] >= 0)
			pass[n_pass++] = pf->fds[i];
	struct kc_ioctl_desc d = {
		.cmd = cmd,
		.tid = (uint32_t)kc_self_tid(),
		.arg = arg,
		.n_segments = pf->n_segments,
		.segments_bytes = pf->segments.len,
		.fds = pf->fds,
		.n_fds = pf->n_fds,
		.reserved = reserved32,
		.n_reserved = n_reserved,
	};
	kc_ioctl_head_encode(head, 0, &d);
	struct kc_outgoing out = {
		.iov = { { head, kc_ioctl_head_size(pf->n_fds, n_reserved) }, { pf->segments.data, pf->segments.len } },
		.iovcnt = pf->segments.len ? 2 : 1,
		.pass = pass,
		.n_pass = n_pass,
		.listed = head + KC_IOCTL_FDS_OFF,
		.n_listed = pf->n_fds,
		.recv = cmd == KDBUS_CMD_RECV,
	};
	if (unanswered)
		return kc_request_unanswered(c, sock, &out);
	struct kc_inbound in;
	struct kc_result r;
	int rc = kc_request(c, sock, &out, &in, &r);
	if (rc)
		return rc;
	rc = apply_result(c, &in, &r, reserved, n_reserved, installed);
	if (rc == 0 && cmd == KDBUS_CMD_HELLO && (r.flags & KC_RESULT_EXACT_WAKES) && !(pf->flags & KDBUS_HELLO_POLICY_HOLDER))
		kc_conn_allow_shortcuts(c);
	if (rc == 0)
		note_published(c, cmd, arg, pf, &r);
	kc_inbound_release(&in);
	return rc;
}

/*
 * FREE of a slice the daemon published and no FREE named since, on a connection with no
 * sign of its end: kdbus could only succeed (writing return_flags 0), so the shim does
 * that itself and the daemon gets the FREE without answering it. Every FREE forgets its
 * offset, whichever way it goes. True if the FREE may go unanswered.
 */
static bool free_needs_no_answer(struct kc_conn *c, int sock, uint64_t arg, const struct kc_prefetch *pf)
{
	uint64_t offset, pool_size;
	if (!kc_free_offset(pf, &offset))
		return false;
	bool sure = kc_mux_take_published(c->mux, sock, offset) && kc_conn_shortcuts(c, &pool_size);
	return sure && kc_free_cannot_fail(pf) && kc_free_answer(arg);
}

/*
 * RECV on an empty queue: kdbus answered EAGAIN, reporting no message and no lost ones.
 * Whenever the connection has something to receive (or has gone), the daemon has a WAKE
 * (or HUP) on its way after its last RESULT (docs/socket-protocol.md, Poll); when none was
 * read and none waits, the queue is empty, and the shim answers as the daemon would, with
 * the same write-backs. True if answered.
 */
static bool recv_answered_here(struct kc_conn *c, int sock, uint64_t arg, const struct kc_prefetch *pf)
{
	uint64_t pool_size;
	return kc_recv_may_answer_empty(pf) && kc_conn_shortcuts(c, &pool_size) &&
	       kc_mux_nothing_queued(c->mux, sock) && kc_recv_answer_empty(arg, pool_size);
}

/*
 * A plain RECV when the daemon's last HEAD named the queue's head and no RECV went out
 * since (docs/socket-protocol.md, HEAD): the shim answers as kdbus did, and the RECV goes
 * to the daemon unanswered, in the same place in the stream, to take that message off the
 * queue. True if answered; *rc is then the outcome.
 */
static bool recv_answered_from_head(struct kc_conn *c, int sock, uint64_t arg, const struct kc_prefetch *pf, int *rc)
{
	uint64_t pool_size, offset, size;
	if (!kc_recv_is_plain(pf) || !kc_conn_shortcuts(c, &pool_size))
		return false;
	uint8_t head[KC_HEAD_RECV_FRAME];
	kc_head_recv_encode(head, (uint32_t)kc_self_tid(), arg);
	struct iovec iov = { head, sizeof head };
	kc_mux_lock_writes(c->mux);
	bool taken = kc_mux_take_head(c->mux, sock, &offset, &size);
	int sent = taken ? kc_send_all(sock, &iov, 1, NULL, 0) : 0;
	kc_mux_unlock_writes(c->mux);
	if (!taken)
		return false;
	if (sent) {
		/* The daemon is gone; how the connection ended is for the next request to tell. */
		*rc = sent == -EPIPE || sent == -ECONNRESET ? -ESHUTDOWN : sent;
		return true;
	}
	if (!kc_recv_answer(arg, offset, size)) {
		*rc = -EFAULT;
		return true;
	}
	kc_mux_note_published(c->mux, offset);
	*rc = 0;
	return true;
}

static int kdbus_ioctl(struct kc_conn *c, int fd, uint32_t cmd, uint64_t arg)
{
	struct kc_prefetch pf;
	int reserved[KDBUS_MAX_INSTALLED_FDS];
	unsigned n_reserved = 0, installed = 0;
	int rc = kc_prefetch_build(&pf, cmd, arg);
	int sock = rc == 0 ? kc_conn_socket(c, fd) : -1;
	if (rc == 0 && sock < 0) {
		rc = -EBADF;
	} else if (rc == 0 && cmd == KDBUS_CMD_RECV && recv_answered_here(c, sock, arg, &pf)) {
		rc = -EAGAIN;
	} else if (rc == 0 && cmd == KDBUS_CMD_RECV && recv_answered_from_head(c, sock, arg, &pf, &rc)) {
		/* rc says how. */
	} else if (rc == 0) {
		if (may_install_files(cmd, &pf))
			n_reserved = (unsigned)kc_reserve_take(reserved, KDBUS_MAX_INSTALLED_FDS);
		bool unanswered = cmd == KDBUS_CMD_FREE && free_needs_no_answer(c, sock, arg, &pf);
		rc = exchange(c, sock, cmd, arg, &pf, reserved, n_reserved, &installed, unanswered);
	}
	kc_reserve_return(reserved + installed, (int)(n_reserved - installed));
	kc_prefetch_free(&pf);
	return rc;
}

/*
 * An ioctl on a CUSE device (or on an unknown descriptor that may be one): the kernel carries
 * it; RECV and SEND get the files they install put in place around it, and RECV on an empty
 * queue and FREE of a published slice may be answered here (cuse.h).
 */
static int cuse_ioctl(int fd, kc_ioctl_request request, unsigned long arg,
		      int (*next)(int, kc_ioctl_request, ...))
{
	uint32_t cmd = (uint32_t)request;
	if (!next)
		return kc_next_missing();
	if (!kc_cuse_installs(cmd) && cmd != KDBUS_CMD_FREE)
		return next(fd, request, arg);
	struct kc_conn *c = kc_cuse_acquire(fd);
	if (!c && kc_fd_get(fd).kind == KC_FD_NONE && kc_cuse_installs(cmd))
		c = kc_cuse_probe(fd);
	int err;
	if (c && kc_cuse_answered(c, cmd, arg, &err)) {
		kc_conn_release(c);
		if (!err)
			return 0;
		errno = err;
		return -1;
	}
	if (c && !kc_cuse_installs(cmd)) {
		kc_conn_release(c);
		return next(fd, request, arg);
	}
	struct kc_side_offer offer = { .n = 0 };
	if (c && !kc_cuse_before_ioctl(c, fd, cmd, arg, &offer)) {
		kc_conn_release(c);
		c = NULL;
	}
	int rc = next(fd, request, arg);
	if (c) {
		int saved = errno;
		kc_cuse_after_ioctl(c, cmd, arg, rc == 0, &offer);
		kc_conn_release(c);
		errno = saved;
	}
	return rc;
}

/* ioctl on a descriptor that is not a CUSE device the shim knows. */
static int kdbus_or_next(int fd, kc_ioctl_request request, unsigned long arg,
			 int (*next)(int, kc_ioctl_request, ...))
{
	uint32_t cmd = (uint32_t)request;
	struct kc_conn *c = kc_conn_acquire(fd);
	if (!c && KDBUS_IOCTL_TYPE(cmd) == KDBUS_IOCTL_MAGIC && kc_fd_get(fd).kind == KC_FD_NONE) {
		c = kc_conn_attach(fd);
		if (!c && kc_cuse_installs(cmd))
			return cuse_ioctl(fd, request, arg, next);
	}
	if (!c || handled_by_vfs(cmd)) {
		if (c)
			kc_conn_release(c);
		return next ? next(fd, request, arg) : kc_next_missing();
	}
	int rc = kdbus_ioctl(c, fd, cmd, arg);
	kc_conn_release(c);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	return 0;
}

KC_EXPORT int ioctl(int fd, kc_ioctl_request request, ...)
{
	va_list ap;
	va_start(ap, request);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	int (*next)(int, kc_ioctl_request, ...) = KC_NEXT(ioctl);
	enum kc_fd_kind kind = kc_fd_get(fd).kind;
	if (kind == KC_FD_CUSE)
		return cuse_ioctl(fd, request, arg, next);
	/* A kdbus descriptor: the pid is read once for the whole call (self.h). */
	pid_t outer = kind == KC_FD_USER ? kc_self_enter() : 0;
	int rc = kdbus_or_next(fd, request, arg, next);
	if (kind == KC_FD_USER)
		kc_self_leave(outer);
	return rc;
}
