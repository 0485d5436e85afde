/*
 * The descriptor numbers a received kdbus message names: the FDS item's ints and each
 * PAYLOAD_MEMFD item's fd, as RECV (or a synchronous SEND) wrote them into the pool. Over
 * CUSE the shim must know them to wait until the files are on those numbers. Pure: works on
 * a copy of the message.
 */
#ifndef KC_MESSAGE_FDS_H
#define KC_MESSAGE_FDS_H

#include <stddef.h>

/*
 * Fills out (room for max) with the non-negative numbers named by the kdbus_msg in msg (len
 * bytes of it; the message's own size field bounds the items too) and returns how many.
 * A malformed item ends the scan: what came before it still counts.
 */
unsigned kc_message_fds(const void *msg, size_t len, int *out, unsigned max);

#endif
