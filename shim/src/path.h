/*
 * Which paths the shim serves. Paths are compared lexically, like the daemon names its
 * nodes: symlinks are not followed, "." and ".." and repeated slashes are folded.
 */
#ifndef KC_PATH_H
#define KC_PATH_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Cheap first test on the path as given, before anything costs a system call: can its last
 * component name a kdbus node ("control", "bus", or a custom endpoint "<uid>-<name>")? A
 * path ending in "/", "." or ".." names a directory and never a node.
 */
bool kc_path_may_be_node(const char *path);

/*
 * Folds an absolute path lexically into out (cap bytes): repeated slashes become one, "."
 * components go, ".." removes the component before it ("/.." stays "/"). Returns the length,
 * or -1 if path is not absolute or the result does not fit.
 */
int kc_path_normalize(const char *path, char *out, size_t cap);

/* Writes base "/" rel into out; -1 if it does not fit. base is an absolute directory. */
int kc_path_join(const char *base, const char *rel, char *out, size_t cap);

/*
 * For a normalized path strictly below the normalized root, the part after the root and
 * its slash ("0-system/bus"); NULL for the root itself and for paths elsewhere.
 */
const char *kc_path_below(const char *path, const char *root);

#endif
