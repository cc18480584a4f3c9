/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Per-source connection counts: the limit, no limit, sources counted and freed at zero, a hundred thousand
 * sources (the tables grow and shrink again), a key never taken, and four threads hammering shared keys
 * while every holder checks that no key is ever over its limit. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../daemon/addr.h"
#include "../daemon/srclimit.h"
#include "testutil.h"

/* Sanitizer builds set EVFD_TEST_SCALE to divide iteration counts. */
static unsigned long scaled(unsigned long n, unsigned long min)
{
	const char *s = getenv("EVFD_TEST_SCALE");
	unsigned long d = s ? strtoul(s, NULL, 10) : 1;

	n /= d ? d : 1;
	return n < min ? min : n;
}

static struct evfdd_source_key key(unsigned tag, uint64_t v)
{
	struct evfdd_source_key k;

	memset(&k, 0, sizeof(k));
	k.b[0] = (unsigned char)tag;
	memcpy(k.b + 1, &v, 8);
	return k;
}

static void test_limit(void)
{
	struct evfdd_srclimit *t = evfdd_srclimit_new();
	struct evfdd_source_key a = key(4, 1), b = key(4, 2), a6 = key(6, 1);

	TU_CHECK(t, "new");
	TU_CHECK(evfdd_srclimit_sources(t) == 0, "empty");
	for (int i = 0; i < 3; i++)
		TU_CHECK(evfdd_srclimit_take(t, &a, 3), "take %d", i);
	TU_CHECK(!evfdd_srclimit_take(t, &a, 3), "a 4th over the limit");
	TU_CHECK(!evfdd_srclimit_take(t, &a, 2), "a lower limit (after a reload) refuses too");
	TU_CHECK(evfdd_srclimit_take(t, &a, 4), "a higher limit takes one more");
	TU_CHECK(evfdd_srclimit_sources(t) == 1, "one source: %zu", evfdd_srclimit_sources(t));
	/* another key, and the same bytes under another family tag, are other sources */
	TU_CHECK(evfdd_srclimit_take(t, &b, 1) && !evfdd_srclimit_take(t, &b, 1), "b");
	TU_CHECK(evfdd_srclimit_take(t, &a6, 1), "a6");
	TU_CHECK(evfdd_srclimit_sources(t) == 3, "three sources: %zu", evfdd_srclimit_sources(t));
	evfdd_srclimit_give(t, &a);
	TU_CHECK(evfdd_srclimit_take(t, &a, 4) && !evfdd_srclimit_take(t, &a, 4), "given back, taken again");
	for (int i = 0; i < 4; i++)
		evfdd_srclimit_give(t, &a);
	evfdd_srclimit_give(t, &b);
	TU_CHECK(evfdd_srclimit_sources(t) == 1, "a and b freed at zero: %zu", evfdd_srclimit_sources(t));
	/* a key with no count is ignored, and does not disturb another */
	evfdd_srclimit_give(t, &a);
	evfdd_srclimit_give(t, &b);
	TU_CHECK(evfdd_srclimit_sources(t) == 1, "%zu", evfdd_srclimit_sources(t));
	TU_CHECK(evfdd_srclimit_take(t, &a, 1) && !evfdd_srclimit_take(t, &a, 1), "a from zero again");
	/* 0: no limit, but counted */
	for (int i = 0; i < 1000; i++)
		TU_CHECK(evfdd_srclimit_take(t, &b, 0), "no limit %d", i);
	TU_CHECK(!evfdd_srclimit_take(t, &b, 1000), "counted while unlimited");
	TU_CHECK(evfdd_srclimit_take(t, &b, 1001), "1001");
	evfdd_srclimit_free(t);   /* with entries left: freed (ASan's leak check) */
	evfdd_srclimit_free(NULL);
	printf("ok limits\n");
}

static void test_many(void)
{
	struct evfdd_srclimit *t = evfdd_srclimit_new();
	unsigned long n = scaled(100000, 5000);

	TU_CHECK(t, "new");
	for (unsigned long i = 0; i < n; i++) {
		struct evfdd_source_key k = key(6, i * 0x10000);

		TU_CHECK(evfdd_srclimit_take(t, &k, 2), "take %lu", i);
		TU_CHECK(evfdd_srclimit_take(t, &k, 2), "take %lu again", i);
	}
	TU_CHECK(evfdd_srclimit_sources(t) == n, "%zu sources, want %lu", evfdd_srclimit_sources(t), n);
	for (unsigned long i = 0; i < n; i++) {
		struct evfdd_source_key k = key(6, i * 0x10000);

		TU_CHECK(!evfdd_srclimit_take(t, &k, 2), "over the limit %lu", i);
		evfdd_srclimit_give(t, &k);
	}
	TU_CHECK(evfdd_srclimit_sources(t) == n, "one left each: %zu", evfdd_srclimit_sources(t));
	for (unsigned long i = 0; i < n; i++) {
		struct evfdd_source_key k = key(6, i * 0x10000);

		evfdd_srclimit_give(t, &k);
	}
	TU_CHECK(evfdd_srclimit_sources(t) == 0, "all gone: %zu", evfdd_srclimit_sources(t));
	/* after shrinking, the table still works */
	for (unsigned long i = 0; i < 100; i++) {
		struct evfdd_source_key k = key(4, i);

		TU_CHECK(evfdd_srclimit_take(t, &k, 1) && !evfdd_srclimit_take(t, &k, 1), "%lu", i);
	}
	TU_CHECK(evfdd_srclimit_sources(t) == 100, "%zu", evfdd_srclimit_sources(t));
	evfdd_srclimit_free(t);
	printf("ok %lu sources\n", n);
}

static struct evfdd_sockaddr sockaddr(const char *ip, uint16_t port)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	if (inet_pton(AF_INET, ip, &a.u.in.sin_addr) == 1) {
		a.u.in.sin_family = AF_INET;
		a.u.in.sin_port = htons(port);
		a.len = sizeof(a.u.in);
	} else {
		TU_CHECK(inet_pton(AF_INET6, ip, &a.u.in6.sin6_addr) == 1, "%s", ip);
		a.u.in6.sin6_family = AF_INET6;
		a.u.in6.sin6_port = htons(port);
		a.len = sizeof(a.u.in6);
	}
	return a;
}

/* With the keys addr.h makes: a client counts once whichever socket it came in on, a /64 is one source. */
static void test_addr_keys(void)
{
	static const char *const same[][2] = {
		{ "192.0.2.7", "::ffff:192.0.2.7" },
		{ "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff" },
	};
	struct evfdd_srclimit *t = evfdd_srclimit_new();
	struct evfdd_source_key k1, k2;

	TU_CHECK(t, "new");
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		struct evfdd_sockaddr a = sockaddr(same[i][0], 1000), b = sockaddr(same[i][1], 2000);

		TU_CHECK(evfdd_addr_source_key(&a, &k1) && evfdd_addr_source_key(&b, &k2), "%s", same[i][0]);
		TU_CHECK(evfdd_srclimit_take(t, &k1, 2) && evfdd_srclimit_take(t, &k2, 2), "%s", same[i][0]);
		TU_CHECK(!evfdd_srclimit_take(t, &k1, 2) && !evfdd_srclimit_take(t, &k2, 2), "%s and %s are one source",
		         same[i][0], same[i][1]);
	}
	{
		struct evfdd_sockaddr a = sockaddr("2001:db8:1:3::1", 1), b = sockaddr("192.0.2.8", 1);

		TU_CHECK(evfdd_addr_source_key(&a, &k1) && evfdd_srclimit_take(t, &k1, 1), "another /64");
		TU_CHECK(evfdd_addr_source_key(&b, &k2) && evfdd_srclimit_take(t, &k2, 1), "another IPv4 address");
	}
	TU_CHECK(evfdd_srclimit_sources(t) == 4, "%zu", evfdd_srclimit_sources(t));
	evfdd_srclimit_free(t);
	printf("ok source keys from addresses\n");
}

#define THREADS 4
#define KEYS 8
#define MAX 3
#define HELD 4   /* each thread tries to hold up to this many connections at once */

static struct evfdd_srclimit *shared;
static atomic_int holders[KEYS];
static atomic_ulong refused_total;

static void *hammer(void *arg)
{
	unsigned long iters = scaled(200000, 10000), refused = 0;
	unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
	int held[HELD], nheld = 0;

	for (unsigned long i = 0; i < iters; i++) {
		seed = seed * 1103515245u + 12345u;
		if (nheld == HELD || (nheld > 0 && (seed >> 16) % 2)) {
			int j = (int)((seed >> 8) % (unsigned)nheld), kx = held[j];
			struct evfdd_source_key k = key(4, (uint64_t)kx);

			held[j] = held[--nheld];
			atomic_fetch_sub(&holders[kx], 1);
			evfdd_srclimit_give(shared, &k);
		} else {
			int kx = (int)((seed >> 20) % KEYS);
			struct evfdd_source_key k = key(4, (uint64_t)kx);

			if (evfdd_srclimit_take(shared, &k, MAX)) {
				int h = atomic_fetch_add(&holders[kx], 1) + 1;

				TU_CHECK(h <= MAX, "key %d held %d times, limit %d", kx, h, MAX);
				held[nheld++] = kx;
			} else {
				refused++;
			}
		}
	}
	while (nheld > 0) {
		struct evfdd_source_key k = key(4, (uint64_t)held[--nheld]);

		atomic_fetch_sub(&holders[held[nheld]], 1);
		evfdd_srclimit_give(shared, &k);
	}
	atomic_fetch_add(&refused_total, refused);
	return NULL;
}

static void test_threads(void)
{
	pthread_t th[THREADS];

	shared = evfdd_srclimit_new();
	TU_CHECK(shared, "new");
	for (long i = 0; i < THREADS; i++)
		TU_CHECK(pthread_create(&th[i], NULL, hammer, (void *)(intptr_t)i) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	TU_CHECK(evfdd_srclimit_sources(shared) == 0, "%zu sources left", evfdd_srclimit_sources(shared));
	TU_CHECK(atomic_load(&refused_total) > 0, "the limit was never reached: the test tests nothing");
	for (int i = 0; i < KEYS; i++) {
		struct evfdd_source_key k = key(4, (uint64_t)i);

		TU_CHECK(atomic_load(&holders[i]) == 0, "holders[%d]", i);
		for (int j = 0; j < MAX; j++)
			TU_CHECK(evfdd_srclimit_take(shared, &k, MAX), "key %d: count leaked", i);
	}
	evfdd_srclimit_free(shared);
	printf("ok %d threads, %lu refused\n", THREADS, atomic_load(&refused_total));
}

int main(void)
{
	test_limit();
	test_many();
	test_addr_keys();
	test_threads();
	printf("test-srclimit: all passed\n");
	return 0;
}
