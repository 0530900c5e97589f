/* The cache route (cache.c; its entry point, dduct__cache_route, is in route.h): GET and HEAD
 * requests the filter matches, answered from the store, filled through upstream.h. Internal. */
#ifndef DDUCT_CACHE_H
#define DDUCT_CACHE_H

#include <uv.h>

#include "dduct.h"

struct dduct_request;
struct dduct_http_head;
struct dduct__fill_info;
struct dduct__query_rules;
struct dduct__stats;
struct dduct_parents;
struct dduct_upstream;

/* What the cache works with, all owned by the proxy and outliving the cache. */
struct dduct_cache_config {
  uv_loop_t *loop;
  struct dduct_store *store;     /* NULL: nothing is cacheable */
  struct dduct_filter *filter;   /* NULL: nothing is cacheable */
  struct dduct_upstream *up;     /* fills and revalidations fetch through it */
  struct dduct__stats *metrics;
  struct dduct_parents *parents; /* the parent tier (n == 0: none) */
  const struct dduct__query_rules *query_rules;
  enum dduct_revalidate revalidate;
  int stale_if_error;
  int share_private; /* 1: private entries are served like any other (docs/cache.md) */
  int (*cacheable_cb)(void *user_data, const char *method, int https, const char *host,
                      uint16_t port, const char *path);
  void *cacheable_data;
};

/* The cache, one per proxy: its configuration and its running fills (jobs). Loop-only. */
struct dduct_cache {
  struct dduct_cache_config cfg;
  struct job *jobs; /* fills in flight (cache.c) */
};

int dduct__cache_new(const struct dduct_cache_config *cfg, struct dduct_cache **out);
/* After dduct__cache_shutdown. NULL-safe. */
void dduct__cache_free(struct dduct_cache *k);

/* The origin answered resp to req, forwarded uncached: after a successful (2xx/3xx) unsafe
 * request (any method but GET, HEAD, OPTIONS, TRACE), the entry of its URL is removed, and those
 * of a Location and Content-Location on the same origin (RFC 9111 4.4). No-op otherwise. */
void dduct__cache_unsafe_done(struct dduct_cache *k, const struct dduct_request *req,
                              const struct dduct_http_head *resp);

/* Abort the running fills (origin downloads that outlive their first client): call when the
 * shutdown grace period ends, before waiting for the upstream connections to close. Their
 * entries are discarded, never half-stored. */
void dduct__cache_shutdown(struct dduct_cache *k);

/* Call cb for each fill in flight (for /stats). */
void dduct__cache_each_fill(const struct dduct_cache *k,
                            void (*cb)(void *arg, const struct dduct__fill_info *fi), void *arg);

#endif
