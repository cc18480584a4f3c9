/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* No quiesce: a ring holding 1,000 recvs pending on idle sockets and a multishot accept moves between loops
 * while every one of them stays pending; no callback fires because of the move. The old loop's thread ends
 * up with nothing in flight (the new owner re-armed the requests), and afterwards every request completes
 * normally on the new owner. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "testutil.h"

#define NPAIRS 1000

struct pair {
	int fds[2];
	char buf[16];
	atomic_uint_fast64_t calls;
	int res;
	struct evfd_loop *on;
};

static struct pair pairs[NPAIRS];
static struct evfd_ring *ring;
static int listen_fd;
static atomic_uint_fast64_t accepted, accept_final, moved, any_callback;
static struct evfd_loop *accept_on;

static void recv_cb(struct evfd_ring *r, const struct io_uring_cqe *cqe, void *arg)
{
	struct pair *p = arg;

	p->res = cqe->res;
	p->on = evfd_loop_current();
	atomic_fetch_add(&p->calls, 1);
	atomic_fetch_add(&any_callback, 1);
}

static void accept_cb(struct evfd_ring *r, const struct io_uring_cqe *cqe, void *arg)
{
	atomic_fetch_add(&any_callback, 1);
	TU_CHECK(cqe->res >= 0 || !(cqe->flags & IORING_CQE_F_MORE), "accept error %d with F_MORE", cqe->res);
	if (cqe->res >= 0) {
		close(cqe->res);
		accept_on = evfd_loop_current();
		atomic_fetch_add(&accepted, 1);
	}
	if (!(cqe->flags & IORING_CQE_F_MORE)) {
		TU_CHECK(cqe->res == -ECANCELED, "multishot accept ended with %d", cqe->res);
		atomic_fetch_add(&accept_final, 1);
	}
}

static struct evfd_op *accept_op;

static void arm_all(struct evfd_loop *loop, void *arg)
{
	struct io_uring_sqe sqe;
	int i, err;

	for (i = 0; i < NPAIRS; i++) {
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_recv(&sqe, pairs[i].fds[0], pairs[i].buf, sizeof(pairs[i].buf), 0);
		err = evfd_ring_submit(ring, &sqe, recv_cb, &pairs[i], 0, NULL);
		TU_CHECK(err == 0, "submit recv %d: %s", i, strerror(-err));
	}
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_multishot_accept(&sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
	err = evfd_ring_submit(ring, &sqe, accept_cb, NULL, 0, &accept_op);
	TU_CHECK(err == 0, "submit accept: %s", strerror(-err));
}

static void cancel_accept(struct evfd_loop *loop, void *arg)
{
	TU_CHECK(evfd_op_cancel(ring, accept_op) == 0, "cancel accept");
}

static void free_ring(struct evfd_loop *loop, void *arg)
{
	int err = evfd_ring_free(ring);

	TU_CHECK(err == 0, "free ring: %s", strerror(-err));
}

static uint64_t move_done_ns;

static void moved_cb(struct evfd_ring *r, int err, void *arg)
{
	TU_CHECK(err == 0, "move: %s", strerror(-err));
	move_done_ns = tu_now_ns();
	atomic_fetch_add(&moved, 1);
}

static void connect_clients(uint16_t port, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		close(tu_connect_tcp(port));
}

int main(void)
{
	struct evfd_loop *a, *b;
	struct evfd_ring_params params = { .entries = 256, .cq_entries = 1024 };
	struct evfd_ring_stats rs;
	struct evfd_loop_stats ls;
	uint16_t port;
	uint64_t t0;
	unsigned i, rounds = (unsigned)tu_scaled(3, 1), round;
	int err;

	tu_require_io_uring();
	TU_CHECK(tu_raise_nofile(2 * NPAIRS + 256) >= 2 * NPAIRS + 64, "RLIMIT_NOFILE too low for %d pairs",
		 NPAIRS);
	TU_CHECK(evfd_loop_spawn(&a, "nq-a") == 0 && evfd_loop_spawn(&b, "nq-b") == 0, "spawn");
	for (i = 0; i < NPAIRS; i++)
		TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pairs[i].fds) == 0, "socketpair");
	listen_fd = tu_listen_tcp(&port);
	/* The CQ (1,024) is smaller than the 2,000 CQEs a move's re-arm produces: overflow is exercised. */
	err = tu_ring_new(&ring, a, &params);
	TU_CHECK(err == 0, "ring: %s", strerror(-err));
	tu_run_on(a, arm_all, NULL);
	connect_clients(port, 5);
	TU_CHECK(tu_wait_u64(&accepted, 5, 5000), "accepts before the move");
	TU_CHECK(atomic_load(&any_callback) == 5, "callbacks before the move: %lu",
		 (unsigned long)atomic_load(&any_callback));

	/* Move back and forth; each time every request must stay pending and leave the old thread. */
	for (round = 0; round < rounds; round++) {
		struct evfd_loop *from = round % 2 ? b : a, *to = round % 2 ? a : b;

		t0 = tu_now_ns();
		TU_CHECK(evfd_ring_move(ring, to, moved_cb, NULL) == 0, "move");
		TU_CHECK(tu_wait_u64(&moved, round + 1, 10000), "move %u never finished", round);
		printf("move %u with %d pending requests: %.1f us to adoption\n", round, NPAIRS + 1,
		       (double)(move_done_ns - t0) / 1000.0);
		/* The old thread must end up with nothing in flight: the new owner re-armed everything. */
		for (i = 0; i < 5000; i++) {
			evfd_loop_stats(from, &ls);
			if (ls.inflight == 0)
				break;
			usleep(1000);
		}
		TU_CHECK(ls.inflight == 0, "old owner still has %lu requests in flight", (unsigned long)ls.inflight);
		evfd_ring_stats(ring, &rs);
		TU_CHECK(rs.inflight == NPAIRS + 1, "ring in flight %lu after the move", (unsigned long)rs.inflight);
		TU_CHECK(rs.rearmed == (uint64_t)(round + 1) * (NPAIRS + 1), "re-armed %lu after move %u",
			 (unsigned long)rs.rearmed, round);
		TU_CHECK(atomic_load(&any_callback) == 5, "a move fired %lu callbacks",
			 (unsigned long)atomic_load(&any_callback) - 5);
	}

	/* Now the traffic arrives: everything completes normally on the new owner. */
	{
		struct evfd_loop *owner = rounds % 2 ? b : a;

		for (i = 0; i < NPAIRS; i++)
			TU_CHECK(write(pairs[i].fds[1], "ping", 4) == 4, "write");
		connect_clients(port, 5);
		for (i = 0; i < NPAIRS; i++) {
			TU_CHECK(tu_wait_u64(&pairs[i].calls, 1, 10000), "recv %u never completed", i);
			TU_CHECK(pairs[i].res == 4 && memcmp(pairs[i].buf, "ping", 4) == 0, "recv %u res %d", i,
				 pairs[i].res);
			TU_CHECK(pairs[i].on == owner, "recv %u completed off the owner", i);
		}
		TU_CHECK(tu_wait_u64(&accepted, 10, 10000), "accepts after the move");
		TU_CHECK(accept_on == owner, "accept completed off the owner");
		TU_CHECK(atomic_load(&accept_final) == 0, "multishot accept ended by a move");
		tu_run_on(owner, cancel_accept, NULL);
		TU_CHECK(tu_wait_u64(&accept_final, 1, 5000), "accept cancel");
		for (i = 0; i < NPAIRS; i++)
			TU_CHECK(atomic_load(&pairs[i].calls) == 1, "recv %u completed %lu times", i,
				 (unsigned long)atomic_load(&pairs[i].calls));
		tu_run_on(owner, free_ring, NULL);
	}
	printf("ok %d pending requests moved %u times without quiescing; all completed once on the owner\n",
	       NPAIRS + 1, rounds);
	for (i = 0; i < NPAIRS; i++) {
		close(pairs[i].fds[0]);
		close(pairs[i].fds[1]);
	}
	close(listen_fd);
	TU_CHECK(evfd_loop_free(a) == 0 && evfd_loop_free(b) == 0, "free loops");
	return 0;
}
