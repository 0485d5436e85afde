/* The request cycle (see request.h). */
#include "request.h"
#include "caller-memory.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Sends the frame, with its descriptors on its first bytes; 0 or -errno. */
static int send_request(struct kc_conn *c, int sock, struct kc_outgoing *out)
{
	kc_mux_lock_writes(c->mux);
	if (out->recv)
		kc_mux_count_recv(c->mux);
	int rc = kc_send_all(sock, out->iov, out->iovcnt, out->pass, out->n_pass);
	if (rc == -EBADF && out->n_pass > 0) {
		/* One of the program's descriptors went away since it was listed: kdbus said EBADF too. */
		memset(out->listed, 0xff, 4 * (size_t)out->n_listed);
		rc = kc_send_all(sock, out->iov, out->iovcnt, NULL, 0);
	}
	kc_mux_unlock_writes(c->mux);
	return rc;
}

/* Answers a FETCH with the caller's memory, or EFAULT where it cannot be read. */
static int answer_fetch(struct kc_conn *c, int sock, const struct kc_inbound *in)
{
	uint64_t address;
	uint32_t length;
	if (kc_fetch_decode(in->payload, in->payload_len, &address, &length) < 0)
		return -EPROTO;
	void *data = NULL;
	/* A MEM frame must fit the daemon's frame limit; more was never readable by kdbus either. */
	if (length > 0 && length <= KC_FRAME_MAX - KC_MEM_HEAD)
		data = malloc(length);
	if (data && kc_caller_read(data, address, length) == 0) {
		int rc = kc_mux_send_mem(c->mux, sock, in->header.seq, 0, data, length);
		free(data);
		return rc;
	}
	free(data);
	return kc_mux_send_mem(c->mux, sock, in->header.seq, length ? EFAULT : 0, NULL, 0);
}

int kc_request(struct kc_conn *c, int sock, struct kc_outgoing *out, struct kc_inbound *in,
	       struct kc_result *result)
{
	/* Once sent, the request must be seen through, or the stream would fall out of step for all. */
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	struct kc_wait w;
	int rc = kc_mux_enter(c->mux, &w);
	if (rc) {
		pthread_setcancelstate(cancel_state, NULL);
		return rc;
	}
	memcpy((uint8_t *)out->iov[0].iov_base + 8, &w.seq, sizeof w.seq);
	rc = send_request(c, sock, out);
	/*
	 * The daemon closed the connection. What it sent before (other waiters' answers, a HUP)
	 * is still to be read, and the stream's end then tells every waiter, this one included,
	 * how the connection ended.
	 */
	bool unanswerable = rc == -EPIPE;
	if (unanswerable)
		rc = 0;
	while (rc == 0) {
		rc = kc_mux_next(c->mux, &w, sock, in);
		if (rc)
			break;
		if (unanswerable) {
			/* A frame for a request the daemon never got cannot be right. */
			kc_inbound_release(in);
			rc = -EPROTO;
			break;
		}
		if (in->header.type == KC_FRAME_RESULT) {
			rc = kc_result_decode(in->payload, in->payload_len, result);
			if (rc)
				kc_inbound_release(in);
			break;
		}
		rc = answer_fetch(c, sock, in);
		kc_inbound_release(in);
	}
	kc_mux_leave(c->mux, &w);
	pthread_setcancelstate(cancel_state, NULL);
	return rc;
}

int kc_request_unanswered(struct kc_conn *c, int sock, struct kc_outgoing *out)
{
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	int rc = send_request(c, sock, out);
	pthread_setcancelstate(cancel_state, NULL);
	return rc;
}

int kc_request_bare(struct kc_conn *c, int sock, uint32_t type, struct kc_inbound *in, struct kc_result *result)
{
	uint8_t frame[KC_FRAME_HEADER];
	kc_bare_encode(frame, type, 0);
	struct kc_outgoing out = { .iov = { { frame, sizeof frame } }, .iovcnt = 1 };
	return kc_request(c, sock, &out, in, result);
}
