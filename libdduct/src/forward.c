/* The forward route: any request no other route took, streamed both ways through the upstream
 * pool (upstream.h): the request body as the client sends it (held while the origin is slow),
 * the response as the origin sends it (the fetch paused while the client is slow). */
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "stats.h"
#include "upstream.h"

struct fwd {
  struct dduct_conn *c;
  struct dduct_fetch *f;
  int paused; /* the fetch is paused: the client is slow */
};

static void fwd_on_head(struct dduct_fetch *f, const struct dduct_http_head *h, int64_t cl) {
  struct fwd *w = dduct__fetch_data(f);
  /* The origin answered before the whole request body came (a 401/413 to an upload): the rest
   * of the body has nowhere to go (that origin connection is not reused), and the upload may
   * be blocked by our backpressure, so close after this answer instead of waiting for it. */
  if (dduct__conn_reading_body(w->c)) dduct__conn_close_after(w->c);
  dduct__txn_origin(dduct__conn_txn(w->c), h->status, dduct__conn_txn(w->c)->t0);
  dduct__cache_unsafe_done(dduct__conn_proxy(w->c)->cache, dduct__conn_request(w->c), h);
  if (dduct__conn_send_head(w->c, h->status, dduct__http_reason(h), h, cl) != 0)
    dduct__conn_close(w->c);
}

static void fwd_on_body(struct dduct_fetch *f, const char *data, size_t len) {
  struct fwd *w = dduct__fetch_data(f);
  if (dduct__conn_send_body(w->c, data, len, NULL, NULL) != 0) {
    dduct__conn_close(w->c);
    return;
  }
  if (!w->paused && dduct__conn_queued(w->c) > DDUCT_STREAM_HIGH_WATER) {
    w->paused = 1;
    dduct__conn_waiting(w->c, 0);
    dduct__fetch_pause(f);
  }
}

static void fwd_on_done(struct dduct_fetch *f, int status, const char *why) {
  struct fwd *w = dduct__fetch_data(f);
  struct dduct_conn *c = w->c;
  dduct__conn_take(c, NULL, NULL); /* the connection is no longer ours to hear from */
  free(w);
  if (status == 0) {
    (void)dduct__conn_send_end(c);
    return;
  }
  if (!dduct__conn_responding(c)) {
    dduct__conn_fail(c, status, why);
    return;
  }
  LOG_WARN("http_proxy", "%s: %s: %s; closing the client connection", dduct__conn_peer(c),
           dduct__fetch_url(f), why != NULL ? why : dduct_strerror(status));
  dduct__conn_abort(c);
}

/* The origin took the request body we held back: read the client's again. */
static void fwd_on_drain(struct dduct_fetch *f) {
  struct fwd *w = dduct__fetch_data(f);
  dduct__conn_body_resume(w->c);
}

static const struct dduct_fetch_cbs fwd_cbs = {fwd_on_head, fwd_on_body, fwd_on_done,
                                               fwd_on_drain};

/* The client took what was queued: let the origin's bytes flow again. */
static void client_drain_cb(void *arg) {
  struct fwd *w = arg;
  if (w->paused && w->f != NULL) {
    w->paused = 0;
    dduct__conn_waiting(w->c, 1);
    dduct__fetch_resume(w->f);
  }
}

static void client_abort_cb(void *arg) {
  struct fwd *w = arg;
  if (w->f != NULL) dduct__fetch_abort(w->f);
  free(w);
}

static int client_body_cb(void *arg, const char *data, size_t len) {
  struct fwd *w = arg;
  return dduct__fetch_write(w->f, data, len) != 0 ||
         dduct__fetch_queued(w->f) > DDUCT_STREAM_HIGH_WATER;
}

static void client_body_end_cb(void *arg) {
  struct fwd *w = arg;
  (void)dduct__fetch_end(w->f);
}

static const struct dduct_conn_handler fwd_handler = {client_drain_cb, client_abort_cb,
                                                      client_body_cb, client_body_end_cb};

int dduct__forward_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req) {
  struct dduct_proxy *p = proxy;
  struct dduct_fetch_request fr;
  struct fwd *w;
  int rc;

  if (req->connect || req->host == NULL) return 0;
  if (dduct__http_has_token(req->head, "Cache-Control", "only-if-cached")) {
    /* Nothing stored answers it, and the client wants no origin contact (RFC 9111 5.2.1.7). */
    dduct__conn_send_error(c, 504, "\"%.200s\" is not in the cache (only-if-cached)",
                           dduct__http_target(req->head));
    return 1;
  }
  memset(&fr, 0, sizeof(fr));
  fr.https = req->https;
  fr.host = req->host;
  fr.port = req->port;
  fr.method = req->method;
  fr.target = req->path;
  fr.headers = req->head;
  fr.body_len = req->chunked ? -1 : (req->content_length > 0 ? req->content_length : 0);
  if ((w = calloc(1, sizeof(*w))) == NULL) {
    dduct__conn_send_error(c, 503, "cannot start a request to %s: %s", req->host,
                           dduct_strerror(DDUCT_ENOMEM));
    return 1;
  }
  w->c = c;
  dduct__conn_take(c, &fwd_handler, w);
  dduct__conn_waiting(c, 1);
  rc = dduct__fetch_start(p->up, &fr, &fwd_cbs, w, &w->f); /* never calls back in here */
  if (rc != 0) {
    dduct__conn_take(c, NULL, NULL);
    free(w);
    dduct__conn_send_error(c, 503, "cannot start a request to %s: %s", req->host,
                           dduct_strerror(rc));
    return 1;
  }
  dduct__conn_read_body(c);
  return 1;
}
