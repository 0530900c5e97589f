/* Resolve pins: fixed host -> address mappings that take precedence over DNS. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "resolve.h"

int dduct__ip_literal(const char *s, uint16_t port, struct sockaddr_storage *out) {
  char buf[64];
  size_t len = strlen(s);
  memset(out, 0, sizeof(*out));
  if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
    s++;
    len -= 2;
  }
  if (len == 0 || len >= sizeof(buf)) return -1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  {
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, buf, &a4->sin_addr) == 1) {
      a4->sin_family = AF_INET;
      a4->sin_port = htons(port);
      return 0;
    }
  }
  {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, buf, &a6->sin6_addr) == 1) {
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons(port);
      return 0;
    }
  }
  return -1;
}

int dduct__pins_init(struct dduct_pins *p, const char *const *entries, size_t n, char *err,
                     size_t errlen) {
  p->n = 0;
  p->v = calloc(n > 0 ? n : 1, sizeof(*p->v));
  if (p->v == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    const char *e = entries[i], *colon = strchr(e, ':');
    struct dduct_pin *pin = &p->v[p->n];
    if (colon == NULL || colon == e ||
        dduct__ip_literal(colon + 1, 0, &pin->addr) != 0) {
      dduct__pins_free(p);
      return dduct__errf(DDUCT_ECONFIG, err, errlen,
                         "resolve: \"%s\" is not host:address (e.g. 'registry.test:127.0.0.1')",
                         e);
    }
    pin->host = strndup(e, (size_t)(colon - e));
    if (pin->host == NULL) {
      dduct__pins_free(p);
      return DDUCT_ENOMEM;
    }
    for (char *c = pin->host; *c != '\0'; c++) *c = (char)tolower((unsigned char)*c);
    p->n++;
  }
  return 0;
}

void dduct__pins_free(struct dduct_pins *p) {
  for (size_t i = 0; i < p->n; i++) free(p->v[i].host);
  free(p->v);
  p->v = NULL;
  p->n = 0;
}

const struct sockaddr *dduct__pins_lookup(const struct dduct_pins *p, const char *host) {
  for (size_t i = 0; i < p->n; i++)
    if (strcasecmp(p->v[i].host, host) == 0) return (const struct sockaddr *)&p->v[i].addr;
  return NULL;
}
