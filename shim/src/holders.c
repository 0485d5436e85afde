/* The per-process reference table (see holders.h). */
#include "holders.h"
#include "sys.h"

void kc_holders_init(struct kc_holders *h, pid_t pid)
{
	atomic_init(&h->entry[0].pid, pid);
	atomic_init(&h->entry[0].refs, 1);
}

/* pid's entry, claimed if it has none: a free one, else one of a process that exited. */
static int entry_of(struct kc_holders *h, pid_t pid)
{
	for (int i = 0; i < KC_HOLDERS; i++)
		if (atomic_load(&h->entry[i].pid) == pid)
			return i;
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < KC_HOLDERS; i++) {
			int32_t old = atomic_load(&h->entry[i].pid);
			bool claimable = pass == 0 ? old == 0 : old != 0 && !kc_sys_alive(old);
			if (claimable && atomic_compare_exchange_strong(&h->entry[i].pid, &old, pid)) {
				atomic_store(&h->entry[i].refs, 0);
				return i;
			}
		}
	}
	return -1;
}

int kc_holders_add(struct kc_holders *h, pid_t pid, int delta)
{
	int i = entry_of(h, pid);
	if (i < 0) {
		/* Nobody can tell when the last reference goes any more; the socket's end will. */
		atomic_store(&h->untracked, 1);
		return 1;
	}
	return atomic_fetch_add(&h->entry[i].refs, delta) + delta;
}

bool kc_holders_last(struct kc_holders *h)
{
	if (atomic_load(&h->untracked))
		return false;
	pid_t self = getpid();
	for (int i = 0; i < KC_HOLDERS; i++) {
		int32_t pid = atomic_load(&h->entry[i].pid);
		if (pid != 0 && pid != self && atomic_load(&h->entry[i].refs) > 0 && kc_sys_alive(pid))
			return false;
	}
	uint32_t not_yet = 0;
	return atomic_compare_exchange_strong(&h->released, &not_yet, 1);
}
