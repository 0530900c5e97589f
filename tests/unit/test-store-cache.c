/* The cache route inside a real proxy on a real loop, for what the CLI cannot reach: the
 * embedder's cacheable_cb vetoes caching per request, and the store's counters see it. A tiny
 * origin and client on 127.0.0.1 run on the same loop. */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dduct.h"
#include "rig.h"
#include "tap.h"

static uv_loop_t loop;
static int origin_requests;

/* ---- origin: answers every request with "hello" and closes -------------------------------- */

struct oconn {
  uv_tcp_t tcp;
  char buf[8192];
  size_t len;
  uv_write_t w;
};

static void oclose_cb(uv_handle_t *h) {
  free(h->data);
}

static void owrite_cb(uv_write_t *w, int status) {
  struct oconn *c = w->data;
  uv_close((uv_handle_t *)&c->tcp, oclose_cb);
}

static void oalloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct oconn *c = h->data;
  *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len - 1));
}

static void oread_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  static const char resp[] =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
  struct oconn *c = s->data;
  uv_buf_t out = uv_buf_init((char *)resp, sizeof(resp) - 1);
  if (n < 0) {
    uv_close((uv_handle_t *)s, oclose_cb);
    return;
  }
  c->len += (size_t)n;
  c->buf[c->len] = '\0';
  if (strstr(c->buf, "\r\n\r\n") == NULL) return;
  origin_requests++;
  uv_read_stop(s);
  c->w.data = c;
  uv_write(&c->w, s, &out, 1, owrite_cb);
}

static void oconn_cb(uv_stream_t *server, int status) {
  struct oconn *c = calloc(1, sizeof(*c));
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0)
    uv_read_start((uv_stream_t *)&c->tcp, oalloc_cb, oread_cb);
  else
    uv_close((uv_handle_t *)&c->tcp, oclose_cb);
}

/* ---- the embedder's decision -------------------------------------------------------------- */

static int cb_calls;

static int cacheable_cb(void *ud, const char *method, int https, const char *host,
                        uint16_t port, const char *path) {
  cb_calls++;
  *(int *)ud = strcmp(method, "GET") == 0 && !https && strcmp(host, "127.0.0.1") == 0;
  return strstr(path, "nocache") == NULL;
}

static void closed_cb(struct dduct_proxy *p, void *ud) {
  *(int *)ud = 1;
}


int main(void) {
  char tmp[] = "/tmp/dduct-test-store-cache-XXXXXX", certs[64], files[64], err[256] = "";
  char addr[32];
  struct dduct_ca_options co;
  struct dduct_proxy_options po;
  struct dduct_ca *ca = NULL;
  struct dduct_store *store = NULL;
  struct dduct_filter *filter = NULL;
  struct dduct_proxy *proxy = NULL;
  struct dduct_store_stats st;
  struct sockaddr_in a;
  struct rig_client c;
  uv_tcp_t origin;
  int namelen = sizeof(struct sockaddr_in), args_ok = 0, closed = 0;
  uint16_t pport, oport;

  alarm(120);
  if (mkdtemp(tmp) == NULL) return 1;
  snprintf(certs, sizeof(certs), "%s/certs", tmp);
  snprintf(files, sizeof(files), "%s/files", tmp);
  uv_loop_init(&loop);
  dduct_ca_options_init(&co);
  co.cert_dir = certs;
  co.rsa_key_bits = 2048;
  CHECK_EQ_INT(dduct_ca_open(&co, &ca, err, sizeof(err)), 0, "a CA for the proxy");
  CHECK_EQ_INT(dduct_store_open(&loop, files, &store, err, sizeof(err)), 0, "a store");
  dduct_filter_new(&filter);
  dduct_filter_add(filter, "^/", err, sizeof(err));
  dduct_proxy_options_init(&po);
  po.cacheable_cb = cacheable_cb;
  po.cacheable_data = &args_ok;
  CHECK_EQ_INT(dduct_proxy_new(&loop, &po, ca, store, filter, &proxy, err, sizeof(err)), 0,
               "a proxy with a store, a catch-all filter and a cacheable_cb");
  pport = rig_free_port();
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", pport);
  CHECK_EQ_INT(dduct_proxy_listen(proxy, DDUCT_LISTEN_TCP, addr, err, sizeof(err)), 0,
               "it listens");

  uv_tcp_init(&loop, &origin);
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&origin, (const struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&origin, 16, oconn_cb);
  uv_tcp_getsockname(&origin, (struct sockaddr *)&a, &namelen);
  oport = ntohs(a.sin_port);

  CHECK_EQ_STR(rig_fetch(&loop, &c, pport, oport, "/a.deb"), "hello", "first GET: the origin's body");
  CHECK_EQ_STR(rig_fetch(&loop, &c, pport, oport, "/a.deb"), "hello", "second GET: the same body");
  CHECK_EQ_INT(origin_requests, 1, "a path the callback allows is cached");
  CHECK(args_ok, "the callback sees the method, scheme and host");
  CHECK_EQ_STR(rig_fetch(&loop, &c, pport, oport, "/nocache.deb"), "hello", "a vetoed path is answered");
  CHECK_EQ_STR(rig_fetch(&loop, &c, pport, oport, "/nocache.deb"), "hello", "twice");
  CHECK_EQ_INT(origin_requests, 3, "a path the callback refuses is never cached");
  CHECK_EQ_INT(cb_calls, 4, "the callback is asked once per request");
  /* The commit (fsyncs included) follows the response's last byte. */
  for (dduct_store_stats(store, &st); st.fills_completed == 0; dduct_store_stats(store, &st))
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(st.misses == 1 && st.hits == 1 && st.fills_completed == 1 && st.bytes_served == 10,
        "the store counted one miss, one hit, one fill and 10 bytes served");

  dduct_proxy_close(proxy, closed_cb, &closed);
  uv_close((uv_handle_t *)&origin, NULL);
  while (!closed) uv_run(&loop, UV_RUN_ONCE);
  dduct_proxy_free(proxy);
  dduct_store_free(store);
  dduct_filter_free(filter);
  dduct_ca_free(ca);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "everything closed");
  {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
  }
  return tap_done();
}
