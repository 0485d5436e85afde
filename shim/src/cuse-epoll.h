/*
 * epoll of CUSE kdbus descriptors without the kernel's FUSE_POLL round trips. The kernel
 * asks the daemon when a CUSE device joins an epoll set and again after every wake-up,
 * before epoll_wait returns: two round trips to the daemon for each message a program
 * waiting in epoll receives (every sd-event service). So epoll_ctl registers two stand-ins
 * instead, with the program's events and data:
 *
 *   - a duplicate of the file's readiness eventfd (kc_side_ready), which the daemon keeps
 *     non-zero while the file polls readable or hung up and writes once per wake-up: EPOLLIN
 *     level- or edge-triggered as kdbus gave, EPOLLOUT always, as kdbus gave;
 *   - a duplicate of the side channel, watched for nothing, which reports EPOLLHUP when the
 *     daemon goes away.
 *
 * A connection that is gone (BYEBYE, bus gone) polls readable then, not POLLERR|POLLHUP as on
 * kdbus: its next RECV fails with ESHUTDOWN, as on the socket transport. Where the side
 * channel does not follow the queue, or a table is full, the descriptor itself is registered
 * and the kernel serves it as before; so it is, in place of the stand-ins, once the channel
 * breaks. The stand-ins leave the set when the program removes the descriptor or closes it;
 * a process that forked hands its registrations to nobody, so a child's close leaves the
 * parent's set alone, as the kernel does for a shared file.
 */
#ifndef KC_CUSE_EPOLL_H
#define KC_CUSE_EPOLL_H

#include <stdbool.h>
#include <sys/epoll.h>

struct kc_conn;
struct kc_ident;

typedef int (*kc_epoll_ctl_fn)(int epfd, int op, int fd, struct epoll_event *event);

/* epoll_ctl for fd, a CUSE kdbus descriptor; next is the real epoll_ctl. */
int kc_cuse_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event, kc_epoll_ctl_fn next);

/* The program closes fd (a CUSE kdbus descriptor): its stand-ins leave the sets. Under kc_lock. */
void kc_cuse_epoll_forget_locked(int fd);

/*
 * If fd is a stand-in, the file it must be (for kc_fd_check), and true; else false. Under
 * kc_lock.
 */
bool kc_cuse_epoll_standin_locked(int fd, const struct kc_ident **id);

/*
 * c's side channel broke: its readiness eventfd will not move again. This process's
 * registrations of c's descriptors leave their sets, and the descriptors themselves take
 * their place (the kernel's poll, FUSE_POLL, serves them). Under kc_lock.
 */
void kc_cuse_epoll_fall_back_locked(struct kc_conn *c);

/* fd, a stand-in, is no longer the shim's file (closed behind its back): it is forgotten. Under kc_lock. */
void kc_cuse_epoll_lost_locked(int fd);

/*
 * The program's dup2/dup3 replaces fd: if it is a stand-in, moves it to another number, in
 * the sets too, and returns true. Under kc_lock.
 */
bool kc_cuse_epoll_evict_locked(int fd);

#endif
