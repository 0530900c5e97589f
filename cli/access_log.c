/* The access log writer: see access_log.h. */
#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define FLUSH_AT (64 * 1024)        /* write once this much waits */
#define FLUSH_MS 1000               /* or after a second */
#define MAX_PENDING (8 * 1024 * 1024) /* beyond this, lines are dropped (and counted) */
#define LINE_MAX_LEN (32 * 1024) /* a 4 KiB URL escaped at worst */

static int open_file(const char *path, int *fd, char *err, size_t errlen) {
  if (strcmp(path, "-") == 0) {
    *fd = STDERR_FILENO;
    return 0;
  }
  *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (*fd < 0) {
    snprintf(err, errlen, "access_log \"%s\": %s", path, strerror(errno));
    return -errno;
  }
  return 0;
}

static void flush(struct access_log *a);

static void reopen_now(struct access_log *a) {
  char err[600];
  int fd;
  a->reopen = 0;
  if (a->fd == STDERR_FILENO) return;
  if (open_file(a->path, &fd, err, sizeof(err)) != 0) {
    log_line(DDUCT_LOG_ERROR, "access_log", "%s; still writing the old file", err);
    return;
  }
  close(a->fd);
  a->fd = fd;
  log_line(DDUCT_LOG_INFO, "access_log", "Reopened \"%s\"", a->path);
}

static void write_cb(uv_fs_t *req) {
  struct access_log *a = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  if (n < 0) {
    log_line(DDUCT_LOG_ERROR, "access_log", "writing \"%s\": %s", a->path, uv_strerror((int)n));
    a->woff = a->wlen; /* lost: the next batch goes on */
  } else {
    a->woff += (size_t)n;
  }
  a->writing = 0;
  if (a->woff < a->wlen) { /* short write: the rest first */
    uv_buf_t b = uv_buf_init(a->wbuf + a->woff, (unsigned)(a->wlen - a->woff));
    a->writing = uv_fs_write(a->loop, &a->req, a->fd, &b, 1, -1, write_cb) == 0;
    if (a->writing) return;
  }
  a->wlen = a->woff = 0;
  if (a->reopen) reopen_now(a);
  if (a->len >= FLUSH_AT) flush(a);
}

static void flush(struct access_log *a) {
  char *t = a->wbuf;
  size_t tc = a->wcap;
  uv_buf_t b;
  if (a->writing || a->len == 0) return;
  a->wbuf = a->buf;
  a->wcap = a->cap;
  a->wlen = a->len;
  a->woff = 0;
  a->buf = t;
  a->cap = tc;
  a->len = 0;
  b = uv_buf_init(a->wbuf, (unsigned)a->wlen);
  a->req.data = a;
  a->writing = uv_fs_write(a->loop, &a->req, a->fd, &b, 1, -1, write_cb) == 0;
  if (!a->writing) a->wlen = 0;
}

static void timer_cb(uv_timer_t *t) {
  flush(t->data);
}

int access_log_open(struct access_log *a, uv_loop_t *loop, const char *path, char *err,
                    size_t errlen) {
  int rc;
  memset(a, 0, sizeof(*a));
  a->fd = -1;
  if ((a->path = strdup(path)) == NULL) return UV_ENOMEM;
  if ((rc = open_file(path, &a->fd, err, errlen)) != 0) {
    free(a->path);
    a->path = NULL;
    return rc;
  }
  a->loop = loop;
  uv_timer_init(loop, &a->timer);
  a->timer.data = a;
  a->timer_open = 1;
  uv_timer_start(&a->timer, timer_cb, FLUSH_MS, FLUSH_MS);
  uv_unref((uv_handle_t *)&a->timer);
  return 0;
}

/* Room for one more line: the buffer grows up to MAX_PENDING while the disk is slow. */
static int reserve(struct access_log *a) {
  size_t cap;
  char *b;
  if (a->cap - a->len >= LINE_MAX_LEN) return 0;
  cap = a->cap ? a->cap * 2 : FLUSH_AT + LINE_MAX_LEN;
  if (cap > MAX_PENDING || (b = realloc(a->buf, cap)) == NULL) return -1;
  a->buf = b;
  a->cap = cap;
  return 0;
}

void access_log_record(void *user_data, const struct dduct_access_record *r) {
  struct access_log *a = user_data;
  size_t n;
  if (a->fd < 0 || reserve(a) != 0) {
    a->dropped++;
    return;
  }
  n = dduct_access_record_json(r, a->buf + a->len, a->cap - a->len);
  if (n >= a->cap - a->len) { /* longer than LINE_MAX_LEN: cannot happen with 4 KiB URLs */
    a->dropped++;
    return;
  }
  a->len += n;
  if (a->len >= FLUSH_AT) flush(a);
}

void access_log_reopen(struct access_log *a) {
  if (a->fd < 0) return;
  a->reopen = 1;
  flush(a); /* what was logged before the signal goes to the old file */
  if (!a->writing) reopen_now(a);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= (size_t)w;
  }
}

void access_log_close(struct access_log *a) {
  if (a->fd < 0) return;
  /* Called once the loop has no write in flight (after the proxy closed and the loop ran). */
  if (a->woff < a->wlen) write_all(a->fd, a->wbuf + a->woff, a->wlen - a->woff);
  write_all(a->fd, a->buf, a->len);
  if (a->dropped > 0)
    log_line(DDUCT_LOG_WARN, "access_log", "%llu lines dropped: the disk did not keep up",
             (unsigned long long)a->dropped);
  if (a->fd != STDERR_FILENO) close(a->fd);
  a->fd = -1;
  if (a->timer_open) uv_close((uv_handle_t *)&a->timer, NULL);
  a->timer_open = 0;
  free(a->buf);
  free(a->wbuf);
  free(a->path);
  a->buf = a->wbuf = a->path = NULL;
}
