/* Fuzz target: HTTP/1.1 request and response heads as the proxy engine parses them
 * (libdduct/src/http.c on llhttp), fed in pieces the way sockets deliver them.
 *
 * Input: one control byte, then the bytes a peer sends. Control bits:
 *   0     parse responses (upstream side) instead of requests (client side)
 *   1..3  piece size: 0 = all at once, k = 2^(k-1) bytes per execute call (1..64)
 *   4     on_head skips the body (a response to HEAD)
 *   5     on_head pauses (DDUCT_HTTP_PAUSED) and the feeder resumes, as conn.c does
 *   6     on_done pauses after each message (pipelining), then the feeder resumes
 *
 * Invariants, beyond the sanitizers':
 * - every parsed string (method, target, reason, header names and values) lies inside the head
 *   buffer, is NUL-terminated at its recorded length with no NUL before it, and its bytes occur
 *   in the input (values trimmed of blanks); body pieces lie inside the piece fed;
 * - `consumed` never exceeds what was fed, and a pause always moves forward;
 * - serializing a parsed head and parsing that again gives the same head (method, target,
 *   status, reason, every header name and value in order): what the proxy forwards is read by
 *   the next hop as dduct read it;
 * - after strip_hop_by_hop no hop-by-hop header remains, Content-Length survives, and nothing
 *   else is dropped unless a Connection value names it; remove() counts what it removes;
 * - after a parse error, the method, target and reason parsed so far end within the head's
 *   bytes (conn.c logs them for the 400);
 * - parse_url / parse_authority on the target either fail or give a NUL-terminated host that
 *   fits, occurs in the target, and a path inside the target (or "/"). */
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "http.h"
#include "internal.h"

#define SER_CAP (2 * DDUCT_HTTP_HEAD_MAX + 8 * DDUCT_HTTP_HEADERS_MAX + 64)

struct ctx {
  const char *in;
  size_t in_len;
  const char *piece; /* the bytes of the current execute call */
  size_t piece_len;
  unsigned flags;
  int response;
  size_t heads, done;
  /* re-parse of a serialized head: compare against want */
  const struct dduct_http_head *want;
  int matched;
};

static char ser_buf[SER_CAP];

static int in_input(const struct ctx *c, const char *s, size_t n) {
  return n == 0 || memmem(c->in, c->in_len, s, n) != NULL;
}

/* A header value may be joined from obs-fold lines (llhttp passes them on as one value, the
 * fold read as a blank): then each blank-separated part must occur in the input. */
static int value_in_input(const struct ctx *c, const char *s, size_t n) {
  size_t i = 0;
  if (in_input(c, s, n)) return 1;
  while (i < n) {
    size_t j;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    for (j = i; j < n && s[j] != ' ' && s[j] != '\t'; j++) {
    }
    if (!in_input(c, s + i, j - i)) return 0;
    i = j;
  }
  return 1;
}

/* A string of h at off: inside buf, NUL-terminated at len, no NUL before. */
static void check_str(const struct dduct_http_head *h, uint32_t off, size_t len, const char *what) {
  if (off == 0) {
    FUZZ_CHECK(len == 0, "%s unset but %zu long", what, len);
    return;
  }
  FUZZ_CHECK(off < h->len && len < h->len - off, "%s [%u,+%zu) outside the head (%zu)", what,
             off, len, h->len);
  FUZZ_CHECK(h->buf[off + len] == '\0', "%s not NUL-terminated at its length", what);
  FUZZ_CHECK(strlen(h->buf + off) == len, "%s holds a NUL inside (%zu != %zu)", what,
             strlen(h->buf + off), len);
}

static void check_head(const struct ctx *c, const struct dduct_http_head *h) {
  FUZZ_CHECK(h->buf != NULL && h->len <= h->cap, "head buffer %zu/%zu", h->len, h->cap);
  FUZZ_CHECK(h->cap <= DDUCT_HTTP_HEAD_MAX + 2 * DDUCT_HTTP_HEADERS_MAX + 64, "head cap %zu",
             h->cap);
  FUZZ_CHECK(h->n <= DDUCT_HTTP_HEADERS_MAX, "%zu headers", h->n);
  if (c->response) {
    /* llhttp 8.1 takes "HTTP/1.1 9 OK" as status 9; a status code is 3 digits (RFC 9112 4),
     * and dduct then forwards "HTTP/1.1 009 OK". */
    FUZZ_CHECK(h->status >= 100 && h->status <= 999, "status %d", h->status);
    FUZZ_CHECK(h->status >= 0 && h->status <= 999, "status %d", h->status);
    check_str(h, h->reason, strlen(dduct__http_reason(h)), "reason");
    FUZZ_CHECK(in_input(c, dduct__http_reason(h), strlen(dduct__http_reason(h))),
               "reason '%s' not in the input", dduct__http_reason(h));
  } else {
    const char *m = dduct__http_method(h), *t = dduct__http_target(h);
    check_str(h, h->method, strlen(m), "method");
    check_str(h, h->target, strlen(t), "target");
    FUZZ_CHECK(m[0] != '\0', "request without a method");
    FUZZ_CHECK(in_input(c, m, strlen(m)), "method '%s' not in the input", m);
    FUZZ_CHECK(in_input(c, t, strlen(t)), "target '%s' not in the input", t);
  }
  for (size_t i = 0; i < h->n; i++) {
    const struct dduct_http_header *x = &h->h[i];
    check_str(h, x->name, x->name_len, "header name");
    check_str(h, x->value, x->value_len, "header value");
    /* llhttp 8.1 lets ": v" through as a header with an empty name (requests and responses);
     * a field name is a token of at least one character (RFC 9110 5.1). */
    FUZZ_CHECK(x->name_len > 0, "empty header name %zu", i);
    FUZZ_CHECK(in_input(c, h->buf + x->name, x->name_len), "header name '%s' not in the input",
               h->buf + x->name);
    FUZZ_CHECK(value_in_input(c, h->buf + x->value, x->value_len),
               "header value '%s' not in the input", h->buf + x->value);
    FUZZ_CHECK(x->value_len == 0 || (h->buf[x->value + x->value_len - 1] != ' ' &&
                                     h->buf[x->value + x->value_len - 1] != '\t'),
               "header value '%s' keeps trailing blanks", h->buf + x->value);
  }
}

static int is_hop(const char *name) {
  static const char *const hop[] = {"Connection", "Keep-Alive", "Proxy-Connection",
                                    "Proxy-Authenticate", "Proxy-Authorization", "TE",
                                    "Trailer", "Transfer-Encoding", "Upgrade"};
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(hop); i++)
    if (strcasecmp(name, hop[i]) == 0) return 1;
  return 0;
}

/* name occurs (case-insensitively) in a Connection header's value. */
static int in_connection(const struct dduct_http_head *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcasecmp(dduct__http_hname(h, i), "Connection") == 0 &&
        strcasestr(dduct__http_hvalue(h, i), name) != NULL)
      return 1;
  return 0;
}

static size_t count_named(const struct dduct_http_head *h, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < h->n; i++) n += strcasecmp(dduct__http_hname(h, i), name) == 0;
  return n;
}

static void check_hop_by_hop(const struct dduct_http_head *h) {
  struct dduct_http_head s;
  size_t j = 0, cl;
  dduct__http_head_init(&s);
  FUZZ_CHECK(dduct__http_head_copy(&s, h) == 0, "head_copy");
  dduct__http_strip_hop_by_hop(&s);
  for (size_t i = 0; i < h->n; i++) {
    const char *name = dduct__http_hname(h, i);
    int kept = j < s.n && s.h[j].name == h->h[i].name && s.h[j].value == h->h[i].value;
    if (kept) {
      FUZZ_CHECK(!is_hop(name), "hop-by-hop '%s' survived", name);
      j++;
    } else {
      FUZZ_CHECK(strcasecmp(name, "Content-Length") != 0, "Content-Length was stripped");
      /* Blank-separated names count too ("Connection: a b"): stripping more is the safe side. */
      FUZZ_CHECK(is_hop(name) || in_connection(h, name),
                 "'%s' stripped though neither hop-by-hop nor named by Connection", name);
    }
  }
  FUZZ_CHECK(j == s.n, "strip kept %zu of %zu in order", j, s.n);
  cl = count_named(&s, "content-length");
  FUZZ_CHECK(dduct__http_remove(&s, "CONTENT-LENGTH") == cl, "remove count");
  FUZZ_CHECK(dduct__http_get(&s, "content-length") == NULL, "removed header still found");
  dduct__http_head_free(&s);
}

static void check_url(const struct ctx *c, const char *target) {
  char host[256];
  uint16_t port = 0;
  const char *path = NULL;
  int https = -1;
  memset(host, 'X', sizeof(host));
  if (dduct__http_parse_url(target, &https, host, sizeof(host), &port, &path) == 0) {
    FUZZ_CHECK(https == 0 || https == 1, "https %d", https);
    FUZZ_CHECK(memchr(host, '\0', sizeof(host)) != NULL && host[0] != '\0', "host not terminated");
    FUZZ_CHECK(strcasestr(target, host) != NULL, "host '%s' not in '%s'", host, target);
    FUZZ_CHECK(port != 0, "port 0 from '%s'", target);
    FUZZ_CHECK(path != NULL && (strcmp(path, "/") == 0 ||
                                (path >= target && path <= target + strlen(target))),
               "path outside the target");
  }
  memset(host, 'X', sizeof(host));
  if (dduct__http_parse_authority(target, host, 64, &port, 443) == 0) {
    FUZZ_CHECK(memchr(host, '\0', 64) != NULL && host[0] != '\0', "authority host not in cap");
    FUZZ_CHECK(strstr(target, host) != NULL, "host '%s' not in '%s'", host, target);
    FUZZ_CHECK(port != 0, "port 0 from '%s'", target);
  }
  (void)c;
}

static void same_head(const struct dduct_http_head *a, const struct dduct_http_head *b,
                      int response) {
  if (response) {
    FUZZ_CHECK(a->status == b->status, "status %d re-parsed as %d", a->status, b->status);
    FUZZ_CHECK(strcmp(dduct__http_reason(a), dduct__http_reason(b)) == 0,
               "reason '%s' re-parsed as '%s'", dduct__http_reason(a), dduct__http_reason(b));
  } else {
    FUZZ_CHECK(strcmp(dduct__http_method(a), dduct__http_method(b)) == 0,
               "method '%s' re-parsed as '%s'", dduct__http_method(a), dduct__http_method(b));
    FUZZ_CHECK(strcmp(dduct__http_target(a), dduct__http_target(b)) == 0,
               "target '%s' re-parsed as '%s'", dduct__http_target(a), dduct__http_target(b));
  }
  FUZZ_CHECK(a->n == b->n, "%zu headers re-parsed as %zu", a->n, b->n);
  for (size_t i = 0; i < a->n; i++) {
    FUZZ_CHECK(strcmp(dduct__http_hname(a, i), dduct__http_hname(b, i)) == 0,
               "header %zu '%s' re-parsed as '%s'", i, dduct__http_hname(a, i),
               dduct__http_hname(b, i));
    FUZZ_CHECK(strcmp(dduct__http_hvalue(a, i), dduct__http_hvalue(b, i)) == 0,
               "header %zu value '%s' re-parsed as '%s'", i, dduct__http_hvalue(a, i),
               dduct__http_hvalue(b, i));
  }
}

static int reparse_on_head(struct dduct_http_parser *p) {
  struct ctx *c = p->data;
  if (c->matched++ == 0) same_head(c->want, &p->head, c->response);
  return 2;
}

static const struct dduct_http_parser_cbs reparse_cbs = {reparse_on_head, NULL, NULL};

/* Serialize h and parse it again: the same head must come back. */
static void check_roundtrip(const struct ctx *c, const struct dduct_http_head *h) {
  struct dduct_http_parser p;
  struct ctx rc = {ser_buf, 0, ser_buf, 0, 0, c->response, 0, 0, h, 0};
  size_t used;
  int n = c->response ? dduct__http_serialize_response(h, ser_buf, sizeof(ser_buf))
                      : dduct__http_serialize_request(h, ser_buf, sizeof(ser_buf));
  FUZZ_CHECK(n > 0 && (size_t)n <= sizeof(ser_buf), "serialize: %d", n);
  rc.in_len = rc.piece_len = (size_t)n;
  dduct__http_parser_init(&p, c->response, &reparse_cbs, &rc);
  n = dduct__http_parser_execute(&p, ser_buf, rc.in_len, &used);
  FUZZ_CHECK(rc.matched == 1, "serialized head did not parse again (rc %d: %s):\n%.*s", n,
             p.err_reason != NULL ? p.err_reason : "", (int)rc.in_len, ser_buf);
  FUZZ_CHECK(n == DDUCT_HTTP_PAUSED || n == DDUCT_HTTP_UPGRADE, "re-parse rc %d", n);
  dduct__http_parser_free(&p);
}

static int has_empty_name(const struct dduct_http_head *h) {
  for (size_t i = 0; i < h->n; i++)
    if (h->h[i].name_len == 0) return 1;
  return 0;
}

static int on_head(struct dduct_http_parser *p) {
  struct ctx *c = p->data;
  const struct dduct_http_head *h = &p->head;
  c->heads++;
  check_head(c, h);
  /* With an empty header name, strip_hop_by_hop loops forever (strcasestr of "" never moves
   * on; crashers/http-request-empty-name-connection-hang.bin): when skipping known bugs, keep
   * clear of it so the run can go on. */
  if (!FUZZ_SKIP_KNOWN() || !has_empty_name(h)) check_hop_by_hop(h);
  /* llhttp takes "CONNECT \n" (no target, no version: HTTP/0.9 style) with an empty target; the
   * engine answers 400 when it cannot parse the target, so such a head is never forwarded. */
  if (c->response || dduct__http_target(h)[0] != '\0') check_roundtrip(c, h);
  if (!c->response) check_url(c, dduct__http_target(h));
  /* The framing queries conn.c and upstream.c make; content length is never negative other
   * than "absent", and a chunked message has no length. */
  {
    int64_t cl = dduct__http_parser_content_length(p);
    FUZZ_CHECK(cl >= -1, "content length %lld", (long long)cl);
    (void)dduct__http_parser_keep_alive(p);
    (void)dduct__http_parser_has_body(p);
    if (dduct__http_parser_chunked(p))
      FUZZ_CHECK(cl == -1, "chunked and Content-Length %lld at once", (long long)cl);
  }
  if (c->response && (c->flags & 16)) return 1;
  return (c->flags & 32) ? 2 : 0;
}

static void on_body(struct dduct_http_parser *p, const char *data, size_t len) {
  struct ctx *c = p->data;
  FUZZ_CHECK(len > 0 && data >= c->piece && data + len <= c->piece + c->piece_len,
             "body piece outside the data fed");
}

static int on_done(struct dduct_http_parser *p) {
  struct ctx *c = p->data;
  c->done++;
  return (c->flags & 64) != 0;
}

static const struct dduct_http_parser_cbs cbs = {on_head, on_body, on_done};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  dduct_log_set(DDUCT_LOG_OFF, NULL, NULL);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct dduct_http_parser p;
  struct ctx c;
  size_t off = 0, step, steps = 0;
  unsigned k;
  if (size < 1 || size > 2 * DDUCT_HTTP_HEAD_MAX) return 0;
  memset(&c, 0, sizeof(c));
  c.flags = data[0];
  c.response = data[0] & 1;
  c.in = (const char *)data + 1;
  c.in_len = size - 1;
  k = (data[0] >> 1) & 7;
  step = k == 0 ? c.in_len : (size_t)1 << (k - 1);
  if (step == 0) step = 1;
  dduct__http_parser_init(&p, c.response, &cbs, &c);
  while (off < c.in_len) {
    size_t n = DDUCT_MIN(step, c.in_len - off), used = 0;
    int rc;
    c.piece = c.in + off;
    c.piece_len = n;
    rc = dduct__http_parser_execute(&p, c.piece, n, &used);
    FUZZ_CHECK(++steps <= 4 * c.in_len + 16, "parser makes no progress");
    if (rc < 0) {
      /* EPROTO / ETOOBIG: the connection closes, and conn.c logs the method and target parsed
       * so far: they end inside what this head wrote (not in bytes an earlier head left). */
      const struct dduct_http_head *h = &p.head;
      uint32_t offs[3] = {h->method, h->target, h->reason};
      /* A closed string's NUL is inside len; an open one's at buf[len] (append keeps room). */
      size_t span_end = h->len < h->cap ? h->len + 1 : h->len;
      for (int i = 0; i < 3; i++)
        FUZZ_CHECK(offs[i] == 0 || (offs[i] <= h->len &&
                                    memchr(h->buf + offs[i], '\0', span_end - offs[i])),
                   "string %d of a failed head runs past what was parsed", i);
      break;
    }
    FUZZ_CHECK(used <= n, "consumed %zu of %zu", used, n);
    if (rc == DDUCT_HTTP_UPGRADE && !c.response &&
        strcmp(dduct__http_method(&p.head), "CONNECT") == 0)
      break; /* the rest is tunnel bytes, not HTTP */
    if (rc != 0) dduct__http_parser_resume(&p);
    off += used;
  }
  if (off >= c.in_len) (void)dduct__http_parser_finish(&p);
  FUZZ_CHECK(c.done <= c.heads, "%zu messages done, %zu heads", c.done, c.heads);
  dduct__http_parser_free(&p);
  return 0;
}
