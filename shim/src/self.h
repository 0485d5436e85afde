/*
 * The calling process's and thread's ids, without a system call each time they are asked
 * for. glibc no longer caches getpid(), and one kdbus ioctl needs the pid about ten times
 * (its caller-memory accesses, the multiplexer, the holders): a kdbus ioctl reads it once
 * and keeps it for its duration (kc_self_enter/kc_self_leave). The thread id is kept per
 * thread. A child of fork() forgets both (fork.c), so it never uses its parent's.
 */
#ifndef KC_SELF_H
#define KC_SELF_H

#include <sys/types.h>
#include <unistd.h>

/* Initial-exec: the shim is loaded with the program, and needs nothing from the dynamic loader. */
#define KC_SELF_TLS __thread __attribute__((tls_model("initial-exec")))

extern KC_SELF_TLS pid_t kc_self_pid_kept;
extern KC_SELF_TLS pid_t kc_self_tid_kept;

static inline pid_t kc_self_pid(void)
{
	pid_t pid = kc_self_pid_kept;
	return pid ? pid : getpid();
}

pid_t kc_self_tid(void);

/* Keeps the pid until kc_self_leave(previous); returns the previous state (calls nest). */
static inline pid_t kc_self_enter(void)
{
	pid_t previous = kc_self_pid_kept;
	kc_self_pid_kept = getpid();
	return previous;
}

static inline void kc_self_leave(pid_t previous)
{
	kc_self_pid_kept = previous;
}

/* In a child of fork(): the ids kept are the parent's. */
void kc_self_forget(void);

#endif
