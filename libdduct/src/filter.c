/* The filter set: PCRE2 patterns that decide which URL paths are cached. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct pattern {
  pcre2_code *code;
  pcre2_match_data *md; /* one per pattern; matching is serialised by the loop thread */
};

struct dduct_filter {
  struct pattern *v;
  size_t n, cap;
};

int dduct_filter_new(struct dduct_filter **out) {
  *out = calloc(1, sizeof(**out));
  return *out != NULL ? 0 : DDUCT_ENOMEM;
}

static int grow(struct dduct_filter *f) {
  size_t cap = f->cap ? f->cap * 2 : 8;
  struct pattern *v = realloc(f->v, cap * sizeof(*v));
  if (v == NULL) return DDUCT_ENOMEM;
  f->v = v;
  f->cap = cap;
  return 0;
}

int dduct_filter_add(struct dduct_filter *f, const char *pattern, char *err, size_t errlen) {
  int code;
  PCRE2_SIZE off;
  pcre2_code *re;
  pcre2_match_data *md;

  if (f == NULL || pattern == NULL) return DDUCT_EINVAL;
  if (f->n == f->cap && grow(f) != 0) return DDUCT_ENOMEM;
  re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_NO_UTF_CHECK,
                     &code, &off, NULL);
  if (re == NULL) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof(msg));
    return dduct__errf(DDUCT_EPATTERN, err, errlen, "filter '%s': offset %zu: %s", pattern,
                       (size_t)off, (const char *)msg);
  }
  (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreted matching is the fallback */
  md = pcre2_match_data_create_from_pattern(re, NULL);
  if (md == NULL) {
    pcre2_code_free(re);
    return DDUCT_ENOMEM;
  }
  f->v[f->n].code = re;
  f->v[f->n].md = md;
  f->n++;
  return 0;
}

int dduct_filter_match(const struct dduct_filter *f, const char *path, size_t len) {
  if (f == NULL || path == NULL) return 0;
  for (size_t i = 0; i < f->n; i++) {
    /* Paths come off the wire: they may hold invalid UTF-8, which must not match, not fail. */
    int rc = pcre2_match(f->v[i].code, (PCRE2_SPTR)path, len, 0, 0, f->v[i].md, NULL);
    if (rc >= 0) return 1;
    if (rc != PCRE2_ERROR_NOMATCH && rc > PCRE2_ERROR_UTF8_ERR1) return DDUCT_EINTERNAL;
  }
  return 0;
}

size_t dduct_filter_count(const struct dduct_filter *f) {
  return f != NULL ? f->n : 0;
}

void dduct_filter_free(struct dduct_filter *f) {
  if (f == NULL) return;
  for (size_t i = 0; i < f->n; i++) {
    pcre2_match_data_free(f->v[i].md);
    pcre2_code_free(f->v[i].code);
  }
  free(f->v);
  free(f);
}
