/*
 * Recognizing kdbus descriptors the shim did not open (see kc_conn_attach in conn.h). Only
 * called for ioctls with kdbus's ioctl type and for mmap calls that failed on a socket, so
 * other programs never pay for it.
 */
#include "config.h"
#include "conn.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static bool connected_to_daemon(int fd, struct kc_ident *id)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		return false;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	struct sockaddr_un peer;
	socklen_t len = sizeof peer;
	if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0 || peer.sun_family != AF_UNIX)
		return false;
	const char *want = kc_config()->socket;
	size_t path_len = len - offsetof(struct sockaddr_un, sun_path);
	size_t want_len = strlen(want);
	/* The kernel may or may not count the bound name's NUL. */
	if (path_len > want_len && peer.sun_path[want_len] == '\0')
		path_len = want_len;
	return want_len > 0 && path_len == want_len && memcmp(peer.sun_path, want, want_len) == 0;
}

struct kc_conn *kc_conn_attach(int fd)
{
	int saved = errno;
	struct kc_conn *c = NULL;
	struct kc_ident id;
	if (!connected_to_daemon(fd, &id))
		goto out;
	c = kc_conn_join(fd, &id);
	if (c)
		goto out;
	/* Sequence numbers apart from those the opener's processes use, should they go on too. */
	struct kc_mux *mux = kc_mux_create(((uint64_t)getpid() << 32) | 1);
	if (!mux)
		goto out;
	/*
	 * Other processes may hold this socket without sharing the new page, so its count is not
	 * the whole truth: such a connection never sends CLOSE, and the daemon releases it at
	 * the socket's end of file.
	 */
	if (kc_conn_create(fd, mux, false)) {
		c = kc_conn_acquire(fd);
	} else {
		kc_mux_unmap(mux);
		if (errno == EEXIST)
			c = kc_conn_acquire(fd);
	}
out:
	errno = saved;
	return c;
}
