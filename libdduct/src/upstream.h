/* The origin client: resolve (pins, then uv_getaddrinfo), connect with a timeout, TLS with
 * verification, a keep-alive pool keyed by scheme+host+port, response parsing, optional
 * redirect following. The forward path and the cache both fetch through this API.
 *
 * A fetch, step by step:
 *   1. dduct__fetch_start(u, &req, &cbs, data, &f). The request head is sent when a connection
 *      is ready (a pooled one is reused when possible, stats.upstream_reuses).
 *   2. Request body (req.body_len != 0): dduct__fetch_write() as bytes come (they are copied;
 *      writes before the connection is ready wait in the fetch), dduct__fetch_end() at the end.
 *      Backpressure: while dduct__fetch_queued(f) > DDUCT_STREAM_HIGH_WATER stop producing;
 *      cbs->on_drain fires once it fell below DDUCT_STREAM_LOW_WATER.
 *   3. cbs->on_head once with the final response head (1xx responses are skipped; hop-by-hop
 *      headers are already removed; Content-Length is kept when the origin sent one and
 *      content_length says the body length, -1 when unknown: chunked or close-delimited).
 *   4. cbs->on_body with decoded body bytes (borrowed for the call). To slow the origin down
 *      call dduct__fetch_pause(f) and later dduct__fetch_resume(f) (the upstream timeout does
 *      not run while paused).
 *   No callback ever runs inside dduct__fetch_start: a fetch that fails at once (a loop, a
 *   refused pin, no memory for its connection) reports through on_done in the next loop turn.
 *   5. cbs->on_done(f, 0, NULL) when the whole response arrived (the connection goes back to
 *      the pool if it can be reused), or cbs->on_done(f, err, why) on failure at any point, with
 *      err one of: UV_EAI_* (DNS), UV_ECONNREFUSED/UV_E* (connect), UV_ETIMEDOUT (connect or
 *      upstream timeout), DDUCT_EVERIFY (certificate), DDUCT_ETLS, DDUCT_ELOOP (the target is
 *      this proxy), DDUCT_EPROTO (bad response), DDUCT_ESHORT (origin closed mid-body); why is a
 *      one-line human text naming the cause (borrowed for the call). on_done is always the last
 *      callback; f is freed right after it returns.
 *   dduct__fetch_abort(f) at any time before on_done cancels: no callback fires afterwards, the
 *   origin connection is closed, f is freed. Never call it from inside on_done.
 * Callbacks may call pause/resume/abort/write/end on their own fetch.
 *
 * Redirects: with req.max_redirects > 0, a GET/HEAD answered by 301/302/303/307/308 with a
 * Location is followed (up to that many hops) instead of being delivered; Authorization and
 * Cookie headers are dropped when scheme, host or port change. A redirect from https to http://
 * is never followed: it is delivered as the final response. The final response is delivered as
 * usual.
 */
#ifndef DDUCT_UPSTREAM_H
#define DDUCT_UPSTREAM_H

#include <stdint.h>

#include "http.h"
#include "resolve.h"
#include "stats.h"
#include "stream.h"

struct dduct_upstream;
struct dduct_fetch;
struct dduct_uproxy;
struct dduct_parent;
struct dduct_connect;
struct dduct_tls_client_conf;

struct dduct_upstream_config {
  uv_loop_t *loop;
  struct dduct_tls_client_conf *tls;
  const struct dduct_pins *pins;
  unsigned connect_timeout_ms;
  unsigned upstream_timeout_ms;
  /* 1 if sa is one of our own listening addresses (loop detection). */
  int (*is_self)(void *arg, const struct sockaddr *sa);
  void *is_self_arg;
  uint64_t *stat_connects; /* incremented per new origin connection (may be NULL) */
  uint64_t *stat_reuses;   /* incremented per request on a pooled connection (may be NULL) */
  /* Chaining (chain.h): origin connections and raw ones go through proxy when it applies to
   * the host (NULL or an empty one: direct); parents are reached with parent_tls. */
  const struct dduct_uproxy *proxy;
  struct dduct_tls_client_conf *parent_tls;
  struct dduct_tls_client_conf *proxy_tls; /* the https upstream proxy's hop (NULL: tls) */
  struct dduct__stats *stats; /* responses by code, connect times (may be NULL) */
};

int dduct__upstream_new(const struct dduct_upstream_config *cfg, struct dduct_upstream **out);
/* Close pooled idle connections and refuse to pool more (shutdown). */
void dduct__upstream_close_idle(struct dduct_upstream *u);
/* Origin connections still open or closing (shutdown waits for 0). */
size_t dduct__upstream_live(const struct dduct_upstream *u);
/* Free once dduct__upstream_live() is 0. */
void dduct__upstream_free(struct dduct_upstream *u);
/* Called when live drops to 0 during shutdown. */
void dduct__upstream_on_idle(struct dduct_upstream *u, void (*cb)(void *arg), void *arg);

struct dduct_fetch_request {
  int https;
  const char *host;   /* DNS name or IP literal without brackets */
  uint16_t port;
  const char *method;
  const char *target; /* origin-form: "/path?query" */
  /* Headers to send (copied). Host, Content-Length, Transfer-Encoding, Connection and the
   * other hop-by-hop headers are replaced by the fetch's own. */
  const struct dduct_http_head *headers;
  int64_t body_len;   /* 0: no body; > 0: exactly that many bytes; -1: streamed, sent chunked */
  unsigned max_redirects;
  /* Non-NULL: ask this parent dduct instead of the origin (absolute-form "GET https://host/path"
   * over a keep-alive connection to the parent, pooled per parent). Borrowed: must outlive the
   * fetch. Failures name the parent. */
  const struct dduct_parent *parent;
};

struct dduct_fetch_cbs {
  void (*on_head)(struct dduct_fetch *f, const struct dduct_http_head *h, int64_t content_length);
  void (*on_body)(struct dduct_fetch *f, const char *data, size_t len);
  void (*on_done)(struct dduct_fetch *f, int status, const char *why);
  void (*on_drain)(struct dduct_fetch *f); /* may be NULL */
};

int dduct__fetch_start(struct dduct_upstream *u, const struct dduct_fetch_request *req,
                       const struct dduct_fetch_cbs *cbs, void *data, struct dduct_fetch **out);
void *dduct__fetch_data(const struct dduct_fetch *f);
int dduct__fetch_write(struct dduct_fetch *f, const char *data, size_t len);
int dduct__fetch_end(struct dduct_fetch *f);
size_t dduct__fetch_queued(const struct dduct_fetch *f);
void dduct__fetch_pause(struct dduct_fetch *f);
void dduct__fetch_resume(struct dduct_fetch *f);
void dduct__fetch_abort(struct dduct_fetch *f);
/* The URL finally fetched after redirects ("https://host:port/path"), owned by f. */
const char *dduct__fetch_url(const struct dduct_fetch *f);
/* 1 if the request sent for the current hop (the last one once on_head has the final answer)
 * carries Authorization or Cookie: redirects to another origin drop them, a parent gets them. */
int dduct__fetch_credentialed(const struct dduct_fetch *f);

/* A raw connection (blind tunnels): resolve, loop check, connect with the connect timeout
 * (through the upstream proxy's CONNECT when it applies). cb gets the connected stream (now the
 * caller's) with status 0, or NULL, an error and a one-line reason. Cancel before cb with
 * dduct__connect_cancel (no callback then). During a successful cb,
 * dduct__connect_leftover() gives bytes the far end already sent (they came behind the upstream
 * proxy's answer): the caller passes them on before anything it reads from the stream. */
typedef void (*dduct_connect_cb)(void *arg, struct dduct_stream *s, int status, const char *why);
int dduct__upstream_connect(struct dduct_upstream *u, const char *host, uint16_t port,
                            dduct_connect_cb cb, void *arg, struct dduct_connect **out);
void dduct__connect_cancel(struct dduct_connect *cn);
const char *dduct__connect_leftover(const struct dduct_connect *cn, size_t *len);

#endif
