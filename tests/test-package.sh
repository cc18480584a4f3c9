#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The Debian packages (debian/), built as an operator would: `dpkg-buildpackage -us -uc -b` in a copy of
# the source tree. Checked: debian/changelog's version is configure.ac's; every pkg-config module that
# configure.ac requires comes from a package in Build-Depends; the three packages hold what they should
# (programs, every unit and man page, the example configuration as documentation and nothing in /etc,
# the library with its symbols file, the development files); every symbol the built library exports, with
# its version node (objdump -T), is the one lib/libevfd.sym and debian/libevfd0.symbols give; an upgrade
# neither stops nor restarts a unit (the maintainer scripts); lintian finds no error and no warning (fix,
# or override in debian/*.lintian-overrides with the reason), on the binary packages and on the source
# package. As root, the packages are installed with dpkg -i (twice: an installation, then an upgrade's
# path through the scripts), checked (the installed evfdd checks the example configuration, a program
# builds against libevfd-dev with pkg-config, the sockets are enabled and evfdd.service is not), and
# purged again, also when a check fails.
#
# The copy, made in a temporary directory from $top_srcdir, so the test runs alike in a VPATH build tree,
# an in-tree one and make distcheck: a git work tree gives its files as git sees them (tracked and new, not
# ignored: no build output, no .git); a tree without .git (distcheck's unpacked, read-only tarball) is
# copied without its build directories (_build, _inst, any configured tree), or, configured in place,
# taken by make distdir; either way without the files autotools generates, which dh_autoreconf makes
# anew. About a minute on 2 CPUs (DEB_BUILD_OPTIONS=parallel=N). Skips (77) only off Debian (no dpkg); a
# missing debhelper, lintian or dpkg-dev fails: tools/install-deps installs them.
set -euo pipefail
# No `CMD | grep -q` here: grep -q exits at the first match, CMD may die of SIGPIPE writing the rest, and
# pipefail then fails the test at random (ldd did, in CI). grep ... >/dev/null reads to the end.

srcdir=$(cd "${top_srcdir:-.}" && pwd)
builddir=$(cd "${top_builddir:-.}" && pwd)

fail() { echo "FAIL: $*"; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
ok() { echo "ok $*"; }

command -v dpkg >/dev/null || skip "dpkg not found: the Debian packages build on Debian only"
for tool in dpkg-buildpackage dpkg-source dpkg-deb dpkg-architecture dpkg-parsechangelog dh lintian \
	objdump pkg-config; do
	command -v "$tool" >/dev/null || fail "$tool not found: run tools/install-deps (as root)"
done
[ -f "$srcdir/debian/control" ] || fail "$srcdir/debian/control is missing (make dist: is debian/ in EXTRA_DIST?)"

start=$SECONDS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/evfdd-test-package.XXXXXX")
installed=0
cleanup() {
	local rc=$?
	if [ "$installed" -eq 1 ]; then
		dpkg --purge evfdd libevfd-dev libevfd0 >"$tmp/purge.log" 2>&1 ||
			{ cat "$tmp/purge.log"; echo "FAIL: dpkg --purge evfdd libevfd-dev libevfd0 failed"; rc=1; }
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP	# through cleanup: a stopped test purges what it installed too

# ---- the version: debian/changelog says configure.ac's ---------------------------------------------------
version=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$srcdir/configure.ac")
[ -n "$version" ] || fail "no version in configure.ac's AC_INIT"
deb_version=$(dpkg-parsechangelog -l "$srcdir/debian/changelog" -SVersion)
[ "$deb_version" = "$version" ] ||
	fail "debian/changelog is at $deb_version, configure.ac at $version: add a changelog entry (a native package's version is the project's)"
ok "debian/changelog's version is configure.ac's ($version)"

# ---- Build-Depends: every pkg-config module of configure.ac, and libev's header --------------------------
build_deps=$(sed -n '/^Build-Depends:/,/^[A-Z]/p' "$srcdir/debian/control" |
	sed -e 's/^Build-Depends://' -e 's/([^)]*)//g' -e 's/<[^>]*>//g' -e 's/\[[^]]*\]//g' | tr ',|' '\n' |
	awk 'NF { print $1 }' | sort -u)
owner() { dpkg -S "$1" 2>/dev/null | sed -n '1s/^\([^:,]*\).*/\1/p'; }
missing=
modules=$(sed -n 's/^[[:space:]]*PKG_CHECK_MODULES(\[[A-Za-z_]*\], *\[\([^] >=<]*\).*/\1/p' "$srcdir/configure.ac")
[ -n "$modules" ] || fail "found no PKG_CHECK_MODULES in configure.ac"
for m in $modules; do
	pcdir=$(pkg-config --variable=pcfiledir "$m" 2>/dev/null) ||
		fail "pkg-config knows no $m (configure.ac needs it): run tools/install-deps"
	pkg=$(owner "$pcdir/$m.pc")
	[ -n "$pkg" ] || fail "no package owns $pcdir/$m.pc"
	printf '%s\n' "$build_deps" | grep -x "$pkg" >/dev/null || missing="$missing $pkg($m)"
done
while IFS= read -r h; do
	pkg=$(owner "/usr/include/$h")
	[ -z "$pkg" ] || printf '%s\n' "$build_deps" | grep -x "$pkg" >/dev/null || missing="$missing $pkg($h)"
done < <(sed -n 's/^AC_CHECK_HEADER(\[\([^]]*\)\].*/\1/p' "$srcdir/configure.ac")
[ -z "$missing" ] || fail "debian/control's Build-Depends lacks:$missing (configure.ac needs them)"
# shellcheck disable=SC2086 # the module names, one word each
ok "Build-Depends has the package of every module configure.ac checks for: $(printf "%s " $modules)"

# ---- a copy of the source tree ----------------------------------------------------------------------------
src=$tmp/evfdd-$version
mkdir -p "$src"
from_git=0
if command -v git >/dev/null && [ -e "$srcdir/.git" ] &&
	[ "$(git -C "$srcdir" rev-parse --show-toplevel 2>/dev/null)" = "$srcdir" ]; then
	how="git ls-files (tracked and new files of the work tree)"
	from_git=1
	git -C "$srcdir" ls-files -z --cached --others --exclude-standard |
		(cd "$srcdir" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
		(cd "$srcdir" && tar --null -T - -cf -) | tar -xf - -C "$src"
elif [ -f "$srcdir/config.status" ]; then
	# A tarball configured in place: its build output lies among the sources; make distdir sorts them out.
	how="make distdir (a tree configured in place)"
	rmdir "$src"
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C "$builddir" distdir distdir="$src" >"$tmp/distdir.log" 2>&1 ||
		{ cat "$tmp/distdir.log"; fail "make distdir failed"; }
else
	how="a copy without build directories and generated files"
	# Build directories (distcheck's _build and _inst, build-*/, any configured tree) stay out.
	excludes=(--exclude=./.git --exclude=./_build --exclude=./_inst --exclude=./autom4te.cache)
	while IFS= read -r -d '' d; do
		excludes+=("--exclude=./${d#"$srcdir"/}")
	done < <(find "$srcdir" -mindepth 2 -name config.status -printf '%h\0')
	(cd "$srcdir" && tar "${excludes[@]}" -cf - .) | tar -xf - -C "$src"
fi
chmod -R u+w "$src"	# distcheck's source tree is read-only
if [ "$from_git" -eq 0 ]; then
	# What autoreconf generates: the package build makes it anew, so the source package is the sources.
	(cd "$src" && rm -rf configure aclocal.m4 config.h.in Makefile.in build-aux m4/libtool.m4 m4/lt*.m4 \
		m4/pkg.m4)
fi
[ -x "$src/debian/rules" ] || fail "the copy has no executable debian/rules"
ok "copied $srcdir by $how: $(find "$src" -type f | wc -l) files"

# ---- the source package, for lintian (3.0 (native): one tarball), made before the build touches the tree ---
(cd "$tmp" && dpkg-source -b "evfdd-$version") >"$tmp/source.log" 2>&1 ||
	{ cat "$tmp/source.log"; fail "dpkg-source -b failed"; }
dsc=$tmp/evfdd_${version}.dsc
[ -f "$dsc" ] || fail "dpkg-source made no $dsc"

# ---- dpkg-buildpackage -us -uc -b ------------------------------------------------------------------------
jobs=$(nproc 2>/dev/null || echo 2)
build_start=$SECONDS
# The harness's make variables must not reach the package build's own make.
if ! (cd "$src" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES -u top_srcdir -u top_builddir \
	DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:+$DEB_BUILD_OPTIONS }parallel=$jobs" dpkg-buildpackage -us -uc -b) >"$tmp/build.log" 2>&1; then
	echo "----- the last 80 lines of dpkg-buildpackage's output -----"
	tail -n 80 "$tmp/build.log"
	fail "dpkg-buildpackage -us -uc -b failed"
fi
ok "dpkg-buildpackage -us -uc -b in $((SECONDS - build_start)) s (parallel=$jobs)"

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
ma=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
for p in evfdd libevfd0 libevfd-dev; do
	deb=$tmp/${p}_${version}_${arch}.deb
	[ -f "$deb" ] || fail "$deb was not built"
	dpkg-deb -c "$deb" | awk '{ sub(/^\.\//, "/", $6); print $6 }' | sed 's|/$||' >"$tmp/$p.files"
	mkdir "$tmp/x-$p"
	dpkg-deb -x "$deb" "$tmp/x-$p"
	dpkg-deb -e "$deb" "$tmp/x-$p/DEBIAN"
done

# has PACKAGE PATH...: each PATH is in PACKAGE
has() {
	local p=$1 f
	shift
	for f in "$@"; do
		grep -qxF "$f" "$tmp/$p.files" || fail "$p does not hold $f"
	done
}

# ---- evfdd: programs, units, man pages, the example configuration ---------------------------------------
has evfdd /usr/sbin/evfdd /usr/sbin/evfdctl /usr/share/doc/evfdd/examples/evfdd.conf \
	/usr/share/doc/evfdd/copyright
units=
for u in "$srcdir"/units/*.in; do
	u=$(basename "$u" .in)
	units="$units $u"
	has evfdd "/lib/systemd/system/$u"
	f=$tmp/x-evfdd/lib/systemd/system/$u
	if grep -n '@[a-z_]*@' "$f"; then fail "$u: placeholders left unrendered (above)"; fi
done
grep -qx 'ExecStart=/usr/sbin/evfdd' "$tmp/x-evfdd/lib/systemd/system/evfdd.service" ||
	fail "evfdd.service does not run /usr/sbin/evfdd"
for m in "$srcdir"/man/*.[1-8]; do
	page=$(basename "$m")
	p=evfdd
	[ "${page##*.}" != 3 ] || p=libevfd-dev
	has "$p" "/usr/share/man/man${page##*.}/$page.gz"
done
if grep -q '^/etc' "$tmp/evfdd.files"; then
	grep '^/etc' "$tmp/evfdd.files"
	fail "evfdd installs files in /etc (above): a fresh install must run the embedded default"
fi
cmp -s "$srcdir/conf/evfdd.conf" "$tmp/x-evfdd/usr/share/doc/evfdd/examples/evfdd.conf" ||
	fail "/usr/share/doc/evfdd/examples/evfdd.conf is not conf/evfdd.conf"
ok "evfdd holds evfdd, evfdctl, the units ($units ), every man page, the example configuration, nothing in /etc"

# ---- evfdd's maintainer scripts: an upgrade stops and restarts nothing -------------------------------------
ctl=$tmp/x-evfdd/DEBIAN
[ ! -e "$ctl/preinst" ] || ! grep -n 'stop' "$ctl/preinst" || fail "preinst stops a unit (above)"
if grep -n 'restart' "$ctl/postinst"; then fail "postinst restarts a unit on upgrade (above)"; fi
grep -q "deb-systemd-helper enable 'evfdd.socket'" "$ctl/postinst" || fail "postinst does not enable evfdd.socket"
grep -q "deb-systemd-helper enable 'evfdd-control.socket'" "$ctl/postinst" ||
	fail "postinst does not enable evfdd-control.socket"
# Every stop in prerm is under [ "$1" = remove ]: none on upgrade.
if awk '/deb-systemd-invoke stop/ && !guarded { print FILENAME ":" FNR ": " $0; bad = 1 }
	/"\$1" = remove/ { guarded = 1 } /^fi/ { guarded = 0 } END { exit !bad }' "$ctl/prerm"; then
	fail "prerm stops a unit on upgrade (above)"
fi
grep -q 'deb-systemd-invoke stop .*evfdd.service' "$ctl/prerm" || fail "prerm does not stop evfdd.service on removal"
ok "maintainer scripts: sockets enabled, no stop or restart on upgrade, every unit stopped on removal"

# libmicrohttpd is loaded with dlopen (daemon/metrics.c), which dpkg-shlibdeps cannot see: evfdd names it.
mhd_so=$(sed -n 's/^#define EVFDD_MHD_SONAME "\(.*\)"$/\1/p' "$builddir/config.h")
mhd_pkg=$(dpkg -S "*/$mhd_so" 2>/dev/null | sed -n '1s/[:,].*//p')
[ -n "$mhd_so" ] && [ -n "$mhd_pkg" ] || fail "cannot tell which package holds libmicrohttpd ('$mhd_so', config.h)"
grep -Eq "^Depends: (.*[ ,])?$mhd_pkg( |,|\$)" "$ctl/control" ||
	fail "evfdd does not depend on $mhd_pkg, which holds $mhd_so (loaded with dlopen): add it to debian/control"
ok "evfdd depends on $mhd_pkg, the package of $mhd_so that it loads with dlopen"

# ---- libevfd0: the library and its symbols --------------------------------------------------------------
lib=$(sed -n "s|^\(/usr/lib/$ma/libevfd\.so\.0\.[0-9.]*\)\$|\1|p" "$tmp/libevfd0.files")
[ -n "$lib" ] || fail "libevfd0 holds no /usr/lib/$ma/libevfd.so.0.*"
has libevfd0 "/usr/lib/$ma/libevfd.so.0"
[ -f "$tmp/x-libevfd0/DEBIAN/symbols" ] || fail "libevfd0's control has no symbols file"
[ -f "$tmp/x-libevfd0/DEBIAN/shlibs" ] || fail "libevfd0's control has no shlibs file"
if grep -q -e '\.la$' -e '\.a$' "$tmp/libevfd0.files" "$tmp/libevfd-dev.files"; then
	fail "a libtool archive or a static library is packaged"
fi
# "symbol@node" three times: the version script, the symbols file shipped, the library (objdump -T).
awk '/^[A-Z0-9_.]+ *\{/ { node = $1; print node "@" node }
	/^\t[a-z_]+;/ { s = $1; sub(/;/, "", s); print s "@" node }' "$srcdir/lib/libevfd.sym" | sort >"$tmp/sym.map"
awk '/^ / { print $1 }' "$tmp/x-libevfd0/DEBIAN/symbols" | sort >"$tmp/sym.deb"
objdump -T "$tmp/x-libevfd0$lib" | awk '/ g / && !/\*UND\*/ { print $NF "@" $(NF - 1) }' | sort >"$tmp/sym.so"
diff -u "$tmp/sym.map" "$tmp/sym.so" >"$tmp/sym.diff" ||
	{ cat "$tmp/sym.diff"; fail "the library's exports (+) differ from lib/libevfd.sym (-)"; }
diff -u "$tmp/sym.map" "$tmp/sym.deb" >"$tmp/sym.diff" || {
	cat "$tmp/sym.diff"
	fail "libevfd0's symbols file (+) differs from lib/libevfd.sym (-): add the new symbols to debian/libevfd0.symbols with the version that adds them"
}
head -n1 "$tmp/x-libevfd0/DEBIAN/symbols" | grep -x 'libevfd.so.0 libevfd0 #MINVER#' >/dev/null ||
	fail "libevfd0's symbols file does not start with 'libevfd.so.0 libevfd0 #MINVER#'"
ok "libevfd0: $(basename "$lib"), $(wc -l <"$tmp/sym.so") symbols and nodes (objdump -T) as lib/libevfd.sym and the symbols file give them"

# ---- libevfd-dev --------------------------------------------------------------------------------------------
has libevfd-dev /usr/include/evfd.h "/usr/lib/$ma/libevfd.so" "/usr/lib/$ma/pkgconfig/libevfd.pc"
grep -qx 'Depends: .*libevfd0 (= '"$version"').*' "$tmp/x-libevfd-dev/DEBIAN/control" ||
	fail "libevfd-dev does not depend on libevfd0 (= $version)"
ok "libevfd-dev holds evfd.h, libevfd.so, libevfd.pc and libevfd(3)"

# ---- lintian: no error, no warning -------------------------------------------------------------------------
lint_start=$SECONDS
changes=$tmp/evfdd_${version}_${arch}.changes
rc=0
lintian --fail-on error,warning --tag-display-limit 0 "$changes" "$dsc" >"$tmp/lintian.out" 2>&1 || rc=$?
grep -v '^running with root privileges' "$tmp/lintian.out" | sed 's/^/lintian: /' || true
if [ "$rc" -eq 2 ] || grep -q '^[EW]: ' "$tmp/lintian.out"; then
	fail "lintian reports errors or warnings (above): fix them, or override them in debian/*.lintian-overrides (debian/source/lintian-overrides) with the reason"
fi
[ "$rc" -eq 0 ] || fail "lintian failed to run (exit $rc, above)"
ok "lintian: no error and no warning on the binary and source packages ($((SECONDS - lint_start)) s)"

# ---- installed, upgraded in place, purged (root only) ------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
	echo "note: not root: the packages are not installed"
else
	can_install=1
	for p in evfdd libevfd0 libevfd-dev; do
		status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
		case $status in
		"" | *not-installed) ;;
		*)
			echo "note: $p is on this machine already ($status): the packages are not installed (it stays as it is)"
			can_install=0
			;;
		esac
	done
	if [ "$can_install" -eq 1 ]; then
		if [ -d /run/systemd/system ]; then
			echo "note: systemd runs here: installing starts evfdd.socket and evfdd-control.socket until the purge"
		else
			echo "note: systemd does not run here: the maintainer scripts must do without it"
		fi
		debs=("$tmp/libevfd0_${version}_${arch}.deb" "$tmp/libevfd-dev_${version}_${arch}.deb"
			"$tmp/evfdd_${version}_${arch}.deb")
		installed=1
		dpkg -i "${debs[@]}" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; fail "dpkg -i failed"; }
		for p in evfdd libevfd0 libevfd-dev; do
			dpkg-query -W -f='${Status}' "$p" | grep -x 'install ok installed' >/dev/null || fail "$p is not installed"
		done
		/usr/sbin/evfdd -V 2>&1 | grep -F "$version" >/dev/null || fail "evfdd -V does not say $version"
		out=$(/usr/sbin/evfdd -n -c /usr/share/doc/evfdd/examples/evfdd.conf 2>&1) ||
			{ echo "$out"; fail "the installed evfdd rejects the example configuration"; }
		if dpkg -S /etc/evfdd >/dev/null 2>&1; then fail "/etc/evfdd belongs to a package: $(dpkg -S /etc/evfdd)"; fi
		wants=/etc/systemd/system/sockets.target.wants
		for u in evfdd.socket evfdd-control.socket; do
			[ -L "$wants/$u" ] || fail "$u is not enabled ($wants/$u is missing)"
		done
		[ ! -e /etc/systemd/system/multi-user.target.wants/evfdd.service ] ||
			fail "evfdd.service is enabled: the sockets start it"
		# evfd_loop_current() is NULL outside a loop's thread.
		printf '#include <evfd.h>\nint main(void) { return evfd_loop_current() != NULL; }\n' >"$tmp/t.c"
		# shellcheck disable=SC2046 # pkg-config's words
		cc -o "$tmp/t" "$tmp/t.c" $(pkg-config --cflags --libs libevfd) >"$tmp/cc.log" 2>&1 ||
			{ cat "$tmp/cc.log"; fail "a program does not build against libevfd-dev"; }
		ldd "$tmp/t" | grep -E "libevfd\.so\.0 => (/usr)?/lib/$ma/libevfd\.so\.0 " >/dev/null ||
			{ ldd "$tmp/t"; fail "the program does not link the installed libevfd.so.0"; }
		"$tmp/t" || fail "the program built against libevfd-dev does not run"
		# The same packages again: the maintainer scripts' upgrade path ($2 set).
		dpkg -i "${debs[@]}" >"$tmp/install.log" 2>&1 ||
			{ cat "$tmp/install.log"; fail "dpkg -i over the installed packages failed"; }
		[ -L "$wants/evfdd.socket" ] || fail "evfdd.socket is no longer enabled after an upgrade"
		installed=0
		dpkg --purge evfdd libevfd-dev libevfd0 >"$tmp/purge.log" 2>&1 ||
			{ cat "$tmp/purge.log"; fail "dpkg --purge failed"; }
		for p in evfdd libevfd0 libevfd-dev; do
			status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
			case $status in "" | *not-installed) ;; *) fail "$p is still on the machine ($status)" ;; esac
		done
		for f in /usr/sbin/evfdd "$wants/evfdd.socket" "$wants/evfdd-control.socket" /lib/systemd/system/evfdd.service; do
			if [ -e "$f" ] || [ -L "$f" ]; then fail "$f is left after dpkg --purge"; fi
		done
		ok "installed (dpkg -i), checked, upgraded in place and purged"
	fi
fi

ok "test-package: $((SECONDS - start)) s"
