/*
 * The daemon's proof that this process holds a CUSE kdbus file: the private ioctl
 * KDBUS_CUSE_CMD_ATTACH, which only the holder of the open file can issue. Alone in its file
 * so the side channel can be tested against a stand-in without CUSE devices.
 */
#ifndef KC_CUSE_TOKEN_H
#define KC_CUSE_TOKEN_H

#include <stdint.h>

/* Fills token (16 bytes) from the device fd; 0, or -errno (ENOTTY: not the daemon's device). */
int kc_cuse_token(int fd, uint8_t *token);

#endif
