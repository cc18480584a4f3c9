/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A Varlink server on one libev loop; see varlink.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>
#include "jsonparse.h"
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
/* Varlink's longest interface name. */
#define INTERFACE_MAX 255

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
	/* As received, NUL-terminated; an invalid name may hold NUL bytes before method_len. */
	char *method;
	size_t method_len;
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
	TAILQ_HEAD(, varlink_client) clients;
	unsigned nclients, nroot;	/* clients, and those of them with uid 0 */
	/* Limits hit again and again by outside events: warn, but not thousands of times (each limit on its
	 * own, so that one flood does not hide another). */
	struct log_ratelimit full_rl, others_rl, uid_rl, accept_rl, output_rl, slow_rl;
};

struct varlink_client {
	struct varlink_server *s;
	TAILQ_ENTRY(varlink_client) link;
	int fd;
	uid_t uid;
	pid_t pid;
	ev_io rio, wio;
	ev_timer deadline;	/* the client's earliest deadline (client_deadline) */
	ev_timer kick;		/* carry on next iteration: the turn ended, or a late answer came */
	/* Input: [in_off, in_len) not handled yet; [in_off, in_scan) holds no NUL. */
	char *in;
	size_t in_off, in_scan, in_len, in_cap;
	/* Output: [out_off, out_len) not written yet. */
	char *out;
	size_t out_off, out_len, out_cap;
	/* What the deadlines count from: the last complete message received or answer given; the first byte
	 * of the incomplete message that ends the input (when partial); the moment the output queue last
	 * went from empty to not empty. */
	ev_tstamp last_done, partial_since, out_since;
	bool partial;
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
	if (pending == 0)
		c->out_since = ev_now(c->s->ev);
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
		c->last_done = ev_now(c->s->ev);
		/* Nothing was read while the call was carried out: the incomplete message's clock starts
		 * again. */
		if (c->partial)
			c->partial_since = c->last_done;
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

/* An error whose parameters are one string of @len bytes, as most of org.varlink.service's are: sent exactly
 * as given, NUL bytes included (json-c writes them as \u0000). */
static void call_error_string_len(struct varlink_call *call, const char *error, const char *key, const char *value,
				  size_t len)
{
	struct json_object *params = json_object_new_object(), *v = NULL;

	/* (Every message is shorter than VARLINK_MAX_MESSAGE: an int holds any length received.) */
	if (len <= VARLINK_MAX_MESSAGE)
		v = json_object_new_string_len(value, (int)len);
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

static void call_error_string(struct varlink_call *call, const char *error, const char *key, const char *value)
{
	call_error_string_len(call, error, key, value, strlen(value));
}

void varlink_call_method_not_found(struct varlink_call *call)
{
	call_error_string_len(call, VARLINK_SERVICE ".MethodNotFound", "method", call->method, call->method_len);
}

void varlink_call_invalid_parameter(struct varlink_call *call, const char *parameter)
{
	call_error_string(call, VARLINK_SERVICE ".InvalidParameter", "parameter", parameter);
}

void varlink_call_invalid_parameter_len(struct varlink_call *call, const char *parameter, size_t len)
{
	call_error_string_len(call, VARLINK_SERVICE ".InvalidParameter", "parameter", parameter, len);
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

static bool is_alnum(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

/* A Varlink method name: an interface name (reverse-domain: two or more dot-separated labels of ASCII
 * letters, digits and hyphens, the first starting with a letter, none starting or ending with a hyphen;
 * at most INTERFACE_MAX bytes), a dot, and a member name ([A-Z][A-Za-z0-9]*). Any byte may be at @name,
 * NUL included. */
static bool method_name_valid(const char *name, size_t len)
{
	const char *dot = memrchr(name, '.', len), *p;
	size_t iface_len, i, start = 0;
	unsigned labels = 0;

	if (!dot || dot + 1 == name + len || dot[1] < 'A' || dot[1] > 'Z')
		return false;
	for (p = dot + 2; p < name + len; p++)
		if (!is_alnum(*p))
			return false;
	iface_len = (size_t)(dot - name);
	if (iface_len > INTERFACE_MAX)
		return false;
	for (i = 0; i <= iface_len; i++) {
		if (i < iface_len && name[i] != '.') {
			if (!is_alnum(name[i]) && name[i] != '-')
				return false;
			continue;
		}
		if (i == start || name[start] == '-' || name[i - 1] == '-' ||
		    (labels == 0 && !((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z'))))
			return false;
		labels++;
		start = i + 1;
	}
	return labels >= 2;
}

static struct varlink_call *call_new(struct varlink_client *c, const char *method, size_t len)
{
	struct varlink_call *call = calloc(1, sizeof(*call));

	if (!call || !(call->method = malloc(len + 1))) {
		free(call);
		return NULL;
	}
	memcpy(call->method, method, len);
	call->method[len] = '\0';
	call->method_len = len;
	call->client = c;
	call->uid = c->uid;
	call->pid = c->pid;
	return call;
}

/* The member at fault among a call's own fields, as jsonparse_flaw names it. Not a flaw within "method"
 * (a NUL in the name: MethodNotFound) or within "parameters" (the parameter at fault is named instead). */
static bool call_fields_flawed(struct json_object *m, const char **key, size_t *len)
{
	enum jsonparse_flaw f = jsonparse_flaw(m, key, len);

	if (f == JSONPARSE_FLAW_WITHIN && ((*len == 6 && !memcmp(*key, "method", 6)) ||
					   (*len == 10 && !memcmp(*key, "parameters", 10))))
		return false;
	return f != JSONPARSE_FLAW_NONE;
}

/* One message (without its NUL). A message that is not a call closes the connection. */
static void client_handle(struct varlink_client *c, const char *msg, size_t len)
{
	struct varlink_server *s = c->s;
	struct json_object *m = NULL, *v, *params = NULL;
	struct jsonparse_error err;
	struct varlink_call *call;
	const char *bad = NULL, *flaw = NULL;
	size_t flaw_len = 0;
	bool oneway, more, upgrade, flawed, valid;
	int r;

	c->last_done = ev_now(s->ev);
	r = jsonparse_text(msg, len, JSON_MAX_DEPTH, &m, &err);
	if (r == -ENOMEM) {
		log_warnx("%s: client pid %d uid %d: out of memory reading a %zu-byte message; closing it", s->p->name,
			  (int)c->pid, (int)c->uid, len);
		c->closing = true;
		goto out;
	}
	if (r < 0) {
		/* Invalid UTF-8 is malformed JSON too: JSON texts are UTF-8 (RFC 8259). */
		log_debug("%s: client pid %d uid %d sent malformed JSON (%s, at byte %zu); closing it", s->p->name,
			  (int)c->pid, (int)c->uid, err.what, err.offset);
		c->closing = true;
		goto out;
	}
	if (!json_object_is_type(m, json_type_object) || !json_object_object_get_ex(m, "method", &v) ||
	    !json_object_is_type(v, json_type_string)) {
		log_debug("%s: client pid %d uid %d sent a message that is not a call (an object with a \"method\" "
			  "string); closing it", s->p->name, (int)c->pid, (int)c->uid);
		c->closing = true;
		goto out;
	}
	call = call_new(c, json_object_get_string(v), (size_t)json_object_get_string_len(v));
	if (!call) {
		log_warnx("%s: client pid %d uid %d: out of memory for a call; closing it", s->p->name, (int)c->pid,
			  (int)c->uid);
		c->closing = true;
		goto out;
	}
	c->call = call;
	if (!call_flag(m, "oneway", &oneway))
		bad = "oneway";
	call->oneway = oneway;
	/* A repeated field (which value would count? "oneway" keeps its first) or one holding a NUL. */
	flawed = call_fields_flawed(m, &flaw, &flaw_len);
	if (!bad && !call_flag(m, "more", &more))
		bad = "more";
	if (!bad && !call_flag(m, "upgrade", &upgrade))
		bad = "upgrade";
	/* Nothing here streams replies or upgrades the connection. */
	if (!bad && more)
		bad = "more";
	if (!bad && upgrade)
		bad = "upgrade";
	valid = method_name_valid(call->method, call->method_len);
	log_debug("%s: client pid %d uid %d calls %s%s", s->p->name, (int)c->pid, (int)c->uid,
		  valid ? call->method : "a method whose name is not valid", call->oneway ? " (oneway)" : "");
	if (!flawed && !bad && !valid) {
		varlink_call_method_not_found(call);
		goto out;
	}
	if (!flawed && !bad && json_object_object_get_ex(m, "parameters", &v) &&
	    !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_object))
			bad = "parameters";
		else if (!(flawed = jsonparse_flaw(v, &flaw, &flaw_len) != JSONPARSE_FLAW_NONE))
			params = json_object_get(v);
	}
	if (flawed)
		varlink_call_invalid_parameter_len(call, flaw, flaw_len);
	else if (bad)
		varlink_call_invalid_parameter(call, bad);
	else if (!params && !(params = json_object_new_object()))
		varlink_call_abort(call, "out of memory");
	else
		client_dispatch(c, call, params);
out:
	json_object_put(params);
	json_object_put(m);
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

/* Write what is pending, as far as the socket takes it now; on a write error, drop it and set closing. */
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
				c->out_off = c->out_len;
			}
			return;
		}
		c->out_off += (size_t)r;
	}
	c->out_off = c->out_len = 0;
}

enum deadline { DEADLINE_NONE, DEADLINE_IDLE, DEADLINE_REQUEST, DEADLINE_REPLY };

/* The earliest of the deadlines that apply to @c now (varlink.h), and which it is. */
static ev_tstamp client_deadline(const struct varlink_client *c, enum deadline *which)
{
	ev_tstamp at = 0;

	*which = DEADLINE_NONE;
	/* While a call is carried out the client waits for us: neither idle nor slow. */
	if (!c->call) {
		at = c->last_done + VARLINK_IDLE_TIMEOUT;
		*which = DEADLINE_IDLE;
		if (c->partial && c->partial_since + VARLINK_REQUEST_TIMEOUT < at) {
			at = c->partial_since + VARLINK_REQUEST_TIMEOUT;
			*which = DEADLINE_REQUEST;
		}
	}
	if (c->out_off < c->out_len && (*which == DEADLINE_NONE || c->out_since + VARLINK_REPLY_TIMEOUT < at)) {
		at = c->out_since + VARLINK_REPLY_TIMEOUT;
		*which = DEADLINE_REPLY;
	}
	return at;
}

/* Set the deadline timer to the earliest deadline; recomputed after every change of state, because a new
 * one (a reply queued, a message begun) can be earlier than the one set. */
static void client_arm(struct varlink_client *c)
{
	struct ev_loop *ev = c->s->ev;
	enum deadline which;
	ev_tstamp at = client_deadline(c, &which), left = at - ev_now(ev);

	ev_timer_stop(ev, &c->deadline);
	if (which == DEADLINE_NONE)
		return;
	ev_timer_set(&c->deadline, left > 0 ? left : 0., 0.);
	ev_timer_start(ev, &c->deadline);
}

/* Bring the watchers in line with the client's state; close it when it is done or failed. Returns false
 * when @c was freed. */
static bool client_settle(struct varlink_client *c)
{
	struct ev_loop *ev = c->s->ev;
	bool waiting = c->call || ev_is_active(&c->kick);

	/* Also when closing: the answers to the calls before a bad message go out if the socket takes them
	 * without waiting. */
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
	client_arm(c);
	return true;
}

static void client_read_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct varlink_client *c = w->data;
	const char *nul;
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
	/* An incomplete message's clock runs from its first byte: later bytes of it do not restart it. */
	nul = r > 0 ? memrchr(c->in + c->in_len, '\0', (size_t)r) : NULL;
	if (nul) {
		c->partial = nul + 1 < c->in + c->in_len + r;
		c->partial_since = ev_now(ev);
	} else if (r > 0 && !c->partial) {
		c->partial = true;
		c->partial_since = ev_now(ev);
	}
	c->in_len += (size_t)r;
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

static void client_deadline_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct varlink_client *c = w->data;
	struct varlink_server *s = c->s;
	enum deadline which;
	unsigned long missed;

	if (client_deadline(c, &which) > ev_now(ev)) {
		client_arm(c);
		return;
	}
	switch (which) {
	case DEADLINE_IDLE:
		log_debug("%s: client pid %d uid %d idle for %.0f s; closing it", s->p->name, (int)c->pid,
			  (int)c->uid, VARLINK_IDLE_TIMEOUT);
		break;
	case DEADLINE_REQUEST:
		if (log_ratelimit(&s->slow_rl, &missed))
			log_warnx("%s: client pid %d uid %d sent %zu bytes of a message but not its end within %.0f s; "
				  "closing it (a client must send each message whole; %lu similar messages "
				  "suppressed)", s->p->name, (int)c->pid, (int)c->uid, c->in_len - c->in_off,
				  VARLINK_REQUEST_TIMEOUT, missed);
		break;
	case DEADLINE_REPLY:
		if (log_ratelimit(&s->output_rl, &missed))
			log_warnx("%s: client pid %d uid %d does not read its replies (%zu bytes unread for %.0f s, the "
				  "limit); closing it (%lu similar messages suppressed)", s->p->name, (int)c->pid,
				  (int)c->uid, c->out_len - c->out_off, VARLINK_REPLY_TIMEOUT, missed);
		break;
	case DEADLINE_NONE:
		return;
	}
	client_free(c);
}

static void client_free(struct varlink_client *c)
{
	struct varlink_server *s = c->s;

	ev_io_stop(s->ev, &c->rio);
	ev_io_stop(s->ev, &c->wio);
	ev_timer_stop(s->ev, &c->deadline);
	ev_timer_stop(s->ev, &c->kick);
	if (c->call)
		c->call->client = NULL;
	close(c->fd);
	TAILQ_REMOVE(&s->clients, c, link);
	s->nclients--;
	if (c->uid == 0)
		s->nroot--;
	log_debug("%s: client pid %d uid %d disconnected", s->p->name, (int)c->pid, (int)c->uid);
	free(c->in);
	free(c->out);
	free(c);
}

/* Whether the client limits leave a place for one more client of @uid; logs why not, naming the peer. */
static bool server_admit(struct varlink_server *s, uid_t uid, pid_t pid)
{
	unsigned others = s->nclients - s->nroot, same = 0;
	const struct varlink_client *c;
	unsigned long missed;

	if (s->nclients >= VARLINK_MAX_CLIENTS) {
		if (log_ratelimit(&s->full_rl, &missed))
			log_warnx("%s: %u clients connected, the limit; refused pid %d uid %d (clients that stay "
				  "connected are closed after %.0f s idle; %lu similar messages suppressed)", s->p->name,
				  s->nclients, (int)pid, (int)uid, VARLINK_IDLE_TIMEOUT, missed);
		return false;
	}
	if (uid == 0)
		return true;
	if (others >= VARLINK_MAX_CLIENTS - VARLINK_ROOT_RESERVED) {
		if (log_ratelimit(&s->others_rl, &missed))
			log_warnx("%s: %u clients of users other than root connected, their limit (%d more places are "
				  "kept for root); refused pid %d uid %d (%lu similar messages suppressed)", s->p->name,
				  others, VARLINK_ROOT_RESERVED, (int)pid, (int)uid, missed);
		return false;
	}
	TAILQ_FOREACH(c, &s->clients, link)
		same += c->uid == uid;
	if (same >= VARLINK_MAX_CLIENTS_PER_UID) {
		if (log_ratelimit(&s->uid_rl, &missed))
			log_warnx("%s: uid %d has %u clients connected, the limit for one user; refused pid %d uid %d "
				  "(that user should close the connections it does not use; %lu similar messages "
				  "suppressed)", s->p->name, (int)uid, same, (int)pid, (int)uid, missed);
		return false;
	}
	return true;
}

/* Takes @fd: it becomes a client, or is closed. */
static int server_add_client(struct varlink_server *s, int fd, uid_t uid, pid_t pid)
{
	struct varlink_client *c;

	if (!server_admit(s, uid, pid)) {
		close(fd);
		return -EUSERS;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		log_warnx("%s: out of memory for a client (pid %d uid %d); closing it", s->p->name, (int)pid,
			  (int)uid);
		close(fd);
		return -ENOMEM;
	}
	c->s = s;
	c->fd = fd;
	c->uid = uid;
	c->pid = pid;
	c->last_done = ev_now(s->ev);
	ev_io_init(&c->rio, client_read_cb, fd, EV_READ);
	ev_io_init(&c->wio, client_write_cb, fd, EV_WRITE);
	ev_timer_init(&c->deadline, client_deadline_cb, VARLINK_IDLE_TIMEOUT, 0.);
	ev_timer_init(&c->kick, client_kick_cb, 0., 0.);
	c->rio.data = c->wio.data = c->deadline.data = c->kick.data = c;
	ev_io_start(s->ev, &c->rio);
	TAILQ_INSERT_HEAD(&s->clients, c, link);
	s->nclients++;
	if (uid == 0)
		s->nroot++;
	client_arm(c);
	log_debug("%s: client pid %d uid %d connected (%u clients)", s->p->name, (int)c->pid, (int)c->uid,
		  s->nclients);
	return 0;
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
			/* Set again each time: a one-shot timer that fired is left with no time to run. */
			ev_timer_set(&s->accept_pause, ACCEPT_PAUSE, 0.);
			ev_timer_start(ev, &s->accept_pause);
			return;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
			/* Unknown peers get the rights of nobody. */
			cred.pid = 0;
			cred.uid = (uid_t)-1;
		}
		server_add_client(s, fd, cred.uid, cred.pid);
	}
}

static void server_resume_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct varlink_server *s = w->data;

	ev_io_start(ev, &s->accept_io);
}

/* Make @fd non-blocking, if it is not: an accept racing with another process, or a client that stops
 * reading, must not block the loop. */
static void set_nonblocking(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags >= 0 && !(flags & O_NONBLOCK))
		(void)fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int varlink_server_new(struct varlink_server **out, struct ev_loop *ev, int fd,
		       const struct varlink_server_params *p)
{
	struct varlink_server *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s) {
		close(fd);
		return -ENOMEM;
	}
	s->p = p;
	TAILQ_INIT(&s->clients);
	s->ev = ev;
	s->fd = fd;
	set_nonblocking(fd);
	log_ratelimit_init(&s->full_rl, 10000, 3);
	log_ratelimit_init(&s->others_rl, 10000, 3);
	log_ratelimit_init(&s->uid_rl, 10000, 3);
	log_ratelimit_init(&s->accept_rl, 10000, 3);
	log_ratelimit_init(&s->output_rl, 10000, 3);
	log_ratelimit_init(&s->slow_rl, 10000, 3);
	ev_io_init(&s->accept_io, server_accept_cb, fd, EV_READ);
	ev_timer_init(&s->accept_pause, server_resume_cb, ACCEPT_PAUSE, 0.);
	s->accept_io.data = s->accept_pause.data = s;
	ev_io_start(ev, &s->accept_io);
	*out = s;
	return 0;
}

int varlink_server_adopt(struct varlink_server *s, int fd, uid_t uid, pid_t pid)
{
	set_nonblocking(fd);
	return server_add_client(s, fd, uid, pid);
}

void varlink_server_free(struct varlink_server *s)
{
	if (!s)
		return;
	while (!TAILQ_EMPTY(&s->clients))
		client_free(TAILQ_FIRST(&s->clients));
	ev_io_stop(s->ev, &s->accept_io);
	ev_timer_stop(s->ev, &s->accept_pause);
	close(s->fd);
	log_ratelimit_destroy(&s->full_rl);
	log_ratelimit_destroy(&s->others_rl);
	log_ratelimit_destroy(&s->uid_rl);
	log_ratelimit_destroy(&s->accept_rl);
	log_ratelimit_destroy(&s->output_rl);
	log_ratelimit_destroy(&s->slow_rl);
	free(s);
}
