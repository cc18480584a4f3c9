/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * evfdd's configuration parser: every error kind with its exact message (file, line, section, key),
 * every default, durations, IPv6 literals, Unix paths, the embedded default and the example file.
 * Files are written to a private temporary directory; no test needs the network (the one name that is
 * resolved is under .invalid, which never resolves, or localhost from /etc/hosts).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>
#include "../daemon/config.h"
#include "testutil.h"

static char tmpdir[] = "/tmp/evfdd-test-config.XXXXXX";
static char path[256];		/* the file last written */
static int nfiles;

/* Write @len bytes to a new file in tmpdir; path[] names it. */
static const char *write_bytes(const void *data, size_t len)
{
	FILE *f;

	snprintf(path, sizeof(path), "%s/t%d.conf", tmpdir, ++nfiles);
	f = fopen(path, "w");
	TU_CHECK(f, "fopen %s: %s", path, strerror(errno));
	TU_CHECK(fwrite(data, 1, len, f) == len, "fwrite");
	TU_CHECK(fclose(f) == 0, "fclose");
	return path;
}

static const char *write_text(const char *text)
{
	return write_bytes(text, strlen(text));
}

/* "F:..." in an expected message stands for the file's path. */
static void expand(const char *want, char *out, size_t size)
{
	if (want[0] == 'F' && want[1] == ':')
		snprintf(out, size, "%s%s", path, want + 1);
	else
		snprintf(out, size, "%s", want);
}

static void dump(const struct evfdd_config_errors *errs)
{
	fprintf(stderr, "  got %zu error(s):\n", errs->count);
	for (size_t i = 0; i < errs->count; i++)
		fprintf(stderr, "    %s\n", errs->list[i].message);
}

/* Load @text from a file and expect exactly the messages that follow (NULL-terminated), in order. */
static void expect_errors_at(int line, const char *text, ...)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg = (void *)1;
	const char *want;
	char exp[8192];
	size_t i = 0;
	va_list ap;
	int rc;

	rc = evfdd_config_load(write_text(text), &cfg, &errs);
	if (rc != -1 || cfg != NULL)
		dump(&errs);
	TU_CHECK(rc == -EINVAL && cfg == NULL, "test at line %d: load returned %d", line, rc);
	va_start(ap, text);
	while ((want = va_arg(ap, const char *))) {
		expand(want, exp, sizeof(exp));
		if (i >= errs.count || strcmp(errs.list[i].message, exp) != 0) {
			dump(&errs);
			TU_CHECK(0, "test at line %d: error %zu: want\n    %s", line, i, exp);
		}
		TU_CHECK(strcmp(errs.list[i].file, path) == 0, "file %s", errs.list[i].file);
		i++;
	}
	va_end(ap);
	if (i != errs.count)
		dump(&errs);
	TU_CHECK(i == errs.count, "test at line %d: %zu errors, expected %zu", line, errs.count, i);
	evfdd_config_errors_free(&errs);
}
#define expect_errors(...) expect_errors_at(__LINE__, __VA_ARGS__, (const char *)NULL)

static struct evfdd_config *expect_ok_at(int line, const char *text)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;
	int rc;

	rc = evfdd_config_load(write_text(text), &cfg, &errs);
	if (rc != 0)
		dump(&errs);
	TU_CHECK(rc == 0 && cfg, "test at line %d: load failed", line);
	TU_CHECK(errs.count == 0 && errs.omitted == 0, "errors on success");
	evfdd_config_errors_free(&errs);
	return cfg;
}
#define expect_ok(text) expect_ok_at(__LINE__, text)

static unsigned online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
}

static void check_service_defaults(const struct evfdd_service *s)
{
	TU_CHECK(s->max_connections == 10000, "%u", s->max_connections);
	TU_CHECK(s->connect_timeout_ms == 5000, "%u", s->connect_timeout_ms);
	TU_CHECK(s->idle_timeout_ms == 3600000, "%u", s->idle_timeout_ms);
	TU_CHECK(s->backlog == 511, "%d", s->backlog);
	TU_CHECK(s->tcp_nodelay, "tcp_nodelay");
	TU_CHECK(s->socket_mode == 0666, "%o", (unsigned)s->socket_mode);
	TU_CHECK(s->balance == EVFDD_BALANCE_ROUND_ROBIN && s->retries == 2 && s->fall == 3 && s->rise == 2, "balance");
	TU_CHECK(s->down_time_ms == 10000 && s->health_interval_ms == 2000 && s->resolve_interval_ms == 0, "health");
	TU_CHECK(s->check == EVFDD_CHECK_NONE && !s->check_send && !s->check_expect, "check");
	for (size_t i = 0; i < s->nbackends; i++)
		TU_CHECK(s->backends[i].weight == 1 && s->backends[i].maxconn == 0 && !s->backends[i].backup, "options");
}

static void check_inet4(const struct evfdd_endpoint *ep, const char *addr, unsigned port)
{
	char buf[64];

	TU_CHECK(ep->kind == EVFDD_ENDPOINT_INET && ep->naddrs == 1, "kind %d naddrs %zu", ep->kind, ep->naddrs);
	TU_CHECK(ep->addrs[0].u.sa.sa_family == AF_INET && ep->addrs[0].len == sizeof(struct sockaddr_in), "family");
	inet_ntop(AF_INET, &ep->addrs[0].u.in.sin_addr, buf, sizeof(buf));
	TU_CHECK(strcmp(buf, addr) == 0, "%s", buf);
	TU_CHECK(ntohs(ep->addrs[0].u.in.sin_port) == port, "port %u", ntohs(ep->addrs[0].u.in.sin_port));
}

static void check_inet6(const struct evfdd_endpoint *ep, const char *addr, unsigned port, bool v6only)
{
	char buf[64];

	TU_CHECK(ep->kind == EVFDD_ENDPOINT_INET && ep->naddrs == 1, "kind %d naddrs %zu", ep->kind, ep->naddrs);
	TU_CHECK(ep->addrs[0].u.sa.sa_family == AF_INET6 && ep->addrs[0].len == sizeof(struct sockaddr_in6),
	         "family");
	inet_ntop(AF_INET6, &ep->addrs[0].u.in6.sin6_addr, buf, sizeof(buf));
	TU_CHECK(strcmp(buf, addr) == 0, "%s", buf);
	TU_CHECK(ntohs(ep->addrs[0].u.in6.sin6_port) == port, "port");
	TU_CHECK(ep->v6only == v6only, "v6only %d", ep->v6only);
}

static void check_unix(const struct evfdd_endpoint *ep, const char *p)
{
	TU_CHECK(ep->kind == EVFDD_ENDPOINT_UNIX && ep->naddrs == 1, "kind %d", ep->kind);
	TU_CHECK(ep->addrs[0].u.un.sun_family == AF_UNIX, "family");
	TU_CHECK(strcmp(ep->addrs[0].u.un.sun_path, p) == 0, "%s", ep->addrs[0].u.un.sun_path);
	TU_CHECK(ep->addrs[0].len == offsetof(struct sockaddr_un, sun_path) + strlen(p) + 1, "len");
}

/* ---- the embedded default and the example --------------------------------------------------------- */

static void check_default_config(const struct evfdd_config *cfg)
{
	const struct evfdd_service *echo, *fwd;

	TU_CHECK(cfg->nservices == 2, "%zu", cfg->nservices);
	echo = evfdd_config_service(cfg, "echo");
	fwd = evfdd_config_service(cfg, "forward");
	TU_CHECK(echo && fwd, "services");
	check_inet4(&echo->listen, "127.0.0.1", 7777);
	TU_CHECK(echo->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO && echo->backends[0].ep.naddrs == 0, "echo");
	check_inet4(&fwd->listen, "127.0.0.1", 7778);
	check_inet4(&fwd->backends[0].ep, "127.0.0.1", 7777);
	check_service_defaults(echo);
	check_service_defaults(fwd);
	TU_CHECK(cfg->log_level == LOG_INFO, "level");
	TU_CHECK(cfg->workers == online_cpus() && cfg->rings == 2 * cfg->workers, "workers");
}

static void test_embedded_default(void)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;

	TU_CHECK(evfdd_config_load(NULL, &cfg, &errs) == 0, "load");
	TU_CHECK(errs.count == 0, "errors");
	TU_CHECK(strcmp(cfg->source, EVFDD_CONFIG_DEFAULT_NAME) == 0, "%s", cfg->source);
	check_default_config(cfg);
	evfdd_config_free(cfg);
	evfdd_config_errors_free(&errs);

	/* the same text through the string entry point; errs may be NULL */
	TU_CHECK(evfdd_config_load_string(evfdd_config_default_text, "x", &cfg, NULL) == 0, "load_string");
	TU_CHECK(strcmp(cfg->source, "x") == 0, "source");
	check_default_config(cfg);
	evfdd_config_free(cfg);
}

static void test_example_file(void)
{
	const char *top = getenv("top_srcdir");
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;
	const struct evfdd_service *web;
	char p[4096];

	snprintf(p, sizeof(p), "%s/conf/evfdd.conf", top ? top : ".");
	if (evfdd_config_load(p, &cfg, &errs) != 0) {
		dump(&errs);
		TU_CHECK(0, "%s does not load", p);
	}
	/* the example shows the defaults: [evfdd] and [web] must carry exactly them */
	TU_CHECK(cfg->workers == online_cpus() && cfg->rings == 2 * cfg->workers, "workers");
	TU_CHECK(cfg->control == NULL && cfg->log_level == LOG_INFO && cfg->shutdown_timeout_ms == 10000, "globals");
	web = evfdd_config_service(cfg, "web");
	TU_CHECK(web, "no [web]");
	check_service_defaults(web);
	check_inet4(&web->listen, "127.0.0.1", 8080);
	check_inet4(&web->backends[0].ep, "127.0.0.1", 8000);
	evfdd_config_free(cfg);
	evfdd_config_errors_free(&errs);
}

/* ---- defaults and values -------------------------------------------------------------------------- */

static void test_defaults(void)
{
	struct evfdd_config *cfg;
	const struct evfdd_service *s;

	cfg = expect_ok("[s]\nforward = echo\n");
	TU_CHECK(cfg->workers == online_cpus(), "workers %u", cfg->workers);
	TU_CHECK(cfg->rings == 2 * cfg->workers, "rings %u", cfg->rings);
	TU_CHECK(cfg->control == NULL, "control");
	TU_CHECK(cfg->log_level == LOG_INFO, "log_level");
	TU_CHECK(cfg->shutdown_timeout_ms == 10000, "shutdown");
	TU_CHECK(cfg->nservices == 1 && strcmp(cfg->source, path) == 0, "source");
	s = &cfg->services[0];
	TU_CHECK(strcmp(s->name, "s") == 0 && s->line == 1, "name");
	TU_CHECK(s->listen.kind == EVFDD_ENDPOINT_NONE && s->listen.naddrs == 0 && !s->listen.text, "listen");
	TU_CHECK(strcmp(s->backends[0].ep.text, "echo") == 0, "text");
	check_service_defaults(s);
	evfdd_config_free(cfg);

	/* rings follows workers when not given; an explicit value stands */
	cfg = expect_ok("[evfdd]\nworkers = 3\n[s]\nforward = echo\n");
	TU_CHECK(cfg->workers == 3 && cfg->rings == 6, "%u %u", cfg->workers, cfg->rings);
	evfdd_config_free(cfg);
	cfg = expect_ok("[evfdd]\nrings = 1\nworkers = 256\n[s]\nforward = echo\n");
	TU_CHECK(cfg->workers == 256 && cfg->rings == 1, "%u %u", cfg->workers, cfg->rings);
	evfdd_config_free(cfg);

	cfg = expect_ok("[evfdd]\nworkers=1\nrings=4096\ncontrol=/run/evfdd/ctl\nlog_level=debug\n"
			"shutdown_timeout=0\n[s]\nforward=echo\nmax_connections=1\nconnect_timeout=1ms\n"
			"idle_timeout=0\nbacklog=65535\ntcp_nodelay=no\n");
	TU_CHECK(cfg->workers == 1 && cfg->rings == 4096, "counts");
	TU_CHECK(strcmp(cfg->control, "/run/evfdd/ctl") == 0, "control");
	TU_CHECK(cfg->log_level == LOG_DEBUG && cfg->shutdown_timeout_ms == 0, "level");
	s = &cfg->services[0];
	TU_CHECK(s->max_connections == 1 && s->connect_timeout_ms == 1 && s->idle_timeout_ms == 0, "svc");
	TU_CHECK(s->backlog == 65535 && !s->tcp_nodelay, "svc");
	evfdd_config_free(cfg);

	/* every log level name */
	static const struct { const char *name; int level; } levels[] = {
		{ "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "notice", LOG_NOTICE },
		{ "warning", LOG_WARNING }, { "err", LOG_ERR },
	};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		char text[128];

		snprintf(text, sizeof(text), "[evfdd]\nlog_level = %s\n[s]\nforward = echo\n", levels[i].name);
		cfg = expect_ok(text);
		TU_CHECK(cfg->log_level == levels[i].level, "%s", levels[i].name);
		evfdd_config_free(cfg);
	}
}

static void test_durations(void)
{
	static const struct { const char *v; uint32_t ms; } ok[] = {
		{ "250ms", 250 }, { "5s", 5000 }, { "2m", 120000 }, { "1h", 3600000 }, { "7", 7000 },
		{ "0", 0 }, { "0ms", 0 }, { "720h", 720u * 3600000 }, { "007s", 7000 },
	};
	struct evfdd_config *cfg;
	char text[256];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		snprintf(text, sizeof(text), "[s]\nforward = echo\nidle_timeout = %s\n", ok[i].v);
		cfg = expect_ok(text);
		TU_CHECK(cfg->services[0].idle_timeout_ms == ok[i].ms, "%s: %u", ok[i].v, cfg->services[0].idle_timeout_ms);
		evfdd_config_free(cfg);
	}
	expect_errors("[s]\nforward = echo\nidle_timeout = 721h\n",
		      "F:3: [s] idle_timeout: \"721h\": out of range 0-720h");
	expect_errors("[s]\nforward = echo\nidle_timeout = 99999999999999999999999999h\n",
		      "F:3: [s] idle_timeout: \"99999999999999999999999999h\": out of range 0-720h");
	expect_errors("[s]\nforward = echo\nconnect_timeout = 0\n",
		      "F:3: [s] connect_timeout: \"0\": out of range 1ms-1h");
	expect_errors("[s]\nforward = echo\nconnect_timeout = 3601s\n",
		      "F:3: [s] connect_timeout: \"3601s\": out of range 1ms-1h");
	static const char *const bad[] = { "5x", "1.5s", "-1", "ms", "5 s", "5S", "1h30m", "+5s" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char want[256];

		snprintf(text, sizeof(text), "[evfdd]\nshutdown_timeout = %s\n[s]\nforward = echo\n", bad[i]);
		snprintf(want, sizeof(want), "F:2: [evfdd] shutdown_timeout: \"%s\": not a duration; use 250ms, "
			 "5s, 2m, 1h or a number of seconds", bad[i]);
		expect_errors(text, want);
	}
	expect_errors("[evfdd]\nshutdown_timeout = 2h\n[s]\nforward = echo\n",
		      "F:2: [evfdd] shutdown_timeout: \"2h\": out of range 0-1h");
}

static void test_numbers_and_booleans(void)
{
	static const char *const yes[] = { "yes", "true", "on", "1", "YES", "True" };
	static const char *const no[] = { "no", "false", "off", "0", "No", "OFF" };
	struct evfdd_config *cfg;
	char text[256];

	for (size_t i = 0; i < 6; i++) {
		snprintf(text, sizeof(text), "[s]\nforward = echo\ntcp_nodelay = %s\n", yes[i]);
		cfg = expect_ok(text);
		TU_CHECK(cfg->services[0].tcp_nodelay, "%s", yes[i]);
		evfdd_config_free(cfg);
		snprintf(text, sizeof(text), "[s]\nforward = echo\ntcp_nodelay = %s\n", no[i]);
		cfg = expect_ok(text);
		TU_CHECK(!cfg->services[0].tcp_nodelay, "%s", no[i]);
		evfdd_config_free(cfg);
	}
	expect_errors("[s]\nforward = echo\ntcp_nodelay = maybe\n",
		      "F:3: [s] tcp_nodelay: \"maybe\": not a boolean; use yes or no (also true/false, on/off, 1/0)");

	expect_errors("[evfdd]\nworkers = 0\nrings = 4097\n[s]\nforward = echo\n",
		      "F:2: [evfdd] workers: \"0\": out of range 1-256",
		      "F:3: [evfdd] rings: \"4097\": out of range 1-4096");
	expect_errors("[evfdd]\nworkers = 257\n[s]\nforward = echo\n",
		      "F:2: [evfdd] workers: \"257\": out of range 1-256");
	expect_errors("[evfdd]\nworkers = abc\nrings = +1\n[s]\nforward = echo\nbacklog = 1e3\n",
		      "F:2: [evfdd] workers: \"abc\": not a number; expected an integer from 1 to 256",
		      "F:3: [evfdd] rings: \"+1\": not a number; expected an integer from 1 to 4096",
		      "F:6: [s] backlog: \"1e3\": not a number; expected an integer from 1 to 65535");
	expect_errors("[s]\nforward = echo\nmax_connections = 1000001\nbacklog = 0\n",
		      "F:3: [s] max_connections: \"1000001\": out of range 1-1000000",
		      "F:4: [s] backlog: \"0\": out of range 1-65535");
	expect_errors("[s]\nforward = echo\nmax_connections = 18446744073709551616\n",
		      "F:3: [s] max_connections: \"18446744073709551616\": out of range 1-1000000");

	cfg = expect_ok("[s]\nlisten = /run/s.sock\nsocket_mode = 0660\nforward = echo\n"
			"[t]\nlisten = /run/t.sock\nsocket_mode = 600\nforward = echo\n");
	TU_CHECK(cfg->services[0].socket_mode == 0660 && cfg->services[1].socket_mode == 0600, "mode");
	evfdd_config_free(cfg);
	expect_errors("[s]\nlisten = /run/s.sock\nsocket_mode = 0888\nforward = echo\n"
		      "[t]\nlisten = /run/t.sock\nsocket_mode = 01777\nforward = echo\n",
		      "F:3: [s] socket_mode: \"0888\": not a file mode; use octal digits from 0 to 0777, e.g. 0660",
		      "F:7: [t] socket_mode: \"01777\": not a file mode; use octal digits from 0 to 0777, e.g. 0660");
	expect_errors("[s]\nlisten = 127.0.0.1:80\nsocket_mode = 0660\nforward = echo\n",
		      "F:3: [s] socket_mode: applies only to a Unix socket listen path; remove it");

	expect_errors("[evfdd]\nlog_level = verbose\n[s]\nforward = echo\n",
		      "F:2: [evfdd] log_level: \"verbose\": unknown level; use debug, info, notice, warning or err");
}

/* ---- addresses ------------------------------------------------------------------------------------ */

static void test_addresses(void)
{
	struct evfdd_config *cfg;
	const struct evfdd_service *s;
	char text[512], want[512], longpath[200];

	cfg = expect_ok("[a]\nlisten = [::]:80\nforward = [::1]:8080\n"
			"[b]\nlisten = *:81\nforward = [2001:db8::1]:1\n"
			"[c]\nlisten = 0.0.0.0:82\nforward = 192.0.2.1:65535\n"
			"[d]\nlisten = [fe80::1%lo]:83\nforward = /run/backend.sock\n"
			"[e]\nlisten = /run/evfdd/e.sock\nforward = echo\n"
			"[f]\nlisten = [::1]:84\nforward = localhost:85\n");
	s = evfdd_config_service(cfg, "a");
	check_inet6(&s->listen, "::", 80, true);
	check_inet6(&s->backends[0].ep, "::1", 8080, true);
	TU_CHECK(strcmp(s->listen.text, "[::]:80") == 0 && strcmp(s->backends[0].ep.text, "[::1]:8080") == 0, "text");
	s = evfdd_config_service(cfg, "b");
	check_inet6(&s->listen, "::", 81, false);	/* "*": one dual-stack socket */
	check_inet6(&s->backends[0].ep, "2001:db8::1", 1, true);
	s = evfdd_config_service(cfg, "c");
	check_inet4(&s->listen, "0.0.0.0", 82);
	check_inet4(&s->backends[0].ep, "192.0.2.1", 65535);
	s = evfdd_config_service(cfg, "d");
	check_inet6(&s->listen, "fe80::1", 83, true);
	TU_CHECK(s->listen.addrs[0].u.in6.sin6_scope_id == if_nametoindex("lo"), "scope");
	check_unix(&s->backends[0].ep, "/run/backend.sock");
	s = evfdd_config_service(cfg, "e");
	check_unix(&s->listen, "/run/evfdd/e.sock");
	s = evfdd_config_service(cfg, "f");
	TU_CHECK(s->backends[0].ep.kind == EVFDD_ENDPOINT_INET && s->backends[0].ep.naddrs >= 1, "localhost");
	for (size_t i = 0; i < s->backends[0].ep.naddrs; i++)
		TU_CHECK(ntohs(s->backends[0].ep.addrs[i].u.in.sin_port) == 85, "port");	/* same offset in in6 */
	TU_CHECK(evfdd_config_service(cfg, "g") == NULL, "lookup");
	evfdd_config_free(cfg);

	expect_errors("[s]\nlisten = 127.0.0.1:99999\nforward = 127.0.0.1:0\n",
		      "F:2: [s] listen: \"127.0.0.1:99999\": port out of range 1-65535",
		      "F:3: [s] forward: \"127.0.0.1:0\": port out of range 1-65535");
	expect_errors("[s]\nlisten = 127.0.0.1:http\nforward = 127.0.0.1\n",
		      "F:2: [s] listen: \"127.0.0.1:http\": port is not a number; expected 1-65535",
		      "F:3: [s] forward: \"127.0.0.1\": missing port; expected HOST:PORT, [IPv6]:PORT or an "
		      "absolute Unix socket path");
	expect_errors("[s]\nlisten = ::1:80\nforward = [::1\n",
		      "F:2: [s] listen: \"::1:80\": IPv6 addresses need brackets: [ADDRESS]:PORT",
		      "F:3: [s] forward: \"[::1\": missing ']' after the IPv6 address");
	expect_errors("[s]\nlisten = [::1]80\nforward = [nothex]:80\n",
		      "F:2: [s] listen: \"[::1]80\": missing port; write [IPv6]:PORT",
		      "F:3: [s] forward: \"[nothex]:80\": \"nothex\" is not an IPv6 address: Name or service "
		      "not known");
	expect_errors("[s]\nlisten = localhost:80\nforward = echo\n",
		      "F:2: [s] listen: \"localhost:80\": listen needs a numeric address (IPv4, [IPv6] or *); "
		      "names are not resolved for listeners");
	expect_errors("[s]\nlisten = :80\nforward = :81\n",
		      "F:2: [s] listen: \":80\": missing host; use *:PORT for every address",
		      "F:3: [s] forward: \":81\": missing host; give the backend's name or address");
	expect_errors("[s]\nlisten = echo\nforward = *:80\n",
		      "F:2: [s] listen: \"echo\": echo is a forward target; listen takes HOST:PORT, [IPv6]:PORT "
		      "or an absolute Unix socket path",
		      "F:3: [s] forward: \"*:80\": invalid host name; use a DNS name, an IPv4 address or [IPv6]");
	expect_errors("[s]\nlisten = run/s.sock\nforward = echo\n",
		      "F:2: [s] listen: \"run/s.sock\": relative path; Unix socket paths must be absolute");

	/* sun_path holds 107 bytes and the NUL */
	memset(longpath, 'a', sizeof(longpath));
	longpath[0] = '/';
	longpath[107] = '\0';
	snprintf(text, sizeof(text), "[s]\nlisten = %s\nforward = echo\n", longpath);
	cfg = expect_ok(text);
	check_unix(&cfg->services[0].listen, longpath);
	evfdd_config_free(cfg);
	longpath[107] = 'a';
	longpath[108] = '\0';
	snprintf(text, sizeof(text), "[s]\nlisten = %s\nforward = echo\n", longpath);
	snprintf(want, sizeof(want), "F:2: [s] listen: \"%s\": Unix socket path too long (108 bytes, at most 107)",
		 longpath);
	expect_errors(text, want);

	/* a forward to the service's own listen address, and two services on one address */
	expect_errors("[s]\nlisten = 127.0.0.1:80\nforward = 127.0.0.1:80\n",
		      "F:3: [s] forward: \"127.0.0.1:80\": same address as this service's listen; that would "
		      "forward to itself");
	expect_errors("[a]\nlisten = [::1]:80\nforward = echo\n\n[b]\nforward = echo\nlisten = [0::1]:80\n",
		      "F:7: [b] listen: \"[0::1]:80\": also the listen address of [a] (line 1); give each "
		      "service its own");
	expect_errors("[a]\nlisten = /run/x\nforward = echo\n[b]\nlisten = /run/x\nforward = echo\n",
		      "F:5: [b] listen: \"/run/x\": also the listen address of [a] (line 1); give each service "
		      "its own");
}

/* The edge's keys: values as parsed, and every error naming file, line, section and key. */
static void test_edge(void)
{
	struct evfdd_config *cfg;
	const struct evfdd_service *s;

	cfg = expect_ok("[s]\nlisten = 127.0.0.1:9\nsni_route = A.Example=127.0.0.1:1+127.0.0.1:2,weight=3 "
			"*.b.example=127.0.0.1:2\nsni_route = c.example=127.0.0.1:3\nsni_default = 127.0.0.1:4\n"
			"send_proxy = v2\naccept_proxy = yes\nproxy_from = 10.0.0.0/8\nproxy_from = ::1 192.0.2.7\n"
			"proxy_timeout = 250ms\nallow = 0.0.0.0/0\ndeny = 10.1.0.0/16\nmax_connections_per_source = 9\n"
			"tcp_keepalive = 60s,10s,5\ntcp_user_timeout = 30s\nsource = 127.0.0.2\naccess_log = yes\n");
	s = &cfg->services[0];
	TU_CHECK(s->nroutes == 3 && !strcmp(s->routes[0].name, "a.example") && !strcmp(s->routes[1].name, "*.b.example") &&
	         !strcmp(s->routes[2].name, "c.example"), "routes");
	TU_CHECK(s->routes[0].nbackends == 2 && s->routes[0].backends[1].weight == 3 && s->sni_default.nbackends == 1,
	         "route backends");
	/* every route's backends are the service's, once each */
	TU_CHECK(s->nbackends == 4, "%zu backends in the union", s->nbackends);
	TU_CHECK(s->send_proxy == 2 && s->accept_proxy && s->nproxy_from == 3 && s->proxy_timeout_ms == 250, "proxy");
	TU_CHECK(s->nallow == 1 && s->ndeny == 1 && s->max_per_source == 9, "rules");
	TU_CHECK(s->tcp_keepalive && s->keepalive_idle_s == 60 && s->keepalive_intvl_s == 10 && s->keepalive_cnt == 5 &&
	         s->tcp_user_timeout_ms == 30000, "tcp options");
	TU_CHECK(s->has_source && s->source.u.sa.sa_family == AF_INET && s->access_log, "source, access_log");
	TU_CHECK(s->edge_text && strstr(s->edge_text, "sni_route=c.example=127.0.0.1:3\n"), "edge_text");
	evfdd_config_free(cfg);

	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = 127.0.0.1:1\nsend_proxy = v3\naccept_proxy = yes\n",
		      "F:4: [s] send_proxy: \"v3\": expected off, v1 or v2",
		      "F:5: [s] accept_proxy: needs proxy_from: the addresses of the load balancers that may send a header "
		      "(anyone else could claim any address)");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = 127.0.0.1:1\nallow = 10.1.2.3/8\n",
		      "F:4: [s] allow: \"10.1.2.3/8\" has bits set past /8; did you mean 10.0.0.0/8?");
	expect_errors("[s]\nlisten = /run/x.sock\nforward = 127.0.0.1:1\ndeny = 10.0.0.0/8\n",
		      "F:4: [s] deny: applies only to a TCP listener: on a Unix socket its mode decides who may connect "
		      "(socket_mode); remove it");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = echo\nsend_proxy = v1\n",
		      "F:4: [s] send_proxy: the echo has no backend to tell; remove it");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nsni_route = a.example=127.0.0.1:1\nforward = 127.0.0.1:2\n",
		      "F:4: [s] forward: a service routed by SNI takes its backends from sni_route and sni_default; "
		      "remove forward, or move its backends to sni_default");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = 127.0.0.1:2\nsni_default = 127.0.0.1:1\n",
		      "F:4: [s] sni_default: applies only with sni_route; use forward for a service that does not "
		      "route by name");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nsni_route = a.example=echo\n",
		      "F:3: [s] sni_route: \"echo\": an SNI route forwards to backends; echo is not one");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nsni_route = a.example=127.0.0.1:1 a.example=127.0.0.1:2\n",
		      "F:3: [s] sni_route: \"a.example\" is routed twice; give each name once");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = 127.0.0.1:1\ntcp_keepalive = 1500ms,1s,0\n",
		      "F:4: [s] tcp_keepalive: \"1500ms\": in whole seconds (the kernel counts keepalive in seconds)",
		      "F:4: [s] tcp_keepalive: \"0\": out of range 1-100");
	expect_errors("[s]\nlisten = 127.0.0.1:9\nforward = 127.0.0.1:1\nsource = localhost\n",
		      "F:4: [s] source: \"localhost\": not a numeric IPv4 or IPv6 address (no port, no brackets, no "
		      "name)");
}

static void test_backends(void)
{
	struct evfdd_config *cfg;
	const struct evfdd_service *s;

	/* a list, options, a repeated forward appending, a quoted path with a blank and a comma */
	cfg = expect_ok("[s]\nforward = 127.0.0.1:1 127.0.0.1:2,weight=3,maxconn=7\n"
			"forward = \"/run/a b,c\\\"d\",backup\t[::1]:3\nbalance = source-hash\nretries = 0\n"
			"fall = 1\nrise = 100\ndown_time = 1h\nhealth_check = send:PING\\r\\n expect:+PONG\\x20ok\n"
			"health_interval = 100ms\nresolve_interval = 1s\n");
	s = &cfg->services[0];
	TU_CHECK(s->nbackends == 4, "%zu backends", s->nbackends);
	check_inet4(&s->backends[0].ep, "127.0.0.1", 1);
	check_inet4(&s->backends[1].ep, "127.0.0.1", 2);
	TU_CHECK(s->backends[1].weight == 3 && s->backends[1].maxconn == 7 && !s->backends[1].backup, "options");
	check_unix(&s->backends[2].ep, "/run/a b,c\"d");
	TU_CHECK(s->backends[2].backup && s->backends[2].weight == 1, "backup");
	TU_CHECK(strcmp(s->backends[2].ep.text, "/run/a b,c\"d") == 0, "name of a quoted path");
	check_inet6(&s->backends[3].ep, "::1", 3, true);
	TU_CHECK(strcmp(s->forward_text, "127.0.0.1:1 127.0.0.1:2,weight=3,maxconn=7 \"/run/a b,c\\\"d\",backup\t[::1]:3")
	         == 0, "forward_text %s", s->forward_text);
	TU_CHECK(s->balance == EVFDD_BALANCE_SOURCE_HASH && s->retries == 0 && s->fall == 1 && s->rise == 100, "keys");
	TU_CHECK(s->down_time_ms == 3600000 && s->health_interval_ms == 100 && s->resolve_interval_ms == 1000, "times");
	TU_CHECK(s->check == EVFDD_CHECK_EXCHANGE && s->check_send_len == 6 && !memcmp(s->check_send, "PING\r\n", 6) &&
	         s->check_expect_len == 8 && !memcmp(s->check_expect, "+PONG ok", 8), "check strings");
	TU_CHECK(!s->backends[0].host && !s->backends[2].host, "numeric: nothing to re-resolve");
	evfdd_config_free(cfg);
	cfg = expect_ok("[s]\nforward = localhost:9\nbalance = random-two\nhealth_check = connect\n");
	TU_CHECK(cfg->services[0].backends[0].host && !strcmp(cfg->services[0].backends[0].host, "localhost") &&
	         !strcmp(cfg->services[0].backends[0].port, "9"), "a name is kept for re-resolution");
	TU_CHECK(cfg->services[0].balance == EVFDD_BALANCE_RANDOM_TWO && cfg->services[0].check == EVFDD_CHECK_CONNECT,
	         "keys");
	evfdd_config_free(cfg);

	/* every new key's errors name the file, line, section and key */
	expect_errors("[s]\nforward = 127.0.0.1:1,weight=0 127.0.0.1:2,weight=257\n",
		      "F:2: [s] forward: \"127.0.0.1:1,weight=0\": weight needs a number from 1 to 256",
		      "F:2: [s] forward: \"127.0.0.1:2,weight=257\": weight needs a number from 1 to 256");
	expect_errors("[s]\nforward = 127.0.0.1:1,maxconn=0,fast\n",
		      "F:2: [s] forward: \"127.0.0.1:1,maxconn=0,fast\": maxconn needs a number from 1 to 1000000",
		      "F:2: [s] forward: \"127.0.0.1:1,maxconn=0,fast\": unknown option \"fast\"; a backend takes "
		      "weight=N, maxconn=N and backup");
	expect_errors("[s]\nforward = echo 127.0.0.1:1\n",
		      "F:2: [s] forward: \"127.0.0.1:1\": echo is a backend of its own: it takes no options and no "
		      "other backend");
	expect_errors("[s]\nforward = 127.0.0.1:1\nforward = 127.0.0.1:1\n",
		      "F:3: [s] forward: \"127.0.0.1:1\": this backend is already in the list; give each once");
	expect_errors("[s]\nforward = \"/run/x\n",
		      "F:2: [s] forward: \"\\\"/run/x\": missing closing '\"'");
	expect_errors("[s]\nforward = \"relative\"\n",
		      "F:2: [s] forward: \"\\\"relative\\\"\": quotes are for Unix socket paths, which are absolute");
	expect_errors("[s]\nforward = 127.0.0.1:1\nbalance = bogus\nretries = 11\nfall = 0\nrise = 101\n"
		      "down_time = 0\nhealth_check = bogus\nhealth_interval = 1ms\nresolve_interval = 500ms\n",
		      "F:3: [s] balance: \"bogus\": unknown policy; use round-robin, least-connections, source-hash "
		      "or random-two",
		      "F:4: [s] retries: \"11\": out of range 0-10",
		      "F:5: [s] fall: \"0\": out of range 1-100",
		      "F:6: [s] rise: \"101\": out of range 1-100",
		      "F:7: [s] down_time: \"0\": out of range 1s-1h",
		      "F:8: [s] health_check: \"bogus\": unknown check; use none, connect, send:STRING, "
		      "expect:STRING or send:STRING expect:STRING",
		      "F:9: [s] health_interval: \"1ms\": out of range 100ms-1h",
		      "F:10: [s] resolve_interval: \"500ms\": out of range; use 0 (resolve only at load) or 1s-24h");
	expect_errors("[s]\nforward = 127.0.0.1:1\nhealth_check = send:\\q\n",
		      "F:3: [s] health_check: \"send:\\\\q\": send: bad escape; use \\r, \\n, \\t, \\\\ or "
		      "\\xHH (\\x20 for a blank)");
	expect_errors("[s]\nforward = echo\nhealth_check = connect\n",
		      "F:3: [s] health_check: applies only to a service with backends, not to the echo; remove it");
}

static void test_resolution_failure(void)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res = NULL;
	char want[512];
	int rc;

	/* .invalid never resolves (RFC 6761); the message carries whatever the resolver says */
	rc = getaddrinfo("backend.invalid", "80", &hints, &res);
	TU_CHECK(rc != 0, "backend.invalid resolved");
	snprintf(want, sizeof(want), "F:3: [web] forward: \"backend.invalid:80\": cannot resolve "
		 "\"backend.invalid\": %s; check the name or use an IP address",
		 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
	expect_errors("[web]\nlisten = 127.0.0.1:80\nforward = backend.invalid:80\n", want);
	expect_errors("[web]\nforward = bad_host!:80\n",
		      "F:2: [web] forward: \"bad_host!:80\": invalid host name; use a DNS name, an IPv4 address "
		      "or [IPv6]");
}

/* ---- structure errors ----------------------------------------------------------------------------- */

static void test_structure_errors(void)
{
	char name[80], text[256], want[256];
	struct evfdd_config *cfg;

	expect_errors("[web]\nforward = echo\nfoward = x\n",
		      "F:3: [web] foward: unknown key; a service takes listen, forward, max_connections, "
		      "connect_timeout, idle_timeout, backlog, tcp_nodelay, socket_mode, balance, retries, fall, rise, down_time, "
		      "health_check, health_interval, resolve_interval, send_proxy, accept_proxy, proxy_from, "
		      "proxy_timeout, sni_route, sni_default, allow, deny, max_connections_per_source, tcp_keepalive, "
		      "tcp_user_timeout, source, access_log");
	expect_errors("[evfdd]\nthreads = 4\n[web]\nforward = echo\n",
		      "F:2: [evfdd] threads: unknown key; [evfdd] takes workers, rings, control, log_level, "
		      "shutdown_timeout, metrics, upgrade_binary");
	expect_errors("; comment\nworkers = 4\n[web]\nforward = echo\n",
		      "F:2: workers: outside any section; put it under [evfdd] or under a service's [NAME]");
	expect_errors("[web]\nforward = echo\n[other]\nforward = echo\n[web]\nforward = 127.0.0.1:1\n",
		      "F:5: [web]: duplicate section (first at line 1); merge the two or rename one");
	expect_errors("[evfdd]\nworkers = 1\n[web]\nforward = echo\n[evfdd]\nworkers = 0\n",
		      "F:5: [evfdd]: duplicate section (first at line 1); merge the two",
		      "F:6: [evfdd] workers: \"0\": out of range 1-256");
	expect_errors("[web]\nforward = echo\nmax_connections = 5\nmax_connections = 6\n",
		      "F:4: [web] max_connections: given twice (first at line 3); keep one");
	expect_errors("[web]\nlisten = 127.0.0.1:80\n\n[ok]\nforward = echo\n",
		      "F:1: [web] forward: missing; every service needs forward = HOST:PORT, [IPv6]:PORT, an "
		      "absolute Unix socket path or echo (or sni_route)");
	expect_errors("[web]\nforward =\nlisten = \nbacklog=\n",
		      "F:2: [web] forward: empty value; give HOST:PORT, [IPv6]:PORT, an absolute Unix socket "
		      "path or echo",
		      "F:3: [web] listen: empty value; give an address, or remove the line to rely on an "
		      "activated socket",
		      "F:4: [web] backlog: empty value; give one, or remove the line to get the default");
	expect_errors("[control]\nforward = echo\n[ok]\nforward = echo\n",
		      "F:1: [control]: reserved name (the control socket); rename the service, and set the "
		      "control socket's path with control = in [evfdd]");
	expect_errors("[evfdd]\ncontrol = run/ctl\n[ok]\nforward = echo\n",
		      "F:2: [evfdd] control: \"run/ctl\": relative path; Unix socket paths must be absolute");
	cfg = expect_ok("[evfdd]\ncontrol =\n[ok]\nforward = echo\n");
	TU_CHECK(cfg->control == NULL, "empty control");
	TU_CHECK(cfg->upgrade_binary == NULL, "upgrade_binary by default");
	evfdd_config_free(cfg);
	cfg = expect_ok("[evfdd]\nupgrade_binary = /usr/sbin/evfdd\n[ok]\nforward = echo\n");
	TU_CHECK(cfg->upgrade_binary && strcmp(cfg->upgrade_binary, "/usr/sbin/evfdd") == 0, "upgrade_binary");
	evfdd_config_free(cfg);
	expect_errors("[evfdd]\nupgrade_binary = sbin/evfdd\n[ok]\nforward = echo\n",
		      "F:2: [evfdd] upgrade_binary: \"sbin/evfdd\": not an absolute path (at most 4095 bytes); give the "
		      "binary evfdctl upgrade executes, such as /usr/sbin/evfdd, or leave the key out for the one "
		      "evfdd was started from");

	expect_errors("[we b]\nforward = echo\n[]\nforward = echo\n[caf\xc3\xa9]\nforward = echo\n",
		      "F:1: [we b]: invalid service name; use 1-64 characters from A-Z a-z 0-9 _ . -",
		      "F:3: []: invalid service name; use 1-64 characters from A-Z a-z 0-9 _ . -",
		      "F:5: [caf\\xc3\\xa9]: invalid service name; use 1-64 characters from A-Z a-z 0-9 _ . -");
	memset(name, 'n', 64);
	name[64] = '\0';
	snprintf(text, sizeof(text), "[%s]\nforward = echo\n[A-z_0.9]\nforward = echo\n", name);
	cfg = expect_ok(text);
	TU_CHECK(strcmp(cfg->services[0].name, name) == 0, "64-byte name");
	TU_CHECK(strcmp(cfg->services[1].name, "A-z_0.9") == 0, "name");
	evfdd_config_free(cfg);
	strcat(name, "n");
	snprintf(text, sizeof(text), "[%s]\nforward = echo\n", name);
	snprintf(want, sizeof(want), "F:1: [%s]: invalid service name; use 1-64 characters from A-Z a-z 0-9 _ . -",
		 name);
	expect_errors(text, want);

	expect_errors("; nothing here\n[evfdd]\nworkers = 2\n",
		      "F: no service defined; add a section such as [web] with forward = HOST:PORT");
	expect_errors("", "F: no service defined; add a section such as [web] with forward = HOST:PORT");
}

static void test_too_many_services(void)
{
	size_t size = 1100 * 40, len = 0;
	char *text = malloc(size);
	char want[256];

	TU_CHECK(text, "malloc");
	for (int i = 0; i < 1030; i++)
		len += (size_t)snprintf(text + len, size - len, "[s%d]\nforward = echo\n", i);
	/* the 1025th section starts on line 2 * 1024 + 1 */
	snprintf(want, sizeof(want), "F:2049: [s1024]: too many services (at most 1024); split them across "
		 "evfdd instances");
	expect_errors(text, want);
	text[0] = '\0';
	len = 0;
	for (int i = 0; i < 1024; i++)
		len += (size_t)snprintf(text + len, size - len, "[s%d]\nforward = echo\n", i);
	evfdd_config_free(expect_ok(text));
	free(text);
}

static void test_syntax_errors(void)
{
	struct evfdd_config *cfg;

	expect_errors("[web]\nforward = echo\nthis line is bad\n= 5\n",
		      "F:3: syntax error: expected \"key = value\", a [section] header or a comment",
		      "F:4: [web]: missing key name before '='");
	expect_errors("[web\nforward = echo\n[ok]\nforward = echo\n",
		      "F:1: syntax error: section header without ']'");
	expect_errors("[web] forward = echo\n[ok]\nforward = echo\n",
		      "F:1: syntax error: text after the section header's ']'; comments start with ';'");
	/* sorted by line: the section's own error (at its header) first */
	expect_errors("[web]\nforward ; = echo\n",
		      "F:1: [web] forward: missing; every service needs forward = HOST:PORT, [IPv6]:PORT, an "
		      "absolute Unix socket path or echo (or sni_route)",
		      "F:2: syntax error: expected \"key = value\", a [section] header or a comment");

	/* accepted forms: BOM, CRLF, indentation (no continuation lines), inline ';' comments, "key: value",
	 * comments after a header; line numbers stay right */
	cfg = expect_ok("\xef\xbb\xbf; comment\r\n[web] ; the web\r\n\tlisten = 127.0.0.1:80 ; inline\r\n"
			"    forward: echo\r\n# hash comment\n\n   [b]   \nforward=echo\n");
	TU_CHECK(cfg->nservices == 2, "%zu", cfg->nservices);
	check_inet4(&cfg->services[0].listen, "127.0.0.1", 80);
	TU_CHECK(cfg->services[0].backends[0].ep.kind == EVFDD_ENDPOINT_ECHO, "forward: echo");
	TU_CHECK(cfg->services[0].line == 2 && cfg->services[1].line == 7, "lines");
	evfdd_config_free(cfg);
	/* a '#' after a value is part of it */
	expect_errors("[web]\nforward = echo # the echo\n",
		      "F:2: [web] forward: \"echo # the echo\": a comment after a value starts with ';', not '#'");
	expect_errors("[web]\nlisten = 127.0.0.1:80 # the web\nforward = echo\n",
		      "F:2: [web] listen: \"127.0.0.1:80 # the web\": port is not a number; expected 1-65535 (a "
		      "comment after a value starts with ';', not '#')");
	/* an indented line is its own key, not a continuation of the one above */
	expect_errors("[web]\nlisten = 127.0.0.1:80\n    forward = echo\n    bogus\n",
		      "F:4: syntax error: expected \"key = value\", a [section] header or a comment");
}

/* ---- bounded input -------------------------------------------------------------------------------- */

static void test_bounded_input(void)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;
	char text[1024], want[512];
	char *big;
	FILE *f;

	/* inih's buffer holds 200 bytes: a key = value line of 197 is the longest (blanks around it do not
	 * count); comments may be longer; later line numbers stay right */
	snprintf(text, sizeof(text), "[web]\nforward = echo\n  backlog = %0187d \r\n;%0400d\n", 1, 0);
	cfg = expect_ok(text);
	TU_CHECK(cfg->services[0].backlog == 1, "%d", cfg->services[0].backlog);
	evfdd_config_free(cfg);
	snprintf(text, sizeof(text), "[web]\nforward = echo\nbacklog = %0188d\n", 1);
	expect_errors(text, "F:3: line too long (198 bytes, at most 197); shorten it");
	snprintf(text, sizeof(text), "[web]\nforward = echo\nlisten = 127.0.0.1:80 ;%0400d\nbacklog = x\n", 0);
	expect_errors(text, "F:3: line too long (423 bytes, at most 197); shorten it",
		      "F:4: [web] backlog: \"x\": not a number; expected an integer from 1 to 65535");

	/* NUL bytes */
	static const char nul[] = "[web]\nforward = echo\nlisten = 1\0002\nbacklog = x\n";
	TU_CHECK(evfdd_config_load(write_bytes(nul, sizeof(nul) - 1), &cfg, &errs) == -EINVAL, "NUL accepted");
	TU_CHECK(errs.count == 2, "%zu", errs.count);
	snprintf(want, sizeof(want), "%s:3: NUL byte; the file must be text", path);
	TU_CHECK(strcmp(errs.list[0].message, want) == 0, "%s", errs.list[0].message);
	TU_CHECK(errs.list[0].line == 3 && !errs.list[0].section && !errs.list[0].key, "fields");
	TU_CHECK(errs.list[1].line == 4, "line after NUL: %u", errs.list[1].line);
	evfdd_config_errors_free(&errs);
	TU_CHECK(evfdd_config_load_buffer(nul, sizeof(nul) - 1, "mem", 0, &cfg, &errs) == -EINVAL, "buffer");
	TU_CHECK(strcmp(errs.list[0].message, "mem:3: NUL byte; the file must be text") == 0, "%s",
	         errs.list[0].message);
	evfdd_config_errors_free(&errs);

	/* larger than 1 MiB: refused before parsing; exactly 1 MiB is read */
	big = malloc(EVFDD_CONFIG_MAX_FILE + 2);
	TU_CHECK(big, "malloc");
	memset(big, '\n', EVFDD_CONFIG_MAX_FILE + 1);
	memcpy(big, "[web]\nforward = echo\n", 21);
	write_bytes(big, EVFDD_CONFIG_MAX_FILE);
	TU_CHECK(evfdd_config_load(path, &cfg, &errs) == 0, "1 MiB file refused");
	evfdd_config_free(cfg);
	evfdd_config_errors_free(&errs);
	write_bytes(big, EVFDD_CONFIG_MAX_FILE + 1);
	TU_CHECK(evfdd_config_load(path, &cfg, &errs) == -EINVAL && errs.count == 1, "large file");
	snprintf(want, sizeof(want), "%s: file too large (1048577 bytes, at most 1048576); is this the right file?",
		 path);
	TU_CHECK(strcmp(errs.list[0].message, want) == 0, "%s", errs.list[0].message);
	TU_CHECK(errs.list[0].line == 0, "line");
	evfdd_config_errors_free(&errs);
	big[EVFDD_CONFIG_MAX_FILE + 1] = '\0';
	TU_CHECK(evfdd_config_load_string(big, "mem", &cfg, &errs) == -EINVAL, "large string");
	TU_CHECK(strcmp(errs.list[0].message,
		        "mem: file too large (1048577 bytes, at most 1048576); is this the right file?") == 0,
	         "%s", errs.list[0].message);
	evfdd_config_errors_free(&errs);
	/* a pipe has no size, and is refused for what it is before anything is read from it */
	f = popen("head -c 1048577 /dev/zero", "r");
	TU_CHECK(f, "popen");
	snprintf(want, sizeof(want), "/dev/fd/%d", fileno(f));
	TU_CHECK(evfdd_config_load(want, &cfg, &errs) == -EINVAL && errs.count == 1, "pipe");
	TU_CHECK(strstr(errs.list[0].message, ": a FIFO (named pipe), not a regular file;"), "%s", errs.list[0].message);
	evfdd_config_errors_free(&errs);
	pclose(f);
	free(big);

	/* more errors than are recorded: the rest are counted and printed as a count */
	big = malloc(200 * 8 + 64);
	TU_CHECK(big, "malloc");
	strcpy(big, "[web]\nforward = echo\n");
	for (int i = 0; i < 150; i++)
		strcat(big, "junk\n");
	TU_CHECK(evfdd_config_load(write_text(big), &cfg, &errs) == -EINVAL, "junk");
	TU_CHECK(errs.count == EVFDD_CONFIG_MAX_ERRORS && errs.omitted == 50, "%zu %zu", errs.count, errs.omitted);
	TU_CHECK(errs.list[99].line == 102, "%u", errs.list[99].line);
	f = tmpfile();
	TU_CHECK(f, "tmpfile");
	evfdd_config_errors_print(f, &errs);
	rewind(f);
	{
		char line[512], last[512] = "";
		int n = 0;

		while (fgets(line, sizeof(line), f)) {
			n++;
			strcpy(last, line);
		}
		TU_CHECK(n == 101 && strcmp(last, "(50 more errors not shown)\n") == 0, "%d %s", n, last);
	}
	fclose(f);
	evfdd_config_errors_free(&errs);
	free(big);
}

static void test_file_errors(void)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg = (void *)1;
	char p[256], want[512];

	snprintf(p, sizeof(p), "%s/does-not-exist.conf", tmpdir);
	TU_CHECK(evfdd_config_load(p, &cfg, &errs) == -EINVAL && cfg == NULL, "missing file");
	TU_CHECK(errs.count == 1, "%zu", errs.count);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory (ENOENT); check the path", p);
	TU_CHECK(strcmp(errs.list[0].message, want) == 0, "%s", errs.list[0].message);
	TU_CHECK(strcmp(errs.list[0].file, p) == 0 && errs.list[0].line == 0, "fields");
	evfdd_config_errors_free(&errs);

	TU_CHECK(evfdd_config_load(tmpdir, &cfg, &errs) == -EINVAL, "directory");
	snprintf(want, sizeof(want), "%s: a directory, not a regular file; evfdd reads its configuration only from "
		 "a regular file (a symbolic link to one is fine): put the configuration in a regular file there",
		 tmpdir);
	TU_CHECK(errs.count == 1 && strcmp(errs.list[0].message, want) == 0, "%s", errs.list[0].message);
	evfdd_config_errors_free(&errs);

	/* without errs the result is the same, the messages are just not kept */
	TU_CHECK(evfdd_config_load(p, &cfg, NULL) == -EINVAL && cfg == NULL, "NULL errs");
}

/* Only a regular file is read. A FIFO with no writer would block open (without O_NONBLOCK) and read; a
 * device is refused without being read; a symbolic link to a regular file is fine. Each refusal names the
 * path and the type. */
static void test_file_types(void)
{
	static const struct {
		const char *name, *type;
	} kinds[] = {
		{ "fifo", "a FIFO (named pipe)" },
		{ "zero", "a character device" },	/* a link to /dev/zero: endless if it were read */
		{ "null", "a character device" },	/* a link to /dev/null: empty if it were read */
		{ "sock", "a socket" },
	};
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg = (void *)1;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char p[256], want[512];
	int fd;

	/* Were the FIFO opened blocking, the test would hang until testutil's watchdog (EVFD_TEST_TIMEOUT). */
	snprintf(p, sizeof(p), "%s/fifo", tmpdir);
	TU_CHECK(mkfifo(p, 0644) == 0, "mkfifo %s: %s", p, strerror(errno));
	snprintf(p, sizeof(p), "%s/zero", tmpdir);
	TU_CHECK(symlink("/dev/zero", p) == 0, "symlink: %s", strerror(errno));
	snprintf(p, sizeof(p), "%s/null", tmpdir);
	TU_CHECK(symlink("/dev/null", p) == 0, "symlink: %s", strerror(errno));
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/sock", tmpdir);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	TU_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0, "bind: %s", strerror(errno));
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", tmpdir, kinds[i].name);
		TU_CHECK(evfdd_config_load(p, &cfg, &errs) == -EINVAL && cfg == NULL, "%s accepted", kinds[i].name);
		snprintf(want, sizeof(want), "%s: %s, not a regular file; evfdd reads its configuration only from a "
			 "regular file (a symbolic link to one is fine): put the configuration in a regular file there",
			 p, kinds[i].type);
		TU_CHECK(errs.count == 1 && strcmp(errs.list[0].message, want) == 0, "%s", errs.list[0].message);
		TU_CHECK(strcmp(errs.list[0].file, p) == 0 && errs.list[0].line == 0, "fields");
		evfdd_config_errors_free(&errs);
		TU_CHECK(unlink(p) == 0, "unlink %s", p);
	}
	close(fd);

	/* a symbolic link to a regular file is read */
	write_text("[web]\nforward = echo\n");
	snprintf(p, sizeof(p), "%s/link.conf", tmpdir);
	TU_CHECK(symlink(path, p) == 0, "symlink: %s", strerror(errno));
	TU_CHECK(evfdd_config_load(p, &cfg, &errs) == 0 && cfg->nservices == 1, "link to a regular file");
	evfdd_config_free(cfg);
	evfdd_config_errors_free(&errs);
	TU_CHECK(unlink(p) == 0, "unlink %s", p);
}

/* Fields of a recorded error, not only its text. */
static void test_error_fields(void)
{
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;
	const struct evfdd_config_error *e;

	TU_CHECK(evfdd_config_load(write_text("x = 1\n[web]\nforward = 127.0.0.1:99999\n"), &cfg, &errs) == -EINVAL,
	         "accepted");
	TU_CHECK(errs.count == 2, "%zu", errs.count);
	e = &errs.list[0];
	TU_CHECK(e->line == 1 && !e->section && strcmp(e->key, "x") == 0, "outside");
	e = &errs.list[1];
	TU_CHECK(strcmp(e->file, path) == 0 && e->line == 3 && strcmp(e->section, "web") == 0 &&
	         strcmp(e->key, "forward") == 0, "fields");
	evfdd_config_errors_free(&errs);
	evfdd_config_errors_free(&errs);	/* twice is harmless */
}

int main(void)
{
	TU_CHECK(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));

	test_embedded_default();
	test_example_file();
	test_defaults();
	test_durations();
	test_numbers_and_booleans();
	test_addresses();
	test_backends();
	test_edge();
	test_resolution_failure();
	test_structure_errors();
	test_too_many_services();
	test_syntax_errors();
	test_bounded_input();
	test_file_errors();
	test_file_types();
	test_error_fields();

	for (int i = 1; i <= nfiles; i++) {
		snprintf(path, sizeof(path), "%s/t%d.conf", tmpdir, i);
		unlink(path);
	}
	TU_CHECK(rmdir(tmpdir) == 0, "rmdir %s: %s", tmpdir, strerror(errno));
	printf("test-config: all passed (%d files)\n", nfiles);
	return 0;
}
