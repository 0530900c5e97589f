/* The serving part of the CLI: store, filters, proxy, listeners, signals, event loop. */
#ifndef DDUCT_CLI_RUN_H
#define DDUCT_CLI_RUN_H

#include "config.h"
#include "dduct.h"

/* Serve until SIGINT/SIGTERM, then shut down cleanly. ca is borrowed. Returns the exit status:
 * 0 after a clean shutdown, 1 if something could not be set up, 2 for a bad filter. */
int run_proxy(const struct config *cfg, struct dduct_ca *ca);

#endif
