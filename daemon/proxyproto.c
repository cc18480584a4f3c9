/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The PROXY protocol, v1 and v2 (proxyproto.h). The parser answers for every prefix of a stream, so each step
 * below asks two questions of the bytes it has: can they still become the field they start, and, once the
 * field's delimiter is in, are they that field. Running out of bytes is "read more" (0), except past v1's
 * 107-byte bound, where it is the end.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "proxyproto.h"

#define V2_FIXED 16		/* signature, version and command, family, length */
#define UNIX_PATH 108		/* a v2 Unix address's path block */

_Static_assert(sizeof(((struct sockaddr_un *)NULL)->sun_path) == UNIX_PATH,
	       "v2 Unix addresses carry sun_path whole: they need Linux's 108 bytes");
_Static_assert(EVFDD_PROXY_BUILD_MAX == V2_FIXED + 2 * UNIX_PATH, "the longest header is v2 Unix");

static const unsigned char v2_sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

enum { V2_LOCAL = 0x0, V2_PROXY = 0x1 };
enum { V2_UNSPEC = 0x00, V2_TCP4 = 0x11, V2_TCP6 = 0x21, V2_UNIX = 0x31 };

/* ---- v1 --------------------------------------------------------------------------------------------- */

/* The longest address text each family's inet_pton reads: "255.255.255.255" and
 * "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255". */
#define V4_TEXT_MAX 15
#define V6_TEXT_MAX 45

/* What a step found in the bytes it had. */
enum step { STEP_BAD = -1, STEP_MORE = 0, STEP_DONE = 1 };

/* Whether @c may appear in an address of @family as text (inet_pton takes no sign, space, zone or NUL). */
static bool addr_char(int family, unsigned char c)
{
	if (c >= '0' && c <= '9')
		return true;
	if (c == '.')
		return true;
	return family == AF_INET6 && (c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'));
}

/*
 * Whether the @n bytes at @s (all addr_char) are an address of @family (@whole) or can still become one with
 * more bytes. Rather than a second grammar of "prefixes of an address", which would have to agree with
 * inet_pton's in every corner, try inet_pton on @s completed by each of a few suffixes: whatever a valid prefix
 * ends in (inside a hex group, after ':' or '::', inside or after an octet of a dotted quad), one of these
 * completes it, and no suffix can mend an invalid one, so inet_pton stays the only judge.
 */
static bool addr_text_ok(int family, const unsigned char *s, size_t n, bool whole, void *bin)
{
	static const char *const more[] = { "0", ".0", "0.0", ".0.0", "0.0.0", ".0.0.0", "0.0.0.0", ":", "::" };
	unsigned char scratch[sizeof(struct in6_addr)];
	char t[V6_TEXT_MAX + 16];

	if (n > (family == AF_INET ? V4_TEXT_MAX : V6_TEXT_MAX))
		return false;
	memcpy(t, s, n);
	t[n] = '\0';
	if (inet_pton(family, t, bin ? bin : scratch) == 1)
		return true;
	if (whole)
		return false;
	for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++) {
		strcpy(t + n, more[i]);
		if (inet_pton(family, t, scratch) == 1)
			return true;
	}
	return false;
}

/* The address of @family at *@pos, ended by a space; on STEP_DONE *@pos is past the space and @bin holds it. */
static enum step v1_addr(const unsigned char *buf, size_t n, size_t *pos, int family, void *bin)
{
	size_t i = *pos;

	while (i < n && buf[i] != ' ') {
		if (!addr_char(family, buf[i]))
			return STEP_BAD;
		i++;
	}
	if (i == n)
		return addr_text_ok(family, buf + *pos, i - *pos, false, NULL) ? STEP_MORE : STEP_BAD;
	if (i == *pos || !addr_text_ok(family, buf + *pos, i - *pos, true, bin))
		return STEP_BAD;
	*pos = i + 1;
	return STEP_DONE;
}

/* A port at *@pos ended by @delim: "0" or [1-9][0-9]* up to 65535. On STEP_DONE *@pos is past @delim. */
static enum step v1_port(const unsigned char *buf, size_t n, size_t *pos, unsigned char delim, uint16_t *port)
{
	uint32_t v = 0;
	size_t i = *pos;

	for (; i < n && buf[i] != delim; i++) {
		if (buf[i] < '0' || buf[i] > '9' || (i > *pos && v == 0))	/* a digit after a leading 0 */
			return STEP_BAD;
		v = v * 10 + (uint32_t)(buf[i] - '0');
		if (v > 65535)
			return STEP_BAD;
	}
	if (i == n)
		return STEP_MORE;
	if (i == *pos)
		return STEP_BAD;
	*port = (uint16_t)v;
	*pos = i + 1;
	return STEP_DONE;
}

#define LIT_MORE (-2)

/* Which of the @nlit literals the bytes at *@pos are: its index (*@pos moved past it), LIT_MORE while they are
 * a prefix of one, -1 otherwise. None of them may be a prefix of another. */
static int v1_literal(const unsigned char *buf, size_t n, size_t *pos, const char *const *lit, int nlit)
{
	bool prefix = false;
	size_t have = n - *pos;

	for (int k = 0; k < nlit; k++) {
		size_t l = strlen(lit[k]);

		if (memcmp(buf + *pos, lit[k], have < l ? have : l) != 0)
			continue;
		if (have >= l) {
			*pos += l;
			return k;
		}
		prefix = true;
	}
	return prefix ? LIT_MORE : -1;
}

static void set_inet(struct evfdd_sockaddr *a, int family, const void *bin, uint16_t port)
{
	memset(a, 0, sizeof(*a));
	if (family == AF_INET) {
		a->u.in.sin_family = AF_INET;
		memcpy(&a->u.in.sin_addr, bin, 4);
		a->u.in.sin_port = htons(port);
		a->len = sizeof(a->u.in);
	} else {
		a->u.in6.sin6_family = AF_INET6;
		memcpy(&a->u.in6.sin6_addr, bin, 16);
		a->u.in6.sin6_port = htons(port);
		a->len = sizeof(a->u.in6);
	}
}

static void set_local(struct evfdd_proxy_info *out)
{
	memset(out, 0, sizeof(*out));
	out->local = true;
}

static int v1_parse(const unsigned char *buf, size_t len, struct evfdd_proxy_info *out)
{
	static const char *const proxy[] = { "PROXY " };
	static const char *const protos[] = { "TCP4 ", "TCP6 ", "UNKNOWN" };
	/* Only the first 107 bytes can be a header: running out of those is the end, not "read more". */
	size_t n = len < EVFDD_PROXY_V1_MAX ? len : EVFDD_PROXY_V1_MAX;
	int more = len < EVFDD_PROXY_V1_MAX ? 0 : -EBADMSG;
	unsigned char sbin[16], dbin[16];
	uint16_t sport, dport;
	size_t pos = 0;
	int family, r;

	r = v1_literal(buf, n, &pos, proxy, 1);
	if (r < 0)
		return r == LIT_MORE ? more : -EBADMSG;
	r = v1_literal(buf, n, &pos, protos, 3);
	if (r < 0)
		return r == LIT_MORE ? more : -EBADMSG;
	if (r == 2) {
		/* UNKNOWN: a field of its own (not "UNKNOWNX"), then whatever the sender put, to the first CRLF */
		if (pos == n)
			return more;
		if (buf[pos] != ' ' && buf[pos] != '\r')
			return -EBADMSG;
		for (; pos + 1 < n; pos++) {
			if (buf[pos] == '\r' && buf[pos + 1] == '\n') {
				if (out)
					set_local(out);
				return (int)(pos + 2);
			}
		}
		return more;
	}
	family = r == 0 ? AF_INET : AF_INET6;
	r = v1_addr(buf, n, &pos, family, sbin);
	if (r != STEP_DONE)
		return r == STEP_MORE ? more : -EBADMSG;
	r = v1_addr(buf, n, &pos, family, dbin);
	if (r != STEP_DONE)
		return r == STEP_MORE ? more : -EBADMSG;
	r = v1_port(buf, n, &pos, ' ', &sport);
	if (r != STEP_DONE)
		return r == STEP_MORE ? more : -EBADMSG;
	r = v1_port(buf, n, &pos, '\r', &dport);
	if (r != STEP_DONE)
		return r == STEP_MORE ? more : -EBADMSG;
	if (pos == n)
		return more;
	if (buf[pos] != '\n')
		return -EBADMSG;
	if (out) {
		memset(out, 0, sizeof(*out));
		set_inet(&out->src, family, sbin, sport);
		set_inet(&out->dst, family, dbin, dport);
	}
	return (int)(pos + 1);
}

/* ---- v2 --------------------------------------------------------------------------------------------- */

/* A v2 Unix address block (108 bytes) as a sockaddr (see proxyproto.h for the three kinds). */
static void set_unix(struct evfdd_sockaddr *a, const unsigned char *p)
{
	const size_t off = offsetof(struct sockaddr_un, sun_path);
	size_t n;

	memset(a, 0, sizeof(*a));
	a->u.un.sun_family = AF_UNIX;
	if (p[0] != 0) {
		n = strnlen((const char *)p, UNIX_PATH);
		memcpy(a->u.un.sun_path, p, n);
		/* with its NUL when it has room for one; a 108-byte path still ends within the zeroed union */
		a->len = (socklen_t)(off + n + (n < UNIX_PATH));
		return;
	}
	for (n = 1; n < UNIX_PATH && p[n] == 0; n++)
		;
	if (n == UNIX_PATH) {
		a->len = (socklen_t)off;	/* unnamed */
		return;
	}
	memcpy(a->u.un.sun_path, p, UNIX_PATH);
	a->len = (socklen_t)(off + UNIX_PATH);
}

static int v2_parse(const unsigned char *buf, size_t len, struct evfdd_proxy_info *out)
{
	size_t addrlen, total, pos;
	unsigned cmd, family;

	if (memcmp(buf, v2_sig, len < sizeof(v2_sig) ? len : sizeof(v2_sig)) != 0)
		return -EBADMSG;
	if (len <= 12)
		return 0;
	/* version 2; commands other than LOCAL and PROXY are unassigned, and the spec says to drop them */
	if (buf[12] >> 4 != 2 || (buf[12] & 0xF) > V2_PROXY)
		return -EBADMSG;
	cmd = buf[12] & 0xF;
	if (len <= 13)
		return 0;
	family = buf[13];
	switch (family) {
	case V2_UNSPEC:
		addrlen = 0;
		break;
	case V2_TCP4:
		addrlen = 12;
		break;
	case V2_TCP6:
		addrlen = 36;
		break;
	case V2_UNIX:
		addrlen = 2 * UNIX_PATH;
		break;
	default:
		return -EBADMSG;	/* dgram (0x12, 0x22, 0x32) or unassigned */
	}
	if (len < V2_FIXED)
		return 0;
	total = V2_FIXED + ((size_t)buf[14] << 8 | buf[15]);
	if (total > EVFDD_PROXY_MAX)
		return -EMSGSIZE;
	if (total - V2_FIXED < addrlen)
		return -EBADMSG;
	/* The TLVs, each judged as soon as its own 3-byte head is in: a tail too short for a head, or a value
	 * running past the end, is known wrong before the rest arrives. */
	for (pos = V2_FIXED + addrlen; pos < total;) {
		size_t vlen;

		if (total - pos < 3)
			return -EBADMSG;
		if (len < pos + 3)
			return 0;
		vlen = (size_t)buf[pos + 1] << 8 | buf[pos + 2];
		if (vlen > total - pos - 3)
			return -EBADMSG;
		pos += 3 + vlen;
	}
	if (len < total)
		return 0;
	if (!out)
		return (int)total;
	if (cmd == V2_LOCAL || family == V2_UNSPEC) {
		set_local(out);
		return (int)total;
	}
	memset(out, 0, sizeof(*out));
	switch (family) {
	case V2_TCP4:
		set_inet(&out->src, AF_INET, buf + 16, (uint16_t)(buf[24] << 8 | buf[25]));
		set_inet(&out->dst, AF_INET, buf + 20, (uint16_t)(buf[26] << 8 | buf[27]));
		break;
	case V2_TCP6:
		set_inet(&out->src, AF_INET6, buf + 16, (uint16_t)(buf[48] << 8 | buf[49]));
		set_inet(&out->dst, AF_INET6, buf + 32, (uint16_t)(buf[50] << 8 | buf[51]));
		break;
	default:
		set_unix(&out->src, buf + 16);
		set_unix(&out->dst, buf + 16 + UNIX_PATH);
		break;
	}
	return (int)total;
}

int evfdd_proxy_parse(const unsigned char *buf, size_t len, struct evfdd_proxy_info *out)
{
	if (len == 0)
		return 0;
	/* The two versions' first bytes differ ('P', CR): one byte picks the parser or rejects. */
	if (buf[0] == 'P')
		return v1_parse(buf, len, out);
	if (buf[0] == v2_sig[0])
		return v2_parse(buf, len, out);
	return -EBADMSG;
}

/* ---- building ---------------------------------------------------------------------------------------- */

/* An address as the header will carry it: the family to write, and the IPv4 address of a mapped one. */
struct side {
	int family;	/* AF_INET, AF_INET6, AF_UNIX; AF_UNSPEC: none usable */
	bool mapped;	/* AF_INET6 holding ::ffff:a.b.c.d */
};

static struct side side_of(const struct evfdd_sockaddr *a)
{
	struct side s = { AF_UNSPEC, false };

	if (!a)
		return s;
	switch (a->u.sa.sa_family) {
	case AF_INET:
		if (a->len >= sizeof(a->u.in))
			s.family = AF_INET;
		break;
	case AF_INET6:
		if (a->len >= sizeof(a->u.in6)) {
			s.family = AF_INET6;
			s.mapped = IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr);
		}
		break;
	case AF_UNIX:
		if (a->len >= offsetof(struct sockaddr_un, sun_path) && a->len <= sizeof(a->u))
			s.family = AF_UNIX;
		break;
	}
	return s;
}

/* The family both sides are written in, or AF_UNSPEC for LOCAL / UNKNOWN. */
static int pair_family(struct side s, struct side d)
{
	if (s.family == AF_UNSPEC || d.family == AF_UNSPEC)
		return AF_UNSPEC;
	if ((s.family == AF_INET || s.mapped) && (d.family == AF_INET || d.mapped))
		return AF_INET;
	return s.family == d.family ? s.family : AF_UNSPEC;
}

/* @a's IPv4 address (network order bytes) and port, unmapping a mapped IPv6 one. */
static const void *v4_bytes(const struct evfdd_sockaddr *a, uint16_t *port)
{
	if (a->u.sa.sa_family == AF_INET) {
		*port = ntohs(a->u.in.sin_port);
		return &a->u.in.sin_addr;
	}
	*port = ntohs(a->u.in6.sin6_port);
	return a->u.in6.sin6_addr.s6_addr + 12;
}

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

static int put(unsigned char *out, size_t cap, const void *hdr, size_t n)
{
	if (n > cap)
		return -ENOSPC;
	memcpy(out, hdr, n);
	return (int)n;
}

static int v1_build(int family, const struct evfdd_sockaddr *src, const struct evfdd_sockaddr *dst,
		    unsigned char *out, size_t cap)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN], line[EVFDD_PROXY_V1_MAX + 1];
	uint16_t sport, dport;
	int n;

	if (family == AF_INET) {
		inet_ntop(AF_INET, v4_bytes(src, &sport), s, sizeof(s));
		inet_ntop(AF_INET, v4_bytes(dst, &dport), d, sizeof(d));
	} else if (family == AF_INET6) {
		inet_ntop(AF_INET6, &src->u.in6.sin6_addr, s, sizeof(s));
		inet_ntop(AF_INET6, &dst->u.in6.sin6_addr, d, sizeof(d));
		sport = ntohs(src->u.in6.sin6_port);
		dport = ntohs(dst->u.in6.sin6_port);
	} else {
		return put(out, cap, "PROXY UNKNOWN\r\n", 15);
	}
	/* at most 104 bytes: "PROXY TCP6 " and two 39-byte addresses (inet_ntop writes a dotted quad only
	 * after ::ffff: or ::, shorter) */
	n = snprintf(line, sizeof(line), "PROXY TCP%c %s %s %u %u\r\n", family == AF_INET ? '4' : '6', s, d,
		     (unsigned)sport, (unsigned)dport);
	return put(out, cap, line, (size_t)n);
}

/* A Unix address as a v2 108-byte block: the path, NUL-padded; an abstract name as it is; unnamed: zeros. */
static void unix_block(const struct evfdd_sockaddr *a, unsigned char *p)
{
	size_t n = a->len - offsetof(struct sockaddr_un, sun_path);

	if (n > UNIX_PATH)
		n = UNIX_PATH;
	if (n > 0 && a->u.un.sun_path[0] != '\0')
		n = strnlen(a->u.un.sun_path, n);
	memset(p, 0, UNIX_PATH);
	memcpy(p, a->u.un.sun_path, n);
}

static int v2_build(int family, const struct evfdd_sockaddr *src, const struct evfdd_sockaddr *dst,
		    unsigned char *out, size_t cap)
{
	unsigned char h[EVFDD_PROXY_BUILD_MAX];
	uint16_t sport, dport;
	size_t alen;

	memcpy(h, v2_sig, sizeof(v2_sig));
	h[12] = 0x20 | (family == AF_UNSPEC ? V2_LOCAL : V2_PROXY);
	switch (family) {
	case AF_INET:
		h[13] = V2_TCP4;
		alen = 12;
		memcpy(h + 16, v4_bytes(src, &sport), 4);
		memcpy(h + 20, v4_bytes(dst, &dport), 4);
		put16(h + 24, sport);
		put16(h + 26, dport);
		break;
	case AF_INET6:
		h[13] = V2_TCP6;
		alen = 36;
		memcpy(h + 16, &src->u.in6.sin6_addr, 16);
		memcpy(h + 32, &dst->u.in6.sin6_addr, 16);
		put16(h + 48, ntohs(src->u.in6.sin6_port));
		put16(h + 50, ntohs(dst->u.in6.sin6_port));
		break;
	case AF_UNIX:
		h[13] = V2_UNIX;
		alen = 2 * UNIX_PATH;
		unix_block(src, h + 16);
		unix_block(dst, h + 16 + UNIX_PATH);
		break;
	default:
		h[13] = V2_UNSPEC;
		alen = 0;
		break;
	}
	put16(h + 14, (uint16_t)alen);
	return put(out, cap, h, V2_FIXED + alen);
}

int evfdd_proxy_build(int version, const struct evfdd_sockaddr *src, const struct evfdd_sockaddr *dst,
		      unsigned char *out, size_t cap)
{
	int family = pair_family(side_of(src), side_of(dst));

	if (version == 1)
		return v1_build(family == AF_UNIX ? AF_UNSPEC : family, src, dst, out, cap);
	if (version == 2)
		return v2_build(family, src, dst, out, cap);
	return -EINVAL;
}
