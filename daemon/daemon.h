/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The daemon's state. evfdd.c owns it and alone decides what happens next (daemon_step: start-up, reloads,
 * moves, stopping); inspect.c reads it to answer the control socket, notify.c to tell systemd. Main thread
 * only.
 */
#ifndef EVFDD_DAEMON_H
#define EVFDD_DAEMON_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include "carry.h"
#include "control.h"
#include "evfd.h"
#include "handover.h"
#include "health.h"
#include "metrics.h"
#include "reload.h"
#include "resolve.h"

enum daemon_state {
	DAEMON_STARTING,                 /* the data plane is coming up */
	DAEMON_RUNNING,
	DAEMON_RELOADING,                /* a reload is being applied */
	DAEMON_STOPPING,                 /* no longer accepting; waiting for connections, then exiting */
	DAEMON_UPGRADING,                /* parking the rings to hand the connections to the next image */
};

/* A control client waiting for the outcome of a reload. */
struct reload_waiter {
	TAILQ_ENTRY(reload_waiter) link;
	evfdd_control_done_fn done;
	void *cookie;
};

TAILQ_HEAD(reload_waiters, reload_waiter);

/* The last upgrade or carried-over restart that reached this image (Status: last_upgrade). */
struct daemon_carried {
	bool have;
	enum evfdd_carry_kind kind;
	uint64_t time_usec;              /* CLOCK_REALTIME: when the old image handed over */
	uint64_t pause_usec;             /* from then until the connections were adopted */
	unsigned connections, lost;      /* adopted; carried but closed */
	char from_version[32];
	char fallback[512];              /* why the state was refused (a clean start), or "" */
};

struct daemon {
	struct evfdd_plane plane;        /* what runs: configuration, listeners, services, workers */
	struct evfd_loop *main;
	struct ev_loop *ev;
	struct evfdd_control *control;
	struct evfdd_metrics *metrics;   /* the Prometheus endpoint, when configured or activated */
	struct evfdd_health *health;     /* active health checks */
	struct evfdd_resolve *resolve;   /* names looked up again every resolve_interval */
	bool workers_gone, health_gone;  /* stopping: evfdd exits once both are */
	uint64_t start_usec;             /* CLOCK_MONOTONIC */

	/* Upgrades (evfdctl upgrade, SIGUSR2: execve in place) and carried-over restarts (systemctl restart:
	 * systemd's file descriptor store), handover.c and carry.c. */
	const char *version;             /* this build's (evfdd-alt for the tests adds a suffix) */
	char *const *argv;               /* what an upgrade executes again */
	char started_from[4096];         /* the binary evfdd was started from (argv[0]), "" if unknown */
	char exe_path[4096];             /* what the upgrade running executes: upgrade_binary or started_from */
	bool upgrade_pending, restart_pending;
	struct reload_waiters upgrade_waiters;   /* evfdctl upgrade: answered once the new binary passed its check */
	enum evfdd_carry_kind carry_kind;        /* of the hand-over running */
	int exe_fd;
	uint64_t carry_t0;               /* CLOCK_MONOTONIC ns: the rings were told to park */
	uint64_t carry_t0_real;          /* ... and CLOCK_REALTIME µs */
	struct evfdd_handover_check *check;   /* the new binary's check, while it runs */
	size_t carry_budget;             /* a restart: descriptors the store and LISTEN_FDNAMES take, at most */
	uint64_t upgrades;               /* hand-overs this process went through */
	struct daemon_carried carried;
	struct evfdd_takeover take;      /* what the previous image handed over, until adopted */
	struct evfdd_adopt *adopt;
	size_t nadopt;

	/* The lifecycle: one state and what is pending; daemon_step takes the next step. */
	enum daemon_state state;
	bool reload_pending;             /* runs once nothing else does (requests meanwhile coalesce) */
	bool stop_pending;               /* SIGTERM or SIGINT: stops once nothing else runs */
	bool abort_pending;              /* a second signal, or shutdown_timeout: cut what is open */
	bool aborted;
	struct reload_waiters waiters;         /* of the reload running */
	struct reload_waiters next_waiters;    /* of the one to come */
	unsigned reloads, reloads_failed;
	struct evfdd_reload_result last;
	bool have_last;
	int exit_code;

	ev_signal sigterm, sigint, sighup, sigusr2;
	ev_timer shutdown_timer;

	/* systemd (notify.c) */
	ev_timer status_timer, watchdog_timer;
	char last_status[256];
};

/* notify.c: sd_notify, the STATUS= line and the watchdog. */
void evfdd_notify_start(struct daemon *d);
void evfdd_notify_stop(struct daemon *d);
void evfdd_notify_status(struct daemon *d, const char *what);
void evfdd_notify_reloading(struct daemon *d);
void evfdd_notify_ready(struct daemon *d, const char *status);
void evfdd_notify_stopping(struct daemon *d);

/* inspect.c: every answer of the control socket (JSON) and every io.evfdd error name. The four readers
 * take the struct daemon as @arg, as struct evfdd_control_ops wants them. */
struct json_object *evfdd_inspect_status(void *arg);
struct json_object *evfdd_inspect_loops(void *arg);
struct json_object *evfdd_inspect_rings(void *arg);
struct json_object *evfdd_inspect_services(void *arg);
/* Backends (io.evfdd): @service NULL for every service; NoSuchService when there is no such one. */
void evfdd_inspect_backends(void *arg, const char *service, evfdd_control_done_fn done, void *cookie);
/* Answer a SetBackendState on backend @backend of @s (NULL: no service named @service): the backend as it
 * is now, or NoSuchService / NoSuchBackend. */
void evfdd_inspect_backend_answer(evfdd_control_done_fn done, void *cookie, const struct evfdd_svc *s,
				  const char *service, const char *backend);
/* Metrics (io.evfdd): the exposition text as {"text": ...}. */
struct json_object *evfdd_inspect_metrics(void *arg);
/* Answer a Reload with @r: the reply, or the error ReloadFailed. */
void evfdd_inspect_reload_answer(evfdd_control_done_fn done, void *cookie, const struct evfdd_reload_result *r);
/* Answer a MoveRing that moved @ring from loop @from to loop @to in @usec. */
void evfdd_inspect_move_answer(evfdd_control_done_fn done, void *cookie, unsigned ring, unsigned from,
			       unsigned to, uint64_t usec);
/* Answer a MoveRing that could not run: @err from evfdd_workers_move (-ENOENT, -ESRCH, -EBUSY...), or
 * -EAGAIN while a reload is applied. */
void evfdd_inspect_move_refused(evfdd_control_done_fn done, void *cookie, int err, uint64_t ring, uint64_t loop);
/* Answer an Upgrade: refused (@refused says why: UpgradeRefused), or accepted, about to hand over to @binary. */
void evfdd_inspect_upgrade_answer(evfdd_control_done_fn done, void *cookie, const char *binary, uint64_t upgrades,
				  const char *refused);
/* Answer any call that came while evfdd is stopping. */
void evfdd_inspect_shutting_down(evfdd_control_done_fn done, void *cookie);

/* prometheus.c: the daemon's state in Prometheus' text exposition format, malloc'd (*@len bytes); NULL when out
 * of memory. @arg is the struct daemon (evfdd_metrics_text_fn). */
char *evfdd_prometheus_text(void *arg, size_t *len);

#endif
