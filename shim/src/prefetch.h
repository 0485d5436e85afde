/*
 * What the shim sends along with an ioctl so the daemon rarely has to ask back: the command
 * struct, and for SEND the message and its payload vectors, as IOCTL segments; and the
 * descriptors the command names by number. Memory that cannot be read is left out: the
 * daemon then FETCHes it and gets EFAULT, exactly where the kernel would have failed.
 */
#ifndef KC_PREFETCH_H
#define KC_PREFETCH_H

#include "frame.h"

#include <stdbool.h>
#include <stdint.h>

struct kc_prefetch {
	struct kc_buf segments;
	uint32_t n_segments;
	/* The numbers the command names, each once, -1 where nothing is open under it. */
	int32_t fds[KC_MAX_LISTED_FDS];
	uint32_t n_fds;
	/* The command struct's flags word, when it could be read. */
	bool have_flags;
	uint64_t flags;
	/* How much of the command struct was read (0: none); it is the first segment. */
	size_t cmd_len;
};

/* The command struct as read (cmd_len bytes), or NULL. */
const uint8_t *kc_prefetch_cmd(const struct kc_prefetch *p);

/* Fills p for ioctl cmd at arg; 0 or -ENOMEM. kc_prefetch_free releases it either way. */
int kc_prefetch_build(struct kc_prefetch *p, uint32_t cmd, uint64_t arg);
void kc_prefetch_free(struct kc_prefetch *p);

#endif
