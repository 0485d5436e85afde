/*
 * Where the kdbus tree lives and where the daemon listens, read from the environment the
 * first time a path could concern the shim (never at load time).
 */
#ifndef KC_CONFIG_H
#define KC_CONFIG_H

struct kc_config {
	char root[4096];   /* KDBUS_CUSE_ROOT, normalized; "" disables the shim */
	char socket[108];  /* KDBUS_CUSE_SOCKET or the daemon's default; "" if it does not fit */
};

const struct kc_config *kc_config(void);

#endif
