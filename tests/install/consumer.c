/* A program built only from what `meson install` ships: dduct.h, libdduct.so and dduct.pc. */
#include <dduct.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  struct dduct_filter *f = NULL;
  char err[256] = "";
  int rc;

  /* The header's macros, the library and dduct.pc (meson's project version) must agree. */
  if (argc < 2 || strcmp(dduct_version(), argv[1]) != 0) {
    fprintf(stderr, "library version %s, dduct.pc says %s\n", dduct_version(), argc > 1 ? argv[1] : "?");
    return 1;
  }
  if (dduct_filter_new(&f) != 0) return 1;
  rc = dduct_filter_add(f, "^/.*\\.deb$", err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  rc = dduct_filter_match(f, "/pool/a.deb", 11);
  dduct_filter_free(f);
  if (rc != 1) return 1;
  if (strcmp(dduct_err_name(DDUCT_ECORRUPT), "DDUCT_ECORRUPT") != 0) return 1;
  printf("ok - linked libdduct %s through pkg-config and matched a filter\n", dduct_version());
  return 0;
}
