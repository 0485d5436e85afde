/* Socket I/O for the protocol (see sock-io.h). */
#include "sock-io.h"
#include "config.h"
#include "frame.h"
#include "sys.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

static int wait_for(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

int kc_connect_daemon(int sock)
{
	const char *target = kc_config()->socket;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	size_t len = strlen(target);
	if (len == 0) {
		/* The configured socket path is longer than a unix address can hold. */
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(addr.sun_path, target, len);
	while (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
		if (errno != EINTR)
			return -1;
	return 0;
}

int kc_send_all(int sock, struct iovec *iov, int iovcnt, const int *fds, unsigned n_fds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * KC_MAX_LISTED_FDS)];
	} control;
	struct msghdr m = { 0 };
	if (n_fds > KC_MAX_LISTED_FDS)
		return -EINVAL;
	if (n_fds > 0) {
		memset(&control, 0, sizeof control);
		m.msg_control = control.buf;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * n_fds);
	}
	while (iovcnt > 0) {
		m.msg_iov = iov;
		m.msg_iovlen = (size_t)iovcnt;
		ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int rc = wait_for(sock, POLLOUT);
				if (rc)
					return rc;
				continue;
			}
			return -errno;
		}
		/* The descriptors went with the first bytes. */
		m.msg_control = NULL;
		m.msg_controllen = 0;
		while (iovcnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			iovcnt--;
		}
		if (iovcnt > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

int kc_peek_header(int sock, uint8_t *header)
{
	for (;;) {
		/*
		 * Waiting in poll(), not in a blocking recv(): the kernel wakes a task blocked in
		 * recv() on this socket each time the daemon reads what this side sent (to offer
		 * room for writing), and that needless wake-up costs both sides a context switch.
		 * poll() for POLLIN only wakes for data.
		 */
		int rc = wait_for(sock, POLLIN);
		if (rc)
			return rc;
		ssize_t n = recv(sock, header, 16, MSG_PEEK | MSG_DONTWAIT);
		if (n == 16)
			return 0;
		if (n == 0)
			return -ECONNRESET;
		if (n > 0) {
			/*
			 * The header's first bytes are here, the rest is in transit. poll() would
			 * return at once, so wait a moment instead; this is rare.
			 */
			struct timespec ms = { 0, 1000000 };
			nanosleep(&ms, NULL);
			continue;
		}
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			continue;
		return -errno;
	}
}

/* More events than this waiting at once make kc_only_wake_queued say no: it cannot see them all. */
#define EVENTS_SEEN 4

bool kc_only_wake_queued(int sock)
{
	uint8_t seen[EVENTS_SEEN * KC_HEAD_FRAME + 1];
	ssize_t n;
	do
		n = recv(sock, seen, sizeof seen, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK;
	/* A HEAD the shim left in place can have the next one behind it (mux.c). */
	size_t at = 0;
	while (at + KC_FRAME_HEADER <= (size_t)n) {
		uint32_t type;
		memcpy(&type, seen + at + 4, sizeof type);
		size_t len = type == KC_FRAME_WAKE ? KC_FRAME_HEADER : type == KC_FRAME_HEAD ? KC_HEAD_FRAME : 0;
		if (!len)
			return false;
		at += len;
	}
	return at == (size_t)n && (size_t)n < sizeof seen;
}

ssize_t kc_peek_now(int sock, uint8_t *buf, size_t len)
{
	ssize_t n;
	do
		n = recv(sock, buf, len, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n;
}

bool kc_nothing_waiting(int sock)
{
	uint8_t byte;
	ssize_t n;
	do
		n = recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Takes the descriptors out of one recvmsg's control data. */
static int collect_fds(struct msghdr *m, int *fds, unsigned max_fds, unsigned *n_fds)
{
	int overflow = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			if (*n_fds < max_fds) {
				fds[(*n_fds)++] = fd;
			} else {
				kc_sys_close(fd);
				overflow = 1;
			}
		}
	}
	if (m->msg_flags & MSG_CTRUNC)
		overflow = 1;
	return overflow;
}

int kc_recv_exact(int sock, void *buf, size_t len, int *fds, unsigned max_fds, unsigned *n_fds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * KC_MAX_RECEIVED_FDS)];
	} control;
	size_t got = 0;
	int overflow = 0;
	*n_fds = 0;
	while (got < len) {
		struct iovec iov = { .iov_base = (uint8_t *)buf + got, .iov_len = len - got };
		struct msghdr m = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = control.buf,
			.msg_controllen = sizeof control.buf,
		};
		ssize_t n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				int rc = wait_for(sock, POLLIN);
				if (rc)
					return rc;
				continue;
			}
			return -errno;
		}
		overflow |= collect_fds(&m, fds, max_fds, n_fds);
		if (n == 0)
			return -ECONNRESET;
		got += (size_t)n;
	}
	return overflow ? -EPROTO : 0;
}
