/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reload-load: the load generator of tests/bench/reload-bench. It talks to an echo service (reload-echo,
 * behind the proxy under test) and records every round trip with its time, so that the latency seen
 * around a proxy's reload can be told from the latency in quiet times.
 *
 * Two kinds of traffic, one thread, epoll, CLOCK_MONOTONIC nanoseconds (the clock Python's
 * time.monotonic_ns() reads, so the caller can place its reloads on the same time line):
 *
 *  - CONNS long-lived connections, each sending one message at a time of MIN..MAX bytes (sizes and
 *    contents derive from the connection number and the message number, so every run sends the same
 *    bytes) on a fixed schedule: message k of connection i is due at T0 + (i / CONNS + k) / RATE. It is
 *    sent when due, or as soon as the previous echo is complete if that is later. Its latency is the time
 *    from when it was *due* to when its whole echo has arrived, so a stall counts for every message it
 *    held back, as an open-loop client would see it (no "coordinated omission").
 *  - NEW new connections per second (due on a fixed schedule too): connect, send 64 bytes, read the echo,
 *    close. Latency: from when it was due to the complete echo.
 *
 * Errors are counted, never retried silently: a connect that fails, a reset, an EOF, an echo with wrong or
 * extra bytes, no answer within TIMEOUT. A long-lived connection that fails is reopened 100 ms later (its
 * messages due meanwhile are not sent; the error already tells).
 *
 * Output: stdout gets "ready T0" once every long-lived connection is up (T0 in ns; the DURATION starts
 * there) and, at the end, "summary samples N churn N errors N late N". The -o file gets one line per event:
 *   L conn due done        a long-lived round trip (ns)
 *   C n due done           a new connection's round trip (ns)
 *   E time L|C conn what   an error; what = kind and the errno text, e.g. "reset Connection reset by peer"
 * Exit status 0 when the run completed (errors or not: they are results), 1 when it could not run (no
 * connection at start, cannot write the file), 2 for usage errors.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_MSG 65536
#define CHURN_MSG 64
#define MAX_CHURN 256           /* new connections in flight at once */
#define RECONNECT_NS 100000000LL
#define START_NS 10000000000LL  /* all long-lived connections must be up within 10 s */

enum kind { K_LONG, K_CHURN };
enum state { S_FREE, S_CONNECTING, S_IDLE, S_WAIT, S_DOWN };

struct conn {
	enum kind kind;          /* first: epoll data points here */
	enum state st;
	int fd;
	unsigned id;             /* connection number (long-lived) or slot (churn) */
	uint64_t seq;            /* message number (long-lived), connection number (churn) */
	int64_t due, sent, started;
	size_t len, tx, rx;
	uint32_t events;         /* registered epoll events */
	unsigned char *msg;
};

struct opts {
	int port;
	unsigned conns, min, max;
	double rate, churn_rate, duration, timeout, grace;
	const char *out;
};

static volatile sig_atomic_t stop_signal;
static FILE *out;
static int ep = -1;
static struct sockaddr_in addr;
static unsigned long long n_samples, n_churn, n_errors, n_late;
static struct opts o;

static void on_signal(int sig)
{
	stop_signal = sig;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t mix(uint64_t x)
{
	/* splitmix64: sizes and contents from (connection, message) numbers, the same in every run. */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void fill(unsigned char *p, size_t len, uint64_t seed)
{
	uint64_t x = mix(seed);
	size_t i;

	for (i = 0; i < len; i++) {
		if (i % 8 == 0)
			x = mix(x);
		p[i] = (unsigned char)(x >> (8 * (i % 8)));
	}
}

static void record_error(const struct conn *c, const char *what, int err)
{
	n_errors++;
	fprintf(out, "E %" PRId64 " %c %" PRIu64 " %s%s%s\n", now_ns(), c->kind == K_LONG ? 'L' : 'C',
		c->kind == K_LONG ? (uint64_t)c->id : c->seq, what, err ? " " : "", err ? strerror(err) : "");
}

static int set_events(struct conn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = c };

	if (c->events == events)
		return 0;
	if (epoll_ctl(ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return -errno;
	c->events = events;
	return 0;
}

static void conn_close(struct conn *c, enum state st)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	c->events = 0;
	c->st = st;
}

/* A failure: record it; a long-lived connection is reopened later, a new one's slot is freed. */
static void conn_fail(struct conn *c, const char *what, int err)
{
	record_error(c, what, err);
	conn_close(c, c->kind == K_LONG ? S_DOWN : S_FREE);
	c->started = now_ns(); /* for S_DOWN: when the reconnect delay started */
}

static void conn_open(struct conn *c)
{
	int one = 1, err;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	c->started = now_ns();
	c->tx = c->rx = 0;
	if (c->fd < 0) {
		conn_fail(c, "socket", errno);
		return;
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->st = S_CONNECTING;
	if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
		conn_fail(c, "connect", errno);
		return;
	}
	err = set_events(c, EPOLLOUT);
	if (err)
		conn_fail(c, "epoll_ctl", -err);
}

/* Send what is left of the current message; wait for EPOLLOUT if the socket is full. */
static void conn_push(struct conn *c)
{
	int err;

	while (c->tx < c->len) {
		ssize_t n = send(c->fd, c->msg + c->tx, c->len - c->tx, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		if (n < 0) {
			conn_fail(c, errno == ECONNRESET || errno == EPIPE ? "reset" : "send", errno);
			return;
		}
		c->tx += (size_t)n;
	}
	err = set_events(c, c->tx < c->len ? EPOLLIN | EPOLLOUT : EPOLLIN);
	if (err)
		conn_fail(c, "epoll_ctl", -err);
}

static void long_send(struct conn *c, int64_t now)
{
	uint64_t seed = ((uint64_t)c->id << 32) ^ c->seq;

	c->len = o.min + (size_t)(mix(seed) % (o.max - o.min + 1));
	fill(c->msg, c->len, seed ^ 0x5555);
	c->tx = c->rx = 0;
	c->sent = now;
	c->st = S_WAIT;
	conn_push(c);
}

static void churn_send(struct conn *c)
{
	c->len = CHURN_MSG;
	fill(c->msg, c->len, c->seq | (1ULL << 63));
	c->tx = c->rx = 0;
	c->sent = now_ns();
	c->st = S_WAIT;
	conn_push(c);
}

/* The connect finished (EPOLLOUT while connecting). */
static void conn_connected(struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		conn_fail(c, err == ECONNREFUSED ? "refused" : "connect", err);
		return;
	}
	if (c->kind == K_CHURN) {
		churn_send(c);
		return;
	}
	c->st = S_IDLE;
	/* Reopened after a failure: the messages that came due meanwhile are skipped, not sent late (the
	 * error already counts). Before the start (due 0) the schedule is not set yet. */
	if (c->due) {
		int64_t now = now_ns(), step = (int64_t)(1e9 / o.rate);

		while (c->due < now)
			c->due += step;
	}
	err = set_events(c, EPOLLIN);
	if (err)
		conn_fail(c, "epoll_ctl", -err);
}

static void conn_readable(struct conn *c)
{
	static unsigned char buf[MAX_MSG];

	for (;;) {
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
		int64_t now;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n < 0) {
			conn_fail(c, errno == ECONNRESET ? "reset" : "recv", errno);
			return;
		}
		if (n == 0) {
			conn_fail(c, c->st == S_WAIT ? "eof-before-echo" : "eof", 0);
			return;
		}
		if (c->st != S_WAIT || c->rx + (size_t)n > c->tx) {
			conn_fail(c, "unexpected-bytes", 0);
			return;
		}
		if (memcmp(buf, c->msg + c->rx, (size_t)n) != 0) {
			conn_fail(c, "wrong-echo", 0);
			return;
		}
		c->rx += (size_t)n;
		if (c->rx < c->len)
			continue;
		now = now_ns();
		if (c->kind == K_CHURN) {
			n_churn++;
			fprintf(out, "C %" PRIu64 " %" PRId64 " %" PRId64 "\n", c->seq, c->due, now);
			conn_close(c, S_FREE);
			return;
		}
		n_samples++;
		fprintf(out, "L %u %" PRId64 " %" PRId64 "\n", c->id, c->due, now);
		c->seq++;
		c->due += (int64_t)(1e9 / o.rate);
		c->st = S_IDLE;
	}
}

static void on_event(struct conn *c, uint32_t events)
{
	if (c->st == S_CONNECTING) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			conn_connected(c);
		return;
	}
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
		conn_readable(c);
	if (c->fd >= 0 && c->st == S_WAIT && (events & EPOLLOUT))
		conn_push(c);
}

static int parse_num(const char *s, double lo, double hi, double *v)
{
	char *end;

	errno = 0;
	*v = strtod(s, &end);
	return errno || end == s || *end || !(*v >= lo && *v <= hi) ? -1 : 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: reload-load -p PORT -o FILE [-c CONNS] [-r RATE] [-m MIN] [-M MAX] [-d SECS] [-n NEW]\n"
		   "                   [-t TIMEOUT] [-g GRACE]\n"
		   "  -p  echo service port on 127.0.0.1        -o  event file (see the source's header)\n"
		   "  -c  long-lived connections (200)          -r  messages per second on each (25)\n"
		   "  -m, -M  message size range (64, 1024)     -d  seconds of load after \"ready\" (20)\n"
		   "  -n  new connections per second (100)      -t  seconds before no answer is an error (5)\n"
		   "  -g  seconds to wait for answers at the end (2)\n");
}

static int parse_args(int argc, char **argv)
{
	double v;
	int c;

	o = (struct opts){ .conns = 200, .min = 64, .max = 1024, .rate = 25, .churn_rate = 100, .duration = 20,
			   .timeout = 5, .grace = 2 };
	while ((c = getopt(argc, argv, "p:c:r:m:M:d:n:t:g:o:h")) != -1) {
		const char *a = optarg;
		bool ok = true;

		switch (c) {
		case 'p': ok = !parse_num(a, 1, 65535, &v); o.port = (int)v; break;
		case 'c': ok = !parse_num(a, 1, 20000, &v); o.conns = (unsigned)v; break;
		case 'r': ok = !parse_num(a, 0.01, 10000, &o.rate); break;
		case 'm': ok = !parse_num(a, 1, MAX_MSG, &v); o.min = (unsigned)v; break;
		case 'M': ok = !parse_num(a, 1, MAX_MSG, &v); o.max = (unsigned)v; break;
		case 'd': ok = !parse_num(a, 0.1, 86400, &o.duration); break;
		case 'n': ok = !parse_num(a, 0, 100000, &o.churn_rate); break;
		case 't': ok = !parse_num(a, 0.01, 3600, &o.timeout); break;
		case 'g': ok = !parse_num(a, 0, 3600, &o.grace); break;
		case 'o': o.out = a; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
		if (!ok) {
			fprintf(stderr, "reload-load: -%c: invalid or out of range: \"%s\"\n", c, a);
			return -1;
		}
	}
	if (optind != argc || !o.port || !o.out || o.min > o.max) {
		usage(stderr);
		return -1;
	}
	return 0;
}

/* The earliest of: a due message, a churn start, a timeout, a reconnect; never later than @limit. */
static int64_t next_deadline(struct conn *lc, struct conn *cc, int64_t churn_next, bool sending, int64_t limit)
{
	int64_t to = (int64_t)(o.timeout * 1e9), t = limit;
	unsigned i;

	for (i = 0; i < o.conns; i++) {
		struct conn *c = &lc[i];
		int64_t d = INT64_MAX;

		if (c->st == S_IDLE && sending)
			d = c->due;
		else if (c->st == S_WAIT)
			d = c->sent + to;
		else if (c->st == S_CONNECTING)
			d = c->started + to;
		else if (c->st == S_DOWN && sending)
			d = c->started + RECONNECT_NS;
		if (d < t)
			t = d;
	}
	for (i = 0; i < MAX_CHURN; i++) {
		int64_t d = cc[i].st == S_WAIT ? cc[i].sent + to :
			    cc[i].st == S_CONNECTING ? cc[i].started + to : INT64_MAX;
		if (d < t)
			t = d;
	}
	if (sending && o.churn_rate > 0 && churn_next < t)
		t = churn_next;
	return t;
}

/* Timeouts, due messages, reconnects and new connections at @now. */
static void run_timers(struct conn *lc, struct conn *cc, int64_t *churn_next, uint64_t *churn_seq, bool sending,
		       int64_t now)
{
	int64_t to = (int64_t)(o.timeout * 1e9), step = (int64_t)(1e9 / o.rate);
	unsigned i;

	for (i = 0; i < o.conns; i++) {
		struct conn *c = &lc[i];

		if ((c->st == S_WAIT && now - c->sent >= to) || (c->st == S_CONNECTING && now - c->started >= to)) {
			conn_fail(c, c->st == S_WAIT ? "no-echo-within-timeout" : "connect-timeout", 0);
		} else if (c->st == S_DOWN && sending && now - c->started >= RECONNECT_NS) {
			conn_open(c);
		} else if (c->st == S_IDLE && sending && c->due <= now) {
			if (now - c->due > step)
				n_late++; /* not sent within one period of its due time */
			long_send(c, now);
		}
	}
	for (i = 0; i < MAX_CHURN; i++) {
		struct conn *c = &cc[i];

		if ((c->st == S_WAIT && now - c->sent >= to) || (c->st == S_CONNECTING && now - c->started >= to))
			conn_fail(c, c->st == S_WAIT ? "no-echo-within-timeout" : "connect-timeout", 0);
	}
	while (sending && o.churn_rate > 0 && *churn_next <= now) {
		struct conn *c = NULL;

		for (i = 0; i < MAX_CHURN && !c; i++)
			if (cc[i].st == S_FREE)
				c = &cc[i];
		if (!c) {
			struct conn fake = { .kind = K_CHURN, .seq = *churn_seq };

			record_error(&fake, "too-many-pending-connects", 0);
		} else {
			c->seq = *churn_seq;
			c->due = *churn_next;
			conn_open(c);
		}
		(*churn_seq)++;
		*churn_next += (int64_t)(1e9 / o.churn_rate);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct conn *lc = NULL, *cc = NULL;
	unsigned char *bufs = NULL;
	struct epoll_event evs[256];
	int64_t t0, end, start_limit, churn_next = 0;
	uint64_t churn_seq = 0;
	bool sending = true;
	unsigned i, up;
	int ret = 1;

	if (parse_args(argc, argv) < 0)
		return 2;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	addr = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons((uint16_t)o.port),
				     .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	out = fopen(o.out, "w");
	if (!out) {
		fprintf(stderr, "reload-load: cannot write %s: %s\n", o.out, strerror(errno));
		goto done;
	}
	setvbuf(out, NULL, _IOFBF, 1 << 20);
	lc = calloc(o.conns, sizeof(*lc));
	cc = calloc(MAX_CHURN, sizeof(*cc));
	bufs = malloc((size_t)o.conns * o.max + (size_t)MAX_CHURN * CHURN_MSG);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (!lc || !cc || !bufs || ep < 0) {
		fprintf(stderr, "reload-load: setup: %s\n", ep < 0 ? strerror(errno) : "out of memory");
		goto done;
	}
	for (i = 0; i < MAX_CHURN; i++)
		cc[i] = (struct conn){ .kind = K_CHURN, .st = S_FREE, .fd = -1, .id = i,
				       .msg = bufs + (size_t)o.conns * o.max + (size_t)i * CHURN_MSG };

	/* Open every long-lived connection; a failure here means the service is not there: give up. */
	for (i = 0; i < o.conns; i++) {
		lc[i] = (struct conn){ .kind = K_LONG, .fd = -1, .id = i, .msg = bufs + (size_t)i * o.max };
		conn_open(&lc[i]);
	}
	start_limit = now_ns() + START_NS;
	for (;;) {
		int n;

		for (i = up = 0; i < o.conns; i++)
			up += lc[i].st == S_IDLE;
		if (up == o.conns || n_errors || stop_signal || now_ns() > start_limit)
			break;
		n = epoll_wait(ep, evs, 256, 100);
		for (i = 0; i < (unsigned)(n > 0 ? n : 0); i++)
			on_event(evs[i].data.ptr, evs[i].events);
	}
	if (up != o.conns) {
		fprintf(stderr, "reload-load: only %u of %u connections to 127.0.0.1:%d came up%s; is the service "
			"there?\n", up, o.conns, o.port, n_errors ? " (see the E lines in the event file)" :
			" within 10 s");
		goto done;
	}
	t0 = now_ns();
	for (i = 0; i < o.conns; i++)
		lc[i].due = t0 + (int64_t)(1e9 / o.rate * i / o.conns);
	churn_next = t0;
	end = t0 + (int64_t)(o.duration * 1e9);
	printf("ready %" PRId64 "\n", t0);
	fflush(stdout);

	for (;;) {
		int64_t now = now_ns(), d;
		struct timespec ts;
		unsigned busy = 0;
		int n;

		if (sending && (now >= end || stop_signal)) {
			sending = false;
			end = now + (int64_t)(o.grace * 1e9);
		}
		run_timers(lc, cc, &churn_next, &churn_seq, sending, now);
		if (!sending) {
			for (i = 0; i < o.conns; i++)
				busy += lc[i].st == S_WAIT || lc[i].st == S_CONNECTING;
			for (i = 0; i < MAX_CHURN; i++)
				busy += cc[i].st != S_FREE;
			if (!busy || now >= end)
				break;
		}
		d = next_deadline(lc, cc, churn_next, sending, end) - now;
		if (d < 0)
			d = 0;
		ts.tv_sec = d / 1000000000;
		ts.tv_nsec = d % 1000000000;
		n = epoll_pwait2(ep, evs, 256, &ts, NULL);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "reload-load: epoll_pwait2: %s\n", strerror(errno));
			goto done;
		}
		for (i = 0; i < (unsigned)(n > 0 ? n : 0); i++)
			on_event(evs[i].data.ptr, evs[i].events);
	}
	/* Whatever is still waiting for its echo at the end is lost. */
	for (i = 0; i < o.conns; i++)
		if (lc[i].st == S_WAIT || lc[i].st == S_CONNECTING)
			record_error(&lc[i], "no-echo-by-the-end", 0);
	for (i = 0; i < MAX_CHURN; i++)
		if (cc[i].st != S_FREE)
			record_error(&cc[i], "no-echo-by-the-end", 0);
	if (fflush(out) != 0) {
		fprintf(stderr, "reload-load: writing %s: %s\n", o.out, strerror(errno));
		goto done;
	}
	printf("summary samples %llu churn %llu errors %llu late %llu\n", n_samples, n_churn, n_errors, n_late);
	ret = 0;
done:
	if (lc)
		for (i = 0; i < o.conns; i++)
			conn_close(&lc[i], S_FREE);
	if (cc)
		for (i = 0; i < MAX_CHURN; i++)
			conn_close(&cc[i], S_FREE);
	if (out && fclose(out) != 0 && ret == 0) {
		fprintf(stderr, "reload-load: closing %s: %s\n", o.out, strerror(errno));
		ret = 1;
	}
	if (ep >= 0)
		close(ep);
	free(bufs);
	free(lc);
	free(cc);
	return ret;
}
