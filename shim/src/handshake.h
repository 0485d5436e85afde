/* Opening a kdbus node through the daemon: what open() does for paths the shim serves. */
#ifndef KC_HANDSHAKE_H
#define KC_HANDSHAKE_H

/*
 * Connects to the daemon and asks it to open rel (the path below the root) with the
 * program's open flags. Returns the program's new descriptor, or -1 with errno: the
 * daemon's answer (ENOENT, EACCES, ESHUTDOWN...), or, when the daemon cannot be reached,
 * ENOENT if path does not exist either and otherwise connect()'s error.
 */
int kc_handshake(const char *rel, const char *path, int flags);

#endif
