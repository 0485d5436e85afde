/*
 * The calling program's memory, read and written the way the kernel's copy_from_user and
 * copy_to_user did: a bad address is an error (EFAULT), never a crash. The shim runs inside
 * the caller, so this is process_vm_readv/writev on its own pid.
 */
#ifndef KC_CALLER_MEMORY_H
#define KC_CALLER_MEMORY_H

#include <stddef.h>
#include <stdint.h>

/* 0, or -EFAULT if any of the len bytes at address cannot be read. */
int kc_caller_read(void *dst, uint64_t address, size_t len);

/* 0, or -EFAULT if any of the len bytes at address cannot be written. */
int kc_caller_write(uint64_t address, const void *src, size_t len);

#endif
