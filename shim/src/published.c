/* The slices published to the program (see published.h). */
#include "published.h"

void kc_published_add(struct kc_published *p, uint64_t offset)
{
	for (uint32_t i = 0; i < p->n; i++)
		if (p->offset[i] == offset)
			return;
	if (p->n < KC_PUBLISHED_MAX)
		p->offset[p->n++] = offset;
}

bool kc_published_take(struct kc_published *p, uint64_t offset)
{
	for (uint32_t i = 0; i < p->n; i++) {
		if (p->offset[i] == offset) {
			p->offset[i] = p->offset[--p->n];
			return true;
		}
	}
	return false;
}
