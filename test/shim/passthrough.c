/*
 * Exercises every function the shim interposes, on ordinary descriptors, and prints what
 * each call returned and left in errno. Run with and without the shim preloaded, the output
 * must be identical: the shim may not change anything for files that are not kdbus's.
 * Files named like kdbus nodes ("bus", "control", "1000-ep") outside the kdbus root are
 * included, since they take the shim's slower path.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* Only pass-through results that do not depend on descriptor numbers or addresses. */
#define SHOW(label, expr)                                                          \
	do {                                                                       \
		errno = 1234;                                                      \
		long r_ = (long)(expr);                                            \
		printf("%-28s %s errno=%d\n", label, r_ < 0 ? "-1" : "ok", errno); \
	} while (0)

static char dir[64];

static void files(void)
{
	char path[128];
	snprintf(path, sizeof path, "%s/bus", dir);
	int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	SHOW("open bus outside the root", fd);
	SHOW("fd is close-on-exec", fcntl(fd, F_GETFD) == FD_CLOEXEC ? 0 : -1);
	SHOW("write", write(fd, "hello world", 11));
	SHOW("pwrite", pwrite(fd, "HELLO", 5, 0));
	char buf[32] = { 0 };
	SHOW("pread", pread(fd, buf, 5, 0));
	printf("pread got %s\n", buf);
	SHOW("lseek", lseek(fd, 0, SEEK_SET));
	struct iovec iov[2] = { { buf, 3 }, { buf + 3, 8 } };
	SHOW("readv", readv(fd, iov, 2));
	printf("readv got %.11s\n", buf);
	SHOW("writev", writev(fd, iov, 2));
	SHOW("read at end", read(fd, buf, sizeof buf));
	SHOW("fsync", fsync(fd));
	SHOW("ioctl TCGETS on a file", ioctl(fd, TCGETS, buf));
	SHOW("ioctl kdbus type on a file", ioctl(fd, 0x40389590u, buf));
	void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	SHOW("mmap a file", p == MAP_FAILED ? -1 : 0);
	if (p != MAP_FAILED) {
		printf("mapped %.5s\n", (char *)p);
		munmap(p, 4096);
	}
	SHOW("close", close(fd));
	SHOW("close again", close(fd));
	SHOW("open O_EXCL existing", open(path, O_CREAT | O_EXCL | O_RDWR, 0600));

	snprintf(path, sizeof path, "%s/control", dir);
	SHOW("open missing control", open(path, O_RDONLY));
	snprintf(path, sizeof path, "%s/1000-ep", dir);
	SHOW("open missing endpoint", open(path, O_RDWR));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	SHOW("open directory", dfd);
	int f2 = openat(dfd, "bus", O_RDONLY);
	SHOW("openat relative bus", f2);
	SHOW("openat missing", openat(dfd, "control", O_RDONLY));
	SHOW("openat O_TMPFILE", openat(dfd, ".", O_TMPFILE | O_RDWR, 0600));
	close(f2);
	close(dfd);
	char cwd[256];
	if (getcwd(cwd, sizeof cwd) && chdir(dir) == 0) {
		int rel = open("bus", O_RDONLY);
		SHOW("open relative bus in cwd", rel);
		close(rel);
		SHOW("open ./bus/ (directory form)", open("./bus/", O_RDONLY));
		if (chdir(cwd) != 0)
			printf("chdir back failed\n");
	}
	FILE *f = fopen("/proc/self/status", "r");
	SHOW("fopen /proc/self/status", f ? 0 : -1);
	if (f)
		fclose(f);
	DIR *d = opendir(dir);
	int n = 0;
	while (d && readdir(d))
		n++;
	printf("directory entries %d\n", n);
	if (d)
		closedir(d);
}

#ifdef __GLIBC__
int __poll_chk(struct pollfd *fds, nfds_t nfds, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t nfds, const struct timespec *timeout, const sigset_t *sigmask, size_t fdslen);
#endif

static void descriptors(void)
{
	int p[2];
	SHOW("pipe", pipe(p));
	int d = dup(p[0]);
	SHOW("dup", d);
	SHOW("dup is inheritable", fcntl(d, F_GETFD));
	SHOW("dup2", dup2(p[0], d));
	SHOW("dup2 onto itself", dup2(d, d));
	SHOW("dup3 cloexec", dup3(p[0], d, O_CLOEXEC));
	SHOW("dup3 onto itself", dup3(d, d, 0));
	SHOW("F_DUPFD", fcntl(p[0], F_DUPFD, 50) >= 50 ? 0 : -1);
	SHOW("F_DUPFD_CLOEXEC", fcntl(p[0], F_DUPFD_CLOEXEC, 60) >= 60 ? 0 : -1);
	SHOW("F_SETFD", fcntl(d, F_SETFD, 0));
	SHOW("F_GETFL", fcntl(p[1], F_GETFL) & O_ACCMODE);
	SHOW("F_SETFL nonblock", fcntl(p[0], F_SETFL, O_NONBLOCK));
	char c;
	SHOW("read empty nonblocking pipe", read(p[0], &c, 1));
	int avail = -1;
	SHOW("write pipe", write(p[1], "xyz", 3));
	SHOW("ioctl FIONREAD", ioctl(p[0], FIONREAD, &avail));
	printf("FIONREAD %d\n", avail);
	struct pollfd pf[3] = { { p[0], POLLIN, 0 }, { p[1], POLLOUT, 0 }, { -1, POLLIN, 0 } };
	SHOW("poll a pipe", poll(pf, 3, 0));
	printf("poll revents %x %x %x\n", pf[0].revents, pf[1].revents, pf[2].revents);
	struct timespec none = { 0, 1000000 };
	pf[0].events = POLLPRI;
	SHOW("ppoll a pipe, timing out", ppoll(pf, 1, &none, NULL));
	printf("ppoll revents %x\n", pf[0].revents);
	pf[0].fd = 100000;
	SHOW("poll a closed descriptor", poll(pf, 1, 0));
	printf("poll revents %x\n", pf[0].revents);
#ifdef __GLIBC__
	/* What _FORTIFY_SOURCE makes of poll and ppoll on an array of known length. */
	pf[0] = (struct pollfd){ p[0], POLLIN, 0 };
	SHOW("__poll_chk a pipe", __poll_chk(pf, 3, 0, sizeof pf));
	printf("__poll_chk revents %x %x %x\n", pf[0].revents, pf[1].revents, pf[2].revents);
	SHOW("__ppoll_chk a pipe", __ppoll_chk(pf, 2, &none, NULL, sizeof pf));
	printf("__ppoll_chk revents %x %x\n", pf[0].revents, pf[1].revents);
#endif
	fd_set rs, ws;
	FD_ZERO(&rs);
	FD_ZERO(&ws);
	FD_SET(p[0], &rs);
	FD_SET(p[1], &ws);
	struct timeval tv0 = { 0, 0 };
	SHOW("select a pipe", select(p[1] + 1, &rs, &ws, NULL, &tv0));
	printf("select readable %d writable %d\n", FD_ISSET(p[0], &rs), FD_ISSET(p[1], &ws));
	FD_SET(p[0], &rs);
	SHOW("pselect a pipe", pselect(p[0] + 1, &rs, NULL, NULL, &none, NULL));
	int closed = dup(p[0]);
	close(closed);
	FD_ZERO(&rs);
	FD_SET(closed, &rs);
	SHOW("select a closed descriptor", select(closed + 1, &rs, NULL, NULL, &tv0));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 7 }, got = { 0 };
	SHOW("epoll_ctl ADD a pipe", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
	SHOW("epoll_ctl ADD it again", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev));
	SHOW("epoll_wait", epoll_wait(ep, &got, 1, 0));
	printf("epoll_wait events %x data %llu\n", got.events, (unsigned long long)got.data.u64);
	ev.events = EPOLLOUT;
	SHOW("epoll_ctl MOD", epoll_ctl(ep, EPOLL_CTL_MOD, p[0], &ev));
	SHOW("epoll_ctl DEL", epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL));
	SHOW("epoll_ctl DEL it again", epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL));
	SHOW("epoll_ctl a closed descriptor", epoll_ctl(ep, EPOLL_CTL_ADD, 100000, &ev));
	close(ep);
	SHOW("mmap a pipe", mmap(NULL, 4096, PROT_READ, MAP_SHARED, p[0], 0) == MAP_FAILED ? -1 : 0);
	void *anon = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	SHOW("mmap anonymous", anon == MAP_FAILED ? -1 : 0);
	SHOW("mprotect", mprotect(anon, 4096, PROT_READ));
	SHOW("munmap", munmap(anon, 8192));

	char path[128];
	snprintf(path, sizeof path, "%s/lockfile", dir);
	int lf = open(path, O_CREAT | O_RDWR, 0600);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
	SHOW("F_SETLK (pointer argument)", fcntl(lf, F_SETLK, &fl));
	fl.l_type = F_WRLCK;
	SHOW("F_GETLK (pointer argument)", fcntl(lf, F_GETLK, &fl));
	printf("F_GETLK type %s\n", fl.l_type == F_UNLCK ? "unlocked" : "locked");
	close(lf);

	int sv[2];
	SHOW("socketpair", socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
	SHOW("write socket", write(sv[0], "ping", 4));
	char buf[8] = { 0 };
	SHOW("read socket", read(sv[1], buf, 4));
	printf("socket got %s\n", buf);
	SHOW("mmap a socket", mmap(NULL, 4096, PROT_READ, MAP_SHARED, sv[0], 0) == MAP_FAILED ? -1 : 0);
	SHOW("ioctl kdbus type on a socket", ioctl(sv[0], 0x40389590u, buf));
	close(sv[0]);
	close(sv[1]);
	/* A character device: the shim asks it for the daemon's token once, and it refuses. */
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	SHOW("ioctl kdbus RECV on /dev/null", ioctl(null, 0x80409591u, buf));
	SHOW("mmap /dev/null", mmap(NULL, 4096, PROT_READ, MAP_SHARED, null, 0) == MAP_FAILED ? -1 : 0);
	SHOW("ioctl kdbus SEND on /dev/null", ioctl(null, 0x40389590u, buf));
	int null2 = dup(null);
	SHOW("close /dev/null", close(null));
	SHOW("write its dup", write(null2, "x", 1));
	SHOW("mmap its dup", mmap(NULL, 4096, PROT_READ, MAP_SHARED, null2, 0) == MAP_FAILED ? -1 : 0);
	close(null2);
	SHOW("close bad fd", close(-1));
	SHOW("read bad fd", read(-1, buf, 1));
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 34)
	int hi = fcntl(p[0], F_DUPFD, 200);
	fcntl(p[0], F_DUPFD, 201);
	SHOW("close_range", close_range((unsigned)hi, (unsigned)hi + 1, 0));
	SHOW("closed by close_range", fcntl(hi + 1, F_GETFD));
	fcntl(p[0], F_DUPFD, 300);
	closefrom(300);
	SHOW("closed by closefrom", fcntl(300, F_GETFD));
#endif
}

static void *worker(void *arg)
{
	int *p = arg;
	char c = 'w';
	for (int i = 0; i < 1000; i++)
		if (write(p[1], &c, 1) != 1 || read(p[0], &c, 1) != 1)
			return (void *)1;
	return NULL;
}

static void threads_and_fork(void)
{
	int p[4][2];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		if (pipe(p[i]) < 0)
			return;
		pthread_create(&t[i], NULL, worker, p[i]);
	}
	int bad = 0;
	for (int i = 0; i < 4; i++) {
		void *r;
		pthread_join(t[i], &r);
		bad += r != NULL;
		close(p[i][0]);
		close(p[i][1]);
	}
	printf("threads failed %d\n", bad);
	pid_t child = fork();
	if (child == 0) {
		int fd = open("/dev/null", O_WRONLY);
		_exit(write(fd, "x", 1) == 1 ? 7 : 1);
	}
	int status = 0;
	waitpid(child, &status, 0);
	printf("child exit %d\n", WEXITSTATUS(status));
}

/*
 * KC_EXPECT_SHIM=1 or 0 says whether the shim must be loaded, so a preload that silently
 * failed (musl ignores a bad LD_PRELOAD) cannot pass as "unchanged output".
 */
static int check_loaded(void)
{
	const char *expect = getenv("KC_EXPECT_SHIM");
	if (!expect)
		return 0;
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	int loaded = 0;
	while (maps && fgets(line, sizeof line, maps))
		loaded |= strstr(line, "libkdbus-cuse-shim.so") != NULL;
	if (maps)
		fclose(maps);
	if (loaded != (strcmp(expect, "1") == 0)) {
		fprintf(stderr, "passthrough: the shim is %s\n", loaded ? "loaded" : "not loaded");
		return 1;
	}
	return 0;
}

int main(void)
{
	if (check_loaded())
		return 3;
	snprintf(dir, sizeof dir, "/tmp/kdbus-shim-pass-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	files();
	descriptors();
	threads_and_fork();
	char cmd[128];
	snprintf(cmd, sizeof cmd, "%s/bus", dir);
	unlink(cmd);
	snprintf(cmd, sizeof cmd, "%s/lockfile", dir);
	unlink(cmd);
	rmdir(dir);
	return 0;
}
