/* The side channel of a CUSE kdbus file (see side-channel.h). */
#include "side-channel.h"
#include "config.h"
#include "conn.h"
#include "cuse-epoll.h"
#include "cuse-token.h"
#include "fd-table.h"
#include "frame.h"
#include "published.h"
#include "reserve.h"
#include "sock-io.h"
#include "sys.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>

/* Requests go one at a time under the page lock, so the next RESULT is theirs. */
#define REQUEST_SEQ 1
/* Side-channel frames are small: RESULTs without writes, INSTALLs of a message's numbers. */
#define FRAME_MAX 512
/* How long one waiter reads the channel before the others look at their numbers again. */
#define SLICE_MS 20

struct kc_side_page {
	pthread_mutex_t lock; /* held while reading or writing the channel */
	/*
	 * Guards what follows; held briefly and taken after lock when both are. Never held for
	 * I/O but one write: the RECV kc_side_take_head counted (see there).
	 */
	pthread_mutex_t state_lock;
	/* What the channel said of the queue: exact (ATTACH's RESULT), the last WAKE or EMPTY, HUP. */
	uint32_t exact, readable, hup;
	/*
	 * RECVs of the file since ATTACH, through the kernel or answered here: a HEAD's seq is
	 * compared with it. The last HEAD that matched names the message a plain RECV takes.
	 */
	uint64_t recvs;
	uint32_t head_valid;
	struct kc_head head;
	struct kc_published published;
	/*
	 * poll() on the channel (kc_side_poll_begin), atomic: the threads and processes waiting,
	 * and the frames read so far. Whoever lets go of the channel while some wait wakes them
	 * all through the file's eventfd (conn.h, wake), and notes that it did (nudged), so a
	 * poller reads the eventfd empty only when there is something in it.
	 */
	uint32_t pollers, frames, nudged;
};

struct frame {
	struct kc_header header;
	uint8_t data[FRAME_MAX];
	int fds[KC_MAX_RECEIVED_FDS];
	unsigned n_fds;
};

static struct kc_side_page *page_create(void)
{
	struct kc_side_page *p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&p->lock, &ma);
	pthread_mutex_init(&p->state_lock, &ma);
	pthread_mutexattr_destroy(&ma);
	return p;
}

/* A process that died holding the lock may have left a frame half read; the next read says so. */
static bool page_locked(struct kc_side_page *p, int rc)
{
	if (rc == EOWNERDEAD) {
		pthread_mutex_consistent(&p->lock);
		return true;
	}
	return rc == 0;
}

static void page_lock(struct kc_side_page *p)
{
	page_locked(p, pthread_mutex_lock(&p->lock));
}

static bool page_trylock(struct kc_side_page *p)
{
	return page_locked(p, pthread_mutex_trylock(&p->lock));
}

static bool page_lock_for(struct kc_side_page *p, int ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += (long)ms * 1000000;
	until.tv_sec += until.tv_nsec / 1000000000;
	until.tv_nsec %= 1000000000;
	return page_locked(p, pthread_mutex_timedlock(&p->lock, &until));
}

/* Wakes the file's pollers through the eventfd. */
static void nudge(struct kc_conn *c, struct kc_side_page *p)
{
	uint64_t one = 1;
	/* Under kc_lock: a dup2 onto the number moves the eventfd (kc_conn_evict_locked). */
	kc_lock();
	/* A full counter (EAGAIN) is readable already. */
	if (c->wake >= 0)
		(void)!kc_sys_write(c->wake, &one, sizeof one);
	kc_unlock();
	/* After the write: a poller that sees the mark finds the count to read. */
	__atomic_store_n(&p->nudged, 1, __ATOMIC_SEQ_CST);
}

/*
 * Lets go of the channel; frames read under the lock are off the socket, so pollers waiting
 * on it would not see them, and pollers that could not take the lock may read it now.
 */
static void page_unlock(struct kc_conn *c, struct kc_side_page *p)
{
	pthread_mutex_unlock(&p->lock);
	if (__atomic_load_n(&p->pollers, __ATOMIC_SEQ_CST) > 0)
		nudge(c, p);
}

static void state_lock(struct kc_side_page *p)
{
	/* Its holder only ever sets whole words: what a dead one left is consistent. */
	if (pthread_mutex_lock(&p->state_lock) == EOWNERDEAD)
		pthread_mutex_consistent(&p->state_lock);
}

static void state_unlock(struct kc_side_page *p)
{
	pthread_mutex_unlock(&p->state_lock);
}

/* A WAKE, HEAD, EMPTY or HUP that arrived (f holds the whole frame). */
static void note_event(struct kc_side_page *p, const struct frame *f)
{
	uint32_t type = f->header.type;
	struct kc_head head;
	state_lock(p);
	if (type == KC_FRAME_HUP) {
		p->hup = 1;
	} else {
		p->readable = type != KC_FRAME_EMPTY;
		/* A bare WAKE withdraws the last HEAD; a HEAD from before the last RECV may name a message gone. */
		p->head_valid = type == KC_FRAME_HEAD && f->header.seq == p->recvs &&
				kc_head_decode(f->data + KC_FRAME_HEADER, KC_HEAD_FRAME - KC_FRAME_HEADER, &head) == 0;
		if (p->head_valid)
			p->head = head;
	}
	state_unlock(p);
}

static bool is_event(uint32_t type)
{
	return type == KC_FRAME_WAKE || type == KC_FRAME_HEAD || type == KC_FRAME_EMPTY || type == KC_FRAME_HUP;
}

/* Reports a problem of this file on stderr, the first time only; errno is kept. */
__attribute__((format(printf, 2, 3))) static void warn(struct kc_conn *c, const char *fmt, ...)
{
	int saved = errno;
	kc_lock();
	bool first = !c->side.warned;
	c->side.warned = true;
	kc_unlock();
	if (first) {
		char msg[512];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(msg, sizeof msg, fmt, ap);
		va_end(ap);
		dprintf(2, "kdbus-cuse shim: %s\n", msg);
	}
	errno = saved;
}

/* The channel broke: nothing more comes over it in this process. */
static void broke(struct kc_conn *c, int err)
{
	kc_lock();
	if (c->side.state == KC_SIDE_READY) {
		c->side.state = KC_SIDE_FAILED;
		c->side.err = err;
		/* Nothing keeps the readiness eventfd any more: the kernel's poll serves epoll again. */
		kc_cuse_epoll_fall_back_locked(c);
	}
	kc_unlock();
	warn(c, "the side channel of a CUSE kdbus descriptor broke (%s); files received from now on are lost",
	     strerror(err));
}

/* The attached channel: true with its socket and page, else false with why (-errno in *err). */
static bool ready(struct kc_conn *c, int *sock, struct kc_side_page **page, int *err)
{
	kc_lock();
	bool ok = c->side.state == KC_SIDE_READY && c->sock >= 0;
	*sock = c->sock;
	*page = c->side.page;
	*err = c->side.state == KC_SIDE_FAILED ? -c->side.err : -ENOTCONN;
	kc_unlock();
	return ok;
}

static int index_of(const struct kc_side *s, int number)
{
	for (unsigned i = 0; i < s->n_reserved; i++)
		if (s->reserved[i] == number)
			return (int)i;
	return -1;
}

static void remove_at(struct kc_side *s, int i)
{
	if (s->transient[i])
		s->n_transient--;
	s->n_reserved--;
	s->reserved[i] = s->reserved[s->n_reserved];
	s->transient[i] = s->transient[s->n_reserved];
}

/* Records numbers the daemon is about to hold. Under kc_lock. */
static void add_locked(struct kc_side *s, const int *numbers, unsigned n, bool transient)
{
	for (unsigned i = 0; i < n; i++) {
		s->reserved[s->n_reserved] = numbers[i];
		s->transient[s->n_reserved++] = transient;
	}
	if (transient)
		s->n_transient += n;
}

static void close_fds(struct frame *f)
{
	for (unsigned i = 0; i < f->n_fds; i++)
		if (f->fds[i] >= 0)
			kc_sys_close(f->fds[i]);
	f->n_fds = 0;
}

static int send_frame_fds(int sock, const uint8_t *frame, size_t len, const int *fds, unsigned n_fds)
{
	struct iovec iov = { (void *)frame, len };
	int rc = kc_send_all(sock, &iov, 1, fds, n_fds);
	return rc == -EPIPE || rc == -ECONNRESET ? -ESHUTDOWN : rc;
}

static int send_frame(int sock, const uint8_t *frame, size_t len)
{
	return send_frame_fds(sock, frame, len, NULL, 0);
}

/* Reads one whole frame, whose first bytes are there or coming. 0 or -errno. */
static int read_frame(int sock, struct frame *f)
{
	uint8_t raw[KC_FRAME_HEADER];
	f->n_fds = 0;
	int rc = kc_peek_header(sock, raw);
	if (rc == 0 && (kc_side_header_decode(raw, &f->header) < 0 || f->header.length > FRAME_MAX))
		rc = -EPROTO;
	if (rc == 0)
		rc = kc_recv_exact(sock, f->data, f->header.length, f->fds, KC_MAX_RECEIVED_FDS, &f->n_fds);
	if (rc)
		close_fds(f);
	return rc == -ECONNRESET ? -ESHUTDOWN : rc;
}

/*
 * Gives the daemon numbers again for those it used, so it always holds as many as a message
 * can bring. They are recorded before they are sent: a message may name them as soon as the
 * daemon has them. 0 or -errno.
 */
static int top_up(struct kc_conn *c, int sock)
{
	int numbers[KC_SIDE_RESERVE];
	kc_lock();
	int want = KC_SIDE_RESERVE - (int)(c->side.n_reserved - c->side.n_transient);
	kc_unlock();
	int n = want > 0 ? kc_reserve_take_high(numbers, want) : 0;
	if (n == 0)
		return 0;
	kc_lock();
	add_locked(&c->side, numbers, (unsigned)n, false);
	kc_unlock();
	uint8_t frame[KC_NUMBERS_FRAME_MAX(KC_SIDE_RESERVE)];
	int rc = send_frame(sock, frame, kc_reserve_encode(frame, 0, numbers, (uint32_t)n, 0));
	if (rc) {
		kc_lock();
		for (int i = 0; i < n; i++) {
			int at = index_of(&c->side, numbers[i]);
			if (at >= 0)
				remove_at(&c->side, at);
		}
		kc_unlock();
		kc_reserve_return(numbers, n);
	}
	return rc;
}

/*
 * Puts an INSTALL's files on their numbers and tops the reserve up. A number this process did
 * not give the daemon (a forked relative's, or one the program has dup2'ed over since) gets
 * nothing: its file is closed. 0 or -errno.
 */
static int install(struct kc_conn *c, int sock, struct frame *f)
{
	int numbers[KC_MAX_RECEIVED_FDS];
	uint32_t n = 0;
	int rc = kc_install_decode(f->data + KC_FRAME_HEADER, f->header.length - KC_FRAME_HEADER, numbers,
				   KC_MAX_RECEIVED_FDS, &n);
	if (rc == 0 && n != f->n_fds)
		rc = -EPROTO;
	if (rc == 0) {
		kc_lock();
		for (uint32_t i = 0; i < n; i++) {
			int at = index_of(&c->side, numbers[i]);
			if (at >= 0) {
				kc_reserve_install_locked(numbers[i], f->fds[i]);
				remove_at(&c->side, at);
			}
		}
		kc_unlock();
	}
	close_fds(f);
	return rc ? rc : top_up(c, sock);
}

/* Applies the frames that have begun to arrive, until none has. Under the page lock. 0 or -errno. */
static int read_available(struct kc_conn *c, int sock)
{
	for (;;) {
		uint8_t byte;
		ssize_t n = recv(sock, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
		if (n == 0)
			return -ESHUTDOWN;
		struct frame f;
		int rc = read_frame(sock, &f);
		__atomic_add_fetch(&c->side.page->frames, 1, __ATOMIC_SEQ_CST);
		if (rc == 0 && is_event(f.header.type)) {
			note_event(c->side.page, &f);
			continue;
		}
		if (rc == 0 && f.header.type != KC_FRAME_INSTALL) {
			/* A RESULT nobody asked for. */
			close_fds(&f);
			rc = -EPROTO;
		}
		if (rc == 0)
			rc = install(c, sock, &f);
		if (rc)
			return rc;
	}
}

/* Sends a request and reads up to its RESULT, applying INSTALLs on the way. Under the page lock. */
static int request(struct kc_conn *c, int sock, const uint8_t *frame, size_t len, const int *fds, unsigned n_fds,
		   struct frame *result)
{
	int rc = send_frame_fds(sock, frame, len, fds, n_fds);
	while (rc == 0) {
		rc = read_frame(sock, result);
		__atomic_add_fetch(&c->side.page->frames, 1, __ATOMIC_SEQ_CST);
		if (rc == 0 && result->header.type == KC_FRAME_RESULT) {
			if (result->header.seq == REQUEST_SEQ)
				return 0;
			close_fds(result);
			rc = -EPROTO;
		}
		if (rc == 0 && is_event(result->header.type))
			note_event(c->side.page, result);
		else if (rc == 0)
			rc = install(c, sock, result);
	}
	return rc;
}

/* The decoded RESULT a request got: the command's -errno, or -EPROTO. */
static int result_of(const struct frame *f, struct kc_result *r)
{
	int rc = kc_result_decode(f->data + KC_FRAME_HEADER, f->header.length - KC_FRAME_HEADER, r);
	return rc ? rc : -r->err;
}

/* Connects to the daemon for a side channel: the socket (3 or above, close-on-exec) or -errno. */
static int connect_side(struct kc_ident *id)
{
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	struct stat st;
	if (kc_connect_daemon(sock) < 0 || (sock = kc_sys_settle_fd(sock, 1)) < 0 || fstat(sock, &st) < 0) {
		int err = errno;
		if (sock >= 0)
			kc_sys_close(sock);
		return -err;
	}
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	return sock;
}

/* Undoes what attach() recorded in c, once the daemon said no. */
static void detach(struct kc_conn *c)
{
	int numbers[KC_SIDE_CAPACITY];
	kc_lock();
	int sock = c->sock, wake = c->wake;
	struct kc_side_page *page = c->side.page;
	unsigned n = c->side.n_reserved;
	memcpy(numbers, c->side.reserved, sizeof(int) * n);
	if (sock >= 0)
		kc_fd_clear(sock);
	if (wake >= 0)
		kc_fd_clear(wake);
	c->sock = c->wake = -1;
	c->side.page = NULL;
	c->side.n_reserved = 0;
	c->side.n_transient = 0;
	kc_unlock();
	if (sock >= 0)
		kc_sys_close(sock);
	if (wake >= 0)
		kc_sys_close(wake);
	if (page)
		munmap(page, sizeof *page);
	kc_reserve_return(numbers, (int)n);
}

/*
 * An eventfd for the shim's own use (3 or above, close-on-exec, non-blocking), with its
 * identity; -1 if none could be made. The file's pollers' (wake) and its epoll stand-ins'
 * (ready) are such.
 */
static int make_eventfd(struct kc_ident *id)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct stat st;
	if (fd < 0 || (fd = kc_sys_settle_fd(fd, 1)) < 0)
		return -1;
	if (fstat(fd, &st) < 0) {
		kc_sys_close(fd);
		return -1;
	}
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	return fd;
}

static int attach(struct kc_conn *c, int fd)
{
	uint8_t token[KC_TOKEN_SIZE];
	if (kc_cuse_token(fd, token) < 0)
		return -ENOTTY;
	struct kc_side_page *page = page_create();
	if (!page)
		return -ENOMEM;
	struct kc_ident id;
	int sock = connect_side(&id);
	if (sock < 0) {
		munmap(page, sizeof *page);
		return sock;
	}
	struct kc_ident wake_id;
	int wake = make_eventfd(&wake_id);
	kc_lock();
	bool ok = kc_fd_set(sock, KC_FD_INTERNAL, c) == 0;
	if (ok) {
		c->sock = sock;
		c->sock_id = id;
		c->side.page = page;
	}
	if (ok && wake >= 0 && kc_fd_set(wake, KC_FD_INTERNAL, c) == 0) {
		c->wake = wake;
		c->wake_id = wake_id;
		wake = -1;
	}
	kc_unlock();
	if (wake >= 0)
		kc_sys_close(wake);
	if (!ok) {
		kc_sys_close(sock);
		munmap(page, sizeof *page);
		return -EMFILE;
	}
	/* No numbers yet: a file that only sends (or only maps its pool) would hold them for nothing. */
	uint8_t frame[KC_NUMBERS_FRAME_MAX(0)];
	size_t len = kc_attach_encode(frame, REQUEST_SEQ, token, NULL, 0, KC_OPEN_FEATURE_HEADS);
	struct frame result;
	struct kc_result r;
	page_lock(page);
	int rc = request(c, sock, frame, len, NULL, 0, &result);
	page_unlock(c, page);
	if (rc == 0) {
		rc = result_of(&result, &r);
		close_fds(&result);
	}
	if (rc) {
		detach(c);
		return rc;
	}
	/* The queue counts as empty from this RESULT on, until a WAKE (which follows it if due) says otherwise. */
	state_lock(page);
	page->exact = (r.flags & KC_RESULT_EXACT_WAKES) != 0;
	page->readable = 0;
	state_unlock(page);
	return 0;
}

enum kc_side_state kc_side_state(struct kc_conn *c)
{
	kc_lock();
	enum kc_side_state state = c->side.state;
	kc_unlock();
	return state;
}

int kc_side_attach(struct kc_conn *c, int fd)
{
	kc_lock();
	while (c->side.state == KC_SIDE_ATTACHING) {
		/* Another thread is at it; it takes a moment, once per file. */
		kc_unlock();
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
		kc_lock();
	}
	enum kc_side_state state = c->side.state;
	int err = c->side.err;
	if (state == KC_SIDE_NONE)
		c->side.state = KC_SIDE_ATTACHING;
	kc_unlock();
	switch (state) {
	case KC_SIDE_READY:
		return 0;
	case KC_SIDE_FOREIGN:
		return -ENOTTY;
	case KC_SIDE_FAILED:
		return -err;
	default:
		break;
	}
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	int rc = attach(c, fd);
	pthread_setcancelstate(cancel_state, NULL);
	kc_lock();
	c->side.state = rc == 0 ? KC_SIDE_READY : rc == -ENOTTY ? KC_SIDE_FOREIGN : KC_SIDE_FAILED;
	c->side.err = -rc;
	kc_unlock();
	if (rc && rc != -ENOTTY)
		warn(c,
		     "cannot attach a CUSE kdbus descriptor to the daemon at %s (%s): "
		     "its pool cannot be mapped and files it receives are lost",
		     kc_config()->socket, strerror(-rc));
	return rc;
}

/*
 * Gives the daemon transient numbers (recorded first). No answer is needed: the frame is in
 * the daemon's socket before the ioctl starts, and the daemon reads its side channel before
 * it installs files and before it forgets the numbers. Under the page lock.
 */
static int offer_numbers(struct kc_conn *c, int sock, const int *numbers, unsigned n)
{
	kc_lock();
	add_locked(&c->side, numbers, n, true);
	kc_unlock();
	uint8_t frame[KC_NUMBERS_FRAME_MAX(KC_SIDE_TRANSIENT)];
	return send_frame(sock, frame, kc_reserve_encode(frame, 0, numbers, n, KC_RESERVE_TRANSIENT));
}

int kc_side_prepare(struct kc_conn *c, struct kc_side_offer *offer)
{
	int sock, rc;
	struct kc_side_page *page;
	offer->n = 0;
	if (!ready(c, &sock, &page, &rc))
		return rc;
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	page_lock(page);
	/* The reserve first (its frame needs no answer), so the daemon always has enough numbers. */
	rc = top_up(c, sock);
	kc_lock();
	bool room = c->side.n_reserved + KC_SIDE_TRANSIENT <= KC_SIDE_CAPACITY;
	kc_unlock();
	if (rc == 0 && room) {
		int n = kc_reserve_take_lowest(offer->numbers, KC_SIDE_TRANSIENT);
		offer->n = (unsigned)n;
		if (n > 0)
			rc = offer_numbers(c, sock, offer->numbers, (unsigned)n);
	}
	page_unlock(c, page);
	pthread_setcancelstate(cancel_state, NULL);
	if (rc)
		broke(c, -rc);
	return rc;
}

void kc_side_withdraw(struct kc_conn *c, const struct kc_side_offer *offer)
{
	int unused[KC_SIDE_TRANSIENT];
	unsigned n = 0;
	kc_lock();
	for (unsigned i = 0; i < offer->n; i++) {
		int number = offer->numbers[i];
		int at = index_of(&c->side, number);
		/* Gone from the list: a file went there (or the channel was torn down). */
		if (at < 0)
			continue;
		remove_at(&c->side, at);
		if (kc_reserve_is_placeholder_locked(number)) {
			kc_fd_clear(number);
			unused[n++] = number;
		}
	}
	kc_unlock();
	for (unsigned i = 0; i < n; i++)
		kc_sys_close(unused[i]);
}

/* A request of a frame with no payload (and fds on it), taking the page lock; as request(). */
static int bare_request(struct kc_conn *c, int sock, struct kc_side_page *page, uint32_t type, const int *fds,
			unsigned n_fds, struct frame *result)
{
	uint8_t frame[KC_FRAME_HEADER];
	kc_bare_encode(frame, type, REQUEST_SEQ);
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	page_lock(page);
	int rc = request(c, sock, frame, sizeof frame, fds, n_fds, result);
	page_unlock(c, page);
	pthread_setcancelstate(cancel_state, NULL);
	return rc;
}

int kc_side_fetch_pool(struct kc_conn *c)
{
	int sock, rc;
	struct kc_side_page *page;
	if (!ready(c, &sock, &page, &rc))
		return rc;
	struct frame result;
	struct kc_result r;
	rc = bare_request(c, sock, page, KC_FRAME_POOL, NULL, 0, &result);
	if (rc == 0) {
		rc = result_of(&result, &r);
		if (rc == 0 && (!(r.flags & KC_RESULT_POOL) || result.n_fds == 0))
			rc = -EPROTO;
		if (rc == 0) {
			kc_conn_set_pool(c, result.fds[0]);
			result.fds[0] = -1;
		}
		close_fds(&result);
		if (rc != -EPROTO)
			return rc;
	}
	broke(c, -rc);
	return rc;
}

int kc_side_ready(struct kc_conn *c)
{
	int sock, rc;
	struct kc_side_page *page;
	kc_lock();
	int fd = c->ready;
	kc_unlock();
	if (fd >= 0)
		return fd;
	if (!ready(c, &sock, &page, &rc))
		return rc;
	state_lock(page);
	bool exact = page->exact;
	state_unlock(page);
	if (!exact)
		return -EOPNOTSUPP;
	struct kc_ident id;
	if ((fd = make_eventfd(&id)) < 0)
		return -EMFILE;
	struct frame result;
	struct kc_result r;
	rc = bare_request(c, sock, page, KC_FRAME_READY, &fd, 1, &result);
	if (rc == 0) {
		rc = result_of(&result, &r);
		close_fds(&result);
		if (rc == -EPROTO)
			broke(c, EPROTO);
	} else {
		broke(c, -rc);
	}
	kc_lock();
	if (rc == 0 && c->ready >= 0) {
		/* Another thread of this process was first: its eventfd serves them all (the daemon keeps both). */
		rc = c->ready;
	} else if (rc == 0 && kc_fd_set(fd, KC_FD_INTERNAL, c) == 0) {
		c->ready = fd;
		c->ready_id = id;
		rc = fd;
		fd = -1;
	} else if (rc == 0) {
		rc = -EMFILE;
	}
	kc_unlock();
	if (fd >= 0)
		kc_sys_close(fd);
	return rc;
}

void kc_side_drain(struct kc_conn *c)
{
	int sock, err;
	struct kc_side_page *page;
	if (!ready(c, &sock, &page, &err) || !page_trylock(page))
		return;
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	int rc = read_available(c, sock);
	page_unlock(c, page);
	pthread_setcancelstate(cancel_state, NULL);
	if (rc)
		broke(c, -rc);
}

/* Whether one of numbers is still a placeholder the daemon holds. Under kc_lock. */
static bool pending_locked(const struct kc_side *s, const int *numbers, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (index_of(s, numbers[i]) >= 0 && kc_reserve_is_placeholder_locked(numbers[i]))
			return true;
	return false;
}

static bool pending(struct kc_conn *c, const int *numbers, unsigned n)
{
	kc_lock();
	bool waiting = pending_locked(&c->side, numbers, n);
	kc_unlock();
	return waiting;
}

static int elapsed_ms(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int)((now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000);
}

/* Waits up to ms for sock to have something; 0 (also when interrupted) or -errno. */
static int wait_readable(int sock, int ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	return poll(&p, 1, ms) < 0 && errno != EINTR ? -errno : 0;
}

int kc_side_await(struct kc_conn *c, const int *numbers, unsigned n, int timeout_ms)
{
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	int rc = 0;
	while (pending(c, numbers, n)) {
		int sock, err;
		struct kc_side_page *page;
		if (!ready(c, &sock, &page, &err)) {
			rc = err;
			break;
		}
		int left = timeout_ms - elapsed_ms(&start);
		if (left <= 0) {
			rc = -ETIMEDOUT;
			warn(c,
			     "files of a received kdbus message did not come from the daemon within %d ms; "
			     "the message names descriptors that are not those files",
			     timeout_ms);
			break;
		}
		int slice = left < SLICE_MS ? left : SLICE_MS;
		/* Whoever holds the lock reads for everyone: the next look may find the numbers done. */
		if (!page_lock_for(page, slice))
			continue;
		rc = read_available(c, sock);
		if (rc == 0 && pending(c, numbers, n))
			rc = wait_readable(sock, slice);
		page_unlock(c, page);
		if (rc) {
			broke(c, -rc);
			break;
		}
	}
	pthread_setcancelstate(cancel_state, NULL);
	return rc;
}

void kc_side_in_child_locked(struct kc_conn *c)
{
	if (c->side.state != KC_SIDE_ATTACHING)
		return;
	/* The parent's thread that was attaching did not come along; what it made is the parent's. */
	c->side.state = KC_SIDE_NONE;
	if (c->sock >= 0) {
		kc_fd_clear(c->sock);
		kc_sys_close(c->sock);
		c->sock = -1;
	}
	if (c->wake >= 0) {
		kc_fd_clear(c->wake);
		kc_sys_close(c->wake);
		c->wake = -1;
	}
	if (c->side.page)
		munmap(c->side.page, sizeof *c->side.page);
	c->side.page = NULL;
	for (unsigned i = 0; i < c->side.n_reserved; i++) {
		kc_fd_clear(c->side.reserved[i]);
		kc_sys_close(c->side.reserved[i]);
	}
	c->side.n_reserved = 0;
	c->side.n_transient = 0;
}

void kc_side_finish(struct kc_side *s)
{
	kc_reserve_return(s->reserved, (int)s->n_reserved);
	s->n_reserved = 0;
	s->n_transient = 0;
	if (s->page)
		munmap(s->page, sizeof *s->page);
	s->page = NULL;
}

/* The page lock, unless another thread holds it, with what the channel holds applied. */
struct caught_up {
	int sock;
	struct kc_side_page *page;
	int cancel_state;
	int rc; /* 0, or the -errno that breaks the channel at unlock_caught_up */
};

static bool lock_caught_up(struct kc_conn *c, struct caught_up *u)
{
	int err;
	if (!ready(c, &u->sock, &u->page, &err) || !page_trylock(u->page))
		return false;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &u->cancel_state);
	/* Holding the lock, nobody else is reading: every frame that has arrived is applied. */
	u->rc = read_available(c, u->sock);
	return true;
}

static void unlock_caught_up(struct kc_conn *c, struct caught_up *u)
{
	page_unlock(c, u->page);
	pthread_setcancelstate(u->cancel_state, NULL);
	if (u->rc)
		broke(c, u->rc == -EPIPE || u->rc == -ECONNRESET ? ESHUTDOWN : -u->rc);
}

/*
 * The channel says the queue is empty, and the daemon empties the readiness eventfd only
 * once it reads the RECV that emptied it: an epoll waiter would spin until then, so this
 * process's eventfd is emptied here. A wake-up this takes came after its WAKE or HEAD was
 * on the channel (the daemon writes them in that order), so reading the channel again
 * finds that frame, and the count goes back; an empty count needs no second look. Under
 * the page lock (lock_caught_up).
 */
static void lower_ready(struct kc_conn *c, struct caught_up *u)
{
	uint64_t count = 1;
	kc_lock();
	bool took = c->ready >= 0 && kc_sys_read(c->ready, &count, sizeof count) == sizeof count;
	kc_unlock();
	if (!took)
		return;
	if (u->rc == 0)
		u->rc = read_available(c, u->sock);
	state_lock(u->page);
	bool again = u->rc != 0 || u->page->readable || u->page->hup;
	state_unlock(u->page);
	if (!again)
		return;
	count = 1;
	kc_lock();
	if (c->ready >= 0)
		(void)!kc_sys_write(c->ready, &count, sizeof count);
	kc_unlock();
}

bool kc_side_queue_empty(struct kc_conn *c)
{
	struct caught_up u;
	if (!lock_caught_up(c, &u))
		return false;
	state_lock(u.page);
	bool empty = u.rc == 0 && u.page->exact && !u.page->readable && !u.page->hup;
	state_unlock(u.page);
	if (empty)
		lower_ready(c, &u);
	unlock_caught_up(c, &u);
	return empty;
}

void kc_side_count_recv(struct kc_conn *c)
{
	int sock, err;
	struct kc_side_page *page;
	if (!ready(c, &sock, &page, &err))
		return;
	state_lock(page);
	page->recvs++;
	page->head_valid = 0;
	state_unlock(page);
}

bool kc_side_take_head(struct kc_conn *c, uint64_t *offset, uint64_t *size, struct iovec *iov, int iovcnt)
{
	struct caught_up u;
	if (!lock_caught_up(c, &u))
		return false;
	struct kc_side_page *page = u.page;
	state_lock(page);
	bool taken = u.rc == 0 && page->exact && !page->hup && page->head_valid;
	if (taken) {
		*offset = page->head.offset;
		*size = page->head.size;
		page->recvs++;
		page->head_valid = 0;
		/* The only message queued: another would have brought a newer HEAD or a WAKE, read above. */
		if (page->head.last)
			page->readable = 0;
		kc_published_add(&page->published, *offset);
		/*
		 * Sent before another thread can count a RECV for the kernel (kc_side_count_recv):
		 * the daemon reads the channel before it runs that RECV, so it takes this message
		 * first, as the counts say.
		 */
		u.rc = kc_send_all(u.sock, iov, iovcnt, NULL, 0);
		taken = u.rc == 0;
	}
	bool emptied = taken && !page->readable;
	state_unlock(page);
	if (emptied)
		lower_ready(c, &u);
	unlock_caught_up(c, &u);
	return taken;
}

void kc_side_note_published(struct kc_conn *c, uint64_t offset)
{
	int sock, err;
	struct kc_side_page *page;
	if (!ready(c, &sock, &page, &err))
		return;
	state_lock(page);
	if (page->exact)
		kc_published_add(&page->published, offset);
	state_unlock(page);
}

bool kc_side_free(struct kc_conn *c, uint64_t offset, bool (*answer)(uint64_t arg), uint64_t arg,
		  struct iovec *iov, int iovcnt)
{
	int sock, err;
	struct kc_side_page *page;
	if (!ready(c, &sock, &page, &err))
		return false;
	state_lock(page);
	bool published = kc_published_take(&page->published, offset);
	state_unlock(page);
	struct caught_up u;
	if (!published || !lock_caught_up(c, &u))
		return false;
	/* A HUP that has arrived means the FREE would fail (the connection is gone). */
	state_lock(page);
	bool sure = u.rc == 0 && page->exact && !page->hup;
	state_unlock(page);
	bool sent = false;
	if (sure && answer(arg)) {
		u.rc = kc_send_all(u.sock, iov, iovcnt, NULL, 0);
		sent = u.rc == 0;
	}
	unlock_caught_up(c, &u);
	return sent;
}

/* The file's readiness from what the channel said, as kdbus's poll computed it. Under state_lock. */
static int readiness_locked(const struct kc_side_page *p, short *revents)
{
	if (!p->exact)
		return KC_SIDE_POLL_KERNEL;
	if (p->hup) {
		*revents = POLLERR | POLLHUP;
		return KC_SIDE_POLL_READY;
	}
	*revents = POLLOUT | POLLWRNORM;
	if (!p->readable)
		return KC_SIDE_POLL_WAIT;
	*revents |= POLLIN | POLLRDNORM;
	return KC_SIDE_POLL_READY;
}

static int readiness(struct kc_side_page *p, short *revents)
{
	state_lock(p);
	int r = readiness_locked(p, revents);
	state_unlock(p);
	return r;
}

/* Applies what the channel holds (under the page lock) and says what that makes the file. */
static int look(struct kc_conn *c, struct kc_side_page *page, int sock, short *revents, int *rc)
{
	*rc = read_available(c, sock);
	return *rc ? KC_SIDE_POLL_KERNEL : readiness(page, revents);
}

/* A nudge from before is for a state the poller has seen since. */
static void drain_wake(struct kc_conn *c, struct kc_side_page *p)
{
	uint64_t count;
	if (!__atomic_exchange_n(&p->nudged, 0, __ATOMIC_SEQ_CST))
		return;
	kc_lock();
	if (c->wake >= 0)
		(void)!kc_sys_read(c->wake, &count, sizeof count);
	kc_unlock();
}

int kc_side_poll_begin(struct kc_conn *c, struct kc_side_waiter *w)
{
	struct kc_side_page *page;
	int err, rc = 0;
	if (!ready(c, &w->sock, &page, &err))
		return KC_SIDE_POLL_KERNEL;
	kc_lock();
	w->wake = c->wake;
	kc_unlock();
	if (w->wake < 0)
		return KC_SIDE_POLL_KERNEL;
	w->page = page;
	int cancel_state;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
	uint32_t frames = __atomic_load_n(&page->frames, __ATOMIC_SEQ_CST);
	bool locked = page_trylock(page);
	/* If someone else is reading the channel, what it has applied so far is all there is to go by. */
	int r = locked ? look(c, page, w->sock, &w->revents, &rc) : readiness(page, &w->revents);
	if (r == KC_SIDE_POLL_WAIT) {
		__atomic_add_fetch(&page->pollers, 1, __ATOMIC_SEQ_CST);
		drain_wake(c, page);
		/* Counted now, the next to let go wakes it; one that let go before woke nobody. */
		if (!locked && (locked = page_trylock(page))) {
			r = look(c, page, w->sock, &w->revents, &rc);
			if (r != KC_SIDE_POLL_WAIT)
				__atomic_sub_fetch(&page->pollers, 1, __ATOMIC_SEQ_CST);
		}
	}
	if (locked) {
		pthread_mutex_unlock(&page->lock);
		/* Frames read here are off the socket for the other pollers; a look alone wakes nobody. */
		uint32_t others = __atomic_load_n(&page->pollers, __ATOMIC_SEQ_CST) - (r == KC_SIDE_POLL_WAIT);
		if (others > 0 && __atomic_load_n(&page->frames, __ATOMIC_SEQ_CST) != frames)
			nudge(c, page);
	} else {
		/* The reader has frames to read that the socket shows this poller too: let it run. */
		sched_yield();
	}
	pthread_setcancelstate(cancel_state, NULL);
	if (rc)
		broke(c, rc == -EPIPE || rc == -ECONNRESET ? ESHUTDOWN : -rc);
	return r;
}

void kc_side_poll_end(struct kc_side_waiter *w)
{
	__atomic_sub_fetch(&w->page->pollers, 1, __ATOMIC_SEQ_CST);
}
