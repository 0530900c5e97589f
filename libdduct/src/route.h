/* The route table: every request, once its head is read and its origin known, is offered to the
 * proxy's routes in table order until one takes it (proxy.c, routes_init, builds the table).
 * A route is one handler in its own file; it answers through conn.h only:
 *   intercept.c  CONNECT to a host the CA covers: push a TLS layer, read the requests inside
 *   tunnel.c     any other CONNECT: a blind byte tunnel to the origin
 *   cache.c      GET/HEAD the cache filter matches (it decides cacheability alone)
 *   forward.c    everything else, streamed both ways through the upstream pool
 * Local routes (answered by the proxy itself: admin.c's metrics, stats, health, CA download) go
 * first.
 * A handler that declines after taking (dduct__conn_decline) hands the request on to the entry
 * after its own. Internal. */
#ifndef DDUCT_ROUTE_H
#define DDUCT_ROUTE_H

struct dduct_conn;
struct dduct_request;

/* 1: the handler took the request (it answers through conn.h, now or later); 0: not its
 * request, the next route is asked. ctx is the route's own (the proxy; the cache object for
 * the cache route). */
typedef int (*dduct_route_fn)(void *ctx, struct dduct_conn *c, const struct dduct_request *req);

struct dduct__route {
  const char *name;
  dduct_route_fn handle;
  void *ctx;
};

#define DDUCT_ROUTES_MAX 16

int dduct__admin_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req);
int dduct__intercept_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req);
int dduct__tunnel_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req);
int dduct__cache_route(void *cache, struct dduct_conn *c, const struct dduct_request *req);
int dduct__forward_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req);

#endif
