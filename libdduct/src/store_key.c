/* Cache keys: a request becomes a fixed-shape, hex-only relative path, so no URL can name a file
 * outside file_dir, whatever bytes it holds. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sha256.h"
#include "store.h"

static const char hexdigits[] = "0123456789abcdef";

void dduct__store_hex(const unsigned char *in, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hexdigits[in[i] >> 4];
    out[2 * i + 1] = hexdigits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static int is_lower_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

int dduct__store_is_digest(const char *s, size_t len) {
  if (s == NULL || len != 7 + 64 || memcmp(s, "sha256:", 7) != 0) return 0;
  for (size_t i = 7; i < len; i++)
    if (!is_lower_hex(s[i])) return 0;
  return 1;
}

/* "/v2/<name>/blobs/sha256:<hex>" with a non-empty name: the digest starts at *digest. */
static int blob_digest(const char *path, size_t len, const char **digest) {
  static const char mid[] = "/blobs/";
  const size_t dlen = 7 + 64, mlen = sizeof(mid) - 1;
  if (len < 4 + 1 + mlen + dlen || memcmp(path, "/v2/", 4) != 0) return 0;
  if (memcmp(path + len - dlen - mlen, mid, mlen) != 0) return 0;
  if (!dduct__store_is_digest(path + len - dlen, dlen)) return 0;
  *digest = path + len - dlen;
  return 1;
}

/* 1 for "https" in any case: the scheme whose keys keep the first layout. */
static int is_https(const char *scheme) {
  return strcasecmp(scheme, "https") == 0;
}

static unsigned default_port(const char *scheme) {
  if (is_https(scheme)) return 443;
  return strcasecmp(scheme, "http") == 0 ? 80 : 0;
}

static void put_be64(unsigned char *b, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) b[i] = (unsigned char)v;
}

/* A length, then the bytes lowercased, a block at a time. */
static void hash_lower(struct dduct__sha256 *c, const char *s, size_t len) {
  unsigned char b[64];
  put_be64(b, len);
  dduct__sha256_update(c, b, 8);
  for (size_t i = 0; i < len;) {
    size_t n = 0;
    for (; n < sizeof(b) && i < len; n++, i++) {
      unsigned char ch = (unsigned char)s[i];
      b[n] = ch >= 'A' && ch <= 'Z' ? (unsigned char)(ch - 'A' + 'a') : ch;
    }
    dduct__sha256_update(c, b, n);
  }
}

/* Length-prefixed fields keep the hash input unambiguous: no host can be crafted to end where a
 * path begins. https keys are the first layout (tag "dduct-key-v1"), so entries stored before
 * the scheme was keyed keep their place; every other scheme (plain http) hashes a second tag and
 * the scheme itself, so its entries can never be found by an https request. */
static void url_hash(const char *scheme, const char *host, size_t hostlen, unsigned port,
                     const char *path, size_t pathlen, unsigned char out[32]) {
  static const char tag1[] = "dduct-key-v1", tag2[] = "dduct-key-v2";
  struct dduct__sha256 c;
  unsigned char b[16];
  dduct__sha256_init(&c);
  if (is_https(scheme)) {
    dduct__sha256_update(&c, tag1, sizeof(tag1));
  } else {
    dduct__sha256_update(&c, tag2, sizeof(tag2));
    hash_lower(&c, scheme, strlen(scheme));
  }
  hash_lower(&c, host, hostlen);
  put_be64(b, port);
  put_be64(b + 8, pathlen);
  dduct__sha256_update(&c, b, 16);
  dduct__sha256_update(&c, path, pathlen);
  dduct__sha256_final(&c, out);
}

/* RFC 3986 remove_dot_segments into out (room for len + 1 bytes): "/debian/./a.deb" and
 * "/debian/x/../a.deb" are the file "/debian/a.deb" to every origin (apt sends the former, curl
 * the latter), so they are one key. Only for the key: the origin gets the path as sent. */
static size_t remove_dots(const char *path, size_t len, char *out) {
  const char *p = path, *end = path + len;
  size_t o = 0;
  if (len == 0 || path[0] != '/') {
    memcpy(out, path, len);
    return len;
  }
  while (p < end) {
    const char *seg = p + 1, *e = memchr(seg, '/', (size_t)(end - seg));
    size_t n;
    if (e == NULL) e = end;
    n = (size_t)(e - seg);
    if (n == 1 && seg[0] == '.') {
      if (e == end) out[o++] = '/';
    } else if (n == 2 && seg[0] == '.' && seg[1] == '.') {
      while (o > 0 && out[o - 1] != '/') o--;
      if (o > 0) o--;
      if (e == end) out[o++] = '/';
    } else {
      out[o++] = '/';
      memcpy(out + o, seg, n);
      o += n;
    }
    p = e;
  }
  return o;
}

int dduct__store_key_make(const char *scheme, const char *host, size_t hostlen, unsigned port,
                          const char *path, size_t pathlen, struct dduct__store_key *out) {
  const char *digest, *q;
  char name[65], *norm;
  size_t qlen = 0, plen = pathlen;
  if (scheme == NULL || host == NULL || path == NULL || out == NULL) return DDUCT_EINVAL;
  memset(out, 0, sizeof(*out));
  q = memchr(path, '?', pathlen);
  if (q != NULL) {
    plen = (size_t)(q - path);
    qlen = pathlen - plen - 1;
    q++;
  }
  if ((norm = malloc(pathlen + 2)) == NULL) return DDUCT_ENOMEM;
  plen = remove_dots(path, plen, norm);
  if (blob_digest(norm, plen, &digest)) {
    memcpy(out->digest, digest, 7 + 64);
    memcpy(name, digest + 7, 64);
    name[64] = '\0';
    snprintf(out->rel, sizeof(out->rel), "c/%.2s/%s", name, name);
    free(norm);
    return 0;
  }
  /* The query, when there is one, follows the resolved path in the hashed "path" field: the
   * path holds no '?', so the split stays unambiguous, and a URL without a query hashes exactly
   * as before queries were keyed. */
  if (qlen > 0) {
    norm[plen++] = '?';
    memcpy(norm + plen, q, qlen);
    plen += qlen;
  }
  {
    unsigned char h[32];
    url_hash(scheme, host, hostlen, port == default_port(scheme) ? 0 : port, norm, plen, h);
    dduct__store_hex(h, 32, name);
  }
  snprintf(out->rel, sizeof(out->rel), "u/%.2s/%s", name, name);
  free(norm);
  return 0;
}

/* ---- query parameters left out of keys -------------------------------------------------- */

struct qrule {
  char *glob;   /* host glob (fnmatch, case-insensitive) */
  char **names; /* parameter names, exact; NULL when the rule drops the whole query */
  size_t n;
};

struct dduct__query_rules {
  struct qrule *v;
  size_t n;
};

int dduct__query_rule_check(const char *spec, char *why, size_t len) {
  const char *colon = strchr(spec, ':'), *p;
  if (colon == NULL || colon == spec) {
    snprintf(why, len, "\"%s\" is not HOSTGLOB:NAME[,NAME...] (e.g. '*.cdn.example:sig,expires')",
             spec);
    return -1;
  }
  p = colon + 1;
  if (strcmp(p, "*") == 0) return 0;
  for (;;) {
    size_t n = strcspn(p, ",");
    if (n == 0 || memchr(p, '&', n) != NULL || memchr(p, '=', n) != NULL ||
        memchr(p, '*', n) != NULL) {
      snprintf(why, len, "\"%s\": each NAME is a query parameter name (no '&', '=', '*', "
               "not empty), or the one NAME '*' for the whole query", spec);
      return -1;
    }
    if (p[n] == '\0') return 0;
    p += n + 1;
  }
}

void dduct__query_rules_free(struct dduct__query_rules *r) {
  if (r == NULL) return;
  for (size_t i = 0; i < r->n; i++) {
    for (size_t k = 0; k < r->v[i].n; k++) free(r->v[i].names[k]);
    free(r->v[i].names);
    free(r->v[i].glob);
  }
  free(r->v);
  free(r);
}

static int rule_parse(struct qrule *q, const char *spec) {
  const char *colon = strchr(spec, ':'), *p = colon + 1;
  if ((q->glob = strndup(spec, (size_t)(colon - spec))) == NULL) return DDUCT_ENOMEM;
  if (strcmp(p, "*") == 0) return 0;
  for (;;) {
    size_t n = strcspn(p, ",");
    char **v = realloc(q->names, (q->n + 1) * sizeof(*v));
    if (v == NULL) return DDUCT_ENOMEM;
    q->names = v;
    if ((v[q->n] = strndup(p, n)) == NULL) return DDUCT_ENOMEM;
    q->n++;
    if (p[n] == '\0') return 0;
    p += n + 1;
  }
}

int dduct__query_rules_new(const char *const *specs, size_t n, struct dduct__query_rules **out,
                           char *err, size_t errlen) {
  struct dduct__query_rules *r;
  *out = NULL;
  if (n == 0) return 0;
  if ((r = calloc(1, sizeof(*r))) == NULL || (r->v = calloc(n, sizeof(*r->v))) == NULL) {
    free(r);
    return DDUCT_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    char why[256];
    int rc;
    if (dduct__query_rule_check(specs[i], why, sizeof(why)) != 0) {
      dduct__query_rules_free(r);
      return dduct__errf(DDUCT_ECONFIG, err, errlen, "query_ignore: %s", why);
    }
    rc = rule_parse(&r->v[r->n++], specs[i]);
    if (rc != 0) {
      dduct__query_rules_free(r);
      return rc;
    }
  }
  *out = r;
  return 0;
}

/* 1 when the parameter p[0..n) ("name" or "name=value") is named by the rule. */
static int rule_drops(const struct qrule *q, const char *p, size_t n) {
  const char *eq = memchr(p, '=', n);
  size_t nl = eq != NULL ? (size_t)(eq - p) : n;
  for (size_t i = 0; i < q->n; i++)
    if (strlen(q->names[i]) == nl && memcmp(q->names[i], p, nl) == 0) return 1;
  return 0;
}

size_t dduct__query_rules_apply(const struct dduct__query_rules *r, const char *host,
                                const char *target, size_t len, char *out) {
  const char *q = memchr(target, '?', len), *p, *end = target + len;
  size_t o, matched = 0;
  const struct qrule *m[64]; /* the rules for host (more are ignored) */
  if (q == NULL || r == NULL) {
    memcpy(out, target, len);
    return len;
  }
  for (size_t i = 0; i < r->n && matched < DDUCT_ARRAY_SIZE(m); i++) {
    if (fnmatch(r->v[i].glob, host, FNM_CASEFOLD) != 0) continue;
    if (r->v[i].names == NULL) { /* the whole query */
      memcpy(out, target, (size_t)(q - target));
      return (size_t)(q - target);
    }
    m[matched++] = &r->v[i];
  }
  o = (size_t)(q - target);
  memcpy(out, target, o);
  if (matched == 0) {
    memcpy(out + o, q, (size_t)(end - q));
    return len;
  }
  for (p = q + 1; p <= end;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    size_t n = (size_t)((amp != NULL ? amp : end) - p), i;
    for (i = 0; i < matched && !rule_drops(m[i], p, n); i++) {
    }
    if (n > 0 && i == matched) {
      char sep = o == (size_t)(q - target) ? '?' : '&';
      out[o++] = sep;
      memcpy(out + o, p, n);
      o += n;
    }
    if (amp == NULL) break;
    p = amp + 1;
  }
  return o;
}
