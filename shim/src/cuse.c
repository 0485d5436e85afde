/* CUSE kdbus descriptors (see cuse.h). */
#include "cuse.h"
#include "caller-memory.h"
#include "kdbus-abi.h"
#include "message-fds.h"
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

/* The numbers the message the command received names; none if it installed nothing. */
static unsigned named_numbers(struct kc_conn *c, uint32_t cmd, uint64_t arg, int *out, unsigned max)
{
	bool recv = cmd == KDBUS_CMD_RECV;
	uint8_t s[KDBUS_RECV_SIZE];
	if (kc_caller_read(s, arg, recv ? KDBUS_RECV_SIZE : KDBUS_SEND_SIZE) < 0)
		return 0;
	uint64_t flags = get64(s + KDBUS_CMD_FLAGS_OFF);
	if (recv ? (flags & (KDBUS_RECV_PEEK | KDBUS_RECV_DROP)) != 0 : !(flags & KDBUS_SEND_SYNC_REPLY))
		return 0;
	uint64_t offset = get64(s + (recv ? KDBUS_RECV_MSG_OFFSET_OFF : KDBUS_SEND_REPLY_OFFSET_OFF));
	uint64_t size = get64(s + (recv ? KDBUS_RECV_MSG_SIZE_OFF : KDBUS_SEND_REPLY_SIZE_OFF));
	uint64_t pool_size;
	int pool = kc_conn_pool(c, &pool_size);
	if (pool < 0 && kc_side_fetch_pool(c) == 0)
		pool = kc_conn_pool(c, &pool_size);
	if (pool < 0 || offset >= pool_size)
		return 0;
	if (size > pool_size - offset)
		size = pool_size - offset;
	return scan(pool, offset, size, out, max);
}

void kc_cuse_after_ioctl(struct kc_conn *c, uint32_t cmd, uint64_t arg, bool succeeded, const struct kc_side_offer *offer)
{
	if (kc_side_state(c) == KC_SIDE_READY) {
		int numbers[MAX_NAMED];
		unsigned n = succeeded ? named_numbers(c, cmd, arg, numbers, MAX_NAMED) : 0;
		if (n)
			kc_side_await(c, numbers, n, INSTALL_TIMEOUT_MS);
		else
			kc_side_drain(c);
	}
	kc_side_withdraw(c, offer);
}
