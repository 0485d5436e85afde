/* Lexical path handling for deciding which opens go to the daemon (see path.h). */
#include "path.h"

#include <string.h>

bool kc_path_may_be_node(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;
	if (strcmp(name, "control") == 0 || strcmp(name, "bus") == 0)
		return true;
	/* Custom endpoints are named "<creator uid>-<name>". */
	const char *p = name;
	while (*p >= '0' && *p <= '9')
		p++;
	return p != name && *p == '-';
}

int kc_path_normalize(const char *path, char *out, size_t cap)
{
	if (path[0] != '/' || cap < 2)
		return -1;
	size_t len = 0; /* out holds "" for the root while folding, "/a/b" otherwise */
	const char *p = path;
	while (*p) {
		while (*p == '/')
			p++;
		const char *end = strchrnul(p, '/');
		size_t n = (size_t)(end - p);
		if (n == 0 || (n == 1 && p[0] == '.')) {
			/* nothing to add */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (len > 0 && out[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
		} else {
			if (len + 1 + n + 1 > cap)
				return -1;
			out[len++] = '/';
			memcpy(out + len, p, n);
			len += n;
		}
		p = end;
	}
	if (len == 0)
		out[len++] = '/';
	out[len] = '\0';
	return (int)len;
}

int kc_path_join(const char *base, const char *rel, char *out, size_t cap)
{
	size_t b = strlen(base), r = strlen(rel);
	if (b + 1 + r + 1 > cap)
		return -1;
	memcpy(out, base, b);
	out[b] = '/';
	memcpy(out + b + 1, rel, r + 1);
	return (int)(b + 1 + r);
}

const char *kc_path_below(const char *path, const char *root)
{
	size_t n = strlen(root);
	if (n == 1) /* the root is "/" */
		return path[1] ? path + 1 : NULL;
	if (strncmp(path, root, n) != 0 || path[n] != '/' || path[n + 1] == '\0')
		return NULL;
	return path + n + 1;
}
