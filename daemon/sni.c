/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* sni_route names: checking and matching (sni.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include "sni.h"

#define LABEL_MAX 63

static void set_err(char *err, size_t errcap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errcap, const char *fmt, ...)
{
	va_list ap;

	if (!err || errcap == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errcap, fmt, ap);
	va_end(ap);
}

int evfdd_sni_name_check(const char *name, char *err, size_t errcap)
{
	const char *p, *label;
	size_t len;

	if (!name || !*name) {
		set_err(err, errcap, "an empty server name; write a name such as www.example.com or *.example.com");
		return -EINVAL;
	}
	len = strlen(name);
	/* the messages quote the name: first make sure it is printable */
	for (p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) {
			set_err(err, errcap, "a server name has only a-z, 0-9, '-', '_' and dots, not byte 0x%02x",
				(unsigned char)*p);
			return -EINVAL;
		}
	if (len > EVFDD_SNI_NAME_MAX) {
		set_err(err, errcap, "\"%.40s...\" is %zu bytes long; a server name has at most %d", name, len,
			EVFDD_SNI_NAME_MAX);
		return -EINVAL;
	}
	p = name;
	if (p[0] == '*') {
		if (p[1] == '\0') {
			set_err(err, errcap, "\"*\" alone is not a route; use sni_default for every other name");
			return -EINVAL;
		}
		if (p[1] != '.' || p[2] == '\0') {
			set_err(err, errcap, "\"%s\": a wildcard is \"*.\" followed by a name, as in *.example.com",
				name);
			return -EINVAL;
		}
		p += 2;
	}
	for (label = p;; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '.' || c == '\0') {
			if (p == label) {
				set_err(err, errcap, "\"%s\" has an empty label (a leading, trailing or double dot)",
					name);
				return -EINVAL;
			}
			if (p - label > LABEL_MAX) {
				set_err(err, errcap, "\"%s\" has a label longer than %d bytes", name, LABEL_MAX);
				return -EINVAL;
			}
			if (c == '\0')
				return 0;
			label = p + 1;
		} else if (c >= 'A' && c <= 'Z') {
			set_err(err, errcap, "\"%s\" has uppercase letters; write it in lowercase (names are matched "
				"case-insensitively, as lowercase)", name);
			return -EINVAL;
		} else if (c == '*') {
			set_err(err, errcap, "\"%s\": '*' may only be the whole first label, as in *.example.com",
				name);
			return -EINVAL;
		} else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
			set_err(err, errcap, "\"%s\" has '%c'; a server name has only a-z, 0-9, '-', '_' and dots",
				name, c);
			return -EINVAL;
		}
	}
}

int evfdd_sni_match(const char *const *names, size_t n, const char *host)
{
	size_t hlen = host ? strlen(host) : 0, best_len = 0;
	int best = -1;

	if (hlen == 0)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (names[i] && names[i][0] != '*' && strcmp(names[i], host) == 0)
			return (int)i;
	for (size_t i = 0; i < n; i++) {
		const char *suffix;
		size_t slen;

		if (!names[i] || names[i][0] != '*' || names[i][1] != '.')
			continue;
		suffix = names[i] + 1;		/* ".example.com" */
		slen = strlen(suffix);
		/* hlen > slen: at least one byte of label before the dot, so example.com itself never matches */
		if (hlen > slen && memcmp(host + hlen - slen, suffix, slen) == 0 && (best < 0 || slen > best_len)) {
			best = (int)i;
			best_len = slen;
		}
	}
	return best;
}
