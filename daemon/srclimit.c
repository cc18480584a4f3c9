/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Open connections per source: sharded hash tables; see srclimit.h. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include "srclimit.h"
#include "util.h"

/* Enough shards that 4096 rings rarely meet on one mutex; each is a cache line of its own. */
#define SL_SHARDS 64
#define SL_SHARD_BITS 6
#define SL_MIN_BUCKETS 16

struct sl_entry {
	struct sl_entry *next;
	struct evfdd_source_key key;
	uint32_t count;                  /* > 0: an entry at zero is freed */
};

struct sl_shard {
	_Alignas(64) pthread_mutex_t lock;
	struct sl_entry **buckets;       /* nbuckets, a power of two */
	size_t nbuckets;
	atomic_size_t n;                 /* entries; written under lock, read without by evfdd_srclimit_sources */
};

struct evfdd_srclimit {
	uint64_t k0, k1;                 /* the hash's key: random per table */
	struct sl_shard shard[SL_SHARDS];
};

#define SL_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SL_SIPROUND                                                                                      \
	do {                                                                                             \
		v0 += v1; v1 = SL_ROTL(v1, 13); v1 ^= v0; v0 = SL_ROTL(v0, 32);                          \
		v2 += v3; v3 = SL_ROTL(v3, 16); v3 ^= v2;                                                \
		v0 += v3; v3 = SL_ROTL(v3, 21); v3 ^= v0;                                                \
		v2 += v1; v1 = SL_ROTL(v1, 17); v1 ^= v2; v2 = SL_ROTL(v2, 32);                          \
	} while (0)

/* SipHash-1-3 of the 9-byte key: keyed, so that the sources a client can choose (any /64 of its /48) cannot
 * be picked to fall into one chain, yet cheap (one compression round per 8 bytes). */
static uint64_t sl_hash(const struct evfdd_srclimit *t, const struct evfdd_source_key *k)
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ t->k0, v1 = 0x646f72616e646f6dULL ^ t->k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ t->k0, v3 = 0x7465646279746573ULL ^ t->k1, m = 0;
	const size_t len = sizeof(k->b);
	size_t i = 0;

	for (; i + 8 <= len; i += 8) {
		memcpy(&m, k->b + i, 8);
		v3 ^= m;
		SL_SIPROUND;
		v0 ^= m;
	}
	m = (uint64_t)len << 56;
	for (size_t j = 0; i + j < len; j++)
		m |= (uint64_t)k->b[i + j] << (8 * j);
	v3 ^= m;
	SL_SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SL_SIPROUND;
	SL_SIPROUND;
	SL_SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static struct sl_entry **sl_find(struct sl_shard *s, uint64_t h, const struct evfdd_source_key *k)
{
	struct sl_entry **p = &s->buckets[h & (s->nbuckets - 1)];

	while (*p && memcmp((*p)->key.b, k->b, sizeof(k->b)) != 0)
		p = &(*p)->next;
	return p;
}

/* Rehash @s into @nb buckets; when the array cannot be had, the chains just stay longer. */
static void sl_resize(struct evfdd_srclimit *t, struct sl_shard *s, size_t nb)
{
	struct sl_entry **nbk = calloc(nb, sizeof(*nbk));

	if (!nbk)
		return;
	for (size_t i = 0; i < s->nbuckets; i++) {
		struct sl_entry *e = s->buckets[i], *next;

		for (; e; e = next) {
			size_t j = sl_hash(t, &e->key) & (nb - 1);

			next = e->next;
			e->next = nbk[j];
			nbk[j] = e;
		}
	}
	free(s->buckets);
	s->buckets = nbk;
	s->nbuckets = nb;
}

struct evfdd_srclimit *evfdd_srclimit_new(void)
{
	struct evfdd_srclimit *t = aligned_alloc(64, sizeof(*t));
	uint64_t seed[2];

	if (!t)
		return NULL;
	memset(t, 0, sizeof(*t));
	if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) {
		/* No entropy yet (early boot): a seed an attacker cannot read is still better than none. */
		seed[0] = util_now_ns(CLOCK_MONOTONIC) ^ (uint64_t)(uintptr_t)t;
		seed[1] = util_now_ns(CLOCK_REALTIME) * 0x9e3779b97f4a7c15ULL;
	}
	t->k0 = seed[0];
	t->k1 = seed[1];
	for (int i = 0; i < SL_SHARDS; i++) {
		struct sl_shard *s = &t->shard[i];

		s->buckets = calloc(SL_MIN_BUCKETS, sizeof(*s->buckets));
		if (!s->buckets) {
			while (i-- > 0) {
				free(t->shard[i].buckets);
				pthread_mutex_destroy(&t->shard[i].lock);
			}
			free(t);
			return NULL;
		}
		s->nbuckets = SL_MIN_BUCKETS;
		pthread_mutex_init(&s->lock, NULL);
	}
	return t;
}

void evfdd_srclimit_free(struct evfdd_srclimit *t)
{
	if (!t)
		return;
	for (int i = 0; i < SL_SHARDS; i++) {
		struct sl_shard *s = &t->shard[i];

		for (size_t j = 0; j < s->nbuckets; j++)
			for (struct sl_entry *e = s->buckets[j], *next; e; e = next) {
				next = e->next;
				free(e);
			}
		free(s->buckets);
		pthread_mutex_destroy(&s->lock);
	}
	free(t);
}

bool evfdd_srclimit_take(struct evfdd_srclimit *t, const struct evfdd_source_key *k, uint32_t max)
{
	uint64_t h = sl_hash(t, k);
	struct sl_shard *s = &t->shard[h >> (64 - SL_SHARD_BITS)];
	struct sl_entry **p, *fresh = NULL;
	bool taken;

	if (max == 0)
		max = UINT32_MAX;
	pthread_mutex_lock(&s->lock);
	p = sl_find(s, h, k);
	if (!*p) {
		/* A new source: allocate outside the lock, then look again (another ring may have added it). */
		pthread_mutex_unlock(&s->lock);
		fresh = malloc(sizeof(*fresh));
		if (!fresh)
			return false;
		pthread_mutex_lock(&s->lock);
		p = sl_find(s, h, k);
		if (!*p) {
			fresh->key = *k;
			fresh->count = 0;
			fresh->next = NULL;
			*p = fresh;
			fresh = NULL;
			atomic_store_explicit(&s->n, atomic_load_explicit(&s->n, memory_order_relaxed) + 1,
					      memory_order_relaxed);
		}
	}
	/* max >= 1 here, so a new entry is always taken: no entry stays at zero. */
	taken = (*p)->count < max;
	if (taken)
		(*p)->count++;
	if (atomic_load_explicit(&s->n, memory_order_relaxed) > s->nbuckets)
		sl_resize(t, s, s->nbuckets * 2);
	pthread_mutex_unlock(&s->lock);
	free(fresh);
	return taken;
}

void evfdd_srclimit_give(struct evfdd_srclimit *t, const struct evfdd_source_key *k)
{
	uint64_t h = sl_hash(t, k);
	struct sl_shard *s = &t->shard[h >> (64 - SL_SHARD_BITS)];
	struct sl_entry **p, *gone = NULL;
	size_t n;

	pthread_mutex_lock(&s->lock);
	p = sl_find(s, h, k);
	if (*p && --(*p)->count == 0) {
		gone = *p;
		*p = gone->next;
		n = atomic_load_explicit(&s->n, memory_order_relaxed) - 1;
		atomic_store_explicit(&s->n, n, memory_order_relaxed);
		/* Shrink once most sources have gone, so a flood's peak does not stay allocated. */
		if (s->nbuckets > SL_MIN_BUCKETS && n < s->nbuckets / 8)
			sl_resize(t, s, s->nbuckets / 2);
	}
	pthread_mutex_unlock(&s->lock);
	free(gone);
}

size_t evfdd_srclimit_sources(struct evfdd_srclimit *t)
{
	size_t n = 0;

	for (int i = 0; i < SL_SHARDS; i++)
		n += atomic_load_explicit(&t->shard[i].n, memory_order_relaxed);
	return n;
}
