/*
 * Blocking I/O on the daemon socket and the fd channel, whatever O_NONBLOCK the program set
 * on the shared open file: EAGAIN waits in poll(), EINTR retries (a kdbus ioctl the program
 * sees restarts, as with SA_RESTART). SIGPIPE is never raised.
 */
#ifndef KC_SOCK_IO_H
#define KC_SOCK_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Descriptors that may come with one frame: a pool, then the files of a message. */
#define KC_MAX_RECEIVED_FDS 72

/* Connects sock to the daemon's socket (config.h); 0 or -1 with errno (ENAMETOOLONG: no usable path). */
int kc_connect_daemon(int sock);

/* Writes all of iov; 0 or -errno (EPIPE/ECONNRESET when the daemon is gone). */
int kc_send_all(int sock, struct iovec *iov, int iovcnt);

/* One fd-channel message: one byte of data (tag) with fds as SCM_RIGHTS. 0 or -errno. */
int kc_send_channel_message(int channel, uint8_t tag, const int *fds, unsigned n_fds);

/*
 * Waits for a 16-byte frame header and copies it without consuming it (so descriptors that
 * came with the frame stay queued for whoever reads the frame). 0, -ECONNRESET at end of
 * stream, or -errno.
 */
int kc_peek_header(int sock, uint8_t *header);

/*
 * Reads exactly len bytes, collecting descriptors (close-on-exec) into fds. More descriptors
 * than max_fds are closed and make the call fail with -EPROTO after the bytes are read, so
 * the stream stays in step. 0 or -errno; *n_fds is valid either way.
 */
int kc_recv_exact(int sock, void *buf, size_t len, int *fds, unsigned max_fds, unsigned *n_fds);

#endif
