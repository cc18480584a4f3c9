/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The access log: start and stop (idempotent, restartable, a no-op submit around them), the exact line on
 * stderr and the exact fields through the journal's native protocol (a stand-in socket in a private mount
 * namespace, as test-log does), entries from four threads in order per thread, and overload: with stderr a
 * full pipe nobody reads, the writer blocks and 100000 submits still return at once, drops counted, and a
 * stop writes what was queued and the warning about the drops.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../daemon/accesslog.h"
#include "../daemon/log.h"
#include "testutil.h"

static int saved_stderr = STDERR_FILENO;

static unsigned long scaled(unsigned long n, unsigned long min)
{
	const char *s = getenv("EVFD_TEST_SCALE");
	unsigned long d = s ? strtoul(s, NULL, 10) : 1;

	n /= d ? d : 1;
	return n < min ? min : n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- stderr through a pipe, read by a thread of ours ------------------------------------------------- */

struct capture {
	int rfd;
	char *buf;
	size_t len, cap;
	pthread_t reader;
	bool reading;
};

static void *capture_reader(void *arg)
{
	struct capture *c = arg;

	for (;;) {
		ssize_t n;

		if (c->cap - c->len < 65536) {
			c->cap = c->cap ? c->cap * 2 : 1 << 20;
			c->buf = realloc(c->buf, c->cap);
			TU_CHECK(c->buf, "realloc");
		}
		n = read(c->rfd, c->buf + c->len, c->cap - c->len - 1);
		if (n < 0 && errno == EINTR)
			continue;
		TU_CHECK(n >= 0, "read: %s", strerror(errno));
		if (n == 0)
			break;
		c->len += (size_t)n;
	}
	c->buf[c->len] = '\0';
	return NULL;
}

/* Start reading what fd 2 receives (at once, or after a full capture_start). */
static void capture_read(struct capture *c)
{
	TU_CHECK(pthread_create(&c->reader, NULL, capture_reader, c) == 0, "pthread_create");
	c->reading = true;
}

/* Point fd 2 at a new pipe. @full: fill it first, and read nothing until capture_read. */
static void capture_start(struct capture *c, bool full)
{
	int p[2];

	memset(c, 0, sizeof(*c));
	TU_CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
	if (full) {
		static char junk[4096];

		/* fill it without blocking, then make it blocking again: the writer's write(2) must wait */
		TU_CHECK(fcntl(p[1], F_SETFL, O_NONBLOCK) == 0, "fcntl");
		while (write(p[1], junk, sizeof(junk)) > 0)
			;
		TU_CHECK(errno == EAGAIN, "fill: %s", strerror(errno));
		TU_CHECK(fcntl(p[1], F_SETFL, 0) == 0, "fcntl");
	}
	TU_CHECK(dup2(p[1], STDERR_FILENO) == STDERR_FILENO, "dup2");
	close(p[1]);
	c->rfd = p[0];
	if (!full)
		capture_read(c);
}

/* Restore fd 2 and return everything written since capture_start (the pipe's filling skipped). */
static const char *capture_end(struct capture *c, bool full)
{
	const char *p;

	TU_CHECK(dup2(saved_stderr, STDERR_FILENO) == STDERR_FILENO, "dup2");
	if (!c->reading)
		capture_read(c);
	pthread_join(c->reader, NULL);
	close(c->rfd);
	p = c->buf;
	if (full)
		while (*p == '\0' && p < c->buf + c->len)
			p++;
	return p;
}

static void capture_free(struct capture *c)
{
	free(c->buf);
}

static void fill(struct evfdd_access_entry *e, const char *service, const char *client, const char *backend,
		 uint64_t up, uint64_t down, uint64_t usec, const char *end)
{
	memset(e, 0, sizeof(*e));
	snprintf(e->service, sizeof(e->service), "%s", service);
	snprintf(e->client, sizeof(e->client), "%s", client);
	snprintf(e->backend, sizeof(e->backend), "%s", backend);
	e->bytes_up = up;
	e->bytes_down = down;
	e->duration_usec = usec;
	e->end = end;
}

static void expect(const char *got, const char *want)
{
	TU_CHECK(strcmp(got, want) == 0, "got\n%swant\n%s", got, want);
}

/* ---- the cases ------------------------------------------------------------------------------------ */

static void test_lifecycle(void)
{
	struct evfdd_access_entry e;
	struct capture c;
	uint64_t dropped = evfdd_accesslog_dropped();
	char want[256];

	log_init(LOG_INFO, false);
	fill(&e, "web", "127.0.0.1:1", "", 0, 0, 0, "closed");
	capture_start(&c, false);
	evfdd_accesslog_submit(&e);		/* not started: nothing, not even a drop */
	evfdd_accesslog_stop();			/* not started: nothing */
	TU_CHECK(evfdd_accesslog_start(0) == -EINVAL, "cap 0");
	TU_CHECK(evfdd_accesslog_start(EVFDD_ACCESSLOG_CAP_MAX + 1) == -EINVAL, "cap too large");
	TU_CHECK(evfdd_accesslog_start(4) == 0, "start");
	TU_CHECK(evfdd_accesslog_start(4) == 0 && evfdd_accesslog_start(0) == 0, "idempotent while running");
	evfdd_accesslog_stop();
	evfdd_accesslog_stop();
	evfdd_accesslog_submit(&e);		/* stopped: nothing */
	TU_CHECK(evfdd_accesslog_start(2) == 0, "restart");
	evfdd_accesslog_submit(&e);
	evfdd_accesslog_stop();
	snprintf(want, sizeof(want),
		 "evfdd[%ld]: info: [web] 127.0.0.1:1 -> (no backend) closed, 0 up, 0 down, 0.000 s\n", (long)getpid());
	expect(capture_end(&c, false), want);	/* the one entry submitted while running */
	capture_free(&c);
	TU_CHECK(evfdd_accesslog_dropped() == dropped, "no drops");
	printf("ok start, stop, restart\n");
}

static void test_exact_line(void)
{
	struct evfdd_access_entry e;
	struct capture c;
	char want[2048], longc[300];
	long pid = (long)getpid();

	log_init(LOG_INFO, false);
	TU_CHECK(evfdd_accesslog_start(16) == 0, "start");
	capture_start(&c, false);
	fill(&e, "web", "127.0.0.5:41234", "10.0.0.1:80", 512, 2048, 1234567, "closed");
	evfdd_accesslog_submit(&e);
	fill(&e, "unix-svc", "@abs\\x0aname", "", 0, 0, 999, "denied");
	evfdd_accesslog_submit(&e);
	/* unterminated strings are cut at their arrays' last byte; a NULL end is "?" */
	memset(&e, 'x', sizeof(e));
	e.bytes_up = 1;
	e.bytes_down = 2;
	e.duration_usec = 60000000;
	e.end = NULL;
	evfdd_accesslog_submit(&e);
	evfdd_accesslog_stop();
	memset(longc, 'x', sizeof(e.client) - 1);
	longc[sizeof(e.client) - 1] = '\0';
	snprintf(want, sizeof(want),
		 "evfdd[%ld]: info: [web] 127.0.0.5:41234 -> 10.0.0.1:80 closed, 512 up, 2048 down, 1.234 s\n"
		 "evfdd[%ld]: info: [unix-svc] @abs\\x0aname -> (no backend) denied, 0 up, 0 down, 0.000 s\n"
		 "evfdd[%ld]: info: [%.*s] %s -> %s ?, 1 up, 2 down, 60.000 s\n",
		 pid, pid, pid, EVFDD_CONFIG_NAME_MAX, longc, longc, longc);
	expect(capture_end(&c, false), want);
	capture_free(&c);

	/* below LOG_INFO the access log is silent, like every info message */
	log_init(LOG_NOTICE, false);
	TU_CHECK(evfdd_accesslog_start(16) == 0, "start");
	capture_start(&c, false);
	fill(&e, "web", "127.0.0.5:41234", "10.0.0.1:80", 512, 2048, 1234567, "closed");
	evfdd_accesslog_submit(&e);
	evfdd_accesslog_stop();
	expect(capture_end(&c, false), "");
	capture_free(&c);
	printf("ok exact lines\n");
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* In a child with a private /run (see test-log.c): one datagram per entry, with the fields. */
static void journal_child(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct evfdd_access_entry e;
	struct pollfd pfd;
	char dgram[4096];
	ssize_t n;
	int fd;

	TU_CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "mount --make-rprivate /: %s", strerror(errno));
	TU_CHECK(mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0, "mount tmpfs /run: %s", strerror(errno));
	TU_CHECK(mkdir("/run/systemd", 0755) == 0 && mkdir("/run/systemd/journal", 0755) == 0, "mkdir: %s",
	         strerror(errno));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	TU_CHECK(fd >= 0, "socket: %s", strerror(errno));
	memcpy(sa.sun_path, JOURNAL_SOCKET, sizeof(JOURNAL_SOCKET));
	TU_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s: %s", JOURNAL_SOCKET, strerror(errno));
	log_init(LOG_INFO, true);
	TU_CHECK(evfdd_accesslog_start(8) == 0, "start");
	fill(&e, "web", "[2001:db8::1]:443", "10.0.0.1:80", 512, 2048, 1234567, "closed");
	evfdd_accesslog_submit(&e);
	fill(&e, "web", "127.0.0.5:41234", "", 0, 0, 5, "source_limit");
	evfdd_accesslog_submit(&e);
	evfdd_accesslog_stop();

	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	TU_CHECK(poll(&pfd, 1, 5000) == 1, "no datagram on the journal's socket");
	n = recv(fd, dgram, sizeof(dgram) - 1, MSG_DONTWAIT);
	TU_CHECK(n > 0, "recv: %s", strerror(errno));
	dgram[n] = '\0';
	TU_CHECK(starts_with(dgram, "MESSAGE=[web] [2001:db8::1]:443 -> 10.0.0.1:80 closed, 512 up, 2048 down, 1.234 s\n"),
	         "MESSAGE: %s", dgram);
	TU_CHECK(strstr(dgram, "\nPRIORITY=6\n") && strstr(dgram, "\nSYSLOG_IDENTIFIER=evfdd\n") &&
	         strstr(dgram, "\nSERVICE=web\n") && strstr(dgram, "\nCLIENT=[2001:db8::1]:443\n") &&
	         strstr(dgram, "\nBACKEND=10.0.0.1:80\n") && strstr(dgram, "\nBYTES_UP=512\n") &&
	         strstr(dgram, "\nBYTES_DOWN=2048\n") && strstr(dgram, "\nDURATION_USEC=1234567\n") &&
	         strstr(dgram, "\nEND=closed\n"), "fields: %s", dgram);
	n = recv(fd, dgram, sizeof(dgram) - 1, MSG_DONTWAIT);
	TU_CHECK(n > 0, "second datagram: %s", strerror(errno));
	dgram[n] = '\0';
	TU_CHECK(starts_with(dgram, "MESSAGE=[web] 127.0.0.5:41234 -> (no backend) source_limit, 0 up, 0 down, 0.000 s\n"),
	         "MESSAGE: %s", dgram);
	TU_CHECK(strstr(dgram, "\nCLIENT=127.0.0.5:41234\n") && strstr(dgram, "\nBACKEND=\n") &&
	         strstr(dgram, "\nDURATION_USEC=5\n") && strstr(dgram, "\nEND=source_limit\n"), "fields: %s", dgram);
	TU_CHECK(recv(fd, dgram, sizeof(dgram), MSG_DONTWAIT) < 0 && errno == EAGAIN, "a third datagram");
	close(fd);
	_exit(0);
}

static void test_journal(void)
{
	int status;
	pid_t pid;

	if (geteuid() != 0) {
		printf("ok journal fields # SKIP not root (needs a mount namespace)\n");
		return;
	}
	fflush(stdout);
	pid = fork();
	TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (unshare(CLONE_NEWNS) < 0) {
			printf("ok journal fields # SKIP unshare(CLONE_NEWNS): %s\n", strerror(errno));
			_exit(0);
		}
		journal_child();
	}
	TU_CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	         "the journal check failed (status %d)", status);
	printf("ok journal fields\n");
}

#define THREADS 4

static unsigned long per_thread;

static void *producer(void *arg)
{
	int t = (int)(intptr_t)arg;
	struct evfdd_access_entry e;
	char client[64];

	for (unsigned long i = 0; i < per_thread; i++) {
		snprintf(client, sizeof(client), "127.0.0.%d:%lu", t, i);
		fill(&e, t % 2 ? "odd" : "even", client, "b", i, 2 * i, i * 1000, "closed");
		evfdd_accesslog_submit(&e);
	}
	return NULL;
}

static void test_threads(void)
{
	unsigned long seen[THREADS] = { 0 };
	uint64_t dropped = evfdd_accesslog_dropped();
	pthread_t th[THREADS];
	struct capture c;
	const char *p;

	per_thread = scaled(5000, 500);
	log_init(LOG_INFO, true);
	/* room for every entry: nothing may be dropped, whatever the scheduling */
	TU_CHECK(evfdd_accesslog_start((unsigned)(THREADS * per_thread)) == 0, "start");
	capture_start(&c, false);
	for (long i = 0; i < THREADS; i++)
		TU_CHECK(pthread_create(&th[i], NULL, producer, (void *)(intptr_t)i) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	evfdd_accesslog_stop();
	p = capture_end(&c, false);
	for (unsigned long n = 0; n < THREADS * per_thread; n++) {
		unsigned long i, up, down, sec, ms;
		char svc[8];
		int t, used = 0;

		TU_CHECK(sscanf(p, "<6>[%7[a-z]] 127.0.0.%d:%lu -> b closed, %lu up, %lu down, %lu.%lu s\n%n", svc, &t, &i,
			        &up, &down, &sec, &ms, &used) == 7 && used > 0, "line %lu: %.100s", n, p);
		TU_CHECK(t >= 0 && t < THREADS && i == seen[t], "thread %d: entry %lu after %lu", t, i, seen[t]);
		TU_CHECK(strcmp(svc, t % 2 ? "odd" : "even") == 0 && up == i && down == 2 * i &&
		         sec * 1000 + ms == i, "fields of %d/%lu", t, i);
		seen[t]++;
		p += used;
	}
	TU_CHECK(*p == '\0', "trailing output: %.100s", p);
	TU_CHECK(evfdd_accesslog_dropped() == dropped, "dropped");
	capture_free(&c);
	printf("ok %d threads, %lu entries each, in order\n", THREADS, per_thread);
}

static unsigned long overload_n;

static void *overload_producer(void *arg)
{
	struct evfdd_access_entry e;

	(void)arg;
	fill(&e, "web", "127.0.0.1:9", "b", 1, 2, 3, "closed");
	for (unsigned long i = 0; i < overload_n; i++) {
		e.bytes_up = i;
		evfdd_accesslog_submit(&e);
	}
	return NULL;
}

static void test_overload(void)
{
	const unsigned cap = 64;
	uint64_t before = evfdd_accesslog_dropped(), drops, warned = 0, t0, elapsed;
	unsigned long written = 0;
	pthread_t th[THREADS];
	struct capture c;
	const char *p;

	overload_n = 100000 / THREADS;
	log_init(LOG_INFO, true);
	capture_start(&c, true);		/* stderr: a full pipe, not read */
	TU_CHECK(evfdd_accesslog_start(cap) == 0, "start");
	t0 = now_ns();
	for (long i = 0; i < THREADS; i++)
		TU_CHECK(pthread_create(&th[i], NULL, overload_producer, (void *)(intptr_t)i) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	elapsed = now_ns() - t0;
	/* loose: a blocked writer would hold them forever; a sanitizer build is slow, not stuck */
	TU_CHECK(elapsed < 30ull * 1000000000u, "%d x %lu submits took %" PRIu64 " ms", THREADS, overload_n,
	         elapsed / 1000000);
	drops = evfdd_accesslog_dropped() - before;
	/* the writer holds one batch, the queue holds cap: everything else was dropped */
	TU_CHECK(drops >= THREADS * overload_n - 2 * cap && drops < THREADS * overload_n, "%" PRIu64 " dropped", drops);

	capture_read(&c);			/* unblock the writer; stop writes what is queued */
	evfdd_accesslog_stop();
	p = capture_end(&c, true);
	while (*p) {
		unsigned long i;
		uint64_t n;
		int used = 0;

		if (sscanf(p, "<6>[web] 127.0.0.1:9 -> b closed, %lu up, 2 down, 0.000 s\n%n", &i, &used) == 1 &&
		    used) {
			written++;
		} else if (sscanf(p, "<4>access log: %" SCNu64 " entries dropped: the journal could not keep up\n%n",
				  &n, &used) == 1 && used) {
			warned += n;
		} else {
			TU_CHECK(0, "unexpected: %.120s", p);
		}
		p += used;
	}
	TU_CHECK(written + drops == THREADS * overload_n, "%lu written + %" PRIu64 " dropped", written, drops);
	TU_CHECK(warned == drops, "warnings say %" PRIu64 " dropped, %" PRIu64 " were", warned, drops);
	capture_free(&c);
	printf("ok overload: %d x %lu submits in %" PRIu64 " ms, %lu written, %" PRIu64 " dropped\n", THREADS,
	       overload_n, elapsed / 1000000, written, drops);
}

int main(void)
{
	saved_stderr = dup(STDERR_FILENO);
	TU_CHECK(saved_stderr >= 0, "dup");
	tu_fail_fd = saved_stderr;	/* a failure is said where the runner reads it, not into the capture */
	unsetenv("JOURNAL_STREAM");

	test_lifecycle();
	test_journal();
	test_exact_line();
	test_threads();
	test_overload();
	printf("test-accesslog: all passed\n");
	return 0;
}
