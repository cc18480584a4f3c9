#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdd's configuration reload end to end: real processes, real sockets, real load. Each case starts evfdd
on its own configuration (ports picked free, a control socket of its own), keeps connections streaming
through it while it reloads, checks every byte that comes back, and asks evfdctl what the daemon looks like
afterwards (which loop owns which ring, how the last reload went). sd_notify messages are received on a
test NOTIFY_SOCKET. `python3 test-reload.py CASE...` runs only the named cases (e.g. case_watchdog)."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import evfddload
from evfddload import (CLIENTS, SLOW, Churn, Echo, Frozen, Load, check_round_trip, connect, expect_counters,
                       raise_nofile, recv_exact, wait_topology)
from evfddtest import (EVFDCTL, EVFDD, SCALE, Busy, DaemonCtl, closed_by_peer, expected_features, free_port,
                       run_cases)

TMP = tempfile.mkdtemp(prefix="evfdd-reload-")
DAEMONS = []


def fail(msg):
    """End the current case (main() goes on with the next one)."""
    print("FAIL: " + msg, flush=True)
    # A daemon left running would hold its ports and outlive the test run.
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
    for c in CLIENTS:
        c.abandon()
    sys.exit(1)


evfddload.use(fail)


class Daemon(DaemonCtl):
    """evfdd on a configuration file that the test rewrites; its stderr is kept for the checks."""

    slow = SLOW

    def __init__(self, conf, env=None, wrap=None, wait_ready=True):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.write(conf)
        self.log = open(self.path + ".log", "w+")
        self.control = None
        for line in conf.splitlines():
            if line.replace(" ", "").startswith("control="):
                self.control = line.split("=", 1)[1].strip()
        cmd = (wrap or []) + [EVFDD, "-c", self.path]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log, env=full_env)
        DAEMONS.append(self)
        if wait_ready:
            self.wait_log("ready")

    def fail(self, msg):
        fail(msg)

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    def reload(self, conf, timeout=60):
        """Rewrite the file, SIGHUP, wait until that reload has finished; returns the status afterwards."""
        before = self.status()["reloads"]
        self.write(conf)
        self.hup()
        return self.wait_reloads(before + 1, timeout)

    def stall_report(self, addr, local, nrecv):
        """Where a stalled client connection stands, taken while it stalls: its sockets as ss(8) sees them
        (a server side with no process is still in the listener's queue), the listener's queue, and the
        rings and loops evfdd reports."""
        out = ["a connection from %s to %s stalled after %d bytes back:" % (local, addr, nrecv)]
        if isinstance(addr, tuple):
            for args in (["ss", "-tanpie", "( sport = :%d or dport = :%d )" % (local[1], local[1])],
                         ["ss", "-ltnpi", "( sport = :%d )" % addr[1]]):
                r = subprocess.run(args, capture_output=True, text=True)
                out.append("$ %s\n%s%s" % (" ".join(args), r.stdout, r.stderr))
        else:
            r = subprocess.run(["ss", "-xlpn", "src", addr], capture_output=True, text=True)
            out.append("$ ss -xlpn src %s\n%s%s" % (addr, r.stdout, r.stderr))
        for what in ("status", "loops", "rings"):
            r = subprocess.run([EVFDCTL, "-s", self.control, "--json", what], capture_output=True, text=True,
                               timeout=30)
            out.append("evfdctl %s: %s%s" % (what, r.stdout.strip(), r.stderr.strip()))
        out.append("evfdd's log (end):\n" + self.text()[-3000:])
        return "\n".join(out)

    def wait_reloads(self, count, timeout=60):
        end = time.time() + timeout * SLOW
        while True:
            st = self.status()
            if st["reloads"] >= count and st["state"] == "running":
                return st
            if self.proc.poll() is not None:
                fail("evfdd exited with %d during a reload:\n%s" % (self.proc.returncode, self.text()))
            if time.time() > end:
                fail("reload %d did not finish within %d s; status %s\n%s" % (count, timeout * SLOW, st,
                                                                              self.text()[-4000:]))
            time.sleep(0.01)


def ensure_tools():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)


# ---- what the clients saw -------------------------------------------------------------------------------

def backend_of(addr):
    """Which backend a forward reaches now: the one byte it greets with."""
    try:
        s = connect(addr)
        tag = s.recv(1)
        s.close()
    except OSError as e:
        fail("connecting through %s: %s" % (addr, e))
    return tag


class Notify:
    """A test NOTIFY_SOCKET: every datagram evfdd sends, in order, with the time it arrived."""

    def __init__(self):
        self.path = os.path.join(TMP, "notify-%d.sock" % random.randrange(1 << 30))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.msgs = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                m = self.sock.recv(65536).decode()
            except OSError:
                return
            with self.lock:
                self.msgs.append((time.monotonic(), m))

    def env(self):
        return {"NOTIFY_SOCKET": self.path}

    def snapshot(self):
        with self.lock:
            return list(self.msgs)

    def wait(self, pred, start, what, timeout=20):
        """The index of the first message at or after @start for which @pred holds."""
        end = time.time() + timeout * SLOW
        while time.time() < end:
            msgs = self.snapshot()
            for k in range(start, len(msgs)):
                if pred(msgs[k][1]):
                    return k
            time.sleep(0.01)
        fail("no sd_notify message %s within %d s; got %r" % (what, timeout * SLOW,
                                                             [m for _, m in self.snapshot()[start:]]))

    def count(self, needle):
        return sum(1 for _, m in self.snapshot() if needle in m.split("\n"))


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


# ---- what evfdctl says about loops and rings -------------------------------------------------------------

# ---- the cases --------------------------------------------------------------------------------------------

def load_conf(workers, rings, ports, socks, ctl, extra=""):
    echo, fwd = ports
    uecho, ufwd = socks
    return ("[evfdd]\nworkers = %d\nrings = %d\ncontrol = %s\nshutdown_timeout = 10s\n%s\n"
            "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n\n"
            "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n\n"
            "[uecho]\nlisten = %s\nforward = echo\n\n"
            "[ufwd]\nlisten = %s\nforward = 127.0.0.1:%d\n"
            % (workers, rings, ctl, extra, echo, fwd, echo, uecho, ufwd, echo))


def case_reload_under_load():
    """The headline: 200 streams and two clients opening connections without pause go through evfdd while it
    reloads 100 times, each time changing workers among 1-4 and rings among 1, 2, 5 and 8 (surplus rings
    drain), with one busy process per CPU competing for time. Every ring stays owned by a listed loop, spread
    evenly; no client sees a reset, an empty EOF or a wrong byte; and evfdd's counters agree with the
    clients: every connection they opened counted once, and closed cleanly."""
    nconns = 200
    reloads = 100 if SCALE == 1 else max(20, 100 // SCALE)
    raise_nofile(8 * nconns + 1024)
    ports = (free_port(), free_port())
    socks = (os.path.join(TMP, "uecho.sock"), os.path.join(TMP, "ufwd.sock"))
    ctl = os.path.join(TMP, "ctl-load.sock")
    addrs = [("127.0.0.1", ports[0]), ("127.0.0.1", ports[1]), socks[0], socks[1]]
    workers, nrings = 2, 8
    d = Daemon(load_conf(workers, nrings, ports, socks, ctl))
    wait_topology(d, workers, nrings, "at start")
    problem = expected_features(d.status()["features"])
    if problem:
        fail(problem)
    busy = Busy()
    try:
        load = Load(addrs, nconns)
        churns = [Churn(addrs, seed) for seed in (7, 8)]
        for churn in churns:
            churn.diag = d.stall_report
        load.wait_progress("start")
        rnd = random.Random(3)
        seen = set()
        for k in range(reloads):
            new = (rnd.choice((1, 2, 3, 4)), rnd.choice((1, 2, 5, 8)))
            while new == (workers, nrings):
                new = (rnd.choice((1, 2, 3, 4)), rnd.choice((1, 2, 5, 8)))
            seen.add(((workers, nrings), new))
            st = d.reload(load_conf(new[0], new[1], ports, socks, ctl))
            last = st.get("last_reload") or {}
            if not last.get("ok"):
                fail("reload %d (workers, rings %s -> %s) was rejected: %s\n%s"
                     % (k + 1, (workers, nrings), new, last, d.text()[-4000:]))
            if (st["workers"], st["rings"]) != new:
                fail("reload %d: status says %d workers, %d rings; configured %s"
                     % (k + 1, st["workers"], st["rings"], new))
            workers, nrings = new
            wait_topology(d, workers, nrings, "after reload %d to %d workers, %d rings" % (k + 1, workers, nrings))
            load.wait_progress("reload %d to %d workers, %d rings" % (k + 1, workers, nrings))
            for churn in churns:
                if churn.failures:
                    fail("after reload %d: the churn client failed (%s): %s\n%s" % (k + 1, churn.kinds,
                                                                                    churn.failures[0],
                                                                                    churn.diagnosis))
        round_trips = sum(churn.finish("reloads under load") for churn in churns)
        total = load.finish("reloads under load")
    finally:
        busy.stop()
    kinds = load.kinds()
    if any(kinds.values()):
        fail("the streams saw %s" % kinds)
    st = d.status()
    if st["reloads"] != reloads:
        fail("status counts %d reloads, %d were sent" % (st["reloads"], reloads))
    # What each service's clients opened; the two forwards open one connection each to the TCP echo.
    opened = dict(load.conns_per_addr())
    for churn in churns:
        for a, n in churn.opened.items():
            opened[a] = opened.get(a, 0) + n
    per_service = {"echo": opened[addrs[0]] + opened[addrs[1]] + opened[addrs[3]], "fwd": opened[addrs[1]],
                   "uecho": opened[addrs[2]], "ufwd": opened[addrs[3]]}
    expect_counters(d, per_service, "after the reloads")
    d.stop()
    if "all connections finished" not in d.text():
        fail("no graceful-stop message:\n" + d.text()[-4000:])
    print("ok %d reloads (workers among 1-4, rings among 1, 2, 5, 8; %d different changes) under load with %d "
          "busy processes: %d streams (TCP and Unix, echo and forward), %d bytes each way all checked, %d churn "
          "round trips; no reset, no empty EOF; evfdd counted %d connections, all closed cleanly, as the "
          "clients saw" % (reloads, len(seen), len(busy.procs), nconns, total, round_trips,
                           sum(per_service.values())), flush=True)


def case_retire_queue():
    """Rings retire while one client per listener connects without pause. A retiring ring cancels its accepts,
    and a cancelled accept can swallow the kernel's wake-up for a connection arriving at that moment (one
    exclusive waiter is woken per connection): the connection would then wait in the listener's queue, with
    other rings' accepts armed, until the next connection woke one of them; with one client per listener, for
    ever. Every round trip must complete within seconds."""
    nreloads = 150 if SCALE == 1 else max(30, 150 // SCALE)
    port = free_port()
    sock = os.path.join(TMP, "q-uecho.sock")
    ctl = os.path.join(TMP, "ctl-queue.sock")
    def conf(rings):
        return ("[evfdd]\nworkers = 2\nrings = %d\ncontrol = %s\n\n[echo]\nlisten = 127.0.0.1:%d\n"
                "forward = echo\n\n[uecho]\nlisten = %s\nforward = echo\n" % (rings, ctl, port, sock))
    d = Daemon(conf(8))
    wait_topology(d, 2, 8, "at start")
    busy = Busy()
    try:
        churns = [Churn([addr], seed, stall=3, deadline=6) for seed, addr in ((11, ("127.0.0.1", port)),
                                                                              (12, sock))]
        for churn in churns:
            churn.diag = d.stall_report
        rnd = random.Random(5)
        rings = 8
        for k in range(nreloads):
            rings = rnd.choice([r for r in (1, 2, 5, 8) if r != rings])
            d.reload(conf(rings))
            for churn in churns:
                if churn.failures:
                    fail("after reload %d (rings -> %d): a round trip stalled (%s): %s\n%s"
                         % (k + 1, rings, churn.kinds, churn.failures[0], churn.diagnosis))
        trips = sum(churn.finish("rings retiring") for churn in churns)
    finally:
        busy.stop()
    d.stop()
    print("ok %d reloads retiring rings (among 1, 2, 5, 8) under %d round trips from one client per listener "
          "(TCP and Unix): none waited in a listener's queue" % (nreloads, trips), flush=True)


def case_rings_up_down():
    """rings 2 -> 6 -> 1 -> 3 under load, with workers 2 -> 1 while rings drain and back to 2: new rings
    accept, retired ones take no new connections, keep theirs (also when their loop retires) and go away
    once those end; nothing is lost."""
    raise_nofile(4096)
    ports = (free_port(), free_port())
    socks = (os.path.join(TMP, "r-uecho.sock"), os.path.join(TMP, "r-ufwd.sock"))
    ctl = os.path.join(TMP, "ctl-rings.sock")
    addrs = [("127.0.0.1", ports[0]), ("127.0.0.1", ports[1]), socks[0], socks[1]]
    d = Daemon(load_conf(2, 2, ports, socks, ctl))
    _, rings = wait_topology(d, 2, 2, "at start")
    first_ids = {r["id"] for r in rings}
    load = Load(addrs, 40)
    load.wait_progress("start")

    # Up: four new rings, spread over the two loops, and they take new connections.
    d.reload(load_conf(2, 6, ports, socks, ctl))
    _, rings = wait_topology(d, 2, 6, "after rings 2 -> 6")
    new_ids = {r["id"] for r in rings} - first_ids
    if len(new_ids) != 4:
        fail("rings 2 -> 6: ring ids before %s, after %s" % (sorted(first_ids), [r["id"] for r in rings]))
    load.wait_progress("rings 2 -> 6")
    held = []
    for _ in range(200):
        s = connect(addrs[len(held) % 2])
        s.sendall(b"hello")
        if recv_exact(s, 5) != b"hello":
            fail("rings 2 -> 6: a new connection was not echoed")
        held.append(s)
        if any(r["connections"] > 0 for r in d.json("rings")["rings"] if r["id"] in new_ids) and len(held) >= 20:
            break
    rings = d.json("rings")["rings"]
    if not any(r["connections"] > 0 for r in rings if r["id"] in new_ids):
        fail("rings 2 -> 6: %d new connections, none on a new ring: %s" % (len(held), json.dumps(rings)))

    # Down: five rings retire. Those with connections drain (no new ones) while the connections carry on.
    loaded = sum(1 for r in rings if r["connections"] > 0)
    d.reload(load_conf(2, 1, ports, socks, ctl))
    loops, rings = wait_topology(d, 2, 1, "after rings 6 -> 1")
    running = [r for r in rings if r["state"] == "running"]
    draining = [r for r in rings if r["state"] == "draining"]
    if len(running) + len(draining) != len(rings):
        fail("rings 6 -> 1: a ring in an unknown state: %s" % json.dumps(rings))
    # A retired ring without connections goes away at once (it may be caught on its way out).
    end = time.time() + 30 * SLOW
    while any(r["connections"] == 0 for r in draining):
        if time.time() > end:
            fail("rings 6 -> 1: a draining ring without connections stays: %s" % json.dumps(rings))
        time.sleep(0.05)
        rings = d.json("rings")["rings"]
        draining = [r for r in rings if r["state"] == "draining"]
    if not draining and loaded >= 2:
        fail("rings 6 -> 1: no ring is draining although %d rings carried connections: %s"
             % (loaded, json.dumps(rings)))
    ndraining = len(draining)
    load.wait_progress("rings 6 -> 1")
    for s in held:
        s.sendall(b"still")
        if recv_exact(s, 5) != b"still":
            fail("rings 6 -> 1: a connection on a retired ring stopped working")
    before = {r["id"]: r["connections"] for r in rings}
    late = []
    for i in range(10):
        s = connect(addrs[i % 4])
        s.sendall(b"late!")
        if recv_exact(s, 5) != b"late!":
            fail("rings 6 -> 1: a new connection was not echoed")
        late.append(s)
    rings = d.json("rings")["rings"]
    for r in rings:
        if r["state"] == "draining" and r["connections"] > before.get(r["id"], 0):
            fail("rings 6 -> 1: draining ring %s took new connections (%d -> %d)" % (r["id"], before[r["id"]],
                                                                                  r["connections"]))
    keep = [r for r in rings if r["state"] == "running"][0]
    if keep["connections"] < 10:
        fail("rings 6 -> 1: the running ring carries %d connections after 10 new ones: %s"
             % (keep["connections"], json.dumps(rings)))

    # One loop fewer while rings drain: the retiring loop hands its draining rings on, connections and all.
    d.reload(load_conf(1, 1, ports, socks, ctl))
    wait_topology(d, 1, 1, "after workers 2 -> 1 with draining rings")
    load.wait_progress("workers 2 -> 1 with draining rings")
    for s in held + late:
        s.sendall(b"moved")
        if recv_exact(s, 5) != b"moved":
            fail("workers 2 -> 1: a connection stopped working when its loop retired")
    n = load.finish("rings 6 -> 1, workers 2 -> 1")
    for s in held + late:
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            fail("rings 6 -> 1: data after half-close")
        s.close()
    # Their connections gone, the retired rings go away.
    end = time.time() + 30 * SLOW
    while True:
        rings = d.json("rings")["rings"]
        if len(rings) == 1 and rings[0]["state"] == "running":
            break
        if time.time() > end:
            fail("rings 6 -> 1: retired rings still listed after their connections ended: %s"
                 % json.dumps(rings))
        time.sleep(0.05)
    wait_topology(d, 1, 1, "after the draining rings ended")

    # Up again from one ring and one loop: the new rings take the load.
    d.reload(load_conf(2, 3, ports, socks, ctl))
    wait_topology(d, 2, 3, "after rings 1 -> 3, workers 1 -> 2")
    load = Load(addrs, 20)
    load.wait_progress("rings 1 -> 3")
    n += load.finish("rings 1 -> 3")
    for a in addrs:
        check_round_trip(a, "after rings 1 -> 3")
    d.stop()
    print("ok rings 2 -> 6 -> 1 -> 3 under load: new rings accepted, %d retired rings drained with their "
          "connections (also while their loop retired) then went away, %d bytes each way checked"
          % (ndraining, n), flush=True)


def service_counts(d, name):
    for s in d.json("services")["services"]:
        if s["name"] == name:
            return s
    fail("evfdctl services lists no [%s]" % name)


def case_services():
    """Add a service, remove one, change a forward target and an idle_timeout: new connections get the new
    configuration, old ones keep theirs and finish normally."""
    a, b = Echo(b"A"), Echo(b"B")
    echo, fwd, gone, added = free_port(), free_port(), free_port(), free_port()
    ctl = os.path.join(TMP, "ctl-svc.sock")
    head = "[evfdd]\nworkers = 2\nrings = 4\ncontrol = %s\n" % ctl
    conf1 = (head + "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
             "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n"
             "[gone]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (echo, fwd, a.addr[1], gone))
    conf2 = (head + "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\nidle_timeout = 300ms\n"
             "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n"
             "[added]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (echo, fwd, b.addr[1], added))
    d = Daemon(conf1)
    if backend_of(("127.0.0.1", fwd)) != b"A":
        fail("fwd does not reach backend A before the reload")
    try:
        connect(("127.0.0.1", added), timeout=2).close()
        fail("something already listens on the port of the service to be added")
    except ConnectionRefusedError:
        pass
    old_fwd = connect(("127.0.0.1", fwd))
    if old_fwd.recv(1) != b"A":
        fail("fwd: no greeting from backend A")
    old_gone = connect(("127.0.0.1", gone))
    old_gone.sendall(b"one")
    if recv_exact(old_gone, 3) != b"one":
        fail("service gone: no echo before the reload")
    old_idle = connect(("127.0.0.1", echo))
    old_idle.sendall(b"idle")
    if recv_exact(old_idle, 4) != b"idle":
        fail("echo: no echo before the reload")

    fwd_before = service_counts(d, "fwd")

    st = d.reload(conf2)
    if not st["last_reload"]["ok"]:
        fail("a valid reload was rejected: %s" % st["last_reload"])
    # fwd changed (a new backend), yet its counters carry on: the connection opened before is still open.
    fwd_after = service_counts(d, "fwd")
    if (fwd_before["total"] < 2 or fwd_after["total"] < fwd_before["total"] or fwd_after["open"] < 1 or
            fwd_after["bytes_down"] < fwd_before["bytes_down"]):
        fail("the changed service's counters started again: before %s, after %s" % (fwd_before, fwd_after))
    # The added service listens and serves.
    check_round_trip(("127.0.0.1", added), "added service")
    # The changed forward: new connections reach B, the open one still talks to A.
    if backend_of(("127.0.0.1", fwd)) != b"B":
        fail("after the reload, new connections through fwd do not reach backend B")
    old_fwd.sendall(b"still A")
    if recv_exact(old_fwd, 7) != b"still A":
        fail("the connection opened before the reload lost backend A")
    old_fwd.shutdown(socket.SHUT_WR)
    if old_fwd.recv(1) != b"":
        fail("the connection to backend A did not end normally")
    old_fwd.close()
    # The removed service's connection carries on and ends normally; its listener serves no one new.
    old_gone.sendall(b"two")
    if recv_exact(old_gone, 3) != b"two":
        fail("the removed service's open connection stopped working")
    try:
        s = connect(("127.0.0.1", gone), timeout=1)
        s.sendall(b"new")
        if s.recv(3) == b"new":
            fail("the removed service still serves new connections")
        s.close()
    except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
        pass
    old_gone.shutdown(socket.SHUT_WR)
    if old_gone.recv(1) != b"":
        fail("the removed service's connection did not end normally")
    old_gone.close()
    # idle_timeout = 300ms applies to new connections; the one opened before keeps the old (1 h) timeout.
    new_idle = connect(("127.0.0.1", echo))
    new_idle.sendall(b"x")
    if new_idle.recv(1) != b"x":
        fail("echo after the reload")
    how = closed_by_peer(new_idle, 10 * SLOW)
    if how == "data":
        fail("data on an idle connection")
    if how == "timeout":
        fail("a new connection was not closed by the reloaded idle_timeout (300ms)")
    new_idle.close()
    old_idle.sendall(b"awake")
    if recv_exact(old_idle, 5) != b"awake":
        fail("a connection opened before the reload was closed by the new idle_timeout")
    old_idle.close()
    d.stop()
    a.close()
    b.close()
    print("ok service changes: added service serves, removed one finishes its connections, forward target "
          "and idle_timeout apply to new connections only", flush=True)


def case_bad_config():
    """A broken file on reload, and a valid one that cannot be applied, change nothing; both are reported
    in the log, to systemd and to evfdctl."""
    a, b = Echo(b"A"), Echo(b"B")
    echo, fwd = free_port(), free_port()
    ctl = os.path.join(TMP, "ctl-bad.sock")
    notify = Notify()

    def conf(workers, target, extra=""):
        return ("[evfdd]\nworkers = %s\nrings = 4\ncontrol = %s\n"
                "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
                "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n%s" % (workers, ctl, echo, fwd, target, extra))

    d = Daemon(conf(2, a.addr[1]), env=notify.env())
    k = notify.wait(lambda m: "READY=1" in m.split("\n"), 0, "READY=1 at start")
    held = connect(("127.0.0.1", fwd))
    if held.recv(1) != b"A":
        fail("no greeting from backend A")

    # workers = 0 on line 2 (and a forward change that must not happen): SIGHUP.
    log_at = len(d.text())
    d.write(conf(0, b.addr[1]))
    d.hup()
    k = notify.wait(lambda m: "RELOADING=1" in m.split("\n"), k + 1, "RELOADING=1 for the broken file")
    k = notify.wait(lambda m: "READY=1" in m.split("\n"), k + 1, "READY=1 after the broken file")
    d.wait_log("%s:2: [evfdd] workers" % d.path, start=log_at)
    if "reload" not in d.text()[log_at:]:
        fail("no log line about the rejected reload:\n" + d.text()[log_at:])
    check_round_trip(("127.0.0.1", echo), "echo after a rejected reload")
    if backend_of(("127.0.0.1", fwd)) != b"A":
        fail("a rejected file changed the forward target")
    loops = d.json("loops")["loops"]
    if len(loops) != 2:
        fail("a rejected file (workers = 0) changed the loops: %s" % loops)
    held.sendall(b"ok?")
    if recv_exact(held, 3) != b"ok?":
        fail("an open connection stopped working after a rejected reload")
    st = d.status()
    last = st.get("last_reload")
    if not last or last["ok"] is not False or not any("%s:2: [evfdd] workers" % d.path in e
                                                      for e in last["errors"]):
        fail("status after a rejected reload: last_reload = %s" % last)

    # The same through evfdctl reload: exit 1, the error printed.
    out = d.ctl("reload")
    if out.returncode != 1 or "%s:2:" % d.path not in out.stdout + out.stderr:
        fail("evfdctl reload on a broken file: exit %d, stdout %r, stderr %r" % (out.returncode, out.stdout,
                                                                               out.stderr))
    notify.wait(lambda m: "READY=1" in m.split("\n"), k + 1, "READY=1 after evfdctl reload")

    # Valid, but one new listener's port is taken: nothing of it may apply, workers and target included.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    d.write(conf(3, b.addr[1], "[extra]\nlisten = 127.0.0.1:%d\nforward = echo\n" % taken.getsockname()[1]))
    out = d.ctl("reload")
    if out.returncode != 1 or "extra" not in out.stdout + out.stderr:
        fail("evfdctl reload with a listen address in use: exit %d, %r %r" % (out.returncode, out.stdout,
                                                                            out.stderr))
    if len(d.json("loops")["loops"]) != 2 or backend_of(("127.0.0.1", fwd)) != b"A":
        fail("a reload that failed to apply changed part of the configuration: loops %s, status %s"
             % (d.json("loops"), d.status()))
    if d.status()["last_reload"]["ok"] is not False:
        fail("a reload that failed to apply is reported ok")
    taken.close()

    # Fixed: applies.
    d.write(conf(3, b.addr[1]))
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("evfdctl reload on a good file: exit %d, %r %r" % (out.returncode, out.stdout, out.stderr))
    if not d.status()["last_reload"]["ok"] or backend_of(("127.0.0.1", fwd)) != b"B":
        fail("the fixed file did not apply: %s" % d.status())
    wait_topology(d, 3, 4, "after the fixed file")
    held.sendall(b"A??")
    if recv_exact(held, 3) != b"A??":
        fail("the connection opened before all these reloads stopped working")
    held.close()
    d.stop()
    a.close()
    b.close()
    print("ok broken file and unappliable file on reload: old configuration kept serving, error logged with "
          "file and line, READY=1 sent, evfdctl reload exit 1, last_reload ok=false; fixed file applied",
          flush=True)


def case_notify_order():
    """READY=1; per reload RELOADING=1 with MONOTONIC_USEC, then READY=1 and STATUS=; STOPPING=1 at the end.
    SIGHUPs sent during a reload are not lost: the last file is always in effect afterwards."""
    a, b, c = Echo(b"A"), Echo(b"B"), Echo(b"C")
    echo, fwd = free_port(), free_port()
    ctl = os.path.join(TMP, "ctl-notify.sock")
    notify = Notify()

    def conf(workers, target):
        return ("[evfdd]\nworkers = %s\nrings = 4\ncontrol = %s\n"
                "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
                "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (workers, ctl, echo, fwd, target))

    d = Daemon(conf(2, a.addr[1]), env=notify.env())
    k = notify.wait(lambda m: "READY=1" in m.split("\n"), 0, "READY=1 at start")
    if notify.count("RELOADING=1"):
        fail("RELOADING=1 before any reload")

    def one(text, ok):
        d.write(text)
        t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
        d.hup()
        r = notify.wait(lambda m: "RELOADING=1" in m.split("\n"), k + 1, "RELOADING=1")
        between = [m for _, m in notify.snapshot()[k + 1:r]]
        if any("READY=1" in m.split("\n") for m in between):
            fail("READY=1 before RELOADING=1: %r" % between)
        t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
        f = fields(notify.snapshot()[r][1])
        try:
            usec = int(f.get("MONOTONIC_USEC", ""))
        except ValueError:
            fail("RELOADING=1 without an integer MONOTONIC_USEC: %r" % notify.snapshot()[r][1])
        if not (t0 - 1) * 1e6 <= usec <= (t1 + 1) * 1e6:
            fail("MONOTONIC_USEC=%d is not CLOCK_MONOTONIC around the SIGHUP (%.0f .. %.0f)" % (usec, t0 * 1e6,
                                                                                              t1 * 1e6))
        y = notify.wait(lambda m: "READY=1" in m.split("\n"), r + 1, "READY=1 after RELOADING=1")
        msgs = notify.snapshot()
        ready = msgs[y][1]
        status = fields(ready).get("STATUS")
        if status is None and y + 1 < len(msgs):
            status = fields(msgs[y + 1][1]).get("STATUS")
        if status is None:
            s = notify.wait(lambda m: m.startswith("STATUS=") or "\nSTATUS=" in m, y + 1, "STATUS= after READY=1")
            status = fields(notify.snapshot()[s][1])["STATUS"]
        if ok and not d.status()["last_reload"]["ok"]:
            fail("a good file was rejected: %s" % d.status()["last_reload"])
        if not ok and d.status()["last_reload"]["ok"]:
            fail("a broken file was accepted")
        return y, status

    k, good = one(conf(3, b.addr[1]), True)
    if backend_of(("127.0.0.1", fwd)) != b"B":
        fail("the good reload did not apply")
    k, bad = one(conf("zero", c.addr[1]), False)
    if backend_of(("127.0.0.1", fwd)) != b"B":
        fail("the broken file changed the forward target")
    if good == bad:
        fail("STATUS= says the same after a good and a rejected reload: %r" % good)

    # SIGHUPs arriving during a reload: each burst rewrites the file between signals; the last one wins.
    targets = [a, b, c]
    rounds = 6
    for r in range(rounds):
        for w in (1, 4, 2, 3):
            d.write(conf(w, targets[(r + w) % 3].addr[1]))
            d.hup()
            time.sleep(random.random() * 0.003)
        final = targets[(r + 3) % 3]
        end = time.time() + 30 * SLOW
        while True:
            st = d.status()
            if (st["state"] == "running" and st["workers"] == 3 and len(d.json("loops")["loops"]) == 3
                    and backend_of(("127.0.0.1", fwd)) == final.greeting):
                break
            if time.time() > end:
                fail("burst %d of SIGHUPs: the last file (workers 3, backend %s) is not in effect: status %s, "
                     "backend %s\n%s" % (r + 1, final.greeting, st, backend_of(("127.0.0.1", fwd)), d.text()[-3000:]))
            time.sleep(0.05)
        wait_topology(d, 3, 4, "after burst %d of SIGHUPs" % (r + 1))
        if not st["last_reload"]["ok"]:
            fail("burst %d: the last reload failed: %s" % (r + 1, st["last_reload"]))
    # Every RELOADING=1 is answered by a READY=1 (a coalesced reload may still be finishing: wait for it).
    end = time.time() + 30 * SLOW
    while True:
        msgs = [m for _, m in notify.snapshot()]
        reloading = sum(1 for m in msgs if "RELOADING=1" in m.split("\n"))
        ready = sum(1 for m in msgs if "READY=1" in m.split("\n"))
        st = d.status()
        if ready == reloading + 1 and st["reloads"] == reloading and st["state"] == "running":
            break
        if time.time() > end:
            fail("%d RELOADING=1, %d READY=1 (one at start), status counts %d reloads: %r"
                 % (reloading, ready, st["reloads"], msgs))
        time.sleep(0.05)
    n = len(msgs)
    d.proc.send_signal(signal.SIGTERM)
    notify.wait(lambda m: "STOPPING=1" in m.split("\n"), n, "STOPPING=1 on SIGTERM")
    d.wait_exit()
    for x in (a, b, c):
        x.close()
    print("ok sd_notify: READY=1, RELOADING=1 + MONOTONIC_USEC then READY=1 + STATUS= for good (%r) and bad "
          "(%r) reloads, STOPPING=1; %d bursts of 4 SIGHUPs -> %d reloads, the last file always in effect"
          % (good, bad, rounds, reloading - 2), flush=True)


def case_watchdog():
    """WATCHDOG=1 every WATCHDOG_USEC/2 while every loop runs; none while one worker thread is frozen, though
    the main thread still answers; back once it runs again."""
    notify = Notify()
    echo = free_port()
    ctl = os.path.join(TMP, "ctl-wd.sock")
    conf = ("[evfdd]\nworkers = 2\nrings = 4\ncontrol = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
            % (ctl, echo))
    env = notify.env()
    env["WATCHDOG_USEC"] = "400000"
    # WATCHDOG_PID must be evfdd's own pid: the shell sets it to its pid and becomes evfdd.
    d = Daemon(conf, env=env, wrap=["sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"'])
    start = len(notify.snapshot())
    for _ in range(3):
        start = notify.wait(lambda m: "WATCHDOG=1" in m.split("\n"), start, "WATCHDOG=1") + 1
    check_round_trip(("127.0.0.1", echo), "echo with the watchdog on")

    loops = d.json("loops")["loops"]
    with Frozen(d, loops[0]["tid"]) as frozen:
        if not frozen.ok:
            d.stop()
            return
        # One WATCHDOG=1 may still be on its way from before the freeze; after that, none.
        time.sleep(1.0 * SLOW)
        frozen_from = len(notify.snapshot())
        time.sleep(2.0)
        st = d.status()
        if st["state"] != "running" or d.proc.poll() is not None:
            fail("the main thread did not answer while a worker loop was frozen: %s" % st)
        time.sleep(0.5)
        late = [m for _, m in notify.snapshot()[frozen_from:] if "WATCHDOG=1" in m.split("\n")]
        if late:
            fail("%d WATCHDOG=1 sent while worker loop %s (tid %d) was frozen" % (len(late), loops[0]["id"],
                                                                                 frozen.tid))
    thawed = len(notify.snapshot())
    notify.wait(lambda m: "WATCHDOG=1" in m.split("\n"), thawed, "WATCHDOG=1 after the loop resumed")
    check_round_trip(("127.0.0.1", echo), "echo after the frozen loop resumed")
    d.stop()
    print("ok watchdog: WATCHDOG=1 while loops run, none for 2.5 s while loop %s's thread was frozen (main "
          "thread answering), back after it resumed" % loops[0]["id"], flush=True)


def case_shutdown_timeout():
    """A shutdown_timeout shortened by a reload is honoured: a connection that ends in time ends normally, one
    that stays open is closed when the timeout expires (not before), and evfdd exits 0."""
    echo = free_port()
    ctl = os.path.join(TMP, "ctl-stop.sock")
    conf = ("[evfdd]\nworkers = 2\nrings = 2\ncontrol = %s\nshutdown_timeout = %s\n"
            "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n")
    d = Daemon(conf % (ctl, "5m", echo))
    st = d.reload(conf % (ctl, "3s", echo))
    if not st["last_reload"]["ok"]:
        fail("reload to shutdown_timeout = 3s rejected: %s" % st["last_reload"])
    stays = connect(("127.0.0.1", echo), timeout=60)
    ends = connect(("127.0.0.1", echo), timeout=60)
    for s in (stays, ends):
        s.sendall(b"before")
        if recv_exact(s, 6) != b"before":
            fail("echo before the stop")
    log_at = len(d.text())
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.wait_log("no longer accepting", start=log_at)
    stays.sendall(b"during")
    if recv_exact(stays, 6) != b"during":
        fail("an open connection stopped working when the graceful stop began")
    payload = random.randbytes(1 << 16)
    ends.sendall(payload)
    ends.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = ends.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    if got != payload:
        fail("a connection ending during the graceful stop got %d of %d bytes back" % (len(got), len(payload)))
    ends.close()
    if d.proc.poll() is not None:
        fail("evfdd exited while a connection was still open:\n" + d.text())
    try:
        end = stays.recv(1)
    except ConnectionResetError:
        end = b""
    closed_after = time.monotonic() - t0
    if end != b"":
        fail("data on the connection left open")
    if closed_after < 3.0 - 0.05:
        fail("the open connection was closed %.2f s after SIGTERM, before shutdown_timeout (3s)" % closed_after)
    stays.close()
    d.wait_exit(timeout=60)   # far less than the 5 minutes of the configuration it started with
    if "1 connection still open after shutdown_timeout (3000 ms)" not in d.text():
        fail("the shutdown_timeout message does not count the one connection left:\n" + d.text()[-3000:])
    print("ok shutdown_timeout from a reload: a finishing connection ended normally, the open one was closed "
          "%.1f s after SIGTERM, exit 0" % closed_after, flush=True)


def case_stop_stuck_loop():
    """A stop held up by something other than connections (here a worker thread frozen with ptrace) says so
    when shutdown_timeout expires, instead of blaming connections that are not there, and ends once the
    thread runs again."""
    echo = free_port()
    ctl = os.path.join(TMP, "ctl-stuck.sock")
    d = Daemon("[evfdd]\nworkers = 2\nrings = 8\ncontrol = %s\nshutdown_timeout = 1s\n"
               "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (ctl, echo))
    check_round_trip(("127.0.0.1", echo), "echo before the stop")
    loops = d.json("loops")["loops"]
    with Frozen(d, loops[0]["tid"]) as frozen:
        if not frozen.ok:
            d.stop()
            return
        at = len(d.text())
        d.proc.send_signal(signal.SIGTERM)
        d.wait_log("after shutdown_timeout", timeout=30, start=at)
        text = d.text()[at:]
        if "connection still open" in text or "connections still open" in text:
            fail("with no connection open, the stop blamed connections:\n" + text)
        # At least the frozen loop's rings are left (the others go when their loop gets to it: slowly in a
        # sanitizer build).
        m = re.search(r"no connection is open, but (\d+) rings are still shutting down", text)
        if not m or not loops[0]["rings"] <= int(m.group(1)) <= 8:
            fail("the shutdown_timeout message does not name the rings left (at least the %d of the frozen "
                 "loop):\n%s" % (loops[0]["rings"], text))
    d.wait_exit(timeout=60)
    print("ok a stop held up by a frozen loop: \"no connection is open, but %s rings are still shutting down\", "
          "exit 0 once it ran again" % m.group(1), flush=True)


CASES = (case_reload_under_load, case_retire_queue, case_rings_up_down, case_services, case_bad_config, case_notify_order,
         case_watchdog, case_shutdown_timeout, case_stop_stuck_loop)


def main():
    random.seed(1)
    run_cases(CASES, DAEMONS, TMP, clients=(CLIENTS,), before=ensure_tools)


main()
