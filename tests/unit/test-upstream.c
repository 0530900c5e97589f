/* The origin client against a tiny libuv origin on 127.0.0.1: a plain fetch, keep-alive pool
 * reuse, redirects followed across hosts with Authorization dropped, loop detection, a refused
 * connection, and pause/resume of a body. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "resolve.h"
#include "tap.h"
#include "upstream.h"

static uv_loop_t loop;
static uv_tcp_t server;
static uint16_t port;
static int accepted;

/* ---- the origin: answers per path, keeps connections alive -------------------------------- */

struct oconn {
  uv_tcp_t tcp;
  char buf[8192];
  size_t len;
};

static void owrite_cb(uv_write_t *w, int status) {
  free(w);
}

static void osend(struct oconn *o, const char *text) {
  size_t n = strlen(text);
  uv_write_t *w = malloc(sizeof(*w) + n);
  uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
  memcpy(w + 1, text, n);
  uv_write(w, (uv_stream_t *)&o->tcp, &b, 1, owrite_cb);
}

static void answer(struct oconn *o, const char *head) {
  char out[70000];
  const char *sp = strchr(head, ' ');
  char path[128] = "";
  int auth = strstr(head, "\r\nAuthorization:") != NULL;
  if (sp != NULL) sscanf(sp + 1, "%127s", path);
  if (strcmp(path, "/r1") == 0) {
    snprintf(out, sizeof(out),
             "HTTP/1.1 302 Found\r\nLocation: http://other.test:%u/final\r\nContent-Length: 3\r\n"
             "\r\nabc", port);
  } else if (strcmp(path, "/r-same") == 0) {
    snprintf(out, sizeof(out), "HTTP/1.1 301 Moved\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/loop") == 0) {
    snprintf(out, sizeof(out), "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/big") == 0) {
    size_t n;
    snprintf(out, sizeof(out), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n",
             60000);
    n = strlen(out);
    memset(out + n, 'x', 60000);
    strcpy(out + n + 60000, "\r\n0\r\n\r\n");
  } else {
    snprintf(out, sizeof(out), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Auth: %s\r\n\r\n%s",
             (int)strlen(path), auth ? "yes" : "no", path);
  }
  osend(o, out);
}

static void oalloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct oconn *o = (struct oconn *)h;
  *b = uv_buf_init(o->buf + o->len, (unsigned)(sizeof(o->buf) - o->len));
}

static void oclose_cb(uv_handle_t *h) {
  free(h);
}

static void oread(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct oconn *o = (struct oconn *)s;
  char *end;
  if (n < 0) {
    uv_close((uv_handle_t *)s, oclose_cb);
    return;
  }
  o->len += (size_t)n;
  while ((end = memmem(o->buf, o->len, "\r\n\r\n", 4)) != NULL) {
    size_t used = (size_t)(end + 4 - o->buf);
    char head[8192];
    memcpy(head, o->buf, used);
    head[used] = '\0';
    answer(o, head);
    memmove(o->buf, o->buf + used, o->len - used);
    o->len -= used;
  }
}

static void on_conn(uv_stream_t *srv, int status) {
  struct oconn *o = calloc(1, sizeof(*o));
  uv_tcp_init(&loop, &o->tcp);
  uv_accept(srv, (uv_stream_t *)&o->tcp);
  accepted++;
  uv_read_start((uv_stream_t *)&o->tcp, oalloc, oread);
}

/* ---- fetch driver ------------------------------------------------------------------------- */

struct result {
  int status, done, err;
  char body[70000];
  size_t body_len;
  char xauth[8];
  char why[200];
  int pause_once;
};

static void on_head(struct dduct_fetch *f, const struct dduct_http_head *h, int64_t cl) {
  struct result *r = dduct__fetch_data(f);
  const char *a = dduct__http_get(h, "X-Auth");
  r->status = h->status;
  snprintf(r->xauth, sizeof(r->xauth), "%s", a != NULL ? a : "");
}

static void resume_cb(uv_timer_t *t) {
  dduct__fetch_resume(t->data);
  uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

static void on_body(struct dduct_fetch *f, const char *d, size_t n) {
  struct result *r = dduct__fetch_data(f);
  if (r->body_len + n <= sizeof(r->body)) memcpy(r->body + r->body_len, d, n);
  r->body_len += n;
  if (r->pause_once) {
    uv_timer_t *t = malloc(sizeof(*t));
    r->pause_once = 0;
    dduct__fetch_pause(f);
    uv_timer_init(&loop, t);
    t->data = f;
    uv_timer_start(t, resume_cb, 20, 0);
  }
}

static void on_done(struct dduct_fetch *f, int status, const char *why) {
  struct result *r = dduct__fetch_data(f);
  r->done = 1;
  r->err = status;
  snprintf(r->why, sizeof(r->why), "%s", why != NULL ? why : "");
}

static const struct dduct_fetch_cbs cbs = {on_head, on_body, on_done, NULL};

static int self_port;
static int is_self(void *arg, const struct sockaddr *sa) {
  return self_port != 0 && ntohs(((const struct sockaddr_in *)sa)->sin_port) == self_port;
}

static void run_fetch(struct dduct_upstream *u, const char *host, uint16_t p, const char *target,
                      unsigned redirects, int with_auth, struct result *r) {
  struct dduct_fetch_request req;
  struct dduct_http_head h;
  struct dduct_fetch *f;
  memset(r, 0, sizeof(*r) - sizeof(r->pause_once));
  dduct__http_head_init(&h);
  if (with_auth) dduct__http_add(&h, "Authorization", "Bearer t0ken");
  memset(&req, 0, sizeof(req));
  req.host = host;
  req.port = p;
  req.method = "GET";
  req.target = target;
  req.headers = &h;
  req.max_redirects = redirects;
  CHECK_EQ_INT(dduct__fetch_start(u, &req, &cbs, r, &f), 0, "fetch starts");
  while (!r->done) uv_run(&loop, UV_RUN_ONCE);
  dduct__http_head_free(&h);
}

static void noop_close(uv_handle_t *h) {}

int main(void) {
  struct sockaddr_in a;
  struct sockaddr_storage bound;
  int len = sizeof(bound);
  const char *pins_list[] = {"origin.test:127.0.0.1", "other.test:127.0.0.1"};
  struct dduct_pins pins;
  struct dduct_upstream_config cfg;
  struct dduct_upstream *u;
  uint64_t connects = 0, reuses = 0;
  struct result r;

  uv_loop_init(&loop);
  uv_tcp_init(&loop, &server);
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_bind(&server, (const struct sockaddr *)&a, 0);
  uv_listen((uv_stream_t *)&server, 16, on_conn);
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  dduct__pins_init(&pins, pins_list, 2, NULL, 0);

  memset(&cfg, 0, sizeof(cfg));
  cfg.loop = &loop;
  cfg.pins = &pins;
  cfg.connect_timeout_ms = 5000;
  cfg.upstream_timeout_ms = 5000;
  cfg.is_self = is_self;
  cfg.stat_connects = &connects;
  cfg.stat_reuses = &reuses;
  CHECK_EQ_INT(dduct__upstream_new(&cfg, &u), 0, "upstream created");

  run_fetch(u, "origin.test", port, "/hello", 0, 1, &r);
  CHECK_EQ_INT(r.err, 0, "a plain fetch completes");
  CHECK_EQ_INT(r.status, 200, "status delivered");
  CHECK(r.body_len == 6 && memcmp(r.body, "/hello", 6) == 0, "body delivered");
  CHECK_EQ_STR(r.xauth, "yes", "Authorization is sent to the origin it was given for");

  run_fetch(u, "origin.test", port, "/again", 0, 0, &r);
  CHECK_EQ_INT(r.err, 0, "a second fetch completes");
  CHECK_EQ_INT(accepted, 1, "the second fetch rode the pooled connection");
  CHECK_EQ_INT(reuses, 1, "one reuse counted");

  run_fetch(u, "origin.test", port, "/r1", 3, 1, &r);
  CHECK_EQ_INT(r.err, 0, "a cross-host redirect is followed");
  CHECK_EQ_INT(r.status, 200, "the final response is delivered, not the 302");
  CHECK(r.body_len == 6 && memcmp(r.body, "/final", 6) == 0, "the final body, not the 302's");
  CHECK_EQ_STR(r.xauth, "no", "Authorization is dropped when the host changes");

  run_fetch(u, "origin.test", port, "/r-same", 3, 1, &r);
  CHECK_EQ_INT(r.status, 200, "a relative redirect is followed");
  CHECK_EQ_STR(r.xauth, "yes", "Authorization is kept on the same host");

  run_fetch(u, "origin.test", port, "/r1", 0, 0, &r);
  CHECK_EQ_INT(r.status, 302, "without max_redirects the 3xx is delivered");

  run_fetch(u, "origin.test", port, "/loop", 2, 0, &r);
  CHECK_EQ_INT(r.status, 302, "after max_redirects hops the last 3xx is delivered");

  r.pause_once = 1;
  run_fetch(u, "origin.test", port, "/big", 0, 0, &r);
  CHECK_EQ_INT(r.err, 0, "a paused and resumed fetch completes");
  CHECK_EQ_INT(r.body_len, 60000, "every chunked byte arrives once");

  self_port = port;
  run_fetch(u, "127.0.0.1", port, "/x", 0, 0, &r); /* a new pool key: a new connection */
  CHECK_EQ_INT(r.err, DDUCT_ELOOP, "a target that is ourselves fails with ELOOP");
  {
    /* One async rule: that failure is met inside dduct__fetch_start (an IP literal, no I/O), yet
     * on_done comes from a later loop turn; an abort before that turn cancels it. */
    struct dduct_fetch_request req;
    struct dduct_fetch *f;
    memset(&req, 0, sizeof(req));
    req.host = "127.0.0.1";
    req.port = port;
    req.method = "GET";
    req.target = "/x";
    memset(&r, 0, sizeof(r));
    CHECK_EQ_INT(dduct__fetch_start(u, &req, &cbs, &r, &f), 0, "a doomed fetch starts");
    CHECK_EQ_INT(r.done, 0, "no callback inside dduct__fetch_start");
    while (!r.done) uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(r.err, DDUCT_ELOOP, "the failure arrives from the loop");
    memset(&r, 0, sizeof(r));
    CHECK_EQ_INT(dduct__fetch_start(u, &req, &cbs, &r, &f), 0, "another doomed fetch starts");
    dduct__fetch_abort(f);
    for (int i = 0; i < 3; i++) uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(r.done, 0, "aborted before its failure arrived: no callback at all");
  }
  self_port = 0;

  run_fetch(u, "origin.test", 1, "/x", 0, 0, &r);
  CHECK_EQ_INT(r.err, UV_ECONNREFUSED, "a refused connection is reported");
  CHECK(strstr(r.why, "origin.test:1") != NULL, "the reason names host and port");

  dduct__upstream_close_idle(u);
  uv_close((uv_handle_t *)&server, noop_close);
  while (dduct__upstream_live(u) > 0) uv_run(&loop, UV_RUN_ONCE);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(dduct__upstream_live(u), 0, "every origin connection closed");
  dduct__upstream_free(u);
  dduct__pins_free(&pins);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "the loop closes with no handle left");
  return tap_done();
}
