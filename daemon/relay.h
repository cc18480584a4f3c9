/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The data plane: accepting, connecting and relaying both directions of every connection through one ring.
 * Everything here runs on the ring's owner thread; a ring's connections move with it. */
#ifndef EVFDD_RELAY_H
#define EVFDD_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include "evfd.h"
#include "listen.h"
#include "log.h"

struct evfdd_backend {
	struct sockaddr_storage addr;
	socklen_t len;
};

/*
 * Why a connection ended other than by a clean close of both sides: X(ID, name). The names are the control
 * interface's (io.evfdd Ends) and those that the access log and metrics will use; evfdd(8) explains each.
 *   client_reset, backend_reset   that side reset the connection (RST; EPIPE after one)
 *   client_error, backend_error   another socket error on that side (ETIMEDOUT, EHOSTUNREACH...)
 *   connect_failed                no backend address accepted a connection within connect_timeout
 *   idle_timeout                  no byte either way for idle_timeout
 *   limit                         closed unserved: max_connections reached
 *   no_resources                  closed unserved or cut: out of file descriptors, memory or ring space
 *   shutdown                      cut by a stop (shutdown_timeout, or a second SIGTERM)
 */
#define EVFDD_END_REASONS(X)                                                                              \
	X(CLIENT_RESET, client_reset)                                                                    \
	X(BACKEND_RESET, backend_reset)                                                                  \
	X(CLIENT_ERROR, client_error)                                                                    \
	X(BACKEND_ERROR, backend_error)                                                                  \
	X(CONNECT_FAILED, connect_failed)                                                                \
	X(IDLE_TIMEOUT, idle_timeout)                                                                    \
	X(LIMIT, limit)                                                                                  \
	X(NO_RESOURCES, no_resources)                                                                    \
	X(SHUTDOWN, shutdown)

enum evfdd_end {
#define EVFDD_END_ENUM(id, name) EVFDD_END_##id,
	EVFDD_END_REASONS(EVFDD_END_ENUM)
#undef EVFDD_END_ENUM
	EVFDD_END_COUNT
};

/* "client_reset" ... "shutdown", indexed by enum evfdd_end. */
extern const char *const evfdd_end_names[EVFDD_END_COUNT];

/* A service's counters, kept across reloads: every generation of a service with the same name shares them,
 * so totals and max_connections span a reload. Every connection evfdd accepts counts in total once, and
 * when it is gone in closed (both sides ended cleanly) or in ends[] by reason: total = open + closed + the
 * sum of ends[] whenever nothing is changing. */
struct evfdd_svc_stats {
	atomic_uint refs;
	atomic_uint_fast64_t open, total, closed, ends[EVFDD_END_COUNT], bytes_up, bytes_down;
	/* A dead backend or a full fd table fails every connection: say so, but not thousands of times. */
	struct log_ratelimit connect_rl, accept_rl, limit_rl;
};

/* A service as the data plane sees it: built from one configuration, shared by every ring, read-only. A
 * reload that changes a service builds a new one; connections keep the one they started with. */
struct evfdd_svc {
	char name[65];
	char *listen_text;               /* as configured, or "activated" */
	char *forward_text;
	bool activated;
	bool echo;
	bool tcp_nodelay;
	struct evfdd_backend *backends;
	unsigned nbackends;
	unsigned connect_timeout_ms;
	unsigned idle_timeout_ms;        /* 0: none */
	unsigned max_connections;
	struct evfdd_svc_stats *st;
	atomic_uint refs;
};

/* What a ring accepts on: a service and its listening socket, one reference to each. */
struct evfdd_relay_service {
	struct evfdd_svc *svc;
	struct evfdd_listener *lst;
};

/* Shared by every relay, so that connections spread over the rings: a ring well above the average stops
 * accepting for a moment and leaves new connections to the others. */
struct evfdd_relay_balance {
	atomic_uint conns;               /* open connections on every ring */
	atomic_uint accepting;           /* rings accepting */
};

struct evfdd_relay_params {
	unsigned buffers;                /* provided buffers per ring (a power of two) */
	unsigned buffer_size;
	struct evfdd_relay_balance *balance;   /* or NULL */
};

/* The opcodes and register operations the relay uses, for evfd_ring_params.restrictions: a ring is limited
 * to exactly these, since io_uring requests bypass seccomp. */
const struct io_uring_restriction *evfdd_relay_restrictions(unsigned *n);

struct evfdd_relay;

/* On @ring's owner thread: set up the ring's buffer pool and start accepting on every service in @svcs
 * (taking over their references, also on failure). @nconns, if not NULL, is kept equal to the number of
 * open connections, for readers on other threads. Returns 0 or a negative errno. */
int evfdd_relay_start(struct evfd_ring *ring, struct evfdd_relay_service *svcs, unsigned nsvcs,
		      const struct evfdd_relay_params *p, atomic_uint *nconns, struct evfdd_relay **out);

/* On the owner thread: accept on exactly the services in @svcs from now on (taking over their references).
 * A service already accepted on is kept as is; a new one is armed before those that go are cancelled, so a
 * listener shared by both never goes unserved. Connections carry on with the service they started with. */
void evfdd_relay_update(struct evfdd_relay *rl, struct evfdd_relay_service *svcs, unsigned nsvcs);

/* On the owner thread: stop accepting; with @abort, also cut every open connection. @done(arg) runs on the
 * owner thread once nothing of the relay is in flight (the ring may then be freed). */
void evfdd_relay_stop(struct evfdd_relay *rl, bool abort, void (*done)(struct evfdd_relay *, void *), void *arg);

void evfdd_relay_free(struct evfdd_relay *rl);

struct evfdd_svc *evfdd_svc_ref(struct evfdd_svc *s);
void evfdd_svc_unref(struct evfdd_svc *s);
struct evfdd_svc_stats *evfdd_svc_stats_new(void);
struct evfdd_svc_stats *evfdd_svc_stats_ref(struct evfdd_svc_stats *st);
void evfdd_svc_stats_unref(struct evfdd_svc_stats *st);

#endif
