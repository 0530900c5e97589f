/* One client connection's state machine (see docs/architecture.md, "Engine"):
 *
 *   HEAD --head parsed--> route table (route.h, the proxy's) --a handler takes it--> BUSY
 *     ^                     |--intercept: (200, push TLS layer) ---------------------> HEAD
 *     |                     |--tunnel: (connect) --> TUNNEL (hijacked) ------------> closed
 *   BUSY --response sent and request read--> HEAD (keep-alive) or LINGER --> closed
 *
 * The parser pauses right after each head (so body bytes flow only once someone wants them)
 * and after each message (so pipelined requests are answered in order). Unconsumed bytes wait
 * in c->in; the socket is read only while the parser may run.
 * Memory is freed only once every handle (stream chain, timer, idle) has closed.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "stats.h"
#include "tls.h"

#define IN_CAP (160 * 1024)
#define IN_FIRST (4 * 1024)
#define LINGER_MS 2000
#define RESP_HEAD_CAP (DDUCT_HTTP_HEAD_MAX + 1024)

enum cstate { C_HEAD, C_BUSY, C_TUNNEL, C_LINGER, C_CLOSED };

struct wnode { /* one write in flight on the client stream */
  struct wnode *next;
  dduct_conn_write_cb cb;
  void *arg;
};

struct dduct_conn {
  struct dduct_proxy *p;
  struct dduct_conn_node node; /* in the proxy's list of live connections */
  struct dduct_stream *s; /* client chain top */
  uv_timer_t timer;
  uv_idle_t kick;
  /* A whole answer made while its request was being read (process()) waits here for the check
   * phase of this loop turn, after the reads of every other ready connection: replying before
   * the rest of the batch is read made Go clients (hey) drop kept-alive connections under load
   * (the answer came back before their writer had reported the request written). Any other
   * write, a shutdown or a drain sends it first; closing drops it. */
  uv_check_t flush;
  char *cork;
  size_t cork_len;
  int handles;
  enum cstate state;
  int tls_listener;
  int draining;
  int denied; /* outside allow_clients: every request gets 403 */
  int denied_out; /* a denied tcp_bind client answered at accept: not in max_connections */
  int counted; /* addr holds one of its max_connections_per_client */
  unsigned head_ms; /* this connection's head timeout (shorter when accepted near the limit) */
  struct sockaddr_storage addr;
  int kind;   /* the listener's (enum dduct_listen_kind) */
  struct dduct__txn txn; /* the current request's facts (metrics, access log) */
  char peer[64];
  /* Input. */
  char *in;
  size_t in_len, in_cap;
  struct dduct_http_parser parser;
  int paused;    /* the parser is paused; it runs again after resume_parser() */
  int ev_head;   /* the last pause was at a head */
  int ev_done;   /* the last pause was at a message end */
  int head_started;
  int in_process; /* process() runs: a resumed parser goes on in its loop, no kick needed */
  /* Intercepted CONNECT context. */
  int intercepted;
  char ihost[256];
  uint16_t iport;
  /* The current request. */
  struct dduct_request req;
  char rhost[256];
  char *rpath;
  int req_done, req_has_body, req_body_wanted, body_blocked;
  int resp_started, resp_done, resp_chunked, resp_nobody;
  int keep_alive;
  int status;
  uint64_t resp_bytes;
  uint64_t t0;
  size_t route;   /* the route table entry that has the request */
  int waiting;    /* the handler waits on the origin, not on the client (dduct__conn_waiting) */
  int target_status; /* the origin could not be worked out: the answer if no route takes it */
  char target_why[320];
  const struct dduct_conn_handler *h;
  void *harg;
  struct wnode *wq_head, *wq_tail;
};

/* Every state change goes through here: the transitions of the picture at the top, checked in
 * builds with assertions (a closed connection never comes back; only a busy request becomes a
 * tunnel). */
static void set_state(struct dduct_conn *c, enum cstate to) {
  assert(c->state != C_CLOSED);
  assert(to != C_TUNNEL || c->state == C_BUSY);
  assert(to != C_BUSY || c->state == C_HEAD || c->state == C_BUSY);
  assert(to != C_HEAD || c->state == C_BUSY || c->state == C_HEAD);
  c->state = to;
}

static void process(struct dduct_conn *c);
static void update_reading(struct dduct_conn *c);
static void client_read_cb(struct dduct_stream *s, ssize_t nread, const char *data);
static void book(struct dduct_conn *c);
static void conn_close(struct dduct_conn *c);

static const char *reason_of(int status) {
  switch (status) {
  case 200: return "OK";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 408: return "Request Timeout";
  case 412: return "Precondition Failed";
  case 414: return "URI Too Long";
  case 416: return "Range Not Satisfiable";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 508: return "Loop Detected";
  default: return "Error";
  }
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static void conn_free(struct dduct_conn *c) {
  struct dduct_proxy *p = c->p;
  while (c->wq_head != NULL) {
    struct wnode *n = c->wq_head;
    c->wq_head = n->next;
    free(n);
  }
  dduct__http_parser_free(&c->parser);
  free(c->rpath);
  free(c->in);
  if (c->counted) dduct__proxy_client_release(p, (struct sockaddr *)&c->addr);
  if (c->denied_out) { /* taken out of the count at accept: conn_gone takes it out again */
    p->denied_lingering--;
    atomic_fetch_add_explicit(p->conns_all, 1, memory_order_relaxed);
  }
  dduct__proxy_conn_gone(p, &c->node);
  free(c);
}

static void handle_closed(struct dduct_conn *c) {
  if (--c->handles == 0) conn_free(c);
}

static void timer_close_cb(uv_handle_t *h) {
  handle_closed(DDUCT_CONTAINER_OF((uv_timer_t *)h, struct dduct_conn, timer));
}

static void flush_close_cb(uv_handle_t *h) {
  handle_closed(DDUCT_CONTAINER_OF((uv_check_t *)h, struct dduct_conn, flush));
}

static void kick_close_cb(uv_handle_t *h) {
  handle_closed(DDUCT_CONTAINER_OF((uv_idle_t *)h, struct dduct_conn, kick));
}

static void stream_close_cb(struct dduct_stream *s) {
  handle_closed(s->data);
}

static void conn_close(struct dduct_conn *c) {
  const struct dduct_conn_handler *h = c->h;
  if (c->state == C_CLOSED) return;
  if (c->state == C_BUSY || c->state == C_TUNNEL) book(c);
  set_state(c, C_CLOSED);
  c->h = NULL;
  if (h != NULL && h->on_abort != NULL) h->on_abort(c->harg);
  c->s->data = c;
  dduct__stream_close(c->s, stream_close_cb);
  uv_close((uv_handle_t *)&c->timer, timer_close_cb);
  uv_close((uv_handle_t *)&c->kick, kick_close_cb);
  uv_close((uv_handle_t *)&c->flush, flush_close_cb);
  free(c->cork);
  c->cork = NULL;
  c->cork_len = 0;
}

/* ---- timers and deferred work ------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t) {
  struct dduct_conn *c = DDUCT_CONTAINER_OF(t, struct dduct_conn, timer);
  switch (c->state) {
  case C_HEAD:
    if (c->head_started)
      LOG_DEBUG("http_proxy", "%s: no complete request head within %u s", c->peer,
                c->p->o.head_timeout_ms / 1000);
    else if (c->head_ms < c->p->o.head_timeout_ms)
      LOG_DEBUG("http_proxy", "%s: no request within %u s (short head timeout: near "
                "max_connections)", c->peer, c->head_ms / 1000);
    conn_close(c);
    break;
  case C_BUSY:
    /* Waiting on the origin is the upstream timeout's business; here only a client that
     * neither reads nor sends counts. An upload we stopped reading because the origin takes it
     * slowly (body_blocked) is us waiting on the origin, not a stalled client. */
    if (c->waiting && (!c->req_body_wanted || c->body_blocked) && dduct__stream_queued(c->s) == 0)
      return;
    LOG_WARN("http_proxy", "%s: client stalled for %u s, closing", c->peer,
             c->p->o.idle_timeout_ms / 1000);
    conn_close(c);
    break;
  case C_TUNNEL:
    LOG_DEBUG("http_proxy", "%s: tunnel idle for %u s, closing", c->peer,
              c->p->o.tunnel_idle_timeout_ms / 1000);
    conn_close(c);
    break;
  default:
    conn_close(c);
  }
}

static void arm(struct dduct_conn *c, unsigned ms) {
  uv_timer_start(&c->timer, timer_cb, ms, ms);
}

static void kick_cb(uv_idle_t *h) {
  struct dduct_conn *c = DDUCT_CONTAINER_OF(h, struct dduct_conn, kick);
  uv_idle_stop(h);
  process(c);
  update_reading(c);
}

static void kick(struct dduct_conn *c) {
  if (c->state != C_CLOSED) uv_idle_start(&c->kick, kick_cb);
}

/* ---- client writes ------------------------------------------------------------------------ */

static void client_write_cb(struct dduct_stream *s, int status, void *arg) {
  struct dduct_conn *c = arg;
  struct wnode *n = c->wq_head;
  if (n != NULL) {
    c->wq_head = n->next;
    if (c->wq_head == NULL) c->wq_tail = NULL;
  }
  if (status < 0) {
    free(n);
    conn_close(c);
    return;
  }
  if (c->state == C_BUSY) uv_timer_again(&c->timer);
  if (n != NULL && n->cb != NULL) n->cb(n->arg, status);
  free(n);
  if (c->state == C_CLOSED || dduct__stream_queued(c->s) >= DDUCT_STREAM_LOW_WATER) return;
  if (c->h != NULL && c->h->on_drain != NULL) c->h->on_drain(c->harg);
}

static int cwrite_now(struct dduct_conn *c, const char *data, size_t len,
                      dduct_conn_write_cb cb, void *arg);

static int uncork(struct dduct_conn *c) {
  char *b = c->cork;
  size_t n = c->cork_len;
  int rc;
  if (b == NULL) return 0;
  c->cork = NULL;
  c->cork_len = 0;
  uv_check_stop(&c->flush);
  rc = cwrite_now(c, b, n, NULL, NULL);
  free(b);
  return rc;
}

static void flush_cb(uv_check_t *h) {
  struct dduct_conn *c = DDUCT_CONTAINER_OF(h, struct dduct_conn, flush);
  if (uncork(c) != 0) conn_close(c);
}

static int cwrite(struct dduct_conn *c, const char *data, size_t len, dduct_conn_write_cb cb,
                  void *arg) {
  int rc = uncork(c);
  if (rc != 0) return rc;
  return cwrite_now(c, data, len, cb, arg);
}

static int cwrite_now(struct dduct_conn *c, const char *data, size_t len,
                      dduct_conn_write_cb cb, void *arg) {
  struct wnode *n;
  int rc;
  if (c->state == C_CLOSED) return DDUCT_ECLOSED;
  n = malloc(sizeof(*n));
  if (n == NULL) return DDUCT_ENOMEM;
  n->next = NULL;
  n->cb = cb;
  n->arg = arg;
  rc = dduct__stream_write(c->s, data, len, client_write_cb, c);
  if (rc != 0) {
    free(n);
    return rc;
  }
  if (c->wq_tail != NULL) c->wq_tail->next = n;
  else c->wq_head = n;
  c->wq_tail = n;
  return 0;
}

/* ---- request lifecycle -------------------------------------------------------------------- */

static void resume_parser(struct dduct_conn *c) {
  if (!c->paused) return;
  c->paused = 0;
  dduct__http_parser_resume(&c->parser);
  /* Inside process() (a response completed while its request was routed, e.g. a cache hit
   * answered at once) the parse loop simply goes on: no extra loop turn for the next request. */
  if (c->in_process == 0) kick(c);
}

static void reset_request(struct dduct_conn *c) {
  free(c->rpath);
  c->rpath = NULL;
  memset(&c->req, 0, sizeof(c->req));
  c->req_done = c->req_has_body = c->req_body_wanted = c->body_blocked = 0;
  c->resp_started = c->resp_done = c->resp_chunked = c->resp_nobody = 0;
  c->status = 0;
  c->resp_bytes = 0;
  c->waiting = 0;
  c->h = NULL;
  c->head_started = c->in_len > 0;
}

/* A request target as the client sent it, minus any user:password@ of an absolute URL (a
 * target we could not route is logged, recorded and echoed as it came, credentials aside). */
static const char *shown_target(const char *t, char *buf, size_t len) {
  const char *auth = strstr(t, "://"), *end, *at = NULL;
  if (auth == NULL || (size_t)(auth - t) > 16) return t;
  auth += 3;
  end = auth + strcspn(auth, "/?#");
  for (const char *q = auth; q < end; q++)
    if (*q == '@') at = q;
  if (at == NULL) return t;
  snprintf(buf, len, "%.*s***@%s", (int)(auth - t), t, at + 1);
  return buf;
}

/* The URL for the access record: never credentials (it is rebuilt from the parts). */
static const char *record_url(struct dduct_conn *c, char *buf, size_t len) {
  const struct dduct_request *r = &c->req;
  int connect = c->txn.route == DDUCT_ROUTE_TUNNEL || c->txn.route == DDUCT_ROUTE_INTERCEPT;
  if (r->host == NULL) return shown_target(dduct__http_target(&c->parser.head), buf, len);
  return dduct__stats_url(buf, len, connect ? -1 : r->https, r->host, r->port, r->path);
}

/* The request ended (answered, cut, or its client left): metrics and the access record. */
static void book(struct dduct_conn *c) {
  struct dduct__txn_end e;
  char url[4096];
  if (c->txn.booked || c->txn.t0 == 0) return;
  e.client = c->peer;
  e.method = c->req.method != NULL ? c->req.method : dduct__http_method(&c->parser.head);
  e.url = c->p->o.access_cb != NULL ? record_url(c, url, sizeof(url)) : NULL;
  e.status = c->status;
  e.bytes = c->resp_bytes;
  dduct__stats_txn_done(c->p, &c->txn, &e);
}

static void log_request(struct dduct_conn *c) {
  const struct dduct_http_head *h = &c->parser.head;
  char origin[300];
  book(c);
  if (!dduct__enabled(DDUCT_LOG_DEBUG)) return;
  if (c->req.host == NULL) {
    char shown[4096];
    dduct__log(DDUCT_LOG_DEBUG, "http_proxy", "%s %s %.200s -> %d", c->peer,
               dduct__http_method(h), shown_target(dduct__http_target(h), shown, sizeof(shown)),
               c->status);
    return;
  }
  dduct__origin_format(origin, sizeof(origin),
                       &(struct dduct_origin){c->req.https, c->req.host, c->req.port},
                       DDUCT_ORIGIN_PORT);
  dduct__log(DDUCT_LOG_DEBUG, "http_proxy", "%s %s %s%s -> %d (%llu bytes, %llu ms)", c->peer,
             dduct__http_method(h), origin, c->req.path != NULL ? c->req.path : "", c->status,
             (unsigned long long)c->resp_bytes,
             (unsigned long long)(uv_now(c->p->loop) - c->t0));
}

static void linger(struct dduct_conn *c) {
  if (uncork(c) != 0) {
    conn_close(c);
    return;
  }
  set_state(c, C_LINGER);
  (void)dduct__stream_shutdown(c->s);
  arm(c, LINGER_MS);
  update_reading(c);
}

/* Both the response and the request are complete (or the connection cannot continue). */
static void request_finished(struct dduct_conn *c) {
  log_request(c);
  if (!c->keep_alive || c->draining || !c->req_done) {
    linger(c);
    return;
  }
  reset_request(c);
  set_state(c, C_HEAD);
  arm(c, c->head_started ? c->p->o.head_timeout_ms : c->p->o.idle_timeout_ms);
  resume_parser(c);
}

static void response_complete(struct dduct_conn *c) {
  c->resp_done = 1;
  c->h = NULL;
  if (c->keep_alive && !c->req_done) {
    /* Without a body the message end is only the parser's next step. */
    if (!c->req_has_body) {
      resume_parser(c);
      return;
    }
    if (c->req_body_wanted) return; /* the upload finishes first, then message_done */
    c->keep_alive = 0;              /* an unread body: this connection cannot go on */
  }
  request_finished(c);
}

/* ---- client response API ------------------------------------------------------------------ */

void dduct__conn_take(struct dduct_conn *c, const struct dduct_conn_handler *h, void *arg) {
  c->h = h;
  c->harg = arg;
}

static void dispatch(struct dduct_conn *c, size_t from);

void dduct__conn_decline(struct dduct_conn *c) {
  c->h = NULL;
  c->waiting = 0;
  if (!c->resp_started && c->state == C_BUSY) dispatch(c, c->route + 1);
}

static char *put(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

static char *put_u64(char *p, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  while (n > 0) *p++ = tmp[--n];
  return p;
}

/* Start the response: framing decided, head rendered into a buffer sized for it plus `extra`
 * bytes the caller appends (malloc'd, *out; the length is returned). Written straight from the
 * caller's head (its headers in order minus those the engine frames, then the framing and
 * Connection headers): no intermediate head, no printf. */
static int render_head(struct dduct_conn *c, int status, const char *reason,
                       const struct dduct_http_head *headers, int64_t content_length,
                       size_t extra, char **out) {
  enum { FR_NONE, FR_LENGTH, FR_CHUNKED } framing = FR_NONE;
  const char *why = reason != NULL && *reason ? reason : reason_of(status);
  const char *conn_line = NULL;
  size_t need, wlen = strlen(why);
  char *buf, *p;
  if (c->state != C_BUSY || c->resp_started) return DDUCT_ECLOSED;
  c->resp_started = 1;
  c->status = status;
  c->resp_nobody = dduct__http_no_body(c->req.is_head, status);
  if (content_length >= 0 && status != 204 && status >= 200) {
    framing = FR_LENGTH;
  } else if (!c->resp_nobody) {
    if (c->parser.head.major == 1 && c->parser.head.minor >= 1) {
      c->resp_chunked = 1;
      framing = FR_CHUNKED;
    } else {
      c->keep_alive = 0; /* close-delimited for HTTP/1.0 */
    }
  }
  if (c->draining) c->keep_alive = 0;
  if (!c->keep_alive) conn_line = "Connection: close\r\n";
  else if (c->parser.head.minor == 0) conn_line = "Connection: keep-alive\r\n";
  if (status < 0 || status > 999) return DDUCT_EINVAL;
  /* "HTTP/1.1 200 " reason CRLF, the headers, framing, Connection, CRLF. */
  need = 13 + wlen + 2 + 2;
  for (size_t i = 0; headers != NULL && i < headers->n; i++)
    need += headers->h[i].name_len + headers->h[i].value_len + 4;
  need += framing == FR_LENGTH ? 16 + 20 + 2 : framing == FR_CHUNKED ? 28 : 0;
  need += conn_line != NULL ? strlen(conn_line) : 0;
  if (need > RESP_HEAD_CAP) return DDUCT_ETOOBIG;
  if ((buf = malloc(need + extra)) == NULL) return DDUCT_ENOMEM;
  p = put(buf, "HTTP/1.1 ", 9);
  *p++ = (char)('0' + status / 100);
  *p++ = (char)('0' + status / 10 % 10);
  *p++ = (char)('0' + status % 10);
  *p++ = ' ';
  p = put(p, why, wlen);
  p = put(p, "\r\n", 2);
  for (size_t i = 0; headers != NULL && i < headers->n; i++) {
    const struct dduct_http_header *x = &headers->h[i];
    const char *name = dduct__http_hname(headers, i);
    /* Framing and connection headers are the engine's own: never copied from the caller's. */
    if (dduct__http_header_class(name, x->name_len) & DDUCT_HDR_ENGINE) continue;
    p = put(p, name, x->name_len);
    p = put(p, ": ", 2);
    p = put(p, dduct__http_hvalue(headers, i), x->value_len);
    p = put(p, "\r\n", 2);
  }
  if (framing == FR_LENGTH) {
    p = put(p, "Content-Length: ", 16);
    p = put_u64(p, (uint64_t)content_length);
    p = put(p, "\r\n", 2);
  } else if (framing == FR_CHUNKED) {
    p = put(p, "Transfer-Encoding: chunked\r\n", 28);
  }
  if (conn_line != NULL) p = put(p, conn_line, strlen(conn_line));
  p = put(p, "\r\n", 2);
  *out = buf;
  return (int)(p - buf);
}

int dduct__conn_send_head(struct dduct_conn *c, int status, const char *reason,
                          const struct dduct_http_head *headers, int64_t content_length) {
  char *buf;
  int rc, n = render_head(c, status, reason, headers, content_length, 0, &buf);
  if (n < 0) return n;
  rc = cwrite(c, buf, (size_t)n, NULL, NULL);
  free(buf);
  return rc;
}

int dduct__conn_send_whole(struct dduct_conn *c, int status, const char *reason,
                           const struct dduct_http_head *headers, int64_t content_length,
                           const char *body, size_t len) {
  int nobody = dduct__http_no_body(c->req.is_head, status);
  char *buf;
  int rc, n;
  if (!nobody && (content_length < 0 || (uint64_t)content_length != len)) return DDUCT_EINVAL;
  if (nobody) len = 0;
  n = render_head(c, status, reason, headers, content_length, len, &buf);
  if (n < 0) return n;
  if (len > 0) memcpy(buf + n, body, len);
  c->resp_bytes += len;
  if (c->in_process > 0 && c->cork == NULL && c->state == C_BUSY) {
    /* Answered inside the read of its request: written after this turn's other reads. */
    c->cork = buf;
    c->cork_len = (size_t)n + len;
    uv_check_start(&c->flush, flush_cb);
    response_complete(c);
    return 0;
  }
  rc = cwrite(c, buf, (size_t)n + len, NULL, NULL);
  free(buf);
  if (rc == 0) response_complete(c);
  return rc;
}

int dduct__conn_send_body(struct dduct_conn *c, const char *data, size_t len,
                          dduct_conn_write_cb cb, void *arg) {
  int rc;
  if (c->state != C_BUSY || !c->resp_started) return DDUCT_ECLOSED;
  if (c->resp_nobody || len == 0) {
    if (cb != NULL) return cwrite(c, "", 0, cb, arg);
    return 0;
  }
  c->resp_bytes += len;
  if (c->resp_chunked) {
    char hdr[24];
    size_t n = dduct__http_chunk_header(hdr, len);
    rc = cwrite(c, hdr, n, NULL, NULL);
    if (rc == 0) rc = cwrite(c, data, len, NULL, NULL);
    if (rc == 0) rc = cwrite(c, "\r\n", 2, cb, arg);
    return rc;
  }
  return cwrite(c, data, len, cb, arg);
}

int dduct__conn_send_end(struct dduct_conn *c) {
  int rc = 0;
  if (c->state != C_BUSY || !c->resp_started) return DDUCT_ECLOSED;
  if (c->resp_chunked) rc = cwrite(c, "0\r\n\r\n", 5, NULL, NULL);
  response_complete(c);
  return rc;
}

void dduct__conn_abort(struct dduct_conn *c) {
  c->h = NULL; /* the handler itself asked: no on_abort back */
  if (c->state != C_CLOSED) {
    log_request(c);
    conn_close(c);
  }
}

void dduct__conn_fail(struct dduct_conn *c, int err, const char *why) {
  dduct__conn_send_error(c, dduct__http_status_for_error(err), "%s",
                         why != NULL ? why : dduct_strerror(err));
}

void dduct__conn_close(struct dduct_conn *c) {
  conn_close(c);
}

size_t dduct__conn_queued(const struct dduct_conn *c) {
  return c->state == C_CLOSED ? 0 : c->cork_len + dduct__stream_queued(c->s);
}

const struct dduct_request *dduct__conn_request(const struct dduct_conn *c) {
  return &c->req;
}

struct dduct_proxy *dduct__conn_proxy(const struct dduct_conn *c) {
  return c->p;
}

const char *dduct__conn_peer(const struct dduct_conn *c) {
  return c->peer;
}

struct dduct__txn *dduct__conn_txn(struct dduct_conn *c) {
  return &c->txn;
}

int dduct__conn_listener(const struct dduct_conn *c) {
  return c->kind;
}

void dduct__conn_add_bytes(struct dduct_conn *c, uint64_t n) {
  c->resp_bytes += n;
}

int dduct__conn_responding(const struct dduct_conn *c) {
  return c->resp_started;
}

/* ---- request bodies and the handler's state ----------------------------------------------- */

void dduct__conn_read_body(struct dduct_conn *c) {
  const struct dduct_http_head *h = &c->parser.head;
  if (c->state != C_BUSY) return;
  if (c->req_has_body) {
    c->req_body_wanted = 1;
    /* We hold the body until the origin is ready; the client may wait for this first. */
    if (dduct__http_has_token(h, "Expect", "100-continue") && h->minor >= 1)
      (void)cwrite(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, NULL, NULL);
  }
  resume_parser(c);
}

int dduct__conn_reading_body(const struct dduct_conn *c) {
  return c->req_body_wanted;
}

void dduct__conn_body_resume(struct dduct_conn *c) {
  if (!c->body_blocked || c->state != C_BUSY) return;
  c->body_blocked = 0;
  /* The client's idle time counts from now, when we ask it for the body again: otherwise a timer
   * tick right after a long origin pause closes it as stalled before it could send. */
  uv_timer_again(&c->timer);
  update_reading(c);
}

void dduct__conn_close_after(struct dduct_conn *c) {
  c->keep_alive = 0;
}

void dduct__conn_waiting(struct dduct_conn *c, int waiting) {
  c->waiting = waiting;
}

/* ---- connection takeover: intercept and tunnel -------------------------------------------- */

const char *dduct__conn_input(const struct dduct_conn *c, size_t *len) {
  *len = c->in_len;
  return c->in;
}

struct dduct_stream *dduct__conn_stream(const struct dduct_conn *c) {
  return c->s;
}

int dduct__conn_send_raw(struct dduct_conn *c, const char *data, size_t len) {
  return cwrite(c, data, len, NULL, NULL);
}

void dduct__conn_push_layer(struct dduct_conn *c, struct dduct_stream *top, const char *host,
                            uint16_t port) {
  c->status = 200; /* the CONNECT is done: booked now, its requests on their own */
  book(c);
  c->h = NULL;
  c->in_len = 0;
  c->s = top;
  top->data = c;
  c->intercepted = 1;
  snprintf(c->ihost, sizeof(c->ihost), "%s", host);
  c->iport = port;
  /* A fresh parser for the requests inside the tunnel. */
  dduct__http_parser_free(&c->parser);
  dduct__http_parser_init(&c->parser, 0, c->parser.cbs, c);
  c->paused = 0;
  reset_request(c);
  c->head_started = 0;
  set_state(c, C_HEAD);
  arm(c, c->p->o.head_timeout_ms);
  (void)dduct__stream_read_start(c->s, client_read_cb);
}

struct dduct_stream *dduct__conn_hijack(struct dduct_conn *c, const char **pre, size_t *prelen) {
  *pre = c->in;
  *prelen = c->in_len;
  c->in_len = 0;
  set_state(c, C_TUNNEL);
  c->status = 200;
  c->waiting = 0;
  dduct__stream_read_stop(c->s);
  arm(c, c->p->o.tunnel_idle_timeout_ms);
  return c->s;
}

void dduct__conn_touch(struct dduct_conn *c) {
  if (c->state != C_CLOSED) uv_timer_again(&c->timer);
}

int dduct__conn_tls_below(const struct dduct_conn *c) {
  return c->tls_listener || c->intercepted;
}

void dduct__conn_hold(struct dduct_conn *c) {
  c->handles++;
}

void dduct__conn_release(struct dduct_conn *c) {
  handle_closed(c);
}

/* ---- errors ------------------------------------------------------------------------------- */

void dduct__conn_send_error(struct dduct_conn *c, int status, const char *fmt, ...) {
  char body[400];
  struct dduct_http_head h;
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(body, sizeof(body) - 1, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n > sizeof(body) - 2) n = (int)sizeof(body) - 2;
  LOG_WARN("http_proxy", "%s: %d %s", c->peer, status, body);
  body[n++] = '\n';
  body[n] = '\0';
  c->p->stats.errors++;
  dduct__stats_error(&c->p->metrics, status, c->peer, body);
  if (c->resp_started || c->state == C_CLOSED) {
    conn_close(c);
    return;
  }
  c->h = NULL; /* the request ends here: its handler (if any) let go of it */
  c->waiting = 0;
  set_state(c, C_BUSY);
  dduct__http_head_init(&h);
  (void)dduct__http_add(&h, "Content-Type", "text/plain; charset=utf-8");
  if (dduct__conn_send_whole(c, status, reason_of(status), &h, n, body, (size_t)n) != 0)
    conn_close(c);
  dduct__http_head_free(&h);
}

/* ---- routing ------------------------------------------------------------------------------ */

static int set_origin(struct dduct_conn *c, int https, const char *host, uint16_t port,
                      const char *path) {
  snprintf(c->rhost, sizeof(c->rhost), "%s", host);
  free(c->rpath);
  if (path[0] == '?') {
    /* "http://host?q" has an empty path: the origin-form target is "/?q", never "?q". */
    c->rpath = malloc(strlen(path) + 2);
    if (c->rpath != NULL) {
      c->rpath[0] = '/';
      strcpy(c->rpath + 1, path);
    }
  } else {
    c->rpath = dduct__strdup(path);
  }
  if (c->rpath == NULL) return DDUCT_ENOMEM;
  c->req.https = https;
  c->req.host = c->rhost;
  c->req.port = port;
  c->req.path = c->rpath;
  c->req.path_len_no_query = strcspn(c->rpath, "?#");
  return 0;
}

/* Work out the origin of a non-CONNECT request. 0, or an HTTP status to answer with. */
static int resolve_target(struct dduct_conn *c) {
  const struct dduct_http_head *h = &c->parser.head;
  const char *target = dduct__http_target(h), *path;
  char host[256];
  uint16_t port;
  int https;

  if (target[0] == '/') {
    if (c->intercepted) return set_origin(c, 1, c->ihost, c->iport, target) == 0 ? 0 : 500;
    if (!c->tls_listener) return 400;
    /* Transparent endpoint: the Host header (or SNI) names the origin. */
    {
      const char *hosthdr = dduct__http_get(h, "Host");
      if (hosthdr == NULL || *hosthdr == '\0') hosthdr = dduct__stream_query_str(c->s, DDUCT_STREAM_TLS_SNI, NULL);
      if (hosthdr == NULL || *hosthdr == '\0' ||
          dduct__http_parse_authority(hosthdr, host, sizeof(host), &port, 443) != 0)
        return 400;
      return set_origin(c, 1, host, port, target) == 0 ? 0 : 500;
    }
  }
  if (dduct__http_parse_url(target, &https, host, sizeof(host), &port, &path) != 0) return 400;
  return set_origin(c, https, host, port, path) == 0 ? 0 : 500;
}

static int not_chunked_cb(const char *tok, size_t len, void *arg) {
  (void)arg;
  return !(len == 7 && strncasecmp(tok, "chunked", 7) == 0);
}

/* 1 if every Transfer-Encoding token is "chunked" (llhttp already refuses it twice). */
static int only_chunked(const struct dduct_http_head *h) {
  return !dduct__http_each_token(h, "Transfer-Encoding", not_chunked_cb, NULL);
}

/* Offer the request to the proxy's routes from entry `from` on, in order, until one takes it.
 * None does: the request's origin could not be worked out (its error), or a route is missing. */
static void dispatch(struct dduct_conn *c, size_t from) {
  const struct dduct__route *r = c->p->routes;
  for (size_t i = from; i < c->p->nroutes; i++) {
    c->route = i;
    if (r[i].handle(r[i].ctx, c, &c->req)) return;
  }
  if (c->target_status != 0)
    dduct__conn_send_error(c, c->target_status, "%s", c->target_why);
  else
    dduct__conn_send_error(c, 500, "no route takes %s %.200s", c->req.method,
                           dduct__http_target(c->req.head));
}

/* A CONNECT's target is its origin (host:port). */
static void connect_target(struct dduct_conn *c) {
  const char *target = dduct__http_target(&c->parser.head);
  char host[256];
  uint16_t port;

  c->keep_alive = 0;
  c->req.connect = 1;
  if (dduct__http_parse_authority(target, host, sizeof(host), &port, 443) != 0) {
    c->target_status = 400;
    snprintf(c->target_why, sizeof(c->target_why), "CONNECT target \"%.200s\" is not host:port",
             target);
  } else if (set_origin(c, 0, host, port, "") != 0) {
    c->target_status = 500;
    snprintf(c->target_why, sizeof(c->target_why), "internal error routing \"%.200s\"", target);
  }
}

static void route(struct dduct_conn *c) {
  struct dduct_http_head *h = &c->parser.head;
  int status;

  set_state(c, C_BUSY);
  c->t0 = uv_now(c->p->loop);
  dduct__txn_begin(&c->txn, DDUCT_ROUTE_LOCAL);
  c->p->stats.requests++;
  c->keep_alive = dduct__http_parser_keep_alive(&c->parser) && !c->draining;
  c->req.head = h;
  c->req.method = dduct__http_method(h);
  c->req.content_length = dduct__http_parser_content_length(&c->parser);
  c->req.chunked = dduct__http_parser_chunked(&c->parser);
  c->req.is_head = strcmp(c->req.method, "HEAD") == 0;
  c->req_has_body = c->req.chunked || c->req.content_length > 0;
  c->target_status = 0;
  arm(c, c->p->o.idle_timeout_ms);
  if (c->denied) {
    dduct__conn_send_error(c, 403, "client %s is not allowed to use this proxy (allow_clients)", c->peer);
    return;
  }
  if (dduct__http_get(h, "Transfer-Encoding") != NULL && (h->minor == 0 || !only_chunked(h))) {
    /* We re-frame bodies as plain chunked: another coding would reach the origin undeclared,
     * and HTTP/1.0 has no Transfer-Encoding at all (RFC 9112 6.1: faulty framing). */
    dduct__conn_send_error(c, h->minor == 0 ? 400 : 501, "Transfer-Encoding \"%.100s\" is not supported",
                  dduct__http_get(h, "Transfer-Encoding"));
    return;
  }
  if (strcmp(c->req.method, "CONNECT") == 0 && c->intercepted) {
    /* A CONNECT inside an intercepted connection would be intercepted again, each layer one
     * more TLS stream reading into the next on the stack: 130 of them from one client crashed
     * the process (review-sec #1). The client believes it talks to the origin here, and an
     * origin does not proxy: one TLS layer (two from tls_bind) is all there is. */
    c->keep_alive = 0;
    dduct__conn_send_error(c, 400, "CONNECT inside an intercepted connection (%s:%u) is not allowed",
                           c->ihost, c->iport);
    return;
  }
  if (strcmp(c->req.method, "CONNECT") == 0) {
    connect_target(c);
  } else if ((status = resolve_target(c)) != 0) {
    char shown[4096];
    c->target_status = status;
    snprintf(c->target_why, sizeof(c->target_why),
             status == 400 ? "request target \"%.200s\" is not an absolute URL "
                             "(or has no usable Host on a TLS endpoint)"
                           : "internal error routing \"%.200s\"",
             shown_target(dduct__http_target(h), shown, sizeof(shown)));
  } else if (c->kind != DDUCT_LISTEN_ADMIN) {
    /* We do not speak the upgraded protocols: forward as a plain request, then close. */
    if (dduct__http_get(h, "Upgrade") != NULL) {
      dduct__http_remove(h, "Upgrade");
      c->keep_alive = 0;
    }
    c->txn.route = DDUCT_ROUTE_FORWARD;
    c->txn.cache = DDUCT_CACHE_BYPASS;
  }
  dispatch(c, 0);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int req_on_head(struct dduct_http_parser *p) {
  struct dduct_conn *c = p->data;
  c->ev_head = 1;
  return 2; /* pause: route before any body byte is parsed */
}

static void req_on_body(struct dduct_http_parser *p, const char *data, size_t len) {
  struct dduct_conn *c = p->data;
  if (c->h != NULL && c->h->on_body != NULL && c->h->on_body(c->harg, data, len) != 0)
    c->body_blocked = 1;
}

static int req_on_done(struct dduct_http_parser *p) {
  struct dduct_conn *c = p->data;
  c->ev_done = 1;
  return 1; /* pause: the next pipelined request waits for this response */
}

static const struct dduct_http_parser_cbs req_cbs = {req_on_head, req_on_body, req_on_done};

static void consume(struct dduct_conn *c, size_t used) {
  if (used == 0) return;
  memmove(c->in, c->in + used, c->in_len - used);
  c->in_len -= used;
  if (c->in_len == 0 && c->in_cap > IN_FIRST) { /* a large head or body went through */
    free(c->in);
    c->in = NULL;
    c->in_cap = 0;
  }
}

static void message_done(struct dduct_conn *c) {
  c->req_done = 1;
  c->req_body_wanted = 0;
  if (c->h != NULL && c->h->on_body_end != NULL) c->h->on_body_end(c->harg);
  if (c->resp_done) request_finished(c);
}

static void parse_error(struct dduct_conn *c, int rc) {
  c->keep_alive = 0;
  c->req_done = 0;
  if (c->state == C_HEAD) {
    set_state(c, C_BUSY);
    c->t0 = uv_now(c->p->loop);
    dduct__txn_begin(&c->txn, DDUCT_ROUTE_LOCAL);
    if (rc == DDUCT_ETOOBIG && c->parser.target_too_big)
      dduct__conn_send_error(c, 414, "request target longer than %u bytes", DDUCT_HTTP_HEAD_MAX);
    else if (rc == DDUCT_ETOOBIG)
      dduct__conn_send_error(c, 431, "request head larger than %u bytes or %u headers",
                             DDUCT_HTTP_HEAD_MAX, DDUCT_HTTP_HEADERS_MAX);
    else
      dduct__conn_send_error(c, 400, "malformed request: %s", c->parser.err_reason);
    return;
  }
  /* A broken body: stop the upload; answer 400 if nothing was answered yet. */
  if (c->state == C_BUSY && !c->resp_started) {
    const struct dduct_conn_handler *h = c->h;
    c->h = NULL;
    if (h != NULL && h->on_abort != NULL) h->on_abort(c->harg); /* the upload stops */
    c->req_body_wanted = 0;
    dduct__conn_send_error(c, 400, "malformed request body: %s", c->parser.err_reason);
    return;
  }
  LOG_WARN("http_proxy", "%s: malformed request body: %s", c->peer, c->parser.err_reason);
  conn_close(c);
}

static void process_loop(struct dduct_conn *c);

static void process(struct dduct_conn *c) {
  c->in_process++;
  process_loop(c);
  c->in_process--;
}

static void process_loop(struct dduct_conn *c) {
  while (!c->paused && (c->state == C_HEAD || c->state == C_BUSY)) {
    size_t used = 0;
    int rc;
    c->ev_head = c->ev_done = 0;
    rc = dduct__http_parser_execute(&c->parser, c->in != NULL ? c->in : "", c->in_len, &used);
    if (c->state == C_CLOSED) return;
    if (rc < 0) {
      parse_error(c, rc);
      return;
    }
    consume(c, used);
    if (rc == 0) return;
    c->paused = 1;
    if (rc == DDUCT_HTTP_UPGRADE) c->ev_done = 1; /* a non-CONNECT upgrade: one message, then close */
    if (c->ev_head) {
      uv_timer_stop(&c->timer);
      route(c);
    } else if (c->ev_done) {
      message_done(c);
    }
  }
}

static void update_reading(struct dduct_conn *c) {
  int want;
  switch (c->state) {
  case C_HEAD: want = !c->paused && c->in_len < IN_CAP / 2; break;
  case C_BUSY: want = !c->paused && c->req_body_wanted && !c->body_blocked; break;
  case C_LINGER: want = 1; break;
  default: return;
  }
  if (want) (void)dduct__stream_read_start(c->s, client_read_cb);
  else dduct__stream_read_stop(c->s);
}

static void client_read_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  struct dduct_conn *c = s->data;
  if (c->state == C_LINGER) {
    if (nread < 0) conn_close(c);
    return;
  }
  if (nread < 0) {
    if (c->state == C_HEAD && c->in_len > 0 && nread == UV_EOF)
      LOG_DEBUG("http_proxy", "%s: closed in the middle of a request head", c->peer);
    else if (nread == DDUCT_ETLS && (c->tls_listener || c->intercepted))
      LOG_DEBUG("tls_mitm", "%s: %s", c->peer,
                dduct__stream_query_str(c->s, DDUCT_STREAM_TLS_ERROR, "TLS failure"));
    else if (nread != UV_EOF && nread != UV_ECONNRESET)
      LOG_DEBUG("http_proxy", "%s: %s", c->peer, dduct_strerror((int)nread));
    if (c->state == C_BUSY && c->h != NULL)
      LOG_DEBUG("http_proxy", "%s: client went away during %s", c->peer, c->req.method);
    conn_close(c);
    return;
  }
  if (c->in_len + (size_t)nread > IN_CAP) {
    parse_error(c, DDUCT_ETOOBIG);
    return;
  }
  if (c->in_len + (size_t)nread > c->in_cap) {
    /* Grown as needed (most heads are a few hundred bytes): a connection whose client stops
     * reading its answer keeps a few KiB here, not IN_CAP. */
    size_t cap = DDUCT_MAX(c->in_cap, (size_t)IN_FIRST);
    char *in;
    while (cap < c->in_len + (size_t)nread) cap *= 2;
    cap = DDUCT_MIN(cap, (size_t)IN_CAP);
    if ((in = realloc(c->in, cap)) == NULL) {
      conn_close(c);
      return;
    }
    c->in = in;
    c->in_cap = cap;
  }
  memcpy(c->in + c->in_len, data, (size_t)nread);
  c->in_len += (size_t)nread;
  if (c->state == C_HEAD && !c->head_started) {
    c->head_started = 1;
    arm(c, c->head_ms); /* short for a connection accepted near max_connections */
  } else if (c->state == C_BUSY) {
    uv_timer_again(&c->timer);
  }
  process(c);
  if (c->state != C_CLOSED) update_reading(c);
}

/* ---- accept ------------------------------------------------------------------------------- */

/* A tcp_bind client outside allow_clients gets its 403 at once, before it sends anything, and
 * the connection lingers (LINGER_MS at most) so the answer is read, not reset. It holds no
 * max_connections slot meanwhile: idle denied sockets waiting for head_timeout kept allowed
 * clients out (review-sec #4). At most DENIED_LINGER_MAX per loop linger; past that they are
 * closed at once. Logged once a second at most, like the tls_bind refusals. */
#define DENIED_LINGER_MAX 64
static void deny_at_accept(struct dduct_proxy *p, struct dduct_conn *c) {
  static const char body[] = "client is not allowed to use this proxy (allow_clients)\n";
  char resp[256];
  uint64_t now = uv_now(p->loop);
  int n = snprintf(resp, sizeof(resp),
                   "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                   sizeof(body) - 1, body);
  p->stats.errors++;
  dduct__stats_error(&p->metrics, 403, c->peer, body);
  if (now - p->last_denied_log >= 1000) {
    p->last_denied_log = now;
    LOG_WARN("http_proxy", "%s: 403 not allowed to use this proxy (allow_clients)", c->peer);
  }
  if (p->denied_lingering >= DENIED_LINGER_MAX || n <= 0 || (size_t)n >= sizeof(resp) ||
      cwrite_now(c, resp, (size_t)n, NULL, NULL) != 0) {
    conn_close(c);
    return;
  }
  c->denied_out = 1;
  p->denied_lingering++;
  atomic_fetch_sub_explicit(p->conns_all, 1, memory_order_relaxed);
  c->keep_alive = 0;
  linger(c);
}

void dduct__conn_accept(struct dduct_proxy *p, uv_stream_t *server, int kind) {
  int tls = kind == DDUCT_LISTEN_TLS;
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  struct dduct_conn *c = calloc(1, sizeof(*c));
  struct dduct_stream *tcp = c != NULL ? dduct__tcp_stream_new(p->loop) : NULL;
  uv_tcp_t *h;

  if (tcp == NULL) {
    free(c);
    return; /* the connection stays in the backlog; the next accept retries */
  }
  h = dduct__tcp_stream_handle(tcp);
  c->p = p;
  c->s = tcp;
  tcp->data = c;
  c->handles = 4;
  uv_timer_init(p->loop, &c->timer);
  uv_idle_init(p->loop, &c->kick);
  uv_check_init(p->loop, &c->flush);
  dduct__proxy_conn_add(p, &c->node, c);
  dduct__http_parser_init(&c->parser, 0, &req_cbs, c);
  c->state = C_HEAD;
  c->tls_listener = tls;
  c->kind = kind;
  if (uv_accept(server, (uv_stream_t *)h) != 0) {
    conn_close(c);
    return;
  }
  p->stats.connections_accepted++;
  snprintf(c->peer, sizeof(c->peer), "?");
  memset(&ss, 0, sizeof(ss)); /* a peer already gone (ENOTCONN) must match no allow_clients CIDR */
  if (uv_tcp_getpeername(h, (struct sockaddr *)&ss, &len) == 0)
    dduct__addr_str((struct sockaddr *)&ss, c->peer, sizeof(c->peer));
  (void)uv_tcp_nodelay(h, 1);
  /* One address cannot take every slot (idle sockets locked everyone else out until
   * head_timeout). Closed at once: a slot held for an answer is what it must not get. */
  if (dduct__proxy_client_take(p, (struct sockaddr *)&ss) == DDUCT_EAGAIN) {
    uint64_t now = uv_now(p->loop);
    p->stats.errors++;
    if (now - p->last_percap_log >= 1000) {
      p->last_percap_log = now;
      LOG_WARN("http_proxy", "%s: already %u connections from this address "
               "(max_connections_per_client): closed", c->peer,
               p->o.max_connections_per_client);
    }
    conn_close(c);
    return;
  }
  c->counted = 1;
  memcpy(&c->addr, &ss, sizeof(ss));
  /* Not an open relay. On tcp_bind such a client gets a 403 naming the reason; on tls_bind it
   * is closed before any TLS byte: the handshake (RSA signature, perhaps a minted leaf) is not
   * for it. */
  c->denied = !dduct__acl_match(&p->allow, (struct sockaddr *)&ss);
  if (c->denied && tls) {
    uint64_t now = uv_now(p->loop);
    p->stats.errors++;
    if (now - p->last_denied_log >= 1000) { /* a flood of them must not flood the log */
      p->last_denied_log = now;
      LOG_WARN("tls_mitm", "%s: not allowed to use this proxy (allow_clients): closed", c->peer);
    }
    conn_close(c);
    return;
  }
  if (c->denied) {
    deny_at_accept(p, c);
    return;
  }
  if (tls) {
    struct dduct_stream *t = dduct__tls_server_new(p->tls_server, tcp, NULL, NULL, 0);
    if (t == NULL) {
      conn_close(c);
      return;
    }
    c->s = t;
    t->data = c;
  }
  c->head_ms = dduct__proxy_head_timeout(p);
  arm(c, c->head_ms);
  (void)dduct__stream_read_start(c->s, client_read_cb);
}

void dduct__conn_drain(struct dduct_conn *c) {
  c->draining = 1;
  if (c->state == C_HEAD && !c->head_started && c->cork != NULL) linger(c); /* answer first */
  else if (c->state == C_HEAD && !c->head_started) conn_close(c);
}

void dduct__conn_kill(struct dduct_conn *c) {
  LOG_DEBUG("http_proxy", "%s: closed by shutdown (state %d)", c->peer, (int)c->state);
  conn_close(c);
}
