/* CUSE kdbus descriptors (see cuse.h). */
#include "cuse.h"
#include "caller-memory.h"
#include "kdbus-abi.h"
#include "message-fds.h"
#include "prefetch.h"
#include "self.h"
#include "shortcuts.h"
#include "side-channel.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

/* The daemon sends INSTALL before it answers the ioctl, or right after when its socket is full. */
#define INSTALL_TIMEOUT_MS 5000
/* A message names at most 16 fds and 16 memfds; room for more costs nothing. */
#define MAX_NAMED 64
/* Items beyond this are metadata nobody puts descriptors after. */
#define MAX_SCANNED (1u << 20)

static bool refuse(uint64_t arg)
{
	(void)arg;
	return false;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

int kc_cuse_opened(int fd)
{
	if (fd >= 0)
		kc_conn_create_cuse(fd);
	return fd;
}

struct kc_conn *kc_cuse_probe(int fd)
{
	int saved = errno;
	struct kc_conn *c = kc_conn_create_cuse(fd) ? kc_cuse_acquire(fd) : NULL;
	if (c && kc_side_attach(c, fd) == -ENOTTY) {
		kc_conn_release(c);
		c = NULL;
	}
	errno = saved;
	return c;
}

/* FREE on the side channel: the IOCTL frame, seq 0, with the struct prefetched as its segment. */
static bool free_on_side(struct kc_conn *c, uint64_t arg, const struct kc_prefetch *pf)
{
	uint64_t offset;
	if (!kc_free_offset(pf, &offset))
		return false;
	uint8_t head[KC_FRAME_HEADER + KC_IOCTL_FIXED];
	struct kc_ioctl_desc d = {
		.cmd = KDBUS_CMD_FREE,
		.tid = (uint32_t)kc_self_tid(),
		.arg = arg,
		.n_segments = pf->n_segments,
		.segments_bytes = pf->segments.len,
	};
	kc_ioctl_head_encode(head, 0, &d);
	struct iovec iov[2] = { { head, kc_ioctl_head_size(0, 0) }, { pf->segments.data, pf->segments.len } };
	uint64_t pool_size;
	/* Without the pool the shim cannot have noted the slice, and every FREE forgets its offset. */
	bool may = kc_free_cannot_fail(pf) && kc_conn_pool(c, &pool_size) >= 0;
	return kc_side_free(c, offset, may ? kc_free_answer : refuse, arg, iov, 2);
}

/* A plain RECV of the message the last HEAD named: the RECV goes to the daemon on the side channel. */
static bool recv_from_head(struct kc_conn *c, uint64_t arg, const struct kc_prefetch *pf, int *err)
{
	uint64_t offset, size;
	if (!kc_recv_is_plain(pf))
		return false;
	uint8_t head[KC_HEAD_RECV_FRAME];
	kc_head_recv_encode(head, (uint32_t)kc_self_tid(), arg);
	struct iovec iov = { head, sizeof head };
	if (!kc_side_take_head(c, &offset, &size, &iov, 1))
		return false;
	/* The message is off the queue either way, as kdbus's was when its write-back failed. */
	*err = kc_recv_answer(arg, offset, size) ? 0 : EFAULT;
	return true;
}

bool kc_cuse_answered(struct kc_conn *c, uint32_t cmd, uint64_t arg, int *err)
{
	if ((cmd != KDBUS_CMD_RECV && cmd != KDBUS_CMD_FREE) || kc_side_state(c) != KC_SIDE_READY)
		return false;
	struct kc_prefetch pf;
	bool answered = false;
	uint64_t pool_size;
	*err = cmd == KDBUS_CMD_RECV ? EAGAIN : 0;
	if (kc_prefetch_build(&pf, cmd, arg) == 0) {
		if (cmd == KDBUS_CMD_FREE)
			answered = free_on_side(c, arg, &pf);
		else
			answered = (kc_recv_may_answer_empty(&pf) && kc_conn_pool(c, &pool_size) >= 0 &&
				    kc_side_queue_empty(c) && kc_recv_answer_empty(arg, pool_size)) ||
				   recv_from_head(c, arg, &pf, err);
	}
	kc_prefetch_free(&pf);
	return answered;
}

static bool sync_send(uint64_t arg)
{
	uint8_t flags[8];
	return kc_caller_read(flags, arg + KDBUS_CMD_FLAGS_OFF, sizeof flags) == 0 &&
	       (get64(flags) & KDBUS_SEND_SYNC_REPLY);
}

bool kc_cuse_before_ioctl(struct kc_conn *c, int fd, uint32_t cmd, uint64_t arg, struct kc_side_offer *offer)
{
	offer->n = 0;
	/* An asynchronous SEND installs nothing: no reason to attach or reserve for it. */
	bool installs = cmd != KDBUS_CMD_SEND || sync_send(arg);
	enum kc_side_state state = kc_side_state(c);
	if (state == KC_SIDE_FOREIGN || (state == KC_SIDE_NONE && installs && kc_side_attach(c, fd) == -ENOTTY))
		return false;
	if (installs && kc_side_state(c) == KC_SIDE_READY)
		kc_side_prepare(c, offer);
	if (cmd == KDBUS_CMD_RECV)
		kc_side_count_recv(c);
	return true;
}

static ssize_t read_pool(int pool, void *buf, size_t len, uint64_t offset)
{
	/* preadv: the shim's own pread would only look the pool up in its table again. */
	struct iovec iov = { buf, len };
	return preadv(pool, &iov, 1, (off_t)offset);
}

/* The numbers named by the message of size bytes at offset in the pool. */
static unsigned scan(int pool, uint64_t offset, uint64_t size, int *out, unsigned max)
{
	uint8_t small[4096];
	ssize_t got = read_pool(pool, small, size < sizeof small ? (size_t)size : sizeof small, offset);
	if (got < KDBUS_MSG_ITEMS_OFF)
		return 0;
	/* The message's own size ends its items; the payload may follow in the slice. */
	uint64_t items_end = get64(small + KDBUS_CMD_SIZE_OFF);
	if (items_end <= (uint64_t)got || items_end > size)
		return kc_message_fds(small, (size_t)got, out, max);
	size_t len = items_end < MAX_SCANNED ? (size_t)items_end : MAX_SCANNED;
	uint8_t *big = malloc(len);
	ssize_t big_got = big ? read_pool(pool, big, len, offset) : -1;
	unsigned n = big_got >= got ? kc_message_fds(big, (size_t)big_got, out, max)
				    : kc_message_fds(small, (size_t)got, out, max);
	free(big);
	return n;
}

/*
 * The slice the command published (a RECV's message, PEEK too; a synchronous SEND's reply),
 * noted for its FREE; and the numbers its message names, if it installed files (not PEEK).
 */
static unsigned received(struct kc_conn *c, uint32_t cmd, uint64_t arg, int *out, unsigned max)
{
	bool recv = cmd == KDBUS_CMD_RECV;
	uint8_t s[KDBUS_RECV_SIZE];
	if (kc_caller_read(s, arg, recv ? KDBUS_RECV_SIZE : KDBUS_SEND_SIZE) < 0)
		return 0;
	uint64_t flags = get64(s + KDBUS_CMD_FLAGS_OFF);
	if (recv ? (flags & KDBUS_RECV_DROP) != 0 : !(flags & KDBUS_SEND_SYNC_REPLY))
		return 0;
	uint64_t offset = get64(s + (recv ? KDBUS_RECV_MSG_OFFSET_OFF : KDBUS_SEND_REPLY_OFFSET_OFF));
	uint64_t size = get64(s + (recv ? KDBUS_RECV_MSG_SIZE_OFF : KDBUS_SEND_REPLY_SIZE_OFF));
	uint64_t pool_size;
	int pool = kc_conn_pool(c, &pool_size);
	if (pool < 0 && kc_side_fetch_pool(c) == 0)
		pool = kc_conn_pool(c, &pool_size);
	if (pool < 0 || offset >= pool_size)
		return 0;
	kc_side_note_published(c, offset);
	if (recv && (flags & KDBUS_RECV_PEEK))
		return 0;
	if (size > pool_size - offset)
		size = pool_size - offset;
	return scan(pool, offset, size, out, max);
}

void kc_cuse_after_ioctl(struct kc_conn *c, uint32_t cmd, uint64_t arg, bool succeeded, const struct kc_side_offer *offer)
{
	if (kc_side_state(c) == KC_SIDE_READY) {
		int numbers[MAX_NAMED];
		unsigned n = succeeded ? received(c, cmd, arg, numbers, MAX_NAMED) : 0;
		if (n)
			kc_side_await(c, numbers, n, INSTALL_TIMEOUT_MS);
		else
			kc_side_drain(c);
	}
	kc_side_withdraw(c, offer);
}
