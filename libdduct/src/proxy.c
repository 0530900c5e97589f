/* The proxy context: options, listeners, connection slots, shutdown. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cache.h"
#include "conn.h"
#include "internal.h"
#include "proxy.h"
#include "store.h"
#include "tls.h"
#include "upstream.h"

static const char *const default_allow[] = {
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
};
static const uint16_t default_ports[] = {443};

#define D_HEAD_MS 30000u
#define D_IDLE_MS 60000u
#define D_TUNNEL_MS 600000u
#define D_CONNECT_MS 10000u
#define D_UPSTREAM_MS 60000u
#define D_GRACE_MS 10000u
#define D_PER_CLIENT 256u
#define D_PARENT_DOWN_MS 30000u

void dduct_proxy_options_init(struct dduct_proxy_options *o) {
  memset(o, 0, sizeof(*o));
  o->system_ca_file = "/etc/ssl/certs/ca-certificates.crt";
  o->allow_clients = default_allow;
  o->allow_clients_count = DDUCT_ARRAY_SIZE(default_allow);
  o->connect_ports = default_ports;
  o->connect_ports_count = DDUCT_ARRAY_SIZE(default_ports);
  o->max_connections = 1024;
  o->max_connections_per_client = D_PER_CLIENT;
  o->head_timeout_ms = D_HEAD_MS;
  o->idle_timeout_ms = D_IDLE_MS;
  o->tunnel_idle_timeout_ms = D_TUNNEL_MS;
  o->connect_timeout_ms = D_CONNECT_MS;
  o->upstream_timeout_ms = D_UPSTREAM_MS;
  o->shutdown_grace_ms = D_GRACE_MS;
  o->revalidate = DDUCT_REVALIDATE_NEVER;
  o->parent_down_ms = D_PARENT_DOWN_MS;
  o->stale_if_error = 1;
}

/* ---- option copies ----------------------------------------------------------------------- */

static const char *keep(struct dduct_proxy *p, const char *s) {
  char **v;
  if (s == NULL) return NULL;
  v = realloc(p->strings, (p->nstrings + 1) * sizeof(*v));
  if (v == NULL) return NULL;
  p->strings = v;
  v[p->nstrings] = dduct__strdup(s);
  if (v[p->nstrings] == NULL) return NULL;
  return v[p->nstrings++];
}

/* Each connection may hold three descriptors at once (client, origin, cache file); a share of
 * the limit is kept for what does not scale with connections (listeners, the store's idle
 * entries, pooled origin connections, the loop's own). Past that, accept() or an entry's open()
 * fails with EMFILE, and a cache hit became a 502 when its file could not be opened. */
#define FDS_PER_CONN 3
#define FDS_RESERVED 192

static void fit_descriptors(struct dduct_proxy *p) {
  struct rlimit rl;
  rlim_t reserve, fit;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
  reserve = DDUCT_MIN((rlim_t)FDS_RESERVED, rl.rlim_cur / 4);
  fit = rl.rlim_cur > reserve ? (rl.rlim_cur - reserve) / FDS_PER_CONN : 0;
  if (fit < 1) fit = 1;
  if ((rlim_t)p->o.max_connections <= fit) return;
  LOG_WARN("http_proxy",
           "max_connections %u lowered to %llu: the open files limit (RLIMIT_NOFILE) is %llu "
           "and a connection may need %d descriptors",
           p->o.max_connections, (unsigned long long)fit, (unsigned long long)rl.rlim_cur,
           FDS_PER_CONN);
  p->o.max_connections = (unsigned)fit;
}

static int copy_options(struct dduct_proxy *p, const struct dduct_proxy_options *o) {
  p->o = *o;
  if (o->system_ca_file != NULL && (p->o.system_ca_file = keep(p, o->system_ca_file)) == NULL)
    return DDUCT_ENOMEM;
  if (o->upstream_ca_file != NULL &&
      (p->o.upstream_ca_file = keep(p, o->upstream_ca_file)) == NULL)
    return DDUCT_ENOMEM;
  if (o->parent_ca_file != NULL && (p->o.parent_ca_file = keep(p, o->parent_ca_file)) == NULL)
    return DDUCT_ENOMEM;
  /* resolve, allow_clients and the chaining settings are parsed into their own structures; the
   * raw lists (and upstream_proxy's credentials) are not kept. */
  p->o.resolve = NULL;
  p->o.allow_clients = NULL;
  p->o.query_ignore = NULL;
  p->o.upstream_proxy = NULL;
  p->o.no_upstream_proxy = NULL;
  p->o.parents = NULL;
  p->ports = calloc(o->connect_ports_count + 1, sizeof(*p->ports));
  if (p->ports == NULL) return DDUCT_ENOMEM;
  if (o->connect_ports_count > 0)
    memcpy(p->ports, o->connect_ports, o->connect_ports_count * sizeof(*p->ports));
  p->o.connect_ports = p->ports;
#define DEF(field, d) \
  if (p->o.field == 0) p->o.field = (d)
  DEF(head_timeout_ms, D_HEAD_MS);
  DEF(idle_timeout_ms, D_IDLE_MS);
  DEF(tunnel_idle_timeout_ms, D_TUNNEL_MS);
  DEF(connect_timeout_ms, D_CONNECT_MS);
  DEF(upstream_timeout_ms, D_UPSTREAM_MS);
  DEF(shutdown_grace_ms, D_GRACE_MS);
  DEF(max_connections, 1024);
  DEF(max_connections_per_client, D_PER_CLIENT);
  DEF(parent_down_ms, D_PARENT_DOWN_MS);
#undef DEF
  fit_descriptors(p);
  return 0;
}

static int self_cb(void *arg, const struct sockaddr *sa) {
  return dduct__proxy_is_self(arg, sa);
}

static void free_parts(struct dduct_proxy *p) {
  for (size_t i = 0; i < p->nstrings; i++) free(p->strings[i]);
  free(p->strings);
  free(p->ports);
  free(p->local);
  dduct__acl_free(&p->allow);
  dduct__clients_free(&p->clients);
  if (p->clients_mu == &p->clients_mu_own) uv_mutex_destroy(&p->clients_mu_own);
  dduct__pins_free(&p->pins);
  dduct__query_rules_free(p->query_rules);
  dduct__tls_server_conf_free(p->tls_server);
  dduct__tls_client_conf_free(p->tls_client);
  dduct__tls_client_conf_free(p->tls_parent);
  dduct__tls_client_conf_free(p->tls_uproxy);
  dduct__uproxy_free(&p->uproxy);
  if (p->parent != NULL) memset(&p->parents, 0, sizeof(p->parents)); /* the parent's */
  dduct__parents_free(&p->parents);
  dduct__cache_free(p->cache);
  dduct__upstream_free(p->up);
  while (p->listeners != NULL) {
    struct dduct_listener *l = p->listeners;
    p->listeners = l->next;
    free(l);
  }
}

/* The route table (route.h), asked in this order. Local routes (answered by the proxy itself)
 * come first; each entry's ctx is what its handler works with (the proxy, or the cache object). */
static void routes_init(struct dduct_proxy *p) {
  const struct dduct__route table[] = {
      {"local", dduct__admin_route, p},
      {"intercept", dduct__intercept_route, p},
      {"tunnel", dduct__tunnel_route, p},
      {"cache", dduct__cache_route, p->cache},
      {"forward", dduct__forward_route, p},
  };
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(table); i++) p->routes[p->nroutes++] = table[i];
}

static int build(struct dduct_proxy *p, const struct dduct_proxy_options *o, char *err,
                 size_t errlen) {
  struct dduct_upstream_config uc;
  struct dduct_cache_config kc;
  int rc = copy_options(p, o);
  if (rc != 0) return rc;
  rc = dduct__acl_init(&p->allow, o->allow_clients, o->allow_clients != NULL ? o->allow_clients_count : 0,
                       err, errlen);
  if (rc != 0) return rc;
  rc = dduct__pins_init(&p->pins, o->resolve, o->resolve != NULL ? o->resolve_count : 0, err,
                        errlen);
  if (rc != 0) return rc;
  rc = dduct__query_rules_new(o->query_ignore, o->query_ignore != NULL ? o->query_ignore_count : 0,
                              &p->query_rules, err, errlen);
  if (rc != 0) return rc;
  rc = dduct__tls_server_conf_new(p->ca, &p->tls_server, err, errlen);
  if (rc != 0) return rc;
  if (p->parent != NULL) dduct__tls_server_conf_share_tickets(p->tls_server, p->parent->tls_server);
  rc = dduct__tls_client_conf_new(p->o.system_ca_file, p->o.upstream_ca_file,
                                  p->o.upstream_insecure, p->parent != NULL, &p->tls_client, err,
                                  errlen);
  if (rc != 0) return rc;
  rc = dduct__uproxy_init(&p->uproxy, o->upstream_proxy, o->no_upstream_proxy,
                          o->no_upstream_proxy != NULL ? o->no_upstream_proxy_count : 0, err, errlen);
  if (rc != 0) return rc;
  if (p->parent != NULL) {
    /* One view of the parents for every loop: a parent one loop found down is skipped by all. */
    p->parents = p->parent->parents;
  } else {
    rc = dduct__parents_init(&p->parents, o->parents, o->parents != NULL ? o->parents_count : 0,
                             p->o.parent_down_ms, err, errlen);
    if (rc != 0) return rc;
  }
  if (p->uproxy.host[0] != '\0' && p->parent == NULL)
    LOG_INFO("http_proxy", "Upstream proxy %s%s for origins%s", p->uproxy.shown,
             p->uproxy.auth != NULL ? " (Basic credentials)" : "",
             p->uproxy.nglobs + p->uproxy.cidrs.n > 0 ? " outside no_upstream_proxy" : "");
  for (size_t i = 0; i < p->parents.n && p->parent == NULL; i++)
    LOG_INFO("http_proxy", "Parent %s%s", p->parents.v[i].shown,
             p->parents.v[i].https ? "" : " (plain http: asked for http:// files only)");
  if (p->parents.n > 0) {
    /* The parents' listeners are verified like origins are, against parent_ca_file. */
    rc = dduct__tls_client_conf_new(p->o.system_ca_file,
                                    p->o.parent_ca_file != NULL ? p->o.parent_ca_file
                                                                : p->o.upstream_ca_file,
                                    0, p->parent != NULL, &p->tls_parent, err, errlen);
    if (rc != 0) return rc;
  }
  if (p->o.upstream_insecure && p->uproxy.https) {
    /* upstream_insecure is for origins with broken certificates: the proxy that gets our
     * Proxy-Authorization is still verified (review-sec2 #3). */
    rc = dduct__tls_client_conf_new(p->o.system_ca_file, p->o.upstream_ca_file, 0,
                                    p->parent != NULL, &p->tls_uproxy, err, errlen);
    if (rc != 0) return rc;
  }
  memset(&uc, 0, sizeof(uc));
  uc.loop = p->loop;
  uc.tls = p->tls_client;
  uc.pins = &p->pins;
  uc.connect_timeout_ms = p->o.connect_timeout_ms;
  uc.upstream_timeout_ms = p->o.upstream_timeout_ms;
  uc.is_self = self_cb;
  uc.is_self_arg = p;
  uc.stat_connects = &p->stats.upstream_connects;
  uc.stat_reuses = &p->stats.upstream_reuses;
  uc.proxy = &p->uproxy;
  uc.parent_tls = p->tls_parent;
  uc.proxy_tls = p->tls_uproxy;
  uc.stats = &p->metrics;
  rc = dduct__upstream_new(&uc, &p->up);
  if (rc != 0) return rc;
  memset(&kc, 0, sizeof(kc));
  kc.loop = p->loop;
  kc.store = p->store;
  kc.filter = p->filter;
  kc.up = p->up;
  kc.metrics = &p->metrics;
  kc.parents = &p->parents;
  kc.query_rules = p->query_rules;
  kc.revalidate = p->o.revalidate;
  kc.stale_if_error = p->o.stale_if_error;
  kc.share_private = p->o.share_private;
  kc.cacheable_cb = p->o.cacheable_cb;
  kc.cacheable_data = p->o.cacheable_data;
  rc = dduct__cache_new(&kc, &p->cache);
  if (rc != 0) return rc;
  routes_init(p);
  return 0;
}

/* ---- event loops ---------------------------------------------------------------------------
 *
 * With workers = N > 1 the parent (the caller's loop) starts N-1 threads, each running its own
 * loop and its own proxy (a worker) made from the same options. The parent talks to a worker
 * through its wake handle: a call (a function the worker runs on its own thread while the parent
 * waits: binding a listener, copying its figures) or the request to close. A worker whose proxy
 * has closed keeps a last copy of its figures (final) and takes no more calls. */

enum { W_STARTING, W_RUNNING, W_CLOSED, W_ENDED };

struct dduct__worker {
  struct dduct_proxy *parent, *p;
  const struct dduct_proxy_options *o; /* the caller's options, while starting */
  unsigned index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wake;
  uv_mutex_t mu;
  uv_cond_t cv;
  /* Under mu. */
  int state;
  int start_rc;
  char start_err[256];
  void (*call)(struct dduct__worker *w, void *arg);
  void *call_arg;
  int call_done;
  int close_asked, close_started;
  int notify; /* tell the parent when the thread ends */
  struct dduct__figures *final;
  /* Parent's thread only. */
  int thread_started, joined;
};

static void take_figures(const struct dduct_proxy *p, struct dduct__figures *f);

static void run_call(struct dduct__worker *w) {
  void (*call)(struct dduct__worker *, void *) = w->call;
  void *arg = w->call_arg;
  uv_mutex_unlock(&w->mu);
  call(w, arg);
  uv_mutex_lock(&w->mu);
  w->call = NULL;
  w->call_done = 1;
  uv_cond_broadcast(&w->cv);
}

static void worker_closed_cb(struct dduct_proxy *wp, void *arg) {
  struct dduct__worker *w = arg;
  struct dduct__figures *final = calloc(1, sizeof(*final));
  if (final != NULL) take_figures(wp, final);
  uv_mutex_lock(&w->mu);
  if (w->call != NULL) run_call(w); /* the parent waits on it: its wake will not come now */
  w->final = final;
  w->state = W_CLOSED;
  uv_mutex_unlock(&w->mu);
  uv_close((uv_handle_t *)&w->wake, NULL);
}

static void wake_cb(uv_async_t *h) {
  struct dduct__worker *w = h->data;
  int close;
  uv_mutex_lock(&w->mu);
  if (w->call != NULL) run_call(w);
  close = w->close_asked && !w->close_started;
  w->close_started |= close;
  uv_mutex_unlock(&w->mu);
  if (close) dduct_proxy_close(w->p, worker_closed_cb, w);
}

/* Run fn(w, arg) on w's thread and wait for it. 0 when it ran; 1 when w's proxy is closed
 * (w->final holds its last figures, and nothing there changes any more). */
static int on_worker(struct dduct__worker *w, void (*fn)(struct dduct__worker *, void *),
                     void *arg) {
  uv_mutex_lock(&w->mu);
  if (w->state != W_RUNNING) {
    uv_mutex_unlock(&w->mu);
    return 1;
  }
  w->call = fn;
  w->call_arg = arg;
  w->call_done = 0;
  uv_async_send(&w->wake);
  while (!w->call_done) uv_cond_wait(&w->cv, &w->mu);
  uv_mutex_unlock(&w->mu);
  return 0;
}

static int proxy_create(uv_loop_t *loop, const struct dduct_proxy_options *o, struct dduct_ca *ca,
                        struct dduct_store *store, struct dduct_filter *filter,
                        struct dduct_proxy *parent, struct dduct_proxy **out, char *err,
                        size_t errlen);

static void worker_main(void *arg) {
  struct dduct__worker *w = arg;
  struct dduct_proxy *parent = w->parent;
  struct dduct_proxy_options o = *w->o;
  int rc, attached = 0;
  o.workers = 1;
  o.max_connections = parent->o.max_connections; /* the whole process's, counted in conns_all */
  rc = uv_async_init(&w->loop, &w->wake, wake_cb);
  w->wake.data = w;
  if (rc == 0 && parent->store != NULL) {
    rc = dduct_store_attach(parent->store, &w->loop);
    if (rc != 0) dduct__errf(rc, w->start_err, sizeof(w->start_err), "event loop %u: store: %s",
                             w->index, dduct_strerror(rc));
    attached = rc == 0;
  }
  if (rc == 0)
    rc = proxy_create(&w->loop, &o, parent->ca, parent->store, parent->filter, parent, &w->p,
                      w->start_err, sizeof(w->start_err));
  uv_mutex_lock(&w->mu);
  w->start_rc = rc;
  w->state = rc == 0 ? W_RUNNING : W_CLOSED;
  uv_cond_broadcast(&w->cv);
  uv_mutex_unlock(&w->mu);
  if (rc != 0 && uv_is_active((uv_handle_t *)&w->wake)) uv_close((uv_handle_t *)&w->wake, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT); /* until the proxy closed and wake with it */
  dduct_proxy_free(w->p);
  w->p = NULL;
  uv_run(&w->loop, UV_RUN_DEFAULT); /* what the free closed */
  if (attached) {
    dduct_store_detach(parent->store, &w->loop);
    uv_run(&w->loop, UV_RUN_DEFAULT);
  }
  /* Everything the worker opened is closed by now; a handle left open would leak the loop's
   * descriptors for good (an embedder may create and close proxies many times): say so. */
  if (uv_loop_close(&w->loop) == UV_EBUSY)
    LOG_ERROR("http_proxy", "event loop %u still has open handles after its proxy closed: "
              "its descriptors leak", w->index);
  uv_mutex_lock(&w->mu);
  w->state = W_ENDED;
  if (w->notify) uv_async_send(&parent->workers_done);
  uv_mutex_unlock(&w->mu);
}

/* The parent's thread: join the workers whose threads ended. */
static void workers_done_cb(uv_async_t *h) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF(h, struct dduct_proxy, workers_done);
  for (unsigned i = 0; i < p->nworkers; i++) {
    struct dduct__worker *w = &p->workers[i];
    int ended;
    if (!w->thread_started || w->joined) continue;
    uv_mutex_lock(&w->mu);
    ended = w->state == W_ENDED;
    uv_mutex_unlock(&w->mu);
    if (!ended) continue;
    uv_thread_join(&w->thread);
    w->joined = 1;
    p->nworkers_running--;
  }
  dduct__proxy_maybe_closed(p);
}

static void ask_close(struct dduct__worker *w) {
  uv_mutex_lock(&w->mu);
  w->close_asked = 1;
  if (w->state == W_RUNNING) uv_async_send(&w->wake);
  uv_mutex_unlock(&w->mu);
}

/* Stop and join the workers started so far without the parent's loop (start-up failed). */
static void workers_stop_now(struct dduct_proxy *p) {
  for (unsigned i = 0; i < p->nworkers; i++) {
    struct dduct__worker *w = &p->workers[i];
    if (!w->thread_started || w->joined) continue;
    ask_close(w);
    uv_thread_join(&w->thread);
    w->joined = 1;
  }
}

static void workers_free(struct dduct_proxy *p) {
  if (p->workers == NULL) return;
  workers_stop_now(p); /* nothing to do after a close */
  for (unsigned i = 0; i < p->nworkers; i++) {
    struct dduct__worker *w = &p->workers[i];
    if (w->final != NULL) free(w->final->parent);
    free(w->final);
    uv_mutex_destroy(&w->mu);
    uv_cond_destroy(&w->cv);
  }
  free(p->workers);
  p->workers = NULL;
}

/* Start workers - 1 threads, each with its proxy built (the caller's options o are read while
 * starting). */
static int workers_start(struct dduct_proxy *p, const struct dduct_proxy_options *o, char *err,
                         size_t errlen) {
  unsigned n = o->workers - 1;
  int rc = 0;
  p->workers = calloc(n, sizeof(*p->workers));
  if (p->workers == NULL) return DDUCT_ENOMEM;
  p->nworkers = n;
  for (unsigned i = 0; i < n; i++) {
    struct dduct__worker *w = &p->workers[i];
    w->parent = p;
    w->o = o;
    w->index = i + 1;
    if (uv_mutex_init(&w->mu) != 0 || uv_cond_init(&w->cv) != 0) abort();
  }
  for (unsigned i = 0; i < n && rc == 0; i++) {
    struct dduct__worker *w = &p->workers[i];
    if ((rc = uv_loop_init(&w->loop)) != 0) {
      dduct__errf(rc, err, errlen, "event loop %u: %s", w->index, uv_strerror(rc));
      break;
    }
    if ((rc = uv_thread_create(&w->thread, worker_main, w)) != 0) {
      (void)uv_loop_close(&w->loop);
      dduct__errf(rc, err, errlen, "event loop %u: thread: %s", w->index, uv_strerror(rc));
      break;
    }
    w->thread_started = 1;
    uv_mutex_lock(&w->mu);
    while (w->state == W_STARTING) uv_cond_wait(&w->cv, &w->mu);
    rc = w->start_rc;
    if (rc != 0) dduct__errf(rc, err, errlen, "%s", w->start_err);
    uv_mutex_unlock(&w->mu);
  }
  if (rc == 0) rc = uv_async_init(p->loop, &p->workers_done, workers_done_cb);
  if (rc != 0) {
    workers_stop_now(p);
    return rc;
  }
  p->workers_done_open = 1;
  uv_unref((uv_handle_t *)&p->workers_done);
  p->nworkers_running = n;
  for (unsigned i = 0; i < n; i++) {
    struct dduct__worker *w = &p->workers[i];
    uv_mutex_lock(&w->mu);
    w->notify = 1;
    w->o = NULL;
    uv_mutex_unlock(&w->mu);
  }
  return 0;
}

static int proxy_create(uv_loop_t *loop, const struct dduct_proxy_options *o, struct dduct_ca *ca,
                        struct dduct_store *store, struct dduct_filter *filter,
                        struct dduct_proxy *parent, struct dduct_proxy **out, char *err,
                        size_t errlen) {
  struct dduct_proxy *p;
  int rc;
  p = calloc(1, sizeof(*p));
  if (p == NULL) return DDUCT_ENOMEM;
  p->loop = loop;
  p->ca = ca;
  p->store = store;
  p->filter = filter;
  p->parent = parent;
  atomic_init(&p->conns_all_own, 0);
  p->conns_all = parent != NULL ? parent->conns_all : &p->conns_all_own;
  if (parent != NULL) {
    p->clientsp = parent->clientsp;
    p->clients_mu = parent->clients_mu;
  } else {
    p->clientsp = &p->clients;
    if (o->workers > 1) {
      if (uv_mutex_init(&p->clients_mu_own) != 0) {
        free(p);
        return DDUCT_ENOMEM;
      }
      p->clients_mu = &p->clients_mu_own;
    }
  }
  dduct__stats_init(&p->metrics);
  rc = build(p, o, err, errlen);
  if (rc == 0 && parent == NULL && o->workers > 1) rc = workers_start(p, o, err, errlen);
  if (rc != 0) {
    if (err != NULL && errlen > 0 && err[0] == '\0') dduct__errf(rc, err, errlen, "%s", dduct_strerror(rc));
    workers_free(p);
    free_parts(p);
    free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int dduct_proxy_new(uv_loop_t *loop, const struct dduct_proxy_options *o, struct dduct_ca *ca,
                    struct dduct_store *store, struct dduct_filter *filter,
                    struct dduct_proxy **out, char *err, size_t errlen) {
  struct dduct_proxy_options defaults;

  *out = NULL;
  if (loop == NULL || ca == NULL) return dduct__errf(DDUCT_EINVAL, err, errlen, "loop and CA are required");
  if (o == NULL) {
    dduct_proxy_options_init(&defaults);
    o = &defaults;
  }
  if (o->workers > 256)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "workers %u: at most 256", o->workers);
  return proxy_create(loop, o, ca, store, filter, NULL, out, err, errlen);
}

int dduct__proxy_client_take(struct dduct_proxy *p, const struct sockaddr *sa) {
  int rc;
  if (p->clients_mu != NULL) uv_mutex_lock(p->clients_mu);
  rc = dduct__clients_take(p->clientsp, sa, p->o.max_connections_per_client);
  if (p->clients_mu != NULL) uv_mutex_unlock(p->clients_mu);
  return rc;
}

void dduct__proxy_client_release(struct dduct_proxy *p, const struct sockaddr *sa) {
  if (p->clients_mu != NULL) uv_mutex_lock(p->clients_mu);
  dduct__clients_release(p->clientsp, sa);
  if (p->clients_mu != NULL) uv_mutex_unlock(p->clients_mu);
}

/* ---- figures ------------------------------------------------------------------------------ */

/* p's own figures (on p's thread). */
static void take_figures(const struct dduct_proxy *p, struct dduct__figures *f) {
  f->m = p->metrics;
  f->s = p->stats;
  f->s.connections_active = p->nconns;
  dduct__tls_client_handshakes(p->tls_client, f->hs_client);
  dduct__tls_server_handshakes(p->tls_server, f->hs_server);
  f->nparents = 0;
  /* The parents' table is the parent proxy's, shared by every loop: counted once, there. */
  f->parent = p->parents.n > 0 && p->parent == NULL ? calloc(p->parents.n, sizeof(*f->parent))
                                                    : NULL;
  if (f->parent == NULL) return;
  f->nparents = p->parents.n;
  for (size_t i = 0; i < p->parents.n; i++) {
    f->parent[i][0] = __atomic_load_n(&p->parents.v[i].asked, __ATOMIC_RELAXED);
    f->parent[i][1] = __atomic_load_n(&p->parents.v[i].failed, __ATOMIC_RELAXED);
    f->parent[i][2] = __atomic_load_n(&p->parents.v[i].resumed, __ATOMIC_RELAXED);
  }
}

static void proxy_stats_add(struct dduct_proxy_stats *to, const struct dduct_proxy_stats *from) {
  to->connections_accepted += from->connections_accepted;
  to->connections_active += from->connections_active;
  to->requests += from->requests;
  to->tunnels += from->tunnels;
  to->intercepts += from->intercepts;
  to->errors += from->errors;
  to->upstream_connects += from->upstream_connects;
  to->upstream_reuses += from->upstream_reuses;
}

static void add_figures(struct dduct__figures *to, const struct dduct__figures *from) {
  dduct__stats_add(&to->m, &from->m);
  proxy_stats_add(&to->s, &from->s);
  for (int i = 0; i < 2; i++) {
    to->hs_client[i] += from->hs_client[i];
    to->hs_server[i] += from->hs_server[i];
  }
  for (size_t i = 0; i < to->nparents && i < from->nparents; i++)
    for (int k = 0; k < 3; k++) to->parent[i][k] += from->parent[i][k];
}

static void brief(struct dduct__loop_brief *b, const struct dduct__figures *f) {
  b->connections_active = f->s.connections_active;
  b->connections_accepted = f->s.connections_accepted;
  b->requests = f->s.requests;
}

static void figures_call(struct dduct__worker *w, void *arg) {
  take_figures(w->p, arg);
}

size_t dduct__proxy_figures(const struct dduct_proxy *p, struct dduct__figures *f,
                            struct dduct__loop_brief *loops, size_t nloops, int *rc) {
  struct dduct__figures *one = NULL;
  *rc = 0;
  take_figures(p, f);
  if (p->parents.n > 0 && p->parent == NULL && f->parent == NULL) *rc = DDUCT_ENOMEM;
  if (loops != NULL && nloops > 0) brief(&loops[0], f);
  if (p->nworkers > 0 && (one = malloc(sizeof(*one))) == NULL) *rc = DDUCT_ENOMEM;
  for (unsigned i = 0; i < p->nworkers && one != NULL; i++) {
    struct dduct__worker *w = &p->workers[i];
    const struct dduct__figures *x = one;
    if (on_worker(w, figures_call, one) != 0) {
      if (w->final == NULL) continue; /* never started, or no memory at its end */
      x = w->final;
    }
    add_figures(f, x);
    if (loops != NULL && i + 1 < nloops) brief(&loops[i + 1], x);
    if (x == one) free(one->parent);
  }
  free(one);
  return 1 + p->nworkers;
}

void dduct__proxy_figures_free(struct dduct__figures *f) {
  free(f->parent);
  f->parent = NULL;
}

struct fill_walk {
  void (*cb)(void *arg, const struct dduct__fill_info *fi);
  void *arg;
};

static void fills_call(struct dduct__worker *w, void *arg) {
  struct fill_walk *fw = arg;
  if (w->p->cache != NULL) dduct__cache_each_fill(w->p->cache, fw->cb, fw->arg);
}

void dduct__proxy_each_fill(const struct dduct_proxy *p,
                            void (*cb)(void *arg, const struct dduct__fill_info *fi), void *arg) {
  struct fill_walk fw = {cb, arg};
  if (p->cache != NULL) dduct__cache_each_fill(p->cache, cb, arg);
  for (unsigned i = 0; i < p->nworkers; i++) (void)on_worker(&p->workers[i], fills_call, &fw);
}

/* ---- listening ----------------------------------------------------------------------------- */

static void load_local_addresses(struct dduct_proxy *p) {
  uv_interface_address_t *ifs;
  int n;
  if (p->local != NULL || uv_interface_addresses(&ifs, &n) != 0) return;
  p->local = calloc((size_t)n + 1, sizeof(*p->local));
  if (p->local != NULL) {
    for (int i = 0; i < n; i++) memcpy(&p->local[i], &ifs[i].address, sizeof(ifs[i].address));
    p->nlocal = (size_t)n;
  }
  uv_free_interface_addresses(ifs, n);
}

int dduct__proxy_is_self(const struct dduct_proxy *p, const struct sockaddr *sa) {
  uint16_t port = dduct__addr_port(sa);
  struct sockaddr_storage lo;
  if (dduct__addr_is_any(sa)) {
    /* connect() to 0.0.0.0 or :: reaches this host's loopback address: a listener on
     * 127.0.0.1 would otherwise be reachable through "0.0.0.0" undetected. */
    int v4 = sa->sa_family == AF_INET ||
             IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    if (v4) (void)uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)&lo);
    else (void)uv_ip6_addr("::1", port, (struct sockaddr_in6 *)&lo);
    sa = (const struct sockaddr *)&lo;
  }
  for (const struct dduct_listener *l = p->listeners; l != NULL; l = l->next) {
    const struct sockaddr *la = (const struct sockaddr *)&l->addr;
    if (dduct__addr_port(la) != port) continue;
    if (dduct__addr_same_ip(la, sa)) return 1;
    if (!dduct__addr_is_any(la)) continue;
    if (dduct__addr_is_loopback(sa) || dduct__addr_is_any(sa)) return 1;
    for (size_t i = 0; i < p->nlocal; i++)
      if (dduct__addr_same_ip((const struct sockaddr *)&p->local[i], sa)) return 1;
  }
  return 0;
}

/* Every loop's live connections against max_connections (the whole process's limit). Two loops
 * may both see the last slot free and take it: at most workers - 1 over, for a moment. */
static int full(const struct dduct_proxy *p) {
  return atomic_load_explicit(p->conns_all, memory_order_relaxed) >= p->o.max_connections;
}

unsigned dduct__proxy_head_timeout(const struct dduct_proxy *p) {
  unsigned ms = p->o.head_timeout_ms;
  uint64_t all = atomic_load_explicit(p->conns_all, memory_order_relaxed);
  if (all * 4 < (uint64_t)p->o.max_connections * 3) return ms;
  return DDUCT_MAX(ms / 6, DDUCT_MIN(ms, 1000u));
}

int dduct__proxy_port_allowed(const struct dduct_proxy *p, uint16_t port) {
  if (p->o.connect_any_port) return 1;
  for (size_t i = 0; i < p->o.connect_ports_count; i++)
    if (p->o.connect_ports[i] == port) return 1;
  return 0;
}

/* Take a connection on every listener of p that waits for a slot, while there are slots. */
static void take_waiting(struct dduct_proxy *p) {
  for (struct dduct_listener *l = p->listeners; l != NULL; l = l->next) {
    if (l->waiting == 1 && !full(p)) {
      l->waiting = 0;
      dduct__conn_accept(p, (uv_stream_t *)&l->tcp, l->kind);
    }
  }
}

static int any_waiting(const struct dduct_proxy *p) {
  for (const struct dduct_listener *l = p->listeners; l != NULL; l = l->next)
    if (l->waiting == 1) return 1;
  return 0;
}

/* A slot another loop frees does not wake this one: a loop with a waiting listener looks again
 * every ACCEPT_RETRY_MS (its own connections' ends wake it at once, in conn_gone). */
#define ACCEPT_RETRY_MS 50

static void retry_cb(uv_timer_t *t) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF(t, struct dduct_proxy, retry);
  if (!p->closing) take_waiting(p);
  if (p->closing || !any_waiting(p)) uv_timer_stop(t);
}

static void retry_start(struct dduct_proxy *p) {
  if (p->retry_open == 0) {
    if (uv_timer_init(p->loop, &p->retry) != 0) return;
    p->retry_open = 1;
  }
  if (p->retry_open == 1 && !uv_is_active((uv_handle_t *)&p->retry))
    uv_timer_start(&p->retry, retry_cb, ACCEPT_RETRY_MS, ACCEPT_RETRY_MS);
}

static void connection_cb(uv_stream_t *server, int status) {
  struct dduct_listener *l = DDUCT_CONTAINER_OF((uv_tcp_t *)server, struct dduct_listener, tcp);
  struct dduct_proxy *p = l->p;
  if (status < 0) {
    /* libuv already dropped the connection it could not take (EMFILE trick); log once a
     * second at most so a descriptor shortage cannot flood the log. */
    uint64_t now = uv_now(p->loop);
    if (now - p->last_emfile_log >= 1000) {
      p->last_emfile_log = now;
      LOG_WARN("http_proxy", "accept failed: %s", uv_strerror(status));
    }
    return;
  }
  if (p->closing) return;
  if (full(p)) {
    /* Not accepting leaves the socket in libuv's hands: it stops watching this listener until
     * we accept, and the kernel backlog makes new clients wait. */
    l->waiting = 1;
    if (p->nworkers > 0 || p->parent != NULL) retry_start(p); /* slots freed on other loops */
    return;
  }
  dduct__conn_accept(p, server, l->kind);
}

static int parse_listen_addr(const char *addr, struct sockaddr_storage *ss) {
  char host[64];
  uint16_t port;
  if (dduct__http_parse_authority(addr, host, sizeof(host), &port, 0) != 0 || port == 0)
    return DDUCT_EINVAL;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) return 0;
  return DDUCT_EINVAL;
}

static void listener_close_cb(uv_handle_t *h) {
  struct dduct_listener *l = DDUCT_CONTAINER_OF((uv_tcp_t *)h, struct dduct_listener, tcp);
  struct dduct_proxy *p = l->p;
  p->nlisteners_open--;
  dduct__proxy_maybe_closed(p);
}

/* A socket bound to ss with SO_REUSEPORT (libuv has no flag for it): every loop binds the same
 * address and the kernel spreads new connections over them. A file descriptor, or a negative
 * errno as libuv reports it. first: ss is first bound without SO_REUSEPORT and let go, so an
 * address another process listens on fails with "address already in use" as with one loop,
 * rather than joining that process's group (same user); a port 0 is resolved there. */
static int reuseport_socket(const struct sockaddr_storage *ss, int first) {
  struct sockaddr_storage at = *ss;
  int one = 1, err = 0, fd;
  socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (first) {
    socklen_t alen = sizeof(at);
    if ((fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)ss, len) != 0 ||
        getsockname(fd, (struct sockaddr *)&at, &alen) != 0)
      err = -errno;
    close(fd);
    if (err != 0) return err;
  }
  if ((fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) return -errno;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0 &&
      bind(fd, (const struct sockaddr *)&at, len) == 0)
    return fd;
  err = -errno;
  close(fd);
  return err;
}

/* A listener of p on ss (reuseport: bound with SO_REUSEPORT). No log line. */
static int listener_open(struct dduct_proxy *p, enum dduct_listen_kind kind,
                         const struct sockaddr_storage *ss, int reuseport, const char *addr,
                         char *err, size_t errlen) {
  struct dduct_listener *l;
  int rc, len = sizeof(l->addr);
  l = calloc(1, sizeof(*l));
  if (l == NULL) return DDUCT_ENOMEM;
  l->p = p;
  l->kind = kind;
  rc = uv_tcp_init(p->loop, &l->tcp);
  if (rc != 0) {
    free(l);
    return dduct__errf(rc, err, errlen, "listen %s: %s", addr, uv_strerror(rc));
  }
  p->nlisteners_open++;
  l->next = p->listeners;
  p->listeners = l; /* closed and freed with the proxy even when bind fails */
  if (reuseport) {
    int fd = reuseport_socket(ss, p->parent == NULL);
    rc = fd < 0 ? fd : uv_tcp_open(&l->tcp, fd);
    if (fd >= 0 && rc != 0) close(fd);
  } else {
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)ss, 0);
  }
  if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 511, connection_cb);
  if (rc == 0) rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&l->addr, &len);
  if (rc != 0) {
    memset(&l->addr, 0, sizeof(l->addr));
    uv_close((uv_handle_t *)&l->tcp, listener_close_cb);
    l->waiting = -1; /* closed */
    return dduct__errf(rc, err, errlen, "listen %s: %s", addr, uv_strerror(rc));
  }
  load_local_addresses(p);
  return 0;
}

/* The parent's admin listener, known to a worker by its address only (is_self). */
static int listener_shadow(struct dduct_proxy *p, enum dduct_listen_kind kind,
                           const struct sockaddr_storage *ss) {
  struct dduct_listener *l = calloc(1, sizeof(*l));
  if (l == NULL) return DDUCT_ENOMEM;
  l->p = p;
  l->kind = kind;
  l->shadow = 1;
  l->waiting = -1;
  memcpy(&l->addr, ss, sizeof(*ss));
  l->next = p->listeners;
  p->listeners = l;
  load_local_addresses(p);
  return 0;
}

struct listen_call {
  enum dduct_listen_kind kind;
  const struct sockaddr_storage *ss; /* as the parent bound it */
  const char *addr;
  char *err;
  size_t errlen;
  int rc;
};

static void listen_call(struct dduct__worker *w, void *arg) {
  struct listen_call *lc = arg;
  if (w->p->closing) lc->rc = DDUCT_ECLOSED;
  else if (lc->kind == DDUCT_LISTEN_ADMIN) lc->rc = listener_shadow(w->p, lc->kind, lc->ss);
  else lc->rc = listener_open(w->p, lc->kind, lc->ss, 1, lc->addr, lc->err, lc->errlen);
}

int dduct_proxy_listen(struct dduct_proxy *p, enum dduct_listen_kind kind, const char *addr,
                       char *err, size_t errlen) {
  struct sockaddr_storage ss;
  int rc, shared;

  if (p == NULL || addr == NULL) return DDUCT_EINVAL;
  if (p->closing) return DDUCT_ECLOSED;
  if (parse_listen_addr(addr, &ss) != 0)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "listen address \"%s\" is not ip:port", addr);
  shared = p->nworkers > 0 && kind != DDUCT_LISTEN_ADMIN;
  rc = listener_open(p, kind, &ss, shared, addr, err, errlen);
  if (rc != 0) return rc;
  /* Every worker binds what the parent bound (port 0 resolved once). */
  for (unsigned i = 0; i < p->nworkers && rc == 0; i++) {
    struct listen_call lc = {kind, &p->listeners->addr, addr, err, errlen, 0};
    if (on_worker(&p->workers[i], listen_call, &lc) != 0) lc.rc = DDUCT_ECLOSED;
    rc = lc.rc;
  }
  if (rc != 0) return rc;
  if (kind == DDUCT_LISTEN_ADMIN) LOG_INFO("admin", "Admin listening on %s", addr);
  else LOG_INFO(kind == DDUCT_LISTEN_TLS ? "tls_mitm" : "http_proxy", "Listening on %s", addr);
  return 0;
}

void dduct__proxy_conn_add(struct dduct_proxy *p, struct dduct_conn_node *n,
                           struct dduct_conn *c) {
  n->conn = c;
  n->prev = NULL;
  n->next = p->conns;
  if (p->conns != NULL) p->conns->prev = n;
  p->conns = n;
  p->nconns++;
  p->stats.connections_active = p->nconns;
  atomic_fetch_add_explicit(p->conns_all, 1, memory_order_relaxed);
}

void dduct__proxy_conn_gone(struct dduct_proxy *p, struct dduct_conn_node *n) {
  if (n->prev != NULL) n->prev->next = n->next;
  else p->conns = n->next;
  if (n->next != NULL) n->next->prev = n->prev;
  p->nconns--;
  p->stats.connections_active = p->nconns;
  atomic_fetch_sub_explicit(p->conns_all, 1, memory_order_relaxed);
  if (!p->closing) take_waiting(p); /* a slot is free: take a connection that waits */
  dduct__proxy_maybe_closed(p);
}

/* ---- shutdown ----------------------------------------------------------------------------- */

static void grace_close_cb(uv_handle_t *h) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF((uv_timer_t *)h, struct dduct_proxy, grace);
  p->grace_open = 0;
  dduct__proxy_maybe_closed(p);
}

static void retry_close_cb(uv_handle_t *h) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF((uv_timer_t *)h, struct dduct_proxy, retry);
  p->retry_open = 0;
  dduct__proxy_maybe_closed(p);
}

static void workers_done_close_cb(uv_handle_t *h) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF((uv_async_t *)h, struct dduct_proxy, workers_done);
  p->workers_done_open = 0;
  dduct__proxy_maybe_closed(p);
}

static void upstream_idle_cb(void *arg) {
  dduct__proxy_maybe_closed(arg);
}

void dduct__proxy_maybe_closed(struct dduct_proxy *p) {
  if (!p->closing) return;
  if (p->nconns > 0 || p->nlisteners_open > 0) return;
  dduct__upstream_close_idle(p->up);
  if (dduct__upstream_live(p->up) > 0 || p->nworkers_running > 0) return;
  if (p->workers_done_open == 1) {
    p->workers_done_open = 2; /* closing */
    uv_close((uv_handle_t *)&p->workers_done, workers_done_close_cb);
    return;
  }
  if (p->workers_done_open != 0) return;
  if (p->grace_open == 1) {
    p->grace_open = 2; /* closing */
    uv_close((uv_handle_t *)&p->grace, grace_close_cb);
    return;
  }
  if (p->grace_open != 0) return;
  if (p->retry_open == 1) {
    p->retry_open = 2; /* closing */
    uv_close((uv_handle_t *)&p->retry, retry_close_cb);
    return;
  }
  if (p->retry_open != 0) return;
  p->closing = 2; /* done */
  if (p->close_cb != NULL) {
    dduct_proxy_close_cb cb = p->close_cb;
    p->close_cb = NULL;
    cb(p, p->close_arg); /* may free p (as uv_close callbacks free handles): touch nothing after */
  }
}

static void grace_cb(uv_timer_t *t) {
  struct dduct_proxy *p = DDUCT_CONTAINER_OF(t, struct dduct_proxy, grace);
  struct dduct_conn_node *n = p->conns;
  if (p->nconns > 0) LOG_WARN("http_proxy", "shutdown grace over: closing %zu connections", p->nconns);
  while (n != NULL) {
    struct dduct_conn_node *next = n->next;
    dduct__conn_kill(n->conn);
    n = next;
  }
  /* Fills outlive the clients that started them: stop them too, or shutdown waits on origins. */
  if (p->cache != NULL) dduct__cache_shutdown(p->cache);
  dduct__proxy_maybe_closed(p);
}

void dduct_proxy_close(struct dduct_proxy *p, dduct_proxy_close_cb cb, void *user_data) {
  struct dduct_conn_node *n;
  if (p == NULL || p->closing) return;
  p->closing = 1;
  p->close_cb = cb;
  p->close_arg = user_data;
  for (struct dduct_listener *l = p->listeners; l != NULL; l = l->next) {
    if (l->waiting == -1) continue; /* already closed (bind failed), or a shadow */
    l->waiting = -1;
    uv_close((uv_handle_t *)&l->tcp, listener_close_cb);
  }
  for (unsigned i = 0; i < p->nworkers; i++) ask_close(&p->workers[i]);
  if (p->workers_done_open == 1) uv_ref((uv_handle_t *)&p->workers_done); /* wait for them */
  dduct__upstream_on_idle(p->up, upstream_idle_cb, p);
  dduct__upstream_close_idle(p->up);
  if (uv_timer_init(p->loop, &p->grace) == 0) {
    p->grace_open = 1;
    uv_timer_start(&p->grace, grace_cb, p->o.shutdown_grace_ms, 0);
    uv_unref((uv_handle_t *)&p->grace);
  }
  n = p->conns;
  while (n != NULL) {
    struct dduct_conn_node *next = n->next;
    dduct__conn_drain(n->conn);
    n = next;
  }
  dduct__proxy_maybe_closed(p);
}

void dduct_proxy_free(struct dduct_proxy *p) {
  if (p == NULL) return;
  workers_free(p);
  free_parts(p);
  free(p);
}

uint64_t dduct_proxy_connections(const struct dduct_proxy *p) {
  return p != NULL ? atomic_load_explicit(p->conns_all, memory_order_relaxed) : 0;
}

static void stats_call(struct dduct__worker *w, void *arg) {
  struct dduct_proxy_stats *s = arg;
  *s = w->p->stats;
  s->connections_active = w->p->nconns;
}

void dduct_proxy_stats(const struct dduct_proxy *p, struct dduct_proxy_stats *out) {
  *out = p->stats;
  out->connections_active = p->nconns;
  for (unsigned i = 0; i < p->nworkers; i++) {
    struct dduct__worker *w = &p->workers[i];
    struct dduct_proxy_stats s;
    if (on_worker(w, stats_call, &s) != 0) {
      if (w->final == NULL) continue;
      s = w->final->s;
    }
    proxy_stats_add(out, &s);
  }
}
