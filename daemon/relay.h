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
	unsigned huge_delay_ms;          /* > 0: the pool asks for huge pages only this long after the ring
					  * starts (rings that start under load: see relay.c, pool_alloc) */
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

/* ---- carrying connections to the next image (an upgrade, a carried-over restart) ---- */

struct evfdd_carry_writer;
struct evfdd_carry_conn;

/*
 * evfdd_relay_park - on the owner thread: stop submitting and collect every completion
 * @done: runs on the owner thread once nothing of the relay is in flight
 *
 * Accepting stops (what the listeners queue stays there) and every request in flight is cancelled; what
 * completes meanwhile is kept: bytes received join what is to be sent, bytes sent count, a connect that
 * succeeded counts as connected, and one abandoned is made again afresh after. A connection accepted
 * meanwhile is kept, not started. Connections being cut finish. Then the relay is still: its state can be
 * exported, then it is unparked.
 */
void evfdd_relay_park(struct evfdd_relay *rl, void (*done)(struct evfdd_relay *, void *), void *arg);

/*
 * evfdd_relay_export - describe the parked relay's connections into @w (carry.h), their descriptors into its
 * table, as long as *@fds_left allows (decremented; a connection that does not fit is left out); *@n counts
 * those described. Reads only: from any thread while the relay is parked (the park's report is the barrier).
 * Returns 0 or a negative errno (-ENOMEM, -EINVAL).
 */
int evfdd_relay_export(struct evfdd_relay *rl, struct evfdd_carry_writer *w, size_t *fds_left, unsigned *n);

/* On the owner thread, parked: carry on. With @release, the connections exported are first let go without
 * a word to their peers (the next image has them: closing our copies ends nothing, nothing is counted);
 * without, they carry on too. Every other connection resumes where it stopped, and accepting starts again
 * unless the relay was stopping. */
void evfdd_relay_unpark(struct evfdd_relay *rl, bool release);

/*
 * evfdd_relay_adopt - on the owner thread: take over connection @r carried from the previous image
 * @cfd, @bfd: its descriptors (checked by the caller; @bfd -1 when it had none), ours from now on on success
 *
 * The connection joins the acceptor of the service of the same name and resumes where it stopped: its unsent
 * bytes are sent first, its idle timer keeps its deadline, its counters go on, its backend (by name) counts
 * it again. Returns 0, -ENOENT (no such service accepted here), -ESTALE (the service changed between echo
 * and forwarding) or -ENOMEM; on failure the caller still owns the descriptors.
 */
int evfdd_relay_adopt(struct evfdd_relay *rl, const struct evfdd_carry_conn *r, int cfd, int bfd);

#endif
