/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The ClientHello parser (daemon/tlshello.c) and sni_route's names (daemon/sni.c).
 *
 * Real ClientHellos are fixtures in tests/fuzz-corpus/tlshello (also the fuzz target's seeds): captured
 * from `openssl s_client -servername NAME` (-tls1_2, -tls1_3, -noservername) against a listener writing
 * what it received to a file, and from Python's ssl module through a MemoryBIO. Each must parse at its
 * full length with its name, say 0 at every shorter length (each prefix in a buffer of exactly its size, so
 * AddressSanitizer sees a read past it), and parse the same re-framed into records of 100 and of 1 byte.
 * Hellos built here cover every check one by one. Finally every file of the corpus must give what its
 * name promises: openssl-*, python-*, reframed-*, ok-*: complete at their length; trailing-*: complete
 * before it; bad-*, junk-*: -EBADMSG; big-*: -EMSGSIZE; trunc-*, empty.bin: 0; other names (inputs the
 * fuzzer found) anything consistent.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../daemon/sni.h"
#include "../daemon/tlshello.h"
#include "testutil.h"

#define MAXBUF 70000

static char corpus[4096];

/* Parse exactly @len bytes copied into a buffer of that size. */
static int parse_exact(const unsigned char *b, size_t len, size_t limit, char *name)
{
	unsigned char *copy = malloc(len ? len : 1);
	int rc;

	TU_CHECK(copy, "malloc");
	memcpy(copy, b, len);
	rc = evfdd_tls_hello_sni(copy, len, limit, name, 256);
	free(copy);
	return rc;
}

/* Every proper prefix of @b says 0 or @full's error (never a different answer) with an empty name, or, past
 * a complete hello (@full > 0), @full. */
static void check_prefixes(const unsigned char *b, size_t len, int full, const char *what)
{
	char name[256];

	for (size_t p = 0; p < len; p++) {
		int rc = parse_exact(b, p, EVFDD_TLS_HELLO_MAX, name);

		if (full > 0)	/* complete from its last record on, whatever follows */
			TU_CHECK(rc == (p < (size_t)full ? 0 : full), "%s: prefix %zu of %zu: %d", what, p, len, rc);
		else
			TU_CHECK(rc == 0 || rc == full, "%s: prefix %zu: %d, whole %d", what, p, rc, full);
		TU_CHECK(rc > 0 || name[0] == '\0', "%s: prefix %zu: name \"%s\"", what, p, name);
	}
}

static size_t read_file(const char *file, unsigned char *b, size_t cap)
{
	char path[8192];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s", corpus, file);
	f = fopen(path, "rb");
	TU_CHECK(f, "%s: %s", path, strerror(errno));
	n = fread(b, 1, cap, f);
	TU_CHECK(!ferror(f) && n < cap, "%s: read", path);
	fclose(f);
	return n;
}

/* The handshake bytes of the records in @b (@len bytes) into @hs; returns their length. */
static size_t unframe(const unsigned char *b, size_t len, unsigned char *hs)
{
	size_t n = 0;

	for (size_t i = 0; i < len;) {
		size_t rl = (size_t)b[i + 3] << 8 | b[i + 4];

		TU_CHECK(b[i] == 22 && i + 5 + rl <= len, "fixture framing at %zu", i);
		memcpy(hs + n, b + i + 5, rl);
		n += rl;
		i += 5 + rl;
	}
	return n;
}

/* @hs (@n bytes) in handshake records of at most @size bytes with record version 3.@minor, into @out. */
static size_t frame(const unsigned char *hs, size_t n, size_t size, unsigned minor, unsigned char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i += size) {
		size_t k = n - i < size ? n - i : size;

		out[o++] = 22;
		out[o++] = 3;
		out[o++] = (unsigned char)minor;
		out[o++] = (unsigned char)(k >> 8);
		out[o++] = (unsigned char)k;
		memcpy(out + o, hs + i, k);
		o += k;
	}
	return o;
}

/* ---- real ClientHellos ------------------------------------------------------------------------------ */

static const struct fixture {
	const char *file, *name;
} fixtures[] = {
	{ "openssl-tls13-sni.bin", "x.example" },
	{ "openssl-tls12-sni.bin", "www.tls12.example" },
	{ "openssl-tls13-nosni.bin", "" },
	{ "openssl-tls12-nosni.bin", "" },
	{ "openssl-any-mixedcase.bin", "mixed-case_1.example.com" },	/* sent as Mixed-Case_1.Example.COM */
	{ "python-tls13-sni.bin", "python.example.org" },
	{ "python-tls12-sni.bin", "api.v2.python-test.example" },
	{ "python-nosni.bin", "" },
};

static void test_fixture(const struct fixture *fx)
{
	static unsigned char b[MAXBUF], hs[MAXBUF], re[MAXBUF];
	static const size_t sizes[] = { 100, 1, 7, 16384 };
	size_t len = read_file(fx->file, b, sizeof(b)), n, rlen;
	char name[256];
	int rc;

	rc = parse_exact(b, len, EVFDD_TLS_HELLO_MAX, name);
	TU_CHECK(rc == (int)len && strcmp(name, fx->name) == 0, "%s: %d \"%s\", want %zu \"%s\"", fx->file, rc, name,
	         len, fx->name);
	check_prefixes(b, len, rc, fx->file);

	/* the client's next bytes after the hello are not the parser's: a ChangeCipherSpec, early data, junk */
	memcpy(b + len, "\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x02hi", 13);
	TU_CHECK(evfdd_tls_hello_sni(b, len + 13, EVFDD_TLS_HELLO_MAX, name, sizeof(name)) == (int)len &&
	         strcmp(name, fx->name) == 0, "%s: with data after it", fx->file);
	memset(b + len, 0xff, 100);
	TU_CHECK(evfdd_tls_hello_sni(b, len + 100, EVFDD_TLS_HELLO_MAX, name, sizeof(name)) == (int)len,
	         "%s: with junk after it", fx->file);

	/* the limit counts the records' bytes */
	TU_CHECK(parse_exact(b, len, len, name) == (int)len, "%s: limit = its length", fx->file);
	TU_CHECK(parse_exact(b, len, len - 1, name) == -EMSGSIZE, "%s: limit one below", fx->file);
	TU_CHECK(parse_exact(b, len, 40000, name) == (int)len, "%s: limit above the maximum", fx->file);
	TU_CHECK(evfdd_tls_hello_sni(b, len, EVFDD_TLS_HELLO_MAX, name, 255) == -EINVAL, "%s: cap 255", fx->file);

	/* the same handshake message in other records: 100 bytes (spec), 1 byte (the handshake header itself
	 * spans four records), 7, and one big one */
	n = unframe(b, len, hs);
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		rlen = frame(hs, n, sizes[s], 1, re);
		rc = parse_exact(re, rlen, EVFDD_TLS_HELLO_MAX, name);
		if (rlen > EVFDD_TLS_HELLO_MAX) {
			TU_CHECK(rc == -EMSGSIZE, "%s in %zu-byte records (%zu bytes): %d", fx->file, sizes[s], rlen, rc);
			continue;
		}
		TU_CHECK(rc == (int)rlen && strcmp(name, fx->name) == 0, "%s in %zu-byte records: %d \"%s\"", fx->file,
		         sizes[s], rc, name);
		if (sizes[s] == 100 || sizes[s] == 7)
			check_prefixes(re, rlen, rc, fx->file);
		TU_CHECK(parse_exact(re, rlen, rlen - 1, name) == -EMSGSIZE, "%s in %zu-byte records: limit", fx->file,
		         sizes[s]);
	}
	printf("ok - %s: \"%s\", %zu bytes, every prefix, re-framed in 100/7/1-byte records\n", fx->file,
	       fx->name, len);
}

/* ---- hellos built here --------------------------------------------------------------------------- */

struct msg {
	unsigned char b[MAXBUF];
	size_t n;
};

static void put(struct msg *m, const void *p, size_t n)
{
	TU_CHECK(m->n + n <= sizeof(m->b), "builder overflow");
	memcpy(m->b + m->n, p, n);
	m->n += n;
}

static void put8(struct msg *m, unsigned v)
{
	unsigned char c = (unsigned char)v;

	put(m, &c, 1);
}

static void put16(struct msg *m, unsigned v)
{
	put8(m, v >> 8);
	put8(m, v);
}

/* An extension; @data of @n bytes. */
static void put_ext(struct msg *m, unsigned type, const void *data, size_t n)
{
	put16(m, type);
	put16(m, (unsigned)n);
	put(m, data, n);
}

/* A server_name extension with one host_name entry. */
static void put_sni(struct msg *m, const char *host)
{
	size_t n = strlen(host);

	put16(m, 0);
	put16(m, (unsigned)(n + 5));
	put16(m, (unsigned)(n + 3));
	put8(m, 0);
	put16(m, (unsigned)n);
	put(m, host, n);
}

/* A ClientHello handshake message with client version @version, a 32-byte session id, three cipher suites,
 * null compression, then @ext's bytes as the extensions block (NULL: no block at all). */
static void hello(struct msg *out, const struct msg *ext, unsigned version)
{
	struct msg body = { .n = 0 };
	static const unsigned char suites[] = { 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f };

	put16(&body, version);
	for (int i = 0; i < 32; i++)
		put8(&body, (unsigned)i);
	put8(&body, 32);
	for (int i = 0; i < 32; i++)
		put8(&body, 0xa0);
	put16(&body, sizeof(suites));
	put(&body, suites, sizeof(suites));
	put8(&body, 1);
	put8(&body, 0);
	if (ext) {
		put16(&body, (unsigned)ext->n);
		put(&body, ext->b, ext->n);
	}
	out->n = 0;
	put8(out, 1);
	put8(out, (unsigned)(body.n >> 16));
	put16(out, (unsigned)(body.n & 0xffff));
	put(out, body.b, body.n);
}

/* Frame @hs in one record (or several of @size) and expect @want (the record bytes when 1) and @name. */
static void expect_at(int line, const struct msg *hs, size_t size, int want, const char *name)
{
	static unsigned char re[MAXBUF];
	size_t rlen = frame(hs->b, hs->n, size, 1, re);
	char got[256];
	int rc = parse_exact(re, rlen, EVFDD_TLS_HELLO_MAX, got);

	if (want == 1)
		want = (int)rlen;
	TU_CHECK(rc == want, "line %d: %d, want %d", line, rc, want);
	TU_CHECK(strcmp(got, want > 0 ? name : "") == 0, "line %d: name \"%s\"", line, got);
	check_prefixes(re, rlen, rc, "built");
}
#define expect(hs, size, want, name) expect_at(__LINE__, hs, size, want, name)
#define OK 1

static void test_names(void)
{
	struct msg e, h;
	char n255[256], n256[257];

	e.n = 0;
	put_sni(&e, "WWW.Example.ORG");
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "www.example.org");
	expect(&h, 3, OK, "www.example.org");

	e.n = 0;
	put_sni(&e, "a-b_c.0-9.x");
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "a-b_c.0-9.x");

	/* 255 bytes is the most; the parser does not count labels' lengths (that is DNS's business) */
	memset(n255, 'a', 255);
	n255[255] = '\0';
	for (int i = 63; i < 255; i += 64)
		n255[i] = '.';
	e.n = 0;
	put_sni(&e, n255);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, n255);
	snprintf(n256, sizeof(n256), "b%s", n255);
	e.n = 0;
	put_sni(&e, n256);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");

	static const char *const bad[] = { ".a.example", "a..example", "a.example.", ".", "a b", "a/b", "a:443",
					   "caf\xc3\xa9.example", "a\x01", "*.example", "a\\b", "a%2e" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		e.n = 0;
		put_sni(&e, bad[i]);
		hello(&h, &e, 0x0303);
		expect(&h, 16384, -EBADMSG, "");
	}
	/* a NUL inside the name (the classic certificate-name trick) */
	e.n = 0;
	put_ext(&e, 0, "\x00\x0c\x00\x00\x09" "a.b\x00.evil", 14);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");
	/* an empty host_name */
	e.n = 0;
	put_ext(&e, 0, "\x00\x03\x00\x00\x00", 5);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");
	printf("ok - names: lowercased, [a-z0-9._-], 255 bytes at most, no empty label, no NUL\n");
}

static void test_extensions(void)
{
	struct msg e, h;

	/* no extensions at all (SSL 3.0 style), an empty block, other extensions only */
	hello(&h, NULL, 0x0300);
	expect(&h, 16384, OK, "");
	e.n = 0;
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "");
	put_ext(&e, 43, "\x02\x03\x04", 3);
	put_ext(&e, 0xfafa, "", 0);			/* GREASE, empty */
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "");

	/* the name after other extensions, and extensions after it */
	put_sni(&e, "late.example");
	put_ext(&e, 16, "\x00\x03\x02h2", 5);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "late.example");
	expect(&h, 100, OK, "late.example");

	/* duplicate server_name extensions; two host_name entries */
	e.n = 0;
	put_sni(&e, "a.example");
	put_ext(&e, 43, "\x02\x03\x04", 3);
	put_sni(&e, "a.example");
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");
	e.n = 0;
	put_ext(&e, 0, "\x00\x09\x00\x00\x01" "a" "\x00\x00\x02" "bb", 11);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");

	/* another name type before the host name is skipped by its 16-bit length; alone, it gives "" */
	e.n = 0;
	put_ext(&e, 0, "\x00\x0b\x07\x00\x03xyz" "\x00\x00\x02" "cc", 13);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "cc");
	e.n = 0;
	put_ext(&e, 0, "\x00\x06\x07\x00\x03xyz", 8);
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "");

	/* lengths that disagree: the list with the extension (both ways), an entry with the list, an empty
	 * extension or list, an extension past the block, the block with the body */
	static const struct {
		const char *data;
		size_t n;
	} bad_sni[] = {
		{ "\x00\x05\x00\x00\x01" "a", 6 },
		{ "\x00\x03\x00\x00\x01" "a", 6 },
		{ "\x00\x04\x00\x00\x02" "a", 6 },
		{ "", 0 },
		{ "\x00\x00", 2 },
		{ "\x00\x02\x00\x00", 4 },
		{ "\x00\x01\x00", 3 },
	};
	for (size_t i = 0; i < sizeof(bad_sni) / sizeof(bad_sni[0]); i++) {
		e.n = 0;
		put_ext(&e, 0, bad_sni[i].data, bad_sni[i].n);
		hello(&h, &e, 0x0303);
		expect(&h, 16384, -EBADMSG, "");
	}
	e.n = 0;
	put_ext(&e, 43, "\x02\x03\x04", 3);
	e.b[3] = 4;					/* the extension claims one byte more than the block has */
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");
	e.b[3] = 3;
	put8(&e, 0);					/* a stray byte after the last extension */
	hello(&h, &e, 0x0303);
	expect(&h, 16384, -EBADMSG, "");
	e.n = 0;
	put_sni(&e, "a.example");
	hello(&h, &e, 0x0303);
	h.b[h.n - e.n - 1]--;				/* the block's length one short of the body's end */
	expect(&h, 16384, -EBADMSG, "");
	printf("ok - extensions: none, GREASE, order, duplicates, name types, every length mismatch\n");
}

static void test_fields(void)
{
	struct msg e = { .n = 0 }, h;
	size_t sid = 4 + 2 + 32, suites = sid + 1 + 32, comp = suites + 2 + 6;

	put_sni(&e, "f.example");
	hello(&h, &e, 0x0303);
	expect(&h, 16384, OK, "f.example");

	/* client version: 3.0-3.3 (TLS 1.3 says 3.3 there too) */
	for (unsigned v = 0x0300; v <= 0x0303; v++) {
		hello(&h, &e, v);
		expect(&h, 16384, OK, "f.example");
	}
	static const unsigned bad_versions[] = { 0x0304, 0x0200, 0x0002, 0x0403, 0xfeff };
	for (size_t i = 0; i < sizeof(bad_versions) / sizeof(bad_versions[0]); i++) {
		hello(&h, &e, bad_versions[i]);
		expect(&h, 16384, -EBADMSG, "");
	}

	/* session id over 32; cipher suites odd, empty, past the body; compression without null, empty */
	hello(&h, &e, 0x0303);
	h.b[sid] = 33;
	expect(&h, 16384, -EBADMSG, "");
	hello(&h, &e, 0x0303);
	h.b[suites + 1] = 5;
	expect(&h, 16384, -EBADMSG, "");
	h.b[suites + 1] = 0;
	expect(&h, 16384, -EBADMSG, "");
	h.b[suites] = 0xff;
	expect(&h, 16384, -EBADMSG, "");
	hello(&h, &e, 0x0303);
	h.b[comp + 1] = 1;
	expect(&h, 16384, -EBADMSG, "");
	h.b[comp] = 0;
	expect(&h, 16384, -EBADMSG, "");

	/* another handshake type (ServerHello, ClientKeyExchange) */
	hello(&h, &e, 0x0303);
	h.b[0] = 2;
	expect(&h, 16384, -EBADMSG, "");
	h.b[0] = 16;
	expect(&h, 16384, -EBADMSG, "");

	/* the handshake length: shorter than any ClientHello; one longer or shorter than the body */
	hello(&h, &e, 0x0303);
	h.b[1] = h.b[2] = 0;
	h.b[3] = 40;
	expect(&h, 16384, -EBADMSG, "");
	hello(&h, &e, 0x0303);
	h.b[3]++;					/* the extensions no longer end at the body's end */
	expect(&h, 16384, -EBADMSG, "");
	hello(&h, &e, 0x0303);
	h.b[3]--;
	expect(&h, 16384, -EBADMSG, "");
	printf("ok - fields: client version, session id, cipher suites, compression, handshake type and length\n");
}

/* Feed @b and expect @want already at its first @at bytes and at every length after. */
static void expect_early(const unsigned char *b, size_t len, size_t at, size_t limit, int want, const char *what)
{
	char name[256];

	for (size_t p = 0; p <= len; p++) {
		int rc = parse_exact(b, p, limit, name);

		TU_CHECK(rc == (p < at ? 0 : want), "%s: at %zu bytes: %d", what, p, rc);
	}
}

static void test_records(void)
{
	static unsigned char re[MAXBUF];
	struct msg e = { .n = 0 }, h;
	size_t rlen;
	char name[256];

	put_sni(&e, "r.example");
	hello(&h, &e, 0x0303);

	/* record versions 3.0-3.4 are all fine, 3.5 and 2.x are not */
	for (unsigned minor = 0; minor <= 4; minor++) {
		rlen = frame(h.b, h.n, 16384, minor, re);
		TU_CHECK(parse_exact(re, rlen, EVFDD_TLS_HELLO_MAX, name) == (int)rlen, "record version 3.%u", minor);
	}
	rlen = frame(h.b, h.n, 16384, 5, re);
	expect_early(re, rlen, 3, EVFDD_TLS_HELLO_MAX, -EBADMSG, "record version 3.5");
	re[1] = 2;
	re[2] = 0;
	expect_early(re, rlen, 2, EVFDD_TLS_HELLO_MAX, -EBADMSG, "record version 2.0");

	/* a second record of another type (alert, application data) inside the hello */
	rlen = frame(h.b, h.n, 50, 1, re);
	re[55] = 21;
	expect_early(re, rlen, 56, EVFDD_TLS_HELLO_MAX, -EBADMSG, "alert record inside");
	re[55] = 23;
	expect_early(re, rlen, 56, EVFDD_TLS_HELLO_MAX, -EBADMSG, "application data inside");

	/* record lengths: 0, 16385, and one that runs past the message's end */
	memcpy(re, "\x16\x03\x01\x00\x00", 5);
	expect_early(re, 5, 5, EVFDD_TLS_HELLO_MAX, -EBADMSG, "empty record");
	memcpy(re, "\x16\x03\x01\x40\x01\x01", 6);
	expect_early(re, 6, 5, EVFDD_TLS_HELLO_MAX, -EBADMSG, "record of 16385");
	rlen = frame(h.b, h.n, 50, 1, re);
	re[4]++;					/* the first record takes one byte of the second's header */
	TU_CHECK(parse_exact(re, rlen, EVFDD_TLS_HELLO_MAX, name) == -EBADMSG, "overlapping records");
	put(&h, "\x01\x00\x00\x00", 4);			/* a second handshake message in the hello's record */
	rlen = frame(h.b, h.n, 16384, 1, re);
	expect_early(re, rlen, 9, EVFDD_TLS_HELLO_MAX, -EBADMSG, "record longer than the message");

	/* not TLS at all: decided on the first byte */
	expect_early((const unsigned char *)"GET / HTTP/1.1\r\n", 16, 1, EVFDD_TLS_HELLO_MAX, -EBADMSG, "HTTP");
	expect_early((const unsigned char *)"SSH-2.0-OpenSSH_9.6\r\n", 21, 1, EVFDD_TLS_HELLO_MAX, -EBADMSG, "SSH");
	expect_early((const unsigned char *)"\x80\x2e\x01\x00\x02\x00\x15", 7, 1, EVFDD_TLS_HELLO_MAX, -EBADMSG,
		     "SSLv2 hello");
	expect_early((const unsigned char *)"\x15\x03\x03\x00\x02\x02\x28", 7, 1, EVFDD_TLS_HELLO_MAX, -EBADMSG,
		     "alert");
	TU_CHECK(evfdd_tls_hello_sni(NULL, 0, EVFDD_TLS_HELLO_MAX, name, sizeof(name)) == 0, "nothing yet");
	printf("ok - records: versions, types inside, lengths 0/16385/overlapping, junk decided on byte 1\n");
}

static void test_limits(void)
{
	static unsigned char re[MAXBUF];
	struct msg e = { .n = 0 }, h;
	char big[200], name[256];
	size_t rlen;

	/* announced too big: decided on the handshake header, not after 16 KiB have come */
	expect_early((const unsigned char *)"\x16\x03\x01\x01\x00\x01\x00\x40\x00", 9, 9, EVFDD_TLS_HELLO_MAX,
		     -EMSGSIZE, "16 KiB message");
	expect_early((const unsigned char *)"\x16\x03\x01\x01\x00\x01\xff\xff\xff", 9, 9, EVFDD_TLS_HELLO_MAX,
		     -EMSGSIZE, "16 MiB message");
	/* a record past the limit: decided on its header */
	expect_early((const unsigned char *)"\x16\x03\x01\x01\x00\x01", 6, 5, 200, -EMSGSIZE, "record past limit");
	/* limit 0: nothing fits */
	expect_early((const unsigned char *)"\x16", 1, 0, 0, -EMSGSIZE, "limit 0");

	/* a hello of 2000 bytes of padding extension: fits 16384 whole, not a limit of 1024; in records of
	 * 100 bytes, known too big when the header says so */
	memset(big, 'x', sizeof(big));
	put_sni(&e, "big.example");
	for (int i = 0; i < 10; i++)
		put_ext(&e, 21, big, sizeof(big));
	hello(&h, &e, 0x0303);
	rlen = frame(h.b, h.n, 100, 1, re);
	TU_CHECK(parse_exact(re, rlen, EVFDD_TLS_HELLO_MAX, name) == (int)rlen && strcmp(name, "big.example") == 0,
	         "2 KB hello");
	expect_early(re, rlen, 9, 1024, -EMSGSIZE, "2 KB hello, limit 1 KiB");
	TU_CHECK(parse_exact(re, rlen, rlen, name) == (int)rlen, "limit exactly its size");
	/* the lower bound counts headers of full records: with this one's 100-byte records, the sum goes over
	 * only at the last record's header */
	TU_CHECK(parse_exact(re, rlen, rlen - 1, name) == -EMSGSIZE, "limit one below");
	printf("ok - limits: decided on the handshake header or on the record header that goes past\n");
}

/* ---- every file of the corpus ------------------------------------------------------------------- */

static void test_corpus(void)
{
	static unsigned char b[MAXBUF];
	struct dirent *de;
	DIR *d = opendir(corpus);
	char name[256];
	int files = 0;

	TU_CHECK(d, "%s: %s", corpus, strerror(errno));
	while ((de = readdir(d))) {
		const char *f = de->d_name;
		size_t len;
		int rc;

		if (f[0] == '.')
			continue;
		len = read_file(f, b, sizeof(b));
		rc = parse_exact(b, len, EVFDD_TLS_HELLO_MAX, name);
		if (!strncmp(f, "bad-", 4) || !strncmp(f, "junk-", 5))
			TU_CHECK(rc == -EBADMSG, "%s: %d", f, rc);
		else if (!strncmp(f, "trunc-", 6) || !strcmp(f, "empty.bin"))
			TU_CHECK(rc == 0, "%s: %d", f, rc);
		else if (!strncmp(f, "big-", 4))
			TU_CHECK(rc == -EMSGSIZE, "%s: %d", f, rc);
		else if (!strncmp(f, "trailing-", 9))
			TU_CHECK(rc > 0 && (size_t)rc < len, "%s: %d", f, rc);
		else if (!strncmp(f, "ok-", 3) || !strncmp(f, "openssl-", 8) || !strncmp(f, "python-", 7) ||
			 !strncmp(f, "reframed-", 9))
			TU_CHECK(rc == (int)len, "%s: %d of %zu", f, rc, len);
		/* anything else (an input the fuzzer found, by its hash) only has to be consistent */
		check_prefixes(b, len, rc, f);
		files++;
	}
	closedir(d);
	TU_CHECK(files >= 20, "only %d files in %s", files, corpus);
	printf("ok - corpus: %d files as their names say\n", files);
}

/* ---- sni_route names ---------------------------------------------------------------------------- */

static void expect_name_error(const char *name, const char *want)
{
	char err[512] = "";

	TU_CHECK(evfdd_sni_name_check(name, err, sizeof(err)) == -EINVAL, "\"%s\" accepted", name);
	TU_CHECK(strcmp(err, want) == 0, "\"%s\": \"%s\"\n  want \"%s\"", name, err, want);
}

static void test_sni_names(void)
{
	static const char *const good[] = { "a", "example.com", "a.example.com", "*.example.com", "*.com",
					    "x_y-z.0.example", "xn--caf-dma.example" };
	char label64[80], long_name[300];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		TU_CHECK(evfdd_sni_name_check(good[i], NULL, 0) == 0, "%s", good[i]);
	expect_name_error("", "an empty server name; write a name such as www.example.com or *.example.com");
	expect_name_error("*", "\"*\" alone is not a route; use sni_default for every other name");
	expect_name_error("*.", "\"*.\": a wildcard is \"*.\" followed by a name, as in *.example.com");
	expect_name_error("*example.com", "\"*example.com\": a wildcard is \"*.\" followed by a name, as in "
			  "*.example.com");
	expect_name_error("a.*.example.com", "\"a.*.example.com\": '*' may only be the whole first label, as in "
			  "*.example.com");
	expect_name_error("*.*.example.com", "\"*.*.example.com\": '*' may only be the whole first label, as in "
			  "*.example.com");
	expect_name_error("WWW.example.com", "\"WWW.example.com\" has uppercase letters; write it in lowercase "
			  "(names are matched case-insensitively, as lowercase)");
	expect_name_error("a..b", "\"a..b\" has an empty label (a leading, trailing or double dot)");
	expect_name_error(".a", "\".a\" has an empty label (a leading, trailing or double dot)");
	expect_name_error("a.", "\"a.\" has an empty label (a leading, trailing or double dot)");
	expect_name_error("*..a", "\"*..a\" has an empty label (a leading, trailing or double dot)");
	expect_name_error("a b", "\"a b\" has ' '; a server name has only a-z, 0-9, '-', '_' and dots");
	expect_name_error("a:443", "\"a:443\" has ':'; a server name has only a-z, 0-9, '-', '_' and dots");
	expect_name_error("caf\xc3\xa9", "a server name has only a-z, 0-9, '-', '_' and dots, not byte 0xc3");
	expect_name_error("a\nb", "a server name has only a-z, 0-9, '-', '_' and dots, not byte 0x0a");
	memset(label64, 'l', 64);
	strcpy(label64 + 64, ".example");
	TU_CHECK(evfdd_sni_name_check(label64, NULL, 0) == -EINVAL, "64-byte label");
	strcpy(label64 + 63, ".example");
	TU_CHECK(evfdd_sni_name_check(label64, NULL, 0) == 0, "63-byte label");
	memset(long_name, 'a', sizeof(long_name));
	for (int i = 50; i < 300; i += 50)
		long_name[i] = '.';
	long_name[255] = '\0';
	TU_CHECK(evfdd_sni_name_check(long_name, NULL, 0) == 0, "255 bytes");
	long_name[255] = 'a';
	long_name[256] = '\0';
	TU_CHECK(evfdd_sni_name_check(long_name, NULL, 0) == -EINVAL, "256 bytes");
	TU_CHECK(evfdd_sni_name_check(NULL, NULL, 0) == -EINVAL, "NULL");
	printf("ok - sni_route names: exact and wildcard, every error's message\n");
}

static void test_sni_match(void)
{
	static const char *const routes[] = { "*.example.com", "a.example.com", "*.b.example.com", "example.com",
					      "*.c.example.com", "*.b.example.com", NULL, "other.org" };
	const size_t n = sizeof(routes) / sizeof(routes[0]);

	TU_CHECK(evfdd_sni_match(routes, n, "a.example.com") == 1, "exact over wildcard");
	TU_CHECK(evfdd_sni_match(routes, n, "example.com") == 3, "exact, wildcard does not cover its own base");
	TU_CHECK(evfdd_sni_match(routes, n, "x.example.com") == 0, "wildcard");
	TU_CHECK(evfdd_sni_match(routes, n, "x.y.z.example.com") == 0, "wildcard at any depth");
	TU_CHECK(evfdd_sni_match(routes, n, "x.b.example.com") == 2, "longest suffix, first of equals");
	TU_CHECK(evfdd_sni_match(routes, n, "b.example.com") == 0, "*.b.example.com does not cover b.example.com");
	TU_CHECK(evfdd_sni_match(routes, n, "y.x.c.example.com") == 4, "longest suffix, deep");
	TU_CHECK(evfdd_sni_match(routes, n, "xexample.com") == -1, "suffix at a label boundary only");
	TU_CHECK(evfdd_sni_match(routes, n, "other.org") == 7, "after a NULL entry");
	TU_CHECK(evfdd_sni_match(routes, n, "example.org") == -1, "none");
	TU_CHECK(evfdd_sni_match(routes, n, "") == -1, "no name");
	TU_CHECK(evfdd_sni_match(routes, n, NULL) == -1, "NULL name");
	TU_CHECK(evfdd_sni_match(routes, 0, "a.example.com") == -1, "no routes");
	TU_CHECK(evfdd_sni_match(routes + 3, 1, "a.example.com") == -1, "exact only");
	printf("ok - sni_route matching: exact first, then the longest wildcard suffix\n");
}

int main(void)
{
	const char *top = getenv("top_srcdir");

	snprintf(corpus, sizeof(corpus), "%s/tests/fuzz-corpus/tlshello", top ? top : ".");
	for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++)
		test_fixture(&fixtures[i]);
	test_names();
	test_extensions();
	test_fields();
	test_records();
	test_limits();
	test_corpus();
	test_sni_names();
	test_sni_match();
	printf("test-tlshello: all passed\n");
	return 0;
}
