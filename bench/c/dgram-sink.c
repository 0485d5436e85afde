/*
 * A datagram socket that takes and drops whatever is sent to it: the journal socket
 * (/run/systemd/journal/socket) dbus-broker-launch logs into, where no systemd runs.
 *
 *   dgram-sink <path>
 *
 * Binds the socket, then reads until killed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s <path>\n", argv[0]);
		return 2;
	}
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(argv[1]) >= sizeof a.sun_path) {
		fprintf(stderr, "dgram-sink: path too long\n");
		return 2;
	}
	strcpy(a.sun_path, argv[1]);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		perror("dgram-sink: bind");
		return 1;
	}
	static char buf[65536];
	for (;;)
		if (recv(fd, buf, sizeof buf, 0) < 0)
			perror("dgram-sink: recv");
}
