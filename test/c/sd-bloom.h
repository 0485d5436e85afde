/*
 * sd-bus's bloom filters (docs/reference/sdbus-kdbus-client.md §2.2): the filter a signal
 * carries in KDBUS_ITEM_BLOOM_FILTER and the mask a match asks of it. Every "key:value"
 * string sets n_hash bits whose indices are read from a stream of SipHash-2-4 outputs of
 * the string under eight fixed keys, w = ceil(log2(m) / 8) bytes per index, big-endian.
 * Header-only, for test programs built from one source file.
 */
#ifndef SD_BLOOM_H
#define SD_BLOOM_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SD_BLOOM_MAX_BYTES 4096
#define SD_BLOOM_MAX_STRING 1024

/* The eight 128-bit keys of bus-bloom.c, as bytes (read little-endian by SipHash). */
static const uint8_t sd_bloom_keys[8][16] = {
	{ 0xb9, 0x66, 0x0b, 0xf0, 0x46, 0x70, 0x47, 0xc1, 0x88, 0x75, 0xc4, 0x9c, 0x54, 0xb9, 0xbd, 0x15 },
	{ 0xaa, 0xa1, 0x54, 0xa2, 0xe0, 0x71, 0x4b, 0x39, 0xbf, 0xe1, 0xdd, 0x2e, 0x9f, 0xc5, 0x4a, 0x3b },
	{ 0x63, 0xfd, 0xae, 0xbe, 0xcd, 0x82, 0x48, 0x12, 0xa1, 0x6e, 0x41, 0x26, 0xcb, 0xfa, 0xa0, 0xc8 },
	{ 0x23, 0xbe, 0x45, 0x29, 0x32, 0xd2, 0x46, 0x2d, 0x82, 0x03, 0x52, 0x28, 0xfe, 0x37, 0x17, 0xf5 },
	{ 0x56, 0x3b, 0xbf, 0xee, 0x5a, 0x4f, 0x43, 0x39, 0xaf, 0xaa, 0x94, 0x08, 0xdf, 0xf0, 0xfc, 0x10 },
	{ 0x31, 0x80, 0xc8, 0x73, 0xc7, 0xea, 0x46, 0xd3, 0xaa, 0x25, 0x75, 0x0f, 0x9e, 0x4c, 0x09, 0x29 },
	{ 0x7d, 0xf7, 0x18, 0x4b, 0x7b, 0xa4, 0x44, 0xd5, 0x85, 0x3c, 0x06, 0xe0, 0x65, 0x53, 0x96, 0x6d },
	{ 0xf2, 0x77, 0xe9, 0x6f, 0x93, 0xb5, 0x4e, 0x71, 0x9a, 0x0c, 0x34, 0x88, 0x39, 0x25, 0xbf, 0x35 },
};

static inline uint64_t sd_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

#define SD_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SD_SIPROUND                                                                 \
	do {                                                                        \
		v0 += v1; v1 = SD_ROTL(v1, 13); v1 ^= v0; v0 = SD_ROTL(v0, 32);     \
		v2 += v3; v3 = SD_ROTL(v3, 16); v3 ^= v2;                           \
		v0 += v3; v3 = SD_ROTL(v3, 21); v3 ^= v0;                           \
		v2 += v1; v1 = SD_ROTL(v1, 17); v1 ^= v2; v2 = SD_ROTL(v2, 32);     \
	} while (0)

/* SipHash-2-4 (Aumasson, Bernstein 2012), 64-bit output. */
static inline uint64_t sd_siphash24(const void *data, size_t len, const uint8_t key[16])
{
	const uint8_t *in = data;
	uint64_t k0 = sd_le64(key), k1 = sd_le64(key + 8);
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
	uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
	uint64_t v3 = 0x7465646279746573ULL ^ k1;
	size_t whole = len - len % 8;
	for (size_t i = 0; i < whole; i += 8) {
		uint64_t m = sd_le64(in + i);
		v3 ^= m;
		SD_SIPROUND;
		SD_SIPROUND;
		v0 ^= m;
	}
	uint64_t b = (uint64_t)len << 56;
	for (size_t i = 0; i < len % 8; i++)
		b |= (uint64_t)in[whole + i] << (8 * i);
	v3 ^= b;
	SD_SIPROUND;
	SD_SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SD_SIPROUND;
	SD_SIPROUND;
	SD_SIPROUND;
	SD_SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

struct sd_bloom {
	size_t size;       /* bytes, from BLOOM_PARAMETER */
	unsigned n_hash;
	uint64_t words[SD_BLOOM_MAX_BYTES / 8];
};

static inline void sd_bloom_init(struct sd_bloom *b, size_t size, unsigned n_hash)
{
	memset(b, 0, sizeof *b);
	b->size = size;
	b->n_hash = n_hash;
}

/* Sets the bits of data[0, len). The caller checked the parameters (size a power of two
 * bytes, n_hash * w <= 64). */
static inline void sd_bloom_add_data(struct sd_bloom *b, const void *data, size_t len)
{
	uint64_t bits = (uint64_t)b->size * 8;
	unsigned log2 = 0;
	while ((2ULL << log2) <= bits)
		log2++;
	unsigned w = (log2 + 7) / 8;
	uint8_t out[8];
	unsigned key = 0, left = 0;
	for (unsigned i = 0; i < b->n_hash; i++) {
		uint64_t p = 0;
		for (unsigned d = 0; d < w; d++) {
			if (left == 0) {
				uint64_t h = sd_siphash24(data, len, sd_bloom_keys[key++]);
				for (int j = 0; j < 8; j++)
					out[j] = (uint8_t)(h >> (8 * j));
				left = 8;
			}
			p = p << 8 | out[8 - left];
			left--;
		}
		p &= bits - 1;
		b->words[p / 64] |= 1ULL << (p % 64);
	}
}

/* "key:value" into s; a string that does not fit would be a silent false negative, so it
 * ends the program. */
static inline size_t sd_bloom_pair(char *s, size_t len, const char *key, const char *value)
{
	int n = snprintf(s, len, "%s:%s", key, value);
	if (n < 0 || (size_t)n >= len) {
		fprintf(stderr, "sd-bloom: \"%s:%s\" is longer than %zu bytes\n", key, value, len - 1);
		abort();
	}
	return (size_t)n;
}

/* "key:value"; the NUL is not hashed. */
static inline void sd_bloom_add_pair(struct sd_bloom *b, const char *key, const char *value)
{
	char s[SD_BLOOM_MAX_STRING];
	sd_bloom_add_data(b, s, sd_bloom_pair(s, sizeof s, key, value));
}

/* "key:value", then for each separator from the right the value cut after it and before
 * it: the slash prefixes of /a/b are /a/b, /a/, /a, /. */
static inline void sd_bloom_add_prefixes(struct sd_bloom *b, const char *key, const char *value, char sep)
{
	char s[SD_BLOOM_MAX_STRING];
	size_t start = strlen(key) + 1, end = sd_bloom_pair(s, sizeof s, key, value);
	sd_bloom_add_data(b, s, end);
	for (;;) {
		size_t e = end;
		while (e > start && s[e - 1] != sep)
			e--;
		if (e == start)
			return;
		sd_bloom_add_data(b, s, e);          /* with the separator */
		if (e - 1 == start)
			return;
		end = e - 1;
		sd_bloom_add_data(b, s, end);        /* without it */
	}
}

/* The filter sd-bus attaches to a signal whose first argument is the string arg0 (NULL:
 * no string argument first): bus_message_setup_bloom. */
static inline void sd_bloom_signal_filter(struct sd_bloom *b, const char *path, const char *interface,
					  const char *member, const char *arg0)
{
	sd_bloom_add_pair(b, "message-type", "signal");
	sd_bloom_add_pair(b, "interface", interface);
	sd_bloom_add_pair(b, "member", member);
	sd_bloom_add_pair(b, "path", path);
	sd_bloom_add_prefixes(b, "path-slash-prefix", path, '/');
	if (arg0) {
		sd_bloom_add_pair(b, "arg0", arg0);
		sd_bloom_add_prefixes(b, "arg0-dot-prefix", arg0, '.');
		sd_bloom_add_prefixes(b, "arg0-slash-prefix", arg0, '/');
	}
}

#endif
