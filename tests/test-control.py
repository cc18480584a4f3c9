#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdd's control socket and evfdctl, end to end: the real daemon, with echo traffic flowing through it and
checked byte for byte the whole time, answers every io.evfdd and org.varlink.service method, refuses every
kind of bad call or bad client without disturbing the others, and moves rings and reloads on request."""
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

from evfddtest import (EVFDCTL, EVFDD, NOBODY, SA_ENV, SCALE, TOP_SRCDIR, DaemonLog, for_nobody, free_port,
                       sanitizer_report)

TMP = tempfile.mkdtemp(prefix="evfdd-control-test-")
os.chmod(TMP, 0o755)   # uid 65534 must reach the socket; the socket's own mode decides the rest
# The limits of daemon/varlink.h.
MAX_CLIENTS = 256
ROOT_RESERVED = 16
MAX_CLIENTS_PER_UID = 32
MAX_MESSAGE = 64 * 1024
MAX_OUTPUT = 4 * 1024 * 1024
REQUEST_TIMEOUT = 10
REPLY_TIMEOUT = 10
IDLE_TIMEOUT = 60
ACCEPT_PAUSE = 0.1
# Sanitizer builds run everything several times slower: waits that only guard against a hang grow with it.
SLOW = 1 if SCALE == 1 else 3


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok " + msg, flush=True)


def check_sanitizers(text):
    if sanitizer_report(text):
        fail("sanitizer report from evfdd:\n" + text)


# Every process started, killed at the end whatever happened: a failed case must not leave an evfdd behind.
PROCS = []


class Daemon(DaemonLog):
    """evfdd on a configuration file with a control socket; its stderr is kept for the checks."""

    def __init__(self, conf, wait_ready=True, preexec=None):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.write_conf(conf)
        self.log = open(self.path + ".log", "w+")
        self.proc = subprocess.Popen([EVFDD, "-c", self.path], stderr=self.log, stdout=self.log,
                                     preexec_fn=preexec)
        PROCS.append(self.proc)
        if wait_ready:
            self.wait_log("ready")

    def write_conf(self, conf):
        with open(self.path, "w") as f:
            f.write(conf)

    def fail(self, msg):
        fail(msg)

    def wait_log(self, what, timeout=20, start=0):
        DaemonLog.wait_log(self, what, timeout, start)

    def wait_exit(self, timeout=30):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("evfdd did not exit:\n" + self.text())
        check_sanitizers(self.text())
        return rc

    def stop(self):
        """A graceful stop must end with exit status 0 and no sanitizer report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit()
        if rc != 0:
            fail("evfdd exited with %d after SIGTERM:\n%s" % (rc, self.text()[-20000:]))

    def alive(self):
        if self.proc.poll() is not None:
            fail("evfdd exited with %d:\n%s" % (self.proc.returncode, self.text()[-20000:]))


class Closed(Exception):
    pass


def unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        fail("a reply repeats a key: %r" % keys)
    return dict(pairs)


class Client:
    """A Varlink client: one JSON object and a NUL per message, each way."""

    def __init__(self, path, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send_raw(self, data):
        self.s.sendall(data)

    def send(self, method, params=None, **flags):
        msg = {"method": method}
        if params is not None:
            msg["parameters"] = params
        msg.update(flags)
        self.send_raw(json.dumps(msg).encode() + b"\0")

    def recv(self):
        """The next reply, which must be strict UTF-8 and JSON (json.loads alone would let surrogates through)."""
        while b"\0" not in self.buf:
            try:
                d = self.s.recv(1 << 16)
            except ConnectionResetError:
                d = b""
            if not d:
                raise Closed()
            self.buf += d
        msg, self.buf = self.buf.split(b"\0", 1)
        try:
            text = msg.decode("utf-8")
        except UnicodeDecodeError as e:
            fail("a reply is not valid UTF-8 (%s): %r" % (e, msg[:200]))
        return json.loads(text, object_pairs_hook=unique_keys)

    def call(self, method, params=None, **flags):
        self.send(method, params, **flags)
        return self.recv()

    def closed_by_peer(self):
        """True once the daemon has closed the connection (EOF or reset), reading whatever was queued."""
        try:
            while True:
                d = self.s.recv(1 << 16)
                if not d:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def expect_closed(c, what):
    """The daemon must close the connection without answering."""
    try:
        d = c.s.recv(1 << 16)
    except ConnectionResetError:
        d = b""
    except socket.timeout:
        fail("evfdd kept the connection open after %s" % what)
    if d:
        fail("evfdd answered %s instead of closing the connection: %r" % (what, d[:300]))


def hung_up(sock, timeout):
    """Wait up to @timeout seconds for the peer to close @sock, whatever is still unread; True if it did."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(p.poll(timeout * 1000))


def expect_reply(r, what):
    if "error" in r or not isinstance(r.get("parameters"), dict):
        fail("%s: expected a reply, got %r" % (what, r))
    return r["parameters"]


def expect_error(r, error, params, what):
    if r.get("error") != error or r.get("parameters") != params:
        fail("%s: expected %s %r, got %r" % (what, error, params, r))


def recv_exactly(s, n):
    got = bytearray()
    while len(got) < n:
        d = s.recv(n - len(got))
        if not d:
            raise Closed()
        got += d
    return bytes(got)


class Traffic:
    """Echo connections streaming random data through evfdd the whole time, every byte checked."""

    def __init__(self, addr, conns):
        self.stop_ev = threading.Event()
        self.errors = []
        self.bytes = [0] * conns
        self.threads = [threading.Thread(target=self.run, args=(addr, i), daemon=True) for i in range(conns)]
        for t in self.threads:
            t.start()

    def run(self, addr, i):
        rnd = random.Random(i)
        try:
            s = socket.create_connection(addr, timeout=60)
            while not self.stop_ev.is_set():
                data = rnd.randbytes(rnd.randrange(1, 32768))
                s.sendall(data)
                if recv_exactly(s, len(data)) != data:
                    self.errors.append("connection %d: the echo differs" % i)
                    return
                self.bytes[i] += len(data)
                time.sleep(0.001)   # steady, not flat out: the machine is shared with the other tests
            s.close()
        except (OSError, Closed) as e:
            self.errors.append("connection %d: %r" % (i, e))

    def total(self):
        return sum(self.bytes)

    def check(self):
        if self.errors:
            fail("echo traffic: %s" % self.errors[0])

    def progress(self, what):
        """Wait until every connection has moved more data: all of them are alive and served."""
        before = list(self.bytes)
        end = time.time() + 60
        while any(b <= a for a, b in zip(before, self.bytes)):
            self.check()
            if time.time() > end:
                fail("echo traffic stalled %s: %r -> %r" % (what, before, self.bytes))
            time.sleep(0.01)
        self.check()

    def finish(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(60)
        self.check()


def evfdctl(args, env_socket=None, user=None, timeout=150):
    env = dict(os.environ)
    env.pop("EVFDCTL_SOCKET", None)
    if env_socket:
        env["EVFDCTL_SOCKET"] = env_socket
    kw = {}
    prog = EVFDCTL
    if user is not None:
        # A copy uid @user can run: the build tree may be in a directory only root can enter.
        prog = for_nobody(EVFDCTL)
        kw = {"user": user, "group": user, "extra_groups": [], "cwd": "/"}
    out = subprocess.run([prog] + args, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    check_sanitizers(out.stderr)
    return out


def conf_text(ctl, echo_port, fwd_port, workers=2, rings=4):
    return ("[evfdd]\nworkers = %d\nrings = %d\ncontrol = %s\nlog_level = debug\nshutdown_timeout = 5s\n\n"
            "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n\n"
            "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (workers, rings, ctl, echo_port, fwd_port,
                                                                        echo_port))


# ---- the cases; each takes the running daemon, its control path and the traffic --------------------------

def case_service(d, ctl, traffic):
    c = Client(ctl)
    info = expect_reply(c.call("org.varlink.service.GetInfo"), "GetInfo")
    version = subprocess.run([EVFDD, "-V"], capture_output=True, text=True).stdout.split()[-1]
    want = {"vendor": "evfdd", "product": "evfdd", "version": version, "url": "",
            "interfaces": ["org.varlink.service", "io.evfdd"]}
    if info != want:
        fail("GetInfo: %r, expected %r" % (info, want))
    with open(os.path.join(TOP_SRCDIR, "daemon", "io.evfdd.varlink")) as f:
        source = f.read()
    desc = expect_reply(c.call("org.varlink.service.GetInterfaceDescription", {"interface": "io.evfdd"}),
                        "GetInterfaceDescription io.evfdd")
    if desc != {"description": source}:
        fail("GetInterfaceDescription(io.evfdd) differs from daemon/io.evfdd.varlink: %r" % desc)
    desc = expect_reply(c.call("org.varlink.service.GetInterfaceDescription",
                               {"interface": "org.varlink.service"}), "GetInterfaceDescription service")
    if "interface org.varlink.service\n" not in desc["description"] or "method GetInfo()" not in desc["description"]:
        fail("GetInterfaceDescription(org.varlink.service): %r" % desc)
    expect_error(c.call("org.varlink.service.GetInterfaceDescription", {"interface": "io.nosuch"}),
                 "org.varlink.service.InterfaceNotFound", {"interface": "io.nosuch"}, "unknown interface")
    expect_error(c.call("org.varlink.service.GetInterfaceDescription"),
                 "org.varlink.service.InvalidParameter", {"parameter": "interface"}, "missing interface")
    expect_error(c.call("org.varlink.service.GetInterfaceDescription", {"interface": 7}),
                 "org.varlink.service.InvalidParameter", {"parameter": "interface"}, "mistyped interface")
    expect_error(c.call("org.varlink.service.GetInfo", {"extra": 1}),
                 "org.varlink.service.InvalidParameter", {"parameter": "extra"}, "GetInfo with a parameter")
    expect_error(c.call("org.varlink.service.Nope"), "org.varlink.service.MethodNotFound",
                 {"method": "org.varlink.service.Nope"}, "unknown org.varlink.service method")
    c.close()
    ok("org.varlink.service: GetInfo, GetInterfaceDescription (the io.evfdd text is daemon/io.evfdd.varlink), "
       "InterfaceNotFound, InvalidParameter, MethodNotFound")


def case_read_methods(d, ctl, traffic):
    c = Client(ctl)
    st = expect_reply(c.call("io.evfdd.Status"), "Status")
    for key in ("version", "pid", "uptime_usec", "config", "state", "workers", "rings", "reloads",
                "last_reload", "totals"):
        if key not in st:
            fail("Status lacks %s: %r" % (key, st))
    if st["pid"] != d.proc.pid or st["workers"] != 2 or st["rings"] != 4 or st["state"] != "running" or \
            st["config"] != d.path:
        fail("Status: %r (pid %d, config %s)" % (st, d.proc.pid, d.path))
    if st["totals"]["open"] < 2 * len(traffic.bytes) or st["totals"]["bytes_up"] <= 0:
        fail("Status totals do not show the echo traffic: %r" % st["totals"])
    loops = expect_reply(c.call("io.evfdd.Loops"), "Loops")["loops"]
    rings = expect_reply(c.call("io.evfdd.Rings"), "Rings")["rings"]
    svcs = expect_reply(c.call("io.evfdd.Services", {}), "Services")["services"]
    if len(loops) != 2 or sum(lp["rings"] for lp in loops) != 4:
        fail("Loops: %r" % loops)
    loop_ids = {lp["id"] for lp in loops}
    if len(rings) != 4 or any(r["loop"] not in loop_ids for r in rings):
        fail("Rings: %r (loops %r)" % (rings, loop_ids))
    if sum(r["connections"] for r in rings) < 2 * len(traffic.bytes):
        fail("Rings do not carry the echo connections: %r" % rings)
    names = sorted(s["name"] for s in svcs)
    if names != ["echo", "fwd"] or any(s["total"] < len(traffic.bytes) or s["bytes_up"] <= 0 for s in svcs):
        fail("Services: %r" % svcs)
    for method in ("Status", "Loops", "Rings", "Services"):
        expect_error(c.call("io.evfdd." + method, {"bogus": True}), "org.varlink.service.InvalidParameter",
                     {"parameter": "bogus"}, method + " with an unknown parameter")
    c.close()
    ok("Status, Loops, Rings, Services: %d loops, %d rings, the traffic's %d connections counted"
       % (len(loops), len(rings), st["totals"]["open"]))


def case_call_errors(d, ctl, traffic):
    c = Client(ctl)
    inval = "org.varlink.service.InvalidParameter"
    expect_error(c.call("io.evfdd.Nope"), "org.varlink.service.MethodNotFound", {"method": "io.evfdd.Nope"},
                 "unknown method")
    expect_error(c.call("io.nosuch.Method"), "org.varlink.service.InterfaceNotFound", {"interface": "io.nosuch"},
                 "method of an unknown interface")
    expect_error(c.call("io.evfdd.Status", more=True), inval, {"parameter": "more"}, "more: true")
    expect_error(c.call("io.evfdd.Status", [1]), inval, {"parameter": "parameters"}, "parameters not an object")
    for params, bad in (({}, "ring"), ({"loop": 1}, "ring"), ({"ring": 0}, "loop"),
                        ({"ring": "0", "loop": 1}, "ring"), ({"ring": 0, "loop": -1}, "loop"),
                        ({"ring": 1.5, "loop": 1}, "ring"), ({"ring": 0, "loop": None}, "loop"),
                        ({"ring": 0, "loop": 1, "when": "now"}, "when"), ({"ring": True, "loop": 1}, "ring")):
        expect_error(c.call("io.evfdd.MoveRing", params), inval, {"parameter": bad}, "MoveRing %r" % params)
    expect_error(c.call("io.evfdd.MoveRing", {"ring": 9999, "loop": 1}), "io.evfdd.NoSuchRing", {"ring": 9999},
                 "MoveRing to a missing ring")
    rings = expect_reply(c.call("io.evfdd.Rings"), "Rings")["rings"]
    expect_error(c.call("io.evfdd.MoveRing", {"ring": rings[0]["id"], "loop": 9999}), "io.evfdd.NoSuchLoop",
                 {"loop": 9999}, "MoveRing to a missing loop")
    expect_error(c.call("io.evfdd.Reload", {"force": True}), inval, {"parameter": "force"}, "Reload with a param")
    # oneway: no reply at all; the next call's reply is the next message.
    c.send("io.evfdd.Status", oneway=True)
    c.send("io.evfdd.Nope", oneway=True)
    info = c.call("org.varlink.service.GetInfo")
    expect_reply(info, "GetInfo after oneway calls")
    # Pipelined calls, several in one write, answered in order.
    batch = [("io.evfdd.Status", None), ("io.evfdd.Nope", None), ("org.varlink.service.GetInfo", None),
             ("io.evfdd.MoveRing", {"ring": 9999, "loop": 1}), ("io.evfdd.Rings", None)] * 20
    c.send_raw(b"".join(json.dumps({"method": m, "parameters": p or {}}).encode() + b"\0" for m, p in batch))
    for m, p in batch:
        r = c.recv()
        if m == "io.evfdd.Status" and "pid" not in r.get("parameters", {}) or \
                m == "io.evfdd.Nope" and r.get("error") != "org.varlink.service.MethodNotFound" or \
                m == "org.varlink.service.GetInfo" and r.get("parameters", {}).get("vendor") != "evfdd" or \
                m == "io.evfdd.MoveRing" and r.get("error") != "io.evfdd.NoSuchRing" or \
                m == "io.evfdd.Rings" and "rings" not in r.get("parameters", {}):
            fail("pipelined %s answered out of order or wrongly: %r" % (m, r))
    # A long but valid message (under 64 KiB) is fine.
    big = {"method": "io.evfdd.Status", "parameters": {"x" * 100: "y" * (MAX_MESSAGE - 400)}}
    c.send_raw(json.dumps(big).encode() + b"\0")
    expect_error(c.recv(), inval, {"parameter": "x" * 100}, "a long message")
    c.close()
    ok("call errors: MethodNotFound, InterfaceNotFound, InvalidParameter (more, parameters, each MoveRing "
       "parameter), NoSuchRing, NoSuchLoop; oneway answers nothing; %d pipelined calls in order" % len(batch))


def case_bad_messages(d, ctl, traffic):
    """Each bad message closes its own connection, logged at debug naming the peer; others carry on."""
    bystander = Client(ctl)
    cases = [(b"{nope\0", "malformed JSON"), (b"[1, 2]\0", "not an object"),
             (b'{"parameters": {}}\0', "no method"), (b'{"method": 5}\0', "method not a string"),
             (b'{"method": "io.evfdd.Status"} trailing\0', "trailing bytes"),
             (b'{"method": "io.evfdd.\xff\xfe"}\0', "invalid UTF-8"), (b"\0", "empty message"),
             (b"x" * (MAX_MESSAGE + 10), "a message over 64 KiB without its NUL"),
             (b'{"method": "io.evfdd.Status", "parameters": {"a": "' + b"b" * MAX_MESSAGE + b'"}}\0',
              "a message over 64 KiB")]
    for data, what in cases:
        c = Client(ctl)
        try:
            c.send_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if not c.closed_by_peer():
            fail("evfdd kept a connection open after %s" % what)
        c.close()
        expect_reply(bystander.call("io.evfdd.Status"), "Status after " + what)
    text = d.text()
    me = "pid %d uid %d" % (os.getpid(), os.geteuid())
    for words in ("sent malformed JSON", "is not a call", "without a NUL"):
        if not re.search(r"debug: control socket: client %s [^\n]*%s" % (me, re.escape(words)), text):
            fail("no debug line naming the peer (%s) for '%s':\n%s" % (me, words, text[-5000:]))
    # Half a message, then silence: the daemon keeps serving the others, and the rest of the message, when
    # it comes, is answered.
    half = Client(ctl)
    half.send_raw(b'{"method": "io.evfdd.St')
    for _ in range(20):
        expect_reply(bystander.call("io.evfdd.Rings"), "Rings while a client sent half a message")
    half.send_raw(b'atus"}\0')
    expect_reply(half.recv(), "the half-sent message, completed")
    half.close()
    bystander.close()
    traffic.check()
    ok("bad messages: %d kinds each closed only their connection (debug lines name the peer); a half-sent "
       "message held nobody up" % len(cases))


def case_never_reads(d, ctl, traffic):
    """A client that pipelines calls and never reads its replies is closed past 4 MiB of pending output."""
    c = Client(ctl, timeout=60)
    one = json.dumps({"method": "io.evfdd.Rings"}).encode() + b"\0"
    reply_size = len(json.dumps(expect_reply(Client(ctl).call("io.evfdd.Rings"), "Rings")))
    n = 4 * MAX_OUTPUT // reply_size + 1000
    sent = [0]

    def writer():
        try:
            for _ in range(n // 100):
                c.s.sendall(one * 100)
                sent[0] += 100
        except OSError:
            pass

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    d.wait_log("does not read its replies", timeout=60)
    # Meanwhile everyone else is served.
    other = Client(ctl)
    for _ in range(10):
        expect_reply(other.call("io.evfdd.Status"), "Status while a client does not read")
    other.close()
    t.join(60)
    if sent[0] >= n:
        fail("a client that never reads could send %d calls (%d bytes of replies): evfdd buffered them all"
             % (sent[0], sent[0] * reply_size))
    got = 0
    try:
        while True:
            chunk = c.s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    except ConnectionResetError:
        pass
    c.close()
    traffic.check()
    ok("a client that never reads: closed after %d of %d calls, %d KiB of replies were queued for it"
       % (sent[0], n, got >> 10))


def case_too_many_clients(d, ctl, traffic):
    n = MAX_CLIENTS + 44
    clients = [Client(ctl) for _ in range(n)]
    served = refused = 0
    for c in clients:
        try:
            c.send("org.varlink.service.GetInfo")
            expect_reply(c.recv(), "GetInfo with %d clients" % n)
            served += 1
        except (Closed, BrokenPipeError, ConnectionResetError):
            refused += 1
    if served > MAX_CLIENTS or refused < n - MAX_CLIENTS or served < MAX_CLIENTS // 2:
        fail("%d clients at once: %d served, %d refused (limit %d)" % (n, served, refused, MAX_CLIENTS))
    d.wait_log("the limit; refused pid")
    for c in clients:
        c.close()
    # Once they are gone, new clients are served again.
    end = time.time() + 30
    while True:
        try:
            expect_reply(Client(ctl).call("io.evfdd.Status"), "Status after the crowd left")
            break
        except (Closed, BrokenPipeError, ConnectionResetError):
            if time.time() > end:
                fail("new clients still refused after the crowd left")
            time.sleep(0.05)
    warnings = d.text().count("the limit; refused pid")
    if warnings > 10:
        fail("the client limit flooded the log: %d warnings" % warnings)
    traffic.check()
    ok("%d clients at once: %d served, %d refused, %d warnings logged (rate-limited)"
       % (n, served, refused, warnings))


def case_concurrent(d, ctl, traffic):
    n = 100
    errors = []
    start = threading.Barrier(n)

    def one(i):
        try:
            c = Client(ctl)
            start.wait(30)
            for _ in range(5):
                st = expect_reply(c.call("io.evfdd.Status"), "Status")
                rings = expect_reply(c.call("io.evfdd.Rings"), "Rings")["rings"]
                if st["pid"] != d.proc.pid or len(rings) != 4:
                    errors.append("client %d: %r %r" % (i, st, rings))
            c.close()
        except BaseException as e:  # noqa: BLE001 - reported below (fail() in a thread is a SystemExit)
            errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        fail("%d concurrent clients: %d errors, first: %s" % (n, len(errors), errors[0]))
    traffic.check()
    ok("%d concurrent clients, 5 Status and 5 Rings calls each, all answered" % n)


def case_gone_before_answer(d, ctl, traffic):
    """A client that leaves before its MoveRing or Reload is answered: the late answer goes nowhere."""
    rings = expect_reply(Client(ctl).call("io.evfdd.Rings"), "Rings")["rings"]
    for _ in range(10):
        c = Client(ctl)
        c.send("io.evfdd.MoveRing", {"ring": rings[0]["id"], "loop": rings[0]["loop"]})
        c.close()
        c = Client(ctl)
        c.send("io.evfdd.Reload")
        c.close()
    c = Client(ctl, timeout=150)
    expect_reply(c.call("io.evfdd.Reload"), "Reload after abandoned calls")
    expect_reply(c.call("io.evfdd.Status"), "Status after abandoned calls")
    c.close()
    d.alive()
    traffic.check()
    ok("clients gone before their MoveRing or Reload was answered: the daemon carries on")


def case_permission(d, ctl, traffic):
    if os.geteuid() != 0:
        print("skip PermissionDenied: the test must run as root to act as uid %d" % NOBODY, flush=True)
        return
    mode = stat.S_IMODE(os.stat(ctl).st_mode)
    if mode != 0o660:
        fail("control socket mode %o, expected 660" % mode)
    # At 0660, root:root, nobody cannot even connect.
    out = evfdctl(["-s", ctl, "status"], user=NOBODY)
    if out.returncode != 2 or "run evfdctl as root" not in out.stderr:
        fail("evfdctl as nobody on a 0660 socket: %d %r" % (out.returncode, out.stderr))
    os.chmod(ctl, 0o666)  # let nobody in, to see the daemon's own check
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
                c = Client(ctl)
                got = [c.call("io.evfdd.MoveRing", {"ring": 0, "loop": 1}), c.call("io.evfdd.Reload"),
                       c.call("io.evfdd.Status"), c.call("io.evfdd.MoveRing", {"bad": 1})]
                os.write(w, json.dumps(got).encode())
                os._exit(0)
            except BaseException as e:  # noqa: BLE001 - the parent reports it
                os.write(w, json.dumps(repr(e)).encode())
                os._exit(1)
        os.close(w)
        data = b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        got = json.loads(data or b"null")
        if status != 0 or not isinstance(got, list):
            fail("the uid %d client failed: %r" % (NOBODY, got))
        denied = "io.evfdd.PermissionDenied"
        expect_error(got[0], denied, {"method": "io.evfdd.MoveRing"}, "MoveRing as nobody")
        expect_error(got[1], denied, {"method": "io.evfdd.Reload"}, "Reload as nobody")
        st = expect_reply(got[2], "Status as nobody")
        expect_error(got[3], denied, {"method": "io.evfdd.MoveRing"}, "MoveRing as nobody, bad parameters")
        if st["reloads"] != expect_reply(Client(ctl).call("io.evfdd.Status"), "Status")["reloads"]:
            fail("a denied Reload reloaded")
        out = evfdctl(["-s", ctl, "reload"], user=NOBODY)
        if out.returncode != 1 or "permission denied" not in out.stderr:
            fail("evfdctl reload as nobody: %d %r" % (out.returncode, out.stderr))
        out = evfdctl(["-s", ctl, "rings"], user=NOBODY)
        if out.returncode != 0 or "STATE" not in out.stdout:
            fail("evfdctl rings as nobody: %d %r %r" % (out.returncode, out.stdout, out.stderr))
    finally:
        os.chmod(ctl, 0o660)
    ok("uid %d: reading allowed; MoveRing and Reload get PermissionDenied; evfdctl exits 1 (denied) or 2 "
       "(no access to the 0660 socket)" % NOBODY)


def case_evfdctl(d, ctl, traffic):
    out = evfdctl(["-s", ctl, "status"])
    if out.returncode != 0 or not re.search(r"^pid: +%d$" % d.proc.pid, out.stdout, re.M) or \
            not re.search(r"^state: +running$", out.stdout, re.M) or \
            not re.search(r"^totals\.bytes_up: +\d+ \(\d+\.\d [KMGT]iB\)$", out.stdout, re.M):
        fail("evfdctl status: %d %r %r" % (out.returncode, out.stdout, out.stderr))
    for cmd, header, rows in (("loops", "ID", 2), ("rings", "LOOP", 4), ("services", "BYTES_UP", 2)):
        out = evfdctl(["-s", ctl, cmd])
        lines = out.stdout.splitlines()
        if out.returncode != 0 or len(lines) != rows + 1 or header not in lines[0].split():
            fail("evfdctl %s: %d %r %r" % (cmd, out.returncode, out.stdout, out.stderr))
        if cmd != "services":   # (services cells hold spaces: "1234 (1.2 KiB)")
            check_aligned(cmd, lines)
        js = evfdctl(["-s", ctl, "--json", cmd])
        if js.returncode != 0 or len(json.loads(js.stdout)[cmd]) != rows:
            fail("evfdctl --json %s: %d %r" % (cmd, js.returncode, js.stdout))
    js = evfdctl([cmd, "--json"], env_socket=ctl)   # options after the command; $EVFDCTL_SOCKET
    if js.returncode != 0 or "services" not in json.loads(js.stdout):
        fail("evfdctl services --json via EVFDCTL_SOCKET: %d %r %r" % (js.returncode, js.stdout, js.stderr))
    js = evfdctl(["-s", ctl, "--json", "status"], env_socket=os.path.join(TMP, "nosuch"))   # -s wins
    if js.returncode != 0 or json.loads(js.stdout)["pid"] != d.proc.pid:
        fail("evfdctl -s over EVFDCTL_SOCKET: %d %r %r" % (js.returncode, js.stdout, js.stderr))
    out = evfdctl(["-s", ctl, "move", "9999", "1"])
    if out.returncode != 1 or "no ring 9999" not in out.stderr:
        fail("evfdctl move to a missing ring: %d %r" % (out.returncode, out.stderr))
    out = evfdctl(["-s", ctl, "--json", "move", "9999", "1"])
    if out.returncode != 1 or json.loads(out.stdout)["error"] != "io.evfdd.NoSuchRing":
        fail("evfdctl --json move to a missing ring: %d %r" % (out.returncode, out.stdout))
    for args in ([], ["frobnicate"], ["move", "1"], ["move", "a", "1"], ["status", "extra"], ["--bogus"]):
        out = evfdctl(["-s", ctl] + args)
        if out.returncode != 2 or not out.stderr:
            fail("evfdctl %s: expected a usage error (2), got %d %r" % (args, out.returncode, out.stderr))
    out = evfdctl(["-s", os.path.join(TMP, "nosuch", "control"), "status"])
    if out.returncode != 2 or "is evfdd running?" not in out.stderr or "(-s)" not in out.stderr:
        fail("evfdctl on a missing socket: %d %r" % (out.returncode, out.stderr))
    out = evfdctl(["-h"])
    if out.returncode != 0 or "move RING LOOP" not in out.stdout:
        fail("evfdctl -h: %d %r" % (out.returncode, out.stdout))
    traffic.check()
    ok("evfdctl: status, loops, rings, services as text and --json; exit 1 on an error answer, 2 on usage and "
       "connection errors; -s over $EVFDCTL_SOCKET")


def check_aligned(what, lines):
    """Numbers end under the end of their header, text starts under its start."""
    cols = [(m.start(), m.end()) for m in re.finditer(r"\S+", lines[0])]
    for line in lines[1:]:
        cells = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", line)]
        if len(cells) != len(cols):
            fail("evfdctl %s: row %r does not match the header %r" % (what, line, lines[0]))
        for (hs, he), (cs, ce, text) in zip(cols, cells):
            if (text.isdigit() and ce != he) or (not text.isdigit() and cs != hs):
                fail("evfdctl %s: columns not aligned:\n%s" % (what, "\n".join(lines)))


def loops_by_id(ctl):
    return {lp["id"]: lp for lp in json.loads(evfdctl(["-s", ctl, "--json", "loops"]).stdout)["loops"]}


def rings_now(ctl):
    return json.loads(evfdctl(["-s", ctl, "--json", "rings"]).stdout)["rings"]


def move_all(ctl, target, traffic):
    moved = 0
    for r in rings_now(ctl):
        if r["loop"] == target:
            continue
        out = evfdctl(["-s", ctl, "move", str(r["id"]), str(target)])
        m = re.fullmatch(r"ring (\d+) moved from loop (\d+) to loop (\d+) in (\d+) us\n", out.stdout)
        if out.returncode != 0 or not m or int(m.group(1)) != r["id"] or int(m.group(2)) != r["loop"] or \
                int(m.group(3)) != target:
            fail("evfdctl move %d %d: %d %r %r" % (r["id"], target, out.returncode, out.stdout, out.stderr))
        moved += 1
    rings = rings_now(ctl)
    if any(r["loop"] != target for r in rings):
        fail("after moving every ring to loop %d, rings --json shows %r" % (target, rings))
    loops = loops_by_id(ctl)
    if loops[target]["rings"] != len(rings) or any(lp["rings"] for i, lp in loops.items() if i != target):
        fail("after moving every ring to loop %d, loops --json shows %r" % (target, loops))
    # The loop that owns every ring now reaps every completion of the traffic.
    before = loops[target]["completions"]
    traffic.progress("after the rings moved to loop %d" % target)
    after = loops_by_id(ctl)[target]["completions"]
    if after <= before:
        fail("loop %d owns every ring but its completions stayed at %d while traffic flowed" % (target, before))
    return moved


def case_move(d, ctl, traffic):
    ids = sorted(loops_by_id(ctl))
    moves_before = sum(r["moves"] for r in rings_now(ctl))
    n = 0
    for target in (ids[0], ids[1], ids[0]):
        n += move_all(ctl, target, traffic)
    moves_after = sum(r["moves"] for r in rings_now(ctl))
    if moves_after < moves_before + n:
        fail("rings report %d moves, expected at least %d" % (moves_after, moves_before + n))
    # Spread them again for the cases that follow.
    for r in rings_now(ctl)[::2]:
        if evfdctl(["-s", ctl, "move", str(r["id"]), str(ids[1])]).returncode != 0:
            fail("moving ring %d back" % r["id"])
    traffic.progress("after the rings were spread again")
    ok("evfdctl move: %d moves of rings carrying traffic between loops; rings and loops follow, the owning "
       "loop's completion count grows, every echo connection carried on" % n)


def case_reload(d, ctl, traffic, good_conf):
    c = Client(ctl, timeout=150)
    before = expect_reply(c.call("io.evfdd.Status"), "Status")["reloads"]
    out = evfdctl(["-s", ctl, "reload"])
    if out.returncode != 0 or not out.stdout.startswith("reloaded: "):
        fail("evfdctl reload of a good configuration: %d %r %r" % (out.returncode, out.stdout, out.stderr))
    r = expect_reply(c.call("io.evfdd.Reload"), "Reload")["reload"]
    if r["ok"] is not True or r["errors"] != [] or not r["summary"]:
        fail("Reload of a good configuration: %r" % r)
    st = expect_reply(c.call("io.evfdd.Status"), "Status")
    if st["reloads"] < before + 2 or not st["last_reload"]["ok"]:
        fail("Status after two good reloads: %r" % st)
    # A broken file: ReloadFailed naming file and line; evfdd keeps running on the old configuration.
    d.write_conf(good_conf.replace("workers = 2", "workers = 0").replace("forward = echo\n", ""))
    try:
        r = c.call("io.evfdd.Reload")
        if r.get("error") != "io.evfdd.ReloadFailed" or r["parameters"]["reload"]["ok"] is not False:
            fail("Reload of a broken configuration: %r" % r)
        errors = r["parameters"]["reload"]["errors"]
        if not any(e.startswith(d.path + ":2: [evfdd] workers") for e in errors) or \
                not any(re.match(re.escape(d.path) + r":\d+: \[echo\] forward", e) for e in errors):
            fail("ReloadFailed errors do not name file, line, section and key: %r" % errors)
        out = evfdctl(["-s", ctl, "reload"])
        if out.returncode != 1 or not out.stderr.startswith("evfdctl: reload failed:") or \
                (d.path + ":2: [evfdd] workers") not in out.stderr:
            fail("evfdctl reload of a broken configuration: %d %r" % (out.returncode, out.stderr))
        st = expect_reply(c.call("io.evfdd.Status"), "Status")
        if st["workers"] != 2 or st["last_reload"]["ok"] is not False:
            fail("Status after a failed reload: %r" % st)
    finally:
        d.write_conf(good_conf)
    expect_reply(c.call("io.evfdd.Reload"), "Reload of the good configuration again")
    c.close()
    traffic.progress("after the reloads")
    ok("Reload: a good configuration reloads (evfdctl exit 0); a broken one is ReloadFailed with FILE:LINE "
       "errors (evfdctl exit 1) and evfdd runs on")


def case_strict_input(d, ctl, traffic):
    """What json-c let through. Bytes that are not UTF-8, or escapes that make none, close the connection as
    malformed JSON does; a method name holding a NUL is MethodNotFound with exactly that name (json-c cut it
    and ran Status); repeated keys (json-c kept the last), NULs in keys and strings, and integers outside
    Varlink's int64 (json-c echoed 2^64-1 back as -1) are InvalidParameter. Every reply is strict UTF-8
    (Client.recv) and echoes only what was sent."""
    inval = "org.varlink.service.InvalidParameter"
    notfound = "org.varlink.service.MethodNotFound"
    closing = [
        (b'{"method": "io.evfdd.\xc0\xafStatus"}', "an overlong 2-byte form"),
        (b'{"method": "io.evfdd.Status", "parameters": {"x": "\xe0\x80\xaf"}}', "an overlong 3-byte form"),
        (b'{"method": "io.evfdd.\xed\xa0\x80"}', "a UTF-8-encoded surrogate"),
        (b'{"method": "io.evfdd.\xf4\x90\x80\x80"}', "a code point above U+10FFFF"),
        (b'{"method": "org.varlink.service.GetInterfaceDescription", "parameters": {"interface": "io.\xff"}}',
         "invalid UTF-8 in a value that an error echoes"),
        (b'{"method": "io.evfdd.\\ud800"}', "an escaped lone high surrogate"),
        (b'{"method": "io.evfdd.\\udc00"}', "an escaped lone low surrogate"),
        (b'{"method": "io.evfdd.\\ud800\\u0041"}', "an escaped high surrogate without its low one"),
        (b'\xef\xbb\xbf{"method": "io.evfdd.Status"}', "a byte order mark"),
        (b'{"method": "io.evfdd.Status", "parameters": {"x": 01}}', "a number with a leading zero"),
        (b'{"method": "io.evfdd.Status", "parameters": {"x": ' + b"[" * 31 + b"]" * 31 + b"}}",
         "nesting 33 deep"),
    ]
    for data, what in closing:
        c = Client(ctl)
        c.send_raw(data + b"\0")
        expect_closed(c, what)
        c.close()
    me = "client pid %d uid %d" % (os.getpid(), os.geteuid())
    if not re.search(r"debug: control socket: %s sent malformed JSON \(invalid UTF-8, at byte \d+\)" % me,
                     d.text()):
        fail("no debug line naming the peer for invalid UTF-8:\n" + d.text()[-5000:])

    c = Client(ctl)

    def raw(data):
        c.send_raw(data + b"\0")
        return c.recv()

    expect_error(raw(b'{"method": "io.evfdd.Status\\u0000x"}'), notfound, {"method": "io.evfdd.Status\0x"},
                 "a method name holding an escaped NUL")
    for name in ("io.evfdd.status", "io..Status", "Status", "io.evfdd.Sta-tus", "io.evfdd.", "-io.evfdd.Status",
                 "io.evfdd-.Status", "9o.evfdd.Status", " io.evfdd.Status", "io.evfdd.Status\n"):
        expect_error(c.call(name), notfound, {"method": name}, "the invalid method name %r" % name)
    expect_reply(raw(b'{"method": "io.evfdd.\\u0053tatus"}'), "a method name with an escaped letter")
    for data, bad, what in (
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 0, "ring": 9999, "loop": 0}}', "ring",
             "a repeated parameter"),
            (b'{"method": "io.evfdd.Nope", "method": "io.evfdd.Status"}', "method", "a repeated method"),
            (b'{"method": "io.evfdd.Status", "parameters": {}, "parameters": {"x": 1}}', "parameters",
             "repeated parameters"),
            (b'{"method": "io.evfdd.Status", "parameters": {"x": {"y": 1, "y": 2}}}', "x",
             "a key repeated deeper down"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring\\u0000": 9999, "loop": 0}}', "ring\0",
             "a NUL in a parameter's name"),
            (b'{"method": "org.varlink.service.GetInterfaceDescription", '
             b'"parameters": {"interface": "io.evfdd\\u0000x"}}', "interface", "a NUL in a string parameter"),
            (b'{"method": "io.evfdd.Status", "nul\\u0000": true}', "nul\0", "a NUL in a field's name"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 18446744073709551615, "loop": 0}}', "ring",
             "2^64-1"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 9223372036854775808, "loop": 0}}', "ring",
             "2^63"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": -9223372036854775809, "loop": 0}}', "ring",
             "-2^63-1"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 1.0, "loop": 0}}', "ring", "1.0"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 1e2, "loop": 0}}', "ring", "1e2"),
            (b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 0, "loop": 1E400}}', "loop", "1E400")):
        expect_error(raw(data), inval, {"parameter": bad}, what)
    # Ids within int64 that name nothing: the exact value comes back.
    expect_error(raw(b'{"method": "io.evfdd.MoveRing", "parameters": {"ring": 9223372036854775807, "loop": 0}}'),
                 "io.evfdd.NoSuchRing", {"ring": 9223372036854775807}, "ring 2^63-1")
    ring = expect_reply(c.call("io.evfdd.Rings"), "Rings")["rings"][0]["id"]
    expect_error(c.call("io.evfdd.MoveRing", {"ring": ring, "loop": 4294967296}), "io.evfdd.NoSuchLoop",
                 {"loop": 4294967296}, "loop 2^32")
    # The 32 levels of nesting allowed, and text outside ASCII, sent raw and escaped, come back exactly.
    expect_error(raw(b'{"method": "io.evfdd.Status", "parameters": {"x": ' + b"[" * 30 + b"]" * 30 + b"}}"), inval,
                 {"parameter": "x"}, "nesting 32 deep")
    name = "io.\u00e9vfdd\u2028.\U0001f600"
    for data in (json.dumps({"method": "org.varlink.service.GetInterfaceDescription",
                             "parameters": {"interface": name}}, ensure_ascii=e).encode() for e in (True, False)):
        expect_error(raw(data), "org.varlink.service.InterfaceNotFound", {"interface": name}, "a name outside ASCII")
    c.close()
    traffic.check()
    ok("strict input: %d kinds of bytes that are not UTF-8 or not JSON closed the connection; a NUL in a method "
       "name is MethodNotFound with the exact name; repeated keys, NULs and integers outside int64 are "
       "InvalidParameter; every reply strict UTF-8 JSON, echoing only what was sent" % len(closing))


def wait_few_clients(d, ctl, most=16):
    """Wait until the daemon counts at most @most clients, the clients of earlier cases gone: a probe's
    "connected (N clients)" debug line tells."""
    pattern = re.compile(r"client pid %d uid %d connected \((\d+) clients\)" % (os.getpid(), os.geteuid()))
    end = time.time() + 30 * SLOW
    while True:
        try:
            probe = Client(ctl)
            expect_reply(probe.call("org.varlink.service.GetInfo"), "GetInfo of a probe")
            probe.close()
            counts = pattern.findall(d.text())
            if counts and int(counts[-1]) <= most:
                return
        except (Closed, OSError):
            pass
        if time.time() > end:
            fail("the daemon still counts more than %d clients:\n%s" % (most, d.text()[-3000:]))
        time.sleep(0.05)


def case_client_limits(d, ctl, traffic):
    """Root keeps VARLINK_ROOT_RESERVED places, and one other uid may hold VARLINK_MAX_CLIENTS_PER_UID."""
    if os.geteuid() != 0:
        print("skip client limits: the test must run as root to connect as other uids", flush=True)
        return
    wait_few_clients(d, ctl)
    # Each holder is a child that connects N clients as one uid, reports how many were served, and holds them
    # until the parent closes its pipe. A fork, as in case_permission: another uid may not be able to read
    # the build tree or run this interpreter.
    holders = []

    def hold(uid, n):
        r, w = os.pipe()
        release_r, release_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.close(release_w)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                held, served = [], 0
                for _ in range(n):
                    c = Client(ctl, timeout=30 * SLOW)
                    try:
                        c.send("org.varlink.service.GetInfo")
                        c.recv()
                        served += 1
                        held.append(c)
                    except (Closed, OSError):
                        c.close()
                os.write(w, b"%d" % served)
                os.read(release_r, 1)
                os._exit(0)
            except BaseException:  # noqa: BLE001 - the parent sees no count
                os._exit(1)
        os.close(w)
        os.close(release_r)
        holders.append((pid, release_w))
        data = os.read(r, 64)
        os.close(r)
        if not data.isdigit():
            fail("the uid %d holder failed" % uid)
        return int(data)

    def release():
        while holders:
            pid, fd = holders.pop()
            os.close(fd)
            os.waitpid(pid, 0)

    nonroot = MAX_CLIENTS - ROOT_RESERVED
    os.chmod(ctl, 0o666)   # let other uids in
    try:
        got = hold(NOBODY, MAX_CLIENTS_PER_UID + 8)
        if got != MAX_CLIENTS_PER_UID:
            fail("uid %d got %d clients served, the limit per uid is %d" % (NOBODY, got, MAX_CLIENTS_PER_UID))
        total, uid = got, NOBODY - 1
        while total < nonroot:
            got = hold(uid, MAX_CLIENTS_PER_UID)
            if got != min(MAX_CLIENTS_PER_UID, nonroot - total):
                fail("uid %d got %d clients served with %d of uids other than root connected" % (uid, got, total))
            total += got
            uid -= 1
        # Every place for other uids is taken: one more is refused, root still gets in.
        if hold(uid, 1) != 0:
            fail("uid %d was served with %d clients of uids other than root connected" % (uid, nonroot))
        out = evfdctl(["-s", ctl, "status"], user=uid)
        if out.returncode != 2 or not re.search(r"closed the connection on \S+ without answering; see its log",
                                                out.stderr):
            fail("evfdctl as uid %d with every place for its kind taken: %d %r" % (uid, out.returncode, out.stderr))
        out = evfdctl(["-s", ctl, "status"])
        if out.returncode != 0 or not re.search(r"^pid: +%d$" % d.proc.pid, out.stdout, re.M):
            fail("evfdctl as root with every place for other uids taken: %d %r %r"
                 % (out.returncode, out.stdout, out.stderr))
        expect_reply(Client(ctl).call("io.evfdd.Status"), "Status from root with every other place taken")
        text = d.text()
        for words in ("the limit for one user; refused pid", "their limit (%d more places are kept for root); "
                      "refused pid" % ROOT_RESERVED):
            if words not in text:
                fail("no warning '%s':\n%s" % (words, text[-5000:]))
    finally:
        os.chmod(ctl, 0o660)
        release()
    # The places come back once the clients are gone (the daemon sees them go on its own time).
    end = time.time() + 30 * SLOW
    os.chmod(ctl, 0o666)
    try:
        while hold(NOBODY, 1) != 1:
            if time.time() > end:
                fail("uid %d still refused after every client of other uids left" % NOBODY)
            release()
            time.sleep(0.1)
    finally:
        os.chmod(ctl, 0o660)
        release()
    wait_few_clients(d, ctl)
    traffic.check()
    ok("client limits: uid %d held at %d clients; with all %d places for other uids taken, another uid is "
       "refused (evfdctl exit 2) and root's evfdctl works" % (NOBODY, MAX_CLIENTS_PER_UID, nonroot))


class Deadlines:
    """Clients that break a deadline of daemon/varlink.h, each in a thread for the whole run (the idle timeout
    is a minute): one that trickles half a message, one that falls idle, one that reads its replies too
    slowly. Each must be closed no sooner than its deadline (measured from before the daemon could start
    the clock) and well before a generous bound. A byte every second kept the first and the last alive for
    ever; an idle client must not be closed early."""

    def __init__(self, d, ctl):
        self.d = d
        self.results = {}
        self.threads = [threading.Thread(target=fn, args=(ctl,), daemon=True)
                        for fn in (self.trickle, self.idle, self.slow_reader)]
        for t in self.threads:
            t.start()

    def record(self, name, start, closed, deadline, extra=""):
        self.results[name] = (closed - start if closed else None, deadline, extra)

    def trickle(self, ctl):
        c = Client(ctl)
        msg = b'{"method": "io.evfdd.Status"}'
        start = time.monotonic()
        bound = start + REQUEST_TIMEOUT + 30 * SLOW
        sent = 0
        try:
            while time.monotonic() < bound:
                # The message, then whitespace, one byte a second, never its NUL.
                c.s.send(msg[sent:sent + 1] if sent < len(msg) else b" ")
                sent += 1
                if hung_up(c.s, 1):
                    break
        except OSError:
            pass
        closed = time.monotonic() if hung_up(c.s, 0) else None
        self.record("a client sending one byte a second", start, closed, REQUEST_TIMEOUT, "%d bytes" % sent)
        c.close()

    def idle(self, ctl):
        c = Client(ctl)
        start = time.monotonic()
        expect_reply(c.call("org.varlink.service.GetInfo"), "GetInfo before falling idle")
        closed = time.monotonic() if hung_up(c.s, IDLE_TIMEOUT + 30 * SLOW) else None
        self.record("an idle client", start, closed, IDLE_TIMEOUT)
        c.close()

    def slow_reader(self, ctl):
        c = Client(ctl)
        call = json.dumps({"method": "org.varlink.service.GetInterfaceDescription",
                           "parameters": {"interface": "io.evfdd"}}).encode() + b"\0"
        start = time.monotonic()
        c.send_raw(call * 300)   # about 1.5 MiB of replies, below the 4 MiB limit
        bound = start + REPLY_TIMEOUT + 30 * SLOW
        got = 0
        while time.monotonic() < bound and not hung_up(c.s, 1):
            got += len(c.s.recv(100))
        closed = time.monotonic() if hung_up(c.s, 0) else None
        self.record("a client reading 100 bytes a second", start, closed, REPLY_TIMEOUT, "%d bytes read" % got)
        c.close()

    def check(self):
        for t in self.threads:
            t.join(IDLE_TIMEOUT + 60 * SLOW)
            if t.is_alive():
                fail("a deadline client's thread did not finish")
        for what, (took, deadline, extra) in sorted(self.results.items()):
            if took is None:
                fail("%s was never closed (%s; the deadline is %d s)" % (what, extra, deadline))
            # (Half a second for the clocks' granularity.)
            if took < deadline - 0.5 or took > deadline + 30 * SLOW:
                fail("%s was closed after %.1f s; the deadline is %d s" % (what, took, deadline))
        if len(self.results) != 3:
            fail("deadline clients: %r" % self.results)
        if "but not its end within %d s; closing it" % REQUEST_TIMEOUT not in self.d.text():
            fail("no warning about the client that trickled half a message:\n" + self.d.text()[-5000:])
        ok("deadlines: %s" % "; ".join("%s closed after %.1f s (deadline %d s)" % (what, took, deadline)
                                       for what, (took, deadline, _) in sorted(self.results.items())))


def case_emfile_pause():
    """When accept fails with EMFILE, the control socket pauses 100 ms at a time. The pause timer was
    restarted without being set again, so libev fired it at once: accept4 ran flat out."""
    strace = shutil.which("strace")
    if not strace:
        print("skip EMFILE pause: strace is not installed", flush=True)
        return
    ctl = os.path.join(TMP, "emfile", "control")
    conf = ("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\nlog_level = debug\n\n[echo]\nlisten = 127.0.0.1:%d\n"
            "forward = echo\n" % (ctl, free_port()))

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    d = Daemon(conf, preexec=low_limit)
    # More clients than evfdd has descriptors left: the rest wait in the backlog and accept fails.
    clients = [Client(ctl, timeout=30 * SLOW) for _ in range(80)]
    d.wait_log("control socket: accept (pausing for 100 ms", timeout=30 * SLOW)
    out = os.path.join(TMP, "emfile.strace")
    start = time.monotonic()
    st = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=accept4", "-o", out, "-p", str(d.proc.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    PROCS.append(st)
    time.sleep(2)   # the window over which accept attempts are counted, not a bound on anything
    st.send_signal(signal.SIGINT)
    try:
        _, err = st.communicate(timeout=30 * SLOW)
    except subprocess.TimeoutExpired:
        st.kill()
        fail("strace did not stop")
    window = time.monotonic() - start
    with open(out) as f:
        attempts = sum(1 for line in f if "EMFILE" in line)
    if attempts == 0 and "Operation not permitted" in err.decode(errors="replace"):
        print("skip EMFILE pause: ptrace is not permitted here (strace: %r)" % err, flush=True)
        for c in clients:
            c.close()
        d.stop()
        return
    # One attempt per 100 ms pause, twice over for slack; a spinning loop makes thousands.
    bound = int(window / ACCEPT_PAUSE * 2) + 10
    if attempts == 0:
        fail("no accept attempt in %.1f s while paused for EMFILE (strace: %r)" % (window, err))
    if attempts > bound:
        fail("%d accept attempts failing with EMFILE in %.1f s: the pause spins (at most %d expected)"
             % (attempts, window, bound))
    for c in clients:
        c.close()
    # Accepting resumes: a new client is served once the old ones' descriptors are free again.
    expect_reply(Client(ctl, timeout=30 * SLOW).call("org.varlink.service.GetInfo"), "GetInfo after EMFILE")
    d.stop()
    ok("EMFILE on the control socket: %d accept attempts in %.1f s while paused (at most %d), then served again"
       % (attempts, window, bound))


def case_socket_file():
    """Binding the control path: parent created, stale file replaced, a live one refused, unlinked at exit."""
    ctl = os.path.join(TMP, "fresh", "a", "b", "control")
    conf = conf_text(ctl, free_port(), free_port())
    d = Daemon(conf)
    st = os.stat(ctl)
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o660 or \
            stat.S_IMODE(os.stat(os.path.dirname(ctl)).st_mode) != 0o755:
        fail("control socket %o in a directory %o" % (st.st_mode, os.stat(os.path.dirname(ctl)).st_mode))
    # A second evfdd on the same path must refuse, and leave the first one's socket alone.
    d2 = Daemon(conf_text(ctl, free_port(), free_port()), wait_ready=False)
    rc = d2.wait_exit()
    if rc == 0 or "another process answers there" not in d2.text():
        fail("a second evfdd on a live control socket: %d\n%s" % (rc, d2.text()))
    expect_reply(Client(ctl).call("io.evfdd.Status"), "the first evfdd after the second gave up")
    d.stop()
    if os.path.exists(ctl):
        fail("evfdd left its control socket behind")
    # A stale socket file (nobody listening) is replaced.
    s = socket.socket(socket.AF_UNIX)
    s.bind(ctl)
    s.close()
    d = Daemon(conf)
    expect_reply(Client(ctl).call("io.evfdd.Status"), "Status on a replaced stale socket")
    if "replacing a stale socket file" not in d.text():
        fail("no message about the stale socket:\n" + d.text())
    d.stop()
    # A file that is not a socket is left alone.
    with open(ctl, "w") as f:
        f.write("not a socket")
    d = Daemon(conf, wait_ready=False)
    if d.wait_exit() == 0 or "is not a socket" not in d.text():
        fail("evfdd on a regular file at the control path:\n" + d.text())
    os.unlink(ctl)
    ok("control socket file: parent directories created (0755), socket 0660, a live one refused, a stale one "
       "replaced, a regular file refused, removed at exit")


def case_activated():
    """A control socket handed over by systemd (FileDescriptorName=control) is served, and left in place."""
    sa = shutil.which("systemd-socket-activate")
    if not sa:
        print("skip activated control socket: systemd-socket-activate not installed", flush=True)
        return
    ctl = os.path.join(TMP, "activated.sock")
    conf = "[evfdd]\nworkers = 1\nrings = 1\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % free_port()
    path = os.path.join(TMP, "activated.conf")
    with open(path, "w") as f:
        f.write(conf)
    log = open(path + ".log", "w+")
    proc = subprocess.Popen([sa, "-l", ctl, "--fdname=control"] + SA_ENV + [EVFDD, "-c", path], stderr=log,
                            stdout=log)
    PROCS.append(proc)
    try:
        end = time.time() + 20
        while not os.path.exists(ctl):
            if time.time() > end or proc.poll() is not None:
                fail("systemd-socket-activate did not listen on %s" % ctl)
            time.sleep(0.02)
        # The first connection starts evfdd, which then accepts it from the activated socket.
        st = expect_reply(Client(ctl).call("io.evfdd.Status"), "Status on an activated control socket")
        if st["pid"] != proc.pid:
            fail("Status on the activated socket answered by pid %d, not evfdd's %d" % (st["pid"], proc.pid))
        with open(path + ".log") as f:
            if "using the activated socket" not in f.read():
                fail("evfdd did not say it uses the activated control socket")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with open(path + ".log") as f:
        text = f.read()
    check_sanitizers(text)
    if rc != 0:
        fail("evfdd on an activated control socket exited with %d:\n%s" % (rc, text))
    if not os.path.exists(ctl):
        fail("evfdd unlinked an activated control socket, which belongs to systemd")
    ok("activated control socket: served, and left in place at exit")


def main():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    random.seed(2)
    try:
        case_socket_file()
        case_activated()
        case_emfile_pause()
        ctl = os.path.join(TMP, "run", "control")
        echo_port, fwd_port = free_port(), free_port()
        conf = conf_text(ctl, echo_port, fwd_port)
        d = Daemon(conf)
        deadlines = Deadlines(d, ctl)   # they run alongside the other cases
        traffic = Traffic(("127.0.0.1", fwd_port), 6)
        traffic.progress("at the start")
        for case in (case_service, case_read_methods, case_call_errors, case_strict_input, case_bad_messages,
                     case_never_reads, case_too_many_clients, case_client_limits, case_concurrent,
                     case_gone_before_answer, case_permission, case_evfdctl, case_move):
            case(d, ctl, traffic)
            d.alive()
        case_reload(d, ctl, traffic, conf)
        traffic.progress("at the end")
        traffic.finish()
        ok("echo traffic: %d connections, %d MiB each way, every byte checked, throughout"
           % (len(traffic.bytes), traffic.total() >> 20))
        deadlines.check()
        # A Reload still waiting when evfdd stops: its answer goes nowhere, and the stop is clean.
        c = Client(ctl)
        c.send("io.evfdd.Reload")
        d.stop()
        c.close()
        ok("a stop with a Reload outstanding is clean")
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
