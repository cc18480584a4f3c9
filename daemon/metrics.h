/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The Prometheus endpoint: HTTP on one listening socket (TCP or Unix), served by libmicrohttpd on the daemon's
 * main libev loop. MHD runs without threads of its own (external mode, with its epoll descriptor watched by an
 * ev_io and its timeout by an ev_timer), so no worker loop ever serves HTTP. This module is transport only:
 * what a scrape returns comes from a callback (prometheus.c). Main thread only.
 */
#ifndef EVFDD_METRICS_H
#define EVFDD_METRICS_H

#include <ev.h>
#include <stddef.h>
#include "config.h"

struct evfdd_metrics;

/* The exposition text, malloc'd (*@len bytes), or NULL when out of memory. */
typedef char *(*evfdd_metrics_text_fn)(void *arg, size_t *len);

/*
 * evfdd_metrics_start - serve GET /metrics on @ev
 * @fd: an activated listening socket (named "metrics"), or -1 to bind @ep
 * @ep: used when @fd < 0: a TCP address, or a Unix socket path bound with mode 0660 after the checks of
 *      safepath.h (every directory from / root's or evfdd's, writable by no one else; a stale socket file is
 *      replaced)
 *
 * Returns 0 or a negative errno, after logging what went wrong and what to do.
 */
int evfdd_metrics_start(struct evfdd_metrics **out, struct ev_loop *ev, int fd, const struct evfdd_endpoint *ep,
			evfdd_metrics_text_fn text, void *arg);

/* Close the socket and every client connection. */
void evfdd_metrics_free(struct evfdd_metrics *m);

#endif
