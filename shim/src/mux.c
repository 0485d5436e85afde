/* The connection's request multiplexer (see mux.h). */
#include "mux.h"
#include "self.h"
#include "sys.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define SLOTS 64
/* The reader role taken by kc_mux_take_head, which waits for no frame of its own. */
#define HEAD_TAKER SLOTS
/* How often a waiter checks that the process holding the reader role is still alive. */
#define LIVENESS_CHECK_SECONDS 1

struct slot {
	uint64_t seq;
	int32_t pid;
	uint32_t busy;
};

struct kc_mux {
	struct kc_holders holders;
	pthread_mutex_t lock; /* guards everything below */
	pthread_cond_t changed;
	pthread_mutex_t write_lock;
	uint64_t next_seq;
	int32_t reader; /* slot of the waiter reading the socket, -1 for none */
	int32_t reader_pid;
	int32_t dead; /* errno once the stream ended or went out of step, else 0 */
	uint32_t hup;
	/* A WAKE was read since the last RESULT: the daemon's queue may hold messages. */
	uint32_t wake_read;
	/* RECV frames written to the stream, answered or not: a HEAD's seq is compared with it. */
	uint64_t recvs_sent;
	/* The last HEAD, read after the daemon had taken every RECV sent: a plain RECV's message. */
	uint32_t head_valid;
	struct kc_head head;
	struct slot slots[SLOTS];
	struct kc_published published;
};

static void lock_robust(pthread_mutex_t *mutex)
{
	/* The previous owner died holding it; the fields it guards are still usable. */
	if (pthread_mutex_lock(mutex) == EOWNERDEAD)
		pthread_mutex_consistent(mutex);
}

/* Waits for a change; false when the wait timed out. */
static bool wait_changed(struct kc_mux *m)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += LIVENESS_CHECK_SECONDS;
	int rc = pthread_cond_timedwait(&m->changed, &m->lock, &deadline);
	if (rc == EOWNERDEAD)
		pthread_mutex_consistent(&m->lock);
	return rc != ETIMEDOUT;
}

struct kc_mux *kc_mux_create(uint64_t first_seq)
{
	struct kc_mux *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return NULL;
	pthread_mutexattr_t ma;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&m->lock, &ma);
	pthread_mutex_init(&m->write_lock, &ma);
	pthread_mutexattr_destroy(&ma);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&m->changed, &ca);
	pthread_condattr_destroy(&ca);
	m->next_seq = first_seq;
	m->reader = -1;
	kc_holders_init(&m->holders, getpid());
	return m;
}

struct kc_holders *kc_mux_holders(struct kc_mux *m)
{
	return &m->holders;
}


void kc_mux_unmap(struct kc_mux *m)
{
	munmap(m, sizeof *m);
}

int kc_mux_enter(struct kc_mux *m, struct kc_wait *w)
{
	int rc = 0;
	lock_robust(&m->lock);
	for (;;) {
		if (m->dead) {
			rc = -m->dead;
			break;
		}
		int free_slot = -1;
		for (int i = 0; i < SLOTS && free_slot < 0; i++)
			if (!m->slots[i].busy)
				free_slot = i;
		if (free_slot < 0) {
			/* All taken: reclaim the slots of processes that died waiting. */
			for (int i = 0; i < SLOTS; i++)
				if (i != m->reader && !kc_sys_alive(m->slots[i].pid))
					m->slots[i].busy = 0;
		}
		if (free_slot >= 0) {
			struct slot *s = &m->slots[free_slot];
			s->seq = m->next_seq++;
			s->pid = kc_self_pid();
			s->busy = 1;
			w->slot = free_slot;
			w->seq = s->seq;
			break;
		}
		wait_changed(m);
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

void kc_mux_leave(struct kc_mux *m, struct kc_wait *w)
{
	lock_robust(&m->lock);
	if (m->reader == w->slot)
		m->reader = -1;
	m->slots[w->slot].busy = 0;
	pthread_cond_broadcast(&m->changed);
	pthread_mutex_unlock(&m->lock);
}

void kc_mux_lock_writes(struct kc_mux *m)
{
	lock_robust(&m->write_lock);
}

void kc_mux_unlock_writes(struct kc_mux *m)
{
	pthread_mutex_unlock(&m->write_lock);
}

/* Blocks until w holds the reader role; 0 or -errno of a dead stream. */
static int become_reader(struct kc_mux *m, struct kc_wait *w)
{
	int rc = 0;
	lock_robust(&m->lock);
	for (;;) {
		if (m->reader == w->slot)
			break;
		if (m->dead) {
			rc = -m->dead;
			break;
		}
		if (m->reader < 0) {
			m->reader = w->slot;
			m->reader_pid = kc_self_pid();
			break;
		}
		if (!wait_changed(m) && !kc_sys_alive(m->reader_pid))
			m->reader = -1;
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

/* After its RESULT a waiter reads no more: the next waiter may read while this one finishes. */
static void release_reader(struct kc_mux *m, struct kc_wait *w)
{
	lock_robust(&m->lock);
	m->wake_read = 0;
	m->head_valid = 0;
	if (m->reader == w->slot) {
		m->reader = -1;
		pthread_cond_broadcast(&m->changed);
	}
	pthread_mutex_unlock(&m->lock);
}

/*
 * Marks the stream unusable for everyone and returns its errno. err is the failure, or 0
 * for the end of the stream: the daemon is gone (ESHUTDOWN, as for a bus that went away)
 * unless it had hung up the connection before (ECONNRESET, as for a dead connection).
 */
static int kill_stream(struct kc_mux *m, int err)
{
	lock_robust(&m->lock);
	if (!m->dead)
		m->dead = err ? err : m->hup ? ECONNRESET : ESHUTDOWN;
	err = m->dead;
	m->reader = -1;
	pthread_cond_broadcast(&m->changed);
	pthread_mutex_unlock(&m->lock);
	return -err;
}

/* Reads the frame whose header was peeked; -errno with the stream killed on failure. */
static int read_frame(struct kc_mux *m, int sock, const struct kc_header *h, struct kc_inbound *in)
{
	in->header = *h;
	in->heap = NULL;
	in->n_fds = 0;
	uint8_t *buf = in->small;
	if (h->length > sizeof in->small) {
		buf = in->heap = malloc(h->length);
		if (!buf)
			return kill_stream(m, ENOMEM);
	}
	int rc = kc_recv_exact(sock, buf, h->length, in->fds, KC_MAX_RECEIVED_FDS, &in->n_fds);
	if (rc < 0) {
		kc_inbound_release(in);
		return kill_stream(m, rc == -ECONNRESET ? 0 : -rc);
	}
	in->payload = buf + KC_FRAME_HEADER;
	in->payload_len = h->length - KC_FRAME_HEADER;
	return 0;
}

void kc_inbound_release(struct kc_inbound *in)
{
	for (unsigned i = 0; i < in->n_fds; i++)
		if (in->fds[i] >= 0)
			kc_sys_close(in->fds[i]);
	in->n_fds = 0;
	free(in->heap);
	in->heap = NULL;
}

int kc_mux_send_mem(struct kc_mux *m, int sock, uint64_t seq, int32_t err, const void *data, uint32_t len)
{
	uint8_t head[KC_MEM_HEAD];
	static const uint8_t zeros[8];
	kc_mem_head_encode(head, seq, err, len);
	struct iovec iov[3] = {
		{ head, sizeof head },
		{ (void *)data, len },
		{ (void *)zeros, kc_pad8(len) - len },
	};
	kc_mux_lock_writes(m);
	int rc = kc_send_all(sock, iov, 3, NULL, 0);
	kc_mux_unlock_writes(m);
	return rc;
}

void kc_mux_note_published(struct kc_mux *m, uint64_t offset)
{
	lock_robust(&m->lock);
	kc_published_add(&m->published, offset);
	pthread_mutex_unlock(&m->lock);
}

bool kc_mux_take_published(struct kc_mux *m, int sock, uint64_t offset)
{
	lock_robust(&m->lock);
	/* A reader at work may have read a HUP and not said so yet. */
	bool sure = kc_published_take(&m->published, offset) && m->reader < 0 && !m->dead && !m->hup &&
		    kc_only_wake_queued(sock);
	pthread_mutex_unlock(&m->lock);
	return sure;
}

bool kc_mux_nothing_queued(struct kc_mux *m, int sock)
{
	lock_robust(&m->lock);
	/* A reader at work may have read a WAKE and not said so yet. */
	bool quiet = m->reader < 0 && !m->dead && !m->hup && !m->wake_read && kc_nothing_waiting(sock);
	pthread_mutex_unlock(&m->lock);
	return quiet;
}

bool kc_mux_hung_up(struct kc_mux *m, int sock)
{
	lock_robust(&m->lock);
	bool gone = m->hup || m->dead;
	pthread_mutex_unlock(&m->lock);
	if (gone)
		return true;
	uint8_t raw[KC_FRAME_HEADER];
	struct kc_header h;
	ssize_t n = kc_peek_now(sock, raw, sizeof raw);
	return n == 0 || (n == KC_FRAME_HEADER && kc_header_decode(raw, &h) == 0 && h.type == KC_FRAME_HUP);
}

static bool is_event(uint32_t type)
{
	return type == KC_FRAME_WAKE || type == KC_FRAME_HUP || type == KC_FRAME_HEAD;
}

/* What an event frame read off the stream says of the connection. Under m->lock. */
static void note_event(struct kc_mux *m, const struct kc_inbound *ev)
{
	struct kc_head head;
	if (ev->header.type == KC_FRAME_HUP) {
		m->hup = 1;
		return;
	}
	m->wake_read = 1;
	/*
	 * A bare WAKE withdraws the last HEAD (RECV has more to do now, like reporting lost
	 * messages); a HEAD written before the daemon took every RECV sent may name a message
	 * gone since.
	 */
	m->head_valid = ev->header.type == KC_FRAME_HEAD && ev->header.seq == m->recvs_sent &&
			kc_head_decode(ev->payload, ev->payload_len, &head) == 0;
	if (m->head_valid)
		m->head = head;
}

void kc_mux_count_recv(struct kc_mux *m)
{
	lock_robust(&m->lock);
	m->recvs_sent++;
	m->head_valid = 0;
	pthread_mutex_unlock(&m->lock);
}

/*
 * Whether a HEAD, peeked with nothing after it on the stream, names the queue's head with
 * more messages behind it. Such a HEAD is noted where it lies: left unread, it keeps the
 * socket readable, as kdbus's descriptor stays while messages are queued, until the
 * daemon's next event follows it (the HEAD is stale then, read and passed over like any
 * other). Under the reader role.
 */
static bool note_head_in_place(struct kc_mux *m, const uint8_t *frame, const struct kc_header *h)
{
	struct kc_inbound ev = { .header = *h, .payload = frame + KC_FRAME_HEADER, .payload_len = KC_HEAD_FRAME - KC_FRAME_HEADER };
	struct kc_head head;
	if (kc_head_decode(ev.payload, ev.payload_len, &head) != 0 || head.last)
		return false;
	lock_robust(&m->lock);
	bool current = h->seq == m->recvs_sent;
	if (current)
		note_event(m, &ev);
	pthread_mutex_unlock(&m->lock);
	return current;
}

bool kc_mux_take_head(struct kc_mux *m, int sock, uint64_t *offset, uint64_t *size)
{
	lock_robust(&m->lock);
	bool idle = m->reader < 0 && !m->dead && !m->hup;
	if (idle) {
		m->reader = HEAD_TAKER;
		m->reader_pid = kc_self_pid();
	}
	pthread_mutex_unlock(&m->lock);
	if (!idle)
		return false;
	/*
	 * The events that woke the program (poll) are still on the stream: read them first. A
	 * peek of one byte more than a HEAD frame says whether a HEAD is the last thing there.
	 */
	bool ok = true;
	uint8_t peeked[KC_HEAD_FRAME + 1];
	struct kc_header h;
	for (;;) {
		ssize_t n = kc_peek_now(sock, peeked, sizeof peeked);
		if (n < (ssize_t)KC_FRAME_HEADER || kc_header_decode(peeked, &h) != 0 || !is_event(h.type))
			break;
		if (h.type == KC_FRAME_HEAD && n == KC_HEAD_FRAME && note_head_in_place(m, peeked, &h))
			break;
		struct kc_inbound ev;
		if (read_frame(m, sock, &h, &ev)) {
			ok = false;
			break;
		}
		lock_robust(&m->lock);
		note_event(m, &ev);
		pthread_mutex_unlock(&m->lock);
		kc_inbound_release(&ev);
	}
	lock_robust(&m->lock);
	if (m->reader == HEAD_TAKER) {
		m->reader = -1;
		pthread_cond_broadcast(&m->changed);
	}
	bool taken = ok && !m->dead && !m->hup && m->head_valid;
	if (taken) {
		*offset = m->head.offset;
		*size = m->head.size;
		m->head_valid = 0;
		m->recvs_sent++;
		/*
		 * The only message queued, as the daemon said: had another come, a newer HEAD or a
		 * WAKE would be read or waiting, so the queue is empty as after a RESULT with no event.
		 */
		if (m->head.last)
			m->wake_read = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return taken;
}

/* The busy slot waiting for seq, or -1. Under m->lock. */
static int waiter_of(struct kc_mux *m, uint64_t seq)
{
	for (int i = 0; i < SLOTS; i++)
		if (m->slots[i].busy && m->slots[i].seq == seq)
			return i;
	return -1;
}

/*
 * A frame nobody will read: its waiter's process died. Reads it off the stream; a FETCH
 * still gets an answer so the daemon can finish the command, and the RESULT frees the slot.
 */
static int drop_orphan(struct kc_mux *m, int sock, const struct kc_header *h, int slot)
{
	struct kc_inbound in;
	int rc = read_frame(m, sock, h, &in);
	if (rc)
		return rc;
	kc_inbound_release(&in);
	if (h->type == KC_FRAME_FETCH)
		return kc_mux_send_mem(m, sock, h->seq, EFAULT, NULL, 0);
	if (h->type == KC_FRAME_RESULT) {
		lock_robust(&m->lock);
		m->wake_read = 0;
		m->head_valid = 0;
		if (slot >= 0) {
			m->slots[slot].busy = 0;
			pthread_cond_broadcast(&m->changed);
		}
		pthread_mutex_unlock(&m->lock);
	}
	return 0;
}

int kc_mux_next(struct kc_mux *m, struct kc_wait *w, int sock, struct kc_inbound *in)
{
	for (;;) {
		int rc = become_reader(m, w);
		if (rc)
			return rc;
		uint8_t raw[KC_FRAME_HEADER];
		struct kc_header h;
		rc = kc_peek_header(sock, raw);
		if (rc)
			return kill_stream(m, rc == -ECONNRESET ? 0 : -rc);
		if (kc_header_decode(raw, &h) < 0)
			return kill_stream(m, EPROTO);
		if (is_event(h.type)) {
			/* Readiness for poll(); a waiter has no use for it. */
			struct kc_inbound event;
			rc = read_frame(m, sock, &h, &event);
			if (rc)
				return rc;
			lock_robust(&m->lock);
			note_event(m, &event);
			pthread_mutex_unlock(&m->lock);
			kc_inbound_release(&event);
			continue;
		}
		if (h.seq == w->seq) {
			rc = read_frame(m, sock, &h, in);
			if (rc == 0 && h.type == KC_FRAME_RESULT)
				release_reader(m, w);
			return rc;
		}
		lock_robust(&m->lock);
		int slot = waiter_of(m, h.seq);
		bool handed = slot >= 0 && kc_sys_alive(m->slots[slot].pid);
		if (handed) {
			m->reader = slot;
			m->reader_pid = m->slots[slot].pid;
			pthread_cond_broadcast(&m->changed);
		}
		pthread_mutex_unlock(&m->lock);
		if (!handed) {
			rc = drop_orphan(m, sock, &h, slot);
			if (rc)
				return rc;
		}
	}
}
