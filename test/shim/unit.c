/*
 * Unit tests of the shim's pure parts, linked directly (no preloading, no daemon): path
 * handling, the frame codec against byte layouts written out from docs/socket-protocol.md,
 * the prefetch of SEND's memory and descriptors, the descriptor numbers a received
 * message names, and what a peek at the daemon's stream concludes.
 */
#include "check.h"

#include "../../shim/src/caller-memory.h"
#include "../../shim/src/frame.h"
#include "../../shim/src/holders.h"
#include "../../shim/src/kdbus-abi.h"
#include "../../shim/src/message-fds.h"
#include "../../shim/src/path.h"
#include "../../shim/src/prefetch.h"
#include "../../shim/src/sock-io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static void test_node_names(void)
{
	CHECK(kc_path_may_be_node("/dev/kdbus/control"), "control is a node name", "no");
	CHECK(kc_path_may_be_node("/dev/kdbus/0-system/bus"), "bus is a node name", "no");
	CHECK(kc_path_may_be_node("1000-user/1000-ep"), "a custom endpoint is a node name", "no");
	CHECK(kc_path_may_be_node("bus"), "a bare relative name is checked too", "no");
	CHECK(!kc_path_may_be_node("/dev/kdbus/0-system/bus/"), "a trailing slash is a directory", "yes");
	CHECK(!kc_path_may_be_node("/dev/kdbus/0-system/bus/."), "a trailing dot is a directory", "yes");
	CHECK(!kc_path_may_be_node("/dev/kdbus/0-system/bus/.."), "a trailing dot-dot is a directory", "yes");
	CHECK(!kc_path_may_be_node("/etc/busy"), "busy is no node", "yes");
	CHECK(!kc_path_may_be_node("/x/-ep"), "an endpoint needs a uid", "yes");
	CHECK(!kc_path_may_be_node("/x/123"), "an endpoint needs the dash", "yes");
	CHECK(!kc_path_may_be_node("/etc/passwd"), "an ordinary file is no node", "yes");
}

static void test_normalize(void)
{
	char out[64];
	struct {
		const char *in, *want;
	} cases[] = {
		{ "/dev//kdbus/./0-system/../0-system/bus", "/dev/kdbus/0-system/bus" },
		{ "/", "/" },
		{ "//", "/" },
		{ "/..", "/" },
		{ "/a/b/../../..", "/" },
		{ "/a/", "/a" },
		{ "/a/./b/.", "/a/b" },
		{ "/a/b/../c", "/a/c" },
		{ "/...", "/..." },
		{ "/a/..b", "/a/..b" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int n = kc_path_normalize(cases[i].in, out, sizeof out);
		char name[128];
		snprintf(name, sizeof name, "normalize %s", cases[i].in);
		CHECK(n == (int)strlen(cases[i].want) && strcmp(out, cases[i].want) == 0, name, "got %d \"%s\", want \"%s\"",
		      n, n >= 0 ? out : "", cases[i].want);
	}
	CHECK(kc_path_normalize("dev/kdbus", out, sizeof out) == -1, "normalize refuses a relative path", "accepted");
	char small[8];
	CHECK(kc_path_normalize("/abcdefgh", small, sizeof small) == -1, "normalize refuses what does not fit", "fit");
	CHECK(kc_path_normalize("/abcdef", small, sizeof small) == 7, "normalize uses the buffer to the last byte",
	      "did not fit");
}

static void test_join_and_below(void)
{
	char out[64];
	CHECK(kc_path_join("/run", "x/../bus", out, sizeof out) == 13 && strcmp(out, "/run/x/../bus") == 0,
	      "join puts one slash between", "got %s", out);
	CHECK(kc_path_join("/0123456789", "0123456789", out, 20) == -1, "join refuses what does not fit", "fit");
	const char *r = kc_path_below("/dev/kdbus/0-system/bus", "/dev/kdbus");
	CHECK(r && strcmp(r, "0-system/bus") == 0, "below gives the part after the root", "got %s", r ? r : "NULL");
	CHECK(kc_path_below("/dev/kdbusx/control", "/dev/kdbus") == NULL, "below needs a whole component", "matched");
	CHECK(kc_path_below("/dev/kdbus", "/dev/kdbus") == NULL, "the root itself is not below it", "matched");
	CHECK(kc_path_below("/dev/control", "/dev/kdbus") == NULL, "elsewhere is not below", "matched");
	r = kc_path_below("/control", "/");
	CHECK(r && strcmp(r, "control") == 0, "below the root directory /", "got %s", r ? r : "NULL");
}

static void test_header(void)
{
	uint8_t b[16];
	struct kc_header h;
	kc_header_encode(b, 24, KC_FRAME_RESULT, 0x1122334455667788ull);
	const uint8_t want[16] = { 24, 0, 0, 0, 5, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11 };
	CHECK(memcmp(b, want, 16) == 0, "header layout: u32 length, u32 type, u64 seq", "bytes differ");
	CHECK(kc_header_decode(b, &h) == 0 && h.length == 24 && h.type == 5 && h.seq == 0x1122334455667788ull,
	      "header decodes", "got %u %u %llx", h.length, h.type, (unsigned long long)h.seq);
	kc_header_encode(b, 8, KC_FRAME_WAKE, 0);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a frame shorter than its header is refused", "accepted");
	kc_header_encode(b, 20, KC_FRAME_WAKE, 0);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a length that is no multiple of 8 is refused", "accepted");
	kc_header_encode(b, KC_FRAME_MAX + 8, KC_FRAME_RESULT, 1);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a frame over 8 MiB is refused", "accepted");
	kc_header_encode(b, 16, KC_FRAME_IOCTL, 1);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "the daemon never sends IOCTL", "accepted");
	for (uint32_t t = KC_FRAME_FETCH; t <= KC_FRAME_HUP; t++) {
		if (t == KC_FRAME_MEM)
			continue;
		kc_header_encode(b, 16, t, 0);
		CHECK(kc_header_decode(b, &h) == 0, "daemon frame types 3, 5, 6, 7 are accepted", "type %u refused", t);
	}
	kc_header_encode(b, 40, KC_FRAME_HEAD, 3);
	CHECK(kc_header_decode(b, &h) == 0 && h.type == 14 && h.seq == 3, "HEAD (type 14, 40 bytes) is accepted", "refused");
	kc_header_encode(b, 32, KC_FRAME_HEAD, 3);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a HEAD of another length is refused", "accepted");
}

static void test_head_payload(void)
{
	uint8_t p[24];
	struct kc_head head;
	put64(p, 0x2000);
	put64(p + 8, 0x158);
	put64(p + 16, 1);
	CHECK(kc_head_decode(p, 24, &head) == 0 && head.offset == 0x2000 && head.size == 0x158 && head.last,
	      "HEAD payload: u64 offset, u64 msg_size, u64 flags (bit 0: the only message)", "got %llx %llx %d",
	      (unsigned long long)head.offset, (unsigned long long)head.size, head.last);
	put64(p + 16, 0);
	CHECK(kc_head_decode(p, 24, &head) == 0 && !head.last, "flags 0: more may be queued", "last");
	CHECK(kc_head_decode(p, 16, &head) == -EPROTO, "a short HEAD payload is refused", "accepted");
}

static void test_open_frame(void)
{
	uint8_t b[KC_OPEN_HEAD];
	kc_open_head_encode(b, 1, O_RDWR | O_CLOEXEC, 4242, 12, KC_OPEN_FEATURE_HEADS);
	CHECK(get32(b) == KC_OPEN_HEAD + 16 && get32(b + 4) == 1 && get64(b + 8) == 1,
	      "OPEN header: length counts the padded path", "length %u", get32(b));
	CHECK(get32(b + 16) == (uint32_t)(O_RDWR | O_CLOEXEC) && get32(b + 20) == 4242 && get32(b + 24) == 12 &&
		      get32(b + 28) == 1,
	      "OPEN payload: flags, tid, path length, features (bit 0: HEAD frames)", "fields differ");
}

static void test_ioctl_frame(void)
{
	int32_t fds[2] = { 5, -1 }, reserved[1] = { 9 };
	struct kc_ioctl_desc d = {
		.cmd = 0x40389590,
		.tid = 77,
		.arg = 0x1000,
		.n_segments = 2,
		.segments_bytes = 48,
		.fds = fds,
		.n_fds = 2,
		.reserved = reserved,
		.n_reserved = 1,
	};
	size_t head = kc_ioctl_head_size(2, 1);
	uint8_t b[128];
	memset(b, 0xaa, sizeof b);
	kc_ioctl_head_encode(b, 0x0102030405060708ull, &d);
	const uint8_t want[64] = {
		112, 0, 0, 0, 2, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1,           /* header: 64 + 48 bytes of segments */
		0x90, 0x95, 0x38, 0x40, 77, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, /* cmd, tid, arg */
		2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,             /* n_segments, n_fds, n_reserved, 0 */
		5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 9, 0, 0, 0, 0, 0, 0, 0,  /* fds, reserved, padding */
	};
	CHECK(head == 64 && memcmp(b, want, 64) == 0, "IOCTL head layout", "size %zu or bytes differ", head);
	CHECK(KC_IOCTL_FDS_OFF == 48, "the fd list starts after header and fixed part", "at %u", KC_IOCTL_FDS_OFF);
	CHECK(kc_ioctl_head_size(0, 0) == 48 && kc_ioctl_head_size(1, 0) == 56 && kc_ioctl_head_size(2, 0) == 56,
	      "fd lists pad to 8 bytes", "sizes differ");

	memset(b, 0xaa, sizeof b);
	kc_head_recv_encode(b, 77, 0x7ffd1000);
	const uint8_t want_recv[48] = {
		48, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                 /* IOCTL, seq 0: unanswered */
		0x91, 0x95, 0x40, 0x80, 77, 0, 0, 0, 0, 0x10, 0xfd, 0x7f, 0, 0, 0, 0, /* RECV, tid, arg */
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                  /* no segments, fds or numbers */
	};
	CHECK(KC_HEAD_RECV_FRAME == 48 && memcmp(b, want_recv, 48) == 0 && b[48] == 0xaa,
	      "a RECV answered from a HEAD: an IOCTL of RECV with seq 0 and nothing after its fixed part", "bytes differ");
}

static void test_segments(void)
{
	struct kc_buf b = { 0 };
	uint8_t *d = kc_segments_append(&b, 0x2000, 5);
	memcpy(d, "hello", 5);
	size_t mark = b.len;
	d = kc_segments_append(&b, 0x3000, 100);
	kc_buf_truncate(&b, mark);
	d = kc_segments_append(&b, 0x4000, 8);
	memcpy(d, "12345678", 8);
	const uint8_t want[] = {
		0, 0x20, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o', 0, 0, 0,
		0, 0x40, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, '1', '2', '3', '4', '5', '6', '7', '8',
	};
	CHECK(b.len == sizeof want && memcmp(b.data, want, sizeof want) == 0,
	      "segments: address, length, 0, data padded with zeros; truncate drops one", "len %zu", b.len);
	kc_buf_free(&b);
}

static void test_mem_and_pool(void)
{
	uint8_t b[KC_MEM_HEAD];
	kc_mem_head_encode(b, 7, EFAULT, 0);
	CHECK(get32(b) == 24 && get32(b + 4) == KC_FRAME_MEM && get64(b + 8) == 7 && (int32_t)get32(b + 16) == EFAULT &&
		      get32(b + 20) == 0,
	      "MEM with EFAULT and no data", "fields differ");
	kc_mem_head_encode(b, 7, 0, 13);
	CHECK(get32(b) == 24 + 16 && get32(b + 20) == 13, "MEM length counts the padded data", "length %u", get32(b));
	uint8_t p[16];
	kc_bare_encode(p, KC_FRAME_POOL, 9);
	CHECK(get32(p) == 16 && get32(p + 4) == KC_FRAME_POOL && get64(p + 8) == 9, "POOL is a bare header",
	      "fields differ");
	kc_bare_encode(p, KC_FRAME_CLOSE, 10);
	CHECK(get32(p) == 16 && get32(p + 4) == 9 && get64(p + 8) == 10, "CLOSE is a bare header of type 9",
	      "fields differ");
}

static void test_fetch_and_result(void)
{
	uint8_t f[16] = { 0 };
	put64(f, 0xdeadbeef000ull);
	f[8] = 40;
	uint64_t address;
	uint32_t length;
	CHECK(kc_fetch_decode(f, 16, &address, &length) == 0 && address == 0xdeadbeef000ull && length == 40,
	      "FETCH: address and length", "got %llx %u", (unsigned long long)address, length);
	CHECK(kc_fetch_decode(f, 8, &address, &length) == -EPROTO, "a short FETCH is refused", "accepted");

	uint8_t r[16 + 24 + 24] = { 0 };
	r[0] = 0;      /* errno */
	r[4] = 2;      /* n_writes */
	r[8] = 3;      /* n_fds */
	r[12] = 1;     /* flags: pool */
	put64(r + 16, 0x5000);
	r[24] = 8;
	put64(r + 32, 0x0102030405060708ull);
	put64(r + 40, 0x6000);
	r[48] = 1;
	r[56] = 0x7f;
	struct kc_result res;
	CHECK(kc_result_decode(r, sizeof r, &res) == 0 && res.n_writes == 2 && res.n_fds == 3 && res.flags == 1,
	      "RESULT fixed part", "decode failed");
	size_t pos = 0;
	const uint8_t *data;
	int n = 0;
	bool ok = true;
	while (kc_result_next_write(&res, &pos, &address, &data, &length)) {
		if (n == 0)
			ok &= address == 0x5000 && length == 8 && get64(data) == 0x0102030405060708ull;
		if (n == 1)
			ok &= address == 0x6000 && length == 1 && data[0] == 0x7f;
		n++;
	}
	CHECK(ok && n == 2, "RESULT writes step over their padding", "n=%d", n);
	CHECK(kc_result_decode(r, sizeof r - 8, &res) == -EPROTO, "a write running past the frame is refused",
	      "accepted");
	r[0] = EACCES;
	r[4] = 0;
	CHECK(kc_result_decode(r, 16, &res) == 0 && res.err == EACCES, "RESULT errno", "got %d", res.err);
}

/* A page that cannot be read, for addresses the prefetch must skip. */
static uint64_t unreadable_page(void)
{
	void *p = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return (uint64_t)(uintptr_t)p;
}

/* Finds the segment for address in p; its length through *len. */
static const uint8_t *segment_at(const struct kc_prefetch *p, uint64_t address, uint32_t *len)
{
	size_t at = 0;
	for (uint32_t i = 0; i < p->n_segments && at < p->segments.len; i++) {
		uint32_t l = get32(p->segments.data + at + 8);
		if (get64(p->segments.data + at) == address) {
			*len = l;
			return p->segments.data + at + 16;
		}
		at += 16 + ((l + 7) & ~7u);
	}
	return NULL;
}

static size_t add_item(uint8_t *at, uint64_t type, const void *payload, size_t len)
{
	put64(at, 16 + len);
	put64(at + 8, type);
	memcpy(at + 16, payload, len);
	return (16 + len + 7) & ~(size_t)7;
}

static void test_prefetch_send(void)
{
	static uint64_t cmd_words[64], msg_words[64];
	uint8_t *cmd = (uint8_t *)cmd_words, *msg = (uint8_t *)msg_words;
	static char hello[] = "hello, kdbus";
	int pipe_fds[2];
	if (pipe(pipe_fds) < 0)
		return;
	int memfd = memfd_create("t", 0);
	int cancel = dup(pipe_fds[1]);
	uint64_t bad = unreadable_page();

	size_t m = KDBUS_MSG_ITEMS_OFF;
	uint64_t vec[2] = { sizeof hello, (uint64_t)(uintptr_t)hello };
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, vec, 16);
	uint64_t pad_vec[2] = { 64, 0 };
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, pad_vec, 16);
	uint64_t bad_vec[2] = { 32, bad };
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, bad_vec, 16);
	int32_t fd_list[3] = { pipe_fds[0], 999, pipe_fds[0] };
	m += add_item(msg + m, KDBUS_ITEM_FDS, fd_list, sizeof fd_list);
	uint8_t memfd_item[24] = { 0 };
	put64(memfd_item + 8, 1);
	memcpy(memfd_item + 16, &memfd, 4);
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_MEMFD, memfd_item, 24);
	put64(msg, m);

	size_t c = KDBUS_SEND_ITEMS_OFF;
	c += add_item(cmd + c, KDBUS_ITEM_CANCEL_FD, &cancel, 4) - 4; /* size 20: the walk must not need the padding */
	put64(cmd, c);
	put64(cmd + KDBUS_CMD_FLAGS_OFF, KDBUS_SEND_SYNC_REPLY);
	put64(cmd + KDBUS_SEND_MSG_ADDRESS_OFF, (uint64_t)(uintptr_t)msg);

	struct kc_prefetch p;
	int rc = kc_prefetch_build(&p, KDBUS_CMD_SEND, (uint64_t)(uintptr_t)cmd);
	uint32_t len = 0;
	const uint8_t *seg;
	CHECK(rc == 0 && p.n_segments == 3, "SEND: command, message and one readable vector", "rc %d, %u segments",
	      rc, p.n_segments);
	seg = segment_at(&p, (uint64_t)(uintptr_t)cmd, &len);
	CHECK(seg && len == c && memcmp(seg, cmd, c) == 0, "SEND: the command's size bytes", "len %u", len);
	seg = segment_at(&p, (uint64_t)(uintptr_t)msg, &len);
	CHECK(seg && len == m && memcmp(seg, msg, m) == 0, "SEND: the message's size bytes", "len %u", len);
	seg = segment_at(&p, (uint64_t)(uintptr_t)hello, &len);
	CHECK(seg && len == sizeof hello && memcmp(seg, hello, len) == 0, "SEND: the vector's data", "len %u", len);
	CHECK(!segment_at(&p, bad, &len), "SEND: an unreadable vector is left for FETCH", "sent");
	CHECK(p.n_fds == 4 && p.fds[0] == pipe_fds[0] && p.fds[1] == -1 && p.fds[2] == memfd && p.fds[3] == cancel,
	      "SEND: FDS, MEMFD and CANCEL_FD numbers, each once, -1 for a closed one", "n=%u [%d %d %d %d]", p.n_fds,
	      p.fds[0], p.fds[1], p.fds[2], p.fds[3]);
	CHECK(p.have_flags && p.flags == KDBUS_SEND_SYNC_REPLY, "SEND: the command's flags are known", "not");
	kc_prefetch_free(&p);

	/* The vector budget: kdbus refused more than 2 MiB of vectors, so no more is read. */
	size_t big = KDBUS_MSG_MAX_PAYLOAD_VEC_SIZE;
	uint8_t *blob = malloc(big + 1);
	memset(blob, 1, big + 1);
	m = KDBUS_MSG_ITEMS_OFF;
	uint64_t v1[2] = { big - 10, (uint64_t)(uintptr_t)blob };
	uint64_t v2[2] = { 11, (uint64_t)(uintptr_t)blob };
	uint64_t v3[2] = { 10, (uint64_t)(uintptr_t)blob };
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, v1, 16);
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, v2, 16);
	m += add_item(msg + m, KDBUS_ITEM_PAYLOAD_VEC, v3, 16);
	put64(msg, m);
	rc = kc_prefetch_build(&p, KDBUS_CMD_SEND, (uint64_t)(uintptr_t)cmd);
	CHECK(rc == 0 && p.n_segments == 4, "SEND: vectors are read up to 2 MiB in total", "%u segments", p.n_segments);
	kc_prefetch_free(&p);
	free(blob);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	close(memfd);
	close(cancel);
}

static void test_prefetch_struct_bounds(void)
{
	/* A struct whose size runs into an unreadable page: only the size word is sent. */
	uint8_t *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	mprotect(two + 4096, 4096, PROT_NONE);
	uint8_t *s = two + 4096 - 64;
	put64(s, 128);
	struct kc_prefetch p;
	uint32_t len = 0;
	int rc = kc_prefetch_build(&p, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)s);
	const uint8_t *seg = segment_at(&p, (uint64_t)(uintptr_t)s, &len);
	CHECK(rc == 0 && p.n_segments == 1 && seg && len == 8 && get64(seg) == 128 && !p.have_flags,
	      "a struct running into unreadable memory: just its size", "rc %d len %u", rc, len);
	kc_prefetch_free(&p);

	rc = kc_prefetch_build(&p, KDBUS_CMD_RECV, unreadable_page());
	CHECK(rc == 0 && p.n_segments == 0, "an unreadable struct: nothing", "%u segments", p.n_segments);
	kc_prefetch_free(&p);

	static uint64_t huge[8192];
	huge[0] = 1 << 20;
	rc = kc_prefetch_build(&p, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)huge);
	seg = segment_at(&p, (uint64_t)(uintptr_t)huge, &len);
	CHECK(rc == 0 && seg && len == KDBUS_CMD_MAX_SIZE, "an oversized struct: its first 32 KiB", "len %u", len);
	kc_prefetch_free(&p);

	static uint64_t tiny[1] = { 3 };
	rc = kc_prefetch_build(&p, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)tiny);
	seg = segment_at(&p, (uint64_t)(uintptr_t)tiny, &len);
	CHECK(rc == 0 && seg && len == 8, "a struct claiming fewer than 8 bytes: its size word", "len %u", len);
	kc_prefetch_free(&p);
	munmap(two, 8192);
}

static void test_caller_memory(void)
{
	uint64_t v = 0x1234, out = 0;
	CHECK(kc_caller_read(&out, (uint64_t)(uintptr_t)&v, 8) == 0 && out == 0x1234, "reading own memory", "failed");
	CHECK(kc_caller_read(&out, unreadable_page(), 8) == -EFAULT, "reading a bad address is EFAULT", "no");
	void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(kc_caller_write((uint64_t)(uintptr_t)ro, &v, 8) == -EFAULT, "writing read-only memory is EFAULT", "no");
	CHECK(kc_caller_write((uint64_t)(uintptr_t)&out, &v, 8) == 0, "writing own memory", "failed");
}

static void test_holders(void)
{
	static struct kc_holders h;
	pid_t self = getpid(), parent = getppid();
	kc_holders_init(&h, self);
	CHECK(kc_holders_add(&h, self, 2) == 3, "a process's references add up", "no");
	CHECK(kc_holders_add(&h, parent, 1) == 1, "another process gets its own count", "no");
	CHECK(kc_holders_add(&h, self, -3) == 0 && !kc_holders_last(&h),
	      "not the last holder while another live process holds one", "was last");
	CHECK(kc_holders_add(&h, parent, -1) == 0 && kc_holders_last(&h), "the last holder releases", "was not");
	CHECK(!kc_holders_last(&h), "and only once", "released twice");

	static struct kc_holders h2;
	kc_holders_init(&h2, self);
	pid_t child = fork();
	if (child == 0)
		_exit(0);
	waitpid(child, NULL, 0);
	kc_holders_add(&h2, child, 4);
	CHECK(kc_holders_add(&h2, self, -1) == 0 && kc_holders_last(&h2),
	      "a process that exited holding references does not count", "it did");
}

static void test_side_frames(void)
{
	static const uint8_t token[16] = { 't', 'o', 'k', 'e', 'n', 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xff };
	const int numbers[3] = { 7, 31, 1000 };
	uint8_t b[KC_NUMBERS_FRAME_MAX(3)];
	memset(b, 0xaa, sizeof b);
	size_t len = kc_attach_encode(b, 1, token, numbers, 3, KC_OPEN_FEATURE_HEADS);
	const uint8_t want[56] = {
		56, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,                      /* ATTACH, seq 1 */
		't', 'o', 'k', 'e', 'n', 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xff,            /* token */
		3, 0, 0, 0, 1, 0, 0, 0,                                                 /* count, features */
		7, 0, 0, 0, 31, 0, 0, 0, 0xe8, 3, 0, 0, 0, 0, 0, 0,                     /* numbers, padding */
	};
	CHECK(len == 56 && memcmp(b, want, 56) == 0, "ATTACH layout: token, then the number list (features in its second word) padded",
	      "length %zu or bytes differ", len);
	len = kc_reserve_encode(b, 0, numbers, 2, 0);
	const uint8_t want_reserve[32] = {
		32, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 31, 0, 0, 0,
	};
	CHECK(len == 32 && memcmp(b, want_reserve, 32) == 0, "RESERVE layout: a number list", "length %zu or bytes differ",
	      len);
	len = kc_reserve_encode(b, 0, numbers, 2, KC_RESERVE_TRANSIENT);
	CHECK(len == 32 && b[20] == 1 && memcmp(b, want_reserve, 20) == 0 && memcmp(b + 21, want_reserve + 21, 11) == 0,
	      "a transient RESERVE says so in the word after the count", "length %zu or bytes differ", len);
	CHECK(kc_numbers_size(0) == 8 && kc_numbers_size(1) == 16 && kc_numbers_size(2) == 16,
	      "number lists pad to 8 bytes", "sizes differ");

	/* As the daemon encodes it: count, 0, the numbers of the descriptors it sends. */
	const uint8_t install[16] = { 2, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f };
	int got[4] = { 0 };
	uint32_t count = 0;
	CHECK(kc_install_decode(install, sizeof install, got, 4, &count) == 0 && count == 2 && got[0] == 12 &&
		      got[1] == 0x7fffffff,
	      "INSTALL payload decodes", "count %u: %d %d", count, got[0], got[1]);
	const uint8_t trailing[24] = { 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
	CHECK(kc_install_decode(trailing, sizeof trailing, got, 4, &count) == 0 && count == 1 && got[0] == 5,
	      "INSTALL: words after the counted numbers are ignored", "count %u", count);
	CHECK(kc_install_decode(install, 12, got, 4, &count) == -EPROTO, "INSTALL whose numbers run past it is refused",
	      "accepted");
	CHECK(kc_install_decode(install, sizeof install, got, 1, &count) == -EPROTO,
	      "INSTALL with more numbers than can be taken is refused", "accepted");
	CHECK(kc_install_decode(install, 4, got, 4, &count) == -EPROTO, "INSTALL shorter than its count is refused",
	      "accepted");

	struct kc_header h;
	kc_header_encode(b, 24, KC_FRAME_INSTALL, 0);
	CHECK(kc_side_header_decode(b, &h) == 0 && h.type == 12, "a side channel takes INSTALL (type 12)", "refused");
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a connection's socket refuses INSTALL", "accepted");
	kc_header_encode(b, 32, KC_FRAME_RESULT, 1);
	CHECK(kc_side_header_decode(b, &h) == 0, "a side channel takes RESULT", "refused");
	for (uint32_t t = 6; t <= 13; t += 1) {
		kc_header_encode(b, 16, t, 0);
		bool taken = t == 6 || t == 7 || t == 12 || t == 13;
		CHECK((kc_side_header_decode(b, &h) == 0) == taken,
		      "a side channel takes WAKE (6), HUP (7), INSTALL (12) and EMPTY (13), not POOL to RESERVE",
		      "type %u", t);
	}
	kc_header_encode(b, 16, KC_FRAME_EMPTY, 0);
	CHECK(kc_header_decode(b, &h) == -EPROTO, "a connection's socket refuses EMPTY", "accepted");
	for (uint32_t t = 3; t <= 4; t++) {
		kc_header_encode(b, 16, t, 0);
		CHECK(kc_side_header_decode(b, &h) == -EPROTO, "a side channel refuses FETCH and MEM", "type %u accepted",
		      t);
	}
	kc_header_encode(b, 20, KC_FRAME_INSTALL, 0);
	CHECK(kc_side_header_decode(b, &h) == -EPROTO, "a side-channel length that is no multiple of 8 is refused",
	      "accepted");
}

/* Appends a kdbus_item to the message at *at; returns where it starts. */
static size_t put_item(uint8_t *m, size_t *at, uint64_t size, uint64_t type, const void *payload, size_t len)
{
	size_t start = *at;
	put64(m + start, size);
	put64(m + start + 8, type);
	memcpy(m + start + 16, payload, len);
	*at = start + ((size + 7) & ~(uint64_t)7);
	return start;
}

static void set_msg_size(uint8_t *m, uint64_t size)
{
	put64(m, size);
}

static void test_message_fds(void)
{
	uint8_t m[512];
	int out[16];
	memset(m, 0, sizeof m);
	size_t at = 64;
	const int fds[3] = { 40, -1, 41 };
	uint64_t vec[2] = { 5, 0 };
	uint64_t memfd[3] = { 0, 19, 0 };
	int memfd_fd = 42;
	memcpy((uint8_t *)memfd + 16, &memfd_fd, 4);
	put_item(m, &at, 16 + 16, KDBUS_ITEM_PAYLOAD_VEC, vec, 16);
	put_item(m, &at, 16 + 12, KDBUS_ITEM_FDS, fds, 12); /* 28 bytes: the next item starts at 32 */
	put_item(m, &at, 16 + 24, KDBUS_ITEM_PAYLOAD_MEMFD, memfd, 24);
	set_msg_size(m, at);
	unsigned n = kc_message_fds(m, sizeof m, out, 16);
	CHECK(n == 3 && out[0] == 40 && out[1] == 41 && out[2] == 42,
	      "a message names its FDS ints and its memfd's fd, not -1", "%u: %d %d %d", n, out[0], out[1], out[2]);
	CHECK(kc_message_fds(m, sizeof m, out, 2) == 2, "no more numbers than there is room for", "more");

	set_msg_size(m, 64 + 32 + 16);
	n = kc_message_fds(m, sizeof m, out, 16);
	CHECK(n == 0, "an item running past the message's size ends the scan", "%u found", n);
	set_msg_size(m, at);
	n = kc_message_fds(m, 64 + 32 + 32, out, 16);
	CHECK(n == 2 && out[0] == 40 && out[1] == 41, "so does the end of what was read; earlier items count", "%u found",
	      n);

	memset(m, 0, sizeof m);
	at = 64;
	put_item(m, &at, 16 + 4, KDBUS_ITEM_FDS, &fds[0], 4);
	size_t broken = put_item(m, &at, 8, KDBUS_ITEM_FDS, &fds[2], 0);
	put_item(m, &at, 16 + 4, KDBUS_ITEM_FDS, &fds[2], 4);
	set_msg_size(m, at);
	n = kc_message_fds(m, sizeof m, out, 16);
	CHECK(n == 1 && out[0] == 40 && broken == 88, "an item smaller than its header ends the scan", "%u found", n);

	memset(m, 0, sizeof m);
	at = 64;
	put_item(m, &at, 16 + 16, KDBUS_ITEM_PAYLOAD_MEMFD, memfd, 16);
	set_msg_size(m, at);
	CHECK(kc_message_fds(m, sizeof m, out, 16) == 0, "a memfd item too short to hold its fd names nothing", "found");
	CHECK(kc_message_fds(m, 63, out, 16) == 0, "less than a message header names nothing", "found");
}

static void test_ioctl_numbers(void)
{
	/* The values on x86 and most architectures (docs/reference/kdbus-abi.md §2.3). */
#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || defined(__arm__) || defined(__riscv)
	CHECK(KDBUS_CMD_SEND == 0x40389590u && KDBUS_CMD_RECV == 0x80409591u, "SEND and RECV ioctl numbers",
	      "%x %x", KDBUS_CMD_SEND, KDBUS_CMD_RECV);
#endif
	CHECK(KDBUS_IOCTL_TYPE(0xC0609580u) == KDBUS_IOCTL_MAGIC, "the type byte of HELLO is kdbus's", "no");
#if defined(__x86_64__) || defined(__i386__) || defined(__aarch64__) || defined(__arm__) || defined(__riscv)
	/* docs/socket-protocol.md, CUSE clients: _IOWR(0x95, 0xF0, 24). */
	CHECK(KDBUS_CUSE_CMD_ATTACH == 0xC01895F0u, "the private ATTACH ioctl number", "%x", KDBUS_CUSE_CMD_ATTACH);
#endif
}

/* Writes `n` event frames of `types` (WAKE, HEAD or HUP) to fd; then, partial, that many bytes of a HEAD. */
static void write_events(int fd, const uint32_t *types, int n, size_t partial)
{
	uint8_t b[KC_HEAD_FRAME];
	for (int i = 0; i < n; i++) {
		size_t len = types[i] == KC_FRAME_HEAD ? KC_HEAD_FRAME : KC_FRAME_HEADER;
		memset(b, 0, sizeof b);
		kc_header_encode(b, (uint32_t)len, types[i], 0);
		if (write(fd, b, len) != (ssize_t)len)
			return;
	}
	if (partial) {
		kc_header_encode(b, KC_HEAD_FRAME, KC_FRAME_HEAD, 0);
		if (write(fd, b, partial) != (ssize_t)partial)
			return;
	}
}

/* What kc_only_wake_queued says of a stream holding exactly these frames. */
static bool only_wakes(const uint32_t *types, int n, size_t partial)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return false;
	write_events(sv[1], types, n, partial);
	bool only = kc_only_wake_queued(sv[0]);
	close(sv[0]);
	close(sv[1]);
	return only;
}

static void test_only_wakes(void)
{
	const uint32_t W = KC_FRAME_WAKE, H = KC_FRAME_HEAD, U = KC_FRAME_HUP;
	CHECK(only_wakes(NULL, 0, 0), "an empty stream holds only events", "no");
	CHECK(only_wakes((const uint32_t[]){ W }, 1, 0) && only_wakes((const uint32_t[]){ H }, 1, 0),
	      "a WAKE, or a HEAD, alone", "no");
	CHECK(only_wakes((const uint32_t[]){ H, H }, 2, 0) && only_wakes((const uint32_t[]){ W, H, H, W }, 4, 0),
	      "a HEAD left in place with the next behind it, and WAKEs among HEADs", "no");
	CHECK(!only_wakes((const uint32_t[]){ U }, 1, 0) && !only_wakes((const uint32_t[]){ H, U }, 2, 0),
	      "a HUP, alone or behind a HEAD, says no", "yes");
	CHECK(!only_wakes((const uint32_t[]){ H }, 1, 20), "a frame still in transit says no", "yes");
	CHECK(!only_wakes((const uint32_t[]){ H, H, H, H, H }, 5, 0), "more HEADs than one peek sees say no", "yes");
}

int main(void)
{
	test_node_names();
	test_normalize();
	test_join_and_below();
	test_header();
	test_head_payload();
	test_open_frame();
	test_ioctl_frame();
	test_segments();
	test_mem_and_pool();
	test_fetch_and_result();
	test_prefetch_send();
	test_prefetch_struct_bounds();
	test_caller_memory();
	test_holders();
	test_ioctl_numbers();
	test_side_frames();
	test_message_fds();
	test_only_wakes();
	return check_exit();
}
