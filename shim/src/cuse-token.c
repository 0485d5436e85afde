/* The token ioctl (see cuse-token.h). */
#include "cuse-token.h"
#include "kdbus-abi.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int kc_cuse_token(int fd, uint8_t *token)
{
	uint8_t s[KDBUS_CUSE_ATTACH_SIZE] = { 0 };
	uint64_t size = KDBUS_CUSE_ATTACH_SIZE;
	memcpy(s, &size, sizeof size);
	/*
	 * Straight to the kernel: this ioctl is the shim's business, not the program's, and
	 * other preloaded libraries should not see it. A token lost to a signal is only
	 * forgotten by the daemon when the file is released, which is harmless.
	 */
	while (syscall(SYS_ioctl, fd, (unsigned long)KDBUS_CUSE_CMD_ATTACH, s) < 0)
		if (errno != EINTR)
			return -errno;
	memcpy(token, s + KDBUS_CUSE_TOKEN_OFF, KDBUS_CUSE_TOKEN_SIZE);
	return 0;
}
