/* The proxy context shared by the engine's modules (conn, upstream, cache hook). Internal. */
#ifndef DDUCT_PROXY_H
#define DDUCT_PROXY_H

#include <netinet/in.h>
#include <stdatomic.h>

#include "acl.h"
#include "chain.h"
#include "dduct.h"
#include "resolve.h"
#include "route.h"
#include "stats.h"

struct dduct_conn;

/* The proxy owns the list of live connections (it counts them, takes a waiting listener's next
 * connection when one ends, and drains or kills them at shutdown). A connection embeds one node
 * and hands it over when accepted and when gone. */
struct dduct_conn_node {
  struct dduct_conn *conn;
  struct dduct_conn_node *next, *prev;
};
struct dduct_upstream;
struct dduct_tls_server_conf;
struct dduct_tls_client_conf;
struct dduct__query_rules;

struct dduct__worker;

struct dduct_listener {
  struct dduct_proxy *p;
  struct dduct_listener *next;
  uv_tcp_t tcp;
  enum dduct_listen_kind kind;
  struct sockaddr_storage addr; /* as bound (port 0 resolved) */
  int waiting;                  /* a connection waits for a slot (max_connections) */
  int shadow;                   /* only an address (the parent's admin listener, for is_self) */
};

struct dduct_proxy {
  uv_loop_t *loop;
  struct dduct_proxy_options o; /* strings and arrays below are owned copies */
  char **strings;               /* every copied string, freed at the end */
  size_t nstrings;
  uint16_t *ports;
  struct dduct_ca *ca;
  struct dduct_store *store;
  struct dduct_filter *filter;
  struct dduct__query_rules *query_rules; /* query parameters left out of keys; NULL: none */
  struct dduct_acl allow;
  struct dduct_clients clients; /* connections per client address (the parent's serves all) */
  struct dduct_clients *clientsp; /* the table used: the parent's */
  uv_mutex_t *clients_mu;         /* its lock when several loops share it; NULL: one loop */
  uv_mutex_t clients_mu_own;
  struct dduct_pins pins;
  struct dduct_tls_server_conf *tls_server;
  struct dduct_tls_client_conf *tls_client;
  struct dduct_tls_client_conf *tls_parent; /* parents' listeners; NULL without parents */
  /* An https upstream proxy under upstream_insecure (which is for origins only): verified;
   * NULL otherwise (the proxy hop then shares tls_client, which verifies). */
  struct dduct_tls_client_conf *tls_uproxy;
  struct dduct_uproxy uproxy;               /* upstream_proxy (empty: none) */
  struct dduct_parents parents;             /* the parent tier (n == 0: none) */
  struct dduct_upstream *up;
  struct dduct_cache *cache;   /* the cache route's object (cache.h) */
  struct dduct__route routes[DDUCT_ROUTES_MAX]; /* the route table, in order (route.h) */
  size_t nroutes;
  struct dduct_listener *listeners;
  size_t nlisteners_open;       /* listener handles not yet closed */
  struct dduct_conn_node *conns; /* every live connection (doubly linked) */
  size_t nconns;
  /* Live connections of every loop (dduct_proxy_connections): the parent's counter, which each
   * worker's points to; updated with nconns. */
  atomic_uint_fast64_t *conns_all;
  atomic_uint_fast64_t conns_all_own;
  struct sockaddr_storage *local; /* this host's interface addresses (loop detection) */
  size_t nlocal;
  struct dduct_proxy_stats stats;
  struct dduct__stats metrics;  /* what /metrics and /stats report (stats.h) */
  uint64_t last_emfile_log;
  uint64_t last_denied_log;
  unsigned denied_lingering; /* denied tcp_bind clients answered at accept, not yet closed */
  uint64_t last_percap_log; /* a client over max_connections_per_client, logged once a second */ /* a denied tls_bind client closed at accept, logged once a second */
  /* Event loops (workers > 1, docs/architecture.md#event-loops). */
  struct dduct_proxy *parent;      /* a worker's parent; NULL on the parent */
  struct dduct__worker *workers;   /* the parent's other loops */
  unsigned nworkers;               /* workers - 1 */
  unsigned nworkers_running;       /* not joined yet */
  uv_async_t workers_done;         /* a worker's thread ended */
  int workers_done_open;           /* 0 none, 1 open, 2 closing */
  /* Shutdown. */
  int closing;
  uv_timer_t grace;
  uv_timer_t retry; /* a waiting listener looks for slots other loops freed (proxy.c) */
  int retry_open;   /* 0 none, 1 open, 2 closing */
  int grace_open;
  dduct_proxy_close_cb close_cb;
  void *close_arg;
};

/* 1 if connecting to sa would reach one of our own listeners (a 0.0.0.0 listener counts for
 * every local address). */
int dduct__proxy_is_self(const struct dduct_proxy *p, const struct sockaddr *sa);
/* 1 if a CONNECT may reach port. */
/* The head timeout for a connection accepted now: head_timeout_ms, or a sixth of it (1 s at
 * least) while 3/4 of max_connections are in use, so idle sockets cannot hold the last slots for
 * long. */
unsigned dduct__proxy_head_timeout(const struct dduct_proxy *p);
int dduct__proxy_port_allowed(const struct dduct_proxy *p, uint16_t port);
/* Called by conn when a connection is accepted, and when it is gone (its handles closed): the
 * second frees its slot. */
void dduct__proxy_conn_add(struct dduct_proxy *p, struct dduct_conn_node *n, struct dduct_conn *c);
void dduct__proxy_conn_gone(struct dduct_proxy *p, struct dduct_conn_node *n);
/* A connection from sa takes / gives back its place in the per-client table (shared by every
 * loop). dduct__proxy_client_take returns 0 or DDUCT_EAGAIN (sa has max_connections_per_client). */
int dduct__proxy_client_take(struct dduct_proxy *p, const struct sockaddr *sa);
void dduct__proxy_client_release(struct dduct_proxy *p, const struct sockaddr *sa);

/* Every loop's figures summed (the parent asks each worker for a copy on its own thread and
 * waits; see proxy.c). Called on the parent's loop thread. */
struct dduct__figures {
  struct dduct__stats m;
  struct dduct_proxy_stats s; /* connections_active: live connections */
  uint64_t hs_client[2], hs_server[2]; /* TLS handshakes: failed, ok */
  size_t nparents;
  uint64_t (*parent)[3]; /* per parent: asked, failed, resumed */
};
/* Per loop, for /stats. */
struct dduct__loop_brief {
  uint64_t connections_active, connections_accepted, requests;
};
/* f->parent is malloc'd (free it with dduct__proxy_figures_free). loops (may be NULL) gets one
 * entry per loop, up to nloops; returns the number of loops. 0 or DDUCT_ENOMEM in *rc. */
size_t dduct__proxy_figures(const struct dduct_proxy *p, struct dduct__figures *f,
                            struct dduct__loop_brief *loops, size_t nloops, int *rc);
void dduct__proxy_figures_free(struct dduct__figures *f);
/* cb for every fill in flight on every loop. */
void dduct__proxy_each_fill(const struct dduct_proxy *p,
                            void (*cb)(void *arg, const struct dduct__fill_info *fi), void *arg);

/* Called when shutdown may be complete (no conns, no upstream connections). */
void dduct__proxy_maybe_closed(struct dduct_proxy *p);

#endif
