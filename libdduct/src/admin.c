/* The local routes: /metrics, /stats, /healthz, /ca.crt and the status page. Every answer is
 * made at once on the loop from counters in memory (a scrape costs microseconds) and goes out
 * as one whole response; the connection stays alive as any other. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "stats.h"

#define LOG_MOD "admin"

int dduct__admin_is_local(const struct dduct_proxy *p, const char *target) {
  char host[256];
  const char *path;
  uint16_t port;
  int https;
  struct sockaddr_storage ss;
  if (strcmp(target, "/ca.crt") == 0) return 1;
  if (dduct__http_parse_url(target, &https, host, sizeof(host), &port, &path) != 0 ||
      strcmp(path, "/ca.crt") != 0)
    return 0;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
    return 0;
  return dduct__proxy_is_self(p, (const struct sockaddr *)&ss);
}

static void answer(struct dduct_conn *c, int status, const char *type, const char *body,
                   size_t len, const char *extra_name, const char *extra_value) {
  struct dduct_http_head h;
  dduct__http_head_init(&h);
  if (dduct__http_add(&h, "Content-Type", type) != 0 ||
      dduct__http_add(&h, "Cache-Control", "no-store") != 0 ||
      (extra_name != NULL && dduct__http_add(&h, extra_name, extra_value) != 0) ||
      dduct__conn_send_whole(c, status, NULL, &h, (int64_t)len, body, len) != 0)
    dduct__conn_abort(c);
  dduct__http_head_free(&h);
}

static void text(struct dduct_conn *c, int status, const char *msg) {
  answer(c, status, "text/plain; charset=utf-8", msg, strlen(msg), NULL, NULL);
}

/* 200 while the proxy listens and file_dir takes writes; 503 with the reason otherwise. A
 * read-only mount fails access(W_OK) even for root (EROFS), unlike a chmod. */
static void healthz(struct dduct_conn *c) {
  struct dduct_proxy *p = dduct__conn_proxy(c);
  char why[600];
  int listening = 0;
  for (const struct dduct_listener *l = p->listeners; l != NULL; l = l->next)
    if (l->kind != DDUCT_LISTEN_ADMIN && l->waiting != -1) listening = 1;
  if (p->closing) snprintf(why, sizeof(why), "shutting down\n");
  else if (!listening) snprintf(why, sizeof(why), "no proxy listener is open\n");
  else if (p->store != NULL && access(dduct_store_dir(p->store), W_OK) != 0)
    snprintf(why, sizeof(why), "file_dir \"%s\" is not writable: %s\n", dduct_store_dir(p->store),
             strerror(errno));
  else {
    text(c, 200, "ok\n");
    return;
  }
  LOG_WARN(LOG_MOD, "%s: /healthz: %.*s", dduct__conn_peer(c), (int)strlen(why) - 1, why);
  text(c, 503, why);
}

static void rendered(struct dduct_conn *c, int rc, char *body, size_t len, const char *type) {
  if (rc != 0) {
    text(c, 500, "out of memory\n");
    return;
  }
  answer(c, 200, type, body, len, NULL, NULL);
  free(body);
}

void dduct__admin_handle(struct dduct_conn *c, const char *target, int full) {
  const struct dduct_request *req = dduct__conn_request(c);
  struct dduct_proxy *p = dduct__conn_proxy(c);
  char path[64];
  size_t n;
  char *body;
  size_t len;
  int rc;
  /* An absolute URL names the same page (on a proxy listener it named one of our addresses). */
  if (strncmp(target, "http://", 7) == 0 || strncmp(target, "https://", 8) == 0) {
    const char *slash = strchr(target + (target[4] == 's' ? 8 : 7), '/');
    target = slash != NULL ? slash : "/";
  }
  n = strcspn(target, "?#");
  snprintf(path, sizeof(path), "%.*s", (int)DDUCT_MIN(n, sizeof(path) - 1), target);
  if (n >= sizeof(path)) path[0] = '\0';
  if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
    answer(c, 405, "text/plain; charset=utf-8", "only GET and HEAD\n", 18, "Allow", "GET, HEAD");
    return;
  }
  if (strcmp(path, "/ca.crt") == 0) {
    const char *pem = dduct_ca_cert_pem(p->ca);
    answer(c, 200, "application/x-pem-file", pem, strlen(pem), "Content-Disposition",
           "attachment; filename=\"dduct-ca.crt\"");
  } else if (!full) {
    text(c, 404, "not found\n");
  } else if (strcmp(path, "/metrics") == 0) {
    rc = dduct_proxy_metrics_prometheus(p, DDUCT_METRICS_PROCESS, &body, &len);
    rendered(c, rc, body, len, "text/plain; version=0.0.4; charset=utf-8");
  } else if (strcmp(path, "/stats") == 0) {
    rc = dduct_proxy_stats_json(p, DDUCT_METRICS_PROCESS, &body, &len);
    rendered(c, rc, body, len, "application/json");
  } else if (strcmp(path, "/healthz") == 0) {
    healthz(c);
  } else if (strcmp(path, "/") == 0) {
    answer(c, 200, "text/html; charset=utf-8", dduct__status_html, dduct__status_html_len, NULL,
           NULL);
  } else {
    text(c, 404, "not found: try /, /metrics, /stats, /healthz or /ca.crt\n");
  }
}

/* The local route: everything from the admin listener; on the proxy listeners a request for
 * dduct itself (not through TLS: those are for the origin). */
int dduct__admin_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req) {
  const char *target = dduct__http_target(req->head);
  struct dduct__txn *txn = dduct__conn_txn(c);
  int full = dduct__conn_listener(c) == DDUCT_LISTEN_ADMIN;
  if (!full && (req->connect || dduct__conn_tls_below(c) || !dduct__admin_is_local(proxy, target)))
    return 0;
  txn->route = DDUCT_ROUTE_LOCAL;
  txn->cache = DDUCT_CACHE_NONE;
  dduct__admin_handle(c, target, full);
  return 1;
}
