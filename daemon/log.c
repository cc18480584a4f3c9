/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging to stderr, one write(2) per line; see log.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>
#include "log.h"
#include "util.h"

static atomic_int log_level_cur = LOG_INFO;
static atomic_bool log_journal;

static const char *const log_names[] = {
	[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit", [LOG_ERR] = "err",
	[LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

static int log_clamp(int level)
{
	if (level < LOG_ERR)
		return LOG_ERR;	/* err and worse always pass: a daemon must not hide its failures */
	if (level > LOG_DEBUG)
		return LOG_DEBUG;
	return level;
}

void log_init(int level, bool journal)
{
	atomic_store(&log_journal, journal);
	log_setlevel(level);
}

void log_setlevel(int level)
{
	atomic_store(&log_level_cur, log_clamp(level));
}

int log_getlevel(void)
{
	return atomic_load(&log_level_cur);
}

/* Strict decimal, up to @end: no blanks, no sign (strtoumax would take both). */
static bool log_parse_u(const char *s, const char *end, uintmax_t *out)
{
	uintmax_t v = 0;

	if (s == end)
		return false;
	for (; s < end; s++) {
		if (*s < '0' || *s > '9' || v > (UINTMAX_MAX - 9) / 10)
			return false;
		v = v * 10 + (uintmax_t)(*s - '0');
	}
	*out = v;
	return true;
}

bool log_stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM"), *colon;
	uintmax_t dev, ino;
	struct stat st;

	if (!e || !(colon = strchr(e, ':')))
		return false;
	if (!log_parse_u(e, colon, &dev) || !log_parse_u(colon + 1, colon + 1 + strlen(colon + 1), &ino))
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (uintmax_t)st.st_dev == dev && (uintmax_t)st.st_ino == ino;
}

int log_level_from_name(const char *name)
{
	for (int l = LOG_ERR; l <= LOG_DEBUG; l++)
		if (strcmp(name, log_names[l]) == 0)
			return l;
	return -1;
}

const char *log_level_name(int level)
{
	if (level < LOG_EMERG || level > LOG_DEBUG)
		return "?";
	return log_names[level];
}

/* Append @s to @buf (capacity @size, used *@len), escaping control characters, so that one event stays
 * one line. Stops when full and returns false then. */
static bool log_append_escaped(char *buf, size_t size, size_t *len, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		size_t need = (c < 0x20 && c != '\t') || c == 0x7f ? 4 : 1;

		if (*len + need > size)
			return false;
		if (need == 1) {
			buf[(*len)++] = (char)c;
		} else {
			buf[(*len)++] = '\\';
			buf[(*len)++] = 'x';
			buf[(*len)++] = hex[c >> 4];
			buf[(*len)++] = hex[c & 15];
		}
	}
	return true;
}

void log_vlog(int level, int errnum, const char *fmt, va_list ap)
{
	char msg[LOG_LINE_MAX], line[LOG_LINE_MAX];
	int saved_errno = errno;
	size_t len = 0, room;
	int n;

	if (level > atomic_load(&log_level_cur))
		goto out;

	/* vsnprintf truncates safely; the escaping pass below checks the real room. */
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (errnum) {
		char ebuf[128];
		size_t m = strlen(msg);

		snprintf(msg + m, sizeof(msg) - m, ": %s", strerror_r(errnum, ebuf, sizeof(ebuf)));
	}

	if (atomic_load(&log_journal))
		n = snprintf(line, sizeof(line), "<%d>", level);
	else
		n = snprintf(line, sizeof(line), "evfdd[%ld]: %s: ", (long)getpid(), log_level_name(level));
	len = n > 0 ? (size_t)n : 0;

	/* Keep 4 bytes for "...\n": a cut message says so. */
	room = sizeof(line) - 4;
	if (!log_append_escaped(line, room, &len, msg)) {
		memcpy(line + len, "...", 3);
		len += 3;
	}
	line[len++] = '\n';

	/* One write per line; a short write to stderr is not retried, because a second write could
	 * interleave with another thread's line, and stderr is a pipe or a socket where a write below
	 * PIPE_BUF is all or nothing anyway. */
	while (write(STDERR_FILENO, line, len) < 0 && errno == EINTR)
		;
out:
	errno = saved_errno;
}

void log_fields(int level, const char *const *fields, const char *fmt, ...)
{
	char msg[LOG_LINE_MAX], field[LOG_LINE_MAX + 8], prio[16];
	struct iovec iov[16];
	int saved_errno = errno, n = 0;
	size_t len = strlen("MESSAGE=");
	va_list ap;

	if (level > atomic_load(&log_level_cur))
		goto out;
	va_start(ap, fmt);
	if (!atomic_load(&log_journal)) {
		log_vlog(level, 0, fmt, ap);
		va_end(ap);
		goto out;
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	memcpy(field, "MESSAGE=", len);
	if (!log_append_escaped(field, sizeof(field) - 1, &len, msg))
		len = strnlen(field, sizeof(field) - 1);
	field[len] = '\0';
	snprintf(prio, sizeof(prio), "PRIORITY=%d", level);
	iov[n++] = (struct iovec){ .iov_base = field, .iov_len = len };
	iov[n++] = (struct iovec){ .iov_base = prio, .iov_len = strlen(prio) };
	iov[n++] = (struct iovec){ .iov_base = (void *)"SYSLOG_IDENTIFIER=evfdd", .iov_len = 23 };
	for (; fields && *fields && n < (int)(sizeof(iov) / sizeof(iov[0])); fields++)
		iov[n++] = (struct iovec){ .iov_base = (void *)*fields, .iov_len = strlen(*fields) };
	/* sd_journal_sendv drops a message silently when the journal's socket is not there: look first (these
	 * are rare events; the access(2) costs nothing beside them). */
	if (access("/run/systemd/journal/socket", F_OK) < 0 || sd_journal_sendv(iov, n) < 0) {
		char line[LOG_LINE_MAX];
		int m = snprintf(line, sizeof(line), "<%d>%s\n", level, field + strlen("MESSAGE="));

		if (m > 0)
			while (write(STDERR_FILENO, line, (size_t)m < sizeof(line) ? (size_t)m : sizeof(line) - 1) < 0 &&
			       errno == EINTR)
				;
	}
out:
	errno = saved_errno;
}

#define LOG_DEFINE(fn, level, with_errno)                                                                \
	void fn(const char *fmt, ...)                                                                    \
	{                                                                                                \
		int e = errno;                                                                           \
		va_list ap;                                                                              \
                                                                                                         \
		va_start(ap, fmt);                                                                       \
		log_vlog(level, (with_errno) ? e : 0, fmt, ap);                                         \
		va_end(ap);                                                                              \
	}

LOG_DEFINE(log_debug, LOG_DEBUG, false)
LOG_DEFINE(log_info, LOG_INFO, false)
LOG_DEFINE(log_notice, LOG_NOTICE, false)
LOG_DEFINE(log_warn, LOG_WARNING, true)
LOG_DEFINE(log_warnx, LOG_WARNING, false)
LOG_DEFINE(log_err, LOG_ERR, true)
LOG_DEFINE(log_errx, LOG_ERR, false)

/* LOG_CRIT is above every level log_setlevel allows, so it always passes the filter. */
void fatal(const char *fmt, ...)
{
	int e = errno;
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_CRIT, e, fmt, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vlog(LOG_CRIT, 0, fmt, ap);
	va_end(ap);
	exit(1);
}

void log_ratelimit_init(struct log_ratelimit *rl, unsigned interval_ms, unsigned burst)
{
	memset(rl, 0, sizeof(*rl));
	rl->interval_ns = (uint64_t)interval_ms * 1000000u;
	rl->burst = burst;
	pthread_mutex_init(&rl->lock, NULL);
}

void log_ratelimit_destroy(struct log_ratelimit *rl)
{
	pthread_mutex_destroy(&rl->lock);
}

bool log_ratelimit(struct log_ratelimit *rl, unsigned long *suppressed)
{
	uint64_t now = util_now_ns(CLOCK_MONOTONIC);
	bool ok;

	/* An interval of 0 means no limit. */
	if (rl->interval_ns == 0) {
		if (suppressed)
			*suppressed = 0;
		return true;
	}

	pthread_mutex_lock(&rl->lock);
	if (rl->begin_ns == 0 || now - rl->begin_ns >= rl->interval_ns) {
		rl->begin_ns = now;
		rl->printed = 0;
	}
	ok = rl->printed < rl->burst;
	if (ok) {
		rl->printed++;
		if (suppressed)
			*suppressed = rl->suppressed;
		rl->suppressed = 0;
	} else {
		rl->suppressed++;
	}
	pthread_mutex_unlock(&rl->lock);
	return ok;
}
