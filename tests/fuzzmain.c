/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The fuzz targets' corpus runner (fuzzmain.h). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "fuzzmain.h"

/* Run the target over one file; returns 0, or -1 when it cannot be read. */
static int run_file(const char *name, const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;
	int rc = -1;

	if (!f) {
		fprintf(stderr, "fuzz-%s: %s: %s\n", name, path, strerror(errno));
		return -1;
	}
	do {
		if (len == cap) {
			char *nbuf = realloc(buf, cap = cap ? 2 * cap : 65536);

			if (!nbuf)
				goto out;
			buf = nbuf;
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	if (ferror(f))
		goto out;
	LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "fuzz-%s: %s: cannot read\n", name, path);
	free(buf);
	fclose(f);
	return rc;
}

/* Every regular file in @dir, or @dir itself when it is a file; returns the number run, -1 on error. */
static int run_path(const char *name, const char *dir)
{
	struct dirent *de;
	struct stat st;
	char p[4096];
	int n = 0;
	DIR *d;

	if (stat(dir, &st) == 0 && S_ISREG(st.st_mode))
		return run_file(name, dir) == 0 ? 1 : -1;
	d = opendir(dir);
	if (!d) {
		fprintf(stderr, "fuzz-%s: %s: %s\n", name, dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		if (run_file(name, p) != 0) {
			n = -1;
			break;
		}
		n++;
	}
	closedir(d);
	return n;
}

int fuzz_corpus_run(const char *name, int argc, char **argv)
{
	const char *top = getenv("top_srcdir");
	char def[4096];
	int total = 0, n;

	snprintf(def, sizeof(def), "%s/tests/fuzz-corpus/%s", top ? top : ".", name);
	if (argc < 2) {
		n = run_path(name, def);
		if (n <= 0) {
			fprintf(stderr, "fuzz-%s: no corpus in %s\n", name, def);
			return -1;
		}
		total = n;
	}
	for (int i = 1; i < argc; i++) {
		n = run_path(name, argv[i]);
		if (n < 0)
			return -1;
		total += n;
	}
	return total;
}
