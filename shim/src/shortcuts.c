/* The answers the shim gives itself (see shortcuts.h). */
#include "shortcuts.h"
#include "caller-memory.h"
#include "kdbus-abi.h"

#include <string.h>
#include <sys/uio.h>

static const uint64_t no_flags;

/* The command struct's size field, if at least `need` bytes of the struct were read. */
static bool struct_size(const struct kc_prefetch *pf, size_t need, uint64_t *size)
{
	const uint8_t *cmd = kc_prefetch_cmd(pf);
	if (!cmd || pf->cmd_len < need)
		return false;
	memcpy(size, cmd + KDBUS_CMD_SIZE_OFF, sizeof *size);
	return true;
}

bool kc_recv_may_answer_empty(const struct kc_prefetch *pf)
{
	uint64_t size, flags = pf->flags;
	return struct_size(pf, KDBUS_RECV_SIZE, &size) && size == KDBUS_RECV_SIZE &&
	       !(flags & ~(KDBUS_RECV_PEEK | KDBUS_RECV_DROP | KDBUS_RECV_USE_PRIORITY)) &&
	       !((flags & KDBUS_RECV_DROP) && (flags & KDBUS_RECV_USE_PRIORITY));
}

bool kc_recv_answer_empty(uint64_t arg, uint64_t pool_size)
{
	return kc_recv_answer(arg, pool_size, 0);
}

bool kc_recv_is_plain(const struct kc_prefetch *pf)
{
	uint64_t size;
	return struct_size(pf, KDBUS_RECV_SIZE, &size) && size == KDBUS_RECV_SIZE && pf->have_flags && pf->flags == 0;
}

bool kc_recv_answer(uint64_t arg, uint64_t offset, uint64_t size)
{
	/* dropped_msgs, then msg: offset, msg_size, return_flags. */
	const uint64_t info[4] = { 0, offset, size, 0 };
	struct iovec local[2] = { { (void *)info, sizeof info }, { (void *)&no_flags, sizeof no_flags } };
	struct iovec remote[2] = {
		{ (void *)(uintptr_t)(arg + KDBUS_RECV_DROPPED_MSGS_OFF), sizeof info },
		{ (void *)(uintptr_t)(arg + KDBUS_CMD_RETURN_FLAGS_OFF), sizeof no_flags },
	};
	return kc_caller_write_all(local, remote, 2) == 0;
}

bool kc_free_offset(const struct kc_prefetch *pf, uint64_t *offset)
{
	uint64_t size;
	if (!struct_size(pf, KDBUS_FREE_SIZE, &size))
		return false;
	memcpy(offset, kc_prefetch_cmd(pf) + KDBUS_FREE_OFFSET_OFF, sizeof *offset);
	return true;
}

bool kc_free_cannot_fail(const struct kc_prefetch *pf)
{
	uint64_t size;
	return struct_size(pf, KDBUS_FREE_SIZE, &size) && size == KDBUS_FREE_SIZE && pf->flags == 0;
}

bool kc_free_answer(uint64_t arg)
{
	return kc_caller_write(arg + KDBUS_CMD_RETURN_FLAGS_OFF, &no_flags, sizeof no_flags) == 0;
}
