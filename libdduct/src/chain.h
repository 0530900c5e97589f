/* Beyond one node (docs/cluster.md): the upstream (corporate) proxy every origin connection may
 * go through, and the tier of parent dducts cacheable misses go to. Pure: no I/O.
 *
 * Upstream proxy: "http://[user:pass@]host:port" or "https://...". Credentials (percent-decoded)
 * become one "Basic ..." value kept here and never logged; `shown` is the URL without them.
 * no_upstream_proxy entries are CIDRs ("10.0.0.0/8") matching IP-literal hosts, or names the
 * way NO_PROXY is usually read: "*.corp.example" and ".corp.example" match its subdomains,
 * "corp.example" the name and its subdomains, "*" everything.
 *
 * Parents: "https://host:port" (or http://). A key is sent to the parent with the highest
 * rendezvous weight H(parent, key) that is not marked down; the rest of the order is the
 * fallback. Adding or removing a parent moves only the keys whose highest weight it holds.
 */
#ifndef DDUCT_CHAIN_H
#define DDUCT_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include "acl.h"

struct dduct_uproxy {
  int https;
  char host[256];
  uint16_t port;
  char *auth;      /* "Basic <base64>" or NULL */
  char user[128];  /* the user name sent (for a 407's message), "" when none */
  char shown[320]; /* "http://host:port" (no credentials): for logs and answers */
  char **globs;    /* lower-case host patterns of no_upstream_proxy */
  size_t nglobs;
  struct dduct_acl cidrs;
};

/* url NULL or "": no upstream proxy (*out stays zeroed, returns 0). DDUCT_ECONFIG names what is
 * wrong with the URL or a no_upstream_proxy entry (never the password). */
int dduct__uproxy_init(struct dduct_uproxy *x, const char *url, const char *const *no_proxy,
                       size_t n, char *err, size_t errlen);
void dduct__uproxy_free(struct dduct_uproxy *x);
/* 1 when connections to host (a name or an IP literal, no port) go through the proxy. */
int dduct__uproxy_applies(const struct dduct_uproxy *x, const char *host);

#define DDUCT__PARENTS_MAX 64

struct dduct_parent {
  int https;
  char host[256];
  uint16_t port;
  char shown[300];     /* "https://host:port" */
  uint64_t id_hash;    /* H(shown): the parent's share of the hash */
  /* The fields below are shared by every event loop of a proxy (workers > 1): read and written
   * with relaxed __atomic operations. */
  uint64_t down_until; /* uv_now() milliseconds; 0: up */
  uint64_t asked;      /* fills asked of this parent (metrics) */
  uint64_t failed;     /* ... that it refused, dropped or answered 5xx */
  uint64_t resumed;    /* bodies it died in the middle of, resumed elsewhere */
  int self;            /* it is this dduct (its address is one of our listeners): the keys
                          it owns are fetched from the origin here */
};

struct dduct_parents {
  struct dduct_parent *v;
  size_t n;
  unsigned down_ms; /* how long a failed parent is skipped */
};

int dduct__parents_init(struct dduct_parents *ps, const char *const *urls, size_t n,
                        unsigned down_ms, char *err, size_t errlen);
void dduct__parents_free(struct dduct_parents *ps);
/* The parents for key in rendezvous order (highest weight first), up ones only (down ones whose
 * time is over count as up again): indices into ps->v written to order[DDUCT__PARENTS_MAX].
 * Returns how many. */
size_t dduct__parents_order(const struct dduct_parents *ps, const char *key, uint64_t now,
                            size_t *order);
/* The rendezvous weight of parent i for key (exposed for the unit test). */
uint64_t dduct__parents_weight(const struct dduct_parents *ps, size_t i, const char *key);
/* Mark parent i down until now + down_ms; returns 1 if it was up (the caller logs once). */
int dduct__parents_mark_down(struct dduct_parents *ps, size_t i, uint64_t now);

#endif
