/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The daemon's state on the main thread, shared by its start-up (evfdd.c), reloads (reload.c), systemd
 * notifications (notify.c) and the answers to the control socket (inspect.c). Main thread only. */
#ifndef EVFDD_DAEMON_H
#define EVFDD_DAEMON_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include "config.h"
#include "control.h"
#include "evfd.h"
#include "listen.h"
#include "relay.h"
#include "workers.h"

enum daemon_state { DAEMON_STARTING, DAEMON_RUNNING, DAEMON_RELOADING, DAEMON_STOPPING };

struct evfdd_reload_result {
	uint64_t time_usec;              /* CLOCK_REALTIME */
	bool ok;
	char **errors;
	size_t nerrors;
	char *summary;
};

/* Someone waiting for a reload's result (the control socket's Reload); NULL cb for a signal. */
struct evfdd_reload_waiter {
	struct evfdd_reload_waiter *next;
	evfdd_control_done_fn done;
	void *cookie;
};

struct daemon {
	const char *config_path;         /* what a reload reads */
	bool explicit_path;              /* -c given: the file must exist */
	struct evfdd_config *cfg;        /* in force */
	struct evfd_loop *main;
	struct ev_loop *ev;
	struct evfdd_listen *listen;
	struct evfdd_relay_service *svcs; /* in force: one reference each */
	unsigned nsvcs;
	struct evfdd_workers *workers;
	struct evfdd_control *control;
	enum daemon_state state;
	uint64_t start_usec;             /* CLOCK_MONOTONIC */

	/* reloads: one at a time; requests meanwhile coalesce into one more */
	bool reload_pending;
	struct evfdd_reload_waiter *waiters, *pending_waiters;
	unsigned reloads;
	struct evfdd_reload_result last;
	bool have_last;
	uint64_t reload_t0;
	char *next_summary;              /* of the reload being applied */

	/* stopping */
	ev_signal sigterm, sigint, sighup;
	ev_timer shutdown_timer;
	bool stop_requested, stopping, aborting;
	int exit_code;

	/* systemd */
	ev_timer status_timer, watchdog_timer;
	char last_status[256];
};

/* reload.c: apply @d->cfg at start-up (@done when the data plane is up, err < 0 if it failed), and
 * reloads afterwards. */
int evfdd_reload_initial(struct daemon *d, char *err, size_t errlen);
void evfdd_reload_request(struct daemon *d, evfdd_control_done_fn done, void *cookie);
void evfdd_reload_kick(struct daemon *d);   /* start a reload that waited for start-up or a ring move */
struct json_object *evfdd_reload_result_json(const struct daemon *d);   /* the last one, or NULL */
void evfdd_reload_free(struct daemon *d);   /* at exit: answer waiters, free the last result */
/* Called by the daemon when the data plane is up after evfdd_reload_initial. */
void evfdd_daemon_started(struct daemon *d, int err);
/* Called by reload.c when a reload has finished (so that a deferred stop can begin). */
void evfdd_daemon_reload_finished(struct daemon *d);

/* notify.c: sd_notify, the STATUS= line and the watchdog. */
void evfdd_notify_start(struct daemon *d);
void evfdd_notify_stop(struct daemon *d);
void evfdd_notify_status(struct daemon *d, const char *what);
void evfdd_notify_reloading(struct daemon *d);
void evfdd_notify_ready(struct daemon *d, const char *status);

/* inspect.c: the control socket's core functions. */
extern const struct evfdd_control_ops evfdd_inspect_ops;

#endif
