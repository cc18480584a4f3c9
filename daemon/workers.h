/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The worker loops (one thread each) and the rings shared out among them, each ring running a relay. Driven
 * from the daemon's main loop thread (itself an evfd loop); every callback below runs on that thread. */
#ifndef EVFDD_WORKERS_H
#define EVFDD_WORKERS_H

#include <stdbool.h>
#include "relay.h"

struct evfdd_workers;

struct evfdd_workers_params {
	unsigned loops, rings;
	struct evfdd_relay_params relay;
	void (*ready)(void *arg, int err);   /* every relay started (err 0), or the first failure */
	void *arg;
};

/* Spawn the loops and create the rings; relays start asynchronously, then @p->ready runs. Returns 0, or a
 * negative errno from evfd_loop_spawn/evfd_ring_new (e.g. -ENOSYS, -EPERM, -ENOMEM when io_uring is not
 * available) with nothing left running. */
int evfdd_workers_start(struct evfdd_workers **out, const struct evfdd_workers_params *p,
			struct evfdd_svc *const *svcs, unsigned nsvcs);

/* Stop accepting everywhere; with @abort cut open connections too. May be called again with @abort after a
 * graceful stop began. @done runs once every ring is gone. */
void evfdd_workers_stop(struct evfdd_workers *w, bool abort, void (*done)(void *arg), void *arg);

/* After @done: stop the loops and free everything. */
void evfdd_workers_free(struct evfdd_workers *w);

/* How many worker loops and rings there are, for the STATUS= line. */
unsigned long evfdd_workers_loops(const struct evfdd_workers *w);
unsigned long evfdd_workers_rings(const struct evfdd_workers *w);

#endif
