/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Listening sockets: taken from systemd socket activation by FileDescriptorName=, or bound by evfdd. The set
 * lives on the main thread and changes with each reload: a listener whose address stays is kept (its queue
 * of pending connections is never dropped), a new address is bound, a listener no longer used is closed
 * once the last ring has stopped accepting on it. */
#ifndef EVFDD_LISTEN_H
#define EVFDD_LISTEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "config.h"
#include "safepath.h"

/* One listening socket, shared by every ring that accepts on it. The fd closes with the last reference,
 * except an activated socket's, which belongs to systemd and stays open for the daemon's lifetime. */
struct evfdd_listener {
	atomic_uint refs;
	int fd;
	int file_fd;                     /* self-bound Unix socket: O_PATH of the file bound, for its mode */
	mode_t mode;                     /* ... the mode it was given last */
	mode_t next_mode;                /* ... and the one a reload being prepared asks for (main thread) */
	bool activated;
	bool carried;                    /* self-bound, carried over by an upgrade or a restart: no file_fd */
	char *name;                      /* FileDescriptorName= of an activated socket */
	struct evfdd_endpoint_key {      /* what a self-bound socket is bound to */
		enum evfdd_endpoint_kind kind;
		struct evfdd_sockaddr addr;
		bool v6only;
	} key;
};

struct evfdd_listener *evfdd_listener_ref(struct evfdd_listener *l);
void evfdd_listener_unref(struct evfdd_listener *l);   /* any thread */

struct evfdd_listen;

struct evfdd_inherit;

/* Take the activated sockets the process inherited (@in: systemd's, or what an upgrade passed on), checking
 * them against @cfg: a socket naming no service is an error; and @nbound listening sockets evfdd had bound
 * itself before an upgrade or a restart, kept where the configuration still names their address. Returns 0,
 * or -EINVAL after logging. */
int evfdd_listen_new(struct evfdd_listen **out, const struct evfdd_config *cfg, const struct evfdd_inherit *in,
		     const int *bound, size_t nbound);

/* The activated sockets named "control" and "metrics", or -1. */
int evfdd_listen_control_fd(const struct evfdd_listen *ls);
int evfdd_listen_metrics_fd(const struct evfdd_listen *ls);
/* Every activated socket (control and metrics included) and its name, at most @max of them into @fds and
 * @names: what an upgrade passes on. Returns how many there are (also past @max, as snprintf does). */
size_t evfdd_listen_activated(const struct evfdd_listen *ls, int *fds, const char **names, size_t max);
/* The listening sockets of the current configuration evfdd bound itself, at most @max of them into @fds;
 * returns how many there are. */
size_t evfdd_listen_bound(const struct evfdd_listen *ls, int *fds, size_t max);

/* The listeners @cfg's services need, in service order, one reference each in @out: the activated socket
 * named after the service, else the current listener on the same address, else a socket bound now. Changes
 * nothing on failure: returns -EINVAL after logging every problem, the first also written to @err. */
int evfdd_listen_prepare(struct evfdd_listen *ls, const struct evfdd_config *cfg, struct evfdd_listener **out,
			 char *err, size_t errlen);

/* Make @lsts (as returned by evfdd_listen_prepare, @n of them) the current set; takes references of its
 * own, drops those of listeners no longer used, and gives a kept Unix listener the socket_mode prepared. */
void evfdd_listen_commit(struct evfdd_listen *ls, struct evfdd_listener *const *lsts, size_t n);

void evfdd_listen_free(struct evfdd_listen *ls);

/* Make way for binding a Unix socket at @sp (safepath_open'ed): a socket file left by an earlier process that
 * nothing answers on any more is removed (*@replaced set); nothing else is ever removed. Returns 0 when the
 * name is free now, -EADDRINUSE when a process answers there, -EEXIST when the file is not a socket (*@st
 * says what it is), -EPERM (with @err) when it is another user's in a sticky directory, or another negative
 * errno. Logs nothing. */
int evfdd_listen_unix_clear(const struct safepath *sp, bool *replaced, struct stat *st, char *err,
			    size_t errlen);

#endif
