/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Applying a configuration: at start-up, and on every reload (SIGHUP or the control socket's Reload).
 *
 * A reload runs on the main thread, never on a data-plane loop: it parses the file (config.c has no side
 * effects), prepares what can fail (listeners bound, loops spawned, rings created) and only then commits:
 * rings accept on the new services, surplus rings drain, rings move so that they are spread evenly, surplus
 * loops retire. Connections keep the service they started with. Nothing waits for in-flight I/O.
 *
 * One reload at a time. Requests that arrive meanwhile coalesce into one more reload after it, which reads
 * the file again, so the last configuration written is always the one applied.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "daemon.h"
#include "log.h"
#include "util.h"

/* Per ring: 256 buffers of 64 KiB. A buffer is held only while its data is in flight, so this caps the
 * memory a ring uses for data at 16 MiB whatever the number of connections; 64 KiB keeps bulk transfers at
 * few requests per byte. */
#define RELAY_BUFFERS 256
#define RELAY_BUFFER_SIZE (64 * 1024)

/* ---- services ------------------------------------------------------------------------------------- */

static struct evfdd_svc *svc_build(const struct evfdd_service *s, struct evfdd_listener *lst,
				   struct evfdd_svc_stats *st)
{
	struct evfdd_svc *svc = calloc(1, sizeof(*svc));
	size_t i;

	if (!svc)
		fatalx("out of memory");
	snprintf(svc->name, sizeof(svc->name), "%s", s->name);
	svc->activated = lst->activated;
	svc->listen_text = strdup(lst->activated ? "activated" : s->listen.text);
	svc->forward_text = strdup(s->forward.text);
	svc->echo = s->forward.kind == EVFDD_ENDPOINT_ECHO;
	svc->tcp_nodelay = s->tcp_nodelay;
	svc->connect_timeout_ms = s->connect_timeout_ms;
	svc->idle_timeout_ms = s->idle_timeout_ms;
	svc->max_connections = s->max_connections;
	svc->st = st ? evfdd_svc_stats_ref(st) : evfdd_svc_stats_new();
	atomic_init(&svc->refs, 1);
	if (!svc->listen_text || !svc->forward_text || !svc->st)
		fatalx("out of memory");
	if (!svc->echo) {
		svc->backends = calloc(s->forward.naddrs, sizeof(*svc->backends));
		if (!svc->backends)
			fatalx("out of memory");
		for (i = 0; i < s->forward.naddrs; i++) {
			memcpy(&svc->backends[i].addr, &s->forward.addrs[i].u.storage, s->forward.addrs[i].len);
			svc->backends[i].len = s->forward.addrs[i].len;
		}
		svc->nbackends = (unsigned)s->forward.naddrs;
	}
	return svc;
}

/* Whether @old serves exactly what @s with @lst asks for, so that rings can keep accepting on it. */
static bool svc_same(const struct evfdd_svc *old, struct evfdd_listener *old_lst, const struct evfdd_service *s,
		     struct evfdd_listener *lst)
{
	const struct evfdd_svc *n;
	bool same;

	if (old_lst != lst || strcmp(old->forward_text, s->forward.text) ||
	    (!lst->activated && strcmp(old->listen_text, s->listen.text)))
		return false;
	n = svc_build(s, lst, old->st);
	same = n->echo == old->echo && n->tcp_nodelay == old->tcp_nodelay &&
	       n->connect_timeout_ms == old->connect_timeout_ms && n->idle_timeout_ms == old->idle_timeout_ms &&
	       n->max_connections == old->max_connections && n->nbackends == old->nbackends &&
	       (!n->nbackends || !memcmp(n->backends, old->backends, n->nbackends * sizeof(*n->backends)));
	evfdd_svc_unref((struct evfdd_svc *)n);
	return same;
}

/* The services of @cfg over @lsts (one reference each, handed over), reusing the running ones that did not
 * change; counts what changed for the summary. */
static struct evfdd_relay_service *services_build(struct daemon *d, const struct evfdd_config *cfg,
						  struct evfdd_listener **lsts, unsigned counts[4])
{
	struct evfdd_relay_service *v = calloc(cfg->nservices, sizeof(*v));
	size_t i, j;

	if (!v)
		fatalx("out of memory");
	memset(counts, 0, 4 * sizeof(*counts));   /* added, removed, changed, unchanged */
	for (i = 0; i < cfg->nservices; i++) {
		const struct evfdd_service *s = &cfg->services[i];
		const struct evfdd_relay_service *old = NULL;

		for (j = 0; j < d->nsvcs && !old; j++)
			if (!strcmp(d->svcs[j].svc->name, s->name))
				old = &d->svcs[j];
		v[i].lst = lsts[i];
		if (old && svc_same(old->svc, old->lst, s, lsts[i])) {
			v[i].svc = evfdd_svc_ref(old->svc);
			counts[3]++;
		} else {
			v[i].svc = svc_build(s, lsts[i], old ? old->svc->st : NULL);
			counts[old ? 2 : 0]++;
		}
	}
	for (j = 0; j < d->nsvcs; j++)
		if (!evfdd_config_service(cfg, d->svcs[j].svc->name))
			counts[1]++;
	return v;
}

static void services_free(struct evfdd_relay_service *v, unsigned n)
{
	unsigned i;

	for (i = 0; v && i < n; i++) {
		evfdd_svc_unref(v[i].svc);
		evfdd_listener_unref(v[i].lst);
	}
	free(v);
}

/* ---- results -------------------------------------------------------------------------------------- */

static void result_clear(struct evfdd_reload_result *r)
{
	size_t i;

	for (i = 0; i < r->nerrors; i++)
		free(r->errors[i]);
	free(r->errors);
	free(r->summary);
	memset(r, 0, sizeof(*r));
}

static void result_add_error(struct evfdd_reload_result *r, const char *fmt, ...)
{
	char **v = realloc(r->errors, (r->nerrors + 1) * sizeof(*v));
	va_list ap;
	int n;

	if (!v)
		fatalx("out of memory");
	r->errors = v;
	va_start(ap, fmt);
	n = vasprintf(&v[r->nerrors], fmt, ap);
	va_end(ap);
	if (n < 0)
		fatalx("out of memory");
	r->nerrors++;
}

static struct json_object *result_json(const struct evfdd_reload_result *r)
{
	struct json_object *o = json_object_new_object(), *errs = json_object_new_array();
	size_t i;

	for (i = 0; i < r->nerrors; i++)
		json_object_array_add(errs, json_object_new_string(r->errors[i]));
	json_object_object_add(o, "time_usec", json_object_new_int64((int64_t)r->time_usec));
	json_object_object_add(o, "ok", json_object_new_boolean(r->ok));
	json_object_object_add(o, "errors", errs);
	json_object_object_add(o, "summary", json_object_new_string(r->summary ? r->summary : ""));
	return o;
}

static void answer_waiters(struct evfdd_reload_waiter *w, const struct evfdd_reload_result *r)
{
	while (w) {
		struct evfdd_reload_waiter *next = w->next;
		struct json_object *p = json_object_new_object();

		json_object_object_add(p, "reload", result_json(r));
		w->done(w->cookie, r->ok ? NULL : "io.evfdd.ReloadFailed", p);
		free(w);
		w = next;
	}
}

static void reload_begin(struct daemon *d);

static void reload_finish(struct daemon *d, struct evfdd_reload_result *r)
{
	char status[256];
	size_t i;

	r->time_usec = util_now_us(CLOCK_REALTIME);
	d->reloads++;
	if (r->ok) {
		log_notice("reload %u done in %.1f ms: %s", d->reloads,
			   (double)(util_now_us(CLOCK_MONOTONIC) - d->reload_t0) / 1000.0, r->summary);
		snprintf(status, sizeof(status), "reloaded: %s", r->summary);
	} else {
		log_errx("reload %u failed; still running on the previous configuration (%s):", d->reloads,
			 d->cfg->source);
		for (i = 0; i < r->nerrors; i++)
			log_errx("  %s", r->errors[i]);
		snprintf(status, sizeof(status), "reload failed, running on the previous configuration: %s",
			 r->nerrors ? r->errors[0] : "unknown error");
	}
	result_clear(&d->last);
	d->last = *r;
	d->have_last = true;
	d->state = DAEMON_RUNNING;
	evfdd_notify_ready(d, status);
	answer_waiters(d->waiters, &d->last);
	d->waiters = NULL;
	evfdd_daemon_reload_finished(d);
	if (!d->stop_requested && d->reload_pending && !evfdd_workers_busy(d->workers))
		reload_begin(d);
}

static void reload_fail(struct daemon *d, const char *fmt, ...) LOG_PRINTF(2, 3);
static void reload_fail(struct daemon *d, const char *fmt, ...)
{
	struct evfdd_reload_result r = { 0 };
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		fatalx("out of memory");
	va_end(ap);
	result_add_error(&r, "%s", msg);
	r.summary = msg;
	reload_finish(d, &r);
}

/* ---- applying ------------------------------------------------------------------------------------- */

static const char *uring_hint(int err)
{
	switch (err) {
	case -ENOSYS:
		return "the kernel has no io_uring (CONFIG_IO_URING) or a seccomp filter blocks io_uring_setup; "
		       "under systemd keep @aio in SystemCallFilter= (or use @system-service)";
	case -EPERM:
		return "io_uring is disabled by sysctl kernel.io_uring_disabled; set it to 0, or to 1 with evfdd's "
		       "user in the group named by kernel.io_uring_group";
	case -ENOMEM:
		return "not enough locked memory for the rings; raise LimitMEMLOCK= (systemd) or ulimit -l, or "
		       "lower rings in the configuration";
	case -EOPNOTSUPP:
		return "the kernel is older than 5.18, whose io_uring quiesces a ring to swap its eventfd; "
		       "evfdd needs Linux 5.19 or later";
	case -EINVAL:
		return "the kernel's io_uring lacks a feature evfdd uses (multishot accept, provided buffer "
		       "rings: Linux 5.19 or later)";
	case -EMFILE:
	case -ENFILE:
		return "out of file descriptors; raise LimitNOFILE= (systemd) or ulimit -n";
	default:
		return "see evfdd(8)";
	}
}

static void initial_done(void *arg, int err)
{
	evfdd_daemon_started(arg, err);
}

/* Bind, build and start @cfg's services on a fresh data plane. */
int evfdd_reload_initial(struct daemon *d, char *err, size_t errlen)
{
	const struct evfdd_relay_params rp = { .buffers = RELAY_BUFFERS, .buffer_size = RELAY_BUFFER_SIZE };
	struct evfdd_listener **lsts = calloc(d->cfg->nservices, sizeof(*lsts));
	unsigned counts[4];
	int r;

	if (!lsts)
		fatalx("out of memory");
	d->state = DAEMON_STARTING;
	if (evfdd_workers_new(&d->workers, &rp) < 0)
		fatalx("out of memory");
	r = evfdd_listen_prepare(d->listen, d->cfg, lsts, err, errlen);
	if (r < 0) {
		err[0] = 0;   /* logged already, every problem */
		goto out;
	}
	evfdd_listen_commit(d->listen, lsts, d->cfg->nservices);
	d->svcs = services_build(d, d->cfg, lsts, counts);
	d->nsvcs = (unsigned)d->cfg->nservices;
	r = evfdd_workers_apply(d->workers, d->cfg->workers, d->cfg->rings, d->svcs, d->nsvcs, initial_done, d);
	if (r < 0)
		snprintf(err, errlen, "cannot set up io_uring: %s; %s", strerror(-r), uring_hint(r));
out:
	free(lsts);
	return r;
}

static void apply_done(void *arg, int err)
{
	struct daemon *d = arg;
	struct evfdd_reload_result r = { 0 };

	r.ok = !err;
	r.summary = d->next_summary;
	d->next_summary = NULL;
	if (err)
		result_add_error(&r, "a new ring failed to start (%s); %s; running with fewer rings", strerror(-err),
				 uring_hint(err));
	reload_finish(d, &r);
}

static struct evfdd_config *load(struct daemon *d, struct evfdd_reload_result *r)
{
	struct evfdd_config_errors errs = { 0 };
	struct evfdd_config *cfg = NULL;
	const char *path = d->config_path;
	size_t i;

	/* Started without -c and without the default file: the file may have appeared since. */
	if (!d->explicit_path && access(path, F_OK) < 0 && errno == ENOENT)
		path = NULL;
	log_info("reloading %s", path ? path : EVFDD_CONFIG_DEFAULT_NAME);
	if (evfdd_config_load(path, &cfg, &errs) < 0) {
		for (i = 0; i < errs.count; i++)
			result_add_error(r, "%s", errs.list[i].message);
		if (errs.omitted)
			result_add_error(r, "(%zu more errors)", errs.omitted);
		cfg = NULL;
	}
	evfdd_config_errors_free(&errs);
	return cfg;
}

static void reload_begin(struct daemon *d)
{
	struct evfdd_reload_result r = { 0 };
	struct evfdd_listener **lsts = NULL;
	struct evfdd_relay_service *svcs;
	struct evfdd_config *cfg;
	unsigned counts[4], old_workers = d->cfg->workers, old_rings = d->cfg->rings;
	char err[512];
	int e;

	d->reload_pending = false;
	d->waiters = d->pending_waiters;
	d->pending_waiters = NULL;
	d->state = DAEMON_RELOADING;
	d->reload_t0 = util_now_us(CLOCK_MONOTONIC);
	evfdd_notify_reloading(d);

	cfg = load(d, &r);
	if (!cfg) {
		r.summary = strdup("the configuration has errors; nothing changed");
		reload_finish(d, &r);
		return;
	}
	if ((cfg->control || d->cfg->control) &&
	    (!cfg->control || !d->cfg->control || strcmp(cfg->control, d->cfg->control)))
		log_warnx("%s: [evfdd] control changed; the control socket moves at the next restart only",
			  cfg->source);
	lsts = calloc(cfg->nservices, sizeof(*lsts));
	if (!lsts)
		fatalx("out of memory");
	if (evfdd_listen_prepare(d->listen, cfg, lsts, err, sizeof(err)) < 0) {
		free(lsts);
		evfdd_config_free(cfg);
		reload_fail(d, "%s; nothing changed", err);
		return;
	}
	svcs = services_build(d, cfg, lsts, counts);
	e = evfdd_workers_apply(d->workers, cfg->workers, cfg->rings, svcs, (unsigned)cfg->nservices, apply_done, d);
	if (e < 0) {
		services_free(svcs, (unsigned)cfg->nservices);   /* drops the listeners' references too */
		free(lsts);
		evfdd_config_free(cfg);
		reload_fail(d, "cannot start %u workers and %u rings: %s; %s; nothing changed", cfg->workers,
			    cfg->rings, strerror(-e), uring_hint(e));
		return;
	}
	/* Committed: the rings have their own references now. */
	evfdd_listen_commit(d->listen, lsts, cfg->nservices);
	free(lsts);
	services_free(d->svcs, d->nsvcs);
	d->svcs = svcs;
	d->nsvcs = (unsigned)cfg->nservices;
	evfdd_config_free(d->cfg);
	d->cfg = cfg;
	log_setlevel(cfg->log_level);
	if (asprintf(&d->next_summary, "%s: workers %u -> %u, rings %u -> %u; services: %u added, %u removed, "
		     "%u changed, %u unchanged", cfg->source, old_workers, cfg->workers, old_rings, cfg->rings,
		     counts[0], counts[1], counts[2], counts[3]) < 0)
		fatalx("out of memory");
}

/* ---- requests ------------------------------------------------------------------------------------- */

void evfdd_reload_request(struct daemon *d, evfdd_control_done_fn done, void *cookie)
{
	if (d->stop_requested || d->stopping) {
		if (done)
			done(cookie, "io.evfdd.ShuttingDown", NULL);
		else
			log_notice("SIGHUP while stopping: not reloading");
		return;
	}
	if (done) {
		struct evfdd_reload_waiter *w = calloc(1, sizeof(*w));

		if (!w)
			fatalx("out of memory");
		w->done = done;
		w->cookie = cookie;
		w->next = d->pending_waiters;
		d->pending_waiters = w;
	}
	/* Coalesce: whatever is running now, one more reload reads the file afterwards. */
	d->reload_pending = true;
	if (d->state == DAEMON_RUNNING && !evfdd_workers_busy(d->workers))
		reload_begin(d);
	else
		log_info("reload requested while %s; it follows", d->state == DAEMON_RELOADING ? "reloading" :
			 d->state == DAEMON_STARTING ? "starting" : "a ring moves");
}

/* Start a reload (or a stop) that had to wait for start-up or a ring move to finish. */
void evfdd_reload_kick(struct daemon *d)
{
	/* A stop that waited for the same thing comes first. */
	if (d->stop_requested) {
		evfdd_daemon_reload_finished(d);
		return;
	}
	if (d->reload_pending && d->state == DAEMON_RUNNING && !d->stop_requested && !d->stopping &&
	    !evfdd_workers_busy(d->workers))
		reload_begin(d);
}

void evfdd_reload_free(struct daemon *d)
{
	struct evfdd_reload_waiter *w = d->pending_waiters;

	while (w) {
		struct evfdd_reload_waiter *next = w->next;

		w->done(w->cookie, "io.evfdd.ShuttingDown", NULL);
		free(w);
		w = next;
	}
	d->pending_waiters = NULL;
	services_free(d->svcs, d->nsvcs);
	d->svcs = NULL;
	d->nsvcs = 0;
	free(d->next_summary);
	result_clear(&d->last);
}

struct json_object *evfdd_reload_result_json(const struct daemon *d)
{
	return d->have_last ? result_json(&d->last) : NULL;
}
