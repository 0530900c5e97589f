/* The proxy's figures (stats.c): the access record's JSON line (escaping, truncation), fill
 * failure reasons, and on a real proxy the sample walk (families contiguous, labelled counters
 * only once non-zero), the Prometheus text and the JSON document after booked requests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "internal.h"
#include "proxy.h"
#include "stats.h"
#include "tap.h"

static void test_access_json(void) {
  struct dduct_access_record r;
  char buf[1024], small[40];
  size_t n;
  cJSON *j;
  memset(&r, 0, sizeof(r));
  r.time_us = 1700000000123456LL;
  r.client = "127.0.0.1:5555";
  r.method = "GET";
  r.url = "http://h/a\"b\\c\x01\xc3\xa9";
  r.status = 200;
  r.bytes = 4096;
  r.duration_us = 1500;
  r.route = DDUCT_ROUTE_CACHE;
  r.cache = DDUCT_CACHE_HIT;
  r.origin_status = 0;
  r.origin_us = -1;
  n = dduct_access_record_json(&r, buf, sizeof(buf));
  CHECK(n > 0 && n < sizeof(buf) && buf[n - 1] == '\n' && buf[n] == '\0', "one line, NUL-ended");
  j = cJSON_Parse(buf);
  CHECK(j != NULL, "the line is valid JSON whatever bytes the URL holds");
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "time")),
               "2023-11-14T22:13:20.123456Z", "UTC time with microseconds");
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "url")),
               "http://h/a\"b\\c\x01\xc3\x83\xc2\xa9", "quotes, backslashes, control bytes "
               "escaped; bytes >= 0x80 as \\u00XX");
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "cache")), "HIT", "cache status");
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "route")), "cache", "route");
  CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "origin_status")), "no origin: null");
  CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "bytes")), 4096, "bytes");
  cJSON_Delete(j);
  CHECK_EQ_INT(dduct_access_record_json(&r, small, sizeof(small)), n,
               "a short buffer: the length needed, like snprintf");
  CHECK_EQ_INT(strlen(small), sizeof(small) - 1, "and a NUL-terminated prefix");
}

static void test_fill_reasons(void) {
  CHECK_EQ_INT(dduct__fill_fail_reason(UV_ETIMEDOUT), DDUCT__FF_TIMEOUT, "timeout");
  CHECK_EQ_INT(dduct__fill_fail_reason(DDUCT_EVERIFY), DDUCT__FF_TLS, "certificate");
  CHECK_EQ_INT(dduct__fill_fail_reason(DDUCT_ESHORT), DDUCT__FF_SHORT, "short body");
  CHECK_EQ_INT(dduct__fill_fail_reason(DDUCT_EDIGEST), DDUCT__FF_DIGEST, "digest");
  CHECK_EQ_INT(dduct__fill_fail_reason(UV_ENOSPC), DDUCT__FF_DISK, "full disk");
  CHECK_EQ_INT(dduct__fill_fail_reason(UV_ECONNREFUSED), DDUCT__FF_ORIGIN, "refused");
  CHECK_EQ_INT(dduct__fill_fail_reason(UV_EAI_NONAME), DDUCT__FF_ORIGIN, "DNS");
  CHECK_EQ_INT(dduct__fill_fail_reason(UV_ECANCELED), DDUCT__FF_CANCELLED, "shutdown");
}

struct walk_state {
  char last[128];
  char seen[64][128];
  int nseen, samples, split;
};

static int walk_cb(void *ud, const struct dduct_metric *m) {
  struct walk_state *w = ud;
  w->samples++;
  if (strcmp(w->last, m->name) == 0) return 0;
  for (int i = 0; i < w->nseen; i++)
    if (strcmp(w->seen[i], m->name) == 0) w->split++;
  if (w->nseen < 64) snprintf(w->seen[w->nseen++], 128, "%s", m->name);
  snprintf(w->last, sizeof(w->last), "%s", m->name);
  return 0;
}

static int records;
static void access_cb(void *ud, const struct dduct_access_record *r) {
  (void)ud;
  records++;
  CHECK_EQ_STR(r->url, "http://h/x", "the record carries the URL it was booked with");
}

static void book(struct dduct_proxy *p, enum dduct_route route, enum dduct_cache_status cs,
                 int status, uint64_t bytes, int origin) {
  struct dduct__txn t;
  struct dduct__txn_end e = {"127.0.0.1:1", "GET", "http://h/x", status, bytes};
  dduct__txn_begin(&t, route);
  t.cache = cs;
  if (origin) dduct__txn_origin(&t, 200, t.t0);
  dduct__stats_txn_done(p, &t, &e);
  dduct__stats_txn_done(p, &t, &e); /* a request is booked once */
}

static void test_proxy_figures(void) {
  char dir[] = "/tmp/dduct-test-stats-XXXXXX", path[300], err[256] = "";
  struct dduct_ca_options co;
  struct dduct_proxy_options o;
  struct dduct_ca *ca = NULL;
  struct dduct_proxy *p = NULL;
  struct walk_state w;
  uv_loop_t loop;
  char *text = NULL, *json = NULL;
  size_t len;
  cJSON *j;
  uint64_t t0;
  uv_loop_init(&loop);
  CHECK(mkdtemp(dir) != NULL, "a temp cert_dir");
  snprintf(path, sizeof(path), "%s/", dir);
  dduct_ca_options_init(&co);
  co.cert_dir = path;
  co.rsa_key_bits = 2048;
  CHECK_EQ_INT(dduct_ca_open(&co, &ca, err, sizeof(err)), 0, "a CA");
  dduct_proxy_options_init(&o);
  o.access_cb = access_cb;
  CHECK_EQ_INT(dduct_proxy_new(&loop, &o, ca, NULL, NULL, &p, err, sizeof(err)), 0, "a proxy");

  memset(&w, 0, sizeof(w));
  CHECK_EQ_INT(dduct_proxy_metrics_each(p, 0, walk_cb, &w), 0, "the walk");
  CHECK_EQ_INT(w.split, 0, "each family's samples come together");
  CHECK(strcmp(w.seen[0], "dduct_requests_total") != 0, "no request sample before a request");

  book(p, DDUCT_ROUTE_CACHE, DDUCT_CACHE_HIT, 200, 4096, 0);
  book(p, DDUCT_ROUTE_CACHE, DDUCT_CACHE_MISS, 200, 1000, 1);
  book(p, DDUCT_ROUTE_FORWARD, DDUCT_CACHE_BYPASS, 502, 50, 0);
  dduct__stats_upstream(&p->metrics, 200);
  CHECK_EQ_INT(records, 3, "one access record per request");

  CHECK_EQ_INT(dduct_proxy_metrics_prometheus(p, DDUCT_METRICS_PROCESS, &text, &len), 0,
               "Prometheus text");
  CHECK(strstr(text, "dduct_requests_total{route=\"cache\",code=\"200\"} 2\n") != NULL,
        "requests by route and code");
  CHECK(strstr(text, "dduct_requests_total{route=\"forward\",code=\"502\"} 1\n") != NULL,
        "an error by its code");
  CHECK(strstr(text, "dduct_cache_served_bytes_total{source=\"cache\"} 4096\n") != NULL,
        "bytes from the cache");
  CHECK(strstr(text, "dduct_cache_served_bytes_total{source=\"origin\"} 1000\n") != NULL,
        "bytes from the origin (not the 50 bytes of dduct's own error answer)");
  CHECK(strstr(text, "dduct_request_duration_seconds_count 3\n") != NULL, "the histogram");
  CHECK(strstr(text, "dduct_request_duration_seconds_bucket{le=\"+Inf\"} 3\n") != NULL,
        "its +Inf bucket");
  CHECK(strstr(text, "# TYPE process_cpu_seconds_total counter\n") != NULL, "process figures");
  CHECK_EQ_INT(strlen(text), len, "the length");
  free(text);

  CHECK_EQ_INT(dduct_proxy_stats_json(p, 0, &json, &len), 0, "JSON");
  j = cJSON_Parse(json);
  CHECK(j != NULL, "it parses");
  CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "summary"), "hits")),
               1, "summary hits");
  CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "history")), 60, "an hour of minutes");
  cJSON_Delete(j);
  free(json);

  /* What a scrape costs (reported, not asserted: timing belongs to bench/). */
  t0 = uv_hrtime();
  for (int i = 0, ok = 1; i < 200; i++) {
    ok &= dduct_proxy_metrics_prometheus(p, 0, &text, &len) == 0;
    free(text);
    if (i == 199) CHECK(ok, "200 renders");
  }
  printf("# a /metrics render without process_*: %.1f us\n", (uv_hrtime() - t0) / 200 / 1e3);

  dduct_proxy_close(p, NULL, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  dduct_proxy_free(p);
  dduct_ca_free(ca);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  snprintf(path, sizeof(path), "rm -rf '%s'", dir);
  CHECK_EQ_INT(system(path), 0, "cleanup");
}

int main(void) {
  test_access_json();
  test_fill_reasons();
  test_proxy_figures();
  return tap_done();
}
