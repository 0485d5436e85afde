/* Naming and finding the fd channel (see channel.h). */
#include "channel.h"

#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* The abstract address for sock's channel: a NUL, then a name made of the socket's identity. */
static socklen_t address_for(int sock, struct sockaddr_un *addr)
{
	struct stat st;
	if (fstat(sock, &st) < 0)
		return 0;
	memset(addr, 0, sizeof *addr);
	addr->sun_family = AF_UNIX;
	int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "kdbus-cuse-channel-%llx-%llx",
			 (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

void kc_channel_name(int channel, int sock)
{
	struct sockaddr_un addr;
	socklen_t len = address_for(sock, &addr);
	if (len)
		bind(channel, (struct sockaddr *)&addr, len);
}

int kc_channel_find(int sock)
{
	struct sockaddr_un want, have;
	socklen_t want_len = address_for(sock, &want);
	if (!want_len)
		return -1;
	DIR *dir = opendir("/proc/self/fd");
	if (!dir)
		return -1;
	int found = -1;
	int dir_fd = dirfd(dir);
	struct dirent *d;
	while (found < 0 && (d = readdir(dir))) {
		int fd = atoi(d->d_name);
		if (d->d_name[0] < '0' || d->d_name[0] > '9' || fd == dir_fd || fd == sock)
			continue;
		socklen_t len = sizeof have;
		if (getsockname(fd, (struct sockaddr *)&have, &len) == 0 && len == want_len &&
		    memcmp(&have, &want, len) == 0)
			found = fd;
	}
	closedir(dir);
	return found;
}
