#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""evfdd's control socket against the reference Varlink implementation (github.com/varlink/go, Debian's
golang-github-varlink-go-dev): tests/varlink-check.go, built here, connects to a real evfdd, calls GetInfo and
GetInterfaceDescription for every interface, parses each description with the reference IDL parser, and calls
io.evfdd.Status. The parser is first shown to refuse a description whose type and method share a name, as
io.evfdd's did (type Reload and method Reload), so that a pass means something. Skips (77) without go or the
package."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from evfddtest import EVFDD, SCALE, TOP_SRCDIR, DaemonLog, free_port

GOPATH = "/usr/share/gocode"
PACKAGE = os.path.join(GOPATH, "src", "github.com", "varlink", "go", "varlink")
SLOW = 1 if SCALE == 1 else 3


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def skip(msg):
    print("SKIP: " + msg, flush=True)
    sys.exit(77)


class Daemon(DaemonLog):
    slow = SLOW

    def __init__(self, tmp, ctl):
        self.path = os.path.join(tmp, "evfdd.conf")
        with open(self.path, "w") as f:
            f.write("[evfdd]\nworkers = 1\nrings = 1\ncontrol = %s\n\n[echo]\nlisten = 127.0.0.1:%d\n"
                    "forward = echo\n" % (ctl, free_port()))
        self.log = open(self.path + ".log", "w+")
        self.proc = subprocess.Popen([EVFDD, "-c", self.path], stdout=self.log, stderr=self.log)
        self.wait_log("ready")

    def fail(self, msg):
        fail(msg)


def build(tmp):
    """varlink-check built in GOPATH mode against the packaged sources, with a private cache."""
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOCACHE=os.path.join(tmp, "gocache"), HOME=tmp,
               CGO_ENABLED="0", GOFLAGS="")
    exe = os.path.join(tmp, "varlink-check")
    src = os.path.abspath(os.path.join(TOP_SRCDIR, "tests", "varlink-check.go"))
    out = subprocess.run(["go", "build", "-o", exe, src],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=600 * SLOW)
    if out.returncode != 0:
        fail("go build varlink-check.go: %d\n%s%s" % (out.returncode, out.stdout, out.stderr))
    return exe


def run(args, show=True):
    out = subprocess.run(args, capture_output=True, text=True, timeout=120 * SLOW)
    if show:
        print(out.stdout, end="", flush=True)
    return out


def main():
    if not shutil.which("go"):
        skip("go is not installed (Debian: golang-go)")
    if not os.path.isdir(os.path.join(PACKAGE, "idl")):
        skip("%s is missing (Debian: golang-github-varlink-go-dev)" % PACKAGE)
    tmp = tempfile.mkdtemp(prefix="evfdd-varlink-go-")
    d = None
    try:
        exe = build(tmp)
        # The reference parser refuses a type and a method of the same name: io.evfdd's old "type Reload".
        with open(os.path.join(TOP_SRCDIR, "daemon", "io.evfdd.varlink")) as f:
            source = f.read()
        clash = os.path.join(tmp, "clash.varlink")
        with open(clash, "w") as f:
            f.write(source + "\ntype Reload (ok: bool)\n")
        out = run([exe, "idl", clash], show=False)
        if out.returncode != 1 or "already defined" not in out.stdout:
            fail("the reference parser accepted a type named Reload next to method Reload: %d %r %r"
                 % (out.returncode, out.stdout, out.stderr))
        print("ok the reference parser refuses a type and a method that share a name", flush=True)
        out = run([exe, "idl", os.path.join(TOP_SRCDIR, "daemon", "io.evfdd.varlink")])
        if out.returncode != 0:
            fail("the reference parser refuses daemon/io.evfdd.varlink: %r %r" % (out.stdout, out.stderr))
        print("ok daemon/io.evfdd.varlink is valid Varlink", flush=True)
        ctl = os.path.join(tmp, "control")
        d = Daemon(tmp, ctl)
        out = run([exe, "call", "unix:" + ctl, str(d.proc.pid)])
        if out.returncode != 0:
            fail("varlink-check against evfdd: %d %r %r\n%s" % (out.returncode, out.stdout, out.stderr,
                                                                  d.text()))
        for want in ("org.varlink.service: ", "io.evfdd: ", "io.evfdd.Status: pid %d" % d.proc.pid):
            if want not in out.stdout:
                fail("varlink-check did not report %r: %r" % (want, out.stdout))
        print("ok the reference client: GetInfo, every interface's description parsed by the reference "
              "parser, io.evfdd.Status", flush=True)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_exit()
        d = None
    finally:
        if d and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
