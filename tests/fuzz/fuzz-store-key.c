/* Fuzz target: the cache's request -> file mapping (libdduct/src/store_key.c), which sees every
 * URL a client sends.
 *
 * Input: byte 0 picks the scheme (http, https, NULL, or an odd one), bytes 1-2 the port (big
 * endian), byte 3 the host length (clipped), then the host, then the path (any bytes, NULs and
 * query strings included).
 *
 * Invariants: the relative path is "c/xx/<64 hex>" or "u/xx/<64 hex>" (xx its first two hex
 * digits): never '..', never absolute, no NUL inside, under a fixed length, and joined to a
 * directory it resolves (realpath, on a temp dir with the fan-out directory created) to a file
 * directly in that directory's subtree. A digest is set exactly for "c/" keys, is the file's
 * name and occurs in the path; a blob path's key does not depend on host, port or scheme; an
 * ordinary key never is the same for http as for https (a plain-http body must never answer an
 * https request); the key does not depend on the host's case; a query string is part of an
 * ordinary key (an empty one is none) and not of a blob's; query rules never lengthen a target
 * and leave one without a query alone; the same input gives the same key; a NULL scheme or host
 * is refused. */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "store.h"

static char tmpdir[PATH_MAX]; /* realpath of a private temp dir, "" if none could be made */

static void make_tmpdir(void) {
  char tmpl[] = "/tmp/dduct-fuzz-store-key-XXXXXX";
  if (mkdtemp(tmpl) == NULL || realpath(tmpl, tmpdir) == NULL) tmpdir[0] = '\0';
}

/* Remove what resolve() made (the temp dir holds two levels of directories only). */
static void cleanup(void) {
  static const char *const tops[] = {"c", "u"};
  char p[PATH_MAX + 16];
  if (tmpdir[0] == '\0') return;
  for (size_t t = 0; t < 2; t++) {
    for (unsigned i = 0; i < 256; i++) {
      snprintf(p, sizeof(p), "%s/%s/%02x", tmpdir, tops[t], i);
      (void)rmdir(p);
    }
    snprintf(p, sizeof(p), "%s/%s", tmpdir, tops[t]);
    (void)rmdir(p);
  }
  (void)rmdir(tmpdir);
}

static int is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

static void check_shape(const struct dduct__store_key *k) {
  const char *r = k->rel;
  size_t n = strnlen(r, sizeof(k->rel));
  FUZZ_CHECK(n < sizeof(k->rel), "rel not NUL-terminated");
  FUZZ_CHECK(n == 2 + 3 + 64, "rel '%s' is %zu bytes", r, n);
  FUZZ_CHECK((r[0] == 'c' || r[0] == 'u') && r[1] == '/' && r[4] == '/', "rel '%s' shape", r);
  FUZZ_CHECK(is_hex(r + 2, 2) && is_hex(r + 5, 64) && memcmp(r + 2, r + 5, 2) == 0,
             "rel '%s' is not fan-out/hex", r);
  FUZZ_CHECK(strstr(r, "..") == NULL && r[0] != '/', "rel '%s' escapes", r);
  if (r[0] == 'c') {
    FUZZ_CHECK(dduct__store_is_digest(k->digest, strlen(k->digest)), "c/ key without digest");
    FUZZ_CHECK(strcmp(k->digest + 7, r + 5) == 0, "digest %s names another file %s", k->digest,
               r);
  } else {
    FUZZ_CHECK(k->digest[0] == '\0', "u/ key with digest '%s'", k->digest);
  }
}

/* Join rel to the temp dir the way the store does and make sure the OS agrees it stays in. */
static void check_resolves_inside(const struct dduct__store_key *k) {
  char dir[PATH_MAX + 80], file[PATH_MAX + 80], real[PATH_MAX];
  const char *slash;
  size_t tlen = strlen(tmpdir);
  if (tmpdir[0] == '\0') return;
  slash = strrchr(k->rel, '/');
  snprintf(dir, sizeof(dir), "%s/%.*s", tmpdir, (int)(slash - k->rel), k->rel);
  /* Create both levels (ignore EEXIST): realpath needs the directory to exist. */
  {
    char top[PATH_MAX + 80];
    snprintf(top, sizeof(top), "%s/%c", tmpdir, k->rel[0]);
    FUZZ_CHECK(mkdir(top, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", top, strerror(errno));
    FUZZ_CHECK(mkdir(dir, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", dir, strerror(errno));
  }
  FUZZ_CHECK(realpath(dir, real) != NULL, "realpath %s: %s", dir, strerror(errno));
  FUZZ_CHECK(strncmp(real, tmpdir, tlen) == 0 && real[tlen] == '/', "%s resolves to %s", dir,
             real);
  snprintf(file, sizeof(file), "%s/%s", real, slash + 1);
  FUZZ_CHECK(strchr(slash + 1, '/') == NULL && strcmp(slash + 1, ".") != 0, "file name %s",
             slash + 1);
}

static int same_key(const struct dduct__store_key *a, const struct dduct__store_key *b) {
  return strcmp(a->rel, b->rel) == 0 && strcmp(a->digest, b->digest) == 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  dduct_log_set(DDUCT_LOG_OFF, NULL, NULL);
  make_tmpdir();
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const schemes[] = {"http", "https", NULL, "HTTP", "ftp", ""};
  struct dduct__store_key k, k2;
  const char *scheme, *host, *path;
  size_t hostlen, pathlen;
  unsigned port;
  char *buf;
  if (size < 4 || size > 16384) return 0;
  scheme = schemes[data[0] % 6];
  port = (unsigned)data[1] << 8 | data[2];
  hostlen = data[3] <= size - 4 ? data[3] : size - 4;
  /* Exact-size copies so ASan sees any read past host or path. */
  host = memcpy(malloc(hostlen + 1), data + 4, hostlen);
  pathlen = size - 4 - hostlen;
  path = memcpy(malloc(pathlen + 1), data + 4 + hostlen, pathlen);

  if (scheme == NULL) {
    FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, path, pathlen, &k) ==
                   DDUCT_EINVAL,
               "NULL scheme accepted");
    scheme = "https";
  }
  FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, path, pathlen, &k) == 0,
             "key_make failed");
  check_shape(&k);
  check_resolves_inside(&k);
  FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, path, pathlen, &k2) == 0 &&
                 same_key(&k, &k2),
             "not deterministic");
  if (k.rel[0] == 'c') {
    /* Content-addressed: shared across hosts and ports. */
    FUZZ_CHECK(dduct__store_key_make("https", "other.example", 13, 8443, path, pathlen, &k2) == 0 &&
                   same_key(&k, &k2),
               "blob key depends on the host");
    FUZZ_CHECK(memmem(path, pathlen, k.digest, strlen(k.digest)) != NULL, "digest not in path");
  } else {
    /* The other scheme of the pair, on the same port or on its own default. */
    int https = strcasecmp(scheme, "https") == 0;
    struct dduct__store_key k3;
    FUZZ_CHECK(dduct__store_key_make(https ? "http" : "https", host, hostlen, port, path, pathlen,
                                     &k2) == 0 &&
                   dduct__store_key_make(https ? "http" : "https", host, hostlen,
                                         https ? 80 : 443, path, pathlen, &k3) == 0,
               "key_make failed");
    FUZZ_CHECK(!same_key(&k, &k2) && !same_key(&k, &k3), "http and https share the key %s",
               k.rel);
  }
  /* Host case does not matter. */
  buf = malloc(hostlen + 1);
  for (size_t i = 0; i < hostlen; i++)
    buf[i] = (char)(host[i] >= 'a' && host[i] <= 'z' ? host[i] - 'a' + 'A' : host[i]);
  FUZZ_CHECK(dduct__store_key_make(scheme, buf, hostlen, port, path, pathlen, &k2) == 0 &&
                 same_key(&k, &k2),
             "key depends on the host's case");
  free(buf);
  /* A query string is part of an ordinary key (not of a blob's); an empty one is none. */
  {
    const char *q = memchr(path, '?', pathlen);
    size_t base = q != NULL ? (size_t)(q - path) : pathlen;
    struct dduct__store_key k3;
    buf = malloc(base + 3);
    memcpy(buf, path, base);
    buf[base] = '?';
    FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, buf, base, &k2) == 0 &&
                   dduct__store_key_make(scheme, host, hostlen, port, buf, base + 1, &k3) == 0 &&
                   same_key(&k2, &k3),
               "an empty query changes the key");
    memcpy(buf + base, "?z", 2);
    FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, buf, base + 2, &k3) == 0,
               "key_make failed");
    if (k.rel[0] == 'c')
      FUZZ_CHECK(same_key(&k, &k3) && same_key(&k, &k2), "a blob key depends on the query");
    else
      FUZZ_CHECK(!same_key(&k2, &k3), "the query ?z does not change the key %s", k2.rel);
    free(buf);
  }
  /* Query rules: what they keep is a query the key takes as it is; with nothing to drop they
   * copy the target. */
  {
    static const char *const specs[] = {"*:z,sig"};
    static struct dduct__query_rules *rules;
    char *t = malloc(pathlen + 1);
    size_t n;
    if (rules == NULL) FUZZ_CHECK(dduct__query_rules_new(specs, 1, &rules, NULL, 0) == 0, "rules");
    n = dduct__query_rules_apply(rules, "h.example", path, pathlen, t);
    FUZZ_CHECK(n <= pathlen, "rules made the target longer (%zu > %zu)", n, pathlen);
    FUZZ_CHECK(memchr(path, '?', pathlen) != NULL || (n == pathlen && memcmp(t, path, n) == 0),
               "a target without a query was changed");
    FUZZ_CHECK(dduct__store_key_make(scheme, host, hostlen, port, t, n, &k2) == 0, "key_make");
    free(t);
  }
  FUZZ_CHECK(dduct__store_key_make(scheme, NULL, 0, port, path, pathlen, &k2) == DDUCT_EINVAL,
             "NULL host accepted");
  free((void *)host);
  free((void *)path);
  return 0;
}
