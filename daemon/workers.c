/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Worker loops and rings. The main thread keeps the plan: which loop each ring is on or headed for, and the
 * state of each. Owner threads run the relays and report back through the main loop's inbox, so no lock is
 * needed: main-thread fields are touched on the main thread only, relay pointers on the owner thread only.
 *
 * New rings are created on the main loop (so that undoing a failed apply is synchronous), then moved to
 * their loop; a relay call queued after the move follows the ring there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "carry.h"
#include "log.h"
#include "util.h"
#include "workers.h"

enum ring_state {
	R_STARTING,   /* created, relay not yet started */
	R_RUNNING,    /* accepting */
	R_DRAINING,   /* no longer accepting; goes when its connections end */
	R_CLOSING,    /* relay stopped, ring being freed: the main thread never names the ring again */
};

struct loop_slot {
	struct evfdd_workers *w;
	struct evfd_loop *loop;
	unsigned id;
	char name[16];
	atomic_int tid;
	bool retiring, retire_sent;
	struct loop_slot *successor;     /* a retiring loop's rings end up there */
	uint64_t hb_sent, hb_acked;
};

struct ring_slot {
	struct evfdd_workers *w;
	unsigned id;
	struct evfd_ring *ring;
	struct evfdd_relay *relay;       /* owner thread only */
	struct loop_slot *loop;          /* main: where it is or is headed; NULL on the main loop */
	enum ring_state state;           /* main */
	bool moving;                     /* main */
	struct evfdd_relay *parked;      /* main: its relay while parked (evfdd_workers_park), or NULL */
	atomic_uint nconns;
};

struct evfdd_workers {
	struct evfd_loop *main;
	struct evfdd_relay_params relay;
	unsigned ring_flags;             /* EVFD_RING_* for every ring */
	struct evfdd_relay_balance balance;
	struct loop_slot **loops;
	size_t nloops, loops_cap;
	struct ring_slot **rings;
	size_t nrings, rings_cap;
	unsigned next_ring_id;
	uint64_t hb_seq;
	/* the apply in progress */
	bool applying;
	unsigned apply_pending;
	int apply_err;
	void (*apply_done)(void *arg, int err);
	void *apply_arg;
	unsigned moves;                  /* moves asked through evfdd_workers_move, unfinished */
	uint64_t moves_made;             /* every move made, by hand or by an apply (failed ones not) */
	/* carrying connections to the next image: parking, parked, resuming or adopting */
	unsigned carry_pending;
	bool parked;
	void (*carry_done)(void *arg);
	void *carry_arg;
	/* stopping */
	bool stopping;
	void (*stop_done)(void *arg);
	void *stop_arg;
};

/* ---- messages ------------------------------------------------------------------------------------- */

/* What the main thread sends a ring's owner, one kind per request; the owner reports back with the same
 * message, or with the slot alone when that says everything. */
struct services_msg {                /* start a relay, or give it a new set of services */
	struct ring_slot *slot;
	struct evfdd_relay_service *svcs;   /* a reference of its own to each service and listener */
	unsigned nsvcs;
	int err;                         /* the start's result */
};

struct stop_msg {
	struct ring_slot *slot;
	enum evfdd_relay_stop_how how;
};

struct move_msg {
	struct ring_slot *slot;
	/* a move asked through evfdd_workers_move; NULL for the moves of an apply */
	void (*done)(void *arg, unsigned from, unsigned to, uint64_t usec);
	void *arg;
	unsigned from;
	uint64_t t0;
	bool moved;                      /* the ring reached its new owner */
};

struct hb_msg {
	struct evfdd_workers *w;
	unsigned loop_id;
	uint64_t seq;
};

static void *msg_alloc(size_t size)
{
	void *m = calloc(1, size);

	if (!m)
		fatalx("out of memory");
	return m;
}

/* A services message carrying a copy of @svcs with a reference of its own to each service and listener. */
static struct services_msg *services_msg_new(struct ring_slot *slot, const struct evfdd_relay_service *svcs,
					     unsigned n)
{
	struct services_msg *m = msg_alloc(sizeof(*m));
	unsigned i;

	m->slot = slot;
	m->svcs = msg_alloc((n ? n : 1) * sizeof(*m->svcs));
	for (i = 0; i < n; i++) {
		m->svcs[i].svc = evfdd_svc_ref(svcs[i].svc);
		m->svcs[i].lst = evfdd_listener_ref(svcs[i].lst);
	}
	m->nsvcs = n;
	return m;
}

/* Whatever references the message still holds (none once a relay took them). */
static void services_msg_free(struct services_msg *m)
{
	unsigned i;

	for (i = 0; i < m->nsvcs; i++) {
		evfdd_svc_unref(m->svcs[i].svc);
		evfdd_listener_unref(m->svcs[i].lst);
	}
	free(m->svcs);
	free(m);
}

static void post_main(struct evfdd_workers *w, evfd_loop_fn fn, void *arg)
{
	/* The main loop outlives every worker; only memory can fail, and then the plan is lost. */
	if (evfd_loop_call(w->main, fn, arg) < 0)
		fatalx("cannot report to the main loop: out of memory");
}

/* ---- bookkeeping on the main thread --------------------------------------------------------------- */

static void apply_step_done(struct evfdd_workers *w)
{
	if (--w->apply_pending || !w->applying)
		return;
	w->applying = false;
	w->apply_done(w->apply_arg, w->apply_err);
}

static void apply_release_on_main(struct evfd_loop *loop, void *arg)
{
	apply_step_done(arg);
}

static void ring_remove(struct evfdd_workers *w, struct ring_slot *slot)
{
	size_t i;

	for (i = 0; i < w->nrings && w->rings[i] != slot; i++)
		;
	if (i == w->nrings)
		return;
	memmove(&w->rings[i], &w->rings[i + 1], (w->nrings - i - 1) * sizeof(*w->rings));
	w->nrings--;
	free(slot);
	if (!w->nrings && w->stopping && w->stop_done) {
		void (*done)(void *) = w->stop_done;

		w->stop_done = NULL;
		done(w->stop_arg);
	}
}

static void loop_remove(struct evfdd_workers *w, struct loop_slot *ls)
{
	size_t i;

	for (i = 0; i < w->nloops && w->loops[i] != ls; i++)
		;
	if (i < w->nloops) {
		memmove(&w->loops[i], &w->loops[i + 1], (w->nloops - i - 1) * sizeof(*w->loops));
		w->nloops--;
	}
	free(ls);
}

static struct loop_slot *loop_by_id(const struct evfdd_workers *w, unsigned id)
{
	size_t i;

	for (i = 0; i < w->nloops; i++)
		if (w->loops[i]->id == id)
			return w->loops[i];
	return NULL;
}

/* ---- ring life on the owner thread, and the reports it sends ------------------------------------- */

static void gone_on_main(struct evfd_loop *loop, void *arg)
{
	struct ring_slot *slot = arg;

	ring_remove(slot->w, slot);
}

/* The ring is destroyed (evfd_ring_close told its owner): report it. */
static void ring_gone(struct evfd_loop *loop, void *arg)
{
	struct ring_slot *slot = arg;

	post_main(slot->w, gone_on_main, slot);
}

/* The relay's last request has completed, but the cancels libevfd issued for it may not have been reaped yet:
 * libevfd frees the ring once they have, and says so. */
static void ring_close_on_owner(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_slot *slot = arg;

	if (!err)
		err = evfd_ring_close(ring, ring_gone, slot);
	if (err < 0) {
		log_errx("closing ring %u: %s", slot->id, strerror(-err));
		post_main(slot->w, gone_on_main, slot);
	}
}

/* The relay has stopped: from now on the main thread never names the ring again (R_CLOSING), then the owner
 * closes it. */
static void stopped_on_main(struct evfd_loop *loop, void *arg)
{
	struct ring_slot *slot = arg;

	slot->state = R_CLOSING;
	if (evfd_ring_call(slot->ring, ring_close_on_owner, slot) < 0)
		fatalx("cannot reach ring %u to close it", slot->id);
}

static void relay_stopped(struct evfdd_relay *rl, void *arg)
{
	struct ring_slot *slot = arg;

	evfdd_relay_free(rl);
	slot->relay = NULL;
	post_main(slot->w, stopped_on_main, slot);
}

static void started_on_main(struct evfd_loop *loop, void *arg)
{
	struct services_msg *m = arg;
	struct ring_slot *slot = m->slot;
	struct evfdd_workers *w = slot->w;

	if (m->err) {
		/* The owner freed the ring already. */
		log_errx("ring %u: cannot start its relay: %s", slot->id, strerror(-m->err));
		if (!w->apply_err)
			w->apply_err = m->err;
		ring_remove(w, slot);
	} else if (slot->state == R_STARTING) {
		slot->state = R_RUNNING;
	}
	services_msg_free(m);
	apply_step_done(w);
}

static void ring_start(struct evfd_ring *ring, int err, void *arg)
{
	struct services_msg *m = arg;
	struct ring_slot *slot = m->slot;

	if (!err) {
		err = evfdd_relay_start(ring, m->svcs, m->nsvcs, &slot->w->relay, &slot->nconns, &slot->relay);
		m->nsvcs = 0;   /* the relay took the references, also on failure */
		if (err < 0 && evfd_ring_free(ring) < 0)
			log_errx("ring %u: cannot free it after a failed start", slot->id);
	}
	m->err = err;
	post_main(slot->w, started_on_main, m);
}

static void updated_on_main(struct evfd_loop *loop, void *arg)
{
	struct services_msg *m = arg;
	struct evfdd_workers *w = m->slot->w;

	services_msg_free(m);
	apply_step_done(w);
}

static void ring_update(struct evfd_ring *ring, int err, void *arg)
{
	struct services_msg *m = arg;
	struct ring_slot *slot = m->slot;

	if (!err && slot->relay) {
		evfdd_relay_update(slot->relay, m->svcs, m->nsvcs);
		m->nsvcs = 0;   /* the references now belong to the relay */
	}
	post_main(slot->w, updated_on_main, m);
}

static void ring_stop(struct evfd_ring *ring, int err, void *arg)
{
	struct stop_msg *m = arg;
	struct ring_slot *slot = m->slot;
	enum evfdd_relay_stop_how how = m->how;

	free(m);
	if (!err && slot->relay)
		evfdd_relay_stop(slot->relay, how, relay_stopped, slot);
}

static void moved_on_main(struct evfd_loop *loop, void *arg)
{
	struct move_msg *m = arg;
	struct ring_slot *slot = m->slot;
	struct evfdd_workers *w = slot->w;

	slot->moving = false;
	w->moves_made += m->moved;
	if (m->done) {
		w->moves--;
		m->done(m->arg, m->from, slot->loop->id, util_now_us(CLOCK_MONOTONIC) - m->t0);
	} else {
		apply_step_done(w);
	}
	free(m);
}

static void ring_moved(struct evfd_ring *ring, int err, void *arg)
{
	struct move_msg *m = arg;

	if (err)
		log_errx("ring %u: move failed: %s", m->slot->id, strerror(-err));
	m->moved = !err;
	post_main(m->slot->w, moved_on_main, m);
}

/* Send @slot to @to (main thread); @m says who waits for it, or is NULL for a move of an apply. */
static void ring_send(struct ring_slot *slot, struct loop_slot *to, struct move_msg *m)
{
	if (!m) {
		m = msg_alloc(sizeof(*m));
		m->slot = slot;
	}
	slot->loop = to;
	slot->moving = true;
	if (evfd_ring_move(slot->ring, to->loop, ring_moved, m) < 0)
		fatalx("cannot move ring %u: out of memory", slot->id);
}

static void ring_call_or_die(struct ring_slot *slot, evfd_move_cb fn, void *m)
{
	if (evfd_ring_call(slot->ring, fn, m) < 0)
		fatalx("cannot reach ring %u: out of memory", slot->id);
}

static void ring_send_stop(struct ring_slot *slot, enum evfdd_relay_stop_how how)
{
	struct stop_msg *m = msg_alloc(sizeof(*m));

	m->slot = slot;
	m->how = how;
	ring_call_or_die(slot, ring_stop, m);
}

/* ---- loops ---------------------------------------------------------------------------------------- */

static void tid_on_loop(struct evfd_loop *loop, void *arg)
{
	struct loop_slot *ls = arg;

	atomic_store(&ls->tid, (int)syscall(SYS_gettid));
}

static void retired_on_main(struct evfd_loop *loop, void *arg)
{
	struct loop_slot *ls = arg;
	struct evfdd_workers *w = ls->w;
	size_t r;

	/* libevfd handed whatever was still here (a ring being freed) to the successor. */
	for (r = 0; r < w->nrings; r++)
		if (w->rings[r]->loop == ls)
			w->rings[r]->loop = ls->successor;
	/* Joins the thread: it has returned from ev_run, or is about to. */
	if (evfd_loop_free(ls->loop) < 0)
		log_errx("worker loop %u still busy after retiring; leaving it", ls->id);
	loop_remove(w, ls);
	apply_step_done(w);
}

static void retired_on_loop(struct evfd_loop *loop, void *arg)
{
	struct loop_slot *ls = arg;

	post_main(ls->w, retired_on_main, ls);
}

static int loop_spawn(struct evfdd_workers *w, struct loop_slot **out)
{
	static unsigned serial;
	struct loop_slot *ls = calloc(1, sizeof(*ls));
	int err;

	if (!ls)
		return -ENOMEM;
	snprintf(ls->name, sizeof(ls->name), "evfdd-w%u", serial++ % 10000);
	err = evfd_loop_spawn(&ls->loop, ls->name);
	if (err < 0) {
		free(ls);
		return err;
	}
	ls->w = w;
	ls->id = evfd_loop_id(ls->loop);
	atomic_init(&ls->tid, 0);
	ls->hb_sent = ls->hb_acked = w->hb_seq;
	(void)evfd_loop_call(ls->loop, tid_on_loop, ls);
	*out = ls;
	return 0;
}

/* ---- apply ---------------------------------------------------------------------------------------- */

static int ring_create(struct evfdd_workers *w, struct ring_slot **out)
{
	struct evfd_ring_params rp = { 0 };
	struct ring_slot *slot = calloc(1, sizeof(*slot));
	int err;

	if (!slot)
		return -ENOMEM;
	rp.restrictions = evfdd_relay_restrictions(&rp.nr_restrictions);
	err = evfd_ring_new_flags(&slot->ring, w->main, &rp, w->ring_flags);
	if (err < 0) {
		free(slot);
		return err;
	}
	slot->w = w;
	slot->state = R_STARTING;
	atomic_init(&slot->nconns, 0);
	*out = slot;
	return 0;
}

/* Rings placed on @ls (or headed there), in every state. */
static unsigned rings_on(const struct evfdd_workers *w, const struct loop_slot *ls)
{
	unsigned n = 0;
	size_t r;

	for (r = 0; r < w->nrings; r++)
		n += w->rings[r]->loop == ls;
	return n;
}

/* Spread the running rings evenly over the loops that stay, moving as few as possible; draining rings on
 * retiring loops go to the least loaded. Returns the number of moves started. */
static unsigned place_rings(struct evfdd_workers *w, struct loop_slot **stay, unsigned nstay,
			    struct ring_slot **fresh, unsigned nfresh, const struct evfdd_relay_service *svcs,
			    unsigned nsvcs)
{
	unsigned running = nfresh, i, j, moves = 0, *quota, *have;
	size_t r;

	for (r = 0; r < w->nrings; r++)
		if (w->rings[r]->state == R_RUNNING)
			running++;
	quota = calloc(nstay, sizeof(*quota));
	have = calloc(nstay, sizeof(*have));
	if (!quota || !have)
		fatalx("out of memory");
	for (i = 0; i < nstay; i++)
		for (r = 0; r < w->nrings; r++)
			if (w->rings[r]->state == R_RUNNING && w->rings[r]->loop == stay[i])
				have[i]++;
	/* Loops that already hold more running rings get the remainder, so fewer rings move. */
	for (i = 0; i < nstay; i++)
		quota[i] = running / nstay;
	for (j = 0; j < running % nstay; j++) {
		unsigned best = nstay;

		for (i = 0; i < nstay; i++)
			if (quota[i] == running / nstay && (best == nstay || have[i] > have[best]))
				best = i;
		quota[best]++;
	}
	/* Keep what fits; everything else moves to loops under quota. */
	memset(have, 0, nstay * sizeof(*have));
	for (r = 0; r < w->nrings; r++) {
		struct ring_slot *s = w->rings[r];

		if (s->state != R_RUNNING)
			continue;
		for (i = 0; i < nstay && s->loop != stay[i]; i++)
			;
		if (i < nstay && have[i] < quota[i]) {
			have[i]++;
			continue;
		}
		for (i = 0; i < nstay && have[i] >= quota[i]; i++)
			;
		have[i]++;
		ring_send(s, stay[i], NULL);
		moves++;
	}
	for (j = 0; j < nfresh; j++) {
		struct ring_slot *s = fresh[j];

		for (i = 0; i < nstay && have[i] >= quota[i]; i++)
			;
		have[i]++;
		/* Moved first, then started where it lands: the start message follows the move. The move's
		 * report counts as the start's, the start's own report arrives later. */
		ring_send(s, stay[i], NULL);
		ring_call_or_die(s, ring_start, services_msg_new(s, svcs, nsvcs));
		moves += 2;
	}
	/* Draining rings left on retiring loops. */
	for (r = 0; r < w->nrings; r++) {
		struct ring_slot *s = w->rings[r];
		unsigned best = 0;

		if (s->state != R_DRAINING || !s->loop || !s->loop->retiring || s->moving)
			continue;
		for (i = 1; i < nstay; i++)
			if (rings_on(w, stay[i]) < rings_on(w, stay[best]))
				best = i;
		ring_send(s, stay[best], NULL);
		moves++;
	}
	free(quota);
	free(have);
	return moves;
}

int evfdd_workers_apply(struct evfdd_workers *w, unsigned loops, unsigned rings,
			const struct evfdd_relay_service *svcs, unsigned nsvcs,
			void (*done)(void *arg, int err), void *arg)
{
	struct loop_slot **fresh_loops = NULL, **stay = NULL;
	struct ring_slot **fresh_rings = NULL;
	unsigned nfresh_loops = 0, nfresh_rings = 0, have_loops = 0, have_rings = 0, nstay = 0, i;
	int err = 0;
	size_t r;

	if (w->applying || w->moves)
		return -EBUSY;
	if (!loops || !rings || w->stopping)
		return -EINVAL;
	for (r = 0; r < w->nloops; r++)
		have_loops += !w->loops[r]->retiring;
	for (r = 0; r < w->nrings; r++)
		have_rings += w->rings[r]->state == R_RUNNING;
	fresh_loops = calloc(loops, sizeof(*fresh_loops));
	fresh_rings = calloc(rings, sizeof(*fresh_rings));
	stay = calloc(loops, sizeof(*stay));
	if (!fresh_loops || !fresh_rings || !stay) {
		err = -ENOMEM;
		goto out;
	}
	/* Everything that can fail, first. */
	for (i = have_loops; i < loops; i++) {
		err = loop_spawn(w, &fresh_loops[nfresh_loops]);
		if (err < 0)
			goto undo;
		nfresh_loops++;
	}
	for (i = have_rings; i < rings; i++) {
		err = ring_create(w, &fresh_rings[nfresh_rings]);
		if (err < 0)
			goto undo;
		nfresh_rings++;
	}
	if (util_grow((void **)&w->loops, &w->loops_cap, w->nloops + nfresh_loops, sizeof(*w->loops)) < 0 ||
	    util_grow((void **)&w->rings, &w->rings_cap, w->nrings + nfresh_rings, sizeof(*w->rings)) < 0) {
		err = -ENOMEM;
		goto undo;
	}

	/* Commit. */
	w->applying = true;
	w->apply_err = 0;
	w->apply_done = done;
	w->apply_arg = arg;
	w->apply_pending = 1;   /* released at the end, so that nothing completes the apply half-way */
	for (i = 0; i < nfresh_loops; i++)
		w->loops[w->nloops++] = fresh_loops[i];
	for (r = 0; r < w->nloops; r++) {
		struct loop_slot *ls = w->loops[r];

		if (ls->retiring)
			continue;
		if (nstay < loops)
			stay[nstay++] = ls;
		else
			ls->retiring = true;
	}
	/* Surplus rings drain; the others accept on the new services. */
	for (r = 0, i = 0; r < w->nrings; r++) {
		struct ring_slot *s = w->rings[r];

		if (s->state != R_RUNNING)
			continue;
		if (i++ >= rings) {
			s->state = R_DRAINING;
			ring_send_stop(s, EVFDD_RELAY_RETIRE);
			continue;
		}
		ring_call_or_die(s, ring_update, services_msg_new(s, svcs, nsvcs));
		w->apply_pending++;
	}
	for (i = 0; i < nfresh_rings; i++) {
		struct ring_slot *s = fresh_rings[i];

		s->id = w->next_ring_id++;
		w->rings[w->nrings++] = s;
	}
	w->apply_pending += place_rings(w, stay, nstay, fresh_rings, nfresh_rings, svcs, nsvcs);
	/* Retire the surplus loops; their rings are on their way out already (moves queue ahead). */
	for (r = 0; r < w->nloops; r++) {
		struct loop_slot *ls = w->loops[r];

		if (!ls->retiring || ls->retire_sent)
			continue;
		ls->retire_sent = true;
		ls->successor = stay[0];
		if (evfd_loop_retire(ls->loop, stay[0]->loop, retired_on_loop, ls) < 0)
			fatalx("cannot retire worker loop %u", ls->id);
		w->apply_pending++;
	}
	/* Nothing asynchronous to wait for (no ring running, none new): still report from the loop, so that @done
	 * never runs before this returns. */
	if (w->apply_pending == 1)
		post_main(w, apply_release_on_main, w);
	else
		apply_step_done(w);
	goto out;
undo:
	for (i = 0; i < nfresh_rings; i++) {
		if (evfd_ring_free(fresh_rings[i]->ring) < 0)
			log_errx("cannot free a new ring after a failed apply");
		free(fresh_rings[i]);
	}
	for (i = 0; i < nfresh_loops; i++) {
		if (evfd_loop_free(fresh_loops[i]->loop) < 0)
			log_errx("cannot free a new worker loop after a failed apply");
		free(fresh_loops[i]);
	}
out:
	free(fresh_loops);
	free(fresh_rings);
	free(stay);
	return err;
}

bool evfdd_workers_busy(const struct evfdd_workers *w)
{
	return w->applying || w->moves || w->carry_pending || w->parked;
}

int evfdd_workers_move(struct evfdd_workers *w, unsigned ring_id, unsigned loop_id,
		       void (*done)(void *arg, unsigned from, unsigned to, uint64_t usec), void *arg)
{
	struct ring_slot *slot = NULL;
	struct loop_slot *to;
	struct move_msg *m;
	size_t r;

	for (r = 0; r < w->nrings; r++)
		if (w->rings[r]->id == ring_id)
			slot = w->rings[r];
	if (!slot)
		return -ENOENT;
	to = loop_by_id(w, loop_id);
	if (!to || to->retiring)
		return -ESRCH;
	if (w->applying || w->stopping || slot->moving || slot->state != R_RUNNING)
		return -EBUSY;
	m = msg_alloc(sizeof(*m));
	m->slot = slot;
	m->done = done;
	m->arg = arg;
	m->from = slot->loop ? slot->loop->id : 0;
	m->t0 = util_now_us(CLOCK_MONOTONIC);
	w->moves++;
	ring_send(slot, to, m);
	return 0;
}

/* ---- start, stop, free ---------------------------------------------------------------------------- */

int evfdd_workers_new(struct evfdd_workers **out, const struct evfdd_relay_params *relay, unsigned ring_flags)
{
	struct evfdd_workers *w = calloc(1, sizeof(*w));

	if (!w)
		return -ENOMEM;
	w->main = evfd_loop_current();
	w->relay = *relay;
	w->ring_flags = ring_flags;
	w->relay.balance = &w->balance;
	*out = w;
	return 0;
}

void evfdd_workers_stop(struct evfdd_workers *w, bool abort, void (*done)(void *arg), void *arg)
{
	size_t r;

	w->stopping = true;
	w->stop_done = done;
	w->stop_arg = arg;
	if (!w->nrings) {
		w->stop_done = NULL;
		done(arg);
		return;
	}
	for (r = 0; r < w->nrings; r++) {
		struct ring_slot *s = w->rings[r];

		if (s->state == R_CLOSING || (s->state == R_DRAINING && !abort))
			continue;
		if (s->state == R_RUNNING)
			s->state = R_DRAINING;
		ring_send_stop(s, abort ? EVFDD_RELAY_ABORT : EVFDD_RELAY_STOP);
	}
}

void evfdd_workers_free(struct evfdd_workers *w)
{
	size_t i;

	if (!w)
		return;
	for (i = 0; i < w->nloops; i++) {
		if (evfd_loop_free(w->loops[i]->loop) < 0)
			log_errx("worker loop %u is still busy at exit", w->loops[i]->id);
		free(w->loops[i]);
	}
	for (i = 0; i < w->nrings; i++)
		free(w->rings[i]);
	free(w->loops);
	free(w->rings);
	free(w);
}

/* ---- reading -------------------------------------------------------------------------------------- */

unsigned long evfdd_workers_open(const struct evfdd_workers *w)
{
	unsigned long n = 0;
	size_t r;

	for (r = 0; r < w->nrings; r++)
		n += atomic_load_explicit(&w->rings[r]->nconns, memory_order_relaxed);
	return n;
}

unsigned evfdd_workers_loops(const struct evfdd_workers *w)
{
	unsigned n = 0;
	size_t i;

	for (i = 0; i < w->nloops; i++)
		n += !w->loops[i]->retiring;
	return n;
}

uint64_t evfdd_workers_moves(const struct evfdd_workers *w)
{
	return w ? w->moves_made : 0;
}

unsigned evfdd_workers_rings(const struct evfdd_workers *w)
{
	unsigned n = 0;
	size_t i;

	for (i = 0; i < w->nrings; i++)
		n += w->rings[i]->state == R_RUNNING || w->rings[i]->state == R_STARTING;
	return n;
}

int evfdd_workers_loop_info(const struct evfdd_workers *w, struct evfdd_loop_info **out, size_t *n)
{
	struct evfdd_loop_info *v = calloc(w->nloops ? w->nloops : 1, sizeof(*v));
	size_t i;

	if (!v)
		return -ENOMEM;
	for (i = 0; i < w->nloops; i++) {
		const struct loop_slot *ls = w->loops[i];

		v[i].id = ls->id;
		memcpy(v[i].name, ls->name, sizeof(v[i].name));
		v[i].tid = atomic_load(&ls->tid);
		v[i].retiring = ls->retiring;
		evfd_loop_stats(ls->loop, &v[i].st);
	}
	*out = v;
	*n = w->nloops;
	return 0;
}

int evfdd_workers_ring_info(const struct evfdd_workers *w, struct evfdd_ring_info **out, size_t *n)
{
	struct evfdd_ring_info *v = calloc(w->nrings ? w->nrings : 1, sizeof(*v));
	size_t i;

	if (!v)
		return -ENOMEM;
	for (i = 0; i < w->nrings; i++) {
		struct ring_slot *s = w->rings[i];

		v[i].id = s->id;
		v[i].connections = atomic_load_explicit(&s->nconns, memory_order_relaxed);
		switch (s->state) {
		case R_STARTING:
			v[i].state = "starting";
			break;
		case R_RUNNING:
			v[i].state = s->moving ? "moving" : "running";
			break;
		case R_DRAINING:
			v[i].state = "draining";
			break;
		case R_CLOSING:
			v[i].state = "closing";
			break;
		}
		/* A closing ring may be gone already: only its slot is left to read. */
		if (s->state != R_CLOSING)
			evfd_ring_stats(s->ring, &v[i].st);
		v[i].loop = s->state != R_CLOSING ? v[i].st.owner_id : (s->loop ? s->loop->id : 0);
	}
	*out = v;
	*n = w->nrings;
	return 0;
}

/* ---- watchdog ------------------------------------------------------------------------------------- */

static void hb_on_main(struct evfd_loop *loop, void *arg)
{
	struct hb_msg *m = arg;
	struct loop_slot *ls = loop_by_id(m->w, m->loop_id);

	if (ls && m->seq > ls->hb_acked)
		ls->hb_acked = m->seq;
	free(m);
}

static void hb_on_loop(struct evfd_loop *loop, void *arg)
{
	struct hb_msg *m = arg;

	post_main(m->w, hb_on_main, m);
}

bool evfdd_workers_heartbeat(struct evfdd_workers *w)
{
	bool alive = true;
	size_t i;

	w->hb_seq++;
	for (i = 0; i < w->nloops; i++) {
		struct loop_slot *ls = w->loops[i];
		struct hb_msg *m;

		if (ls->retiring)
			continue;
		if (ls->hb_acked < ls->hb_sent)
			alive = false;
		m = msg_alloc(sizeof(*m));
		m->w = w;
		m->loop_id = ls->id;
		m->seq = w->hb_seq;
		ls->hb_sent = w->hb_seq;
		if (evfd_loop_call(ls->loop, hb_on_loop, m) < 0)
			free(m);
	}
	return alive;
}

/* ---- carrying connections to the next image ------------------------------------------------------- */

struct park_msg {
	struct ring_slot *slot;
	struct evfdd_relay *relay;       /* what the owner parked (NULL: it had none left) */
	bool release;                    /* unpark: let go of what was exported */
};

struct adopt_msg {
	struct ring_slot *slot;
	struct evfdd_adopt **items;
	size_t n;
};

static void carry_step_done(struct evfdd_workers *w)
{
	void (*done)(void *) = w->carry_done;

	if (--w->carry_pending)
		return;
	w->carry_done = NULL;
	done(w->carry_arg);
}

static void parked_on_main(struct evfd_loop *loop, void *arg)
{
	struct park_msg *m = arg;
	struct evfdd_workers *w = m->slot->w;

	m->slot->parked = m->relay;
	free(m);
	carry_step_done(w);
}

static void relay_parked(struct evfdd_relay *rl, void *arg)
{
	struct park_msg *m = arg;

	post_main(m->slot->w, parked_on_main, m);
}

static void ring_park(struct evfd_ring *ring, int err, void *arg)
{
	struct park_msg *m = arg;

	m->relay = err ? NULL : m->slot->relay;
	if (m->relay)
		evfdd_relay_park(m->relay, relay_parked, m);
	else
		post_main(m->slot->w, parked_on_main, m);
}

int evfdd_workers_park(struct evfdd_workers *w, void (*done)(void *arg), void *arg)
{
	size_t r;

	if (evfdd_workers_busy(w) || w->stopping)
		return -EBUSY;
	w->parked = true;
	w->carry_done = done;
	w->carry_arg = arg;
	w->carry_pending = 1;            /* until every message is out */
	for (r = 0; r < w->nrings; r++) {
		struct ring_slot *slot = w->rings[r];
		struct park_msg *m;

		if (slot->state == R_CLOSING)
			continue;
		m = msg_alloc(sizeof(*m));
		m->slot = slot;
		w->carry_pending++;
		ring_call_or_die(slot, ring_park, m);
	}
	carry_step_done(w);
	return 0;
}

int evfdd_workers_export(struct evfdd_workers *w, struct evfdd_carry_writer *cw, size_t *fds_left, unsigned *n)
{
	size_t r;
	int err;

	*n = 0;
	for (r = 0; r < w->nrings; r++)
		if (w->rings[r]->parked && (err = evfdd_relay_export(w->rings[r]->parked, cw, fds_left, n)) < 0)
			return err;
	return 0;
}

static void unparked_on_main(struct evfd_loop *loop, void *arg)
{
	struct park_msg *m = arg;
	struct evfdd_workers *w = m->slot->w;

	free(m);
	carry_step_done(w);
}

static void ring_unpark(struct evfd_ring *ring, int err, void *arg)
{
	struct park_msg *m = arg;

	evfdd_relay_unpark(m->relay, m->release);
	post_main(m->slot->w, unparked_on_main, m);
}

void evfdd_workers_unpark(struct evfdd_workers *w, bool release, void (*done)(void *arg), void *arg)
{
	size_t r;

	w->parked = false;
	w->carry_done = done;
	w->carry_arg = arg;
	w->carry_pending = 1;
	for (r = 0; r < w->nrings; r++) {
		struct ring_slot *slot = w->rings[r];
		struct park_msg *m;

		if (!slot->parked)
			continue;
		m = msg_alloc(sizeof(*m));
		m->slot = slot;
		m->relay = slot->parked;
		m->release = release;
		slot->parked = NULL;
		w->carry_pending++;
		ring_call_or_die(slot, ring_unpark, m);
	}
	carry_step_done(w);
}

static void adopted_on_main(struct evfd_loop *loop, void *arg)
{
	struct adopt_msg *m = arg;
	struct evfdd_workers *w = m->slot->w;

	free(m->items);
	free(m);
	carry_step_done(w);
}

static void ring_adopt(struct evfd_ring *ring, int err, void *arg)
{
	struct adopt_msg *m = arg;
	size_t i;

	for (i = 0; i < m->n; i++)
		m->items[i]->err = err ? err : m->slot->relay ?
			evfdd_relay_adopt(m->slot->relay, m->items[i]->r, m->items[i]->cfd, m->items[i]->bfd) : -ENOENT;
	post_main(m->slot->w, adopted_on_main, m);
}

static int adopt_cmp(const void *a, const void *b)
{
	uint64_t x = (*(struct evfdd_adopt *const *)a)->r->last_ns, y = (*(struct evfdd_adopt *const *)b)->r->last_ns;

	return x < y ? -1 : x > y;
}

int evfdd_workers_adopt(struct evfdd_workers *w, struct evfdd_adopt *items, size_t n, void (*done)(void *arg),
			void *arg)
{
	struct ring_slot **run;
	size_t nrun = 0, r, i;

	if (evfdd_workers_busy(w) || w->stopping)
		return -EBUSY;
	run = calloc(w->nrings ? w->nrings : 1, sizeof(*run));
	if (!run)
		return -ENOMEM;
	for (r = 0; r < w->nrings; r++)
		if (w->rings[r]->state == R_RUNNING)
			run[nrun++] = w->rings[r];
	w->carry_done = done;
	w->carry_arg = arg;
	w->carry_pending = 1;
	for (r = 0; r < nrun; r++) {
		struct adopt_msg *m = msg_alloc(sizeof(*m));

		m->slot = run[r];
		m->items = msg_alloc((n / nrun + 1) * sizeof(*m->items));
		/* Round robin: the connections spread evenly over the rings, whatever their number now. */
		for (i = r; i < n; i += nrun)
			m->items[m->n++] = &items[i];
		/* Oldest activity first: each joins the end of its acceptor's list. */
		qsort(m->items, m->n, sizeof(*m->items), adopt_cmp);
		w->carry_pending++;
		ring_call_or_die(run[r], ring_adopt, m);
	}
	for (i = 0; !nrun && i < n; i++)
		items[i].err = -ENOENT;
	free(run);
	carry_step_done(w);
	return 0;
}
