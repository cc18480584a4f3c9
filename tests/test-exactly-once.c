/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Exactly once, under constant moves: 4 loops, 4 rings, every ring moved to a random loop about every 100 us
 * while it carries NOPs, timeouts, socketpair streams with checked payloads (send and recv both through the
 * ring) and a multishot accept with clients connecting. Every callback must run exactly once per request, on
 * the thread of the loop that owns the ring at that moment, never concurrently with another callback of the
 * same ring; no -ECANCELED caused by moves; every byte arrives in order; submitted == completed. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "testutil.h"

#define NLOOPS 4
#define NRINGS 4
#define NPAIRS 4             /* socketpair streams per ring */
#define NOPS_INFLIGHT 8
#define TIMEOUTS_INFLIGHT 4
#define CHUNK 4096

enum kind { K_NOP, K_TIMEOUT, K_SEND, K_RECV, K_ACCEPT };

/* One record per request, kept until the end so that a second completion is caught, not freed twice. */
struct rec {
	enum kind kind;
	struct ring_state *rs;
	unsigned pair;
	uint64_t deadline_ns;
	atomic_uint_fast64_t calls;
};

struct stream {
	int fds[2];
	uint64_t sent, received, total;
	unsigned char sbuf[CHUNK], rbuf[CHUNK];
	bool send_busy, recv_busy;
};

struct ring_state {
	unsigned idx;
	struct evfd_ring *ring;
	atomic_int in_callback;          /* catches two threads in one ring's callbacks */
	uint64_t rng;
	struct rec *recs;
	size_t nrecs, cap;
	unsigned nops_inflight, timeouts_inflight;
	struct stream streams[NPAIRS];
	int listen_fd;
	uint16_t port;
	struct rec *accept_rec;
	struct evfd_op *accept_op;
	atomic_uint_fast64_t accepted;
	atomic_uint_fast64_t done;       /* 1 once every finite stream of work has finished */
	atomic_uint_fast64_t accept_ended;
	unsigned long callbacks, early_timeouts;
};

static struct ring_state rings[NRINGS];
static struct evfd_loop *loops[NLOOPS];
static unsigned long stream_bytes, accepts_total;
static atomic_uint_fast64_t moves_done, rings_done;

static uint64_t rnd(struct ring_state *rs)
{
	rs->rng ^= rs->rng << 13;
	rs->rng ^= rs->rng >> 7;
	rs->rng ^= rs->rng << 17;
	return rs->rng;
}

static unsigned char pattern(unsigned ring, unsigned pair, uint64_t off)
{
	return (unsigned char)(((off * 2654435761u) >> 13) ^ (ring * 31 + pair * 7) ^ (off >> 8));
}

static struct rec *rec_new(struct ring_state *rs, enum kind k)
{
	struct rec *q;

	TU_CHECK(rs->nrecs < rs->cap, "record table full");
	q = &rs->recs[rs->nrecs++];
	q->kind = k;
	q->rs = rs;
	return q;
}

static void op_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);

static void submit(struct ring_state *rs, struct io_uring_sqe *sqe, struct rec *q, struct evfd_op **opp)
{
	int err = evfd_ring_submit(rs->ring, sqe, op_cb, q, 0, opp);

	TU_CHECK(err == 0, "ring %u: submit: %s", rs->idx, strerror(-err));
}

static void submit_nop(struct ring_state *rs)
{
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_nop(&sqe);
	rs->nops_inflight++;
	submit(rs, &sqe, rec_new(rs, K_NOP), NULL);
}

static void submit_timeout(struct ring_state *rs)
{
	struct __kernel_timespec ts = { .tv_nsec = 10000 + (long)(rnd(rs) % 290000) };
	struct io_uring_sqe sqe = { 0 };
	struct rec *q = rec_new(rs, K_TIMEOUT);

	q->deadline_ns = tu_now_ns() + (uint64_t)ts.tv_nsec;
	io_uring_prep_timeout(&sqe, &ts, 0, 0);
	rs->timeouts_inflight++;
	submit(rs, &sqe, q, NULL);
}

static void submit_send(struct ring_state *rs, unsigned p)
{
	struct stream *s = &rs->streams[p];
	struct io_uring_sqe sqe = { 0 };
	size_t len = 1 + rnd(rs) % CHUNK, i;
	struct rec *q;

	if (len > s->total - s->sent)
		len = s->total - s->sent;
	for (i = 0; i < len; i++)
		s->sbuf[i] = pattern(rs->idx, p, s->sent + i);
	q = rec_new(rs, K_SEND);
	q->pair = p;
	io_uring_prep_send(&sqe, s->fds[1], s->sbuf, len, MSG_NOSIGNAL);
	s->send_busy = true;
	submit(rs, &sqe, q, NULL);
}

static void submit_recv(struct ring_state *rs, unsigned p)
{
	struct stream *s = &rs->streams[p];
	struct io_uring_sqe sqe = { 0 };
	struct rec *q = rec_new(rs, K_RECV);

	q->pair = p;
	io_uring_prep_recv(&sqe, s->fds[0], s->rbuf, sizeof(s->rbuf), 0);
	s->recv_busy = true;
	submit(rs, &sqe, q, NULL);
}

/* NOPs and timeouts keep flowing for as long as the streams and the accepts have work left. */
static bool streams_busy(struct ring_state *rs)
{
	unsigned p;

	if (atomic_load(&rs->accepted) < accepts_total)
		return true;
	for (p = 0; p < NPAIRS; p++)
		if (rs->streams[p].received < rs->streams[p].total || rs->streams[p].send_busy)
			return true;
	return false;
}

static void check_done(struct ring_state *rs)
{
	if (atomic_load(&rs->done) || rs->nops_inflight || rs->timeouts_inflight || streams_busy(rs))
		return;
	atomic_store(&rs->done, 1);
	atomic_fetch_add(&rings_done, 1);
}

static void op_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct rec *q = arg;
	struct ring_state *rs = q->rs;
	struct stream *s = &rs->streams[q->pair];
	bool more = cqe->flags & IORING_CQE_F_MORE;
	int busy = atomic_exchange(&rs->in_callback, 1);
	uint64_t i;

	TU_CHECK(busy == 0, "ring %u: two threads in its callbacks at once", rs->idx);
	TU_CHECK(ring == rs->ring, "callback for the wrong ring");
	TU_CHECK(evfd_loop_current() != NULL && evfd_loop_current() == evfd_ring_owner(ring),
		 "ring %u: callback off the owner's thread", rs->idx);
	TU_CHECK(cqe->res != -ECANCELED || q->kind == K_ACCEPT, "ring %u: kind %d got -ECANCELED", rs->idx,
		 q->kind);
	if (!more)
		atomic_fetch_add(&q->calls, 1);
	rs->callbacks++;

	switch (q->kind) {
	case K_NOP:
		TU_CHECK(cqe->res == 0, "NOP res %d", cqe->res);
		rs->nops_inflight--;
		if (streams_busy(rs))
			submit_nop(rs);
		break;
	case K_TIMEOUT:
		TU_CHECK(cqe->res == -ETIME, "timeout res %d", cqe->res);
		if (tu_now_ns() < q->deadline_ns)
			rs->early_timeouts++;
		rs->timeouts_inflight--;
		if (streams_busy(rs))
			submit_timeout(rs);
		break;
	case K_SEND:
		TU_CHECK(cqe->res > 0, "ring %u pair %u: send res %d", rs->idx, q->pair, cqe->res);
		s->sent += (uint64_t)cqe->res;
		s->send_busy = false;
		if (s->sent < s->total)
			submit_send(rs, q->pair);
		break;
	case K_RECV:
		TU_CHECK(cqe->res > 0, "ring %u pair %u: recv res %d at %lu", rs->idx, q->pair, cqe->res,
			 (unsigned long)s->received);
		for (i = 0; i < (uint64_t)cqe->res; i++)
			TU_CHECK(s->rbuf[i] == pattern(rs->idx, q->pair, s->received + i),
				 "ring %u pair %u: byte %lu out of order", rs->idx, q->pair,
				 (unsigned long)(s->received + i));
		s->received += (uint64_t)cqe->res;
		s->recv_busy = false;
		if (s->received < s->total)
			submit_recv(rs, q->pair);
		break;
	case K_ACCEPT:
		if (cqe->res >= 0) {
			close(cqe->res);
			atomic_fetch_add(&rs->accepted, 1);
		}
		if (!more) {
			/* Only the test's own cancellation at the end may stop it. */
			TU_CHECK(cqe->res == -ECANCELED, "ring %u: multishot accept ended with %d", rs->idx,
				 cqe->res);
			atomic_store(&rs->accept_ended, 1);
		}
		break;
	}
	check_done(rs);
	atomic_store(&rs->in_callback, 0);
}

static void start_ring(struct evfd_loop *loop, void *arg)
{
	struct ring_state *rs = arg;
	struct io_uring_sqe sqe = { 0 };
	unsigned i;

	for (i = 0; i < NOPS_INFLIGHT; i++)
		submit_nop(rs);
	for (i = 0; i < TIMEOUTS_INFLIGHT; i++)
		submit_timeout(rs);
	for (i = 0; i < NPAIRS; i++) {
		submit_recv(rs, i);
		submit_send(rs, i);
	}
	rs->accept_rec = rec_new(rs, K_ACCEPT);
	io_uring_prep_multishot_accept(&sqe, rs->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	submit(rs, &sqe, rs->accept_rec, &rs->accept_op);
}

static void stop_accept(struct evfd_loop *loop, void *arg)
{
	struct ring_state *rs = arg;

	TU_CHECK(evfd_op_cancel(rs->ring, rs->accept_op) == 0, "cancel accept");
}

static void free_ring(struct evfd_loop *loop, void *arg)
{
	struct ring_state *rs = arg;
	int err = evfd_ring_free(rs->ring);

	TU_CHECK(err == 0, "free ring %u: %s", rs->idx, strerror(-err));
}

static void *clients(void *arg)
{
	unsigned long i;

	for (i = 0; i < accepts_total * NRINGS; i++) {
		close(tu_connect_tcp(rings[i % NRINGS].port));
		if (i % 16 == 0)
			usleep(500);
	}
	return NULL;
}

/* evfd_ring_call under constant moves: it must always run on the owner, serialised with the ring's
 * callbacks. */
static atomic_uint_fast64_t ring_calls_sent, ring_calls_run;

static void ring_call_fn(struct evfd_ring *ring, int err, void *arg)
{
	struct ring_state *rs = arg;
	int busy = atomic_exchange(&rs->in_callback, 1);

	TU_CHECK(err == 0, "ring call: %s", strerror(-err));
	TU_CHECK(busy == 0, "ring %u: ring call concurrent with a callback", rs->idx);
	TU_CHECK(evfd_loop_current() == evfd_ring_owner(ring), "ring %u: ring call off the owner", rs->idx);
	rs->callbacks++;
	atomic_store(&rs->in_callback, 0);
	atomic_fetch_add(&ring_calls_run, 1);
}

static atomic_uint_fast64_t loop_moves_sent, loop_moves_done;

static void loop_moved_cb(struct evfd_ring *ring, int err, void *arg)
{
	TU_CHECK(err == 0, "move from a loop thread: %s", strerror(-err));
	TU_CHECK(evfd_loop_current() == arg, "move from a loop thread finished off its target");
	atomic_fetch_add(&loop_moves_done, 1);
}

/* On some loop thread: ask the owner of a ring to run a function, and pull the ring here (a move from a
 * loop thread goes straight to the owner it reads from the slot). */
static void send_ring_call(struct evfd_loop *loop, void *arg)
{
	struct ring_state *rs = arg;
	int err = evfd_ring_call(rs->ring, ring_call_fn, rs);

	TU_CHECK(err == 0, "evfd_ring_call: %s", strerror(-err));
	atomic_fetch_add(&loop_moves_sent, 1);
	err = evfd_ring_move(rs->ring, loop, loop_moved_cb, loop);
	TU_CHECK(err == 0, "evfd_ring_move from a loop thread: %s", strerror(-err));
}

static void moved_cb(struct evfd_ring *ring, int err, void *arg)
{
	TU_CHECK(err == 0, "move: %s", strerror(-err));
	atomic_fetch_add(&moves_done, 1);
}

int main(void)
{
	struct evfd_ring_stats st;
	pthread_t client;
	uint64_t rng = 0x9e3779b97f4a7c15ull, moves = 0, t0, next_ns, deadline;
	unsigned i, p;
	size_t max_recs;
	unsigned long callbacks = 0, early = 0, rearmed = 0;
	int err;

	tu_require_io_uring();
	stream_bytes = tu_scaled(24u << 20, 1u << 20);
	accepts_total = tu_scaled(1000, 50);
	/* Sends average 2 KiB; receives may come in smaller pieces; NOPs and timeouts run alongside. calloc'd
	 * pages stay untouched until used. */
	max_recs = 2 * NPAIRS * (stream_bytes / 16 + 1024) + 16 * stream_bytes / 8;

	for (i = 0; i < NLOOPS; i++) {
		err = evfd_loop_spawn(&loops[i], "exactly-once");
		TU_CHECK(err == 0, "spawn: %s", strerror(-err));
	}
	for (i = 0; i < NRINGS; i++) {
		struct ring_state *rs = &rings[i];

		rs->idx = i;
		rs->rng = 0x2545f4914f6cdd1dull * (i + 1);
		rs->cap = max_recs;
		rs->recs = calloc(rs->cap, sizeof(*rs->recs));
		TU_CHECK(rs->recs, "calloc");
		for (p = 0; p < NPAIRS; p++) {
			TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, rs->streams[p].fds) == 0, "sp");
			rs->streams[p].total = stream_bytes;
		}
		rs->listen_fd = tu_listen_tcp(&rs->port);
		err = tu_ring_new(&rs->ring, loops[i % NLOOPS], NULL);
		TU_CHECK(err == 0, "ring: %s", strerror(-err));
		tu_run_on(loops[i % NLOOPS], start_ring, rs);
	}
	TU_CHECK(pthread_create(&client, NULL, clients, NULL) == 0, "client thread");

	/* Move a random ring to a random loop about every 100 us until all the work is done (timer slack down to
	 * 1 us so that the sleeps are what they say). */
	prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0);
	t0 = next_ns = tu_now_ns();
	deadline = t0 + 120ull * 1000000000u;
	while (atomic_load(&rings_done) < NRINGS) {
		TU_CHECK(tu_now_ns() < deadline, "work not done after 120 s (%lu of %d rings done)",
			 (unsigned long)atomic_load(&rings_done), NRINGS);
		/* Keep a bounded number of moves queued: a slow (sanitized) build must not pile up thousands. */
		if (moves - atomic_load(&moves_done) >= 64) {
			usleep(50);
			next_ns = tu_now_ns();
			continue;
		}
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		err = evfd_ring_move(rings[rng % NRINGS].ring, loops[(rng >> 8) % NLOOPS], moved_cb, NULL);
		TU_CHECK(err == 0, "evfd_ring_move: %s", strerror(-err));
		moves++;
		if (moves % 4 == 0) {
			/* From some loop thread, ask whoever owns some ring to run a function. */
			atomic_fetch_add(&ring_calls_sent, 1);
			err = evfd_loop_call(loops[(rng >> 16) % NLOOPS], send_ring_call, &rings[(rng >> 24) % NRINGS]);
			TU_CHECK(err == 0, "evfd_loop_call: %s", strerror(-err));
		}
		/* A schedule, not a fixed sleep: when a sleep overshoots, the next moves follow at once. */
		next_ns += 100000;
		if (next_ns > tu_now_ns()) {
			struct timespec ts = { .tv_sec = (time_t)(next_ns / 1000000000u),
					       .tv_nsec = (long)(next_ns % 1000000000u) };

			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		}
	}
	TU_CHECK(tu_wait_u64(&moves_done, moves, 10000), "%lu of %lu moves finished",
		 (unsigned long)atomic_load(&moves_done), (unsigned long)moves);
	pthread_join(client, NULL);
	TU_CHECK(tu_wait_u64(&loop_moves_done, atomic_load(&loop_moves_sent), 10000),
		 "%lu of %lu moves from loop threads finished", (unsigned long)atomic_load(&loop_moves_done),
		 (unsigned long)atomic_load(&loop_moves_sent));
	TU_CHECK(tu_wait_u64(&ring_calls_run, atomic_load(&ring_calls_sent), 10000), "%lu of %lu ring calls ran",
		 (unsigned long)atomic_load(&ring_calls_run), (unsigned long)atomic_load(&ring_calls_sent));

	for (i = 0; i < NRINGS; i++) {
		struct ring_state *rs = &rings[i];
		struct evfd_loop *owner = loops[0];
		unsigned j;

		/* The owner is stable now (no moves in flight); find it by id. */
		evfd_ring_stats(rs->ring, &st);
		for (j = 0; j < NLOOPS; j++)
			if (evfd_loop_id(loops[j]) == st.owner_id)
				owner = loops[j];
		tu_run_on(owner, stop_accept, rs);
		TU_CHECK(tu_wait_u64(&rs->accept_ended, 1, 5000), "accept cancel");
		evfd_ring_stats(rs->ring, &st);
		TU_CHECK(st.submitted == st.completed && st.inflight == 0 && st.submitted == rs->nrecs,
			 "ring %u: submitted %lu completed %lu inflight %lu records %zu", i,
			 (unsigned long)st.submitted, (unsigned long)st.completed, (unsigned long)st.inflight,
			 rs->nrecs);
		for (j = 0; j < rs->nrecs; j++)
			TU_CHECK(atomic_load(&rs->recs[j].calls) == 1, "ring %u request %u (kind %d) completed %lu times",
				 i, j, rs->recs[j].kind, (unsigned long)atomic_load(&rs->recs[j].calls));
		for (p = 0; p < NPAIRS; p++)
			TU_CHECK(rs->streams[p].received == stream_bytes && rs->streams[p].sent == stream_bytes,
				 "ring %u pair %u: %lu bytes", i, p, (unsigned long)rs->streams[p].received);
		TU_CHECK(atomic_load(&rs->accepted) == accepts_total, "ring %u accepted %lu", i,
			 (unsigned long)atomic_load(&rs->accepted));
		callbacks += rs->callbacks;
		early += rs->early_timeouts;
		rearmed += st.rearmed;
		tu_run_on(owner, free_ring, rs);
	}
	TU_CHECK(early == 0, "%lu timeouts fired before their deadline", early);
	printf("ok %lu moves in %.2f s; %lu callbacks, every request exactly once on its owner; %lu re-armed; "
	       "%lu bytes per stream in order; %lu ring calls on the owner\n", (unsigned long)moves,
	       (double)(tu_now_ns() - t0) / 1e9, callbacks, rearmed, stream_bytes,
	       (unsigned long)atomic_load(&ring_calls_run));

	for (i = 0; i < NRINGS; i++) {
		for (p = 0; p < NPAIRS; p++) {
			close(rings[i].streams[p].fds[0]);
			close(rings[i].streams[p].fds[1]);
		}
		close(rings[i].listen_fd);
		free(rings[i].recs);
	}
	for (i = 0; i < NLOOPS; i++)
		TU_CHECK(evfd_loop_free(loops[i]) == 0, "free loop %u", i);
	return 0;
}
