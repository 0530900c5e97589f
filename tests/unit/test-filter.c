/* The seed's default filters against real registry, package and archive paths, and one set
 * matched from many threads at once (the proxy's loops share it). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dduct.h"
#include "tap.h"

static const char *const seed[] = {
    "^/v2/.*/blobs/sha256:\\w+$",
    "^/.*\\.(?:apk|deb|rpm)$",
    "^/.*\\.(?:tar|tbz|tgz|txz)$",
    "^/.*\\.(?:7z|bz2|gz|xz|zip|zst)$",
};

static int match(struct dduct_filter *f, const char *p) {
  return dduct_filter_match(f, p, strlen(p));
}

/* Paths and their answers under the seed patterns; long ones so a match takes a while. */
static const struct {
  const char *path;
  int want;
} cases[] = {
    {"/v2/library/alpine/blobs/sha256:c6a83fedfae6ed8a4f5f7cbb6a7b6f1c1ec3d86fea8cb9e5ba2e4f6a1c0d8e9f", 1},
    {"/v2/library/alpine/manifests/latest", 0},
    {"/debian/pool/main/c/curl/curl_7.88.1-10_amd64.deb", 1},
    {"/debian/dists/bookworm/main/binary-amd64/Packages", 0},
    {"/releases/node-v20.9.0-linux-x64.tar.xz", 1},
    {"/file.deb.sig", 0},
    {"/x\xff\xfe.deb", 0}, /* invalid UTF-8: no match, no error */
    {"/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/0/1/2/3/4/5/6/7/8/9/archive.zip", 1},
};

struct worker {
  const struct dduct_filter *f;
  int wrong;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < 4000; i++) {
    size_t c = (size_t)i % (sizeof(cases) / sizeof(cases[0]));
    if (dduct_filter_match(w->f, cases[c].path, strlen(cases[c].path)) != cases[c].want)
      w->wrong++;
  }
  return NULL; /* the thread's match data goes with the thread (LeakSanitizer checks) */
}

/* One set, eight threads matching at once, each ending afterwards; then again on fresh threads. */
static void test_threads(struct dduct_filter *f) {
  struct worker w[8];
  pthread_t th[8];
  int wrong = 0, started = 0;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < 8; i++) {
      w[i] = (struct worker){.f = f};
      if (pthread_create(&th[i], NULL, worker_main, &w[i]) == 0) started++;
      else th[i] = pthread_self();
    }
    for (int i = 0; i < 8; i++) {
      if (pthread_equal(th[i], pthread_self())) continue;
      pthread_join(th[i], NULL);
      wrong += w[i].wrong;
    }
  }
  CHECK_EQ_INT(started, 16, "sixteen matching threads started");
  CHECK_EQ_INT(wrong, 0, "8 threads x 4000 matches at once on one set: every answer right");
}

int main(void) {
  struct dduct_filter *f;
  char err[256] = "";

  CHECK_EQ_INT(dduct_filter_new(&f), 0, "a filter set can be created");
  for (size_t i = 0; i < sizeof(seed) / sizeof(seed[0]); i++)
    CHECK_EQ_INT(dduct_filter_add(f, seed[i], err, sizeof(err)), 0, "seed patterns compile");
  CHECK_EQ_INT(dduct_filter_count(f), 4, "all four seed patterns are held");

  CHECK(match(f, "/v2/library/alpine/blobs/sha256:"
                 "c6a83fedfae6ed8a4f5f7cbb6a7b6f1c1ec3d86fea8cb9e5ba2e4f6a1c0d8e9f") == 1,
        "an OCI blob URL matches");
  CHECK(match(f, "/v2/library/alpine/manifests/latest") == 0, "an OCI manifest does not match");
  CHECK(match(f, "/v2/library/alpine/blobs/uploads/1234") == 0, "a blob upload does not match");
  CHECK(match(f, "/debian/pool/main/c/curl/curl_7.88.1-10_amd64.deb") == 1, "a .deb matches");
  CHECK(match(f, "/alpine/v3.18/main/x86_64/musl-1.2.4-r2.apk") == 1, "an .apk matches");
  CHECK(match(f, "/fedora/Packages/b/bash-5.2.15-3.fc38.x86_64.rpm") == 1, "an .rpm matches");
  CHECK(match(f, "/releases/node-v20.9.0-linux-x64.tar.xz") == 1, "a .tar.xz matches");
  CHECK(match(f, "/archive/thing.txz") == 1, "a .txz matches");
  CHECK(match(f, "/debian/dists/bookworm/InRelease") == 0, "an apt index does not match");
  CHECK(match(f, "/debian/dists/bookworm/main/binary-amd64/Packages") == 0,
        "a Packages index does not match");
  CHECK(match(f, "/file.deb.sig") == 0, "a signature beside a package does not match");
  CHECK(match(f, "") == 0, "an empty path does not match");
  {
    const char bad[] = "/x\xff\xfe.deb";
    CHECK(dduct_filter_match(f, bad, sizeof(bad) - 1) >= 0,
          "a path with invalid UTF-8 is answered, not an error");
  }

  CHECK_EQ_INT(dduct_filter_add(f, "^/(unclosed", err, sizeof(err)), DDUCT_EPATTERN,
               "a bad pattern is rejected");
  CHECK(strstr(err, "^/(unclosed") != NULL, "the error names the pattern");
  CHECK(strstr(err, "offset 11") != NULL, "the error names the offset");
  CHECK_EQ_INT(dduct_filter_count(f), 4, "a rejected pattern is not added");
  test_threads(f);

  dduct_filter_free(f);
  dduct_filter_free(NULL);
  return tap_done();
}
