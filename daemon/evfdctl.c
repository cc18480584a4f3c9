/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdctl: one call to evfdd's control socket (Varlink, daemon/io.evfdd.varlink), its answer printed for a
 * person or, with --json, as JSON. See evfdctl(8). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <json-c/json.h>
#include "control.h"
#include "safepath.h"
#include "util.h"

/* Exit codes (evfdctl(8)). */
enum { EXIT_OK = 0, EXIT_ERROR_REPLY = 1, EXIT_USAGE = 2 };

#define TIMEOUT_SEC 30
#define RELOAD_TIMEOUT_SEC 120	/* a reload resolves names and may wait for rings to drain */
#define MAX_REPLY (64u * 1024 * 1024)
#define JSON_PRETTY (JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE)

struct command {
	const char *name;
	const char *method;	/* without "io.evfdd." */
	int min_args, max_args;
	const char *args;	/* for a usage message: "RING LOOP" */
	int timeout_sec;
	void (*print)(struct json_object *params);
};

static void usage(FILE *f)
{
	const char *env = getenv("EVFDCTL_SOCKET");
	char *def = env && *env ? NULL : evfdd_control_default_path();

	fprintf(f,
		"Usage: evfdctl [-s SOCKET] [--json] COMMAND\n"
		"Ask evfdd, through its control socket, what it is doing, or tell it to move a ring, drain a\n"
		"backend or reload.\n\n"
		"Commands:\n"
		"  status           the daemon as a whole\n"
		"  loops            the worker loops\n"
		"  rings            the io_uring rings and the loops that own them\n"
		"  services         the services and their counters\n"
		"  backends [SERVICE]\n"
		"                   the backends of every service, or of one, with their state and counters\n"
		"  backend drain|enable SERVICE BACKEND\n"
		"                   stop giving a backend new connections (open ones carry on), or start again;\n"
		"                   lasts across reloads (root or evfdd's user)\n"
		"  move RING LOOP   move a ring, with its connections, to another loop (root or evfdd's user)\n"
		"  reload           reload the configuration and wait for the outcome (root or evfdd's user)\n\n"
		"Options:\n"
		"  -s, --socket SOCKET  the control socket (default: $EVFDCTL_SOCKET, else evfdd's default;\n"
		"                       here and now: %s)\n"
		"  -j, --json           print the answer as JSON\n"
		"  -h, --help           show this help\n"
		"  -V, --version        show the version\n\n"
		"Exit status: 0 success, 1 evfdd answered with an error, 2 usage or connection error, or a\n"
		"socket path that another user could have changed (evfdctl(8), TRUSTING THE SOCKET).\n"
		"See evfdctl(8).\n", def ? def : env ? env : "?");
	free(def);
}

/* Strings come from the daemon: control characters are shown escaped, never sent to the terminal. */
static void put_escaped(FILE *f, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch < 0x20 || ch == 0x7f)
			fprintf(f, "\\x%02x", ch);
		else
			fputc(ch, f);
	}
}

static char *escaped(const char *s)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	put_escaped(f, s);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

static void human_bytes(char *buf, size_t size, uint64_t n)
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)n;
	unsigned u = 0;

	if (n < 1024) {
		snprintf(buf, size, "%" PRIu64 " B", n);
		return;
	}
	v /= 1024;
	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	snprintf(buf, size, "%.1f %s", v, units[u]);
}

static void human_duration(char *buf, size_t size, uint64_t usec)
{
	uint64_t s = usec / 1000000;

	if (usec < 1000)
		snprintf(buf, size, "%" PRIu64 " us", usec);
	else if (usec < 1000000)
		snprintf(buf, size, "%.1f ms", (double)usec / 1000);
	else if (s < 60)
		snprintf(buf, size, "%.1f s", (double)usec / 1000000);
	else if (s < 3600)
		snprintf(buf, size, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, size, "%" PRIu64 "h %02" PRIu64 "m %02" PRIu64 "s", s / 3600, s / 60 % 60, s % 60);
	else
		snprintf(buf, size, "%" PRIu64 "d %02" PRIu64 "h %02" PRIu64 "m", s / 86400, s / 3600 % 24,
			 s / 60 % 60);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

static bool counters_only(struct json_object *o)
{
	struct json_object_iterator it = json_object_iter_begin(o), end = json_object_iter_end(o);

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
		if (!json_object_is_type(json_object_iter_peek_value(&it), json_type_int))
			return false;
	return true;
}

/* "name=N name=N" for the counters of @o that are not zero, or "none". */
static char *counters_text(struct json_object *o)
{
	struct json_object_iterator it = json_object_iter_begin(o), end = json_object_iter_end(o);
	char *buf = NULL;
	size_t len = 0;
	bool any = false;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		int64_t n = json_object_get_int64(json_object_iter_peek_value(&it));

		if (!n)
			continue;
		fputs(any ? " " : "", f);
		put_escaped(f, json_object_iter_peek_name(&it));
		fprintf(f, "=%" PRId64, n);
		any = true;
	}
	if (!any)
		fputs("none", f);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* One value as text: numbers raw, with a human form after byte counts and durations; NULL when out of
 * memory. @key decides the human form ("bytes_*", "*_usec", "time_usec" is a point in time). */
static char *format_value(const char *key, struct json_object *v)
{
	char human[64] = "", *out = NULL;
	int n = -1;

	switch (json_object_get_type(v)) {
	case json_type_null:
		return strdup("-");
	case json_type_boolean:
		return strdup(json_object_get_boolean(v) ? "yes" : "no");
	case json_type_int: {
		int64_t i = json_object_get_int64(v);

		if (i >= 0 && !strncmp(key, "bytes_", 6) && i >= 1024)
			human_bytes(human, sizeof(human), (uint64_t)i);
		else if (i >= 0 && !strcmp(key, "time_usec")) {
			time_t t = (time_t)(i / 1000000);
			struct tm tm;

			if (localtime_r(&t, &tm))
				strftime(human, sizeof(human), "%Y-%m-%d %H:%M:%S %Z", &tm);
		} else if (i >= 0 && ends_with(key, "_usec") && strcmp(key, "usec"))
			human_duration(human, sizeof(human), (uint64_t)i);
		n = human[0] ? asprintf(&out, "%" PRId64 " (%s)", i, human) : asprintf(&out, "%" PRId64, i);
		return n < 0 ? NULL : out;
	}
	case json_type_string:
		return escaped(json_object_get_string(v));
	case json_type_object:
		/* Counters by name (a service's ends): those that are not zero, "none" if all are. */
		if (counters_only(v))
			return counters_text(v);
		/* fall through */
	default:
		return escaped(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
								  JSON_C_TO_STRING_NOSLASHESCAPE));
	}
}

/* "key: value" lines, nested objects flattened to "outer.inner", a list one item per line. */
struct kv {
	char **keys, **values;
	size_t n, cap;
};

static bool kv_add(struct kv *kv, const char *key, char *value)
{
	if (!value)
		return false;
	if (kv->n == kv->cap) {
		size_t cap = kv->cap ? kv->cap * 2 : 32;
		char **k = realloc(kv->keys, cap * sizeof(*k)), **v;

		if (k)
			kv->keys = k;
		v = k ? realloc(kv->values, cap * sizeof(*v)) : NULL;
		if (!v) {
			free(value);
			return false;
		}
		kv->values = v;
		kv->cap = cap;
	}
	kv->keys[kv->n] = key ? strdup(key) : NULL;
	if (key && !kv->keys[kv->n]) {
		free(value);
		return false;
	}
	kv->values[kv->n++] = value;
	return true;
}

static bool kv_collect(struct kv *kv, const char *prefix, struct json_object *o)
{
	struct json_object_iterator it = json_object_iter_begin(o), end = json_object_iter_end(o);

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *name = json_object_iter_peek_name(&it);
		struct json_object *v = json_object_iter_peek_value(&it);
		char *key;
		bool ok = true;
		size_t i;

		if (asprintf(&key, "%s%s%s", prefix, *prefix ? "." : "", name) < 0)
			return false;
		if (json_object_is_type(v, json_type_object))
			ok = kv_collect(kv, key, v);
		else if (json_object_is_type(v, json_type_array) && json_object_array_length(v) == 0)
			ok = kv_add(kv, key, strdup("none"));
		else if (json_object_is_type(v, json_type_array))
			for (i = 0; ok && i < json_object_array_length(v); i++)
				ok = kv_add(kv, i ? NULL : key, format_value(name, json_object_array_get_idx(v, i)));
		else if (json_object_is_type(v, json_type_null))
			ok = kv_add(kv, key, strdup("none"));
		else
			ok = kv_add(kv, key, format_value(name, v));
		free(key);
		if (!ok)
			return false;
	}
	return true;
}

static void kv_free(struct kv *kv)
{
	size_t i;

	for (i = 0; i < kv->n; i++) {
		free(kv->keys[i]);
		free(kv->values[i]);
	}
	free(kv->keys);
	free(kv->values);
}

static void print_kv(struct json_object *params)
{
	struct kv kv = { 0 };
	size_t i, width = 0;

	if (!kv_collect(&kv, "", params)) {
		fprintf(stderr, "evfdctl: out of memory\n");
		kv_free(&kv);
		exit(EXIT_USAGE);
	}
	for (i = 0; i < kv.n; i++)
		if (kv.keys[i] && strlen(kv.keys[i]) + 1 > width)
			width = strlen(kv.keys[i]) + 1;
	for (i = 0; i < kv.n; i++) {
		if (kv.keys[i])
			printf("%s:%*s %s\n", kv.keys[i], (int)(width - strlen(kv.keys[i]) - 1), "", kv.values[i]);
		else
			printf("%*s %s\n", (int)width, "", kv.values[i]);
	}
	kv_free(&kv);
}

/* An array of objects as a table: one column per key of the first object, sized to its content;
 * numbers right-aligned. */
static void print_table(struct json_object *params, const char *list, const char *what)
{
	struct json_object *rows, *first;
	struct json_object_iterator it, end;
	size_t nrows, ncols = 0, r, c, *width = NULL;
	const char **cols = NULL;
	bool *right = NULL;
	char **cells = NULL;

	if (!json_object_object_get_ex(params, list, &rows) || !json_object_is_type(rows, json_type_array)) {
		fprintf(stderr, "evfdctl: the answer has no list \"%s\"; is evfdd the same version as evfdctl?\n",
			list);
		exit(EXIT_USAGE);
	}
	nrows = json_object_array_length(rows);
	if (nrows == 0) {
		printf("no %s\n", what);
		return;
	}
	first = json_object_array_get_idx(rows, 0);
	if (json_object_is_type(first, json_type_object))
		ncols = (size_t)json_object_object_length(first);
	cols = calloc(ncols + 1, sizeof(*cols));
	width = calloc(ncols + 1, sizeof(*width));
	right = calloc(ncols + 1, sizeof(*right));
	cells = calloc((nrows + 1) * (ncols + 1), sizeof(*cells));
	if (!cols || !width || !right || !cells)
		goto oom;
	c = 0;
	it = json_object_iter_begin(first);
	end = json_object_iter_end(first);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it), c++) {
		struct json_object *v = json_object_iter_peek_value(&it);

		cols[c] = json_object_iter_peek_name(&it);
		right[c] = json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
		width[c] = strlen(cols[c]);
	}
	for (r = 0; r < nrows; r++) {
		struct json_object *row = json_object_array_get_idx(rows, r), *v;

		for (c = 0; c < ncols; c++) {
			char **cell = &cells[r * ncols + c];

			if (json_object_is_type(row, json_type_object) && json_object_object_get_ex(row, cols[c], &v))
				*cell = format_value(cols[c], v);
			else
				*cell = strdup("-");
			if (!*cell)
				goto oom;
			if (strlen(*cell) > width[c])
				width[c] = strlen(*cell);
		}
	}
	for (c = 0; c < ncols; c++) {
		const char *p;

		printf(c ? "  " : "");
		if (right[c])
			printf("%*s", (int)(width[c] - strlen(cols[c])), "");
		for (p = cols[c]; *p; p++)
			putchar(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
		if (!right[c] && c + 1 < ncols)
			printf("%*s", (int)(width[c] - strlen(cols[c])), "");
	}
	putchar('\n');
	for (r = 0; r < nrows; r++) {
		for (c = 0; c < ncols; c++) {
			const char *cell = cells[r * ncols + c];

			if (c + 1 == ncols && !right[c])
				printf("%s%s", c ? "  " : "", cell);
			else
				printf("%s%*s", c ? "  " : "", right[c] ? (int)width[c] : -(int)width[c], cell);
		}
		putchar('\n');
	}
	for (r = 0; r < nrows * ncols; r++)
		free(cells[r]);
	free(cells);
	free(cols);
	free(width);
	free(right);
	return;
oom:
	fprintf(stderr, "evfdctl: out of memory\n");
	exit(EXIT_USAGE);
}

static void print_loops(struct json_object *params)
{
	print_table(params, "loops", "loops");
}

static void print_rings(struct json_object *params)
{
	print_table(params, "rings", "rings");
}

static void print_services(struct json_object *params)
{
	print_table(params, "services", "services");
}

/* The columns of a backends table; --json gives every field. */
static struct json_object *backend_row(struct json_object *b)
{
	static const char *const keys[] = { "service", "backend", "weight", "state", "health", "open",
					     "connections", "connect_failures", "bytes_up", "bytes_down" };
	struct json_object *row = json_object_new_object(), *v;

	for (size_t k = 0; row && k < sizeof(keys) / sizeof(keys[0]); k++)
		if (json_object_object_get_ex(b, keys[k], &v))
			json_object_object_add(row, keys[k], json_object_get(v));
	return row;
}

static void print_backends(struct json_object *params)
{
	struct json_object *rows, *out = json_object_new_object(), *list = json_object_new_array();

	if (json_object_object_get_ex(params, "backends", &rows) && json_object_is_type(rows, json_type_array))
		for (size_t i = 0; i < json_object_array_length(rows); i++)
			json_object_array_add(list, backend_row(json_object_array_get_idx(rows, i)));
	json_object_object_add(out, "backends", list);
	print_table(out, "backends", "backends (the echo has none)");
	json_object_put(out);
}


static int64_t get_int(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : -1;
}

static const char *get_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ?
	       json_object_get_string(v) : "";
}

static void print_backend(struct json_object *params)
{
	struct json_object *b = NULL;

	json_object_object_get_ex(params, "backend", &b);
	printf("[");
	put_escaped(stdout, get_str(b, "service"));
	printf("] backend ");
	put_escaped(stdout, get_str(b, "backend"));
	printf(": %s, %" PRId64 " open\n", get_str(b, "state"), get_int(b, "open"));
}

static void print_move(struct json_object *params)
{
	printf("ring %" PRId64 " moved from loop %" PRId64 " to loop %" PRId64 " in %" PRId64 " us\n",
	       get_int(params, "ring"), get_int(params, "from"), get_int(params, "loop"), get_int(params, "usec"));
}

static void print_reload(struct json_object *params)
{
	struct json_object *r = NULL;

	json_object_object_get_ex(params, "reload", &r);
	printf("reloaded: ");
	put_escaped(stdout, get_str(r, "summary"));
	putchar('\n');
}

static const struct command commands[] = {
	{ "status", "Status", 0, 0, "", TIMEOUT_SEC, print_kv },
	{ "loops", "Loops", 0, 0, "", TIMEOUT_SEC, print_loops },
	{ "rings", "Rings", 0, 0, "", TIMEOUT_SEC, print_rings },
	{ "services", "Services", 0, 0, "", TIMEOUT_SEC, print_services },
	{ "backends", "Backends", 0, 1, "[SERVICE]", TIMEOUT_SEC, print_backends },
	{ "backend", "SetBackendState", 3, 3, "drain|enable SERVICE BACKEND", TIMEOUT_SEC, print_backend },
	{ "move", "MoveRing", 2, 2, "RING LOOP", TIMEOUT_SEC, print_move },
	{ "reload", "Reload", 0, 0, "", RELOAD_TIMEOUT_SEC, print_reload },
};

/* An error answer, said for a person on stderr. */
static void print_error(const struct command *cmd, const char *error, struct json_object *params)
{
	const char *e = strncmp(error, "io.evfdd.", 9) ? error : error + 9;
	struct json_object *r = NULL, *errs;
	size_t i;

	fprintf(stderr, "evfdctl: %s failed: ", cmd->name);
	if (!strcmp(e, "ReloadFailed")) {
		fprintf(stderr, "evfdd keeps running on its previous configuration\n");
		json_object_object_get_ex(params, "reload", &r);
		if (json_object_object_get_ex(r, "errors", &errs) && json_object_is_type(errs, json_type_array))
			for (i = 0; i < json_object_array_length(errs); i++) {
				fputs("  ", stderr);
				put_escaped(stderr, json_object_get_string(json_object_array_get_idx(errs, i)));
				fputc('\n', stderr);
			}
		if (*get_str(r, "summary")) {
			fputs("  ", stderr);
			put_escaped(stderr, get_str(r, "summary"));
			fputc('\n', stderr);
		}
		return;
	}
	if (!strcmp(e, "NoSuchRing"))
		fprintf(stderr, "there is no ring %" PRId64 "; evfdctl rings lists them\n", get_int(params, "ring"));
	else if (!strcmp(e, "NoSuchLoop"))
		fprintf(stderr, "there is no loop %" PRId64 "; evfdctl loops lists them\n", get_int(params, "loop"));
	else if (!strcmp(e, "RingBusy")) {
		fprintf(stderr, "ring %" PRId64 " cannot move now: ", get_int(params, "ring"));
		put_escaped(stderr, get_str(params, "reason"));
		fputc('\n', stderr);
	} else if (!strcmp(e, "PermissionDenied"))
		fprintf(stderr, "permission denied: %s needs root or the user evfdd runs as\n", cmd->method);
	else if (!strcmp(e, "ShuttingDown"))
		fprintf(stderr, "evfdd is shutting down\n");
	else if (!strcmp(e, "NoSuchService")) {
		fprintf(stderr, "there is no service \"");
		put_escaped(stderr, get_str(params, "service"));
		fprintf(stderr, "\"; evfdctl services lists them\n");
	} else if (!strcmp(e, "NoSuchBackend")) {
		fprintf(stderr, "service \"");
		put_escaped(stderr, get_str(params, "service"));
		fprintf(stderr, "\" has no backend \"");
		put_escaped(stderr, get_str(params, "backend"));
		fprintf(stderr, "\"; evfdctl backends lists them, named as written in forward\n");
	}
	else {
		put_escaped(stderr, error);
		fputc(' ', stderr);
		put_escaped(stderr, json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN |
								   JSON_C_TO_STRING_NOSLASHESCAPE));
		fputc('\n', stderr);
	}
}

/* RING and LOOP: decimal, non-negative, within JSON's safe integers. */
static bool parse_index(const char *s, int64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (INT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = (int64_t)v;
	return true;
}

/* Why connecting failed, and what to do: @what is strerror's text or a longer account of the same error. */
static void connection_hint(const char *path, const char *what, int err)
{
	fprintf(stderr, "evfdctl: cannot connect to %s: %s; ", path, what);
	if (err == EACCES || err == EPERM)
		fprintf(stderr, "the socket is for root and evfdd's group: run evfdctl as root or as a member of "
			"that group\n");
	else if (err == ENAMETOOLONG)
		fprintf(stderr, "give a shorter path (at most %zu bytes without /proc)\n",
			sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
	else
		fprintf(stderr, "is evfdd running? is the socket path right (-s)?\n");
}

/*
 * connect_to - connect to evfdd's control socket at @path, if it can be trusted
 *
 * Whoever can change a directory on the way to the socket can put a server of their own there and answer in
 * evfdd's place (a Reload reported done to `systemctl reload`, made up status). So every directory from /
 * down must belong to root or the invoking user and be writable by no one else (safepath.h); the socket's own
 * directory may belong to another uid U only if the server turns out to run as U or root (a DynamicUser=
 * service's runtime directory), checked before anything is sent. Returns the fd, or -1 after saying why.
 */
static int connect_to(const char *path, int timeout_sec)
{
	struct timeval tv = { .tv_sec = timeout_sec };
	struct safepath sp;
	char err[1024] = "";
	int fd = -1, r;

	r = safepath_open(&sp, path, SAFEPATH_FOLLOW | SAFEPATH_PEER_DIR, err, sizeof(err));
	if (r < 0)
		goto fail;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "evfdctl: socket: %s\n", strerror(errno));
		goto out;
	}
	/* A daemon whose backlog is full makes connect wait: bounded by the send timeout. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	r = safepath_connect(&sp, fd, err, sizeof(err));
	if (r == -EAGAIN || r == -EINPROGRESS) {
		fprintf(stderr, "evfdctl: %s did not accept the connection within %d s; is evfdd stuck?\n", path,
			timeout_sec);
		goto out;
	}
	if (r == 0)
		r = safepath_check_peer(&sp, fd, err, sizeof(err));
	if (r == 0) {
		safepath_close(&sp);
		return fd;
	}
fail:
	if (r == -EPERM && err[0])
		fprintf(stderr, "evfdctl: refusing the control socket %s, nothing was sent: %s\n", path, err);
	else if (err[0] && r != -ENOENT && r != -EACCES)	/* @err says what to do */
		fprintf(stderr, "evfdctl: cannot connect to %s: %s\n", path, err);
	else
		connection_hint(path, err[0] ? err : strerror(-r), -r);
out:
	if (fd >= 0)
		close(fd);
	safepath_close(&sp);
	return -1;
}

static int64_t now_ms(void)
{
	return (int64_t)(util_now_us(CLOCK_MONOTONIC) / 1000);
}

/* Read up to the NUL that ends the reply, within the deadline. Returns the reply (NUL-terminated) or NULL
 * after saying why. */
static char *read_reply(int fd, const char *path, int timeout_sec, size_t *len_out)
{
	int64_t deadline = now_ms() + (int64_t)timeout_sec * 1000;
	size_t len = 0, cap = 0;
	char *buf = NULL;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int64_t left = deadline - now_ms();
		ssize_t r;
		char *nul;

		if (left <= 0) {
			fprintf(stderr, "evfdctl: no answer from evfdd on %s within %d s; is it stuck? see its log\n",
				path, timeout_sec);
			break;
		}
		r = poll(&p, 1, (int)left);
		if (r < 0 && errno != EINTR) {
			fprintf(stderr, "evfdctl: poll: %s\n", strerror(errno));
			break;
		}
		if (r <= 0)
			continue;
		if (cap - len < 4096) {
			char *n;

			cap = cap ? cap * 2 : 65536;
			if (cap > MAX_REPLY) {
				fprintf(stderr, "evfdctl: the answer from %s is larger than %u bytes\n", path,
					MAX_REPLY);
				break;
			}
			n = realloc(buf, cap);
			if (!n) {
				fprintf(stderr, "evfdctl: out of memory\n");
				break;
			}
			buf = n;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			/* A reset is evfdd closing before it read the call: a client limit, say (its log tells). */
			if (errno != ECONNRESET) {
				fprintf(stderr, "evfdctl: reading from %s: %s; did evfdd stop?\n", path,
					strerror(errno));
				break;
			}
			r = 0;
		}
		if (r == 0) {
			fprintf(stderr, "evfdctl: evfdd closed the connection on %s without answering; see its log\n",
				path);
			break;
		}
		nul = memchr(buf + len, '\0', (size_t)r);
		len += (size_t)r;
		if (nul) {
			*len_out = (size_t)(nul - buf);
			return buf;
		}
	}
	free(buf);
	return NULL;
}

static bool send_all(int fd, const char *data, size_t len)
{
	while (len) {
		ssize_t r = send(fd, data, len, MSG_NOSIGNAL);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		data += r;
		len -= (size_t)r;
	}
	return true;
}

/* The call's message, NUL included, in @text (free it). */
static char *build_call(const struct command *cmd, char *const *args, size_t *len)
{
	struct json_object *call = json_object_new_object(), *params = json_object_new_object();
	char method[64], *text = NULL;
	int64_t ring, loop;
	const char *s;

	snprintf(method, sizeof(method), "io.evfdd.%s", cmd->method);
	if (!call || !params)
		goto out;
	if (!strcmp(cmd->method, "Backends") && args[0]) {
		json_object_object_add(params, "service", json_object_new_string(args[0]));
	} else if (!strcmp(cmd->method, "SetBackendState")) {
		if (strcmp(args[0], "drain") && strcmp(args[0], "enable")) {
			fprintf(stderr, "evfdctl: backend takes drain or enable, not \"%s\"\n", args[0]);
			exit(EXIT_USAGE);
		}
		json_object_object_add(params, "service", json_object_new_string(args[1]));
		json_object_object_add(params, "backend", json_object_new_string(args[2]));
		json_object_object_add(params, "state", json_object_new_string(args[0]));
	} else if (!strcmp(cmd->method, "MoveRing")) {
		if (!parse_index(args[0], &ring) || !parse_index(args[1], &loop)) {
			fprintf(stderr, "evfdctl: move takes two numbers, RING and LOOP (see evfdctl rings and evfdctl "
				"loops), not \"%s\" \"%s\"\n", args[0], args[1]);
			exit(EXIT_USAGE);
		}
		json_object_object_add(params, "ring", json_object_new_int64(ring));
		json_object_object_add(params, "loop", json_object_new_int64(loop));
	}
	json_object_object_add(call, "method", json_object_new_string(method));
	json_object_object_add(call, "parameters", params);
	params = NULL;
	s = json_object_to_json_string_length(call, JSON_C_TO_STRING_PLAIN, len);
	if (s && (text = malloc(*len + 1))) {
		memcpy(text, s, *len + 1);	/* its NUL is the message's terminator */
		(*len)++;
	}
out:
	json_object_put(params);
	json_object_put(call);
	return text;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 }
	};
	const struct command *cmd = NULL;
	const char *env = getenv("EVFDCTL_SOCKET"), *sock = NULL;
	char *path = NULL, *msg = NULL, *reply = NULL;
	struct json_object *answer = NULL, *params, *error;
	struct json_tokener *tok = NULL;
	bool json = false;
	int c, fd = -1, rc = EXIT_USAGE;
	size_t i, len;

	while ((c = getopt_long(argc, argv, "s:jhV", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		case 'V':
			printf("evfdctl %s\n", PACKAGE_VERSION);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	/* getopt_long moved the options (also those after the command) before optind. */
	if (optind == argc) {
		fprintf(stderr, "evfdctl: no command given\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]) && !cmd; i++)
		if (!strcmp(argv[optind], commands[i].name))
			cmd = &commands[i];
	if (!cmd) {
		fprintf(stderr, "evfdctl: unknown command \"%s\"\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (argc - optind - 1 < cmd->min_args || argc - optind - 1 > cmd->max_args) {
		if (cmd->max_args)
			fprintf(stderr, "evfdctl: usage: evfdctl %s %s\n", cmd->name, cmd->args);
		else
			fprintf(stderr, "evfdctl: %s takes no arguments\n", cmd->name);
		return EXIT_USAGE;
	}
	msg = build_call(cmd, argv + optind + 1, &len);
	if (sock)
		path = strdup(sock);
	else if (env && *env)
		path = strdup(env);
	else
		path = evfdd_control_default_path();
	if (!path || !msg) {
		fprintf(stderr, "evfdctl: out of memory\n");
		goto out;
	}
	fd = connect_to(path, cmd->timeout_sec);
	if (fd < 0)
		goto out;
	if (!send_all(fd, msg, len)) {
		/* Closed before the call was read: a client limit, say, as when it is closed unanswered. */
		if (errno == EPIPE || errno == ECONNRESET)
			fprintf(stderr, "evfdctl: evfdd closed the connection on %s without answering; see its log\n",
				path);
		else
			fprintf(stderr, "evfdctl: sending to %s: %s; did evfdd stop?\n", path, strerror(errno));
		goto out;
	}
	reply = read_reply(fd, path, cmd->timeout_sec, &len);
	if (!reply)
		goto out;
	tok = json_tokener_new();
	answer = tok ? json_tokener_parse_ex(tok, reply, (int)len + 1) : NULL;
	if (!answer || !json_object_is_type(answer, json_type_object)) {
		fprintf(stderr, "evfdctl: the answer on %s is not a JSON object; is that evfdd's control socket?\n",
			path);
		goto out;
	}
	if (!json_object_object_get_ex(answer, "parameters", &params) || !json_object_is_type(params, json_type_object))
		params = NULL;
	if (json_object_object_get_ex(answer, "error", &error)) {
		if (json)
			printf("%s\n", json_object_to_json_string_ext(answer, JSON_PRETTY));
		print_error(cmd, json_object_get_string(error), params);
		rc = EXIT_ERROR_REPLY;
		goto out;
	}
	if (!params) {
		fprintf(stderr, "evfdctl: the answer on %s has no parameters; is that evfdd's control socket?\n", path);
		goto out;
	}
	if (json)
		printf("%s\n", json_object_to_json_string_ext(params, JSON_PRETTY));
	else
		cmd->print(params);
	rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_USAGE;
out:
	if (fd >= 0)
		close(fd);
	json_object_put(answer);
	if (tok)
		json_tokener_free(tok);
	free(reply);
	free(msg);
	free(path);
	return rc;
}
