#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* Set once at start-up, read from any loop thread: plain globals are enough. */
static enum dduct_log_level log_max = DDUCT_LOG_OFF;
static dduct_log_cb log_cb;
static void *log_ud;

static const char *const level_names[] = {"off", "error", "warn", "info", "debug", "trace"};

void dduct_log_set(enum dduct_log_level max, dduct_log_cb cb, void *user_data) {
  log_cb = cb;
  log_ud = user_data;
  log_max = cb != NULL ? max : DDUCT_LOG_OFF;
}

enum dduct_log_level dduct_log_level(void) {
  return log_max;
}

int dduct_log_level_parse(const char *name) {
  for (size_t i = 1; i < DDUCT_ARRAY_SIZE(level_names); i++)
    if (name != NULL && strcmp(name, level_names[i]) == 0) return (int)i;
  return -1;
}

const char *dduct_log_level_name(enum dduct_log_level level) {
  if ((int)level < 0 || (size_t)level >= DDUCT_ARRAY_SIZE(level_names)) return "?";
  return level_names[level];
}

/* Bytes outside printable ASCII become \xNN: messages carry peers' bytes (request targets,
 * hosts, origin headers), and a raw ESC, CR, LF or C1 byte in a log line forges lines or drives
 * the terminal of whoever reads it. Writes out (always NUL-terminated, cut to fit); returns its length. */
size_t dduct__log_escape(const char *in, char *out, size_t outlen) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  if (outlen == 0) return 0;
  for (; *in != '\0'; in++) {
    unsigned char c = (unsigned char)*in;
    if (c >= 0x20 && c < 0x7f) {
      if (o + 1 >= outlen) break;
      out[o++] = (char)c;
    } else {
      if (o + 4 >= outlen) break;
      out[o++] = '\\', out[o++] = 'x', out[o++] = hex[c >> 4], out[o++] = hex[c & 15];
    }
  }
  out[o] = '\0';
  return o;
}

void dduct__log(enum dduct_log_level level, const char *module, const char *fmt, ...) {
  char line[1024], safe[1024];
  va_list ap;
  if (log_cb == NULL || (int)level > (int)log_max) return;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  dduct__log_escape(line, safe, sizeof(safe));
  log_cb(log_ud, level, module, safe);
}
