/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Active health checks; see health.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "health.h"
#include "log.h"
#include "util.h"

/* One backend's checks. */
struct check {
	TAILQ_ENTRY(check) link;
	struct evfdd_health *h;
	struct evfdd_svc *svc;           /* the settings it follows: a reference */
	struct evfdd_backend *b;         /* a reference */
	ev_timer timer;
	bool running;                    /* a check is under way */
	bool removed;                    /* no longer wanted: freed once nothing is in flight */
	bool kept;                       /* seen by the apply under way */
	unsigned pending;                /* requests in flight, link timeouts included */
	struct evfd_op *op;
	int fd;
	size_t addr_k;
	struct evfdd_sockaddr addr;
	uint64_t deadline_ns;
	struct __kernel_timespec ts;
	size_t sent, got;
	char reply[EVFDD_CONFIG_MAX_CHECK];
	uint64_t seen_changes;           /* the backend's state_changes when the streak was last counted */
};

struct evfdd_health {
	struct evfd_loop *main;
	struct evfd_ring *ring;
	TAILQ_HEAD(, check) checks;
	bool stopping;
	bool closing;                    /* the ring is closing: done comes from health_ring_gone */
	void (*done)(void *);
	void *done_arg;
};

static const struct io_uring_restriction *health_restrictions(unsigned *n)
{
#define OP(o) { .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = (o) }
	static const struct io_uring_restriction r[] = {
		OP(IORING_OP_CONNECT), OP(IORING_OP_SEND), OP(IORING_OP_RECV), OP(IORING_OP_LINK_TIMEOUT),
		{ .opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED, .sqe_flags = IOSQE_IO_LINK },
	};
#undef OP
	*n = sizeof(r) / sizeof(r[0]);
	return r;
}

int evfdd_health_new(struct evfdd_health **out, struct evfd_loop *main)
{
	struct evfdd_health *h = calloc(1, sizeof(*h));

	*out = h;
	if (!h)
		return -ENOMEM;
	h->main = main;
	TAILQ_INIT(&h->checks);
	return 0;
}

static void health_ring_gone(struct evfd_loop *loop, void *arg)
{
	struct evfdd_health *h = arg;

	h->ring = NULL;
	h->done(h->done_arg);
}

/* Once stopping and nothing is left: close the ring, then say so. */
static void health_maybe_done(struct evfdd_health *h)
{
	if (!h->stopping || !TAILQ_EMPTY(&h->checks) || !h->done || h->closing)
		return;
	/* The ring may go within evfd_ring_close; only health_ring_gone says when. */
	if (h->ring && evfd_ring_close(h->ring, health_ring_gone, h) == 0) {
		h->closing = true;
		return;
	}
	h->ring = NULL;
	h->done(h->done_arg);
}

static void check_free(struct check *c)
{
	struct evfdd_health *h = c->h;

	TAILQ_REMOVE(&h->checks, c, link);
	if (c->fd >= 0)
		close(c->fd);
	evfdd_svc_unref(c->svc);
	evfdd_backend_unref(c->b);
	free(c);
	health_maybe_done(h);
}

static ev_tstamp check_interval(const struct check *c)
{
	return c->svc->health_interval_ms / 1000.0;
}

/* The outcome of one check: @why is NULL for a pass, else what failed. */
static void check_finish(struct check *c, const char *why)
{
	struct evfdd_backend *b = c->b;
	const struct evfdd_pool *p = &c->svc->pool;
	uint64_t changes = atomic_load(&b->state_changes);
	enum evfdd_backend_health health = (enum evfdd_backend_health)atomic_load(&b->health);
	char msg[256];

	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->running = false;
	if (c->removed) {
		if (!c->pending)
			check_free(c);
		return;
	}
	/* A change made elsewhere (passive health, a drain) starts the streak afresh. */
	if (changes != c->seen_changes) {
		b->check_pass = b->check_fail = 0;
		c->seen_changes = changes;
	}
	if (!why) {
		b->check_fail = 0;
		b->check_pass++;
		log_debug("[%s] backend %s: health check passed", c->svc->name, b->name);
		if (health == EVFDD_HEALTH_DOWN && b->check_pass >= p->rise) {
			snprintf(msg, sizeof(msg), "%u health check%s passed", b->check_pass,
				 b->check_pass == 1 ? "" : "s");
			atomic_store(&b->fails, 0);
			evfdd_backend_set_health(b, EVFDD_HEALTH_UP, msg);
		}
	} else {
		b->check_pass = 0;
		b->check_fail++;
		log_debug("[%s] backend %s: health check failed: %s", c->svc->name, b->name, why);
		if (health == EVFDD_HEALTH_UP && b->check_fail >= p->fall) {
			snprintf(msg, sizeof(msg), "%u health check%s failed (last: %s)", b->check_fail,
				 b->check_fail == 1 ? "" : "s", why);
			evfdd_backend_set_health(b, EVFDD_HEALTH_DOWN, msg);
		}
	}
	c->seen_changes = atomic_load(&b->state_changes);
}

/* The start of every step's completion: false when the check was removed meanwhile (it is over then). */
static bool check_step_done(struct check *c)
{
	c->pending--;
	c->op = NULL;
	if (!c->removed)
		return true;
	check_finish(c, "removed");
	return false;
}

static void check_link_timeout_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct check *c = arg;

	c->pending--;
	if (c->removed && !c->pending && !c->running)
		check_free(c);
}

/* Submit @sqe linked to a timeout at the check's deadline. Returns false (the check failed) when the ring
 * would not take it. */
static bool check_submit(struct check *c, struct io_uring_sqe *sqe, evfd_op_cb cb)
{
	uint64_t now = util_now_ns(CLOCK_MONOTONIC), left = c->deadline_ns > now ? c->deadline_ns - now : 1;
	struct io_uring_sqe t = { 0 };

	sqe->flags |= IOSQE_IO_LINK;
	if (evfd_ring_submit(c->h->ring, sqe, cb, c, 0, &c->op) < 0)
		return false;
	c->pending++;
	c->ts.tv_sec = (long long)(left / 1000000000u);
	c->ts.tv_nsec = (long long)(left % 1000000000u);
	io_uring_prep_link_timeout(&t, &c->ts, 0);
	if (evfd_ring_submit(c->h->ring, &t, check_link_timeout_cb, c, 0, NULL) == 0)
		c->pending++;
	return true;
}

static const char *check_errstr(int res)
{
	return res == -ECANCELED ? "timed out" : strerror(-res);
}

static void check_recv(struct check *c);
static void check_send(struct check *c);
static void check_connect(struct check *c);

/* After the connect, or the send: what is left to do. */
static void check_next(struct check *c)
{
	if (c->svc->check_send && c->sent < c->svc->check_send_len)
		check_send(c);
	else if (c->svc->check_expect)
		check_recv(c);
	else
		check_finish(c, NULL);
}

static void check_recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct check *c = arg;
	char why[128];

	if (!check_step_done(c))
		return;
	if (cqe->res < 0) {
		snprintf(why, sizeof(why), "receiving: %s", check_errstr(cqe->res));
		check_finish(c, why);
		return;
	}
	if (cqe->res == 0) {
		snprintf(why, sizeof(why), "closed after %zu of the %zu bytes expected", c->got,
			 c->svc->check_expect_len);
		check_finish(c, why);
		return;
	}
	c->got += (size_t)cqe->res;
	if (memcmp(c->reply, c->svc->check_expect, c->got) != 0)
		check_finish(c, "the reply is not the one expected");
	else if (c->got == c->svc->check_expect_len)
		check_finish(c, NULL);
	else
		check_recv(c);
}

static void check_recv(struct check *c)
{
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_recv(&sqe, c->fd, c->reply + c->got, c->svc->check_expect_len - c->got, 0);
	if (!check_submit(c, &sqe, check_recv_cb))
		check_finish(c, "the ring is full");
}

static void check_send_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct check *c = arg;
	char why[128];

	if (!check_step_done(c))
		return;
	if (cqe->res <= 0) {
		snprintf(why, sizeof(why), "sending: %s", cqe->res ? check_errstr(cqe->res) : "nothing sent");
		check_finish(c, why);
		return;
	}
	c->sent += (size_t)cqe->res;
	check_next(c);
}

static void check_send(struct check *c)
{
	struct io_uring_sqe sqe = { 0 };

	io_uring_prep_send(&sqe, c->fd, c->svc->check_send + c->sent, c->svc->check_send_len - c->sent,
			   MSG_NOSIGNAL);
	if (!check_submit(c, &sqe, check_send_cb))
		check_finish(c, "the ring is full");
}

static void check_connect_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	struct check *c = arg;
	char why[128];

	if (!check_step_done(c))
		return;
	if (cqe->res == 0) {
		check_next(c);
		return;
	}
	close(c->fd);
	c->fd = -1;
	/* A name's next address, while time is left. */
	if (++c->addr_k && util_now_ns(CLOCK_MONOTONIC) < c->deadline_ns &&
	    evfdd_backend_addr(c->b, c->addr_k, &c->addr)) {
		check_connect(c);
		return;
	}
	snprintf(why, sizeof(why), "connect: %s", check_errstr(cqe->res));
	check_finish(c, why);
}

static void check_connect(struct check *c)
{
	struct io_uring_sqe sqe = { 0 };
	char why[128];

	c->fd = socket(c->addr.u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		snprintf(why, sizeof(why), "socket: %s", strerror(errno));
		check_finish(c, why);
		return;
	}
	io_uring_prep_connect(&sqe, c->fd, &c->addr.u.sa, c->addr.len);
	if (!check_submit(c, &sqe, check_connect_cb))
		check_finish(c, "the ring is full");
}

static void check_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct check *c = w->data;
	uint32_t limit = c->svc->connect_timeout_ms < c->svc->health_interval_ms ? c->svc->connect_timeout_ms :
			 c->svc->health_interval_ms;

	if (c->running)
		return;   /* cannot happen: a check ends by its deadline, before the next tick */
	c->running = true;
	c->addr_k = 0;
	c->sent = c->got = 0;
	c->deadline_ns = util_now_ns(CLOCK_MONOTONIC) + (uint64_t)limit * 1000000;
	if (!evfdd_backend_addr(c->b, 0, &c->addr)) {
		check_finish(c, "the name has no address");
		return;
	}
	check_connect(c);
}

static void check_remove(struct check *c)
{
	c->removed = true;
	ev_timer_stop(evfd_loop_ev(c->h->main), &c->timer);
	if (c->op)
		(void)evfd_op_cancel(c->h->ring, c->op);
	if (!c->pending)
		check_free(c);
}

static struct check *check_find(struct evfdd_health *h, const struct evfdd_backend *b)
{
	struct check *c;

	TAILQ_FOREACH(c, &h->checks, link)
		if (c->b == b && !c->removed)
			return c;
	return NULL;
}

/* Check backend @b of @svc from now on (a check already there follows @svc's settings). */
static int check_want(struct evfdd_health *h, struct evfdd_svc *svc, struct evfdd_backend *b)
{
	struct check *c = check_find(h, b);
	struct ev_loop *ev = evfd_loop_ev(h->main);

	if (c) {
		bool new_interval = c->svc->health_interval_ms != svc->health_interval_ms;

		evfdd_svc_unref(c->svc);
		c->svc = evfdd_svc_ref(svc);
		c->kept = true;
		if (new_interval) {
			ev_timer_stop(ev, &c->timer);
			ev_timer_set(&c->timer, check_interval(c), check_interval(c));
			ev_timer_start(ev, &c->timer);
		}
		return 0;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->h = h;
	c->svc = evfdd_svc_ref(svc);
	c->b = evfdd_backend_ref(b);
	c->fd = -1;
	c->kept = true;
	c->seen_changes = atomic_load(&b->state_changes);
	TAILQ_INSERT_TAIL(&h->checks, c, link);
	/* The first check at once: a backend that is down at start-up is found within fall intervals. */
	ev_timer_init(&c->timer, check_timer_cb, 0., check_interval(c));
	c->timer.data = c;
	ev_timer_start(ev, &c->timer);
	return 0;
}

int evfdd_health_apply(struct evfdd_health *h, const struct evfdd_relay_service *svcs, unsigned n)
{
	struct evfd_ring_params rp = { .entries = 64 };
	struct check *c, *next;
	bool want = false;
	int err = 0;

	for (unsigned i = 0; i < n; i++)
		want = want || (svcs[i].svc->check != EVFDD_CHECK_NONE && svcs[i].svc->pool.n);
	if (want && !h->ring) {
		rp.restrictions = health_restrictions(&rp.nr_restrictions);
		err = evfd_ring_new(&h->ring, h->main, &rp);
		if (err < 0) {
			h->ring = NULL;
			log_errx("health checks: cannot make their io_uring ring: %s; backends keep passive health "
				 "only", strerror(-err));
			want = false;
		}
	}
	TAILQ_FOREACH(c, &h->checks, link)
		c->kept = false;
	for (unsigned i = 0; want && i < n; i++) {
		struct evfdd_svc *svc = svcs[i].svc;

		if (svc->check == EVFDD_CHECK_NONE)
			continue;
		for (unsigned k = 0; k < svc->pool.n; k++)
			if (check_want(h, svc, svc->pool.v[k].b) < 0 && !err) {
				log_errx("[%s] health checks: out of memory; backend %s keeps passive health only",
					 svc->name, svc->pool.v[k].b->name);
				err = -ENOMEM;
			}
	}
	for (c = TAILQ_FIRST(&h->checks); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (!c->kept && !c->removed)
			check_remove(c);
	}
	return err;
}

void evfdd_health_stop(struct evfdd_health *h, void (*done)(void *), void *arg)
{
	struct check *c, *next;

	h->done = done;
	h->done_arg = arg;
	for (c = TAILQ_FIRST(&h->checks); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (!c->removed)
			check_remove(c);
	}
	h->stopping = true;   /* only now: the last check_free above must not close the ring before the loop ends */
	health_maybe_done(h);
}

void evfdd_health_free(struct evfdd_health *h)
{
	struct check *c;

	if (!h)
		return;
	/* Only after stop's done, or when none ever ran: nothing is in flight. */
	while ((c = TAILQ_FIRST(&h->checks))) {
		TAILQ_REMOVE(&h->checks, c, link);
		ev_timer_stop(evfd_loop_ev(h->main), &c->timer);
		if (c->fd >= 0)
			close(c->fd);
		evfdd_svc_unref(c->svc);
		evfdd_backend_unref(c->b);
		free(c);
	}
	if (h->ring)
		(void)evfd_ring_free(h->ring);
	free(h);
}
