/*
 * kdbus side of the transport benchmark: the work sd-bus did over kdbus, with raw ioctls
 * (open, HELLO, mmap of the pool, SEND, RECV, FREE; the ABI as in test/c/kdbus-client.c).
 *
 *   kdbus-pingpong rtt    <bus-node> <iterations>
 *   kdbus-pingpong call   <bus-node> <payload-bytes> <iterations> [vec|memfd] [poll|epoll]
 *   kdbus-pingpong dcall  <bus-node> <payload-bytes> <iterations>
 *   kdbus-pingpong dserve <bus-node>
 *   kdbus-pingpong fanout <bus-node> <receivers> <iterations> [poll|epoll]
 *   kdbus-pingpong memfd  <payload-bytes> <iterations>
 *
 * rtt: RECV on an empty queue (EAGAIN), the smallest ioctl round trip.
 * call: a forked callee owns a well-known name; the caller SENDs a method call to that name
 *   with SYNC_REPLY, as sd_bus_call() did, and reads and FREEs the reply. Payloads of
 *   512 KiB and more travel in a sealed memfd made for each call (sd-bus's MEMFD_MIN_SIZE),
 *   smaller ones as a PAYLOAD_VEC; the fifth argument overrides that. The callee touches
 *   every page of the payload, then replies with a header only. It waits for the call in
 *   poll(), or with "epoll" in a level-triggered epoll_wait() as sd-event did.
 * dserve: only a callee, answering each call with a D-Bus method return (GVariant) until
 *   killed, for callers elsewhere (sdbus-pingpong caller through the legacy endpoint);
 *   prints "ready" once it owns the name.
 * dcall: the same call as a real D-Bus message (sd-bus's version-2 GVariant form,
 *   test/c/gvariant-message.h): org.kdbuscuse.Bench.Call(ay) at /org/kdbuscuse/Bench of
 *   BENCH_NAME, which a service elsewhere owns (sdbus-pingpong serve on an upstream bus,
 *   reached through kdbus-cuse's bridge); the message is built for every call, as sd-bus
 *   marshalled it, and the reply must be a method return.
 * fanout: forked receivers each match the signal's bloom filter; the time per round runs
 *   from just before SEND until the last receiver has RECVed the signal. They wait in
 *   poll(), or in epoll_wait() with "epoll".
 * memfd: no bus at all: what the memfd path costs the two ends by itself (make, fill and
 *   seal the memfd as the caller does; map, touch, unmap and close it as the callee does).
 *
 * Prints one JSON line of latency statistics (stats.h); warm-up rounds are not counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kdbus-abi.h"
#include "gvariant-message.h"
#include "peers.h"
#include "stats.h"

#define POOL_SIZE (16ULL * 1024 * 1024)
#define MEMFD_MIN_SIZE (512 * 1024)
#define BLOOM_BYTES 64
#define BENCH_NAME "org.kdbuscuse.Bench"
#define BENCH_PATH "/org/kdbuscuse/Bench"
#define BENCH_IFACE "org.kdbuscuse.Bench"
#define CALL_TIMEOUT_NS (5ULL * 1000 * 1000 * 1000)
/* Stand-ins for the marshalled D-Bus header sd-bus put in the first vector. */
#define CALL_HDR_LEN 96
#define REPLY_HDR_LEN 32
#define SIGNAL_BODY_LEN 8
#define ALL_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

static const char *g_bus;
static const uint8_t g_header[CALL_HDR_LEN] = { 'l', 1 };

struct conn {
	int fd;
	uint64_t id;
	const uint8_t *pool;
	/* Without a pool mapping (CUSE without the shim): read(2) returns pool bytes [0, n). */
	uint8_t *readback;
};

static int kd_ioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg);
}

static const char *g_access = "mmap";

static void conn_open(struct conn *c)
{
	_Alignas(8) struct kd_cmd_hello h;
	memset(c, 0, sizeof *c);
	c->fd = open(g_bus, O_RDWR | O_CLOEXEC);
	if (c->fd < 0)
		die("open %s", g_bus);
	memset(&h, 0, sizeof h);
	h.size = sizeof h;
	h.flags = KD_HELLO_ACCEPT_FD;
	h.attach_flags_send = KD_ATTACH_ANY;
	/* sd-bus's default: the sender's names, nothing else. */
	h.attach_flags_recv = KD_ATTACH_NAMES;
	h.pool_size = POOL_SIZE;
	if (kd_ioctl(c->fd, KD_CMD_HELLO, &h) < 0)
		die("HELLO");
	c->id = h.id;
	void *pool = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, c->fd, 0);
	if (pool == MAP_FAILED) {
		c->readback = malloc(POOL_SIZE);
		if (!c->readback)
			die("malloc");
		g_access = "read";
	} else {
		c->pool = pool;
	}
	struct kd_cmd_free f = { .size = sizeof f, .offset = h.offset };
	if (kd_ioctl(c->fd, KD_CMD_FREE, &f) < 0)
		die("FREE hello slice");
}

/* The slice [offset, offset + size) of the pool, readable. */
static const uint8_t *pool_at(const struct conn *c, uint64_t offset, uint64_t size)
{
	if (c->pool)
		return c->pool + offset;
	size_t want = offset + size, got = 0;
	while (got < want) {
		ssize_t n = read(c->fd, c->readback, want);
		if (n < 0)
			die("read pool bytes");
		if ((size_t)n == 0)
			die("read pool bytes: short read (%zu of %zu)", got, want);
		got = (size_t)n;
	}
	return c->readback + offset;
}

static void pool_free(const struct conn *c, uint64_t offset)
{
	struct kd_cmd_free f = { .size = sizeof f, .offset = offset };
	if (kd_ioctl(c->fd, KD_CMD_FREE, &f) < 0)
		die("FREE");
}

/* ---- message building ---------------------------------------------------------------- */

struct msg {
	_Alignas(8) uint8_t buf[512];
	size_t end;
};

static struct kd_msg *msg_start(struct msg *b, uint64_t dst, uint64_t flags, uint64_t timeout_or_reply)
{
	static uint64_t cookie = 1;
	memset(b->buf, 0, sizeof(struct kd_msg));
	struct kd_msg *m = (struct kd_msg *)b->buf;
	m->flags = flags;
	m->dst_id = dst;
	m->payload_type = KD_PAYLOAD_DBUS;
	m->cookie = cookie++;
	m->timeout_or_reply = timeout_or_reply;
	b->end = sizeof *m;
	m->size = b->end;
	return m;
}

static void *msg_item(struct msg *b, uint64_t type, size_t payload)
{
	size_t at = KD_ALIGN8(b->end);
	struct kd_item *it = (struct kd_item *)(b->buf + at);
	memset(it, 0, KD_ALIGN8(KD_ITEM_HEADER + payload));
	it->size = KD_ITEM_HEADER + payload;
	it->type = type;
	b->end = at + it->size;
	((struct kd_msg *)b->buf)->size = b->end;
	return it->data;
}

static void msg_vec(struct msg *b, const void *data, size_t len)
{
	struct kd_vec *v = msg_item(b, KD_ITEM_PAYLOAD_VEC, sizeof *v);
	v->size = len;
	v->address_or_offset = (uintptr_t)data;
}

static int msg_send(const struct conn *c, struct msg *b, uint64_t flags, struct kd_cmd_send *cmd)
{
	memset(cmd, 0, sizeof *cmd);
	cmd->size = sizeof *cmd;
	cmd->flags = flags;
	cmd->msg_address = (uintptr_t)b->buf;
	return kd_ioctl(c->fd, KD_CMD_SEND, cmd);
}

static const struct kd_item *item_next(const struct kd_item *it)
{
	return (const struct kd_item *)((const uint8_t *)it + KD_ALIGN8(it->size));
}

static int item_ok(const struct kd_item *it)
{
	if (it->size < KD_ITEM_HEADER)
		die("malformed item");
	return 1;
}

/* Each item of the received message m. */
#define FOR_MSG_ITEMS(it, m)                                                              \
	for (const struct kd_item *it = (const void *)((m) + 1);                           \
	     (const uint8_t *)it < (const uint8_t *)(m) + (m)->size && item_ok(it); it = item_next(it))

/* Touches the payload of a received message: PAYLOAD_OFF parts in the pool, memfds mapped
 * (as sd-bus mapped them) and closed. */
static uint64_t consume_payload(const struct kd_msg *m)
{
	uint64_t sum = 0;
	FOR_MSG_ITEMS(it, m) {
		if (it->type == KD_ITEM_PAYLOAD_OFF) {
			const struct kd_vec *v = (const void *)it->data;
			if (v->address_or_offset != KD_OFFSET_ZEROES)
				sum += touch_pages((const uint8_t *)m + v->address_or_offset, v->size);
		} else if (it->type == KD_ITEM_PAYLOAD_MEMFD) {
			const struct kd_memfd *mf = (const void *)it->data;
			if (mf->fd < 0)
				die("PAYLOAD_MEMFD arrived without its file (fd %d)", mf->fd);
			void *map = mmap(NULL, mf->size, PROT_READ, MAP_PRIVATE, mf->fd, 0);
			if (map == MAP_FAILED)
				die("mmap received memfd");
			sum += touch_pages(map, mf->size);
			munmap(map, mf->size);
			close(mf->fd);
		}
	}
	return sum;
}

/* ---- rtt -------------------------------------------------------------------------------- */

static void run_rtt(long iterations)
{
	struct conn c;
	conn_open(&c);
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 10;
	for (long i = 0; i < warm + iterations; i++) {
		struct kd_cmd_recv r = { .size = sizeof r };
		uint64_t t0 = now_ns();
		int rc = kd_ioctl(c.fd, KD_CMD_RECV, &r);
		uint64_t t1 = now_ns();
		if (rc == 0 || errno != EAGAIN)
			die("RECV on an empty queue: expected EAGAIN");
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	samples_print(&s, NULL);
}

/* ---- call ------------------------------------------------------------------------------- */

/* The callee and the fan-out receivers wait in epoll_wait() instead of poll(). */
static int g_wait_epoll;

/* A level-triggered epoll set watching fd for EPOLLIN, as sd-event's. */
static int epoll_set(int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl");
	return ep;
}

/* Until the connection polls readable, in poll() or in the epoll set ep. */
static void wait_readable(int fd, int ep)
{
	if (ep >= 0) {
		struct epoll_event ev;
		if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR)
			die("epoll_wait");
		return;
	}
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, -1) < 0 && errno != EINTR)
		die("poll");
}

/*
 * Owns BENCH_NAME and answers every call that expects a reply, after touching every page of
 * its payload: with a header only, or (dbus_replies) with a D-Bus method return as sd-bus
 * built it, which legacy callers get translated. Calls ready() once the name is owned.
 */
static void serve_calls(int dbus_replies, void (*ready)(void))
{
	struct conn c;
	conn_open(&c);
	_Alignas(8) uint8_t nbuf[sizeof(struct kd_cmd) + KD_ITEM_HEADER + 64];
	memset(nbuf, 0, sizeof nbuf);
	struct kd_cmd *k = (struct kd_cmd *)nbuf;
	struct kd_item *it = (struct kd_item *)(nbuf + sizeof *k);
	it->type = KD_ITEM_NAME;
	it->size = KD_ITEM_HEADER + sizeof BENCH_NAME;
	memcpy(it->data, BENCH_NAME, sizeof BENCH_NAME);
	k->size = sizeof *k + KD_ALIGN8(it->size);
	if (kd_ioctl(c.fd, KD_CMD_NAME_ACQUIRE, k) < 0)
		die("NAME_ACQUIRE %s", BENCH_NAME);
	ready();

	static const uint8_t reply_hdr[REPLY_HDR_LEN] = { 'l', 2 };
	uint8_t wire[256];
	int ep = -1;
	if (g_wait_epoll)
		ep = epoll_set(c.fd);
	uint64_t sink = 0;
	for (;;) {
		wait_readable(c.fd, ep);
		for (;;) {
			struct kd_cmd_recv r = { .size = sizeof r };
			if (kd_ioctl(c.fd, KD_CMD_RECV, &r) < 0) {
				if (errno == EAGAIN)
					break;
				die("callee RECV");
			}
			const struct kd_msg *m = (const void *)pool_at(&c, r.msg.offset, r.msg.msg_size);
			uint64_t src = m->src_id, cookie = m->cookie, flags = m->flags;
			sink += consume_payload(m);
			pool_free(&c, r.msg.offset);
			if (!(flags & KD_MSG_EXPECT_REPLY))
				continue;
			struct msg b;
			struct kd_cmd_send cmd;
			struct kd_msg *out = msg_start(&b, src, 0, cookie);
			if (dbus_replies) {
				char dest[32];
				snprintf(dest, sizeof dest, ":1.%llu", (unsigned long long)src);
				struct gv_msg g = {
					.type = GV_METHOD_RETURN, .flags = GV_NO_REPLY_EXPECTED, .cookie = out->cookie,
					.has_reply_cookie = 1, .reply_cookie = cookie, .destination = dest,
				};
				size_t body;
				size_t len = gv_encode(&g, wire, sizeof wire, &body);
				if (len == 0)
					die("the method return does not fit %zu bytes", sizeof wire);
				msg_vec(&b, wire, body);
				msg_vec(&b, wire + body, len - body);
			} else {
				msg_vec(&b, reply_hdr, sizeof reply_hdr);
			}
			if (msg_send(&c, &b, 0, &cmd) < 0)
				die("callee SEND reply");
		}
	}
	(void)sink;
}

static void callee(int index)
{
	(void)index;
	serve_calls(0, peer_ready);
}

static void say_ready(void)
{
	printf("ready\n");
	fflush(stdout);
}

/* A sealed memfd holding data[0, len), as sd-bus built large body parts. */
static int payload_memfd(const uint8_t *data, size_t len)
{
	int fd = memfd_create("bench-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		die("memfd_create");
	if (ftruncate(fd, (off_t)len) < 0)
		die("ftruncate memfd");
	for (size_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, data + done, len - done, (off_t)done);
		if (n <= 0)
			die("pwrite memfd");
		done += (size_t)n;
	}
	/*
	 * The kernel refuses F_SEAL_WRITE with EBUSY while something else holds a reference to a
	 * page for longer than it waits (tens of ms; it ended one benchmark run here): try again
	 * rather than lose the whole run to it.
	 */
	for (int tries = 0; fcntl(fd, F_ADD_SEALS, ALL_SEALS) < 0; tries++) {
		if (errno != EBUSY || tries == 4)
			die("seal memfd");
		usleep(1000);
	}
	return fd;
}

/* A method call to BENCH_NAME, by name as sd-bus addressed it, expecting its reply by
 * t0 + CALL_TIMEOUT_NS. */
static struct kd_msg *call_start(struct msg *b, uint64_t t0)
{
	struct kd_msg *m = msg_start(b, KD_DST_ID_NAME, KD_MSG_EXPECT_REPLY, t0 + CALL_TIMEOUT_NS);
	memcpy(msg_item(b, KD_ITEM_DST_NAME, sizeof BENCH_NAME), BENCH_NAME, sizeof BENCH_NAME);
	return m;
}

/* SENDs the call with SYNC_REPLY, as sd_bus_call() did; returns the reply, checked to
 * answer the call, in the pool at cmd->reply.offset (the caller FREEs it). */
static const struct kd_msg *call_sync(const struct conn *c, struct msg *b, struct kd_cmd_send *cmd)
{
	uint64_t cookie = ((const struct kd_msg *)b->buf)->cookie;
	if (msg_send(c, b, KD_SEND_SYNC_REPLY, cmd) < 0)
		die("caller SEND (SYNC_REPLY) to %s", BENCH_NAME);
	const struct kd_msg *reply = (const void *)pool_at(c, cmd->reply.offset, cmd->reply.msg_size);
	if (reply->timeout_or_reply != cookie)
		die("reply to cookie %llu, expected %llu", (unsigned long long)reply->timeout_or_reply,
		    (unsigned long long)cookie);
	return reply;
}

static void run_call(size_t size, long iterations, int use_memfd)
{
	shared_init(1);
	spawn_peer(callee, 0);
	wait_peers_ready();

	struct conn c;
	conn_open(&c);
	uint8_t *payload = call_payload(size);

	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 5;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		struct msg b;
		call_start(&b, t0);
		msg_vec(&b, g_header, sizeof g_header);
		int memfd = -1;
		if (size > 0 && use_memfd) {
			memfd = payload_memfd(payload, size);
			struct kd_memfd *mf = msg_item(&b, KD_ITEM_PAYLOAD_MEMFD, sizeof *mf);
			mf->size = size;
			mf->fd = memfd;
		} else if (size > 0) {
			msg_vec(&b, payload, size);
		}
		struct kd_cmd_send cmd;
		call_sync(&c, &b, &cmd);
		if (memfd >= 0)
			close(memfd);
		pool_free(&c, cmd.reply.offset);
		uint64_t t1 = now_ns();
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	stop_peers();
	char extra[64];
	snprintf(extra, sizeof extra, "\"path\":\"%s\",\"pool\":\"%s\"", size == 0 ? "none" : use_memfd ? "memfd" : "vec", g_access);
	samples_print(&s, extra);
}

/* The start of a received message's D-Bus payload (its first PAYLOAD_OFF part); NULL if none. */
static const uint8_t *payload_start(const struct kd_msg *m)
{
	FOR_MSG_ITEMS(it, m) {
		if (it->type == KD_ITEM_PAYLOAD_OFF) {
			const struct kd_vec *v = (const void *)it->data;
			if (v->address_or_offset != KD_OFFSET_ZEROES && v->size >= 2)
				return (const uint8_t *)m + v->address_or_offset;
		}
	}
	return NULL;
}

static void run_dbus_call(size_t size, long iterations)
{
	struct conn c;
	conn_open(&c);
	uint8_t *payload = call_payload(size);
	size_t cap = size + 512;
	uint8_t *wire = malloc(cap);
	if (!wire)
		die("malloc");

	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 5;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		struct msg b;
		struct kd_msg *m = call_start(&b, t0);
		struct gv_msg g = {
			.type = GV_METHOD_CALL, .cookie = m->cookie, .path = BENCH_PATH, .interface = BENCH_IFACE,
			.member = "Call", .destination = BENCH_NAME, .signature = "ay", .arg_bytes = payload, .arg_len = size,
		};
		size_t body;
		size_t len = gv_encode(&g, wire, cap, &body);
		if (len == 0)
			die("the call does not fit %zu bytes", cap);
		/* sd-bus's two vectors: the header part, then the body. */
		msg_vec(&b, wire, body);
		msg_vec(&b, wire + body, len - body);
		struct kd_cmd_send cmd;
		const uint8_t *p = payload_start(call_sync(&c, &b, &cmd));
		if (!p || p[0] != 'l' || p[1] != GV_METHOD_RETURN)
			die("the reply is not a method return (type %d)", p ? p[1] : -1);
		pool_free(&c, cmd.reply.offset);
		uint64_t t1 = now_ns();
		if (i >= warm)
			samples_add(&s, t1 - t0);
	}
	samples_print(&s, "\"path\":\"dbus\"");
}

static void run_memfd_floor(size_t size, long iterations)
{
	uint8_t *payload = malloc(size);
	if (!payload)
		die("malloc");
	memset(payload, 0x5a, size);
	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 5;
	uint64_t sink = 0;
	for (long i = 0; i < warm + iterations; i++) {
		uint64_t t0 = now_ns();
		int fd = payload_memfd(payload, size);
		void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED)
			die("mmap memfd");
		sink += touch_pages(map, size);
		munmap(map, size);
		close(fd);
		if (i >= warm)
			samples_add(&s, now_ns() - t0);
	}
	(void)sink;
	samples_print(&s, NULL);
}

/* ---- fanout ----------------------------------------------------------------------------- */

static const uint64_t g_filter_bits[] = { 3, 77, 130, 259, 500 };

static void receiver(int index)
{
	struct conn c;
	conn_open(&c);
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_match) + KD_ITEM_HEADER + BLOOM_BYTES];
	memset(buf, 0, sizeof buf);
	struct kd_cmd_match *m = (struct kd_cmd_match *)buf;
	struct kd_item *it = (struct kd_item *)(buf + sizeof *m);
	it->type = KD_ITEM_BLOOM_MASK;
	it->size = KD_ITEM_HEADER + BLOOM_BYTES;
	uint64_t *mask = (uint64_t *)it->data;
	/* A subset of the signal's bits, as an interface+member match would be. */
	mask[77 / 64] |= 1ULL << (77 % 64);
	mask[259 / 64] |= 1ULL << (259 % 64);
	m->size = sizeof *m + it->size;
	m->cookie = 1;
	if (kd_ioctl(c.fd, KD_CMD_MATCH_ADD, m) < 0)
		die("MATCH_ADD");
	peer_ready();
	int ep = g_wait_epoll ? epoll_set(c.fd) : -1;
	uint64_t sink = 0;
	for (;;) {
		wait_readable(c.fd, ep);
		for (;;) {
			struct kd_cmd_recv r = { .size = sizeof r };
			if (kd_ioctl(c.fd, KD_CMD_RECV, &r) < 0) {
				if (errno == EAGAIN)
					break;
				die("receiver RECV");
			}
			const struct kd_msg *msg = (const void *)pool_at(&c, r.msg.offset, r.msg.msg_size);
			int is_signal = msg->flags & KD_MSG_SIGNAL;
			sink += consume_payload(msg);
			pool_free(&c, r.msg.offset);
			if (is_signal)
				fanout_received(index);
		}
	}
	(void)sink;
}

static void run_fanout(int receivers, long iterations)
{
	if (receivers < 1 || receivers > MAX_PEERS)
		die("receivers must be 1..%d", MAX_PEERS);
	shared_init(receivers);
	for (int i = 0; i < receivers; i++)
		spawn_peer(receiver, i);
	wait_peers_ready();

	struct conn c;
	conn_open(&c);
	uint64_t filter[BLOOM_BYTES / 8] = { 0 };
	for (size_t i = 0; i < sizeof g_filter_bits / sizeof g_filter_bits[0]; i++)
		filter[g_filter_bits[i] / 64] |= 1ULL << (g_filter_bits[i] % 64);
	static const uint64_t body[SIGNAL_BODY_LEN / 8] = { 0x5151515151515151ULL };

	struct samples s;
	samples_init(&s, (size_t)iterations);
	long warm = iterations / 10 + 3;
	for (long i = 0; i < warm + iterations; i++) {
		struct msg b;
		msg_start(&b, KD_DST_ID_BROADCAST, KD_MSG_SIGNAL, 0);
		msg_vec(&b, g_header, sizeof g_header);
		msg_vec(&b, body, sizeof body);
		uint64_t *bf = msg_item(&b, KD_ITEM_BLOOM_FILTER, sizeof(uint64_t) + BLOOM_BYTES);
		memcpy(bf + 1, filter, sizeof filter);
		fanout_round_start();
		struct kd_cmd_send cmd;
		uint64_t t0 = now_ns();
		if (msg_send(&c, &b, 0, &cmd) < 0)
			die("SEND broadcast");
		uint64_t dt = fanout_round_wait(t0);
		if (i >= warm)
			samples_add(&s, dt);
	}
	stop_peers();
	samples_print(&s, NULL);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 4 && strcmp(argv[1], "rtt") == 0) {
		g_bus = argv[2];
		run_rtt(atol(argv[3]));
	} else if (argc >= 5 && strcmp(argv[1], "call") == 0) {
		g_bus = argv[2];
		size_t size = (size_t)atol(argv[3]);
		int use_memfd = size >= MEMFD_MIN_SIZE;
		if (argc >= 6)
			use_memfd = strcmp(argv[5], "memfd") == 0;
		g_wait_epoll = argc >= 7 && strcmp(argv[6], "epoll") == 0;
		run_call(size, atol(argv[4]), use_memfd);
	} else if (argc >= 5 && strcmp(argv[1], "dcall") == 0) {
		g_bus = argv[2];
		run_dbus_call((size_t)atol(argv[3]), atol(argv[4]));
	} else if (argc >= 3 && strcmp(argv[1], "dserve") == 0) {
		g_bus = argv[2];
		serve_calls(1, say_ready);
	} else if (argc >= 4 && strcmp(argv[1], "memfd") == 0) {
		run_memfd_floor((size_t)atol(argv[2]), atol(argv[3]));
	} else if (argc >= 5 && strcmp(argv[1], "fanout") == 0) {
		g_bus = argv[2];
		g_wait_epoll = argc >= 6 && strcmp(argv[5], "epoll") == 0;
		run_fanout(atoi(argv[3]), atol(argv[4]));
	} else {
		fprintf(stderr,
			"usage: %s rtt <bus> <iterations>\n"
			"       %s call <bus> <payload-bytes> <iterations> [vec|memfd] [poll|epoll]\n"
			"       %s dcall <bus> <payload-bytes> <iterations>\n"
			"       %s dserve <bus>\n"
			"       %s fanout <bus> <receivers> <iterations> [poll|epoll]\n"
			"       %s memfd <payload-bytes> <iterations>\n", argv[0], argv[0], argv[0], argv[0], argv[0], argv[0]);
		return 2;
	}
	return 0;
}
