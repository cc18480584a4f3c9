# SPDX-License-Identifier: LGPL-2.1-or-later
"""The load the end-to-end tests of reloads, upgrades and backends (test-reload.py, test-upgrade.py,
test-backends.py) put through evfdd, and what checks it: long-lived streams with every byte checked against
a pattern (Load), a client opening and closing connections without pause (Churn), a Python echo backend
(Echo), single round trips; what evfdd says against what the clients saw (its counters, its loops and
rings); and a thread of evfdd frozen with ptrace (Frozen). Each test hands its own way of failing to use()
first; its clients join CLIENTS, which the test's failure stops."""
import ctypes
import errno
import json
import os
import random
import resource
import selectors
import socket
import threading
import time

from evfddtest import SCALE, ThreadedServer, sanitizer_report

# Sanitizer builds run everything several times slower: waits that only guard against a hang grow with it.
SLOW = 1 if SCALE == 1 else 3
CLIENTS = []   # Load and Churn threads: the test's failure abandons them, so that its next case runs undisturbed
_fail = None


def use(fail_fn):
    """@fail_fn(msg) ends the test's current case; it does not return."""
    global _fail
    _fail = fail_fn


def fail(msg):
    _fail(msg)
    raise SystemExit(1)   # a fail_fn that returned


def connect(addr, timeout=10, rcvbuf=None):
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout * SLOW)
    s.connect(addr)
    return s


def recv_exact(s, n):
    got = []
    k = 0
    while k < n:
        chunk = s.recv(min(n - k, 1 << 20))
        if not chunk:
            break
        got.append(chunk)
        k += len(chunk)
    return b"".join(got)


def recv_all(s):
    parts = []
    while True:
        d = s.recv(1 << 20)
        if not d:
            return b"".join(parts)
        parts.append(d)


def round_trip(addr, payload, timeout=10):
    s = connect(addr, timeout)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)
    finally:
        s.close()


def check_round_trip(addr, what, size=4096):
    payload = random.randbytes(size)
    try:
        got = round_trip(addr, payload)
    except OSError as e:
        fail("%s: round trip through %s: %s" % (what, addr, e))
    if got != payload:
        fail("%s: round trip through %s: %d of %d bytes back%s" % (what, addr, len(got), len(payload),
                                                                  ", corrupted" if len(got) == len(payload) else ""))


# Every stream sends a slice of one long random pattern from its own offset; the echo must return exactly
# that, so every byte is checked, and where, without keeping what was sent.
PATTERN_LEN = (1 << 20) + 7
RECV_MAX = 1 << 16
_pattern = random.Random(42).randbytes(PATTERN_LEN)
PATTERN = memoryview(_pattern + _pattern[:RECV_MAX])


class Stream:
    __slots__ = ("i", "addr", "sock", "base", "sent", "recvd", "mask", "shut", "done", "kind")

    def __init__(self, i, addr):
        self.i, self.addr = i, addr
        self.base = (i * 104729) % PATTERN_LEN
        self.sent = self.recvd = self.mask = 0
        self.shut = self.done = False
        self.kind = None
        self.sock = connect(addr)
        self.sock.setblocking(False)

    def name(self):
        return "stream %d via %s" % (self.i, self.addr)


class Load:
    """Long-lived connections, each streaming both ways without pause through an echo, every byte checked
    against the pattern: one thread, non-blocking sockets and a selector. Every reset and every early EOF is
    counted by kind."""

    CHUNK = 16384
    WINDOW = 65536

    def __init__(self, addrs, n):
        self.streams = [Stream(i, addrs[i % len(addrs)]) for i in range(n)]
        self.errors = []
        self.draining = False
        self.sel = selectors.DefaultSelector()
        for st in self.streams:
            st.mask = selectors.EVENT_READ | selectors.EVENT_WRITE
            self.sel.register(st.sock, st.mask, st)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        CLIENTS.append(self)

    def abandon(self):
        for st in self.streams:
            st.done = True

    def _error(self, st, what, kind="other"):
        st.kind = kind
        st.done = True
        self.errors.append("%s: %s after %d bytes sent, %d echoed" % (st.name(), what, st.sent, st.recvd))
        self.sel.unregister(st.sock)
        st.sock.close()

    def _read(self, st):
        try:
            d = st.sock.recv(RECV_MAX)
        except BlockingIOError:
            return
        except ConnectionResetError as e:
            return self._error(st, "recv: %s" % e, "reset")
        except OSError as e:
            return self._error(st, "recv: %s" % e)
        if not d:
            if st.shut and st.recvd == st.sent:
                st.done = True
                self.sel.unregister(st.sock)
                st.sock.close()
            else:
                self._error(st, "unexpected EOF", "eof")
            return
        if st.recvd + len(d) > st.sent:
            return self._error(st, "%d bytes more than were sent" % (st.recvd + len(d) - st.sent), "dup")
        pos = (st.base + st.recvd) % PATTERN_LEN
        if d != PATTERN[pos:pos + len(d)]:
            bad = next(k for k in range(len(d)) if d[k] != PATTERN[pos + k])
            return self._error(st, "wrong byte at stream offset %d" % (st.recvd + bad), "corrupt")
        st.recvd += len(d)

    def _write(self, st):
        room = self.WINDOW - (st.sent - st.recvd)
        if self.draining or room <= 0:
            return
        pos = (st.base + st.sent) % PATTERN_LEN
        try:
            st.sent += st.sock.send(PATTERN[pos:pos + min(self.CHUNK, room)])
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError) as e:
            self._error(st, "send: %s" % e, "reset")
        except OSError as e:
            self._error(st, "send: %s" % e)

    def _update(self, st):
        if st.done:
            return
        if self.draining and not st.shut and st.recvd == st.sent:
            try:
                st.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                return self._error(st, "shutdown: %s" % e)
            st.shut = True
        want = selectors.EVENT_READ
        if not self.draining and st.sent - st.recvd < self.WINDOW:
            want |= selectors.EVENT_WRITE
        if want != st.mask:
            st.mask = want
            self.sel.modify(st.sock, want, st)

    def _run(self):
        draining_seen = False
        while any(not st.done for st in self.streams):
            for key, mask in self.sel.select(0.05):
                st = key.data
                if mask & selectors.EVENT_READ:
                    self._read(st)
                if not st.done and mask & selectors.EVENT_WRITE:
                    self._write(st)
                self._update(st)
            if self.draining and not draining_seen:
                draining_seen = True
                for st in self.streams:
                    self._update(st)

    def progress(self):
        return [st.recvd for st in self.streams]

    def kinds(self):
        out = {"reset": 0, "eof": 0, "dup": 0, "corrupt": 0, "other": 0}
        for st in self.streams:
            if st.kind:
                out[st.kind] += 1
        return out

    def conns_per_addr(self):
        out = {}
        for st in self.streams:
            out[st.addr] = out.get(st.addr, 0) + 1
        return out

    def wait_progress(self, what, timeout=30):
        """Every live stream must move bytes again after @what: a stalled one is a connection lost."""
        before = self.progress()
        end = time.time() + timeout * SLOW
        while True:
            if self.errors:
                fail("after %s: %d streams failed (%s), first: %s" % (what, len(self.errors), self.kinds(),
                                                                     self.errors[0]))
            stalled = [st for st, b in zip(self.streams, before) if not st.done and st.recvd == b]
            if not stalled:
                return
            if time.time() > end:
                fail("%d streams made no progress for %d s after %s, first: %s (%d bytes sent, %d echoed)"
                     % (len(stalled), timeout * SLOW, what, stalled[0].name(), stalled[0].sent,
                        stalled[0].recvd))
            time.sleep(0.005)

    def finish(self, what, timeout=60):
        """Stop sending, let every echo catch up, half-close, expect EOF with every byte back."""
        self.draining = True
        self.thread.join(timeout * SLOW)
        if self.thread.is_alive():
            stuck = [st for st in self.streams if not st.done]
            fail("%s: %d streams did not finish within %d s, first: %s (%d sent, %d echoed)"
                 % (what, len(stuck), timeout * SLOW, stuck[0].name(), stuck[0].sent, stuck[0].recvd))
        self.sel.close()
        if self.errors:
            fail("%s: %d of %d streams failed (%s), first: %s" % (what, len(self.errors), len(self.streams),
                                                                 self.kinds(), self.errors[0]))
        return sum(st.sent for st in self.streams)


class Churn:
    """Opens and closes connections without pause, each a small half-close round trip, checked. Counts every
    connection it opened (by address) and every failure by kind: a reset, an empty EOF (the reply never
    came), a short or corrupted reply, another error. With @tags, each reply is one of those bytes (the
    backend that answered says who it is) and then the echo; replies are counted by tag too (by_tag)."""

    def __init__(self, addrs, seed=7, stall=10, deadline=30, extra=0, tags=None):
        self.addrs = addrs
        self.extra = extra      # payloads are 64 bytes and up to @extra more
        self.stall, self.deadline = stall * SLOW, deadline * SLOW
        self.tags = tags
        self.ok = 0
        self.by_tag = {}
        self.opened = {}
        self.failures = []
        self.kinds = {"reset": 0, "eof": 0, "short": 0, "other": 0}
        self.stopping = False
        self.seed = seed
        self.diag = None        # diag(addr, local address, bytes received) -> text, called once on a stall
        self.diagnosis = ""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        CLIENTS.append(self)

    def abandon(self):
        self.stopping = True

    def _fail(self, kind, what):
        self.kinds[kind] += 1
        self.failures.append(what)

    def _run(self):
        rnd = random.Random(self.seed)
        n = 0
        while not self.stopping:
            addr = self.addrs[n % len(self.addrs)]
            n += 1
            payload = b"%08d" % n + rnd.randbytes(56 + (rnd.randrange(self.extra) if self.extra else 0))
            try:
                s = connect(addr, timeout=30)
            except OSError as e:
                self._fail("reset" if isinstance(e, ConnectionResetError) else "other",
                           "via %s: connect: %s" % (addr, e))
                continue
            self.opened[addr] = self.opened.get(addr, 0) + 1
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = b""
                # A reply late by 10 s is a stall: say where the connection stands (in a listener's queue,
                # held by evfdd, ...) while it still stands there, then wait out the rest of the timeout.
                s.settimeout(self.stall)
                deadline = time.time() + self.deadline
                while True:
                    try:
                        d = s.recv(1 << 16)
                    except socket.timeout:
                        if time.time() >= deadline:
                            raise
                        if self.diag and not self.diagnosis:
                            self.diagnosis = self.diag(addr, s.getsockname(), len(got))
                        continue
                    if not d:
                        break
                    got += d
                want = len(payload) + (1 if self.tags else 0)
                tag = got[:1] if self.tags and got[:1] in self.tags else b""
                if got[len(tag):] == payload and (tag or not self.tags):
                    self.ok += 1
                    if tag:
                        self.by_tag[tag] = self.by_tag.get(tag, 0) + 1
                elif not got:
                    self._fail("eof", "via %s: an empty EOF instead of the reply" % (addr,))
                else:
                    self._fail("short", "via %s: %d of %d bytes back%s" % (addr, len(got), want,
                                                                        ", corrupted" if len(got) == want
                                                                        else ""))
            except (ConnectionResetError, BrokenPipeError) as e:
                self._fail("reset", "via %s: %s" % (addr, e))
            except OSError as e:
                self._fail("other", "via %s: %s" % (addr, e))
            finally:
                s.close()

    def check(self, what):
        if self.failures:
            fail("%s: the churn client had %d failures in %d round trips (%s), first: %s%s"
                 % (what, len(self.failures), self.ok + len(self.failures), self.kinds, self.failures[0],
                    "\n" + self.diagnosis if self.diagnosis else ""))

    def stop(self, what):
        """Stop, leaving the failures to the caller (a test where some are allowed)."""
        self.stopping = True
        self.thread.join(60 * SLOW)
        if self.thread.is_alive():
            fail("%s: the churn client hung in a round trip" % what)

    def finish(self, what):
        self.stop(what)
        self.check(what)
        if self.ok == 0:
            fail("%s: the churn client completed no round trip" % what)
        return self.ok


class Echo(ThreadedServer):
    """A Python echo backend: sends @greeting first if any (a backend saying who it is), echoes until EOF,
    then half-closes and closes."""

    def __init__(self, greeting=b""):
        self.greeting = greeting
        super().__init__()

    def _serve(self, c):
        try:
            if self.greeting:
                c.sendall(self.greeting)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()


# ---- what evfdd says, against what the clients saw -------------------------------------------------------

def check_sanitizers(text, who="evfdd"):
    if sanitizer_report(text):
        fail("sanitizer report from %s:\n%s" % (who, text))


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


def totals_consistent(svc):
    """Every connection a service counted is open, closed, or ended for a reason."""
    return svc["total"] == svc["open"] + svc["closed"] + sum(svc["ends"].values())


def expect_counters(d, per_service, what):
    """evfdd's counters agree with what the clients saw: @per_service maps a service to the connections its
    clients (and evfdd's own forwards) opened, every one ended cleanly; waits for evfdd to close the last."""
    end = time.time() + 30 * SLOW
    while True:
        svcs = {s["name"]: s for s in d.json("services")["services"]}
        if all(svcs[n]["open"] == 0 for n in per_service) or time.time() > end:
            break
        time.sleep(0.05)
    for name, opened in sorted(per_service.items()):
        s = svcs[name]
        bad = {k: v for k, v in s["ends"].items() if v}
        if s["open"] or s["total"] != opened or s["closed"] != opened or bad or not totals_consistent(s):
            fail("%s: [%s] counters disagree with the clients, which opened %d connections and saw every one "
                 "end cleanly: open %d, total %d, closed %d, ends %s" % (what, name, opened, s["open"], s["total"],
                                                                        s["closed"], bad or "none"))
        if s["refused"] or s["connect_errors"] or s["aborted"]:
            fail("%s: [%s] refused %d, connect_errors %d, aborted %d, all should be 0"
                 % (what, name, s["refused"], s["connect_errors"], s["aborted"]))


def topology_problem(loops, rings, workers, nrings):
    """What is wrong with this picture after a reload to @workers loops and @nrings rings, or None."""
    ids = {lp["id"] for lp in loops}
    if len(loops) != workers:
        return "%d loops listed, %d configured" % (len(loops), workers)
    retiring = [lp for lp in loops if lp["state"] != "running"]
    if retiring:
        return "loop %s is %s" % (retiring[0]["id"], retiring[0]["state"])
    orphans = [r for r in rings if r["loop"] not in ids]
    if orphans:
        return "ring %s is owned by loop %s, which is not in the loops list %s" % (orphans[0]["id"],
                                                                                  orphans[0]["loop"], sorted(ids))
    moving = [r for r in rings if r["state"] == "moving"]
    if moving:
        return "ring %s is still moving" % moving[0]["id"]
    active = [r for r in rings if r["state"] == "running"]
    if len(active) != nrings:
        return "%d running rings, %d configured" % (len(active), nrings)
    for lp in loops:
        owned = sum(1 for r in rings if r["loop"] == lp["id"])
        if lp["rings"] != owned:
            return "loop %s says it owns %d rings, the rings list gives it %d" % (lp["id"], lp["rings"], owned)
    per_loop = [sum(1 for r in active if r["loop"] == lp["id"]) for lp in loops]
    if max(per_loop) - min(per_loop) > 1:
        return "rings spread unevenly over the loops: %s" % per_loop
    return None


def wait_topology(d, workers, nrings, what, timeout=30):
    """The loops and rings settle on the configuration; moves and retiring loops finish by themselves."""
    end = time.time() + timeout * SLOW
    while True:
        loops, rings = d.json("loops")["loops"], d.json("rings")["rings"]
        problem = topology_problem(loops, rings, workers, nrings)
        if problem is None:
            return loops, rings
        if time.time() > end:
            fail("%s: %s (still after %d s)\nloops: %s\nrings: %s" % (what, problem, timeout * SLOW,
                                                                     json.dumps(loops), json.dumps(rings)))
        time.sleep(0.02)


PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
WALL = 0x40000000


class Frozen:
    """Freezes one thread of evfdd with ptrace (PTRACE_SEIZE + PTRACE_INTERRUPT) for the length of a `with`
    block; self.ok is False, after saying why, where ptrace is not permitted (the caller skips that step)."""

    def __init__(self, d, tid):
        self.d, self.tid, self.ok = d, tid, False
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.libc.ptrace.restype = ctypes.c_long

    def __enter__(self):
        d, tid = self.d, self.tid
        scope = "/proc/sys/kernel/yama/ptrace_scope"
        if os.path.exists(scope) and open(scope).read().strip() == "3":
            print("skip freezing a worker loop: ptrace disabled (kernel.yama.ptrace_scope = 3)", flush=True)
            return self
        if tid == d.proc.pid or not os.path.exists("/proc/%d/task/%d" % (d.proc.pid, tid)):
            fail("tid %d is not a thread of evfdd (pid %d) besides the main one" % (tid, d.proc.pid))
        if self.libc.ptrace(PTRACE_SEIZE, tid, None, None) < 0:
            e = ctypes.get_errno()
            if e in (errno.EPERM, errno.EACCES):
                print("skip freezing a worker loop: ptrace not permitted here (%s)" % os.strerror(e), flush=True)
                return self
            fail("PTRACE_SEIZE of thread %d: %s" % (tid, os.strerror(e)))
        self.ok = True
        if self.libc.ptrace(PTRACE_INTERRUPT, tid, None, None) < 0:
            fail("PTRACE_INTERRUPT of thread %d: %s" % (tid, os.strerror(ctypes.get_errno())))
        os.waitpid(tid, WALL)
        with open("/proc/%d/task/%d/stat" % (d.proc.pid, tid)) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state not in ("t", "T"):
            fail("worker thread %d not stopped after PTRACE_INTERRUPT (state %s)" % (tid, state))
        return self

    def __exit__(self, *exc):
        if self.ok and self.libc.ptrace(PTRACE_DETACH, self.tid, None, None) < 0:
            print("PTRACE_DETACH of thread %d: %s" % (self.tid, os.strerror(ctypes.get_errno())), flush=True)
        return False
