/* The hook between the engine (conn.c) and the cache (issue 4). Internal.
 *
 * conn.c calls dduct__cache_handle() for a routed request when all of these hold:
 *   DDUCT_CACHE_HOOK is 1, the proxy has a store and a filter, the method is GET or HEAD, the
 *   request has no body, and the filter matches the path without its query.
 * Return 1 to take the request: the cache then answers through conn.h's client-response API
 * (dduct__conn_take first, then send_head/send_body/send_end or abort) and may fetch from the
 * origin through upstream.h (p->up). Return 0 to let the engine forward it as usual.
 * The cache engineer owns this file: define the function in cache.c and set DDUCT_CACHE_HOOK
 * to 1 in the same commit.
 */
#ifndef DDUCT_CACHE_H
#define DDUCT_CACHE_H

#include "conn.h"
#include "proxy.h"

#define DDUCT_CACHE_HOOK 1

int dduct__cache_handle(struct dduct_proxy *p, struct dduct_conn *c,
                        const struct dduct_request *req);

/* The origin answered resp to req, forwarded uncached: after a successful (2xx/3xx) unsafe
 * request (any method but GET, HEAD, OPTIONS, TRACE), the entry of its URL is removed, and those
 * of a Location and Content-Location on the same origin (RFC 9111 4.4). No-op otherwise. */
void dduct__cache_unsafe_done(struct dduct_proxy *p, const struct dduct_request *req,
                              const struct dduct_http_head *resp);

/* Abort p's running fills (origin downloads that outlive their first client): call when the
 * shutdown grace period ends, before waiting for the upstream connections to close. Their
 * entries are discarded, never half-stored. */
void dduct__cache_shutdown(struct dduct_proxy *p);

/* Call cb for each of p's fills in flight (for /stats). */
void dduct__cache_each_fill(const struct dduct_proxy *p,
                            void (*cb)(void *arg, const struct dduct__fill_info *fi), void *arg);

#endif
