/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The worker loops (one thread each) and the rings shared out among them, each ring running a relay. The
 * set changes shape at run time: evfdd_workers_apply starts and retires loops and rings and moves rings
 * between loops, with their connections, so that they stay spread evenly. Driven from the daemon's main
 * loop thread (itself an evfd loop); every function and callback below runs on that thread. */
#ifndef EVFDD_WORKERS_H
#define EVFDD_WORKERS_H

#include <stdbool.h>
#include <stdint.h>
#include "relay.h"

struct evfdd_workers;

/* Returns 0 or -ENOMEM. The set starts empty; evfdd_workers_apply gives it loops and rings, made with the
 * libevfd setup flags @ring_flags (EVFD_RING_*) and running relays with @relay. */
int evfdd_workers_new(struct evfdd_workers **out, const struct evfdd_relay_params *relay, unsigned ring_flags);

/*
 * evfdd_workers_apply - reshape to @loops loops and @rings accepting rings, each accepting on @svcs
 * @svcs: @nsvcs services with their listeners; every ring takes references of its own
 * @done: runs once every running ring accepts on @svcs, new rings have started, moves have finished and
 *        retired loops have ended; err is the first relay that failed to start (that ring is gone), or 0.
 *        Never before evfdd_workers_apply has returned.
 *
 * What can fail (spawning loops, creating rings) happens first: on failure, returns a negative errno
 * (-ENOSYS, -EPERM, -ENOMEM, -EOPNOTSUPP... from libevfd) with nothing changed and @done not called.
 * Surplus rings drain (stop accepting, go when their connections end); surplus loops retire once their rings
 * have moved. -EBUSY while a previous apply or a move is unfinished.
 */
int evfdd_workers_apply(struct evfdd_workers *w, unsigned loops, unsigned rings,
			const struct evfdd_relay_service *svcs, unsigned nsvcs,
			void (*done)(void *arg, int err), void *arg);

/* Whether an apply or a move is unfinished. */
bool evfdd_workers_busy(const struct evfdd_workers *w);

/*
 * evfdd_workers_move - move ring @ring_id to loop @loop_id, with its connections
 * @done: runs once the target owns the ring; @usec from the request
 *
 * Returns 0, -ENOENT (no such ring), -ESRCH (no such loop, or it is retiring), -EBUSY (the ring is draining
 * or moving, or an apply is unfinished), or -ENOMEM.
 */
int evfdd_workers_move(struct evfdd_workers *w, unsigned ring_id, unsigned loop_id,
		       void (*done)(void *arg, unsigned from, unsigned to, uint64_t usec), void *arg);

/* Stop accepting everywhere; with @abort cut open connections too. May be called again with @abort after a
 * graceful stop began; not while busy. @done runs once every ring is gone. */
void evfdd_workers_stop(struct evfdd_workers *w, bool abort, void (*done)(void *arg), void *arg);

/* After @done (or before any apply): stop the loops and free everything. */
void evfdd_workers_free(struct evfdd_workers *w);

/* Connections open on every ring (any thread's count of the moment). */
unsigned long evfdd_workers_open(const struct evfdd_workers *w);

/* Running loops and accepting rings, for the STATUS= line. */
unsigned evfdd_workers_loops(const struct evfdd_workers *w);
unsigned evfdd_workers_rings(const struct evfdd_workers *w);
/* Ring moves made since start-up, by hand (evfdd_workers_move) or to even out the loops; failed ones not. */
uint64_t evfdd_workers_moves(const struct evfdd_workers *w);

struct evfdd_loop_info {
	unsigned id;
	char name[16];
	int tid;
	bool retiring;
	struct evfd_loop_stats st;       /* .rings: the rings it owns now */
};

struct evfdd_ring_info {
	unsigned id;
	unsigned loop;                   /* evfd_loop_id of the owner, or of the loop it is moving to */
	const char *state;               /* "running", "moving", "draining", "starting" or "closing" */
	unsigned connections;
	struct evfd_ring_stats st;       /* zero for a closing ring */
};

/* Snapshots for the control socket: a malloc'd array (free it) and its length, or -ENOMEM. */
int evfdd_workers_loop_info(const struct evfdd_workers *w, struct evfdd_loop_info **out, size_t *n);
int evfdd_workers_ring_info(const struct evfdd_workers *w, struct evfdd_ring_info **out, size_t *n);

/*
 * Carrying connections to the next image (an upgrade, a carried-over restart): every ring parks
 * (evfdd_relay_park), the main thread exports what they hold, then either the process hands it over and
 * ends, or the rings unpark.
 */

/* Park every ring; @done once all are parked (nothing in flight anywhere). 0, or -EBUSY while an apply, a
 * move or another park is unfinished, or while stopping. */
int evfdd_workers_park(struct evfdd_workers *w, void (*done)(void *arg), void *arg);

struct evfdd_carry_writer;

/* Parked: describe every ring's connections into @cw while *@fds_left allows (evfdd_relay_export); *@n
 * receives how many. Returns 0 or a negative errno. */
int evfdd_workers_export(struct evfdd_workers *w, struct evfdd_carry_writer *cw, size_t *fds_left, unsigned *n);

/* Parked: resume every ring; with @release, the connections exported are let go first (the next image has
 * them). @done once all have resumed. */
void evfdd_workers_unpark(struct evfdd_workers *w, bool release, void (*done)(void *arg), void *arg);

/* One connection carried from the previous image, to adopt: @err receives the outcome
 * (evfdd_relay_adopt); on failure its descriptors are still the caller's. */
struct evfdd_adopt {
	const struct evfdd_carry_conn *r;
	int cfd, bfd;
	int err;
};

/* Spread @items over the running rings and adopt them there; @done once every ring has (then each item's
 * err is set). @items must live until then. Returns 0, -EBUSY or -ENOMEM (then @done is not called). */
int evfdd_workers_adopt(struct evfdd_workers *w, struct evfdd_adopt *items, size_t n, void (*done)(void *arg),
			void *arg);

/* The watchdog's question: has every loop answered the previous heartbeat? Sends the next one either way.
 * A loop stuck in a callback never answers, so the daemon stops telling systemd all is well. */
bool evfdd_workers_heartbeat(struct evfdd_workers *w);

#endif
