/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The server name in a TLS ClientHello (tlshello.h).
 *
 * The handshake message is read through a cursor that steps over record headers as it crosses them, so the
 * parse is one forward pass over the bytes in place, with no reassembly buffer. Every field is checked
 * against the end of the structure holding it before it is read, so a wrong length is found as soon as its
 * own bytes are there, not when the bytes it announces have come. The parse is a function of the bytes
 * alone: on a prefix of some input it returns either 0 or what it returns on the whole input (the fuzz
 * target checks this).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include "tlshello.h"

#define REC_HEADER 5
#define REC_MAX 16384                    /* TLSPlaintext.length: at most 2^14 */
#define CONTENT_HANDSHAKE 22
#define HANDSHAKE_CLIENT_HELLO 1
#define HANDSHAKE_HEADER 4               /* type, 24-bit length */
/* version, random, session_id<0..32>, cipher_suites<2..2^16-2>, compression_methods<1..2^8-1> */
#define CLIENT_HELLO_MIN_BODY (2 + 32 + 1 + 2 + 2 + 1 + 1)
#define EXT_SERVER_NAME 0
#define NAME_TYPE_HOST_NAME 0
#define HOST_NAME_MAX_LEN 255

#define NEED 1                           /* internal: a valid prefix, more bytes needed */

struct cursor {
	const unsigned char *buf;
	size_t len;                      /* bytes in buf */
	size_t limit;                    /* the records may not go past it */
	size_t off;                      /* offset in buf of the next byte of the current record, or of the
	                                  * next record's header when rec_left is 0 */
	size_t rec_left;                 /* bytes of the current record not read yet (some maybe not received) */
	size_t pos;                      /* handshake bytes read */
	size_t total;                    /* the handshake message's length, header included; 0 until known */
};

/* Whether the records cannot hold the rest of the message within the limit, counted at the fewest headers
 * (full records) after the current one. */
static bool beyond_limit(const struct cursor *c)
{
	size_t rest = c->total - c->pos - c->rec_left;
	size_t least = c->off + c->rec_left + rest + REC_HEADER * ((rest + REC_MAX - 1) / REC_MAX);

	return least > c->limit;
}

/* Enter the record whose header is at c->off. */
static int next_record(struct cursor *c)
{
	const unsigned char *h = c->buf;	/* indexed from c->off: buf may be NULL when len is 0 */
	size_t o = c->off, have = c->len - c->off, rl;

	/* decided on no byte of the header, so a shorter input decides the same */
	if (c->off + REC_HEADER > c->limit)
		return -EMSGSIZE;
	/* each header byte as soon as it is there: type handshake, version 3.0-3.4 (an SSLv2 hello's first
	 * byte has its top bit set) */
	if ((have > 0 && h[o] != CONTENT_HANDSHAKE) || (have > 1 && h[o + 1] != 3) || (have > 2 && h[o + 2] > 4))
		return -EBADMSG;
	if (have < REC_HEADER)
		return NEED;
	rl = (size_t)h[o + 3] << 8 | h[o + 4];
	if (rl == 0 || rl > REC_MAX)
		return -EBADMSG;
	/* the message must end exactly at a record's end: nothing else may share its records */
	if (c->total && c->pos + rl > c->total)
		return -EBADMSG;
	if (c->off + REC_HEADER + rl > c->limit)
		return -EMSGSIZE;
	c->off += REC_HEADER;
	c->rec_left = rl;
	if (c->total && beyond_limit(c))
		return -EMSGSIZE;
	return 0;
}

/* Skip @n handshake bytes, all before @end (the end of the structure they are part of). */
static int skip(struct cursor *c, size_t n, size_t end)
{
	int rc;

	if (c->pos + n > end)
		return -EBADMSG;
	while (n > 0) {
		size_t k;

		if (c->rec_left == 0 && (rc = next_record(c)) != 0)
			return rc;
		if (c->off >= c->len)
			return NEED;
		k = n;
		if (k > c->rec_left)
			k = c->rec_left;
		if (k > c->len - c->off)
			k = c->len - c->off;
		c->off += k;
		c->rec_left -= k;
		c->pos += k;
		n -= k;
	}
	return 0;
}

/* Read an @n-byte (1-3) big-endian number before @end into *@v. */
static int get(struct cursor *c, unsigned n, size_t end, size_t *v)
{
	int rc;

	if (c->pos + n > end)
		return -EBADMSG;
	*v = 0;
	while (n-- > 0) {
		if (c->rec_left == 0 && (rc = next_record(c)) != 0)
			return rc;
		if (c->off >= c->len)
			return NEED;
		*v = *v << 8 | c->buf[c->off++];
		c->rec_left--;
		c->pos++;
	}
	return 0;
}

#define TRY(expr)                                 \
	do {                                      \
		int try_rc_ = (expr);             \
		if (try_rc_ != 0)                 \
			return try_rc_;           \
	} while (0)

/* One host_name of @n bytes: [A-Za-z0-9._-], no empty label; lowercased into @name. */
static int read_host_name(struct cursor *c, size_t n, size_t end, char *name)
{
	size_t ch;

	if (n == 0 || n > HOST_NAME_MAX_LEN)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		TRY(get(c, 1, end, &ch));
		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		if (ch == '.') {
			if (i == 0 || i == n - 1 || name[i - 1] == '.')
				return -EBADMSG;
		} else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_')) {
			return -EBADMSG;
		}
		name[i] = (char)ch;
	}
	name[n] = '\0';
	return 0;
}

/* The server_name extension's data, ending at @end (RFC 6066 section 3). */
static int read_server_name(struct cursor *c, size_t end, char *name)
{
	bool host = false;
	size_t list, type, n;

	TRY(get(c, 2, end, &list));
	if (list == 0 || c->pos + list != end)
		return -EBADMSG;
	while (c->pos < end) {
		TRY(get(c, 1, end, &type));
		/* every name type's data starts with a 16-bit length, for this very reason (RFC 6066) */
		TRY(get(c, 2, end, &n));
		if (c->pos + n > end)
			return -EBADMSG;
		if (type != NAME_TYPE_HOST_NAME) {
			TRY(skip(c, n, end));
			continue;
		}
		if (host)
			return -EBADMSG;	/* "MUST NOT contain more than one name of the same name_type" */
		host = true;
		TRY(read_host_name(c, n, end, name));
	}
	return 0;
}

static int parse(struct cursor *c, char *name)
{
	bool sni = false, null_compression = false;
	size_t v, n, end, type;

	TRY(get(c, 1, SIZE_MAX, &type));
	if (type != HANDSHAKE_CLIENT_HELLO)
		return -EBADMSG;
	TRY(get(c, 3, SIZE_MAX, &n));
	if (n < CLIENT_HELLO_MIN_BODY)
		return -EBADMSG;
	c->total = end = HANDSHAKE_HEADER + n;
	if (c->pos + c->rec_left > c->total)
		return -EBADMSG;
	if (beyond_limit(c))
		return -EMSGSIZE;

	TRY(get(c, 2, end, &v));
	if (v < 0x0300 || v > 0x0303)
		return -EBADMSG;
	TRY(skip(c, 32, end));		/* random */
	TRY(get(c, 1, end, &n));	/* session id */
	if (n > 32)
		return -EBADMSG;
	TRY(skip(c, n, end));
	TRY(get(c, 2, end, &n));	/* cipher suites, two bytes each */
	if (n < 2 || n % 2)
		return -EBADMSG;
	TRY(skip(c, n, end));
	TRY(get(c, 1, end, &n));	/* compression methods */
	if (n < 1)
		return -EBADMSG;
	for (size_t i = 0; i < n; i++) {
		TRY(get(c, 1, end, &v));
		if (v == 0)
			null_compression = true;
	}
	if (!null_compression)
		return -EBADMSG;
	if (c->pos == end)
		return 0;		/* no extensions (SSL 3.0, old TLS 1.0 clients) */

	TRY(get(c, 2, end, &n));
	if (c->pos + n != end)
		return -EBADMSG;
	while (c->pos < end) {
		TRY(get(c, 2, end, &type));
		TRY(get(c, 2, end, &n));
		if (c->pos + n > end)
			return -EBADMSG;
		if (type != EXT_SERVER_NAME) {
			TRY(skip(c, n, end));
			continue;
		}
		if (sni)
			return -EBADMSG;
		sni = true;
		TRY(read_server_name(c, c->pos + n, name));
	}
	return 0;
}

int evfdd_tls_hello_sni(const unsigned char *buf, size_t len, size_t limit, char *name, size_t cap)
{
	struct cursor c = { .buf = buf, .len = len };
	int rc;

	if (!name || cap < HOST_NAME_MAX_LEN + 1) {
		if (name && cap)
			name[0] = '\0';
		return -EINVAL;
	}
	name[0] = '\0';
	c.limit = limit < EVFDD_TLS_HELLO_MAX ? limit : EVFDD_TLS_HELLO_MAX;
	rc = parse(&c, name);
	/* complete: the records' lengths were checked against the message's, so the last one ends here */
	if (rc == 0 && (c.pos != c.total || c.rec_left != 0))
		rc = -EBADMSG;
	if (rc != 0) {
		name[0] = '\0';
		return rc == NEED ? 0 : rc;
	}
	return (int)c.off;
}
