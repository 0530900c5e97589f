/* Internal helpers shared by libdduct's modules. Not installed. */
#ifndef DDUCT_INTERNAL_H
#define DDUCT_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "dduct.h"

#define DDUCT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DDUCT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DDUCT_MAX(a, b) ((a) > (b) ? (a) : (b))
#define DDUCT_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

/* Log one line through the embedder's hook (cheap when the level is filtered out). */
void dduct__log(enum dduct_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* in escaped into out[outlen]: bytes outside 0x20..0x7e as \xNN (every log line goes through
 * it); NUL-terminated, cut to fit; returns the length written. */
size_t dduct__log_escape(const char *in, char *out, size_t outlen);
#define dduct__enabled(level) ((int)(level) <= (int)dduct_log_level())
#define DDUCT_LOG(level, module, ...)                                          \
  do {                                                                         \
    if (dduct__enabled(level)) dduct__log((level), (module), __VA_ARGS__);     \
  } while (0)
#define LOG_ERROR(module, ...) DDUCT_LOG(DDUCT_LOG_ERROR, module, __VA_ARGS__)
#define LOG_WARN(module, ...) DDUCT_LOG(DDUCT_LOG_WARN, module, __VA_ARGS__)
#define LOG_INFO(module, ...) DDUCT_LOG(DDUCT_LOG_INFO, module, __VA_ARGS__)
#define LOG_DEBUG(module, ...) DDUCT_LOG(DDUCT_LOG_DEBUG, module, __VA_ARGS__)
#define LOG_TRACE(module, ...) DDUCT_LOG(DDUCT_LOG_TRACE, module, __VA_ARGS__)

/* Write a formatted one-line message into err[errlen] (no-op when err is NULL); returns code. */
int dduct__errf(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* strdup that returns NULL on NULL. */
char *dduct__strdup(const char *s);

/* A whole small regular file into a malloc'ed, NUL-terminated buffer (*len excludes the NUL; a
 * read error ends it short). 0; -errno if it cannot be opened; -EISDIR if it is not a regular
 * file; DDUCT_ETOOBIG if it holds more than max bytes; DDUCT_ENOMEM. */
int dduct__read_file(const char *path, size_t max, char **out, size_t *len);

#endif
