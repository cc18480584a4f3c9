/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdd's rings are restricted (IORING_REGISTER_RESTRICTIONS) to exactly what the relay uses, because
 * io_uring requests bypass seccomp. On a real ring built as evfdd builds it, with a relay running: the
 * relay's own operations work, and an opcode, an SQE flag or a register operation it does not use is refused
 * with -EACCES, also after the ring has moved to another loop. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../daemon/relay.h"
#include "testutil.h"

struct ctx {
	struct evfd_ring *ring;
	struct evfdd_relay *relay;
	int fds[2];
	int err;
	atomic_uint_fast64_t done;
	int res[8];
	atomic_uint_fast64_t calls;
	char buf[16];
};

static void res_cb(struct evfd_ring *ring, const struct io_uring_cqe *cqe, void *arg)
{
	int *res = arg;
	struct ctx *c = evfd_ring_data(ring);

	*res = cqe->res;
	atomic_fetch_add(&c->calls, 1);
}

static void start_relay(struct evfd_loop *loop, void *arg)
{
	static const struct evfdd_relay_params rp = { .buffers = 8, .buffer_size = 4096 };
	struct ctx *c = arg;

	c->err = evfdd_relay_start(c->ring, NULL, 0, &rp, NULL, &c->relay);
}

/* Submit one request per kind: what the relay uses, and what it does not. */
static void submit_all(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;
	struct io_uring_sqe sqe;
	int n = 0;

	/* allowed: RECV on a socket with data waiting */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_recv(&sqe, c->fds[0], c->buf, sizeof(c->buf), 0);
	TU_CHECK(evfd_ring_submit(c->ring, &sqe, res_cb, &c->res[n++], 0, NULL) == 0, "submit recv");
	/* refused: creating a socket, which seccomp could not stop (NOTES.md) */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_socket(&sqe, AF_INET, SOCK_STREAM, 0, 0);
	TU_CHECK(evfd_ring_submit(c->ring, &sqe, res_cb, &c->res[n++], 0, NULL) == 0, "submit socket");
	/* refused: opening a file */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_openat(&sqe, AT_FDCWD, "/etc/passwd", O_RDONLY, 0);
	TU_CHECK(evfd_ring_submit(c->ring, &sqe, res_cb, &c->res[n++], 0, NULL) == 0, "submit openat");
	/* refused: an allowed opcode with a flag the relay never sets */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_send(&sqe, c->fds[0], "x", 1, 0);
	sqe.flags |= IOSQE_ASYNC;
	TU_CHECK(evfd_ring_submit(c->ring, &sqe, res_cb, &c->res[n++], 0, NULL) == 0, "submit send");
	/* refused: reading a file */
	memset(&sqe, 0, sizeof(sqe));
	io_uring_prep_read(&sqe, c->fds[0], c->buf, sizeof(c->buf), 0);
	TU_CHECK(evfd_ring_submit(c->ring, &sqe, res_cb, &c->res[n++], 0, NULL) == 0, "submit read");
	/* a register operation the relay does not use */
	c->err = io_uring_register_files(evfd_ring_uring(c->ring), &c->fds[1], 1);
}

static void stopped(struct evfdd_relay *rl, void *arg)
{
	struct ctx *c = arg;

	evfdd_relay_free(rl);
	c->relay = NULL;
	atomic_store(&c->done, 1);
}

/* The relay's cancels may still be in flight when it reports done (their completions come in the same
 * drain or the next): the ring can be freed once the loop has reaped them. */
static void free_ring(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;

	c->err = evfd_ring_free(c->ring);
}

static void stop_relay(struct evfd_loop *loop, void *arg)
{
	struct ctx *c = arg;

	evfdd_relay_stop(c->relay, true, stopped, c);
}

static void moved(struct evfd_ring *ring, int err, void *arg)
{
	struct ctx *c = arg;

	TU_CHECK(err == 0, "move: %s", strerror(-err));
	atomic_store(&c->done, 1);
}

int main(void)
{
	struct evfd_ring_params p = { 0 };
	struct evfd_loop *a, *b;
	struct ctx c = { 0 };
	unsigned i;

	tu_require_io_uring();
	p.restrictions = evfdd_relay_restrictions(&p.nr_restrictions);
	TU_CHECK(p.nr_restrictions > 0, "no restrictions");
	for (i = 0; i < p.nr_restrictions; i++)
		TU_CHECK(p.restrictions[i].opcode != IORING_RESTRICTION_SQE_OP ||
			 (p.restrictions[i].sqe_op != IORING_OP_SOCKET && p.restrictions[i].sqe_op != IORING_OP_OPENAT),
			 "the relay allows an opcode it has no use for");
	TU_CHECK(evfd_loop_spawn(&a, "restrict-a") == 0, "spawn");
	TU_CHECK(evfd_loop_spawn(&b, "restrict-b") == 0, "spawn");
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c.fds) == 0, "socketpair");
	TU_CHECK(evfd_ring_new(&c.ring, a, &p) == 0, "a ring with the relay's restrictions");
	evfd_ring_set_data(c.ring, &c);
	tu_run_on(a, start_relay, &c);
	TU_CHECK(c.err == 0, "the relay starts on a restricted ring (buffer ring registration): %s",
		 strerror(-c.err));

	/* Moved first: the restrictions must let libevfd swap the eventfd. */
	TU_CHECK(evfd_ring_move(c.ring, b, moved, &c) == 0, "move");
	TU_CHECK(tu_wait_u64(&c.done, 1, 10000), "the restricted ring did not move");
	TU_CHECK(write(c.fds[1], "hello", 5) == 5, "write");
	tu_run_on(b, submit_all, &c);
	TU_CHECK(c.err == -EACCES, "IORING_REGISTER_FILES: want -EACCES, got %d", c.err);
	TU_CHECK(tu_wait_u64(&c.calls, 5, 10000), "requests did not complete");
	TU_CHECK(c.res[0] == 5, "recv: want 5 bytes, got %d", c.res[0]);
	TU_CHECK(c.res[1] == -EACCES, "socket: want -EACCES, got %d", c.res[1]);
	TU_CHECK(c.res[2] == -EACCES, "openat: want -EACCES, got %d", c.res[2]);
	TU_CHECK(c.res[3] == -EACCES, "send with IOSQE_ASYNC: want -EACCES, got %d", c.res[3]);
	TU_CHECK(c.res[4] == -EACCES, "read: want -EACCES, got %d", c.res[4]);

	atomic_store(&c.done, 0);
	tu_run_on(b, stop_relay, &c);
	TU_CHECK(tu_wait_u64(&c.done, 1, 10000), "the relay did not stop");
	for (i = 0; i < 1000; i++) {
		tu_run_on(b, free_ring, &c);
		if (c.err != -EBUSY)
			break;
		usleep(1000);
	}
	TU_CHECK(c.err == 0, "free ring: %s", strerror(-c.err));
	TU_CHECK(evfd_loop_free(a) == 0, "free loop a");
	/* The ring goes once the callback that freed it has returned. */
	for (i = 0; i < 500 && (c.err = evfd_loop_free(b)) == -EBUSY; i++)
		usleep(10000);
	TU_CHECK(c.err == 0, "free loop b: %s", strerror(-c.err));
	close(c.fds[0]);
	close(c.fds[1]);
	printf("restricted ring: recv ok; socket, openat, IOSQE_ASYNC, read and REGISTER_FILES refused\n");
	return 0;
}
