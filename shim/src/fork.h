/*
 * What the shim does around fork(). A child holds copies of the parent's kdbus descriptors,
 * so each connection's shared reference count must include them before the parent can go
 * on and close its own (or the parent's close would release a connection the child still
 * holds). The shim's process-local state is taken consistent across the fork by holding
 * kc_lock.
 *
 * Only fork() runs these hooks. posix_spawn and vfork children do not, which is right for
 * close-on-exec descriptors; a kdbus descriptor such a child keeps across exec is not
 * counted. If fork() fails, the parent's counts stay raised: its connections are then
 * released at the socket's end of file instead of at close().
 */
#ifndef KC_FORK_H
#define KC_FORK_H

/* Installs the fork hooks; called once, on the first kc_lock(). */
void kc_fork_hooks_install(void);

#endif
