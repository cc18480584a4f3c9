/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Re-resolving backend names; see resolve.h. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include "log.h"
#include "resolve.h"

struct name {
	TAILQ_ENTRY(name) link;
	struct evfdd_backend *b;         /* a reference */
	uint32_t interval_ms;
	bool kept;
	ev_timer timer;
};

struct evfdd_resolve {
	struct ev_loop *ev;
	TAILQ_HEAD(, name) names;
};

int evfdd_resolve_new(struct evfdd_resolve **out, struct ev_loop *ev)
{
	struct evfdd_resolve *r = calloc(1, sizeof(*r));

	*out = r;
	if (!r)
		return -ENOMEM;
	r->ev = ev;
	TAILQ_INIT(&r->names);
	return 0;
}

/* Whether @a and @b hold the same addresses in the same order. */
static bool same_addrs(const struct evfdd_endpoint *a, struct evfdd_backend *b)
{
	struct evfdd_sockaddr x;
	size_t k;

	for (k = 0; k < a->naddrs; k++)
		if (!evfdd_backend_addr(b, k, &x) || x.len != a->addrs[k].len ||
		    memcmp(&x.u, &a->addrs[k].u, x.len) != 0)
			return false;
	return !evfdd_backend_addr(b, k, &x);
}

/* The lookup's thread: it holds a reference to the backend, which is all it touches. */
static void *lookup_thread(void *arg)
{
	struct evfdd_backend *b = arg;
	struct evfdd_endpoint ep;
	char why[256];
	int err;

	err = evfdd_config_resolve(b->host, b->port, &ep, why, sizeof(why));
	if (err < 0) {
		log_warnx("[%s] backend %s: cannot resolve \"%s\" again: %s; keeping its previous addresses",
			  b->service, b->name, b->host, why);
	} else if (!same_addrs(&ep, b)) {
		log_info("[%s] backend %s: \"%s\" now resolves to %zu address%s", b->service, b->name, b->host,
			 ep.naddrs, ep.naddrs == 1 ? "" : "es");
		evfdd_backend_set_addrs(b, &ep);
	}
	free(ep.addrs);
	atomic_store(&b->resolving, false);
	evfdd_backend_unref(b);
	return NULL;
}

static void name_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct name *n = w->data;
	pthread_attr_t attr;
	pthread_t t;
	int err;

	if (atomic_exchange(&n->b->resolving, true))
		return;   /* the last lookup is still running: a slow resolver gets no pile-up */
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	err = pthread_create(&t, &attr, lookup_thread, evfdd_backend_ref(n->b));
	pthread_attr_destroy(&attr);
	if (err) {
		log_warnx("[%s] backend %s: cannot start a lookup: %s; trying again in %u ms", n->b->service,
			  n->b->name, strerror(err), n->interval_ms);
		atomic_store(&n->b->resolving, false);
		evfdd_backend_unref(n->b);
	}
}

static void name_free(struct evfdd_resolve *r, struct name *n)
{
	TAILQ_REMOVE(&r->names, n, link);
	ev_timer_stop(r->ev, &n->timer);
	evfdd_backend_unref(n->b);
	free(n);
}

static int name_want(struct evfdd_resolve *r, struct evfdd_backend *b, uint32_t interval_ms)
{
	struct name *n;

	TAILQ_FOREACH(n, &r->names, link)
		if (n->b == b)
			break;
	if (n && n->interval_ms == interval_ms) {
		n->kept = true;
		return 0;
	}
	if (n)
		name_free(r, n);
	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->b = evfdd_backend_ref(b);
	n->interval_ms = interval_ms;
	n->kept = true;
	ev_timer_init(&n->timer, name_timer_cb, interval_ms / 1000.0, interval_ms / 1000.0);
	n->timer.data = n;
	ev_timer_start(r->ev, &n->timer);
	TAILQ_INSERT_TAIL(&r->names, n, link);
	return 0;
}

int evfdd_resolve_apply(struct evfdd_resolve *r, const struct evfdd_relay_service *svcs, unsigned nsvcs)
{
	struct name *n, *next;
	int err = 0;

	TAILQ_FOREACH(n, &r->names, link)
		n->kept = false;
	for (unsigned i = 0; i < nsvcs; i++) {
		const struct evfdd_svc *svc = svcs[i].svc;

		if (!svc->resolve_interval_ms)
			continue;
		for (unsigned k = 0; k < svc->pool.n; k++)
			if (svc->pool.v[k].b->host && name_want(r, svc->pool.v[k].b, svc->resolve_interval_ms) < 0 &&
			    !err) {
				log_errx("[%s] out of memory: backend %s keeps the addresses it was loaded with",
					 svc->name, svc->pool.v[k].b->name);
				err = -ENOMEM;
			}
	}
	for (n = TAILQ_FIRST(&r->names); n; n = next) {
		next = TAILQ_NEXT(n, link);
		if (!n->kept)
			name_free(r, n);
	}
	return err;
}

void evfdd_resolve_free(struct evfdd_resolve *r)
{
	struct name *n;

	if (!r)
		return;
	while ((n = TAILQ_FIRST(&r->names)))
		name_free(r, n);
	free(r);
}
