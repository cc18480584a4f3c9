/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reload-echo: the TCP echo backend of tests/bench/reload-bench. Every proxy under test forwards to it,
 * so it must add as little and as steady a latency as possible: one thread, epoll, non-blocking sockets,
 * every byte read is written back at once (what cannot be written yet waits in a per-connection buffer,
 * and reading that connection pauses until it drains, so a client that never reads cannot make it grow).
 *
 *   reload-echo PORT      listen on 127.0.0.1:PORT; print "listening" once it does; run until SIGTERM/SIGINT
 *
 * On exit it prints one line: "echo accepted N bytes B errors E" (E: connections that ended with an error
 * other than a reset by the peer, which is how proxies sometimes close).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536

struct conn {
	struct conn *prev, *next;  /* every open connection, to free them at exit */
	int fd;
	size_t pending, off;   /* unsent bytes in buf, starting at off */
	char buf[BUF_SIZE];
};

static volatile sig_atomic_t stop;
static unsigned long long n_accepted, n_bytes, n_errors;
static struct conn *conns;

static void on_signal(int sig)
{
	stop = sig;
}

static void conn_close(struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	close(c->fd);
	free(c);
}

/* Write what is pending. Returns 0 (all written, or the rest waits for EPOLLOUT) or -1 (close). */
static int conn_flush(struct conn *c)
{
	while (c->pending > 0) {
		ssize_t n = send(c->fd, c->buf + c->off, c->pending, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			if (errno != ECONNRESET && errno != EPIPE)
				n_errors++;
			return -1;
		}
		c->off += (size_t)n;
		c->pending -= (size_t)n;
		n_bytes += (size_t)n;
	}
	c->off = 0;
	return 0;
}

/* Readable or writable: echo until the socket has nothing more or cannot take more. -1: close it. */
static int conn_event(int ep, struct conn *c)
{
	struct epoll_event ev = { .data.ptr = c };

	if (conn_flush(c) < 0)
		return -1;
	while (c->pending == 0) {
		ssize_t n = recv(c->fd, c->buf, sizeof(c->buf), 0);

		if (n == 0)
			return -1;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			if (errno != ECONNRESET)
				n_errors++;
			return -1;
		}
		c->pending = (size_t)n;
		c->off = 0;
		if (conn_flush(c) < 0)
			return -1;
	}
	/* Wait for room to write instead of reading more while bytes are still pending. */
	ev.events = c->pending > 0 ? EPOLLOUT : EPOLLIN;
	if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		fprintf(stderr, "reload-echo: epoll_ctl(MOD): %s\n", strerror(errno));
		n_errors++;
		return -1;
	}
	return 0;
}

static void accept_all(int ep, int lfd)
{
	for (;;) {
		int one = 1, fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct epoll_event ev = { .events = EPOLLIN };
		struct conn *c;

		if (fd < 0) {
			/* EMFILE and friends: the listener stays readable, so this is retried next round. */
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				fprintf(stderr, "reload-echo: accept: %s\n", strerror(errno));
			return;
		}
		c = malloc(sizeof(*c));
		if (!c) {
			fprintf(stderr, "reload-echo: out of memory for a connection; closing it\n");
			close(fd);
			continue;
		}
		c->fd = fd;
		c->pending = c->off = 0;
		c->prev = NULL;
		c->next = conns;
		if (conns)
			conns->prev = c;
		conns = c;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			fprintf(stderr, "reload-echo: epoll_ctl(ADD): %s\n", strerror(errno));
			conn_close(c);
			continue;
		}
		n_accepted++;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }, evs[256];
	struct sigaction sig = { .sa_handler = on_signal };
	int one = 1, lfd = -1, ep = -1, ret = 1;
	char *end;
	long port;

	if (argc != 2 || (port = strtol(argv[1], &end, 10), *end != '\0' || port < 1 || port > 65535)) {
		fprintf(stderr, "usage: reload-echo PORT   (listens on 127.0.0.1:PORT)\n");
		return 2;
	}
	sa.sin_port = htons((uint16_t)port);
	sigaction(SIGTERM, &sig, NULL);
	sigaction(SIGINT, &sig, NULL);
	signal(SIGPIPE, SIG_IGN);

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4096) < 0) {
		fprintf(stderr, "reload-echo: cannot listen on 127.0.0.1:%ld: %s; choose another port\n", port,
			strerror(errno));
		goto out;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		fprintf(stderr, "reload-echo: epoll: %s\n", strerror(errno));
		goto out;
	}
	printf("listening\n");
	fflush(stdout);

	while (!stop) {
		int i, n = epoll_wait(ep, evs, 256, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "reload-echo: epoll_wait: %s\n", strerror(errno));
			goto out;
		}
		for (i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c)
				accept_all(ep, lfd);
			else if (conn_event(ep, c) < 0)
				conn_close(c); /* closing removes it from the epoll set */
		}
	}
	ret = 0;
out:
	while (conns)
		conn_close(conns);
	printf("echo accepted %llu bytes %llu errors %llu\n", n_accepted, n_bytes, n_errors);
	fflush(stdout);
	if (ep >= 0)
		close(ep);
	if (lfd >= 0)
		close(lfd);
	return ret;
}
