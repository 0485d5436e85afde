/* Fault-safe access to the caller's memory (see caller-memory.h). */
#include "caller-memory.h"

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

int kc_caller_read(void *dst, uint64_t address, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec local = { .iov_base = dst, .iov_len = len };
	struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = len };
	/* A partial transfer means the range ends in unmapped memory: all or nothing, like copy_from_user. */
	return process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}

int kc_caller_write(uint64_t address, const void *src, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec local = { .iov_base = (void *)src, .iov_len = len };
	struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = len };
	return process_vm_writev(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}
