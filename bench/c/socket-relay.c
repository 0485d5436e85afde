/*
 * A relay in C for socket-rtt's relayed floor: listens at the path given, takes two
 * connections and forwards what either writes to the other, as a bus forwards a call and its
 * reply, with nothing else done. Like the daemon, it reads with recvmsg and SO_PASSCRED set,
 * and writes with sendmsg. Ends when either connection does.
 *
 *   socket-relay <socket path>
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <socket path>\n", argv[0]);
		return 2;
	}
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 2) < 0) {
		perror("socket-relay: listen");
		return 1;
	}
	int ends[2], ep = epoll_create1(EPOLL_CLOEXEC), on = 1;
	for (int i = 0; i < 2; i++) {
		ends[i] = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		if (ends[i] < 0 || setsockopt(ends[i], SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0 ||
		    epoll_ctl(ep, EPOLL_CTL_ADD, ends[i], &ev) < 0) {
			perror("socket-relay: accept");
			return 1;
		}
	}
	char buf[4096], control[CMSG_SPACE(sizeof(struct ucred))];
	for (;;) {
		struct epoll_event ev[2];
		int n = epoll_wait(ep, ev, 2, -1);
		for (int i = 0; i < n; i++) {
			int from = (int)ev[i].data.u32;
			struct iovec in = { buf, sizeof buf };
			struct msghdr m = { .msg_iov = &in, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
			ssize_t got = recvmsg(ends[from], &m, MSG_DONTWAIT);
			if (got == 0)
				return 0;
			if (got < 0)
				continue;
			struct iovec out = { buf, (size_t)got };
			struct msghdr o = { .msg_iov = &out, .msg_iovlen = 1 };
			if (sendmsg(ends[1 - from], &o, MSG_NOSIGNAL) != got)
				return 0;
		}
	}
}
