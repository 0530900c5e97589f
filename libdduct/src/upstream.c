/* Temporary: the origin client lands in the next commit. */
#include <stdlib.h>

#include "internal.h"
#include "upstream.h"

struct dduct_upstream {
  struct dduct_upstream_config cfg;
};

int dduct__upstream_new(const struct dduct_upstream_config *cfg, struct dduct_upstream **out) {
  *out = calloc(1, sizeof(**out));
  if (*out == NULL) return DDUCT_ENOMEM;
  (*out)->cfg = *cfg;
  return 0;
}
void dduct__upstream_close_idle(struct dduct_upstream *u) { (void)u; }
size_t dduct__upstream_live(const struct dduct_upstream *u) { (void)u; return 0; }
void dduct__upstream_free(struct dduct_upstream *u) { free(u); }
void dduct__upstream_on_idle(struct dduct_upstream *u, void (*cb)(void *arg), void *arg) {
  (void)u; (void)cb; (void)arg;
}
