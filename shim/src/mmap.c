/*
 * mmap of a kdbus descriptor maps the connection's pool: the read-only memfd the daemon
 * handed over with HELLO (or, when this process does not have it, e.g. after exec, asks
 * for with POOL; for a CUSE device, POOL on its side channel). kdbus's rules apply: no
 * write access (EPERM), not longer than the pool (EFAULT), and no later
 * mprotect(PROT_WRITE) — the memfd is open read-only, so the kernel refuses that with
 * EACCES as it did for kdbus. The result is an ordinary file mapping, so fork, munmap and
 * mremap need nothing from the shim.
 */
#include "conn.h"
#include "cuse.h"
#include "frame.h"
#include "real.h"
#include "request.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

KC_NEXT_SLOT(mmap);
#ifdef __GLIBC__
KC_NEXT_SLOT(mmap64);
#endif

/* Asks the daemon for the pool; 0 or -errno (EBADFD before HELLO, as kdbus's mmap said). */
static int fetch_pool(struct kc_conn *c, int fd)
{
	if (c->cuse)
		return kc_side_fetch_pool(c);
	int sock = kc_conn_socket(c, fd);
	if (sock < 0)
		return -EBADF;
	struct kc_inbound in;
	struct kc_result r;
	int rc = kc_request_bare(c, sock, KC_FRAME_POOL, &in, &r);
	if (rc)
		return rc;
	if (r.err == 0 && (r.flags & KC_RESULT_POOL) && in.n_fds > 0) {
		kc_conn_set_pool(c, in.fds[0]);
		in.fds[0] = -1;
	}
	rc = r.err ? -r.err : 0;
	kc_inbound_release(&in);
	return rc;
}

/* Checks a mapping request against kdbus's rules; returns the pool to map, or -errno. */
static int pool_for(struct kc_conn *c, int fd, size_t len, int prot)
{
	uint64_t size;
	int pool = kc_conn_pool(c, &size);
	if (pool < 0) {
		int rc = fetch_pool(c, fd);
		if (rc)
			return rc;
		pool = kc_conn_pool(c, &size);
		if (pool < 0)
			return -EBADFD;
	}
	if (prot & PROT_WRITE)
		return -EPERM;
	/* kdbus compared the whole pages of the mapping with the pool. */
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	if (((len + page - 1) & ~(page - 1)) > size)
		return -EFAULT;
	return pool;
}

/* A private mapping could be made writable later; kdbus never allowed that, a shared one cannot. */
static int pool_flags(int flags)
{
	return (flags & ~(MAP_PRIVATE | MAP_SHARED_VALIDATE)) | MAP_SHARED;
}

/* Which libc entry the program called: the pool is mapped through the same one. */
enum entry {
	ENTRY_MMAP,
#ifdef __GLIBC__
	ENTRY_MMAP64,
#endif
};

static void *call_next(enum entry entry, void *addr, size_t len, int prot, int flags, int fd, int64_t off)
{
#ifdef __GLIBC__
	if (entry == ENTRY_MMAP64) {
		void *(*next64)(void *, size_t, int, int, int, off64_t) = KC_NEXT(mmap64);
		if (next64)
			return next64(addr, len, prot, flags, fd, (off64_t)off);
		errno = ENOSYS;
		return MAP_FAILED;
	}
#else
	(void)entry;
#endif
	void *(*next)(void *, size_t, int, int, int, off_t) = KC_NEXT(mmap);
	if (next)
		return next(addr, len, prot, flags, fd, (off_t)off);
	errno = ENOSYS;
	return MAP_FAILED;
}

static void *route(enum entry entry, void *addr, size_t len, int prot, int flags, int fd, int64_t off)
{
	if (fd < 0 || (flags & MAP_ANONYMOUS))
		return call_next(entry, addr, len, prot, flags, fd, off);
	struct kc_conn *c = kc_fd_get(fd).kind == KC_FD_CUSE ? kc_cuse_acquire(fd) : kc_conn_acquire(fd);
	if (!c) {
		/*
		 * libc's mmap fails with ENODEV on every socket and CUSE device; only then can fd be
		 * an unknown kdbus one.
		 */
		void *result = call_next(entry, addr, len, prot, flags, fd, off);
		if (result != MAP_FAILED || errno != ENODEV)
			return result;
		c = kc_conn_attach(fd);
		if (!c)
			c = kc_cuse_probe(fd);
		if (!c)
			return result;
	}
	if (c->cuse && kc_side_attach(c, fd) == -ENOTTY) {
		/* A character device below the root that is not the daemon's. */
		kc_conn_release(c);
		return call_next(entry, addr, len, prot, flags, fd, off);
	}
	void *result = MAP_FAILED;
	int pool = pool_for(c, fd, len, prot);
	if (pool < 0)
		errno = -pool;
	else
		result = call_next(entry, addr, len, prot, pool_flags(flags), pool, off);
	kc_conn_release(c);
	return result;
}

KC_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return route(ENTRY_MMAP, addr, len, prot, flags, fd, off);
}

#ifdef __GLIBC__
KC_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
	return route(ENTRY_MMAP64, addr, len, prot, flags, fd, off);
}
#endif
