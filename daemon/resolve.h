/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Re-resolving backend names (evfdd.conf(5), resolve_interval). Every resolve_interval, each backend of a
 * service that asks for it and is written as a name gets a lookup on a short-lived thread of its own, so that
 * a slow DNS server never holds up a loop; the addresses found replace the backend's (backend.h), and a
 * failed lookup keeps the old ones. Timers run on the main loop; main thread only.
 */
#ifndef EVFDD_RESOLVE_H
#define EVFDD_RESOLVE_H

#include <ev.h>
#include "relay.h"

struct evfdd_resolve;

int evfdd_resolve_new(struct evfdd_resolve **out, struct ev_loop *ev);   /* 0 or -ENOMEM */

/* Re-resolve the names of @svcs that ask for it from now on (after start-up and every reload); a backend
 * still listed keeps its schedule. Returns 0 or -ENOMEM (logged: those names stay as loaded). */
int evfdd_resolve_apply(struct evfdd_resolve *r, const struct evfdd_relay_service *svcs, unsigned n);

/* Stop the timers. A lookup under way finishes on its own thread, which holds what it needs. */
void evfdd_resolve_free(struct evfdd_resolve *r);

#endif
