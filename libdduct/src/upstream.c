/* The origin client (see upstream.h): connections (uconn) own every handle and are freed only
 * from close callbacks; a fetch is plain memory that uses one connection at a time (a retry
 * or a redirect moves it to another). */
#include <assert.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "acl.h"
#include "chain.h"
#include "internal.h"
#include "tls.h"
#include "upstream.h"

#define POOL_MAX_IDLE 64
#define POOL_IDLE_MS 30000
#define REQ_HEAD_CAP (DDUCT_HTTP_HEAD_MAX + 1024)

#define CONNECT_RESP_CAP (16 * 1024)

enum ustate { U_RESOLVING, U_CONNECTING, U_HOP_TLS, U_CONNECT, U_TLS, U_BUSY, U_IDLE, U_DEAD };

/* How a connection reaches its origin. */
enum route {
  R_DIRECT, /* TCP (+ TLS) to the origin */
  R_PROXY,  /* to the upstream proxy (+ TLS to it): CONNECT (+ TLS to the origin) for https and
               raw connections, absolute-form requests for http */
  R_PARENT, /* to a parent dduct (+ TLS to it): absolute-form requests for any origin */
};

struct uconn {
  struct dduct_upstream *u;
  struct uconn *next, *prev; /* pool links while idle */
  enum ustate state;
  int https;
  char host[256]; /* the origin (the parent itself for R_PARENT) */
  uint16_t port;
  enum route route;
  const char *hop_host; /* what TCP connects to: the origin, the proxy or the parent */
  uint16_t hop_port;
  int hop_tls;          /* TLS to the proxy or the parent */
  const struct dduct_parent *parent;
  char label[700];      /* "host:port", "host:port via upstream proxy URL", "parent URL" */
  char *cresp;          /* the proxy's answer to CONNECT, while it comes */
  size_t cresp_len;
  char key[600];
  struct dduct_stream *s; /* top of the chain, NULL once handed to a tunnel or closed */
  uv_timer_t timer;       /* connect, read and pool-idle timeouts */
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  struct addrinfo *ai, *ai_cur;
  struct sockaddr_storage fixed; /* pinned or literal address */
  int have_fixed, fixed_tried;
  int refs;                      /* timer + stream + pending getaddrinfo */
  int last_err;
  struct dduct_fetch *f;         /* the fetch using this connection */
  struct dduct_connect *raw;     /* or a tunnel waiting for it */
  struct dduct_http_parser parser;
  int parser_live;
  int got_bytes;                 /* response bytes seen for the current request */
  int reused;
  int done_msg;                  /* the response message completed */
  uint64_t t0;                   /* uv_hrtime at creation: connect time (metrics) */
  char why[300];
};

struct dduct_upstream {
  struct dduct_upstream_config cfg;
  /* Fetches that failed inside dduct__fetch_start: their on_done runs from this timer, in the
   * next loop turn, never inside the call that started them (libuv's delayed_error). */
  uv_timer_t defer;
  int defer_init;
  struct dduct_fetch *deferred; /* oldest first */
  struct uconn *idle; /* pool, most recent first */
  size_t nidle;
  size_t live;
  int closing;
  void (*idle_cb)(void *arg);
  void *idle_arg;
};

struct dduct_connect {
  struct uconn *c;
  dduct_connect_cb cb;
  void *arg;
  char *leftover; /* bytes behind the proxy's CONNECT answer */
  size_t leftover_len;
};

struct dduct_fetch {
  struct dduct_upstream *u;
  const struct dduct_fetch_cbs *cbs;
  void *data;
  struct uconn *c;
  int https;
  char host[256];
  uint16_t port;
  const struct dduct_parent *parent;
  char method[32];
  char *target;
  char url[600];
  struct dduct_http_head hdrs;
  int64_t body_len;
  int body_ended;
  int head_sent;
  char *pend; /* request body waiting for the connection */
  size_t pend_len, pend_cap;
  unsigned redirects_left;
  int redirecting;
  char *location;
  int redirect_status;
  int retried;
  int paused;
  int delivered_head;
  int starting;                 /* inside dduct__fetch_start */
  int deferred;                 /* failed while starting: on u->deferred until the timer */
  int defer_status;
  char defer_why[300];
  struct dduct_fetch *defer_next;
};

static void uconn_close(struct uconn *c);
static void fetch_connect(struct dduct_fetch *f);
static void send_request(struct dduct_fetch *f, struct uconn *c);

/* ---- connection lifetime ------------------------------------------------------------------ */

static void uconn_unref(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  if (--c->refs > 0) return;
  if (c->ai != NULL) uv_freeaddrinfo(c->ai);
  if (c->parser_live) dduct__http_parser_free(&c->parser);
  free(c->cresp);
  free(c);
  u->live--;
  if (u->live == 0 && u->closing && u->idle_cb != NULL) u->idle_cb(u->idle_arg);
}

static void timer_close_cb(uv_handle_t *h) {
  uconn_unref(DDUCT_CONTAINER_OF((uv_timer_t *)h, struct uconn, timer));
}

static void stream_close_cb(struct dduct_stream *s) {
  uconn_unref(s->data);
}

static void pool_remove(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  if (c->state != U_IDLE) return;
  if (c->prev != NULL) c->prev->next = c->next;
  else u->idle = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  c->next = c->prev = NULL;
  u->nidle--;
}

static void close_stream(struct uconn *c) {
  if (c->s == NULL) return;
  c->s->data = c;
  dduct__stream_close(c->s, stream_close_cb);
  c->s = NULL;
}

static void uconn_close(struct uconn *c) {
  if (c->state == U_DEAD) return;
  pool_remove(c);
  c->state = U_DEAD;
  c->f = NULL;
  close_stream(c);
  uv_close((uv_handle_t *)&c->timer, timer_close_cb);
  if (c->gai.data == c) uv_cancel((uv_req_t *)&c->gai);
}

/* The pool key: connections are interchangeable only along the same route. */
static void route_key(char *out, size_t cap, enum route r, int https, const char *host,
                      uint16_t port, const struct dduct_parent *parent) {
  if (r == R_PARENT) snprintf(out, cap, "parent %s", parent->shown);
  else {
    int at = dduct__origin_format(out, cap, &(struct dduct_origin){https, host, port},
                                  DDUCT_ORIGIN_PORT);
    if (r == R_PROXY && at >= 0 && (size_t)at < cap)
      snprintf(out + at, cap - (size_t)at, " via proxy");
  }
}

static enum route pick_route(const struct dduct_upstream *u, const char *host,
                             const struct dduct_parent *parent) {
  if (parent != NULL) return R_PARENT;
  return dduct__uproxy_applies(u->cfg.proxy, host) ? R_PROXY : R_DIRECT;
}

/* What TCP reaches, for messages about connecting: the origin, the proxy or the parent. */
static const char *hop_label(const struct uconn *c, char *buf, size_t cap) {
  if (c->route == R_PROXY) snprintf(buf, cap, "upstream proxy %s (for %s:%u)", c->u->cfg.proxy->shown,
                                    c->host, c->port);
  else if (c->route == R_PARENT) snprintf(buf, cap, "parent %s", c->parent->shown);
  else snprintf(buf, cap, "%s:%u", c->host, c->port);
  return buf;
}

static struct uconn *uconn_new(struct dduct_upstream *u, int https, const char *host,
                               uint16_t port, const struct dduct_parent *parent) {
  struct uconn *c = calloc(1, sizeof(*c));
  if (c != NULL) c->t0 = uv_hrtime();
  if (c == NULL) return NULL;
  if (uv_timer_init(u->cfg.loop, &c->timer) != 0) {
    free(c);
    return NULL;
  }
  c->u = u;
  c->refs = 1;
  c->https = https;
  c->route = pick_route(u, host, parent);
  c->parent = parent;
  if (c->route == R_PARENT) {
    host = parent->host;
    port = parent->port;
  }
  snprintf(c->host, sizeof(c->host), "%s", host);
  c->port = port;
  c->hop_host = c->host;
  c->hop_port = c->port;
  if (c->route == R_PROXY) {
    c->hop_host = u->cfg.proxy->host;
    c->hop_port = u->cfg.proxy->port;
    c->hop_tls = u->cfg.proxy->https;
    snprintf(c->label, sizeof(c->label), "origin %s:%u via upstream proxy %s", host, port,
             u->cfg.proxy->shown);
  } else if (c->route == R_PARENT) {
    c->hop_tls = parent->https;
    snprintf(c->label, sizeof(c->label), "parent %s", parent->shown);
  } else {
    snprintf(c->label, sizeof(c->label), "origin %s:%u", host, port);
  }
  route_key(c->key, sizeof(c->key), c->route, https, host, port, parent);
  u->live++;
  return c;
}

/* The fetch's URL for messages: scheme://host:port/target (the port always written). */
static void fetch_url(struct dduct_fetch *f) {
  int at = dduct__origin_format(f->url, sizeof(f->url),
                                &(struct dduct_origin){f->https, f->host, f->port},
                                DDUCT_ORIGIN_PORT);
  if (at >= 0 && (size_t)at < sizeof(f->url))
    snprintf(f->url + at, sizeof(f->url) - (size_t)at, "%s", f->target);
}

/* ---- failure ------------------------------------------------------------------------------ */

static void fetch_free(struct dduct_fetch *f) {
  dduct__http_head_free(&f->hdrs);
  free(f->target);
  free(f->pend);
  free(f->location);
  free(f);
}

static void defer_cb(uv_timer_t *t);

static void fetch_finish(struct dduct_fetch *f, int status, const char *why) {
  struct dduct_upstream *u = f->u;
  if (f->starting) { /* the caller is still inside dduct__fetch_start: tell it next turn */
    struct dduct_fetch **tail = &u->deferred;
    assert(!f->deferred);
    if (!u->defer_init) {
      (void)uv_timer_init(u->cfg.loop, &u->defer);
      u->defer_init = 1;
    }
    f->deferred = 1;
    f->defer_status = status;
    snprintf(f->defer_why, sizeof(f->defer_why), "%s", why != NULL ? why : "");
    while (*tail != NULL) tail = &(*tail)->defer_next;
    *tail = f;
    uv_timer_start(&u->defer, defer_cb, 0, 0);
    return;
  }
  f->cbs->on_done(f, status, why);
  fetch_free(f);
}

/* Deliver the failures of fetches that could not start. */
static void deliver_deferred(struct dduct_upstream *u) {
  while (u->deferred != NULL) {
    struct dduct_fetch *f = u->deferred;
    u->deferred = f->defer_next;
    f->deferred = 0;
    f->cbs->on_done(f, f->defer_status, f->defer_why[0] != '\0' ? f->defer_why : NULL);
    fetch_free(f);
  }
}

static void defer_cb(uv_timer_t *t) {
  deliver_deferred(DDUCT_CONTAINER_OF(t, struct dduct_upstream, defer));
}

static void unlink_deferred(struct dduct_fetch *f) {
  struct dduct_fetch **pp = &f->u->deferred;
  while (*pp != f) pp = &(*pp)->defer_next;
  *pp = f->defer_next;
  f->deferred = 0;
}

/* The connection failed: tell its user, close it. */
static void uconn_fail(struct uconn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void uconn_fail(struct uconn *c, int status, const char *fmt, ...) {
  struct dduct_fetch *f = c->f;
  struct dduct_connect *raw = c->raw;
  int retry;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->why, sizeof(c->why), fmt, ap);
  va_end(ap);
  /* A pooled connection the origin closed just before our request: try once on a new one when
   * nothing of the response came and the request can be sent again. */
  retry = f != NULL && c->reused && !c->got_bytes && f->body_len == 0 && !f->retried;
  c->f = NULL;
  c->raw = NULL;
  {
    char why[300];
    memcpy(why, c->why, sizeof(why));
    uconn_close(c);
    if (f != NULL) {
      f->c = NULL;
      if (retry) {
        f->retried = 1;
        f->head_sent = 0;
        fetch_connect(f);
      } else {
        fetch_finish(f, status, why);
      }
    }
    if (raw != NULL) {
      raw->cb(raw->arg, NULL, status, why);
      free(raw->leftover);
      free(raw);
    }
  }
}

/* ---- connecting --------------------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t) {
  struct uconn *c = DDUCT_CONTAINER_OF(t, struct uconn, timer);
  switch (c->state) {
  case U_RESOLVING:
  case U_CONNECTING:
  case U_TLS:
  case U_HOP_TLS:
  case U_CONNECT: {
    char hop[700];
    uconn_fail(c, UV_ETIMEDOUT, "connecting to %s timed out after %u s",
               hop_label(c, hop, sizeof(hop)), c->u->cfg.connect_timeout_ms / 1000);
    break;
  }
  case U_BUSY:
    uconn_fail(c, UV_ETIMEDOUT, "%s timed out: nothing received for %u s", c->label,
               c->u->cfg.upstream_timeout_ms / 1000);
    break;
  default:
    uconn_close(c);
  }
}

static void ready(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  uv_timer_stop(&c->timer);
  if (u->cfg.stat_connects != NULL) (*u->cfg.stat_connects)++;
  if (u->cfg.stats != NULL) dduct__stats_connect_time(u->cfg.stats, c->t0);
  if (c->raw != NULL) {
    struct dduct_connect *raw = c->raw;
    struct dduct_stream *s = c->s;
    c->raw = NULL;
    c->s = NULL;
    c->refs--; /* the stream is the tunnel's now */
    s->data = NULL;
    uconn_close(c);
    raw->cb(raw->arg, s, 0, NULL);
    free(raw->leftover);
    free(raw);
    return;
  }
  if (c->f == NULL) {
    uconn_close(c);
    return;
  }
  send_request(c->f, c);
}

static void start_tls(struct uconn *c, enum ustate state);
static void after_hop(struct uconn *c);

static void handshake_cb(struct dduct_stream *s, int status, void *arg) {
  struct uconn *c = arg;
  char hop[700];
  if (c->state == U_DEAD) return;
  if (status != 0) {
    if (c->state == U_HOP_TLS)
      uconn_fail(c, status, "TLS to %s: %s", hop_label(c, hop, sizeof(hop)),
                 dduct__stream_query_str(s, DDUCT_STREAM_TLS_ERROR, "TLS failure"));
    else
      uconn_fail(c, status, "TLS to %s:%u: %s", c->host, c->port, dduct__stream_query_str(s, DDUCT_STREAM_TLS_ERROR, "TLS failure"));
    return;
  }
  dduct__stream_read_stop(s);
  if (c->state == U_HOP_TLS) after_hop(c);
  else ready(c);
}

/* TLS on top of the chain: to the proxy or the parent (U_HOP_TLS), or to the origin (U_TLS). */
static void start_tls(struct uconn *c, enum ustate state) {
  struct dduct_tls_client_conf *conf = c->u->cfg.tls;
  const char *name = state == U_HOP_TLS ? c->hop_host : c->host;
  struct dduct_stream *tls;
  if (state == U_HOP_TLS && c->route == R_PARENT && c->u->cfg.parent_tls != NULL)
    conf = c->u->cfg.parent_tls;
  if (state == U_HOP_TLS && c->route == R_PROXY && c->u->cfg.proxy_tls != NULL)
    conf = c->u->cfg.proxy_tls;
  tls = dduct__tls_client_new(conf, c->s, name);
  if (tls == NULL) {
    uconn_fail(c, DDUCT_ENOMEM, "TLS to %s:%u: out of memory", name, c->port);
    return;
  }
  c->s = tls;
  tls->data = c;
  c->state = state;
  dduct__tls_on_handshake(tls, handshake_cb, c);
}

/* A byte stream to the origin (or to a hop that takes absolute-form requests) is open. */
static void origin_reached(struct uconn *c) {
  if (c->route != R_PARENT && c->https && c->raw == NULL) start_tls(c, U_TLS);
  else ready(c);
}

/* ---- CONNECT through the upstream proxy --------------------------------------------------- */

static void connect_refused(struct uconn *c, int status, const char *reason) {
  const struct dduct_uproxy *x = c->u->cfg.proxy;
  if (status == 407 && x->auth == NULL)
    uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s wants credentials (407 %s) for CONNECT %s:%u "
               "and upstream_proxy has none (add user:password@)", x->shown, reason, c->host,
               c->port);
  else if (status == 407)
    uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s refused the credentials of user '%s' (407 %s) "
               "for CONNECT %s:%u", x->shown, x->user, reason, c->host, c->port);
  else
    uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s answered %d %s to CONNECT %s:%u", x->shown,
               status, reason, c->host, c->port);
}

/* The proxy's answer to CONNECT: a status line and headers, no body. */
static void connect_answer(struct uconn *c, size_t head_len) {
  char reason[120] = "";
  const char *sp, *eol;
  int status = 0;
  size_t rest = c->cresp_len - head_len;
  c->cresp[head_len - 1] = '\0';
  if (strncmp(c->cresp, "HTTP/1.", 7) != 0 || (sp = strchr(c->cresp, ' ')) == NULL ||
      sscanf(sp + 1, "%3d", &status) != 1 || status < 100) {
    uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s sent an invalid answer to CONNECT %s:%u",
               c->u->cfg.proxy->shown, c->host, c->port);
    return;
  }
  eol = strpbrk(sp + 1, "\r\n");
  if (strlen(sp + 1) > 4) {
    size_t n = (size_t)((eol != NULL ? eol : sp + 1 + strlen(sp + 1)) - (sp + 5));
    if (sp[4] == ' ' && n < sizeof(reason)) {
      memcpy(reason, sp + 5, n);
      reason[n] = '\0';
      for (char *q = reason; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
    }
  }
  if (status < 200 || status > 299) {
    connect_refused(c, status, reason);
    return;
  }
  if (rest > 0) {
    /* The far end spoke first: a raw tunnel passes that on; TLS to the origin cannot start. */
    if (c->raw == NULL) {
      uconn_fail(c, DDUCT_EPROTO, "upstream proxy %s: %zu unexpected bytes after its answer to "
                 "CONNECT %s:%u", c->u->cfg.proxy->shown, rest, c->host, c->port);
      return;
    }
    if ((c->raw->leftover = malloc(rest)) == NULL) {
      uconn_fail(c, DDUCT_ENOMEM, "out of memory");
      return;
    }
    memcpy(c->raw->leftover, c->cresp + head_len, rest);
    c->raw->leftover_len = rest;
  }
  free(c->cresp);
  c->cresp = NULL;
  c->cresp_len = 0;
  dduct__stream_read_stop(c->s);
  origin_reached(c);
}

static void connect_read_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  struct uconn *c = s->data;
  const char *end;
  char *grown;
  if (c->state != U_CONNECT) return;
  if (nread < 0) {
    uconn_fail(c, nread == UV_EOF ? UV_ECONNRESET : (int)nread,
               "upstream proxy %s closed the connection during CONNECT %s:%u (%s)",
               c->u->cfg.proxy->shown, c->host, c->port,
               nread == UV_EOF ? "EOF" : dduct_strerror((int)nread));
    return;
  }
  if (c->cresp_len + (size_t)nread > CONNECT_RESP_CAP) {
    uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s: answer to CONNECT %s:%u too large",
               c->u->cfg.proxy->shown, c->host, c->port);
    return;
  }
  if ((grown = realloc(c->cresp, c->cresp_len + (size_t)nread + 1)) == NULL) {
    uconn_fail(c, DDUCT_ENOMEM, "out of memory");
    return;
  }
  c->cresp = grown;
  memcpy(c->cresp + c->cresp_len, data, (size_t)nread);
  c->cresp_len += (size_t)nread;
  c->cresp[c->cresp_len] = '\0';
  end = strstr(c->cresp, "\r\n\r\n");
  if (end != NULL) connect_answer(c, (size_t)(end - c->cresp) + 4);
}

static void send_connect(struct uconn *c) {
  const struct dduct_uproxy *x = c->u->cfg.proxy;
  char req[1024];
  int v6 = strchr(c->host, ':') != NULL, n;
  n = snprintf(req, sizeof(req),
               v6 ? "CONNECT [%s]:%u HTTP/1.1\r\nHost: [%s]:%u\r\n%s%s%s\r\n"
                  : "CONNECT %s:%u HTTP/1.1\r\nHost: %s:%u\r\n%s%s%s\r\n",
               c->host, c->port, c->host, c->port, x->auth != NULL ? "Proxy-Authorization: " : "",
               x->auth != NULL ? x->auth : "", x->auth != NULL ? "\r\n" : "");
  c->state = U_CONNECT;
  if (n < 0 || (size_t)n >= sizeof(req) || dduct__stream_write(c->s, req, (size_t)n, NULL, NULL) != 0 ||
      dduct__stream_read_start(c->s, connect_read_cb) != 0) {
    memset(req, 0, sizeof(req));
    uconn_fail(c, DDUCT_EPROXY, "cannot send CONNECT %s:%u to upstream proxy %s", c->host, c->port,
               x->shown);
    return;
  }
  memset(req, 0, sizeof(req));
}

/* TCP (and TLS) to the first hop is up. */
static void after_hop(struct uconn *c) {
  if (c->route == R_PROXY && (c->https || c->raw != NULL)) send_connect(c);
  else origin_reached(c);
}

static void try_next(struct uconn *c);

static void connect_cb(uv_connect_t *req, int status) {
  struct uconn *c = DDUCT_CONTAINER_OF(req, struct uconn, creq);
  if (c->state == U_DEAD) return;
  if (status < 0) {
    c->last_err = status;
    close_stream(c);
    try_next(c);
    return;
  }
  (void)uv_tcp_nodelay(dduct__tcp_stream_handle(c->s), 1);
  if (c->hop_tls) start_tls(c, U_HOP_TLS);
  else after_hop(c);
}

static const struct sockaddr *next_addr(struct uconn *c) {
  if (c->have_fixed) {
    if (c->fixed_tried) return NULL;
    c->fixed_tried = 1;
    return (const struct sockaddr *)&c->fixed;
  }
  while (c->ai_cur != NULL) {
    struct addrinfo *a = c->ai_cur;
    c->ai_cur = a->ai_next;
    if (a->ai_family == AF_INET || a->ai_family == AF_INET6) {
      memcpy(&c->fixed, a->ai_addr, a->ai_addrlen);
      if (a->ai_family == AF_INET) ((struct sockaddr_in *)&c->fixed)->sin_port = htons(c->hop_port);
      else ((struct sockaddr_in6 *)&c->fixed)->sin6_port = htons(c->hop_port);
      return (const struct sockaddr *)&c->fixed;
    }
  }
  return NULL;
}

static void try_next(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  const struct sockaddr *sa = next_addr(c);
  char hop[700];
  int rc;
  if (sa == NULL) {
    int err = c->last_err != 0 ? c->last_err : UV_EADDRNOTAVAIL;
    uconn_fail(c, err, "cannot connect to %s: %s", hop_label(c, hop, sizeof(hop)),
               uv_strerror(err));
    return;
  }
  if (u->cfg.is_self != NULL && u->cfg.is_self(u->cfg.is_self_arg, sa)) {
    char a[80];
    dduct__addr_str(sa, a, sizeof(a));
    uconn_fail(c, DDUCT_ELOOP, "%s is this proxy (%s): request would loop",
               hop_label(c, hop, sizeof(hop)), a);
    return;
  }
  c->s = dduct__tcp_stream_new(u->cfg.loop);
  if (c->s == NULL) {
    uconn_fail(c, DDUCT_ENOMEM, "cannot connect to %s: out of memory", hop_label(c, hop, sizeof(hop)));
    return;
  }
  c->s->data = c;
  c->refs++;
  c->state = U_CONNECTING;
  rc = uv_tcp_connect(&c->creq, dduct__tcp_stream_handle(c->s), sa, connect_cb);
  if (rc != 0) {
    c->last_err = rc;
    close_stream(c);
    try_next(c);
  }
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct uconn *c = DDUCT_CONTAINER_OF(req, struct uconn, gai);
  req->data = NULL;
  c->ai = res;
  c->ai_cur = res;
  if (c->state == U_DEAD) {
    uconn_unref(c);
    return;
  }
  c->refs--; /* cannot reach 0: the timer still holds one */
  if (status < 0) {
    uconn_fail(c, status, "cannot resolve %s: %s", c->hop_host, uv_strerror(status));
    return;
  }
  try_next(c);
}

static void uconn_start(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  const struct sockaddr *pin = dduct__pins_lookup(u->cfg.pins, c->hop_host);
  struct addrinfo hints;
  int rc;

  uv_timer_start(&c->timer, timer_cb, u->cfg.connect_timeout_ms, 0);
  c->state = U_RESOLVING;
  if (pin != NULL || dduct__ip_literal(c->hop_host, c->hop_port, &c->fixed) == 0) {
    if (pin != NULL) {
      memcpy(&c->fixed, pin, sizeof(c->fixed));
      if (pin->sa_family == AF_INET) ((struct sockaddr_in *)&c->fixed)->sin_port = htons(c->hop_port);
      else ((struct sockaddr_in6 *)&c->fixed)->sin6_port = htons(c->hop_port);
    }
    c->have_fixed = 1;
    try_next(c);
    return;
  }
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->gai.data = c;
  c->refs++;
  rc = uv_getaddrinfo(u->cfg.loop, &c->gai, gai_cb, c->hop_host, NULL, &hints);
  if (rc != 0) {
    c->gai.data = NULL;
    c->refs--;
    uconn_fail(c, rc, "cannot resolve %s: %s", c->hop_host, uv_strerror(rc));
  }
}

/* ---- pool --------------------------------------------------------------------------------- */

static void idle_read_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  uconn_close(s->data); /* an idle origin connection that talks or closes is done */
}

static void pool_put(struct uconn *c) {
  struct dduct_upstream *u = c->u;
  if (u->closing || c->s == NULL) {
    uconn_close(c);
    return;
  }
  if (u->nidle >= POOL_MAX_IDLE) {
    struct uconn *old = u->idle;
    while (old->next != NULL) old = old->next;
    uconn_close(old);
  }
  c->state = U_IDLE;
  c->next = u->idle;
  c->prev = NULL;
  if (u->idle != NULL) u->idle->prev = c;
  u->idle = c;
  u->nidle++;
  uv_timer_start(&c->timer, timer_cb, POOL_IDLE_MS, 0);
  (void)dduct__stream_read_start(c->s, idle_read_cb);
}

static struct uconn *pool_get(struct dduct_upstream *u, const char *key) {
  for (struct uconn *c = u->idle; c != NULL; c = c->next) {
    if (strcmp(c->key, key) != 0) continue;
    pool_remove(c);
    dduct__stream_read_stop(c->s);
    uv_timer_stop(&c->timer);
    c->state = U_BUSY;
    c->reused = 1;
    return c;
  }
  return NULL;
}

/* ---- response ----------------------------------------------------------------------------- */

static int redirectable(const struct dduct_fetch *f, int status) {
  return f->redirects_left > 0 && (strcmp(f->method, "GET") == 0 || strcmp(f->method, "HEAD") == 0) &&
         (status == 301 || status == 302 || status == 303 || status == 307 || status == 308);
}

static int resp_on_head(struct dduct_http_parser *p) {
  struct uconn *c = p->data;
  struct dduct_fetch *f = c->f;
  int skip;
  if (f == NULL) return 0;
  /* Responses to HEAD, and 204/304, end at their head whatever Content-Length says (a 304 may
   * carry the representation's length); llhttp only knows that when told (F_SKIPBODY). */
  skip = dduct__http_no_body(strcmp(f->method, "HEAD") == 0, p->head.status);
  if (p->head.status < 200) return 0; /* 1xx: interim, never delivered */
  if (p->head.status == 407 && c->route == R_PROXY) {
    /* The proxy's own answer, never the origin's: the client did not talk to that proxy. */
    const struct dduct_uproxy *x = c->u->cfg.proxy;
    if (x->auth == NULL)
      uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s wants credentials (407) for %s and "
                 "upstream_proxy has none (add user:password@)", x->shown, f->url);
    else
      uconn_fail(c, DDUCT_EPROXY, "upstream proxy %s refused the credentials of user '%s' (407) "
                 "for %s", x->shown, x->user, f->url);
    return 1;
  }
  if (f->u->cfg.stats != NULL) dduct__stats_upstream(f->u->cfg.stats, p->head.status);
  if (redirectable(f, p->head.status)) {
    const char *loc = dduct__http_get(&p->head, "Location");
    if (loc != NULL && f->https && strncasecmp(loc, "http://", 7) == 0) {
      /* Never downgrade: what came over TLS must not be continued over plain http, where
       * anyone on the path could answer. The redirect goes to the client as it is (curl, apt
       * decide for themselves), and the cache stores nothing for a non-200. */
      LOG_INFO("upstream", "Not following the redirect of https://%s:%u%.*s to plain http: "
               "passing it on", f->host, f->port, (int)strcspn(f->target, "?"), f->target);
    } else if (loc != NULL && (loc[0] == '/' || strncasecmp(loc, "http://", 7) == 0 ||
                               strncasecmp(loc, "https://", 8) == 0)) {
      free(f->location);
      /* "//host/path" is another host on the same scheme (RFC 3986 4.2), not a path here. */
      if (loc[0] == '/' && loc[1] == '/') {
        size_t n = strlen(loc) + 8;
        if ((f->location = malloc(n)) != NULL)
          snprintf(f->location, n, "%s:%s", f->https ? "https" : "http", loc);
      } else {
        f->location = dduct__strdup(loc);
      }
      f->redirecting = f->location != NULL;
      f->redirect_status = p->head.status;
      if (f->redirecting) return skip;
    }
  }
  {
    int64_t cl = dduct__http_parser_chunked(p) ? -1 : dduct__http_parser_content_length(p);
    dduct__http_strip_hop_by_hop(&p->head);
    f->delivered_head = 1;
    f->cbs->on_head(f, &p->head, cl);
  }
  return skip;
}

static void resp_on_body(struct dduct_http_parser *p, const char *data, size_t len) {
  struct uconn *c = p->data;
  struct dduct_fetch *f = c->f;
  if (f == NULL || f->redirecting) return;
  f->cbs->on_body(f, data, len);
}

static int resp_on_done(struct dduct_http_parser *p) {
  struct uconn *c = p->data;
  if (p->head.status < 200) return 0;
  c->done_msg = 1;
  return 1;
}

static const struct dduct_http_parser_cbs resp_cbs = {resp_on_head, resp_on_body, resp_on_done};

static void follow_redirect(struct dduct_fetch *f) {
  char host[256];
  uint16_t port = f->port;
  int https = f->https;
  const char *path = f->location;
  char *target;
  if (f->location[0] != '/') {
    if (dduct__http_parse_url(f->location, &https, host, sizeof(host), &port, &path) != 0) {
      fetch_finish(f, DDUCT_EPROTO, "redirect to an invalid Location");
      return;
    }
    if (strcasecmp(host, f->host) != 0 || port != f->port || https != f->https) {
      /* Credentials were meant for the first origin only (scheme, host and port: another port
       * of a host can be another service, as curl decided for CVE-2022-27776). */
      dduct__http_remove(&f->hdrs, "Authorization");
      dduct__http_remove(&f->hdrs, "Cookie");
    }
    snprintf(f->host, sizeof(f->host), "%s", host);
  }
  target = dduct__strdup(path);
  if (target == NULL) {
    fetch_finish(f, DDUCT_ENOMEM, "out of memory");
    return;
  }
  free(f->target);
  f->target = target;
  f->https = https;
  f->port = port;
  if (f->redirect_status == 303 && strcmp(f->method, "HEAD") != 0) snprintf(f->method, sizeof(f->method), "GET");
  f->redirects_left--;
  f->redirecting = 0;
  f->head_sent = 0;
  f->retried = 0;
  LOG_DEBUG("upstream", "following redirect to %s://%s:%u%s", https ? "https" : "http", f->host,
            port, f->target);
  fetch_connect(f);
}

/* The response is complete: release the connection, then report. */
static void response_done(struct uconn *c, int clean_end) {
  struct dduct_fetch *f = c->f;
  int reuse = clean_end && dduct__http_parser_keep_alive(&c->parser) && f->body_ended;
  uv_timer_stop(&c->timer);
  c->f = NULL;
  f->c = NULL;
  if (reuse) pool_put(c);
  else uconn_close(c);
  if (f->redirecting) {
    follow_redirect(f);
    return;
  }
  fetch_finish(f, 0, NULL);
}

static void busy_read_cb(struct dduct_stream *s, ssize_t nread, const char *data) {
  struct uconn *c = s->data;
  size_t used;
  int rc;
  if (c->f == NULL) {
    uconn_close(c);
    return;
  }
  if (nread < 0) {
    /* Only an orderly close ends a close-delimited body: a reset (or any read error) mid-body
     * is a truncated response, never one to finish with a clean chunked terminator. */
    if (c->got_bytes && nread == UV_EOF && dduct__http_parser_finish(&c->parser) == 0 &&
        c->done_msg) {
      response_done(c, 0); /* close-delimited body ended */
      return;
    }
    if (c->got_bytes && nread == DDUCT_ETLS) /* e.g. a record that failed its MAC check */
      uconn_fail(c, c->f->delivered_head ? DDUCT_ESHORT : DDUCT_EPROTO,
                 "%s mid-response: %s", c->label, dduct__stream_query_str(c->s, DDUCT_STREAM_TLS_ERROR, "TLS failure"));
    else if (c->got_bytes)
      uconn_fail(c, c->f->delivered_head ? DDUCT_ESHORT : DDUCT_EPROTO,
                 "%s closed the connection mid-response", c->label);
    else
      uconn_fail(c, nread == UV_EOF ? UV_ECONNRESET : (int)nread,
                 "%s closed the connection without answering (%s)", c->label,
                 nread == UV_EOF ? "EOF" : uv_strerror((int)nread));
    return;
  }
  c->got_bytes = 1;
  if (!c->f->paused) uv_timer_again(&c->timer);
  rc = dduct__http_parser_execute(&c->parser, data, (size_t)nread, &used);
  if (c->state == U_DEAD || c->f == NULL) return; /* aborted from a callback */
  if (rc == DDUCT_HTTP_PAUSED && c->done_msg) {
    response_done(c, used == (size_t)nread);
    return;
  }
  if (rc == DDUCT_ETOOBIG)
    uconn_fail(c, DDUCT_ETOOBIG, "response head from %s larger than %u bytes or %u headers",
               c->label, DDUCT_HTTP_HEAD_MAX, DDUCT_HTTP_HEADERS_MAX);
  else if (rc < 0 || rc == DDUCT_HTTP_UPGRADE)
    uconn_fail(c, DDUCT_EPROTO, "invalid response from %s: %s", c->label,
               rc < 0 && c->parser.err_reason != NULL ? c->parser.err_reason : "unexpected upgrade");
}

/* ---- request ------------------------------------------------------------------------------ */

static int build_head(struct dduct_fetch *f, const struct uconn *c, char *out, size_t cap) {
  struct dduct_http_head h;
  char hostport[300], len[32];
  char *absolute = NULL;
  int n, rc;
  dduct__http_head_init(&h);
  if (dduct__http_head_copy(&h, &f->hdrs) != 0) return DDUCT_ENOMEM;
  dduct__http_strip_hop_by_hop(&h);
  dduct__http_remove(&h, "Host");
  dduct__http_remove(&h, "Content-Length");
  dduct__http_remove(&h, "Expect");
  /* Origin-form, Host first (RFC 9112 3.2). */
  {
    struct dduct_http_head o;
    dduct__http_head_init(&o);
    dduct__origin_format(hostport, sizeof(hostport),
                         &(struct dduct_origin){f->https, f->host, f->port},
                         DDUCT_ORIGIN_NO_SCHEME);
    /* A proxy (plain http through the upstream proxy) or a parent gets the absolute form. */
    if (c->route == R_PARENT || (c->route == R_PROXY && !f->https)) {
      size_t alen = strlen(hostport) + strlen(f->target) + 16;
      if ((absolute = malloc(alen)) == NULL) {
        dduct__http_head_free(&o);
        dduct__http_head_free(&h);
        return DDUCT_ENOMEM;
      }
      snprintf(absolute, alen, "%s://%s%s", f->https ? "https" : "http", hostport, f->target);
    }
    rc = dduct__http_set_request_line(&o, f->method, absolute != NULL ? absolute : f->target);
    free(absolute);
    if (rc == 0) rc = dduct__http_add(&o, "Host", hostport);
    if (rc == 0 && c->route == R_PROXY && !f->https && c->u->cfg.proxy->auth != NULL)
      rc = dduct__http_add(&o, "Proxy-Authorization", c->u->cfg.proxy->auth);
    for (size_t i = 0; i < h.n && rc == 0; i++)
      rc = dduct__http_addn(&o, dduct__http_hname(&h, i), h.h[i].name_len,
                            dduct__http_hvalue(&h, i), h.h[i].value_len);
    if (rc == 0 && f->body_len > 0) {
      snprintf(len, sizeof(len), "%lld", (long long)f->body_len);
      rc = dduct__http_add(&o, "Content-Length", len);
    } else if (rc == 0 && f->body_len < 0) {
      rc = dduct__http_add(&o, "Transfer-Encoding", "chunked");
    } else if (rc == 0 && (strcmp(f->method, "POST") == 0 || strcmp(f->method, "PUT") == 0 ||
                           strcmp(f->method, "PATCH") == 0)) {
      rc = dduct__http_add(&o, "Content-Length", "0");
    }
    n = rc == 0 ? dduct__http_serialize_request(&o, out, cap) : rc;
    dduct__http_head_free(&o);
  }
  dduct__http_head_free(&h);
  return n;
}

static void req_write_cb(struct dduct_stream *s, int status, void *arg) {
  struct uconn *c = arg;
  struct dduct_fetch *f = c->f;
  if (f == NULL) return;
  /* The origin taking request body bytes is progress: an upload longer than the upstream
   * timeout must not be cut off while the origin still reads it. */
  if (status == 0 && !f->paused && c->state == U_BUSY) uv_timer_again(&c->timer);
  if (f->cbs->on_drain == NULL) return;
  if (dduct__stream_queued(s) < DDUCT_STREAM_LOW_WATER) f->cbs->on_drain(f);
}

static void send_request(struct dduct_fetch *f, struct uconn *c) {
  char *buf = malloc(REQ_HEAD_CAP);
  int n, rc;
  f->c = c;
  c->f = f;
  c->state = U_BUSY;
  c->got_bytes = 0;
  c->done_msg = 0;
  if (c->parser_live) dduct__http_parser_free(&c->parser);
  dduct__http_parser_init(&c->parser, 1, &resp_cbs, c);
  c->parser_live = 1;
  n = buf != NULL ? build_head(f, c, buf, REQ_HEAD_CAP) : DDUCT_ENOMEM;
  if (n < 0) {
    free(buf);
    uconn_fail(c, DDUCT_ETOOBIG, "request head too large for %s", c->host);
    return;
  }
  rc = dduct__stream_write(c->s, buf, (size_t)n, NULL, NULL);
  memset(buf, 0, (size_t)n); /* may hold Proxy-Authorization */
  free(buf);
  if (rc == 0 && f->pend_len > 0) {
    rc = dduct__stream_write(c->s, f->pend, f->pend_len, req_write_cb, c);
    f->pend_len = 0;
  }
  if (rc != 0) {
    uconn_fail(c, rc, "writing to %s: %s", c->label, dduct_strerror(rc));
    return;
  }
  free(f->pend);
  f->pend = NULL;
  f->pend_cap = 0;
  f->head_sent = 1;
  fetch_url(f);
  uv_timer_start(&c->timer, timer_cb, c->u->cfg.upstream_timeout_ms,
                 c->u->cfg.upstream_timeout_ms);
  if (f->paused) uv_timer_stop(&c->timer);
  else (void)dduct__stream_read_start(c->s, busy_read_cb);
}

static void fetch_connect(struct dduct_fetch *f) {
  struct dduct_upstream *u = f->u;
  char key[600];
  struct uconn *c;
  route_key(key, sizeof(key), pick_route(u, f->host, f->parent), f->https, f->host, f->port,
            f->parent);
  c = f->retried ? NULL : pool_get(u, key);
  if (c != NULL) {
    if (u->cfg.stat_reuses != NULL) (*u->cfg.stat_reuses)++;
    send_request(f, c);
    return;
  }
  c = uconn_new(u, f->https, f->host, f->port, f->parent);
  if (c == NULL) {
    fetch_finish(f, DDUCT_ENOMEM, "out of memory");
    return;
  }
  c->f = f;
  f->c = c;
  uconn_start(c);
}

int dduct__fetch_start(struct dduct_upstream *u, const struct dduct_fetch_request *req,
                       const struct dduct_fetch_cbs *cbs, void *data, struct dduct_fetch **out) {
  struct dduct_fetch *f;
  *out = NULL;
  if (u->closing) return DDUCT_ECLOSED;
  f = calloc(1, sizeof(*f));
  if (f == NULL) return DDUCT_ENOMEM;
  f->u = u;
  f->cbs = cbs;
  f->data = data;
  f->https = req->https;
  snprintf(f->host, sizeof(f->host), "%s", req->host);
  f->port = req->port;
  f->parent = req->parent;
  snprintf(f->method, sizeof(f->method), "%s", req->method);
  f->target = dduct__strdup(req->target);
  f->body_len = req->body_len;
  f->body_ended = req->body_len == 0;
  f->redirects_left = req->max_redirects;
  dduct__http_head_init(&f->hdrs);
  if (f->target == NULL ||
      (req->headers != NULL && dduct__http_head_copy(&f->hdrs, req->headers) != 0)) {
    fetch_free(f);
    return DDUCT_ENOMEM;
  }
  fetch_url(f);
  *out = f;
  /* A failure right here is reported from the next loop turn (fetch_finish): no callback runs
   * inside this call. */
  f->starting = 1;
  fetch_connect(f);
  f->starting = 0;
  return 0;
}

void *dduct__fetch_data(const struct dduct_fetch *f) {
  return f->data;
}

const char *dduct__fetch_url(const struct dduct_fetch *f) {
  return f->url;
}

int dduct__fetch_credentialed(const struct dduct_fetch *f) {
  return dduct__http_get(&f->hdrs, "Authorization") != NULL ||
         dduct__http_get(&f->hdrs, "Cookie") != NULL;
}

static int pend_append(struct dduct_fetch *f, const char *data, size_t len) {
  if (f->pend_len + len > f->pend_cap) {
    size_t cap = DDUCT_MAX(f->pend_cap * 2, f->pend_len + len);
    char *p = realloc(f->pend, cap);
    if (p == NULL) return DDUCT_ENOMEM;
    f->pend = p;
    f->pend_cap = cap;
  }
  memcpy(f->pend + f->pend_len, data, len);
  f->pend_len += len;
  return 0;
}

static int body_out(struct dduct_fetch *f, const char *data, size_t len) {
  if (len == 0) return 0;
  if (f->head_sent && f->c != NULL && f->c->s != NULL)
    return dduct__stream_write(f->c->s, data, len, req_write_cb, f->c);
  return pend_append(f, data, len);
}

int dduct__fetch_write(struct dduct_fetch *f, const char *data, size_t len) {
  int rc;
  if (len == 0 || f->body_ended) return 0;
  if (f->body_len < 0) {
    char hdr[24];
    size_t n = dduct__http_chunk_header(hdr, len);
    rc = body_out(f, hdr, n);
    if (rc == 0) rc = body_out(f, data, len);
    if (rc == 0) rc = body_out(f, "\r\n", 2);
    return rc;
  }
  return body_out(f, data, len);
}

int dduct__fetch_end(struct dduct_fetch *f) {
  int rc = 0;
  if (f->body_ended) return 0;
  if (f->body_len < 0) rc = body_out(f, "0\r\n\r\n", 5);
  f->body_ended = 1;
  return rc;
}

size_t dduct__fetch_queued(const struct dduct_fetch *f) {
  size_t q = f->pend_len;
  if (f->head_sent && f->c != NULL && f->c->s != NULL) q += dduct__stream_queued(f->c->s);
  return q;
}

void dduct__fetch_pause(struct dduct_fetch *f) {
  if (f->paused) return;
  f->paused = 1;
  if (f->c != NULL && f->c->state == U_BUSY && f->head_sent) {
    dduct__stream_read_stop(f->c->s);
    uv_timer_stop(&f->c->timer);
  }
}

void dduct__fetch_resume(struct dduct_fetch *f) {
  if (!f->paused) return;
  f->paused = 0;
  if (f->c != NULL && f->c->state == U_BUSY && f->head_sent) {
    uv_timer_start(&f->c->timer, timer_cb, f->u->cfg.upstream_timeout_ms,
                   f->u->cfg.upstream_timeout_ms);
    (void)dduct__stream_read_start(f->c->s, busy_read_cb);
  }
}

void dduct__fetch_abort(struct dduct_fetch *f) {
  if (f->deferred) unlink_deferred(f); /* its failure is never reported */
  if (f->c != NULL) {
    f->c->f = NULL;
    uconn_close(f->c);
  }
  fetch_free(f);
}

/* ---- raw connections (tunnels) ------------------------------------------------------------ */

int dduct__upstream_connect(struct dduct_upstream *u, const char *host, uint16_t port,
                            dduct_connect_cb cb, void *arg, struct dduct_connect **out) {
  struct dduct_connect *cn;
  struct uconn *c;
  *out = NULL;
  if (u->closing) return DDUCT_ECLOSED;
  cn = calloc(1, sizeof(*cn));
  if (cn == NULL) return DDUCT_ENOMEM;
  c = uconn_new(u, 0, host, port, NULL);
  if (c == NULL) {
    free(cn);
    return DDUCT_ENOMEM;
  }
  cn->c = c;
  cn->cb = cb;
  cn->arg = arg;
  c->raw = cn;
  *out = cn;
  uconn_start(c);
  return 0;
}

void dduct__connect_cancel(struct dduct_connect *cn) {
  struct uconn *c = cn->c;
  c->raw = NULL;
  uconn_close(c);
  free(cn->leftover);
  free(cn);
}

const char *dduct__connect_leftover(const struct dduct_connect *cn, size_t *len) {
  *len = cn->leftover_len;
  return cn->leftover;
}

/* ---- the pool object ---------------------------------------------------------------------- */

int dduct__upstream_new(const struct dduct_upstream_config *cfg, struct dduct_upstream **out) {
  struct dduct_upstream *u = calloc(1, sizeof(*u));
  *out = u;
  if (u == NULL) return DDUCT_ENOMEM;
  u->cfg = *cfg;
  return 0;
}

static void defer_close_cb(uv_handle_t *h) {
  struct dduct_upstream *u = DDUCT_CONTAINER_OF((uv_timer_t *)h, struct dduct_upstream, defer);
  u->live--;
  if (u->live == 0 && u->closing && u->idle_cb != NULL) u->idle_cb(u->idle_arg);
}

void dduct__upstream_close_idle(struct dduct_upstream *u) {
  if (u == NULL) return;
  u->closing = 1;
  deliver_deferred(u); /* not inside any fetch_start: their owners hear now */
  if (u->defer_init) {
    u->defer_init = 0;
    u->live++; /* the timer handle: shutdown waits for its close */
    uv_close((uv_handle_t *)&u->defer, defer_close_cb);
  }
  while (u->idle != NULL) uconn_close(u->idle);
}

size_t dduct__upstream_live(const struct dduct_upstream *u) {
  return u != NULL ? u->live : 0;
}

void dduct__upstream_on_idle(struct dduct_upstream *u, void (*cb)(void *arg), void *arg) {
  u->idle_cb = cb;
  u->idle_arg = arg;
}

void dduct__upstream_free(struct dduct_upstream *u) {
  free(u);
}
