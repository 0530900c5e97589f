/* The seed's default filters against real registry, package and archive paths. */
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

  dduct_filter_free(f);
  dduct_filter_free(NULL);
  return tap_done();
}
