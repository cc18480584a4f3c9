/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Moving a ring between loops: the RCU slot that names its owner, and the hand-over.
 *
 * Ordering that makes this work without waiting:
 *  1. The owner enters the SQ (it becomes the submitter of what was queued), unregisters its eventfd and
 *     registers the target's. CQEs posted between the two signal nobody; CQEs posted before may still ring
 *     the old eventfd, which is harmless (that loop no longer has the ring).
 *  2. It publishes the new binding, then queues the ring in the target's inbox (the inbox mutex is the
 *     release/acquire pair that hands over the SQ/CQ heads and the request lists). So the new owner always
 *     finds itself in the slot. A MOVE that reaches the target before the adoption (its sender read the new
 *     binding early) sees the ring in transit to itself and queues itself behind the adoption.
 *  3. The target adopts the ring and drains its CQ at once: that picks up what was posted in the swap
 *     window. It then re-arms requests the old thread submitted (ring.c), so their work moves too.
 * The old binding is freed after a grace period: a loop forwarding a MOVE may be reading it. */
#include <errno.h>
#include <stdlib.h>
#include "internal.h"

#if defined(__SANITIZE_THREAD__)
char evfd__qs_token;
#endif

void (*evfd__swap_hook)(struct evfd_ring *r, void *arg);
void *evfd__swap_hook_arg;

static void binding_free(struct rcu_head *head)
{
	EVFD_QS_ACQUIRE();
	free(caa_container_of(head, struct evfd_binding, rcu));
}

void evfd__rcu_synchronize(void)
{
	synchronize_rcu();
	EVFD_QS_ACQUIRE();
}

/* Point @r's slot at @l. The slot is an RCU-protected pointer: a release store here pairs with the acquire
 * load in evfd_ring_owner (rcu_assign_pointer/rcu_dereference, spelled in C11 so that ThreadSanitizer sees
 * them). */
int evfd__binding_publish(struct evfd_ring *r, struct evfd_loop *l)
{
	struct evfd_binding *b = malloc(sizeof(*b)), *old;

	if (!b)
		return -ENOMEM;
	b->loop = l;
	old = atomic_exchange_explicit(&r->slot, b, memory_order_acq_rel);
	if (old)
		call_rcu(&old->rcu, binding_free);
	return 0;
}

void evfd__binding_retract(struct evfd_ring *r)
{
	struct evfd_binding *old = atomic_exchange_explicit(&r->slot, NULL, memory_order_acq_rel);

	if (old)
		call_rcu(&old->rcu, binding_free);
}

struct evfd_loop *evfd_ring_owner(struct evfd_ring *r)
{
	struct evfd_binding *b = atomic_load_explicit(&r->slot, memory_order_acquire);

	return b ? b->loop : NULL;
}

static void move_finish(struct evfd_msg *m, int err)
{
	struct evfd_ring *r = m->move.ring;

	/* Drop the reference first: the callback may free the loop it ran on (from another thread) at once.
	 * The callback never needs @to, and this thread is an RCU reader, so @to stays valid here. */
	if (m->move.to)
		evfd__loop_put_move_ref(m->move.to);
	if (m->move.done)
		m->move.done(r, err, m->move.arg);
	evfd__ring_unref(r);
	free(m);
}

/* Hand @r, owned by @from (the calling thread), to m->move.to, reusing @m as the adoption message.
 * Returns 0, or a negative errno with the ring still owned by @from and @m untouched. */
int evfd__move_handoff(struct evfd_loop *from, struct evfd_ring *r, struct evfd_msg *m)
{
	struct evfd_loop *to = m->move.to;
	struct evfd_binding *b, *old;
	int err;

	b = malloc(sizeof(*b));
	if (!b) {
		err = -ENOMEM;
		goto undo;
	}
	b->loop = to;
	/* Requests queued so far are entered by this thread: it stays their submitter. An SQ the kernel will
	 * not take now (CQ backlog) travels with the ring and is entered by the target. */
	(void)evfd__ring_flush(r);
	err = io_uring_unregister_eventfd(&r->uring);
	if (err < 0 && err != -ENXIO)
		goto undo;
	if (evfd__swap_hook)
		evfd__swap_hook(r, evfd__swap_hook_arg);
	err = io_uring_register_eventfd(&r->uring, to->efd);
	if (err < 0) {
		(void)io_uring_register_eventfd(&r->uring, from->efd);
		goto undo;
	}
	evfd__loop_unlink_ring(from, r);
	atomic_store_explicit(&r->owner, NULL, memory_order_relaxed);
	old = atomic_exchange_explicit(&r->slot, b, memory_order_acq_rel);
	STAT_ADD(r->moves, 1);   /* before the post: from then on the ring is the target's */
	m->kind = EVFD_MSG_ADOPT;
	err = evfd__loop_post(to, m);
	if (err < 0) {
		/* The target stopped taking messages: only a caller that moved a ring to a freed loop gets
		 * here. Keep the ring. */
		atomic_store_explicit(&r->slot, old, memory_order_release);
		call_rcu(&b->rcu, binding_free);   /* a reader may have seen it */
		b = NULL;
		STAT_ADD(r->moves, -1);
		(void)io_uring_unregister_eventfd(&r->uring);
		(void)io_uring_register_eventfd(&r->uring, from->efd);
		atomic_store_explicit(&r->owner, from, memory_order_relaxed);
		evfd__loop_link_ring(from, r);
		m->kind = EVFD_MSG_MOVE;
		goto undo;
	}
	if (old)
		call_rcu(&old->rcu, binding_free);
	return 0;
undo:
	free(b);
	return err;
}

/* A MOVE arrives at the owner the caller saw (loop threads) or at the target (the only loop any other caller
 * surely knows is alive), and is forwarded to whoever owns the ring. A RING_CALL starts at the owner the caller saw and is forwarded the same way. */
void evfd__move_handle(struct evfd_loop *l, struct evfd_msg *m)
{
	struct evfd_ring *r = m->move.ring;
	struct evfd_loop *owner, *dest;
	int err;

	if (atomic_load(&r->dead)) {
		move_finish(m, -ENODEV);
		return;
	}
	owner = atomic_load_explicit(&r->owner, memory_order_relaxed);
	if (owner != l) {
		/* Not ours. The binding names the owner, or the loop the ring is travelling to; in our own case
		 * the adoption is on its way, so go to the back of our queue and look again then. */
		dest = evfd_ring_owner(r);
		if (!dest) {
			move_finish(m, -ENODEV);
			return;
		}
		if (evfd__loop_post(dest, m) < 0)
			move_finish(m, -ENXIO);
		return;
	}
	if (m->kind == EVFD_MSG_RING_CALL || m->move.to == l) {
		move_finish(m, 0);
		return;
	}
	err = evfd__move_handoff(l, r, m);
	if (err < 0)
		move_finish(m, err);
}

/* The ring is ours now. Drain it before anything else: completions posted while no eventfd was registered
 * signalled nobody. Then move the old thread's long-lived requests here. */
void evfd__move_adopt(struct evfd_loop *l, struct evfd_msg *m)
{
	struct evfd_ring *r = m->move.ring;

	atomic_store_explicit(&r->owner, l, memory_order_relaxed);
	atomic_store_explicit(&r->owner_id, l->id, memory_order_relaxed);
	evfd__loop_link_ring(l, r);
	STAT_ADD(l->adopted, 1);
	if (evfd__ring_drain(r)) {
		evfd__ring_migrate(r);
		(void)evfd__ring_flush(r);
	}
	move_finish(m, 0);
}

/* A message naming a ring (and, for a move, its target): it holds a reference on each until it is finished
 * or dropped. */
static struct evfd_msg *ring_msg_new(enum evfd_msg_kind kind, struct evfd_ring *r, struct evfd_loop *to,
				     evfd_move_cb done, void *arg)
{
	struct evfd_msg *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->kind = kind;
	m->move.ring = r;
	m->move.to = to;
	m->move.done = done;
	m->move.arg = arg;
	atomic_fetch_add(&r->refs, 1);
	if (to)
		atomic_fetch_add(&to->move_refs, 1);
	return m;
}

/* Undo ring_msg_new for a message that was never posted: no callback runs. */
static void ring_msg_drop(struct evfd_msg *m)
{
	if (m->move.to)
		atomic_fetch_sub(&m->move.to->move_refs, 1);
	evfd__ring_unref(m->move.ring);
	free(m);
}

/* Move @r, owned by the calling loop @from, to @to at once (retirement). Returns 0 or a negative errno with
 * the ring still here. */
int evfd__move_away(struct evfd_loop *from, struct evfd_ring *r, struct evfd_loop *to)
{
	struct evfd_msg *m = ring_msg_new(EVFD_MSG_MOVE, r, to, NULL, NULL);
	int err;

	if (!m)
		return -ENOMEM;
	err = evfd__move_handoff(from, r, m);
	if (err < 0)
		ring_msg_drop(m);   /* the caller owns the ring, so this is never its last reference */
	return err;
}

int evfd_ring_move(struct evfd_ring *r, struct evfd_loop *to, evfd_move_cb done, void *arg)
{
	struct evfd_loop *dest;
	struct evfd_msg *m;
	int err;

	if (!r || !to)
		return -EINVAL;
	m = ring_msg_new(EVFD_MSG_MOVE, r, to, done, arg);
	if (!m)
		return -ENOMEM;
	/* A loop thread may read the owner (RCU) and save a hop; any other thread only knows @to is alive. */
	dest = evfd__tls_loop ? evfd_ring_owner(r) : NULL;
	err = evfd__loop_post(dest ? dest : to, m);
	if (err < 0)
		ring_msg_drop(m);
	return err;
}

int evfd_ring_call(struct evfd_ring *r, evfd_move_cb fn, void *arg)
{
	struct evfd_loop *dest;
	struct evfd_msg *m;
	int err;

	if (!r || !fn)
		return -EINVAL;
	if (!evfd__tls_loop)
		return -EPERM;   /* the owner lookup below is an RCU read: loop threads only */
	m = ring_msg_new(EVFD_MSG_RING_CALL, r, NULL, fn, arg);
	if (!m)
		return -ENOMEM;
	dest = evfd_ring_owner(r);
	err = dest ? evfd__loop_post(dest, m) : -ENODEV;
	if (err < 0)
		ring_msg_drop(m);
	return err;
}
