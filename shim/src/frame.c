/* Encoding and decoding of the socket protocol's frames (see frame.h). */
#include "frame.h"
#include "kdbus-abi.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

void kc_header_encode(uint8_t *out, uint32_t length, uint32_t type, uint64_t seq)
{
	put32(out, length);
	put32(out + 4, type);
	put64(out + 8, seq);
}

/* The header's fields; false if its length cannot be a frame's. */
static bool header_fields(const uint8_t *in, struct kc_header *h)
{
	h->length = get32(in);
	h->type = get32(in + 4);
	h->seq = get64(in + 8);
	return h->length >= KC_FRAME_HEADER && h->length % 8 == 0 && h->length <= KC_FRAME_MAX;
}

#define TYPE_BIT(t) (1u << (t))

/* A header of one of the frame types in `accepted` (bits by type), of a length it can have. */
static int decode_accepting(const uint8_t *in, struct kc_header *h, uint32_t accepted)
{
	if (!header_fields(in, h) || h->type >= 32 || !(accepted & TYPE_BIT(h->type)))
		return -EPROTO;
	return h->type != KC_FRAME_HEAD || h->length == KC_HEAD_FRAME ? 0 : -EPROTO;
}

int kc_side_header_decode(const uint8_t *in, struct kc_header *h)
{
	return decode_accepting(in, h, TYPE_BIT(KC_FRAME_RESULT) | TYPE_BIT(KC_FRAME_INSTALL) | TYPE_BIT(KC_FRAME_WAKE) |
					       TYPE_BIT(KC_FRAME_HEAD) | TYPE_BIT(KC_FRAME_EMPTY) | TYPE_BIT(KC_FRAME_HUP));
}

int kc_header_decode(const uint8_t *in, struct kc_header *h)
{
	return decode_accepting(in, h, TYPE_BIT(KC_FRAME_FETCH) | TYPE_BIT(KC_FRAME_RESULT) | TYPE_BIT(KC_FRAME_WAKE) |
					       TYPE_BIT(KC_FRAME_HEAD) | TYPE_BIT(KC_FRAME_HUP));
}

void kc_open_head_encode(uint8_t *out, uint64_t seq, uint32_t open_flags, uint32_t tid, uint32_t path_len,
			 uint32_t features)
{
	kc_header_encode(out, (uint32_t)(KC_OPEN_HEAD + kc_pad8(path_len)), KC_FRAME_OPEN, seq);
	put32(out + 16, open_flags);
	put32(out + 20, tid);
	put32(out + 24, path_len);
	put32(out + 28, features);
}

size_t kc_ioctl_head_size(uint32_t n_fds, uint32_t n_reserved)
{
	return KC_FRAME_HEADER + KC_IOCTL_FIXED + kc_pad8(4 * ((size_t)n_fds + n_reserved));
}

void kc_ioctl_head_encode(uint8_t *out, uint64_t seq, const struct kc_ioctl_desc *d)
{
	size_t head = kc_ioctl_head_size(d->n_fds, d->n_reserved);
	memset(out, 0, head);
	kc_header_encode(out, (uint32_t)(head + d->segments_bytes), KC_FRAME_IOCTL, seq);
	put32(out + 16, d->cmd);
	put32(out + 20, d->tid);
	put64(out + 24, d->arg);
	put32(out + 32, d->n_segments);
	put32(out + 36, d->n_fds);
	put32(out + 40, d->n_reserved);
	uint8_t *list = out + KC_IOCTL_FDS_OFF;
	for (uint32_t i = 0; i < d->n_fds; i++)
		put32(list + 4 * i, (uint32_t)d->fds[i]);
	list += 4 * (size_t)d->n_fds;
	for (uint32_t i = 0; i < d->n_reserved; i++)
		put32(list + 4 * i, (uint32_t)d->reserved[i]);
}

void kc_head_recv_encode(uint8_t *out, uint32_t tid, uint64_t arg)
{
	struct kc_ioctl_desc d = { .cmd = KDBUS_CMD_RECV, .tid = tid, .arg = arg };
	kc_ioctl_head_encode(out, 0, &d);
}

uint8_t *kc_segments_append(struct kc_buf *b, uint64_t address, uint32_t length)
{
	size_t need = b->len + KC_SEGMENT_HEADER + kc_pad8(length);
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < need)
			cap *= 2;
		uint8_t *grown = realloc(b->data, cap);
		if (!grown)
			return NULL;
		b->data = grown;
		b->cap = cap;
	}
	uint8_t *seg = b->data + b->len;
	put64(seg, address);
	put32(seg + 8, length);
	put32(seg + 12, 0);
	/* Only the padding needs zeroing: the caller fills the data. */
	memset(seg + KC_SEGMENT_HEADER + length, 0, kc_pad8(length) - length);
	b->len = need;
	return seg + KC_SEGMENT_HEADER;
}

void kc_buf_truncate(struct kc_buf *b, size_t len)
{
	b->len = len;
}

void kc_buf_free(struct kc_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void kc_mem_head_encode(uint8_t *out, uint64_t seq, int32_t err, uint32_t length)
{
	kc_header_encode(out, (uint32_t)(KC_MEM_HEAD + kc_pad8(length)), KC_FRAME_MEM, seq);
	put32(out + 16, (uint32_t)err);
	put32(out + 20, length);
}

void kc_bare_encode(uint8_t *out, uint32_t type, uint64_t seq)
{
	kc_header_encode(out, KC_FRAME_HEADER, type, seq);
}

/* Writes a number list at out; returns its size. */
static size_t numbers_encode(uint8_t *out, const int *numbers, uint32_t n)
{
	size_t size = kc_numbers_size(n);
	memset(out, 0, size);
	put32(out, n);
	for (uint32_t i = 0; i < n; i++)
		put32(out + 8 + 4 * i, (uint32_t)numbers[i]);
	return size;
}

size_t kc_attach_encode(uint8_t *out, uint64_t seq, const uint8_t *token, const int *numbers, uint32_t n,
			uint32_t features)
{
	uint8_t *list = out + KC_FRAME_HEADER + KC_TOKEN_SIZE;
	memcpy(out + KC_FRAME_HEADER, token, KC_TOKEN_SIZE);
	size_t length = (size_t)(list - out) + numbers_encode(list, numbers, n);
	put32(list + 4, features);
	kc_header_encode(out, (uint32_t)length, KC_FRAME_ATTACH, seq);
	return length;
}

size_t kc_reserve_encode(uint8_t *out, uint64_t seq, const int *numbers, uint32_t n, uint32_t flags)
{
	size_t length = KC_FRAME_HEADER + numbers_encode(out + KC_FRAME_HEADER, numbers, n);
	put32(out + KC_FRAME_HEADER + 4, flags);
	kc_header_encode(out, (uint32_t)length, KC_FRAME_RESERVE, seq);
	return length;
}

int kc_install_decode(const uint8_t *payload, size_t len, int *numbers, uint32_t max, uint32_t *count)
{
	if (len < 8)
		return -EPROTO;
	uint32_t n = get32(payload);
	if (n > max || (len - 8) / 4 < n)
		return -EPROTO;
	for (uint32_t i = 0; i < n; i++)
		numbers[i] = (int32_t)get32(payload + 8 + 4 * i);
	*count = n;
	return 0;
}

int kc_head_decode(const uint8_t *payload, size_t len, struct kc_head *head)
{
	if (len < KC_HEAD_FRAME - KC_FRAME_HEADER)
		return -EPROTO;
	head->offset = get64(payload);
	head->size = get64(payload + 8);
	head->last = (get64(payload + 16) & KC_HEAD_LAST) != 0;
	return 0;
}

int kc_fetch_decode(const uint8_t *payload, size_t len, uint64_t *address, uint32_t *length)
{
	if (len < 16)
		return -EPROTO;
	*address = get64(payload);
	*length = get32(payload + 8);
	return 0;
}

int kc_result_decode(const uint8_t *payload, size_t len, struct kc_result *r)
{
	if (len < 16)
		return -EPROTO;
	r->err = (int32_t)get32(payload);
	r->n_writes = get32(payload + 4);
	r->n_fds = get32(payload + 8);
	r->flags = get32(payload + 12);
	r->writes = payload + 16;
	size_t pos = 0, avail = len - 16;
	for (uint32_t i = 0; i < r->n_writes; i++) {
		if (avail - pos < KC_SEGMENT_HEADER)
			return -EPROTO;
		size_t data = kc_pad8(get32(r->writes + pos + 8));
		if (avail - pos - KC_SEGMENT_HEADER < data)
			return -EPROTO;
		pos += KC_SEGMENT_HEADER + data;
	}
	r->writes_len = pos;
	return 0;
}

int kc_result_next_write(const struct kc_result *r, size_t *pos, uint64_t *address, const uint8_t **data,
			 uint32_t *length)
{
	if (*pos >= r->writes_len)
		return 0;
	const uint8_t *w = r->writes + *pos;
	*address = get64(w);
	*length = get32(w + 8);
	*data = w + KC_SEGMENT_HEADER;
	*pos += KC_SEGMENT_HEADER + kc_pad8(*length);
	return 1;
}
