/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The state an upgrade hands over (daemon/carry.h): a full state written and read back field by field (real
 * descriptors whose identity must match, 1 MiB of unsent bytes, IPv4, IPv6 and Unix addresses, records in
 * mixed order); the memfd's seals; memfds without them, and other files, refused; every single-byte change of
 * a small state refused, and with the checksum mended (so that the records themselves are read) refused or
 * read whole, never a crash; every truncation; versions either side of what is read; unknown records
 * skipped; fd indexes out of the table or shared, strings with a NUL or bytes they may not hold, and the other
 * damage a record can carry, each refused with the reason named; what the writer refuses and that a refused
 * put leaves nothing behind; and, for the record, the checksum's speed and a 64 MiB state's seal and open.
 *
 * It includes daemon/carry.c itself, to reach the checksum, the encoders (to write damaged records the
 * writer would refuse) and the state's mapping.
 */
#include "../daemon/carry.c"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "testutil.h"

#define WHY_LEN 256

/* ---- helpers ---------------------------------------------------------------------------------------- */

static uint64_t t_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The bytes the writer would seal (header filled in), in a copy the caller frees. */
static unsigned char *t_bytes(struct evfdd_carry_writer *w, size_t *n)
{
	unsigned char *b;

	/* What the writer flushed to its memfd, then what its buffer holds. */
	*n = w->flushed + w->out.len;
	b = malloc(*n);
	TU_CHECK(b, "malloc");
	if (w->memfd >= 0)
		TU_CHECK(pread(w->memfd, b, w->flushed, 0) == (ssize_t)w->flushed, "pread");
	memcpy(b + w->flushed, w->out.b, w->out.len);
	header_fill(b, *n - HDR_LEN, carry_checksum(b + HDR_LEN, *n - HDR_LEN));
	return b;
}

/* Mend @b's payload length and checksum after a change. */
static void t_mend(unsigned char *b, size_t n)
{
	uint64_t plen = htole64(n - HDR_LEN), sum = htole64(carry_checksum(b + HDR_LEN, n - HDR_LEN));

	memcpy(b + 16, &plen, 8);
	memcpy(b + 24, &sum, 8);
}

/* evfdd_carry_open on a sealed memfd holding @n bytes of @b. */
static int t_open_bytes(const void *b, size_t n, struct evfdd_carry_state **st, char *why)
{
	static const unsigned char none[1];
	int fd = seal_bytes(n ? b : none, n), r;

	TU_CHECK(fd >= 0, "seal_bytes: %s", strerror(-fd));
	r = evfdd_carry_open(fd, st, why, WHY_LEN);
	close(fd);
	return r;
}

/* Read every byte @st offers (ASan sees a read out of bounds), and check what must hold of any state read. */
static uint64_t t_touch(const struct evfdd_carry_state *st)
{
	const unsigned char *lo = st->map, *hi = lo + st->size;
	uint64_t sum = 0;

	for (size_t i = 0; i < evfdd_carry_nfds(st); i++)
		sum += (uint64_t)evfdd_carry_fd(st, i)->fd + evfdd_carry_fd(st, i)->ino;
	for (size_t i = 0; i < evfdd_carry_ncounters(st); i++)
		sum += strlen(evfdd_carry_counter(st, i)->name) + evfdd_carry_counter(st, i)->value;
	for (size_t i = 0; i < evfdd_carry_nbackends(st); i++)
		sum += strlen(evfdd_carry_backend(st, i)->name);
	for (size_t i = 0; i < evfdd_carry_nconns(st); i++) {
		const struct evfdd_carry_conn *c = evfdd_carry_conn(st, i);
		const struct {
			const unsigned char *p;
			uint32_t n;
		} d[] = { { c->pre, c->pre_len }, { c->init, c->init_len }, { c->up.data, c->up.len },
			  { c->down.data, c->down.len } };

		TU_CHECK(c->cfd >= 0 && (size_t)c->cfd < evfdd_carry_nfds(st), "cfd %d", c->cfd);
		TU_CHECK(c->bfd == -1 || (c->bfd >= 0 && (size_t)c->bfd < evfdd_carry_nfds(st)), "bfd %d", c->bfd);
		TU_CHECK(c->peer.len <= sizeof(c->peer.u) && c->local.len <= sizeof(c->local.u), "addresses");
		for (size_t k = 0; k < sizeof(d) / sizeof(d[0]); k++) {
			TU_CHECK(d[k].p && d[k].p >= lo && d[k].p + d[k].n <= hi, "data %zu outside the mapping", k);
			for (uint32_t j = 0; j < d[k].n; j++)
				sum += d[k].p[j];
		}
		sum += strlen(c->service) + strlen(c->backend) + strlen(c->route_name);
	}
	sum += strlen(evfdd_carry_info(st)->version);
	return sum;
}

static struct evfdd_sockaddr t_inet(const char *text, uint16_t port)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	if (strchr(text, ':')) {
		a.u.in6.sin6_family = AF_INET6;
		TU_CHECK(inet_pton(AF_INET6, text, &a.u.in6.sin6_addr) == 1, "%s", text);
		a.u.in6.sin6_port = htons(port);
		a.len = sizeof(a.u.in6);
	} else {
		a.u.in.sin_family = AF_INET;
		TU_CHECK(inet_pton(AF_INET, text, &a.u.in.sin_addr) == 1, "%s", text);
		a.u.in.sin_port = htons(port);
		a.len = sizeof(a.u.in);
	}
	return a;
}

/* A Unix address: @path NULL for an unnamed one (the family alone). */
static struct evfdd_sockaddr t_unix(const char *path)
{
	struct evfdd_sockaddr a;

	memset(&a, 0, sizeof(a));
	a.u.un.sun_family = AF_UNIX;
	a.len = offsetof(struct sockaddr_un, sun_path);
	if (path) {
		memcpy(a.u.un.sun_path, path, strlen(path) + 1);
		a.len += (socklen_t)strlen(path) + 1;
	}
	return a;
}

static unsigned char *t_pattern(size_t n, unsigned seed)
{
	unsigned char *p = malloc(n ? n : 1);

	TU_CHECK(p, "malloc");
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 131 + seed + (i >> 9));
	return p;
}

/* A valid connection on fd indexes @cfd, @bfd, relaying, with a few bytes everywhere. */
static struct evfdd_carry_conn t_conn(int32_t cfd, int32_t bfd)
{
	static const unsigned char pre[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET", init[] = "hdr+GET",
				   up[] = "upward", down[] = "downward!";
	struct evfdd_carry_conn c;

	memset(&c, 0, sizeof(c));
	strcpy(c.service, "web");
	strcpy(c.backend, "127.0.0.1:8080");
	c.stage = EVFDD_CARRY_RELAY;
	c.cfd = cfd;
	c.bfd = bfd;
	c.start_ns = 1000;
	c.last_ns = 2000;
	c.bytes_up = 10;
	c.bytes_down = 20;
	c.peer = t_inet("192.0.2.1", 40000);
	c.local = t_inet("192.0.2.2", 80);
	c.pre_state = 1;
	c.pre_len = sizeof(pre) - 1;
	c.pre = pre;
	c.pre_used = c.pre_len - 3;
	c.init_len = sizeof(init) - 1;
	c.init = init;
	c.init_off = 2;
	c.init_hdr = 4;
	c.up.len = sizeof(up) - 1;
	c.up.data = up;
	c.down.len = sizeof(down) - 1;
	c.down.data = down;
	c.down.eof = c.down.clean_eof = true;
	return c;
}

/* memcmp, for @n 0 too (NULL then). */
static bool t_same(const void *a, const void *b, size_t n)
{
	return n == 0 || memcmp(a, b, n) == 0;
}

static void t_conn_eq(const struct evfdd_carry_conn *a, const struct evfdd_carry_conn *b, size_t i)
{
	TU_CHECK(strcmp(a->service, b->service) == 0, "conn %zu service", i);
	TU_CHECK(strcmp(a->backend, b->backend) == 0, "conn %zu backend", i);
	TU_CHECK(a->route == b->route && strcmp(a->route_name, b->route_name) == 0, "conn %zu route", i);
	TU_CHECK(a->stage == b->stage, "conn %zu stage", i);
	TU_CHECK(a->cfd == b->cfd && a->bfd == b->bfd, "conn %zu fds %d %d / %d %d", i, a->cfd, a->bfd, b->cfd,
	         b->bfd);
	TU_CHECK(a->start_ns == b->start_ns && a->last_ns == b->last_ns, "conn %zu times", i);
	TU_CHECK(a->bytes_up == b->bytes_up && a->bytes_down == b->bytes_down, "conn %zu bytes", i);
	TU_CHECK(a->peer.len == b->peer.len && t_same(&a->peer.u, &b->peer.u, a->peer.len), "conn %zu peer", i);
	TU_CHECK(a->local.len == b->local.len && t_same(&a->local.u, &b->local.u, a->local.len),
	         "conn %zu local", i);
	TU_CHECK(a->src_counted == b->src_counted, "conn %zu src_counted", i);
	TU_CHECK(a->pre_state == b->pre_state && a->pre_used == b->pre_used, "conn %zu pre_state", i);
	TU_CHECK(a->pre_deadline_ns == b->pre_deadline_ns, "conn %zu pre_deadline_ns", i);
	TU_CHECK(a->pre_len == b->pre_len && t_same(a->pre, b->pre, a->pre_len), "conn %zu pre", i);
	TU_CHECK(a->init_len == b->init_len && a->init_off == b->init_off && a->init_hdr == b->init_hdr &&
	         t_same(a->init, b->init, a->init_len), "conn %zu init", i);
	TU_CHECK(a->flushing == b->flushing && a->dead == b->dead && a->flush_end_ns == b->flush_end_ns,
	         "conn %zu flush", i);
	TU_CHECK(a->rst_client == b->rst_client && a->rst_backend == b->rst_backend, "conn %zu rst", i);
	TU_CHECK(a->up.eof == b->up.eof && a->up.clean_eof == b->up.clean_eof && a->up.done == b->up.done &&
	         a->up.len == b->up.len && t_same(a->up.data, b->up.data, a->up.len), "conn %zu up", i);
	TU_CHECK(a->down.eof == b->down.eof && a->down.clean_eof == b->down.clean_eof && a->down.done == b->down.done &&
	         a->down.len == b->down.len && t_same(a->down.data, b->down.data, a->down.len), "conn %zu down",
	         i);
}

/* @w's state (the seal skipped: its checks are what is under test) must be refused with -EPROTO and a reason
 * that holds @want. */
static void t_refused(struct evfdd_carry_writer *w, const char *want, const char *what)
{
	struct evfdd_carry_state *st = (struct evfdd_carry_state *)1;
	char why[WHY_LEN] = "untouched";
	unsigned char *b;
	size_t n;
	int r;

	b = t_bytes(w, &n);
	r = t_open_bytes(b, n, &st, why);
	TU_CHECK(r == -EPROTO, "%s: open gave %d (%s), want -EPROTO", what, r, why);
	TU_CHECK(st == NULL, "%s: *out set on failure", what);
	TU_CHECK(strstr(why, want), "%s: why \"%s\" does not say \"%s\"", what, why, want);
	free(b);
	evfdd_carry_writer_free(w);
}

/* A writer with @nfds descriptors in its table (a pipe's ends, then /dev/null's). */
static struct evfdd_carry_writer *t_writer(int nfds)
{
	struct evfdd_carry_writer *w;
	int32_t idx;

	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	for (int i = 0; i < nfds; i++)
		TU_CHECK(evfdd_carry_put_fd(w, i % 3, &idx) == 0 && idx == i, "put_fd %d", i);
	return w;
}

/* Put a descriptor into the table without a look at it, as a damaged writer would. */
static void t_raw_fd(struct evfdd_carry_writer *w, int32_t fd, uint64_t ino)
{
	struct evfdd_carry_fd f = { .fd = fd, .dev = 1, .ino = ino };
	size_t start = rec_begin(w, REC_FD);

	enc_fd(&w->out, &f);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
}

static void t_raw_conn(struct evfdd_carry_writer *w, const struct evfdd_carry_conn *c)
{
	size_t start = rec_begin(w, REC_CONN);

	enc_conn(&w->out, c);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
}

/* ---- the checksum ----------------------------------------------------------------------------------- */

static void test_checksum(void)
{
	/* XXH64 with seed 0, from the reference implementation (libxxhash 0.8.1), over i * 7 + 3 */
	static const struct {
		size_t n;
		uint64_t h;
	} want[] = {
		{ 1, 0x1f25c8d0bc1f4bb6ull },   { 7, 0x9a7b149959ce60d8ull },   { 8, 0xdab99d95c6f90092ull },
		{ 31, 0xa2aa5f33cc4a6119ull },  { 32, 0x23c3c17ef790fd97ull },  { 33, 0x50a7cfc7ba588784ull },
		{ 100, 0xa61f8d4c170fe531ull }, { 200, 0xa6cb3c09bc829b24ull },
	};
	unsigned char b[200 + 8], *big;
	size_t n = 64u << 20;
	double best = 1e9;
	volatile uint64_t sink = 0;

	TU_CHECK(carry_checksum("", 0) == 0xEF46DB3751D8E999ull, "XXH64 of nothing");
	TU_CHECK(carry_checksum("abc", 3) == 0x44BC2CF5AD770999ull, "XXH64 of abc");
	for (size_t off = 0; off < 8; off++) {	/* and at every alignment */
		for (size_t i = 0; i < 200; i++)
			b[off + i] = (unsigned char)(i * 7 + 3);
		for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++)
			TU_CHECK(carry_checksum(b + off, want[k].n) == want[k].h, "XXH64 of %zu bytes at offset %zu",
			         want[k].n, off);
	}

	big = t_pattern(n, 5);
	for (int k = 0; k < 5; k++) {
		uint64_t t0 = t_now_ns();
		double s;

		sink += carry_checksum(big, n);
		s = (double)(t_now_ns() - t0) / 1e9;
		if (s < best)
			best = s;
	}
	(void)sink;
	printf("checksum: 64 MiB in %.2f ms, %.2f GB/s (slower under sanitizers)\n", best * 1e3,
	       (double)n / best / 1e9);
	free(big);
}

/* ---- a full state ----------------------------------------------------------------------------------- */

static void test_round_trip(void)
{
	struct evfdd_carry_info info = {
		.kind = EVFDD_CARRY_UPGRADE, .upgrades = 7, .time_usec = 1700000000123456ull,
		.mono_ns = 987654321012ull, .reloads = 3, .reloads_failed = 1,
	};
	struct evfdd_carry_counter counters[3] = {
		{ .service = "web", .name = "total", .value = 12345 },
		{ .service = "web", .name = "backend_refused", .value = 0 },
		{ .service = "db-1.x_y", .name = "total", .value = UINT64_MAX },
	};
	struct evfdd_carry_backend backends[2] = {
		{ .service = "web", .name = "127.0.0.1:8080", .drained = true, .connections = 5,
		  .connect_failures = 2, .bytes_up = 100, .bytes_down = 200, .state_changes = 4,
		  .last_change_usec = 42 },
		{ .service = "db-1.x_y", .name = "/run/my app/sock", .down = true, .connections = UINT64_MAX },
	};
	struct evfdd_carry_conn conns[3];
	struct evfdd_carry_writer *w;
	struct evfdd_carry_state *st;
	int fds[6], sv[2], pp[2], memfd, r, seals;
	unsigned char *mib = t_pattern(1u << 20, 9), *hello = t_pattern(517, 3);
	char why[WHY_LEN];
	int32_t idx;

	strcpy(info.version, "0.9.1 (git 0c9b140)");
	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %m");
	TU_CHECK(pipe(pp) == 0, "pipe: %m");
	fds[0] = sv[0];
	fds[1] = sv[1];
	fds[2] = pp[0];
	fds[3] = pp[1];
	fds[4] = socket(AF_INET, SOCK_STREAM, 0);
	fds[5] = socket(AF_INET6, SOCK_STREAM, 0);
	if (fds[5] < 0)
		fds[5] = socket(AF_UNIX, SOCK_DGRAM, 0);
	TU_CHECK(fds[4] >= 0 && fds[5] >= 0, "socket: %m");

	/* relaying, with 1 MiB received from the client and not yet sent, on indexes 0 and 1 put after it */
	conns[0] = t_conn(0, 1);
	conns[0].up.len = 1u << 20;
	conns[0].up.data = mib;
	conns[0].up.eof = true;
	conns[0].src_counted = true;
	conns[0].flushing = true;
	conns[0].dead = 1;
	conns[0].flush_end_ns = 99;
	conns[0].rst_backend = true;
	/* sending what goes first to a backend picked by an SNI route, over IPv6 */
	conns[1] = t_conn(3, 2);
	strcpy(conns[1].service, "tls");
	strcpy(conns[1].backend, "[2001:db8::1]:443");
	conns[1].route = 1;
	strcpy(conns[1].route_name, "*.example.com");
	conns[1].stage = EVFDD_CARRY_INIT;
	conns[1].peer = t_inet("2001:db8::7", 51234);
	conns[1].local = t_inet("::ffff:192.0.2.9", 443);
	conns[1].pre_state = 2;
	conns[1].pre = hello;
	conns[1].pre_len = 517;
	conns[1].pre_used = 0;
	conns[1].pre_deadline_ns = 5555;
	conns[1].init = hello;
	conns[1].init_len = 517;
	conns[1].init_off = 100;
	conns[1].init_hdr = 0;
	conns[1].up.len = 0;
	conns[1].up.data = NULL;
	conns[1].down.done = true;
	conns[1].rst_client = true;
	/* echo, reading its PROXY header, on a Unix listener: no backend descriptor */
	conns[2] = t_conn(4, -1);
	strcpy(conns[2].service, "echo");
	conns[2].backend[0] = '\0';
	conns[2].stage = EVFDD_CARRY_PRE;
	conns[2].peer = t_unix(NULL);
	conns[2].local = t_unix("/run/evfdd/echo.sock");
	conns[2].route = 2;
	conns[2].init_len = conns[2].init_off = conns[2].init_hdr = 0;
	conns[2].init = NULL;
	conns[2].down.len = 0;
	conns[2].down.data = NULL;

	/* records in mixed order: a connection before the descriptors it names, info in the middle */
	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	TU_CHECK(evfdd_carry_put_counter(w, &counters[0]) == 0, "put_counter");
	TU_CHECK(evfdd_carry_put_conn(w, &conns[0]) == 0, "put_conn 0");
	for (int i = 0; i < 4; i++)
		TU_CHECK(evfdd_carry_put_fd(w, fds[i], &idx) == 0 && idx == i, "put_fd %d: %d", i, idx);
	TU_CHECK(evfdd_carry_put_info(w, &info) == 0, "put_info");
	TU_CHECK(evfdd_carry_put_backend(w, &backends[0]) == 0, "put_backend 0");
	TU_CHECK(evfdd_carry_put_conn(w, &conns[1]) == 0, "put_conn 1");
	TU_CHECK(evfdd_carry_put_counter(w, &counters[1]) == 0, "put_counter");
	TU_CHECK(evfdd_carry_put_conn(w, &conns[2]) == 0, "put_conn 2");
	for (int i = 4; i < 6; i++)
		TU_CHECK(evfdd_carry_put_fd(w, fds[i], &idx) == 0 && idx == i, "put_fd %d: %d", i, idx);
	TU_CHECK(evfdd_carry_put_backend(w, &backends[1]) == 0, "put_backend 1");
	TU_CHECK(evfdd_carry_put_counter(w, &counters[2]) == 0, "put_counter");
	TU_CHECK(evfdd_carry_writer_nfds(w) == 6, "writer_nfds %zu", evfdd_carry_writer_nfds(w));
	for (size_t i = 0; i < 6; i++)
		TU_CHECK(evfdd_carry_writer_fd(w, i) == fds[i], "writer_fd %zu", i);
	TU_CHECK(evfdd_carry_writer_fd(w, 6) < 0, "writer_fd past the table");

	memfd = evfdd_carry_seal(w);
	TU_CHECK(memfd >= 0, "seal: %s", strerror(-memfd));
	TU_CHECK(lseek(memfd, 0, SEEK_CUR) == 0, "the memfd is not at its start");
	TU_CHECK(fcntl(memfd, F_GETFD) & FD_CLOEXEC, "the memfd is not close-on-exec");
	evfdd_carry_writer_free(w);
	free(mib);	/* the state holds its own copy */

	/* sealed: nothing can change it, not even its seals */
	seals = fcntl(memfd, F_GET_SEALS);
	TU_CHECK(seals == (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), "seals 0x%x", seals);
	errno = 0;
	TU_CHECK(write(memfd, "x", 1) == -1 && errno == EPERM, "write to the state: errno %d", errno);
	errno = 0;
	TU_CHECK(pwrite(memfd, "x", 1, 40) == -1 && errno == EPERM, "pwrite to the state: errno %d", errno);
	errno = 0;
	TU_CHECK(ftruncate(memfd, 0) == -1 && errno == EPERM, "ftruncate to 0: errno %d", errno);
	errno = 0;
	TU_CHECK(ftruncate(memfd, 1 << 30) == -1 && errno == EPERM, "ftruncate up: errno %d", errno);
	errno = 0;
	TU_CHECK(fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE) == -1 && errno == EPERM, "add a seal: errno %d", errno);
	TU_CHECK(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0) == MAP_FAILED, "writable mapping");
	TU_CHECK(evfdd_carry_is_state(memfd), "is_state of a state");

	r = evfdd_carry_open(memfd, &st, why, sizeof(why));
	TU_CHECK(r == 0, "open: %d (%s)", r, why);
	TU_CHECK(fcntl(memfd, F_GETFD) >= 0, "open closed the memfd");
	close(memfd);	/* the mapping stays */

	{
		const struct evfdd_carry_info *i = evfdd_carry_info(st);

		TU_CHECK(i->kind == info.kind && i->upgrades == info.upgrades && i->time_usec == info.time_usec &&
		         i->mono_ns == info.mono_ns && i->reloads == info.reloads &&
		         i->reloads_failed == info.reloads_failed && strcmp(i->version, info.version) == 0,
		         "info differs");
	}
	TU_CHECK(evfdd_carry_nfds(st) == 6, "nfds %zu", evfdd_carry_nfds(st));
	for (size_t i = 0; i < 6; i++) {
		const struct evfdd_carry_fd *f = evfdd_carry_fd(st, i);
		struct stat sb;

		TU_CHECK(fstat(fds[i], &sb) == 0, "fstat");
		TU_CHECK(f->fd == fds[i], "fd %zu is %d, want %d", i, f->fd, fds[i]);
		TU_CHECK(f->dev == (uint64_t)sb.st_dev && f->ino == (uint64_t)sb.st_ino, "fd %zu identity", i);
	}
	TU_CHECK(evfdd_carry_fd(st, 6) == NULL, "fd past the table");
	TU_CHECK(evfdd_carry_ncounters(st) == 3, "ncounters %zu", evfdd_carry_ncounters(st));
	for (size_t i = 0; i < 3; i++) {
		const struct evfdd_carry_counter *c = evfdd_carry_counter(st, i);

		TU_CHECK(strcmp(c->service, counters[i].service) == 0 && strcmp(c->name, counters[i].name) == 0 &&
		         c->value == counters[i].value, "counter %zu", i);
	}
	TU_CHECK(evfdd_carry_nbackends(st) == 2, "nbackends %zu", evfdd_carry_nbackends(st));
	for (size_t i = 0; i < 2; i++) {
		const struct evfdd_carry_backend *b = evfdd_carry_backend(st, i), *e = &backends[i];

		TU_CHECK(strcmp(b->service, e->service) == 0 && strcmp(b->name, e->name) == 0, "backend %zu names", i);
		TU_CHECK(b->drained == e->drained && b->down == e->down && b->connections == e->connections &&
		         b->connect_failures == e->connect_failures && b->bytes_up == e->bytes_up &&
		         b->bytes_down == e->bytes_down && b->state_changes == e->state_changes &&
		         b->last_change_usec == e->last_change_usec, "backend %zu values", i);
	}
	TU_CHECK(evfdd_carry_nconns(st) == 3, "nconns %zu", evfdd_carry_nconns(st));
	mib = t_pattern(1u << 20, 9);
	conns[0].up.data = mib;
	for (size_t i = 0; i < 3; i++)
		t_conn_eq(evfdd_carry_conn(st, i), &conns[i], i);
	TU_CHECK(evfdd_carry_conn(st, 3) == NULL && evfdd_carry_counter(st, 3) == NULL &&
	         evfdd_carry_backend(st, 2) == NULL, "past the end");
	t_touch(st);
	evfdd_carry_close(st);
	evfdd_carry_close(NULL);
	free(mib);
	free(hello);
	for (int i = 0; i < 6; i++)
		close(fds[i]);
}

/* No records at all: read as empty, info zeroed. */
static void test_empty(void)
{
	static const struct evfdd_carry_info zero;
	struct evfdd_carry_writer *w;
	struct evfdd_carry_state *st;
	char why[WHY_LEN];
	int fd;

	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	fd = evfdd_carry_seal(w);
	TU_CHECK(fd >= 0, "seal: %d", fd);
	evfdd_carry_writer_free(w);
	evfdd_carry_writer_free(NULL);
	TU_CHECK(lseek(fd, 0, SEEK_END) == HDR_LEN, "an empty state is its header");
	TU_CHECK(evfdd_carry_open(fd, &st, why, sizeof(why)) == 0, "open: %s", why);
	TU_CHECK(memcmp(evfdd_carry_info(st), &zero, sizeof(zero)) == 0, "info not zeroed");
	TU_CHECK(evfdd_carry_nfds(st) == 0 && evfdd_carry_ncounters(st) == 0 && evfdd_carry_nbackends(st) == 0 &&
	         evfdd_carry_nconns(st) == 0, "not empty");
	evfdd_carry_close(st);
	/* and a NULL @why is fine */
	TU_CHECK(evfdd_carry_open(fd, &st, NULL, 0) == 0, "open without why");
	evfdd_carry_close(st);
	close(fd);
}

/* ---- seals and what is not a state -------------------------------------------------------------------- */

static void test_not_sealed(void)
{
	static const unsigned seal_sets[] = { 0, F_SEAL_SHRINK | F_SEAL_GROW, F_SEAL_WRITE | F_SEAL_GROW,
					      F_SEAL_WRITE | F_SEAL_SHRINK, F_SEAL_SEAL };
	struct evfdd_carry_writer *w = t_writer(2);
	struct evfdd_carry_conn c = t_conn(0, 1);
	struct evfdd_carry_state *st;
	char why[WHY_LEN], tmpl[] = "/tmp/test-carry-XXXXXX";
	unsigned char *b;
	size_t n;
	int fd, pp[2], r;

	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	b = t_bytes(w, &n);
	evfdd_carry_writer_free(w);

	for (size_t k = 0; k < sizeof(seal_sets) / sizeof(seal_sets[0]); k++) {
		fd = memfd_create("not-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		TU_CHECK(fd >= 0, "memfd_create: %m");
		TU_CHECK(write_all(fd, b, n) == 0, "write");
		if (seal_sets[k])
			TU_CHECK(fcntl(fd, F_ADD_SEALS, seal_sets[k]) == 0, "F_ADD_SEALS: %m");
		r = evfdd_carry_open(fd, &st, why, sizeof(why));
		TU_CHECK(r == -EPROTO && strstr(why, "not sealed"), "seals 0x%x: %d (%s)", seal_sets[k], r, why);
		TU_CHECK(!evfdd_carry_is_state(fd) || (seal_sets[k] & F_SEAL_WRITE), "is_state with seals 0x%x",
		         seal_sets[k]);
		close(fd);
	}
	/* F_SEAL_SEAL is not required: the other three are what keep the bytes still */
	fd = memfd_create("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	TU_CHECK(fd >= 0 && write_all(fd, b, n) == 0, "memfd");
	TU_CHECK(fcntl(fd, F_ADD_SEALS, SEALS) == 0, "F_ADD_SEALS: %m");
	TU_CHECK(evfdd_carry_open(fd, &st, why, sizeof(why)) == 0, "sealed without F_SEAL_SEAL: %s", why);
	evfdd_carry_close(st);
	close(fd);

	/* a memfd that cannot be sealed has F_SEAL_SEAL from the start, and nothing else */
	fd = memfd_create("no-sealing", MFD_CLOEXEC);
	TU_CHECK(fd >= 0 && write_all(fd, b, n) == 0, "memfd");
	r = evfdd_carry_open(fd, &st, why, sizeof(why));
	TU_CHECK(r == -EPROTO && strstr(why, "not sealed"), "memfd without sealing: %d (%s)", r, why);
	close(fd);

	/* a regular file, a pipe: no seals at all */
	fd = mkstemp(tmpl);
	TU_CHECK(fd >= 0, "mkstemp: %m");
	unlink(tmpl);
	TU_CHECK(write_all(fd, b, n) == 0, "write");
	r = evfdd_carry_open(fd, &st, why, sizeof(why));
	TU_CHECK(r == -EPROTO && why[0], "a file: %d (%s)", r, why);	/* on tmpfs it has F_SEAL_SEAL alone */
	TU_CHECK(!evfdd_carry_is_state(fd), "is_state of a file");
	close(fd);
	TU_CHECK(pipe(pp) == 0, "pipe");
	r = evfdd_carry_open(pp[0], &st, why, sizeof(why));
	TU_CHECK(r == -EPROTO, "a pipe: %d (%s)", r, why);
	TU_CHECK(!evfdd_carry_is_state(pp[0]), "is_state of a pipe");
	close(pp[0]);
	close(pp[1]);
	/* a closed descriptor */
	TU_CHECK(evfdd_carry_open(pp[0], &st, why, sizeof(why)) == -EBADF, "closed fd");
	TU_CHECK(!evfdd_carry_is_state(pp[0]), "is_state of a closed fd");
	/* sealed, but not a state */
	fd = seal_bytes((const unsigned char *)"EVFDDSX\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 40);
	TU_CHECK(fd >= 0, "seal_bytes");
	TU_CHECK(!evfdd_carry_is_state(fd), "is_state without the magic");
	r = evfdd_carry_open(fd, &st, why, sizeof(why));
	TU_CHECK(r == -EPROTO && strstr(why, "magic"), "no magic: %d (%s)", r, why);
	close(fd);
	fd = seal_bytes(b, 7);
	TU_CHECK(!evfdd_carry_is_state(fd), "is_state of 7 bytes");
	close(fd);
	free(b);
}

/* ---- damage ----------------------------------------------------------------------------------------- */

/* A small state in the order the daemon writes it (descriptors first, so that every prefix that ends
 * between records is a state of its own), and where each record starts. */
static unsigned char *t_small(size_t *n, size_t *bounds, size_t *nbounds)
{
	struct evfdd_carry_info info = { .kind = EVFDD_CARRY_RESTART, .upgrades = 1, .version = "1.0" };
	struct evfdd_carry_counter k = { .service = "web", .name = "total", .value = 77 };
	struct evfdd_carry_backend be = { .service = "web", .name = "127.0.0.1:8080", .connections = 3 };
	struct evfdd_carry_writer *w = t_writer(3);
	struct evfdd_carry_conn c1 = t_conn(0, 1), c2 = t_conn(2, -1);
	unsigned char *b;

	c2.local = t_inet("::1", 443);
	c2.peer = t_unix("/x");
	TU_CHECK(evfdd_carry_put_info(w, &info) == 0, "put_info");
	TU_CHECK(evfdd_carry_put_counter(w, &k) == 0, "put_counter");
	TU_CHECK(evfdd_carry_put_backend(w, &be) == 0, "put_backend");
	TU_CHECK(evfdd_carry_put_conn(w, &c1) == 0, "put_conn");
	TU_CHECK(evfdd_carry_put_conn(w, &c2) == 0, "put_conn");
	b = t_bytes(w, n);
	evfdd_carry_writer_free(w);
	*nbounds = 0;
	for (size_t off = HDR_LEN; off <= *n; off += REC_HDR + ld32(b + off + 4)) {
		bounds[(*nbounds)++] = off;
		if (off == *n)
			break;
	}
	return b;
}

static void test_damage(void)
{
	static const unsigned char flips[] = { 0x01, 0x80, 0xff };
	size_t n, bounds[32], nbounds, refused = 0, read_whole = 0;
	unsigned char *b = t_small(&n, bounds, &nbounds), *d = malloc(n);
	struct evfdd_carry_state *st;
	char why[WHY_LEN];
	int r;

	TU_CHECK(d, "malloc");
	TU_CHECK(nbounds == 9 && bounds[nbounds - 1] == n, "%zu record bounds", nbounds);
	TU_CHECK(t_open_bytes(b, n, &st, why) == 0, "the small state: %s", why);
	evfdd_carry_close(st);

	/* every single-byte change, of the header or the payload, refused */
	for (size_t i = 0; i < n; i++) {
		for (size_t f = 0; f < sizeof(flips); f++) {
			memcpy(d, b, n);
			d[i] ^= flips[f];
			r = t_open_bytes(d, n, &st, why);
			TU_CHECK(r == -EPROTO || (r == -EPROTONOSUPPORT && i >= 8 && i < 12),
			         "byte %zu ^ 0x%02x: %d (%s)", i, flips[f], r, why);
			TU_CHECK(i < HDR_LEN || strstr(why, "checksum"), "byte %zu ^ 0x%02x: why %s", i, flips[f], why);
		}
	}

	/* and with the checksum mended, the records themselves are read: refused, or read whole, never more */
	for (size_t i = HDR_LEN; i < n; i++) {
		for (size_t f = 0; f < sizeof(flips); f++) {
			memcpy(d, b, n);
			d[i] ^= flips[f];
			t_mend(d, n);
			r = t_open_bytes(d, n, &st, why);
			TU_CHECK(r == 0 || r == -EPROTO, "byte %zu ^ 0x%02x mended: %d (%s)", i, flips[f], r, why);
			if (r == 0) {
				t_touch(st);
				evfdd_carry_close(st);
				read_whole++;
			} else {
				TU_CHECK(strncmp(why, "record ", 7) == 0 || strncmp(why, "fd ", 3) == 0,
				         "byte %zu: why \"%s\"", i, why);
				refused++;
			}
		}
	}
	printf("damage: %zu changes of the small state's records refused, %zu read (a value changed)\n", refused,
	       read_whole);
	TU_CHECK(refused > read_whole / 4, "few changes refused");

	/* every truncation refused; with the header mended, only those at a record's end read */
	for (size_t len = 0; len < n; len++) {
		r = t_open_bytes(b, len, &st, why);
		TU_CHECK(r == -EPROTO, "truncated to %zu: %d (%s)", len, r, why);
		if (len < HDR_LEN)
			continue;
		memcpy(d, b, len);
		t_mend(d, len);
		bool bound = false;

		for (size_t k = 0; k < nbounds; k++)
			bound = bound || bounds[k] == len;
		r = t_open_bytes(d, len, &st, why);
		TU_CHECK(bound ? r == 0 : r == -EPROTO, "truncated to %zu, mended: %d (%s)", len, r, why);
		if (r == 0) {
			t_touch(st);
			evfdd_carry_close(st);
		}
	}
	free(b);
	free(d);
}

static void test_version(void)
{
	struct evfdd_carry_state *st;
	size_t n, bounds[32], nbounds;
	unsigned char *b = t_small(&n, bounds, &nbounds);
	char why[WHY_LEN], want[64];
	uint32_t v, hl;
	int r;

	TU_CHECK(evfdd_carry_version_ok(EVFDD_CARRY_VERSION) && evfdd_carry_version_ok(EVFDD_CARRY_MIN_VERSION),
	         "version_ok of what is read");
	TU_CHECK(!evfdd_carry_version_ok(EVFDD_CARRY_MIN_VERSION - 1) &&
	         !evfdd_carry_version_ok(EVFDD_CARRY_VERSION + 1) && !evfdd_carry_version_ok(0) &&
	         !evfdd_carry_version_ok(~0ul) && !evfdd_carry_version_ok(UINT32_MAX), "version_ok outside");
	for (int k = 0; k < 2; k++) {
		uint32_t bad = k ? EVFDD_CARRY_VERSION + 1 : EVFDD_CARRY_MIN_VERSION - 1;

		v = htole32(bad);
		memcpy(b + 8, &v, 4);
		r = t_open_bytes(b, n, &st, why);
		TU_CHECK(r == -EPROTONOSUPPORT, "version %u: %d (%s)", bad, r, why);
		snprintf(want, sizeof(want), "version %u is %s", bad, k ? "newer" : "older");
		TU_CHECK(strstr(why, want), "version %u: why \"%s\"", bad, why);
		snprintf(want, sizeof(want), "(%d to %d)", EVFDD_CARRY_MIN_VERSION, EVFDD_CARRY_VERSION);
		TU_CHECK(strstr(why, want), "version %u: why \"%s\" has no range", bad, why);
	}
	v = htole32(EVFDD_CARRY_VERSION);
	memcpy(b + 8, &v, 4);
	hl = htole32(24);
	memcpy(b + 12, &hl, 4);
	r = t_open_bytes(b, n, &st, why);
	TU_CHECK(r == -EPROTO && strstr(why, "header length 24"), "header length 24: %d (%s)", r, why);
	free(b);
}

/* Records of a type this version does not know are skipped, wherever they are. */
static void test_unknown_type(void)
{
	struct evfdd_carry_writer *w;
	struct evfdd_carry_conn c = t_conn(1, 0);
	struct evfdd_carry_state *st;
	char why[WHY_LEN];
	size_t start;
	int fd;

	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	start = rec_begin(w, 999);
	put_u64(&w->out, 0x1234);
	buf_put(&w->out, "whatever a later version adds", 29);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	TU_CHECK(evfdd_carry_put_fd(w, 0, NULL) == 0, "put_fd");
	start = rec_begin(w, 0);	/* empty, of type 0 */
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	start = rec_begin(w, 0xffff);
	put_u8(&w->out, 7);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	w->out.b[start + 2] = 1;	/* (only to see the reason name the type) */
	{
		unsigned char *b;
		size_t n;
		char why2[WHY_LEN];
		struct evfdd_carry_state *st2;

		b = t_bytes(w, &n);
		TU_CHECK(t_open_bytes(b, n, &st2, why2) == -EPROTO &&
		         strstr(why2, "record 4 (type 65535): reserved is 1, not 0"), "unknown type's reason: %s", why2);
		free(b);
	}
	w->out.b[start + 2] = 0;
	TU_CHECK(evfdd_carry_put_fd(w, 1, NULL) == 0, "put_fd");
	fd = evfdd_carry_seal(w);
	TU_CHECK(fd >= 0, "seal: %d", fd);
	evfdd_carry_writer_free(w);
	TU_CHECK(evfdd_carry_open(fd, &st, why, sizeof(why)) == 0, "unknown records: %s", why);
	TU_CHECK(evfdd_carry_nfds(st) == 2 && evfdd_carry_nconns(st) == 1, "counts");
	TU_CHECK(evfdd_carry_fd(st, 0)->fd == 0 && evfdd_carry_fd(st, 1)->fd == 1, "fd table");
	t_conn_eq(evfdd_carry_conn(st, 0), &c, 0);
	evfdd_carry_close(st);
	close(fd);
}

/* fd indexes: the writer's seal and the reader refuse the same things. */
static void test_fd_indexes(void)
{
	struct evfdd_carry_writer *w;
	struct evfdd_carry_conn c;

	/* past the table: the seal refuses, the reader too */
	w = t_writer(2);
	c = t_conn(0, 2);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn (indexes are checked at the seal)");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with bfd past the table");
	t_refused(w, "record 2 (connection): bfd is fd index 2, past the table's 2", "bfd past the table");
	w = t_writer(0);
	c = t_conn(0, -1);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with no table");
	t_refused(w, "cfd is fd index 0, past the table's 0", "no table");
	/* twice in one connection */
	w = t_writer(2);
	c = t_conn(1, 1);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with cfd == bfd");
	t_refused(w, "cfd and bfd are both fd index 1", "cfd == bfd");
	/* by two connections, either way round */
	w = t_writer(3);
	c = t_conn(0, 1);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	c = t_conn(2, 0);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with an index shared");
	t_refused(w, "record 4 (connection): bfd's fd index 0 is record 3's too", "shared bfd");
	w = t_writer(3);
	c = t_conn(2, -1);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	c = t_conn(2, 1);
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with an index shared");
	t_refused(w, "cfd's fd index 2 is record 3's too", "shared cfd");
	/* a descriptor twice in the table */
	w = t_writer(3);
	TU_CHECK(evfdd_carry_put_fd(w, 1, NULL) == 0, "put_fd");
	TU_CHECK(evfdd_carry_seal(w) == -EINVAL, "seal with an fd twice");
	t_refused(w, "fd 1 is in the table twice (indexes 1 and 3)", "fd twice");
	/* the reader's own: a negative descriptor, a negative index, more than the table may hold */
	w = t_writer(1);
	t_raw_fd(w, -3, 1);
	t_refused(w, "record 1 (fd): fd is -3", "negative fd");
	w = t_writer(2);
	c = t_conn(0, 1);
	c.bfd = -2;
	t_raw_conn(w, &c);
	t_refused(w, "bfd is -2", "bfd -2");
	w = t_writer(2);
	c = t_conn(0, 1);
	c.cfd = -1;
	t_raw_conn(w, &c);
	t_refused(w, "cfd is -1", "cfd -1");
	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	for (uint32_t i = 0; i <= EVFDD_CARRY_MAX_FDS; i++)
		t_raw_fd(w, (int32_t)i, i);
	t_refused(w, "record 1048576 (fd): more than 1048576 descriptors", "too many fds");
}

/* A counter record of raw strings. */
static void t_raw_counter(struct evfdd_carry_writer *w, const void *svc, size_t svclen, const void *name,
			  size_t namelen)
{
	size_t start = rec_begin(w, REC_COUNTER);

	put_u16(&w->out, (unsigned)svclen);
	buf_put(&w->out, svc, svclen);
	put_u16(&w->out, (unsigned)namelen);
	buf_put(&w->out, name, namelen);
	put_u64(&w->out, 1);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
}


/* Counter records the reader refuses: a NULL string stands for as many 'n' bytes as the length says. */
struct bad_counter {
	const char *svc;
	size_t svclen;
	const char *name;
	size_t namelen;
	const char *why, *what;
};

static const struct bad_counter bad_counters[] = {
	{ "web", 3, "a\0b", 3, "record 0 (counter): name holds a NUL", "NUL in a name" },
	{ "web", 3, "to\atal", 6, "record 0 (counter): name holds byte 0x07 at 2", "BEL in a name" },
	{ "w b", 3, "total", 5, "service holds byte 0x20 at 1", "a blank in a service" },
	{ "web", 3, "tot\xff", 4, "name holds byte 0xff at 3", "0xff in a name" },
	{ "", 0, "total", 5, "service is empty", "an empty service" },
	{ "web", 3, NULL, 32, "name is 32 bytes, at most 31", "a name as long as its field" },
	{ NULL, 65, "total", 5, "service is 65 bytes, at most 64", "a service as long as its field" },
};

static void test_strings(void)
{
	struct evfdd_carry_counter k = { .service = "web", .name = "total" };
	struct evfdd_carry_backend be = { .service = "web", .name = "/run/my app/\xc3\xa9t\xc3\xa9.sock" };
	struct evfdd_carry_info info = { .kind = EVFDD_CARRY_UPGRADE, .version = "1.0 beta" };
	struct evfdd_carry_writer *w;
	struct evfdd_carry_conn c;
	char long_name[300];
	int fd;

	/* the writer */
	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	TU_CHECK(evfdd_carry_put_counter(w, &k) == 0, "a good counter");
	memset(k.name, 'a', sizeof(k.name));
	TU_CHECK(evfdd_carry_put_counter(w, &k) == -EINVAL, "a name without its NUL");
	strcpy(k.name, "to\x01tal");
	TU_CHECK(evfdd_carry_put_counter(w, &k) == -EINVAL, "a control character");
	strcpy(k.name, "to tal");
	TU_CHECK(evfdd_carry_put_counter(w, &k) == -EINVAL, "a blank in a name");
	strcpy(k.name, "tot\x80");
	TU_CHECK(evfdd_carry_put_counter(w, &k) == -EINVAL, "a byte past ASCII in a name");
	strcpy(k.name, "total");
	k.service[0] = '\0';
	TU_CHECK(evfdd_carry_put_counter(w, &k) == -EINVAL, "an empty service");
	TU_CHECK(evfdd_carry_put_backend(w, &be) == 0, "a backend's Unix path with a blank and UTF-8");
	strcpy(be.name, "/run/a\tb");
	TU_CHECK(evfdd_carry_put_backend(w, &be) == -EINVAL, "a tab in a backend's name");
	be.name[0] = '\0';
	TU_CHECK(evfdd_carry_put_backend(w, &be) == -EINVAL, "an empty backend name");
	TU_CHECK(evfdd_carry_put_info(w, &info) == 0, "a version with a blank");
	evfdd_carry_writer_free(w);
	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	strcpy(info.version, "1.0\x7f");
	TU_CHECK(evfdd_carry_put_info(w, &info) == -EINVAL, "DEL in the version");
	memset(info.version, 'v', sizeof(info.version));
	TU_CHECK(evfdd_carry_put_info(w, &info) == -EINVAL, "a version without its NUL");
	evfdd_carry_writer_free(w);

	/* the reader */
	memset(long_name, 'n', sizeof(long_name));
	for (size_t i = 0; i < sizeof(bad_counters) / sizeof(bad_counters[0]); i++) {
		const struct bad_counter *b = &bad_counters[i];

		w = t_writer(0);
		t_raw_counter(w, b->svc ? b->svc : long_name, b->svclen, b->name ? b->name : long_name, b->namelen);
		t_refused(w, b->why, b->what);
	}
	w = t_writer(0);
	t_raw_counter(w, "web", 3, long_name, 31);
	fd = evfdd_carry_seal(w);
	TU_CHECK(fd >= 0, "the longest name: %d", fd);
	close(fd);
	evfdd_carry_writer_free(w);
	w = t_writer(2);
	c = t_conn(0, 1);
	strcpy(c.backend, "/run/x\x7f");
	t_raw_conn(w, &c);
	t_refused(w, "backend holds byte 0x7f at 6", "DEL in a backend");
	w = t_writer(2);
	c = t_conn(0, 1);
	strcpy(c.route_name, "a b");
	c.route = 1;
	t_raw_conn(w, &c);
	t_refused(w, "route_name holds byte 0x20 at 1", "a blank in a route name");
}

static void t_set32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

/* Make @k wrong in the @i-th way; returns what the reader must say, or NULL past the last. */
static const char *t_conn_case(struct evfdd_carry_conn *k, int i)
{
	switch (i) {
	case 0:
		k->pre_len = 20;
		k->pre_used = 30;
		return "record 2 (connection): pre_used 30 past pre_len 20";
	case 1:
		k->init_off = k->init_len + 1;
		return "init_off 8 past init_len 7";
	case 2:
		k->init_hdr = 100;
		return "init_hdr 100 past init_len 7";
	case 3:
		k->stage = EVFDD_CARRY_STAGES;
		return "stage 5 past 4";
	case 4:
		k->stage = 0xffffffffu;
		return "stage 4294967295 past 4";
	case 5:
		k->pre_state = 3;
		return "pre_state 3 past 2";
	case 6:
		k->route = 3;
		return "route 3 past 2";
	case 7:
		k->route = 1;
		return "route 1 (an SNI route) without a route_name";
	case 8:
		strcpy(k->route_name, "x.example");
		return "route 0 with a route_name";
	case 9:
		k->dead = 2;
		return "dead 2 past 1";
	case 10:
		k->service[0] = '\0';
		return "service is empty";
	case 11:
		k->peer.len = sizeof(k->peer.u.in6);
		return "peer of family 2 is 28 bytes";
	case 12:
		k->local = t_inet("::1", 1);
		k->local.len = sizeof(k->local.u.in);
		return "local of family 10 is 16 bytes";
	case 13:
		k->peer.u.sa.sa_family = AF_APPLETALK;
		return "peer has family 5, not AF_INET, AF_INET6 or AF_UNIX";
	case 14:
		k->peer = t_unix(NULL);
		k->peer.len = 1;
		return "peer is 1 bytes, too short for a family";
	case 15:
		k->peer = t_unix(NULL);
		k->peer.len = sizeof(k->peer.u.un) + 1;
		return "peer of family 1 is 111 bytes";
	case 16:
		k->peer.len = sizeof(k->peer.u.storage) + 1;
		return "peer is 129 bytes, past 128";
	default:
		return NULL;
	}
}

/* Every other thing a record can get wrong, each named. */
static void test_records(void)
{
	struct evfdd_carry_info info = { .kind = EVFDD_CARRY_UPGRADE, .version = "1" };
	struct evfdd_carry_backend be = { .service = "web", .name = "b" };
	struct evfdd_carry_writer *w;
	struct evfdd_carry_conn c;
	size_t start;

	/* framing */
	w = t_writer(1);
	start = rec_begin(w, REC_COUNTER);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	w->out.b[start + 2] = 1;
	t_refused(w, "record 1 (counter): reserved is 1, not 0", "reserved");
	w = t_writer(1);
	start = rec_begin(w, REC_CONN);
	put_u32(&w->out, 0);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	w->out.b[start + 4] = 5;
	t_refused(w, "record 1 (connection): length 5 past the end (4 bytes left)", "length past the end");
	w = t_writer(1);
	put_u32(&w->out, 0);
	t_refused(w, "record 1: header past the end (4 bytes left)", "a record's header cut");
	/* a known record must parse exactly */
	w = t_writer(0);
	start = rec_begin(w, REC_COUNTER);
	put_str(&w->out, "web");
	put_str(&w->out, "total");
	put_u64(&w->out, 5);
	put_u8(&w->out, 0);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	t_refused(w, "record 0 (counter): 1 bytes past its last field", "trailing byte");
	w = t_writer(0);
	start = rec_begin(w, REC_COUNTER);
	put_str(&w->out, "web");
	put_str(&w->out, "total");
	put_u32(&w->out, 5);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	t_refused(w, "record 0 (counter): ends inside value (8 bytes wanted, 4 left)", "a short counter");
	w = t_writer(0);
	start = rec_begin(w, REC_FD);
	put_i32(&w->out, 3);
	put_u64(&w->out, 1);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	t_refused(w, "record 0 (fd): ends inside ino", "a short fd");
	/* info: once, of a known kind */
	w = t_writer(0);
	TU_CHECK(evfdd_carry_put_info(w, &info) == 0, "put_info");
	TU_CHECK(evfdd_carry_put_info(w, &info) == -EINVAL, "a second put_info");
	start = rec_begin(w, REC_INFO);
	enc_info(&w->out, &info);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	t_refused(w, "record 1 (info): a second info record", "two infos");
	info.kind = 3;
	w = t_writer(0);
	TU_CHECK(evfdd_carry_put_info(w, &info) == -EINVAL, "put_info of kind 3");
	start = rec_begin(w, REC_INFO);
	enc_info(&w->out, &info);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	t_refused(w, "kind 3 is neither", "kind 3");
	/* booleans are 0 or 1 */
	w = t_writer(0);
	start = rec_begin(w, REC_BACKEND);
	enc_backend(&w->out, &be);
	TU_CHECK(rec_end(w, start) == 0, "rec_end");
	w->out.b[start + REC_HDR + 2 + 3 + 2 + 1] = 2;	/* drained */
	t_refused(w, "record 0 (backend): drained is 2, not 0 or 1", "a bool of 2");
	w = t_writer(2);
	c = t_conn(0, 1);
	t_raw_conn(w, &c);
	w->out.b[w->out.len - 4 - c.down.len - 3] = 0x10;	/* down.eof */
	t_refused(w, "down.eof is 16, not 0 or 1", "down.eof");

	/* a connection's fields in range */
	for (int i = 0;; i++) {
		struct evfdd_carry_conn k = t_conn(0, 1);
		const char *want = t_conn_case(&k, i);

		if (!want)
			break;
		w = t_writer(2);
		TU_CHECK(evfdd_carry_put_conn(w, &k) == -EINVAL, "put_conn of case %d (%s)", i, want);
		t_raw_conn(w, &k);
		t_refused(w, want, want);
	}
	/* a length past the limit, however short the record; one past what the record holds */
	w = t_writer(2);
	c = t_conn(0, 1);
	t_raw_conn(w, &c);
	t_set32(w->out.b + w->out.len - 4 - c.down.len, EVFDD_CARRY_MAX_DATA + 1);
	t_refused(w, "down is 67108865 bytes, past 67108864", "down past the limit");
	w = t_writer(2);
	c = t_conn(0, 1);
	c.up.len = 1000;
	c.up.data = t_pattern(1000, 4);
	t_raw_conn(w, &c);
	free((void *)c.up.data);
	t_set32(w->out.b + w->out.len - (7 + c.down.len) - c.up.len - 4, 5000);
	t_refused(w, "record 2 (connection): ends inside up (5000 bytes wanted, 1016 left)", "up past the record");
	w = t_writer(2);
	c = t_conn(0, 1);
	t_raw_conn(w, &c);
	/* init_len: before init_off, init_hdr, init, flushing, dead, flush_end_ns, rst_client, rst_backend, up, down */
	t_set32(w->out.b + w->out.len - (7 + c.down.len) - (7 + c.up.len) - 2 - 8 - 4 - 1 - c.init_len - 12,
		EVFDD_CARRY_MAX_DATA + 1);
	t_refused(w, "init is 67108865 bytes, past 67108864", "init past the limit");
}

/* What the writer refuses, and that a refused put leaves nothing behind. */
static void test_writer(void)
{
	static unsigned char small[16];
	struct evfdd_carry_writer *w = t_writer(2);
	struct evfdd_carry_conn c = t_conn(0, 1);
	struct evfdd_carry_state *st;
	char why[WHY_LEN];
	int pp[2], fd;
	size_t len;

	TU_CHECK(pipe(pp) == 0, "pipe");
	close(pp[1]);
	TU_CHECK(evfdd_carry_put_fd(w, -1, NULL) == -EBADF, "put_fd(-1)");
	TU_CHECK(evfdd_carry_put_fd(w, pp[1], NULL) == -EBADF, "put_fd of a closed fd");
	close(pp[0]);
	len = w->out.len;
	c.up.len = EVFDD_CARRY_MAX_DATA + 1;
	c.up.data = small;	/* never read: refused first */
	TU_CHECK(evfdd_carry_put_conn(w, &c) == -EINVAL, "up past the limit");
	c = t_conn(0, 1);
	c.init = NULL;
	TU_CHECK(evfdd_carry_put_conn(w, &c) == -EINVAL, "init of 7 bytes at NULL");
	c = t_conn(0, 1);
	c.pre_len = 0;
	c.pre_used = 0;
	c.pre = NULL;
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "no pre, at NULL");
	TU_CHECK(w->out.len > len, "nothing written");
	len = w->out.len;
	c = t_conn(0, 1);
	memset(c.service, 's', sizeof(c.service));
	TU_CHECK(evfdd_carry_put_conn(w, &c) == -EINVAL, "a service without its NUL");
	TU_CHECK(w->out.len == len && evfdd_carry_writer_nfds(w) == 2, "a refused put left something");
	fd = evfdd_carry_seal(w);
	TU_CHECK(fd >= 0, "seal: %d", fd);
	/* a seal again gives the same state */
	{
		int fd2 = evfdd_carry_seal(w);

		TU_CHECK(fd2 >= 0, "a second seal: %d", fd2);
		TU_CHECK(lseek(fd2, 0, SEEK_END) == lseek(fd, 0, SEEK_END), "a second seal differs");
		close(fd2);
	}
	evfdd_carry_writer_free(w);
	TU_CHECK(evfdd_carry_open(fd, &st, why, sizeof(why)) == 0, "open: %s", why);
	TU_CHECK(evfdd_carry_nconns(st) == 1 && evfdd_carry_conn(st, 0)->pre_len == 0 && evfdd_carry_conn(st, 0)->pre,
	         "an empty pre is not NULL once read");
	evfdd_carry_close(st);
	close(fd);
}

/* For the record: what a 64 MiB state costs to seal and to open (the upgrade's pause pays both). */
static void test_big(void)
{
	size_t half = 32u << 20;
	unsigned char *up = t_pattern(half, 1), *down = t_pattern(half, 2);
	struct evfdd_carry_writer *w = t_writer(2);
	struct evfdd_carry_conn c = t_conn(0, 1);
	struct evfdd_carry_state *st;
	uint64_t t0, t1, t2;
	char why[WHY_LEN];
	int fd;

	c.up.len = (uint32_t)half;
	c.up.data = up;
	c.down.len = (uint32_t)half;
	c.down.data = down;
	t0 = t_now_ns();
	TU_CHECK(evfdd_carry_put_conn(w, &c) == 0, "put_conn");
	fd = evfdd_carry_seal(w);
	TU_CHECK(fd >= 0, "seal: %d", fd);
	t1 = t_now_ns();
	TU_CHECK(evfdd_carry_open(fd, &st, why, sizeof(why)) == 0, "open: %s", why);
	t2 = t_now_ns();
	TU_CHECK(memcmp(evfdd_carry_conn(st, 0)->up.data, up, half) == 0 &&
	         memcmp(evfdd_carry_conn(st, 0)->down.data, down, half) == 0, "64 MiB differ");
	printf("64 MiB state: put and seal %.1f ms, open %.1f ms (slower under sanitizers)\n", (double)(t1 - t0) / 1e6,
	       (double)(t2 - t1) / 1e6);
	evfdd_carry_close(st);
	evfdd_carry_writer_free(w);
	close(fd);
	free(up);
	free(down);
}

int main(void)
{
	test_checksum();
	test_empty();
	test_round_trip();
	test_not_sealed();
	test_damage();
	test_version();
	test_unknown_type();
	test_fd_indexes();
	test_strings();
	test_records();
	test_writer();
	test_big();
	printf("test-carry: ok\n");
	return 0;
}
