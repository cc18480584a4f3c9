/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Services and their counters; see service.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "proxyproto.h"
#include "service.h"
#include "srclimit.h"

const struct evfdd_counter_info evfdd_counter_info[EVFDD_CTR_COUNT] = {
#define CTR_INFO(id, name_, help_) [EVFDD_CTR_##id] = { .name = #name_, .help = help_ },
	EVFDD_SVC_COUNTERS(CTR_INFO)
#undef CTR_INFO
#define END_INFO(id, name_, help_) [EVFDD_CTR_ENDS + EVFDD_END_##id] = { .name = #name_, .help = help_, .end = true },
	EVFDD_END_REASONS(END_INFO)
#undef END_INFO
};

/* ---- counters ------------------------------------------------------------------------------------- */

struct evfdd_svc_stats *evfdd_svc_stats_new(void)
{
	struct evfdd_svc_stats *st = calloc(1, sizeof(*st));

	if (!st)
		return NULL;
	atomic_init(&st->refs, 1);
	atomic_init(&st->open, 0);
	pthread_mutex_init(&st->lock, NULL);
	TAILQ_INIT(&st->blocks);
	log_ratelimit_init(&st->connect_rl, 10000, 5);
	log_ratelimit_init(&st->accept_rl, 10000, 5);
	log_ratelimit_init(&st->limit_rl, 10000, 5);
	log_ratelimit_init(&st->no_backend_rl, 10000, 5);
	log_ratelimit_init(&st->edge_rl, 10000, 5);
	st->sources = evfdd_srclimit_new();
	if (!st->sources) {
		evfdd_svc_stats_unref(st);
		return NULL;
	}
	return st;
}

struct evfdd_svc_stats *evfdd_svc_stats_ref(struct evfdd_svc_stats *st)
{
	atomic_fetch_add(&st->refs, 1);
	return st;
}

void evfdd_svc_stats_unref(struct evfdd_svc_stats *st)
{
	if (!st || atomic_fetch_sub(&st->refs, 1) != 1)
		return;
	/* Every block belongs to an acceptor, which holds a reference through its service. */
	pthread_mutex_destroy(&st->lock);
	log_ratelimit_destroy(&st->connect_rl);
	log_ratelimit_destroy(&st->accept_rl);
	log_ratelimit_destroy(&st->limit_rl);
	log_ratelimit_destroy(&st->no_backend_rl);
	log_ratelimit_destroy(&st->edge_rl);
	evfdd_srclimit_free(st->sources);
	free(st);
}

struct evfdd_svc_block *evfdd_svc_block_new(struct evfdd_svc_stats *st)
{
	struct evfdd_svc_block *b = aligned_alloc(_Alignof(struct evfdd_svc_block), sizeof(*b));
	unsigned i;

	if (!b)
		return NULL;
	for (i = 0; i < EVFDD_CTR_COUNT; i++)
		atomic_init(&b->v[i], 0);
	pthread_mutex_lock(&st->lock);
	TAILQ_INSERT_TAIL(&st->blocks, b, link);
	pthread_mutex_unlock(&st->lock);
	return b;
}

void evfdd_svc_block_free(struct evfdd_svc_stats *st, struct evfdd_svc_block *b)
{
	unsigned i;

	if (!b)
		return;
	pthread_mutex_lock(&st->lock);
	for (i = 0; i < EVFDD_CTR_COUNT; i++)
		st->base[i] += atomic_load_explicit(&b->v[i], memory_order_relaxed);
	TAILQ_REMOVE(&st->blocks, b, link);
	pthread_mutex_unlock(&st->lock);
	free(b);
}

void evfdd_svc_stats_read(struct evfdd_svc_stats *st, struct evfdd_counts *out)
{
	const struct evfdd_svc_block *b;
	unsigned i;

	pthread_mutex_lock(&st->lock);
	for (i = 0; i < EVFDD_CTR_COUNT; i++)
		out->v[i] += st->base[i];
	TAILQ_FOREACH(b, &st->blocks, link)
		for (i = 0; i < EVFDD_CTR_COUNT; i++)
			out->v[i] += atomic_load_explicit(&b->v[i], memory_order_relaxed);
	pthread_mutex_unlock(&st->lock);
	out->open += atomic_load_explicit(&st->open, memory_order_relaxed);
}

void evfdd_svc_stats_add(struct evfdd_svc_stats *st, enum evfdd_counter c, uint64_t n)
{
	pthread_mutex_lock(&st->lock);
	st->base[c] += n;
	pthread_mutex_unlock(&st->lock);
}

/* ---- services ------------------------------------------------------------------------------------- */

static int svc_cidrs(struct evfdd_cidr **out, size_t *nout, const struct evfdd_cidr *v, size_t n)
{
	*nout = n;
	if (!n)
		return 0;
	*out = malloc(n * sizeof(**out));
	if (!*out)
		return -ENOMEM;
	memcpy(*out, v, n * sizeof(**out));
	return 0;
}

/* The edge's settings of section @s, and its SNI routes' pools (over the backends of svc->pool). */
static int svc_edge_init(struct evfdd_svc *svc, const struct evfdd_service *s)
{
	unsigned n = (unsigned)s->nroutes + (s->sni_default.nbackends ? 1 : 0);

	svc->send_proxy = s->send_proxy;
	svc->accept_proxy = s->accept_proxy;
	svc->proxy_timeout_ms = s->proxy_timeout_ms;
	svc->max_per_source = s->max_per_source;
	svc->tcp_keepalive = s->tcp_keepalive;
	svc->keepalive_idle_s = s->keepalive_idle_s;
	svc->keepalive_intvl_s = s->keepalive_intvl_s;
	svc->keepalive_cnt = s->keepalive_cnt;
	svc->tcp_user_timeout_ms = s->tcp_user_timeout_ms;
	svc->has_source = s->has_source;
	svc->source = s->source;
	svc->access_log = s->access_log;
	svc->edge_text = strdup(s->edge_text ? s->edge_text : "");
	if (!svc->edge_text || svc_cidrs(&svc->proxy_from, &svc->nproxy_from, s->proxy_from, s->nproxy_from) < 0 ||
	    svc_cidrs(&svc->allow, &svc->nallow, s->allow, s->nallow) < 0 ||
	    svc_cidrs(&svc->deny, &svc->ndeny, s->deny, s->ndeny) < 0)
		return -ENOMEM;
	if (!n)
		return 0;
	svc->routes = calloc(n, sizeof(*svc->routes));
	svc->route_names = calloc(n, sizeof(*svc->route_names));
	if (!svc->routes || !svc->route_names)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		const struct evfdd_sni_route *r = i < s->nroutes ? &s->routes[i] : &s->sni_default;

		svc->nroutes = i + 1;   /* freed by evfdd_svc_unref from here on, also half made */
		if (r->name && !(svc->routes[i].name = strdup(r->name)))
			return -ENOMEM;
		if (evfdd_pool_init_route(&svc->routes[i].pool, &svc->pool, r->backends, r->nbackends) < 0)
			return -ENOMEM;
		svc->route_names[i] = svc->routes[i].name;
	}
	svc->nnamed = (unsigned)s->nroutes;
	return 0;
}

struct evfdd_svc *evfdd_svc_new(const struct evfdd_service *s, bool activated, const struct evfdd_svc *prev)
{
	struct evfdd_svc *svc = calloc(1, sizeof(*svc));

	if (!svc)
		return NULL;
	atomic_init(&svc->refs, 1);
	snprintf(svc->name, sizeof(svc->name), "%s", s->name);
	svc->activated = activated;
	svc->listen_text = strdup(activated ? "activated" : s->listen.text);
	svc->forward_text = strdup(s->forward_text);
	svc->echo = s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO;
	svc->tcp_nodelay = s->tcp_nodelay;
	svc->connect_timeout_ms = s->connect_timeout_ms;
	svc->idle_timeout_ms = s->idle_timeout_ms;
	svc->max_connections = s->max_connections;
	svc->check = s->check;
	svc->health_interval_ms = s->health_interval_ms;
	svc->resolve_interval_ms = s->resolve_interval_ms;
	if (s->check_send || (s->send_proxy && s->check != EVFDD_CHECK_NONE)) {
		/* A backend that reads a PROXY header first gets one in checks too: LOCAL, no address. */
		unsigned char hdr[EVFDD_PROXY_BUILD_MAX];
		int n = s->send_proxy ? evfdd_proxy_build((int)s->send_proxy, NULL, NULL, hdr, sizeof(hdr)) : 0;

		if (n < 0)
			n = 0;
		svc->check_send = malloc((size_t)n + s->check_send_len + 1);
		if (!svc->check_send)
			goto fail;
		memcpy(svc->check_send, hdr, (size_t)n);
		if (s->check_send_len)
			memcpy(svc->check_send + n, s->check_send, s->check_send_len);
		svc->check_send_len = (size_t)n + s->check_send_len;
	}
	if (s->check_expect) {
		svc->check_expect = malloc(s->check_expect_len);
		if (!svc->check_expect)
			goto fail;
		memcpy(svc->check_expect, s->check_expect, s->check_expect_len);
		svc->check_expect_len = s->check_expect_len;
	}
	svc->st = prev ? evfdd_svc_stats_ref(prev->st) : evfdd_svc_stats_new();
	if (!svc->listen_text || !svc->forward_text || !svc->st)
		goto fail;
	if (evfdd_pool_init(&svc->pool, s, prev ? &prev->pool : NULL) < 0 || svc_edge_init(svc, s) < 0)
		goto fail;
	return svc;
fail:
	evfdd_svc_unref(svc);
	return NULL;
}

static bool same_bytes(const char *a, size_t alen, const char *b, size_t blen)
{
	return alen == blen && (!alen || memcmp(a, b, alen) == 0);
}

/* The check's send as configured: svc's, less the PROXY header it may start with (send_proxy is compared
 * with the rest of the edge). */
static bool svc_check_send_same(const struct evfdd_svc *svc, const struct evfdd_service *s)
{
	size_t hdr = svc->check_send_len >= s->check_send_len ? svc->check_send_len - s->check_send_len : 0;

	if (svc->send_proxy != s->send_proxy || svc->check_send_len != hdr + s->check_send_len)
		return false;
	return !s->check_send_len || same_bytes(svc->check_send + hdr, s->check_send_len, s->check_send,
						s->check_send_len);
}

bool evfdd_svc_same(const struct evfdd_svc *svc, const struct evfdd_service *s, bool activated)
{
	return svc->activated == activated && !strcmp(svc->forward_text, s->forward_text) &&
	       (activated || !strcmp(svc->listen_text, s->listen.text)) &&
	       svc->echo == (s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO) && svc->tcp_nodelay == s->tcp_nodelay &&
	       svc->connect_timeout_ms == s->connect_timeout_ms && svc->idle_timeout_ms == s->idle_timeout_ms &&
	       svc->max_connections == s->max_connections && svc->check == s->check &&
	       svc->health_interval_ms == s->health_interval_ms &&
	       svc->resolve_interval_ms == s->resolve_interval_ms &&
	       svc_check_send_same(svc, s) &&
	       same_bytes(svc->check_expect, svc->check_expect_len, s->check_expect, s->check_expect_len) &&
	       !strcmp(svc->edge_text, s->edge_text ? s->edge_text : "") && evfdd_pool_same(&svc->pool, s);
}

struct evfdd_svc *evfdd_svc_ref(struct evfdd_svc *s)
{
	atomic_fetch_add(&s->refs, 1);
	return s;
}

void evfdd_svc_unref(struct evfdd_svc *s)
{
	if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	for (unsigned i = 0; i < s->nroutes; i++) {
		evfdd_pool_clear(&s->routes[i].pool);
		free(s->routes[i].name);
	}
	free(s->routes);
	free(s->route_names);
	free(s->proxy_from);
	free(s->allow);
	free(s->deny);
	free(s->edge_text);
	evfdd_pool_clear(&s->pool);
	free(s->check_send);
	free(s->check_expect);
	free(s->listen_text);
	free(s->forward_text);
	evfdd_svc_stats_unref(s->st);
	free(s);
}
