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
#
# The outer part (no argument) checks what it needs, makes the cgroup, runs the inner part (--inner)
# under unshare and timeout, and afterwards kills whatever is left in that cgroup. Only the outer part
# touches the host, and only that cgroup; everything else lives in the namespace's tmpfs.
set -euo pipefail

builddir=$(cd "${top_builddir:-.}" && pwd)
overall_timeout=${EVFDD_SYSTEMD_TEST_TIMEOUT:-240}	# seconds, for the whole inner part
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
port='' port2='' port3=''
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
	local rc=$? i
	trap - EXIT
	set +e
	[ "$rc" -ne 0 ] && show_logs
	if [ -n "$manager_pid" ]; then
		timeout 30 systemctl --user stop evfdd.service evfdd.socket evfdd-control.socket 2>/dev/null
		timeout 10 systemctl --user exit 2>/dev/null
		for ((i = 0; i < 100; i++)); do kill -0 "$manager_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$manager_pid" 2>/dev/null
	fi
	[ -n "$listener_pid" ] && kill "$listener_pid" 2>/dev/null
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
	export XDG_RUNTIME_DIR="$run/xdg" XDG_CONFIG_HOME="$run/config" XDG_DATA_HOME="$run/data"
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
	grep -A3 '^# added by the test' "$s" | grep -q "^StandardError=append:$log\$" ||
		fail "evfdd.service: StandardError= not added to [Service]"
	if [ "${#notes[@]}" -gt 0 ]; then printf 'note: %s\n' "${notes[@]}"; fi
}

log_has() { grep -q -- "$1" "$log" 2>/dev/null; }

inner() {
	# Never let a user manager take over a shared cgroup (see outer).
	if grep -E '^[0-9]+:(name=systemd)?:' /proc/self/cgroup | grep -v -q -E '/evfdd-test-systemd\.[0-9]+$'; then
		fail "not in a cgroup of the test's own (--inner is for the test itself): $(tr '\n' ' ' </proc/self/cgroup)"
	fi
	trap cleanup_inner EXIT
	trap 'exit 124' TERM
	trap '' PIPE	# a peer that went away: an error from printf, not a dead shell
	{ read -r port; read -r port2; read -r port3; } < <(free_ports 3)
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
	ino=$(awk -v p="$control" '$4 == "00010000" && $NF == p { print $7 }' /proc/net/unix | head -n 1)
	[ -n "$ino" ] || fail "no listening socket at $control in /proc/net/unix"
	find "/proc/$pid0/fd" -lname "socket:\[$ino\]" | grep -q . ||
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

	if grep -E -n 'AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:' "$log"; then
		fail "sanitizer report in evfdd's log (lines above)"
	fi
	echo "ok no sanitizer report in evfdd's log"
}

if [ "${1:-}" = --inner ]; then
	inner
else
	outer
fi
