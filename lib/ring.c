/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Rings: creation, submission, reaping, and re-arming the requests a previous owner's thread submitted. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"

#define RING_DEFAULT_ENTRIES 256u
#define RING_FREE_OPS_MAX 1024u   /* cached request records per ring */

/* ---- request records ------------------------------------------------------------------------------ */

static struct evfd_op *op_alloc(struct evfd_ring *r)
{
	struct evfd_op *op = r->free_ops;

	if (op) {
		r->free_ops = op->next;
		r->nfree--;
		memset(op, 0, sizeof(*op));
		return op;
	}
	return calloc(1, sizeof(*op));
}

static void op_free(struct evfd_ring *r, struct evfd_op *op)
{
	if (r->nfree >= RING_FREE_OPS_MAX) {
		free(op);
		return;
	}
	op->next = r->free_ops;
	r->free_ops = op;
	r->nfree++;
}

static void inflight_add(struct evfd_ring *r, struct evfd_op *op)
{
	op->prev = NULL;
	op->next = r->inflight;
	if (r->inflight)
		r->inflight->prev = op;
	r->inflight = op;
	STAT_ADD(r->n_inflight, 1);
}

static void inflight_del(struct evfd_ring *r, struct evfd_op *op)
{
	if (op->prev)
		op->prev->next = op->next;
	else
		r->inflight = op->next;
	if (op->next)
		op->next->prev = op->prev;
	STAT_ADD(r->n_inflight, -1);
}

/* The kernel has finished with this submission: release the submitting thread's claim on it. A retiring
 * loop may be waiting for its count to reach zero. */
static void op_end_submission(struct evfd_op *op)
{
	struct evfd_loop *sub = op->submitter;

	op->submitter = NULL;
	if (sub && atomic_fetch_sub(&sub->inflight, 1) == 1 && atomic_load(&sub->retiring))
		evfd__loop_wake(sub);
}

/* Can a new owner cancel this request and submit it again unchanged, with no visible effect? True where
 * -ECANCELED means the request did nothing: socket and file transfers (partial progress is reported as a
 * count, not -ECANCELED), polls, and timeouts with an absolute deadline. MSG_WAITALL transfers could have
 * moved data before the cancel and report it as a short count, so they stay where they are. */
static bool sqe_rearmable(const struct io_uring_sqe *s)
{
	unsigned tflags;

	if (s->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK))
		return false;
	switch (s->opcode) {
	case IORING_OP_ACCEPT:
	case IORING_OP_POLL_ADD:
	case IORING_OP_READ:
	case IORING_OP_READV:
	case IORING_OP_WRITE:
	case IORING_OP_WRITEV:
		return true;
	case IORING_OP_RECV:
	case IORING_OP_SEND:
	case IORING_OP_RECVMSG:
	case IORING_OP_SENDMSG:
		return !(s->msg_flags & MSG_WAITALL);
	case IORING_OP_TIMEOUT:
		tflags = s->timeout_flags & ~(IORING_TIMEOUT_ABS | IORING_TIMEOUT_BOOTTIME |
					      IORING_TIMEOUT_REALTIME | IORING_TIMEOUT_ETIME_SUCCESS);
		return s->off == 0 && tflags == 0;
	default:
		return false;
	}
}

static bool sqe_multishot(const struct io_uring_sqe *s)
{
	switch (s->opcode) {
	case IORING_OP_ACCEPT:
		return s->ioprio & IORING_ACCEPT_MULTISHOT;
	case IORING_OP_RECV:
	case IORING_OP_RECVMSG:
		return s->ioprio & IORING_RECV_MULTISHOT;
	case IORING_OP_POLL_ADD:
		return s->len & IORING_POLL_ADD_MULTI;
	default:
		return false;
	}
}

/* Copy a timeout's timespec into the record (the caller's may go away before the SQ is entered) and make a
 * relative deadline absolute, so that re-arming keeps it. */
static int op_own_timeout(struct evfd_op *op)
{
	const struct __kernel_timespec *ts = (const void *)(uintptr_t)op->sqe.addr;
	unsigned tf = op->sqe.timeout_flags;
	clockid_t clk = CLOCK_MONOTONIC;
	struct timespec now;

	if (!ts)
		return -EINVAL;
	op->ts = *ts;
	op->sqe.addr = (uint64_t)(uintptr_t)&op->ts;
	if (!op->rearmable || (tf & IORING_TIMEOUT_ABS))
		return 0;
	if (tf & IORING_TIMEOUT_BOOTTIME)
		clk = CLOCK_BOOTTIME;
	else if (tf & IORING_TIMEOUT_REALTIME)
		clk = CLOCK_REALTIME;
	clock_gettime(clk, &now);
	op->ts.tv_sec += now.tv_sec;
	op->ts.tv_nsec += now.tv_nsec;
	if (op->ts.tv_nsec >= 1000000000) {
		op->ts.tv_sec++;
		op->ts.tv_nsec -= 1000000000;
	}
	op->sqe.timeout_flags |= IORING_TIMEOUT_ABS;
	return 0;
}

/* ---- the submission queue ------------------------------------------------------------------------- */

/* Put @op's SQE into the SQ if there is room; it joins the unflushed list and is attributed to a thread when
 * entered. */
static int ring_push_nowait(struct evfd_ring *r, struct evfd_op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);

	if (!sqe)
		return -EBUSY;
	*sqe = op->sqe;
	io_uring_sqe_set_data(sqe, op);
	op->pnext = NULL;
	*r->pending_tail = op;
	r->pending_tail = &op->pnext;
	r->npending++;
	return 0;
}

/* The same, entering a full SQ first. */
static int ring_push(struct evfd_ring *r, struct evfd_op *op)
{
	int err = ring_push_nowait(r, op);

	if (err < 0) {
		err = evfd__ring_flush(r);
		if (err < 0)
			return err;
		err = ring_push_nowait(r, op);
	}
	return err;
}

/* A re-arm that found no SQ space waits here; it is not lost. evfd__ring_flush enters it later. */
static void ring_push_or_backlog(struct evfd_ring *r, struct evfd_op *op)
{
	if (!r->backlog && ring_push(r, op) == 0)
		return;
	op->pnext = NULL;
	*r->backlog_tail = op;
	r->backlog_tail = &op->pnext;
}

static void ring_push_backlog(struct evfd_ring *r)
{
	struct evfd_op *op;

	while ((op = r->backlog) && ring_push_nowait(r, op) == 0) {
		r->backlog = op->pnext;
		if (!r->backlog)
			r->backlog_tail = &r->backlog;
	}
}

/* Enter the SQ into the kernel from the owner thread, which becomes the submitter of what it enters, then
 * whatever the backlog holds. Returns 0 or a negative errno (-EBUSY/-EAGAIN: the kernel wants the CQ drained
 * first; the rest stays queued). */
int evfd__ring_flush(struct evfd_ring *r)
{
	struct evfd_loop *l = evfd__tls_loop;
	struct evfd_op *op;
	int n, i;

	for (;;) {
		if (r->npending) {
			do
				n = io_uring_submit(&r->uring);
			while (n == -EINTR);
			if (n < 0)
				return n;
			for (i = 0; i < n && r->pending; i++) {
				op = r->pending;
				r->pending = op->pnext;
				op->submitter = l;
			}
			if (!r->pending)
				r->pending_tail = &r->pending;
			r->npending -= i;
			atomic_fetch_add(&l->inflight, i);
			if (r->npending)
				return -EBUSY;   /* the kernel took only part: try again after draining */
		}
		if (!r->backlog)
			return 0;
		ring_push_backlog(r);
		if (!r->npending)
			return -EBUSY;
	}
}

/* ---- completions ---------------------------------------------------------------------------------- */

static void op_release(struct evfd_ring *r, struct evfd_op *op)
{
	op->done = true;
	if (!op->cancel_refs)
		op_free(r, op);
}

/* The completion of a cancel that a move issued. If a multishot request could not be cancelled because it
 * was busy, it is still armed on the old thread: look again. */
static void ring_cancel_done(struct evfd_ring *r, struct evfd_op *c, const struct io_uring_cqe *cqe)
{
	struct evfd_op *t = c->target;

	t->cancel_refs--;
	if (t->done) {
		if (!t->cancel_refs)
			op_free(r, t);
	} else if (cqe->res != 0 && t->multishot && t->state == EVFD_OP_MIGRATING) {
		t->state = EVFD_OP_ARMED;
		r->migrate_scan = true;
	}
}

static void ring_complete(struct evfd_ring *r, const struct io_uring_cqe *cqe)
{
	struct evfd_op *op = io_uring_cqe_get_data(cqe);
	bool more = cqe->flags & IORING_CQE_F_MORE;

	if (!more) {
		if (op->internal) {
			op_end_submission(op);
			inflight_del(r, op);
			ring_cancel_done(r, op, cqe);
			op_free(r, op);
			return;
		}
		if (cqe->res == -ECANCELED && op->state == EVFD_OP_MIGRATING) {
			/* Cancelled by a move before it did anything: submit it again from this thread. */
			op->state = EVFD_OP_ARMED;
			STAT_ADD(r->rearmed, 1);
			op_end_submission(op);
			ring_push_or_backlog(r, op);
			return;
		}
		op_end_submission(op);
		inflight_del(r, op);
		STAT_ADD(r->completed, 1);
	}
	STAT_ADD(evfd__tls_loop->completions, 1);
	op->cb(r, cqe, op->arg);
	if (!more)
		op_release(r, op);
}

static bool ring_idle(const struct evfd_ring *r)
{
	return !r->inflight && !r->npending && !r->backlog;
}

static void ring_close_now(struct evfd_ring *r);

/* Reap everything the CQ holds, overflowed completions included. Owner thread only. Returns false when a
 * callback freed the ring (it is gone now). */
bool evfd__ring_drain(struct evfd_ring *r)
{
	struct io_uring_cqe *cqe, copy;

	r->in_drain = true;
	for (;;) {
		while (io_uring_peek_cqe(&r->uring, &cqe) == 0) {
			/* Advance first: the callback may submit, and the CQ slot is ours to copy. */
			copy = *cqe;
			io_uring_cqe_seen(&r->uring, cqe);
			ring_complete(r, &copy);
		}
		/* Overflowed CQEs raise no eventfd signal: flush them into the CQ and go round again. */
		if (!io_uring_cq_has_overflow(&r->uring))
			break;
		(void)io_uring_get_events(&r->uring);
	}
	/* Still inside the drain: a ring that evfd_ring_close let go is destroyed just below. */
	if (r->close_requested && !r->closing && ring_idle(r))
		ring_close_now(r);
	r->in_drain = false;
	if (r->closing) {
		evfd__ring_destroy(r);
		return false;
	}
	if (r->migrate_scan)
		evfd__ring_migrate(r);
	return true;
}

/* ---- moving work ---------------------------------------------------------------------------------- */

static int ring_cancel(struct evfd_ring *r, struct evfd_op *t)
{
	struct evfd_op *c = op_alloc(r);
	int err;

	if (!c)
		return -ENOMEM;
	c->internal = true;
	c->target = t;
	c->cb = NULL;
	io_uring_prep_cancel64(&c->sqe, (uint64_t)(uintptr_t)t, 0);
	err = ring_push(r, c);
	if (err < 0) {
		op_free(r, c);
		return err;
	}
	t->cancel_refs++;
	inflight_add(r, c);
	return 0;
}

/* After an adoption: cancel every re-armable request another thread entered, so that it is resubmitted
 * from this one (ring_complete) and its completion work runs here. Nothing waits. */
void evfd__ring_migrate(struct evfd_ring *r)
{
	struct evfd_loop *l = evfd__tls_loop;
	struct evfd_op *op;

	r->migrate_scan = false;
	for (op = r->inflight; op; op = op->next) {
		if (op->internal || !op->rearmable || op->state != EVFD_OP_ARMED)
			continue;
		if (!op->submitter || op->submitter == l)
			continue;
		if (ring_cancel(r, op) < 0) {
			r->migrate_scan = true;   /* no memory or no SQ space: the next wakeup tries again */
			return;
		}
		op->state = EVFD_OP_MIGRATING;
	}
}

/* ---- public --------------------------------------------------------------------------------------- */

static bool on_owner_thread(const struct evfd_ring *r)
{
	return evfd__tls_loop &&
	       atomic_load_explicit(&r->owner, memory_order_relaxed) == evfd__tls_loop;
}

int evfd_ring_submit(struct evfd_ring *r, const struct io_uring_sqe *sqe, evfd_op_cb cb, void *arg,
		     unsigned flags, struct evfd_op **opp)
{
	struct evfd_op *op;
	int err;

	if (!sqe || !cb || (flags & ~EVFD_OP_PINNED))
		return -EINVAL;
	if (!on_owner_thread(r))
		return -EXDEV;
	if (r->close_requested)
		return -ESHUTDOWN;
	op = op_alloc(r);
	if (!op)
		return -ENOMEM;
	op->sqe = *sqe;
	op->cb = cb;
	op->arg = arg;
	op->rearmable = !(flags & EVFD_OP_PINNED) && !r->link_open && sqe_rearmable(sqe);
	op->multishot = sqe_multishot(sqe);
	if (sqe->opcode == IORING_OP_TIMEOUT) {
		err = op_own_timeout(op);
		if (err < 0)
			goto fail;
	}
	err = ring_push(r, op);
	if (err < 0)
		goto fail;
	r->link_open = sqe->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK);
	inflight_add(r, op);
	STAT_ADD(r->submitted, 1);
	if (opp)
		*opp = op;
	return 0;
fail:
	op_free(r, op);
	return err;
}

int evfd_op_cancel(struct evfd_ring *r, struct evfd_op *op)
{
	if (!on_owner_thread(r))
		return -EXDEV;
	if (!op || op->internal || op->done)
		return -EINVAL;
	op->state = EVFD_OP_USER_CANCEL;
	return ring_cancel(r, op);
}

/* Raw io_uring_register: Debian 12's liburing.so does not export the restriction helpers. */
static int ring_register(int fd, unsigned opcode, const void *arg, unsigned nr)
{
	return syscall(__NR_io_uring_register, fd, opcode, arg, nr) < 0 ? -errno : 0;
}

static int ring_restrict(struct evfd_ring *r, const struct evfd_ring_params *p)
{
	static const struct io_uring_restriction ours[] = {
		{ .opcode = IORING_RESTRICTION_SQE_OP, .sqe_op = IORING_OP_ASYNC_CANCEL },
		{ .opcode = IORING_RESTRICTION_REGISTER_OP, .register_op = IORING_REGISTER_EVENTFD },
		{ .opcode = IORING_RESTRICTION_REGISTER_OP, .register_op = IORING_UNREGISTER_EVENTFD },
	};
	const unsigned nours = sizeof(ours) / sizeof(ours[0]);
	struct io_uring_restriction *all;
	int err;

	all = calloc(p->nr_restrictions + nours, sizeof(*all));
	if (!all)
		return -ENOMEM;
	memcpy(all, p->restrictions, p->nr_restrictions * sizeof(*all));
	memcpy(all + p->nr_restrictions, ours, sizeof(ours));
	err = ring_register(r->uring.ring_fd, IORING_REGISTER_RESTRICTIONS, all, p->nr_restrictions + nours);
	if (!err)
		err = ring_register(r->uring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
	free(all);
	return err;
}

static int ring_setup(struct evfd_ring *r, const struct evfd_ring_params *p, unsigned flags)
{
	struct io_uring_params ip;
	unsigned entries = p && p->entries ? p->entries : RING_DEFAULT_ENTRIES;
	bool restricted = p && p->nr_restrictions;
	int err;

	if (p && p->nr_restrictions && !p->restrictions)
		return -EINVAL;
	memset(&ip, 0, sizeof(ip));
	/* SUBMIT_ALL: one bad SQE fails alone instead of stranding the rest in the SQ. No SINGLE_ISSUER or
	 * DEFER_TASKRUN: the ring is used from several threads over its life. COOP_TASKRUN only when asked
	 * (evfd.h says why a moving ring can have it). */
	ip.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
	ip.cq_entries = p && p->cq_entries ? p->cq_entries : 4 * entries;
	if (restricted)
		ip.flags |= IORING_SETUP_R_DISABLED;
	if (flags & EVFD_RING_COOP_TASKRUN)
		ip.flags |= IORING_SETUP_COOP_TASKRUN;
	err = io_uring_queue_init_params(entries, &r->uring, &ip);
	if (err == -EINVAL && (flags & EVFD_RING_COOP_TASKRUN)) {
		/* A kernel without it (before 5.19): the ring works the same, only with more interruptions. */
		memset(&ip, 0, sizeof(ip));
		ip.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | (restricted ? IORING_SETUP_R_DISABLED : 0);
		ip.cq_entries = p && p->cq_entries ? p->cq_entries : 4 * entries;
		err = io_uring_queue_init_params(entries, &r->uring, &ip);
	}
	if (err < 0)
		return err;
	r->flags = ip.flags & IORING_SETUP_COOP_TASKRUN ? EVFD_RING_COOP_TASKRUN : 0;
	/* Before 5.18 registering an eventfd waits for every request in flight: a move could block forever on
	 * a pending recv. LINKED_FILE arrived in the same release. */
	if (!(ip.features & IORING_FEAT_LINKED_FILE)) {
		io_uring_queue_exit(&r->uring);
		return -EOPNOTSUPP;
	}
	if (restricted) {
		err = ring_restrict(r, p);
		if (err < 0)
			io_uring_queue_exit(&r->uring);
	}
	return err;
}

int evfd_ring_new(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p)
{
	return evfd_ring_new_flags(out, owner, p, 0);
}

unsigned evfd_ring_flags(const struct evfd_ring *r)
{
	return r->flags;
}

int evfd_ring_new_flags(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p,
			unsigned flags)
{
	struct evfd_ring *r;
	struct evfd_msg *m = NULL;
	bool here = evfd__tls_loop == owner;
	int err;

	if (!out || !owner || (flags & ~EVFD_RING_COOP_TASKRUN))
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->pending_tail = &r->pending;
	r->backlog_tail = &r->backlog;
	atomic_init(&r->refs, 1);
	if (!here) {
		m = calloc(1, sizeof(*m));
		if (!m) {
			err = -ENOMEM;
			goto fail_free;
		}
	}
	err = ring_setup(r, p, flags);
	if (err < 0)
		goto fail_free;
	err = io_uring_register_eventfd(&r->uring, owner->efd);
	if (err < 0)
		goto fail_exit;
	err = evfd__binding_publish(r, owner);
	if (err < 0)
		goto fail_unreg;
	atomic_store(&r->owner_id, owner->id);
	if (here) {
		atomic_store(&r->owner, owner);
		evfd__loop_link_ring(owner, r);
	} else {
		/* Nobody else knows the ring yet, so publishing before the adoption is queued is safe. */
		atomic_fetch_add(&r->refs, 1);
		atomic_fetch_add(&owner->move_refs, 1);
		m->kind = EVFD_MSG_ADOPT;
		m->move.ring = r;
		m->move.to = owner;
		err = evfd__loop_post(owner, m);
		if (err < 0) {
			atomic_fetch_sub(&owner->move_refs, 1);
			atomic_fetch_sub(&r->refs, 1);
			evfd__binding_retract(r);
			goto fail_unreg;
		}
	}
	*out = r;
	return 0;
fail_unreg:
	io_uring_unregister_eventfd(&r->uring);
fail_exit:
	io_uring_queue_exit(&r->uring);
fail_free:
	free(m);
	free(r);
	return err;
}

void evfd__ring_unref(struct evfd_ring *r)
{
	if (atomic_fetch_sub(&r->refs, 1) == 1)
		free(r);
}

/* The kernel side and the memory: what must wait until the ring's own drain has returned. */
void evfd__ring_destroy(struct evfd_ring *r)
{
	struct evfd_op *op;

	io_uring_unregister_eventfd(&r->uring);
	io_uring_queue_exit(&r->uring);
	while ((op = r->free_ops)) {
		r->free_ops = op->next;
		free(op);
	}
	evfd__ring_unref(r);
}

/* Free an idle ring on its owner thread: gone for everyone at once (the loop no longer counts it, moves and
 * calls find it dead); from a callback of this ring, its drain finishes the job when the callback returns. */
static void ring_release(struct evfd_ring *r)
{
	evfd__loop_unlink_ring(evfd__tls_loop, r);
	atomic_store(&r->dead, true);
	atomic_store(&r->owner, NULL);
	evfd__binding_retract(r);
	if (r->in_drain)
		r->closing = true;
	else
		evfd__ring_destroy(r);
}

/* evfd_ring_close's ring has nothing in flight any more: free it and tell the caller through the owner's
 * inbox, which runs the callback after the ring is destroyed (at the latest at the end of this drain). */
static void ring_close_now(struct evfd_ring *r)
{
	struct evfd_msg *m = r->close_msg;
	struct evfd_loop *l = evfd__tls_loop;

	r->close_msg = NULL;
	ring_release(r);
	if (!m)
		return;
	/* The owner is running, so its inbox is open (it closes only once no ring is left to drain); should that
	 * ever change, calling back at once is better than never. */
	if (evfd__loop_post(l, m) < 0) {
		m->call.fn(l, m->call.arg);
		free(m);
	}
}

int evfd_ring_free(struct evfd_ring *r)
{
	if (!r)
		return 0;
	if (!on_owner_thread(r))
		return -EXDEV;
	if (r->close_requested)
		return -EALREADY;
	if (!ring_idle(r))
		return -EBUSY;
	ring_release(r);
	return 0;
}

int evfd_ring_close(struct evfd_ring *r, evfd_loop_fn done, void *arg)
{
	struct evfd_msg *m = NULL;

	if (!r)
		return -EINVAL;
	if (!on_owner_thread(r))
		return -EXDEV;
	if (r->close_requested)
		return -EALREADY;
	if (done) {
		m = calloc(1, sizeof(*m));
		if (!m)
			return -ENOMEM;
		m->kind = EVFD_MSG_CALL;
		m->call.fn = done;
		m->call.arg = arg;
	}
	r->close_requested = true;
	r->close_msg = m;
	if (ring_idle(r))
		ring_close_now(r);
	return 0;
}

struct io_uring *evfd_ring_uring(struct evfd_ring *r)
{
	return &r->uring;
}

void evfd_ring_set_data(struct evfd_ring *r, void *data)
{
	r->data = data;
}

void *evfd_ring_data(const struct evfd_ring *r)
{
	return r->data;
}

void evfd_ring_stats(const struct evfd_ring *r, struct evfd_ring_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->owner_id = atomic_load_explicit(&r->owner_id, memory_order_relaxed);
	st->inflight = STAT_GET(r->n_inflight);
	st->moves = STAT_GET(r->moves);
	st->submitted = STAT_GET(r->submitted);
	st->completed = STAT_GET(r->completed);
	st->rearmed = STAT_GET(r->rearmed);
}
