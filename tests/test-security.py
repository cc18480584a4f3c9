#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a hostile local user can do to evfdd and evfdctl, tried for real: uid 65534 owning a directory on the
way to a socket races evfdd's listener across starts and reloads to get a file of root's chmod'ed, and puts a
fake Varlink server in the control socket's place to answer root's `evfdctl reload`; a FIFO, a device, a
directory or an oversized file put in the configuration's place. Also what must keep working: sockets in
root-owned directories under /tmp (0700 or 0755), through a symbolic link, in a DynamicUser-like runtime
directory, socket modes exact under umask 0077, and a regular file at a listen path named as such.

Needs root (to act as uid 65534); exits 77 without. Run single cases by name: test-security.py case_config."""
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

from evfddtest import EVFDCTL, EVFDD, NOBODY, DaemonLog, free_port, for_nobody, sanitizer_report

# 0755: uid 65534 must reach what is inside; each case makes its own directories below.
TMP = tempfile.mkdtemp(prefix="evfdd-security-")
os.chmod(TMP, 0o755)
OTHER = 65533   # a second unprivileged uid, for a server that is neither root nor the directory's owner
PROCS = []      # every process started (evfdd, attackers, fake servers), killed by pid at the end
ROUNDS = 8


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok " + msg, flush=True)


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def mkdir(path, mode=0o755, uid=0):
    os.mkdir(path)
    os.chmod(path, mode)
    os.chown(path, uid, uid)
    return path


def victim_file(name):
    """A file of root's that no one else may change: mode 0600 in a directory only root can write."""
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write("root's secret\n")
    os.chmod(path, 0o600)
    return path


class Daemon(DaemonLog):
    """evfdd on a configuration file of its own; stdout and stderr go to its log."""

    def __init__(self, conf, wait_ready=True, umask=None):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.write_conf(conf)
        self.log = open(self.path + ".log", "w+")
        self.proc = subprocess.Popen([EVFDD, "-c", self.path], stdout=self.log, stderr=self.log,
                                     preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
        PROCS.append(self.proc)
        self.reloads = 0
        if wait_ready:
            self.wait_log("ready")

    def write_conf(self, conf):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(conf)
        os.rename(tmp, self.path)

    def fail(self, msg):
        fail(msg)

    def wait_log(self, what, timeout=30, start=0):
        DaemonLog.wait_log(self, what, timeout, start)

    def reload(self, expect_ok=True):
        """SIGHUP, and wait for this reload's outcome in the log."""
        start = len(self.text())
        self.reloads += 1
        self.proc.send_signal(signal.SIGHUP)
        self.wait_log("reload %d %s" % (self.reloads, "done" if expect_ok else "failed"), start=start)

    def exited(self, timeout=60):
        """The exit status of a daemon expected to stop on its own (a refused start)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("evfdd did not exit:\n" + self.text())
        if sanitizer_report(self.text()):
            fail("sanitizer report from evfdd:\n" + self.text())
        return rc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.wait_exit()


def as_user(uid, fn, *args, cwd=None):
    """Run fn(*args) in a child process as @uid (no groups), in @cwd if given (entered while still root, as
    systemd enters a service's directories); returns its pid. The child exits when fn returns or raises; it
    never reads the build tree (everything it runs is loaded already)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if cwd:
                os.chdir(cwd)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            fn(*args)
        except BaseException:  # noqa: BLE001 - a child must never return into the test
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    PROCS.append(pid)
    return pid


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    PROCS.remove(pid)


def swapper(sock, victim, report_fd):
    """The attacker: whenever a socket appears at @sock, move it away and put a symbolic link to @victim in
    its place, as fast as possible. Reports each swap with a byte on @report_fd."""
    moved = sock + ".moved"
    while True:
        try:
            if stat.S_ISSOCK(os.lstat(sock).st_mode):
                os.rename(sock, moved)
                os.symlink(victim, sock)
                os.write(report_fd, b"s")
        except OSError:
            pass


def count_swaps(fd):
    n = 0
    while True:
        try:
            n += len(os.read(fd, 4096))
        except BlockingIOError:
            return n


def listen_conf(ctl, sock, mode):
    return ("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\nlog_level = debug\n\n"
            "[u]\nlisten = %s\nsocket_mode = %s\nforward = echo\n" % (ctl, sock, mode))


def echo_ok(addr):
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET)
    s.settimeout(30)
    s.connect(addr)
    s.sendall(b"ping\n")
    got = b""
    while not got.endswith(b"\n"):
        d = s.recv(64)
        if not d:
            break
        got += d
    s.close()
    return got == b"ping\n"


# ---- 1. the symlink race on a listener's mode ------------------------------------------------------------

def case_race_unsafe_dir():
    """uid 65534 owns the listen directory and swaps the socket for a link to a file of root's, in a tight
    loop, across starts and reloads that change socket_mode: evfdd must refuse the directory outright."""
    victim = victim_file("victim-unsafe")
    attack = mkdir(os.path.join(TMP, "attack"), 0o755, NOBODY)
    sock = os.path.join(attack, "s.sock")
    r, w = os.pipe()
    os.set_blocking(r, False)
    attacker = as_user(NOBODY, swapper, sock, victim, w)
    os.close(w)
    refused, swaps, wrong = 0, 0, None
    try:
        for i in range(ROUNDS):
            for leftover in (sock, sock + ".moved"):
                if os.path.lexists(leftover):
                    os.unlink(leftover)
            mode = ("0666", "0660")[i % 2]
            d = Daemon(listen_conf(os.path.join(TMP, "ctl-unsafe-%d" % i), sock, mode), wait_ready=False)
            while "ready" not in d.text() and d.proc.poll() is None:
                time.sleep(0.01)
            if d.proc.poll() is None:
                # Started (the old behaviour): once the attacker has swapped, reloads chmod by name.
                end = time.time() + 30
                while not os.path.islink(sock) and time.time() < end:
                    time.sleep(0.01)
                for m in ("0604", "0666"):
                    d.write_conf(listen_conf(os.path.join(TMP, "ctl-unsafe-%d" % i), sock, m))
                    d.reload()
                d.stop()
            elif d.exited() == 1 and ("the directory %s is owned by uid %d (mode 0755)" % (attack, NOBODY)
                                      in d.text()):
                refused += 1
            else:
                wrong = wrong or d.text()
            swaps += count_swaps(r)
            if mode_of(victim) != 0o600:
                fail("round %d: the victim %s, root's, has mode %04o after evfdd (socket_mode %s) ran in a "
                     "directory uid %d owns (%d swaps so far)" % (i, victim, mode_of(victim), mode, NOBODY,
                                                                 swaps))
    finally:
        kill_pid(attacker)
        os.close(r)
    if wrong:
        fail("evfdd did not refuse %s (owned by uid %d) with a message naming it:\n%s" % (attack, NOBODY, wrong))
    if refused != ROUNDS:
        fail("evfdd started %d times of %d in a directory uid %d owns" % (ROUNDS - refused, ROUNDS, NOBODY))
    ok("a listen directory owned by uid %d is refused at every start, naming it, its owner and mode; the "
       "victim kept 0600 with the attacker swapping in a tight loop" % NOBODY)


def case_race_dir_turns_unsafe():
    """A kept listener whose directory becomes another user's after the bind: the socket is swapped for a
    link to root's file, then a reload changes socket_mode. The mode must go to the socket evfdd bound."""
    victim = victim_file("victim-later")
    later = mkdir(os.path.join(TMP, "later"))
    sock = os.path.join(later, "s.sock")
    ctl = os.path.join(TMP, "ctl-later")
    d = Daemon(listen_conf(ctl, sock, "0660"))
    if mode_of(sock) != 0o660:
        fail("socket %s has mode %04o, not 0660" % (sock, mode_of(sock)))
    os.chown(later, NOBODY, NOBODY)
    r, w = os.pipe()
    os.set_blocking(r, False)
    attacker = as_user(NOBODY, swapper, sock, victim, w)
    os.close(w)
    try:
        end = time.time() + 30
        while not os.path.islink(sock):
            if time.time() > end:
                fail("the attacker (uid %d) did not manage to swap %s" % (NOBODY, sock))
            time.sleep(0.01)
    finally:
        kill_pid(attacker)
        os.close(r)
    d.write_conf(listen_conf(ctl, sock, "0666"))
    d.reload()
    if mode_of(victim) != 0o600:
        fail("a reload to socket_mode 0666 changed %s, root's, to %04o through the link uid %d put at %s"
             % (victim, mode_of(victim), NOBODY, sock))
    if mode_of(sock + ".moved") != 0o666:
        fail("the socket evfdd bound (moved to %s.moved) has mode %04o, not the new 0666"
             % (sock, mode_of(sock + ".moved")))
    if not echo_ok(sock + ".moved"):
        fail("the kept listener stopped serving")
    d.stop()
    ok("socket_mode changed by a reload goes to the inode evfdd bound (0666 on the moved socket), never "
       "through the link uid %d put at the path" % NOBODY)


def case_race_safe_dir():
    """In a directory only root can change, the attacker's tight loop gets nowhere: across starts and
    reloads changing socket_mode, the victim never changes and the socket has the configured mode."""
    victim = victim_file("victim-safe")
    safe = mkdir(os.path.join(TMP, "safe"))
    sock = os.path.join(safe, "s.sock")
    ctl = os.path.join(TMP, "ctl-safe")
    r, w = os.pipe()
    os.set_blocking(r, False)
    attacker = as_user(NOBODY, swapper, sock, victim, w)
    os.close(w)
    try:
        for i in range(ROUNDS // 2):
            d = Daemon(listen_conf(ctl, sock, "0660"))
            for m in ("0666", "0600", "0644"):
                d.write_conf(listen_conf(ctl, sock, m))
                d.reload()
                if mode_of(sock) != int(m, 8):
                    fail("socket_mode %s after a reload, but %s has %04o" % (m, sock, mode_of(sock)))
            if not echo_ok(sock):
                fail("the listener does not serve")
            d.stop()
            if mode_of(victim) != 0o600:
                fail("the victim changed to %04o" % mode_of(victim))
        if count_swaps(r):
            fail("uid %d swapped a socket in a directory only root may change" % NOBODY)
    finally:
        kill_pid(attacker)
        os.close(r)
    ok("a root-owned 0755 listen directory: the attacker never swaps, modes follow socket_mode on reloads, "
       "the victim keeps 0600")


def case_sticky_dir():
    """A sticky directory writable by all (/tmp's kind) is fine for a socket evfdd creates, but not when
    another user's entry already sits at the name: that user could swap it at any time."""
    victim = victim_file("victim-sticky")
    sticky = mkdir(os.path.join(TMP, "sticky"), 0o1777)
    sock = os.path.join(sticky, "s.sock")
    ctl = os.path.join(TMP, "ctl-sticky")
    d = Daemon(listen_conf(ctl, sock, "0660"))
    if mode_of(sock) != 0o660 or not echo_ok(sock):
        fail("a listener in a sticky directory: mode %04o" % mode_of(sock))
    d.stop()
    os.unlink(sock)
    pid = as_user(NOBODY, os.symlink, victim, sock)
    os.waitpid(pid, 0)
    PROCS.remove(pid)
    d = Daemon(listen_conf(ctl, sock, "0666"), wait_ready=False)
    want = "%s belongs to uid %d, who may replace it in the sticky directory %s" % (sock, NOBODY, sticky)
    if d.exited() != 1 or want not in d.text():
        fail("evfdd on another user's link in a sticky directory: expected exit 1 and '%s':\n%s"
             % (want, d.text()))
    if mode_of(victim) != 0o600 or not os.path.islink(sock):
        fail("the victim (%04o) or uid %d's link was touched" % (mode_of(victim), NOBODY))
    ok("sticky directory: a socket of evfdd's own is fine there; another user's entry at the name is refused, "
       "naming its owner and the directory")


def case_regular_file():
    """A regular file at a listen path is named as such, never removed, and not called 'address in use'."""
    sock = os.path.join(mkdir(os.path.join(TMP, "regular")), "s.sock")
    with open(sock, "w") as f:
        f.write("data\n")
    d = Daemon(listen_conf(os.path.join(TMP, "ctl-regular"), sock, "0666"), wait_ready=False)
    if d.exited() != 1:
        fail("evfdd did not exit 1 on a regular file at its listen path:\n" + d.text())
    text = d.text()
    want = "%s is a regular file, not a socket; evfdd will not remove it" % sock
    if want not in text or "Address already in use" in text:
        fail("expected '%s' and no 'Address already in use':\n%s" % (want, text))
    with open(sock) as f:
        if f.read() != "data\n":
            fail("the regular file changed")
    ok("a regular file at a listen path: named, left alone, not reported as 'Address already in use'")


def case_umask():
    """Under umask 0077 (the unit's UMask=), sockets come out exactly as configured, and so does the control
    socket (0660) and the directory evfdd makes for it (0755)."""
    base = mkdir(os.path.join(TMP, "umask"))
    a, b = os.path.join(base, "a.sock"), os.path.join(base, "b.sock")
    ctl = os.path.join(base, "made", "control")
    conf = ("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\n\n"
            "[a]\nlisten = %s\nsocket_mode = 0666\nforward = echo\n\n"
            "[b]\nlisten = %s\nsocket_mode = %s\nforward = echo\n")
    d = Daemon(conf % (ctl, a, b, "0660"), umask=0o077)
    got = (mode_of(a), mode_of(b), mode_of(ctl), mode_of(os.path.dirname(ctl)))
    if got != (0o666, 0o660, 0o660, 0o755):
        fail("under umask 0077: modes %s, expected 0666 0660 0660 (control) 0755 (its directory)"
             % " ".join("%04o" % m for m in got))
    d.write_conf(conf % (ctl, a, b, "0606"))
    d.reload()
    if mode_of(b) != 0o606:
        fail("after a reload to 0606 under umask 0077: %04o" % mode_of(b))
    d.stop()
    ok("umask 0077: listeners 0666 and 0660, control socket 0660 in a new 0755 directory, 0606 after a reload")


# ---- 2. evfdctl and the control socket's directories -----------------------------------------------------

class FakeServer:
    """A Varlink server run as @uid at @path that answers every call with success and records everything
    each connection sent."""

    def __init__(self, path, uid, reply=None):
        self.path = path
        self.reply = reply or {"parameters": {"reload": {"ok": True, "summary": "fake", "errors": [],
                                                         "time_usec": 0}, "pid": 1}}
        ready_r, ready_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        self.pid = as_user(uid, self.serve, ready_w, rep_w, cwd=os.path.dirname(path))
        os.close(ready_w)
        os.close(rep_w)
        if os.read(ready_r, 1) != b"r":
            fail("the fake server (uid %d) did not start at %s" % (uid, path))
        os.close(ready_r)

    def serve(self, ready_w, rep_w):
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.basename(self.path))   # relative: the directories above may be closed to @uid
        s.listen(8)
        os.write(ready_w, b"r")
        while True:
            c, _ = s.accept()
            data = b""
            while True:
                d = c.recv(65536)
                if not d:
                    break
                data += d
                if data.endswith(b"\0"):
                    c.sendall(json.dumps(self.reply).encode() + b"\0")
            c.close()
            os.write(rep_w, json.dumps(data.decode(errors="replace")).encode() + b"\n")

    def received(self, sentinel_path=None):
        """What each connection sent, up to a sentinel connection made now by root (through
        @sentinel_path, default the server's path): connections are served in order."""
        s = socket.socket(socket.AF_UNIX)
        s.connect(sentinel_path or self.path)
        s.sendall(b"SENTINEL")
        s.close()
        got, buf = [], b""
        while True:
            buf += os.read(self.rep_r, 65536)
            lines = buf.split(b"\n")
            buf = lines[-1]
            got += [json.loads(x) for x in lines[:-1]]
            if got and got[-1] == "SENTINEL":
                return got[:-1]

    def stop(self):
        kill_pid(self.pid)
        os.close(self.rep_r)


def evfdctl(args, env=None, prog=EVFDCTL, user=None):
    e = dict(os.environ)
    for v in ("EVFDCTL_SOCKET", "RUNTIME_DIRECTORY"):
        e.pop(v, None)
    e.update(env or {})
    kw = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    out = subprocess.run([prog] + args, capture_output=True, text=True, env=e, timeout=150, **kw)
    if sanitizer_report(out.stderr):
        fail("sanitizer report from evfdctl:\n" + out.stderr)
    return out


def case_impersonation():
    """uid 65534 owns a directory above the control socket: it moves evfdd's directory aside and puts a fake
    server answering Reload with success in its place. Root's evfdctl must refuse, name the directory, and
    send nothing, whether the path comes from -s, $EVFDCTL_SOCKET or $RUNTIME_DIRECTORY."""
    imp = mkdir(os.path.join(TMP, "imp"))
    run = mkdir(os.path.join(imp, "run"))
    ctl = os.path.join(run, "control")
    d = Daemon(listen_conf(ctl, os.path.join(TMP, "imp.sock"), "0666"))
    out = evfdctl(["-s", ctl, "status"])
    if out.returncode != 0 or "pid:" not in out.stdout:
        fail("evfdctl status on the real daemon: %d %r" % (out.returncode, out.stderr))
    os.chown(imp, NOBODY, NOBODY)   # the directory above becomes the attacker's (a home, a shared tree)

    def replace():
        os.rename(run, run + ".real")
        os.mkdir(run, 0o755)
    pid = as_user(NOBODY, replace)
    if os.waitpid(pid, 0)[1] != 0:
        fail("uid %d could not move %s aside" % (NOBODY, run))
    PROCS.remove(pid)
    fake = FakeServer(ctl, NOBODY)
    try:
        want = "the directory %s is owned by uid %d (mode 0755)" % (imp, NOBODY)
        for how, args, env in (("-s", ["-s", ctl, "reload"], None),
                               ("$EVFDCTL_SOCKET", ["reload"], {"EVFDCTL_SOCKET": ctl}),
                               ("$RUNTIME_DIRECTORY", ["reload"], {"RUNTIME_DIRECTORY": run})):
            out = evfdctl(args, env)
            if out.returncode != 2 or want not in out.stderr or "refusing" not in out.stderr or \
                    "reloaded" in out.stdout:
                fail("root's evfdctl reload through %s on a path under a directory uid %d owns: exit %d, "
                     "stdout %r, stderr %r (expected exit 2 naming '%s')" % (how, NOBODY, out.returncode,
                                                                          out.stdout, out.stderr, want))
        got = fake.received()
        if got:
            fail("the fake server received %r from root's evfdctl" % got)
    finally:
        fake.stop()
    d.stop()
    ok("impersonation: uid %d owning a directory above the control socket; root's evfdctl refuses (-s, "
       "$EVFDCTL_SOCKET, $RUNTIME_DIRECTORY), exit 2, naming the directory; the fake server got nothing"
       % NOBODY)


def case_peer_check():
    """The socket's own directory may belong to the uid the server runs as (a DynamicUser= runtime directory
    under a root-only /run/private): accepted when the server runs as that uid, refused after connecting and
    before sending anything when it runs as someone else."""
    private = mkdir(os.path.join(TMP, "private"), 0o700)
    rundir = mkdir(os.path.join(private, "evfdd"), 0o755, NOBODY)
    ctl = os.path.join(rundir, "control")
    fake = FakeServer(ctl, NOBODY)
    try:
        # /run/evfdd -> private/evfdd, as systemd leaves it: a link in a safe directory is followed.
        link = os.path.join(TMP, "rt")
        os.symlink("private/evfdd", link)
        out = evfdctl(["status"], {"RUNTIME_DIRECTORY": link})
        if out.returncode != 0 or "pid:" not in out.stdout:
            fail("evfdctl on a socket in uid %d's directory, served by uid %d: %d %r"
                 % (NOBODY, NOBODY, out.returncode, out.stderr))
        if len(fake.received()) != 1:
            fail("the server as the directory's owner did not get exactly one call")
    finally:
        fake.stop()
    # Another uid's server in that directory (the file moved there by root, as uid 65534 could let happen).
    other = mkdir(os.path.join(TMP, "other"), 0o755, OTHER)
    fake = FakeServer(os.path.join(other, "control"), OTHER)
    try:
        os.unlink(ctl)
        os.rename(os.path.join(other, "control"), ctl)
        out = evfdctl(["-s", ctl, "reload"])
        want = "the server there runs as uid %d" % OTHER
        if out.returncode != 2 or want not in out.stderr or ("the directory %s is owned by uid %d" % (rundir, NOBODY)
                                                              not in out.stderr):
            fail("evfdctl with uid %d's server in uid %d's directory: exit %d, %r" % (OTHER, NOBODY,
                                                                                   out.returncode, out.stderr))
        got = fake.received(ctl)
        if got != [""]:
            fail("the server run by uid %d should have seen one connection that sent nothing, got %r"
                 % (OTHER, got))
    finally:
        fake.stop()
    ok("a socket directory owned by the server's uid (DynamicUser-like, behind a root-only 0700 directory and "
       "a link): trusted when the server runs as that uid, refused before sending when it runs as uid %d"
       % OTHER)


def case_safe_paths():
    """Root-owned directories under /tmp, 0700 and 0755, work with the real evfdd and evfdctl; so does the
    invoking user's own directory for an unprivileged evfdctl; group- or world-writable ones are refused."""
    for mode in (0o700, 0o755):
        ctl = os.path.join(mkdir(os.path.join(TMP, "root%o" % mode), mode), "control")
        d = Daemon(listen_conf(ctl, os.path.join(TMP, "safe%o.sock" % mode), "0666"))
        out = evfdctl(["-s", ctl, "status"])
        if out.returncode != 0 or "pid:" not in out.stdout or mode_of(ctl) != 0o660:
            fail("evfdctl on a control socket in a root-owned %04o directory: %d %r" % (mode, out.returncode,
                                                                                      out.stderr))
        if mode == 0o755:
            os.chmod(os.path.dirname(ctl), 0o775)
            out = evfdctl(["-s", ctl, "status"])
            want = "the directory %s (owner uid 0, mode 0775) is writable by its group" % os.path.dirname(ctl)
            if out.returncode != 2 or want not in out.stderr:
                fail("evfdctl on a group-writable directory: %d %r" % (out.returncode, out.stderr))
            os.chmod(os.path.dirname(ctl), 0o755)
        d.stop()
    # The invoking user's own directory, for an unprivileged evfdctl (a copy uid 65534 can run).
    mine = mkdir(os.path.join(TMP, "mine"), 0o700, NOBODY)
    fake = FakeServer(os.path.join(mine, "control"), NOBODY)
    try:
        out = evfdctl(["-s", os.path.join(mine, "control"), "status"], prog=for_nobody(EVFDCTL), user=NOBODY)
        if out.returncode != 0 or "pid:" not in out.stdout:
            fail("uid %d's evfdctl on a socket in its own directory: %d %r" % (NOBODY, out.returncode, out.stderr))
    finally:
        fake.stop()
    ok("control sockets in root-owned 0700 and 0755 directories under /tmp work; a 0775 one is refused; "
       "an unprivileged evfdctl trusts its own user's directory")


def case_control_dir_unsafe():
    """evfdd itself refuses a control path under a directory another user owns, naming it."""
    theirs = mkdir(os.path.join(TMP, "theirs"), 0o755, NOBODY)
    ctl = os.path.join(theirs, "sub", "control")
    d = Daemon(listen_conf(ctl, os.path.join(TMP, "theirs.sock"), "0666"), wait_ready=False)
    want = "the directory %s is owned by uid %d (mode 0755)" % (theirs, NOBODY)
    if d.exited() != 1 or want not in d.text():
        fail("evfdd with its control socket under uid %d's directory: expected exit 1 and '%s':\n%s"
             % (NOBODY, want, d.text()))
    if os.path.exists(os.path.join(theirs, "sub")):
        fail("evfdd created a directory inside uid %d's directory" % NOBODY)
    ok("evfdd refuses a control path under a directory uid %d owns, naming it, and creates nothing there"
       % NOBODY)


# ---- 3. the configuration file must be a regular file ----------------------------------------------------

def make_fifo(path):
    os.mkfifo(path, 0o644)


def make_zero_link(path):
    os.symlink("/dev/zero", path)


def make_chardev(path):
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))   # /dev/null's numbers


def make_dir(path):
    os.mkdir(path, 0o755)


def make_big(path):
    with open(path, "w") as f:
        f.write("[echo]\nforward = echo\n" + "\n" * (1 << 20))


KINDS = (("FIFO", make_fifo, "a FIFO (named pipe), not a regular file"),
         ("symlink to /dev/zero", make_zero_link, "a character device, not a regular file"),
         ("char device", make_chardev, "a character device, not a regular file"),
         ("directory", make_dir, "a directory, not a regular file"),
         ("oversize file", make_big, "file too large (1048598 bytes, at most 1048576)"))


def put_in_place(make, path):
    """Build the thing next to @path and rename it over @path, as an editor or an attacker would."""
    tmp = path + ".new"
    make(tmp)
    # rename(2) does not put a directory in a file's place or the other way round: remove the old first.
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.isdir(tmp) and not os.path.islink(tmp):
        os.unlink(path)
    os.rename(tmp, path)


def case_config_startup():
    """At start-up and with -n: every kind of non-regular file, and an oversized one, is an error naming the
    path and what it is; nothing blocks."""
    base = mkdir(os.path.join(TMP, "conf"))
    for name, make, want in KINDS:
        path = os.path.join(base, "".join(c if c.isalnum() else "-" for c in name) + ".conf")
        try:
            make(path)
        except PermissionError:
            print("skip %s: cannot create one here" % name, flush=True)
            continue
        for args in (["-n", "-c", path], ["-c", path]):
            try:
                out = subprocess.run([EVFDD] + args, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                fail("evfdd %s on a %s did not return: it blocks" % (" ".join(args), name))
            if out.returncode != 1 or ("%s: %s" % (path, want)) not in out.stderr or sanitizer_report(out.stderr):
                fail("evfdd %s on a %s: exit %d, expected 1 and '%s: %s':\n%s"
                     % (" ".join(args), name, out.returncode, path, want, out.stderr))
    link = os.path.join(base, "link.conf")
    with open(os.path.join(base, "real.conf"), "w") as f:
        f.write("[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % free_port())
    os.symlink("real.conf", link)
    out = subprocess.run([EVFDD, "-n", "-c", link], capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or "configuration OK" not in out.stdout:
        fail("evfdd -n on a symbolic link to a regular file: %d %r" % (out.returncode, out.stderr))
    ok("start-up and -n: FIFO, device, directory and oversized file refused by name and type, none blocks; "
       "a symbolic link to a regular file is fine")


def case_config_reload():
    """The same swapped in before a SIGHUP: the reload fails naming the path (evfdctl status shows it),
    evfdd keeps serving, evfdctl answers, and SIGTERM still stops it."""
    ctl = os.path.join(TMP, "ctl-reload")
    port = free_port()
    good = ("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
            % (ctl, port))
    d = Daemon(good)
    for name, make, want in KINDS:
        try:
            put_in_place(make, d.path)
        except PermissionError:
            print("skip %s: cannot create one here" % name, flush=True)
            continue
        d.reload(expect_ok=False)
        out = evfdctl(["-s", ctl, "--json", "status"])
        if out.returncode != 0:
            fail("evfdctl status after a reload from a %s: %d %r" % (name, out.returncode, out.stderr))
        last = json.loads(out.stdout)["last_reload"]
        if last["ok"] is not False or not any(("%s: %s" % (d.path, want)) in e for e in last["errors"]):
            fail("last_reload after a %s at %s: %r (expected '%s')" % (name, d.path, last, want))
        if not echo_ok(("127.0.0.1", port)):
            fail("evfdd stopped serving after a reload from a %s" % name)
        put_in_place(lambda p: open(p, "w").write(good), d.path)
        d.reload()
    # The last one stays a FIFO: SIGTERM must still stop evfdd after a reload that met it.
    put_in_place(make_fifo, d.path)
    d.reload(expect_ok=False)
    d.stop()
    ok("reload from a FIFO, a device, a directory, an oversized file: fails naming the path and the type "
       "(evfdctl status), evfdd serves and answers on, and SIGTERM stops it")


CASES = [case_race_unsafe_dir, case_race_dir_turns_unsafe, case_race_safe_dir, case_sticky_dir,
         case_regular_file, case_umask, case_impersonation, case_peer_check, case_safe_paths,
         case_control_dir_unsafe, case_config_startup, case_config_reload]


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root, to run the attacker as uid %d" % NOBODY, flush=True)
        sys.exit(77)
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    random.seed(3)
    names = sys.argv[1:]
    unknown = [n for n in names if n not in {c.__name__ for c in CASES}]
    if unknown:
        fail("no such case: %s (cases: %s)" % (", ".join(unknown), ", ".join(c.__name__ for c in CASES)))
    try:
        for case in CASES:
            if not names or case.__name__ in names:
                case()
    finally:
        for p in PROCS:
            if isinstance(p, int):
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            elif p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
