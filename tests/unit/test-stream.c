/* The TCP stream at the bottom of every chain, on real sockets over 127.0.0.1: a writer stream
 * with a small send buffer and a raw, non-blocking reader socket the test drains at its own pace.
 * Writes the kernel takes whole (their callback is deferred without a syscall) are mixed with
 * writes it cannot take at once (uv_write), zero-length writes, and writes issued from callbacks.
 * Every callback must fire exactly once, in write order, never inside write(), never after
 * close; the bytes must arrive complete and in order; close with callbacks pending, close from a
 * callback and shutdown after deferred callbacks must behave. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "stream.h"
#include "tap.h"

#define SMALL 100
#define LARGE (200 * 1024)
#define SPIN_CAP 20000000L /* loop turns before a test gives up (a hang is a failure) */

static uv_loop_t loop;

static struct dduct_stream *s;
static int rfd = -1;       /* the reader's socket */
static size_t wpos, rpos;  /* bytes written by the test / read and checked by the reader */
static int pattern_ok;

static int in_write;       /* inside dduct__stream_write */
static int closed;         /* dduct__stream_close was called */
static int nwrites;        /* writes issued with a callback: their index is their order */
static int ncbs;           /* callbacks seen */
static int order_bad, reentrant, after_close, bad_status, close_cbs;
static int close_at = -1;  /* the callback with this index closes the stream */
static int chain_left;     /* callbacks that issue one more small write */

static unsigned char pat(size_t p) {
  return (unsigned char)(p * 7u + p / 251u);
}

static void close_cb(struct dduct_stream *st) {
  close_cbs++;
}

static int do_write(size_t len, int with_cb);

static void write_cb(struct dduct_stream *st, int status, void *arg) {
  int idx = (int)(intptr_t)arg;
  if (in_write) reentrant++;
  if (closed) after_close++;
  if (idx != ncbs) order_bad++;
  if (status != 0) bad_status++;
  ncbs++;
  if (chain_left > 0) {
    chain_left--;
    do_write(SMALL, 1);
  }
  if (idx == close_at) {
    closed = 1;
    dduct__stream_close(s, close_cb);
  }
}

static int do_write(size_t len, int with_cb) {
  char *buf = malloc(len > 0 ? len : 1);
  size_t i;
  int rc;
  for (i = 0; i < len; i++) buf[i] = (char)pat(wpos + i);
  in_write = 1;
  rc = dduct__stream_write(s, buf, len, with_cb ? write_cb : NULL,
                           (void *)(intptr_t)nwrites);
  in_write = 0;
  free(buf); /* writes copy what they keep */
  if (rc == 0) {
    wpos += len;
    if (with_cb) nwrites++;
  }
  return rc;
}

/* Read up to max bytes the kernel holds for the reader and check them against the pattern. */
static size_t read_some(size_t max) {
  char buf[8192];
  size_t got = 0;
  while (got < max) {
    size_t want = max - got < sizeof(buf) ? max - got : sizeof(buf);
    ssize_t n = read(rfd, buf, want);
    ssize_t i;
    if (n <= 0) break;
    for (i = 0; i < n; i++)
      if ((unsigned char)buf[i] != pat(rpos + (size_t)i)) pattern_ok = 0;
    rpos += (size_t)n;
    got += (size_t)n;
  }
  return got;
}

/* What the kernel holds after the last callback: the bytes already left the writer. */
static void read_all(void) {
  long spins = 0;
  while (rpos < wpos && spins++ < SPIN_CAP) read_some(65536);
}

static void new_pair(int sndbuf, int rcvbuf) {
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int cfd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* Small buffers so that a large write cannot be taken at once. The receive buffer is set on
   * the listener so the accepted socket's window is small from the handshake on. */
  setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
  setsockopt(cfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1) != 0 ||
      getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0 ||
      connect(cfd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    perror("socket pair");
    exit(1);
  }
  rfd = accept(lfd, NULL, NULL);
  close(lfd);
  fcntl(rfd, F_SETFL, fcntl(rfd, F_GETFL) | O_NONBLOCK);
  s = dduct__tcp_stream_new(&loop);
  if (s == NULL || uv_tcp_open(dduct__tcp_stream_handle(s), cfd) != 0) {
    fprintf(stderr, "tcp stream\n");
    exit(1);
  }
  wpos = rpos = 0;
  pattern_ok = 1;
  in_write = closed = nwrites = ncbs = 0;
  order_bad = reentrant = after_close = bad_status = close_cbs = 0;
  close_at = -1;
  chain_left = 0;
}

/* Turn the loop and drain the reader (chunk bytes per turn) until every callback fired. */
static int pump(size_t chunk) {
  long spins = 0;
  while ((ncbs < nwrites || chain_left > 0) && !closed && spins++ < SPIN_CAP) {
    uv_run(&loop, UV_RUN_NOWAIT);
    read_some(chunk);
  }
  return ncbs == nwrites;
}

static void end_pair(void) {
  long spins = 0;
  if (!closed) {
    closed = 1;
    dduct__stream_close(s, close_cb);
  }
  while (close_cbs == 0 && spins++ < SPIN_CAP) uv_run(&loop, UV_RUN_NOWAIT);
  close(rfd);
  rfd = -1;
}

static void test_order(void) {
  int round, deferred_seen = 0, queued_seen = 0, total;
  new_pair(16 * 1024, 16 * 1024);
  for (round = 0; round < 30; round++) {
    int before = ncbs;
    /* The kernel takes a small write whole when nothing is queued: no request, the callback is
     * deferred, and it has not fired yet when write() returns. */
    do_write(SMALL, 1);
    if (dduct__stream_queued(s) == 0 && ncbs == before) deferred_seen++;
    do_write(SMALL, 1);
    do_write(0, 1);
    do_write(SMALL, 0);
    do_write(LARGE, 1); /* more than the buffers hold: the rest goes through uv_write */
    if (dduct__stream_queued(s) > 0) queued_seen++;
    do_write(SMALL, 1); /* behind the queue: appended to it */
    do_write(0, 1);     /* zero bytes behind a request in flight */
    if (round % 3 == 0) chain_left = 5; /* callbacks write too */
    if (!pump(round % 2 ? 8192 : 65536)) break;
  }
  CHECK_EQ_INT(round, 30, "every callback of every round fired");
  total = nwrites;
  read_all();
  CHECK(deferred_seen >= 20, "small writes were taken whole, their callbacks deferred");
  CHECK(queued_seen >= 20, "large writes went through uv_write");
  CHECK_EQ_INT(ncbs, total, "each callback fired exactly once");
  CHECK_EQ_INT(order_bad, 0, "callbacks fired in write order");
  CHECK_EQ_INT(reentrant, 0, "no callback ran inside write()");
  CHECK_EQ_INT(bad_status, 0, "all writes succeeded");
  CHECK_EQ_INT(dduct__stream_queued(s), 0, "nothing queued once all callbacks fired");
  CHECK(rpos == wpos && pattern_ok, "the reader got every byte, in order");
  end_pair();
  CHECK_EQ_INT(ncbs, total, "closing an idle stream fires no write callback");
  CHECK_EQ_INT(close_cbs, 1, "close callback once");
}

/* Callbacks that keep writing small writes the kernel takes whole: each new callback waits for a
 * later loop turn instead of being run by the delivery that ran its writer (that would starve
 * the loop as long as the kernel keeps taking bytes). One uv_run(NOWAIT) is one turn. */
static void test_chain(void) {
  long spins = 0;
  int most = 0;
  new_pair(1024 * 1024, 1024 * 1024);
  do_write(SMALL, 1);
  chain_left = 1000;
  while ((ncbs < nwrites || chain_left > 0) && spins++ < SPIN_CAP) {
    int before = ncbs;
    uv_run(&loop, UV_RUN_NOWAIT);
    if (ncbs - before > most) most = ncbs - before;
    read_some(65536);
  }
  CHECK_EQ_INT(ncbs, 1001, "every chained callback fired");
  CHECK(most <= 2, "at most a couple of callbacks per loop turn");
  CHECK_EQ_INT(order_bad + reentrant + bad_status, 0, "chained callbacks in order, not re-entrant");
  read_all();
  CHECK(rpos == wpos && pattern_ok, "the reader got every chained byte");
  end_pair();
}

/* Close with deferred callbacks (and a request) pending: only the close callback fires. */
static void test_close_pending(void) {
  int i;
  new_pair(16 * 1024, 16 * 1024);
  for (i = 0; i < 3; i++) do_write(SMALL, 1);
  CHECK_EQ_INT(dduct__stream_queued(s), 0, "the small writes were taken whole");
  do_write(LARGE, 1);
  do_write(0, 1);
  CHECK(dduct__stream_queued(s) > 0, "a request is in flight");
  CHECK_EQ_INT(ncbs, 0, "no callback inside write()");
  closed = 1;
  dduct__stream_close(s, close_cb);
  CHECK(dduct__stream_write(s, "x", 1, write_cb, NULL) != 0, "no write after close");
  end_pair();
  CHECK_EQ_INT(ncbs, 0, "no write callback after close");
  CHECK_EQ_INT(close_cbs, 1, "close callback once");

  /* Only deferred callbacks pending. */
  new_pair(64 * 1024, 64 * 1024);
  do_write(SMALL, 1);
  do_write(0, 1);
  closed = 1;
  dduct__stream_close(s, close_cb);
  end_pair();
  CHECK_EQ_INT(ncbs, 0, "no deferred callback after close");
  CHECK_EQ_INT(close_cbs, 1, "close callback once (deferred only)");
}

/* A callback closes the stream: the callbacks behind it in the same delivery are dropped. */
static void test_close_in_cb(void) {
  long spins = 0;
  int i;
  new_pair(64 * 1024, 64 * 1024);
  for (i = 0; i < 5; i++) do_write(SMALL, 1);
  close_at = 1;
  while (close_cbs == 0 && spins++ < SPIN_CAP) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(ncbs, 2, "callbacks up to the closing one fired, none after");
  CHECK_EQ_INT(after_close, 0, "no callback after close");
  CHECK_EQ_INT(close_cbs, 1, "close callback once");
  close(rfd);
  rfd = -1;

  /* The same with a request in flight at the head and deferred writes behind it. */
  new_pair(16 * 1024, 16 * 1024);
  do_write(LARGE, 1);
  for (i = 0; i < 4; i++) do_write(0, 1);
  close_at = 2;
  spins = 0;
  while (close_cbs == 0 && spins++ < SPIN_CAP) {
    uv_run(&loop, UV_RUN_NOWAIT);
    read_some(16384);
  }
  CHECK_EQ_INT(ncbs, 3, "behind a request: up to the closing callback, none after");
  CHECK_EQ_INT(order_bad + after_close + reentrant, 0, "in order, never after close");
  CHECK_EQ_INT(close_cbs, 1, "close callback once (request at the head)");
  close(rfd);
  rfd = -1;
}

/* Shutdown after deferred callbacks: FIN follows the bytes the kernel already holds. */
static void test_shutdown(void) {
  long spins = 0;
  new_pair(64 * 1024, 64 * 1024);
  do_write(SMALL, 1);
  do_write(SMALL, 1);
  CHECK_EQ_INT(dduct__stream_shutdown(s), 0, "shutdown accepted");
  CHECK(dduct__stream_write(s, "x", 1, write_cb, NULL) != 0, "no write after shutdown");
  CHECK(pump(65536), "deferred callbacks fire after shutdown");
  for (;;) {
    char b[4096];
    ssize_t n = read(rfd, b, sizeof(b));
    if (n == 0) break;
    if (n > 0) {
      ssize_t i;
      for (i = 0; i < n; i++)
        if ((unsigned char)b[i] != pat(rpos + (size_t)i)) pattern_ok = 0;
      rpos += (size_t)n;
    } else if (errno != EAGAIN || spins++ > SPIN_CAP) {
      break;
    } else {
      uv_run(&loop, UV_RUN_NOWAIT);
    }
  }
  CHECK(rpos == 2 * SMALL && pattern_ok, "the reader got both writes, then EOF");
  CHECK_EQ_INT(ncbs, 2, "two callbacks");
  end_pair();
}

int main(void) {
  uv_loop_init(&loop);
  test_order();
  test_chain();
  test_close_pending();
  test_close_in_cb();
  test_shutdown();
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  return tap_done();
}
