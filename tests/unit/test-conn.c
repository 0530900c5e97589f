/* The connection state machine (conn.c) on a real loop with a real proxy and a raw TCP client:
 * pipelining, keep-alive, a malformed request, HTTP/1.0 without keep-alive, the head timeout and
 * the close of everything. Requests go to the admin listener's /healthz ("ok\n", answered
 * without an origin) and to /ca.crt on the proxy listener. The client is a plain socket the test
 * reads without blocking while it turns the loop, so the proxy runs in this thread.
 * What breaks it: answers out of order or merged/lost for pipelined requests (a second response
 * missing or before the first), a keep-alive connection closed after its first answer, a
 * malformed request not answered 400 or left open, a 1.0 connection left open, an idle
 * connection never closed by head_timeout_ms, or a handle left open at dduct_proxy_close
 * (uv_loop_close != 0). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dduct.h"
#include "rig.h"
#include "tap.h"

static uv_loop_t loop;


static int client(uint16_t port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

static void send_all(int fd, const char *s) {
  size_t len = strlen(s), off = 0;
  while (off < len) {
    ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += (size_t)n;
  }
}

/* Bytes the client has: read without blocking; turn the loop once while none are there. */
struct rx {
  char buf[16384];
  size_t len;
  int eof;
};

static void pump(int fd, struct rx *r) {
  ssize_t n = recv(fd, r->buf + r->len, sizeof(r->buf) - r->len - 1, MSG_DONTWAIT);
  if (n > 0) {
    r->len += (size_t)n;
    r->buf[r->len] = '\0';
  } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    r->eof = 1;
  } else {
    uv_run(&loop, UV_RUN_ONCE);
  }
}

/* End of the idx-th complete response (Content-Length framed) in r, or 0 if not there yet. */
static size_t response_end(const struct rx *r, int idx) {
  size_t off = 0;
  for (int i = 0; i <= idx; i++) {
    const char *end = strstr(r->buf + off, "\r\n\r\n");
    const char *cl;
    if (end == NULL) return 0;
    cl = strstr(r->buf + off, "Content-Length: ");
    if (cl == NULL || cl > end) return 0;
    off = (size_t)(end + 4 - r->buf) + strtoul(cl + 16, NULL, 10);
    if (off > r->len) return 0;
  }
  return off;
}

/* Wait for n responses (or EOF). */
static void wait_responses(int fd, struct rx *r, int n) {
  while (!r->eof && response_end(r, n - 1) == 0) pump(fd, r);
}

static void wait_eof(int fd, struct rx *r) {
  while (!r->eof) pump(fd, r);
}

/* The status line of the idx-th response. */
static const char *status_line(const struct rx *r, int idx, char *out, size_t outlen) {
  size_t off = idx == 0 ? 0 : response_end(r, idx - 1);
  const char *eol = off < r->len ? strstr(r->buf + off, "\r\n") : NULL;
  if (eol == NULL) return "";
  snprintf(out, outlen, "%.*s", (int)(eol + 2 - (r->buf + off)), r->buf + off);
  return out;
}

/* The body of the idx-th response. */
static const char *body_of(const struct rx *r, int idx, char *out, size_t outlen) {
  size_t start = idx == 0 ? 0 : response_end(r, idx - 1), end = response_end(r, idx);
  const char *b = end != 0 ? strstr(r->buf + start, "\r\n\r\n") : NULL;
  if (b == NULL) return "";
  snprintf(out, outlen, "%.*s", (int)(r->buf + end - (b + 4)), b + 4);
  return out;
}

static void closed_cb(struct dduct_proxy *p, void *ud) {
  *(int *)ud = 1;
}

int main(void) {
  char tmp[] = "/tmp/dduct-test-conn-XXXXXX", certs[64], err[256] = "", addr[32];
  char line[256], body[8192];
  struct dduct_ca_options co;
  struct dduct_proxy_options po;
  struct dduct_ca *ca = NULL;
  struct dduct_proxy *proxy = NULL;
  struct rx *r = calloc(1, sizeof(*r));
  uint16_t pport = rig_free_port(), aport;
  int fd, closed = 0;

  alarm(120);
  if (mkdtemp(tmp) == NULL || r == NULL) return 1;
  snprintf(certs, sizeof(certs), "%s/certs", tmp);
  uv_loop_init(&loop);
  dduct_ca_options_init(&co);
  co.cert_dir = certs;
  co.rsa_key_bits = 2048;
  CHECK_EQ_INT(dduct_ca_open(&co, &ca, err, sizeof(err)), 0, "a CA for the proxy");
  dduct_proxy_options_init(&po);
  po.head_timeout_ms = 300; /* short, for the idle connection below */
  po.shutdown_grace_ms = 200;
  CHECK_EQ_INT(dduct_proxy_new(&loop, &po, ca, NULL, NULL, &proxy, err, sizeof(err)), 0,
               "a proxy without a store");
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", pport);
  CHECK_EQ_INT(dduct_proxy_listen(proxy, DDUCT_LISTEN_TCP, addr, err, sizeof(err)), 0,
               "a proxy listener");
  aport = rig_free_port(); /* after the proxy listener took pport, so never the same port */
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", aport);
  CHECK_EQ_INT(dduct_proxy_listen(proxy, DDUCT_LISTEN_ADMIN, addr, err, sizeof(err)), 0,
               "an admin listener");

  /* Pipelining: two requests in one write, answered in order on the same connection. */
  fd = client(aport);
  CHECK(fd >= 0, "a client connects to the admin listener");
  send_all(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_responses(fd, r, 2);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 200 OK\r\n",
               "pipelined: the first request is answered first");
  CHECK_EQ_STR(body_of(r, 0, body, sizeof(body)), "ok\n", "with its own body");
  CHECK_EQ_STR(status_line(r, 1, line, sizeof(line)), "HTTP/1.1 404 Not Found\r\n",
               "pipelined: the second request is answered second");
  CHECK(strstr(body_of(r, 1, body, sizeof(body)), "not found") == body,
        "with its own body");
  CHECK(!r->eof, "the connection stays open after both");

  /* Keep-alive: a third request later on the same connection. */
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_responses(fd, r, 1);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 200 OK\r\n",
               "keep-alive: a later request on the same connection is answered");
  CHECK(!r->eof, "and the connection is still open");
  close(fd);

  /* A malformed request: 400, then the connection closes; the next connection works. */
  fd = client(pport);
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /ca.crt HTTP/1.1\r\nHost x\r\n\r\n");
  wait_eof(fd, r);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 400 Bad Request\r\n",
               "a malformed header line gets 400");
  CHECK(strstr(r->buf, "Connection: close\r\n") != NULL, "announced as the last answer");
  CHECK(r->eof, "and the connection closes");
  close(fd);
  fd = client(pport);
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /ca.crt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  wait_responses(fd, r, 1);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 200 OK\r\n",
               "the next connection is served (/ca.crt on the proxy listener)");
  CHECK_EQ_STR(body_of(r, 0, body, sizeof(body)), dduct_ca_cert_pem(ca),
               "with the CA certificate");
  close(fd);

  /* HTTP/1.0 without keep-alive: the connection closes after the answer. */
  fd = client(aport);
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /healthz HTTP/1.0\r\n\r\n");
  wait_eof(fd, r);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 200 OK\r\n",
               "HTTP/1.0 is answered");
  CHECK(response_end(r, 0) == r->len, "one whole response, nothing after it");
  CHECK(strstr(r->buf, "Connection: close\r\n") != NULL, "announced as the last answer");
  CHECK(r->eof, "and the connection closes after it");
  close(fd);

  /* The head timeout: half a request head, then silence; the proxy closes without an answer. */
  fd = client(pport);
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /ca.crt HTTP/1.1\r\n");
  wait_eof(fd, r);
  CHECK(r->eof, "an incomplete head is closed after head_timeout_ms");
  CHECK_EQ_INT(r->len, 0, "without an answer");
  close(fd);

  /* Close with an idle keep-alive connection open: every handle goes. */
  fd = client(aport);
  memset(r, 0, sizeof(*r));
  send_all(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  wait_responses(fd, r, 1);
  CHECK_EQ_STR(status_line(r, 0, line, sizeof(line)), "HTTP/1.1 200 OK\r\n",
               "a keep-alive connection is open at close");
  dduct_proxy_close(proxy, closed_cb, &closed);
  while (!closed) uv_run(&loop, UV_RUN_ONCE);
  wait_eof(fd, r);
  CHECK(r->eof, "dduct_proxy_close closes the idle connection");
  close(fd);
  dduct_proxy_free(proxy);
  dduct_ca_free(ca);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0, "nothing is left running");
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  free(r);
  {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
  }
  return tap_done();
}
