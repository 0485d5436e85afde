/*
 * Reserved descriptor numbers. kdbus wrote the numbers of the files it installed at RECV
 * into the message in the pool; the daemon must do the same before the files reach this
 * process, so the shim offers numbers it already holds (placeholder files, close-on-exec)
 * and later puts the files there with dup3. A small per-process cache avoids making new
 * placeholders for every RECV.
 */
#ifndef KC_RESERVE_H
#define KC_RESERVE_H

#include <stdbool.h>

/* Fills out with up to want reserved numbers; returns how many (fewer if descriptors run out). */
int kc_reserve_take(int *out, int want);

/* New reserved numbers at the lowest free numbers (3 or above), where kdbus installed files. */
int kc_reserve_take_lowest(int *out, int want);

/* New reserved numbers far above those programs use (see side-channel.h). */
int kc_reserve_take_high(int *out, int want);

/* Returns numbers that were offered but not used. */
void kc_reserve_return(const int *fds, int n);

/*
 * Puts file onto the reserved number (which stops being the shim's) and closes file.
 * If the program took the number over in the meantime, its file wins and file is closed.
 */
void kc_reserve_install(int reserved, int file);
/* The same under kc_lock, leaving file open. */
void kc_reserve_install_locked(int reserved, int file);

/* Whether the table has fd as a reserved number (taken or cached). Under kc_lock. */
bool kc_reserve_is_placeholder_locked(int fd);

/* The program's dup2/dup3 is about to replace a reserved number: forget it. Under kc_lock. */
void kc_reserve_forget_locked(int fd);

/* Whether fd still holds one of the reserve's placeholders (and not a file of the program's). */
bool kc_reserve_holds(int fd);

#endif
