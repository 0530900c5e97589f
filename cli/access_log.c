/* The access log writer: see access_log.h.
 *
 * Why write() on the loop rather than libuv's thread pool: on a busy 2-core host the pool thread
 * competes with the loop for a core, a hand-off took long enough for the next batch to grow to
 * megabytes (bench: +11 MiB peak RSS at 20k requests/s), and appending 64 KiB to the page cache
 * costs the loop ~20 us, once per ~280 requests of 4 KiB hits. */
#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define FLUSH_AT (64 * 1024)     /* write once this much waits */
#define FLUSH_MS 1000            /* or after a second */
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

/* One write of everything gathered (a short write goes on; an error loses the batch, counted). */
static void flush(struct access_log *a) {
  size_t off = 0;
  while (off < a->len) {
    ssize_t n = write(a->fd, a->buf + off, a->len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      uint64_t now = uv_hrtime() / 1000000000u;
      for (const char *p = a->buf + off; p < a->buf + a->len; p++) a->lost += *p == '\n';
      if (now != a->last_err_log) { /* at most once a second */
        a->last_err_log = now;
        log_line(DDUCT_LOG_ERROR, "access_log", "writing \"%s\": %s (%llu lines lost so far)",
                 a->path, n < 0 ? strerror(errno) : "no progress",
                 (unsigned long long)a->lost);
      }
      break;
    }
    off += (size_t)n;
  }
  a->len = 0;
}

static void timer_cb(uv_timer_t *t) {
  struct access_log *a = t->data;
  uv_mutex_lock(&a->mu);
  if (a->len > 0) flush(a);
  uv_mutex_unlock(&a->mu);
}

int access_log_open(struct access_log *a, uv_loop_t *loop, const char *path, char *err,
                    size_t errlen) {
  int rc;
  memset(a, 0, sizeof(a[0]));
  a->fd = -1;
  if ((a->path = strdup(path)) == NULL || (a->buf = malloc(FLUSH_AT + LINE_MAX_LEN)) == NULL) {
    free(a->path);
    snprintf(err, errlen, "access_log: out of memory");
    return UV_ENOMEM;
  }
  if ((rc = open_file(path, &a->fd, err, errlen)) != 0) {
    free(a->path);
    free(a->buf);
    return rc;
  }
  if ((rc = uv_mutex_init(&a->mu)) != 0) {
    snprintf(err, errlen, "access_log: %s", uv_strerror(rc));
    if (a->fd != STDERR_FILENO) close(a->fd);
    a->fd = -1;
    free(a->path);
    free(a->buf);
    return rc;
  }
  uv_timer_init(loop, &a->timer);
  a->timer.data = a;
  a->timer_open = 1;
  uv_timer_start(&a->timer, timer_cb, FLUSH_MS, FLUSH_MS);
  uv_unref((uv_handle_t *)&a->timer);
  return 0;
}

void access_log_record(void *user_data, const struct dduct_access_record *r) {
  struct access_log *a = user_data;
  size_t room, n;
  uv_mutex_lock(&a->mu);
  room = FLUSH_AT + LINE_MAX_LEN - a->len;
  n = dduct_access_record_json(r, a->buf + a->len, room);
  if (n >= room) { /* longer than LINE_MAX_LEN: cannot happen with URLs cut at 4 KiB */
    a->lost++;
  } else {
    a->len += n;
    if (a->len >= FLUSH_AT) flush(a);
  }
  uv_mutex_unlock(&a->mu);
}

void access_log_reopen(struct access_log *a) {
  char err[600];
  int fd;
  if (a->fd < 0 || a->fd == STDERR_FILENO) return;
  uv_mutex_lock(&a->mu);
  if (a->len > 0) flush(a); /* what was logged before the signal goes to the old file */
  if (open_file(a->path, &fd, err, sizeof(err)) != 0) {
    uv_mutex_unlock(&a->mu);
    log_line(DDUCT_LOG_ERROR, "access_log", "%s; still writing the old file", err);
    return;
  }
  close(a->fd);
  a->fd = fd;
  uv_mutex_unlock(&a->mu);
  log_line(DDUCT_LOG_INFO, "access_log", "Reopened \"%s\"", a->path);
}

void access_log_close(struct access_log *a) {
  if (a->fd < 0) return;
  if (a->len > 0) flush(a);
  if (a->fd != STDERR_FILENO) close(a->fd);
  a->fd = -1;
  if (a->timer_open) uv_close((uv_handle_t *)&a->timer, NULL);
  a->timer_open = 0;
  free(a->buf);
  free(a->path);
  a->buf = a->path = NULL;
  uv_mutex_destroy(&a->mu);
}
