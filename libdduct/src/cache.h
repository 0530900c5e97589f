/* The cache route (cache.c; its entry point, dduct__cache_route, is in route.h): GET and HEAD
 * requests the filter matches, answered from the store, filled through upstream.h. Internal. */
#ifndef DDUCT_CACHE_H
#define DDUCT_CACHE_H

struct dduct_proxy;
struct dduct_request;
struct dduct_http_head;
struct dduct__fill_info;

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
