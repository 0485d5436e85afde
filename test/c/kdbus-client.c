/*
 * A kdbus client that does what sd-bus does over kdbus, with nothing but libc: open, ioctl,
 * mmap, poll, select, epoll, close. It plays every peer of a scenario itself, with several
 * connections in one process and a thread wherever a synchronous call needs a concurrent
 * responder.
 *
 *   kdbus-client [-v] <scenario|all> <bus-node-path>
 *
 * Exit status 0 when every check held; otherwise 1 and one line on stderr naming the
 * scenario, the step, the failed check and errno. Expectations come from the kdbus ABI
 * reference (docs/reference/kdbus-abi.md, section numbers cited as §x.y), never from what
 * an implementation happens to do.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kdbus-abi.h"

#define POOL_SIZE (16ULL * 1024 * 1024)
#define BLOOM_BYTES 64
#define RECV_ATTACH (KD_ATTACH_NAMES | KD_ATTACH_CREDS | KD_ATTACH_PIDS | KD_ATTACH_TIMESTAMP)
#define CALL_TIMEOUT_NS (5ULL * 1000 * 1000 * 1000)
#define WAIT_MS 3000
#define SCENARIO_WATCHDOG_S 30
#define ALL_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

/* ---- diagnostics ------------------------------------------------------------------------ */

static const char *g_scenario = "setup";
static int g_verbose;
static __thread char t_step[256] = "start";
/* The main thread's step, for the watchdog (a signal handler cannot reach another thread's
 * thread-local buffer). */
static const char *g_main_step = "start";

static const char *errno_name(int e)
{
	switch (e) {
#define N(x) case x: return #x;
	N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EBADF) N(EAGAIN) N(ENOMEM) N(EACCES) N(EFAULT)
	N(EBUSY) N(EEXIST) N(ENODEV) N(EINVAL) N(EMFILE) N(ENOTTY) N(ETXTBSY) N(ENOSPC) N(EPIPE)
	N(EDOM) N(ENOSYS) N(EMLINK) N(E2BIG) N(ENXIO) N(ENOTUNIQ) N(EBADFD) N(EBADMSG) N(EBADSLT)
	N(ECOMM) N(EMSGSIZE) N(EOPNOTSUPP) N(EADDRINUSE) N(EADDRNOTAVAIL) N(ENOBUFS) N(EXFULL)
	N(ESHUTDOWN) N(ETIMEDOUT) N(ECONNREFUSED) N(ECONNRESET) N(ECANCELED) N(EREMOTEIO)
	N(EREMCHG) N(EDESTADDRREQ) N(EMEDIUMTYPE) N(ENAMETOOLONG) N(EPROTO) N(EIO)
#undef N
	default: return "?";
	}
}

__attribute__((format(printf, 2, 3), noreturn))
static void fail_errno(int err, const char *fmt, ...)
{
	char detail[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	fflush(stdout);
	if (err)
		fprintf(stderr, "kdbus-client: %s: step \"%s\" failed: %s: errno %d (%s: %s)\n",
			g_scenario, t_step, detail, err, errno_name(err), strerror(err));
	else
		fprintf(stderr, "kdbus-client: %s: step \"%s\" failed: %s\n", g_scenario, t_step, detail);
	_exit(1);
}

#define fail(...) fail_errno(0, __VA_ARGS__)

__attribute__((format(printf, 1, 2)))
static void step(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t_step, sizeof t_step, fmt, ap);
	va_end(ap);
	if (g_verbose)
		printf("[%s] %s\n", g_scenario, t_step);
}

/* A negative return is a failure of the step; errno says why. */
#define TRY(expr) do { if ((expr) < 0) fail_errno(errno, "%s", #expr); } while (0)
#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)
/* The call must fail with exactly this errno. */
#define EXPECT_ERRNO(want, expr) do {                                                      \
		errno = 0;                                                                 \
		long rc_ = (long)(expr);                                                   \
		int e_ = errno;                                                            \
		if (rc_ >= 0)                                                              \
			fail("%s succeeded, expected %s", #expr, errno_name(want));         \
		if (e_ != (want))                                                          \
			fail_errno(e_, "%s: expected %s (%d)", #expr, errno_name(want), want); \
	} while (0)

static void watchdog(int sig)
{
	char line[512];
	(void)sig;
	int n = snprintf(line, sizeof line, "kdbus-client: %s: no progress for %d s during step \"%s\"\n",
			 g_scenario, SCENARIO_WATCHDOG_S, g_main_step);
	if (n > 0 && write(STDERR_FILENO, line, (size_t)n) < 0)
		_exit(3);
	_exit(3);
}

/* ---- small utilities ------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;
	TRY(clock_gettime(CLOCK_MONOTONIC, &ts));
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t next_cookie(void)
{
	static uint64_t cookie = 0x1000;
	return __atomic_add_fetch(&cookie, 1, __ATOMIC_RELAXED);
}

static pid_t thread_id(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* musl declares ioctl's request as int, glibc as unsigned long; a variable keeps both quiet. */
static int kd_ioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg);
}

/* revents of fd after waiting up to timeout_ms for POLLIN (0 when nothing happened). */
static short poll_in(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n = poll(&p, 1, timeout_ms);
	TRY(n);
	return n == 0 ? 0 : p.revents;
}

static const struct kd_item *item_next(const struct kd_item *it)
{
	return (const struct kd_item *)((const uint8_t *)it + KD_ALIGN8(it->size));
}

/* Iterate the items in [start, end), refusing items that are too small or overrun end. */
#define FOR_ITEMS(it, start, end)                                                          \
	for (const struct kd_item *it = (const struct kd_item *)(start);                   \
	     (const uint8_t *)it < (const uint8_t *)(end) && item_ok(it, (end));          \
	     it = item_next(it))

static int item_ok(const struct kd_item *it, const void *end)
{
	if (it->size < KD_ITEM_HEADER || (const uint8_t *)it + it->size > (const uint8_t *)end)
		fail("malformed item (type %#llx, size %llu) %td bytes before the end of its list",
		     (unsigned long long)it->type, (unsigned long long)it->size,
		     (const uint8_t *)end - (const uint8_t *)it);
	return 1;
}

/* A string payload must end with its only NUL (§2.5). */
static const char *item_str(const struct kd_item *it, size_t skip)
{
	size_t len = it->size - KD_ITEM_HEADER - skip;
	const char *s = (const char *)it->data + skip;
	CHECK(len > 0 && s[len - 1] == '\0' && strlen(s) == len - 1,
	      "string item %#llx is not NUL-terminated at its end", (unsigned long long)it->type);
	return s;
}

/* ---- connections ----------------------------------------------------------------------- */

struct conn {
	const char *label;
	int fd;
	uint64_t id;
	uint64_t hello_flags;
	const uint8_t *pool;
	uint64_t bloom_size;
	uint64_t bloom_n_hash;
	uint64_t hello_offset;
};

static int kd_free(const struct conn *c, uint64_t offset)
{
	struct kd_cmd_free f = { .size = sizeof f, .offset = offset };
	return kd_ioctl(c->fd, KD_CMD_FREE, &f);
}

/* sd-bus's connect sequence (§1.4, §3.3): open, HELLO, map the pool read-only, read the
 * bloom parameters the bus returned, FREE that slice. */
static void conn_open(struct conn *c, const char *bus, const char *label, uint64_t hello_flags)
{
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_hello) + KD_ITEM_HEADER + 64];
	struct kd_cmd_hello *h = (struct kd_cmd_hello *)buf;
	struct kd_item *desc = (struct kd_item *)(buf + sizeof *h);
	char name[64];

	memset(c, 0, sizeof *c);
	c->label = label;
	c->hello_flags = hello_flags;
	snprintf(name, sizeof name, "kdbus-client-%s", label);

	step("%s: open %s O_RDWR|O_CLOEXEC", label, bus);
	c->fd = open(bus, O_RDWR | O_CLOEXEC);
	TRY(c->fd);

	step("%s: HELLO (flags %#llx, 16 MiB pool, description %s)", label,
	     (unsigned long long)hello_flags, name);
	memset(buf, 0, sizeof buf);
	desc->type = KD_ITEM_CONN_DESCRIPTION;
	desc->size = KD_ITEM_HEADER + strlen(name) + 1;
	memcpy(desc->data, name, strlen(name) + 1);
	h->size = sizeof *h + desc->size;
	h->flags = hello_flags;
	h->attach_flags_send = KD_ATTACH_ANY;
	h->attach_flags_recv = RECV_ATTACH;
	h->pool_size = POOL_SIZE;
	TRY(kd_ioctl(c->fd, KD_CMD_HELLO, h));
	c->id = h->id;
	c->hello_offset = h->offset;
	CHECK(c->id != 0, "HELLO returned connection id 0");
	/* sd-bus refuses buses with "incompatible feature" bits in the upper half (§3.3). */
	CHECK((h->bus_flags >> 32) == 0, "bus_flags %#llx has upper bits", (unsigned long long)h->bus_flags);
	CHECK(h->offset < POOL_SIZE && h->items_size > 0 && h->offset + h->items_size <= POOL_SIZE,
	      "HELLO returned slice offset %llu size %llu outside the pool",
	      (unsigned long long)h->offset, (unsigned long long)h->items_size);

	step("%s: mmap the pool PROT_READ, MAP_SHARED", label);
	void *pool = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, c->fd, 0);
	if (pool == MAP_FAILED)
		fail_errno(errno, "mmap(NULL, 16 MiB, PROT_READ, MAP_SHARED, fd, 0)");
	c->pool = pool;

	step("%s: parse the HELLO items at pool offset %llu (%llu bytes)", label,
	     (unsigned long long)h->offset, (unsigned long long)h->items_size);
	const uint8_t *items = c->pool + h->offset;
	int n_items = 0;
	FOR_ITEMS(it, items, items + h->items_size) {
		n_items++;
		CHECK(it->type == KD_ITEM_BLOOM_PARAMETER, "unexpected HELLO item type %#llx",
		      (unsigned long long)it->type);
		CHECK(it->size == KD_ITEM_HEADER + sizeof(struct kd_bloom_parameter),
		      "BLOOM_PARAMETER item size %llu, expected 32", (unsigned long long)it->size);
		const struct kd_bloom_parameter *bp = (const void *)it->data;
		c->bloom_size = bp->size;
		c->bloom_n_hash = bp->n_hash;
	}
	CHECK(n_items == 1, "HELLO slice has %d items, expected exactly one BLOOM_PARAMETER", n_items);
	CHECK(c->bloom_size == BLOOM_BYTES, "bloom size %llu, expected 64 (systemd's bus parameters)",
	      (unsigned long long)c->bloom_size);
	CHECK(c->bloom_n_hash >= 1, "bloom n_hash is 0");

	step("%s: FREE the HELLO slice", label);
	TRY(kd_free(c, h->offset));
	step("%s: connected as id %llu (bloom %llu bytes, %llu hashes)", label,
	     (unsigned long long)c->id, (unsigned long long)c->bloom_size,
	     (unsigned long long)c->bloom_n_hash);
}

static void conn_close(struct conn *c)
{
	step("%s: close connection %llu", c->label, (unsigned long long)c->id);
	TRY(munmap((void *)c->pool, POOL_SIZE));
	TRY(close(c->fd));
	c->fd = -1;
	c->pool = NULL;
}

/* ---- sending --------------------------------------------------------------------------- */

struct msg_builder {
	_Alignas(8) uint8_t buf[2048];
	size_t end;
};

static struct kd_msg *mb_msg(struct msg_builder *b)
{
	return (struct kd_msg *)b->buf;
}

static void mb_start(struct msg_builder *b, uint64_t dst_id, uint64_t flags, uint64_t timeout_or_reply)
{
	memset(b->buf, 0, sizeof b->buf);
	struct kd_msg *m = mb_msg(b);
	m->flags = flags;
	m->dst_id = dst_id;
	m->payload_type = KD_PAYLOAD_DBUS;
	m->cookie = next_cookie();
	m->timeout_or_reply = timeout_or_reply;
	b->end = sizeof *m;
	m->size = b->end;
}

/* Append an item and return its (zeroed) payload; msg.size ends at the item's unpadded end. */
static void *mb_item(struct msg_builder *b, uint64_t type, size_t payload)
{
	size_t at = KD_ALIGN8(b->end);
	if (at + KD_ITEM_HEADER + payload > sizeof b->buf)
		fail("message builder overflow");
	struct kd_item *it = (struct kd_item *)(b->buf + at);
	it->size = KD_ITEM_HEADER + payload;
	it->type = type;
	b->end = at + it->size;
	mb_msg(b)->size = b->end;
	return it->data;
}

static void mb_vec(struct msg_builder *b, const void *data, size_t len)
{
	struct kd_vec *v = mb_item(b, KD_ITEM_PAYLOAD_VEC, sizeof *v);
	v->size = len;
	v->address_or_offset = (uintptr_t)data;
}

/* sd-bus layout: a header part, zero padding to 8 as an address-0 VEC, then the body, so
 * the receiver finds the body 8-aligned (§3.6 zero insertion). */
static void mb_payload(struct msg_builder *b, const void *hdr, size_t hdr_len, const void *body, size_t body_len)
{
	mb_vec(b, hdr, hdr_len);
	if (hdr_len % 8)
		mb_vec(b, NULL, 8 - hdr_len % 8);
	mb_vec(b, body, body_len);
}

static void mb_dst_name(struct msg_builder *b, const char *name)
{
	memcpy(mb_item(b, KD_ITEM_DST_NAME, strlen(name) + 1), name, strlen(name) + 1);
}

static int kd_send(const struct conn *c, struct msg_builder *b, uint64_t send_flags, struct kd_cmd_send *cmd)
{
	memset(cmd, 0, sizeof *cmd);
	cmd->size = sizeof *cmd;
	cmd->flags = send_flags;
	cmd->msg_address = (uintptr_t)b->buf;
	return kd_ioctl(c->fd, KD_CMD_SEND, cmd);
}

static void send_ok(const struct conn *c, struct msg_builder *b)
{
	struct kd_cmd_send cmd;
	TRY(kd_send(c, b, 0, &cmd));
}

/* ---- receiving ------------------------------------------------------------------------- */

struct rmsg {
	const struct kd_msg *msg;
	uint64_t offset;
	uint64_t slice_size;
	uint64_t return_flags;
	const struct kd_item *offs[8];
	int n_offs;
	const struct kd_item *dst_name, *bloom, *fds, *memfd, *creds, *pids, *timestamp;
	const struct kd_item *owned_name, *notify;
	int n_notify;
};

/* Parse the message slice at offset (§3.6): header, then the sender's items (VECs turned
 * into PAYLOAD_OFF), then metadata; PAYLOAD_OFF data must lie inside the slice. */
static void parse_msg(const struct conn *c, uint64_t offset, uint64_t slice_size, struct rmsg *r)
{
	memset(r, 0, sizeof *r);
	CHECK(offset % 8 == 0 && offset + slice_size <= POOL_SIZE && slice_size >= sizeof(struct kd_msg),
	      "message slice offset %llu size %llu is not a valid pool slice",
	      (unsigned long long)offset, (unsigned long long)slice_size);
	r->offset = offset;
	r->slice_size = slice_size;
	r->msg = (const struct kd_msg *)(c->pool + offset);
	CHECK(r->msg->size >= sizeof(struct kd_msg) && r->msg->size <= slice_size,
	      "kdbus_msg.size %llu outside [64, slice size %llu]",
	      (unsigned long long)r->msg->size, (unsigned long long)slice_size);
	const uint8_t *base = (const uint8_t *)r->msg;
	FOR_ITEMS(it, base + sizeof(struct kd_msg), base + r->msg->size) {
		switch (it->type) {
		case KD_ITEM_PAYLOAD_OFF: {
			CHECK(it->size == KD_ITEM_HEADER + sizeof(struct kd_vec), "PAYLOAD_OFF size %llu",
			      (unsigned long long)it->size);
			const struct kd_vec *v = (const void *)it->data;
			CHECK(v->address_or_offset == KD_OFFSET_ZEROES ||
			      (v->address_or_offset <= slice_size && v->size <= slice_size - v->address_or_offset),
			      "PAYLOAD_OFF {offset %llu, size %llu} outside the %llu-byte slice",
			      (unsigned long long)v->address_or_offset, (unsigned long long)v->size,
			      (unsigned long long)slice_size);
			CHECK(r->n_offs < 8, "too many PAYLOAD_OFF items");
			r->offs[r->n_offs++] = it;
			break;
		}
		case KD_ITEM_DST_NAME: r->dst_name = it; break;
		case KD_ITEM_BLOOM_FILTER: r->bloom = it; break;
		case KD_ITEM_FDS: r->fds = it; break;
		case KD_ITEM_PAYLOAD_MEMFD: r->memfd = it; break;
		case KD_ITEM_CREDS: r->creds = it; break;
		case KD_ITEM_PIDS: r->pids = it; break;
		case KD_ITEM_TIMESTAMP: r->timestamp = it; break;
		case KD_ITEM_OWNED_NAME:
			if (!r->owned_name)
				r->owned_name = it;
			break;
		case KD_ITEM_NAME_ADD: case KD_ITEM_NAME_REMOVE: case KD_ITEM_NAME_CHANGE:
		case KD_ITEM_ID_ADD: case KD_ITEM_ID_REMOVE:
		case KD_ITEM_REPLY_TIMEOUT: case KD_ITEM_REPLY_DEAD:
			r->notify = it;
			r->n_notify++;
			break;
		default:
			break;
		}
	}
}

/* Non-blocking RECV as sd-bus does it (kdbus's RECV never blocks, §3.7). */
static int kd_recv(const struct conn *c, struct rmsg *r)
{
	struct kd_cmd_recv cmd = { .size = sizeof cmd };
	if (kd_ioctl(c->fd, KD_CMD_RECV, &cmd) < 0)
		return -1;
	parse_msg(c, cmd.msg.offset, cmd.msg.msg_size, r);
	r->return_flags = cmd.msg.return_flags;
	return 0;
}

static void recv_ok(const struct conn *c, struct rmsg *r)
{
	TRY(kd_recv(c, r));
}

/* RECV must find the queue empty; an unexpected message is described in the failure. */
static void expect_empty(const struct conn *c)
{
	struct rmsg r;
	errno = 0;
	if (kd_recv(c, &r) == 0)
		fail("%s: RECV returned a message, expected EAGAIN: src %llu dst %#llx flags %#llx cookie %#llx "
		     "cookie_reply/timeout %#llx, kernel item %#llx", c->label, (unsigned long long)r.msg->src_id,
		     (unsigned long long)r.msg->dst_id, (unsigned long long)r.msg->flags,
		     (unsigned long long)r.msg->cookie, (unsigned long long)r.msg->timeout_or_reply,
		     r.notify ? (unsigned long long)r.notify->type : 0ULL);
	if (errno != EAGAIN)
		fail_errno(errno, "%s: RECV on an empty queue: expected EAGAIN", c->label);
}

static void release_msg(const struct conn *c, const struct rmsg *r)
{
	TRY(kd_free(c, r->offset));
}

/* The payload must arrive as the parts hdr, zero padding to 8, body: data parts back to
 * back from an 8-aligned start, the zero-VEC as offset ~0 (§3.6). */
static void check_payload(const struct rmsg *r, const void *hdr, size_t hdr_len, const void *body, size_t body_len)
{
	size_t pad = hdr_len % 8 ? 8 - hdr_len % 8 : 0;
	int want = pad ? 3 : 2;
	CHECK(r->n_offs == want, "%d PAYLOAD_OFF items, expected %d", r->n_offs, want);
	const struct kd_vec *h = (const void *)r->offs[0]->data;
	const struct kd_vec *b = (const void *)r->offs[want - 1]->data;
	const uint8_t *base = (const uint8_t *)r->msg;
	CHECK(h->size == hdr_len && h->address_or_offset != KD_OFFSET_ZEROES,
	      "first part: size %llu offset %#llx, expected %zu bytes of data",
	      (unsigned long long)h->size, (unsigned long long)h->address_or_offset, hdr_len);
	CHECK(h->address_or_offset % 8 == 0, "payload starts at unaligned offset %llu",
	      (unsigned long long)h->address_or_offset);
	CHECK(memcmp(base + h->address_or_offset, hdr, hdr_len) == 0, "first part's bytes differ");
	if (pad) {
		const struct kd_vec *z = (const void *)r->offs[1]->data;
		CHECK(z->size == pad && z->address_or_offset == KD_OFFSET_ZEROES,
		      "padding part: size %llu offset %#llx, expected %zu zero bytes at offset ~0",
		      (unsigned long long)z->size, (unsigned long long)z->address_or_offset, pad);
		for (size_t i = 0; i < pad; i++)
			CHECK(base[h->address_or_offset + hdr_len + i] == 0, "padding byte %zu is not zero", i);
	}
	CHECK(b->size == body_len && b->address_or_offset == h->address_or_offset + hdr_len + pad,
	      "body part: size %llu offset %llu, expected %zu bytes at %llu (8-aligned after the header)",
	      (unsigned long long)b->size, (unsigned long long)b->address_or_offset, body_len,
	      (unsigned long long)(h->address_or_offset + hdr_len + pad));
	CHECK(memcmp(base + b->address_or_offset, body, body_len) == 0, "body bytes differ");
}

/* Metadata a receiver with NAMES|CREDS|PIDS|TIMESTAMP gets from a sender in this process
 * (§3.17): our credentials, our pid, the sending thread, a timestamp taken during SEND. */
static void check_metadata(const struct rmsg *r, pid_t sender_tid, uint64_t sent_after, uint64_t received_before)
{
	CHECK(r->creds && r->creds->size == KD_ITEM_HEADER + sizeof(struct kd_creds), "no CREDS item of 64 bytes");
	const struct kd_creds *cr = (const void *)r->creds->data;
	CHECK(cr->uid == getuid() && cr->euid == geteuid() && cr->gid == getgid() && cr->egid == getegid(),
	      "CREDS uid %llu euid %llu gid %llu egid %llu, expected %u %u %u %u",
	      (unsigned long long)cr->uid, (unsigned long long)cr->euid, (unsigned long long)cr->gid,
	      (unsigned long long)cr->egid, getuid(), geteuid(), getgid(), getegid());
	CHECK(r->pids && r->pids->size == KD_ITEM_HEADER + sizeof(struct kd_pids), "no PIDS item of 24 bytes");
	const struct kd_pids *p = (const void *)r->pids->data;
	CHECK(p->pid == (uint64_t)getpid() && p->tid == (uint64_t)sender_tid && p->ppid == (uint64_t)getppid(),
	      "PIDS pid %llu tid %llu ppid %llu, expected %d %d %d",
	      (unsigned long long)p->pid, (unsigned long long)p->tid, (unsigned long long)p->ppid,
	      getpid(), sender_tid, getppid());
	CHECK(r->timestamp && r->timestamp->size == KD_ITEM_HEADER + sizeof(struct kd_timestamp),
	      "no TIMESTAMP item of 24 bytes");
	const struct kd_timestamp *ts = (const void *)r->timestamp->data;
	CHECK(ts->seqnum > 0 && ts->realtime_ns > 0, "TIMESTAMP seqnum %llu realtime %llu",
	      (unsigned long long)ts->seqnum, (unsigned long long)ts->realtime_ns);
	CHECK(ts->monotonic_ns >= sent_after && ts->monotonic_ns <= received_before,
	      "TIMESTAMP monotonic %llu not within the SEND..RECV window [%llu, %llu]",
	      (unsigned long long)ts->monotonic_ns, (unsigned long long)sent_after,
	      (unsigned long long)received_before);
}

/* A kernel notification (§3.16): src 0, payload type 0, cookie 0, exactly one kernel item
 * of the given type, then a TIMESTAMP. */
static void check_notification(const struct rmsg *r, uint64_t type, uint64_t dst_id, uint64_t msg_flags)
{
	const struct kd_msg *m = r->msg;
	CHECK(m->src_id == KD_SRC_ID_KERNEL && m->payload_type == KD_PAYLOAD_KERNEL && m->cookie == 0,
	      "not a kernel notification: src %llu payload_type %#llx cookie %llu",
	      (unsigned long long)m->src_id, (unsigned long long)m->payload_type, (unsigned long long)m->cookie);
	CHECK(r->n_notify == 1 && r->notify->type == type, "notification item %#llx (%d of them), expected %#llx",
	      r->notify ? (unsigned long long)r->notify->type : 0ULL, r->n_notify, (unsigned long long)type);
	CHECK(m->dst_id == dst_id && m->flags == msg_flags,
	      "notification dst_id %#llx flags %#llx, expected %#llx and %#llx",
	      (unsigned long long)m->dst_id, (unsigned long long)m->flags,
	      (unsigned long long)dst_id, (unsigned long long)msg_flags);
	CHECK(r->timestamp != NULL, "notification without TIMESTAMP item");
	CHECK(r->n_offs == 0, "notification carries payload");
}

/* ---- names and matches ----------------------------------------------------------------- */

static int kd_name_cmd(const struct conn *c, unsigned long cmd, const char *name, uint64_t flags, uint64_t *return_flags)
{
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd) + KD_ITEM_HEADER + 256];
	struct kd_cmd *k = (struct kd_cmd *)buf;
	struct kd_item *it = (struct kd_item *)(buf + sizeof *k);
	memset(buf, 0, sizeof buf);
	it->type = KD_ITEM_NAME;
	it->size = KD_ITEM_HEADER + strlen(name) + 1;
	memcpy(it->data, name, strlen(name) + 1);
	k->size = sizeof *k + it->size;
	k->flags = flags;
	int rc = kd_ioctl(c->fd, cmd, k);
	if (return_flags)
		*return_flags = k->return_flags;
	return rc;
}

/* One match entry with one rule (an entry matches only if all its rules do, §3.13). */
static void match_add(const struct conn *c, uint64_t cookie, uint64_t type, const void *rule, size_t len)
{
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_match) + KD_ITEM_HEADER + 256];
	struct kd_cmd_match *m = (struct kd_cmd_match *)buf;
	struct kd_item *it = (struct kd_item *)(buf + sizeof *m);
	memset(buf, 0, sizeof buf);
	it->type = type;
	it->size = KD_ITEM_HEADER + len;
	memcpy(it->data, rule, len);
	m->size = sizeof *m + it->size;
	m->cookie = cookie;
	TRY(kd_ioctl(c->fd, KD_CMD_MATCH_ADD, m));
}

static void bloom_set(uint64_t *words, unsigned bit)
{
	words[bit / 64] |= 1ULL << (bit % 64);
}

/* ---- a responder for calls ------------------------------------------------------------- */

static const char CALL_HDR[] = "c-client method call";   /* 21 bytes with the NUL */
static const uint64_t CALL_BODY[2] = { 0x0123456789abcdefULL, 0xfedcba9876543210ULL };
static const char REPLY_HDR[] = "c-client reply";         /* 15 bytes */
static const char REPLY_BODY[] = "pong";

struct responder {
	struct conn *conn;
	uint64_t caller_id;
	uint64_t expect_cookie;
	uint64_t expect_timeout;
	const char *expect_dst_name;
	int close_instead;      /* receive the call, then close the connection without replying */
	atomic_int *hold;       /* when set, the reply waits until this is non-zero */
	pid_t tid;
	uint64_t reply_cookie;
};

/* Receive one method call from the caller, check it as sd-bus would parse it, then reply
 * (or die). */
static void answer_call(struct responder *rs)
{
	struct rmsg call;
	uint64_t received_before;
	step("%s: RECV the call", rs->conn->label);
	recv_ok(rs->conn, &call);
	received_before = now_ns();
	const struct kd_msg *m = call.msg;
	CHECK(m->src_id == rs->caller_id && m->cookie == rs->expect_cookie,
	      "call src %llu cookie %#llx, expected %llu and %#llx", (unsigned long long)m->src_id,
	      (unsigned long long)m->cookie, (unsigned long long)rs->caller_id,
	      (unsigned long long)rs->expect_cookie);
	CHECK(m->flags == KD_MSG_EXPECT_REPLY && m->payload_type == KD_PAYLOAD_DBUS,
	      "call flags %#llx payload_type %#llx", (unsigned long long)m->flags,
	      (unsigned long long)m->payload_type);
	CHECK(m->timeout_or_reply == rs->expect_timeout, "call timeout_ns %llu, expected the deadline sent, %llu",
	      (unsigned long long)m->timeout_or_reply, (unsigned long long)rs->expect_timeout);
	if (rs->expect_dst_name) {
		CHECK(m->dst_id == KD_DST_ID_NAME, "name-addressed call has dst_id %llu, expected 0",
		      (unsigned long long)m->dst_id);
		CHECK(call.dst_name && strcmp(item_str(call.dst_name, 0), rs->expect_dst_name) == 0,
		      "DST_NAME item missing or not %s", rs->expect_dst_name);
	} else {
		CHECK(m->dst_id == rs->conn->id, "call dst_id %llu, expected %llu",
		      (unsigned long long)m->dst_id, (unsigned long long)rs->conn->id);
	}
	check_payload(&call, CALL_HDR, sizeof CALL_HDR, CALL_BODY, sizeof CALL_BODY);
	check_metadata(&call, (pid_t)getpid(), 0, received_before);
	step("%s: FREE the call", rs->conn->label);
	release_msg(rs->conn, &call);

	if (rs->close_instead) {
		conn_close(rs->conn);
		return;
	}
	if (rs->hold) {
		step("%s: hold the reply back", rs->conn->label);
		while (!atomic_load(rs->hold))
			poll(NULL, 0, 1);
	}
	struct msg_builder b;
	mb_start(&b, rs->caller_id, 0, rs->expect_cookie);
	mb_payload(&b, REPLY_HDR, sizeof REPLY_HDR, REPLY_BODY, sizeof REPLY_BODY);
	rs->reply_cookie = mb_msg(&b)->cookie;
	step("%s: SEND the reply (cookie_reply %#llx)", rs->conn->label, (unsigned long long)rs->expect_cookie);
	send_ok(rs->conn, &b);
}

static void *responder_thread(void *arg)
{
	struct responder *rs = arg;
	rs->tid = thread_id();
	step("%s (thread): poll for the call", rs->conn->label);
	CHECK(poll_in(rs->conn->fd, WAIT_MS) & POLLIN, "no POLLIN within %d ms", WAIT_MS);
	answer_call(rs);
	return NULL;
}

static void start_responder(pthread_t *t, struct responder *rs)
{
	int err = pthread_create(t, NULL, responder_thread, rs);
	if (err)
		fail_errno(err, "pthread_create");
}

static void build_call(struct msg_builder *b, uint64_t dst_id, const char *dst_name, uint64_t timeout_ns)
{
	mb_start(b, dst_id, KD_MSG_EXPECT_REPLY, now_ns() + timeout_ns);
	if (dst_name)
		mb_dst_name(b, dst_name);
	mb_payload(b, CALL_HDR, sizeof CALL_HDR, CALL_BODY, sizeof CALL_BODY);
}

static void check_reply(const struct rmsg *r, const struct responder *rs, uint64_t call_cookie,
			const char *owned_name, uint64_t sent_after)
{
	const struct kd_msg *m = r->msg;
	CHECK(m->src_id == rs->conn->id && m->timeout_or_reply == call_cookie && m->cookie == rs->reply_cookie,
	      "reply src %llu cookie_reply %#llx cookie %#llx, expected %llu, %#llx, %#llx",
	      (unsigned long long)m->src_id, (unsigned long long)m->timeout_or_reply,
	      (unsigned long long)m->cookie, (unsigned long long)rs->conn->id,
	      (unsigned long long)call_cookie, (unsigned long long)rs->reply_cookie);
	CHECK(m->flags == 0 && m->dst_id == rs->caller_id, "reply flags %#llx dst %llu",
	      (unsigned long long)m->flags, (unsigned long long)m->dst_id);
	check_payload(r, REPLY_HDR, sizeof REPLY_HDR, REPLY_BODY, sizeof REPLY_BODY);
	check_metadata(r, rs->tid, sent_after, now_ns());
	/* The replier owns a name and lets everybody see its metadata: NAMES is attached. */
	CHECK(r->owned_name && strcmp(item_str(r->owned_name, sizeof(uint64_t)), owned_name) == 0,
	      "reply lacks the OWNED_NAME item %s", owned_name);
}

/* ---- scenarios ------------------------------------------------------------------------- */

static void well_known(char *out, size_t len, const char *what)
{
	snprintf(out, len, "org.kdbuscuse.ctest.p%d.%s", (int)getpid(), what);
}

static void scenario_hello(const char *bus)
{
	struct conn a;
	conn_open(&a, bus, "hello", KD_HELLO_ACCEPT_FD);

	step("the connection fd has FD_CLOEXEC (opened with O_CLOEXEC)");
	int fdflags = fcntl(a.fd, F_GETFD);
	TRY(fdflags);
	CHECK(fdflags & FD_CLOEXEC, "FD_CLOEXEC not set");

	step("FREE of the already freed HELLO slice at %llu -> ENXIO (§3.4)", (unsigned long long)a.hello_offset);
	EXPECT_ERRNO(ENXIO, kd_free(&a, a.hello_offset));

	step("poll an idle connection: POLLOUT, no POLLIN (§1.5)");
	struct pollfd p = { .fd = a.fd, .events = POLLIN | POLLOUT };
	TRY(poll(&p, 1, 0));
	CHECK((p.revents & POLLOUT) && !(p.revents & (POLLIN | POLLERR | POLLHUP)),
	      "revents %#x, expected POLLOUT only", p.revents);

	step("mmap the pool PROT_READ|PROT_WRITE -> EPERM (§1.5 mmap)");
	void *w = mmap(NULL, POOL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, a.fd, 0);
	if (w != MAP_FAILED) {
		munmap(w, POOL_SIZE);
		fail("a writable mapping of the pool succeeded");
	}
	CHECK(errno == EPERM, "writable mmap failed with errno %d (%s), expected EPERM", errno, errno_name(errno));

	step("mprotect(PROT_READ|PROT_WRITE) of the read-only pool map fails (VM_MAYWRITE cleared -> EACCES)");
	EXPECT_ERRNO(EACCES, mprotect((void *)a.pool, POOL_SIZE, PROT_READ | PROT_WRITE));

	step("the read-only map still reads");
	volatile uint8_t first = a.pool[0];
	(void)first;
	conn_close(&a);
}

static void scenario_name(const char *bus)
{
	struct conn a, b;
	char name[128];
	uint64_t rf;
	well_known(name, sizeof name, "Owner");
	conn_open(&a, bus, "owner", KD_HELLO_ACCEPT_FD);
	conn_open(&b, bus, "observer", KD_HELLO_ACCEPT_FD);

	step("owner: NAME_ACQUIRE %s", name);
	TRY(kd_name_cmd(&a, KD_CMD_NAME_ACQUIRE, name, 0, &rf));
	CHECK((rf & (KD_NAME_PRIMARY | KD_NAME_ACQUIRED)) == (KD_NAME_PRIMARY | KD_NAME_ACQUIRED) &&
	      !(rf & KD_NAME_IN_QUEUE), "return_flags %#llx, expected PRIMARY|ACQUIRED (§3.9)",
	      (unsigned long long)rf);

	step("owner: NAME_ACQUIRE again -> 0 with PRIMARY but without ACQUIRED (§3.9)");
	TRY(kd_name_cmd(&a, KD_CMD_NAME_ACQUIRE, name, 0, &rf));
	CHECK((rf & KD_NAME_PRIMARY) && !(rf & KD_NAME_ACQUIRED), "return_flags %#llx", (unsigned long long)rf);

	step("observer: LIST NAMES shows the owner's id with the name, PRIMARY");
	struct kd_cmd_list list = { .size = sizeof list, .flags = KD_LIST_NAMES };
	TRY(kd_ioctl(b.fd, KD_CMD_LIST, &list));
	CHECK(list.offset + list.list_size <= POOL_SIZE && list.list_size > 0,
	      "LIST slice offset %llu size %llu", (unsigned long long)list.offset, (unsigned long long)list.list_size);
	int found = 0;
	const uint8_t *rec = b.pool + list.offset, *end = rec + list.list_size;
	while (rec < end) {
		const struct kd_info *info = (const void *)rec;
		CHECK(info->size >= sizeof *info && rec + info->size <= end, "LIST record size %llu",
		      (unsigned long long)info->size);
		FOR_ITEMS(it, rec + sizeof *info, rec + info->size) {
			if (it->type != KD_ITEM_OWNED_NAME)
				continue;
			const struct kd_name *n = (const void *)it->data;
			if (strcmp(item_str(it, sizeof(uint64_t)), name) != 0)
				continue;
			CHECK(info->id == a.id && (n->flags & KD_NAME_PRIMARY),
			      "LIST shows %s on id %llu flags %#llx, expected id %llu PRIMARY", name,
			      (unsigned long long)info->id, (unsigned long long)n->flags, (unsigned long long)a.id);
			found++;
		}
		rec += KD_ALIGN8(info->size);
	}
	CHECK(found == 1, "LIST reported %s %d times, expected once", name, found);
	TRY(kd_free(&b, list.offset));

	step("observer: CONN_INFO by name shows the owner's id and the name");
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_info) + KD_ITEM_HEADER + 136];
	struct kd_cmd_info *ci = (struct kd_cmd_info *)buf;
	struct kd_item *nit = (struct kd_item *)(buf + sizeof *ci);
	memset(buf, 0, sizeof buf);
	nit->type = KD_ITEM_NAME;
	nit->size = KD_ITEM_HEADER + strlen(name) + 1;
	memcpy(nit->data, name, strlen(name) + 1);
	ci->size = sizeof *ci + nit->size;
	ci->attach_flags = KD_ATTACH_NAMES;
	TRY(kd_ioctl(b.fd, KD_CMD_CONN_INFO, ci));
	const struct kd_info *info = (const void *)(b.pool + ci->offset);
	CHECK(ci->offset + ci->info_size <= POOL_SIZE && info->size == ci->info_size,
	      "CONN_INFO slice offset %llu size %llu, record size %llu", (unsigned long long)ci->offset,
	      (unsigned long long)ci->info_size, (unsigned long long)info->size);
	CHECK(info->id == a.id && info->flags == a.hello_flags, "CONN_INFO id %llu flags %#llx, expected %llu %#llx",
	      (unsigned long long)info->id, (unsigned long long)info->flags,
	      (unsigned long long)a.id, (unsigned long long)a.hello_flags);
	found = 0;
	FOR_ITEMS(it, (const uint8_t *)info + sizeof *info, (const uint8_t *)info + info->size)
		if (it->type == KD_ITEM_OWNED_NAME && strcmp(item_str(it, sizeof(uint64_t)), name) == 0)
			found++;
	CHECK(found == 1, "CONN_INFO lists the name %d times, expected once (attach NAMES)", found);
	TRY(kd_free(&b, ci->offset));

	step("observer: NAME_ACQUIRE of the taken name without flags -> EEXIST (§3.9)");
	EXPECT_ERRNO(EEXIST, kd_name_cmd(&b, KD_CMD_NAME_ACQUIRE, name, 0, NULL));

	step("owner: NAME_RELEASE");
	TRY(kd_name_cmd(&a, KD_CMD_NAME_RELEASE, name, 0, NULL));

	step("observer: CONN_INFO by the released name -> ESRCH (§3.11)");
	ci->offset = 0;
	EXPECT_ERRNO(ESRCH, kd_ioctl(b.fd, KD_CMD_CONN_INFO, ci));

	step("owner: NAME_RELEASE again -> ESRCH (§3.9)");
	EXPECT_ERRNO(ESRCH, kd_name_cmd(&a, KD_CMD_NAME_RELEASE, name, 0, NULL));
	conn_close(&b);
	conn_close(&a);
}

static void scenario_call(const char *bus)
{
	struct conn a, b;
	char name[128];
	uint64_t rf;
	well_known(name, sizeof name, "Callee");
	conn_open(&a, bus, "caller", KD_HELLO_ACCEPT_FD);
	conn_open(&b, bus, "callee", KD_HELLO_ACCEPT_FD);
	step("callee: NAME_ACQUIRE %s", name);
	TRY(kd_name_cmd(&b, KD_CMD_NAME_ACQUIRE, name, 0, &rf));

	/* Asynchronous: call, the callee answers from the same loop, the caller RECVs. */
	struct responder rs = { .conn = &b, .caller_id = a.id, .expect_dst_name = name, .tid = thread_id() };
	struct msg_builder call;
	build_call(&call, KD_DST_ID_NAME, name, CALL_TIMEOUT_NS);
	rs.expect_cookie = mb_msg(&call)->cookie;
	rs.expect_timeout = mb_msg(&call)->timeout_or_reply;
	step("caller: SEND a call to %s (EXPECT_REPLY, 5 s timeout)", name);
	uint64_t sent = now_ns();
	send_ok(&a, &call);
	answer_call(&rs);
	step("caller: RECV the reply");
	struct rmsg reply;
	recv_ok(&a, &reply);
	check_reply(&reply, &rs, rs.expect_cookie, name, sent);
	release_msg(&a, &reply);
	step("caller: nothing else queued");
	expect_empty(&a);

	/* Synchronous: SEND blocks until the callee's thread replies into our pool. */
	pthread_t t;
	build_call(&call, KD_DST_ID_NAME, name, CALL_TIMEOUT_NS);
	rs.expect_cookie = mb_msg(&call)->cookie;
	rs.expect_timeout = mb_msg(&call)->timeout_or_reply;
	start_responder(&t, &rs);
	step("caller: SEND with SYNC_REPLY to %s", name);
	struct kd_cmd_send cmd;
	sent = now_ns();
	TRY(kd_send(&a, &call, KD_SEND_SYNC_REPLY, &cmd));
	step("join the callee's thread");
	int err = pthread_join(t, NULL);
	if (err)
		fail_errno(err, "pthread_join");
	step("caller: read the reply at cmd.reply.offset %llu", (unsigned long long)cmd.reply.offset);
	parse_msg(&a, cmd.reply.offset, cmd.reply.msg_size, &reply);
	check_reply(&reply, &rs, rs.expect_cookie, name, sent);
	step("caller: FREE the sync reply");
	release_msg(&a, &reply);
	step("caller: the sync reply was not queued as well");
	expect_empty(&a);
	conn_close(&b);
	conn_close(&a);
}

static void scenario_signal(const char *bus)
{
	struct conn s, m, n;
	uint64_t filter[BLOOM_BYTES / 8] = { 0 }, mask_m[BLOOM_BYTES / 8] = { 0 }, mask_n[BLOOM_BYTES / 8] = { 0 };
	static const unsigned filter_bits[] = { 3, 77, 130, 259, 500 };
	for (size_t i = 0; i < sizeof filter_bits / sizeof filter_bits[0]; i++)
		bloom_set(filter, filter_bits[i]);
	bloom_set(mask_m, 77);
	bloom_set(mask_m, 259);
	bloom_set(mask_n, 77);
	bloom_set(mask_n, 300);

	conn_open(&s, bus, "sender", KD_HELLO_ACCEPT_FD);
	conn_open(&m, bus, "matching", KD_HELLO_ACCEPT_FD);
	conn_open(&n, bus, "nonmatching", KD_HELLO_ACCEPT_FD);
	step("matching: MATCH_ADD a BLOOM_MASK with a subset of the signal's bits");
	match_add(&m, 1, KD_ITEM_BLOOM_MASK, mask_m, sizeof mask_m);
	step("nonmatching: MATCH_ADD a BLOOM_MASK with a bit the signal lacks");
	match_add(&n, 1, KD_ITEM_BLOOM_MASK, mask_n, sizeof mask_n);

	static const char hdr[] = "c-client signal";   /* 16 bytes: no padding part */
	static const uint64_t body[1] = { 0x5151515151515151ULL };
	struct msg_builder b;
	mb_start(&b, KD_DST_ID_BROADCAST, KD_MSG_SIGNAL, 0);
	mb_payload(&b, hdr, sizeof hdr, body, sizeof body);
	uint64_t *bf = mb_item(&b, KD_ITEM_BLOOM_FILTER, sizeof(uint64_t) + BLOOM_BYTES);
	bf[0] = 0; /* generation */
	memcpy(bf + 1, filter, sizeof filter);
	uint64_t cookie = mb_msg(&b)->cookie;
	step("sender: SEND the broadcast signal with a 64-byte bloom filter");
	uint64_t sent = now_ns();
	send_ok(&s, &b);

	step("matching: poll reports POLLIN before RECV (delivery happens inside SEND, §3.5)");
	short rev = poll_in(m.fd, 0);
	CHECK(rev & POLLIN, "revents %#x, expected POLLIN", rev);
	step("nonmatching: poll reports no POLLIN");
	rev = poll_in(n.fd, 0);
	CHECK(!(rev & (POLLIN | POLLERR | POLLHUP)), "revents %#x, expected none", rev);

	step("matching: RECV the signal");
	struct rmsg r;
	recv_ok(&m, &r);
	CHECK(r.msg->src_id == s.id && r.msg->dst_id == KD_DST_ID_BROADCAST && r.msg->cookie == cookie &&
	      r.msg->flags == KD_MSG_SIGNAL,
	      "signal src %llu dst %#llx cookie %#llx flags %#llx", (unsigned long long)r.msg->src_id,
	      (unsigned long long)r.msg->dst_id, (unsigned long long)r.msg->cookie, (unsigned long long)r.msg->flags);
	check_payload(&r, hdr, sizeof hdr, body, sizeof body);
	CHECK(r.bloom && r.bloom->size == KD_ITEM_HEADER + 8 + BLOOM_BYTES &&
	      memcmp(r.bloom->data + 8, filter, sizeof filter) == 0,
	      "the BLOOM_FILTER item is not kept verbatim in the received signal (§3.6)");
	check_metadata(&r, thread_id(), sent, now_ns());
	release_msg(&m, &r);

	step("nonmatching: RECV -> EAGAIN");
	expect_empty(&n);
	step("sender (no matches) did not get its own broadcast: RECV -> EAGAIN");
	expect_empty(&s);
	step("matching: queue is empty again, poll shows no POLLIN");
	expect_empty(&m);
	rev = poll_in(m.fd, 0);
	CHECK(!(rev & POLLIN), "revents %#x after the queue was drained", rev);
	conn_close(&n);
	conn_close(&m);
	conn_close(&s);
}

static int sealed_memfd(const char *content, size_t len, int seal)
{
	int fd = memfd_create("kdbus-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	TRY(fd);
	CHECK(write(fd, content, len) == (ssize_t)len, "short write to the memfd");
	if (seal)
		TRY(fcntl(fd, F_ADD_SEALS, ALL_SEALS));
	return fd;
}

static void build_fd_message(struct msg_builder *b, uint64_t dst, int memfd, size_t memfd_len, int fd)
{
	static const char hdr[] = "c-client fds";
	static const uint64_t body[1] = { 42 };
	mb_start(b, dst, 0, 0);
	mb_payload(b, hdr, sizeof hdr, body, sizeof body);
	if (memfd >= 0) {
		struct kd_memfd *mf = mb_item(b, KD_ITEM_PAYLOAD_MEMFD, sizeof *mf);
		mf->start = 0;
		mf->size = memfd_len;
		mf->fd = memfd;
	}
	if (fd >= 0)
		*(int32_t *)mb_item(b, KD_ITEM_FDS, sizeof(int32_t)) = fd;
}

static void check_received_memfd(const struct rmsg *r, const char *content, size_t len)
{
	CHECK(r->memfd && r->memfd->size == KD_ITEM_HEADER + sizeof(struct kd_memfd), "no PAYLOAD_MEMFD item");
	const struct kd_memfd *mf = (const void *)r->memfd->data;
	CHECK(mf->fd >= 0 && mf->size == len && mf->start == 0,
	      "PAYLOAD_MEMFD fd %d start %llu size %llu, expected an fd and size %zu",
	      mf->fd, (unsigned long long)mf->start, (unsigned long long)mf->size, len);
	int seals = fcntl(mf->fd, F_GET_SEALS);
	TRY(seals);
	CHECK(seals == ALL_SEALS, "received memfd has seals %#x, expected all four", seals);
	void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, mf->fd, 0);
	if (map == MAP_FAILED)
		fail_errno(errno, "mmap of the received memfd");
	CHECK(memcmp(map, content, len) == 0, "memfd content differs");
	TRY(munmap(map, len));
	TRY(close(mf->fd));
}

static void scenario_fds(const char *bus)
{
	static const char pipe_data[] = "bytes through a passed pipe";
	static const char memfd_data[] = "the content of a sealed memfd";
	struct conn s, r, x;
	int p[2];

	conn_open(&s, bus, "sender", KD_HELLO_ACCEPT_FD);
	conn_open(&r, bus, "receiver", KD_HELLO_ACCEPT_FD);
	conn_open(&x, bus, "nofds", 0);

	step("create a pipe with data and a sealed memfd");
	TRY(pipe2(p, O_CLOEXEC));
	CHECK(write(p[1], pipe_data, sizeof pipe_data) == (ssize_t)sizeof pipe_data, "short pipe write");
	int memfd = sealed_memfd(memfd_data, sizeof memfd_data, 1);

	step("sender: SEND the pipe's read end (FDS) and the memfd (PAYLOAD_MEMFD) to receiver");
	struct msg_builder b;
	build_fd_message(&b, r.id, memfd, sizeof memfd_data, p[0]);
	send_ok(&s, &b);
	step("sender: close its copies (kdbus took references at SEND, §3.5 step 8)");
	TRY(close(p[0]));
	TRY(close(memfd));

	step("receiver: note the two lowest free descriptor numbers");
	int lowest[2];
	for (int i = 0; i < 2; i++)
		TRY(lowest[i] = open("/dev/null", O_RDONLY | O_CLOEXEC));
	for (int i = 0; i < 2; i++)
		TRY(close(lowest[i]));

	step("receiver: RECV the message with the files");
	struct rmsg m;
	recv_ok(&r, &m);
	CHECK(!(m.return_flags & 1), "RECV reported INCOMPLETE_FDS");
	CHECK(m.fds && m.fds->size == KD_ITEM_HEADER + sizeof(int32_t), "no FDS item with one fd");
	int got = *(const int32_t *)m.fds->data;
	CHECK(got >= 0, "received fd number %d", got);
	CHECK(m.memfd, "no PAYLOAD_MEMFD item");
	int got_memfd = ((const struct kd_memfd *)m.memfd->data)->fd;
	step("receiver: the files took the lowest free numbers, %d and %d (kdbus installed them there)", lowest[0],
	     lowest[1]);
	CHECK((got == lowest[0] && got_memfd == lowest[1]) || (got == lowest[1] && got_memfd == lowest[0]),
	      "received fds %d and %d, expected %d and %d", got, got_memfd, lowest[0], lowest[1]);
	step("receiver: the received fd %d is close-on-exec and reads the pipe's data", got);
	int fdflags = fcntl(got, F_GETFD);
	TRY(fdflags);
	CHECK(fdflags & FD_CLOEXEC, "received fd lacks FD_CLOEXEC (§3.7: installed O_CLOEXEC)");
	char buf[64] = { 0 };
	CHECK(read(got, buf, sizeof buf) == (ssize_t)sizeof pipe_data && memcmp(buf, pipe_data, sizeof pipe_data) == 0,
	      "pipe data through the received fd differs");
	step("receiver: EOF once the writer closes");
	TRY(close(p[1]));
	CHECK(read(got, buf, sizeof buf) == 0, "no EOF on the passed pipe");
	TRY(close(got));
	step("receiver: map and read the received memfd");
	check_received_memfd(&m, memfd_data, sizeof memfd_data);
	release_msg(&r, &m);

	step("sender: SEND an unsealed memfd -> ETXTBSY (§3.5 step 8)");
	int unsealed = sealed_memfd(memfd_data, sizeof memfd_data, 0);
	build_fd_message(&b, r.id, unsealed, sizeof memfd_data, -1);
	struct kd_cmd_send cmd;
	EXPECT_ERRNO(ETXTBSY, kd_send(&s, &b, 0, &cmd));
	TRY(close(unsealed));

	step("sender: SEND a pipe fd to a receiver without ACCEPT_FD -> ECOMM (§3.5 delivery)");
	TRY(pipe2(p, O_CLOEXEC));
	build_fd_message(&b, x.id, -1, 0, p[0]);
	EXPECT_ERRNO(ECOMM, kd_send(&s, &b, 0, &cmd));
	TRY(close(p[0]));
	TRY(close(p[1]));

	step("sender: a sealed memfd is payload and reaches the receiver without ACCEPT_FD");
	memfd = sealed_memfd(memfd_data, sizeof memfd_data, 1);
	build_fd_message(&b, x.id, memfd, sizeof memfd_data, -1);
	send_ok(&s, &b);
	TRY(close(memfd));
	recv_ok(&x, &m);
	check_received_memfd(&m, memfd_data, sizeof memfd_data);
	release_msg(&x, &m);

	step("the refused messages were not queued");
	expect_empty(&r);
	expect_empty(&x);
	conn_close(&x);
	conn_close(&r);
	conn_close(&s);
}

/* RECV that must find a notification already queued (§3.16: notifications are queued
 * before the triggering ioctl or close() returns). If it is missing, wait a little to tell
 * "late" from "never" in the failure. */
static void recv_queued(const struct conn *w, struct rmsg *r)
{
	if (kd_recv(w, r) == 0)
		return;
	int err = errno;
	if (err != EAGAIN)
		fail_errno(err, "%s: RECV", w->label);
	uint64_t t0 = now_ns();
	if (poll_in(w->fd, WAIT_MS) & POLLIN)
		fail("%s: RECV -> EAGAIN: the notification was not queued when the triggering call "
		     "returned; it arrived %llu us later", w->label, (unsigned long long)((now_ns() - t0) / 1000));
	fail_errno(err, "%s: RECV: the notification was not queued, nor did it arrive within %d ms",
		   w->label, WAIT_MS);
}

static void expect_id_change(const struct conn *w, uint64_t type, uint64_t id, uint64_t flags)
{
	struct rmsg r;
	recv_queued(w, &r);
	check_notification(&r, type, KD_DST_ID_BROADCAST, KD_MSG_SIGNAL);
	CHECK(r.notify->size == KD_ITEM_HEADER + sizeof(struct kd_id_change), "id notification size %llu",
	      (unsigned long long)r.notify->size);
	const struct kd_id_change *c = (const void *)r.notify->data;
	CHECK(c->id == id && c->flags == flags, "notification id %llu flags %#llx, expected %llu %#llx",
	      (unsigned long long)c->id, (unsigned long long)c->flags, (unsigned long long)id,
	      (unsigned long long)flags);
	release_msg(w, &r);
}

static void expect_name_change(const struct conn *w, uint64_t type, const char *name, uint64_t old_id, uint64_t new_id)
{
	struct rmsg r;
	recv_queued(w, &r);
	check_notification(&r, type, KD_DST_ID_BROADCAST, KD_MSG_SIGNAL);
	CHECK(r.notify->size == KD_ITEM_HEADER + sizeof(struct kd_name_change) + strlen(name) + 1,
	      "name notification size %llu", (unsigned long long)r.notify->size);
	const struct kd_name_change *c = (const void *)r.notify->data;
	CHECK(c->old_id.id == old_id && c->new_id.id == new_id,
	      "notification old id %llu new id %llu, expected %llu and %llu", (unsigned long long)c->old_id.id,
	      (unsigned long long)c->new_id.id, (unsigned long long)old_id, (unsigned long long)new_id);
	CHECK(strcmp(item_str(r.notify, sizeof *c), name) == 0, "notification for name %s, expected %s",
	      item_str(r.notify, sizeof *c), name);
	release_msg(w, &r);
}

static void scenario_notify(const char *bus)
{
	struct conn w, p, q;
	char name[128];
	uint64_t rf;
	well_known(name, sizeof name, "Watched");
	conn_open(&w, bus, "watcher", KD_HELLO_ACCEPT_FD);

	step("watcher: MATCH_ADD ID_ADD, ID_REMOVE, NAME_ADD, NAME_REMOVE, NAME_CHANGE (any id)");
	struct kd_id_change any_id = { .id = KD_MATCH_ID_ANY };
	struct kd_name_change any_name = { .old_id = { .id = KD_MATCH_ID_ANY }, .new_id = { .id = KD_MATCH_ID_ANY } };
	match_add(&w, 1, KD_ITEM_ID_ADD, &any_id, sizeof any_id);
	match_add(&w, 2, KD_ITEM_ID_REMOVE, &any_id, sizeof any_id);
	match_add(&w, 3, KD_ITEM_NAME_ADD, &any_name, sizeof any_name);
	match_add(&w, 4, KD_ITEM_NAME_REMOVE, &any_name, sizeof any_name);
	match_add(&w, 5, KD_ITEM_NAME_CHANGE, &any_name, sizeof any_name);
	expect_empty(&w);

	conn_open(&p, bus, "first", KD_HELLO_ACCEPT_FD);
	step("watcher: RECV ID_ADD for connection %llu", (unsigned long long)p.id);
	expect_id_change(&w, KD_ITEM_ID_ADD, p.id, p.hello_flags);

	step("first: NAME_ACQUIRE %s", name);
	TRY(kd_name_cmd(&p, KD_CMD_NAME_ACQUIRE, name, 0, &rf));
	step("watcher: RECV NAME_ADD (old 0, new %llu)", (unsigned long long)p.id);
	expect_name_change(&w, KD_ITEM_NAME_ADD, name, 0, p.id);

	conn_open(&q, bus, "second", KD_HELLO_ACCEPT_FD);
	step("watcher: RECV ID_ADD for connection %llu", (unsigned long long)q.id);
	expect_id_change(&w, KD_ITEM_ID_ADD, q.id, q.hello_flags);
	step("second: NAME_ACQUIRE with QUEUE -> IN_QUEUE, no notification");
	TRY(kd_name_cmd(&q, KD_CMD_NAME_ACQUIRE, name, KD_NAME_QUEUE, &rf));
	CHECK((rf & KD_NAME_IN_QUEUE) && !(rf & KD_NAME_PRIMARY), "return_flags %#llx, expected IN_QUEUE",
	      (unsigned long long)rf);
	expect_empty(&w);

	step("first: NAME_RELEASE; watcher: RECV NAME_CHANGE (old %llu, new %llu)",
	     (unsigned long long)p.id, (unsigned long long)q.id);
	TRY(kd_name_cmd(&p, KD_CMD_NAME_RELEASE, name, 0, NULL));
	expect_name_change(&w, KD_ITEM_NAME_CHANGE, name, p.id, q.id);

	step("second: NAME_RELEASE; watcher: RECV NAME_REMOVE (old %llu, new 0)", (unsigned long long)q.id);
	TRY(kd_name_cmd(&q, KD_CMD_NAME_RELEASE, name, 0, NULL));
	expect_name_change(&w, KD_ITEM_NAME_REMOVE, name, q.id, 0);

	uint64_t pid_ = p.id, qid = q.id;
	conn_close(&p);
	step("watcher: RECV ID_REMOVE for %llu right after close()", (unsigned long long)pid_);
	expect_id_change(&w, KD_ITEM_ID_REMOVE, pid_, KD_HELLO_ACCEPT_FD);
	conn_close(&q);
	step("watcher: RECV ID_REMOVE for %llu right after close()", (unsigned long long)qid);
	expect_id_change(&w, KD_ITEM_ID_REMOVE, qid, KD_HELLO_ACCEPT_FD);
	step("watcher: nothing else queued");
	expect_empty(&w);
	conn_close(&w);
}

static void scenario_timeout(const char *bus)
{
	struct conn a, b;
	conn_open(&a, bus, "caller", KD_HELLO_ACCEPT_FD);
	conn_open(&b, bus, "silent", KD_HELLO_ACCEPT_FD);

	struct msg_builder call;
	uint64_t t0 = now_ns();
	/* Long enough that the RECV below runs before the deadline even in an emulated VM. */
	build_call(&call, b.id, NULL, 1000ULL * 1000 * 1000);
	uint64_t deadline = mb_msg(&call)->timeout_or_reply;
	uint64_t cookie = mb_msg(&call)->cookie;
	step("caller: SEND a call with a 1 s timeout to a peer that never answers");
	send_ok(&a, &call);
	step("caller: nothing before the deadline");
	expect_empty(&a);

	step("caller: poll until the REPLY_TIMEOUT notification arrives");
	CHECK(poll_in(a.fd, WAIT_MS) & POLLIN, "no POLLIN within %d ms", WAIT_MS);
	uint64_t t1 = now_ns();
	CHECK(t1 >= deadline, "POLLIN %llu us before the deadline",
	      (unsigned long long)((deadline - t1) / 1000));
	step("caller: RECV REPLY_TIMEOUT (arrived %llu ms after SEND)", (unsigned long long)((t1 - t0) / 1000000));
	struct rmsg r;
	recv_ok(&a, &r);
	check_notification(&r, KD_ITEM_REPLY_TIMEOUT, a.id, 0);
	CHECK(r.notify->size == KD_ITEM_HEADER, "REPLY_TIMEOUT item size %llu, expected 16",
	      (unsigned long long)r.notify->size);
	CHECK(r.msg->timeout_or_reply == cookie, "cookie_reply %#llx, expected the call's cookie %#llx",
	      (unsigned long long)r.msg->timeout_or_reply, (unsigned long long)cookie);
	release_msg(&a, &r);

	step("silent: the call is still in its queue; a late reply -> EBADSLT (the request expired)");
	recv_ok(&b, &r);
	CHECK(r.msg->cookie == cookie, "silent peer got cookie %#llx", (unsigned long long)r.msg->cookie);
	release_msg(&b, &r);
	struct msg_builder late;
	mb_start(&late, a.id, 0, cookie);
	mb_payload(&late, REPLY_HDR, sizeof REPLY_HDR, REPLY_BODY, sizeof REPLY_BODY);
	struct kd_cmd_send cmd;
	EXPECT_ERRNO(EBADSLT, kd_send(&b, &late, 0, &cmd));
	expect_empty(&a);
	conn_close(&b);
	conn_close(&a);
}

/* Wait for and RECV one REPLY_DEAD for the call with this cookie. */
static void expect_reply_dead(const struct conn *a, uint64_t cookie)
{
	struct rmsg r;
	CHECK(poll_in(a->fd, WAIT_MS) & POLLIN, "no POLLIN within %d ms", WAIT_MS);
	recv_ok(a, &r);
	check_notification(&r, KD_ITEM_REPLY_DEAD, a->id, 0);
	CHECK(r.notify->size == KD_ITEM_HEADER, "REPLY_DEAD item size %llu, expected 16",
	      (unsigned long long)r.notify->size);
	CHECK(r.msg->timeout_or_reply == cookie, "cookie_reply %#llx, expected the call's cookie %#llx",
	      (unsigned long long)r.msg->timeout_or_reply, (unsigned long long)cookie);
	release_msg(a, &r);
}

static void scenario_dead(const char *bus)
{
	struct conn a, b, c, d;
	struct msg_builder call;
	conn_open(&a, bus, "caller", KD_HELLO_ACCEPT_FD);

	/* The callee took the call off its queue: only the caller's pending request remains,
	 * and its release sends one REPLY_DEAD (§3.14). */
	conn_open(&b, bus, "dying", KD_HELLO_ACCEPT_FD);
	build_call(&call, b.id, NULL, CALL_TIMEOUT_NS);
	uint64_t cookie = mb_msg(&call)->cookie;
	step("caller: SEND a call (EXPECT_REPLY, 5 s) to a peer that will close");
	send_ok(&a, &call);
	struct responder rs = { .conn = &b, .caller_id = a.id, .expect_cookie = cookie,
				.expect_timeout = mb_msg(&call)->timeout_or_reply, .close_instead = 1 };
	answer_call(&rs);
	step("caller: poll for and RECV REPLY_DEAD");
	expect_reply_dead(&a, cookie);
	step("caller: exactly one REPLY_DEAD");
	expect_empty(&a);

	/* The callee dies with the call still queued. The final kdbus code notifies the caller
	 * twice: once while discarding the queue (the queue entry holds the request but does not
	 * unlink it) and once more from the walk over pending requests (kdbus_conn_release in
	 * ipc/kdbus/connection.c). */
	conn_open(&c, bus, "dying-queued", KD_HELLO_ACCEPT_FD);
	build_call(&call, c.id, NULL, CALL_TIMEOUT_NS);
	cookie = mb_msg(&call)->cookie;
	step("caller: SEND a call to a peer that closes without receiving it");
	send_ok(&a, &call);
	conn_close(&c);
	step("caller: RECV REPLY_DEAD from the discarded queue entry");
	expect_reply_dead(&a, cookie);
	step("caller: RECV REPLY_DEAD again from the pending request");
	expect_reply_dead(&a, cookie);
	expect_empty(&a);

	conn_open(&d, bus, "dying-sync", KD_HELLO_ACCEPT_FD);
	pthread_t t;
	build_call(&call, d.id, NULL, CALL_TIMEOUT_NS);
	rs = (struct responder){ .conn = &d, .caller_id = a.id, .expect_cookie = mb_msg(&call)->cookie,
				 .expect_timeout = mb_msg(&call)->timeout_or_reply, .close_instead = 1 };
	start_responder(&t, &rs);
	step("caller: SEND with SYNC_REPLY to a callee that receives the call and closes -> EPIPE (§3.5 d)");
	struct kd_cmd_send cmd;
	EXPECT_ERRNO(EPIPE, kd_send(&a, &call, KD_SEND_SYNC_REPLY, &cmd));
	int err = pthread_join(t, NULL);
	if (err)
		fail_errno(err, "pthread_join");
	step("caller: no notification for the synchronous call");
	expect_empty(&a);
	conn_close(&a);
}

/* ---- one queue, many readers ----------------------------------------------------------- */

/*
 * A multi-threaded service that forked: several threads and processes RECV from one
 * connection at once. Every message must reach exactly one of them, whatever RECVs the
 * shim answers itself from what the daemon told it of the queue.
 */
#define SHARED_MESSAGES 400
#define SHARED_THREADS 3
#define SHARED_CHILDREN 2
#define SHARED_WAIT_NS (20ULL * 1000 * 1000 * 1000)

struct shared_tally {
	_Atomic unsigned seen[SHARED_MESSAGES];
	_Atomic unsigned total;
};

struct shared_reader {
	const struct conn *rx;
	struct shared_tally *tally;
};

/* The number a message carries as its only payload: one VEC of 4 bytes. */
static uint32_t payload_number(const struct rmsg *r)
{
	CHECK(r->n_offs == 1, "%d PAYLOAD_OFF items, expected 1", r->n_offs);
	const struct kd_vec *v = (const void *)r->offs[0]->data;
	uint32_t n;
	CHECK(v->size == sizeof n, "payload of %llu bytes, expected 4", (unsigned long long)v->size);
	memcpy(&n, (const uint8_t *)r->msg + v->address_or_offset, sizeof n);
	return n;
}

/* RECVs until every message was taken by someone; each one's number is tallied. */
static void read_shared(const struct shared_reader *sr)
{
	uint64_t deadline = now_ns() + SHARED_WAIT_NS;
	step("%s: RECV until all %d messages are taken (by anyone)", sr->rx->label, SHARED_MESSAGES);
	while (atomic_load(&sr->tally->total) < SHARED_MESSAGES) {
		CHECK(now_ns() < deadline, "only %u of %d messages were received in 20 s",
		      atomic_load(&sr->tally->total), SHARED_MESSAGES);
		poll_in(sr->rx->fd, 20);
		struct rmsg r;
		if (kd_recv(sr->rx, &r) < 0) {
			if (errno != EAGAIN)
				fail_errno(errno, "%s: RECV", sr->rx->label);
			continue;
		}
		uint32_t n = payload_number(&r);
		CHECK(n < SHARED_MESSAGES, "message number %u out of range", n);
		atomic_fetch_add(&sr->tally->seen[n], 1);
		atomic_fetch_add(&sr->tally->total, 1);
		release_msg(sr->rx, &r);
	}
}

static void *shared_thread(void *arg)
{
	read_shared(arg);
	return NULL;
}

static void scenario_shared(const char *bus)
{
	struct conn tx, rx;
	conn_open(&tx, bus, "sender", 0);
	conn_open(&rx, bus, "shared", 0);
	struct shared_tally *tally = mmap(NULL, sizeof *tally, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (tally == MAP_FAILED)
		fail_errno(errno, "mmap of the tally");
	memset(tally, 0, sizeof *tally);
	struct shared_reader sr = { .rx = &rx, .tally = tally };

	step("shared: fork %d readers and start %d threads on the same connection", SHARED_CHILDREN, SHARED_THREADS);
	pid_t kids[SHARED_CHILDREN];
	for (int i = 0; i < SHARED_CHILDREN; i++) {
		kids[i] = fork();
		TRY(kids[i]);
		if (kids[i] == 0) {
			read_shared(&sr);
			_exit(0);
		}
	}
	pthread_t threads[SHARED_THREADS];
	for (int i = 0; i < SHARED_THREADS; i++) {
		int err = pthread_create(&threads[i], NULL, shared_thread, &sr);
		if (err)
			fail_errno(err, "pthread_create");
	}

	step("sender: SEND %d numbered messages to the shared connection", SHARED_MESSAGES);
	for (uint32_t n = 0; n < SHARED_MESSAGES; n++) {
		struct msg_builder b;
		mb_start(&b, rx.id, 0, 0);
		mb_vec(&b, &n, sizeof n);
		struct kd_cmd_send cmd;
		/* The readers may fall behind the queue's limit of messages per sender (§3.10). */
		while (kd_send(&tx, &b, 0, &cmd) < 0) {
			if (errno != ENOBUFS)
				fail_errno(errno, "sender: SEND message %u", n);
			poll(NULL, 0, 1);
		}
	}

	step("shared: join the threads and reap the readers");
	for (int i = 0; i < SHARED_THREADS; i++) {
		int err = pthread_join(threads[i], NULL);
		if (err)
			fail_errno(err, "pthread_join");
	}
	for (int i = 0; i < SHARED_CHILDREN; i++) {
		int status;
		TRY(waitpid(kids[i], &status, 0));
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "reader process %d failed (status %#x)", i, status);
	}
	step("shared: every message was received exactly once");
	CHECK(atomic_load(&tally->total) == SHARED_MESSAGES, "%u receptions of %d messages",
	      atomic_load(&tally->total), SHARED_MESSAGES);
	for (int n = 0; n < SHARED_MESSAGES; n++)
		CHECK(atomic_load(&tally->seen[n]) == 1, "message %d was received %u times", n, atomic_load(&tally->seen[n]));
	expect_empty(&rx);
	TRY(munmap(tally, sizeof *tally));
	conn_close(&rx);
	conn_close(&tx);
}

/* ---- interrupt: a signal during a synchronous call ------------------------------------- */

static atomic_int g_signals_handled;

static void count_signal(int sig)
{
	(void)sig;
	atomic_fetch_add(&g_signals_handled, 1);
}

struct kicker {
	pthread_t target;
	atomic_int sent;
};

static void *kick_thread(void *arg)
{
	struct kicker *k = arg;
	snprintf(t_step, sizeof t_step, "signal the caller during its SEND");
	/* By then the caller waits in its SEND: the callee holds the reply until the signal went. */
	poll(NULL, 0, 200);
	int err = pthread_kill(k->target, SIGUSR1);
	if (err)
		fail_errno(err, "pthread_kill(caller, SIGUSR1)");
	atomic_store(&k->sent, 1);
	return NULL;
}

/*
 * A signal whose handler has SA_RESTART reaches a caller blocked in a SYNC_REPLY SEND: the
 * handler runs, the wait goes on, and the SEND returns the reply; the call went out once
 * (§3.5 (f): kdbus restarted the wait on the same reply tracker).
 */
static void scenario_interrupt(const char *bus)
{
	struct conn a, b;
	conn_open(&a, bus, "caller", 0);
	conn_open(&b, bus, "callee", 0);

	step("caller: a SIGUSR1 handler with SA_RESTART");
	struct sigaction sa = { .sa_handler = count_signal, .sa_flags = SA_RESTART }, old;
	sigemptyset(&sa.sa_mask);
	TRY(sigaction(SIGUSR1, &sa, &old));
	atomic_store(&g_signals_handled, 0);

	struct kicker k = { .target = pthread_self() };
	struct responder rs = { .conn = &b, .caller_id = a.id, .hold = &k.sent };
	struct msg_builder call;
	build_call(&call, b.id, NULL, CALL_TIMEOUT_NS);
	uint64_t cookie = mb_msg(&call)->cookie;
	rs.expect_cookie = cookie;
	rs.expect_timeout = mb_msg(&call)->timeout_or_reply;
	pthread_t callee, kicker;
	start_responder(&callee, &rs);
	int err = pthread_create(&kicker, NULL, kick_thread, &k);
	if (err)
		fail_errno(err, "pthread_create");

	step("caller: SEND with SYNC_REPLY; a SIGUSR1 comes while it waits");
	struct kd_cmd_send cmd;
	TRY(kd_send(&a, &call, KD_SEND_SYNC_REPLY, &cmd));
	step("caller: the handler ran once and the SEND returned the reply");
	CHECK(atomic_load(&g_signals_handled) == 1, "the SIGUSR1 handler ran %d times, expected once",
	      atomic_load(&g_signals_handled));
	err = pthread_join(kicker, NULL);
	if (!err)
		err = pthread_join(callee, NULL);
	if (err)
		fail_errno(err, "pthread_join");
	struct rmsg reply;
	parse_msg(&a, cmd.reply.offset, cmd.reply.msg_size, &reply);
	CHECK(reply.msg->src_id == b.id && reply.msg->timeout_or_reply == cookie && reply.msg->cookie == rs.reply_cookie,
	      "reply src %llu cookie_reply %#llx cookie %#llx, expected %llu, %#llx, %#llx",
	      (unsigned long long)reply.msg->src_id, (unsigned long long)reply.msg->timeout_or_reply,
	      (unsigned long long)reply.msg->cookie, (unsigned long long)b.id, (unsigned long long)cookie,
	      (unsigned long long)rs.reply_cookie);
	check_payload(&reply, REPLY_HDR, sizeof REPLY_HDR, REPLY_BODY, sizeof REPLY_BODY);
	release_msg(&a, &reply);
	step("the call was delivered once, the reply only through the SEND");
	expect_empty(&b);
	expect_empty(&a);

	TRY(sigaction(SIGUSR1, &old, NULL));
	conn_close(&b);
	conn_close(&a);
}

/* ---- readiness: epoll, select, pselect, ppoll ------------------------------------------ */

/* What sd-event and GLib wait with: each must see the kdbus poll states (§1.5) of the fd. */
enum waiter_kind { WAIT_EPOLL, WAIT_SELECT, WAIT_PSELECT, WAIT_PPOLL };
static const char *const waiter_names[] = { "epoll_wait", "select", "pselect", "ppoll" };

#define EPOLL_TAG 0x6b64627573ULL

/* The state one mechanism reports for fd after waiting up to timeout_ms (-1: forever). */
struct readiness {
	int readable, writable, hangup, error;
};

/* The descriptors the epoll instance ep watches (the "tfd:" lines of its fdinfo), up to max; how many. */
static int epoll_targets(int ep, int *tfds, int max)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
	FILE *f = fopen(path, "re");
	CHECK(f, "cannot read %s: %s", path, strerror(errno));
	int n = 0, tfd;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "tfd: %d", &tfd) == 1 && n < max)
			tfds[n++] = tfd;
	fclose(f);
	return n;
}

static struct readiness wait_ready(enum waiter_kind kind, int fd, int ep, int timeout_ms)
{
	struct readiness r = { 0 };
	struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000 };
	struct timeval tv = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000 };
	switch (kind) {
	case WAIT_EPOLL: {
		struct epoll_event ev[2];
		int n = epoll_wait(ep, ev, 2, timeout_ms);
		TRY(n);
		CHECK(n <= 1, "epoll_wait reported %d events for one descriptor", n);
		if (n == 1) {
			CHECK(ev[0].data.u64 == EPOLL_TAG, "epoll_wait returned data %#llx, registered %#llx",
			      (unsigned long long)ev[0].data.u64, EPOLL_TAG);
			r.readable = !!(ev[0].events & EPOLLIN);
			r.writable = !!(ev[0].events & EPOLLOUT);
			r.hangup = !!(ev[0].events & EPOLLHUP);
			r.error = !!(ev[0].events & EPOLLERR);
		}
		break;
	}
	case WAIT_SELECT:
	case WAIT_PSELECT: {
		fd_set rd, wr, ex;
		FD_ZERO(&rd);
		FD_ZERO(&ex);
		FD_SET(fd, &rd);
		FD_SET(fd, &ex);
		/* Writability only when asked for readability too would report at once. */
		FD_ZERO(&wr);
		if (timeout_ms == 0)
			FD_SET(fd, &wr);
		int n = kind == WAIT_SELECT ? select(fd + 1, &rd, &wr, &ex, timeout_ms < 0 ? NULL : &tv)
					    : pselect(fd + 1, &rd, &wr, &ex, timeout_ms < 0 ? NULL : &ts, NULL);
		TRY(n);
		r.readable = FD_ISSET(fd, &rd);
		r.writable = FD_ISSET(fd, &wr);
		CHECK(!FD_ISSET(fd, &ex), "%s reported an exceptional condition (kdbus has no POLLPRI)", waiter_names[kind]);
		break;
	}
	case WAIT_PPOLL: {
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
		if (timeout_ms != 0)
			p.events = POLLIN;
		int n = ppoll(&p, 1, timeout_ms < 0 ? NULL : &ts, NULL);
		TRY(n);
		r.readable = !!(p.revents & POLLIN);
		r.writable = !!(p.revents & POLLOUT);
		r.hangup = !!(p.revents & POLLHUP);
		r.error = !!(p.revents & POLLERR);
		break;
	}
	}
	return r;
}

struct blocked_waiter {
	enum waiter_kind kind;
	int fd, ep;
	atomic_int started;
	struct readiness got;
	uint64_t woke_ns;
};

static void *blocked_wait(void *arg)
{
	struct blocked_waiter *w = arg;
	snprintf(t_step, sizeof t_step, "%s blocked on an idle connection", waiter_names[w->kind]);
	atomic_store(&w->started, 1);
	w->got = wait_ready(w->kind, w->fd, w->ep, WAIT_MS);
	w->woke_ns = now_ns();
	return NULL;
}

static void send_numbered(const struct conn *from, const struct conn *to, uint32_t n)
{
	struct msg_builder b;
	mb_start(&b, to->id, 0, 0);
	mb_vec(&b, &n, sizeof n);
	send_ok(from, &b);
}

static void recv_numbered(const struct conn *c, uint32_t want)
{
	struct rmsg r;
	recv_ok(c, &r);
	uint32_t n = payload_number(&r);
	CHECK(n == want, "%s: RECV returned message %u, expected %u", c->label, n, want);
	release_msg(c, &r);
}

/* Every mechanism reports the same state at once (timeout 0). */
static void expect_ready(const struct conn *c, int ep, int readable, const char *when)
{
	for (int k = WAIT_EPOLL; k <= WAIT_PPOLL; k++) {
		step("%s: %s reports %s %s", c->label, waiter_names[k], readable ? "readable" : "not readable", when);
		struct readiness r = wait_ready(k, c->fd, ep, 0);
		CHECK(r.readable == readable && !r.hangup && !r.error, "%s %s: readable %d hangup %d error %d, expected readable %d",
		      waiter_names[k], when, r.readable, r.hangup, r.error, readable);
		/* epoll was asked for EPOLLIN alone; the others for POLLOUT too, which kdbus always sets. */
		CHECK(k == WAIT_EPOLL || r.writable, "%s %s: not writable (kdbus always reports POLLOUT)", waiter_names[k], when);
	}
}

static void scenario_readiness(const char *bus)
{
	struct conn tx, rx;
	conn_open(&tx, bus, "sender", 0);
	conn_open(&rx, bus, "receiver", 0);

	step("receiver: register with a level-triggered and an edge-triggered epoll instance");
	int ep = epoll_create1(EPOLL_CLOEXEC), ep_edge = epoll_create1(EPOLL_CLOEXEC);
	TRY(ep);
	TRY(ep_edge);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EPOLL_TAG };
	TRY(epoll_ctl(ep, EPOLL_CTL_ADD, rx.fd, &ev));
	ev.events = EPOLLIN | EPOLLET;
	TRY(epoll_ctl(ep_edge, EPOLL_CTL_ADD, rx.fd, &ev));
	expect_ready(&rx, ep, 0, "on an idle connection");
	CHECK(!wait_ready(WAIT_EPOLL, rx.fd, ep_edge, 0).readable, "edge-triggered epoll reported an idle connection");
	struct stat st;
	TRY(fstat(rx.fd, &st));
	int device = S_ISCHR(st.st_mode);
	int targets[8];
	if (device) {
		/* The kernel would ask the daemon (FUSE_POLL) at every wake-up; the shim's stand-ins do not. */
		step("receiver: the epoll sets watch the shim's stand-ins, not the CUSE device");
		for (int e = 0; e < 2; e++) {
			int n = epoll_targets(e ? ep_edge : ep, targets, 8);
			CHECK(n >= 1, "epoll instance %d watches nothing", e);
			for (int k = 0; k < n; k++)
				CHECK(targets[k] != rx.fd, "epoll instance %d watches the CUSE device %d itself", e, rx.fd);
		}
	}

	step("receiver: one thread each blocks in epoll_wait, select, pselect and ppoll");
	struct blocked_waiter w[4];
	pthread_t t[4];
	for (int k = 0; k < 4; k++) {
		w[k] = (struct blocked_waiter){ .kind = (enum waiter_kind)k, .fd = rx.fd, .ep = ep };
		int err = pthread_create(&t[k], NULL, blocked_wait, &w[k]);
		if (err)
			fail_errno(err, "pthread_create");
	}
	for (int k = 0; k < 4; k++)
		while (!atomic_load(&w[k].started))
			sched_yield();
	/* The threads get into their waits: a message sent before that is reported all the same. */
	poll(NULL, 0, 100);
	step("sender: SEND message 1; every blocked waiter wakes readable");
	uint64_t sent = now_ns();
	send_numbered(&tx, &rx, 1);
	for (int k = 0; k < 4; k++) {
		int err = pthread_join(t[k], NULL);
		if (err)
			fail_errno(err, "pthread_join");
		CHECK(w[k].got.readable && !w[k].got.hangup && !w[k].got.error,
		      "%s blocked before the SEND: readable %d hangup %d error %d", waiter_names[k], w[k].got.readable,
		      w[k].got.hangup, w[k].got.error);
		CHECK(w[k].woke_ns >= sent, "%s returned before the message was sent", waiter_names[k]);
	}
	expect_ready(&rx, ep, 1, "while message 1 is queued (level-triggered)");

	step("receiver: edge-triggered epoll reports the arrival once");
	CHECK(wait_ready(WAIT_EPOLL, rx.fd, ep_edge, 0).readable, "edge-triggered epoll missed message 1");
	CHECK(!wait_ready(WAIT_EPOLL, rx.fd, ep_edge, 0).readable, "edge-triggered epoll reported message 1 twice");

	step("sender: SEND message 2 while message 1 is unread");
	send_numbered(&tx, &rx, 2);
	step("receiver: RECV message 1; message 2 keeps the connection readable");
	recv_numbered(&rx, 1);
	expect_ready(&rx, ep, 1, "with message 2 still queued");
	recv_numbered(&rx, 2);
	expect_empty(&rx);
	expect_ready(&rx, ep, 0, "after both messages were received");

	step("receiver: EPOLL_CTL_MOD to EPOLLOUT and back; a second ADD fails with EEXIST");
	struct epoll_event got[2];
	ev.events = EPOLLOUT;
	TRY(epoll_ctl(ep, EPOLL_CTL_MOD, rx.fd, &ev));
	int n = epoll_wait(ep, got, 2, 0);
	CHECK(n == 1 && got[0].events == EPOLLOUT && got[0].data.u64 == EPOLL_TAG,
	      "after MOD to EPOLLOUT: %d events, the first %#x", n, n > 0 ? got[0].events : 0);
	ev.events = EPOLLIN;
	TRY(epoll_ctl(ep, EPOLL_CTL_MOD, rx.fd, &ev));
	EXPECT_ERRNO(EEXIST, epoll_ctl(ep, EPOLL_CTL_ADD, rx.fd, &ev));
	expect_ready(&rx, ep, 0, "after MOD back to EPOLLIN");

	step("receiver: EPOLL_CTL_DEL from the edge-triggered set; a second DEL fails with ENOENT");
	TRY(epoll_ctl(ep_edge, EPOLL_CTL_DEL, rx.fd, NULL));
	EXPECT_ERRNO(ENOENT, epoll_ctl(ep_edge, EPOLL_CTL_DEL, rx.fd, NULL));
	CHECK(epoll_targets(ep_edge, targets, 8) == 0, "the set still watches something after DEL");
	send_numbered(&tx, &rx, 3);
	CHECK(epoll_wait(ep_edge, got, 2, 0) == 0, "the set the connection left reported message 3");

	step("receiver: a forked child closes its copy of the descriptor; the set still reports message 3");
	pid_t child = fork();
	TRY(child);
	if (child == 0)
		_exit(close(rx.fd) == 0 ? 0 : 1);
	int status;
	TRY(waitpid(child, &status, 0));
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child could not close its copy");
	expect_ready(&rx, ep, 1, "after a forked child closed its copy");
	recv_numbered(&rx, 3);
	expect_ready(&rx, ep, 0, "after message 3 was received");
	ev.events = EPOLLIN | EPOLLET;
	TRY(epoll_ctl(ep_edge, EPOLL_CTL_ADD, rx.fd, &ev));

	step("receiver: BYEBYE on the empty queue");
	struct kd_cmd bye = { .size = sizeof bye };
	TRY(kd_ioctl(rx.fd, KD_CMD_BYEBYE, &bye));
	/*
	 * epoll sees the socket transport's descriptor (a unix socket) and a CUSE device's
	 * stand-in readable once the connection is gone, and the RECV that follows fails
	 * (docs/socket-protocol.md, Poll and READY). poll and ppoll report what kdbus did.
	 */
	for (int k = WAIT_EPOLL; k <= WAIT_PPOLL; k++) {
		step("receiver: %s reports the connection gone after BYEBYE", waiter_names[k]);
		struct readiness r = wait_ready(k, rx.fd, ep, 0);
		if (k == WAIT_SELECT || k == WAIT_PSELECT || k == WAIT_EPOLL)
			/* select counts POLLERR and POLLHUP as readable. */
			CHECK(r.readable, "%s after BYEBYE: not readable", waiter_names[k]);
		else
			CHECK(r.hangup && r.error && !r.readable && !r.writable,
			      "%s after BYEBYE: readable %d writable %d hangup %d error %d, expected POLLERR|POLLHUP alone",
			      waiter_names[k], r.readable, r.writable, r.hangup, r.error);
	}
	step("receiver: RECV and a second BYEBYE fail with ESHUTDOWN");
	struct kd_cmd_recv recv_cmd = { .size = sizeof recv_cmd };
	EXPECT_ERRNO(ESHUTDOWN, kd_ioctl(rx.fd, KD_CMD_RECV, &recv_cmd));
	EXPECT_ERRNO(ESHUTDOWN, kd_ioctl(rx.fd, KD_CMD_BYEBYE, &bye));

	conn_close(&rx);
	step("receiver: closing the connection took it out of both epoll sets");
	CHECK(epoll_targets(ep, targets, 8) == 0 && epoll_targets(ep_edge, targets, 8) == 0,
	      "an epoll set still watches something for the closed connection");
	TRY(close(ep_edge));
	TRY(close(ep));
	conn_close(&tx);
}

/* Large payloads as PAYLOAD_VECs: sd-bus sent bodies below 512 KiB (its MEMFD_MIN_SIZE)
 * inline, and kdbus took vectors up to 2 MiB in all (KDBUS_MSG_MAX_PAYLOAD_VEC_SIZE). Over
 * CUSE without process_vm, each is more than one FUSE ioctl round carries (128 KiB). */
static void send_large(struct conn *from, struct conn *to, size_t body_len)
{
	uint8_t *body = malloc(body_len);
	if (!body)
		fail("malloc(%zu)", body_len);
	uint32_t x = (uint32_t)body_len * 2654435761u;
	for (size_t i = 0; i < body_len; i++) {
		x = x * 1103515245u + 12345u;
		body[i] = (uint8_t)(x >> 16);
	}
	struct msg_builder b;
	mb_start(&b, to->id, 0, 0);
	mb_payload(&b, CALL_HDR, sizeof CALL_HDR, body, body_len);
	step("%s: SEND %zu bytes of body to %s", from->label, body_len, to->label);
	send_ok(from, &b);
	step("%s: RECV the %zu-byte message; every byte as sent", to->label, body_len);
	struct rmsg r;
	recv_ok(to, &r);
	CHECK(r.msg->src_id == from->id, "message from %llu, expected %llu",
	      (unsigned long long)r.msg->src_id, (unsigned long long)from->id);
	check_payload(&r, CALL_HDR, sizeof CALL_HDR, body, body_len);
	release_msg(to, &r);
	free(body);
}

static void scenario_large(const char *bus)
{
	struct conn a, b;
	conn_open(&a, bus, "sender", 0);
	conn_open(&b, bus, "receiver", 0);
	send_large(&a, &b, 512 * 1024 - 8);
	send_large(&a, &b, 2 * 1024 * 1024 - 24 - 3);

	step("sender: SEND 8 bytes more than 2 MiB of vectors: EMSGSIZE");
	static uint8_t over[2 * 1024 * 1024 - 16];
	struct msg_builder m;
	mb_start(&m, b.id, 0, 0);
	mb_payload(&m, CALL_HDR, sizeof CALL_HDR, over, sizeof over);
	struct kd_cmd_send cmd;
	EXPECT_ERRNO(EMSGSIZE, kd_send(&a, &m, 0, &cmd));
	step("receiver: nothing was queued");
	expect_empty(&b);
	conn_close(&b);
	conn_close(&a);
}

/* ---- driver ---------------------------------------------------------------------------- */

struct scenario {
	const char *name;
	void (*run)(const char *bus);
};

static const struct scenario scenarios[] = {
	{ "hello", scenario_hello },
	{ "name", scenario_name },
	{ "call", scenario_call },
	{ "signal", scenario_signal },
	{ "fds", scenario_fds },
	{ "notify", scenario_notify },
	{ "timeout", scenario_timeout },
	{ "dead", scenario_dead },
	{ "shared", scenario_shared },
	{ "readiness", scenario_readiness },
	{ "interrupt", scenario_interrupt },
	{ "large", scenario_large },
};
#define N_SCENARIOS (sizeof scenarios / sizeof scenarios[0])

static void run_one(const struct scenario *s, const char *bus)
{
	g_scenario = s->name;
	g_main_step = t_step;
	alarm(SCENARIO_WATCHDOG_S);
	s->run(bus);
	alarm(0);
	if (g_verbose)
		printf("[%s] ok\n", s->name);
}

/* Each scenario in its own child, so one failure does not hide the others. */
static int run_all(const char *bus)
{
	int failed = 0;
	for (size_t i = 0; i < N_SCENARIOS; i++) {
		fflush(stdout);
		pid_t pid = fork();
		TRY(pid);
		if (pid == 0) {
			run_one(&scenarios[i], bus);
			fflush(stdout);
			_exit(0);
		}
		int status;
		TRY(waitpid(pid, &status, 0));
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "kdbus-client: scenario %s failed (%s %d)\n", scenarios[i].name,
				WIFEXITED(status) ? "exit status" : "signal",
				WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
			failed++;
		}
	}
	return failed ? 1 : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: kdbus-client [-v] <scenario|all> <bus-node-path>\nscenarios:");
	for (size_t i = 0; i < N_SCENARIOS; i++)
		fprintf(stderr, " %s", scenarios[i].name);
	fprintf(stderr, "\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int arg = 1;
	if (arg < argc && strcmp(argv[arg], "-v") == 0) {
		g_verbose = 1;
		arg++;
	}
	if (argc - arg != 2)
		usage();
	const char *which = argv[arg], *bus = argv[arg + 1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, watchdog);

	if (strcmp(which, "all") == 0)
		return run_all(bus);
	for (size_t i = 0; i < N_SCENARIOS; i++) {
		if (strcmp(which, scenarios[i].name) == 0) {
			run_one(&scenarios[i], bus);
			return 0;
		}
	}
	fprintf(stderr, "kdbus-client: unknown scenario \"%s\"\n", which);
	usage();
}
