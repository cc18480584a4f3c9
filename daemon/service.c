/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Services and their counters; see service.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "service.h"

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

/* ---- services ------------------------------------------------------------------------------------- */

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
	if (s->check_send) {
		svc->check_send = malloc(s->check_send_len);
		if (!svc->check_send)
			goto fail;
		memcpy(svc->check_send, s->check_send, s->check_send_len);
		svc->check_send_len = s->check_send_len;
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
	if (evfdd_pool_init(&svc->pool, s, prev ? &prev->pool : NULL) < 0)
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

bool evfdd_svc_same(const struct evfdd_svc *svc, const struct evfdd_service *s, bool activated)
{
	return svc->activated == activated && !strcmp(svc->forward_text, s->forward_text) &&
	       (activated || !strcmp(svc->listen_text, s->listen.text)) &&
	       svc->echo == (s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO) && svc->tcp_nodelay == s->tcp_nodelay &&
	       svc->connect_timeout_ms == s->connect_timeout_ms && svc->idle_timeout_ms == s->idle_timeout_ms &&
	       svc->max_connections == s->max_connections && svc->check == s->check &&
	       svc->health_interval_ms == s->health_interval_ms &&
	       svc->resolve_interval_ms == s->resolve_interval_ms &&
	       same_bytes(svc->check_send, svc->check_send_len, s->check_send, s->check_send_len) &&
	       same_bytes(svc->check_expect, svc->check_expect_len, s->check_expect, s->check_expect_len) &&
	       evfdd_pool_same(&svc->pool, s);
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
	evfdd_pool_clear(&s->pool);
	free(s->check_send);
	free(s->check_expect);
	free(s->listen_text);
	free(s->forward_text);
	evfdd_svc_stats_unref(s->st);
	free(s);
}
