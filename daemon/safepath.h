/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Safe Unix socket paths, shared by evfdd (the listeners and the control socket it binds) and evfdctl (the
 * control socket it connects to).
 *
 * A socket path is only as trustworthy as the directories above it: whoever may rename or remove entries in
 * any of them can swap the socket, or a directory on the way, for something of their own (a symbolic link
 * to a file root owns, or a server of their own). So the path is walked from / down, one component at a
 * time with O_PATH|O_NOFOLLOW, and every directory on the way must be owned by root or by the caller's
 * effective uid and be writable by neither its group nor others (the rule of systemd's CHASE_SAFE and
 * OpenSSH's safe_path). A sticky directory such as /tmp may be writable by others: there only an entry's
 * owner (and the directory's owner and root) may rename or remove it, so it is safe for entries owned by
 * root or the caller, and for entries still to be created by the caller. A symbolic link on the way is
 * followed, at most SAFEPATH_MAX_LINKS of them, because the directory holding it passed the rule: only a
 * trusted user could have put it there (/var/run -> /run).
 *
 * Everything afterwards happens relative to the directory found: lookups with AT_SYMLINK_NOFOLLOW, unlinkat,
 * connect through /proc/self/fd/N to the inode looked up (falling back to the checked absolute path when /proc
 * is not mounted). The one exception is bind, by the checked absolute path: the kernel keeps the address a
 * socket was bound with and shows it to peers, and no one but root and the caller can change the directories
 * on it (a path too long for sun_path is bound through /proc/self/fd/N).
 */
#ifndef EVFDD_SAFEPATH_H
#define EVFDD_SAFEPATH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#define SAFEPATH_MAX_LINKS 40		/* symbolic links followed on one walk, as the kernel's limit */
#define SAFEPATH_DIR_MODE 0755		/* directories SAFEPATH_MKDIR creates, whatever the umask */

enum {
	/* Create the missing directories on the way, mode SAFEPATH_DIR_MODE exactly (mkdir -p). */
	SAFEPATH_MKDIR = 1 << 0,
	/* The last component may be a symbolic link: follow it (for connecting; binding never follows). */
	SAFEPATH_FOLLOW = 1 << 1,
	/* The directory holding the socket may belong to a uid U other than root and the caller, as a systemd
	 * DynamicUser='s runtime directory does: the caller must then check with safepath_check_peer that the
	 * server runs as U or root before it sends anything. */
	SAFEPATH_PEER_DIR = 1 << 2,
};

struct safepath {
	int dirfd;			/* O_PATH: the directory holding the socket, checked */
	char *name;			/* the socket's name in that directory */
	char *path;			/* the path as given, for messages */
	char *abspath;			/* the same made absolute: the fallback address without /proc */
	char *dir;			/* the directory's own path, links resolved, for messages */
	struct stat dirst;		/* its owner and mode, as checked */
	bool peer_check;		/* SAFEPATH_PEER_DIR: the directory belongs to peer_uid */
	uid_t peer_uid;
};

#define SAFEPATH_INIT { .dirfd = -1 }

/*
 * safepath_open - check the directories of a socket path and open the one that holds the socket
 * @sp: receives the directory and the name; free with safepath_close (also after a failure)
 * @path: absolute, or relative to the working directory; its last component names the socket
 * @flags: SAFEPATH_MKDIR, SAFEPATH_FOLLOW, SAFEPATH_PEER_DIR
 * @err: receives one line saying what is wrong and what to do, when this fails (without the path itself,
 *       which the caller names)
 *
 * The socket itself need not exist. An existing entry in a sticky directory that others may write to must
 * belong to root or the caller (with SAFEPATH_PEER_DIR, also to the directory's owner).
 * Returns 0; -EPERM when a directory (or such an entry) could be changed by another user; -ENOENT when a
 * directory is missing; -ENOTDIR, -ELOOP, -EINVAL (the path ends in a directory), -EAGAIN (a directory was
 * replaced while it was being checked), or another negative errno of the lookups (-EACCES: no search
 * permission). The umask is changed briefly with SAFEPATH_MKDIR (see safepath_bind).
 */
int safepath_open(struct safepath *sp, const char *path, unsigned flags, char *err, size_t errlen);

void safepath_close(struct safepath *sp);

/*
 * safepath_stat - what is at the socket's name now, without following a symbolic link
 * Returns 0 with @st filled, -ENOENT when nothing is there, -EPERM (with @err) when the entry sits in a
 * sticky directory and belongs to another user, or another negative errno. @err may be NULL.
 */
int safepath_stat(const struct safepath *sp, struct stat *st, char *err, size_t errlen);

/*
 * safepath_connect - connect @fd to the socket at @sp
 *
 * Connects to exactly the inode looked up now with O_NOFOLLOW (through /proc/self/fd), so a symbolic link
 * put there meanwhile is never followed. Returns 0 or a negative errno: connect(2)'s (-ECONNREFUSED,
 * -EAGAIN for a non-blocking @fd, -EACCES, ...), -ENOENT, -ENOTSOCK (with @err) when the entry is not a
 * socket, -EPERM (with @err) as for safepath_stat. @err may be NULL.
 */
int safepath_connect(const struct safepath *sp, int fd, char *err, size_t errlen);

/*
 * safepath_bind - bind the Unix stream socket @fd at @sp, giving the file exactly @mode
 * @file_fd: receives an O_PATH descriptor of the socket file created, for safepath_chmod_fd and to
 *           recognise it later (fstat)
 *
 * Binds by the checked absolute path (see above). The socket inode gets @mode (fchmod) before bind, which
 * creates the file with that mode less the umask, and the umask is 0 during bind: the file never has another mode, whatever the process umask (UMask= in a
 * unit), and nothing is changed by name afterwards. The umask is process-wide: call this on a thread at a
 * point where no other thread creates files (evfdd's data plane never does). Returns 0 or a negative errno
 * (-EADDRINUSE: something is at the name).
 */
int safepath_bind(const struct safepath *sp, int fd, mode_t mode, int *file_fd);

/* Remove the socket file at @sp if it is still the inode @st describes (st_dev, st_ino): 0 when removed,
 * -ESTALE when something else is there now (left alone), -ENOENT, or another negative errno. */
int safepath_unlink(const struct safepath *sp, const struct stat *st);

/* "regular file", "directory", "symbolic link", "FIFO", ... for messages about what is at a path. */
const char *safepath_type_name(mode_t mode);

/* Change the mode of the very inode behind the O_PATH descriptor @file_fd (from safepath_bind), whatever
 * its name is now. Returns 0 or a negative errno. */
int safepath_chmod_fd(int file_fd, mode_t mode);

/*
 * safepath_check_peer - with SAFEPATH_PEER_DIR, check the server on the connected socket @fd
 *
 * When the socket's directory belongs to a uid U other than root and the caller (sp->peer_check), the
 * server must run as U or as root (SO_PEERCRED: the credentials of whoever called listen, systemd for an
 * activated socket): anyone else could only be there because U let them, or because U is not who runs the
 * service. Returns 0, or -EPERM with @err saying who runs there; other negative errnos from getsockopt.
 */
int safepath_check_peer(const struct safepath *sp, int fd, char *err, size_t errlen);

#endif
