/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "addr.h"
#include "handover.h"
#include "listen.h"
#include "log.h"

struct evfdd_listen {
	struct evfdd_listener **activated;   /* every activated socket but control and metrics, for the daemon's
					      * lifetime */
	size_t nactivated;
	struct evfdd_listener **cur;         /* the listeners the current configuration uses */
	size_t ncur;
	int control_fd, metrics_fd;          /* activated, or -1 */
};

#define CONTROL_FD_NAME "control"
#define METRICS_FD_NAME "metrics"

int evfdd_listen_unix_clear(const struct safepath *sp, bool *replaced, struct stat *st, char *err,
			    size_t errlen)
{
	int fd, r;

	*replaced = false;
	r = safepath_stat(sp, st, err, errlen);
	if (r < 0)
		return r == -ENOENT ? 0 : r;
	if (!S_ISSOCK(st->st_mode))
		return -EEXIST;
	/* Non-blocking: a live server with a full backlog answers EAGAIN instead of holding us up. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = safepath_connect(sp, fd, err, errlen);
	close(fd);
	if (r == 0 || r == -EAGAIN)
		return -EADDRINUSE;
	if (r != -ECONNREFUSED)
		return r == -ENOENT ? 0 : r;
	/* Only the socket file looked at: whatever took its place meanwhile stays. */
	r = safepath_unlink(sp, st);
	if (r == -ESTALE)
		return -EADDRINUSE;
	if (r < 0 && r != -ENOENT)
		return r;
	*replaced = true;
	return 0;
}

/*
 * listen_bind_unix - bind @fd at @svc's Unix listen path, for listen_bind
 * @file_fd: receives an O_PATH descriptor of the socket file, to change its mode on a reload
 * @why: receives what went wrong, one line ending in what to do
 *
 * The directories are checked first (safepath_open): a user other than root and evfdd's own who could
 * change one of them could swap the socket for a link to a file of root's. A stale socket file is replaced;
 * nothing else is ever removed. The file is created with socket_mode exactly. Returns 0 or a negative errno.
 */
static int listen_bind_unix(const struct evfdd_service *svc, int fd, int *file_fd, char *why, size_t whylen)
{
	struct safepath sp;
	struct stat st;
	bool replaced;
	int r;

	r = safepath_open(&sp, svc->listen.addrs[0].u.un.sun_path, 0, why, whylen);
	if (r < 0)
		goto out;
	r = evfdd_listen_unix_clear(&sp, &replaced, &st, why, whylen);
	switch (r) {
	case 0:
		if (replaced)
			log_info("[%s] replacing stale socket %s", svc->name, sp.path);
		break;
	case -EEXIST:
		snprintf(why, whylen, "%s is a %s, not a socket; evfdd will not remove it: remove or move it "
			 "yourself, or choose another listen path", sp.path, safepath_type_name(st.st_mode));
		goto out;
	case -EADDRINUSE:
		snprintf(why, whylen, "another process answers on the socket %s; is another evfdd or server "
			 "running there? stop it or choose another listen path", sp.path);
		goto out;
	case -EPERM:
		goto out;	/* @why says whose file it is */
	default:
		snprintf(why, whylen, "cannot tell whether the socket file %s is in use: %s; remove it if it is "
			 "stale", sp.path, strerror(-r));
		goto out;
	}
	r = safepath_bind(&sp, fd, svc->socket_mode, file_fd);
	if (r < 0)
		snprintf(why, whylen, "bind: %s%s", strerror(-r), r == -EADDRINUSE ?
			 "; something was created there just now: is another evfdd or server starting?" : "");
out:
	safepath_close(&sp);
	return r;
}

/* A new listening socket for @svc; -1 after logging, with @why saying what went wrong for the caller. */
static int listen_bind(const struct evfdd_service *svc, int *file_fd, char *why, size_t whylen)
{
	const struct evfdd_sockaddr *a = &svc->listen.addrs[0];
	int fd, r, one = 1, v6only = svc->listen.v6only;

	*file_fd = -1;
	/* Blocking on purpose: io_uring's accept waits by polling either way, and a non-blocking listener
	 * would be handed -EAGAIN instead. */
	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		goto fail;
	}
	if (svc->listen.kind == EVFDD_ENDPOINT_INET) {
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (a->u.sa.sa_family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
		if (bind(fd, &a->u.sa, a->len) < 0) {
			snprintf(why, whylen, "bind: %s%s", strerror(errno), errno == EADDRINUSE ?
				 "; is another evfdd or server running there?" : "");
			goto fail;
		}
	} else {
		r = listen_bind_unix(svc, fd, file_fd, why, whylen);
		if (r < 0)
			goto fail;
	}
	if (listen(fd, svc->backlog) < 0) {
		snprintf(why, whylen, "listen: %s", strerror(errno));
		goto fail;
	}
	return fd;
fail:
	log_errx("[%s] listen %s (line %u of the configuration): %s", svc->name, svc->listen.text, svc->line, why);
	if (*file_fd >= 0)
		close(*file_fd);
	*file_fd = -1;
	if (fd >= 0)
		close(fd);
	return -1;
}

/* A kept Unix listener takes a changed socket_mode when its configuration is committed (a reload that fails
 * changes nothing): applied to the inode evfdd bound (file_fd), never to whatever the path names now, which
 * only evfdd and root could have changed but need not be its socket. */
static void listen_apply_mode(struct evfdd_listener *l)
{
	const char *path = l->key.addr.u.un.sun_path;
	int r;

	if (l->carried && l->key.kind == EVFDD_ENDPOINT_UNIX && l->mode != l->next_mode) {
		/* The first configuration after the hand-over is taken for what the file has: the previous
		 * image gave it that mode, unless the file changed since (evfdd(8) says so). */
		if (l->mode != (mode_t)-1)
			log_warnx("listen %s: socket_mode %04o is not applied: this socket came over from the previous "
				  "evfdd, which hands on no handle on its file, and evfdd changes no mode through a path; "
				  "it keeps its mode until evfdd is stopped and started", path, (unsigned)l->next_mode);
		l->mode = l->next_mode;
		return;
	}
	if (l->file_fd < 0 || l->mode == l->next_mode)
		return;
	r = safepath_chmod_fd(l->file_fd, l->next_mode);
	if (r < 0) {
		errno = -r;
		log_warn("listen %s: cannot change the socket's mode from %04o to %04o; it keeps %04o until evfdd "
			 "restarts", path, (unsigned)l->mode, (unsigned)l->next_mode, (unsigned)l->mode);
		l->next_mode = l->mode;
		return;
	}
	log_info("listen %s: socket mode %04o -> %04o", path, (unsigned)l->mode, (unsigned)l->next_mode);
	l->mode = l->next_mode;
}

static bool is_stream_listener(int fd)
{
	int type = 0, acc = 0;
	socklen_t len = sizeof(type);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM)
		return false;
	len = sizeof(acc);
	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc;
}

struct evfdd_listener *evfdd_listener_ref(struct evfdd_listener *l)
{
	atomic_fetch_add(&l->refs, 1);
	return l;
}

void evfdd_listener_unref(struct evfdd_listener *l)
{
	if (!l || atomic_fetch_sub(&l->refs, 1) != 1)
		return;
	/* A Unix socket file stays: a later instance replaces it as stale, and removing it here could race
	 * with a reload that binds the same path again. */
	if (l->fd >= 0)
		close(l->fd);
	if (l->file_fd >= 0)
		close(l->file_fd);
	free(l->name);
	free(l);
}

static struct evfdd_listener *listener_new(int fd)
{
	struct evfdd_listener *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	atomic_init(&l->refs, 1);
	l->fd = fd;
	l->file_fd = -1;
	return l;
}

static void key_of(const struct evfdd_service *svc, struct evfdd_endpoint_key *k)
{
	memset(k, 0, sizeof(*k));
	k->kind = svc->listen.kind;
	k->addr = svc->listen.addrs[0];
	k->v6only = svc->listen.v6only;
}

static bool key_equal(const struct evfdd_endpoint_key *a, const struct evfdd_endpoint_key *b)
{
	return a->kind == b->kind && a->v6only == b->v6only && a->addr.len == b->addr.len &&
	       memcmp(&a->addr.u, &b->addr.u, a->addr.len) == 0;
}

/* A listener evfdd had bound itself, carried over by an upgrade or a restart: known by its address, which
 * the configuration's must equal for it to be kept (evfdd_listen_prepare). */
static void listen_adopt_bound(struct evfdd_listen *ls, int fd)
{
	struct evfdd_listener *l = listener_new(fd), **cur;
	char text[EVFDD_ADDR_TEXT_MAX];
	socklen_t len;
	int v6only = 0;

	cur = realloc(ls->cur, (ls->ncur + 1) * sizeof(*cur));
	if (!l || !cur)
		fatalx("out of memory");
	ls->cur = cur;
	len = sizeof(l->key.addr.u);
	if (getsockname(fd, &l->key.addr.u.sa, &len) < 0) {
		log_warn("a listening socket carried over (descriptor %d) has no address; closing it", fd);
		evfdd_listener_unref(l);
		return;
	}
	l->key.addr.len = len;
	l->key.kind = l->key.addr.u.sa.sa_family == AF_UNIX ? EVFDD_ENDPOINT_UNIX : EVFDD_ENDPOINT_INET;
	l->carried = true;
	l->mode = (mode_t)-1;            /* what the previous evfdd gave its file: not known here */
	evfdd_addr_format(&l->key.addr, text, sizeof(text));
	log_info("taking over the listening socket on %s (descriptor %d) from the previous evfdd", text, fd);
	len = sizeof(v6only);
	if (l->key.addr.u.sa.sa_family == AF_INET6 &&
	    getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0)
		l->key.v6only = v6only != 0;
	ls->cur[ls->ncur++] = l;
}

int evfdd_listen_new(struct evfdd_listen **out, const struct evfdd_config *cfg, const struct evfdd_inherit *in,
		     const int *bound, size_t nbound)
{
	struct evfdd_listen *ls = calloc(1, sizeof(*ls));
	int n = (int)in->nactivated, i, errors = 0;

	if (!ls)
		fatalx("out of memory");
	ls->control_fd = ls->metrics_fd = -1;
	ls->activated = calloc(n > 0 ? (size_t)n : 1, sizeof(*ls->activated));
	if (!ls->activated)
		fatalx("out of memory");
	for (i = 0; i < (int)nbound; i++)
		listen_adopt_bound(ls, bound[i]);
	for (i = 0; i < n; i++) {
		int fd = in->activated[i];
		const char *name = in->names[i];
		struct evfdd_listener *l;
		size_t j;

		if (!strcmp(name, CONTROL_FD_NAME)) {
			ls->control_fd = fd;
			continue;
		}
		if (!strcmp(name, METRICS_FD_NAME)) {
			ls->metrics_fd = fd;
			continue;
		}
		if (!evfdd_config_service(cfg, name)) {
			log_errx("activated socket %d is named \"%s\" (FileDescriptorName=), which names no service in "
				 "%s; add a [%s] section or rename the socket", fd, name, cfg->source, name);
			errors++;
			close(fd);
			continue;
		}
		for (j = 0; j < ls->nactivated; j++)
			if (!strcmp(ls->activated[j]->name, name))
				break;
		if (j < ls->nactivated) {
			log_errx("[%s] several activated sockets carry this name; use one ListenStream= per name",
				 name);
			errors++;
			close(fd);
			continue;
		}
		if (!is_stream_listener(fd)) {
			log_errx("[%s] activated socket %d is not a listening stream socket; use ListenStream=", name,
				 fd);
			errors++;
			close(fd);
			continue;
		}
		/* The same reason as for self-bound listeners: accept by polling, never -EAGAIN. */
		(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
		l = listener_new(fd);
		if (!l || !(l->name = strdup(name)))
			fatalx("out of memory");
		l->activated = true;
		ls->activated[ls->nactivated++] = l;
		log_info("[%s] using activated socket %d", name, fd);
	}
	if (errors) {
		evfdd_listen_free(ls);
		return -EINVAL;
	}
	*out = ls;
	return 0;
}

int evfdd_listen_prepare(struct evfdd_listen *ls, const struct evfdd_config *cfg, struct evfdd_listener **out,
			 char *err, size_t errlen)
{
	int errors = 0;
	char why[1024];
	size_t s, j;

	if (errlen)
		err[0] = 0;
	for (s = 0; s < cfg->nservices; s++)
		out[s] = NULL;
	for (s = 0; s < cfg->nservices; s++) {
		const struct evfdd_service *svc = &cfg->services[s];
		struct evfdd_endpoint_key key;
		int fd, file_fd;

		for (j = 0; j < ls->nactivated && !out[s]; j++)
			if (!strcmp(ls->activated[j]->name, svc->name)) {
				out[s] = evfdd_listener_ref(ls->activated[j]);
			}
		if (out[s])
			continue;
		if (svc->listen.kind == EVFDD_ENDPOINT_NONE) {
			log_errx("[%s] has no activated socket named \"%s\" and no listen address (%s line %u); add "
				 "listen = HOST:PORT or a socket unit with FileDescriptorName=%s", svc->name, svc->name,
				 cfg->source, svc->line, svc->name);
			if (!errors++ && errlen)
				snprintf(err, errlen, "%s:%u: [%s] has no activated socket and no listen address",
					 cfg->source, svc->line, svc->name);
			continue;
		}
		key_of(svc, &key);
		for (j = 0; j < ls->ncur && !out[s]; j++)
			if (!ls->cur[j]->activated && key_equal(&ls->cur[j]->key, &key)) {
				/* Same address: keep the socket and its queue; apply the backlog and mode. */
				out[s] = evfdd_listener_ref(ls->cur[j]);
				if (listen(out[s]->fd, svc->backlog) < 0)
					log_warn("[%s] listen %s: listen(backlog %d)", svc->name, svc->listen.text,
						 svc->backlog);
				out[s]->next_mode = svc->socket_mode;
			}
		/* Two services of one configuration on one address fail to bind below, as they should. */
		if (out[s])
			continue;
		fd = listen_bind(svc, &file_fd, why, sizeof(why));
		if (fd < 0) {
			if (!errors++ && errlen)
				snprintf(err, errlen, "%s:%u: [%s] listen %s: %s", cfg->source, svc->line, svc->name,
					 svc->listen.text, why);
			continue;
		}
		out[s] = listener_new(fd);
		if (!out[s])
			fatalx("out of memory");
		out[s]->key = key;
		out[s]->file_fd = file_fd;
		out[s]->mode = out[s]->next_mode = svc->socket_mode;
		log_info("[%s] listening on %s", svc->name, svc->listen.text);
	}
	if (!errors)
		return 0;
	for (s = 0; s < cfg->nservices; s++) {
		evfdd_listener_unref(out[s]);
		out[s] = NULL;
	}
	return -EINVAL;
}

void evfdd_listen_commit(struct evfdd_listen *ls, struct evfdd_listener *const *lsts, size_t n)
{
	struct evfdd_listener **cur = calloc(n ? n : 1, sizeof(*cur));
	size_t i;

	if (!cur)
		fatalx("out of memory");
	for (i = 0; i < n; i++) {
		cur[i] = evfdd_listener_ref(lsts[i]);
		listen_apply_mode(cur[i]);
	}
	for (i = 0; i < ls->ncur; i++)
		evfdd_listener_unref(ls->cur[i]);
	free(ls->cur);
	ls->cur = cur;
	ls->ncur = n;
}

int evfdd_listen_control_fd(const struct evfdd_listen *ls)
{
	return ls->control_fd;
}

int evfdd_listen_metrics_fd(const struct evfdd_listen *ls)
{
	return ls->metrics_fd;
}

size_t evfdd_listen_activated(const struct evfdd_listen *ls, int *fds, const char **names, size_t max)
{
	size_t n = 0, i;

	if (ls->control_fd >= 0 && n++ < max) {
		fds[n - 1] = ls->control_fd;
		names[n - 1] = CONTROL_FD_NAME;
	}
	if (ls->metrics_fd >= 0 && n++ < max) {
		fds[n - 1] = ls->metrics_fd;
		names[n - 1] = METRICS_FD_NAME;
	}
	for (i = 0; i < ls->nactivated; i++)
		if (n++ < max) {
			fds[n - 1] = ls->activated[i]->fd;
			names[n - 1] = ls->activated[i]->name;
		}
	return n;
}

size_t evfdd_listen_bound(const struct evfdd_listen *ls, int *fds, size_t max)
{
	size_t n = 0, i;

	for (i = 0; i < ls->ncur; i++)
		if (!ls->cur[i]->activated && n++ < max)
			fds[n - 1] = ls->cur[i]->fd;
	return n;
}

void evfdd_listen_free(struct evfdd_listen *ls)
{
	size_t i;

	if (!ls)
		return;
	for (i = 0; i < ls->ncur; i++)
		evfdd_listener_unref(ls->cur[i]);
	for (i = 0; i < ls->nactivated; i++)
		evfdd_listener_unref(ls->activated[i]);
	free(ls->cur);
	free(ls->activated);
	free(ls);
}
