/*
 * A D-Bus peer on kdbus that talks the way sd-bus did (docs/reference/sdbus-kdbus-client.md
 * §1.2, §2.1-§2.5, §3), with nothing but libc: HELLO with ACCEPT_FD, a read-only pool,
 * version-2 GVariant messages, ":1.<id>" unique names, DST_NAME for well-known
 * destinations, EXPECT_REPLY with a deadline, synchronous calls, a bloom filter on every
 * signal, matches, NAME_ACQUIRE and LIST. It is the kdbus side of the legacy endpoint's
 * cross tests; the other side is a dbus1 client.
 *
 *   kdbus-dbus-peer [-v] BUS-NODE serve NAME
 *       own NAME, print "ready <unique name>", answer org.example.Peer calls on any path:
 *       Echo(s) -> s + "!", EchoFd(h) -> the descriptor's content, Fail(s) -> the error
 *       org.example.Peer.Error.Failed with s as message, Quit() -> () and exit, Digest(ay)
 *       -> "<length> <CRC-32 in hex>", Bytes(u n) -> big_pattern(n) (ay). Each call prints
 *       "call sender=<unique> member=<member> arg=<argument>" (for Digest "<N bytes, M in a
 *       memfd>").
 *   kdbus-dbus-peer [-v] BUS-NODE call DEST PATH IFACE MEMBER [STRING]
 *   kdbus-dbus-peer [-v] BUS-NODE call-fd DEST PATH IFACE MEMBER STRING
 *       a synchronous call, with STRING as argument or (call-fd) with the read end of a pipe
 *       that holds STRING; prints "reply sender=<unique> arg=<string>" or
 *       "error sender=<unique> name=<error name> message=<text>".
 *   kdbus-dbus-peer [-v] BUS-NODE call-big DEST PATH IFACE N
 *       Digest(ay) with big_pattern(N), then Bytes(u N), both synchronous; bodies of 512 KiB
 *       and more travel in a sealed memfd, as sd-bus sent them. Prints "big n=N sent=match
 *       received=match (M in a memfd)" (MISMATCH where the answer was not what was sent or
 *       asked for; M: the reply's payload parts that came in a memfd).
 *   kdbus-dbus-peer [-v] BUS-NODE emit PATH IFACE MEMBER STRING
 *       broadcast a signal with sd-bus's bloom filter.
 *   kdbus-dbus-peer [-v] BUS-NODE listen N [--sender NAME] [--bloom KEY:VALUE]...
 *       one match (no items: every broadcast; --sender: an ID or NAME item; --bloom: a mask of
 *       those sd-bus bloom keys), print "ready <unique name>", then the first N signals as
 *       "signal sender=<unique> path=<path> interface=<iface> member=<member> arg=<arg0>".
 *   kdbus-dbus-peer [-v] BUS-NODE names
 *       LIST unique ids and names: one line per connection (":1.<id>") and per owned name
 *       ("<name> :1.<id>").
 *   kdbus-dbus-peer [-v] BUS-NODE info NAME
 *       CONN_INFO of NAME's owner with CREDS and PIDS: "info id=:1.<id> uid=<uid> pid=<pid>"
 *       (-1 for an item the bus did not attach).
 *   kdbus-dbus-peer [-v] BUS-NODE hold NAME [queue|replace|allow-replacement]...
 *       NAME_ACQUIRE with those flags; prints "owner <unique name>", "queued <unique name>"
 *       or "refused EEXIST" (other errors: "refused <strerror>"), then keeps the connection
 *       until killed.
 *   kdbus-dbus-peer selftest
 *       the codecs against the reference's worked example and SipHash's test vectors.
 *
 * Exit status 0 on success; 1 with one line on stderr when a step fails (including a
 * message sd-bus would have refused: the line says which check), 2 when SEND fails (the
 * errno is named), 3 when the watchdog fires.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kdbus-abi.h"
#include "gvariant-message.h"
#include "sd-bloom.h"

/* kdbus numbers kdbus-abi.h does not carry (include/uapi/linux/kdbus.h). */
#define KD_ITEM_ID 14
#define KD_MSG_NO_AUTO_START (1ULL << 1)
#define KD_LIST_UNIQUE (1ULL << 0)

#define POOL_SIZE (16ULL * 1024 * 1024)
/* Below the watchdog, so a lost reply shows as ETIMEDOUT rather than as a hang. */
#define CALL_TIMEOUT_NS (20ULL * 1000 * 1000 * 1000)
#define WATCHDOG_S 30
#define SERVE_WATCHDOG_S 300
#define MAX_FDS 16
#define MAX_BODY 4000
/* sd-bus sent body parts of this size and more in a sealed memfd (MEMFD_MIN_SIZE). */
#define MEMFD_MIN_SIZE (512 * 1024)
#define MAX_BIG (64 * 1024 * 1024)

static const char *g_mode = "setup";
static int g_verbose;

/* ---- diagnostics ------------------------------------------------------------------------ */

__attribute__((format(printf, 2, 3), noreturn))
static void die_errno(int err, const char *fmt, ...)
{
	char detail[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	fflush(stdout);
	if (err)
		fprintf(stderr, "kdbus-dbus-peer: %s: %s: errno %d (%s)\n", g_mode, detail, err, strerror(err));
	else
		fprintf(stderr, "kdbus-dbus-peer: %s: %s\n", g_mode, detail);
	exit(1);
}

#define die(...) die_errno(0, __VA_ARGS__)
#define TRY(expr) do { if ((expr) < 0) die_errno(errno, "%s", #expr); } while (0)

__attribute__((format(printf, 1, 2)))
static void verbose(const char *fmt, ...)
{
	if (!g_verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "kdbus-dbus-peer: %s: ", g_mode);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void watchdog(int sig)
{
	static const char msg[] = "kdbus-dbus-peer: the watchdog fired: no result in time\n";
	(void)sig;
	if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0)
		_exit(3);
	_exit(3);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	TRY(clock_gettime(CLOCK_MONOTONIC, &ts));
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Cookies stay below 2^32, as sd-bus keeps them, so dbus1 peers can answer. */
static uint64_t next_cookie(void)
{
	static uint64_t cookie;
	return ++cookie;
}

/* musl declares ioctl's request as int, glibc as unsigned long. */
static int kd_ioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg);
}

static const struct kd_item *item_next(const struct kd_item *it)
{
	return (const struct kd_item *)((const uint8_t *)it + KD_ALIGN8(it->size));
}

static int item_ok(const struct kd_item *it, const void *end)
{
	if (it->size < KD_ITEM_HEADER || (const uint8_t *)it + it->size > (const uint8_t *)end)
		die("malformed item (type %#llx, size %llu)", (unsigned long long)it->type,
		    (unsigned long long)it->size);
	return 1;
}

#define FOR_ITEMS(it, start, end)                                                          \
	for (const struct kd_item *it = (const struct kd_item *)(start);                   \
	     (const uint8_t *)it < (const uint8_t *)(end) && item_ok(it, (end));          \
	     it = item_next(it))

static const char *unique_name(uint64_t id, char *buf, size_t len)
{
	if (id == KD_SRC_ID_KERNEL)
		return "org.freedesktop.DBus";
	snprintf(buf, len, ":1.%llu", (unsigned long long)id);
	return buf;
}

/* The id of ":1.<id>", or 0 for any other name (only this prefix is sd-bus's, §2.1). */
static uint64_t parse_unique_name(const char *name)
{
	if (strncmp(name, ":1.", 3) != 0)
		return 0;
	char *end;
	errno = 0;
	unsigned long long id = strtoull(name + 3, &end, 10);
	return errno || *end || end == name + 3 ? 0 : (uint64_t)id;
}

/* ---- the connection (§1.2) -------------------------------------------------------------- */

struct conn {
	int fd;
	uint64_t id;
	char name[32];
	const uint8_t *pool;
	size_t bloom_size;
	unsigned bloom_n_hash;
};

static void conn_open(struct conn *c, const char *bus)
{
	static const char description[] = "kdbus-dbus-peer";
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_hello) + KD_ITEM_HEADER + 32];
	struct kd_cmd_hello *h = (struct kd_cmd_hello *)buf;
	struct kd_item *desc = (struct kd_item *)(buf + sizeof *h);

	memset(c, 0, sizeof *c);
	c->fd = open(bus, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (c->fd < 0)
		die_errno(errno, "open %s", bus);
	memset(buf, 0, sizeof buf);
	desc->type = KD_ITEM_CONN_DESCRIPTION;
	desc->size = KD_ITEM_HEADER + sizeof description;
	memcpy(desc->data, description, sizeof description);
	h->size = sizeof *h + KD_ALIGN8(desc->size);
	h->flags = KD_HELLO_ACCEPT_FD;
	h->attach_flags_send = KD_ATTACH_ANY;
	h->attach_flags_recv = KD_ATTACH_NAMES;
	h->pool_size = POOL_SIZE;
	if (kd_ioctl(c->fd, KD_CMD_HELLO, h) < 0)
		die_errno(errno, "HELLO on %s", bus);
	if (h->bus_flags >> 32)
		die("bus_flags %#llx has incompatible-feature bits", (unsigned long long)h->bus_flags);
	c->id = h->id;
	unique_name(c->id, c->name, sizeof c->name);

	void *pool = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, c->fd, 0);
	if (pool == MAP_FAILED)
		die_errno(errno, "mmap of the 16 MiB pool");
	c->pool = pool;
	if (h->offset + h->items_size > POOL_SIZE)
		die("HELLO slice [%llu, +%llu) outside the pool", (unsigned long long)h->offset,
		    (unsigned long long)h->items_size);
	const uint8_t *items = c->pool + h->offset;
	FOR_ITEMS(it, items, items + h->items_size) {
		if (it->type != KD_ITEM_BLOOM_PARAMETER || it->size != KD_ITEM_HEADER + sizeof(struct kd_bloom_parameter))
			continue;
		const struct kd_bloom_parameter *bp = (const void *)it->data;
		c->bloom_size = (size_t)bp->size;
		c->bloom_n_hash = (unsigned)bp->n_hash;
	}
	/* bloom_validate_parameters: what the eight keys can index, and what this filter holds. */
	unsigned log2 = 0;
	while ((2ULL << log2) <= c->bloom_size * 8ULL)
		log2++;
	if (c->bloom_size == 0 || c->bloom_size > SD_BLOOM_MAX_BYTES || c->bloom_size % 8 ||
	    (c->bloom_size & (c->bloom_size - 1)) || c->bloom_n_hash == 0 || c->bloom_n_hash * ((log2 + 7) / 8) > 64)
		die("unusable BLOOM_PARAMETER: size %zu, n_hash %u", c->bloom_size, c->bloom_n_hash);
	struct kd_cmd_free f = { .size = sizeof f, .offset = h->offset };
	TRY(kd_ioctl(c->fd, KD_CMD_FREE, &f));
	verbose("connected as %s (bloom %zu bytes, %u hashes)", c->name, c->bloom_size, c->bloom_n_hash);
}

static void kd_free(const struct conn *c, uint64_t offset)
{
	struct kd_cmd_free f = { .size = sizeof f, .offset = offset };
	TRY(kd_ioctl(c->fd, KD_CMD_FREE, &f));
}

/* ---- sending (§2.1) -------------------------------------------------------------------- */

struct out {
	struct gv_msg gv;
	uint64_t dst_id;           /* KD_DST_ID_NAME with dst_name, KD_DST_ID_BROADCAST */
	const char *dst_name;
	uint64_t flags;            /* KD_MSG_* */
	uint64_t timeout_or_reply;
	const int *fds;
	unsigned n_fds;
	const struct sd_bloom *bloom;
};

/* n bytes that differ from one position to the next: byte i is i % 251. */
static uint8_t *big_pattern(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);
	if (!p)
		die("out of memory for %zu bytes", n);
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i % 251);
	return p;
}

/* CRC-32 as zlib computes it (reflected, polynomial 0xEDB88320). */
static uint32_t crc32_of(const uint8_t *p, size_t n)
{
	static uint32_t table[256];
	if (!table[1])
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
			table[i] = c;
		}
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < n; i++)
		c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

/* The body in a memfd of its own with all four seals, as kdbus requires of PAYLOAD_MEMFD. */
static int sealed_memfd(const uint8_t *p, size_t n)
{
	int fd = memfd_create("kdbus-dbus-peer-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		die_errno(errno, "memfd_create");
	for (size_t done = 0; done < n;) {
		ssize_t w = write(fd, p + done, n - done);
		if (w < 0)
			die_errno(errno, "write to the memfd");
		done += (size_t)w;
	}
	TRY(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL));
	return fd;
}

struct builder {
	_Alignas(8) uint8_t buf[1024 + SD_BLOOM_MAX_BYTES];
	size_t end;
};

static void *add_item(struct builder *b, uint64_t type, size_t payload)
{
	size_t at = KD_ALIGN8(b->end);
	if (at + KD_ITEM_HEADER + payload > sizeof b->buf)
		die("message items do not fit the builder");
	struct kd_item *it = (struct kd_item *)(b->buf + at);
	memset(it, 0, KD_ITEM_HEADER + payload);
	it->size = KD_ITEM_HEADER + payload;
	it->type = type;
	b->end = at + it->size;
	((struct kd_msg *)b->buf)->size = b->end;
	return it->data;
}

/* SEND with sd-bus's item order: DST_NAME, the header part, the body part, BLOOM_FILTER,
 * FDS. Returns the ioctl's result; cmd holds the reply's slice after a SYNC_REPLY call. */
static int send_msg(const struct conn *c, const struct out *o, uint64_t send_flags, struct kd_cmd_send *cmd)
{
	static _Alignas(8) uint8_t small[MAX_BODY + 512];
	static struct builder b;
	size_t cap = o->gv.arg_len > MAX_BODY ? o->gv.arg_len + 512 : sizeof small;
	uint8_t *payload = cap > sizeof small ? malloc(cap) : small;
	if (!payload)
		die("out of memory for a %zu-byte message", cap);
	size_t body;
	size_t len = gv_encode(&o->gv, payload, cap, &body);
	if (len == 0)
		die("the message does not fit %zu bytes", cap);
	/* The header part, an "ay" body of MEMFD_MIN_SIZE and more in a memfd, the footer. */
	int memfd = -1;
	size_t body_end = len;
	if (o->gv.arg_bytes && o->gv.arg_len >= MEMFD_MIN_SIZE && o->dst_id != KD_DST_ID_BROADCAST) {
		body_end = body + o->gv.arg_len;
		memfd = sealed_memfd(payload + body, o->gv.arg_len);
	}

	memset(&b, 0, sizeof b);
	struct kd_msg *m = (struct kd_msg *)b.buf;
	m->flags = o->flags;
	m->dst_id = o->dst_id;
	m->payload_type = KD_PAYLOAD_DBUS;
	m->cookie = o->gv.cookie;
	m->timeout_or_reply = o->timeout_or_reply;
	b.end = sizeof *m;
	m->size = b.end;
	if (o->dst_name)
		memcpy(add_item(&b, KD_ITEM_DST_NAME, strlen(o->dst_name) + 1), o->dst_name, strlen(o->dst_name) + 1);
	struct kd_vec *v = add_item(&b, KD_ITEM_PAYLOAD_VEC, sizeof *v);
	v->size = body;
	v->address_or_offset = (uintptr_t)payload;
	if (memfd >= 0) {
		struct kd_memfd *mf = add_item(&b, KD_ITEM_PAYLOAD_MEMFD, sizeof *mf);
		mf->start = 0;
		mf->size = o->gv.arg_len;
		mf->fd = memfd;
	}
	size_t tail = memfd >= 0 ? body_end : body;
	v = add_item(&b, KD_ITEM_PAYLOAD_VEC, sizeof *v);
	v->size = len - tail;
	v->address_or_offset = (uintptr_t)(payload + tail);
	if (o->bloom) {
		uint64_t *f = add_item(&b, KD_ITEM_BLOOM_FILTER, sizeof(uint64_t) + o->bloom->size);
		f[0] = 0;  /* generation */
		memcpy(f + 1, o->bloom->words, o->bloom->size);
	}
	if (o->n_fds)
		memcpy(add_item(&b, KD_ITEM_FDS, o->n_fds * sizeof(int)), o->fds, o->n_fds * sizeof(int));

	memset(cmd, 0, sizeof *cmd);
	cmd->size = sizeof *cmd;
	cmd->flags = send_flags;
	cmd->msg_address = (uintptr_t)b.buf;
	int r = kd_ioctl(c->fd, KD_CMD_SEND, cmd);
	int e = errno;
	if (memfd >= 0)
		close(memfd);
	if (payload != small)
		free(payload);
	errno = e;
	return r;
}

static void send_or_exit(const struct conn *c, const struct out *o, uint64_t send_flags, struct kd_cmd_send *cmd)
{
	if (send_msg(c, o, send_flags, cmd) == 0)
		return;
	int e = errno;
	fflush(stdout);
	fprintf(stderr, "kdbus-dbus-peer: %s: SEND to %s failed: errno %d (%s)\n", g_mode,
		o->dst_name ? o->dst_name : "an id", e, strerror(e));
	exit(2);
}

/* A reply or error to `call` (received from src_id), as sd-bus builds it: REPLY_SERIAL,
 * DESTINATION, NO_REPLY_EXPECTED; kdbus cookie_reply is the call's cookie. */
static struct out reply_out(uint64_t src_id, const struct gv_msg *call, char *dest, size_t dest_len)
{
	struct out o = { .dst_id = src_id, .timeout_or_reply = call->cookie };
	o.gv.type = GV_METHOD_RETURN;
	o.gv.flags = GV_NO_REPLY_EXPECTED;
	o.gv.cookie = next_cookie();
	o.gv.has_reply_cookie = 1;
	o.gv.reply_cookie = call->cookie;
	o.gv.destination = unique_name(src_id, dest, dest_len);
	return o;
}

static void reply(const struct conn *c, uint64_t src_id, const struct gv_msg *call, const char *error_name,
		  const char *text)
{
	char dest[32];
	struct out o = reply_out(src_id, call, dest, sizeof dest);
	if (error_name)
		o.gv.type = GV_ERROR;
	o.gv.error_name = error_name;
	if (text) {
		strcpy(o.gv.signature, "s");
		o.gv.arg_str = text;
	}
	struct kd_cmd_send cmd;
	send_or_exit(c, &o, 0, &cmd);
}

/* A method return to `call` with an "ay" body. */
static void reply_bytes(const struct conn *c, uint64_t src_id, const struct gv_msg *call, const uint8_t *p, size_t n)
{
	char dest[32];
	struct out o = reply_out(src_id, call, dest, sizeof dest);
	strcpy(o.gv.signature, "ay");
	o.gv.arg_bytes = p;
	o.gv.arg_len = n;
	struct kd_cmd_send cmd;
	send_or_exit(c, &o, 0, &cmd);
}

/* ---- receiving (§2.4) -------------------------------------------------------------------- */

struct in {
	const struct kd_msg *k;
	uint64_t offset;
	char sender[32];
	const char *dst_name;
	const struct kd_item *notify;
	int fds[MAX_FDS];
	unsigned n_fds;
	unsigned n_memfds;         /* payload parts that came in a memfd */
	uint8_t *payload;
	size_t payload_len;
	struct gv_msg gv;
};

static void in_release(const struct conn *c, struct in *r)
{
	for (unsigned i = 0; i < r->n_fds; i++)
		if (r->fds[i] >= 0)
			close(r->fds[i]);
	free(r->payload);
	kd_free(c, r->offset);
}

/*
 * The message slice at offset: items parsed, the payload gathered from its PAYLOAD_OFF
 * items (offset ~0 stands for zeroes) and decoded, and the header checked against the kdbus
 * message as sd-bus checks it. A message sd-bus would drop ends the program with the reason.
 */
static void parse_in(const struct conn *c, uint64_t offset, uint64_t slice, struct in *r)
{
	memset(r, 0, sizeof *r);
	if (offset % 8 || offset + slice > POOL_SIZE || slice < sizeof(struct kd_msg))
		die("message slice [%llu, +%llu) is not in the pool", (unsigned long long)offset,
		    (unsigned long long)slice);
	r->offset = offset;
	r->k = (const struct kd_msg *)(c->pool + offset);
	const uint8_t *base = (const uint8_t *)r->k;
	if (r->k->size < sizeof(struct kd_msg) || r->k->size > slice)
		die("kdbus_msg.size %llu outside [64, %llu]", (unsigned long long)r->k->size, (unsigned long long)slice);
	unique_name(r->k->src_id, r->sender, sizeof r->sender);

	size_t cap = 0;
	FOR_ITEMS(it, base + sizeof(struct kd_msg), base + r->k->size) {
		switch (it->type) {
		case KD_ITEM_PAYLOAD_OFF: {
			const struct kd_vec *v = (const void *)it->data;
			if (v->address_or_offset != KD_OFFSET_ZEROES &&
			    (v->address_or_offset > slice || v->size > slice - v->address_or_offset))
				die("PAYLOAD_OFF [%llu, +%llu) outside the %llu-byte slice",
				    (unsigned long long)v->address_or_offset, (unsigned long long)v->size,
				    (unsigned long long)slice);
			if (r->payload_len + v->size > cap) {
				cap = (r->payload_len + v->size) * 2;
				r->payload = realloc(r->payload, cap);
				if (!r->payload)
					die("out of memory");
			}
			if (v->address_or_offset == KD_OFFSET_ZEROES)
				memset(r->payload + r->payload_len, 0, v->size);
			else
				memcpy(r->payload + r->payload_len, base + v->address_or_offset, v->size);
			r->payload_len += v->size;
			break;
		}
		case KD_ITEM_PAYLOAD_MEMFD: {
			/* Installed into this process: ours to close, once its bytes are copied. */
			const struct kd_memfd *mf = (const void *)it->data;
			if (mf->fd < 0)
				die("a PAYLOAD_MEMFD item whose memfd was not installed");
			if (r->payload_len + mf->size > cap) {
				cap = (r->payload_len + mf->size) * 2;
				r->payload = realloc(r->payload, cap);
				if (!r->payload)
					die("out of memory");
			}
			if (mf->size > 0) {
				void *map = mmap(NULL, mf->size + mf->start, PROT_READ, MAP_SHARED, mf->fd, 0);
				if (map == MAP_FAILED)
					die_errno(errno, "mmap of a %llu-byte memfd part", (unsigned long long)mf->size);
				memcpy(r->payload + r->payload_len, (const uint8_t *)map + mf->start, mf->size);
				munmap(map, mf->size + mf->start);
			}
			close(mf->fd);
			r->payload_len += mf->size;
			r->n_memfds++;
			break;
		}
		case KD_ITEM_FDS: {
			size_t n = (it->size - KD_ITEM_HEADER) / sizeof(int);
			if (n > MAX_FDS)
				die("%zu descriptors in one message", n);
			memcpy(r->fds, it->data, n * sizeof(int));
			r->n_fds = (unsigned)n;
			break;
		}
		case KD_ITEM_DST_NAME:
			r->dst_name = (const char *)it->data;
			break;
		case KD_ITEM_NAME_ADD: case KD_ITEM_NAME_REMOVE: case KD_ITEM_NAME_CHANGE:
		case KD_ITEM_ID_ADD: case KD_ITEM_ID_REMOVE:
		case KD_ITEM_REPLY_TIMEOUT: case KD_ITEM_REPLY_DEAD:
			r->notify = it;
			break;
		default:
			break;
		}
	}
	if (r->k->payload_type == KD_PAYLOAD_KERNEL)
		return;
	if (r->k->payload_type != KD_PAYLOAD_DBUS)
		die("payload type %#llx from %s", (unsigned long long)r->k->payload_type, r->sender);

	char why[256];
	struct gv_msg *g = &r->gv;
	if (gv_decode(r->payload, r->payload_len, g, why, sizeof why) < 0)
		die("message from %s (cookie %llu, %zu payload bytes) is not a version-2 message: %s", r->sender,
		    (unsigned long long)r->k->cookie, r->payload_len, why);
	const char *what = g->member ? g->member : g->error_name ? g->error_name : "reply";
	if (g->cookie != r->k->cookie)
		die("%s from %s: header cookie %llu, kdbus cookie %llu", what, r->sender,
		    (unsigned long long)g->cookie, (unsigned long long)r->k->cookie);
	int no_reply = !!(g->flags & GV_NO_REPLY_EXPECTED), expect = !!(r->k->flags & KD_MSG_EXPECT_REPLY);
	if (no_reply == expect)
		die("%s from %s: header flags %#x disagree with kdbus flags %#llx on expecting a reply", what,
		    r->sender, g->flags, (unsigned long long)r->k->flags);
	if (!!(g->flags & GV_NO_AUTO_START) != !!(r->k->flags & KD_MSG_NO_AUTO_START))
		die("%s from %s: NO_AUTO_START differs between header and kdbus flags", what, r->sender);
	if (no_reply && (g->has_reply_cookie ? g->reply_cookie : 0) != r->k->timeout_or_reply)
		die("%s from %s: header reply cookie %llu, kdbus cookie_reply %llu", what, r->sender,
		    (unsigned long long)g->reply_cookie, (unsigned long long)r->k->timeout_or_reply);
	if ((g->has_unix_fds ? g->unix_fds : 0) != r->n_fds)
		die("%s from %s: header UNIX_FDS %u, %u descriptors received", what, r->sender, g->unix_fds, r->n_fds);
	if (g->type == GV_SIGNAL && !(r->k->flags & KD_MSG_SIGNAL))
		die("signal %s from %s without KDBUS_MSG_SIGNAL", what, r->sender);
}

/* Non-blocking RECV; 0, or -1 with errno EAGAIN when the queue is empty. */
static int recv_in(const struct conn *c, struct in *r)
{
	struct kd_cmd_recv cmd = { .size = sizeof cmd };
	if (kd_ioctl(c->fd, KD_CMD_RECV, &cmd) < 0) {
		if (errno != EAGAIN)
			die_errno(errno, "RECV");
		return -1;
	}
	parse_in(c, cmd.msg.offset, cmd.msg.msg_size, r);
	return 0;
}

/* Waits for and receives the next message. */
static void next_in(const struct conn *c, struct in *r)
{
	while (recv_in(c, r) < 0) {
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			die_errno(errno, "poll");
	}
}

/* ---- modes ------------------------------------------------------------------------------ */

static const char *arg_text(const struct gv_msg *g, char *buf, size_t len)
{
	if (g->arg_str)
		return g->arg_str;
	snprintf(buf, len, "<%s>", g->signature);
	return buf;
}

/* The whole content of fd, read to its end (a peer closes its write end first). */
static void read_all(int fd, char *out, size_t cap)
{
	size_t n = 0;
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int ready = poll(&p, 1, 5000);
		if (ready < 0)
			die_errno(errno, "poll on the received descriptor");
		if (ready == 0)
			die("the received descriptor gave no end of file within 5 s (%zu bytes so far)", n);
		ssize_t got = read(fd, out + n, cap - 1 - n);
		if (got < 0)
			die_errno(errno, "read of the received descriptor");
		if (got == 0 || n + (size_t)got == cap - 1) {
			n += (size_t)(got > 0 ? got : 0);
			break;
		}
		n += (size_t)got;
	}
	out[n] = '\0';
}

/* kdbus name flags kdbus-abi.h does not carry (include/uapi/linux/kdbus.h). */
#define KD_NAME_REPLACE_EXISTING (1ULL << 0)
#define KD_NAME_ALLOW_REPLACEMENT (1ULL << 1)

/* NAME_ACQUIRE with flags; returns the ioctl's result, the return flags in *ret. */
static int name_request(const struct conn *c, const char *name, uint64_t flags, uint64_t *ret)
{
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd) + KD_ITEM_HEADER + 256];
	struct kd_cmd *k = (struct kd_cmd *)buf;
	struct kd_item *it = (struct kd_item *)(buf + sizeof *k);
	if (strlen(name) > 255)
		die("name %s is too long", name);
	memset(buf, 0, sizeof buf);
	it->type = KD_ITEM_NAME;
	it->size = KD_ITEM_HEADER + strlen(name) + 1;
	memcpy(it->data, name, strlen(name) + 1);
	k->size = sizeof *k + KD_ALIGN8(it->size);
	k->flags = flags;
	int r = kd_ioctl(c->fd, KD_CMD_NAME_ACQUIRE, k);
	*ret = k->return_flags;
	return r;
}

/* Asks for NAME with the flags given, says what it got, then holds the connection until
 * killed (or the watchdog of serve fires). */
static int mode_hold(const char *bus, const char *name, int nflags, char **flag_args)
{
	struct conn c;
	uint64_t flags = 0, ret = 0;
	for (int i = 0; i < nflags; i++) {
		if (strcmp(flag_args[i], "queue") == 0)
			flags |= KD_NAME_QUEUE;
		else if (strcmp(flag_args[i], "replace") == 0)
			flags |= KD_NAME_REPLACE_EXISTING;
		else if (strcmp(flag_args[i], "allow-replacement") == 0)
			flags |= KD_NAME_ALLOW_REPLACEMENT;
		else
			die("unknown name flag %s", flag_args[i]);
	}
	conn_open(&c, bus);
	if (name_request(&c, name, flags, &ret) < 0)
		printf("refused %s\n", errno == EEXIST ? "EEXIST" : strerror(errno));
	else
		printf("%s %s\n", ret & KD_NAME_IN_QUEUE ? "queued" : "owner", c.name);
	for (;;)
		pause();
}

static void name_acquire(const struct conn *c, const char *name)
{
	uint64_t ret = 0;
	if (name_request(c, name, 0, &ret) < 0)
		die_errno(errno, "NAME_ACQUIRE %s", name);
	if (ret & KD_NAME_IN_QUEUE)
		die("NAME_ACQUIRE %s: queued instead of owning it", name);
}

static int mode_serve(const char *bus, const char *name)
{
	struct conn c;
	conn_open(&c, bus);
	name_acquire(&c, name);
	printf("ready %s\n", c.name);
	for (;;) {
		struct in r;
		char buf[MAX_BODY], shown[64];
		next_in(&c, &r);
		const struct gv_msg *g = &r.gv;
		if (r.k->payload_type == KD_PAYLOAD_KERNEL || g->type != GV_METHOD_CALL) {
			verbose("ignored a %s from %s", r.notify ? "notification" : "message", r.sender);
			in_release(&c, &r);
			continue;
		}
		int wants_reply = !!(r.k->flags & KD_MSG_EXPECT_REPLY);
		const char *member = g->member;
		int known_iface = !g->interface || strcmp(g->interface, "org.example.Peer") == 0;
		int quit = 0;
		if (known_iface && strcmp(member, "EchoFd") == 0 && strcmp(g->signature, "h") == 0) {
			if (g->arg_u32 >= r.n_fds) {
				printf("call sender=%s member=%s arg=<no descriptor %u>\n", r.sender, member, g->arg_u32);
				if (wants_reply)
					reply(&c, r.k->src_id, g, "org.example.Peer.Error.NoFd", "no such descriptor");
			} else {
				read_all(r.fds[g->arg_u32], buf, sizeof buf);
				printf("call sender=%s member=%s arg=%s\n", r.sender, member, buf);
				if (wants_reply)
					reply(&c, r.k->src_id, g, NULL, buf);
			}
		} else if (known_iface && strcmp(member, "Echo") == 0 && strcmp(g->signature, "s") == 0) {
			printf("call sender=%s member=%s arg=%s\n", r.sender, member, g->arg_str);
			snprintf(buf, sizeof buf, "%s!", g->arg_str);
			if (wants_reply)
				reply(&c, r.k->src_id, g, NULL, buf);
		} else if (known_iface && strcmp(member, "Fail") == 0 && strcmp(g->signature, "s") == 0) {
			printf("call sender=%s member=%s arg=%s\n", r.sender, member, g->arg_str);
			if (wants_reply)
				reply(&c, r.k->src_id, g, "org.example.Peer.Error.Failed", g->arg_str);
		} else if (known_iface && strcmp(member, "Digest") == 0 && strcmp(g->signature, "ay") == 0) {
			printf("call sender=%s member=%s arg=<%zu bytes, %u in a memfd>\n", r.sender, member, g->arg_len,
			       r.n_memfds);
			snprintf(buf, sizeof buf, "%zu %08x", g->arg_len, crc32_of(g->arg_bytes, g->arg_len));
			if (wants_reply)
				reply(&c, r.k->src_id, g, NULL, buf);
		} else if (known_iface && strcmp(member, "Bytes") == 0 && strcmp(g->signature, "u") == 0 &&
			   g->arg_u32 <= MAX_BIG) {
			printf("call sender=%s member=%s arg=%u\n", r.sender, member, g->arg_u32);
			uint8_t *p = big_pattern(g->arg_u32);
			if (wants_reply)
				reply_bytes(&c, r.k->src_id, g, p, g->arg_u32);
			free(p);
		} else if (known_iface && strcmp(member, "Quit") == 0) {
			printf("call sender=%s member=%s arg=%s\n", r.sender, member, arg_text(g, shown, sizeof shown));
			if (wants_reply)
				reply(&c, r.k->src_id, g, NULL, NULL);
			quit = 1;
		} else {
			printf("call sender=%s member=%s arg=%s\n", r.sender, member, arg_text(g, shown, sizeof shown));
			snprintf(buf, sizeof buf, "No method %s.%s with signature (%s)",
				 g->interface ? g->interface : "", member, g->signature);
			if (wants_reply)
				reply(&c, r.k->src_id, g, "org.freedesktop.DBus.Error.UnknownMethod", buf);
		}
		in_release(&c, &r);
		if (quit)
			return 0;
	}
}

/* A method call expecting a reply within CALL_TIMEOUT_NS, as sd-bus addressed it (§2.1). */
static struct out call_out(const char *dest, const char *path, const char *iface, const char *member)
{
	struct out o = { .flags = KD_MSG_EXPECT_REPLY, .timeout_or_reply = now_ns() + CALL_TIMEOUT_NS };
	o.dst_id = parse_unique_name(dest);
	if (o.dst_id == KD_DST_ID_NAME)
		o.dst_name = dest;
	o.gv.type = GV_METHOD_CALL;
	o.gv.cookie = next_cookie();
	o.gv.path = path;
	o.gv.interface = iface;
	o.gv.member = member;
	o.gv.destination = dest;
	return o;
}

static int mode_call(const char *bus, char **argv, int with_fd)
{
	const char *dest = argv[0], *text = argv[4];
	struct conn c;
	int pipefd[2] = { -1, -1 };
	conn_open(&c, bus);

	struct out o = call_out(dest, argv[1], argv[2], argv[3]);
	if (with_fd) {
		TRY(pipe2(pipefd, O_CLOEXEC));
		if (write(pipefd[1], text, strlen(text)) != (ssize_t)strlen(text))
			die_errno(errno, "write to the pipe");
		TRY(close(pipefd[1]));
		strcpy(o.gv.signature, "h");
		o.gv.arg_u32 = 0;
		o.gv.has_unix_fds = 1;
		o.gv.unix_fds = 1;
		o.fds = pipefd;
		o.n_fds = 1;
	} else if (text) {
		strcpy(o.gv.signature, "s");
		o.gv.arg_str = text;
	}

	struct kd_cmd_send cmd;
	send_or_exit(&c, &o, KD_SEND_SYNC_REPLY, &cmd);
	if (with_fd)
		TRY(close(pipefd[0]));
	struct in r;
	parse_in(&c, cmd.reply.offset, cmd.reply.msg_size, &r);
	const struct gv_msg *g = &r.gv;
	if (r.k->payload_type != KD_PAYLOAD_DBUS)
		die("the synchronous reply is a kernel notification (item %#llx)",
		    r.notify ? (unsigned long long)r.notify->type : 0ULL);
	if (r.k->timeout_or_reply != o.gv.cookie || !g->has_reply_cookie || g->reply_cookie != o.gv.cookie)
		die("the reply answers cookie %llu (kdbus %llu), the call had cookie %llu",
		    (unsigned long long)g->reply_cookie, (unsigned long long)r.k->timeout_or_reply,
		    (unsigned long long)o.gv.cookie);
	if (r.k->dst_id != c.id)
		die("the reply is addressed to %llu, this connection is %llu", (unsigned long long)r.k->dst_id,
		    (unsigned long long)c.id);
	char shown[64];
	if (g->type == GV_METHOD_RETURN)
		printf("reply sender=%s arg=%s\n", r.sender, arg_text(g, shown, sizeof shown));
	else if (g->type == GV_ERROR)
		printf("error sender=%s name=%s message=%s\n", r.sender, g->error_name, arg_text(g, shown, sizeof shown));
	else
		die("the reply is a message of type %u", g->type);
	in_release(&c, &r);
	return 0;
}

/* A synchronous call with an "ay" or "u" argument; the reply stays in r (in_release it). */
static void call_sync(const struct conn *c, char **target, const char *member, const char *sig,
		      const uint8_t *bytes, size_t n, uint32_t u, struct in *r)
{
	struct out o = call_out(target[0], target[1], target[2], member);
	strcpy(o.gv.signature, sig);
	o.gv.arg_bytes = bytes;
	o.gv.arg_len = n;
	o.gv.arg_u32 = u;
	struct kd_cmd_send cmd;
	send_or_exit(c, &o, KD_SEND_SYNC_REPLY, &cmd);
	parse_in(c, cmd.reply.offset, cmd.reply.msg_size, r);
	if (r->k->payload_type != KD_PAYLOAD_DBUS || r->gv.type != GV_METHOD_RETURN)
		die("%s was not answered with a method return (%s)", member,
		    r->gv.error_name ? r->gv.error_name : "a notification");
}

static int mode_call_big(const char *bus, char **argv)
{
	char *end;
	unsigned long n = strtoul(argv[3], &end, 10);
	if (*end || n > MAX_BIG)
		die("N must be a byte count up to %d, not %s", MAX_BIG, argv[3]);
	struct conn c;
	conn_open(&c, bus);
	uint8_t *data = big_pattern(n);
	char expected[64];
	snprintf(expected, sizeof expected, "%lu %08x", n, crc32_of(data, n));
	struct in r;
	call_sync(&c, argv, "Digest", "ay", data, n, 0, &r);
	int sent = r.gv.arg_str && strcmp(r.gv.arg_str, expected) == 0;
	if (!sent)
		fprintf(stderr, "kdbus-dbus-peer: Digest answered \"%s\", expected \"%s\"\n",
			r.gv.arg_str ? r.gv.arg_str : "", expected);
	in_release(&c, &r);
	call_sync(&c, argv, "Bytes", "u", NULL, 0, (uint32_t)n, &r);
	int received = r.gv.arg_len == n && (n == 0 || memcmp(r.gv.arg_bytes, data, n) == 0);
	unsigned memfds = r.n_memfds;
	in_release(&c, &r);
	printf("big n=%lu sent=%s received=%s (%u in a memfd)\n", n, sent ? "match" : "MISMATCH",
	       received ? "match" : "MISMATCH", memfds);
	free(data);
	return 0;
}

static int mode_emit(const char *bus, char **argv)
{
	struct conn c;
	struct sd_bloom bloom;
	conn_open(&c, bus);
	sd_bloom_init(&bloom, c.bloom_size, c.bloom_n_hash);
	sd_bloom_signal_filter(&bloom, argv[0], argv[1], argv[2], argv[3]);
	struct out o = { .dst_id = KD_DST_ID_BROADCAST, .flags = KD_MSG_SIGNAL, .bloom = &bloom };
	o.gv.type = GV_SIGNAL;
	o.gv.flags = GV_NO_REPLY_EXPECTED;
	o.gv.cookie = next_cookie();
	o.gv.path = argv[0];
	o.gv.interface = argv[1];
	o.gv.member = argv[2];
	strcpy(o.gv.signature, "s");
	o.gv.arg_str = argv[3];
	struct kd_cmd_send cmd;
	send_or_exit(&c, &o, 0, &cmd);
	printf("sent %s\n", c.name);
	return 0;
}

static int mode_listen(const char *bus, int argc, char **argv)
{
	struct conn c;
	long want = strtol(argv[0], NULL, 10);
	const char *sender = NULL;
	struct sd_bloom mask;
	int has_mask = 0;
	conn_open(&c, bus);
	sd_bloom_init(&mask, c.bloom_size, c.bloom_n_hash);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--sender") == 0 && i + 1 < argc) {
			sender = argv[++i];
		} else if (strcmp(argv[i], "--bloom") == 0 && i + 1 < argc) {
			const char *kv = argv[++i];
			sd_bloom_add_data(&mask, kv, strlen(kv));
			has_mask = 1;
		} else {
			die("unknown listen option %s", argv[i]);
		}
	}

	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_match) + 3 * KD_ITEM_HEADER + SD_BLOOM_MAX_BYTES + 264];
	memset(buf, 0, sizeof buf);
	struct kd_cmd_match *m = (struct kd_cmd_match *)buf;
	size_t end = sizeof *m;
	struct kd_item *it;
	if (has_mask) {
		it = (struct kd_item *)(buf + end);
		it->type = KD_ITEM_BLOOM_MASK;
		it->size = KD_ITEM_HEADER + mask.size;
		memcpy(it->data, mask.words, mask.size);
		end += KD_ALIGN8(it->size);
	}
	if (sender) {
		it = (struct kd_item *)(buf + end);
		uint64_t id = parse_unique_name(sender);
		if (id) {
			it->type = KD_ITEM_ID;
			it->size = KD_ITEM_HEADER + sizeof id;
			memcpy(it->data, &id, sizeof id);
		} else {
			if (strlen(sender) > 255)
				die("sender name %s is too long", sender);
			it->type = KD_ITEM_NAME;
			it->size = KD_ITEM_HEADER + strlen(sender) + 1;
			memcpy(it->data, sender, strlen(sender) + 1);
		}
		end += KD_ALIGN8(it->size);
	}
	m->size = end;
	m->cookie = 1;
	if (kd_ioctl(c.fd, KD_CMD_MATCH_ADD, m) < 0)
		die_errno(errno, "MATCH_ADD");
	printf("ready %s\n", c.name);

	for (long got = 0; got < want;) {
		struct in r;
		next_in(&c, &r);
		if (r.k->payload_type == KD_PAYLOAD_KERNEL) {
			verbose("notification item %#llx", r.notify ? (unsigned long long)r.notify->type : 0ULL);
		} else if (r.gv.type != GV_SIGNAL) {
			die("a listener got a message of type %u from %s", r.gv.type, r.sender);
		} else {
			char shown[64];
			printf("signal sender=%s path=%s interface=%s member=%s arg=%s\n", r.sender, r.gv.path,
			       r.gv.interface, r.gv.member, arg_text(&r.gv, shown, sizeof shown));
			got++;
		}
		in_release(&c, &r);
	}
	return 0;
}

static int mode_names(const char *bus)
{
	struct conn c;
	char id[32];
	conn_open(&c, bus);
	struct kd_cmd_list list = { .size = sizeof list, .flags = KD_LIST_UNIQUE | KD_LIST_NAMES };
	TRY(kd_ioctl(c.fd, KD_CMD_LIST, &list));
	if (list.offset + list.list_size > POOL_SIZE)
		die("LIST slice [%llu, +%llu) outside the pool", (unsigned long long)list.offset,
		    (unsigned long long)list.list_size);
	const uint8_t *rec = c.pool + list.offset, *end = rec + list.list_size;
	while (rec < end) {
		const struct kd_info *info = (const void *)rec;
		if (info->size < sizeof *info || rec + info->size > end)
			die("LIST record of size %llu", (unsigned long long)info->size);
		unique_name(info->id, id, sizeof id);
		printf("%s\n", id);
		FOR_ITEMS(it, rec + sizeof *info, rec + info->size) {
			if (it->type == KD_ITEM_OWNED_NAME)
				printf("%s %s\n", ((const struct kd_name *)it->data)->name, id);
		}
		rec += KD_ALIGN8(info->size);
	}
	kd_free(&c, list.offset);
	return 0;
}

/* CONN_INFO of a well-known name with CREDS and PIDS: who the bus says owns it. */
static int mode_info(const char *bus, const char *name)
{
	struct conn c;
	char id[32];
	conn_open(&c, bus);
	size_t len = strlen(name) + 1;
	_Alignas(8) uint8_t buf[sizeof(struct kd_cmd_info) + KD_ITEM_HEADER + 256] = { 0 };
	if (len > 256)
		die("name too long");
	struct kd_cmd_info *cmd = (struct kd_cmd_info *)buf;
	struct kd_item *it = (struct kd_item *)(buf + sizeof *cmd);
	it->size = KD_ITEM_HEADER + len;
	it->type = KD_ITEM_NAME;
	memcpy(it->data, name, len);
	cmd->size = sizeof *cmd + KD_ALIGN8(it->size);
	cmd->attach_flags = KD_ATTACH_CREDS | KD_ATTACH_PIDS;
	TRY(kd_ioctl(c.fd, KD_CMD_CONN_INFO, cmd));
	if (cmd->offset + cmd->info_size > POOL_SIZE)
		die("CONN_INFO slice outside the pool");
	const uint8_t *rec = c.pool + cmd->offset;
	const struct kd_info *info = (const void *)rec;
	unique_name(info->id, id, sizeof id);
	long long uid = -1, pid = -1;
	FOR_ITEMS(i, rec + sizeof *info, rec + info->size) {
		const uint64_t *v = (const uint64_t *)i->data;
		if (i->type == KD_ITEM_CREDS)
			uid = (long long)v[0];
		else if (i->type == KD_ITEM_PIDS)
			pid = (long long)v[0];
	}
	printf("info id=%s uid=%lld pid=%lld\n", id, uid, pid);
	kd_free(&c, cmd->offset);
	return 0;
}

/* The worked example of §3.1 (sd-bus v229: signal /a b.c D "x", cookie 2, 71 bytes) and the
 * SipHash-2-4 vectors of its paper (key 00..0f; messages "" and 00..0e). */
static int mode_selftest(void)
{
	static const uint8_t example[71] = {
		0x6c, 0x04, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
		0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2f, 0x61, 0x00, 0x00, 0x6f, 0x00, 0x00, 0x00,
		0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x62, 0x2e, 0x63, 0x00, 0x00, 0x73, 0x00, 0x00,
		0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x44, 0x00, 0x00, 0x73, 0x0d, 0x1e, 0x2c, 0x00,
		0x78, 0x00, 0x00, 0x28, 0x73, 0x29, 0x3f,
	};
	uint8_t out[256];
	size_t body;
	struct gv_msg m = { .type = GV_SIGNAL, .flags = GV_NO_REPLY_EXPECTED, .cookie = 2, .path = "/a",
			    .interface = "b.c", .member = "D", .signature = "s", .arg_str = "x" };
	size_t len = gv_encode(&m, out, sizeof out, &body);
	if (len != sizeof example || memcmp(out, example, len) != 0)
		die("the worked example encodes to %zu bytes that differ from the reference's 71", len);
	if (body != 64)
		die("the example's body starts at %zu, expected 64 (header part of 64 bytes)", body);
	struct gv_msg d;
	char why[256];
	if (gv_decode(example, sizeof example, &d, why, sizeof why) < 0)
		die("the worked example does not decode: %s", why);
	if (d.type != GV_SIGNAL || d.flags != GV_NO_REPLY_EXPECTED || d.cookie != 2 || strcmp(d.path, "/a") ||
	    strcmp(d.interface, "b.c") || strcmp(d.member, "D") || strcmp(d.signature, "s") || strcmp(d.arg_str, "x"))
		die("the worked example decodes to different fields");

	uint8_t key[16], msg[15];
	for (int i = 0; i < 16; i++)
		key[i] = (uint8_t)i;
	for (int i = 0; i < 15; i++)
		msg[i] = (uint8_t)i;
	if (sd_siphash24("", 0, key) != 0x726fdb47dd0e0e31ULL)
		die("SipHash-2-4 of the empty message is %#llx", (unsigned long long)sd_siphash24("", 0, key));
	if (sd_siphash24(msg, sizeof msg, key) != 0xa129ca6149be45e5ULL)
		die("SipHash-2-4 of 00..0e is %#llx", (unsigned long long)sd_siphash24(msg, sizeof msg, key));
	printf("selftest ok\n");
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: kdbus-dbus-peer [-v] BUS-NODE serve NAME\n"
		"       kdbus-dbus-peer [-v] BUS-NODE call DEST PATH IFACE MEMBER [STRING]\n"
		"       kdbus-dbus-peer [-v] BUS-NODE call-fd DEST PATH IFACE MEMBER STRING\n"
		"       kdbus-dbus-peer [-v] BUS-NODE call-big DEST PATH IFACE N\n"
		"       kdbus-dbus-peer [-v] BUS-NODE emit PATH IFACE MEMBER STRING\n"
		"       kdbus-dbus-peer [-v] BUS-NODE listen N [--sender NAME] [--bloom KEY:VALUE]...\n"
		"       kdbus-dbus-peer [-v] BUS-NODE names\n"
		"       kdbus-dbus-peer [-v] BUS-NODE info NAME\n"
		"       kdbus-dbus-peer [-v] BUS-NODE hold NAME [queue|replace|allow-replacement]...\n"
		"       kdbus-dbus-peer selftest\n");
	exit(1);
}

int main(int argc, char **argv)
{
	int a = 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, watchdog);
	signal(SIGPIPE, SIG_IGN);
	if (a < argc && strcmp(argv[a], "-v") == 0) {
		g_verbose = 1;
		a++;
	}
	if (a < argc && strcmp(argv[a], "selftest") == 0) {
		g_mode = "selftest";
		return mode_selftest();
	}
	if (argc - a < 2)
		usage();
	const char *bus = argv[a];
	g_mode = argv[a + 1];
	char **rest = argv + a + 2;
	int n = argc - a - 2;
	alarm(strcmp(g_mode, "serve") == 0 || strcmp(g_mode, "hold") == 0 ? SERVE_WATCHDOG_S : WATCHDOG_S);
	if (strcmp(g_mode, "serve") == 0 && n == 1)
		return mode_serve(bus, rest[0]);
	if (strcmp(g_mode, "call") == 0 && (n == 4 || n == 5)) {
		char *args[5] = { rest[0], rest[1], rest[2], rest[3], n == 5 ? rest[4] : NULL };
		return mode_call(bus, args, 0);
	}
	if (strcmp(g_mode, "call-fd") == 0 && n == 5)
		return mode_call(bus, rest, 1);
	if (strcmp(g_mode, "call-big") == 0 && n == 4)
		return mode_call_big(bus, rest);
	if (strcmp(g_mode, "emit") == 0 && n == 4)
		return mode_emit(bus, rest);
	if (strcmp(g_mode, "listen") == 0 && n >= 1)
		return mode_listen(bus, n, rest);
	if (strcmp(g_mode, "names") == 0 && n == 0)
		return mode_names(bus);
	if (strcmp(g_mode, "info") == 0 && n == 1)
		return mode_info(bus, rest[0]);
	if (strcmp(g_mode, "hold") == 0 && n >= 1)
		return mode_hold(bus, rest[0], n - 1, rest + 1);
	usage();
}
