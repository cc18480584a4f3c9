/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdd: start-up, signals and shutdown. The main thread runs an evfd loop on libev's default loop (signals,
 * sd_notify, the control socket, reloads); the data plane runs on worker loops (workers.c, relay.c). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include "control.h"
#include "daemon.h"
#include "log.h"
#include "util.h"

/* Exit codes (evfdd(8)): 0 success, 1 configuration or start-up error, 2 usage. */
enum { EXIT_CONFIG = 1, EXIT_STARTUP = 1 };

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

static void workers_gone(void *arg)
{
	struct daemon *d = arg;

	log_notice("all connections finished; exiting");
	ev_break(d->ev, EVBREAK_ALL);
}

static void shutdown_timeout_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct daemon *d = w->data;
	struct evfdd_ring_info *rings = NULL;
	unsigned long open = 0;
	size_t n = 0, i;

	/* Say what is really left: the rings' own connection counts cover every service, removed ones too. */
	if (evfdd_workers_ring_info(d->workers, &rings, &n) == 0)
		for (i = 0; i < n; i++)
			open += rings[i].connections;
	free(rings);
	if (open)
		log_warnx("%lu connection%s still open after shutdown_timeout (%u ms); closing %s", open,
			  open == 1 ? "" : "s", d->cfg->shutdown_timeout_ms, open == 1 ? "it" : "them");
	else
		log_warnx("no connection is open, but %zu ring%s still shutting down after shutdown_timeout "
			  "(%u ms); stopping them now", n, n == 1 ? " is" : "s are", d->cfg->shutdown_timeout_ms);
	d->aborting = true;
	evfdd_workers_stop(d->workers, true, workers_gone, d);
}

/* Stop accepting and let connections finish, or (@abort) cut them. Never while a reload or a move is being
 * applied: the signal is remembered and acted on when it has finished, a few milliseconds later. */
static void stop_begin(struct daemon *d, bool abort)
{
	if (evfdd_workers_busy(d->workers) || d->state != DAEMON_RUNNING) {
		d->stop_requested = true;
		d->aborting = d->aborting || abort;
		return;
	}
	if (!d->stopping) {
		d->stopping = true;
		d->state = DAEMON_STOPPING;
		log_notice("no longer accepting; waiting up to %u ms for open connections",
			   d->cfg->shutdown_timeout_ms);
		sd_notify(0, "STOPPING=1");
		evfdd_notify_status(d, "stopping");
		ev_timer_init(&d->shutdown_timer, shutdown_timeout_cb, d->cfg->shutdown_timeout_ms / 1000.0, 0.);
		d->shutdown_timer.data = d;
		ev_timer_start(d->ev, &d->shutdown_timer);
	}
	if (abort || d->aborting) {
		d->aborting = true;
		ev_timer_stop(d->ev, &d->shutdown_timer);
	}
	evfdd_workers_stop(d->workers, d->aborting, workers_gone, d);
}

static void stop_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	struct daemon *d = w->data;

	if (d->stopping || d->stop_requested) {
		if (!d->aborting) {
			log_notice("second %s: closing every connection now", strsignal(w->signum));
			stop_begin(d, true);
		}
		return;
	}
	log_notice("%s: stopping", strsignal(w->signum));
	stop_begin(d, false);
}

void evfdd_daemon_reload_finished(struct daemon *d)
{
	if (d->stop_requested && !d->stopping && !evfdd_workers_busy(d->workers))
		stop_begin(d, d->aborting);
}

static void hup_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	struct daemon *d = w->data;

	log_info("SIGHUP: reloading the configuration");
	evfdd_reload_request(d, NULL, NULL);
}

void evfdd_daemon_started(struct daemon *d, int err)
{
	if (err) {
		log_errx("starting the data plane: a ring's relay failed: %s", strerror(-err));
		d->exit_code = EXIT_STARTUP;
		ev_break(d->ev, EVBREAK_ALL);
		return;
	}
	d->state = DAEMON_RUNNING;
	log_notice("evfdd %s ready: %u services, %u workers, %u rings (%s)", PACKAGE_VERSION, d->nsvcs,
		   d->cfg->workers, d->cfg->rings, d->cfg->source);
	evfdd_notify_ready(d, "running");
	evfdd_notify_status(d, "running");
	/* A signal that came during start-up. */
	if (d->stop_requested)
		stop_begin(d, d->aborting);
	else
		evfdd_reload_kick(d);
}

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

static int control_open(struct daemon *d, int fd)
{
	char *path = d->cfg->control ? strdup(d->cfg->control) : evfdd_control_default_path();
	int r;

	if (!path)
		fatalx("out of memory");
	r = evfdd_control_start(&d->control, d->ev, fd, path, &evfdd_inspect_ops, d);
	if (r == 0 && fd < 0)
		log_info("control socket %s", path);
	free(path);
	return r;
}

static int run(struct daemon *d)
{
	int control_fd = -1, rc = EXIT_STARTUP;
	char err[512];

	signal(SIGPIPE, SIG_IGN);
	d->start_usec = util_now_us(CLOCK_MONOTONIC);
	d->ev = ev_default_loop(EVFLAG_AUTO);
	if (!d->ev)
		fatalx("cannot create the main event loop");
	if (evfd_loop_new(&d->main, d->ev) < 0)
		fatalx("cannot set up the main loop");
	/* Signals first: one that arrives during start-up is acted on once the data plane is up. */
	ev_signal_init(&d->sigterm, stop_cb, SIGTERM);
	ev_signal_init(&d->sigint, stop_cb, SIGINT);
	ev_signal_init(&d->sighup, hup_cb, SIGHUP);
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	ev_signal_start(d->ev, &d->sigterm);
	ev_signal_start(d->ev, &d->sigint);
	ev_signal_start(d->ev, &d->sighup);
	if (evfdd_listen_new(&d->listen, d->cfg, &control_fd) < 0)
		goto out;
	if (control_open(d, control_fd) < 0)
		goto out;
	if (evfdd_reload_initial(d, err, sizeof(err)) < 0) {
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
	/* After a start-up failure with rings already running, the process exits without waiting for them. */
	if (rc == 0 || !d->workers || !evfdd_workers_rings(d->workers)) {
		evfdd_workers_free(d->workers);
		d->workers = NULL;
	}
	evfdd_reload_free(d);
	evfdd_listen_free(d->listen);
	if (!d->workers && evfd_loop_free(d->main) < 0 && rc == 0)
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
	if (load_config(path, explicit_path, &d.cfg) < 0)
		return EXIT_CONFIG;
	if (check) {
		printf("configuration OK\n");
		evfdd_config_free(d.cfg);
		return 0;
	}
	log_setlevel(d.cfg->log_level);
	d.config_path = path;
	d.explicit_path = explicit_path;
	rc = run(&d);
	evfdd_config_free(d.cfg);
	return rc;
}
