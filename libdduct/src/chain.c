/* The upstream proxy's settings and the parent tier's rendezvous order (chain.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/base64.h>

#include "chain.h"
#include "http.h"
#include "internal.h"
#include "resolve.h"

/* ---- upstream proxy ----------------------------------------------------------------------- */

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decode s[0..n) into out[cap]; -1 on a bad escape, a NUL or overflow. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '%') {
      if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0) return -1;
      c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
      i += 2;
    }
    if (c == 0 || j + 1 >= cap) return -1;
    out[j++] = (char)c;
  }
  out[j] = '\0';
  return 0;
}

static int make_auth(struct dduct_uproxy *x, const char *ui, size_t n, char *err, size_t errlen) {
  const char *colon = memchr(ui, ':', n);
  size_t ulen = colon != NULL ? (size_t)(colon - ui) : n;
  char pass[256], both[400];
  unsigned char b64[600];
  size_t blen = 0;
  int rc;
  if (pct_decode(ui, ulen, x->user, sizeof(x->user)) != 0 ||
      (colon != NULL ? pct_decode(colon + 1, n - ulen - 1, pass, sizeof(pass))
                     : (pass[0] = '\0', 0)) != 0)
    return dduct__errf(DDUCT_ECONFIG, err, errlen,
                       "upstream_proxy: bad percent-escape or over-long user:password");
  snprintf(both, sizeof(both), "%s:%s", x->user, pass);
  rc = mbedtls_base64_encode(b64, sizeof(b64), &blen, (const unsigned char *)both, strlen(both));
  memset(pass, 0, sizeof(pass));
  memset(both, 0, sizeof(both));
  if (rc != 0) return dduct__errf(DDUCT_ECONFIG, err, errlen, "upstream_proxy: credentials too long");
  if ((x->auth = malloc(blen + 7)) == NULL) return DDUCT_ENOMEM;
  memcpy(x->auth, "Basic ", 6);
  memcpy(x->auth + 6, b64, blen);
  x->auth[6 + blen] = '\0';
  memset(b64, 0, sizeof(b64));
  return 0;
}

static int parse_proxy_url(struct dduct_uproxy *x, const char *url, char *err, size_t errlen) {
  const char *p, *at, *end;
  char auth[300];
  size_t alen;
  if (strncasecmp(url, "http://", 7) == 0) {
    p = url + 7;
  } else if (strncasecmp(url, "https://", 8) == 0) {
    x->https = 1;
    p = url + 8;
  } else {
    return dduct__errf(DDUCT_ECONFIG, err, errlen,
                       "upstream_proxy: expected 'http://[user:pass@]host:port' or 'https://...'");
  }
  end = p + strcspn(p, "/?#");
  if (*end != '\0' && strcmp(end, "/") != 0)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "upstream_proxy: no path allowed after host:port");
  at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q; /* the last '@': an unescaped one in the password stays its own */
  if (at != NULL) {
    int rc = make_auth(x, p, (size_t)(at - p), err, errlen);
    if (rc != 0) return rc;
    p = at + 1;
  }
  alen = (size_t)(end - p);
  if (alen == 0 || alen >= sizeof(auth))
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "upstream_proxy: missing host");
  memcpy(auth, p, alen);
  auth[alen] = '\0';
  if (dduct__http_parse_authority(auth, x->host, sizeof(x->host), &x->port, x->https ? 443 : 80) !=
          0 ||
      x->host[0] == '\0' || x->port == 0)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "upstream_proxy: bad host:port '%s'", auth);
  snprintf(x->shown, sizeof(x->shown), "%s://%s", x->https ? "https" : "http", auth);
  return 0;
}

static int is_cidr_like(const char *s) {
  struct sockaddr_storage ss;
  return strchr(s, '/') != NULL || dduct__ip_literal(s, 0, &ss) == 0;
}

int dduct__uproxy_init(struct dduct_uproxy *x, const char *url, const char *const *no_proxy,
                       size_t n, char *err, size_t errlen) {
  const char **cidrs;
  size_t ncidr = 0;
  int rc;
  memset(x, 0, sizeof(*x));
  if (url == NULL || url[0] == '\0') return 0;
  if ((rc = parse_proxy_url(x, url, err, errlen)) != 0) {
    dduct__uproxy_free(x);
    return rc;
  }
  cidrs = calloc(n + 1, sizeof(*cidrs));
  x->globs = calloc(n + 1, sizeof(*x->globs));
  if (cidrs == NULL || x->globs == NULL) {
    free(cidrs);
    dduct__uproxy_free(x);
    return DDUCT_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    const char *s = no_proxy[i];
    if (s[0] == '\0') continue;
    if (is_cidr_like(s)) {
      cidrs[ncidr++] = s;
      continue;
    }
    if ((x->globs[x->nglobs] = dduct__strdup(s)) == NULL) {
      rc = DDUCT_ENOMEM;
      break;
    }
    for (char *c = x->globs[x->nglobs]; *c; c++)
      if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    x->nglobs++;
  }
  if (rc == 0) rc = dduct__acl_init(&x->cidrs, cidrs, ncidr, err, errlen);
  free(cidrs);
  if (rc != 0) dduct__uproxy_free(x);
  return rc;
}

void dduct__uproxy_free(struct dduct_uproxy *x) {
  if (x->auth != NULL) {
    memset(x->auth, 0, strlen(x->auth));
    free(x->auth);
  }
  for (size_t i = 0; i < x->nglobs; i++) free(x->globs[i]);
  free(x->globs);
  dduct__acl_free(&x->cidrs);
  memset(x, 0, sizeof(*x));
}

/* host (lower-cased, no trailing dot) against one no_upstream_proxy pattern, as Go and curl read
 * NO_PROXY: "*" everything, "*.x" and ".x" the subdomains of x, "x" x and its subdomains. */
static int glob_match(const char *pat, const char *host) {
  size_t hl = strlen(host), pl;
  int sub_only = 0;
  if (strcmp(pat, "*") == 0) return 1;
  if (pat[0] == '*' && pat[1] == '.') pat++;
  if (pat[0] == '.') {
    sub_only = 1;
    pat++;
  }
  pl = strlen(pat);
  if (hl == pl) return !sub_only && memcmp(host, pat, hl) == 0;
  return hl > pl && host[hl - pl - 1] == '.' && memcmp(host + hl - pl, pat, pl) == 0;
}

int dduct__uproxy_applies(const struct dduct_uproxy *x, const char *host) {
  struct sockaddr_storage ss;
  char h[256];
  size_t n = 0;
  if (x == NULL || x->host[0] == '\0') return 0;
  if (dduct__ip_literal(host, 0, &ss) == 0)
    return !dduct__acl_match(&x->cidrs, (const struct sockaddr *)&ss);
  for (; host[n] != '\0' && n + 1 < sizeof(h); n++)
    h[n] = (host[n] >= 'A' && host[n] <= 'Z') ? (char)(host[n] - 'A' + 'a') : host[n];
  while (n > 0 && h[n - 1] == '.') n--;
  h[n] = '\0';
  for (size_t i = 0; i < x->nglobs; i++)
    if (glob_match(x->globs[i], h)) return 0;
  return 1;
}

/* ---- parents ------------------------------------------------------------------------------ */

static uint64_t mix64(uint64_t z) { /* splitmix64's finaliser: a bijection with full avalanche */
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return mix64(h);
}

int dduct__parents_init(struct dduct_parents *ps, const char *const *urls, size_t n,
                        unsigned down_ms, char *err, size_t errlen) {
  memset(ps, 0, sizeof(*ps));
  ps->down_ms = down_ms;
  if (n == 0) return 0;
  if (n > DDUCT__PARENTS_MAX)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "parents: at most %d", DDUCT__PARENTS_MAX);
  if ((ps->v = calloc(n, sizeof(*ps->v))) == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    struct dduct_parent *pa = &ps->v[i];
    const char *path;
    if (dduct__http_parse_url(urls[i], &pa->https, pa->host, sizeof(pa->host), &pa->port, &path) !=
            0 ||
        strcmp(path, "/") != 0 || pa->host[0] == '\0') {
      dduct__parents_free(ps);
      return dduct__errf(DDUCT_ECONFIG, err, errlen,
                         "parents: '%s' is not 'https://host:port' (or http://)", urls[i]);
    }
    dduct__origin_format(pa->shown, sizeof(pa->shown),
                         &(struct dduct_origin){pa->https, pa->host, pa->port}, DDUCT_ORIGIN_PORT);
    pa->id_hash = fnv1a(pa->shown);
    for (size_t j = 0; j < i; j++)
      if (strcmp(ps->v[j].shown, pa->shown) == 0) {
        dduct__parents_free(ps);
        return dduct__errf(DDUCT_ECONFIG, err, errlen, "parents: '%s' is listed twice", urls[i]);
      }
    ps->n++;
  }
  return 0;
}

void dduct__parents_free(struct dduct_parents *ps) {
  free(ps->v);
  memset(ps, 0, sizeof(*ps));
}

uint64_t dduct__parents_weight(const struct dduct_parents *ps, size_t i, const char *key) {
  return mix64(fnv1a(key) ^ ps->v[i].id_hash);
}

size_t dduct__parents_order(const struct dduct_parents *ps, const char *key, uint64_t now,
                            size_t *order) {
  uint64_t w[DDUCT__PARENTS_MAX], kh = fnv1a(key);
  size_t n = 0;
  for (size_t i = 0; i < ps->n; i++) {
    uint64_t wi;
    size_t j;
    if (__atomic_load_n(&ps->v[i].down_until, __ATOMIC_RELAXED) > now) continue;
    wi = mix64(kh ^ ps->v[i].id_hash);
    /* Insertion sort, highest first; ties (never in practice) by index for a stable order. */
    for (j = n; j > 0 && w[j - 1] < wi; j--) {
      w[j] = w[j - 1];
      order[j] = order[j - 1];
    }
    w[j] = wi;
    order[j] = i;
    n++;
  }
  return n;
}

int dduct__parents_mark_down(struct dduct_parents *ps, size_t i, uint64_t now) {
  int was_up = __atomic_load_n(&ps->v[i].down_until, __ATOMIC_RELAXED) <= now;
  __atomic_store_n(&ps->v[i].down_until, now + (ps->down_ms != 0 ? ps->down_ms : 1),
                   __ATOMIC_RELAXED);
  return was_up;
}
