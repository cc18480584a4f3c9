/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control socket: Varlink over a Unix stream socket (daemon/io.evfdd.varlink is the interface). This
 * module is transport and dispatch only; what each method does is a core function of the daemon, reached
 * through struct evfdd_control_ops. Everything here runs on the daemon's main libev loop; no data-plane
 * loop is ever touched or waited for by the control socket.
 */
#ifndef EVFDD_CONTROL_H
#define EVFDD_CONTROL_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-c/json.h>

struct evfdd_control;

/* The answer to an asynchronous method, on the main loop. @error NULL: success, @params the reply's
 * parameters. Otherwise @error is a Varlink error name (e.g. "io.evfdd.NoSuchRing") and @params its
 * parameters. Takes ownership of @params (may be NULL for {}). Called exactly once per request. */
typedef void (*evfdd_control_done_fn)(void *cookie, const char *error, struct json_object *params);

struct evfdd_control_ops {
	/* The reply parameters of Status, Loops, Rings, Services and Metrics as a new object; NULL when out of
	 * memory. */
	struct json_object *(*status)(void *arg);
	struct json_object *(*loops)(void *arg);
	struct json_object *(*rings)(void *arg);
	struct json_object *(*services)(void *arg);
	struct json_object *(*metrics)(void *arg);   /* Metrics: {"text": the exposition} */
	/* MoveRing and Reload: @done runs later (or at once, for an immediate error), exactly once. */
	void (*move)(void *arg, uint64_t ring, uint64_t loop, evfdd_control_done_fn done, void *cookie);
	void (*reload)(void *arg, evfdd_control_done_fn done, void *cookie);
	/* Upgrade: answered once the new binary passed its check (or was refused), before the hand-over. */
	void (*upgrade)(void *arg, evfdd_control_done_fn done, void *cookie);
	/* Backends: @service NULL for every service. SetBackendState: @drain or enable, asked by @uid. Both
	 * answer through @done before they return. */
	void (*backends)(void *arg, const char *service, evfdd_control_done_fn done, void *cookie);
	void (*set_backend)(void *arg, const char *service, const char *backend, bool drain, uid_t uid,
			    evfdd_control_done_fn done, void *cookie);
};

/*
 * evfdd_control_start - serve the control socket on @ev
 * @fd: an activated listening socket (named "control"), or -1 to bind @path
 * @path: used when @fd < 0: bound with mode 0660 exactly (whatever the umask); missing directories are
 *        created with mode 0755; every directory from / down must belong to root or evfdd's euid and be
 *        writable by no one else (safepath.h), else -EPERM; a stale socket file there is replaced; if
 *        another process answers there, nothing is bound and -EADDRINUSE is returned
 *
 * Returns 0 or a negative errno, after logging what went wrong and what to do.
 */
int evfdd_control_start(struct evfdd_control **out, struct ev_loop *ev, int fd, const char *path,
			const struct evfdd_control_ops *ops, void *arg);

/* Close the socket and every client (unlinking a socket file it bound). Requests still waiting for their
 * done callback are answered into the void: their cookies stay valid until then. */
void evfdd_control_free(struct evfdd_control *c);

/* Serve @fd, a connected stream socket, as a client with the credentials @uid and @pid
 * (varlink_server_adopt): for tests/fuzz-varlink.c, which calls the methods through a socketpair. Takes
 * @fd. Returns 0, -EUSERS (a client limit refused it) or -ENOMEM. */
int evfdd_control_adopt(struct evfdd_control *c, int fd, uid_t uid, pid_t pid);

/* The default control socket path: $RUNTIME_DIRECTORY/control under systemd, /run/evfdd/control for root,
 * else $XDG_RUNTIME_DIR/evfdd/control (or /tmp/evfdd-UID/control). Shared by evfdd and evfdctl.
 * Returns a malloc'd string, or NULL when out of memory. */
char *evfdd_control_default_path(void);

#endif
