/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The server name a TLS client asks for (SNI, RFC 6066), read from its ClientHello before any backend is
 * chosen, so that sni_route can pick the backends by name while the bytes are forwarded untouched.
 *
 * The parser is stateless: the caller keeps the bytes received so far and calls it again with all of them
 * after every read, until it says complete or wrong. Every byte it decides on is validated (record
 * headers, the handshake header, every length against its container, the name's characters), it never
 * reads past the length it is given, it allocates nothing and it prints nothing; a client controls every
 * byte, so any input is safe (tests/fuzz-tlshello.c). It decides as early as the bytes allow: "GET /" is
 * wrong after one byte, a ClientHello announcing more than the limit is too big after its header.
 */
#ifndef EVFDD_TLSHELLO_H
#define EVFDD_TLSHELLO_H

#include <stddef.h>

/* The largest ClientHello, records included, evfdd waits for: one full record. Real ones are 200-600 bytes;
 * post-quantum key shares (ML-KEM) bring them to about 1800, still far below. */
#define EVFDD_TLS_HELLO_MAX 16384

/*
 * evfdd_tls_hello_sni - find the server name in a TLS ClientHello at the start of @buf (@len bytes so far)
 * @limit: the most bytes of records the ClientHello may take (above EVFDD_TLS_HELLO_MAX counts as it)
 * @name: receives the name, NUL-terminated; @cap must be at least 256
 *
 * The ClientHello may span several handshake records, each with the header type 22, version 0x0300-0x0304,
 * length 1-16384; it must end exactly at the end of a record (a client sends nothing else before the
 * server answers, and any bytes after those records are the client's next data, left to the caller).
 * Checked in it: handshake type 1 (ClientHello), a 24-bit length covering exactly the body, client version
 * 0x0300-0x0303 (TLS 1.3 keeps 0x0303 there), a session id of at most 32 bytes, a non-empty even list of
 * cipher suites, compression methods including null, then either nothing or extensions whose lengths end
 * exactly at the body's end. In a server_name extension (at most one): a list filling the extension
 * exactly, each entry a type and a 16-bit length, at most one host_name entry, of 1-255 bytes of
 * [A-Za-z0-9._-] with no empty label (no leading, trailing or double dot). Other extensions are skipped.
 *
 * Returns the number of bytes of the records holding the whole ClientHello (> 0) when complete, with the
 * name lowercased in @name, or "" when the hello has no server_name extension (or one without a host_name
 * entry); 0 while the bytes so far are a valid prefix (read more); -EBADMSG when they cannot be the start
 * of a ClientHello (not a handshake record, another handshake type, an SSLv2 hello, any length
 * inconsistent, a duplicate server_name or host_name, a name with other bytes); -EMSGSIZE when the
 * ClientHello's records would exceed @limit bytes; -EINVAL when @cap is below 256. @name is "" unless the
 * result is > 0.
 */
int evfdd_tls_hello_sni(const unsigned char *buf, size_t len, size_t limit, char *name, size_t cap);

#endif
