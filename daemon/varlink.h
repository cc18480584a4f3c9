/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A Varlink server (varlink.org) over a listening Unix stream socket, on one libev loop: framing (one JSON
 * object and a NUL byte per message), org.varlink.service, the limits that keep one client from hurting the
 * others, and calls answered now or later. What the methods of the other interfaces do is the caller's:
 * the method callback receives every call to them.
 *
 * Input is read strictly (jsonparse.h): a message that is not valid UTF-8 and valid JSON, that is longer than
 * VARLINK_MAX_MESSAGE bytes, or that is not an object naming a method closes its connection (Varlink has no
 * error for a bad message; the answers to the calls before it go out as far as the socket takes them
 * without waiting). A method name that is not a valid Varlink name (a NUL in it, say) is
 * org.varlink.service.MethodNotFound with the name exactly as received. Parameters (or top-level fields)
 * that repeat a key, or hold a NUL in a key or a string, are org.varlink.service.InvalidParameter naming
 * the member, before the method is looked up: a method sees only flawless parameters.
 *
 * Limits, so that no client, and no set of clients of one user, can lock others out:
 * - at most VARLINK_MAX_CLIENTS clients; VARLINK_ROOT_RESERVED of those places only root (uid 0) may take,
 *   and one other uid may hold at most VARLINK_MAX_CLIENTS_PER_UID. A client over a limit is accepted
 *   and closed at once, with a rate-limited warning naming it;
 * - a message must arrive whole within VARLINK_REQUEST_TIMEOUT seconds of its first byte (the clock
 *   starts again once an earlier call of the client is answered: while a call is carried out, nothing
 *   more is read);
 * - a client with replies unread for VARLINK_REPLY_TIMEOUT seconds (its queue has not emptied since),
 *   or with more than VARLINK_MAX_OUTPUT bytes of them, is closed;
 * - a client is closed VARLINK_IDLE_TIMEOUT seconds after its last complete message or its last answer,
 *   whichever is later, unless a call of its is being carried out; bytes of an incomplete message do not
 *   count as activity.
 * Calls from one client are answered one at a time, in order.
 */
#ifndef EVFDD_VARLINK_H
#define EVFDD_VARLINK_H

#include <ev.h>
#include <stdbool.h>
#include <sys/types.h>
#include <json-c/json.h>

#define VARLINK_MAX_CLIENTS 256
#define VARLINK_ROOT_RESERVED 16		/* of VARLINK_MAX_CLIENTS, for uid 0 only */
#define VARLINK_MAX_CLIENTS_PER_UID 32		/* for every uid but 0 */
#define VARLINK_MAX_MESSAGE (64 * 1024)		/* bytes, without the NUL */
#define VARLINK_MAX_OUTPUT (4 * 1024 * 1024)	/* bytes of replies queued for one client */
#define VARLINK_REQUEST_TIMEOUT 10.0		/* seconds from a message's first byte to its NUL */
#define VARLINK_REPLY_TIMEOUT 10.0		/* seconds replies may stay unread */
#define VARLINK_IDLE_TIMEOUT 60.0		/* seconds */

struct varlink_server;
/* One call being answered: answer it exactly once with varlink_call_reply, varlink_call_error or
 * varlink_call_abort, now or later. It stays valid until then, even after its client disconnected or the
 * server was freed (the answer then goes nowhere). */
struct varlink_call;

struct varlink_interface {
	const char *name;		/* "io.example" */
	const char *description;	/* the interface definition, as GetInterfaceDescription returns it */
};

/*
 * A call to a method of one of the interfaces given to varlink_server_new. @method is the full name
 * ("io.example.Method", a valid Varlink name), @params the call's parameters (an object, {} when the call
 * had none; borrowed: valid during the callback only), as jsonparse_text made them and without flaws: no
 * duplicate key, no NUL anywhere; numbers are told apart with jsonparse_number. The callback answers now
 * or keeps @call to answer later.
 */
typedef void (*varlink_method_fn)(void *arg, struct varlink_call *call, const char *method,
				  struct json_object *params);

struct varlink_server_params {
	const char *name;		/* for log messages, e.g. "control socket" */
	/* GetInfo's answer */
	const char *vendor, *product, *version, *url;
	/* interfaces besides org.varlink.service, which the server implements itself */
	const struct varlink_interface *interfaces;
	unsigned ninterfaces;
	varlink_method_fn method;
	void *arg;
};

/*
 * varlink_server_new - serve Varlink on @fd, a listening Unix stream socket, on @ev
 *
 * Takes @fd (made non-blocking; closed by varlink_server_free, also when this fails). @p and the strings
 * and interfaces it points to must outlive the server. Returns 0 or -ENOMEM.
 */
int varlink_server_new(struct varlink_server **out, struct ev_loop *ev, int fd,
		       const struct varlink_server_params *p);

/* Close every client and the listening socket. Calls not answered yet stay valid (see above). */
void varlink_server_free(struct varlink_server *s);

/*
 * varlink_server_adopt - serve @fd, a connected stream socket, as a client accepted with the credentials
 * @uid and @pid
 *
 * For tests and fuzzing (tests/fuzz-varlink.c hands over one end of a socketpair): the client is subject
 * to the same limits as an accepted one. Takes @fd (made non-blocking; closed at once when a limit
 * refuses it). Returns 0, -EUSERS when a client limit refused it, or -ENOMEM.
 */
int varlink_server_adopt(struct varlink_server *s, int fd, uid_t uid, pid_t pid);

/* The full method name and the peer's credentials (SO_PEERCRED, taken at accept; uid (uid_t)-1 and pid 0
 * when they could not be read). */
const char *varlink_call_method(const struct varlink_call *call);
uid_t varlink_call_uid(const struct varlink_call *call);
pid_t varlink_call_pid(const struct varlink_call *call);

/* Answer with @params (ownership taken; NULL means {}). Frees @call. */
void varlink_call_reply(struct varlink_call *call, struct json_object *params);
/* Answer with the error @error ("iface.ErrorName") and its @params (ownership taken; NULL means {}). */
void varlink_call_error(struct varlink_call *call, const char *error, struct json_object *params);
/* The common errors of org.varlink.service. */
void varlink_call_method_not_found(struct varlink_call *call);
void varlink_call_invalid_parameter(struct varlink_call *call, const char *parameter);
/* The same for a name of @len bytes that may hold NUL bytes: sent exactly as received. */
void varlink_call_invalid_parameter_len(struct varlink_call *call, const char *parameter, size_t len);
/* The first key of @params that is not in @allowed (NULL-terminated), or NULL: the parameter to name in an
 * InvalidParameter error. */
const char *varlink_unknown_parameter(struct json_object *params, const char *const *allowed);

/* No answer can be built (out of memory): close the connection instead, after logging @why. */
void varlink_call_abort(struct varlink_call *call, const char *why);

#endif
