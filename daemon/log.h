/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * evfdd's logging: one line per event on stderr, in the style of OpenBSD relayd's log.c.
 *
 * When stderr is the journal (systemd's JOURNAL_STREAM names fd 2), every line starts with the sd-daemon
 * priority prefix "<N>" (N is the syslog level, 3 = err ... 7 = debug) so the journal keeps levels and
 * adds its own identifier and pid. Otherwise a line reads "evfdd[PID]: LEVEL: message".
 *
 * Every function is thread-safe: a line is formatted into a local buffer (LOG_LINE_MAX bytes, truncated
 * with "..." when longer) and written with one write(2), which pipes and the journal's stream socket
 * deliver whole. Control characters in messages are escaped (\n becomes \x0a), so a peer-supplied string
 * can never forge a second line. errno is preserved across every call.
 */
#ifndef EVFDD_LOG_H
#define EVFDD_LOG_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>	/* LOG_CRIT, LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG */

/* Longest line written, including the prefix and the newline; below PIPE_BUF so a write is atomic. */
#define LOG_LINE_MAX 2048

/*
 * log_init - set the level and the output format
 * @level: the least important level still written (LOG_ERR ... LOG_DEBUG)
 * @journal: true for "<N>message" lines (stderr is the journal), false for "evfdd[PID]: LEVEL: message";
 *           pass log_stderr_is_journal() unless a test wants one format
 *
 * Before log_init the level is LOG_INFO and the format is plain. Safe to call again at any time.
 */
void log_init(int level, bool journal);

/* Change the level (e.g. after a configuration reload); out-of-range values are clamped. */
void log_setlevel(int level);
int log_getlevel(void);

/* True when fd 2 is the stream systemd connected to the journal: JOURNAL_STREAM holds "DEV:INODE" in
 * decimal and they match fstat(2)'s st_dev and st_ino (systemd.exec(5)). A stderr redirected later by
 * the service, or inherited by a child whose stderr is elsewhere, does not match. */
bool log_stderr_is_journal(void);

/* "debug", "info", "notice", "warning", "err" -> LOG_DEBUG ... LOG_ERR; -1 for anything else. */
int log_level_from_name(const char *name);
/* The syslog keyword of a level ("crit", "err", "warning", ...); "?" when out of range. */
const char *log_level_name(int level);

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_notice(const char *fmt, ...) LOG_PRINTF(1, 2);
/* LOG_WARNING, with ": strerror(errno)" appended. */
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
/* LOG_WARNING. */
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);
/* LOG_ERR, with ": strerror(errno)" appended; does not exit. */
void log_err(const char *fmt, ...) LOG_PRINTF(1, 2);
/* LOG_ERR; does not exit. */
void log_errx(const char *fmt, ...) LOG_PRINTF(1, 2);
/* LOG_CRIT whatever the level (with ": strerror(errno)" for fatal), then exit(1). */
__attribute__((noreturn)) void fatal(const char *fmt, ...) LOG_PRINTF(1, 2);
__attribute__((noreturn)) void fatalx(const char *fmt, ...) LOG_PRINTF(1, 2);

/* The common path: @errnum != 0 appends ": strerror(@errnum)". For wrappers. */
void log_vlog(int level, int errnum, const char *fmt, va_list ap) LOG_PRINTF(3, 0);

/*
 * log_fields - an event with structured fields: under journald (log_init's @journal) it goes to the journal
 * through sd_journal_send with @fields ("KEY=value" strings, NULL-terminated; KEY in A-Z0-9_) besides
 * MESSAGE=, PRIORITY= and SYSLOG_IDENTIFIER=evfdd, so that `journalctl SERVICE=web` finds it; otherwise it
 * is the same line on stderr as log_vlog writes. If the journal's socket is not there or will not take it, the
 * line goes to stderr ("<N>message").
 */
void log_fields(int level, const char *const *fields, const char *fmt, ...) LOG_PRINTF(3, 4);

/*
 * A rate limiter for messages that an outside event can repeat at will ("backend refused", "accept:
 * EMFILE"): at most @burst messages per @interval_ms; the rest are counted and reported with the next
 * message let through. Thread-safe (a mutex: taken only on a path that is about to log anyway).
 *
 *	static struct log_ratelimit refused_rl = LOG_RATELIMIT_INIT(5000, 10);
 *	unsigned long missed;
 *
 *	if (log_ratelimit(&refused_rl, &missed))
 *		log_warnx("[%s] backend %s refused the connection (%lu similar messages suppressed)",
 *			  name, backend, missed);
 */
struct log_ratelimit {
	uint64_t interval_ns;
	unsigned burst;
	/* private */
	pthread_mutex_t lock;
	uint64_t begin_ns;		/* start of the current interval; 0 before the first message */
	unsigned printed;		/* messages let through in the current interval */
	unsigned long suppressed;	/* messages refused since the last one let through */
};

#define LOG_RATELIMIT_INIT(interval_ms, burst_)                                                          \
	{ .interval_ns = (uint64_t)(interval_ms) * 1000000u, .burst = (burst_),                          \
	  .lock = PTHREAD_MUTEX_INITIALIZER }

/* For limiters that live in allocated memory; pair with log_ratelimit_destroy. */
void log_ratelimit_init(struct log_ratelimit *rl, unsigned interval_ms, unsigned burst);
void log_ratelimit_destroy(struct log_ratelimit *rl);

/*
 * log_ratelimit - may the caller log now?
 * @suppressed: when true is returned, receives how many messages were refused since the previous one
 *              let through (0 when none); left alone when false is returned. May be NULL.
 */
bool log_ratelimit(struct log_ratelimit *rl, unsigned long *suppressed);

#endif
