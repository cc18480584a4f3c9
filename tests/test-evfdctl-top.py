#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdctl top, metrics and the shell completion, end to end: the real daemon with echo traffic at a known
rate; top's plain blocks (a pipe) parsed and their rates checked against that traffic; top on a pseudo-terminal
drawn in place, quit with q, with Ctrl-C, stopped by SIGTERM, or after -n refreshes, the terminal's settings
the same afterwards every time; evfdctl metrics printing Metrics' text unchanged; the bash completion offering
commands, and the services, backends, rings and loops of the running evfdd.
Cases may be named on the command line."""
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time

from evfddtest import EVFDCTL, EVFDD, TOP_SRCDIR, DaemonLog, free_port, sanitizer_report

TMP = tempfile.mkdtemp(prefix="evfdd-top-test-")
COMPLETION = os.path.join(TOP_SRCDIR, "contrib", "completion", "evfdctl.bash")
RATE = 40           # connections per second the traffic makes
PAYLOAD = 2000      # bytes each connection sends, and gets back
PROCS = []


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok " + msg, flush=True)


class Daemon(DaemonLog):
    def __init__(self, conf):
        self.path = os.path.join(TMP, "evfdd.conf")
        with open(self.path, "w") as f:
            f.write(conf)
        self.log = open(self.path + ".log", "w+")
        self.proc = subprocess.Popen([EVFDD, "-c", self.path], stdout=self.log, stderr=self.log)
        PROCS.append(self.proc)
        self.wait_log("ready", 20)

    def fail(self, msg):
        fail(msg)


class Traffic:
    """RATE echo connections a second through @addr, each PAYLOAD bytes each way, until stop()."""

    def __init__(self, addr):
        self.addr, self.done, self.errors = addr, 0, []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        t0 = time.monotonic()
        n = 0
        while not self.stop_ev.is_set():
            try:
                with socket.create_connection(self.addr, timeout=5) as s:
                    s.sendall(b"x" * PAYLOAD)
                    got = 0
                    while got < PAYLOAD:
                        d = s.recv(65536)
                        if not d:
                            break
                        got += len(d)
                    if got != PAYLOAD:
                        self.errors.append("echo returned %d bytes of %d" % (got, PAYLOAD))
            except OSError as e:
                self.errors.append(str(e))
            n += 1
            self.done = n
            delay = t0 + n / RATE - time.monotonic()
            if delay > 0:
                self.stop_ev.wait(delay)

    def stop(self):
        self.stop_ev.set()
        self.thread.join(10)
        if self.errors:
            fail("echo traffic: %s" % self.errors[:3])


def evfdctl(ctl, args, timeout=60):
    out = subprocess.run([EVFDCTL, "-s", ctl] + args, capture_output=True, text=True, timeout=timeout)
    if sanitizer_report(out.stderr):
        fail("sanitizer report from evfdctl:\n" + out.stderr)
    return out


def call(ctl, method):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(ctl)
        s.sendall(json.dumps({"method": method, "parameters": {}}).encode() + b"\0")
        buf = b""
        while b"\0" not in buf:
            d = s.recv(65536)
            if not d:
                fail("evfdd closed the connection on %s" % method)
            buf += d
        return json.loads(buf.split(b"\0")[0])


NUM = r"(-|\d+(?:\.\d+)?)"
BYTES = r"(-|\d+(?:\.\d+)?(?:B|KiB|MiB|GiB|TiB|PiB|EiB))"


def byte_rate(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(B|KiB|MiB|GiB|TiB|PiB|EiB)", s)
    return float(m.group(1)) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].index(m.group(2))


def parse_blocks(text, services, loops):
    """top's plain output as a list of blocks: {"header": (pid, workers, rings), "services": {name: row},
    "loops": {id: row}}; every line must be of the format, every number must parse."""
    if "\x1b" in text:
        fail("plain output holds control sequences: %r" % text[:300])
    blocks = []
    for raw in text.split("\n\nevfdd "):
        lines = raw.rstrip("\n").split("\n")
        if not blocks and not lines[0].startswith("evfdd "):
            fail("a block does not start with the header: %r" % raw[:200])
        lines[0] = re.sub(r"^(evfdd )?", "evfdd ", lines[0])
        m0 = re.fullmatch(r"evfdd (\S+)  pid (\d+)  (\S+)  up (.+)  \d\d:\d\d:\d\d", lines[0])
        m1 = re.fullmatch(r"workers (\d+)  rings (\d+)  reloads (\d+)  every ([\d.]+) s", lines[1])
        if not m0 or not m1 or lines[2] != "":
            fail("header lines: %r" % lines[:3])
        b = {"header": (int(m0.group(2)), int(m1.group(1)), int(m1.group(2)), float(m1.group(4))),
             "state": m0.group(3), "services": {}, "loops": {}}
        if not re.fullmatch(r"SERVICE +CONN/S +OPEN +UP/S +DOWN/S +ERR/S", lines[3]):
            fail("services' heading: %r" % lines[3])
        i = 4
        while lines[i]:
            m = re.fullmatch(r"(\S+) +%s +(-|\d+) +%s +%s +%s" % (NUM, BYTES, BYTES, NUM), lines[i])
            if not m:
                fail("a service row: %r" % lines[i])
            b["services"][m.group(1)] = m.groups()[1:]
            i += 1
        if not re.fullmatch(r"LOOP +RINGS +WAKEUPS/S +COMPL/S", lines[i + 1]):
            fail("loops' heading: %r" % lines[i + 1])
        for line in lines[i + 2:]:
            m = re.fullmatch(r"(\d+) +(\d+) +%s +%s" % (NUM, NUM), line)
            if not m:
                fail("a loop row: %r" % line)
            b["loops"][int(m.group(1))] = m.groups()[1:]
        if sorted(b["services"]) != sorted(services):
            fail("services %s, expected %s" % (sorted(b["services"]), sorted(services)))
        if sorted(b["loops"]) != sorted(loops):
            fail("loops %s, expected %s" % (sorted(b["loops"]), sorted(loops)))
        blocks.append(b)
    return blocks


# ---- the cases -------------------------------------------------------------------------------------------

def case_plain(d, ctl, echo, fwd):
    services = [s["name"] for s in call(ctl, "io.evfdd.Services")["parameters"]["services"]]
    loops = [lp["id"] for lp in call(ctl, "io.evfdd.Loops")["parameters"]["loops"]]
    traffic = Traffic(("127.0.0.1", fwd))   # through fwd to echo: both count the connections
    time.sleep(0.5)
    t0 = time.monotonic()
    out = evfdctl(ctl, ["top", "-n", "2", "-i", "0.5"])
    took = time.monotonic() - t0
    traffic.stop()
    if out.returncode != 0 or out.stderr:
        fail("top -n 2 -i 0.5: status %d, stderr %r" % (out.returncode, out.stderr))
    blocks = parse_blocks(out.stdout, services, loops)
    if len(blocks) != 2:
        fail("top -n 2 printed %d blocks:\n%s" % (len(blocks), out.stdout))
    if took < 0.9 or took > 20:
        fail("top -n 2 -i 0.5 took %.2f s; each block comes after an interval" % took)
    for b in blocks:
        if b["header"][0] != d.proc.pid or b["header"][1:] != (2, 4, 0.5) or b["state"] != "running":
            fail("header %r %s, expected pid %d, 2 workers, 4 rings, every 0.5 s" % (b["header"], b["state"],
                                                                                  d.proc.pid))
        for name in ("fwd", "echo"):
            conn, open_, up, down, err = b["services"][name]
            if not RATE / 4 <= float(conn) <= RATE * 3:
                fail("%s: %s connections/s with %d/s made:\n%s" % (name, conn, RATE, out.stdout))
            if not RATE * PAYLOAD / 4 <= byte_rate(up) <= RATE * PAYLOAD * 3:
                fail("%s: %s up a second with %d B/s:\n%s" % (name, up, RATE * PAYLOAD, out.stdout))
            if err != "0.0":
                fail("%s: %s errors/s with none:\n%s" % (name, err, out.stdout))
        down = b["services"]["fwd"][3]
        if not RATE * PAYLOAD / 4 <= byte_rate(down) <= RATE * PAYLOAD * 3:
            fail("fwd: %s down a second with %d B/s:\n%s" % (down, RATE * PAYLOAD, out.stdout))
        if sum(float(v[1]) for v in b["loops"].values()) <= 0:
            fail("no completion in any loop during traffic:\n" + out.stdout)
        if sum(int(v[0]) for v in b["loops"].values()) != 4:
            fail("the loops' rings do not add up to 4:\n" + out.stdout)
    # Without -n, and not on a terminal: one block.
    out = evfdctl(ctl, ["top", "--interval=0.2"])
    if out.returncode != 0 or len(parse_blocks(out.stdout, services, loops)) != 1:
        fail("top without -n on a pipe: status %d:\n%s%s" % (out.returncode, out.stdout, out.stderr))
    ok("top on a pipe: 2 plain blocks, %s connections/s and %s/%s bytes/s for fwd at %d/s, errors 0, "
       "loops' rings add up" % (blocks[1]["services"]["fwd"][0], blocks[1]["services"]["fwd"][2],
                                blocks[1]["services"]["fwd"][3], RATE))


def case_usage(d, ctl, echo, fwd):
    for args, what in ((["top", "-i", "0.05"], "interval"), (["top", "-i", "3601"], "interval"),
                       (["top", "-i", "nan"], "interval"), (["top", "-i", "1s"], "interval"),
                       (["top", "-n", "0"], "iterations"), (["top", "-n", "x"], "iterations"),
                       (["status", "-i", "1"], "top only"), (["top", "--json"], "no --json"),
                       (["top", "extra"], "no arguments")):
        out = evfdctl(ctl, args)
        if out.returncode != 2 or out.stdout or what not in out.stderr:
            fail("evfdctl %s: status %d, %r %r" % (" ".join(args), out.returncode, out.stdout, out.stderr))
    out = subprocess.run([EVFDCTL, "-s", os.path.join(TMP, "none"), "top"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 2 or "cannot connect" not in out.stderr:
        fail("top without evfdd: status %d, %r" % (out.returncode, out.stderr))
    ok("top: bad -i and -n, options of top elsewhere, --json, and no daemon: status 2, said why")


class Pty:
    """evfdctl top on a pseudo-terminal of its own (its controlling terminal, 30 x 100), read all along."""

    def __init__(self, args):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        slave = self.slave

        def child():
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([EVFDCTL] + args, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=child)
        PROCS.append(self.proc)
        self.out = b""

    def read(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    return

    def wait_for(self, what, count=1, timeout=20):
        end = time.monotonic() + timeout
        while self.out.count(what) < count and time.monotonic() < end:
            self.read(0.1)
        if self.out.count(what) < count:
            fail("top on a terminal never drew %r %d times:\n%r" % (what, count, self.out[-3000:]))

    def finish(self, timeout=20):
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            self.read(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            fail("top on a terminal did not exit:\n%r" % self.out[-3000:])
        self.read(0.2)
        after = termios.tcgetattr(self.slave)
        os.close(self.slave)
        os.close(self.master)
        if after != self.before:
            fail("the terminal's settings differ after top: %r, before %r" % (after, self.before))
        if sanitizer_report(self.out.decode(errors="replace")):
            fail("sanitizer report from evfdctl:\n" + self.out.decode(errors="replace"))
        return self.proc.returncode


def check_drawn(out):
    text = out.decode(errors="replace")
    if "\x1b[H" not in text or "\x1b[?25l" not in text:
        fail("top on a terminal: no drawing in place (home, cursor hidden): %r" % text[:500])
    frame = text.split("\x1b[H")[-1]
    for want in ("evfdd ", "(q quits)", "SERVICE", "echo ", "fwd ", "LOOP", "WAKEUPS/S"):
        if want not in frame:
            fail("top's last screen lacks %r: %r" % (want, frame))
    if any(len(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).rstrip("\r")) > 100 for line in frame.split("\n")):
        fail("top drew lines wider than the terminal: %r" % frame)


def case_terminal(d, ctl, echo, fwd):
    # q: status 0, the settings as they were, the cursor shown again.
    t = Pty(["-s", ctl, "top", "-i", "0.2"])
    t.wait_for(b"WAKEUPS/S", 3)
    during = termios.tcgetattr(t.slave)
    if during[3] & (termios.ICANON | termios.ECHO):
        fail("top left the terminal canonical or echoing: lflag %#x" % during[3])
    check_drawn(t.out)
    os.write(t.master, b"q")
    rc = t.finish()
    if rc != 0 or not t.out.endswith(b"\x1b[?25h"):
        fail("top quit with q: status %d, last bytes %r" % (rc, t.out[-40:]))
    frames = t.out.count(b"\x1b[H")
    # Ctrl-C: the terminal's interrupt character, a SIGINT: status 0 too.
    t = Pty(["-s", ctl, "top", "-i", "0.2"])
    t.wait_for(b"WAKEUPS/S", 2)
    os.write(t.master, b"\x03")
    rc = t.finish()
    if rc != 0 or b"\x1b[?25h" not in t.out[-40:]:
        fail("top after Ctrl-C: status %d, last bytes %r" % (rc, t.out[-40:]))
    # SIGTERM ends it as the signal does, the terminal put back first.
    t = Pty(["-s", ctl, "top", "-i", "0.2"])
    t.wait_for(b"WAKEUPS/S", 2)
    t.proc.send_signal(signal.SIGTERM)
    rc = t.finish()
    if rc != -signal.SIGTERM:
        fail("top after SIGTERM: status %d" % rc)
    # A new size redraws at once (with a long interval), to the new width.
    t = Pty(["-s", ctl, "top", "-i", "100"])
    t.wait_for(b"WAKEUPS/S", 1)
    fcntl.ioctl(t.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 30, 0, 0))
    os.killpg(t.proc.pid, signal.SIGWINCH)
    t.wait_for(b"\x1b[H", 2, timeout=5)
    frame = t.out.decode(errors="replace").split("\x1b[H")[-1]
    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", x).rstrip("\r") for x in frame.split("\n")]
    if any(len(x) > 30 for x in lines) or len(lines) > 12:
        fail("after a resize to 12 x 30, top drew %d lines: %r" % (len(lines), lines))
    os.write(t.master, b"Q")
    if t.finish() != 0:
        fail("top quit with Q: status %d" % t.proc.returncode)
    # -n: exits by itself after that many refreshes (and the first screen).
    t = Pty(["-s", ctl, "top", "-n", "2", "-i", "0.2"])
    rc = t.finish()
    if rc != 0 or t.out.count(b"\x1b[H") != 3:
        fail("top -n 2 on a terminal: status %d, %d screens" % (rc, t.out.count(b"\x1b[H")))
    ok("top on a terminal: drawn in place (%d screens in the first run), non-canonical without echo while it "
       "runs; q, Ctrl-C (status 0), SIGTERM (by the signal) and -n 2 leave the terminal's settings as they "
       "were; a resize redraws to the new size" % frames)


def case_tmux(d, ctl, echo, fwd):
    """As an operator sees it: top in a tmux window (send-keys, capture-pane) shows the services and quits on q."""
    tmux = shutil.which("tmux")
    if not tmux:
        ok("tmux not installed (tools/install-deps installs it): the tmux case is not run")
        return
    sock = os.path.join(TMP, "tmux.sock")
    base = [tmux, "-S", sock]
    done = os.path.join(TMP, "top.status")
    cmd = "%s -s %s top -i 0.2; echo $? > %s; sleep 30" % (EVFDCTL, ctl, done)
    env = dict(os.environ, TERM=os.environ.get("TERM") or "xterm")   # make check may run without one
    if subprocess.run(base + ["new-session", "-d", "-x", "100", "-y", "30", cmd], env=env).returncode != 0:
        fail("tmux new-session failed")
    try:
        end = time.time() + 10
        screen = ""
        while time.time() < end:
            screen = subprocess.run(base + ["capture-pane", "-p"], capture_output=True, text=True).stdout
            if all(w in screen for w in ("SERVICE", "echo ", "fwd ", "LOOP")) and re.search(r"\n\s*fwd\s+[0-9.]+", screen):
                break
            time.sleep(0.1)
        else:
            fail("top in tmux never showed the services with rates:\n%s" % screen)
        subprocess.run(base + ["send-keys", "q"], check=True)
        end = time.time() + 5
        while time.time() < end and not os.path.exists(done):
            time.sleep(0.05)
        if not os.path.exists(done) or open(done).read().strip() != "0":
            fail("top in tmux did not quit with status 0 on q (status file: %s)"
                 % (open(done).read().strip() if os.path.exists(done) else "none"))
    finally:
        subprocess.run(base + ["kill-server"], capture_output=True)
    ok("top in tmux (send-keys, capture-pane): the services with their rates on screen, q quits with status 0")


def case_metrics(d, ctl, echo, fwd):
    out = evfdctl(ctl, ["metrics"])
    if out.returncode == 1 and "does not know the call" in out.stderr:
        fail("PENDING: this evfdd has no io.evfdd.Metrics yet: %s" % out.stderr.strip())
    if out.returncode != 0 or out.stderr:
        fail("evfdctl metrics: status %d, %r" % (out.returncode, out.stderr))
    want = call(ctl, "io.evfdd.Metrics")["parameters"]["text"]
    line = re.search(r'^evfdd_connections_total\{service="echo"\} (\d+)$', out.stdout, re.M)
    if not line or int(line.group(1)) < RATE / 2:
        fail("evfdctl metrics has no evfdd_connections_total{service=\"echo\"} of the traffic:\n" + out.stdout)
    # The text as sent: only the counters may have moved in between.
    strip = lambda t: re.sub(r" [0-9.e+-]+$", "", t, flags=re.M)
    if strip(out.stdout) != strip(want) or not out.stdout.endswith("\n") or out.stdout.endswith("\n\n"):
        fail("evfdctl metrics printed other than Metrics' text:\n%r\n%r" % (out.stdout[-300:], want[-300:]))
    ok("evfdctl metrics: Metrics' text as sent, evfdd_connections_total{service=\"echo\"} %s" % line.group(1))


def complete(words, env=None):
    """bash with the completion sourced, COMP_WORDS = @words, the cursor on the last: COMPREPLY, stderr."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; '
              'COMP_POINT=${#COMP_LINE}; _evfdctl; printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "bash", COMPLETION] + words,
                         capture_output=True, text=True, timeout=30, env=env)
    if out.returncode != 0:
        fail("bash completion of %r: status %d, %s" % (words, out.returncode, out.stderr))
    return [x for x in out.stdout.split("\n") if x], out.stderr


def case_completion(d, ctl, echo, fwd):
    if not shutil.which("bash"):
        print("SKIP: completion: no bash", flush=True)
        return
    checks = [
        (["evfdctl", "back"], ["backend", "backends"]),
        (["evfdctl", ""], ["status", "loops", "rings", "services", "backends", "backend", "move", "reload",
                           "upgrade", "metrics", "top"]),
        (["evfdctl", "top", "--i"], ["--interval", "--iterations"]),
        (["evfdctl", "backend", ""], ["drain", "enable"]),
        ([EVFDCTL, "-s", ctl, "backends", ""], ["echo", "fwd"]),
        ([EVFDCTL, "--socket", ctl, "backends", "e"], ["echo"]),
        ([EVFDCTL, "--socket", "=", ctl, "backend", "drain", ""], ["echo", "fwd"]),
        ([EVFDCTL, "-s", ctl, "backend", "drain", "fwd", ""], ["127.0.0.1:%d" % echo]),
        # bash splits at ':' (COMP_WORDBREAKS): only what follows the colon is offered
        ([EVFDCTL, "-s", ctl, "backend", "enable", "fwd", "127.0.0.1", ":", ""], [str(echo)]),
        ([EVFDCTL, "-s", ctl, "move", ""], ["0", "1", "2", "3"]),
        ([EVFDCTL, "-s", ctl, "move", "0", ""], [str(lp["id"]) for lp in
                                                 call(ctl, "io.evfdd.Loops")["parameters"]["loops"]]),
    ]
    for words, want in checks:
        got, err = complete(words)
        if sorted(got) != sorted(want) or err:
            fail("completion of %r: %r (stderr %r), expected %r" % (words, got, err, want))
    # EVFDCTL_SOCKET counts as evfdctl reads it; without evfdd, nothing and silence.
    got, err = complete([EVFDCTL, "backends", ""], env=dict(os.environ, EVFDCTL_SOCKET=ctl))
    if sorted(got) != ["echo", "fwd"]:
        fail("completion with EVFDCTL_SOCKET: %r %r" % (got, err))
    got, err = complete([EVFDCTL, "-s", os.path.join(TMP, "none"), "backends", ""])
    if got or err:
        fail("completion without evfdd: %r, stderr %r" % (got, err))
    ok("bash completion: commands, options, and services, backends (after a colon too), rings and loops "
       "from the running evfdd through -s/--socket/EVFDCTL_SOCKET; silent without it")


CASES = (case_plain, case_usage, case_terminal, case_tmux, case_metrics, case_completion)


def main():
    for prog in (EVFDD, EVFDCTL):
        if not os.access(prog, os.X_OK):
            fail("%s not built" % prog)
    names = sys.argv[1:]
    if [n for n in names if n not in {c.__name__ for c in CASES}]:
        print("cases: %s" % " ".join(c.__name__ for c in CASES))
        sys.exit(2)
    os.chmod(TMP, 0o755)
    failed = []
    try:
        ctl = os.path.join(TMP, "run", "control")
        echo, fwd = free_port(), free_port()
        d = Daemon("[evfdd]\nworkers = 2\nrings = 4\ncontrol = %s\nshutdown_timeout = 5s\n\n"
                   "[echo]\nlisten = 127.0.0.1:%d\nforward = echo\n\n"
                   "[fwd]\nlisten = 127.0.0.1:%d\nforward = 127.0.0.1:%d\n" % (ctl, echo, fwd, echo))
        for case in CASES:
            if names and case.__name__ not in names:
                continue
            try:
                case(d, ctl, echo, fwd)
            except SystemExit:
                failed.append(case.__name__)
            if d.proc.poll() is not None:
                fail("evfdd exited with %d:\n%s" % (d.proc.returncode, d.text()[-5000:]))
        d.proc.send_signal(signal.SIGTERM)
        d.wait_exit()
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(TMP, ignore_errors=True)
    if failed:
        print("FAIL: %s" % " ".join(failed), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
