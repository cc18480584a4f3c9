/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What evfdd_handover_takeover (daemon/handover.h) makes of the descriptors an upgrade or a restart carried
 * over: the state's memfd is read and closed at once (the state lives on in its mapping, so nothing the
 * new image holds keeps the old image's memfd until the connections are adopted); the descriptors the
 * state names are matched by identity; a listener it does not name is kept; anything else is closed. A
 * state the reader refuses has its memfd closed too, and says why.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../daemon/carry.h"
#include "../daemon/handover.h"
#include "testutil.h"

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0 || errno != EBADF;
}

static int listener(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	TU_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 && listen(fd, 4) == 0,
		 "listener: %s", strerror(errno));
	return fd;
}

/* The descriptors handed over, as evfdd_handover_inherit leaves them (the array is the callee's). */
static void carry(struct evfdd_inherit *in, const int *fds, size_t n)
{
	memset(in, 0, sizeof(*in));
	in->carried = malloc(n * sizeof(*in->carried));
	TU_CHECK(in->carried, "malloc");
	memcpy(in->carried, fds, n * sizeof(*fds));
	in->ncarried = n;
}

/* A state naming @fd, sealed. */
static int state_naming(int fd)
{
	struct evfdd_carry_info info = { .kind = EVFDD_CARRY_UPGRADE, .upgrades = 1, .version = "test" };
	struct evfdd_carry_writer *w;
	int32_t idx;
	int memfd;

	TU_CHECK(evfdd_carry_writer_new(&w) == 0, "writer_new");
	TU_CHECK(evfdd_carry_put_info(w, &info) == 0, "put_info");
	TU_CHECK(evfdd_carry_put_fd(w, fd, &idx) == 0 && idx == 0, "put_fd");
	memfd = evfdd_carry_seal(w);
	TU_CHECK(memfd >= 0, "seal: %s", strerror(-memfd));
	evfdd_carry_writer_free(w);
	return memfd;
}

/* A sealed memfd that looks like a state (the magic) but is of format 99: the reader refuses it. */
static int state_of_version_99(void)
{
	unsigned char h[32] = { 'E', 'V', 'F', 'D', 'D', 'S', 'T', '\n', 99, 0, 0, 0, 32 };
	int fd = memfd_create("test-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	TU_CHECK(fd >= 0 && write(fd, h, sizeof(h)) == (ssize_t)sizeof(h), "memfd: %s", strerror(errno));
	TU_CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == 0, "seal: %s",
		 strerror(errno));
	return fd;
}

static void test_state_read(void)
{
	struct evfdd_takeover t;
	struct evfdd_inherit in;
	int sp[2], lst = listener(), memfd, fds[4];

	TU_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0, "socketpair");
	memfd = state_naming(sp[0]);
	TU_CHECK(evfdd_carry_is_state(memfd), "the state is not taken for one");
	fds[0] = sp[1];		/* named by nothing: closed */
	fds[1] = memfd;
	fds[2] = lst;		/* a listener it does not name: kept */
	fds[3] = sp[0];		/* named by the state */
	carry(&in, fds, 4);
	evfdd_handover_takeover(&in, &t);
	TU_CHECK(t.st && !t.why[0], "the state was refused: %s", t.why);
	TU_CHECK(!is_open(memfd), "the state's memfd is still open after it was read");
	TU_CHECK(evfdd_carry_info(t.st)->upgrades == 1 && !strcmp(evfdd_carry_info(t.st)->version, "test"),
		 "the state read through its mapping differs");
	TU_CHECK(t.nmap == 1 && t.map[0] == sp[0] && is_open(sp[0]), "the named descriptor: %zu, %d", t.nmap,
		 t.nmap ? t.map[0] : -1);
	TU_CHECK(t.nlisteners == 1 && t.listeners[0] == lst && is_open(lst), "the listener was not kept");
	TU_CHECK(t.closed == 1 && !is_open(sp[1]), "the stray descriptor: %u closed", t.closed);
	TU_CHECK(in.carried == NULL && in.ncarried == 0, "the carried list was not taken over");
	evfdd_takeover_clear(&t);
	TU_CHECK(!is_open(sp[0]), "takeover_clear left the unadopted descriptor open");
	close(lst);
}

static void test_state_refused(void)
{
	struct evfdd_takeover t;
	struct evfdd_inherit in;
	int memfd = state_of_version_99(), lst = listener(), fds[2];

	TU_CHECK(evfdd_carry_is_state(memfd), "the version-99 state is not taken for one");
	fds[0] = memfd;
	fds[1] = lst;
	carry(&in, fds, 2);
	evfdd_handover_takeover(&in, &t);
	TU_CHECK(!t.st && strstr(t.why, "version 99"), "a version-99 state: st %p, why \"%s\"", (void *)t.st,
		 t.why);
	TU_CHECK(!is_open(memfd), "a refused state's memfd is still open");
	TU_CHECK(t.nlisteners == 1 && t.listeners[0] == lst, "the listener was not kept after a refused state");
	evfdd_takeover_clear(&t);
	close(lst);
}

int main(void)
{
	test_state_read();
	test_state_refused();
	return 0;
}
