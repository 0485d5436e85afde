/* Tokens from pretend CUSE devices (see fake-token.h). */
#include "fake-token.h"
#include "../../shim/src/cuse-token.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define DEVICES 8

static struct {
	int fd;
	bool good;
	uint8_t last[16];
} devices[DEVICES];
static unsigned n_devices, issued;

void fake_device(int fd, bool good)
{
	unsigned i = 0;
	/* A number that played a device before plays the new one. */
	while (i < n_devices && devices[i].fd != fd)
		i++;
	if (i == DEVICES)
		return;
	if (i == n_devices)
		n_devices++;
	devices[i] = (typeof(devices[0])){ .fd = fd, .good = good };
}

const uint8_t *fake_last_token(int fd)
{
	for (unsigned i = 0; i < n_devices; i++)
		if (devices[i].fd == fd)
			return devices[i].last;
	return NULL;
}

int kc_cuse_token(int fd, uint8_t *token)
{
	for (unsigned i = 0; i < n_devices; i++) {
		if (devices[i].fd != fd)
			continue;
		char text[17];
		snprintf(text, sizeof text, "%s-%04u", devices[i].good ? "mock-token" : "fake-token", ++issued);
		memcpy(token, text, 16);
		memcpy(devices[i].last, token, 16);
		return 0;
	}
	return -ENOTTY;
}
