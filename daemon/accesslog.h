/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The access log: one entry per finished connection, written by a thread of its own so that the data path
 * never waits for the journal (or for a stderr pipe nobody reads).
 *
 * Producers (the rings' threads) copy an entry into a bounded queue under a mutex held for that copy only;
 * the writer comes by every 50 ms (sooner when the queue is a quarter full, so an entry costs its producer no
 * wake-up), swaps the whole queue out under the same mutex and writes the batch outside it, through
 * log_fields (log.h): journal fields SERVICE= CLIENT= BACKEND= BYTES_UP= BYTES_DOWN= DURATION_USEC= END=
 * under journald, a plain line on stderr otherwise, at LOG_INFO (so a log level below info hides it too).
 * Memory is fixed at start: two arrays of @cap entries, the one producers fill and the one being written.
 *
 * When the writer cannot keep up the queue fills and further entries are dropped and counted
 * (evfdd_accesslog_dropped, the metric evfdd_access_log_dropped_total); the writer then says so with a
 * warning at most once per 10 s, and once more at stop for drops not yet reported.
 *
 * There is one access log per process. Start and stop belong to the main thread (they are serialised
 * anyway); submit and dropped are safe from any thread at any time, before start and after stop included.
 */
#ifndef EVFDD_ACCESSLOG_H
#define EVFDD_ACCESSLOG_H

#include <stdint.h>
#include "addr.h"
#include "config.h"

/* Largest queue evfdd_accesslog_start takes: 2 x 2^20 entries of ~600 bytes is already over a gigabyte of
 * address space (touched only as far as the queue ever fills). */
#define EVFDD_ACCESSLOG_CAP_MAX (1u << 20)

/* The queue evfdd runs with: 16384 entries (about 10 MB for the two arrays, touched only as far as they
 * fill), a second of 16000 connections per second should the journal stall that long. */
#define EVFDD_ACCESSLOG_QUEUE 16384u

struct evfdd_access_entry {
	char service[EVFDD_CONFIG_NAME_MAX + 1];
	char client[EVFDD_ADDR_TEXT_MAX];        /* evfdd_addr_format of the (learned) client address */
	char backend[EVFDD_ADDR_TEXT_MAX];       /* the backend's name, "echo", or "" when none */
	uint64_t bytes_up, bytes_down, duration_usec;
	const char *end;                         /* a static string: "closed" or an end reason's name */
};

/*
 * evfdd_accesslog_start - start the writer thread with a queue of @cap entries
 *
 * Allocates the queue (2 x @cap entries) and starts the thread, with every signal blocked in it so that the
 * main thread keeps receiving them. Returns 0, -EINVAL for @cap 0 or above EVFDD_ACCESSLOG_CAP_MAX, -ENOMEM,
 * or pthread_create's error (negated). Idempotent while running: a second call returns 0 and keeps the queue
 * it has (a different @cap takes effect only after evfdd_accesslog_stop). Logs nothing; the caller reports
 * a failure.
 */
int evfdd_accesslog_start(unsigned cap);

/*
 * evfdd_accesslog_submit - queue one entry for the writer
 *
 * Copies *@e (its strings need not be terminated: each is cut at its array's last byte) and never waits for
 * the writer: the mutex it takes is held only to copy an entry in or, by the writer, to swap the queue out.
 * When the queue is full the entry is dropped and counted. A @e->end of NULL is written as "?". Safe from any
 * thread; a no-op when the log is not running (before start, after or during stop).
 */
void evfdd_accesslog_submit(const struct evfdd_access_entry *e);

/* evfdd_accesslog_dropped - entries dropped so far because the queue was full: a counter over the process's
 * life, never reset by a stop or a start (it backs a Prometheus counter). Safe from any thread. */
uint64_t evfdd_accesslog_dropped(void);

/*
 * evfdd_accesslog_stop - write what is queued, then stop the thread
 *
 * Entries submitted before the writer's last swap are written; later ones are ignored (submit is then a
 * no-op, not a drop). Waits for the writer, which may itself wait for a blocked stderr or journal: that is
 * the price of losing nothing that was accepted. Frees the queue; evfdd_accesslog_start may be called again.
 * A no-op when not running.
 */
void evfdd_accesslog_stop(void);

#endif
