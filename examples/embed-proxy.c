/* Embedding libdduct: a caching MITM proxy in a few dozen lines, its counters printed at exit.
 *   embed-proxy CERT_DIR FILE_DIR [TCP_ADDR [TLS_ADDR]]   e.g. embed-proxy /tmp/certs /tmp/files
 * Then fetch a package twice through it: the second comes from FILE_DIR. For https:// (the
 * hosts dduct intercepts: *.docker.io, ghcr.io, ...) clients trust CERT_DIR/ca.crt:
 *   curl -x http://127.0.0.1:8000 --cacert /tmp/certs/ca.crt -O https://... ; Ctrl-C stops it. */
#include <stdio.h>

#include "dduct.h"

/* What is cached: registry blobs and package or archive files (the paths dduct's config
 * caches by default); everything else is only proxied. */
static const char *const filters[] = {
    "^/v2/.*/blobs/sha256:\\w+$",
    "^/.*\\.(?:apk|deb|rpm|tar|tbz|tgz|txz|7z|bz2|gz|xz|zip|zst)$",
};

struct app {
  uv_signal_t sig;
  struct dduct_proxy *proxy;
  struct dduct_store *store;
};

static void log_cb(void *ud, enum dduct_log_level level, const char *module, const char *msg) {
  fprintf(stderr, "[%-5s dduct::%s] %s\n", dduct_log_level_name(level), module, msg);
}

/* The figures dduct's /metrics shows are library calls too: the non-zero counters at exit. */
static int print_cb(void *ud, const struct dduct_metric *m) {
  if (m->type != DDUCT_METRIC_COUNTER || m->value == 0) return 0;
  printf("%s", m->name);
  for (size_t i = 0; i < m->nlabels; i++)
    printf("%s%s=%s", i ? "," : " ", m->label_names[i], m->label_values[i]);
  printf(" %.0f\n", m->value);
  return 0;
}

static void closed_cb(struct dduct_proxy *p, void *ud) {
  struct app *a = ud;
  struct dduct_store_stats st;
  dduct_proxy_metrics_each(p, 0, print_cb, NULL);
  dduct_store_stats(a->store, &st);
  printf("cache: %llu entries, %llu bytes in %s\n", (unsigned long long)st.entries,
         (unsigned long long)st.size_bytes, dduct_store_dir(a->store));
  uv_close((uv_handle_t *)&a->sig, NULL); /* the loop can end now */
}

static void signal_cb(uv_signal_t *sig, int signum) {
  struct app *a = sig->data;
  dduct_proxy_close(a->proxy, closed_cb, a); /* in-flight transfers get a grace period */
}

int main(int argc, char **argv) {
  uv_loop_t *loop = uv_default_loop();
  struct dduct_ca_options co;
  struct dduct_proxy_options po;
  struct dduct_ca *ca = NULL;
  struct dduct_filter *filter = NULL;
  struct app a = {.proxy = NULL, .store = NULL};
  char err[256] = "";
  int rc;

  if (argc < 3) {
    fprintf(stderr, "usage: %s CERT_DIR FILE_DIR [TCP_ADDR [TLS_ADDR]]\n", argv[0]);
    return 2;
  }
  dduct_log_set(DDUCT_LOG_INFO, log_cb, NULL);
  dduct_ca_options_init(&co);
  co.cert_dir = argv[1];
  co.rsa_key_bits = 2048;
  dduct_proxy_options_init(&po); /* verified origins, loopback+private clients, CONNECT to 443 */
  rc = dduct_ca_open(&co, &ca, err, sizeof(err));
  if (rc == 0) rc = dduct_store_open(loop, argv[2], &a.store, err, sizeof(err));
  if (rc == 0) rc = dduct_filter_new(&filter);
  for (size_t i = 0; rc == 0 && i < sizeof(filters) / sizeof(filters[0]); i++)
    rc = dduct_filter_add(filter, filters[i], err, sizeof(err));
  if (rc == 0) rc = dduct_proxy_new(loop, &po, ca, a.store, filter, &a.proxy, err, sizeof(err));
  if (rc == 0)
    rc = dduct_proxy_listen(a.proxy, DDUCT_LISTEN_TCP, argc > 3 ? argv[3] : "127.0.0.1:8000", err,
                            sizeof(err));
  if (rc == 0 && argc > 4)
    rc = dduct_proxy_listen(a.proxy, DDUCT_LISTEN_TLS, argv[4], err, sizeof(err));
  if (rc == 0) {
    uv_signal_init(loop, &a.sig);
    a.sig.data = &a;
    uv_signal_start(&a.sig, signal_cb, SIGINT);
  } else {
    fprintf(stderr, "embed-proxy: %s\n", err[0] ? err : dduct_strerror(rc));
    if (a.proxy != NULL) dduct_proxy_close(a.proxy, NULL, NULL);
  }
  uv_run(loop, UV_RUN_DEFAULT); /* until closed_cb, or the failed proxy's close */
  /* Each object after those that borrow it: the proxy (closed, nothing of it on the loop), the
   * store (one more run lets it close its handles), then the filters and the CA. */
  dduct_proxy_free(a.proxy);
  dduct_store_free(a.store);
  uv_run(loop, UV_RUN_DEFAULT);
  dduct_filter_free(filter);
  dduct_ca_free(ca);
  uv_loop_close(loop);
  return rc == 0 ? 0 : 1;
}
