/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* No lost wakeup: a completion posted inside a move's swap window (old eventfd unregistered, new one not yet
 * registered) signals no eventfd at all. It must still be delivered, by the new owner, with no later event
 * to prompt it.
 *
 * The library's internal swap hook runs on the old owner's thread inside the window. There the test makes a
 * pending recv complete (it writes to the peer socket; the recv's completion work runs on this very thread
 * when the write returns) and checks that the CQE really is in the CQ before the window closes. Then nothing
 * else touches the ring: only the adoption's own drain can deliver it. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "internal.h"
#include "testutil.h"

struct state {
	struct evfd_ring *ring;
	int fds[2];
	char buf[32];
	unsigned round;
	atomic_uint_fast64_t delivered;   /* recv callbacks so far */
	atomic_uint_fast64_t moved;
	int res;
	struct evfd_loop *delivered_on;
	bool posted_in_window;
	bool armed;                       /* the hook acts once per round */
};

static struct state st;

static void recv_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	char want[32];
	int n = snprintf(want, sizeof(want), "round %u", st.round);

	st.res = cqe->res;
	st.delivered_on = evfd_loop_current();
	TU_CHECK(cqe->res == n && memcmp(st.buf, want, (size_t)n) == 0, "round %u: res %d", st.round, cqe->res);
	atomic_fetch_add(&st.delivered, 1);
}

static void arm_recv(struct evfd_loop *loop, void *arg)
{
	struct io_uring_sqe sqe = { 0 };
	int err;

	io_uring_prep_recv(&sqe, st.fds[0], st.buf, sizeof(st.buf), 0);
	err = evfd_ring_submit(st.ring, &sqe, recv_cb, NULL, 0, NULL);
	TU_CHECK(err == 0, "submit recv: %s", strerror(-err));
}

/* Inside the swap window, on the old owner's thread. */
static void swap_hook(struct evfd_ring *r, void *arg)
{
	struct io_uring *u = evfd_ring_uring(r);
	char msg[32];
	int n, spins;

	if (!st.armed || r != st.ring)
		return;
	st.armed = false;
	TU_CHECK(io_uring_cq_ready(u) == 0, "CQ not empty before the window");
	n = snprintf(msg, sizeof(msg), "round %u", st.round);
	TU_CHECK(write(st.fds[1], msg, (size_t)n) == n, "write");
	/* The recv was submitted by this thread, so its completion runs here at the next return from the
	 * kernel (the write above, or these yields). */
	for (spins = 0; io_uring_cq_ready(u) == 0 && spins < 100000; spins++)
		usleep(10);
	st.posted_in_window = io_uring_cq_ready(u) > 0;
}

static void moved_cb(struct evfd_ring *ring, int err, void *arg)
{
	TU_CHECK(err == 0, "move: %s", strerror(-err));
	atomic_fetch_add(&st.moved, 1);
}

static void free_ring(struct evfd_loop *loop, void *arg)
{
	int err = evfd_ring_free(st.ring);

	TU_CHECK(err == 0, "free: %s", strerror(-err));
}

int main(void)
{
	struct evfd_loop *loops[2];
	unsigned rounds = (unsigned)tu_scaled(200, 20), i;
	int err;

	tu_require_io_uring();
	for (i = 0; i < 2; i++) {
		err = evfd_loop_spawn(&loops[i], "lost-wakeup");
		TU_CHECK(err == 0, "spawn: %s", strerror(-err));
	}
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st.fds) == 0, "socketpair");
	err = tu_ring_new(&st.ring, loops[0], NULL);
	TU_CHECK(err == 0, "ring: %s", strerror(-err));
	evfd__swap_hook = swap_hook;

	for (i = 0; i < rounds; i++) {
		struct evfd_loop *from = loops[i % 2], *to = loops[(i + 1) % 2];

		st.round = i;
		st.posted_in_window = false;
		tu_run_on(from, arm_recv, NULL);
		/* Let the recv reach the kernel and park (the loop enters the SQ before it blocks). */
		usleep(1000);
		TU_CHECK(atomic_load(&st.delivered) == i, "round %u: recv completed early", i);
		st.armed = true;
		TU_CHECK(evfd_ring_move(st.ring, to, moved_cb, NULL) == 0, "move");
		TU_CHECK(tu_wait_u64(&st.delivered, i + 1, 5000),
			 "round %u: completion posted in the swap window was never delivered", i);
		TU_CHECK(st.posted_in_window, "round %u: the completion was not posted inside the window", i);
		TU_CHECK(st.delivered_on == to, "round %u: delivered off the new owner", i);
		TU_CHECK(tu_wait_u64(&st.moved, i + 1, 5000), "round %u: move never finished", i);
	}
	evfd__swap_hook = NULL;
	printf("ok %u completions posted inside the swap window, all delivered by the new owner\n", rounds);

	tu_run_on(loops[rounds % 2], free_ring, NULL);
	close(st.fds[0]);
	close(st.fds[1]);
	for (i = 0; i < 2; i++)
		TU_CHECK(evfd_loop_free(loops[i]) == 0, "free loop");
	return 0;
}
