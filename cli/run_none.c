/* run_proxy for a libdduct built without its store and proxy yet (see cli/meson.build): the CLI
 * still validates the config and sets up the CA, then exits. */
#include "log.h"
#include "run.h"

int run_proxy(const struct config *cfg, struct dduct_ca *ca) {
  (void)cfg;
  (void)ca;
  log_line(DDUCT_LOG_WARN, "main", "this libdduct has no proxy engine yet: exiting");
  return 0;
}
