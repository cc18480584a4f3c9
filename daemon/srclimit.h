/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Open connections per source (max_connections_per_source): a table from source key (addr.h: an IPv4
 * address, an IPv6 /64) to a count, shared by every ring of a service and kept across reloads with the
 * service's stats, so that a reload neither forgets open connections nor lets a source open its limit again.
 *
 * The table is split into shards, each with its own mutex and hash table, the shard chosen by a hash keyed
 * with a per-table random seed: sources an attacker picks cannot be made to collide in one shard or one
 * chain. A mutex is held only for a lookup and an update; an entry is freed when its count drops to zero, so
 * memory follows the sources connected now, not every source ever seen. A shard's hash table grows as its
 * entries do and shrinks again when most of them have gone.
 */
#ifndef EVFDD_SRCLIMIT_H
#define EVFDD_SRCLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "addr.h"

struct evfdd_srclimit;

/* evfdd_srclimit_new - an empty table. Returns NULL when out of memory. */
struct evfdd_srclimit *evfdd_srclimit_new(void);

/* evfdd_srclimit_free - free @t and every entry left in it (connections still counted are forgotten). NULL is
 * a no-op. No other thread may use @t any more. */
void evfdd_srclimit_free(struct evfdd_srclimit *t);

/*
 * evfdd_srclimit_take - count one more connection from @k unless @max are open from it already
 *
 * Returns true when the connection was counted: the caller must then call evfdd_srclimit_give once, when
 * it ends. False when @max are open already, or when a new entry could not be allocated (-ENOMEM: the
 * connection is refused rather than let past the limit uncounted). @max 0 means no limit (the connection is
 * still counted, so that a reload that sets a limit sees the connections already open). Safe from any
 * thread.
 */
bool evfdd_srclimit_take(struct evfdd_srclimit *t, const struct evfdd_source_key *k, uint32_t max);

/* evfdd_srclimit_give - one connection from @k, counted by a successful evfdd_srclimit_take, has ended;
 * frees the entry at zero. A key with no count (a caller's bug) is ignored. Safe from any thread. */
void evfdd_srclimit_give(struct evfdd_srclimit *t, const struct evfdd_source_key *k);

/* evfdd_srclimit_sources - sources with an open connection. Reads each shard's count without its lock: exact
 * when the table is quiet, a moment's approximation under traffic (for stats). Safe from any thread. */
size_t evfdd_srclimit_sources(struct evfdd_srclimit *t);

#endif
