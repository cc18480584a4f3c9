#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdd end to end: real processes, real sockets. Each case starts evfdd on its own configuration (ports
picked free), drives it as clients would, and checks what comes back byte for byte."""
import hashlib
import os
import random
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import json
import struct

from evfddtest import (EVFDCTL, EVFDD, SA_ENV, SCALE, TOP_BUILDDIR, DaemonLog, ThreadedServer,
                       closed_by_peer, expected_features, free_port, sanitizer_report)

NO_URING = os.path.join(TOP_BUILDDIR, "tests", "no-uring-exec")
TMP = tempfile.mkdtemp(prefix="evfdd-test-")
# Every evfdd serves a control socket, by default in $RUNTIME_DIRECTORY (or /run/evfdd for root): give the
# daemons of this test their own, so that they never meet another test's (make check runs tests in parallel).
os.environ["RUNTIME_DIRECTORY"] = TMP


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


# Every daemon started, killed at the end whatever happened: a failed case must not leave one running.
DAEMONS = []


class Daemon(DaemonLog):
    """evfdd on a configuration file; its stderr is kept for the checks."""

    def __init__(self, conf, wrap=None, preexec=None, wait_ready=True):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        # A control socket of its own, for the counters.
        self.control = self.path + ".ctl"
        if "\ncontrol =" not in conf:
            conf = conf.replace("[evfdd]\n", "[evfdd]\ncontrol = %s\n" % self.control, 1)
        with open(self.path, "w") as f:
            f.write(conf)
        self.log = open(self.path + ".log", "w+")
        cmd = (wrap or []) + [EVFDD, "-c", self.path]
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=self.log, preexec_fn=preexec)
        DAEMONS.append(self.proc)
        if wait_ready:
            self.wait_log("ready")

    def fail(self, msg):
        fail(msg)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """A graceful stop must end with exit status 0 and no sanitizer report."""
        self.proc.send_signal(sig)
        return self.wait_exit(sig, timeout)

    def services(self):
        """evfdctl --json services, by service name."""
        out = subprocess.run([EVFDCTL, "-s", self.control, "--json", "services"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            fail("evfdctl services: exit %d: %s\n%s" % (out.returncode, out.stderr, self.text()))
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def expect_counts(self, name, what, **want):
        """Service @name's counters, once it has no connection open, are @want: total, closed, and ends by
        reason (every reason not named must be 0)."""
        end = time.time() + 20 * (1 if SCALE == 1 else 3)
        while True:
            s = self.services()[name]
            if s["open"] == 0 or time.time() > end:
                break
            time.sleep(0.05)
        got = {"open": s["open"], "total": s["total"], "closed": s["closed"]}
        got.update({k: v for k, v in s["ends"].items() if v})
        want = dict({"open": 0}, **want)
        if got != want:
            fail("%s: [%s] counts %s, the clients saw %s" % (what, name, got, want))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def check_sanitizers(text):
    if sanitizer_report(text):
        fail("sanitizer report from evfdd:\n" + text)


def connect(addr, timeout=10):
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def round_trip(addr, payload):
    """Send everything, half-close, read the whole reply (the half-close round trip)."""
    s = connect(addr)
    err = []

    def writer():
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=writer)
    t.start()
    h = hashlib.sha256()
    n = 0
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    t.join()
    s.close()
    if err:
        raise err[0]
    return n, h.hexdigest()


def check_echo_many(addr, conns, size, what):
    results, errors = [], []

    def one(i):
        payload = random.randbytes(size + i)
        try:
            n, digest = round_trip(addr, payload)
            if n != len(payload) or digest != hashlib.sha256(payload).hexdigest():
                errors.append("connection %d: %d of %d bytes, hash %s" % (i, n, len(payload),
                                                                         "ok" if n == len(payload) else "-"))
            results.append(n)
        except OSError as e:
            errors.append("connection %d: %s" % (i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("%s: %d errors, first: %s" % (what, len(errors), errors[0]))
    print("ok %s: %d connections, %d bytes each way, every byte back by hash" % (what, conns, sum(results)),
          flush=True)


def services_conf(workers=2, rings=4, extra=""):
    echo, fwd = free_port(), free_port()
    conf = ("[evfdd]\nworkers = %d\nrings = %d\nshutdown_timeout = 5s\n%s\n"
            "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n\n"
            "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (workers, rings, extra, echo, fwd, echo))
    return conf, ("127.0.0.1", echo), ("127.0.0.1", fwd)


def case_check_option():
    out = subprocess.run([EVFDD, "-n"], capture_output=True, text=True)
    check_sanitizers(out.stderr)
    if out.returncode != 0 or out.stdout.strip() != "configuration OK":
        fail("evfdd -n on the embedded default: %d %r %r" % (out.returncode, out.stdout, out.stderr))
    bad = os.path.join(TMP, "bad.conf")
    with open(bad, "w") as f:
        f.write("[evfdd]\nworkers = 0\n[web]\nlisten = 127.0.0.1:1\n")
    out = subprocess.run([EVFDD, "-n", "-c", bad], capture_output=True, text=True)
    if out.returncode != 1 or (bad + ":2: [evfdd] workers") not in out.stderr or "forward" not in out.stderr:
        fail("evfdd -n on a bad file: %d %r" % (out.returncode, out.stderr))
    out = subprocess.run([EVFDD, "-c", os.path.join(TMP, "missing.conf")], capture_output=True, text=True)
    if out.returncode != 1 or "cannot open" not in out.stderr:
        fail("evfdd on a missing file: %d %r" % (out.returncode, out.stderr))
    print("ok -n, bad configuration, missing file", flush=True)


def check_pools_huge(d, rings):
    """Every ring's 16 MiB buffer pool asks for transparent huge pages (evfdd(8)): a mapping of the pool's size
    or more whose VmFlags say hg (MADV_HUGEPAGE), one per ring at least. Skipped where the kernel has no THP."""
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
        print("skip huge-page pools: the kernel has no transparent huge pages", flush=True)
        return
    pools, size = 0, 0
    with open("/proc/%d/smaps" % d.proc.pid) as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                size = hi - lo
            elif head and head[0] == "VmFlags:" and "hg" in head[1:] and size >= 16 << 20:
                pools += size // (16 << 20)
    if pools < rings:
        fail("%d of %d rings' buffer pools are marked MADV_HUGEPAGE in /proc/%d/smaps" % (pools, rings, d.proc.pid))


def case_tcp_bulk():
    conf, echo, fwd = services_conf()
    d = Daemon(conf)
    out = subprocess.run([EVFDCTL, "-s", d.control, "--json", "status"], capture_output=True, text=True, timeout=60)
    features = json.loads(out.stdout)["features"] if out.returncode == 0 else None
    if features is None or expected_features(features):
        fail("evfdctl status: %s" % (expected_features(features) if features is not None else out.stderr))
    check_echo_many(echo, 8, (4 << 20) // SCALE, "built-in echo")
    check_echo_many(fwd, 16, (4 << 20) // SCALE, "TCP forward to echo, half-close round trips")
    check_pools_huge(d, 4)
    d.stop()
    if "all connections finished" not in d.text():
        fail("no graceful-stop message:\n" + d.text())


def case_unix():
    echo, fwd_sock, echo_sock = free_port(), os.path.join(TMP, "fwd.sock"), os.path.join(TMP, "echo.sock")
    conf = ("[evfdd]\nworkers = 2\n[echo]\nlisten = %s\nforward = echo\n"
            "[fwd]\nlisten = %s\nforward = %s\n[tcp2unix]\nlisten = 127.0.0.1:%d\nforward = %s\n"
            % (echo_sock, fwd_sock, echo_sock, echo, fwd_sock))
    d = Daemon(conf)
    check_echo_many(fwd_sock, 8, (1 << 20) // SCALE, "Unix listener forwarding to a Unix backend")
    check_echo_many(("127.0.0.1", echo), 8, (1 << 20) // SCALE, "TCP -> Unix -> Unix echo")
    d.stop()
    # The socket files stay behind; the next evfdd replaces them, since nothing answers there any more.
    if not (stat.S_ISSOCK(os.lstat(fwd_sock).st_mode) and stat.S_ISSOCK(os.lstat(echo_sock).st_mode)):
        fail("the Unix listeners' socket files are gone after a stop")
    d = Daemon(conf.replace("127.0.0.1:%d" % echo, "127.0.0.1:%d" % free_port()))
    if d.text().count("replacing stale socket") != 2:
        fail("the stale socket files were not reported as replaced:\n" + d.text())
    check_echo_many(fwd_sock, 2, 1 << 12, "Unix listener on a replaced stale socket file")
    # A socket file that a live process answers on is left alone: that evfdd cannot start.
    clash = "[evfdd]\nworkers = 1\ncontrol = %s\n[echo]\nlisten = %s\nforward = echo\n" % (
        os.path.join(TMP, "clash.control"), echo_sock)
    path = os.path.join(TMP, "clash.conf")
    with open(path, "w") as f:
        f.write(clash)
    proc = subprocess.run([EVFDD, "-c", path], capture_output=True, text=True, timeout=30)
    check_sanitizers(proc.stderr)
    if proc.returncode != 1 or "is another evfdd or server running there?" not in proc.stderr:
        fail("a second evfdd on a live Unix socket: exit %d, %r" % (proc.returncode, proc.stderr))
    check_echo_many(fwd_sock, 2, 1 << 12, "the first evfdd still serves after the clash")
    d.stop()
    print("ok stale Unix socket files replaced; a live one refused", flush=True)


def case_activation():
    sa = shutil.which("systemd-socket-activate")
    if not sa:
        print("skip socket activation: systemd-socket-activate not installed", flush=True)
        return
    port, echo = free_port(), free_port()
    conf = "[evfdd]\nworkers = 2\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n[web]\nforward = 127.0.0.1:%d\n" \
        % (echo, echo)
    # systemd-socket-activate starts evfdd on the first connection, as systemd does.
    d = Daemon(conf, wrap=[sa, "-l", "127.0.0.1:%d" % port, "--fdname=web"] + SA_ENV, wait_ready=False)
    d.wait_log("Listening on")
    check_echo_many(("127.0.0.1", port), 4, 1 << 16, "socket-activated listener named by FileDescriptorName")
    if "using activated socket" not in d.text():
        fail("activated socket not used:\n" + d.text())
    d.stop()
    # An activated socket that names no service is an error that says what to do.
    conf2 = "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % free_port()
    path = os.path.join(TMP, "act2.conf")
    with open(path, "w") as f:
        f.write(conf2)
    port2 = free_port()
    proc = subprocess.Popen([sa, "-l", "127.0.0.1:%d" % port2, "--fdname=nosuch"] + SA_ENV + [EVFDD, "-c", path],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    try:
        connect(("127.0.0.1", port2), timeout=2).close()
    except OSError:
        pass
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail("evfdd kept running with an activated socket that names no service")
    check_sanitizers(err)
    if proc.returncode == 0 or "names no service" not in err:
        fail("activated socket naming no service: %d %r" % (proc.returncode, err))
    print("ok activated socket naming no service is refused", flush=True)


def case_backend_down():
    dead = free_port()
    port = free_port()
    d = Daemon("[evfdd]\nworkers = 1\n[down]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (port, dead))
    t0 = time.time()
    for _ in range(20):
        s = connect(("127.0.0.1", port))
        try:
            data = s.recv(10)
        except ConnectionResetError:
            data = b""
        if data:
            fail("got data from a dead backend")
        s.close()
    took = time.time() - t0
    if took > 10:
        fail("clients of a dead backend were closed slowly (%.1f s for 20)" % took)
    d.wait_log("backend connect failed")
    d.wait_log("no backend can take a connection")
    logged = d.text().count("backend connect failed") + d.text().count("no backend can take")
    if logged > 10:
        fail("a dead backend flooded the log: %d messages for 20 clients" % logged)
    if d.text().count("is down: 3 connect failures in a row") != 1:
        fail("the dead backend was not marked down once, after fall = 3 failures:\n" + d.text())
    # Passive health: fall (3) failed connects mark it down; until down_time has passed, the others are
    # closed at once as no_backend instead of each waiting for a refusal.
    d.expect_counts("down", "a dead backend", total=20, closed=0, connect_failed=3, no_backend=17)
    print("ok backend down: 20 clients closed in %.2f s, %d log lines (rate-limited), 3 counted as "
          "connect_failed, then the backend marked down and 17 as no_backend" % (took, logged), flush=True)
    d.stop()


def case_many_connections():
    n = 1000 if SCALE == 1 else 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4 * n + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    conf, echo, fwd = services_conf()
    d = Daemon(conf)
    socks = []
    for i in range(n):
        socks.append(connect(fwd))
    for i, s in enumerate(socks):
        s.sendall(b"%06d" % i)
    for i, s in enumerate(socks):
        got = b""
        while len(got) < 6:
            chunk = s.recv(6 - len(got))
            if not chunk:
                fail("connection %d closed early" % i)
            got += chunk
        if got != b"%06d" % i:
            fail("connection %d got %r" % (i, got))
    for s in socks:
        s.close()
    print("ok %d concurrent forwarded connections, each answered" % n, flush=True)
    d.stop()


def case_slow_reader():
    """A client that sends a lot and never reads: evfdd must not buffer it all."""
    conf, echo, fwd = services_conf(workers=1, rings=1)
    d = Daemon(conf)
    base = d.rss_kib()
    s = connect(fwd, timeout=2)
    sent = 0
    chunk = b"x" * 65536
    try:
        while sent < (256 << 20):
            sent += s.send(chunk)
    except (socket.timeout, BlockingIOError):
        pass
    grown = d.rss_kib() - base
    s.close()
    if sent >= (256 << 20):
        fail("a client that never reads could push 256 MiB through: no backpressure")
    if grown > 64 * 1024:
        fail("evfdd grew by %d KiB for one slow reader" % grown)
    print("ok slow reader: the client's writes stalled after %d KiB; evfdd grew %d KiB" % (sent >> 10, grown),
          flush=True)
    d.stop()


class Firehose(ThreadedServer):
    """A backend that sends without pause to every connection until it breaks."""

    def __init__(self):
        self.stop = False
        super().__init__(backlog=256)

    def _serve(self, c):
        chunk = b"f" * (1 << 16)
        try:
            while not self.stop:
                c.sendall(chunk)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        super().close()


def case_slow_readers_share():
    """Many clients that never read what a backend streams to them, all on one ring, whose buffers they would
    fill: the other connections of the ring still flow (slow readers get small receives, and what they hold
    beyond that goes to memory of their own, within a cap), and evfdd's memory stays bounded."""
    hose = Firehose()
    echo, down = free_port(), free_port()
    d = Daemon("[evfdd]\nworkers = 1\nrings = 1\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[down]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (echo, down, hose.port))
    base = d.rss_kib()
    readers = []
    for _ in range(40):
        s = connect(("127.0.0.1", down))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        readers.append(s)
    # Until every reader is stalled: evfdd's bytes down stop growing.
    last, end = -1, time.time() + 60
    while time.time() < end:
        now = d.services()["down"]["bytes_down"]
        if now == last:
            break
        last = now
        time.sleep(0.5)
    check_echo_many(("127.0.0.1", echo), 4, (1 << 20) // SCALE, "echo beside 40 stalled readers on one ring")
    grown = d.rss_kib() - base
    if grown > 96 * 1024:
        fail("evfdd grew by %d KiB for 40 slow readers (its buffers are 16 MiB, their copies at most as much)"
             % grown)
    for s in readers:
        s.close()
    hose.close()
    d.stop()
    print("ok 40 stalled readers on one ring (%d bytes sent to them) left the ring's other connections "
          "flowing; evfdd grew %d KiB" % (last, grown), flush=True)


def case_emfile():
    """Under a low RLIMIT_NOFILE accepting pauses and resumes; open connections carry on."""
    conf, echo, fwd = services_conf(workers=1, rings=1)

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    d = Daemon(conf, preexec=low_limit)
    # Connections made before the limit is reached must keep working while evfdd runs out of fds.
    first = [connect(fwd) for _ in range(4)]
    for s in first:
        s.sendall(b"ping")
        if s.recv(4) != b"ping":
            fail("a connection failed before the fd limit was reached")
    # Each forwarded connection takes three fds here (client, backend, and the echo service's side).
    held = [connect(fwd) for _ in range(40)]
    d.wait_log("pausing accepts")
    for s in first:
        s.sendall(b"pong")
        if s.recv(4) != b"pong":
            fail("an open connection stopped working under EMFILE")
    for s in first + held:
        s.close()
    # The closed connections free their fds over a few accept retries (100 ms each): wait for service to
    # come back, then check it fully.
    end = time.time() + 20
    while True:
        try:
            if round_trip(fwd, b"back?") == (5, hashlib.sha256(b"back?").hexdigest()):
                break
        except OSError:
            pass
        if time.time() > end:
            fail("accepting never resumed after EMFILE:\n" + d.text())
        time.sleep(0.2)
    check_echo_many(fwd, 4, 1 << 14, "after EMFILE, accepting resumed")
    d.stop()


def case_graceful_stop():
    """SIGTERM stops accepting but lets open connections finish; a second SIGTERM closes them now."""
    conf, echo, fwd = services_conf()
    d = Daemon(conf)
    held = connect(fwd)
    held.sendall(b"before")
    if held.recv(6) != b"before":
        fail("echo before the stop")
    d.proc.send_signal(signal.SIGTERM)
    d.wait_log("no longer accepting")
    held.sendall(b"during")
    if held.recv(6) != b"during":
        fail("an open connection stopped working during a graceful stop")
    # The listening socket stays open (an activated one belongs to systemd, which hands what queues there
    # to the next instance), but evfdd no longer serves new connections.
    late = connect(fwd, timeout=1)
    try:
        late.sendall(b"late")
        if late.recv(4) == b"late":
            fail("a new connection was served during a graceful stop")
    except (socket.timeout, ConnectionResetError):
        pass
    late.close()
    if d.proc.poll() is not None:
        fail("evfdd exited while a connection was still open")
    d.stop()   # the second SIGTERM
    if "closing every connection now" not in d.text():
        fail("no message for the second signal:\n" + d.text())
    # Cut by a forced stop: a reset, so that the client cannot take the cut for the end of the stream.
    try:
        got = held.recv(1)
        fail("after the second signal the client got %r instead of a reset" % got)
    except ConnectionResetError:
        pass
    held.close()
    print("ok graceful stop: open connection carried on, new ones not served, second signal reset it",
          flush=True)


def case_notify():
    """sd_notify: READY=1 once the relays run, STATUS= with the counts, STOPPING=1 on SIGTERM."""
    path = os.path.join(TMP, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    os.environ["NOTIFY_SOCKET"] = path
    try:
        conf, echo, fwd = services_conf()
        d = Daemon(conf)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    got = []
    while not any("READY=1" in m for m in got):
        got.append(sock.recv(4096).decode())
    while not any(m.startswith("STATUS=running") for m in got):
        got.append(sock.recv(4096).decode())
    d.proc.send_signal(signal.SIGTERM)
    while not any("STOPPING=1" in m for m in got):
        got.append(sock.recv(4096).decode())
    d.stop()
    sock.close()
    status = [m for m in got if m.startswith("STATUS=")][0]
    if "4 rings on 2 loops" not in status:
        fail("STATUS line: %r" % status)
    print("ok sd_notify: READY=1, %s, STOPPING=1" % status.strip(), flush=True)


def case_limits():
    """max_connections closes the excess at once; idle_timeout closes a silent connection."""
    echo, port = free_port(), free_port()
    d = Daemon("[evfdd]\nworkers = 1\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[lim]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\nmax_connections = 3\nidle_timeout = 300ms\n"
               % (echo, port, echo))
    held = [connect(("127.0.0.1", port)) for _ in range(3)]
    for s in held:
        s.sendall(b"x")
        if s.recv(1) != b"x":
            fail("a connection under max_connections did not work")
    extra = connect(("127.0.0.1", port), timeout=5)
    try:
        data = extra.recv(1)
    except ConnectionResetError:
        data = b""
    if data != b"":
        fail("the connection over max_connections was not closed")
    extra.close()
    d.wait_log("max_connections (3) reached")
    # Silent for longer than idle_timeout (swept once a second): evfdd closes them.
    t0 = time.time()
    for s in held:
        how = closed_by_peer(s, 5)
        if how == "data":
            fail("data on an idle connection")
        if how == "timeout":
            fail("an idle connection outlived idle_timeout by seconds")
        s.close()
    d.expect_counts("lim", "max_connections and idle_timeout", total=4, closed=0, limit=1, idle_timeout=3)
    # Their backend connections ended cleanly: evfdd closed them itself.
    d.expect_counts("echo", "max_connections and idle_timeout", total=3, closed=3)
    print("ok max_connections closes the excess; idle connections closed after %.1f s; counted as limit and "
          "idle_timeout" % (time.time() - t0), flush=True)
    d.stop()


class ResetBackend(ThreadedServer):
    """A TCP backend that reads a 5-byte request, answers with @reply, waits for @wait seconds and resets the
    connection (SO_LINGER {1, 0}); or, with @expect_reset, reads until the client's side resets it and notes
    what it saw ("reset", "eof" or an error) in self.seen."""

    def __init__(self, reply=b"", wait=0.2, expect_reset=False):
        self.reply, self.wait, self.expect_reset = reply, wait, expect_reset
        self.seen = []
        super().__init__(backlog=16)

    def _serve(self, c):
        try:
            got = b""
            while len(got) < 5:
                d = c.recv(5 - len(got))
                if not d:
                    break
                got += d
            if self.expect_reset:
                while c.recv(65536):
                    pass
                self.seen.append("eof")
                return
            c.sendall(self.reply)
            time.sleep(self.wait)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except ConnectionResetError:
            self.seen.append("reset")
        except OSError as e:
            self.seen.append(str(e))
        finally:
            c.close()


def read_until_end(s):
    """Everything @s receives, and how it ended: "eof" or "reset"."""
    got = b""
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                return got, "eof"
            got += d
    except ConnectionResetError:
        return got, "reset"


def case_resets():
    """A reset on one side reaches the other as a reset, after everything evfdd had received from the side
    that reset: a backend's abort is not a clean end for the client; a client's abort reaches the backend.
    A Unix client, which cannot be reset, sees its connection closed. The counters say which side did it."""
    reply = random.randbytes(300000)
    back = ResetBackend(reply)
    echo, fwd = free_port(), free_port()
    uds = os.path.join(TMP, "reset-fwd.sock")
    d = Daemon("[evfdd]\nworkers = 2\nrings = 2\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n"
               "[ufwd]\nlisten = %s\nforward = 127.0.0.1:%d\n" % (echo, fwd, back.port, uds, back.port))
    # The backend answers, then resets: the client gets every byte of the answer, then a reset. It reads
    # only after the reset, so the bytes wait in evfdd's buffers and socket queues when it happens.
    for i in range(3):
        s = connect(("127.0.0.1", fwd))
        s.sendall(b"hello")
        time.sleep(back.wait + 0.3)
        got, how = read_until_end(s)
        s.close()
        if got != reply or how != "reset":
            fail("backend reset %d: the client got %d of %d bytes (%s), then %s instead of a reset"
                 % (i, len(got), len(reply), "intact" if reply.startswith(got) else "corrupted", how))
    # The same through a Unix listener: no reset there, the client sees the end after every byte.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(uds)
    s.sendall(b"hello")
    got, how = read_until_end(s)
    s.close()
    if got != reply or how != "eof":
        fail("backend reset, Unix client: %d of %d bytes, then %s instead of the end" % (len(got), len(reply), how))
    d.expect_counts("fwd", "backend resets", total=3, closed=0, backend_reset=3)
    d.expect_counts("ufwd", "backend reset, Unix client", total=1, closed=0, backend_reset=1)

    # The client resets: the backend sees a reset, and the echo's client reset is counted too.
    back2 = ResetBackend(expect_reset=True)
    d2_conf = ("[evfdd]\nworkers = 1\n[cfwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n"
               "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (free_port(), back2.port, free_port()))
    d.stop()
    d = Daemon(d2_conf)
    cfwd = int(d2_conf.split("listen = 127.0.0.1:")[1].split("\n")[0])
    echo = int(d2_conf.split("listen = 127.0.0.1:")[2].split("\n")[0])
    for port in (cfwd, echo):
        s = connect(("127.0.0.1", port))
        s.sendall(b"hello")
        if port == echo and s.recv(5) != b"hello":
            fail("echo before the client's reset")
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    end = time.time() + 10
    while not back2.seen and time.time() < end:
        time.sleep(0.02)
    if back2.seen != ["reset"]:
        fail("client reset: the backend saw %s instead of a reset" % (back2.seen or "nothing"))
    d.expect_counts("cfwd", "client reset", total=1, closed=0, client_reset=1)
    d.expect_counts("echo", "client reset on the echo", total=1, closed=0, client_reset=1)
    d.stop()
    print("ok resets: a backend's reset reached TCP clients as a reset after all %d bytes it had sent (a Unix "
          "client saw them and the end), a client's reset reached the backend as a reset; counted as "
          "backend_reset and client_reset" % len(reply), flush=True)


def case_backend_slow_reader():
    """A backend that accepts and never reads: evfdd stops reading the client instead of buffering."""
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    port = free_port()
    d = Daemon("[evfdd]\nworkers = 1\n[slow]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n"
               % (port, backend.getsockname()[1]))
    base = d.rss_kib()
    s = connect(("127.0.0.1", port), timeout=2)
    peer, _ = backend.accept()
    sent = 0
    try:
        while sent < (256 << 20):
            sent += s.send(b"y" * 65536)
    except (socket.timeout, BlockingIOError):
        pass
    grown = d.rss_kib() - base
    if sent >= (256 << 20):
        fail("256 MiB went into a backend that never reads: no backpressure")
    if grown > 32 * 1024:
        fail("evfdd grew by %d KiB for one backend that never reads" % grown)
    s.close()
    peer.close()
    backend.close()
    print("ok backend slow to read: the client stalled after %d KiB; evfdd grew %d KiB" % (sent >> 10, grown),
          flush=True)
    d.stop()


def case_no_io_uring():
    """io_uring unavailable at start: one clear error naming the cause and the fix, exit 1."""
    conf = os.path.join(TMP, "nouring.conf")
    with open(conf, "w") as f:
        f.write("[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % free_port())
    for err, words in (("ENOSYS", "seccomp"), ("EPERM", "kernel.io_uring_disabled")):
        out = subprocess.run([NO_URING, err, EVFDD, "-c", conf], capture_output=True, text=True, timeout=20)
        if out.returncode == 77:
            print("skip io_uring unavailable: cannot install a seccomp filter here", flush=True)
            return
        check_sanitizers(out.stderr)
        if out.returncode != 1 or words not in out.stderr:
            fail("io_uring %s: exit %d, %r" % (err, out.returncode, out.stderr))
    print("ok io_uring unavailable (ENOSYS, EPERM): one clear error each, exit 1", flush=True)


def main():
    if not os.access(EVFDD, os.X_OK):
        fail("%s not built" % EVFDD)
    random.seed(1)
    cases = (case_check_option, case_tcp_bulk, case_unix, case_activation, case_backend_down,
             case_many_connections, case_slow_reader, case_backend_slow_reader, case_slow_readers_share, case_emfile,
             case_limits, case_resets, case_graceful_stop, case_notify, case_no_io_uring)
    names = sys.argv[1:]   # `python3 test-evfdd.py case_resets` runs only the cases named
    try:
        for case in cases:
            if not names or case.__name__ in names:
                case()
    finally:
        for proc in DAEMONS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(TMP, ignore_errors=True)


main()
