/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Client addresses: unmapping, text, CIDR prefixes, per-source keys (addr.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include "addr.h"

static const unsigned char v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

void evfdd_addr_unmap(struct evfdd_sockaddr *a)
{
	struct sockaddr_in in;

	if (a->u.sa.sa_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr))
		return;
	memset(&in, 0, sizeof(in));
	in.sin_family = AF_INET;
	in.sin_port = a->u.in6.sin6_port;
	memcpy(&in.sin_addr, &a->u.in6.sin6_addr.s6_addr[12], 4);
	memset(&a->u, 0, sizeof(a->u));
	a->u.in = in;
	a->len = sizeof(in);
}

/* A bounded writer: appends while there is room, always leaving the text NUL-terminated. */
struct text {
	char *p;
	size_t cap, len;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->len + 1 >= t->cap)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	t->len = (size_t)n >= t->cap - t->len ? t->cap - 1 : t->len + (size_t)n;
}

/* Peer-chosen bytes of a Unix name: printable ASCII but the backslash as is, everything else as \xHH. */
static void put_escaped(struct text *t, const char *s, size_t n)
{
	for (size_t i = 0; i < n && t->len + 1 < t->cap; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 0x20 && c < 0x7f && c != '\\')
			put(t, "%c", c);
		else
			put(t, "\\x%02x", c);
	}
}

char *evfdd_addr_format(const struct evfdd_sockaddr *a, char *out, size_t cap)
{
	struct text t = { out, cap, 0 };
	const size_t path_off = offsetof(struct sockaddr_un, sun_path);
	char ip[INET6_ADDRSTRLEN];

	if (cap == 0)
		return out;
	out[0] = '\0';
	switch (a->u.sa.sa_family) {
	case AF_INET:
		inet_ntop(AF_INET, &a->u.in.sin_addr, ip, sizeof(ip));
		put(&t, "%s:%u", ip, ntohs(a->u.in.sin_port));
		break;
	case AF_INET6:
		inet_ntop(AF_INET6, &a->u.in6.sin6_addr, ip, sizeof(ip));
		if (a->u.in6.sin6_scope_id)
			put(&t, "[%s%%%u]:%u", ip, (unsigned)a->u.in6.sin6_scope_id, ntohs(a->u.in6.sin6_port));
		else
			put(&t, "[%s]:%u", ip, ntohs(a->u.in6.sin6_port));
		break;
	case AF_UNIX: {
		/* the kernel's length decides, not a NUL: abstract names may hold NULs, paths need not end in one */
		size_t n = a->len > path_off ? a->len - path_off : 0;

		if (n > sizeof(a->u.un.sun_path))
			n = sizeof(a->u.un.sun_path);
		if (n == 0) {
			put(&t, "unix");
		} else if (a->u.un.sun_path[0] == '\0') {
			put(&t, "@");
			put_escaped(&t, a->u.un.sun_path + 1, n - 1);
		} else {
			put_escaped(&t, a->u.un.sun_path, strnlen(a->u.un.sun_path, n));
		}
		break;
	}
	default:
		put(&t, "family %u", (unsigned)a->u.sa.sa_family);
		break;
	}
	return out;
}

static void set_err(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errcap, const char *fmt, ...)
{
	va_list ap;

	if (!err || errcap == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errcap, fmt, ap);
	va_end(ap);
}

/* Clear the bits of @b (@nbytes long) past the first @prefix; returns whether any was set. */
static bool clear_host_bits(unsigned char *b, size_t nbytes, unsigned prefix)
{
	bool set = false;

	for (size_t i = 0; i < nbytes; i++) {
		unsigned keep = prefix >= 8 * (i + 1) ? 8 : prefix > 8 * i ? prefix - 8 * i : 0;
		unsigned char mask = keep ? (unsigned char)(0xff << (8 - keep)) : 0;

		if (b[i] & ~mask)
			set = true;
		b[i] &= mask;
	}
	return set;
}

/* Whether @s is printable ASCII: the error messages quote it only then, as it may come from anywhere. */
static bool printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	return true;
}

int evfdd_cidr_parse(const char *text, struct evfdd_cidr *out, char *err, size_t errcap)
{
	char addr[INET6_ADDRSTRLEN + 1], shown[INET6_ADDRSTRLEN];
	const char *slash;
	unsigned prefix, max;
	size_t alen;
	struct evfdd_cidr c;

	memset(&c, 0, sizeof(c));
	if (!text || !*text) {
		set_err(err, errcap, "an empty address; write an address or a prefix such as 10.0.0.0/8");
		return -EINVAL;
	}
	slash = strchr(text, '/');
	alen = slash ? (size_t)(slash - text) : strlen(text);
	if (alen == 0 || alen >= sizeof(addr))
		goto bad_addr;
	memcpy(addr, text, alen);
	addr[alen] = '\0';
	if (strchr(addr, ':')) {
		c.family = AF_INET6;
		max = 128;
	} else {
		c.family = AF_INET;
		max = 32;
	}
	if (inet_pton(c.family, addr, c.bytes) != 1)
		goto bad_addr;
	prefix = max;
	if (slash) {
		const char *p = slash + 1;

		/* decimal without sign, spaces or leading zeros: strtoul would take " +08" */
		if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] != '\0'))
			goto bad_prefix;
		for (prefix = 0; *p; p++) {
			if (*p < '0' || *p > '9')
				goto bad_prefix;
			prefix = prefix * 10 + (unsigned)(*p - '0');
			if (prefix > max)
				goto bad_prefix;
		}
	}
	/* checked as written, so that the suggestion is in the user's own notation */
	if (clear_host_bits(c.bytes, max / 8, prefix)) {
		inet_ntop(c.family, c.bytes, shown, sizeof(shown));
		set_err(err, errcap, "\"%s\" has bits set past /%u; did you mean %s/%u?", text, prefix, shown,
			prefix);
		return -EINVAL;
	}
	if (c.family == AF_INET6 && prefix >= 96 && memcmp(c.bytes, v4mapped_prefix, 12) == 0) {
		/* clients are unmapped before matching: a mapped prefix would never match anyone */
		c.family = AF_INET;
		memmove(c.bytes, c.bytes + 12, 4);
		memset(c.bytes + 4, 0, 12);
		prefix -= 96;
	}
	c.prefix = (unsigned char)prefix;
	*out = c;
	return 0;

bad_addr:
	if (!printable(text)) {
		set_err(err, errcap, "an address or prefix has only printable characters; write e.g. 10.0.0.0/8 or "
			"2001:db8::/32");
		return -EINVAL;
	}
	set_err(err, errcap, "\"%.80s%s\" is not an IPv4 or IPv6 address or prefix; write e.g. 10.0.0.0/8 or "
		"2001:db8::/32", text, strlen(text) > 80 ? "..." : "");
	return -EINVAL;
bad_prefix:
	set_err(err, errcap, "\"%.80s%s\": the prefix length after '/' must be a number from 0 to %u",
		printable(text) ? text : addr, strlen(text) > 80 ? "..." : "", max);
	return -EINVAL;
}

/* Whether the first @prefix bits of @a and @b are equal. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned prefix)
{
	unsigned whole = prefix / 8, rest = prefix % 8;

	if (memcmp(a, b, whole) != 0)
		return false;
	if (rest == 0)
		return true;
	return ((a[whole] ^ b[whole]) & (unsigned char)(0xff << (8 - rest))) == 0;
}

bool evfdd_cidr_match(const struct evfdd_cidr *list, size_t n, const struct evfdd_sockaddr *a)
{
	struct evfdd_sockaddr u = *a;
	const unsigned char *bytes;
	unsigned max;

	evfdd_addr_unmap(&u);
	if (u.u.sa.sa_family == AF_INET) {
		bytes = (const unsigned char *)&u.u.in.sin_addr;
		max = 32;
	} else if (u.u.sa.sa_family == AF_INET6) {
		bytes = u.u.in6.sin6_addr.s6_addr;
		max = 128;
	} else {
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (list[i].family == u.u.sa.sa_family && list[i].prefix <= max &&
		    prefix_equal(list[i].bytes, bytes, list[i].prefix))
			return true;
	return false;
}

bool evfdd_addr_source_key(const struct evfdd_sockaddr *a, struct evfdd_source_key *k)
{
	struct evfdd_sockaddr u = *a;

	memset(k, 0, sizeof(*k));
	evfdd_addr_unmap(&u);
	switch (u.u.sa.sa_family) {
	case AF_INET:
		k->b[0] = 4;
		memcpy(k->b + 1, &u.u.in.sin_addr, 4);
		return true;
	case AF_INET6:
		k->b[0] = 6;
		memcpy(k->b + 1, u.u.in6.sin6_addr.s6_addr, 8);
		return true;
	default:
		return false;
	}
}
