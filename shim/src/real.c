/* Finding the next definition of an interposed symbol (see real.h). */
#include "real.h"

#include <dlfcn.h>
#include <errno.h>

void *kc_next_resolve(void *_Atomic *slot, const char *name)
{
	/* Pass-through calls leave errno as the next definition set it, so keep dlsym's out. */
	int saved = errno;
	/* Two threads may both look it up; they store the same value. */
	void *fn = dlsym(RTLD_NEXT, name);
	atomic_store_explicit(slot, fn, memory_order_relaxed);
	errno = saved;
	return fn;
}

int kc_next_missing(void)
{
	errno = ENOSYS;
	return -1;
}
