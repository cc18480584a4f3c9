#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The systemd units as make renders them: `systemd-analyze verify` says nothing about them, evfdd.service
# scores at most 2.0 in `systemd-analyze security --offline=yes`, and the sockets fit evfdd (the data
# socket's FileDescriptorName= is a service of conf/evfdd.conf, the control socket is named "control",
# the metrics socket "metrics", and the service takes every shipped socket: the data and control sockets
# always (Sockets=), the opt-in metrics socket when it is enabled (its Service=). tests/test-systemd.sh runs them under a real systemd.
set -eu
srcdir=${top_srcdir:-.}
builddir=$(cd "${top_builddir:-.}" && pwd)
units="evfdd.service evfdd.socket evfdd-control.socket evfdd-metrics.socket"
max_exposure=2.0

fail() { echo "FAIL: $*"; exit 1; }

command -v systemd-analyze >/dev/null ||
	{ echo "SKIP: systemd-analyze not found (tools/install-deps installs systemd)"; exit 77; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/evfdd-test-units.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# verify checks that every Exec*= program exists: point them at the build tree, which is the only change.
for u in $units; do
	f="$builddir/units/$u"
	[ -f "$f" ] || fail "$f is missing: make renders it from $srcdir/units/$u.in"
	if grep -n '@[a-z_]*@' "$f"; then fail "$f: placeholders left unrendered (lines above)"; fi
	sed -e "s#^\(Exec[A-Za-z]*=[-+!@:]*\)/[^ ]*/\(evfd[a-z]*\)\( \|\$\)#\1$builddir/daemon/\2\3#" "$f" >"$tmp/$u"
done
sed -n 's|^Exec[A-Za-z]*=[-+!@:]*\([^ ]*\).*|\1|p' "$tmp/evfdd.service" | while read -r prog; do
	[ -x "$prog" ] || fail "evfdd.service runs $prog, which is not built (make all)"
done

# ---- systemd-analyze verify: no output at all --------------------------------------------------------
# Documentation= names man pages; verify runs man(1) for each. Show it this tree's pages.
man_opt=--man=yes
if command -v man >/dev/null; then
	for page in "$srcdir"/man/*.[1-8]; do
		sec=${page##*.}
		mkdir -p "$tmp/man/man$sec"
		cp "$page" "$tmp/man/man$sec/"
	done
	MANPATH="$tmp/man"
	export MANPATH
else
	echo "note: man(1) is not installed; verify skips the Documentation= pages"
	man_opt=--man=no
fi
# shellcheck disable=SC2086 # $units: a list of names without blanks
(cd "$tmp" && systemd-analyze verify "$man_opt" $units) >"$tmp/verify.out" 2>&1 || true
if [ -s "$tmp/verify.out" ]; then
	cat "$tmp/verify.out"
	fail "systemd-analyze verify $units printed the lines above"
fi
echo "ok systemd-analyze verify: nothing to report for $units"

# ---- systemd-analyze security: exposure at most $max_exposure ------------------------------------------------
(cd "$tmp" && systemd-analyze security --offline=yes evfdd.service) >"$tmp/security.out" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for evfdd\.service: \([0-9][0-9.]*\).*/\1/p' "$tmp/security.out")
if [ -z "$score" ]; then
	cat "$tmp/security.out"
	fail "systemd-analyze security printed no exposure level for evfdd.service"
fi
echo "evfdd.service exposure: $score (at most $max_exposure)"
if ! awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
	grep '✗' "$tmp/security.out" || true
	fail "evfdd.service exposure $score is above $max_exposure (the settings marked ✗ above are open)"
fi

# ---- the sockets fit evfdd ----------------------------------------------------------------------------
key() { sed -n "s/^$2=//p" "$tmp/$1"; }
[ "$(key evfdd-control.socket FileDescriptorName)" = control ] ||
	fail "evfdd-control.socket: FileDescriptorName= must be \"control\", the name evfdd reserves for it"
[ "$(key evfdd-control.socket ListenStream)" = /run/evfdd/control ] ||
	fail "evfdd-control.socket: ListenStream= must be /run/evfdd/control, evfdctl's default for root"
name=$(key evfdd.socket FileDescriptorName)
[ -n "$name" ] || fail "evfdd.socket has no FileDescriptorName=: evfdd would not know its service"
grep -q "^\[$name\]" "$srcdir/conf/evfdd.conf" ||
	fail "evfdd.socket's FileDescriptorName=$name is no service of conf/evfdd.conf: evfdd would exit 1"
sockets=" $(key evfdd.service Sockets | tr '\n' ' ') "
for u in $units; do
	case $u in *.socket) ;; *) continue ;; esac
	[ "$(key "$u" Service)" = evfdd.service ] || fail "$u: Service= must be evfdd.service"
	# Sockets= also means Wants=: the metrics socket, opt-in, is passed through its Service= alone.
	[ "$u" = evfdd-metrics.socket ] && continue
	case $sockets in *" $u "*) ;; *) fail "evfdd.service: Sockets= must list $u, or evfdd would not get it" ;; esac
done
case $sockets in *" evfdd-metrics.socket "*) fail "evfdd.service: Sockets= must not list the opt-in evfdd-metrics.socket (it would always start it)" ;; esac
[ "$(key evfdd-metrics.socket FileDescriptorName)" = metrics ] ||
	fail "evfdd-metrics.socket: FileDescriptorName= must be \"metrics\", the name evfdd reserves for it"
echo "ok sockets: [$name] and control passed to evfdd.service, metrics when enabled"
