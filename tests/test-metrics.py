#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The Prometheus endpoint, with real peers: promtool (Debian's prometheus package) accepts the exposition,
also with quotes, backslashes and invalid UTF-8 in a backend's name; a real Prometheus server scraping every
second sees evfdd_connections_total move by exactly the connections the test made; the endpoint on a Unix
socket; HTTP's answers for other paths and methods; scrapes in a loop while connections and reloads go on
change nothing the clients see. Skips (77) where promtool or prometheus is missing."""
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from evfddtest import (EVFDCTL, EVFDD, SA_ENV, SCALE, Busy, DaemonLog, free_port, metric_samples,
                       run_cases)

TMP = tempfile.mkdtemp(prefix="evfdd-metrics-")
os.environ["RUNTIME_DIRECTORY"] = TMP
SLOW = 1 if SCALE == 1 else 3
DAEMONS = []
PROCS = []
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def fail(msg):
    print("FAIL: " + msg, flush=True)
    for p in DAEMONS + PROCS:
        proc = p.proc if hasattr(p, "proc") else p
        if proc.poll() is None:
            proc.kill()
    sys.exit(1)


class Daemon(DaemonLog):
    slow = SLOW

    def __init__(self, conf, wrap=(), wait_ready=True):
        self.path = os.path.join(TMP, "evfdd-%d.conf" % random.randrange(1 << 30))
        self.control = self.path + ".ctl"
        self.write(conf)
        self.log = open(self.path + ".log", "w+")
        self.proc = subprocess.Popen(list(wrap) + [EVFDD, "-c", self.path], stdout=self.log, stderr=self.log)
        DAEMONS.append(self)
        if wait_ready:
            self.wait_log("ready")

    def write(self, conf):
        conf = conf.replace("[evfdd]\n", "[evfdd]\ncontrol = %s\n" % self.control, 1)
        with open(self.path + ".new", "wb") as f:
            f.write(conf.encode("utf-8", "surrogateescape"))
        os.replace(self.path + ".new", self.path)

    def fail(self, msg):
        fail(msg)

    def ctl(self, *args):
        r = subprocess.run([EVFDCTL, "-s", self.control] + list(args), capture_output=True, timeout=30 * SLOW)
        if r.returncode != 0:
            fail("evfdctl %s: exit %d: %s" % (" ".join(args), r.returncode, r.stderr.decode(errors="replace")))
        return r.stdout

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.wait_exit()
        DAEMONS.remove(self)


def get(port, path="/metrics", method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SLOW)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), r.getheader("Allow"), body


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10 * SLOW)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10 * SLOW)
        self.sock.connect(self.unix_path)


def echo_round_trips(port, n):
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        s.sendall(b"ping %d" % i)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            d = s.recv(100)
            if not d:
                break
            got += d
        s.close()
        if got != b"ping %d" % i:
            fail("echo round trip %d: got %r" % (i, got))


def promtool_check(text, what):
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    if r.returncode != 0 or r.stdout.strip() or r.stderr.strip():
        fail("promtool check metrics (%s): exit %d\n%s%s\n--- the exposition:\n%s"
             % (what, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"),
                text.decode(errors="replace")[:4000]))


# A Unix backend path with a double quote, a backslash and a byte that is not UTF-8 (written in the file as
# that byte; "\\" and "\"" are the configuration's escapes inside a quoted path).
ODD_PATH = "/tmp/evfdd-m\"q\\b\udcff.sock"
ODD_CONF = '"/tmp/evfdd-m\\"q\\\\b\udcff.sock"'
ODD_LABEL = 'backend="/tmp/evfdd-m\\"q\\\\b\ufffd.sock"'


def case_exposition():
    mport, eport, lport = free_port(), free_port(), free_port()
    d = Daemon("[evfdd]\nmetrics = 127.0.0.1:%d\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n"
               "[lb]\nlisten = 127.0.0.1:%d\nforward = %s 127.0.0.1:1,weight=2\n" % (mport, eport, lport, ODD_CONF))
    echo_round_trips(eport, 7)
    # A connection is counted closed by its worker just after evfdd's last shutdown() of it, which the client
    # may see (and scrape) first: wait for the count to settle.
    end = time.time() + 10 * SLOW
    while True:
        status, ctype, _, body = get(mport)
        if status != 200 or ctype != "text/plain; version=0.0.4; charset=utf-8":
            fail("GET /metrics: %d %s" % (status, ctype))
        s = metric_samples(body)
        if s.get('evfdd_connections_closed_total{service="echo"}') == 7 or time.time() > end:
            break
        time.sleep(0.01)
    promtool_check(body, "TCP endpoint, odd backend path")
    want = {
        'evfdd_connections_total{service="echo"}': 7,
        'evfdd_connections_closed_total{service="echo"}': 7,
        'evfdd_connections_open{service="echo"}': 0,
        'evfdd_bytes_total{service="echo",direction="up"}': sum(len(b"ping %d" % i) for i in range(7)),
        'evfdd_connection_ends_total{service="echo",reason="no_backend"}': 0,
        'evfdd_backend_up{service="lb",%s}' % ODD_LABEL: 1,
        'evfdd_backend_drained{service="lb",backend="127.0.0.1:1"}': 0,
        'evfdd_workers': None, 'evfdd_rings': None, 'evfdd_ring_moves_total': None,
        'evfdd_reloads_total{result="ok"}': 0, 'evfdd_build_info{version="%s"}' % get_version(): 1,
    }
    for k, v in want.items():
        if k not in s or (v is not None and s[k] != v):
            fail("the exposition has %s = %s, want %s:\n%s" % (k, s.get(k), v, body.decode(errors="replace")))
    if 'evfdd_last_reload_success' in s:
        fail("evfdd_last_reload_success before any reload")
    # Every end reason of the service, from the one list of counters.
    ends = {k for k in s if k.startswith('evfdd_connection_ends_total{service="echo"')}
    if len(ends) != 15:
        fail("%d end reasons for echo: %s" % (len(ends), sorted(ends)))
    # HEAD, another path, another method.
    status, _, _, hbody = get(mport, method="HEAD")
    if status != 200 or hbody:
        fail("HEAD /metrics: %d, %d bytes" % (status, len(hbody)))
    status, _, _, _ = get(mport, "/")
    if status != 404:
        fail("GET /: %d, want 404" % status)
    status, _, allow, _ = get(mport, method="POST")
    if status != 405 or allow != "GET, HEAD":
        fail("POST /metrics: %d Allow: %s, want 405 and GET, HEAD" % (status, allow))
    # A reload is counted, and the last one's outcome shown.
    d.ctl("reload")
    s = metric_samples(get(mport)[3])
    if s.get('evfdd_reloads_total{result="ok"}') != 1 or s.get("evfdd_last_reload_success") != 1:
        fail("after a reload: %s" % {k: v for k, v in s.items() if "reload" in k})
    # evfdctl metrics: the same text through the control socket (for hosts without the endpoint).
    text = d.ctl("metrics")
    promtool_check(text, "evfdctl metrics")
    if set(metric_samples(text)) != set(metric_samples(get(mport)[3])):
        fail("evfdctl metrics and GET /metrics name different series")
    d.stop()
    print("ok exposition: promtool accepts it (a backend path with \", \\ and a non-UTF-8 byte escaped), 7 echo "
          "connections counted, 404/405/HEAD, a reload counted, evfdctl metrics the same series", flush=True)


def get_version():
    out = subprocess.run([EVFDD, "--version"], capture_output=True, text=True).stdout.split()
    return out[-1] if out else "?"


def case_unix_endpoint():
    sock = os.path.join(TMP, "m.sock")
    eport = free_port()
    d = Daemon("[evfdd]\nmetrics = %s\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (sock, eport))
    mode = os.stat(sock).st_mode & 0o777
    if mode != 0o660:
        fail("the metrics socket has mode %o, want 0660" % mode)
    c = UnixHTTP(sock)
    c.request("GET", "/metrics")
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or b'evfdd_connections_total{service="echo"} 0' not in body:
        fail("GET /metrics over %s: %d\n%s" % (sock, r.status, body[:2000]))
    d.stop()
    if os.path.exists(sock):
        fail("the metrics socket %s is left after exit" % sock)
    print("ok the endpoint on a Unix socket (mode 0660, removed at exit)", flush=True)


def case_activated():
    """An activated socket named metrics is the endpoint (evfdd-metrics.socket's FileDescriptorName=), also
    without metrics = in the file."""
    sa = shutil.which("systemd-socket-activate")
    if not sa:
        print("note: systemd-socket-activate not installed; the activated endpoint is not checked", flush=True)
        return
    mport, eport = free_port(), free_port()
    # systemd-socket-activate starts evfdd on the first connection to the socket, as systemd does.
    d = Daemon("[evfdd]\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % eport,
               wrap=[sa, "-l", "127.0.0.1:%d" % mport, "--fdname=metrics"] + SA_ENV, wait_ready=False)
    end = time.time() + 10 * SLOW
    while True:
        try:
            status, ctype, _, body = get(mport)
            break
        except ConnectionRefusedError:
            if time.time() > end or d.proc.poll() is not None:
                fail("systemd-socket-activate never listened on %d:\n%s" % (mport, d.text()))
            time.sleep(0.05)
    if status != 200 or b'evfdd_connections_total{service="echo"} 0' not in body:
        fail("GET /metrics on the activated socket: %d\n%s" % (status, body[:1000]))
    d.wait_log("metrics: using the activated socket")
    d.stop()
    print("ok an activated socket named metrics is the endpoint", flush=True)


def case_config_errors():
    path = os.path.join(TMP, "bad.conf")
    for value, want in (("example.com:80", "metrics: \"example.com:80\": listen needs a numeric address"),
                        ("relative/path", "metrics: \"relative/path\": relative path")):
        with open(path, "w") as f:
            f.write("[evfdd]\nmetrics = %s\n[s]\nforward = echo\n" % value)
        r = subprocess.run([EVFDD, "-n", "-c", path], capture_output=True, text=True)
        if r.returncode == 0 or "%s:2: [evfdd] %s" % (path, want) not in r.stderr:
            fail("evfdd -n with metrics = %s: exit %d\n%s" % (value, r.returncode, r.stderr))
    with open(path, "w") as f:
        f.write("[metrics]\nforward = echo\n")
    r = subprocess.run([EVFDD, "-n", "-c", path], capture_output=True, text=True)
    if r.returncode == 0 or "%s:1: [metrics]: reserved name" % path not in r.stderr:
        fail("a service named metrics: exit %d\n%s" % (r.returncode, r.stderr))
    print("ok config errors: metrics needs a numeric address or an absolute path; [metrics] is reserved", flush=True)


def prom_query(pport, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (pport, urllib.parse.urlencode({"query": expr}))
    with urllib.request.urlopen(url, timeout=10) as r:
        res = json.load(r)
    if res.get("status") != "success":
        fail("Prometheus query %s: %s" % (expr, res))
    v = res["data"]["result"]
    return float(v[0]["value"][1]) if v else None


def case_prometheus():
    if not PROMETHEUS:
        print("note: prometheus not found (tools/install-deps installs it); the scrape case is skipped",
              flush=True)
        return
    mport, eport, pport = free_port(), free_port(), free_port()
    d = Daemon("[evfdd]\nmetrics = 127.0.0.1:%d\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n" % (mport, eport))
    echo_round_trips(eport, 3)
    pdir = os.path.join(TMP, "prometheus")
    os.makedirs(pdir, exist_ok=True)
    with open(os.path.join(pdir, "prometheus.yml"), "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
                "  - job_name: evfdd\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % mport)
    plog = open(os.path.join(pdir, "prometheus.log"), "w")
    p = subprocess.Popen([PROMETHEUS, "--config.file=" + os.path.join(pdir, "prometheus.yml"),
                          "--storage.tsdb.path=" + os.path.join(pdir, "data"),
                          "--web.listen-address=127.0.0.1:%d" % pport, "--log.level=warn"],
                         stdout=plog, stderr=plog)
    PROCS.append(p)
    expr = 'evfdd_connections_total{job="evfdd",service="echo"}'
    end = time.time() + 60 * SLOW
    before = None
    while time.time() < end:
        try:
            before = prom_query(pport, expr)
        except OSError:
            before = None
        if before == 3 and prom_query(pport, 'up{job="evfdd"}') == 1:
            break
        if p.poll() is not None:
            fail("prometheus exited with %d:\n%s" % (p.returncode, open(plog.name).read()[-3000:]))
        time.sleep(0.3)
    if before != 3:
        fail("Prometheus never saw evfdd_connections_total = 3 (last: %s):\n%s" % (before, open(plog.name).read()[-3000:]))
    n = 25
    echo_round_trips(eport, n)
    # Raw instant values, not increase(): they must differ by exactly n once a scrape has seen them, and
    # never by anything else.
    end = time.time() + 30 * SLOW
    after = before
    while time.time() < end and after != before + n:
        after = prom_query(pport, expr)
        if after not in (before, before + n):
            fail("Prometheus saw %s, want %d then %d" % (after, before, before + n))
        time.sleep(0.3)
    if after != before + n:
        fail("Prometheus still sees %s after %d connections (want %d)" % (after, n, before + n))
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    PROCS.remove(p)
    d.stop()
    print("ok a real Prometheus scraping every second: evfdd_connections_total went from %d to %d, exactly the "
          "%d connections made" % (before, after, n), flush=True)


def case_scrapes_under_load():
    """Scrapes in a loop, beside a busy process per CPU, while clients stream hash-checked bytes and reloads
    change the workers: no client sees a reset, an empty EOF or a wrong byte, every scrape answers, and
    evfdd's own counters agree with the clients."""
    mport, eport = free_port(), free_port()
    conf = ("[evfdd]\nworkers = %d\nmetrics = 127.0.0.1:%d\n[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n")
    d = Daemon(conf % (2, mport, eport))
    stop = threading.Event()
    scrapes = {"ok": 0, "bad": []}
    results = {"ok": 0, "bad": []}

    def scraper():
        while not stop.is_set():
            try:
                st, _, _, body = get(mport)
                if st == 200 and b"evfdd_connections_total" in body:
                    scrapes["ok"] += 1
                else:
                    scrapes["bad"].append(st)
            except OSError as e:
                scrapes["bad"].append(str(e))

    def client(seed):
        rnd = random.Random(seed)
        while not stop.is_set():
            data = rnd.randbytes(rnd.randrange(1, 200000))
            try:
                s = socket.create_connection(("127.0.0.1", eport), timeout=30 * SLOW)
                t = threading.Thread(target=s.sendall, args=(data,))
                t.start()
                got = hashlib.sha256()
                n = 0
                while n < len(data):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got.update(chunk)
                    n += len(chunk)
                t.join()
                s.close()
                if n != len(data) or got.digest() != hashlib.sha256(data).digest():
                    results["bad"].append("%d of %d bytes, hash %s" % (n, len(data), "ok" if n == len(data) else "-"))
                else:
                    results["ok"] += 1
            except OSError as e:
                results["bad"].append(str(e))

    busy = Busy()
    threads = [threading.Thread(target=scraper)] + [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for i in range(8):
            time.sleep(0.4)
            d.write(conf % (1 + i % 3, mport, eport))
            d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        busy.stop()
    if results["bad"] or scrapes["bad"]:
        fail("under scrapes and reloads: clients %s, scrapes %s" % (results["bad"][:3], scrapes["bad"][:3]))
    if scrapes["ok"] < 5 or results["ok"] < 5:
        fail("too little happened: %d scrapes, %d round trips" % (scrapes["ok"], results["ok"]))
    end = time.time() + 20 * SLOW
    while time.time() < end:
        s = metric_samples(get(mport)[3])
        if s['evfdd_connections_open{service="echo"}'] == 0:
            break
        time.sleep(0.1)
    if (s['evfdd_connections_total{service="echo"}'] != results["ok"] or
            s['evfdd_connections_closed_total{service="echo"}'] != results["ok"]):
        fail("the metrics say %d connections, %d closed; the clients made %d"
             % (s['evfdd_connections_total{service="echo"}'], s['evfdd_connections_closed_total{service="echo"}'],
                results["ok"]))
    d.stop()
    print("ok %d scrapes during 8 reloads and %d hash-checked streams beside %d busy processes: no error, and "
          "the metrics count exactly the clients' connections" % (scrapes["ok"], results["ok"], len(busy.procs)),
          flush=True)


CASES = [case_exposition, case_unix_endpoint, case_activated, case_config_errors, case_prometheus, case_scrapes_under_load]


def main():
    if not PROMTOOL:
        print("SKIP: promtool not found (tools/install-deps installs the prometheus package)")
        sys.exit(77)
    run_cases(CASES, DAEMONS, TMP, procs=PROCS)


if __name__ == "__main__":
    main()
