#include "tap.h"

int tap_failed, tap_count;

void tap_check(int ok, const char *expr, const char *file, int line, const char *what) {
  tap_count++;
  if (ok) {
    printf("ok %d - %s\n", tap_count, what);
  } else {
    tap_failed++;
    printf("not ok %d - %s\n", tap_count, what);
    fprintf(stderr, "  %s:%d: %s\n", file, line, expr);
  }
  fflush(stdout);
}

int tap_done(void) {
  printf("1..%d\n", tap_count);
  if (tap_failed) fprintf(stderr, "%d of %d checks failed\n", tap_failed, tap_count);
  return tap_failed ? 1 : 0;
}
