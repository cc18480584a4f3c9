/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Backends: shared state and picking one; see backend.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/un.h>
#include <time.h>
#include "backend.h"
#include "log.h"
#include "util.h"

const char *evfdd_backend_health_name(enum evfdd_backend_health h)
{
	return h == EVFDD_HEALTH_UP ? "up" : "down";
}

/* ---- the shared state ---------------------------------------------------------------------------- */

static struct evfdd_backend *backend_new(const char *service, const struct evfdd_backend_conf *c)
{
	struct evfdd_backend *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	atomic_init(&b->refs, 1);
	pthread_mutex_init(&b->lock, NULL);
	atomic_init(&b->health, EVFDD_HEALTH_UP);
	b->service = strdup(service);
	b->name = strdup(c->ep.text);
	if (c->host) {
		b->host = strdup(c->host);
		b->port = strdup(c->port);
	}
	if (!b->service || !b->name || (c->host && (!b->host || !b->port))) {
		evfdd_backend_unref(b);
		return NULL;
	}
	return b;
}

struct evfdd_backend *evfdd_backend_ref(struct evfdd_backend *b)
{
	atomic_fetch_add(&b->refs, 1);
	return b;
}

void evfdd_backend_unref(struct evfdd_backend *b)
{
	if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&b->lock);
	free(b->addrs);
	free(b->service);
	free(b->name);
	free(b->host);
	free(b->port);
	free(b);
}

bool evfdd_backend_addr(struct evfdd_backend *b, size_t k, struct evfdd_sockaddr *out)
{
	bool ok;

	pthread_mutex_lock(&b->lock);
	ok = k < b->naddrs;
	if (ok)
		*out = b->addrs[k];
	pthread_mutex_unlock(&b->lock);
	return ok;
}

void evfdd_backend_set_addrs(struct evfdd_backend *b, struct evfdd_endpoint *ep)
{
	struct evfdd_sockaddr *old;

	pthread_mutex_lock(&b->lock);
	old = b->addrs;
	b->addrs = ep->addrs;
	b->naddrs = ep->naddrs;
	pthread_mutex_unlock(&b->lock);
	ep->addrs = NULL;
	ep->naddrs = 0;
	free(old);
}

/* "[SERVICE] backend NAME @what", with the journal fields SERVICE=, BACKEND= and STATE=@state. */
static void backend_log(struct evfdd_backend *b, int level, const char *state, const char *what)
{
	char f_service[EVFDD_CONFIG_NAME_MAX + 16], f_backend[160], f_state[32];
	const char *fields[] = { f_service, f_backend, f_state, NULL };

	snprintf(f_service, sizeof(f_service), "SERVICE=%s", b->service);
	snprintf(f_backend, sizeof(f_backend), "BACKEND=%s", b->name);
	snprintf(f_state, sizeof(f_state), "STATE=%s", state);
	log_fields(level, fields, "[%s] backend %s %s", b->service, b->name, what);
}

static void backend_changed(struct evfdd_backend *b)
{
	atomic_fetch_add(&b->state_changes, 1);
	atomic_store(&b->last_change_usec, util_now_ns(CLOCK_REALTIME) / 1000);
}

bool evfdd_backend_set_health(struct evfdd_backend *b, enum evfdd_backend_health h, const char *why)
{
	int expected = h == EVFDD_HEALTH_UP ? EVFDD_HEALTH_DOWN : EVFDD_HEALTH_UP;
	char what[256];

	if (!atomic_compare_exchange_strong(&b->health, &expected, (int)h))
		return false;
	backend_changed(b);
	snprintf(what, sizeof(what), h == EVFDD_HEALTH_UP ? "is up (%s)" : "is down: %s", why);
	backend_log(b, h == EVFDD_HEALTH_UP ? LOG_NOTICE : LOG_WARNING, evfdd_backend_health_name(h), what);
	return true;
}

bool evfdd_backend_set_drained(struct evfdd_backend *b, bool drained, const char *who)
{
	char what[256];

	if (atomic_exchange(&b->drained, drained) == drained)
		return false;
	backend_changed(b);
	snprintf(what, sizeof(what), drained ? "drained by %s: no new connections, open ones carry on" :
		 "enabled by %s", who);
	backend_log(b, LOG_NOTICE, drained ? "drained" : "enabled", what);
	return true;
}

/* ---- a service's backends ------------------------------------------------------------------------- */

/* nginx's smooth weighted round-robin over the backends of one tier: weights 1:2:3 give c b a b c c, so
 * heavier backends are spread out rather than served in runs. */
static int pool_order(struct evfdd_pool *p, unsigned tier)
{
	unsigned total = 0, i, k;
	long cur[EVFDD_CONFIG_MAX_BACKENDS] = { 0 };

	for (i = 0; i < p->n; i++)
		if (p->v[i].backup == (tier == 1))
			total += p->v[i].weight;
	p->norder[tier] = total;
	if (!total)
		return 0;
	p->order[tier] = calloc(total, sizeof(*p->order[tier]));
	if (!p->order[tier])
		return -ENOMEM;
	for (k = 0; k < total; k++) {
		int best = -1;

		for (i = 0; i < p->n; i++) {
			if (p->v[i].backup != (tier == 1))
				continue;
			cur[i] += p->v[i].weight;
			if (best < 0 || cur[i] > cur[best])
				best = (int)i;
		}
		cur[best] -= (long)total;
		p->order[tier][k] = (uint16_t)best;
	}
	return 0;
}

int evfdd_pool_init(struct evfdd_pool *p, const struct evfdd_service *s, const struct evfdd_pool *prev)
{
	unsigned i;

	memset(p, 0, sizeof(*p));
	atomic_init(&p->rr[0], 0);
	atomic_init(&p->rr[1], 0);
	p->balance = s->balance;
	p->retries = s->retries;
	p->fall = s->fall;
	p->rise = s->rise;
	p->down_time_ms = s->down_time_ms;
	p->checked = s->check != EVFDD_CHECK_NONE;
	if (s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO)
		return 0;
	p->v = calloc(s->nbackends, sizeof(*p->v));
	if (!p->v)
		return -ENOMEM;
	p->n = (unsigned)s->nbackends;
	for (i = 0; i < p->n; i++) {
		const struct evfdd_backend_conf *c = &s->backends[i];
		struct evfdd_svc_backend *old = prev ? evfdd_pool_find(prev, c->ep.text) : NULL;

		p->v[i].weight = c->weight;
		p->v[i].maxconn = c->maxconn;
		p->v[i].backup = c->backup;
		p->v[i].b = old ? evfdd_backend_ref(old->b) : backend_new(s->name, c);
		if (!p->v[i].b)
			goto fail;
	}
	if (pool_order(p, 0) < 0 || pool_order(p, 1) < 0 || evfdd_pool_refresh(p, s) < 0)
		goto fail;
	return 0;
fail:
	evfdd_pool_clear(p);
	return -ENOMEM;
}

int evfdd_pool_init_route(struct evfdd_pool *rp, const struct evfdd_pool *all,
			  const struct evfdd_backend_conf *list, size_t n)
{
	int err = -ENOMEM;

	memset(rp, 0, sizeof(*rp));
	atomic_init(&rp->rr[0], 0);
	atomic_init(&rp->rr[1], 0);
	rp->balance = all->balance;
	rp->retries = all->retries;
	rp->fall = all->fall;
	rp->rise = all->rise;
	rp->down_time_ms = all->down_time_ms;
	rp->checked = all->checked;
	rp->v = calloc(n, sizeof(*rp->v));
	if (!rp->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct evfdd_svc_backend *sb = evfdd_pool_find(all, list[i].ep.text);

		if (!sb) {
			err = -ENOENT;
			goto fail;
		}
		rp->v[i].b = evfdd_backend_ref(sb->b);
		rp->v[i].weight = list[i].weight;
		rp->v[i].maxconn = list[i].maxconn;
		rp->v[i].backup = list[i].backup;
		rp->n = (unsigned)i + 1;
	}
	if (pool_order(rp, 0) < 0 || pool_order(rp, 1) < 0)
		goto fail;
	return 0;
fail:
	evfdd_pool_clear(rp);
	return err;
}

int evfdd_pool_refresh(struct evfdd_pool *p, const struct evfdd_service *s)
{
	for (unsigned i = 0; i < p->n; i++) {
		const struct evfdd_backend_conf *c = &s->backends[i];
		struct evfdd_endpoint ep = { .naddrs = c->ep.naddrs };

		ep.addrs = malloc(c->ep.naddrs * sizeof(*ep.addrs));
		if (!ep.addrs)
			return -ENOMEM;
		memcpy(ep.addrs, c->ep.addrs, c->ep.naddrs * sizeof(*ep.addrs));
		evfdd_backend_set_addrs(p->v[i].b, &ep);
	}
	return 0;
}

void evfdd_pool_clear(struct evfdd_pool *p)
{
	for (unsigned i = 0; i < p->n; i++)
		evfdd_backend_unref(p->v[i].b);
	free(p->v);
	free(p->order[0]);
	free(p->order[1]);
	p->v = NULL;
	p->n = 0;
	p->order[0] = p->order[1] = NULL;
}

bool evfdd_pool_same(const struct evfdd_pool *p, const struct evfdd_service *s)
{
	bool echo = s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO;

	if ((echo ? 0 : s->nbackends) != p->n || p->balance != s->balance || p->retries != s->retries ||
	    p->fall != s->fall || p->rise != s->rise || p->down_time_ms != s->down_time_ms ||
	    p->checked != (s->check != EVFDD_CHECK_NONE))
		return false;
	for (unsigned i = 0; i < p->n; i++) {
		const struct evfdd_backend_conf *c = &s->backends[i];

		if (strcmp(p->v[i].b->name, c->ep.text) || p->v[i].weight != c->weight ||
		    p->v[i].maxconn != c->maxconn || p->v[i].backup != c->backup)
			return false;
	}
	return true;
}

struct evfdd_svc_backend *evfdd_pool_find(const struct evfdd_pool *p, const char *name)
{
	for (unsigned i = 0; i < p->n; i++)
		if (strcmp(p->v[i].b->name, name) == 0)
			return &p->v[i];
	return NULL;
}

/* ---- picking -------------------------------------------------------------------------------------- */

enum avail { AVAIL_OK, AVAIL_TRIAL, AVAIL_DOWN, AVAIL_DRAINED, AVAIL_FULL, AVAIL_TRIED };

static enum avail pool_avail(const struct evfdd_pool *p, unsigned i, const uint16_t *tried, unsigned ntried,
			     uint64_t now_ns)
{
	struct evfdd_backend *b = p->v[i].b;

	for (unsigned k = 0; k < ntried; k++)
		if (tried[k] == i)
			return AVAIL_TRIED;
	if (atomic_load_explicit(&b->drained, memory_order_relaxed))
		return AVAIL_DRAINED;
	if (atomic_load_explicit(&b->health, memory_order_acquire) != EVFDD_HEALTH_UP)
		return !p->checked && now_ns >= atomic_load_explicit(&b->trial_ns, memory_order_relaxed) &&
		       !atomic_load_explicit(&b->trial, memory_order_relaxed) ? AVAIL_TRIAL : AVAIL_DOWN;
	if (p->v[i].maxconn && atomic_load_explicit(&b->open, memory_order_relaxed) >= p->v[i].maxconn)
		return AVAIL_FULL;
	return AVAIL_OK;
}

/* A per-thread generator for random-two: xorshift64*, seeded from the kernel once per thread. */
static uint64_t pool_random(void)
{
	static _Thread_local uint64_t x;

	if (!x && (getrandom(&x, sizeof(x), GRND_NONBLOCK) != sizeof(x) || !x))
		x = util_now_ns(CLOCK_MONOTONIC) | 1;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	return x * 0x2545F4914F6CDD1DULL;
}

/* 64-bit FNV-1a, then a finaliser (splitmix64's) so that nearby inputs spread. */
static uint64_t pool_hash(uint64_t h, const void *data, size_t n)
{
	const unsigned char *d = data;

	for (size_t i = 0; i < n; i++)
		h = (h ^ d[i]) * 0x100000001b3ULL;
	return h;
}

static uint64_t pool_mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The client's IP address as bytes (IPv4-mapped IPv6 as IPv4), or 0 when it has none. */
static size_t pool_src_key(const struct sockaddr *src, unsigned char key[16])
{
	if (!src)
		return 0;
	if (src->sa_family == AF_INET) {
		memcpy(key, &((const struct sockaddr_in *)src)->sin_addr, 4);
		return 4;
	}
	if (src->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)src)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(a)) {
			memcpy(key, &a->s6_addr[12], 4);
			return 4;
		}
		memcpy(key, a, 16);
		return 16;
	}
	return 0;
}

/* Weighted rendezvous hashing: the backend with the highest weight / -ln(u) for u uniform in (0,1) drawn
 * from hash(source, backend name). Removing a backend moves only the sources it had. A down backend due for
 * a trial competes too, so that its trial is one of its own sources' connections. */
static int pick_hash(const struct evfdd_pool *p, unsigned tier, const unsigned char *key, size_t klen,
		     const uint16_t *tried, unsigned ntried, uint64_t now)
{
	double best_score = -1;
	int best = -1;

	for (unsigned i = 0; i < p->n; i++) {
		uint64_t h;
		double u, score;

		enum avail av;

		if (p->v[i].backup != (tier == 1))
			continue;
		av = pool_avail(p, i, tried, ntried, now);
		if (av != AVAIL_OK && av != AVAIL_TRIAL)
			continue;
		h = pool_hash(0xcbf29ce484222325ULL, key, klen);
		h = pool_mix(pool_hash(h, p->v[i].b->name, strlen(p->v[i].b->name)));
		u = ((double)(h >> 11) + 0.5) / 9007199254740992.0;   /* (0, 1) */
		score = (double)p->v[i].weight / -log(u);
		if (score > best_score) {
			best_score = score;
			best = (int)i;
		}
	}
	return best;
}

static int pick_rr(struct evfdd_pool *p, unsigned tier, const uint16_t *tried, unsigned ntried, uint64_t now)
{
	unsigned len = p->norder[tier], start, k;

	if (!len)
		return -1;
	start = atomic_fetch_add_explicit(&p->rr[tier], 1, memory_order_relaxed);
	for (k = 0; k < len; k++) {
		unsigned i = p->order[tier][(start + k) % len];

		if (pool_avail(p, i, tried, ntried, now) == AVAIL_OK)
			return (int)i;
	}
	return -1;
}

/* Whether @a has fewer open connections per weight than @b. */
static bool pool_lighter(const struct evfdd_pool *p, unsigned a, unsigned b)
{
	uint64_t oa = atomic_load_explicit(&p->v[a].b->open, memory_order_relaxed);
	uint64_t ob = atomic_load_explicit(&p->v[b].b->open, memory_order_relaxed);

	return oa * p->v[b].weight < ob * p->v[a].weight;
}

static int pick_least(struct evfdd_pool *p, unsigned tier, const uint16_t *tried, unsigned ntried, uint64_t now)
{
	unsigned start = atomic_fetch_add_explicit(&p->rr[tier], 1, memory_order_relaxed), k;
	int best = -1;

	/* starting at a rotating place, so that ties are shared out */
	for (k = 0; k < p->n; k++) {
		unsigned i = (start + k) % p->n;

		if (p->v[i].backup != (tier == 1) || pool_avail(p, i, tried, ntried, now) != AVAIL_OK)
			continue;
		if (best < 0 || pool_lighter(p, i, (unsigned)best))
			best = (int)i;
	}
	return best;
}

static int pick_two(struct evfdd_pool *p, unsigned tier, const uint16_t *tried, unsigned ntried, uint64_t now)
{
	unsigned ok[EVFDD_CONFIG_MAX_BACKENDS], n = 0, total = 0, i, a, b;

	for (i = 0; i < p->n; i++)
		if (p->v[i].backup == (tier == 1) && pool_avail(p, i, tried, ntried, now) == AVAIL_OK) {
			ok[n++] = i;
			total += p->v[i].weight;
		}
	if (n <= 1)
		return n ? (int)ok[0] : -1;
	/* two draws by weight; the second again if it repeats the first (once: weights may be very uneven) */
	for (a = 0, i = (unsigned)(pool_random() % total); i >= p->v[ok[a]].weight; a++)
		i -= p->v[ok[a]].weight;
	for (int round = 0; round < 2; round++) {
		for (b = 0, i = (unsigned)(pool_random() % total); i >= p->v[ok[b]].weight; b++)
			i -= p->v[ok[b]].weight;
		if (b != a)
			break;
	}
	return (int)(pool_lighter(p, ok[b], ok[a]) ? ok[b] : ok[a]);
}

int evfdd_pool_pick(struct evfdd_pool *p, const struct sockaddr *src, const uint16_t *tried, unsigned ntried,
		    bool *trial, struct evfdd_pick_why *why)
{
	uint64_t now = util_now_ns(CLOCK_MONOTONIC);
	unsigned char key[16];
	size_t klen = p->balance == EVFDD_BALANCE_SOURCE_HASH ? pool_src_key(src, key) : 0;
	uint16_t skip[EVFDD_CONFIG_MAX_RETRIES + 1 + EVFDD_CONFIG_MAX_BACKENDS];
	unsigned nskip = ntried, tier, i, open;
	int pick;

	*trial = false;
	memcpy(skip, tried, ntried * sizeof(*tried));
	for (tier = 0; tier < 2; tier++) {
		/* A passively down backend whose down_time is over gets the next connection as its trial (with
		 * source-hash, the next of its own sources'); if the trial fails, the connection retries
		 * elsewhere. */
		for (i = 0; i < p->n && !klen; i++) {
			bool no = false;

			if (p->v[i].backup != (tier == 1) || pool_avail(p, i, tried, ntried, now) != AVAIL_TRIAL ||
			    !atomic_compare_exchange_strong(&p->v[i].b->trial, &no, true))
				continue;
			atomic_fetch_add(&p->v[i].b->open, 1);
			*trial = true;
			return (int)i;
		}
		for (;;) {
			switch (p->balance) {
			case EVFDD_BALANCE_LEAST_CONNECTIONS:
				pick = pick_least(p, tier, skip, nskip, now);
				break;
			case EVFDD_BALANCE_SOURCE_HASH:
				pick = klen ? pick_hash(p, tier, key, klen, skip, nskip, now)
					    : pick_rr(p, tier, skip, nskip, now);
				break;
			case EVFDD_BALANCE_RANDOM_TWO:
				pick = pick_two(p, tier, skip, nskip, now);
				break;
			default:
				pick = pick_rr(p, tier, skip, nskip, now);
				break;
			}
			if (pick < 0)
				break;
			if (pool_avail(p, (unsigned)pick, skip, nskip, now) == AVAIL_TRIAL) {
				bool no = false;

				if (atomic_compare_exchange_strong(&p->v[pick].b->trial, &no, true)) {
					atomic_fetch_add(&p->v[pick].b->open, 1);
					*trial = true;
					return pick;
				}
				skip[nskip++] = (uint16_t)pick;   /* another ring's connection is its trial */
				continue;
			}
			/* maxconn is a hard limit: another ring may have taken the last place meanwhile */
			open = atomic_fetch_add(&p->v[pick].b->open, 1);
			if (!p->v[pick].maxconn || open < p->v[pick].maxconn)
				return pick;
			atomic_fetch_sub(&p->v[pick].b->open, 1);
			skip[nskip++] = (uint16_t)pick;
		}
	}
	memset(why, 0, sizeof(*why));
	for (i = 0; i < p->n; i++)
		switch (pool_avail(p, i, NULL, 0, now)) {
		case AVAIL_DOWN:
		case AVAIL_TRIAL:
			why->down++;
			break;
		case AVAIL_DRAINED:
			why->drained++;
			break;
		case AVAIL_FULL:
			why->full++;
			break;
		default:
			break;
		}
	return -1;
}

void evfdd_pool_release(struct evfdd_pool *p, unsigned i)
{
	atomic_fetch_sub_explicit(&p->v[i].b->open, 1, memory_order_relaxed);
}

void evfdd_pool_result(struct evfdd_pool *p, unsigned i, int err, bool trial)
{
	struct evfdd_backend *b = p->v[i].b;
	char why[160];
	unsigned fails;

	if (!err) {
		atomic_fetch_add_explicit(&b->connections, 1, memory_order_relaxed);
		atomic_store_explicit(&b->fails, 0, memory_order_relaxed);
		if (trial) {
			atomic_store(&b->trial, false);
			if (!p->checked)
				evfdd_backend_set_health(b, EVFDD_HEALTH_UP, "trial connection succeeded");
		}
		return;
	}
	atomic_fetch_add_explicit(&b->connect_failures, 1, memory_order_relaxed);
	fails = atomic_fetch_add(&b->fails, 1) + 1;
	if (trial) {
		atomic_store(&b->trial_ns, util_now_ns(CLOCK_MONOTONIC) + (uint64_t)p->down_time_ms * 1000000);
		atomic_store(&b->trial, false);
		return;
	}
	if (fails < p->fall || atomic_load(&b->health) != EVFDD_HEALTH_UP)
		return;
	/* the trial's time first, so that no ring sees the backend down with an old one */
	atomic_store(&b->trial_ns, util_now_ns(CLOCK_MONOTONIC) + (uint64_t)p->down_time_ms * 1000000);
	if (p->checked)
		snprintf(why, sizeof(why), "%u connect failures in a row (last: %s); health checks will bring it "
			 "back", fails, err == -ETIMEDOUT ? "timed out" : strerror(-err));
	else
		snprintf(why, sizeof(why), "%u connect failures in a row (last: %s); trial in %gs", fails,
			 err == -ETIMEDOUT ? "timed out" : strerror(-err), p->down_time_ms / 1000.0);
	evfdd_backend_set_health(b, EVFDD_HEALTH_DOWN, why);
}
