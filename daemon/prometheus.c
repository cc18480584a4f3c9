/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The daemon's state in Prometheus' text exposition format (version 0.0.4), for the metrics endpoint
 * (metrics.c) and the control socket's Metrics. Reads what inspect.c reads, on the main thread: per-worker
 * counter blocks are summed under the stats' lock, which workers take only when a block comes or goes, so a
 * scrape never waits for a worker loop nor makes one wait.
 *
 * Names follow Prometheus' conventions: the evfdd_ prefix, _total for counters, base units (bytes, seconds),
 * and labels service, backend, reason, direction, loop. Label values may hold any byte (a Unix backend path):
 * backslash, double quote and newline are escaped as the format requires, and bytes that are not UTF-8 become
 * U+FFFD, since the format is UTF-8.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "accesslog.h"
#include "daemon.h"
#include "iofeatures.h"
#include "util.h"

/* The length of the UTF-8 sequence at @s (at most @n bytes), or 0 when it is not a valid one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len, i;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	/* overlong forms, surrogates, past U+10FFFF */
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

static void label_value(FILE *f, const char *v)
{
	const unsigned char *s = (const unsigned char *)v;
	size_t n = strlen(v), k;

	while (n) {
		if (*s == '\\' || *s == '"') {
			fputc('\\', f);
			fputc(*s, f);
			k = 1;
		} else if (*s == '\n') {
			fputs("\\n", f);
			k = 1;
		} else if ((k = utf8_len(s, n))) {
			fwrite(s, 1, k, f);
		} else {
			fputs("\xef\xbf\xbd", f);   /* U+FFFD */
			k = 1;
		}
		s += k;
		n -= k;
	}
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{service="...",backend="...",KEY="VAL"} value: any of the labels may be NULL. */
static void sample(FILE *f, const char *name, const char *service, const char *backend, const char *key,
		   const char *val, uint64_t value)
{
	const char *sep = "{";

	fputs(name, f);
	if (service) {
		fprintf(f, "%sservice=\"", sep);
		label_value(f, service);
		fputc('"', f);
		sep = ",";
	}
	if (backend) {
		fprintf(f, "%sbackend=\"", sep);
		label_value(f, backend);
		fputc('"', f);
		sep = ",";
	}
	if (key) {
		fprintf(f, "%s%s=\"", sep, key);
		label_value(f, val);
		fputc('"', f);
		sep = ",";
	}
	fprintf(f, "%s %" PRIu64 "\n", *sep == ',' ? "}" : "", value);
}

static void services_text(FILE *f, const struct daemon *d)
{
	const struct evfdd_relay_service *v = d->plane.svcs;
	struct evfdd_counts *c = calloc(d->plane.nsvcs ? d->plane.nsvcs : 1, sizeof(*c));
	unsigned i, k;

	if (!c)
		return;
	for (i = 0; i < d->plane.nsvcs; i++)
		evfdd_svc_stats_read(v[i].svc->st, &c[i]);
	family(f, "evfdd_connections_open", "gauge", "Connections open now.");
	for (i = 0; i < d->plane.nsvcs; i++)
		sample(f, "evfdd_connections_open", v[i].svc->name, NULL, NULL, NULL, c[i].open);
	family(f, "evfdd_connections_total", "counter", "Connections accepted.");
	for (i = 0; i < d->plane.nsvcs; i++)
		sample(f, "evfdd_connections_total", v[i].svc->name, NULL, NULL, NULL, c[i].v[EVFDD_CTR_TOTAL]);
	family(f, "evfdd_connections_closed_total", "counter",
	       "Connections that ended with both sides closing cleanly.");
	for (i = 0; i < d->plane.nsvcs; i++)
		sample(f, "evfdd_connections_closed_total", v[i].svc->name, NULL, NULL, NULL, c[i].v[EVFDD_CTR_CLOSED]);
	family(f, "evfdd_connection_ends_total", "counter",
	       "Connections that ended otherwise, by reason (evfdd(8), ENDS).");
	for (i = 0; i < d->plane.nsvcs; i++)
		for (k = 0; k < EVFDD_CTR_COUNT; k++)
			if (evfdd_counter_info[k].end)
				sample(f, "evfdd_connection_ends_total", v[i].svc->name, NULL, "reason",
				       evfdd_counter_info[k].name, c[i].v[k]);
	family(f, "evfdd_bytes_total", "counter", "Bytes relayed: up from clients to backends, down back.");
	for (i = 0; i < d->plane.nsvcs; i++) {
		sample(f, "evfdd_bytes_total", v[i].svc->name, NULL, "direction", "up", c[i].v[EVFDD_CTR_BYTES_UP]);
		sample(f, "evfdd_bytes_total", v[i].svc->name, NULL, "direction", "down", c[i].v[EVFDD_CTR_BYTES_DOWN]);
	}
	free(c);
}

/* One family over every backend of every service: @get reads the value. */
static void backends_family(FILE *f, const struct daemon *d, const char *name, const char *type, const char *help,
			    uint64_t (*get)(const struct evfdd_backend *b))
{
	family(f, name, type, help);
	for (unsigned i = 0; i < d->plane.nsvcs; i++) {
		const struct evfdd_pool *p = &d->plane.svcs[i].svc->pool;

		for (unsigned k = 0; k < p->n; k++)
			sample(f, name, d->plane.svcs[i].svc->name, p->v[k].b->name, NULL, NULL, get(p->v[k].b));
	}
}

static uint64_t be_up(const struct evfdd_backend *b)
{
	return atomic_load(&b->health) == EVFDD_HEALTH_UP;
}

static uint64_t be_drained(const struct evfdd_backend *b)
{
	return atomic_load(&b->drained);
}

static uint64_t be_open(const struct evfdd_backend *b)
{
	return atomic_load(&b->open);
}

static uint64_t be_connections(const struct evfdd_backend *b)
{
	return atomic_load(&b->connections);
}

static uint64_t be_failures(const struct evfdd_backend *b)
{
	return atomic_load(&b->connect_failures);
}

static uint64_t be_changes(const struct evfdd_backend *b)
{
	return atomic_load(&b->state_changes);
}

static void backends_text(FILE *f, const struct daemon *d)
{
	backends_family(f, d, "evfdd_backend_up", "gauge", "Whether the backend is healthy (1) or down (0).", be_up);
	backends_family(f, d, "evfdd_backend_drained", "gauge", "Whether the backend is drained (evfdctl backend "
			"drain).", be_drained);
	backends_family(f, d, "evfdd_backend_connections_open", "gauge", "Connections on the backend now, "
			"connecting ones included.", be_open);
	backends_family(f, d, "evfdd_backend_connections_total", "counter", "Connections established through the "
			"backend.", be_connections);
	backends_family(f, d, "evfdd_backend_connect_failures_total", "counter", "Failed connects to the backend.",
			be_failures);
	backends_family(f, d, "evfdd_backend_state_changes_total", "counter", "Changes of the backend's health or "
			"drain.", be_changes);
	family(f, "evfdd_backend_bytes_total", "counter", "Bytes relayed through the backend: up to it, down from it.");
	for (unsigned i = 0; i < d->plane.nsvcs; i++) {
		const struct evfdd_svc *s = d->plane.svcs[i].svc;

		for (unsigned k = 0; k < s->pool.n; k++) {
			const struct evfdd_backend *b = s->pool.v[k].b;

			sample(f, "evfdd_backend_bytes_total", s->name, b->name, "direction", "up",
			       atomic_load(&b->bytes_up));
			sample(f, "evfdd_backend_bytes_total", s->name, b->name, "direction", "down",
			       atomic_load(&b->bytes_down));
		}
	}
}

static void loops_text(FILE *f, const struct daemon *d)
{
	struct evfdd_loop_info *v = NULL;
	size_t n = 0, i;
	char id[16];

	if (evfdd_workers_loop_info(d->plane.workers, &v, &n) < 0)
		return;
	family(f, "evfdd_loop_rings", "gauge", "Rings a worker loop owns now.");
	for (i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "%u", v[i].id);
		sample(f, "evfdd_loop_rings", NULL, NULL, "loop", id, v[i].st.rings);
	}
	family(f, "evfdd_loop_wakeups_total", "counter", "Times a worker loop was woken by its eventfd.");
	for (i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "%u", v[i].id);
		sample(f, "evfdd_loop_wakeups_total", NULL, NULL, "loop", id, v[i].st.wakeups);
	}
	family(f, "evfdd_loop_completions_total", "counter", "io_uring completions a worker loop reaped.");
	for (i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "%u", v[i].id);
		sample(f, "evfdd_loop_completions_total", NULL, NULL, "loop", id, v[i].st.completions);
	}
	free(v);
}

char *evfdd_prometheus_text(void *arg, size_t *len)
{
	struct daemon *d = arg;
	uint64_t now_real = util_now_us(CLOCK_REALTIME), now_mono = util_now_us(CLOCK_MONOTONIC);
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	unsigned i;

	if (!f)
		return NULL;
	family(f, "evfdd_build_info", "gauge", "evfdd's version, as a label; always 1.");
	sample(f, "evfdd_build_info", NULL, NULL, "version", d->version, 1);
	family(f, "evfdd_start_time_seconds", "gauge", "When evfdd started, in seconds since the epoch.");
	sample(f, "evfdd_start_time_seconds", NULL, NULL, NULL, NULL, (now_real - (now_mono - d->start_usec)) / 1000000);
	family(f, "evfdd_workers", "gauge", "Worker loops.");
	sample(f, "evfdd_workers", NULL, NULL, NULL, NULL, evfdd_workers_loops(d->plane.workers));
	family(f, "evfdd_rings", "gauge", "io_uring rings accepting.");
	sample(f, "evfdd_rings", NULL, NULL, NULL, NULL, evfdd_workers_rings(d->plane.workers));
	family(f, "evfdd_io_uring_feature", "gauge", "io_uring features the data plane uses (evfdd(8)); always 1.");
	for (i = 0; i < EVFDD_FEATURE_COUNT; i++)
		if (d->plane.features.on[i])
			sample(f, "evfdd_io_uring_feature", NULL, NULL, "feature", evfdd_feature_name(i), 1);
	family(f, "evfdd_reloads_total", "counter", "Reloads, by result.");
	sample(f, "evfdd_reloads_total", NULL, NULL, "result", "ok", d->reloads - d->reloads_failed);
	sample(f, "evfdd_reloads_total", NULL, NULL, "result", "failed", d->reloads_failed);
	if (d->have_last) {
		family(f, "evfdd_last_reload_success", "gauge", "Whether the last reload was applied (1) or rejected (0).");
		sample(f, "evfdd_last_reload_success", NULL, NULL, NULL, NULL, d->last.ok);
		family(f, "evfdd_last_reload_timestamp_seconds", "gauge", "When the last reload finished, in seconds "
		       "since the epoch.");
		sample(f, "evfdd_last_reload_timestamp_seconds", NULL, NULL, NULL, NULL, d->last.time_usec / 1000000);
	}
	family(f, "evfdd_upgrades_total", "counter", "Upgrades and restarts that carried connections over to a new "
	       "image of this process (evfdctl upgrade, systemctl restart).");
	sample(f, "evfdd_upgrades_total", NULL, NULL, NULL, NULL, d->upgrades);
	if (d->carried.have) {
		family(f, "evfdd_last_upgrade_connections", "gauge", "Connections the last upgrade or restart carried "
		       "over to this image, by outcome.");
		sample(f, "evfdd_last_upgrade_connections", NULL, NULL, "result", "kept", d->carried.connections);
		sample(f, "evfdd_last_upgrade_connections", NULL, NULL, "result", "lost", d->carried.lost);
		family(f, "evfdd_last_upgrade_pause_seconds", "gauge", "How long the connections the last upgrade or "
		       "restart carried over waited, from the hand-over until all were taken over.");
		fprintf(f, "evfdd_last_upgrade_pause_seconds %.6f\n", (double)d->carried.pause_usec / 1e6);
	}
	family(f, "evfdd_ring_moves_total", "counter", "Ring moves between worker loops, by hand or by a reload.");
	sample(f, "evfdd_ring_moves_total", NULL, NULL, NULL, NULL, evfdd_workers_moves(d->plane.workers));
	family(f, "evfdd_access_log_dropped_total", "counter",
	       "Access log entries dropped because the writer could not keep up (access_log).");
	sample(f, "evfdd_access_log_dropped_total", NULL, NULL, NULL, NULL, evfdd_accesslog_dropped());
	loops_text(f, d);
	services_text(f, d);
	backends_text(f, d);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}
