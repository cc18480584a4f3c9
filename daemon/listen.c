/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include "listen.h"
#include "log.h"

#define CONTROL_FD_NAME "control"

/* A Unix socket file left by a previous instance: replace it, unless something still answers there. */
static bool unix_path_stale(const struct evfdd_sockaddr *a)
{
	struct stat st;
	int fd, r;

	if (lstat(a->u.un.sun_path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return false;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false;
	r = connect(fd, &a->u.sa, a->len);
	close(fd);
	return r < 0 && errno == ECONNREFUSED;
}

static int listen_bind(const struct evfdd_service *svc)
{
	const struct evfdd_sockaddr *a = &svc->listen.addrs[0];
	int fd, one = 1, v6only = svc->listen.v6only;

	/* Blocking on purpose: io_uring's accept waits by polling either way, and a non-blocking listener
	 * would be handed -EAGAIN instead. */
	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		log_err("[%s] listen %s: socket", svc->name, svc->listen.text);
		return -1;
	}
	if (svc->listen.kind == EVFDD_ENDPOINT_INET) {
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (a->u.sa.sa_family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
	} else if (unix_path_stale(a)) {
		log_info("[%s] replacing stale socket %s", svc->name, a->u.un.sun_path);
		unlink(a->u.un.sun_path);
	}
	if (bind(fd, &a->u.sa, a->len) < 0) {
		log_err("[%s] listen %s: bind (line %u of the configuration)%s", svc->name, svc->listen.text,
			svc->line, errno == EADDRINUSE ? "; is another evfdd or server running there?" : "");
		goto fail;
	}
	if (svc->listen.kind == EVFDD_ENDPOINT_UNIX && chmod(a->u.un.sun_path, svc->socket_mode) < 0) {
		log_err("[%s] listen %s: chmod %o", svc->name, svc->listen.text, (unsigned)svc->socket_mode);
		goto fail;
	}
	if (listen(fd, svc->backlog) < 0) {
		log_err("[%s] listen %s: listen", svc->name, svc->listen.text);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
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

int evfdd_listen_setup(const struct evfdd_config *cfg, int *fds, int *control_fd)
{
	char **names = NULL;
	int n, i, errors = 0;
	size_t s;

	*control_fd = -1;
	for (s = 0; s < cfg->nservices; s++)
		fds[s] = -1;
	/* Unset the environment so that nothing evfdd starts inherits the activation. */
	n = sd_listen_fds_with_names(1, &names);
	if (n < 0) {
		log_errx("socket activation: %s", strerror(-n));
		n = 0;
	}
	for (i = 0; i < n; i++) {
		int fd = SD_LISTEN_FDS_START + i;
		const char *name = names && names[i] ? names[i] : "unknown";
		const struct evfdd_service *svc;

		if (!strcmp(name, CONTROL_FD_NAME)) {
			*control_fd = fd;
			continue;
		}
		svc = evfdd_config_service(cfg, name);
		if (!svc) {
			log_errx("activated socket %d is named \"%s\" (FileDescriptorName=), which names no service in "
				 "%s; add a [%s] section or rename the socket", fd, name, cfg->source, name);
			errors++;
			close(fd);
			continue;
		}
		s = (size_t)(svc - cfg->services);
		if (fds[s] >= 0) {
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
		fds[s] = fd;
		log_info("[%s] using activated socket %d", name, fd);
	}
	for (i = 0; names && i < n; i++)
		free(names[i]);
	free(names);

	for (s = 0; s < cfg->nservices; s++) {
		const struct evfdd_service *svc = &cfg->services[s];

		if (fds[s] >= 0)
			continue;
		if (svc->listen.kind == EVFDD_ENDPOINT_NONE) {
			log_errx("[%s] has no activated socket named \"%s\" and no listen address (%s line %u); add "
				 "listen = HOST:PORT or a socket unit with FileDescriptorName=%s", svc->name, svc->name,
				 cfg->source, svc->line, svc->name);
			errors++;
			continue;
		}
		fds[s] = listen_bind(svc);
		if (fds[s] < 0)
			errors++;
		else
			log_info("[%s] listening on %s", svc->name, svc->listen.text);
	}
	if (!errors)
		return 0;
	for (s = 0; s < cfg->nservices; s++)
		if (fds[s] >= 0) {
			close(fds[s]);
			fds[s] = -1;
		}
	return -1;
}
