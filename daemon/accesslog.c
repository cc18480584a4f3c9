/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The access log's queue and writer thread; see accesslog.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "accesslog.h"
#include "log.h"
#include "util.h"

/* A warning about drops at most this often: drops come in bursts, one line per burst says enough. */
#define AL_WARN_INTERVAL_NS (10ull * 1000000000ull)
/* The writer looks at the queue this often; only a queue a quarter full (or a stop) wakes it sooner. Waking it
 * for each entry cost a futex wake-up per connection, which at 9000 new connections a second made the access
 * log cost 60-80% more CPU per connection (tests/bench/proxy-bench, edge section); an entry now waits up to
 * this long instead. */
#define AL_BATCH_NS (50ull * 1000000ull)

static struct {
	pthread_mutex_t ctl;                /* serialises start and stop; guards running and thread */
	bool running;
	pthread_t thread;
	uint64_t dropped_base;              /* al_dropped at start: the writer reports drops past it */

	pthread_mutex_t lock;               /* the queue: everything below */
	pthread_cond_t cond;                /* the writer waits on it for entries, a stop or a warning's time */
	struct evfdd_access_entry *fill;    /* producers copy into it; the writer swaps it for its own array */
	unsigned n, cap;
	unsigned wake_at;                   /* entries that make a producer wake the writer (a quarter of cap) */
	bool accepting;                     /* submit copies entries in: from start to the writer's last swap */
	bool stopping;
} al = {
	.ctl = PTHREAD_MUTEX_INITIALIZER,
	.lock = PTHREAD_MUTEX_INITIALIZER,
};

/* A hint read without the lock, so that submit costs no mutex while the log is off; accepting decides. */
static atomic_bool al_on;
static _Atomic uint64_t al_dropped;

/* Copy @s (an array of @size that may lack its NUL) into @out after @key: one "KEY=value" field. */
static void al_field(char *out, size_t cap, const char *key, char *s, size_t size)
{
	s[size - 1] = '\0';
	snprintf(out, cap, "%s=%s", key, s);
}

static void al_write(struct evfdd_access_entry *e)
{
	char service[sizeof("SERVICE=") + sizeof(e->service)], client[sizeof("CLIENT=") + sizeof(e->client)];
	char backend[sizeof("BACKEND=") + sizeof(e->backend)], up[48], down[48], dur[48], end[96];
	const char *fields[] = { service, client, backend, up, down, dur, end, NULL };
	const char *reason = e->end ? e->end : "?";

	al_field(service, sizeof(service), "SERVICE", e->service, sizeof(e->service));
	al_field(client, sizeof(client), "CLIENT", e->client, sizeof(e->client));
	al_field(backend, sizeof(backend), "BACKEND", e->backend, sizeof(e->backend));
	snprintf(up, sizeof(up), "BYTES_UP=%" PRIu64, e->bytes_up);
	snprintf(down, sizeof(down), "BYTES_DOWN=%" PRIu64, e->bytes_down);
	snprintf(dur, sizeof(dur), "DURATION_USEC=%" PRIu64, e->duration_usec);
	snprintf(end, sizeof(end), "END=%s", reason);
	log_fields(LOG_INFO, fields, "[%s] %s -> %s %s, %" PRIu64 " up, %" PRIu64 " down, %" PRIu64 ".%03" PRIu64 " s",
		   e->service, e->client, e->backend[0] ? e->backend : "(no backend)", reason, e->bytes_up,
		   e->bytes_down, e->duration_usec / 1000000, e->duration_usec % 1000000 / 1000);
}

static struct timespec al_deadline(uint64_t ns)
{
	return (struct timespec){ .tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u) };
}

/*
 * The writer: swap the producers' array for its own (empty) one under the lock, write the batch outside it.
 * It waits while there is nothing to write, with a deadline when drops are waiting for their warning. The
 * swap that sees stopping is the last: it closes the queue in the same critical section, so that nothing is
 * accepted that will not be written.
 */
static void *al_writer(void *arg)
{
	struct evfdd_access_entry *mine = arg, *batch;
	uint64_t reported = al.dropped_base, last_warn = 0, d, now;
	struct timespec ts;
	unsigned count;
	bool last = false;

	while (!last) {
		pthread_mutex_lock(&al.lock);
		while (al.n < al.wake_at && !al.stopping) {
			d = atomic_load_explicit(&al_dropped, memory_order_relaxed);
			now = util_now_ns(CLOCK_MONOTONIC);
			if (d != reported && (last_warn == 0 || now - last_warn >= AL_WARN_INTERVAL_NS))
				break;   /* a warning is due: go and write it */
			ts = al_deadline(now + AL_BATCH_NS);
			if (pthread_cond_timedwait(&al.cond, &al.lock, &ts) == ETIMEDOUT && al.n)
				break;   /* a batch's time */
		}
		batch = al.fill;
		count = al.n;
		al.fill = mine;
		al.n = 0;
		if (al.stopping) {
			al.accepting = false;
			atomic_store(&al_on, false);
			last = true;
		}
		pthread_mutex_unlock(&al.lock);

		/* The slow part, outside the lock: producers fill the other array meanwhile. */
		if (log_getlevel() >= LOG_INFO)
			for (unsigned i = 0; i < count; i++)
				al_write(&batch[i]);
		mine = batch;

		d = atomic_load_explicit(&al_dropped, memory_order_relaxed);
		now = util_now_ns(CLOCK_MONOTONIC);
		if (d != reported && (last || last_warn == 0 || now - last_warn >= AL_WARN_INTERVAL_NS)) {
			log_warnx("access log: %" PRIu64 " entries dropped: the journal could not keep up",
				  d - reported);
			reported = d;
			last_warn = now;
		}
	}
	return mine;
}

int evfdd_accesslog_start(unsigned cap)
{
	struct evfdd_access_entry *a = NULL, *b = NULL;
	pthread_condattr_t ca;
	sigset_t all, old;
	int err = 0;

	pthread_mutex_lock(&al.ctl);
	if (al.running)
		goto out;
	if (cap == 0 || cap > EVFDD_ACCESSLOG_CAP_MAX) {
		err = -EINVAL;
		goto out;
	}
	a = calloc(cap, sizeof(*a));
	b = calloc(cap, sizeof(*b));
	if (!a || !b) {
		err = -ENOMEM;
		goto fail;
	}
	/* The warning's deadline is on the monotonic clock: a wall clock step must not silence it. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	err = -pthread_cond_init(&al.cond, &ca);
	pthread_condattr_destroy(&ca);
	if (err)
		goto fail;

	pthread_mutex_lock(&al.lock);
	al.fill = a;
	al.cap = cap;
	al.wake_at = cap >= 4 ? cap / 4 : 1;
	al.n = 0;
	al.stopping = false;
	pthread_mutex_unlock(&al.lock);

	/* Taken here, not by the writer once it runs: drops may begin before it is scheduled. Earlier drops
	 * were reported by the previous writer's last warning. */
	al.dropped_base = atomic_load(&al_dropped);
	/* The writer inherits a full signal mask: evfdd's signals must reach the main thread's loop. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = -pthread_create(&al.thread, NULL, al_writer, b);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		pthread_cond_destroy(&al.cond);
		pthread_mutex_lock(&al.lock);
		al.fill = NULL;
		pthread_mutex_unlock(&al.lock);
		goto fail;
	}
	pthread_setname_np(al.thread, "evfdd-accesslog");
	al.running = true;
	pthread_mutex_lock(&al.lock);
	al.accepting = true;
	atomic_store(&al_on, true);
	pthread_mutex_unlock(&al.lock);
	goto out;
fail:
	free(a);
	free(b);
out:
	pthread_mutex_unlock(&al.ctl);
	return err;
}

void evfdd_accesslog_submit(const struct evfdd_access_entry *e)
{
	if (!atomic_load_explicit(&al_on, memory_order_relaxed))
		return;
	pthread_mutex_lock(&al.lock);
	if (!al.accepting) {
		pthread_mutex_unlock(&al.lock);
		return;
	}
	if (al.n == al.cap) {
		/* Counted inside the lock, so that the writer's last swap sees every drop and its last warning
		 * reports them all. */
		atomic_fetch_add_explicit(&al_dropped, 1, memory_order_relaxed);
		pthread_mutex_unlock(&al.lock);
		return;
	}
	al.fill[al.n] = *e;
	/* The writer comes by every AL_BATCH_NS; a queue filling up calls it sooner. */
	if (++al.n == al.wake_at)
		pthread_cond_signal(&al.cond);
	pthread_mutex_unlock(&al.lock);
}

uint64_t evfdd_accesslog_dropped(void)
{
	return atomic_load_explicit(&al_dropped, memory_order_relaxed);
}

void evfdd_accesslog_stop(void)
{
	void *mine = NULL;

	pthread_mutex_lock(&al.ctl);
	if (!al.running)
		goto out;
	pthread_mutex_lock(&al.lock);
	al.stopping = true;
	pthread_cond_signal(&al.cond);
	pthread_mutex_unlock(&al.lock);
	pthread_join(al.thread, &mine);

	/* The writer closed the queue at its last swap: no submit touches the arrays or the condition now. */
	pthread_mutex_lock(&al.lock);
	free(al.fill);
	al.fill = NULL;
	al.n = al.cap = 0;
	al.stopping = false;
	pthread_mutex_unlock(&al.lock);
	free(mine);
	pthread_cond_destroy(&al.cond);
	al.running = false;
out:
	pthread_mutex_unlock(&al.ctl);
}
