/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's proxy-protocol.txt defines them: a header
 * that a proxy sends first on a connection to say whom the connection is really from and to. evfdd reads one
 * from the clients it trusts (accept_proxy, proxy_from) and writes one to backends (send_proxy).
 *
 * Both functions are pure: no allocation, no system call, no global state, so any thread may call them.
 * Parsing keeps no state between calls either: the caller keeps the bytes received so far and calls again with
 * more, each call rescanning from the start (cheap: a header is at most EVFDD_PROXY_MAX bytes, a v1 header at
 * most 107). The answers for the prefixes of one byte stream never contradict each other: 0 until the header
 * is complete, then its length; or 0 until the first byte that no header can have, then the same error for
 * every longer prefix. A parse never reads past the bytes it is given, nor past the header's own end.
 */
#ifndef EVFDD_PROXYPROTO_H
#define EVFDD_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include "config.h"

#define EVFDD_PROXY_MAX 16384		/* a header longer than this is "oversized" */
#define EVFDD_PROXY_V1_MAX 107		/* the longest v1 header, CRLF included (the spec's bound) */
#define EVFDD_PROXY_BUILD_MAX 232	/* the longest header evfdd_proxy_build writes (v2, two Unix paths) */

struct evfdd_proxy_info {
	bool local;			/* v2 LOCAL or v1 UNKNOWN: no address learned (use the connection's own) */
	struct evfdd_sockaddr src, dst;	/* from config.h; AF_INET/AF_INET6/AF_UNIX, as sent (no unmapping) */
};

/*
 * evfdd_proxy_parse - parse a v1 or v2 header at the start of @buf (@len bytes received so far)
 * @out: receives what the header says, only when the return is > 0; may be NULL (validate only)
 *
 * Returns the header's length (> 0) once complete (bytes after it are the client's data), 0 while the bytes
 * so far are a valid prefix of a header (read more), -EBADMSG when they cannot be one (wrong signature, bad
 * syntax, inconsistent lengths, a UDP/dgram family, an address family that does not fit its length),
 * -EMSGSIZE when the header would be longer than EVFDD_PROXY_MAX (v1: no CRLF within 107 bytes is -EBADMSG,
 * as the spec says). Decides as early as possible: "GET /" is -EBADMSG after 1 byte, a v2 length over the
 * limit -EMSGSIZE after the 16 fixed bytes, a v1 address that no more digits can mend at its first bad byte.
 *
 * v1: "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" with exactly one space between fields, addresses as
 * inet_pton(3) of the family reads them, ports decimal 0-65535 without sign or leading zero; or "PROXY
 * UNKNOWN" then anything up to the first CRLF (local). v2: the 12-byte signature, version 2, command LOCAL
 * (local, whatever family) or PROXY, family UNSPEC (local), TCP over IPv4 or IPv6, or Unix stream; the
 * length covers the family's addresses, and what follows them is a list of TLVs that must end exactly at
 * the header's end (their content is not looked at: a CRC32C TLV is not checked). A Unix path is taken up to
 * its first NUL (the bytes after it are not checked: senders copy sun_path whole, garbage included), len
 * counting the NUL as config.c does; an abstract path (first byte NUL) keeps all 108 bytes; an all-zero block
 * is an unnamed socket (len = offsetof(struct sockaddr_un, sun_path)).
 */
int evfdd_proxy_parse(const unsigned char *buf, size_t len, struct evfdd_proxy_info *out);

/*
 * evfdd_proxy_build - write a v1 (@version 1) or v2 (@version 2) header saying @src -> @dst into @out
 * (@cap bytes)
 *
 * @src/@dst NULL, or of different families, or AF_UNIX with version 1, write LOCAL (v2: command LOCAL,
 * family UNSPEC, length 0) / "PROXY UNKNOWN\r\n" (v1); so does an address whose len is too short for its
 * family. AF_UNIX with v2: family 0x31 with the two 108-byte paths (NUL-padded; an unnamed socket is all
 * zeros). IPv4-mapped IPv6 addresses are written as IPv4 (TCP4 / 0x11) when both are mapped, or when one is
 * mapped and the other is AF_INET (a client learned from a PROXY header to a dual-stack listener). Ports and
 * addresses are taken as they are; a v6 scope id is not written (the protocol has no room for it).
 *
 * Returns the length written (at most EVFDD_PROXY_BUILD_MAX), -ENOSPC when it does not fit in @cap (nothing
 * past @cap is written), or -EINVAL for another @version. Health checks call it with NULL, NULL.
 */
int evfdd_proxy_build(int version, const struct evfdd_sockaddr *src, const struct evfdd_sockaddr *dst,
		      unsigned char *out, size_t cap);

#endif
