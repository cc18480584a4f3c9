/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* io_uring features probed at start-up; see iofeatures.h. */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "iofeatures.h"

/* The kernel's names (Linux 6.10), missing from liburing 2.3's headers. */
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif

static const char *const feature_names[EVFDD_FEATURE_COUNT] = {
#define FEATURE_NAME(id, name, what) [EVFDD_FEATURE_##id] = #name,
	EVFDD_FEATURES(FEATURE_NAME)
#undef FEATURE_NAME
};

const char *evfdd_feature_name(enum evfdd_feature feature)
{
	return feature < EVFDD_FEATURE_COUNT ? feature_names[feature] : "?";
}

/* Switch off what EVFDD_DISABLE names ("all" for every feature). */
static int features_disable(struct evfdd_features *f, char *err, size_t errlen)
{
	const char *env = getenv("EVFDD_DISABLE"), *p;
	unsigned i;

	for (p = env; p && *p;) {
		size_t n = strcspn(p, ", ");

		if (n == 3 && !strncmp(p, "all", 3)) {
			memset(f->on, 0, sizeof(f->on));
		} else if (n) {
			for (i = 0; i < EVFDD_FEATURE_COUNT; i++)
				if (strlen(feature_names[i]) == n && !strncmp(p, feature_names[i], n))
					break;
			if (i == EVFDD_FEATURE_COUNT) {
				size_t len = (size_t)snprintf(err, errlen, "EVFDD_DISABLE names \"%.*s\", which is no "
							      "feature of evfdd's; known: all", (int)n, p);

				for (i = 0; i < EVFDD_FEATURE_COUNT && len < errlen; i++)
					len += (size_t)snprintf(err + len, errlen - len, ", %s", feature_names[i]);
				return -EINVAL;
			}
			f->on[i] = false;
		}
		p += n;
		p += strspn(p, ", ");
	}
	return 0;
}

int evfdd_features_probe(struct evfdd_features *f, char *err, size_t errlen)
{
	struct io_uring_params ip = { .flags = IORING_SETUP_COOP_TASKRUN };
	struct io_uring ring;
	int r;

	memset(f, 0, sizeof(*f));
	if (errlen)
		err[0] = 0;
	r = io_uring_queue_init_params(2, &ring, &ip);
	if (r == -EINVAL) {
		/* Older than 5.19: no COOP_TASKRUN, and none of the later features either. */
		memset(&ip, 0, sizeof(ip));
		r = io_uring_queue_init_params(2, &ring, &ip);
	} else if (r == 0) {
		f->on[EVFDD_FEATURE_COOP_TASKRUN] = true;
	}
	if (r < 0)
		return r;
	f->on[EVFDD_FEATURE_RECV_BUNDLE] = ip.features & IORING_FEAT_RECVSEND_BUNDLE;
	io_uring_queue_exit(&ring);
	return features_disable(f, err, errlen);
}
