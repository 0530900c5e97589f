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

void dduct__log(enum dduct_log_level level, const char *module, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  if (log_cb == NULL || (int)level > (int)log_max) return;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  log_cb(log_ud, level, module, line);
}
