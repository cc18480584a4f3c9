#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Several backends per service, end to end: real processes, real sockets on loopback. Each case starts evfdd
on its own configuration (ports picked free, a control socket of its own) in front of test backends that say
who they are (a one-byte tag) and count what reaches them, drives it as clients would, and checks how evfdd
spreads connections (round-robin, weights, least-connections, source-hash), how it fails over (retries,
passive and active health, backups), drains, what its configuration accepts, and what evfdctl, the counters
and the log say. `python3 test-backends.py CASE...` runs only the named cases (e.g. case_failure)."""
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import evfddload
import evfddtest
from evfddload import SLOW, Churn, check_sanitizers
from evfddtest import (EVFDCTL, EVFDD, SCALE, DaemonCtl, ThreadedServer, free_port, run_cases,
                       with_control)

TMP = tempfile.mkdtemp(prefix="evfdd-backends-")
# Every evfdd serves a control socket; these get their own directory (make check runs tests in parallel).
os.environ["RUNTIME_DIRECTORY"] = TMP
DAEMONS = []
STOPPABLE = []   # client threads and busy processes, stopped when a case fails so the next runs undisturbed
IP_BIND_ADDRESS_NO_PORT = 24


def fail(msg):
    """End the current case (main() goes on with the next one)."""
    print("FAIL: " + msg, flush=True)
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
    for c in STOPPABLE + evfddload.CLIENTS:
        c.abandon()
    sys.exit(1)


evfddload.use(fail)


class Daemon(DaemonCtl):
    """evfdd on a configuration file that the test may rewrite (a control socket of its own is added to
    [evfdd]); its stdout and stderr are kept for the checks."""

    slow = SLOW

    def __init__(self, conf, wait_ready=True, wrap=()):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.control = self.path + ".ctl"
        self.write(conf)
        self.log = open(self.path + ".log", "w+")
        self.started = time.time()
        self.proc = subprocess.Popen(list(wrap) + [EVFDD, "-c", self.path], stdout=self.log, stderr=self.log)
        DAEMONS.append(self)
        if wait_ready:
            self.wait_log("ready")

    def write(self, conf):
        super().write(with_control(conf, self.control))

    def fail(self, msg):
        fail(msg)

    def backends(self, service):
        """evfdctl --json backends SERVICE, by backend name."""
        out = {}
        for b in self.json("backends", service)["backends"]:
            if b["service"] != service:
                fail("evfdctl backends %s lists a backend of [%s]: %s" % (service, b["service"], json.dumps(b)))
            if b["backend"] in out:
                fail("evfdctl backends %s lists %s twice" % (service, b["backend"]))
            out[b["backend"]] = b
        return out

    def wait_backend(self, service, name, pred, what, timeout=10):
        """Backend @name of @service once @pred holds for its BackendInfo."""
        end = time.time() + timeout * SLOW
        while True:
            b = self.backends(service).get(name)
            if b is not None and pred(b):
                return b
            if self.proc.poll() is not None:
                fail("evfdd exited with %d: %s\n%s" % (self.proc.returncode, what, self.text()[-4000:]))
            if time.time() > end:
                fail("%s: [%s] backend %s after %d s: %s\nevfdd's log:\n%s" % (what, service, name, timeout * SLOW,
                                                                          json.dumps(b), self.text()[-3000:]))
            time.sleep(0.02)

    def wait_idle(self, service, timeout=20):
        """The backends of @service once none has a connection open (evfdd ends its side a moment after the
        clients do)."""
        end = time.time() + timeout * SLOW
        while True:
            bk = self.backends(service)
            if all(b["open"] == 0 for b in bk.values()):
                return bk
            if time.time() > end:
                fail("[%s] backends still have connections open %d s after the clients ended: %s"
                     % (service, timeout * SLOW, json.dumps(bk)))
            time.sleep(0.02)

    def expect_counts(self, name, what, **want):
        """Service @name's counters, once it has no connection open, are @want: total, closed, and ends by
        reason (every reason not named must be 0)."""
        end = time.time() + 20 * SLOW
        while True:
            s = self.services()[name]
            if s["open"] == 0 or time.time() > end:
                break
            time.sleep(0.02)
        got = {"open": s["open"], "total": s["total"], "closed": s["closed"]}
        got.update({k: v for k, v in s["ends"].items() if v})
        want = dict({"open": 0}, **want)
        if got != want:
            fail("%s: [%s] counts %s, the clients saw %s" % (what, name, got, want))
        return s

    def reload(self, conf, timeout=60):
        """Rewrite the file, SIGHUP, wait until that reload has finished; it must have been accepted."""
        before = self.status()["reloads"]
        self.write(conf)
        self.proc.send_signal(signal.SIGHUP)
        end = time.time() + timeout * SLOW
        while True:
            st = self.status()
            if st["reloads"] > before and st["state"] == "running":
                break
            if self.proc.poll() is not None:
                fail("evfdd exited with %d during a reload:\n%s" % (self.proc.returncode, self.text()[-4000:]))
            if time.time() > end:
                fail("the reload did not finish within %d s; status %s" % (timeout * SLOW, st))
            time.sleep(0.01)
        if not st["last_reload"]["ok"]:
            fail("a valid configuration was rejected on reload: %s" % st["last_reload"])
        return st


def varlink_call(path, method, params):
    """One Varlink call on the control socket @path: the reply (parameters, or error and parameters)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30 * SLOW)
    s.connect(path)
    s.sendall(json.dumps({"method": method, "parameters": params}).encode() + b"\0")
    buf = b""
    while b"\0" not in buf:
        d = s.recv(1 << 16)
        if not d:
            fail("the control socket closed without answering %s" % method)
        buf += d
    s.close()
    return json.loads(buf.split(b"\0", 1)[0])


# ---- backends ---------------------------------------------------------------------------------------------

class IdBackend(ThreadedServer):
    """A TCP backend that greets every connection with its tag (one byte), then echoes until EOF and ends
    cleanly. Counts the connections it accepted, those that brought data (a health check of type connect brings
    none) and those open now. .name is the backend as forward writes it."""

    def __init__(self, tag, backlog=128):
        self._init_counts(tag)
        super().__init__(backlog)
        self.name = "127.0.0.1:%d" % self.port

    def _init_counts(self, tag):
        self.tag = tag
        self.lock = threading.Lock()
        self.accepted = self.with_data = self.open = 0

    def _serve(self, c):
        with self.lock:
            self.accepted += 1
            self.open += 1
        got = False
        try:
            c.sendall(self.tag)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                if not got:
                    got = True
                    with self.lock:
                        self.with_data += 1
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()
            with self.lock:
                self.open -= 1


class AddrIdBackend(IdBackend):
    """An IdBackend on a given loopback address and port."""

    def __init__(self, tag, ip, port):
        self._init_counts(tag)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((ip, port))
        self.lsock.listen(128)
        self.name = "%s:%d" % (ip, port)
        threading.Thread(target=self._accept, daemon=True).start()


class UnixIdBackend(IdBackend):
    """An IdBackend on a Unix socket path (its name)."""

    def __init__(self, tag, path):
        self._init_counts(tag)
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(path)
        self.lsock.listen(128)
        self.name = path
        threading.Thread(target=self._accept, daemon=True).start()


class KillableBackend(IdBackend):
    """An IdBackend that can be killed, its listener closed so that connects are refused, and restarted on
    the same port. The kill takes every connection already queued on the listener first (they are served);
    one whose handshake completes in the microseconds between that and the close is reset by the kernel."""

    def __init__(self, tag):
        self._init_counts(tag)
        self.port = 0
        self._listen()
        self.name = "127.0.0.1:%d" % self.port

    def _listen(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        ls.setblocking(False)
        self.lsock, self.addr = ls, ls.getsockname()
        self.port = self.addr[1]
        self.dying = False
        self.dead = threading.Event()
        threading.Thread(target=self._accept_until_killed, args=(ls,), daemon=True).start()

    def _accept_until_killed(self, ls):
        while True:
            dying = self.dying
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    break
                except ConnectionAbortedError:
                    continue
                except OSError:
                    break
                c.setblocking(True)
                threading.Thread(target=self._serve, args=(c,), daemon=True).start()
            if dying:
                ls.close()
                self.dead.set()
                return
            select.select([ls], [], [], 0.01)

    def kill(self):
        self.dying = True
        if not self.dead.wait(10):
            fail("backend %s did not close its listener" % self.name)

    def restart(self):
        self._listen()

    def close(self):
        if not self.dying:
            self.kill()


class Busy(evfddtest.Busy):
    """The harness's busy processes, stopped with the clients when a case fails."""

    def __init__(self):
        super().__init__()
        STOPPABLE.append(self)

    def abandon(self):
        self.stop()


# ---- clients ----------------------------------------------------------------------------------------------

def connect(addr, timeout=10, src=None):
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    if src:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
    s.connect(addr)
    return s


def read_to_end(s):
    parts = []
    while True:
        d = s.recv(1 << 16)
        if not d:
            return b"".join(parts)
        parts.append(d)


def first_byte(s):
    """The backend's tag, or b"" when evfdd closed the connection unserved (an EOF or a reset)."""
    try:
        return s.recv(1)
    except ConnectionResetError:
        return b""


def visit(addr, src=None, payload=b""):
    """One connection through evfdd to an IdBackend: the tag of the backend that served it, once @payload came
    back whole and the connection ended cleanly (the half-close round trip); None when evfdd closed it
    unserved."""
    try:
        s = connect(addr, src=src)
    except OSError as e:
        fail("connecting to %s%s: %s" % (addr, " from %s" % src if src else "", e))
    try:
        tag = first_byte(s)
        if not tag:
            return None
        if payload:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        rest = read_to_end(s)
        if rest != payload:
            fail("via %s: backend %r echoed %d of %d bytes%s" % (addr, tag, len(rest), len(payload),
                                                                ", corrupted" if len(rest) == len(payload) else ""))
        return tag
    except OSError as e:
        fail("via %s%s: %s" % (addr, " from %s" % src if src else "", e))
    finally:
        s.close()


def visits(addr, n, what):
    """@n connections one after another: the sequence of backend tags. Every one must be served."""
    seq = []
    for i in range(n):
        tag = visit(addr)
        if tag is None:
            fail("%s: connection %d of %d was closed unserved" % (what, i + 1, n))
        seq.append(tag)
    return seq


def tally(seq):
    out = {}
    for t in seq:
        out[t] = out.get(t, 0) + 1
    return out


class Held:
    """A connection through evfdd held open: .tag says which backend took it."""

    def __init__(self, addr):
        self.sock = connect(addr)
        self.tag = first_byte(self.sock)
        if not self.tag:
            fail("a connection through %s was closed unserved" % (addr,))

    def exchange(self, size, what):
        """@size random bytes each way at once, checked by hash."""
        payload = random.randbytes(size)
        err = []

        def writer():
            try:
                self.sock.sendall(payload)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=writer)
        t.start()
        h, n = hashlib.sha256(), 0
        try:
            while n < size:
                d = self.sock.recv(min(1 << 16, size - n))
                if not d:
                    break
                h.update(d)
                n += len(d)
        except OSError as e:
            err.append(e)
        t.join()
        if err or n != size or h.hexdigest() != hashlib.sha256(payload).hexdigest():
            fail("%s: %d of %d bytes back%s%s" % (what, n, size, ", corrupted" if n == size else "",
                                                 ", %s" % err[0] if err else ""))
        return size

    def finish(self, what):
        """Half-close; the backend's end must follow with nothing more."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            rest = read_to_end(self.sock)
        except OSError as e:
            fail("%s: %s" % (what, e))
        if rest:
            fail("%s: %d unexpected bytes before the end" % (what, len(rest)))
        self.sock.close()


def head(workers=2, rings=4):
    return "[evfdd]\nworkers = %d\nrings = %d\nshutdown_timeout = 5s\n" % (workers, rings)


def check_backend_counters(d, service, backs, what):
    """evfdctl backends agrees with what every backend (IdBackend, reached by visit() without payload) counted:
    connections, bytes (the one-byte tag down, nothing up), none open, no failure."""
    bk = d.wait_idle(service)
    if sorted(bk) != sorted(b.name for b in backs):
        fail("%s: evfdctl backends %s lists %s, forward has %s" % (what, service, sorted(bk),
                                                                   sorted(b.name for b in backs)))
    for b in backs:
        info = bk[b.name]
        want = {"connections": b.accepted, "open": 0, "bytes_up": 0, "bytes_down": b.accepted * len(b.tag),
                "connect_failures": 0, "state": "up", "health": "up"}
        got = {k: info[k] for k in want}
        if got != want:
            fail("%s: [%s] backend %s: evfdctl says %s, the backend counted %s" % (what, service, b.name, got,
                                                                                  want))
    return bk


# ---- the cases --------------------------------------------------------------------------------------------

def case_round_robin():
    """3000 connections one after another over three backends: 1000 each (within 1 %; exact rotation), and
    evfdctl backends counts per backend what the backends counted themselves."""
    backs = [IdBackend(t) for t in (b"A", b"B", b"C")]
    port = free_port()
    d = Daemon(head() + "[rr]\nlisten = 127.0.0.1:%d\nforward = %s\n" % (port, " ".join(b.name for b in backs)))
    n = 3000 // (1 if SCALE == 1 else 3)
    t0 = time.monotonic()
    seq = visits(("127.0.0.1", port), n, "round-robin")
    took = time.monotonic() - t0
    per = tally(seq)
    for b in backs:
        if abs(b.accepted - n / 3) > n / 300:
            fail("round-robin over 3 backends, %d connections: %s got %d, not within 1 %% of %d (all: %s)"
                 % (n, b.name, b.accepted, n // 3, {b.name: b.accepted for b in backs}))
        if per.get(b.tag, 0) != b.accepted:
            fail("backend %s counted %d connections, the clients were served %d times by it"
                 % (b.name, b.accepted, per.get(b.tag, 0)))
    # Sequential connections rotate exactly: every three in a row reached three different backends.
    bad = [i for i in range(len(seq) - 2) if len(set(seq[i:i + 3])) != 3]
    if bad:
        fail("round-robin does not rotate: connections %d-%d went to %s" % (bad[0] + 1, bad[0] + 3,
                                                                           seq[bad[0]:bad[0] + 3]))
    bk = check_backend_counters(d, "rr", backs, "round-robin")
    for b in backs:
        info = bk[b.name]
        want = {"service": "rr", "backend": b.name, "weight": 1, "maxconn": 0, "backup": False,
                "health_check": "none", "addresses": [b.name], "state_changes": 0, "last_change_usec": 0}
        got = {k: info.get(k) for k in want}
        if got != want:
            fail("evfdctl --json backends: %s, expected %s" % (got, want))
    d.expect_counts("rr", "round-robin", total=n, closed=n)
    # The table: a header and one row per backend.
    out = d.ctl("backends")
    lines = out.stdout.splitlines()
    if (out.returncode != 0 or len(lines) != 4 or "BACKEND" not in lines[0].upper()
            or "STATE" not in lines[0].upper()
            or any(sum(1 for ln in lines[1:] if b.name in ln.split()) != 1 for b in backs)):
        fail("evfdctl backends: exit %d, %r %r" % (out.returncode, out.stdout, out.stderr))
    d.stop()
    for b in backs:
        b.close()
    print("ok round-robin: %d connections in %.1f s, %s, rotating exactly; evfdctl backends agrees with the "
          "backends' counts" % (n, took, " ".join("%s %d" % (b.tag.decode(), b.accepted) for b in backs)),
          flush=True)


def case_weights():
    """Weights 1:2:3 over 3000 connections: 1/6, 2/6, 3/6 within 5 %, interleaved (smooth: every 6 connections
    in a row hold 1, 2 and 3; never 3 in a row to one backend)."""
    backs = [IdBackend(t) for t in (b"A", b"B", b"C")]
    port = free_port()
    fwd = " ".join("%s,weight=%d" % (b.name, w) for b, w in zip(backs, (1, 2, 3)))
    d = Daemon(head() + "[w]\nlisten = 127.0.0.1:%d\nforward = %s\n" % (port, fwd))
    n = 3000 // (1 if SCALE == 1 else 3)
    seq = visits(("127.0.0.1", port), n, "weights 1:2:3")
    for b, w in zip(backs, (1, 2, 3)):
        share = n * w / 6
        if abs(b.accepted - share) > 0.05 * share:
            fail("weights 1:2:3, %d connections: %s (weight %d) got %d, not within 5 %% of %d (all: %s)"
                 % (n, b.name, w, b.accepted, share, [x.accepted for x in backs]))
    want = {b"A": 1, b"B": 2, b"C": 3}
    bad = [i for i in range(len(seq) - 5) if tally(seq[i:i + 6]) != want]
    if bad:
        fail("weights 1:2:3 are not smooth: connections %d-%d went to %s" % (bad[0] + 1, bad[0] + 6,
                                                                            b"".join(seq[bad[0]:bad[0] + 6])))
    runs = [i for i in range(len(seq) - 2) if seq[i] == seq[i + 1] == seq[i + 2]]
    if runs:
        fail("weights 1:2:3: three connections in a row to one backend (%s at %d): not interleaved"
             % (seq[runs[0]], runs[0] + 1))
    bk = check_backend_counters(d, "w", backs, "weights 1:2:3")
    if [bk[b.name]["weight"] for b in backs] != [1, 2, 3]:
        fail("evfdctl backends: weights %s" % [bk[b.name]["weight"] for b in backs])
    d.expect_counts("w", "weights", total=n, closed=n)
    d.stop()
    for b in backs:
        b.close()
    print("ok weights 1:2:3: %s of %d, every 6 in a row 1+2+3 (e.g. %s)" % (
        " ".join("%s %d" % (b.tag.decode(), b.accepted) for b in backs), n, b"".join(seq[:12]).decode()),
        flush=True)


def case_least_connections():
    """least-connections: connections held open spread evenly at every step; with one backend's connections
    closed, every new connection goes to it until it has as many as the others; a weight-2 backend holds
    twice as many."""
    a, b, c = backs = [IdBackend(t) for t in (b"A", b"B", b"C")]
    e, f, g = wbacks = [IdBackend(t) for t in (b"E", b"F", b"G")]
    port, wport = free_port(), free_port()
    d = Daemon(head() +
               "[lc]\nlisten = 127.0.0.1:%d\nforward = %s\nbalance = least-connections\n"
               "[lcw]\nlisten = 127.0.0.1:%d\nforward = %s,weight=2 %s %s\nbalance = least-connections\n"
               % (port, " ".join(x.name for x in backs), wport, e.name, f.name, g.name))
    addr = ("127.0.0.1", port)
    held = []
    for i in range(30):
        held.append(Held(addr))
        per = tally(h.tag for h in held)
        counts = [per.get(x.tag, 0) for x in backs]
        if max(counts) - min(counts) > 1:
            fail("least-connections: after %d connections held open the backends hold %s" % (i + 1, counts))
    bk = d.backends("lc")
    if [bk[x.name]["open"] for x in backs] != [10, 10, 10] or [x.open for x in backs] != [10, 10, 10]:
        fail("least-connections: 30 held, evfdctl says open %s, the backends have %s"
             % ([bk[x.name]["open"] for x in backs], [x.open for x in backs]))
    # A's clients leave (8 of 10): A holds 2, B and C 10.
    mine = [h for h in held if h.tag == b"A"]
    for h in mine[:8]:
        h.finish("closing a connection to A")
        held.remove(h)
    d.wait_backend("lc", a.name, lambda x: x["open"] == 2, "8 of A's 10 connections closed")
    new = [Held(addr) for _ in range(8)]
    got = b"".join(h.tag for h in new)
    if got != b"A" * 8:
        fail("least-connections: A holds 2 connections, B and C 10 each; the next 8 went to %s, not all to A"
             % got.decode())
    held += new
    per = tally(h.tag for h in held)
    if [per.get(x.tag, 0) for x in backs] != [10, 10, 10]:
        fail("least-connections: held %s" % per)
    # Weights: open connections per weight.
    wheld = [Held(("127.0.0.1", wport)) for _ in range(40)]
    wper = tally(h.tag for h in wheld)
    wcounts = [wper.get(x.tag, 0) for x in wbacks]
    if abs(wcounts[0] - 20) > 1 or abs(wcounts[1] - 10) > 1 or abs(wcounts[2] - 10) > 1:
        fail("least-connections with weights 2:1:1, 40 held: %s" % wcounts)
    for h in held + wheld:
        h.finish("closing the held connections")
    d.expect_counts("lc", "least-connections", total=38, closed=38)
    d.expect_counts("lcw", "least-connections with weights", total=40, closed=40)
    check_backend_counters(d, "lc", backs, "least-connections")
    d.stop()
    for x in backs + wbacks:
        x.close()
    print("ok least-connections: 30 held spread 10/10/10 at every step; with A at 2 and the others at 10 the "
          "next 8 all went to A; weights 2:1:1 hold %s of 40" % wcounts, flush=True)


def case_source_hash():
    """source-hash: 50 client addresses in 127.0.0.0/8, each always on one backend; a backend that goes down
    gives only its sources away and gets them back; a reload that removes a backend moves only its sources,
    and adding it back returns them. Unix clients (no address) are spread round-robin."""
    try:
        connect(("127.0.0.1", free_port()), src="127.0.0.2").close()
    except ConnectionRefusedError:
        pass
    except OSError as e:
        print("skip source-hash: cannot bind a client to 127.0.0.2 (%s)" % e, flush=True)
        return
    a, b, c = backs = [KillableBackend(t) for t in (b"A", b"B", b"C")]
    port = free_port()
    upath = os.path.join(TMP, "sh.sock")

    def conf(members):
        fwd = " ".join(x.name for x in members)
        return (head() + "[sh]\nlisten = 127.0.0.1:%d\nforward = %s\nbalance = source-hash\ndown_time = 1s\n"
                "[shu]\nlisten = %s\nforward = %s\nbalance = source-hash\n" % (port, fwd, upath, fwd))

    d = Daemon(conf(backs))
    addr = ("127.0.0.1", port)
    sources = ["127.0.0.%d" % i for i in range(10, 60)]

    def where(what, rounds=3):
        out = {}
        for src in sources:
            tags = {visit(addr, src=src) for _ in range(rounds)}
            if None in tags:
                fail("%s: a connection from %s was closed unserved" % (what, src))
            if len(tags) != 1:
                fail("%s: connections from %s went to %s, not one backend" % (what, src, sorted(tags)))
            out[src] = tags.pop()
        return out

    first = where("source-hash")
    spread = tally(first.values())
    if any(spread.get(x.tag, 0) < 3 for x in backs):
        fail("source-hash: 50 sources over 3 backends: %s" % spread)

    def moved_only(before, after, gone, what):
        for src in sources:
            if before[src] != gone.tag and after[src] != before[src]:
                fail("%s: source %s moved from %s to %s, though its backend stayed" % (what, src, before[src],
                                                                                      after[src]))
            if before[src] == gone.tag and after[src] == gone.tag:
                fail("%s: source %s still reached %s" % (what, src, gone.name))

    # B goes down: its sources go elsewhere (retries hide the failed connects), the others stay.
    b.kill()
    down = where("backend B killed", rounds=2)
    moved_only(first, down, b, "backend B killed")
    d.wait_backend("sh", b.name, lambda x: x["state"] == "down", "B killed, its sources visited")
    b.restart()
    time.sleep(1.2)   # down_time 1s, then a trial connection brings it back
    # The trial is one of B's own sources' connections: no other source is sent to B, even once.
    back = where("backend B back")
    if back != first:
        fail("after B came back, sources moved: %s" % {s: (first[s], back[s]) for s in sources
                                                        if first[s] != back[s]})
    d.wait_backend("sh", b.name, lambda x: x["state"] == "up", "B back")

    # Unix clients have no address: round-robin.
    useq = visits(upath, 30, "source-hash, Unix clients")
    ucount = [tally(useq).get(x.tag, 0) for x in backs]
    if max(ucount) - min(ucount) > 1:
        fail("source-hash for Unix clients (no address) should fall back to round-robin: 30 went %s" % ucount)

    # Reload without B: only B's sources move. Then with B again: they come back.
    before = {k: v["connections"] for k, v in d.backends("sh").items()}
    d.reload(conf([a, c]))
    bk = d.backends("sh")
    if sorted(bk) != sorted([a.name, c.name]):
        fail("after the reload without B, evfdctl backends sh lists %s" % sorted(bk))
    for x in (a, c):
        if bk[x.name]["connections"] != before[x.name]:
            fail("the reload lost %s's counters: connections %d before, %d after" % (x.name, before[x.name],
                                                                                   bk[x.name]["connections"]))
    without = where("reload without B")
    moved_only(first, without, b, "reload without B")
    nmoved = sum(1 for s in sources if first[s] == b.tag)
    d.reload(conf(backs))
    again = where("reload with B again")
    if again != first:
        fail("B back in forward, sources did not return: %s" % {s: (first[s], again[s]) for s in sources
                                                                 if first[s] != again[s]})
    d.stop()
    for x in backs:
        x.close()
    print("ok source-hash: 50 sources spread %s, each always on one backend; B down and back, and a reload "
          "without B then with it, moved only B's %d sources and returned them; Unix clients round-robin %s"
          % ({k.decode(): v for k, v in sorted(spread.items())}, nmoved, ucount), flush=True)


def case_failure():
    """A backend killed under load, with a busy process per CPU: no client notices (retries); it is marked
    down after fall failed connects, not hundreds; restarted, the health checks (connect, every 200ms, rise 2)
    bring it back within rise x interval."""
    a, b, c = backs = [KillableBackend(t) for t in (b"A", b"B", b"C")]
    port = free_port()
    fall, rise, interval = 3, 2, 0.2
    d = Daemon(head() + "[fo]\nlisten = 127.0.0.1:%d\nforward = %s\nconnect_timeout = 2s\nfall = %d\nrise = %d\n"
               "health_check = connect\nhealth_interval = %dms\n"
               % (port, " ".join(x.name for x in backs), fall, rise, interval * 1000))
    busy = Busy()
    nclients = 2
    try:
        churns = [Churn([("127.0.0.1", port)], seed=seed, tags={x.tag for x in backs}) for seed in range(nclients)]

        def wait_served(tag, more, what):
            start = sum(ch.by_tag.get(tag, 0) for ch in churns)
            end = time.time() + 20 * SLOW
            while sum(ch.by_tag.get(tag, 0) for ch in churns) < start + more:
                if time.time() > end:
                    fail("%s: the clients reached %s only %d times in %d s" % (
                        what, tag, sum(ch.by_tag.get(tag, 0) for ch in churns) - start, 20 * SLOW))
                time.sleep(0.01)

        for x in backs:
            wait_served(x.tag, 50, "before the kill")
        log_at = len(d.text())
        b.kill()
        t_kill = time.time()
        info = d.wait_backend("fo", b.name, lambda x: x["state"] == "down", "B killed under load", timeout=10)
        down_after = time.time() - t_kill
        cf_down = info["connect_failures"]
        if cf_down > fall + nclients + 2:
            fail("B was marked down after %d failed connects (fall = %d)" % (cf_down, fall))
        # The others carry the load while B is down.
        for x in (a, c):
            wait_served(x.tag, 100, "B down")
        time.sleep(1.0)
        info = d.backends("fo")[b.name]
        down_for = time.time() - t_kill
        # Only what the health checks try, should they count (a few per second): not the load's hundreds.
        cf_end = info["connect_failures"]
        if info["state"] != "down" or cf_end > fall + nclients + 2 + down_for / interval + 1:
            fail("B down for %.1f s under load: %s" % (down_for, json.dumps(info)))
        text = d.text()[log_at:]
        downs = re.findall(r"\[fo\] backend %s is down: (.*)" % re.escape(b.name), text)
        if len(downs) != 1 or not re.match(r"(%d connect failures in a row|%d health checks failed)" % (fall, fall),
                                           downs[0]):
            fail("the log says about B going down %s:\n%s" % (downs, text[-3000:]))
        # Back: two passing checks 200ms apart.
        t_restart = time.time()
        b.restart()
        info = d.wait_backend("fo", b.name, lambda x: x["state"] == "up", "B restarted", timeout=10)
        up_after = info["last_change_usec"] / 1e6 - t_restart
        limit = rise * interval + 0.6 * SLOW
        if not 0.1 <= up_after <= limit:
            fail("B was up %.2f s after its restart; rise %d x health_interval %dms (+ slack) allows %.1f s"
                 % (up_after, rise, interval * 1000, limit))
        d.wait_log("[fo] backend %s is up (%d health checks passed)" % (b.name, rise), start=log_at)
        if info["state_changes"] != 2 or info["health"] != "up" or info["health_check"] != "connect":
            fail("B after going down and up: %s" % json.dumps(info))
        wait_served(b.tag, 50, "B back")
        for ch in churns:
            ch.stop("backend killed and restarted")   # the failures B's kill may cause are judged below
    finally:
        busy.stop()
    opened = sum(sum(ch.opened.values()) for ch in churns)
    ok = sum(ch.ok for ch in churns)
    failures = [f for ch in churns for f in ch.failures]
    bk = d.wait_idle("fo")
    for x in (a, c):
        if bk[x.name]["connections"] != x.with_data or bk[x.name]["connect_failures"] != 0:
            fail("backend %s: evfdctl says %s, the backend served %d (accepted %d); the clients saw %d failures%s"
                 % (x.name, json.dumps(bk[x.name]), x.with_data, x.accepted, len(failures),
                    ", first: %s" % failures[0] if failures else ""))
    # A connection whose handshake with B completed as its listener closed was reset by B's kernel: evfdd had
    # connected (it counts it), B never saw it. Those, and only those, a client may see fail.
    lost_by_kill = bk[b.name]["connections"] - b.with_data
    if lost_by_kill < 0 or len(failures) > lost_by_kill:
        fail("%d of %d client connections failed while B was killed and restarted (%s), first: %s"
             % (len(failures), opened, {k: sum(ch.kinds[k] for ch in churns) for k in churns[0].kinds},
                failures[0] if failures else "-"))
    if failures:
        print("note: %d connections reset by B's kernel as its listener closed under them" % len(failures),
              flush=True)
    else:
        d.expect_counts("fo", "backend killed and restarted", total=opened, closed=opened)
    d.stop()
    for x in backs:
        x.close()
    print("ok backend killed under load with %d busy processes: %d round trips, %d failed; B down %.2f s after "
          "the kill after %d failed connects (fall %d; %d after %.1f s down), up %.2f s after its restart "
          "(rise %d x %dms)" % (len(busy.procs), ok, len(failures), down_after, cf_down, fall, cf_end, down_for,
                                up_after, rise, interval * 1000), flush=True)


def case_backup():
    """A backup takes nothing while a primary is up, everything once all are down; with the backup down too,
    clients are closed unserved, counted in ends.no_backend one for one, and the log says why."""
    a, b, x = backs = [KillableBackend(t) for t in (b"A", b"B", b"X")]
    port = free_port()
    d = Daemon(head() + "[bk]\nlisten = 127.0.0.1:%d\nforward = %s %s %s,backup\nfall = 1\ndown_time = 1m\n"
               % (port, a.name, b.name, x.name))
    addr = ("127.0.0.1", port)
    per = tally(visits(addr, 30, "backup, primaries up"))
    if per != {b"A": 15, b"B": 15} or x.accepted:
        fail("primaries up: the connections went %s, the backup accepted %d" % (per, x.accepted))
    info = d.backends("bk")[x.name]
    if not info["backup"] or info["connections"] != 0 or d.backends("bk")[a.name]["backup"]:
        fail("evfdctl backends: backup %s, primary %s" % (json.dumps(info), json.dumps(d.backends("bk")[a.name])))
    # Every primary down: the backup serves, the clients see nothing of the failed connects.
    a.kill()
    b.kill()
    per = tally(visits(addr, 20, "backup, primaries killed"))
    if per != {b"X": 20}:
        fail("all primaries down: the connections went %s" % per)
    bk = d.backends("bk")
    for p in (a, b):
        if bk[p.name]["state"] != "down" or bk[p.name]["connect_failures"] != 1:
            fail("primary killed, fall = 1: %s" % json.dumps(bk[p.name]))
    # The backup down too: the first client finds it so, the next ones find no backend at all.
    x.kill()
    if visit(addr) is not None:
        fail("a connection was served with every backend killed")
    d.wait_backend("bk", x.name, lambda i: i["state"] == "down", "the backup killed")
    before = d.services()["bk"]["ends"]
    log_at = len(d.text())
    t0 = time.monotonic()
    closed = sum(1 for _ in range(10) if visit(addr) is None)
    took = time.monotonic() - t0
    if closed != 10:
        fail("every backend down: %d of 10 connections served" % (10 - closed))
    if took > 5 * SLOW:
        fail("every backend down: 10 clients took %.1f s to be closed" % took)
    s = d.expect_counts("bk", "backups", total=61, closed=50, no_backend=before["no_backend"] + 10,
                        **({"connect_failed": before["connect_failed"]} if before["connect_failed"] else {}))
    if s["ends"]["no_backend"] + s["ends"]["connect_failed"] != 11:
        fail("one connection found the backup killed, 10 found every backend down: ends %s" % s["ends"])
    if s["connect_errors"] != s["ends"]["connect_failed"] + s["ends"]["no_backend"]:
        fail("connect_errors %d is not connect_failed + no_backend: %s" % (s["connect_errors"], s["ends"]))
    totals = d.status()["totals"]
    if totals["ends"]["no_backend"] != s["ends"]["no_backend"]:
        fail("Totals count %d no_backend, the only service %d" % (totals["ends"]["no_backend"],
                                                                  s["ends"]["no_backend"]))
    d.wait_log("no backend can take a connection", start=log_at)
    lines = re.findall(r"\[bk\] no backend can take a connection.*", d.text())
    if not lines or len(lines) > 5:
        fail("%d log lines say no backend can take a connection (rate-limited: 1 to 5 expected):\n%s"
             % (len(lines), "\n".join(lines)))
    if not lines[0].startswith("[bk] no backend can take a connection (3 down, 0 drained, 0 at maxconn); "
                               "closing the client"):
        fail("the no-backend message: %r" % lines[0])
    d.stop()
    print("ok backup: nothing while primaries were up (A %d, B %d), all 20 when they were down; with the backup "
          "down too 10 clients closed in %.2f s, ends.no_backend +10, logged %r"
          % (a.accepted, b.accepted, took, lines[0]), flush=True)
    for k in backs:
        k.close()


def case_drain():
    """evfdctl backend drain: no new connections to it, an open one carries on (checked both ways) until the
    client ends it; the drain survives a reload; enable restores it. Unknown service or backend: exit 1."""
    a, b = backs = [IdBackend(t) for t in (b"A", b"B")]
    port = free_port()
    conf = head() + "[dr]\nlisten = 127.0.0.1:%d\nforward = %s %s\n" % (port, a.name, b.name)
    d = Daemon(conf)
    addr = ("127.0.0.1", port)
    held_conn = Held(addr)
    t = {x.tag: x for x in backs}[held_conn.tag]
    other = b if t is a else a
    moved = held_conn.exchange(1 << 20, "the long-lived connection before the drain")
    out = d.ctl("backend", "drain", "dr", t.name)
    if out.returncode != 0:
        fail("evfdctl backend drain dr %s: exit %d, %r %r" % (t.name, out.returncode, out.stdout, out.stderr))
    info = d.backends("dr")[t.name]
    if (info["state"], info["health"], info["open"]) != ("drained", "up", 1):
        fail("drained with one connection open: %s" % json.dumps(info))
    d.wait_log("[dr] backend %s drained by uid %d" % (t.name, os.getuid()))
    per = tally(visits(addr, 20, "one backend drained"))
    if per != {other.tag: 20}:
        fail("%s drained: new connections went %s" % (t.name, per))
    moved += held_conn.exchange(1 << 20, "the long-lived connection through the drained backend")
    # A reload keeps the drain (and the counters).
    before = d.backends("dr")[t.name]
    d.write(conf + "idle_timeout = 2h\n")
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("evfdctl reload: exit %d, %r %r" % (out.returncode, out.stdout, out.stderr))
    info = d.backends("dr")[t.name]
    if info["state"] != "drained" or info["connections"] != before["connections"] or \
            info["bytes_up"] < before["bytes_up"]:
        fail("after a reload the drained backend is %s (before: %s)" % (json.dumps(info), json.dumps(before)))
    per = tally(visits(addr, 20, "drained, after a reload"))
    if per != {other.tag: 20}:
        fail("%s drained, after a reload: new connections went %s" % (t.name, per))
    moved += held_conn.exchange(1 << 20, "the long-lived connection through the drained backend, after a reload")
    held_conn.finish("the long-lived connection ending")
    info = d.wait_backend("dr", t.name, lambda i: i["open"] == 0, "the long-lived connection ended")
    if (info["connections"], info["bytes_up"], info["bytes_down"]) != (1, moved, moved + 1):
        fail("the drained backend carried one connection, %d bytes up and %d down: evfdctl says %s"
             % (moved, moved + 1, json.dumps(info)))
    out = d.ctl("backend", "enable", "dr", t.name)
    if out.returncode != 0:
        fail("evfdctl backend enable dr %s: exit %d, %r %r" % (t.name, out.returncode, out.stdout, out.stderr))
    if d.backends("dr")[t.name]["state"] != "up":
        fail("enabled: %s" % json.dumps(d.backends("dr")[t.name]))
    d.wait_log("[dr] backend %s enabled by uid %d" % (t.name, os.getuid()))
    per = tally(visits(addr, 20, "enabled again"))
    if per != {a.tag: 10, b.tag: 10}:
        fail("%s enabled again: new connections went %s" % (t.name, per))
    # Mistakes.
    for args, what in ((["backend", "drain", "nosuch", t.name], "an unknown service"),
                       (["backend", "enable", "nosuch", t.name], "an unknown service"),
                       (["backend", "drain", "dr", "127.0.0.1:1"], "an unknown backend"),
                       (["backend", "enable", "dr", "127.0.0.1:1"], "an unknown backend")):
        out = d.ctl(*args)
        if out.returncode != 1 or not out.stderr.strip():
            fail("evfdctl %s (%s): exit %d, %r" % (" ".join(args), what, out.returncode, out.stderr))
    for params, err, eparams in (
            ({"service": "nosuch", "backend": t.name, "state": "drain"}, "io.evfdd.NoSuchService",
             {"service": "nosuch"}),
            ({"service": "dr", "backend": "127.0.0.1:1", "state": "drain"}, "io.evfdd.NoSuchBackend",
             {"service": "dr", "backend": "127.0.0.1:1"}),
            ({"service": "dr", "backend": t.name, "state": "bogus"}, "org.varlink.service.InvalidParameter",
             {"parameter": "state"})):
        r = varlink_call(d.control, "io.evfdd.SetBackendState", params)
        if r.get("error") != err or r.get("parameters") != eparams:
            fail("SetBackendState %s: %s, expected the error %s %s" % (params, r, err, eparams))
    if d.backends("dr")[t.name]["state"] != "up":
        fail("a refused SetBackendState changed the backend: %s" % json.dumps(d.backends("dr")[t.name]))
    d.expect_counts("dr", "drain", total=61, closed=61)
    d.stop()
    for x in backs:
        x.close()
    print("ok drain: %s took no new connection, drained across a reload, while its open connection moved %d "
          "bytes each way (checked) and ended cleanly; enable restored it; unknown service or backend exit 1, "
          "bad state InvalidParameter" % (t.name, moved), flush=True)


def check_config(text, name):
    """evfdd -n on @text: (exit status, stderr, the file's path)."""
    path = os.path.join(TMP, "%s.conf" % name)
    with open(path, "w") as f:
        f.write(text)
    out = subprocess.run([EVFDD, "-n", "-c", path], capture_output=True, text=True, timeout=30 * SLOW)
    check_sanitizers(out.stderr)
    return out.returncode, out.stdout + out.stderr, path


def quoted(path):
    return '"%s"' % path.replace("\\", "\\\\").replace('"', '\\"')


def case_config_errors():
    """Every new key with a bad value: evfdd -n exits non-zero naming FILE:LINE, the section and the key; the
    same file with a good value passes. forward on two lines appends; any other key twice is an error. A quoted
    Unix path with a blank, a comma and a quote is a backend."""
    x, y = "127.0.0.1:%d" % free_port(), "127.0.0.1:%d" % free_port()
    top = "[evfdd]\nworkers = 1\n[svc]\nlisten = 127.0.0.1:%d\n" % free_port()   # body lines start at 5

    good = [
        "forward = %s,weight=2,maxconn=10 %s,backup" % (x, y),
        "forward = %s,weight=256,maxconn=1000000" % quoted("/run/my app/s,1\"q\\.sock"),
        "balance = source-hash", "retries = 10", "fall = 100", "rise = 100", "down_time = 1h",
        "health_check = send:PING\\r\\n expect:PONG", "health_interval = 100ms", "resolve_interval = 24h",
    ]
    rc, msg, path = check_config(top + "\n".join(good) + "\n", "good")
    if rc != 0 or "configuration OK" not in msg:
        fail("evfdd -n on a file with every new key: exit %d, %r" % (rc, msg))
    variants = (["balance = %s" % v for v in ("round-robin", "least-connections", "source-hash", "random-two")] +
                ["health_check = %s" % v for v in ("none", "connect", "send:x", "expect:+OK\\x20", "send:a\\tb\\x41"
                                                                                          " expect:\\\\c")] +
                ["resolve_interval = 0", "resolve_interval = 1s", "down_time = 1s", "health_interval = 1h",
                 "retries = 0", "fall = 1", "rise = 1"])
    for v in variants:
        rc, msg, path = check_config(top + "forward = %s %s\n%s\n" % (x, y, v), "good-variant")
        if rc != 0:
            fail("evfdd -n rejects %r: %r" % (v, msg))

    fw = "forward = %s %s" % (x, y)
    bad = [   # (body lines, the line the error is on, the key it names, words the message must hold)
        (["forward = %s,weight=0 %s" % (x, y)], 5, "forward", None),
        (["forward = %s,weight=257 %s" % (x, y)], 5, "forward", None),
        (["forward = %s %s,maxconn=0" % (x, y)], 5, "forward", None),
        (["forward = %s %s,maxconn=1000001" % (x, y)], 5, "forward", None),
        (["forward = %s,colour=blue %s" % (x, y)], 5, "forward", None),
        (["forward = echo %s" % x], 5, "forward", None),
        (["forward = %s" % x, "forward = echo"], 6, "forward", None),
        (["forward = echo,weight=2"], 5, "forward", None),
        (["forward = %s %s %s" % (x, y, x)], 5, "forward", None),
        (["forward = %s" % x, "balance = round-robin", "forward = %s %s" % (y, x)], 7, "forward", None),
        ([fw, "balance = bogus"], 6, "balance", None),
        ([fw, "retries = 11"], 6, "retries", None),
        ([fw, "fall = 0"], 6, "fall", None),
        ([fw, "fall = 101"], 6, "fall", None),
        ([fw, "rise = 0"], 6, "rise", None),
        ([fw, "down_time = 0"], 6, "down_time", None),
        ([fw, "down_time = 2h"], 6, "down_time", None),
        ([fw, "health_check = bogus"], 6, "health_check", None),
        ([fw, "health_interval = 1ms"], 6, "health_interval", None),
        ([fw, "resolve_interval = 500ms"], 6, "resolve_interval", None),
        ([fw, "listen = 127.0.0.1:1"], 6, "listen", "given twice (first at line 4)"),
        ([fw, "balance = source-hash", "balance = source-hash"], 7, "balance", "given twice (first at line 6)"),
        ([fw, "retries = 1", "retries = 2"], 7, "retries", "given twice (first at line 6)"),
    ]
    # 257 backends over forward lines of 10 (each line under 197 bytes): the 257th is on the last line.
    many = ["127.0.0.1:%d" % (20000 + i) for i in range(257)]
    lines = ["forward = " + " ".join(many[i:i + 10]) for i in range(0, 257, 10)]
    bad.append((lines, 4 + len(lines), "forward", None))
    rc, msg, _ = check_config(top + "\n".join(lines[:-1] + ["forward = " + " ".join(many[250:256])]) + "\n", "256")
    if rc != 0:
        fail("evfdd -n on a service with 256 backends over %d forward lines: %r" % (len(lines), msg))
    for body, line, key, words in bad:
        rc, msg, path = check_config(top + "\n".join(body) + "\n", "bad")
        where = "%s:%d: [svc] %s:" % (path, line, key)
        if rc == 0 or where not in msg or (words and words not in msg):
            fail("evfdd -n with %r: exit %d, expected a message starting %r%s; got %r"
                 % (body, rc, where, " saying %r" % words if words else "", msg))

    # Live: forward on two lines, a name (one backend, its addresses tried in turn) and a quoted Unix path.
    a, b = IdBackend(b"A"), IdBackend(b"B")
    udir = os.path.join(TMP, "my app")
    os.mkdir(udir)
    upath = os.path.join(udir, 's,1"q.sock')
    u = UnixIdBackend(b"U", upath)
    port = free_port()
    try:
        named = [ai[4][0] for ai in socket.getaddrinfo("localhost", b.port, socket.AF_UNSPEC, socket.SOCK_STREAM)]
    except OSError:
        named = []
    bname = "localhost:%d" % b.port if "127.0.0.1" in named else b.name
    d = Daemon(head() + "[two]\nlisten = 127.0.0.1:%d\nforward = %s\nforward = %s %s,weight=2\n"
               % (port, a.name, bname, quoted(upath)))
    per = tally(visits(("127.0.0.1", port), 60, "forward on two lines"))
    if per != {b"A": 15, b"B": 15, b"U": 30}:
        fail("forward = A / forward = B \"UNIX PATH\",weight=2: 60 connections went %s" % per)
    bk = d.wait_idle("two")
    if sorted(bk) != sorted([a.name, bname, upath]):
        fail("evfdctl backends two lists %s" % sorted(bk))
    if bk[upath]["addresses"] != [upath] or bk[upath]["weight"] != 2 or bk[upath]["connections"] != 30:
        fail("the quoted Unix path backend: %s" % json.dumps(bk[upath]))
    if "127.0.0.1:%d" % b.port not in bk[bname]["addresses"] or bk[bname]["connect_failures"]:
        fail("the backend named %s: %s" % (bname, json.dumps(bk[bname])))
    svc = d.services()["two"]
    if svc["forward"] != "%s %s %s,weight=2" % (a.name, bname, quoted(upath)):
        fail("Services forward: %r" % svc["forward"])
    d.stop()
    for s in (a, b, u):
        s.close()
    print("ok configuration: %d bad values each named by FILE:LINE, [section] and key, their good values "
          "accepted; forward on two lines appends (%s); other keys twice rejected; quoted Unix path %r served"
          % (len(bad), per, upath), flush=True)


class PingBackend(ThreadedServer):
    """Reads a request of up to 6 bytes; answers @pong to exactly PING\\r\\n, ERR to anything else (@pong None:
    stays silent until the other side closes); or, with @greet, greets and says nothing more. Keeps every
    request it read."""

    def __init__(self, pong=b"PONG and more\r\n", greet=b""):
        self.pong, self.greet = pong, greet
        self.requests = []
        super().__init__()

    def _serve(self, c):
        c.settimeout(5)
        try:
            if self.greet:
                c.sendall(self.greet)
                while c.recv(4096):
                    pass
                return
            req = b""
            while len(req) < 6:
                d = c.recv(6 - len(req))
                if not d:
                    break
                req += d
            self.requests.append(req)
            if self.pong is None:
                while c.recv(4096):
                    pass
                return
            c.sendall(self.pong if req == b"PING\r\n" else b"ERR\r\n")
        except OSError:
            pass
        finally:
            c.close()


def case_health_send_expect():
    """health_check = send:PING\\r\\n expect:PONG: a backend that answers PONG to PING stays up; one that
    answers something else, or nothing within the interval, is marked down after fall checks. expect: alone
    checks a greeting (\\x20 is a blank)."""
    p = PingBackend()
    q = PingBackend(b"PANG\r\n")
    s = PingBackend(None)
    r = PingBackend(greet=b"HELLO world\r\n")
    w = PingBackend(greet=b"HELLOworld\r\n")
    port, bport = free_port(), free_port()
    fall, interval = 3, 0.2
    names = {x: "127.0.0.1:%d" % x.port for x in (p, q, s, r, w)}
    d = Daemon(head() +
               "[hc]\nlisten = 127.0.0.1:%d\nforward = %s %s %s\nhealth_check = send:PING\\r\\n expect:PONG\n"
               "health_interval = 200ms\nfall = %d\nrise = 2\n"
               "[banner]\nlisten = 127.0.0.1:%d\nforward = %s %s\nhealth_check = expect:HELLO\\x20\n"
               "health_interval = 200ms\nfall = 2\n"
               % (port, names[p], names[q], names[s], fall, bport, names[r], names[w]))
    for x, why in ((q, "PANG"), (s, "silence")):
        info = d.wait_backend("hc", names[x], lambda i: i["state"] == "down", "a backend answering %s" % why)
        since = info["last_change_usec"] / 1e6 - d.started
        if since < (fall - 1) * interval - 0.1 or info["health"] != "down" or info["state_changes"] != 1 or \
                info["health_check"] != "send-expect":
            fail("a backend answering %s: down %.2f s after evfdd started (fall %d x %dms): %s"
                 % (why, since, fall, interval * 1000, json.dumps(info)))
        d.wait_log("[hc] backend %s is down: %d health checks failed" % (names[x], fall))
    d.wait_backend("banner", names[w], lambda i: i["state"] == "down", "a greeting without the blank")
    d.wait_log("[banner] backend %s is down: 2 health checks failed" % names[w])
    time.sleep(6 * interval)
    for svc, x in (("hc", p), ("banner", r)):
        info = d.backends(svc)[names[x]]
        if info["state"] != "up" or info["health"] != "up" or \
                ("[%s] backend %s is down" % (svc, names[x])) in d.text():
            fail("[%s] a backend that passes its checks: %s" % (svc, json.dumps(info)))
    if d.backends("banner")[names[r]]["health_check"] != "expect":
        fail("banner: health_check %r" % d.backends("banner")[names[r]]["health_check"])
    checks = list(p.requests)
    if len(checks) < 5 or any(c != b"PING\r\n" for c in checks) or any(c != b"PING\r\n" for c in q.requests):
        fail("the checks sent %r to the PONG backend, %r to the PANG one" % (checks[:8], q.requests[:8]))
    # Clients reach only the backend that passes.
    for i in range(10):
        c = connect(("127.0.0.1", port))
        c.sendall(b"PING\r\n")
        got = read_to_end(c)
        c.close()
        if got != b"PONG and more\r\n":
            fail("client %d through [hc] got %r" % (i, got))
    bk = d.backends("hc")
    if bk[names[p]]["connections"] != 10 or bk[names[q]]["connections"] or bk[names[s]]["connections"]:
        fail("connections per backend: %s" % {k: v["connections"] for k, v in bk.items()})
    d.stop()
    for x in (p, q, s, r, w):
        x.close()
    print("ok health checks: send:PING\\r\\n expect:PONG kept the PONG backend up (%d checks, each PING\\r\\n) "
          "and marked the PANG and the silent ones down after %d checks; expect:HELLO\\x20 told a greeting "
          "apart; clients reached only the healthy one" % (len(checks), fall), flush=True)


def case_resolve_interval():
    """A backend written as a name follows its name: evfdd runs in a mount namespace of its own whose /etc/hosts
    is a file of the test's, rewritten in place; with resolve_interval = 1s the connections move to the new
    address, and a name that stops resolving keeps the last addresses (a warning says so)."""
    unshare = shutil.which("unshare")
    if not unshare or os.geteuid() != 0:
        print("note: resolve_interval not checked: needs root and unshare(1) for a private /etc/hosts", flush=True)
        return
    hosts = os.path.join(TMP, "hosts")
    name = "evfdd-resolve-test"

    def set_hosts(text):
        # In place: the bind mount follows the inode, a rename would leave evfdd on the old file.
        with open(hosts, "r+" if os.path.exists(hosts) else "w") as f:
            f.seek(0)
            f.truncate()
            f.write(text)

    set_hosts("127.0.0.2 %s\n" % name)
    probe = socket.socket()
    probe.bind(("127.0.0.2", 0))
    port = probe.getsockname()[1]
    probe.close()
    a, b = AddrIdBackend(b"A", "127.0.0.2", port), AddrIdBackend(b"B", "127.0.0.3", port)
    lport = free_port()
    wrap = [unshare, "-m", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            hosts]
    d = Daemon(head() + "[rs]\nlisten = 127.0.0.1:%d\nforward = %s:%d\nresolve_interval = 1s\n"
               % (lport, name, port), wrap=wrap)
    addr = ("127.0.0.1", lport)
    if tally(visits(addr, 6, "name at 127.0.0.2")) != {b"A": 6}:
        fail("before the change, the connections did not all go to 127.0.0.2")
    at = len(d.text())
    set_hosts("127.0.0.3 %s\n" % name)
    d.wait_log("[rs] backend %s:%d: \"%s\" now resolves to 1 address" % (name, port, name), timeout=10, start=at)
    per = tally(visits(addr, 6, "name moved to 127.0.0.3"))
    info = d.backends("rs")["%s:%d" % (name, port)]
    if per != {b"B": 6} or info["addresses"] != ["127.0.0.3:%d" % port]:
        fail("after the name moved: connections %s, addresses %s" % (per, info["addresses"]))
    at = len(d.text())
    set_hosts("")
    d.wait_log("cannot resolve \"%s\" again" % name, timeout=10, start=at)
    if tally(visits(addr, 4, "name gone")) != {b"B": 4} or d.backends("rs")["%s:%d" % (name, port)]["addresses"] != [
            "127.0.0.3:%d" % port]:
        fail("a name that no longer resolves lost its last addresses")
    d.stop()
    for x in (a, b):
        x.close()
    print("ok resolve_interval: a name's new address taken within a second or two, a failed lookup keeps the old "
          "one", flush=True)


CASES = (case_round_robin, case_weights, case_least_connections, case_source_hash, case_failure, case_backup,
         case_drain, case_config_errors, case_health_send_expect, case_resolve_interval)


def main():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    random.seed(1)
    run_cases(CASES, DAEMONS, TMP, clients=(STOPPABLE, evfddload.CLIENTS))


main()
