/* bench/burst: a load generator for intercepted connections that costs less than the proxy.
 *
 * Each client: TCP connect to the proxy, CONNECT host:port, a full TLS handshake (OpenSSL, no
 * session reuse, SNI = host, the proxy's CA verified, host name checked), one GET, the whole
 * response read (Content-Length), close. One thread, epoll, non-blocking OpenSSL, so a few
 * hundred connections at once cost the machine far less than hey's or Python's. --procs (2)
 * processes share the clients (client i in process i % procs), released together through a
 * pipe: on a machine shared with other work one thread gets one scheduler share, and the load
 * generator must not be what waits.
 *
 * Two modes:
 *   burst:  --clients N start at once (one connect() after another, then the event loop);
 *           client i asks for host i % hosts. Prints per-client times as JSON:
 *           {"ok":N,"failed":N,"handshake_ms":[...],"ttfb_ms":[...],"total_ms":[...],
 *            "wall_ms":W}, times from that client's connect() call.
 *   loop:   --seconds S: --clients N slots, each starts a new connection as soon as its last
 *           one is done; prints {"ok":N,"failed":N,"seconds":S,"conn_s":R,"cut":C} counting
 *           only connections finished after --cut seconds (steady state). With --keepalive 1
 *           each slot keeps its connection and sends its next GET as soon as a response is
 *           whole: then ok and conn_s count requests (keep-alive hits).
 *
 * Build: cc -O2 -o burst bench/burst.c -lssl -lcrypto
 * Run by bench/run (workloads 5 and 7); by hand:
 *   burst --proxy 127.0.0.1:3128 --ca certs/ca.crt --host-fmt 'h%d.burst.test' --hosts 100 \
 *         --clients 500 --path /small/00001.tgz
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum state { S_CONNECTING, S_SEND_CONNECT, S_READ_CONNECT, S_HANDSHAKE, S_SEND_GET, S_READ_RESP };

struct client {
  int fd, idx;
  enum state st;
  SSL *ssl;
  char host[256];
  char buf[4096];
  size_t len, off;
  int head_done;
  long body_left;
  double t_start, t_hs, t_ttfb;
};

static SSL_CTX *ctx;
static struct sockaddr_in proxy_addr;
static int ep;
static const char *host_fmt = "h%d.burst.test", *path = "/small/00001.tgz";
static int port = 443, nhosts = 100, host_base = 0;
static long ok_count, fail_count, ok_after_cut;
static double *hs_ms, *ttfb_ms, *total_ms;
static int loop_mode;
static double cut_at;
static int verbose;
static int keepalive; /* loop mode: requests one after another on each connection */
static double end_at;
static FILE *part_out;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void arm(struct client *c, unsigned events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
    perror("epoll_ctl");
    exit(2);
  }
}

static int start(struct client *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    perror("socket");
    return -1;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  snprintf(c->host, sizeof c->host, host_fmt, host_base + c->idx % nhosts);
  c->st = S_CONNECTING;
  c->ssl = NULL;
  c->len = c->off = 0;
  c->head_done = 0;
  c->body_left = 0;
  c->t_hs = c->t_ttfb = 0;
  c->t_start = now();
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
    perror("epoll_ctl add");
    exit(2);
  }
  if (connect(c->fd, (struct sockaddr *)&proxy_addr, sizeof proxy_addr) != 0 &&
      errno != EINPROGRESS) {
    perror("connect");
    return -1;
  }
  return 0;
}

static void finish(struct client *c, int good, const char *why) {
  double t = now();
  if (c->ssl) SSL_free(c->ssl);
  c->ssl = NULL;
  close(c->fd); /* also drops it from the epoll set */
  c->fd = -1;
  if (good) {
    if (!loop_mode) {
      fprintf(part_out, "r %d %.3f %.3f %.3f\n", c->idx, (c->t_hs - c->t_start) * 1e3,
              (c->t_ttfb - c->t_start) * 1e3, (t - c->t_start) * 1e3);
    } else if (t >= cut_at) {
      ok_after_cut++;
    }
    ok_count++;
  } else {
    fail_count++;
    if (verbose || fail_count <= 3) {
      unsigned long e = ERR_get_error();
      fprintf(stderr, "burst: client %d (%s) failed in state %d: %s%s%s\n", c->idx, c->host,
              (int)c->st, why, e ? ": " : "", e ? ERR_error_string(e, NULL) : "");
    }
  }
}

/* Continues an SSL call that wants I/O; returns 1 if it must wait, 0 on a real error. */
static int ssl_wait(struct client *c, int rc) {
  int e = SSL_get_error(c->ssl, rc);
  if (e == SSL_ERROR_WANT_READ) {
    arm(c, EPOLLIN);
    return 1;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    arm(c, EPOLLOUT);
    return 1;
  }
  return 0;
}

/* Parses the response head in c->buf[0..len); sets body_left, keeps body bytes read so far
 * counted. Returns 0 when the head is not complete yet, -1 on a bad answer. */
static int parse_head(struct client *c) {
  char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
  if (!end) return c->len >= sizeof c->buf - 1 ? -1 : 0;
  if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 200", 12) != 0) return -1;
  c->buf[end - c->buf] = 0;
  char *cl = strcasestr(c->buf, "\r\ncontent-length:");
  if (!cl) return -1;
  long n = strtol(cl + 17, NULL, 10);
  size_t head = (size_t)(end - c->buf) + 4;
  c->body_left = n - (long)(c->len - head);
  c->head_done = 1;
  return 1;
}

static void step(struct client *c) {
  for (;;) {
    switch (c->st) {
    case S_CONNECTING: {
      int err = 0;
      socklen_t l = sizeof err;
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
      if (err) {
        finish(c, 0, strerror(err));
        return;
      }
      c->len =
          (size_t)snprintf(c->buf, sizeof c->buf, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                           c->host, port, c->host, port);
      c->off = 0;
      c->st = S_SEND_CONNECT;
      break;
    }
    case S_SEND_CONNECT: {
      ssize_t n = write(c->fd, c->buf + c->off, c->len - c->off);
      if (n < 0 && errno == EAGAIN) {
        arm(c, EPOLLOUT);
        return;
      }
      if (n <= 0) {
        finish(c, 0, "write CONNECT");
        return;
      }
      c->off += (size_t)n;
      if (c->off == c->len) {
        c->len = 0;
        c->st = S_READ_CONNECT;
      }
      break;
    }
    case S_READ_CONNECT: {
      ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
      if (n < 0 && errno == EAGAIN) {
        arm(c, EPOLLIN);
        return;
      }
      if (n <= 0) {
        finish(c, 0, "read CONNECT answer");
        return;
      }
      c->len += (size_t)n;
      if (!memmem(c->buf, c->len, "\r\n\r\n", 4)) {
        if (c->len >= sizeof c->buf - 1) {
          finish(c, 0, "CONNECT answer too long");
          return;
        }
        break;
      }
      if (c->len < 12 || memcmp(c->buf + 9, "200", 3) != 0) {
        finish(c, 0, "CONNECT refused");
        return;
      }
      c->ssl = SSL_new(ctx);
      SSL_set_fd(c->ssl, c->fd);
      SSL_set_tlsext_host_name(c->ssl, c->host);
      SSL_set1_host(c->ssl, c->host);
      SSL_set_connect_state(c->ssl);
      c->st = S_HANDSHAKE;
      break;
    }
    case S_HANDSHAKE: {
      int rc = SSL_do_handshake(c->ssl);
      if (rc != 1) {
        if (ssl_wait(c, rc)) return;
        finish(c, 0, "TLS handshake");
        return;
      }
      c->t_hs = now();
      c->len = (size_t)snprintf(c->buf, sizeof c->buf,
                                "GET %s HTTP/1.1\r\nHost: %s\r\n%s"
                                "User-Agent: dduct-bench-burst\r\n\r\n",
                                path, c->host, keepalive ? "" : "Connection: close\r\n");
      c->st = S_SEND_GET;
      break;
    }
    case S_SEND_GET: {
      int rc = SSL_write(c->ssl, c->buf, (int)c->len);
      if (rc <= 0) {
        if (ssl_wait(c, rc)) return;
        finish(c, 0, "TLS write");
        return;
      }
      c->len = 0;
      c->st = S_READ_RESP;
      break;
    }
    case S_READ_RESP: {
      if (!c->head_done) {
        int rc = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - 1 - c->len));
        if (rc <= 0) {
          if (ssl_wait(c, rc)) return;
          finish(c, 0, "TLS read head");
          return;
        }
        if (c->t_ttfb == 0) c->t_ttfb = now();
        c->len += (size_t)rc;
        int h = parse_head(c);
        if (h < 0) {
          finish(c, 0, "bad response");
          return;
        }
        if (h == 0) break;
      } else {
        char sink[16384];
        int rc = SSL_read(c->ssl, sink, sizeof sink);
        if (rc <= 0) {
          if (ssl_wait(c, rc)) return;
          finish(c, 0, "TLS read body");
          return;
        }
        c->body_left -= rc;
      }
      if (c->body_left == 0) {
        if (keepalive && loop_mode && now() < end_at) {
          /* the next request on the same connection: the request is still at buf's start */
          double t = now();
          if (t >= cut_at) ok_after_cut++;
          ok_count++;
          c->len = (size_t)snprintf(c->buf, sizeof c->buf,
                                    "GET %s HTTP/1.1\r\nHost: %s\r\n"
                                    "User-Agent: dduct-bench-burst\r\n\r\n",
                                    path, c->host);
          c->head_done = 0;
          c->st = S_SEND_GET;
          break;
        }
        finish(c, 1, "");
        return;
      }
      if (c->body_left < 0) {
        finish(c, 0, "body longer than Content-Length");
        return;
      }
      break;
    }
    }
  }
}

/* One process's share of the clients (index i with i % procs == k): runs them, writes a line
 * "r i handshake ttfb total" (ms) per finished client in burst mode, then "s ok failed counted". */
static void run_part(int k, int procs, int clients, double seconds, double cut, double timeout,
                     FILE *out) {
  ep = epoll_create1(EPOLL_CLOEXEC);
  int mine = 0;
  for (int i = k; i < clients; i += procs)
    mine++;
  struct client *cs = calloc((size_t)mine, sizeof *cs);
  part_out = out;
  double t0 = now();
  double end = loop_mode ? t0 + seconds : t0 + timeout;
  end_at = end;
  cut_at = t0 + cut;
  for (int m = 0; m < mine; m++) {
    cs[m].idx = k + m * procs;
    if (start(&cs[m]) != 0) finish(&cs[m], 0, "start");
  }
  struct epoll_event evs[256];
  long active = mine;
  while (active > 0) {
    double t = now();
    if (t >= end) break;
    int n = epoll_wait(ep, evs, 256, (int)((end - t) * 1e3) + 1);
    if (n < 0 && errno == EINTR) continue;
    for (int e = 0; e < n; e++) {
      struct client *c = evs[e].data.ptr;
      step(c);
      if (c->fd < 0) {
        if (loop_mode && now() < end) {
          if (start(c) != 0) finish(c, 0, "start");
        } else {
          active--;
        }
      }
    }
  }
  fprintf(out, "s %ld %ld %ld\n", ok_count, fail_count, ok_after_cut);
}

static void usage(void) {
  fprintf(stderr, "usage: burst --proxy IP:PORT --ca FILE [--host-fmt FMT] [--host-base N] "
                  "[--hosts N] [--port N] [--path P] [--clients N] [--seconds S --cut C] "
                  "[--timeout S] [--procs N] [--keepalive 0|1] [-v]\n");
  exit(2);
}

static void print_array(const char *name, double *a, int n, int last) {
  printf("\"%s\":[", name);
  int first = 1;
  for (int i = 0; i < n; i++) {
    if (a[i] < 0) continue;
    printf("%s%.3f", first ? "" : ",", a[i]);
    first = 0;
  }
  printf("]%s", last ? "" : ",");
}

int main(int argc, char **argv) {
  const char *proxy = NULL, *ca = NULL;
  int clients = 500, procs = 2;
  double seconds = 0, cut = 0, timeout = 120;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-v")) {
      verbose = 1;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (!strcmp(a, "--proxy"))
      proxy = v;
    else if (!strcmp(a, "--ca"))
      ca = v;
    else if (!strcmp(a, "--host-fmt"))
      host_fmt = v;
    else if (!strcmp(a, "--host-base"))
      host_base = atoi(v);
    else if (!strcmp(a, "--hosts"))
      nhosts = atoi(v);
    else if (!strcmp(a, "--port"))
      port = atoi(v);
    else if (!strcmp(a, "--path"))
      path = v;
    else if (!strcmp(a, "--clients"))
      clients = atoi(v);
    else if (!strcmp(a, "--seconds"))
      seconds = atof(v);
    else if (!strcmp(a, "--cut"))
      cut = atof(v);
    else if (!strcmp(a, "--timeout"))
      timeout = atof(v);
    else if (!strcmp(a, "--procs"))
      procs = atoi(v);
    else if (!strcmp(a, "--keepalive"))
      keepalive = atoi(v);
    else
      usage();
  }
  if (!proxy || !ca || clients < 1 || nhosts < 1) usage();
  char ip[64];
  const char *colon = strrchr(proxy, ':');
  if (!colon || (size_t)(colon - proxy) >= sizeof ip) usage();
  memcpy(ip, proxy, (size_t)(colon - proxy));
  ip[colon - proxy] = 0;
  proxy_addr.sin_family = AF_INET;
  proxy_addr.sin_port = htons((unsigned short)atoi(colon + 1));
  if (inet_pton(AF_INET, ip, &proxy_addr.sin_addr) != 1) usage();

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
    fprintf(stderr, "burst: cannot load CA %s\n", ca);
    return 2;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* every handshake a full one */
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

  loop_mode = seconds > 0;
  if (procs < 1 || procs > clients) procs = clients < 2 ? 1 : 2;
  int go[2];
  if (pipe(go) != 0) {
    perror("pipe");
    return 2;
  }
  int *res = calloc((size_t)procs, sizeof *res);
  pid_t *kids = calloc((size_t)procs, sizeof *kids);
  for (int k = 0; k < procs; k++) {
    int fds[2];
    if (pipe(fds) != 0) {
      perror("pipe");
      return 2;
    }
    kids[k] = fork();
    if (kids[k] < 0) {
      perror("fork");
      return 2;
    }
    if (kids[k] == 0) {
      close(fds[0]);
      close(go[1]);
      char b;
      if (read(go[0], &b, 1) < 0) _exit(2); /* EOF: the parent closed it, everybody starts */
      FILE *out = fdopen(fds[1], "w");
      run_part(k, procs, clients, seconds, cut, timeout, out);
      fclose(out);
      _exit(0);
    }
    close(fds[1]);
    res[k] = fds[0];
  }
  close(go[0]);
  hs_ms = malloc(sizeof(double) * (size_t)clients);
  ttfb_ms = malloc(sizeof(double) * (size_t)clients);
  total_ms = malloc(sizeof(double) * (size_t)clients);
  for (int i = 0; i < clients; i++)
    hs_ms[i] = ttfb_ms[i] = total_ms[i] = -1;
  double t0 = now();
  close(go[1]); /* go */
  long counted = 0;
  for (int k = 0; k < procs; k++) {
    FILE *in = fdopen(res[k], "r");
    char line[256];
    while (fgets(line, sizeof line, in)) {
      int i;
      double a, b, c;
      long ok, failed, cnt;
      if (sscanf(line, "r %d %lf %lf %lf", &i, &a, &b, &c) == 4 && i >= 0 && i < clients) {
        hs_ms[i] = a, ttfb_ms[i] = b, total_ms[i] = c;
      } else if (sscanf(line, "s %ld %ld %ld", &ok, &failed, &cnt) == 3) {
        ok_count += ok, fail_count += failed, counted += cnt;
      }
    }
    fclose(in);
  }
  for (int k = 0; k < procs; k++)
    waitpid(kids[k], NULL, 0);
  double wall = now() - t0;
  if (loop_mode) {
    double span = seconds - cut;
    printf("{\"ok\":%ld,\"failed\":%ld,\"seconds\":%.3f,\"cut\":%.3f,\"counted\":%ld,"
           "\"conn_s\":%.2f,\"procs\":%d}\n",
           ok_count, fail_count, seconds, cut, counted, span > 0 ? counted / span : 0, procs);
  } else {
    long unfinished = clients - ok_count - fail_count;
    printf("{\"ok\":%ld,\"failed\":%ld,\"unfinished\":%ld,\"wall_ms\":%.3f,\"procs\":%d,", ok_count,
           fail_count, unfinished, wall * 1e3, procs);
    print_array("handshake_ms", hs_ms, clients, 0);
    print_array("ttfb_ms", ttfb_ms, clients, 0);
    print_array("total_ms", total_ms, clients, 1);
    printf("}\n");
  }
  return 0;
}
