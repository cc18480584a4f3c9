/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Helpers shared by the C tests (libevfd's and the daemon's): failing loudly, skipping honestly, waiting with a
 * deadline, running a function on a loop's thread and waiting for it. */
#ifndef EVFD_TESTUTIL_H
#define EVFD_TESTUTIL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "evfd.h"

#define TU_SKIP 77

/* Fail the whole test process at once, from any thread, naming the place: on tu_fail_fd (standard error
 * unless a test that redirects it saves a copy there). */
#define TU_CHECK(cond, ...)                                                              \
	do {                                                                             \
		if (!(cond))                                                             \
			tu_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                 \
	} while (0)

__attribute__((noreturn, format(printf, 4, 5)))
void tu_fail(const char *file, int line, const char *cond, const char *fmt, ...);
extern int tu_fail_fd;

/* Exit 77 with the reason when this machine cannot run io_uring at all (no kernel support, disabled by
 * sysctl, blocked by seccomp): the only case in which these tests may skip. */
void tu_require_io_uring(void);

/* Iteration counts: EVFD_TEST_SCALE (set by sanitizer builds) divides them, never below @min. */
unsigned long tu_scaled(unsigned long n, unsigned long min);

uint64_t tu_now_ns(void);

/* Wait until *@flag reaches @want or @timeout_ms passes; returns true when reached. */
bool tu_wait_u64(atomic_uint_fast64_t *flag, uint64_t want, unsigned timeout_ms);

/* evfd_ring_new_flags with the flags EVFD_TEST_RING_FLAGS names ("coop": EVFD_RING_COOP_TASKRUN; unset or
 * empty: none), so that the tests of moving rings run on every kind of ring (make check runs them both ways).
 * Fails the test on an unknown name. */
int tu_ring_new(struct evfd_ring **out, struct evfd_loop *owner, const struct evfd_ring_params *p);

/* Run @fn(@loop, @arg) on @loop's thread and wait for it to return. */
void tu_run_on(struct evfd_loop *loop, evfd_loop_fn fn, void *arg);

/* Raise RLIMIT_NOFILE's soft limit to at least @want (up to the hard limit); returns the new soft limit. */
unsigned long tu_raise_nofile(unsigned long want);

/* A TCP listener on 127.0.0.1 with an ephemeral port; *port receives it. */
int tu_listen_tcp(uint16_t *port);
/* A blocking client connection to 127.0.0.1:@port. */
int tu_connect_tcp(uint16_t port);

#endif
