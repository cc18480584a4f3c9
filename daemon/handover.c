/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>
#include "handover.h"
#include "safepath.h"
#include "util.h"

extern char **environ;

/* ---- what the process inherited ------------------------------------------------------------------- */

static int fd_push(int **v, size_t *n, int fd)
{
	int *p = realloc(*v, (*n + 1) * sizeof(**v));

	if (!p)
		return -ENOMEM;
	p[(*n)++] = fd;
	*v = p;
	return 0;
}

/* A descriptor number as the environment gives it: digits only, open now. */
static int parse_fd(const char *s, size_t len)
{
	long v = 0;
	size_t i;

	if (!len || len > 9)
		return -1;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	if (v < 3 || v > INT_MAX || fcntl((int)v, F_GETFD) < 0)
		return -1;
	return (int)v;
}

/* EVFDD_CARRY_FDS: "12-15,19". */
static int parse_ranges(const char *s, struct evfdd_inherit *in, char *why, size_t whylen)
{
	while (*s) {
		size_t n = strcspn(s, ",");
		const char *dash = memchr(s, '-', n);
		int lo = parse_fd(s, dash ? (size_t)(dash - s) : n);
		int hi = dash ? parse_fd(dash + 1, n - (size_t)(dash - s) - 1) : lo;

		if (lo < 0 || hi < lo) {
			snprintf(why, whylen, "%s: \"%.*s\" is not an open descriptor or a range of them",
				 EVFDD_ENV_CARRY_FDS, (int)n, s);
			return -EINVAL;
		}
		for (; lo <= hi; lo++)
			if (fd_push(&in->carried, &in->ncarried, lo) < 0)
				return -ENOMEM;
		s += n + (s[n] == ',');
	}
	return 0;
}

/* One activated socket and its name, kept together (evfdd_inherit_clear frees as many names as sockets). */
static int activated_push(struct evfdd_inherit *in, int fd, const char *name, size_t len)
{
	char **p = realloc(in->names, (in->nactivated + 1) * sizeof(*p));

	if (!p)
		return -ENOMEM;
	in->names = p;
	if (!(p[in->nactivated] = strndup(name, len)))
		return -ENOMEM;
	if (fd_push(&in->activated, &in->nactivated, fd) < 0) {
		free(p[in->nactivated]);
		return -ENOMEM;
	}
	return 0;
}

/* EVFDD_ACTIVATED ("3:4") and EVFDD_ACTIVATED_NAMES ("control:web"). */
static int parse_activated(const char *fds, const char *names, struct evfdd_inherit *in, char *why, size_t whylen)
{
	while (*fds) {
		size_t n = strcspn(fds, ":"), m = strcspn(names, ":");
		int fd = parse_fd(fds, n);

		if (fd < 0 || !*names || !m) {
			snprintf(why, whylen, "%s: \"%.*s\" is not an open descriptor, or it has no name in %s",
				 EVFDD_ENV_ACTIVATED, (int)n, fds, EVFDD_ENV_ACTIVATED_NAMES);
			return -EINVAL;
		}
		if (activated_push(in, fd, names, m) < 0)
			return -ENOMEM;
		fds += n + (fds[n] == ':');
		names += m + (names[m] == ':');
	}
	return 0;
}

int evfdd_handover_inherit(struct evfdd_inherit *in, char *why, size_t whylen)
{
	const char *carry = getenv(EVFDD_ENV_CARRY_FDS), *act = getenv(EVFDD_ENV_ACTIVATED);
	const char *names = getenv(EVFDD_ENV_ACTIVATED_NAMES);
	char **sdnames = NULL;
	size_t i;
	int n, r = 0;

	memset(in, 0, sizeof(*in));
	why[0] = 0;
	if (carry || act) {
		r = parse_ranges(carry ? carry : "", in, why, whylen);
		if (r == 0)
			r = parse_activated(act ? act : "", names ? names : "", in, why, whylen);
		unsetenv(EVFDD_ENV_CARRY_FDS);
		unsetenv(EVFDD_ENV_ACTIVATED);
		unsetenv(EVFDD_ENV_ACTIVATED_NAMES);
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_PID");
		unsetenv("LISTEN_FDNAMES");
		goto out;
	}
	/* Unset the environment so that nothing evfdd starts inherits the activation. */
	n = sd_listen_fds_with_names(1, &sdnames);
	if (n < 0) {
		snprintf(why, whylen, "socket activation: %s", strerror(-n));
		r = -EINVAL;
		n = 0;
	}
	for (i = 0; r == 0 && i < (size_t)n; i++) {
		int fd = SD_LISTEN_FDS_START + (int)i;
		const char *name = sdnames && sdnames[i] ? sdnames[i] : "unknown";

		if (!strcmp(name, EVFDD_CARRY_FDNAME)) {
			in->restart = true;
			r = fd_push(&in->carried, &in->ncarried, fd);
			continue;
		}
		r = activated_push(in, fd, name, strlen(name));
	}
	for (i = 0; sdnames && i < (size_t)n; i++)
		free(sdnames[i]);
	free(sdnames);
out:
	if (r < 0) {
		if (r == -ENOMEM)
			snprintf(why, whylen, "out of memory");
		evfdd_inherit_clear(in);
		return r == -ENOMEM ? r : -EINVAL;
	}
	for (i = 0; i < in->ncarried; i++)
		(void)fcntl(in->carried[i], F_SETFD, FD_CLOEXEC);
	for (i = 0; i < in->nactivated; i++)
		(void)fcntl(in->activated[i], F_SETFD, FD_CLOEXEC);
	return 0;
}

void evfdd_inherit_clear(struct evfdd_inherit *in)
{
	size_t i;

	for (i = 0; in->names && i < in->nactivated; i++)
		free(in->names[i]);
	free(in->names);
	free(in->activated);
	free(in->carried);
	memset(in, 0, sizeof(*in));
}

/* ---- taking over ---------------------------------------------------------------------------------- */

static bool is_listener(int fd)
{
	int acc = 0;
	socklen_t len = sizeof(acc);

	return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) == 0 && acc;
}

/* A carried descriptor's identity, and where it is in the list. */
struct fd_id {
	uint64_t dev, ino;
	size_t at;
};

static int fd_id_cmp(const void *a, const void *b)
{
	const struct fd_id *x = a, *y = b;

	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

void evfdd_handover_takeover(struct evfdd_inherit *in, struct evfdd_takeover *t)
{
	struct fd_id *ids = NULL;
	size_t i, k, n, nids;
	int memfd = -1;

	memset(t, 0, sizeof(*t));
	t->restart = in->restart;
	if (!in->ncarried)
		goto out;
	for (i = 0; i < in->ncarried; i++)
		if (memfd < 0 && evfdd_carry_is_state(in->carried[i])) {
			memfd = in->carried[i];
			in->carried[i] = -1;
		}
	if (memfd < 0) {
		snprintf(t->why, sizeof(t->why), "%zu descriptors were carried over but no state with them",
			 in->ncarried);
	} else {
		if (evfdd_carry_open(memfd, &t->st, t->why, sizeof(t->why)) < 0)
			t->st = NULL;
		/* Read or refused, the descriptor is done with: a state lives on in its mapping, and a refused
		 * one's bytes (megabytes, maybe) are of no use. */
		close(memfd);
	}
	if (t->st) {
		n = evfdd_carry_nfds(t->st);
		t->map = malloc((n ? n : 1) * sizeof(*t->map));
		ids = calloc(in->ncarried, sizeof(*ids));
		if (!t->map || !ids) {
			snprintf(t->why, sizeof(t->why), "out of memory matching the descriptors carried");
			evfdd_carry_close(t->st);
			t->st = NULL;
			free(t->map);
			t->map = NULL;
		} else {
			/* Matched by identity (the numbers hold across execve, not through the store): sorted, then
			 * looked up, for tens of thousands of them within the pause. */
			t->nmap = n;
			for (i = 0, nids = 0; i < in->ncarried; i++) {
				struct stat sb;

				if (in->carried[i] >= 0 && fstat(in->carried[i], &sb) == 0)
					ids[nids++] = (struct fd_id){ (uint64_t)sb.st_dev, (uint64_t)sb.st_ino, i };
			}
			qsort(ids, nids, sizeof(*ids), fd_id_cmp);
			for (k = 0; k < n; k++) {
				const struct evfdd_carry_fd *f = evfdd_carry_fd(t->st, k);
				struct fd_id key = { f->dev, f->ino, 0 }, *hit = bsearch(&key, ids, nids, sizeof(*ids),
											 fd_id_cmp);

				t->map[k] = -1;
				if (hit && in->carried[hit->at] >= 0) {
					t->map[k] = in->carried[hit->at];
					in->carried[hit->at] = -1;
				}
			}
		}
	}
	/* Whatever is left: a listener evfdd had bound is kept, anything else closed. */
	for (i = 0; i < in->ncarried; i++) {
		if (in->carried[i] < 0)
			continue;
		if (is_listener(in->carried[i]) && fd_push(&t->listeners, &t->nlisteners, in->carried[i]) == 0)
			continue;
		close(in->carried[i]);
		t->closed++;
	}
out:
	free(ids);
	free(in->carried);
	in->carried = NULL;
	in->ncarried = 0;
	/* Ours alone now: systemd's copies would keep connections open that we close. */
	if (t->restart)
		(void)sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=" EVFDD_CARRY_FDNAME);
}

void evfdd_takeover_clear(struct evfdd_takeover *t)
{
	size_t i;

	for (i = 0; t->map && i < t->nmap; i++)
		if (t->map[i] >= 0)
			close(t->map[i]);
	free(t->map);
	free(t->listeners);
	evfdd_carry_close(t->st);
	memset(t, 0, sizeof(*t));
}

/* ---- the binary ----------------------------------------------------------------------------------- */

int evfdd_handover_exe_path(const char *argv0, char *out, size_t outlen)
{
	const char *path = getenv("PATH");
	char cwd[PATH_MAX];
	size_t n;

	if (strchr(argv0, '/')) {
		if (argv0[0] == '/')
			return (size_t)snprintf(out, outlen, "%s", argv0) < outlen ? 0 : -ENAMETOOLONG;
		if (!getcwd(cwd, sizeof(cwd)))
			return -errno;
		return (size_t)snprintf(out, outlen, "%s/%s", cwd, argv0) < outlen ? 0 : -ENAMETOOLONG;
	}
	for (path = path ? path : "/usr/local/bin:/usr/bin:/bin"; *path; path += n + (path[n] == ':')) {
		n = strcspn(path, ":");
		if (!n || path[0] != '/')
			continue;
		if ((size_t)snprintf(out, outlen, "%.*s/%s", (int)n, path, argv0) < outlen && access(out, X_OK) == 0)
			return 0;
	}
	return -ENOENT;
}

int evfdd_handover_open_exe(const char *path, char *why, size_t whylen)
{
	struct safepath sp = SAFEPATH_INIT;
	char magic[2];
	struct stat st;
	int fd = -1, r;

	r = safepath_open(&sp, path, SAFEPATH_FOLLOW, why, whylen);
	if (r < 0)
		goto out;
	fd = openat(sp.dirfd, sp.name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		r = -errno;
		snprintf(why, whylen, "cannot open it: %s", strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		snprintf(why, whylen, "fstat: %s", strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode) || !(st.st_mode & S_IXUSR)) {
		r = -EACCES;
		snprintf(why, whylen, "it is not an executable regular file");
	} else if (pread(fd, magic, 2, 0) == 2 && magic[0] == '#' && magic[1] == '!') {
		/* Executed in place through its descriptor, which must close on exec: a script's interpreter
		 * could not open it. */
		r = -ENOEXEC;
		snprintf(why, whylen, "it is a script (#!); name the binary itself (upgrade_binary = PATH in "
			 "[evfdd])");
	} else if (st.st_uid != 0 && st.st_uid != geteuid()) {
		r = -EPERM;
		snprintf(why, whylen, "it belongs to uid %u; only root or evfdd's own user may own what evfdd "
			 "executes", (unsigned)st.st_uid);
	} else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		r = -EPERM;
		snprintf(why, whylen, "it is writable by its group or others (mode %04o); only root or evfdd's own "
			 "user may be able to change what evfdd executes", (unsigned)(st.st_mode & 07777));
	}
out:
	safepath_close(&sp);
	if (r < 0) {
		if (fd >= 0)
			close(fd);
		return r;
	}
	return fd;
}

/* The environment of the next image: ours without what an earlier hand-over or activation left, plus @add. */
static char **env_with(char *const *add, size_t nadd)
{
	size_t n = 0, i, k = 0;
	char **env;

	while (environ[n])
		n++;
	env = calloc(n + nadd + 1, sizeof(*env));
	if (!env)
		return NULL;
	for (i = 0; i < n; i++)
		if (strncmp(environ[i], "EVFDD_ACTIVATED", 15) && strncmp(environ[i], "EVFDD_CARRY_FDS=", 16) &&
		    strncmp(environ[i], "LISTEN_", 7))
			env[k++] = environ[i];
	for (i = 0; i < nadd; i++)
		env[k++] = add[i];
	return env;
}

static char **argv_with(char *const argv[], const char *a, const char *b)
{
	size_t n = 0, i;
	char **v;

	while (argv[n])
		n++;
	v = calloc(n + 3, sizeof(*v));
	if (!v)
		return NULL;
	for (i = 0; i < n; i++)
		v[i] = argv[i];
	v[n] = (char *)a;
	v[n + 1] = (char *)b;
	return v;
}

/* A check running: its output (the first line says why it failed), its end, its deadline. */
struct evfdd_handover_check {
	struct ev_loop *ev;
	ev_child child;
	ev_io out;
	ev_timer timer;
	pid_t pid;
	int fd;
	char text[1024];
	size_t len;
	bool exited, timed_out;
	int status;
	unsigned timeout_ms;
	void (*done)(void *arg, int err, const char *why);
	void *arg;
};

static void check_stop(struct evfdd_handover_check *c)
{
	ev_child_stop(c->ev, &c->child);
	ev_io_stop(c->ev, &c->out);
	ev_timer_stop(c->ev, &c->timer);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/* Read what the check printed, keeping the first bytes; true at its end (EOF or an error). */
static bool check_read(struct evfdd_handover_check *c)
{
	char sink[4096];

	for (;;) {
		bool keep = c->len < sizeof(c->text) - 1;
		ssize_t k = read(c->fd, keep ? c->text + c->len : sink, keep ? sizeof(c->text) - 1 - c->len :
				 sizeof(sink));

		if (k > 0) {
			if (keep)
				c->len += (size_t)k;
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		return !(k < 0 && errno == EAGAIN);
	}
}

static void check_finish(struct evfdd_handover_check *c)
{
	void (*done)(void *, int, const char *) = c->done;
	void *arg = c->arg;
	char why[1200];
	int err = 0;

	(void)check_read(c);
	check_stop(c);
	c->text[c->len] = 0;
	c->text[strcspn(c->text, "\n")] = 0;   /* its first line says why */
	why[0] = 0;
	if (c->timed_out) {
		err = -ETIMEDOUT;
		snprintf(why, sizeof(why), "its check did not finish within %u ms", c->timeout_ms);
	} else if (!WIFEXITED(c->status)) {
		err = -EINVAL;
		snprintf(why, sizeof(why), "its check was killed by signal %d", WTERMSIG(c->status));
	} else if (WEXITSTATUS(c->status)) {
		err = -EINVAL;
		snprintf(why, sizeof(why), "its check exited with %d: %s", WEXITSTATUS(c->status),
			 c->text[0] ? c->text : "(no output)");
	}
	free(c);
	done(arg, err, why);
}

static void check_child_cb(struct ev_loop *ev, ev_child *w, int revents)
{
	struct evfdd_handover_check *c = w->data;

	c->exited = true;
	c->status = w->rstatus;
	check_finish(c);
}

static void check_out_cb(struct ev_loop *ev, ev_io *w, int revents)
{
	struct evfdd_handover_check *c = w->data;

	if (check_read(c))
		ev_io_stop(ev, w);   /* closed: its exit follows */
}

static void check_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
	struct evfdd_handover_check *c = w->data;

	c->timed_out = true;
	kill(c->pid, SIGKILL);   /* its exit follows */
}

int evfdd_handover_check_start(struct ev_loop *ev, int exe, char *const argv[], unsigned timeout_ms,
			       void (*done)(void *arg, int err, const char *why), void *arg,
			       struct evfdd_handover_check **out, char *why, size_t whylen)
{
	struct evfdd_handover_check *c = calloc(1, sizeof(*c));
	char path[64], ver[64];
	posix_spawn_file_actions_t fa;
	char **args = NULL, **env = NULL;
	int pipefd[2] = { -1, -1 }, r;

	why[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", exe);
	snprintf(ver, sizeof(ver), "--check-state-version=%u", EVFDD_CARRY_VERSION);
	args = argv_with(argv, "-n", ver);
	env = env_with(NULL, 0);
	if (!c || !args || !env || pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
		r = -ENOMEM;
		snprintf(why, whylen, "cannot run the check: %s", strerror(errno ? errno : ENOMEM));
		goto fail;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	r = -posix_spawn(&c->pid, path, &fa, NULL, args, env);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	pipefd[1] = -1;
	if (r < 0) {
		snprintf(why, whylen, "cannot run it: %s", strerror(-r));
		goto fail;
	}
	c->ev = ev;
	c->fd = pipefd[0];
	c->timeout_ms = timeout_ms;
	c->done = done;
	c->arg = arg;
	ev_child_init(&c->child, check_child_cb, c->pid, 0);
	ev_io_init(&c->out, check_out_cb, c->fd, EV_READ);
	ev_timer_init(&c->timer, check_timer_cb, timeout_ms / 1000.0, 0.);
	c->child.data = c->out.data = c->timer.data = c;
	ev_child_start(ev, &c->child);
	ev_io_start(ev, &c->out);
	ev_timer_start(ev, &c->timer);
	free(args);
	free(env);
	*out = c;
	return 0;
fail:
	if (pipefd[0] >= 0)
		close(pipefd[0]);
	if (pipefd[1] >= 0)
		close(pipefd[1]);
	free(args);
	free(env);
	free(c);
	return r;
}

void evfdd_handover_check_cancel(struct evfdd_handover_check *c)
{
	if (!c)
		return;
	check_stop(c);
	kill(c->pid, SIGKILL);
	(void)waitpid(c->pid, NULL, 0);
	free(c);
}

/* "12-15,19" for @fds (any order). */
static char *ranges_text(const int *fds, size_t n)
{
	size_t cap = 64 + n * 12, len, i;
	char *s = malloc(cap), *p;
	int *v = malloc((n ? n : 1) * sizeof(*v));

	if (!s || !v) {
		free(s);
		free(v);
		return NULL;
	}
	memcpy(v, fds, n * sizeof(*v));
	/* Insertion sort is enough for the ranges being short; sort properly for many. */
	for (i = 1; i < n; i++) {
		int x = v[i];
		size_t j = i;

		while (j && v[j - 1] > x) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = x;
	}
	len = (size_t)snprintf(s, cap, "%s=", EVFDD_ENV_CARRY_FDS);
	for (i = 0; i < n; ) {
		size_t j = i;

		while (j + 1 < n && v[j + 1] == v[j] + 1)
			j++;
		p = s + len;
		len += (size_t)snprintf(p, cap - len, j > i ? "%s%d-%d" : "%s%d", i ? "," : "", v[i], v[j]);
		i = j + 1;
	}
	free(v);
	return s;
}

int evfdd_handover_exec(int exe, char *const argv[], const int *activated, char *const *names, size_t nactivated,
			const int *carried, size_t ncarried)
{
	char *add[3] = { NULL, NULL, NULL }, **env = NULL;
	size_t i, cap = 64 + nactivated * 12, len;
	int r;

	add[0] = ranges_text(carried, ncarried);
	for (i = 0; i < nactivated; i++)
		cap += strlen(names[i]) + 1;
	add[1] = malloc(cap);
	add[2] = malloc(cap);
	if (!add[0] || !add[1] || !add[2]) {
		r = -ENOMEM;
		goto out;
	}
	len = (size_t)snprintf(add[1], cap, "%s=", EVFDD_ENV_ACTIVATED);
	for (i = 0; i < nactivated; i++)
		len += (size_t)snprintf(add[1] + len, cap - len, "%s%d", i ? ":" : "", activated[i]);
	len = (size_t)snprintf(add[2], cap, "%s=", EVFDD_ENV_ACTIVATED_NAMES);
	for (i = 0; i < nactivated; i++)
		len += (size_t)snprintf(add[2] + len, cap - len, "%s%s", i ? ":" : "", names[i]);
	env = env_with(add, 3);
	if (!env) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < ncarried; i++)
		(void)fcntl(carried[i], F_SETFD, 0);
	for (i = 0; i < nactivated; i++)
		(void)fcntl(activated[i], F_SETFD, 0);
	fexecve(exe, argv, env);
	r = -errno;
	for (i = 0; i < ncarried; i++)
		(void)fcntl(carried[i], F_SETFD, FD_CLOEXEC);
	for (i = 0; i < nactivated; i++)
		(void)fcntl(activated[i], F_SETFD, FD_CLOEXEC);
out:
	free(env);
	free(add[0]);
	free(add[1]);
	free(add[2]);
	return r;
}

int evfdd_handover_store(const int *fds, size_t n, uint64_t timeout_usec)
{
	size_t i;
	int r;

	for (i = 0; i < n; i += EVFDD_HANDOVER_STORE_CHUNK) {
		size_t k = n - i < EVFDD_HANDOVER_STORE_CHUNK ? n - i : EVFDD_HANDOVER_STORE_CHUNK;

		r = sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDPOLL=0\nFDNAME=" EVFDD_CARRY_FDNAME, fds + i, (unsigned)k);
		if (r < 0)
			return r;
		if (r == 0)
			return -ENOTCONN;   /* no NOTIFY_SOCKET: not run by systemd */
	}
	r = sd_notify_barrier(0, timeout_usec);
	return r < 0 ? r : 0;
}
