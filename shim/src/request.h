/*
 * One request to the daemon and its answer: the frame goes out (an IOCTL with the
 * descriptors it names), FETCHes are answered from the caller's memory, and the RESULT comes
 * back to the caller.
 */
#ifndef KC_REQUEST_H
#define KC_REQUEST_H

#include "conn.h"

#include <stdbool.h>
#include <sys/uio.h>

struct kc_outgoing {
	/* The frame: iov[0] starts with its header, whose seq kc_request fills in. */
	struct iovec iov[2];
	int iovcnt;
	/* IOCTL only: descriptors that go with the frame's first bytes. */
	const int *pass;
	unsigned n_pass;
	/* The frame's fd number list, set to -1 if the descriptors cannot be passed after all. */
	uint8_t *listed;
	unsigned n_listed;
	/* A RECV: counted as it is written (kc_mux_count_recv). */
	bool recv;
};

/*
 * Sends out over sock and waits for the RESULT. 0 with *result decoded from *in (which the
 * caller releases), or -errno if the request could not be made or answered.
 */
int kc_request(struct kc_conn *c, int sock, struct kc_outgoing *out, struct kc_inbound *in,
	       struct kc_result *result);

/* Sends out over sock as a request that wants no answer (its seq stays 0); 0 or -errno. */
int kc_request_unanswered(struct kc_conn *c, int sock, struct kc_outgoing *out);

/* kc_request for a frame without payload (POOL, CLOSE). */
int kc_request_bare(struct kc_conn *c, int sock, uint32_t type, struct kc_inbound *in, struct kc_result *result);

#endif
