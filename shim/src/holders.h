/*
 * Who holds an open kdbus file: per process, how many references (the program's
 * descriptors and operations in flight) it has. The table lives in the page the processes
 * share (see mux.h), and is updated without locks, so fork hooks may use it. It tells the
 * process dropping its last reference whether it is the last holder anywhere, and so the
 * one to release the handle — processes that exited without closing do not count.
 */
#ifndef KC_HOLDERS_H
#define KC_HOLDERS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define KC_HOLDERS 64

struct kc_holders {
	struct {
		_Atomic int32_t pid; /* 0: a free entry */
		_Atomic int32_t refs;
	} entry[KC_HOLDERS];
	_Atomic uint32_t untracked; /* a process found no entry: the count is incomplete */
	_Atomic uint32_t released;  /* the handle has been released */
};

/* A fresh table (in zeroed shared memory) where pid holds one reference. */
void kc_holders_init(struct kc_holders *h, pid_t pid);

/* Adds delta to pid's references; returns its new count. */
int kc_holders_add(struct kc_holders *h, pid_t pid, int delta);

/*
 * After this process dropped its last reference: true, once, if no other live process
 * holds one and the count is complete.
 */
bool kc_holders_last(struct kc_holders *h);

#endif
