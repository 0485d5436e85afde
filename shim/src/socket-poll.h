/*
 * poll() of socket-transport kdbus descriptors. The socket stays readable once the
 * connection is gone (the daemon's HUP frame waits on it, or the stream has ended), where
 * kdbus reported POLLERR|POLLHUP; poll and ppoll report what kdbus did. epoll and select
 * see the socket as it is (docs/socket-protocol.md, Poll).
 */
#ifndef KC_SOCKET_POLL_H
#define KC_SOCKET_POLL_H

#include <poll.h>

/* Rewrites, after a poll that returned `ready`, the entries of connections that are gone; returns ready. */
int kc_socket_poll_settle(struct pollfd *fds, nfds_t nfds, int ready);

#endif
