/* Serving: store, filter set, proxy and listeners on one loop, stopped by SIGINT/SIGTERM
 * (SIGHUP reopens the access log).
 * The first signal closes the proxy gracefully; the close callback then closes the signal
 * handles so uv_run returns with nothing left on the loop. A second signal exits at once. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "access_log.h"
#include "log.h"
#include "memory.h"
#include "notify.h"
#include "run.h"

struct runner {
  uv_loop_t loop;
  uv_signal_t sigint, sigterm, sighup;
  int signals_started;
  int stopping;
  struct dduct_store *store;
  struct dduct_filter *filter;
  struct dduct_proxy *proxy;
  struct memory_trim trim;
  struct access_log alog;
  int alog_open;
};

static void proxy_closed_cb(struct dduct_proxy *p, void *user_data) {
  struct runner *r = user_data;
  (void)p;
  if (r->signals_started) {
    uv_close((uv_handle_t *)&r->sigint, NULL);
    uv_close((uv_handle_t *)&r->sigterm, NULL);
    uv_close((uv_handle_t *)&r->sighup, NULL);
    r->signals_started = 0;
  }
}

static void signal_cb(uv_signal_t *h, int signum) {
  struct runner *r = h->data;
  if (r->stopping) {
    log_line(DDUCT_LOG_WARN, "main", "Signal %d again: exiting now", signum);
    _exit(128 + signum);
  }
  r->stopping = 1;
  log_line(DDUCT_LOG_INFO, "main", "Signal %d: shutting down", signum);
  (void)notify_systemd("STOPPING=1");
  dduct_proxy_close(r->proxy, proxy_closed_cb, r);
}

static void sighup_cb(uv_signal_t *h, int signum) {
  struct runner *r = h->data;
  (void)signum;
  if (r->alog_open) access_log_reopen(&r->alog);
}

static int start_signals(struct runner *r) {
  int rc;
  uv_signal_init(&r->loop, &r->sigint);
  uv_signal_init(&r->loop, &r->sigterm);
  uv_signal_init(&r->loop, &r->sighup);
  r->sigint.data = r->sigterm.data = r->sighup.data = r;
  r->signals_started = 1;
  if ((rc = uv_signal_start(&r->sigint, signal_cb, SIGINT)) == 0)
    rc = uv_signal_start(&r->sigterm, signal_cb, SIGTERM);
  if (rc == 0 && (rc = uv_signal_start(&r->sighup, sighup_cb, SIGHUP)) == 0)
    uv_unref((uv_handle_t *)&r->sighup);
  if (rc != 0) log_line(DDUCT_LOG_ERROR, "main", "signals: %s", uv_strerror(rc));
  return rc;
}

/* Errors name the pattern; a bad one was already refused by the config layer. */
static int build_filter(const struct config *cfg, struct runner *r) {
  char err[512];
  if (dduct_filter_new(&r->filter) != 0) return DDUCT_ENOMEM;
  for (size_t i = 0; i < cfg->filters.n; i++) {
    int rc = dduct_filter_add(r->filter, cfg->filters.v[i], err, sizeof(err));
    if (rc != 0) {
      log_line(DDUCT_LOG_ERROR, "main", "%s", err);
      return rc;
    }
  }
  return 0;
}

static void proxy_options(const struct config *cfg, struct dduct_proxy_options *o) {
  dduct_proxy_options_init(o);
  o->upstream_ca_file = cfg->upstream_ca_file[0] != '\0' ? cfg->upstream_ca_file : NULL;
  o->upstream_insecure = cfg->upstream_insecure;
  o->resolve = (const char *const *)cfg->resolve.v;
  o->resolve_count = cfg->resolve.n;
  o->allow_clients = (const char *const *)cfg->allow_clients.v;
  o->allow_clients_count = cfg->allow_clients.n;
  o->connect_ports = cfg->connect_ports;
  o->connect_ports_count = cfg->connect_ports_count;
  o->connect_any_port = cfg->connect_any_port;
  o->max_connections = cfg->max_connections;
  o->max_connections_per_client = cfg->max_connections_per_client;
  o->head_timeout_ms = cfg->head_timeout * 1000u;
  o->idle_timeout_ms = cfg->idle_timeout * 1000u;
  o->tunnel_idle_timeout_ms = cfg->tunnel_idle_timeout * 1000u;
  o->connect_timeout_ms = cfg->connect_timeout * 1000u;
  o->upstream_timeout_ms = cfg->upstream_timeout * 1000u;
  o->shutdown_grace_ms = cfg->shutdown_grace * 1000u;
  o->revalidate = (enum dduct_revalidate)cfg->revalidate;
  o->query_ignore = (const char *const *)cfg->query_ignore.v;
  o->query_ignore_count = cfg->query_ignore.n;
  o->upstream_proxy = cfg->upstream_proxy[0] != '\0' ? cfg->upstream_proxy : NULL;
  o->no_upstream_proxy = (const char *const *)cfg->no_upstream_proxy.v;
  o->no_upstream_proxy_count = cfg->no_upstream_proxy.n;
  o->parents = (const char *const *)cfg->parents.v;
  o->parents_count = cfg->parents.n;
  o->parent_ca_file = cfg->parent_ca_file[0] != '\0' ? cfg->parent_ca_file : NULL;
  o->parent_down_ms = cfg->parent_down_time * 1000u;
  o->stale_if_error = cfg->cache_stale_if_error;
  o->share_private = cfg->cache_share_private;
  o->workers = cfg->workers;
}

/* The admin listener is a convenience: when its address is taken (by default a fixed loopback
 * port another dduct on the host may hold) dduct still proxies, with a warning; a malformed
 * address was already refused by the config check. */
static void listen_admin(struct runner *r, const char *addr) {
  char err[512] = "";
  int rc;
  if (addr[0] == '\0') return;
  rc = dduct_proxy_listen(r->proxy, DDUCT_LISTEN_ADMIN, addr, err, sizeof(err));
  if (rc != 0)
    log_line(DDUCT_LOG_WARN, "admin", "Admin listening on %s: %s; serving without it", addr,
             err[0] ? err : dduct_strerror(rc));
}

static int open_access_log(const struct config *cfg, struct runner *r,
                           struct dduct_proxy_options *o) {
  char err[600] = "";
  if (cfg->access_log[0] == '\0') return 0;
  if (access_log_open(&r->alog, &r->loop, cfg->access_log, err, sizeof(err)) != 0) {
    log_line(DDUCT_LOG_ERROR, "main", "%s", err);
    return 1;
  }
  r->alog_open = 1;
  o->access_cb = access_log_record;
  o->access_data = &r->alog;
  return 0;
}

static int listen_one(struct runner *r, enum dduct_listen_kind kind, const char *addr) {
  char err[512] = "";
  int rc;
  if (addr[0] == '\0') return 0; /* '' disables this listener */
  rc = dduct_proxy_listen(r->proxy, kind, addr, err, sizeof(err));
  if (rc != 0)
    log_line(DDUCT_LOG_ERROR, kind == DDUCT_LISTEN_TLS ? "tls_mitm" : "http_proxy",
             "Listening on %s: %s", addr, err[0] ? err : dduct_strerror(rc));
  return rc;
}

static int open_store(const struct config *cfg, struct runner *r) {
  char err[512] = "";
  struct dduct_store_options o;
  int rc;
  config_store_options(cfg, &o);
  rc = dduct_store_open_with(&r->loop, cfg->file_dir, &o, &r->store, err, sizeof(err));
  if (rc != 0) log_line(DDUCT_LOG_ERROR, "serve", "%s", err[0] ? err : dduct_strerror(rc));
  return rc != 0 ? 1 : 0;
}

/* Everything up to a running proxy. Returns 0, or the exit status for a failure. */
static int setup(const struct config *cfg, struct dduct_ca *ca, struct runner *r) {
  struct dduct_proxy_options o;
  char err[512] = "";
  int rc;

  if ((rc = open_store(cfg, r)) != 0) return rc;
  if (build_filter(cfg, r) != 0) return 2;
  proxy_options(cfg, &o);
  if (open_access_log(cfg, r, &o) != 0) return 1;
  rc = dduct_proxy_new(&r->loop, &o, ca, r->store, r->filter, &r->proxy, err, sizeof(err));
  if (rc != 0) {
    log_line(DDUCT_LOG_ERROR, "main", "%s", err[0] ? err : dduct_strerror(rc));
    return 1;
  }
  if ((rc = memory_trim_start(&r->trim, &r->loop, r->proxy)) != 0)
    log_line(DDUCT_LOG_WARN, "main", "memory trim: %s", uv_strerror(rc)); /* serve anyway */
  /* Signals first: whoever waits for "Listening on" may signal us right after it. */
  if (start_signals(r) != 0 || listen_one(r, DDUCT_LISTEN_TCP, cfg->tcp_bind) != 0 ||
      listen_one(r, DDUCT_LISTEN_TLS, cfg->tls_bind) != 0)
    return 1;
  listen_admin(r, cfg->admin_bind);
  return 0;
}

/* Close what setup opened, in reverse order, and drain the loop to zero handles. */
static int teardown(struct runner *r) {
  int rc;
  memory_trim_stop(&r->trim);
  if (r->proxy != NULL && !r->stopping) {
    r->stopping = 1;
    dduct_proxy_close(r->proxy, proxy_closed_cb, r);
  } else {
    proxy_closed_cb(NULL, r);
  }
  uv_run(&r->loop, UV_RUN_DEFAULT);
  if (r->alog_open) access_log_close(&r->alog); /* the proxy's last records are in */
  dduct_proxy_free(r->proxy);
  dduct_store_free(r->store);
  dduct_filter_free(r->filter);
  uv_run(&r->loop, UV_RUN_DEFAULT); /* close callbacks of anything the frees closed */
  if ((rc = uv_loop_close(&r->loop)) != 0) {
    log_line(DDUCT_LOG_ERROR, "main", "event loop still has open handles at exit");
    return 1;
  }
  return 0;
}

/* libuv's thread pool is one per process, shared by every loop: fill writes and hashing, commits,
 * cold probes, mints, DNS. Its size (UV_THREADPOOL_SIZE, default 4) is read once, when the first
 * work is queued (the store's index load, below): with more loops than that, one loop's burst of
 * mints or cold reads would queue every other loop's disk work behind it. So at least one thread
 * per loop, unless the environment already says how many. Before any thread of ours exists:
 * setenv is not safe against a getenv on another thread. */
static void size_thread_pool(unsigned workers) {
  char n[16];
  if (getenv("UV_THREADPOOL_SIZE") != NULL || workers <= 4) return;
  snprintf(n, sizeof(n), "%u", workers);
  if (setenv("UV_THREADPOOL_SIZE", n, 0) == 0)
    log_line(DDUCT_LOG_DEBUG, "main", "Thread pool: %u threads (one per event loop)", workers);
}

int run_proxy(const struct config *cfg, struct dduct_ca *ca) {
  struct runner r;
  int rc, rc2;

  size_thread_pool(cfg->workers);
  memset(&r, 0, sizeof(r));
  if ((rc = uv_loop_init(&r.loop)) != 0) {
    log_line(DDUCT_LOG_ERROR, "main", "event loop: %s", uv_strerror(rc));
    return 1;
  }
  if ((rc = setup(cfg, ca, &r)) == 0) {
    /* Every listener is bound: a unit with Type=notify may now start its dependents. */
    if (notify_systemd("READY=1") < 0)
      log_line(DDUCT_LOG_WARN, "main", "NOTIFY_SOCKET: could not tell the service manager");
    uv_run(&r.loop, UV_RUN_DEFAULT);
  }
  rc2 = teardown(&r);
  return rc != 0 ? rc : rc2;
}
