/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Listening sockets: taken from systemd socket activation by FileDescriptorName=, or bound by evfdd. */
#ifndef EVFDD_LISTEN_H
#define EVFDD_LISTEN_H

#include "config.h"

/* One listening socket per service of @cfg, in service order, in @fds (nservices entries; -1 where none).
 * @control_fd receives an activated fd named "control", or -1. Returns 0, or -1 after logging every problem
 * (an activated fd naming no service, a service with neither an activated socket nor a listen address, a
 * bind failure), with every fd it opened closed again. Activated fds not used are closed too. */
int evfdd_listen_setup(const struct evfdd_config *cfg, int *fds, int *control_fd);

#endif
