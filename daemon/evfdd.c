/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * evfdd: the daemon's lifecycle. The main thread runs an evfd loop on libev's default loop: signals, sd_notify,
 * the control socket, reloads; the data plane runs on worker loops (workers.c, relay.c).
 *
 * This file owns the lifecycle and is the only place that decides what happens next. Every event (a signal, a
 * control request, a reload or a move that finished, the data plane up or gone) is reported here by a callback
 * this file registered, changes the state or what is pending, and ends in daemon_step, which takes the next
 * step. No other module calls into this one.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include "accesslog.h"
#include "control.h"
#include "daemon.h"
#include "log.h"
#include "util.h"

/* Exit codes (evfdd(8)): 0 success, 1 configuration or start-up error, 2 usage. */
enum { EXIT_CONFIG = 1, EXIT_STARTUP = 1 };

static void daemon_step(struct daemon *d);

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: evfdd [-c FILE] [-n] [-h] [-V]\n"
		"Forward TCP and Unix-stream connections through io_uring on libev worker loops.\n\n"
		"  -c, --config FILE  configuration file (default %s; without -c and without that\n"
		"                     file, the embedded default configuration is used)\n"
		"  -n, --check        check the configuration, print \"configuration OK\" or the errors, exit\n"
		"  -h, --help         show this help\n"
		"  -V, --version      show the version\n\n"
		"SIGHUP reloads the configuration, SIGTERM and SIGINT stop gracefully; evfdctl(8) talks to\n"
		"the running daemon. See evfdd(8) and evfdd.conf(5).\n", EVFDD_CONFIG_PATH);
}

/* ---- stopping --------------------------------------------------------------------------------------- */

static void workers_gone(void *arg)
{
	struct daemon *d = arg;

	log_notice("all connections finished; exiting");
	d->workers_gone = true;
	if (d->health_gone)
		ev_break(d->ev, EVBREAK_ALL);
}

static void health_gone(void *arg)
{
	struct daemon *d = arg;

	d->health_gone = true;
	if (d->workers_gone)
		ev_break(d->ev, EVBREAK_ALL);
}

static void shutdown_timeout_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct daemon *d = w->data;
	struct evfdd_ring_info *rings = NULL;
	unsigned long open = 0;
	size_t n = 0, i;

	/* Say what is really left: the rings' own connection counts cover every service, removed ones too. */
	if (evfdd_workers_ring_info(d->plane.workers, &rings, &n) == 0)
		for (i = 0; i < n; i++)
			open += rings[i].connections;
	free(rings);
	if (open)
		log_warnx("%lu connection%s still open after shutdown_timeout (%u ms); closing %s", open,
			  open == 1 ? "" : "s", d->plane.cfg->shutdown_timeout_ms, open == 1 ? "it" : "them");
	else
		log_warnx("no connection is open, but %zu ring%s still shutting down after shutdown_timeout "
			  "(%u ms); stopping them now", n, n == 1 ? " is" : "s are", d->plane.cfg->shutdown_timeout_ms);
	d->abort_pending = true;
	daemon_step(d);
}

/* Stop accepting and let the connections finish, within shutdown_timeout. */
static void stop_begin(struct daemon *d)
{
	d->state = DAEMON_STOPPING;
	log_notice("no longer accepting; waiting up to %u ms for open connections", d->plane.cfg->shutdown_timeout_ms);
	evfdd_notify_stopping(d);
	ev_timer_init(&d->shutdown_timer, shutdown_timeout_cb, d->plane.cfg->shutdown_timeout_ms / 1000.0, 0.);
	d->shutdown_timer.data = d;
	ev_timer_start(d->ev, &d->shutdown_timer);
	evfdd_resolve_apply(d->resolve, NULL, 0);
	evfdd_health_stop(d->health, health_gone, d);
	evfdd_workers_stop(d->plane.workers, false, workers_gone, d);
}

/* What runs beside the data plane follows the services in force: health checks, name lookups, the access
 * log's writer (started when a service first asks for it, then kept until exit). */
static void services_follow(struct daemon *d)
{
	int err;

	evfdd_health_apply(d->health, d->plane.svcs, d->plane.nsvcs);
	evfdd_resolve_apply(d->resolve, d->plane.svcs, d->plane.nsvcs);
	for (size_t i = 0; i < d->plane.nsvcs; i++)
		if (d->plane.svcs[i].svc->access_log) {
			err = evfdd_accesslog_start(EVFDD_ACCESSLOG_QUEUE);
			if (err < 0)
				log_warnx("[%s] access log: cannot start its writer: %s; connections are served "
					  "without entries", d->plane.svcs[i].svc->name, strerror(-err));
			break;
		}
}

/* Cut every connection still open. */
static void stop_abort(struct daemon *d)
{
	d->aborted = true;
	ev_timer_stop(d->ev, &d->shutdown_timer);
	evfdd_workers_stop(d->plane.workers, true, workers_gone, d);
}

/* ---- reloading -------------------------------------------------------------------------------------- */

static void waiters_answer(struct reload_waiters *list, const struct evfdd_reload_result *r)
{
	struct reload_waiter *w;

	while ((w = TAILQ_FIRST(list))) {
		TAILQ_REMOVE(list, w, link);
		if (r)
			evfdd_inspect_reload_answer(w->done, w->cookie, r);
		else
			evfdd_inspect_shutting_down(w->done, w->cookie);
		free(w);
	}
}

static void reload_done(void *arg, struct evfdd_reload_result *r)
{
	struct daemon *d = arg;
	char status[256];
	size_t i;

	d->reloads++;
	if (r->ok) {
		log_notice("reload %u done in %.1f ms: %s", d->reloads, (double)r->duration_usec / 1000.0, r->summary);
		snprintf(status, sizeof(status), "reloaded: %s", r->summary);
	} else {
		d->reloads_failed++;
		log_errx("reload %u failed; still running on the previous configuration (%s):", d->reloads,
			 d->plane.cfg->source);
		for (i = 0; i < r->nerrors; i++)
			log_errx("  %s", r->errors[i].message);
		snprintf(status, sizeof(status), "reload failed, running on the previous configuration: %s",
			 r->nerrors ? r->errors[0].message : "unknown error");
	}
	evfdd_reload_result_clear(&d->last);
	d->last = *r;                    /* the result's strings are ours now */
	memset(r, 0, sizeof(*r));
	d->have_last = true;
	d->state = DAEMON_RUNNING;
	if (d->last.ok)
		services_follow(d);
	evfdd_notify_ready(d, status);
	waiters_answer(&d->waiters, &d->last);
	daemon_step(d);
}

static void reload_begin(struct daemon *d)
{
	d->reload_pending = false;
	TAILQ_CONCAT(&d->waiters, &d->next_waiters, link);
	d->state = DAEMON_RELOADING;
	evfdd_notify_reloading(d);
	evfdd_reload_run(&d->plane, reload_done, d);
}

/* ---- the decision ----------------------------------------------------------------------------------- */

/*
 * Take the next step, after any event. One thing at a time: a reload or a ring move being applied finishes
 * first; then a stop that was asked for comes before a reload (which it makes moot); a forced stop cuts the
 * connections as soon as the stop has begun.
 */
static void daemon_step(struct daemon *d)
{
	switch (d->state) {
	case DAEMON_STARTING:
	case DAEMON_RELOADING:
		return;                  /* their end calls again */
	case DAEMON_RUNNING:
		if (evfdd_workers_busy(d->plane.workers))
			return;          /* a ring move: its end calls again */
		if (d->stop_pending) {
			d->stop_pending = false;
			stop_begin(d);
			if (d->reload_pending)
				log_notice("not reloading: stopping");
			d->reload_pending = false;
			waiters_answer(&d->next_waiters, NULL);
		} else if (d->reload_pending) {
			reload_begin(d);
			return;
		} else {
			return;
		}
		/* A forced stop may have come with it. */
		__attribute__((fallthrough));
	case DAEMON_STOPPING:
		if (d->abort_pending && !d->aborted)
			stop_abort(d);
		return;
	}
}

/* ---- events ----------------------------------------------------------------------------------------- */

static void started(void *arg, int err)
{
	struct daemon *d = arg;

	if (err) {
		log_errx("starting the data plane: a ring's relay failed: %s", strerror(-err));
		d->exit_code = EXIT_STARTUP;
		ev_break(d->ev, EVBREAK_ALL);
		return;
	}
	d->state = DAEMON_RUNNING;
	services_follow(d);
	log_notice("evfdd %s ready: %u services, %u workers, %u rings (%s)", PACKAGE_VERSION, d->plane.nsvcs,
		   d->plane.cfg->workers, d->plane.cfg->rings, d->plane.cfg->source);
	evfdd_notify_ready(d, "running");
	evfdd_notify_status(d, "running");
	daemon_step(d);                  /* a signal that came during start-up */
}

static void stop_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	struct daemon *d = w->data;

	if (d->state == DAEMON_STOPPING || d->stop_pending) {
		if (!d->abort_pending)
			log_notice("second %s: closing every connection now", strsignal(w->signum));
		d->abort_pending = true;
	} else {
		log_notice("%s: stopping", strsignal(w->signum));
		d->stop_pending = true;
		if (d->state != DAEMON_RUNNING || evfdd_workers_busy(d->plane.workers))
			log_info("stopping once the %s has finished",
				 d->state == DAEMON_STARTING ? "start-up" : d->state == DAEMON_RELOADING ? "reload" :
				 "ring move");
	}
	daemon_step(d);
}

/* A reload asked by SIGHUP (@done NULL) or the control socket. */
static void reload_request(struct daemon *d, evfdd_control_done_fn done, void *cookie)
{
	struct reload_waiter *w;

	if (d->state == DAEMON_STOPPING || d->stop_pending) {
		if (done)
			evfdd_inspect_shutting_down(done, cookie);
		else
			log_notice("SIGHUP while stopping: not reloading");
		return;
	}
	if (done) {
		w = calloc(1, sizeof(*w));
		if (!w)
			fatalx("out of memory");
		w->done = done;
		w->cookie = cookie;
		TAILQ_INSERT_TAIL(&d->next_waiters, w, link);
	}
	/* Coalesce: whatever is running now, one more reload reads the file afterwards. */
	if (d->state != DAEMON_RUNNING || evfdd_workers_busy(d->plane.workers))
		log_info("reload requested while %s; it follows", d->state == DAEMON_RELOADING ? "reloading" :
			 d->state == DAEMON_STARTING ? "starting" : "a ring moves");
	d->reload_pending = true;
	daemon_step(d);
}

static void hup_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	log_info("SIGHUP: reloading the configuration");
	reload_request(w->data, NULL, NULL);
}

static void control_reload(void *arg, evfdd_control_done_fn done, void *cookie)
{
	reload_request(arg, done, cookie);
}

struct move_request {
	struct daemon *d;
	unsigned ring;
	evfdd_control_done_fn done;
	void *cookie;
};

static void moved(void *arg, unsigned from, unsigned to, uint64_t usec)
{
	struct move_request *m = arg;

	log_info("ring %u moved from loop %u to loop %u in %llu us (control socket)", m->ring, from, to,
		 (unsigned long long)usec);
	evfdd_inspect_move_answer(m->done, m->cookie, m->ring, from, to, usec);
	daemon_step(m->d);               /* a reload or a stop may have waited for this move */
	free(m);
}

static void control_move(void *arg, uint64_t ring, uint64_t loop, evfdd_control_done_fn done, void *cookie)
{
	struct daemon *d = arg;
	struct move_request *m;
	int err;

	if (d->state == DAEMON_STOPPING || d->stop_pending) {
		evfdd_inspect_shutting_down(done, cookie);
		return;
	}
	if (ring > UINT32_MAX || loop > UINT32_MAX) {
		evfdd_inspect_move_refused(done, cookie, ring > UINT32_MAX ? -ENOENT : -ESRCH, ring, loop);
		return;
	}
	if (d->state != DAEMON_RUNNING) {
		evfdd_inspect_move_refused(done, cookie, -EAGAIN, ring, loop);
		return;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		evfdd_inspect_move_refused(done, cookie, -ENOMEM, ring, loop);
		return;
	}
	*m = (struct move_request){ .d = d, .ring = (unsigned)ring, .done = done, .cookie = cookie };
	err = evfdd_workers_move(d->plane.workers, (unsigned)ring, (unsigned)loop, moved, m);
	if (err < 0) {
		free(m);
		evfdd_inspect_move_refused(done, cookie, err, ring, loop);
	}
}

/* The control socket's SetBackendState: the backend's state is shared by every generation of the service
 * that keeps it, so the drain outlasts reloads. */
static void control_set_backend(void *arg, const char *service, const char *backend, bool drain, uid_t uid,
				evfdd_control_done_fn done, void *cookie)
{
	struct daemon *d = arg;
	const struct evfdd_svc *s = evfdd_reload_service(&d->plane, service);
	struct evfdd_svc_backend *sb = s ? evfdd_pool_find(&s->pool, backend) : NULL;
	char who[32];

	if (sb) {
		snprintf(who, sizeof(who), "uid %u", (unsigned)uid);
		evfdd_backend_set_drained(sb->b, drain, who);
	}
	evfdd_inspect_backend_answer(done, cookie, s, service, backend);
}

/* ---- start-up --------------------------------------------------------------------------------------- */

static int load_config(const char *path, bool explicit_path, struct evfdd_config **cfg)
{
	struct evfdd_config_errors errs = { 0 };
	int r;

	/* No -c and no file at the default place: run on the embedded default. */
	if (!explicit_path && access(path, F_OK) < 0 && errno == ENOENT)
		path = NULL;
	r = evfdd_config_load(path, cfg, &errs);
	if (r < 0)
		evfdd_config_errors_print(stderr, &errs);
	evfdd_config_errors_free(&errs);
	return r;
}

static const struct evfdd_control_ops control_ops = {
	.status = evfdd_inspect_status,
	.loops = evfdd_inspect_loops,
	.rings = evfdd_inspect_rings,
	.services = evfdd_inspect_services,
	.move = control_move,
	.reload = control_reload,
	.metrics = evfdd_inspect_metrics,
	.backends = evfdd_inspect_backends,
	.set_backend = control_set_backend,
};

static int control_open(struct daemon *d, int fd)
{
	char *path = d->plane.cfg->control ? strdup(d->plane.cfg->control) : evfdd_control_default_path();
	int r;

	if (!path)
		fatalx("out of memory");
	r = evfdd_control_start(&d->control, d->ev, fd, path, &control_ops, d);
	if (r == 0 && fd < 0)
		log_info("control socket %s", path);
	free(path);
	return r;
}

static int run(struct daemon *d)
{
	int control_fd = -1, metrics_fd = -1, rc = EXIT_STARTUP;
	char err[512];

	signal(SIGPIPE, SIG_IGN);
	d->start_usec = util_now_us(CLOCK_MONOTONIC);
	d->state = DAEMON_STARTING;
	TAILQ_INIT(&d->waiters);
	TAILQ_INIT(&d->next_waiters);
	d->ev = ev_default_loop(EVFLAG_AUTO);
	if (!d->ev)
		fatalx("cannot create the main event loop");
	if (evfd_loop_new(&d->main, d->ev) < 0)
		fatalx("cannot set up the main loop");
	if (evfdd_health_new(&d->health, d->main) < 0 || evfdd_resolve_new(&d->resolve, d->ev) < 0)
		fatalx("out of memory");
	/* Signals first: one that arrives during start-up is acted on once the data plane is up. */
	ev_signal_init(&d->sigterm, stop_cb, SIGTERM);
	ev_signal_init(&d->sigint, stop_cb, SIGINT);
	ev_signal_init(&d->sighup, hup_cb, SIGHUP);
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	ev_signal_start(d->ev, &d->sigterm);
	ev_signal_start(d->ev, &d->sigint);
	ev_signal_start(d->ev, &d->sighup);
	/* Where no ring can be made at all, the first ring of the data plane says why, with the fix. */
	if (evfdd_features_probe(&d->plane.features, err, sizeof(err)) == -EINVAL) {
		log_errx("%s", err);
		goto out;
	}
	if (evfdd_listen_new(&d->plane.listen, d->plane.cfg, &control_fd, &metrics_fd) < 0)
		goto out;
	if (control_open(d, control_fd) < 0)
		goto out;
	if ((metrics_fd >= 0 || d->plane.cfg->metrics.kind != EVFDD_ENDPOINT_NONE) &&
	    evfdd_metrics_start(&d->metrics, d->ev, metrics_fd, &d->plane.cfg->metrics, evfdd_prometheus_text, d) < 0)
		goto out;
	if (evfdd_reload_initial(&d->plane, started, d, err, sizeof(err)) < 0) {
		if (err[0])
			log_errx("%s", err);
		goto out;
	}
	evfdd_notify_start(d);
	d->exit_code = 0;
	ev_run(d->ev, 0);
	rc = d->exit_code;
	evfdd_notify_stop(d);
out:
	ev_signal_stop(d->ev, &d->sigterm);
	ev_signal_stop(d->ev, &d->sigint);
	ev_signal_stop(d->ev, &d->sighup);
	/* libev restored the default actions: a late second SIGTERM must not kill a clean exit. */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	ev_timer_stop(d->ev, &d->shutdown_timer);
	evfdd_control_free(d->control);
	evfdd_metrics_free(d->metrics);
	evfdd_resolve_free(d->resolve);
	evfdd_health_free(d->health);
	/* After a start-up failure with rings already running, the process exits without waiting for them. */
	if (rc == 0 || !d->plane.workers || !evfdd_workers_rings(d->plane.workers)) {
		evfdd_workers_free(d->plane.workers);
		d->plane.workers = NULL;
	}
	evfdd_accesslog_stop();   /* what the rings queued is written; anything later is dropped silently */
	waiters_answer(&d->waiters, NULL);
	waiters_answer(&d->next_waiters, NULL);
	evfdd_reload_result_clear(&d->last);
	evfdd_reload_plane_clear(&d->plane);
	evfdd_listen_free(d->plane.listen);
	if (!d->plane.workers && evfd_loop_free(d->main) < 0 && rc == 0)
		log_warnx("main loop still busy at exit");
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 }
	};
	struct daemon d = { 0 };
	const char *path = EVFDD_CONFIG_PATH;
	bool explicit_path = false, check = false;
	int c, rc;

	log_init(LOG_INFO, log_stderr_is_journal());
	while ((c = getopt_long(argc, argv, "c:nhV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			explicit_path = true;
			break;
		case 'n':
			check = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("evfdd %s\n", PACKAGE_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "evfdd: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (load_config(path, explicit_path, &d.plane.cfg) < 0)
		return EXIT_CONFIG;
	if (check) {
		printf("configuration OK\n");
		evfdd_config_free(d.plane.cfg);
		return 0;
	}
	log_setlevel(d.plane.cfg->log_level);
	d.plane.config_path = path;
	d.plane.explicit_path = explicit_path;
	rc = run(&d);
	evfdd_config_free(d.plane.cfg);
	return rc;
}
