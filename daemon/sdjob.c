/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Asking the service manager which job it has pending for evfdd's unit (sdjob.h). Everything is a blocking
 * sd-bus call bounded by one deadline; the connection is opened and closed within the query. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-login.h>
#include "sdjob.h"
#include "util.h"

#define SD_NAME "org.freedesktop.systemd1"
#define SD_OBJECT "/org/freedesktop/systemd1"
#define SD_MANAGER SD_NAME ".Manager"
#define SD_UNIT SD_NAME ".Unit"
#define SD_SERVICE SD_NAME ".Service"
#define SD_JOB SD_NAME ".Job"
#define DBUS_PROPERTIES "org.freedesktop.DBus.Properties"

/* One connection to the manager and what bounds it. */
struct ask {
	sd_bus *bus;
	uint64_t deadline;               /* CLOCK_MONOTONIC, µs; UINT64_MAX for none */
	char errname[128];               /* the D-Bus error of the last call that failed, or "" */
	char why[512];
};

/* Time left before @deadline: UINT64_MAX (sd-bus's "no timeout") when there is none, 0 when it passed. */
static uint64_t time_left(uint64_t deadline)
{
	uint64_t now;

	if (deadline == UINT64_MAX)
		return UINT64_MAX;
	now = util_now_us(CLOCK_MONOTONIC);
	return deadline > now ? deadline - now : 0;
}

static bool is_service(const char *unit)
{
	size_t n = strlen(unit);

	return n > 8 && !strcmp(unit + n - 8, ".service");
}

/* "unix:path=" and @path escaped as a D-Bus address value. Returns 0 or -ENAMETOOLONG. */
static int unix_address(char *buf, size_t len, const char *path)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = (size_t)snprintf(buf, len, "unix:path=");

	for (; *path; path++) {
		unsigned char c = (unsigned char)*path;

		if (o + 4 > len)
			return -ENAMETOOLONG;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-_/.\\*", c)) {
			buf[o++] = (char)c;
		} else {
			buf[o++] = '%';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		}
	}
	buf[o] = 0;
	return 0;
}

/* Open q->bus: way 0 the bus (system or session, as sd-bus finds it), way 1 the private socket at @priv (a
 * D-Bus address, or NULL when there is none). Then wait until it is up (authenticated and, through a bus
 * daemon, past Hello) until q->deadline: sd_bus_call would wait for that without a limit of ours. */
static int ask_open(struct ask *q, bool user, int way, const char *priv)
{
	uint64_t t = 0;
	int r;

	if (way == 0) {
		r = user ? sd_bus_open_user(&q->bus) : sd_bus_open_system(&q->bus);
		if (r == -ENOMEDIUM)
			r = -ENXIO;              /* XDG_RUNTIME_DIR unset; our -ENOMEDIUM means something else */
	} else if (!priv) {
		snprintf(q->why, sizeof(q->why), "XDG_RUNTIME_DIR is not set");
		return -ENXIO;
	} else {
		r = sd_bus_new(&q->bus);
		if (r >= 0)
			r = sd_bus_set_address(q->bus, priv);
		if (r >= 0)
			r = sd_bus_start(q->bus);
	}
	if (r < 0) {
		snprintf(q->why, sizeof(q->why), "connect: %s", strerror(-r));
		return r;
	}
	for (;;) {
		r = sd_bus_is_ready(q->bus);
		if (r > 0)
			break;
		if (r == 0)
			r = sd_bus_process(q->bus, NULL);
		if (r > 0)
			continue;
		if (r == 0 && !(t = time_left(q->deadline)))
			r = -ETIMEDOUT;
		if (r == 0)
			r = sd_bus_wait(q->bus, t);
		if (r < 0) {
			snprintf(q->why, sizeof(q->why), "connection: %s", r == -ETIMEDOUT ? "timed out" : strerror(-r));
			return r;
		}
	}
	(void)sd_bus_set_method_call_timeout(q->bus, time_left(q->deadline) ?: 1);
	return 0;
}

/* Call @member of @iface on @path with arguments @types, ... (NULL for none); *@reply gets the answer. @what
 * names the call in q->why. Returns 0 or a negative errno (a D-Bus error as sd-bus maps it; its name in
 * q->errname). */
static int ask_call(struct ask *q, const char *what, const char *path, const char *iface, const char *member,
		    sd_bus_message **reply, const char *types, ...)
{
	sd_bus_error err = SD_BUS_ERROR_NULL;
	sd_bus_message *m = NULL;
	uint64_t t = time_left(q->deadline);
	va_list ap;
	int r;

	q->errname[0] = 0;
	if (!t) {
		snprintf(q->why, sizeof(q->why), "%s: timed out", what);
		return -ETIMEDOUT;
	}
	/* The destination also on the private socket, where the manager itself answers: systemctl sends it
	 * there too (252 accepts it and none alike). */
	r = sd_bus_message_new_method_call(q->bus, &m, SD_NAME, path, iface, member);
	if (r >= 0 && types) {
		va_start(ap, types);
		r = sd_bus_message_appendv(m, types, ap);
		va_end(ap);
	}
	if (r >= 0)
		r = sd_bus_call(q->bus, m, t, &err, reply);
	if (r < 0 && sd_bus_error_is_set(&err)) {
		snprintf(q->errname, sizeof(q->errname), "%s", err.name);
		snprintf(q->why, sizeof(q->why), "%s: %s: %s", what, err.name, err.message ? err.message : "");
	} else if (r < 0) {
		snprintf(q->why, sizeof(q->why), "%s: %s", what, r == -ETIMEDOUT ? "timed out" : strerror(-r));
	}
	sd_bus_error_free(&err);
	sd_bus_message_unref(m);
	return r < 0 ? r : 0;
}

/* Get property @name (of D-Bus type @sig) of @iface on @path: *@reply is left inside the variant, for
 * sd_bus_message_read(*@reply, @sig, ...). */
static int ask_property(struct ask *q, const char *path, const char *iface, const char *name, const char *sig,
			sd_bus_message **reply)
{
	char what[128];
	int r;

	snprintf(what, sizeof(what), "property %s.%s", strrchr(iface, '.') + 1, name);
	r = ask_call(q, what, path, DBUS_PROPERTIES, "Get", reply, "ss", iface, name);
	if (r >= 0 && sd_bus_message_enter_container(*reply, 'v', sig) <= 0) {
		snprintf(q->why, sizeof(q->why), "%s: not of type %s", what, sig);
		r = -EBADMSG;
	}
	return r;
}

/* Read one basic value or struct of @sig from @reply; -EBADMSG, with q->why saying so, when it is not there. */
static int ask_read(struct ask *q, sd_bus_message *reply, const char *what, const char *sig, ...)
{
	va_list ap;
	int r;

	va_start(ap, sig);
	r = sd_bus_message_readv(reply, sig, ap);
	va_end(ap);
	if (r > 0)
		return 0;
	snprintf(q->why, sizeof(q->why), "%s: the answer holds no %s", what, sig);
	return -EBADMSG;
}

/* Fill @out (but out->user) from the manager at the other end of q->bus. @unit is ours, or NULL when the
 * cgroup did not tell: then the manager is asked which unit holds our PID. */
static int ask_unit(struct ask *q, const char *unit, struct evfdd_sdjob *out)
{
	sd_bus_message *reply = NULL;
	char what[320], *path = NULL, *job = NULL;
	const char *s;
	uint32_t id = 0, max = 0;
	int r;

	if (unit) {
		snprintf(what, sizeof(what), "GetUnit(%s)", unit);
		r = ask_call(q, what, SD_OBJECT, SD_MANAGER, "GetUnit", &reply, "s", unit);
	} else {
		snprintf(what, sizeof(what), "GetUnitByPID(%ld)", (long)getpid());
		r = ask_call(q, what, SD_OBJECT, SD_MANAGER, "GetUnitByPID", &reply, "u", (uint32_t)getpid());
		if (r < 0 && !strcmp(q->errname, SD_NAME ".NoUnitForPID"))
			r = -ENOMEDIUM;
	}
	if (r >= 0)
		r = ask_read(q, reply, what, "o", &s);
	if (r < 0)
		goto out;
	path = strdup(s);
	reply = sd_bus_message_unref(reply);
	if (!path) {
		r = -ENOMEM;
		goto out;
	}

	if (!unit) {
		r = ask_property(q, path, SD_UNIT, "Id", "s", &reply);
		if (r >= 0)
			r = ask_read(q, reply, "property Unit.Id", "s", &s);
		if (r < 0)
			goto out;
		if (!is_service(s)) {
			snprintf(q->why, sizeof(q->why), "the manager has our PID in %s, not in a service of our own", s);
			r = -ENOMEDIUM;
			goto out;
		}
		unit = s;
	}
	if (strlen(unit) >= sizeof(out->unit)) {
		snprintf(q->why, sizeof(q->why), "unit name %.40s... too long", unit);
		r = -ENAMETOOLONG;
		goto out;
	}
	snprintf(out->unit, sizeof(out->unit), "%s", unit);
	reply = sd_bus_message_unref(reply);

	r = ask_property(q, path, SD_UNIT, "Job", "(uo)", &reply);
	if (r >= 0)
		r = ask_read(q, reply, "property Unit.Job", "(uo)", &id, &s);
	if (r < 0)
		goto out;
	if (id && !(job = strdup(s))) {
		r = -ENOMEM;
		goto out;
	}
	reply = sd_bus_message_unref(reply);

	if (job) {
		r = ask_property(q, job, SD_JOB, "JobType", "s", &reply);
		if (r >= 0)
			r = ask_read(q, reply, "property Job.JobType", "s", &s);
		if (r >= 0)
			snprintf(out->job_type, sizeof(out->job_type), "%s", s);
		else if (!strcmp(q->errname, "org.freedesktop.DBus.Error.UnknownObject") ||
			 !strcmp(q->errname, "org.freedesktop.DBus.Error.UnknownInterface"))
			r = 0;               /* the job ended between the two reads: none is pending now */
		else
			goto out;
		reply = sd_bus_message_unref(reply);
	}

	r = ask_property(q, path, SD_SERVICE, "FileDescriptorStoreMax", "u", &reply);
	if (r >= 0)
		r = ask_read(q, reply, "property Service.FileDescriptorStoreMax", "u", &max);
	if (r >= 0)
		out->fdstore_max = max;
out:
	sd_bus_message_unref(reply);
	free(path);
	free(job);
	return r;
}

int evfdd_sdjob_query(struct evfdd_sdjob *out, uint64_t timeout_usec, char *why, size_t whylen)
{
	static const char *const ways[2][2] = {
		{ "system bus", "system manager's private socket" },
		{ "user bus", "user manager's private socket" },
	};
	char errs[2][600] = { "", "" }, path[4096], priv[4200], *unit = NULL;
	const char *rt, *paddr = NULL;
	uint64_t now = util_now_us(CLOCK_MONOTONIC), left;
	uint64_t deadline = timeout_usec >= UINT64_MAX - now ? UINT64_MAX : now + timeout_usec;
	struct ask q;
	bool user;
	int r, i;

	memset(out, 0, sizeof(*out));
	memset(&q, 0, sizeof(q));
	if (whylen)
		why[0] = 0;

	/* Our unit, from our cgroup. A user manager sets MANAGERPID (systemd 252, service_spawn); its
	 * services' cgroups lie below user@UID.service, which sd_pid_get_unit would return instead. */
	user = getenv("MANAGERPID") != NULL;
	out->user = user;
	r = user ? sd_pid_get_user_unit(0, &unit) : sd_pid_get_unit(0, &unit);
	if (r >= 0 && !is_service(unit)) {
		snprintf(why, whylen, "in %s, not in a service of our own", unit);
		r = -ENOMEDIUM;
		goto out;
	}
	if (r < 0) {
		/* No unit found there: /proc/1 hidden (ProtectProc=invisible) or a cgroup tree sd-login does not
		 * parse. INVOCATION_ID, which either manager sets for whatever it starts, says one ran us. */
		if (!getenv("INVOCATION_ID")) {
			snprintf(why, whylen, "no unit in our cgroup (%s) and no INVOCATION_ID: not run by systemd",
				 strerror(-r));
			r = -ENOMEDIUM;
			goto out;
		}
		free(unit);
		unit = NULL;                     /* ask_unit asks the manager */
	}

	if (!user) {
		paddr = "unix:path=/run/systemd/private";
	} else if ((rt = getenv("XDG_RUNTIME_DIR")) && *rt) {
		snprintf(path, sizeof(path), "%s/systemd/private", rt);
		if (unix_address(priv, sizeof(priv), path) >= 0)
			paddr = priv;
	}

	/* The bus first, then the manager's private socket (root or the manager's own user only; it speaks
	 * the Manager API itself, without a bus daemon). */
	r = 0;
	for (i = 0; i < 2; i++) {
		left = time_left(deadline);
		if (!left) {
			snprintf(errs[i], sizeof(errs[i]), "%s: timed out", ways[user][i]);
			r = -ETIMEDOUT;
			break;
		}
		/* A bus that hangs (its daemon stopping, as at shutdown) leaves the other way half the time. */
		q.deadline = i == 0 && left != UINT64_MAX ? deadline - left / 2 : deadline;
		q.why[0] = 0;
		r = ask_open(&q, user, i, paddr);
		if (r >= 0)
			r = ask_unit(&q, unit, out);
		q.bus = sd_bus_close_unref(q.bus);
		if (r >= 0)
			break;
		if (i == 1 && paddr)
			snprintf(errs[i], sizeof(errs[i]), "%s %s: %s", ways[user][i], paddr + 10, q.why);
		else
			snprintf(errs[i], sizeof(errs[i]), "%s: %s", ways[user][i], q.why);
		if (r == -ENOMEDIUM)
			break;                   /* the manager's own answer: asking again changes nothing */
	}
	if (r < 0) {
		snprintf(why, whylen, "%s%s%s", errs[0], errs[0][0] && errs[1][0] ? "; then " : "", errs[1]);
		memset(out, 0, sizeof(*out));    /* nothing half-read */
		out->user = user;
	}
out:
	free(unit);
	return r;
}

bool evfdd_sdjob_is_restart(const char *job_type)
{
	static const char *const restarts[] = {
		"restart", "try-restart", "reload-or-restart", "try-reload-or-restart",
	};
	size_t i;

	if (!job_type)
		return false;
	for (i = 0; i < sizeof(restarts) / sizeof(restarts[0]); i++)
		if (!strcmp(job_type, restarts[i]))
			return true;
	return false;
}
