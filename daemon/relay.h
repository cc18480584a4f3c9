/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The data plane: accepting, connecting and relaying both directions of every connection through one ring.
 * Everything here runs on the ring's owner thread; a ring's connections move with it. */
#ifndef EVFDD_RELAY_H
#define EVFDD_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include "evfd.h"
#include "log.h"

struct evfdd_backend {
	struct sockaddr_storage addr;
	socklen_t len;
};

/* A service as the data plane sees it: built from the configuration, shared by every ring, read-only but for
 * its counters. Reference-counted so that a reload can replace it while connections still use it. */
struct evfdd_svc {
	char name[65];
	int listen_fd;
	bool echo;
	bool tcp_nodelay;
	struct evfdd_backend *backends;
	unsigned nbackends;
	unsigned connect_timeout_ms;
	unsigned idle_timeout_ms;        /* 0: none */
	unsigned max_connections;

	atomic_uint refs;
	atomic_uint_fast64_t open, total, refused, connect_errors, aborted, bytes_up, bytes_down;
	/* A dead backend or a full fd table fails every connection: say so, but not thousands of times. */
	struct log_ratelimit connect_rl, accept_rl, limit_rl;
};

struct evfdd_relay_params {
	unsigned buffers;                /* provided buffers per ring (a power of two) */
	unsigned buffer_size;
};

struct evfdd_relay;

/* On @ring's owner thread: set up the ring's buffer pool and start accepting on every service in @svcs.
 * Returns 0 or a negative errno. */
int evfdd_relay_start(struct evfd_ring *ring, struct evfdd_svc *const *svcs, unsigned nsvcs,
		      const struct evfdd_relay_params *p, struct evfdd_relay **out);

/* On the owner thread: stop accepting; with @abort, also cut every open connection. @done(arg) runs on the
 * owner thread once nothing of the relay is in flight (the ring may then be freed). */
void evfdd_relay_stop(struct evfdd_relay *rl, bool abort, void (*done)(struct evfdd_relay *, void *), void *arg);

void evfdd_relay_free(struct evfdd_relay *rl);

struct evfdd_svc *evfdd_svc_ref(struct evfdd_svc *s);
void evfdd_svc_unref(struct evfdd_svc *s);

#endif
