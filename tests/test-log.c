/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdd's logging: both line formats, level filtering, escaping, truncation, errno handling, JOURNAL_STREAM
 * detection, fatal's exit, whole lines from many threads, and the rate limiter's suppressed count. */
#include <errno.h>
#include <sched.h>
#include <poll.h>
#include <pthread.h>
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
#include "../daemon/log.h"
#include "testutil.h"

static int saved_stderr = STDERR_FILENO;
static char capture_path[] = "/tmp/evfdd-test-log.XXXXXX";
static int capture_fd = -1;

/* Point fd 2 at an empty capture file. */
static void capture_start(void)
{
	TU_CHECK(ftruncate(capture_fd, 0) == 0, "ftruncate");
	TU_CHECK(lseek(capture_fd, 0, SEEK_SET) == 0, "lseek");
	TU_CHECK(dup2(capture_fd, STDERR_FILENO) == STDERR_FILENO, "dup2");
}

/* Restore fd 2 and return what was written (static buffer). */
static const char *capture_end(void)
{
	static char buf[1 << 20];
	ssize_t n;

	TU_CHECK(dup2(saved_stderr, STDERR_FILENO) == STDERR_FILENO, "dup2");
	n = pread(capture_fd, buf, sizeof(buf) - 1, 0);
	TU_CHECK(n >= 0, "pread");
	buf[n] = '\0';
	return buf;
}

static void expect(const char *got, const char *want)
{
	TU_CHECK(strcmp(got, want) == 0, "got\n%swant\n%s", got, want);
}

static void test_plain(void)
{
	char want[512];
	const char *got;
	long pid = (long)getpid();

	log_init(LOG_INFO, false);
	capture_start();
	log_debug("hidden %d", 1);
	log_info("hello %d", 2);
	log_notice("note");
	errno = ENOENT;
	log_warn("open %s", "x.conf");
	TU_CHECK(errno == ENOENT, "errno clobbered: %d", errno);
	log_warnx("plain warning");
	errno = EACCES;
	log_err("bind");
	log_errx("no errno");
	got = capture_end();
	snprintf(want, sizeof(want),
		 "evfdd[%ld]: info: hello 2\n"
		 "evfdd[%ld]: notice: note\n"
		 "evfdd[%ld]: warning: open x.conf: No such file or directory\n"
		 "evfdd[%ld]: warning: plain warning\n"
		 "evfdd[%ld]: err: bind: Permission denied\n"
		 "evfdd[%ld]: err: no errno\n",
		 pid, pid, pid, pid, pid, pid);
	expect(got, want);
}

static void test_journal(void)
{
	log_init(LOG_DEBUG, true);
	capture_start();
	log_debug("d");
	log_info("i");
	log_notice("n");
	errno = ECONNREFUSED;
	log_warn("backend");
	log_warnx("w");
	log_errx("e");
	expect(capture_end(), "<7>d\n<6>i\n<5>n\n<4>backend: Connection refused\n<4>w\n<3>e\n");

	/* filtering and clamping: err and worse always pass */
	log_setlevel(LOG_WARNING);
	TU_CHECK(log_getlevel() == LOG_WARNING, "level");
	capture_start();
	log_notice("no");
	log_warnx("yes");
	log_setlevel(LOG_EMERG);
	TU_CHECK(log_getlevel() == LOG_ERR, "clamp low: %d", log_getlevel());
	log_warnx("no");
	log_errx("yes");
	log_setlevel(99);
	TU_CHECK(log_getlevel() == LOG_DEBUG, "clamp high");
	expect(capture_end(), "<4>yes\n<3>yes\n");
}

#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* In a child with a mount namespace of its own and a private /run, so that the stand-in for journald's socket
 * can disturb neither a real journald nor the stand-in of test-systemd.sh running beside it: one datagram per
 * log_fields under journald, with the fields; and the plain "<N>" line when the socket is not there. */
static void journal_child(void)
{
	static const char *const fields[] = { "SERVICE=web", "BACKEND=/run/a b", "STATE=down", NULL };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
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
	log_init(LOG_DEBUG, true);
	capture_start();
	log_fields(LOG_NOTICE, fields, "[web] backend %s is up\x01", "/run/a b");
	expect(capture_end(), "");   /* nothing on stderr: it went to the journal */
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	TU_CHECK(poll(&pfd, 1, 5000) == 1, "no datagram on the journal's socket");
	n = recv(fd, dgram, sizeof(dgram) - 1, 0);
	TU_CHECK(n > 0, "recv: %s", strerror(errno));
	dgram[n] = '\0';
	TU_CHECK(strstr(dgram, "MESSAGE=[web] backend /run/a b is up\\x01\n"), "MESSAGE, escaped: %s", dgram);
	TU_CHECK(strstr(dgram, "\nPRIORITY=5\n") && strstr(dgram, "\nSYSLOG_IDENTIFIER=evfdd\n") &&
	         strstr(dgram, "\nSERVICE=web\n") && strstr(dgram, "\nBACKEND=/run/a b\n") && strstr(dgram, "\nSTATE=down"),
	         "fields: %s", dgram);
	close(fd);
	unlink(JOURNAL_SOCKET);
	/* sd_journal_sendv drops a message when the socket is missing; log_fields writes the line instead */
	capture_start();
	log_fields(LOG_WARNING, fields, "[web] backend %s is down", "x");
	expect(capture_end(), "<4>[web] backend x is down\n");
	_exit(0);
}

static void test_fields(void)
{
	static const char *const fields[] = { "SERVICE=web", "BACKEND=/run/a b", "STATE=down", NULL };
	char want[256];
	int status;
	pid_t pid;

	log_init(LOG_DEBUG, false);
	capture_start();
	log_fields(LOG_WARNING, fields, "[%s] backend %s is down", "web", "/run/a b");
	log_fields(LOG_DEBUG + 1, fields, "filtered");
	snprintf(want, sizeof(want), "evfdd[%d]: warning: [web] backend /run/a b is down\n", (int)getpid());
	expect(capture_end(), want);

	if (geteuid() != 0) {
		printf("test-log: the journal datagram is not checked: not root (needs a mount namespace)\n");
		return;
	}
	pid = fork();
	TU_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (unshare(CLONE_NEWNS) < 0) {
			printf("test-log: the journal datagram is not checked: unshare(CLONE_NEWNS): %s\n",
			       strerror(errno));
			_exit(0);
		}
		journal_child();
	}
	TU_CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	         "the journal check failed (status %d)", status);
}

static void test_escaping_and_truncation(void)
{
	char big[5000];
	const char *got;
	size_t len;

	log_init(LOG_INFO, true);
	capture_start();
	log_info("peer said \"%s\"", "a\nb\r\x1b[31m\x7f\tc");
	expect(capture_end(), "<6>peer said \"a\\x0ab\\x0d\\x1b[31m\\x7f\tc\"\n");

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	capture_start();
	log_info("%s", big);
	log_info("after");
	got = capture_end();
	len = strcspn(got, "\n") + 1;
	TU_CHECK(len == LOG_LINE_MAX, "line of %zu bytes", len);
	TU_CHECK(memcmp(got + len - 4, "...\n", 4) == 0, "no truncation mark");
	expect(got + len, "<6>after\n");

	/* a cut must never split an escape sequence */
	memset(big, '\n', sizeof(big) - 1);
	capture_start();
	log_info("%s", big);
	got = capture_end();
	len = strlen(got);
	TU_CHECK(len <= LOG_LINE_MAX && memcmp(got + len - 4, "...\n", 4) == 0, "%zu", len);
	TU_CHECK((len - 3 - 4) % 4 == 0 && got[len - 8] == '\\', "split escape");
}

static void test_level_names(void)
{
	static const char *const names[] = { "err", "warning", "notice", "info", "debug" };

	for (int i = 0; i < 5; i++) {
		TU_CHECK(log_level_from_name(names[i]) == LOG_ERR + i, "%s", names[i]);
		TU_CHECK(strcmp(log_level_name(LOG_ERR + i), names[i]) == 0, "%d", i);
	}
	TU_CHECK(log_level_from_name("crit") == -1 && log_level_from_name("INFO") == -1, "only the five");
	TU_CHECK(log_level_from_name("") == -1 && strcmp(log_level_name(8), "?") == 0, "bad");
	TU_CHECK(strcmp(log_level_name(LOG_CRIT), "crit") == 0, "crit");
}

static void test_journal_stream(void)
{
	struct stat st;
	char env[128];

	TU_CHECK(fstat(capture_fd, &st) == 0, "fstat");
	capture_start();	/* fd 2 is now the capture file */
	snprintf(env, sizeof(env), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	bool yes = log_stderr_is_journal();
	snprintf(env, sizeof(env), "%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino + 1);
	setenv("JOURNAL_STREAM", env, 1);
	bool other_inode = log_stderr_is_journal();
	snprintf(env, sizeof(env), "%ju:%jux", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	bool junk = log_stderr_is_journal();
	snprintf(env, sizeof(env), "%ju: %ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	junk |= log_stderr_is_journal();
	snprintf(env, sizeof(env), "+%ju:%ju", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	junk |= log_stderr_is_journal();
	setenv("JOURNAL_STREAM", "", 1);
	bool empty = log_stderr_is_journal();
	unsetenv("JOURNAL_STREAM");
	bool unset = log_stderr_is_journal();
	capture_end();
	TU_CHECK(yes && !other_inode && !junk && !empty && !unset, "%d %d %d %d %d", yes, other_inode, junk, empty,
	         unset);
}

static void test_fatal(void)
{
	for (int x = 0; x < 2; x++) {
		char want[256];
		int status;
		pid_t pid;

		capture_start();
		pid = fork();
		TU_CHECK(pid >= 0, "fork");
		if (pid == 0) {
			log_init(LOG_ERR, false);
			errno = EPERM;
			if (x == 0)
				fatal("cannot %s", "start");
			fatalx("bad %s", "config");
		}
		TU_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
		TU_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d", status);
		snprintf(want, sizeof(want), x == 0 ? "evfdd[%ld]: crit: cannot start: Operation not permitted\n"
						    : "evfdd[%ld]: crit: bad config\n", (long)pid);
		expect(capture_end(), want);
	}
}

#define THREADS 4
#define LINES 2000

static void *logger(void *arg)
{
	for (int i = 0; i < LINES; i++)
		log_info("thread %ld line %d %s", (long)(intptr_t)arg, i,
			 "padding padding padding padding padding padding padding padding");
	return NULL;
}

static void test_threads(void)
{
	pthread_t t[THREADS];
	int seen[THREADS] = { 0 };
	const char *p;

	log_init(LOG_INFO, true);
	capture_start();
	for (long i = 0; i < THREADS; i++)
		TU_CHECK(pthread_create(&t[i], NULL, logger, (void *)(intptr_t)i) == 0, "pthread_create");
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	p = capture_end();
	/* every line whole, and each thread's lines in order */
	for (int n = 0; n < THREADS * LINES; n++) {
		long th;
		int line, used = 0;

		TU_CHECK(sscanf(p, "<6>thread %ld line %d padding padding padding padding padding padding padding "
			        "padding\n%n", &th, &line, &used) == 2 && used > 0, "broken line %d: %.80s", n, p);
		TU_CHECK(th >= 0 && th < THREADS && line == seen[th], "thread %ld line %d", th, line);
		seen[th]++;
		p += used;
	}
	TU_CHECK(*p == '\0', "trailing output");
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void test_ratelimit(void)
{
	static struct log_ratelimit rl = LOG_RATELIMIT_INIT(300, 3);
	struct log_ratelimit off, dyn;
	unsigned long missed = 99;

	for (int i = 0; i < 3; i++) {
		TU_CHECK(log_ratelimit(&rl, &missed), "burst %d refused", i);
		TU_CHECK(missed == 0, "missed %lu", missed);
	}
	for (int i = 0; i < 5; i++)
		TU_CHECK(!log_ratelimit(&rl, &missed), "over the burst let through");
	sleep_ms(350);
	TU_CHECK(log_ratelimit(&rl, &missed) && missed == 5, "missed %lu", missed);
	TU_CHECK(log_ratelimit(&rl, &missed) && missed == 0, "reset %lu", missed);
	TU_CHECK(log_ratelimit(&rl, NULL), "NULL suppressed");
	TU_CHECK(!log_ratelimit(&rl, NULL), "4th in interval");

	log_ratelimit_init(&off, 0, 0);		/* interval 0: no limit */
	for (int i = 0; i < 100; i++)
		TU_CHECK(log_ratelimit(&off, &missed) && missed == 0, "unlimited");
	log_ratelimit_destroy(&off);

	log_ratelimit_init(&dyn, 60000, 1);
	TU_CHECK(log_ratelimit(&dyn, &missed) && missed == 0, "first");
	for (int i = 0; i < 10; i++)
		TU_CHECK(!log_ratelimit(&dyn, &missed), "limited");
	log_ratelimit_destroy(&dyn);
}

int main(void)
{
	saved_stderr = dup(STDERR_FILENO);
	capture_fd = mkstemp(capture_path);
	TU_CHECK(saved_stderr >= 0 && capture_fd >= 0, "setup: %s", strerror(errno));
	tu_fail_fd = saved_stderr;	/* a failure is said where the runner reads it, not into the capture */
	unsetenv("JOURNAL_STREAM");

	test_plain();
	test_journal();
	test_fields();
	test_escaping_and_truncation();
	test_level_names();
	test_journal_stream();
	test_fatal();
	test_threads();
	test_ratelimit();

	unlink(capture_path);
	close(capture_fd);
	printf("test-log: all passed\n");
	return 0;
}
