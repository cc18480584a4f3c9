/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The API's contract, one promise at a time: callbacks on the owner thread, -errno for misuse, timeouts that
 * keep their deadline, caller cancellation, restricted rings, attached loops, retirement arguments, and how
 * an unavailable io_uring is reported. */
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "testutil.h"

struct result {
	atomic_uint_fast64_t calls;
	int res;
	unsigned flags;
	struct evfd_loop *thread_loop;   /* the loop of the thread the callback ran on */
	struct evfd_loop *owner;         /* the ring's owner as the callback saw it */
	uint64_t at_ns;
};

static void record_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct result *res = arg;

	res->res = cqe->res;
	res->flags = cqe->flags;
	res->thread_loop = evfd_loop_current();
	res->owner = evfd_ring_owner(ring);
	res->at_ns = tu_now_ns();
	atomic_fetch_add(&res->calls, 1);
}

struct ctx {
	struct evfd_ring *ring;
	struct result res[4];
	int fds[2];
	int err, err2;
	struct evfd_op *op;
	uint64_t t0;
	char buf[16];
};

static void do_nop(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_nop(&sqe);
	c->err = evfd_ring_submit(c->ring, &sqe, record_cb, &c->res[0], 0, NULL);
	c->err2 = evfd_ring_submit(c->ring, &sqe, NULL, NULL, 0, NULL);
}

static void do_free(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;

	c->err = evfd_ring_free(c->ring);
}

static struct evfd_ring *new_ring(struct evfd_loop *owner, const struct evfd_ring_params *p)
{
	struct evfd_ring *r;
	int err = evfd_ring_new(&r, owner, p);

	TU_CHECK(err == 0, "evfd_ring_new: %s", strerror(-err));
	return r;
}

static void free_ring(struct evfd_loop *owner, struct ctx *c)
{
	tu_run_on(owner, do_free, c);
	TU_CHECK(c->err == 0, "evfd_ring_free: %s", strerror(-c->err));
}

/* A ring created from another thread is usable on its owner; callbacks run on the owner's thread. */
static void test_nop_on_owner(struct evfd_loop *a)
{
	struct ctx c = { .ring = new_ring(a, NULL) };
	struct io_uring_sqe sqe = { 0 };
	struct evfd_ring_stats st;
	int err;

	tu_run_on(a, do_nop, &c);
	TU_CHECK(c.err == 0, "submit: %s", strerror(-c.err));
	TU_CHECK(c.err2 == -EINVAL, "submit without a callback: %d", c.err2);
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000), "NOP never completed");
	TU_CHECK(c.res[0].res == 0, "NOP res %d", c.res[0].res);
	TU_CHECK(c.res[0].thread_loop == a, "callback ran off the owner thread");
	TU_CHECK(c.res[0].owner == a, "owner slot does not name the owner");

	io_uring_prep_nop(&sqe);
	err = evfd_ring_submit(c.ring, &sqe, record_cb, &c.res[1], 0, NULL);
	TU_CHECK(err == -EXDEV, "submit off the owner thread: %d", err);
	TU_CHECK(evfd_ring_free(c.ring) == -EXDEV, "free off the owner thread");

	evfd_ring_stats(c.ring, &st);
	TU_CHECK(st.submitted == 1 && st.completed == 1 && st.inflight == 0, "stats %lu/%lu/%lu",
		 (unsigned long)st.submitted, (unsigned long)st.completed, (unsigned long)st.inflight);
	TU_CHECK(st.owner_id == evfd_loop_id(a), "owner_id %u", st.owner_id);
	free_ring(a, &c);
	TU_CHECK(atomic_load(&c.res[0].calls) == 1, "NOP completed %lu times",
		 (unsigned long)atomic_load(&c.res[0].calls));
}

static void do_recv(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_recv(&sqe, c->fds[0], c->buf, sizeof(c->buf), 0);
	c->err = evfd_ring_submit(c->ring, &sqe, record_cb, &c->res[0], 0, &c->op);
	c->err2 = evfd_ring_free(c->ring);   /* must refuse: a request is in flight */
}

static void do_cancel(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;

	c->err = evfd_op_cancel(c->ring, c->op);
}

/* A ring freed from its own callback is gone for its loop at once: the loop can be freed right after. */
static void free_self_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct result *res = arg;
	struct evfd_loop_stats ls;

	res->res = evfd_ring_free(ring);
	evfd_loop_stats(evfd_loop_current(), &ls);
	res->flags = ls.rings;
	atomic_fetch_add(&res->calls, 1);
}

static void do_nop_free_self(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_nop(&sqe);
	c->err = evfd_ring_submit(c->ring, &sqe, free_self_cb, &c->res[0], 0, NULL);
}

static void test_free_from_callback(void)
{
	struct evfd_loop *l;
	struct ctx c = { 0 };

	TU_CHECK(evfd_loop_spawn(&l, "free-self") == 0, "spawn");
	c.ring = new_ring(l, NULL);
	tu_run_on(l, do_nop_free_self, &c);
	TU_CHECK(c.err == 0, "submit: %s", strerror(-c.err));
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000), "NOP never completed");
	TU_CHECK(c.res[0].res == 0, "free from the ring's own callback: %d", c.res[0].res);
	TU_CHECK(c.res[0].flags == 0, "the loop still counted %u rings", c.res[0].flags);
	TU_CHECK(evfd_loop_free(l) == 0, "free the loop right after");
}

/* The caller's own cancellation reaches the callback as -ECANCELED, and a ring with work in flight cannot be
 * freed. */
static void test_cancel_and_busy(struct evfd_loop *a)
{
	struct ctx c = { .ring = new_ring(a, NULL) };

	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c.fds) == 0, "socketpair");
	tu_run_on(a, do_recv, &c);
	TU_CHECK(c.err == 0, "submit recv: %s", strerror(-c.err));
	TU_CHECK(c.err2 == -EBUSY, "free with a pending recv: %d", c.err2);
	usleep(20000);
	TU_CHECK(atomic_load(&c.res[0].calls) == 0, "recv on an idle socket completed");
	tu_run_on(a, do_cancel, &c);
	TU_CHECK(c.err == 0, "evfd_op_cancel: %s", strerror(-c.err));
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000), "cancelled recv never completed");
	TU_CHECK(c.res[0].res == -ECANCELED, "cancelled recv res %d", c.res[0].res);
	free_ring(a, &c);
	close(c.fds[0]);
	close(c.fds[1]);
}

static void do_timeout(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct __kernel_timespec ts = { .tv_nsec = 50 * 1000000 };
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_timeout(&sqe, &ts, 0, 0);
	c->t0 = tu_now_ns();
	/* @ts goes out of scope before the SQ is entered: the library must have copied it. */
	c->err = evfd_ring_submit(c->ring, &sqe, record_cb, &c->res[0], 0, NULL);
}

static void moved_cb(struct evfd_ring *ring, int err, void *arg)
{
	struct result *res = arg;

	res->res = err;
	res->thread_loop = evfd_loop_current();
	res->owner = evfd_ring_owner(ring);
	atomic_fetch_add(&res->calls, 1);
}

/* A relative timeout keeps its deadline across a move (it is re-armed as an absolute one). */
static void test_timeout_moves(struct evfd_loop *a, struct evfd_loop *b)
{
	struct ctx c = { .ring = new_ring(a, NULL) };
	struct evfd_ring_stats st;
	uint64_t took;
	int err;

	tu_run_on(a, do_timeout, &c);
	TU_CHECK(c.err == 0, "submit timeout: %s", strerror(-c.err));
	err = evfd_ring_move(c.ring, b, moved_cb, &c.res[1]);
	TU_CHECK(err == 0, "evfd_ring_move: %s", strerror(-err));
	TU_CHECK(tu_wait_u64(&c.res[1].calls, 1, 5000), "move never finished");
	TU_CHECK(c.res[1].res == 0 && c.res[1].thread_loop == b && c.res[1].owner == b,
		 "move done: err %d on loop %p owner %p (a %p b %p)", c.res[1].res, (void *)c.res[1].thread_loop, (void *)c.res[1].owner, (void *)a, (void *)b);
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000), "timeout never fired");
	took = c.res[0].at_ns - c.t0;
	TU_CHECK(c.res[0].res == -ETIME, "timeout res %d", c.res[0].res);
	TU_CHECK(c.res[0].thread_loop == b, "timeout completed off the new owner");
	TU_CHECK(took >= 50 * 1000000u, "timeout fired after %lu ns, before its deadline", (unsigned long)took);
	evfd_ring_stats(c.ring, &st);
	TU_CHECK(st.moves == 1 && st.owner_id == evfd_loop_id(b), "moves %lu owner %u",
		 (unsigned long)st.moves, st.owner_id);

	/* A move to the current owner is a no-op that still reports. */
	err = evfd_ring_move(c.ring, b, moved_cb, &c.res[2]);
	TU_CHECK(err == 0, "evfd_ring_move: %s", strerror(-err));
	TU_CHECK(tu_wait_u64(&c.res[2].calls, 1, 5000), "no-op move never finished");
	TU_CHECK(c.res[2].res == 0, "no-op move err %d", c.res[2].res);
	free_ring(b, &c);
}

static void do_restricted(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct io_uring_sqe sqe = { 0 };
	static char buf[8];

	io_uring_prep_nop(&sqe);
	c->err = evfd_ring_submit(c->ring, &sqe, record_cb, &c->res[0], 0, NULL);
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_read(&sqe, c->fds[0], buf, sizeof(buf), 0);
	c->err2 = evfd_ring_submit(c->ring, &sqe, record_cb, &c->res[1], 0, NULL);
}

/* A restricted ring refuses what it was not allowed and still moves (the library allows its own register
 * operations). */
static void test_restrictions(struct evfd_loop *a, struct evfd_loop *b)
{
	static const struct io_uring_restriction only_nop[] = {
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_NOP },
	};
	struct evfd_ring_params p = { .restrictions = only_nop, .nr_restrictions = 1 };
	struct ctx c = { .ring = new_ring(a, &p) };

	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c.fds) == 0, "socketpair");
	TU_CHECK(evfd_ring_move(c.ring, b, moved_cb, &c.res[2]) == 0, "move");
	TU_CHECK(tu_wait_u64(&c.res[2].calls, 1, 5000) && c.res[2].res == 0, "restricted ring did not move");
	tu_run_on(b, do_restricted, &c);
	TU_CHECK(c.err == 0 && c.err2 == 0, "submit on restricted ring: %d %d", c.err, c.err2);
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000) && c.res[0].res == 0, "allowed NOP: %d", c.res[0].res);
	TU_CHECK(tu_wait_u64(&c.res[1].calls, 1, 5000), "disallowed READ never completed");
	TU_CHECK(c.res[1].res == -EACCES, "disallowed READ res %d, want -EACCES", c.res[1].res);
	free_ring(b, &c);
	close(c.fds[0]);
	close(c.fds[1]);
}

/* A tiny ring (SQ 2, CQ 4) carrying far more requests than it has slots: a full SQ is entered and refilled,
 * an overflowing CQ is flushed (overflowed CQEs ring no eventfd), and a move's re-arms queue up rather than
 * get lost. */
#define TINY_N 64

struct tiny {
	struct evfd_ring *ring;
	int fds[TINY_N][2];
	char buf[TINY_N][4];
	struct result nops[TINY_N], recvs[TINY_N];
};

static void do_tiny(struct evfd_loop *loop, void *arg)
{
	struct tiny *t = arg;
	struct io_uring_sqe sqe;
	int i, err;

	for (i = 0; i < TINY_N; i++) {
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_recv(&sqe, t->fds[i][0], t->buf[i], sizeof(t->buf[i]), 0);
		err = evfd_ring_submit(t->ring, &sqe, record_cb, &t->recvs[i], 0, NULL);
		TU_CHECK(err == 0, "recv %d: %s", i, strerror(-err));
	}
	for (i = 0; i < TINY_N; i++) {
		memset(&sqe, 0, sizeof(sqe));
		io_uring_prep_nop(&sqe);
		err = evfd_ring_submit(t->ring, &sqe, record_cb, &t->nops[i], 0, NULL);
		TU_CHECK(err == 0, "nop %d: %s", i, strerror(-err));
	}
}

static void do_tiny_free(struct evfd_loop *loop, void *arg)
{
	struct tiny *t = arg;
	int err = evfd_ring_free(t->ring);

	TU_CHECK(err == 0, "free tiny ring: %s", strerror(-err));
}

static void test_tiny_ring(struct evfd_loop *a, struct evfd_loop *b)
{
	struct evfd_ring_params p = { .entries = 2, .cq_entries = 4 };
	static struct tiny t;
	struct result moved = { 0 };
	struct evfd_ring_stats st;
	int i;

	memset(&t, 0, sizeof(t));
	t.ring = new_ring(a, &p);
	for (i = 0; i < TINY_N; i++)
		TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, t.fds[i]) == 0, "socketpair");
	tu_run_on(a, do_tiny, &t);
	for (i = 0; i < TINY_N; i++) {
		TU_CHECK(tu_wait_u64(&t.nops[i].calls, 1, 5000), "tiny ring: NOP %d never completed", i);
		TU_CHECK(t.nops[i].res == 0, "NOP %d res %d", i, t.nops[i].res);
	}
	TU_CHECK(evfd_ring_move(t.ring, b, moved_cb, &moved) == 0, "move tiny ring");
	TU_CHECK(tu_wait_u64(&moved.calls, 1, 5000), "tiny ring never moved");
	for (i = 0; i < 5000; i++) {
		evfd_ring_stats(t.ring, &st);
		if (st.rearmed == TINY_N)
			break;
		usleep(1000);
	}
	TU_CHECK(st.rearmed == TINY_N, "tiny ring re-armed %lu of %d", (unsigned long)st.rearmed, TINY_N);
	for (i = 0; i < TINY_N; i++)
		TU_CHECK(atomic_load(&t.recvs[i].calls) == 0, "recv %d completed during the move", i);
	for (i = 0; i < TINY_N; i++)
		TU_CHECK(write(t.fds[i][1], "abc", 3) == 3, "write");
	for (i = 0; i < TINY_N; i++) {
		TU_CHECK(tu_wait_u64(&t.recvs[i].calls, 1, 5000), "tiny ring: recv %d never completed", i);
		TU_CHECK(t.recvs[i].res == 3 && t.recvs[i].thread_loop == b, "recv %d res %d", i, t.recvs[i].res);
	}
	tu_run_on(b, do_tiny_free, &t);
	for (i = 0; i < TINY_N; i++) {
		close(t.fds[i][0]);
		close(t.fds[i][1]);
	}
}

/* A loop attached to a libev loop the caller runs on its own thread. */
static void test_attached(struct evfd_loop *spawned)
{
	struct evfd_loop *l, *again;
	struct ctx c = { 0 };
	struct io_uring_sqe sqe = { 0 };
	int err;

	err = evfd_loop_new(&l, NULL);
	TU_CHECK(err == 0, "evfd_loop_new: %s", strerror(-err));
	TU_CHECK(evfd_loop_current() == l, "current loop");
	TU_CHECK(evfd_loop_new(&again, NULL) == -EEXIST, "second loop on one thread");
	c.ring = new_ring(l, NULL);
	io_uring_prep_nop(&sqe);
	err = evfd_ring_submit(c.ring, &sqe, record_cb, &c.res[0], 0, NULL);
	TU_CHECK(err == 0, "submit: %s", strerror(-err));
	while (atomic_load(&c.res[0].calls) == 0)
		ev_run(evfd_loop_ev(l), EVRUN_ONCE);
	TU_CHECK(c.res[0].thread_loop == l && c.res[0].res == 0, "attached NOP");

	/* Hand the ring to a spawned loop and back: the attached loop serves while it runs. */
	TU_CHECK(evfd_ring_move(c.ring, spawned, moved_cb, &c.res[1]) == 0, "move out");
	while (atomic_load(&c.res[1].calls) == 0)
		ev_run(evfd_loop_ev(l), EVRUN_NOWAIT);
	TU_CHECK(evfd_ring_move(c.ring, l, moved_cb, &c.res[2]) == 0, "move back");
	while (atomic_load(&c.res[2].calls) == 0)
		ev_run(evfd_loop_ev(l), EVRUN_ONCE);
	TU_CHECK(c.res[2].thread_loop == l, "move back finished off the attached loop");
	TU_CHECK(evfd_ring_free(c.ring) == 0, "free on the attached loop");
	/* A loop thread (online for urcu) frees another loop: the join must not hold up the grace period the
	 * exiting thread waits for. */
	{
		struct evfd_loop *x;

		TU_CHECK(evfd_loop_spawn(&x, "x") == 0, "spawn");
		TU_CHECK(evfd_loop_free(x) == 0, "free a spawned loop from an attached loop's thread");
	}
	TU_CHECK(evfd_loop_free(l) == 0, "evfd_loop_free attached");
	TU_CHECK(evfd_loop_current() == NULL, "current loop after free");
}

static void ring_call_cb(struct evfd_ring *ring, int err, void *arg)
{
	struct result *res = arg;

	res->res = err;
	res->thread_loop = evfd_loop_current();
	res->owner = evfd_ring_owner(ring);
	atomic_fetch_add(&res->calls, 1);
}

struct call_ctx {
	struct evfd_ring *ring;
	struct evfd_loop *to;
	struct result moved, called;
	int err;
};

/* On loop b: start a move to b and at once ask for a call on the owner. Either way the call runs on the
 * thread that owns the ring at that moment. */
static void do_ring_call(struct evfd_loop *loop, void *arg)
{
	struct call_ctx *cc = arg;

	cc->err = evfd_ring_move(cc->ring, cc->to, moved_cb, &cc->moved);
	if (!cc->err)
		cc->err = evfd_ring_call(cc->ring, ring_call_cb, &cc->called);
}

static void test_ring_call(struct evfd_loop *a, struct evfd_loop *b)
{
	struct call_ctx cc = { .ring = new_ring(a, NULL), .to = b };
	struct ctx c = { .ring = cc.ring };
	struct result direct = { 0 };

	TU_CHECK(evfd_ring_call(cc.ring, ring_call_cb, &direct) == -EPERM, "ring call off any loop thread");
	tu_run_on(b, do_ring_call, &cc);
	TU_CHECK(cc.err == 0, "move/ring call: %s", strerror(-cc.err));
	TU_CHECK(tu_wait_u64(&cc.called.calls, 1, 5000), "ring call never ran");
	TU_CHECK(cc.called.res == 0 && cc.called.thread_loop == cc.called.owner, "ring call ran off the owner");
	TU_CHECK(tu_wait_u64(&cc.moved.calls, 1, 5000), "move never finished");
	free_ring(b, &c);
}

/* evfd_ring_close: the ring goes once the last completion (the caller's and the library's cancels) has been
 * reaped, the callback says so on the owner's thread afterwards, and a ring that moves while closing goes on
 * its new owner. */
struct close_ctx {
	struct ctx c;
	struct result closed;
	atomic_uint_fast64_t recv_done_before_close;   /* the recv's callback ran before the close callback */
	int close_err, again_err, submit_err, free_err;
	bool closed_inside;                            /* the close callback ran inside evfd_ring_close */
};

static void closed_cb(struct evfd_loop *loop, void *arg)
{
	struct close_ctx *cc = arg;
	struct evfd_loop_stats ls;

	evfd_loop_stats(loop, &ls);
	cc->closed.thread_loop = evfd_loop_current();
	cc->closed.flags = ls.rings;
	atomic_store(&cc->recv_done_before_close, atomic_load(&cc->c.res[0].calls));
	atomic_fetch_add(&cc->closed.calls, 1);
}

static void do_recv_close(struct evfd_loop *loop, void *arg)
{
	struct close_ctx *cc = arg;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_recv(&sqe, cc->c.fds[0], cc->c.buf, sizeof(cc->c.buf), 0);
	cc->c.err = evfd_ring_submit(cc->c.ring, &sqe, record_cb, &cc->c.res[0], 0, &cc->c.op);
	if (cc->c.err)
		return;
	if (cc->c.op && cc->c.res[1].res == 1)   /* this round cancels at once */
		cc->c.err2 = evfd_op_cancel(cc->c.ring, cc->c.op);
	cc->close_err = evfd_ring_close(cc->c.ring, closed_cb, cc);
	cc->closed_inside = atomic_load(&cc->closed.calls) != 0;
	cc->again_err = evfd_ring_close(cc->c.ring, closed_cb, cc);
	cc->free_err = evfd_ring_free(cc->c.ring);
	io_uring_prep_nop(&sqe);
	cc->submit_err = evfd_ring_submit(cc->c.ring, &sqe, record_cb, &cc->c.res[2], 0, NULL);
}

static void do_cancel_close(struct evfd_loop *loop, void *arg)
{
	struct close_ctx *cc = arg;

	cc->c.err2 = evfd_op_cancel(cc->c.ring, cc->c.op);
}

static void do_close_idle(struct evfd_loop *loop, void *arg)
{
	struct close_ctx *cc = arg;

	cc->close_err = evfd_ring_close(cc->c.ring, closed_cb, cc);
	cc->closed_inside = atomic_load(&cc->closed.calls) != 0;
}

static void check_close_calls(struct close_ctx *cc, const char *what)
{
	TU_CHECK(cc->close_err == 0, "%s: evfd_ring_close: %s", what, strerror(-cc->close_err));
	TU_CHECK(cc->again_err == -EALREADY, "%s: a second close: %d", what, cc->again_err);
	TU_CHECK(cc->free_err == -EALREADY, "%s: evfd_ring_free of a closing ring: %d", what, cc->free_err);
	TU_CHECK(cc->submit_err == -ESHUTDOWN, "%s: submit to a closing ring: %d", what, cc->submit_err);
	TU_CHECK(!cc->closed_inside, "%s: the close callback ran inside evfd_ring_close", what);
}

static void test_close(struct evfd_loop *a, struct evfd_loop *b)
{
	struct close_ctx cc = { 0 };
	struct result moved = { 0 };

	/* A recv cancelled just before: the ring goes after its -ECANCELED and the cancel's own completion. */
	cc.c.ring = new_ring(a, NULL);
	cc.c.res[1].res = 1;
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cc.c.fds) == 0, "socketpair");
	tu_run_on(a, do_recv_close, &cc);
	TU_CHECK(cc.c.err == 0 && cc.c.err2 == 0, "recv and cancel: %d %d", cc.c.err, cc.c.err2);
	check_close_calls(&cc, "cancelled recv");
	TU_CHECK(tu_wait_u64(&cc.closed.calls, 1, 5000), "the closing ring never went");
	TU_CHECK(cc.c.res[0].res == -ECANCELED, "the cancelled recv reported %d", cc.c.res[0].res);
	TU_CHECK(atomic_load(&cc.recv_done_before_close) == 1, "the close callback ran before the recv's");
	TU_CHECK(cc.closed.thread_loop == a && cc.closed.flags == 0, "closed on the wrong loop, or still counted");
	close(cc.c.fds[0]);
	close(cc.c.fds[1]);

	/* Closing with a recv still pending, then moved: the ring goes on its new owner once that cancels. */
	memset(&cc, 0, sizeof(cc));
	cc.c.ring = new_ring(a, NULL);
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cc.c.fds) == 0, "socketpair");
	tu_run_on(a, do_recv_close, &cc);
	check_close_calls(&cc, "pending recv");
	usleep(20000);
	TU_CHECK(atomic_load(&cc.closed.calls) == 0, "a ring with a recv in flight went");
	TU_CHECK(evfd_ring_move(cc.c.ring, b, moved_cb, &moved) == 0, "move a closing ring");
	TU_CHECK(tu_wait_u64(&moved.calls, 1, 5000) && moved.res == 0, "the closing ring did not move: %d", moved.res);
	tu_run_on(b, do_cancel_close, &cc);
	TU_CHECK(cc.c.err2 == 0, "cancel on the new owner: %s", strerror(-cc.c.err2));
	TU_CHECK(tu_wait_u64(&cc.closed.calls, 1, 5000), "the moved closing ring never went");
	TU_CHECK(cc.closed.thread_loop == b, "a moved ring closed off its new owner");
	TU_CHECK(cc.c.res[0].res == -ECANCELED, "the recv reported %d", cc.c.res[0].res);
	close(cc.c.fds[0]);
	close(cc.c.fds[1]);

	/* An idle ring goes at once, but the callback still comes from the loop, later. */
	memset(&cc, 0, sizeof(cc));
	cc.c.ring = new_ring(a, NULL);
	tu_run_on(a, do_close_idle, &cc);
	TU_CHECK(cc.close_err == 0 && !cc.closed_inside, "idle close: %d, inside %d", cc.close_err, cc.closed_inside);
	TU_CHECK(tu_wait_u64(&cc.closed.calls, 1, 5000), "the idle closing ring never reported");
	TU_CHECK(evfd_ring_close(NULL, NULL, NULL) == -EINVAL, "close NULL");
}

/* Setup flags: an unknown one is refused; COOP_TASKRUN is in effect where the kernel has it (5.19, which
 * this suite's kernels are past) and its ring works like any other, also across a move. */
static void test_flags(struct evfd_loop *a, struct evfd_loop *b)
{
	struct ctx c = { 0 };
	struct result moved = { 0 };
	int err;

	TU_CHECK(evfd_ring_new_flags(&c.ring, a, NULL, 0x80000000u) == -EINVAL, "an unknown flag");
	err = evfd_ring_new_flags(&c.ring, a, NULL, EVFD_RING_COOP_TASKRUN);
	TU_CHECK(err == 0, "evfd_ring_new_flags: %s", strerror(-err));
	TU_CHECK(evfd_ring_flags(c.ring) == EVFD_RING_COOP_TASKRUN, "flags in effect: %#x", evfd_ring_flags(c.ring));
	tu_run_on(a, do_nop, &c);
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000) && c.res[0].thread_loop == a, "NOP on a COOP ring");
	TU_CHECK(evfd_ring_move(c.ring, b, moved_cb, &moved) == 0, "move");
	TU_CHECK(tu_wait_u64(&moved.calls, 1, 5000) && moved.res == 0, "move of a COOP ring: %d", moved.res);
	memset(&c.res[0], 0, sizeof(c.res[0]));
	tu_run_on(b, do_nop, &c);
	TU_CHECK(tu_wait_u64(&c.res[0].calls, 1, 5000) && c.res[0].thread_loop == b, "NOP after the move");
	free_ring(b, &c);
	c.ring = new_ring(a, NULL);
	TU_CHECK(evfd_ring_flags(c.ring) == 0, "a plain ring has flags %#x", evfd_ring_flags(c.ring));
	free_ring(a, &c);
}

static void test_retire_args(struct evfd_loop *a, struct evfd_loop *b)
{
	TU_CHECK(evfd_loop_retire(a, a, NULL, NULL) == -EINVAL, "retire to itself");
	TU_CHECK(evfd_loop_retire(a, NULL, NULL, NULL) == -EINVAL, "retire to nobody");
	TU_CHECK(evfd_loop_call(a, NULL, NULL) == -EINVAL, "call without a function");
}

/* With io_uring_setup blocked (as a seccomp filter or a kernel without io_uring would), evfd_ring_new says
 * -ENOSYS so that a daemon can explain it. Runs in a child: the filter cannot be removed. */
static void test_enosys(struct evfd_loop *unused)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };
	struct evfd_loop *l;
	struct evfd_ring *r;
	int status, err;
	pid_t pid = fork();

	TU_CHECK(pid >= 0, "fork");
	if (pid == 0) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			_exit(3);
		err = evfd_loop_new(&l, NULL);
		if (err)
			_exit(4);
		err = evfd_ring_new(&r, l, NULL);
		_exit(err == -ENOSYS ? 0 : 5);
	}
	TU_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	TU_CHECK(WIFEXITED(status), "child died");
	TU_CHECK(WEXITSTATUS(status) != 3, "cannot install a seccomp filter here");
	TU_CHECK(WEXITSTATUS(status) == 0, "evfd_ring_new under a seccomp filter: child status %d",
		 WEXITSTATUS(status));
}

int main(void)
{
	struct evfd_loop *a, *b;
	int err;

	tu_require_io_uring();
	err = evfd_loop_spawn(&a, "test-a");
	TU_CHECK(err == 0, "spawn: %s", strerror(-err));
	err = evfd_loop_spawn(&b, "test-b");
	TU_CHECK(err == 0, "spawn: %s", strerror(-err));
	TU_CHECK(evfd_loop_id(a) != evfd_loop_id(b), "loop ids");
	TU_CHECK(evfd_loop_current() == NULL, "main thread has no loop");

	test_nop_on_owner(a);
	printf("ok nop on owner\n");
	test_cancel_and_busy(a);
	printf("ok cancel, busy\n");
	test_free_from_callback();
	printf("ok ring freed from its own callback\n");
	test_timeout_moves(a, b);
	printf("ok timeout keeps its deadline across a move\n");
	test_restrictions(a, b);
	printf("ok restrictions\n");
	test_tiny_ring(a, b);
	printf("ok tiny ring: full SQ, overflowing CQ, re-arms queued\n");
	test_attached(a);
	printf("ok attached loop\n");
	test_ring_call(a, b);
	printf("ok ring call follows the owner\n");
	test_flags(a, b);
	printf("ok setup flags: COOP_TASKRUN in effect, an unknown flag refused\n");
	test_close(a, b);
	printf("ok close: the ring goes after its last completion, on its owner, also after a move\n");
	test_retire_args(a, b);
	printf("ok retire arguments\n");
	test_enosys(a);
	printf("ok ENOSYS reported\n");

	TU_CHECK(evfd_loop_free(a) == 0, "free a");
	TU_CHECK(evfd_loop_free(b) == 0, "free b");
	return 0;
}
