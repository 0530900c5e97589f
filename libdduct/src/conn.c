/* Temporary: connections are accepted and closed until the engine lands in the next commit. */
#include <stdlib.h>

#include "conn.h"
#include "internal.h"
#include "proxy.h"

struct dduct_conn {
  struct dduct_proxy *p;
  struct dduct_conn *next, *prev;
  uv_tcp_t tcp;
};

static void close_cb(uv_handle_t *h) {
  struct dduct_conn *c = DDUCT_CONTAINER_OF((uv_tcp_t *)h, struct dduct_conn, tcp);
  struct dduct_proxy *p = c->p;
  if (c->prev) c->prev->next = c->next; else p->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
  dduct__proxy_conn_gone(p, NULL);
}

void dduct__conn_accept(struct dduct_proxy *p, uv_stream_t *server, int tls) {
  struct dduct_conn *c = calloc(1, sizeof(*c));
  (void)tls;
  if (c == NULL) return;
  c->p = p;
  uv_tcp_init(p->loop, &c->tcp);
  c->next = p->conns;
  if (p->conns) p->conns->prev = c;
  p->conns = c;
  p->nconns++;
  p->stats.connections_accepted++;
  (void)uv_accept(server, (uv_stream_t *)&c->tcp);
  uv_close((uv_handle_t *)&c->tcp, close_cb);
}
void dduct__conn_drain(struct dduct_conn *c) { (void)c; }
void dduct__conn_kill(struct dduct_conn *c) { (void)c; }
struct dduct_conn *dduct__conn_next(struct dduct_conn *c) { return c->next; }
