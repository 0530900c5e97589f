/* The proxy's figures: counters, gauges, histograms, the last hour per minute, the
 * last errors and the most-hit entries, kept on the loop thread with plain increments; read by
 * dduct_proxy_metrics_each and rendered as Prometheus text and JSON (stats.c). Internal.
 *
 * Hooks elsewhere stay one line: a request's facts go into its transaction (struct dduct__txn,
 * one per client connection, reset per request) and dduct__stats_txn_done books them all at
 * once when the request ends. */
#ifndef DDUCT_STATS_H
#define DDUCT_STATS_H

#include <stdint.h>

#include "dduct.h"

#define DDUCT__CODES 600 /* status codes 0..599 (0: no status) */
#define DDUCT__HIST_MAX 20
#define DDUCT__MINUTES 60
#define DDUCT__ERRORS 32
#define DDUCT__TOP 64
#define DDUCT__LARGEST 10

/* Why a fill was not stored. */
enum dduct__fill_fail {
  DDUCT__FF_ORIGIN = 0,  /* no usable answer: DNS, refused, reset, bad response */
  DDUCT__FF_TIMEOUT,     /* connect or upstream timeout */
  DDUCT__FF_TLS,         /* TLS or certificate verification */
  DDUCT__FF_SHORT,       /* the origin's body ended early */
  DDUCT__FF_DIGEST,      /* the body did not match its digest */
  DDUCT__FF_DISK,        /* writing the entry failed (full disk, I/O error, read-only) */
  DDUCT__FF_CANCELLED,   /* shutdown */
  DDUCT__FF_OTHER,
  DDUCT__FF_COUNT,
};
enum dduct__fill_fail dduct__fill_fail_reason(int err);
const char *dduct__fill_fail_name(enum dduct__fill_fail f);

struct dduct__hist {
  uint64_t counts[DDUCT__HIST_MAX + 1];
  uint64_t count;
  double sum;
};

struct dduct__minute {
  int64_t minute; /* unix time / 60 */
  uint64_t requests, hits, misses, collapsed, bytes_cache, bytes_origin;
};

struct dduct__err {
  int64_t time_us;
  int status;
  char client[48];
  char text[232];
};

struct dduct__top {
  uint64_t id; /* hash of url; 0: free */
  uint64_t hits, size;
  char url[216];
};

struct dduct__stats {
  uint64_t requests[DDUCT_ROUTE_COUNT][DDUCT__CODES];
  uint64_t cache[DDUCT_CACHE_STATUS_COUNT];
  uint64_t served_cache, served_origin, tunnel_bytes;
  uint64_t upstream[DDUCT__CODES];
  uint64_t fills_started, fills_in_flight;
  struct dduct__hist connect, duration;
  struct dduct__minute minutes[DDUCT__MINUTES];
  struct dduct__err errs[DDUCT__ERRORS];
  uint64_t nerrs;
  struct dduct__top top[DDUCT__TOP], largest[DDUCT__LARGEST];
  uint64_t hr0;   /* uv_hrtime at init */
  int64_t wall0;  /* unix microseconds at init */
};

/* One request's facts, from routing to its end. */
struct dduct__txn {
  uint64_t t0;     /* uv_hrtime when routed */
  enum dduct_route route;
  enum dduct_cache_status cache;
  int origin_status;
  int64_t origin_ns; /* -1: no origin answer */
  int booked;      /* done already (a request ends once) */
};

void dduct__stats_init(struct dduct__stats *st);
/* Unix microseconds now, from the monotonic clock (no system call). */
int64_t dduct__stats_wall_us(const struct dduct__stats *st, uint64_t hrtime);

void dduct__txn_begin(struct dduct__txn *t, enum dduct_route route);
/* The origin answered status for this request; its fetch started at started (uv_hrtime). */
void dduct__txn_origin(struct dduct__txn *t, int status, uint64_t started);

/* What the request was, for the access record (url: see dduct_access_record). */
struct dduct__txn_end {
  const char *client, *method, *url;
  int status;
  uint64_t bytes;
};
/* Book a finished request: counters, histogram, the minute, and the access record when the
 * proxy has an access callback (url is only needed then). */
struct dduct_proxy;
void dduct__stats_txn_done(struct dduct_proxy *p, struct dduct__txn *t,
                           const struct dduct__txn_end *end);

/* "scheme://host:port/path" into buf[len] (truncated, NUL-terminated), or "host:port" when
 * https is -1 (CONNECT); IPv6 hosts in brackets. Returns buf. */
const char *dduct__stats_url(char *buf, size_t len, int https, const char *host, unsigned port,
                             const char *path);

void dduct__stats_upstream(struct dduct__stats *st, int status);
void dduct__stats_connect_time(struct dduct__stats *st, uint64_t started);
void dduct__stats_error(struct dduct__stats *st, int status, const char *client, const char *text);
/* A cached entry is served (hit, collapsed or the filler's own read). */
void dduct__stats_entry_served(struct dduct__stats *st, const char *url, uint64_t size);

/* Add from's figures to to's (another loop's): counters and histograms add, the minutes, the
 * last errors and the most-hit tables merge. */
void dduct__stats_add(struct dduct__stats *to, const struct dduct__stats *from);

/* Fill in flight, as /stats shows it. */
struct dduct__fill_info {
  const char *url;
  uint64_t received, expected; /* expected: UINT64_MAX when unknown */
  int readers;
  uint64_t started; /* uv_hrtime */
};

#endif
