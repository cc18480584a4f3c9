/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * sni_route's names and which route a server name picks: checked once when the configuration is loaded,
 * matched for every TLS connection against the name evfdd_tls_hello_sni found. Pure functions: no
 * allocation, no logging, safe from any thread.
 */
#ifndef EVFDD_SNI_H
#define EVFDD_SNI_H

#include <stddef.h>

/* Longest route name, "*." included: the longest name a ClientHello may carry (tlshello.h). */
#define EVFDD_SNI_NAME_MAX 255

/*
 * evfdd_sni_name_check - whether @name can be a route's name
 *
 * Either an exact name ("a.example.com") or a wildcard ("*.example.com", which matches any depth below
 * example.com but not example.com itself): lowercase labels of [a-z0-9_-], 1-63 bytes each, separated by
 * single dots, with no leading or trailing dot, at most EVFDD_SNI_NAME_MAX bytes in all; "*" only as the
 * whole first label of a wildcard, which needs at least one label after it (a bare "*" is sni_default's
 * job). Returns 0, or -EINVAL with one line in @err (@errcap bytes, may be 0) saying what is wrong, for a
 * configuration error.
 */
int evfdd_sni_name_check(const char *name, char *err, size_t errcap);

/*
 * evfdd_sni_match - the index in @names (@n route names, each passing evfdd_sni_name_check) of the route
 * that matches @host (lowercase, as evfdd_tls_hello_sni gives it) most specifically
 *
 * An exact name equal to @host first; otherwise the wildcard with the longest suffix that @host ends with
 * (after at least one label of its own); among equals, the first. Returns -1 when none matches, and for ""
 * (a hello without a name: sni_default's case). NULL entries match nothing.
 */
int evfdd_sni_match(const char *const *names, size_t n, const char *host);

#endif
