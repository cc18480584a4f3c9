#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The edge, end to end, with real peers on loopback: HAProxy in front of evfdd sending PROXY v1/v2 (evfdd with
accept_proxy) and behind it (accept-proxy on HAProxy's bind, its log read back), evfdd's send_proxy read by a
backend that parses the header and tells the client what it saw; a corpus of malformed PROXY headers and
ClientHellos; TLS routed by SNI to `openssl s_server` backends with certificates of their own, the handshakes
made by `openssl s_client` and by a Python client whose ClientHello is split over segments and records;
allow/deny/max_connections_per_source with clients bound to several 127.0.0.x addresses; tcp_keepalive,
tcp_user_timeout and source read off evfdd's own sockets (pidfd_getfd) and ss; the access log on stderr and as
native journal datagrams caught in a private mount namespace. Every case checks that evfdd's counters (evfdctl
--json services / backends) agree with what the clients saw.
`python3 test-edge.py CASE...` runs only the named cases (e.g. case_sni_routing)."""
import ctypes
import json
import os
import random
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

from evfddtest import (EVFDCTL, EVFDD, SCALE, DaemonCtl, Skip, closed_by_peer, free_port, run_cases,
                       sanitizer_report, with_control)

TMP = tempfile.mkdtemp(prefix="evfdd-edge-")
os.environ["RUNTIME_DIRECTORY"] = TMP
SLOW = 1 if SCALE == 1 else 3
DAEMONS = []
PROCS = []        # HAProxy and s_server processes, killed after each case
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
OPENSSL = shutil.which("openssl")
IP_BIND_ADDRESS_NO_PORT = 24
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def fail(msg):
    """End the current case (main() goes on with the next one)."""
    print("FAIL: " + msg, flush=True)
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
    sys.exit(1)


def skip_case(why):
    """A case that cannot run here: main() counts it as skipped."""
    print("SKIP: " + why, flush=True)
    raise Skip(why)


def check_sanitizers(text, who="evfdd"):
    if sanitizer_report(text):
        fail("sanitizer report from %s:\n%s" % (who, text))


class Daemon(DaemonCtl):
    """evfdd on a configuration file of its own (a control socket of its own is added to [evfdd]); its stdout
    and stderr go to a file the checks read. @wrap runs it under another program (unshare ...), @env adds
    variables."""

    slow = SLOW

    def __init__(self, conf, wait_ready=True, wrap=(), env=None):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.control = self.path + ".ctl"
        self.write(conf)
        self.log = open(self.path + ".log", "w+")
        e = dict(os.environ)
        e.pop("JOURNAL_STREAM", None)
        if env:
            e.update(env(self.log) if callable(env) else env)
        self.proc = subprocess.Popen(list(wrap) + [EVFDD, "-c", self.path], stdout=self.log, stderr=self.log,
                                     env=e)
        DAEMONS.append(self)
        if wait_ready:
            self.wait_log("ready")

    def write(self, conf):
        super().write(with_control(conf, self.control))

    def fail(self, msg):
        fail(msg)

    def backends(self, service):
        out = {}
        for b in self.json("backends", service)["backends"]:
            if b["backend"] in out:
                fail("evfdctl backends %s lists %s twice" % (service, b["backend"]))
            out[b["backend"]] = b
        return out

    def expect_counts(self, name, what, **want):
        """Service @name's counters become exactly @want (open 0, total, closed, and ends by reason; every
        reason not named must be 0) within a few seconds (evfdd counts an end a moment after the client saw
        it)."""
        want = dict({"open": 0}, **want)
        end = time.time() + 10 * SLOW
        while True:
            s = self.services().get(name)
            if s is None:
                fail("%s: no service [%s] in evfdctl services" % (what, name))
            got = {"open": s["open"], "total": s["total"], "closed": s["closed"]}
            got.update({k: v for k, v in s["ends"].items() if v})
            if got == want:
                return s
            if time.time() > end:
                fail("%s: [%s] counts %s, the clients saw %s\nevfdd's log:\n%s" % (what, name, got, want,
                                                                                 self.text()[-3000:]))
            time.sleep(0.05)

    def expect_backend(self, service, name, what, **want):
        """evfdctl backends SERVICE's entry for @name has @want (connections, bytes_up, ...), once idle."""
        end = time.time() + 10 * SLOW
        while True:
            b = self.backends(service).get(name)
            got = {k: b.get(k) for k in want} if b else None
            if got == want:
                return b
            if time.time() > end:
                fail("%s: [%s] backend %s: evfdctl says %s, expected %s (all: %s)"
                     % (what, service, name, got, want, sorted(self.backends(service))))
            time.sleep(0.05)


    def metric(self, name, **labels):
        """The value of metric @name with exactly @labels in evfdctl metrics (None when absent)."""
        out = self.ctl("metrics")
        if out.returncode != 0:
            fail("evfdctl metrics: exit %d, %r" % (out.returncode, out.stderr))
        for m in re.finditer(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$", out.stdout, re.M):
            got = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
            if m.group(1) == name and got == labels:
                return float(m.group(3))
        return None


def check_config(text, name):
    path = os.path.join(TMP, "%s.conf" % name)
    with open(path, "w") as f:
        f.write(text)
    out = subprocess.run([EVFDD, "-n", "-c", path], capture_output=True, text=True, timeout=30 * SLOW)
    check_sanitizers(out.stderr)
    return out.returncode, out.stdout + out.stderr, path


def head(workers=2, rings=2):
    return "[evfdd]\nworkers = %d\nrings = %d\nshutdown_timeout = 5s\n" % (workers, rings)


# ---- peers ------------------------------------------------------------------------------------------------

def wait_listening(port, what, proc=None, timeout=10):
    """Until something listens on TCP @port (ss), without connecting to it (a probe would be a connection the
    counters see)."""
    end = time.time() + timeout * SLOW
    while time.time() < end:
        out = subprocess.run(["ss", "-Htln", "sport = :%d" % port], capture_output=True, text=True).stdout
        if out.strip():
            return
        if proc is not None and proc.poll() is not None:
            fail("%s exited with %d before listening on %d" % (what, proc.returncode, port))
        time.sleep(0.02)
    fail("%s does not listen on %d" % (what, port))


class Proc:
    """A peer program (HAProxy, s_server) with its output in a file; killed after the case."""

    def __init__(self, argv, label, ports=()):
        self.label = label
        self.out_path = os.path.join(TMP, "%s-%d.out" % (label, random.randrange(1 << 30)))
        self.out = open(self.out_path, "w+")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        PROCS.append(self)
        for p in ports:
            wait_listening(p, label, self.proc)

    def text(self):
        self.out.flush()
        with open(self.out_path) as f:
            return f.read()

    def wait_text(self, pattern, what, timeout=10):
        end = time.time() + timeout * SLOW
        while time.time() < end:
            m = re.search(pattern, self.text())
            if m:
                return m
            time.sleep(0.05)
        fail("%s: %s never wrote /%s/:\n%s" % (what, self.label, pattern, self.text()[-3000:]))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def haproxy(body, ports):
    """HAProxy in the foreground on @body (frontends and backends), logging to stdout (its .text())."""
    if not HAPROXY:
        skip_case("haproxy is not installed")
    cfg = os.path.join(TMP, "haproxy-%d.cfg" % random.randrange(1 << 30))
    with open(cfg, "w") as f:
        f.write("global\n    log stdout format raw local0 info\n    maxconn 1000\n"
                "defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    timeout client 30s\n"
                "    timeout server 30s\n" + body)
    return Proc([HAPROXY, "-f", cfg, "-db"], "haproxy", ports)


def make_cert(cn):
    """A self-signed EC certificate for CN=@cn in TMP: (cert path, key path)."""
    if not OPENSSL:
        skip_case("openssl is not installed")
    crt, key = os.path.join(TMP, cn + ".crt"), os.path.join(TMP, cn + ".key")
    out = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-nodes", "-keyout", key, "-out", crt, "-subj", "/CN=" + cn, "-days", "2"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail("openssl req for %s: %s" % (cn, out.stderr))
    return crt, key


class SServer(Proc):
    """openssl s_server -www on 127.0.0.1 with a certificate of its own (CN=@cn); .name as forward writes it."""

    def __init__(self, cn):
        self.cn = cn
        self.crt, key = make_cert(cn)
        self.port = free_port()
        self.name = "127.0.0.1:%d" % self.port
        super().__init__([OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % self.port, "-cert", self.crt, "-key",
                          key, "-www", "-quiet"], "s_server-" + cn, [self.port])


class Backend:
    """A backend on TCP (("127.0.0.1", 0), ("::1", 0) ...) or a Unix path, serving each connection in a thread.
    @proxy: a PROXY header is read first (v1 or v2, parsed here) and answered with one JSON line saying what it
    held (and the peer's address); without it the backend greets with @tag. Then it echoes until EOF and ends
    cleanly. .conns lists what each connection saw; .name is the backend as forward writes it."""

    def __init__(self, where, tag=b"B", proxy=False):
        self.tag, self.proxy = tag, proxy
        self.lock = threading.Lock()
        self.conns = []
        if isinstance(where, str):
            self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.lsock.bind(where)
            self.name = where
        else:
            fam = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
            self.lsock = socket.socket(fam, socket.SOCK_STREAM)
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.lsock.bind(where)
            self.port = self.lsock.getsockname()[1]
            self.name = ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (where[0], self.port)
        self.lsock.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, peer = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c, peer), daemon=True).start()

    def _serve(self, c, peer):
        info = {"peer": list(peer) if isinstance(peer, tuple) else peer, "data": 0}
        with self.lock:
            self.conns.append(info)
        c.settimeout(30)
        try:
            if self.proxy:
                info.update(read_proxy_header(c))
                c.sendall(json.dumps(info).encode() + b"\n")
            else:
                c.sendall(self.tag)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                info["data"] += len(d)
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except (OSError, ValueError) as e:
            info["error"] = str(e)
        finally:
            c.close()
            info["done"] = True

    def served(self):
        """The connections that carried data (health checks carry none)."""
        with self.lock:
            return [c for c in self.conns if c["data"]]

    def close(self):
        self.lsock.close()


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise ValueError("EOF after %d of %d bytes of the PROXY header" % (len(buf), n))
        buf += d
    return buf


def read_proxy_header(c):
    """Read and parse one PROXY header from socket @c: a dict with version, command, family, src, dst."""
    first = recv_exact(c, 1)
    if first == b"P":
        line = first
        while not line.endswith(b"\r\n"):
            line += recv_exact(c, 1)
            if len(line) > 107:
                raise ValueError("a v1 line without CRLF")
        words = line[:-2].decode().split(" ")
        if words[0] != "PROXY":
            raise ValueError("not a PROXY line: %r" % line)
        if words[1] == "UNKNOWN":
            return {"version": 1, "command": "UNKNOWN", "raw": line.decode()}
        return {"version": 1, "command": "PROXY", "family": words[1], "src": [words[2], int(words[4])],
                "dst": [words[3], int(words[5])], "raw": line.decode()}
    if first != b"\r":
        raise ValueError("no PROXY header: first byte %r" % first)
    h = first + recv_exact(c, 15)
    if h[:12] != V2_SIG:
        raise ValueError("bad v2 signature %r" % h[:12])
    ver_cmd, fam, length = h[12], h[13], struct.unpack(">H", h[14:16])[0]
    body = recv_exact(c, length)
    out = {"version": ver_cmd >> 4, "command": {0: "LOCAL", 1: "PROXY"}.get(ver_cmd & 15, ver_cmd & 15),
           "family": "0x%02x" % fam, "length": length}
    if fam == 0x11:
        s, d, sp, dp = struct.unpack(">4s4sHH", body[:12])
        out.update(src=[socket.inet_ntop(socket.AF_INET, s), sp], dst=[socket.inet_ntop(socket.AF_INET, d), dp],
                   tlv=length - 12)
    elif fam == 0x21:
        s, d, sp, dp = struct.unpack(">16s16sHH", body[:36])
        out.update(src=[socket.inet_ntop(socket.AF_INET6, s), sp], dst=[socket.inet_ntop(socket.AF_INET6, d), dp],
                   tlv=length - 36)
    elif fam == 0x31:
        out.update(src=body[:108].split(b"\0")[0].decode(errors="replace"),
                   dst=body[108:216].split(b"\0")[0].decode(errors="replace"), tlv=length - 216)
    return out


def v2_header(src, dst, tlvs=b"", command=1):
    """A v2 PROXY header for (ip, port) @src -> @dst (IPv4 or IPv6), with @tlvs appended."""
    if command == 0:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack(">H", len(tlvs)) + tlvs
    fam = socket.AF_INET6 if ":" in src[0] else socket.AF_INET
    body = (socket.inet_pton(fam, src[0]) + socket.inet_pton(fam, dst[0]) + struct.pack(">HH", src[1], dst[1]) +
            tlvs)
    return V2_SIG + bytes([0x21, 0x11 if fam == socket.AF_INET else 0x21]) + struct.pack(">H", len(body)) + body


def tlv(t, value):
    return bytes([t]) + struct.pack(">H", len(value)) + value


# ---- clients ----------------------------------------------------------------------------------------------

def connect(addr, src=None, timeout=10):
    if isinstance(addr, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout * SLOW)
    if src:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
    try:
        s.connect(addr)
    except OSError as e:
        fail("connecting to %s%s: %s" % (addr, " from %s" % src if src else "", e))
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(1)
        if not d:
            return buf
        buf += d
    return buf


def read_to_end(s):
    parts = []
    while True:
        try:
            d = s.recv(1 << 16)
        except ConnectionResetError:
            return b"".join(parts)
        if not d:
            return b"".join(parts)
        parts.append(d)


def proxied_visit(addr, src=None, payload=b"hello through the edge", prefix=b""):
    """One connection to @addr (from @src) that reaches a proxy Backend: (what the backend says it read in the
    PROXY header, the client's own (address, port)). @prefix is sent first (a PROXY header of the test's)."""
    s = connect(addr, src)
    me = s.getsockname()
    try:
        if prefix:
            s.sendall(prefix)
        line = read_line(s)
        if not line:
            fail("via %s from %s: closed before the backend's answer" % (addr, src or "anywhere"))
        seen = json.loads(line)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        rest = read_to_end(s)
        if rest != payload:
            fail("via %s: %d of %d bytes echoed" % (addr, len(rest), len(payload)))
    except OSError as e:
        fail("via %s from %s: %s" % (addr, src, e))
    finally:
        s.close()
    return seen, me


def tag_visit(addr, src=None, payload=b"", prefix=b""):
    """One connection to a tagging Backend through evfdd: its tag once @payload came back and the connection
    ended cleanly, or None when evfdd closed it unserved."""
    s = connect(addr, src)
    try:
        if prefix:
            s.sendall(prefix)
        try:
            tag = s.recv(1)
        except ConnectionResetError:
            tag = b""
        if not tag:
            return None
        if payload:
            s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        rest = read_to_end(s)
        if rest != payload:
            fail("via %s: %d of %d bytes echoed" % (addr, len(rest), len(payload)))
        return tag
    finally:
        s.close()


def refused(addr, src=None, send=b"", timeout=5):
    """A connection that evfdd must close unserved: True when it did within @timeout (EOF or reset, no byte)."""
    s = connect(addr, src)
    try:
        if send:
            try:
                s.sendall(send)
            except OSError:
                return True
        return closed_by_peer(s, timeout * SLOW) == "closed"
    finally:
        s.close()


def pidfd_getfd(pid, fd):
    libc = ctypes.CDLL(None, use_errno=True)
    pfd = os.pidfd_open(pid)
    try:
        n = libc.syscall(438, pfd, fd, 0)   # pidfd_getfd
        if n < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return n
    finally:
        os.close(pfd)


def evfdd_sockets(pid):
    """evfdd's TCP sockets, copied into this process: [(local, peer, socket)]."""
    out = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                continue
            fd = pidfd_getfd(pid, int(name))
        except OSError:
            continue
        s = socket.socket(fileno=fd)
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                out.append((s.getsockname()[:2], s.getpeername()[:2], s))
                continue
        except OSError:
            pass
        s.close()
    return out


def tcp_opts(s):
    g = lambda lvl, opt: s.getsockopt(lvl, opt)
    return {"keepalive": g(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": g(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), "intvl": g(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "cnt": g(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": g(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}


# ---- TLS --------------------------------------------------------------------------------------------------

def client_hello(sni):
    """A real ClientHello (Python's ssl, TLS 1.2-1.3) for @sni (None: no server_name): (bytes, SSLObject, its
    incoming BIO, outgoing BIO), the handshake suspended after the hello."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read(), obj, inc, out


def refragment(hello, records):
    """The handshake bytes of @hello's one record re-cut into @records records (the record layer may fragment a
    handshake message anywhere)."""
    if hello[0] != 22 or len(hello) != 5 + struct.unpack(">H", hello[3:5])[0]:
        fail("the ClientHello is not one record: %r" % hello[:8])
    body, ver = hello[5:], hello[1:3]
    cuts = sorted(random.sample(range(1, len(body)), records - 1))
    out, prev = b"", 0
    for c in cuts + [len(body)]:
        out += bytes([22]) + ver + struct.pack(">H", c - prev) + body[prev:c]
        prev = c
    return out


def tls_visit(addr, sni, cafile, chunks=1, records=1, what=""):
    """A TLS handshake through evfdd to an s_server -www: the hello (optionally re-cut into @records records) is
    written in @chunks pieces with pauses (TCP_NODELAY: one segment each), then the handshake completes (the
    server's certificate must be @cafile's, the only one trusted), "GET /" is answered, both sides close. Returns
    the certificate's CN, or None when evfdd closed the connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    if records > 1:
        hello = refragment(hello, records)
    s = connect(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        cuts = sorted(random.sample(range(1, len(hello)), chunks - 1)) if chunks > 1 else []
        prev = 0
        for c in cuts + [len(hello)]:
            s.sendall(hello[prev:c])
            prev = c
            if c != len(hello):
                time.sleep(0.03)

        def pump():
            d = out.read()
            if d:
                s.sendall(d)
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                d = b""
            if not d:
                return False
            inc.write(d)
            return True

        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if not pump():
                    return None
            except ssl.SSLError as e:
                fail("%s: TLS handshake through evfdd (SNI %r): %s" % (what, sni, e))
        obj.write(b"GET / HTTP/1.0\r\n\r\n")
        got = b""
        while True:
            try:
                x = obj.read(65536)
                if not x:
                    break
                got += x
            except ssl.SSLWantReadError:
                if not pump():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        try:
            obj.unwrap()   # our close_notify
        except ssl.SSLError:
            pass
        try:
            d = out.read()
            if d:
                s.sendall(d)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        read_to_end(s)
        if b"200 ok" not in got.lower():
            fail("%s: s_server's answer through evfdd (SNI %r): %r" % (what, sni, got[:200]))
        subj = dict(x[0] for x in obj.getpeercert()["subject"])
        return subj.get("commonName")
    finally:
        s.close()


def s_client(port, servername):
    """openssl s_client through evfdd, with -servername NAME or (None) -noservername, asking GET /: the CN of
    the certificate the handshake completed with, or None."""
    argv = [OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-ign_eof"]
    argv += ["-servername", servername] if servername else ["-noservername"]
    out = subprocess.run(argv, input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=20 * SLOW)
    m = re.search(r"^subject=.*CN ?= ?([^,\n/]+)", out.stdout, re.M)
    if m and "200 ok" not in out.stdout.lower():
        fail("s_client -servername %s: a handshake with %s but no answer:\n%s" % (servername, m.group(1),
                                                                               out.stdout[-2000:]))
    return m.group(1).strip() if m else None


# ---- the cases --------------------------------------------------------------------------------------------

def case_proxy_v2_in_v1_out():
    """HAProxy (send-proxy-v2) in front of evfdd (accept_proxy, proxy_from 127.0.0.1) sending v1 to a backend
    that parses it: a client bound to 127.0.0.5 is what the backend sees, with the port the client had and the
    address it dialed (HAProxy's); the same from ::1 through an IPv6 bind (TCP6 ::1)."""
    be = Backend(("127.0.0.1", 0), proxy=True)
    e, h4, h6 = free_port(), free_port(), free_port()
    d = Daemon(head() + "[in2]\nlisten = 127.0.0.1:%d\nforward = %s\naccept_proxy = yes\nproxy_from = 127.0.0.1/32"
               "\nsend_proxy = v1\n" % (e, be.name))
    haproxy("frontend f4\n    bind 127.0.0.1:%d\n    default_backend evfdd\n"
            "frontend f6\n    bind [::1]:%d\n    default_backend evfdd\n"
            "backend evfdd\n    server e 127.0.0.1:%d send-proxy-v2\n" % (h4, h6, e), [h4, h6])
    n = 0
    for src, front in (("127.0.0.5", ("127.0.0.1", h4)), ("127.0.0.6", ("127.0.0.1", h4)), ("::1", ("::1", h6))):
        for _ in range(3):
            seen, me = proxied_visit(front, src if src != "::1" else None)
            n += 1
            want = {"version": 1, "command": "PROXY", "family": "TCP6" if ":" in src else "TCP4",
                    "src": [src, me[1]], "dst": list(front)}
            got = {k: seen.get(k) for k in want}
            if got != want:
                fail("client %s:%d through HAProxy (v2) and evfdd (v1): the backend read %r, expected %s"
                     % (src, me[1], seen.get("raw"), want))
    d.expect_counts("in2", "PROXY v2 in, v1 out", total=n, closed=n)
    d.expect_backend("in2", be.name, "PROXY v2 in, v1 out", connections=n, open=0)
    d.stop()
    print("ok PROXY v2 in (HAProxy send-proxy-v2), v1 out: the backend saw 127.0.0.5, 127.0.0.6 and ::1 with "
          "their ports, %d connections counted closed" % n, flush=True)


def case_proxy_v1_in_v2_out():
    """HAProxy (send-proxy, v1) in front of evfdd sending v2 to a backend on a Unix socket and to one on ::1:
    family 0x11 for 127.0.0.5, 0x21 for ::1, no TLV; the bytes after the header relayed both ways."""
    upath = os.path.join(TMP, "v2-backend.sock")
    bu = Backend(upath, proxy=True)
    b6 = Backend(("::1", 0), proxy=True)
    eu, e6, h4, h6 = free_port(), free_port(), free_port(), free_port()
    d = Daemon(head() + "[in1u]\nlisten = 127.0.0.1:%d\nforward = %s\naccept_proxy = yes\nproxy_from = 127.0.0.1"
               "\nsend_proxy = v2\n"
               "[in1v6]\nlisten = [::1]:%d\nforward = %s\naccept_proxy = yes\nproxy_from = ::1/128\nsend_proxy = v2\n"
               % (eu, bu.name, e6, b6.name))
    haproxy("frontend f4\n    bind 127.0.0.1:%d\n    default_backend eu\n"
            "frontend f6\n    bind [::1]:%d\n    default_backend e6\n"
            "backend eu\n    server e 127.0.0.1:%d send-proxy\n"
            "backend e6\n    server e [::1]:%d send-proxy\n" % (h4, h6, eu, e6), [h4, h6])
    cases = [("127.0.0.5", ("127.0.0.1", h4), "0x11", "in1u"), ("::1", ("::1", h6), "0x21", "in1v6")] * 3
    for src, front, fam, svc in cases:
        payload = os.urandom(100000)
        seen, me = proxied_visit(front, src if src != "::1" else None, payload=payload)
        want = {"version": 2, "command": "PROXY", "family": fam, "src": [src, me[1]], "dst": list(front), "tlv": 0}
        got = {k: seen.get(k) for k in want}
        if got != want:
            fail("client %s through HAProxy (v1) and [%s] (v2): the backend read %s, expected %s"
                 % (src, svc, seen, want))
    if len(bu.served()) != 3 or len(b6.served()) != 3:
        fail("the Unix backend served %d, the IPv6 one %d, expected 3 each" % (len(bu.served()), len(b6.served())))
    d.expect_counts("in1u", "v1 in, v2 out to a Unix backend", total=3, closed=3)
    d.expect_counts("in1v6", "v1 in, v2 out over IPv6", total=3, closed=3)
    d.expect_backend("in1u", upath, "the Unix backend", connections=3, bytes_up=300000)
    d.stop()
    print("ok PROXY v1 in (HAProxy send-proxy), v2 out: a Unix-socket backend read 0x11 127.0.0.5, an IPv6 one "
          "0x21 ::1, 100 kB relayed each way after the header", flush=True)


def case_proxy_out_unix_and_checks():
    """send_proxy from a Unix listener: v2 says AF_UNIX (0x31) with the listener's path, v1 says UNKNOWN; health
    checks (connect) send v2 LOCAL / v1 UNKNOWN first."""
    b2, b1 = Backend(("127.0.0.1", 0), proxy=True), Backend(("127.0.0.1", 0), proxy=True)
    h2, h1 = Backend(("127.0.0.1", 0), proxy=True), Backend(("127.0.0.1", 0), proxy=True)
    l2, l1 = os.path.join(TMP, "u2.sock"), os.path.join(TMP, "u1.sock")
    d = Daemon(head() + "[u2]\nlisten = %s\nforward = %s\nsend_proxy = v2\n[u1]\nlisten = %s\nforward = %s\n"
               "send_proxy = v1\n[hc2]\nlisten = 127.0.0.1:%d\nforward = %s\nsend_proxy = v2\nhealth_check = connect\n"
               "health_interval = 100ms\n[hc1]\nlisten = 127.0.0.1:%d\nforward = %s\nsend_proxy = v1\n"
               "health_check = connect\nhealth_interval = 100ms\n"
               % (l2, b2.name, l1, b1.name, free_port(), h2.name, free_port(), h1.name))
    seen, _ = proxied_visit(l2)
    if {k: seen.get(k) for k in ("version", "command", "family", "src", "dst")} != {
            "version": 2, "command": "PROXY", "family": "0x31", "src": "", "dst": l2}:
        fail("an unnamed Unix client through [u2] (v2): the backend read %s" % seen)
    seen, _ = proxied_visit(l1)
    if seen.get("raw") != "PROXY UNKNOWN\r\n":
        fail("a Unix client through [u1] (v1): the backend read %s" % seen)
    time.sleep(0.6 * SLOW)
    c2 = [c for c in h2.conns if c.get("done")]
    c1 = [c for c in h1.conns if c.get("done")]
    if len(c2) < 2 or any((c.get("version"), c.get("command"), c.get("family"), c.get("length")) !=
                          (2, "LOCAL", "0x00", 0) for c in c2):
        fail("health checks with send_proxy = v2: %s" % c2[:4])
    if len(c1) < 2 or any(c.get("raw") != "PROXY UNKNOWN\r\n" for c in c1):
        fail("health checks with send_proxy = v1: %s" % c1[:4])
    d.expect_counts("u2", "Unix client, v2", total=1, closed=1)
    d.expect_counts("u1", "Unix client, v1", total=1, closed=1)
    d.stop()
    print("ok send_proxy from a Unix listener: v2 AF_UNIX with the listener's path, v1 UNKNOWN; %d/%d health "
          "checks sent v2 LOCAL / v1 UNKNOWN" % (len(c2), len(c1)), flush=True)


def case_mapped_addresses():
    """A dual-stack listener (*:PORT, one IPv6 socket) sees IPv4 clients as ::ffff:a.b.c.d: evfdd unmaps them
    everywhere: send_proxy v2 says 0x11 127.0.0.5 -> 127.0.0.1, v1 says TCP4, allow = 127.0.0.5 (an IPv4 prefix)
    matches, and the access log writes 127.0.0.5:PORT."""
    b2, b1 = Backend(("127.0.0.1", 0), proxy=True), Backend(("127.0.0.1", 0), proxy=True)
    p2, p1 = free_port(), free_port()
    d = Daemon(head() + "[m2]\nlisten = *:%d\nforward = %s\nsend_proxy = v2\nallow = 127.0.0.5\naccess_log = yes\n"
               "[m1]\nlisten = *:%d\nforward = %s\nsend_proxy = v1\n" % (p2, b2.name, p1, b1.name))
    seen, me = proxied_visit(("127.0.0.1", p2), "127.0.0.5")
    want = {"version": 2, "command": "PROXY", "family": "0x11", "src": ["127.0.0.5", me[1]],
            "dst": ["127.0.0.1", p2]}
    if {k: seen.get(k) for k in want} != want:
        fail("an IPv4 client of a *:PORT listener, send_proxy v2: the backend read %s, expected %s" % (seen, want))
    seen, me = proxied_visit(("127.0.0.1", p1), "127.0.0.5")
    if seen.get("raw") != "PROXY TCP4 127.0.0.5 127.0.0.1 %d %d\r\n" % (me[1], p1):
        fail("an IPv4 client of a *:PORT listener, send_proxy v1: the backend read %r" % seen.get("raw"))
    if not refused(("127.0.0.1", p2), "127.0.0.6"):
        fail("127.0.0.6 (outside allow = 127.0.0.5) served by a *:PORT listener")
    d.wait_log("[m2] 127.0.0.5:")
    d.expect_counts("m2", "mapped addresses", total=2, closed=1, denied=1)
    d.expect_counts("m1", "mapped addresses", total=1, closed=1)
    if "::ffff:" in d.text():
        fail("evfdd's log shows a mapped address:\n%s" % d.text()[-2000:])
    d.stop()
    print("ok IPv4 clients of a *:PORT listener unmapped: v2 0x11 and v1 TCP4 127.0.0.5, allow matched, logged "
          "as 127.0.0.5", flush=True)


def case_proxy_to_haproxy():
    """evfdd in front of HAProxy (accept-proxy on its bind): HAProxy logs the real client, 127.0.0.5 with its
    port and the address it dialed (evfdd's), for send_proxy v2 and v1, and ::1 over IPv6."""
    echo = Backend(("127.0.0.1", 0), tag=b"H")
    e2, e1, e6, h2, h1 = free_port(), free_port(), free_port(), free_port(), free_port()
    fmt = "    log-format \"edgetest fe=%%ft client=%%ci:%%cp dst=%%fi:%%fp\"\n"
    hp = haproxy(("frontend fv2\n    bind 127.0.0.1:%d accept-proxy\n    default_backend echo\n" + fmt +
                  "frontend fv1\n    bind 127.0.0.1:%d accept-proxy\n    default_backend echo\n" + fmt +
                  "backend echo\n    server s %s\n") % (h2, h1, echo.name), [h2, h1])
    d = Daemon(head() + "[to2]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\nsend_proxy = v2\n"
               "[to1]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\nsend_proxy = v1\n"
               "[to6]\nlisten = [::1]:%d\nforward = 127.0.0.1:%d\nsend_proxy = v2\n" % (e2, h2, e1, h1, e6, h2))
    for svc, port, fe, src in (("to2", e2, "fv2", "127.0.0.5"), ("to1", e1, "fv1", "127.0.0.5"),
                               ("to6", e6, "fv2", "::1")):
        addr = ("::1" if src == "::1" else "127.0.0.1", port)
        s = connect(addr, src if src != "::1" else None)
        me = s.getsockname()
        try:
            if s.recv(1) != b"H":
                fail("[%s] to HAProxy: no greeting from the backend behind it" % svc)
            s.sendall(b"x" * 1000)
            s.shutdown(socket.SHUT_WR)
            if read_to_end(s) != b"x" * 1000:
                fail("[%s] to HAProxy: the echo came back wrong" % svc)
        finally:
            s.close()
        want = "edgetest fe=%s client=%s:%d dst=%s:%d" % (fe, src, me[1], addr[0], port)
        hp.wait_text(re.escape(want) + r"\n", "[%s] send_proxy to HAProxy accept-proxy" % svc)
        d.expect_counts(svc, "to HAProxy", total=1, closed=1)
    d.stop()
    print("ok HAProxy behind evfdd (accept-proxy) logged the real clients: 127.0.0.5 via v2 and v1, ::1 via v2",
          flush=True)


def bad_proxy_corpus():
    """(name, bytes, how): how is "now" (evfdd must close at once, the client keeping its side open), "eof"
    (the client half-closes after the bytes), "timeout" (the client waits: evfdd closes at proxy_timeout)."""
    a, b = ("192.0.2.1", 1234), ("198.51.100.2", 80)
    good = v2_header(a, b)
    corpus = [
        ("http request", b"GET / HTTP/1.0\r\n\r\n", "now"),
        ("one wrong byte", b"G", "now"),
        ("v1 wrong keyword", b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "now"),
        ("v1 TCP5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "now"),
        ("v1 two spaces", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "now"),
        ("v1 port 65536", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "now"),
        ("v1 leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "now"),
        ("v1 TCP4 with IPv6", b"PROXY TCP4 ::1 ::1 1 2\r\n", "now"),
        ("v1 LF only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "now"),
        ("v1 no CRLF in 107", b"PROXY UNKNOWN " + b"x" * 200, "now"),
        ("v2 wrong signature", V2_SIG[:11] + b"X" + good[12:], "now"),
        ("v2 version 1", good[:12] + b"\x11" + good[13:], "now"),
        ("v2 command 2", good[:12] + b"\x22" + good[13:], "now"),
        ("v2 UDP", good[:13] + b"\x12" + good[14:], "now"),
        ("v2 length short of the addresses", good[:14] + struct.pack(">H", 8) + good[16:24], "now"),
        ("v2 TLV past the end", good[:14] + struct.pack(">H", 12 + 5) + good[16:] + b"\x04\x00\x09ab", "now"),
        ("v2 TLV header cut", good[:14] + struct.pack(">H", 12 + 2) + good[16:] + b"\x04\x00", "now"),
        ("v2 oversized", good[:14] + struct.pack(">H", 65000) + good[16:], "now"),
        ("v1 truncated", b"PROXY TCP4 127.0.0.9 127.0.0.1 4", "eof"),
        ("v2 truncated", good[:20], "eof"),
        ("v2 signature only", V2_SIG, "eof"),
        ("nothing", b"", "eof"),
        ("v1 truncated, held", b"PROXY TCP4 127.0.0.9 127.0.0", "timeout"),
        ("v2 truncated, held", good[:-3], "timeout"),
    ]
    return corpus


def case_bad_proxy_headers():
    """A corpus of malformed PROXY headers (wrong signatures, bad syntax, inconsistent lengths, truncated, held,
    10 MB of junk, a valid header trickled slower than proxy_timeout): each closed without reaching the backend,
    counted as bad_proxy_header; v2 with TLVs, v2 LOCAL and v1 UNKNOWN accepted; a connection open all along is
    undisturbed."""
    be = Backend(("127.0.0.1", 0), tag=b"E")
    port = free_port()
    d = Daemon(head() + "[pp]\nlisten = 127.0.0.1:%d\nforward = %s\naccept_proxy = yes\nproxy_from = 127.0.0.0/8\n"
               "proxy_timeout = 500ms\n" % (port, be.name))
    addr = ("127.0.0.1", port)
    # A good connection held open across the corpus.
    held = connect(addr)
    held.sendall(v2_header(("10.1.2.3", 999), ("10.0.0.1", 80)))
    if held.recv(1) != b"E":
        fail("the held connection was not served")

    def held_round(n):
        data = os.urandom(n)
        held.sendall(data)
        got = b""
        while len(got) < n:
            x = held.recv(65536)
            if not x:
                fail("the held connection ended during the corpus")
            got += x
        if got != data:
            fail("the held connection's echo was corrupted")

    bad = 0
    for name, data, how in bad_proxy_corpus():
        s = connect(addr)
        t0 = time.monotonic()
        try:
            try:
                if data:
                    s.sendall(data)
                if how == "eof":
                    s.shutdown(socket.SHUT_WR)
                r = closed_by_peer(s, 5 * SLOW)
            except OSError:
                r = "closed"
        finally:
            s.close()
        took = time.monotonic() - t0
        bad += 1
        if r != "closed":
            fail("bad header %r: evfdd did not close the connection (%s)" % (name, r))
        if how == "now" and took > 0.35 * SLOW:
            fail("bad header %r: closed after %.2f s, not at once" % (name, took))
        if how == "timeout" and not 0.4 < took < 2 * SLOW:
            fail("bad header %r held: closed after %.2f s, proxy_timeout is 500ms" % (name, took))
        held_round(100)
    # 10 MB of junk, as fast as it goes: closed, the writer gets an error or finishes.
    s = connect(addr)
    junk = random.Random(3).randbytes(10 << 20)
    t0 = time.monotonic()
    try:
        s.sendall(b"\x00" + junk)
        r = closed_by_peer(s, 5 * SLOW)
    except OSError:
        r = "closed"
    s.close()
    bad += 1
    if r != "closed" or time.monotonic() - t0 > 5 * SLOW:
        fail("10 MB of junk: %s after %.2f s" % (r, time.monotonic() - t0))
    # A valid v2 header trickled a byte every 60 ms: 28 bytes take 1.7 s > proxy_timeout.
    s = connect(addr)
    t0 = time.monotonic()
    r = "data"
    try:
        for ch in v2_header(("192.0.2.8", 5), ("192.0.2.9", 6)):
            s.sendall(bytes([ch]))
            time.sleep(0.06)
            if select.select([s], [], [], 0)[0]:
                break
        r = closed_by_peer(s, 3 * SLOW)
    except OSError:
        r = "closed"
    finally:
        s.close()
    bad += 1
    took = time.monotonic() - t0
    if r != "closed" or not 0.4 < took < 1.2 * SLOW:
        fail("a header trickled past proxy_timeout: %s after %.2f s" % (r, took))
    held_round(100000)
    # Accepted: TLVs (as load balancers send them: ALPN, authority, unique id, a NOOP), LOCAL, UNKNOWN, TCP6.
    good = [("v2 with TLVs", v2_header(("192.0.2.1", 1), ("192.0.2.2", 2),
                                       tlv(1, b"h2") + tlv(2, b"example.com") + tlv(5, os.urandom(32)) +
                                       tlv(4, b"\0" * 300))),
            ("v2 LOCAL", v2_header(None, None, command=0)), ("v2 LOCAL with a TLV", v2_header(None, None, tlv(4, b"x"),
                                                                                          command=0)),
            ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n"), ("v1 UNKNOWN with addresses", b"PROXY UNKNOWN ::1 ::1 1 2\r\n"),
            ("v1 TCP6", b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n"),
            ("v1 TCP4", b"PROXY TCP4 255.255.255.255 0.0.0.0 0 65535\r\n")]
    for name, hdr in good:
        if tag_visit(addr, payload=b"after the header", prefix=hdr) != b"E":
            fail("a valid header (%s) was refused" % name)
    held.shutdown(socket.SHUT_WR)
    if read_to_end(held):
        fail("the held connection got bytes at its end")
    held.close()
    n_good = len(good) + 1
    if len(be.conns) != n_good:
        fail("the backend got %d connections, expected %d (none for a bad header)" % (len(be.conns), n_good))
    d.expect_counts("pp", "bad PROXY headers", total=bad + n_good, closed=n_good, bad_proxy_header=bad)
    v = d.metric("evfdd_connection_ends_total", service="pp", reason="bad_proxy_header")
    if v != bad:
        fail("metric evfdd_connection_ends_total{service=\"pp\",reason=\"bad_proxy_header\"} is %s, expected %d"
             % (v, bad))
    # The service, the peer and the reason on one line ("[pp] 127.0.0.1:PORT: bad PROXY header (malformed);
    # closing it"), rate-limited.
    if not re.search(r"^.*\[pp\] 127\.0\.0\.1:\d+: (bad PROXY header|no complete PROXY header)", d.text(), re.M):
        fail("no \"[pp] PEER: bad PROXY header\" in evfdd's log:\n%s" % d.text()[-2000:])
    d.stop()
    print("ok %d malformed PROXY headers (incl. 10 MB junk and a trickle past proxy_timeout) closed and counted "
          "bad_proxy_header; %d valid ones (TLVs, LOCAL, UNKNOWN, TCP6) served; a held connection undisturbed"
          % (bad, len(good)), flush=True)


def case_proxy_from():
    """accept_proxy with proxy_from not covering the peer: closed at once, counted denied, the backend never
    reached (even with a valid header); the learned address is what allow/deny judge."""
    be = Backend(("127.0.0.1", 0), tag=b"F")
    p1, p2 = free_port(), free_port()
    d = Daemon(head() + "[pf]\nlisten = 127.0.0.1:%d\nforward = %s\naccept_proxy = yes\n"
               "proxy_from = 10.0.0.0/8 127.0.0.9\n"
               "[pfa]\nlisten = 127.0.0.1:%d\nforward = %s\naccept_proxy = yes\nproxy_from = 127.0.0.0/8\n"
               "deny = 192.0.2.0/24\n" % (p1, be.name, p2, be.name))
    hdr = b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\n"
    for src in ("127.0.0.1", "127.0.0.5", "127.0.0.8"):
        if not refused(("127.0.0.1", p1), src, send=hdr):
            fail("a peer %s outside proxy_from was served" % src)
    if tag_visit(("127.0.0.1", p1), "127.0.0.9", prefix=hdr, payload=b"ok") != b"F":
        fail("the peer in proxy_from (127.0.0.9) was refused")
    d.expect_counts("pf", "proxy_from", total=4, closed=1, denied=3)
    # deny judged on the learned address (192.0.2.7 denied, 198.51.100.1 not) though the peer is allowed.
    if not refused(("127.0.0.1", p2), send=b"PROXY TCP4 192.0.2.7 127.0.0.1 1000 80\r\n"):
        fail("a learned address in deny was served")
    if tag_visit(("127.0.0.1", p2), prefix=hdr) != b"F":
        fail("a learned address outside deny was refused")
    d.expect_counts("pfa", "deny on the learned address", total=2, closed=1, denied=1)
    if len(be.conns) != 2:
        fail("the backend got %d connections, expected 2" % len(be.conns))
    d.stop()
    print("ok proxy_from: 3 peers outside it closed and counted denied; deny applies to the learned address",
          flush=True)


def sni_setup():
    names = ("a.example", "b.example", "wild.example", "default.example")
    srv = {n: SServer(n) for n in names}
    return srv


def case_sni_routing():
    """TLS routed by SNI without decrypting: s_server backends each with a certificate of its own; s_client
    -servername (capitals too), -noservername, Python clients whose ClientHello is split over several segments
    and several records: every handshake completes with the backend its name routes to (exact, the wildcard
    at any depth, sni_default). Without sni_default, no match closes: no_route. Counters agree."""
    if not OPENSSL:
        skip_case("openssl is not installed")
    srv = sni_setup()
    a, b, w, df = (srv[n] for n in ("a.example", "b.example", "wild.example", "default.example"))
    p, q = free_port(), free_port()
    d = Daemon(head() + "[sni]\nlisten = 127.0.0.1:%d\nsni_route = a.example=%s b.example=%s\n"
               "sni_route = *.wild.example=%s alias.example=%s\nsni_default = %s\n"
               "[strict]\nlisten = 127.0.0.1:%d\nsni_route = a.example=%s\n"
               % (p, a.name, b.name, w.name, a.name, df.name, q, a.name))
    want = [("a.example", "a.example"), ("B.Example", "b.example"), ("x.wild.example", "wild.example"),
            ("deep.x.y.wild.example", "wild.example"), ("wild.example", "default.example"),
            ("alias.example", "a.example"), ("other.test", "default.example"), (None, "default.example")]
    per = {}
    for name, cn in want:
        got = s_client(p, name)
        if got != cn:
            fail("s_client -servername %s: handshake with %r, expected %r" % (name, got, cn))
        per[cn] = per.get(cn, 0) + 1
    n_ok = len(want)
    for name, cn, chunks, records in (("a.example", "a.example", 6, 1), ("b.example", "b.example", 4, 3),
                                      ("z.wild.example", "wild.example", 12, 5), (None, "default.example", 3, 2),
                                      ("b.example", "b.example", 1, 8)):
        got = tls_visit(("127.0.0.1", p), name, srv[cn].crt, chunks, records, "split hello")
        if got != cn:
            fail("a ClientHello for %s in %d segments, %d records: handshake with %r, expected %r"
                 % (name, chunks, records, got, cn))
        per[cn] = per.get(cn, 0) + 1
        n_ok += 1
    # [strict]: a.example served; others and no SNI closed: no_route.
    if s_client(q, "a.example") != "a.example":
        fail("[strict] a.example was not routed")
    for name in ("b.example", "x.a.example", None):
        if tls_visit(("127.0.0.1", q), name, a.crt, what="no route") is not None:
            fail("[strict] without sni_default served SNI %r" % name)
    d.expect_counts("sni", "SNI routing", total=n_ok, closed=n_ok)
    d.expect_counts("strict", "SNI no_route", total=4, closed=1, no_route=3)
    bk = d.backends("sni")
    if sorted(bk) != sorted(x.name for x in (a, b, w, df)):
        fail("evfdctl backends sni lists %s: every backend once" % sorted(bk))
    for cn, x in srv.items():
        if bk[x.name]["connections"] != per.get(cn, 0):
            fail("[sni] backend %s (%s): %d connections counted, %d handshakes made"
                 % (x.name, cn, bk[x.name]["connections"], per.get(cn, 0)))
    d.stop()
    print("ok SNI routing: %d handshakes each with the certificate its name routes to (%s), hellos split over "
          "up to 12 segments and 8 records; no_route x3 without sni_default" % (n_ok, per), flush=True)


def case_bad_hellos():
    """Garbage, truncated (closed or held past proxy_timeout), non-handshake, SSLv2, oversized ClientHellos and
    one with a bad name byte: closed without reaching a backend, counted bad_client_hello; a good one after all of
    them is served."""
    if not OPENSSL:
        skip_case("openssl is not installed")
    a = SServer("a.example")
    port = free_port()
    d = Daemon(head() + "[tls]\nlisten = 127.0.0.1:%d\nsni_route = a.example=%s aaaa.example=%s\n"
               "sni_default = %s\nproxy_timeout = 500ms\n" % (port, a.name, a.name, a.name))
    hello = client_hello("a.example")[0]
    badname = client_hello("aaaa.example")[0].replace(b"aaaa.example", b"aa/a.example")
    # A ClientHello of 20000 bytes over two records (real ones do not exceed 16 KiB; evfdd reads at most that).
    big = (b"\x16\x03\x01\x40\x00" + b"\x01\x00\x4e\x20" + b"\x03\x03" + os.urandom(16378) +
           b"\x16\x03\x01" + struct.pack(">H", 3620) + os.urandom(3620))
    corpus = [("an HTTP request", b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", "now"),
              ("application data record", b"\x17\x03\x03\x00\x05hello", "now"),
              ("an alert record", b"\x15\x03\x03\x00\x02\x02\x28", "now"),
              ("SSLv2 hello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + os.urandom(37), "now"),
              ("record version 0x0200", b"\x16\x02\x00" + hello[3:], "now"),
              ("record length 0", b"\x16\x03\x01\x00\x00", "now"),
              ("a ServerHello", hello[:5] + b"\x02" + hello[6:], "now"),
              ("handshake length 64 KiB", hello[:6] + b"\x00\xff\xff" + hello[9:], "now"),
              ("a bad byte in the name", badname, "now"),
              ("a hello over 16 KiB", big, "now"),
              ("truncated, then EOF", hello[:len(hello) // 2], "eof"),
              ("only a record header", hello[:5], "eof"),
              ("truncated, held", hello[:-10], "timeout")]
    for name, data, how in corpus:
        s = connect(("127.0.0.1", port))
        t0 = time.monotonic()
        try:
            try:
                s.sendall(data)
                if how == "eof":
                    s.shutdown(socket.SHUT_WR)
                r = closed_by_peer(s, 5 * SLOW)
            except OSError:
                r = "closed"
        finally:
            s.close()
        took = time.monotonic() - t0
        if r != "closed":
            fail("bad ClientHello %r: %s" % (name, r))
        if how == "now" and took > 0.35 * SLOW:
            fail("bad ClientHello %r: closed after %.2f s, not at once" % (name, took))
        if how == "timeout" and not 0.4 < took < 2 * SLOW:
            fail("a truncated ClientHello held: closed after %.2f s, proxy_timeout is 500ms" % took)
    if tls_visit(("127.0.0.1", port), "a.example", a.crt, what="after the corpus") != "a.example":
        fail("a good ClientHello after the corpus was not served")
    d.expect_counts("tls", "bad ClientHellos", total=len(corpus) + 1, closed=1, bad_client_hello=len(corpus))
    d.expect_backend("tls", a.name, "bad ClientHellos", connections=1)
    d.stop()
    print("ok %d bad ClientHellos (garbage, non-handshake, SSLv2, > 16 KiB, bad name, truncated, held past "
          "proxy_timeout) closed and counted bad_client_hello; the backend saw only the good one" % len(corpus),
          flush=True)


def case_access_rules():
    """allow/deny (deny wins) and max_connections_per_source, clients bound to several 127.0.0.x addresses:
    refused ones closed unserved and counted denied / source_limit exactly; a source's slot comes back when
    its connection ends; another source is not limited by the first one's."""
    be = Backend(("127.0.0.1", 0), tag=b"R")
    port = free_port()
    d = Daemon(head() + "[rules]\nlisten = 127.0.0.1:%d\nforward = %s\nallow = 127.0.0.0/24\nallow = 127.0.2.0/24\n"
               "deny = 127.0.0.7 127.0.2.128/25\nmax_connections_per_source = 2\n" % (port, be.name))
    addr = ("127.0.0.1", port)
    denied = served = limited = 0
    for src in ("127.0.0.7", "127.0.1.5", "127.0.2.200", "127.1.0.1"):
        if not refused(addr, src):
            fail("a client from %s was served (allow 127.0.0.0/24 127.0.2.0/24, deny 127.0.0.7 127.0.2.128/25)" % src)
        denied += 1
    for src in ("127.0.0.6", "127.0.2.5"):
        if tag_visit(addr, src, payload=b"x") != b"R":
            fail("a client from %s (allowed) was refused" % src)
        served += 1
    held = []
    for src in ("127.0.0.5", "127.0.0.5", "127.0.0.8", "127.0.0.8"):
        s = connect(addr, src)
        if s.recv(1) != b"R":
            fail("connection %d from %s refused under the limit" % (len(held) + 1, src))
        held.append(s)
    for src in ("127.0.0.5", "127.0.0.8", "127.0.0.5"):
        if not refused(addr, src):
            fail("a third connection from %s was served (max_connections_per_source = 2)" % src)
        limited += 1
    if tag_visit(addr, "127.0.0.9") != b"R":
        fail("another source (127.0.0.9) was refused while 127.0.0.5 was at its limit")
    served += 1
    held[0].shutdown(socket.SHUT_WR)
    read_to_end(held[0])
    held[0].close()
    served += 1
    # Its slot comes back once evfdd has ended the connection.
    end = time.time() + 5 * SLOW
    while True:
        if tag_visit(addr, "127.0.0.5") == b"R":
            served += 1
            break
        limited += 1
        if time.time() > end:
            fail("127.0.0.5 stayed at its limit after one of its connections ended")
        time.sleep(0.05)
    for s in held[1:]:
        s.shutdown(socket.SHUT_WR)
        read_to_end(s)
        s.close()
        served += 1
    d.expect_counts("rules", "allow/deny/max_connections_per_source", total=denied + served + limited,
                    closed=served, denied=denied, source_limit=limited)
    for reason, n in (("denied", denied), ("source_limit", limited)):
        v = d.metric("evfdd_connection_ends_total", service="rules", reason=reason)
        if v != n:
            fail("metric evfdd_connection_ends_total{service=\"rules\",reason=\"%s\"} is %s, expected %d"
                 % (reason, v, n))
    if len(be.conns) != served:
        fail("the backend got %d connections, %d were served" % (len(be.conns), served))
    d.stop()
    print("ok allow/deny/max_connections_per_source: %d denied, %d source_limit, %d served, counters exact"
          % (denied, limited, served), flush=True)


def case_reload_rules():
    """A reload changes the edge of a running service: new rules apply to new connections, open ones carry on,
    and the per-source counts span the reload (a source at its limit stays there)."""
    be = Backend(("127.0.0.1", 0), tag=b"L")
    port = free_port()
    conf = head() + "[rl]\nlisten = 127.0.0.1:%d\nforward = %s\nmax_connections_per_source = 2\n%s"
    d = Daemon(conf % (port, be.name, ""))
    addr = ("127.0.0.1", port)
    held = []
    for _ in range(2):
        c = connect(addr, "127.0.0.5")
        if c.recv(1) != b"L":
            fail("a connection from 127.0.0.5 was refused under its limit")
        held.append(c)
    d.write(conf % (port, be.name, "deny = 127.0.0.6\n"))
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("reload: exit %d: %s" % (out.returncode, out.stderr))
    if not refused(addr, "127.0.0.5"):
        fail("after the reload, a third connection from 127.0.0.5 was served: its count was lost")
    if not refused(addr, "127.0.0.6"):
        fail("after the reload added deny = 127.0.0.6, 127.0.0.6 was served")
    d.write((conf % (port, be.name, "")).replace("max_connections_per_source = 2\n", ""))
    out = d.ctl("reload")
    if out.returncode != 0:
        fail("reload: exit %d: %s" % (out.returncode, out.stderr))
    if tag_visit(addr, "127.0.0.5") != b"L" or tag_visit(addr, "127.0.0.6") != b"L":
        fail("after a reload removed the rules, 127.0.0.5 or 127.0.0.6 was refused")
    for c in held:
        c.sendall(b"still here")
        c.shutdown(socket.SHUT_WR)
        read_to_end(c)
        c.close()
    d.expect_counts("rl", "rules changed by reloads", total=6, closed=4, denied=1, source_limit=1)
    d.stop()
    print("ok a reload changed the rules of a running service: new ones applied to new connections, a source "
          "at its limit stayed there across it, open connections carried on", flush=True)


def case_tcp_options():
    """tcp_keepalive = 7s,3s,4 and tcp_user_timeout = 9s on both of evfdd's sockets of a connection (read with
    getsockopt on copies of its descriptors), the keepalive timer running (ss -o); a service without them sets
    neither; source = 127.0.0.2 is the address the backend sees (IPv4 only: an IPv6 backend comes from ::1)."""
    b4, b6, plain_be = Backend(("127.0.0.1", 0), proxy=False, tag=b"4"), Backend(("::1", 0), tag=b"6"), \
        Backend(("127.0.0.1", 0), tag=b"P")
    p, p6, pp = free_port(), free_port(), free_port()
    d = Daemon(head() + "[ka]\nlisten = 127.0.0.1:%d\nforward = %s\ntcp_keepalive = 7s,3s,4\ntcp_user_timeout = 9s\n"
               "source = 127.0.0.2\n[ka6]\nlisten = 127.0.0.1:%d\nforward = %s\nsource = 127.0.0.2\n"
               "[plain]\nlisten = 127.0.0.1:%d\nforward = %s\n" % (p, b4.name, p6, b6.name, pp, plain_be.name))
    c = connect(("127.0.0.1", p), "127.0.0.5")
    cp = connect(("127.0.0.1", pp))
    if c.recv(1) != b"4" or cp.recv(1) != b"P":
        fail("the keepalive / plain services did not serve")
    if b4.conns[0]["peer"][0] != "127.0.0.2":
        fail("source = 127.0.0.2: the backend sees %s" % b4.conns[0]["peer"])
    me, mep = c.getsockname(), cp.getsockname()
    socks = evfdd_sockets(d.proc.pid)
    try:
        def find(peer):
            m = [s for _, pe, s in socks if tuple(pe) == tuple(peer)]
            if len(m) != 1:
                fail("evfdd has %d sockets with peer %s" % (len(m), peer))
            return m[0]

        want = {"keepalive": 1, "idle": 7, "intvl": 3, "cnt": 4, "user_timeout": 9000}
        for side, s in (("client", find(me)), ("backend", find(("127.0.0.1", b4.port)))):
            got = tcp_opts(s)
            if got != want:
                fail("[ka] evfdd's %s socket: %s, expected %s" % (side, got, want))
        for side, s in (("client", find(mep)), ("backend", find(("127.0.0.1", plain_be.port)))):
            got = tcp_opts(s)
            if got["keepalive"] or got["user_timeout"]:
                fail("[plain] evfdd's %s socket: %s, expected keepalive and user timeout off" % (side, got))
    finally:
        for _, _, s in socks:
            s.close()
    # evfdd's two sockets of the connection (the one whose local port is the listener's, the one whose peer is
    # the backend): both with the keepalive timer.
    out = subprocess.run(["ss", "-Htnoe", "state", "established", "( sport = :%d or dport = :%d )" % (p, b4.port)],
                         capture_output=True, text=True).stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    ka_lines = [ln for ln in lines if "timer:(keepalive" in ln]
    if len(lines) != 2 or len(ka_lines) != 2:
        fail("ss -tnoie shows the keepalive timer on %d sockets, expected evfdd's 2:\n%s" % (len(ka_lines), out))
    c6 = connect(("127.0.0.1", p6))
    if c6.recv(1) != b"6" or b6.conns[0]["peer"][0] != "::1":
        fail("source = 127.0.0.2 with an IPv6 backend: the backend sees %s" % (b6.conns and b6.conns[0]["peer"]))
    for s in (c, cp, c6):
        s.shutdown(socket.SHUT_WR)
        read_to_end(s)
        s.close()
    d.expect_counts("ka", "tcp options", total=1, closed=1)
    d.expect_counts("ka6", "source with IPv6", total=1, closed=1)
    d.expect_counts("plain", "no tcp options", total=1, closed=1)
    d.stop()
    print("ok tcp_keepalive 7s,3s,4 and tcp_user_timeout 9000 ms on both of evfdd's sockets (getsockopt; ss "
          "shows the keepalive timer), not on a plain service; source 127.0.0.2 seen by the backend", flush=True)


# BACKEND "" (a refused connection) is written "(no backend)" in the message.
ACCESS_RE = r"\[(?P<svc>[^\]]+)\] (?P<client>\S+) -> (?P<backend>\(no backend\)|\S+) (?P<end>[a-z_]+), " \
            r"(?P<up>\d+) up, (?P<down>\d+) down, (?P<secs>\d+\.\d{3}) s"


def access_traffic(p, pd, upath, be):
    """The connections both access-log cases make: what each entry must say, in order per service."""
    want = []
    s = connect(("127.0.0.1", p), "127.0.0.5")
    me = s.getsockname()
    if s.recv(1) != b"L":
        fail("[acc] did not serve")
    s.sendall(b"0123456789")
    s.shutdown(socket.SHUT_WR)
    if read_to_end(s) != b"0123456789":
        fail("[acc] echo")
    s.close()
    want.append(("acc", "127.0.0.5:%d" % me[1], be.name, "closed", 10, 11))
    # The learned address, IPv4 and IPv6.
    for hdr, client in ((b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n", "192.0.2.7:5555"),
                        (v2_header(("2001:db8::1", 443), ("2001:db8::2", 80)), "[2001:db8::1]:443")):
        if tag_visit(("127.0.0.1", pd), prefix=hdr, payload=b"abc") != b"L":
            fail("[accp] did not serve")
        want.append(("accp", client, be.name, "closed", 3, 4))
    # Refused: denied by deny, with no backend.
    s = connect(("127.0.0.1", pd))
    s.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 4444 80\r\n")
    if closed_by_peer(s, 5 * SLOW) != "closed":
        fail("a denied learned address was served")
    s.close()
    want.append(("accp", "198.51.100.9:4444", "", "denied", 0, 0))
    s = connect(("127.0.0.1", pd))
    me = s.getsockname()
    s.sendall(b"GET /\r\n")
    closed_by_peer(s, 5 * SLOW)
    s.close()
    want.append(("accp", "127.0.0.1:%d" % me[1], "", "bad_proxy_header", 0, 0))
    if tag_visit(upath, payload=b"u") != b"L":
        fail("[accu] did not serve")
    want.append(("accu", "unix", be.name, "closed", 1, 2))
    return want


def access_conf(p, pd, upath, be):
    return (head() + "[acc]\nlisten = 127.0.0.1:%d\nforward = %s\naccess_log = yes\n"
            "[accp]\nlisten = 127.0.0.1:%d\nforward = %s\naccess_log = yes\naccept_proxy = yes\n"
            "proxy_from = 127.0.0.1\ndeny = 198.51.100.0/24\n"
            "[accu]\nlisten = %s\nforward = %s\naccess_log = yes\n" % (p, be.name, pd, be.name, upath, be.name))


def check_entries(got, want, what):
    """@got: dicts with svc, client, backend, end, up, down; compared with @want per service (in any order:
    connections that end on different rings are written in the order they ended, which the clients do not
    see)."""
    for svc in sorted({w[0] for w in want}):
        g = sorted((e["svc"], e["client"], e["backend"], e["end"], e["up"], e["down"]) for e in got
                   if e["svc"] == svc)
        w = sorted(x for x in want if x[0] == svc)
        if g != w:
            fail("%s: [%s] access log entries\n  %s\nexpected\n  %s" % (what, svc, g, w))


def case_access_log_stderr():
    """access_log = yes, not under journald: one line per finished connection on stderr, "[svc] CLIENT ->
    BACKEND END, N up, N down, S.sss s": the client as learned (PROXY v1, v2 IPv6), "unix" for a Unix client,
    refused connections (denied, bad_proxy_header) with no backend; services without access_log log none."""
    be = Backend(("127.0.0.1", 0), tag=b"L")
    p, pd, pn = free_port(), free_port(), free_port()
    upath = os.path.join(TMP, "acc.sock")
    d = Daemon(access_conf(p, pd, upath, be) + "[quiet]\nlisten = 127.0.0.1:%d\nforward = %s\n" % (pn, be.name))
    want = access_traffic(p, pd, upath, be)
    tag_visit(("127.0.0.1", pn))
    end = time.time() + 5 * SLOW
    while True:
        entries = []
        for m in re.finditer(r"^evfdd\[\d+\]: info: " + ACCESS_RE + "$", d.text(), re.M):
            entries.append({"svc": m["svc"], "client": m["client"], "end": m["end"],
                            "backend": "" if m["backend"] == "(no backend)" else m["backend"],
                            "up": int(m["up"]), "down": int(m["down"]), "secs": float(m["secs"])})
        if len(entries) >= len(want) or time.time() > end:
            break
        time.sleep(0.05)
    if any(e["svc"] == "quiet" for e in entries):
        fail("[quiet] without access_log logged an entry")
    check_entries(entries, want, "stderr")
    if any(e["secs"] > 5 for e in entries):
        fail("access log durations: %s" % [e["secs"] for e in entries])
    d.expect_counts("accp", "access log", total=4, closed=2, denied=1, bad_proxy_header=1)
    d.expect_counts("acc", "access log", total=1, closed=1)
    d.expect_counts("accu", "access log", total=1, closed=1)
    if d.metric("evfdd_access_log_dropped_total") != 0:
        fail("evfdd_access_log_dropped_total is %s after 6 entries" % d.metric("evfdd_access_log_dropped_total"))
    d.stop()
    print("ok access log on stderr: %d entries, fields exact (learned IPv4/IPv6 clients, unix, denied and "
          "bad_proxy_header without backend)" % len(entries), flush=True)


def parse_journal_datagram(data):
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            n = struct.unpack("<Q", data[nl + 1:nl + 9])[0]
            v = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        fields[k.decode()] = v.decode(errors="replace")
    return fields


def case_access_log_journal():
    """access_log = yes under journald (JOURNAL_STREAM naming evfdd's stderr): one native journal datagram per
    connection, caught on a socket of the test's bind-mounted at /run/systemd/journal/socket in evfdd's private
    mount namespace: SERVICE CLIENT BACKEND BYTES_UP BYTES_DOWN DURATION_USEC END exact, PRIORITY=6, MESSAGE."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        skip_case("the journal form needs root and unshare(1) for a private mount namespace")
    sock_path = os.path.join(TMP, "journal.sock")
    js = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    js.bind(sock_path)
    js.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    grams = []

    def collect():
        while True:
            try:
                data, anc, _, _ = js.recvmsg(1 << 20, socket.CMSG_SPACE(16))
            except OSError:
                return
            grams.append(data)

    threading.Thread(target=collect, daemon=True).start()
    be = Backend(("127.0.0.1", 0), tag=b"L")
    p, pd = free_port(), free_port()
    upath = os.path.join(TMP, "accj.sock")
    wrap = [unshare, "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && : > /run/systemd/journal/socket && '
            'mount --bind "$0" /run/systemd/journal/socket && exec "$@"', sock_path]

    def env(log):
        st = os.fstat(log.fileno())
        return {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}

    d = Daemon(access_conf(p, pd, upath, be), wrap=wrap, env=env)
    want = access_traffic(p, pd, upath, be)
    end = time.time() + 5 * SLOW
    while True:
        entries = [parse_journal_datagram(g) for g in list(grams)]
        entries = [e for e in entries if "SERVICE" in e and "END" in e]
        if len(entries) >= len(want) or time.time() > end:
            break
        time.sleep(0.05)
    got = []
    for e in entries:
        for k in ("SERVICE", "CLIENT", "BACKEND", "BYTES_UP", "BYTES_DOWN", "DURATION_USEC", "END", "PRIORITY",
                  "MESSAGE"):
            if k not in e:
                fail("journal entry without %s: %s" % (k, e))
        if e["PRIORITY"] != "6" or not re.fullmatch(r"\d+", e["DURATION_USEC"]):
            fail("journal entry: PRIORITY %r DURATION_USEC %r" % (e["PRIORITY"], e["DURATION_USEC"]))
        m = re.fullmatch(ACCESS_RE, e["MESSAGE"])
        if not m or (m["svc"], m["client"], m["end"], m["up"], m["down"],
                     "" if m["backend"] == "(no backend)" else m["backend"]) != (
                e["SERVICE"], e["CLIENT"], e["END"], e["BYTES_UP"], e["BYTES_DOWN"], e["BACKEND"]) or \
                abs(float(m["secs"]) - int(e["DURATION_USEC"]) / 1e6) > 0.0011:
            fail("journal MESSAGE %r disagrees with its fields %s" % (e["MESSAGE"], e))
        got.append({"svc": e["SERVICE"], "client": e["CLIENT"], "backend": e["BACKEND"], "end": e["END"],
                    "up": int(e["BYTES_UP"]), "down": int(e["BYTES_DOWN"])})
    check_entries(got, want, "journal")
    if re.search(ACCESS_RE, d.text()):
        fail("under journald, an access entry went to stderr too:\n%s" % d.text()[-2000:])
    d.expect_counts("accp", "access log", total=4, closed=2, denied=1, bad_proxy_header=1)
    d.stop()
    js.close()
    print("ok access log as native journal datagrams: %d entries, fields exact, MESSAGE agrees" % len(got),
          flush=True)


def case_config_errors():
    """The new keys' rules: each bad file rejected by evfdd -n naming FILE:LINE, [section] and key; a file with
    every key accepted."""
    x = "127.0.0.1:%d" % free_port()
    top = "[evfdd]\nworkers = 1\n[svc]\nlisten = 127.0.0.1:%d\n" % free_port()   # body lines start at 5
    utop = "[evfdd]\nworkers = 1\n[svc]\nlisten = %s\n" % os.path.join(TMP, "cfg.sock")
    good = top + ("forward = %s\nsend_proxy = v2\naccept_proxy = yes\nproxy_from = 10.0.0.0/8 ::1\n"
                  "proxy_from = 127.0.0.1\nproxy_timeout = 100ms\nallow = 127.0.0.0/8\ndeny = 127.0.0.7\n"
                  "max_connections_per_source = 1000000\ntcp_keepalive = 60s,10s,5\ntcp_user_timeout = 1h\n"
                  "source = 127.0.0.2\naccess_log = yes\n" % x)
    rc, msg, _ = check_config(good, "good")
    if rc != 0:
        fail("evfdd -n on a file with every new key: exit %d, %r" % (rc, msg))
    sni_good = top + "sni_route = a.example=%s+%s,weight=2 *.b.example=%s\nsni_route = C.Example=%s\n" \
                     "sni_default = %s\n" % (x, "127.0.0.1:1", x, x, x)
    rc, msg, _ = check_config(sni_good, "sni-good")
    if rc != 0:
        fail("evfdd -n on sni_route/sni_default: exit %d, %r" % (rc, msg))
    rc, msg, _ = check_config(utop + "forward = %s\naccept_proxy = yes\nsend_proxy = v1\n" % x, "unix-good")
    if rc != 0:
        fail("evfdd -n on accept_proxy on a Unix listener without proxy_from: exit %d, %r" % (rc, msg))
    fw = "forward = %s" % x
    bad = [
        (top, [fw, "send_proxy = v3"], 6, "send_proxy"),
        (top, [fw, "accept_proxy = maybe"], 6, "accept_proxy"),
        (top, [fw, "proxy_from = 10.1.2.3/8"], 6, "proxy_from"),
        (top, [fw, "proxy_timeout = 50ms"], 6, "proxy_timeout"),
        (top, [fw, "proxy_timeout = 2m"], 6, "proxy_timeout"),
        (top, [fw, "allow = 300.0.0.0/8"], 6, "allow"),
        (top, [fw, "deny = ::1/129"], 6, "deny"),
        (top, [fw, "max_connections_per_source = 1000001"], 6, "max_connections_per_source"),
        (top, [fw, "tcp_keepalive = 0s,1s,1"], 6, "tcp_keepalive"),
        (top, [fw, "tcp_keepalive = 1s,1s,101"], 6, "tcp_keepalive"),
        (top, [fw, "tcp_keepalive = 3h,1s,1"], 6, "tcp_keepalive"),
        (top, [fw, "tcp_keepalive = 60s,10s"], 6, "tcp_keepalive"),
        (top, [fw, "tcp_user_timeout = 2h"], 6, "tcp_user_timeout"),
        (top, [fw, "source = localhost"], 6, "source"),
        (top, [fw, "source = 127.0.0.1:80"], 6, "source"),
        (top, [fw, "access_log = sometimes"], 6, "access_log"),
        (top, ["sni_route = a..example=%s" % x], 5, "sni_route"),
        (top, ["sni_route = a/b.example=%s" % x], 5, "sni_route"),
        (top, ["sni_route = a.*.example=%s" % x], 5, "sni_route"),
        (top, ["sni_route = a.example"], 5, "sni_route"),
        (top, ["sni_route = *.=%s" % x], 5, "sni_route"),
        (utop, [fw, "proxy_from = 127.0.0.1"], 6, "proxy_from"),
        (utop, [fw, "allow = 127.0.0.1"], 6, "allow"),
        (utop, [fw, "deny = 127.0.0.1"], 6, "deny"),
        (utop, [fw, "max_connections_per_source = 3"], 6, "max_connections_per_source"),
    ]
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda ib: check_config(ib[1][0] + "\n".join(ib[1][1]) + "\n", "bad-%d" % ib[0]),
                              enumerate(bad)))
    for (t, body, line, key), (rc, msg, path) in zip(bad, results):
        where = "%s:%d: [svc] %s:" % (path, line, key)
        if rc == 0 or where not in msg:
            fail("evfdd -n with %r: exit %d, expected a message starting %r; got %r" % (body, rc, where, msg))
    # Rules across keys: no line of their own to name, the message says why.
    cross = [
        (top + fw + "\naccept_proxy = yes\n", "needs proxy_from"),
        (top + "forward = echo\nsend_proxy = v2\n", "send_proxy"),
        (top + fw + "\nsni_route = a.example=%s\n" % x, "routed by SNI"),
        (top + fw + "\nsni_default = %s\n" % x, "sni_default"),
    ]
    for text, words in cross:
        rc, msg, _ = check_config(text, "cross")
        if rc == 0 or words not in msg:
            fail("evfdd -n on %r: exit %d, expected a message with %r; got %r" % (text[len(top):], rc, words, msg))
    print("ok configuration: the edge's keys accepted; %d bad values and %d bad combinations rejected with "
          "FILE:LINE, section and key" % (len(bad), len(cross)), flush=True)


CASES = (case_config_errors, case_proxy_v2_in_v1_out, case_proxy_v1_in_v2_out, case_proxy_out_unix_and_checks,
         case_mapped_addresses, case_proxy_to_haproxy, case_bad_proxy_headers, case_proxy_from, case_sni_routing,
         case_bad_hellos,
         case_access_rules, case_reload_rules, case_tcp_options, case_access_log_stderr, case_access_log_journal)


def main():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    if not HAPROXY or not OPENSSL:
        print("SKIP: test-edge needs haproxy and openssl (haproxy %s, openssl %s)" % (HAPROXY, OPENSSL))
        sys.exit(77)
    random.seed(1)
    run_cases(CASES, DAEMONS, TMP, procs=PROCS)


main()
