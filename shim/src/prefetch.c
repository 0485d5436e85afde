/*
 * Building the IOCTL segments and fd list (see prefetch.h). The walk over SEND's items
 * only looks for what the shim must carry; validating items is the daemon's job, so the
 * walk simply stops where an item cannot be right.
 */
#include "prefetch.h"
#include "caller-memory.h"
#include "kdbus-abi.h"
#include "sys.h"

#include <errno.h>
#include <string.h>

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static int32_t get_int(const uint8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* How much of a struct add_struct reads before it knows its size. */
#define SPECULATIVE_READ 512

/* Marks "no segment" where add_struct returns an offset. */
#define NO_SEGMENT ((size_t)-1)

/*
 * Adds the struct at address: its leading size bytes (at least the size word itself, at
 * most what the kernel would accept). Returns where its data starts in the segment buffer
 * (an offset: later segments may move the buffer) or NO_SEGMENT if it is unreadable, and
 * its length in *len; *err is set to -ENOMEM if memory ran out.
 */
static size_t add_struct(struct kc_prefetch *p, uint64_t address, size_t *len, int *err)
{
	/* Commands and messages are mostly small: one read usually brings the whole struct. */
	_Alignas(8) uint8_t head[SPECULATIVE_READ];
	uint64_t size;
	*len = 0;
	size_t got = kc_caller_read_some(head, address, sizeof head);
	if (got < sizeof size)
		return NO_SEGMENT;
	memcpy(&size, head, sizeof size);
	size_t want = size < 8 ? 8 : size > KDBUS_CMD_MAX_SIZE ? KDBUS_CMD_MAX_SIZE : (size_t)size;
	size_t mark = p->segments.len;
	uint8_t *data = kc_segments_append(&p->segments, address, (uint32_t)want);
	if (!data) {
		*err = -ENOMEM;
		return NO_SEGMENT;
	}
	if (want <= got) {
		memcpy(data, head, want);
	} else if (kc_caller_read(data, address, want) < 0) {
		/* The tail is unreadable; send the size word so the daemon can tell EFAULT from EINVAL. */
		kc_buf_truncate(&p->segments, mark);
		want = sizeof size;
		data = kc_segments_append(&p->segments, address, (uint32_t)want);
		if (!data) {
			*err = -ENOMEM;
			return NO_SEGMENT;
		}
		memcpy(data, &size, sizeof size);
	}
	p->n_segments++;
	*len = want;
	return (size_t)(data - p->segments.data);
}

static void add_fd(struct kc_prefetch *p, int32_t fd)
{
	if (fd >= 0 && kc_sys_fcntl(fd, F_GETFD, 0) < 0)
		fd = -1;
	for (uint32_t i = 0; i < p->n_fds; i++)
		if (p->fds[i] == fd)
			return;
	/* More than the daemon accepts means more than kdbus allowed (16 fds, 16 memfds): it fails anyway. */
	if (p->n_fds < KC_MAX_LISTED_FDS)
		p->fds[p->n_fds++] = fd;
}

/* A walk over the items in [at, end) of a struct copied into the segment buffer at base. */
struct item_walk {
	const struct kc_buf *buf;
	size_t base;
	size_t at;
	size_t end;
};

/* The next item; false at the end or where an item's size cannot be right. */
static bool next_item(struct item_walk *w, uint64_t *type, const uint8_t **payload, size_t *payload_len)
{
	if (w->at > w->end || w->end - w->at < KDBUS_ITEM_HEADER)
		return false;
	const uint8_t *item = w->buf->data + w->base + w->at;
	uint64_t size = get64(item);
	if (size < KDBUS_ITEM_HEADER || size > w->end - w->at)
		return false;
	*type = get64(item + 8);
	*payload = item + KDBUS_ITEM_HEADER;
	*payload_len = (size_t)size - KDBUS_ITEM_HEADER;
	w->at += kc_pad8((size_t)size);
	return true;
}

static int add_message(struct kc_prefetch *p, uint64_t msg_address)
{
	int err = 0;
	size_t len;
	size_t msg = add_struct(p, msg_address, &len, &err);
	if (msg == NO_SEGMENT || len <= KDBUS_MSG_ITEMS_OFF)
		return err;
	size_t vec_budget = KDBUS_MSG_MAX_PAYLOAD_VEC_SIZE;
	/* Payload pointers from the walk are used before the next append moves the buffer. */
	struct item_walk walk = { &p->segments, msg, KDBUS_MSG_ITEMS_OFF, len };
	uint64_t item_type;
	const uint8_t *payload;
	size_t payload_len;
	while (next_item(&walk, &item_type, &payload, &payload_len)) {
		if (item_type == KDBUS_ITEM_FDS) {
			for (size_t i = 0; i + 4 <= payload_len; i += 4)
				add_fd(p, get_int(payload + i));
		} else if (item_type == KDBUS_ITEM_PAYLOAD_MEMFD && payload_len >= KDBUS_MEMFD_FD_OFF + 4) {
			add_fd(p, get_int(payload + KDBUS_MEMFD_FD_OFF));
		} else if (item_type == KDBUS_ITEM_PAYLOAD_VEC && payload_len >= 16) {
			uint64_t size = get64(payload + KDBUS_VEC_SIZE_OFF);
			uint64_t address = get64(payload + KDBUS_VEC_ADDRESS_OFF);
			/* Address 0 is zero padding; past the budget the daemon fails with EMSGSIZE unread. */
			if (address == 0 || size == 0 || size > vec_budget)
				continue;
			size_t mark = p->segments.len;
			uint8_t *data = kc_segments_append(&p->segments, address, (uint32_t)size);
			if (!data)
				return -ENOMEM;
			if (kc_caller_read(data, address, (size_t)size) < 0) {
				kc_buf_truncate(&p->segments, mark);
				continue;
			}
			p->n_segments++;
			vec_budget -= (size_t)size;
		}
	}
	return 0;
}

int kc_prefetch_build(struct kc_prefetch *p, uint32_t cmd, uint64_t arg)
{
	memset(p, 0, sizeof *p);
	int err = 0;
	size_t len;
	size_t cmd_struct = add_struct(p, arg, &len, &err);
	if (cmd_struct == NO_SEGMENT)
		return err;
	const uint8_t *data = p->segments.data + cmd_struct;
	p->cmd_len = len;
	if (len >= KDBUS_CMD_FLAGS_OFF + 8) {
		p->have_flags = true;
		p->flags = get64(data + KDBUS_CMD_FLAGS_OFF);
	}
	if (cmd != KDBUS_CMD_SEND || len < KDBUS_SEND_ITEMS_OFF)
		return 0;
	uint64_t msg_address = get64(data + KDBUS_SEND_MSG_ADDRESS_OFF);
	int32_t cancel_fd = -1;
	bool have_cancel = false;
	struct item_walk walk = { &p->segments, cmd_struct, KDBUS_SEND_ITEMS_OFF, len };
	uint64_t item_type;
	const uint8_t *payload;
	size_t payload_len;
	while (next_item(&walk, &item_type, &payload, &payload_len)) {
		if (item_type == KDBUS_ITEM_CANCEL_FD && payload_len >= 4) {
			cancel_fd = get_int(payload);
			have_cancel = true;
		}
	}
	if (msg_address != 0) {
		err = add_message(p, msg_address);
		if (err)
			return err;
	}
	if (have_cancel)
		add_fd(p, cancel_fd);
	return 0;
}

const uint8_t *kc_prefetch_cmd(const struct kc_prefetch *p)
{
	return p->cmd_len ? p->segments.data + KC_SEGMENT_HEADER : NULL;
}

void kc_prefetch_free(struct kc_prefetch *p)
{
	kc_buf_free(&p->segments);
}
