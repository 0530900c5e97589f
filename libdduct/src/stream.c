/* The bottom of every stream chain: a TCP socket. What the kernel takes at once is written from the
 * caller's buffer; the rest is copied into one heap block per write (request + bytes) that lives
 * until libuv's write callback. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "stream.h"

#define TCP_READ_BUF (64 * 1024)

struct tcp_stream {
  struct dduct_stream s;
  uv_tcp_t tcp;
  size_t queued; /* bytes handed to uv_write and not yet written */
  int shut;
  char rbuf[TCP_READ_BUF]; /* one read at a time: uv delivers before the next alloc */
};

struct tcp_write {
  uv_write_t req;
  struct tcp_stream *t;
  dduct_stream_write_cb cb;
  void *arg;
  size_t len;
  char data[];
};

static void tcp_write_cb(uv_write_t *req, int status) {
  struct tcp_write *w = DDUCT_CONTAINER_OF(req, struct tcp_write, req);
  struct tcp_stream *t = w->t;
  t->queued -= w->len;
  if (!t->s.closing && w->cb != NULL) w->cb(&t->s, status, w->arg);
  free(w);
}

static int tcp_write(struct dduct_stream *s, const char *data, size_t len,
                     dduct_stream_write_cb cb, void *arg) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  struct tcp_write *w;
  uv_buf_t buf;
  size_t sent = 0;
  int rc;

  if (s->closing || t->shut) return DDUCT_ECLOSED;
  /* Nothing queued: hand the bytes to the kernel straight from the caller's buffer, and copy
   * only what it did not take (often nothing for a small answer). Order is kept because we try
   * only behind an empty queue. */
  if (t->queued == 0 && len > 0) {
    buf = uv_buf_init((char *)data, (unsigned)len);
    rc = uv_try_write((uv_stream_t *)&t->tcp, &buf, 1);
    if (rc > 0) sent = (size_t)rc; /* errors: uv_write below reports them as before */
  }
  if (sent == len && cb == NULL) return 0;
  /* The rest, or an empty write whose callback keeps the "bytes left" promise in order. */
  w = malloc(sizeof(*w) + (len - sent));
  if (w == NULL) return DDUCT_ENOMEM;
  w->t = t;
  w->cb = cb;
  w->arg = arg;
  w->len = len - sent;
  if (len > sent) memcpy(w->data, data + sent, len - sent);
  buf = uv_buf_init(w->data, (unsigned)(len - sent));
  rc = uv_write(&w->req, (uv_stream_t *)&t->tcp, &buf, 1, tcp_write_cb);
  if (rc != 0) {
    free(w);
    return rc;
  }
  t->queued += len - sent;
  return 0;
}

static void tcp_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(h, struct tcp_stream, tcp);
  *buf = uv_buf_init(t->rbuf, sizeof(t->rbuf));
}

static void tcp_read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(h, struct tcp_stream, tcp);
  if (nread == 0) return;
  if (nread < 0) {
    uv_read_stop(h);
    t->s.reading = 0;
  }
  if (!t->s.closing && t->s.read_cb != NULL) t->s.read_cb(&t->s, nread, buf->base);
}

static int tcp_read_start(struct dduct_stream *s) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  return uv_read_start((uv_stream_t *)&t->tcp, tcp_alloc_cb, tcp_read_cb);
}

static void tcp_read_stop(struct dduct_stream *s) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  uv_read_stop((uv_stream_t *)&t->tcp);
}

static void tcp_shutdown_cb(uv_shutdown_t *req, int status) {
  free(req);
}

static int tcp_shutdown(struct dduct_stream *s) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  uv_shutdown_t *req;
  int rc;
  if (t->shut || s->closing) return 0;
  req = malloc(sizeof(*req));
  if (req == NULL) return DDUCT_ENOMEM;
  rc = uv_shutdown(req, (uv_stream_t *)&t->tcp, tcp_shutdown_cb);
  if (rc != 0) {
    free(req);
    return rc;
  }
  t->shut = 1;
  return 0;
}

static void tcp_close_cb(uv_handle_t *h) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(h, struct tcp_stream, tcp);
  if (t->s.close_cb != NULL) t->s.close_cb(&t->s);
  free(t);
}

static void tcp_close(struct dduct_stream *s) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  uv_close((uv_handle_t *)&t->tcp, tcp_close_cb);
}

static size_t tcp_queued(const struct dduct_stream *s) {
  const struct tcp_stream *t = DDUCT_CONTAINER_OF(s, const struct tcp_stream, s);
  return t->queued;
}

static const struct dduct_stream_vt tcp_vt = {
    tcp_write, tcp_read_start, tcp_read_stop, tcp_shutdown, tcp_close, tcp_queued,
};

struct dduct_stream *dduct__tcp_stream_new(uv_loop_t *loop) {
  struct tcp_stream *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  if (uv_tcp_init(loop, &t->tcp) != 0) {
    free(t);
    return NULL;
  }
  t->s.vt = &tcp_vt;
  t->s.loop = loop;
  return &t->s;
}

uv_tcp_t *dduct__tcp_stream_handle(struct dduct_stream *s) {
  return &DDUCT_CONTAINER_OF(s, struct tcp_stream, s)->tcp;
}

/* ---- generic entry points ---------------------------------------------------------------- */

int dduct__stream_write(struct dduct_stream *s, const char *data, size_t len,
                        dduct_stream_write_cb cb, void *arg) {
  if (s->closing) return DDUCT_ECLOSED;
  return s->vt->write(s, data, len, cb, arg);
}

int dduct__stream_read_start(struct dduct_stream *s, dduct_stream_read_cb cb) {
  int rc;
  if (s->closing) return DDUCT_ECLOSED;
  s->read_cb = cb;
  if (s->reading) return 0;
  rc = s->vt->read_start(s);
  if (rc == 0) s->reading = 1;
  return rc;
}

void dduct__stream_read_stop(struct dduct_stream *s) {
  if (!s->reading || s->closing) return;
  s->reading = 0;
  s->vt->read_stop(s);
}

int dduct__stream_shutdown(struct dduct_stream *s) {
  if (s->closing) return DDUCT_ECLOSED;
  return s->vt->shutdown(s);
}

void dduct__stream_close(struct dduct_stream *s, dduct_stream_close_cb cb) {
  if (s->closing) return;
  s->closing = 1;
  s->close_cb = cb;
  s->vt->close(s);
}

size_t dduct__stream_queued(const struct dduct_stream *s) {
  return s->vt->queued(s);
}
