/* The tunnel route: a CONNECT to a host the CA does not cover becomes a blind byte tunnel to the
 * origin. Each direction stops reading its side while the other side's queue is above the high
 * water mark; the tunnel ends when both sides sent EOF and both queues are empty. */
#include <stdlib.h>

#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "stats.h"
#include "upstream.h"

struct tunnel {
  struct dduct_conn *c;       /* NULL once the connection closed */
  struct dduct_stream *cl;    /* the client's stream (the connection's, hijacked) */
  struct dduct_stream *up;    /* the origin's */
  struct dduct_connect *cn;   /* while connecting */
  int cl_eof, up_eof;
};

static void up_close_cb(struct dduct_stream *s) {
  struct tunnel *t = s->data;
  struct dduct_conn *c = t->c;
  free(t);
  dduct__conn_release(c);
}

/* The connection closes (timeout, shutdown, a failed write): our side goes with it. */
static void tunnel_abort_cb(void *arg) {
  struct tunnel *t = arg;
  if (t->cn != NULL) {
    dduct__connect_cancel(t->cn);
    t->cn = NULL;
  }
  if (t->up != NULL) {
    dduct__stream_close(t->up, up_close_cb); /* frees t, then lets the connection go */
    return;
  }
  free(t);
}

static const struct dduct_conn_handler tunnel_handler = {NULL, tunnel_abort_cb, NULL, NULL};

static void read_client_cb(struct dduct_stream *s, ssize_t nread, const char *data);
static void read_up_cb(struct dduct_stream *s, ssize_t nread, const char *data);

static void maybe_done(struct tunnel *t) {
  if (t->cl_eof && t->up_eof && dduct__stream_queued(t->cl) == 0 &&
      dduct__stream_queued(t->up) == 0)
    dduct__conn_close(t->c);
}

static void write_cb(struct dduct_stream *s, int status, void *arg) {
  struct tunnel *t = arg;
  if (status < 0) {
    dduct__conn_close(t->c);
    return;
  }
  dduct__conn_touch(t->c);
  if (dduct__stream_queued(s) < DDUCT_STREAM_LOW_WATER) {
    /* The sink drained: let its source flow again. */
    if (s == t->up && !t->cl_eof) (void)dduct__stream_read_start(t->cl, read_client_cb);
    if (s == t->cl && !t->up_eof) (void)dduct__stream_read_start(t->up, read_up_cb);
  }
  maybe_done(t);
}

static void pipe_bytes(struct tunnel *t, struct dduct_stream *from, struct dduct_stream *to,
                       ssize_t nread, const char *data, int *eof) {
  if (nread < 0) {
    *eof = 1;
    if (nread != UV_EOF) {
      dduct__conn_close(t->c);
      return;
    }
    (void)dduct__stream_shutdown(to);
    maybe_done(t);
    return;
  }
  dduct__conn_touch(t->c);
  dduct__conn_add_bytes(t->c, (uint64_t)nread);
  if (dduct__stream_write(to, data, (size_t)nread, write_cb, t) != 0) {
    dduct__conn_close(t->c);
    return;
  }
  if (dduct__stream_queued(to) > DDUCT_STREAM_HIGH_WATER) dduct__stream_read_stop(from);
}

static void read_client_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  struct tunnel *t = s->data;
  pipe_bytes(t, t->cl, t->up, nread, data, &t->cl_eof);
}

static void read_up_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  struct tunnel *t = s->data;
  pipe_bytes(t, t->up, t->cl, nread, data, &t->up_eof);
}

static void connected_cb(void *arg, struct dduct_stream *up, int status, const char *why) {
  static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  struct tunnel *t = arg;
  struct dduct_conn *c = t->c;
  const struct dduct_request *req = dduct__conn_request(c);
  const char *pre, *early = NULL;
  size_t prelen, early_len = 0;
  /* Bytes the far end sent behind an upstream proxy's answer go to the client first. */
  if (t->cn != NULL) early = dduct__connect_leftover(t->cn, &early_len);
  t->cn = NULL;
  if (status != 0) {
    dduct__conn_take(c, NULL, NULL);
    dduct__conn_send_error(c, dduct__http_status_for_error(status), "CONNECT %s:%u: %s",
                           req->host, req->port, why);
    free(t);
    return;
  }
  t->up = up;
  up->data = t;
  dduct__conn_txn(c)->cache = DDUCT_CACHE_TUNNEL;
  dduct__conn_hold(c); /* the connection's memory waits for up's close (up_close_cb) */
  dduct__conn_proxy(c)->stats.tunnels++;
  LOG_DEBUG("http_proxy", "%s CONNECT %s:%u tunnel", dduct__conn_peer(c), req->host, req->port);
  t->cl = dduct__conn_hijack(c, &pre, &prelen);
  t->cl->data = t;
  if (dduct__stream_write(t->cl, ok, sizeof(ok) - 1, write_cb, t) != 0 ||
      (early_len > 0 && dduct__stream_write(t->cl, early, early_len, write_cb, t) != 0) ||
      (prelen > 0 && dduct__stream_write(up, pre, prelen, write_cb, t) != 0)) {
    dduct__conn_close(c);
    return;
  }
  /* The origin's TLS records inside ours: never one of ours across two of theirs (tls.h). */
  if (dduct__conn_tls_below(c)) (void)dduct__stream_query(t->cl, DDUCT_STREAM_CARRY_RECORDS, NULL);
  (void)dduct__stream_read_start(t->cl, read_client_cb);
  (void)dduct__stream_read_start(up, read_up_cb);
}

int dduct__tunnel_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req) {
  struct dduct_proxy *p = proxy;
  struct tunnel *t;
  int rc;
  if (!req->connect || req->host == NULL) return 0;
  /* The port policy guards blind tunnels, which would carry any protocol (intercepted hosts,
   * spoken to as HTTPS and verified, are served on any port). */
  if (!dduct__proxy_port_allowed(p, req->port)) {
    dduct__conn_send_error(c, 403, "CONNECT to port %u is not allowed", req->port);
    return 1;
  }
  dduct__conn_txn(c)->route = DDUCT_ROUTE_TUNNEL;
  dduct__conn_txn(c)->cache = DDUCT_CACHE_TUNNEL;
  if ((t = calloc(1, sizeof(*t))) == NULL) {
    dduct__conn_send_error(c, 503, "CONNECT %s:%u: %s", req->host, req->port,
                           dduct_strerror(DDUCT_ENOMEM));
    return 1;
  }
  t->c = c;
  dduct__conn_take(c, &tunnel_handler, t);
  dduct__conn_waiting(c, 1);
  rc = dduct__upstream_connect(p->up, req->host, req->port, connected_cb, t, &t->cn);
  if (rc != 0) {
    dduct__conn_take(c, NULL, NULL);
    free(t);
    dduct__conn_send_error(c, 503, "CONNECT %s:%u: %s", req->host, req->port, dduct_strerror(rc));
  }
  return 1;
}
