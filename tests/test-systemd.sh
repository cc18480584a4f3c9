#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# evfdd's systemd units under a real systemd: root's user manager (systemd --user) in a private mount
# namespace and a cgroup of its own, running test copies of the units make rendered. They keep every
# directive, DynamicUser= and the sandbox included (root's user manager applies them as PID 1 does), and
# change only what render_units lists: paths, ports, a short watchdog, a log file. Checked: socket
# activation with an echo round trip, STATUS= in systemctl status, evfdctl over the activated control
# socket, systemctl reload (a good configuration is applied, a broken one is refused while evfdd keeps
# serving), SIGHUP, a graceful stop that lets an open connection finish, the control socket surviving a
# stop, the watchdog restarting a daemon that stopped answering, and starting evfdd.service on its own.
# Then connections carried over: ten systemctl restarts in a row under 200 hash-checked streams and a
# stream of short connections (none lost, none harmed, the store empty after each, both listeners the same
# sockets); systemctl stop still stopping gracefully; a crash after evfdctl upgrade losing the connections
# but not the activated listener; FileDescriptorStoreMax=0 turning a restart into a stop and a start.
# evfdd learns that a stop is a restart by asking the manager over D-Bus as its dynamic user: the test
# gives the manager a bus (as PID 1 has the system bus) and a stand-in for PID 1's io.systemd.DynamicUser,
# through which dbus-daemon resolves that user (needs dbus-daemon and nss-systemd; without them that
# part is skipped, the test SKIPs after the rest passed).
#
# The outer part (no argument) checks what it needs, makes the cgroup, runs the inner part (--inner)
# under unshare and timeout, and afterwards kills whatever is left in that cgroup. Only the outer part
# touches the host, and only that cgroup; everything else lives in the namespace's tmpfs.
set -euo pipefail
# No `CMD | grep -q` here: grep -q exits at the first match, CMD may die of SIGPIPE writing the rest, and
# pipefail then fails the test at random (ldd did, in CI). grep ... >/dev/null reads to the end.

builddir=$(cd "${top_builddir:-.}" && pwd)
overall_timeout=${EVFDD_SYSTEMD_TEST_TIMEOUT:-420}	# seconds, for the whole inner part
wait_max=60						# seconds, for any one awaited state

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

# ==== outer part ===========================================================================================
outer() {
	local cg_dirs=() rel hier dir rc
	cg_name=

	[ "$(id -u)" -eq 0 ] || skip "needs root, for a mount namespace and a cgroup of its own"
	[ -x /lib/systemd/systemd ] || skip "/lib/systemd/systemd not found (tools/install-deps installs systemd)"
	for tool in systemctl unshare timeout python3; do
		command -v "$tool" >/dev/null || skip "$tool not found"
	done
	for f in "$builddir/daemon/evfdd" "$builddir/daemon/evfdctl"; do
		[ -x "$f" ] || fail "$f is not built (make all)"
	done
	for u in evfdd.service evfdd.socket evfdd-control.socket; do
		[ -f "$builddir/units/$u" ] || fail "$builddir/units/$u is missing: make renders it"
	done
	unshare -m --propagation private true 2>/dev/null ||
		skip "cannot create a mount namespace here (unshare -m): no user manager can run"

	# The user manager takes the cgroup it starts in as its root: it moves every process found there into
	# its init.scope, in every hierarchy, and the clean-up below kills whatever is left there. So it must
	# start in a fresh cgroup that holds nothing but this test, never in a shared one. It tracks processes
	# in the unified hierarchy, or in name=systemd under cgroup v1 and hybrid; it mirrors the cgroup into
	# the v1 controller hierarchies itself.
	cg_name="evfdd-test-systemd.$$"
	while IFS=: read -r _ hier rel; do
		case $hier in
		name=systemd) dir=/sys/fs/cgroup/systemd ;;
		"") dir=/sys/fs/cgroup; [ -f "$dir/cgroup.procs" ] || dir=/sys/fs/cgroup/unified ;;
		*) continue ;;
		esac
		[ -f "$dir/cgroup.procs" ] || continue
		dir="$dir${rel%/}/$cg_name"
		mkdir "$dir" 2>/dev/null || skip "cannot create a cgroup at $dir for the user manager"
		cg_dirs+=("$dir")
	done </proc/self/cgroup
	[ "${#cg_dirs[@]}" -gt 0 ] || skip "no cgroup hierarchy found in /proc/self/cgroup"

	# shellcheck disable=SC2317 # called by the trap
	cleanup_outer() {
		local d pid round left all=()
		# Every copy of our cgroup, including those the manager made in controller hierarchies.
		mapfile -t all < <(find /sys/fs/cgroup -type d -name "$cg_name" 2>/dev/null)
		# Whatever the inner part left (the manager, evfdd, clients): only PIDs in our own cgroups.
		for ((round = 0; round < 10; round++)); do
			left=0
			for d in "${all[@]}"; do
				while read -r pid; do
					kill -KILL "$pid" 2>/dev/null && left=1
				done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
			done
			[ "$left" -eq 0 ] && break
			sleep 0.2
		done
		for d in "${all[@]}"; do
			[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
			[ -d "$d" ] && echo "warning: could not remove cgroup $d"
		done
		return 0
	}
	trap cleanup_outer EXIT

	set +e
	# This subshell joins the cgroups before it execs, so the manager and all it starts land there.
	(
		for d in "${cg_dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs" || exit 99; done
		exec timeout -k 10 "$overall_timeout" unshare -m --propagation private bash "$0" --inner
	)
	rc=$?
	set -e
	case $rc in
	99) skip "cannot move a process into the test's cgroup" ;;
	124|137) fail "the test did not finish within $overall_timeout s (EVFDD_SYSTEMD_TEST_TIMEOUT)" ;;
	esac
	exit "$rc"
}

# ==== inner part: in the private mount namespace ==========================================================
run=/run/systemd/evfdd-test		# everything of this test: tmpfs, gone with the namespace
units_dir="$run/units"
log="$run/evfdd.log"			# evfdd's stdout and stderr (no journal here)
manager_log="$run/manager.log"
manager_pid=
listener_pid=
userdb_pid=
port='' port2='' port3='' port_fwd=''
echo_pid='' load_pid='' hold_pid='' load_rounds=0 hold_answer=''
control=
conf="$run/evfdd.conf"

sd() { systemctl --user "$@"; }
prop() { sd show -p "$2" --value "$1"; }

# Wait up to $wait_max seconds for a command to succeed; fail naming what was awaited.
wait_for() {
	local what=$1 i
	shift
	for ((i = 0; i < wait_max * 10; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	fail "gave up after $wait_max s waiting for: $what"
}

# N distinct free TCP ports on 127.0.0.1, one per line: all bound at once, so none comes twice.
free_ports() {
	python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# One line through the echo service on a port, and back.
round_trip() {
	local p=$1 msg reply
	msg="evfdd-test-$RANDOM-$p"
	exec 5<>"/dev/tcp/127.0.0.1/$p" || return 1
	printf '%s\n' "$msg" >&5
	IFS= read -r -t 20 reply <&5 2>/dev/null || reply=
	exec 5>&-
	[ "$reply" = "$msg" ]
}

main_pid() { prop evfdd.service MainPID; }
replaced() { local now; now=$(main_pid); [ "$now" != "$1" ] && [ "$now" != 0 ] && is_state evfdd.service active; }
is_state() { [ "$(prop "$1" ActiveState)" = "$2" ]; }

write_conf() {	# write_conf [extra section text]: the base configuration plus more services
	{
		printf '[evfdd]\nworkers = 2\nrings = 4\nlog_level = info\nshutdown_timeout = 60s\n\n'
		printf '; activated by evfdd.socket (FileDescriptorName=echo): no listen key\n[echo]\nforward = echo\n'
		printf '%s' "${1:-}"
	} >"$conf.tmp"
	mv "$conf.tmp" "$conf"
}

show_logs() {
	echo "---- evfdd log ($log) ----"
	tail -n 80 "$log" 2>/dev/null || true
	echo "---- user manager log ($manager_log) ----"
	tail -n 60 "$manager_log" 2>/dev/null || true
	echo "---- units ----"
	sd --no-pager status evfdd.service evfdd.socket evfdd-control.socket 2>&1 | head -n 40 || true
}

cleanup_inner() {
	local rc=$? i pid
	trap - EXIT
	set +e
	[ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && show_logs	# a skip said why
	if [ -n "$manager_pid" ]; then
		timeout 30 systemctl --user stop evfdd.service evfdd.socket evfdd-control.socket 2>/dev/null
		timeout 10 systemctl --user exit 2>/dev/null
		for ((i = 0; i < 100; i++)); do kill -0 "$manager_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$manager_pid" 2>/dev/null
	fi
	[ -n "$listener_pid" ] && kill "$listener_pid" 2>/dev/null
	[ -n "$userdb_pid" ] && kill "$userdb_pid" 2>/dev/null
	for pid in "$load_pid" "$hold_pid" "$echo_pid"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null; done
	exit "$rc"
}

# A stand-in for journald's socket, so that the manager logs to a file: without a journal it would write
# to /dev/console or /dev/kmsg, the host's. Native protocol: KEY=VALUE lines, or KEY, a 64-bit length and
# the bytes for values with newlines. One line per message: unit, priority, text.
journal_listener='
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[2] + ".ready", "w").close()
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        data = s.recv(1 << 20)
        f, i = {}, 0
        while i < len(data):
            nl = data.find(b"\n", i)
            nl = len(data) if nl < 0 else nl
            line = data[i:nl]
            if b"=" in line:
                k, _, v = line.partition(b"=")
                i = nl + 1
            else:
                n = struct.unpack("<Q", data[nl + 1:nl + 9])[0] if nl + 9 <= len(data) else 0
                k, v, i = line, data[nl + 9:nl + 9 + n], nl + 10 + n
            f[k] = v.decode(errors="replace")
        out.write("%s <%s> %s\n" % (f.get(b"USER_UNIT") or f.get(b"UNIT") or "manager",
                                     f.get(b"PRIORITY", "?"), f.get(b"MESSAGE", "")))
'

# A stand-in for PID 1's io.systemd.DynamicUser, the Varlink service through which nss-systemd resolves
# dynamic users (a user manager serves none): dbus-daemon admits only a uid it can resolve, and evfdd asks
# over the bus as its dynamic user. Records as PID 1 builds them, from the manager's dynamic-uid directory.
userdb_standin='
import json, os, socket, sys, threading
d = "/run/systemd/dynamic-uid"
def lookup(user, p):
    num, name = (p.get("uid"), p.get("userName")) if user else (p.get("gid"), p.get("groupName"))
    try:
        if num is not None:
            n = os.readlink("%s/direct:%d" % (d, num))
            if name is not None and name != n:
                return None
            name = n
        elif name is not None:
            num = int(os.readlink("%s/direct:%s" % (d, name)))
        else:
            return None             # an enumeration: none is listed, as PID 1 lists none
    except (OSError, ValueError):
        return None
    r = {"service": "io.systemd.DynamicUser", "disposition": "dynamic", "gid": num}
    if user:
        r.update(userName=name, uid=num, realName="Dynamic User", homeDirectory="/", shell="/usr/sbin/nologin",
                 locked=True)
    else:
        r.update(groupName=name)
    return r
def serve(c):
    buf = b""
    with c:
        while True:
            b = c.recv(65536)
            if not b:
                return
            buf += b
            while b"\0" in buf:
                m, buf = buf.split(b"\0", 1)
                q = json.loads(m)
                meth, p, r = q.get("method", ""), q.get("parameters", {}), None
                if meth == "io.systemd.UserDatabase.GetUserRecord":
                    r = lookup(True, p)
                elif meth == "io.systemd.UserDatabase.GetGroupRecord":
                    r = lookup(False, p)
                a = {"parameters": {"record": r, "incomplete": False}} if r else \
                    {"error": "io.systemd.UserDatabase.NoRecordFound", "parameters": {}}
                c.sendall(json.dumps(a).encode() + b"\0")
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(64)
open(sys.argv[2], "w").close()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
'

# Clients and a backend for the restarts carrying connections over (python3 -c "$carry_py" MODE ...).
carry_py='
import asyncio, hashlib, json, os, random, sys, time

T = 30.0        # seconds for any one step of a client: a connect, a round trip, an EOF

def put(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)

# echo PORTFILE: the backend of [fwd]; its port goes to PORTFILE once it listens.
async def echo(portfile):
    async def serve(r, w):
        try:
            while True:
                b = await r.read(65536)
                if not b:
                    break
                w.write(b)
                await w.drain()
            w.write_eof()
            await w.drain()
        except OSError:
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(srv.sockets[0].getsockname()[1]))
    os.rename(portfile + ".tmp", portfile)
    await srv.serve_forever()

# load DIR N PORT...: N streams spread over the ports, each a paced series of round trips with every byte
# checked, then an EOF each way and the hashes of both directions compared; meanwhile four loops open, use
# and close connections. DIR/progress every 0.2 s and at the end, which DIR/stop asks for (exit 0: no
# error, every stream checked out).
async def load(d, n, ports):
    st = {"streams": n, "open": 0, "min_rounds": 0, "rounds": 0, "bytes": 0, "max_rtt_ms": 0.0,
          "churn": 0, "errors": 0, "error_list": [], "done": 0, "ok": 0}
    rounds = [0] * n
    stopping = asyncio.Event()

    def error(who, msg):
        st["errors"] += 1
        if len(st["error_list"]) < 20:
            st["error_list"].append("%.3f %s: %s" % (time.time(), who, msg))

    async def stream(i):
        port = ports[i % len(ports)]
        rng = random.Random(1000003 * i + 17)
        who = "stream %d (port %d)" % (i, port)
        hs, hr = hashlib.sha256(), hashlib.sha256()
        done = 0
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
        except (OSError, asyncio.TimeoutError) as e:
            error(who, "connect: %r" % e)
            return
        st["open"] += 1
        step = "round trip 1"
        try:
            while True:
                size = rng.randint(1, 8192)
                data = rng.randbytes(size)
                hs.update(data)
                t0 = time.monotonic()
                w.write(data)
                await asyncio.wait_for(w.drain(), T)
                got = await asyncio.wait_for(r.readexactly(size), T)
                rtt = (time.monotonic() - t0) * 1000
                hr.update(got)
                if got != data:
                    k = next(k for k in range(size) if got[k] != data[k])
                    error(who, "%s: the bytes back differ from those sent from byte %d of %d on (%d bytes "
                          "checked before)" % (step, k, size, done))
                    return
                done += size
                rounds[i] += 1
                st["rounds"] += 1
                st["bytes"] += size
                st["max_rtt_ms"] = max(st["max_rtt_ms"], rtt)
                if stopping.is_set():
                    break
                step = "round trip %d" % (rounds[i] + 1)
                try:
                    await asyncio.wait_for(stopping.wait(), rng.uniform(0.05, 0.3))
                except asyncio.TimeoutError:
                    pass
            step = "end"
            w.write_eof()
            tail = await asyncio.wait_for(r.read(), T)
            if tail:
                error(who, "%d bytes more than were sent came back before EOF" % len(tail))
            elif hs.digest() != hr.digest():
                error(who, "the hashes of what was sent and what came back differ")
            else:
                st["ok"] += 1
        except asyncio.IncompleteReadError as e:
            error(who, "%s: EOF after %d of the bytes expected" % (step, len(e.partial)))
        except asyncio.TimeoutError:
            error(who, "%s: nothing within %d s" % (step, T))
        except OSError as e:
            error(who, "%s: %r" % (step, e))
        finally:
            w.close()
            st["open"] -= 1

    async def churn(j):
        rng = random.Random(7 + j)
        k = 0
        while not stopping.is_set():
            port = ports[(j + k) % len(ports)]
            k += 1
            who, step, w = "churn %d (port %d)" % (j, port), "connect", None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)
                data = rng.randbytes(rng.randint(1, 2048))
                step = "round trip"
                w.write(data)
                got = await asyncio.wait_for(r.readexactly(len(data)), T)
                if got != data:
                    error(who, "the bytes back differ from those sent")
                step = "end"
                w.write_eof()
                if await asyncio.wait_for(r.read(), T):
                    error(who, "more bytes than were sent came back before EOF")
                st["churn"] += 1
            except asyncio.IncompleteReadError as e:
                error(who, "%s: EOF after %d bytes" % (step, len(e.partial)))
            except asyncio.TimeoutError:
                error(who, "%s: nothing within %d s" % (step, T))
            except OSError as e:
                error(who, "%s: %r" % (step, e))
            finally:
                if w:
                    w.close()
            await asyncio.sleep(0.02)

    async def report():
        while True:
            st["min_rounds"] = min(rounds)
            put(os.path.join(d, "progress"), st)
            if os.path.exists(os.path.join(d, "stop")):
                stopping.set()
                return
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(stream(i)) for i in range(n)]
    churns = [asyncio.create_task(churn(j)) for j in range(4)]
    await report()
    await asyncio.gather(*tasks, *churns)
    st["min_rounds"] = min(rounds)
    st["done"] = 1
    put(os.path.join(d, "progress"), st)
    return 0 if st["errors"] == 0 and st["ok"] == n else 1

# hold N PORT...: N connections, one round trip each; then commands on stdin, one answer line each:
# "rt" a round trip on each (answer: ok=K of N), "fate" what each sees now (eof=, reset=, open=).
async def hold(n, ports):
    conns = []
    for i in range(n):
        conns.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", ports[i % len(ports)]), T))
    loop = asyncio.get_running_loop()
    rd = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(rd), sys.stdin)

    async def rt(r, w, i):
        data = os.urandom(100 + i)
        try:
            w.write(data)
            await asyncio.wait_for(w.drain(), 5)
            return await asyncio.wait_for(r.readexactly(len(data)), 5) == data
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False

    async def fate(r, w):
        try:
            b = await asyncio.wait_for(r.read(1), 5)
            return "eof" if not b else "data"
        except asyncio.TimeoutError:
            return "open"
        except ConnectionResetError:
            return "reset"
        except OSError as e:
            return "error"

    print("ready", flush=True)
    while True:
        line = (await rd.readline()).decode().strip()
        if line == "rt":
            ok = await asyncio.gather(*(rt(r, w, i) for i, (r, w) in enumerate(conns)))
            print("ok=%d of %d" % (sum(ok), n), flush=True)
        elif line == "fate":
            f = await asyncio.gather(*(fate(r, w) for r, w in conns))
            print(" ".join("%s=%d" % (k, f.count(k)) for k in ("eof", "reset", "open", "data", "error")), flush=True)
        else:
            return 0

mode, args = sys.argv[1], sys.argv[2:]
if mode == "echo":
    asyncio.run(echo(args[0]))
elif mode == "load":
    sys.exit(asyncio.run(load(args[0], int(args[1]), [int(p) for p in args[2:]])))
elif mode == "hold":
    sys.exit(asyncio.run(hold(int(args[0]), [int(p) for p in args[1:]])))
'

# /run/systemd as a booted system has it, in the namespace only: the marker directory, the inaccessible
# nodes that ProtectHome=, ProtectKernelTunables= and ProtectKernelLogs= mount over paths (PID 1 makes
# them at boot; without them those settings fail with status 226/NAMESPACE), and the journal socket.
start_manager() {
	# MountAPIVFS= (implied by ProtectProc= and others) gives a service an empty tmpfs on /run unless /run
	# is a mount point already, as it is on a booted host but not in some VMs and containers.
	mountpoint -q /run || mount --bind /run /run
	mkdir -p /run/systemd
	mount -t tmpfs -o mode=0755 evfdd-test /run/systemd ||
		{ echo "SKIP: cannot mount a tmpfs on /run/systemd in the namespace"; exit 77; }
	mkdir -p /run/systemd/system /run/systemd/journal "$run" "$units_dir" "$run/config" "$run/data"
	# 0755 like /run, not 0700: the service's dynamic user must reach its RuntimeDirectory= in here. It is
	# private all the same, on this namespace's own tmpfs.
	mkdir -m 0755 "$run/xdg"
	(
		cd /run/systemd && mkdir -m 0755 inaccessible && cd inaccessible &&
		mkdir -m 0000 dir && install -m 0000 /dev/null reg && mkfifo -m 0000 fifo &&
		python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")' && chmod 0000 sock &&
		{ mknod -m 0000 chr c 0 0 && mknod -m 0000 blk b 0 0 || true; }
	) || fail "cannot create the inaccessible nodes in /run/systemd/inaccessible"
	python3 -c "$journal_listener" /run/systemd/journal/socket "$manager_log" &
	listener_pid=$!
	wait_for "the journal stand-in" test -e "$manager_log.ready"
	if grep -E -q '^(passwd|group):.*[[:space:]]systemd([[:space:]]|$)' /etc/nsswitch.conf 2>/dev/null; then
		mkdir -p /run/systemd/userdb
		python3 -c "$userdb_standin" /run/systemd/userdb/io.systemd.DynamicUser "$run/userdb.ready" &
		userdb_pid=$!
		wait_for "the io.systemd.DynamicUser stand-in" test -e "$run/userdb.ready"
	else
		bus_skip="nss-systemd is not in /etc/nsswitch.conf (tools/install-deps installs libnss-systemd): nothing resolves dynamic users for dbus-daemon"
	fi
	export XDG_RUNTIME_DIR="$run/xdg" XDG_CONFIG_HOME="$run/config" XDG_DATA_HOME="$run/data"
	# The manager hands its environment to what it starts: evfdd must find the test's bus, not the caller's.
	unset DBUS_SESSION_BUS_ADDRESS
	write_bus_units
	SYSTEMD_LOG_TARGET=journal SYSTEMD_LOG_LEVEL=info /lib/systemd/systemd --user >>"$manager_log" 2>&1 &
	manager_pid=$!
	local i state=
	for ((i = 0; i < wait_max * 10; i++)); do
		kill -0 "$manager_pid" 2>/dev/null || break
		state=$(sd is-system-running 2>/dev/null) || true
		case $state in running|degraded) break ;; esac
		sleep 0.1
	done
	# PID 1's notify socket is writable by everyone, so that services under DynamicUser= can report READY=1
	# and WATCHDOG=1; a user manager's is its owner's only.
	[ -S "$XDG_RUNTIME_DIR/systemd/notify" ] && chmod 0777 "$XDG_RUNTIME_DIR/systemd/notify"
	case $state in
	running|degraded) echo "ok user manager $manager_pid is $state" ;;
	*)
		echo "---- user manager log ----"
		cat "$manager_log"
		echo "SKIP: the user manager did not start (state \"$state\"); see its log above"
		manager_pid=
		exit 77 ;;
	esac
	start_bus
}

# A bus for the user manager, as PID 1 has the system bus. On SIGTERM evfdd asks the manager over D-Bus
# whether its unit is restarting (daemon/sdjob.c): a user manager's private socket admits its own user
# only, and a session bus as dbus-user-session runs it only that user too, so evfdd as a dynamic user could
# not ask and would stop instead of carrying its connections over. This bus admits every user, and
# includes the system bus's policy for org.freedesktop.systemd1, which lets any user read units' and
# jobs' properties and nothing more, as under PID 1. Its units replace dbus-user-session's, if installed.
bus_skip=
write_bus_units() {
	local dbus_daemon u="$XDG_CONFIG_HOME/systemd/user"
	[ -n "$bus_skip" ] && return 0
	if ! dbus_daemon=$(command -v dbus-daemon); then
		bus_skip="dbus-daemon not found (tools/install-deps installs dbus)"
		return 0
	fi
	mkdir -p "$u"
	cat >"$run/bus.conf" <<-EOF
	<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
	 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
	<busconfig>
	  <type>session</type>
	  <listen>unix:path=$XDG_RUNTIME_DIR/bus</listen>
	  <auth>EXTERNAL</auth>
	  <policy context="default">
	    <allow user="*"/>
	    <allow own="*"/>
	    <allow send_destination="*" eavesdrop="true"/>
	    <allow eavesdrop="true"/>
	  </policy>
	  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.systemd1.conf</include>
	</busconfig>
	EOF
	printf '[Unit]\nDescription=the test'"'"'s user bus\n\n[Socket]\nListenStream=%%t/bus\n' >"$u/dbus.socket"
	printf '[Unit]\nDescription=the test'"'"'s user bus\nRequires=dbus.socket\n\n[Service]\nExecStart=%s --config-file=%s --address=systemd: --nofork --nopidfile --nosyslog\nStandardOutput=append:%s\nStandardError=append:%s\n' \
		"$dbus_daemon" "$run/bus.conf" "$run/dbus.log" "$run/dbus.log" >"$u/dbus.service"
}

start_bus() {
	[ -n "$bus_skip" ] && return 0
	sd start dbus.socket dbus.service || fail "cannot start the test's user bus (dbus.socket, dbus.service)"
	# The manager connects to the bus once dbus.service is up, and takes org.freedesktop.systemd1 there.
	wait_for "the user manager on the test's bus ($run/dbus.log: $(cat "$run/dbus.log" 2>/dev/null))" \
		busctl --user --timeout=1 call org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.DBus.Peer Ping
	# What evfdd asks, asked as another user than the manager's.
	local v
	v=$(setpriv --reuid=65534 --regid=65534 --clear-groups busctl --user --timeout=5 get-property \
		org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager Version 2>&1) ||
		fail "uid 65534 cannot read the manager's properties over the test's bus: $v"
	echo "ok the user manager answers on a bus of its own, to other users too ($v)"
}

# Test copies of the rendered units: every directive as shipped except what a user manager or a test must
# change, each change named here and checked to have happened.
render_units() {
	local u
	for u in evfdd.service evfdd.socket evfdd-control.socket; do
		cp "$builddir/units/$u" "$units_dir/$u"
	done
	# Socket addresses: a free port for the data socket, the control socket in the manager's runtime
	# directory (%t), which is also where RuntimeDirectory= and evfdctl's default path point.
	sed -i -e "s|^ListenStream=127\.0\.0\.1:7777\$|ListenStream=127.0.0.1:$port|" "$units_dir/evfdd.socket"
	sed -i -e 's|^ListenStream=/run/evfdd/control$|ListenStream=%t/evfdd/control|' \
		"$units_dir/evfdd-control.socket"
	local s="$units_dir/evfdd.service" bin="$builddir/daemon/.libs/evfdd" notes=()
	[ -f "$bin" ] || bin="$builddir/daemon/evfdd"	# libtool's wrapper runs .libs/evfdd
	# The build tree's programs; -c: the test's configuration, not whatever the host has in /etc.
	sed -i -e "s|^ExecStart=/.*/evfdd\$|ExecStart=$builddir/daemon/evfdd -c $conf|" \
		-e "s|^ExecReload=+/.*/evfdctl reload\$|ExecReload=+$builddir/daemon/evfdctl reload|" \
		-e "s|^WatchdogSec=.*|WatchdogSec=2s|" "$s"
	# The build tree must stay visible to the service. root's user manager runs DynamicUser= services as
	# the system manager does, but that implies PrivateTmp=, and the dynamic user must be able to run evfdd.
	local no_dynamic=
	case $builddir/ in
	/tmp/*|/var/tmp/*)
		sed -i -e 's|^PrivateTmp=yes$|# PrivateTmp=yes: the build tree is in /tmp|' "$s"
		no_dynamic="the build tree is under /tmp, which DynamicUser= hides (PrivateTmp=)" ;;
	/home/*|/root/*)
		sed -i -e 's|^ProtectHome=yes$|# ProtectHome=yes: the build tree is in a home|' "$s"
		notes+=("ProtectHome= off: the build tree is under /home or /root") ;;
	esac
	if [ -z "$no_dynamic" ] &&
	   ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$bin" -a -r "$bin" 2>/dev/null; then
		no_dynamic="an unprivileged user cannot run $bin"
	fi
	if [ -n "$no_dynamic" ]; then
		sed -i -e "s|^DynamicUser=yes\$|# DynamicUser=yes: off, $no_dynamic|" "$s"
		notes+=("DynamicUser= and PrivateTmp= off: $no_dynamic")
	fi
	# Added at the end of [Service]: no journal here, so evfdd's output goes to a file; no core file from
	# the watchdog's SIGABRT.
	local extra="StandardOutput=append:$log\nStandardError=append:$log\nLimitCORE=0\n"
	# LeakSanitizer stops the threads with ptrace at exit, which @system-service does not allow.
	if grep -q __asan_init "$bin"; then
		extra+="SystemCallFilter=@debug\n"
		notes+=("SystemCallFilter=@debug added: LeakSanitizer needs ptrace")
	fi
	awk -v extra="$extra" '/^\[Install\]/ { printf "# added by the test\n%s\n", extra } { print }' "$s" >"$s.tmp"
	mv "$s.tmp" "$s"
	grep -q "^ListenStream=127.0.0.1:$port\$" "$units_dir/evfdd.socket" || fail "evfdd.socket: ListenStream= not as expected"
	grep -q '^ListenStream=%t/evfdd/control$' "$units_dir/evfdd-control.socket" || fail "evfdd-control.socket: ListenStream= not as expected"
	grep -q "^ExecStart=$builddir/daemon/evfdd -c " "$s" || fail "evfdd.service: ExecStart= not as expected"
	grep -q "^ExecReload=+$builddir/daemon/evfdctl reload\$" "$s" || fail "evfdd.service: ExecReload= not as expected"
	grep -q '^WatchdogSec=2s$' "$s" || fail "evfdd.service: no WatchdogSec="
	grep -q 'DynamicUser=yes' "$s" || fail "evfdd.service: no DynamicUser=yes"
	grep -A3 '^# added by the test' "$s" | grep "^StandardError=append:$log\$" >/dev/null ||
		fail "evfdd.service: StandardError= not added to [Service]"
	if [ "${#notes[@]}" -gt 0 ]; then printf 'note: %s\n' "${notes[@]}"; fi
}

log_has() { grep -q -- "$1" "$log" 2>/dev/null; }

# ==== restarts that carry connections over ==============================================================
# evfdd's status as a Python expression over it (d): st 'd["upgrades"]'.
st() {
	local j
	j=$("$builddir/daemon/evfdctl" -s "$control" --json status) || return 1
	python3 -c 'import json, sys; d = json.loads(sys.argv[2]); print(eval(sys.argv[1]))' "$1" "$j"
}
log_lines() { wc -l <"$log"; }
log_since() { tail -n "+$(($1 + 1))" "$log"; }	# log_since N: what evfdd logged after its first N lines
# The listening TCP sockets on a port, by inode: the same inodes, the same sockets.
listen_inodes() {
	awk -v p="$(printf ':%04X' "$1")" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' /proc/net/tcp |
		sort | tr '\n' ' '
}
store_count() { prop evfdd.service NFileDescriptorStore; }
# The shipped unit keeps systemd's default start limit (5 starts in 10 s). A start it refuses after a restart
# drops the connections in the store, so each start here begins a fresh count, as waiting 10 s would.
start_limit_reset() { sd reset-failed evfdd.service; }

# The load client's progress (written every 0.2 s) in $load_rounds, the fewest round trips any stream has
# made; fail on its first error.
load_state() {
	local errors=unknown
	load_rounds=0
	if ! [ -s "$run/load/progress" ]; then
		kill -0 "$load_pid" 2>/dev/null || fail "the load client exited before it reported"
		return 0
	fi
	local j
	j=$(<"$run/load/progress")
	[[ $j =~ \"errors\":\ ([0-9]+) ]] && errors=${BASH_REMATCH[1]}
	[[ $j =~ \"min_rounds\":\ ([0-9]+) ]] && load_rounds=${BASH_REMATCH[1]}
	[ "$errors" = 0 ] || fail "the load client saw $errors errors; the first ones:
$(python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["error_list"]))' "$run/load/progress")"
}
# Wait until every stream has made at least $2 round trips.
load_wait() {
	local i
	for ((i = 0; i < wait_max * 10; i++)); do
		load_state
		[ "$load_rounds" -ge "$2" ] && return 0
		sleep 0.1
	done
	fail "gave up after $wait_max s waiting for: $1 (the slowest stream is at $load_rounds round trips)"
}

# N connections held open by a client that answers commands (carry_py's hold): hold_start N PORT...,
# hold_cmd CMD (its answer in $hold_answer), hold_end.
hold_start() {
	coproc HOLD { exec python3 -c "$carry_py" hold "$@"; }
	# shellcheck disable=SC2153 # HOLD_PID: set by coproc
	hold_pid=$HOLD_PID
	IFS= read -r -t 30 hold_answer <&"${HOLD[0]}" || hold_answer=
	[ "$hold_answer" = ready ] || fail "the holding client did not connect ($hold_answer)"
}
hold_cmd() {
	printf '%s\n' "$1" >&"${HOLD[1]}"
	IFS= read -r -t 60 hold_answer <&"${HOLD[0]}" || hold_answer="(no answer)"
}
hold_end() {
	printf 'quit\n' >&"${HOLD[1]}"
	wait "$hold_pid" 2>/dev/null
	hold_pid=
}

carry_setup() {
	# [fwd], a service evfdd binds itself, forwards to an echo server outside evfdd that outlives them all;
	# [echo], on evfdd.socket, echoes in evfdd. A forwarded connection is two descriptors, an echoed one.
	python3 -c "$carry_py" echo "$run/echo.port" &
	echo_pid=$!
	wait_for "the echo backend" test -s "$run/echo.port"
	write_conf "$(printf '\n[fwd]\nlisten = 127.0.0.1:%s\nforward = 127.0.0.1:%s\n' "$port_fwd" "$(cat "$run/echo.port")")"
	[ "$(prop evfdd.service FileDescriptorStoreMax)" -gt 0 ] || fail "evfdd.service has no FileDescriptorStoreMax="
	start_limit_reset
	sd start evfdd.service
	round_trip "$port" || fail "no echo on $port ([echo], activated)"
	round_trip "$port_fwd" || fail "no echo on $port_fwd ([fwd], forwarded to the echo backend)"
	[ "$(st 'd["upgrades"], d["last_upgrade"]')" = "(0, None)" ] || fail "a fresh evfdd reports an upgrade: $(st 'd["upgrades"], d["last_upgrade"]')"
}

# systemctl restart, ten times, under load: every connection carried over each time, none lost or harmed.
carry_under_load() {
	local streams=200 restarts=10 i pid newpid mark mark0 ino ino_fwd t0 ms slowest=0 pause max_pause=0 up rc
	mkdir -p "$run/load"
	python3 -c "$carry_py" load "$run/load" "$streams" "$port" "$port_fwd" &
	load_pid=$!
	load_wait "$streams streams open, each past its first round trip" 1
	ino=$(listen_inodes "$port")
	ino_fwd=$(listen_inodes "$port_fwd")
	if [ -z "$ino" ] || [ -z "$ino_fwd" ]; then fail "no listening sockets on $port and $port_fwd"; fi
	mark0=$(log_lines)
	for ((i = 1; i <= restarts; i++)); do
		pid=$(main_pid)
		mark=$(log_lines)
		start_limit_reset
		t0=$(date +%s%N)
		sd restart evfdd.service || fail "systemctl restart ($i) failed"
		ms=$((($(date +%s%N) - t0) / 1000000))
		[ "$ms" -gt "$slowest" ] && slowest=$ms
		newpid=$(main_pid)
		if [ "$newpid" = "$pid" ] || [ "$newpid" = 0 ]; then fail "restart $i: evfdd's pid is $newpid"; fi
		is_state evfdd.service active || fail "restart $i: evfdd.service is $(prop evfdd.service ActiveState)"
		log_since "$mark" | grep "^evfdd\[$pid\]: notice: evfdd.service is restarting: carrying up to [0-9]* descriptors over" >/dev/null ||
			fail "restart $i: evfdd (pid $pid) did not carry its connections over; it logged:
$(log_since "$mark" | grep "^evfdd\[$pid\]")"
		log_since "$mark" | grep "^evfdd\[$pid\]: notice: restart: [0-9]* connections handed to systemd's file descriptor store" >/dev/null ||
			fail "restart $i: evfdd (pid $pid) did not hand its connections to the store; it logged:
$(log_since "$mark" | grep "^evfdd\[$pid\]")"
		log_since "$mark" | grep "^evfdd\[$newpid\]: notice: restart $i from evfdd [^ ]*: [0-9]* connections carried over" >/dev/null ||
			fail "restart $i: the new evfdd (pid $newpid) did not take the connections over; it logged:
$(log_since "$mark" | grep "^evfdd\[$newpid\]")"
		read -r pause up < <(st '"%d %s" % (d["last_upgrade"]["pause_usec"] // 1000, (d["upgrades"], d["last_upgrade"]["kind"],
			d["last_upgrade"]["lost"], d["last_upgrade"]["fallback"], d["last_upgrade"]["connections"] >= '"$streams"'))')
		[ "$up" = "($i, 'restart', 0, '', True)" ] ||
			fail "restart $i: evfdctl status says (upgrades, kind, lost, fallback, all $streams streams carried) $up; last_upgrade: $(st 'd["last_upgrade"]')"
		# The restart read the configuration again: that reading is the last reload now.
		[ "$(st 'd["last_reload"]["ok"], d["last_reload"]["summary"].startswith("restart '"$i"': the new image read ")')" = "(True, True)" ] ||
			fail "restart $i: last_reload is $(st 'd["last_reload"]'), not the restart's reading of the configuration"
		[ "$pause" -gt "$max_pause" ] && max_pause=$pause
		# Nothing left behind: the new evfdd took its descriptors out of the store (FDSTOREREMOVE=1).
		wait_for "restart $i: systemd's file descriptor store empty ($(store_count) left)" test "$(store_count)" = 0
		[ "$(listen_inodes "$port")" = "$ino" ] || fail "restart $i: the listener on $port is no longer systemd's (evfdd.socket)"
		[ "$(listen_inodes "$port_fwd")" = "$ino_fwd" ] ||
			fail "restart $i: [fwd]'s listener on $port_fwd is a new socket ($ino_fwd -> $(listen_inodes "$port_fwd")): the one evfdd bound was not carried over"
		# Two more round trips on every stream: at least one wholly through the new evfdd.
		load_state
		load_wait "restart $i: two more round trips on every stream" $((load_rounds + 2))
	done
	touch "$run/load/stop"
	rc=0
	wait "$load_pid" || rc=$?
	load_pid=
	load_state
	[ "$rc" = 0 ] || fail "the load client failed (exit $rc): $(cat "$run/load/progress")"
	python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))
print("ok %d restarts under load: %d streams, %d round trips, %d bytes each way, every byte checked, %d streams "
      "checked out; %d connections opened and closed meanwhile; no error; slowest round trip %.0f ms" %
      (int(sys.argv[2]), d["streams"], d["rounds"], d["bytes"], d["ok"], d["churn"], d["max_rtt_ms"]))' \
		"$run/load/progress" "$restarts"
	echo "ok   each systemctl restart took at most $slowest ms; evfdd's longest pause $max_pause ms (last_upgrade.pause_usec)"
	wait_for "no connection open in evfdd after the clients closed theirs ($(st 'd["totals"]["open"]') open)" \
		test "$(st 'd["totals"]["open"]')" = 0
	[ "$(store_count)" = 0 ] || fail "systemd's file descriptor store holds $(store_count) descriptors after the load"
	if log_since "$mark0" | grep -E '^evfdd\[[0-9]+\]: (warning|err|crit|alert|emerg):'; then
		fail "evfdd complained during the restarts (lines above)"
	fi
	echo "ok   the store emptied after each restart; the activated and the bound listener stayed the same sockets"
}

# systemctl stop is a stop: the open connections finish in evfdd, nothing goes to the store.
carry_stop() {
	local pid newpid mark
	hold_start 4 "$port" "$port_fwd"
	pid=$(main_pid)
	mark=$(log_lines)
	sd --quiet stop --no-block evfdd.service
	wait_for "evfdd (pid $pid) stopping" log_has "^evfdd\[$pid\]: notice: Terminated: stopping"
	is_state evfdd.service deactivating || fail "evfdd.service is $(prop evfdd.service ActiveState) with connections open"
	hold_cmd rt
	[ "$hold_answer" = "ok=4 of 4" ] || fail "the connections open at the stop stopped working while evfdd was stopping: $hold_answer"
	hold_end
	wait_for "evfdd.service inactive" is_state evfdd.service inactive
	[ "$(prop evfdd.service Result)" = success ] || fail "evfdd.service stopped with result $(prop evfdd.service Result)"
	if log_since "$mark" | grep -E "is restarting|restart:|descriptor store"; then
		fail "systemctl stop carried connections over (lines above)"
	fi
	[ "$(store_count)" = 0 ] || fail "systemd's file descriptor store holds $(store_count) descriptors after a stop"
	start_limit_reset
	sd start evfdd.service
	newpid=$(main_pid)
	[ "$(st 'd["upgrades"], d["last_upgrade"]')" = "(0, None)" ] ||
		fail "evfdd started after a stop reports an upgrade: $(st 'd["upgrades"], d["last_upgrade"]')"
	if log_since "$mark" | grep "^evfdd\[$newpid\]" | grep -E 'carried|take-over|descriptor'; then
		fail "evfdd started after a stop took something over (lines above)"
	fi
	round_trip "$port" || fail "no echo on $port after systemctl stop and start"
	round_trip "$port_fwd" || fail "no echo on $port_fwd after systemctl stop and start"
	echo "ok systemctl stop stopped gracefully (connections finished, nothing stored); started again clean"
}

# A crash of the new image after an upgrade loses its connections, but not the listeners systemd holds.
carry_crash() {
	local pid restarts ino answer rt_pid i fate
	hold_start 20 "$port" "$port_fwd"
	pid=$(main_pid)
	ino=$(listen_inodes "$port")
	answer=$("$builddir/daemon/evfdctl" -s "$control" upgrade 2>&1) || fail "evfdctl upgrade failed: $answer"
	[ "$(main_pid)" = "$pid" ] || fail "evfdctl upgrade changed the main PID ($pid -> $(main_pid))"
	[ "$(st '(d["upgrades"], d["last_upgrade"]["kind"], d["last_upgrade"]["lost"], d["last_upgrade"]["connections"] >= 20)')" = \
		"(1, 'upgrade', 0, True)" ] || fail "after evfdctl upgrade, evfdctl status says: $(st 'd["upgrades"], d["last_upgrade"]')"
	hold_cmd rt
	[ "$hold_answer" = "ok=20 of 20" ] || fail "connections did not survive evfdctl upgrade: $hold_answer"
	start_limit_reset
	restarts=$(prop evfdd.service NRestarts)
	kill -KILL "$pid"
	for ((i = 0; i < 500; i++)); do
		if ! [ -e "/proc/$pid" ] || grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then break; fi
		sleep 0.01
	done
	# Made while no evfdd runs: it waits in systemd's listener for the next one.
	round_trip "$port" &
	rt_pid=$!
	wait_for "a new evfdd after the crash" replaced "$pid"
	[ "$(prop evfdd.service NRestarts)" -gt "$restarts" ] || fail "systemd did not restart evfdd.service after the crash"
	grep -q 'evfdd.service: Main process exited, code=killed, status=9/KILL' "$manager_log" ||
		fail "the user manager did not log evfdd's SIGKILL"
	wait "$rt_pid" || fail "a connection made while evfdd was down got no echo from the next evfdd"
	[ "$(listen_inodes "$port")" = "$ino" ] || fail "the listener on $port is not the same socket after the crash"
	hold_cmd fate
	fate=$hold_answer
	hold_end
	case $fate in
	"eof="*" reset="*" open=0 data=0 error=0") ;;	# each saw an EOF or a reset, 20 in all
	*) fail "after the crash, the connections open before it are not all closed: $fate" ;;
	esac
	round_trip "$port_fwd" || fail "[fwd] does not answer after the crash"
	[ "$(st 'd["upgrades"], d["last_upgrade"]')" = "(0, None)" ] ||
		fail "evfdd started after a crash reports an upgrade: $(st 'd["upgrades"], d["last_upgrade"]')"
	[ "$(store_count)" = 0 ] || fail "systemd's file descriptor store holds $(store_count) descriptors after the crash"
	echo "ok a crash after evfdctl upgrade: systemd restarted evfdd (pid $pid -> $(main_pid)); the 20 connections open then were closed ($fate); the activated listener stayed and queued a new connection meanwhile"
}

# FileDescriptorStoreMax=0: a restart is a graceful stop and a start.
# restart_stops WHAT PATTERN: two connections held open, then systemctl restart; evfdd ($pid) must log
# PATTERN (after "evfdd[$pid]: ") and stop as for a stop, the held connections working until they end.
# Sets pid and mark (the log's length before), for the caller's checks.
restart_stops() {
	hold_start 2 "$port" "$port_fwd"
	pid=$(main_pid)
	mark=$(log_lines)
	start_limit_reset
	sd --quiet restart --no-block evfdd.service
	wait_for "evfdd (pid $pid) $1" log_has "^evfdd\[$pid\]: $2"
	hold_cmd rt
	[ "$hold_answer" = "ok=2 of 2" ] ||
		fail "the connections open at the restart stopped working while evfdd was stopping ($1): $hold_answer"
	hold_end
}

carry_no_store() {
	local dropin="$XDG_CONFIG_HOME/systemd/user/evfdd.service.d" pid mark
	mkdir -p "$dropin"
	printf '[Service]\nFileDescriptorStoreMax=0\n' >"$dropin/no-store.conf"
	sd daemon-reload
	[ "$(prop evfdd.service FileDescriptorStoreMax)" = 0 ] || fail "the drop-in did not set FileDescriptorStoreMax=0"
	restart_stops "saying it cannot carry over" \
		"notice: evfdd.service is restarting, but FileDescriptorStoreMax= is 0: connections cannot be carried over; stopping"
	wait_for "a new evfdd after the restart" replaced "$pid"
	if log_since "$mark" | grep -E "restart:|carried over in"; then
		fail "a restart with FileDescriptorStoreMax=0 carried connections over (lines above)"
	fi
	[ "$(st 'd["upgrades"], d["last_upgrade"]')" = "(0, None)" ] ||
		fail "evfdd restarted without a store reports an upgrade: $(st 'd["upgrades"], d["last_upgrade"]')"
	round_trip "$port" || fail "no echo after the restart without a store"
	rm -r "$dropin"
	sd daemon-reload
	echo "ok with FileDescriptorStoreMax=0 a restart stops gracefully (the open connections finished) and starts again"
}

# A restart whose next start would fail (a broken configuration) is a stop: the open connections finish in
# the old evfdd instead of being handed to a start that cannot take them.
carry_bad_config() {
	local pid mark
	cp "$conf" "$conf.keep"
	printf '\n[broken\n' >>"$conf"
	restart_stops "refusing to carry over to a start that would fail" \
		"warning: restart: the next start's binary .* does not accept the configuration or the state: .*; stopping as for a stop instead, nothing carried over"
	if log_since "$mark" | grep -E "descriptor store|carried over in"; then
		fail "a restart to a broken configuration carried connections over (lines above)"
	fi
	[ "$(store_count)" = 0 ] || fail "systemd's file descriptor store holds $(store_count) descriptors after a refused restart"
	mv "$conf.keep" "$conf"
	wait_for "evfdd.service to give up on the broken configuration" sh -c \
		"[ \"\$(systemctl --user show -p ActiveState --value evfdd.service)\" != activating ]"
	start_limit_reset
	sd start evfdd.service
	round_trip "$port" || fail "no echo after the configuration was mended"
	echo "ok a restart to a broken configuration stopped gracefully instead (the open connections finished, nothing stored)"
}

inner() {
	# Never let a user manager take over a shared cgroup (see outer).
	if grep -E '^[0-9]+:(name=systemd)?:' /proc/self/cgroup | grep -v -q -E '/evfdd-test-systemd\.[0-9]+$'; then
		fail "not in a cgroup of the test's own (--inner is for the test itself): $(tr '\n' ' ' </proc/self/cgroup)"
	fi
	trap cleanup_inner EXIT
	trap 'exit 124' TERM
	trap '' PIPE	# a peer that went away: an error from printf, not a dead shell
	{ read -r port; read -r port2; read -r port3; read -r port_fwd; } < <(free_ports 4)
	start_manager
	control="$XDG_RUNTIME_DIR/evfdd/control"
	render_units
	write_conf
	: >"$log"

	# Sanitizer settings (make check sets them) reach evfdd through the manager's environment.
	local v
	for v in ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS TSAN_OPTIONS EVFD_TEST_SCALE; do
		[ -n "${!v:-}" ] && sd set-environment "$v=${!v}"
	done

	sd --quiet link "$units_dir/evfdd.service" "$units_dir/evfdd.socket" "$units_dir/evfdd-control.socket"
	sd daemon-reload

	# ---- socket activation -------------------------------------------------------------------------
	sd start evfdd.socket
	is_state evfdd.service inactive || fail "evfdd.service runs before any connection"
	round_trip "$port" || fail "no echo through the activated socket on port $port"
	wait_for "evfdd.service active" is_state evfdd.service active
	is_state evfdd-control.socket active || fail "evfdd-control.socket did not come up with the service (Requires=)"
	echo "ok a connection to evfdd.socket started evfdd.service; echo round trip"
	if grep -q '^DynamicUser=yes$' "$units_dir/evfdd.service"; then
		local uid
		uid=$(stat -c %u "/proc/$(main_pid)")
		if [ "$uid" -lt 61184 ] || [ "$uid" -gt 65519 ]; then fail "evfdd runs as uid $uid, not as a dynamic user"; fi
		echo "ok evfdd runs as dynamic user $uid"
	fi

	local status pid pid0
	wait_for "a STATUS= line" test -n "$(prop evfdd.service StatusText)"
	status=$(sd --no-pager status evfdd.service 2>&1) || true
	grep -q 'Active: active (running)' <<<"$status" || fail "systemctl status: not active (running):
$status"
	grep -q 'Status: "' <<<"$status" || fail "systemctl status shows no STATUS= line:
$status"
	echo "ok systemctl status: active (running), $(grep 'Status: "' <<<"$status" | sed 's/^ *//')"
	pid0=$(main_pid)

	# ---- the control socket, as systemd passed it ------------------------------------------------------
	[ -S "$control" ] || fail "no control socket at $control"
	# evfdd serves the socket systemd made, not one it bound itself at the same path.
	local ino
	ino=$(awk -v p="$control" '$4 == "00010000" && $NF == p { print $7; exit }' /proc/net/unix)
	[ -n "$ino" ] || fail "no listening socket at $control in /proc/net/unix"
	find "/proc/$pid0/fd" -lname "socket:\[$ino\]" | grep . >/dev/null ||
		fail "evfdd (pid $pid0) does not hold the activated control socket (inode $ino)"
	status=$("$builddir/daemon/evfdctl" -s "$control" status 2>&1) ||
		fail "evfdctl -s $control status failed: $status"
	grep -qw "$pid0" <<<"$status" || fail "evfdctl status does not show evfdd's pid $pid0: $status"
	echo "ok evfdctl status over the activated control socket"

	# ---- reload: applied, refused, by SIGHUP ---------------------------------------------------------
	write_conf "$(printf '\n[second]\nlisten = 127.0.0.1:%s\nforward = echo\n' "$port2")"
	sd reload evfdd.service || fail "systemctl reload failed with a good configuration"
	round_trip "$port2" || fail "after systemctl reload, the new service [second] does not answer on $port2"
	echo "ok systemctl reload applied a good configuration ([second] answers)"

	cp "$conf" "$conf.good"
	printf '\n[broken\nforward = nowhere\n' >>"$conf"
	if sd reload evfdd.service 2>/dev/null; then
		fail "systemctl reload succeeded with a broken configuration"
	fi
	is_state evfdd.service active || fail "evfdd.service is not active after a refused reload"
	[ "$(main_pid)" = "$pid0" ] || fail "evfdd restarted (pid $pid0 -> $(main_pid)) after a refused reload"
	round_trip "$port" || fail "no echo on $port after a refused reload"
	round_trip "$port2" || fail "[second] stopped answering on $port2 after a refused reload"
	echo "ok systemctl reload failed with a broken configuration; evfdd kept serving the old one"

	write_conf "$(printf '\n[second]\nlisten = 127.0.0.1:%s\nforward = echo\n\n[third]\nlisten = 127.0.0.1:%s\nforward = echo\n' \
		"$port2" "$port3")"
	kill -HUP "$pid0"
	wait_for "[third] answering on $port3 after SIGHUP" round_trip "$port3"
	[ "$(main_pid)" = "$pid0" ] || fail "evfdd restarted (pid $pid0 -> $(main_pid)) on SIGHUP"
	echo "ok SIGHUP reloaded the configuration ([third] answers)"

	# ---- graceful stop: an open connection keeps working until it ends ---------------------------------
	local msg reply
	exec 6<>"/dev/tcp/127.0.0.1/$port"
	printf 'before\n' >&6
	IFS= read -r -t 20 reply <&6 || reply=
	[ "$reply" = before ] || fail "no echo on the connection held open"
	sd --quiet stop --no-block evfdd.service
	wait_for "evfdd.service deactivating" is_state evfdd.service deactivating
	wait_for "evfdd draining (its log: no longer accepting)" log_has "no longer accepting"
	msg="during-stop-$RANDOM"
	printf '%s\n' "$msg" >&6
	IFS= read -r -t 20 reply <&6 || reply=
	[ "$reply" = "$msg" ] || fail "the open connection stopped working while evfdd was stopping"
	is_state evfdd.service deactivating || fail "evfdd.service stopped before its last connection ended"
	exec 6>&-
	wait_for "evfdd.service inactive after its last connection ended" is_state evfdd.service inactive
	[ "$(prop evfdd.service Result)" = success ] || fail "evfdd.service stopped with result $(prop evfdd.service Result)"
	log_has "all connections finished" || fail "evfdd did not log that its connections finished"
	echo "ok systemctl stop waited for the open connection, then evfdd exited cleanly"

	# ---- started again by a connection: the control socket is still there --------------------------------
	round_trip "$port" || fail "no echo on $port after the stop (evfdd.socket should start evfdd again)"
	wait_for "evfdd.service active again" is_state evfdd.service active
	[ -S "$control" ] || fail "the control socket file $control is gone after a stop and start"
	"$builddir/daemon/evfdctl" -s "$control" status >/dev/null 2>&1 ||
		fail "evfdctl status fails after a stop and start: the control socket lost its file"
	echo "ok after stop and start, evfdctl still reaches evfdd (RuntimeDirectoryPreserve=)"

	# ---- watchdog: a daemon that stops answering is restarted ------------------------------------------
	pid=$(main_pid)
	local restarts
	restarts=$(prop evfdd.service NRestarts)
	kill -STOP "$pid"
	wait_for "a new evfdd after the watchdog fired" replaced "$pid"
	[ "$(prop evfdd.service NRestarts)" -gt "$restarts" ] || fail "evfdd.service was not restarted by systemd"
	grep -q -i watchdog "$manager_log" || fail "the user manager did not log a watchdog timeout"
	round_trip "$port" || fail "no echo after the watchdog restart"
	echo "ok the watchdog restarted a stopped evfdd (pid $pid -> $(main_pid))"

	# ---- evfdd.service on its own pulls in both sockets ------------------------------------------------
	sd --quiet stop evfdd.service evfdd.socket evfdd-control.socket
	is_state evfdd.socket inactive || fail "evfdd.socket still active after stop"
	sd start evfdd.service
	is_state evfdd.service active || fail "systemctl start evfdd.service did not leave it active"
	is_state evfdd.socket active || fail "systemctl start evfdd.service did not start evfdd.socket"
	is_state evfdd-control.socket active || fail "systemctl start evfdd.service did not start evfdd-control.socket"
	round_trip "$port" || fail "no echo after systemctl start evfdd.service"
	"$builddir/daemon/evfdctl" -s "$control" status >/dev/null 2>&1 ||
		fail "evfdctl status fails after systemctl start evfdd.service"
	sd --quiet stop evfdd.service
	[ "$(prop evfdd.service Result)" = success ] || fail "evfdd.service stopped with result $(prop evfdd.service Result)"
	echo "ok systemctl start evfdd.service starts both sockets and serves"

	if [ -z "$bus_skip" ]; then
		carry_setup
		carry_under_load
		carry_stop
		carry_crash
		carry_no_store
		carry_bad_config
		sd --quiet stop evfdd.service
	fi

	if grep -E -n 'AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:' "$log"; then
		fail "sanitizer report in evfdd's log (lines above)"
	fi
	echo "ok no sanitizer report in evfdd's log"
	[ -z "$bus_skip" ] || skip "restarts carrying connections over not tested: $bus_skip"
}

if [ "${1:-}" = --inner ]; then
	inner
else
	outer
fi

