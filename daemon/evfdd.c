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
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <sys/stat.h>
#include <unistd.h>
#include "accesslog.h"
#include "carry.h"
#include "control.h"
#include "daemon.h"
#include "log.h"
#include "sdjob.h"
#include "util.h"

/* Exit codes (evfdd(8)): 0 success, 1 configuration or start-up error, 2 usage, 3 a state format this
 * binary cannot read (--check-state-version). */
enum { EXIT_CONFIG = 1, EXIT_STARTUP = 1, EXIT_STATE_VERSION = 3 };

/* What this build calls itself: tests/ builds a second evfdd (evfdd-alt, "+alt") to upgrade back and forth. */
#ifndef EVFDD_BUILD_SUFFIX
#define EVFDD_BUILD_SUFFIX ""
#endif
#define EVFDD_VERSION PACKAGE_VERSION EVFDD_BUILD_SUFFIX

/* How long an upgrade waits for the new binary's check, and a SIGTERM for the service manager's answer. */
#define UPGRADE_CHECK_MS 10000
#define SDJOB_TIMEOUT_USEC 1000000
#define STORE_BARRIER_USEC 5000000

static void daemon_step(struct daemon *d);
static uint64_t main_ns;

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: evfdd [-c FILE] [-n] [-h] [-V]\n"
		"Forward TCP and Unix-stream connections through io_uring on libev worker loops.\n\n"
		"  -c, --config FILE  configuration file (default %s; without -c and without that\n"
		"                     file, the embedded default configuration is used)\n"
		"  -n, --check        check the configuration, print \"configuration OK\" or the errors, exit\n"
		"      --check-state-version=N\n"
		"                     with -n: also check that this binary reads upgrade state format N\n"
		"  -h, --help         show this help\n"
		"  -V, --version      show the version\n\n"
		"SIGHUP reloads the configuration, SIGUSR2 upgrades to the binary on disk keeping every\n"
		"connection, SIGTERM and SIGINT stop gracefully; evfdctl(8) talks to the running daemon.\n"
		"See evfdd(8) and evfdd.conf(5).\n", EVFDD_CONFIG_PATH);
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

/* A control client waits on @list for an outcome. */
static void waiter_add(struct reload_waiters *list, evfdd_control_done_fn done, void *cookie)
{
	struct reload_waiter *w = calloc(1, sizeof(*w));

	if (!w)
		fatalx("out of memory");
	w->done = done;
	w->cookie = cookie;
	TAILQ_INSERT_TAIL(list, w, link);
}

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

/* ---- upgrades and carried-over restarts --------------------------------------------------------------- */

static void upgrade_answer(struct daemon *d, const char *refused)
{
	struct reload_waiter *w;

	while ((w = TAILQ_FIRST(&d->upgrade_waiters))) {
		TAILQ_REMOVE(&d->upgrade_waiters, w, link);
		evfdd_inspect_upgrade_answer(w->done, w->cookie, d->exe_path, d->upgrades, refused);
		free(w);
	}
}

/* The upgrade cannot run: say why, and go on as before. */
static void upgrade_refuse(struct daemon *d, const char *why)
{
	log_errx("upgrade refused: %s; still running this binary", why);
	upgrade_answer(d, why);
	d->state = DAEMON_RUNNING;
	daemon_step(d);
}

/* The rings carry on after a hand-over that did not happen (or, for a restart, the rest of them). */
static void carry_resumed(void *arg)
{
	struct daemon *d = arg;

	d->state = DAEMON_RUNNING;
	services_follow(d);              /* the access log's writer stopped before execve */
	if (d->carry_kind == EVFDD_CARRY_RESTART)
		d->stop_pending = true;  /* what the store could not take drains as in any stop */
	else
		evfdd_notify_ready(d, "running (the upgrade failed)");
	daemon_step(d);
}

static void carry_put_state(struct daemon *d, struct evfdd_carry_writer *w, int *err)
{
	struct evfdd_carry_info info = { 0 };
	size_t i, k;

	info.kind = d->carry_kind;
	info.upgrades = d->upgrades + 1;
	/* From the moment the rings were told to stop: what the connections wait is counted from there. */
	info.time_usec = d->carry_t0_real;
	info.mono_ns = d->carry_t0;
	info.reloads = d->reloads;
	info.reloads_failed = d->reloads_failed;
	snprintf(info.version, sizeof(info.version), "%s", EVFDD_VERSION);
	*err = evfdd_carry_put_info(w, &info);
	for (i = 0; !*err && i < d->plane.nsvcs; i++) {
		const struct evfdd_svc *svc = d->plane.svcs[i].svc;
		struct evfdd_counts n = { 0 };

		evfdd_svc_stats_read(svc->st, &n);
		for (k = 0; !*err && k < EVFDD_CTR_COUNT; k++) {
			struct evfdd_carry_counter c = { .value = n.v[k] };

			snprintf(c.service, sizeof(c.service), "%s", svc->name);
			snprintf(c.name, sizeof(c.name), "%s", evfdd_counter_info[k].name);
			*err = evfdd_carry_put_counter(w, &c);
		}
		for (k = 0; !*err && k < svc->pool.n; k++) {
			const struct evfdd_backend *b = svc->pool.v[k].b;
			struct evfdd_carry_backend cb = {
				.drained = atomic_load(&b->drained),
				.down = atomic_load(&b->health) == EVFDD_HEALTH_DOWN,
				.connections = atomic_load(&b->connections),
				.connect_failures = atomic_load(&b->connect_failures),
				.bytes_up = atomic_load(&b->bytes_up),
				.bytes_down = atomic_load(&b->bytes_down),
				.state_changes = atomic_load(&b->state_changes),
				.last_change_usec = atomic_load(&b->last_change_usec),
			};

			snprintf(cb.service, sizeof(cb.service), "%s", svc->name);
			snprintf(cb.name, sizeof(cb.name), "%s", b->name);
			*err = evfdd_carry_put_backend(w, &cb);
		}
	}
}

/* The state of every ring, sealed in a memfd; *@fds (to free) receives every descriptor to hand over, the
 * memfd and the listeners evfdd bound itself among them, *@conns the connections described. Returns the memfd
 * or a negative errno, after logging. */
static int carry_write(struct daemon *d, int **fds, size_t *nfds, unsigned *conns)
{
	size_t left = d->carry_kind == EVFDD_CARRY_UPGRADE ? SIZE_MAX : d->carry_budget, nbound, i;
	struct evfdd_carry_writer *w = NULL;
	int memfd = -1, err;
	struct stat st;

	*fds = NULL;
	*conns = 0;
	err = evfdd_carry_writer_new(&w);
	if (!err)
		carry_put_state(d, w, &err);
	if (!err)
		err = evfdd_workers_export(d->plane.workers, w, &left, conns);
	if (!err && (memfd = evfdd_carry_seal(w)) < 0)
		err = memfd;
	nbound = evfdd_listen_bound(d->plane.listen, NULL, 0);
	*nfds = w ? evfdd_carry_writer_nfds(w) : 0;
	if (!err && !(*fds = calloc(*nfds + 1 + nbound, sizeof(**fds))))
		err = -ENOMEM;
	if (err) {
		log_errx("%s: cannot write the state: %s", d->carry_kind == EVFDD_CARRY_UPGRADE ? "upgrade" : "restart",
			 strerror(-err));
		goto out;
	}
	for (i = 0; i < *nfds; i++)
		(*fds)[i] = evfdd_carry_writer_fd(w, i);
	(*fds)[(*nfds)++] = memfd;
	*nfds += evfdd_listen_bound(d->plane.listen, *fds + *nfds, nbound);
	log_debug("hand-over: the rings parked and the state of %u connections written (%lld bytes) in %.1f ms", *conns,
		  fstat(memfd, &st) == 0 ? (long long)st.st_size : -1LL,
		  (double)(util_now_ns(CLOCK_MONOTONIC) - d->carry_t0) / 1e6);
out:
	evfdd_carry_writer_free(w);
	if (err && memfd >= 0)
		close(memfd);
	return err ? err : memfd;
}

/* A restart: into systemd's store, then the rings let the carried connections go and the rest finish. */
static int carry_store(struct daemon *d, const int *fds, size_t nfds, unsigned conns)
{
	unsigned long open = evfdd_workers_open(d->plane.workers);
	int err = evfdd_handover_store(fds, nfds, STORE_BARRIER_USEC);

	if (err < 0) {
		log_errx("restart: cannot put the connections into systemd's file descriptor store: %s; they "
			 "finish here instead, within shutdown_timeout", strerror(-err));
		return err;
	}
	d->upgrades++;
	log_notice("restart: %u connection%s handed to systemd's file descriptor store (%zu descriptors); "
		   "the next evfdd takes them over", conns, conns == 1 ? "" : "s", nfds);
	if (open > conns)
		log_warnx("restart: %lu connection%s did not fit in the store (FileDescriptorStoreMax=, "
			  "LISTEN_FDNAMES) and finish here first, within shutdown_timeout; the carried ones wait "
			  "until then", open - conns, open - conns == 1 ? "" : "s");
	evfdd_workers_unpark(d->plane.workers, true, carry_resumed, d);
	return 0;
}

/* An upgrade: execve in place with @fds and the activated sockets. Returns only on failure. */
static int carry_exec(struct daemon *d, const int *fds, size_t nfds, unsigned conns)
{
	size_t nact = evfdd_listen_activated(d->plane.listen, NULL, NULL, 0);
	int *act = calloc(nact + 1, sizeof(*act)), err;
	const char **names = calloc(nact + 1, sizeof(*names));
	sigset_t sigs, old;

	if (!act || !names) {
		err = -ENOMEM;
		goto out;
	}
	nact = evfdd_listen_activated(d->plane.listen, act, names, nact);
	log_notice("upgrade: executing %s with %u connection%s and %zu descriptors", d->exe_path, conns,
		   conns == 1 ? "" : "s", nfds);
	/* What the access log's writer holds is written first; a signal from now on waits, blocked, for the
	 * new image (the mask and pending signals survive execve). */
	evfdd_accesslog_stop();
	upgrade_answer(d, NULL);         /* Upgrade calls that came meanwhile: this one is theirs */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR2);
	sigprocmask(SIG_BLOCK, &sigs, &old);
	fflush(NULL);
	err = evfdd_handover_exec(d->exe_fd, d->argv, act, (char *const *)names, nact, fds, nfds);
	sigprocmask(SIG_SETMASK, &old, NULL);
out:
	log_errx("upgrade: cannot execute %s: %s; carrying on with this binary", d->exe_path, strerror(-err));
	free(act);
	free(names);
	return err;
}

/* Every ring is still: write the state, then hand it over with the descriptors, by execve or the store; on
 * any failure the rings carry on (and a restart stops as a stop does). */
static void carry_parked(void *arg)
{
	struct daemon *d = arg;
	unsigned conns = 0;
	int *fds = NULL, memfd = -1;
	size_t nfds = 0;

	if (d->carry_kind == EVFDD_CARRY_UPGRADE && (d->stop_pending || d->restart_pending)) {
		log_notice("upgrade: a stop came meanwhile; stopping instead");
		goto resume;
	}
	if (d->carry_kind == EVFDD_CARRY_UPGRADE && (d->reload_pending || !TAILQ_EMPTY(&d->next_waiters))) {
		/* Its callers wait for an answer that only this image could give: the reload first, then the
		 * upgrade again. */
		log_notice("upgrade: a reload came meanwhile; reloading first, upgrading after");
		d->upgrade_pending = true;
		goto resume;
	}
	memfd = carry_write(d, &fds, &nfds, &conns);
	if (memfd < 0)
		goto resume;
	if (d->carry_kind == EVFDD_CARRY_RESTART ? carry_store(d, fds, nfds, conns) == 0 :
	    carry_exec(d, fds, nfds, conns) == 0) {
		close(memfd);
		free(fds);
		return;
	}
resume:
	if (memfd >= 0)
		close(memfd);
	free(fds);
	if (d->carry_kind == EVFDD_CARRY_UPGRADE)
		upgrade_answer(d, "the hand-over failed (see the log)");
	evfdd_workers_unpark(d->plane.workers, false, carry_resumed, d);
}

/* Every ring parks: what carry_parked hands over once nothing is in flight. */
static void carry_park(struct daemon *d)
{
	int r;

	d->carry_t0 = util_now_ns(CLOCK_MONOTONIC);
	d->carry_t0_real = util_now_us(CLOCK_REALTIME);
	r = evfdd_workers_park(d->plane.workers, carry_parked, d);
	if (r < 0) {
		log_errx("cannot stop the rings for the hand-over: %s", strerror(-r));
		if (d->carry_kind == EVFDD_CARRY_UPGRADE)
			upgrade_answer(d, "the rings could not be stopped for the hand-over");
		d->state = DAEMON_RUNNING;
		if (d->carry_kind == EVFDD_CARRY_RESTART)
			d->stop_pending = true;
		daemon_step(d);
	}
}

/* The hand-over cannot run: an upgrade is refused and evfdd goes on; a restart stops as a stop does, its
 * connections finishing here (better than handing them to a start that fails). */
static void carry_refuse(struct daemon *d, const char *why)
{
	if (d->carry_kind == EVFDD_CARRY_UPGRADE) {
		upgrade_refuse(d, why);
		return;
	}
	log_warnx("restart: %s; stopping as for a stop instead, nothing carried over", why);
	d->state = DAEMON_RUNNING;
	d->stop_pending = true;
	daemon_step(d);
}

/* The new binary's check has ended: hand over, or refuse. */
static void carry_checked(void *arg, int err, const char *why)
{
	struct daemon *d = arg;
	char msg[5400];

	d->check = NULL;
	if (d->carry_kind == EVFDD_CARRY_UPGRADE && (d->stop_pending || d->restart_pending)) {
		log_notice("upgrade: a stop came meanwhile; stopping instead");
		upgrade_answer(d, "evfdd is stopping");
		d->state = DAEMON_RUNNING;
		daemon_step(d);
		return;
	}
	if (d->carry_kind == EVFDD_CARRY_RESTART && d->abort_pending) {
		carry_refuse(d, "a second signal came meanwhile");
		return;
	}
	if (err < 0) {
		snprintf(msg, sizeof(msg), "the %s binary %s does not accept the configuration or the state: %s",
			 d->carry_kind == EVFDD_CARRY_UPGRADE ? "new" : "next start's", d->exe_path, why);
		carry_refuse(d, msg);
		return;
	}
	if (d->carry_kind == EVFDD_CARRY_UPGRADE) {
		upgrade_answer(d, NULL);
		evfdd_notify_reloading(d);
		evfdd_notify_status(d, "upgrading");
	} else {
		evfdd_notify_stopping(d);
	}
	carry_park(d);
}

/* Hand every connection over: to a new image of the binary (an upgrade), or through systemd's store (a
 * restart, whose next start runs the binary evfdd was started from). Either way that binary is checked first
 * (-n, the state format), beside the loop: the watchdog and the control socket carry on meanwhile. */
static void carry_begin(struct daemon *d, enum evfdd_carry_kind kind)
{
	char why[1024], msg[5400];
	int r;

	d->carry_kind = kind;
	d->state = DAEMON_UPGRADING;
	if (kind == EVFDD_CARRY_UPGRADE)
		d->upgrade_pending = false;
	else
		d->restart_pending = false;
	if (d->exe_fd >= 0)
		close(d->exe_fd);
	if (kind == EVFDD_CARRY_UPGRADE && d->plane.cfg->upgrade_binary)
		snprintf(d->exe_path, sizeof(d->exe_path), "%s", d->plane.cfg->upgrade_binary);
	else
		snprintf(d->exe_path, sizeof(d->exe_path), "%s", d->started_from);
	d->exe_fd = d->exe_path[0] ? evfdd_handover_open_exe(d->exe_path, why, sizeof(why)) : -ENOENT;
	if (d->exe_fd < 0) {
		snprintf(msg, sizeof(msg), "the binary %s: %s", d->exe_path[0] ? d->exe_path : "(unknown)",
			 d->exe_path[0] ? why : "evfdd cannot tell where it was started from; start it by an "
			 "absolute path");
		d->exe_fd = -1;
		carry_refuse(d, msg);
		return;
	}
	r = evfdd_handover_check_start(d->ev, d->exe_fd, d->argv, UPGRADE_CHECK_MS, carry_checked, d, &d->check,
				       why, sizeof(why));
	if (r < 0) {
		snprintf(msg, sizeof(msg), "the binary %s: %s", d->exe_path, why);
		carry_refuse(d, msg);
	}
}

/* An upgrade asked by SIGUSR2 (@done NULL) or the control socket. */
static void upgrade_request(struct daemon *d, evfdd_control_done_fn done, void *cookie)
{
	if (d->state == DAEMON_STOPPING || d->stop_pending || d->restart_pending) {
		if (done)
			evfdd_inspect_shutting_down(done, cookie);
		else
			log_notice("SIGUSR2 while stopping: not upgrading");
		return;
	}
	if (done)
		waiter_add(&d->upgrade_waiters, done, cookie);
	d->upgrade_pending = true;
	daemon_step(d);
}

static void usr2_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	log_info("SIGUSR2: upgrading");
	upgrade_request(w->data, NULL, NULL);
}

static void control_upgrade(void *arg, evfdd_control_done_fn done, void *cookie)
{
	upgrade_request(arg, done, cookie);
}

/* How many descriptors a restart can carry: systemd's FileDescriptorStoreMax=, and the names of them all
 * in one LISTEN_FDNAMES string; less the state and the listeners evfdd bound. 0: it cannot carry any. */
static size_t restart_budget(struct daemon *d, uint32_t store_max)
{
	size_t names = (EVFDD_HANDOVER_FDNAMES_MAX - 4096) / (sizeof(EVFDD_CARRY_FDNAME)), max = store_max, bound;

	if (max > names)
		max = names;
	bound = evfdd_listen_bound(d->plane.listen, NULL, 0) + 1;
	return max > bound ? max - bound : 0;
}

/* SIGTERM under systemd: a stop, or the stop of a restart? systemd 252 sends the same signal; its job for the
 * unit tells them apart. Only a restart with a file descriptor store carries the connections over. */
static bool restart_wanted(struct daemon *d)
{
	struct evfdd_sdjob job;
	char why[512];
	int r;

	if (!getenv("NOTIFY_SOCKET"))
		return false;
	r = evfdd_sdjob_query(&job, SDJOB_TIMEOUT_USEC, why, sizeof(why));
	if (r < 0) {
		if (r != -ENOMEDIUM)
			log_warnx("cannot ask the service manager whether this is a restart (%s); stopping", why);
		return false;
	}
	if (!evfdd_sdjob_is_restart(job.job_type))
		return false;
	d->carry_budget = restart_budget(d, job.fdstore_max);
	if (!d->carry_budget) {
		log_notice("%s is restarting, but FileDescriptorStoreMax= is %u: connections cannot be carried over; "
			   "stopping", job.unit, job.fdstore_max);
		return false;
	}
	log_notice("%s is restarting: carrying up to %zu descriptors over", job.unit, d->carry_budget);
	return true;
}

/* The new image: counters and backends' state as the previous one left them. */
static void carry_apply_counters(struct daemon *d, const struct evfdd_carry_state *st)
{
	size_t i, k;

	for (i = 0; i < evfdd_carry_ncounters(st); i++) {
		const struct evfdd_carry_counter *c = evfdd_carry_counter(st, i);
		const struct evfdd_svc *svc = evfdd_reload_service(&d->plane, c->service);

		for (k = 0; svc && k < EVFDD_CTR_COUNT; k++)
			if (!strcmp(evfdd_counter_info[k].name, c->name))
				evfdd_svc_stats_add(svc->st, (enum evfdd_counter)k, c->value);
	}
	for (i = 0; i < evfdd_carry_nbackends(st); i++) {
		const struct evfdd_carry_backend *cb = evfdd_carry_backend(st, i);
		const struct evfdd_svc *svc = evfdd_reload_service(&d->plane, cb->service);
		struct evfdd_svc_backend *sb = svc ? evfdd_pool_find(&svc->pool, cb->name) : NULL;
		struct evfdd_backend *b = sb ? sb->b : NULL;

		if (!b)
			continue;
		/* As it was, not a change: nothing logged, nothing counted twice. A passively down backend
		 * gets its trial connection as soon as one comes. */
		atomic_store(&b->drained, cb->drained);
		atomic_store(&b->health, cb->down ? EVFDD_HEALTH_DOWN : EVFDD_HEALTH_UP);
		atomic_fetch_add(&b->connections, cb->connections);
		atomic_fetch_add(&b->connect_failures, cb->connect_failures);
		atomic_fetch_add(&b->bytes_up, cb->bytes_up);
		atomic_fetch_add(&b->bytes_down, cb->bytes_down);
		atomic_store(&b->state_changes, cb->state_changes);
		atomic_store(&b->last_change_usec, cb->last_change_usec);
	}
}

/* The Prometheus endpoint, where configured or activated. Returns 0 or a negative errno, after logging. */
static int metrics_open(struct daemon *d)
{
	int fd = evfdd_listen_metrics_fd(d->plane.listen);

	if (fd < 0 && d->plane.cfg->metrics.kind == EVFDD_ENDPOINT_NONE)
		return 0;
	return evfdd_metrics_start(&d->metrics, d->ev, fd, &d->plane.cfg->metrics, evfdd_prometheus_text, d);
}

/* An upgrade or a carried-over restart read the configuration again (a check had passed first), so what Status
 * and the metrics show as the last reload is that reading, not an earlier reload's result that no longer
 * describes the configuration in force (a failed one would keep an alert firing). */
static void carry_last_reload(struct daemon *d, uint32_t kind)
{
	const struct evfdd_config *cfg = d->plane.cfg;
	struct evfdd_reload_result r = { .ok = true };
	char *summary = NULL;

	if (asprintf(&summary, "%s %llu: the new image read %s: %u service%s, %u worker%s, %u ring%s",
		     kind == EVFDD_CARRY_RESTART ? "restart" : "upgrade", (unsigned long long)d->upgrades, cfg->source,
		     d->plane.nsvcs, d->plane.nsvcs == 1 ? "" : "s", cfg->workers, cfg->workers == 1 ? "" : "s",
		     cfg->rings, cfg->rings == 1 ? "" : "s") < 0) {
		log_warnx("out of memory: Status goes on showing the reload before the %s",
			  kind == EVFDD_CARRY_RESTART ? "restart" : "upgrade");
		return;
	}
	r.summary = summary;
	r.time_usec = util_now_us(CLOCK_REALTIME);
	r.duration_usec = d->carried.pause_usec;
	evfdd_reload_result_clear(&d->last);
	d->last = r;
	d->have_last = true;
}

static void carry_adopted(void *arg)
{
	struct daemon *d = arg;
	const struct evfdd_carry_info *info = evfdd_carry_info(d->take.st);
	size_t i;

	for (i = 0; i < d->nadopt; i++) {
		if (d->adopt[i].err == 0) {
			d->carried.connections++;
			continue;
		}
		d->carried.lost++;
		if (d->adopt[i].err == -ENOENT)
			log_warnx("[%s] the configuration has no such service any more: closing a connection carried "
				  "over", d->adopt[i].r->service);
		else
			log_warnx("[%s] cannot take over a connection carried over: %s; closing it",
				  d->adopt[i].r->service, strerror(-d->adopt[i].err));
		close(d->adopt[i].cfd);
		if (d->adopt[i].bfd >= 0)
			close(d->adopt[i].bfd);
	}
	d->carried.pause_usec = (util_now_ns(CLOCK_MONOTONIC) - info->mono_ns) / 1000;
	log_notice("%s %llu from evfdd %s: %u connection%s carried over in %.1f ms%s", info->kind ==
		   EVFDD_CARRY_RESTART ? "restart" : "upgrade", (unsigned long long)d->upgrades, info->version,
		   d->carried.connections, d->carried.connections == 1 ? "" : "s",
		   (double)d->carried.pause_usec / 1000.0, d->carried.lost ? " (some were lost: see above)" : "");
	carry_last_reload(d, info->kind);
	free(d->adopt);
	d->adopt = NULL;
	d->nadopt = 0;
	evfdd_takeover_clear(&d->take);
	/* Unlike at a start, where it is fatal, a failure here would cost every connection just carried. */
	if (metrics_open(d) < 0)
		log_warnx("evfdd goes on without its metrics endpoint; once the cause above is fixed, evfdctl upgrade "
			  "or systemctl restart starts it");
	d->state = DAEMON_RUNNING;
	evfdd_notify_ready(d, "running");
	daemon_step(d);
}

/* The new image, with its data plane up: take over what the previous one handed over. Returns false when
 * there is nothing to adopt. */
static bool carry_adopt(struct daemon *d)
{
	const struct evfdd_carry_state *st = d->take.st;
	const struct evfdd_carry_info *info;
	size_t i, n;

	if (!st)
		return false;
	info = evfdd_carry_info(st);
	log_debug("take-over: data plane up %.1f ms after the hand-over began",
		  (double)(util_now_ns(CLOCK_MONOTONIC) - info->mono_ns) / 1e6);
	d->upgrades = info->upgrades;
	d->reloads = (unsigned)info->reloads;
	d->reloads_failed = (unsigned)info->reloads_failed;
	d->carried.kind = info->kind;
	d->carried.time_usec = info->time_usec;
	snprintf(d->carried.from_version, sizeof(d->carried.from_version), "%s", info->version);
	carry_apply_counters(d, st);
	n = evfdd_carry_nconns(st);
	d->adopt = calloc(n ? n : 1, sizeof(*d->adopt));
	if (!d->adopt)
		fatalx("out of memory taking connections over");
	for (i = 0; i < n; i++) {
		const struct evfdd_carry_conn *c = evfdd_carry_conn(st, i);
		int cfd = d->take.map[c->cfd], bfd = c->bfd >= 0 ? d->take.map[c->bfd] : -1;

		if (cfd < 0 || (c->bfd >= 0 && bfd < 0)) {
			log_warnx("[%s] a connection carried over lost a descriptor on the way; closing it", c->service);
			d->carried.lost++;
			continue;
		}
		d->take.map[c->cfd] = -1;
		if (c->bfd >= 0)
			d->take.map[c->bfd] = -1;
		d->adopt[d->nadopt++] = (struct evfdd_adopt){ .r = c, .cfd = cfd, .bfd = bfd };
	}
	if (evfdd_workers_adopt(d->plane.workers, d->adopt, d->nadopt, carry_adopted, d) < 0) {
		for (i = 0; i < d->nadopt; i++)
			d->adopt[i].err = -ENOMEM;
		carry_adopted(d);
	}
	return true;
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
	case DAEMON_UPGRADING:
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
			if (d->upgrade_pending)
				upgrade_answer(d, "evfdd is stopping");
			d->upgrade_pending = false;
		} else if (d->restart_pending) {
			carry_begin(d, EVFDD_CARRY_RESTART);
			return;
		} else if (d->reload_pending) {
			reload_begin(d);
			return;
		} else if (d->upgrade_pending) {
			carry_begin(d, EVFDD_CARRY_UPGRADE);
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
	services_follow(d);
	log_notice("evfdd %s ready: %u services, %u workers, %u rings (%s)", EVFDD_VERSION, d->plane.nsvcs,
		   d->plane.cfg->workers, d->plane.cfg->rings, d->plane.cfg->source);
	evfdd_notify_status(d, "running");
	if (carry_adopt(d))
		return;                  /* ready once the connections are taken over */
	d->state = DAEMON_RUNNING;
	evfdd_notify_ready(d, "running");
	daemon_step(d);                  /* a signal that came during start-up */
}

static void stop_cb(struct ev_loop *ev, ev_signal *w, int revents)
{
	struct daemon *d = w->data;

	if (d->state == DAEMON_STOPPING || d->stop_pending || d->restart_pending ||
	    (d->state == DAEMON_UPGRADING && d->carry_kind == EVFDD_CARRY_RESTART)) {
		if (!d->abort_pending)
			log_notice("second %s: closing every connection now", strsignal(w->signum));
		d->abort_pending = true;
		d->stop_pending = d->stop_pending || d->restart_pending;
		d->restart_pending = false;
	} else if (w->signum == SIGTERM && restart_wanted(d)) {
		d->restart_pending = true;
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
	if (d->state == DAEMON_STOPPING || d->stop_pending) {
		if (done)
			evfdd_inspect_shutting_down(done, cookie);
		else
			log_notice("SIGHUP while stopping: not reloading");
		return;
	}
	if (done)
		waiter_add(&d->next_waiters, done, cookie);
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
	.upgrade = control_upgrade,
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

/* What the previous image (an upgrade, a carried-over restart) handed over, sorted out before anything else
 * opens a descriptor. Returns 0 or -EINVAL after logging. */
static int takeover(struct daemon *d, struct evfdd_inherit *in)
{
	char why[512];

	if (evfdd_handover_inherit(in, why, sizeof(why)) < 0) {
		log_errx("%s", why);
		return -EINVAL;
	}
	evfdd_handover_takeover(in, &d->take);
	if (d->take.st)
		log_debug("take-over: image started %.1f ms, state read %.1f ms after the hand-over began",
			  (double)(main_ns - evfdd_carry_info(d->take.st)->mono_ns) / 1e6,
			  (double)(util_now_ns(CLOCK_MONOTONIC) - evfdd_carry_info(d->take.st)->mono_ns) / 1e6);
	if (d->take.why[0]) {
		log_errx("the state carried over from the previous evfdd is unusable: %s; starting clean, keeping the "
			 "listeners (the connections it carried are closed)", d->take.why);
		snprintf(d->carried.fallback, sizeof(d->carried.fallback), "%s", d->take.why);
		d->carried.have = true;
		d->carried.kind = in->restart ? EVFDD_CARRY_RESTART : EVFDD_CARRY_UPGRADE;
		d->carried.time_usec = util_now_us(CLOCK_REALTIME);
	}
	if (d->take.st)
		d->carried.have = true;
	if (d->take.closed)
		log_warnx("closed %u descriptor%s carried over that the state does not name", d->take.closed,
			  d->take.closed == 1 ? "" : "s");
	return 0;
}

static int run(struct daemon *d)
{
	int control_fd = -1, rc = EXIT_STARTUP;
	struct evfdd_inherit in = { 0 };
	char err[512];
	sigset_t sigs;

	signal(SIGPIPE, SIG_IGN);
	d->start_usec = util_now_us(CLOCK_MONOTONIC);
	d->state = DAEMON_STARTING;
	d->exe_fd = -1;
	TAILQ_INIT(&d->waiters);
	TAILQ_INIT(&d->next_waiters);
	TAILQ_INIT(&d->upgrade_waiters);
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
	ev_signal_init(&d->sigusr2, usr2_cb, SIGUSR2);
	d->sigterm.data = d->sigint.data = d->sighup.data = d->sigusr2.data = d;
	ev_signal_start(d->ev, &d->sigterm);
	ev_signal_start(d->ev, &d->sigint);
	ev_signal_start(d->ev, &d->sighup);
	ev_signal_start(d->ev, &d->sigusr2);
	/* An upgrade blocked these before execve: one that came meanwhile is delivered now, to the handlers. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR2);
	sigprocmask(SIG_UNBLOCK, &sigs, NULL);
	/* Where no ring can be made at all, the first ring of the data plane says why, with the fix. */
	if (evfdd_features_probe(&d->plane.features, err, sizeof(err)) == -EINVAL) {
		log_errx("%s", err);
		goto out;
	}
	if (takeover(d, &in) < 0)
		goto out;
	if (evfdd_listen_new(&d->plane.listen, d->plane.cfg, &in, d->take.listeners, d->take.nlisteners) < 0)
		goto out;
	control_fd = evfdd_listen_control_fd(d->plane.listen);
	if (control_open(d, control_fd) < 0)
		goto out;
	/* After an upgrade, the endpoint starts once the connections are taken over: they wait for nothing else. */
	if (!d->take.st && metrics_open(d) < 0)
		goto out;
	d->plane.carried = d->take.st != NULL;
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
	ev_signal_stop(d->ev, &d->sigusr2);
	/* libev restored the default actions: a late second SIGTERM must not kill a clean exit. */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGUSR2, SIG_IGN);
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
	upgrade_answer(d, "evfdd is stopping");
	evfdd_inherit_clear(&in);
	free(d->adopt);
	evfdd_takeover_clear(&d->take);
	evfdd_handover_check_cancel(d->check);
	if (d->exe_fd >= 0)
		close(d->exe_fd);
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
		{ "check-state-version", required_argument, NULL, 'S' },
		{ 0 }
	};
	struct daemon d = { 0 };
	const char *path = EVFDD_CONFIG_PATH;
	bool explicit_path = false, check = false;
	unsigned long state_version = 0;
	char *end;
	int c, rc;

	main_ns = util_now_ns(CLOCK_MONOTONIC);
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
			printf("evfdd %s\n", EVFDD_VERSION);
			return 0;
		case 'S':
			errno = 0;
			state_version = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || !state_version) {
				fprintf(stderr, "evfdd: --check-state-version: \"%s\" is not a format version\n", optarg);
				return 2;
			}
			break;
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
	if (state_version && !check) {
		fprintf(stderr, "evfdd: --check-state-version goes with -n\n");
		return 2;
	}
	if (load_config(path, explicit_path, &d.plane.cfg) < 0)
		return EXIT_CONFIG;
	if (state_version && !evfdd_carry_version_ok(state_version)) {
		printf("this evfdd reads upgrade state formats %u to %u, not %lu\n", EVFDD_CARRY_MIN_VERSION,
		       EVFDD_CARRY_VERSION, state_version);
		evfdd_config_free(d.plane.cfg);
		return EXIT_STATE_VERSION;
	}
	if (check) {
		printf("configuration OK\n");
		evfdd_config_free(d.plane.cfg);
		return 0;
	}
	log_setlevel(d.plane.cfg->log_level);
	d.plane.config_path = path;
	d.plane.explicit_path = explicit_path;
	d.argv = argv;
	d.version = EVFDD_VERSION;
	if (evfdd_handover_exe_path(argv[0], d.started_from, sizeof(d.started_from)) < 0)
		d.started_from[0] = 0;   /* an upgrade without upgrade_binary is refused, saying so */
	rc = run(&d);
	evfdd_config_free(d.plane.cfg);
	return rc;
}
