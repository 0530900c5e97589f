/* Embedding libdduct: a caching MITM proxy in a few dozen lines, its counters printed at exit.
 *   embed-proxy CERT_DIR [TCP_ADDR [TLS_ADDR]]     e.g. embed-proxy /tmp/certs 127.0.0.1:8000
 * Then: curl -x http://127.0.0.1:8000 --cacert CERT_DIR/ca.crt https://... ; Ctrl-C stops it. */
#include <stdio.h>

#include "dduct.h"

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
  dduct_proxy_metrics_each(p, 0, print_cb, NULL);
  uv_close((uv_handle_t *)ud, NULL); /* the signal handle: the loop can end now */
}

static void signal_cb(uv_signal_t *sig, int signum) {
  dduct_proxy_close(sig->data, closed_cb, sig); /* in-flight transfers get a grace period */
}

int main(int argc, char **argv) {
  struct dduct_ca_options co;
  struct dduct_proxy_options po;
  struct dduct_ca *ca = NULL;
  struct dduct_proxy *proxy = NULL;
  uv_signal_t sig;
  char err[256] = "";
  int rc;

  if (argc < 2) {
    fprintf(stderr, "usage: %s CERT_DIR [TCP_ADDR [TLS_ADDR]]\n", argv[0]);
    return 2;
  }
  dduct_log_set(DDUCT_LOG_INFO, log_cb, NULL);
  dduct_ca_options_init(&co);
  co.cert_dir = argv[1];
  co.rsa_key_bits = 2048;
  dduct_proxy_options_init(&po); /* verified origins, loopback+private clients, CONNECT to 443 */
  rc = dduct_ca_open(&co, &ca, err, sizeof(err));
  if (rc == 0) rc = dduct_proxy_new(uv_default_loop(), &po, ca, NULL, NULL, &proxy, err, sizeof(err));
  if (rc == 0)
    rc = dduct_proxy_listen(proxy, DDUCT_LISTEN_TCP, argc > 2 ? argv[2] : "127.0.0.1:8000", err,
                            sizeof(err));
  if (rc == 0 && argc > 3) rc = dduct_proxy_listen(proxy, DDUCT_LISTEN_TLS, argv[3], err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "embed-proxy: %s\n", err[0] ? err : dduct_strerror(rc));
    if (proxy != NULL) {
      dduct_proxy_close(proxy, NULL, NULL);
      uv_run(uv_default_loop(), UV_RUN_DEFAULT);
    }
    dduct_proxy_free(proxy);
    dduct_ca_free(ca);
    return 1;
  }
  uv_signal_init(uv_default_loop(), &sig);
  sig.data = proxy;
  uv_signal_start(&sig, signal_cb, SIGINT);
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  dduct_proxy_free(proxy); /* after closed_cb: nothing of it is on the loop any more */
  dduct_ca_free(ca);
  uv_loop_close(uv_default_loop());
  return 0;
}
