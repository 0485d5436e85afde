/*
 * The answers the shim gives itself (docs/socket-protocol.md, "Answers the shim gives
 * itself"), on the socket transport and on CUSE devices alike: which RECV and FREE commands
 * qualify by their struct, and the write-backs kdbus made for them. Whether the connection's
 * state allows an answer is the transport's to know (mux.h for the socket, side-channel.h for
 * a CUSE device).
 */
#ifndef KC_SHORTCUTS_H
#define KC_SHORTCUTS_H

#include "prefetch.h"

#include <stdbool.h>
#include <stdint.h>

/*
 * A RECV kdbus answered EAGAIN on an empty queue: exactly 64 bytes, flags among PEEK, DROP
 * and USE_PRIORITY but not DROP with USE_PRIORITY. Anything the daemon could refuse goes to it.
 */
bool kc_recv_may_answer_empty(const struct kc_prefetch *pf);

/*
 * kdbus's write-backs for that EAGAIN: no lost messages, the empty slice at the pool's end,
 * no return flags. True if they could be made.
 */
bool kc_recv_answer_empty(uint64_t arg, uint64_t pool_size);

/* A RECV that takes the oldest message and nothing else: exactly 64 bytes, flags 0. */
bool kc_recv_is_plain(const struct kc_prefetch *pf);

/*
 * kdbus's write-backs for a RECV that took the message in the slice [offset, +size): no
 * lost messages, no files to report. True if they could be made.
 */
bool kc_recv_answer(uint64_t arg, uint64_t offset, uint64_t size);

/* The slice a FREE names; false if its struct could not be read. */
bool kc_free_offset(const struct kc_prefetch *pf, uint64_t *offset);

/* Whether a FREE of a published slice cannot fail: exactly 32 bytes, flags 0. */
bool kc_free_cannot_fail(const struct kc_prefetch *pf);

/* kdbus's write-back for a successful FREE (return_flags 0); true if it could be made. */
bool kc_free_answer(uint64_t arg);

#endif
