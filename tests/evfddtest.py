# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the evfdd end-to-end tests share: where the programs are, free ports, backends that serve each
connection in a thread, following evfdd's log (waiting for a line, spotting a sanitizer report), asking it
through evfdctl (DaemonCtl), and the main loop of a test made of cases (run_cases).
Each test keeps its own way of failing, which it hands to DaemonLog as `fail`."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

TOP_BUILDDIR = os.environ.get("top_builddir", ".")
TOP_SRCDIR = os.environ.get("top_srcdir", ".")
EVFDD = os.path.join(TOP_BUILDDIR, "daemon", "evfdd")
EVFDCTL = os.path.join(TOP_BUILDDIR, "daemon", "evfdctl")
SCALE = max(1, int(os.environ.get("EVFD_TEST_SCALE", "1")))

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")

# systemd-socket-activate passes on only the environment it is told to (-E NAME): the sanitizers' settings,
# the library path, and the tests' own runtime directory (where evfdd puts its control socket by default).
SA_ENV = [a for v in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS", "LD_LIBRARY_PATH", "RUNTIME_DIRECTORY")
          if v in os.environ
          for a in ("-E", v)]


NOBODY = 65534
_shared_dir = None


def for_nobody(path):
    """A copy of the program @path that uid 65534 can run, also when the build tree is in a directory only
    root can enter (a checkout under /root). Plain ELF programs only (evfdctl), not libtool wrappers. The
    copies live in one 0755 directory, removed at exit."""
    global _shared_dir
    import atexit
    import shutil
    import tempfile
    if _shared_dir is None:
        _shared_dir = tempfile.mkdtemp(prefix="evfdd-shared-")
        os.chmod(_shared_dir, 0o755)
        atexit.register(shutil.rmtree, _shared_dir, True)
    dst = os.path.join(_shared_dir, os.path.basename(path))
    if not os.path.exists(dst):
        shutil.copy2(path, dst)
        os.chmod(dst, 0o755)
    return dst


def expected_features(status_features):
    """None when the io_uring features @status_features (Status's list) are what this run asks for: every one
    off when EVFDD_DISABLE=all (the fallback runs of the suite), else a message saying what is wrong."""
    if os.environ.get("EVFDD_DISABLE") == "all" and status_features:
        return "EVFDD_DISABLE=all, yet evfdd uses %s" % status_features
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """A TCP server on 127.0.0.1 (a free port, in .port and .addr) that accepts until close() and serves each
    connection in a thread of its own with the subclass's _serve(conn), which owns the connection."""

    def __init__(self, backlog=128):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(backlog)
        self.addr = self.lsock.getsockname()
        self.port = self.addr[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, conn):
        raise NotImplementedError

    def close(self):
        self.lsock.close()


def closed_by_peer(sock, timeout):
    """Wait up to @timeout seconds for the peer to close @sock: "closed" (EOF or reset), "data" (a byte
    came instead), or "timeout"."""
    sock.settimeout(timeout)
    try:
        return "closed" if sock.recv(1) == b"" else "data"
    except ConnectionResetError:
        return "closed"
    except socket.timeout:
        return "timeout"


def metric_samples(text):
    """{'name{labels}': value} of a Prometheus text exposition (bytes)."""
    out = {}
    for line in text.decode("utf-8").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def sanitizer_report(text):
    """Whether @text holds a sanitizer's report."""
    return any(mark in text for mark in SANITIZER_MARKS)


class DaemonLog:
    """A daemon process (self.proc) whose stdout and stderr go to the file self.path + ".log" (self.log).
    Subclasses set `fail` (a function that does not return) and may set `slow`, a factor for timeouts."""

    slow = 1

    def fail(self, msg):
        raise NotImplementedError

    def text(self):
        self.log.flush()
        with open(self.path + ".log") as f:
            return f.read()

    def wait_log(self, what, timeout=10, start=0):
        """Wait until @what appears in the log after offset @start; fail if the daemon exits first."""
        end = time.time() + timeout * self.slow
        while time.time() < end:
            if what in self.text()[start:]:
                return
            if self.proc.poll() is not None:
                self.fail("evfdd exited with %d before '%s':\n%s" % (self.proc.returncode, what, self.text()))
            time.sleep(0.02)
        self.fail("evfdd never logged '%s':\n%s" % (what, self.text()[-20000:]))

    def wait_exit(self, sig=signal.SIGTERM, timeout=30):
        """After a stop signal (@sig) was sent: exit status 0 and no sanitizer report."""
        try:
            rc = self.proc.wait(timeout * self.slow)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.fail("evfdd did not stop after %s:\n%s" % (sig, self.text()))
        if sanitizer_report(self.text()):
            self.fail("sanitizer report from evfdd:\n" + self.text())
        if rc != 0:
            self.fail("evfdd exited with %d after %s:\n%s" % (rc, sig, self.text()))
        return rc


def with_control(conf, control):
    """@conf with control = @control first in its [evfdd] section (which it gets if it has none)."""
    head = "[evfdd]\ncontrol = %s\n" % control
    return conf.replace("[evfdd]\n", head, 1) if "[evfdd]\n" in conf else head + conf


class DaemonCtl(DaemonLog):
    """A DaemonLog with a control socket (self.control) asked through evfdctl, and a configuration file
    (self.path) the test rewrites."""

    def write(self, conf):
        """Replace the file as an editor would (rename), so evfdd never reads a half-written one."""
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(conf)
        os.replace(tmp, self.path)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """A graceful stop must end with exit status 0 and no sanitizer report."""
        self.proc.send_signal(sig)
        return self.wait_exit(sig, timeout)

    def ctl(self, *args, timeout=30):
        """evfdctl -s CONTROL ARGS..., its output as text; a sanitizer report from evfdctl fails."""
        try:
            out = subprocess.run([EVFDCTL, "-s", self.control] + list(args), capture_output=True, text=True,
                                 timeout=timeout * self.slow)
        except subprocess.TimeoutExpired:
            self.fail("evfdctl %s did not answer within %d s:\n%s" % (" ".join(args), timeout * self.slow,
                                                                      self.text()[-6000:]))
        if sanitizer_report(out.stderr):
            self.fail("sanitizer report from evfdctl:\n" + out.stderr)
        return out

    def json(self, *args):
        out = self.ctl("--json", *args)
        if out.returncode != 0:
            self.fail("evfdctl --json %s: exit %d, %r\nevfdd's log:\n%s" % (" ".join(args), out.returncode,
                                                                           out.stderr, self.text()[-6000:]))
        try:
            return json.loads(out.stdout)
        except ValueError as e:
            self.fail("evfdctl --json %s printed no JSON (%s): %r" % (" ".join(args), e, out.stdout))

    def status(self):
        return self.json("status")

    def services(self):
        return {s["name"]: s for s in self.json("services")["services"]}


class Busy:
    """One process per CPU spinning at the same priority as everything else: races that an idle machine hides
    show up when evfdd's threads are preempted at awkward moments, and timers compete for time."""

    def __init__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(os.cpu_count() or 1)]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class Skip(Exception):
    """A case that cannot run on this machine (raised with the reason, which the case printed)."""


def run_cases(cases, daemons, tmp, procs=(), clients=(), before=None):
    """The main loop of a test made of cases: runs those named on the command line (every one when none is;
    an unknown name exits 2), one after another, after before() (checks of what the test needs). A case fails
    through SystemExit (its fail() said why) or any other exception (printed here), and is skipped through
    Skip. What a case started is registered in the test's lists, which are emptied after each case: @daemons
    (DaemonLog objects: those still running are killed, and a sanitizer report in any log fails the case),
    @procs (other programs, killed) and @clients (lists of client threads, abandoned). @tmp is removed at the
    end, whatever happened. Exits 1 naming the failed cases, 77 when every case that ran was skipped;
    returns when all passed."""
    import shutil
    import traceback

    def clean_up():
        why = end_daemons(daemons)
        kill_all(procs)
        for group in clients:
            for c in group:
                c.abandon()
            del group[:]
        del daemons[:]
        if procs:
            del procs[:]
        return why

    names = sys.argv[1:]
    unknown = [n for n in names if n not in {c.__name__ for c in cases}]
    if unknown:
        print("unknown case %s; cases: %s" % (unknown[0], " ".join(c.__name__ for c in cases)))
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(2)
    failed, skipped, ran = [], [], 0
    t_all = time.monotonic()
    try:
        if before:
            before()
        for case in cases:
            if names and case.__name__ not in names:
                continue
            t0 = time.monotonic()
            try:
                case()
                ran += 1
            except Skip:
                skipped.append(case.__name__)
            except SystemExit:
                failed.append(case.__name__)
            except Exception:
                traceback.print_exc()
                print("FAIL: %s raised" % case.__name__, flush=True)
                failed.append(case.__name__)
            why = clean_up()
            if why and case.__name__ not in failed:
                print("FAIL: " + why, flush=True)
                failed.append(case.__name__)
            print("   (%s: %.1f s)" % (case.__name__, time.monotonic() - t0), flush=True)
    finally:
        clean_up()
        shutil.rmtree(tmp, ignore_errors=True)
    print("   (all: %.1f s)" % (time.monotonic() - t_all), flush=True)
    if failed:
        print("FAIL: %d cases failed: %s" % (len(failed), " ".join(failed)), flush=True)
        sys.exit(1)
    if skipped and not ran:
        sys.exit(77)


def kill_all(procs):
    """Kill what is still running of @procs (Popen objects, or objects with a .proc) and reap it."""
    for p in procs:
        proc = getattr(p, "proc", p)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def end_daemons(daemons):
    """After a case: kill what still runs of @daemons (DaemonLog objects) and reap it. Returns why the case
    failed after all, when an evfdd's log holds a sanitizer report (also one killed after a failure), or
    None."""
    kill_all(daemons)
    for d in daemons:
        if sanitizer_report(d.text()):
            return "sanitizer report from evfdd:\n" + d.text()
    return None
