#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The library demo the README points to: two seconds of rings moving among loops while traffic flows; it
# exits 0 only if every message arrived once and in order and every client connection was accepted.
set -eu
exec "${top_builddir:-.}/examples/evfd-demo" -t 2
