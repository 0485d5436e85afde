/*
 * D-Bus messages in sd-bus's "version 2" form, the payload of kdbus messages
 * (docs/reference/sdbus-kdbus-client.md §3.1): one GVariant of type (yyyyuta{tv}v) —
 * endianness, type, flags, version 2, a reserved u32, the 64-bit cookie, the header fields
 * as a{tv} with 64-bit codes, then (8-aligned) the body variant: the argument tuple, 0x00,
 * the tuple's type "(sig)". One framing offset ends the message: where a{tv} ends.
 *
 * Only the bodies a test peer needs are handled: no arguments, one string-like argument
 * (s, o, g), one 32-bit one (h, u) or one byte array (ay, the benchmark's payload).
 * Little-endian only, as kdbus messages are native.
 * Header-only, for test programs built from one source file.
 */
#ifndef GVARIANT_MESSAGE_H
#define GVARIANT_MESSAGE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { GV_METHOD_CALL = 1, GV_METHOD_RETURN = 2, GV_ERROR = 3, GV_SIGNAL = 4 };
#define GV_NO_REPLY_EXPECTED 0x1
#define GV_NO_AUTO_START 0x2
enum {
	GV_FIELD_PATH = 1, GV_FIELD_INTERFACE, GV_FIELD_MEMBER, GV_FIELD_ERROR_NAME,
	GV_FIELD_REPLY_SERIAL, GV_FIELD_DESTINATION, GV_FIELD_SENDER, GV_FIELD_SIGNATURE,
	GV_FIELD_UNIX_FDS,
};
#define GV_MAX_SIGNATURE 32

struct gv_msg {
	uint8_t type, flags;
	uint64_t cookie;
	const char *path, *interface, *member, *error_name, *destination, *sender;
	int has_reply_cookie;
	uint64_t reply_cookie;
	int has_unix_fds;
	uint32_t unix_fds;
	char signature[GV_MAX_SIGNATURE];   /* the body's type without the parentheses */
	/* The body for signatures "s", "o", "g" (arg_str), "h", "u" (arg_u32) and "ay"
	 * (arg_bytes, arg_len). */
	const char *arg_str;
	uint32_t arg_u32;
	const uint8_t *arg_bytes;
	size_t arg_len;
};

/* ---- writing ---------------------------------------------------------------------------- */

struct gv_out {
	uint8_t *buf;
	size_t cap, len;
	int overflow;
};

static inline void gv_put(struct gv_out *o, const void *p, size_t n)
{
	if (o->len + n > o->cap) {
		o->overflow = 1;
		return;
	}
	if (p)
		memcpy(o->buf + o->len, p, n);
	else
		memset(o->buf + o->len, 0, n);
	o->len += n;
}

static inline void gv_pad(struct gv_out *o, size_t align)
{
	gv_put(o, NULL, (align - o->len % align) % align);
}

static inline void gv_word(struct gv_out *o, uint64_t v, unsigned width)
{
	uint8_t b[8];
	for (unsigned i = 0; i < width; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	gv_put(o, b, width);
}

/* Framing offset width for a container of `content` bytes plus n offsets
 * (bus_gvariant_determine_word_size). */
static inline unsigned gv_word_size(uint64_t content, uint64_t n)
{
	if (content + n <= 0xff)
		return 1;
	if (content + 2 * n <= 0xffff)
		return 2;
	if (content + 4 * n <= 0xffffffffULL)
		return 4;
	return 8;
}

/* Offset width a reader derives from a container's total size. */
static inline unsigned gv_offset_size(uint64_t size)
{
	return size <= 0xff ? 1 : size <= 0xffff ? 2 : size <= 0xffffffffULL ? 4 : 8;
}

struct gv_fields {
	struct gv_out *o;
	size_t start;
	uint64_t ends[GV_FIELD_UNIX_FDS + 1];
	unsigned n;
};

/* One {tv} entry: 8-aligned, code, value, 0x00, the value's type; its end is recorded for
 * the array's offset table. */
static inline void gv_field(struct gv_fields *f, uint64_t code, const void *value, size_t len, char type)
{
	gv_pad(f->o, 8);
	gv_word(f->o, code, 8);
	gv_put(f->o, value, len);
	gv_put(f->o, "", 1);
	gv_put(f->o, &type, 1);
	f->ends[f->n++] = f->o->len - f->start;
}

static inline void gv_field_str(struct gv_fields *f, uint64_t code, const char *s, char type)
{
	if (s)
		gv_field(f, code, s, strlen(s) + 1, type);
}

/*
 * Writes m into buf (cap bytes), fields in the order sd-bus appends them. Returns the message size, 0 if it
 * does not fit; *body_start is where the body variant begins (header, fields and padding
 * before it, as sd-bus's first PAYLOAD_VEC holds them).
 */
static inline size_t gv_encode(const struct gv_msg *m, uint8_t *buf, size_t cap, size_t *body_start)
{
	struct gv_out o = { .buf = buf, .cap = cap };
	uint8_t fixed[8] = { 'l', m->type, m->flags, 2, 0, 0, 0, 0 };
	gv_put(&o, fixed, sizeof fixed);
	gv_word(&o, m->cookie, 8);

	struct gv_fields f = { .o = &o, .start = o.len };
	gv_field_str(&f, GV_FIELD_PATH, m->path, 'o');
	if (m->type == GV_SIGNAL) {
		gv_field_str(&f, GV_FIELD_INTERFACE, m->interface, 's');
		gv_field_str(&f, GV_FIELD_MEMBER, m->member, 's');
	} else {
		gv_field_str(&f, GV_FIELD_MEMBER, m->member, 's');
		gv_field_str(&f, GV_FIELD_INTERFACE, m->interface, 's');
	}
	if (m->has_reply_cookie) {
		uint8_t rc[8];
		for (int i = 0; i < 8; i++)
			rc[i] = (uint8_t)(m->reply_cookie >> (8 * i));
		gv_field(&f, GV_FIELD_REPLY_SERIAL, rc, 8, 't');
	}
	gv_field_str(&f, GV_FIELD_DESTINATION, m->destination, 's');
	gv_field_str(&f, GV_FIELD_ERROR_NAME, m->error_name, 's');
	if (m->has_unix_fds) {
		uint8_t n[4] = { (uint8_t)m->unix_fds, (uint8_t)(m->unix_fds >> 8),
				 (uint8_t)(m->unix_fds >> 16), (uint8_t)(m->unix_fds >> 24) };
		gv_field(&f, GV_FIELD_UNIX_FDS, n, 4, 'u');
	}
	size_t array = o.len - f.start;
	unsigned w = gv_word_size(array, f.n);
	for (unsigned i = 0; i < f.n; i++)
		gv_word(&o, f.ends[i], w);
	size_t fields_end = o.len;

	gv_pad(&o, 8);
	*body_start = o.len;
	const char *sig = m->signature;
	if (sig[0] == '\0') {
		gv_put(&o, NULL, 1);               /* the unit tuple () is one zero byte */
	} else if (strcmp(sig, "s") == 0 || strcmp(sig, "o") == 0 || strcmp(sig, "g") == 0) {
		gv_put(&o, m->arg_str, strlen(m->arg_str) + 1);
	} else if (strcmp(sig, "h") == 0 || strcmp(sig, "u") == 0) {
		gv_word(&o, m->arg_u32, 4);
	} else if (strcmp(sig, "ay") == 0) {
		/* A tuple's last member needs no framing offset; an array of bytes has none. */
		gv_put(&o, m->arg_bytes, m->arg_len);
	} else {
		return 0;
	}
	gv_put(&o, "\0(", 2);
	gv_put(&o, sig, strlen(sig));
	gv_put(&o, ")", 1);
	gv_word(&o, fields_end, gv_word_size(o.len, 1));
	return o.overflow ? 0 : o.len;
}

/* ---- reading ---------------------------------------------------------------------------- */

static inline uint64_t gv_read_word(const uint8_t *p, unsigned width)
{
	uint64_t v = 0;
	for (unsigned i = width; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

/* A NUL-terminated string filling [p, p + len) exactly, or NULL. */
static inline const char *gv_string(const uint8_t *p, size_t len)
{
	if (len == 0 || p[len - 1] != 0 || strlen((const char *)p) != len - 1)
		return NULL;
	return (const char *)p;
}

#define GV_BAD(...) do { snprintf(why, why_len, __VA_ARGS__); return -1; } while (0)

/*
 * Decodes the message filling d[0, size) into m; strings point into d. Returns 0, or -1
 * with the reason in why. Checks what sd-bus checks of a received message (§2.4): version,
 * cookie, no SIGNATURE field, the fields each type requires, a parenthesised body type.
 */
static inline int gv_decode(const uint8_t *d, size_t size, struct gv_msg *m, char *why, size_t why_len)
{
	memset(m, 0, sizeof *m);
	if (size < 16)
		GV_BAD("message of %zu bytes is shorter than its 16-byte fixed header", size);
	if (d[0] != 'l')
		GV_BAD("endianness byte %#x is not 'l'", d[0]);
	if (d[3] != 2)
		GV_BAD("version %u, expected 2", d[3]);
	m->type = d[1];
	m->flags = d[2];
	if (m->type < GV_METHOD_CALL || m->type > GV_SIGNAL)
		GV_BAD("message type %u", m->type);
	m->cookie = gv_read_word(d + 8, 8);
	if (m->cookie == 0)
		GV_BAD("cookie 0");

	unsigned w = gv_offset_size(size);
	uint64_t fields_end = gv_read_word(d + size - w, w);
	if (fields_end < 16 || fields_end > size - w)
		GV_BAD("fields end offset %llu outside [16, %zu]", (unsigned long long)fields_end, size - w);

	/* a{tv}: entries, then one end offset per entry (relative to the array). */
	const uint8_t *arr = d + 16;
	size_t asz = (size_t)fields_end - 16;
	if (asz > 0) {
		unsigned aw = gv_offset_size(asz);
		if (asz < aw)
			GV_BAD("header field array of %zu bytes has no offset table", asz);
		uint64_t table = gv_read_word(arr + asz - aw, aw);
		if (table > asz - aw || (asz - table) % aw)
			GV_BAD("header field offset table at %llu in a %zu-byte array", (unsigned long long)table, asz);
		size_t n = (asz - (size_t)table) / aw;
		uint64_t prev = 0;
		for (size_t i = 0; i < n; i++) {
			uint64_t start = (prev + 7) & ~7ULL;
			uint64_t end = gv_read_word(arr + table + i * aw, aw);
			if (end < start + 10 || end > table)
				GV_BAD("header field %zu spans [%llu, %llu) of a %llu-byte entry area", i,
				       (unsigned long long)start, (unsigned long long)end, (unsigned long long)table);
			prev = end;
			uint64_t code = gv_read_word(arr + start, 8);
			const uint8_t *v = arr + start + 8, *vend = arr + end;
			const uint8_t *sep = vend - 1;
			while (sep >= v && *sep != 0)
				sep--;
			if (sep < v)
				GV_BAD("header field %llu: variant without type", (unsigned long long)code);
			size_t tlen = (size_t)(vend - sep - 1), vlen = (size_t)(sep - v);
			char type = tlen == 1 ? (char)sep[1] : '?';
			const char *s = NULL;
			switch (code) {
			case GV_FIELD_PATH: case GV_FIELD_INTERFACE: case GV_FIELD_MEMBER:
			case GV_FIELD_ERROR_NAME: case GV_FIELD_DESTINATION: case GV_FIELD_SENDER:
				if (type != (code == GV_FIELD_PATH ? 'o' : 's') || !(s = gv_string(v, vlen)))
					GV_BAD("header field %llu: not a string of the right type", (unsigned long long)code);
				if (code == GV_FIELD_PATH) m->path = s;
				else if (code == GV_FIELD_INTERFACE) m->interface = s;
				else if (code == GV_FIELD_MEMBER) m->member = s;
				else if (code == GV_FIELD_ERROR_NAME) m->error_name = s;
				else if (code == GV_FIELD_DESTINATION) m->destination = s;
				else m->sender = s;
				break;
			case GV_FIELD_REPLY_SERIAL:
				if (type != 't' || vlen != 8)
					GV_BAD("REPLY_SERIAL is not a 't' (type %.*s, %zu bytes)", (int)tlen, sep + 1, vlen);
				m->has_reply_cookie = 1;
				m->reply_cookie = gv_read_word(v, 8);
				break;
			case GV_FIELD_UNIX_FDS:
				if (type != 'u' || vlen != 4)
					GV_BAD("UNIX_FDS is not a 'u'");
				m->has_unix_fds = 1;
				m->unix_fds = (uint32_t)gv_read_word(v, 4);
				break;
			case GV_FIELD_SIGNATURE:
				GV_BAD("SIGNATURE header field in a version-2 message");
			default:
				break;
			}
		}
	}

	size_t body = ((size_t)fields_end + 7) & ~(size_t)7, body_end = size - w;
	if (body > body_end)
		GV_BAD("message ends inside the padding after the header fields");
	for (size_t i = (size_t)fields_end; i < body; i++)
		if (d[i])
			GV_BAD("non-zero padding byte at %zu", i);
	size_t sep = body_end;
	while (sep > body && d[sep - 1] != 0)
		sep--;
	if (sep == body)
		GV_BAD("body variant without type separator");
	sep--;
	size_t tlen = body_end - sep - 1;
	if (tlen < 2 || tlen - 2 >= GV_MAX_SIGNATURE || d[sep + 1] != '(' || d[body_end - 1] != ')')
		GV_BAD("body type \"%.*s\" is not a parenthesised tuple", (int)tlen, (const char *)d + sep + 1);
	memcpy(m->signature, d + sep + 2, tlen - 2);
	m->signature[tlen - 2] = '\0';

	const uint8_t *b = d + body;
	size_t blen = sep - body;
	const char *sig = m->signature;
	if (sig[0] == '\0') {
		if (blen != 1 || b[0] != 0)
			GV_BAD("empty body is %zu bytes, expected the unit tuple's one zero byte", blen);
	} else if (strcmp(sig, "s") == 0 || strcmp(sig, "o") == 0 || strcmp(sig, "g") == 0) {
		if (!(m->arg_str = gv_string(b, blen)))
			GV_BAD("body (%s) of %zu bytes is not one NUL-terminated string", sig, blen);
	} else if (strcmp(sig, "h") == 0 || strcmp(sig, "u") == 0) {
		if (blen != 4)
			GV_BAD("body (%s) of %zu bytes, expected 4", sig, blen);
		m->arg_u32 = (uint32_t)gv_read_word(b, 4);
	} else if (strcmp(sig, "ay") == 0) {
		m->arg_bytes = b;
		m->arg_len = blen;
	}

	switch (m->type) {
	case GV_METHOD_CALL:
		if (!m->path || !m->member)
			GV_BAD("method call without PATH or MEMBER");
		break;
	case GV_METHOD_RETURN:
		if (!m->has_reply_cookie)
			GV_BAD("method return without REPLY_SERIAL");
		break;
	case GV_ERROR:
		if (!m->has_reply_cookie || !m->error_name)
			GV_BAD("error without REPLY_SERIAL or ERROR_NAME");
		break;
	case GV_SIGNAL:
		if (!m->path || !m->interface || !m->member)
			GV_BAD("signal without PATH, INTERFACE or MEMBER");
		break;
	}
	return 0;
}

#undef GV_BAD

#endif
