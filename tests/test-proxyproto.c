/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The PROXY protocol (daemon/proxyproto.h): round trips of both versions for every family, the exact bytes
 * written, IPv4-mapped addresses, every byte prefix of valid headers (each parsed from a heap block of exactly
 * its length, so that ASan catches a read past it), a corpus of malformed headers with the byte at which each
 * must be refused, v2 TLVs as real senders write them (AWS's 0xEA, ALPN, CRC32C, SSL), the size limit, and
 * 10 MB of junk refused after a few bytes (the rest of the buffer is unreadable: a read of it would crash).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "../daemon/proxyproto.h"
#include "testutil.h"

#define UN_OFF offsetof(struct sockaddr_un, sun_path)

static unsigned long nparses;

/* Parse the first @n bytes of @b from a heap block of exactly @n bytes. */
static int parse_n(const void *b, size_t n, struct evfdd_proxy_info *out)
{
	unsigned char *copy = malloc(n ? n : 1);
	int r;

	TU_CHECK(copy, "malloc");
	memcpy(copy, b, n);
	r = evfdd_proxy_parse(copy, n, out);
	free(copy);
	nparses++;
	return r;
}

/* A readable form of @b for messages. */
static const char *show(const void *b, size_t n)
{
	static char s[1024];
	const unsigned char *p = b;
	size_t o = 0;

	for (size_t i = 0; i < n && o + 8 < sizeof(s); i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
			s[o++] = (char)p[i];
		else
			o += (size_t)snprintf(s + o, sizeof(s) - o, "\\x%02x", p[i]);
	}
	s[o] = '\0';
	return s;
}

/* @b (@n bytes) is one complete header: every shorter prefix is 0, all of it is @n, and so is all of it
 * followed by the client's first bytes. @out receives the parse. */
static void check_valid(const void *b, size_t n, struct evfdd_proxy_info *out)
{
	static const char after[] = "GET / HTTP/1.1\r\n\0\xff\r\n\r\n";
	struct evfdd_proxy_info junk;
	unsigned char *more;
	int r;

	for (size_t k = 0; k < n; k++) {
		memset(&junk, 0xAB, sizeof(junk));
		r = parse_n(b, k, &junk);
		TU_CHECK(r == 0, "prefix %zu of \"%s\": %d, want 0", k, show(b, n), r);
		for (size_t j = 0; j < sizeof(junk); j++)	/* untouched until complete */
			TU_CHECK(((unsigned char *)&junk)[j] == 0xAB, "prefix %zu wrote to out", k);
	}
	r = parse_n(b, n, out);
	TU_CHECK(r == (int)n, "\"%s\": %d, want %zu", show(b, n), r, n);
	TU_CHECK(parse_n(b, n, NULL) == (int)n, "out NULL");
	more = malloc(n + sizeof(after));
	TU_CHECK(more, "malloc");
	memcpy(more, b, n);
	memcpy(more + n, after, sizeof(after));
	for (size_t k = n; k <= n + sizeof(after); k++)
		TU_CHECK(parse_n(more, k, NULL) == (int)n, "\"%s\" + %zu bytes of data", show(b, n), k - n);
	free(more);
}

/* @b (@n bytes) must be refused with @err from byte @at on (prefixes shorter than @at are 0). */
static void check_bad_at(const void *b, size_t n, size_t at, int err)
{
	for (size_t k = 0; k <= n; k++) {
		int r = parse_n(b, k, NULL);

		TU_CHECK(r == (k < at ? 0 : err), "\"%s\" (%zu bytes): prefix %zu gave %d, want %d from byte %zu",
		         show(b, n), n, k, r, err, at);
	}
}

/* ---- addresses ---------------------------------------------------------------------------------------- */

static struct evfdd_sockaddr sa_in(const char *text, uint16_t port)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	if (strchr(text, ':')) {
		a.u.in6.sin6_family = AF_INET6;
		TU_CHECK(inet_pton(AF_INET6, text, &a.u.in6.sin6_addr) == 1, "%s", text);
		a.u.in6.sin6_port = htons(port);
		a.len = sizeof(a.u.in6);
	} else {
		a.u.in.sin_family = AF_INET;
		TU_CHECK(inet_pton(AF_INET, text, &a.u.in.sin_addr) == 1, "%s", text);
		a.u.in.sin_port = htons(port);
		a.len = sizeof(a.u.in);
	}
	return a;
}

/* A Unix address of @n path bytes (as getpeername returns them: abstract names without a NUL). */
static struct evfdd_sockaddr sa_un(const char *path, size_t n)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	a.u.un.sun_family = AF_UNIX;
	memcpy(a.u.un.sun_path, path, n);
	a.len = (socklen_t)(UN_OFF + n);
	return a;
}

static struct evfdd_sockaddr sa_path(const char *path)
{
	return sa_un(path, strlen(path) + 1);
}

static bool same(const struct evfdd_sockaddr *a, const struct evfdd_sockaddr *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

static bool is_local(const struct evfdd_proxy_info *pi)
{
	static const struct evfdd_sockaddr zero;

	return pi->local && same(&pi->src, &zero) && same(&pi->dst, &zero);
}

/* ---- round trips -------------------------------------------------------------------------------------- */

static int build(int version, const struct evfdd_sockaddr *s, const struct evfdd_sockaddr *d, unsigned char *out)
{
	int n = evfdd_proxy_build(version, s, d, out, EVFDD_PROXY_BUILD_MAX);

	TU_CHECK(n > 0 && n <= EVFDD_PROXY_BUILD_MAX, "build v%d: %d", version, n);
	/* every capacity short of the length is -ENOSPC, and nothing is written past it */
	for (int cap = 0; cap < n; cap++) {
		unsigned char g[EVFDD_PROXY_BUILD_MAX + 1];

		memset(g, 0x5A, sizeof(g));
		TU_CHECK(evfdd_proxy_build(version, s, d, g, (size_t)cap) == -ENOSPC, "cap %d of %d", cap, n);
		for (size_t j = (size_t)cap; j < sizeof(g); j++)
			TU_CHECK(g[j] == 0x5A, "cap %d: byte %zu written", cap, j);
	}
	return n;
}

/* Build @s -> @d in @version, parse it back, expect @ws -> @wd (NULL: local). */
static void round_trip(int version, const struct evfdd_sockaddr *s, const struct evfdd_sockaddr *d,
		       const struct evfdd_sockaddr *ws, const struct evfdd_sockaddr *wd)
{
	unsigned char h[EVFDD_PROXY_BUILD_MAX];
	struct evfdd_proxy_info pi;
	int n = build(version, s, d, h);

	check_valid(h, (size_t)n, &pi);
	if (!ws) {
		TU_CHECK(is_local(&pi), "v%d \"%s\": want local", version, show(h, (size_t)n));
		return;
	}
	TU_CHECK(!pi.local, "v%d: local", version);
	TU_CHECK(same(&pi.src, ws), "v%d \"%s\": source differs", version, show(h, (size_t)n));
	TU_CHECK(same(&pi.dst, wd), "v%d \"%s\": destination differs", version, show(h, (size_t)n));
}

static void test_round_trips(void)
{
	struct evfdd_sockaddr a4 = sa_in("192.0.2.1", 56324), b4 = sa_in("198.51.100.22", 443);
	struct evfdd_sockaddr a6 = sa_in("2001:db8::1", 0), b6 = sa_in("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
	struct evfdd_sockaddr l6 = sa_in("fe80::1", 22), z4 = sa_in("0.0.0.0", 0);
	struct evfdd_sockaddr p1 = sa_path("/run/evfdd/client.sock"), p2 = sa_path("/x");
	struct evfdd_sockaddr ab = sa_un("\0evfdd-abstract", 15), unnamed = sa_un("", 0), abw;
	char long_path[108];

	for (int v = 1; v <= 2; v++) {
		round_trip(v, &a4, &b4, &a4, &b4);
		round_trip(v, &z4, &z4, &z4, &z4);
		round_trip(v, &a6, &b6, &a6, &b6);
		round_trip(v, &l6, &a6, &l6, &a6);
		round_trip(v, NULL, NULL, NULL, NULL);
		round_trip(v, &a4, NULL, NULL, NULL);
		round_trip(v, NULL, &b6, NULL, NULL);
		round_trip(v, &a4, &b6, NULL, NULL);	/* different families */
		round_trip(v, &a4, &p1, NULL, NULL);
	}
	/* Unix: v1 has no way to say it (UNKNOWN); v2 carries the paths */
	round_trip(1, &p1, &p2, NULL, NULL);
	round_trip(2, &p1, &p2, &p1, &p2);
	round_trip(2, &unnamed, &p1, &unnamed, &p1);
	/* an abstract name comes back with all 108 bytes, NUL padding included, as the header carries it */
	{
		char padded[108] = "\0evfdd-abstract";

		abw = sa_un(padded, sizeof(padded));
	}
	round_trip(2, &ab, &unnamed, &abw, &unnamed);
	round_trip(2, &abw, &abw, &abw, &abw);
	/* a path filling sun_path, with no room for a NUL */
	memset(long_path, 'p', sizeof(long_path));
	long_path[0] = '/';
	{
		struct evfdd_sockaddr lp = sa_un(long_path, 108);

		round_trip(2, &lp, &p2, &lp, &p2);
	}
	/* a Unix address of a length that cannot be one is no address */
	{
		struct evfdd_sockaddr bad = p1;

		bad.len = 1;
		round_trip(2, &bad, &p1, NULL, NULL);
		bad = a4;
		bad.len = 8;
		round_trip(2, &bad, &b4, NULL, NULL);
	}
	TU_CHECK(evfdd_proxy_build(0, &a4, &b4, (unsigned char[256]){ 0 }, 256) == -EINVAL, "version 0");
	TU_CHECK(evfdd_proxy_build(3, NULL, NULL, (unsigned char[256]){ 0 }, 256) == -EINVAL, "version 3");
	printf("ok round trips: v1 and v2 x TCP4, TCP6, Unix, LOCAL; -ENOSPC at every short capacity\n");
}

/* ---- exact bytes --------------------------------------------------------------------------------------- */

static void expect_build(int version, const struct evfdd_sockaddr *s, const struct evfdd_sockaddr *d,
			 const void *want, size_t wlen)
{
	unsigned char h[EVFDD_PROXY_BUILD_MAX];
	int n = build(version, s, d, h);

	TU_CHECK((size_t)n == wlen && memcmp(h, want, wlen) == 0, "v%d: wrote \"%s\"", version, show(h, (size_t)n));
}

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

static void test_exact(void)
{
	struct evfdd_sockaddr a4 = sa_in("192.0.2.1", 56324), b4 = sa_in("198.51.100.22", 443);
	struct evfdd_sockaddr a6 = sa_in("2001:db8::1", 1), b6 = sa_in("2001:db8::2", 65535);
	struct evfdd_sockaddr m1 = sa_in("::ffff:192.0.2.1", 56324), m2 = sa_in("::ffff:198.51.100.22", 443);
	static const unsigned char v2_tcp4[] = V2SIG "\x21\x11\x00\x0c"
						     "\xc0\x00\x02\x01\xc6\x33\x64\x16\xdc\x04\x01\xbb";
	static const unsigned char v2_local[] = V2SIG "\x20\x00\x00\x00";
	struct evfdd_proxy_info pi;
	unsigned char h[EVFDD_PROXY_BUILD_MAX];
	int n;

	expect_build(1, &a4, &b4, "PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\n", 46);
	expect_build(1, &a6, &b6, "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", 44);
	expect_build(1, NULL, NULL, "PROXY UNKNOWN\r\n", 15);
	expect_build(2, &a4, &b4, v2_tcp4, sizeof(v2_tcp4) - 1);
	expect_build(2, NULL, NULL, v2_local, sizeof(v2_local) - 1);
	/* v2 TCP6: family 0x21, length 36, addresses then ports */
	n = build(2, &a6, &b6, h);
	TU_CHECK(n == 52 && h[12] == 0x21 && h[13] == 0x21 && h[14] == 0 && h[15] == 36, "v2 tcp6 head");
	TU_CHECK(memcmp(h + 16, &a6.u.in6.sin6_addr, 16) == 0 && memcmp(h + 32, &b6.u.in6.sin6_addr, 16) == 0 &&
		         h[48] == 0 && h[49] == 1 && h[50] == 0xff && h[51] == 0xff, "v2 tcp6 body");
	/* v2 Unix: family 0x31, length 216, NUL-padded paths */
	{
		struct evfdd_sockaddr p1 = sa_path("/run/a"), p2 = sa_path("/run/bb");

		n = build(2, &p1, &p2, h);
		TU_CHECK(n == 232 && h[13] == 0x31 && h[14] == 0 && h[15] == 216, "v2 unix head");
		TU_CHECK(memcmp(h + 16, "/run/a", 7) == 0 && memcmp(h + 124, "/run/bb", 8) == 0, "v2 unix paths");
		for (int i = 23; i < 124; i++)
			TU_CHECK(h[i] == 0, "padding at %d", i);
	}

	/* mapped addresses: both mapped, or mapped with IPv4, are written as IPv4 */
	expect_build(1, &m1, &m2, "PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\n", 46);
	expect_build(1, &a4, &m2, "PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\n", 46);
	expect_build(1, &m1, &b4, "PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\n", 46);
	expect_build(2, &m1, &m2, v2_tcp4, sizeof(v2_tcp4) - 1);
	expect_build(2, &a4, &m2, v2_tcp4, sizeof(v2_tcp4) - 1);
	round_trip(1, &m1, &m2, &a4, &b4);
	round_trip(2, &m1, &m2, &a4, &b4);
	/* one mapped, the other real IPv6: both stay IPv6 */
	expect_build(1, &m1, &b6, "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 65535\r\n", 53);
	round_trip(2, &m1, &b6, &m1, &b6);
	/* mapped with a real IPv6 on one side and IPv4 on the other: different families */
	round_trip(1, &b6, &b4, NULL, NULL);
	/* parsing keeps what was sent: TCP6 with mapped addresses is AF_INET6 */
	{
		static const char t[] = "PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.22 56324 443\r\n";

		check_valid(t, sizeof(t) - 1, &pi);
		TU_CHECK(!pi.local && same(&pi.src, &m1) && same(&pi.dst, &m2), "mapped kept");
	}
	printf("ok exact bytes, IPv4-mapped IPv6 written as IPv4 and parsed as sent\n");
}

/* ---- valid headers that evfdd does not write ------------------------------------------------------------ */

/* Castagnoli CRC-32 (CRC32C), as PP2_TYPE_CRC32C carries it. */
static uint32_t crc32c(const unsigned char *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;

	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return ~c;
}

/* Append a TLV to the v2 header @h of *@n bytes; fixes the length field. */
static void tlv(unsigned char *h, size_t *n, unsigned char type, const void *v, size_t vlen)
{
	h[*n] = type;
	h[*n + 1] = (unsigned char)(vlen >> 8);
	h[*n + 2] = (unsigned char)vlen;
	memcpy(h + *n + 3, v, vlen);
	*n += 3 + vlen;
	h[14] = (unsigned char)((*n - 16) >> 8);
	h[15] = (unsigned char)(*n - 16);
}

static void test_valid_variants(void)
{
	static const char *const v1[] = {
		"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
		"PROXY TCP4 10.0.0.1 10.0.0.2 1 9\r\n",
		"PROXY TCP6 :: ::1 10 100\r\n",
		"PROXY TCP6 1:: ::2 1000 10000\r\n",
		"PROXY TCP6 2001:DB8::A 2001:db8:0:0:0:0:0:b 443 443\r\n",
		"PROXY TCP6 0001:0002:0003:0004:0005:0006:0007:0008 1:2:3:4:5:6:7:: 1 2\r\n",
		"PROXY TCP6 1:2:3:4:5:6:1.2.3.4 ::1.2.3.4 1 2\r\n",
		"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
		"PROXY UNKNOWN\r\n",
		"PROXY UNKNOWN \r\n",
		"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
		"PROXY UNKNOWN \x01\xff\r\r\n",
		/* the spec's worst case, 107 bytes */
		"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
	};
	unsigned char h[EVFDD_PROXY_MAX + 64];
	struct evfdd_proxy_info pi;
	size_t n;

	for (size_t i = 0; i < sizeof(v1) / sizeof(v1[0]); i++) {
		check_valid(v1[i], strlen(v1[i]), &pi);
		TU_CHECK(pi.local == (strncmp(v1[i], "PROXY UNKNOWN", 13) == 0), "%s", v1[i]);
	}
	TU_CHECK(strlen(v1[12]) == 107, "the worst case is 107 bytes");
	check_valid(v1[1], strlen(v1[1]), &pi);
	{
		struct evfdd_sockaddr s = sa_in("10.0.0.1", 1), d = sa_in("10.0.0.2", 9);

		TU_CHECK(same(&pi.src, &s) && same(&pi.dst, &d), "v1 addresses");
	}

	/* v2 TCP4 with the TLVs real senders add: ALPN, AUTHORITY, NOOP, UNIQUE_ID, SSL with sub-TLVs,
	 * AWS's VPC endpoint (0xEA, subtype 1), CRC32C over the whole header (computed with the field zero) */
	memcpy(h, V2SIG "\x21\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x50", 28);
	n = 28;
	tlv(h, &n, 0x01, "h2", 2);
	tlv(h, &n, 0x02, "www.example.com", 15);
	tlv(h, &n, 0x04, "", 0);
	tlv(h, &n, 0x05, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
	tlv(h, &n, 0x20, "\x07\x00\x00\x00\x00" "\x21\x00\x07TLSv1.3" "\x23\x00\x16TLS_AES_128_GCM_SHA256", 40);
	tlv(h, &n, 0xEA, "\x01vpce-08d2bf15fac5001c9", 23);
	tlv(h, &n, 0x03, "\0\0\0\0", 4);
	{
		uint32_t c = crc32c(h, n);

		h[n - 4] = (unsigned char)(c >> 24), h[n - 3] = (unsigned char)(c >> 16);
		h[n - 2] = (unsigned char)(c >> 8), h[n - 1] = (unsigned char)c;
	}
	check_valid(h, n, &pi);
	{
		struct evfdd_sockaddr s = sa_in("10.0.0.1", 12345), d = sa_in("10.0.0.2", 80);

		TU_CHECK(!pi.local && same(&pi.src, &s) && same(&pi.dst, &d), "v2 with TLVs");
	}
	/* AWS NLB style: TCP6 with only the 0xEA TLV */
	memcpy(h, V2SIG "\x21\x21\x00\x24", 16);
	memset(h + 16, 0, 36);
	h[16] = 0x20, h[17] = 0x01, h[32] = 0x20, h[33] = 0x01, h[31] = 1, h[47] = 2, h[49] = 80, h[51] = 81;
	n = 52;
	tlv(h, &n, 0xEA, "\x01vpce-0123456789abcdef0", 23);
	check_valid(h, n, &pi);
	TU_CHECK(!pi.local && pi.src.u.sa.sa_family == AF_INET6 && ntohs(pi.src.u.in6.sin6_port) == 80 &&
		         ntohs(pi.dst.u.in6.sin6_port) == 81, "v2 tcp6");
	/* LOCAL with TLVs (a health check through a load balancer) */
	memcpy(h, V2SIG "\x20\x00\x00\x00", 16);
	n = 16;
	tlv(h, &n, 0x04, "\0\0\0", 3);
	check_valid(h, n, &pi);
	TU_CHECK(is_local(&pi), "LOCAL with a TLV");
	/* LOCAL with addresses: skipped, not used */
	memcpy(h, V2SIG "\x20\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x50", 28);
	check_valid(h, 28, &pi);
	TU_CHECK(is_local(&pi), "LOCAL TCP4");
	/* PROXY with UNSPEC: unknown protocol, no address */
	memcpy(h, V2SIG "\x21\x00\x00\x00", 16);
	check_valid(h, 16, &pi);
	TU_CHECK(is_local(&pi), "PROXY UNSPEC");
	/* Unix: garbage after the path's NUL is the sender's uninitialised sun_path; an all-zero block is an
	 * unnamed socket; an abstract name keeps its 108 bytes */
	memcpy(h, V2SIG "\x21\x31\x00\xd8", 16);
	memset(h + 16, 0, 216);
	memcpy(h + 16, "/run/a.sock\0garbage", 19);
	n = 232;
	tlv(h, &n, 0x01, "http/1.1", 8);
	check_valid(h, n, &pi);
	{
		struct evfdd_sockaddr s = sa_path("/run/a.sock");

		TU_CHECK(!pi.local && same(&pi.src, &s), "unix path");
		TU_CHECK(pi.dst.u.un.sun_family == AF_UNIX && pi.dst.len == UN_OFF, "unnamed");
	}
	memset(h + 16, 0, 216);
	memcpy(h + 124, "\0abstract\0name", 14);
	check_valid(h, n, &pi);
	TU_CHECK(pi.dst.len == UN_OFF + 108 && memcmp(pi.dst.u.un.sun_path, "\0abstract\0name", 14) == 0,
	         "abstract");

	/* the largest header: exactly EVFDD_PROXY_MAX bytes */
	memcpy(h, V2SIG "\x21\x11\x3f\xf0", 16);
	memset(h + 16, 0, 12);
	h[28] = 0xEE, h[29] = (EVFDD_PROXY_MAX - 31) >> 8, h[30] = (EVFDD_PROXY_MAX - 31) & 0xff;
	memset(h + 31, 'v', EVFDD_PROXY_MAX - 31);
	TU_CHECK(parse_n(h, EVFDD_PROXY_MAX, &pi) == EVFDD_PROXY_MAX && !pi.local, "largest");
	for (size_t k = 0; k < EVFDD_PROXY_MAX; k += 97)
		TU_CHECK(parse_n(h, k, NULL) == 0, "largest, prefix %zu", k);
	printf("ok valid headers: v1 edge cases, v2 TLVs (ALPN, SSL, AWS 0xEA, CRC32C), LOCAL, UNSPEC, Unix, "
	       "%d bytes\n", EVFDD_PROXY_MAX);
}

/* ---- malformed ------------------------------------------------------------------------------------------ */

struct bad {
	const char *good;	/* the longest prefix that could still become a header */
	const char *rest;	/* its first byte makes it impossible */
	size_t restlen;		/* 0: strlen(rest) */
};

static void test_malformed_v1(void)
{
	static const struct bad cases[] = {
		{ "", "GET / HTTP/1.1\r\n", 0 },
		{ "", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0 },
		{ "", "\0", 1 },
		{ "PROXY", "\r\n", 0 },
		{ "PROXY", "\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY ", " TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY ", "tcp4 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP", "5 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP", "\r\n", 0 },
		{ "PROXY TCP4", "\r\n", 0 },
		{ "PROXY TCP4", "\t1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 ", " 1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 ", ":: ::1 1 2\r\n", 0 },
		{ "PROXY TCP4 ", "-1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 0", "1.2.3.4 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 1.2.3.25", "6 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 1.2.3", " 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4", ".5 5.6.7.8 1 2\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4", "\0 5.6.7.8 1 2\r\n", 15 },
		{ "PROXY TCP4 1.2.3.4", "\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8", "\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 ", " 1 2\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 0", "80 443\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 ", "+80 443\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 6553", "6 443\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 9999", "9 443\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80", "\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 ", "\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 0", "443\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 443", " \r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 443", "\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 443", " x\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r", "\r\n", 0 },
		{ "PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r", " \n", 0 },
		{ "PROXY TCP6 1", ".2.3.4 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 fe80::1", "%eth0 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 1:2:3:4:5:6:7:8", ":9 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 1::", ":2 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 1::2:", ":3 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 :", "1 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 1234", "5:: ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 ::", "g ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 ::ffff:1.2.3.4", ":1 ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 ", "[::1] ::1 1 2\r\n", 0 },
		{ "PROXY TCP6 ::1 ::2 ", " 1 2\r\n", 0 },
		{ "PROXY TCP6 1:2:3:4:5:6:7:8 ::1 1 2\r", "\r\n", 0 },
		{ "PROXY UNKNOWN", "X\r\n", 0 },
		{ "PROXY UNKNOWN", "\n", 0 },
	};
	char buf[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct bad *c = &cases[i];
		size_t gl = strlen(c->good), rl = c->restlen == 0 ? strlen(c->rest) : c->restlen;

		memcpy(buf, c->good, gl);
		memcpy(buf + gl, c->rest, rl);
		check_bad_at(buf, gl + rl, gl + 1, -EBADMSG);
	}
	/* no CRLF within 107 bytes: refused at byte 107, not later */
	{
		char u[300];
		static const char big6[] = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
					   "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n";

		memset(u, 'x', sizeof(u));
		memcpy(u, "PROXY UNKNOWN ", 14);
		check_bad_at(u, sizeof(u), EVFDD_PROXY_V1_MAX, -EBADMSG);
		/* CRLF ending at byte 108 is one too many */
		u[106] = '\r', u[107] = '\n';
		check_bad_at(u, 108, EVFDD_PROXY_V1_MAX, -EBADMSG);
		u[105] = '\r', u[106] = '\n';
		check_valid(u, 107, &(struct evfdd_proxy_info){ 0 });
		/* every field valid, but 116 bytes in all */
		check_bad_at(big6, sizeof(big6) - 1, EVFDD_PROXY_V1_MAX, -EBADMSG);
	}
	printf("ok %zu malformed v1 headers refused at their first impossible byte, 107-byte bound\n",
	       sizeof(cases) / sizeof(cases[0]) + 3);
}

static void test_malformed_v2(void)
{
	static const unsigned char ok4[] = V2SIG "\x21\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x50";
	static const unsigned char dgram[] = { 0x12, 0x22, 0x32 };
	static const unsigned char unassigned[] = { 0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x41, 0x33, 0xff };
	static const unsigned char vercmd[] = { 0x00, 0x01, 0x10, 0x11, 0x22, 0x2f, 0x31, 0xf1 };
	unsigned char h[EVFDD_PROXY_MAX + 64];
	int cases = 0;

	check_valid(ok4, sizeof(ok4) - 1, &(struct evfdd_proxy_info){ 0 });
	/* every signature byte */
	for (size_t i = 0; i < 12; i++) {
		for (int x = 1; x < 256; x <<= 1) {
			memcpy(h, ok4, 28);
			h[i] ^= (unsigned char)x;
			check_bad_at(h, 28, i + 1, -EBADMSG);
			cases++;
		}
	}
	for (size_t i = 0; i < sizeof(vercmd); i++, cases++) {
		memcpy(h, ok4, 28);
		h[12] = vercmd[i];
		check_bad_at(h, 28, 13, -EBADMSG);
	}
	for (size_t i = 0; i < sizeof(dgram); i++, cases++) {
		memcpy(h, ok4, 28);
		h[13] = dgram[i];
		check_bad_at(h, 28, 14, -EBADMSG);
		h[12] = 0x20;	/* LOCAL too: the family is still checked */
		check_bad_at(h, 28, 14, -EBADMSG);
	}
	for (size_t i = 0; i < sizeof(unassigned); i++, cases++) {
		memcpy(h, ok4, 28);
		h[13] = unassigned[i];
		check_bad_at(h, 28, 14, -EBADMSG);
	}
	/* lengths that do not cover the family's addresses, for PROXY and LOCAL */
	{
		static const struct {
			unsigned char fam;
			unsigned need;
		} f[] = { { 0x11, 12 }, { 0x21, 36 }, { 0x31, 216 } };

		for (size_t i = 0; i < 3; i++) {
			for (int cmd = 0x20; cmd <= 0x21; cmd++, cases++) {
				memset(h, 0, sizeof(h));
				memcpy(h, ok4, 12);
				h[12] = (unsigned char)cmd;
				h[13] = f[i].fam;
				h[15] = (unsigned char)(f[i].need - 1);
				check_bad_at(h, 16 + f[i].need, 16, -EBADMSG);
				h[15] = 0;
				check_bad_at(h, 16 + f[i].need, 16, -EBADMSG);
				h[15] = (unsigned char)f[i].need;
				check_valid(h, 16 + f[i].need, &(struct evfdd_proxy_info){ 0 });
			}
		}
	}
	/* TLVs: a tail too short for a TLV head (known from the length alone), a value running past the end,
	 * the second of two running past */
	for (unsigned tail = 1; tail <= 2; tail++, cases++) {
		memcpy(h, ok4, 28);
		memset(h + 28, 0x04, tail);
		h[15] = (unsigned char)(12 + tail);
		check_bad_at(h, 28 + tail, 16, -EBADMSG);
	}
	memcpy(h, ok4, 28);
	memcpy(h + 28, "\x01\x00\x05h2xx", 7);
	h[15] = 12 + 7;
	check_bad_at(h, 35, 31, -EBADMSG);
	memcpy(h + 28, "\x01\x00\x02h2\x02\x00\x04" "abc", 11);
	h[15] = 12 + 11;
	check_bad_at(h, 39, 36, -EBADMSG);
	/* one byte after the second TLV: too short for a head, known once the second's length is in */
	memcpy(h + 28, "\x01\x00\x02h2\x02\x00\x01" "a\x04", 10);
	h[15] = 12 + 10;
	check_bad_at(h, 38, 36, -EBADMSG);
	memcpy(h + 28, "\x01\x00\x02h2\x02\x00\x01" "a\x04\x00\x00", 12);
	h[15] = 12 + 12;
	check_valid(h, 40, &(struct evfdd_proxy_info){ 0 });
	/* a TLV list on UNSPEC that runs past the end */
	memcpy(h, V2SIG "\x20\x00\x00\x04\x04\x00\x02x", 20);
	check_bad_at(h, 20, 19, -EBADMSG);
	cases += 6;

	/* oversized: known from the length field */
	memcpy(h, ok4, 16);
	h[14] = 0xff, h[15] = 0xff;
	check_bad_at(h, 16, 16, -EMSGSIZE);
	h[14] = (EVFDD_PROXY_MAX - 15) >> 8, h[15] = (EVFDD_PROXY_MAX - 15) & 0xff;
	check_bad_at(h, 16, 16, -EMSGSIZE);
	cases += 2;
	printf("ok %d malformed v2 headers: signature, version, command, dgram and unassigned families, "
	       "short lengths, broken TLVs, oversized\n", cases);
}

/* ---- 10 MB of junk -------------------------------------------------------------------------------------- */

#define JUNK (10u << 20)

static double elapsed_ms(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void test_junk(void)
{
	/* Only the first @readable bytes of the 10 MB can be read: a parse that looked further would crash. */
	const size_t readable = 5 * 4096;
	struct {
		const char *name;
		const void *head;
		size_t headlen;
		unsigned char fill;
		int want;
	} cases[] = {
		{ "HTTP", "GET / HTTP/1.1\r\nHost: x\r\n", 25, 'A', -EBADMSG },
		{ "binary", "\xff", 1, 0xff, -EBADMSG },
		{ "NULs", "", 0, 0, -EBADMSG },
		{ "v1 UNKNOWN without CRLF", "PROXY UNKNOWN ", 14, 'x', -EBADMSG },
		{ "v1 endless port", "PROXY TCP4 1.2.3.4 5.6.7.8 1", 28, '1', -EBADMSG },
		{ "v1 endless address", "PROXY TCP6 ", 11, ':', -EBADMSG },
		{ "v2 endless", V2SIG "\x21\x11\xff\xff", 16, 0, -EMSGSIZE },
		{ "v2 TLVs overrunning", V2SIG "\x21\x11\x3f\xf0", 16, 0xEA, -EBADMSG },
	};
	struct timespec t0;
	unsigned char *m = mmap(NULL, JUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *r;

	TU_CHECK(m != MAP_FAILED, "mmap");
	TU_CHECK(mprotect(m + readable, JUNK - readable, PROT_NONE) == 0, "mprotect");
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		memset(m, cases[i].fill, readable);
		memcpy(m, cases[i].head, cases[i].headlen);
		TU_CHECK(evfdd_proxy_parse(m, JUNK, NULL) == cases[i].want, "%s", cases[i].name);
	}
	munmap(m, JUNK);
	/* 10 MB of pseudo-random bytes, all readable, behind each possible first byte */
	r = malloc(JUNK);
	TU_CHECK(r, "malloc");
	srand(14);
	for (size_t i = 0; i < JUNK; i++)
		r[i] = (unsigned char)rand();
	for (int first = 0; first < 256; first++) {
		int rc;

		r[0] = (unsigned char)first;
		rc = evfdd_proxy_parse(r, JUNK, NULL);
		TU_CHECK(rc == -EBADMSG, "random after 0x%02x: %d", first, rc);
	}
	memcpy(r, "PROXY ", 6);
	TU_CHECK(evfdd_proxy_parse(r, JUNK, NULL) == -EBADMSG, "random after PROXY");
	memcpy(r, V2SIG, 12);
	TU_CHECK(evfdd_proxy_parse(r, JUNK, NULL) < 0, "random after the v2 signature");
	free(r);
	TU_CHECK(elapsed_ms(&t0) < 5000, "junk took %.0f ms", elapsed_ms(&t0));
	printf("ok 10 MB of junk refused after a few bytes (%zu cases, the rest unreadable)\n",
	       sizeof(cases) / sizeof(cases[0]) + 258);
}

/* ---- every textual form of an address ------------------------------------------------------------------ */

/* A random IPv6 address in a random valid form: groups with or without leading zeros, either case, a "::" over
 * any run of zero groups (not only the longest), a dotted-quad tail. */
static void random_v6_text(char *t, size_t cap)
{
	unsigned g[8];
	int from = -1, to = -1, groups = rand() % 4 == 0 ? 6 : 8;	/* 6: a dotted quad makes the last two */
	size_t o = 0;

	for (int i = 0; i < 8; i++)
		g[i] = rand() % 3 == 0 ? 0 : (unsigned)(rand() % 3 == 0 ? rand() % 16 : rand() % 65536);
	if (rand() % 3 != 0) {	/* compress a run of at least one group, set to zero */
		from = rand() % groups;
		to = from + 1 + rand() % (groups - from);
		for (int i = from; i < to; i++)
			g[i] = 0;
	}
	for (int i = 0; i < groups; i++) {
		if (i == from) {
			o += (size_t)snprintf(t + o, cap - o, "::");
			i = to - 1;
			continue;
		}
		if (i > 0 && i != to)
			t[o++] = ':';
		o += (size_t)snprintf(t + o, cap - o, rand() % 2 ? "%x" : rand() % 2 ? "%04x" : "%X", g[i]);
	}
	if (groups == 6) {
		if (o > 0 && t[o - 1] != ':')
			t[o++] = ':';
		o += (size_t)snprintf(t + o, cap - o, "%d.%d.%d.%d", rand() % 256, rand() % 10, rand() % 100,
				      rand() % 256);
	}
	t[o] = '\0';
}

static void test_address_forms(void)
{
	struct evfdd_proxy_info pi;
	char a[64], b[64], line[256];
	unsigned char bin[16];
	int n, checked = 0;

	srand(6);
	for (int i = 0; i < 3000; i++) {
		random_v6_text(a, sizeof(a));
		random_v6_text(b, sizeof(b));
		TU_CHECK(inet_pton(AF_INET6, a, bin) == 1 && inet_pton(AF_INET6, b, bin) == 1, "%s %s", a, b);
		n = snprintf(line, sizeof(line), "PROXY TCP6 %s %s %d %d\r\n", a, b, rand() % 65536, rand() % 10);
		if (n > EVFDD_PROXY_V1_MAX)
			continue;
		check_valid(line, (size_t)n, &pi);
		TU_CHECK(!pi.local && pi.src.u.sa.sa_family == AF_INET6, "%s", line);
		checked++;
	}
	for (int i = 0; i < 1000; i++, checked++) {
		snprintf(a, sizeof(a), "%d.%d.%d.%d", rand() % 256, rand() % 10, rand() % 100, rand() % 256);
		n = snprintf(line, sizeof(line), "PROXY TCP4 %s %d.0.%d.9 %d %d\r\n", a, rand() % 256, rand() % 256,
			     rand() % 65536, rand() % 10);
		check_valid(line, (size_t)n, &pi);
	}
	printf("ok %d v1 headers with addresses in random valid forms: every prefix read on\n", checked);
}

/* ---- mutations: the answers for the prefixes of any byte string agree ----------------------------------- */

/* For every prefix length k of @b: 0 until an answer, then that answer for every longer prefix (or, after a
 * header of length h, h). */
static void check_consistent(const unsigned char *b, size_t n)
{
	int first = 0;
	size_t at = 0;

	for (size_t k = 0; k <= n; k++) {
		int r = evfdd_proxy_parse(b, k, NULL);

		if (first == 0) {
			TU_CHECK(r == 0 || r < 0 || (size_t)r == k, "\"%s\": prefix %zu gave %d", show(b, n), k, r);
			first = r, at = k;
		} else {
			TU_CHECK(r == first, "\"%s\": prefix %zu gave %d, prefix %zu %d", show(b, n), k, r, at, first);
		}
		TU_CHECK(r == 0 || r == -EBADMSG || r == -EMSGSIZE || r > 0, "%d", r);
	}
}

static void test_mutations(void)
{
#define SEED(s) { s, sizeof(s) - 1 }
	static const struct { const char *s; size_t n; } seeds[] = {
		SEED("PROXY TCP4 192.0.2.1 198.51.100.22 56324 443\r\nGET /"),
		SEED("PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n"),
		SEED("PROXY UNKNOWN 1 2 3\r\n\r\n"),
		SEED(V2SIG "\x21\x11\x00\x14\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x50"
			   "\x01\x00\x02h2\x04\x00\x00xx"),
		SEED(V2SIG "\x20\x31\x00\xd8/a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
	};
#undef SEED
	unsigned char b[128];
	unsigned long iters = 20000;

	srand(1414);
	for (unsigned long i = 0; i < iters; i++) {
		size_t s = (size_t)rand() % (sizeof(seeds) / sizeof(seeds[0])), n = seeds[s].n;

		memcpy(b, seeds[s].s, n);
		for (int m = rand() % 3 + 1; m > 0; m--) {
			size_t at = (size_t)rand() % n;

			switch (rand() % 4) {
			case 0:
				b[at] = (unsigned char)rand();
				break;
			case 1:
				b[at] = "0123456789abcdef:. \r\nPROXYTCP46UNKWf"[rand() % 37];
				break;
			case 2:
				b[at] ^= (unsigned char)(1u << (rand() % 8));
				break;
			default:	/* delete a byte */
				memmove(b + at, b + at + 1, n - at - 1);
				n--;
				break;
			}
		}
		check_consistent(b, n);
	}
	printf("ok %lu mutated headers: every prefix's answer agrees with the longer ones\n", iters);
}

int main(void)
{
	test_round_trips();
	test_exact();
	test_valid_variants();
	test_malformed_v1();
	test_malformed_v2();
	test_address_forms();
	test_junk();
	test_mutations();
	printf("test-proxyproto: all passed (%lu parses)\n", nparses);
	return 0;
}
