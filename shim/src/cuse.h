/*
 * CUSE kdbus descriptors (docs/socket-protocol.md, CUSE clients): character devices the
 * kernel serves for the daemon. libc does everything with them, except what CUSE cannot
 * carry: mmap maps the pool the side channel brings (side-channel.h), and after RECV or a
 * synchronous SEND the files the received message names are put on their numbers before
 * the program looks. RECV on an empty queue and FREE of a received slice need no round trip
 * through the kernel (shortcuts.h).
 */
#ifndef KC_CUSE_H
#define KC_CUSE_H

#include "conn.h"
#include "side-channel.h"

#include <stdbool.h>
#include <stdint.h>

/* The commands that can install files into the caller. */
static inline bool kc_cuse_installs(uint32_t cmd)
{
	return cmd == KDBUS_CMD_RECV || cmd == KDBUS_CMD_SEND;
}

/* After libc opened a character device below the root: records fd, which it returns. */
int kc_cuse_opened(int fd);

/*
 * For a descriptor the table does not know (one inherited across exec, or opened through
 * another path): a character device that gives the daemon's token is recorded, attached and
 * returned referenced. NULL otherwise (a character device that refused is recorded as not
 * the daemon's, so it is asked once). errno is kept.
 */
struct kc_conn *kc_cuse_probe(int fd);

/*
 * RECV on a queue the side channel says is empty (EAGAIN), RECV of the message a HEAD named
 * (0, the RECV itself sent on the side channel) and FREE of a slice the daemon published (0,
 * likewise): answered here as kdbus would, with its write-backs. True if answered, with the
 * ioctl's errno in *err (0 for success).
 */
bool kc_cuse_answered(struct kc_conn *c, uint32_t cmd, uint64_t arg, int *err);

/*
 * Before RECV or SEND on the device fd: when the command can install files, attaches and
 * makes sure the daemon holds numbers for them, so they can reach this process. false if the
 * device turned out not to be the daemon's.
 */
bool kc_cuse_before_ioctl(struct kc_conn *c, int fd, uint32_t cmd, uint64_t arg, struct kc_side_offer *offer);

/*
 * After it (succeeded: whether it did): applies the files that arrived and, if the received
 * message names numbers still waiting for theirs, waits for them (5 s at most); then frees
 * the numbers offered for it that no file went to.
 */
void kc_cuse_after_ioctl(struct kc_conn *c, uint32_t cmd, uint64_t arg, bool succeeded, const struct kc_side_offer *offer);

#endif
