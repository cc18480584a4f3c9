/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The Prometheus endpoint over libmicrohttpd; see metrics.h. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "listen.h"
#include "log.h"
#include "metrics.h"
#include "safepath.h"

#define METRICS_SOCKET_MODE 0660
#define METRICS_MAX_CLIENTS 64          /* scrapers are few; a flood of connections gets no more */
#define METRICS_CLIENT_TIMEOUT_S 10     /* a client that sends nothing for this long is closed */

struct evfdd_metrics {
	struct ev_loop *ev;
	struct MHD_Daemon *mhd;
	ev_io io;                        /* MHD's epoll descriptor */
	ev_timer timer;                  /* MHD's next timeout */
	struct safepath sp;              /* a Unix socket bound here */
	int file_fd;                     /* ... its O_PATH, to remove it at exit if it is still ours */
	evfdd_metrics_text_fn text;
	void *arg;
};

/*
 * libmicrohttpd, loaded when the first endpoint starts rather than linked. Its constructor initialises
 * GnuTLS (and with it libtasn1, nettle, gmp, p11-kit and more) although evfdd serves no TLS: measured, 2.6 ms
 * of CPU at every start of evfdd, more than half of its start-up. An upgrade's connections wait for the new
 * image's start-up, and an evfdd without metrics = should not pay it at all.
 */
static struct {
	void *lib;
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_run) *run;
	__typeof__(MHD_get_timeout) *get_timeout;
	__typeof__(MHD_get_daemon_info) *get_daemon_info;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
} mhd;

/* Loads libmicrohttpd once (main thread only). Returns 0, or -ENOENT after logging what to do. */
static int metrics_load_mhd(void)
{
	void *lib;

	if (mhd.lib)
		return 0;
	lib = dlopen(EVFDD_MHD_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		log_errx("metrics: cannot load %s (%s); install libmicrohttpd, or remove metrics = from [evfdd]",
			 EVFDD_MHD_SONAME, dlerror());
		return -ENOENT;
	}
#define MHD_SYM(field, name) \
	if (!(*(void **)&mhd.field = dlsym(lib, name))) \
		goto missing;
	MHD_SYM(start_daemon, "MHD_start_daemon")
	MHD_SYM(stop_daemon, "MHD_stop_daemon")
	MHD_SYM(run, "MHD_run")
	MHD_SYM(get_timeout, "MHD_get_timeout")
	MHD_SYM(get_daemon_info, "MHD_get_daemon_info")
	MHD_SYM(create_response_from_buffer, "MHD_create_response_from_buffer")
	MHD_SYM(add_response_header, "MHD_add_response_header")
	MHD_SYM(queue_response, "MHD_queue_response")
	MHD_SYM(destroy_response, "MHD_destroy_response")
#undef MHD_SYM
	mhd.lib = lib;   /* never unloaded: its destructor would run at exit anyway */
	return 0;
missing:
	log_errx("metrics: %s lacks a function evfdd needs (%s); install libmicrohttpd 0.9.71 or later",
		 EVFDD_MHD_SONAME, dlerror());
	dlclose(lib);
	return -ENOENT;
}

static void metrics_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_warnx("metrics: %s", msg);
}

static enum MHD_Result metrics_reply(struct MHD_Connection *conn, unsigned status, const char *body,
				     const char *allow)
{
	struct MHD_Response *r = mhd.create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	mhd.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	if (allow)
		mhd.add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	ret = mhd.queue_response(conn, status, r);
	mhd.destroy_response(r);
	return ret;
}

static enum MHD_Result metrics_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				       const char *version, const char *upload_data, size_t *upload_data_size,
				       void **con_cls)
{
	struct evfdd_metrics *m = cls;
	struct MHD_Response *r;
	enum MHD_Result ret;
	size_t len = 0;
	char *text;

	if (strcmp(url, "/metrics") != 0)
		return metrics_reply(conn, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n", NULL);
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return metrics_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n", "GET, HEAD");
	text = m->text(m->arg, &len);
	if (!text)
		return metrics_reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n", NULL);
	r = mhd.create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	mhd.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
	ret = mhd.queue_response(conn, MHD_HTTP_OK, r);
	mhd.destroy_response(r);
	return ret;
}

/* After MHD has run: when it next wants to run by itself (a client's timeout). */
static void metrics_rearm(struct evfdd_metrics *m)
{
	MHD_UNSIGNED_LONG_LONG ms;

	ev_timer_stop(m->ev, &m->timer);
	if (mhd.get_timeout(m->mhd, &ms) == MHD_YES) {
		ev_timer_set(&m->timer, (double)ms / 1000.0, 0.);
		ev_timer_start(m->ev, &m->timer);
	}
}

static void metrics_io_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct evfdd_metrics *m = w->data;

	mhd.run(m->mhd);
	metrics_rearm(m);
}

static void metrics_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct evfdd_metrics *m = w->data;

	mhd.run(m->mhd);
	metrics_rearm(m);
}

/* A listening socket at @ep; -1 after logging. */
static int metrics_bind(struct evfdd_metrics *m, const struct evfdd_endpoint *ep)
{
	const struct evfdd_sockaddr *a = &ep->addrs[0];
	char why[1024];
	struct stat st;
	bool replaced;
	int fd, r, one = 1, v6only = ep->v6only;

	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		log_err("metrics %s: socket", ep->text);
		return -1;
	}
	if (ep->kind == EVFDD_ENDPOINT_INET) {
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (a->u.sa.sa_family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
		if (bind(fd, &a->u.sa, a->len) < 0) {
			log_err("metrics %s: bind%s", ep->text,
				errno == EADDRINUSE ? "; is another evfdd or server running there? set another "
				"address with metrics = in [evfdd]" : "");
			goto fail;
		}
	} else {
		r = safepath_open(&m->sp, a->u.un.sun_path, 0, why, sizeof(why));
		if (r == 0) {
			r = evfdd_listen_unix_clear(&m->sp, &replaced, &st, why, sizeof(why));
			if (r == -EADDRINUSE)
				snprintf(why, sizeof(why), "another process answers there; is another evfdd running?");
			else if (r == -EEXIST)
				snprintf(why, sizeof(why), "it is a %s, not a socket; evfdd will not remove it",
					 safepath_type_name(st.st_mode));
			else if (r < 0 && r != -EPERM)
				snprintf(why, sizeof(why), "%s", strerror(-r));
		}
		if (r == 0) {
			r = safepath_bind(&m->sp, fd, METRICS_SOCKET_MODE, &m->file_fd);
			if (r < 0)
				snprintf(why, sizeof(why), "bind: %s", strerror(-r));
		}
		if (r < 0) {
			log_errx("metrics %s: %s", ep->text, why);
			goto fail;
		}
	}
	if (listen(fd, SOMAXCONN) < 0) {
		log_err("metrics %s: listen", ep->text);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

int evfdd_metrics_start(struct evfdd_metrics **out, struct ev_loop *ev, int fd, const struct evfdd_endpoint *ep,
			evfdd_metrics_text_fn text, void *arg)
{
	struct evfdd_metrics *m = calloc(1, sizeof(*m));
	const union MHD_DaemonInfo *info;
	bool activated = fd >= 0;

	*out = NULL;
	if (!m) {
		log_errx("metrics: out of memory");
		if (activated)
			close(fd);
		return -ENOMEM;
	}
	m->ev = ev;
	m->text = text;
	m->arg = arg;
	m->sp = (struct safepath)SAFEPATH_INIT;
	m->file_fd = -1;
	if (metrics_load_mhd() < 0) {
		if (activated)
			close(fd);
		goto fail;
	}
	if (activated)
		(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	else
		fd = metrics_bind(m, ep);
	if (fd < 0)
		goto fail;
	/* No thread of MHD's own: external mode with its epoll descriptor, watched here. MHD takes the fd. */
	m->mhd = mhd.start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, metrics_request, m,
				  MHD_OPTION_EXTERNAL_LOGGER, metrics_log, m,   /* first, or MHD logs before it */
				  MHD_OPTION_LISTEN_SOCKET, fd,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MAX_CLIENTS,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)METRICS_CLIENT_TIMEOUT_S,
				  MHD_OPTION_END);
	if (!m->mhd) {
		log_errx("metrics: libmicrohttpd would not start on %s", activated ? "the activated socket" : ep->text);
		goto fail;   /* it closed the socket */
	}
	info = mhd.get_daemon_info(m->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	if (!info) {
		log_errx("metrics: libmicrohttpd has no epoll descriptor");
		goto fail;
	}
	ev_io_init(&m->io, metrics_io_cb, info->epoll_fd, EV_READ);
	m->io.data = m;
	ev_io_start(ev, &m->io);
	ev_init(&m->timer, metrics_timer_cb);
	m->timer.data = m;
	if (activated)
		log_info("metrics: using the activated socket (fd %d)", fd);
	else if (ep->kind == EVFDD_ENDPOINT_INET)
		log_info("metrics: http://%s/metrics", ep->text);
	else
		log_info("metrics: GET /metrics on the Unix socket %s", ep->text);
	*out = m;
	return 0;
fail:
	evfdd_metrics_free(m);
	return -EINVAL;
}

void evfdd_metrics_free(struct evfdd_metrics *m)
{
	struct stat st;

	if (!m)
		return;
	if (m->mhd) {
		ev_io_stop(m->ev, &m->io);
		ev_timer_stop(m->ev, &m->timer);
		mhd.stop_daemon(m->mhd);
	}
	/* Only the file we bound, and only if a newer instance has not replaced it since. */
	if (m->file_fd >= 0 && fstat(m->file_fd, &st) == 0)
		safepath_unlink(&m->sp, &st);
	if (m->file_fd >= 0)
		close(m->file_fd);
	safepath_close(&m->sp);
	free(m);
}
