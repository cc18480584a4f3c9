#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdd's upgrade in place end to end: `evfdctl upgrade` (or SIGUSR2) re-executes the binary at the path
evfdd was started from, same PID, and every established connection carries on. Each case starts evfdd from
a copy of the binary in a private 0700 directory, replaced (rename) before each upgrade by the other of two
builds of the same code (daemon/evfdd and daemon/evfdd-alt, whose version says "+alt"), keeps connections
streaming through it, checks every byte that comes back and what evfdd counts and says about the upgrade.
A damaged state is fed to a fresh start through the environment an upgrade sets (EVFDD_CARRY_FDS).
`python3 test-upgrade.py CASE...` runs only the named cases (e.g. case_idle_timer)."""
import ctypes
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import evfddload
from evfddload import (CLIENTS, PATTERN, PATTERN_LEN, PTRACE_DETACH, PTRACE_SEIZE, RECV_MAX, SLOW, WALL, Churn, Echo,
                       Frozen, Load, check_round_trip, check_sanitizers, connect, expect_counters, raise_nofile,
                       recv_all, recv_exact, wait_topology)
from evfddtest import (EVFDCTL, EVFDD, SCALE, TOP_BUILDDIR, Busy, DaemonCtl, closed_by_peer, free_port,
                       metric_samples, run_cases)

TMP = tempfile.mkdtemp(prefix="evfdd-upgrade-")   # 0700: evfdd executes only what sits in a safe directory
DAEMONS = []


def fail(msg):
    """End the current case (main() goes on with the next one)."""
    print("FAIL: " + msg, flush=True)
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
    for c in CLIENTS:
        c.abandon()
    sys.exit(1)


evfddload.use(fail)


def skip(msg):
    print("SKIP: " + msg, flush=True)
    shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(77)


# ---- the two builds -----------------------------------------------------------------------------------

def real_program(path):
    """The program itself behind @path: libtool's wrapper script runs DIR/.libs/NAME (with the build's
    libraries on LD_LIBRARY_PATH, see DAEMON_ENV); without a .libs (a static build), the file itself."""
    d, name = os.path.split(path)
    inner = os.path.join(d, ".libs", name)
    return inner if os.path.isfile(inner) else path


BUILDS = {"main": real_program(EVFDD), "alt": real_program(EVFDD + "-alt")}
OTHER = {"main": "alt", "alt": "main"}
VERSIONS = {}
DAEMON_ENV = {}
_libs = os.path.abspath(os.path.join(TOP_BUILDDIR, "lib", ".libs"))
if os.path.isdir(_libs):
    DAEMON_ENV["LD_LIBRARY_PATH"] = _libs + (":" + os.environ["LD_LIBRARY_PATH"]
                                             if os.environ.get("LD_LIBRARY_PATH") else "")


def ensure_tools():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    for name, prog in BUILDS.items():
        if not os.access(prog, os.X_OK):
            fail("%s not built (make daemon/evfdd-alt; make check builds it)" % prog)
        env = dict(os.environ)
        env.update(DAEMON_ENV)
        out = subprocess.run([prog, "-V"], capture_output=True, text=True, env=env)
        m = re.match(r"evfdd (\S+)$", out.stdout.strip())
        if out.returncode != 0 or not m:
            fail("%s -V: exit %d, %r %r" % (prog, out.returncode, out.stdout, out.stderr))
        VERSIONS[name] = m.group(1)
    if VERSIONS["main"] == VERSIONS["alt"]:
        fail("%s and %s both say they are evfdd %s: the alternate build lacks its suffix"
             % (BUILDS["main"], BUILDS["alt"], VERSIONS["main"]))
    # evfdd executes only a binary that nobody but root and its own user can change, down every directory
    # from /: a temporary directory elsewhere (a group-writable TMPDIR) cannot host the test.
    uid = os.geteuid()
    d = os.path.dirname(TMP)
    while True:
        st = os.stat(d)
        if st.st_uid not in (0, uid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            skip("%s (mode %04o, uid %d) is not a safe place for a binary evfdd would execute; set TMPDIR"
                 % (d, st.st_mode & 0o7777, st.st_uid))
        if d == "/":
            break
        d = os.path.dirname(d)


# ---- evfdd ----------------------------------------------------------------------------------------------

UPGRADED = re.compile(r"upgraded to evfdd (\S+) \(pid (\d+)\): (\d+) connections? carried over in ([0-9.]+) ms")


class Daemon(DaemonCtl):
    """evfdd started as BINDIR/evfdd -c CONF from a private 0700 directory, on a configuration file the test
    rewrites. upgrade() puts the other build at that path first, so the two alternate."""

    slow = SLOW

    def __init__(self, conf, env=None, build="main", wait_ready=True, pass_fds=()):
        self.bindir = tempfile.mkdtemp(prefix="bin-", dir=TMP)
        self.exe = os.path.join(self.bindir, "evfdd")
        self.install(build)
        self.build = build          # what the running image is
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.write(conf)
        self.log = open(self.path + ".log", "w+")
        self.control = None
        for line in conf.splitlines():
            if line.replace(" ", "").startswith("control="):
                self.control = line.split("=", 1)[1].strip()
        full_env = dict(os.environ)
        full_env.update(DAEMON_ENV)
        full_env.update(env or {})
        self.proc = subprocess.Popen([self.exe, "-c", self.path], stderr=self.log, stdout=self.log, env=full_env,
                                     pass_fds=pass_fds)
        DAEMONS.append(self)
        if wait_ready:
            self.wait_log("ready")

    def install(self, build):
        """Put @build at the path evfdd executes, as a package manager would (a new file renamed over)."""
        tmp = os.path.join(self.bindir, ".new")
        shutil.copyfile(BUILDS[build], tmp)
        os.chmod(tmp, 0o755)
        os.rename(tmp, self.exe)

    def install_text(self, text, mode=0o755):
        tmp = os.path.join(self.bindir, ".new")
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, self.exe)

    def fail(self, msg):
        fail(msg)

    def ctl_bg(self, *args):
        """evfdctl started and left running: communicate() later."""
        return subprocess.Popen([EVFDCTL, "-s", self.control] + list(args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def json(self, what, timeout=30):
        """evfdctl --json @what; retried for a while, since between two images nobody answers."""
        end = time.time() + timeout * SLOW
        while True:
            out = self.ctl("--json", what)
            if out.returncode == 0:
                try:
                    return json.loads(out.stdout)
                except ValueError as e:
                    fail("evfdctl --json %s printed no JSON (%s): %r" % (what, e, out.stdout))
            if self.proc.poll() is not None:
                fail("evfdd exited with %d:\n%s" % (self.proc.returncode, self.text()[-6000:]))
            if time.time() > end:
                fail("evfdctl --json %s: exit %d, %r\nevfdd's log:\n%s" % (what, out.returncode, out.stderr,
                                                                          self.text()[-6000:]))
            time.sleep(0.05)

    def wait_status(self, pred, what, timeout=60):
        end = time.time() + timeout * SLOW
        while True:
            st = self.status()
            if st["state"] == "running" and pred(st):
                return st
            if time.time() > end:
                fail("%s: not within %d s; status %s\n%s" % (what, timeout * SLOW, st, self.text()[-6000:]))
            time.sleep(0.02)

    def check_upgraded(self, out, before, to, what):
        """evfdctl upgrade's output @out for an upgrade from the running build to @to, the status @before it:
        exit 0, the carried count, one more upgrade counted, from_version the old image's. Returns (carried,
        status)."""
        if out.returncode != 0:
            fail("%s: evfdctl upgrade exit %d, stdout %r, stderr %r\nevfdd's log:\n%s"
                 % (what, out.returncode, out.stdout, out.stderr, self.text()[-6000:]))
        m = UPGRADED.search(out.stdout)
        if not m:
            fail("%s: evfdctl upgrade said %r" % (what, out.stdout))
        if int(m.group(2)) != self.proc.pid:
            fail("%s: upgraded to pid %s, evfdd is pid %d" % (what, m.group(2), self.proc.pid))
        carried = int(m.group(3))
        st = self.status()
        last = st.get("last_upgrade") or {}
        want = {"kind": "upgrade", "from_version": VERSIONS[self.build], "fallback": "", "lost": 0,
                "connections": carried}
        got = {k: last.get(k) for k in want}
        if st["upgrades"] != before["upgrades"] + 1 or got != want:
            fail("%s: status after the upgrade: upgrades %d (before %d), last_upgrade %s; expected %s"
                 % (what, st["upgrades"], before["upgrades"], last, want))
        if st["pid"] != self.proc.pid:
            fail("%s: status says pid %d, evfdd is pid %d" % (what, st["pid"], self.proc.pid))
        self.build = to
        return carried, st

    def upgrade(self, what, to=None, before=None, timeout=120):
        """Put the other build (or @to) at the path, evfdctl upgrade, check; returns (carried, status)."""
        to = to or OTHER[self.build]
        svcs = self.services()
        before = before or self.status()
        at = len(self.text())
        self.install(to)
        out = self.ctl("upgrade", timeout=timeout)
        carried, st = self.check_upgraded(out, before, to, what)
        # The new image is the build put there (its start-up line names its version).
        self.wait_log("evfdd %s ready" % VERSIONS[to], start=at)
        # Every service kept carries its counters on from where the old image left them.
        for name, now in self.services().items():
            was = svcs.get(name)
            if was and any(now[k] < was[k] for k in ("total", "closed", "bytes_up", "bytes_down")):
                fail("%s: [%s]'s counters went back: before %s, after %s" % (what, name, was, now))
        return carried, st

    def refused(self, what, needle):
        """evfdctl upgrade must be refused (exit 1) with @needle in the reason, in the log too, and evfdd
        must carry on as it was: same image, same count."""
        before = self.status()
        at = len(self.text())
        out = self.ctl("upgrade", timeout=60)
        err = out.stderr
        if (out.returncode != 1 or "upgrade failed" not in err or not ("UpgradeRefused" in err or "refused" in err)
                or needle not in err):
            fail("%s: evfdctl upgrade: exit %d, stdout %r, stderr %r; expected exit 1, refused, with %r"
                 % (what, out.returncode, out.stdout, err, needle))
        self.wait_log("upgrade refused: ", start=at)
        text = self.text()[at:]
        line = next(ln for ln in text.splitlines() if "upgrade refused: " in ln)
        if needle not in line:
            fail("%s: the log's refusal does not say %r: %s" % (what, needle, line))
        if " ready" in text:
            fail("%s: a refused upgrade started a new image:\n%s" % (what, text))
        st = self.status()
        if st["upgrades"] != before["upgrades"] or st["uptime_usec"] < before["uptime_usec"]:
            fail("%s: a refused upgrade changed the image: status before %s, after %s" % (what, before, st))
        return err


# ---- what the clients saw -------------------------------------------------------------------------------

def expect_clean(d, names, what):
    """Nothing abnormal counted so far for services @names: no end other than a clean close, no refusal."""
    svcs = d.services()
    for name in names:
        s = svcs[name]
        bad = {k: v for k, v in s["ends"].items() if v}
        if bad or s["refused"] or s["connect_errors"] or s["aborted"]:
            fail("%s: [%s] counted ends %s, refused %d, connect_errors %d, aborted %d; all should be 0"
                 % (what, name, bad, s["refused"], s["connect_errors"], s["aborted"]))


# ---- loops and rings ------------------------------------------------------------------------------------

# ---- a worker thread, to freeze (Frozen) and hold a reload or an upgrade half-way -----------------------

def worker_tid(d):
    return d.json("loops")["loops"][0]["tid"]


def wait_state(d, state, what, timeout=30):
    end = time.time() + timeout * SLOW
    while True:
        st = d.status()
        if st["state"] == state:
            return st
        if time.time() > end:
            fail("%s: evfdd never %s: %s" % (what, state, st))
        time.sleep(0.01)


# ---- the cases --------------------------------------------------------------------------------------------

def stream_conf(ctl, ports, usock, pyport, workers=2, rings=4, extra=""):
    echo, fwd, pyfwd = ports
    return ("[evfdd]\nworkers = %d\nrings = %d\ncontrol = %s\nshutdown_timeout = 10s\n\n"
            "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n\n"
            "[uecho]\nlisten = %s\nforward = echo\n\n"
            "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n\n"
            "[pyfwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n%s"
            % (workers, rings, ctl, echo, usock, fwd, echo, pyfwd, pyport, extra))


class Setup:
    """The usual services: echo (TCP), uecho (Unix), fwd (to echo), pyfwd (to a Python echo)."""

    def __init__(self, tag):
        self.py = Echo()
        self.ports = (free_port(), free_port(), free_port())
        self.usock = os.path.join(TMP, "%s-uecho.sock" % tag)
        self.ctl = os.path.join(TMP, "%s-ctl.sock" % tag)
        self.addrs = [("127.0.0.1", self.ports[0]), self.usock, ("127.0.0.1", self.ports[1]),
                      ("127.0.0.1", self.ports[2])]

    def conf(self, workers=2, rings=4, extra=""):
        return stream_conf(self.ctl, self.ports, self.usock, self.py.port, workers, rings, extra)

    def per_service(self, opened):
        echo, uecho, fwd, pyfwd = self.addrs
        return {"echo": opened.get(echo, 0) + opened.get(fwd, 0), "uecho": opened.get(uecho, 0),
                "fwd": opened.get(fwd, 0), "pyfwd": opened.get(pyfwd, 0)}

    def close(self):
        self.py.close()


def merge_opened(*counts):
    out = {}
    for c in counts:
        for a, n in c.items():
            out[a] = out.get(a, 0) + n
    return out


def case_upgrade_streams():
    """The headline: 200 streams (TCP and Unix, evfdd's echo directly, through a forward to it, and through a
    forward to a Python echo) and a client opening connections without pause go through evfdd while it
    upgrades 20 times in a row, alternating between the two builds, with one busy process per CPU competing
    for time. Every upgrade carries every connection over; no client sees a reset, an empty EOF or a wrong,
    lost or duplicated byte; evfdd's counters carry on and agree with what the clients opened."""
    nconns = 200
    upgrades = 20 if SCALE == 1 else 10
    raise_nofile(8 * nconns + 1024)
    s = Setup("streams")
    d = Daemon(s.conf())
    busy = Busy()
    froms, pauses = [], []
    try:
        load = Load(s.addrs, nconns)
        churn = Churn(s.addrs, extra=4000)
        load.wait_progress("start")
        # Each stream through a forward to evfdd's echo is two connections to evfdd: its own and the forward's.
        base = nconns + load.conns_per_addr()[s.addrs[2]]
        for k in range(upgrades):
            what = "upgrade %d of %d (%s -> %s)" % (k + 1, upgrades, d.build, OTHER[d.build])
            carried, st = d.upgrade(what)
            froms.append(st["last_upgrade"]["from_version"])
            pauses.append(st["last_upgrade"]["pause_usec"] / 1000.0)
            # The churn client has a connection or two under way besides (and its forward's).
            if not base <= carried <= base + 8:
                fail("%s: %d connections carried over; the streams alone are %d" % (what, carried, base))
            load.wait_progress(what)
            churn.check(what)
            expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), what)
        round_trips = churn.finish("upgrades under load")
        total = load.finish("upgrades under load")
    finally:
        busy.stop()
    kinds = load.kinds()
    if any(kinds.values()):
        fail("the streams saw %s" % kinds)
    st = d.status()
    if st["upgrades"] != upgrades:
        fail("status counts %d upgrades, %d were done" % (st["upgrades"], upgrades))
    want = [VERSIONS["main" if k % 2 == 0 else "alt"] for k in range(upgrades)]
    if froms != want:
        fail("last_upgrade.from_version went %s, expected %s" % (froms, want))
    expect_counters(d, s.per_service(merge_opened(load.conns_per_addr(), churn.opened)), "after the upgrades")
    d.stop()
    s.close()
    if "all connections finished" not in d.text():
        fail("no graceful-stop message:\n" + d.text()[-4000:])
    print("ok %d upgrades alternating %s and %s under load with %d busy processes: %d streams (TCP and Unix, "
          "echo and forwards), %d bytes each way all checked, %d churn round trips; no reset, no empty EOF; "
          "counters carried over and agree with the clients; pause %.1f-%.1f ms"
          % (upgrades, VERSIONS["main"], VERSIONS["alt"], len(busy.procs), nconns, total, round_trips,
             min(pauses), max(pauses)), flush=True)


def case_upgrade_changes_shape():
    """The new image reads the configuration again: an upgrade onto a file with other workers and rings
    values and a new service brings that shape up (loops, rings, the new listener) while every connection
    carries on, and back down again."""
    s = Setup("shape")
    added = free_port()
    extra = "\n[added]\nlisten = 127.0.0.1:%d\nforward = echo\n" % added
    d = Daemon(s.conf(2, 4))
    wait_topology(d, 2, 4, "at start")
    load = Load(s.addrs, 40)
    load.wait_progress("start")
    held = []
    for i in range(8):
        c = connect(s.addrs[i % 4])
        c.sendall(b"held%d" % i)
        if recv_exact(c, 5) != b"held%d" % i:
            fail("no echo on a held connection")
        held.append(c)
    for workers, rings, with_added in ((3, 6, True), (1, 2, True), (2, 5, False)):
        d.write(s.conf(workers, rings, extra if with_added else ""))
        what = "upgrade to workers %d, rings %d%s" % (workers, rings, " and a new service" if with_added else "")
        carried, st = d.upgrade(what)
        if (st["workers"], st["rings"]) != (workers, rings):
            fail("%s: status says workers %d, rings %d" % (what, st["workers"], st["rings"]))
        if carried < 40 + 10 + 8:
            fail("%s: only %d connections carried over" % (what, carried))
        wait_topology(d, workers, rings, "after the " + what)
        load.wait_progress(what)
        for i, c in enumerate(held):
            c.sendall(b"more%d" % i)
            if recv_exact(c, 5) != b"more%d" % i:
                fail("%s: a held connection stopped working" % what)
        if with_added:
            check_round_trip(("127.0.0.1", added), "the service added by the " + what)
        else:
            try:
                connect(("127.0.0.1", added), timeout=2).close()
                fail("%s: the removed service still listens" % what)
            except (ConnectionRefusedError, socket.timeout):
                pass
        for a in s.addrs:
            check_round_trip(a, "a new connection after the " + what)
    load.finish("upgrades changing the shape")
    for c in held:
        c.shutdown(socket.SHUT_WR)
        if c.recv(1) != b"":
            fail("data after half-close on a held connection")
        c.close()
    expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), "upgrades changing the shape")
    d.stop()
    s.close()
    print("ok upgrades onto other shapes: workers/rings 2/4 -> 3/6 (+ a service) -> 1/2 -> 2/5 (- the service), "
          "every connection carried on, loops and rings as configured", flush=True)


def case_upgrade_pending_reload():
    """A reload and an upgrade asked together: SIGHUP then at once evfdctl upgrade; and evfdctl upgrade while
    evfdctl reload waits for its reload (held half-way by a frozen worker loop). Both finish, in order; the
    reloaded file is in effect in the new image; no stream breaks."""
    s = Setup("pending")
    d = Daemon(s.conf(2, 4))
    busy = Busy()
    try:
        load = Load(s.addrs, 60)
        churn = Churn(s.addrs, extra=4000)
        load.wait_progress("start")
        # SIGHUP, then at once the upgrade.
        for k, (w, r) in enumerate(((3, 4), (1, 3), (2, 6))):
            before = d.status()
            d.write(s.conf(w, r))
            d.proc.send_signal(signal.SIGHUP)
            what = "SIGHUP then upgrade %d (workers %d, rings %d)" % (k + 1, w, r)
            d.upgrade(what, before=before)
            st = d.wait_status(lambda st: st["reloads"] >= before["reloads"] + 1 and st["workers"] == w and
                               st["rings"] == r, what + ": the reload")
            # (A reload done by the old image is counted in the new one, but its last_reload is not kept.)
            if st["reloads"] != before["reloads"] + 1 or (st["last_reload"] and not st["last_reload"]["ok"]):
                fail("%s: reloads %d -> %d, last_reload %s" % (what, before["reloads"], st["reloads"],
                                                               st["last_reload"]))
            wait_topology(d, w, r, what)
            load.wait_progress(what)
            churn.check(what)
        # evfdctl reload waiting for its answer when evfdctl upgrade comes.
        before = d.status()
        d.write(s.conf(3, 5))
        what = "evfdctl upgrade while evfdctl reload waits"
        with Frozen(d, worker_tid(d)) as frozen:
            rl = d.ctl_bg("reload")
            if frozen.ok:
                wait_state(d, "reloading", what)
            at = len(d.text())
            d.install(OTHER[d.build])
            up = d.ctl_bg("upgrade")
            if frozen.ok:
                d.wait_log("upgrade requested", start=at)
                time.sleep(0.3)
                if rl.poll() is not None:
                    fail("%s: evfdctl reload ended while its reload was held: %s" % (what, rl.communicate()))
        try:
            r_out, r_err = rl.communicate(timeout=120 * SLOW)
            u_out, u_err = up.communicate(timeout=120 * SLOW)
        except subprocess.TimeoutExpired:
            fail("%s: evfdctl did not finish:\n%s" % (what, d.text()[-6000:]))
        check_sanitizers(r_err + u_err, "evfdctl")
        if rl.returncode != 0 or "reloaded" not in r_out:
            fail("%s: evfdctl reload: exit %d, %r %r\n%s" % (what, rl.returncode, r_out, r_err, d.text()[-4000:]))
        d.check_upgraded(subprocess.CompletedProcess(up.args, up.returncode, u_out, u_err), before,
                         OTHER[d.build], what)
        st = d.wait_status(lambda st: st["workers"] == 3 and st["rings"] == 5, what + ": the reloaded shape")
        if st["reloads"] != before["reloads"] + 1:
            fail("%s: reloads %d -> %d" % (what, before["reloads"], st["reloads"]))
        wait_topology(d, 3, 5, what)
        load.wait_progress(what)
        churn.finish("reloads with upgrades")
        load.finish("reloads with upgrades")
    finally:
        busy.stop()
    if any(load.kinds().values()):
        fail("the streams saw %s" % load.kinds())
    expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), "reloads with upgrades")
    d.stop()
    s.close()
    print("ok a reload and an upgrade asked together (SIGHUP then upgrade x3, upgrade while evfdctl reload "
          "waits%s): both done, the reloaded file in effect, no stream broken"
          % ("" if frozen.ok else "; no ptrace here, so not held half-way"), flush=True)


def case_reload_during_upgrade():
    """The other order: a reload asked while an upgrade is under way (held half-way by a frozen worker loop:
    its rings cannot park), by SIGHUP and by evfdctl reload, the file changed meanwhile. The file is in effect
    afterwards (the new image reads it), and evfdctl reload gets an answer rather than a dropped connection."""
    s = Setup("hupup")
    d = Daemon(s.conf(2, 4))
    load = Load(s.addrs, 20)
    load.wait_progress("start")
    before = d.status()
    what = "SIGHUP and evfdctl reload during an upgrade"
    with Frozen(d, worker_tid(d)) as frozen:
        if not frozen.ok:
            print("skip a reload during an upgrade: ptrace not permitted here", flush=True)
            load.finish("no reload during an upgrade")
            d.stop()
            return
        at = len(d.text())
        d.install(OTHER[d.build])
        up = d.ctl_bg("upgrade")
        wait_state(d, "upgrading", what)
        d.write(s.conf(3, 5))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("SIGHUP", start=at)
        rl = d.ctl_bg("reload")
        d.wait_log("reload requested by", start=at)
    try:
        u_out, u_err = up.communicate(timeout=120 * SLOW)
        r_out, r_err = rl.communicate(timeout=120 * SLOW)
    except subprocess.TimeoutExpired:
        fail("%s: evfdctl did not finish:\n%s" % (what, d.text()[-6000:]))
    check_sanitizers(r_err + u_err, "evfdctl")
    d.check_upgraded(subprocess.CompletedProcess(up.args, up.returncode, u_out, u_err), before, OTHER[d.build],
                     what)
    load.wait_progress(what)
    st = d.wait_status(lambda st: st["workers"] == 3 and st["rings"] == 5, what + ": the changed file in effect")
    wait_topology(d, 3, 5, what)
    if rl.returncode != 0 or st["reloads"] < before["reloads"] + 1:
        fail("%s: evfdctl reload asked during the upgrade: exit %d, %r %r (status afterwards: reloads %d -> %d)"
             "\nevfdd's log:\n%s" % (what, rl.returncode, r_out, r_err.strip(), before["reloads"], st["reloads"],
                                     d.text()[at:][-4000:]))
    load.finish(what)
    d.stop()
    s.close()
    print("ok a reload asked during an upgrade (SIGHUP, evfdctl reload): answered, the file in effect in the "
          "new image (reloads %d -> %d)" % (before["reloads"], st["reloads"]), flush=True)


def case_upgrade_during_move():
    """evfdctl move and evfdctl upgrade at the same moment, in both orders: the upgrade always happens; the
    move is done first or refused (the ring is busy, or evfdd is between images); no stream breaks and the
    rings are all owned by listed loops afterwards."""
    s = Setup("move")
    d = Daemon(s.conf(3, 6))
    busy = Busy()
    moved = refused = 0
    try:
        load = Load(s.addrs, 60)
        churn = Churn(s.addrs, extra=4000)
        load.wait_progress("start")
        rounds = 8
        for k in range(rounds):
            loops, rings = wait_topology(d, 3, 6, "before move %d" % (k + 1))
            ring = rings[k % len(rings)]
            target = next(lp["id"] for lp in loops if lp["id"] != ring["loop"])
            before = d.status()
            to = OTHER[d.build]
            d.install(to)
            what = "move %d (ring %d to loop %d) with an upgrade" % (k + 1, ring["id"], target)
            first, second = (("move", str(ring["id"]), str(target)), ("upgrade",))
            if k % 2:
                first, second = second, first
            p1 = d.ctl_bg(*first)
            time.sleep(random.random() * 0.005)
            p2 = d.ctl_bg(*second)
            try:
                o1 = p1.communicate(timeout=120 * SLOW)
                o2 = p2.communicate(timeout=120 * SLOW)
            except subprocess.TimeoutExpired:
                fail("%s: evfdctl did not finish:\n%s" % (what, d.text()[-6000:]))
            (mp, mo), (upp, uo) = ((p1, o1), (p2, o2)) if first[0] == "move" else ((p2, o2), (p1, o1))
            d.check_upgraded(subprocess.CompletedProcess(upp.args, upp.returncode, uo[0], uo[1]), before, to, what)
            if mp.returncode == 0:
                moved += 1
            elif any(x in mo[1] for x in ("cannot move now", "connect", "closed the connection")):
                refused += 1
            else:
                fail("%s: evfdctl move: exit %d, %r %r" % (what, mp.returncode, mo[0], mo[1]))
            check_sanitizers(mo[1] + uo[1], "evfdctl")
            wait_topology(d, 3, 6, "after " + what)
            load.wait_progress(what)
            churn.check(what)
        churn.finish("moves with upgrades")
        load.finish("moves with upgrades")
    finally:
        busy.stop()
    if any(load.kinds().values()):
        fail("the streams saw %s" % load.kinds())
    expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), "moves with upgrades")
    d.stop()
    s.close()
    print("ok %d moves raced with upgrades: every upgrade done, %d moves done first, %d refused; no stream "
          "broken" % (moved + refused, moved, refused), flush=True)


def fill_until_stuck(sock, hasher, limit=64 << 20, quiet=0.5):
    """Send pattern bytes on the non-blocking @sock until nothing more goes for @quiet seconds (nobody reads):
    returns how many were sent, all fed to @hasher."""
    sent = 0
    stuck = None
    while sent < limit:
        pos = sent % PATTERN_LEN
        try:
            n = sock.send(PATTERN[pos:pos + RECV_MAX])
        except BlockingIOError:
            now = time.monotonic()
            if stuck is None:
                stuck = now
            elif now - stuck > quiet * SLOW:
                break
            time.sleep(0.005)
            continue
        hasher.update(PATTERN[pos:pos + n])
        sent += n
        stuck = None
    return sent


def read_hash(sock, timeout=60):
    """Everything until EOF on @sock: (bytes, sha256)."""
    sock.setblocking(True)
    sock.settimeout(timeout * SLOW)
    h = hashlib.sha256()
    n = 0
    while True:
        d = sock.recv(1 << 20)
        if not d:
            return n, h.hexdigest()
        h.update(d)
        n += len(d)


def case_half_closed():
    """Half-closed connections stay half-closed across an upgrade. A client that sent megabytes and then
    shut down its sending side without reading yet reads every byte echoed, then EOF. Through a forward: a
    backend that got the client's data and EOF before the upgrade answers after it, and the client gets the
    answer and EOF; a backend that sent its answer and EOF before the upgrade still receives everything the
    client sends after it."""
    ctl = os.path.join(TMP, "half-ctl.sock")
    echo, fwd = free_port(), free_port()
    back = socket.socket()
    back.bind(("127.0.0.1", 0))
    back.listen(8)
    back.settimeout(10 * SLOW)
    d = Daemon("[evfdd]\nworkers = 2\nrings = 2\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (ctl, echo, fwd, back.getsockname()[1]))
    # (a) echo: sent until nothing more goes (evfdd holds what it could not echo yet), then SHUT_WR.
    a = connect(("127.0.0.1", echo), rcvbuf=65536)
    a.setblocking(False)
    ha = hashlib.sha256()
    na = fill_until_stuck(a, ha)
    a.shutdown(socket.SHUT_WR)
    # (b) forward: the client's data and EOF reach the backend, which answers only after the upgrade.
    b = connect(("127.0.0.1", fwd))
    bb, _ = back.accept()
    bb.settimeout(30 * SLOW)
    req_b = random.randbytes(300000)
    b.sendall(req_b)
    b.shutdown(socket.SHUT_WR)
    if recv_all(bb) != req_b:
        fail("(b) the backend did not get the request and EOF before the upgrade")
    # (c) forward: the backend's answer and EOF reach the client; the client sends only after the upgrade.
    c = connect(("127.0.0.1", fwd))
    cb, _ = back.accept()
    cb.settimeout(30 * SLOW)
    ans_c = random.randbytes(200000)
    cb.sendall(ans_c)
    cb.shutdown(socket.SHUT_WR)
    if recv_all(c) != ans_c:
        fail("(c) the client did not get the backend's answer and EOF before the upgrade")
    time.sleep(0.2)
    carried, _ = d.upgrade("upgrade with half-closed connections")
    if carried != 3:
        fail("%d connections carried over; 3 were open, half-closed" % carried)
    # (a) every byte echoed, in order, then EOF.
    n, h = read_hash(a)
    if (n, h) != (na, ha.hexdigest()):
        fail("(a) %d bytes sent then SHUT_WR, %d echoed back%s" % (na, n, ", different" if n == na else ""))
    a.close()
    # (b) the answer after the upgrade, then EOF.
    ans_b = random.randbytes(400000)
    bb.sendall(ans_b)
    bb.close()
    got = recv_all(b)
    if got != ans_b:
        fail("(b) the client got %d of the %d bytes the backend answered after the upgrade" % (len(got),
                                                                                             len(ans_b)))
    b.close()
    # (c) the client's late data reaches the backend, then its EOF.
    req_c = random.randbytes(500000)
    c.sendall(req_c)
    c.shutdown(socket.SHUT_WR)
    got = recv_all(cb)
    if got != req_c:
        fail("(c) the backend got %d of the %d bytes the client sent after the upgrade" % (len(got), len(req_c)))
    cb.close()
    if closed_by_peer(c, 10 * SLOW) != "closed":
        fail("(c) the connection was not closed once both sides had ended")
    c.close()
    expect_counters(d, {"echo": 1, "fwd": 2}, "half-closed connections")
    back.close()
    d.stop()
    print("ok half-closed across an upgrade: %d bytes sent then SHUT_WR all echoed after it; a backend's late "
          "answer to a half-closed client delivered; a client's late data to a half-closed backend delivered"
          % na, flush=True)


def syn_sent(port):
    """Whether a connect to 127.0.0.1:@port is waiting for its SYN to be answered (ss), or None without ss."""
    try:
        r = subprocess.run(["ss", "-Htn", "state", "syn-sent", "( dport = :%d )" % port], capture_output=True,
                           text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return bool(r.stdout.strip())


def wait_syn_sent(port, what):
    end = time.time() + 10 * SLOW
    while True:
        s = syn_sent(port)
        if s is None:
            time.sleep(0.5)
            return False
        if s:
            return True
        if time.time() > end:
            fail("%s: no connect to port %d in flight" % (what, port))
        time.sleep(0.01)


def case_mid_connect():
    """A connection whose backend connect is in flight when the upgrade comes: the backend's listen queue is
    full, so the SYN goes unanswered. The new image connects again; once the backend accepts, the client's
    bytes go through and back as if nothing happened, and nothing counts a failed connect."""
    ctl = os.path.join(TMP, "mid-ctl.sock")
    fwd = free_port()
    back = socket.socket()
    back.bind(("127.0.0.1", 0))
    back.listen(0)
    bport = back.getsockname()[1]
    # A backlog of 0 holds one connection: fill it, and the next SYN is dropped (and retried 1 s, 3 s later).
    filler = socket.create_connection(("127.0.0.1", bport), timeout=5)
    d = Daemon("[evfdd]\nworkers = 1\nrings = 2\ncontrol = %s\n[fwd]\nlisten = 127.0.0.1:%d\n"
               "forward = 127.0.0.1:%d\nconnect_timeout = 30s\nretries = 0\n" % (ctl, fwd, bport))
    c = connect(("127.0.0.1", fwd))
    payload = random.randbytes(100000)
    c.sendall(payload)
    seen = wait_syn_sent(bport, "before the upgrade")
    carried, _ = d.upgrade("upgrade with a connect in flight")
    if carried != 1:
        fail("%d connections carried over; 1 was connecting" % carried)
    seen_after = wait_syn_sent(bport, "after the upgrade")
    # Room in the queue: the retried SYN is answered.
    filler.close()
    fc, _ = back.accept()
    fc.close()
    back.settimeout(30 * SLOW)
    try:
        b, _ = back.accept()
    except socket.timeout:
        fail("evfdd did not connect to the backend again after the upgrade:\n" + d.text()[-4000:])
    b.settimeout(30 * SLOW)
    if recv_exact(b, len(payload)) != payload:
        fail("the backend did not get the client's bytes sent while connecting")
    b.sendall(payload[::-1])
    if recv_exact(c, len(payload)) != payload[::-1]:
        fail("the client did not get the backend's answer")
    c.shutdown(socket.SHUT_WR)
    if recv_all(b) != b"":
        fail("the backend got more than was sent")
    b.close()
    if recv_all(c) != b"":
        fail("the client got more than was answered")
    c.close()
    svc = d.services()["fwd"]
    be = d.json("backends")["backends"][0]
    if svc["ends"]["connect_failed"] or svc["connect_errors"] or be["connect_failures"] or be["connections"] != 1:
        fail("a connect abandoned by the upgrade was counted as failed, or twice: service %s, backend %s"
             % (svc, be))
    expect_counters(d, {"fwd": 1}, "a connect in flight")
    back.close()
    d.stop()
    print("ok a connect in flight at the upgrade (%s) was made again by the new image; the client's bytes went "
          "through and back; no connect_failed" % ("SYN-SENT seen before and after" if seen and seen_after
                                                   else "ss not available"), flush=True)


def case_pending_bytes():
    """Slow readers: clients that send megabytes through the echo without reading, so evfdd holds bytes it
    could not send yet (TCP and Unix). After the upgrade they read, and send more: every byte arrives, in
    order."""
    ctl = os.path.join(TMP, "pend-ctl.sock")
    echo = free_port()
    usock = os.path.join(TMP, "pend-uecho.sock")
    d = Daemon("[evfdd]\nworkers = 2\nrings = 2\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[uecho]\nlisten = %s\nforward = echo\n" % (ctl, echo, usock))
    conns = []
    for addr in (("127.0.0.1", echo), usock):
        s = connect(addr, rcvbuf=65536)
        s.setblocking(False)
        h = hashlib.sha256()
        n = fill_until_stuck(s, h)
        conns.append((addr, s, h, n))
    carried, _ = d.upgrade("upgrade with bytes pending")
    if carried != 2:
        fail("%d connections carried over; 2 slow readers were open" % carried)
    results = []
    for addr, s, h, n in conns:
        more = random.randbytes(4 << 20)
        h.update(more)

        def send_rest(s=s, more=more):
            s.setblocking(True)
            s.sendall(more)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send_rest, daemon=True)
        t.start()
        got, gh = read_hash(s)
        t.join(30 * SLOW)
        if (got, gh) != (n + len(more), h.hexdigest()):
            fail("via %s: %d bytes sent (%d before the upgrade), %d echoed%s" % (addr, n + len(more), n, got,
                                                                               ", different" if got == n +
                                                                               len(more) else ""))
        s.close()
        results.append(n)
    expect_counters(d, {"echo": 1, "uecho": 1}, "slow readers")
    d.stop()
    print("ok slow readers across an upgrade: %d and %d bytes sent unread before it (TCP, Unix), 4 MiB more "
          "after, every byte echoed in order" % tuple(results), flush=True)


def case_idle_timer():
    """idle_timeout keeps its deadline across an upgrade: a connection idle for 2 s of its 3 s when the
    upgrade comes is closed about 1 s later, not 3 s; one kept busy survives."""
    ctl = os.path.join(TMP, "idle-ctl.sock")
    port = free_port()
    d = Daemon("[evfdd]\nworkers = 1\nrings = 2\ncontrol = %s\n[idle]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "idle_timeout = 3s\n" % (ctl, port))
    idle = connect(("127.0.0.1", port))
    busy = connect(("127.0.0.1", port))
    for s in (idle, busy):
        s.sendall(b"ping")
        if recv_exact(s, 4) != b"ping":
            fail("no echo")
    t_last = time.monotonic()
    stop = threading.Event()
    errors = []

    def keep_busy():
        k = 0
        while not stop.wait(0.3):
            k += 1
            msg = b"%06d" % k
            try:
                busy.sendall(msg)
                if recv_exact(busy, 6) != msg:
                    errors.append("wrong echo")
                    return
            except OSError as e:
                errors.append(str(e))
                return
    t = threading.Thread(target=keep_busy, daemon=True)
    t.start()
    time.sleep(max(0, t_last + 2.0 - time.monotonic()))
    t_up = time.monotonic()
    carried, _ = d.upgrade("upgrade with an idle connection")
    t_done = time.monotonic()
    if carried != 2:
        fail("%d connections carried over; 2 were open" % carried)
    how = closed_by_peer(idle, 10 * SLOW)
    t_closed = time.monotonic()
    if how != "closed":
        fail("the idle connection was not closed (%s)" % how)
    after = t_closed - t_up
    if not 0.5 <= after <= 2.5:
        fail("the idle connection (idle %.2f s at the upgrade, idle_timeout 3 s) was closed %.2f s after the "
             "upgrade began (it took %.2f s); expected about 1 s" % (t_up - t_last, after, t_done - t_up))
    # The busy one outlives the idle one's deadline, and its own would-be deadline from the upgrade.
    time.sleep(max(0, t_up + 4.0 - time.monotonic()))
    stop.set()
    t.join(10)
    if errors:
        fail("the busy connection failed: %s" % errors[0])
    busy.sendall(b"alive")
    if recv_exact(busy, 5) != b"alive":
        fail("the busy connection did not survive")
    busy.close()
    idle.close()
    end = time.time() + 10 * SLOW
    while True:
        svc = d.services()["idle"]
        if svc["open"] == 0 or time.time() > end:
            break
        time.sleep(0.05)
    if svc["ends"]["idle_timeout"] != 1 or svc["total"] != 2 or svc["closed"] != 1:
        fail("counters: idle_timeout %d (1 expected), total %d, closed %d" % (svc["ends"]["idle_timeout"],
                                                                             svc["total"], svc["closed"]))
    d.stop()
    print("ok idle_timeout across an upgrade: idle 2.0 s at the upgrade, closed %.2f s after it; the busy "
          "connection survived" % after, flush=True)


def case_backend_state():
    """A backend's drain and counters last across upgrades: the drained one stays drained (new connections go
    to the other), its open connections carry on, and no counter starts again or counts twice."""
    a, b = Echo(), Echo()
    port = free_port()
    ctl = os.path.join(TMP, "be-ctl.sock")
    d = Daemon("[evfdd]\nworkers = 2\nrings = 2\ncontrol = %s\n[lb]\nlisten = 127.0.0.1:%d\n"
               "forward = 127.0.0.1:%d 127.0.0.1:%d\nbalance = round-robin\n" % (ctl, port, a.port, b.port))
    na, nb = "127.0.0.1:%d" % a.port, "127.0.0.1:%d" % b.port
    held = []
    for i in range(6):
        c = connect(("127.0.0.1", port))
        c.sendall(b"held%d" % i)
        if recv_exact(c, 5) != b"held%d" % i:
            fail("no echo through a backend")
        held.append(c)

    def backends():
        return {x["backend"]: x for x in d.json("backends")["backends"]}
    out = d.ctl("backend", "drain", "lb", nb)
    if out.returncode != 0:
        fail("evfdctl backend drain: exit %d, %r %r" % (out.returncode, out.stdout, out.stderr))
    keys = ("state", "open", "connections", "connect_failures", "bytes_up", "bytes_down", "state_changes",
            "last_change_usec")
    for k in range(2):
        before = backends()
        if before[nb]["state"] != "drained" or before[na]["open"] != 3 or before[nb]["open"] != 3:
            fail("before upgrade %d: backends %s" % (k + 1, before))
        d.upgrade("upgrade %d with a drained backend" % (k + 1))
        after = backends()
        for name in (na, nb):
            x, y = ({key: v[name][key] for key in keys} for v in (before, after))
            if x != y:
                fail("upgrade %d: backend %s was %s before, %s after\nevfdd's log:\n%s"
                     % (k + 1, name, x, y, d.text()[-2500:]))
        for i in range(4):
            check_round_trip(("127.0.0.1", port), "a new connection with %s drained" % nb)
        now = backends()
        if now[na]["connections"] != after[na]["connections"] + 4 or now[nb]["connections"] != after[nb]["connections"]:
            fail("upgrade %d: 4 new connections with %s drained went %d to %s, %d to %s"
                 % (k + 1, nb, now[na]["connections"] - after[na]["connections"], na,
                    now[nb]["connections"] - after[nb]["connections"], nb))
        for i, c in enumerate(held):
            c.sendall(b"more%d" % i)
            if recv_exact(c, 5) != b"more%d" % i:
                fail("upgrade %d: a held connection stopped working" % (k + 1))
    for c in held:
        c.close()
    d.stop()
    a.close()
    b.close()
    print("ok a drained backend stayed drained over 2 upgrades, every backend counter carried exactly",
          flush=True)


def case_upgrade_binary():
    """upgrade_binary = PATH (applied by a reload) names the binary an upgrade executes instead of the path
    evfdd was started from; the check of that path's directories holds for it too."""
    s = Setup("ubin")
    d = Daemon(s.conf())
    load = Load(s.addrs, 20)
    load.wait_progress("start")
    other = tempfile.mkdtemp(prefix="next-", dir=TMP)
    nxt = os.path.join(other, "evfdd-next")
    shutil.copyfile(BUILDS["alt"], nxt)
    os.chmod(nxt, 0o755)
    conf = s.conf().replace("shutdown_timeout = 10s\n", "shutdown_timeout = 10s\nupgrade_binary = %s\n" % nxt)
    d.write(conf)
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("reload to upgrade_binary = %s: exit %d, %r %r" % (nxt, out.returncode, out.stdout, out.stderr))
    before = d.status()
    at = len(d.text())
    out = d.ctl("upgrade", timeout=120)
    d.check_upgraded(out, before, "alt", "upgrade to upgrade_binary")
    d.wait_log("evfdd %s ready" % VERSIONS["alt"], start=at)
    if nxt not in d.text()[at:]:
        fail("the upgrade does not name %s:\n%s" % (nxt, d.text()[at:]))
    load.wait_progress("upgrade to upgrade_binary")
    # Its directory writable by a group: refused, naming the directory.
    os.chmod(other, 0o770)
    d.refused("upgrade_binary in a group-writable directory", other)
    os.chmod(other, 0o700)
    # Back to the path it was started from (still the main build there).
    d.write(s.conf())
    if d.ctl("reload").returncode != 0:
        fail("reload without upgrade_binary")
    before = d.status()
    at = len(d.text())
    d.check_upgraded(d.ctl("upgrade", timeout=120), before, "main", "upgrade without upgrade_binary")
    d.wait_log("evfdd %s ready" % VERSIONS["main"], start=at)
    load.wait_progress("upgrade without upgrade_binary")
    load.finish("upgrade_binary")
    d.stop()
    s.close()
    print("ok upgrade_binary: set by a reload, the upgrade executed it; its directory group-writable: refused; "
          "unset: the path evfdd was started from again", flush=True)


def case_refused():
    """An upgrade that cannot run is refused up front, saying why, and evfdd carries on as it was: a broken
    configuration on disk, a binary that cannot read this state format (exit 3), a script, a binary others
    could change (group-writable). Streams go on; the count of upgrades does not move; a good upgrade
    follows."""
    s = Setup("refused")
    d = Daemon(s.conf())
    load = Load(s.addrs, 20)
    load.wait_progress("start")
    good = s.conf()
    # (a) a broken configuration: the new binary's check names the file and line.
    d.install(OTHER[d.build])
    d.write(good.replace("workers = 2", "workers = zero"))
    d.refused("broken configuration", "%s:2:" % d.path)
    load.wait_progress("(a) refused")
    d.write(good)
    # (b) a binary that reads only another state format says so and exits 3: a program of that kind, built
    # here where a compiler is at hand, else /bin/false (its check fails too, saying less).
    msg = "this evfdd reads upgrade state formats 2 to 2, not 1"
    cc = shutil.which(os.environ.get("CC") or "cc") or shutil.which("cc")
    exe = os.path.join(d.bindir, ".prog")
    src = os.path.join(TMP, "state-format-2.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\nint main(void) { puts("%s"); return 3; }\n' % msg)
    if cc and subprocess.run([cc, "-o", exe, src], capture_output=True).returncode == 0:
        refusal = "a binary for state format 2 (exit 3)"
        needle = "exited with 3: " + msg
    else:
        shutil.copyfile(shutil.which("false") or "/bin/false", exe)
        refusal = "/bin/false as the binary (no compiler here to build one that exits 3)"
        needle = "exited with 1"
    os.chmod(exe, 0o755)
    os.rename(exe, d.exe)
    d.refused(refusal, needle)
    load.wait_progress("(b) refused")
    # (b') a script, which a descriptor executed in place cannot run: refused by name.
    d.install_text("#!/bin/sh\necho '%s'\nexit 0\n" % msg)
    d.refused("a shell script", "script")
    # (c) a group-writable binary.
    d.install(OTHER[d.build])
    os.chmod(d.exe, 0o775)
    d.refused("group-writable binary", "writable by its group")
    load.wait_progress("(c) refused")
    os.chmod(d.exe, 0o755)
    # Fixed: the upgrade goes through.
    carried, st = d.upgrade("the upgrade after the refusals")
    if st["upgrades"] != 1 or carried < 25:
        fail("after the refusals: upgrades %d, %d connections carried" % (st["upgrades"], carried))
    load.wait_progress("the upgrade after the refusals")
    load.finish("refused upgrades")
    d.stop()
    s.close()
    print("ok refused upgrades: broken configuration (the reason names the file and line), %s, a shell script, "
          "a group-writable binary; evfdd carried on, then upgraded" % refusal, flush=True)


# ---- a state of our own making --------------------------------------------------------------------------

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                      0x27D4EB2F165667C5)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, v):
    return (_rotl((acc + v * P2) & M64, 31) * P1) & M64


def xxh64(data):
    """XXH64 with seed 0, as daemon/carry.c's carry_checksum."""
    n, p = len(data), 0
    u64 = lambda o: struct.unpack_from("<Q", data, o)[0]   # noqa: E731
    if n >= 32:
        v = [(P1 + P2) & M64, P2, 0, (-P1) & M64]
        while p <= n - 32:
            v = [_round(v[i], u64(p + 8 * i)) for i in range(4)]
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ _round(0, x)) * P1 + P4) & M64
    else:
        h = P5
    h = (h + n) & M64
    while n - p >= 8:
        h ^= _round(0, u64(p))
        h = (_rotl(h, 27) * P1 + P4) & M64
        p += 8
    if n - p >= 4:
        h ^= (struct.unpack_from("<I", data, p)[0] * P1) & M64
        h = (_rotl(h, 23) * P2 + P3) & M64
        p += 4
    while p < n:
        h ^= (data[p] * P5) & M64
        h = (_rotl(h, 11) * P1) & M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


def rec(rtype, body, reserved=0, length=None):
    return struct.pack("<HHI", rtype, reserved, len(body) if length is None else length) + body


def s16(text):
    b = text.encode()
    return struct.pack("<H", len(b)) + b


def info_rec(kind=1, upgrades=41, version="9.9.9-test"):
    return rec(1, struct.pack("<IQQQQQ", kind, upgrades, int(time.time() * 1e6),
                              time.clock_gettime_ns(time.CLOCK_MONOTONIC), 7, 1) + s16(version))


def counter_rec(service, name, value):
    return rec(3, s16(service) + s16(name) + struct.pack("<Q", value))


def state_bytes(payload, version=1, checksum=None):
    return (b"EVFDDST\n" + struct.pack("<IIQQ", version, 32, len(payload),
                                       xxh64(payload) if checksum is None else checksum) + payload)


F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
SEAL_ALL = (getattr(fcntl, "F_SEAL_SEAL", 1) | getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4)
            | getattr(fcntl, "F_SEAL_WRITE", 8))


def state_memfd(data, seals=SEAL_ALL):
    fd = os.memfd_create("evfdd-test-state", os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if seals:
        fcntl.fcntl(fd, F_ADD_SEALS, seals)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def open_files(pid):
    """What the descriptors of process @pid are (readlink of /proc/PID/fd/*)."""
    out = []
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, f)))
        except FileNotFoundError:
            pass
    return out


def case_corrupt_state():
    """A fresh evfdd handed what an upgrade hands over (EVFDD_CARRY_FDS: a listening socket it had bound and
    the state's memfd), but the state unusable: junk, not sealed, half sealed, a newer version, a wrong
    checksum, damaged records whose checksum is right. Each time evfdd starts clean, says why, keeps that very
    listening socket (a connection queued in its backlog before the start is served) and reports the
    fallback in status. A well-formed state made here is taken as one (the control)."""
    payload_ok = info_rec() + counter_rec("echo", "total", 5) + counter_rec("echo", "closed", 5)
    bad_conn = s16("echo") + s16("") + b"\x00"   # service, backend, then 1 byte of the u32 route
    variants = [
        ("junk", state_memfd(random.Random(5).randbytes(4096)),
         ("descriptors were carried over but no state with them",)),
        ("not sealed", state_memfd(state_bytes(payload_ok), seals=0),
         ("descriptors were carried over but no state with them",)),
        ("sealed against writes only", state_memfd(state_bytes(payload_ok), seals=getattr(fcntl, "F_SEAL_WRITE", 8)),
         ("not sealed",)),
        ("version 99", state_memfd(state_bytes(payload_ok, version=99)),
         ("version 99", "newer")),
        ("a wrong checksum", state_memfd(state_bytes(payload_ok, checksum=xxh64(payload_ok) ^ 1)),
         ("checksum",)),
        ("an info record of kind 7", state_memfd(state_bytes(info_rec(kind=7))),
         ("record 0", "kind 7")),
        ("a record longer than the state", state_memfd(state_bytes(info_rec() + rec(3, b"", length=1000))),
         ("record 1", "length 1000 past the end")),
        ("a record with reserved bits", state_memfd(state_bytes(info_rec() + rec(3, s16("echo") + s16("total") +
                                                                                  struct.pack("<Q", 1), reserved=9))),
         ("record 1", "reserved is 9")),
        ("a connection record cut short", state_memfd(state_bytes(info_rec() + rec(5, bad_conn))),
         ("record 1 (connection)", "route")),
        ("a counter with an empty service", state_memfd(state_bytes(info_rec() + counter_rec("", "total", 1))),
         ("record 1 (counter)", "service is empty")),
        ("a well-formed state (control)", state_memfd(state_bytes(payload_ok)), None),
    ]
    seen, kept = [], []
    for name, memfd, why in variants:
        port = free_port()
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", port))
        lsock.listen(64)
        lino = os.fstat(lsock.fileno()).st_ino
        queued = connect(("127.0.0.1", port))
        queued.sendall(b"queued before the start")
        ctl = os.path.join(TMP, "corrupt-ctl-%d.sock" % len(seen))
        # Besides: a connected socket that no state names, which evfdd must close.
        mine, stray = socket.socketpair()
        fds = sorted((lsock.fileno(), memfd, stray.fileno()))
        env = {"EVFDD_CARRY_FDS": ",".join(str(f) for f in fds)}
        d = Daemon("[evfdd]\nworkers = 1\nrings = 2\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\n"
                   "forward = echo\n" % (ctl, port), env=env, pass_fds=fds)
        lsock.close()
        stray.close()
        os.close(memfd)
        what = "a state with %s" % name
        text = d.text()
        if why is not None:
            line = next((ln for ln in text.splitlines() if "is unusable: " in ln), "")
            if not all(w in line for w in why + ("starting clean, keeping the listeners",)):
                fail("%s: evfdd's log does not say %s:\n%s" % (what, " ... ".join(why), text))
        elif "unusable" in text:
            fail("%s: refused:\n%s" % (what, text))
        # That very socket listens: the connection queued before the start is served.
        held = open_files(d.proc.pid)
        if "socket:[%d]" % lino not in held:
            fail("%s: evfdd does not hold the listening socket it was handed: %s" % (what, held))
        if any("evfdd-test-state" in f for f in held):
            kept.append(name)   # said at the end, once every other check has run
        if closed_by_peer(mine, 10 * SLOW) != "closed":
            fail("%s: evfdd did not close a carried socket the state does not name" % what)
        mine.close()
        if recv_exact(queued, 23) != b"queued before the start":
            fail("%s: the connection queued before the start was not served" % what)
        queued.close()
        check_round_trip(("127.0.0.1", port), what)
        st = d.status()
        last = st.get("last_upgrade") or {}
        if why is not None:
            if not all(w in last.get("fallback", "") for w in why) or st["upgrades"] != 0:
                fail("%s: status says upgrades %d, last_upgrade %s" % (what, st["upgrades"], last))
        else:
            if last.get("fallback") != "" or last.get("from_version") != "9.9.9-test" or st["upgrades"] != 41:
                fail("%s: status says upgrades %d, last_upgrade %s" % (what, st["upgrades"], last))
            svc = d.services()["echo"]
            if (svc["total"], svc["closed"]) != (5 + 2, 5 + 2):
                fail("%s: the carried counters (total 5, closed 5) did not carry: total %d, closed %d after 2 "
                     "connections" % (what, svc["total"], svc["closed"]))
        d.stop()
        seen.append(name)
    if kept:
        fail("evfdd kept the state's memfd open, for as long as it runs, after refusing a state with: %s"
             % ", ".join(kept))
    print("ok unusable states (%s): each time a clean start on the listening socket handed over, the reason "
          "logged and in status; a well-formed state made here taken" % ", ".join(seen[:-1]), flush=True)


def case_usr2():
    """SIGUSR2 upgrades too: the count goes up, the other build runs, streams carry on."""
    s = Setup("usr2")
    mport = free_port()
    d_conf = s.conf().replace("[evfdd]\n", "[evfdd]\nmetrics = 127.0.0.1:%d\n" % mport, 1)
    d = Daemon(d_conf)
    load = Load(s.addrs, 30)
    load.wait_progress("start")
    nconns = 30 + load.conns_per_addr()[s.addrs[2]]
    m = scrape(mport, "before any upgrade")
    if m.get("evfdd_upgrades_total") != 0 or any(k.startswith("evfdd_last_upgrade") for k in m):
        fail("metrics before any upgrade: %s" % {k: v for k, v in m.items() if "upgrade" in k})
    # A reload that failed, then the file mended without a reload: the upgrade reads it, and from then on
    # the last reload is that reading, not the failure (which would keep an alert on it firing).
    d.write(d_conf.replace("[evfdd]\n", "[evfdd]\nno_such_key = 1\n", 1))
    if d.ctl("reload").returncode == 0:
        fail("a reload of a configuration with an unknown key succeeded")
    failed = d.status()
    if failed["last_reload"]["ok"] or not any("no_such_key" in e for e in failed["last_reload"]["errors"]) or \
            scrape(mport, "after a failed reload").get("evfdd_last_reload_success") != 0:
        fail("a failed reload: last_reload %s" % failed["last_reload"])
    d.write(d_conf)
    for k in range(1, 4):
        at = len(d.text())
        to = OTHER[d.build]
        d.install(to)
        d.proc.send_signal(signal.SIGUSR2)
        st = d.wait_status(lambda st: st["upgrades"] == k, "SIGUSR2 %d" % k)
        d.wait_log("evfdd %s ready" % VERSIONS[to], start=at)
        last = st["last_upgrade"]
        if last["from_version"] != VERSIONS[d.build] or last["fallback"] or last["lost"] or \
                last["connections"] != nconns:
            fail("SIGUSR2 %d: last_upgrade %s" % (k, last))
        if "SIGUSR2" not in d.text()[at:]:
            fail("SIGUSR2 %d: not logged:\n%s" % (k, d.text()[at:]))
        # The metrics endpoint (bound again by the new image) says what Status says.
        m = scrape(mport, "after SIGUSR2 %d" % k)
        want = {"evfdd_upgrades_total": k, 'evfdd_last_upgrade_connections{result="kept"}': nconns,
                'evfdd_last_upgrade_connections{result="lost"}': 0}
        got = {name: m.get(name) for name in want}
        pause = m.get("evfdd_last_upgrade_pause_seconds")
        if got != want or pause is None or abs(pause * 1e6 - last["pause_usec"]) > 1:
            fail("SIGUSR2 %d: metrics %s, pause %s s; expected %s and Status's pause_usec %d"
                 % (k, got, pause, want, last["pause_usec"]))
        rl = st["last_reload"]
        if not rl or not rl["ok"] or rl["errors"] or rl["time_usec"] < last["time_usec"] or \
                not rl["summary"].startswith("upgrade %d: the new image read %s: 4 services" % (k, d.path)) or \
                st["reloads"] != failed["reloads"] or m.get('evfdd_reloads_total{result="failed"}') != 1 or \
                m.get("evfdd_last_reload_success") != 1 or \
                m.get("evfdd_last_reload_timestamp_seconds") != rl["time_usec"] // 1000000:
            fail("SIGUSR2 %d: last_reload %s, reloads %d (before: %d), metrics: failed reloads %s, success %s "
                 "at %s" % (k, rl, st["reloads"], failed["reloads"], m.get('evfdd_reloads_total{result="failed"}'),
                            m.get("evfdd_last_reload_success"), m.get("evfdd_last_reload_timestamp_seconds")))
        d.build = to
        load.wait_progress("SIGUSR2 %d" % k)
    # A Unix listener carried over has no handle on its file: a socket_mode changed now is not applied
    # through the path (nor silently dropped): the warning says so, and the file keeps its mode.
    was = stat.S_IMODE(os.lstat(s.usock).st_mode)
    at = len(d.text())
    d.write(d_conf.replace("[uecho]\n", "[uecho]\nsocket_mode = 0600\n", 1))
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("reload with another socket_mode: exit %d, %r" % (out.returncode, out.stderr))
    d.wait_log("socket_mode 0600 is not applied", start=at)
    if stat.S_IMODE(os.lstat(s.usock).st_mode) != was:
        fail("a carried Unix listener's file changed mode through its path: %o -> %o"
             % (was, stat.S_IMODE(os.lstat(s.usock).st_mode)))
    load.finish("SIGUSR2 upgrades")
    expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), "SIGUSR2 upgrades")
    d.stop()
    s.close()
    print("ok SIGUSR2 upgraded 3 times, alternating builds, every stream carried on; the metrics say what Status "
          "says; after a failed reload, the last reload is the upgrade's reading of the mended file; a "
          "socket_mode changed afterwards is not applied to the carried Unix listener, with a warning", flush=True)


def scrape(port, what):
    """The metrics endpoint's samples."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30) as r:
            return metric_samples(r.read())
    except OSError as e:
        fail("%s: cannot read the metrics: %s" % (what, e))


PTRACE_CONT, PTRACE_O_TRACEEXEC, PTRACE_EVENT_EXEC = 7, 0x10, 4


def case_signal_at_exec():
    """A SIGHUP and a SIGUSR2 that arrive while evfdd is between images (sent while ptrace holds it at the
    execve, before the new image has run a single instruction) are not lost and kill nothing: both signals'
    default action is to end the process, so they wait, blocked, for the new image's handlers. Then the
    new image reloads once, and upgrades once more, and every stream carries on."""
    s = Setup("sigexec")
    d = Daemon(s.conf())
    load = Load(s.addrs, 20)
    load.wait_progress("start")
    before = d.status()
    what = "SIGHUP and SIGUSR2 at the execve"
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    pid = d.proc.pid
    scope = "/proc/sys/kernel/yama/ptrace_scope"
    if (os.path.exists(scope) and open(scope).read().strip() == "3") or \
            libc.ptrace(PTRACE_SEIZE, pid, None, ctypes.c_void_p(PTRACE_O_TRACEEXEC)) < 0:
        print("skip signals at the execve: ptrace not permitted here", flush=True)
        load.finish(what)
        d.stop()
        s.close()
        return
    at = len(d.text())
    d.install(OTHER[d.build])
    up = d.ctl_bg("upgrade")
    end = time.time() + 60 * SLOW
    try:
        while True:
            # Only the main thread is traced: it alone calls execve. Any signal it stops for goes on.
            wpid, status = os.waitpid(pid, os.WNOHANG | WALL)
            if wpid == 0:
                if time.time() > end:
                    fail("%s: evfdd never reached its execve:\n%s" % (what, d.text()[at:][-6000:]))
                time.sleep(0.001)
                continue
            if not os.WIFSTOPPED(status):
                fail("%s: evfdd ended (wait status %#x):\n%s" % (what, status, d.text()[at:][-6000:]))
            if status >> 16 == PTRACE_EVENT_EXEC:
                break
            sig = os.WSTOPSIG(status)
            libc.ptrace(PTRACE_CONT, pid, None, ctypes.c_void_p(0 if status >> 16 else sig))
        # Held at the execve: the new image is loaded and has not run.
        os.kill(pid, signal.SIGHUP)
        os.kill(pid, signal.SIGUSR2)
    finally:
        if libc.ptrace(PTRACE_DETACH, pid, None, None) < 0:
            print("PTRACE_DETACH of %d: %s" % (pid, os.strerror(ctypes.get_errno())), flush=True)
    try:
        u_out, u_err = up.communicate(timeout=120 * SLOW)
    except subprocess.TimeoutExpired:
        fail("%s: evfdctl upgrade did not finish:\n%s" % (what, d.text()[at:][-6000:]))
    check_sanitizers(u_err, "evfdctl")
    if d.proc.poll() is not None:
        fail("%s: evfdd ended with %d (a signal's default action, if negative):\n%s"
             % (what, d.proc.returncode, d.text()[at:][-6000:]))
    m = UPGRADED.search(u_out)
    if up.returncode != 0 or not m or int(m.group(2)) != pid:
        fail("%s: evfdctl upgrade: exit %d, %r %r" % (what, up.returncode, u_out, u_err))
    # The SIGUSR2 upgrades once more (the build now at the path, so from it to itself); the SIGHUP reloads.
    st = d.wait_status(lambda st: st["upgrades"] == before["upgrades"] + 2 and st["reloads"] >= before["reloads"] + 1,
                       what + ": the reload and the second upgrade")
    last = st["last_upgrade"]
    if last["from_version"] != VERSIONS[OTHER[d.build]] or last["lost"] or last["fallback"]:
        fail("%s: the second upgrade: last_upgrade %s" % (what, last))
    text = d.text()[at:]
    if "SIGHUP" not in text or "SIGUSR2" not in text:
        fail("%s: the signals were not logged:\n%s" % (what, text[-6000:]))
    if st["pid"] != pid or d.proc.poll() is not None:
        fail("%s: evfdd is not the same process any more" % what)
    load.wait_progress(what)
    load.finish(what)
    expect_clean(d, ("echo", "uecho", "fwd", "pyfwd"), what)
    d.stop()
    s.close()
    print("ok a SIGHUP and a SIGUSR2 sent while evfdd was held at its execve: the new image reloaded (reloads "
          "%d -> %d) and upgraded again (upgrades %d -> %d), same pid, every stream carried on"
          % (before["reloads"], st["reloads"], before["upgrades"], st["upgrades"]), flush=True)


def case_full_cq():
    """Many connections on one ring: parking cancels every receive at once, and the completions overflow the
    completion queue (4 x 256 entries); every one is still collected and every connection carried. And nothing
    else crosses execve: the process holds as many descriptors of each kind after as before."""
    n = 2000 if SCALE == 1 else 600
    raise_nofile(4 * n + 1000)
    ctl = os.path.join(TMP, "cq-ctl.sock")
    port = free_port()
    d = Daemon("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "max_connections = %d\n" % (ctl, port, 2 * n) )
    socks = []
    for i in range(n):
        s = connect(("127.0.0.1", port))
        socks.append(s)
    for i, s in enumerate(socks):
        msg = b"%08d" % i
        s.sendall(msg)
        if recv_exact(s, 8) != msg:
            fail("full cq: no echo before the upgrade")

    def kinds():
        out = {}
        for f in open_files(d.proc.pid):
            k = re.sub(r"\[\d+\]$", "", f)
            out[k] = out.get(k, 0) + 1
        return out

    before = kinds()
    carried, st = d.upgrade("full cq")
    if carried != n:
        fail("full cq: %d of %d connections carried" % (carried, n))
    for i, s in enumerate(socks):
        msg = b"%08d" % (i + n)
        s.sendall(msg)
        if recv_exact(s, 8) != msg:
            fail("full cq: connection %d does not echo after the upgrade" % i)
    after = kinds()
    if before != after:
        fail("full cq: descriptors before the upgrade %s, after %s" % (before, after))
    for s in socks:
        s.close()
    d.stop()
    print("ok %d connections on one ring (completion queue 1024) carried over, every one echoes; descriptors "
          "by kind the same before and after (%s)" % (n, ", ".join("%s %d" % kv for kv in sorted(after.items()))),
          flush=True)


CASES = (case_upgrade_streams, case_upgrade_changes_shape, case_upgrade_pending_reload, case_reload_during_upgrade,
         case_upgrade_during_move, case_half_closed, case_mid_connect, case_pending_bytes, case_idle_timer,
         case_backend_state, case_upgrade_binary, case_refused, case_corrupt_state, case_usr2, case_signal_at_exec,
         case_full_cq)


def main():
    random.seed(1)
    run_cases(CASES, DAEMONS, TMP, clients=(CLIENTS,), before=ensure_tools)


main()
