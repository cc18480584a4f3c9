/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* libevfd internals shared by loop.c (threads, inbox, wakeups), ring.c (submission, reaping, re-arming)
 * and move.c (the owner slot and the hand-over protocol). Not installed. */
#ifndef EVFD_INTERNAL_H
#define EVFD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <urcu-qsbr.h>
#include "evfd.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
/* ThreadSanitizer cannot see liburcu's grace periods (plain loads and fences in an uninstrumented library).
 * Every quiescent state releases this token and every reclamation acquires it, which is exactly the
 * happens-before edge a grace period provides; a read after the reader's last quiescent state still races
 * with the free and is still reported. */
extern char evfd__qs_token;
#define EVFD_QS_RELEASE() __tsan_release(&evfd__qs_token)
#define EVFD_QS_ACQUIRE() __tsan_acquire(&evfd__qs_token)
#else
#define EVFD_QS_RELEASE() ((void)0)
#define EVFD_QS_ACQUIRE() ((void)0)
#endif

/* Counters written by one thread and read anywhere: relaxed atomics, no read-modify-write. */
#define STAT_ADD(field, n) \
	atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n), \
			      memory_order_relaxed)
#define STAT_GET(field) atomic_load_explicit(&(field), memory_order_relaxed)

enum evfd_msg_kind {
	EVFD_MSG_CALL,    /* run a function on the loop's thread */
	EVFD_MSG_MOVE,    /* move a ring: sent to the target first, then forwarded to the owner */
	EVFD_MSG_ADOPT,   /* take a ring over: sent by the previous owner (the MOVE message, reused) */
	EVFD_MSG_RETIRE,  /* hand every ring to a successor and end once nothing is in flight */
	EVFD_MSG_RING_CALL, /* run a function on a ring's owner: forwarded like a MOVE */
};

struct evfd_msg {
	struct evfd_msg *next;
	enum evfd_msg_kind kind;
	union {
		struct {
			evfd_loop_fn fn;
			void *arg;
		} call;
		struct {
			struct evfd_ring *ring;   /* holds a ring reference */
			struct evfd_loop *to;     /* holds a move reference on @to; NULL for a ring call */
			evfd_move_cb done;
			void *arg;
		} move;
		struct {
			struct evfd_loop *to;     /* holds a move reference on @to */
			evfd_loop_fn done;
			void *arg;
		} retire;
	};
};

/* One ring's owner, published in the ring's RCU slot. Replaced on every move; the old one is freed by
 * call_rcu once no reader can hold it. */
struct evfd_binding {
	struct evfd_loop *loop;
	struct rcu_head rcu;
};

struct evfd_loop {
	struct ev_loop *ev;
	bool own_ev;
	bool spawned;
	int efd;                       /* registered on every ring this loop owns; also the inbox doorbell */
	unsigned id;
	ev_io efd_w;
	ev_prepare prep_w;
	pthread_t thread;

	pthread_mutex_t lock;          /* protects the inbox and @closed */
	struct evfd_msg *head, **tailp;
	bool closed;                   /* no longer takes messages */

	/* Loop thread only. */
	struct evfd_ring *rings;       /* owned rings, doubly linked through ring->lnext/lprev */
	struct evfd_ring *iter_next;   /* the next ring loop_process visits; kept valid by unlinking */
	struct evfd_loop *successor;
	evfd_loop_fn retire_done;
	void *retire_arg;

	/* Shared. */
	atomic_bool retiring;
	atomic_bool finished;            /* retirement done; set by the loop thread */
	atomic_uint_fast64_t inflight;   /* requests this thread submitted that are not complete */
	atomic_uint_fast64_t move_refs;  /* moves, adoptions and retirements headed here */
	atomic_uint nrings;
	atomic_uint_fast64_t wakeups, completions, adopted;
};

enum evfd_op_state {
	EVFD_OP_ARMED,
	EVFD_OP_MIGRATING,    /* a move cancelled it: -ECANCELED means resubmit, not report */
	EVFD_OP_USER_CANCEL,  /* the caller cancelled it: -ECANCELED is reported */
};

struct evfd_op {
	struct evfd_op *next, *prev;   /* ring's in-flight list */
	struct evfd_op *pnext;         /* ring's unflushed list */
	struct evfd_loop *submitter;   /* whose thread entered it into the kernel; NULL until flushed */
	evfd_op_cb cb;
	void *arg;
	struct evfd_op *target;        /* internal cancel: the request it cancels */
	unsigned cancel_refs;          /* internal cancels still pointing here */
	uint8_t state;
	bool internal;
	bool rearmable;
	bool multishot;
	bool done;                     /* last CQE delivered; freed once cancel_refs drops to 0 */
	struct io_uring_sqe sqe;       /* what was submitted, for re-arming */
	struct __kernel_timespec ts;   /* a timeout's absolute deadline */
};

struct evfd_ring {
	struct io_uring uring;
	_Atomic(struct evfd_binding *) slot;   /* RCU: current owner, or the loop it is moving to */
	_Atomic(struct evfd_loop *) owner;     /* the loop that has adopted it; NULL while in transit */
	atomic_uint refs;                      /* creator + messages that name the ring */
	atomic_bool dead;
	void *data;
	unsigned flags;                        /* EVFD_RING_* in effect; set at creation */

	/* Owner thread only. */
	struct evfd_ring *lnext, *lprev;
	struct evfd_op *inflight;              /* every submitted, not yet completed request */
	struct evfd_op *pending, **pending_tail;   /* in the SQ, not yet entered */
	unsigned npending;
	struct evfd_op *backlog, **backlog_tail;   /* re-arms waiting for SQ space */
	struct evfd_op *free_ops;
	unsigned nfree;
	bool link_open;                        /* the last SQE asked for a link */
	bool migrate_scan;                     /* look again for requests to re-arm */
	bool in_drain;
	bool closing;                          /* freed by a callback while draining: destroy afterwards */
	bool close_requested;                  /* evfd_ring_close: free once nothing is in flight */
	struct evfd_msg *close_msg;            /* its done callback, posted to the owner once the ring is gone */

	atomic_uint owner_id;
	atomic_uint_fast64_t n_inflight, moves, submitted, completed, rearmed;
};

/* loop.c */
extern __thread struct evfd_loop *evfd__tls_loop;
int evfd__loop_post(struct evfd_loop *l, struct evfd_msg *m);
void evfd__loop_wake(struct evfd_loop *l);
void evfd__loop_link_ring(struct evfd_loop *l, struct evfd_ring *r);
void evfd__loop_unlink_ring(struct evfd_loop *l, struct evfd_ring *r);
void evfd__loop_put_move_ref(struct evfd_loop *l);
void evfd__loop_retire_step(struct evfd_loop *l);

/* ring.c */
bool evfd__ring_drain(struct evfd_ring *r);
int evfd__ring_flush(struct evfd_ring *r);
void evfd__ring_migrate(struct evfd_ring *r);
void evfd__ring_destroy(struct evfd_ring *r);
void evfd__ring_unref(struct evfd_ring *r);

/* move.c */
void evfd__move_handle(struct evfd_loop *l, struct evfd_msg *m);
void evfd__move_adopt(struct evfd_loop *l, struct evfd_msg *m);
int evfd__move_handoff(struct evfd_loop *from, struct evfd_ring *r, struct evfd_msg *m);
int evfd__move_away(struct evfd_loop *from, struct evfd_ring *r, struct evfd_loop *to);
int evfd__binding_publish(struct evfd_ring *r, struct evfd_loop *l);
void evfd__binding_retract(struct evfd_ring *r);
void evfd__rcu_synchronize(void);

/* Test hook: called on the owner thread inside the eventfd swap window of a move (after the old eventfd is
 * unregistered, before the new one is registered). Not exported. */
extern void (*evfd__swap_hook)(struct evfd_ring *r, void *arg);
extern void *evfd__swap_hook_arg;

#endif /* EVFD_INTERNAL_H */
