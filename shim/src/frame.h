/*
 * Frames of the socket protocol (docs/socket-protocol.md), encoded and decoded without any
 * I/O so the codec can be tested alone. All integers are native-endian; every frame and
 * every segment is padded to 8 bytes.
 */
#ifndef KC_FRAME_H
#define KC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KC_FRAME_HEADER 16u
/* The daemon refuses larger frames; the shim refuses them from the daemon too. */
#define KC_FRAME_MAX (8u << 20)
/* Fixed part of an IOCTL payload, before the fd lists. */
#define KC_IOCTL_FIXED 32u
/* What the daemon accepts in one IOCTL for each of the two fd lists. */
#define KC_MAX_LISTED_FDS 64u
/* A segment or write: u64 address, u32 length, u32 0, then the data. */
#define KC_SEGMENT_HEADER 16u

enum kc_frame_type {
	KC_FRAME_OPEN = 1,
	KC_FRAME_IOCTL = 2,
	KC_FRAME_FETCH = 3,
	KC_FRAME_MEM = 4,
	KC_FRAME_RESULT = 5,
	KC_FRAME_WAKE = 6,
	KC_FRAME_HUP = 7,
	KC_FRAME_POOL = 8,
	KC_FRAME_CLOSE = 9,
	KC_FRAME_ATTACH = 10,
	KC_FRAME_RESERVE = 11,
	KC_FRAME_INSTALL = 12,
	KC_FRAME_EMPTY = 13,
	KC_FRAME_HEAD = 14,
	KC_FRAME_READY = 15,
};

/*
 * OPEN's features word, bit 0: this shim takes HEAD frames, which name the message a
 * plain RECV would take (docs/socket-protocol.md, HEAD), in place of bare WAKEs.
 */
#define KC_OPEN_FEATURE_HEADS 1u

/*
 * A HEAD frame: its seq counts the RECVs the daemon had taken; the payload is u64 offset,
 * u64 msg_size, u64 flags (KC_HEAD_LAST: the message is the only one queued).
 */
#define KC_HEAD_FRAME (KC_FRAME_HEADER + 24u)
#define KC_HEAD_LAST 1u

struct kc_head {
	uint64_t offset;
	uint64_t size;
	bool last;
};

/* RESULT flags bit 0: the first descriptor that came with the frame is the pool. */
#define KC_RESULT_POOL 1u
/*
 * RESULT flags bit 1, with HELLO's: the daemon keeps WAKE and HUP exactly to the
 * connection's state (docs/socket-protocol.md, Poll), so the shim may answer RECV on an
 * empty queue and FREE of a published slice itself. With a side channel's ATTACH: the
 * channel carries WAKE, EMPTY and HUP for the CUSE handle's queue (CUSE clients).
 */
#define KC_RESULT_EXACT_WAKES 2u

struct kc_header {
	uint32_t length;
	uint32_t type;
	uint64_t seq;
};

static inline size_t kc_pad8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

void kc_header_encode(uint8_t *out, uint32_t length, uint32_t type, uint64_t seq);

/* Decodes a header from the daemon; -EPROTO if the length or type cannot be right. */
int kc_header_decode(const uint8_t *in, struct kc_header *h);
/* The same for a CUSE side channel, which carries RESULT, INSTALL, WAKE, HEAD, EMPTY and HUP. */
int kc_side_header_decode(const uint8_t *in, struct kc_header *h);

/* An OPEN frame is this head, then the path (no NUL), then zeros up to 8 bytes. */
#define KC_OPEN_HEAD 32u
void kc_open_head_encode(uint8_t *out, uint64_t seq, uint32_t open_flags, uint32_t tid, uint32_t path_len,
			 uint32_t features);

/* What an IOCTL frame says besides its segments. */
struct kc_ioctl_desc {
	uint32_t cmd;
	uint32_t tid;
	uint64_t arg;
	uint32_t n_segments;
	size_t segments_bytes; /* encoded segments, as kc_segments_append built them */
	const int32_t *fds;    /* fd numbers the command names, -1 where none can be passed */
	uint32_t n_fds;
	const int32_t *reserved; /* numbers the daemon may give installed files */
	uint32_t n_reserved;
};

/* A RECV the shim answered from a HEAD, as the daemon gets it: seq 0, no segments or fds. */
#define KC_HEAD_RECV_FRAME (KC_FRAME_HEADER + KC_IOCTL_FIXED)
void kc_head_recv_encode(uint8_t *out, uint32_t tid, uint64_t arg);

/* Bytes of the IOCTL frame before its segments (header, fixed part, padded fd lists). */
size_t kc_ioctl_head_size(uint32_t n_fds, uint32_t n_reserved);
/* Writes that part; the segments follow it on the wire. */
void kc_ioctl_head_encode(uint8_t *out, uint64_t seq, const struct kc_ioctl_desc *d);
/* Where in an encoded IOCTL head the fd number list starts (to void it after the fact). */
#define KC_IOCTL_FDS_OFF (KC_FRAME_HEADER + KC_IOCTL_FIXED)

/* A growable byte buffer that collects encoded segments. */
struct kc_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

/*
 * Appends a segment header for `length` bytes at `address` and returns where its data goes
 * (padding already zeroed), or NULL when memory runs out. kc_buf_truncate undoes it.
 */
uint8_t *kc_segments_append(struct kc_buf *b, uint64_t address, uint32_t length);
void kc_buf_truncate(struct kc_buf *b, size_t len);
void kc_buf_free(struct kc_buf *b);

/* Header and fixed part of a MEM frame carrying `length` bytes (which follow, padded). */
#define KC_MEM_HEAD 24u
void kc_mem_head_encode(uint8_t *out, uint64_t seq, int32_t err, uint32_t length);

/* POOL and CLOSE are bare headers. */
void kc_bare_encode(uint8_t *out, uint32_t type, uint64_t seq);

/*
 * A number list (ATTACH after its token, RESERVE, INSTALL): u32 count, u32 0, then count
 * i32 numbers, padded to 8 bytes.
 */
static inline size_t kc_numbers_size(uint32_t n)
{
	return 8 + kc_pad8(4 * (size_t)n);
}

/*
 * ATTACH: the device's token, then the reserved numbers, whose list's second word carries
 * OPEN's features (KC_OPEN_FEATURE_HEADS). Returns the frame's length.
 */
#define KC_TOKEN_SIZE 16u
size_t kc_attach_encode(uint8_t *out, uint64_t seq, const uint8_t *token, const int *numbers, uint32_t n,
			uint32_t features);
/* RESERVE: more reserved numbers (flags: KC_RESERVE_*). Returns the frame's length. */
size_t kc_reserve_encode(uint8_t *out, uint64_t seq, const int *numbers, uint32_t n, uint32_t flags);
/* RESERVE flag: the numbers are for the next command of the handle alone, used first. */
#define KC_RESERVE_TRANSIENT 1u
/* Largest encoded ATTACH or RESERVE for n numbers. */
#define KC_NUMBERS_FRAME_MAX(n) (KC_FRAME_HEADER + KC_TOKEN_SIZE + 8 + 4 * (n) + 4)

/*
 * INSTALL payload: the numbers the frame's descriptors go to, in order. Fills numbers (room
 * for max) and *count; -EPROTO if the list runs past the payload or does not fit.
 */
int kc_install_decode(const uint8_t *payload, size_t len, int *numbers, uint32_t max, uint32_t *count);

/* HEAD payload: the message at the queue's head; -EPROTO if it is short. */
int kc_head_decode(const uint8_t *payload, size_t len, struct kc_head *head);

/* FETCH payload: the memory the daemon needs. */
int kc_fetch_decode(const uint8_t *payload, size_t len, uint64_t *address, uint32_t *length);

struct kc_result {
	int32_t err;
	uint32_t n_writes;
	uint32_t n_fds;
	uint32_t flags;
	const uint8_t *writes; /* n_writes encoded writes, bounds already checked */
	size_t writes_len;
};

/* Decodes a RESULT payload; -EPROTO if a write runs past the frame. */
int kc_result_decode(const uint8_t *payload, size_t len, struct kc_result *r);

/* Steps through a decoded RESULT's writes: *pos starts at 0; returns 0 at the end, else 1. */
int kc_result_next_write(const struct kc_result *r, size_t *pos, uint64_t *address, const uint8_t **data,
			 uint32_t *length);

#endif
