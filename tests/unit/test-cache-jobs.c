/* The cache's job lifecycle (cache.c, store.c) through a real proxy with a store and a catch-all
 * filter, a tiny origin and clients on the same loop on 127.0.0.1: a miss starts one fill, a
 * second request for a key being filled follows that fill instead of asking the origin, a hit
 * after a completed fill does not contact the origin, a fill whose origin closes mid-body is
 * discarded (the client's connection is cut, nothing is stored), and dduct_proxy_close with a
 * fill in flight still closes every handle and stores nothing.
 * What breaks it: a second origin request for a key already filling (no collapsing), a hit that
 * goes to the origin, a short body stored or answered as whole (the client's connection left
 * open, fills_completed counting it, a later request served without the origin), or a fill that
 * keeps a handle open or leaves a committed entry at shutdown (uv_loop_close != 0). */
#include <arpa/inet.h>
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

/* ---- origin: how it answers the next request ---------------------------------------------- */

enum mode {
  WHOLE,   /* "hello", Content-Length 5, then close */
  SHORT,   /* Content-Length 10, "hello", then close: a short body */
  HOLD,    /* the head and "hel", then wait for release() */
};
static enum mode mode = WHOLE;

struct oconn {
  uv_tcp_t tcp;
  char buf[8192];
  size_t len;
  uv_write_t w;
  int closing;
};
static struct oconn *held; /* the connection in HOLD */

static void oclose_cb(uv_handle_t *h) {
  struct oconn *c = h->data;
  if (held == c) held = NULL;
  free(c);
}

static void oclose(struct oconn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, oclose_cb);
}

static void owrite_close_cb(uv_write_t *w, int status) {
  oclose(w->data);
}

static void owrite_cb(uv_write_t *w, int status) {
}

static void oalloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct oconn *c = h->data;
  *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len - 1));
}

static void oread_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  static const char whole[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
  static const char shrt[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello";
  static const char hold[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhel";
  struct oconn *c = s->data;
  const char *resp;
  uv_buf_t out;
  if (n < 0) {
    oclose(c);
    return;
  }
  c->len += (size_t)n;
  c->buf[c->len] = '\0';
  if (c->w.data != NULL || strstr(c->buf, "\r\n\r\n") == NULL) return; /* one request each */
  origin_requests++;
  c->w.data = c;
  resp = mode == WHOLE ? whole : mode == SHORT ? shrt : hold;
  out = uv_buf_init((char *)resp, (unsigned)strlen(resp));
  if (mode == HOLD) {
    held = c;
    uv_write(&c->w, s, &out, 1, owrite_cb); /* keep reading: EOF closes it */
  } else {
    uv_read_stop(s);
    uv_write(&c->w, s, &out, 1, owrite_close_cb);
  }
}

/* The held response's last bytes. */
static void release(void) {
  static uv_write_t w;
  uv_buf_t out = uv_buf_init("lo", 2);
  w.data = held;
  uv_write(&w, (uv_stream_t *)&held->tcp, &out, 1, owrite_close_cb);
}

static void oconn_cb(uv_stream_t *server, int status) {
  struct oconn *c = calloc(1, sizeof(*c));
  uv_tcp_init(&loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0)
    uv_read_start((uv_stream_t *)&c->tcp, oalloc_cb, oread_cb);
  else
    oclose(c);
}

static struct dduct_store *store;

static struct dduct_store_stats stats(void) {
  struct dduct_store_stats st;
  dduct_store_stats(store, &st);
  return st;
}

static void closed_cb(struct dduct_proxy *p, void *ud) {
  *(int *)ud = 1;
}


int main(void) {
  char tmp[] = "/tmp/dduct-test-cache-jobs-XXXXXX", certs[64], files[64], err[256] = "";
  char addr[32], out[512];
  struct dduct_ca_options co;
  struct dduct_proxy_options po;
  struct dduct_ca *ca = NULL;
  struct dduct_filter *filter = NULL;
  struct dduct_proxy *proxy = NULL;
  struct dduct_store_stats st;
  struct sockaddr_in a;
  struct rig_client c1, c2;
  uv_tcp_t origin;
  int namelen = sizeof(struct sockaddr_in), closed = 0;
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
  po.shutdown_grace_ms = 200; /* the fill in flight at close is cut after this */
  CHECK_EQ_INT(dduct_proxy_new(&loop, &po, ca, store, filter, &proxy, err, sizeof(err)), 0,
               "a proxy with a store and a catch-all filter");
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

  /* A miss: one fill, committed. */
  mode = WHOLE;
  CHECK_EQ_STR(rig_fetch(&loop, &c1, pport, oport, "/one"), "hello", "a miss gets the origin's body");
  CHECK_EQ_INT(origin_requests, 1, "from one origin request");
  while ((st = stats()).fills_completed == 0 && st.fills_discarded == 0)
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(st.misses == 1 && st.fills_completed == 1 && st.fills_discarded == 0 && st.hits == 0,
        "the miss made exactly one fill, completed");

  /* A hit after the completed fill: the origin is not asked. */
  CHECK_EQ_STR(rig_fetch(&loop, &c1, pport, oport, "/one"), "hello", "a hit gets the stored body");
  CHECK_EQ_INT(origin_requests, 1, "without contacting the origin");
  CHECK_EQ_INT(stats().hits, 1, "counted as a hit");

  /* Two requests for one key while it fills: one origin request. The origin holds the last
   * bytes until the second client is following the fill (a hit on a filling entry) or has
   * reached the origin itself (origin_requests 2: no collapsing). */
  mode = HOLD;
  rig_client_start(&loop, &c1, pport, oport, "/two");
  while (held == NULL && !c1.done) uv_run(&loop, UV_RUN_ONCE);
  CHECK(held != NULL, "the first request reached the origin, which holds its answer");
  rig_client_start(&loop, &c2, pport, oport, "/two");
  while (stats().hits < 2 && origin_requests < 3 && !c2.done) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_INT(origin_requests, 2, "the second request does not reach the origin");
  CHECK_EQ_INT(stats().hits, 2, "it follows the fill in flight");
  if (held != NULL) release();
  while (!c1.done || !c2.done) uv_run(&loop, UV_RUN_ONCE);
  CHECK_EQ_STR(rig_client_body(&c1), "hello", "the first client gets the whole body");
  CHECK_EQ_STR(rig_client_body(&c2), "hello", "the second too, from the same fill");
  while ((st = stats()).fills_completed < 2 && st.fills_discarded == 0)
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(st.misses == 2 && st.fills_completed == 2, "one fill for both");
  CHECK_EQ_INT(origin_requests, 2, "one origin request for both, in the end");

  /* The origin closes mid-body: the fill is discarded, the client's connection is cut. */
  mode = SHORT;
  rig_fetch(&loop, &c1, pport, oport, "/three");
  CHECK_EQ_INT(origin_requests, 3, "a miss for /three");
  CHECK(strncmp(c1.resp, "HTTP/1.1 200 OK\r\n", 17) == 0 && strlen(rig_client_body(&c1)) < 10,
        "the client got the head and a short body, then its connection closed");
  while ((st = stats()).fills_discarded == 0 && st.fills_completed == 2)
    uv_run(&loop, UV_RUN_ONCE);
  CHECK(st.fills_discarded == 1 && st.fills_completed == 2, "the short fill is discarded");
  mode = WHOLE;
  CHECK_EQ_STR(rig_fetch(&loop, &c1, pport, oport, "/three"), "hello",
               "the next request for /three is answered whole");
  CHECK_EQ_INT(origin_requests, 4, "by the origin: nothing of the short body was stored");
  while ((st = stats()).fills_completed < 3 && st.fills_discarded == 1)
    uv_run(&loop, UV_RUN_ONCE);

  /* Close with a fill in flight: every handle closes and nothing is stored. */
  mode = HOLD;
  rig_client_start(&loop, &c1, pport, oport, "/four");
  while (held == NULL && !c1.done) uv_run(&loop, UV_RUN_ONCE);
  CHECK(held != NULL, "a fill in flight for /four");
  while (strstr(c1.resp, "hel") == NULL && !c1.done) uv_run(&loop, UV_RUN_ONCE);
  st = stats();
  dduct_proxy_close(proxy, closed_cb, &closed);
  while (!closed) uv_run(&loop, UV_RUN_ONCE);
  while (!c1.done) uv_run(&loop, UV_RUN_ONCE);
  CHECK(strlen(rig_client_body(&c1)) < 5, "the client of the cut fill never got a whole body");
  dduct_proxy_free(proxy);
  uv_close((uv_handle_t *)&origin, NULL);
  if (held != NULL) oclose(held);
  uv_run(&loop, UV_RUN_DEFAULT); /* the store's work in flight (a commit, a removal) ends too */
  CHECK_EQ_INT(stats().fills_completed, st.fills_completed, "the cut fill is not stored");
  CHECK_EQ_INT(stats().entries, st.entries, "no entry was added at close");
  CHECK_EQ_INT(tap_sh(out, sizeof(out), "find '%s' -name '*.part' | wc -l", files), 0,
               "find runs");
  CHECK_EQ_STR(out, "0\n", "and no partial file is left behind");
  dduct_store_free(store);
  dduct_filter_free(filter);
  dduct_ca_free(ca);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
  }
  return tap_done();
}
