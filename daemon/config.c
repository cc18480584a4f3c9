/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Configuration parsing with inih; see config.h.
 *
 * Line numbers. Debian's libinih is built without INI_HANDLER_LINENO, so the handler is not told the line.
 * We feed inih through ini_parse_stream with our own reader and count lines there: inih calls the reader
 * once per line and calls the handler for that line before it reads the next one. That holds only while
 * every line fits inih's buffer (ini_max_line, 200 in Debian 12's build, which has no realloc): a longer
 * line would come back in pieces, each counted as a line. So the reader hands inih whole lines only; a
 * longer line is an error and inih gets an empty line in its place. tests/test-config checks the numbers.
 *
 * The reader also strips leading whitespace before inih sees a line. Debian's inih has multi-line values
 * on (ini_allow_multiline): an indented line continues the previous key, so an indented "forward = x"
 * after "listen = y" would silently become part of listen's value. With indentation stripped, no line is
 * ever a continuation, indentation is free for operators, and inih's global switches stay untouched.
 *
 * Section headers are parsed here too, not by inih: inih truncates section names to 49 bytes and calls
 * the handler on no header, so it could report neither a duplicate section nor a section without keys.
 * inih still splits every "key = value" line (whitespace, inline "; comments", "key: value").
 *
 * Errors never stop the parse; each one is recorded with file, line, section and key. inih's own verdict
 * (a line with no '=') is seen as a line that produced no handler call.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include "config.h"
#include "log.h"

/*
 * Two services: an echo, and a forwarder in front of it, so the whole data path (accept, connect,
 * relay both ways, half-close) works on a machine with no configuration file. Parsed like a file, so it
 * cannot drift from what the parser accepts.
 */
const char evfdd_config_default_text[] =
	"; evfdd's embedded default configuration\n"
	"[evfdd]\n"
	"log_level = info\n"
	"\n"
	"[echo]\n"
	"listen = 127.0.0.1:7777\n"
	"forward = echo\n"
	"\n"
	"[forward]\n"
	"listen = 127.0.0.1:7778\n"
	"forward = 127.0.0.1:7777\n";

/* ---- keys ------------------------------------------------------------------------------------------ */

enum global_key { GK_WORKERS, GK_RINGS, GK_CONTROL, GK_LOG_LEVEL, GK_SHUTDOWN_TIMEOUT, GK_COUNT };
static const char *const global_keys[GK_COUNT] = {
	"workers", "rings", "control", "log_level", "shutdown_timeout",
};

enum service_key {
	SK_LISTEN, SK_FORWARD, SK_MAX_CONNECTIONS, SK_CONNECT_TIMEOUT, SK_IDLE_TIMEOUT, SK_BACKLOG,
	SK_TCP_NODELAY, SK_SOCKET_MODE, SK_COUNT
};
static const char *const service_keys[SK_COUNT] = {
	"listen", "forward", "max_connections", "connect_timeout", "idle_timeout", "backlog",
	"tcp_nodelay", "socket_mode",
};

#define MAX_KEYS 8	/* the larger of GK_COUNT and SK_COUNT */

#define MS_SECOND 1000ull
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR (60 * MS_MINUTE)

/* ---- parser state ---------------------------------------------------------------------------------- */

struct cfg_globals {
	unsigned workers, rings;
	bool workers_set, rings_set;
	char *control;
	int log_level;
	uint32_t shutdown_timeout_ms;
};

enum cfg_section { SEC_NONE, SEC_BROKEN, SEC_GLOBAL, SEC_SERVICE };

struct cfg_parser {
	const char *name;		/* file name in messages */
	unsigned flags;
	struct evfdd_config_errors *errs;
	bool failed;			/* an error was found (recorded or omitted) */
	bool oom;

	/* the reader's position */
	const char *p, *end;
	unsigned lineno;		/* the line last handed to inih */
	bool kv_line;			/* not blank, comment or header: inih must call the handler */
	bool kv_seen;			/* and it did */

	/* the section being read */
	enum cfg_section sec;
	char *sec_name;
	unsigned sec_line;
	bool sec_keep;			/* false: check its keys, then drop it (bad name, repeated) */
	unsigned key_line[MAX_KEYS];	/* where each key was given in this section; 0 = not yet */
	const char *key;		/* the key being parsed, for messages */
	const char *value;		/* and its value */

	struct cfg_globals g;		/* the first [evfdd] */
	struct cfg_globals g_dup;	/* a repeated [evfdd]: checked, then dropped */
	struct cfg_globals *gcur;
	unsigned global_line;		/* line of the first [evfdd], 0 = none */
	bool too_many_reported;

	struct evfdd_service svc;	/* the service being read */
	struct evfdd_config *cfg;
	size_t services_cap;
};

/* ---- errors ---------------------------------------------------------------------------------------- */

/* Copy @s into @out for a message: printable ASCII as is, anything else as \xNN, so that a message stays
 * one line of plain text whatever the file holds. @quote also escapes '"' and '\'. */
static const char *cfg_esc(const char *s, size_t n, bool quote, char *out, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; i < n && s[i] && o + 5 < size; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x7f) {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		} else if (quote && (c == '"' || c == '\\')) {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = '\0';
	return out;
}

static void cfg_errors_add(struct evfdd_config_errors *errs, bool *oom, const char *file, unsigned line,
			   const char *section, const char *key, const char *what)
{
	char f[512], s[300], k[300], where[32] = "";
	struct evfdd_config_error *e, *list;
	char *msg = NULL;
	int n;

	if (errs->count >= EVFDD_CONFIG_MAX_ERRORS) {
		errs->omitted++;
		return;
	}
	cfg_esc(file, SIZE_MAX, false, f, sizeof(f));
	if (section)
		cfg_esc(section, SIZE_MAX, false, s, sizeof(s));
	if (key)
		cfg_esc(key, SIZE_MAX, false, k, sizeof(k));

	/* FILE[:LINE]: [[section]][ key]: what */
	if (line)
		snprintf(where, sizeof(where), ":%u", line);
	if (section && key)
		n = asprintf(&msg, "%s%s: [%s] %s: %s", f, where, s, k, what);
	else if (section)
		n = asprintf(&msg, "%s%s: [%s]: %s", f, where, s, what);
	else if (key)
		n = asprintf(&msg, "%s%s: %s: %s", f, where, k, what);
	else
		n = asprintf(&msg, "%s%s: %s", f, where, what);
	if (n < 0) {
		msg = NULL;
		goto fail;
	}

	list = realloc(errs->list, (errs->count + 1) * sizeof(*list));
	if (!list)
		goto fail;
	errs->list = list;
	e = &list[errs->count];
	*e = (struct evfdd_config_error){
		.file = strdup(file),
		.line = line,
		.section = section ? strdup(section) : NULL,
		.key = key ? strdup(key) : NULL,
		.message = msg,
	};
	errs->count++;
	if (!e->file || (section && !e->section) || (key && !e->key))
		*oom = true;
	return;
fail:
	free(msg);
	errs->omitted++;
	*oom = true;
}

__attribute__((format(printf, 5, 6)))
static void cfg_error(struct cfg_parser *ps, unsigned line, const char *section, const char *key,
		      const char *fmt, ...)
{
	char what[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	ps->failed = true;
	cfg_errors_add(ps->errs, &ps->oom, ps->name, line, section, key, what);
}

/* An error about the value of the key being parsed: FILE:LINE: [section] key: "value": what */
__attribute__((format(printf, 2, 3)))
static void cfg_value_error(struct cfg_parser *ps, const char *fmt, ...)
{
	char what[768], v[800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	/* inih takes only ';' as an inline comment: point it out when a '#' comment ended up in a value */
	cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "\"%s\": %s%s",
		  cfg_esc(ps->value, SIZE_MAX, true, v, sizeof(v)), what,
		  strstr(ps->value, " #") || strstr(ps->value, "\t#") ?
		  " (a comment after a value starts with ';', not '#')" : "");
}

/* Errors in file order; errors about the whole file (line 0) last. Insertion sort: stable, and there are
 * at most EVFDD_CONFIG_MAX_ERRORS. */
static void cfg_errors_sort(struct evfdd_config_errors *errs)
{
	for (size_t i = 1; i < errs->count; i++) {
		struct evfdd_config_error e = errs->list[i];
		unsigned key = e.line ? e.line : UINT_MAX;
		size_t j = i;

		while (j > 0 && (errs->list[j - 1].line ? errs->list[j - 1].line : UINT_MAX) > key) {
			errs->list[j] = errs->list[j - 1];
			j--;
		}
		errs->list[j] = e;
	}
}

/* ---- values ---------------------------------------------------------------------------------------- */

/* Decimal digits only: no sign, no blanks, no 0x. */
static bool cfg_parse_digits(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			v = UINT64_MAX;		/* saturate: reported as out of range */
		else
			v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return true;
}

static bool cfg_uint(struct cfg_parser *ps, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v;

	if (!cfg_parse_digits(ps->value, &v)) {
		cfg_value_error(ps, "not a number; expected an integer from %llu to %llu",
				(unsigned long long)min, (unsigned long long)max);
		return false;
	}
	if (v < min || v > max) {
		cfg_value_error(ps, "out of range %llu-%llu", (unsigned long long)min,
				(unsigned long long)max);
		return false;
	}
	*out = v;
	return true;
}

/* A duration in the largest unit that shows it exactly, for messages. */
static const char *cfg_fmt_ms(uint64_t ms, char *buf, size_t size)
{
	if (ms == 0)
		snprintf(buf, size, "0");
	else if (ms % MS_HOUR == 0)
		snprintf(buf, size, "%lluh", (unsigned long long)(ms / MS_HOUR));
	else if (ms % MS_MINUTE == 0)
		snprintf(buf, size, "%llum", (unsigned long long)(ms / MS_MINUTE));
	else if (ms % MS_SECOND == 0)
		snprintf(buf, size, "%llus", (unsigned long long)(ms / MS_SECOND));
	else
		snprintf(buf, size, "%llums", (unsigned long long)ms);
	return buf;
}

/* 250ms, 5s, 2m, 1h, or a bare number of seconds. */
static bool cfg_duration(struct cfg_parser *ps, uint64_t min_ms, uint64_t max_ms, uint32_t *out)
{
	static const struct { const char *suffix; uint64_t ms; } units[] = {
		{ "ms", 1 }, { "s", MS_SECOND }, { "m", MS_MINUTE }, { "h", MS_HOUR }, { "", MS_SECOND },
	};
	const char *s = ps->value;
	size_t ndigits = strspn(s, "0123456789");
	char digits[32], a[32], b[32];
	uint64_t v, mult = 0;

	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(s + ndigits, units[i].suffix) == 0) {
			mult = units[i].ms;
			break;
		}
	if (ndigits == 0 || mult == 0 || ndigits >= sizeof(digits)) {
		if (ndigits > 0 && mult != 0)
			goto range;
		cfg_value_error(ps, "not a duration; use 250ms, 5s, 2m, 1h or a number of seconds");
		return false;
	}
	memcpy(digits, s, ndigits);
	digits[ndigits] = '\0';
	if (!cfg_parse_digits(digits, &v) || v > UINT64_MAX / mult)
		goto range;
	v *= mult;
	if (v < min_ms || v > max_ms)
		goto range;
	*out = (uint32_t)v;
	return true;
range:
	cfg_value_error(ps, "out of range %s-%s", cfg_fmt_ms(min_ms, a, sizeof(a)),
			cfg_fmt_ms(max_ms, b, sizeof(b)));
	return false;
}

static bool cfg_bool(struct cfg_parser *ps, bool *out)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(ps->value, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(ps->value, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	cfg_value_error(ps, "not a boolean; use yes or no (also true/false, on/off, 1/0)");
	return false;
}

static bool cfg_mode(struct cfg_parser *ps, mode_t *out)
{
	const char *s = ps->value;
	size_t n = strspn(s, "01234567");
	unsigned long v;

	if (n == 0 || n > 4 || s[n] != '\0' || (v = strtoul(s, NULL, 8)) > 0777) {
		cfg_value_error(ps, "not a file mode; use octal digits from 0 to 0777, e.g. 0660");
		return false;
	}
	*out = (mode_t)v;
	return true;
}

/* An absolute path that fits in sockaddr_un.sun_path with its NUL. */
static bool cfg_socket_path(struct cfg_parser *ps, const char *path)
{
	size_t max = sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1;
	size_t len = strlen(path);

	if (path[0] != '/') {
		cfg_value_error(ps, "relative path; Unix socket paths must be absolute");
		return false;
	}
	if (len > max) {
		cfg_value_error(ps, "Unix socket path too long (%zu bytes, at most %zu)", len, max);
		return false;
	}
	return true;
}

static void cfg_endpoint_free(struct evfdd_endpoint *ep)
{
	free(ep->text);
	free(ep->addrs);
	memset(ep, 0, sizeof(*ep));
}

static bool cfg_endpoint_add(struct cfg_parser *ps, struct evfdd_endpoint *ep, const void *sa, socklen_t len)
{
	struct evfdd_sockaddr *a;

	if (len > sizeof(a->u))
		return true;	/* cannot happen for AF_INET/AF_INET6/AF_UNIX; ignore anything else */
	a = realloc(ep->addrs, (ep->naddrs + 1) * sizeof(*a));
	if (!a) {
		ps->oom = true;
		return false;
	}
	ep->addrs = a;
	memset(&a[ep->naddrs], 0, sizeof(*a));
	memcpy(&a[ep->naddrs].u, sa, len);
	a[ep->naddrs].len = len;
	ep->naddrs++;
	return true;
}

/* Host names for forward: letters, digits, '.', '-', '_' (seen in the wild), at most 253 bytes. Checked
 * before getaddrinfo so that a typo never becomes a DNS query. */
static bool cfg_hostname_ok(const char *h)
{
	size_t n = strlen(h);

	return n > 0 && n <= 253 &&
	       strspn(h, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_") == n;
}

static bool cfg_resolve(struct cfg_parser *ps, struct evfdd_endpoint *ep, const char *host, const char *port,
			int family, bool numeric)
{
	struct addrinfo hints = {
		.ai_family = family,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV | (numeric ? AI_NUMERICHOST : 0),
	};
	struct addrinfo *res = NULL, *ai;
	char h[600];
	bool ok = false;
	int rc;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		const char *why = rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);

		cfg_esc(host, SIZE_MAX, true, h, sizeof(h));
		if (rc == EAI_MEMORY)
			ps->oom = true;
		else if (numeric && family == AF_INET6)
			cfg_value_error(ps, "\"%s\" is not an IPv6 address: %s", h, why);
		else if (numeric && (ps->flags & EVFDD_CONFIG_NO_RESOLVE))
			cfg_value_error(ps, "cannot resolve \"%s\": name resolution is off; use an IP "
					"address", h);
		else if (numeric)
			cfg_value_error(ps, "\"%s\" is not an IP address: %s", h, why);
		else
			cfg_value_error(ps, "cannot resolve \"%s\": %s; check the name or use an IP address",
					h, why);
		goto out;
	}
	for (ai = res; ai; ai = ai->ai_next)
		if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) &&
		    !cfg_endpoint_add(ps, ep, ai->ai_addr, ai->ai_addrlen))
			goto out;
	ok = ep->naddrs > 0;
	if (!ok)
		cfg_value_error(ps, "\"%s\" has no IPv4 or IPv6 address",
				cfg_esc(host, SIZE_MAX, true, h, sizeof(h)));
out:
	if (res)
		freeaddrinfo(res);
	return ok;
}

/*
 * listen and forward: HOST:PORT, [IPv6]:PORT, /absolute/unix/path; forward also takes "echo".
 * Listen hosts must be numeric: "*" (every address, IPv4 and IPv6, one dual-stack socket on [::]),
 * 0.0.0.0, [::] (IPv6 only), or any IPv4/IPv6 address ([fe80::1%eth0] with a scope too). Forward hosts
 * may be names, resolved here, once.
 */
static bool cfg_endpoint(struct cfg_parser *ps, bool listen, struct evfdd_endpoint *ep)
{
	const char *v = ps->value;
	char *copy = NULL, *host, *port, *close_br;
	struct sockaddr_un un;
	struct sockaddr_in6 any6;
	struct in_addr a4;
	uint64_t portnum;
	bool ok = false;

	memset(ep, 0, sizeof(*ep));
	if (strcmp(v, "echo") == 0) {
		if (listen) {
			cfg_value_error(ps, "echo is a forward target; listen takes HOST:PORT, "
					"[IPv6]:PORT or an absolute Unix socket path");
			goto out;
		}
		ep->kind = EVFDD_ENDPOINT_ECHO;
		ok = true;
		goto out;
	}

	if (v[0] == '/' || (strchr(v, '/') && v[0] != '[')) {
		if (!cfg_socket_path(ps, v))
			goto out;
		memset(&un, 0, sizeof(un));
		un.sun_family = AF_UNIX;
		memcpy(un.sun_path, v, strlen(v) + 1);
		ep->kind = EVFDD_ENDPOINT_UNIX;
		ok = cfg_endpoint_add(ps, ep, &un,
				      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(v) + 1));
		goto out;
	}

	copy = strdup(v);
	if (!copy) {
		ps->oom = true;
		goto out;
	}
	if (copy[0] == '[') {
		close_br = strchr(copy, ']');
		if (!close_br) {
			cfg_value_error(ps, "missing ']' after the IPv6 address");
			goto out;
		}
		*close_br = '\0';
		host = copy + 1;
		if (close_br[1] != ':') {
			cfg_value_error(ps, "missing port; write [IPv6]:PORT");
			goto out;
		}
		port = close_br + 2;
	} else {
		port = strrchr(copy, ':');
		if (!port) {
			cfg_value_error(ps, "missing port; expected HOST:PORT, [IPv6]:PORT or an absolute "
					"Unix socket path");
			goto out;
		}
		*port++ = '\0';
		host = copy;
		if (strchr(host, ':')) {
			cfg_value_error(ps, "IPv6 addresses need brackets: [ADDRESS]:PORT");
			goto out;
		}
	}
	if (!cfg_parse_digits(port, &portnum)) {
		cfg_value_error(ps, "port is not a number; expected 1-65535");
		goto out;
	}
	if (portnum < 1 || portnum > 65535) {
		cfg_value_error(ps, "port out of range 1-65535");
		goto out;
	}
	if (!*host) {
		cfg_value_error(ps, listen ? "missing host; use *:PORT for every address"
					   : "missing host; give the backend's name or address");
		goto out;
	}
	ep->kind = EVFDD_ENDPOINT_INET;

	if (copy[0] == '[') {
		/* IPv6 literal, listen or forward; [::] listens on IPv6 only, like nginx. */
		ep->v6only = true;
		ok = cfg_resolve(ps, ep, host, port, AF_INET6, true);
	} else if (listen && strcmp(host, "*") == 0) {
		memset(&any6, 0, sizeof(any6));
		any6.sin6_family = AF_INET6;
		any6.sin6_addr = in6addr_any;
		any6.sin6_port = htons((uint16_t)portnum);
		ep->v6only = false;
		ok = cfg_endpoint_add(ps, ep, &any6, sizeof(any6));
	} else if (listen) {
		/* inet_pton, not getaddrinfo: strict dotted quads, and never a lookup. */
		if (inet_pton(AF_INET, host, &a4) != 1) {
			cfg_value_error(ps, "listen needs a numeric address (IPv4, [IPv6] or *); names are "
					"not resolved for listeners");
			goto out;
		}
		ok = cfg_resolve(ps, ep, host, port, AF_INET, true);
	} else if (inet_pton(AF_INET, host, &a4) == 1) {
		ok = cfg_resolve(ps, ep, host, port, AF_INET, true);
	} else if (!cfg_hostname_ok(host)) {
		cfg_value_error(ps, "invalid host name; use a DNS name, an IPv4 address or [IPv6]");
	} else {
		ok = cfg_resolve(ps, ep, host, port, AF_UNSPEC, ps->flags & EVFDD_CONFIG_NO_RESOLVE);
	}
out:
	free(copy);
	if (ok) {
		ep->text = strdup(v);
		if (!ep->text) {
			ps->oom = true;
			ok = false;
		}
	}
	if (!ok)
		cfg_endpoint_free(ep);
	return ok;
}

/* ---- sections -------------------------------------------------------------------------------------- */

static void cfg_service_free(struct evfdd_service *s)
{
	free(s->name);
	cfg_endpoint_free(&s->listen);
	cfg_endpoint_free(&s->forward);
	memset(s, 0, sizeof(*s));
}

static bool cfg_addr_equal(const struct evfdd_sockaddr *a, const struct evfdd_sockaddr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	switch (a->u.sa.sa_family) {
	case AF_INET:
		return a->u.in.sin_port == b->u.in.sin_port &&
		       a->u.in.sin_addr.s_addr == b->u.in.sin_addr.s_addr;
	case AF_INET6:
		return a->u.in6.sin6_port == b->u.in6.sin6_port &&
		       a->u.in6.sin6_scope_id == b->u.in6.sin6_scope_id &&
		       memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, sizeof(a->u.in6.sin6_addr)) == 0;
	case AF_UNIX:
		return strcmp(a->u.un.sun_path, b->u.un.sun_path) == 0;
	}
	return false;
}

static bool cfg_endpoint_overlap(const struct evfdd_endpoint *a, const struct evfdd_endpoint *b)
{
	for (size_t i = 0; i < a->naddrs; i++)
		for (size_t j = 0; j < b->naddrs; j++)
			if (cfg_addr_equal(&a->addrs[i], &b->addrs[j]))
				return true;
	return false;
}

/* Checks that need the whole section, then keep or drop it. */
static void cfg_section_end(struct cfg_parser *ps)
{
	struct evfdd_service *s = &ps->svc, *list;
	struct evfdd_config *cfg = ps->cfg;
	unsigned listen_line = ps->key_line[SK_LISTEN];
	char text[800];

	if (ps->sec == SEC_GLOBAL && ps->gcur == &ps->g_dup) {
		free(ps->g_dup.control);
		memset(&ps->g_dup, 0, sizeof(ps->g_dup));
	}
	if (ps->sec != SEC_SERVICE)
		goto out;

	if (!ps->key_line[SK_FORWARD])
		cfg_error(ps, ps->sec_line, ps->sec_name, "forward",
			  "missing; every service needs forward = HOST:PORT, [IPv6]:PORT, an absolute Unix "
			  "socket path or echo");
	if (ps->key_line[SK_SOCKET_MODE] && s->listen.kind == EVFDD_ENDPOINT_INET)
		cfg_error(ps, ps->key_line[SK_SOCKET_MODE], ps->sec_name, "socket_mode",
			  "applies only to a Unix socket listen path; remove it");
	if (s->listen.kind != EVFDD_ENDPOINT_NONE && cfg_endpoint_overlap(&s->listen, &s->forward))
		cfg_error(ps, ps->key_line[SK_FORWARD], ps->sec_name, "forward",
			  "same address as this service's listen; that would forward to itself");
	if (!ps->sec_keep)
		goto out;
	for (size_t i = 0; i < cfg->nservices; i++)
		if (cfg_endpoint_overlap(&s->listen, &cfg->services[i].listen))
			cfg_error(ps, listen_line, ps->sec_name, "listen",
				  "\"%s\": also the listen address of [%s] (line %u); give each service "
				  "its own",
				  cfg_esc(s->listen.text, SIZE_MAX, true, text, sizeof(text)),
				  cfg->services[i].name, cfg->services[i].line);

	if (cfg->nservices == ps->services_cap) {
		size_t cap = ps->services_cap ? ps->services_cap * 2 : 8;

		list = realloc(cfg->services, cap * sizeof(*list));
		if (!list) {
			ps->oom = true;
			goto out;
		}
		cfg->services = list;
		ps->services_cap = cap;
	}
	cfg->services[cfg->nservices++] = *s;
	memset(s, 0, sizeof(*s));	/* now owned by cfg */
out:
	cfg_service_free(s);
	free(ps->sec_name);
	ps->sec_name = NULL;
	ps->sec = SEC_NONE;
}

static bool cfg_service_name_ok(const char *n)
{
	size_t len = strlen(n);

	return len >= 1 && len <= EVFDD_CONFIG_NAME_MAX &&
	       strspn(n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == len;
}

static void cfg_section_begin(struct cfg_parser *ps, const char *name, size_t len)
{
	struct evfdd_config *cfg = ps->cfg;
	struct evfdd_service *s = &ps->svc;

	cfg_section_end(ps);
	memset(ps->key_line, 0, sizeof(ps->key_line));
	ps->sec_line = ps->lineno;
	ps->sec_keep = true;
	ps->sec_name = strndup(name, len);
	if (!ps->sec_name) {
		ps->oom = true;
		ps->sec = SEC_BROKEN;
		return;
	}
	if (strlen(ps->sec_name) != len) {
		/* cannot happen: the reader hands over lines without NUL bytes */
		ps->sec = SEC_BROKEN;
		return;
	}

	if (strcmp(ps->sec_name, "evfdd") == 0) {
		ps->sec = SEC_GLOBAL;
		if (ps->global_line) {
			cfg_error(ps, ps->lineno, ps->sec_name, NULL,
				  "duplicate section (first at line %u); merge the two", ps->global_line);
			memset(&ps->g_dup, 0, sizeof(ps->g_dup));
			ps->gcur = &ps->g_dup;
		} else {
			ps->global_line = ps->lineno;
			ps->gcur = &ps->g;
		}
		return;
	}

	ps->sec = SEC_SERVICE;
	*s = (struct evfdd_service){
		.line = ps->lineno,
		.max_connections = EVFDD_DEFAULT_MAX_CONNECTIONS,
		.connect_timeout_ms = EVFDD_DEFAULT_CONNECT_TIMEOUT_MS,
		.idle_timeout_ms = EVFDD_DEFAULT_IDLE_TIMEOUT_MS,
		.backlog = EVFDD_DEFAULT_BACKLOG,
		.tcp_nodelay = EVFDD_DEFAULT_TCP_NODELAY,
		.socket_mode = EVFDD_DEFAULT_SOCKET_MODE,
	};
	s->name = strdup(ps->sec_name);
	if (!s->name)
		ps->oom = true;

	if (!cfg_service_name_ok(ps->sec_name)) {
		cfg_error(ps, ps->lineno, ps->sec_name, NULL,
			  "invalid service name; use 1-%d characters from A-Z a-z 0-9 _ . -",
			  EVFDD_CONFIG_NAME_MAX);
		ps->sec_keep = false;
		return;
	}
	if (strcmp(ps->sec_name, "control") == 0) {
		cfg_error(ps, ps->lineno, ps->sec_name, NULL,
			  "reserved name (the control socket); rename the service, and set the control "
			  "socket's path with control = in [evfdd]");
		ps->sec_keep = false;
		return;
	}
	for (size_t i = 0; i < cfg->nservices; i++)
		if (strcmp(cfg->services[i].name, ps->sec_name) == 0) {
			cfg_error(ps, ps->lineno, ps->sec_name, NULL,
				  "duplicate section (first at line %u); merge the two or rename one",
				  cfg->services[i].line);
			ps->sec_keep = false;
			return;
		}
	if (cfg->nservices >= EVFDD_CONFIG_MAX_SERVICES) {
		if (!ps->too_many_reported)
			cfg_error(ps, ps->lineno, ps->sec_name, NULL,
				  "too many services (at most %d); split them across evfdd instances",
				  EVFDD_CONFIG_MAX_SERVICES);
		ps->too_many_reported = true;
		ps->sec_keep = false;
	}
}

/* ---- inih callbacks -------------------------------------------------------------------------------- */

static void cfg_global_key(struct cfg_parser *ps, enum global_key k)
{
	struct cfg_globals *g = ps->gcur;
	uint64_t v;
	int level;

	switch (k) {
	case GK_WORKERS:
		if (cfg_uint(ps, 1, EVFDD_CONFIG_MAX_WORKERS, &v)) {
			g->workers = (unsigned)v;
			g->workers_set = true;
		}
		break;
	case GK_RINGS:
		if (cfg_uint(ps, 1, EVFDD_CONFIG_MAX_RINGS, &v)) {
			g->rings = (unsigned)v;
			g->rings_set = true;
		}
		break;
	case GK_CONTROL:
		/* empty: the daemon decides at run time (the control-socket issue) */
		if (*ps->value && cfg_socket_path(ps, ps->value)) {
			g->control = strdup(ps->value);
			if (!g->control)
				ps->oom = true;
		}
		break;
	case GK_LOG_LEVEL:
		level = log_level_from_name(ps->value);
		if (level < 0)
			cfg_value_error(ps, "unknown level; use debug, info, notice, warning or err");
		else
			g->log_level = level;
		break;
	case GK_SHUTDOWN_TIMEOUT:
		cfg_duration(ps, 0, MS_HOUR, &g->shutdown_timeout_ms);
		break;
	case GK_COUNT:
		break;
	}
}

static void cfg_service_key(struct cfg_parser *ps, enum service_key k)
{
	struct evfdd_service *s = &ps->svc;
	uint64_t v;

	switch (k) {
	case SK_LISTEN:
		cfg_endpoint(ps, true, &s->listen);
		break;
	case SK_FORWARD:
		cfg_endpoint(ps, false, &s->forward);
		break;
	case SK_MAX_CONNECTIONS:
		if (cfg_uint(ps, 1, 1000000, &v))
			s->max_connections = (uint32_t)v;
		break;
	case SK_CONNECT_TIMEOUT:
		cfg_duration(ps, 1, MS_HOUR, &s->connect_timeout_ms);
		break;
	case SK_IDLE_TIMEOUT:
		cfg_duration(ps, 0, 720 * MS_HOUR, &s->idle_timeout_ms);
		break;
	case SK_BACKLOG:
		if (cfg_uint(ps, 1, 65535, &v))
			s->backlog = (int)v;
		break;
	case SK_TCP_NODELAY:
		cfg_bool(ps, &s->tcp_nodelay);
		break;
	case SK_SOCKET_MODE:
		cfg_mode(ps, &s->socket_mode);
		break;
	case SK_COUNT:
		break;
	}
}

static int cfg_key_index(const char *const *keys, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (strcmp(keys[i], name) == 0)
			return i;
	return -1;
}

static void cfg_unknown_key(struct cfg_parser *ps, const char *name, const char *const *keys, int n)
{
	char list[256];
	size_t o = 0;

	list[0] = '\0';
	for (int i = 0; i < n && o < sizeof(list); i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", keys[i]);
	cfg_error(ps, ps->lineno, ps->sec_name, name, "unknown key; %s takes %s",
		  ps->sec == SEC_GLOBAL ? "[evfdd]" : "a service", list);
}

/* Called by inih for every "key = value" line, right after the reader returned it: ps->lineno is its
 * line. Always returns 1: errors are recorded here, and a 0 would only make inih count the line again. */
static int cfg_handler(void *user, const char *section, const char *name, const char *value)
{
	struct cfg_parser *ps = user;
	const char *const *keys;
	int n, k;

	(void)section;	/* ours is ps->sec_name: inih truncates names at 49 bytes */
	ps->kv_seen = true;
	if (ps->sec == SEC_BROKEN)
		return 1;	/* under a header we could not read: nothing sensible to say */
	if (ps->sec == SEC_NONE) {
		cfg_error(ps, ps->lineno, NULL, name,
			  "outside any section; put it under [evfdd] or under a service's [NAME]");
		return 1;
	}
	if (!*name) {
		cfg_error(ps, ps->lineno, ps->sec_name, NULL, "missing key name before '='");
		return 1;
	}
	keys = ps->sec == SEC_GLOBAL ? global_keys : service_keys;
	n = ps->sec == SEC_GLOBAL ? GK_COUNT : SK_COUNT;
	k = cfg_key_index(keys, n, name);
	if (k < 0) {
		cfg_unknown_key(ps, name, keys, n);
		return 1;
	}
	if (ps->key_line[k]) {
		cfg_error(ps, ps->lineno, ps->sec_name, name, "given twice (first at line %u); keep one",
			  ps->key_line[k]);
		return 1;
	}
	ps->key_line[k] = ps->lineno;
	ps->key = name;
	ps->value = value;
	if (!*value && ps->sec == SEC_SERVICE && k == SK_FORWARD)
		cfg_error(ps, ps->lineno, ps->sec_name, name, "empty value; give HOST:PORT, [IPv6]:PORT, an "
			  "absolute Unix socket path or echo");
	else if (!*value && ps->sec == SEC_SERVICE && k == SK_LISTEN)
		cfg_error(ps, ps->lineno, ps->sec_name, name, "empty value; give an address, or remove the "
			  "line to rely on an activated socket");
	else if (!*value && !(ps->sec == SEC_GLOBAL && k == GK_CONTROL))
		cfg_error(ps, ps->lineno, ps->sec_name, name,
			  "empty value; give one, or remove the line to get the default");
	else if (ps->sec == SEC_GLOBAL)
		cfg_global_key(ps, (enum global_key)k);
	else
		cfg_service_key(ps, (enum service_key)k);
	ps->key = ps->value = NULL;
	return 1;
}

/* A line inih read without calling the handler is a line it could not split into key and value. */
static void cfg_line_done(struct cfg_parser *ps)
{
	if (ps->kv_line && !ps->kv_seen)
		cfg_error(ps, ps->lineno, NULL, NULL,
			  "syntax error: expected \"key = value\", a [section] header or a comment");
	ps->kv_line = ps->kv_seen = false;
}

/* A [section] header, already stripped of blanks around it. */
static void cfg_header(struct cfg_parser *ps, const char *s, const char *e)
{
	const char *close = memchr(s, ']', (size_t)(e - s));
	const char *rest;

	if (!close) {
		cfg_section_end(ps);
		ps->sec = SEC_BROKEN;
		cfg_error(ps, ps->lineno, NULL, NULL, "syntax error: section header without ']'");
		return;
	}
	for (rest = close + 1; rest < e && isspace((unsigned char)*rest); rest++)
		;
	if (rest < e && *rest != ';' && *rest != '#') {
		cfg_section_end(ps);
		ps->sec = SEC_BROKEN;
		cfg_error(ps, ps->lineno, NULL, NULL,
			  "syntax error: text after the section header's ']'; comments start with ';'");
		return;
	}
	cfg_section_begin(ps, s + 1, (size_t)(close - s - 1));
}

/*
 * inih's reader, fgets-style: @num is inih's buffer size. Hands over one physical line per call, always
 * whole (see the top of this file). Blank lines, comments and section headers are handled here and
 * handed over as empty lines, so inih only ever splits key = value lines.
 */
static char *cfg_reader(char *str, int num, void *stream)
{
	struct cfg_parser *ps = stream;
	const char *line, *nl, *s, *e;
	size_t len, max = num > 3 ? (size_t)num - 3 : 0;

	cfg_line_done(ps);
	if (ps->p >= ps->end || num < 2)
		return NULL;
	line = ps->p;
	nl = memchr(line, '\n', (size_t)(ps->end - line));
	len = nl ? (size_t)(nl - line) : (size_t)(ps->end - line);
	ps->p = nl ? nl + 1 : ps->end;
	ps->lineno++;

	s = line;
	e = line + len;
	if (e > s && e[-1] == '\r')
		e--;
	if (memchr(s, '\0', (size_t)(e - s))) {
		cfg_error(ps, ps->lineno, NULL, NULL, "NUL byte; the file must be text");
		goto empty;
	}
	if (ps->lineno == 1 && e - s >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;	/* UTF-8 byte order mark */
	while (s < e && isspace((unsigned char)*s))
		s++;
	while (e > s && isspace((unsigned char)e[-1]))
		e--;
	if (s == e || *s == ';' || *s == '#')
		goto empty;
	if (*s == '[') {
		cfg_header(ps, s, e);
		goto empty;
	}
	/* inih's limit: its buffer must hold the line, "\r\n" and the NUL (ini.h says so). Only key = value
	 * lines reach inih: comments and headers may be longer. */
	if ((size_t)(e - s) > max) {
		cfg_error(ps, ps->lineno, NULL, NULL, "line too long (%zu bytes, at most %zu); shorten it",
			  (size_t)(e - s), max);
		goto empty;
	}
	ps->kv_line = true;
	memcpy(str, s, (size_t)(e - s));
	str[e - s] = '\n';
	str[e - s + 1] = '\0';
	return str;
empty:
	str[0] = '\n';
	str[1] = '\0';
	return str;
}

/* ---- loading --------------------------------------------------------------------------------------- */

void evfdd_config_free(struct evfdd_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->nservices; i++)
		cfg_service_free(&cfg->services[i]);
	free(cfg->services);
	free(cfg->control);
	free(cfg->source);
	free(cfg);
}

static unsigned cfg_online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > EVFDD_CONFIG_MAX_WORKERS ? EVFDD_CONFIG_MAX_WORKERS : (unsigned)n;
}

/* Parse @len bytes into *@out; records errors in @errs (already initialised). */
static int cfg_parse(const char *data, size_t len, const char *name, unsigned flags,
		     struct evfdd_config **out, struct evfdd_config_errors *errs)
{
	struct cfg_parser ps = {
		.name = name,
		.flags = flags,
		.errs = errs,
		.p = data,
		.end = data + len,
		.g = { .log_level = LOG_INFO, .shutdown_timeout_ms = EVFDD_DEFAULT_SHUTDOWN_TIMEOUT_MS },
	};
	struct evfdd_config *cfg;
	int rc;

	*out = NULL;
	ps.gcur = &ps.g;
	cfg = calloc(1, sizeof(*cfg));
	if (!cfg) {
		ps.oom = true;
		goto out;
	}
	ps.cfg = cfg;
	if (len > EVFDD_CONFIG_MAX_FILE) {
		cfg_error(&ps, 0, NULL, NULL, "file too large (%zu bytes, at most %d); is this the right "
			  "file?", len, EVFDD_CONFIG_MAX_FILE);
		goto out;
	}

	rc = ini_parse_stream(cfg_reader, &ps, cfg_handler, &ps);
	cfg_line_done(&ps);
	cfg_section_end(&ps);
	if (rc == -2) {
		ps.oom = true;
	} else if (rc > 0) {
		/* inih saw a syntax error on line rc; the reader must have reported it already */
		bool known = errs->omitted > 0;

		for (size_t i = 0; i < errs->count && !known; i++)
			known = errs->list[i].line == (unsigned)rc;
		if (!known)
			cfg_error(&ps, (unsigned)rc, NULL, NULL, "syntax error");
	}

	if (cfg->nservices == 0 && !ps.failed)
		cfg_error(&ps, 0, NULL, NULL, "no service defined; add a section such as [web] with "
			  "forward = HOST:PORT");

	cfg->workers = ps.g.workers_set ? ps.g.workers : cfg_online_cpus();
	/* Twice as many rings as loops: rings are what libevfd moves between loops to even out the load,
	 * and with one ring per loop any move leaves a loop with none; two each lets every loop give one
	 * away and still work, while per-ring costs (memory, one eventfd registration) stay small. */
	cfg->rings = ps.g.rings_set ? ps.g.rings : 2 * cfg->workers;
	if (cfg->rings > EVFDD_CONFIG_MAX_RINGS)
		cfg->rings = EVFDD_CONFIG_MAX_RINGS;
	cfg->control = ps.g.control;
	ps.g.control = NULL;
	cfg->log_level = ps.g.log_level;
	cfg->shutdown_timeout_ms = ps.g.shutdown_timeout_ms;
	cfg->source = strdup(name);
	if (!cfg->source)
		ps.oom = true;
out:
	if (ps.oom)
		cfg_error(&ps, 0, NULL, NULL, "out of memory");
	free(ps.g.control);
	free(ps.sec_name);
	cfg_service_free(&ps.svc);
	cfg_errors_sort(errs);
	if (ps.failed) {
		evfdd_config_free(cfg);
		return -EINVAL;
	}
	*out = cfg;
	return 0;
}

int evfdd_config_load_buffer(const char *data, size_t len, const char *name, unsigned flags,
			     struct evfdd_config **out, struct evfdd_config_errors *errs)
{
	struct evfdd_config_errors local;
	int rc;

	if (!errs)
		errs = &local;
	memset(errs, 0, sizeof(*errs));
	rc = cfg_parse(data, len, name, flags, out, errs);
	if (errs == &local)
		evfdd_config_errors_free(&local);
	return rc;
}

int evfdd_config_load_string(const char *text, const char *name, struct evfdd_config **out,
			     struct evfdd_config_errors *errs)
{
	return evfdd_config_load_buffer(text, strlen(text), name, 0, out, errs);
}

/* What a file that is not a regular one is, for the message that refuses it. */
static const char *cfg_file_type(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFDIR:
		return "a directory";
	case S_IFIFO:
		return "a FIFO (named pipe)";
	case S_IFCHR:
		return "a character device";
	case S_IFBLK:
		return "a block device";
	case S_IFSOCK:
		return "a socket";
	default:
		return "not a regular file";
	}
}

/* Only a regular file is read (a symbolic link to one is fine): a FIFO would block open and read, and with
 * them the main thread, the control socket and signals; a device can be endless or act on being opened. */
static bool cfg_file_regular(const struct stat *st, const char *path, struct evfdd_config_errors *errs,
			     bool *oom)
{
	char what[512];

	if (S_ISREG(st->st_mode))
		return true;
	snprintf(what, sizeof(what), "%s, not a regular file; evfdd reads its configuration only from a regular "
		 "file (a symbolic link to one is fine): put the configuration in a regular file there",
		 cfg_file_type(st->st_mode));
	cfg_errors_add(errs, oom, path, 0, NULL, NULL, what);
	return false;
}

/* One cleanup exit: the fd and the buffer. */
int evfdd_config_load(const char *path, struct evfdd_config **out, struct evfdd_config_errors *errs)
{
	struct evfdd_config_errors local;
	char *buf = NULL, *nbuf, what[512];
	size_t len = 0, cap = 0;
	bool oom = false;
	struct stat st;
	int fd = -1, rc = -EINVAL, e;
	ssize_t n;

	if (!path)
		return evfdd_config_load_string(evfdd_config_default_text, EVFDD_CONFIG_DEFAULT_NAME, out,
						errs);
	if (!errs)
		errs = &local;
	memset(errs, 0, sizeof(*errs));
	*out = NULL;

	/* Looked at before opening, so that a device is not even opened; what was opened is checked again
	 * below, and that check is the one that counts. O_NONBLOCK: a FIFO put there in between cannot block
	 * open itself. */
	if (stat(path, &st) == 0 && !cfg_file_regular(&st, path, errs, &oom))
		goto out;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		e = errno;
		snprintf(what, sizeof(what), "cannot open: %s (%s)%s", strerror(e),
			 strerrorname_np(e) ? strerrorname_np(e) : "?",
			 e == ENOENT ? "; check the path" :
			 e == EACCES ? "; check the permissions of the file and its directories" : "");
		cfg_errors_add(errs, &oom, path, 0, NULL, NULL, what);
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		e = errno;
		snprintf(what, sizeof(what), "cannot stat: %s (%s)", strerror(e),
			 strerrorname_np(e) ? strerrorname_np(e) : "?");
		cfg_errors_add(errs, &oom, path, 0, NULL, NULL, what);
		goto out;
	}
	if (!cfg_file_regular(&st, path, errs, &oom))
		goto out;
	/* A regular file's size is known: refuse a huge one before reading it. */
	if (st.st_size > EVFDD_CONFIG_MAX_FILE) {
		snprintf(what, sizeof(what), "file too large (%lld bytes, at most %d); is this the right "
			 "file?", (long long)st.st_size, EVFDD_CONFIG_MAX_FILE);
		cfg_errors_add(errs, &oom, path, 0, NULL, NULL, what);
		goto out;
	}
	for (;;) {
		if (len == cap) {
			/* read one byte past the limit, to tell "at the limit" from "over it" */
			cap = cap ? cap * 2 : 16384;
			if (cap > EVFDD_CONFIG_MAX_FILE + 1)
				cap = EVFDD_CONFIG_MAX_FILE + 1;
			if (len == cap) {	/* it grew after fstat */
				snprintf(what, sizeof(what), "file too large (more than %d bytes); is "
					 "this the right file?", EVFDD_CONFIG_MAX_FILE);
				cfg_errors_add(errs, &oom, path, 0, NULL, NULL, what);
				goto out;
			}
			nbuf = realloc(buf, cap);
			if (!nbuf) {
				cfg_errors_add(errs, &oom, path, 0, NULL, NULL, "out of memory");
				goto out;
			}
			buf = nbuf;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			e = errno;
			snprintf(what, sizeof(what), "cannot read: %s (%s)", strerror(e),
				 strerrorname_np(e) ? strerrorname_np(e) : "?");
			cfg_errors_add(errs, &oom, path, 0, NULL, NULL, what);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	rc = cfg_parse(buf ? buf : "", len, path, 0, out, errs);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	if (errs == &local)
		evfdd_config_errors_free(&local);
	return rc;
}

const struct evfdd_service *evfdd_config_service(const struct evfdd_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nservices; i++)
		if (strcmp(cfg->services[i].name, name) == 0)
			return &cfg->services[i];
	return NULL;
}

void evfdd_config_errors_print(FILE *f, const struct evfdd_config_errors *errs)
{
	for (size_t i = 0; i < errs->count; i++)
		fprintf(f, "%s\n", errs->list[i].message);
	if (errs->omitted)
		fprintf(f, "(%zu more error%s not shown)\n", errs->omitted, errs->omitted == 1 ? "" : "s");
}

void evfdd_config_errors_free(struct evfdd_config_errors *errs)
{
	if (!errs)
		return;
	for (size_t i = 0; i < errs->count; i++) {
		free(errs->list[i].file);
		free(errs->list[i].section);
		free(errs->list[i].key);
		free(errs->list[i].message);
	}
	free(errs->list);
	memset(errs, 0, sizeof(*errs));
}
