/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Retirement: a loop that owns rings with pending requests is retired. Its rings move to the successor at
 * once; re-armable requests are re-armed there; a request that cannot be re-armed (EVFD_OP_PINNED) keeps the
 * retiring thread alive until it completes, because io_uring cancels a thread's requests when the thread
 * exits. Every request completes normally (never -ECANCELED), on the successor, and the retired loop's thread
 * really ends. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "testutil.h"

#define NRINGS 2
#define NRECV 100
#define TIMEOUT_MS 300

struct req {
	atomic_uint_fast64_t calls;
	int res;
	struct evfd_loop *on;
	uint64_t at_ns;
	int fds[2];
	char buf[8];
};

static struct evfd_ring *rings[NRINGS];
static struct req recvs[NRINGS][NRECV], timeouts[NRINGS], pinned;
static uint64_t submit_ns;
static atomic_uint_fast64_t retired;
static uint64_t retired_ns;

static void req_cb(struct evfd_ring *r, const struct io_uring_cqe *cqe, void *arg)
{
	struct req *q = arg;

	q->res = cqe->res;
	q->on = evfd_loop_current();
	q->at_ns = tu_now_ns();
	atomic_fetch_add(&q->calls, 1);
}

static void arm(struct evfd_loop *loop, void *arg)
{
	static struct __kernel_timespec ts = { .tv_nsec = TIMEOUT_MS * 1000000L };
	struct io_uring_sqe sqe;
	int i, j, err;

	submit_ns = tu_now_ns();
	for (i = 0; i < NRINGS; i++) {
		for (j = 0; j < NRECV; j++) {
			memset(&sqe, 0, sizeof(sqe));
			io_uring_prep_recv(&sqe, recvs[i][j].fds[0], recvs[i][j].buf, sizeof(recvs[i][j].buf), 0);
			err = evfd_ring_submit(rings[i], &sqe, req_cb, &recvs[i][j], 0, NULL);
			TU_CHECK(err == 0, "recv: %s", strerror(-err));
		}
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_timeout(&sqe, &ts, 0, 0);
		err = evfd_ring_submit(rings[i], &sqe, req_cb, &timeouts[i], 0, NULL);
		TU_CHECK(err == 0, "timeout: %s", strerror(-err));
	}
	/* This one stays with the submitting thread: retirement must wait for it. */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_recv(&sqe, pinned.fds[0], pinned.buf, sizeof(pinned.buf), 0);
	err = evfd_ring_submit(rings[0], &sqe, req_cb, &pinned, EVFD_OP_PINNED, NULL);
	TU_CHECK(err == 0, "pinned recv: %s", strerror(-err));
}

static void retired_cb(struct evfd_loop *loop, void *arg)
{
	retired_ns = tu_now_ns();
	atomic_fetch_add(&retired, 1);
}

static void free_rings(struct evfd_loop *loop, void *arg)
{
	int i, err;

	for (i = 0; i < NRINGS; i++) {
		err = evfd_ring_free(rings[i]);
		TU_CHECK(err == 0, "free ring %d: %s", i, strerror(-err));
	}
}

static void check_done(struct req *q, int want_res, struct evfd_loop *owner, const char *what)
{
	TU_CHECK(tu_wait_u64(&q->calls, 1, 10000), "%s never completed", what);
	TU_CHECK(atomic_load(&q->calls) == 1, "%s completed %lu times", what, (unsigned long)atomic_load(&q->calls));
	TU_CHECK(q->res == want_res, "%s: res %d, want %d", what, q->res, want_res);
	TU_CHECK(q->on == owner, "%s completed off the successor", what);
}

int main(void)
{
	struct evfd_loop *a, *b;
	struct evfd_loop_stats ls;
	int i, j, err;
	uint64_t sent_pinned_ns;

	tu_require_io_uring();
	tu_raise_nofile(2 * NRINGS * NRECV + 128);
	TU_CHECK(evfd_loop_spawn(&a, "retire-a") == 0 && evfd_loop_spawn(&b, "retire-b") == 0, "spawn");
	for (i = 0; i < NRINGS; i++) {
		err = tu_ring_new(&rings[i], a, NULL);
		TU_CHECK(err == 0, "ring: %s", strerror(-err));
		for (j = 0; j < NRECV; j++)
			TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, recvs[i][j].fds) == 0, "sp");
	}
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pinned.fds) == 0, "socketpair");
	tu_run_on(a, arm, NULL);
	usleep(10000);

	TU_CHECK(evfd_loop_retire(a, b, retired_cb, NULL) == 0, "retire");
	TU_CHECK(evfd_loop_retire(a, b, retired_cb, NULL) == -EALREADY, "retire twice");
	/* The rings leave at once; the pinned recv keeps the old thread (and its retirement) pending. */
	for (i = 0; i < 5000; i++) {
		evfd_loop_stats(b, &ls);
		if (ls.rings == NRINGS)
			break;
		usleep(1000);
	}
	TU_CHECK(ls.rings == NRINGS, "successor owns %u rings", ls.rings);
	usleep(50000);
	evfd_loop_stats(a, &ls);
	TU_CHECK(ls.rings == 0 && ls.inflight == 1, "retiring loop: %u rings, %lu in flight (want 0, 1)", ls.rings,
		 (unsigned long)ls.inflight);
	TU_CHECK(atomic_load(&retired) == 0, "retired while its pinned request was in flight");
	TU_CHECK(evfd_loop_free(a) == -EBUSY, "free before retirement finished");

	sent_pinned_ns = tu_now_ns();
	TU_CHECK(write(pinned.fds[1], "pin", 3) == 3, "write");
	TU_CHECK(tu_wait_u64(&retired, 1, 10000), "retirement never finished");
	TU_CHECK(retired_ns >= sent_pinned_ns, "retired before the pinned request completed");
	check_done(&pinned, 3, b, "pinned recv");
	TU_CHECK(evfd_loop_free(a) == 0, "free the retired loop (joins its thread)");

	/* The retired thread is gone; its requests still complete, normally, on the successor. */
	for (i = 0; i < NRINGS; i++) {
		for (j = 0; j < NRECV; j++)
			TU_CHECK(write(recvs[i][j].fds[1], "data", 4) == 4, "write");
		for (j = 0; j < NRECV; j++)
			check_done(&recvs[i][j], 4, b, "recv");
		check_done(&timeouts[i], -ETIME, b, "timeout");
		TU_CHECK(timeouts[i].at_ns - submit_ns >= TIMEOUT_MS * 1000000ull, "timeout fired early");
	}
	printf("ok retired a loop with %d pending requests on %d rings; all completed normally on the successor\n",
	       NRINGS * (NRECV + 1) + 1, NRINGS);
	tu_run_on(b, free_rings, NULL);
	TU_CHECK(evfd_loop_free(b) == 0, "free b");
	for (i = 0; i < NRINGS; i++)
		for (j = 0; j < NRECV; j++) {
			close(recvs[i][j].fds[0]);
			close(recvs[i][j].fds[1]);
		}
	close(pinned.fds[0]);
	close(pinned.fds[1]);
	return 0;
}
