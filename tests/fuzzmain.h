/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The corpus runner every fuzz target has when it is built without libFuzzer (make check): it feeds each file
 * of the target's corpus to LLVMFuzzerTestOneInput, so the corpus is a regression test of its own.
 */
#ifndef EVFDD_FUZZMAIN_H
#define EVFDD_FUZZMAIN_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * fuzz_corpus_run - run the target over every regular file of $top_srcdir/tests/fuzz-corpus/@name, or, when
 * arguments are given, over the files and directories they name
 *
 * Returns the number of inputs run, or -1 (said on stderr, with "fuzz-@name: " first) when one cannot be read
 * or the default corpus is empty.
 */
int fuzz_corpus_run(const char *name, int argc, char **argv);

#endif
