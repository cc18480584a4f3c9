/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * evfd-demo: io_uring rings moving between libev loops while I/O flows.
 *
 * Three loops run on threads of their own. Each of two rings carries
 *  - a stream of numbered records over a socketpair: one end sends batches through the ring, the other
 *    end receives them with a pending recv and checks that every record arrives once and in order;
 *  - a TCP listener on 127.0.0.1 (port 0) with a multishot accept, fed by a client thread that connects
 *    now and then.
 * The main thread moves each ring to another loop every 200 ms and prints the counters once a second.
 * At the end it retires two loops into the third (their rings leave with their pending requests), stops
 * the traffic, frees everything, and exits 0 only if every record and every connection arrived exactly
 * once, in order.
 *
 * Everything a ring's callbacks touch lives in its struct demo_ring and needs no lock: a ring is a
 * serialisation domain, wherever it runs. The main thread only reads atomic counters.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <evfd.h>

#define NLOOPS 3
#define NRINGS 2
#define MOVE_PERIOD_MS 200
#define PRINT_PERIOD_MS 1000
#define CONNECT_PERIOD_MS 20
#define WAIT_MS 10000            /* longer than this at shutdown means the library hangs */
#define REC_SIZE 16              /* a record: sequence number, check word */
#define BATCH 256                /* records per send */
#define BUF_SIZE (REC_SIZE * BATCH)
#define MAX_REPORTS 5            /* mismatches printed per ring; the rest are only counted */

struct demo_ring {
	unsigned idx;
	struct evfd_ring *ring;
	int sv[2];                   /* sv[0] sends, sv[1] receives */
	int lfd;                     /* TCP listener */
	uint16_t port;

	/* Ring domain: only this ring's callbacks touch these, on whichever loop owns the ring. */
	unsigned char sbuf[BUF_SIZE];
	size_t soff;                 /* bytes of sbuf already sent */
	uint64_t next_seq;           /* next record to put into sbuf */
	unsigned char rbuf[BUF_SIZE];
	size_t rfill;                /* bytes in rbuf not yet parsed (less than a record) */
	uint64_t expect_seq;
	unsigned reports;
	struct evfd_op *accept_op;   /* the multishot accept, while armed */
	bool accept_cancelled;
	bool stopping;
	uint64_t accept_target;      /* connections the client made, known once it has stopped */
	bool send_done, recv_done, accept_done;

	/* Written by the ring's callbacks (or the client thread), read by the main thread. */
	atomic_uint_fast64_t sent, received, bytes, accepted, connected, errors;
	atomic_bool finished;        /* all three streams have ended */
	atomic_bool freed;
	atomic_int free_err;
};

static struct evfd_loop *loops[NLOOPS];
static struct demo_ring rings[NRINGS];
static atomic_uint_fast64_t moves_posted, moves_done, move_errors, retired;
static atomic_bool client_stop;

/* ---- helpers ------------------------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A check word that depends on the ring too, so records that crossed streams would be noticed. */
static uint64_t rec_check(const struct demo_ring *d, uint64_t seq)
{
	return (seq * UINT64_C(0x9e3779b97f4a7c15)) ^ (d->idx + 1);
}

static void ring_error(struct demo_ring *d, const char *what, int err)
{
	atomic_fetch_add(&d->errors, 1);
	fprintf(stderr, "evfd-demo: ring%u: %s: %s\n", d->idx, what, strerror(-err));
}

/* Map a loop id (evfd_loop_id) to our index, for printing. */
static int loop_index(unsigned id)
{
	for (int i = 0; i < NLOOPS; i++)
		if (loops[i] && evfd_loop_id(loops[i]) == id)
			return i;
	return -1;
}

/* ---- the record stream and the listener: ring callbacks ----------------------------------------- */

static void send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);
static void recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);
static void accept_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);

static void check_finished(struct demo_ring *d)
{
	/* Release: the main thread reads the ring's final state after seeing this. */
	if (d->send_done && d->recv_done && d->accept_done)
		atomic_store_explicit(&d->finished, true, memory_order_release);
}

static void fill_batch(struct demo_ring *d)
{
	for (unsigned i = 0; i < BATCH; i++) {
		uint64_t seq = d->next_seq++, chk = rec_check(d, seq);

		memcpy(d->sbuf + i * REC_SIZE, &seq, sizeof(seq));
		memcpy(d->sbuf + i * REC_SIZE + sizeof(seq), &chk, sizeof(chk));
	}
	d->soff = 0;
}

static void end_send(struct demo_ring *d)
{
	/* EOF tells the receiver that nothing more is coming, so it can check the total. */
	shutdown(d->sv[0], SHUT_WR);
	d->send_done = true;
	check_finished(d);
}

/* One send in flight at a time: two could complete out of order, and the stream must stay ordered. */
static void submit_send(struct demo_ring *d)
{
	struct io_uring_sqe sqe;
	int err;

	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_send(&sqe, d->sv[0], d->sbuf + d->soff, BUF_SIZE - d->soff, MSG_NOSIGNAL);
	err = evfd_ring_submit(d->ring, &sqe, send_cb, d, 0, NULL);
	if (err < 0) {
		ring_error(d, "submit send", err);
		end_send(d);
	}
}

static void send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct demo_ring *d = arg;

	if (cqe->res < 0) {
		if (cqe->res == -EINTR || cqe->res == -EAGAIN) {
			submit_send(d);
			return;
		}
		ring_error(d, "send", cqe->res);
		end_send(d);
		return;
	}
	/* A stream socket may take part of a batch: send the rest before the next batch. */
	d->soff += (size_t)cqe->res;
	if (d->soff == BUF_SIZE) {
		atomic_fetch_add_explicit(&d->sent, BATCH, memory_order_relaxed);
		if (d->stopping) {
			end_send(d);
			return;
		}
		fill_batch(d);
	}
	submit_send(d);
}

static void submit_recv(struct demo_ring *d)
{
	struct io_uring_sqe sqe;
	int err;

	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_recv(&sqe, d->sv[1], d->rbuf + d->rfill, BUF_SIZE - d->rfill, 0);
	err = evfd_ring_submit(d->ring, &sqe, recv_cb, d, 0, NULL);
	if (err < 0) {
		ring_error(d, "submit recv", err);
		d->recv_done = true;
		check_finished(d);
	}
}

static void check_records(struct demo_ring *d)
{
	size_t off;

	for (off = 0; off + REC_SIZE <= d->rfill; off += REC_SIZE) {
		uint64_t seq, chk;

		memcpy(&seq, d->rbuf + off, sizeof(seq));
		memcpy(&chk, d->rbuf + off + sizeof(seq), sizeof(chk));
		if (seq == d->expect_seq && chk == rec_check(d, seq)) {
			d->expect_seq++;
			atomic_fetch_add_explicit(&d->received, 1, memory_order_relaxed);
			continue;
		}
		atomic_fetch_add(&d->errors, 1);
		if (d->reports++ < MAX_REPORTS)
			fprintf(stderr, "evfd-demo: ring%u: expected record %" PRIu64 ", got %" PRIu64 "%s\n",
				d->idx, d->expect_seq, seq, chk == rec_check(d, seq) ? "" : " (corrupt)");
		d->expect_seq = seq + 1;   /* resynchronise, so one loss is reported once */
	}
	memmove(d->rbuf, d->rbuf + off, d->rfill - off);
	d->rfill -= off;
}

static void recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct demo_ring *d = arg;

	if (cqe->res < 0) {
		if (cqe->res == -EINTR || cqe->res == -EAGAIN) {
			submit_recv(d);
			return;
		}
		ring_error(d, "recv", cqe->res);
		d->recv_done = true;
		check_finished(d);
		return;
	}
	if (cqe->res == 0) {
		if (d->rfill)
			ring_error(d, "end of stream inside a record", -EPROTO);
		d->recv_done = true;
		check_finished(d);
		return;
	}
	atomic_fetch_add_explicit(&d->bytes, (uint64_t)cqe->res, memory_order_relaxed);
	d->rfill += (size_t)cqe->res;
	check_records(d);
	submit_recv(d);
}

static void submit_accept(struct demo_ring *d)
{
	struct io_uring_sqe sqe;
	int err;

	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_multishot_accept(&sqe, d->lfd, NULL, NULL, SOCK_CLOEXEC);
	d->accept_cancelled = false;
	err = evfd_ring_submit(d->ring, &sqe, accept_cb, d, 0, &d->accept_op);
	if (err < 0) {
		d->accept_op = NULL;
		ring_error(d, "submit accept", err);
		d->accept_done = true;
		check_finished(d);
	}
}

/* At the end, once every connection the client made has been accepted, nothing more will come. */
static void maybe_cancel_accept(struct demo_ring *d)
{
	int err;

	if (!d->stopping || !d->accept_op || d->accept_cancelled ||
	    atomic_load_explicit(&d->accepted, memory_order_relaxed) < d->accept_target)
		return;
	err = evfd_op_cancel(d->ring, d->accept_op);
	if (err < 0)
		ring_error(d, "cancel accept", err);
	else
		d->accept_cancelled = true;
}

static void accept_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct demo_ring *d = arg;

	if (cqe->res >= 0) {
		close(cqe->res);
		atomic_fetch_add_explicit(&d->accepted, 1, memory_order_relaxed);
	} else if (cqe->res != -ECANCELED || !d->accept_cancelled) {
		/* -ECANCELED that we did not ask for would be a move leaking through: an error. */
		ring_error(d, "accept", cqe->res);
	}
	if (cqe->flags & IORING_CQE_F_MORE) {
		maybe_cancel_accept(d);
		return;
	}
	/* The multishot request has ended; the handle is gone. */
	d->accept_op = NULL;
	if (d->accept_cancelled || (cqe->res < 0 && cqe->res != -ECANCELED)) {
		d->accept_done = true;
		check_finished(d);
		return;
	}
	/* Ended for another reason (CQ overflow, say): arm it again. */
	submit_accept(d);
}

/* ---- functions run on a ring's owner, as the done callback of a move to that loop ----------------- */

static void start_cb(struct evfd_ring *ring, int err, void *arg)
{
	struct demo_ring *d = arg;

	atomic_fetch_add(&moves_done, 1);
	if (err < 0) {
		ring_error(d, "start", err);
		return;
	}
	fill_batch(d);
	submit_recv(d);
	submit_send(d);
	submit_accept(d);
}

static void stop_cb(struct evfd_ring *ring, int err, void *arg)
{
	struct demo_ring *d = arg;

	if (err < 0) {
		ring_error(d, "stop", err);
		return;
	}
	/* The sender stops after its current batch; the receiver ends at EOF; the accept ends once it has
	 * taken every connection the (now stopped) client made. */
	d->stopping = true;
	d->accept_target = atomic_load(&d->connected);
	maybe_cancel_accept(d);
}

static void free_cb(struct evfd_ring *ring, int err, void *arg)
{
	struct demo_ring *d = arg;

	atomic_store(&d->free_err, err < 0 ? err : evfd_ring_free(ring));
	atomic_store(&d->freed, true);
}

static void move_done(struct evfd_ring *ring, int err, void *arg)
{
	struct demo_ring *d = arg;

	if (err < 0) {
		atomic_fetch_add(&move_errors, 1);
		ring_error(d, "move", err);
	}
	atomic_fetch_add(&moves_done, 1);
}

static void retire_done(struct evfd_loop *loop, void *arg)
{
	atomic_fetch_add(&retired, 1);
}

/* ---- the client ---------------------------------------------------------------------------------- */

static void *client_main(void *arg)
{
	struct timespec pause = { 0, CONNECT_PERIOD_MS * 1000000L };

	while (!atomic_load(&client_stop)) {
		for (unsigned i = 0; i < NRINGS; i++) {
			struct demo_ring *d = &rings[i];
			struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(d->port),
						  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

			if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
				ring_error(d, "client connect", -errno);
			} else {
				atomic_fetch_add(&d->connected, 1);
			}
			if (fd >= 0)
				close(fd);
		}
		nanosleep(&pause, NULL);
	}
	return NULL;
}

/* ---- the main thread ----------------------------------------------------------------------------- */

static int setup_sockets(struct demo_ring *d)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, d->sv) < 0)
		return -errno;
	d->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (d->lfd < 0 || bind(d->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(d->lfd, 512) < 0 ||
	    getsockname(d->lfd, (struct sockaddr *)&sa, &len) < 0)
		return -errno;
	d->port = ntohs(sa.sin_port);
	return 0;
}

/* What to do about the errors evfd_ring_new reports when io_uring itself is unavailable. */
static const char *ring_new_hint(int err)
{
	switch (err) {
	case -ENOSYS:
		return "this kernel has no io_uring, or a seccomp filter blocks it";
	case -EPERM:
		return "io_uring is disabled (sysctl kernel.io_uring_disabled) or blocked by a seccomp filter";
	case -ENOMEM:
		return "out of memory for the ring (check the memory cgroup limit and ulimit -l)";
	default:
		return "see libevfd(3)";
	}
}

static void print_status(unsigned long secs)
{
	uint64_t moves = 0, ops = 0, bytes = 0, accepts = 0, rearmed = 0, errors = move_errors;

	printf("t=%lus", secs);
	for (unsigned i = 0; i < NRINGS; i++) {
		struct evfd_ring_stats st;

		evfd_ring_stats(rings[i].ring, &st);
		printf(" ring%u on loop%d", i, loop_index(st.owner_id));
		moves += st.moves;
		ops += st.completed;
		rearmed += st.rearmed;
		bytes += atomic_load_explicit(&rings[i].bytes, memory_order_relaxed);
		accepts += atomic_load_explicit(&rings[i].accepted, memory_order_relaxed);
		errors += atomic_load_explicit(&rings[i].errors, memory_order_relaxed);
	}
	printf(" moves=%" PRIu64 " ops=%" PRIu64 " bytes=%" PRIu64 " accepts=%" PRIu64 " rearmed=%" PRIu64
	       " errors=%" PRIu64 "\n", moves, ops, bytes, accepts, rearmed, errors);
	fflush(stdout);
}

/* Poll until @cond holds; signals stay blocked, so a second Ctrl-C does not cut the cleanup short. */
static bool wait_for(bool (*cond)(void), const char *what)
{
	uint64_t end = now_ms() + WAIT_MS;
	struct timespec pause = { 0, 1000000L };

	while (!cond()) {
		if (now_ms() > end) {
			fprintf(stderr, "evfd-demo: still waiting for %s after %d ms: the library hangs\n", what,
				WAIT_MS);
			return false;
		}
		nanosleep(&pause, NULL);
	}
	return true;
}

static bool all_moves_done(void)
{
	return atomic_load(&moves_done) == atomic_load(&moves_posted);
}

static bool loops_retired(void)
{
	return atomic_load(&retired) == NLOOPS - 1;
}

static bool rings_finished(void)
{
	for (unsigned i = 0; i < NRINGS; i++) {
		struct evfd_ring_stats st;

		if (!atomic_load_explicit(&rings[i].finished, memory_order_acquire))
			return false;
		/* Internal cancels may still be in flight after the last callback. */
		evfd_ring_stats(rings[i].ring, &st);
		if (st.inflight)
			return false;
	}
	return true;
}

static bool rings_freed(void)
{
	for (unsigned i = 0; i < NRINGS; i++)
		if (!atomic_load(&rings[i].freed))
			return false;
	return true;
}

static void dump_state(void)
{
	for (unsigned i = 0; i < NRINGS; i++) {
		struct evfd_ring_stats st;

		if (atomic_load(&rings[i].freed) && atomic_load(&rings[i].free_err) == 0)
			continue;   /* gone */
		evfd_ring_stats(rings[i].ring, &st);
		fprintf(stderr, "  ring%u: owner loop%d inflight=%" PRIu64 " submitted=%" PRIu64
			" completed=%" PRIu64 " moves=%" PRIu64 " rearmed=%" PRIu64 " finished=%d\n", i,
			loop_index(st.owner_id), st.inflight, st.submitted, st.completed, st.moves, st.rearmed,
			(int)atomic_load(&rings[i].finished));
	}
	for (unsigned i = 0; i < NLOOPS; i++) {
		struct evfd_loop_stats ls;

		if (!loops[i])
			continue;
		evfd_loop_stats(loops[i], &ls);
		fprintf(stderr, "  loop%u: rings=%u inflight=%" PRIu64 " wakeups=%" PRIu64 " adopted=%" PRIu64 "\n",
			i, ls.rings, ls.inflight, ls.wakeups, ls.adopted);
	}
}

/* The library is stuck: freeing anything now could free memory it still uses, so leave at once. */
static void hang(void)
{
	dump_state();
	fflush(NULL);
	_exit(1);
}

/* Free a spawned loop; -EBUSY only means it has not yet noticed that its last ring or reference went. */
static int free_loop(unsigned i)
{
	uint64_t end = now_ms() + WAIT_MS;
	struct timespec pause = { 0, 1000000L };
	int err;

	while ((err = evfd_loop_free(loops[i])) == -EBUSY && now_ms() < end)
		nanosleep(&pause, NULL);
	if (err == 0)
		loops[i] = NULL;
	else
		fprintf(stderr, "evfd-demo: evfd_loop_free(loop%u): %s\n", i, strerror(-err));
	return err;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: evfd-demo [-t SECONDS] [-h]\n"
		"Moves two io_uring rings between three libev loops every %d ms while records stream through a\n"
		"socketpair and a client connects to a TCP listener, printing the counters every second.\n"
		"  -t SECONDS  run time (default 5; 0 runs until SIGINT or SIGTERM)\n"
		"  -h          show this help\n"
		"Exit status: 0 if every record and connection arrived exactly once and in order, else 1.\n",
		MOVE_PERIOD_MS);
}

int main(int argc, char **argv)
{
	unsigned long duration = 5, secs = 0;
	uint64_t start, next_move, next_print, rnd;
	struct timespec ts;
	pthread_t client;
	sigset_t sigs;
	bool ok = true;
	int opt, err, sig;

	while ((opt = getopt(argc, argv, "t:h")) != -1) {
		char *end;

		switch (opt) {
		case 't':
			errno = 0;
			duration = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || optarg[0] == '-' || duration > 86400UL * 365) {
				fprintf(stderr, "evfd-demo: -t wants a number of seconds, not '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}

	/* Block SIGINT/SIGTERM before any thread starts, so that only sigtimedwait below receives them (loop
	 * threads block every signal anyway). */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	for (unsigned i = 0; i < NLOOPS; i++) {
		char name[16];

		snprintf(name, sizeof(name), "evfd-loop%u", i);
		err = evfd_loop_spawn(&loops[i], name);
		if (err < 0) {
			fprintf(stderr, "evfd-demo: evfd_loop_spawn: %s\n", strerror(-err));
			return 1;
		}
	}
	for (unsigned i = 0; i < NRINGS; i++) {
		struct demo_ring *d = &rings[i];

		d->idx = i;
		d->sv[0] = d->sv[1] = d->lfd = -1;
		err = setup_sockets(d);
		if (err < 0) {
			fprintf(stderr, "evfd-demo: sockets: %s\n", strerror(-err));
			return 1;
		}
		err = evfd_ring_new(&d->ring, loops[i], NULL);
		if (err < 0) {
			fprintf(stderr, "evfd-demo: evfd_ring_new: %s: %s\n", strerror(-err), ring_new_hint(err));
			return 1;
		}
		/* A move to the ring's own loop just runs the callback there, once the loop has the ring: the
		 * way to reach a ring's owner from any thread. */
		atomic_fetch_add(&moves_posted, 1);
		err = evfd_ring_move(d->ring, loops[i], start_cb, d);
		if (err < 0) {
			fprintf(stderr, "evfd-demo: evfd_ring_move: %s\n", strerror(-err));
			return 1;
		}
	}
	err = pthread_create(&client, NULL, client_main, NULL);
	if (err) {
		fprintf(stderr, "evfd-demo: pthread_create: %s\n", strerror(err));
		return 1;
	}

	printf("evfd-demo: %d loops, %d rings, a move every %d ms, ", NLOOPS, NRINGS, MOVE_PERIOD_MS);
	if (duration)
		printf("for %lu s\n", duration);
	else
		printf("until SIGINT or SIGTERM\n");
	fflush(stdout);

	start = now_ms();
	next_move = start + MOVE_PERIOD_MS;
	next_print = start + PRINT_PERIOD_MS;
	rnd = (uint64_t)start * 2654435761u + (uint64_t)getpid();
	for (;;) {
		uint64_t now = now_ms(), until = next_move < next_print ? next_move : next_print;

		if (duration && start + duration * 1000 < until)
			until = start + duration * 1000;
		if (until > now) {
			ts.tv_sec = (time_t)((until - now) / 1000);
			ts.tv_nsec = (long)((until - now) % 1000) * 1000000L;
			sig = sigtimedwait(&sigs, NULL, &ts);
			if (sig == SIGINT || sig == SIGTERM) {
				printf("evfd-demo: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
				break;
			}
			continue;   /* timeout or EINTR: look at the clock again */
		}
		if (now >= next_move) {
			/* Each ring to a random loop other than the one it is on or heading to. */
			for (unsigned i = 0; i < NRINGS; i++) {
				struct evfd_ring_stats st;
				int cur, to;

				evfd_ring_stats(rings[i].ring, &st);
				cur = loop_index(st.owner_id);
				rnd ^= rnd << 13;
				rnd ^= rnd >> 7;
				rnd ^= rnd << 17;
				to = (cur + 1 + (int)(rnd % (NLOOPS - 1))) % NLOOPS;
				atomic_fetch_add(&moves_posted, 1);
				err = evfd_ring_move(rings[i].ring, loops[to], move_done, &rings[i]);
				if (err < 0) {
					atomic_fetch_sub(&moves_posted, 1);
					ring_error(&rings[i], "evfd_ring_move", err);
				}
			}
			next_move += MOVE_PERIOD_MS;
		}
		if (now >= next_print) {
			print_status(++secs);
			next_print += PRINT_PERIOD_MS;
		}
		if (duration && now >= start + duration * 1000)
			break;
	}

	/* Shutdown, in an order that keeps every request accounted for: */
	/* 1. No more moves; let the posted ones land. */
	if (!wait_for(all_moves_done, "the posted moves"))
		hang();
	/* 2. No more connections. */
	atomic_store(&client_stop, true);
	pthread_join(client, NULL);
	/* 3. Retire loops 1 and 2 into loop 0: their rings leave with the pending recv, send and accept,
	 *    which loop 0 re-arms; traffic keeps flowing meanwhile. */
	for (unsigned i = 1; i < NLOOPS; i++) {
		err = evfd_loop_retire(loops[i], loops[0], retire_done, NULL);
		if (err < 0) {
			fprintf(stderr, "evfd-demo: evfd_loop_retire(loop%u): %s\n", i, strerror(-err));
			hang();
		}
	}
	if (!wait_for(loops_retired, "loops 1 and 2 to retire"))
		hang();
	for (unsigned i = 1; i < NLOOPS; i++)
		if (free_loop(i) < 0)
			hang();
	/* 4. Stop the traffic on loop 0 (a move to the owner runs stop_cb there) and wait for every stream
	 *    to end and every request to complete. */
	for (unsigned i = 0; i < NRINGS; i++) {
		err = evfd_ring_move(rings[i].ring, loops[0], stop_cb, &rings[i]);
		if (err < 0) {
			ring_error(&rings[i], "evfd_ring_move", err);
			hang();
		}
	}
	if (!wait_for(rings_finished, "the traffic to stop"))
		hang();
	/* 5. Free the rings on their owner, then the last loop. */
	for (unsigned i = 0; i < NRINGS; i++) {
		err = evfd_ring_move(rings[i].ring, loops[0], free_cb, &rings[i]);
		if (err < 0) {
			ring_error(&rings[i], "evfd_ring_move", err);
			hang();
		}
	}
	if (!wait_for(rings_freed, "the rings to be freed"))
		hang();
	if (free_loop(0) < 0)
		hang();

	/* The verdict. */
	printf("evfd-demo: ran %.1f s, %" PRIu64 " moves requested\n", (double)(now_ms() - start) / 1000.0,
	       (uint64_t)atomic_load(&moves_posted));
	if (atomic_load(&move_errors))
		ok = false;
	for (unsigned i = 0; i < NRINGS; i++) {
		struct demo_ring *d = &rings[i];
		uint64_t sent = atomic_load(&d->sent), received = atomic_load(&d->received);
		uint64_t accepted = atomic_load(&d->accepted), connected = atomic_load(&d->connected);
		uint64_t errors = atomic_load(&d->errors);
		int ferr = atomic_load(&d->free_err);

		printf("  ring%u: %" PRIu64 " records sent, %" PRIu64 " received in order; %" PRIu64 " of %" PRIu64
		       " connections accepted; %" PRIu64 " errors\n", i, sent, received, accepted, connected, errors);
		if (ferr < 0)
			fprintf(stderr, "evfd-demo: ring%u: evfd_ring_free: %s\n", i, strerror(-ferr));
		if (sent != received || d->next_seq != d->expect_seq || accepted != connected || errors || ferr)
			ok = false;
		close(d->sv[0]);
		close(d->sv[1]);
		close(d->lfd);
	}
	printf("evfd-demo: %s\n", ok ? "OK: every record and every connection arrived exactly once, in order"
				     : "FAILED");
	return ok ? 0 : 1;
}
