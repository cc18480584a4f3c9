/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Client addresses as the access rules, the per-source limits and the logs see them: unmapping, text for
 * logs, CIDR prefixes (allow, deny, proxy_from) and the key per-source limits count by.
 *
 * A dual-stack listener ("*") reports IPv4 clients as IPv4-mapped IPv6 addresses (::ffff:a.b.c.d); every
 * function here treats them as the IPv4 addresses they are, so that "10.0.0.0/8" matches a client whichever
 * socket it came in on, and one client counts as one source. Pure functions: no allocation, no logging, safe
 * from any thread.
 */
#ifndef EVFDD_ADDR_H
#define EVFDD_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include "config.h"

/* Longest text evfdd_addr_format writes, NUL included: a Unix path of 108 bytes, each escaped as \xHH
 * (4 bytes), is longer, and is truncated to this. */
#define EVFDD_ADDR_TEXT_MAX 256

/* ::ffff:a.b.c.d becomes AF_INET a.b.c.d with the same port (and len sizeof(struct sockaddr_in)); any other
 * address is left as it is. */
void evfdd_addr_unmap(struct evfdd_sockaddr *a);

/*
 * evfdd_addr_format - @a as text for logs: "1.2.3.4:80", "[2001:db8::1]:443" ("[fe80::1%2]:443" with a
 * scope), a Unix path, "unix" for an unnamed socket, "@name" for an abstract one
 *
 * Unix names are peer-controlled bytes: every byte outside printable ASCII, and the backslash itself, is
 * written as \xHH, so the text is one unambiguous line. Mapped addresses are written as they are (callers
 * unmap first when they want the IPv4 form). Another family gives "family N". The text is always
 * NUL-terminated and truncated to @cap bytes (nothing is written when @cap is 0). Returns @out.
 */
char *evfdd_addr_format(const struct evfdd_sockaddr *a, char *out, size_t cap);

/* An IPv4 or IPv6 prefix; the bytes past the prefix are zero. */
struct evfdd_cidr {
	sa_family_t family;              /* AF_INET or AF_INET6 */
	unsigned char bytes[16];         /* the address, network order; IPv4 uses the first 4 */
	unsigned char prefix;            /* 0-32 or 0-128 */
};

/*
 * evfdd_cidr_parse - "10.0.0.0/8", "192.0.2.7" (= /32), "2001:db8::/32", "::1" (= /128) into @out
 *
 * Addresses as inet_pton takes them (no brackets, no scope, no spaces); the prefix length decimal, without
 * sign or leading zeros. An IPv4-mapped IPv6 prefix of at least /96 (::ffff:10.0.0.0/104) becomes the IPv4
 * prefix it covers (10.0.0.0/8), as clients are unmapped before matching. Host bits set past the prefix are
 * an error, as they usually mean a typing mistake. Returns 0, or -EINVAL with one line in @err (@errcap
 * bytes, may be 0) saying what is wrong and what to write, e.g. "\"10.1.2.3/8\" has bits set past /8; did
 * you mean 10.0.0.0/8?", for a configuration error.
 */
int evfdd_cidr_parse(const char *text, struct evfdd_cidr *out, char *err, size_t errcap);

/* Whether @a, unmapped, is inside any of the @n prefixes of @list. An IPv4 address matches IPv4 prefixes
 * only (so "::/0" does not match IPv4 clients: write "0.0.0.0/0" too). AF_UNIX and other families: false. */
bool evfdd_cidr_match(const struct evfdd_cidr *list, size_t n, const struct evfdd_sockaddr *a);

/* The key per-source limits count by: a family tag, then the IPv4 address (/32) or the first 8 bytes of the
 * IPv6 address (/64: one subscriber's usual allocation), zero-padded. Compare or hash all 9 bytes. */
struct evfdd_source_key {
	unsigned char b[9];
};

/* Fill @k with @a's source key (@a unmapped first). Returns false, with @k zeroed, for AF_UNIX and any
 * family but AF_INET and AF_INET6: such clients are not limited per source. */
bool evfdd_addr_source_key(const struct evfdd_sockaddr *a, struct evfdd_source_key *k);

#endif
