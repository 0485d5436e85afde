/* select() of sets with CUSE kdbus descriptors, through their poll (see cuse-select.h). */
#include "cuse-select.h"
#include "fd-table.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

/* Descriptors numbered past FD_SETSIZE do not fit an fd_set; the kernel's select refuses them too. */
static int limit(int nfds)
{
	return nfds < 0 ? 0 : nfds > FD_SETSIZE ? FD_SETSIZE : nfds;
}

static bool in(const fd_set *s, int fd)
{
	return s && FD_ISSET(fd, s);
}

#define WORD_BITS (8 * (int)sizeof(unsigned long))
#define WORDS (FD_SETSIZE / WORD_BITS)

/* Adds the first n words of s (an array of longs in both libcs) to any. */
static void add_words(unsigned long *any, const fd_set *s, int n)
{
	unsigned long words[WORDS];
	if (!s)
		return;
	memcpy(words, s, sizeof words[0] * (size_t)n);
	for (int i = 0; i < n; i++)
		any[i] |= words[i];
}

bool kc_cuse_select_wanted(int nfds, const fd_set *r, const fd_set *w, const fd_set *e)
{
	/* Every select of every program asks: the words below nfds, the table only for numbers set. */
	int n = limit(nfds), words = (n + WORD_BITS - 1) / WORD_BITS;
	unsigned long any[WORDS];
	memset(any, 0, sizeof any[0] * (size_t)words);
	add_words(any, r, words);
	add_words(any, w, words);
	add_words(any, e, words);
	for (int i = 0; i < words; i++) {
		for (unsigned long bits = any[i]; bits; bits &= bits - 1) {
			int fd = i * WORD_BITS + __builtin_ctzl(bits);
			if (fd < n && kc_fd_get(fd).kind == KC_FD_CUSE)
				return true;
		}
	}
	return false;
}

int kc_cuse_select(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *timeout, const sigset_t *sigmask,
		   kc_ppoll_fn next)
{
	int n = limit(nfds);
	struct pollfd fds[FD_SETSIZE];
	nfds_t count = 0;
	for (int fd = 0; fd < n; fd++) {
		short events = (in(r, fd) ? POLLIN : 0) | (in(w, fd) ? POLLOUT : 0) | (in(e, fd) ? POLLPRI : 0);
		if (events)
			fds[count++] = (struct pollfd){ fd, events, 0 };
	}
	int got = kc_cuse_poll(fds, count, timeout, sigmask, next);
	if (got < 0)
		return -1;
	for (nfds_t i = 0; i < count; i++) {
		if (fds[i].revents & POLLNVAL) {
			errno = EBADF;
			return -1;
		}
	}
	int ready = 0;
	for (nfds_t i = 0; i < count; i++) {
		int fd = fds[i].fd;
		short rev = fds[i].revents;
		bool readable = in(r, fd) && (rev & (POLLIN | POLLHUP | POLLERR));
		bool writable = in(w, fd) && (rev & (POLLOUT | POLLERR));
		bool exceptional = in(e, fd) && (rev & POLLPRI);
		if (r && !readable)
			FD_CLR(fd, r);
		if (w && !writable)
			FD_CLR(fd, w);
		if (e && !exceptional)
			FD_CLR(fd, e);
		ready += readable + writable + exceptional;
	}
	return ready;
}
