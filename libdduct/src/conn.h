/* One client connection: read a request head, hand it to the proxy's route table (route.h),
 * frame the handler's response, keep alive. conn.c owns reading, pipelining, keep-alive,
 * timeouts and framing; the handlers (forward.c, cache.c, tunnel.c, intercept.c, local routes)
 * talk to it only through this file.
 *
 * A handler that takes a request answers through these calls, in this order:
 *   dduct__conn_take(c, &handler, arg)        once, before anything else
 *   dduct__conn_send_head(c, status, reason, headers, content_length)
 *   dduct__conn_send_body(c, data, len, cb, arg) any number of times (bytes are copied)
 *   dduct__conn_send_end(c)                    the response is complete; the connection moves
 *                                              on to the next request (keep-alive) or closes
 * or, for a response whose body is already at hand, the three at once (one write: for TLS one
 * record when it fits, one syscall):
 *   dduct__conn_send_whole(c, status, reason, headers, content_length, body, len)
 * or dduct__conn_send_error(c, status, fmt, ...): a one-line text/plain answer (and a WARN log);
 * or, at any point, dduct__conn_abort(c): the connection is closed at once, so a client never
 * takes a short body for a whole one. Before send_head, dduct__conn_decline(c) hands the
 * request on to the next route in the table (in the end, forward).
 * Backpressure: after a send_body, if dduct__conn_queued(c) > DDUCT_STREAM_HIGH_WATER, stop
 * producing until handler.on_drain fires (queue below DDUCT_STREAM_LOW_WATER), or until the
 * per-write callback says enough was written.
 * A request body (forward): dduct__conn_read_body(c) asks for it; it arrives through
 * handler.on_body (return nonzero to hold the rest until dduct__conn_body_resume) and ends with
 * handler.on_body_end.
 * handler.on_abort fires if the connection dies while the handler owns it (or the request body
 * turns out malformed before an answer); after it (and after send_end/send_whole/send_error/
 * abort) the handler must not touch c again.
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
  int connect;            /* CONNECT host:port (host and port set, path "") */
};

struct dduct_conn_handler { /* every member may be NULL */
  void (*on_drain)(void *arg);
  void (*on_abort)(void *arg);
  int (*on_body)(void *arg, const char *data, size_t len); /* borrowed bytes; nonzero: hold */
  void (*on_body_end)(void *arg);
};

typedef void (*dduct_conn_write_cb)(void *arg, int status);

/* Accept a connection from a listener of kind (enum dduct_listen_kind; called by proxy). */
void dduct__conn_accept(struct dduct_proxy *p, uv_stream_t *server, int kind);
/* Shutdown: idle connections close now, busy ones after their current response. */
void dduct__conn_drain(struct dduct_conn *c);
/* Force-close (end of the grace period). */
void dduct__conn_kill(struct dduct_conn *c);

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
void dduct__conn_send_error(struct dduct_conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void dduct__conn_abort(struct dduct_conn *c);
size_t dduct__conn_queued(const struct dduct_conn *c);
/* 1 once a response head went out. */
int dduct__conn_responding(const struct dduct_conn *c);

/* The handler wants the request body (sends 100 Continue when the client expects it). */
void dduct__conn_read_body(struct dduct_conn *c);
/* 1 while request body bytes are still to come. */
int dduct__conn_reading_body(const struct dduct_conn *c);
/* Read the body again after on_body asked to hold it. */
void dduct__conn_body_resume(struct dduct_conn *c);
/* This response is the connection's last (keep-alive off). */
void dduct__conn_close_after(struct dduct_conn *c);
/* The handler waits on the origin (1) or on the client (0): a client that neither reads nor
 * sends for idle_timeout is closed only while the handler waits on it. */
void dduct__conn_waiting(struct dduct_conn *c, int waiting);
/* Close now; the handler's on_abort fires (used by handlers after a failed write). */
void dduct__conn_close(struct dduct_conn *c);

/* Connection takeover, for CONNECT: intercept pushes a TLS layer, tunnel takes the stream.
 * Bytes read past the request head (a ClientHello sent early), owned by c. */
const char *dduct__conn_input(const struct dduct_conn *c, size_t *len);
struct dduct_stream *dduct__conn_stream(const struct dduct_conn *c);
/* Bytes outside any response framing ("200 Connection established"). */
int dduct__conn_send_raw(struct dduct_conn *c, const char *data, size_t len);
/* top is a new layer on the client's chain (it owns the old top; the input was handed to it):
 * requests inside are read afresh, origin-form ones go to host:port over https. */
void dduct__conn_push_layer(struct dduct_conn *c, struct dduct_stream *top, const char *host,
                            uint16_t port);
/* The handler takes the client stream (returned; its data and read callback are the handler's
 * now) and the bytes read past the head (*pre, owned by c): the connection reads, parses and
 * frames nothing more. Its timer becomes tunnel_idle_timeout, restarted by dduct__conn_touch;
 * it ends by dduct__conn_close (or on_abort: timeout, shutdown). */
struct dduct_stream *dduct__conn_hijack(struct dduct_conn *c, const char **pre, size_t *prelen);
void dduct__conn_touch(struct dduct_conn *c);
/* 1 if the client's bytes pass through a TLS layer of ours (tls_bind or an intercept). */
int dduct__conn_tls_below(const struct dduct_conn *c);
/* c's memory (and the proxy's shutdown) waits for one dduct__conn_release per hold: for handles
 * a handler closes after c is closed. */
void dduct__conn_hold(struct dduct_conn *c);
void dduct__conn_release(struct dduct_conn *c);
const struct dduct_request *dduct__conn_request(const struct dduct_conn *c);
struct dduct_proxy *dduct__conn_proxy(const struct dduct_conn *c);
/* A short description of the client ("127.0.0.1:5555") for logs. */
const char *dduct__conn_peer(const struct dduct_conn *c);
/* The current request's facts for metrics and the access log (stats.h): handlers set the route,
 * the cache status and the origin's answer there. */
struct dduct__txn *dduct__conn_txn(struct dduct_conn *c);
/* The kind of listener c came from (enum dduct_listen_kind). */
int dduct__conn_listener(const struct dduct_conn *c);
/* Count n bytes sent to the client outside the response API (a tunnel's). */
void dduct__conn_add_bytes(struct dduct_conn *c, uint64_t n);

#endif
