/*
 * The shim's CUSE support (cuse.c, side-channel.c) against mock-daemon.c's side channel: run
 * as `cuse-test MOCK_DAEMON`, linked with the shim's sources but not its interposers, and with
 * fake-token.c in place of the token ioctl. /dev/null descriptors play the daemon's CUSE
 * devices, and MOCK_RECV frames play the RECVs the kernel would carry to the daemon: the mock
 * writes a message naming reserved numbers into the pool and sends their files by INSTALL,
 * at once, late or never; the test then calls what the shim's ioctl() calls after a RECV.
 */
#include "check.h"
#include "fake-token.h"

#include "../../shim/src/conn.h"
#include "../../shim/src/cuse.h"
#include "../../shim/src/cuse-epoll.h"
#include "../../shim/src/cuse-poll.h"
#include "../../shim/src/cuse-select.h"
#include "../../shim/src/fd-table.h"
#include "../../shim/src/kdbus-abi.h"
#include "../../shim/src/reserve.h"
#include "../../shim/src/side-channel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POOL_SIZE (1u << 20)
#define NEVER 0xffffffffu

static char dir[64], sock_path[100];

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

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

static long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int connect_mock(void)
{
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
	if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
		close(s);
		return -1;
	}
	return s;
}

static pid_t start_mock(const char *mock)
{
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(mock, mock, sock_path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		int s = connect_mock();
		if (s >= 0) {
			close(s);
			return pid;
		}
		usleep(10000);
	}
	return -1;
}

static bool read_all(int fd, void *buf, size_t len)
{
	for (size_t got = 0; got < len;) {
		ssize_t n = read(fd, (uint8_t *)buf + got, len - got);
		if (n <= 0)
			return false;
		got += (size_t)n;
	}
	return true;
}

/* What the mock put in the pool for a MOCK_RECV. */
struct message {
	uint64_t offset, size;
	unsigned count, held;
	int numbers[32];
};

/*
 * Asks the mock, over the test's own connection ask, to "receive" a message on the side
 * channel of token: n_fds pipes and n_memfds memfds, INSTALLed after delay ms (0: at once).
 */
static bool mock_recv(int ask, const uint8_t *token, unsigned n_fds, unsigned n_memfds, uint32_t delay,
		      struct message *m)
{
	uint8_t f[48] = { 0 };
	put32(f, sizeof f);
	put32(f + 4, 100);
	memcpy(f + 16, token, 16);
	put32(f + 32, n_fds);
	put32(f + 36, n_memfds);
	put32(f + 40, delay);
	uint8_t head[16], payload[24 + 4 * 32];
	if (write(ask, f, sizeof f) != (ssize_t)sizeof f || !read_all(ask, head, 16) || get32(head + 4) != 101)
		return false;
	size_t len = get32(head) - 16;
	if (len == 0 || len > sizeof payload || !read_all(ask, payload, len))
		return false;
	m->offset = get64(payload);
	m->size = get64(payload + 8);
	m->count = get32(payload + 16);
	m->held = get32(payload + 20);
	memcpy(m->numbers, payload + 24, 4 * m->count);
	return true;
}

/* What RECV would have left in its struct for m. */
static void recv_struct(uint64_t r[8], uint64_t flags, const struct message *m)
{
	memset(r, 0, 64);
	r[0] = 64;
	r[1] = flags;
	r[5] = m->offset;
	r[6] = m->size;
}

/* The numbers the last kc_side_prepare offered for one ioctl; after_recv withdraws them. */
static struct kc_side_offer offer;

static void after_recv(struct kc_conn *c, uint64_t flags, const struct message *m)
{
	uint64_t r[8];
	recv_struct(r, flags, m);
	kc_cuse_after_ioctl(c, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)r, true, &offer);
	offer.n = 0;
}

/* Whether number holds a file whose data starts with text (a pipe is read, a memfd pread). */
static bool holds(int number, const char *text)
{
	char buf[8] = { 0 };
	size_t len = strlen(text);
	ssize_t n = pread(number, buf, len, 0);
	if (n < 0 && errno == ESPIPE)
		n = read(number, buf, len);
	return n == (ssize_t)len && memcmp(buf, text, len) == 0;
}

static bool placeholder(int number)
{
	kc_lock();
	bool is = kc_reserve_is_placeholder_locked(number);
	kc_unlock();
	return is && kc_reserve_holds(number);
}

static void close_all(const struct message *m)
{
	for (unsigned i = 0; i < m->count; i++)
		if (m->numbers[i] >= 0)
			close(m->numbers[i]);
}

static int ask;

/* Sends stderr to a file until stderr_text() gives back what was written there. */
static int stderr_capture(void)
{
	fflush(stderr);
	int saved = dup(2);
	int file = memfd_create("stderr", MFD_CLOEXEC);
	dup2(file, 2);
	close(file);
	return saved;
}

static void stderr_text(int saved, char *buf, size_t cap)
{
	memset(buf, 0, cap);
	if (pread(2, buf, cap - 1, 0) < 0)
		buf[0] = '\0';
	dup2(saved, 2);
	close(saved);
}

static int occurrences(const char *text, const char *what)
{
	int n = 0;
	for (const char *p = text; (p = strstr(p, what)); p++)
		n++;
	return n;
}

static void test_not_ours(void)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	errno = 1234;
	CHECK(kc_cuse_probe(null) == NULL && errno == 1234, "a character device that refuses the token is not the daemon's",
	      "errno %d", errno);
	struct kc_conn *c = kc_cuse_acquire(null);
	CHECK(c && kc_side_state(c) == KC_SIDE_FOREIGN && !kc_cuse_before_ioctl(c, null, KDBUS_CMD_RECV, 0, &offer),
	      "it is recorded as such and asked once", "state %d", c ? (int)kc_side_state(c) : -1);
	if (c)
		kc_conn_release(c);
	kc_conn_closing(null);
	close(null);
	char path[128];
	snprintf(path, sizeof path, "%s/file", dir);
	int file = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	CHECK(kc_cuse_probe(file) == NULL && kc_fd_get(file).kind == KC_FD_NONE, "a regular file is not even recorded",
	      "kind %d", (int)kc_fd_get(file).kind);
	close(file);
	unlink(path);
}

static struct kc_conn *attach_device(int *fd_out)
{
	int dev = open("/dev/null", O_RDWR | O_CLOEXEC);
	fake_device(dev, true);
	kc_cuse_opened(dev);
	CHECK(kc_fd_get(dev).kind == KC_FD_CUSE, "an opened CUSE device is recorded", "kind %d", (int)kc_fd_get(dev).kind);
	struct kc_conn *c = kc_cuse_acquire(dev);
	CHECK(c && kc_side_state(c) == KC_SIDE_NONE, "it is not attached before it needs to be", "state %d",
	      c ? (int)kc_side_state(c) : -1);
	int rc = c ? kc_side_attach(c, dev) : -1;
	CHECK(rc == 0 && kc_side_state(c) == KC_SIDE_READY, "the side channel attaches with the device's token",
	      "rc %d", rc);
	*fd_out = dev;
	return rc == 0 ? c : NULL;
}

static void test_attach(struct kc_conn *c, int dev)
{
	int sock = c->sock;
	CHECK(sock >= 3 && fcntl(sock, F_GETFD) == FD_CLOEXEC && kc_fd_get(sock).kind == KC_FD_INTERNAL,
	      "the side channel is the shim's, above stdio, close-on-exec", "fd %d", sock);
	struct message m;
	CHECK(c->side.n_reserved == 0 && mock_recv(ask, fake_last_token(dev), 0, 0, 0, &m) && m.held == 0,
	      "ATTACH reserves no numbers: a file that never receives holds none", "%u", c->side.n_reserved);
	int lowest = open("/dev/null", O_RDONLY);
	close(lowest);
	int rc = kc_side_prepare(c, &offer);
	bool all = rc == 0 && c->side.n_reserved == KC_SIDE_RESERVE + KC_SIDE_TRANSIENT && offer.n == KC_SIDE_TRANSIENT;
	for (unsigned i = 0; all && i < c->side.n_reserved; i++)
		all = placeholder(c->side.reserved[i]) && fcntl(c->side.reserved[i], F_GETFD) == FD_CLOEXEC;
	CHECK(all, "before RECV 32 numbers are reserved and 2 offered for it, each a close-on-exec placeholder",
	      "rc %d, %u", rc, c->side.n_reserved);
	bool high = true;
	for (unsigned i = 0; i < c->side.n_reserved; i++)
		if (!c->side.transient[i])
			high = high && c->side.reserved[i] > offer.numbers[1];
	CHECK(offer.numbers[0] == lowest && high,
	      "the offered numbers are the lowest free ones, the reserve lies above them", "offered %d, lowest %d",
	      offer.numbers[0], lowest);
	CHECK(mock_recv(ask, fake_last_token(dev), 0, 0, 0, &m) && m.held == KC_SIDE_RESERVE + KC_SIDE_TRANSIENT,
	      "the daemon holds those numbers when the RECV comes", "it holds %u", m.held);
	after_recv(c, 0, &m);
	CHECK(c->side.n_reserved == KC_SIDE_RESERVE && fcntl(lowest, F_GETFD) < 0,
	      "after it the offered numbers no file went to are free again", "%u reserved", c->side.n_reserved);
	CHECK(kc_side_attach(c, dev) == 0 && c->sock == sock, "attaching again changes nothing", "sock %d", c->sock);
}

static void test_pool(struct kc_conn *c)
{
	uint64_t size = 0;
	int rc = kc_side_fetch_pool(c);
	int pool = kc_conn_pool(c, &size);
	char head[8] = { 0 };
	CHECK(rc == 0 && pool >= 3 && size == POOL_SIZE && pread(pool, head, 8, 0) == 8 && memcmp(head, "POOLDATA", 8) == 0,
	      "POOL on the side channel brings the pool", "rc %d pool %d size %llu", rc, pool, (unsigned long long)size);
	CHECK((fcntl(pool, F_GETFL) & O_ACCMODE) == O_RDONLY, "the pool is read-only", "flags %x", fcntl(pool, F_GETFL));
}

/*
 * Asks the mock to send WAKE (what 1), EMPTY (0), HUP (2) or a HEAD with seq naming the slice
 * 0x3000 of 0x80 bytes, more queued (3) or alone (4), on the side channel of token.
 */
static bool mock_event(const uint8_t *token, uint32_t what, uint32_t seq)
{
	uint8_t f[40] = { 0 }, head[16];
	put32(f, sizeof f);
	put32(f + 4, 102);
	memcpy(f + 16, token, 16);
	put32(f + 32, what);
	put32(f + 36, seq);
	return write(ask, f, sizeof f) == (ssize_t)sizeof f && read_all(ask, head, 16) && get32(head + 4) == 101 &&
	       get32(head) == 16;
}

static bool mock_queue(const uint8_t *token, uint32_t what)
{
	return mock_event(token, what, 0);
}

/* The FREEs and RECVs the mock got on the side channel of token, and the offset of the last FREE. */
static bool mock_side_ioctls(const uint8_t *token, uint64_t *count, uint64_t *last, uint64_t *recvs)
{
	uint8_t f[32] = { 0 }, head[16], answer[24];
	put32(f, sizeof f);
	put32(f + 4, 103);
	memcpy(f + 16, token, 16);
	if (write(ask, f, sizeof f) != (ssize_t)sizeof f || !read_all(ask, head, 16) || get32(head) != 40 ||
	    !read_all(ask, answer, 24))
		return false;
	*count = get64(answer);
	*last = get64(answer + 8);
	*recvs = get64(answer + 16);
	return true;
}

static bool mock_frees(const uint8_t *token, uint64_t *count, uint64_t *last)
{
	uint64_t recvs;
	return mock_side_ioctls(token, count, last, &recvs);
}

/* kc_cuse_answered for RECV with struct r (flags as given); true if the shim answered EAGAIN. */
static bool recv_here(struct kc_conn *c, uint64_t r[8], uint64_t flags)
{
	memset(r, 0x5a, 64);
	r[0] = 64;
	r[1] = flags;
	int err = -1;
	return kc_cuse_answered(c, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)r, &err) && err == EAGAIN;
}

/* kc_cuse_answered for FREE of offset; true if the shim answered 0 (return_flags set in *rf). */
static bool free_here(struct kc_conn *c, uint64_t offset, uint64_t flags, uint64_t *rf)
{
	uint64_t f[4] = { 32, flags, 0x77, offset };
	int err = -1;
	bool answered = kc_cuse_answered(c, KDBUS_CMD_FREE, (uint64_t)(uintptr_t)f, &err) && err == 0;
	*rf = f[2];
	return answered;
}

/*
 * RECV on an empty queue and FREE of a received slice, answered by the shim from what the
 * side channel said (docs/socket-protocol.md, CUSE clients).
 */
static void test_answers_here(struct kc_conn *c, int dev)
{
	const uint8_t *token = fake_last_token(dev);
	uint64_t r[8], rf, count = 0, last = 0;
	CHECK(recv_here(c, r, 0) && r[4] == 0 && r[5] == POOL_SIZE && r[6] == 0 && r[7] == 0 && r[2] == 0,
	      "RECV on a queue the channel reports empty is EAGAIN from the shim, with kdbus's write-backs",
	      "offset %llx", (unsigned long long)r[5]);
	CHECK(mock_queue(token, 1) && !recv_here(c, r, 0), "after a WAKE, RECV goes to the daemon", "answered");
	CHECK(!recv_here(c, r, 0), "and again, until the daemon says the queue is empty", "answered");
	CHECK(mock_queue(token, 0) && recv_here(c, r, KDBUS_RECV_PEEK), "after EMPTY the shim answers again (PEEK too)",
	      "not answered");
	CHECK(!recv_here(c, r, KDBUS_RECV_DROP | KDBUS_RECV_USE_PRIORITY) && !recv_here(c, r, 8),
	      "a RECV the daemon would refuse goes to it", "answered");

	struct message m;
	if (!mock_recv(ask, token, 0, 0, 0, &m))
		return;
	after_recv(c, 0, &m);
	CHECK(free_here(c, m.offset, 0, &rf) && rf == 0, "FREE of a received slice is answered by the shim",
	      "return_flags %llx", (unsigned long long)rf);
	CHECK(mock_frees(token, &count, &last) && count == 1 && last == m.offset,
	      "and reaches the daemon on the side channel, unanswered", "%llu FREEs, last %llx",
	      (unsigned long long)count, (unsigned long long)last);
	CHECK(!free_here(c, m.offset, 0, &rf), "a second FREE of it goes to the daemon (ENXIO there)", "answered");
	CHECK(!free_here(c, 0x4000, 0, &rf), "FREE of a slice never received goes to the daemon", "answered");
	if (mock_recv(ask, token, 0, 0, 0, &m)) {
		after_recv(c, 0, &m);
		CHECK(!free_here(c, m.offset, 1, &rf) && !free_here(c, m.offset, 0, &rf),
		      "a FREE with flags goes to the daemon, and forgets the slice", "answered");
	}
	if (mock_recv(ask, token, 0, 0, 0, &m)) {
		after_recv(c, 0, &m);
		CHECK(mock_queue(token, 2) && !recv_here(c, r, 0) && !free_here(c, m.offset, 0, &rf),
		      "after a HUP neither RECV nor FREE is answered by the shim", "answered");
	}
	CHECK(mock_frees(token, &count, &last) && count == 1, "only the one FREE came on the side channel", "%llu",
	      (unsigned long long)count);
}

/* kc_cuse_answered for a plain RECV; true if the shim answered it with a message (0). */
static bool recv_taken_here(struct kc_conn *c, uint64_t r[8])
{
	memset(r, 0x5a, 64);
	r[0] = 64;
	r[1] = 0;
	int err = -1;
	return kc_cuse_answered(c, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)r, &err) && err == 0;
}

/*
 * A plain RECV of the message a HEAD on the side channel names, answered by the shim while
 * the HEAD's count of RECVs is the shim's (docs/socket-protocol.md, CUSE clients).
 */
static void test_heads_here(struct kc_conn *c, int dev)
{
	const uint8_t *token = fake_last_token(dev);
	uint64_t r[8], rf, frees = 0, last = 0, recvs = 0;
	/* A program maps its pool before it receives. */
	kc_side_fetch_pool(c);
	CHECK(mock_event(token, 3, 0) && recv_taken_here(c, r), "after a HEAD, a plain RECV is answered by the shim",
	      "not answered");
	CHECK(r[4] == 0 && r[5] == 0x3000 && r[6] == 0x80 && r[7] == 0 && r[2] == 0,
	      "with kdbus's write-backs: the slice the HEAD named, none lost, no flags", "offset %llx size %llx",
	      (unsigned long long)r[5], (unsigned long long)r[6]);
	CHECK(mock_side_ioctls(token, &frees, &last, &recvs) && recvs == 1,
	      "and the RECV reaches the daemon on the side channel, unanswered", "%llu RECVs", (unsigned long long)recvs);
	CHECK(free_here(c, 0x3000, 0, &rf) && rf == 0, "the slice it published is FREEd by the shim", "not answered");
	CHECK(!recv_taken_here(c, r) && !recv_here(c, r, 0), "the next RECV goes to the daemon", "answered");
	CHECK(mock_event(token, 3, 0) && !recv_taken_here(c, r), "a HEAD counting fewer RECVs than were made is stale",
	      "answered");
	CHECK(mock_event(token, 3, 1) && mock_queue(token, 1) && !recv_taken_here(c, r),
	      "a bare WAKE after a HEAD withdraws it", "answered");
	kc_side_count_recv(c);
	CHECK(mock_event(token, 3, 1) && !recv_taken_here(c, r), "a HEAD from before a RECV through the kernel is stale",
	      "answered");
	CHECK(mock_event(token, 3, 2) && recv_taken_here(c, r) && r[5] == 0x3000, "a HEAD counting them all is used",
	      "not answered");
	CHECK(mock_side_ioctls(token, &frees, &last, &recvs) && recvs == 2 && frees == 1,
	      "two RECVs and one FREE came on the side channel", "%llu RECVs, %llu FREEs", (unsigned long long)recvs,
	      (unsigned long long)frees);
	CHECK(mock_event(token, 4, 3) && recv_taken_here(c, r) && recv_here(c, r, 0),
	      "after the message a HEAD said was alone, RECV is EAGAIN from the shim", "asks the daemon");
	CHECK(mock_event(token, 3, 4) && mock_queue(token, 2) && !recv_taken_here(c, r), "after a HUP no HEAD is used",
	      "answered");
}

static void test_recv(struct kc_conn *c, int dev)
{
	struct message m;
	if (!mock_recv(ask, fake_last_token(dev), 2, 1, 0, &m) || m.count != 3)
		return;
	after_recv(c, 0, &m);
	int *n = m.numbers;
	CHECK(holds(n[0], "f0") && holds(n[1], "f1") && holds(n[2], "m0"),
	      "after RECV the files are on the numbers the message names (FDS and memfd)", "%d %d %d", n[0], n[1], n[2]);
	CHECK(fcntl(n[0], F_GETFD) == FD_CLOEXEC && fcntl(n[2], F_GETFD) == FD_CLOEXEC,
	      "installed files are close-on-exec", "flags %d", fcntl(n[0], F_GETFD));
	CHECK(kc_fd_get(n[0]).kind == KC_FD_NONE && kc_fd_get(n[2]).kind == KC_FD_NONE,
	      "installed numbers are the program's", "kind %d", (int)kc_fd_get(n[0]).kind);
	close_all(&m);
	CHECK(mock_recv(ask, fake_last_token(dev), 0, 0, 0, &m) && m.held == KC_SIDE_RESERVE,
	      "RESERVE tops the daemon's numbers up again", "it holds %u", m.held);
}

/* kdbus installed files on the lowest free numbers; programs reuse a number they closed. */
static void test_lowest(struct kc_conn *c, int dev)
{
	int low = open("/dev/null", O_RDONLY);
	int high = dup(low);
	close(low);
	struct message m;
	int rc = kc_side_prepare(c, &offer);
	CHECK(rc == 0 && mock_recv(ask, fake_last_token(dev), 1, 0, 0, &m) && m.count == 1 && m.numbers[0] == low,
	      "a number the program closed below the reserve is the next installed file's", "rc %d: %d, not %d", rc,
	      m.numbers[0], low);
	after_recv(c, 0, &m);
	CHECK(holds(low, "f0"), "and the file is there", "%d", low);
	close_all(&m);
	close(high);
}

static void test_late(struct kc_conn *c, int dev)
{
	struct message m;
	if (!mock_recv(ask, fake_last_token(dev), 1, 0, 300, &m))
		return;
	long start = now_ms();
	after_recv(c, 0, &m);
	long took = now_ms() - start;
	CHECK(took >= 250 && took < 4000 && holds(m.numbers[0], "f0"), "a RECV waits for files the daemon sends late",
	      "%ld ms", took);
	close_all(&m);

	if (!mock_recv(ask, fake_last_token(dev), 0, 1, 100, &m))
		return;
	uint64_t s[7] = { 56, KDBUS_SEND_SYNC_REPLY, 0, 0, m.offset, m.size, 0 };
	kc_cuse_after_ioctl(c, KDBUS_CMD_SEND, (uint64_t)(uintptr_t)s, true, &offer);
	CHECK(holds(m.numbers[0], "m0"), "so does a synchronous SEND for its reply's files", "%d", m.numbers[0]);
	close_all(&m);

	if (!mock_recv(ask, fake_last_token(dev), 1, 0, 200, &m))
		return;
	s[1] = 0;
	start = now_ms();
	kc_cuse_after_ioctl(c, KDBUS_CMD_SEND, (uint64_t)(uintptr_t)s, true, &offer);
	took = now_ms() - start;
	CHECK(took < 150 && placeholder(m.numbers[0]), "an asynchronous SEND waits for nothing", "%ld ms", took);
	usleep(300000);
	kc_side_drain(c);
	CHECK(holds(m.numbers[0], "f0"), "a later drain applies the INSTALL that came meanwhile", "%d", m.numbers[0]);
	close_all(&m);
}

static void test_no_wait(struct kc_conn *c, int dev)
{
	struct message m;
	if (!mock_recv(ask, fake_last_token(dev), 1, 0, NEVER, &m))
		return;
	long start = now_ms();
	after_recv(c, KDBUS_RECV_PEEK, &m);
	uint64_t r[8];
	recv_struct(r, 0, &m);
	kc_cuse_after_ioctl(c, KDBUS_CMD_RECV, (uint64_t)(uintptr_t)r, false, &offer);
	long took = now_ms() - start;
	CHECK(took < 150, "a PEEK, and a RECV that failed, wait for nothing", "%ld ms", took);
	char text[1024];
	int saved = stderr_capture();
	start = now_ms();
	int rc = kc_side_await(c, m.numbers, 1, 300);
	took = now_ms() - start;
	int again = kc_side_await(c, m.numbers, 1, 50);
	stderr_text(saved, text, sizeof text);
	CHECK(rc == -ETIMEDOUT && took >= 290 && took < 2000 && placeholder(m.numbers[0]),
	      "files that never come: the wait gives up at its timeout", "rc %d, %ld ms", rc, took);
	CHECK(again == -ETIMEDOUT && occurrences(text, "kdbus-cuse shim: files of a received kdbus message did not come") == 1,
	      "and says so on stderr, once", "stderr: %s", text);
}

static void test_taken_over(struct kc_conn *c, int dev)
{
	struct message m;
	if (!mock_recv(ask, fake_last_token(dev), 1, 0, 200, &m))
		return;
	int mine[2];
	if (pipe(mine) < 0 || write(mine[1], "program", 7) != 7)
		return;
	/* What the shim's dup2() does before libc's: the number stops being a placeholder. */
	kc_lock();
	kc_conn_evict_locked(m.numbers[0]);
	kc_unlock();
	dup2(mine[0], m.numbers[0]);
	long start = now_ms();
	after_recv(c, 0, &m);
	long took = now_ms() - start;
	usleep(300000);
	kc_side_drain(c);
	CHECK(took < 150 && holds(m.numbers[0], "program"),
	      "a number the program took over keeps the program's file; nothing waits for it", "%ld ms", took);
	close(m.numbers[0]);
	close(mine[0]);
	close(mine[1]);
}

struct worker {
	struct kc_conn *c;
	const uint8_t *token;
	int id, failures;
};

static void *recv_loop(void *arg)
{
	struct worker *w = arg;
	int own = connect_mock();
	for (int i = 0; i < 25; i++) {
		struct message m;
		if (!mock_recv(own, w->token, 1, 1, (w->id + i) % 3 == 0 ? 30 : 0, &m)) {
			w->failures++;
			continue;
		}
		after_recv(w->c, 0, &m);
		if (!holds(m.numbers[0], "f0") || !holds(m.numbers[1], "m0"))
			w->failures++;
		close_all(&m);
	}
	close(own);
	return NULL;
}

static void test_threads(struct kc_conn *c, int dev)
{
	struct worker w[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){ .c = c, .token = fake_last_token(dev), .id = i };
		pthread_create(&t[i], NULL, recv_loop, &w[i]);
	}
	int failures = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		failures += w[i].failures;
	}
	CHECK(failures == 0, "four threads, 100 RECVs with files over one side channel", "%d failed", failures);
}

static void test_fork(struct kc_conn *c, int dev)
{
	pid_t child = fork();
	if (child == 0) {
		int own = connect_mock();
		struct message m;
		int rc = 1;
		if (own >= 0 && mock_recv(own, fake_last_token(dev), 1, 0, 50, &m)) {
			after_recv(c, 0, &m);
			rc = holds(m.numbers[0], "f0") ? 0 : 2;
		}
		kc_conn_closing(dev);
		_exit(rc);
	}
	int status = -1;
	waitpid(child, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a forked child receives files over the shared side channel",
	      "status %d", status);
	struct message m;
	CHECK(mock_recv(ask, fake_last_token(dev), 1, 0, 0, &m) && (after_recv(c, 0, &m), holds(m.numbers[0], "f0")),
	      "the child's close leaves the parent's side channel working", "count %u", m.count);
	close_all(&m);
}

static void test_close(struct kc_conn *c, int dev)
{
	int sock = c->sock;
	int d = dup(dev);
	kc_conn_dup(dev, d);
	struct kc_conn *same = kc_cuse_acquire(d);
	CHECK(same == c, "a dup of the device is the same open file", "another");
	if (same)
		kc_conn_release(same);
	kc_conn_release(c);
	kc_conn_closing(dev);
	close(dev);
	CHECK(fcntl(sock, F_GETFD) == FD_CLOEXEC, "closing one descriptor keeps the side channel", "closed");
	kc_conn_closing(d);
	close(d);
	struct message m;
	CHECK(fcntl(sock, F_GETFD) == -1 && !mock_recv(ask, fake_last_token(dev), 0, 0, 0, &m),
	      "closing the last one closes the side channel", "still open");
}

/* poll of the device as the interposer does it, libc's ppoll underneath; ms < 0: no timeout. */
static int poll_dev(int dev, short events, int ms, short *revents, long *took_ms)
{
	struct pollfd p = { dev, events, 0 };
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000 };
	long start = now_ms();
	int n = kc_cuse_poll(&p, 1, ms < 0 ? NULL : &t, NULL, ppoll);
	*took_ms = now_ms() - start;
	*revents = p.revents;
	return n;
}

struct later {
	const uint8_t *token;
	uint32_t what;
	int delay_ms;
	struct kc_conn *reader; /* reads the channel right after, as another thread's ioctl would */
};

static void *event_later(void *arg)
{
	struct later *l = arg;
	usleep((useconds_t)l->delay_ms * 1000);
	mock_queue(l->token, l->what);
	if (l->reader)
		kc_side_drain(l->reader);
	return NULL;
}

static void *poll_forever(void *arg)
{
	struct pollfd p = { *(int *)arg, POLLIN, 0 };
	kc_cuse_poll(&p, 1, NULL, NULL, ppoll);
	return NULL;
}

/*
 * poll from the side channel (cuse-poll.c). The device is /dev/null, which the kernel would
 * report readable at once: a poll that waits has not asked the kernel.
 */
static void test_poll(struct kc_conn *c, int dev)
{
	const uint8_t *token = fake_last_token(dev);
	short rev;
	long took;
	int n = poll_dev(dev, POLLIN, 100, &rev, &took);
	CHECK(n == 0 && rev == 0 && took >= 90, "on an empty queue poll waits on the side channel, not on the device",
	      "%d, revents %x after %ld ms", n, rev, took);
	n = poll_dev(dev, POLLIN | POLLOUT, 1000, &rev, &took);
	CHECK(n == 1 && rev == POLLOUT && took < 500, "a kdbus file is always writable: POLLOUT at once, without POLLIN",
	      "%d, revents %x after %ld ms", n, rev, took);
	n = mock_queue(token, 1) ? poll_dev(dev, POLLIN, 1000, &rev, &took) : -1;
	CHECK(n == 1 && rev == POLLIN && took < 500, "after a WAKE, POLLIN at once", "%d, revents %x after %ld ms", n, rev,
	      took);
	n = mock_queue(token, 0) ? poll_dev(dev, POLLIN, 0, &rev, &took) : -1;
	CHECK(n == 0 && rev == 0, "after EMPTY, nothing", "%d, revents %x", n, rev);

	pthread_t t;
	struct later l = { token, 1, 150, NULL };
	pthread_create(&t, NULL, event_later, &l);
	n = poll_dev(dev, POLLIN, 5000, &rev, &took);
	pthread_join(t, NULL);
	CHECK(n == 1 && rev == POLLIN && took >= 100 && took < 4000, "a WAKE that comes while poll waits ends the wait",
	      "%d, revents %x after %ld ms", n, rev, took);

	int woken = 0;
	for (int i = 0; i < 20; i++) {
		mock_queue(token, 0);
		kc_side_drain(c);
		struct later r = { token, 1, 20, c };
		pthread_create(&t, NULL, event_later, &r);
		n = poll_dev(dev, POLLIN, 5000, &rev, &took);
		pthread_join(t, NULL);
		woken += n == 1 && rev == POLLIN && took < 4000;
	}
	CHECK(woken == 20, "a WAKE another thread reads off the channel wakes the poller too (20 rounds)", "%d of 20",
	      woken);

	mock_queue(token, 0);
	kc_side_drain(c);
	kc_lock();
	unsigned refs = c->refs;
	kc_unlock();
	pthread_create(&t, NULL, poll_forever, &dev);
	usleep(100000);
	pthread_cancel(t);
	void *status = NULL;
	pthread_join(t, &status);
	kc_lock();
	unsigned after = c->refs;
	kc_unlock();
	CHECK(status == PTHREAD_CANCELED && after == refs, "a thread cancelled in poll leaves the file as it was",
	      "%s, references %u, were %u", status == PTHREAD_CANCELED ? "cancelled" : "not cancelled", after, refs);

	int p[2];
	if (pipe(p) == 0 && write(p[1], "x", 1) == 1) {
		struct pollfd set[2] = { { dev, POLLIN, 0 }, { p[0], POLLIN, 0 } };
		struct timespec second = { 1, 0 };
		n = kc_cuse_poll(set, 2, &second, NULL, ppoll);
		CHECK(n == 1 && set[0].revents == 0 && set[1].revents == POLLIN,
		      "other descriptors in the set are polled as they are", "%d, revents %x %x", n, set[0].revents,
		      set[1].revents);
		close(p[0]);
		close(p[1]);
	}
	n = mock_queue(token, 2) ? poll_dev(dev, POLLIN, 1000, &rev, &took) : -1;
	CHECK(n == 1 && rev == (POLLERR | POLLHUP), "after a HUP, POLLERR and POLLHUP as kdbus gave them",
	      "%d, revents %x", n, rev);
}

/* The descriptors the epoll instance ep watches (its fdinfo's "tfd:" lines), up to max; how many. */
static int epoll_targets(int ep, int *tfds, int max)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
	FILE *f = fopen(path, "re");
	int n = 0, tfd;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "tfd: %d", &tfd) == 1 && n < max)
			tfds[n++] = tfd;
	if (f)
		fclose(f);
	return n;
}

#define EPOLL_TAG 0x6b64627573ULL

/* What epoll_wait reports at once: the number of events, the first one's mask and data. */
static int epoll_now(int ep, uint32_t *events, uint64_t *data)
{
	struct epoll_event e = { 0 };
	int n = epoll_wait(ep, &e, 1, 0);
	*events = e.events;
	*data = e.data.u64;
	return n;
}

static void test_epoll(struct kc_conn *c, int dev)
{
	const uint8_t *token = fake_last_token(dev);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EPOLL_TAG };
	int rc = kc_cuse_epoll_ctl(ep, EPOLL_CTL_ADD, dev, &ev, epoll_ctl);
	int t[4];
	int n = epoll_targets(ep, t, 4);
	CHECK(rc == 0 && c->ready >= 3 && n == 2 && t[0] != dev && t[1] != dev,
	      "EPOLL_CTL_ADD registers two stand-ins (the READY eventfd and the channel), not the device",
	      "rc %d, ready %d, %d targets", rc, c->ready, n);
	uint32_t got;
	uint64_t data;
	n = epoll_now(ep, &got, &data);
	CHECK(n == 0, "an empty queue: epoll_wait reports nothing", "%d events, %#x", n, got);

	/* The program's dup2 onto a stand-in's number (fd-ops.c evicts the shim's file first). */
	int taken = t[0], other = open("/dev/null", O_RDONLY | O_CLOEXEC);
	kc_lock();
	kc_conn_evict_locked(taken);
	kc_unlock();
	int dup_rc = dup2(other, taken);
	close(other);
	int t2[4];
	int n2 = epoll_targets(ep, t2, 4);
	bool moved = dup_rc == taken && n2 == 2 && t2[0] != taken && t2[1] != taken;
	n = mock_queue(token, 1) ? epoll_now(ep, &got, &data) : -1;
	CHECK(moved && n == 1 && got == EPOLLIN, "a dup2 onto a stand-in's number moves it, in the set too",
	      "dup2 %d, %d targets, %d events", dup_rc, n2, n);
	close(taken);
	mock_queue(token, 0);
	n = mock_queue(token, 1) ? epoll_now(ep, &got, &data) : -1;
	CHECK(n == 1 && got == EPOLLIN && data == EPOLL_TAG, "after a WAKE: EPOLLIN, with the program's data",
	      "%d events, %#x, data %#llx", n, got, (unsigned long long)data);
	n = mock_queue(token, 0) ? epoll_now(ep, &got, &data) : -1;
	CHECK(n == 0, "after EMPTY: nothing again", "%d events, %#x", n, got);

	uint64_t one = 1;
	bool empty = write(c->ready, &one, sizeof one) == sizeof one && kc_side_queue_empty(c);
	n = epoll_now(ep, &got, &data);
	CHECK(empty && n == 0, "the channel saying the queue is empty, the shim empties a count the daemon left",
	      "empty %d, %d events", empty, n);
	bool woken = mock_queue(token, 1) && write(c->ready, &one, sizeof one) == sizeof one;
	uint64_t count = 0;
	empty = kc_side_queue_empty(c);
	n = read(c->ready, &count, sizeof count) == sizeof count ? 1 : 0;
	CHECK(woken && !empty && n == 1 && count == 2, "after a WAKE it leaves the count alone", "empty %d, count %llu",
	      empty, (unsigned long long)count);
	mock_queue(token, 0);

	ev.events = EPOLLOUT;
	rc = kc_cuse_epoll_ctl(ep, EPOLL_CTL_MOD, dev, &ev, epoll_ctl);
	n = epoll_now(ep, &got, &data);
	CHECK(rc == 0 && n == 1 && got == EPOLLOUT && data == EPOLL_TAG, "EPOLL_CTL_MOD to EPOLLOUT: writable at once",
	      "rc %d, %d events, %#x", rc, n, got);
	ev.events = EPOLLIN;
	rc = kc_cuse_epoll_ctl(ep, EPOLL_CTL_MOD, dev, &ev, epoll_ctl);
	errno = 0;
	int again = kc_cuse_epoll_ctl(ep, EPOLL_CTL_ADD, dev, &ev, epoll_ctl);
	CHECK(rc == 0 && again == -1 && errno == EEXIST, "MOD back; a second ADD fails with EEXIST", "rc %d, %d, %s", rc,
	      again, strerror(errno));
	rc = kc_cuse_epoll_ctl(ep, EPOLL_CTL_DEL, dev, NULL, epoll_ctl);
	errno = 0;
	again = kc_cuse_epoll_ctl(ep, EPOLL_CTL_DEL, dev, NULL, epoll_ctl);
	n = epoll_targets(ep, t, 4);
	/* The second goes to the kernel with the device, which here is /dev/null: no poll, so EPERM. */
	CHECK(rc == 0 && again == -1 && errno == EPERM && n == 0, "DEL takes both stand-ins out; a second DEL is the kernel's",
	      "rc %d, %d (%s), %d targets", rc, again, strerror(errno), n);

	rc = kc_cuse_epoll_ctl(ep, EPOLL_CTL_ADD, dev, &ev, epoll_ctl);
	n = mock_queue(token, 2) ? epoll_now(ep, &got, &data) : -1;
	CHECK(rc == 0 && n == 1 && got == EPOLLIN, "after a HUP: readable (the RECV that follows fails)", "rc %d, %d events, %#x",
	      rc, n, got);
	shutdown(c->sock, SHUT_RDWR);
	struct epoll_event evs[2];
	n = epoll_wait(ep, evs, 2, 0);
	bool hup = false;
	for (int k = 0; k < n; k++)
		hup |= (evs[k].events & EPOLLHUP) && evs[k].data.u64 == EPOLL_TAG;
	CHECK(hup, "a channel the daemon closed reports EPOLLHUP, with the program's data", "%d events", n);
	/* The shim finds the channel broken when it next reads it. */
	kc_side_drain(c);
	n = epoll_targets(ep, t, 4);
	CHECK(kc_side_state(c) == KC_SIDE_FAILED && n == 0 && c->ready >= 0,
	      "a channel that broke takes its stand-ins out; the device itself goes back to the kernel (here /dev/null, which it refuses)",
	      "state %d, %d targets", (int)kc_side_state(c), n);
	kc_conn_closing(dev);
	close(dev);
	close(ep);

	int again_dev;
	struct kc_conn *d = attach_device(&again_dev);
	int ep2 = epoll_create1(EPOLL_CLOEXEC);
	rc = d ? kc_cuse_epoll_ctl(ep2, EPOLL_CTL_ADD, again_dev, &ev, epoll_ctl) : -1;
	kc_conn_closing(again_dev);
	close(again_dev);
	n = epoll_targets(ep2, t, 4);
	CHECK(rc == 0 && n == 0, "closing the device takes its stand-ins out of the set", "rc %d, %d targets", rc, n);
	close(ep2);
}

/* select() of the device alone, or with a pipe, for up to ms; what stayed set comes back in *readable. */
static int select_dev(int dev, int extra, int ms, bool *readable, bool *extra_readable, long *took_ms)
{
	fd_set r;
	FD_ZERO(&r);
	FD_SET(dev, &r);
	if (extra >= 0)
		FD_SET(extra, &r);
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000 };
	long start = now_ms();
	int n = kc_cuse_select((dev > extra ? dev : extra) + 1, &r, NULL, NULL, &t, NULL, ppoll);
	*took_ms = now_ms() - start;
	*readable = FD_ISSET(dev, &r);
	*extra_readable = extra >= 0 && FD_ISSET(extra, &r);
	return n;
}

static void test_select(struct kc_conn *c, int dev)
{
	(void)c;
	const uint8_t *token = fake_last_token(dev);
	bool readable, other;
	long took;
	fd_set w;
	FD_ZERO(&w);
	FD_SET(dev, &w);
	bool with = kc_cuse_select_wanted(dev + 1, NULL, &w, NULL), below = kc_cuse_select_wanted(dev, NULL, &w, NULL);
	CHECK(with && !below, "sets with the device are served here, sets without it go to libc", "%d %d", with, below);
	int n = select_dev(dev, -1, 100, &readable, &other, &took);
	CHECK(n == 0 && !readable && took >= 90, "on an empty queue select waits on the side channel, not on the device",
	      "%d, readable %d after %ld ms", n, readable, took);
	n = mock_queue(token, 1) ? select_dev(dev, -1, 1000, &readable, &other, &took) : -1;
	CHECK(n == 1 && readable && took < 500, "after a WAKE, readable at once", "%d, readable %d after %ld ms", n, readable,
	      took);
	struct timespec zero = { 0, 0 };
	n = kc_cuse_select(dev + 1, NULL, &w, NULL, &zero, NULL, ppoll);
	CHECK(n == 1 && FD_ISSET(dev, &w), "always writable", "%d", n);
	int p[2];
	if (pipe(p) == 0 && write(p[1], "x", 1) == 1) {
		n = mock_queue(token, 0) ? select_dev(dev, p[0], 1000, &readable, &other, &took) : -1;
		CHECK(n == 1 && !readable && other, "after EMPTY the device is cleared, a readable pipe in the set stays",
		      "%d, device %d, pipe %d", n, readable, other);
		close(p[0]);
		close(p[1]);
	}
	fd_set bad;
	FD_ZERO(&bad);
	FD_SET(dev, &bad);
	FD_SET(dev + 100, &bad);
	errno = 0;
	n = kc_cuse_select(dev + 101, &bad, NULL, NULL, &zero, NULL, ppoll);
	CHECK(n == -1 && errno == EBADF, "a descriptor that is not open in the sets: EBADF", "%d, %s", n, strerror(errno));
	n = mock_queue(token, 2) ? select_dev(dev, -1, 1000, &readable, &other, &took) : -1;
	CHECK(n == 1 && readable, "after a HUP, readable (as select reports POLLERR and POLLHUP)", "%d, readable %d", n,
	      readable);
}

static void test_refused(void)
{
	int dev = open("/dev/null", O_RDWR | O_CLOEXEC);
	fake_device(dev, false);
	char text[1024];
	int saved = stderr_capture();
	struct kc_conn *c = kc_cuse_probe(dev);
	int rc = c ? kc_side_attach(c, dev) : 0;
	stderr_text(saved, text, sizeof text);
	CHECK(c && rc == -EPERM && kc_side_state(c) == KC_SIDE_FAILED && c->side.n_reserved == 0 && c->sock == -1,
	      "a token the daemon refuses: attaching fails with EPERM and keeps nothing", "rc %d", rc);
	CHECK(occurrences(text, "cannot attach a CUSE kdbus descriptor to the daemon at") == 1 && strstr(text, sock_path),
	      "the failure is reported on stderr with the socket's path", "stderr: %s", text);
	const uint8_t *first = fake_last_token(dev);
	char token[16];
	memcpy(token, first, 16);
	CHECK(c && kc_side_attach(c, dev) == -EPERM && memcmp(token, fake_last_token(dev), 16) == 0,
	      "and is not tried again", "asked for another token");
	if (c)
		kc_conn_release(c);
	kc_conn_closing(dev);
	close(dev);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: cuse-test MOCK_DAEMON\n");
		return 2;
	}
	alarm(60);
	snprintf(dir, sizeof dir, "/tmp/kdbus-cuse-test-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(sock_path, sizeof sock_path, "%s/daemon.sock", dir);
	setenv("KDBUS_CUSE_SOCKET", sock_path, 1);
	pid_t mock = start_mock(argv[1]);
	ask = connect_mock();
	CHECK(mock > 0 && ask >= 0, "the mock daemon starts", "it did not listen");
	if (mock > 0 && ask >= 0) {
		test_not_ours();
		int dev;
		struct kc_conn *c = attach_device(&dev);
		if (c) {
			test_attach(c, dev);
			test_pool(c);
			test_answers_here(c, dev);
			test_recv(c, dev);
			test_lowest(c, dev);
			test_late(c, dev);
			test_no_wait(c, dev);
			test_taken_over(c, dev);
			test_threads(c, dev);
			test_fork(c, dev);
			test_close(c, dev);
		}
		struct kc_conn *heads = attach_device(&dev);
		if (heads)
			test_heads_here(heads, dev);
		struct kc_conn *polled = attach_device(&dev);
		if (polled)
			test_poll(polled, dev);
		struct kc_conn *selected = attach_device(&dev);
		if (selected)
			test_select(selected, dev);
		struct kc_conn *epolled = attach_device(&dev);
		if (epolled)
			test_epoll(epolled, dev);
		test_refused();
	}
	if (mock > 0) {
		kill(mock, SIGTERM);
		waitpid(mock, NULL, 0);
	}
	unlink(sock_path);
	rmdir(dir);
	return check_exit();
}
