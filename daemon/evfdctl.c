/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* evfdctl: one call to evfdd's control socket (Varlink, daemon/io.evfdd.varlink), its answer printed for a
 * person or, with --json, as JSON. See evfdctl(8). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
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
#define UPGRADE_TIMEOUT_SEC 60	/* the new binary's check, then the new image taking over */
#define MAX_REPLY (64u * 1024 * 1024)
#define JSON_PRETTY (JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE)

/* What the options asked for, beyond the socket. */
struct options {
	bool json;
	double interval;	/* top: seconds between refreshes; 0 when not given */
	int64_t iterations;	/* top: refreshes before it exits; 0 when not given */
};

struct command {
	const char *name;
	const char *method;	/* without "io.evfdd."; NULL for a command that makes calls of its own (run) */
	int min_args, max_args;
	const char *args;	/* for a usage message: "RING LOOP" */
	int timeout_sec;
	void (*print)(struct json_object *params);
	int (*run)(const char *path, const struct options *o);	/* returns the exit status */
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
		"  reload           reload the configuration and wait for the outcome (root or evfdd's user)\n"
		"  upgrade          execute evfdd's binary again in place, keeping every connection, and wait\n"
		"                   for the new image to take over (root or evfdd's user)\n"
		"  metrics          the counters in Prometheus's text format, as GET /metrics serves them\n"
		"  top [-i SECONDS] [-n N]\n"
		"                   rates per service and per loop, refreshed in place (q quits); without a\n"
		"                   terminal, N plain blocks (default 1)\n\n"
		"Options:\n"
		"  -s, --socket SOCKET  the control socket (default: $EVFDCTL_SOCKET, else evfdd's default;\n"
		"                       here and now: %s)\n"
		"  -j, --json           print the answer as JSON\n"
		"  -i, --interval SECONDS\n"
		"                       top: seconds between refreshes, 0.1 to 3600 (default 1)\n"
		"  -n, --iterations N   top: exit after N refreshes\n"
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

/* The exposition text exactly as sent: it ends with its own newline. */
static void print_metrics(struct json_object *params)
{
	struct json_object *t;

	if (!json_object_object_get_ex(params, "text", &t) || !json_object_is_type(t, json_type_string)) {
		fprintf(stderr, "evfdctl: the answer has no string \"text\"; is evfdd the same version as evfdctl?\n");
		exit(EXIT_USAGE);
	}
	fwrite(json_object_get_string(t), 1, (size_t)json_object_get_string_len(t), stdout);
}

static int run_top(const char *path, const struct options *o);
static int run_upgrade(const char *path, const struct options *o);

static const struct command commands[] = {
	{ "status", "Status", 0, 0, "", TIMEOUT_SEC, print_kv, NULL },
	{ "loops", "Loops", 0, 0, "", TIMEOUT_SEC, print_loops, NULL },
	{ "rings", "Rings", 0, 0, "", TIMEOUT_SEC, print_rings, NULL },
	{ "services", "Services", 0, 0, "", TIMEOUT_SEC, print_services, NULL },
	{ "backends", "Backends", 0, 1, "[SERVICE]", TIMEOUT_SEC, print_backends, NULL },
	{ "backend", "SetBackendState", 3, 3, "drain|enable SERVICE BACKEND", TIMEOUT_SEC, print_backend, NULL },
	{ "move", "MoveRing", 2, 2, "RING LOOP", TIMEOUT_SEC, print_move, NULL },
	{ "reload", "Reload", 0, 0, "", RELOAD_TIMEOUT_SEC, print_reload, NULL },
	{ "metrics", "Metrics", 0, 0, "", TIMEOUT_SEC, print_metrics, NULL },
	{ "top", NULL, 0, 0, "", TIMEOUT_SEC, NULL, run_top },
	{ "upgrade", NULL, 0, 0, "", UPGRADE_TIMEOUT_SEC, NULL, run_upgrade },
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
	} else if (!strcmp(error, "org.varlink.service.MethodNotFound")) {
		fprintf(stderr, "evfdd does not know the call ");
		put_escaped(stderr, get_str(params, "method"));
		fprintf(stderr, "; is it older than evfdctl (evfdctl -V, evfdctl status)?\n");
	} else if (!strcmp(e, "PermissionDenied"))
		fprintf(stderr, "permission denied: %s needs root or the user evfdd runs as\n", cmd->method);
	else if (!strcmp(e, "ShuttingDown"))
		fprintf(stderr, "evfdd is shutting down\n");
	else if (!strcmp(e, "UpgradeRefused")) {
		fprintf(stderr, "refused, evfdd goes on with its current binary: ");
		put_escaped(stderr, get_str(params, "reason"));
		fputc('\n', stderr);
	}
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

/*
 * call - make one call on the connected @fd and wait for its answer
 * @cmd: the command, for the messages
 * @msg, @len: the call, NUL included (build_call)
 * @json: print an error answer whole on stdout too (--json)
 * @params: receives the answer's parameters on success (a reference of its own: put it)
 *
 * Returns EXIT_OK; EXIT_ERROR_REPLY after saying on stderr what the error answer means; or EXIT_USAGE after
 * saying why there is no answer, or why it is not one.
 */
static int call(int fd, const char *path, const struct command *cmd, const char *msg, size_t len, bool json,
		struct json_object **params)
{
	struct json_object *answer = NULL, *p, *error;
	struct json_tokener *tok = NULL;
	char *reply = NULL;
	int rc = EXIT_USAGE;

	*params = NULL;
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
	if (!json_object_object_get_ex(answer, "parameters", &p) || !json_object_is_type(p, json_type_object))
		p = NULL;
	if (json_object_object_get_ex(answer, "error", &error)) {
		if (json)
			printf("%s\n", json_object_to_json_string_ext(answer, JSON_PRETTY));
		print_error(cmd, json_object_get_string(error), p);
		rc = EXIT_ERROR_REPLY;
		goto out;
	}
	if (!p) {
		fprintf(stderr, "evfdctl: the answer on %s has no parameters; is that evfdd's control socket?\n", path);
		goto out;
	}
	*params = json_object_get(p);
	rc = EXIT_OK;
out:
	json_object_put(answer);
	if (tok)
		json_tokener_free(tok);
	free(reply);
	return rc;
}

/* ---- upgrade: the call, then Status until the new image has taken over ------------------------------ */

/* One Status call; with @quiet, nothing is said when evfdd cannot be reached (it is between two images). */
static struct json_object *status_of(const char *path, bool quiet)
{
	static const struct command st = { "upgrade", "Status", 0, 0, "", TIMEOUT_SEC, NULL, NULL };
	struct json_object *params = NULL;
	int fd, saved = -1, null = -1;
	size_t len;
	char *msg = build_call(&st, NULL, &len);

	if (!msg)
		return NULL;
	if (quiet) {
		/* The old image is gone and the new one not listening yet: connection errors are expected. */
		fflush(stderr);
		saved = dup(2);
		null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (saved >= 0 && null >= 0)
			dup2(null, 2);
	}
	fd = connect_to(path, TIMEOUT_SEC);
	if (fd >= 0) {
		(void)call(fd, path, &st, msg, len, false, &params);
		close(fd);
	}
	if (saved >= 0) {
		fflush(stderr);
		dup2(saved, 2);
		close(saved);
	}
	if (null >= 0)
		close(null);
	free(msg);
	return params;
}

static int run_upgrade(const char *path, const struct options *o)
{
	static const struct command up = { "upgrade", "Upgrade", 0, 0, "", UPGRADE_TIMEOUT_SEC, NULL, NULL };
	struct json_object *before, *params = NULL, *last = NULL;
	int64_t deadline, n0, pid0, up0, sent;
	int fd, rc;
	size_t len;
	char *msg;

	(void)o;
	before = status_of(path, false);
	if (!before)
		return EXIT_USAGE;
	n0 = get_int(before, "upgrades");
	pid0 = get_int(before, "pid");
	json_object_put(before);
	msg = build_call(&up, NULL, &len);
	fd = msg ? connect_to(path, UPGRADE_TIMEOUT_SEC) : -1;
	if (fd < 0) {
		free(msg);
		return EXIT_USAGE;
	}
	sent = now_ms();
	rc = call(fd, path, &up, msg, len, false, &params);
	close(fd);
	free(msg);
	if (rc != EXIT_OK)
		return rc;
	printf("evfdd (pid %" PRId64 ") executes ", pid0);
	put_escaped(stdout, get_str(params, "binary"));
	printf(" again; waiting for it to take over\n");
	fflush(stdout);
	json_object_put(params);
	params = NULL;
	/* The old image answered before handing over: watch for the new one (a higher count). */
	deadline = now_ms() + UPGRADE_TIMEOUT_SEC * 1000;
	up0 = -1;
	while (now_ms() < deadline) {
		struct json_object *st = status_of(path, true);
		int64_t n = st ? get_int(st, "upgrades") : -1, uptime = st ? get_int(st, "uptime_usec") : -1;

		/* A higher count, or an image younger than the call (a clean start after a refused state). */
		if (st && !strcmp(get_str(st, "state"), "running") &&
		    (n > n0 || (uptime >= 0 && uptime / 1000 < now_ms() - sent))) {
			params = st;
			break;
		}
		if (st && n == n0 && !strcmp(get_str(st, "state"), "running")) {
			/* Still the old image, running again: the hand-over failed (its log says why). */
			if (up0 >= 0 && uptime > up0) {
				json_object_put(st);
				fprintf(stderr, "evfdctl: upgrade failed: evfdd carried on with its old binary; see its "
					"log\n");
				return EXIT_ERROR_REPLY;
			}
			up0 = uptime;
		}
		json_object_put(st);
		usleep(50 * 1000);
	}
	if (!params) {
		fprintf(stderr, "evfdctl: evfdd did not come back from the upgrade within %d s; see its log\n",
			UPGRADE_TIMEOUT_SEC);
		return EXIT_USAGE;
	}
	json_object_object_get_ex(params, "last_upgrade", &last);
	if (*get_str(last, "fallback")) {
		printf("upgraded to evfdd %s (pid %" PRId64 "), but the connections were lost: ", get_str(params, "version"),
		       get_int(params, "pid"));
		put_escaped(stdout, get_str(last, "fallback"));
		putchar('\n');
		json_object_put(params);
		return EXIT_ERROR_REPLY;
	}
	printf("upgraded to evfdd ");
	put_escaped(stdout, get_str(params, "version"));
	printf(" (pid %" PRId64 "): %" PRId64 " connection%s carried over in %.1f ms", get_int(params, "pid"),
	       get_int(last, "connections"), get_int(last, "connections") == 1 ? "" : "s",
	       (double)get_int(last, "pause_usec") / 1000.0);
	if (get_int(last, "lost") > 0)
		printf(", %" PRId64 " lost (see evfdd's log)", get_int(last, "lost"));
	putchar('\n');
	json_object_put(params);
	return fflush(stdout) == 0 ? EXIT_OK : EXIT_USAGE;
}

/* ---- top: rates per service and per loop, from successive Status, Services and Loops answers ----------- */

/* One look at the daemon: the answers' parameters (NULL for one not valid) and when it was taken. */
struct sample {
	struct json_object *status, *services, *loops;
	int64_t usec;	/* CLOCK_MONOTONIC, just before the first call */
};

static void sample_free(struct sample *s)
{
	json_object_put(s->status);
	json_object_put(s->services);
	json_object_put(s->loops);
	memset(s, 0, sizeof(*s));
}

/* @params's array @key, or NULL when it has none (an older or newer daemon): its rows show as missing. */
static struct json_object *take_list(struct json_object *params, const char *key)
{
	struct json_object *v = NULL;

	if (!json_object_object_get_ex(params, key, &v) || !json_object_is_type(v, json_type_array))
		v = NULL;
	json_object_get(v);
	json_object_put(params);
	return v;
}

/*
 * sample_take - ask evfdd at @path for Status, Services and Loops, one call after the other on one connection
 * @s: receives the answers (sample_free it, also after a failure)
 *
 * Returns EXIT_OK, or the exit status after saying why not (as the other commands do).
 */
static int sample_take(const char *path, struct sample *s)
{
	static const struct command calls[] = {
		{ "top", "Status", 0, 0, "", TIMEOUT_SEC, NULL, NULL },
		{ "top", "Services", 0, 0, "", TIMEOUT_SEC, NULL, NULL },
		{ "top", "Loops", 0, 0, "", TIMEOUT_SEC, NULL, NULL },
	};
	struct json_object *params[3] = { NULL };
	int fd, rc = EXIT_OK;
	size_t i, len;

	fd = connect_to(path, TIMEOUT_SEC);
	if (fd < 0)
		return EXIT_USAGE;
	s->usec = (int64_t)util_now_us(CLOCK_MONOTONIC);
	for (i = 0; i < 3 && rc == EXIT_OK; i++) {
		char *msg = build_call(&calls[i], NULL, &len);

		if (!msg) {
			fprintf(stderr, "evfdctl: out of memory\n");
			rc = EXIT_USAGE;
			break;
		}
		rc = call(fd, path, &calls[i], msg, len, false, &params[i]);
		free(msg);
	}
	close(fd);
	if (rc != EXIT_OK) {
		for (i = 0; i < 3; i++)
			json_object_put(params[i]);
		return rc;
	}
	s->status = params[0];
	s->services = take_list(params[1], "services");
	s->loops = take_list(params[2], "loops");
	return EXIT_OK;
}

/* @o's member @key if it is a count (an integer, not negative): true with *@out set. */
static bool count_of(struct json_object *o, const char *key, uint64_t *out)
{
	struct json_object *v;
	int64_t i;

	if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return false;
	i = json_object_get_int64(v);
	if (i < 0)
		return false;
	*out = (uint64_t)i;
	return true;
}

/* The connections of @service that ended other than by a clean close or a stop: the sum of its ends but
 * "shutdown". False when it has no ends (an evfdd older than them). */
static bool errors_of(struct json_object *service, uint64_t *out)
{
	struct json_object *ends;
	struct json_object_iterator it, end;
	uint64_t sum = 0;

	if (!service || !json_object_object_get_ex(service, "ends", &ends) || !json_object_is_type(ends, json_type_object))
		return false;
	it = json_object_iter_begin(ends);
	end = json_object_iter_end(ends);
	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		uint64_t n;

		if (!strcmp(json_object_iter_peek_name(&it), "shutdown") ||
		    !count_of(ends, json_object_iter_peek_name(&it), &n))
			continue;
		sum = n > UINT64_MAX - sum ? UINT64_MAX : sum + n;
	}
	*out = sum;
	return true;
}

/* The row of the list @rows whose @key is @match's: a string (a service's name) or an integer (a loop's id). */
static struct json_object *find_row(struct json_object *rows, const char *key, struct json_object *match)
{
	size_t i, n = rows ? json_object_array_length(rows) : 0;

	if (!match)
		return NULL;
	for (i = 0; i < n; i++) {
		struct json_object *row = json_object_array_get_idx(rows, i), *v;

		if (!json_object_is_type(row, json_type_object) || !json_object_object_get_ex(row, key, &v) ||
		    json_object_get_type(v) != json_object_get_type(match))
			continue;
		if (json_object_is_type(v, json_type_string) ?
		    !strcmp(json_object_get_string(v), json_object_get_string(match)) :
		    json_object_get_int64(v) == json_object_get_int64(match))
			return row;
	}
	return NULL;
}

/* A rate as text in @buf: bytes with a binary unit and no blank ("1.5MiB"), else with one decimal; "-" when a
 * count is missing (@ok false) or went down (the daemon restarted), or there is no interval yet. */
static void rate_text(char *buf, size_t size, bool ok, uint64_t before, uint64_t now, double secs, bool bytes)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double r;
	unsigned u = 0;

	if (!ok || now < before || secs <= 0) {
		snprintf(buf, size, "-");
		return;
	}
	r = (double)(now - before) / secs;
	if (!bytes) {
		snprintf(buf, size, r < 100000 ? "%.1f" : "%.0f", r);
		return;
	}
	while (r >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		r /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f%s" : "%.0f%s", r, units[u]);
}

/* The rate of the counter @key between the rows @prev and @cur. */
static void row_rate(char *buf, size_t size, struct json_object *prev, struct json_object *cur, const char *key,
		     double secs, bool bytes)
{
	uint64_t a = 0, b = 0;
	bool ok = count_of(prev, key, &a) && count_of(cur, key, &b);

	rate_text(buf, size, ok, a, b, secs, bytes);
}

static void count_text(char *buf, size_t size, struct json_object *o, const char *key)
{
	uint64_t n;

	if (count_of(o, key, &n))
		snprintf(buf, size, "%" PRIu64, n);
	else
		snprintf(buf, size, "-");
}

/* @o's string @key escaped, or "-". */
static void put_str(FILE *f, struct json_object *o, const char *key)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string))
		put_escaped(f, json_object_get_string(v));
	else
		fputc('-', f);
}

/* The header: who, how long up, how big; the time of @cur. */
static void render_header(FILE *f, const struct sample *cur, double interval, bool live)
{
	char buf[64], when[32] = "";
	uint64_t up;
	time_t t = time(NULL);
	struct tm tm;

	if (localtime_r(&t, &tm))
		strftime(when, sizeof(when), "%H:%M:%S", &tm);
	fputs("evfdd ", f);
	put_str(f, cur->status, "version");
	count_text(buf, sizeof(buf), cur->status, "pid");
	fprintf(f, "  pid %s  ", buf);
	put_str(f, cur->status, "state");
	if (count_of(cur->status, "uptime_usec", &up))
		human_duration(buf, sizeof(buf), up);
	else
		snprintf(buf, sizeof(buf), "-");
	fprintf(f, "  up %s  %s\n", buf, when);
	count_text(buf, sizeof(buf), cur->status, "workers");
	fprintf(f, "workers %s", buf);
	count_text(buf, sizeof(buf), cur->status, "rings");
	fprintf(f, "  rings %s", buf);
	count_text(buf, sizeof(buf), cur->status, "reloads");
	fprintf(f, "  reloads %s  every %g s%s\n\n", buf, interval, live ? "  (q quits)" : "");
}

/* The services' table: connections/s, open, bytes/s each way, errors/s (rates "-" without @prev). */
static void render_services(FILE *f, const struct sample *cur, const struct sample *prev, double secs)
{
	size_t i, n = cur->services ? json_object_array_length(cur->services) : 0, width = 7;
	struct json_object *v;

	if (!cur->services) {
		fputs("no list of services in the answer; is evfdd the same version as evfdctl?\n", f);
		return;
	}
	if (n == 0) {
		fputs("no services\n", f);
		return;
	}
	for (i = 0; i < n; i++) {
		struct json_object *row = json_object_array_get_idx(cur->services, i);
		char *name;

		if (json_object_object_get_ex(row, "name", &v) && json_object_is_type(v, json_type_string) &&
		    (name = escaped(json_object_get_string(v)))) {
			width = strlen(name) > width ? strlen(name) : width;
			free(name);
		}
	}
	fprintf(f, "%-*s %10s %8s %10s %10s %9s\n", (int)width, "SERVICE", "CONN/S", "OPEN", "UP/S", "DOWN/S",
		"ERR/S");
	for (i = 0; i < n; i++) {
		struct json_object *row = json_object_array_get_idx(cur->services, i), *name = NULL, *old;
		char conn[32], open_[32], up[32], down[32], err[32], *s = NULL;
		uint64_t a = 0, b = 0;
		bool ok;

		if (!json_object_is_type(row, json_type_object))
			row = NULL;
		if (row && json_object_object_get_ex(row, "name", &name) && json_object_is_type(name, json_type_string))
			s = escaped(json_object_get_string(name));
		else
			name = NULL;
		old = prev ? find_row(prev->services, "name", name) : NULL;
		row_rate(conn, sizeof(conn), old, row, "total", secs, false);
		count_text(open_, sizeof(open_), row, "open");
		row_rate(up, sizeof(up), old, row, "bytes_up", secs, true);
		row_rate(down, sizeof(down), old, row, "bytes_down", secs, true);
		ok = errors_of(old, &a) && errors_of(row, &b);
		rate_text(err, sizeof(err), ok, a, b, secs, false);
		fprintf(f, "%-*s %10s %8s %10s %10s %9s\n", (int)width, s ? s : "-", conn, open_, up, down, err);
		free(s);
	}
}

/* The loops' table: rings, wakeups/s, completions/s. */
static void render_loops(FILE *f, const struct sample *cur, const struct sample *prev, double secs)
{
	size_t i, n = cur->loops ? json_object_array_length(cur->loops) : 0;

	if (!cur->loops) {
		fputs("no list of loops in the answer; is evfdd the same version as evfdctl?\n", f);
		return;
	}
	if (n == 0) {
		fputs("no loops\n", f);
		return;
	}
	fprintf(f, "%-6s %6s %12s %12s\n", "LOOP", "RINGS", "WAKEUPS/S", "COMPL/S");
	for (i = 0; i < n; i++) {
		struct json_object *row = json_object_array_get_idx(cur->loops, i), *id = NULL, *old;
		char idt[32], rings[32], wake[32], compl[32];

		if (!json_object_is_type(row, json_type_object))
			row = NULL;
		if (!row || !json_object_object_get_ex(row, "id", &id) || !json_object_is_type(id, json_type_int))
			id = NULL;
		count_text(idt, sizeof(idt), row, "id");
		old = prev ? find_row(prev->loops, "id", id) : NULL;
		count_text(rings, sizeof(rings), row, "rings");
		row_rate(wake, sizeof(wake), old, row, "wakeups", secs, false);
		row_rate(compl, sizeof(compl), old, row, "completions", secs, false);
		fprintf(f, "%-6s %6s %12s %12s\n", idt, rings, wake, compl);
	}
}

/* A refresh as text (NULL when out of memory): the rates between @prev and @cur, or "-" without @prev or when
 * the daemon is another one (a new pid: its counters started again). */
static char *render(const struct sample *cur, const struct sample *prev, double interval, bool live)
{
	uint64_t p1, p2;
	double secs = 0;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	if (prev && prev->usec && cur->usec > prev->usec &&
	    !(count_of(prev->status, "pid", &p1) && count_of(cur->status, "pid", &p2) && p1 != p2))
		secs = (double)(cur->usec - prev->usec) / 1e6;
	else
		prev = NULL;
	render_header(f, cur, interval, live);
	render_services(f, cur, prev, secs);
	fputc('\n', f);
	render_loops(f, cur, prev, secs);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* The terminal of the live view: its settings before, restored on every way out (signal handlers included). */
static struct termios term_before;
static volatile sig_atomic_t term_changed, cursor_hidden;
static int wake_pipe[2] = { -1, -1 };	/* a signal handler's word to the loop: redraw */

/* Put everything back as it was; async-signal-safe, and harmless twice. */
static void term_restore(void)
{
	static const char show[] = "\033[?25h";

	if (cursor_hidden) {
		cursor_hidden = 0;
		(void)!write(STDOUT_FILENO, show, sizeof(show) - 1);
	}
	if (term_changed) {
		term_changed = 0;
		(void)tcsetattr(STDIN_FILENO, TCSANOW, &term_before);
	}
}

/* Keys one at a time, not echoed, when stdin is a terminal (Ctrl-C still signals); the cursor hidden.
 * Async-signal-safe (after a stop, SIGCONT). */
static void term_enter(void)
{
	static const char hide[] = "\033[?25l";
	struct termios t;

	if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &term_before) == 0) {
		t = term_before;
		t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
		term_changed = 1;
		if (tcsetattr(STDIN_FILENO, TCSANOW, &t) != 0)
			term_changed = 0;
	}
	cursor_hidden = 1;
	(void)!write(STDOUT_FILENO, hide, sizeof(hide) - 1);
}

static void on_signal(int sig);

static void catch_signal(int sig)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	(void)sigaction(sig, &sa, NULL);
}

/* Ctrl-C is a way to quit (status 0); the other stop signals still end the process by the signal; Ctrl-Z
 * gives the terminal back while stopped; a new size or a continue redraws. All after the terminal is as it
 * was. Only async-signal-safe calls. */
static void on_signal(int sig)
{
	int saved_errno = errno;
	sigset_t set;

	switch (sig) {
	case SIGINT:
		term_restore();
		_exit(EXIT_OK);
	case SIGTSTP:
		term_restore();
		signal(SIGTSTP, SIG_DFL);
		sigemptyset(&set);
		sigaddset(&set, SIGTSTP);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		raise(SIGTSTP);	/* stopped here until SIGCONT */
		sigprocmask(SIG_BLOCK, &set, NULL);
		catch_signal(SIGTSTP);
		term_enter();
		/* fall through */
	case SIGWINCH:
	case SIGCONT:
		if (wake_pipe[1] >= 0)
			(void)!write(wake_pipe[1], "", 1);
		break;
	default:
		term_restore();
		signal(sig, SIG_DFL);
		raise(sig);	/* delivered when the handler returns */
	}
	errno = saved_errno;
}

static void put_all(const char *s, size_t len)
{
	while (len) {
		ssize_t r = write(STDOUT_FILENO, s, len);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		s += r;
		len -= (size_t)r;
	}
}

/* @text drawn from the top left corner of the terminal, over what was there: each line cut to its width,
 * the lines to its height less one (the cursor waits on the last), in one write. */
static void draw(const char *text)
{
	struct winsize ws = { 0 };
	size_t rows = 24, cols = 80, row = 0, len = 0;
	char *buf = NULL;
	const char *line, *nl;
	FILE *f;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
		rows = ws.ws_row;
		cols = ws.ws_col;
	}
	f = open_memstream(&buf, &len);
	if (!f)
		return;
	fputs("\033[H", f);
	for (line = text; *line && row + 1 < rows; line = *nl ? nl + 1 : nl, row++) {
		static const char more[] = "(more below: a taller terminal shows it)";
		size_t col = 0;
		const char *p, *stop;

		nl = stop = strchrnul(line, '\n');
		if (row + 2 == rows && *nl && nl[1]) {
			line = more;
			stop = more + sizeof(more) - 1;
			nl = "";
		}
		for (p = line; p < stop; p++) {
			/* columns: one per character, UTF-8 continuation bytes none */
			if (((unsigned char)*p & 0xc0) != 0x80 && ++col > cols)
				break;
			fputc(*p, f);
		}
		fputs("\033[K\n", f);
	}
	fputs("\033[J", f);
	if (fclose(f) == 0)
		put_all(buf, len);
	free(buf);
}

/*
 * top_wait - wait for the next refresh at @deadline (CLOCK_MONOTONIC, microseconds), a key or a signal
 * @keys: read keys from stdin; cleared when it ends
 *
 * Returns 'q' to quit, 'r' to redraw now (a new size, a continue), or 0 at @deadline.
 */
static int top_wait(int64_t deadline, bool *keys)
{
	for (;;) {
		struct pollfd p[2] = { { .fd = wake_pipe[0], .events = POLLIN },
				       { .fd = *keys ? STDIN_FILENO : -1, .events = POLLIN } };
		int64_t left = deadline - (int64_t)util_now_us(CLOCK_MONOTONIC);
		char buf[64];
		ssize_t r, i;

		if (left <= 0)
			return 0;
		if (poll(p, 2, (int)((left + 999) / 1000)) < 0) {
			if (errno == EINTR)
				continue;
			return 'q';	/* cannot wait: end, rather than spin */
		}
		if (p[0].revents) {
			while (read(wake_pipe[0], buf, sizeof(buf)) > 0)
				;
			return 'r';
		}
		if (!p[1].revents)
			continue;
		r = read(STDIN_FILENO, buf, sizeof(buf));
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r <= 0)
			*keys = false;
		for (i = 0; i < r; i++)
			if (buf[i] == 'q' || buf[i] == 'Q')
				return 'q';
	}
}

/*
 * run_top - evfdctl top: a refresh every @o->interval seconds, in place on a terminal, else plain blocks
 *
 * On a terminal, until q, Ctrl-C or @o->iterations refreshes; the first screen comes at once, its rates "-".
 * Otherwise @o->iterations blocks (1 by default), each after an interval, with the rates over it. Returns the
 * exit status: EXIT_OK, or that of the call that failed (after saying why, the terminal restored).
 */
static int run_top(const char *path, const struct options *o)
{
	static const int stops[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGWINCH, SIGCONT };
	bool live = isatty(STDOUT_FILENO), keys = live && isatty(STDIN_FILENO);
	double interval = o->interval > 0 ? o->interval : 1;
	int64_t done = 0, limit = o->iterations ? o->iterations : live ? 0 : 1;
	struct sample prev = { 0 }, cur = { 0 };
	int rc;
	size_t i;

	if (live) {
		if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
			fprintf(stderr, "evfdctl: pipe: %s\n", strerror(errno));
			return EXIT_USAGE;
		}
		for (i = 0; i < sizeof(stops) / sizeof(stops[0]); i++)
			catch_signal(stops[i]);
		term_enter();
		put_all("\033[2J", 4);
	}
	rc = sample_take(path, &cur);
	if (rc != EXIT_OK)
		goto out;
	for (;;) {
		int what = 0;
		char *text;

		if (live || done) {
			text = render(&cur, prev.usec ? &prev : NULL, interval, live);
			if (!text) {
				fprintf(stderr, "evfdctl: out of memory\n");
				rc = EXIT_USAGE;
				goto out;
			}
			if (live)
				draw(text);
			else if (printf("%s%s", done > 1 ? "\n" : "", text) < 0 || fflush(stdout) != 0)
				rc = EXIT_USAGE;
			free(text);
			if (rc != EXIT_OK || (limit && done >= limit))
				break;
		}
		while ((what = top_wait(cur.usec + (int64_t)(interval * 1e6), &keys)) == 'r' && live) {
			text = render(&cur, prev.usec ? &prev : NULL, interval, live);
			if (text)
				draw(text);
			free(text);
		}
		if (what == 'q')
			break;
		sample_free(&prev);
		prev = cur;
		memset(&cur, 0, sizeof(cur));
		rc = sample_take(path, &cur);
		if (rc != EXIT_OK)
			goto out;
		done++;
	}
out:
	term_restore();
	sample_free(&prev);
	sample_free(&cur);
	return rc;
}

/* -i: seconds, 0.1 to 3600. */
static bool parse_interval(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || *end || errno || !(v >= 0.1 && v <= 3600))
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "interval", required_argument, NULL, 'i' },
		{ "iterations", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 }
	};
	const struct command *cmd = NULL;
	const char *env = getenv("EVFDCTL_SOCKET"), *sock = NULL;
	char *path = NULL, *msg = NULL;
	struct json_object *params = NULL;
	struct options o = { 0 };
	int c, fd = -1, rc = EXIT_USAGE;
	size_t i, len = 0;

	while ((c = getopt_long(argc, argv, "s:ji:n:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			sock = optarg;
			break;
		case 'j':
			o.json = true;
			break;
		case 'i':
			if (!parse_interval(optarg, &o.interval)) {
				fprintf(stderr, "evfdctl: --interval takes seconds from 0.1 to 3600, not \"%s\"\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			if (!parse_index(optarg, &o.iterations) || o.iterations < 1) {
				fprintf(stderr, "evfdctl: --iterations takes a count of 1 or more, not \"%s\"\n", optarg);
				return EXIT_USAGE;
			}
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
	if (!cmd->run && (o.interval > 0 || o.iterations)) {
		fprintf(stderr, "evfdctl: --interval and --iterations are for top only\n");
		return EXIT_USAGE;
	}
	if (cmd->run && o.json) {
		fprintf(stderr, "evfdctl: %s has no --json; evfdctl --json services and evfdctl metrics give the "
			"counters to a program\n", cmd->name);
		return EXIT_USAGE;
	}
	if (!cmd->run && !(msg = build_call(cmd, argv + optind + 1, &len)))
		goto oom;
	if (sock)
		path = strdup(sock);
	else if (env && *env)
		path = strdup(env);
	else
		path = evfdd_control_default_path();
	if (!path)
		goto oom;
	if (cmd->run) {
		rc = cmd->run(path, &o);
		goto out;
	}
	fd = connect_to(path, cmd->timeout_sec);
	if (fd < 0)
		goto out;
	rc = call(fd, path, cmd, msg, len, o.json, &params);
	if (rc != EXIT_OK)
		goto out;
	if (o.json)
		printf("%s\n", json_object_to_json_string_ext(params, JSON_PRETTY));
	else
		cmd->print(params);
	rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_USAGE;
	goto out;
oom:
	fprintf(stderr, "evfdctl: out of memory\n");
out:
	if (fd >= 0)
		close(fd);
	json_object_put(params);
	free(msg);
	free(path);
	return rc;
}
