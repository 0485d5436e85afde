/*
 * The functions the shim interposes, as the next library in the lookup order (normally
 * libc) provides them. Each interposer forwards there for everything that is not kdbus, so
 * other preloaded libraries keep working behind the shim.
 */
#ifndef KC_REAL_H
#define KC_REAL_H

#include <stdatomic.h>

/* The shim is built with hidden visibility; only the interposed functions are exported. */
#define KC_EXPORT __attribute__((visibility("default")))

/* Defines the lazily filled slot for one symbol, in the file that interposes it. */
#define KC_NEXT_SLOT(name) static void *_Atomic kc_next_slot_##name

/* The next definition of `name`, typed like the interposer; NULL if there is none. */
#define KC_NEXT(name) ((__typeof__(&name))kc_next_lookup(&kc_next_slot_##name, #name))

/* Resolves name into slot the first time (dlsym); the shim's hot paths inline the rest. */
void *kc_next_resolve(void *_Atomic *slot, const char *name);

static inline void *kc_next_lookup(void *_Atomic *slot, const char *name)
{
	void *fn = atomic_load_explicit(slot, memory_order_relaxed);
	return fn ? fn : kc_next_resolve(slot, name);
}

/* What an interposer returns when the symbol has no next definition: -1 with ENOSYS. */
int kc_next_missing(void);

#endif
