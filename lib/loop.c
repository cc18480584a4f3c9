/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Loops: one libev loop run by one thread, its eventfd (ring completions and inbox doorbell in one), its
 * inbox, and retirement. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "internal.h"

__thread struct evfd_loop *evfd__tls_loop;
static atomic_uint next_loop_id;

/* libev calls these around every blocking poll: an idle loop is offline, so it never delays a grace
 * period, and each iteration passes a quiescent state. */
static void loop_release(struct ev_loop *ev)
{
	EVFD_QS_RELEASE();
	rcu_thread_offline();
}

static void loop_acquire(struct ev_loop *ev)
{
	rcu_thread_online();
}

int evfd__loop_post(struct evfd_loop *l, struct evfd_msg *m)
{
	bool was_empty;

	m->next = NULL;
	pthread_mutex_lock(&l->lock);
	if (l->closed) {
		pthread_mutex_unlock(&l->lock);
		return -ENXIO;
	}
	was_empty = l->head == NULL;
	*l->tailp = m;
	l->tailp = &m->next;
	pthread_mutex_unlock(&l->lock);
	/* The loop resets the eventfd before it takes the inbox, so one ring per empty->non-empty edge is
	 * enough. */
	if (was_empty)
		evfd__loop_wake(l);
	return 0;
}

void evfd__loop_wake(struct evfd_loop *l)
{
	/* Cannot fail short of a counter overflow (2^64-2 unread wakeups); EAGAIN then still means "awake". */
	(void)eventfd_write(l->efd, 1);
}

void evfd__loop_link_ring(struct evfd_loop *l, struct evfd_ring *r)
{
	r->lprev = NULL;
	r->lnext = l->rings;
	if (l->rings)
		l->rings->lprev = r;
	l->rings = r;
	STAT_ADD(l->nrings, 1);
}

void evfd__loop_unlink_ring(struct evfd_loop *l, struct evfd_ring *r)
{
	if (l->iter_next == r)
		l->iter_next = r->lnext;
	if (r->lprev)
		r->lprev->lnext = r->lnext;
	else
		l->rings = r->lnext;
	if (r->lnext)
		r->lnext->lprev = r->lprev;
	r->lnext = r->lprev = NULL;
	STAT_ADD(l->nrings, -1);
}

/* Drop a reference taken on @l by a move, an adoption or a successor role. The last one may let a retiring
 * loop finish; the caller is a loop thread (RCU reader), so @l outlives this call (evfd_loop_free waits for
 * a grace period). */
void evfd__loop_put_move_ref(struct evfd_loop *l)
{
	if (atomic_fetch_sub(&l->move_refs, 1) == 1 && atomic_load(&l->retiring))
		evfd__loop_wake(l);
}

static void loop_run_msg(struct evfd_loop *l, struct evfd_msg *m)
{
	switch (m->kind) {
	case EVFD_MSG_CALL:
		m->call.fn(l, m->call.arg);
		free(m);
		break;
	case EVFD_MSG_MOVE:
	case EVFD_MSG_RING_CALL:
		evfd__move_handle(l, m);
		break;
	case EVFD_MSG_ADOPT:
		evfd__move_adopt(l, m);
		break;
	case EVFD_MSG_RETIRE:
		l->successor = m->retire.to;
		l->retire_done = m->retire.done;
		l->retire_arg = m->retire.arg;
		free(m);
		break;
	}
}

static void loop_run_inbox(struct evfd_loop *l)
{
	struct evfd_msg *m, *next;

	pthread_mutex_lock(&l->lock);
	m = l->head;
	l->head = NULL;
	l->tailp = &l->head;
	pthread_mutex_unlock(&l->lock);
	for (; m; m = next) {
		next = m->next;
		loop_run_msg(l, m);
	}
}

/* Everything a wakeup does: messages first (an adoption drains its ring), then every owned ring (one eventfd
 * cannot say which ring fired), then submissions made by callbacks, then retirement. */
static void loop_process(struct evfd_loop *l)
{
	struct evfd_ring *r;

	loop_run_inbox(l);
	/* A callback may free any ring of this loop, so the walk keeps its next step where unlinking can fix
	 * it up. */
	for (r = l->rings; r; r = l->iter_next) {
		l->iter_next = r->lnext;
		if (evfd__ring_drain(r))
			(void)evfd__ring_flush(r);
	}
	if (atomic_load_explicit(&l->retiring, memory_order_relaxed))
		evfd__loop_retire_step(l);
}

/* Completions already posted by the submissions loop_process just made (a send into a socket with room, a
 * recv with data waiting complete inside io_uring_enter). */
static bool loop_cq_ready(const struct evfd_loop *l)
{
	const struct evfd_ring *r;

	for (r = l->rings; r; r = r->lnext)
		if (io_uring_cq_ready(&r->uring) || io_uring_cq_has_overflow(&r->uring))
			return true;
	return false;
}

#define LOOP_ROUNDS 4   /* rounds per wakeup before giving other watchers their turn */

static void loop_efd_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct evfd_loop *l = w->data;
	unsigned round = 0;
	eventfd_t v;

	STAT_ADD(l->wakeups, 1);
	/* Reset before looking at the inbox and the CQs: anything posted after this read rings again. Going
	 * round again at once for completions the last round's submissions produced saves a trip through
	 * epoll; each round keeps the read-then-drain order. */
	do {
		(void)eventfd_read(l->efd, &v);
		loop_process(l);
	} while (++round < LOOP_ROUNDS && loop_cq_ready(l));
}

/* Before the loop blocks: enter what other watchers' callbacks queued. A flush that could not complete
 * (CQ overflow backlog) keeps the loop from blocking until it does. */
static void loop_prepare_cb(struct ev_loop *ev, ev_prepare *w, int revents)
{
	struct evfd_loop *l = w->data;
	struct evfd_ring *r;
	bool again = false;

	for (r = l->rings; r; r = r->lnext) {
		if ((r->npending || r->backlog) && evfd__ring_flush(r) < 0)
			again = true;
		if (r->migrate_scan)
			again = true;
	}
	if (again)
		ev_feed_event(ev, &l->efd_w, EV_READ);
}

void evfd__loop_retire_step(struct evfd_loop *l)
{
	struct evfd_ring *r, *next;

	if (atomic_load(&l->finished) || !l->successor)
		return;
	for (r = l->rings; r; r = next) {
		next = r->lnext;
		if (evfd__move_away(l, r, l->successor) < 0) {
			/* Out of memory or a failed eventfd swap: the ring stays here; try again soon. */
			ev_feed_event(l->ev, &l->efd_w, EV_READ);
			return;
		}
	}
	if (l->rings || atomic_load(&l->inflight) || atomic_load(&l->move_refs))
		return;
	atomic_store(&l->finished, true);
	if (l->retire_done)
		l->retire_done(l, l->retire_arg);
	evfd__loop_put_move_ref(l->successor);
	if (l->spawned)
		ev_break(l->ev, EVBREAK_ALL);
}

static int loop_init(struct evfd_loop **out, struct ev_loop *ev)
{
	struct evfd_loop *l;
	int err;

	if (evfd__tls_loop)
		return -EEXIST;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (l->efd < 0) {
		err = -errno;
		goto fail;
	}
	if (!ev) {
		ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
		if (!ev) {
			err = -ENOMEM;
			goto fail;
		}
		l->own_ev = true;
	}
	l->ev = ev;
	l->id = atomic_fetch_add(&next_loop_id, 1);
	pthread_mutex_init(&l->lock, NULL);
	l->tailp = &l->head;
	l->thread = pthread_self();

	rcu_register_thread();
	ev_set_loop_release_cb(ev, loop_release, loop_acquire);
	ev_io_init(&l->efd_w, loop_efd_cb, l->efd, EV_READ);
	l->efd_w.data = l;
	ev_io_start(ev, &l->efd_w);
	ev_prepare_init(&l->prep_w, loop_prepare_cb);
	l->prep_w.data = l;
	ev_prepare_start(ev, &l->prep_w);
	evfd__tls_loop = l;
	*out = l;
	return 0;
fail:
	if (l->efd >= 0)
		close(l->efd);
	free(l);
	return err;
}

int evfd_loop_new(struct evfd_loop **out, struct ev_loop *ev)
{
	return loop_init(out, ev);
}

/* The end of a loop's life on its own thread. Readers that saw a binding naming this loop may still post to
 * it until a grace period has passed; forward what they sent, then refuse further posts. */
static void loop_detach(struct evfd_loop *l)
{
	ev_prepare_stop(l->ev, &l->prep_w);
	ev_io_stop(l->ev, &l->efd_w);
	evfd__rcu_synchronize();
	loop_run_inbox(l);
	pthread_mutex_lock(&l->lock);
	l->closed = true;
	pthread_mutex_unlock(&l->lock);
	ev_set_loop_release_cb(l->ev, NULL, NULL);
	EVFD_QS_RELEASE();
	rcu_unregister_thread();
	if (l->own_ev)
		ev_loop_destroy(l->ev);
	l->ev = NULL;
	evfd__tls_loop = NULL;
}

struct spawn_ctx {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready;
	int err;
	struct evfd_loop *loop;
	char name[16];
};

static void *loop_thread(void *arg)
{
	struct spawn_ctx *sc = arg;
	struct evfd_loop *l = NULL;
	int err;

	if (sc->name[0])
		pthread_setname_np(pthread_self(), sc->name);
	err = loop_init(&l, NULL);
	if (l)
		l->spawned = true;
	pthread_mutex_lock(&sc->lock);
	sc->err = err;
	sc->loop = l;
	sc->ready = true;
	pthread_cond_signal(&sc->cond);
	pthread_mutex_unlock(&sc->lock);
	if (err)
		return NULL;
	ev_run(l->ev, 0);
	loop_detach(l);
	return NULL;
}

int evfd_loop_spawn(struct evfd_loop **out, const char *name)
{
	struct spawn_ctx sc = { .err = 0 };
	sigset_t all, old;
	pthread_t t;
	int err;

	pthread_mutex_init(&sc.lock, NULL);
	pthread_cond_init(&sc.cond, NULL);
	if (name)
		snprintf(sc.name, sizeof(sc.name), "%s", name);
	/* Loop threads take no process signals: they belong to whoever handles them (the daemon's main loop). */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&t, NULL, loop_thread, &sc);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		goto out;
	pthread_mutex_lock(&sc.lock);
	while (!sc.ready)
		pthread_cond_wait(&sc.cond, &sc.lock);
	pthread_mutex_unlock(&sc.lock);
	err = sc.err;
	if (err) {
		pthread_join(t, NULL);
		goto out;
	}
	sc.loop->thread = t;
	*out = sc.loop;
out:
	pthread_cond_destroy(&sc.cond);
	pthread_mutex_destroy(&sc.lock);
	return err;
}

struct ev_loop *evfd_loop_ev(struct evfd_loop *l)
{
	return l->ev;
}

unsigned evfd_loop_id(const struct evfd_loop *l)
{
	return l->id;
}

struct evfd_loop *evfd_loop_current(void)
{
	return evfd__tls_loop;
}

int evfd_loop_call(struct evfd_loop *l, evfd_loop_fn fn, void *arg)
{
	struct evfd_msg *m;
	int err;

	if (!fn)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->kind = EVFD_MSG_CALL;
	m->call.fn = fn;
	m->call.arg = arg;
	err = evfd__loop_post(l, m);
	if (err)
		free(m);
	return err;
}

static int loop_post_retire(struct evfd_loop *l, struct evfd_loop *to, evfd_loop_fn done, void *arg)
{
	struct evfd_msg *m;
	bool expected = false;
	int err;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	if (!atomic_compare_exchange_strong(&l->retiring, &expected, true)) {
		free(m);
		return -EALREADY;
	}
	m->kind = EVFD_MSG_RETIRE;
	m->retire.to = to;
	m->retire.done = done;
	m->retire.arg = arg;
	atomic_fetch_add(&to->move_refs, 1);   /* @to may not finish retiring before @l has */
	err = evfd__loop_post(l, m);
	if (err) {
		atomic_fetch_sub(&to->move_refs, 1);
		atomic_store(&l->retiring, false);
		free(m);
	}
	return err;
}

int evfd_loop_retire(struct evfd_loop *l, struct evfd_loop *to, evfd_loop_fn done, void *arg)
{
	if (!to || to == l)
		return -EINVAL;
	return loop_post_retire(l, to, done, arg);
}

/* Stopping a spawned loop that was never retired (it owns nothing and has nothing in flight). */
static void loop_stop_idle(struct evfd_loop *l, void *arg)
{
	ev_break(l->ev, EVBREAK_ALL);
}

static bool loop_idle(struct evfd_loop *l)
{
	return STAT_GET(l->nrings) == 0 && atomic_load(&l->inflight) == 0 && atomic_load(&l->move_refs) == 0;
}

int evfd_loop_free(struct evfd_loop *l)
{
	if (!l)
		return 0;
	if (l->spawned) {
		if (evfd__tls_loop == l)
			return -EDEADLK;
		if (atomic_load(&l->retiring)) {
			if (!atomic_load(&l->finished))
				return -EBUSY;
		} else {
			if (!loop_idle(l))
				return -EBUSY;
			if (evfd_loop_call(l, loop_stop_idle, NULL) < 0)
				return -ENOMEM;
		}
		/* Blocking while online would hold up the grace period the exiting thread waits for. */
		if (rcu_read_ongoing()) {
			EVFD_QS_RELEASE();
			rcu_thread_offline();
			pthread_join(l->thread, NULL);
			rcu_thread_online();
		} else {
			pthread_join(l->thread, NULL);
		}
	} else {
		if (evfd__tls_loop != l)
			return -EXDEV;
		if (!loop_idle(l))
			return -EBUSY;
		loop_detach(l);
	}
	/* Threads that decremented our counters may still be touching us until a grace period has passed;
	 * rcu_barrier then runs every pending reclamation (bindings) so nothing outlives the last loop. */
	evfd__rcu_synchronize();
	if (!rcu_read_ongoing())
		rcu_barrier();
	close(l->efd);
	pthread_mutex_destroy(&l->lock);
	free(l);
	return 0;
}

void evfd_loop_stats(const struct evfd_loop *l, struct evfd_loop_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->id = l->id;
	st->rings = STAT_GET(l->nrings);
	st->wakeups = STAT_GET(l->wakeups);
	st->completions = STAT_GET(l->completions);
	st->inflight = atomic_load_explicit(&l->inflight, memory_order_relaxed);
	st->adopted = STAT_GET(l->adopted);
}
