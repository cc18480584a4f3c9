/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the control socket's message path: framing, the strict JSON reader, the Varlink server and
 * control.c's io.evfdd dispatch, with stub core ops. Each input is the byte stream a client sends: it goes
 * to a real varlink server (control.c's, on an activated listening socket it never accepts on) through a
 * socketpair adopted as a client (evfdd_control_adopt), after which the fuzzer shuts down its writing side
 * and runs the libev loop until the server has answered everything and closed the connection. Then:
 *
 * - every reply is valid UTF-8 (checked here, not by the parser under test) and a strict JSON object with
 *   an object "parameters" and, for an error, a string "error";
 * - the replies answer, in order, exactly the calls that are not oneway: every message up to the first one
 *   that closes the connection (too long, not JSON, not a call), as this file reads them. After such a
 *   message the answers already given may be cut short (they are sent without waiting), never added to;
 * - MethodNotFound echoes exactly the method name sent, NUL bytes included; InterfaceNotFound for a call
 *   names the interface part of the method; PermissionDenied only for a peer that is not root;
 * - no crash, no leak (every call is answered, late answers included), no hang (the server must close).
 *
 * The stub ops answer MoveRing and Reload now or from a timer on the loop (a late answer, also after the
 * client has gone), with a reply or an error, by the ring id and by turns. The peer is uid 0, or 65534 for
 * an input whose length is a multiple of 3 (then MoveRing and Reload are PermissionDenied).
 *
 * Under libFuzzer (clang), from a configured build directory: `make fuzz` builds this and fuzz-config with
 * clang -fsanitize=fuzzer,address,undefined -DEVFDD_FUZZING and runs each for FUZZ_TIME seconds (default
 * 60) over its corpus, new inputs going to a scratch directory; or by hand (also from the build directory):
 *	make tests/fuzz-varlink-libfuzzer
 *	mkdir -p /tmp/fuzz-work
 *	tests/fuzz-varlink-libfuzzer -max_total_time=60 /tmp/fuzz-work $srcdir/tests/fuzz-corpus/varlink
 * (copy the interesting inputs into tests/fuzz-corpus/varlink). FUZZ_VARLINK_DEBUG=1 shows the server's
 * debug log.
 *
 * Without EVFDD_FUZZING this file has its own main, which runs the target once over every file in
 * tests/fuzz-corpus/varlink (or the files and directories given as arguments): `make check` does that.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "../daemon/config.h"
#include "../daemon/control.h"
#include "../daemon/jsonparse.h"
#include "../daemon/log.h"
#include "../daemon/varlink.h"
#include "fuzzmain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                                 \
	do {                                                                                              \
		if (!(cond)) {                                                                            \
			fprintf(stderr, "fuzz-varlink: %s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                                   \
			abort();                                                                          \
		}                                                                                         \
	} while (0)

/* The server's JSON nesting limit (varlink.c); the model below reads messages as the server does. */
#define JSON_MAX_DEPTH 32
#define PEER_PID 4242
#define NOBODY 65534

/* An answer the stub ops give later, from the loop. */
struct late {
	evfdd_control_done_fn done;
	void *cookie;
	const char *error;
	struct json_object *params;
	struct late *next;
};

static struct {
	struct ev_loop *ev;
	struct evfdd_control *ctl;
	ev_timer answer;
	struct late *late;
	unsigned turn;
	bool eof;		/* the server closed the connection of the current input */
} F;

/* ---- stub core ops ---------------------------------------------------------------------------------- */

static struct json_object *obj_add(struct json_object *o, const char *key, struct json_object *v)
{
	json_object_object_add(o, key, v);
	return o;
}

static struct json_object *stub_status(void *arg)
{
	struct json_object *o = json_object_new_object();

	obj_add(o, "version", json_object_new_string("fuzz"));
	obj_add(o, "pid", json_object_new_int64(PEER_PID));
	obj_add(o, "uptime_usec", json_object_new_int64(INT64_MAX));
	/* Strings that need escaping on the way out. */
	obj_add(o, "config", json_object_new_string("/etc/\"evfdd\"\\\t\x01\x7f \xc3\xa9 \xe2\x80\xa8 \xf0\x9f\x98\x80"));
	obj_add(o, "state", json_object_new_string("running"));
	obj_add(o, "last_reload", NULL);
	return o;
}

static struct json_object *stub_list(const char *key, unsigned n)
{
	struct json_object *o = json_object_new_object(), *a = json_object_new_array();
	unsigned i;

	for (i = 0; i < n; i++) {
		struct json_object *e = json_object_new_object();

		obj_add(e, "id", json_object_new_int64(i));
		obj_add(e, "name", json_object_new_string("w\xc3\xb6rker"));
		json_object_array_add(a, e);
	}
	return obj_add(o, key, a);
}

static struct json_object *stub_loops(void *arg)
{
	return stub_list("loops", 2);
}

static struct json_object *stub_rings(void *arg)
{
	return stub_list("rings", 4);
}

static struct json_object *stub_services(void *arg)
{
	return stub_list("services", 0);
}

static void answer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	while (F.late) {
		struct late *l = F.late;

		F.late = l->next;
		l->done(l->cookie, l->error, l->params);
		free(l);
	}
}

/* Answer now, or later from the loop. */
static void stub_answer(bool now, evfdd_control_done_fn done, void *cookie, const char *error,
			struct json_object *params)
{
	struct late *l, **tail;

	if (now) {
		done(cookie, error, params);
		return;
	}
	l = calloc(1, sizeof(*l));
	FUZZ_ASSERT(l);
	*l = (struct late){ .done = done, .cookie = cookie, .error = error, .params = params };
	for (tail = &F.late; *tail; tail = &(*tail)->next)
		;
	*tail = l;
	ev_timer_start(F.ev, &F.answer);
}

static void stub_move(void *arg, uint64_t ring, uint64_t loop, evfdd_control_done_fn done, void *cookie)
{
	struct json_object *p = json_object_new_object();

	/* control.c hands over ids within int64 only: the core echoes them as ints. */
	FUZZ_ASSERT(ring <= INT64_MAX && loop <= INT64_MAX);
	obj_add(p, "ring", json_object_new_int64((int64_t)ring));
	switch (ring % 4) {
	case 0:
	case 1:
		obj_add(p, "from", json_object_new_int64(0));
		obj_add(p, "loop", json_object_new_int64((int64_t)loop));
		obj_add(p, "usec", json_object_new_int64(7));
		stub_answer(ring % 4 == 0, done, cookie, NULL, p);
		break;
	case 2:
		stub_answer(true, done, cookie, "io.evfdd.NoSuchRing", p);
		break;
	default:
		obj_add(p, "reason", json_object_new_string("draining"));
		stub_answer(false, done, cookie, "io.evfdd.RingBusy", p);
		break;
	}
}

static void stub_reload(void *arg, evfdd_control_done_fn done, void *cookie)
{
	struct json_object *p = json_object_new_object(), *r = json_object_new_object();
	bool ok = F.turn++ % 2 == 0;

	obj_add(r, "ok", json_object_new_boolean(ok));
	obj_add(r, "errors", json_object_new_array());
	obj_add(r, "summary", json_object_new_string("nothing changed"));
	obj_add(p, "reload", r);
	stub_answer(!ok, done, cookie, ok ? NULL : "io.evfdd.ReloadFailed", p);
}

static void stub_backends(void *arg, const char *service, evfdd_control_done_fn done, void *cookie)
{
	struct json_object *p = json_object_new_object();

	/* control.c hands over a service name of at most 64 bytes, without NUL bytes, or none */
	FUZZ_ASSERT(!service || strlen(service) <= EVFDD_CONFIG_NAME_MAX);
	if (service && strcmp(service, "web") != 0) {
		obj_add(p, "service", json_object_new_string(service));
		stub_answer(true, done, cookie, "io.evfdd.NoSuchService", p);
		return;
	}
	obj_add(p, "backends", json_object_new_array());
	stub_answer(true, done, cookie, NULL, p);
}

static void stub_set_backend(void *arg, const char *service, const char *backend, bool drain, uid_t uid,
			     evfdd_control_done_fn done, void *cookie)
{
	struct json_object *p = json_object_new_object();

	FUZZ_ASSERT(strlen(service) <= EVFDD_CONFIG_NAME_MAX && strlen(backend) <= 4096);
	obj_add(p, "service", json_object_new_string(service));
	obj_add(p, "backend", json_object_new_string(backend));
	stub_answer(drain, done, cookie, "io.evfdd.NoSuchBackend", p);
}

static struct json_object *stub_metrics(void *arg)
{
	struct json_object *o = json_object_new_object();

	obj_add(o, "text", json_object_new_string("# HELP evfdd_workers Worker loops.\n# TYPE evfdd_workers gauge\n"
						  "evfdd_workers 2\n"));
	return o;
}

static const struct evfdd_control_ops stub_ops = {
	.metrics = stub_metrics,
	.backends = stub_backends,
	.set_backend = stub_set_backend,
	.status = stub_status,
	.loops = stub_loops,
	.rings = stub_rings,
	.services = stub_services,
	.move = stub_move,
	.reload = stub_reload,
};

/* ---- one exchange: the input in, the replies out -------------------------------------------------------- */

struct exchange {
	ev_io io;
	const uint8_t *in;
	size_t in_len, in_off;
	char *out;
	size_t out_len, out_cap;
};

static void exchange_done_check(void)
{
	if (F.eof && !F.late)
		ev_break(F.ev, EVBREAK_ALL);
}

static void exchange_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct exchange *x = (struct exchange *)w;
	ssize_t r;

	if ((revents & EV_WRITE) && x->in_off < x->in_len) {
		r = send(w->fd, x->in + x->in_off, x->in_len - x->in_off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (r > 0)
			x->in_off += (size_t)r;
		else if (r < 0 && errno != EAGAIN && errno != EINTR)
			x->in_off = x->in_len;	/* the server closed the connection: the rest goes nowhere */
		if (x->in_off == x->in_len) {
			shutdown(w->fd, SHUT_WR);
			ev_io_stop(ev, w);
			ev_io_set(w, w->fd, EV_READ);
			ev_io_start(ev, w);
		}
	}
	if (!(revents & EV_READ))
		return;
	/* (Small at first: most inputs get a few hundred bytes back, and big blocks cost an mmap each.) */
	if (x->out_cap - x->out_len < 2048) {
		x->out_cap = x->out_cap ? x->out_cap * 2 : 4096;
		x->out = realloc(x->out, x->out_cap);
		FUZZ_ASSERT(x->out);
	}
	r = recv(w->fd, x->out + x->out_len, x->out_cap - x->out_len, MSG_DONTWAIT);
	if (r > 0) {
		x->out_len += (size_t)r;
		return;
	}
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	/* EOF, or ECONNRESET: the server closed with input unread. */
	ev_io_stop(ev, w);
	F.eof = true;
	exchange_done_check();
}

/* ---- the checks -------------------------------------------------------------------------------------- */

/* Well-formed UTF-8 (Unicode table 3-7), written apart from the parser under test. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		uint32_t cp;
		size_t k, len;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			len = 2, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			len = 3, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			len = 4, cp = c & 0x07;
		else
			return false;
		if (n - i < len)
			return false;
		for (k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* A call the model expects an answer to: its method name as sent. */
struct expected {
	char *method;
	size_t len;
};

static bool member_is(struct json_object *o, const char *key, enum json_type type, struct json_object **v)
{
	return json_object_object_get_ex(o, key, v) && json_object_is_type(*v, type);
}

/* Read the input as the server does: the calls answered, and whether the stream ends cleanly (no message
 * that closes the connection). */
static bool model(const uint8_t *data, size_t size, struct expected **calls, size_t *ncalls)
{
	size_t pos = 0, cap = 0;

	*calls = NULL;
	*ncalls = 0;
	while (pos < size) {
		const uint8_t *nul = memchr(data + pos, '\0', size - pos);
		size_t len = nul ? (size_t)(nul - (data + pos)) : size - pos;
		struct json_object *m, *v;
		struct jsonparse_error err;
		bool oneway = false;

		if (len > VARLINK_MAX_MESSAGE)
			return false;
		if (!nul)	/* an incomplete message at the end is dropped */
			return true;
		if (jsonparse_text((const char *)data + pos, len, JSON_MAX_DEPTH, &m, &err) != 0)
			return false;
		if (!json_object_is_type(m, json_type_object) || !member_is(m, "method", json_type_string, &v)) {
			json_object_put(m);
			return false;
		}
		if (json_object_object_get_ex(m, "oneway", &v) && json_object_is_type(v, json_type_boolean))
			oneway = json_object_get_boolean(v);
		if (!oneway) {
			struct json_object *meth;

			if (*ncalls == cap) {
				cap = cap ? cap * 2 : 16;
				*calls = realloc(*calls, cap * sizeof(**calls));
				FUZZ_ASSERT(*calls);
			}
			json_object_object_get_ex(m, "method", &meth);
			(*calls)[*ncalls].len = (size_t)json_object_get_string_len(meth);
			(*calls)[*ncalls].method = malloc((*calls)[*ncalls].len + 1);
			FUZZ_ASSERT((*calls)[*ncalls].method);
			memcpy((*calls)[*ncalls].method, json_object_get_string(meth), (*calls)[*ncalls].len + 1);
			(*ncalls)++;
		}
		json_object_put(m);
		pos += len + 1;
	}
	return true;
}

static void check_reply(const char *text, size_t len, const struct expected *call, uid_t uid)
{
	struct json_object *r, *params, *error, *v;
	struct jsonparse_error err;
	const char *e, *dot;

	FUZZ_ASSERT(utf8_valid((const unsigned char *)text, len));
	FUZZ_ASSERT(jsonparse_text(text, len, JSON_MAX_DEPTH, &r, &err) == 0);
	FUZZ_ASSERT(json_object_is_type(r, json_type_object));
	FUZZ_ASSERT(member_is(r, "parameters", json_type_object, &params));
	if (json_object_object_get_ex(r, "error", &error)) {
		FUZZ_ASSERT(json_object_is_type(error, json_type_string));
		e = json_object_get_string(error);
		if (!strcmp(e, "org.varlink.service.MethodNotFound")) {
			FUZZ_ASSERT(member_is(params, "method", json_type_string, &v));
			FUZZ_ASSERT((size_t)json_object_get_string_len(v) == call->len &&
				    !memcmp(json_object_get_string(v), call->method, call->len));
		} else if (!strcmp(e, "org.varlink.service.InterfaceNotFound") &&
			   strcmp(call->method, "org.varlink.service.GetInterfaceDescription")) {
			FUZZ_ASSERT(member_is(params, "interface", json_type_string, &v));
			dot = strrchr(call->method, '.');
			FUZZ_ASSERT(dot && (size_t)json_object_get_string_len(v) == (size_t)(dot - call->method) &&
				    !memcmp(json_object_get_string(v), call->method, (size_t)(dot - call->method)));
		} else if (!strcmp(e, "io.evfdd.PermissionDenied")) {
			FUZZ_ASSERT(uid != 0);
		}
	}
	json_object_put(r);
}

static void check(const uint8_t *data, size_t size, const char *out, size_t out_len, uid_t uid)
{
	struct expected *calls;
	size_t ncalls, n = 0, i, pos = 0;
	bool clean = model(data, size, &calls, &ncalls);

	while (pos < out_len) {
		const char *nul = memchr(out + pos, '\0', out_len - pos);

		/* Only a connection closed for a bad message may end inside a reply. */
		FUZZ_ASSERT(nul || !clean);
		if (!nul)
			break;
		FUZZ_ASSERT(n < ncalls);
		check_reply(out + pos, (size_t)(nul - (out + pos)), &calls[n], uid);
		n++;
		pos = (size_t)(nul - out) + 1;
	}
	FUZZ_ASSERT(n == ncalls || (!clean && n < ncalls));
	for (i = 0; i < ncalls; i++)
		free(calls[i].method);
	free(calls);
}

/* ---- the target --------------------------------------------------------------------------------------- */

static void setup(void)
{
	struct sockaddr autobind = { .sa_family = AF_UNIX };
	int lfd;

	log_init(getenv("FUZZ_VARLINK_DEBUG") ? LOG_DEBUG : LOG_CRIT, false);
	F.ev = ev_loop_new(EVFLAG_AUTO);
	FUZZ_ASSERT(F.ev);
	ev_timer_init(&F.answer, answer_cb, 0., 0.);
	/* An activated control socket as control.c wants one: a listening Unix stream socket (autobound to
	 * an abstract name; nobody connects to it). */
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	FUZZ_ASSERT(lfd >= 0);
	FUZZ_ASSERT(bind(lfd, &autobind, sizeof(sa_family_t)) == 0);
	FUZZ_ASSERT(listen(lfd, 1) == 0);
	FUZZ_ASSERT(evfdd_control_start(&F.ctl, F.ev, lfd, NULL, &stub_ops, NULL) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct exchange x = { .in = data, .in_len = size };
	uid_t uid = size % 3 == 0 ? NOBODY : 0;
	int sv[2];

	if (!F.ev)
		setup();
	FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
	/* One client at a time, always let in: the limits leave every client of the last input gone. */
	FUZZ_ASSERT(evfdd_control_adopt(F.ctl, sv[0], uid, PEER_PID) == 0);
	F.eof = false;
	F.turn = 0;
	ev_io_init(&x.io, exchange_cb, sv[1], size ? EV_READ | EV_WRITE : EV_READ);
	if (!size)
		shutdown(sv[1], SHUT_WR);
	ev_io_start(F.ev, &x.io);
	ev_run(F.ev, 0);
	ev_io_stop(F.ev, &x.io);
	FUZZ_ASSERT(F.eof && !F.late);
	close(sv[1]);
	check(data, size, x.out, x.out_len, uid);
	free(x.out);
	return 0;
}

#ifndef EVFDD_FUZZING
int main(int argc, char **argv)
{
	int total = fuzz_corpus_run("varlink", argc, argv);

	if (total < 0)
		return 1;
	/* Leave nothing for the leak checker: the server and its loop go too. */
	if (F.ctl)
		evfdd_control_free(F.ctl);
	if (F.ev)
		ev_loop_destroy(F.ev);
	printf("fuzz-varlink: %d inputs, every invariant held\n", total);
	return 0;
}
#endif
