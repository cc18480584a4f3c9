/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Handing the process over to its next image, and taking over from the previous one: which descriptors
 * travel (across execve in place for an upgrade, through systemd's file descriptor store for a restart),
 * how the next image finds them (the environment, LISTEN_FDS), the binary an upgrade executes and its check.
 * What travels with them, the state, is carry.c's; when to hand over is evfdd.c's.
 */
#ifndef EVFDD_HANDOVER_H
#define EVFDD_HANDOVER_H

#include <stdbool.h>
#include <stddef.h>
#include "carry.h"

/* The environment an upgrade passes to the new image: activated sockets as LISTEN_FDS would list them, and
 * every descriptor carried (ranges "12-15,19"). */
#define EVFDD_ENV_ACTIVATED "EVFDD_ACTIVATED"
#define EVFDD_ENV_ACTIVATED_NAMES "EVFDD_ACTIVATED_NAMES"
#define EVFDD_ENV_CARRY_FDS "EVFDD_CARRY_FDS"

/* systemd's limits on what a restart can carry: descriptors per FDSTORE=1 message (SCM_MAX_FD), and the one
 * environment string LISTEN_FDNAMES that names them all on the way back (MAX_ARG_STRLEN). */
#define EVFDD_HANDOVER_STORE_CHUNK 253
#define EVFDD_HANDOVER_FDNAMES_MAX (128u * 1024u)

/* What the process inherited at start-up. */
struct evfdd_inherit {
	int *activated;                  /* socket activation (or what an upgrade passed on as such) */
	char **names;                    /* their FileDescriptorName= */
	size_t nactivated;
	int *carried;                    /* descriptors an upgrade or a restart carried over */
	size_t ncarried;
	bool restart;                    /* ... through systemd's file descriptor store */
};

/*
 * evfdd_handover_inherit - what the process was started with, and the environment cleared of it
 *
 * After an upgrade: EVFDD_ACTIVATED, EVFDD_ACTIVATED_NAMES and EVFDD_CARRY_FDS. Otherwise socket activation
 * (LISTEN_FDS, LISTEN_FDNAMES), where descriptors named EVFDD_CARRY_FDNAME are a restart's. Every descriptor
 * is checked to be open and gets close-on-exec. Returns 0, or -EINVAL with @why (a malformed environment:
 * nothing is taken).
 */
int evfdd_handover_inherit(struct evfdd_inherit *in, char *why, size_t whylen);
void evfdd_inherit_clear(struct evfdd_inherit *in);

/* What the carried descriptors turned out to be. */
struct evfdd_takeover {
	struct evfdd_carry_state *st;    /* NULL: nothing carried, or the state was refused (why); its memfd is
					  * closed once read (the state lives in its mapping) */
	int *map;                        /* the state's fd table: index -> descriptor here, -1 when missing */
	size_t nmap;
	int *listeners;                  /* carried listening sockets: listeners evfdd had bound itself */
	size_t nlisteners;
	unsigned closed;                 /* carried descriptors neither the state nor a listener: closed */
	bool restart;
	char why[512];                   /* why the state was refused, or "" */
};

/*
 * evfdd_handover_takeover - sort out what @in carried
 *
 * The state is the carried sealed memfd (evfdd_carry_is_state); once it passes evfdd_carry_open, its
 * descriptors are matched by identity (st_dev, st_ino). Listening sockets are kept as listeners, state or
 * not; anything else the state does not name is closed, so a damaged state ends in a clean start that keeps
 * the listeners. After a restart the store is emptied (FDSTOREREMOVE=1) before anything is sent: a crash
 * from here on must not hand the same connections over twice. Takes over @in->carried. Never fails.
 */
void evfdd_handover_takeover(struct evfdd_inherit *in, struct evfdd_takeover *t);
/* Close what is left in @t->map (descriptors not adopted: set those adopted to -1 first), the state. */
void evfdd_takeover_clear(struct evfdd_takeover *t);

/* The absolute path of the binary started as @argv0 (through PATH when it has no slash), for an upgrade to
 * execute later: the file that is there then, not /proc/self/exe. Returns 0 or a negative errno. */
int evfdd_handover_exe_path(const char *argv0, char *out, size_t outlen);

/*
 * evfdd_handover_open_exe - open the binary at @path for an upgrade
 *
 * Every directory from / down, and the file, may be changed by nobody but root and evfdd's own user
 * (safepath): anyone else could have evfdd execute a program of theirs. It must be an executable regular
 * file, not a script (-ENOEXEC: it is executed through its descriptor, which closes on exec). Returns the
 * descriptor (close-on-exec) or a negative errno with @why.
 */
int evfdd_handover_open_exe(const char *path, char *why, size_t whylen);

struct ev_loop;
struct evfdd_handover_check;

/*
 * evfdd_handover_check_start - run the binary @exe with @argv and "-n --check-state-version=EVFDD_CARRY_VERSION"
 * on @ev: it must accept the configuration and read the state this binary writes
 * @done: runs on @ev when it has ended, with 0, -EINVAL (it failed: @why is its first line of output or how
 *        it ended) or -ETIMEDOUT (killed after @timeout_ms); the check is freed by then
 *
 * The loop goes on meanwhile (the watchdog, the control socket). Returns 0 with *@out set, or a negative
 * errno with @why (then @done is not called).
 */
int evfdd_handover_check_start(struct ev_loop *ev, int exe, char *const argv[], unsigned timeout_ms,
			       void (*done)(void *arg, int err, const char *why), void *arg,
			       struct evfdd_handover_check **out, char *why, size_t whylen);
/* Kill and forget a check that has not ended (@done is not called). NULL does nothing. */
void evfdd_handover_check_cancel(struct evfdd_handover_check *c);

/*
 * evfdd_handover_exec - become a new image of @exe (same PID) with @argv, passing @carried and the activated
 * sockets @activated (named @names) across execve: their close-on-exec flags are cleared, everything else
 * keeps its own and closes. Returns only on failure, a negative errno, with the flags restored.
 */
int evfdd_handover_exec(int exe, char *const argv[], const int *activated, char *const *names, size_t nactivated,
			const int *carried, size_t ncarried);

/* Put @fds into systemd's file descriptor store under EVFDD_CARRY_FDNAME, EVFDD_HANDOVER_STORE_CHUNK per
 * message, then wait until systemd has them (sd_notify_barrier, at most @timeout_usec). Returns 0 or a
 * negative errno (some may be stored). */
int evfdd_handover_store(const int *fds, size_t n, uint64_t timeout_usec);

#endif
