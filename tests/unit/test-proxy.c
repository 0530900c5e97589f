/* The proxy's lifetime on a real loop: listen, close, and a close callback that frees the proxy
 * (as uv_close callbacks free handles). Under ASan this catches any use of the proxy after its
 * close callback. With workers = 3: connections spread over the loops, the figures sum them, and
 * close ends every loop's thread before its callback. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dduct.h"
#include "internal.h"
#include "rig.h"
#include "tap.h"

static uv_loop_t loop;
static int closed_calls;

static void freeing_close_cb(struct dduct_proxy *p, void *user_data) {
  closed_calls++;
  CHECK(user_data == &loop, "the close callback gets its user data");
  dduct_proxy_free(p); /* the proxy must not be touched after this */
}


#define NCLIENTS 40

static void test_workers(struct dduct_ca *ca) {
  struct dduct_proxy_options o;
  struct dduct_proxy *p = NULL;
  struct dduct_proxy_stats st;
  static struct rig_client clients[NCLIENTS];
  char err[256] = "", addr[64], *text = NULL;
  size_t len = 0, ok = 0;
  uint16_t port = rig_free_port();
  int pending, busy_loops = 0;
  double sum = 0;
  const char *at;

  dduct_proxy_options_init(&o);
  o.workers = 3;
  CHECK_EQ_INT(dduct_proxy_new(&loop, &o, ca, NULL, NULL, &p, err, sizeof(err)), 0,
               "a proxy on three loops");
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
  CHECK_EQ_INT(dduct_proxy_listen(p, DDUCT_LISTEN_TCP, addr, err, sizeof(err)), 0,
               "every loop listens on the same port");
  for (int i = 0; i < NCLIENTS; i++) rig_client_start(&loop, &clients[i], port, port, "/ca.crt");
  do {
    uv_run(&loop, UV_RUN_ONCE);
    pending = 0;
    for (int i = 0; i < NCLIENTS; i++) pending += !clients[i].done;
  } while (pending > 0);
  for (int i = 0; i < NCLIENTS; i++)
    ok += strstr(clients[i].resp, "-----BEGIN CERTIFICATE-----") != NULL;
  CHECK_EQ_INT(ok, NCLIENTS, "every client got ca.crt");
  dduct_proxy_stats(p, &st);
  CHECK_EQ_INT(st.connections_accepted, NCLIENTS, "accepted: summed over the loops");
  CHECK_EQ_INT(st.requests, NCLIENTS, "requests: summed over the loops");
  CHECK_EQ_INT(dduct_proxy_stats_json(p, 0, &text, &len), 0, "/stats renders");
  at = text != NULL ? strstr(text, "\"loops\":[") : NULL;
  CHECK(at != NULL, "/stats has a per-loop breakdown");
  for (int i = 0; at != NULL && i < 3; i++) {
    double n;
    at = strstr(at, "\"requests\":");
    if (at == NULL || sscanf(at, "\"requests\":%lf", &n) != 1) break;
    sum += n;
    busy_loops += n > 0;
    at++;
  }
  CHECK_EQ_INT((int)sum, NCLIENTS, "the loops' requests add up");
  CHECK(busy_loops >= 2, "more than one loop served (SO_REUSEPORT spread the connections)");
  free(text);
  CHECK_EQ_INT(dduct_proxy_metrics_prometheus(p, 0, &text, &len), 0, "/metrics renders");
  CHECK(text != NULL && strstr(text, "\ndduct_connections_accepted_total 40\n") != NULL,
        "/metrics sums the loops");
  free(text);
  closed_calls = 0;
  dduct_proxy_close(p, freeing_close_cb, &loop);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0, "the loop ends once every loop closed");
  CHECK_EQ_INT(closed_calls, 1, "the close callback ran once");
}

/* dduct_proxy_connections counts every loop's live connections without waiting for the workers'
 * loops: it answers while a worker's loop is stuck in a callback (dduct_proxy_stats would wait
 * for that loop's turn to end). The CLI's memory trimmer asks it on every turn of the first loop. */
static uv_thread_t main_thread;
static atomic_int access_blocked, access_release;

static void blocking_access_cb(void *user_data, const struct dduct_access_record *r) {
  uv_thread_t self = uv_thread_self();
  (void)user_data;
  (void)r;
  if (uv_thread_equal(&self, &main_thread)) return;
  atomic_store(&access_blocked, 1);
  while (!atomic_load(&access_release)) uv_sleep(1);
}

static void test_connections(struct dduct_ca *ca) {
  struct dduct_proxy_options o;
  struct dduct_proxy *p = NULL;
  struct dduct_proxy_stats st;
  static struct rig_client clients[NCLIENTS];
  int fds[8];
  char err[256] = "", addr[64];
  uint16_t port = rig_free_port();
  struct sockaddr_in sin;
  int i, sent = 0;

  main_thread = uv_thread_self();
  dduct_proxy_options_init(&o);
  o.workers = 2;
  o.access_cb = blocking_access_cb;
  CHECK_EQ_INT(dduct_proxy_new(&loop, &o, ca, NULL, NULL, &p, err, sizeof(err)), 0,
               "a proxy on two loops");
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
  CHECK_EQ_INT(dduct_proxy_listen(p, DDUCT_LISTEN_TCP, addr, err, sizeof(err)), 0, "listening");
  CHECK_EQ_INT(dduct_proxy_connections(p), 0, "no connection yet");
  /* Idle connections (no request yet), spread over both loops by the kernel. */
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (i = 0; i < 8; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fds[i] >= 0 && connect(fds[i], (struct sockaddr *)&sin, sizeof(sin)) == 0,
          "an idle client connects");
  }
  for (i = 0; i < 100000 && dduct_proxy_connections(p) < 8; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(dduct_proxy_connections(p), 8, "every loop's accepted connections count");
  dduct_proxy_stats(p, &st);
  CHECK_EQ_INT(st.connections_active, 8, "as dduct_proxy_stats sums them");
  for (i = 0; i < 8; i++) close(fds[i]);
  for (i = 0; i < 100000 && dduct_proxy_connections(p) > 0; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(dduct_proxy_connections(p), 0, "closed connections are gone from the count");
  /* Requests until one is served by the worker, whose access_cb then holds its loop. */
  while (!atomic_load(&access_blocked) && sent < NCLIENTS) {
    rig_client_start(&loop, &clients[sent], port, port, "/ca.crt");
    /* Not UV_RUN_ONCE: the worker may hold its loop before our answer is written. */
    while (!clients[sent].done && !atomic_load(&access_blocked)) uv_run(&loop, UV_RUN_NOWAIT);
    sent++;
  }
  CHECK(atomic_load(&access_blocked), "a request reached the worker's loop");
  CHECK(dduct_proxy_connections(p) <= 1, "counted while the worker's loop is held");
  atomic_store(&access_release, 1);
  for (i = 0; i < sent; i++)
    while (!clients[i].done) uv_run(&loop, UV_RUN_ONCE);
  dduct_proxy_close(p, NULL, NULL);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0, "closed");
  dduct_proxy_free(p);
}

static void test_close_callback_may_free(void) {
  char dir[] = "/tmp/dduct-test-proxy-XXXXXX";
  char err[256] = "", path[300];
  struct dduct_ca_options co;
  struct dduct_ca *ca = NULL;
  struct dduct_proxy *p = NULL;
  static const char *const files[] = {"ca.key",     "ca.crt",     "server.key", "server.crt",
                                      "server.p12", "client.key", "client.crt", "client.p12"};

  CHECK(mkdtemp(dir) != NULL, "a temp cert_dir");
  snprintf(path, sizeof(path), "%s/", dir);
  dduct_ca_options_init(&co);
  co.cert_dir = path;
  co.rsa_key_bits = 2048;
  CHECK_EQ_INT(dduct_ca_open(&co, &ca, err, sizeof(err)), 0, "a CA in the temp dir");
  CHECK_EQ_INT(dduct_proxy_new(&loop, NULL, ca, NULL, NULL, &p, err, sizeof(err)), 0,
               "a proxy with default options");
  snprintf(path, sizeof(path), "127.0.0.1:%u", rig_free_port());
  CHECK_EQ_INT(dduct_proxy_listen(p, DDUCT_LISTEN_TCP, path, err, sizeof(err)), 0,
               "listening on a free port");
  dduct_proxy_close(p, freeing_close_cb, &loop);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0, "the loop ends once the proxy closed");
  CHECK_EQ_INT(closed_calls, 1, "the close callback ran once");
  test_workers(ca);
  test_connections(ca);
  dduct_ca_free(ca);
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(files); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    (void)unlink(path);
  }
  rmdir(dir);
}

int main(void) {
  uv_loop_init(&loop);
  test_close_callback_may_free();
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  return tap_done();
}
