/* A tiny test harness: each CHECK prints one line; the process exits 1 if any failed. */
#ifndef DDUCT_TAP_H
#define DDUCT_TAP_H

#include <stdio.h>
#include <string.h>

extern int tap_failed, tap_count;

void tap_check(int ok, const char *expr, const char *file, int line, const char *what);
int tap_done(void);
/* Run a printf-formatted shell command; its stdout and stderr (NUL-terminated, truncated to
 * outlen) land in out. Returns its exit status, or -1 if it did not exit normally. */
int tap_sh(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* CHECK(cond, "what this proves") */
#define CHECK(cond, what) tap_check(!!(cond), #cond, __FILE__, __LINE__, (what))
#define CHECK_EQ_INT(a, b, what)                                                        \
  do {                                                                                  \
    long long a_ = (long long)(a), b_ = (long long)(b);                                 \
    if (a_ != b_) fprintf(stderr, "  %s = %lld, expected %lld\n", #a, a_, b_);          \
    tap_check(a_ == b_, #a " == " #b, __FILE__, __LINE__, (what));                      \
  } while (0)
#define CHECK_EQ_STR(a, b, what)                                                        \
  do {                                                                                  \
    const char *a_ = (a), *b_ = (b);                                                    \
    int ok_ = a_ != NULL && b_ != NULL && strcmp(a_, b_) == 0;                          \
    if (!ok_) fprintf(stderr, "  %s = \"%s\", expected \"%s\"\n", #a, a_ ? a_ : "(null)", \
                      b_ ? b_ : "(null)");                                              \
    tap_check(ok_, #a " == " #b, __FILE__, __LINE__, (what));                           \
  } while (0)

#endif
