/* The access log ([misc] access_log): one JSON line per request (dduct_access_record_json),
 * gathered in memory and written by libuv's thread pool once a second or once 64 KiB wait, so
 * the loop makes no system call per request. "-" is stderr. Reopened on SIGHUP (logrotate). */
#ifndef DDUCT_CLI_ACCESS_LOG_H
#define DDUCT_CLI_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "dduct.h"

struct access_log {
  uv_loop_t *loop;
  char *path;
  int fd;
  char *buf, *wbuf;   /* lines gathering / being written by the pool */
  size_t len, cap, wlen, wcap, woff;
  uv_fs_t req;
  int writing, reopen, timer_open;
  uv_timer_t timer;
  uint64_t dropped;   /* lines lost because the disk did not keep up (bounded memory) */
};

/* Open path for appending (created 0640). On failure writes a message naming the file. */
int access_log_open(struct access_log *a, uv_loop_t *loop, const char *path, char *err,
                    size_t errlen);
/* dduct_proxy_options.access_cb. */
void access_log_record(void *user_data, const struct dduct_access_record *r);
/* Reopen the file after the current write (SIGHUP); a no-op for stderr. */
void access_log_reopen(struct access_log *a);
/* Write what is left (blocking), close the file and the timer (its close runs on the loop). */
void access_log_close(struct access_log *a);

#endif
