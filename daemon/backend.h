/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A service's backends: the state each one keeps (health, drain, addresses, counters) and picking one for a
 * new connection (balance, weights, maxconn, backups, retries).
 *
 * struct evfdd_backend is shared: by every ring's connections, by the main thread's health checks and the
 * control socket, and by every generation of the service that still lists it, so that a reload keeps its
 * health, its drain and its counters (matched by service name and the backend as written). Everything in it
 * that changes is an atomic, written by whichever thread saw the event (a connect's result on a worker, a
 * check on the main thread, a drain from the control socket), except the addresses: a re-resolution replaces
 * them under a mutex that a connect takes only to copy the one address it tries.
 *
 * Picking decides on atomics alone, so two rings may briefly see different states; the only hard limit is
 * maxconn, taken with a fetch-and-add and given back when it would be exceeded.
 */
#ifndef EVFDD_BACKEND_H
#define EVFDD_BACKEND_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include "config.h"

enum evfdd_backend_health { EVFDD_HEALTH_UP, EVFDD_HEALTH_DOWN };

struct evfdd_backend {
	atomic_uint refs;
	char *service;                   /* for messages */
	char *name;                      /* as written in forward, without options: the backend's identity */
	char *host, *port;               /* a name re-resolved every resolve_interval; NULL otherwise */

	pthread_mutex_t lock;            /* addrs, naddrs */
	struct evfdd_sockaddr *addrs;    /* tried in turn */
	size_t naddrs;
	atomic_bool resolving;           /* a lookup is running (resolve.c) */

	_Atomic int health;              /* enum evfdd_backend_health */
	atomic_bool drained;             /* no new connections (evfdctl backend drain) */
	atomic_uint fails;               /* consecutive failed connects */
	_Atomic uint64_t trial_ns;       /* passively down: a trial connection may go from then (CLOCK_MONOTONIC) */
	atomic_bool trial;               /* a trial connection is out */

	atomic_uint open;                /* connections now, connecting ones included */
	_Atomic uint64_t connections, connect_failures, bytes_up, bytes_down, state_changes, last_change_usec;

	/* active checks: the main thread's (health.c) */
	unsigned check_pass, check_fail;
};

/* One backend as one generation of a service uses it. */
struct evfdd_svc_backend {
	struct evfdd_backend *b;
	unsigned weight;
	uint32_t maxconn;                /* 0: no limit of its own */
	bool backup;
};

/* A service's backends and how it picks among them; part of the read-only struct evfdd_svc. */
struct evfdd_pool {
	struct evfdd_svc_backend *v;
	unsigned n;
	enum evfdd_balance balance;
	unsigned retries, fall, rise;
	uint32_t down_time_ms;
	bool checked;                    /* active checks decide when a down backend is up again */
	/* smooth weighted round-robin orders, [0] for the primaries, [1] for the backups */
	uint16_t *order[2];
	unsigned norder[2];
	_Alignas(64) atomic_uint rr[2];
};

/* Why a pick found nothing: how many backends were down, drained or at their maxconn. */
struct evfdd_pick_why {
	unsigned down, drained, full;
};

/*
 * evfdd_pool_init - the backends of configuration section @s, sharing the state of the same backends in
 * @prev (the previous generation of the service, or NULL)
 *
 * A backend kept from @prev gets @s's freshly resolved addresses. Returns 0 or -ENOMEM.
 */
int evfdd_pool_init(struct evfdd_pool *p, const struct evfdd_service *s, const struct evfdd_pool *prev);
void evfdd_pool_clear(struct evfdd_pool *p);

/*
 * evfdd_pool_init_route - @rp: the pool of one SNI route of section @s, the @n backends of @list (each one
 * also in @all, the service's pool, by name), sharing their state with @all's; each with the weight, maxconn
 * and backup that @list gives it. Balance, retries and health settings as @all's.
 *
 * Returns 0, -ENOMEM, or -ENOENT when a backend is not in @all.
 */
int evfdd_pool_init_route(struct evfdd_pool *rp, const struct evfdd_pool *all,
			  const struct evfdd_backend_conf *list, size_t n);

/* Give @p's backends the addresses loading @s resolved (@s lists the same backends in the same order).
 * Returns 0 or -ENOMEM (then some kept their old ones). */
int evfdd_pool_refresh(struct evfdd_pool *p, const struct evfdd_service *s);

/* Whether @p balances as @s asks (same backends in the same order with the same options, same keys). */
bool evfdd_pool_same(const struct evfdd_pool *p, const struct evfdd_service *s);

/* The backend of @p named @name, or NULL. */
struct evfdd_svc_backend *evfdd_pool_find(const struct evfdd_pool *p, const char *name);

/*
 * evfdd_pool_pick - the backend for a connection from @src (NULL when it has no IP address)
 * @tried: the indices already tried for this connection (@ntried of them): never picked again
 * @trial: set when the pick is a down backend's trial connection (pass it to evfdd_pool_result)
 * @why: filled in when nothing can be picked
 *
 * Returns an index into @p->v, whose open count the caller now holds (give it back with
 * evfdd_pool_release), or -1.
 */
int evfdd_pool_pick(struct evfdd_pool *p, const struct sockaddr *src, const uint16_t *tried, unsigned ntried,
		    bool *trial, struct evfdd_pick_why *why);

/* Give back the open count of a connection that leaves backend @i. */
void evfdd_pool_release(struct evfdd_pool *p, unsigned i);

/* A connect to backend @i ended: 0 or the negative errno of its last address (-ETIMEDOUT for a timeout).
 * Passive health: counts, marks the backend down after fall failures, up after a successful trial. */
void evfdd_pool_result(struct evfdd_pool *p, unsigned i, int err, bool trial);

/* Copy address @k of @b into @out: false when it has no address @k (the list may have changed). */
bool evfdd_backend_addr(struct evfdd_backend *b, size_t k, struct evfdd_sockaddr *out);

/* Replace @b's addresses with @ep's (taking them: @ep is left empty). */
void evfdd_backend_set_addrs(struct evfdd_backend *b, struct evfdd_endpoint *ep);

/*
 * evfdd_backend_set_health - @b is now @h because of @why (a message such as "3 connect failures in a row");
 * logs and counts the change when it is one. Any thread. Returns whether it changed.
 */
bool evfdd_backend_set_health(struct evfdd_backend *b, enum evfdd_backend_health h, const char *why);

/* Drain or enable @b, saying so in the log with @who ("uid 0"). Returns whether it changed. */
bool evfdd_backend_set_drained(struct evfdd_backend *b, bool drained, const char *who);

struct evfdd_backend *evfdd_backend_ref(struct evfdd_backend *b);
void evfdd_backend_unref(struct evfdd_backend *b);

/* "up" or "down" */
const char *evfdd_backend_health_name(enum evfdd_backend_health h);

#endif
