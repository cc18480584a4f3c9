/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libevfd: io_uring rings bound to libev loops, movable between loops at run time.
 *
 * A loop (struct evfd_loop) is one libev loop run by one thread. It owns one non-blocking eventfd,
 * registered on every ring it owns and watched by an ev_io, and an inbox other threads post to.
 *
 * A ring (struct evfd_ring) is one io_uring. It is owned by exactly one loop at a time; only the owner's
 * thread submits to it and reaps it, and every completion callback runs on the owner's thread. A ring is
 * therefore a serialisation domain: state that only a ring's callbacks touch needs no locks, even as the
 * ring moves. The current owner is published in an RCU slot (urcu-qsbr); old bindings are reclaimed after
 * a grace period.
 *
 * evfd_ring_move() hands a ring to another loop without waiting for in-flight I/O: the owner flushes
 * pending submissions, swaps the registered eventfd, publishes the new owner and posts the ring to the
 * target, which drains the CQ at once (completions posted during the swap signal no eventfd). The new owner
 * then re-arms long-lived requests that the previous thread submitted (cancel, then resubmit the same
 * request from the new thread) so that their completion work really moves, and so that the previous thread
 * can end without the kernel cancelling them. Callers never see -ECANCELED, a lost completion or a duplicate
 * because of a move or a loop retirement.
 *
 * Conventions: functions return 0 (or a count) on success and a negative errno on failure, as liburing does.
 * The library never prints and never exits. "Owner thread" below means the thread running the loop that
 * currently owns the ring: in practice, code running inside a completion callback or an evfd_loop_call()
 * function on that loop.
 */
#ifndef EVFD_H
#define EVFD_H

#include <stdint.h>
#include <liburing.h>
#include <ev.h>

#ifdef __cplusplus
extern "C" {
#endif

struct evfd_loop;
struct evfd_ring;
struct evfd_op;

/* Called on the owner thread for every CQE of an operation; for a multishot request once per CQE, the last
 * one without IORING_CQE_F_MORE. The operation handle is invalid after the last call. */
typedef void (*evfd_op_cb)(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg);

/* Called on the target loop's thread once it owns the ring and has drained its CQ (err == 0), or on the
 * thread that found the move impossible (err < 0): -ENODEV when the ring had been freed (possible only with
 * several messages for one ring in flight, see evfd_ring_free), -ENXIO when the target had stopped, -ENOMEM,
 * or an io_uring_register error from the eventfd swap (the ring stays where it was). Also the type of the
 * function evfd_ring_call runs on the owner. */
typedef void (*evfd_move_cb)(struct evfd_ring *ring, int err, void *arg);

/* A function run on a loop's thread. */
typedef void (*evfd_loop_fn)(struct evfd_loop *loop, void *arg);

/* ---- loops ---------------------------------------------------------------------------------------- */

/*
 * evfd_loop_new - attach to a libev loop that the calling thread runs
 * @out: receives the loop
 * @ev: the libev loop; NULL creates a new one, owned and destroyed by the evfd_loop
 *
 * Call on the thread that will run @ev (with ev_run). Registers that thread with urcu-qsbr (do not register
 * it yourself) and takes over @ev's release/acquire callbacks (ev_set_loop_release_cb) to keep the thread
 * offline while it blocks. Returns 0, -ENOMEM, -EMFILE/-ENFILE (eventfd), or -EEXIST if the calling thread
 * already runs an evfd loop.
 */
int evfd_loop_new(struct evfd_loop **out, struct ev_loop *ev);

/*
 * evfd_loop_spawn - start a loop on a new thread
 * @out: receives the loop, running when this returns
 * @name: thread name (at most 15 bytes are used), or NULL
 *
 * Safe from any thread. The thread runs until the loop is retired (evfd_loop_retire) and freed.
 * Returns 0, -ENOMEM, -EAGAIN (no thread), -EMFILE/-ENFILE.
 */
int evfd_loop_spawn(struct evfd_loop **out, const char *name);

/* The libev loop; use it only on the loop's thread. */
struct ev_loop *evfd_loop_ev(struct evfd_loop *loop);

/* A small number, unique among live loops, for logs and statistics. */
unsigned evfd_loop_id(const struct evfd_loop *loop);

/* The loop run by the calling thread, or NULL. */
struct evfd_loop *evfd_loop_current(void);

/*
 * evfd_loop_call - run @fn(@loop, @arg) on @loop's thread, soon and in posting order
 *
 * Safe from any thread; @loop must not have finished retiring. Returns 0, -EINVAL (@fn is NULL), -ENOMEM,
 * or -ENXIO (the loop has stopped).
 */
int evfd_loop_call(struct evfd_loop *loop, evfd_loop_fn fn, void *arg);

/*
 * evfd_loop_retire - stop using @loop: move its rings to @to, then end
 * @to: the loop that takes over every ring @loop owns or receives from now on; not @loop
 * @done: called on @loop's thread once nothing that thread submitted is still in flight, or NULL
 *
 * Nothing waits: rings leave at once with their pending requests, which @to re-arms. For a spawned loop the
 * thread returns from ev_run after @done; for an attached loop the caller may stop running it after @done.
 * Either way call evfd_loop_free() afterwards; an attached loop's watcher keeps ev_run going, so its caller
 * ends ev_run itself (ev_break in @done). Safe from any thread. Returns 0, -EINVAL (@to is @loop or NULL),
 * -EALREADY (already retiring), -ENOMEM or -ENXIO (@loop has stopped).
 */
int evfd_loop_retire(struct evfd_loop *loop, struct evfd_loop *to, evfd_loop_fn done, void *arg);

/*
 * evfd_loop_free - release a loop
 *
 * A spawned loop must have finished retiring (its done callback ran), or never have been retired and own
 * no ring with nothing in flight; its thread is stopped and joined. Call it from any thread but the loop's
 * own. An attached loop must be freed on its own thread, owning no ring and with nothing in flight (retired,
 * or never used); the thread is then unregistered from urcu-qsbr and the libev loop is left to its owner
 * (destroyed if evfd_loop_new created it). Waits for an RCU grace period. Returns 0, -EBUSY (rings, requests
 * or moves still headed here, or retirement not finished; nothing was freed), -EDEADLK (a spawned loop
 * freeing itself), -EXDEV (an attached loop freed off its thread), -ENOMEM (the stop request).
 */
int evfd_loop_free(struct evfd_loop *loop);

struct evfd_loop_stats {
	unsigned id;
	unsigned rings;         /* rings owned now */
	uint64_t wakeups;       /* eventfd wakeups handled */
	uint64_t completions;   /* CQEs delivered to callbacks */
	uint64_t inflight;      /* requests this loop's thread submitted, not yet complete */
	uint64_t adopted;       /* rings taken over by moves */
};

/* A snapshot of @loop's counters; safe from any thread (relaxed reads). */
void evfd_loop_stats(const struct evfd_loop *loop, struct evfd_loop_stats *st);

/* ---- rings ---------------------------------------------------------------------------------------- */

struct evfd_ring_params {
	unsigned entries;      /* SQ size; 0 means 256 */
	unsigned cq_entries;   /* CQ size; 0 means 4 * entries */
	/* Optional: allow only these SQE opcodes and register operations (IORING_REGISTER_RESTRICTIONS). The
	 * ring is created disabled, restricted, then enabled. The library adds what it needs itself
	 * (IORING_OP_ASYNC_CANCEL, eventfd register/unregister). NULL/0: unrestricted. */
	const struct io_uring_restriction *restrictions;
	unsigned nr_restrictions;
};

/*
 * evfd_ring_new - create a ring owned by @owner
 * @p: parameters, or NULL for the defaults
 *
 * Safe from any thread; on @owner's thread the ring is usable at once, from elsewhere as soon as @owner
 * has taken it (use evfd_loop_call to submit from there). The ring uses none of SINGLE_ISSUER,
 * DEFER_TASKRUN, COOP_TASKRUN or a registered ring fd, since it must work from any thread (but see
 * evfd_ring_new_flags). Returns 0, or: -ENOSYS (the kernel has no io_uring, or a seccomp filter blocks
 * it), -EPERM (sysctl kernel.io_uring_disabled), -ENOMEM (memory: the memory cgroup, or RLIMIT_MEMLOCK
 * before Linux 5.12), -EOPNOTSUPP (kernel older than 5.18, where registering an eventfd quiesces the ring),
 * -EMFILE/-ENFILE, -EINVAL (bad parameters), -ENXIO (@owner has stopped), or another error from
 * io_uring_setup or io_uring_register.
 */
int evfd_ring_new(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p);

/*
 * Flags for evfd_ring_new_flags.
 *
 * EVFD_RING_COOP_TASKRUN: IORING_SETUP_COOP_TASKRUN. Without it the kernel interrupts a thread that is
 * running (an inter-processor interrupt) to complete its requests' work (task work) at once; with it the
 * work waits until that thread next enters or leaves the kernel, which a loop thread does all the time
 * (io_uring_enter, epoll_wait, the eventfd read), and a sleeping thread is still woken for it. A moving
 * ring can have it, unlike DEFER_TASKRUN: task work stays with the thread that submitted the request, as
 * without the flag, and every loop thread keeps entering the kernel until it ends (a retiring loop's thread
 * ends only once nothing it submitted is in flight). What changes is only when, not where or whether, a
 * completion is posted: moves, re-arming and retirement are unaffected, and fewer interrupts mean more
 * completions reaped per wakeup. Ignored (evfd_ring_flags says so) on a kernel without it (before 5.19).
 */
#define EVFD_RING_COOP_TASKRUN 0x1u

/*
 * evfd_ring_new_flags - evfd_ring_new with setup @flags (EVFD_RING_*, LIBEVFD_0.1)
 *
 * The same as evfd_ring_new, with -EINVAL also for an unknown flag. A flag the kernel does not support is
 * dropped rather than failing the ring: evfd_ring_flags tells which are in effect.
 */
int evfd_ring_new_flags(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p,
			unsigned flags);

/* The EVFD_RING_* flags in effect on @ring (LIBEVFD_0.1); safe from any thread while the ring lives. */
unsigned evfd_ring_flags(const struct evfd_ring *ring);

/*
 * evfd_ring_free - destroy a ring
 *
 * Owner thread only, with nothing in flight. Returns 0, -EBUSY (requests in flight, the cancel requests of
 * evfd_op_cancel included: from the callback of a cancelled request, their completions may not be reaped
 * yet; evfd_ring_close frees the ring when they have been), -EXDEV (not called on the owner thread),
 * -EALREADY (evfd_ring_close was called). The ring
 * pointer is invalid afterwards, unless a move or ring call naming it is still queued (those keep the memory
 * alive and then report -ENODEV). Called from one of the ring's own callbacks, the ring goes when that
 * callback returns.
 */
int evfd_ring_free(struct evfd_ring *ring);

/*
 * evfd_ring_close - free @ring once nothing is in flight on it, and say when it is gone
 * @done: called as @done(loop, @arg) on the thread of the loop that owns the ring when it goes, from that
 *        loop's inbox (never from within evfd_ring_close), after the ring is destroyed; or NULL
 *
 * Owner thread only. For a caller that has stopped submitting and cancelled what it had in flight, but cannot
 * tell when the last completion has been reaped (its own requests', or the cancels that evfd_op_cancel and
 * re-arming after a move issue, whose completions may come in a later drain): instead of retrying
 * evfd_ring_free until it stops saying -EBUSY, the ring goes right after that completion. Callbacks still run
 * for the requests that complete meanwhile; from this call on, evfd_ring_submit says -ESHUTDOWN (cancelling
 * stays allowed). A ring that never runs idle is never freed. The ring pointer is invalid once @done runs
 * (or, with no @done, as soon as it may have gone), as after evfd_ring_free; a move queued meanwhile takes the
 * closing ring along and it goes on the new owner. Returns 0, -EINVAL, -EXDEV (not the owner thread),
 * -EALREADY (already closing), or -ENOMEM (nothing changed).
 */
int evfd_ring_close(struct evfd_ring *ring, evfd_loop_fn done, void *arg);

/* evfd_ring_submit flags */
#define EVFD_OP_PINNED 0x1u   /* never cancel and re-arm this request on a move (see below) */

/*
 * evfd_ring_submit - queue one request
 * @sqe: a filled SQE (io_uring_prep_*), usually on the caller's stack; user_data is the library's
 * @cb, @arg: completion callback and its argument (cb may not be NULL)
 * @flags: 0 or EVFD_OP_PINNED
 * @opp: receives the operation handle (for evfd_op_cancel), or NULL
 *
 * Owner thread only. The request reaches the kernel at the latest before the loop next blocks.
 * Re-arm on move: these requests are cancelled and resubmitted unchanged by a new owner: ACCEPT, RECV,
 * RECVMSG, SEND, SENDMSG, READ, READV, WRITE, WRITEV, POLL_ADD, and TIMEOUT without a completion count
 * (a timeout's timespec is copied, and a relative one made absolute at submission, so re-arming keeps its
 * deadline). Not re-armed, and so completing on the submitting thread (which delays that thread's
 * retirement until they finish): linked requests, MSG_WAITALL sends and receives, other opcodes, and
 * requests with EVFD_OP_PINNED. A request cancelled by a move reports nothing to @cb. Re-arming READ and
 * WRITE assumes a socket, pipe or regular file; pin requests on a device whose blocking read a signal would
 * interrupt (-EINTR).
 * Returns 0, -EXDEV (not the owner thread), -EINVAL, -ENOMEM, -ESHUTDOWN (evfd_ring_close was called), or
 * -EBUSY/-EAGAIN (the SQ was full and the kernel would not take it until completions are reaped; try again
 * from a later callback).
 */
int evfd_ring_submit(struct evfd_ring *ring, const struct io_uring_sqe *sqe, evfd_op_cb cb, void *arg,
		     unsigned flags, struct evfd_op **opp);

/*
 * evfd_op_cancel - ask the kernel to cancel a request
 *
 * Owner thread only; @op must still be in flight (a handle is recycled after its last callback). Its
 * callback then gets -ECANCELED, or the normal result if the request completed first. Returns 0, -EXDEV,
 * -EINVAL, -ENOMEM, or an io_uring_enter error when the SQ was full and could not be entered.
 */
int evfd_op_cancel(struct evfd_ring *ring, struct evfd_op *op);

/*
 * evfd_ring_move - move @ring to @to
 * @done: called on @to's thread once it owns the ring and has drained it, or NULL
 *
 * Safe from any thread; @ring must not be freed before @done runs, and @to must be a loop that has not
 * finished retiring (a move to a retiring loop goes on to that loop's successor). Nothing waits for
 * in-flight I/O. A move to the current owner just calls @done. Returns 0 (the move is queued), -EINVAL,
 * -ENOMEM, or -ENXIO (@to has stopped).
 */
int evfd_ring_move(struct evfd_ring *ring, struct evfd_loop *to, evfd_move_cb done, void *arg);

/*
 * evfd_ring_call - run @fn(@ring, 0, @arg) on the thread of whichever loop owns @ring when it runs
 *
 * Call it from a loop thread (any loop's). The request follows the ring through moves in flight, so @fn
 * may submit to the ring and touch state only the ring's callbacks touch. If the ring is freed first, @fn
 * runs with err -ENODEV on some loop thread instead. Returns 0, -EINVAL, -ENOMEM, -ENODEV (the ring has
 * been freed; only seen while another queued message still keeps its memory) or -EPERM (not called from a
 * loop thread).
 */
int evfd_ring_call(struct evfd_ring *ring, evfd_move_cb fn, void *arg);

/*
 * evfd_ring_owner - the loop that owns @ring now
 *
 * An RCU read: call it from a loop thread (the result stays valid until that thread returns to its loop)
 * or from a thread registered with urcu-qsbr inside a read-side section. The answer can be stale by the
 * time it is used; only the owner thread can rely on it being itself.
 */
struct evfd_loop *evfd_ring_owner(struct evfd_ring *ring);

/* The io_uring, for registrations (buffers, files, buffer rings); owner thread only. Do not submit to it or
 * reap it directly, and do not register an eventfd on it. */
struct io_uring *evfd_ring_uring(struct evfd_ring *ring);

/* A pointer for the caller; the library never touches it. */
void evfd_ring_set_data(struct evfd_ring *ring, void *data);
void *evfd_ring_data(const struct evfd_ring *ring);

struct evfd_ring_stats {
	unsigned owner_id;      /* evfd_loop_id of the owner, or of the loop it is moving to */
	uint64_t inflight;      /* requests submitted and not yet complete */
	uint64_t moves;         /* completed moves */
	uint64_t submitted;     /* requests submitted by callers */
	uint64_t completed;     /* requests completed (last CQE delivered) */
	uint64_t rearmed;       /* requests cancelled and resubmitted because of moves */
};

/* A snapshot of @ring's counters; safe from any thread (relaxed reads). */
void evfd_ring_stats(const struct evfd_ring *ring, struct evfd_ring_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* EVFD_H */
