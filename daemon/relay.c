/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The data plane of one ring. Each connection is two halves (client->backend "up", backend->client "down"; an
 * echo connection has only "up", sent back to the client). A half is a loop of recv into a provided buffer,
 * send it all to the other side, recycle the buffer, recv again: one buffer per half at most, so a slow
 * reader stalls its sender instead of growing memory (backpressure), and an idle connection holds no buffer.
 * EOF on one side becomes shutdown(SHUT_WR) on the other; the connection lives until both halves are done. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "log.h"
#include "relay.h"

#define RELAY_BGID 1
#define TICK_MS 1000
#define ACCEPT_RETRY_MS 100

enum half_state { H_IDLE, H_RECV, H_SEND, H_WAITBUF, H_DONE };

struct conn;

struct half {
	struct conn *c;
	int from, to;
	enum half_state state;
	struct evfd_op *op;
	unsigned bid;
	unsigned len, off;
	struct half *wnext;              /* waiting for a buffer */
};

struct acceptor {
	struct evfdd_relay *rl;
	struct evfdd_svc *svc;
	struct evfd_op *op;
	bool armed;
	struct __kernel_timespec retry_ts;
	struct conn *lru_head, *lru_tail;   /* oldest activity first */
};

struct conn {
	struct acceptor *acc;
	struct evfdd_svc *svc;
	int cfd, bfd;
	unsigned backend;
	unsigned pending;                /* requests in flight */
	bool aborting;
	uint64_t last_ns;
	struct conn *prev, *next;
	struct evfd_op *connect_op;
	struct __kernel_timespec cto;
	struct half up, down;
};

struct evfdd_relay {
	struct evfd_ring *ring;
	struct io_uring_buf_ring *br;
	unsigned char *pool;
	unsigned nbufs, bufsz, mask;
	struct half *wait_head, *wait_tail;
	struct acceptor *acc;
	unsigned nacc;
	unsigned pending;                /* relay-level requests in flight (accepts, ticks) */
	unsigned nconns;
	struct evfd_op *tick_op;
	struct __kernel_timespec tick_ts;
	bool stopping;
	bool in_stop;                    /* inside evfdd_relay_stop: the walk must not free the relay */
	void (*done)(struct evfdd_relay *, void *);
	void *done_arg;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct evfdd_svc *evfdd_svc_ref(struct evfdd_svc *s)
{
	atomic_fetch_add(&s->refs, 1);
	return s;
}

void evfdd_svc_unref(struct evfdd_svc *s)
{
	if (atomic_fetch_sub(&s->refs, 1) == 1) {
		if (s->listen_fd >= 0)
			close(s->listen_fd);
		free(s->backends);
		log_ratelimit_destroy(&s->connect_rl);
		log_ratelimit_destroy(&s->accept_rl);
		log_ratelimit_destroy(&s->limit_rl);
		free(s);
	}
}

static void relay_maybe_done(struct evfdd_relay *rl)
{
	if (rl->stopping && !rl->in_stop && !rl->pending && !rl->nconns && rl->done) {
		void (*done)(struct evfdd_relay *, void *) = rl->done;

		rl->done = NULL;
		done(rl, rl->done_arg);
	}
}

/* ---- buffers -------------------------------------------------------------------------------------- */

static void buf_recycle(struct evfdd_relay *rl, unsigned bid);

static unsigned char *buf_addr(struct evfdd_relay *rl, unsigned bid)
{
	return rl->pool + (size_t)bid * rl->bufsz;
}

/* ---- connections ---------------------------------------------------------------------------------- */

static void half_recv(struct half *h);

static void lru_unlink(struct conn *c)
{
	struct acceptor *a = c->acc;

	if (c->prev)
		c->prev->next = c->next;
	else
		a->lru_head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		a->lru_tail = c->prev;
	c->prev = c->next = NULL;
}

static void lru_append(struct conn *c)
{
	struct acceptor *a = c->acc;

	c->prev = a->lru_tail;
	c->next = NULL;
	if (a->lru_tail)
		a->lru_tail->next = c;
	else
		a->lru_head = c;
	a->lru_tail = c;
}

static void conn_touch(struct conn *c)
{
	c->last_ns = now_ns();
	if (c->acc->lru_tail != c) {
		lru_unlink(c);
		lru_append(c);
	}
}

static void conn_free(struct conn *c)
{
	struct evfdd_relay *rl = c->acc->rl;

	lru_unlink(c);
	if (c->cfd >= 0)
		close(c->cfd);
	if (c->bfd >= 0)
		close(c->bfd);
	atomic_fetch_sub(&c->svc->open, 1);
	evfdd_svc_unref(c->svc);
	free(c);
	rl->nconns--;
	relay_maybe_done(rl);
}

static bool conn_finished(const struct conn *c)
{
	return c->up.state == H_DONE && (c->svc->echo || c->down.state == H_DONE);
}

/* Called after every completion of the connection: frees it once nothing is left to do. */
static void conn_settle(struct conn *c)
{
	if (c->pending)
		return;
	if (c->aborting || conn_finished(c))
		conn_free(c);
}

static void half_cancel(struct half *h)
{
	struct evfdd_relay *rl = h->c->acc->rl;

	if ((h->state == H_RECV || h->state == H_SEND) && h->op)
		(void)evfd_op_cancel(rl->ring, h->op);
}

/* Cut the connection: cancel what is in flight, close when it has all come back. */
static void conn_abort(struct conn *c)
{
	struct evfdd_relay *rl = c->acc->rl;
	struct half **w;

	if (c->aborting) {
		conn_settle(c);   /* one of the cancelled requests came back */
		return;
	}
	c->aborting = true;
	atomic_fetch_add(&c->svc->aborted, 1);
	if (c->connect_op)
		(void)evfd_op_cancel(rl->ring, c->connect_op);
	half_cancel(&c->up);
	if (!c->svc->echo)
		half_cancel(&c->down);
	for (w = &rl->wait_head; *w;) {
		if ((*w)->c == c) {
			*w = (*w)->wnext;
			continue;
		}
		w = &(*w)->wnext;
	}
	rl->wait_tail = NULL;
	for (struct half *h = rl->wait_head; h; h = h->wnext)
		rl->wait_tail = h;
	/* Shut the sockets down now so that peers see the end at once, even before the cancels return. */
	if (c->cfd >= 0)
		shutdown(c->cfd, SHUT_RDWR);
	if (c->bfd >= 0)
		shutdown(c->bfd, SHUT_RDWR);
	conn_settle(c);
}

static int conn_submit(struct conn *c, struct io_uring_sqe *sqe, evfd_op_cb cb, void *arg, struct evfd_op **op)
{
	struct evfdd_relay *rl = c->acc->rl;
	int err = evfd_ring_submit(rl->ring, sqe, cb, arg, 0, op);

	if (err == 0)
		c->pending++;
	return err;
}

static void half_send(struct half *h);

static void half_done(struct half *h)
{
	h->state = H_DONE;
	/* The other side learns that no more data comes; it may still send its own. */
	if (shutdown(h->to, SHUT_WR) < 0 && errno != ENOTCONN)
		log_debug("[%s] shutdown: %s", h->c->svc->name, strerror(errno));
}

static void half_send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct half *h = arg;
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;

	c->pending--;
	h->op = NULL;
	if (c->aborting || cqe->res <= 0) {
		buf_recycle(rl, h->bid);
		h->state = H_DONE;
		if (!c->aborting && cqe->res < 0)
			log_debug("[%s] send: %s", c->svc->name, strerror(-cqe->res));
		conn_abort(c);
		return;
	}
	if (h == &c->up)
		atomic_fetch_add_explicit(&c->svc->bytes_up, (uint64_t)cqe->res, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&c->svc->bytes_down, (uint64_t)cqe->res, memory_order_relaxed);
	h->off += (unsigned)cqe->res;
	conn_touch(c);
	if (h->off < h->len) {
		half_send(h);
		return;
	}
	buf_recycle(rl, h->bid);
	half_recv(h);
}

static void half_send(struct half *h)
{
	struct conn *c = h->c;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_send(&sqe, h->to, buf_addr(c->acc->rl, h->bid) + h->off, h->len - h->off, MSG_NOSIGNAL);
	h->state = H_SEND;
	if (conn_submit(c, &sqe, half_send_cb, h, &h->op) < 0) {
		buf_recycle(c->acc->rl, h->bid);
		h->state = H_DONE;
		conn_abort(c);
	}
}

static void half_recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct half *h = arg;
	struct conn *c = h->c;
	struct evfdd_relay *rl = c->acc->rl;
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;

	c->pending--;
	h->op = NULL;
	if (cqe->res > 0 && has_buf && !c->aborting) {
		h->bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		h->len = (unsigned)cqe->res;
		h->off = 0;
		conn_touch(c);
		half_send(h);
		return;
	}
	if (has_buf)
		buf_recycle(rl, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
	if (c->aborting) {
		h->state = H_DONE;
		conn_settle(c);
		return;
	}
	if (cqe->res == -ENOBUFS) {
		/* Every buffer of the ring is carrying data: wait for one to come back. */
		h->state = H_WAITBUF;
		h->wnext = NULL;
		if (rl->wait_tail)
			rl->wait_tail->wnext = h;
		else
			rl->wait_head = h;
		rl->wait_tail = h;
		return;
	}
	if (cqe->res == 0) {
		half_done(h);
		conn_settle(c);
		return;
	}
	log_debug("[%s] recv: %s", c->svc->name, strerror(-cqe->res));
	h->state = H_DONE;
	conn_abort(c);
}

static void half_recv(struct half *h)
{
	struct conn *c = h->c;
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_recv(&sqe, h->from, NULL, 0, 0);
	sqe.flags |= IOSQE_BUFFER_SELECT;
	sqe.buf_group = RELAY_BGID;
	h->state = H_RECV;
	if (conn_submit(c, &sqe, half_recv_cb, h, &h->op) < 0) {
		h->state = H_DONE;
		conn_abort(c);
	}
}

static void buf_recycle(struct evfdd_relay *rl, unsigned bid)
{
	struct half *h;

	io_uring_buf_ring_add(rl->br, buf_addr(rl, bid), rl->bufsz, (unsigned short)bid, rl->mask, 0);
	io_uring_buf_ring_advance(rl->br, 1);
	h = rl->wait_head;
	if (h) {
		rl->wait_head = h->wnext;
		if (!rl->wait_head)
			rl->wait_tail = NULL;
		half_recv(h);
	}
}

static void conn_start_relay(struct conn *c)
{
	c->up.state = H_IDLE;
	half_recv(&c->up);
	if (!c->svc->echo && !c->aborting)
		half_recv(&c->down);
}

static void conn_connect(struct conn *c);

static void connect_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;
	unsigned long missed = 0;

	c->pending--;
	c->connect_op = NULL;
	if (c->aborting) {
		conn_settle(c);
		return;
	}
	if (cqe->res == 0) {
		conn_start_relay(c);
		return;
	}
	/* Refused, unreachable or timed out (-ECANCELED from the linked timeout): try the next address. */
	if (++c->backend < c->svc->nbackends) {
		close(c->bfd);
		c->bfd = -1;
		conn_connect(c);
		return;
	}
	atomic_fetch_add(&c->svc->connect_errors, 1);
	if (log_ratelimit(&c->svc->connect_rl, &missed))
		log_warnx("[%s] backend connect failed: %s; closing the client (%lu similar messages suppressed)",
			  c->svc->name, cqe->res == -ECANCELED ? "timed out" : strerror(-cqe->res), missed);
	c->up.state = c->down.state = H_DONE;
	conn_abort(c);
}

static void link_timeout_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct conn *c = arg;

	c->pending--;
	conn_settle(c);
}

static void conn_connect(struct conn *c)
{
	const struct evfdd_backend *b = &c->svc->backends[c->backend];
	struct io_uring_sqe sqe = { 0 };
	int one = 1;

	c->bfd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->bfd < 0) {
		log_warn("[%s] backend socket", c->svc->name);
		atomic_fetch_add(&c->svc->connect_errors, 1);
		c->up.state = c->down.state = H_DONE;
		conn_abort(c);
		return;
	}
	if (c->svc->tcp_nodelay && b->addr.ss_family != AF_UNIX)
		(void)setsockopt(c->bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->down.from = c->up.to = c->bfd;
	io_uring_prep_connect(&sqe, c->bfd, (const struct sockaddr *)&b->addr, b->len);
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
	c->up.state = c->down.state = H_DONE;
	conn_abort(c);
}

static void conn_new(struct acceptor *a, int fd)
{
	struct evfdd_svc *svc = a->svc;
	struct conn *c;
	int one = 1;

	unsigned long missed = 0;

	if (atomic_load(&svc->open) >= svc->max_connections) {
		atomic_fetch_add(&svc->refused, 1);
		if (log_ratelimit(&svc->limit_rl, &missed))
			log_warnx("[%s] max_connections (%u) reached; closing a new connection (%lu similar "
				  "messages suppressed)", svc->name, svc->max_connections, missed);
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		log_warnx("[%s] out of memory for a connection", svc->name);
		close(fd);
		return;
	}
	atomic_fetch_add(&svc->open, 1);
	atomic_fetch_add(&svc->total, 1);
	c->acc = a;
	c->svc = evfdd_svc_ref(svc);
	c->cfd = fd;
	c->bfd = -1;
	c->up.c = c->down.c = c;
	c->up.from = fd;
	c->down.to = fd;
	a->rl->nconns++;
	c->last_ns = now_ns();
	lru_append(c);
	if (svc->tcp_nodelay)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (svc->echo) {
		c->up.to = fd;
		c->down.state = H_DONE;
		conn_start_relay(c);
	} else {
		conn_connect(c);
	}
}

/* ---- accepting ------------------------------------------------------------------------------------ */

static void acceptor_arm(struct acceptor *a);

static void accept_retry_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct acceptor *a = arg;

	a->rl->pending--;
	if (!a->rl->stopping)
		acceptor_arm(a);
	relay_maybe_done(a->rl);
}

static void accept_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct acceptor *a = arg;
	struct evfdd_relay *rl = a->rl;
	struct io_uring_sqe sqe = { 0 };
	unsigned long missed = 0;

	if (cqe->res >= 0) {
		if (rl->stopping)
			close(cqe->res);
		else
			conn_new(a, cqe->res);
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	rl->pending--;
	a->armed = false;
	a->op = NULL;
	if (rl->stopping || cqe->res == -ECANCELED) {
		relay_maybe_done(rl);
		return;
	}
	if (cqe->res < 0 && log_ratelimit(&a->svc->accept_rl, &missed)) {
		if (cqe->res == -EMFILE || cqe->res == -ENFILE)
			log_warnx("[%s] accept: %s; pausing accepts for %d ms, open connections carry on; raise "
				  "LimitNOFILE= or ulimit -n (%lu similar messages suppressed)", a->svc->name,
				  strerror(-cqe->res), ACCEPT_RETRY_MS, missed);
		else
			log_warnx("[%s] accept: %s; retrying in %d ms (%lu similar messages suppressed)",
				  a->svc->name, strerror(-cqe->res), ACCEPT_RETRY_MS, missed);
	}
	/* The multishot accept ended (an error, or the kernel's own limit): accept again shortly. */
	a->retry_ts.tv_sec = 0;
	a->retry_ts.tv_nsec = (cqe->res < 0 ? ACCEPT_RETRY_MS : 0) * 1000000LL;
	io_uring_prep_timeout(&sqe, &a->retry_ts, 0, 0);
	if (evfd_ring_submit(rl->ring, &sqe, accept_retry_cb, a, 0, NULL) == 0) {
		rl->pending++;
	}
}

static void acceptor_arm(struct acceptor *a)
{
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_multishot_accept(&sqe, a->svc->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (evfd_ring_submit(a->rl->ring, &sqe, accept_cb, a, 0, &a->op) == 0) {
		a->rl->pending++;
		a->armed = true;
	} else {
		log_warnx("[%s] cannot arm accept on a ring", a->svc->name);
	}
}

/* ---- idle sweep ----------------------------------------------------------------------------------- */

static void tick_arm(struct evfdd_relay *rl);

static void tick_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct evfdd_relay *rl = arg;
	uint64_t now = now_ns();
	unsigned i;

	rl->pending--;
	rl->tick_op = NULL;
	for (i = 0; i < rl->nacc && !rl->stopping; i++) {
		struct acceptor *a = &rl->acc[i];
		uint64_t idle = (uint64_t)a->svc->idle_timeout_ms * 1000000u;
		struct conn *c, *next;

		if (!idle)
			continue;
		for (c = a->lru_head; c && now - c->last_ns >= idle; c = next) {
			next = c->next;
			log_debug("[%s] closing a connection idle for %u ms", a->svc->name, a->svc->idle_timeout_ms);
			conn_abort(c);
		}
	}
	if (!rl->stopping)
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

int evfdd_relay_start(struct evfd_ring *ring, struct evfdd_svc *const *svcs, unsigned nsvcs,
		      const struct evfdd_relay_params *p, struct evfdd_relay **out)
{
	struct io_uring_buf_reg reg = { 0 };
	struct evfdd_relay *rl;
	unsigned i;
	int err;

	if (!p->buffers || (p->buffers & (p->buffers - 1)) || p->buffers > 32768 || !p->buffer_size)
		return -EINVAL;
	rl = calloc(1, sizeof(*rl));
	if (!rl)
		return -ENOMEM;
	rl->ring = ring;
	rl->nbufs = p->buffers;
	rl->bufsz = p->buffer_size;
	rl->mask = (unsigned)io_uring_buf_ring_mask(rl->nbufs);
	err = -posix_memalign((void **)&rl->br, 4096, rl->nbufs * sizeof(struct io_uring_buf));
	if (err)
		goto fail;
	rl->pool = malloc((size_t)rl->nbufs * rl->bufsz);
	rl->acc = calloc(nsvcs ? nsvcs : 1, sizeof(*rl->acc));
	if (!rl->pool || !rl->acc) {
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
		io_uring_buf_ring_add(rl->br, buf_addr(rl, i), rl->bufsz, (unsigned short)i, rl->mask, (int)i);
	io_uring_buf_ring_advance(rl->br, (int)rl->nbufs);
	rl->nacc = nsvcs;
	for (i = 0; i < nsvcs; i++) {
		rl->acc[i].rl = rl;
		rl->acc[i].svc = evfdd_svc_ref(svcs[i]);
		acceptor_arm(&rl->acc[i]);
	}
	tick_arm(rl);
	*out = rl;
	return 0;
fail:
	free(rl->acc);
	free(rl->pool);
	free(rl->br);
	free(rl);
	return err;
}

void evfdd_relay_stop(struct evfdd_relay *rl, bool abort, void (*done)(struct evfdd_relay *, void *), void *arg)
{
	unsigned i;

	rl->stopping = true;
	rl->in_stop = true;
	rl->done = done;
	rl->done_arg = arg;
	for (i = 0; i < rl->nacc; i++) {
		struct acceptor *a = &rl->acc[i];

		if (a->armed && a->op)
			(void)evfd_op_cancel(rl->ring, a->op);
		if (abort) {
			struct conn *c, *next;

			for (c = a->lru_head; c; c = next) {
				next = c->next;
				conn_abort(c);
			}
		}
	}
	if (rl->tick_op)
		(void)evfd_op_cancel(rl->ring, rl->tick_op);
	rl->in_stop = false;
	relay_maybe_done(rl);
}

void evfdd_relay_free(struct evfdd_relay *rl)
{
	unsigned i;

	if (!rl)
		return;
	(void)io_uring_unregister_buf_ring(evfd_ring_uring(rl->ring), RELAY_BGID);
	for (i = 0; i < rl->nacc; i++)
		evfdd_svc_unref(rl->acc[i].svc);
	free(rl->acc);
	free(rl->pool);
	free(rl->br);
	free(rl);
}
