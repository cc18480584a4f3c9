/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The state an upgrade (re-exec in place) or a carried-over restart (systemd's file descriptor store) hands
 * to the next image: every established connection (which descriptors, what stage it was at, the bytes
 * received and not yet sent, its timers and counters), the services' and backends' counters, and what the
 * process as a whole had (how many upgrades so far). Written by the old image into a memfd sealed against
 * writes, read and checked byte by byte by the new one. This module is the format only: it touches no
 * socket and decides nothing; the descriptors themselves travel across execve or through the store.
 *
 * Format (all integers little-endian, fixed width):
 *   header: magic "EVFDDST\n" (8 bytes), u32 version, u32 header length (32), u64 payload length,
 *           u64 checksum of the payload (EVFDD_CARRY_CHECKSUM: damage, not an attacker: only evfdd and root
 *           can write the memfd, and it is sealed)
 *   payload: records, each u16 type, u16 reserved (0), u32 length, then that many bytes; a record type this
 *           version does not know is skipped (a later minor addition), a known one must parse exactly.
 * A change that an older reader would misread takes a new version; a reader accepts every version from
 * EVFDD_CARRY_MIN_VERSION to EVFDD_CARRY_VERSION (a new binary reads the previous format too).
 */
#ifndef EVFDD_CARRY_H
#define EVFDD_CARRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include "config.h"

#define EVFDD_CARRY_VERSION 1
#define EVFDD_CARRY_MIN_VERSION 1
/* The one FDNAME= every descriptor stored for a restart carries; the state's memfd among them. */
#define EVFDD_CARRY_FDNAME "evfdd-carry"
/* Limits a reader enforces (a record past them is damage). */
#define EVFDD_CARRY_MAX_FDS (1u << 20)
#define EVFDD_CARRY_MAX_DATA (64u << 20)    /* one half's unsent bytes, a preamble, an init */
#define EVFDD_CARRY_MAX_SIZE (4ull << 30)   /* the whole memfd */
/* A backend's name as written in forward: a host name (253) and a port, or a Unix path (108), quoted. */
#define EVFDD_CARRY_BACKEND_MAX 512

enum evfdd_carry_kind {
	EVFDD_CARRY_UPGRADE = 1,         /* evfdctl upgrade, SIGUSR2: execve in place */
	EVFDD_CARRY_RESTART = 2,         /* systemctl restart: through the file descriptor store */
};

/* The process as a whole. */
struct evfdd_carry_info {
	uint32_t kind;                   /* enum evfdd_carry_kind */
	uint64_t upgrades;               /* carried-over upgrades and restarts so far, this one included */
	uint64_t time_usec;              /* CLOCK_REALTIME when the old image wrote the state */
	uint64_t mono_ns;                /* CLOCK_MONOTONIC then: the new image measures the pause from it */
	uint64_t reloads, reloads_failed;
	char version[32];                /* the writer's PACKAGE_VERSION, NUL-terminated */
};

/* A descriptor the state refers to (by its index in the table): its number in the old image (the same after
 * execve) and its identity (st_dev, st_ino), by which a restart matches the descriptors systemd hands back. */
struct evfdd_carry_fd {
	int32_t fd;
	uint64_t dev, ino;
};

/* One counter of a service, by name (evfdd_counter_info), so that a reader with more or fewer counters
 * keeps those it knows. */
struct evfdd_carry_counter {
	char service[EVFDD_CONFIG_NAME_MAX + 1];
	char name[32];
	uint64_t value;
};

/* One backend's state and counters (backend.h), by service and backend name. */
struct evfdd_carry_backend {
	char service[EVFDD_CONFIG_NAME_MAX + 1];
	char name[EVFDD_CARRY_BACKEND_MAX];
	bool drained, down;
	uint64_t connections, connect_failures, bytes_up, bytes_down, state_changes, last_change_usec;
};

/* Where a connection was when the old image stopped it. */
enum evfdd_carry_stage {
	EVFDD_CARRY_EDGE = 0,            /* accepted; nothing done yet */
	EVFDD_CARRY_PRE = 1,             /* reading its PROXY header or ClientHello (pre_state) */
	EVFDD_CARRY_PICK = 2,            /* to pick a backend and connect (a connect in flight was abandoned) */
	EVFDD_CARRY_INIT = 3,            /* connected: what goes first (init) is being sent */
	EVFDD_CARRY_RELAY = 4,           /* relaying */
	EVFDD_CARRY_STAGES
};

/* One direction's bytes received and not yet sent, in order, and how far it got. */
struct evfdd_carry_half {
	bool eof, clean_eof, done;
	uint32_t len;
	const unsigned char *data;       /* writer: the caller's; reader: inside the mapped state */
	/* writer only, instead of @data: the @len bytes in pieces (the ring's buffers they sit in) */
	const struct iovec *iov;
	unsigned iovcnt;
};

struct evfdd_carry_conn {
	char service[EVFDD_CONFIG_NAME_MAX + 1];
	char backend[EVFDD_CARRY_BACKEND_MAX];   /* "" when none (echo, or not picked yet) */
	uint32_t route;                  /* 0: the service's pool; 1: the SNI route named in route_name; 2:
					  * sni_default */
	char route_name[256];
	uint32_t stage;                  /* enum evfdd_carry_stage */
	int32_t cfd, bfd;                /* indexes into the fd table; bfd -1 when there is none */
	uint64_t start_ns, last_ns;      /* CLOCK_MONOTONIC: accepted, last activity (the idle timer) */
	uint64_t bytes_up, bytes_down;
	struct evfdd_sockaddr peer, local;   /* len 0 when not known */
	bool src_counted;                /* holds a place in max_connections_per_source under peer */
	uint32_t pre_state;              /* 0 none, 1 PROXY header, 2 ClientHello */
	uint32_t pre_used;               /* bytes of pre taken by the PROXY header */
	uint64_t pre_deadline_ns;        /* CLOCK_MONOTONIC */
	uint32_t pre_len;
	const unsigned char *pre;
	uint32_t init_len, init_off, init_hdr;
	const unsigned char *init;       /* init_len bytes (init_off of them sent) */
	bool flushing;                   /* side dead failed: the other gets what is left, then a reset */
	uint32_t dead;                   /* 0 client, 1 backend */
	uint64_t flush_end_ns;
	bool rst_client, rst_backend;
	struct evfdd_carry_half up, down;
};

/* ---- writing (the old image) ---------------------------------------------------------------------- */

struct evfdd_carry_writer;

/* A new, empty state. Returns 0 or -ENOMEM. */
int evfdd_carry_writer_new(struct evfdd_carry_writer **out);
void evfdd_carry_writer_free(struct evfdd_carry_writer *w);

/* Each returns 0, -ENOMEM, or -EINVAL for a value the format cannot hold (a name too long, a length past
 * EVFDD_CARRY_MAX_DATA). */
int evfdd_carry_put_info(struct evfdd_carry_writer *w, const struct evfdd_carry_info *info);
/* Add @fd to the table (fstat for its identity); *@index receives its index. -EBADF if fstat fails. */
int evfdd_carry_put_fd(struct evfdd_carry_writer *w, int fd, int32_t *index);
int evfdd_carry_put_counter(struct evfdd_carry_writer *w, const struct evfdd_carry_counter *c);
int evfdd_carry_put_backend(struct evfdd_carry_writer *w, const struct evfdd_carry_backend *b);
int evfdd_carry_put_conn(struct evfdd_carry_writer *w, const struct evfdd_carry_conn *c);

/* The descriptors put so far, in table order (for the caller to hand over). */
size_t evfdd_carry_writer_nfds(const struct evfdd_carry_writer *w);
int evfdd_carry_writer_fd(const struct evfdd_carry_writer *w, size_t i);

/* Write the state into a new memfd (MFD_CLOEXEC | MFD_ALLOW_SEALING) and seal it (F_SEAL_WRITE, F_SEAL_GROW,
 * F_SEAL_SHRINK, F_SEAL_SEAL). Returns the memfd or a negative errno (-EINVAL: a connection's fd index past
 * the table or shared, or a descriptor put twice). */
int evfdd_carry_seal(struct evfdd_carry_writer *w);

/* ---- reading (the new image) ---------------------------------------------------------------------- */

struct evfdd_carry_state;

/*
 * evfdd_carry_open - map and check the state in @memfd
 * @why: receives, on failure, one line saying what is wrong ("version 7 is newer than this evfdd reads
 *       (1 to 1)", "checksum mismatch", "record 12 (connection): length 9 past the end", ...)
 *
 * Checks the seals (a memfd that can still be written is refused), the header, the version, the checksum
 * and every record: every field in range, every string NUL-terminated within its field and printable,
 * every fd index within the table, no fd index used twice by connections, a stage and addresses that make
 * sense. Does not close @memfd. Returns 0, -EPROTO (damaged or not a state: @why says how), -EPROTONOSUPPORT
 * (a version outside what this binary reads), or another negative errno.
 */
int evfdd_carry_open(int memfd, struct evfdd_carry_state **out, char *why, size_t whylen);
void evfdd_carry_close(struct evfdd_carry_state *st);

/* What it holds; pointers stay valid until evfdd_carry_close. @info is zeroed when the state had none. */
const struct evfdd_carry_info *evfdd_carry_info(const struct evfdd_carry_state *st);
size_t evfdd_carry_nfds(const struct evfdd_carry_state *st);
const struct evfdd_carry_fd *evfdd_carry_fd(const struct evfdd_carry_state *st, size_t i);
size_t evfdd_carry_ncounters(const struct evfdd_carry_state *st);
const struct evfdd_carry_counter *evfdd_carry_counter(const struct evfdd_carry_state *st, size_t i);
size_t evfdd_carry_nbackends(const struct evfdd_carry_state *st);
const struct evfdd_carry_backend *evfdd_carry_backend(const struct evfdd_carry_state *st, size_t i);
size_t evfdd_carry_nconns(const struct evfdd_carry_state *st);
const struct evfdd_carry_conn *evfdd_carry_conn(const struct evfdd_carry_state *st, size_t i);

/* Whether a state of format @version can be read by this binary (evfdd --check-state-version). */
bool evfdd_carry_version_ok(unsigned long version);

/* Whether @fd looks like a state (a sealed memfd starting with the magic): how a restart finds it among the
 * descriptors systemd hands back. */
bool evfdd_carry_is_state(int fd);

#endif
