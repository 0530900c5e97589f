/* The CLI's log hook: the seed's line format on stderr. */
#ifndef DDUCT_CLI_LOG_H
#define DDUCT_CLI_LOG_H

#include <stddef.h>
#include <time.h>

#include "dduct.h"

/* Format one line, "[2024-01-01T12:34:56Z INFO  dduct::module] message\n", into buf. */
size_t log_format(char *buf, size_t len, time_t now, enum dduct_log_level level,
                  const char *module, const char *message);

/* Make stderr line-buffered and route libdduct's logs (and the CLI's) there, up to max. */
void log_setup(enum dduct_log_level max);

/* Log a line from the CLI itself through the same hook. */
void log_line(enum dduct_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
