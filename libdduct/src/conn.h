/* One client connection: read a request head, route it (tunnel, intercept, forward, cache,
 * error), respond, keep alive. Also the client-response API a request handler (the forward path
 * and the cache) uses to answer.
 *
 * A handler that takes a request (see cache.h) answers through these calls, in this order:
 *   dduct__conn_take(c, &handler, arg)        once, before anything else
 *   dduct__conn_send_head(c, status, reason, headers, content_length)
 *   dduct__conn_send_body(c, data, len, cb, arg) any number of times (bytes are copied)
 *   dduct__conn_send_end(c)                    the response is complete; the connection moves
 *                                              on to the next request (keep-alive) or closes
 * or, for a response whose body is already at hand, the three at once (one write: for TLS one
 * record when it fits, one syscall):
 *   dduct__conn_send_whole(c, status, reason, headers, content_length, body, len)
 * or, at any point, dduct__conn_abort(c): the connection is closed at once, so a client never
 * takes a short body for a whole one. Before send_head, dduct__conn_decline(c) hands the
 * request back to the normal forward path instead.
 * Backpressure: after a send_body, if dduct__conn_queued(c) > DDUCT_STREAM_HIGH_WATER, stop
 * producing until handler.on_drain fires (queue below DDUCT_STREAM_LOW_WATER), or until the
 * per-write callback says enough was written.
 * handler.on_abort fires if the client connection dies while the handler owns it; after it (and
 * after send_end/abort) the handler must not touch c again.
 */
#ifndef DDUCT_CONN_H
#define DDUCT_CONN_H

#include <stdint.h>

#include "http.h"
#include "stream.h"

struct dduct_proxy;
struct dduct_conn;

/* The current request, as routed. Valid from the route until the response ends. */
struct dduct_request {
  const struct dduct_http_head *head; /* as received (method, target, headers) */
  const char *method;
  int https;             /* origin scheme */
  const char *host;      /* origin host (no brackets) */
  uint16_t port;         /* origin port */
  const char *path;      /* origin-form target "/path?query" */
  size_t path_len_no_query;
  int64_t content_length; /* request body length, -1 if absent */
  int chunked;            /* request body is chunked */
  int is_head;            /* HEAD: a response carries no body */
};

struct dduct_conn_handler {
  void (*on_drain)(void *arg); /* may be NULL */
  void (*on_abort)(void *arg); /* may be NULL */
};

typedef void (*dduct_conn_write_cb)(void *arg, int status);

/* Accept a connection from a listener of kind (enum dduct_listen_kind; called by proxy). */
void dduct__conn_accept(struct dduct_proxy *p, uv_stream_t *server, int kind);
/* Shutdown: idle connections close now, busy ones after their current response. */
void dduct__conn_drain(struct dduct_conn *c);
/* Force-close (end of the grace period). */
void dduct__conn_kill(struct dduct_conn *c);
struct dduct_conn *dduct__conn_next(struct dduct_conn *c);

void dduct__conn_take(struct dduct_conn *c, const struct dduct_conn_handler *h, void *arg);
void dduct__conn_decline(struct dduct_conn *c);
/* Give the connection back with an origin failure err (a negative error of a fetch) to answer as
 * the forward route would: 502, 504 for a timeout, 508 for a loop, why in the body. */
void dduct__conn_fail(struct dduct_conn *c, int err, const char *why);
/* headers: end-to-end headers (hop-by-hop and framing headers are replaced); content_length
 * -1 means unknown (sent chunked, or close-delimited to an HTTP/1.0 client). For HEAD requests
 * and 204/304 no body follows whatever content_length says; send_end right away. */
int dduct__conn_send_head(struct dduct_conn *c, int status, const char *reason,
                          const struct dduct_http_head *headers, int64_t content_length);
int dduct__conn_send_body(struct dduct_conn *c, const char *data, size_t len,
                          dduct_conn_write_cb cb, void *arg);
int dduct__conn_send_end(struct dduct_conn *c);
/* send_head + send_body + send_end in one write. When a body goes out (not HEAD, 204, 304 or
 * 1xx) content_length must be len (DDUCT_EINVAL otherwise, nothing sent); without one, body is
 * ignored and content_length is what the head announces (-1: none). On 0 the response is
 * complete: the handler must not touch c again (as after send_end). body is copied. */
int dduct__conn_send_whole(struct dduct_conn *c, int status, const char *reason,
                           const struct dduct_http_head *headers, int64_t content_length,
                           const char *body, size_t len);
void dduct__conn_abort(struct dduct_conn *c);
size_t dduct__conn_queued(const struct dduct_conn *c);
const struct dduct_request *dduct__conn_request(const struct dduct_conn *c);
struct dduct_proxy *dduct__conn_proxy(const struct dduct_conn *c);
/* A short description of the client ("127.0.0.1:5555") for logs. */
const char *dduct__conn_peer(const struct dduct_conn *c);
/* The current request's facts for metrics and the access log (stats.h): handlers set the cache
 * status and the origin's answer there. */
struct dduct__txn *dduct__conn_txn(struct dduct_conn *c);

#endif
