/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A service as the data plane runs it (built from one section of the configuration), and its counters.
 *
 * Every counter is named once, in the lists below; the data plane counts with evfdd_svc_count, and the
 * control answers, the STATUS= line (and later the metrics) read them with evfdd_svc_stats_read, iterating
 * evfdd_counter_info for the names.
 *
 * Counters are kept per writer, gdnsd-style: each acceptor (one service on one ring, whose connections only
 * the ring's owner thread touches) has a block of its own that only it writes, with plain relaxed stores, so
 * the hot path takes no lock and shares no cache line. A reader sums the blocks under the stats' lock; a block
 * that goes (its acceptor retired, its ring gone) is first folded into the stats' base, so totals never go
 * backwards. Only the open connections, which max_connections decides on, are a shared count, changed once
 * per connection.
 */
#ifndef EVFDD_SERVICE_H
#define EVFDD_SERVICE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include "backend.h"
#include "config.h"
#include "log.h"

struct evfdd_srclimit;

/* X(ID, name, help): what a service counts, besides why its connections ended. */
#define EVFDD_SVC_COUNTERS(X)                                                                             \
	X(TOTAL, total, "connections accepted")                                                          \
	X(CLOSED, closed, "connections that ended with both sides closing cleanly")                      \
	X(BYTES_UP, bytes_up, "bytes relayed from clients to backends")                                  \
	X(BYTES_DOWN, bytes_down, "bytes relayed from backends to clients")

/*
 * X(ID, name, help): why a connection ended other than by a clean close of both sides. The names are the
 * control interface's (io.evfdd Ends) and the access log's and metrics' to come; evfdd(8) explains each.
 */
#define EVFDD_END_REASONS(X)                                                                              \
	X(CLIENT_RESET, client_reset, "the client reset the connection")                                 \
	X(BACKEND_RESET, backend_reset, "the backend reset the connection")                              \
	X(CLIENT_ERROR, client_error, "another socket error on the client's side")                       \
	X(BACKEND_ERROR, backend_error, "another socket error on the backend's side")                    \
	X(CONNECT_FAILED, connect_failed, "no backend accepted a connection in time, retries included")   \
	X(NO_BACKEND, no_backend, "closed unserved: no backend could take it (down, drained or at maxconn)") \
	X(IDLE_TIMEOUT, idle_timeout, "no byte either way for idle_timeout")                             \
	X(LIMIT, limit, "closed unserved: max_connections reached")                                      \
	X(DENIED, denied, "closed unserved: its address is not allowed (allow, deny, proxy_from)")        \
	X(SOURCE_LIMIT, source_limit, "closed unserved: max_connections_per_source reached")             \
	X(BAD_PROXY_HEADER, bad_proxy_header, "no valid PROXY header within proxy_timeout")              \
	X(BAD_CLIENT_HELLO, bad_client_hello, "no valid TLS ClientHello within proxy_timeout")           \
	X(NO_ROUTE, no_route, "closed unserved: no SNI route matched and there is no sni_default")       \
	X(NO_RESOURCES, no_resources, "closed or cut for want of file descriptors, memory or ring space") \
	X(SHUTDOWN, shutdown, "cut by a stop")

enum evfdd_end {
#define EVFDD_END_ENUM(id, name, help) EVFDD_END_##id,
	EVFDD_END_REASONS(EVFDD_END_ENUM)
#undef EVFDD_END_ENUM
	EVFDD_END_COUNT
};

/* Every counter's index: EVFDD_SVC_COUNTERS, then one per end reason (evfdd_counter_end). */
enum evfdd_counter {
#define EVFDD_CTR_ENUM(id, name, help) EVFDD_CTR_##id,
	EVFDD_SVC_COUNTERS(EVFDD_CTR_ENUM)
#undef EVFDD_CTR_ENUM
	EVFDD_CTR_ENDS,
	EVFDD_CTR_COUNT = EVFDD_CTR_ENDS + EVFDD_END_COUNT
};

static inline enum evfdd_counter evfdd_counter_end(enum evfdd_end why)
{
	return (enum evfdd_counter)(EVFDD_CTR_ENDS + why);
}

struct evfdd_counter_info {
	const char *name;                /* "total", or the end reason's name for an end */
	const char *help;
	bool end;                        /* one of the end reasons */
};

extern const struct evfdd_counter_info evfdd_counter_info[EVFDD_CTR_COUNT];

/* A snapshot: every counter, and the connections open now. */
struct evfdd_counts {
	uint64_t v[EVFDD_CTR_COUNT];
	uint64_t open;
};

/* One writer's counters for one service (see above). */
struct evfdd_svc_block {
	_Alignas(64) _Atomic uint64_t v[EVFDD_CTR_COUNT];
	TAILQ_ENTRY(evfdd_svc_block) link;
};

/*
 * A service's counters, kept across reloads: every generation of a service with the same name shares them,
 * so totals and max_connections span a reload. Every connection evfdd accepts counts in total once, and when
 * it is gone in closed (both sides ended cleanly) or in one end reason: total = open + closed + the ends
 * whenever nothing is changing.
 */
struct evfdd_svc_stats {
	atomic_uint refs;
	atomic_uint_fast64_t open;       /* shared: max_connections decides on it */
	pthread_mutex_t lock;            /* the list of blocks, and folding into base */
	TAILQ_HEAD(, evfdd_svc_block) blocks;
	uint64_t base[EVFDD_CTR_COUNT];  /* what blocks that went had counted */
	/* A dead backend or a full fd table fails every connection: say so, but not thousands of times. */
	struct log_ratelimit connect_rl, accept_rl, limit_rl, no_backend_rl, edge_rl;
	struct evfdd_srclimit *sources;  /* open connections per source (max_connections_per_source) */
};

/* One SNI route of a service: its name ("*.suffix" for a wildcard; NULL for sni_default) and its backends,
 * which share their state with the same backends in the service's pool. */
struct evfdd_svc_route {
	char *name;
	struct evfdd_pool pool;
};

/* A service as the data plane sees it: built from one configuration, shared by every ring, read-only (its
 * backends' state is their own: backend.h). A reload that changes a service builds a new one; connections
 * keep the one they started with. */
struct evfdd_svc {
	char name[EVFDD_CONFIG_NAME_MAX + 1];
	bool echo;                       /* the built-in echo: no backends */
	char *listen_text;               /* as configured, or "activated" */
	char *forward_text;
	bool activated;
	bool tcp_nodelay;
	struct evfdd_pool pool;          /* the backends (with SNI routes, every route's, once); none for the echo */
	/* The edge: what comes before the relay and around it (evfdd.conf(5)); edge_text compares generations. */
	char *edge_text;
	unsigned send_proxy;             /* 0, 1, 2 */
	bool accept_proxy;
	struct evfdd_cidr *proxy_from, *allow, *deny;
	size_t nproxy_from, nallow, ndeny;
	uint32_t proxy_timeout_ms;
	unsigned nroutes;
	struct evfdd_svc_route *routes;  /* sni_route, then sni_default (name NULL) when given */
	const char **route_names;        /* routes[i].name for evfdd_sni_match (sni_route only) */
	unsigned nnamed;                 /* routes with a name */
	uint32_t max_per_source;
	bool tcp_keepalive;
	uint32_t keepalive_idle_s, keepalive_intvl_s;
	unsigned keepalive_cnt;
	uint32_t tcp_user_timeout_ms;
	bool has_source;
	struct evfdd_sockaddr source;
	bool access_log;
	enum evfdd_check check;          /* active health checks (health.c) */
	char *check_send, *check_expect;
	size_t check_send_len, check_expect_len;
	uint32_t health_interval_ms, resolve_interval_ms;
	unsigned connect_timeout_ms;
	unsigned idle_timeout_ms;        /* 0: none */
	unsigned max_connections;
	struct evfdd_svc_stats *st;
	atomic_uint refs;
};

/*
 * evfdd_svc_new - the service of configuration section @s, listening on a socket that was @activated
 * @prev: the service's previous generation, or NULL: its counters and its backends' state carry on
 *
 * Returns the service (one reference) or NULL when out of memory.
 */
struct evfdd_svc *evfdd_svc_new(const struct evfdd_service *s, bool activated, const struct evfdd_svc *prev);

/* Whether @svc serves exactly what @s asks for (listening on a socket that was @activated), so that rings can
 * keep accepting on it through a reload. */
bool evfdd_svc_same(const struct evfdd_svc *svc, const struct evfdd_service *s, bool activated);

struct evfdd_svc *evfdd_svc_ref(struct evfdd_svc *s);
void evfdd_svc_unref(struct evfdd_svc *s);   /* any thread */

struct evfdd_svc_stats *evfdd_svc_stats_new(void);   /* NULL when out of memory */
struct evfdd_svc_stats *evfdd_svc_stats_ref(struct evfdd_svc_stats *st);
void evfdd_svc_stats_unref(struct evfdd_svc_stats *st);

/* A new block for one writer (any thread), or NULL when out of memory. */
struct evfdd_svc_block *evfdd_svc_block_new(struct evfdd_svc_stats *st);
/* Fold what @b counted into its stats and free it; on the thread that writes it (any, for a block not in
 * use), never while another thread could still write it. */
void evfdd_svc_block_free(struct evfdd_svc_stats *st, struct evfdd_svc_block *b);

/* Count @n in @b: only its one writer calls this. */
static inline void evfdd_svc_count(struct evfdd_svc_block *b, enum evfdd_counter c, uint64_t n)
{
	atomic_store_explicit(&b->v[c], atomic_load_explicit(&b->v[c], memory_order_relaxed) + n,
			      memory_order_relaxed);
}

/* Add @n to counter @c of @st as if a writer had counted it (what an upgrade carried over). Any thread. */
void evfdd_svc_stats_add(struct evfdd_svc_stats *st, enum evfdd_counter c, uint64_t n);

/* Add @st's counters to @out (so that several services sum into one). Any thread. */
void evfdd_svc_stats_read(struct evfdd_svc_stats *st, struct evfdd_counts *out);

#endif
