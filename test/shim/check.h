/*
 * A minimal test reporter for the shim's C tests: one line per check ("ok - name" or
 * "not ok - name: why"), and the exit status says whether all passed.
 */
#ifndef KC_TEST_CHECK_H
#define KC_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_failures;

#define CHECK(cond, name, ...)                                          \
	do {                                                             \
		if (cond) {                                              \
			printf("ok - %s\n", name);                      \
		} else {                                                 \
			check_failures++;                                \
			printf("not ok - %s: ", name);                  \
			printf(__VA_ARGS__);                             \
			printf(" (%s:%d)\n", __FILE__, __LINE__);        \
		}                                                        \
		fflush(stdout);                                          \
	} while (0)

static inline int check_exit(void)
{
	printf("%s: %d failed\n", check_failures ? "FAILED" : "PASSED", check_failures);
	return check_failures ? 1 : 0;
}

#endif
