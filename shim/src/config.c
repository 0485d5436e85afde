/*
 * The shim's two settings. Defaults match the daemon's (src/config/config.ts): the root is
 * /dev/kdbus; the socket is /run/kdbus-cuse/kdbus.sock for root, else
 * $XDG_RUNTIME_DIR/kdbus-cuse/kdbus.sock, falling back to the temporary directory as Node's
 * os.tmpdir() picks it.
 */
#include "config.h"
#include "path.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

static struct kc_config config;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *nonempty_env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

static void load_root(void)
{
	const char *root = nonempty_env("KDBUS_CUSE_ROOT");
	if (!root)
		root = "/dev/kdbus";
	char joined[sizeof config.root], cwd[sizeof config.root];
	if (root[0] != '/') {
		if (!getcwd(cwd, sizeof cwd) || kc_path_join(cwd, root, joined, sizeof joined) < 0)
			return;
		root = joined;
	}
	if (kc_path_normalize(root, config.root, sizeof config.root) < 0)
		config.root[0] = '\0';
}

static void load_socket(void)
{
	const char *sock = nonempty_env("KDBUS_CUSE_SOCKET");
	char fallback[sizeof config.root];
	int n;
	if (sock) {
		n = snprintf(config.socket, sizeof config.socket, "%s", sock);
	} else if (getuid() == 0) {
		n = snprintf(config.socket, sizeof config.socket, "/run/kdbus-cuse/kdbus.sock");
	} else {
		const char *runtime = nonempty_env("XDG_RUNTIME_DIR");
		if (!runtime) {
			const char *tmp = nonempty_env("TMPDIR");
			if (!tmp)
				tmp = nonempty_env("TMP");
			if (!tmp)
				tmp = nonempty_env("TEMP");
			if (!tmp)
				tmp = "/tmp";
			size_t len = strlen(tmp);
			while (len > 1 && tmp[len - 1] == '/')
				len--;
			snprintf(fallback, sizeof fallback, "%.*s/kdbus-cuse-%u", (int)len, tmp, (unsigned)getuid());
			runtime = fallback;
		}
		n = snprintf(config.socket, sizeof config.socket, "%s/kdbus-cuse/kdbus.sock", runtime);
	}
	if (n < 0 || (size_t)n >= sizeof config.socket)
		config.socket[0] = '\0';
}

static void load(void)
{
	load_root();
	load_socket();
}

const struct kc_config *kc_config(void)
{
	pthread_once(&once, load);
	return &config;
}
