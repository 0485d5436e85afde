/*
 * The pool slices the daemon has published to the program (RECV, a synchronous SEND's
 * reply, HELLO, CONN_INFO, BUS_CREATOR_INFO, LIST) and that no FREE has named since, as
 * far as the RESULTs read by the processes sharing the open file tell. kdbus released such
 * a slice at FREE without fail while the connection lived, so a well-formed FREE of one of
 * them is answered by the shim and sent on without waiting (docs/socket-protocol.md, "FREE
 * without an answer"). The set lives in the page those processes share (mux.h), under its
 * lock; when full, further slices are left out and their FREEs wait for the daemon as any.
 */
#ifndef KC_PUBLISHED_H
#define KC_PUBLISHED_H

#include <stdbool.h>
#include <stdint.h>

#define KC_PUBLISHED_MAX 64

struct kc_published {
	uint32_t n;
	uint64_t offset[KC_PUBLISHED_MAX];
};

/* Records a published slice (once, however often it is published again). */
void kc_published_add(struct kc_published *p, uint64_t offset);

/* Forgets offset; true if it was recorded. */
bool kc_published_take(struct kc_published *p, uint64_t offset);

#endif
