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
#include "service.h"

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
	unsigned buffers;                /* provided buffers per ring (a power of two, at most 32768) */
	unsigned buffer_size;
	bool bundle;                     /* the kernel has IORING_RECVSEND_BUNDLE: receives take several buffers */
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

enum evfdd_relay_stop_how {
	EVFDD_RELAY_RETIRE,	/* the ring drains while others go on accepting: connections finish */
	EVFDD_RELAY_STOP,	/* evfdd stops: connections finish; what the listeners queue stays there */
	EVFDD_RELAY_ABORT,	/* evfdd stops now: every open connection is cut */
};

/* On the owner thread: stop accepting. A retiring ring serves what its cancelled accepts may have left in a
 * listener's queue (relay.c, acceptor_sweep); with EVFDD_RELAY_ABORT every open connection is cut (counted as
 * shutdown, with a reset toward TCP peers). @done(arg) runs on the owner thread once nothing of the relay is
 * in flight (the ring may then be closed). */
void evfdd_relay_stop(struct evfdd_relay *rl, enum evfdd_relay_stop_how how,
		      void (*done)(struct evfdd_relay *, void *), void *arg);

void evfdd_relay_free(struct evfdd_relay *rl);

#endif
