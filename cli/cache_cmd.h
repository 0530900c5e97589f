/* `dduct cache ...` (cache_cmd.c). */
#ifndef DDUCT_CLI_CACHE_CMD_H
#define DDUCT_CLI_CACHE_CMD_H

#include "config.h"

/* argv[0] is "cache". load fills the config the way the daemon finds it (cfg NULL: beside the
 * executable, else the defaults); it returns 0 or prints the error and returns non-zero.
 * Returns the exit status. */
int cache_main(int argc, char **argv, int (*load)(const char *cfg, struct config *out));

#endif
