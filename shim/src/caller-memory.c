/* Fault-safe access to the caller's memory (see caller-memory.h). */
#include "caller-memory.h"
#include "self.h"

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

/* Faults happen per page; pages are multiples of this on every architecture Linux runs on. */
#define FAULT_GRAIN 4096u

int kc_caller_read(void *dst, uint64_t address, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec local = { .iov_base = dst, .iov_len = len };
	struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = len };
	/* A partial transfer means the range ends in unmapped memory: all or nothing, like copy_from_user. */
	return process_vm_readv(kc_self_pid(), &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}

size_t kc_caller_read_some(void *dst, uint64_t address, size_t len)
{
	if (len == 0)
		return 0;
	/*
	 * The kernel transfers whole iovecs only: one per page-sized piece, so a range that runs
	 * into unmapped memory still yields the pieces before it.
	 */
	struct iovec local = { .iov_base = dst, .iov_len = len };
	struct iovec remote[2];
	size_t first = FAULT_GRAIN - (size_t)(address % FAULT_GRAIN);
	int n = 1;
	remote[0].iov_base = (void *)(uintptr_t)address;
	remote[0].iov_len = len;
	if (first < len) {
		remote[0].iov_len = first;
		remote[1].iov_base = (void *)(uintptr_t)(address + first);
		remote[1].iov_len = len - first;
		n = 2;
	}
	ssize_t got = process_vm_readv(kc_self_pid(), &local, 1, remote, (unsigned long)n, 0);
	return got > 0 ? (size_t)got : 0;
}

int kc_caller_write(uint64_t address, const void *src, size_t len)
{
	if (len == 0)
		return 0;
	struct iovec local = { .iov_base = (void *)src, .iov_len = len };
	struct iovec remote = { .iov_base = (void *)(uintptr_t)address, .iov_len = len };
	return process_vm_writev(kc_self_pid(), &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -EFAULT;
}

int kc_caller_write_all(const struct iovec *local, const struct iovec *remote, unsigned n)
{
	size_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += local[i].iov_len;
	if (total == 0 || process_vm_writev(kc_self_pid(), local, n, remote, n, 0) == (ssize_t)total)
		return 0;
	/* Some range is not writable: write each one alone, so every writable one gets its bytes. */
	int rc = 0;
	for (unsigned i = 0; i < n; i++)
		if (kc_caller_write((uint64_t)(uintptr_t)remote[i].iov_base, local[i].iov_base, local[i].iov_len) < 0)
			rc = -EFAULT;
	return rc;
}
