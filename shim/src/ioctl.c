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
#include "sys.h"

#include <errno.h>
#include <stdarg.h>
#include <sys/ioctl.h>

/* glibc and musl declare ioctl's request differently; the definition must match the header. */
#ifdef __GLIBC__
typedef unsigned long kc_ioctl_request;
#else
typedef int kc_ioctl_request;
#endif

KC_NEXT_SLOT(ioctl);

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
	while (kc_result_next_write(r, &pos, &address, &data, &length))
		if (kc_caller_write(address, data, length) < 0 && err == 0)
			err = EFAULT;
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

static int exchange(struct kc_conn *c, int sock, uint32_t cmd, uint64_t arg, const struct kc_prefetch *pf,
		    const int *reserved, unsigned n_reserved, unsigned *installed)
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
		.tid = (uint32_t)kc_sys_gettid(),
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
		.channel_message = true,
		.pass = pass,
		.n_pass = n_pass,
		.listed = head + KC_IOCTL_FDS_OFF,
		.n_listed = pf->n_fds,
	};
	struct kc_inbound in;
	struct kc_result r;
	int rc = kc_request(c, sock, &out, &in, &r);
	if (rc)
		return rc;
	rc = apply_result(c, &in, &r, reserved, n_reserved, installed);
	kc_inbound_release(&in);
	return rc;
}

static int kdbus_ioctl(struct kc_conn *c, int fd, uint32_t cmd, uint64_t arg)
{
	struct kc_prefetch pf;
	int reserved[KDBUS_MAX_INSTALLED_FDS];
	unsigned n_reserved = 0, installed = 0;
	int rc = kc_prefetch_build(&pf, cmd, arg);
	if (rc == 0) {
		if (may_install_files(cmd, &pf))
			n_reserved = (unsigned)kc_reserve_take(reserved, KDBUS_MAX_INSTALLED_FDS);
		int sock = kc_conn_socket(c, fd);
		rc = sock < 0 ? -EBADF : exchange(c, sock, cmd, arg, &pf, reserved, n_reserved, &installed);
	}
	kc_reserve_return(reserved + installed, (int)(n_reserved - installed));
	kc_prefetch_free(&pf);
	return rc;
}

/*
 * An ioctl on a CUSE device (or on an unknown descriptor that may be one): the kernel carries
 * it; RECV and SEND get the files they install put in place around it.
 */
static int cuse_ioctl(int fd, kc_ioctl_request request, unsigned long arg,
		      int (*next)(int, kc_ioctl_request, ...))
{
	uint32_t cmd = (uint32_t)request;
	if (!next)
		return kc_next_missing();
	if (!kc_cuse_installs(cmd))
		return next(fd, request, arg);
	struct kc_conn *c = kc_cuse_acquire(fd);
	if (!c && kc_fd_get(fd).kind == KC_FD_NONE)
		c = kc_cuse_probe(fd);
	if (c && !kc_cuse_before_ioctl(c, fd, cmd, arg)) {
		kc_conn_release(c);
		c = NULL;
	}
	int rc = next(fd, request, arg);
	if (c) {
		int saved = errno;
		kc_cuse_after_ioctl(c, cmd, arg, rc == 0);
		kc_conn_release(c);
		errno = saved;
	}
	return rc;
}

KC_EXPORT int ioctl(int fd, kc_ioctl_request request, ...)
{
	va_list ap;
	va_start(ap, request);
	unsigned long arg = va_arg(ap, unsigned long);
	va_end(ap);
	int (*next)(int, kc_ioctl_request, ...) = KC_NEXT(ioctl);
	uint32_t cmd = (uint32_t)request;
	if (kc_fd_get(fd).kind == KC_FD_CUSE)
		return cuse_ioctl(fd, request, arg, next);
	struct kc_conn *c = kc_conn_acquire(fd);
	if (!c && KDBUS_IOCTL_TYPE(cmd) == KDBUS_IOCTL_MAGIC && kc_fd_get(fd).kind == KC_FD_NONE) {
		c = kc_conn_attach(fd);
		if (!c && kc_cuse_installs(cmd))
			return cuse_ioctl(fd, request, arg, next);
	}
	if (!c || handled_by_vfs(cmd)) {
		if (c) {
			if (cmd == FIONCLEX)
				kc_conn_note_inheritable(fd);
			kc_conn_release(c);
		}
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
