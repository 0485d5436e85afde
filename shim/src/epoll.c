/*
 * epoll_ctl: CUSE kdbus descriptors join and leave epoll sets through stand-ins
 * (cuse-epoll.h); every other descriptor, and every other call, goes to libc. epoll_wait
 * needs nothing: the stand-ins are what the kernel waits on.
 */
#include "cuse-epoll.h"
#include "fd-table.h"
#include "real.h"

#include <sys/epoll.h>

KC_NEXT_SLOT(epoll_ctl);

KC_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
	int (*next)(int, int, int, struct epoll_event *) = KC_NEXT(epoll_ctl);
	if (!next)
		return kc_next_missing();
	if (kc_fd_get(fd).kind != KC_FD_CUSE)
		return next(epfd, op, fd, event);
	return kc_cuse_epoll_ctl(epfd, op, fd, event, next);
}
