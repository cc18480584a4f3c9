/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What evfdd uses of io_uring beyond what it needs to run at all (Linux 5.19): each feature is probed once at
 * start-up, each has a fallback that works everywhere, and each can be switched off for testing that fallback
 * with EVFDD_DISABLE=name[,name...] in the environment (evfdd(8), ENVIRONMENT). `evfdctl status` lists the
 * ones in use.
 */
#ifndef EVFDD_IOFEATURES_H
#define EVFDD_IOFEATURES_H

#include <stdbool.h>
#include <stddef.h>

/* X(ID, name, what it is and what the fallback does) */
#define EVFDD_FEATURES(X)                                                                                 \
	X(COOP_TASKRUN, coop_taskrun,                                                                    \
	  "IORING_SETUP_COOP_TASKRUN (Linux 5.19): no interrupt per completion; without it the kernel "  \
	  "interrupts busy loop threads")                                                                \
	X(RECV_BUNDLE, recv_bundle,                                                                      \
	  "IORING_RECVSEND_BUNDLE (Linux 6.10): one receive takes up to 1 MiB over several buffers; "    \
	  "without it, one 64 KiB buffer per receive")

enum evfdd_feature {
#define EVFDD_FEATURE_ENUM(id, name, what) EVFDD_FEATURE_##id,
	EVFDD_FEATURES(EVFDD_FEATURE_ENUM)
#undef EVFDD_FEATURE_ENUM
	EVFDD_FEATURE_COUNT
};

struct evfdd_features {
	bool on[EVFDD_FEATURE_COUNT];
};

/*
 * evfdd_features_probe - what the running kernel offers, less what EVFDD_DISABLE switches off
 * @err: on -EINVAL, names the unknown feature in EVFDD_DISABLE and lists the known ones
 *
 * Probes with a ring of its own (created and destroyed here). Returns 0, -EINVAL, or the error of
 * io_uring_setup when no ring can be made at all (the caller reports it when it makes its own).
 */
int evfdd_features_probe(struct evfdd_features *f, char *err, size_t errlen);

/* "coop_taskrun", ... */
const char *evfdd_feature_name(enum evfdd_feature feature);

#endif
