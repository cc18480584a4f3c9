/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "testutil.h"

int tu_fail_fd = STDERR_FILENO;

void tu_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
	va_list ap;

	fflush(NULL);
	dprintf(tu_fail_fd, "FAIL %s:%d: %s: ", file, line, cond);
	va_start(ap, fmt);
	vdprintf(tu_fail_fd, fmt, ap);
	va_end(ap);
	dprintf(tu_fail_fd, "\n");
	_exit(1);
}

/* A deadlock must fail the test, not hang CI: every test process gets a deadline (EVFD_TEST_TIMEOUT
 * seconds, default 300, generous for sanitizer builds on two cores). */
static void watchdog_fired(int sig)
{
	static const char msg[] = "FAIL: test timed out (EVFD_TEST_TIMEOUT); a deadlock or a lost wakeup?\n";

	(void)sig;
	(void)write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

__attribute__((constructor)) static void watchdog_arm(void)
{
	const char *s = getenv("EVFD_TEST_TIMEOUT");
	unsigned secs = s ? (unsigned)strtoul(s, NULL, 10) : 300;

	signal(SIGALRM, watchdog_fired);
	alarm(secs);
}

void tu_require_io_uring(void)
{
	struct io_uring ring;
	int err = io_uring_queue_init(2, &ring, 0);

	if (err == 0) {
		io_uring_queue_exit(&ring);
		return;
	}
	if (err == -ENOSYS || err == -EPERM) {
		printf("SKIP: io_uring_setup: %s (no io_uring in this kernel, kernel.io_uring_disabled, or a "
		       "seccomp filter)\n", strerror(-err));
		exit(TU_SKIP);
	}
	tu_fail(__FILE__, __LINE__, "io_uring_queue_init", "%s", strerror(-err));
}

unsigned long tu_scaled(unsigned long n, unsigned long min)
{
	const char *s = getenv("EVFD_TEST_SCALE");
	unsigned long div = s ? strtoul(s, NULL, 10) : 1;

	if (div > 1)
		n /= div;
	return n < min ? min : n;
}

uint64_t tu_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool tu_wait_u64(atomic_uint_fast64_t *flag, uint64_t want, unsigned timeout_ms)
{
	uint64_t end = tu_now_ns() + (uint64_t)timeout_ms * 1000000u;

	while (atomic_load(flag) < want) {
		if (tu_now_ns() > end)
			return false;
		usleep(200);
	}
	return true;
}

struct run_on {
	evfd_loop_fn fn;
	void *arg;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

static void run_on_cb(struct evfd_loop *loop, void *arg)
{
	struct run_on *ro = arg;

	ro->fn(loop, ro->arg);
	pthread_mutex_lock(&ro->lock);
	ro->done = true;
	pthread_cond_signal(&ro->cond);
	pthread_mutex_unlock(&ro->lock);
}

void tu_run_on(struct evfd_loop *loop, evfd_loop_fn fn, void *arg)
{
	struct run_on ro = { .fn = fn, .arg = arg };
	int err;

	pthread_mutex_init(&ro.lock, NULL);
	pthread_cond_init(&ro.cond, NULL);
	err = evfd_loop_call(loop, run_on_cb, &ro);
	TU_CHECK(err == 0, "evfd_loop_call: %s", strerror(-err));
	pthread_mutex_lock(&ro.lock);
	while (!ro.done)
		pthread_cond_wait(&ro.cond, &ro.lock);
	pthread_mutex_unlock(&ro.lock);
	pthread_cond_destroy(&ro.cond);
	pthread_mutex_destroy(&ro.lock);
}

unsigned long tu_raise_nofile(unsigned long want)
{
	struct rlimit rl;

	TU_CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit: %s", strerror(errno));
	if (rl.rlim_cur < want) {
		rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
		TU_CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit: %s", strerror(errno));
	}
	return rl.rlim_cur;
}

int tu_listen_tcp(uint16_t *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0, "socket: %s", strerror(errno));
	TU_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %s", strerror(errno));
	TU_CHECK(listen(fd, 4096) == 0, "listen: %s", strerror(errno));
	TU_CHECK(getsockname(fd, (struct sockaddr *)&sa, &len) == 0, "getsockname: %s", strerror(errno));
	*port = ntohs(sa.sin_port);
	return fd;
}

int tu_connect_tcp(uint16_t port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0, "socket: %s", strerror(errno));
	TU_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s", strerror(errno));
	return fd;
}

int tu_ring_new(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p)
{
	const char *want = getenv("EVFD_TEST_RING_FLAGS");
	unsigned flags = 0;
	int err;

	if (want && *want) {
		TU_CHECK(!strcmp(want, "coop"), "EVFD_TEST_RING_FLAGS=%s: only \"coop\" is known", want);
		flags = EVFD_RING_COOP_TASKRUN;
	}
	err = evfd_ring_new_flags(out, owner, p, flags);
	/* Every kernel these tests run on (5.19 and later) has it: a ring without it would test nothing new. */
	TU_CHECK(err < 0 || evfd_ring_flags(*out) == flags, "asked for ring flags %#x, got %#x", flags,
		 evfd_ring_flags(*out));
	return err;
}
