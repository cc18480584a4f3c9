/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A Varlink server on one libev loop; see varlink.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "log.h"
#include "varlink.h"

#define VARLINK_SERVICE "org.varlink.service"
/* Work done for one client per loop iteration before the others get their turn. */
#define CALLS_PER_TURN 32
#define ACCEPTS_PER_TURN 16
/* A failing accept (EMFILE...) leaves the listener readable: wait this long before trying again. */
#define ACCEPT_PAUSE 0.1
/* JSON nesting a call may use; no method here takes more than a flat object. */
#define JSON_MAX_DEPTH 32
#define IN_MIN_CAP 4096

/* org.varlink.service as varlink.org defines it. */
static const char service_description[] =
	"# The Varlink Service Interface is provided by every varlink service. It\n"
	"# describes the service and the interfaces it implements.\n"
	"interface org.varlink.service\n"
	"\n"
	"# Get a list of all the interfaces a service provides and information\n"
	"# about the implementation.\n"
	"method GetInfo() -> (\n"
	"  vendor: string,\n"
	"  product: string,\n"
	"  version: string,\n"
	"  url: string,\n"
	"  interfaces: []string\n"
	")\n"
	"\n"
	"# Get the description of an interface that is implemented by this service.\n"
	"method GetInterfaceDescription(interface: string) -> (description: string)\n"
	"\n"
	"# The requested interface was not found.\n"
	"error InterfaceNotFound (interface: string)\n"
	"\n"
	"# The requested method was not found\n"
	"error MethodNotFound (method: string)\n"
	"\n"
	"# The interface defines the requested method, but the service does not\n"
	"# implement it.\n"
	"error MethodNotImplemented (method: string)\n"
	"\n"
	"# One of the passed parameters is invalid.\n"
	"error InvalidParameter (parameter: string)\n"
	"\n"
	"# Client is denied access\n"
	"error PermissionDenied ()\n"
	"\n"
	"# Method is expected to be called with 'more' set to true, but wasn't\n"
	"error ExpectedMore ()\n";

struct varlink_client;

struct varlink_call {
	struct varlink_client *client;	/* NULL once the client is gone: the answer goes nowhere */
	char *method;
	uid_t uid;
	pid_t pid;
	bool oneway;
};

struct varlink_server {
	const struct varlink_server_params *p;
	struct ev_loop *ev;
	int fd;
	ev_io accept_io;
	ev_timer accept_pause;
	struct varlink_client *clients;
	unsigned nclients;
	struct json_tokener *tok;
	/* Limits hit again and again by outside events: warn, but not thousands of times. */
	struct log_ratelimit full_rl, accept_rl, output_rl;
};

struct varlink_client {
	struct varlink_server *s;
	struct varlink_client *prev, *next;
	int fd;
	uid_t uid;
	pid_t pid;
	ev_io rio, wio;
	ev_timer idle;		/* fires VARLINK_IDLE_TIMEOUT after the last byte moved */
	ev_timer kick;		/* carry on next iteration: the turn ended, or a late answer came */
	ev_tstamp last_activity;
	/* Input: [in_off, in_len) not handled yet; [in_off, in_scan) holds no NUL. */
	char *in;
	size_t in_off, in_scan, in_len, in_cap;
	/* Output: [out_off, out_len) not written yet. */
	char *out;
	size_t out_off, out_len, out_cap;
	struct varlink_call *call;	/* being answered; the next call waits for it */
	bool eof;			/* the client will send nothing more */
	bool closing;			/* close at the next safe point */
};

static void client_free(struct varlink_client *c);
static bool client_settle(struct varlink_client *c);

const char *varlink_call_method(const struct varlink_call *call)
{
	return call->method;
}

uid_t varlink_call_uid(const struct varlink_call *call)
{
	return call->uid;
}

pid_t varlink_call_pid(const struct varlink_call *call)
{
	return call->pid;
}

/* Queue @len bytes and a NUL; past the output limit the client is closed instead. */
static void client_queue(struct varlink_client *c, const char *data, size_t len)
{
	size_t pending = c->out_len - c->out_off, need = pending + len + 1;
	unsigned long missed;

	if (need > VARLINK_MAX_OUTPUT) {
		if (log_ratelimit(&c->s->output_rl, &missed))
			log_warnx("%s: client pid %d uid %d does not read its replies (%zu bytes pending, the limit is "
				  "%d); closing it (%lu similar messages suppressed)", c->s->p->name, (int)c->pid,
				  (int)c->uid, pending + len + 1, VARLINK_MAX_OUTPUT, missed);
		c->closing = true;
		return;
	}
	if (c->out_off > 0 && c->out_len + len + 1 > c->out_cap) {
		memmove(c->out, c->out + c->out_off, pending);
		c->out_off = 0;
		c->out_len = pending;
	}
	if (c->out_len + len + 1 > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		char *n;

		while (cap < need)
			cap *= 2;
		n = realloc(c->out, cap);
		if (!n) {
			log_warnx("%s: client pid %d uid %d: out of memory for a %zu-byte reply; closing it",
				  c->s->p->name, (int)c->pid, (int)c->uid, len);
			c->closing = true;
			return;
		}
		c->out = n;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, data, len);
	c->out[c->out_len + len] = '\0';
	c->out_len += len + 1;
}

static void call_free(struct varlink_call *call)
{
	free(call->method);
	free(call);
}

/* Serialise @reply to @call's client (unless oneway or gone), consume both and let the client go on. */
static void call_finish(struct varlink_call *call, struct json_object *reply)
{
	struct varlink_client *c = call->client;
	const char *text;
	size_t len;

	if (c) {
		if (!reply) {
			log_warnx("%s: client pid %d uid %d: out of memory answering %s; closing it", c->s->p->name,
				  (int)c->pid, (int)c->uid, call->method);
			c->closing = true;
		} else if (!call->oneway && !c->closing) {
			text = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN |
								   JSON_C_TO_STRING_NOSLASHESCAPE, &len);
			if (text)
				client_queue(c, text, len);
			else
				c->closing = true;
		}
		c->call = NULL;
		c->last_activity = ev_now(c->s->ev);
		/* Answered during the dispatch, the dispatch carries on; answered later, the kick does. */
		ev_timer_start(c->s->ev, &c->kick);
	}
	json_object_put(reply);
	call_free(call);
}

void varlink_call_reply(struct varlink_call *call, struct json_object *params)
{
	struct json_object *reply = json_object_new_object();

	if (!params)
		params = json_object_new_object();
	if (reply && params && json_object_object_add(reply, "parameters", params) == 0)
		params = NULL;
	else {
		json_object_put(reply);
		reply = NULL;
	}
	json_object_put(params);
	call_finish(call, reply);
}

void varlink_call_error(struct varlink_call *call, const char *error, struct json_object *params)
{
	struct json_object *reply = json_object_new_object(), *name = json_object_new_string(error);

	bool ok;

	if (!params)
		params = json_object_new_object();
	ok = reply && name && params && json_object_object_add(reply, "error", name) == 0;
	if (ok)
		name = NULL;
	ok = ok && json_object_object_add(reply, "parameters", params) == 0;
	if (ok)
		params = NULL;
	else {
		json_object_put(reply);
		reply = NULL;
	}
	json_object_put(name);
	json_object_put(params);
	call_finish(call, reply);
}

/* An error whose parameters are one string, as most of org.varlink.service's are. */
static void call_error_string(struct varlink_call *call, const char *error, const char *key, const char *value)
{
	struct json_object *params = json_object_new_object(), *v = json_object_new_string(value);

	if (params && v && json_object_object_add(params, key, v) == 0)
		v = NULL;
	else {
		json_object_put(params);
		params = NULL;
	}
	json_object_put(v);
	if (!params)
		call_finish(call, NULL);
	else
		varlink_call_error(call, error, params);
}

void varlink_call_method_not_found(struct varlink_call *call)
{
	call_error_string(call, VARLINK_SERVICE ".MethodNotFound", "method", call->method);
}

void varlink_call_invalid_parameter(struct varlink_call *call, const char *parameter)
{
	call_error_string(call, VARLINK_SERVICE ".InvalidParameter", "parameter", parameter);
}

void varlink_call_abort(struct varlink_call *call, const char *why)
{
	struct varlink_client *c = call->client;

	if (c)
		log_warnx("%s: client pid %d uid %d: %s answering %s; closing the connection", c->s->p->name,
			  (int)c->pid, (int)c->uid, why, call->method);
	call_finish(call, NULL);
}

const char *varlink_unknown_parameter(struct json_object *params, const char *const *allowed)
{
	struct json_object_iterator it = json_object_iter_begin(params), end = json_object_iter_end(params);

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *key = json_object_iter_peek_name(&it);
		const char *const *a;

		for (a = allowed; *a && strcmp(*a, key); a++)
			;
		if (!*a)
			return key;
	}
	return NULL;
}

static void service_get_info(struct varlink_server *s, struct varlink_call *call, struct json_object *params)
{
	static const char *const none[] = { NULL };
	struct json_object *r = json_object_new_object(), *ifaces = json_object_new_array();
	const char *bad = varlink_unknown_parameter(params, none);
	bool ok;
	unsigned i;

	if (bad) {
		json_object_put(r);
		json_object_put(ifaces);
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	ok = r && ifaces && json_object_array_add(ifaces, json_object_new_string(VARLINK_SERVICE)) == 0;
	for (i = 0; ok && i < s->p->ninterfaces; i++)
		ok = json_object_array_add(ifaces, json_object_new_string(s->p->interfaces[i].name)) == 0;
	ok = ok && json_object_object_add(r, "vendor", json_object_new_string(s->p->vendor)) == 0 &&
	     json_object_object_add(r, "product", json_object_new_string(s->p->product)) == 0 &&
	     json_object_object_add(r, "version", json_object_new_string(s->p->version)) == 0 &&
	     json_object_object_add(r, "url", json_object_new_string(s->p->url)) == 0;
	if (ok && json_object_object_add(r, "interfaces", ifaces) == 0) {
		varlink_call_reply(call, r);
		return;
	}
	json_object_put(ifaces);
	json_object_put(r);
	varlink_call_abort(call, "out of memory");
}

static void service_get_description(struct varlink_server *s, struct varlink_call *call,
				    struct json_object *params)
{
	static const char *const allowed[] = { "interface", NULL };
	const char *bad = varlink_unknown_parameter(params, allowed), *name, *text = NULL;
	struct json_object *v, *r;
	unsigned i;

	if (bad) {
		varlink_call_invalid_parameter(call, bad);
		return;
	}
	if (!json_object_object_get_ex(params, "interface", &v) || !json_object_is_type(v, json_type_string)) {
		varlink_call_invalid_parameter(call, "interface");
		return;
	}
	name = json_object_get_string(v);
	if (!strcmp(name, VARLINK_SERVICE))
		text = service_description;
	for (i = 0; !text && i < s->p->ninterfaces; i++)
		if (!strcmp(name, s->p->interfaces[i].name))
			text = s->p->interfaces[i].description;
	if (!text) {
		call_error_string(call, VARLINK_SERVICE ".InterfaceNotFound", "interface", name);
		return;
	}
	r = json_object_new_object();
	if (r && json_object_object_add(r, "description", json_object_new_string(text)) == 0) {
		varlink_call_reply(call, r);
		return;
	}
	json_object_put(r);
	varlink_call_abort(call, "out of memory");
}

/* Route a well-formed call: org.varlink.service here, a known interface to the callback. */
static void client_dispatch(struct varlink_client *c, struct varlink_call *call, struct json_object *params)
{
	struct varlink_server *s = c->s;
	const char *dot = strrchr(call->method, '.');
	size_t iface_len = dot ? (size_t)(dot - call->method) : 0;
	unsigned i;
	char *iface;

	if (!dot || !iface_len || !dot[1]) {
		varlink_call_method_not_found(call);
		return;
	}
	if (iface_len == strlen(VARLINK_SERVICE) && !strncmp(call->method, VARLINK_SERVICE, iface_len)) {
		if (!strcmp(dot + 1, "GetInfo"))
			service_get_info(s, call, params);
		else if (!strcmp(dot + 1, "GetInterfaceDescription"))
			service_get_description(s, call, params);
		else
			varlink_call_method_not_found(call);
		return;
	}
	for (i = 0; i < s->p->ninterfaces; i++) {
		const char *name = s->p->interfaces[i].name;

		if (strlen(name) == iface_len && !strncmp(call->method, name, iface_len)) {
			s->p->method(s->p->arg, call, call->method, params);
			return;
		}
	}
	iface = strndup(call->method, iface_len);
	if (iface) {
		call_error_string(call, VARLINK_SERVICE ".InterfaceNotFound", "interface", iface);
		free(iface);
	} else
		varlink_call_abort(call, "out of memory");
}

/* An optional boolean field of a call; false when absent. Returns false when present but not a bool. */
static bool call_flag(struct json_object *m, const char *key, bool *out)
{
	struct json_object *v;

	*out = false;
	if (!json_object_object_get_ex(m, key, &v) || json_object_is_type(v, json_type_null))
		return true;
	if (!json_object_is_type(v, json_type_boolean))
		return false;
	*out = json_object_get_boolean(v);
	return true;
}

/* Bytes after the JSON value must be whitespace only. */
static bool only_space(const char *p, size_t len)
{
	for (; len; p++, len--)
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
			return false;
	return true;
}

/* One message (without its NUL). A message that is not a call closes the connection. */
static void client_handle(struct varlink_client *c, const char *msg, size_t len)
{
	struct varlink_server *s = c->s;
	struct json_object *m, *v, *params = NULL;
	struct varlink_call *call;
	const char *bad = NULL;
	bool oneway, more, upgrade;
	size_t end;

	json_tokener_reset(s->tok);
	m = json_tokener_parse_ex(s->tok, msg, (int)len);
	end = json_tokener_get_parse_end(s->tok);
	if (!m || json_tokener_get_error(s->tok) != json_tokener_success || !only_space(msg + end, len - end)) {
		enum json_tokener_error e = json_tokener_get_error(s->tok);

		log_debug("%s: client pid %d uid %d sent malformed JSON (%s, at byte %zu); closing it", s->p->name,
			  (int)c->pid, (int)c->uid,
			  m ? "trailing bytes" : e == json_tokener_continue ? "incomplete" : json_tokener_error_desc(e),
			  end);
		goto close;
	}
	if (!json_object_is_type(m, json_type_object) || !json_object_object_get_ex(m, "method", &v) ||
	    !json_object_is_type(v, json_type_string)) {
		log_debug("%s: client pid %d uid %d sent a message that is not a call (an object with a \"method\" "
			  "string); closing it", s->p->name, (int)c->pid, (int)c->uid);
		goto close;
	}
	call = calloc(1, sizeof(*call));
	if (!call || !(call->method = strdup(json_object_get_string(v)))) {
		free(call);
		log_warnx("%s: client pid %d uid %d: out of memory for a call; closing it", s->p->name, (int)c->pid,
			  (int)c->uid);
		goto close;
	}
	call->client = c;
	call->uid = c->uid;
	call->pid = c->pid;
	c->call = call;
	if (!call_flag(m, "oneway", &oneway))
		bad = "oneway";
	call->oneway = oneway;
	if (!bad && !call_flag(m, "more", &more))
		bad = "more";
	if (!bad && !call_flag(m, "upgrade", &upgrade))
		bad = "upgrade";
	/* Nothing here streams replies or upgrades the connection. */
	if (!bad && more)
		bad = "more";
	if (!bad && upgrade)
		bad = "upgrade";
	if (!bad && json_object_object_get_ex(m, "parameters", &v) && !json_object_is_type(v, json_type_null)) {
		if (json_object_is_type(v, json_type_object))
			params = json_object_get(v);
		else
			bad = "parameters";
	}
	log_debug("%s: client pid %d uid %d calls %s%s", s->p->name, (int)c->pid, (int)c->uid, call->method,
		  oneway ? " (oneway)" : "");
	if (bad)
		varlink_call_invalid_parameter(call, bad);
	else if (!params && !(params = json_object_new_object()))
		varlink_call_abort(call, "out of memory");
	else
		client_dispatch(c, call, params);
	json_object_put(params);
	json_object_put(m);
	return;
close:
	json_object_put(m);
	c->closing = true;
}

/* Handle the complete messages received, up to one turn's worth. Returns false when @c was freed. */
static bool client_process(struct varlink_client *c)
{
	unsigned n = 0;

	ev_timer_stop(c->s->ev, &c->kick);
	while (!c->call && !c->closing) {
		char *msg = c->in + c->in_off, *nul = memchr(c->in + c->in_scan, '\0', c->in_len - c->in_scan);
		size_t len;

		if (!nul) {
			c->in_scan = c->in_len;
			if (c->in_len - c->in_off > VARLINK_MAX_MESSAGE) {
				log_debug("%s: client pid %d uid %d sent more than %d bytes without a NUL; closing it",
					  c->s->p->name, (int)c->pid, (int)c->uid, VARLINK_MAX_MESSAGE);
				c->closing = true;
			}
			break;
		}
		if (n++ == CALLS_PER_TURN) {
			ev_timer_start(c->s->ev, &c->kick);
			break;
		}
		len = (size_t)(nul - msg);
		c->in_off = c->in_scan = (size_t)(nul - c->in) + 1;
		if (len > VARLINK_MAX_MESSAGE) {
			log_debug("%s: client pid %d uid %d sent a %zu-byte message (the limit is %d); closing it",
				  c->s->p->name, (int)c->pid, (int)c->uid, len, VARLINK_MAX_MESSAGE);
			c->closing = true;
			break;
		}
		client_handle(c, msg, len);
	}
	/* A call answered during the dispatch started the kick: this turn goes on without it. */
	if (n <= CALLS_PER_TURN)
		ev_timer_stop(c->s->ev, &c->kick);
	return client_settle(c);
}

/* Write what is pending; sets closing on a write error. */
static void client_flush(struct varlink_client *c)
{
	while (c->out_off < c->out_len) {
		ssize_t r = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				log_debug("%s: client pid %d uid %d: send: %s; closing it", c->s->p->name, (int)c->pid,
					  (int)c->uid, strerror(errno));
				c->closing = true;
			}
			return;
		}
		c->out_off += (size_t)r;
		c->last_activity = ev_now(c->s->ev);
	}
	c->out_off = c->out_len = 0;
}

/* Bring the watchers in line with the client's state; close it when it is done or failed. Returns false
 * when @c was freed. */
static bool client_settle(struct varlink_client *c)
{
	struct ev_loop *ev = c->s->ev;
	bool waiting = c->call || ev_is_active(&c->kick);

	if (!c->closing)
		client_flush(c);
	/* The client half-closed: answer what it sent, then close. A partial message at the end is dropped. */
	if (!c->closing && c->eof && !waiting && c->out_off == c->out_len)
		c->closing = true;
	if (c->closing) {
		client_free(c);
		return false;
	}
	/* Read only when every message received has been handled: the input stays within one message. */
	if (!c->eof && !waiting)
		ev_io_start(ev, &c->rio);
	else
		ev_io_stop(ev, &c->rio);
	if (c->out_off < c->out_len)
		ev_io_start(ev, &c->wio);
	else
		ev_io_stop(ev, &c->wio);
	return true;
}

static void client_read_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct varlink_client *c = w->data;
	ssize_t r;

	if (c->in_off > 0) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_scan -= c->in_off;
		c->in_off = 0;
	}
	if (c->in_len == c->in_cap) {
		/* Room for one message of the maximum size and its NUL, no more: past that it is too long. */
		size_t cap = c->in_cap ? c->in_cap * 2 : IN_MIN_CAP;
		char *n;

		if (cap > VARLINK_MAX_MESSAGE + 1)
			cap = VARLINK_MAX_MESSAGE + 1;
		n = cap > c->in_cap ? realloc(c->in, cap) : NULL;
		if (!n) {
			log_warnx("%s: client pid %d uid %d: out of memory for its input; closing it", c->s->p->name,
				  (int)c->pid, (int)c->uid);
			client_free(c);
			return;
		}
		c->in = n;
		c->in_cap = cap;
	}
	r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
	if (r < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		log_debug("%s: client pid %d uid %d: read: %s; closing it", c->s->p->name, (int)c->pid, (int)c->uid,
			  strerror(errno));
		client_free(c);
		return;
	}
	if (r == 0)
		c->eof = true;
	c->in_len += (size_t)r;
	c->last_activity = ev_now(ev);
	client_process(c);
}

static void client_write_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	client_settle(w->data);
}

static void client_kick_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	client_process(w->data);
}

/* libev's way to an inactivity timeout that costs nothing per byte: on expiry, look at the last activity
 * and either close or sleep for what is left. */
static void client_idle_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct varlink_client *c = w->data;
	ev_tstamp left = c->last_activity + VARLINK_IDLE_TIMEOUT - ev_now(ev);

	if (c->call)	/* the method is at work; its answer counts as activity */
		left = VARLINK_IDLE_TIMEOUT;
	if (left > 0) {
		ev_timer_set(w, left, 0.);
		ev_timer_start(ev, w);
		return;
	}
	log_debug("%s: client pid %d uid %d idle for %.0f s (%s); closing it", c->s->p->name, (int)c->pid,
		  (int)c->uid, VARLINK_IDLE_TIMEOUT,
		  c->out_off < c->out_len ? "it does not read its replies" :
		  c->in_len > c->in_off ? "a message is incomplete" : "nothing to do");
	client_free(c);
}

static void client_free(struct varlink_client *c)
{
	struct varlink_server *s = c->s;

	ev_io_stop(s->ev, &c->rio);
	ev_io_stop(s->ev, &c->wio);
	ev_timer_stop(s->ev, &c->idle);
	ev_timer_stop(s->ev, &c->kick);
	if (c->call)
		c->call->client = NULL;
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nclients--;
	log_debug("%s: client pid %d uid %d disconnected", s->p->name, (int)c->pid, (int)c->uid);
	free(c->in);
	free(c->out);
	free(c);
}

static void server_add_client(struct varlink_server *s, int fd, const struct ucred *cred)
{
	struct varlink_client *c = calloc(1, sizeof(*c));

	if (!c) {
		log_warnx("%s: out of memory for a client (pid %d uid %d); closing it", s->p->name, (int)cred->pid,
			  (int)cred->uid);
		close(fd);
		return;
	}
	c->s = s;
	c->fd = fd;
	c->uid = cred->uid;
	c->pid = cred->pid;
	c->last_activity = ev_now(s->ev);
	ev_io_init(&c->rio, client_read_cb, fd, EV_READ);
	ev_io_init(&c->wio, client_write_cb, fd, EV_WRITE);
	ev_timer_init(&c->idle, client_idle_cb, VARLINK_IDLE_TIMEOUT, 0.);
	ev_timer_init(&c->kick, client_kick_cb, 0., 0.);
	c->rio.data = c->wio.data = c->idle.data = c->kick.data = c;
	ev_io_start(s->ev, &c->rio);
	ev_timer_start(s->ev, &c->idle);
	c->next = s->clients;
	if (c->next)
		c->next->prev = c;
	s->clients = c;
	s->nclients++;
	log_debug("%s: client pid %d uid %d connected (%u clients)", s->p->name, (int)c->pid, (int)c->uid,
		  s->nclients);
}

static void server_accept_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct varlink_server *s = w->data;
	unsigned long missed;
	unsigned i;

	for (i = 0; i < ACCEPTS_PER_TURN; i++) {
		struct ucred cred = { .pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1 };
		socklen_t len = sizeof(cred);
		int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/* EMFILE, ENFILE, ENOBUFS...: the connection stays queued, so wait rather than spin. */
			if (log_ratelimit(&s->accept_rl, &missed))
				log_warn("%s: accept (pausing for %.0f ms; %lu similar messages suppressed)",
					 s->p->name, ACCEPT_PAUSE * 1000, missed);
			ev_io_stop(ev, &s->accept_io);
			ev_timer_start(ev, &s->accept_pause);
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			/* Unknown peers get the rights of nobody. */
			cred.pid = 0;
			cred.uid = (uid_t)-1;
		}
		if (s->nclients >= VARLINK_MAX_CLIENTS) {
			if (log_ratelimit(&s->full_rl, &missed))
				log_warnx("%s: %u clients connected, the limit; refused pid %d uid %d (%lu similar "
					  "messages suppressed)", s->p->name, s->nclients, (int)cred.pid, (int)cred.uid,
					  missed);
			close(fd);
			continue;
		}
		server_add_client(s, fd, &cred);
	}
}

static void server_resume_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct varlink_server *s = w->data;

	ev_io_start(ev, &s->accept_io);
}

int varlink_server_new(struct varlink_server **out, struct ev_loop *ev, int fd,
		       const struct varlink_server_params *p)
{
	struct varlink_server *s = calloc(1, sizeof(*s));
	int flags;

	*out = NULL;
	if (!s || !(s->tok = json_tokener_new_ex(JSON_MAX_DEPTH))) {
		free(s);
		close(fd);
		return -ENOMEM;
	}
	json_tokener_set_flags(s->tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	s->p = p;
	s->ev = ev;
	s->fd = fd;
	/* An accept racing with another process must not block the loop. */
	flags = fcntl(fd, F_GETFL);
	if (flags >= 0 && !(flags & O_NONBLOCK))
		(void)fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	log_ratelimit_init(&s->full_rl, 10000, 3);
	log_ratelimit_init(&s->accept_rl, 10000, 3);
	log_ratelimit_init(&s->output_rl, 10000, 3);
	ev_io_init(&s->accept_io, server_accept_cb, fd, EV_READ);
	ev_timer_init(&s->accept_pause, server_resume_cb, ACCEPT_PAUSE, 0.);
	s->accept_io.data = s->accept_pause.data = s;
	ev_io_start(ev, &s->accept_io);
	*out = s;
	return 0;
}

void varlink_server_free(struct varlink_server *s)
{
	if (!s)
		return;
	while (s->clients)
		client_free(s->clients);
	ev_io_stop(s->ev, &s->accept_io);
	ev_timer_stop(s->ev, &s->accept_pause);
	close(s->fd);
	json_tokener_free(s->tok);
	log_ratelimit_destroy(&s->full_rl);
	log_ratelimit_destroy(&s->accept_rl);
	log_ratelimit_destroy(&s->output_rl);
	free(s);
}
