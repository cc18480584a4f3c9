/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Applying a configuration: at start-up, and on every reload; see reload.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "log.h"
#include "reload.h"
#include "util.h"

/* Per ring: 256 buffers of 64 KiB. A buffer is held only while its data is in flight, so this caps the
 * memory a ring uses for data at 16 MiB whatever the number of connections; 64 KiB keeps bulk transfers at
 * few requests per byte. */
#define RELAY_BUFFERS 256
#define RELAY_BUFFER_SIZE (64 * 1024)
#define RELAY_HUGE_DELAY_MS 10000       /* after an upgrade, rings ask for huge pages this late (relay.c) */

/* One reload in progress: what it will commit, and whom to tell. */
struct reload_run {
	struct evfdd_plane *p;
	struct evfdd_reload_result r;
	uint64_t t0;                     /* CLOCK_MONOTONIC, µs */
	evfdd_reload_done_fn done;
	void *arg;
};

/* ---- services ------------------------------------------------------------------------------------- */

/* The services of @cfg over @lsts (one reference each, handed over), reusing the running ones that did not
 * change; counts what changed in @r. */
static struct evfdd_relay_service *services_build(const struct evfdd_plane *p, const struct evfdd_config *cfg,
						  struct evfdd_listener **lsts, struct evfdd_reload_result *r)
{
	struct evfdd_relay_service *v = calloc(cfg->nservices, sizeof(*v));
	size_t i, j;

	if (!v)
		fatalx("out of memory");
	for (i = 0; i < cfg->nservices; i++) {
		const struct evfdd_service *s = &cfg->services[i];
		const struct evfdd_relay_service *old = NULL;

		for (j = 0; j < p->nsvcs && !old; j++)
			if (!strcmp(p->svcs[j].svc->name, s->name))
				old = &p->svcs[j];
		v[i].lst = lsts[i];
		if (old && old->lst == lsts[i] && evfdd_svc_same(old->svc, s, lsts[i]->activated)) {
			v[i].svc = evfdd_svc_ref(old->svc);
			evfdd_pool_refresh(&v[i].svc->pool, s);   /* names were resolved again */
			r->unchanged++;
			continue;
		}
		v[i].svc = evfdd_svc_new(s, lsts[i]->activated, old ? old->svc : NULL);
		if (!v[i].svc)
			fatalx("out of memory");
		if (old)
			r->changed++;
		else
			r->added++;
	}
	for (j = 0; j < p->nsvcs; j++)
		if (!evfdd_config_service(cfg, p->svcs[j].svc->name))
			r->removed++;
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

void evfdd_reload_result_clear(struct evfdd_reload_result *r)
{
	size_t i;

	for (i = 0; i < r->nerrors; i++) {
		free(r->errors[i].file);
		free(r->errors[i].message);
	}
	free(r->errors);
	free(r->source);
	free(r->summary);
	memset(r, 0, sizeof(*r));
}

static void result_add_error(struct evfdd_reload_result *r, const char *file, unsigned line, const char *fmt, ...)
	LOG_PRINTF(4, 5);
static void result_add_error(struct evfdd_reload_result *r, const char *file, unsigned line, const char *fmt, ...)
{
	struct evfdd_reload_error *e;
	va_list ap;
	int n;

	e = realloc(r->errors, (r->nerrors + 1) * sizeof(*e));
	if (!e)
		fatalx("out of memory");
	r->errors = e;
	e += r->nerrors;
	memset(e, 0, sizeof(*e));
	e->line = line;
	if (file && !(e->file = strdup(file)))
		fatalx("out of memory");
	va_start(ap, fmt);
	n = vasprintf(&e->message, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatalx("out of memory");
	r->nerrors++;
}

static void result_summary(struct evfdd_reload_result *r, const char *fmt, ...) LOG_PRINTF(2, 3);
static void result_summary(struct evfdd_reload_result *r, const char *fmt, ...)
{
	va_list ap;
	int n;

	free(r->summary);
	va_start(ap, fmt);
	n = vasprintf(&r->summary, fmt, ap);
	va_end(ap);
	if (n < 0)
		fatalx("out of memory");
}

/* The reload is over: hand the result on. The run goes with it. */
static void run_finish(struct reload_run *run)
{
	run->r.time_usec = util_now_us(CLOCK_REALTIME);
	run->r.duration_usec = util_now_us(CLOCK_MONOTONIC) - run->t0;
	run->done(run->arg, &run->r);
	evfdd_reload_result_clear(&run->r);
	free(run);
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

int evfdd_reload_initial(struct evfdd_plane *p, void (*done)(void *arg, int err), void *arg, char *err,
			 size_t errlen)
{
	const struct evfdd_relay_params rp = {
		.buffers = RELAY_BUFFERS, .buffer_size = RELAY_BUFFER_SIZE,
		.bundle = p->features.on[EVFDD_FEATURE_RECV_BUNDLE],
		.huge_delay_ms = p->carried ? RELAY_HUGE_DELAY_MS : 0,
	};
	unsigned ring_flags = p->features.on[EVFDD_FEATURE_COOP_TASKRUN] ? EVFD_RING_COOP_TASKRUN : 0;
	struct evfdd_listener **lsts = calloc(p->cfg->nservices, sizeof(*lsts));
	struct evfdd_reload_result counts = { 0 };
	int r;

	if (!lsts || evfdd_workers_new(&p->workers, &rp, ring_flags) < 0)
		fatalx("out of memory");
	r = evfdd_listen_prepare(p->listen, p->cfg, lsts, err, errlen);
	if (r < 0) {
		err[0] = 0;   /* logged already, every problem */
		goto out;
	}
	evfdd_listen_commit(p->listen, lsts, p->cfg->nservices);
	p->svcs = services_build(p, p->cfg, lsts, &counts);
	p->nsvcs = (unsigned)p->cfg->nservices;
	r = evfdd_workers_apply(p->workers, p->cfg->workers, p->cfg->rings, p->svcs, p->nsvcs, done, arg);
	if (r < 0)
		snprintf(err, errlen, "cannot set up io_uring: %s; %s", strerror(-r), uring_hint(r));
out:
	free(lsts);
	return r;
}

static void apply_done(void *arg, int err)
{
	struct reload_run *run = arg;

	run->r.ok = !err;
	if (err)
		result_add_error(&run->r, NULL, 0, "a new ring failed to start (%s); %s; running with fewer rings",
				 strerror(-err), uring_hint(err));
	run_finish(run);
}

/* Parse the file; on errors, every one goes into @r. */
static struct evfdd_config *load(const struct evfdd_plane *p, struct evfdd_reload_result *r)
{
	struct evfdd_config_errors errs = { 0 };
	struct evfdd_config *cfg = NULL;
	const char *path = p->config_path;
	size_t i;

	/* Started without -c and without the default file: the file may have appeared since. */
	if (!p->explicit_path && access(path, F_OK) < 0 && errno == ENOENT)
		path = NULL;
	log_info("reloading %s", path ? path : EVFDD_CONFIG_DEFAULT_NAME);
	if (evfdd_config_load(path, &cfg, &errs) < 0) {
		for (i = 0; i < errs.count; i++)
			result_add_error(r, errs.list[i].file, errs.list[i].line, "%s", errs.list[i].message);
		if (errs.omitted)
			result_add_error(r, path, 0, "(%zu more errors)", errs.omitted);
		cfg = NULL;
	}
	evfdd_config_errors_free(&errs);
	return cfg;
}

void evfdd_reload_run(struct evfdd_plane *p, evfdd_reload_done_fn done, void *arg)
{
	struct reload_run *run = calloc(1, sizeof(*run));
	struct evfdd_listener **lsts = NULL;
	struct evfdd_relay_service *svcs;
	struct evfdd_config *cfg;
	unsigned line = 0;
	char err[512];
	int e;

	if (!run)
		fatalx("out of memory");
	run->p = p;
	run->done = done;
	run->arg = arg;
	run->t0 = util_now_us(CLOCK_MONOTONIC);
	run->r.workers_before = run->r.workers_after = p->cfg->workers;
	run->r.rings_before = run->r.rings_after = p->cfg->rings;
	cfg = load(p, &run->r);
	if (!cfg) {
		result_summary(&run->r, "the configuration has errors; nothing changed");
		run_finish(run);
		return;
	}
	if (!(run->r.source = strdup(cfg->source)))
		fatalx("out of memory");
	if ((cfg->control || p->cfg->control) &&
	    (!cfg->control || !p->cfg->control || strcmp(cfg->control, p->cfg->control)))
		log_warnx("%s: [evfdd] control changed; the control socket moves at the next restart only",
			  cfg->source);
	lsts = calloc(cfg->nservices, sizeof(*lsts));
	if (!lsts)
		fatalx("out of memory");
	if (evfdd_listen_prepare(p->listen, cfg, lsts, err, sizeof(err)) < 0) {
		/* The message begins "FILE:LINE:": keep the line for the result. */
		(void)sscanf(err + strlen(cfg->source), ":%u:", &line);
		result_add_error(&run->r, cfg->source, line, "%s", err);
		result_summary(&run->r, "a listener cannot be set up; nothing changed");
		goto fail;
	}
	svcs = services_build(p, cfg, lsts, &run->r);
	e = evfdd_workers_apply(p->workers, cfg->workers, cfg->rings, svcs, (unsigned)cfg->nservices, apply_done,
				run);
	if (e < 0) {
		services_free(svcs, (unsigned)cfg->nservices);   /* drops the listeners' references too */
		result_add_error(&run->r, NULL, 0, "cannot start %u workers and %u rings: %s; %s", cfg->workers,
				 cfg->rings, strerror(-e), uring_hint(e));
		result_summary(&run->r, "the new workers or rings cannot be started; nothing changed");
		run->r.added = run->r.removed = run->r.changed = run->r.unchanged = 0;
		goto fail;
	}
	/* Committed: the rings have their own references now. apply_done finishes the run. */
	run->r.workers_after = cfg->workers;
	run->r.rings_after = cfg->rings;
	result_summary(&run->r, "%s: workers %u -> %u, rings %u -> %u; services: %u added, %u removed, "
		       "%u changed, %u unchanged", cfg->source, run->r.workers_before, cfg->workers,
		       run->r.rings_before, cfg->rings, run->r.added, run->r.removed, run->r.changed,
		       run->r.unchanged);
	evfdd_listen_commit(p->listen, lsts, cfg->nservices);
	free(lsts);
	services_free(p->svcs, p->nsvcs);
	p->svcs = svcs;
	p->nsvcs = (unsigned)cfg->nservices;
	evfdd_config_free(p->cfg);
	p->cfg = cfg;
	log_setlevel(cfg->log_level);
	return;
fail:
	free(lsts);
	evfdd_config_free(cfg);
	run_finish(run);
}

void evfdd_reload_plane_clear(struct evfdd_plane *p)
{
	services_free(p->svcs, p->nsvcs);
	p->svcs = NULL;
	p->nsvcs = 0;
}

const struct evfdd_svc *evfdd_reload_service(const struct evfdd_plane *p, const char *name)
{
	for (unsigned i = 0; i < p->nsvcs; i++)
		if (!strcmp(p->svcs[i].svc->name, name))
			return p->svcs[i].svc;
	return NULL;
}
