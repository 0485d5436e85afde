/*
 * The stand-in for shim/src/cuse-token.c in cuse-test: there are no CUSE devices on a test
 * host, so chosen descriptors play the daemon's devices and hand out tokens mock-daemon.c
 * accepts (or, for a device made with good = false, tokens it refuses). Every other
 * descriptor answers ENOTTY, as a device that is not the daemon's does.
 */
#ifndef KC_TEST_FAKE_TOKEN_H
#define KC_TEST_FAKE_TOKEN_H

#include <stdbool.h>
#include <stdint.h>

void fake_device(int fd, bool good);

/* The token fd handed out last (16 bytes), or NULL. */
const uint8_t *fake_last_token(int fd);

#endif
