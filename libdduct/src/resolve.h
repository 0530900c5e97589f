/* Resolve pins ("host:address", like curl --resolve without the port): consulted before DNS. */
#ifndef DDUCT_RESOLVE_H
#define DDUCT_RESOLVE_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

struct dduct_pin {
  char *host; /* lower-case */
  struct sockaddr_storage addr; /* port 0 */
};

struct dduct_pins {
  struct dduct_pin *v;
  size_t n;
};

/* Parse entries "host:1.2.3.4", "host:[::1]" or "host:::1". DDUCT_ECONFIG names a bad one. */
int dduct__pins_init(struct dduct_pins *p, const char *const *entries, size_t n, char *err,
                     size_t errlen);
void dduct__pins_free(struct dduct_pins *p);
/* The pinned address for host (case-insensitive), or NULL. */
const struct sockaddr *dduct__pins_lookup(const struct dduct_pins *p, const char *host);
/* Parse an IP literal (v4, v6, bracketed v6) into out with the given port: 0 or -1. */
int dduct__ip_literal(const char *s, uint16_t port, struct sockaddr_storage *out);

#endif
