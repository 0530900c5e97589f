/* The proxy's figures: booking (one call per finished request), the sample walk that every
 * export goes through, and the two renderers (Prometheus text 0.0.4, JSON). See stats.h. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cache.h"
#include "http.h"
#include "internal.h"
#include "proxy.h"
#include "stats.h"
#include "store.h"
#include "tls.h"

static const double connect_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double duration_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                         0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                         5,      10,      30,     60,    300};

const char *dduct_route_name(enum dduct_route r) {
  static const char *const names[] = {"cache", "forward", "tunnel", "intercept", "local"};
  return (unsigned)r < DDUCT_ROUTE_COUNT ? names[r] : "?";
}

const char *dduct_cache_status_name(enum dduct_cache_status s) {
  static const char *const names[] = {"-",     "HIT",    "MISS",  "COLLAPSED",
                                      "REVALIDATED", "STALE", "BYPASS", "TUNNEL"};
  return (unsigned)s < DDUCT_CACHE_STATUS_COUNT ? names[s] : "?";
}

const char *dduct__fill_fail_name(enum dduct__fill_fail f) {
  static const char *const names[] = {"origin", "timeout", "tls",       "short",
                                      "digest", "disk",    "cancelled", "other"};
  return (unsigned)f < DDUCT__FF_COUNT ? names[f] : "other";
}

enum dduct__fill_fail dduct__fill_fail_reason(int err) {
  switch (err) {
  case UV_ETIMEDOUT: return DDUCT__FF_TIMEOUT;
  case DDUCT_ETLS:
  case DDUCT_EVERIFY: return DDUCT__FF_TLS;
  case DDUCT_ESHORT: return DDUCT__FF_SHORT;
  case DDUCT_EDIGEST: return DDUCT__FF_DIGEST;
  case UV_ECANCELED: return DDUCT__FF_CANCELLED;
  case UV_ENOSPC:
  case UV_EIO:
  case UV_EROFS:
  case UV_EACCES:
  case UV_EPERM:
  case UV_ENOENT:
  case UV_EFBIG:
  case DDUCT_ETOOBIG: return DDUCT__FF_DISK;
  default:
#ifdef UV_EDQUOT
    if (err == UV_EDQUOT) return DDUCT__FF_DISK;
#endif
    if (err == DDUCT_EPROTO || err == DDUCT_ELOOP || err == UV_ECONNREFUSED ||
        err == UV_ECONNRESET || err == UV_EPIPE || err == UV_EHOSTUNREACH ||
        err == UV_ENETUNREACH || (err <= UV_EAI_ADDRFAMILY && err >= UV_EAI_SOCKTYPE))
      return DDUCT__FF_ORIGIN;
    return DDUCT__FF_OTHER;
  }
}

/* ---- booking ------------------------------------------------------------------------------ */

void dduct__stats_init(struct dduct__stats *st) {
  uv_timeval64_t tv;
  memset(st, 0, sizeof(*st));
  st->hr0 = uv_hrtime();
  if (uv_gettimeofday(&tv) == 0) st->wall0 = tv.tv_sec * 1000000 + tv.tv_usec;
}

int64_t dduct__stats_wall_us(const struct dduct__stats *st, uint64_t hrtime) {
  return st->wall0 + (int64_t)((hrtime - st->hr0) / 1000);
}

void dduct__txn_begin(struct dduct__txn *t, enum dduct_route route) {
  t->t0 = uv_hrtime();
  t->route = route;
  t->cache = DDUCT_CACHE_NONE;
  t->origin_status = 0;
  t->origin_ns = -1;
  t->booked = 0;
}

void dduct__txn_origin(struct dduct__txn *t, int status, uint64_t started) {
  t->origin_status = status;
  t->origin_ns = (int64_t)(uv_hrtime() - started);
}

static void observe(struct dduct__hist *h, const double *bounds, size_t n, double v) {
  size_t i = 0;
  while (i < n && v > bounds[i]) i++;
  h->counts[i]++;
  h->count++;
  h->sum += v;
}

static int code_index(int status) {
  return status >= 0 && status < DDUCT__CODES ? status : 0;
}

static struct dduct__minute *minute_of(struct dduct__stats *st, uint64_t now) {
  int64_t m = dduct__stats_wall_us(st, now) / 60000000;
  struct dduct__minute *x = &st->minutes[(uint64_t)m % DDUCT__MINUTES];
  if (x->minute != m) {
    memset(x, 0, sizeof(*x));
    x->minute = m;
  }
  return x;
}

static int from_cache(enum dduct_cache_status s) {
  return s == DDUCT_CACHE_HIT || s == DDUCT_CACHE_COLLAPSED || s == DDUCT_CACHE_REVALIDATED ||
         s == DDUCT_CACHE_STALE;
}

static void make_record(struct dduct_proxy *p, const struct dduct__txn *t,
                        const struct dduct__txn_end *end, uint64_t now) {
  struct dduct_access_record r;
  r.time_us = dduct__stats_wall_us(&p->metrics, t->t0);
  r.client = end->client != NULL ? end->client : "?";
  r.method = end->method != NULL ? end->method : "";
  r.url = end->url != NULL ? end->url : "";
  r.status = end->status;
  r.bytes = end->bytes;
  r.duration_us = (now - t->t0) / 1000;
  r.route = t->route;
  r.cache = t->cache;
  r.origin_status = t->origin_status;
  r.origin_us = t->origin_ns < 0 ? -1 : t->origin_ns / 1000;
  p->o.access_cb(p->o.access_data, &r);
}

void dduct__stats_txn_done(struct dduct_proxy *p, struct dduct__txn *t,
                           const struct dduct__txn_end *end) {
  struct dduct__stats *st = &p->metrics;
  uint64_t now;
  struct dduct__minute *m;
  if (t->booked || t->t0 == 0) return;
  t->booked = 1;
  now = uv_hrtime();
  st->requests[t->route][code_index(end->status)]++;
  st->cache[t->cache]++;
  observe(&st->duration, duration_bounds, DDUCT_ARRAY_SIZE(duration_bounds),
          (double)(now - t->t0) / 1e9);
  m = minute_of(st, now);
  m->requests++;
  if (t->cache == DDUCT_CACHE_TUNNEL) {
    st->tunnel_bytes += end->bytes;
  } else if (from_cache(t->cache)) {
    st->served_cache += end->bytes;
    m->bytes_cache += end->bytes;
    m->hits += t->cache != DDUCT_CACHE_COLLAPSED;
    m->collapsed += t->cache == DDUCT_CACHE_COLLAPSED;
  } else if (t->origin_status > 0) { /* not an answer dduct made itself (errors) */
    st->served_origin += end->bytes;
    m->bytes_origin += end->bytes;
    m->misses += t->cache == DDUCT_CACHE_MISS;
  }
  if (p->o.access_cb != NULL) make_record(p, t, end, now);
}

void dduct__stats_upstream(struct dduct__stats *st, int status) {
  st->upstream[code_index(status)]++;
}

void dduct__stats_connect_time(struct dduct__stats *st, uint64_t started) {
  observe(&st->connect, connect_bounds, DDUCT_ARRAY_SIZE(connect_bounds),
          (double)(uv_hrtime() - started) / 1e9);
}

void dduct__stats_error(struct dduct__stats *st, int status, const char *client,
                        const char *text) {
  struct dduct__err *e = &st->errs[st->nerrs++ % DDUCT__ERRORS];
  size_t n;
  e->time_us = dduct__stats_wall_us(st, uv_hrtime());
  e->status = status;
  snprintf(e->client, sizeof(e->client), "%s", client != NULL ? client : "");
  snprintf(e->text, sizeof(e->text), "%s", text != NULL ? text : "");
  n = strlen(e->text);
  while (n > 0 && e->text[n - 1] == '\n') e->text[--n] = '\0';
}

static uint64_t url_id(const char *url) {
  uint64_t h = 1469598103934665603ull;
  for (const unsigned char *s = (const unsigned char *)url; *s; s++) h = (h ^ *s) * 1099511628211ull;
  return h != 0 ? h : 1;
}

/* The most-hit table keeps the DDUCT__TOP URLs seen most; a new one takes the least-hit slot. */
void dduct__stats_entry_served(struct dduct__stats *st, const char *url, uint64_t size) {
  uint64_t id = url_id(url);
  struct dduct__top *min = &st->top[0], *x = NULL;
  size_t i;
  if (size == DDUCT__STORE_SIZE_UNKNOWN) size = 0;
  for (i = 0; i < DDUCT__TOP; i++) {
    if (st->top[i].id == id) {
      x = &st->top[i];
      break;
    }
    if (st->top[i].hits < min->hits) min = &st->top[i];
  }
  if (x == NULL) {
    x = min;
    x->id = id;
    x->hits = 0;
    snprintf(x->url, sizeof(x->url), "%s", url);
  }
  x->hits++;
  if (size > 0) x->size = size;
  /* Largest: the DDUCT__LARGEST biggest distinct entries served. */
  min = &st->largest[0];
  for (i = 0; i < DDUCT__LARGEST; i++) {
    if (st->largest[i].id == id) {
      st->largest[i].hits++;
      if (size > 0) st->largest[i].size = size;
      return;
    }
    if (st->largest[i].size < min->size) min = &st->largest[i];
  }
  if (size > min->size) {
    min->id = id;
    min->hits = 1;
    min->size = size;
    snprintf(min->url, sizeof(min->url), "%s", url);
  }
}

/* ---- summing loops ------------------------------------------------------------------------ */

static void hist_add(struct dduct__hist *to, const struct dduct__hist *from) {
  for (size_t i = 0; i <= DDUCT__HIST_MAX; i++) to->counts[i] += from->counts[i];
  to->count += from->count;
  to->sum += from->sum;
}

static int newer_err(const void *a, const void *b) {
  const struct dduct__err *x = a, *y = b;
  return x->time_us < y->time_us ? -1 : x->time_us > y->time_us;
}

static void top_add(struct dduct__top *to, size_t n, const struct dduct__top *from, size_t m,
                    int by_size) {
  for (size_t j = 0; j < m; j++) {
    const struct dduct__top *x = &from[j];
    struct dduct__top *slot = NULL, *min = &to[0];
    if (x->id == 0) continue;
    for (size_t i = 0; i < n; i++) {
      if (to[i].id == x->id) {
        slot = &to[i];
        break;
      }
      if (by_size ? to[i].size < min->size : to[i].hits < min->hits) min = &to[i];
    }
    if (slot != NULL) {
      slot->hits += x->hits;
      if (x->size > slot->size) slot->size = x->size;
    } else if (min->id == 0 || (by_size ? x->size > min->size : x->hits > min->hits)) {
      *min = *x;
    }
  }
}

void dduct__stats_add(struct dduct__stats *to, const struct dduct__stats *from) {
  struct dduct__err errs[2 * DDUCT__ERRORS];
  size_t ne = 0, keep;
  for (int r = 0; r < DDUCT_ROUTE_COUNT; r++)
    for (int c = 0; c < DDUCT__CODES; c++) to->requests[r][c] += from->requests[r][c];
  for (int i = 0; i < DDUCT_CACHE_STATUS_COUNT; i++) to->cache[i] += from->cache[i];
  to->served_cache += from->served_cache;
  to->served_origin += from->served_origin;
  to->tunnel_bytes += from->tunnel_bytes;
  for (int c = 0; c < DDUCT__CODES; c++) to->upstream[c] += from->upstream[c];
  to->fills_started += from->fills_started;
  to->fills_in_flight += from->fills_in_flight;
  hist_add(&to->connect, &from->connect);
  hist_add(&to->duration, &from->duration);
  for (int i = 0; i < DDUCT__MINUTES; i++) {
    struct dduct__minute *t = &to->minutes[i];
    const struct dduct__minute *f = &from->minutes[i];
    if (f->minute > t->minute) {
      *t = *f;
    } else if (f->minute == t->minute) {
      t->requests += f->requests;
      t->hits += f->hits;
      t->misses += f->misses;
      t->collapsed += f->collapsed;
      t->bytes_cache += f->bytes_cache;
      t->bytes_origin += f->bytes_origin;
    }
  }
  /* The newest DDUCT__ERRORS of both, oldest first, as a fresh ring. */
  for (const struct dduct__stats *st = to; st != NULL; st = st == to ? from : NULL) {
    uint64_t n = DDUCT_MIN(st->nerrs, (uint64_t)DDUCT__ERRORS);
    for (uint64_t i = 0; i < n; i++) errs[ne++] = st->errs[(st->nerrs - n + i) % DDUCT__ERRORS];
  }
  qsort(errs, ne, sizeof(errs[0]), newer_err);
  keep = DDUCT_MIN(ne, (size_t)DDUCT__ERRORS);
  memcpy(to->errs, errs + ne - keep, keep * sizeof(errs[0]));
  to->nerrs = keep;
  top_add(to->top, DDUCT__TOP, from->top, DDUCT__TOP, 0);
  top_add(to->largest, DDUCT__LARGEST, from->largest, DDUCT__LARGEST, 1);
}

/* ---- the access record as JSON ------------------------------------------------------------ */

struct sbuf {
  char *b;
  size_t len, cap; /* cap 0: measuring only */
  size_t need;
};

/* Appends what fits (one byte stays for the NUL); once something did not fit, len is cap and
 * nothing more is written, but need keeps counting. */
static void sb_putn(struct sbuf *s, const char *p, size_t n) {
  if (s->len + 1 < s->cap) {
    size_t k = DDUCT_MIN(n, s->cap - 1 - s->len);
    memcpy(s->b + s->len, p, k);
    s->len += k;
    if (k < n) s->len = s->cap;
  } else if (n > 0) {
    s->len = s->cap;
  }
  s->need += n;
}

static void sb_puts(struct sbuf *s, const char *p) {
  sb_putn(s, p, strlen(p));
}

/* A JSON string: quotes, backslashes and control bytes escaped; bytes >= 0x80 as \u00XX so a
 * line is valid JSON whatever a client put in its URL. */
static void sb_json_str(struct sbuf *s, const char *p) {
  static const char hex[] = "0123456789abcdef";
  sb_putn(s, "\"", 1);
  for (const unsigned char *q = (const unsigned char *)p; *q; q++) {
    const unsigned char *run = q;
    while (*q >= 0x20 && *q < 0x80 && *q != '"' && *q != '\\') q++;
    if (q > run) sb_putn(s, (const char *)run, (size_t)(q - run));
    if (*q == '\0') break;
    if (*q == '"' || *q == '\\') {
      char e[2] = {'\\', (char)*q};
      sb_putn(s, e, 2);
    } else {
      char e[6] = {'\\', 'u', '0', '0', hex[*q >> 4], hex[*q & 15]};
      sb_putn(s, e, 6);
    }
  }
  sb_putn(s, "\"", 1);
}

static void sb_u64(struct sbuf *s, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  for (size_t i = 0; i < n / 2; i++) {
    char c = tmp[i];
    tmp[i] = tmp[n - 1 - i];
    tmp[n - 1 - i] = c;
  }
  sb_putn(s, tmp, n);
}

const char *dduct__stats_url(char *buf, size_t len, int https, const char *host, unsigned port,
                             const char *path) {
  struct dduct_origin o = {https > 0, host, port};
  unsigned flags = DDUCT_ORIGIN_PORT | (https < 0 ? DDUCT_ORIGIN_NO_SCHEME : 0u);
  int at = dduct__origin_format(buf, len, &o, flags);
  if (https >= 0 && path != NULL && at >= 0 && (size_t)at < len)
    snprintf(buf + at, len - (size_t)at, "%s", path);
  return buf;
}

/* Microseconds as milliseconds with three decimals ("12.345"). */
static void sb_ms(struct sbuf *s, uint64_t us) {
  char frac[4] = {(char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10),
                  '\0'};
  sb_u64(s, us / 1000);
  sb_putn(s, ".", 1);
  sb_putn(s, frac, 3);
}

/* "2024-01-02T03:04:05" of a unix second; the last one is kept (per thread), as consecutive
 * records mostly share their second. */
static const char *utc_second(int64_t secs) {
  static _Thread_local int64_t last = -1;
  static _Thread_local char text[32];
  if (secs != last) {
    time_t t = (time_t)secs;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
    last = secs;
  }
  return text;
}

/* Written by hand (no printf, no gmtime per line): this runs once per request when an access log
 * is on. */
size_t dduct_access_record_json(const struct dduct_access_record *r, char *buf, size_t len) {
  struct sbuf s = {buf, 0, len, 0};
  uint64_t us = (uint64_t)(r->time_us % 1000000);
  char frac[7];
  for (int i = 5; i >= 0; i--, us /= 10) frac[i] = (char)('0' + us % 10);
  frac[6] = '\0';
  sb_puts(&s, "{\"time\":\"");
  sb_puts(&s, utc_second(r->time_us / 1000000));
  sb_putn(&s, ".", 1);
  sb_putn(&s, frac, 6);
  sb_puts(&s, "Z\",\"client\":");
  sb_json_str(&s, r->client);
  sb_puts(&s, ",\"method\":");
  sb_json_str(&s, r->method);
  sb_puts(&s, ",\"url\":");
  sb_json_str(&s, r->url);
  sb_puts(&s, ",\"status\":");
  sb_u64(&s, (uint64_t)(r->status > 0 ? r->status : 0));
  sb_puts(&s, ",\"bytes\":");
  sb_u64(&s, r->bytes);
  sb_puts(&s, ",\"duration_ms\":");
  sb_ms(&s, r->duration_us);
  sb_puts(&s, ",\"route\":\"");
  sb_puts(&s, dduct_route_name(r->route));
  sb_puts(&s, "\",\"cache\":\"");
  sb_puts(&s, dduct_cache_status_name(r->cache));
  if (r->origin_status > 0) {
    sb_puts(&s, "\",\"origin_status\":");
    sb_u64(&s, (uint64_t)r->origin_status);
    sb_puts(&s, ",\"origin_ms\":");
    sb_ms(&s, r->origin_us > 0 ? (uint64_t)r->origin_us : 0);
    sb_puts(&s, "}\n");
  } else {
    sb_puts(&s, "\",\"origin_status\":null,\"origin_ms\":null}\n");
  }
  if (len > 0) buf[s.len < len ? s.len : len - 1] = '\0';
  return s.need;
}

/* ---- the sample walk ---------------------------------------------------------------------- */

struct walk {
  dduct_metric_cb cb;
  void *ud;
  int rc;
};

static int emit(struct walk *w, const char *name, const char *help, enum dduct_metric_type type,
                size_t nl, const char *const *ln, const char *const *lv, double v,
                const struct dduct_histogram *h) {
  struct dduct_metric m = {name, help, type, nl, ln, lv, v, h};
  if (w->rc == 0) w->rc = w->cb(w->ud, &m);
  return w->rc;
}

static int scalar(struct walk *w, const char *name, const char *help, enum dduct_metric_type t,
                  double v) {
  return emit(w, name, help, t, 0, NULL, NULL, v, NULL);
}

static int hist(struct walk *w, const char *name, const char *help, const struct dduct__hist *h,
                const double *bounds, size_t n) {
  struct dduct_histogram x = {n, bounds, h->counts, h->count, h->sum};
  return emit(w, name, help, DDUCT_METRIC_HISTOGRAM, 0, NULL, NULL, 0, &x);
}

static void code_str(int code, char out[4]) {
  out[0] = (char)('0' + code / 100);
  out[1] = (char)('0' + code / 10 % 10);
  out[2] = (char)('0' + code % 10);
  out[3] = '\0';
}

static int walk_requests(struct walk *w, const struct dduct__stats *st) {
  static const char *const ln[] = {"route", "code"};
  static const char help[] = "Requests answered, by route and status code (000: none sent)";
  for (int r = 0; r < DDUCT_ROUTE_COUNT; r++)
    for (int c = 0; c < DDUCT__CODES; c++) {
      char code[4];
      const char *lv[2];
      if (st->requests[r][c] == 0) continue;
      code_str(c, code);
      lv[0] = dduct_route_name((enum dduct_route)r);
      lv[1] = code;
      if (emit(w, "dduct_requests_total", help, DDUCT_METRIC_COUNTER, 2, ln, lv,
               (double)st->requests[r][c], NULL) != 0)
        return w->rc;
    }
  return 0;
}

static int walk_cache(struct walk *w, const struct dduct_proxy *p, const struct dduct__figures *f) {
  const struct dduct__stats *st = &f->m;
  struct dduct_store_stats ss;
  static const char *const src[] = {"source"}, *const why[] = {"reason"}, *const cs[] = {"status"};
  const char *lv[1];
  uint64_t fails[DDUCT__FF_COUNT];
  memset(&ss, 0, sizeof(ss));
  if (p->store != NULL) dduct_store_stats(p->store, &ss);
  scalar(w, "dduct_cache_hits_total", "Requests served from the cache (HIT, REVALIDATED, STALE)",
         DDUCT_METRIC_COUNTER,
         (double)(st->cache[DDUCT_CACHE_HIT] + st->cache[DDUCT_CACHE_REVALIDATED] +
                  st->cache[DDUCT_CACHE_STALE]));
  scalar(w, "dduct_cache_misses_total", "Requests that started a fill from the origin",
         DDUCT_METRIC_COUNTER, (double)st->cache[DDUCT_CACHE_MISS]);
  scalar(w, "dduct_cache_collapsed_total", "Requests that joined a fill in flight",
         DDUCT_METRIC_COUNTER, (double)st->cache[DDUCT_CACHE_COLLAPSED]);
  for (int i = DDUCT_CACHE_HIT; i < DDUCT_CACHE_STATUS_COUNT; i++) {
    lv[0] = dduct_cache_status_name((enum dduct_cache_status)i);
    emit(w, "dduct_cache_requests_total", "Requests by cache status (as in the access log)",
         DDUCT_METRIC_COUNTER, 1, cs, lv, (double)st->cache[i], NULL);
  }
  lv[0] = "cache";
  emit(w, "dduct_cache_served_bytes_total",
       "Body bytes sent to clients, by where they came from (tunnels not counted)",
       DDUCT_METRIC_COUNTER, 1, src, lv, (double)st->served_cache, NULL);
  lv[0] = "origin";
  emit(w, "dduct_cache_served_bytes_total", NULL, DDUCT_METRIC_COUNTER, 1, src, lv,
       (double)st->served_origin, NULL);
  scalar(w, "dduct_cache_fills_in_flight", "Origin downloads filling the cache now",
         DDUCT_METRIC_GAUGE, (double)st->fills_in_flight);
  scalar(w, "dduct_cache_fills_total", "Fills started", DDUCT_METRIC_COUNTER,
         (double)st->fills_started);
  scalar(w, "dduct_cache_fills_completed_total", "Fills stored complete and verified",
         DDUCT_METRIC_COUNTER, (double)ss.fills_completed);
  memset(fails, 0, sizeof(fails));
  if (p->store != NULL) dduct__store_fill_failures(p->store, fails);
  for (int i = 0; i < DDUCT__FF_COUNT; i++) {
    lv[0] = dduct__fill_fail_name((enum dduct__fill_fail)i);
    emit(w, "dduct_cache_fill_failures_total", "Fills not stored, by reason",
         DDUCT_METRIC_COUNTER, 1, why, lv, (double)fails[i], NULL);
  }
  scalar(w, "dduct_cache_size_bytes", "Data bytes of the complete cache entries",
         DDUCT_METRIC_GAUGE, (double)ss.size_bytes);
  scalar(w, "dduct_cache_entries", "Complete cache entries", DDUCT_METRIC_GAUGE,
         (double)ss.entries);
  scalar(w, "dduct_cache_evictions_total", "Entries removed to keep within the budget",
         DDUCT_METRIC_COUNTER, (double)ss.evictions);
  scalar(w, "dduct_cache_degraded", "1 while misses bypass the store after a disk error",
         DDUCT_METRIC_GAUGE, p->store != NULL ? (double)dduct__store_degraded(p->store) : 0);
  return w->rc;
}

/* The parent tier (docs/cluster.md): one family at a time, a sample per parent. */
static int walk_parents(struct walk *w, const struct dduct_proxy *p,
                        const struct dduct__figures *fig) {
  static const char *const pl[] = {"parent"};
  static const struct {
    const char *name, *help;
    enum dduct_metric_type type;
  } fam[] = {
      {"dduct_parent_up", "1 unless the parent failed within parent_down_time", DDUCT_METRIC_GAUGE},
      {"dduct_parent_requests_total", "Cache fills asked of the parent", DDUCT_METRIC_COUNTER},
      {"dduct_parent_failures_total", "Fills the parent refused, timed out, dropped or answered 5xx",
       DDUCT_METRIC_COUNTER},
      {"dduct_parent_resumed_total", "Bodies the parent dropped mid-way, resumed from the next one",
       DDUCT_METRIC_COUNTER},
  };
  for (size_t f = 0; f < DDUCT_ARRAY_SIZE(fam); f++)
    for (size_t i = 0; i < p->parents.n; i++) {
      const struct dduct_parent *pa = &p->parents.v[i];
      const char *lv[1] = {pa->shown};
      double v = f == 0 ? (__atomic_load_n(&pa->down_until, __ATOMIC_RELAXED) <= uv_now(p->loop)
                               ? 1.0
                               : 0.0)
                 : i < fig->nparents ? (double)fig->parent[i][f - 1]
                                     : 0.0;
      emit(w, fam[f].name, i == 0 ? fam[f].help : NULL, fam[f].type, 1, pl, lv, v, NULL);
    }
  return w->rc;
}

static int walk_upstream(struct walk *w, const struct dduct_proxy *p,
                         const struct dduct__figures *f) {
  const struct dduct__stats *st = &f->m;
  static const char *const ln[] = {"code"};
  for (int c = 0; c < DDUCT__CODES; c++) {
    char code[4];
    const char *lv[1] = {code};
    if (st->upstream[c] == 0) continue;
    code_str(c, code);
    emit(w, "dduct_upstream_requests_total", "Origin responses, by status code",
         DDUCT_METRIC_COUNTER, 1, ln, lv, (double)st->upstream[c], NULL);
  }
  scalar(w, "dduct_upstream_connections_total", "Origin connections opened",
         DDUCT_METRIC_COUNTER, (double)f->s.upstream_connects);
  scalar(w, "dduct_upstream_reuses_total", "Requests sent on a pooled origin connection",
         DDUCT_METRIC_COUNTER, (double)f->s.upstream_reuses);
  hist(w, "dduct_upstream_connect_seconds", "Origin connection set-up: DNS, TCP and TLS",
       &st->connect, connect_bounds, DDUCT_ARRAY_SIZE(connect_bounds));
  walk_parents(w, p, f);
  return w->rc;
}

static int walk_conns(struct walk *w, const struct dduct__figures *f) {
  const struct dduct__stats *st = &f->m;
  static const char *const ln[] = {"side", "result"};
  const uint64_t *hs[2] = {f->hs_client, f->hs_server};
  for (int side = 0; side < 2; side++)
    for (int ok = 1; ok >= 0; ok--) {
      const char *lv[2] = {side ? "server" : "client", ok ? "ok" : "failed"};
      emit(w, "dduct_tls_handshakes_total",
           "TLS handshakes: server (clients to dduct), client (dduct to origins)",
           DDUCT_METRIC_COUNTER, 2, ln, lv, (double)hs[side][ok], NULL);
    }
  scalar(w, "dduct_connections_active", "Client connections open now", DDUCT_METRIC_GAUGE,
         (double)f->s.connections_active);
  scalar(w, "dduct_connections_accepted_total", "Client connections accepted",
         DDUCT_METRIC_COUNTER, (double)f->s.connections_accepted);
  scalar(w, "dduct_tunnel_bytes_total", "Bytes relayed through blind tunnels (both ways)",
         DDUCT_METRIC_COUNTER, (double)st->tunnel_bytes);
  hist(w, "dduct_request_duration_seconds", "From routing a request head to its last byte",
       &st->duration, duration_bounds, DDUCT_ARRAY_SIZE(duration_bounds));
  return w->rc;
}

/* ---- process figures (Linux) -------------------------------------------------------------- */

static double start_time(void) {
  static double cached = -1;
  char buf[1024];
  FILE *f;
  unsigned long long ticks = 0, btime = 0;
  if (cached >= 0) return cached;
  cached = 0;
  if ((f = fopen("/proc/self/stat", "r")) != NULL) {
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    char *p;
    buf[n] = '\0';
    fclose(f);
    /* Field 22 (starttime), counted after the ")" that ends the command name. */
    if ((p = strrchr(buf, ')')) != NULL) {
      int field = 2;
      for (; *p && field < 22; p++)
        if (*p == ' ') field++;
      ticks = strtoull(p, NULL, 10);
    }
  }
  if ((f = fopen("/proc/stat", "r")) != NULL) {
    while (fgets(buf, sizeof(buf), f) != NULL)
      if (strncmp(buf, "btime ", 6) == 0) btime = strtoull(buf + 6, NULL, 10);
    fclose(f);
  }
  if (btime > 0) cached = (double)btime + (double)ticks / (double)sysconf(_SC_CLK_TCK);
  return cached;
}

static int walk_process(struct walk *w) {
  struct rusage ru;
  struct rlimit rl;
  double rss = 0, vsz = 0;
  long fds = 0;
  FILE *f;
  DIR *d;
  if (getrusage(RUSAGE_SELF, &ru) == 0)
    scalar(w, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
           DDUCT_METRIC_COUNTER,
           (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
  if ((f = fopen("/proc/self/statm", "r")) != NULL) {
    unsigned long long pages_v, pages_r;
    if (fscanf(f, "%llu %llu", &pages_v, &pages_r) == 2) {
      vsz = (double)pages_v * (double)sysconf(_SC_PAGESIZE);
      rss = (double)pages_r * (double)sysconf(_SC_PAGESIZE);
    }
    fclose(f);
  }
  scalar(w, "process_resident_memory_bytes", "Resident memory size in bytes.",
         DDUCT_METRIC_GAUGE, rss);
  scalar(w, "process_virtual_memory_bytes", "Virtual memory size in bytes.", DDUCT_METRIC_GAUGE,
         vsz);
  if ((d = opendir("/proc/self/fd")) != NULL) {
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
      if (de->d_name[0] != '.') fds++;
    closedir(d);
    fds--; /* the directory's own descriptor */
  }
  scalar(w, "process_open_fds", "Number of open file descriptors.", DDUCT_METRIC_GAUGE,
         (double)fds);
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    scalar(w, "process_max_fds", "Maximum number of open file descriptors.", DDUCT_METRIC_GAUGE,
           rl.rlim_cur == RLIM_INFINITY ? -1 : (double)rl.rlim_cur);
  scalar(w, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
         DDUCT_METRIC_GAUGE, start_time());
  return w->rc;
}

static int metrics_walk(const struct dduct_proxy *p, const struct dduct__figures *f,
                        unsigned flags, dduct_metric_cb cb, void *user_data) {
  struct walk w = {cb, user_data, 0};
  if (walk_requests(&w, &f->m) == 0 && walk_cache(&w, p, f) == 0 &&
      walk_upstream(&w, p, f) == 0 && walk_conns(&w, f) == 0 && (flags & DDUCT_METRICS_PROCESS))
    walk_process(&w);
  return w.rc;
}

int dduct_proxy_metrics_each(const struct dduct_proxy *p, unsigned flags, dduct_metric_cb cb,
                             void *user_data) {
  struct dduct__figures *f;
  int rc;
  if (p == NULL || cb == NULL) return DDUCT_EINVAL;
  if ((f = malloc(sizeof(*f))) == NULL) return DDUCT_ENOMEM;
  (void)dduct__proxy_figures(p, f, NULL, 0, &rc);
  if (rc == 0) rc = metrics_walk(p, f, flags, cb, user_data);
  dduct__proxy_figures_free(f);
  free(f);
  return rc;
}

/* ---- Prometheus text 0.0.4 ---------------------------------------------------------------- */

struct prom {
  char *b;
  size_t len, cap;
  int oom;
  const char *family;
};

static void pput(struct prom *x, const char *s, size_t n) {
  if (x->oom) return;
  if (x->len + n + 1 > x->cap) {
    size_t cap = x->cap ? x->cap : 16384;
    char *b;
    while (cap < x->len + n + 1) cap *= 2;
    if ((b = realloc(x->b, cap)) == NULL) {
      x->oom = 1;
      return;
    }
    x->b = b;
    x->cap = cap;
  }
  memcpy(x->b + x->len, s, n);
  x->len += n;
  x->b[x->len] = '\0';
}

static void pputs(struct prom *x, const char *s) {
  pput(x, s, strlen(s));
}

static void pnum(struct prom *x, double v) {
  char tmp[40];
  if (v >= 0 && v < 1e15 && v == (double)(uint64_t)v) snprintf(tmp, sizeof(tmp), "%.0f", v);
  else snprintf(tmp, sizeof(tmp), "%.9g", v);
  pputs(x, tmp);
}

static void plabel_value(struct prom *x, const char *v) {
  for (; *v; v++) {
    if (*v == '\\') pputs(x, "\\\\");
    else if (*v == '"') pputs(x, "\\\"");
    else if (*v == '\n') pputs(x, "\\n");
    else pput(x, v, 1);
  }
}

static void plabels(struct prom *x, const struct dduct_metric *m, const char *le) {
  if (m->nlabels == 0 && le == NULL) return;
  pputs(x, "{");
  for (size_t i = 0; i < m->nlabels; i++) {
    if (i > 0) pputs(x, ",");
    pputs(x, m->label_names[i]);
    pputs(x, "=\"");
    plabel_value(x, m->label_values[i]);
    pputs(x, "\"");
  }
  if (le != NULL) {
    if (m->nlabels > 0) pputs(x, ",");
    pputs(x, "le=\"");
    pputs(x, le);
    pputs(x, "\"");
  }
  pputs(x, "}");
}

static void phist(struct prom *x, const struct dduct_metric *m) {
  const struct dduct_histogram *h = m->hist;
  uint64_t cum = 0;
  for (size_t i = 0; i <= h->nbounds; i++) {
    char le[32];
    cum += h->counts[i];
    if (i < h->nbounds) snprintf(le, sizeof(le), "%g", h->bounds[i]);
    else snprintf(le, sizeof(le), "+Inf");
    pputs(x, m->name);
    pputs(x, "_bucket");
    plabels(x, m, le);
    pputs(x, " ");
    pnum(x, (double)cum);
    pputs(x, "\n");
  }
  pputs(x, m->name);
  pputs(x, "_sum");
  plabels(x, m, NULL);
  pputs(x, " ");
  pnum(x, h->sum);
  pputs(x, "\n");
  pputs(x, m->name);
  pputs(x, "_count");
  plabels(x, m, NULL);
  pputs(x, " ");
  pnum(x, (double)h->count);
  pputs(x, "\n");
}

static int prom_cb(void *ud, const struct dduct_metric *m) {
  static const char *const types[] = {"counter", "gauge", "histogram"};
  struct prom *x = ud;
  if (x->family == NULL || strcmp(x->family, m->name) != 0) {
    x->family = m->name;
    if (m->help != NULL) {
      pputs(x, "# HELP ");
      pputs(x, m->name);
      pputs(x, " ");
      pputs(x, m->help);
      pputs(x, "\n");
    }
    pputs(x, "# TYPE ");
    pputs(x, m->name);
    pputs(x, " ");
    pputs(x, types[m->type]);
    pputs(x, "\n");
  }
  if (m->type == DDUCT_METRIC_HISTOGRAM) {
    phist(x, m);
  } else {
    pputs(x, m->name);
    plabels(x, m, NULL);
    pputs(x, " ");
    pnum(x, m->value);
    pputs(x, "\n");
  }
  return x->oom ? DDUCT_ENOMEM : 0;
}

int dduct_proxy_metrics_prometheus(const struct dduct_proxy *p, unsigned flags, char **out,
                                   size_t *len) {
  struct prom x;
  int rc;
  memset(&x, 0, sizeof(x));
  *out = NULL;
  *len = 0;
  rc = dduct_proxy_metrics_each(p, flags, prom_cb, &x);
  if (rc == 0 && x.b == NULL) pputs(&x, "");
  if (rc != 0 || x.oom) {
    free(x.b);
    return rc != 0 ? rc : DDUCT_ENOMEM;
  }
  *out = x.b;
  *len = x.len;
  return 0;
}

/* ---- JSON (/stats) ------------------------------------------------------------------------ */

static int json_cb(void *ud, const struct dduct_metric *m) {
  cJSON *metrics = ud, *fam = cJSON_GetObjectItemCaseSensitive(metrics, m->name), *v;
  if (m->type == DDUCT_METRIC_HISTOGRAM) {
    const struct dduct_histogram *h = m->hist;
    cJSON *buckets = cJSON_CreateArray();
    uint64_t cum = 0;
    v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "count", (double)h->count);
    cJSON_AddNumberToObject(v, "sum", h->sum);
    for (size_t i = 0; i <= h->nbounds; i++) {
      cJSON *b = cJSON_CreateObject();
      cum += h->counts[i];
      if (i < h->nbounds) cJSON_AddNumberToObject(b, "le", h->bounds[i]);
      else cJSON_AddStringToObject(b, "le", "+Inf");
      cJSON_AddNumberToObject(b, "count", (double)cum);
      cJSON_AddItemToArray(buckets, b);
    }
    cJSON_AddItemToObject(v, "buckets", buckets);
    cJSON_AddItemToObject(metrics, m->name, v);
    return 0;
  }
  if (m->nlabels == 0) {
    cJSON_AddNumberToObject(metrics, m->name, m->value);
    return 0;
  }
  if (fam == NULL) {
    fam = cJSON_CreateArray();
    cJSON_AddItemToObject(metrics, m->name, fam);
  }
  v = cJSON_CreateObject();
  for (size_t i = 0; i < m->nlabels; i++)
    cJSON_AddStringToObject(v, m->label_names[i], m->label_values[i]);
  cJSON_AddNumberToObject(v, "value", m->value);
  cJSON_AddItemToArray(fam, v);
  return 0;
}

static void add_summary(cJSON *root, const struct dduct_proxy *p, const struct dduct__figures *f) {
  const struct dduct__stats *st = &f->m;
  struct dduct_store_stats ss;
  cJSON *s = cJSON_AddObjectToObject(root, "summary");
  uint64_t hits = st->cache[DDUCT_CACHE_HIT] + st->cache[DDUCT_CACHE_REVALIDATED] +
                  st->cache[DDUCT_CACHE_STALE];
  uint64_t looked = hits + st->cache[DDUCT_CACHE_MISS] + st->cache[DDUCT_CACHE_COLLAPSED];
  uint64_t reqs = 0;
  memset(&ss, 0, sizeof(ss));
  if (p->store != NULL) dduct_store_stats(p->store, &ss);
  for (int r = 0; r < DDUCT_ROUTE_COUNT; r++)
    for (int c = 0; c < DDUCT__CODES; c++) reqs += st->requests[r][c];
  cJSON_AddNumberToObject(s, "requests", (double)reqs);
  cJSON_AddNumberToObject(s, "hits", (double)hits);
  cJSON_AddNumberToObject(s, "misses", (double)st->cache[DDUCT_CACHE_MISS]);
  cJSON_AddNumberToObject(s, "collapsed", (double)st->cache[DDUCT_CACHE_COLLAPSED]);
  cJSON_AddNumberToObject(s, "hit_ratio",
                          looked > 0 ? (double)(hits + st->cache[DDUCT_CACHE_COLLAPSED]) /
                                           (double)looked
                                     : 0);
  cJSON_AddNumberToObject(s, "bytes_cache", (double)st->served_cache);
  cJSON_AddNumberToObject(s, "bytes_origin", (double)st->served_origin);
  cJSON_AddNumberToObject(s, "wan_bytes_saved", (double)st->served_cache);
  cJSON_AddNumberToObject(s, "connections_active", (double)f->s.connections_active);
  cJSON_AddNumberToObject(s, "fills_in_flight", (double)st->fills_in_flight);
  cJSON_AddNumberToObject(s, "size_bytes", (double)ss.size_bytes);
  cJSON_AddNumberToObject(s, "entries", (double)ss.entries);
  cJSON_AddNumberToObject(s, "uptime_seconds",
                          (double)(uv_hrtime() - st->hr0) / 1e9);
}

static void fill_cb(void *arg, const struct dduct__fill_info *fi) {
  cJSON *f = cJSON_CreateObject();
  cJSON_AddStringToObject(f, "url", fi->url);
  cJSON_AddNumberToObject(f, "bytes", (double)fi->received);
  if (fi->expected == UINT64_MAX) cJSON_AddNullToObject(f, "expected");
  else cJSON_AddNumberToObject(f, "expected", (double)fi->expected);
  cJSON_AddNumberToObject(f, "readers", fi->readers);
  cJSON_AddNumberToObject(f, "seconds", (double)(uv_hrtime() - fi->started) / 1e9);
  cJSON_AddItemToArray(arg, f);
}

static void add_errors(cJSON *root, const struct dduct__stats *st) {
  cJSON *a = cJSON_AddArrayToObject(root, "errors");
  uint64_t n = DDUCT_MIN(st->nerrs, (uint64_t)DDUCT__ERRORS);
  for (uint64_t i = 0; i < n; i++) { /* newest first */
    const struct dduct__err *e = &st->errs[(st->nerrs - 1 - i) % DDUCT__ERRORS];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "time", (double)e->time_us / 1e6);
    cJSON_AddNumberToObject(o, "status", e->status);
    cJSON_AddStringToObject(o, "client", e->client);
    cJSON_AddStringToObject(o, "text", e->text);
    cJSON_AddItemToArray(a, o);
  }
}

static void add_history(cJSON *root, const struct dduct__stats *st) {
  cJSON *a = cJSON_AddArrayToObject(root, "history");
  int64_t now = dduct__stats_wall_us(st, uv_hrtime()) / 60000000;
  for (int64_t m = now - DDUCT__MINUTES + 1; m <= now; m++) {
    const struct dduct__minute *x = &st->minutes[(uint64_t)m % DDUCT__MINUTES];
    int live = x->minute == m;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "t", (double)(m * 60));
    cJSON_AddNumberToObject(o, "requests", live ? (double)x->requests : 0);
    cJSON_AddNumberToObject(o, "hits", live ? (double)x->hits : 0);
    cJSON_AddNumberToObject(o, "misses", live ? (double)x->misses : 0);
    cJSON_AddNumberToObject(o, "collapsed", live ? (double)x->collapsed : 0);
    cJSON_AddNumberToObject(o, "bytes_cache", live ? (double)x->bytes_cache : 0);
    cJSON_AddNumberToObject(o, "bytes_origin", live ? (double)x->bytes_origin : 0);
    cJSON_AddItemToArray(a, o);
  }
}

static int by_hits(const void *a, const void *b) {
  const struct dduct__top *x = a, *y = b;
  return x->hits < y->hits ? 1 : x->hits > y->hits ? -1 : 0;
}

static int by_size(const void *a, const void *b) {
  const struct dduct__top *x = a, *y = b;
  return x->size < y->size ? 1 : x->size > y->size ? -1 : 0;
}

static void add_top(cJSON *root, const char *name, const struct dduct__top *t, size_t n,
                    int (*cmp)(const void *, const void *), size_t keep) {
  struct dduct__top tmp[DDUCT__TOP];
  cJSON *a = cJSON_AddArrayToObject(root, name);
  memcpy(tmp, t, n * sizeof(*t));
  qsort(tmp, n, sizeof(*tmp), cmp);
  for (size_t i = 0; i < n && i < keep; i++) {
    cJSON *o;
    if (tmp[i].id == 0) continue;
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "url", tmp[i].url);
    cJSON_AddNumberToObject(o, "hits", (double)tmp[i].hits);
    cJSON_AddNumberToObject(o, "size", (double)tmp[i].size);
    cJSON_AddItemToArray(a, o);
  }
}

static void add_loops(cJSON *root, const struct dduct__loop_brief *loops, size_t n) {
  cJSON *a = cJSON_AddArrayToObject(root, "loops");
  for (size_t i = 0; i < n; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "loop", (double)i);
    cJSON_AddNumberToObject(o, "connections_active", (double)loops[i].connections_active);
    cJSON_AddNumberToObject(o, "connections_accepted", (double)loops[i].connections_accepted);
    cJSON_AddNumberToObject(o, "requests", (double)loops[i].requests);
    cJSON_AddItemToArray(a, o);
  }
}

int dduct_proxy_stats_json(const struct dduct_proxy *p, unsigned flags, char **out,
                           size_t *len) {
  cJSON *root, *metrics, *fills;
  struct dduct__figures *f;
  struct dduct__loop_brief loops[256];
  size_t nloops;
  char *s;
  int rc;
  *out = NULL;
  *len = 0;
  if ((f = malloc(sizeof(*f))) == NULL) return DDUCT_ENOMEM;
  nloops = dduct__proxy_figures(p, f, loops, DDUCT_ARRAY_SIZE(loops), &rc);
  root = rc == 0 ? cJSON_CreateObject() : NULL;
  if (root == NULL) {
    dduct__proxy_figures_free(f);
    free(f);
    return rc != 0 ? rc : DDUCT_ENOMEM;
  }
  cJSON_AddStringToObject(root, "version", dduct_version());
  cJSON_AddNumberToObject(root, "time", (double)dduct__stats_wall_us(&p->metrics, uv_hrtime()) / 1e6);
  add_summary(root, p, f);
  add_loops(root, loops, DDUCT_MIN(nloops, DDUCT_ARRAY_SIZE(loops)));
  metrics = cJSON_AddObjectToObject(root, "metrics");
  rc = metrics_walk(p, f, flags, json_cb, metrics);
  fills = cJSON_AddArrayToObject(root, "fills");
  dduct__proxy_each_fill(p, fill_cb, fills);
  add_errors(root, &f->m);
  add_history(root, &f->m);
  add_top(root, "most_hit", f->m.top, DDUCT__TOP, by_hits, 10);
  add_top(root, "largest", f->m.largest, DDUCT__LARGEST, by_size, 10);
  s = rc == 0 ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  dduct__proxy_figures_free(f);
  free(f);
  if (s == NULL) return rc != 0 ? rc : DDUCT_ENOMEM;
  *out = s;
  *len = strlen(s);
  return 0;
}
