#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The installed library exports exactly the functions the public header declares, all under the version
# node LIBEVFD_0, and nothing internal.
set -eu
so="${top_builddir:-.}/lib/.libs/libevfd.so"
hdr="${top_srcdir:-.}/lib/evfd.h"
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
unversioned=$(nm -D --defined-only "$so" | awk '$2 == "T" && $3 !~ /@@LIBEVFD_0$/ { print $3 }')
[ -z "$unversioned" ] || { echo "FAIL: symbols outside LIBEVFD_0: $unversioned"; exit 1; }
echo "ok $(printf '%s\n' "$exported" | wc -l) functions exported, all in LIBEVFD_0"
