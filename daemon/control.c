/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdd's control socket: the Unix socket itself and the io.evfdd methods, mapped to the core's ops; the
 * Varlink protocol is varlink.c's. See control.h. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "control.h"
#include "jsonparse.h"
#include "listen.h"
#include "log.h"
#include "safepath.h"
#include "varlink.h"
/* static const char evfdd_varlink_interface[]: daemon/io.evfdd.varlink, made a C string at build time. */
#include "io.evfdd.varlink.h"

#define CONTROL_IFACE "io.evfdd"
#define CONTROL_SOCKET_MODE 0660

struct evfdd_control {
	struct varlink_server *srv;
	struct evfdd_control_ops ops;
	void *arg;
	struct varlink_interface iface;
	struct varlink_server_params params;
	/* The directory of the socket file we bound (checked), and an O_PATH descriptor of that file: it is
	 * unlinked at the end if it is still ours. Unused for an activated socket. */
	struct safepath sp;
	int file_fd;
	struct log_ratelimit denied_rl;
};

/* Check the directories above @path from / down, creating those that are missing (mode 0755), and refuse
 * one that a user other than root and evfdd's own could change: that user could swap our socket for theirs,
 * or for a link to a file of root's. Keeps the directory in c->sp. */
static int control_make_parent(struct evfdd_control *c, const char *path)
{
	char err[1024];
	int r = safepath_open(&c->sp, path, SAFEPATH_MKDIR, err, sizeof(err));

	if (r < 0)
		log_errx("control socket %s: %s; or set another path with control = in [evfdd]", path, err);
	return r;
}

/* A socket file at the control path (evfdd_listen_unix_clear): 0 when nothing is there (any more),
 * -EADDRINUSE when something answers; says which. */
static int control_clear_path(struct evfdd_control *c, const char *path)
{
	char err[1024] = "";
	struct stat st;
	bool replaced;
	int r = evfdd_listen_unix_clear(&c->sp, &replaced, &st, err, sizeof(err));

	switch (r) {
	case 0:
		if (replaced)
			log_info("control socket %s: replacing a stale socket file", path);
		break;
	case -EEXIST:
		log_errx("control socket %s: the file exists and is not a socket (a %s); evfdd will not remove it: "
			 "remove it, or set another path with control = in [evfdd]", path,
			 safepath_type_name(st.st_mode));
		break;
	case -EADDRINUSE:
		log_errx("control socket %s: another process answers there (another evfdd?); stop it, or give this "
			 "one another path with control = in [evfdd]", path);
		break;
	case -EPERM:
		log_errx("control socket %s: %s", path, err);
		break;
	default:
		errno = -r;
		log_err("control socket %s: cannot tell whether the socket file is in use", path);
		break;
	}
	return r;
}

/* Bind and listen on @path; the socket file gets mode 0660 exactly. Returns the fd or a negative errno. */
static int control_bind(struct evfdd_control *c, const char *path)
{
	struct stat st;
	int fd = -1, r;

	if (strlen(path) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
		log_errx("control socket %s: the path is longer than %zu bytes; set a shorter one with control = "
			 "in [evfdd]", path, sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
		return -ENAMETOOLONG;
	}
	r = control_make_parent(c, path);
	if (r < 0)
		return r;
	r = control_clear_path(c, path);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		r = -errno;
		log_err("control socket %s: socket", path);
		return r;
	}
	/* Start-up, before any worker thread: nothing else creates files while the umask is 0. */
	r = safepath_bind(&c->sp, fd, CONTROL_SOCKET_MODE, &c->file_fd);
	if (r < 0) {
		errno = -r;
		log_err("control socket %s: bind%s", path,
			r == -EADDRINUSE ? "; another process created it just now: is another evfdd starting?" : "");
		goto fail;
	}
	if (listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		log_err("control socket %s: listen", path);
		goto fail;
	}
	return fd;
fail:
	if (c->file_fd >= 0 && fstat(c->file_fd, &st) == 0)
		safepath_unlink(&c->sp, &st);
	if (c->file_fd >= 0)
		close(c->file_fd);
	c->file_fd = -1;
	close(fd);
	return r;
}

/* An activated socket must be a listening Unix stream socket: only those carry SO_PEERCRED. */
static int control_check_activated(int fd)
{
	int type = 0, domain = 0, acc = 0, r;
	socklen_t len = sizeof(int);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
	    (len = sizeof(int), getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len)) < 0 ||
	    (len = sizeof(int), getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len)) < 0) {
		r = -errno;
		log_err("activated control socket (fd %d)", fd);
		return r;
	}
	if (type != SOCK_STREAM || domain != AF_UNIX || !acc) {
		log_errx("the activated socket named \"control\" (fd %d) is not a listening Unix stream socket; use "
			 "ListenStream=/run/evfdd/control in its .socket unit", fd);
		return -EINVAL;
	}
	return 0;
}

/* An op's answer, on the main loop, exactly once: it becomes the call's reply. */
static void control_done(void *cookie, const char *error, struct json_object *params)
{
	struct varlink_call *call = cookie;

	if (error)
		varlink_call_error(call, error, params);
	else
		varlink_call_reply(call, params);
}

/* A ring or loop id: an integer from 0 to INT64_MAX, so that the core's NoSuchRing or NoSuchLoop echoes
 * exactly what was sent. False when missing, negative, beyond int64 (Varlink's int), a fraction or an
 * exponent, or of another type: then it is InvalidParameter. */
static bool control_get_index(struct json_object *params, const char *key, uint64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(params, key, &v) || jsonparse_number(v) != JSONPARSE_INTEGER ||
	    json_object_get_int64(v) < 0)
		return false;
	*out = (uint64_t)json_object_get_int64(v);
	return true;
}

/* A string parameter without NUL bytes, at most @max bytes (json-c strings may hold "\u0000"). */
static bool control_get_string(struct json_object *params, const char *key, size_t max, const char **out)
{
	struct json_object *v;
	const char *s;
	size_t len;

	if (!json_object_object_get_ex(params, key, &v) || !json_object_is_type(v, json_type_string))
		return false;
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (len > max || strlen(s) != len)
		return false;
	*out = s;
	return true;
}

static void control_error_method(struct varlink_call *call, const char *error)
{
	struct json_object *p = json_object_new_object(), *m = json_object_new_string(varlink_call_method(call));

	if (p && m && json_object_object_add(p, "method", m) == 0) {
		varlink_call_error(call, error, p);
		return;
	}
	json_object_put(p);
	json_object_put(m);
	varlink_call_abort(call, "out of memory");
}

/* Changing state takes root or the daemon's own user, as with HAProxy's or relayd's control sockets. */
static bool control_allowed(struct evfdd_control *c, struct varlink_call *call)
{
	uid_t uid = varlink_call_uid(call);
	unsigned long missed;

	if (uid == 0 || uid == geteuid())
		return true;
	if (log_ratelimit(&c->denied_rl, &missed))
		log_info("control socket: pid %d uid %d may not call %s (only root and uid %d may; %lu similar "
			 "messages suppressed)", (int)varlink_call_pid(call), (int)uid, varlink_call_method(call),
			 (int)geteuid(), missed);
	control_error_method(call, CONTROL_IFACE ".PermissionDenied");
	return false;
}

enum control_kind {
	CONTROL_STATUS, CONTROL_LOOPS, CONTROL_RINGS, CONTROL_SERVICES, CONTROL_MOVE, CONTROL_RELOAD, CONTROL_UPGRADE,
	CONTROL_BACKENDS, CONTROL_SET_BACKEND, CONTROL_METRICS
};

static const struct control_method {
	const char *name;		/* without the interface */
	enum control_kind kind;
} control_methods[] = {
	{ "Status", CONTROL_STATUS },
	{ "Loops", CONTROL_LOOPS },
	{ "Rings", CONTROL_RINGS },
	{ "Services", CONTROL_SERVICES },
	{ "MoveRing", CONTROL_MOVE },
	{ "Reload", CONTROL_RELOAD },
	{ "Upgrade", CONTROL_UPGRADE },
	{ "Backends", CONTROL_BACKENDS },
	{ "SetBackendState", CONTROL_SET_BACKEND },
	{ "Metrics", CONTROL_METRICS },
};

static void control_read(struct evfdd_control *c, struct varlink_call *call, struct json_object *params,
			 struct json_object *(*get)(void *))
{
	static const char *const none[] = { NULL };
	const char *bad = varlink_unknown_parameter(params, none);
	struct json_object *r;

	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	r = get(c->arg);
	if (r)
		varlink_call_reply(call, r);
	else
		varlink_call_abort(call, "out of memory");
}

static void control_move(struct evfdd_control *c, struct varlink_call *call, struct json_object *params)
{
	static const char *const allowed[] = { "ring", "loop", NULL };
	const char *bad = varlink_unknown_parameter(params, allowed);
	uint64_t ring, loop;

	if (!bad && !control_get_index(params, "ring", &ring))
		bad = "ring";
	if (!bad && !control_get_index(params, "loop", &loop))
		bad = "loop";
	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	log_debug("control socket: pid %d uid %d moves ring %llu to loop %llu", (int)varlink_call_pid(call),
		  (int)varlink_call_uid(call), (unsigned long long)ring, (unsigned long long)loop);
	c->ops.move(c->arg, ring, loop, control_done, call);
}

static void control_reload(struct evfdd_control *c, struct varlink_call *call, struct json_object *params)
{
	static const char *const none[] = { NULL };
	const char *bad = varlink_unknown_parameter(params, none);

	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	log_info("control socket: reload requested by pid %d uid %d", (int)varlink_call_pid(call),
		 (int)varlink_call_uid(call));
	c->ops.reload(c->arg, control_done, call);
}

static void control_upgrade(struct evfdd_control *c, struct varlink_call *call, struct json_object *params)
{
	static const char *const none[] = { NULL };
	const char *bad = varlink_unknown_parameter(params, none);

	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	log_info("control socket: upgrade requested by pid %d uid %d", (int)varlink_call_pid(call),
		 (int)varlink_call_uid(call));
	c->ops.upgrade(c->arg, control_done, call);
}

static void control_backends(struct evfdd_control *c, struct varlink_call *call, struct json_object *params)
{
	static const char *const allowed[] = { "service", NULL };
	const char *bad = varlink_unknown_parameter(params, allowed), *service = NULL;
	struct json_object *v;

	if (!bad && json_object_object_get_ex(params, "service", &v) && v &&
	    !control_get_string(params, "service", EVFDD_CONFIG_NAME_MAX, &service))
		bad = "service";
	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	c->ops.backends(c->arg, service, control_done, call);
}

static void control_set_backend(struct evfdd_control *c, struct varlink_call *call, struct json_object *params)
{
	static const char *const allowed[] = { "service", "backend", "state", NULL };
	const char *bad = varlink_unknown_parameter(params, allowed), *service, *backend, *state = NULL;

	if (!bad && !control_get_string(params, "service", EVFDD_CONFIG_NAME_MAX, &service))
		bad = "service";
	if (!bad && !control_get_string(params, "backend", 4096, &backend))
		bad = "backend";
	if (!bad && (!control_get_string(params, "state", 16, &state) ||
		     (strcmp(state, "drain") && strcmp(state, "enable"))))
		bad = "state";
	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	c->ops.set_backend(c->arg, service, backend, !strcmp(state, "drain"), varlink_call_uid(call), control_done,
			   call);
}

/* Every call to io.evfdd: find the method, check who calls, then the parameters. */
static void control_method(void *arg, struct varlink_call *call, const char *method, struct json_object *params)
{
	struct evfdd_control *c = arg;
	const char *name = method + strlen(CONTROL_IFACE) + 1;
	const struct control_method *m = NULL;
	struct json_object *(*get)(void *) = NULL;
	bool implemented = false;
	size_t i;

	for (i = 0; i < sizeof(control_methods) / sizeof(control_methods[0]) && !m; i++)
		if (!strcmp(name, control_methods[i].name))
			m = &control_methods[i];
	if (!m) {
		varlink_call_method_not_found(call);
		return;
	}
	switch (m->kind) {
	case CONTROL_STATUS:
		get = c->ops.status;
		break;
	case CONTROL_LOOPS:
		get = c->ops.loops;
		break;
	case CONTROL_RINGS:
		get = c->ops.rings;
		break;
	case CONTROL_SERVICES:
		get = c->ops.services;
		break;
	case CONTROL_METRICS:
		get = c->ops.metrics;
		break;
	case CONTROL_MOVE:
		implemented = c->ops.move != NULL;
		break;
	case CONTROL_RELOAD:
		implemented = c->ops.reload != NULL;
		break;
	case CONTROL_UPGRADE:
		implemented = c->ops.upgrade != NULL;
		break;
	case CONTROL_BACKENDS:
		implemented = c->ops.backends != NULL;
		break;
	case CONTROL_SET_BACKEND:
		implemented = c->ops.set_backend != NULL;
		break;
	}
	if (!get && !implemented) {
		control_error_method(call, "org.varlink.service.MethodNotImplemented");
		return;
	}
	if (get)
		control_read(c, call, params, get);
	else if (m->kind == CONTROL_BACKENDS)
		control_backends(c, call, params);   /* reading: open to every peer */
	else if (!control_allowed(c, call))
		return;
	else if (m->kind == CONTROL_MOVE)
		control_move(c, call, params);
	else if (m->kind == CONTROL_SET_BACKEND)
		control_set_backend(c, call, params);
	else if (m->kind == CONTROL_UPGRADE)
		control_upgrade(c, call, params);
	else
		control_reload(c, call, params);
}

int evfdd_control_adopt(struct evfdd_control *c, int fd, uid_t uid, pid_t pid)
{
	return varlink_server_adopt(c->srv, fd, uid, pid);
}

int evfdd_control_start(struct evfdd_control **out, struct ev_loop *ev, int fd, const char *path,
			const struct evfdd_control_ops *ops, void *arg)
{
	struct evfdd_control *c = calloc(1, sizeof(*c));
	bool activated = fd >= 0;
	int r;

	*out = NULL;
	if (!c) {
		log_errx("control socket: out of memory");
		if (activated)
			close(fd);
		return -ENOMEM;
	}
	c->ops = *ops;
	c->arg = arg;
	c->iface.name = CONTROL_IFACE;
	c->iface.description = evfdd_varlink_interface;
	c->params = (struct varlink_server_params){
		.name = "control socket",
		.vendor = "evfdd", .product = "evfdd", .version = PACKAGE_VERSION, .url = "",
		.interfaces = &c->iface, .ninterfaces = 1,
		.method = control_method, .arg = c,
	};
	log_ratelimit_init(&c->denied_rl, 10000, 5);
	c->sp = (struct safepath)SAFEPATH_INIT;
	c->file_fd = -1;
	if (activated) {
		r = control_check_activated(fd);
		if (r < 0)
			close(fd);
	} else {
		fd = control_bind(c, path);
		r = fd < 0 ? fd : 0;
	}
	if (r == 0) {
		/* Takes the fd, also when it fails. */
		r = varlink_server_new(&c->srv, ev, fd, &c->params);
		if (r < 0)
			log_errx("control socket: out of memory");
	}
	if (r < 0) {
		evfdd_control_free(c);
		return r;
	}
	if (activated)
		log_info("control socket: using the activated socket (fd %d)", fd);
	*out = c;
	return 0;
}

void evfdd_control_free(struct evfdd_control *c)
{
	struct stat st;

	if (!c)
		return;
	varlink_server_free(c->srv);
	/* Only the file we bound, and only if a newer instance has not replaced it since. */
	if (c->file_fd >= 0 && fstat(c->file_fd, &st) == 0)
		safepath_unlink(&c->sp, &st);
	if (c->file_fd >= 0)
		close(c->file_fd);
	safepath_close(&c->sp);
	log_ratelimit_destroy(&c->denied_rl);
	free(c);
}
