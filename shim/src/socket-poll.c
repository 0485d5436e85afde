/* poll() of socket-transport kdbus descriptors (see socket-poll.h). */
#include "socket-poll.h"
#include "conn.h"
#include "fd-table.h"

/* Whether the connection behind this descriptor is gone: a HUP read or waiting, or the stream over. */
static bool gone(int fd)
{
	struct kc_conn *c = kc_conn_acquire(fd);
	if (!c)
		return false;
	int sock = kc_conn_socket(c, fd);
	bool hup = sock >= 0 && kc_mux_hung_up(c->mux, sock);
	kc_conn_release(c);
	return hup;
}

int kc_socket_poll_settle(struct pollfd *fds, nfds_t nfds, int ready)
{
	for (nfds_t i = 0; i < nfds && ready > 0; i++) {
		struct pollfd *p = &fds[i];
		/* Only a readable socket can be one whose connection is gone. */
		if (!(p->revents & POLLIN) || p->fd < 0 || kc_fd_get(p->fd).kind != KC_FD_USER)
			continue;
		if (gone(p->fd))
			p->revents = POLLERR | POLLHUP;
	}
	return ready;
}
