/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * evfdd's configuration: parsing and validation only. Loading has no side effects (it reads the file,
 * sysconf for the CPU count, and resolves backend names); the daemon applies a loaded configuration
 * itself, so `evfdd -n` and a rejected reload never disturb a running instance.
 *
 * The file is INI (inih): a [evfdd] section for the daemon and one section per service, named by the
 * section. evfdd.conf(5) documents every key; conf/evfdd.conf is a commented example.
 *
 * Every error found is collected, not only the first, each as one line:
 *	FILE:LINE: [section] key: what is wrong; what to do
 * (the section, key or line are left out when the error has none, e.g. "FILE: cannot open: ...").
 */
#ifndef EVFDD_CONFIG_H
#define EVFDD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <netinet/in.h>

#define EVFDD_CONFIG_PATH "/etc/evfdd/evfdd.conf"
/* The file name errors in the embedded default would carry (there are none: a test loads it). */
#define EVFDD_CONFIG_DEFAULT_NAME "<embedded default>"

#define EVFDD_CONFIG_MAX_FILE (1024 * 1024)	/* bytes */
#define EVFDD_CONFIG_MAX_SERVICES 1024
#define EVFDD_CONFIG_NAME_MAX 64		/* service name: [A-Za-z0-9_.-]{1,64} */
#define EVFDD_CONFIG_MAX_ERRORS 100		/* recorded; more are only counted */
#define EVFDD_CONFIG_MAX_WORKERS 256
#define EVFDD_CONFIG_MAX_RINGS 4096

/* Defaults of the keys a file leaves out (evfdd.conf(5) says why each was chosen). workers defaults to the
 * online CPUs, rings to twice the workers. */
#define EVFDD_DEFAULT_LOG_LEVEL_NAME "info"
#define EVFDD_DEFAULT_SHUTDOWN_TIMEOUT_MS 10000u
#define EVFDD_DEFAULT_MAX_CONNECTIONS 10000u
#define EVFDD_DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define EVFDD_DEFAULT_IDLE_TIMEOUT_MS 3600000u	/* 1h */
#define EVFDD_DEFAULT_BACKLOG 511
#define EVFDD_DEFAULT_TCP_NODELAY true
#define EVFDD_DEFAULT_SOCKET_MODE 0666

/* The embedded default configuration, parsed by the same parser as a file. */
extern const char evfdd_config_default_text[];

/* What a listen or forward value names. */
enum evfdd_endpoint_kind {
	EVFDD_ENDPOINT_NONE = 0,	/* listen only: not given (the service needs an activated socket) */
	EVFDD_ENDPOINT_INET,		/* TCP over IPv4 or IPv6 */
	EVFDD_ENDPOINT_UNIX,		/* Unix stream socket at an absolute path */
	EVFDD_ENDPOINT_ECHO,		/* forward only: the built-in echo */
};

/* A socket address ready for bind(2) or connect(2). */
struct evfdd_sockaddr {
	socklen_t len;
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
		struct sockaddr_un un;
		struct sockaddr_storage storage;
	} u;
};

struct evfdd_endpoint {
	enum evfdd_endpoint_kind kind;
	char *text;			/* the value as written, for logs; NULL for NONE */
	/*
	 * INET: every address of the host, in getaddrinfo's order (RFC 6724 preference). For forward, the
	 * data plane tries them in turn until one connects. For listen, exactly one: a numeric address, or
	 * [::] for "*".
	 * UNIX: exactly one, the path (len covers the terminating NUL).
	 * NONE, ECHO: none.
	 */
	size_t naddrs;
	struct evfdd_sockaddr *addrs;
	/* listen on an IPv6 address only: IPV6_V6ONLY to set. false for "*" (one socket takes IPv4 too),
	 * true for "[::]" and every other IPv6 address. */
	bool v6only;
};

#define EVFDD_CONFIG_MAX_BACKENDS 256	/* per service */
#define EVFDD_CONFIG_MAX_RETRIES 10
#define EVFDD_CONFIG_MAX_WEIGHT 256
#define EVFDD_CONFIG_MAX_CHECK 256	/* bytes of a health check's send or expect string */

#define EVFDD_DEFAULT_RETRIES 2
#define EVFDD_DEFAULT_FALL 3
#define EVFDD_DEFAULT_RISE 2
#define EVFDD_DEFAULT_DOWN_TIME_MS 10000u
#define EVFDD_DEFAULT_HEALTH_INTERVAL_MS 2000u

/* How a service picks a backend for a new connection (evfdd.conf(5), balance). */
enum evfdd_balance {
	EVFDD_BALANCE_ROUND_ROBIN,
	EVFDD_BALANCE_LEAST_CONNECTIONS,
	EVFDD_BALANCE_SOURCE_HASH,
	EVFDD_BALANCE_RANDOM_TWO,
};

/* Active health checks (evfdd.conf(5), health_check). */
enum evfdd_check {
	EVFDD_CHECK_NONE,		/* passive health only */
	EVFDD_CHECK_CONNECT,		/* a connect */
	EVFDD_CHECK_EXCHANGE,		/* a connect, then send and/or expect */
};

/* One backend of a service's forward list. */
struct evfdd_backend_conf {
	/* INET, UNIX or ECHO (then the only one); text is the backend's name: the address as written,
	 * without options (for a quoted path, the path). */
	struct evfdd_endpoint ep;
	char *host, *port;		/* INET with a host name (re-resolved every resolve_interval); else NULL */
	unsigned weight;		/* 1-256 */
	uint32_t maxconn;		/* open connections at most; 0 = no limit of its own */
	bool backup;			/* only when no other backend can take a connection */
};

/* One route of sni_route (or sni_default, whose name is NULL). */
struct evfdd_sni_route {
	char *name;			/* lowercase: an exact name, or "*.suffix" */
	size_t nbackends;		/* >= 1; 0 for a service without sni_default */
	struct evfdd_backend_conf *backends;	/* each also in the service's backends (by name) */
};

#define EVFDD_DEFAULT_PROXY_TIMEOUT_MS 3000u

struct evfdd_cidr;

struct evfdd_service {
	char *name;			/* the section name, matched against FileDescriptorName= */
	unsigned line;			/* line of its [name] header, for messages at apply time */
	struct evfdd_endpoint listen;	/* kind NONE when not given */
	char *forward_text;		/* every forward line's value, joined with a blank */
	size_t nbackends;		/* >= 1 */
	struct evfdd_backend_conf *backends;	/* in the order written; names unique */
	enum evfdd_balance balance;
	unsigned retries;		/* other backends tried after a failed connect */
	unsigned fall, rise;		/* consecutive failures that mark a backend down, passes that mark it up */
	uint32_t down_time_ms;		/* passively down this long, then one trial connection */
	enum evfdd_check check;
	char *check_send, *check_expect;	/* EXCHANGE: bytes to send / to expect (either may be NULL) */
	size_t check_send_len, check_expect_len;
	uint32_t health_interval_ms;
	uint32_t resolve_interval_ms;	/* 0: names resolved only at load */
	uint32_t max_connections;	/* open client connections; the excess is closed at once */
	uint32_t connect_timeout_ms;	/* backend connect, per address tried */
	uint32_t idle_timeout_ms;	/* no byte either way for this long closes both sides; 0 = never */
	int backlog;			/* listen(2) backlog for self-bound listeners */
	bool tcp_nodelay;		/* TCP_NODELAY on both TCP sides */
	mode_t socket_mode;		/* file mode of a self-bound Unix listener */

	/* The edge (evfdd.conf(5)). With sni_route, backends holds every backend of every route, once. */
	unsigned send_proxy;		/* 0 off, 1 or 2: the PROXY protocol version sent to backends */
	bool accept_proxy;		/* a PROXY header comes first from clients in proxy_from */
	struct evfdd_cidr *proxy_from, *allow, *deny;
	size_t nproxy_from, nallow, ndeny;
	uint32_t proxy_timeout_ms;	/* for the PROXY header and the ClientHello */
	size_t nroutes;
	struct evfdd_sni_route *routes;	/* sni_route, in the order written */
	struct evfdd_sni_route sni_default;
	uint32_t max_per_source;	/* open connections per source address (IPv6: /64); 0 = no limit */
	bool tcp_keepalive;
	uint32_t keepalive_idle_s, keepalive_intvl_s;
	unsigned keepalive_cnt;
	uint32_t tcp_user_timeout_ms;	/* 0 = the kernel's default */
	bool has_source;
	struct evfdd_sockaddr source;	/* local address of backend sockets (port 0) */
	bool access_log;
	char *edge_text;		/* every edge key as written ("key=value\n"...): reloads compare it */
};

struct evfdd_config {
	char *source;			/* file name, or EVFDD_CONFIG_DEFAULT_NAME */
	unsigned workers;		/* libev loops, one thread each */
	unsigned rings;			/* io_uring rings shared out among the loops */
	char *control;			/* control socket path; NULL = decided at run time */
	char *upgrade_binary;		/* what an upgrade executes; NULL = the binary evfdd was started from */
	struct evfdd_endpoint metrics;	/* the Prometheus endpoint: INET or UNIX; kind NONE = off */
	int log_level;			/* LOG_ERR ... LOG_DEBUG (syslog.h) */
	uint32_t shutdown_timeout_ms;	/* how long stopping waits for connections to finish */
	size_t nservices;		/* >= 1 */
	struct evfdd_service *services;	/* in file order; names unique */
};

struct evfdd_config_error {
	char *file;
	unsigned line;			/* 0 when the error concerns the whole file */
	char *section;			/* NULL when none */
	char *key;			/* NULL when none */
	char *message;			/* "FILE:LINE: [section] key: what", no newline */
};

struct evfdd_config_errors {
	size_t count;
	struct evfdd_config_error *list;
	size_t omitted;			/* past EVFDD_CONFIG_MAX_ERRORS: counted, not recorded */
};

/* Flags for evfdd_config_load_buffer. */
enum {
	/* Do not resolve backend names: a forward host that is not a numeric address is an error. For
	 * fuzzing, where DNS lookups would be slow and leave the machine. */
	EVFDD_CONFIG_NO_RESOLVE = 1 << 0,
};

/*
 * evfdd_config_load - read, parse and validate a configuration file
 * @path: the file; NULL for the embedded default. Only a regular file (or a symbolic link to one) is read:
 *        a FIFO, a device, a directory or a socket there is an error naming its type, found without
 *        blocking and without reading from it
 * @out: receives the configuration on success (free with evfdd_config_free), NULL on failure
 * @errs: receives every error found (free with evfdd_config_errors_free, also after success); may be NULL
 *
 * Returns 0, or -EINVAL when at least one error was found (@errs lists them all).
 */
int evfdd_config_load(const char *path, struct evfdd_config **out, struct evfdd_config_errors *errs);

/* The same for text in memory; @name stands for the file name in messages. */
int evfdd_config_load_string(const char *text, const char *name, struct evfdd_config **out,
			     struct evfdd_config_errors *errs);

/*
 * evfdd_config_resolve - look up @host:@port (a backend's name) as loading does: every IPv4 and IPv6
 * address in getaddrinfo's order. Blocks; for the resolver thread.
 * Returns 0 with @out holding the addresses (free(@out->addrs)), or a negative errno / -EHOSTUNREACH
 * with @why (a message) filled in.
 */
int evfdd_config_resolve(const char *host, const char *port, struct evfdd_endpoint *out, char *why,
			 size_t whylen);

/* The same for @len bytes that may hold anything, NUL bytes included; see the flags above. */
int evfdd_config_load_buffer(const char *data, size_t len, const char *name, unsigned flags,
			     struct evfdd_config **out, struct evfdd_config_errors *errs);

void evfdd_config_free(struct evfdd_config *cfg);

/* The service named @name, or NULL. */
const struct evfdd_service *evfdd_config_service(const struct evfdd_config *cfg, const char *name);

/* One line per error, then a count of omitted ones. */
void evfdd_config_errors_print(FILE *f, const struct evfdd_config_errors *errs);
void evfdd_config_errors_free(struct evfdd_config_errors *errs);

#endif
