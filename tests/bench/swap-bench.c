/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * swap-bench: what moving a busy ring between loops costs, against quiescing the ring first.
 *
 * Loops run on threads of their own (evfd_loop_spawn) and carry steady traffic on NRINGS rings. Per ring:
 *  - NCHAN busy streams: AF_UNIX SEQPACKET pairs. A recv is always pending on the ring's end; a peer thread
 *    writes sequenced, timestamped messages to the other end at random intervals (a client with think
 *    time PEER_MIN_US..PEER_MAX_US). The ring echoes each message back with a send, and the peer checks the
 *    echoes.
 *  - nidle idle keep-alive connections (SWAP_BENCH_IDLE, default NIDLE_DEFAULT): the same protocol, but the
 *    client thinks much longer between requests, so the ring's recv on them sits pending for tens of
 *    milliseconds. This is what a forwarder's ring mostly carries: many keep-alive connections waiting
 *    for their client's next request, besides a few busy ones. Think time: exponential, mean IDLE_MEAN_US,
 *    capped at IDLE_CAP_US (see there for why).
 *  - NTMO relative timeouts of TMO_MIN_US..TMO_MAX_US always pending; each expiry also submits a NOP.
 * Every completion resubmits what it stands for, so the set of requests in flight stays constant, and
 * every pending recv completes on its own, within IDLE_CAP_US at the latest, because the peer never stops
 * writing.
 *
 * Three phases of equal length, back to back on the same loops and rings:
 *  baseline  no moves;
 *  rcu       every MOVE_US the main thread calls evfd_ring_move on the next ring (to another loop);
 *  quiesce   same rate, but the owner first stops submitting on the ring and waits until nothing is in
 *            flight (what IORING_REGISTER_EVENTFD imposed before Linux 5.18), then moves it, and the new
 *            owner resumes. Requests held back meanwhile keep their intended submit time.
 * Meanwhile two plain threads, pinned to two different CPUs as loop threads handing a ring over usually
 * are, measure a bare cross-thread eventfd + epoll wakeup, idle before the phases and under load during
 * them, for comparison.
 *
 * The quiesce emulation is kind to quiescing: only the ring being moved stops, while its owner thread goes
 * on serving other rings; a kernel before 5.18 blocked the whole thread inside io_uring_register and also
 * waited for an RCU grace period (percpu_ref kill) even with nothing in flight. Its stall is a lower bound,
 * set by how long the longest request in flight still has to live: with idle connections, the longest
 * residual think time among the ring's idle clients. The quiesce wait is never capped or timed out; only a
 * move that has not finished WAIT_S after its phase ended counts as a hang, and fails the run.
 *
 * Latency of an operation is reap time minus submit time, less what the operation waits for by design: a
 * timeout's duration, and for a recv (busy or idle) the time until the peer wrote the message (stamped in
 * it), so an idle recv that simply waited for its client counts only the delay after its data arrived. A
 * move window runs from the move request to the done callback on the new owner (after adoption and drain);
 * an operation "in flight during a move" overlaps a window of its ring, and its stall is its latency minus
 * the baseline median of its type, clamped at 0. An operation belongs to the phase in which it started:
 * its submission, or for a recv the peer's write if that came later (an idle recv submitted at the end of
 * one phase and fed in the next belongs to the next).
 *
 * Every request has an id; each completion is counted per id. lost = ids never completed after the final
 * drain + messages (or echoes) that went missing; duplicated = ids completed more than once + messages (or
 * echoes) delivered twice. Exit status 1 if either is nonzero. Timing is reported, never asserted.
 *
 * Environment: SWAP_BENCH_SECONDS (phase length, default 2; --quick means 0.5), SWAP_BENCH_LOOPS (default
 * 2), SWAP_BENCH_MOVE_US (move period, default 1000), SWAP_BENCH_IDLE (idle connections per ring, 0 to
 * NIDLE_MAX, default NIDLE_DEFAULT; 0 gives the busy-only workload).
 *
 * Threads: the loops (the only ones that are busy), the main thread (the mover), one peer thread and the two
 * probe threads; all but the loops sleep in clock_nanosleep or epoll_wait between events, none spins, so on
 * two CPUs the loops compete only with short wakeups.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <evfd.h>

#define MAX_LOOPS 8
#define NRINGS 4
#define NCHAN 2                 /* busy socket pairs per ring, each with a recv always pending */
#define NIDLE_DEFAULT 32        /* idle keep-alive socket pairs per ring, each with a recv always pending */
#define NIDLE_MAX 64
#define MAXCHAN (NCHAN + NIDLE_MAX)
/*
 * Think time of an idle keep-alive client: exponential with mean IDLE_MEAN_US, capped at IDLE_CAP_US.
 * Exponential because requests of independent clients form a Poisson stream (memoryless: at any moment the
 * time to a connection's next request does not depend on how long it has been quiet, which is what makes a
 * quiesce wait for the longest of them). 50 ms is short for real keep-alive traffic (browser users think
 * for seconds, keep-alive timeouts are 5-75 s; only busy API clients and connection pools come back within
 * tens of ms), and the cap bounds the quiesce wait and the run time: both choices are kind to quiescing.
 */
#define IDLE_MEAN_US 50000
#define IDLE_CAP_US 200000
#define NTMO 2                  /* timeouts per ring always pending */
#define TMO_MIN_US 50
#define TMO_MAX_US 200
#define PEER_MIN_US 200         /* peer think time between two messages on one channel */
#define PEER_MAX_US 2000
#define PEER_RETRY_US 1000      /* a client whose socket is full tries again this much later */
#define MOVE_US_DEFAULT 1000
#define PHASE_S_DEFAULT 2.0
#define WARMUP_S 0.3
#define GAP_S 0.05              /* between phases, unattributed: what one phase left in flight lands here */
#define IDLE_PROBE_S 0.5
#define PROBE_MIN_US 200        /* the probe's writer sleeps this long or more, so its reader is asleep */
#define PROBE_MAX_US 400
#define WAIT_S 5.0              /* longer than this for a move or a drain means the library hangs */
#define MSG_MAGIC 0x53574150u   /* "SWAP" */
#define NSEC 1000000000ull

/* irecv/isend: the recv and echo send of idle keep-alive connections, kept apart for their own medians. */
enum op_type { OP_RECV, OP_SEND, OP_TMO, OP_NOP, OP_IRECV, OP_ISEND, NTYPES };
static const char *const type_name[NTYPES] = { "recv", "send", "timeout", "nop", "irecv", "isend" };

static bool is_recv(unsigned type)
{
	return type == OP_RECV || type == OP_IRECV;
}

static unsigned recv_type(unsigned chan)
{
	return chan < NCHAN ? OP_RECV : OP_IRECV;
}

static unsigned send_type(unsigned chan)
{
	return chan < NCHAN ? OP_SEND : OP_ISEND;
}

enum phase { PH_BASE, PH_RCU, PH_QUIESCE, NPHASES, PH_IDLE = NPHASES, NPROBE };
static const char *const phase_name[NPROBE] = { "baseline", "rcu", "quiesce", "idle" };

struct msg {
	uint32_t magic;
	uint16_t ring, chan;
	uint64_t seq;
	uint64_t send_ns;       /* CLOCK_MONOTONIC, when the peer wrote it */
	uint64_t check;
};

/* One request, indexed by its id. Written on the ring's owner thread; read by main after the drain. */
struct oprec {
	uint64_t t_sub;         /* submit time, or intended submit time if held back by a quiesce */
	uint64_t t_done;
	struct opctx *ctx;      /* while in flight */
	uint32_t adj;           /* ns the request waits by design (timeout length, recv until data) */
	uint8_t type, chan, ncompl;
	bool held, failed;
	bool gave_up;           /* still in flight when the final drain timed out: lost, even if cancelled */
};

/* Buffers a request needs while in flight. The callback argument is the id, not this: a duplicate
 * completion must not touch freed memory. */
struct opctx {
	struct evfd_op *op;
	union {
		struct msg m;
		unsigned char buf[64];
	} u;
};

/* A request a quiesce held back. */
struct intent {
	uint64_t t;
	uint32_t dur;
	uint8_t type, chan;
	struct msg m;
};

struct bring;

/* One move, from the request to the done callback. */
struct mwin {
	struct bring *b;
	int phase;
	unsigned to;            /* loop index */
	uint64_t t_req;
	uint64_t t_quiesced;    /* quiesce: when nothing was left in flight */
	uint64_t t_done;        /* written on the new owner, published by b->busy */
	int err;
};

struct bring {
	unsigned idx;
	struct evfd_ring *ring;
	int sv[MAXCHAN][2];     /* [0] the ring's end, [1] the peer's end; busy channels first, then idle */

	/* Ring domain: only this ring's callbacks and loop calls on its owner touch these. */
	struct oprec *rec;
	size_t nrec, caprec;
	unsigned inflight;
	uint64_t rx_next[MAXCHAN];
	uint64_t echo_ok[MAXCHAN];
	uint64_t rng;
	bool holding, stopping, move_posted, drained;
	struct mwin *qwin;
	struct intent *held;
	size_t nheld, capheld;
	uint64_t msgs_lost, msgs_dup, corrupt, bad_res, cancelled, submit_err, unknown_id, wrong_owner;
	uint64_t move_err, free_err;

	/* Main thread, with b->busy publishing the done callback's writes. */
	atomic_bool busy;
	atomic_uint owner;
	struct mwin *win;
	size_t nwin, capwin;
	struct evfd_ring_stats st;
};

struct pchan {
	int fd;
	uint16_t ring, chan;
	bool idle;              /* a keep-alive client: long think times */
	uint64_t next_ns, tx_seq, eagain, send_err, echo_bad;
	uint8_t *echo_seen;     /* per sequence number: echoes received */
	size_t echo_cap;
};

struct dvec {
	double *v;
	size_t n, cap;
};

static struct {
	double phase_s;
	unsigned nloops, move_us, nidle;
	struct evfd_loop *loops[MAX_LOOPS];
	struct bring rings[NRINGS];
	uint64_t ph_start[NPHASES], ph_end[NPHASES];
	unsigned long skipped[NPHASES], late[NPHASES];
	bool hung;

	/* Completion signals from loops to main. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned long signals;

	/* The peer. */
	pthread_t peer;
	atomic_bool peer_stop;
	struct pchan pch[NRINGS * MAXCHAN];     /* ring i, channel ch at i * nchan() + ch */

	/* The wakeup probe. */
	pthread_t probe_w, probe_r;
	int probe_efd;
	atomic_bool probe_stop;
	atomic_int probe_phase;         /* where samples go; -1 drops them */
	_Atomic uint64_t probe_ts;
	atomic_ulong probe_acked;
	int probe_cpu[2];               /* writer, reader; -1: not pinned */
	struct dvec probe[NPROBE];
} g;

static unsigned nchan(void)
{
	return NCHAN + g.nidle;
}

static struct pchan *pch(unsigned ring, unsigned ch)
{
	return &g.pch[ring * nchan() + ch];
}

static void die(const char *what, int err)
{
	fprintf(stderr, "swap-bench: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		die("realloc", ENOMEM);
	return p;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / NSEC), .tv_nsec = (long)(t % NSEC) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* xorshift64*: cheap, and each thread or ring has its own state, so no locking. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

static uint64_t rnd_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
	return lo + rnd(s) % (hi - lo + 1);
}

static void dvec_push(struct dvec *d, double x)
{
	if (d->n == d->cap) {
		d->cap = d->cap ? 2 * d->cap : 1024;
		d->v = xrealloc(d->v, d->cap * sizeof(*d->v));
	}
	d->v[d->n++] = x;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void dvec_sort(struct dvec *d)
{
	if (d->n)
		qsort(d->v, d->n, sizeof(*d->v), cmp_double);
}

/* Nearest rank on a sorted vector; 0 when empty. */
static double pct(const struct dvec *d, double p)
{
	size_t i;

	if (!d->n)
		return 0;
	i = (size_t)ceil(p / 100.0 * (double)d->n);
	return d->v[i ? i - 1 : 0];
}

static double dmax(const struct dvec *d)
{
	return d->n ? d->v[d->n - 1] : 0;
}

/* ---- signals from loop threads to main ------------------------------------------------------------ */

static void sig_post(void)
{
	pthread_mutex_lock(&g.lock);
	g.signals++;
	pthread_cond_broadcast(&g.cond);
	pthread_mutex_unlock(&g.lock);
}

static unsigned long sig_count(void)
{
	unsigned long n;

	pthread_mutex_lock(&g.lock);
	n = g.signals;
	pthread_mutex_unlock(&g.lock);
	return n;
}

/* Wait until @target signals have arrived; false on timeout (the library hangs). */
static bool sig_wait(unsigned long target, double secs)
{
	uint64_t dl = now_ns() + (uint64_t)(secs * 1e9);
	struct timespec ts = { .tv_sec = (time_t)(dl / NSEC), .tv_nsec = (long)(dl % NSEC) };
	bool ok;

	pthread_mutex_lock(&g.lock);
	while (g.signals < target)
		if (pthread_cond_timedwait(&g.cond, &g.lock, &ts) == ETIMEDOUT)
			break;
	ok = g.signals >= target;
	pthread_mutex_unlock(&g.lock);
	return ok;
}

/* ---- messages ------------------------------------------------------------------------------------- */

static uint64_t msg_check(const struct msg *m)
{
	uint64_t h = 0xcbf29ce484222325ull;

	h = (h ^ m->magic) * 0x100000001b3ull;
	h = (h ^ ((uint64_t)m->ring << 16 | m->chan)) * 0x100000001b3ull;
	h = (h ^ m->seq) * 0x100000001b3ull;
	h = (h ^ m->send_ns) * 0x100000001b3ull;
	return h;
}

static bool msg_valid(const struct msg *m, unsigned ring, unsigned chan)
{
	return m->magic == MSG_MAGIC && m->ring == ring && m->chan == chan && m->check == msg_check(m);
}

/* ---- traffic (ring domain) ------------------------------------------------------------------------ */

static void op_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);
static void move_done(struct evfd_ring *ring, int err, void *arg);

static void submit_op(struct bring *b, unsigned type, unsigned chan, uint64_t t_sub, uint32_t dur,
		      const struct msg *echo, bool held)
{
	struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = dur };
	struct io_uring_sqe sqe;
	struct opctx *c = calloc(1, sizeof(*c));
	struct oprec *r;
	size_t id;
	int err;

	if (!c)
		die("calloc", ENOMEM);
	if (b->nrec == b->caprec) {
		b->caprec = b->caprec ? 2 * b->caprec : 65536;
		b->rec = xrealloc(b->rec, b->caprec * sizeof(*b->rec));
	}
	id = b->nrec++;
	r = &b->rec[id];
	memset(r, 0, sizeof(*r));
	r->t_sub = t_sub;
	r->type = (uint8_t)type;
	r->chan = (uint8_t)chan;
	r->held = held;
	r->adj = type == OP_TMO ? dur : 0;
	memset(&sqe, 0, sizeof(sqe));
	switch (type) {
	case OP_RECV:
	case OP_IRECV:
		io_uring_prep_recv(&sqe, b->sv[chan][0], c->u.buf, sizeof(c->u.buf), 0);
		break;
	case OP_SEND:
	case OP_ISEND:
		c->u.m = *echo;
		io_uring_prep_send(&sqe, b->sv[chan][0], &c->u.m, sizeof(c->u.m), MSG_NOSIGNAL);
		break;
	case OP_TMO:
		/* The library copies the timespec and makes it absolute, so the stack is fine. */
		io_uring_prep_timeout(&sqe, &ts, 0, 0);
		break;
	default:
		io_uring_prep_nop(&sqe);
		break;
	}
	err = evfd_ring_submit(b->ring, &sqe, op_cb, (void *)(uintptr_t)id, 0, &c->op);
	if (err < 0) {
		r->failed = true;
		b->submit_err++;
		free(c);
		return;
	}
	r->ctx = c;
	b->inflight++;
}

/* Submit now, or hold back during a quiesce, or drop while stopping. */
static void want(struct bring *b, unsigned type, unsigned chan, uint64_t t, const struct msg *echo)
{
	uint32_t dur = 0;
	struct intent *in;

	if (b->stopping)
		return;
	if (type == OP_TMO)
		dur = (uint32_t)rnd_range(&b->rng, TMO_MIN_US * 1000, TMO_MAX_US * 1000);
	if (!b->holding) {
		submit_op(b, type, chan, t, dur, echo, false);
		return;
	}
	if (b->nheld == b->capheld) {
		b->capheld = b->capheld ? 2 * b->capheld : 64;
		b->held = xrealloc(b->held, b->capheld * sizeof(*b->held));
	}
	in = &b->held[b->nheld++];
	memset(in, 0, sizeof(*in));
	in->t = t;
	in->dur = dur;
	in->type = (uint8_t)type;
	in->chan = (uint8_t)chan;
	if (echo)
		in->m = *echo;
}

static void release_held(struct bring *b)
{
	size_t i;

	for (i = 0; i < b->nheld; i++) {
		struct intent *in = &b->held[i];

		submit_op(b, in->type, in->chan, in->t, in->dur, &in->m, true);
	}
	b->nheld = 0;
}

/* After every completion and state change: a quiesce whose ring has emptied moves it now; a stopping ring
 * that has emptied tells main. */
static void settle(struct bring *b)
{
	struct mwin *w = b->qwin;
	int err;

	if (b->inflight)
		return;
	if (b->holding && w && !b->move_posted) {
		w->t_quiesced = now_ns();
		b->move_posted = true;
		err = evfd_ring_move(b->ring, g.loops[w->to], move_done, w);
		if (err < 0) {
			/* We still own the ring: give up this move and carry on here. */
			w->err = err;
			w->t_done = now_ns();
			b->move_err++;
			b->holding = false;
			b->qwin = NULL;
			release_held(b);
			atomic_store_explicit(&b->busy, false, memory_order_release);
		}
	}
	if (b->stopping && !b->drained) {
		b->drained = true;
		sig_post();
	}
}

/* @r points into b->rec, which the next submission may reallocate: read it before submitting. */
static void on_recv(struct bring *b, struct oprec *r, struct opctx *c, int res)
{
	unsigned ch = r->chan;
	uint64_t t = r->t_done;
	struct msg m;

	if (res != (int)sizeof(m)) {
		if (res == -ECANCELED)
			b->cancelled++;   /* the library promises callers never see this for a move */
		else
			b->bad_res++;
		/* Any message is still in the socket: receive again, unless the socket is broken. */
		if (res == -ECANCELED || res == -EINTR || res == -EAGAIN)
			want(b, recv_type(ch), ch, now_ns(), NULL);
		return;
	}
	memcpy(&m, c->u.buf, sizeof(m));
	if (!msg_valid(&m, b->idx, ch)) {
		b->corrupt++;
		want(b, recv_type(ch), ch, now_ns(), NULL);
		return;
	}
	if (m.seq > b->rx_next[ch])
		b->msgs_lost += m.seq - b->rx_next[ch];
	if (m.seq < b->rx_next[ch])
		b->msgs_dup++;
	else
		b->rx_next[ch] = m.seq + 1;
	/* A recv cannot complete before the peer wrote: that part of the wait is the client's, not ours. For an
	 * idle connection it is nearly all of it (up to IDLE_CAP_US, well within 32 bits of ns). */
	if (m.send_ns > r->t_sub)
		r->adj = (uint32_t)(m.send_ns - r->t_sub < UINT32_MAX ? m.send_ns - r->t_sub : UINT32_MAX);
	want(b, recv_type(ch), ch, t, NULL);
	want(b, send_type(ch), ch, t, &m);
}

static void op_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct bring *b = evfd_ring_data(ring);
	uintptr_t id = (uintptr_t)arg;
	uint64_t t = now_ns();
	struct oprec *r;
	struct opctx *c;

	if (id >= b->nrec || b->rec[id].failed) {
		b->unknown_id++;
		return;
	}
	r = &b->rec[id];
	if (r->ncompl < UINT8_MAX)
		r->ncompl++;
	if (r->ncompl > 1 || (cqe->flags & IORING_CQE_F_MORE))
		return;   /* a duplicate (or a stray multishot CQE): counted, not acted on */
	r->t_done = t;
	c = r->ctx;
	r->ctx = NULL;
	b->inflight--;
	switch (r->type) {
	case OP_RECV:
	case OP_IRECV:
		on_recv(b, r, c, cqe->res);
		break;
	case OP_SEND:
	case OP_ISEND:
		if (cqe->res == (int)sizeof(struct msg))
			b->echo_ok[r->chan]++;
		else if (cqe->res == -ECANCELED)
			b->cancelled++;
		else
			b->bad_res++;
		break;
	case OP_TMO:
		if (cqe->res == -ECANCELED)
			b->cancelled++;
		else if (cqe->res != -ETIME)
			b->bad_res++;
		want(b, OP_TMO, 0, t, NULL);
		want(b, OP_NOP, 0, t, NULL);
		break;
	default:
		if (cqe->res != 0)
			b->bad_res++;
		break;
	}
	free(c);
	settle(b);
}

static void start_fn(struct evfd_loop *loop, void *arg)
{
	struct bring *b = arg;
	uint64_t t = now_ns();
	unsigned i;

	(void)loop;
	for (i = 0; i < nchan(); i++)
		want(b, recv_type(i), i, t, NULL);
	for (i = 0; i < NTMO; i++)
		want(b, OP_TMO, 0, t, NULL);
	sig_post();
}

/* Runs on the new owner once it has adopted and drained the ring: "the new owner reaping". */
static void move_done(struct evfd_ring *ring, int err, void *arg)
{
	struct mwin *w = arg;
	struct bring *b = w->b;

	(void)ring;
	w->t_done = now_ns();
	w->err = err;
	if (err < 0)
		b->move_err++;
	else
		atomic_store_explicit(&b->owner, w->to, memory_order_relaxed);
	if (w->phase == PH_QUIESCE) {
		if (err < 0) {
			/* Not on the owner thread then: nothing can be resubmitted here. Leave the ring held;
			 * main reports the failure. */
			atomic_store_explicit(&b->busy, false, memory_order_release);
			return;
		}
		b->holding = false;
		b->qwin = NULL;
		release_held(b);
	}
	atomic_store_explicit(&b->busy, false, memory_order_release);
}

/* Quiesce strategy, on the owner: stop submitting, and move once nothing is left in flight (settle). */
static void quiesce_fn(struct evfd_loop *loop, void *arg)
{
	struct mwin *w = arg;
	struct bring *b = w->b;

	if (evfd_ring_owner(b->ring) != loop)
		b->wrong_owner++;
	b->holding = true;
	b->move_posted = false;
	b->qwin = w;
	settle(b);
}

static void stop_fn(struct evfd_loop *loop, void *arg)
{
	struct bring *b = arg;

	(void)loop;
	b->stopping = true;
	settle(b);
}

/* Only after a failed drain: what is still in flight is lost (counted before the cancel can complete it);
 * cancel it so that the report can be made without loop threads writing the records. */
static void cancel_fn(struct evfd_loop *loop, void *arg)
{
	struct bring *b = arg;
	size_t i;

	(void)loop;
	for (i = 0; i < b->nrec; i++) {
		struct opctx *c = b->rec[i].ctx;

		if (c && !b->rec[i].ncompl) {
			b->rec[i].gave_up = true;
			(void)evfd_op_cancel(b->ring, c->op);
		}
	}
}

static void free_fn(struct evfd_loop *loop, void *arg)
{
	struct bring *b = arg;
	int err;

	(void)loop;
	err = evfd_ring_free(b->ring);
	if (err < 0) {
		b->free_err++;
		fprintf(stderr, "swap-bench: ring %u: evfd_ring_free: %s\n", b->idx, strerror(-err));
	}
	sig_post();
}

static void retired_fn(struct evfd_loop *loop, void *arg)
{
	(void)loop;
	(void)arg;
	sig_post();
}

/* ---- the peer: clients writing to the rings' sockets ---------------------------------------------- */

static void peer_read_echoes(struct pchan *p)
{
	struct msg m;
	ssize_t n;

	while ((n = recv(p->fd, &m, sizeof(m), MSG_DONTWAIT)) > 0) {
		if (n != (ssize_t)sizeof(m) || !msg_valid(&m, p->ring, p->chan) || m.seq >= p->tx_seq) {
			p->echo_bad++;
			continue;
		}
		if (p->echo_seen[m.seq] < UINT8_MAX)
			p->echo_seen[m.seq]++;
	}
}

/* Time until the client's next request: see PEER_MIN_US and IDLE_MEAN_US. */
static uint64_t think_ns(const struct pchan *p, uint64_t *rng)
{
	double u, x;

	if (!p->idle)
		return rnd_range(rng, PEER_MIN_US * 1000, PEER_MAX_US * 1000);
	u = ((double)(rnd(rng) >> 11) + 1.0) / 9007199254740992.0;   /* (0, 1] */
	x = -log(u) * IDLE_MEAN_US * 1000.0;
	return x < IDLE_CAP_US * 1000.0 ? (uint64_t)x : IDLE_CAP_US * 1000ull;
}

static void peer_send(struct pchan *p, uint64_t *rng)
{
	struct msg m;
	uint64_t t;

	if (p->tx_seq == p->echo_cap) {
		size_t cap = p->echo_cap ? 2 * p->echo_cap : 4096;

		p->echo_seen = xrealloc(p->echo_seen, cap);
		memset(p->echo_seen + p->echo_cap, 0, cap - p->echo_cap);
		p->echo_cap = cap;
	}
	t = now_ns();
	m.magic = MSG_MAGIC;
	m.ring = p->ring;
	m.chan = p->chan;
	m.seq = p->tx_seq;
	m.send_ns = t;
	m.check = msg_check(&m);
	if (send(p->fd, &m, sizeof(m), MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof(m)) {
		p->tx_seq++;
		p->next_ns = t + think_ns(p, rng);
	} else if (errno == EAGAIN) {
		/* The ring is not reading (a quiesce holds its recv back) and the socket is full: try again a
		 * think time later rather than every few microseconds, which would keep this thread busy on a
		 * two-CPU machine. The request is stamped when it is finally written, so the time the client was
		 * blocked is not counted as stall (kind to quiescing). */
		p->eagain++;
		p->next_ns = t + PEER_RETRY_US * 1000;
	} else {
		p->send_err++;
		p->next_ns = t + 1000000;
	}
}

/* One thread plays every client; it sleeps until the next request is due (never spins), and stamps each
 * request when it writes it. */
static void *peer_thread(void *arg)
{
	uint64_t rng = 0x9e3779b97f4a7c15ull, t, next;
	size_t i, n = NRINGS * nchan();

	(void)arg;
	/* Busy clients start at once; idle ones after a first think time, so that they are not in step. */
	t = now_ns();
	for (i = 0; i < n; i++)
		if (g.pch[i].idle)
			g.pch[i].next_ns = t + think_ns(&g.pch[i], &rng);
	while (!atomic_load(&g.peer_stop)) {
		t = now_ns();
		next = t + 10000000;   /* look at the stop flag at least every 10 ms */
		for (i = 0; i < n; i++) {
			struct pchan *p = &g.pch[i];

			if (p->next_ns <= t) {
				peer_read_echoes(p);
				peer_send(p, &rng);
			}
			if (p->next_ns < next)
				next = p->next_ns;
		}
		sleep_until(next);
	}
	for (i = 0; i < n; i++)
		peer_read_echoes(&g.pch[i]);
	return NULL;
}

/* ---- the probe: a bare cross-thread eventfd wakeup ------------------------------------------------ */

/* Loop threads that hand a ring over usually run on different CPUs, so the probe's two threads do too. */
static void probe_pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void probe_pick_cpus(void)
{
	cpu_set_t set;
	int cpu, n = 0;

	g.probe_cpu[0] = g.probe_cpu[1] = -1;
	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return;
	for (cpu = 0; cpu < CPU_SETSIZE && n < 2; cpu++)
		if (CPU_ISSET(cpu, &set))
			g.probe_cpu[n++] = cpu;
	if (n < 2)
		g.probe_cpu[0] = g.probe_cpu[1] = -1;
}

static void *probe_reader(void *arg)
{
	struct epoll_event ev = { .events = EPOLLIN };
	eventfd_t v;
	uint64_t t;
	int ep, ph;

	(void)arg;
	probe_pin(g.probe_cpu[1]);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, g.probe_efd, &ev) < 0)
		die("probe epoll", errno);
	for (;;) {
		if (epoll_wait(ep, &ev, 1, -1) < 1)
			continue;
		t = now_ns();
		(void)eventfd_read(g.probe_efd, &v);
		if (atomic_load(&g.probe_stop))
			break;
		ph = atomic_load(&g.probe_phase);
		if (ph >= 0)
			dvec_push(&g.probe[ph], (double)(t - atomic_load(&g.probe_ts)) / 1000.0);
		atomic_fetch_add(&g.probe_acked, 1);
	}
	close(ep);
	return NULL;
}

static void *probe_writer(void *arg)
{
	uint64_t rng = 0xd1b54a32d192ed03ull, t;
	unsigned long sent = 0;

	(void)arg;
	probe_pin(g.probe_cpu[0]);
	while (!atomic_load(&g.probe_stop)) {
		/* Long enough for the reader to be blocked again; wait for its ack so samples never merge. */
		t = now_ns() + rnd_range(&rng, PROBE_MIN_US * 1000, PROBE_MAX_US * 1000);
		sleep_until(t);
		while (atomic_load(&g.probe_acked) < sent && !atomic_load(&g.probe_stop))
			sleep_until(now_ns() + 20000);
		atomic_store(&g.probe_ts, now_ns());
		sent++;
		(void)eventfd_write(g.probe_efd, 1);
	}
	(void)eventfd_write(g.probe_efd, 1);   /* let the reader see the stop flag */
	return NULL;
}

/* ---- the mover (main thread) ---------------------------------------------------------------------- */

static struct bring *pick_ring(unsigned *rr)
{
	unsigned i;

	for (i = 0; i < NRINGS; i++) {
		struct bring *b = &g.rings[(*rr + i) % NRINGS];

		if (!atomic_load_explicit(&b->busy, memory_order_acquire)) {
			*rr = (*rr + i + 1) % NRINGS;
			return b;
		}
	}
	return NULL;
}

static void move_tick(int ph, unsigned *rr)
{
	struct bring *b = pick_ring(rr);
	struct mwin *w;
	unsigned from;
	int err;

	if (!b || b->nwin == b->capwin) {
		g.skipped[ph]++;   /* every ring is still in its previous move */
		return;
	}
	from = atomic_load_explicit(&b->owner, memory_order_relaxed);
	w = &b->win[b->nwin];
	memset(w, 0, sizeof(*w));
	w->b = b;
	w->phase = ph;
	w->to = (from + 1) % g.nloops;
	atomic_store_explicit(&b->busy, true, memory_order_relaxed);
	w->t_req = now_ns();
	if (ph == PH_RCU)
		err = evfd_ring_move(b->ring, g.loops[w->to], move_done, w);
	else
		err = evfd_loop_call(g.loops[from], quiesce_fn, w);
	if (err < 0) {
		atomic_store(&b->busy, false);
		fprintf(stderr, "swap-bench: ring %u: move request: %s\n", b->idx, strerror(-err));
		return;
	}
	b->nwin++;
}

static bool wait_moves(void)
{
	uint64_t dl = now_ns() + (uint64_t)(WAIT_S * 1e9);
	unsigned i;

	for (;;) {
		bool busy = false;

		for (i = 0; i < NRINGS; i++)
			busy |= atomic_load_explicit(&g.rings[i].busy, memory_order_acquire);
		if (!busy)
			return true;
		if (now_ns() > dl)
			return false;
		sleep_until(now_ns() + 100000);
	}
}

static void run_phase(int ph)
{
	uint64_t period = (uint64_t)g.move_us * 1000, t, next, end;
	unsigned rr = 0;

	atomic_store(&g.probe_phase, ph);
	t = now_ns();
	g.ph_start[ph] = t;
	end = t + (uint64_t)(g.phase_s * 1e9);
	next = t + period;
	while (ph != PH_BASE && next < end) {
		sleep_until(next);
		move_tick(ph, &rr);
		next += period;
		t = now_ns();
		if (next < t) {
			g.late[ph]++;   /* the mover itself fell behind: do not burst to catch up */
			next = t + period;
		}
	}
	sleep_until(end);
	if (!wait_moves()) {
		fprintf(stderr, "swap-bench: a move did not complete within %.0f s (phase %s)\n", WAIT_S,
			phase_name[ph]);
		g.hung = true;
	}
	g.ph_end[ph] = now_ns();
	atomic_store(&g.probe_phase, -1);
}

/* ---- analysis ------------------------------------------------------------------------------------- */

/* The window of @b that overlaps [t0, t1], if any. Windows of one ring are disjoint and in order. */
static bool in_move(const struct bring *b, uint64_t t0, uint64_t t1)
{
	size_t lo = 0, hi = b->nwin;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (b->win[mid].t_req <= t1)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!lo)
		return false;
	return (b->win[lo - 1].t_done ? b->win[lo - 1].t_done : UINT64_MAX) >= t0;
}

static int phase_of(uint64_t t)
{
	int ph;

	for (ph = 0; ph < NPHASES; ph++)
		if (t >= g.ph_start[ph] && t < g.ph_end[ph])
			return ph;
	return -1;
}

struct phase_stats {
	struct dvec lat, lat_type[NTYPES], stall, stall_type[NTYPES], calm_extra, move, qwait;
	struct dvec stall_busy;         /* stall without the idle connections' ops, for information */
	unsigned long ops, inmove, held;
	uint64_t win_ns;                /* total length of the phase's move windows, over all rings */
};

/* Where an operation's work starts: its submission, or for a recv the peer's write if that came later. */
static uint64_t start_of(const struct oprec *r)
{
	return is_recv(r->type) ? r->t_sub + r->adj : r->t_sub;
}

static double net_us(const struct oprec *r)
{
	int64_t d = (int64_t)(r->t_done - r->t_sub) - (int64_t)r->adj;

	return (double)(d > 0 ? d : 0) / 1000.0;
}

static void analyse(struct phase_stats *ps, double *base_med)
{
	unsigned i, ty;
	size_t k;
	int ph;

	/* Pass 1: latencies per phase and type; the baseline medians come from it. */
	for (i = 0; i < NRINGS; i++) {
		const struct bring *b = &g.rings[i];

		for (k = 0; k < b->nrec; k++) {
			const struct oprec *r = &b->rec[k];

			if (r->failed || r->ncompl != 1 || (ph = phase_of(start_of(r))) < 0)
				continue;
			ps[ph].ops++;
			dvec_push(&ps[ph].lat, net_us(r));
			dvec_push(&ps[ph].lat_type[r->type], net_us(r));
		}
	}
	for (ph = 0; ph < NPHASES; ph++) {
		dvec_sort(&ps[ph].lat);
		for (ty = 0; ty < NTYPES; ty++)
			dvec_sort(&ps[ph].lat_type[ty]);
	}
	for (ty = 0; ty < NTYPES; ty++)
		base_med[ty] = pct(&ps[PH_BASE].lat_type[ty], 50);

	/* Pass 2: extra latency of operations in flight during a move; for scale, of the others too. */
	for (i = 0; i < NRINGS; i++) {
		const struct bring *b = &g.rings[i];

		for (k = 0; k < b->nrec; k++) {
			const struct oprec *r = &b->rec[k];
			double extra;

			if (r->failed || r->ncompl != 1 || (ph = phase_of(start_of(r))) < 0)
				continue;
			extra = net_us(r) - base_med[r->type];
			if (extra < 0)
				extra = 0;
			if (in_move(b, r->t_sub, r->t_done)) {
				ps[ph].inmove++;
				ps[ph].held += r->held;
				dvec_push(&ps[ph].stall, extra);
				dvec_push(&ps[ph].stall_type[r->type], extra);
				if (r->type != OP_IRECV && r->type != OP_ISEND)
					dvec_push(&ps[ph].stall_busy, extra);
			} else {
				dvec_push(&ps[ph].calm_extra, extra);
			}
		}
		for (k = 0; k < b->nwin; k++) {
			const struct mwin *w = &b->win[k];

			if (w->err < 0 || !w->t_done)
				continue;
			dvec_push(&ps[w->phase].move, (double)(w->t_done - w->t_req) / 1000.0);
			ps[w->phase].win_ns += w->t_done - w->t_req;
			if (w->phase == PH_QUIESCE && w->t_quiesced)
				dvec_push(&ps[w->phase].qwait, (double)(w->t_quiesced - w->t_req) / 1000.0);
		}
	}
	for (ph = 0; ph < NPHASES; ph++) {
		dvec_sort(&ps[ph].stall);
		dvec_sort(&ps[ph].stall_busy);
		for (ty = 0; ty < NTYPES; ty++)
			dvec_sort(&ps[ph].stall_type[ty]);
		dvec_sort(&ps[ph].calm_extra);
		dvec_sort(&ps[ph].move);
		dvec_sort(&ps[ph].qwait);
	}
}

/* Exactly-once accounting: request ids, then the message streams in both directions. */
static void account(uint64_t *lost, uint64_t *dup, uint64_t *ids_lost, uint64_t *ids_dup)
{
	uint64_t msg_lost = 0, msg_dup = 0, echo_lost = 0, echo_dup = 0;
	unsigned i, ch;
	size_t k;

	*ids_lost = *ids_dup = 0;
	for (i = 0; i < NRINGS; i++) {
		struct bring *b = &g.rings[i];

		for (k = 0; k < b->nrec; k++) {
			if (b->rec[k].failed)
				continue;
			if (!b->rec[k].ncompl || b->rec[k].gave_up)
				(*ids_lost)++;
			else if (b->rec[k].ncompl > 1)
				(*ids_dup)++;
		}
		*ids_dup += b->unknown_id;
		msg_lost += b->msgs_lost;
		msg_dup += b->msgs_dup;
		for (ch = 0; ch < nchan(); ch++) {
			struct pchan *p = pch(i, ch);
			uint64_t expect = b->rx_next[ch], distinct = 0;
			struct msg m;

			/* What the ring did not receive must still be in its socket, in order. */
			while (recv(b->sv[ch][0], &m, sizeof(m), MSG_DONTWAIT) == (ssize_t)sizeof(m)) {
				if (!msg_valid(&m, i, ch)) {
					b->corrupt++;
					continue;
				}
				if (m.seq > expect)
					msg_lost += m.seq - expect;
				if (m.seq < expect)
					msg_dup++;
				else
					expect = m.seq + 1;
			}
			if (expect < p->tx_seq)
				msg_lost += p->tx_seq - expect;
			/* Every echo the ring sent arrived once. */
			for (k = 0; k < p->tx_seq; k++) {
				distinct += p->echo_seen[k] != 0;
				if (p->echo_seen[k] > 1)
					echo_dup += p->echo_seen[k] - 1u;
			}
			if (distinct < b->echo_ok[ch])
				echo_lost += b->echo_ok[ch] - distinct;
			if (distinct > b->echo_ok[ch])
				echo_dup += distinct - b->echo_ok[ch];
		}
	}
	*lost = *ids_lost + msg_lost + echo_lost;
	*dup = *ids_dup + msg_dup + echo_dup;
	printf("exactly-once: ids lost=%" PRIu64 " dup=%" PRIu64 "; messages lost=%" PRIu64 " dup=%" PRIu64
	       "; echoes lost=%" PRIu64 " dup=%" PRIu64 "\n", *ids_lost, *ids_dup, msg_lost, msg_dup,
	       echo_lost, echo_dup);
}

static void report(uint64_t lost, uint64_t dup)
{
	struct phase_stats ps[NPHASES];
	double base_med[NTYPES], rcu_stall, q_stall, wake_idle, wake_rcu;
	uint64_t submitted = 0, rearmed = 0, lib_moves = 0, corrupt = 0, bad = 0, canc = 0, serr = 0;
	uint64_t wrong = 0, eagain = 0, merr = 0, ferr = 0;
	unsigned i, ty;
	int ph;

	memset(ps, 0, sizeof(ps));
	analyse(ps, base_med);
	for (i = 0; i < NRINGS; i++) {
		const struct bring *b = &g.rings[i];

		submitted += b->nrec;
		rearmed += b->st.rearmed;
		lib_moves += b->st.moves;
		corrupt += b->corrupt;
		bad += b->bad_res;
		canc += b->cancelled;
		serr += b->submit_err;
		wrong += b->wrong_owner;
		merr += b->move_err;
		ferr += b->free_err;
	}
	for (i = 0; i < NRINGS * nchan(); i++) {
		eagain += g.pch[i].eagain + g.pch[i].send_err;
		corrupt += g.pch[i].echo_bad;
	}

	printf("\nper-operation latency (us: reap - submit, less timeout length / wait for the peer's write)\n");
	printf("%-9s %9s %9s %8s %8s %9s | %-38s\n", "phase", "ops", "ops/s", "p50", "p99", "max",
	       "p50 recv/send/timeout/nop/irecv/isend");
	for (ph = 0; ph < NPHASES; ph++) {
		double secs = (double)(g.ph_end[ph] - g.ph_start[ph]) / 1e9;

		printf("%-9s %9lu %9.0f %8.1f %8.1f %9.1f |", phase_name[ph], ps[ph].ops, (double)ps[ph].ops / secs,
		       pct(&ps[ph].lat, 50), pct(&ps[ph].lat, 99), dmax(&ps[ph].lat));
		for (ty = 0; ty < NTYPES; ty++)
			printf("%s%.1f", ty ? "/" : " ", pct(&ps[ph].lat_type[ty], 50));
		printf("\n");
	}
	printf("\nmoves (us: request -> done callback on the new owner), stalls (us over the baseline median)\n");
	printf("(skip: mover ticks that found every ring still in its previous move; moving%%: share of ring time "
	       "spent inside move windows)\n");
	printf("%-9s %6s %5s %7s %8s %8s %9s | %8s %7s %8s %8s %9s | %-15s\n", "phase", "moves", "skip",
	       "moving%", "p50", "p99", "max", "in-move", "held", "stl_p50", "stl_p99", "stl_max", "calm extra p99");
	for (ph = 0; ph < NPHASES; ph++) {
		const struct phase_stats *p = &ps[ph];
		double ring_ns = (double)(g.ph_end[ph] - g.ph_start[ph]) * NRINGS;

		printf("%-9s %6zu %5lu %7.1f %8.1f %8.1f %9.1f | %8lu %7lu %8.1f %8.1f %9.1f | %.1f\n",
		       phase_name[ph], p->move.n, g.skipped[ph], ring_ns > 0 ? 100.0 * (double)p->win_ns / ring_ns : 0,
		       pct(&p->move, 50), pct(&p->move, 99), dmax(&p->move), p->inmove, p->held, pct(&p->stall, 50),
		       pct(&p->stall, 99), dmax(&p->stall), pct(&p->calm_extra, 99));
	}
	for (ph = PH_RCU; ph < NPHASES; ph++) {
		printf("%s stall p99 by type (n):", phase_name[ph]);
		for (ty = 0; ty < NTYPES; ty++)
			printf(" %s=%.1f (%zu)", type_name[ty], pct(&ps[ph].stall_type[ty], 99),
			       ps[ph].stall_type[ty].n);
		printf("\n");
	}
	printf("stall p99 without the idle connections' ops (information; n): rcu=%.1f (%zu) quiesce=%.1f (%zu)\n",
	       pct(&ps[PH_RCU].stall_busy, 99), ps[PH_RCU].stall_busy.n, pct(&ps[PH_QUIESCE].stall_busy, 99),
	       ps[PH_QUIESCE].stall_busy.n);
	printf("quiesce wait per move (request -> nothing in flight), n=%zu: p50=%.1f p90=%.1f p99=%.1f max=%.1f us\n",
	       ps[PH_QUIESCE].qwait.n, pct(&ps[PH_QUIESCE].qwait, 50), pct(&ps[PH_QUIESCE].qwait, 90),
	       pct(&ps[PH_QUIESCE].qwait, 99), dmax(&ps[PH_QUIESCE].qwait));
	printf("baseline medians (us):");
	for (ty = 0; ty < NTYPES; ty++)
		printf(" %s=%.1f", type_name[ty], base_med[ty]);
	printf("\n");
	printf("library: submitted=%" PRIu64 " moves=%" PRIu64 " rearmed=%" PRIu64 "\n", submitted, lib_moves,
	       rearmed);
	if (corrupt || bad || canc || serr || wrong || merr || ferr || g.hung)
		printf("WARNING: corrupt=%" PRIu64 " bad_result=%" PRIu64 " ecanceled=%" PRIu64
		       " submit_err=%" PRIu64 " wrong_owner=%" PRIu64 " move_err=%" PRIu64 " free_err=%" PRIu64
		       " hung=%d\n", corrupt, bad, canc, serr, wrong, merr, ferr, g.hung);
	if (eagain)
		printf("note: peer send retries (socket full) or errors: %" PRIu64 "\n", eagain);
	if (g.late[PH_RCU] || g.late[PH_QUIESCE])
		printf("note: the mover fell behind its period %lu (rcu) and %lu (quiesce) times\n",
		       g.late[PH_RCU], g.late[PH_QUIESCE]);

	for (i = 0; i < NPROBE; i++)
		dvec_sort(&g.probe[i]);
	if (g.probe_cpu[0] >= 0)
		printf("\ncross-thread eventfd+epoll wakeup (two plain threads on CPUs %d and %d), us:\n",
		       g.probe_cpu[0], g.probe_cpu[1]);
	else
		printf("\ncross-thread eventfd+epoll wakeup (two plain threads, one CPU), us:\n");
	for (i = 0; i < NPROBE; i++)
		printf("  %-9s n=%-6zu p50=%.1f p99=%.1f max=%.1f\n", phase_name[i], g.probe[i].n,
		       pct(&g.probe[i], 50), pct(&g.probe[i], 99), dmax(&g.probe[i]));

	rcu_stall = pct(&ps[PH_RCU].stall, 99);
	q_stall = pct(&ps[PH_QUIESCE].stall, 99);
	wake_idle = pct(&g.probe[PH_IDLE], 99);
	wake_rcu = pct(&g.probe[PH_RCU], 99);
	printf("\nquiesce_stall_p99 / rcu_stall_p99 = %.1f / %.1f = ", q_stall, rcu_stall);
	if (rcu_stall > 0)
		printf("%.1f (target >= 100)\n", q_stall / rcu_stall);
	else
		printf("inf (target >= 100)\n");
	printf("calm extra p99 (ops in flight during no move; noise floor): baseline=%.1f rcu=%.1f quiesce=%.1f us\n",
	       pct(&ps[PH_BASE].calm_extra, 99), pct(&ps[PH_RCU].calm_extra, 99), pct(&ps[PH_QUIESCE].calm_extra, 99));
	printf("rcu_stall_p99 = %.1f us vs one cross-thread wakeup p99 = %.1f us idle (x%.1f), %.1f us during "
	       "the rcu phase (x%.1f); target: stall <= about one wakeup\n", rcu_stall, wake_idle,
	       wake_idle > 0 ? rcu_stall / wake_idle : 0, wake_rcu, wake_rcu > 0 ? rcu_stall / wake_rcu : 0);
	printf("xthread_wakeup_us_p50=%.1f p99=%.1f\n", pct(&g.probe[PH_IDLE], 50), wake_idle);
	if (g.hung)
		printf("FAIL: a move did not finish within %.0f s of its phase's end (safety net): the run is "
		       "invalid\n", WAIT_S);
	printf("moves=%zu move_us_p50=%.1f move_us_p99=%.1f rcu_stall_us_p99=%.1f quiesce_stall_us_p99=%.1f "
	       "lost=%" PRIu64 " duplicated=%" PRIu64 "\n", ps[PH_RCU].move.n, pct(&ps[PH_RCU].move, 50),
	       pct(&ps[PH_RCU].move, 99), rcu_stall, q_stall, lost, dup);

	for (ph = 0; ph < NPHASES; ph++) {
		free(ps[ph].lat.v);
		for (ty = 0; ty < NTYPES; ty++)
			free(ps[ph].lat_type[ty].v);
		free(ps[ph].stall.v);
		free(ps[ph].stall_busy.v);
		for (ty = 0; ty < NTYPES; ty++)
			free(ps[ph].stall_type[ty].v);
		free(ps[ph].calm_extra.v);
		free(ps[ph].move.v);
		free(ps[ph].qwait.v);
	}
}

/* ---- setup and teardown --------------------------------------------------------------------------- */

static void parse_args(int argc, char **argv)
{
	const char *s;
	int i;

	g.phase_s = PHASE_S_DEFAULT;
	g.nloops = 2;
	g.move_us = MOVE_US_DEFAULT;
	g.nidle = NIDLE_DEFAULT;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			g.phase_s = 0.5;
		} else {
			fprintf(stderr, "usage: swap-bench [--quick]\n"
				"env: SWAP_BENCH_SECONDS, SWAP_BENCH_LOOPS, SWAP_BENCH_MOVE_US, SWAP_BENCH_IDLE\n");
			exit(2);
		}
	}
	if ((s = getenv("SWAP_BENCH_SECONDS")) && atof(s) > 0)
		g.phase_s = atof(s);
	if ((s = getenv("SWAP_BENCH_LOOPS")) && atoi(s) >= 2 && atoi(s) <= MAX_LOOPS)
		g.nloops = (unsigned)atoi(s);
	if ((s = getenv("SWAP_BENCH_MOVE_US")) && atoi(s) > 0)
		g.move_us = (unsigned)atoi(s);
	if ((s = getenv("SWAP_BENCH_IDLE")) && atoi(s) >= 0 && atoi(s) <= NIDLE_MAX)
		g.nidle = (unsigned)atoi(s);
}

static void setup_rings(void)
{
	unsigned i, ch;
	size_t capwin = 2 * ((size_t)(g.phase_s * 1e6) / g.move_us + 1) + 16;
	int err;

	for (i = 0; i < NRINGS; i++) {
		struct bring *b = &g.rings[i];

		b->idx = i;
		b->rng = 0x243f6a8885a308d3ull * (i + 1);
		b->capwin = capwin;
		b->win = calloc(capwin, sizeof(*b->win));
		if (!b->win)
			die("calloc", ENOMEM);
		for (ch = 0; ch < nchan(); ch++) {
			struct pchan *p = pch(i, ch);

			if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, b->sv[ch]) < 0)
				die("socketpair", errno);
			p->fd = b->sv[ch][1];
			p->ring = (uint16_t)i;
			p->chan = (uint16_t)ch;
			p->idle = ch >= NCHAN;
		}
		atomic_store(&b->owner, i % g.nloops);
		err = evfd_ring_new(&b->ring, g.loops[i % g.nloops], NULL);
		if (err < 0)
			die("evfd_ring_new", err);
		evfd_ring_set_data(b->ring, b);
	}
}

static void post_all(evfd_loop_fn fn)
{
	unsigned i;
	int err;

	for (i = 0; i < NRINGS; i++)
		if ((err = evfd_loop_call(g.loops[atomic_load(&g.rings[i].owner)], fn, &g.rings[i])) < 0)
			die("evfd_loop_call", err);
}

/* Stop submitting and wait until every ring has nothing in flight (each signals once, from settle). */
static bool stop_traffic(void)
{
	unsigned long base = sig_count();
	unsigned i;

	post_all(stop_fn);
	/* The peer keeps writing, so every pending recv completes. */
	if (sig_wait(base + NRINGS, WAIT_S))
		return true;
	fprintf(stderr, "swap-bench: rings did not drain within %.0f s; in flight:", WAIT_S);
	for (i = 0; i < NRINGS; i++) {
		struct evfd_ring_stats st;

		evfd_ring_stats(g.rings[i].ring, &st);
		fprintf(stderr, " ring%u=%" PRIu64 " (owner loop %u)", i, st.inflight, st.owner_id);
	}
	fprintf(stderr, "; cancelling them\n");
	post_all(cancel_fn);
	return sig_wait(base + NRINGS, WAIT_S);
}

static void free_all(void)
{
	unsigned long base = sig_count();
	unsigned i, ch;
	int err;

	post_all(free_fn);
	if (!sig_wait(base + NRINGS, WAIT_S))
		die("freeing rings timed out", ETIMEDOUT);
	/* Retire every loop into the last one (they own nothing now), then free them in that order. */
	base = sig_count();
	for (i = 0; i + 1 < g.nloops; i++)
		if ((err = evfd_loop_retire(g.loops[i], g.loops[g.nloops - 1], retired_fn, NULL)) < 0)
			die("evfd_loop_retire", err);
	if (!sig_wait(base + g.nloops - 1, WAIT_S))
		die("retiring loops timed out", ETIMEDOUT);
	for (i = 0; i < g.nloops; i++) {
		err = evfd_loop_free(g.loops[i]);
		if (err < 0)
			fprintf(stderr, "swap-bench: evfd_loop_free(loop %u): %s\n", i, strerror(-err));
	}
	for (i = 0; i < NRINGS; i++) {
		struct bring *b = &g.rings[i];

		for (ch = 0; ch < nchan(); ch++) {
			close(b->sv[ch][0]);
			close(b->sv[ch][1]);
			free(pch(i, ch)->echo_seen);
		}
		free(b->rec);
		free(b->held);
		free(b->win);
	}
	for (i = 0; i < NPROBE; i++)
		free(g.probe[i].v);
}

int main(int argc, char **argv)
{
	pthread_condattr_t ca;
	uint64_t lost, dup, ids_lost, ids_dup;
	unsigned long base;
	unsigned i;
	bool drained;
	int err;

	parse_args(argc, argv);
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_mutex_init(&g.lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g.cond, &ca);
	pthread_condattr_destroy(&ca);

	printf("swap-bench: %u loops, %d rings; per ring %d busy recv (peer writes every %d-%d us, uniform) + echo "
	       "send, %u idle keep-alive recv (think time exponential, mean %d us, capped at %d us) + echo send, "
	       "%d timeouts (%d-%d us) + a NOP each; a move every %u us for both strategies; %.2f s per phase\n",
	       g.nloops, NRINGS, NCHAN, PEER_MIN_US, PEER_MAX_US, g.nidle, IDLE_MEAN_US, IDLE_CAP_US, NTMO,
	       TMO_MIN_US, TMO_MAX_US, g.move_us, g.phase_s);

	/* The bare wakeup first, on an otherwise idle process; it keeps running during the phases. */
	g.probe_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (g.probe_efd < 0)
		die("eventfd", errno);
	probe_pick_cpus();
	atomic_store(&g.probe_phase, PH_IDLE);
	if ((err = pthread_create(&g.probe_r, NULL, probe_reader, NULL)) ||
	    (err = pthread_create(&g.probe_w, NULL, probe_writer, NULL)))
		die("pthread_create", err);
	sleep_until(now_ns() + (uint64_t)(IDLE_PROBE_S * 1e9));
	atomic_store(&g.probe_phase, -1);

	for (i = 0; i < g.nloops; i++) {
		char name[32];

		snprintf(name, sizeof(name), "swapb-loop%u", i);
		err = evfd_loop_spawn(&g.loops[i], name);
		if (err < 0)
			die("evfd_loop_spawn", err);
	}
	setup_rings();
	if ((err = pthread_create(&g.peer, NULL, peer_thread, NULL)))
		die("pthread_create", err);
	/* Queued behind each ring's adoption, so the owner submits. */
	base = sig_count();
	for (i = 0; i < NRINGS; i++)
		if ((err = evfd_loop_call(g.loops[i % g.nloops], start_fn, &g.rings[i])) < 0)
			die("evfd_loop_call", err);
	if (!sig_wait(base + NRINGS, WAIT_S))
		die("starting traffic timed out", ETIMEDOUT);
	sleep_until(now_ns() + (uint64_t)(WARMUP_S * 1e9));

	for (i = 0; i < NPHASES && !g.hung; i++) {
		run_phase((int)i);
		sleep_until(now_ns() + (uint64_t)(GAP_S * 1e9));
	}

	drained = !g.hung && stop_traffic();
	atomic_store(&g.peer_stop, true);
	pthread_join(g.peer, NULL);
	atomic_store(&g.probe_stop, true);
	pthread_join(g.probe_w, NULL);
	pthread_join(g.probe_r, NULL);
	close(g.probe_efd);

	if (drained) {
		for (i = 0; i < NRINGS; i++)
			evfd_ring_stats(g.rings[i].ring, &g.rings[i].st);
	}
	account(&lost, &dup, &ids_lost, &ids_dup);
	if (!drained) {
		/* Loop threads may still touch ring state: report (racily) without freeing (see stderr). */
		fprintf(stderr, "swap-bench: not freeing rings or loops after a failed drain or a hung move\n");
		report(lost, dup);
		return 1;
	}
	report(lost, dup);
	free_all();
	pthread_cond_destroy(&g.cond);
	pthread_mutex_destroy(&g.lock);
	return lost || dup ? 1 : 0;
}
