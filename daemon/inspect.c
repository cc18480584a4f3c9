/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control socket's answers: every reply of io.evfdd (daemon/io.evfdd.varlink) built as JSON, and every
 * io.evfdd error name. control.c carries the calls; evfdd.c decides what a move or a reload does; this file
 * only reads the daemon's state and says it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon.h"
#include "log.h"
#include "util.h"

#define IFACE "io.evfdd."

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
	case DAEMON_UPGRADING:
		return "upgrading";
	case DAEMON_STOPPING:
		break;
	}
	return "stopping";
}

/* The counters as io.evfdd's Totals and Service carry them: every counter of service.h by its name, the
 * ends in an object of their own, and the three sums the interface had before the end reasons (evfdd(8) says
 * which reasons each holds). */
static void counts_json(struct json_object *o, const struct evfdd_counts *t)
{
	struct json_object *ends = json_object_new_object();
	const uint64_t *e = t->v + EVFDD_CTR_ENDS;
	unsigned k;

	add_int(o, "open", t->open);
	for (k = 0; k < EVFDD_CTR_COUNT; k++)
		add_int(evfdd_counter_info[k].end ? ends : o, evfdd_counter_info[k].name, t->v[k]);
	add_int(o, "refused", e[EVFDD_END_LIMIT] + e[EVFDD_END_NO_RESOURCES] + e[EVFDD_END_DENIED] +
		e[EVFDD_END_SOURCE_LIMIT]);
	add_int(o, "connect_errors", e[EVFDD_END_CONNECT_FAILED] + e[EVFDD_END_NO_BACKEND]);
	add_int(o, "aborted", e[EVFDD_END_CLIENT_RESET] + e[EVFDD_END_BACKEND_RESET] + e[EVFDD_END_CLIENT_ERROR] +
		e[EVFDD_END_BACKEND_ERROR] + e[EVFDD_END_IDLE_TIMEOUT] + e[EVFDD_END_SHUTDOWN] +
		e[EVFDD_END_BAD_PROXY_HEADER] + e[EVFDD_END_BAD_CLIENT_HELLO] + e[EVFDD_END_NO_ROUTE]);
	json_object_object_add(o, "ends", ends);
}

/* io.evfdd's ReloadResult. */
static struct json_object *reload_json(const struct evfdd_reload_result *r)
{
	struct json_object *o = json_object_new_object(), *errs = json_object_new_array();
	size_t i;

	for (i = 0; i < r->nerrors; i++)
		json_object_array_add(errs, json_object_new_string(r->errors[i].message));
	add_int(o, "time_usec", r->time_usec);
	json_object_object_add(o, "ok", json_object_new_boolean(r->ok));
	json_object_object_add(o, "errors", errs);
	add_str(o, "summary", r->summary ? r->summary : "");
	return o;
}

static struct json_object *carried_json(const struct daemon_carried *c)
{
	struct json_object *o = json_object_new_object();

	add_str(o, "kind", c->kind == EVFDD_CARRY_RESTART ? "restart" : "upgrade");
	add_int(o, "time_usec", c->time_usec);
	add_int(o, "connections", c->connections);
	add_int(o, "lost", c->lost);
	add_int(o, "pause_usec", c->pause_usec);
	add_str(o, "from_version", c->from_version);
	add_str(o, "fallback", c->fallback);
	return o;
}

struct json_object *evfdd_inspect_status(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o = json_object_new_object(), *t = json_object_new_object(), *features;
	struct evfdd_counts sum = { 0 };
	unsigned i;

	for (i = 0; i < d->plane.nsvcs; i++)
		evfdd_svc_stats_read(d->plane.svcs[i].svc->st, &sum);
	counts_json(t, &sum);
	add_str(o, "version", d->version);
	add_int(o, "pid", (uint64_t)getpid());
	add_int(o, "uptime_usec", util_now_us(CLOCK_MONOTONIC) - d->start_usec);
	add_str(o, "config", d->plane.cfg->source);
	add_str(o, "state", state_name(d->state));
	add_int(o, "workers", evfdd_workers_loops(d->plane.workers));
	add_int(o, "rings", evfdd_workers_rings(d->plane.workers));
	add_int(o, "reloads", d->reloads);
	for (i = 0, features = json_object_new_array(); i < EVFDD_FEATURE_COUNT; i++)
		if (d->plane.features.on[i])
			json_object_array_add(features, json_object_new_string(evfdd_feature_name(i)));
	json_object_object_add(o, "features", features);
	json_object_object_add(o, "last_reload", d->have_last ? reload_json(&d->last) : NULL);   /* JSON null */
	add_int(o, "upgrades", d->upgrades);
	json_object_object_add(o, "last_upgrade", d->carried.have ? carried_json(&d->carried) : NULL);
	json_object_object_add(o, "totals", t);
	return o;
}

struct json_object *evfdd_inspect_loops(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o, *a;
	struct evfdd_loop_info *v;
	size_t n, i;

	if (evfdd_workers_loop_info(d->plane.workers, &v, &n) < 0)
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

struct json_object *evfdd_inspect_rings(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o, *a;
	struct evfdd_ring_info *v;
	size_t n, i;

	if (evfdd_workers_ring_info(d->plane.workers, &v, &n) < 0)
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

struct json_object *evfdd_inspect_services(void *arg)
{
	struct daemon *d = arg;
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	unsigned i;

	for (i = 0; i < d->plane.nsvcs; i++) {
		const struct evfdd_svc *s = d->plane.svcs[i].svc;
		struct json_object *j = json_object_new_object();
		struct evfdd_counts c = { 0 };

		add_str(j, "name", s->name);
		add_str(j, "listen", s->listen_text);
		json_object_object_add(j, "activated", json_object_new_boolean(s->activated));
		add_str(j, "forward", s->forward_text);
		evfdd_svc_stats_read(s->st, &c);
		counts_json(j, &c);
		json_object_array_add(a, j);
	}
	json_object_object_add(o, "services", a);
	return o;
}

static const char *check_name(const struct evfdd_svc *s)
{
	if (s->check == EVFDD_CHECK_CONNECT)
		return "connect";
	if (s->check == EVFDD_CHECK_EXCHANGE)
		return s->check_send && s->check_expect ? "send-expect" : s->check_send ? "send" : "expect";
	return "none";
}

/* An address as a connect would use it: "192.0.2.1:80", "[2001:db8::1]:80" or "/run/app.sock". */
static void addr_text(const struct evfdd_sockaddr *a, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	switch (a->u.sa.sa_family) {
	case AF_INET:
		inet_ntop(AF_INET, &a->u.in.sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(a->u.in.sin_port));
		break;
	case AF_INET6:
		inet_ntop(AF_INET6, &a->u.in6.sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(a->u.in6.sin6_port));
		break;
	case AF_UNIX:
		snprintf(buf, size, "%s", a->u.un.sun_path);
		break;
	default:
		snprintf(buf, size, "?");
	}
}

/* io.evfdd's BackendInfo. */
static struct json_object *backend_json(const struct evfdd_svc *s, const struct evfdd_svc_backend *sb)
{
	struct evfdd_backend *b = sb->b;
	struct json_object *o = json_object_new_object(), *addrs = json_object_new_array();
	enum evfdd_backend_health h = (enum evfdd_backend_health)atomic_load(&b->health);
	struct evfdd_sockaddr a;
	char text[sizeof(a.u.un.sun_path) + 16];

	add_str(o, "service", s->name);
	add_str(o, "backend", b->name);
	add_int(o, "weight", sb->weight);
	add_int(o, "maxconn", sb->maxconn);
	json_object_object_add(o, "backup", json_object_new_boolean(sb->backup));
	add_str(o, "state", atomic_load(&b->drained) ? "drained" : evfdd_backend_health_name(h));
	add_str(o, "health", evfdd_backend_health_name(h));
	add_str(o, "health_check", check_name(s));
	for (size_t k = 0; evfdd_backend_addr(b, k, &a); k++) {
		addr_text(&a, text, sizeof(text));
		json_object_array_add(addrs, json_object_new_string(text));
	}
	json_object_object_add(o, "addresses", addrs);
	add_int(o, "open", atomic_load(&b->open));
	add_int(o, "connections", atomic_load(&b->connections));
	add_int(o, "connect_failures", atomic_load(&b->connect_failures));
	add_int(o, "bytes_up", atomic_load(&b->bytes_up));
	add_int(o, "bytes_down", atomic_load(&b->bytes_down));
	add_int(o, "state_changes", atomic_load(&b->state_changes));
	add_int(o, "last_change_usec", atomic_load(&b->last_change_usec));
	return o;
}

static void answer_no_service(evfdd_control_done_fn done, void *cookie, const char *service)
{
	struct json_object *p = json_object_new_object();

	add_str(p, "service", service);
	done(cookie, IFACE "NoSuchService", p);
}

void evfdd_inspect_backends(void *arg, const char *service, evfdd_control_done_fn done, void *cookie)
{
	struct daemon *d = arg;
	struct json_object *o, *a;
	const struct evfdd_svc *only = service ? evfdd_reload_service(&d->plane, service) : NULL;

	if (service && !only) {
		answer_no_service(done, cookie, service);
		return;
	}
	o = json_object_new_object();
	a = json_object_new_array();
	for (unsigned i = 0; i < d->plane.nsvcs; i++) {
		const struct evfdd_svc *s = d->plane.svcs[i].svc;

		if (only && s != only)
			continue;
		for (unsigned k = 0; k < s->pool.n; k++)
			json_object_array_add(a, backend_json(s, &s->pool.v[k]));
	}
	json_object_object_add(o, "backends", a);
	done(cookie, NULL, o);
}

void evfdd_inspect_backend_answer(evfdd_control_done_fn done, void *cookie, const struct evfdd_svc *s,
				  const char *service, const char *backend)
{
	const struct evfdd_svc_backend *sb = s ? evfdd_pool_find(&s->pool, backend) : NULL;
	struct json_object *p;

	if (!s) {
		answer_no_service(done, cookie, service);
		return;
	}
	p = json_object_new_object();
	if (!sb) {
		add_str(p, "service", service);
		add_str(p, "backend", backend);
		done(cookie, IFACE "NoSuchBackend", p);
		return;
	}
	json_object_object_add(p, "backend", backend_json(s, sb));
	done(cookie, NULL, p);
}

struct json_object *evfdd_inspect_metrics(void *arg)
{
	struct json_object *o;
	size_t len = 0;
	char *text = evfdd_prometheus_text(arg, &len);

	if (!text)
		return NULL;
	o = json_object_new_object();
	json_object_object_add(o, "text", json_object_new_string_len(text, (int)len));
	free(text);
	return o;
}

void evfdd_inspect_reload_answer(evfdd_control_done_fn done, void *cookie, const struct evfdd_reload_result *r)
{
	struct json_object *p = json_object_new_object();

	json_object_object_add(p, "reload", reload_json(r));
	done(cookie, r->ok ? NULL : IFACE "ReloadFailed", p);
}

void evfdd_inspect_move_answer(evfdd_control_done_fn done, void *cookie, unsigned ring, unsigned from,
			       unsigned to, uint64_t usec)
{
	struct json_object *p = json_object_new_object();

	add_int(p, "ring", ring);
	add_int(p, "from", from);
	add_int(p, "loop", to);
	add_int(p, "usec", usec);
	done(cookie, NULL, p);
}

void evfdd_inspect_move_refused(evfdd_control_done_fn done, void *cookie, int err, uint64_t ring, uint64_t loop)
{
	struct json_object *p = json_object_new_object();

	switch (err) {
	case -ENOENT:
		add_int(p, "ring", ring);
		done(cookie, IFACE "NoSuchRing", p);
		return;
	case -ESRCH:
		add_int(p, "loop", loop);
		done(cookie, IFACE "NoSuchLoop", p);
		return;
	default:
		add_int(p, "ring", ring);
		add_str(p, "reason", err == -EAGAIN ? "a reload or an upgrade is in progress" :
			err == -EBUSY ? "the ring is draining or already moving" : strerror(-err));
		done(cookie, IFACE "RingBusy", p);
		return;
	}
}

void evfdd_inspect_upgrade_answer(evfdd_control_done_fn done, void *cookie, const char *binary, uint64_t upgrades,
				  const char *refused)
{
	struct json_object *o = json_object_new_object();

	if (refused) {
		add_str(o, "reason", refused);
		done(cookie, IFACE "UpgradeRefused", o);
		return;
	}
	add_str(o, "binary", binary);
	add_int(o, "upgrades", upgrades);
	done(cookie, NULL, o);
}

void evfdd_inspect_shutting_down(evfdd_control_done_fn done, void *cookie)
{
	done(cookie, IFACE "ShuttingDown", NULL);
}
