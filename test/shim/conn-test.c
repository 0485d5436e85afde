/*
 * The shim's socket machinery end to end, against mock-daemon.c: run under LD_PRELOAD of
 * the shim as `conn-test MOCK_DAEMON`. It opens kdbus nodes below a temporary root, issues
 * ioctls whose answers the mock derives from what the shim sent (segments, FETCH answers,
 * passed files, credentials), maps the pool, and checks threads, fork, exec, poll, the
 * descriptor bookkeeping and the end of the stream; and that a character device below the
 * root that is not the daemon's is left to libc.
 */
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ioctl numbers as in docs/reference/kdbus-abi.md §2.3 (x86 values). */
#define CMD_HELLO 0xC0609580u
#define CMD_BYEBYE 0x40189582u
#define CMD_FREE 0x40209583u
#define CMD_CONN_INFO 0x80389584u
#define CMD_BUS_CREATOR_INFO 0x80389585u
#define CMD_SEND 0x40389590u
#define CMD_RECV 0x80409591u
#define CMD_MATCH_ADD 0x402095B0u
#define CMD_LIST 0x80289586u
#define POOL_SIZE (1u << 20)

static char root[80], sock_path[100], bus_path[128];

static void put64(void *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* The musl and glibc declarations of ioctl differ; this calls it the same way for both. */
static int kioctl(int fd, uint32_t cmd, void *arg)
{
	return ioctl(fd, cmd, arg);
}

static int hello(int fd, uint64_t out[12])
{
	memset(out, 0, 96);
	out[0] = 96;
	return kioctl(fd, CMD_HELLO, out);
}

/* FREE as the mock serves it: returns the u64 at *value plus one; *pid gets the caller's pid. */
static int mock_free(int fd, uint64_t *value, uint64_t *plus_one, uint64_t *pid)
{
	uint64_t s[4] = { 32, 0, 0, (uint64_t)(uintptr_t)value };
	int rc = kioctl(fd, CMD_FREE, s);
	*plus_one = s[2];
	*pid = s[3];
	return rc;
}

static size_t add_item(uint8_t *at, uint64_t type, const void *payload, size_t len)
{
	put64(at, 16 + len);
	put64(at + 8, type);
	memcpy(at + 16, payload, len);
	return (16 + len + 7) & ~(size_t)7;
}

struct send {
	uint64_t cmd[7];
	uint64_t msg[64];
};

/* A SEND with a vector of data and the given descriptors in an FDS item. */
static void build_send(struct send *s, uint64_t flags, const char *data, const int *fds, int n_fds, uint64_t *cookie)
{
	memset(s, 0, sizeof *s);
	uint8_t *m = (uint8_t *)s->msg;
	size_t at = 64;
	uint64_t vec[2] = { strlen(data), (uint64_t)(uintptr_t)data };
	at += add_item(m + at, 2, vec, 16);
	if (n_fds)
		at += add_item(m + at, 5, fds, sizeof(int) * (size_t)n_fds);
	s->msg[0] = at;
	s->msg[6] = (uint64_t)(uintptr_t)cookie;
	s->cmd[0] = 56;
	s->cmd[1] = flags;
	s->cmd[3] = (uint64_t)(uintptr_t)s->msg;
}

static int open_bus(int flags)
{
	return open(bus_path, O_RDWR | flags);
}

static void test_open_without_daemon(void)
{
	/* A socket file nobody listens on: connect's error, since the node itself exists. */
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
	bind(s, (struct sockaddr *)&a, sizeof a);
	errno = 0;
	int fd = open_bus(O_CLOEXEC);
	CHECK(fd == -1 && errno == ECONNREFUSED, "no daemon: open fails with connect's ECONNREFUSED", "fd %d errno %d",
	      fd, errno);
	char missing[320];
	snprintf(missing, sizeof missing, "%s/0-gone/bus", root);
	fd = open(missing, O_RDWR);
	CHECK(fd == -1 && errno == ENOENT, "no daemon, no node: ENOENT", "fd %d errno %d", fd, errno);
	close(s);
	unlink(sock_path);
}

static pid_t start_mock(const char *mock)
{
	pid_t pid = fork();
	if (pid == 0) {
		/* Never outlive the test, however it ends. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		unsetenv("LD_PRELOAD");
		execl(mock, mock, sock_path, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		int s = socket(AF_UNIX, SOCK_STREAM, 0);
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
		int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
		close(s);
		if (ok)
			return pid;
		usleep(10000);
	}
	return -1;
}

static void test_open(void)
{
	char path[320];
	snprintf(path, sizeof path, "%s/0-missing/bus", root);
	int fd = open(path, O_RDWR);
	CHECK(fd == -1 && errno == ENOENT, "the daemon's ENOENT", "fd %d errno %d", fd, errno);
	snprintf(path, sizeof path, "%s/0-denied/bus", root);
	fd = open(path, O_RDWR);
	CHECK(fd == -1 && errno == EACCES, "the daemon's EACCES", "fd %d errno %d", fd, errno);
	snprintf(path, sizeof path, "%s/0-test", root);
	fd = open(path, O_RDONLY | O_DIRECTORY);
	CHECK(fd >= 0, "a bus directory opens as a directory", "errno %d", errno);
	close(fd);

	fd = open_bus(O_CLOEXEC);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode), "open of the bus node gives the daemon socket",
	      "fd %d errno %d", fd, errno);
	CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "O_CLOEXEC is honoured", "flags %d", fcntl(fd, F_GETFD));
	close(fd);
	fd = open_bus(0);
	CHECK(fd >= 0 && fcntl(fd, F_GETFD) == 0, "without O_CLOEXEC the descriptor is inherited", "flags %d",
	      fcntl(fd, F_GETFD));
	close(fd);

	/* Relative and unnormalized paths resolve to the same node. */
	char cwd[256];
	if (getcwd(cwd, sizeof cwd) && chdir(root) == 0) {
		fd = open("./0-test//../0-test/bus", O_RDWR);
		CHECK(fd >= 0, "a relative path with . and .. below the root", "errno %d", errno);
		close(fd);
		int dir = open("0-test", O_RDONLY | O_DIRECTORY);
		if (chdir(cwd) == 0) {
			fd = openat(dir, "bus", O_RDWR);
			CHECK(fd >= 0 && fcntl(fd, F_GETFD) == 0, "openat relative to a directory below the root", "errno %d",
			      errno);
			close(fd);
		}
		close(dir);
	}
}

static void test_hello_and_pool(int fd)
{
	errno = 0;
	void *p = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(p == MAP_FAILED && errno == EBADFD, "mmap before HELLO: EBADFD", "errno %d", errno);

	uint64_t h[12];
	int rc = hello(fd, h);
	CHECK(rc == 0 && h[6] == 42 && h[7] == POOL_SIZE, "HELLO writes back id and pool size", "rc %d errno %d id %llu",
	      rc, errno, (unsigned long long)h[6]);

	p = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && memcmp(p, "POOLDATA", 8) == 0, "mmap maps the pool", "errno %d", errno);
	if (p != MAP_FAILED) {
		errno = 0;
		CHECK(mprotect(p, 4096, PROT_READ | PROT_WRITE) == -1 && errno == EACCES,
		      "mprotect(PROT_WRITE) on the pool fails", "errno %d", errno);
		munmap(p, POOL_SIZE);
	}
	p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(p != MAP_FAILED && mprotect(p, 4096, PROT_READ | PROT_WRITE) == -1,
	      "a private mapping of the pool cannot become writable either", "errno %d", errno);
	if (p != MAP_FAILED)
		munmap(p, 4096);
	errno = 0;
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p == MAP_FAILED && errno == EPERM, "mmap with PROT_WRITE: EPERM", "errno %d", errno);
	errno = 0;
	p = mmap(NULL, POOL_SIZE + 1, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(p == MAP_FAILED && errno == EFAULT, "mmap beyond the pool: EFAULT", "errno %d", errno);

	char buf[8];
	errno = 0;
	CHECK(read(fd, buf, 8) == -1 && errno == EINVAL, "read on a kdbus descriptor: EINVAL", "errno %d", errno);
	errno = 0;
	CHECK(write(fd, buf, 8) == -1 && errno == EINVAL, "write on a kdbus descriptor: EINVAL", "errno %d", errno);
	struct iovec iov = { buf, 8 };
	errno = 0;
	CHECK(readv(fd, &iov, 1) == -1 && errno == EINVAL, "readv on a kdbus descriptor: EINVAL", "errno %d", errno);
	errno = 0;
	CHECK(pwrite(fd, buf, 8, 0) == -1 && errno == EINVAL, "pwrite on a kdbus descriptor: EINVAL", "errno %d", errno);
}

static void test_send(int fd)
{
	static const char data[] = "payload!";
	int pipe_fds[2];
	if (pipe(pipe_fds) < 0 || write(pipe_fds[1], "12345", 5) != 5)
		return;
	int memfd = memfd_create("m", 0);
	if (write(memfd, "abc", 3) != 3)
		return;
	struct send s;
	int fds[2] = { pipe_fds[0], memfd };
	build_send(&s, 0, data, fds, 2, NULL);
	int rc = kioctl(fd, CMD_SEND, s.cmd);
	CHECK(rc == 0 && s.cmd[4] == strlen(data) && s.cmd[5] == 8 && s.cmd[6] == 2,
	      "SEND: vector data and passed files reach the daemon", "rc %d errno %d: %llu %llu %llu", rc, errno,
	      (unsigned long long)s.cmd[4], (unsigned long long)s.cmd[5], (unsigned long long)s.cmd[6]);

	/* The vector points into a page that cannot be read: the daemon FETCHes and gets EFAULT. */
	char *bad = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	build_send(&s, 0, data, NULL, 0, NULL);
	uint8_t *m = (uint8_t *)s.msg;
	put64(m + 64 + 16 + 8, (uint64_t)(uintptr_t)bad);
	errno = 0;
	rc = kioctl(fd, CMD_SEND, s.cmd);
	CHECK(rc == -1 && errno == EFAULT, "SEND with an unreadable vector: EFAULT", "rc %d errno %d", rc, errno);

	int closed = dup(pipe_fds[0]);
	close(closed);
	int bad_fds[1] = { closed };
	build_send(&s, 0, data, bad_fds, 1, NULL);
	errno = 0;
	rc = kioctl(fd, CMD_SEND, s.cmd);
	CHECK(rc == -1 && errno == EBADF, "SEND naming a closed descriptor: EBADF", "rc %d errno %d", rc, errno);

	errno = 0;
	rc = kioctl(fd, CMD_SEND, (void *)bad);
	CHECK(rc == -1 && errno == EFAULT, "an ioctl whose struct cannot be read: EFAULT", "rc %d errno %d", rc, errno);

	uint64_t *ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro[0] = 56;
	mprotect(ro, 4096, PROT_READ);
	errno = 0;
	rc = kioctl(fd, CMD_CONN_INFO, ro);
	CHECK(rc == -1 && errno == EFAULT, "a write-back into read-only memory: EFAULT", "rc %d errno %d", rc, errno);
	munmap(ro, 4096);
	munmap(bad, 4096);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	close(memfd);
}

static void test_recv(int fd)
{
	uint64_t r[8] = { 64 };
	int rc = kioctl(fd, CMD_RECV, r);
	int a = (int)r[5], b = (int)r[6];
	char buf[4] = { 0 }, buf2[4] = { 0 };
	CHECK(rc == 0 && r[7] == 32, "RECV offers 32 reserved numbers", "rc %d errno %d offered %llu", rc, errno,
	      (unsigned long long)r[7]);
	CHECK(rc == 0 && read(a, buf, 2) == 2 && read(b, buf2, 2) == 2 && strcmp(buf, "r0") == 0 &&
		      strcmp(buf2, "r1") == 0,
	      "installed files are on the numbers the daemon wrote", "fds %d %d: \"%s\" \"%s\"", a, b, buf, buf2);
	CHECK(fcntl(a, F_GETFD) == FD_CLOEXEC && fcntl(b, F_GETFD) == FD_CLOEXEC, "installed files are close-on-exec",
	      "flags %d %d", fcntl(a, F_GETFD), fcntl(b, F_GETFD));
	CHECK(close(a) == 0 && close(b) == 0 && fcntl(a, F_GETFD) == -1, "installed files are the program's to close",
	      "errno %d", errno);
}

static void test_fetch_and_misc(int fd)
{
	uint64_t value = 41, plus, pid;
	int rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == 0 && plus == 42 && pid == (uint64_t)getpid(), "FETCH answered from the caller's memory",
	      "rc %d errno %d plus %llu pid %llu", rc, errno, (unsigned long long)plus, (unsigned long long)pid);
	void *bad = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	errno = 0;
	rc = mock_free(fd, bad, &plus, &pid);
	CHECK(rc == -1 && errno == EFAULT, "FETCH of unreadable memory: EFAULT", "rc %d errno %d", rc, errno);
	munmap(bad, 4096);

	uint64_t s[4] = { 32 };
	errno = 0;
	CHECK(kioctl(fd, 0x40209599u, s) == -1 && errno == ENOTTY, "an unknown kdbus ioctl: the daemon's ENOTTY",
	      "errno %d", errno);
	int n = 0;
	errno = 0;
	CHECK(ioctl(fd, FIONREAD, &n) == -1 && errno == ENOTTY, "a non-kdbus ioctl on a kdbus descriptor: ENOTTY",
	      "errno %d", errno);
	int on = 1;
	CHECK(ioctl(fd, FIONBIO, &on) == 0 && (fcntl(fd, F_GETFL) & O_NONBLOCK), "FIONBIO is the VFS's, as for kdbus",
	      "errno %d", errno);
	value = 1;
	rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == 0 && plus == 2, "ioctls block as kdbus's did on a non-blocking descriptor", "rc %d errno %d", rc,
	      errno);
	on = 0;
	ioctl(fd, FIONBIO, &on);

	int d = dup(fd);
	close(fd);
	value = 7;
	rc = mock_free(d, &value, &plus, &pid);
	CHECK(rc == 0 && plus == 8, "a dup of a kdbus descriptor is the same connection", "rc %d errno %d", rc, errno);
	CHECK(dup2(d, fd) == fd && mock_free(fd, &value, &plus, &pid) == 0 && plus == 8, "dup2 gives it back",
	      "errno %d", errno);
	close(d);
}

static void test_poll(int fd)
{
	uint64_t m[4] = { 32 };
	struct pollfd p = { .fd = fd, .events = POLLIN };
	CHECK(poll(&p, 1, 0) == 0, "an idle connection does not poll readable", "revents %x", p.revents);
	int rc = kioctl(fd, CMD_MATCH_ADD, m);
	CHECK(rc == 0 && poll(&p, 1, 2000) == 1 && (p.revents & POLLIN), "a WAKE makes the descriptor poll readable",
	      "rc %d revents %x", rc, p.revents);
	uint64_t value = 1, plus, pid;
	rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == 0 && plus == 2 && poll(&p, 1, 0) == 0, "the next ioctl consumes the WAKE", "rc %d revents %x", rc,
	      p.revents);
}

struct sync_send {
	int fd;
	int rc, err;
	struct send s;
	uint64_t *cookie;
};

static void *sync_sender(void *arg)
{
	struct sync_send *t = arg;
	build_send(&t->s, 1, "x", NULL, 0, t->cookie);
	t->rc = kioctl(t->fd, CMD_SEND, t->s.cmd);
	t->err = errno;
	return NULL;
}

static uint64_t process_value;

/* In a forked child: FETCH and RECV while the parent's thread waits for its reply, then BYEBYE. */
static int child_requests(int fd)
{
	process_value = 2222;
	uint64_t value = 100, plus, pid;
	if (mock_free(fd, &value, &plus, &pid) != 0 || plus != 101 || pid != (uint64_t)getpid())
		return 1;
	uint64_t r[8] = { 64 };
	char buf[4] = { 0 };
	if (kioctl(fd, CMD_RECV, r) != 0 || read((int)r[5], buf, 2) != 2 || strcmp(buf, "r0") != 0)
		return 2;
	uint64_t b[3] = { 24 };
	if (kioctl(fd, CMD_BYEBYE, b) != 0)
		return 3;
	return 0;
}

static void test_concurrency(int fd)
{
	process_value = 1111;
	struct sync_send t = { .fd = fd, .cookie = &process_value };
	pthread_t th;
	pthread_create(&th, NULL, sync_sender, &t);
	usleep(200000);
	uint64_t value = 5, plus, pid;
	int rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == 0 && plus == 6, "another thread's ioctl is answered while a SEND waits for its reply",
	      "rc %d errno %d", rc, errno);
	pid_t child = fork();
	if (child == 0)
		_exit(child_requests(fd));
	int status = -1;
	waitpid(child, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "a forked child's FETCH, RECV and BYEBYE on the shared connection", "child status %d", status);
	pthread_join(th, NULL);
	CHECK(t.rc == 0 && t.s.cmd[4] == 7 && t.s.cmd[6] == 1111, "the parent's SEND gets its reply, FETCHed from the parent",
	      "rc %d errno %d: %llu %llu", t.rc, t.err, (unsigned long long)t.s.cmd[4], (unsigned long long)t.s.cmd[6]);
}

struct hammer {
	int fd, failures;
};

static void *hammer(void *arg)
{
	struct hammer *h = arg;
	for (int i = 0; i < 300; i++) {
		uint64_t value = (uint64_t)i, plus, pid;
		if (i % 50 == 0) {
			uint64_t r[8] = { 64 };
			if (kioctl(h->fd, CMD_RECV, r) != 0 || close((int)r[5]) != 0 || close((int)r[6]) != 0)
				h->failures++;
		} else if (mock_free(h->fd, &value, &plus, &pid) != 0 || plus != (uint64_t)i + 1) {
			h->failures++;
		}
	}
	return NULL;
}

static void test_threads(int fd)
{
	struct hammer h[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		h[i] = (struct hammer){ fd, 0 };
		pthread_create(&th[i], NULL, hammer, &h[i]);
	}
	int failures = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		failures += h[i].failures;
	}
	CHECK(failures == 0, "four threads, 1200 ioctls on one connection", "%d failed", failures);
}

/* The shim's own descriptor of the connection's socket: another number for the same file. */
static int find_own_socket(int fd)
{
	struct stat want, st;
	if (fstat(fd, &want) < 0)
		return -1;
	for (int other = 3; other < 1024; other++)
		if (other != fd && fstat(other, &st) == 0 && st.st_dev == want.st_dev && st.st_ino == want.st_ino)
			return other;
	return -1;
}

static int send_one_fd(int fd)
{
	int pipe_fds[2];
	if (pipe(pipe_fds) < 0 || write(pipe_fds[1], "xy", 2) != 2)
		return -1;
	struct send s;
	build_send(&s, 0, "z", pipe_fds, 1, NULL);
	int rc = kioctl(fd, CMD_SEND, s.cmd);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	return rc == 0 && s.cmd[5] == 2 && s.cmd[6] == 1 ? 0 : -1;
}

static void test_own_descriptors(int fd)
{
	int own = find_own_socket(fd);
	CHECK(own >= 3, "the shim's own socket descriptor is above stdio", "at %d", own);
	for (int i = 3; i < 1024; i++)
		if (i != fd)
			close(i);
	CHECK(find_own_socket(fd) == own && send_one_fd(fd) == 0,
	      "closing every other descriptor leaves the shim's own alone", "own socket now %d", find_own_socket(fd));
	uint64_t r[8] = { 64 };
	char got[3] = { 0 };
	CHECK(kioctl(fd, CMD_RECV, r) == 0 && read((int)r[5], got, 2) == 2 && strcmp(got, "r0") == 0 && r[7] == 32,
	      "the reserve survives it too", "errno %d, got \"%s\"", errno, got);
	close((int)r[5]);
	close((int)r[6]);
	int null = open("/dev/null", O_RDONLY);
	CHECK(dup2(null, own) == own && find_own_socket(fd) >= 0 && find_own_socket(fd) != own && send_one_fd(fd) == 0,
	      "dup2 onto the shim's socket descriptor moves it", "own socket now %d", find_own_socket(fd));
	close(own);
	close(null);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
	int high = dup2(fd, 900);
	uint64_t value = 3, plus, pid;
	CHECK(high == 900 && close_range(3, 899, 0) == 0 && mock_free(high, &value, &plus, &pid) == 0 && plus == 4 &&
		      send_one_fd(high) == 0,
	      "close_range steps around the shim's descriptors", "errno %d", errno);
	CHECK(fcntl(fd, F_GETFD) == -1, "close_range closed the program's kdbus descriptor in the range", "open");
	dup2(high, fd);
	close(high);
#endif
}

/* After exec: the inherited descriptor is recognized, files pass, its pool is fetched. */
static int after_exec(int fd)
{
	uint64_t value = 9, plus, pid;
	CHECK(mock_free(fd, &value, &plus, &pid) == 0 && plus == 10 && pid == (uint64_t)getpid(),
	      "after exec: ioctls on the inherited descriptor", "errno %d", errno);
	CHECK(send_one_fd(fd) == 0, "after exec: descriptors pass with an ioctl", "errno %d", errno);
	void *p = mmap(NULL, POOL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && memcmp(p, "POOLDATA", 8) == 0, "after exec: mmap asks for the pool", "errno %d", errno);
	return check_exit();
}

static void test_exec(int fd, const char *self)
{
	pid_t child = fork();
	if (child == 0) {
		if (dup2(fd, 100) != 100)
			_exit(126);
		execl(self, self, "--after-exec", "100", (char *)NULL);
		_exit(127);
	}
	int status = -1;
	waitpid(child, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a child exec'ed with the descriptor uses it",
	      "status %d", status);
}

static void test_hangup(int fd)
{
	uint64_t s[7] = { 56 };
	int rc = kioctl(fd, CMD_BUS_CREATOR_INFO, s);
	struct pollfd p = { .fd = fd, .events = POLLIN };
	CHECK(rc == 0 && poll(&p, 1, 2000) == 1 && p.revents == (POLLERR | POLLHUP),
	      "after HUP the descriptor polls POLLERR|POLLHUP, as kdbus's did", "rc %d revents %x", rc, p.revents);
	uint64_t value = 1, plus, pid;
	errno = 0;
	rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == -1 && errno == ECONNRESET, "after HUP and the end of the stream: ECONNRESET", "rc %d errno %d", rc,
	      errno);
	errno = 0;
	rc = mock_free(fd, &value, &plus, &pid);
	CHECK(rc == -1 && errno == ECONNRESET, "and it stays so", "rc %d errno %d", rc, errno);
	p.revents = 0;
	CHECK(poll(&p, 1, 0) == 1 && p.revents == (POLLERR | POLLHUP), "so does the ended stream", "revents %x", p.revents);
	CHECK(close(fd) == 0, "the dead descriptor closes", "errno %d", errno);
}

/*
 * A character device below the root is a CUSE node: libc opens it and the kernel serves it.
 * This one is /dev/null (there is no CUSE here), which refuses the daemon's token, so the
 * shim leaves everything to it.
 */
static void test_cuse_device(void)
{
	char path[320];
	snprintf(path, sizeof path, "%s/0-cuse/bus", root);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode), "a character device below the root is libc's to open",
	      "fd %d errno %d", fd, errno);
	uint64_t r[8] = { 64 };
	errno = 0;
	CHECK(kioctl(fd, CMD_RECV, r) == -1 && errno == ENOTTY, "RECV on a device that is not the daemon's: its own ENOTTY",
	      "errno %d", errno);
	errno = 0;
	void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(p == MAP_FAILED && errno == ENODEV, "mmap of it: its own ENODEV", "errno %d", errno);
	int d = dup(fd);
	close(fd);
	CHECK(write(d, "x", 1) == 1 && close(d) == 0, "its descriptors stay the program's", "errno %d", errno);
}

/* How many CLOSE frames the mock has seen, asked over connection fd. */
static uint64_t closes_seen(int fd)
{
	uint64_t l[5] = { 40 };
	return kioctl(fd, CMD_LIST, l) == 0 ? l[3] : ~0ull;
}

static void test_release(void)
{
	int observer = open_bus(O_CLOEXEC);
	uint64_t before = closes_seen(observer);
	int a = open_bus(O_CLOEXEC);
	close(a);
	CHECK(closes_seen(observer) == before + 1, "the last close releases the handle before close() returns",
	      "%llu CLOSEs, %llu before", (unsigned long long)closes_seen(observer), (unsigned long long)before);

	a = open_bus(O_CLOEXEC);
	int b = dup(a);
	close(a);
	CHECK(closes_seen(observer) == before + 1, "a dup keeps the connection open", "CLOSE sent");
	close(b);
	CHECK(closes_seen(observer) == before + 2, "closing the dup too releases it", "no CLOSE");

	a = open_bus(O_CLOEXEC);
	int go[2];
	if (pipe(go) < 0)
		return;
	pid_t child = fork();
	if (child == 0) {
		char c;
		close(go[1]);
		if (read(go[0], &c, 1) != 1)
			_exit(1);
		close(a);
		_exit(0);
	}
	close(go[0]);
	close(a);
	CHECK(closes_seen(observer) == before + 2, "a forked child's reference keeps the connection open", "CLOSE sent");
	if (write(go[1], "x", 1) != 1)
		return;
	waitpid(child, NULL, 0);
	CHECK(closes_seen(observer) == before + 3, "the child's close releases it", "no CLOSE");
	close(go[1]);

	a = open_bus(O_CLOEXEC);
	child = fork();
	if (child == 0)
		_exit(0);
	waitpid(child, NULL, 0);
	close(a);
	CHECK(closes_seen(observer) == before + 4, "a child that exited without closing holds nothing", "no CLOSE");
	close(observer);
}

/* What the mock saw on its exact bus, as CONN_INFO tells it there. */
static void mock_counts(int fd, uint64_t *unanswered_frees, uint64_t *recvs, uint64_t *unanswered_recvs,
			uint64_t *bad_frees)
{
	uint64_t s[7] = { 56 };
	if (kioctl(fd, CMD_CONN_INFO, s) < 0)
		s[3] = s[4] = s[5] = s[6] = UINT64_MAX;
	*unanswered_frees = s[3];
	*recvs = s[4];
	*unanswered_recvs = s[5];
	*bad_frees = s[6];
}

static void exact_counts(int fd, uint64_t *unanswered_frees, uint64_t *recvs, uint64_t *bad_frees)
{
	uint64_t unanswered_recvs;
	mock_counts(fd, unanswered_frees, recvs, &unanswered_recvs, bad_frees);
}

/*
 * Against a daemon whose WAKEs follow its queue exactly (HELLO says so): RECV on an empty
 * queue and FREE of a published slice are answered by the shim, as the daemon answers them.
 */
static void test_shortcuts(void)
{
	char path[160];
	snprintf(path, sizeof path, "%s/0-exact/bus", root);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint64_t h[12], frees, recvs, bad, r[8];
	CHECK(fd >= 0 && hello(fd, h) == 0, "HELLO on a bus whose WAKEs are exact", "errno %d", errno);
	memset(r, 0xaa, sizeof r);
	r[0] = 64;
	r[1] = 0;
	int rc = kioctl(fd, CMD_RECV, r);
	int err = errno;
	exact_counts(fd, &frees, &recvs, &bad);
	CHECK(rc == -1 && err == EAGAIN && recvs == 0, "RECV on an empty queue: EAGAIN without asking the daemon",
	      "rc %d errno %d, %llu RECVs reached it", rc, err, (unsigned long long)recvs);
	CHECK(r[2] == 0 && r[4] == 0 && r[5] == POOL_SIZE && r[6] == 0 && r[7] == 0,
	      "with the daemon's write-backs: no message, none lost", "return_flags %llx offset %llx",
	      (unsigned long long)r[2], (unsigned long long)r[5]);

	uint64_t m[4] = { 32 };
	rc = kioctl(fd, CMD_MATCH_ADD, m); /* queues a message: a WAKE waits on the socket */
	memset(r, 0, sizeof r);
	r[0] = 64;
	rc = rc ? rc : kioctl(fd, CMD_RECV, r);
	uint64_t slice = r[5];
	exact_counts(fd, &frees, &recvs, &bad);
	CHECK(rc == 0 && slice == 0x2000 && recvs == 1, "RECV with a WAKE waiting goes to the daemon",
	      "rc %d errno %d slice %llx, %llu RECVs", rc, errno, (unsigned long long)slice, (unsigned long long)recvs);
	rc = kioctl(fd, CMD_RECV, r);
	err = errno;
	exact_counts(fd, &frees, &recvs, &bad);
	CHECK(rc == -1 && err == EAGAIN && recvs == 1, "once the queue is empty again, RECV is answered here",
	      "rc %d errno %d, %llu RECVs", rc, err, (unsigned long long)recvs);

	uint64_t f[4] = { 32, 0, 0xaa, slice };
	rc = kioctl(fd, CMD_FREE, f);
	exact_counts(fd, &frees, &recvs, &bad);
	CHECK(rc == 0 && f[2] == 0 && frees == 1 && bad == 0,
	      "FREE of the published slice: answered here, sent on without waiting", "rc %d errno %d, %llu/%llu frees",
	      rc, errno, (unsigned long long)frees, (unsigned long long)bad);
	rc = kioctl(fd, CMD_FREE, f);
	err = errno;
	exact_counts(fd, &frees, &recvs, &bad);
	CHECK(rc == -1 && err == ENXIO && frees == 1, "a second FREE of it goes to the daemon: ENXIO",
	      "rc %d errno %d, %llu frees without answer", rc, err, (unsigned long long)frees);
	close(fd);
}

/*
 * Against a daemon that names the message a plain RECV takes next (HEAD): such a RECV is
 * answered by the shim and sent on without waiting; once the shim cannot know, RECV asks.
 */
static void test_heads(void)
{
	char path[160];
	snprintf(path, sizeof path, "%s/0-heads/bus", root);
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint64_t h[12], frees, recvs, taken, bad, r[8];
	CHECK(fd >= 0 && hello(fd, h) == 0, "HELLO on a bus that sends HEADs", "errno %d", errno);
	uint64_t m[4] = { 32 };
	int rc = kioctl(fd, CMD_MATCH_ADD, m);
	rc = rc ? rc : kioctl(fd, CMD_MATCH_ADD, m); /* two messages queued; a HEAD names the first */
	memset(r, 0xaa, sizeof r);
	r[0] = 64;
	r[1] = 0;
	rc = rc ? rc : kioctl(fd, CMD_RECV, r);
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(rc == 0 && recvs == 0 && taken == 1, "a plain RECV is answered from the HEAD, and sent on unanswered",
	      "rc %d errno %d, %llu RECVs answered, %llu unanswered", rc, errno, (unsigned long long)recvs,
	      (unsigned long long)taken);
	CHECK(r[2] == 0 && r[4] == 0 && r[5] == 0x2000 && r[6] == 0x80 && r[7] == 0,
	      "with kdbus's write-backs: the slice the HEAD named, none lost, no flags",
	      "return_flags %llx dropped %llx offset %llx size %llx flags %llx", (unsigned long long)r[2],
	      (unsigned long long)r[4], (unsigned long long)r[5], (unsigned long long)r[6], (unsigned long long)r[7]);
	memset(r, 0, sizeof r);
	r[0] = 64;
	rc = kioctl(fd, CMD_RECV, r);
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(rc == 0 && r[5] == 0x2100 && recvs == 0 && taken == 2, "the next HEAD answers the next RECV",
	      "rc %d offset %llx, %llu/%llu", rc, (unsigned long long)r[5], (unsigned long long)recvs, (unsigned long long)taken);
	uint64_t f[4] = { 32, 0, 0xaa, 0x2000 };
	rc = kioctl(fd, CMD_FREE, f);
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(rc == 0 && frees == 1 && bad == 0, "the slice it published is FREEd without waiting",
	      "rc %d errno %d, %llu/%llu frees", rc, errno, (unsigned long long)frees, (unsigned long long)bad);
	memset(r, 0, sizeof r);
	r[0] = 64;
	rc = kioctl(fd, CMD_RECV, r);
	int err = errno;
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(rc == -1 && err == EAGAIN && recvs == 0, "a RESULT with no event after it says the queue is empty",
	      "rc %d errno %d, %llu RECVs answered", rc, err, (unsigned long long)recvs);
	rc = kioctl(fd, CMD_MATCH_ADD, m); /* one message, alone: its HEAD says LAST */
	memset(r, 0, sizeof r);
	r[0] = 64;
	rc = rc ? rc : kioctl(fd, CMD_RECV, r);
	uint64_t offset = r[5];
	rc = rc ? rc : kioctl(fd, CMD_RECV, r);
	err = errno;
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(offset == 0x2200 && rc == -1 && err == EAGAIN && recvs == 0 && taken == 3,
	      "after the message a HEAD said was alone, the next RECV is EAGAIN from the shim",
	      "offset %llx rc %d errno %d, %llu/%llu", (unsigned long long)offset, rc, err, (unsigned long long)recvs,
	      (unsigned long long)taken);
	rc = kioctl(fd, CMD_MATCH_ADD, m);
	memset(r, 0, sizeof r);
	r[0] = 64;
	r[1] = 1; /* KDBUS_RECV_PEEK */
	rc = rc ? rc : kioctl(fd, CMD_RECV, r);
	mock_counts(fd, &frees, &recvs, &taken, &bad);
	CHECK(rc == 0 && recvs == 1 && taken == 3, "a RECV with flags goes to the daemon, HEAD or not",
	      "rc %d errno %d, %llu/%llu", rc, errno, (unsigned long long)recvs, (unsigned long long)taken);
	close(fd);
}

static void make_tree(void)
{
	char tmpl[] = "/tmp/kdbus-shim-test-XXXXXX";
	char *dir = mkdtemp(tmpl);
	snprintf(root, sizeof root, "%s/root", dir);
	snprintf(sock_path, sizeof sock_path, "%s/daemon.sock", dir);
	snprintf(bus_path, sizeof bus_path, "%s/0-test/bus", root);
	/* Before the first open of a node-like path: the shim reads its settings once, then. */
	setenv("KDBUS_CUSE_ROOT", root, 1);
	setenv("KDBUS_CUSE_SOCKET", sock_path, 1);
	char path[320];
	mkdir(root, 0755);
	snprintf(path, sizeof path, "%s/0-test", root);
	mkdir(path, 0755);
	/* The placeholders the daemon would make; mknod, since open() of these paths is the shim's. */
	mknod(bus_path, S_IFREG | 0666, 0);
	snprintf(path, sizeof path, "%s/control", root);
	mknod(path, S_IFREG | 0666, 0);
	snprintf(path, sizeof path, "%s/0-exact", root);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/0-exact/bus", root);
	mknod(path, S_IFREG | 0666, 0);
	snprintf(path, sizeof path, "%s/0-heads", root);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/0-heads/bus", root);
	mknod(path, S_IFREG | 0666, 0);
	snprintf(path, sizeof path, "%s/0-cuse", root);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/0-cuse/bus", root);
	if (symlink("/dev/null", path) < 0)
		perror("symlink");
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--after-exec") == 0)
		return after_exec(atoi(argv[2]));
	if (argc != 2) {
		fprintf(stderr, "usage: conn-test MOCK_DAEMON (run with LD_PRELOAD of the shim)\n");
		return 2;
	}
	/* A hang is a failure too; the mock dies with this process. */
	alarm(60);
	make_tree();
	test_open_without_daemon();
	pid_t mock = start_mock(argv[1]);
	CHECK(mock > 0, "the mock daemon starts", "it did not listen");
	if (mock < 0)
		return check_exit();
	test_open();
	test_cuse_device();
	test_release();
	test_shortcuts();
	test_heads();
	int fd = open_bus(O_CLOEXEC);
	test_hello_and_pool(fd);
	test_send(fd);
	test_recv(fd);
	test_fetch_and_misc(fd);
	test_poll(fd);
	test_concurrency(fd);
	test_threads(fd);
	test_own_descriptors(fd);
	fcntl(fd, F_SETFD, 0);
	test_exec(fd, "/proc/self/exe");
	test_hangup(fd);
	kill(mock, SIGTERM);
	waitpid(mock, NULL, 0);
	char cmd[300];
	unsetenv("LD_PRELOAD"); /* sh may be built against the other libc */
	snprintf(cmd, sizeof cmd, "rm -rf '%.*s'", (int)(strrchr(root, '/') - root), root);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", root);
	return check_exit();
}
