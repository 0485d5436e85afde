/* The OPEN exchange that turns a fresh daemon connection into a kdbus descriptor. */
#include "handshake.h"
#include "conn.h"
#include "frame.h"
#include "self.h"
#include "sock-io.h"
#include "sys.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* OPEN is the first frame on its socket; the connection's multiplexer numbers from after it. */
#define OPEN_SEQ 1
#define FIRST_REQUEST_SEQ 2

static int connect_daemon(int sock, const char *path)
{
	if (kc_connect_daemon(sock) == 0)
		return 0;
	int err = errno;
	struct stat st;
	/* No daemon and no node: the node does not exist, as far as the program can tell. */
	errno = stat(path, &st) < 0 && errno == ENOENT ? ENOENT : err;
	return -1;
}

/* Sends OPEN and reads its RESULT; 0 or -errno. */
static int exchange_open(int sock, const char *rel, int flags)
{
	uint8_t head[KC_OPEN_HEAD];
	static const uint8_t zeros[8];
	size_t rel_len = strlen(rel);
	kc_open_head_encode(head, OPEN_SEQ, (uint32_t)flags, (uint32_t)kc_self_tid(), (uint32_t)rel_len,
			    KC_OPEN_FEATURE_HEADS);
	struct iovec iov[3] = {
		{ head, sizeof head },
		{ (void *)rel, rel_len },
		{ (void *)zeros, kc_pad8(rel_len) - rel_len },
	};
	int rc = kc_send_all(sock, iov, 3, NULL, 0);
	if (rc)
		return rc == -EPIPE ? -ESHUTDOWN : rc;

	uint8_t raw[KC_FRAME_HEADER];
	int fds[KC_MAX_RECEIVED_FDS];
	unsigned n_fds = 0, more_fds = 0;
	struct kc_header h;
	rc = kc_recv_exact(sock, raw, sizeof raw, fds, KC_MAX_RECEIVED_FDS, &n_fds);
	if (rc == 0 && (kc_header_decode(raw, &h) < 0 || h.type != KC_FRAME_RESULT || h.seq != OPEN_SEQ))
		rc = -EPROTO;
	uint8_t *payload = NULL;
	struct kc_result r;
	if (rc == 0) {
		size_t len = h.length - KC_FRAME_HEADER;
		payload = malloc(len ? len : 1);
		if (!payload)
			rc = -ENOMEM;
		else
			rc = kc_recv_exact(sock, payload, len, fds + n_fds, KC_MAX_RECEIVED_FDS - n_fds, &more_fds);
		n_fds += more_fds;
		if (rc == 0)
			rc = kc_result_decode(payload, len, &r);
	}
	free(payload);
	if (rc == 0 && r.err != 0)
		rc = -r.err;
	else if (rc == 0 && n_fds != 0)
		rc = -EPROTO; /* OPEN hands over nothing */
	for (unsigned i = 0; i < n_fds; i++)
		kc_sys_close(fds[i]);
	return rc;
}

int kc_handshake(const char *rel, const char *path, int flags)
{
	int cloexec = (flags & O_CLOEXEC) != 0;
	int sock = socket(AF_UNIX, SOCK_STREAM | (cloexec ? SOCK_CLOEXEC : 0), 0);
	if (sock < 0)
		return -1;
	int err;
	if (connect_daemon(sock, path) < 0) {
		err = errno;
		goto fail;
	}
	int rc = exchange_open(sock, rel, flags);
	if (rc < 0) {
		err = -rc;
		goto fail;
	}
	struct kc_mux *mux = kc_mux_create(FIRST_REQUEST_SEQ);
	if (!mux) {
		err = errno;
		goto fail;
	}
	/* kdbus ignored O_NONBLOCK, but F_GETFL shows it; the shim's own I/O waits regardless. */
	if (flags & O_NONBLOCK)
		kc_sys_fcntl(sock, F_SETFL, O_NONBLOCK);
	if (!kc_conn_create(sock, mux, true)) {
		err = errno;
		kc_mux_unmap(mux);
		goto fail;
	}
	return sock;
fail:
	kc_sys_close(sock);
	errno = err;
	return -1;
}
