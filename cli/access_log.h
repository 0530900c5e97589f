/* The access log ([misc] access_log): one JSON line per request (dduct_access_record_json),
 * gathered in one fixed buffer and written with one write() once 64 KiB wait or once a second,
 * so the loop makes one system call per few hundred requests, never one per request. "-" is
 * stderr. Reopened on SIGHUP (logrotate). Records come from every event loop's thread (workers):
 * a mutex guards the buffer and the file. */
#ifndef DDUCT_CLI_ACCESS_LOG_H
#define DDUCT_CLI_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "dduct.h"

struct access_log {
  uv_mutex_t mu;      /* the buffer, fd and counters below */
  char *path;
  int fd;
  char *buf;          /* FLUSH_AT + one line at most */
  size_t len;
  int timer_open;
  uv_timer_t timer;
  uint64_t lost;      /* lines a failed write lost */
  uint64_t last_err_log;
};

/* Open path for appending (created 0640). On failure writes a message naming the file. */
int access_log_open(struct access_log *a, uv_loop_t *loop, const char *path, char *err,
                    size_t errlen);
/* dduct_proxy_options.access_cb. */
void access_log_record(void *user_data, const struct dduct_access_record *r);
/* Write what waits, then reopen the file (SIGHUP); a no-op for stderr. */
void access_log_reopen(struct access_log *a);
/* Write what is left, close the file and the timer (its close runs on the loop). */
void access_log_close(struct access_log *a);

#endif
