#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The installed library exports exactly the functions the public header declares, each under the version
# node lib/libevfd.sym gives it (a node added later inherits the earlier ones, as liburing's map does), and
# nothing internal.
set -eu
so="${top_builddir:-.}/lib/.libs/libevfd.so"
hdr="${top_srcdir:-.}/lib/evfd.h"
map="${top_srcdir:-.}/lib/libevfd.sym"
[ -f "$so" ] || { echo "FAIL: $so not built"; exit 1; }
command -v nm >/dev/null || { echo "SKIP: nm (binutils) not installed"; exit 77; }

exported=$(nm -D --defined-only "$so" | awk '$2 == "T" { print $3 }' | sed 's/@.*//' | sort)
declared=$(sed -n 's/^[a-z].*[ *]\(evfd_[a-z_]*\)(.*/\1/p' "$hdr" | sort -u)
if [ "$exported" != "$declared" ]; then
	echo "FAIL: exported and declared functions differ (< exported, > declared):"
	printf '%s\n' "$exported" > exported.tmp.$$
	printf '%s\n' "$declared" > declared.tmp.$$
	diff exported.tmp.$$ declared.tmp.$$ || true
	rm -f exported.tmp.$$ declared.tmp.$$
	exit 1
fi
# "symbol node" as the map says, and as the library carries it.
want=$(awk '/^[A-Z0-9_.]+ *\{/ { node = $1 } /^\t[a-z_]+;/ { s = $1; sub(/;/, "", s); print s, node }' "$map" | sort)
got=$(nm -D --defined-only "$so" | awk '$2 == "T" { split($3, a, "@@"); print a[1], a[2] }' | sort)
if [ "$want" != "$got" ]; then
	echo "FAIL: version nodes differ from $map (< the map, > the library):"
	printf '%s\n' "$want" > want.tmp.$$
	printf '%s\n' "$got" > got.tmp.$$
	diff want.tmp.$$ got.tmp.$$ || true
	rm -f want.tmp.$$ got.tmp.$$
	exit 1
fi
nodes=$(printf '%s\n' "$got" | awk '{ print $2 }' | sort -u | tr '\n' ' ')
echo "ok $(printf '%s\n' "$exported" | wc -l) functions exported, each in its version node ($nodes)"
