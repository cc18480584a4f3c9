/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The state an upgrade hands to the next image (carry.h): written field by field into a growing buffer, each
 * integer little-endian at its own width (never a struct copied whole, so no padding and no host layout goes
 * into the file), then copied into a memfd and sealed; read back from a private read-only mapping, checked
 * and decoded into arrays the state owns.
 *
 * Records (type, then what it holds, in this order):
 *   1 info:       u32 kind, u64 upgrades, time_usec, mono_ns, reloads, reloads_failed, str version
 *   2 fd:         i32 fd, u64 dev, u64 ino (the table is the fd records in the order written: index 0, 1...)
 *   3 counter:    str service, str name, u64 value
 *   4 backend:    str service, str name, u8 drained, u8 down, u64 connections, connect_failures, bytes_up,
 *                 bytes_down, state_changes, last_change_usec
 *   5 connection: str service, str backend, u32 route, str route_name, u32 stage, i32 cfd, i32 bfd,
 *                 u64 start_ns, last_ns, bytes_up, bytes_down, addr peer, addr local, u8 src_counted,
 *                 u32 pre_state, u32 pre_used, u64 pre_deadline_ns, data pre, u32 init_len, init_off,
 *                 init_hdr, then init_len bytes, u8 flushing, u32 dead, u64 flush_end_ns, u8 rst_client,
 *                 u8 rst_backend, half up, half down
 * where str is u16 length and that many bytes (no NUL; shorter than the struct's field), addr is u32 length
 * (0 to sizeof(struct sockaddr_storage)) and that many bytes of the sockaddr as the kernel gives it, data is
 * u32 length and that many bytes, half is u8 eof, u8 clean_eof, u8 done, data. A u8 that is a bool is 0 or 1.
 *
 * Records come in any order; a connection's fd indexes refer to the whole table, whatever came before it.
 * The reader walks the payload twice: the first walk checks the framing and counts each type (so that every
 * array is allocated once, at its size, and the fd table's size is known), the second decodes and checks.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "carry.h"
#include "util.h"

#define HDR_LEN 32
#define REC_HDR 8		/* u16 type, u16 reserved, u32 length */
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

static const unsigned char carry_magic[8] = { 'E', 'V', 'F', 'D', 'D', 'S', 'T', '\n' };

enum rec_type {
	REC_INFO = 1,
	REC_FD = 2,
	REC_COUNTER = 3,
	REC_BACKEND = 4,
	REC_CONN = 5,
};

/* A record's type for a message: its name, or "type N" for one this version does not know (into @buf). */
static const char *rec_name(unsigned type, char *buf, size_t n)
{
	switch (type) {
	case REC_INFO:
		return "info";
	case REC_FD:
		return "fd";
	case REC_COUNTER:
		return "counter";
	case REC_BACKEND:
		return "backend";
	case REC_CONN:
		return "connection";
	default:
		snprintf(buf, n, "type %u", type);
		return buf;
	}
}

/* ---- the checksum ---------------------------------------------------------------------------------- */

/*
 * XXH64 (seed 0) of the payload. It is there to catch damage (a bug that wrote past its buffer, a truncated
 * copy), not tampering: it has no key, and anyone who can write the memfd before it is sealed can write a
 * matching sum; only evfdd and root can. XXH64 is far faster than the memory it reads (four independent
 * lanes, one multiply per 8 bytes each), so tens of megabytes of unsent bytes cost milliseconds of the pause.
 * Within the 32-byte blocks each step is a bijection of its lane, so a change to a single word is always
 * seen; elsewhere a miss has a chance of about 2^-64.
 */
#define XXH_P1 0x9E3779B185EBCA87ull
#define XXH_P2 0xC2B2AE3D27D4EB4Full
#define XXH_P3 0x165667B19E3779F9ull
#define XXH_P4 0x85EBCA77C2B2AE63ull
#define XXH_P5 0x27D4EB2F165667C5ull

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t ld64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

static inline uint32_t ld32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline uint16_t ld16(const unsigned char *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return le16toh(v);
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t in)
{
	acc += in * XXH_P2;
	acc = rotl64(acc, 31);
	return acc * XXH_P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t v)
{
	acc ^= xxh_round(0, v);
	return acc * XXH_P1 + XXH_P4;
}

/* @p must not be NULL (not even for @n 0). */
static uint64_t carry_checksum(const void *data, size_t n)
{
	const unsigned char *p = data, *end = p + n;
	uint64_t h;

	if (n >= 32) {
		const unsigned char *limit = end - 32;
		uint64_t v1 = XXH_P1 + XXH_P2, v2 = XXH_P2, v3 = 0, v4 = 0 - XXH_P1;

		do {
			v1 = xxh_round(v1, ld64(p));
			v2 = xxh_round(v2, ld64(p + 8));
			v3 = xxh_round(v3, ld64(p + 16));
			v4 = xxh_round(v4, ld64(p + 24));
			p += 32;
		} while (p <= limit);
		h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
		h = xxh_merge(h, v1);
		h = xxh_merge(h, v2);
		h = xxh_merge(h, v3);
		h = xxh_merge(h, v4);
	} else {
		h = XXH_P5;
	}
	h += (uint64_t)n;
	for (; end - p >= 8; p += 8) {
		h ^= xxh_round(0, ld64(p));
		h = rotl64(h, 27) * XXH_P1 + XXH_P4;
	}
	if (end - p >= 4) {
		h ^= (uint64_t)ld32(p) * XXH_P1;
		h = rotl64(h, 23) * XXH_P2 + XXH_P3;
		p += 4;
	}
	for (; p < end; p++) {
		h ^= *p * XXH_P5;
		h = rotl64(h, 11) * XXH_P1;
	}
	h ^= h >> 33;
	h *= XXH_P2;
	h ^= h >> 29;
	h *= XXH_P3;
	h ^= h >> 32;
	return h;
}

/* ---- checks both sides make --------------------------------------------------------------------------- */

/*
 * The writer refuses (-EINVAL) what the reader would refuse, with the same functions, so that a state written
 * is a state read. Each says what is wrong into @m (@mn bytes) and returns false, or returns true.
 */

static bool say(char *m, size_t mn, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool say(char *m, size_t mn, const char *fmt, ...)
{
	va_list ap;

	if (m && mn) {
		va_start(ap, fmt);
		vsnprintf(m, mn, fmt, ap);
		va_end(ap);
	}
	return false;
}

/* Which bytes a string may hold: names (services, counters, SNI routes) are printable ASCII without blanks;
 * the version may hold blanks; a backend's name is its address as written, and a quoted Unix path may hold
 * blanks and non-ASCII bytes (UTF-8), so only control characters are refused there. */
enum text { TEXT_NAME, TEXT_LINE, TEXT_BACKEND };

static bool text_byte_ok(enum text t, unsigned char c)
{
	switch (t) {
	case TEXT_NAME:
		return c >= 0x21 && c <= 0x7e;
	case TEXT_LINE:
		return c >= 0x20 && c <= 0x7e;
	case TEXT_BACKEND:
	default:
		return c >= 0x20 && c != 0x7f;
	}
}

/* @s, a char[@size] field: NUL-terminated within it, non-empty unless @empty_ok, and of @t's bytes. */
static bool str_check(const char *field, const char *s, size_t size, enum text t, bool empty_ok, char *m,
		      size_t mn)
{
	size_t n = strnlen(s, size);

	if (n == size)
		return say(m, mn, "%s is not NUL-terminated within its %zu bytes", field, size);
	if (n == 0 && !empty_ok)
		return say(m, mn, "%s is empty", field);
	for (size_t i = 0; i < n; i++)
		if (!text_byte_ok(t, (unsigned char)s[i]))
			return say(m, mn, "%s holds byte 0x%02x at %zu, which it may not", field,
				   (unsigned char)s[i], i);
	return true;
}

static bool addr_check(const char *field, const struct evfdd_sockaddr *a, char *m, size_t mn)
{
	const size_t un_min = offsetof(struct sockaddr_un, sun_path);
	sa_family_t family;

	if (a->len == 0)
		return true;
	if (a->len > sizeof(a->u.storage))
		return say(m, mn, "%s is %u bytes, past %zu", field, (unsigned)a->len, sizeof(a->u.storage));
	if (a->len < sizeof(family))
		return say(m, mn, "%s is %u bytes, too short for a family", field, (unsigned)a->len);
	family = a->u.sa.sa_family;
	switch (family) {
	case AF_INET:
		if (a->len == sizeof(a->u.in))
			return true;
		break;
	case AF_INET6:
		if (a->len == sizeof(a->u.in6))
			return true;
		break;
	case AF_UNIX:
		if (a->len >= un_min && a->len <= sizeof(a->u.un))
			return true;
		break;
	default:
		return say(m, mn, "%s has family %u, not AF_INET, AF_INET6 or AF_UNIX", field, (unsigned)family);
	}
	return say(m, mn, "%s of family %u is %u bytes", field, (unsigned)family, (unsigned)a->len);
}

static bool info_check(const struct evfdd_carry_info *i, char *m, size_t mn)
{
	if (i->kind != EVFDD_CARRY_UPGRADE && i->kind != EVFDD_CARRY_RESTART)
		return say(m, mn, "kind %u is neither upgrade (1) nor restart (2)", i->kind);
	return str_check("version", i->version, sizeof(i->version), TEXT_LINE, true, m, mn);
}

static bool counter_check(const struct evfdd_carry_counter *c, char *m, size_t mn)
{
	return str_check("service", c->service, sizeof(c->service), TEXT_NAME, false, m, mn) &&
	       str_check("name", c->name, sizeof(c->name), TEXT_NAME, false, m, mn);
}

static bool backend_check(const struct evfdd_carry_backend *b, char *m, size_t mn)
{
	return str_check("service", b->service, sizeof(b->service), TEXT_NAME, false, m, mn) &&
	       str_check("name", b->name, sizeof(b->name), TEXT_BACKEND, false, m, mn);
}

static bool data_check(const char *field, uint32_t len, const unsigned char *data, char *m, size_t mn)
{
	if (len > EVFDD_CARRY_MAX_DATA)
		return say(m, mn, "%s is %u bytes, past %u", field, len, EVFDD_CARRY_MAX_DATA);
	if (len && !data)
		return say(m, mn, "%s is %u bytes at NULL", field, len);
	return true;
}

/* A half given in pieces (writer only): they add up to its length. */
static bool iov_check(const char *field, const struct evfdd_carry_half *h, char *m, size_t mn)
{
	uint64_t sum = 0;

	for (unsigned i = 0; i < h->iovcnt; i++) {
		if (h->iov[i].iov_len && !h->iov[i].iov_base)
			return say(m, mn, "%s: piece %u at NULL", field, i);
		sum += h->iov[i].iov_len;
	}
	if (h->iovcnt && sum != h->len)
		return say(m, mn, "%s: pieces of %llu bytes for a length of %u", field, (unsigned long long)sum,
			   h->len);
	return true;
}

/* Everything but the fd indexes' place in the table (the seal and the reader check that against the whole
 * table). */
static bool conn_check(const struct evfdd_carry_conn *c, char *m, size_t mn)
{
	if (!str_check("service", c->service, sizeof(c->service), TEXT_NAME, false, m, mn) ||
	    !str_check("backend", c->backend, sizeof(c->backend), TEXT_BACKEND, true, m, mn) ||
	    !str_check("route_name", c->route_name, sizeof(c->route_name), TEXT_NAME, true, m, mn))
		return false;
	if (c->route > 2)
		return say(m, mn, "route %u past 2", c->route);
	if (c->route == 1 && c->route_name[0] == '\0')
		return say(m, mn, "route 1 (an SNI route) without a route_name");
	if (c->route != 1 && c->route_name[0] != '\0')
		return say(m, mn, "route %u with a route_name (only route 1 has one)", c->route);
	if (c->stage >= EVFDD_CARRY_STAGES)
		return say(m, mn, "stage %u past %u", c->stage, EVFDD_CARRY_STAGES - 1);
	if (c->cfd < 0)
		return say(m, mn, "cfd is %d", c->cfd);
	if (c->bfd < -1)
		return say(m, mn, "bfd is %d", c->bfd);
	if (!addr_check("peer", &c->peer, m, mn) || !addr_check("local", &c->local, m, mn))
		return false;
	if (c->pre_state > 2)
		return say(m, mn, "pre_state %u past 2", c->pre_state);
	if (!data_check("pre", c->pre_len, c->pre, m, mn) || !data_check("init", c->init_len, c->init, m, mn) ||
	    !data_check("up", c->up.len, c->up.iovcnt ? (const unsigned char *)"" : c->up.data, m, mn) ||
	    !data_check("down", c->down.len, c->down.iovcnt ? (const unsigned char *)"" : c->down.data, m, mn))
		return false;
	if (!iov_check("up", &c->up, m, mn) || !iov_check("down", &c->down, m, mn))
		return false;
	if (c->pre_used > c->pre_len)
		return say(m, mn, "pre_used %u past pre_len %u", c->pre_used, c->pre_len);
	if (c->init_off > c->init_len)
		return say(m, mn, "init_off %u past init_len %u", c->init_off, c->init_len);
	if (c->init_hdr > c->init_len)
		return say(m, mn, "init_hdr %u past init_len %u", c->init_hdr, c->init_len);
	if (c->dead > 1)
		return say(m, mn, "dead %u past 1", c->dead);
	return true;
}

/* Whether two entries of @fds (@n of them) have the same number: 1 with their indexes in *@a < *@b, 0, or
 * -ENOMEM. O(n): an open-addressing set of indexes, at most half full. */
static int fd_dup(const struct evfdd_carry_fd *fds, size_t n, size_t *a, size_t *b)
{
	size_t cap = 16, mask;
	uint32_t *slot;		/* index + 1; 0 empty */
	int r = 0;

	if (n < 2)
		return 0;
	while (cap < 2 * n)
		cap *= 2;
	slot = calloc(cap, sizeof(*slot));
	if (!slot)
		return -ENOMEM;
	mask = cap - 1;
	for (size_t i = 0; i < n && !r; i++) {
		size_t k = (size_t)(((uint64_t)(uint32_t)fds[i].fd * XXH_P1) >> 32) & mask;

		for (; slot[k]; k = (k + 1) & mask)
			if (fds[slot[k] - 1].fd == fds[i].fd) {
				*a = slot[k] - 1;
				*b = i;
				r = 1;
				break;
			}
		if (!r)
			slot[k] = (uint32_t)(i + 1);
	}
	free(slot);
	return r;
}

/* ---- writing ----------------------------------------------------------------------------------------- */

/* A growing buffer; after a failed allocation it takes nothing more (nomem) until the record is undone. */
struct buf {
	unsigned char *b;
	size_t len, cap;
	bool nomem;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->nomem || n == 0)
		return;
	if (n > SIZE_MAX - b->len || util_grow((void **)&b->b, &b->cap, b->len + n, 1) < 0) {
		b->nomem = true;
		return;
	}
	memcpy(b->b + b->len, p, n);
	b->len += n;
}

static void put_le(struct buf *b, uint64_t v, unsigned width)
{
	unsigned char t[8];

	for (unsigned i = 0; i < width; i++)
		t[i] = (unsigned char)(v >> (8 * i));
	buf_put(b, t, width);
}

static void put_u8(struct buf *b, unsigned v)
{
	put_le(b, v, 1);
}

static void put_u16(struct buf *b, unsigned v)
{
	put_le(b, v, 2);
}

static void put_u32(struct buf *b, uint32_t v)
{
	put_le(b, v, 4);
}

static void put_i32(struct buf *b, int32_t v)
{
	put_le(b, (uint32_t)v, 4);
}

static void put_u64(struct buf *b, uint64_t v)
{
	put_le(b, v, 8);
}

static void put_bool(struct buf *b, bool v)
{
	put_u8(b, v ? 1 : 0);
}

/* A char[] field checked by str_check: shorter than 64 KiB. */
static void put_str(struct buf *b, const char *s)
{
	size_t n = strlen(s);

	put_u16(b, (unsigned)n);
	buf_put(b, s, n);
}

static void put_data(struct buf *b, uint32_t len, const unsigned char *data)
{
	put_u32(b, len);
	buf_put(b, data, len);
}

static void put_addr(struct buf *b, const struct evfdd_sockaddr *a)
{
	put_u32(b, (uint32_t)a->len);
	buf_put(b, &a->u, a->len <= sizeof(a->u) ? a->len : sizeof(a->u));
}

/* The encoders: what each record holds, unchecked (the put_ functions check first; the test crafts damaged
 * records with them). */
static void enc_info(struct buf *b, const struct evfdd_carry_info *i)
{
	put_u32(b, i->kind);
	put_u64(b, i->upgrades);
	put_u64(b, i->time_usec);
	put_u64(b, i->mono_ns);
	put_u64(b, i->reloads);
	put_u64(b, i->reloads_failed);
	put_str(b, i->version);
}

static void enc_fd(struct buf *b, const struct evfdd_carry_fd *f)
{
	put_i32(b, f->fd);
	put_u64(b, f->dev);
	put_u64(b, f->ino);
}

static void enc_counter(struct buf *b, const struct evfdd_carry_counter *c)
{
	put_str(b, c->service);
	put_str(b, c->name);
	put_u64(b, c->value);
}

static void enc_backend(struct buf *b, const struct evfdd_carry_backend *be)
{
	put_str(b, be->service);
	put_str(b, be->name);
	put_bool(b, be->drained);
	put_bool(b, be->down);
	put_u64(b, be->connections);
	put_u64(b, be->connect_failures);
	put_u64(b, be->bytes_up);
	put_u64(b, be->bytes_down);
	put_u64(b, be->state_changes);
	put_u64(b, be->last_change_usec);
}

static void enc_half(struct buf *b, const struct evfdd_carry_half *h)
{
	put_bool(b, h->eof);
	put_bool(b, h->clean_eof);
	put_bool(b, h->done);
	if (!h->iovcnt) {
		put_data(b, h->len, h->data);
		return;
	}
	put_u32(b, h->len);
	for (unsigned i = 0; i < h->iovcnt; i++)
		buf_put(b, h->iov[i].iov_base, h->iov[i].iov_len);
}

static void enc_conn(struct buf *b, const struct evfdd_carry_conn *c)
{
	put_str(b, c->service);
	put_str(b, c->backend);
	put_u32(b, c->route);
	put_str(b, c->route_name);
	put_u32(b, c->stage);
	put_i32(b, c->cfd);
	put_i32(b, c->bfd);
	put_u64(b, c->start_ns);
	put_u64(b, c->last_ns);
	put_u64(b, c->bytes_up);
	put_u64(b, c->bytes_down);
	put_addr(b, &c->peer);
	put_addr(b, &c->local);
	put_bool(b, c->src_counted);
	put_u32(b, c->pre_state);
	put_u32(b, c->pre_used);
	put_u64(b, c->pre_deadline_ns);
	put_data(b, c->pre_len, c->pre);
	put_u32(b, c->init_len);
	put_u32(b, c->init_off);
	put_u32(b, c->init_hdr);
	buf_put(b, c->init, c->init_len);
	put_bool(b, c->flushing);
	put_u32(b, c->dead);
	put_u64(b, c->flush_end_ns);
	put_bool(b, c->rst_client);
	put_bool(b, c->rst_backend);
	enc_half(b, &c->up);
	enc_half(b, &c->down);
}

/* The records go to the memfd a megabyte at a time: a state of many connections' unsent bytes is never
 * held twice in memory (fresh memory is what copying costs most, and the pause is what every connection
 * waits). */
#define FLUSH_AT (1u << 20)

struct evfdd_carry_writer {
	struct buf out;			/* the header's room (filled by the seal), then the records not flushed */
	int memfd;			/* -1 until the first flush */
	uint64_t flushed;		/* bytes written to it */
	bool info;
	struct evfdd_carry_fd *fds;	/* the table, as written */
	size_t nfds, fds_cap;
	int32_t *refs;			/* each connection's cfd and bfd, for the seal to check */
	size_t nrefs, refs_cap;
};

int evfdd_carry_writer_new(struct evfdd_carry_writer **out)
{
	struct evfdd_carry_writer *w = calloc(1, sizeof(*w));
	static const unsigned char zero[HDR_LEN];

	*out = NULL;
	if (!w)
		return -ENOMEM;
	buf_put(&w->out, zero, sizeof(zero));
	if (w->out.nomem) {
		free(w);
		return -ENOMEM;
	}
	w->memfd = -1;
	*out = w;
	return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n);

/* What the buffer holds, to the memfd (made on the first call). 0 or a negative errno. */
static int writer_flush(struct evfdd_carry_writer *w)
{
	int r;

	if (w->memfd < 0) {
		w->memfd = memfd_create("evfdd-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		if (w->memfd < 0)
			return -errno;
	}
	r = write_all(w->memfd, w->out.b, w->out.len);
	if (r < 0)
		return r;
	w->flushed += w->out.len;
	w->out.len = 0;
	return 0;
}

void evfdd_carry_writer_free(struct evfdd_carry_writer *w)
{
	if (!w)
		return;
	if (w->memfd >= 0)
		close(w->memfd);
	free(w->out.b);
	free(w->fds);
	free(w->refs);
	free(w);
}

/* Start a record of @type; returns where it starts, for rec_end. */
static size_t rec_begin(struct evfdd_carry_writer *w, unsigned type)
{
	size_t start = w->out.len;

	put_u16(&w->out, type);
	put_u16(&w->out, 0);
	put_u32(&w->out, 0);	/* the length, once known */
	return start;
}

/* Finish the record begun at @start: 0, or (the record undone) -ENOMEM, or -EINVAL past the size limit. */
static int rec_end(struct evfdd_carry_writer *w, size_t start)
{
	size_t len;
	int r = 0;

	if (w->out.nomem)
		r = -ENOMEM;
	else if (w->flushed + w->out.len > EVFDD_CARRY_MAX_SIZE || (uint64_t)(w->out.len - start - REC_HDR) > UINT32_MAX)
		r = -EINVAL;
	if (r) {
		w->out.len = start;
		w->out.nomem = false;
		return r;
	}
	len = w->out.len - start - REC_HDR;
	for (unsigned i = 0; i < 4; i++)
		w->out.b[start + 4 + i] = (unsigned char)(len >> (8 * i));
	return w->out.len >= FLUSH_AT ? writer_flush(w) : 0;
}

int evfdd_carry_put_info(struct evfdd_carry_writer *w, const struct evfdd_carry_info *info)
{
	size_t start;
	int r;

	if (w->info || !info_check(info, NULL, 0))
		return -EINVAL;
	start = rec_begin(w, REC_INFO);
	enc_info(&w->out, info);
	r = rec_end(w, start);
	if (r == 0)
		w->info = true;
	return r;
}

int evfdd_carry_put_fd(struct evfdd_carry_writer *w, int fd, int32_t *index)
{
	struct evfdd_carry_fd f;
	struct stat st;
	size_t start;
	int r;

	if (fd < 0 || fstat(fd, &st) < 0)
		return -EBADF;
	if (w->nfds >= EVFDD_CARRY_MAX_FDS)
		return -EINVAL;
	if (util_grow((void **)&w->fds, &w->fds_cap, w->nfds + 1, sizeof(*w->fds)) < 0)
		return -ENOMEM;
	f.fd = fd;
	f.dev = (uint64_t)st.st_dev;
	f.ino = (uint64_t)st.st_ino;
	start = rec_begin(w, REC_FD);
	enc_fd(&w->out, &f);
	r = rec_end(w, start);
	if (r < 0)
		return r;
	if (index)
		*index = (int32_t)w->nfds;
	w->fds[w->nfds++] = f;
	return 0;
}

int evfdd_carry_put_counter(struct evfdd_carry_writer *w, const struct evfdd_carry_counter *c)
{
	size_t start;

	if (!counter_check(c, NULL, 0))
		return -EINVAL;
	start = rec_begin(w, REC_COUNTER);
	enc_counter(&w->out, c);
	return rec_end(w, start);
}

int evfdd_carry_put_backend(struct evfdd_carry_writer *w, const struct evfdd_carry_backend *b)
{
	size_t start;

	if (!backend_check(b, NULL, 0))
		return -EINVAL;
	start = rec_begin(w, REC_BACKEND);
	enc_backend(&w->out, b);
	return rec_end(w, start);
}

int evfdd_carry_put_conn(struct evfdd_carry_writer *w, const struct evfdd_carry_conn *c)
{
	size_t start;
	int r;

	if (!conn_check(c, NULL, 0))
		return -EINVAL;
	if (util_grow((void **)&w->refs, &w->refs_cap, w->nrefs + 2, sizeof(*w->refs)) < 0)
		return -ENOMEM;
	start = rec_begin(w, REC_CONN);
	enc_conn(&w->out, c);
	r = rec_end(w, start);
	if (r < 0)
		return r;
	w->refs[w->nrefs++] = c->cfd;
	w->refs[w->nrefs++] = c->bfd;
	return 0;
}

size_t evfdd_carry_writer_nfds(const struct evfdd_carry_writer *w)
{
	return w->nfds;
}

int evfdd_carry_writer_fd(const struct evfdd_carry_writer *w, size_t i)
{
	return i < w->nfds ? w->fds[i].fd : -EINVAL;
}

/* What only the whole state tells: every connection's fd indexes within the table and none used twice, no
 * descriptor in the table twice. 0, -EINVAL or -ENOMEM. */
static int writer_check(const struct evfdd_carry_writer *w)
{
	unsigned char *used;
	size_t a, b;
	int r = 0;

	used = calloc(w->nfds / 8 + 1, 1);
	if (!used)
		return -ENOMEM;
	for (size_t i = 0; i < w->nrefs && !r; i++) {
		int32_t k = w->refs[i];

		if (k == -1 && i % 2 == 1)
			continue;	/* no bfd */
		if (k < 0 || (size_t)k >= w->nfds || used[k / 8] & (1u << (k % 8)))
			r = -EINVAL;
		else
			used[k / 8] |= (unsigned char)(1u << (k % 8));
	}
	free(used);
	if (r)
		return r;
	r = fd_dup(w->fds, w->nfds, &a, &b);
	return r > 0 ? -EINVAL : r;
}

/* The header in front of @plen bytes of records whose checksum is @sum. */
static void header_fill(unsigned char *h, uint64_t plen, uint64_t sum)
{
	uint32_t version = htole32(EVFDD_CARRY_VERSION), hlen = htole32(HDR_LEN);

	memcpy(h, carry_magic, sizeof(carry_magic));
	memcpy(h + 8, &version, 4);
	memcpy(h + 12, &hlen, 4);
	plen = htole64(plen);
	memcpy(h + 16, &plen, 8);
	sum = htole64(sum);
	memcpy(h + 24, &sum, 8);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, n);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* The header in front of the buffer's records, when nothing was flushed. */
static void header_fill_buf(struct evfdd_carry_writer *w)
{
	header_fill(w->out.b, w->out.len - HDR_LEN, carry_checksum(w->out.b + HDR_LEN, w->out.len - HDR_LEN));
}

/* The header and records as they are, into a new sealed memfd. */
static int seal_bytes(const unsigned char *b, size_t n)
{
	int fd, r = 0;

	fd = memfd_create("evfdd-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	r = write_all(fd, b, n);
	if (r == 0 && fcntl(fd, F_ADD_SEALS, SEALS | F_SEAL_SEAL) < 0)
		r = -errno;
	if (r == 0 && lseek(fd, 0, SEEK_SET) < 0)
		r = -errno;
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* Also -EINVAL when a connection's fd index is past the table or shared, or a descriptor was put twice. The
 * memfd goes to the caller; the writer keeps none. */
int evfdd_carry_seal(struct evfdd_carry_writer *w)
{
	unsigned char h[HDR_LEN];
	uint64_t size;
	void *map = NULL;
	int r = writer_check(w), fd;

	if (r == 0 && w->memfd < 0) {
		/* Small: all of it still in the buffer. */
		header_fill_buf(w);
		return seal_bytes(w->out.b, w->out.len);
	}
	if (r == 0)
		r = writer_flush(w);
	if (r < 0)
		return r;
	size = w->flushed;
	/* The checksum over what is in the memfd now, read through a mapping of it. */
	map = mmap(NULL, size, PROT_READ, MAP_SHARED, w->memfd, 0);
	if (map == MAP_FAILED)
		return -errno;
	header_fill(h, size - HDR_LEN, carry_checksum((const unsigned char *)map + HDR_LEN, size - HDR_LEN));
	munmap(map, size);
	if (pwrite(w->memfd, h, HDR_LEN, 0) != HDR_LEN)
		return errno ? -errno : -EIO;
	if (fcntl(w->memfd, F_ADD_SEALS, SEALS | F_SEAL_SEAL) < 0 || lseek(w->memfd, 0, SEEK_SET) < 0)
		return -errno;
	fd = w->memfd;
	w->memfd = -1;
	return fd;
}

/* ---- reading ----------------------------------------------------------------------------------------- */

struct evfdd_carry_state {
	void *map;
	size_t size;
	struct evfdd_carry_info info;
	struct evfdd_carry_fd *fds;
	size_t nfds;
	struct evfdd_carry_counter *counters;
	size_t ncounters;
	struct evfdd_carry_backend *backends;
	size_t nbackends;
	struct evfdd_carry_conn *conns;
	size_t nconns;
};

/* One record's bytes being decoded. The first thing wrong is said into m; what follows is not read. */
struct cur {
	const unsigned char *p;
	size_t n, off;
	bool bad;
	char m[200];
};

static void cur_bad(struct cur *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void cur_bad(struct cur *c, const char *fmt, ...)
{
	va_list ap;

	if (c->bad)
		return;
	c->bad = true;
	va_start(ap, fmt);
	vsnprintf(c->m, sizeof(c->m), fmt, ap);
	va_end(ap);
}

/* @n bytes for @field, or NULL when the record ends first. */
static const unsigned char *get_bytes(struct cur *c, size_t n, const char *field)
{
	const unsigned char *p;

	if (c->bad)
		return NULL;
	if (n > c->n - c->off) {
		cur_bad(c, "ends inside %s (%zu bytes wanted, %zu left)", field, n, c->n - c->off);
		return NULL;
	}
	p = c->p + c->off;
	c->off += n;
	return p;
}

static uint64_t get_le(struct cur *c, unsigned width, const char *field)
{
	const unsigned char *p = get_bytes(c, width, field);
	uint64_t v = 0;

	for (unsigned i = 0; p && i < width; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static uint16_t get_u16(struct cur *c, const char *field)
{
	return (uint16_t)get_le(c, 2, field);
}

static uint32_t get_u32(struct cur *c, const char *field)
{
	return (uint32_t)get_le(c, 4, field);
}

static int32_t get_i32(struct cur *c, const char *field)
{
	uint32_t v = get_u32(c, field);
	int32_t s;

	memcpy(&s, &v, sizeof(s));	/* two's complement, without an implementation-defined conversion */
	return s;
}

static uint64_t get_u64(struct cur *c, const char *field)
{
	return get_le(c, 8, field);
}

static bool get_bool(struct cur *c, const char *field)
{
	unsigned v = (unsigned)get_le(c, 1, field);

	if (v > 1)
		cur_bad(c, "%s is %u, not 0 or 1", field, v);
	return v == 1;
}

/* A string into @dst (char[@size]): shorter than @size, no NUL (str_check checks the bytes). */
static void get_str(struct cur *c, char *dst, size_t size, const char *field)
{
	uint16_t n = get_u16(c, field);
	const unsigned char *p;

	dst[0] = '\0';
	if (c->bad)
		return;
	if (n >= size) {
		cur_bad(c, "%s is %u bytes, at most %zu", field, n, size - 1);
		return;
	}
	p = get_bytes(c, n, field);
	if (!p)
		return;
	if (memchr(p, '\0', n)) {
		cur_bad(c, "%s holds a NUL", field);
		return;
	}
	memcpy(dst, p, n);
	dst[n] = '\0';
}

/* u32 length and that many bytes, left in the mapping. */
static void get_data(struct cur *c, uint32_t *len, const unsigned char **data, const char *field)
{
	*len = get_u32(c, field);
	*data = c->p + c->off;
	if (c->bad)
		return;
	if (*len > EVFDD_CARRY_MAX_DATA) {
		cur_bad(c, "%s is %u bytes, past %u", field, *len, EVFDD_CARRY_MAX_DATA);
		return;
	}
	get_bytes(c, *len, field);
}

static void get_addr(struct cur *c, struct evfdd_sockaddr *a, const char *field)
{
	uint32_t len = get_u32(c, field);
	const unsigned char *p;

	memset(a, 0, sizeof(*a));
	if (c->bad)
		return;
	if (len > sizeof(a->u.storage)) {
		cur_bad(c, "%s is %u bytes, past %zu", field, len, sizeof(a->u.storage));
		return;
	}
	p = get_bytes(c, len, field);
	if (!p)
		return;
	memcpy(&a->u, p, len);
	a->len = (socklen_t)len;
}

static void dec_info(struct cur *c, struct evfdd_carry_info *i)
{
	memset(i, 0, sizeof(*i));
	i->kind = get_u32(c, "kind");
	i->upgrades = get_u64(c, "upgrades");
	i->time_usec = get_u64(c, "time_usec");
	i->mono_ns = get_u64(c, "mono_ns");
	i->reloads = get_u64(c, "reloads");
	i->reloads_failed = get_u64(c, "reloads_failed");
	get_str(c, i->version, sizeof(i->version), "version");
}

static void dec_fd(struct cur *c, struct evfdd_carry_fd *f)
{
	memset(f, 0, sizeof(*f));
	f->fd = get_i32(c, "fd");
	f->dev = get_u64(c, "dev");
	f->ino = get_u64(c, "ino");
}

static void dec_counter(struct cur *c, struct evfdd_carry_counter *k)
{
	memset(k, 0, sizeof(*k));
	get_str(c, k->service, sizeof(k->service), "service");
	get_str(c, k->name, sizeof(k->name), "name");
	k->value = get_u64(c, "value");
}

static void dec_backend(struct cur *c, struct evfdd_carry_backend *b)
{
	memset(b, 0, sizeof(*b));
	get_str(c, b->service, sizeof(b->service), "service");
	get_str(c, b->name, sizeof(b->name), "name");
	b->drained = get_bool(c, "drained");
	b->down = get_bool(c, "down");
	b->connections = get_u64(c, "connections");
	b->connect_failures = get_u64(c, "connect_failures");
	b->bytes_up = get_u64(c, "bytes_up");
	b->bytes_down = get_u64(c, "bytes_down");
	b->state_changes = get_u64(c, "state_changes");
	b->last_change_usec = get_u64(c, "last_change_usec");
}

static void dec_half(struct cur *c, struct evfdd_carry_half *h, const char *name)
{
	char f[16];

	snprintf(f, sizeof(f), "%s.eof", name);
	h->eof = get_bool(c, f);
	snprintf(f, sizeof(f), "%s.clean_eof", name);
	h->clean_eof = get_bool(c, f);
	snprintf(f, sizeof(f), "%s.done", name);
	h->done = get_bool(c, f);
	get_data(c, &h->len, &h->data, name);
}

static void dec_conn(struct cur *c, struct evfdd_carry_conn *k)
{
	memset(k, 0, sizeof(*k));
	get_str(c, k->service, sizeof(k->service), "service");
	get_str(c, k->backend, sizeof(k->backend), "backend");
	k->route = get_u32(c, "route");
	get_str(c, k->route_name, sizeof(k->route_name), "route_name");
	k->stage = get_u32(c, "stage");
	k->cfd = get_i32(c, "cfd");
	k->bfd = get_i32(c, "bfd");
	k->start_ns = get_u64(c, "start_ns");
	k->last_ns = get_u64(c, "last_ns");
	k->bytes_up = get_u64(c, "bytes_up");
	k->bytes_down = get_u64(c, "bytes_down");
	get_addr(c, &k->peer, "peer");
	get_addr(c, &k->local, "local");
	k->src_counted = get_bool(c, "src_counted");
	k->pre_state = get_u32(c, "pre_state");
	k->pre_used = get_u32(c, "pre_used");
	k->pre_deadline_ns = get_u64(c, "pre_deadline_ns");
	get_data(c, &k->pre_len, &k->pre, "pre");
	k->init_len = get_u32(c, "init_len");
	k->init_off = get_u32(c, "init_off");
	k->init_hdr = get_u32(c, "init_hdr");
	k->init = c->p + c->off;
	if (!c->bad && k->init_len > EVFDD_CARRY_MAX_DATA)
		cur_bad(c, "init is %u bytes, past %u", k->init_len, EVFDD_CARRY_MAX_DATA);
	get_bytes(c, k->init_len, "init");
	k->flushing = get_bool(c, "flushing");
	k->dead = get_u32(c, "dead");
	k->flush_end_ns = get_u64(c, "flush_end_ns");
	k->rst_client = get_bool(c, "rst_client");
	k->rst_backend = get_bool(c, "rst_backend");
	dec_half(c, &k->up, "up");
	dec_half(c, &k->down, "down");
}

/* Say into @why, if there is room. */
static int why_say(char *why, size_t whylen, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int why_say(char *why, size_t whylen, int err, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return err;
}

/* A connection's fd indexes: within the table (@nfds), and neither used before (@owner: the record that took
 * each index, + 1, or 0). */
static bool conn_fds(const struct evfdd_carry_conn *c, size_t rec, size_t nfds, uint32_t *owner, char *m,
		     size_t mn)
{
	if ((size_t)c->cfd >= nfds)
		return say(m, mn, "cfd is fd index %d, past the table's %zu", c->cfd, nfds);
	if (c->bfd != -1 && (size_t)c->bfd >= nfds)
		return say(m, mn, "bfd is fd index %d, past the table's %zu", c->bfd, nfds);
	if (c->bfd == c->cfd)
		return say(m, mn, "cfd and bfd are both fd index %d", c->cfd);
	if (owner[c->cfd])
		return say(m, mn, "cfd's fd index %d is record %u's too", c->cfd, owner[c->cfd] - 1);
	if (c->bfd != -1 && owner[c->bfd])
		return say(m, mn, "bfd's fd index %d is record %u's too", c->bfd, owner[c->bfd] - 1);
	owner[c->cfd] = (uint32_t)rec + 1;
	if (c->bfd != -1)
		owner[c->bfd] = (uint32_t)rec + 1;
	return true;
}

/* The records in @p (@n bytes) into @st. */
static int walk(struct evfdd_carry_state *st, const unsigned char *p, size_t n, char *why, size_t whylen)
{
	size_t count[REC_CONN + 1] = { 0 }, nrec = 0, rec, off, a, b;
	uint32_t *owner = NULL;
	struct cur c;
	char m[200];
	int r = 0;

	/* First walk: the framing, and how many of each. */
	for (off = 0; off < n; nrec++) {
		unsigned type, reserved;
		char tbuf[16];
		uint32_t len;

		if (n - off < REC_HDR) {
			r = why_say(why, whylen, -EPROTO, "record %zu: header past the end (%zu bytes left)", nrec,
				    n - off);
			goto out;
		}
		type = ld16(p + off);
		reserved = ld16(p + off + 2);
		len = ld32(p + off + 4);
		if (reserved != 0) {
			r = why_say(why, whylen, -EPROTO, "record %zu (%s): reserved is %u, not 0", nrec,
				    rec_name(type, tbuf, sizeof(tbuf)), reserved);
			goto out;
		}
		if (len > n - off - REC_HDR) {
			r = why_say(why, whylen, -EPROTO, "record %zu (%s): length %u past the end (%zu bytes left)",
				    nrec, rec_name(type, tbuf, sizeof(tbuf)), len, n - off - REC_HDR);
			goto out;
		}
		if (type <= REC_CONN)
			count[type]++;
		if (type == REC_INFO && count[type] > 1) {
			r = why_say(why, whylen, -EPROTO, "record %zu (info): a second info record", nrec);
			goto out;
		}
		if (type == REC_FD && count[type] > EVFDD_CARRY_MAX_FDS) {
			r = why_say(why, whylen, -EPROTO, "record %zu (fd): more than %u descriptors", nrec,
				    EVFDD_CARRY_MAX_FDS);
			goto out;
		}
		off += REC_HDR + len;
	}
	if (nrec >= UINT32_MAX) {	/* the owners are u32 record numbers; 4 GiB of 8-byte records cannot */
		r = why_say(why, whylen, -EPROTO, "%zu records", nrec);
		goto out;
	}

	r = -ENOMEM;
	if ((count[REC_FD] && !(st->fds = calloc(count[REC_FD], sizeof(*st->fds)))) ||
	    (count[REC_FD] && !(owner = calloc(count[REC_FD], sizeof(*owner)))) ||
	    (count[REC_COUNTER] && !(st->counters = calloc(count[REC_COUNTER], sizeof(*st->counters)))) ||
	    (count[REC_BACKEND] && !(st->backends = calloc(count[REC_BACKEND], sizeof(*st->backends)))) ||
	    (count[REC_CONN] && !(st->conns = calloc(count[REC_CONN], sizeof(*st->conns)))))
		goto out;
	r = 0;

	/* Second walk: each record decoded exactly, and checked. */
	for (off = 0, rec = 0; off < n; rec++) {
		unsigned type = ld16(p + off);
		uint32_t len = ld32(p + off + 4);
		char tbuf[16];
		const char *name = rec_name(type, tbuf, sizeof(tbuf));
		bool ok = true;

		memset(&c, 0, sizeof(c));
		c.p = p + off + REC_HDR;
		c.n = len;
		off += REC_HDR + len;
		m[0] = '\0';
		switch (type) {
		case REC_INFO:
			dec_info(&c, &st->info);
			ok = c.bad || info_check(&st->info, m, sizeof(m));
			break;
		case REC_FD: {
			struct evfdd_carry_fd *f = &st->fds[st->nfds++];

			dec_fd(&c, f);
			if (!c.bad && f->fd < 0)
				ok = say(m, sizeof(m), "fd is %d", f->fd);
			break;
		}
		case REC_COUNTER:
			dec_counter(&c, &st->counters[st->ncounters]);
			ok = c.bad || counter_check(&st->counters[st->ncounters], m, sizeof(m));
			st->ncounters++;
			break;
		case REC_BACKEND:
			dec_backend(&c, &st->backends[st->nbackends]);
			ok = c.bad || backend_check(&st->backends[st->nbackends], m, sizeof(m));
			st->nbackends++;
			break;
		case REC_CONN: {
			struct evfdd_carry_conn *k = &st->conns[st->nconns++];

			dec_conn(&c, k);
			ok = c.bad || (conn_check(k, m, sizeof(m)) &&
				       conn_fds(k, rec, count[REC_FD], owner, m, sizeof(m)));
			break;
		}
		default:
			continue;	/* a later addition: skipped */
		}
		if (c.bad) {
			r = why_say(why, whylen, -EPROTO, "record %zu (%s): %s", rec, name, c.m);
			goto out;
		}
		if (!ok) {
			r = why_say(why, whylen, -EPROTO, "record %zu (%s): %s", rec, name, m);
			goto out;
		}
		if (c.off != c.n) {
			r = why_say(why, whylen, -EPROTO, "record %zu (%s): %zu bytes past its last field", rec, name,
				    c.n - c.off);
			goto out;
		}
	}

	r = fd_dup(st->fds, st->nfds, &a, &b);
	if (r > 0)
		r = why_say(why, whylen, -EPROTO, "fd %d is in the table twice (indexes %zu and %zu)", st->fds[a].fd,
			    a, b);
out:
	free(owner);
	return r;
}

int evfdd_carry_open(int memfd, struct evfdd_carry_state **out, char *why, size_t whylen)
{
	struct evfdd_carry_state *st = NULL;
	const unsigned char *h;
	uint64_t plen, sum;
	uint32_t version, hlen;
	struct stat sb;
	int seals, r;

	*out = NULL;
	if (why && whylen)
		why[0] = '\0';
	if (fstat(memfd, &sb) < 0)
		return -errno;
	seals = fcntl(memfd, F_GET_SEALS);
	if (seals < 0) {
		if (errno == EINVAL)
			return why_say(why, whylen, -EPROTO, "the state is not a memfd (it has no seals)");
		return -errno;
	}
	if ((seals & SEALS) != SEALS)
		return why_say(why, whylen, -EPROTO, "the state memfd is not sealed (seals 0x%x)", (unsigned)seals);
	if (!S_ISREG(sb.st_mode))
		return why_say(why, whylen, -EPROTO, "the state is not a regular file");
	if (sb.st_size < HDR_LEN)
		return why_say(why, whylen, -EPROTO, "the state is %jd bytes, shorter than its %d-byte header",
			       (intmax_t)sb.st_size, HDR_LEN);
	if ((uint64_t)sb.st_size > EVFDD_CARRY_MAX_SIZE || (uint64_t)sb.st_size > SIZE_MAX)
		return why_say(why, whylen, -EPROTO, "the state is %jd bytes, past %llu", (intmax_t)sb.st_size,
			       EVFDD_CARRY_MAX_SIZE);

	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->size = (size_t)sb.st_size;
	/* MAP_POPULATE: the checksum reads every page at once; faulting them in one by one would cost more than
	 * reading them. The seals are what make the mapping safe to read: it can no longer shrink under it. */
	st->map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, memfd, 0);
	if (st->map == MAP_FAILED) {
		st->map = NULL;
		r = -errno;
		goto fail;
	}
	h = st->map;
	if (memcmp(h, carry_magic, sizeof(carry_magic)) != 0) {
		r = why_say(why, whylen, -EPROTO, "no state's magic at the start: not an evfdd state");
		goto fail;
	}
	version = ld32(h + 8);
	if (!evfdd_carry_version_ok(version)) {
		r = why_say(why, whylen, -EPROTONOSUPPORT, "version %u is %s than this evfdd reads (%d to %d)",
			    version, version > EVFDD_CARRY_VERSION ? "newer" : "older", EVFDD_CARRY_MIN_VERSION,
			    EVFDD_CARRY_VERSION);
		goto fail;
	}
	hlen = ld32(h + 12);
	if (hlen != HDR_LEN) {
		r = why_say(why, whylen, -EPROTO, "header length %u, not %d", hlen, HDR_LEN);
		goto fail;
	}
	plen = ld64(h + 16);
	if (plen != st->size - HDR_LEN) {
		r = why_say(why, whylen, -EPROTO, "payload length %llu, but the state holds %zu bytes after its header",
			    (unsigned long long)plen, st->size - HDR_LEN);
		goto fail;
	}
	sum = carry_checksum(h + HDR_LEN, (size_t)plen);
	if (sum != ld64(h + 24)) {
		r = why_say(why, whylen, -EPROTO, "checksum mismatch (0x%016llx computed, 0x%016llx written)",
			    (unsigned long long)sum, (unsigned long long)ld64(h + 24));
		goto fail;
	}
	r = walk(st, h + HDR_LEN, (size_t)plen, why, whylen);
	if (r < 0)
		goto fail;
	*out = st;
	return 0;
fail:
	evfdd_carry_close(st);
	return r;
}

void evfdd_carry_close(struct evfdd_carry_state *st)
{
	if (!st)
		return;
	if (st->map)
		munmap(st->map, st->size);
	free(st->fds);
	free(st->counters);
	free(st->backends);
	free(st->conns);
	free(st);
}

const struct evfdd_carry_info *evfdd_carry_info(const struct evfdd_carry_state *st)
{
	return &st->info;
}

size_t evfdd_carry_nfds(const struct evfdd_carry_state *st)
{
	return st->nfds;
}

const struct evfdd_carry_fd *evfdd_carry_fd(const struct evfdd_carry_state *st, size_t i)
{
	return i < st->nfds ? &st->fds[i] : NULL;
}

size_t evfdd_carry_ncounters(const struct evfdd_carry_state *st)
{
	return st->ncounters;
}

const struct evfdd_carry_counter *evfdd_carry_counter(const struct evfdd_carry_state *st, size_t i)
{
	return i < st->ncounters ? &st->counters[i] : NULL;
}

size_t evfdd_carry_nbackends(const struct evfdd_carry_state *st)
{
	return st->nbackends;
}

const struct evfdd_carry_backend *evfdd_carry_backend(const struct evfdd_carry_state *st, size_t i)
{
	return i < st->nbackends ? &st->backends[i] : NULL;
}

size_t evfdd_carry_nconns(const struct evfdd_carry_state *st)
{
	return st->nconns;
}

const struct evfdd_carry_conn *evfdd_carry_conn(const struct evfdd_carry_state *st, size_t i)
{
	return i < st->nconns ? &st->conns[i] : NULL;
}

bool evfdd_carry_version_ok(unsigned long version)
{
	return version >= EVFDD_CARRY_MIN_VERSION && version <= EVFDD_CARRY_VERSION;
}

bool evfdd_carry_is_state(int fd)
{
	unsigned char b[sizeof(carry_magic)];
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0 || !(seals & F_SEAL_WRITE))
		return false;
	return pread(fd, b, sizeof(b), 0) == (ssize_t)sizeof(b) && memcmp(b, carry_magic, sizeof(b)) == 0;
}
