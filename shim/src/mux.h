/*
 * The request multiplexer of one connection. Threads and forked processes share the
 * connection's socket; each request gets a sequence number and a waiter slot, and the
 * daemon answers in any order. One waiter at a time reads the socket (the reader); a
 * frame for someone else makes that waiter the reader instead, so every frame is read by
 * the process that asked — which matters because FETCH is about that process's memory and
 * RESULT's descriptors must land in that process. The state lives in a MAP_SHARED page made
 * at open, so it survives fork; its locks are robust, so a process dying inside does not
 * block the others. The page also keeps the open file's holders (holders.h).
 */
#ifndef KC_MUX_H
#define KC_MUX_H

#include "frame.h"
#include "holders.h"
#include "published.h"
#include "sock-io.h"

#include <stdint.h>

struct kc_mux;

struct kc_wait {
	int slot;
	uint64_t seq;
};

/* A frame read for a waiter, with the descriptors that came with it. */
struct kc_inbound {
	struct kc_header header;
	const uint8_t *payload;
	size_t payload_len;
	int fds[KC_MAX_RECEIVED_FDS];
	unsigned n_fds;
	uint8_t *heap;     /* the frame, when it did not fit into small */
	uint8_t small[512];
};

/*
 * A fresh multiplexer whose first request gets first_seq, with this process holding one
 * reference; NULL with errno on failure.
 */
struct kc_mux *kc_mux_create(uint64_t first_seq);

/* Who holds the open file, kept in the same shared page. */
struct kc_holders *kc_mux_holders(struct kc_mux *m);
/* Drops this process's mapping; other processes keep theirs. */
void kc_mux_unmap(struct kc_mux *m);

/* Takes a waiter slot and sequence number; 0 or -errno once the stream has ended. */
int kc_mux_enter(struct kc_mux *m, struct kc_wait *w);
/* Gives the slot back and, if this waiter is the reader, the reader role. */
void kc_mux_leave(struct kc_mux *m, struct kc_wait *w);

/* Serializes writers, so a frame (and its fd-channel message) goes out whole. */
void kc_mux_lock_writes(struct kc_mux *m);
void kc_mux_unlock_writes(struct kc_mux *m);

/*
 * Waits for the next FETCH or RESULT for w, reading the socket when it is this waiter's
 * turn; WAKE and HUP are consumed on the way. 0, or -errno when the stream ended (ESHUTDOWN:
 * the daemon went away; ECONNRESET: after the connection's HUP) or went out of step (EPROTO).
 */
int kc_mux_next(struct kc_mux *m, struct kc_wait *w, int sock, struct kc_inbound *in);

/* Frees what kc_mux_next filled in and closes descriptors nobody took (set to -1 when taken). */
void kc_inbound_release(struct kc_inbound *in);

/* Sends a MEM frame answering FETCH seq: data, or err (EFAULT) with no data. 0 or -errno. */
int kc_mux_send_mem(struct kc_mux *m, int sock, uint64_t seq, int32_t err, const void *data, uint32_t len);

/*
 * Whether the connection is known to have nothing to receive and to be alive: the daemon
 * has a WAKE (or HUP) on the way, written with or after its last RESULT, whenever it has
 * (docs/socket-protocol.md, Poll); none was read since the last RESULT, none is being read,
 * and nothing waits on sock.
 */
bool kc_mux_nothing_queued(struct kc_mux *m, int sock);

/*
 * Whether the connection is gone as far as the stream tells: a HUP was read, the stream
 * ended or broke, or a HUP (or the end) is the next thing on sock. Never blocks.
 */
bool kc_mux_hung_up(struct kc_mux *m, int sock);

/* A RECV frame is being written (under the write lock): a HEAD read before it is stale. */
void kc_mux_count_recv(struct kc_mux *m);

/*
 * For a plain RECV, with the write lock held: reads the events waiting on sock and, if the
 * last HEAD names the queue's head (the daemon had taken every RECV sent, no RESULT or HUP
 * came since, no reader is busy), takes it: *offset and *size are the message's slice,
 * and the RECV frame that must now be written to tell the daemon is counted. False if not.
 */
bool kc_mux_take_head(struct kc_mux *m, int sock, uint64_t *offset, uint64_t *size);

/* Records a slice the daemon published to the program (published.h). */
void kc_mux_note_published(struct kc_mux *m, uint64_t offset);

/*
 * Forgets the published slice at offset; true if it was one and the connection shows no
 * sign of its end (no HUP read, none being read, the stream alive, nothing but a WAKE
 * waiting on sock): then a well-formed FREE of it cannot fail.
 */
bool kc_mux_take_published(struct kc_mux *m, int sock, uint64_t offset);

#endif
