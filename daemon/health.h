/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Active health checks (evfdd.conf(5), health_check): every health_interval, each backend of a service that
 * asks for checks gets a connect, optionally a send and an expected reply, through an io_uring ring of the
 * main loop's own, so that no check ever blocks a loop or touches a worker's ring. A check's outcome moves
 * the backend's health (backend.h) after rise passes or fall failures in a row. Main thread only.
 */
#ifndef EVFDD_HEALTH_H
#define EVFDD_HEALTH_H

#include "evfd.h"
#include "relay.h"

struct evfdd_health;

/* Checks run on @main (evfdd's main loop). Returns 0 or -ENOMEM. The ring is made when a first check needs
 * it. */
int evfdd_health_new(struct evfdd_health **out, struct evfd_loop *main);

/*
 * evfdd_health_apply - check the backends of @svcs that ask for it, from now on
 *
 * Called after start-up and after every reload that changed something: a backend still checked keeps its
 * schedule and its streak of passes or failures (it is the same struct evfdd_backend) and follows its
 * service's new settings; checks of backends no longer listed, or of services that no longer ask for them,
 * stop. Returns 0, or a negative errno when the ring cannot be made (logged; backends keep passive health).
 */
int evfdd_health_apply(struct evfdd_health *h, const struct evfdd_relay_service *svcs, unsigned n);

/* Stop every check, and call @done(@arg) once nothing is in flight and the ring is gone (perhaps before this
 * returns). */
void evfdd_health_stop(struct evfdd_health *h, void (*done)(void *), void *arg);

/* After evfdd_health_stop's @done, or when no check ever ran. */
void evfdd_health_free(struct evfdd_health *h);

#endif
