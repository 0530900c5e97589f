/* The bottom of every stream chain: a TCP socket. What the kernel takes at once is written from the
 * caller's buffer; the rest is copied into one heap block per write (request + bytes) that lives
 * until libuv's write callback.
 *
 * Write callbacks without a syscall. A write the kernel took whole (uv_try_write) has no libuv
 * request whose callback could keep the "fires later, in write order" promise; an empty uv_write
 * for it cost a zero-byte write() and a POLLOUT epoll_ctl on every small answer. Instead every
 * write that needs a callback (and every uv_write) gets a node in one FIFO per stream, in write
 * order. A node backed by a uv_write is done when libuv's callback for it runs; a node whose bytes
 * the kernel already took is done at once. Callbacks run only from the head of the FIFO and only
 * while the head is done, so they fire in write order by construction, whatever phase libuv
 * completes a request in (pending phase of the next turn for a request finished inside uv_write,
 * poll phase for one finished later): a done node behind a request in flight waits for that
 * request's callback, which first delivers everything queued before it (libuv completes one
 * stream's requests in order). A done head with no request before it is delivered by the
 * stream's idle handle in the next loop turn: an active idle handle makes that turn's poll
 * non-blocking, the handle stops itself once the head is empty or waits on a request (so the
 * poll after it may block), and uv__run_idle runs a handle started during the idle phase only in
 * the turn after, so callbacks that keep writing cannot spin one turn forever. Neither path runs
 * inside write(): uv_write never calls back synchronously and the idle handle runs from the
 * loop. After close no node calls back: the nodes are freed with the stream. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "stream.h"

#define TCP_READ_BUF (64 * 1024)

/* One read buffer per thread, shared by all of its loop's sockets: libuv reads into it and calls
 * read_cb before it asks for a buffer again (a loop never reads two sockets at once), and every
 * read_cb copies or consumes what it keeps before it returns. Per stream it cost 64 KiB of RSS
 * per connection (zeroed by calloc, so touched), 3 MiB of a 50-client stampede. */
static _Thread_local char *read_buf;
static pthread_key_t read_buf_key; /* frees a thread's buffer when that thread exits */
static pthread_once_t read_buf_once = PTHREAD_ONCE_INIT;
static int read_buf_keyed;

static void read_buf_key_init(void) {
  read_buf_keyed = pthread_key_create(&read_buf_key, free) == 0;
}

struct tcp_write;

struct tcp_stream {
  struct dduct_stream s;
  uv_tcp_t tcp;
  uv_idle_t kick;         /* delivers a done FIFO head (see top) */
  struct tcp_write *head; /* the write FIFO, in write order */
  struct tcp_write *tail;
  size_t queued;    /* bytes handed to uv_write and not yet written */
  int open_handles; /* tcp + kick: the block is freed when both close callbacks ran */
  int shut;
};

struct tcp_write {
  uv_write_t req; /* unused by a node whose bytes the kernel took at once */
  struct tcp_stream *t;
  struct tcp_write *next;
  dduct_stream_write_cb cb;
  void *arg;
  size_t len; /* bytes in data, counted in t->queued until the request completes */
  int done;
  int status;
  char data[];
};

static void kick_cb(uv_idle_t *h);

static void append(struct tcp_stream *t, struct tcp_write *w) {
  w->next = NULL;
  if (t->tail != NULL) t->tail->next = w;
  else t->head = w;
  t->tail = w;
}

/* The idle handle runs exactly while the FIFO head is done: nothing else would deliver it. */
static void update_kick(struct tcp_stream *t) {
  if (!t->s.closing && t->head != NULL && t->head->done) uv_idle_start(&t->kick, kick_cb);
  else uv_idle_stop(&t->kick);
}

/* Deliver done nodes from the head, up to and including last (the tail when the delivery began:
 * nodes written by these callbacks wait for the next turn). A callback may write (appends
 * behind last) or close the stream (the rest is then only freed: the block itself lives until
 * the close callbacks, which run in a later phase). */
static void deliver(struct tcp_stream *t, const struct tcp_write *last) {
  struct tcp_write *w;
  int end = 0;
  while (!end && t->head != NULL && t->head->done) {
    w = t->head;
    end = w == last;
    t->head = w->next;
    if (t->head == NULL) t->tail = NULL;
    if (!t->s.closing && w->cb != NULL) w->cb(&t->s, w->status, w->arg);
    free(w);
  }
  update_kick(t);
}

static void kick_cb(uv_idle_t *h) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(h, struct tcp_stream, kick);
  deliver(t, t->tail);
}

static void tcp_write_cb(uv_write_t *req, int status) {
  struct tcp_write *w = DDUCT_CONTAINER_OF(req, struct tcp_write, req);
  struct tcp_stream *t = w->t;
  t->queued -= w->len;
  w->done = 1;
  w->status = status;
  deliver(t, t->tail);
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
  w = malloc(sizeof(*w) + (len - sent));
  if (w == NULL) return DDUCT_ENOMEM;
  w->t = t;
  w->cb = cb;
  w->arg = arg;
  w->len = len - sent;
  w->status = 0;
  w->done = sent == len; /* the kernel took it all: only the callback is left (see top) */
  if (!w->done) {
    memcpy(w->data, data + sent, len - sent);
    buf = uv_buf_init(w->data, (unsigned)(len - sent));
    rc = uv_write(&w->req, (uv_stream_t *)&t->tcp, &buf, 1, tcp_write_cb);
    if (rc != 0) {
      free(w);
      return rc;
    }
    t->queued += len - sent;
  }
  append(t, w);
  if (w->done && t->head == w) uv_idle_start(&t->kick, kick_cb);
  return 0;
}

/* Allocated at the thread's first read and kept for its life (an embedder's loop thread that
 * exits frees it through the key's destructor; the main thread's goes with the process): a NULL
 * base makes libuv report UV_ENOBUFS to read_cb if even that fails. */
static void tcp_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  if (read_buf == NULL && (read_buf = malloc(TCP_READ_BUF)) != NULL) {
    (void)pthread_once(&read_buf_once, read_buf_key_init);
    if (read_buf_keyed) (void)pthread_setspecific(read_buf_key, read_buf);
  }
  *buf = uv_buf_init(read_buf, read_buf != NULL ? TCP_READ_BUF : 0);
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

/* libuv has completed the socket's requests (UV_ECANCELED, callbacks dropped) before its close
 * callback; what is left are done nodes nobody delivered. */
static void handle_closed(struct tcp_stream *t) {
  struct tcp_write *w;
  if (--t->open_handles > 0) return;
  if (t->s.close_cb != NULL) t->s.close_cb(&t->s);
  while ((w = t->head) != NULL) {
    t->head = w->next;
    free(w);
  }
  free(t);
}

static void tcp_close_cb(uv_handle_t *h) {
  handle_closed(DDUCT_CONTAINER_OF(h, struct tcp_stream, tcp));
}

static void kick_close_cb(uv_handle_t *h) {
  handle_closed(DDUCT_CONTAINER_OF(h, struct tcp_stream, kick));
}

static void tcp_close(struct dduct_stream *s) {
  struct tcp_stream *t = DDUCT_CONTAINER_OF(s, struct tcp_stream, s);
  t->open_handles = 2;
  uv_close((uv_handle_t *)&t->tcp, tcp_close_cb);
  uv_close((uv_handle_t *)&t->kick, kick_close_cb);
}

static size_t tcp_queued(const struct dduct_stream *s) {
  const struct tcp_stream *t = DDUCT_CONTAINER_OF(s, const struct tcp_stream, s);
  return t->queued;
}

static const struct dduct_stream_vt tcp_vt = {
    tcp_write, tcp_read_start, tcp_read_stop, tcp_shutdown, tcp_close, tcp_queued, NULL,
};

struct dduct_stream *dduct__tcp_stream_new(uv_loop_t *loop) {
  struct tcp_stream *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  if (uv_tcp_init(loop, &t->tcp) != 0) {
    free(t);
    return NULL;
  }
  uv_idle_init(loop, &t->kick); /* cannot fail on unix */
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

int dduct__stream_query(struct dduct_stream *s, enum dduct_stream_query what, void *out) {
  return s->vt->query != NULL ? s->vt->query(s, what, out) : DDUCT_EINVAL;
}

const char *dduct__stream_query_str(struct dduct_stream *s, enum dduct_stream_query what,
                                    const char *fallback) {
  const char *v = NULL;
  return dduct__stream_query(s, what, &v) == 0 && v != NULL ? v : fallback;
}
