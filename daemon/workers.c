/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "log.h"
#include "workers.h"

struct ring_slot {
	struct evfdd_workers *w;
	struct evfd_ring *ring;
	struct evfdd_relay *relay;       /* owner thread only */
	bool stopped;                    /* main thread only: relay stopped, ring being freed; hands off */
	bool gone;                       /* main thread only */
};

struct evfdd_workers {
	struct evfd_loop *main;
	struct evfd_loop **loops;
	unsigned nloops;
	struct ring_slot *slots;
	unsigned nrings, started, gone;
	struct evfdd_svc *const *svcs;
	unsigned nsvcs;
	struct evfdd_workers_params p;
	int start_err;
	bool ready_sent;
	void (*done)(void *arg);
	void *done_arg;
};

/* ---- results travel back to the main loop --------------------------------------------------------- */

struct report {
	struct ring_slot *slot;
	int err;
};

static void post_main(struct evfdd_workers *w, evfd_loop_fn fn, struct ring_slot *slot, int err)
{
	struct report *r = malloc(sizeof(*r));

	if (!r)
		fatalx("cannot report to the main loop: out of memory");
	r->slot = slot;
	r->err = err;
	if (evfd_loop_call(w->main, fn, r) < 0)
		fatalx("cannot report to the main loop: out of memory");
}

static void started_on_main(struct evfd_loop *loop, void *arg)
{
	struct report *r = arg;
	struct evfdd_workers *w = r->slot->w;

	if (r->err && !w->start_err)
		w->start_err = r->err;
	free(r);
	if (++w->started == w->nrings && !w->ready_sent) {
		w->ready_sent = true;
		w->p.ready(w->p.arg, w->start_err);
	}
}

static void ring_free_on_owner(struct evfd_ring *ring, int err, void *arg);

/* The relay has stopped: free its ring. From here on the main thread never names the ring again, so it
 * cannot race with the ring going away. */
static void stopped_on_main(struct evfd_loop *loop, void *arg)
{
	struct report *r = arg;
	struct ring_slot *slot = r->slot;

	free(r);
	slot->stopped = true;
	if (evfd_ring_call(slot->ring, ring_free_on_owner, slot) < 0)
		fatalx("cannot reach a ring to free it");
}

static void gone_on_main(struct evfd_loop *loop, void *arg)
{
	struct report *r = arg;
	struct evfdd_workers *w = r->slot->w;

	r->slot->gone = true;
	free(r);
	if (++w->gone == w->nrings && w->done)
		w->done(w->done_arg);
}

/* ---- on the ring's owner thread ------------------------------------------------------------------- */

static void ring_start(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_slot *slot = arg;
	struct evfdd_workers *w = slot->w;

	if (!err)
		err = evfdd_relay_start(ring, w->svcs, w->nsvcs, &w->p.relay, &slot->relay);
	post_main(w, started_on_main, slot, err);
}

static void relay_stopped(struct evfdd_relay *rl, void *arg)
{
	struct ring_slot *slot = arg;

	evfdd_relay_free(rl);
	slot->relay = NULL;
	post_main(slot->w, stopped_on_main, slot, 0);
}

static void ring_free_on_owner(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_slot *slot = arg;

	if (!err)
		err = evfd_ring_free(ring);
	if (err < 0)
		log_errx("freeing a ring: %s", strerror(-err));
	post_main(slot->w, gone_on_main, slot, 0);
}

static void ring_stop(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_slot *slot = arg;

	if (err || !slot->relay)
		return;
	evfdd_relay_stop(slot->relay, false, relay_stopped, slot);
}

static void ring_abort(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_slot *slot = arg;

	if (err || !slot->relay)
		return;
	evfdd_relay_stop(slot->relay, true, relay_stopped, slot);
}

/* ---- main thread ---------------------------------------------------------------------------------- */

static void workers_release(struct evfdd_workers *w)
{
	unsigned i;

	for (i = 0; i < w->nloops; i++)
		if (w->loops[i] && evfd_loop_free(w->loops[i]) < 0)
			log_errx("a worker loop is still busy at exit");
	free(w->loops);
	free(w->slots);
	free(w);
}

int evfdd_workers_start(struct evfdd_workers **out, const struct evfdd_workers_params *p,
			struct evfdd_svc *const *svcs, unsigned nsvcs)
{
	struct evfdd_workers *w;
	char name[16];
	unsigned i;
	int err;

	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->main = evfd_loop_current();
	w->p = *p;
	w->svcs = svcs;
	w->nsvcs = nsvcs;
	w->loops = calloc(p->loops, sizeof(*w->loops));
	w->slots = calloc(p->rings, sizeof(*w->slots));
	if (!w->loops || !w->slots) {
		err = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < p->loops; i++) {
		snprintf(name, sizeof(name), "evfdd-w%u", i % 10000);
		err = evfd_loop_spawn(&w->loops[i], name);
		if (err < 0)
			goto fail;
		w->nloops++;
	}
	for (i = 0; i < p->rings; i++) {
		struct ring_slot *slot = &w->slots[i];

		slot->w = w;
		err = evfd_ring_new(&slot->ring, w->loops[i % w->nloops], NULL);
		if (err < 0)
			goto fail_rings;
		w->nrings++;
	}
	/* Relays start on the owners; the adoption of each new ring is queued ahead of the call. */
	for (i = 0; i < w->nrings; i++) {
		err = evfd_ring_call(w->slots[i].ring, ring_start, &w->slots[i]);
		if (err < 0)
			fatalx("cannot start a relay: %s", strerror(-err));
	}
	*out = w;
	return 0;
fail_rings:
	/* Usually the first ring fails (io_uring unavailable) and nothing needs undoing. A later failure leaves
	 * rings on running loops; the daemon exits on this error and the kernel reclaims them. */
	if (w->nrings) {
		*out = NULL;
		return err;
	}
fail:
	workers_release(w);
	return err;
}

void evfdd_workers_stop(struct evfdd_workers *w, bool abort, void (*done)(void *arg), void *arg)
{
	unsigned i;

	w->done = done;
	w->done_arg = arg;
	if (w->gone == w->nrings) {
		done(arg);
		return;
	}
	for (i = 0; i < w->nrings; i++) {
		if (w->slots[i].stopped)
			continue;
		if (evfd_ring_call(w->slots[i].ring, abort ? ring_abort : ring_stop, &w->slots[i]) < 0)
			fatalx("cannot reach a ring to stop it");
	}
}

void evfdd_workers_free(struct evfdd_workers *w)
{
	if (w)
		workers_release(w);
}

unsigned long evfdd_workers_loops(const struct evfdd_workers *w)
{
	return w->nloops;
}

unsigned long evfdd_workers_rings(const struct evfdd_workers *w)
{
	return w->nrings;
}
