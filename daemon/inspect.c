/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The core functions behind the control socket's io.evfdd methods (daemon/io.evfdd.varlink): reading the
 * daemon's state, moving a ring, reloading. control.c does the transport; this file knows the daemon. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon.h"
#include "log.h"
#include "util.h"

static void add_int(struct json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_int64((int64_t)v));
}

static void add_str(struct json_object *o, const char *k, const char *v)
{
	json_object_object_add(o, k, json_object_new_string(v));
}

static const char *state_name(enum daemon_state s)
{
	switch (s) {
	case DAEMON_STARTING:
		return "starting";
	case DAEMON_RUNNING:
		return "running";
	case DAEMON_RELOADING:
		return "reloading";
	case DAEMON_STOPPING:
		break;
	}
	return "stopping";
}

/* A service's counters, or the sum of several. */
struct counts {
	uint64_t open, total, closed, ends[EVFDD_END_COUNT], bytes_up, bytes_down;
};

static void counts_add(struct counts *t, const struct evfdd_svc_stats *st)
{
	unsigned k;

	t->open += atomic_load(&st->open);
	t->total += atomic_load(&st->total);
	t->closed += atomic_load(&st->closed);
	for (k = 0; k < EVFDD_END_COUNT; k++)
		t->ends[k] += atomic_load(&st->ends[k]);
	t->bytes_up += atomic_load(&st->bytes_up);
	t->bytes_down += atomic_load(&st->bytes_down);
}

/* The counters as io.evfdd's Totals and Service carry them: ends by reason, and the three sums that the
 * interface had before the reasons (refused, connect_errors, aborted; evfdd(8) says which reasons each holds). */
static void counts_json(struct json_object *o, const struct counts *t)
{
	struct json_object *ends = json_object_new_object();
	const uint64_t *e = t->ends;
	unsigned k;

	for (k = 0; k < EVFDD_END_COUNT; k++)
		add_int(ends, evfdd_end_names[k], e[k]);
	add_int(o, "open", t->open);
	add_int(o, "total", t->total);
	add_int(o, "closed", t->closed);
	add_int(o, "refused", e[EVFDD_END_LIMIT] + e[EVFDD_END_NO_RESOURCES]);
	add_int(o, "connect_errors", e[EVFDD_END_CONNECT_FAILED]);
	add_int(o, "aborted", e[EVFDD_END_CLIENT_RESET] + e[EVFDD_END_BACKEND_RESET] + e[EVFDD_END_CLIENT_ERROR] +
		e[EVFDD_END_BACKEND_ERROR] + e[EVFDD_END_IDLE_TIMEOUT] + e[EVFDD_END_SHUTDOWN]);
	add_int(o, "bytes_up", t->bytes_up);
	add_int(o, "bytes_down", t->bytes_down);
	json_object_object_add(o, "ends", ends);
}

static struct json_object *status(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o = json_object_new_object(), *t = json_object_new_object(), *last;
	struct counts sum = { 0 };
	unsigned i;

	for (i = 0; i < d->nsvcs; i++)
		counts_add(&sum, d->svcs[i].svc->st);
	counts_json(t, &sum);
	add_str(o, "version", PACKAGE_VERSION);
	add_int(o, "pid", (uint64_t)getpid());
	add_int(o, "uptime_usec", util_now_us(CLOCK_MONOTONIC) - d->start_usec);
	add_str(o, "config", d->cfg->source);
	add_str(o, "state", state_name(d->state));
	add_int(o, "workers", evfdd_workers_loops(d->workers));
	add_int(o, "rings", evfdd_workers_rings(d->workers));
	add_int(o, "reloads", d->reloads);
	last = evfdd_reload_result_json(d);
	json_object_object_add(o, "last_reload", last);   /* NULL: JSON null */
	json_object_object_add(o, "totals", t);
	return o;
}

static struct json_object *loops(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o, *a;
	struct evfdd_loop_info *v;
	size_t n, i;

	if (evfdd_workers_loop_info(d->workers, &v, &n) < 0)
		return NULL;
	o = json_object_new_object();
	a = json_object_new_array();
	for (i = 0; i < n; i++) {
		struct json_object *l = json_object_new_object();

		add_int(l, "id", v[i].id);
		add_str(l, "name", v[i].name);
		add_int(l, "tid", (uint64_t)v[i].tid);
		add_int(l, "rings", v[i].st.rings);
		add_int(l, "wakeups", v[i].st.wakeups);
		add_int(l, "completions", v[i].st.completions);
		add_int(l, "inflight", v[i].st.inflight);
		add_int(l, "adopted", v[i].st.adopted);
		add_str(l, "state", v[i].retiring ? "retiring" : "running");
		json_object_array_add(a, l);
	}
	free(v);
	json_object_object_add(o, "loops", a);
	return o;
}

static struct json_object *rings(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o, *a;
	struct evfdd_ring_info *v;
	size_t n, i;

	if (evfdd_workers_ring_info(d->workers, &v, &n) < 0)
		return NULL;
	o = json_object_new_object();
	a = json_object_new_array();
	for (i = 0; i < n; i++) {
		struct json_object *r = json_object_new_object();

		add_int(r, "id", v[i].id);
		add_int(r, "loop", v[i].loop);
		add_str(r, "state", v[i].state);
		add_int(r, "connections", v[i].connections);
		add_int(r, "inflight", v[i].st.inflight);
		add_int(r, "moves", v[i].st.moves);
		add_int(r, "submitted", v[i].st.submitted);
		add_int(r, "completed", v[i].st.completed);
		add_int(r, "rearmed", v[i].st.rearmed);
		json_object_array_add(a, r);
	}
	free(v);
	json_object_object_add(o, "rings", a);
	return o;
}

static struct json_object *services(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	unsigned i;

	for (i = 0; i < d->nsvcs; i++) {
		const struct evfdd_svc *s = d->svcs[i].svc;
		struct json_object *j = json_object_new_object();
		struct counts c = { 0 };

		add_str(j, "name", s->name);
		add_str(j, "listen", s->listen_text);
		json_object_object_add(j, "activated", json_object_new_boolean(s->activated));
		add_str(j, "forward", s->forward_text);
		counts_add(&c, s->st);
		counts_json(j, &c);
		json_object_array_add(a, j);
	}
	json_object_object_add(o, "services", a);
	return o;
}

struct move_req {
	struct daemon *d;
	unsigned ring;
	evfdd_control_done_fn done;
	void *cookie;
};

static void moved(void *arg, unsigned from, unsigned to, uint64_t usec)
{
	struct move_req *m = arg;
	struct json_object *p = json_object_new_object();

	log_info("ring %u moved from loop %u to loop %u in %llu us (control socket)", m->ring, from, to,
		 (unsigned long long)usec);
	add_int(p, "ring", m->ring);
	add_int(p, "from", from);
	add_int(p, "loop", to);
	add_int(p, "usec", usec);
	m->done(m->cookie, NULL, p);
	evfdd_reload_kick(m->d);   /* a reload may have waited for this move */
	free(m);
}

static void move(void *arg, uint64_t ring, uint64_t loop, evfdd_control_done_fn done, void *cookie)
{
	struct daemon *d = arg;
	struct move_req *m;
	struct json_object *p = json_object_new_object();
	int err = -ENOMEM;

	if (d->stopping || d->stop_requested) {
		json_object_put(p);
		done(cookie, "io.evfdd.ShuttingDown", NULL);
		return;
	}
	if (ring > UINT32_MAX) {
		add_int(p, "ring", ring);
		done(cookie, "io.evfdd.NoSuchRing", p);
		return;
	}
	if (loop > UINT32_MAX) {
		add_int(p, "loop", loop);
		done(cookie, "io.evfdd.NoSuchLoop", p);
		return;
	}
	m = calloc(1, sizeof(*m));
	if (m) {
		m->d = d;
		m->ring = (unsigned)ring;
		m->done = done;
		m->cookie = cookie;
		err = d->state == DAEMON_RUNNING ? evfdd_workers_move(d->workers, (unsigned)ring, (unsigned)loop,
								      moved, m) : -EBUSY;
	}
	if (!err) {
		json_object_put(p);
		return;
	}
	free(m);
	switch (err) {
	case -ENOENT:
		add_int(p, "ring", ring);
		done(cookie, "io.evfdd.NoSuchRing", p);
		break;
	case -ESRCH:
		add_int(p, "loop", loop);
		done(cookie, "io.evfdd.NoSuchLoop", p);
		break;
	default:
		add_int(p, "ring", ring);
		add_str(p, "reason", err == -EBUSY ? (d->state != DAEMON_RUNNING ? "a reload is in progress" :
						      "the ring is draining or already moving") :
			strerror(-err));
		done(cookie, "io.evfdd.RingBusy", p);
		break;
	}
}

static void reload(void *arg, evfdd_control_done_fn done, void *cookie)
{
	evfdd_reload_request(arg, done, cookie);
}

const struct evfdd_control_ops evfdd_inspect_ops = {
	.status = status,
	.loops = loops,
	.rings = rings,
	.services = services,
	.move = move,
	.reload = reload,
};
