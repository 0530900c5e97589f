/* CIDR matching for allow_clients and small sockaddr helpers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "internal.h"

int dduct__cidr_parse(const char *s, struct dduct_cidr *out) {
  char buf[64];
  const char *slash = strchr(s, '/');
  size_t alen = slash != NULL ? (size_t)(slash - s) : strlen(s);
  unsigned maxbits;

  if (alen == 0 || alen >= sizeof(buf)) return DDUCT_ECONFIG;
  memcpy(buf, s, alen);
  buf[alen] = '\0';
  memset(out, 0, sizeof(*out));
  if (inet_pton(AF_INET, buf, out->addr) == 1) {
    out->family = AF_INET;
    maxbits = 32;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    out->family = AF_INET6;
    maxbits = 128;
  } else {
    return DDUCT_ECONFIG;
  }
  out->bits = maxbits;
  if (slash != NULL) {
    char *end;
    unsigned long b;
    if (slash[1] < '0' || slash[1] > '9') return DDUCT_ECONFIG;
    b = strtoul(slash + 1, &end, 10);
    if (*end != '\0' || b > maxbits) return DDUCT_ECONFIG;
    out->bits = (unsigned)b;
  }
  return 0;
}

int dduct__acl_init(struct dduct_acl *acl, const char *const *cidrs, size_t n, char *err,
                    size_t errlen) {
  acl->n = 0;
  acl->v = calloc(n > 0 ? n : 1, sizeof(*acl->v));
  if (acl->v == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    if (dduct__cidr_parse(cidrs[i], &acl->v[i]) != 0) {
      free(acl->v);
      acl->v = NULL;
      return dduct__errf(DDUCT_ECONFIG, err, errlen, "allow_clients: invalid CIDR \"%s\"",
                         cidrs[i]);
    }
  }
  acl->n = n;
  return 0;
}

void dduct__acl_free(struct dduct_acl *acl) {
  free(acl->v);
  acl->v = NULL;
  acl->n = 0;
}

static int prefix_eq(const unsigned char *a, const unsigned char *b, unsigned bits) {
  unsigned bytes = bits / 8, rem = bits % 8;
  if (memcmp(a, b, bytes) != 0) return 0;
  if (rem == 0) return 1;
  return ((a[bytes] ^ b[bytes]) & (0xff << (8 - rem))) == 0;
}

/* The address bytes of sa, with v4-mapped v6 turned into v4. */
static int addr_bytes(const struct sockaddr *sa, unsigned char out[16]) {
  if (sa->sa_family == AF_INET) {
    memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return AF_INET;
  }
  if (sa->sa_family == AF_INET6) {
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0) {
      memcpy(out, a + 12, 4);
      return AF_INET;
    }
    memcpy(out, a, 16);
    return AF_INET6;
  }
  return 0;
}

int dduct__acl_match(const struct dduct_acl *acl, const struct sockaddr *sa) {
  unsigned char a[16];
  int fam = addr_bytes(sa, a);
  for (size_t i = 0; i < acl->n; i++)
    if (acl->v[i].family == fam && prefix_eq(a, acl->v[i].addr, acl->v[i].bits)) return 1;
  return 0;
}

void dduct__addr_str(const struct sockaddr *sa, char *out, size_t outlen) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
    snprintf(out, outlen, "%s:%u", ip, dduct__addr_port(sa));
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
    snprintf(out, outlen, "[%s]:%u", ip, dduct__addr_port(sa));
  } else {
    snprintf(out, outlen, "?");
  }
}

int dduct__addr_same_ip(const struct sockaddr *a, const struct sockaddr *b) {
  unsigned char x[16], y[16];
  int fa = addr_bytes(a, x), fb = addr_bytes(b, y);
  return fa != 0 && fa == fb && memcmp(x, y, fa == AF_INET ? 4 : 16) == 0;
}

int dduct__addr_is_any(const struct sockaddr *sa) {
  static const unsigned char zero[16];
  unsigned char x[16];
  int f = addr_bytes(sa, x);
  return f != 0 && memcmp(x, zero, f == AF_INET ? 4 : 16) == 0;
}

int dduct__addr_is_loopback(const struct sockaddr *sa) {
  static const unsigned char v6lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  unsigned char x[16];
  int f = addr_bytes(sa, x);
  if (f == AF_INET) return x[0] == 127;
  return f == AF_INET6 && memcmp(x, v6lo, 16) == 0;
}

uint16_t dduct__addr_port(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) return ntohs(((const struct sockaddr_in *)sa)->sin_port);
  if (sa->sa_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
  return 0;
}

/* ---- connections per client address ------------------------------------------------------- */

#define CLIENT_BUCKETS 1024

struct dduct_client_count {
  struct dduct_client_count *next;
  int family;
  unsigned char a[16];
  unsigned n;
};

static size_t client_bucket(const unsigned char *a, int fam) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (int i = 0; i < (fam == AF_INET ? 4 : 16); i++) h = (h ^ a[i]) * 16777619u;
  return h % CLIENT_BUCKETS;
}

static struct dduct_client_count **client_find(struct dduct_clients *t, const unsigned char *a,
                                               int fam) {
  struct dduct_client_count **pp = &t->b[client_bucket(a, fam)];
  while (*pp != NULL && !((*pp)->family == fam && memcmp((*pp)->a, a, 16) == 0))
    pp = &(*pp)->next;
  return pp;
}

int dduct__clients_take(struct dduct_clients *t, const struct sockaddr *sa, unsigned max) {
  unsigned char a[16] = {0};
  int fam = addr_bytes(sa, a);
  struct dduct_client_count **pp, *e;
  if (fam == 0) return 0; /* no address (peer gone): nothing to count */
  if (t->b == NULL) {
    if ((t->b = calloc(CLIENT_BUCKETS, sizeof(*t->b))) == NULL) return DDUCT_ENOMEM;
    t->nb = CLIENT_BUCKETS;
  }
  if (fam == AF_INET) memset(a + 4, 0, 12);
  pp = client_find(t, a, fam);
  if (*pp != NULL) {
    if ((*pp)->n >= max) return DDUCT_EAGAIN;
    (*pp)->n++;
    return 0;
  }
  if ((e = calloc(1, sizeof(*e))) == NULL) return DDUCT_ENOMEM;
  e->family = fam;
  memcpy(e->a, a, 16);
  e->n = 1;
  *pp = e;
  return 0;
}

void dduct__clients_release(struct dduct_clients *t, const struct sockaddr *sa) {
  unsigned char a[16] = {0};
  int fam = addr_bytes(sa, a);
  struct dduct_client_count **pp, *e;
  if (fam == 0 || t->b == NULL) return;
  if (fam == AF_INET) memset(a + 4, 0, 12);
  pp = client_find(t, a, fam);
  if ((e = *pp) == NULL) return;
  if (--e->n == 0) {
    *pp = e->next;
    free(e);
  }
}

void dduct__clients_free(struct dduct_clients *t) {
  for (size_t i = 0; i < t->nb; i++) {
    while (t->b[i] != NULL) {
      struct dduct_client_count *e = t->b[i];
      t->b[i] = e->next;
      free(e);
    }
  }
  free(t->b);
  t->b = NULL;
  t->nb = 0;
}
