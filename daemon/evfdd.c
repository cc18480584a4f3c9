/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdd: start-up, signals and shutdown. The main thread runs an evfd loop on libev's default loop (signals,
 * sd_notify, timers); the data plane runs on worker loops (workers.c, relay.c). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include "config.h"
#include "listen.h"
#include "log.h"
#include "workers.h"

/* Per ring: 256 buffers of 64 KiB. A buffer is held only while its data is in flight, so this caps the
 * memory a ring uses for data at 16 MiB whatever the number of connections; 64 KiB keeps bulk transfers at
 * few requests per byte. */
#define RELAY_BUFFERS 256
#define RELAY_BUFFER_SIZE (64 * 1024)

/* Exit codes (evfdd(8)): 0 success, 1 configuration or start-up error, 2 usage. */
enum { EXIT_CONFIG = 1, EXIT_STARTUP = 1 };

struct daemon {
	struct evfdd_config *cfg;
	struct evfd_loop *main;
	struct ev_loop *ev;
	struct evfdd_svc **svcs;
	unsigned nsvcs;
	struct evfdd_workers *workers;
	ev_signal sigterm, sigint, sighup;
	ev_timer shutdown_timer;
	bool stopping, aborting;
	int exit_code;
};

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
		"See evfdd(8) and evfdd.conf(5).\n", EVFDD_CONFIG_PATH);
}

/* ENOSYS, EPERM and ENOMEM each have one usual cause on a Linux host: say which and how to fix it. */
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
	default:
		return "see evfdd(8)";
	}
}

static struct evfdd_svc *svc_build(const struct evfdd_service *s, int fd)
{
	struct evfdd_svc *svc = calloc(1, sizeof(*svc));
	size_t i;

	if (!svc)
		return NULL;
	snprintf(svc->name, sizeof(svc->name), "%s", s->name);
	svc->listen_fd = fd;
	svc->echo = s->forward.kind == EVFDD_ENDPOINT_ECHO;
	svc->tcp_nodelay = s->tcp_nodelay;
	svc->connect_timeout_ms = s->connect_timeout_ms;
	svc->idle_timeout_ms = s->idle_timeout_ms;
	svc->max_connections = s->max_connections;
	atomic_init(&svc->refs, 1);
	log_ratelimit_init(&svc->connect_rl, 10000, 5);
	log_ratelimit_init(&svc->accept_rl, 10000, 5);
	log_ratelimit_init(&svc->limit_rl, 10000, 5);
	if (!svc->echo) {
		svc->backends = calloc(s->forward.naddrs, sizeof(*svc->backends));
		if (!svc->backends) {
			free(svc);
			return NULL;
		}
		for (i = 0; i < s->forward.naddrs; i++) {
			memcpy(&svc->backends[i].addr, &s->forward.addrs[i].u.storage, s->forward.addrs[i].len);
			svc->backends[i].len = s->forward.addrs[i].len;
		}
		svc->nbackends = (unsigned)s->forward.naddrs;
	}
	return svc;
}

static void status_update(struct daemon *d, const char *what)
{
	unsigned long open = 0, total = 0;
	unsigned i;

	for (i = 0; i < d->nsvcs; i++) {
		open += atomic_load(&d->svcs[i]->open);
		total += atomic_load(&d->svcs[i]->total);
	}
	sd_notifyf(0, "STATUS=%s: %lu open connections (%lu total), %lu rings on %lu loops", what, open, total,
		   evfdd_workers_rings(d->workers), evfdd_workers_loops(d->workers));
}

static void workers_ready(void *arg, int err)
{
	struct daemon *d = arg;

	if (err) {
		log_errx("starting the data plane: %s; %s", strerror(-err), uring_hint(err));
		d->exit_code = EXIT_STARTUP;
		ev_break(d->ev, EVBREAK_ALL);
		return;
	}
	log_notice("evfdd %s ready: %u services, %u workers, %u rings (%s)", PACKAGE_VERSION, d->nsvcs,
		   d->cfg->workers, d->cfg->rings, d->cfg->source);
	sd_notify(0, "READY=1");
	status_update(d, "running");
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

	log_warnx("connections still open after shutdown_timeout (%u ms); closing them",
		  d->cfg->shutdown_timeout_ms);
	d->aborting = true;
	evfdd_workers_stop(d->workers, true, workers_gone, d);
}

static void stop_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	struct daemon *d = w->data;

	if (d->stopping) {
		if (!d->aborting) {
			log_notice("second %s: closing every connection now", strsignal(w->signum));
			d->aborting = true;
			ev_timer_stop(ev, &d->shutdown_timer);
			evfdd_workers_stop(d->workers, true, workers_gone, d);
		}
		return;
	}
	d->stopping = true;
	log_notice("%s: no longer accepting; waiting up to %u ms for open connections", strsignal(w->signum),
		   d->cfg->shutdown_timeout_ms);
	sd_notify(0, "STOPPING=1");
	ev_timer_init(&d->shutdown_timer, shutdown_timeout_cb, d->cfg->shutdown_timeout_ms / 1000.0, 0.);
	d->shutdown_timer.data = d;
	ev_timer_start(ev, &d->shutdown_timer);
	evfdd_workers_stop(d->workers, false, workers_gone, d);
}

static void hup_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	log_warnx("SIGHUP: reloading the configuration is not implemented yet; still running on %s",
		  ((struct daemon *)w->data)->cfg->source);
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

static int run(struct daemon *d)
{
	struct evfdd_workers_params wp = {
		.loops = d->cfg->workers,
		.rings = d->cfg->rings,
		.relay = { .buffers = RELAY_BUFFERS, .buffer_size = RELAY_BUFFER_SIZE },
		.ready = workers_ready,
		.arg = d,
	};
	int *fds = NULL, control_fd, err, rc = EXIT_STARTUP;
	unsigned i;

	signal(SIGPIPE, SIG_IGN);
	d->ev = ev_default_loop(EVFLAG_AUTO);
	if (!d->ev)
		fatalx("cannot create the main event loop");
	err = evfd_loop_new(&d->main, d->ev);
	if (err < 0)
		fatalx("main loop: %s", strerror(-err));
	fds = calloc(d->cfg->nservices, sizeof(*fds));
	d->svcs = calloc(d->cfg->nservices, sizeof(*d->svcs));
	if (!fds || !d->svcs)
		fatalx("out of memory");
	if (evfdd_listen_setup(d->cfg, fds, &control_fd) < 0)
		goto out;
	if (control_fd >= 0)
		close(control_fd);   /* the control socket comes with the control-socket issue */
	for (i = 0; i < d->cfg->nservices; i++) {
		d->svcs[i] = svc_build(&d->cfg->services[i], fds[i]);
		if (!d->svcs[i])
			fatalx("out of memory");
		fds[i] = -1;
		d->nsvcs++;
	}
	err = evfdd_workers_start(&d->workers, &wp, d->svcs, d->nsvcs);
	if (err < 0) {
		log_errx("cannot set up io_uring: %s; %s", strerror(-err), uring_hint(err));
		goto out;
	}
	ev_signal_init(&d->sigterm, stop_cb, SIGTERM);
	ev_signal_init(&d->sigint, stop_cb, SIGINT);
	ev_signal_init(&d->sighup, hup_cb, SIGHUP);
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	ev_signal_start(d->ev, &d->sigterm);
	ev_signal_start(d->ev, &d->sigint);
	ev_signal_start(d->ev, &d->sighup);
	d->exit_code = 0;
	ev_run(d->ev, 0);
	rc = d->exit_code;
	ev_signal_stop(d->ev, &d->sigterm);
	ev_signal_stop(d->ev, &d->sigint);
	ev_signal_stop(d->ev, &d->sighup);
	ev_timer_stop(d->ev, &d->shutdown_timer);
	if (rc == 0)
		evfdd_workers_free(d->workers);
out:
	for (i = 0; i < d->cfg->nservices && fds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	for (i = 0; i < d->nsvcs; i++)
		evfdd_svc_unref(d->svcs[i]);
	free(d->svcs);
	/* After a start-up failure with rings already running this is -EBUSY: the process exits anyway. */
	if (evfd_loop_free(d->main) < 0 && rc == 0)
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
	rc = run(&d);
	evfdd_config_free(d.cfg);
	return rc;
}
