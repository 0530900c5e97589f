/* The local routes: what dduct answers itself. On the admin listener: GET /metrics
 * (Prometheus text 0.0.4), /stats (JSON), /healthz, /ca.crt and / (the status page). On the
 * proxy listeners only /ca.crt, for a request addressed to dduct itself. Internal. */
#ifndef DDUCT_ADMIN_H
#define DDUCT_ADMIN_H

#include "conn.h"

/* 1 if a request target on a proxy listener is meant for dduct itself: origin-form "/ca.crt"
 * (curl http://dduct:8000/ca.crt), or an absolute URL naming one of our listening addresses
 * with that path. */
int dduct__admin_is_local(const struct dduct_proxy *p, const char *target);
/* Answer the routed request on c (full: every admin route; else /ca.crt only). */
void dduct__admin_handle(struct dduct_conn *c, const char *target, int full);

/* The status page (status.html, embedded at build time). */
extern const char dduct__status_html[];
extern const size_t dduct__status_html_len;

#endif
