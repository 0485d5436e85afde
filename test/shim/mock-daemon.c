/*
 * A stand-in for the daemon side of docs/socket-protocol.md, so the shim's socket
 * machinery can be tested without Node. It decodes frames by itself (not with the shim's
 * codec) and implements a few commands with behaviour conn-test.c knows:
 *
 *   OPEN      "0-test/bus", "0-exact/bus", "0-heads/bus" and "control" open; "0-denied/bus" is
 *             EACCES; else ENOENT
 *   HELLO     writes id 42 and pool_size 1 MiB; hands over a pool that starts "POOLDATA"
 *   SEND      reply.offset = bytes of vector data, reply.msg_size = bytes readable from the
 *             passed files, reply.return_flags = files passed; with SYNC_REPLY it answers
 *             only at the next BYEBYE, FETCHing the u64 at the message's cookie first
 *   RECV      installs two pipes holding "r0" and "r1"; writes the reserved numbers it used
 *             to msg.offset and msg.msg_size, and how many it was offered to msg.return_flags
 *   FREE      FETCHes the u64 at `offset`, writes it + 1 to return_flags and the caller's
 *             pid (from the frame's credentials) to offset
 *   BYEBYE    answers a parked SEND first, then sends a WAKE, then its own RESULT
 *   MATCH_ADD answers, then sends a WAKE
 *   CONN_INFO writes return_flags = 1
 *   BUS_CREATOR_INFO answers, sends HUP and closes the connection
 *   LIST      writes how many CLOSE frames the mock has seen (all clients) to `offset`
 *   others    ENOTTY
 *   CLOSE     counted and answered
 *
 * On "0-exact/bus" the mock keeps a queue the way the daemon does (docs/socket-protocol.md,
 * Poll), and says so in HELLO's RESULT (flags bit 1):
 *
 *   MATCH_ADD queues a message (a WAKE follows every RESULT, in the same write, while the
 *             queue is not empty)
 *   RECV      EAGAIN on an empty queue, with the daemon's write-backs; else a slice at
 *             0x2000 + 0x100 * n (n counting from 0), published
 *   FREE      0 for a published slice (then no longer published), else ENXIO; one with
 *             seq 0 gets no RESULT
 *   CONN_INFO writes how many FREEs came with seq 0 to id, RECVs to attach_flags, RECVs with
 *             seq 0 to offset, FREEs of slices not published with seq 0 to info_size
 *
 * "0-heads/bus" is "0-exact/bus" for a shim whose OPEN asked for HEAD frames: the event after
 * a RESULT is a HEAD (seq: RECV frames taken, the next slice at 0x2000 + 0x100 * n, size
 * 0x80, LAST when it is the only one queued), and a RECV with seq 0 takes that slice without
 * an answer, followed by the HEAD of the next one if any (a complaint on stderr if none was
 * queued).
 *
 * Side channels of CUSE devices (there are no CUSE devices here; cuse-test.c plays one):
 *
 *   ATTACH    a token "mock-token-NNNN" is accepted once (else EPERM); the socket becomes a
 *             side channel holding the numbers offered, with a pool that starts "POOLDATA"
 *   RESERVE   more numbers (with a seq answered with RESULT 0); with the TRANSIENT flag,
 *             numbers for the next MOCK_RECV alone, used first
 *   POOL      that pool
 *   IOCTL     only a FREE with seq 0, its offset kept, or a RECV with seq 0 and no segments
 *             (else a complaint on stderr): counted
 *   READY     its eventfd is kept (RESULT 0): MOCK_QUEUE writes 1 to it after each WAKE, HEAD
 *             and HUP, and empties it with EMPTY
 *   (ATTACH's RESULT has flags bit 1: the channel carries the queue's state, which the test
 *   sets with MOCK_QUEUE)
 *   MOCK_QUEUE (type 102: token, u32 what, u32 seq) sends WAKE (what 1), EMPTY (0), HUP (2)
 *             or a HEAD with that seq naming the slice 0x3000 of 0x80 bytes, more queued (3)
 *             or alone (4), on that side channel, then answers MOCK_MESSAGE with no payload
 *   MOCK_FREES (type 103: token) answers MOCK_MESSAGE: u64 FREEs that came on that side
 *             channel, u64 the offset the last one named, u64 RECVs that came on it (what the
 *             shim sent before is read first)
 *   MOCK_RECV (type 100, the test's stand-in for a RECV on the device: token, u32 n_fds,
 *             u32 n_memfds, u32 delay_ms, u32 0) takes numbers from that side channel's
 *             reserve in order, writes a kdbus_msg naming them (FDS item, then one
 *             PAYLOAD_MEMFD item per memfd) into its pool, answers MOCK_MESSAGE (type 101:
 *             u64 offset, u64 size, u32 count, u32 numbers held before, the numbers) and sends
 *             INSTALL with pipes holding "f0", "f1"... and memfds holding "m0", "m1"... at once,
 *             after delay_ms, or never (delay_ms 0xffffffff). Numbers beyond the reserve are -1.
 *
 * Anything that breaks the protocol is answered with EILSEQ and reported on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE (1u << 20)
#define MAX_CLIENTS 32
#define MAX_RESERVE 256
#define MAX_PENDING 16
#define NEVER 0xffffffffu

enum { OPEN = 1, IOCTL, FETCH, MEM, RESULT, WAKE, HUP, POOL, CLOSE, ATTACH, RESERVE, INSTALL, EMPTY, HEAD, READY };
enum { MOCK_RECV = 100, MOCK_MESSAGE = 101, MOCK_QUEUE = 102, MOCK_FREES = 103 };

struct frame {
	uint32_t type;
	uint64_t seq;
	uint8_t *payload;
	size_t len;
	/* The descriptors that came with the frame's bytes, and who sent its first ones. */
	int fds[64];
	int n_fds;
	pid_t pid;
	struct frame *next;
};

struct client {
	int sock, pool;
	struct frame *backlog, *backlog_tail;
	bool parked;
	uint64_t parked_seq, parked_arg, parked_cookie;
	/* A side channel: its token, and the numbers the shim gave for installs. */
	bool side;
	uint8_t token[16];
	int32_t reserve[MAX_RESERVE];
	unsigned n_reserve;
	int32_t transient[MAX_RESERVE];
	unsigned n_transient;
	unsigned messages;
	/* "0-exact/bus": the queue, the slices published, and what came. */
	bool exact, heads;
	/* A side channel's READY eventfd, kept to the queue MOCK_QUEUE sets; -1 without one. */
	int ready;
	unsigned queued, slices, n_published;
	uint64_t published[8];
	uint64_t recvs, unanswered_frees, bad_unanswered_frees;
	uint64_t recv_frames, unanswered_recvs;
	/* A side channel: the FREEs that came on it, and the offset the last one named. */
	uint64_t side_frees, last_side_free, side_recvs;
};

/* An INSTALL that waits for its time. */
struct pending {
	bool used;
	struct client *c;
	uint8_t token[16];
	long due_ms;
	uint8_t payload[8 + 4 * 32];
	size_t len;
	int fds[32];
	int n_fds;
};

static struct client clients[MAX_CLIENTS];
static struct pending pending[MAX_PENDING];
static uint64_t closes_seen;
static char used_tokens[64][16];
static unsigned n_used_tokens;

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* Reads len bytes, collecting the descriptors and the sender that come with them into f. */
static bool read_full(int fd, void *buf, size_t len, struct frame *f)
{
	for (size_t got = 0; got < len;) {
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int) * 64) + CMSG_SPACE(sizeof(struct ucred))];
		} control;
		struct iovec iov = { (uint8_t *)buf + got, len - got };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf };
		ssize_t n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			return false;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			if (cm->cmsg_type == SCM_RIGHTS) {
				int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
				for (int i = 0; i < k; i++) {
					int received;
					memcpy(&received, CMSG_DATA(cm) + sizeof(int) * (size_t)i, sizeof received);
					if (f->n_fds < 64)
						f->fds[f->n_fds++] = received;
					else
						close(received);
				}
			} else if (cm->cmsg_type == SCM_CREDENTIALS && !f->pid) {
				struct ucred cred;
				memcpy(&cred, CMSG_DATA(cm), sizeof cred);
				f->pid = cred.pid;
			}
		}
		got += (size_t)n;
	}
	return true;
}

/* The readiness event "0-heads/bus" sends: a HEAD naming the next slice, LAST if it is alone. */
static size_t put_head(struct client *c, uint8_t *b)
{
	put32(b, 40);
	put32(b + 4, HEAD);
	put64(b + 8, c->recv_frames);
	put64(b + 16, 0x2000 + 0x100 * (uint64_t)c->slices);
	put64(b + 24, 0x80);
	put64(b + 32, c->queued == 1);
	return 40;
}

/*
 * One frame, its descriptors attached to its first byte as the real daemon does; with
 * `then_wake`, a WAKE (a HEAD on "0-heads/bus") right after it in the same write (as the
 * daemon sends a RESULT and the event due after it).
 */
static void send_frames(struct client *c, uint32_t type, uint64_t seq, const uint8_t *payload, size_t len,
			const int *fds, int n_fds, bool then_wake)
{
	size_t frame = 16 + ((len + 7) & ~(size_t)7);
	size_t total = frame + (then_wake ? (c->heads ? 40 : 16) : 0);
	uint8_t *b = calloc(1, total);
	put32(b, (uint32_t)frame);
	put32(b + 4, type);
	put64(b + 8, seq);
	if (len)
		memcpy(b + 16, payload, len);
	if (then_wake && c->heads) {
		put_head(c, b + frame);
	} else if (then_wake) {
		put32(b + frame, 16);
		put32(b + frame + 4, WAKE);
	}
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * 64)];
	} control;
	size_t off = 0;
	while (off < total) {
		struct iovec iov = { b + off, total - off };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		if (off == 0 && n_fds > 0) {
			m.msg_control = control.buf;
			m.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)n_fds);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)n_fds);
			memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)n_fds);
		}
		ssize_t n = sendmsg(c->sock, &m, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		off += (size_t)n;
	}
	free(b);
}

static void send_frame(struct client *c, uint32_t type, uint64_t seq, const uint8_t *payload, size_t len,
		       const int *fds, int n_fds)
{
	send_frames(c, type, seq, payload, len, fds, n_fds, false);
}

static void free_frame(struct frame *f)
{
	for (int i = 0; i < f->n_fds; i++)
		close(f->fds[i]);
	free(f->payload);
	free(f);
}

static struct frame *read_frame(struct client *c)
{
	uint8_t h[16];
	struct frame *f = calloc(1, sizeof *f);
	if (!read_full(c->sock, h, 16, f)) {
		free_frame(f);
		return NULL;
	}
	uint32_t length = get32(h);
	f->type = get32(h + 4);
	f->seq = get64(h + 8);
	if (length < 16 || length % 8 || length > (8u << 20)) {
		fprintf(stderr, "mock: bad frame length %u\n", length);
		free_frame(f);
		return NULL;
	}
	f->len = length - 16;
	f->payload = malloc(f->len + 1);
	if (!read_full(c->sock, f->payload, f->len, f)) {
		free_frame(f);
		return NULL;
	}
	return f;
}

struct write {
	uint64_t address;
	uint8_t data[8];
	uint32_t len;
};

static void send_result(struct client *c, uint64_t seq, int err, const struct write *w, int n_writes,
			const int *fds, int n_fds, uint32_t flags)
{
	uint8_t p[16 + 8 * 24];
	memset(p, 0, sizeof p);
	put32(p, (uint32_t)err);
	put32(p + 4, (uint32_t)n_writes);
	put32(p + 8, (uint32_t)(n_fds - (flags & 1)));
	put32(p + 12, flags);
	size_t at = 16;
	for (int i = 0; i < n_writes; i++) {
		put64(p + at, w[i].address);
		put32(p + at + 8, w[i].len);
		memcpy(p + at + 16, w[i].data, w[i].len);
		at += 16 + ((w[i].len + 7) & ~7u);
	}
	send_frames(c, RESULT, seq, p, at, fds, n_fds, c->exact && c->queued > 0);
}

static struct write w64(uint64_t address, uint64_t value)
{
	struct write w = { .address = address, .len = 8 };
	memcpy(w.data, &value, 8);
	return w;
}

/* One IOCTL being served: its fixed fields, lists, segments and passed files. */
struct call {
	struct client *c;
	uint64_t seq, arg;
	uint32_t cmd, tid;
	uint32_t n_seg, n_fds, n_res;
	int32_t numbers[64], reserved[64];
	int files[64]; /* the received descriptor for each listed number, -1 for none */
	const uint8_t *segs;
	size_t segs_len;
	pid_t pid;
};

/* Asks the client for memory; 0 and the data, or the errno it answered. */
static int fetch(struct client *c, uint64_t seq, uint64_t address, uint32_t len, uint8_t *out)
{
	uint8_t p[16] = { 0 };
	put64(p, address);
	put32(p + 8, len);
	send_frame(c, FETCH, seq, p, 16, NULL, 0);
	for (;;) {
		struct frame *f = read_frame(c);
		if (!f)
			return EPIPE;
		if (f->type == MEM && f->seq == seq) {
			int err = (int)get32(f->payload);
			uint32_t got = get32(f->payload + 4);
			if (err == 0 && got == len)
				memcpy(out, f->payload + 8, len);
			else if (err == 0)
				err = EILSEQ;
			free_frame(f);
			return err;
		}
		/* Another thread's or process's request: serve it after this one. */
		if (c->backlog_tail)
			c->backlog_tail->next = f;
		else
			c->backlog = f;
		c->backlog_tail = f;
	}
}

/* Caller memory from the segments, or by FETCH; 0 or EFAULT. */
static int mem_read(struct call *k, uint64_t address, uint32_t len, uint8_t *out)
{
	size_t at = 0;
	for (uint32_t i = 0; i < k->n_seg && at + 16 <= k->segs_len; i++) {
		uint64_t a = get64(k->segs + at);
		uint32_t l = get32(k->segs + at + 8);
		if (address >= a && address + len <= a + l) {
			memcpy(out, k->segs + at + 16 + (address - a), len);
			return 0;
		}
		at += 16 + ((l + 7) & ~7u);
	}
	return fetch(k->c, k->seq, address, len, out) ? EFAULT : 0;
}

static int file_for(struct call *k, int32_t number)
{
	for (uint32_t i = 0; i < k->n_fds; i++)
		if (k->numbers[i] == number)
			return k->files[i];
	return -1;
}

static bool was_prefetched(struct call *k, uint64_t address, uint32_t len)
{
	size_t at = 0;
	for (uint32_t i = 0; i < k->n_seg; i++) {
		uint32_t l = get32(k->segs + at + 8);
		if (get64(k->segs + at) == address && l == len)
			return true;
		at += 16 + ((l + 7) & ~7u);
	}
	return false;
}

static void do_hello(struct call *k)
{
	uint8_t s[96];
	if (mem_read(k, k->arg, 96, s)) {
		send_result(k->c, k->seq, EFAULT, NULL, 0, NULL, 0, 0);
		return;
	}
	if (get64(s) != 96 || !was_prefetched(k, k->arg, 96)) {
		send_result(k->c, k->seq, EINVAL, NULL, 0, NULL, 0, 0);
		return;
	}
	struct client *c = k->c;
	if (c->pool < 0) {
		c->pool = memfd_create("mock-pool", MFD_CLOEXEC);
		if (ftruncate(c->pool, POOL_SIZE) < 0 || pwrite(c->pool, "POOLDATA", 8, 0) != 8)
			fprintf(stderr, "mock: pool setup failed\n");
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", c->pool);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	struct write w[2] = { w64(k->arg + 48, 42), w64(k->arg + 56, POOL_SIZE) };
	send_result(c, k->seq, 0, w, 2, &ro, 1, c->exact ? 3 : 1);
	close(ro);
}

static void do_send(struct call *k)
{
	uint8_t cmd[56], msg[512];
	if (mem_read(k, k->arg, 56, cmd)) {
		send_result(k->c, k->seq, EFAULT, NULL, 0, NULL, 0, 0);
		return;
	}
	uint64_t flags = get64(cmd + 8), msg_address = get64(cmd + 24);
	uint64_t msg_size = 0;
	if (mem_read(k, msg_address, 8, msg) || (msg_size = get64(msg)) > sizeof msg || msg_size < 64 ||
	    mem_read(k, msg_address, (uint32_t)msg_size, msg)) {
		send_result(k->c, k->seq, msg_size > sizeof msg ? EMSGSIZE : EFAULT, NULL, 0, NULL, 0, 0);
		return;
	}
	uint64_t vec_bytes = 0, fd_bytes = 0, files = 0;
	for (size_t at = 64; at + 16 <= msg_size;) {
		uint64_t size = get64(msg + at), type = get64(msg + at + 8);
		if (size < 16 || at + size > msg_size)
			break;
		const uint8_t *pl = msg + at + 16;
		int32_t numbers[16];
		int n = 0;
		if (type == 2 && get64(pl + 8)) {
			uint8_t data[4096];
			uint32_t len = (uint32_t)get64(pl);
			if (len > sizeof data || mem_read(k, get64(pl + 8), len, data)) {
				send_result(k->c, k->seq, EFAULT, NULL, 0, NULL, 0, 0);
				return;
			}
			vec_bytes += len;
		} else if (type == 5) {
			for (size_t i = 0; i + 4 <= size - 16 && n < 16; i += 4)
				numbers[n++] = (int32_t)get32(pl + i);
		} else if (type == 4) {
			numbers[n++] = (int32_t)get32(pl + 16);
		}
		for (int i = 0; i < n; i++) {
			int f = file_for(k, numbers[i]);
			if (f < 0) {
				send_result(k->c, k->seq, EBADF, NULL, 0, NULL, 0, 0);
				return;
			}
			char buf[64];
			ssize_t got = pread(f, buf, sizeof buf, 0);
			if (got < 0)
				got = read(f, buf, sizeof buf);
			fd_bytes += got > 0 ? (uint64_t)got : 0;
			files++;
		}
		at += (size + 7) & ~(uint64_t)7;
	}
	struct write w[3] = { w64(k->arg + 32, vec_bytes), w64(k->arg + 40, fd_bytes), w64(k->arg + 48, files) };
	if (flags & 1) {
		if (k->n_res == 0)
			fprintf(stderr, "mock: a SYNC_REPLY send came without reserved numbers\n");
		k->c->parked = true;
		k->c->parked_seq = k->seq;
		k->c->parked_arg = k->arg;
		k->c->parked_cookie = get64(msg + 48);
		return;
	}
	send_result(k->c, k->seq, 0, w, 3, NULL, 0, 0);
}

static void do_recv(struct call *k)
{
	if (k->n_res < 2) {
		send_result(k->c, k->seq, EILSEQ, NULL, 0, NULL, 0, 0);
		return;
	}
	int p0[2], p1[2];
	if (pipe(p0) < 0 || pipe(p1) < 0 || write(p0[1], "r0", 2) != 2 || write(p1[1], "r1", 2) != 2)
		fprintf(stderr, "mock: pipes failed\n");
	close(p0[1]);
	close(p1[1]);
	int fds[2] = { p0[0], p1[0] };
	struct write w[3] = { w64(k->arg + 40, (uint64_t)k->reserved[0]), w64(k->arg + 48, (uint64_t)k->reserved[1]),
			      w64(k->arg + 56, k->n_res) };
	send_result(k->c, k->seq, 0, w, 3, fds, 2, 0);
	close(p0[0]);
	close(p1[0]);
}

/* A RECV with seq 0 on "0-heads/bus": the shim answered it from the last HEAD. */
static void do_heads_recv(struct call *k)
{
	struct client *c = k->c;
	if (!c->heads || c->queued == 0) {
		fprintf(stderr, "mock-daemon: an unanswered RECV with nothing announced\n");
		return;
	}
	c->unanswered_recvs++;
	c->queued--;
	uint64_t offset = 0x2000 + 0x100 * (uint64_t)c->slices++;
	if (c->n_published < 8)
		c->published[c->n_published++] = offset;
	if (c->queued > 0) {
		uint8_t head[40];
		put_head(c, head);
		ssize_t n;
		do
			n = send(c->sock, head, sizeof head, MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
	}
}

/* RECV on "0-exact/bus". */
static void do_exact_recv(struct call *k)
{
	struct client *c = k->c;
	c->recv_frames++;
	if (k->seq == 0) {
		do_heads_recv(k);
		return;
	}
	c->recvs++;
	if (c->queued == 0) {
		struct write w[5] = { w64(k->arg + 32, 0), w64(k->arg + 40, POOL_SIZE), w64(k->arg + 48, 0),
				      w64(k->arg + 56, 0), w64(k->arg + 16, 0) };
		send_result(c, k->seq, EAGAIN, w, 5, NULL, 0, 0);
		return;
	}
	c->queued--;
	uint64_t offset = 0x2000 + 0x100 * (uint64_t)c->slices++;
	if (c->n_published < 8)
		c->published[c->n_published++] = offset;
	struct write w[5] = { w64(k->arg + 32, 0), w64(k->arg + 40, offset), w64(k->arg + 48, 0x80),
			      w64(k->arg + 56, 0), w64(k->arg + 16, 0) };
	send_result(c, k->seq, 0, w, 5, NULL, 0, 0);
}

/* FREE on "0-exact/bus". */
static void do_exact_free(struct call *k)
{
	struct client *c = k->c;
	uint8_t s[32];
	int err = mem_read(k, k->arg, 32, s) ? EFAULT : ENXIO;
	for (unsigned i = 0; err == ENXIO && i < c->n_published; i++) {
		if (c->published[i] == get64(s + 24)) {
			c->published[i] = c->published[--c->n_published];
			err = 0;
		}
	}
	if (k->seq == 0) {
		c->unanswered_frees++;
		if (err)
			c->bad_unanswered_frees++;
		return;
	}
	struct write w = w64(k->arg + 16, 0);
	send_result(c, k->seq, err, &w, err == EFAULT ? 0 : 1, NULL, 0, 0);
}

static void do_free(struct call *k)
{
	uint8_t s[32], v[8];
	if (mem_read(k, k->arg, 32, s) || mem_read(k, get64(s + 24), 8, v)) {
		send_result(k->c, k->seq, EFAULT, NULL, 0, NULL, 0, 0);
		return;
	}
	struct write w[2] = { w64(k->arg + 16, get64(v) + 1), w64(k->arg + 24, (uint64_t)k->pid) };
	send_result(k->c, k->seq, 0, w, 2, NULL, 0, 0);
}

static void do_byebye(struct call *k)
{
	struct client *c = k->c;
	if (c->parked) {
		uint8_t v[8];
		c->parked = false;
		int err = fetch(c, c->parked_seq, c->parked_cookie, 8, v);
		struct write w[2] = { w64(c->parked_arg + 48, get64(v)), w64(c->parked_arg + 32, 7) };
		send_result(c, c->parked_seq, err ? EFAULT : 0, w, err ? 0 : 2, NULL, 0, 0);
		send_frame(c, WAKE, 0, NULL, 0, NULL, 0);
	}
	send_result(c, k->seq, 0, NULL, 0, NULL, 0, 0);
}

static long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A number list at p (count, 0, numbers) into out; how many. */
static unsigned numbers_of(const uint8_t *p, size_t len, int32_t *out, unsigned room)
{
	if (len < 8)
		return 0;
	unsigned n = get32(p);
	unsigned i = 0;
	for (; i < n && i < room && 8 + 4 * (size_t)i + 4 <= len; i++)
		out[i] = (int32_t)get32(p + 8 + 4 * i);
	return i;
}

static void do_attach(struct client *c, struct frame *f)
{
	if (f->len < 16 + 8 || c->side) {
		fprintf(stderr, "mock: a malformed ATTACH\n");
		send_result(c, f->seq, EILSEQ, NULL, 0, NULL, 0, 0);
		return;
	}
	bool good = memcmp(f->payload, "mock-token-", 11) == 0;
	for (unsigned i = 0; good && i < n_used_tokens; i++)
		good = memcmp(used_tokens[i], f->payload, 16) != 0;
	if (!good) {
		send_result(c, f->seq, EPERM, NULL, 0, NULL, 0, 0);
		return;
	}
	if (n_used_tokens < 64)
		memcpy(used_tokens[n_used_tokens++], f->payload, 16);
	c->side = true;
	memcpy(c->token, f->payload, 16);
	c->n_reserve = numbers_of(f->payload + 16, f->len - 16, c->reserve, MAX_RESERVE);
	c->pool = memfd_create("mock-side-pool", MFD_CLOEXEC);
	if (ftruncate(c->pool, POOL_SIZE) < 0 || pwrite(c->pool, "POOLDATA", 8, 0) != 8)
		fprintf(stderr, "mock: pool setup failed\n");
	send_result(c, f->seq, 0, NULL, 0, NULL, 0, 2);
}

/*
 * A FREE the shim answered itself, sent on a side channel: header, then the struct as a
 * segment; or a RECV it answered from a HEAD: the header alone.
 */
static void do_side_ioctl(struct client *c, struct frame *f)
{
	const uint8_t *p = f->payload;
	if (f->seq == 0 && f->len == 32 && get32(p) == 0x80409591u && get32(p + 16) == 0 && get32(p + 20) == 0 &&
	    get32(p + 24) == 0) {
		c->side_recvs++;
		return;
	}
	bool good = f->seq == 0 && f->len >= 32 + 16 + 32 && get32(p) == 0x40209583u && get32(p + 16) == 1 &&
		    get32(p + 20) == 0 && get32(p + 24) == 0 && get64(p + 32) == get64(p + 8) && get32(p + 40) == 32 &&
		    get64(p + 48) == 32;
	if (!good) {
		fprintf(stderr, "mock: an IOCTL on a side channel that is no unanswered FREE or RECV\n");
		return;
	}
	c->side_frees++;
	c->last_side_free = get64(p + 48 + 24);
}

static void do_reserve(struct client *c, struct frame *f)
{
	if (!c->side) {
		fprintf(stderr, "mock: RESERVE on a socket that is no side channel\n");
		return;
	}
	if (f->len >= 8 && (get32(f->payload + 4) & 1)) {
		/* TRANSIENT: numbers for the next ioctl alone, used first (sent lowest first). */
		c->n_transient = numbers_of(f->payload, f->len, c->transient, MAX_RESERVE);
		return;
	}
	c->n_reserve += numbers_of(f->payload, f->len, c->reserve + c->n_reserve, MAX_RESERVE - c->n_reserve);
	if (f->seq != 0)
		send_result(c, f->seq, 0, NULL, 0, NULL, 0, 0);
}

static void send_install(struct client *c, const uint8_t *payload, size_t len, const int *fds, int n_fds)
{
	send_frame(c, INSTALL, 0, payload, len, fds, n_fds);
	for (int i = 0; i < n_fds; i++)
		close(fds[i]);
}

/* A file holding "<tag><i>": a pipe for an FDS entry, a memfd for a PAYLOAD_MEMFD. */
static int file_holding(char tag, unsigned i)
{
	char text[8];
	int len = snprintf(text, sizeof text, "%c%u", tag, i);
	if (tag == 'm') {
		int fd = memfd_create("mock-memfd", MFD_CLOEXEC);
		return pwrite(fd, text, (size_t)len, 0) == len ? fd : -1;
	}
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	if (write(p[1], text, (size_t)len) != len)
		fprintf(stderr, "mock: pipe write failed\n");
	close(p[1]);
	return p[0];
}

static struct client *side_with_token(const uint8_t *token)
{
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].sock >= 0 && clients[i].side && memcmp(clients[i].token, token, 16) == 0)
			return &clients[i];
	return NULL;
}

static void handle(struct client *c, struct frame *f);
static void close_client(struct client *c);

/* Handles what a client has already sent, without waiting for more. */
static void drain_client(struct client *c)
{
	struct pollfd p = { .fd = c->sock, .events = POLLIN };
	while (c->sock >= 0 && poll(&p, 1, 0) == 1) {
		struct frame *f = read_frame(c);
		if (!f) {
			close_client(c);
			return;
		}
		handle(c, f);
	}
}

static void do_mock_queue(struct client *asker, struct frame *f)
{
	struct client *c = f->len >= 24 ? side_with_token(f->payload) : NULL;
	uint32_t what = f->len >= 24 ? get32(f->payload + 16) : 0;
	uint8_t slice[24];
	put64(slice, 0x3000);
	put64(slice + 8, 0x80);
	put64(slice + 16, what == 4);
	if (c && (what == 3 || what == 4))
		send_frame(c, HEAD, get32(f->payload + 20), slice, sizeof slice, NULL, 0);
	else if (c)
		send_frame(c, what == 1 ? WAKE : what == 2 ? HUP : EMPTY, 0, NULL, 0, NULL, 0);
	/* After the frame, as the daemon does: one more at each wake-up, empty with the queue. */
	uint64_t count = 1;
	if (c && c->ready >= 0 && what != 0 && write(c->ready, &count, sizeof count) != sizeof count)
		fprintf(stderr, "mock: writing the READY eventfd failed\n");
	if (c && c->ready >= 0 && what == 0 && read(c->ready, &count, sizeof count) < 0 && errno != EAGAIN)
		fprintf(stderr, "mock: emptying the READY eventfd failed\n");
	send_frame(asker, MOCK_MESSAGE, f->seq, NULL, 0, NULL, 0);
}

/* READY on a side channel: its eventfd, kept from now on (the last one only; the tests use one). */
static void do_ready(struct client *c, struct frame *f)
{
	if (!c->side || f->n_fds != 1) {
		fprintf(stderr, "mock: READY off a side channel, or without one eventfd\n");
		send_result(c, f->seq, EILSEQ, NULL, 0, NULL, 0, 0);
		return;
	}
	if (c->ready >= 0)
		close(c->ready);
	c->ready = f->fds[0];
	f->n_fds = 0;
	send_result(c, f->seq, 0, NULL, 0, NULL, 0, 0);
}

static void do_mock_frees(struct client *asker, struct frame *f)
{
	struct client *c = f->len >= 16 ? side_with_token(f->payload) : NULL;
	uint8_t answer[24] = { 0 };
	if (c) {
		drain_client(c);
		put64(answer, c->side_frees);
		put64(answer + 8, c->last_side_free);
		put64(answer + 16, c->side_recvs);
	}
	send_frame(asker, MOCK_MESSAGE, f->seq, answer, sizeof answer, NULL, 0);
}

static void do_mock_recv(struct client *asker, struct frame *f)
{
	struct client *c = f->len >= 32 ? side_with_token(f->payload) : NULL;
	/* What the shim sent before the test asked has arrived: take the RESERVEs (or the end) in. */
	if (c)
		drain_client(c);
	if (!c || c->sock < 0) {
		send_frame(asker, MOCK_MESSAGE, f->seq, NULL, 0, NULL, 0);
		return;
	}
	unsigned n_fds = get32(f->payload + 16), n_memfds = get32(f->payload + 20), delay = get32(f->payload + 24);
	unsigned total = n_fds + n_memfds;
	if (total > 32)
		total = 32;
	int32_t numbers[32];
	int files[32];
	unsigned held = c->n_reserve + c->n_transient, n_files = 0;
	uint8_t install[8 + 4 * 32] = { 0 };
	unsigned next_transient = 0;
	for (unsigned i = 0; i < total; i++) {
		numbers[i] = -1;
		if (next_transient < c->n_transient) {
			numbers[i] = c->transient[next_transient++];
		} else {
			if (c->n_reserve == 0)
				continue;
			numbers[i] = c->reserve[0];
			memmove(c->reserve, c->reserve + 1, sizeof(int32_t) * --c->n_reserve);
		}
		files[n_files] = file_holding(i < n_fds ? 'f' : 'm', i < n_fds ? i : i - n_fds);
		put32(install + 8 + 4 * n_files++, (uint32_t)numbers[i]);
	}
	put32(install, n_files);
	/* The RECV ends here: the numbers offered for it alone are void. */
	c->n_transient = 0;

	uint8_t msg[1024] = { 0 };
	size_t at = 64;
	if (n_fds) {
		put64(msg + at, 16 + 4 * n_fds);
		put64(msg + at + 8, 5);
		memcpy(msg + at + 16, numbers, 4 * n_fds);
		at += (16 + 4 * n_fds + 7) & ~7u;
	}
	for (unsigned i = n_fds; i < total; i++) {
		put64(msg + at, 16 + 24);
		put64(msg + at + 8, 4);
		put64(msg + at + 24, 2);
		put32(msg + at + 32, (uint32_t)numbers[i]);
		at += 40;
	}
	put64(msg, at);
	uint64_t offset = 0x10000 + 0x1000 * (c->messages++ % 8);
	if (pwrite(c->pool, msg, at, (off_t)offset) != (ssize_t)at)
		fprintf(stderr, "mock: pool write failed\n");

	uint8_t reply[24 + 4 * 32] = { 0 };
	put64(reply, offset);
	put64(reply + 8, at);
	put32(reply + 16, total);
	put32(reply + 20, held);
	memcpy(reply + 24, numbers, 4 * total);
	/* As the daemon does, INSTALL goes out before the answer, unless it is held back. */
	size_t install_len = 8 + 4 * n_files;
	if (delay == 0) {
		send_install(c, install, install_len, files, (int)n_files);
	} else if (delay == NEVER) {
		for (unsigned i = 0; i < n_files; i++)
			close(files[i]);
	} else {
		struct pending *p = NULL;
		for (int i = 0; i < MAX_PENDING && !p; i++)
			if (!pending[i].used)
				p = &pending[i];
		if (!p) {
			fprintf(stderr, "mock: too many pending INSTALLs\n");
		} else {
			*p = (struct pending){ .used = true, .c = c, .due_ms = now_ms() + delay, .len = install_len,
					       .n_fds = (int)n_files };
			memcpy(p->token, c->token, 16);
			memcpy(p->payload, install, install_len);
			memcpy(p->fds, files, sizeof(int) * n_files);
		}
	}
	send_frame(asker, MOCK_MESSAGE, f->seq, reply, 24 + 4 * total, NULL, 0);
}

/* Sends the INSTALLs whose time has come; returns how long until the next one (-1: none). */
static int send_due(void)
{
	long now = now_ms(), next = -1;
	for (int i = 0; i < MAX_PENDING; i++) {
		struct pending *p = &pending[i];
		if (!p->used)
			continue;
		if (p->due_ms <= now) {
			/* The side channel may have gone meanwhile. */
			if (side_with_token(p->token) == p->c)
				send_install(p->c, p->payload, p->len, p->fds, p->n_fds);
			else
				for (int k = 0; k < p->n_fds; k++)
					close(p->fds[k]);
			p->used = false;
		} else if (next < 0 || p->due_ms - now < next) {
			next = p->due_ms - now;
		}
	}
	return (int)next;
}

static void close_client(struct client *c)
{
	close(c->sock);
	if (c->pool >= 0)
		close(c->pool);
	while (c->backlog) {
		struct frame *f = c->backlog;
		c->backlog = f->next;
		free_frame(f);
	}
	if (c->ready >= 0)
		close(c->ready);
	memset(c, 0, sizeof *c);
	c->sock = c->pool = c->ready = -1;
}

/* The descriptors that came with an IOCTL frame (taken over by k) and the sender's pid. */
static bool take_frame_fds(struct call *k, struct frame *f)
{
	int used = 0;
	for (uint32_t i = 0; i < k->n_fds; i++)
		k->files[i] = k->numbers[i] >= 0 && used < f->n_fds ? f->fds[used++] : -1;
	k->pid = f->pid;
	if (used != f->n_fds || !k->pid) {
		fprintf(stderr, "mock: %d fds listed, %d came; pid %d\n", used, f->n_fds, k->pid);
		return false;
	}
	f->n_fds = 0;
	char task[64];
	snprintf(task, sizeof task, "/proc/%d/task/%u", k->pid, k->tid);
	if (access(task, F_OK) < 0) {
		fprintf(stderr, "mock: tid %u is no thread of %d\n", k->tid, k->pid);
		return false;
	}
	return true;
}

static void do_ioctl(struct client *c, struct frame *f)
{
	struct call k = { .c = c, .seq = f->seq };
	const uint8_t *p = f->payload;
	k.cmd = get32(p);
	k.tid = get32(p + 4);
	k.arg = get64(p + 8);
	k.n_seg = get32(p + 16);
	k.n_fds = get32(p + 20);
	k.n_res = get32(p + 24);
	if (k.n_fds > 64 || k.n_res > 64 || get32(p + 28) != 0) {
		send_result(c, k.seq, EILSEQ, NULL, 0, NULL, 0, 0);
		return;
	}
	for (uint32_t i = 0; i < k.n_fds; i++)
		k.numbers[i] = (int32_t)get32(p + 32 + 4 * i);
	for (uint32_t i = 0; i < k.n_res; i++)
		k.reserved[i] = (int32_t)get32(p + 32 + 4 * (k.n_fds + i));
	size_t lists = 32 + ((4 * (k.n_fds + k.n_res) + 7) & ~7u);
	k.segs = p + lists;
	k.segs_len = f->len - lists;
	if (!take_frame_fds(&k, f)) {
		send_result(c, k.seq, EILSEQ, NULL, 0, NULL, 0, 0);
		return;
	}
	uint8_t size[8];
	if (c->exact && (k.cmd == 0x80409591 || k.cmd == 0x40209583 || k.cmd == 0x402095B0 || k.cmd == 0x80389584)) {
		if (k.cmd == 0x80409591) {
			do_exact_recv(&k);
		} else if (k.cmd == 0x40209583) {
			do_exact_free(&k);
		} else if (k.cmd == 0x402095B0) {
			c->queued++;
			send_result(c, k.seq, 0, NULL, 0, NULL, 0, 0);
		} else {
			struct write w[4] = { w64(k.arg + 24, c->unanswered_frees), w64(k.arg + 32, c->recvs),
					      w64(k.arg + 40, c->unanswered_recvs), w64(k.arg + 48, c->bad_unanswered_frees) };
			send_result(c, k.seq, 0, w, 4, NULL, 0, 0);
		}
		for (uint32_t i = 0; i < k.n_fds; i++)
			if (k.files[i] >= 0)
				close(k.files[i]);
		return;
	}
	switch (k.cmd) {
	case 0xC0609580:
		do_hello(&k);
		break;
	case 0x40389590:
		do_send(&k);
		break;
	case 0x80409591:
		do_recv(&k);
		break;
	case 0x40209583:
		do_free(&k);
		break;
	case 0x40189582:
		do_byebye(&k);
		break;
	case 0x402095B0:
		send_result(c, k.seq, 0, NULL, 0, NULL, 0, 0);
		send_frame(c, WAKE, 0, NULL, 0, NULL, 0);
		break;
	case 0x80389584: {
		struct write w = w64(k.arg + 16, 1);
		send_result(c, k.seq, mem_read(&k, k.arg, 8, size), &w, 1, NULL, 0, 0);
		break;
	}
	case 0x80289586: {
		struct write w = w64(k.arg + 24, closes_seen);
		send_result(c, k.seq, 0, &w, 1, NULL, 0, 0);
		break;
	}
	case 0x80389585:
		send_result(c, k.seq, 0, NULL, 0, NULL, 0, 0);
		send_frame(c, HUP, 0, NULL, 0, NULL, 0);
		shutdown(c->sock, SHUT_RDWR);
		break;
	default:
		send_result(c, k.seq, ENOTTY, NULL, 0, NULL, 0, 0);
	}
	for (uint32_t i = 0; i < k.n_fds; i++)
		if (k.files[i] >= 0)
			close(k.files[i]);
}

static void do_open(struct client *c, struct frame *f)
{
	uint32_t len = get32(f->payload + 8);
	char path[256] = { 0 };
	memcpy(path, f->payload + 16, len < 255 ? len : 255);
	int err = ENOENT;
	bool heads = strcmp(path, "0-heads/bus") == 0;
	if (strcmp(path, "0-test/bus") == 0 || strcmp(path, "0-exact/bus") == 0 || heads || strcmp(path, "control") == 0)
		err = 0;
	else if (strcmp(path, "0-denied/bus") == 0)
		err = EACCES;
	c->exact = err == 0 && (heads || strcmp(path, "0-exact/bus") == 0);
	c->heads = heads && (get32(f->payload + 12) & 1);
	send_result(c, f->seq, err, NULL, 0, NULL, 0, 0);
}

static void do_pool(struct client *c, struct frame *f)
{
	if (c->pool < 0) {
		send_result(c, f->seq, EBADFD, NULL, 0, NULL, 0, 0);
		return;
	}
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", c->pool);
	int ro = open(path, O_RDONLY | O_CLOEXEC);
	send_result(c, f->seq, 0, NULL, 0, &ro, 1, 1);
	close(ro);
}

static void handle(struct client *c, struct frame *f)
{
	switch (f->type) {
	case OPEN:
		do_open(c, f);
		break;
	case IOCTL:
		if (c->side)
			do_side_ioctl(c, f);
		else
			do_ioctl(c, f);
		break;
	case POOL:
		do_pool(c, f);
		break;
	case CLOSE:
		closes_seen++;
		send_result(c, f->seq, 0, NULL, 0, NULL, 0, 0);
		break;
	case ATTACH:
		do_attach(c, f);
		break;
	case RESERVE:
		do_reserve(c, f);
		break;
	case READY:
		do_ready(c, f);
		break;
	case MOCK_RECV:
		do_mock_recv(c, f);
		break;
	case MOCK_QUEUE:
		do_mock_queue(c, f);
		break;
	case MOCK_FREES:
		do_mock_frees(c, f);
		break;
	default:
		fprintf(stderr, "mock: unexpected frame type %u\n", f->type);
	}
	free_frame(f);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: mock-daemon SOCKET\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
	unlink(argv[1]);
	if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 16) < 0) {
		perror("mock: listen");
		return 1;
	}
	for (int i = 0; i < MAX_CLIENTS; i++)
		clients[i].sock = clients[i].pool = clients[i].ready = -1;
	for (;;) {
		struct pollfd p[MAX_CLIENTS + 1];
		int idx[MAX_CLIENTS + 1], n = 0;
		p[n].fd = listener;
		p[n++].events = POLLIN;
		for (int i = 0; i < MAX_CLIENTS; i++) {
			if (clients[i].sock >= 0) {
				p[n].fd = clients[i].sock;
				p[n].events = POLLIN;
				idx[n++] = i;
			}
		}
		if (poll(p, (nfds_t)n, send_due()) < 0)
			continue;
		send_due();
		if (p[0].revents & POLLIN) {
			int s = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
			int one = 1;
			/* Every read then says which process wrote the bytes, as the daemon's reads do. */
			if (s >= 0)
				setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
			for (int i = 0; s >= 0 && i < MAX_CLIENTS; i++) {
				if (clients[i].sock < 0) {
					clients[i].sock = s;
					s = -1;
				}
			}
			if (s >= 0)
				close(s);
		}
		for (int j = 1; j < n; j++) {
			if (!p[j].revents)
				continue;
			struct client *c = &clients[idx[j]];
			/* Serving another client may have read this one's frames already. */
			struct pollfd still = { .fd = c->sock, .events = POLLIN };
			if (c->sock < 0 || poll(&still, 1, 0) != 1)
				continue;
			struct frame *f = read_frame(c);
			if (!f) {
				close_client(c);
				continue;
			}
			handle(c, f);
			while (c->sock >= 0 && c->backlog) {
				f = c->backlog;
				c->backlog = f->next;
				if (!c->backlog)
					c->backlog_tail = NULL;
				handle(c, f);
			}
		}
	}
}
