/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Client addresses (daemon/addr.c): unmapping, the text logs show (Unix names with hostile bytes, every
 * truncation), CIDR prefixes with every error's exact message, matching across families and mapped
 * addresses, and the per-source key.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include "../daemon/addr.h"
#include "testutil.h"

static struct evfdd_sockaddr inet(const char *ip, unsigned port)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	if (strchr(ip, ':')) {
		a.u.in6.sin6_family = AF_INET6;
		a.u.in6.sin6_port = htons((uint16_t)port);
		TU_CHECK(inet_pton(AF_INET6, ip, &a.u.in6.sin6_addr) == 1, "%s", ip);
		a.len = sizeof(a.u.in6);
	} else {
		a.u.in.sin_family = AF_INET;
		a.u.in.sin_port = htons((uint16_t)port);
		TU_CHECK(inet_pton(AF_INET, ip, &a.u.in.sin_addr) == 1, "%s", ip);
		a.len = sizeof(a.u.in);
	}
	return a;
}

/* A Unix address with @n bytes of name (as the kernel reports it: the length decides). */
static struct evfdd_sockaddr unix_addr(const char *name, size_t n)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	a.u.un.sun_family = AF_UNIX;
	memcpy(a.u.un.sun_path, name, n);
	a.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	return a;
}

static void expect_format_at(int line, const struct evfdd_sockaddr *a, const char *want)
{
	char out[EVFDD_ADDR_TEXT_MAX];

	TU_CHECK(evfdd_addr_format(a, out, sizeof(out)) == out, "line %d: returns out", line);
	TU_CHECK(strcmp(out, want) == 0, "line %d: \"%s\", want \"%s\"", line, out, want);
}
#define expect_format(a, want) expect_format_at(__LINE__, a, want)

static void test_unmap(void)
{
	struct evfdd_sockaddr a = inet("::ffff:192.0.2.7", 443), b;

	evfdd_addr_unmap(&a);
	TU_CHECK(a.u.sa.sa_family == AF_INET && a.len == sizeof(struct sockaddr_in), "family %d", a.u.sa.sa_family);
	TU_CHECK(ntohs(a.u.in.sin_port) == 443 && a.u.in.sin_addr.s_addr == htonl(0xc0000207), "address");
	b = a;
	evfdd_addr_unmap(&a);				/* IPv4 stays */
	TU_CHECK(memcmp(&a, &b, sizeof(a)) == 0, "IPv4 changed");
	static const char *const kept[] = { "::1", "2001:db8::1", "::192.0.2.7", "::ffff:0:192.0.2.7", "64:ff9b::1" };
	for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
		a = b = inet(kept[i], 80);
		evfdd_addr_unmap(&a);
		TU_CHECK(memcmp(&a, &b, sizeof(a)) == 0, "%s changed", kept[i]);
	}
	a = b = unix_addr("/run/x", 7);
	evfdd_addr_unmap(&a);
	TU_CHECK(memcmp(&a, &b, sizeof(a)) == 0, "Unix changed");
	printf("ok - unmap: ::ffff:a.b.c.d only, port kept\n");
}

static void test_format(void)
{
	struct evfdd_sockaddr a;
	char out[EVFDD_ADDR_TEXT_MAX], big[200];

	a = inet("1.2.3.4", 80);
	expect_format(&a, "1.2.3.4:80");
	a = inet("0.0.0.0", 0);
	expect_format(&a, "0.0.0.0:0");
	a = inet("2001:db8::1", 443);
	expect_format(&a, "[2001:db8::1]:443");
	a = inet("::ffff:10.0.0.1", 65535);
	expect_format(&a, "[::ffff:10.0.0.1]:65535");
	a = inet("fe80::1", 22);
	a.u.in6.sin6_scope_id = 2;
	expect_format(&a, "[fe80::1%2]:22");

	a = unix_addr("/run/evfdd/web.sock", 20);	/* with its NUL */
	expect_format(&a, "/run/evfdd/web.sock");
	a = unix_addr("/run/evfdd/web.sock", 19);	/* without */
	expect_format(&a, "/run/evfdd/web.sock");
	a = unix_addr("", 0);
	expect_format(&a, "unix");
	a = unix_addr("\0evfdd-test", 11);
	expect_format(&a, "@evfdd-test");
	a = unix_addr("\0", 1);
	expect_format(&a, "@");
	a = unix_addr("\0a\0b\nc\\d\x7f\xff", 10);	/* NULs, a newline, a backslash, DEL, a high byte */
	expect_format(&a, "@a\\x00b\\x0ac\\x5cd\\x7f\\xff");
	a = unix_addr("/tmp/a\nb", 9);
	expect_format(&a, "/tmp/a\\x0ab");
	/* a full 108-byte path without a NUL: the length, not a terminator, bounds it */
	memset(big, 'p', sizeof(big));
	big[0] = '/';
	a = unix_addr(big, sizeof(a.u.un.sun_path));
	evfdd_addr_format(&a, out, sizeof(out));
	TU_CHECK(strlen(out) == sizeof(a.u.un.sun_path) && out[0] == '/', "%zu", strlen(out));
	a.len = sizeof(a.u);				/* a bogus length past sun_path */
	evfdd_addr_format(&a, out, sizeof(out));
	TU_CHECK(strlen(out) == sizeof(a.u.un.sun_path), "%zu", strlen(out));
	/* an abstract name of 107 unprintable bytes: 429 bytes of text, truncated to the buffer */
	memset(big, 0x01, sizeof(big));
	big[0] = '\0';
	a = unix_addr(big, sizeof(a.u.un.sun_path));
	evfdd_addr_format(&a, out, sizeof(out));
	TU_CHECK(strlen(out) == sizeof(out) - 1 && strncmp(out, "@\\x01\\x01", 9) == 0, "%zu", strlen(out));

	memset(&a, 0, sizeof(a));
	a.u.sa.sa_family = AF_NETLINK;
	expect_format(&a, "family 16");

	/* every truncation: NUL-terminated, a prefix of the whole, nothing written past cap */
	a = inet("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", 65535);
	const char *whole = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535";
	for (size_t cap = 1; cap <= strlen(whole) + 2; cap++) {
		memset(out, '#', sizeof(out));
		evfdd_addr_format(&a, out, cap);
		TU_CHECK(strlen(out) == (cap - 1 < strlen(whole) ? cap - 1 : strlen(whole)), "cap %zu: %s", cap, out);
		TU_CHECK(strncmp(out, whole, strlen(out)) == 0 && out[cap] == '#', "cap %zu", cap);
	}
	a = unix_addr("\0\x01\x02", 3);
	for (size_t cap = 1; cap <= 12; cap++) {
		memset(out, '#', sizeof(out));
		evfdd_addr_format(&a, out, cap);
		TU_CHECK(strlen(out) < cap && out[cap] == '#', "cap %zu: %s", cap, out);
		TU_CHECK(strncmp(out, "@\\x01\\x02", strlen(out)) == 0, "cap %zu: %s", cap, out);
	}
	out[0] = '#';
	evfdd_addr_format(&a, out, 0);
	TU_CHECK(out[0] == '#', "cap 0 wrote");
	printf("ok - format: IPv4, IPv6 with scope, mapped, Unix paths, unnamed, abstract, escapes, truncation\n");
}

static void expect_cidr_at(int line, const char *text, sa_family_t family, const char *addr, unsigned prefix)
{
	struct evfdd_cidr c;
	unsigned char want[16] = { 0 };
	char err[256] = "";

	TU_CHECK(evfdd_cidr_parse(text, &c, err, sizeof(err)) == 0, "line %d: \"%s\": %s", line, text, err);
	TU_CHECK(inet_pton(family, addr, want) == 1, "line %d", line);
	TU_CHECK(c.family == family && c.prefix == prefix && memcmp(c.bytes, want, 16) == 0,
	         "line %d: \"%s\": family %d prefix %u", line, text, c.family, c.prefix);
}
#define expect_cidr(text, family, addr, prefix) expect_cidr_at(__LINE__, text, family, addr, prefix)

static void expect_cidr_error_at(int line, const char *text, const char *want)
{
	struct evfdd_cidr c;
	char err[512] = "";

	memset(&c, 0x5a, sizeof(c));
	TU_CHECK(evfdd_cidr_parse(text, &c, err, sizeof(err)) == -EINVAL, "line %d: \"%s\" accepted", line, text);
	TU_CHECK(strcmp(err, want) == 0, "line %d: \"%s\"\n  want \"%s\"", line, err, want);
	TU_CHECK(c.prefix == 0x5a, "line %d: @out written on error", line);
}
#define expect_cidr_error(text, want) expect_cidr_error_at(__LINE__, text, want)

static void test_cidr_parse(void)
{
	char err[8];
	struct evfdd_cidr c;

	expect_cidr("10.0.0.0/8", AF_INET, "10.0.0.0", 8);
	expect_cidr("192.0.2.7", AF_INET, "192.0.2.7", 32);
	expect_cidr("192.0.2.7/32", AF_INET, "192.0.2.7", 32);
	expect_cidr("0.0.0.0/0", AF_INET, "0.0.0.0", 0);
	expect_cidr("172.16.0.0/12", AF_INET, "172.16.0.0", 12);
	expect_cidr("2001:db8::/32", AF_INET6, "2001:db8::", 32);
	expect_cidr("::1", AF_INET6, "::1", 128);
	expect_cidr("::/0", AF_INET6, "::", 0);
	expect_cidr("fe80::/10", AF_INET6, "fe80::", 10);
	expect_cidr("2001:DB8::/32", AF_INET6, "2001:db8::", 32);
	/* mapped prefixes of /96 and more become IPv4; shorter ones stay IPv6 (they cover more than IPv4) */
	expect_cidr("::ffff:10.0.0.0/104", AF_INET, "10.0.0.0", 8);
	expect_cidr("::ffff:192.0.2.7", AF_INET, "192.0.2.7", 32);
	expect_cidr("::ffff:0.0.0.0/96", AF_INET, "0.0.0.0", 0);
	expect_cidr("::fffe:0:0/95", AF_INET6, "::fffe:0:0", 95);

	expect_cidr_error("10.1.2.3/8", "\"10.1.2.3/8\" has bits set past /8; did you mean 10.0.0.0/8?");
	expect_cidr_error("192.168.1.1/24", "\"192.168.1.1/24\" has bits set past /24; did you mean 192.168.1.0/24?");
	expect_cidr_error("2001:db8::1/32", "\"2001:db8::1/32\" has bits set past /32; did you mean 2001:db8::/32?");
	expect_cidr_error("10.0.0.1/0", "\"10.0.0.1/0\" has bits set past /0; did you mean 0.0.0.0/0?");
	expect_cidr_error("::ffff:10.1.2.3/104",
			  "\"::ffff:10.1.2.3/104\" has bits set past /104; did you mean ::ffff:10.0.0.0/104?");
	static const char *const bad_addr[] = { "10.0.0", "10.0.0.256", "010.0.0.1", "1.2.3.4.5", " 10.0.0.0",
						"10.0.0.0 ", "[::1]", "::1%eth0", "fe80::1%1/64", "example.com", "/8",
						"1.2.3.4:80", "::g", "2001:db8:::1" };
	for (size_t i = 0; i < sizeof(bad_addr) / sizeof(bad_addr[0]); i++) {
		char want[256];

		snprintf(want, sizeof(want), "\"%s\" is not an IPv4 or IPv6 address or prefix; write e.g. "
			 "10.0.0.0/8 or 2001:db8::/32", bad_addr[i]);
		expect_cidr_error(bad_addr[i], want);
	}
	static const char *const bad_v4_prefix[] = { "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08", "10.0.0.0/+8",
						     "10.0.0.0/-1", "10.0.0.0/8 ", "10.0.0.0/8/8", "10.0.0.0/0x8",
						     "10.0.0.0/4294967304" };
	for (size_t i = 0; i < sizeof(bad_v4_prefix) / sizeof(bad_v4_prefix[0]); i++) {
		char want[256];

		snprintf(want, sizeof(want), "\"%s\": the prefix length after '/' must be a number from 0 to 32",
			 bad_v4_prefix[i]);
		expect_cidr_error(bad_v4_prefix[i], want);
	}
	expect_cidr_error("::/129", "\"::/129\": the prefix length after '/' must be a number from 0 to 128");
	expect_cidr_error("", "an empty address; write an address or a prefix such as 10.0.0.0/8");
	expect_cidr_error("10.0.0.\n0", "an address or prefix has only printable characters; write e.g. "
			  "10.0.0.0/8 or 2001:db8::/32");
	TU_CHECK(evfdd_cidr_parse(NULL, &c, NULL, 0) == -EINVAL, "NULL");
	TU_CHECK(evfdd_cidr_parse("x", &c, err, sizeof(err)) == -EINVAL && strlen(err) == 7, "truncated message");
	TU_CHECK(evfdd_cidr_parse("x", &c, NULL, 0) == -EINVAL, "no message buffer");
	printf("ok - cidr_parse: prefixes, defaults, mapped, host bits, every error's message\n");
}

static struct evfdd_cidr cidr(const char *text)
{
	struct evfdd_cidr c;

	TU_CHECK(evfdd_cidr_parse(text, &c, NULL, 0) == 0, "%s", text);
	return c;
}

static void test_cidr_match(void)
{
	struct evfdd_cidr list[4] = { cidr("10.0.0.0/8"), cidr("192.0.2.7"), cidr("2001:db8::/33"),
				      cidr("::ffff:198.51.100.0/120") };
	struct evfdd_cidr all[2] = { cidr("0.0.0.0/0"), cidr("::/0") };
	struct evfdd_sockaddr a;
	static const struct {
		const char *ip;
		bool in;
	} cases[] = {
		{ "10.0.0.0", true }, { "10.255.255.255", true }, { "11.0.0.0", false }, { "9.255.255.255", false },
		{ "::ffff:10.1.2.3", true }, { "192.0.2.7", true }, { "192.0.2.6", false },
		{ "::ffff:192.0.2.7", true }, { "2001:db8::1", true }, { "2001:db8:7fff:ffff::1", true },
		{ "2001:db8:8000::", false }, { "2001:db9::", false }, { "198.51.100.200", true },
		{ "198.51.101.0", false }, { "::ffff:198.51.100.1", true },
		{ "::10.0.0.1", false },		/* IPv4-compatible, not mapped: IPv6 */
		{ "::1", false }, { "127.0.0.1", false },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		a = inet(cases[i].ip, 1234);
		TU_CHECK(evfdd_cidr_match(list, 4, &a) == cases[i].in, "%s", cases[i].ip);
	}
	a = inet("10.1.1.1", 1);
	TU_CHECK(!evfdd_cidr_match(list, 0, &a), "empty list");
	TU_CHECK(!evfdd_cidr_match(list + 1, 3, &a), "list without 10/8");
	/* the families stay apart: ::/0 is IPv6 only, 0.0.0.0/0 takes mapped clients too */
	a = inet("::ffff:1.2.3.4", 1);
	TU_CHECK(evfdd_cidr_match(all, 1, &a) && !evfdd_cidr_match(all + 1, 1, &a), "mapped vs ::/0");
	a = inet("2001::1", 1);
	TU_CHECK(!evfdd_cidr_match(all, 1, &a) && evfdd_cidr_match(all + 1, 1, &a), "IPv6 vs 0.0.0.0/0");
	a = unix_addr("/run/x", 7);
	TU_CHECK(!evfdd_cidr_match(all, 2, &a), "Unix");
	/* every prefix length on both sides of its boundary */
	for (unsigned p = 1; p <= 32; p++) {
		char text[32];
		struct evfdd_cidr c;
		struct evfdd_sockaddr in = inet("0.0.0.0", 0), out = in;

		snprintf(text, sizeof(text), "128.0.0.0/%u", p);
		c = cidr(text);
		in.u.in.sin_addr.s_addr = htonl(0x80000000u | (p < 32 ? 0xffffffffu >> p : 0));
		out.u.in.sin_addr.s_addr = htonl(0x80000000u ^ (0x80000000u >> (p - 1)));
		TU_CHECK(evfdd_cidr_match(&c, 1, &in), "/%u: last address", p);
		TU_CHECK(!evfdd_cidr_match(&c, 1, &out), "/%u: last prefix bit flipped", p);
	}
	for (unsigned p = 1; p < 128; p++) {
		char text[64];
		struct evfdd_cidr c;
		struct evfdd_sockaddr in = inet("8000::", 0), out = in;

		snprintf(text, sizeof(text), "8000::/%u", p);
		c = cidr(text);
		for (unsigned bit = p; bit < 128; bit++)
			in.u.in6.sin6_addr.s6_addr[bit / 8] |= (unsigned char)(0x80 >> (bit % 8));
		out.u.in6.sin6_addr.s6_addr[p / 8] |= (unsigned char)(0x80 >> (p % 8));
		TU_CHECK(evfdd_cidr_match(&c, 1, &in), "/%u: last address", p);
		if (p > 1)
			TU_CHECK(evfdd_cidr_match(&c, 1, &out), "/%u: inside", p);
		out = inet("8000::", 0);
		out.u.in6.sin6_addr.s6_addr[(p - 1) / 8] ^= (unsigned char)(0x80 >> ((p - 1) % 8));
		TU_CHECK(!evfdd_cidr_match(&c, 1, &out), "/%u: last prefix bit flipped", p);
	}
	printf("ok - cidr_match: boundaries of every prefix length, mapped clients, families apart, Unix\n");
}

static void test_source_key(void)
{
	struct evfdd_source_key k1, k2;
	struct evfdd_sockaddr a, b;

	a = inet("192.0.2.7", 1);
	b = inet("::ffff:192.0.2.7", 2);
	TU_CHECK(evfdd_addr_source_key(&a, &k1) && evfdd_addr_source_key(&b, &k2), "IPv4");
	TU_CHECK(memcmp(&k1, &k2, sizeof(k1)) == 0, "mapped and IPv4 differ");
	TU_CHECK(memcmp(k1.b, "\x04\xc0\x00\x02\x07\0\0\0\0", 9) == 0, "layout");
	b = inet("192.0.2.8", 1);
	TU_CHECK(evfdd_addr_source_key(&b, &k2) && memcmp(&k1, &k2, sizeof(k1)) != 0, "/32");

	a = inet("2001:db8:1:2:aaaa::1", 1);
	b = inet("2001:db8:1:2:bbbb:cccc:dddd:eeee", 2);
	TU_CHECK(evfdd_addr_source_key(&a, &k1) && evfdd_addr_source_key(&b, &k2), "IPv6");
	TU_CHECK(memcmp(&k1, &k2, sizeof(k1)) == 0, "same /64 differs");
	TU_CHECK(memcmp(k1.b, "\x06\x20\x01\x0d\xb8\x00\x01\x00\x02", 9) == 0, "layout");
	b = inet("2001:db8:1:3::1", 1);
	TU_CHECK(evfdd_addr_source_key(&b, &k2) && memcmp(&k1, &k2, sizeof(k1)) != 0, "other /64");
	/* an IPv6 /64 that starts like an IPv4 key still differs by the tag */
	a = inet("c000:0207::", 1);
	b = inet("192.0.2.7", 1);
	TU_CHECK(evfdd_addr_source_key(&a, &k1) && evfdd_addr_source_key(&b, &k2) && memcmp(&k1, &k2, 9) != 0,
	         "tag");

	a = unix_addr("/run/x", 7);
	memset(&k1, 0xee, sizeof(k1));
	TU_CHECK(!evfdd_addr_source_key(&a, &k1), "Unix");
	TU_CHECK(memcmp(k1.b, "\0\0\0\0\0\0\0\0\0", 9) == 0, "Unix key not zeroed");
	printf("ok - source_key: IPv4 /32, IPv6 /64, mapped as IPv4, Unix none\n");
}

int main(void)
{
	test_unmap();
	test_format();
	test_cidr_parse();
	test_cidr_match();
	test_source_key();
	printf("test-addr: all passed\n");
	return 0;
}
