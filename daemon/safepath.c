/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Safe Unix socket paths: the directory chain checked from / down, then everything done relative to the
 * directory found. See safepath.h. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "safepath.h"

#define PROC_FD_MAX (sizeof("/proc/self/fd/") + 10)

static void safepath_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void safepath_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

const char *safepath_type_name(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG:
		return "regular file";
	case S_IFDIR:
		return "directory";
	case S_IFLNK:
		return "symbolic link";
	case S_IFIFO:
		return "FIFO";
	case S_IFCHR:
		return "character device";
	case S_IFBLK:
		return "block device";
	case S_IFSOCK:
		return "socket";
	default:
		return "file of unknown type";
	}
}

/* "root" or "root or uid N": who may own the directories on the way. */
static const char *safepath_trusted(char *buf, size_t size)
{
	if (geteuid() == 0)
		return "root";
	snprintf(buf, size, "root or uid %u", (unsigned)geteuid());
	return buf;
}

static bool safepath_uid_trusted(const struct safepath *sp, uid_t uid)
{
	return uid == 0 || uid == geteuid() || (sp->peer_check && uid == sp->peer_uid);
}

/* "DIR/NAME" without a doubled slash under /; cut short if need be: for messages only. */
static void safepath_join(char *buf, size_t size, const char *dir, const char *name)
{
	if (snprintf(buf, size, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", name) >= (int)size)
		buf[size - 1] = '\0';
}

/*
 * May the directory @dst (at @dir) hold an entry owned by @entry_uid (-1: an entry the caller is about to
 * create, which will be its own)? @last: the entry is the last component, the socket (SAFEPATH_PEER_DIR
 * applies only there). Sets sp->peer_check when the directory belongs to a uid to be checked against the
 * peer. Returns 0, or -EPERM with @err saying why and what to do.
 */
static int safepath_check_dir(struct safepath *sp, const char *dir, const struct stat *dst, const char *name,
			      long long entry_uid, bool last, unsigned flags, char *err, size_t errlen)
{
	unsigned mode = (unsigned)(dst->st_mode & 07777), owner = (unsigned)dst->st_uid;
	char who[64], entry[PATH_MAX];
	const char *writers;

	if (dst->st_uid != 0 && dst->st_uid != geteuid()) {
		if (!last || !(flags & SAFEPATH_PEER_DIR) || (sp->peer_check && sp->peer_uid != dst->st_uid)) {
			safepath_err(err, errlen, "the directory %s is owned by uid %u (mode %04o), who could replace "
				     "what is in it; use a path whose directories belong to %s and are writable by "
				     "no one else", dir, owner, mode, safepath_trusted(who, sizeof(who)));
			return -EPERM;
		}
		sp->peer_check = true;
		sp->peer_uid = dst->st_uid;
	}
	if (!(dst->st_mode & (S_IWGRP | S_IWOTH)))
		return 0;
	if (!(dst->st_mode & S_ISVTX)) {
		writers = (dst->st_mode & S_IWGRP) && (dst->st_mode & S_IWOTH) ? "its group and by others" :
			  dst->st_mode & S_IWGRP ? "its group" : "others";
		safepath_err(err, errlen, "the directory %s (owner uid %u, mode %04o) is writable by %s, who could "
			     "replace what is in it; remove that write permission (chmod go-w %s) or use a path "
			     "whose directories belong to %s and are writable by no one else", dir, owner, mode,
			     writers, dir, safepath_trusted(who, sizeof(who)));
		return -EPERM;
	}
	/* Sticky: others may add entries but rename or remove only their own. */
	if (entry_uid < 0 || safepath_uid_trusted(sp, (uid_t)entry_uid))
		return 0;
	safepath_join(entry, sizeof(entry), dir, name);
	safepath_err(err, errlen, "%s belongs to uid %u, who may replace it in the sticky directory %s (owner uid "
		     "%u, mode %04o); remove it, or use a path whose directories belong to %s and are writable "
		     "by no one else", entry, (unsigned)entry_uid, dir, owner, mode,
		     safepath_trusted(who, sizeof(who)));
	return -EPERM;
}

/* The next component of *@p (slashes skipped), NUL-terminated in place; NULL when none is left. *@last
 * tells whether only slashes follow it. */
static char *safepath_next(char **p, bool *last)
{
	char *s = *p, *e;

	while (*s == '/')
		s++;
	if (!*s)
		return NULL;
	e = strchr(s, '/');
	if (e) {
		*e++ = '\0';
		while (*e == '/')
			e++;
	} else {
		e = s + strlen(s);
	}
	*p = e;
	*last = !*e;
	return s;
}

/* @dir with @name appended, or with its last component removed for "..". */
static int safepath_dir_step(char *dir, size_t size, const char *name)
{
	char *slash;

	if (!strcmp(name, "..")) {
		slash = strrchr(dir, '/');
		if (slash)
			slash[slash == dir ? 1 : 0] = '\0';
		return 0;
	}
	if (strlen(dir) + 1 + strlen(name) >= size)
		return -ENAMETOOLONG;
	if (strcmp(dir, "/"))
		strcat(dir, "/");
	strcat(dir, name);
	return 0;
}

/* A symbolic link's target followed by what was left of the path: the new rest of the walk. */
static char *safepath_splice(int dirfd, const char *name, const char *rest, int *r)
{
	char target[PATH_MAX], *todo;
	ssize_t n = readlinkat(dirfd, name, target, sizeof(target));

	if (n < 0 || n >= (ssize_t)sizeof(target)) {
		*r = n < 0 ? -errno : -ENAMETOOLONG;
		return NULL;
	}
	target[n] = '\0';
	if (!n) {
		*r = -ENOENT;
		return NULL;
	}
	if (asprintf(&todo, "%s/%s", target, rest) < 0) {
		*r = -ENOMEM;
		return NULL;
	}
	return todo;
}

static int safepath_open_root(int *fd, struct stat *st, char *dir, size_t size)
{
	int nfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (nfd < 0 || fstat(nfd, st) < 0) {
		int r = -errno;

		if (nfd >= 0)
			close(nfd);
		return r;
	}
	if (*fd >= 0)
		close(*fd);
	*fd = nfd;
	snprintf(dir, size, "/");
	return 0;
}

/* mkdir of one missing directory with exactly SAFEPATH_DIR_MODE: a umask of 0077 (UMask=) would otherwise
 * make it 0700 and keep other users away from a socket meant for them. */
static int safepath_mkdir(int dirfd, const char *name)
{
	mode_t old = umask(0);
	int r = mkdirat(dirfd, name, SAFEPATH_DIR_MODE) < 0 && errno != EEXIST ? -errno : 0;

	umask(old);
	return r;
}

/* The walk itself: one cleanup exit for the directory fd and the rest of the path. */
int safepath_open(struct safepath *sp, const char *path, unsigned flags, char *err, size_t errlen)
{
	char dir[PATH_MAX], entry[PATH_MAX], cwd[PATH_MAX], *todo = NULL, *p, *comp = NULL, *next;
	struct stat dst, est, nst;
	int cur = -1, nfd, links = 0, r;
	bool last = false;

	*sp = (struct safepath)SAFEPATH_INIT;
	if (err && errlen)
		err[0] = '\0';
	if (!*path) {
		safepath_err(err, errlen, "the path is empty");
		return -EINVAL;
	}
	if (path[0] != '/' && !getcwd(cwd, sizeof(cwd))) {
		r = -errno;
		safepath_err(err, errlen, "cannot tell the working directory for a relative path: %s; give an "
			     "absolute path", strerror(-r));
		return r;
	}
	sp->path = strdup(path);
	if (path[0] == '/')
		sp->abspath = strdup(path);
	else if (asprintf(&sp->abspath, "%s/%s", cwd, path) < 0)
		sp->abspath = NULL;
	todo = sp->abspath ? strdup(sp->abspath) : NULL;
	if (!sp->path || !todo) {
		r = -ENOMEM;
		safepath_err(err, errlen, "out of memory");
		goto out;
	}
	r = safepath_open_root(&cur, &dst, dir, sizeof(dir));
	if (r < 0) {
		safepath_err(err, errlen, "cannot open /: %s", strerror(-r));
		goto out;
	}
	for (p = todo;;) {
		comp = safepath_next(&p, &last);
		if (!comp || (last && (!strcmp(comp, ".") || !strcmp(comp, "..")))) {
			r = -EINVAL;
			safepath_err(err, errlen, "the path names a directory, not a socket; add the socket's name");
			goto out;
		}
		if (!strcmp(comp, "."))
			continue;
		safepath_join(entry, sizeof(entry), dir, comp);
		if (!strcmp(comp, "..")) {
			nfd = openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
			if (nfd < 0 || fstat(nfd, &dst) < 0) {
				r = -errno;
				safepath_err(err, errlen, "cannot open %s: %s", entry, strerror(-r));
				if (nfd >= 0)
					close(nfd);
				goto out;
			}
			close(cur);
			cur = nfd;
			safepath_dir_step(dir, sizeof(dir), comp);
			continue;
		}
		if (fstatat(cur, comp, &est, AT_SYMLINK_NOFOLLOW) < 0) {
			r = -errno;
			if (r != -ENOENT) {
				safepath_err(err, errlen, "cannot look up %s: %s", entry, strerror(-r));
				goto out;
			}
			/* Nothing there: the socket is still to be bound, or a directory to be made. */
			r = safepath_check_dir(sp, dir, &dst, comp, -1, last, flags, err, errlen);
			if (r < 0 || last)
				break;
			if (!(flags & SAFEPATH_MKDIR)) {
				r = -ENOENT;
				safepath_err(err, errlen, "the directory %s does not exist; create it or fix the path",
					     entry);
				goto out;
			}
			r = safepath_mkdir(cur, comp);
			if (r == 0 && fstatat(cur, comp, &est, AT_SYMLINK_NOFOLLOW) < 0)
				r = -errno;
			if (r < 0) {
				safepath_err(err, errlen, "cannot create the directory %s: %s; create it or fix the "
					     "path", entry, strerror(-r));
				goto out;
			}
		}
		r = safepath_check_dir(sp, dir, &dst, comp, (long long)est.st_uid, last, flags, err, errlen);
		if (r < 0)
			goto out;
		if (S_ISLNK(est.st_mode) && (!last || (flags & SAFEPATH_FOLLOW))) {
			if (++links > SAFEPATH_MAX_LINKS) {
				r = -ELOOP;
				safepath_err(err, errlen, "more than %d symbolic links on the way; fix the path",
					     SAFEPATH_MAX_LINKS);
				goto out;
			}
			next = safepath_splice(cur, comp, last ? "" : p, &r);
			if (!next) {
				safepath_err(err, errlen, "cannot read the symbolic link %s: %s", entry, strerror(-r));
				goto out;
			}
			free(todo);
			p = todo = next;
			if (todo[0] == '/') {
				r = safepath_open_root(&cur, &dst, dir, sizeof(dir));
				if (r < 0) {
					safepath_err(err, errlen, "cannot open /: %s", strerror(-r));
					goto out;
				}
			}
			continue;
		}
		if (last)
			break;
		if (!S_ISDIR(est.st_mode)) {
			r = -ENOTDIR;
			safepath_err(err, errlen, "%s is a %s, not a directory; fix the path", entry,
				     safepath_type_name(est.st_mode));
			goto out;
		}
		nfd = openat(cur, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 || fstat(nfd, &nst) < 0) {
			r = -errno;
			safepath_err(err, errlen, "cannot open the directory %s: %s", entry, strerror(-r));
			if (nfd >= 0)
				close(nfd);
			goto out;
		}
		close(cur);
		cur = nfd;
		/* What was checked as an entry must be what was opened: the holder was safe, so only root or
		 * the caller could have swapped it, but then the check above was about something else. */
		if (nst.st_dev != est.st_dev || nst.st_ino != est.st_ino) {
			r = -EAGAIN;
			safepath_err(err, errlen, "%s was replaced while being checked; try again", entry);
			goto out;
		}
		dst = nst;
		r = safepath_dir_step(dir, sizeof(dir), comp);
		if (r < 0) {
			safepath_err(err, errlen, "the path is too long");
			goto out;
		}
	}
	if (r < 0)
		goto out;
	sp->name = strdup(comp);
	sp->dir = strdup(dir);
	if (!sp->name || !sp->dir) {
		r = -ENOMEM;
		safepath_err(err, errlen, "out of memory");
		goto out;
	}
	sp->dirfd = cur;
	sp->dirst = dst;
	cur = -1;
	r = 0;
out:
	if (cur >= 0)
		close(cur);
	free(todo);
	return r;
}

void safepath_close(struct safepath *sp)
{
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	free(sp->name);
	free(sp->path);
	free(sp->abspath);
	free(sp->dir);
	*sp = (struct safepath)SAFEPATH_INIT;
}

/* An existing entry in the checked directory: in a sticky one, it must not be another user's. */
static int safepath_check_entry(const struct safepath *sp, const struct stat *st, char *err, size_t errlen)
{
	struct safepath copy = *sp;

	return safepath_check_dir(&copy, sp->dir, &sp->dirst, sp->name, (long long)st->st_uid, true,
				  sp->peer_check ? SAFEPATH_PEER_DIR : 0, err, errlen);
}

int safepath_stat(const struct safepath *sp, struct stat *st, char *err, size_t errlen)
{
	if (fstatat(sp->dirfd, sp->name, st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return safepath_check_entry(sp, st, err, errlen);
}

/* The address of @name in @sp's directory, or of the inode behind @fd when @name is NULL: through
 * /proc/self/fd when /proc shows that very directory (or inode), else the checked absolute path. */
static int safepath_addr(const struct safepath *sp, int fd, const char *name, struct sockaddr_un *sun,
			 socklen_t *len)
{
	struct stat a, b;
	int n;

	memset(sun, 0, sizeof(*sun));
	sun->sun_family = AF_UNIX;
	n = snprintf(sun->sun_path, sizeof(sun->sun_path), "/proc/self/fd/%d", fd);
	if (n > 0 && (size_t)n < sizeof(sun->sun_path) && stat(sun->sun_path, &a) == 0 && fstat(fd, &b) == 0 &&
	    a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
		if (name)
			n = snprintf(sun->sun_path, sizeof(sun->sun_path), "/proc/self/fd/%d/%s", fd, name);
		if ((size_t)n < sizeof(sun->sun_path)) {
			*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
			return 0;
		}
	}
	/* Without /proc, or too long for it: the name, whose directories were all checked. */
	n = snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", sp->abspath);
	if (n < 0 || (size_t)n >= sizeof(sun->sun_path))
		return -ENAMETOOLONG;
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
	return 0;
}

int safepath_connect(const struct safepath *sp, int fd, char *err, size_t errlen)
{
	char entry[PATH_MAX];
	struct sockaddr_un sun;
	struct stat st;
	socklen_t len;
	int efd, r;

	efd = openat(sp->dirfd, sp->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (efd < 0)
		return -errno;
	if (fstat(efd, &st) < 0) {
		r = -errno;
		goto out;
	}
	r = safepath_check_entry(sp, &st, err, errlen);
	if (r < 0)
		goto out;
	if (!S_ISSOCK(st.st_mode)) {
		r = -ENOTSOCK;
		safepath_join(entry, sizeof(entry), sp->dir, sp->name);
		safepath_err(err, errlen, "%s is a %s, not a socket; check the path", entry,
			     safepath_type_name(st.st_mode));
		goto out;
	}
	r = safepath_addr(sp, efd, NULL, &sun, &len);
	if (r == 0 && connect(fd, (struct sockaddr *)&sun, len) < 0)
		r = -errno;
out:
	close(efd);
	return r;
}

int safepath_bind(const struct safepath *sp, int fd, mode_t mode, int *file_fd)
{
	struct sockaddr_un sun;
	struct stat st;
	socklen_t len;
	mode_t old;
	int r, efd;

	*file_fd = -1;
	/* By the checked path, so that the address the kernel keeps for the socket (ss -xl, a client's
	 * getpeername, a PROXY header) is the path itself: only root and the caller can change the directories
	 * on it, as the walk proved. Through /proc/self/fd only when the path is too long for sun_path. */
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(sp->abspath) < sizeof(sun.sun_path)) {
		memcpy(sun.sun_path, sp->abspath, strlen(sp->abspath) + 1);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(sp->abspath) + 1);
	} else {
		r = safepath_addr(sp, sp->dirfd, sp->name, &sun, &len);
		if (r < 0)
			return r;
	}
	/* Linux creates the file with the socket inode's mode less the umask. */
	if (fchmod(fd, mode) < 0)
		return -errno;
	old = umask(0);
	r = bind(fd, (struct sockaddr *)&sun, len) < 0 ? -errno : 0;
	umask(old);
	if (r < 0)
		return r;
	efd = openat(sp->dirfd, sp->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (efd < 0)
		return -errno;
	if (fstat(efd, &st) < 0)
		r = -errno;
	else if (!S_ISSOCK(st.st_mode))
		r = -EAGAIN;	/* replaced between bind and open: by root or the caller, who may */
	if (r < 0) {
		close(efd);
		return r;
	}
	*file_fd = efd;
	return 0;
}

int safepath_unlink(const struct safepath *sp, const struct stat *st)
{
	struct stat now;

	if (fstatat(sp->dirfd, sp->name, &now, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (now.st_dev != st->st_dev || now.st_ino != st->st_ino)
		return -ESTALE;
	return unlinkat(sp->dirfd, sp->name, 0) < 0 ? -errno : 0;
}

int safepath_chmod_fd(int file_fd, mode_t mode)
{
	char proc[PROC_FD_MAX];

	/* fchmod refuses O_PATH descriptors; /proc/self/fd/N leads to the inode itself, not to a name.
	 * (fchmodat2 with AT_EMPTY_PATH, Linux 6.6, would do too, but seccomp filters older than it answer
	 * EPERM, systemd 252's among them.) */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", file_fd);
	return chmod(proc, mode) < 0 ? -errno : 0;
}

int safepath_check_peer(const struct safepath *sp, int fd, char *err, size_t errlen)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (!sp->peer_check)
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	if (cred.uid == 0 || cred.uid == sp->peer_uid)
		return 0;
	safepath_err(err, errlen, "the directory %s is owned by uid %u (mode %04o), but the server there runs as "
		     "uid %u (pid %d), who should not be able to put a socket there; find out who runs it, or use a "
		     "path whose directories belong to root", sp->dir, (unsigned)sp->peer_uid,
		     (unsigned)(sp->dirst.st_mode & 07777), (unsigned)cred.uid, (int)cred.pid);
	return -EPERM;
}
