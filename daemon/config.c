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
#include "addr.h"
#include "config.h"
#include "log.h"
#include "sni.h"

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

enum cfg_section { SEC_NONE, SEC_BROKEN, SEC_GLOBAL, SEC_SERVICE };

enum global_key {
	GK_WORKERS, GK_RINGS, GK_CONTROL, GK_LOG_LEVEL, GK_SHUTDOWN_TIMEOUT, GK_METRICS, GK_UPGRADE_BINARY, GK_COUNT
};
static const char *const global_keys[GK_COUNT] = {
	"workers", "rings", "control", "log_level", "shutdown_timeout", "metrics", "upgrade_binary",
};

enum service_key {
	SK_LISTEN, SK_FORWARD, SK_MAX_CONNECTIONS, SK_CONNECT_TIMEOUT, SK_IDLE_TIMEOUT, SK_BACKLOG,
	SK_TCP_NODELAY, SK_SOCKET_MODE, SK_BALANCE, SK_RETRIES, SK_FALL, SK_RISE, SK_DOWN_TIME,
	SK_HEALTH_CHECK, SK_HEALTH_INTERVAL, SK_RESOLVE_INTERVAL,
	/* the edge (evfdd.conf(5): what comes before the relay, and around it) */
	SK_SEND_PROXY, SK_ACCEPT_PROXY, SK_PROXY_FROM, SK_PROXY_TIMEOUT, SK_SNI_ROUTE, SK_SNI_DEFAULT, SK_ALLOW,
	SK_DENY, SK_MAX_PER_SOURCE, SK_TCP_KEEPALIVE, SK_TCP_USER_TIMEOUT, SK_SOURCE, SK_ACCESS_LOG, SK_COUNT
};
static const char *const service_keys[SK_COUNT] = {
	"listen", "forward", "max_connections", "connect_timeout", "idle_timeout", "backlog",
	"tcp_nodelay", "socket_mode", "balance", "retries", "fall", "rise", "down_time",
	"health_check", "health_interval", "resolve_interval",
	"send_proxy", "accept_proxy", "proxy_from", "proxy_timeout", "sni_route", "sni_default", "allow",
	"deny", "max_connections_per_source", "tcp_keepalive", "tcp_user_timeout", "source", "access_log",
};

/* Keys that may be given several times in a section, each line appending to the list (a line holds at most
 * 197 bytes, too few for a long list). */
static bool cfg_list_key(enum cfg_section sec, int k)
{
	return sec == SEC_SERVICE && (k == SK_FORWARD || k == SK_PROXY_FROM || k == SK_SNI_ROUTE || k == SK_ALLOW ||
				      k == SK_DENY);
}

#define MAX_KEYS SK_COUNT	/* the larger of GK_COUNT and SK_COUNT */

#define MS_SECOND 1000ull
#define MS_MINUTE (60 * MS_SECOND)
#define MS_HOUR (60 * MS_MINUTE)

/* ---- parser state ---------------------------------------------------------------------------------- */

struct cfg_globals {
	unsigned workers, rings;
	bool workers_set, rings_set;
	char *control;
	char *upgrade_binary;
	int log_level;
	uint32_t shutdown_timeout_ms;
	struct evfdd_endpoint metrics;
};


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
static bool cfg_endpoint(struct cfg_parser *ps, bool listen, struct evfdd_endpoint *ep, char **name_host,
			 char **name_port)
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
		if (ok && name_host) {
			*name_host = strdup(host);
			*name_port = strdup(port);
			if (!*name_host || !*name_port)
				ps->oom = true;
		}
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

static void cfg_backends_free(struct evfdd_backend_conf *b, size_t n);

/* ---- backends -------------------------------------------------------------------------------------- */

static bool cfg_backend_known(const struct evfdd_service *s, const char *name)
{
	for (size_t i = 0; i < s->nbackends; i++)
		if (strcmp(s->backends[i].ep.text, name) == 0)
			return true;
	return false;
}

/* Append a deep copy of @b to the service's own list of backends. */
static bool cfg_backend_append_copy(struct cfg_parser *ps, const struct evfdd_backend_conf *b)
{
	struct evfdd_service *s = &ps->svc;
	struct evfdd_backend_conf c = *b, *list;

	c.ep.text = strdup(b->ep.text);
	c.ep.addrs = malloc((b->ep.naddrs ? b->ep.naddrs : 1) * sizeof(*c.ep.addrs));
	c.host = b->host ? strdup(b->host) : NULL;
	c.port = b->port ? strdup(b->port) : NULL;
	list = realloc(s->backends, (s->nbackends + 1) * sizeof(*list));
	if (list)
		s->backends = list;
	if (!c.ep.text || !c.ep.addrs || (b->host && !c.host) || (b->port && !c.port) || !list) {
		free(c.ep.text);
		free(c.ep.addrs);
		free(c.host);
		free(c.port);
		ps->oom = true;
		return false;
	}
	memcpy(c.ep.addrs, b->ep.addrs, b->ep.naddrs * sizeof(*c.ep.addrs));
	s->backends[s->nbackends++] = c;
	return true;
}

static bool cfg_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* A backend option's number: "weight=N" and the like. */
static bool cfg_opt_uint(struct cfg_parser *ps, const char *opt, const char *digits, uint64_t min, uint64_t max,
			 uint64_t *out)
{
	uint64_t v;

	if (!cfg_parse_digits(digits, &v) || v < min || v > max) {
		cfg_value_error(ps, "%s needs a number from %llu to %llu", opt, (unsigned long long)min,
				(unsigned long long)max);
		return false;
	}
	*out = v;
	return true;
}

/* ",weight=N,maxconn=N,backup" after a backend's address (@opts points at the first comma, or is empty). */
static bool cfg_backend_options(struct cfg_parser *ps, const char *opts, struct evfdd_backend_conf *b)
{
	char *copy = strdup(opts), *o, *save = NULL;   /* strtok_r writes; the messages show the original */
	uint64_t v;
	bool ok = true;

	if (!copy) {
		ps->oom = true;
		return false;
	}
	for (o = strtok_r(copy, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		if (strncmp(o, "weight=", 7) == 0) {
			if (cfg_opt_uint(ps, "weight", o + 7, 1, EVFDD_CONFIG_MAX_WEIGHT, &v))
				b->weight = (unsigned)v;
			else
				ok = false;
		} else if (strncmp(o, "maxconn=", 8) == 0) {
			if (cfg_opt_uint(ps, "maxconn", o + 8, 1, 1000000, &v))
				b->maxconn = (uint32_t)v;
			else
				ok = false;
		} else if (strcmp(o, "backup") == 0) {
			b->backup = true;
		} else {
			char e[200];

			cfg_value_error(ps, "unknown option \"%s\"; a backend takes weight=N, maxconn=N and backup",
					cfg_esc(o, SIZE_MAX, true, e, sizeof(e)));
			ok = false;
		}
	}
	free(copy);
	return ok;
}

/* The backends of one list: a forward line's (all of them) or an SNI route's. */
struct cfg_blist {
	struct evfdd_backend_conf **v;
	size_t *n;
	bool route;			/* an SNI route's: no echo */
};

/*
 * One backend of a forward line or an SNI route, starting at @p: ADDR[,OPTION...], where ADDR may be a
 * double-quoted Unix path (escapes \" and \\); a route's backends are joined by @stop ('+'). Appends it to
 * @bl. Returns where the next one starts (at @stop or a blank); errors are reported against the backend's own
 * text.
 */
static const char *cfg_backend(struct cfg_parser *ps, const char *p, char stop, struct cfg_blist *bl)
{
	struct evfdd_service *s = &ps->svc;
	struct evfdd_backend_conf b = { .weight = 1 }, *list;
	const char *start = p, *line_value = ps->value;
	char *tok = NULL, *addr = NULL, *opts;
	size_t n = 0;
	bool ok = false;

	while (*p && !cfg_blank(*p) && *p != stop) {
		if (*p == '"' && p == start) {
			/* skip the quoted part: blanks inside belong to it */
			for (p++; *p && *p != '"'; p++)
				if (*p == '\\' && p[1])
					p++;
			if (*p)
				p++;
			continue;
		}
		p++;
	}
	tok = strndup(start, (size_t)(p - start));
	addr = malloc((size_t)(p - start) + 1);
	if (!tok || !addr) {
		ps->oom = true;
		goto out;
	}
	ps->value = tok;
	if (*tok == '"') {
		const char *q = tok + 1;

		for (; *q && *q != '"'; q++) {
			if (*q == '\\') {
				if (q[1] != '"' && q[1] != '\\') {
					cfg_value_error(ps, "in a quoted path, a backslash escapes only \" and \\");
					goto out;
				}
				q++;
			}
			addr[n++] = *q;
		}
		addr[n] = '\0';
		if (*q != '"') {
			cfg_value_error(ps, "missing closing '\"'");
			goto out;
		}
		opts = (char *)q + 1;
		if (*opts && *opts != ',') {
			cfg_value_error(ps, "text after the closing '\"'; options follow a comma");
			goto out;
		}
		if (addr[0] != '/') {
			cfg_value_error(ps, "quotes are for Unix socket paths, which are absolute");
			goto out;
		}
	} else {
		opts = strchr(tok, ',');
		n = opts ? (size_t)(opts - tok) : strlen(tok);
		memcpy(addr, tok, n);
		addr[n] = '\0';
		if (!opts)
			opts = tok + n;
	}
	if (!cfg_backend_options(ps, opts, &b))
		goto out;
	ps->value = addr;
	if (!cfg_endpoint(ps, false, &b.ep, &b.host, &b.port))
		goto out;
	ps->value = tok;
	if (bl->route && b.ep.kind == EVFDD_ENDPOINT_ECHO) {
		cfg_value_error(ps, "an SNI route forwards to backends; echo is not one");
		goto out;
	}
	if ((b.ep.kind == EVFDD_ENDPOINT_ECHO && (*opts || *bl->n)) ||
	    (*bl->n && (*bl->v)[0].ep.kind == EVFDD_ENDPOINT_ECHO)) {
		cfg_value_error(ps, "echo is a backend of its own: it takes no options and no other backend");
		goto out;
	}
	for (size_t i = 0; i < *bl->n; i++)
		if (strcmp((*bl->v)[i].ep.text, b.ep.text) == 0) {
			cfg_value_error(ps, "this backend is already in the list; give each once");
			goto out;
		}
	if (*bl->n >= EVFDD_CONFIG_MAX_BACKENDS || (bl->route && s->nbackends >= EVFDD_CONFIG_MAX_BACKENDS &&
						    !cfg_backend_known(s, b.ep.text))) {
		cfg_value_error(ps, "too many backends (at most %d per service)", EVFDD_CONFIG_MAX_BACKENDS);
		goto out;
	}
	/* A route's backend is also one of the service's, once (its health and counters are one). */
	if (bl->route && !cfg_backend_known(s, b.ep.text) && !cfg_backend_append_copy(ps, &b))
		goto out;
	list = realloc(*bl->v, (*bl->n + 1) * sizeof(*list));
	if (!list) {
		ps->oom = true;
		goto out;
	}
	*bl->v = list;
	list[(*bl->n)++] = b;
	memset(&b, 0, sizeof(b));
	ok = true;
out:
	if (!ok) {
		cfg_endpoint_free(&b.ep);
		free(b.host);
		free(b.port);
	}
	ps->value = line_value;
	free(tok);
	free(addr);
	return p;
}

/* forward = BACKEND [BACKEND ...]; every forward line of the section appends. */
static void cfg_forward(struct cfg_parser *ps)
{
	struct evfdd_service *s = &ps->svc;
	struct cfg_blist bl = { .v = &s->backends, .n = &s->nbackends };
	const char *p = ps->value;
	char *text;

	if (asprintf(&text, "%s%s%s", s->forward_text ? s->forward_text : "", s->forward_text ? " " : "",
		     ps->value) < 0) {
		ps->oom = true;
		return;
	}
	free(s->forward_text);
	s->forward_text = text;
	for (;;) {
		while (cfg_blank(*p))
			p++;
		if (!*p)
			break;
		if (*p == '#') {
			char v[800];

			cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "\"%s\": a comment after a value starts with "
				  "';', not '#'", cfg_esc(ps->value, SIZE_MAX, true, v, sizeof(v)));
			break;
		}
		p = cfg_backend(ps, p, '\0', &bl);
	}
}

static void cfg_balance(struct cfg_parser *ps, enum evfdd_balance *out)
{
	static const char *const names[] = { "round-robin", "least-connections", "source-hash", "random-two" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(ps->value, names[i]) == 0) {
			*out = (enum evfdd_balance)i;
			return;
		}
	cfg_value_error(ps, "unknown policy; use round-robin, least-connections, source-hash or random-two");
}

/* A health check string: C escapes \r \n \t \\ \xHH; at most EVFDD_CONFIG_MAX_CHECK bytes. */
static bool cfg_check_string(struct cfg_parser *ps, const char *what, const char *s, size_t n, char **out,
			     size_t *outlen)
{
	char *buf = malloc(n + 1);
	size_t o = 0;

	if (!buf) {
		ps->oom = true;
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '\\') {
			buf[o++] = s[i];
			continue;
		}
		if (++i == n)
			goto bad;
		switch (s[i]) {
		case 'r': buf[o++] = '\r'; break;
		case 'n': buf[o++] = '\n'; break;
		case 't': buf[o++] = '\t'; break;
		case '\\': buf[o++] = '\\'; break;
		case 'x':
			if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2]))
				goto bad;
			{
				char hex[3] = { s[i + 1], s[i + 2], '\0' };

				buf[o++] = (char)strtoul(hex, NULL, 16);
			}
			i += 2;
			break;
		default:
			goto bad;
		}
	}
	if (o == 0 || o > EVFDD_CONFIG_MAX_CHECK) {
		cfg_value_error(ps, "%s: %s", what, o ? "longer than 256 bytes" : "empty; give the bytes after the colon");
		free(buf);
		return false;
	}
	*out = buf;
	*outlen = o;
	return true;
bad:
	cfg_value_error(ps, "%s: bad escape; use \\r, \\n, \\t, \\\\ or \\xHH (\\x20 for a blank)", what);
	free(buf);
	return false;
}

/* health_check = none | connect | send:STRING | expect:STRING | send:STRING expect:STRING */
static void cfg_health_check(struct cfg_parser *ps, struct evfdd_service *s)
{
	const char *p = ps->value, *e;

	if (strcmp(p, "none") == 0) {
		s->check = EVFDD_CHECK_NONE;
		return;
	}
	if (strcmp(p, "connect") == 0) {
		s->check = EVFDD_CHECK_CONNECT;
		return;
	}
	while (*p) {
		e = p;
		while (*e && !cfg_blank(*e))
			e++;
		if (strncmp(p, "send:", 5) == 0 && !s->check_send && !s->check_expect) {
			if (!cfg_check_string(ps, "send", p + 5, (size_t)(e - p - 5), &s->check_send,
					      &s->check_send_len))
				return;
		} else if (strncmp(p, "expect:", 7) == 0 && !s->check_expect) {
			if (!cfg_check_string(ps, "expect", p + 7, (size_t)(e - p - 7), &s->check_expect,
					      &s->check_expect_len))
				return;
		} else {
			cfg_value_error(ps, "unknown check; use none, connect, send:STRING, expect:STRING or "
					"send:STRING expect:STRING");
			return;
		}
		for (p = e; cfg_blank(*p); p++)
			;
	}
	s->check = EVFDD_CHECK_EXCHANGE;
}

/* ---- the edge ------------------------------------------------------------------------------------- */

/* CIDR [CIDR ...] appended to *@v (allow, deny, proxy_from: list keys). */
static void cfg_cidrs(struct cfg_parser *ps, struct evfdd_cidr **v, size_t *n)
{
	const char *p = ps->value;

	for (;;) {
		struct evfdd_cidr c, *list;
		char tok[128], err[256];
		size_t len;

		while (cfg_blank(*p))
			p++;
		if (!*p)
			break;
		len = strcspn(p, " \t");
		if (len >= sizeof(tok) || *n >= 4096) {
			cfg_value_error(ps, "%s", len >= sizeof(tok) ? "an address that long is no CIDR prefix" :
					"too many prefixes (at most 4096)");
			return;
		}
		memcpy(tok, p, len);
		tok[len] = '\0';
		p += len;
		if (evfdd_cidr_parse(tok, &c, err, sizeof(err)) < 0) {
			cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "%s", err);
			continue;
		}
		list = realloc(*v, (*n + 1) * sizeof(*list));
		if (!list) {
			ps->oom = true;
			return;
		}
		*v = list;
		list[(*n)++] = c;
	}
}

/* BACKEND[+BACKEND...] at @p into @r (sni_route's value after NAME=, sni_default's whole value); returns where
 * it ends. */
static const char *cfg_route_backends(struct cfg_parser *ps, const char *p, struct evfdd_sni_route *r)
{
	struct cfg_blist bl = { .v = &r->backends, .n = &r->nbackends, .route = true };

	for (;;) {
		if (!*p || cfg_blank(*p) || *p == '+') {
			cfg_value_error(ps, "a backend is missing%s; join backends with '+', no blanks",
					*p == '+' ? " before '+'" : "");
			while (*p && !cfg_blank(*p))
				p++;
			return p;
		}
		p = cfg_backend(ps, p, '+', &bl);
		if (*p != '+')
			return p;
		p++;
	}
}

/* sni_route = NAME=BACKENDS [NAME=BACKENDS ...] (a list key) */
static void cfg_sni_route(struct cfg_parser *ps)
{
	struct evfdd_service *s = &ps->svc;
	const char *p = ps->value;

	for (;;) {
		struct evfdd_sni_route r = { 0 }, *list;
		char name[EVFDD_SNI_NAME_MAX + 1], err[256], e[600];
		const char *eq;
		size_t len;

		while (cfg_blank(*p))
			p++;
		if (!*p)
			break;
		len = strcspn(p, " \t=");
		eq = p + len;
		if (*eq != '=' || !len || len > EVFDD_SNI_NAME_MAX) {
			len = strcspn(p, " \t");
			cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "\"%s\": %s",
				  cfg_esc(p, len < 100 ? len : 100, true, e, sizeof(e)),
				  *eq != '=' ? "expected NAME=BACKENDS, e.g. www.example.com=10.0.0.1:443" :
				  "a server name has 1 to 255 characters");
			p += len;
			continue;
		}
		for (size_t i = 0; i < len; i++)
			name[i] = (char)tolower((unsigned char)p[i]);
		name[len] = '\0';
		if (evfdd_sni_name_check(name, err, sizeof(err)) < 0) {
			cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "%s", err);
			p = eq + strcspn(eq, " \t");
			continue;
		}
		for (size_t i = 0; i < s->nroutes; i++)
			if (strcmp(s->routes[i].name, name) == 0) {
				cfg_error(ps, ps->lineno, ps->sec_name, ps->key, "\"%s\" is routed twice; give each "
					  "name once", name);
				name[0] = '\0';
				break;
			}
		p = cfg_route_backends(ps, eq + 1, &r);
		if (!name[0] || !r.nbackends || s->nroutes >= EVFDD_CONFIG_MAX_BACKENDS) {
			if (name[0] && r.nbackends)
				cfg_value_error(ps, "too many routes (at most %d)", EVFDD_CONFIG_MAX_BACKENDS);
			cfg_backends_free(r.backends, r.nbackends);
			continue;
		}
		r.name = strdup(name);
		list = realloc(s->routes, (s->nroutes + 1) * sizeof(*list));
		if (list)
			s->routes = list;
		if (!r.name || !list) {
			free(r.name);
			cfg_backends_free(r.backends, r.nbackends);
			ps->oom = true;
			return;
		}
		s->routes[s->nroutes++] = r;
	}
}

/* tcp_keepalive = off | IDLE,INTERVAL,COUNT */
static void cfg_keepalive(struct cfg_parser *ps, struct evfdd_service *s)
{
	const char *v = ps->value, *c1, *c2;
	char part[64];
	uint32_t ms[2];
	uint64_t cnt;
	bool ok = true;

	if (strcmp(v, "off") == 0) {
		s->tcp_keepalive = false;
		return;
	}
	c1 = strchr(v, ',');
	c2 = c1 ? strchr(c1 + 1, ',') : NULL;
	if (!c2 || strchr(c2 + 1, ',')) {
		cfg_value_error(ps, "expected off or IDLE,INTERVAL,COUNT, e.g. 60s,10s,5");
		return;
	}
	for (int i = 0; i < 2; i++) {
		const char *from = i ? c1 + 1 : v, *to = i ? c2 : c1;

		snprintf(part, sizeof(part), "%.*s", (int)(to - from), from);
		ps->value = part;
		if (!cfg_duration(ps, MS_SECOND, 2 * MS_HOUR, &ms[i]))
			ok = false;
		else if (ms[i] % MS_SECOND) {
			cfg_value_error(ps, "in whole seconds (the kernel counts keepalive in seconds)");
			ok = false;
		}
	}
	ps->value = c2 + 1;
	if (!cfg_uint(ps, 1, 100, &cnt))
		ok = false;
	ps->value = v;
	if (!ok)
		return;
	s->tcp_keepalive = true;
	s->keepalive_idle_s = ms[0] / 1000;
	s->keepalive_intvl_s = ms[1] / 1000;
	s->keepalive_cnt = (unsigned)cnt;
}

/* source = ADDR: a numeric IPv4 or IPv6 address, no port */
static void cfg_source(struct cfg_parser *ps, struct evfdd_service *s)
{
	struct evfdd_sockaddr *a = &s->source;

	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, ps->value, &a->u.in.sin_addr) == 1) {
		a->u.in.sin_family = AF_INET;
		a->len = sizeof(a->u.in);
	} else if (inet_pton(AF_INET6, ps->value, &a->u.in6.sin6_addr) == 1) {
		a->u.in6.sin6_family = AF_INET6;
		a->len = sizeof(a->u.in6);
	} else {
		cfg_value_error(ps, "not a numeric IPv4 or IPv6 address (no port, no brackets, no name)");
		return;
	}
	s->has_source = true;
}

/* Keep every edge key's value as written, so that a reload can tell whether the edge changed. */
static void cfg_edge_text(struct cfg_parser *ps, struct evfdd_service *s)
{
	char *text;

	if (asprintf(&text, "%s%s=%s\n", s->edge_text ? s->edge_text : "", ps->key, ps->value) < 0) {
		ps->oom = true;
		return;
	}
	free(s->edge_text);
	s->edge_text = text;
}

int evfdd_config_resolve(const char *host, const char *port, struct evfdd_endpoint *out, char *why, size_t whylen)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res = NULL, *ai;
	struct evfdd_sockaddr *a;
	int rc, err = 0;

	memset(out, 0, sizeof(*out));
	out->kind = EVFDD_ENDPOINT_INET;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		err = rc == EAI_MEMORY ? -ENOMEM : rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
		snprintf(why, whylen, "%s", rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		goto out;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) || ai->ai_addrlen > sizeof(a->u))
			continue;
		a = realloc(out->addrs, (out->naddrs + 1) * sizeof(*a));
		if (!a) {
			err = -ENOMEM;
			snprintf(why, whylen, "out of memory");
			goto out;
		}
		out->addrs = a;
		memset(&a[out->naddrs], 0, sizeof(*a));
		memcpy(&a[out->naddrs].u, ai->ai_addr, ai->ai_addrlen);
		a[out->naddrs].len = ai->ai_addrlen;
		out->naddrs++;
	}
	if (!out->naddrs) {
		err = -EHOSTUNREACH;
		snprintf(why, whylen, "no IPv4 or IPv6 address");
	}
out:
	if (res)
		freeaddrinfo(res);
	if (err) {
		free(out->addrs);
		out->addrs = NULL;
		out->naddrs = 0;
	}
	return err;
}

/* ---- sections -------------------------------------------------------------------------------------- */

static void cfg_backends_free(struct evfdd_backend_conf *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		cfg_endpoint_free(&b[i].ep);
		free(b[i].host);
		free(b[i].port);
	}
	free(b);
}

static void cfg_service_free(struct evfdd_service *s)
{
	free(s->name);
	cfg_endpoint_free(&s->listen);
	free(s->forward_text);
	cfg_backends_free(s->backends, s->nbackends);
	free(s->check_send);
	free(s->check_expect);
	free(s->proxy_from);
	free(s->allow);
	free(s->deny);
	for (size_t i = 0; i < s->nroutes; i++) {
		free(s->routes[i].name);
		cfg_backends_free(s->routes[i].backends, s->routes[i].nbackends);
	}
	free(s->routes);
	cfg_backends_free(s->sni_default.backends, s->sni_default.nbackends);
	free(s->edge_text);
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

/* A service routed by SNI shows its routes where others show their forward list. */
static void cfg_sni_forward_text(struct cfg_parser *ps, struct evfdd_service *s)
{
	char *text = NULL, *next;

	for (size_t i = 0; i < s->nroutes + 1; i++) {
		const struct evfdd_sni_route *r = i < s->nroutes ? &s->routes[i] : &s->sni_default;

		if (!r->nbackends)
			continue;
		for (size_t k = 0; k < r->nbackends; k++) {
			if (asprintf(&next, "%s%s%s%s%s", text ? text : "", text && k == 0 ? " " : "",
				     k == 0 ? (r->name ? r->name : "default") : "+", k == 0 ? "=" : "",
				     r->backends[k].ep.text) < 0) {
				ps->oom = true;
				free(text);
				return;
			}
			free(text);
			text = next;
		}
	}
	free(s->forward_text);
	s->forward_text = text;
}

/* The edge keys' rules that need the whole section. */
static void cfg_edge_checks(struct cfg_parser *ps, struct evfdd_service *s)
{
	bool unix_listen = s->listen.kind == EVFDD_ENDPOINT_UNIX;
	bool echo = s->nbackends && s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO;
	static const int tcp_only[] = { SK_ALLOW, SK_DENY, SK_MAX_PER_SOURCE, SK_PROXY_FROM };

	if (s->send_proxy && echo)
		cfg_error(ps, ps->key_line[SK_SEND_PROXY], ps->sec_name, "send_proxy",
			  "the echo has no backend to tell; remove it");
	if (ps->key_line[SK_PROXY_FROM] && !s->accept_proxy)
		cfg_error(ps, ps->key_line[SK_PROXY_FROM], ps->sec_name, "proxy_from",
			  "applies only with accept_proxy = yes");
	if (unix_listen) {
		for (size_t i = 0; i < sizeof(tcp_only) / sizeof(tcp_only[0]); i++)
			if (ps->key_line[tcp_only[i]])
				cfg_error(ps, ps->key_line[tcp_only[i]], ps->sec_name, service_keys[tcp_only[i]],
					  "applies only to a TCP listener: on a Unix socket its mode decides who may "
					  "connect (socket_mode); remove it");
	} else if (s->accept_proxy && !ps->key_line[SK_PROXY_FROM]) {
		cfg_error(ps, ps->key_line[SK_ACCEPT_PROXY], ps->sec_name, "accept_proxy",
			  "needs proxy_from: the addresses of the load balancers that may send a header (anyone "
			  "else could claim any address)");
	}
	if (ps->key_line[SK_PROXY_TIMEOUT] && !s->accept_proxy && !ps->key_line[SK_SNI_ROUTE])
		cfg_error(ps, ps->key_line[SK_PROXY_TIMEOUT], ps->sec_name, "proxy_timeout",
			  "applies only with accept_proxy or sni_route; remove it");
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
		free(ps->g_dup.upgrade_binary);
		cfg_endpoint_free(&ps->g_dup.metrics);
		memset(&ps->g_dup, 0, sizeof(ps->g_dup));
	}
	if (ps->sec != SEC_SERVICE)
		goto out;

	if (ps->key_line[SK_SNI_ROUTE]) {
		if (ps->key_line[SK_FORWARD])
			cfg_error(ps, ps->key_line[SK_FORWARD], ps->sec_name, "forward",
				  "a service routed by SNI takes its backends from sni_route and sni_default; "
				  "remove forward, or move its backends to sni_default");
		else if (!s->nroutes)
			ps->sec_keep = false;   /* every route had an error, reported */
		else
			cfg_sni_forward_text(ps, s);
	} else if (ps->key_line[SK_SNI_DEFAULT]) {
		cfg_error(ps, ps->key_line[SK_SNI_DEFAULT], ps->sec_name, "sni_default",
			  "applies only with sni_route; use forward for a service that does not route by name");
	} else if (!ps->key_line[SK_FORWARD]) {
		cfg_error(ps, ps->sec_line, ps->sec_name, "forward",
			  "missing; every service needs forward = HOST:PORT, [IPv6]:PORT, an absolute Unix "
			  "socket path or echo (or sni_route)");
	} else if (!s->nbackends) {
		ps->sec_keep = false;   /* every backend had an error, reported */
	}
	cfg_edge_checks(ps, s);
	if (ps->key_line[SK_SOCKET_MODE] && s->listen.kind == EVFDD_ENDPOINT_INET)
		cfg_error(ps, ps->key_line[SK_SOCKET_MODE], ps->sec_name, "socket_mode",
			  "applies only to a Unix socket listen path; remove it");
	for (size_t i = 0; i < s->nbackends; i++)
		if (s->listen.kind != EVFDD_ENDPOINT_NONE && cfg_endpoint_overlap(&s->listen, &s->backends[i].ep))
			cfg_error(ps, ps->key_line[SK_FORWARD] ? ps->key_line[SK_FORWARD] : ps->key_line[SK_SNI_ROUTE],
				  ps->sec_name, ps->key_line[SK_FORWARD] ? "forward" : "sni_route",
				  "\"%s\": same address as this service's listen; that would forward to itself",
				  cfg_esc(s->backends[i].ep.text, SIZE_MAX, true, text, sizeof(text)));
	if (s->nbackends && s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO) {
		static const int backend_keys[] = { SK_BALANCE, SK_RETRIES, SK_FALL, SK_RISE, SK_DOWN_TIME,
						    SK_HEALTH_CHECK, SK_HEALTH_INTERVAL, SK_RESOLVE_INTERVAL };

		for (size_t i = 0; i < sizeof(backend_keys) / sizeof(backend_keys[0]); i++)
			if (ps->key_line[backend_keys[i]])
				cfg_error(ps, ps->key_line[backend_keys[i]], ps->sec_name,
					  service_keys[backend_keys[i]],
					  "applies only to a service with backends, not to the echo; remove it");
	}
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

/* Names of activated sockets that are not services (listen.c takes them by these names). */
static const struct {
	const char *name, *what, *instead;
} reserved_names[] = {
	{ "control", "the control socket", "set the control socket's path with control = in [evfdd]" },
	{ "metrics", "the metrics endpoint's activated socket",
	  "set the endpoint's address with metrics = in [evfdd]" },
};

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
		.balance = EVFDD_BALANCE_ROUND_ROBIN,
		.retries = EVFDD_DEFAULT_RETRIES,
		.fall = EVFDD_DEFAULT_FALL,
		.rise = EVFDD_DEFAULT_RISE,
		.down_time_ms = EVFDD_DEFAULT_DOWN_TIME_MS,
		.health_interval_ms = EVFDD_DEFAULT_HEALTH_INTERVAL_MS,
		.proxy_timeout_ms = EVFDD_DEFAULT_PROXY_TIMEOUT_MS,
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
	for (size_t i = 0; i < sizeof(reserved_names) / sizeof(reserved_names[0]); i++)
		if (strcmp(ps->sec_name, reserved_names[i].name) == 0) {
			cfg_error(ps, ps->lineno, ps->sec_name, NULL, "reserved name (%s); rename the service, and %s",
				  reserved_names[i].what, reserved_names[i].instead);
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
	case GK_UPGRADE_BINARY:
		if (ps->value[0] != '/' || strlen(ps->value) >= 4096) {
			cfg_value_error(ps, "not an absolute path (at most 4095 bytes); give the binary evfdctl upgrade "
					"executes, such as /usr/sbin/evfdd, or leave the key out for the one evfdd was "
					"started from");
			break;
		}
		free(g->upgrade_binary);
		g->upgrade_binary = strdup(ps->value);
		if (!g->upgrade_binary)
			ps->oom = true;
		break;
	case GK_LOG_LEVEL:
		level = log_level_from_name(ps->value);
		if (level < 0)
			cfg_value_error(ps, "unknown level; use debug, info, notice, warning or err");
		else
			g->log_level = level;
		break;
	case GK_METRICS:
		/* like a listen address: numeric, or an absolute Unix socket path */
		cfg_endpoint_free(&g->metrics);
		cfg_endpoint(ps, true, &g->metrics, NULL, NULL);
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
		cfg_endpoint(ps, true, &s->listen, NULL, NULL);
		break;
	case SK_FORWARD:
		cfg_forward(ps);
		break;
	case SK_BALANCE:
		cfg_balance(ps, &s->balance);
		break;
	case SK_RETRIES:
		if (cfg_uint(ps, 0, EVFDD_CONFIG_MAX_RETRIES, &v))
			s->retries = (unsigned)v;
		break;
	case SK_FALL:
		if (cfg_uint(ps, 1, 100, &v))
			s->fall = (unsigned)v;
		break;
	case SK_RISE:
		if (cfg_uint(ps, 1, 100, &v))
			s->rise = (unsigned)v;
		break;
	case SK_DOWN_TIME:
		cfg_duration(ps, MS_SECOND, MS_HOUR, &s->down_time_ms);
		break;
	case SK_HEALTH_CHECK:
		cfg_health_check(ps, s);
		break;
	case SK_HEALTH_INTERVAL:
		cfg_duration(ps, 100, MS_HOUR, &s->health_interval_ms);
		break;
	case SK_RESOLVE_INTERVAL:
		if (cfg_duration(ps, 0, 24 * MS_HOUR, &s->resolve_interval_ms) && s->resolve_interval_ms &&
		    s->resolve_interval_ms < MS_SECOND)
			cfg_value_error(ps, "out of range; use 0 (resolve only at load) or 1s-24h");
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
	case SK_SEND_PROXY:
		if (strcmp(ps->value, "off") == 0)
			s->send_proxy = 0;
		else if (strcmp(ps->value, "v1") == 0)
			s->send_proxy = 1;
		else if (strcmp(ps->value, "v2") == 0)
			s->send_proxy = 2;
		else
			cfg_value_error(ps, "expected off, v1 or v2");
		break;
	case SK_ACCEPT_PROXY:
		cfg_bool(ps, &s->accept_proxy);
		break;
	case SK_PROXY_FROM:
		cfg_cidrs(ps, &s->proxy_from, &s->nproxy_from);
		break;
	case SK_PROXY_TIMEOUT:
		cfg_duration(ps, 100, MS_MINUTE, &s->proxy_timeout_ms);
		break;
	case SK_SNI_ROUTE:
		cfg_sni_route(ps);
		break;
	case SK_SNI_DEFAULT:
		if (*cfg_route_backends(ps, ps->value, &s->sni_default))
			cfg_value_error(ps, "one list of backends joined with '+', no blanks");
		break;
	case SK_ALLOW:
		cfg_cidrs(ps, &s->allow, &s->nallow);
		break;
	case SK_DENY:
		cfg_cidrs(ps, &s->deny, &s->ndeny);
		break;
	case SK_MAX_PER_SOURCE:
		if (cfg_uint(ps, 0, 1000000, &v))
			s->max_per_source = (uint32_t)v;
		break;
	case SK_TCP_KEEPALIVE:
		cfg_keepalive(ps, s);
		break;
	case SK_TCP_USER_TIMEOUT:
		cfg_duration(ps, 0, MS_HOUR, &s->tcp_user_timeout_ms);
		break;
	case SK_SOURCE:
		cfg_source(ps, s);
		break;
	case SK_ACCESS_LOG:
		cfg_bool(ps, &s->access_log);
		break;
	case SK_COUNT:
		break;
	}
	if (k >= SK_SEND_PROXY)
		cfg_edge_text(ps, s);
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
	char list[700];
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
	if (ps->key_line[k] && !cfg_list_key(ps->sec, k)) {
		cfg_error(ps, ps->lineno, ps->sec_name, name, "given twice (first at line %u); keep one",
			  ps->key_line[k]);
		return 1;
	}
	if (!ps->key_line[k])
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
	free(cfg->upgrade_binary);
	cfg_endpoint_free(&cfg->metrics);
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
	cfg->upgrade_binary = ps.g.upgrade_binary;
	ps.g.upgrade_binary = NULL;
	cfg->metrics = ps.g.metrics;
	memset(&ps.g.metrics, 0, sizeof(ps.g.metrics));
	cfg->log_level = ps.g.log_level;
	cfg->shutdown_timeout_ms = ps.g.shutdown_timeout_ms;
	cfg->source = strdup(name);
	if (!cfg->source)
		ps.oom = true;
out:
	if (ps.oom)
		cfg_error(&ps, 0, NULL, NULL, "out of memory");
	free(ps.g.control);
	free(ps.g.upgrade_binary);
	cfg_endpoint_free(&ps.g.metrics);
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
