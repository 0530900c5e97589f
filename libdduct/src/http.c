/* HTTP/1.1 heads on llhttp 8.1 (strict), serialization and hop-by-hop rules. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "internal.h"

#define HEAD_BUF_CAP (DDUCT_HTTP_HEAD_MAX + 2 * DDUCT_HTTP_HEADERS_MAX + 64)

/* ---- head storage ------------------------------------------------------------------------- */

/* Only the scalars: h->h[] (DDUCT_HTTP_HEADERS_MAX slots, ~3 KiB) is read below n only, and
 * every slot is written before n covers it. A head is made and freed a few times per request. */
void dduct__http_head_init(struct dduct_http_head *h) {
  h->method = h->target = h->reason = 0;
  h->status = 0;
  h->major = h->minor = 0;
  h->n = 0;
  h->buf = NULL;
  h->len = h->cap = 0;
}

void dduct__http_head_reset(struct dduct_http_head *h) {
  h->method = h->target = h->reason = 0;
  h->status = 0;
  h->major = h->minor = 1;
  h->n = 0;
  h->len = 0;
  if (h->buf != NULL) {
    h->buf[0] = '\0';
    h->len = 1;
  }
}

void dduct__http_head_free(struct dduct_http_head *h) {
  free(h->buf);
  dduct__http_head_init(h);
}

static int reserve(struct dduct_http_head *h, size_t more) {
  size_t need;
  if (h->buf == NULL) {
    h->buf = malloc(512);
    if (h->buf == NULL) return DDUCT_ENOMEM;
    h->cap = 512;
    h->buf[0] = '\0';
    h->len = 1; /* offset 0 is the empty string */
  }
  need = h->len + more;
  if (need <= h->cap) return 0;
  if (need > HEAD_BUF_CAP) return DDUCT_ETOOBIG;
  {
    size_t cap = DDUCT_MIN(DDUCT_MAX(h->cap * 2, need), (size_t)HEAD_BUF_CAP);
    char *p = realloc(h->buf, cap);
    if (p == NULL) return DDUCT_ENOMEM;
    h->buf = p;
    h->cap = cap;
  }
  return 0;
}

/* Append bytes; returns 0 or an error. A NUL follows them (not counted in len, overwritten by
 * the next append): a string still open when the parser fails mid-head (a target cut by a bad
 * byte) reads as what was parsed, not as what an earlier request left in the buffer (which the
 * log line for the 400 printed, other clients' bytes included). */
static int append(struct dduct_http_head *h, const char *s, size_t n) {
  int rc = reserve(h, n + 1);
  if (rc != 0) return rc;
  memcpy(h->buf + h->len, s, n);
  h->len += n;
  h->buf[h->len] = '\0';
  return 0;
}

static int append_str(struct dduct_http_head *h, const char *s, size_t n, uint32_t *off) {
  int rc = reserve(h, n + 1);
  if (rc != 0) return rc;
  *off = (uint32_t)h->len;
  memcpy(h->buf + h->len, s, n);
  h->len += n;
  h->buf[h->len++] = '\0';
  return 0;
}

int dduct__http_head_copy(struct dduct_http_head *dst, const struct dduct_http_head *src) {
  char *buf = NULL;
  if (src->buf != NULL) {
    buf = malloc(src->cap);
    if (buf == NULL) return DDUCT_ENOMEM;
    memcpy(buf, src->buf, src->len);
  }
  free(dst->buf);
  *dst = *src;
  dst->buf = buf;
  return 0;
}

const char *dduct__http_str(const struct dduct_http_head *h, uint32_t off) {
  if (h->buf == NULL || off == 0) return "";
  return h->buf + off;
}

const char *dduct__http_hname(const struct dduct_http_head *h, size_t i) {
  return h->buf + h->h[i].name;
}

const char *dduct__http_hvalue(const struct dduct_http_head *h, size_t i) {
  return h->buf + h->h[i].value;
}

int dduct__http_set_request_line(struct dduct_http_head *h, const char *method,
                                 const char *target) {
  int rc = append_str(h, method, strlen(method), &h->method);
  if (rc == 0) rc = append_str(h, target, strlen(target), &h->target);
  return rc;
}

int dduct__http_set_status(struct dduct_http_head *h, int status, const char *reason) {
  h->status = status;
  return append_str(h, reason, strlen(reason), &h->reason);
}

int dduct__http_addn(struct dduct_http_head *h, const char *name, size_t nlen, const char *value,
                     size_t vlen) {
  struct dduct_http_header *x;
  int rc;
  if (h->n == DDUCT_HTTP_HEADERS_MAX) return DDUCT_ETOOBIG;
  x = &h->h[h->n];
  rc = append_str(h, name, nlen, &x->name);
  if (rc == 0) rc = append_str(h, value, vlen, &x->value);
  if (rc != 0) return rc;
  x->name_len = (uint32_t)nlen;
  x->value_len = (uint32_t)vlen;
  h->n++;
  return 0;
}

int dduct__http_add(struct dduct_http_head *h, const char *name, const char *value) {
  return dduct__http_addn(h, name, strlen(name), value, strlen(value));
}

size_t dduct__http_remove(struct dduct_http_head *h, const char *name) {
  size_t j = 0, removed = 0;
  for (size_t i = 0; i < h->n; i++) {
    if (strcasecmp(dduct__http_hname(h, i), name) == 0) {
      removed++;
      continue;
    }
    h->h[j++] = h->h[i];
  }
  h->n = j;
  return removed;
}

const char *dduct__http_get(const struct dduct_http_head *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcasecmp(dduct__http_hname(h, i), name) == 0) return dduct__http_hvalue(h, i);
  return NULL;
}

int dduct__http_each_token(const struct dduct_http_head *h, const char *name,
                           int (*fn)(const char *tok, size_t len, void *arg), void *arg) {
  for (size_t i = 0; i < h->n; i++) {
    const char *v;
    if (strcasecmp(dduct__http_hname(h, i), name) != 0) continue;
    v = dduct__http_hvalue(h, i);
    while (*v != '\0') {
      const char *end;
      size_t len;
      while (*v == ' ' || *v == '\t' || *v == ',') v++;
      end = v;
      while (*end != '\0' && *end != ',') end++;
      len = (size_t)(end - v);
      while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
      if (len > 0 && fn(v, len, arg)) return 1;
      v = end;
    }
  }
  return 0;
}

static int token_eq(const char *tok, size_t len, void *arg) {
  const char *want = arg;
  return strlen(want) == len && strncasecmp(tok, want, len) == 0;
}

int dduct__http_has_token(const struct dduct_http_head *h, const char *name, const char *token) {
  return dduct__http_each_token(h, name, token_eq, (void *)token);
}

#define HDR(name, classes) {name, sizeof(name) - 1, classes}
static const struct {
  const char *name;
  size_t len;
  unsigned classes;
} header_table[] = {
    HDR("Connection", DDUCT_HDR_HOP | DDUCT_HDR_ENGINE),
    HDR("Content-Length", DDUCT_HDR_ENGINE),
    HDR("Keep-Alive", DDUCT_HDR_HOP | DDUCT_HDR_ENGINE),
    HDR("Proxy-Authenticate", DDUCT_HDR_HOP),
    HDR("Proxy-Authorization", DDUCT_HDR_HOP),
    HDR("Proxy-Connection", DDUCT_HDR_HOP | DDUCT_HDR_ENGINE),
    HDR("TE", DDUCT_HDR_HOP),
    HDR("Trailer", DDUCT_HDR_HOP),
    HDR("Transfer-Encoding", DDUCT_HDR_HOP | DDUCT_HDR_ENGINE),
    HDR("Upgrade", DDUCT_HDR_HOP),
};
#undef HDR

unsigned dduct__http_header_class(const char *name, size_t len) {
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(header_table); i++)
    if (header_table[i].len == len && strncasecmp(name, header_table[i].name, len) == 0)
      return header_table[i].classes;
  return 0;
}

static int named_by_connection(const struct dduct_http_head *h, const char *name) {
  size_t n = strlen(name);
  if (n == 0) return 0; /* strcasestr finds "" everywhere without advancing */
  for (size_t i = 0; i < h->n; i++) {
    const char *v, *p;
    if (strcasecmp(dduct__http_hname(h, i), "Connection") != 0) continue;
    v = dduct__http_hvalue(h, i);
    for (p = v; (p = strcasestr(p, name)) != NULL; p += n) {
      int start = p == v || p[-1] == ',' || p[-1] == ' ' || p[-1] == '\t';
      int end = p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t';
      if (start && end) return 1;
    }
  }
  return 0;
}

void dduct__http_strip_hop_by_hop(struct dduct_http_head *h) {
  size_t j = 0;
  for (size_t i = 0; i < h->n; i++) {
    const char *name = dduct__http_hname(h, i);
    int drop = (dduct__http_header_class(name, h->h[i].name_len) & DDUCT_HDR_HOP) != 0;
    /* A Connection option naming Content-Length must not strip the framing we rely on. */
    if (!drop && strcasecmp(name, "Content-Length") != 0) drop = named_by_connection(h, name);
    if (!drop) h->h[j++] = h->h[i];
  }
  h->n = j;
}

/* ---- serialization ------------------------------------------------------------------------ */

static int put(char *out, size_t cap, size_t *len, const char *s, size_t n) {
  if (*len + n > cap) return DDUCT_ETOOBIG;
  memcpy(out + *len, s, n);
  *len += n;
  return 0;
}

static int serialize_headers(const struct dduct_http_head *h, char *out, size_t cap,
                             size_t len) {
  for (size_t i = 0; i < h->n; i++) {
    if (put(out, cap, &len, dduct__http_hname(h, i), h->h[i].name_len) != 0 ||
        put(out, cap, &len, ": ", 2) != 0 ||
        put(out, cap, &len, dduct__http_hvalue(h, i), h->h[i].value_len) != 0 ||
        put(out, cap, &len, "\r\n", 2) != 0)
      return DDUCT_ETOOBIG;
  }
  if (put(out, cap, &len, "\r\n", 2) != 0) return DDUCT_ETOOBIG;
  return (int)len;
}

int dduct__http_serialize_request(const struct dduct_http_head *h, char *out, size_t cap) {
  int n = snprintf(out, cap, "%s %s HTTP/1.1\r\n", dduct__http_method(h), dduct__http_target(h));
  if (n < 0 || (size_t)n >= cap) return DDUCT_ETOOBIG;
  return serialize_headers(h, out, cap, (size_t)n);
}

int dduct__http_serialize_response(const struct dduct_http_head *h, char *out, size_t cap) {
  int n = snprintf(out, cap, "HTTP/1.1 %03d %s\r\n", h->status, dduct__http_reason(h));
  if (n < 0 || (size_t)n >= cap) return DDUCT_ETOOBIG;
  return serialize_headers(h, out, cap, (size_t)n);
}

size_t dduct__http_chunk_header(char *out, size_t len) {
  return (size_t)sprintf(out, "%zx\r\n", len);
}

/* ---- URLs --------------------------------------------------------------------------------- */

int dduct__http_parse_authority(const char *auth, char *host, size_t hostcap, uint16_t *port,
                                uint16_t default_port) {
  const char *end = auth + strlen(auth), *colon = NULL, *hs = auth, *he;
  if (*auth == '[') {
    const char *rb = strchr(auth, ']');
    if (rb == NULL) return DDUCT_EPROTO;
    hs = auth + 1;
    he = rb;
    if (rb[1] == ':') colon = rb + 1;
    else if (rb[1] != '\0') return DDUCT_EPROTO;
  } else {
    colon = strrchr(auth, ':');
    he = colon != NULL ? colon : end;
    if (colon != NULL && memchr(auth, ':', (size_t)(colon - auth)) != NULL) return DDUCT_EPROTO;
  }
  if (he == hs || (size_t)(he - hs) >= hostcap) return DDUCT_EPROTO;
  for (const char *c = hs; c < he; c++)
    if (!(isalnum((unsigned char)*c) || *c == '.' || *c == '-' || *c == '_' || *c == ':'))
      return DDUCT_EPROTO;
  memcpy(host, hs, (size_t)(he - hs));
  host[he - hs] = '\0';
  if (colon == NULL) {
    *port = default_port;
    return 0;
  }
  {
    unsigned long v = 0;
    const char *c = colon + 1;
    if (*c == '\0' || end - c > 5) return DDUCT_EPROTO;
    for (; *c != '\0'; c++) {
      if (!isdigit((unsigned char)*c)) return DDUCT_EPROTO;
      v = v * 10 + (unsigned long)(*c - '0');
    }
    if (v == 0 || v > 65535) return DDUCT_EPROTO;
    *port = (uint16_t)v;
  }
  return 0;
}

int dduct__http_parse_url(const char *url, int *is_https, char *host, size_t hostcap,
                          uint16_t *port, const char **path) {
  char auth[300];
  const char *p, *slash;
  size_t alen;
  if (strncasecmp(url, "http://", 7) == 0) {
    *is_https = 0;
    p = url + 7;
  } else if (strncasecmp(url, "https://", 8) == 0) {
    *is_https = 1;
    p = url + 8;
  } else {
    return DDUCT_EPROTO;
  }
  slash = p + strcspn(p, "/?#");
  alen = (size_t)(slash - p);
  if (alen == 0 || alen >= sizeof(auth) || memchr(p, '@', alen) != NULL) return DDUCT_EPROTO;
  memcpy(auth, p, alen);
  auth[alen] = '\0';
  if (dduct__http_parse_authority(auth, host, hostcap, port, *is_https ? 443 : 80) != 0)
    return DDUCT_EPROTO;
  *path = *slash == '/' ? slash : (*slash == '\0' ? "/" : slash);
  return 0;
}

/* ---- parser ------------------------------------------------------------------------------- */

#define P(ll) DDUCT_CONTAINER_OF((ll), struct dduct_http_parser, ll)

static int fail_big(struct dduct_http_parser *p) {
  p->too_big = 1;
  return -1;
}

static int count(struct dduct_http_parser *p, size_t n) {
  p->head_bytes += n;
  return p->head_bytes > DDUCT_HTTP_HEAD_MAX;
}

static int on_message_begin(llhttp_t *ll) {
  struct dduct_http_parser *p = P(ll);
  dduct__http_head_reset(&p->head);
  if (reserve(&p->head, 0) != 0) return -1;
  p->in_head = 1;
  p->hdr_open = 0;
  p->head_bytes = 0;
  return 0;
}

static int piece(struct dduct_http_parser *p, const char *at, size_t len, uint32_t *start_out) {
  if (!p->in_head) return 0;
  if (count(p, len)) return fail_big(p);
  if (!p->hdr_open) {
    if (reserve(&p->head, 0) != 0) return -1;
    *start_out = (uint32_t)p->head.len;
    p->hdr_open = 1;
  }
  if (append(&p->head, at, len) != 0) return fail_big(p);
  return 0;
}

/* Finish the current string with a NUL; returns its offset and length. */
static int close_piece(struct dduct_http_parser *p, uint32_t *off, uint32_t *len) {
  if (!p->hdr_open) {
    if (reserve(&p->head, 1) != 0) return fail_big(p);
    *off = (uint32_t)p->head.len;
  }
  if (reserve(&p->head, 1) != 0) return fail_big(p);
  *len = (uint32_t)(p->head.len - *off);
  p->head.buf[p->head.len++] = '\0';
  p->hdr_open = 0;
  return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t len) {
  struct dduct_http_parser *p = P(ll);
  int rc = piece(p, at, len, &p->head.target);
  if (rc != 0 && p->too_big) p->target_too_big = 1; /* 414, not 431 (RFC 9110 15.5.15) */
  return rc;
}

static int on_url_complete(llhttp_t *ll) {
  uint32_t n;
  return close_piece(P(ll), &P(ll)->head.target, &n);
}

static int on_status(llhttp_t *ll, const char *at, size_t len) {
  return piece(P(ll), at, len, &P(ll)->head.reason);
}

static int on_status_complete(llhttp_t *ll) {
  uint32_t n;
  return close_piece(P(ll), &P(ll)->head.reason, &n);
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len) {
  struct dduct_http_parser *p = P(ll);
  if (!p->in_head) return 0;
  if (p->head.n == DDUCT_HTTP_HEADERS_MAX) return fail_big(p);
  return piece(p, at, len, &p->head.h[p->head.n].name);
}

static int on_header_field_complete(llhttp_t *ll) {
  struct dduct_http_parser *p = P(ll);
  struct dduct_http_header *x;
  if (!p->in_head) return 0;
  x = &p->head.h[p->head.n];
  if (count(p, 4)) return fail_big(p);
  if (close_piece(p, &x->name, &x->name_len) != 0) return -1;
  /* llhttp lets ": value" through; a nameless header has no meaning and matches every name
   * search by prefix, so refuse it like any malformed head. */
  if (x->name_len == 0) {
    p->bad_reason = "empty header name";
    return -1;
  }
  return 0;
}

/* llhttp accepts obsolete line folding (a value continued on a line that starts with SP or
 * HTAB): it ends the value's span before the CRLF and starts a new one after the whitespace. A
 * request with a fold is refused (RFC 9112 5.2 lets a server choose): written back on one line it
 * would not mean what llhttp read ("Transfer-Encoding: chunked" folded onto " ," is no longer
 * chunked to the next hop). In a response each fold becomes one space, as the RFC asks of a
 * proxy. A piece that starts where the previous one ended, in the same buffer or at the start
 * of the next one when the previous ended the last, is the same line cut by the caller's reads. */
static int fold(struct dduct_http_parser *p, const char *at) {
  int same_line;
  if (p->val_pieces == 0) return 0;
  same_line = (p->val_exec_no == p->exec_no && at == p->val_end) ||
              (p->val_exec_no + 1 == p->exec_no && p->val_end_at_buf_end && at == p->exec_start);
  if (same_line) return 0;
  if (!p->response) {
    p->bad_reason = "obsolete line folding in a header";
    return -1;
  }
  return piece(p, " ", 1, &p->head.h[p->head.n].value);
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len) {
  struct dduct_http_parser *p = P(ll);
  int rc;
  if (!p->in_head) return 0;
  rc = fold(p, at);
  if (rc == 0) rc = piece(p, at, len, &p->head.h[p->head.n].value);
  p->val_pieces++;
  p->val_end = at + len;
  p->val_exec_no = p->exec_no;
  p->val_end_at_buf_end = at + len == p->exec_end;
  return rc;
}

static int on_header_value_complete(llhttp_t *ll) {
  struct dduct_http_parser *p = P(ll);
  struct dduct_http_header *x;
  int rc;
  if (!p->in_head) return 0;
  p->val_pieces = 0;
  x = &p->head.h[p->head.n];
  rc = close_piece(p, &x->value, &x->value_len);
  if (rc == 0) {
    /* llhttp keeps the value's trailing whitespace; header values never need it. */
    while (x->value_len > 0 && (p->head.buf[x->value + x->value_len - 1] == ' ' ||
                                p->head.buf[x->value + x->value_len - 1] == '\t'))
      p->head.buf[x->value + --x->value_len] = '\0';
    p->head.n++;
  }
  return rc;
}

static int on_headers_complete(llhttp_t *ll) {
  struct dduct_http_parser *p = P(ll);
  int rc;
  p->in_head = 0;
  p->head.major = ll->http_major;
  p->head.minor = ll->http_minor;
  if (ll->type == HTTP_REQUEST) {
    const char *m = llhttp_method_name((llhttp_method_t)ll->method);
    if (append_str(&p->head, m, strlen(m), &p->head.method) != 0) return fail_big(p);
  } else {
    /* llhttp takes any number as a status; HTTP's are three digits (RFC 9110 15). */
    if (ll->status_code < 100 || ll->status_code > 999) {
      p->bad_reason = "status code is not three digits";
      return -1;
    }
    p->head.status = ll->status_code;
  }
  /* llhttp takes any length up to 2^64 - 1; ours are int64_t, where a larger one read as
   * negative meant "no body" and the body's bytes were parsed as that, then the connection
   * waited inside a body never read (review-sec #5). No real message is that long. */
  if ((ll->flags & F_CONTENT_LENGTH) && ll->content_length > (uint64_t)INT64_MAX) {
    p->bad_reason = "Content-Length is too large";
    return -1;
  }
  rc = p->cbs->on_head != NULL ? p->cbs->on_head(p) : 0;
  if (rc == 2) return HPE_PAUSED;
  return rc;
}

static int on_body(llhttp_t *ll, const char *at, size_t len) {
  struct dduct_http_parser *p = P(ll);
  if (p->cbs->on_body != NULL) p->cbs->on_body(p, at, len);
  return 0;
}

static int on_message_complete(llhttp_t *ll) {
  struct dduct_http_parser *p = P(ll);
  p->in_head = 0;
  if (p->cbs->on_done != NULL && p->cbs->on_done(p)) return HPE_PAUSED;
  return 0;
}

void dduct__http_parser_init(struct dduct_http_parser *p, int response,
                             const struct dduct_http_parser_cbs *cbs, void *data) {
  memset(p, 0, sizeof(*p));
  llhttp_settings_init(&p->settings);
  p->settings.on_message_begin = on_message_begin;
  p->settings.on_url = on_url;
  p->settings.on_url_complete = on_url_complete;
  p->settings.on_status = on_status;
  p->settings.on_status_complete = on_status_complete;
  p->settings.on_header_field = on_header_field;
  p->settings.on_header_field_complete = on_header_field_complete;
  p->settings.on_header_value = on_header_value;
  p->settings.on_header_value_complete = on_header_value_complete;
  p->settings.on_headers_complete = on_headers_complete;
  p->settings.on_body = on_body;
  p->settings.on_message_complete = on_message_complete;
  llhttp_init(&p->ll, response ? HTTP_RESPONSE : HTTP_REQUEST, &p->settings);
  p->response = response;
  p->cbs = cbs;
  p->data = data;
  dduct__http_head_init(&p->head);
}

void dduct__http_parser_free(struct dduct_http_parser *p) {
  dduct__http_head_free(&p->head);
}

int dduct__http_parser_execute(struct dduct_http_parser *p, const char *data, size_t len,
                               size_t *consumed) {
  llhttp_errno_t e;
  p->exec_start = data;
  p->exec_end = data + len;
  p->exec_no++;
  e = llhttp_execute(&p->ll, data, len);
  *consumed = len;
  switch (e) {
  case HPE_OK:
    return 0;
  case HPE_PAUSED:
  case HPE_PAUSED_UPGRADE: {
    const char *pos = llhttp_get_error_pos(&p->ll);
    *consumed = pos != NULL && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
    return e == HPE_PAUSED ? DDUCT_HTTP_PAUSED : DDUCT_HTTP_UPGRADE;
  }
  default:
    *consumed = 0;
    if (p->too_big) {
      p->err_reason = p->response         ? "response head too large"
                      : p->target_too_big ? "request target too long"
                                          : "request head too large";
      return DDUCT_ETOOBIG;
    }
    p->err_reason = p->bad_reason != NULL ? p->bad_reason : llhttp_get_error_reason(&p->ll);
    if (p->err_reason == NULL) p->err_reason = llhttp_errno_name(e);
    return DDUCT_EPROTO;
  }
}

void dduct__http_parser_resume(struct dduct_http_parser *p) {
  if (llhttp_get_errno(&p->ll) == HPE_PAUSED_UPGRADE) llhttp_resume_after_upgrade(&p->ll);
  else if (llhttp_get_errno(&p->ll) == HPE_PAUSED) llhttp_resume(&p->ll);
}

int dduct__http_parser_finish(struct dduct_http_parser *p) {
  llhttp_errno_t e = llhttp_finish(&p->ll);
  return e == HPE_OK || e == HPE_PAUSED ? 0 : DDUCT_EPROTO;
}

int dduct__http_parser_keep_alive(const struct dduct_http_parser *p) {
  return llhttp_should_keep_alive(&p->ll);
}

int dduct__http_parser_chunked(const struct dduct_http_parser *p) {
  return (p->ll.flags & F_CHUNKED) != 0;
}

int64_t dduct__http_parser_content_length(const struct dduct_http_parser *p) {
  if (!(p->ll.flags & F_CONTENT_LENGTH)) return -1;
  return (int64_t)p->ll.content_length;
}

int dduct__http_parser_has_body(const struct dduct_http_parser *p) {
  if (p->ll.flags & F_CHUNKED) return 1;
  if (p->ll.flags & F_CONTENT_LENGTH) return p->ll.content_length > 0;
  return p->ll.type == HTTP_RESPONSE;
}

int dduct__http_status_for_error(int err) {
  if (err == DDUCT_ELOOP) return 508;
  if (err == UV_ETIMEDOUT) return 504;
  return 502;
}

int dduct__origin_format(char *buf, size_t len, const struct dduct_origin *o, unsigned flags) {
  const char *host = o->host != NULL ? o->host : "";
  int v6 = strchr(host, ':') != NULL;
  int port = (flags & DDUCT_ORIGIN_PORT) || o->port != (o->https ? 443u : 80u);
  const char *scheme = (flags & DDUCT_ORIGIN_NO_SCHEME) ? "" : o->https ? "https://" : "http://";
  if (port)
    return snprintf(buf, len, v6 ? "%s[%s]:%u" : "%s%s:%u", scheme, host, o->port);
  return snprintf(buf, len, v6 ? "%s[%s]" : "%s%s", scheme, host);
}

int dduct__http_no_body(int is_head, int status) {
  return is_head || status < 200 || status == 204 || status == 304;
}
