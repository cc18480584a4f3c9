/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for what a client's first bytes reach before any backend is chosen: the ClientHello parser
 * (daemon/tlshello.c), and, on the same bytes taken as text or as a Unix address, sni_route names
 * (daemon/sni.c) and addresses (daemon/addr.c). Any input must give an answer, never a crash, a read past
 * the length given, a leak or a hang, and the answers must be consistent (a violation aborts, which the
 * fuzzer reports):
 *
 * - the parser says a length (> 0, at most the input's and EVFDD_TLS_HELLO_MAX), 0, -EBADMSG or -EMSGSIZE;
 *   with a length, the name is "" or 1-255 bytes of [a-z0-9._-] with no empty label, and the same bytes cut
 *   to that length (in a buffer of exactly that size) give the same answer, with a limit of that length too
 *   and -EMSGSIZE with one byte less;
 * - a prefix of the input (cut to half and to one byte less, each in a buffer of its own size) gives 0 or
 *   the same answer (the parse depends on the bytes it has seen only; past a complete hello, the same);
 * - a CIDR prefix accepted has no host bits and matches its own address; a route name accepted matches a
 *   host it covers; error messages and formatted addresses are printable, NUL-terminated, within bounds.
 *
 * Under libFuzzer (clang), from a configured build directory: `make fuzz`, or by hand from the top of a
 * configured tree:
 *	clang -g -O1 -fsanitize=fuzzer,address,undefined -DEVFDD_FUZZING -include config.h \
 *		tests/fuzz-tlshello.c daemon/tlshello.c daemon/sni.c daemon/addr.c -o /tmp/fuzz-tlshello
 *	mkdir -p /tmp/fuzz-work
 *	/tmp/fuzz-tlshello -max_total_time=60 -max_len=17000 /tmp/fuzz-work tests/fuzz-corpus/tlshello
 * (new inputs go to /tmp/fuzz-work; copy the interesting ones into tests/fuzz-corpus/tlshello).
 *
 * Without EVFDD_FUZZING this file has its own main, which runs the target once over every file in
 * tests/fuzz-corpus/tlshello (or the files and directories given as arguments): `make check` does that.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include "../daemon/addr.h"
#include "../daemon/sni.h"
#include "../daemon/tlshello.h"
#include "fuzzmain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                                \
	do {                                                                                             \
		if (!(cond)) {                                                                           \
			fprintf(stderr, "fuzz-tlshello: %s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                                  \
			abort();                                                                         \
		}                                                                                        \
	} while (0)

/* The parser on the first @len bytes of @data, copied to a buffer of exactly that size. */
static int parse_copy(const uint8_t *data, size_t len, size_t limit, char *name)
{
	unsigned char *b = malloc(len ? len : 1);
	int rc;

	FUZZ_ASSERT(b);
	memcpy(b, data, len);
	rc = evfdd_tls_hello_sni(b, len, limit, name, 256);
	free(b);
	return rc;
}

static void check_name(const char *name)
{
	size_t n = strlen(name);

	FUZZ_ASSERT(n <= 255);
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		FUZZ_ASSERT((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.');
		if (c == '.')
			FUZZ_ASSERT(i > 0 && i < n - 1 && name[i - 1] != '.');
	}
}

static void check_text(const char *s, size_t cap)
{
	size_t n = strnlen(s, cap);

	FUZZ_ASSERT(n < cap);
	for (size_t i = 0; i < n; i++)
		FUZZ_ASSERT((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f);
}

static void fuzz_hello(const uint8_t *data, size_t size)
{
	char name[256], again[256];
	int rc = evfdd_tls_hello_sni(data, size, EVFDD_TLS_HELLO_MAX, name, sizeof(name));
	const size_t cuts[] = { size / 2, size ? size - 1 : 0 };

	FUZZ_ASSERT(rc == 0 || rc == -EBADMSG || rc == -EMSGSIZE ||
		    (rc > 0 && (size_t)rc <= size && rc <= EVFDD_TLS_HELLO_MAX));
	if (rc > 0) {
		check_name(name);
		FUZZ_ASSERT(parse_copy(data, (size_t)rc, EVFDD_TLS_HELLO_MAX, again) == rc && !strcmp(name, again));
		FUZZ_ASSERT(parse_copy(data, (size_t)rc, (size_t)rc, again) == rc && !strcmp(name, again));
		FUZZ_ASSERT(parse_copy(data, (size_t)rc, (size_t)rc - 1, again) == -EMSGSIZE && !again[0]);
		if (name[0]) {
			const char *routes[] = { name };

			FUZZ_ASSERT(evfdd_sni_match(routes, 1, name) == 0);
		}
	} else {
		FUZZ_ASSERT(name[0] == '\0');
	}
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
		if (cuts[i] >= size)
			continue;
		int p = parse_copy(data, cuts[i], EVFDD_TLS_HELLO_MAX, again);

		if (rc > 0)
			FUZZ_ASSERT(p == (cuts[i] < (size_t)rc ? 0 : rc));
		else
			FUZZ_ASSERT(p == 0 || p == rc);
	}
}

/* The bytes as a configuration value: a CIDR prefix and a route name. */
static void fuzz_text(const uint8_t *data, size_t size)
{
	char text[321], err[160], host[322];
	struct evfdd_cidr c;
	struct evfdd_sockaddr a;

	if (size >= sizeof(text))
		return;
	memcpy(text, data, size);
	text[size] = '\0';

	memset(err, 'x', sizeof(err));
	if (evfdd_cidr_parse(text, &c, err, sizeof(err)) == 0) {
		unsigned max = c.family == AF_INET ? 32 : 128;

		FUZZ_ASSERT((c.family == AF_INET || c.family == AF_INET6) && c.prefix <= max);
		for (unsigned bit = c.prefix; bit < 128; bit++)
			FUZZ_ASSERT(!(c.bytes[bit / 8] & (0x80 >> (bit % 8))));
		memset(&a, 0, sizeof(a));
		a.u.sa.sa_family = c.family;
		if (c.family == AF_INET)
			memcpy(&a.u.in.sin_addr, c.bytes, 4);
		else
			memcpy(&a.u.in6.sin6_addr, c.bytes, 16);
		FUZZ_ASSERT(evfdd_cidr_match(&c, 1, &a));
	} else {
		check_text(err, sizeof(err));
	}
	/* a small buffer: truncated, still terminated */
	if (evfdd_cidr_parse(text, &c, err, 7) != 0)
		check_text(err, 7);

	memset(err, 'x', sizeof(err));
	if (evfdd_sni_name_check(text, err, sizeof(err)) == 0) {
		const char *routes[] = { "other.invalid", text };

		FUZZ_ASSERT(strlen(text) >= 1 && strlen(text) <= EVFDD_SNI_NAME_MAX);
		if (text[0] == '*') {
			snprintf(host, sizeof(host), "x%s", text + 1);
			FUZZ_ASSERT(evfdd_sni_match(routes, 2, host) == 1);
			FUZZ_ASSERT(evfdd_sni_match(routes, 2, text + 2) != 1);
		} else {
			FUZZ_ASSERT(evfdd_sni_match(routes, 2, text) == 1 || !strcmp(text, "other.invalid"));
		}
	} else {
		check_text(err, sizeof(err));
	}
}

/* The bytes as a Unix peer's address (any name, any length the kernel could report) or an IP one. */
static void fuzz_format(const uint8_t *data, size_t size)
{
	struct evfdd_sockaddr a;
	char out[EVFDD_ADDR_TEXT_MAX];
	struct evfdd_source_key k;
	size_t n = size < sizeof(a.u.un.sun_path) ? size : sizeof(a.u.un.sun_path);

	memset(&a, 0, sizeof(a));
	a.u.un.sun_family = AF_UNIX;
	memcpy(a.u.un.sun_path, data, n);
	a.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	check_text(evfdd_addr_format(&a, out, sizeof(out)), sizeof(out));
	check_text(evfdd_addr_format(&a, out, 5), 5);
	FUZZ_ASSERT(!evfdd_addr_source_key(&a, &k));

	if (size >= 18) {
		memset(&a, 0, sizeof(a));
		a.u.in6.sin6_family = AF_INET6;
		memcpy(&a.u.in6.sin6_addr, data, 16);
		memcpy(&a.u.in6.sin6_port, data + 16, 2);
		a.len = sizeof(a.u.in6);
		check_text(evfdd_addr_format(&a, out, sizeof(out)), sizeof(out));
		FUZZ_ASSERT(evfdd_addr_source_key(&a, &k) && (k.b[0] == 4 || k.b[0] == 6));
		evfdd_addr_unmap(&a);
		FUZZ_ASSERT(a.u.sa.sa_family == (k.b[0] == 4 ? AF_INET : AF_INET6));
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_hello(data, size);
	fuzz_text(data, size);
	fuzz_format(data, size);
	return 0;
}

#ifndef EVFDD_FUZZING
int main(int argc, char **argv)
{
	int total = fuzz_corpus_run("tlshello", argc, argv);

	if (total < 0)
		return 1;
	printf("fuzz-tlshello: %d inputs, no crash\n", total);
	return 0;
}
#endif
