#include <stdarg.h>
#include <sys/wait.h>

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

int tap_sh(char *out, size_t outlen, const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  FILE *p;
  size_t n;
  int st;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
  p = popen(cmd, "r");
  if (p == NULL) return -1;
  n = fread(out, 1, outlen - 1, p);
  out[n] = '\0';
  st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
