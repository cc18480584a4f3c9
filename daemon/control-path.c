/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Where the control socket is when nothing says otherwise; evfdd and evfdctl must agree on it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "control.h"

char *evfdd_control_default_path(void)
{
	const char *rt = getenv("RUNTIME_DIRECTORY"), *xdg = getenv("XDG_RUNTIME_DIR");
	char *path = NULL;
	int n;

	/* systemd's RuntimeDirectory= (RuntimeDirectory=evfdd in the units: /run/evfdd); with several
	 * directories the variable lists them separated by colons and the first is ours. */
	if (rt && rt[0] == '/')
		n = asprintf(&path, "%.*s/control", (int)strcspn(rt, ":"), rt);
	else if (geteuid() == 0)
		n = asprintf(&path, "/run/evfdd/control");
	else if (xdg && xdg[0] == '/')
		n = asprintf(&path, "%s/evfdd/control", xdg);
	else
		n = asprintf(&path, "/tmp/evfdd-%u/control", (unsigned)geteuid());
	return n < 0 ? NULL : path;
}
