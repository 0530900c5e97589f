/* Shared pieces of the unit tests that run a real proxy (rig.h). */
#include "rig.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void rig_fill_pattern(char *p, size_t n, uint32_t seed) {
  uint32_t x = seed | 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    p[i] = (char)(x >> 24);
  }
}

uint16_t rig_free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  uint16_t port = 0;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

static void close_cb(uv_handle_t *h) {
  ((struct rig_client *)h->data)->done = 1;
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct rig_client *c = h->data;
  (void)hint;
  *b = uv_buf_init(c->resp + c->len, (unsigned)(sizeof(c->resp) - c->len - 1));
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct rig_client *c = s->data;
  (void)b;
  if (n < 0 || c->len + (size_t)n >= sizeof(c->resp) - 1) {
    if (n > 0) c->len += (size_t)n;
    c->resp[c->len] = '\0';
    uv_close((uv_handle_t *)s, close_cb);
    return;
  }
  c->len += (size_t)n;
  c->resp[c->len] = '\0';
}

static void write_cb(uv_write_t *w, int status) {
  (void)w, (void)status;
}

static void connect_cb(uv_connect_t *req, int status) {
  struct rig_client *c = req->data;
  uv_buf_t b = uv_buf_init(c->req, (unsigned)strlen(c->req));
  if (status != 0) {
    uv_close((uv_handle_t *)&c->tcp, close_cb);
    return;
  }
  uv_write(&c->w, (uv_stream_t *)&c->tcp, &b, 1, write_cb);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

void rig_client_start(uv_loop_t *loop, struct rig_client *c, uint16_t proxy_port,
                      uint16_t origin_port, const char *path) {
  struct sockaddr_in a;
  memset(c, 0, sizeof(*c));
  snprintf(c->req, sizeof(c->req),
           "GET http://127.0.0.1:%u%s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nConnection: close\r\n\r\n",
           origin_port, path, origin_port);
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  c->conn.data = c;
  uv_ip4_addr("127.0.0.1", proxy_port, &a);
  uv_tcp_connect(&c->conn, &c->tcp, (const struct sockaddr *)&a, connect_cb);
}

const char *rig_client_body(const struct rig_client *c) {
  const char *b = strstr(c->resp, "\r\n\r\n");
  return b != NULL ? b + 4 : "";
}

const char *rig_fetch(uv_loop_t *loop, struct rig_client *c, uint16_t proxy_port,
                      uint16_t origin_port, const char *path) {
  rig_client_start(loop, c, proxy_port, origin_port, path);
  while (!c->done) uv_run(loop, UV_RUN_ONCE);
  return rig_client_body(c);
}
