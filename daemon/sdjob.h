/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the service manager is doing with evfdd's own unit: on SIGTERM, whether the pending job is a restart
 * (evfdd then carries its connections over through the file descriptor store, carry.h) or anything else (a
 * stop: evfdd stops gracefully). systemd 252 delivers both as SIGTERM, and says which only over D-Bus.
 *
 * The unit comes from our cgroup (sd_pid_get_user_unit under a user manager, which sets MANAGERPID, else
 * sd_pid_get_unit). When the cgroup does not tell (/proc/1 hidden by ProtectProc=invisible, a cgroup
 * layout sd-login does not parse) and INVOCATION_ID says a manager started us, the manager is asked
 * (GetUnitByPID). Only a .service counts: a process in a scope (a login shell) has no unit of its own.
 *
 * The manager is reached through the bus (the system bus, or the user manager's session bus) and, failing
 * that, through its private socket, which only root (or, for a user manager, its owner) may use: under
 * DynamicUser= only the system bus is left, and dbus-daemon admits a dynamic user only when its UID resolves
 * (nss-systemd, package libnss-systemd). Blocking; no logging; any thread, but not from a signal handler.
 */
#ifndef EVFDD_SDJOB_H
#define EVFDD_SDJOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evfdd_sdjob {
	char unit[256];          /* our unit, e.g. "evfdd.service" */
	char job_type[32];       /* "restart", "stop", "try-restart", ... or "" when no job is pending */
	uint32_t fdstore_max;    /* the unit's FileDescriptorStoreMax= (0 when unset) */
	bool user;               /* asked a user manager */
};

/*
 * evfdd_sdjob_query - ask the service manager that runs us about our unit and its pending job
 * @timeout_usec: the most the whole query may take, connecting included (UINT64_MAX: no limit). The bus gets
 *                at most half of it, so that a bus that hangs (its daemon stopping, as at shutdown) leaves
 *                time for the private socket. A healthy manager answers in about 1-3 ms.
 * @why: receives, on failure, one line saying what failed, e.g. "system bus: connect: No such file or
 *       directory; then system manager's private socket /run/systemd/private: connect: Permission denied"
 *
 * Blocking, at most @timeout_usec in all. Returns 0 (with *@out filled), -ENOMEDIUM when not run by systemd
 * (no unit of our own: no service in our cgroup and no INVOCATION_ID, our cgroup or the manager naming a
 * scope, or the manager knowing no unit for our PID), or another negative errno, the last way's (-ETIMEDOUT,
 * -ECONNRESET, -EACCES, -ENOENT...), with @why saying what failed. On failure *@out is zeroed but for
 * out->user. Nothing is logged. On systemd 252 a restart's job reads "restart" (try-restart and
 * reload-or-restart collapse into it) until its stop half is done; a stop's reads "stop"; a kill or a
 * signal from elsewhere leaves no job ("").
 */
int evfdd_sdjob_query(struct evfdd_sdjob *out, uint64_t timeout_usec, char *why, size_t whylen);

/* Whether a job type means the unit is being restarted: "restart", "try-restart", "reload-or-restart",
 * "try-reload-or-restart" (systemd 252 reports "restart" while any of them runs; the others are accepted
 * for other versions). NULL and "" are not. */
bool evfdd_sdjob_is_restart(const char *job_type);

#endif
