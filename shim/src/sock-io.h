/*
 * Blocking I/O on the daemon socket, whatever O_NONBLOCK the program set
 * on the shared open file: EAGAIN waits in poll(), EINTR retries (a kdbus ioctl the program
 * sees restarts, as with SA_RESTART). SIGPIPE is never raised.
 */
#ifndef KC_SOCK_IO_H
#define KC_SOCK_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

/* Descriptors that may come with one frame: a pool, then the files of a message. */
#define KC_MAX_RECEIVED_FDS 72

/* Connects sock to the daemon's socket (config.h); 0 or -1 with errno (ENAMETOOLONG: no usable path). */
int kc_connect_daemon(int sock);

/*
 * Writes all of iov, with fds (at most KC_MAX_LISTED_FDS) as SCM_RIGHTS on the first bytes;
 * 0 or -errno (EPIPE/ECONNRESET when the daemon is gone; EBADF, with nothing sent, when one
 * of fds is not open).
 */
int kc_send_all(int sock, struct iovec *iov, int iovcnt, const int *fds, unsigned n_fds);

/*
 * Waits for a 16-byte frame header and copies it without consuming it (so descriptors that
 * came with the frame stay queued for whoever reads the frame). 0, -ECONNRESET at end of
 * stream, or -errno.
 */
int kc_peek_header(int sock, uint8_t *header);

/*
 * Whether the daemon has sent nothing that waits on sock but, perhaps, WAKE and HEAD frames.
 * Never blocks. A HUP, an answer to another request or the end of the stream all say no.
 */
bool kc_only_wake_queued(int sock);

/* Copies up to len bytes waiting on sock without reading them or waiting: how many, or -1. */
ssize_t kc_peek_now(int sock, uint8_t *buf, size_t len);

/* Whether the daemon has sent nothing that waits on sock (nor ended the stream). Never blocks. */
bool kc_nothing_waiting(int sock);

/*
 * Reads exactly len bytes, collecting descriptors (close-on-exec) into fds. More descriptors
 * than max_fds are closed and make the call fail with -EPROTO after the bytes are read, so
 * the stream stays in step. 0 or -errno; *n_fds is valid either way.
 */
int kc_recv_exact(int sock, void *buf, size_t len, int *fds, unsigned max_fds, unsigned *n_fds);

#endif
