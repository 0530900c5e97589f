/* Cache keys: a request becomes a fixed-shape, hex-only relative path, so no URL can name a file
 * outside file_dir, whatever bytes it holds. */
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
  if (scheme == NULL || host == NULL || path == NULL || out == NULL) return DDUCT_EINVAL;
  memset(out, 0, sizeof(*out));
  q = memchr(path, '?', pathlen);
  if (q != NULL) pathlen = (size_t)(q - path);
  if ((norm = malloc(pathlen + 1)) == NULL) return DDUCT_ENOMEM;
  pathlen = remove_dots(path, pathlen, norm);
  path = norm;
  if (blob_digest(path, pathlen, &digest)) {
    memcpy(out->digest, digest, 7 + 64);
    memcpy(name, digest + 7, 64);
    name[64] = '\0';
    snprintf(out->rel, sizeof(out->rel), "c/%.2s/%s", name, name);
    free(norm);
    return 0;
  }
  {
    unsigned char h[32];
    url_hash(scheme, host, hostlen, port == default_port(scheme) ? 0 : port, path, pathlen, h);
    dduct__store_hex(h, 32, name);
  }
  snprintf(out->rel, sizeof(out->rel), "u/%.2s/%s", name, name);
  free(norm);
  return 0;
}
