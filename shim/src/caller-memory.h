/*
 * The calling program's memory, read and written the way the kernel's copy_from_user and
 * copy_to_user did: a bad address is an error (EFAULT), never a crash. The shim runs inside
 * the caller, so this is process_vm_readv/writev on its own pid.
 */
#ifndef KC_CALLER_MEMORY_H
#define KC_CALLER_MEMORY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* 0, or -EFAULT if any of the len bytes at address cannot be read. */
int kc_caller_read(void *dst, uint64_t address, size_t len);

/*
 * Reads up to len bytes at address, stopping where memory becomes unreadable (at a page
 * boundary): returns how many were read from the start, 0 if none.
 */
size_t kc_caller_read_some(void *dst, uint64_t address, size_t len);

/* 0, or -EFAULT if any of the len bytes at address cannot be written. */
int kc_caller_write(uint64_t address, const void *src, size_t len);

/*
 * Writes n pieces (local[i] to remote[i]), in one system call when all are writable; else
 * each writable piece still gets its bytes and the result is -EFAULT.
 */
int kc_caller_write_all(const struct iovec *local, const struct iovec *remote, unsigned n);

#endif
