/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the PROXY protocol parser and builder (daemon/proxyproto.h). For any bytes:
 *  - the parse gives a length within them, 0, -EBADMSG or -EMSGSIZE, never reading past them (each parse is of
 *    a heap block of exactly its length, so ASan sees a read past it);
 *  - the answers for the input's prefixes agree: 0 until the answer, then that answer (or, after a complete
 *    header of length h, h for every longer prefix);
 *  - after a complete header, building one of the same version from the result and parsing it gives the same
 *    addresses (IPv4-mapped pairs come back as IPv4: the builder writes them so), and building again from
 *    that gives the same bytes;
 *  - the input's bytes taken as two struct evfdd_sockaddr (garbage lengths and families included) build a
 *    header that parses back whole.
 * A violation aborts, which the fuzzer reports.
 *
 * Under libFuzzer (clang), from the top of a configured tree:
 *	clang -g -O1 -fsanitize=fuzzer,address,undefined -DEVFDD_FUZZING -include config.h \
 *		tests/fuzz-proxy.c daemon/proxyproto.c -o /tmp/fuzz-proxy
 *	mkdir -p /tmp/fuzz-work
 *	/tmp/fuzz-proxy -max_total_time=60 -max_len=1024 /tmp/fuzz-work tests/fuzz-corpus/proxy
 * (new inputs go to /tmp/fuzz-work; copy the interesting ones into tests/fuzz-corpus/proxy).
 *
 * Without EVFDD_FUZZING this file has its own main, which runs the target once over every file in
 * tests/fuzz-corpus/proxy (or the files and directories given as arguments): `make check` does that.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "../daemon/proxyproto.h"
#include "fuzzmain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                                \
	do {                                                                                             \
		if (!(cond)) {                                                                           \
			fprintf(stderr, "fuzz-proxy: %s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                                  \
			abort();                                                                         \
		}                                                                                        \
	} while (0)

/* Parse the first @n bytes of @data from a heap block of exactly @n bytes. */
static int parse_n(const uint8_t *data, size_t n, struct evfdd_proxy_info *out)
{
	unsigned char *copy = malloc(n ? n : 1);
	int r;

	FUZZ_ASSERT(copy);
	memcpy(copy, data, n);
	r = evfdd_proxy_parse(copy, n, out);
	free(copy);
	return r;
}

/* Every prefix's answer agrees with @r, the answer for all @size bytes: all of them when few, else a sample
 * that includes the prefixes around the answer's own length. */
static void check_prefixes(const uint8_t *data, size_t size, int r)
{
	size_t step = size <= 512 ? 1 : size / 256;
	int seen = 0;

	for (size_t k = 0; k < size; k += step) {
		int rk = parse_n(data, k, NULL);

		if (r > 0) {
			FUZZ_ASSERT(rk == ((size_t)r <= k ? r : 0));
		} else {
			FUZZ_ASSERT(rk == 0 || rk == r);
			FUZZ_ASSERT(seen == 0 || rk == seen);	/* an error, once given, stays */
			seen = rk;
		}
	}
	if (r > 0) {
		FUZZ_ASSERT(parse_n(data, (size_t)r - 1, NULL) == 0);
		FUZZ_ASSERT(parse_n(data, (size_t)r, NULL) == r);
	}
}

static bool v4ish(const struct evfdd_sockaddr *a)
{
	return a->u.sa.sa_family == AF_INET ||
	       (a->u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&a->u.in6.sin6_addr));
}

/* @a as AF_INET (it is v4ish). */
static void unmap(struct evfdd_sockaddr *a)
{
	struct evfdd_sockaddr v;

	if (a->u.sa.sa_family == AF_INET)
		return;
	memset(&v, 0, sizeof(v));
	v.u.in.sin_family = AF_INET;
	v.u.in.sin_port = a->u.in6.sin6_port;
	memcpy(&v.u.in.sin_addr, a->u.in6.sin6_addr.s6_addr + 12, 4);
	v.len = sizeof(v.u.in);
	*a = v;
}

/* What building from @pi must say: the same, with a pair of IPv4 or mapped addresses as IPv4. */
static void expected(const struct evfdd_proxy_info *pi, struct evfdd_proxy_info *want)
{
	*want = *pi;
	if (!pi->local && v4ish(&pi->src) && v4ish(&pi->dst)) {
		unmap(&want->src);
		unmap(&want->dst);
	}
}

/* A complete header parsed into @pi: build it again and compare. */
static void check_rebuild(int version, const struct evfdd_proxy_info *pi)
{
	unsigned char h1[EVFDD_PROXY_BUILD_MAX], h2[EVFDD_PROXY_BUILD_MAX];
	struct evfdd_proxy_info pi2, pi3, want;
	int n1, n2;

	n1 = evfdd_proxy_build(version, pi->local ? NULL : &pi->src, pi->local ? NULL : &pi->dst, h1, sizeof(h1));
	FUZZ_ASSERT(n1 > 0 && (version == 2 || n1 <= EVFDD_PROXY_V1_MAX));
	FUZZ_ASSERT(parse_n(h1, (size_t)n1, &pi2) == n1);
	expected(pi, &want);
	FUZZ_ASSERT(pi2.local == want.local);
	FUZZ_ASSERT(memcmp(&pi2.src, &want.src, sizeof(want.src)) == 0);
	FUZZ_ASSERT(memcmp(&pi2.dst, &want.dst, sizeof(want.dst)) == 0);
	n2 = evfdd_proxy_build(version, pi2.local ? NULL : &pi2.src, pi2.local ? NULL : &pi2.dst, h2, sizeof(h2));
	FUZZ_ASSERT(n2 == n1 && memcmp(h1, h2, (size_t)n1) == 0);
	FUZZ_ASSERT(parse_n(h2, (size_t)n2, &pi3) == n2);
	FUZZ_ASSERT(pi3.local == pi2.local && memcmp(&pi3.src, &pi2.src, sizeof(pi2.src)) == 0 &&
		    memcmp(&pi3.dst, &pi2.dst, sizeof(pi2.dst)) == 0);
}

/* The input's bytes as two addresses, whatever they hold: the builder must write a header that parses. */
static void check_build_raw(const uint8_t *data, size_t size)
{
	struct evfdd_sockaddr a[2];
	unsigned char h[EVFDD_PROXY_BUILD_MAX];
	struct evfdd_proxy_info pi;
	int version, n;

	if (size < 1 + sizeof(a))
		return;
	version = data[0] & 1 ? 1 : 2;
	memcpy(a, data + 1, sizeof(a));
	n = evfdd_proxy_build(version, &a[0], &a[1], h, sizeof(h));
	FUZZ_ASSERT(n > 0 && (version == 2 || n <= EVFDD_PROXY_V1_MAX));
	FUZZ_ASSERT(parse_n(h, (size_t)n, &pi) == n);
	FUZZ_ASSERT(evfdd_proxy_build(version, &a[0], &a[1], h, (size_t)n - 1) == -ENOSPC);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evfdd_proxy_info pi;
	int r = parse_n(data, size, &pi);

	FUZZ_ASSERT(r == 0 || r == -EBADMSG || r == -EMSGSIZE || (r > 0 && (size_t)r <= size));
	FUZZ_ASSERT(r <= EVFDD_PROXY_MAX);
	check_prefixes(data, size, r);
	if (r > 0) {
		FUZZ_ASSERT(data[0] == 'P' ? r <= EVFDD_PROXY_V1_MAX : r >= 16);
		if (!pi.local)
			FUZZ_ASSERT(pi.src.u.sa.sa_family == pi.dst.u.sa.sa_family);
		check_rebuild(data[0] == 'P' ? 1 : 2, &pi);
	}
	check_build_raw(data, size);
	return 0;
}

#ifndef EVFDD_FUZZING
int main(int argc, char **argv)
{
	int total = fuzz_corpus_run("proxy", argc, argv);

	if (total < 0)
		return 1;
	printf("fuzz-proxy: %d inputs, no crash\n", total);
	return 0;
}
#endif
