/* Scanning a received message for descriptor numbers (see message-fds.h). */
#include "message-fds.h"
#include "kdbus-abi.h"

#include <stdint.h>
#include <string.h>

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static int get_int(const uint8_t *p)
{
	int v;
	memcpy(&v, p, sizeof v);
	return v;
}

static void add(int fd, int *out, unsigned max, unsigned *n)
{
	if (fd >= 0 && *n < max)
		out[(*n)++] = fd;
}

unsigned kc_message_fds(const void *msg, size_t len, int *out, unsigned max)
{
	const uint8_t *m = msg;
	unsigned n = 0;
	if (len < KDBUS_MSG_ITEMS_OFF)
		return 0;
	uint64_t size = get64(m + KDBUS_CMD_SIZE_OFF);
	size_t end = size < len ? (size_t)size : len;
	for (size_t at = KDBUS_MSG_ITEMS_OFF; at < end && end - at >= KDBUS_ITEM_HEADER;) {
		uint64_t item_size = get64(m + at);
		uint64_t type = get64(m + at + 8);
		if (item_size < KDBUS_ITEM_HEADER || item_size > end - at)
			break;
		const uint8_t *payload = m + at + KDBUS_ITEM_HEADER;
		size_t payload_len = (size_t)item_size - KDBUS_ITEM_HEADER;
		if (type == KDBUS_ITEM_FDS) {
			for (size_t i = 0; i + sizeof(int) <= payload_len; i += sizeof(int))
				add(get_int(payload + i), out, max, &n);
		} else if (type == KDBUS_ITEM_PAYLOAD_MEMFD && payload_len >= KDBUS_MEMFD_FD_OFF + sizeof(int)) {
			add(get_int(payload + KDBUS_MEMFD_FD_OFF), out, max, &n);
		}
		/* Items follow at 8-byte steps; the last one may end unpadded. */
		at += ((size_t)item_size + 7) & ~(size_t)7;
	}
	return n;
}
