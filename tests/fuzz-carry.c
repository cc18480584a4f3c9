/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the state an upgrade hands over (daemon/carry.h). The input goes into a sealed memfd as it
 * is, then once more with its payload length and checksum mended (so that the fuzzer reaches the records,
 * which a checksum would otherwise keep it from). For any bytes:
 *  - the open gives 0, -EPROTO or -EPROTONOSUPPORT, with a reason whenever it fails;
 *  - a state read holds only what the reader promises: fd indexes within the table and none shared, strings
 *    NUL-terminated and of the bytes they may hold, data inside the mapping (every byte is read: ASan sees a
 *    read past it), fields in range;
 *  - the writer takes back everything a state read holds (the same checks on both sides), and the state it
 *    seals reads back the same.
 * A violation aborts, which the fuzzer reports.
 *
 * Under libFuzzer (clang), from the top of a configured tree:
 *	clang -g -O1 -fsanitize=fuzzer,address,undefined -DEVFDD_FUZZING -include config.h -Ilib \
 *		tests/fuzz-carry.c daemon/util.c -o /tmp/fuzz-carry
 *	mkdir -p /tmp/fuzz-work
 *	/tmp/fuzz-carry -max_total_time=60 -max_len=8192 /tmp/fuzz-work tests/fuzz-corpus/carry
 * (new inputs go to /tmp/fuzz-work; copy the interesting ones into tests/fuzz-corpus/carry). It includes
 * daemon/carry.c itself, to reach the checksum and the writer's internals.
 *
 * Without EVFDD_FUZZING this file has its own main, which runs the target once over every file in
 * tests/fuzz-corpus/carry (or the files and directories given as arguments): `make check` does that.
 */
#include "../daemon/carry.c"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fuzzmain.h"

#define FUZZ_ASSERT(cond)                                                                                \
	do {                                                                                             \
		if (!(cond)) {                                                                           \
			fprintf(stderr, "fuzz-carry: %s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                                  \
			abort();                                                                         \
		}                                                                                        \
	} while (0)

/* Larger inputs find nothing that smaller ones do not, and a state's limits are far past them. */
#define FUZZ_MAX (1u << 22)

static bool inside(const struct evfdd_carry_state *st, const unsigned char *p, uint32_t n)
{
	const unsigned char *lo = st->map, *hi = lo + st->size;

	return p && p >= lo && p <= hi && n <= (size_t)(hi - p);
}

/* Every byte of @p: a read past the mapping crashes under ASan (or at the page's end without it). */
static uint64_t sum_bytes(const unsigned char *p, uint32_t n)
{
	uint64_t s = 0;

	for (uint32_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

/* What every state read must be. */
static void check_state(const struct evfdd_carry_state *st)
{
	const struct evfdd_carry_info *info = evfdd_carry_info(st);
	size_t nfds = evfdd_carry_nfds(st);
	unsigned char *used = calloc(nfds / 8 + 1, 1);
	volatile uint64_t sink = 0;

	FUZZ_ASSERT(used);
	FUZZ_ASSERT(nfds <= EVFDD_CARRY_MAX_FDS);
	if (info->kind != 0)
		FUZZ_ASSERT(info_check(info, NULL, 0));
	for (size_t i = 0; i < nfds; i++) {
		FUZZ_ASSERT(evfdd_carry_fd(st, i)->fd >= 0);
		for (size_t j = 0; j < i && i < 64; j++)
			FUZZ_ASSERT(evfdd_carry_fd(st, j)->fd != evfdd_carry_fd(st, i)->fd);
	}
	FUZZ_ASSERT(evfdd_carry_fd(st, nfds) == NULL);
	for (size_t i = 0; i < evfdd_carry_ncounters(st); i++)
		FUZZ_ASSERT(counter_check(evfdd_carry_counter(st, i), NULL, 0));
	for (size_t i = 0; i < evfdd_carry_nbackends(st); i++)
		FUZZ_ASSERT(backend_check(evfdd_carry_backend(st, i), NULL, 0));
	for (size_t i = 0; i < evfdd_carry_nconns(st); i++) {
		const struct evfdd_carry_conn *c = evfdd_carry_conn(st, i);

		FUZZ_ASSERT(conn_check(c, NULL, 0));
		FUZZ_ASSERT(c->cfd >= 0 && (size_t)c->cfd < nfds);
		FUZZ_ASSERT(c->bfd == -1 || (c->bfd >= 0 && (size_t)c->bfd < nfds && c->bfd != c->cfd));
		FUZZ_ASSERT(!(used[c->cfd / 8] & (1u << (c->cfd % 8))));
		used[c->cfd / 8] |= (unsigned char)(1u << (c->cfd % 8));
		if (c->bfd >= 0) {
			FUZZ_ASSERT(!(used[c->bfd / 8] & (1u << (c->bfd % 8))));
			used[c->bfd / 8] |= (unsigned char)(1u << (c->bfd % 8));
		}
		FUZZ_ASSERT(inside(st, c->pre, c->pre_len) && inside(st, c->init, c->init_len) &&
			    inside(st, c->up.data, c->up.len) && inside(st, c->down.data, c->down.len));
		sink += sum_bytes(c->pre, c->pre_len) + sum_bytes(c->init, c->init_len) +
			sum_bytes(c->up.data, c->up.len) + sum_bytes(c->down.data, c->down.len);
	}
	(void)sink;
	free(used);
}

/* Write @st again, through the writer's checks, and read that back: the same. */
static void check_rewrite(const struct evfdd_carry_state *st)
{
	static const struct evfdd_carry_info zero;
	struct evfdd_carry_writer *w;
	struct evfdd_carry_state *st2;
	char why[256];
	int fd;

	FUZZ_ASSERT(evfdd_carry_writer_new(&w) == 0);
	if (memcmp(evfdd_carry_info(st), &zero, sizeof(zero)) != 0)
		FUZZ_ASSERT(evfdd_carry_put_info(w, evfdd_carry_info(st)) == 0);
	for (size_t i = 0; i < evfdd_carry_nfds(st); i++) {
		/* put_fd would fstat a descriptor of this process: the table goes in as it is */
		size_t start = rec_begin(w, REC_FD);

		enc_fd(&w->out, evfdd_carry_fd(st, i));
		FUZZ_ASSERT(rec_end(w, start) == 0);
		FUZZ_ASSERT(util_grow((void **)&w->fds, &w->fds_cap, w->nfds + 1, sizeof(*w->fds)) == 0);
		w->fds[w->nfds++] = *evfdd_carry_fd(st, i);
	}
	for (size_t i = 0; i < evfdd_carry_ncounters(st); i++)
		FUZZ_ASSERT(evfdd_carry_put_counter(w, evfdd_carry_counter(st, i)) == 0);
	for (size_t i = 0; i < evfdd_carry_nbackends(st); i++)
		FUZZ_ASSERT(evfdd_carry_put_backend(w, evfdd_carry_backend(st, i)) == 0);
	for (size_t i = 0; i < evfdd_carry_nconns(st); i++)
		FUZZ_ASSERT(evfdd_carry_put_conn(w, evfdd_carry_conn(st, i)) == 0);
	fd = evfdd_carry_seal(w);
	FUZZ_ASSERT(fd >= 0);
	evfdd_carry_writer_free(w);
	FUZZ_ASSERT(evfdd_carry_open(fd, &st2, why, sizeof(why)) == 0);
	close(fd);

	FUZZ_ASSERT(memcmp(evfdd_carry_info(st2), evfdd_carry_info(st), sizeof(zero)) == 0);
	FUZZ_ASSERT(evfdd_carry_nfds(st2) == evfdd_carry_nfds(st));
	for (size_t i = 0; i < evfdd_carry_nfds(st); i++)
		FUZZ_ASSERT(memcmp(evfdd_carry_fd(st2, i), evfdd_carry_fd(st, i), sizeof(struct evfdd_carry_fd)) == 0);
	FUZZ_ASSERT(evfdd_carry_ncounters(st2) == evfdd_carry_ncounters(st));
	for (size_t i = 0; i < evfdd_carry_ncounters(st); i++)
		FUZZ_ASSERT(memcmp(evfdd_carry_counter(st2, i), evfdd_carry_counter(st, i),
				   sizeof(struct evfdd_carry_counter)) == 0);
	FUZZ_ASSERT(evfdd_carry_nbackends(st2) == evfdd_carry_nbackends(st));
	for (size_t i = 0; i < evfdd_carry_nbackends(st); i++)
		FUZZ_ASSERT(memcmp(evfdd_carry_backend(st2, i), evfdd_carry_backend(st, i),
				   sizeof(struct evfdd_carry_backend)) == 0);
	FUZZ_ASSERT(evfdd_carry_nconns(st2) == evfdd_carry_nconns(st));
	for (size_t i = 0; i < evfdd_carry_nconns(st); i++) {
		struct evfdd_carry_conn a, b;

		memcpy(&a, evfdd_carry_conn(st2, i), sizeof(a));	/* (padding too: both were zeroed first) */
		memcpy(&b, evfdd_carry_conn(st, i), sizeof(b));

		FUZZ_ASSERT(a.pre_len == b.pre_len && memcmp(a.pre, b.pre, a.pre_len) == 0);
		FUZZ_ASSERT(a.init_len == b.init_len && memcmp(a.init, b.init, a.init_len) == 0);
		FUZZ_ASSERT(a.up.len == b.up.len && memcmp(a.up.data, b.up.data, a.up.len) == 0);
		FUZZ_ASSERT(a.down.len == b.down.len && memcmp(a.down.data, b.down.data, a.down.len) == 0);
		a.pre = b.pre = a.init = b.init = a.up.data = b.up.data = a.down.data = b.down.data = NULL;
		FUZZ_ASSERT(memcmp(&a, &b, sizeof(a)) == 0);
	}
	evfdd_carry_close(st2);
}

static void run(const uint8_t *data, size_t size)
{
	static const uint8_t none[1];
	struct evfdd_carry_state *st = (struct evfdd_carry_state *)1;
	char why[256] = "untouched";
	int fd = seal_bytes(size ? data : none, size), r;

	FUZZ_ASSERT(fd >= 0);
	FUZZ_ASSERT(evfdd_carry_is_state(fd) == (size >= 8 && memcmp(data, carry_magic, 8) == 0));
	r = evfdd_carry_open(fd, &st, why, sizeof(why));
	close(fd);
	FUZZ_ASSERT(r == 0 || r == -EPROTO || r == -EPROTONOSUPPORT);
	if (r < 0) {
		FUZZ_ASSERT(st == NULL);
		FUZZ_ASSERT(why[0] != '\0' && strcmp(why, "untouched") != 0 && strlen(why) < sizeof(why));
		return;
	}
	check_state(st);
	check_rewrite(st);
	evfdd_carry_close(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *mended;
	uint64_t v;

	if (size > FUZZ_MAX)
		return 0;
	run(data, size);
	if (size < HDR_LEN)
		return 0;
	/* the same with its payload length and checksum right */
	mended = malloc(size);
	FUZZ_ASSERT(mended);
	memcpy(mended, data, size);
	v = htole64(size - HDR_LEN);
	memcpy(mended + 16, &v, 8);
	v = htole64(carry_checksum(mended + HDR_LEN, size - HDR_LEN));
	memcpy(mended + 24, &v, 8);
	if (memcmp(mended, data, size) != 0)
		run(mended, size);
	free(mended);
	return 0;
}

#ifndef EVFDD_FUZZING
int main(int argc, char **argv)
{
	int total = fuzz_corpus_run("carry", argc, argv);

	if (total < 0)
		return 1;
	printf("fuzz-carry: %d inputs, no crash\n", total);
	return 0;
}
#endif
