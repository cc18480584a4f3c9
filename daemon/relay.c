/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The data plane of one ring. Each connection is two halves (client->backend "up", backend->client "down"; an
 * echo connection has only "up", sent back to the client). A half receives into the ring's provided buffers
 * and sends what it received to the other side, in order, one send at a time; while a send is in flight it
 * may already receive the next slice (at most two slices per half), so receiving and sending overlap. Where
 * the kernel has bundles (IORING_RECVSEND_BUNDLE), one receive takes several buffers at once, up to
 * RELAY_MAX_BUNDLE (1 MiB with 64 KiB buffers): a half that keeps filling its receives doubles what the next
 * may take, one whose send could not be taken whole (a slow reader) drops back to one buffer, and so does
 * every half while the ring's free buffers run low. A buffer returns to the ring once its slice has been
 * sent, so a slow reader stalls its sender instead of growing memory (backpressure), memory for data stays
 * within the pool (buffers x buffer_size per ring), and an idle connection holds no buffer.
 *
 * How a connection ends:
 * - EOF on one side becomes shutdown(SHUT_WR) on the other; the connection lives until both halves are done
 *   (a clean close, counted as closed).
 * - A side that fails (reset, or another socket error) is "dead": what evfdd already received from it still
 *   goes to the other side, then that side is reset too (SO_LINGER {1, 0} on close), once its socket's send
 *   queue has emptied (SIOCOUTQ) or after RESET_FLUSH_MS, so that a peer can tell a truncated stream from a
 *   complete one. A Unix stream socket has no reset: it is closed. Counted by the dead side's reason.
 * - A cut (idle timeout, failed connect, a forced stop, no resources) cancels everything in flight and closes
 *   both sides when it has come back: with a FIN, or with a reset for a forced stop.
 * Every accepted file descriptor is served, also on a ring that is draining or stopping, and also when its
 * accept completes after it was cancelled; only a hard limit closes one unserved, and that is counted.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/queue.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "accesslog.h"
#include "addr.h"
#include "carry.h"
#include "log.h"
#include "proxyproto.h"
#include "relay.h"
#include "sni.h"
#include "srclimit.h"
#include "tlshello.h"
#include "util.h"

#define RELAY_BGID 1
#define TICK_MS 1000
#define ACCEPT_RETRY_MS 100
#define RELAY_MAX_BUNDLE 16              /* buffers one receive may take */
#define BALANCE_PAUSE_MS 2
/* How long a reset waits for the surviving side's send queue to empty, and how often it looks. */
#define RESET_FLUSH_MS 1000
#define RESET_POLL_MS 5
/* The buffer for what comes before the data (PROXY header, ClientHello): grown from this up to PRE_MAX. */
#define PRE_FIRST 2048
#define PRE_MAX (EVFDD_PROXY_MAX + EVFDD_TLS_HELLO_MAX)

/* The kernel's name for bundles (Linux 6.10), missing from liburing 2.3's headers. */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
/* An accept that fails with -EAGAIN instead of waiting (Linux 6.10); older kernels refuse it (-EINVAL). */
#ifndef IORING_ACCEPT_DONTWAIT
#define IORING_ACCEPT_DONTWAIT (1U << 1)
#endif
/* Connections an acceptor that stops takes from its listener's queue at most (acceptor_sweep). */
#define ACCEPT_SWEEP_MAX 16

enum side { CLIENT, BACKEND };

struct conn;

/* What one receive brought: @len bytes over @nb buffers (all full but the last), @off of them sent. The
 * buffer ids are in @one, or for a bundle in @many (a bundle usually takes at most RELAY_MAX_BUNDLE
 * buffers, but the kernel may append a second round to a full one, up to what the ring holds). */
struct slice {
	unsigned short one, *many;
	unsigned short nb;
	unsigned len, off;
	unsigned char *heap;             /* or the data itself, copied out of the buffers (slice_copy_out) */
};

/* A sendmsg's header and vector, for a slice over several buffers; made on a half's first such send. */
struct slice_vec {
	struct msghdr msg;
	unsigned cap;
	struct iovec iov[];
};

struct half {
	struct conn *c;
	int from, to;
	struct evfd_op *rop, *sop;       /* the receive and the send in flight, or NULL */
	struct slice q[2];               /* received and not all sent yet, q[qh] first */
	unsigned char qh, qn;
	unsigned char cap;               /* buffers the next receive may take */
	bool eof;                        /* nothing more to receive: EOF, an error, or stopped */
	bool clean_eof;                  /* ... and it was EOF: the other side gets a FIN once all is sent */
	bool waiting;                    /* in the relay's queue for a buffer */
	bool done;                       /* finished: nothing in flight, held or to come */
	struct slice_vec *vec;
	TAILQ_ENTRY(half) wait;
};

/* Accepting on one service's listener. Lives while it accepts or has connections: a reload that drops its
 * service retires it (no more accepting, the listener reference goes at once) and the connections finish. */
struct acceptor {
	struct evfdd_relay *rl;
	TAILQ_ENTRY(acceptor) link;
	struct evfdd_svc *svc;
	struct evfdd_svc_block *blk;     /* this ring's counters for the service: only its owner writes them */
	struct evfdd_listener *lst;      /* NULL once retired and nothing is in flight on it */
	struct evfd_op *op, *retry_op;
	bool armed, retrying, retired;
	bool sweeping;                   /* its accept is a sweep's (acceptor_sweep) */
	unsigned swept;
	bool held;                       /* serving a connection it just accepted: not to be freed yet */
	bool out_of_fds;                 /* a backend socket failed with EMFILE/ENFILE: pause accepting */
	bool client_tcp;                 /* the listener is TCP (its connections can be reset) */
	struct __kernel_timespec retry_ts;
	TAILQ_HEAD(conn_lru, conn) lru;  /* its connections, oldest activity first */
};

struct conn {
	struct acceptor *acc;
	struct evfdd_svc *svc;
	int cfd, bfd;
	enum evfdd_carry_stage stage;    /* how far it got: what a resume starts again (conn_resume) */
	bool carried;                    /* exported to the next image (evfdd_relay_export) */
	int be;                          /* index of its backend in svc->pool, -1 while none */
	unsigned addr_k;                 /* which of the backend's addresses is being tried */
	bool trial;                      /* this connect is a down backend's trial */
	uint16_t tried[EVFDD_CONFIG_MAX_RETRIES + 1];   /* backends tried for it, in order */
	unsigned ntried;
	int last_err;                    /* of the last failed connect */
	struct evfdd_sockaddr baddr;     /* the backend address connected to */
	unsigned pending;                /* requests in flight */
	unsigned end;                    /* enum evfdd_end, or EVFDD_END_COUNT while none */
	bool cutting;                    /* everything cancelled: close once nothing is in flight */
	bool flushing;                   /* side @dead failed: the other side gets what is left, then a reset */
	bool rst_client, rst_backend;    /* close that side with SO_LINGER {1, 0} */
	enum side dead;
	uint64_t last_ns;
	uint64_t flush_end_ns;
	TAILQ_ENTRY(conn) lru;
	struct evfd_op *connect_op, *flush_op;
	struct __kernel_timespec cto, flush_ts;
	struct half up, down;

	struct evfdd_pool *pool;         /* where it picks its backend: the service's, or its SNI route's */
	/* The edge: the client's address (learned from a PROXY header), the one it reached, unmapped; len 0 while
	 * not looked up. */
	struct evfdd_sockaddr peer, local;
	bool src_counted;                /* counted in the service's per-source table under src_key */
	struct evfdd_source_key src_key;
	uint64_t start_ns, bytes_up, bytes_down;
	/* Before the relay: the PROXY header and the ClientHello, read into pre (pre_used of them taken by the
	 * header), under a deadline; then what goes to the backend first (the header evfdd sends, the bytes
	 * read ahead) in init. */
	enum { PRE_NONE, PRE_PROXY, PRE_HELLO } pre_state;
	unsigned char *pre;
	unsigned pre_len, pre_cap, pre_used;
	struct evfd_op *pre_op, *init_op;
	struct __kernel_timespec pre_deadline;
	unsigned char *init;
	unsigned init_len, init_off, init_hdr;   /* init_hdr: the PROXY header's part; the rest is the client's */
};

struct evfdd_relay {
	struct evfd_ring *ring;
	struct io_uring_buf_ring *br;
	unsigned char *pool;
	uint64_t huge_at_ns;             /* when to ask for huge pages for the pool (CLOCK_MONOTONIC), or 0 */
	unsigned nbufs, bufsz, mask;
	bool bundle;                     /* receives may take several buffers */
	size_t heap, heap_max;           /* bytes of slices copied out of the buffers, and the most allowed */
	unsigned avail;                  /* buffers in the kernel's ring now */
	unsigned holders;                /* halves holding received data: they share the buffers */
	unsigned tail;                   /* buffers ever added to it: the next one goes to slot tail & mask */
	unsigned short *slot_bid;        /* which buffer each ring slot holds (a bundle takes consecutive slots) */
	unsigned short *bid_slot;        /* and the slot of each buffer */
	TAILQ_HEAD(, half) waiting;      /* halves waiting for a buffer, first come first served */
	TAILQ_HEAD(, acceptor) accs;     /* new ones first */
	unsigned pending;                /* relay-level requests in flight (accepts, ticks) */
	unsigned nconns;
	atomic_uint *nconns_pub;
	struct evfdd_relay_balance *balance;
	bool counted;                    /* in balance->accepting */
	struct evfd_op *tick_op;
	struct __kernel_timespec tick_ts;
	bool stopping;
	bool retiring;                   /* stopped while other rings go on accepting (acceptor_sweep) */
	bool aborting;                   /* stopped with abort: every connection is cut */
	unsigned hold;                   /* inside a walk or an accept: the relay must not be freed yet */
	void (*done)(struct evfdd_relay *, void *);
	void *done_arg;
	/* Parking (evfdd_relay_park): nothing new is submitted, what is in flight is cancelled, and once every
	 * connection has nothing in flight (busy 0) park_done runs. */
	bool parking, parked;
	unsigned busy;                   /* connections with requests in flight */
	void (*park_done)(struct evfdd_relay *, void *);
	void *park_arg;
};

static void relay_park_check(struct evfdd_relay *rl)
{
	void (*done)(struct evfdd_relay *, void *) = rl->park_done;

	if (!rl->parking || rl->parked || rl->hold || rl->pending || rl->busy || !done)
		return;
	rl->parked = true;
	rl->park_done = NULL;
	done(rl, rl->park_arg);
}

static void acceptor_maybe_free(struct acceptor *a);

static void relay_maybe_done(struct evfdd_relay *rl)
{
	relay_park_check(rl);
	if (rl->stopping && !rl->parking && !rl->hold && !rl->pending && !rl->nconns && rl->done) {
		void (*done)(struct evfdd_relay *, void *) = rl->done;

		rl->done = NULL;
		done(rl, rl->done_arg);
	}
}

/* ---- buffers -------------------------------------------------------------------------------------- */

static unsigned char *buf_addr(struct evfdd_relay *rl, unsigned bid)
{
	return rl->pool + (size_t)bid * rl->bufsz;
}

/* Give buffer @bid back to the kernel's ring (the caller wakes the halves waiting for one). */
static void buf_add(struct evfdd_relay *rl, unsigned bid)
{
	unsigned slot = rl->tail & rl->mask;

	io_uring_buf_ring_add(rl->br, buf_addr(rl, bid), rl->bufsz, (unsigned short)bid, rl->mask, 0);
	io_uring_buf_ring_advance(rl->br, 1);
	rl->slot_bid[slot] = (unsigned short)bid;
	rl->bid_slot[bid] = (unsigned short)slot;
	rl->tail++;
	rl->avail++;
}

static unsigned short *slice_bids(struct slice *s)
{
	return s->many ? s->many : &s->one;
}

/* The buffers a receive that completed with @res bytes and first buffer @bid took: the ring slots that follow
 * @bid's, one per buffer size started (a bundle fills each buffer but the last). */
static void slice_take(struct evfdd_relay *rl, struct slice *s, unsigned bid, int res)
{
	unsigned nb = 1, slot = rl->bid_slot[bid], i;

	if (rl->bundle && res > 0)
		nb = ((unsigned)res + rl->bufsz - 1) / rl->bufsz;
	s->many = NULL;
	s->heap = NULL;
	if (nb > 1 && !(s->many = malloc(nb * sizeof(*s->many))))
		fatalx("out of memory for a receive's buffer list");   /* the buffers would be lost */
	for (i = 0; i < nb; i++)
		slice_bids(s)[i] = rl->slot_bid[(slot + i) & rl->mask];
	s->nb = (unsigned short)nb;
	s->len = res > 0 ? (unsigned)res : 0;
	s->off = 0;
	rl->avail -= nb;
}

static void relay_wake(struct evfdd_relay *rl);

/* Give a slice's buffers back to the ring and wake the halves waiting for one. */
static void slice_give_back(struct evfdd_relay *rl, struct slice *s)
{
	unsigned i;

	for (i = 0; i < s->nb; i++)
		buf_add(rl, slice_bids(s)[i]);
	free(s->many);
	s->many = NULL;
	s->nb = 0;
	relay_wake(rl);
}

static void slice_release(struct evfdd_relay *rl, struct slice *s)
{
	if (s->heap) {
		rl->heap -= s->len;
		free(s->heap);
		s->heap = NULL;
		return;
	}
	slice_give_back(rl, s);
}

/*
 * A slice of several buffers whose send the peer could not take whole (a slow reader) would keep them all
 * from the ring for as long as that reader takes, and a few such could starve every other connection of the
 * ring: copy what is left of it to memory of its own and give the buffers back. The copies of a ring are
 * capped (heap_max, as much as its buffers); past that the slice keeps its buffers.
 */
static void slice_copy_out(struct evfdd_relay *rl, struct slice *s)
{
	unsigned left = s->len - s->off, done = 0, i;
	unsigned char *p;

	if (s->heap || s->nb < 2 || rl->heap + left > rl->heap_max || !(p = malloc(left)))
		return;
	for (i = s->off / rl->bufsz; done < left; i++) {
		unsigned from = i == s->off / rl->bufsz ? s->off % rl->bufsz : 0;
		unsigned n = rl->bufsz - from;

		if (n > left - done)
			n = left - done;
		memcpy(p + done, buf_addr(rl, slice_bids(s)[i]) + from, n);
		done += n;
	}
	rl->heap += left;
	slice_give_back(rl, s);
	s->heap = p;
	s->len = left;
	s->off = 0;
}

/* ---- connections ---------------------------------------------------------------------------------- */

static bool half_pump(struct half *h);

static void conn_touch(struct conn *c)
{
	struct acceptor *a = c->acc;

	c->last_ns = util_now_ns(CLOCK_MONOTONIC);
	if (TAILQ_LAST(&a->lru, conn_lru) != c) {
		TAILQ_REMOVE(&a->lru, c, lru);
		TAILQ_INSERT_TAIL(&a->lru, c, lru);
	}
}

/* Close @fd; with @rst, so that the peer sees a reset instead of a clean end (TCP only). */
static void sock_close(int fd, bool rst)
{
	static const struct linger abortive = { .l_onoff = 1, .l_linger = 0 };

	if (fd < 0)
		return;
	if (rst)
		(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
	close(fd);
}

/* The connection no longer holds a place on its backend (ended, or off to try another one). */
static void conn_leave_backend(struct conn *c)
{
	if (c->be < 0)
		return;
	if (c->trial)
		atomic_store(&c->pool->v[c->be].b->trial, false);   /* cut before the trial's outcome */
	evfdd_pool_release(c->pool, (unsigned)c->be);
	c->be = -1;
	c->trial = false;
}

static bool conn_echo(const struct conn *c)
{
	return c->svc->echo;
}

/* One access log entry for @c, which is ending. */
static void conn_access_log(const struct conn *c)
{
	struct evfdd_access_entry e;

	memset(&e, 0, sizeof(e));
	snprintf(e.service, sizeof(e.service), "%s", c->svc->name);
	if (c->peer.len)
		evfdd_addr_format(&c->peer, e.client, sizeof(e.client));
	else
		snprintf(e.client, sizeof(e.client), "unknown");
	if (conn_echo(c))
		snprintf(e.backend, sizeof(e.backend), "echo");
	else if (c->be >= 0)
		snprintf(e.backend, sizeof(e.backend), "%s", c->pool->v[c->be].b->name);
	else if (c->ntried)
		snprintf(e.backend, sizeof(e.backend), "%s", c->pool->v[c->tried[c->ntried - 1]].b->name);
	e.bytes_up = c->bytes_up;
	e.bytes_down = c->bytes_down;
	e.duration_usec = (util_now_ns(CLOCK_MONOTONIC) - c->start_ns) / 1000;
	e.end = c->end < EVFDD_END_COUNT ? evfdd_counter_info[evfdd_counter_end(c->end)].name : "closed";
	evfdd_accesslog_submit(&e);
}

/* Free @c: it ended, or (@carried) the next image has it, when closing our copies of its descriptors ends
 * nothing and nothing is counted or logged. */
static void conn_release(struct conn *c, bool carried)
{
	struct evfdd_relay *rl = c->acc->rl;
	struct acceptor *a = c->acc;

	TAILQ_REMOVE(&a->lru, c, lru);
	if (c->svc->access_log && !carried)
		conn_access_log(c);
	if (c->src_counted)
		evfdd_srclimit_give(c->svc->st->sources, &c->src_key);
	free(c->pre);
	free(c->init);
	free(c->up.vec);
	free(c->down.vec);
	sock_close(c->cfd, c->rst_client && !carried);
	sock_close(c->bfd, c->rst_backend && !carried);
	conn_leave_backend(c);
	if (!carried)
		evfdd_svc_count(a->blk, c->end < EVFDD_END_COUNT ? evfdd_counter_end(c->end) : EVFDD_CTR_CLOSED, 1);
	atomic_fetch_sub(&c->svc->st->open, 1);
	evfdd_svc_unref(c->svc);
	free(c);
	rl->nconns--;
	if (rl->nconns_pub)
		atomic_store_explicit(rl->nconns_pub, rl->nconns, memory_order_relaxed);
	if (rl->balance)
		atomic_fetch_sub_explicit(&rl->balance->conns, 1, memory_order_relaxed);
	acceptor_maybe_free(a);
	relay_maybe_done(rl);
}

static void conn_free(struct conn *c)
{
	conn_release(c, false);
}

static bool conn_finished(const struct conn *c)
{
	return c->up.done && (conn_echo(c) || c->down.done);
}

static void conn_flush_check(struct conn *c);

/* Called after every completion of the connection, and as the last thing a caller does with @c (it may free
 * it): frees it once nothing is left to do; a flushing connection looks at its flush; a parking relay sees
 * whether it is done. */
static void conn_settle(struct conn *c)
{
	struct evfdd_relay *rl = c->acc->rl;
	bool parking = rl->parking;      /* read first: freeing @c may end a stopping relay (never a parking one) */

	if (c->flushing && !c->cutting)
		conn_flush_check(c);
	else if (!c->pending && (c->cutting || conn_finished(c)))
		conn_free(c);
	if (parking)
		relay_park_check(rl);
}

/* The first reason a connection ends with is the one counted. */
static void conn_set_end(struct conn *c, enum evfdd_end why)
{
	if (c->end == EVFDD_END_COUNT)
		c->end = why;
}

static bool side_tcp(const struct conn *c, enum side s)
{
	return s == CLIENT ? c->acc->client_tcp : c->baddr.u.sa.sa_family != AF_UNIX;
}

static int side_fd(const struct conn *c, enum side s)
{
	return s == CLIENT ? c->cfd : c->bfd;
}

static enum side side_of_fd(const struct conn *c, int fd)
{
	return fd == c->cfd ? CLIENT : BACKEND;
}

static enum side other_side(enum side s)
{
	return s == CLIENT ? BACKEND : CLIENT;
}

/* The half that reads from @s (for an echo, the one half). */
static struct half *half_from(struct conn *c, enum side s)
{
	return s == CLIENT ? &c->up : &c->down;
}

/* Whether @h carries data toward the dead side of a flushing connection: that data can no longer arrive. */
static bool half_toward_dead(const struct half *h)
{
	return h->c->flushing && side_of_fd(h->c, h->to) == h->c->dead;
}

/* Once a half has nothing in flight, held or to come, it is done; after a clean EOF the other side gets a FIN
 * (no more data comes; it may still send its own), unless it is about to be reset or cut. Never frees. */
static void half_check_done(struct half *h)
{
	struct conn *c = h->c;

	if (h->done || !h->eof || h->qn || h->sop || h->rop || h->waiting)
		return;
	h->done = true;
	if (h->clean_eof && !c->flushing && !c->cutting && shutdown(h->to, SHUT_WR) < 0 && errno != ENOTCONN)
		log_debug("[%s] shutdown: %s", c->svc->name, strerror(errno));
}

/* Give back the slices of @h that no send is using (all of them when none is in flight). */
static void half_drop(struct half *h)
{
	struct evfdd_relay *rl = h->c->acc->rl;

	while (h->qn > (h->sop ? 1 : 0)) {
		slice_release(rl, &h->q[(h->qh + h->qn - 1) & 1]);
		if (!--h->qn)
			rl->holders--;
	}
}

/* Stop a half: nothing more is received; what it has in flight is cancelled (its callbacks still run and drop
 * what they bring), what it holds unsent is given back, and it leaves the wait list. Never frees. */
static void half_stop(struct half *h)
{
	struct evfdd_relay *rl = h->c->acc->rl;

	h->eof = true;
	h->clean_eof = false;
	if (h->waiting) {
		TAILQ_REMOVE(&rl->waiting, h, wait);
		h->waiting = false;
	}
	if (h->rop)
		(void)evfd_op_cancel(rl->ring, h->rop);
	if (h->sop)
		(void)evfd_op_cancel(rl->ring, h->sop);
	half_drop(h);
	half_check_done(h);
}

/*
 * Cut the connection (@why, unless it already has a reason): cancel what is in flight and close both sides
 * once it has all come back, with a reset toward a TCP peer when @rst. Without a reset the peers see the end at
 * once (shutdown), even before the cancels return. May free @c.
 */
static void conn_cut(struct conn *c, enum evfdd_end why, bool rst)
{
	if (why != EVFDD_END_COUNT)
		conn_set_end(c, why);
	if (c->cutting)
		return;   /* its cancels are on their way back */
	c->cutting = true;
	if (rst) {
		c->rst_client = c->rst_client || side_tcp(c, CLIENT);
		c->rst_backend = c->rst_backend || (c->bfd >= 0 && !c->connect_op && side_tcp(c, BACKEND));
	}
	if (c->connect_op)
		(void)evfd_op_cancel(c->acc->rl->ring, c->connect_op);
	if (c->flush_op)
		(void)evfd_op_cancel(c->acc->rl->ring, c->flush_op);
	if (c->pre_op)
		(void)evfd_op_cancel(c->acc->rl->ring, c->pre_op);
	half_stop(&c->up);
	if (!conn_echo(c))
		half_stop(&c->down);
	if (c->cfd >= 0 && !c->rst_client)
		shutdown(c->cfd, SHUT_RDWR);
	if (c->bfd >= 0 && !c->rst_backend)
		shutdown(c->bfd, SHUT_RDWR);
	conn_settle(c);
}

static int conn_submit(struct conn *c, struct io_uring_sqe *sqe, evfd_op_cb cb, void *arg, struct evfd_op **op)
{
	struct evfdd_relay *rl = c->acc->rl;
	int err = evfd_ring_submit(rl->ring, sqe, cb, arg, 0, op);

	if (err == 0 && !c->pending++)
		rl->busy++;
	return err;
}

/* A request of @c has completed. */
static void conn_op_back(struct conn *c)
{
	if (!--c->pending)
		c->acc->rl->busy--;
}

static void flush_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;

	conn_op_back(c);
	c->flush_op = NULL;
	conn_settle(c);
}

/* A flush waits until what evfdd received from the dead side has been sent on and has left the survivor's
 * send queue (SIOCOUTQ: bytes not yet acknowledged), or RESET_FLUSH_MS have passed; then the survivor is reset
 * (a Unix socket, which cannot be, is closed) and the connection cut. May free @c. */
static void conn_flush_check(struct conn *c)
{
	enum side alive = other_side(c->dead);
	struct io_uring_sqe sqe = { 0 };
	int queued = 0;

	if (c->flush_op || !half_from(c, c->dead)->done || c->acc->rl->parking)
		return;
	if (side_tcp(c, alive) && ioctl(side_fd(c, alive), SIOCOUTQ, &queued) == 0 && queued > 0 &&
	    util_now_ns(CLOCK_MONOTONIC) < c->flush_end_ns) {
		c->flush_ts.tv_sec = 0;
		c->flush_ts.tv_nsec = RESET_POLL_MS * 1000000LL;
		io_uring_prep_timeout(&sqe, &c->flush_ts, 0, 0);
		if (conn_submit(c, &sqe, flush_cb, c, &c->flush_op) == 0)
			return;
	}
	if (alive == CLIENT)
		c->rst_client = side_tcp(c, CLIENT);
	else
		c->rst_backend = side_tcp(c, BACKEND);
	conn_cut(c, EVFDD_END_COUNT, false);
}

/*
 * Side @s failed with @err (a negative errno from a recv or a send on it). Its reset, or its error, reaches the
 * other side as a reset once what evfdd received from @s has been delivered (conn_flush_check); data toward
 * @s is lost, so that half stops at once. An echo has no other side, a connection whose other side failed
 * too has nobody to tell: they are cut. May free @c.
 */
static void conn_side_failed(struct conn *c, enum side s, int err)
{
	bool reset = err == -ECONNRESET || err == -EPIPE;
	enum evfdd_end why = s == CLIENT ? (reset ? EVFDD_END_CLIENT_RESET : EVFDD_END_CLIENT_ERROR) :
					   (reset ? EVFDD_END_BACKEND_RESET : EVFDD_END_BACKEND_ERROR);

	log_debug("[%s] %s side: %s", c->svc->name, s == CLIENT ? "client" : "backend", strerror(-err));
	conn_set_end(c, why);
	if (c->cutting || (c->flushing && c->dead == s)) {
		conn_settle(c);
		return;
	}
	if (c->flushing || conn_echo(c) || c->bfd < 0 || c->connect_op) {
		conn_cut(c, why, false);
		return;
	}
	c->flushing = true;
	c->dead = s;
	c->flush_end_ns = util_now_ns(CLOCK_MONOTONIC) + RESET_FLUSH_MS * 1000000ull;
	half_stop(s == CLIENT ? &c->down : &c->up);
	conn_settle(c);
}

static bool half_send(struct half *h);
static bool half_recv(struct half *h);

/* Send what @h received while nothing is being sent, and receive the next slice while there is room: one
 * slice ahead of the send at most, and that only while buffers are plentiful. Returns false when the
 * connection was cut for want of ring space (and may be gone). */
static bool half_pump(struct half *h)
{
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;

	if (c->cutting || h->done)
		return true;
	if (rl->parking) {
		half_check_done(h);
		return true;
	}
	if (!h->sop && h->qn && !half_send(h))
		return false;
	if (!h->rop && !h->eof && !h->waiting &&
	    (h->qn == 0 || (h->qn == 1 && rl->avail >= rl->nbufs / 2)) && !half_recv(h))
		return false;
	half_check_done(h);
	return true;
}

/* Wake the halves waiting for a buffer, as many as there are buffers to take. */
static void relay_wake(struct evfdd_relay *rl)
{
	unsigned n = rl->avail;
	struct half *h;

	while (n-- && (h = TAILQ_FIRST(&rl->waiting))) {
		TAILQ_REMOVE(&rl->waiting, h, wait);
		h->waiting = false;
		half_pump(h);
	}
}

static void half_send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct half *h = arg;
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;
	struct slice *s = &h->q[h->qh];

	conn_op_back(c);
	h->sop = NULL;
	if (cqe->res == -ECANCELED && rl->parking && !c->cutting) {
		conn_settle(c);          /* nothing sent: the slice waits for the resume */
		return;
	}
	if (c->cutting || half_toward_dead(h) || cqe->res <= 0) {
		/* Cancelled, toward a side that is gone, or failed: the data goes nowhere. */
		half_drop(h);
		if (c->cutting || half_toward_dead(h)) {
			half_check_done(h);
			conn_settle(c);
		} else {
			conn_side_failed(c, side_of_fd(c, h->to), cqe->res < 0 ? cqe->res : -EPIPE);
		}
		return;
	}
	evfdd_svc_count(c->acc->blk, h == &c->up ? EVFDD_CTR_BYTES_UP : EVFDD_CTR_BYTES_DOWN, (uint64_t)cqe->res);
	*(h == &c->up ? &c->bytes_up : &c->bytes_down) += (uint64_t)cqe->res;
	if (c->be >= 0)
		atomic_fetch_add_explicit(h == &c->up ? &c->pool->v[c->be].b->bytes_up :
					  &c->pool->v[c->be].b->bytes_down, (uint64_t)cqe->res,
					  memory_order_relaxed);
	s->off += (unsigned)cqe->res;
	conn_touch(c);
	if (s->off < s->len) {
		/* The peer could not take it all at once: a slow reader gets small receives from now on, and what
		 * it holds of the ring's buffers goes back to the ring. */
		h->cap = 1;
		slice_copy_out(rl, s);
		if (h->qn == 2)
			slice_copy_out(rl, &h->q[h->qh ^ 1]);
	} else {
		slice_release(rl, s);
		h->qh ^= 1;
		if (!--h->qn)
			rl->holders--;
	}
	if (half_pump(h))
		conn_settle(c);
}

/* Send the unsent part of @h's first slice: one send from one buffer, or a sendmsg over several. Returns false
 * when the connection was cut for want of ring space (and may be gone). */
static bool half_send(struct half *h)
{
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;
	struct slice *s = &h->q[h->qh];
	unsigned first = s->off / rl->bufsz, skip = s->off % rl->bufsz, i, n;
	struct io_uring_sqe sqe = { 0 };

	if (s->heap) {
		io_uring_prep_send(&sqe, h->to, s->heap + s->off, s->len - s->off, MSG_NOSIGNAL);
	} else if ((s->len - 1) / rl->bufsz == first) {
		io_uring_prep_send(&sqe, h->to, buf_addr(rl, slice_bids(s)[first]) + skip, s->len - s->off,
				   MSG_NOSIGNAL);
	} else {
		if (!h->vec || h->vec->cap < s->nb) {
			struct slice_vec *v = realloc(h->vec, sizeof(*v) + s->nb * sizeof(v->iov[0]));

			if (!v)
				goto fail;
			memset(v, 0, sizeof(*v));
			v->cap = s->nb;
			h->vec = v;
		}
		for (i = first, n = 0; i < s->nb; i++, n++) {
			size_t start = (size_t)i * rl->bufsz, end = start + rl->bufsz;

			if (end > s->len)
				end = s->len;
			h->vec->iov[n].iov_base = buf_addr(rl, slice_bids(s)[i]) + (i == first ? skip : 0);
			h->vec->iov[n].iov_len = end - start - (i == first ? skip : 0);
		}
		h->vec->msg.msg_iov = h->vec->iov;
		h->vec->msg.msg_iovlen = n;
		io_uring_prep_sendmsg(&sqe, h->to, &h->vec->msg, MSG_NOSIGNAL);
	}
	if (conn_submit(c, &sqe, half_send_cb, h, &h->sop) == 0)
		return true;
fail:
	half_stop(h);
	conn_cut(c, EVFDD_END_NO_RESOURCES, false);
	return false;
}

static void half_recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct half *h = arg;
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;
	struct slice s;

	conn_op_back(c);
	h->rop = NULL;
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		slice_take(rl, &s, cqe->flags >> IORING_CQE_BUFFER_SHIFT, cqe->res);
		if (cqe->res > 0 && !c->cutting && !half_toward_dead(h)) {
			/* A receive that filled what it could take: the next may take twice as much. */
			if (rl->bundle && s.len >= (unsigned)h->cap * rl->bufsz && h->cap < RELAY_MAX_BUNDLE)
				h->cap *= 2;
			h->q[(h->qh + h->qn) & 1] = s;
			if (!h->qn++)
				rl->holders++;
			conn_touch(c);
		} else {
			slice_release(rl, &s);
		}
	}
	if (c->cutting || half_toward_dead(h)) {
		h->eof = true;
		half_check_done(h);
		conn_settle(c);
		return;
	}
	if (cqe->res == -ECANCELED && rl->parking) {
		conn_settle(c);          /* a resume receives again */
		return;
	}
	if (cqe->res == -ENOBUFS) {
		/* Every buffer of the ring is carrying data. With a slice of its own being sent, the end of that send
		 * receives again; otherwise wait for a buffer to come back (a resume does that for a parked one). */
		if (!h->qn && !rl->parking) {
			h->waiting = true;
			TAILQ_INSERT_TAIL(&rl->waiting, h, wait);
		}
		conn_settle(c);
		return;
	}
	if (cqe->res == 0) {
		h->eof = h->clean_eof = true;
	} else if (cqe->res < 0) {
		h->eof = true;
		half_check_done(h);
		conn_side_failed(c, side_of_fd(c, h->from), cqe->res);
		return;
	}
	if (half_pump(h))
		conn_settle(c);
}

/* Receive into provided buffers: one, or with bundles as many as h->cap allows (one while the ring runs low).
 * Returns false when the connection was cut for want of ring space (and may be gone). */
static bool half_recv(struct half *h)
{
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;
	struct io_uring_sqe sqe = { 0 };
	unsigned fair = rl->nbufs / (4 * (rl->holders + 1)), cap = h->cap;

	/* The buffers are shared: no half takes more than a quarter of its share of them, and none more than
	 * one while the ring runs low. */
	if (cap > fair)
		cap = fair ? fair : 1;
	if (rl->avail < rl->nbufs / 4)
		cap = 1;

	/* A bundle's length of cap and a bit buffers: the kernel then maps the last one only partly, leaves it
	 * out, and does not append a second round to a full receive (which would take what the socket holds,
	 * however much); should it still do so, the slice takes whatever came. */
	io_uring_prep_recv(&sqe, h->from, NULL, rl->bundle ? (cap + 1) * rl->bufsz - 1 : 0, 0);
	sqe.flags |= IOSQE_BUFFER_SELECT;
	sqe.buf_group = RELAY_BGID;
	if (rl->bundle)
		sqe.ioprio |= IORING_RECVSEND_BUNDLE;
	if (conn_submit(c, &sqe, half_recv_cb, h, &h->rop) == 0)
		return true;
	half_stop(h);
	conn_cut(c, EVFDD_END_NO_RESOURCES, false);
	return false;
}

/* May free @c. */
static void conn_start_relay(struct conn *c)
{
	c->stage = EVFDD_CARRY_RELAY;
	if (half_pump(&c->up) && !conn_echo(c))
		half_pump(&c->down);
}

static void conn_connect(struct conn *c);
static void conn_pick(struct conn *c);

/* ---- the edge: what comes before the relay --------------------------------------------------------- */

/* tcp_keepalive and tcp_user_timeout on a TCP socket of the service. */
static void conn_tcp_options(const struct evfdd_svc *svc, int fd)
{
	int one = 1, v;

	if (svc->tcp_keepalive) {
		(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		v = (int)svc->keepalive_idle_s;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof(v));
		v = (int)svc->keepalive_intvl_s;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &v, sizeof(v));
		v = (int)svc->keepalive_cnt;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &v, sizeof(v));
	}
	if (svc->tcp_user_timeout_ms) {
		unsigned t = svc->tcp_user_timeout_ms;

		(void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &t, sizeof(t));
	}
}

/* The client's address (@local: the one it connected to) as the socket gives it, unmapped; len stays 0 when
 * the socket cannot say (the client is gone already). */
static void conn_addr(struct conn *c, bool local)
{
	struct evfdd_sockaddr *a = local ? &c->local : &c->peer;
	socklen_t len = sizeof(a->u);

	if ((local ? getsockname : getpeername)(c->cfd, &a->u.sa, &len) == 0) {
		a->len = len;
		evfdd_addr_unmap(a);
	}
}

/* Refuse @c for @why, saying so (rate-limited) with the client's address. May free @c. */
static void conn_refuse(struct conn *c, enum evfdd_end why, const char *what)
{
	unsigned long missed = 0;
	char peer[EVFDD_ADDR_TEXT_MAX];

	if (log_ratelimit(&c->svc->st->edge_rl, &missed)) {
		if (!c->peer.len)
			conn_addr(c, false);
		if (c->peer.len)
			evfdd_addr_format(&c->peer, peer, sizeof(peer));
		else
			snprintf(peer, sizeof(peer), "a client");
		log_warnx("[%s] %s: %s; closing it (%lu similar messages suppressed)", c->svc->name, peer, what,
			  missed);
	}
	conn_cut(c, why, false);
}

/* allow, deny and max_connections_per_source, on the client's (learned) address. Returns false when @c was
 * refused (and may be gone). */
static bool conn_admit(struct conn *c)
{
	struct evfdd_svc *svc = c->svc;
	char what[64];

	if (!c->acc->client_tcp || !c->peer.len)
		return true;
	if ((svc->ndeny && evfdd_cidr_match(svc->deny, svc->ndeny, &c->peer)) ||
	    (svc->nallow && !evfdd_cidr_match(svc->allow, svc->nallow, &c->peer))) {
		conn_refuse(c, EVFDD_END_DENIED, "not allowed (allow, deny)");
		return false;
	}
	if (svc->max_per_source && evfdd_addr_source_key(&c->peer, &c->src_key)) {
		if (!evfdd_srclimit_take(svc->st->sources, &c->src_key, svc->max_per_source)) {
			snprintf(what, sizeof(what), "max_connections_per_source (%u) reached", svc->max_per_source);
			conn_refuse(c, EVFDD_END_SOURCE_LIMIT, what);
			return false;
		}
		c->src_counted = true;
	}
	return true;
}

/* What the backend gets first: the PROXY header (send_proxy) and the bytes read ahead of the relay. Returns
 * false when out of memory (@c is cut). */
static bool conn_init_prepare(struct conn *c)
{
	unsigned char hdr[EVFDD_PROXY_BUILD_MAX];
	unsigned ahead = c->pre_len - c->pre_used;
	int n = 0;

	if (c->svc->send_proxy)
		n = evfdd_proxy_build((int)c->svc->send_proxy, c->peer.len ? &c->peer : NULL,
				      c->local.len ? &c->local : NULL, hdr, sizeof(hdr));
	if (n < 0)
		n = 0;
	if (!n && !ahead) {
		free(c->pre);
		c->pre = NULL;
		return true;
	}
	c->init = malloc((size_t)n + ahead);
	if (!c->init) {
		conn_cut(c, EVFDD_END_NO_RESOURCES, false);
		return false;
	}
	memcpy(c->init, hdr, (size_t)n);
	if (ahead)
		memcpy(c->init + n, c->pre + c->pre_used, ahead);
	c->init_len = (unsigned)n + ahead;
	c->init_off = 0;
	c->init_hdr = (unsigned)n;
	free(c->pre);
	c->pre = NULL;
	return true;
}

static void conn_init_send(struct conn *c);

static void init_send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;

	conn_op_back(c);
	c->init_op = NULL;
	if (c->acc->rl->parking && !c->cutting && (cqe->res > 0 || cqe->res == -ECANCELED)) {
		if (cqe->res > 0)
			c->init_off += (unsigned)cqe->res;
		conn_settle(c);          /* a resume sends the rest */
		return;
	}
	if (c->cutting) {
		conn_settle(c);
		return;
	}
	if (cqe->res <= 0) {
		/* Nothing is relayed yet, so nothing is left to deliver to the other side: cut. */
		bool reset = cqe->res == -ECONNRESET || cqe->res == -EPIPE;

		conn_cut(c, conn_echo(c) ? (reset ? EVFDD_END_CLIENT_RESET : EVFDD_END_CLIENT_ERROR) :
			 (reset ? EVFDD_END_BACKEND_RESET : EVFDD_END_BACKEND_ERROR), !conn_echo(c));
		return;
	}
	c->init_off += (unsigned)cqe->res;
	conn_init_send(c);
}

/* Send c->init to the backend (the echo: back to the client), then relay. May free @c. */
static void conn_init_send(struct conn *c)
{
	struct io_uring_sqe sqe = { 0 };

	if (c->init_off >= c->init_len) {
		uint64_t ahead = c->init_len - c->init_hdr;

		/* The bytes read ahead were relayed too. */
		evfdd_svc_count(c->acc->blk, EVFDD_CTR_BYTES_UP, ahead);
		c->bytes_up += ahead;
		if (c->be >= 0)
			atomic_fetch_add_explicit(&c->pool->v[c->be].b->bytes_up, ahead, memory_order_relaxed);
		free(c->init);
		c->init = NULL;
		c->init_len = c->init_off = 0;
		conn_start_relay(c);
		return;
	}
	io_uring_prep_send(&sqe, conn_echo(c) ? c->cfd : c->bfd, c->init + c->init_off, c->init_len - c->init_off,
			   MSG_NOSIGNAL);
	if (conn_submit(c, &sqe, init_send_cb, c, &c->init_op) < 0)
		conn_cut(c, EVFDD_END_NO_RESOURCES, false);
}

/* The backend accepted: what goes first, then the relay. May free @c. */
static void conn_connected(struct conn *c)
{
	c->stage = EVFDD_CARRY_INIT;
	if (c->svc->send_proxy && !c->init && !conn_init_prepare(c))
		return;
	conn_init_send(c);
}

static void conn_pre_recv(struct conn *c);

/* The preamble is complete: pick a backend (or, for the echo, send back what was read ahead). */
static void conn_pre_done(struct conn *c)
{
	c->pre_state = PRE_NONE;
	c->stage = EVFDD_CARRY_PICK;
	if (conn_echo(c)) {
		c->stage = EVFDD_CARRY_INIT;
		if (conn_init_prepare(c))
			conn_init_send(c);
		return;
	}
	if (!c->svc->send_proxy && !conn_init_prepare(c))
		return;
	conn_pick(c);
}

/* Look at what the client sent so far. May free @c. */
static void conn_pre_parse(struct conn *c)
{
	struct evfdd_svc *svc = c->svc;
	char why[96], name[EVFDD_SNI_NAME_MAX + 1];
	int r;

	if (c->pre_state == PRE_PROXY) {
		struct evfdd_proxy_info info;

		r = evfdd_proxy_parse(c->pre, c->pre_len, &info);
		if (r == 0)
			goto more;
		if (r < 0) {
			snprintf(why, sizeof(why), "bad PROXY header (%s)", r == -EMSGSIZE ? "too long" : "malformed");
			conn_refuse(c, EVFDD_END_BAD_PROXY_HEADER, why);
			return;
		}
		c->pre_used = (unsigned)r;
		if (!info.local) {
			c->peer = info.src;
			c->local = info.dst;
			evfdd_addr_unmap(&c->peer);
			evfdd_addr_unmap(&c->local);
		}
		if (!conn_admit(c))
			return;
		c->pre_state = svc->nroutes ? PRE_HELLO : PRE_NONE;
	}
	if (c->pre_state == PRE_HELLO) {
		r = evfdd_tls_hello_sni(c->pre + c->pre_used, c->pre_len - c->pre_used, EVFDD_TLS_HELLO_MAX, name,
					sizeof(name));
		if (r == 0)
			goto more;
		if (r < 0) {
			snprintf(why, sizeof(why), "bad TLS ClientHello (%s)",
				 r == -EMSGSIZE ? "over 16 KiB" : "malformed, or not TLS");
			conn_refuse(c, EVFDD_END_BAD_CLIENT_HELLO, why);
			return;
		}
		r = evfdd_sni_match(svc->route_names, svc->nnamed, name);
		if (r < 0 && svc->nroutes > svc->nnamed)
			r = (int)svc->nnamed;   /* sni_default */
		if (r < 0) {
			char e[EVFDD_SNI_NAME_MAX + 64];

			snprintf(e, sizeof(e), "no route for server name \"%s\" and no sni_default", name);
			conn_refuse(c, EVFDD_END_NO_ROUTE, e);
			return;
		}
		c->pool = &svc->routes[r].pool;
	}
	conn_pre_done(c);
	return;
more:
	conn_pre_recv(c);
}

static void pre_recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;
	enum evfdd_end why = c->pre_state == PRE_PROXY ? EVFDD_END_BAD_PROXY_HEADER : EVFDD_END_BAD_CLIENT_HELLO;
	const char *what = c->pre_state == PRE_PROXY ? "PROXY header" : "TLS ClientHello";
	char msg[96];

	conn_op_back(c);
	c->pre_op = NULL;
	if (c->acc->rl->parking && !c->cutting && (cqe->res > 0 || cqe->res == -ECANCELED)) {
		/* A resume parses what came (a deadline that passed meanwhile refuses it then). */
		if (cqe->res > 0)
			c->pre_len += (unsigned)cqe->res;
		conn_settle(c);
		return;
	}
	if (c->cutting) {
		conn_settle(c);
		return;
	}
	if (cqe->res == 0 && !c->pre_len) {
		/* Connected and closed without a byte: a load balancer's connect-only check, a port scan. Counted,
		 * but not worth a warning every few seconds. */
		log_debug("[%s] a client closed before sending its %s", c->svc->name, what);
		conn_cut(c, why, false);
		return;
	}
	if (cqe->res <= 0) {
		snprintf(msg, sizeof(msg), "no complete %s (%s)", what,
			 cqe->res == 0 ? "closed first" : cqe->res == -ECANCELED ? "proxy_timeout passed" :
			 strerror(-cqe->res));
		conn_refuse(c, why, msg);
		return;
	}
	c->pre_len += (unsigned)cqe->res;
	conn_touch(c);
	conn_pre_parse(c);
}

/* A linked timeout (the preamble's deadline, the connect's timeout) is back: what it cut reports for itself. */
static void link_timeout_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;

	conn_op_back(c);
	conn_settle(c);
}

/* Receive more of the preamble, until the deadline. May free @c. */
static void conn_pre_recv(struct conn *c)
{
	struct io_uring_sqe sqe = { 0 };

	if (c->pre_len == c->pre_cap) {
		unsigned cap = c->pre_cap ? c->pre_cap * 2 : PRE_FIRST;
		unsigned char *p;

		if (c->pre_cap >= PRE_MAX) {
			/* Cannot happen: the parsers refuse what would not fit. */
			conn_refuse(c, c->pre_state == PRE_PROXY ? EVFDD_END_BAD_PROXY_HEADER :
				    EVFDD_END_BAD_CLIENT_HELLO, "preamble too long");
			return;
		}
		if (cap > PRE_MAX)
			cap = PRE_MAX;
		p = realloc(c->pre, cap);
		if (!p) {
			conn_cut(c, EVFDD_END_NO_RESOURCES, false);
			return;
		}
		c->pre = p;
		c->pre_cap = cap;
	}
	io_uring_prep_recv(&sqe, c->cfd, c->pre + c->pre_len, c->pre_cap - c->pre_len, 0);
	sqe.flags |= IOSQE_IO_LINK;
	if (conn_submit(c, &sqe, pre_recv_cb, c, &c->pre_op) < 0)
		goto fail;
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_link_timeout(&sqe, &c->pre_deadline, IORING_TIMEOUT_ABS);
	if (conn_submit(c, &sqe, link_timeout_cb, c, NULL) < 0)
		goto fail;
	return;
fail:
	conn_cut(c, EVFDD_END_NO_RESOURCES, false);
}

/* A new connection's edge: its addresses, proxy_from, the rules, then the preamble or the backend. May free
 * @c. */
static void conn_edge(struct conn *c)
{
	struct evfdd_svc *svc = c->svc;
	bool need = svc->send_proxy || svc->accept_proxy || svc->access_log || svc->nallow || svc->ndeny ||
		    svc->max_per_source || svc->pool.balance == EVFDD_BALANCE_SOURCE_HASH;

	if (c->acc->client_tcp)
		conn_tcp_options(svc, c->cfd);
	if (need) {
		conn_addr(c, false);
		conn_addr(c, true);
	}
	if (svc->accept_proxy && c->acc->client_tcp && svc->nproxy_from &&
	    !evfdd_cidr_match(svc->proxy_from, svc->nproxy_from, &c->peer)) {
		conn_refuse(c, EVFDD_END_DENIED, "not in proxy_from: may not send a PROXY header");
		return;
	}
	if (!svc->accept_proxy && !conn_admit(c))
		return;
	if (svc->accept_proxy || svc->nroutes) {
		uint64_t at = util_now_ns(CLOCK_MONOTONIC) + (uint64_t)svc->proxy_timeout_ms * 1000000u;

		c->pre_deadline.tv_sec = (long long)(at / 1000000000u);
		c->pre_deadline.tv_nsec = (long long)(at % 1000000000u);
		c->pre_state = svc->accept_proxy ? PRE_PROXY : PRE_HELLO;
		c->stage = EVFDD_CARRY_PRE;
		conn_pre_recv(c);
		return;
	}
	if (svc->echo) {
		conn_start_relay(c);
	} else {
		c->stage = EVFDD_CARRY_PICK;
		conn_pick(c);
	}
}

/* Every backend tried for @c failed, or none is left to try. May free @c. */
static void conn_connect_gave_up(struct conn *c)
{
	struct evfdd_svc *svc = c->svc;
	unsigned long missed = 0;

	if (log_ratelimit(&svc->st->connect_rl, &missed))
		log_warnx("[%s] backend connect failed: %s (%u backend%s tried, the last %s); closing the client "
			  "(%lu similar messages suppressed)", svc->name,
			  c->last_err == -ETIMEDOUT ? "timed out" : strerror(-c->last_err), c->ntried,
			  c->ntried == 1 ? "" : "s", c->pool->v[c->tried[c->ntried - 1]].b->name, missed);
	conn_cut(c, EVFDD_END_CONNECT_FAILED, false);
}

/* Pick a backend for @c (its first, or another after a failed one) and connect to it. May free @c. */
static void conn_pick(struct conn *c)
{
	struct evfdd_svc *svc = c->svc;
	const struct sockaddr *src = NULL;
	struct evfdd_pick_why why;
	unsigned long missed = 0;
	bool trial;
	int i;

	if (c->pool->balance == EVFDD_BALANCE_SOURCE_HASH && c->peer.len && c->peer.u.sa.sa_family != AF_UNIX)
		src = &c->peer.u.sa;
	i = evfdd_pool_pick(c->pool, src, c->tried, c->ntried, &trial, &why);
	if (i >= 0) {
		c->be = i;
		c->trial = trial;
		c->addr_k = 0;
		c->tried[c->ntried++] = (uint16_t)i;
		conn_connect(c);
		return;
	}
	if (c->ntried) {
		conn_connect_gave_up(c);
		return;
	}
	if (log_ratelimit(&svc->st->no_backend_rl, &missed))
		log_warnx("[%s] no backend can take a connection (%u down, %u drained, %u at maxconn); closing the "
			  "client (%lu similar messages suppressed)", svc->name, why.down, why.drained, why.full,
			  missed);
	conn_cut(c, EVFDD_END_NO_BACKEND, false);
}

/* Every address of c's backend failed, the last with @err: another backend while retries are left. May
 * free @c. */
static void conn_backend_failed(struct conn *c, int err)
{
	c->last_err = err;
	evfdd_pool_result(c->pool, (unsigned)c->be, err, c->trial);
	c->trial = false;
	conn_leave_backend(c);
	if (c->ntried <= c->pool->retries)
		conn_pick(c);
	else
		conn_connect_gave_up(c);
}

/* Connecting to address c->addr_k of the backend failed with @err: its next address, or the backend has
 * failed. May free @c. */
static void conn_connect_failed(struct conn *c, int err)
{
	close(c->bfd);
	c->bfd = -1;
	c->down.from = c->up.to = -1;
	c->last_err = err;
	if (evfdd_backend_addr(c->pool->v[c->be].b, ++c->addr_k, &c->baddr))
		conn_connect(c);
	else
		conn_backend_failed(c, err);
}

/* Forget c's backend and its socket, to pick one afresh (a connect abandoned by parking). */
static void conn_drop_backend(struct conn *c)
{
	if (c->bfd >= 0)
		close(c->bfd);
	c->bfd = -1;
	c->down.from = c->up.to = -1;
	conn_leave_backend(c);
	c->ntried = 0;
	c->stage = EVFDD_CARRY_PICK;
}

static void connect_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;

	conn_op_back(c);
	c->connect_op = NULL;
	if (c->acc->rl->parking && !c->cutting) {
		if (cqe->res == 0) {
			evfdd_pool_result(c->pool, (unsigned)c->be, 0, c->trial);
			c->trial = false;
			c->stage = EVFDD_CARRY_INIT;
		} else {
			/* Abandoned (or failed): a resume picks and connects afresh, with a new socket. */
			conn_drop_backend(c);
		}
		conn_settle(c);
		return;
	}
	if (c->cutting) {
		conn_settle(c);
		return;
	}
	if (cqe->res == 0) {
		evfdd_pool_result(c->pool, (unsigned)c->be, 0, c->trial);
		c->trial = false;
		conn_connected(c);
		return;
	}
	/* Refused, unreachable or timed out (-ECANCELED from the linked timeout). */
	conn_connect_failed(c, cqe->res == -ECANCELED ? -ETIMEDOUT : cqe->res);
}

/* Connect to address c->addr_k of the backend. May free @c. */
static void conn_connect(struct conn *c)
{
	struct io_uring_sqe sqe = { 0 };
	int one = 1;

	if (c->addr_k == 0 && !evfdd_backend_addr(c->pool->v[c->be].b, 0, &c->baddr)) {
		conn_backend_failed(c, -EHOSTUNREACH);   /* a name that lost its addresses */
		return;
	}
	c->bfd = socket(c->baddr.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->bfd < 0) {
		unsigned long missed = 0;

		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			/* Accepting more would only fail the same way: pause, as for accept's EMFILE. */
			c->acc->out_of_fds = true;
			if (log_ratelimit(&c->svc->st->accept_rl, &missed))
				log_warn("[%s] backend socket; closing the client and pausing accepts for %d ms, open "
					 "connections carry on; raise LimitNOFILE= or ulimit -n (%lu similar messages "
					 "suppressed)", c->svc->name, ACCEPT_RETRY_MS, missed);
		} else if (log_ratelimit(&c->svc->st->connect_rl, &missed)) {
			log_warn("[%s] backend socket (%lu similar messages suppressed)", c->svc->name, missed);
		}
		conn_cut(c, errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM ?
			 EVFDD_END_NO_RESOURCES : EVFDD_END_CONNECT_FAILED, false);
		return;
	}
	if (c->svc->tcp_nodelay && c->baddr.u.sa.sa_family != AF_UNIX)
		(void)setsockopt(c->bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (c->baddr.u.sa.sa_family != AF_UNIX)
		conn_tcp_options(c->svc, c->bfd);
	if (c->svc->has_source && c->svc->source.u.sa.sa_family == c->baddr.u.sa.sa_family) {
		/* The port is picked at connect, per destination: a busy source address does not run out of ports
		 * after 28000 connections. */
		(void)setsockopt(c->bfd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(c->bfd, &c->svc->source.u.sa, c->svc->source.len) < 0) {
			unsigned long missed = 0;

			if (log_ratelimit(&c->svc->st->connect_rl, &missed))
				log_warn("[%s] bind to source address (%lu similar messages suppressed)", c->svc->name,
					 missed);
			conn_connect_failed(c, -errno);
			return;
		}
	}
	c->down.from = c->up.to = c->bfd;
	io_uring_prep_connect(&sqe, c->bfd, &c->baddr.u.sa, c->baddr.len);
	sqe.flags |= IOSQE_IO_LINK;
	if (conn_submit(c, &sqe, connect_cb, c, &c->connect_op) < 0)
		goto fail;
	memset(&sqe, 0, sizeof(sqe));
	c->cto.tv_sec = c->svc->connect_timeout_ms / 1000;
	c->cto.tv_nsec = (long long)(c->svc->connect_timeout_ms % 1000) * 1000000;
	io_uring_prep_link_timeout(&sqe, &c->cto, 0);
	if (conn_submit(c, &sqe, link_timeout_cb, c, NULL) < 0)
		goto fail;
	return;
fail:
	conn_cut(c, EVFDD_END_NO_RESOURCES, false);
}

/* Serve @fd, just accepted on @a: every accepted connection is served, or counted by the limit that closed
 * it. May free the connection (not @a or the relay: the caller holds them). */
static void conn_new(struct acceptor *a, int fd)
{
	struct evfdd_svc *svc = a->svc;
	struct evfdd_relay *rl = a->rl;
	unsigned long missed = 0;
	struct conn *c;
	int one = 1;

	evfdd_svc_count(a->blk, EVFDD_CTR_TOTAL, 1);
	/* Counted in first, so that rings accepting at once cannot all slip under the limit. */
	if (atomic_fetch_add(&svc->st->open, 1) >= svc->max_connections) {
		atomic_fetch_sub(&svc->st->open, 1);
		evfdd_svc_count(a->blk, evfdd_counter_end(EVFDD_END_LIMIT), 1);
		if (log_ratelimit(&svc->st->limit_rl, &missed))
			log_warnx("[%s] max_connections (%u) reached; closing a new connection (%lu similar "
				  "messages suppressed)", svc->name, svc->max_connections, missed);
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		atomic_fetch_sub(&svc->st->open, 1);
		evfdd_svc_count(a->blk, evfdd_counter_end(EVFDD_END_NO_RESOURCES), 1);
		if (log_ratelimit(&svc->st->limit_rl, &missed))
			log_warnx("[%s] out of memory for a connection; closing it (%lu similar messages suppressed)",
				  svc->name, missed);
		close(fd);
		return;
	}
	c->acc = a;
	c->svc = evfdd_svc_ref(svc);
	c->cfd = fd;
	c->bfd = -1;
	c->be = -1;
	c->end = EVFDD_END_COUNT;
	c->pool = &svc->pool;
	c->start_ns = util_now_ns(CLOCK_MONOTONIC);
	c->up.c = c->down.c = c;
	c->up.cap = c->down.cap = 1;
	c->up.from = fd;
	c->down.to = fd;
	rl->nconns++;
	if (rl->nconns_pub)
		atomic_store_explicit(rl->nconns_pub, rl->nconns, memory_order_relaxed);
	if (rl->balance)
		atomic_fetch_add_explicit(&rl->balance->conns, 1, memory_order_relaxed);
	c->last_ns = util_now_ns(CLOCK_MONOTONIC);
	TAILQ_INSERT_TAIL(&a->lru, c, lru);
	if (svc->tcp_nodelay && a->client_tcp)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (svc->echo) {
		c->up.to = fd;
		c->down.eof = c->down.done = true;
	}
	if (rl->aborting)
		conn_cut(c, EVFDD_END_SHUTDOWN, true);   /* accepted after a forced stop began */
	else if (!rl->parking)
		conn_edge(c);                            /* (a parked one starts at its resume) */
}

/* ---- accepting ------------------------------------------------------------------------------------ */

static void acceptor_arm(struct acceptor *a);

/* A retired acceptor gives its listener back as soon as nothing of it is in flight (so that a listener no
 * longer configured closes at once), and goes itself when its last connection does. */
static void acceptor_maybe_free(struct acceptor *a)
{
	struct evfdd_relay *rl = a->rl;

	if (!a->retired && !rl->stopping)
		return;
	if (a->armed || a->retrying || a->held)
		return;
	evfdd_listener_unref(a->lst);
	a->lst = NULL;
	if (!a->retired || !TAILQ_EMPTY(&a->lru))
		return;
	TAILQ_REMOVE(&rl->accs, a, link);
	evfdd_svc_block_free(a->svc->st, a->blk);
	evfdd_svc_unref(a->svc);
	free(a);
}

/* Whether this ring holds far more than its share of the connections (twice the average, and 16 more). Single
 * accepts already spread connections (a ring re-arms behind the others); a pause costs the connections that
 * arrive meanwhile 2 ms, which under constant churn halved the rate of new connections when it triggered at
 * an eighth above the average, so it is kept for gross imbalance. Whichever ring sits at or below the average
 * keeps accepting, so a pause never leaves a listener unserved. */
static bool relay_overloaded(const struct evfdd_relay *rl)
{
	unsigned rings, avg;

	if (!rl->balance)
		return false;
	rings = atomic_load_explicit(&rl->balance->accepting, memory_order_relaxed);
	if (rings < 2)
		return false;
	avg = atomic_load_explicit(&rl->balance->conns, memory_order_relaxed) / rings;
	return rl->nconns > 2 * avg + 16;
}

static void accept_retry_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct acceptor *a = arg;
	struct evfdd_relay *rl = a->rl;

	rl->pending--;
	a->retrying = false;
	a->retry_op = NULL;
	if (!rl->stopping && !rl->parking && !a->retired)
		acceptor_arm(a);
	acceptor_maybe_free(a);
	relay_maybe_done(rl);
}

static void acceptor_sweep(struct acceptor *a);

static void accept_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct acceptor *a = arg;
	struct evfdd_relay *rl = a->rl;
	struct io_uring_sqe sqe = { 0 };
	unsigned long missed = 0;
	bool sweeping = a->sweeping;

	rl->pending--;
	a->armed = false;
	a->sweeping = false;
	a->op = NULL;
	if (cqe->res >= 0) {
		/* Served whatever the state: the kernel handed the connection over (also after the accept was
		 * cancelled, on a draining or stopping ring), and closing it would reset the client. */
		a->held = true;
		rl->hold++;
		conn_new(a, cqe->res);
		rl->hold--;
		a->held = false;
	}
	if (rl->stopping || rl->parking || a->retired || cqe->res == -ECANCELED) {
		/* A sweep goes on while it finds connections; a cancelled accept starts one. */
		if (((sweeping && cqe->res >= 0) || (!sweeping && cqe->res == -ECANCELED)) &&
		    (a->retired || rl->retiring))
			acceptor_sweep(a);
		acceptor_maybe_free(a);
		relay_maybe_done(rl);
		return;
	}
	if (cqe->res >= 0 && !a->out_of_fds && !relay_overloaded(rl)) {
		acceptor_arm(a);
		return;
	}
	if (cqe->res < 0 && log_ratelimit(&a->svc->st->accept_rl, &missed)) {
		if (cqe->res == -EMFILE || cqe->res == -ENFILE)
			log_warnx("[%s] accept: %s; pausing accepts for %d ms, open connections carry on; raise "
				  "LimitNOFILE= or ulimit -n (%lu similar messages suppressed)", a->svc->name,
				  strerror(-cqe->res), ACCEPT_RETRY_MS, missed);
		else
			log_warnx("[%s] accept: %s; retrying in %d ms (%lu similar messages suppressed)",
				  a->svc->name, strerror(-cqe->res), ACCEPT_RETRY_MS, missed);
	}
	/* Accept again shortly: after an error, or after a pause that lets the other rings take the next
	 * connections. */
	a->retry_ts.tv_sec = 0;
	a->retry_ts.tv_nsec = (cqe->res < 0 || a->out_of_fds ? ACCEPT_RETRY_MS : BALANCE_PAUSE_MS) * 1000000LL;
	a->out_of_fds = false;
	io_uring_prep_timeout(&sqe, &a->retry_ts, 0, 0);
	if (evfd_ring_submit(rl->ring, &sqe, accept_retry_cb, a, 0, &a->retry_op) == 0) {
		rl->pending++;
		a->retrying = true;
	}
}

static void acceptor_arm(struct acceptor *a)
{
	struct io_uring_sqe sqe = { 0 };

	/* Single-shot on purpose: the kernel wakes the first exclusive waiter on a listener, and a multishot
	 * accept keeps its place at the head of the queue, so one ring would take every connection. A
	 * single-shot accept re-armed after each connection queues up behind the other rings' accepts, which
	 * spreads connections over the rings (and so over the loops). */
	io_uring_prep_accept(&sqe, a->lst->fd, NULL, NULL, SOCK_CLOEXEC);
	if (evfd_ring_submit(a->rl->ring, &sqe, accept_cb, a, 0, &a->op) == 0) {
		a->rl->pending++;
		a->armed = true;
	} else {
		log_warnx("[%s] cannot arm accept on a ring", a->svc->name);
	}
}

/*
 * Take what the listener's queue holds, with accepts that never wait, and serve it. Started when an accept of
 * an acceptor that stops while other rings go on accepting on the listener (a retired service, a draining
 * ring) came back cancelled: the kernel wakes one exclusive waiter per new connection, and a waiter that is
 * being cancelled at that moment swallows the wake-up (seen on 6.18: about 1 in 400 cancels racing a
 * connect), so the connection would wait in the queue, with accepts armed on other rings, until another one
 * arrives. At most ACCEPT_SWEEP_MAX connections; nothing on a kernel without IORING_ACCEPT_DONTWAIT.
 */
static void acceptor_sweep(struct acceptor *a)
{
	struct io_uring_sqe sqe = { 0 };

	if (!a->lst || a->armed || a->rl->aborting || a->rl->parking || a->swept >= ACCEPT_SWEEP_MAX)
		return;
	io_uring_prep_accept(&sqe, a->lst->fd, NULL, NULL, SOCK_CLOEXEC);
	sqe.ioprio |= IORING_ACCEPT_DONTWAIT;
	if (evfd_ring_submit(a->rl->ring, &sqe, accept_cb, a, 0, &a->op) == 0) {
		a->rl->pending++;
		a->armed = true;
		a->sweeping = true;
		a->swept++;
	}
}

/* Stop accepting: cancel the accept or the pending retry. */
static void acceptor_quiet(struct acceptor *a)
{
	if (a->armed && a->op)
		(void)evfd_op_cancel(a->rl->ring, a->op);
	if (a->retrying && a->retry_op)
		(void)evfd_op_cancel(a->rl->ring, a->retry_op);
}

static void acceptor_add(struct evfdd_relay *rl, struct evfdd_relay_service *rs)
{
	struct acceptor *a = calloc(1, sizeof(*a));
	socklen_t len = sizeof(int);
	int domain = 0;

	if (a)
		a->blk = evfdd_svc_block_new(rs->svc->st);
	if (!a || !a->blk) {
		log_warnx("[%s] out of memory: a ring does not accept on this service", rs->svc->name);
		free(a);
		evfdd_svc_unref(rs->svc);
		evfdd_listener_unref(rs->lst);
		return;
	}
	a->rl = rl;
	a->svc = rs->svc;
	a->lst = rs->lst;
	a->client_tcp = getsockopt(a->lst->fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain != AF_UNIX;
	TAILQ_INIT(&a->lru);
	TAILQ_INSERT_HEAD(&rl->accs, a, link);
	acceptor_arm(a);
}

/* ---- idle sweep, and the pool's late huge pages --------------------------------------------------- */

static void tick_arm(struct evfdd_relay *rl);
static void pool_ask_huge(struct evfdd_relay *rl);

static void tick_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct evfdd_relay *rl = arg;
	uint64_t now = util_now_ns(CLOCK_MONOTONIC);
	struct acceptor *a, *anext;

	rl->pending--;
	rl->tick_op = NULL;
	if (rl->huge_at_ns && now >= rl->huge_at_ns)
		pool_ask_huge(rl);
	rl->hold++;
	for (a = TAILQ_FIRST(&rl->accs); a && !rl->stopping && !rl->parking; a = anext) {
		uint64_t idle = (uint64_t)a->svc->idle_timeout_ms * 1000000u;
		struct conn *c, *next;

		/* Cutting a retired acceptor's last connection frees it. */
		anext = TAILQ_NEXT(a, link);
		if (!idle)
			continue;
		for (c = TAILQ_FIRST(&a->lru); c && now - c->last_ns >= idle; c = next) {
			next = TAILQ_NEXT(c, lru);
			if (c->cutting)
				continue;
			log_debug("[%s] closing a connection idle for %u ms", a->svc->name, a->svc->idle_timeout_ms);
			conn_cut(c, EVFDD_END_IDLE_TIMEOUT, false);
		}
	}
	rl->hold--;
	if (!rl->stopping && !rl->parking)
		tick_arm(rl);
	relay_maybe_done(rl);
}

static void tick_arm(struct evfdd_relay *rl)
{
	struct io_uring_sqe sqe = { 0 };

	rl->tick_ts.tv_sec = TICK_MS / 1000;
	rl->tick_ts.tv_nsec = 0;
	io_uring_prep_timeout(&sqe, &rl->tick_ts, 0, 0);
	if (evfd_ring_submit(rl->ring, &sqe, tick_cb, rl, 0, &rl->tick_op) == 0)
		rl->pending++;
}

/* ---- setup ---------------------------------------------------------------------------------------- */

const struct io_uring_restriction *evfdd_relay_restrictions(unsigned *n)
{
	/* Exactly what this file submits and registers; libevfd adds ASYNC_CANCEL and the eventfd. */
#define OP(o) { .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = (o) }
#define REG(o) { .opcode = IORING_RESTRICTION_REGISTER_OP, .register_op = (o) }
	static const struct io_uring_restriction r[] = {
		OP(IORING_OP_ACCEPT), OP(IORING_OP_CONNECT), OP(IORING_OP_LINK_TIMEOUT), OP(IORING_OP_RECV),
		OP(IORING_OP_SEND), OP(IORING_OP_SENDMSG), OP(IORING_OP_TIMEOUT),
		REG(IORING_REGISTER_PBUF_RING), REG(IORING_UNREGISTER_PBUF_RING),
		/* The flags a relay request may carry. */
		{ .opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED,
		  .sqe_flags = IOSQE_IO_LINK | IOSQE_BUFFER_SELECT },
	};
#undef OP
#undef REG
	*n = sizeof(r) / sizeof(r[0]);
	return r;
}

static void services_drop(struct evfdd_relay_service *svcs, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++) {
		evfdd_svc_unref(svcs[i].svc);
		evfdd_listener_unref(svcs[i].lst);
	}
}

#define POOL_HUGE_PAGE (2u << 20)

/* A ring's buffer pool, on transparent huge pages where the kernel allows them. The buffer ring is first in,
 * first out, so even small receives walk the whole pool; once bulk traffic had made it resident on 4 KiB
 * pages, a keep-alive load's p99 stayed at 15-37 ms on the bench machine, against 3-6 ms on 2 MiB pages (and
 * 2-7 ms after dropping the 4 KiB pages). The cost: the pool becomes resident 2 MiB at a time, so a ring
 * with any traffic soon holds its whole pool, within the cap evfdd(8) states. MADV_HUGEPAGE is a hint:
 * without THP the pool is ordinary memory.
 * A ring that starts with traffic waiting (the new image of an upgrade) asks later (@huge false, then
 * pool_ask_huge): each first touch of a 2 MiB page blocks the ring's loop while the kernel finds, perhaps
 * compacts, and clears 2 MiB, and right after an upgrade every ring walks its pool at once. On the bench,
 * streams then stalled up to 92 ms against 33-43 ms on small pages; khugepaged makes huge pages of them
 * afterwards, off the loop. */
static unsigned char *pool_alloc(size_t size, bool huge)
{
	void *p;

	if (size % POOL_HUGE_PAGE || posix_memalign(&p, POOL_HUGE_PAGE, size))
		return malloc(size);
	if (huge)
		(void)madvise(p, size, MADV_HUGEPAGE);
	return p;
}

static void pool_ask_huge(struct evfdd_relay *rl)
{
	size_t size = (size_t)rl->nbufs * rl->bufsz;

	rl->huge_at_ns = 0;
	if (!(size % POOL_HUGE_PAGE) && !((uintptr_t)rl->pool % POOL_HUGE_PAGE))
		(void)madvise(rl->pool, size, MADV_HUGEPAGE);
}

int evfdd_relay_start(struct evfd_ring *ring, struct evfdd_relay_service *svcs, unsigned nsvcs,
		      const struct evfdd_relay_params *p, atomic_uint *nconns, struct evfdd_relay **out)
{
	struct io_uring_buf_reg reg = { 0 };
	struct evfdd_relay *rl = NULL;
	unsigned i;
	int err;

	if (!p->buffers || (p->buffers & (p->buffers - 1)) || p->buffers > 32768 || !p->buffer_size) {
		err = -EINVAL;
		goto fail;
	}
	rl = calloc(1, sizeof(*rl));
	if (!rl) {
		err = -ENOMEM;
		goto fail;
	}
	rl->ring = ring;
	rl->bundle = p->bundle;
	rl->heap_max = (size_t)p->buffers * p->buffer_size;
	TAILQ_INIT(&rl->accs);
	TAILQ_INIT(&rl->waiting);
	rl->nbufs = p->buffers;
	rl->bufsz = p->buffer_size;
	rl->nconns_pub = nconns;
	rl->balance = p->balance;
	rl->mask = (unsigned)io_uring_buf_ring_mask(rl->nbufs);
	err = -posix_memalign((void **)&rl->br, 4096, rl->nbufs * sizeof(struct io_uring_buf));
	if (err)
		goto fail;
	rl->pool = pool_alloc((size_t)rl->nbufs * rl->bufsz, !p->huge_delay_ms);
	if (p->huge_delay_ms)
		rl->huge_at_ns = util_now_ns(CLOCK_MONOTONIC) + (uint64_t)p->huge_delay_ms * 1000000u;
	rl->slot_bid = calloc(rl->nbufs, sizeof(*rl->slot_bid));
	rl->bid_slot = calloc(rl->nbufs, sizeof(*rl->bid_slot));
	if (!rl->pool || !rl->slot_bid || !rl->bid_slot) {
		err = -ENOMEM;
		goto fail;
	}
	io_uring_buf_ring_init(rl->br);
	reg.ring_addr = (uint64_t)(uintptr_t)rl->br;
	reg.ring_entries = rl->nbufs;
	reg.bgid = RELAY_BGID;
	err = io_uring_register_buf_ring(evfd_ring_uring(ring), &reg, 0);
	if (err < 0)
		goto fail;
	for (i = 0; i < rl->nbufs; i++)
		buf_add(rl, i);
	for (i = 0; i < nsvcs; i++)
		acceptor_add(rl, &svcs[i]);
	tick_arm(rl);
	if (rl->balance) {
		atomic_fetch_add(&rl->balance->accepting, 1);
		rl->counted = true;
	}
	*out = rl;
	return 0;
fail:
	services_drop(svcs, nsvcs);
	if (rl) {
		free(rl->pool);
		free(rl->slot_bid);
		free(rl->bid_slot);
		free(rl->br);
		free(rl);
	}
	return err;
}

void evfdd_relay_update(struct evfdd_relay *rl, struct evfdd_relay_service *svcs, unsigned nsvcs)
{
	struct acceptor *a, *next, *old;
	unsigned i;

	if (rl->stopping) {
		services_drop(svcs, nsvcs);
		return;
	}
	old = TAILQ_FIRST(&rl->accs);
	for (i = 0; i < nsvcs; i++) {
		for (a = old; a; a = TAILQ_NEXT(a, link))
			if (!a->retired && a->svc == svcs[i].svc)
				break;
		if (a) {   /* unchanged: keep accepting as before */
			services_drop(&svcs[i], 1);   /* the pointer still names it below */
			continue;
		}
		acceptor_add(rl, &svcs[i]);
	}
	/* New acceptors sit in front of @old: retire what the new list no longer names. */
	for (a = old; a; a = next) {
		next = TAILQ_NEXT(a, link);
		if (a->retired)
			continue;
		for (i = 0; i < nsvcs; i++)
			if (svcs[i].svc == a->svc)
				break;
		if (i < nsvcs)
			continue;
		a->retired = true;
		acceptor_quiet(a);
		acceptor_maybe_free(a);
	}
}

void evfdd_relay_stop(struct evfdd_relay *rl, enum evfdd_relay_stop_how how,
		      void (*done)(struct evfdd_relay *, void *), void *arg)
{
	bool abort = how == EVFDD_RELAY_ABORT;
	struct acceptor *a, *anext;

	if (rl->counted) {
		atomic_fetch_sub(&rl->balance->accepting, 1);
		rl->counted = false;
	}
	rl->stopping = true;
	rl->retiring = how == EVFDD_RELAY_RETIRE && !rl->aborting;
	rl->aborting = rl->aborting || abort;
	rl->hold++;
	rl->done = done;
	rl->done_arg = arg;
	/* Accepting stops first: connections still queued stay in the listening socket, which systemd keeps
	 * for the next instance when it was activated. */
	for (a = TAILQ_FIRST(&rl->accs); a; a = anext) {
		anext = TAILQ_NEXT(a, link);   /* a retired acceptor goes with its last connection */
		acceptor_quiet(a);
		if (abort) {
			struct conn *c, *next;

			for (c = TAILQ_FIRST(&a->lru); c; c = next) {
				next = TAILQ_NEXT(c, lru);
				conn_cut(c, EVFDD_END_SHUTDOWN, true);
			}
		}
	}
	if (rl->tick_op)
		(void)evfd_op_cancel(rl->ring, rl->tick_op);
	rl->hold--;
	relay_maybe_done(rl);
}

void evfdd_relay_free(struct evfdd_relay *rl)
{
	struct acceptor *a;

	if (!rl)
		return;
	(void)io_uring_unregister_buf_ring(evfd_ring_uring(rl->ring), RELAY_BGID);
	while ((a = TAILQ_FIRST(&rl->accs))) {
		TAILQ_REMOVE(&rl->accs, a, link);
		evfdd_listener_unref(a->lst);
		evfdd_svc_block_free(a->svc->st, a->blk);
		evfdd_svc_unref(a->svc);
		free(a);
	}
	free(rl->pool);
	free(rl->slot_bid);
	free(rl->bid_slot);
	free(rl->br);
	free(rl);
}

/* ---- carrying connections to the next image ------------------------------------------------------- */

static void half_park(struct evfdd_relay *rl, struct half *h)
{
	if (h->waiting) {
		TAILQ_REMOVE(&rl->waiting, h, wait);
		h->waiting = false;
	}
	if (h->rop)
		(void)evfd_op_cancel(rl->ring, h->rop);
	if (h->sop)
		(void)evfd_op_cancel(rl->ring, h->sop);
}

/* Cancel everything @c has in flight; its callbacks keep what they bring (parking gates in each). */
static void conn_park(struct conn *c)
{
	struct evfdd_relay *rl = c->acc->rl;
	struct evfd_op *ops[] = { c->connect_op, c->pre_op, c->init_op, c->flush_op };
	size_t i;

	half_park(rl, &c->up);
	if (!conn_echo(c))
		half_park(rl, &c->down);
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (ops[i])
			(void)evfd_op_cancel(rl->ring, ops[i]);
}

void evfdd_relay_park(struct evfdd_relay *rl, void (*done)(struct evfdd_relay *, void *), void *arg)
{
	struct acceptor *a;
	struct conn *c;

	if (rl->counted) {
		atomic_fetch_sub(&rl->balance->accepting, 1);
		rl->counted = false;
	}
	rl->parking = true;
	rl->parked = false;
	rl->park_done = done;
	rl->park_arg = arg;
	rl->hold++;
	TAILQ_FOREACH(a, &rl->accs, link) {
		acceptor_quiet(a);
		TAILQ_FOREACH(c, &a->lru, lru)
			if (!c->cutting)
				conn_park(c);
	}
	if (rl->tick_op)
		(void)evfd_op_cancel(rl->ring, rl->tick_op);
	rl->hold--;
	relay_park_check(rl);
}

/* The pieces of @s not yet sent, appended to @iov (*@n of them so far). */
static void slice_pieces(struct evfdd_relay *rl, struct slice *s, struct iovec *iov, unsigned *n)
{
	unsigned left = s->len - s->off, done = 0, i;

	if (s->heap) {
		iov[(*n)++] = (struct iovec){ s->heap + s->off, left };
		return;
	}
	for (i = s->off / rl->bufsz; done < left; i++) {
		unsigned from = i == s->off / rl->bufsz ? s->off % rl->bufsz : 0;
		unsigned k = rl->bufsz - from;

		if (k > left - done)
			k = left - done;
		iov[(*n)++] = (struct iovec){ buf_addr(rl, slice_bids(s)[i]) + from, k };
		done += k;
	}
}

/* What @h holds unsent, as pieces where it lies (*@iov, to free): the state takes them without a copy of
 * ours. Returns 0 or -ENOMEM. */
static int half_export(struct evfdd_relay *rl, struct half *h, struct evfdd_carry_half *out, struct iovec **iov)
{
	unsigned len = 0, pieces = 0, k;

	out->eof = h->eof;
	out->clean_eof = h->clean_eof;
	out->done = h->done;
	for (k = 0; k < h->qn; k++) {
		const struct slice *s = &h->q[(h->qh + k) & 1];

		len += s->len - s->off;
		pieces += s->heap ? 1 : s->nb;
	}
	out->len = len;
	*iov = NULL;
	if (!len)
		return 0;
	*iov = calloc(pieces, sizeof(**iov));
	if (!*iov)
		return -ENOMEM;
	for (k = 0; k < h->qn; k++)
		slice_pieces(rl, &h->q[(h->qh + k) & 1], *iov, &out->iovcnt);
	out->iov = *iov;
	return 0;
}

static uint64_t ts_ns(const struct __kernel_timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
}

/* Describe @c into @w. Returns 0 or a negative errno. */
static int conn_export(struct conn *c, struct evfdd_carry_writer *w)
{
	struct evfdd_relay *rl = c->acc->rl;
	const struct evfdd_svc *svc = c->svc;
	struct evfdd_carry_conn *r = calloc(1, sizeof(*r));
	struct iovec *up = NULL, *down = NULL;
	unsigned i;
	int err = -ENOMEM;

	if (!r)
		goto out;
	snprintf(r->service, sizeof(r->service), "%s", svc->name);
	if (c->be >= 0)
		snprintf(r->backend, sizeof(r->backend), "%s", c->pool->v[c->be].b->name);
	for (i = 0; i < svc->nroutes; i++)
		if (c->pool == &svc->routes[i].pool) {
			r->route = svc->routes[i].name ? 1 : 2;
			snprintf(r->route_name, sizeof(r->route_name), "%s", svc->routes[i].name ? svc->routes[i].name :
				 "");
		}
	r->stage = c->stage;
	err = evfdd_carry_put_fd(w, c->cfd, &r->cfd);
	r->bfd = -1;
	if (!err && c->bfd >= 0)
		err = evfdd_carry_put_fd(w, c->bfd, &r->bfd);
	if (err)
		goto out;
	r->start_ns = c->start_ns;
	r->last_ns = c->last_ns;
	r->bytes_up = c->bytes_up;
	r->bytes_down = c->bytes_down;
	r->peer = c->peer;
	r->local = c->local;
	r->src_counted = c->src_counted;
	r->pre_state = c->pre_state;
	r->pre_deadline_ns = ts_ns(&c->pre_deadline);
	/* What is left of the preamble and what goes first; their lengths outlive the buffers. */
	if (c->pre) {
		r->pre_used = c->pre_used;
		r->pre_len = c->pre_len;
		r->pre = c->pre;
	}
	if (c->init) {
		r->init_len = c->init_len;
		r->init_off = c->init_off;
		r->init_hdr = c->init_hdr;
		r->init = c->init;
	}
	r->flushing = c->flushing;
	r->dead = c->dead == BACKEND;
	r->flush_end_ns = c->flush_end_ns;
	r->rst_client = c->rst_client;
	r->rst_backend = c->rst_backend;
	err = half_export(rl, &c->up, &r->up, &up);
	if (!err && !conn_echo(c))
		err = half_export(rl, &c->down, &r->down, &down);
	if (!err)
		err = evfdd_carry_put_conn(w, r);
out:
	free(up);
	free(down);
	free(r);
	return err;
}

int evfdd_relay_export(struct evfdd_relay *rl, struct evfdd_carry_writer *w, size_t *fds_left, unsigned *n)
{
	struct acceptor *a;
	struct conn *c;
	int err;

	TAILQ_FOREACH(a, &rl->accs, link)
		TAILQ_FOREACH(c, &a->lru, lru) {
			size_t need = c->bfd >= 0 ? 2 : 1;

			if (c->cutting || c->carried || need > *fds_left)
				continue;
			err = conn_export(c, w);
			if (err < 0)
				return err;
			c->carried = true;
			*fds_left -= need;
			++*n;
		}
	return 0;
}

/* Start @c again where it stopped (parked, or adopted from the previous image). May free @c. */
static void conn_resume(struct conn *c)
{
	switch (c->stage) {
	case EVFDD_CARRY_EDGE:
		conn_edge(c);
		return;
	case EVFDD_CARRY_PRE:
		conn_pre_parse(c);
		return;
	case EVFDD_CARRY_PICK:
		conn_pick(c);
		return;
	case EVFDD_CARRY_INIT:
		conn_connected(c);
		return;
	default:
		if (half_pump(&c->up) && (conn_echo(c) || half_pump(&c->down)))
			conn_settle(c);
		return;
	}
}

/* Give back what @h holds (a carried connection: the next image sends it). */
static void half_forget(struct evfdd_relay *rl, struct half *h)
{
	while (h->qn) {
		slice_release(rl, &h->q[h->qh]);
		h->qh ^= 1;
		if (!--h->qn)
			rl->holders--;
	}
}

void evfdd_relay_unpark(struct evfdd_relay *rl, bool release)
{
	struct conn **all = NULL, *c;
	struct acceptor *a, *anext;
	size_t n = 0, i;

	rl->hold++;
	for (a = TAILQ_FIRST(&rl->accs); a; a = anext) {
		struct conn *next;

		anext = TAILQ_NEXT(a, link);
		for (c = TAILQ_FIRST(&a->lru); c; c = next) {
			next = TAILQ_NEXT(c, lru);
			if (!c->carried)
				continue;
			c->carried = false;
			if (release) {
				half_forget(rl, &c->up);
				half_forget(rl, &c->down);
				conn_release(c, true);
			}
		}
	}
	rl->parking = rl->parked = false;
	/* A resume moves connections within their lists (and may free them): from a snapshot. */
	if (rl->nconns && !(all = malloc(rl->nconns * sizeof(*all))))
		fatalx("out of memory resuming connections");
	TAILQ_FOREACH(a, &rl->accs, link) {
		if (!rl->stopping && !a->retired && a->lst && !a->armed && !a->retrying)
			acceptor_arm(a);
		TAILQ_FOREACH(c, &a->lru, lru)
			if (!c->cutting)
				all[n++] = c;
	}
	if (!rl->stopping) {
		tick_arm(rl);
		if (rl->balance && !rl->counted) {
			atomic_fetch_add(&rl->balance->accepting, 1);
			rl->counted = true;
		}
	}
	for (i = 0; i < n; i++)
		conn_resume(all[i]);
	free(all);
	rl->hold--;
	relay_maybe_done(rl);
}

/* The unsent bytes of a carried half, as one slice of memory of its own. Returns 0 or -ENOMEM. */
static int half_adopt(struct evfdd_relay *rl, struct half *h, const struct evfdd_carry_half *r)
{
	h->eof = r->eof;
	h->clean_eof = r->clean_eof;
	h->done = r->done;
	if (!r->len)
		return 0;
	h->q[0].heap = malloc(r->len);
	if (!h->q[0].heap)
		return -ENOMEM;
	memcpy(h->q[0].heap, r->data, r->len);
	h->q[0].len = r->len;
	h->qh = 0;
	h->qn = 1;
	rl->holders++;
	rl->heap += r->len;
	return 0;
}

int evfdd_relay_adopt(struct evfdd_relay *rl, const struct evfdd_carry_conn *r, int cfd, int bfd)
{
	struct evfdd_svc *svc;
	struct conn *c, *p;
	struct acceptor *a;
	unsigned i;
	int err = -ENOMEM;

	TAILQ_FOREACH(a, &rl->accs, link)
		if (!a->retired && !strcmp(a->svc->name, r->service))
			break;
	if (!a)
		return -ENOENT;
	svc = a->svc;
	/* A service that became the echo, or stopped being it, cannot go on with what it had. */
	if (svc->echo ? bfd >= 0 : (bfd < 0 && r->stage >= EVFDD_CARRY_INIT))
		return -ESTALE;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->acc = a;
	c->svc = evfdd_svc_ref(svc);
	c->cfd = cfd;
	c->bfd = bfd;
	c->be = -1;
	c->end = EVFDD_END_COUNT;
	c->pool = &svc->pool;
	c->up.c = c->down.c = c;
	c->up.cap = c->down.cap = 1;
	c->up.from = c->down.to = cfd;
	c->up.to = svc->echo ? cfd : bfd;
	c->down.from = bfd;
	if (r->route)
		for (i = 0; i < svc->nroutes; i++)
			if (r->route == 1 ? svc->routes[i].name && !strcmp(svc->routes[i].name, r->route_name) :
			    !svc->routes[i].name)
				c->pool = &svc->routes[i].pool;
	for (i = 0; r->backend[0] && i < c->pool->n; i++)
		if (!strcmp(c->pool->v[i].b->name, r->backend)) {
			c->be = (int)i;
			c->tried[0] = (uint16_t)i;
			c->ntried = 1;
			atomic_fetch_add(&c->pool->v[i].b->open, 1);
			break;
		}
	if (bfd >= 0) {
		socklen_t len = sizeof(c->baddr.u);

		if (getpeername(bfd, &c->baddr.u.sa, &len) == 0 ||
		    (len = sizeof(c->baddr.u), getsockname(bfd, &c->baddr.u.sa, &len) == 0))
			c->baddr.len = len;
	}
	c->stage = r->stage;
	c->start_ns = r->start_ns;
	c->last_ns = r->last_ns;
	c->bytes_up = r->bytes_up;
	c->bytes_down = r->bytes_down;
	c->peer = r->peer;
	c->local = r->local;
	if (r->src_counted && c->peer.len && evfdd_addr_source_key(&c->peer, &c->src_key)) {
		/* Its place was taken before: kept whatever the limit is now. */
		(void)evfdd_srclimit_take(svc->st->sources, &c->src_key, UINT32_MAX);
		c->src_counted = true;
	}
	c->pre_state = r->pre_state;
	c->pre_used = r->pre_used;
	c->pre_deadline.tv_sec = (long long)(r->pre_deadline_ns / 1000000000u);
	c->pre_deadline.tv_nsec = (long long)(r->pre_deadline_ns % 1000000000u);
	if (r->pre_len || r->stage == EVFDD_CARRY_PRE) {
		c->pre_cap = r->pre_len > PRE_FIRST ? r->pre_len : PRE_FIRST;
		if (!(c->pre = malloc(c->pre_cap)))
			goto fail;
		if (r->pre_len)
			memcpy(c->pre, r->pre, r->pre_len);
		c->pre_len = r->pre_len;
	}
	if (r->init_len) {
		if (!(c->init = malloc(r->init_len)))
			goto fail;
		memcpy(c->init, r->init, r->init_len);
		c->init_len = r->init_len;
		c->init_off = r->init_off;
		c->init_hdr = r->init_hdr;
	}
	c->flushing = r->flushing;
	c->dead = r->dead ? BACKEND : CLIENT;
	c->flush_end_ns = r->flush_end_ns;
	c->rst_client = r->rst_client;
	c->rst_backend = r->rst_backend;
	if (half_adopt(rl, &c->up, &r->up) < 0)
		goto fail;
	if (svc->echo) {
		c->down.eof = c->down.done = true;
	} else if (half_adopt(rl, &c->down, &r->down) < 0) {
		goto fail;
	}
	atomic_fetch_add(&svc->st->open, 1);
	rl->nconns++;
	if (rl->nconns_pub)
		atomic_store_explicit(rl->nconns_pub, rl->nconns, memory_order_relaxed);
	if (rl->balance)
		atomic_fetch_add_explicit(&rl->balance->conns, 1, memory_order_relaxed);
	/* Oldest activity first, as the idle sweep reads it. */
	for (p = TAILQ_LAST(&a->lru, conn_lru); p && p->last_ns > c->last_ns; p = TAILQ_PREV(p, conn_lru, lru))
		;
	if (p)
		TAILQ_INSERT_AFTER(&a->lru, p, c, lru);
	else
		TAILQ_INSERT_HEAD(&a->lru, c, lru);
	rl->hold++;
	conn_resume(c);
	rl->hold--;
	relay_maybe_done(rl);
	return 0;
fail:
	if (c->be >= 0)
		atomic_fetch_sub(&c->pool->v[c->be].b->open, 1);
	if (c->src_counted)
		evfdd_srclimit_give(svc->st->sources, &c->src_key);
	if (c->up.qn)
		rl->holders--, rl->heap -= c->up.q[0].len, free(c->up.q[0].heap);
	if (c->down.qn)
		rl->holders--, rl->heap -= c->down.q[0].len, free(c->down.q[0].heap);
	free(c->pre);
	free(c->init);
	evfdd_svc_unref(c->svc);
	free(c);
	return err;
}
