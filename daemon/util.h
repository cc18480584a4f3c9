/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The few helpers every part of evfdd and evfdctl shares: clocks and growing arrays. Safe from any thread.
 *
 * The daemon's error convention (ARCHITECTURE.md): a function that can fail returns 0 (or a count, or an fd)
 * on success and a negative errno on failure, as libevfd does; the function that decides an error is final
 * logs it, once, naming what failed and what to do, and its callers do not log it again. Running out of
 * memory for the main thread's own bookkeeping (plans, messages to the loops), which leaves no way to carry
 * on correctly, is fatal (fatalx); on the data path it costs only the connection concerned.
 */
#ifndef EVFDD_UTIL_H
#define EVFDD_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* @clock (CLOCK_MONOTONIC, CLOCK_REALTIME...) now, in nanoseconds or microseconds. */
uint64_t util_now_ns(clockid_t clock);
uint64_t util_now_us(clockid_t clock);

/*
 * util_grow - make room for @need elements of @size bytes in the array *@arr of capacity *@cap
 *
 * The capacity at least doubles, so that appending one at a time costs amortised O(1). Returns 0, or -ENOMEM
 * with *@arr and *@cap unchanged.
 */
int util_grow(void **arr, size_t *cap, size_t need, size_t size);

#endif
