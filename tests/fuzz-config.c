/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for evfdd's configuration parser: arbitrary bytes (NUL bytes, overlong lines, broken UTF-8
 * included) must give either a configuration or error messages, never a crash, a leak or a hang, and
 * the result must be consistent (checked below; a violation aborts, which the fuzzer reports).
 *
 * The bytes go to evfdd_config_load_buffer, the code under evfdd_config_load_string and evfdd_config_load,
 * with EVFDD_CONFIG_NO_RESOLVE: the same parse, except that a backend name is reported instead of
 * looked up, so no input can make the fuzzer send DNS queries.
 *
 * Under libFuzzer (clang), from the top of a configured tree:
 *	clang -g -O1 -fsanitize=fuzzer,address,undefined -DEVFDD_FUZZING -include config.h \
 *		tests/fuzz-config.c daemon/config.c daemon/log.c daemon/util.c -linih -o /tmp/fuzz-config
 *	mkdir -p /tmp/fuzz-work
 *	/tmp/fuzz-config -max_total_time=60 -max_len=8192 /tmp/fuzz-work tests/fuzz-corpus/config
 * (new inputs go to /tmp/fuzz-work; copy the interesting ones into tests/fuzz-corpus/config).
 *
 * Without EVFDD_FUZZING this file has its own main, which runs the target once over every file in
 * tests/fuzz-corpus/config (or the files and directories given as arguments): `make check` does that.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "../daemon/config.h"
#include "fuzzmain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                                                \
	do {                                                                                             \
		if (!(cond)) {                                                                           \
			fprintf(stderr, "fuzz-config: %s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                                  \
			abort();                                                                         \
		}                                                                                        \
	} while (0)

static void check_config(const struct evfdd_config *cfg)
{
	FUZZ_ASSERT(cfg->workers >= 1 && cfg->workers <= EVFDD_CONFIG_MAX_WORKERS);
	FUZZ_ASSERT(cfg->rings >= 1 && cfg->rings <= EVFDD_CONFIG_MAX_RINGS);
	FUZZ_ASSERT(cfg->nservices >= 1 && cfg->nservices <= EVFDD_CONFIG_MAX_SERVICES);
	for (size_t i = 0; i < cfg->nservices; i++) {
		const struct evfdd_service *s = &cfg->services[i];
		size_t n = strlen(s->name);

		FUZZ_ASSERT(n >= 1 && n <= EVFDD_CONFIG_NAME_MAX && strcmp(s->name, "control") != 0);
		FUZZ_ASSERT(evfdd_config_service(cfg, s->name) == s);	/* names are unique */
		FUZZ_ASSERT(s->nbackends >= 1 && s->forward_text && s->backends[0].ep.text);
		FUZZ_ASSERT(s->backends[0].ep.kind == EVFDD_ENDPOINT_ECHO ? s->backends[0].ep.naddrs == 0
								   : s->backends[0].ep.naddrs >= 1);
		FUZZ_ASSERT(s->listen.kind != EVFDD_ENDPOINT_ECHO);
		FUZZ_ASSERT(s->listen.kind == EVFDD_ENDPOINT_NONE ? s->listen.naddrs == 0
								 : s->listen.naddrs == 1);
		FUZZ_ASSERT(s->max_connections >= 1 && s->backlog >= 1 && s->connect_timeout_ms >= 1);
		FUZZ_ASSERT(s->socket_mode <= 0777);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FILE *devnull;
	struct evfdd_config_errors errs;
	struct evfdd_config *cfg;
	int rc;

	if (!devnull)
		devnull = fopen("/dev/null", "w");
	rc = evfdd_config_load_buffer((const char *)data, size, "fuzz.conf", EVFDD_CONFIG_NO_RESOLVE, &cfg,
				      &errs);
	FUZZ_ASSERT(rc == 0 || rc == -EINVAL);
	if (rc == 0) {
		FUZZ_ASSERT(cfg && errs.count == 0 && errs.omitted == 0);
		check_config(cfg);
	} else {
		FUZZ_ASSERT(!cfg && errs.count >= 1 && errs.count <= EVFDD_CONFIG_MAX_ERRORS);
	}
	for (size_t i = 0; i < errs.count; i++) {
		const char *m = errs.list[i].message;

		/* one line of printable text, starting with the file name */
		FUZZ_ASSERT(strncmp(m, "fuzz.conf", 9) == 0 && strcmp(errs.list[i].file, "fuzz.conf") == 0);
		for (; *m; m++)
			FUZZ_ASSERT((unsigned char)*m >= 0x20 && (unsigned char)*m < 0x7f);
		FUZZ_ASSERT(i == 0 || errs.list[i - 1].line <= errs.list[i].line || errs.list[i].line == 0);
	}
	if (devnull)
		evfdd_config_errors_print(devnull, &errs);
	evfdd_config_free(cfg);
	evfdd_config_errors_free(&errs);
	return 0;
}

#ifndef EVFDD_FUZZING
int main(int argc, char **argv)
{
	int total = fuzz_corpus_run("config", argc, argv);

	if (total < 0)
		return 1;
	printf("fuzz-config: %d inputs, no crash\n", total);
	return 0;
}
#endif
