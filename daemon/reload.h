/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Applying a configuration to the data plane: at start-up, and on every reload. Main thread only.
 *
 * A reload parses the file (config.c has no side effects), prepares what can fail (listeners bound, loops
 * spawned, rings created) and only then commits: rings accept on the new services, surplus rings drain,
 * rings move so that they are spread evenly, surplus loops retire. Connections keep the service they started
 * with. Nothing waits for in-flight I/O. The outcome is a struct evfdd_reload_result: what changed, or every
 * error with its file and line. This module decides nothing about when a reload runs (evfdd.c does) and
 * says nothing to systemd or the control socket (evfdd.c and inspect.c turn the result into those).
 */
#ifndef EVFDD_RELOAD_H
#define EVFDD_RELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "iofeatures.h"
#include "listen.h"
#include "relay.h"
#include "workers.h"

/* The data plane a configuration is applied to. evfdd.c owns it; reload.c changes it. */
struct evfdd_plane {
	const char *config_path;         /* what a reload reads */
	bool explicit_path;              /* -c given: the file must exist */
	struct evfdd_config *cfg;        /* in force */
	struct evfdd_listen *listen;
	struct evfdd_relay_service *svcs;   /* in force: one reference each */
	unsigned nsvcs;
	struct evfdd_workers *workers;
	struct evfdd_features features;  /* what the data plane uses of io_uring (probed at start-up) */
	bool carried;                    /* connections of the previous image wait to be adopted: rings start
					  * under load */
};

struct evfdd_reload_error {
	char *file;                      /* NULL when the error is not about the file (io_uring, say) */
	unsigned line;                   /* 0 when it concerns the whole file */
	char *message;                   /* one line: "FILE:LINE: [section] key: what; what to do", or the cause */
};

struct evfdd_reload_result {
	bool ok;
	uint64_t time_usec;              /* when it finished: CLOCK_REALTIME */
	uint64_t duration_usec;
	char *source;                    /* the file read, or "<embedded default>"; NULL if none was parsed */
	unsigned workers_before, workers_after, rings_before, rings_after;
	unsigned added, removed, changed, unchanged;   /* services */
	struct evfdd_reload_error *errors;
	size_t nerrors;
	char *summary;                   /* one line: what changed, or why nothing did */
};

/* Called once a reload has finished, with its result (the callee may keep it: struct copy, then it owns the
 * strings; or leave it to be cleared). */
typedef void (*evfdd_reload_done_fn)(void *arg, struct evfdd_reload_result *r);

/*
 * evfdd_reload_initial - bind @p->cfg's listeners and start its services on a new set of workers
 * @done: runs once the data plane is up, with err < 0 if a ring's relay failed to start
 *
 * Sets @p->workers, also on failure (then possibly with rings to free).
 * Returns 0, or a negative errno with @err saying why (empty when the listeners logged their own errors), in
 * which case @done is not called.
 */
int evfdd_reload_initial(struct evfdd_plane *p, void (*done)(void *arg, int err), void *arg, char *err,
			 size_t errlen);

/*
 * evfdd_reload_run - read the configuration file again and apply it
 * @done: runs with the result once the reload has finished (the new rings started, the moves made); with a
 *        file that has errors or cannot be applied it runs before this returns, and nothing changed
 *
 * Only one at a time: the caller waits for @done before the next.
 */
void evfdd_reload_run(struct evfdd_plane *p, evfdd_reload_done_fn done, void *arg);

/* The service named @name in force, or NULL. */
const struct evfdd_svc *evfdd_reload_service(const struct evfdd_plane *p, const char *name);

/* Free a result's strings and zero it. */
void evfdd_reload_result_clear(struct evfdd_reload_result *r);

/* At exit: drop the services' references (the listeners and workers are their owners' to free). */
void evfdd_reload_plane_clear(struct evfdd_plane *p);

#endif
