/* The cache route: GET and HEAD requests whose path matches a filter.
 *
 * Every client is a reader of the store's file, the one that caused the download included, so a
 * hit, a request during a fill and the first request take one path (serve). The origin fetch that
 * fills an entry is a job of its own, not tied to the client that started it: if that client
 * leaves, the download still completes for the others and for the cache.
 *
 *   lookup --HIT/FOLLOW--> [revalidate: HEAD to the origin] --> serve (200/206/304/416/HEAD)
 *          --FILL-------> job: GET (redirects followed) --200--> fill_begin --> serve
 *                                                     --else--> that answer passes through
 *          --BYPASS-----> the engine forwards the request uncached
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cache.h"
#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "store.h"
#include "upstream.h"

#define LOG_MOD "cache"
#define MAX_REDIRECTS 5

struct job;

struct creq {
  struct dduct_cache *k;
  struct dduct_conn *c;        /* NULL once the client is gone or its response is done */
  struct dduct_http_head head; /* the client's request head (a copy: answers may come later) */
  const struct dduct_http_head *rh; /* what serving reads: &head, or the engine's for a hot hit */
  struct dduct__store_key key;
  char *url; /* scheme://host[:port]/path, no query: for logs and the sidecar */
  int https;
  char *host;
  uint16_t port;
  char *target; /* origin-form with query: what the origin is asked for */
  int is_head, refreshed, wait_drain, in_cb, dead;
  int only_if_cached; /* Cache-Control: only-if-cached: never contact the origin */
  int reval_status, reval_agrees;
  struct dduct__store_lookup *look;
  struct dduct__store_entry *e; /* our own reference */
  struct dduct__store_reader *r;
  struct dduct_fetch *f; /* revalidation HEAD */
  struct job *job;       /* the fill this client waits on, or whose non-200 answer it gets */
};

struct job {
  struct job *next, *prev;
  struct dduct_cache *k;
  struct dduct__store_entry *e; /* the filler's reference, until fill_end or fill_cancel */
  struct dduct_fetch *f;
  struct creq *first; /* the client that caused the fill, while it waits for the answer */
  char *url;
  int began, pass, paused;
  uint64_t t0; /* uv_hrtime when started */
  /* The request, kept to ask again: parents in rendezvous order, then the origin. */
  int https;
  char *host, *target;
  uint16_t port;
  struct dduct_http_head h;
  size_t order[DDUCT__PARENTS_MAX];
  size_t norder, tried;
  int parent; /* the parent asked now (index into k->parents), -1: the origin */
  uint64_t got;  /* body bytes stored so far */
  uint64_t skip; /* a resumed fetch answered 200: bytes to drop before storing again */
  int resumed;   /* the fetch running asks for the rest after a parent died mid-body */
};

static void finish(struct creq *q);
static void serve(struct creq *q);
static void start_lookup(struct creq *q, int flags);

/* ---- the cache object and its running jobs ---------------------------------------------- */

int dduct__cache_new(const struct dduct_cache_config *cfg, struct dduct_cache **out) {
  struct dduct_cache *k = calloc(1, sizeof(*k));
  *out = k;
  if (k == NULL) return DDUCT_ENOMEM;
  k->cfg = *cfg;
  return 0;
}

void dduct__cache_free(struct dduct_cache *k) {
  free(k); /* dduct__cache_shutdown ended every job */
}

static void job_link(struct job *j) {
  struct dduct_cache *k = j->k;
  j->next = k->jobs;
  if (k->jobs != NULL) k->jobs->prev = j;
  k->jobs = j;
}

static void job_free(struct job *j) {
  if (j->prev != NULL) j->prev->next = j->next;
  else if (j->k->jobs == j) j->k->jobs = j->next;
  if (j->next != NULL) j->next->prev = j->prev;
  j->k->cfg.metrics->fills_in_flight--;
  if (j->first != NULL) j->first->job = NULL;
  free(j->url);
  free(j->host);
  free(j->target);
  dduct__http_head_free(&j->h);
  free(j);
}

/* Stop every fill (the store keeps nothing half-done). Called by the proxy at shutdown. */
void dduct__cache_shutdown(struct dduct_cache *k) {
  for (;;) {
    struct job *j = k->jobs;
    if (j == NULL) return;
    if (j->f != NULL) dduct__fetch_abort(j->f);
    j->f = NULL;
    if (j->began) dduct__store_fill_end(j->e, UV_ECANCELED);
    else if (j->e != NULL) dduct__store_fill_cancel(j->e, UV_ECANCELED);
    j->e = NULL;
    if (j->first != NULL) {
      struct creq *q = j->first;
      struct dduct_conn *c = q->c;
      q->job = NULL;
      j->first = NULL;
      q->c = NULL;
      if (c != NULL) dduct__conn_abort(c);
      finish(q);
    }
    job_free(j);
  }
}

void dduct__cache_each_fill(const struct dduct_cache *k,
                            void (*cb)(void *arg, const struct dduct__fill_info *fi), void *arg) {
  for (const struct job *j = k->jobs; j != NULL; j = j->next) {
    struct dduct__fill_info fi = {j->url, 0, UINT64_MAX, 0, j->t0};
    if (j->pass) continue;
    if (j->e != NULL && j->began) {
      dduct__store_entry_progress(j->e, &fi.received, &fi.expected, &fi.readers);
      if (fi.expected == DDUCT__STORE_SIZE_UNKNOWN) fi.expected = UINT64_MAX;
    }
    cb(arg, &fi);
  }
}

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *hget(const struct dduct_http_head *h, const char *name) {
  return dduct__http_get(h, name);
}

/* The client's headers minus what would make the origin answer other than a plain 200. */
static int origin_headers(const struct creq *q, struct dduct_http_head *out) {
  static const char *const drop[] = {"Range",         "If-Range",           "If-None-Match",
                                     "If-Modified-Since", "If-Match",       "If-Unmodified-Since",
                                     "Accept-Encoding"};
  dduct__http_head_init(out);
  if (dduct__http_head_copy(out, &q->head) != 0) return DDUCT_ENOMEM;
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(drop); i++) dduct__http_remove(out, drop[i]);
  return 0;
}

static char *make_url(const struct dduct_request *req) {
  struct dduct_origin o = {req->https, req->host, req->port};
  size_t n = strlen(req->host) + req->path_len_no_query + 32;
  int at;
  char *u;
  if ((u = malloc(n)) == NULL) return NULL;
  at = dduct__origin_format(u, n, &o, 0);
  snprintf(u + at, n - (size_t)at, "%.*s", (int)req->path_len_no_query, req->path);
  return u;
}

static const char *peer(const struct creq *q) {
  return q->c != NULL ? dduct__conn_peer(q->c) : "(gone)";
}

/* An entry the origin gave one client (docs/cache.md, "Private answers"): served only to a
 * request for the origin that filled it, after that origin agreed with the requester's own
 * headers. [cache] share_private = true serves them like any other. */
static int entry_private(const struct dduct_cache *k, const struct dduct__store_entry *e) {
  return !k->cfg.share_private && dduct__store_entry_meta(e)->is_private;
}

/* 1 if q names the scheme, host and port of the URL that filled e (its sidecar's url). */
static int same_origin_as_fill(const struct creq *q, const struct dduct__store_entry *e) {
  const char *u = dduct__store_entry_meta(e)->url;
  struct dduct_origin o = {q->https, q->host, q->port};
  char want[300];
  int n = dduct__origin_format(want, sizeof(want), &o, 0);
  if (n <= 0 || (size_t)n >= sizeof(want) || strncasecmp(u, want, (size_t)n) != 0) return 0;
  return u[n] == '/' || u[n] == '\0';
}

/* Hand the request on to the next route (forward: uncached); an only-if-cached request gets
 * 504 instead. */
static void decline(struct creq *q) {
  struct dduct_conn *c = q->c;
  int oic = q->only_if_cached;
  char url[220] = "";
  if (c != NULL) dduct__conn_txn(c)->cache = DDUCT_CACHE_BYPASS;
  if (oic) snprintf(url, sizeof(url), "%s", q->url);
  q->c = NULL;
  finish(q);
  if (c != NULL && oic) /* RFC 9111 5.2.1.7: nothing stored answers it, no origin contact */
    dduct__conn_send_error(c, 504, "\"%s\" is not in the cache (only-if-cached)", url);
  else if (c != NULL) dduct__conn_decline(c);
}

/* ---- the client side ---------------------------------------------------------------------- */

static void finish_now(struct creq *q) {
  if (q->look != NULL) dduct__store_lookup_cancel(q->look);
  dduct__store_reader_free(q->r);
  if (q->f != NULL) dduct__fetch_abort(q->f);
  if (q->job != NULL) q->job->first = NULL;
  dduct__store_entry_release(q->e);
  dduct__http_head_free(&q->head);
  free(q->url);
  free(q->host);
  free(q->target);
  free(q);
}

static void finish(struct creq *q) {
  if (q->in_cb > 0) {
    q->dead = 1;
    return;
  }
  finish_now(q);
}

static void client_abort_cb(void *arg) {
  struct creq *q = arg;
  q->c = NULL;
  finish(q);
}

static void client_drain_cb(void *arg) {
  struct creq *q = arg;
  if (q->wait_drain && q->r != NULL) {
    q->wait_drain = 0;
    dduct__store_reader_read(q->r);
  }
  if (q->job != NULL && q->job->pass && q->job->paused && q->job->f != NULL) {
    q->job->paused = 0;
    dduct__fetch_resume(q->job->f);
  }
}

static const struct dduct_conn_handler client_handler = {client_drain_cb, client_abort_cb};

/* The response is complete: the connection is the engine's again. */
static void done(struct creq *q) {
  struct dduct_conn *c = q->c;
  q->c = NULL;
  if (c != NULL) (void)dduct__conn_send_end(c);
  finish(q);
}

/* Close the client before the end of its body, so it never takes a short body for a whole. */
static void cut(struct creq *q, const char *why) {
  struct dduct_conn *c = q->c;
  LOG_WARN(LOG_MOD, "Cut \"%s\" for %s: %s", q->url, peer(q), why);
  q->c = NULL;
  if (c != NULL) dduct__conn_abort(c);
  finish(q);
}

static void read_cb(void *arg, ssize_t n, const char *data) {
  struct creq *q = arg;
  q->in_cb++;
  if (n > 0 && q->c != NULL) {
    if (dduct__conn_send_body(q->c, data, (size_t)n, NULL, NULL) != 0)
      cut(q, "client write failed");
    else if (q->c != NULL && dduct__conn_queued(q->c) > 0) {
      /* The kernel's socket buffer is full (it holds far more than a chunk): wait for it to
       * take this chunk before reading the next, so a client that stops reading costs one
       * chunk (docs/cache.md), not the high-water mark plus the reader's two buffers. */
      q->wait_drain = 1;
      dduct__store_reader_trim(q->r); /* the chunk was copied into the queue */
    }
    else if (q->c != NULL)
      dduct__store_reader_read(q->r);
  } else if (n == 0) {
    /* done(q) without its finish(): q is freed below, visibly after its last use (GCC's
     * -Wuse-after-free cannot see that in_cb keeps finish() from freeing it in here). */
    struct dduct_conn *c = q->c;
    q->c = NULL;
    q->dead = 1;
    if (c != NULL) (void)dduct__conn_send_end(c);
  } else if (n < 0) {
    cut(q, dduct_strerror((int)n));
  }
  q->in_cb--;
  if (q->dead && q->in_cb == 0) finish_now(q);
}

/* ---- serving from the store --------------------------------------------------------------- */

static int etag_matches(const char *list, const char *etag) {
  const char *p = list;
  size_t elen;
  if (etag[0] == 'W' && etag[1] == '/') etag += 2;
  elen = strlen(etag);
  while (*p != '\0') {
    const char *end;
    size_t n;
    while (*p == ' ' || *p == '\t' || *p == ',') p++;
    if (*p == '*') return 1;
    if (p[0] == 'W' && p[1] == '/') p += 2;
    end = p;
    while (*end != '\0' && *end != ',') end++;
    n = (size_t)(end - p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    if (n == elen && n > 0 && memcmp(p, etag, n) == 0) return 1;
    p = end;
  }
  return 0;
}

static int parse_u64(const char **s, uint64_t *out) {
  uint64_t v = 0;
  const char *p = *s;
  if (*p < '0' || *p > '9') return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (UINT64_MAX - 9) / 10) return -1;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  *s = p;
  *out = v;
  return 0;
}

/* One "bytes=" range against size: 1 satisfiable ([*off, *off+*len)), -1 unsatisfiable (416),
 * 0 ignore (malformed, several ranges or another unit: RFC 9110 lets us send the whole). */
static int parse_range(const char *v, uint64_t size, uint64_t *off, uint64_t *len) {
  uint64_t a, b;
  if (strncasecmp(v, "bytes=", 6) != 0 || strchr(v, ',') != NULL) return 0;
  v += 6;
  while (*v == ' ') v++;
  if (*v == '-') {
    v++;
    if (parse_u64(&v, &b) != 0 || *v != '\0') return 0;
    if (b == 0 || size == 0) return -1;
    *len = DDUCT_MIN(b, size);
    *off = size - *len;
    return 1;
  }
  if (parse_u64(&v, &a) != 0 || *v++ != '-') return 0;
  if (*v == '\0') b = UINT64_MAX;
  else if (parse_u64(&v, &b) != 0 || *v != '\0' || b < a) return 0;
  if (a >= size) return -1;
  b = DDUCT_MIN(b, size - 1);
  *off = a;
  *len = b - a + 1;
  return 1;
}

/* Origin headers never stored nor replayed: framing and ranges (dduct computes them for each
 * answer), hop-by-hop ones (upstream already strips those it is told of), Age (computed on each
 * hit), and Set-Cookie (one client's cookie must not go to every client of the entry). */
static int not_replayed(const char *name) {
  static const char *const names[] = {"Content-Range", "Accept-Ranges", "Set-Cookie",
                                      "Set-Cookie2", "Age"};
  if (dduct__http_header_class(name, strlen(name)) & (DDUCT_HDR_HOP | DDUCT_HDR_ENGINE)) return 1;
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(names); i++)
    if (strcasecmp(name, names[i]) == 0) return 1;
  return 0;
}

/* What a 304 carries of the stored headers (RFC 9110 15.4.5). */
static int for_304(const char *name) {
  static const char *const names[] = {"Cache-Control", "Content-Location", "Date", "ETag",
                                      "Expires",       "Vary",             "Last-Modified"};
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(names); i++)
    if (strcasecmp(name, names[i]) == 0) return 1;
  return 0;
}

/* The origin's end-to-end headers of h as a store headers block ("name\0value\0..."); *len 0
 * and NULL when it has none worth keeping (or out of memory: the entry then has the basic
 * fields only). An addressed entry's Docker-Content-Digest is dduct's own, from the digest it
 * verified. */
static char *headers_block(const struct dduct_http_head *h, int addressed, size_t *len) {
  size_t n = 0, o = 0;
  char *b;
  for (size_t i = 0; i < h->n; i++) n += h->h[i].name_len + h->h[i].value_len + 2;
  *len = 0;
  if (n == 0 || (b = malloc(n)) == NULL) return NULL;
  for (size_t i = 0; i < h->n; i++) {
    const char *name = h->buf + h->h[i].name;
    if (not_replayed(name) || (addressed && strcasecmp(name, "Docker-Content-Digest") == 0))
      continue;
    memcpy(b + o, name, h->h[i].name_len + 1);
    o += h->h[i].name_len + 1;
    memcpy(b + o, h->buf + h->h[i].value, h->h[i].value_len + 1);
    o += h->h[i].value_len + 1;
  }
  *len = o;
  return b;
}

/* The answer's headers: the origin's (from the sidecar, or from its answer mid-fill) as it sent
 * them, minus what dduct computes (a 304 gets the validators and caching ones only, a 416 none),
 * then ETag when the origin sent none (a blob's digest), Accept-Ranges, Docker-Content-Digest
 * for a blob, and Age for a stored entry. An entry stored before origin headers were kept has
 * its Content-Type, ETag and Last-Modified. A Content-Type is never made up. */
static int add_headers(struct creq *q, struct dduct_http_head *h, const char *etag, int status) {
  const struct dduct__store_meta *m = dduct__store_entry_meta(q->e);
  int rc = 0, has_etag = 0;
  if (m->headers != NULL) {
    const char *name, *value;
    size_t off = 0;
    while (rc == 0 && status != 416 &&
           dduct__store_header_next(m->headers, m->headers_len, &off, &name, &value)) {
      if (not_replayed(name) || (status == 304 && !for_304(name))) continue;
      if (strcasecmp(name, "ETag") == 0) has_etag = 1;
      rc = dduct__http_add(h, name, value);
    }
  } else if (status != 416) {
    if (m->content_type[0] && status != 304)
      rc = dduct__http_add(h, "Content-Type", m->content_type);
    if (rc == 0 && m->last_modified[0]) rc = dduct__http_add(h, "Last-Modified", m->last_modified);
  }
  if (rc == 0 && !has_etag && etag[0] && status != 416) rc = dduct__http_add(h, "ETag", etag);
  if (rc == 0 && m->size != DDUCT__STORE_SIZE_UNKNOWN && status != 304)
    rc = dduct__http_add(h, "Accept-Ranges", "bytes");
  if (rc == 0 && dduct__store_entry_addressed(q->e))
    rc = dduct__http_add(h, "Docker-Content-Digest", m->digest);
  if (rc == 0 && m->stored_at > 0 && status != 416) {
    char age[24];
    int64_t a = (int64_t)time(NULL) - m->stored_at;
    snprintf(age, sizeof(age), "%lld", (long long)(a > 0 ? a : 0));
    rc = dduct__http_add(h, "Age", age);
  }
  return rc;
}

/* Range handling: status 200/206/416 and the slice to send. */
static int pick_range(struct creq *q, const char *etag, uint64_t *off, uint64_t *len,
                      char *crange, size_t cap) {
  const struct dduct__store_meta *m = dduct__store_entry_meta(q->e);
  const char *range = hget(q->rh, "Range"), *ifr = hget(q->rh, "If-Range");
  int r;
  *off = 0;
  *len = m->size;
  if (range == NULL || m->size == DDUCT__STORE_SIZE_UNKNOWN) return 200;
  if (ifr != NULL && strcmp(ifr, etag) != 0 && strcmp(ifr, m->last_modified) != 0) return 200;
  r = parse_range(range, m->size, off, len);
  if (r == 0) {
    *off = 0;
    *len = m->size;
    return 200;
  }
  if (r < 0) {
    snprintf(crange, cap, "bytes */%llu", (unsigned long long)m->size);
    return 416;
  }
  snprintf(crange, cap, "bytes %llu-%llu/%llu", (unsigned long long)*off,
           (unsigned long long)(*off + *len - 1), (unsigned long long)m->size);
  return 206;
}

/* A complete entry's answer up to this size goes out with its head in one write (one TLS record
 * when head and body fit in 16 KiB, one syscall), its body read at once with one pread. */
#define WHOLE_MAX (16 * 1024)

/* What serving q from its entry answers: status, head, and the slice of the body. */
struct answer {
  struct dduct_http_head h;
  int status;
  uint64_t off, len;
  int64_t cl;     /* Content-Length to announce, -1 none */
  int nobody;     /* no body bytes follow the head */
  int whole;      /* head and body (if any) in one write */
};

static int prepare(struct creq *q, struct answer *a) {
  const struct dduct__store_meta *m = dduct__store_entry_meta(q->e);
  char etag[80 + 8], crange[96] = "";
  const char *inm = hget(q->rh, "If-None-Match");
  int rc;
  if (m->etag[0]) snprintf(etag, sizeof(etag), "%s", m->etag);
  else if (m->digest[0]) snprintf(etag, sizeof(etag), "\"%s\"", m->digest);
  else etag[0] = '\0';
  a->status = pick_range(q, etag, &a->off, &a->len, crange, sizeof(crange));
  if (inm != NULL && etag[0] && etag_matches(inm, etag)) a->status = 304;
  a->cl = a->status == 304 ? -1
          : a->status == 416 ? 0
          : m->size == DDUCT__STORE_SIZE_UNKNOWN ? -1
                                                 : (int64_t)a->len;
  a->nobody = q->is_head || a->status == 304 || a->status == 416 || a->len == 0;
  /* A whole answer completes at once, so the next pipelined request is read right after it:
   * only while the client keeps up (the queue stays under the high-water mark), as a body sent
   * through a reader waits for the drain before its end. */
  a->whole = a->nobody || (dduct__store_entry_complete(q->e) && a->len <= WHOLE_MAX &&
                           dduct__conn_queued(q->c) + a->len <= DDUCT_STREAM_HIGH_WATER);
  dduct__http_head_init(&a->h);
  rc = add_headers(q, &a->h, etag, a->status);
  if (rc == 0 && crange[0] && a->status != 304)
    rc = dduct__http_add(&a->h, "Content-Range", crange);
  if (rc != 0) dduct__http_head_free(&a->h);
  return rc;
}

/* The whole answer in one write. Nothing is sent when the body cannot be read (DDUCT_ESHORT for
 * a file cut behind our back): the caller can still hand the request on. Returns 0 when the
 * response is complete, 1 when the body could not be read, < 0 when sending failed. */
static int send_whole(struct creq *q, struct answer *a) {
  char body[WHOLE_MAX];
  size_t n = a->nobody ? 0 : (size_t)a->len;
  if (n > 0) {
    ssize_t got = dduct__store_entry_pread(q->e, body, n, a->off);
    if (got != (ssize_t)n) {
      LOG_WARN(LOG_MOD, "Reading \"%s\": %s", dduct__store_entry_meta(q->e)->url,
               dduct_strerror(got < 0 ? (int)got : DDUCT_ESHORT));
      return 1;
    }
  }
  return dduct__conn_send_whole(q->c, a->status, NULL, &a->h, a->cl, body, n);
}

static void serve(struct creq *q) {
  struct answer a;
  int rc;

  if (q->c == NULL) {
    finish(q);
    return;
  }
  dduct__stats_entry_served(q->k->cfg.metrics, dduct__store_entry_meta(q->e)->url,
                            dduct__store_entry_meta(q->e)->size);
  if (prepare(q, &a) != 0) {
    cut(q, "cannot send the response head");
    return;
  }
  if (a.whole) {
    rc = send_whole(q, &a);
    dduct__http_head_free(&a.h);
    if (rc == 1 && !q->refreshed && !q->only_if_cached) {
      /* The file was cut or changed behind our back, and the store had no news of it yet (its
       * watch is read on the store's home loop, which may not have run since): fetch it again
       * into the cache rather than forwarding this one request uncached. */
      LOG_INFO(LOG_MOD, "Fetching \"%s\" again: its file no longer holds the entry", q->url);
      dduct__store_entry_release(q->e);
      q->e = NULL;
      q->refreshed = 1;
      start_lookup(q, DDUCT__STORE_REFRESH);
    } else if (rc == 1) {
      LOG_WARN(LOG_MOD, "Forwarding \"%s\" uncached: its file cannot be read", q->url);
      decline(q);
    } else if (rc != 0) {
      cut(q, "cannot send the response");
    } else {
      q->c = NULL; /* complete: the connection is the engine's again */
      finish(q);
    }
    return;
  }
  rc = dduct__conn_send_head(q->c, a.status, NULL, &a.h, a.cl);
  dduct__http_head_free(&a.h);
  if (rc != 0) {
    cut(q, "cannot send the response head");
    return;
  }
  rc = dduct__store_reader_new(q->e, a.off,
                               a.status == 206 ? a.len : DDUCT__STORE_SIZE_UNKNOWN, read_cb, q,
                               &q->r);
  if (rc != 0 || dduct__store_reader_read(q->r) != 0) cut(q, dduct_strerror(rc));
}

/* ---- revalidation (revalidate = 'always') ------------------------------------------------- */

static int origin_agrees(struct creq *q, const struct dduct_http_head *h) {
  const struct dduct__store_meta *m = dduct__store_entry_meta(q->e);
  const char *cl = hget(h, "Content-Length"), *et = hget(h, "ETag");
  const char *dcd = hget(h, "Docker-Content-Digest");
  /* A digest names the bytes: only the client's right to them is in question. */
  if (dduct__store_entry_addressed(q->e)) return dcd == NULL || strcmp(dcd, m->digest) == 0;
  if (cl != NULL && m->size != DDUCT__STORE_SIZE_UNKNOWN && strtoull(cl, NULL, 10) != m->size)
    return 0;
  if (et != NULL && m->etag[0] && strcmp(et, m->etag) != 0) return 0;
  return 1;
}

static void reval_on_head(struct dduct_fetch *f, const struct dduct_http_head *h, int64_t cl) {
  struct creq *q = dduct__fetch_data(f);
  q->reval_status = h->status;
  if (q->c != NULL) dduct__txn_origin(dduct__conn_txn(q->c), h->status, dduct__conn_txn(q->c)->t0);
  q->reval_agrees = h->status >= 200 && h->status < 300 && origin_agrees(q, h);
}

static void reval_on_body(struct dduct_fetch *f, const char *data, size_t len) {
}

static void reval_on_done(struct dduct_fetch *f, int status, const char *why) {
  struct creq *q = dduct__fetch_data(f);
  int st = q->reval_status, agrees = q->reval_agrees;
  q->f = NULL;
  if ((status != 0 || st >= 500) && q->k->cfg.stale_if_error && !entry_private(q->k, q->e)) {
    /* stale-if-error: the origin could not say, the entry is what we have. 401/403/404 are
     * answers, not errors: they pass through below. */
    char code[32];
    snprintf(code, sizeof(code), "origin answered %d", st);
    LOG_WARN(LOG_MOD, "Revalidating \"%s\" for %s: %s; serving the cached copy", q->url,
             peer(q), status != 0 ? (why != NULL ? why : dduct_strerror(status)) : code);
    if (q->c != NULL) dduct__conn_txn(q->c)->cache = DDUCT_CACHE_STALE;
    serve(q);
  } else if (status != 0) {
    /* A private entry is never served stale: without the origin's word it is one client's. */
    LOG_WARN(LOG_MOD, "Revalidating \"%s\" for %s: %s; forwarding%s", q->url, peer(q),
             why != NULL ? why : dduct_strerror(status),
             entry_private(q->k, q->e) ? " (a private entry is never served stale)" : "");
    decline(q);
  } else if (st >= 200 && st < 300 && agrees) {
    if (q->c != NULL) dduct__conn_txn(q->c)->cache = DDUCT_CACHE_REVALIDATED;
    serve(q);
  } else if (st >= 200 && st < 300 && !q->refreshed) {
    LOG_INFO(LOG_MOD, "Changed at origin \"%s\": fetching it again", q->url);
    dduct__store_entry_release(q->e);
    q->e = NULL;
    q->refreshed = 1;
    start_lookup(q, DDUCT__STORE_REFRESH);
  } else {
    LOG_INFO(LOG_MOD, "Revalidating \"%s\" for %s: origin answered %d; forwarding", q->url,
             peer(q), st);
    decline(q);
  }
}

static const struct dduct_fetch_cbs reval_cbs = {reval_on_head, reval_on_body, reval_on_done,
                                                 NULL};

/* The origin request for q: its origin and target, following redirects for cacheable GETs. */
static void origin_request(const struct creq *q, const char *method,
                           const struct dduct_http_head *h, struct dduct_fetch_request *fr) {
  memset(fr, 0, sizeof(*fr));
  fr->https = q->https;
  fr->host = q->host;
  fr->port = q->port;
  fr->method = method;
  fr->target = q->target;
  fr->headers = h;
  fr->max_redirects = MAX_REDIRECTS;
}

static void revalidate(struct creq *q) {
  struct dduct_fetch_request fr;
  struct dduct_http_head h;
  int rc;
  if (origin_headers(q, &h) != 0) {
    decline(q);
    return;
  }
  origin_request(q, "HEAD", &h, &fr);
  q->reval_status = 0;
  q->reval_agrees = 0;
  rc = dduct__fetch_start(q->k->cfg.up, &fr, &reval_cbs, q, &q->f);
  dduct__http_head_free(&h);
  if (rc != 0) {
    q->f = NULL;
    decline(q);
  }
}

/* ---- the fill job: one origin GET per key ------------------------------------------------- */

static void job_drain_cb(void *arg) {
  struct job *j = arg;
  if (j->paused && j->f != NULL) {
    j->paused = 0;
    dduct__fetch_resume(j->f);
  }
}

static void job_pass(struct job *j, const struct dduct_http_head *h, int64_t cl, int logged);

enum { CC_PRIVATE = 1, CC_PUBLIC = 2, CC_NO_STORE = 4 };

static int cc_directive_cb(const char *tok, size_t len, void *arg) {
  unsigned *bits = arg;
  size_t n = 0;
  while (n < len && tok[n] != '=' && tok[n] != ' ' && tok[n] != '\t') n++;
#define IS(d) (n == sizeof(d) - 1 && strncasecmp(tok, d, n) == 0)
  if (IS("private")) *bits |= CC_PRIVATE; /* private="field" too: the whole answer, to be safe */
  else if (IS("public") || IS("s-maxage")) *bits |= CC_PUBLIC;
  else if (IS("no-store")) *bits |= CC_NO_STORE;
#undef IS
  return 0;
}

static unsigned cache_control(const struct dduct_http_head *h) {
  unsigned bits = 0;
  dduct__http_each_token(h, "Cache-Control", cc_directive_cb, &bits);
  return bits;
}

/* The origin's 200 is stored: the first client becomes a reader like everyone else. A file the
 * store has no room for (it said why) goes to the first client uncached. An answer is private
 * (RFC 9111 3.5, 5.2.2.7) when the request that produced it carried the client's credentials
 * (not those a redirect to another origin dropped) and the origin did not mark it public, or
 * when the origin said private. */
static void job_begin(struct job *j, const struct dduct_http_head *h, int64_t cl, int is_private) {
  struct dduct__store_meta m;
  char *block;
  struct creq *q = j->first;
  memset(&m, 0, sizeof(m));
  m.url = j->url;
  m.is_private = is_private;
  m.content_type = hget(h, "Content-Type");
  m.etag = hget(h, "ETag");
  m.last_modified = hget(h, "Last-Modified");
  m.size = cl >= 0 ? (uint64_t)cl : DDUCT__STORE_SIZE_UNKNOWN;
  block = headers_block(h, dduct__store_entry_addressed(j->e), &m.headers_len);
  m.headers = block;
  if (dduct__store_fill_begin(j->e, &m) != 0) {
    free(block);
    job_pass(j, h, cl, 1);
    return;
  }
  free(block);
  dduct__store_fill_on_drain(j->e, job_drain_cb, j);
  j->began = 1;
  if (q != NULL) {
    j->first = NULL;
    q->job = NULL;
    dduct__store_entry_ref(j->e);
    q->e = j->e;
    serve(q);
  }
}

/* Anything but a plain 200 is not stored: it goes to the first client as the origin sent it. */
static void job_pass(struct job *j, const struct dduct_http_head *h, int64_t cl, int logged) {
  struct creq *q = j->first;
  struct dduct_http_head relayed;
  int rc;
  if (!logged) LOG_INFO(LOG_MOD, "Not cached \"%s\": origin answered %d", j->url, h->status);
  dduct__store_fill_cancel(j->e, 0);
  j->e = NULL;
  j->pass = 1;
  /* Via says the answer is the origin's, relayed (RFC 9110 7.6.3): an edge asking us as its
   * parent tells an origin's 5xx from our own failure by it (docs/cluster.md). */
  dduct__http_head_init(&relayed);
  if (dduct__http_head_copy(&relayed, h) == 0 && dduct__http_add(&relayed, "Via", "1.1 dduct") == 0)
    h = &relayed;
  rc = q == NULL || q->c == NULL ? DDUCT_ECLOSED
                                 : dduct__conn_send_head(q->c, h->status, dduct__http_reason(h), h, cl);
  dduct__http_head_free(&relayed);
  if (rc != 0) {
    if (q != NULL) cut(q, "cannot send the response head");
    dduct__fetch_abort(j->f);
    j->f = NULL;
    job_free(j);
  }
}

static void job_next(struct job *j);
static void parent_failed(struct job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int via_dduct_cb(const char *tok, size_t len, void *arg) {
  (void)arg;
  for (size_t i = 0; i + 5 <= len; i++)
    if (strncasecmp(tok + i, "dduct", 5) == 0) return 1;
  return 0;
}

/* 1 if a dduct on the way relayed this answer from an origin (it added Via: 1.1 dduct). */
static int relayed_by_dduct(const struct dduct_http_head *h) {
  return dduct__http_each_token(h, "Via", via_dduct_cb, NULL);
}

/* The answer to the rest of a body after a parent died mid-way: 206 from where we are, or a 200
 * of the same representation whose first bytes are dropped. Anything else ends the fill as
 * broken (its readers are cut: a short body is never served as whole). */
/* The answer is the version whose first bytes are stored: the same ETag when the first answer
 * had one (an answer without one cannot show it is the same), else the same Last-Modified when
 * both have one; and the same total length when both say it. */
static int same_version(const struct dduct__store_meta *m, const struct dduct_http_head *h,
                        int64_t cl) {
  const char *et = hget(h, "ETag"), *lm = hget(h, "Last-Modified"), *cr = hget(h, "Content-Range");
  const char *ce = hget(h, "Content-Encoding"), *slash;
  unsigned long long total;
  if (ce != NULL && strcasecmp(ce, "identity") != 0) return 0;
  if (m->etag[0] != '\0' && (et == NULL || strcmp(et, m->etag) != 0)) return 0;
  if (m->etag[0] == '\0' && m->last_modified[0] != '\0' && lm != NULL &&
      strcmp(lm, m->last_modified) != 0)
    return 0;
  if (m->size == DDUCT__STORE_SIZE_UNKNOWN) return 1;
  if (h->status == 200) return cl < 0 || (uint64_t)cl == m->size;
  return cr == NULL || (slash = strchr(cr, '/')) == NULL || slash[1] == '*' ||
         (sscanf(slash + 1, "%llu", &total) == 1 && total == m->size);
}

static void job_resumed(struct job *j, struct dduct_fetch *f, const struct dduct_http_head *h,
                        int64_t cl) {
  const struct dduct__store_meta *m = dduct__store_entry_meta(j->e);
  const char *cr = hget(h, "Content-Range");
  int same = same_version(m, h, cl);
  unsigned long long from = 0;
  if (same && h->status == 206 && cr != NULL && sscanf(cr, "bytes %llu-", &from) == 1 &&
      from == j->got) {
    j->skip = 0;
  } else if (same && h->status == 200) {
    j->skip = j->got;
  } else {
    LOG_WARN(LOG_MOD, "Fetching the rest of \"%s\": answered %d%s; giving up", j->url, h->status,
             same ? "" : " for another version");
    dduct__fetch_abort(f);
    j->f = NULL;
    dduct__store_fill_end(j->e, DDUCT_ESHORT);
    j->e = NULL;
    job_free(j);
    return;
  }
  LOG_INFO(LOG_MOD, "Resuming \"%s\" at byte %llu (%d)", j->url, (unsigned long long)j->got,
           h->status);
}

static void job_on_head(struct dduct_fetch *f, const struct dduct_http_head *h, int64_t cl) {
  struct job *j = dduct__fetch_data(f);
  const char *ce = hget(h, "Content-Encoding");
  if (j->first != NULL && j->first->c != NULL)
    dduct__txn_origin(dduct__conn_txn(j->first->c), h->status, dduct__conn_txn(j->first->c)->t0);
  if (j->parent >= 0 && h->status >= 500 && relayed_by_dduct(h)) {
    /* The origin's own 5xx, which the parent relayed: the parent is fine, and asking anyone
     * else would get the same. Asked for the rest of a body (its clients already read the
     * fill), nobody can supply it: the fill ends short (job_pass would leave it unfed). */
    if (j->resumed) job_resumed(j, f, h, cl);
    else job_pass(j, h, cl, 0);
    return;
  }
  if (j->parent >= 0 && h->status >= 500 && h->status != 503) {
    /* The parent works but could not get it from the origin (502, 504: its answer names why),
     * or refused this URL (508 for a URL naming the parent itself, 500, 501...): asking the
     * other parents would fail the same way and put them down for one bad URL. The origin is
     * asked from here, so the client gets its real answer or our own error. Counting such an
     * answer as the parent's failure let one client request take a parent out of the tier for
     * parent_down_time (review-sec2 #2). */
    LOG_INFO(LOG_MOD, "Parent %s answered %d for \"%s\": asking the origin",
             j->k->cfg.parents->v[j->parent].shown, h->status, j->url);
    dduct__fetch_abort(f);
    j->f = NULL;
    j->tried = j->norder;
    job_next(j);
    return;
  }
  if (j->parent >= 0 && h->status == 503) {
    /* The parent cannot serve (out of memory, shutting down: a dduct's 503 is about itself):
     * the next parent or the origin is asked instead, and this one rests for a while. A
     * parent that cannot be reached, fails TLS or times out is put down by job_on_done. */
    dduct__fetch_abort(f);
    j->f = NULL;
    parent_failed(j, "answered %d %s", h->status, dduct__http_reason(h));
    job_next(j);
    return;
  }
  if (j->resumed) {
    job_resumed(j, f, h, cl);
    return;
  }
  if (h->status == 200 && (ce == NULL || strcasecmp(ce, "identity") == 0)) {
    unsigned cc = cache_control(h);
    if (cc & CC_NO_STORE) {
      LOG_INFO(LOG_MOD, "Not cached \"%s\": origin said Cache-Control: no-store", j->url);
      job_pass(j, h, cl, 1);
    } else {
      job_begin(j, h, cl,
                (cc & CC_PRIVATE) || (dduct__fetch_credentialed(f) && !(cc & CC_PUBLIC)));
    }
  } else {
    job_pass(j, h, cl, 0);
  }
}

static void job_on_body(struct dduct_fetch *f, const char *data, size_t len) {
  struct job *j = dduct__fetch_data(f);
  if (j->pass) {
    struct creq *q = j->first;
    if (q == NULL || q->c == NULL || dduct__conn_send_body(q->c, data, len, NULL, NULL) != 0) {
      dduct__fetch_abort(f);
      j->f = NULL;
      if (j->first != NULL) cut(j->first, "client write failed");
      job_free(j);
    } else if (!j->paused && dduct__conn_queued(q->c) > DDUCT_STREAM_HIGH_WATER) {
      j->paused = 1;
      dduct__fetch_pause(f);
    }
    return;
  }
  if (j->skip > 0) {
    size_t n = (size_t)DDUCT_MIN((uint64_t)len, j->skip);
    j->skip -= n;
    data += n;
    len -= n;
    if (len == 0) return;
  }
  j->got += len;
  if (dduct__store_fill_write(j->e, data, len) != 0) {
    int why = dduct__store_entry_error(j->e);
    dduct__fetch_abort(f);
    j->f = NULL;
    dduct__store_fill_end(j->e, why != 0 ? why : DDUCT_EINTERNAL);
    j->e = NULL;
    job_free(j);
    return;
  }
  if (!j->paused && dduct__store_fill_full(j->e)) {
    j->paused = 1;
    dduct__fetch_pause(f);
  }
}

static void job_on_done(struct dduct_fetch *f, int status, const char *why) {
  struct job *j = dduct__fetch_data(f);
  struct creq *q = j->first;
  j->f = NULL;
  if (status == DDUCT_ELOOP && j->parent >= 0 && !j->began && !j->pass) {
    /* Every node can list every node, itself included (a tier of peers): the keys this dduct
     * owns by hash are its own to fetch. */
    struct dduct_parent *pa = &j->k->cfg.parents->v[j->parent];
    if (!__atomic_exchange_n(&pa->self, 1, __ATOMIC_RELAXED))
      LOG_INFO(LOG_MOD, "Parent %s is this dduct: the keys it owns are fetched from the origin "
               "here", pa->shown);
    j->tried = j->norder;
    job_next(j);
    return;
  }
  if (status != 0 && j->parent >= 0) {
    parent_failed(j, "%s", why != NULL ? why : dduct_strerror(status));
    if (!j->pass && j->began && dduct__store_entry_error(j->e) == 0 &&
        (dduct__http_remove(&j->h, "Range"), 1)) {
      /* Mid-body: the readers wait on the growing file; the rest comes from the next parent or
       * the origin, and the stored bytes are verified as usual (length, digest). */
      char range[48];
      snprintf(range, sizeof(range), "bytes=%llu-", (unsigned long long)j->got);
      if (dduct__http_add(&j->h, "Range", range) == 0) {
        __atomic_fetch_add(&j->k->cfg.parents->v[j->parent].resumed, 1, __ATOMIC_RELAXED);
        j->resumed = 1;
        job_next(j);
        return;
      }
    }
    if (!j->began && !j->pass) {
      job_next(j); /* nothing reached a client yet: ask the next one */
      return;
    }
  }
  if (status != 0) {
    char text[sizeof(((struct dduct__err *)0)->text)];
    LOG_WARN(LOG_MOD, "Fetching \"%s\": %s", j->url, why != NULL ? why : dduct_strerror(status));
    snprintf(text, sizeof(text), "fill of %s: %s", j->url, why != NULL ? why : dduct_strerror(status));
    dduct__stats_error(j->k->cfg.metrics, 0, q != NULL ? peer(q) : "", text); /* for /stats */
  }
  if (j->pass) {
    j->first = NULL;
    if (q != NULL) {
      q->job = NULL;
      if (status == 0) done(q);
      else cut(q, why != NULL ? why : dduct_strerror(status));
    }
  } else if (j->began) {
    dduct__store_fill_end(j->e, status);
    j->e = NULL;
  } else {
    /* No usable answer: the client gets the error, as a forwarded request would. Never sent
     * again (a response head too large, or a broken one, would only come back the same). */
    dduct__store_fill_cancel(j->e, status != 0 ? status : DDUCT_EPROTO);
    j->e = NULL;
    j->first = NULL;
    if (q != NULL) {
      struct dduct_conn *c = q->c;
      q->job = NULL;
      q->c = NULL;
      finish(q);
      if (c != NULL) dduct__conn_fail(c, status != 0 ? status : DDUCT_EPROTO, why);
    }
  }
  job_free(j);
}

static const struct dduct_fetch_cbs job_cbs = {job_on_head, job_on_body, job_on_done, NULL};

/* ---- parents: the fill asked of the tier first (docs/cluster.md) ---------------------- */

static void parent_failed(struct job *j, const char *fmt, ...) {
  struct dduct_parents *ps = j->k->cfg.parents;
  char why[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  __atomic_fetch_add(&ps->v[j->parent].failed, 1, __ATOMIC_RELAXED);
  if (dduct__parents_mark_down(ps, (size_t)j->parent, uv_now(j->k->cfg.loop)))
    LOG_WARN(LOG_MOD, "Parent %s down for %u s: %s (fetching \"%s\")", ps->v[j->parent].shown,
             ps->down_ms / 1000, why, j->url);
  else
    LOG_INFO(LOG_MOD, "Parent %s failed again: %s (fetching \"%s\")", ps->v[j->parent].shown, why,
             j->url);
}

/* A request another dduct sent us as its parent is never passed to our own parents: a tier
 * configured in a ring must not loop. */
static int from_a_dduct(const struct dduct_http_head *h) {
  const char *via = hget(h, "Via");
  return via != NULL && strstr(via, "dduct") != NULL;
}

/* Ask the next up parent in hash order, else the origin. On a failure to start, the job ends
 * as an origin failure would. */
static void job_next(struct job *j) {
  struct dduct_fetch_request fr;
  struct dduct_parents *ps = j->k->cfg.parents;
  uint64_t now = uv_now(j->k->cfg.loop);
  int rc;
  j->parent = -1;
  j->paused = 0; /* the new fetch runs; a full fill pauses it again */
  while (j->tried < j->norder) {
    size_t i = j->order[j->tried++];
    if (__atomic_load_n(&ps->v[i].self, __ATOMIC_RELAXED)) { /* we own the key: the origin, not the next parent */
      j->tried = j->norder;
      break;
    }
    /* An https file never crosses a plain-http hop: a parent reached without TLS serves only
     * http:// files (what it answered would be a plain-http byte answering https). */
    if (j->https && !ps->v[i].https) continue;
    if (__atomic_load_n(&ps->v[i].down_until, __ATOMIC_RELAXED) <= now) {
      j->parent = (int)i;
      break;
    }
  }
  memset(&fr, 0, sizeof(fr));
  fr.https = j->https;
  fr.host = j->host;
  fr.port = j->port;
  fr.method = "GET";
  fr.target = j->target;
  fr.headers = &j->h;
  fr.max_redirects = MAX_REDIRECTS;
  fr.parent = j->parent >= 0 ? &ps->v[j->parent] : NULL;
  if (fr.parent != NULL) {
    __atomic_fetch_add(&ps->v[j->parent].asked, 1, __ATOMIC_RELAXED);
    LOG_DEBUG(LOG_MOD, "Asking parent %s for \"%s\"", fr.parent->shown, j->url);
  }
  rc = dduct__fetch_start(j->k->cfg.up, &fr, &job_cbs, j, &j->f);
  if (rc != 0) {
    struct creq *q = j->first;
    j->f = NULL;
    if (j->began) dduct__store_fill_end(j->e, rc);
    else if (j->e != NULL) dduct__store_fill_cancel(j->e, rc);
    j->e = NULL;
    if (q != NULL) {
      j->first = NULL;
      q->job = NULL;
      decline(q);
    }
    job_free(j);
  }
}

static void start_job(struct creq *q, struct dduct__store_entry *e) {
  struct job *j = calloc(1, sizeof(*j));
  const struct dduct_parents *ps = q->k->cfg.parents;
  if (j != NULL) dduct__http_head_init(&j->h);
  if (j == NULL || (j->url = dduct__strdup(q->url)) == NULL ||
      (j->host = dduct__strdup(q->host)) == NULL || (j->target = dduct__strdup(q->target)) == NULL ||
      origin_headers(q, &j->h) != 0 ||
      (ps->n > 0 && dduct__http_add(&j->h, "Via", "1.1 dduct") != 0)) {
    if (j != NULL) {
      free(j->url);
      free(j->host);
      free(j->target);
      dduct__http_head_free(&j->h);
    }
    free(j);
    dduct__store_fill_cancel(e, DDUCT_ENOMEM);
    decline(q);
    return;
  }
  j->k = q->k;
  j->e = e;
  j->first = q;
  j->t0 = uv_hrtime();
  j->https = q->https;
  j->port = q->port;
  j->parent = -1;
  q->job = j;
  job_link(j);
  j->k->cfg.metrics->fills_started++;
  j->k->cfg.metrics->fills_in_flight++;
  if (ps->n > 0 && !from_a_dduct(&q->head))
    j->norder = dduct__parents_order(ps, q->key.rel, uv_now(q->k->cfg.loop), j->order);
  job_next(j);
}

/* ---- lookups and the hook ----------------------------------------------------------------- */

/* An ordinary entry answers only requests of the scheme it was fetched with. Keys hold the scheme,
 * but an entry a plain-http request stored under the older layout without it sits under the
 * https key (its sidecar's url says http://): never give it to an https request. A complete
 * blob was verified against its digest, whatever scheme brought it; a blob still filling is
 * not (its readers get every byte but the last before the digest is checked), so an https
 * request never follows a plain-http fill of one. */
static int scheme_matches(const struct dduct__store_entry *e, int https,
                          enum dduct__store_role role) {
  const char *u = dduct__store_entry_meta(e)->url;
  int fetched_https = strncmp(u, "https://", 8) == 0;
  if (dduct__store_entry_addressed(e) && (role == DDUCT__STORE_HIT || !https || fetched_https))
    return 1;
  return https ? fetched_https : strncmp(u, "http://", 7) == 0;
}

/* Whether e may answer q at all (it then still revalidates when private or with revalidate =
 * 'always'). A blob is keyed by its digest alone, so a request naming another origin than the
 * one that filled it can find it: a private one is that origin's to hand out, and with 'always'
 * the origin asked must be the one that gave the bytes, not one the requester picked; the
 * requester's credentials never go to the filling origin either. Such a request is forwarded to
 * the origin it names, uncached (the entry stays). */
static int hit_allowed(struct creq *q, const struct dduct__store_entry *e) {
  int priv = entry_private(q->k, e);
  if ((priv || q->k->cfg.revalidate == DDUCT_REVALIDATE_ALWAYS) && !same_origin_as_fill(q, e)) {
    LOG_INFO(LOG_MOD, "Not serving \"%s\" from the %s entry of \"%s\": filled from another "
             "origin; forwarding", q->url, priv ? "private" : "revalidated",
             dduct__store_entry_meta(e)->url);
    return 0;
  }
  if (priv && q->only_if_cached) {
    LOG_INFO(LOG_MOD, "Not serving \"%s\" (only-if-cached): the entry is private and needs "
             "the origin's word", q->url);
    return 0;
  }
  return 1;
}

static void lookup_cb(void *arg, enum dduct__store_role role, struct dduct__store_entry *e,
                      int status) {
  struct creq *q = arg;
  q->look = NULL;
  switch (role) {
  case DDUCT__STORE_HIT:
  case DDUCT__STORE_FOLLOW:
    if (!scheme_matches(e, q->https, role)) {
      LOG_WARN(LOG_MOD, "Not serving \"%s\" from \"%s\": fetched by another scheme; fetching it "
               "again", q->url, dduct__store_entry_meta(e)->url);
      dduct__store_entry_release(e);
      if (q->refreshed) {
        decline(q);
      } else {
        q->refreshed = 1;
        start_lookup(q, DDUCT__STORE_REFRESH);
      }
      break;
    }
    if (!hit_allowed(q, e)) {
      dduct__store_entry_release(e);
      decline(q);
      break;
    }
    q->e = e;
    if (q->c != NULL)
      dduct__conn_txn(q->c)->cache = role == DDUCT__STORE_HIT ? DDUCT_CACHE_HIT : DDUCT_CACHE_COLLAPSED;
    LOG_INFO(LOG_MOD, "Hit \"%s\" for %s%s", q->url, peer(q),
             role == DDUCT__STORE_FOLLOW ? " (while filling)" : "");
    if (entry_private(q->k, e) ||
        (q->k->cfg.revalidate == DDUCT_REVALIDATE_ALWAYS && !q->refreshed && !q->only_if_cached))
      revalidate(q);
    else serve(q);
    break;
  case DDUCT__STORE_FILL:
    if (q->c != NULL) dduct__conn_txn(q->c)->cache = DDUCT_CACHE_MISS;
    LOG_INFO(LOG_MOD, "Miss \"%s\" for %s", q->url, peer(q));
    start_job(q, e);
    break;
  case DDUCT__STORE_BYPASS:
  default:
    LOG_DEBUG(LOG_MOD, "Bypass \"%s\" for %s: %s", q->url, peer(q),
              status == 0 ? "not stored" : dduct_strerror(status));
    decline(q);
    break;
  }
}

static void start_lookup(struct creq *q, int flags) {
  int rc;
  if (q->is_head || q->only_if_cached) flags |= DDUCT__STORE_NO_FILL;
  rc = dduct__store_lookup(q->k->cfg.store, &q->key, flags, lookup_cb, q, &q->look);
  if (rc != 0) {
    q->look = NULL;
    decline(q);
  }
}

static struct creq *creq_new(struct dduct_cache *k, struct dduct_conn *c,
                             const struct dduct_request *req, const struct dduct__store_key *key) {
  struct creq *q = calloc(1, sizeof(*q));
  if (q == NULL) return NULL;
  q->k = k;
  q->c = c;
  q->https = req->https;
  q->port = req->port;
  q->is_head = req->is_head;
  q->only_if_cached = dduct__http_has_token(req->head, "Cache-Control", "only-if-cached");
  q->key = *key;
  dduct__http_head_init(&q->head);
  q->rh = &q->head;
  q->url = make_url(req);
  q->host = dduct__strdup(req->host);
  q->target = dduct__strdup(req->path);
  if (q->url == NULL || q->host == NULL || q->target == NULL ||
      dduct__http_head_copy(&q->head, req->head) != 0) {
    q->c = NULL;
    finish_now(q);
    return NULL;
  }
  return q;
}

static void log_hit_url(char *url, struct dduct_conn *c) {
  LOG_INFO(LOG_MOD, "Hit \"%s\" for %s", url != NULL ? url : "?", dduct__conn_peer(c));
  free(url);
}

static void log_hit(const struct dduct_request *req, struct dduct_conn *c) {
  if (dduct__enabled(DDUCT_LOG_INFO)) log_hit_url(make_url(req), c);
}

/* A hit on an entry the store holds in memory, answered inside the engine's call: no lookup
 * callback, no loop turn (conn.c sends a whole answer made there after this turn's reads). A small answer needs nothing kept past this call (the request head is
 * the engine's, still valid here), so it is served from a creq on the stack; a larger one gets
 * a creq of its own for the reads that follow. Returns 1 when the request is taken (answered,
 * being answered or cut), 0 to take the ordinary path (the body could not be read). */
static int serve_hot(struct dduct_cache *k, struct dduct_conn *c, const struct dduct_request *req,
                     const struct dduct__store_key *key, struct dduct__store_entry *e) {
  struct creq tmp, *q;
  struct answer a;
  int rc;
  memset(&tmp, 0, sizeof(tmp));
  tmp.k = k;
  tmp.c = c;
  tmp.e = e;
  tmp.is_head = req->is_head;
  tmp.rh = req->head;
  dduct__conn_txn(c)->cache = DDUCT_CACHE_HIT;
  if (prepare(&tmp, &a) != 0) {
    dduct__store_entry_release(e);
    return 0;
  }
  if (a.whole) {
    /* The URL is made first: a whole answer may end the request (and clear req) inside
     * send_whole, which made the log line of a Connection: close hit flaky. */
    char *url = dduct__enabled(DDUCT_LOG_INFO) ? make_url(req) : NULL;
    dduct__stats_entry_served(k->cfg.metrics, dduct__store_entry_meta(e)->url,
                              dduct__store_entry_meta(e)->size);
    rc = send_whole(&tmp, &a);
    dduct__http_head_free(&a.h);
    dduct__store_entry_release(e);
    if (rc == 1) {
      free(url);
      return 0;
    }
    if (dduct__enabled(DDUCT_LOG_INFO)) log_hit_url(url, c);
    if (rc != 0) {
      LOG_WARN(LOG_MOD, "Cut a hit for %s: cannot send the response", dduct__conn_peer(c));
      dduct__conn_abort(c);
    }
    return 1;
  }
  dduct__http_head_free(&a.h);
  if ((q = creq_new(k, c, req, key)) == NULL) {
    dduct__store_entry_release(e);
    return 0;
  }
  q->e = e;
  log_hit(req, c);
  dduct__conn_take(c, &client_handler, q);
  serve(q);
  return 1;
}

/* The request's key: its query is part of it, minus the parameters [proxy] query_ignore drops
 * for its host. */
static int request_key(const struct dduct_cache *k, const struct dduct_request *req,
                       struct dduct__store_key *key) {
  char small[512], *t = small;
  size_t len = strlen(req->path);
  int rc;
  if (len > sizeof(small) && (t = malloc(len)) == NULL) return DDUCT_ENOMEM;
  len = dduct__query_rules_apply(k->cfg.query_rules, req->host, req->path, len, t);
  rc = dduct__store_key_make(req->https ? "https" : "http", req->host, strlen(req->host),
                             req->port, t, len, key);
  if (t != small) free(t);
  return rc;
}

/* GET or HEAD without a body, whose path (without its query) the filter matches. */
static int cacheable(const struct dduct_cache *k, const struct dduct_request *req) {
  if (k->cfg.store == NULL || k->cfg.filter == NULL || req->connect || req->host == NULL ||
      req->path == NULL)
    return 0;
  if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) return 0;
  if (req->chunked || req->content_length > 0) return 0;
  return dduct_filter_match(k->cfg.filter, req->path, req->path_len_no_query) == 1;
}

int dduct__cache_route(void *ctx, struct dduct_conn *c, const struct dduct_request *req) {
  struct dduct_cache *k = ctx;
  struct dduct__store_key key;
  struct dduct__store_entry *e;
  struct creq *q;
  int rc, flags = req->is_head ? DDUCT__STORE_NO_FILL : 0;
  if (!cacheable(k, req)) return 0;
  dduct__conn_txn(c)->route = DDUCT_ROUTE_CACHE;
  if (k->cfg.cacheable_cb != NULL &&
      !k->cfg.cacheable_cb(k->cfg.cacheable_data, req->method, req->https, req->host, req->port,
                         req->path))
    return 0;
  if (request_key(k, req, &key) != 0) return 0;
  if (k->cfg.revalidate != DDUCT_REVALIDATE_ALWAYS &&
      dduct__store_lookup_hot(k->cfg.store, &key, flags, &e)) {
    /* Another scheme: the lookup refetches; private: the lookup revalidates. */
    if (!scheme_matches(e, req->https, DDUCT__STORE_HIT) || entry_private(k, e))
      dduct__store_entry_release(e);
    else if (serve_hot(k, c, req, &key, e)) return 1;
  }
  if ((q = creq_new(k, c, req, &key)) == NULL) return 0;
  if (q->only_if_cached) flags |= DDUCT__STORE_NO_FILL;
  /* Lookups never call back from inside this call, so taking the connection after is safe. */
  rc = dduct__store_lookup(k->cfg.store, &q->key, flags, lookup_cb, q, &q->look);
  if (rc != 0) {
    q->look = NULL;
    q->c = NULL;
    finish_now(q);
    return 0;
  }
  dduct__conn_take(c, &client_handler, q);
  return 1;
}

/* ---- invalidation (RFC 9111 4.4) ---------------------------------------------------------- */

static int safe_method(const char *m) {
  return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0 ||
         strcmp(m, "TRACE") == 0;
}

/* The entry of target on req's origin (scheme, host, port), if a URL of it is given. */
static void invalidate_target(struct dduct_cache *k, const struct dduct_request *req,
                              const char *target) {
  struct dduct_request r = *req;
  struct dduct__store_key key;
  r.path = target;
  r.path_len_no_query = strcspn(target, "?");
  /* Only what the filters let in can be stored (and a blob is its digest, not this URL). */
  if (dduct_filter_match(k->cfg.filter, r.path, r.path_len_no_query) != 1) return;
  if (request_key(k, &r, &key) != 0 || key.digest[0] != '\0') return;
  dduct__store_invalidate(k->cfg.store, &key);
}

/* A Location or Content-Location naming req's own origin (a path, or an absolute URL of the
 * same scheme, host and port): its target, else NULL (RFC 9111 4.4: never another origin). */
static const char *same_origin_target(const struct dduct_request *req, const char *v,
                                      char *host, size_t cap) {
  int https;
  uint16_t port;
  const char *path;
  if (v == NULL) return NULL;
  if (v[0] == '/') return v[1] == '/' ? NULL : v;
  if (dduct__http_parse_url(v, &https, host, cap, &port, &path) != 0) return NULL;
  if (https != req->https || port != req->port || strcasecmp(host, req->host) != 0) return NULL;
  return path;
}

void dduct__cache_unsafe_done(struct dduct_cache *k, const struct dduct_request *req,
                              const struct dduct_http_head *resp) {
  static const char *const also[] = {"Location", "Content-Location"};
  if (k->cfg.store == NULL || k->cfg.filter == NULL || req->host == NULL || req->path == NULL ||
      safe_method(req->method) ||
      resp->status < 200 || resp->status >= 400)
    return;
  LOG_DEBUG(LOG_MOD, "%s answered %d: invalidating its cached URL", req->method, resp->status);
  invalidate_target(k, req, req->path);
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(also); i++) {
    char host[256];
    const char *t = same_origin_target(req, hget(resp, also[i]), host, sizeof(host));
    if (t != NULL) invalidate_target(k, req, t);
  }
}
