/* The intercept route: a CONNECT to a host the CA covers is answered "200" by the proxy, which
 * then speaks TLS to the client as that host (a leaf minted for it, tls.c) and reads the
 * requests inside like any others (their origin is the CONNECT's host and port, over https). */
#include <stdio.h>

#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "route.h"
#include "stats.h"
#include "tls.h"

int dduct__intercept_route(void *proxy, struct dduct_conn *c, const struct dduct_request *req) {
  static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  struct dduct_proxy *p = proxy;
  struct dduct_stream *tls;
  const char *pre;
  size_t prelen;
  char host[256];
  uint16_t port = req->port;

  if (!req->connect || req->host == NULL || !dduct_ca_covers(p->ca, req->host)) return 0;
  if (dduct__conn_send_raw(c, ok, sizeof(ok) - 1) != 0) {
    dduct__conn_close(c);
    return 1;
  }
  snprintf(host, sizeof(host), "%s", req->host); /* req is reset with the connection's request */
  /* Bytes behind the CONNECT head already belong to the client's TLS handshake. */
  pre = dduct__conn_input(c, &prelen);
  tls = dduct__tls_server_new(p->tls_server, dduct__conn_stream(c), host, pre, prelen);
  if (tls == NULL) {
    LOG_ERROR("tls_mitm", "%s: cannot intercept %s:%u (no certificate or out of memory)",
              dduct__conn_peer(c), host, port);
    dduct__conn_close(c);
    return 1;
  }
  p->stats.intercepts++;
  dduct__conn_txn(c)->route = DDUCT_ROUTE_INTERCEPT;
  LOG_DEBUG("tls_mitm", "%s CONNECT %s:%u intercepted", dduct__conn_peer(c), host, port);
  dduct__conn_push_layer(c, tls, host, port);
  return 1;
}
