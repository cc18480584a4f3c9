/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* What evfdd tells systemd (sd_notify, systemd 252 semantics): READY=1, RELOADING=1 with MONOTONIC_USEC and
 * READY=1 again after every reload (also a rejected one), STOPPING=1, a STATUS= line kept current, and
 * WATCHDOG=1 only while every worker loop answers its heartbeat. Without NOTIFY_SOCKET all of it is a no-op. */
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include "daemon.h"
#include "log.h"
#include "util.h"

#define STATUS_PERIOD 2.0   /* seconds */

static void status_line(struct daemon *d, const char *what, char *buf, size_t len)
{
	struct evfdd_counts c = { 0 };
	unsigned i;

	for (i = 0; i < d->plane.nsvcs; i++)
		evfdd_svc_stats_read(d->plane.svcs[i].svc->st, &c);
	snprintf(buf, len, "%s: %llu open connections (%llu total), %u rings on %u loops%s", what,
		 (unsigned long long)c.open, (unsigned long long)c.v[EVFDD_CTR_TOTAL],
		 d->plane.workers ? evfdd_workers_rings(d->plane.workers) : 0,
		 d->plane.workers ? evfdd_workers_loops(d->plane.workers) : 0,
		 d->have_last && !d->last.ok ? "; last reload failed" : "");
}

void evfdd_notify_status(struct daemon *d, const char *what)
{
	char line[sizeof(d->last_status)];

	status_line(d, what, line, sizeof(line));
	if (strcmp(line, d->last_status)) {
		memcpy(d->last_status, line, sizeof(line));
		sd_notifyf(0, "STATUS=%s", line);
	}
}

void evfdd_notify_reloading(struct daemon *d)
{
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the configuration",
		   (unsigned long long)util_now_us(CLOCK_MONOTONIC));
	d->last_status[0] = 0;
}

void evfdd_notify_ready(struct daemon *d, const char *status)
{
	snprintf(d->last_status, sizeof(d->last_status), "%s", status);
	sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void evfdd_notify_stopping(struct daemon *d)
{
	sd_notify(0, "STOPPING=1");
	evfdd_notify_status(d, "stopping");
}

static void status_cb(struct ev_loop *ev, ev_timer *t, int revents)
{
	struct daemon *d = t->data;

	if (d->state == DAEMON_RUNNING)
		evfdd_notify_status(d, "running");
	else if (d->state == DAEMON_STOPPING)
		evfdd_notify_status(d, "stopping");
}

static void watchdog_cb(struct ev_loop *ev, ev_timer *t, int revents)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000, 1);
	struct daemon *d = t->data;
	unsigned long missed;

	if (!d->plane.workers || evfdd_workers_heartbeat(d->plane.workers))
		sd_notify(0, "WATCHDOG=1");
	else if (log_ratelimit(&rl, &missed))
		log_warnx("a worker loop has not answered for a watchdog period; withholding WATCHDOG=1 so that "
			  "systemd can restart evfdd if it stays stuck (%lu similar messages suppressed)", missed);
}

void evfdd_notify_start(struct daemon *d)
{
	uint64_t usec = 0;

	ev_timer_init(&d->status_timer, status_cb, STATUS_PERIOD, STATUS_PERIOD);
	d->status_timer.data = d;
	ev_timer_start(d->ev, &d->status_timer);
	ev_unref(d->ev);
	/* WatchdogSec=: ping at half the period, as sd_watchdog_enabled(3) advises. */
	if (sd_watchdog_enabled(0, &usec) > 0 && usec) {
		ev_timer_init(&d->watchdog_timer, watchdog_cb, (double)usec / 2e6, (double)usec / 2e6);
		d->watchdog_timer.data = d;
		ev_timer_start(d->ev, &d->watchdog_timer);
		ev_unref(d->ev);
		log_info("watchdog: WATCHDOG=1 every %.0f ms while every loop answers", (double)usec / 2e3);
	}
}

void evfdd_notify_stop(struct daemon *d)
{
	if (ev_is_active(&d->status_timer)) {
		ev_ref(d->ev);
		ev_timer_stop(d->ev, &d->status_timer);
	}
	if (ev_is_active(&d->watchdog_timer)) {
		ev_ref(d->ev);
		ev_timer_stop(d->ev, &d->watchdog_timer);
	}
}
