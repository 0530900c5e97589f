/* The seed's log format: "[2024-01-01T12:34:56Z INFO  dduct::ssl_certs] Write "/path"". */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const upper[] = {"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

size_t log_format(char *buf, size_t len, time_t now, enum dduct_log_level level,
                  const char *module, const char *message) {
  struct tm tm;
  char stamp[32];
  int n;
  const char *name = (int)level >= 0 && (size_t)level < sizeof(upper) / sizeof(upper[0])
                         ? upper[level] : "?";

  gmtime_r(&now, &tm);
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
  n = snprintf(buf, len, "[%s %-5s dduct::%s] %s\n", stamp, name, module, message);
  if (n < 0) return 0;
  if ((size_t)n >= len && len > 0) { /* truncated: keep the line a line */
    buf[len - 2] = '\n';
    return len - 1;
  }
  return (size_t)n;
}

/* One fwrite per line so lines from several threads never interleave. */
static void log_cb(void *user_data, enum dduct_log_level level, const char *module,
                   const char *message) {
  char line[2048];
  size_t n = log_format(line, sizeof(line), time(NULL), level, module, message);
  (void)user_data;
  fwrite(line, 1, n, stderr);
}

void log_setup(enum dduct_log_level max) {
  setvbuf(stderr, NULL, _IOLBF, 4096);
  dduct_log_set(max, log_cb, NULL);
}

void log_line(enum dduct_log_level level, const char *module, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  if ((int)level > (int)dduct_log_level()) return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  log_cb(NULL, level, module, msg);
}
