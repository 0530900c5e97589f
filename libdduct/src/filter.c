/* The filter set: PCRE2 patterns that decide which URL paths are cached.
 *
 * Threads: a compiled pattern is only read by pcre2_match, so any number of loop threads match
 * at once. The scratch space (match data) is the thread's own: one match data of one pair per
 * thread, for every pattern of every set (the answer is yes or no, so no pattern needs its
 * captures), made on the thread's first match and freed by the thread-specific key's destructor
 * when the thread ends. No lock on the way. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct dduct_filter {
  pcre2_code **v;
  size_t n, cap;
};

static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static int md_key_rc;

static void md_free(void *md) {
  pcre2_match_data_free(md);
}

static void md_key_make(void) {
  md_key_rc = pthread_key_create(&md_key, md_free);
}

/* This thread's match data; NULL when out of memory. */
static pcre2_match_data *thread_md(void) {
  pcre2_match_data *md;
  if (pthread_once(&md_once, md_key_make) != 0 || md_key_rc != 0) return NULL;
  md = pthread_getspecific(md_key);
  if (md != NULL) return md;
  /* One pair: pcre2_match answers 0 ("matched, the vector is too small for the captures"). */
  md = pcre2_match_data_create(1, NULL);
  if (md != NULL && pthread_setspecific(md_key, md) != 0) {
    pcre2_match_data_free(md);
    md = NULL;
  }
  return md;
}

int dduct_filter_new(struct dduct_filter **out) {
  *out = calloc(1, sizeof(**out));
  return *out != NULL ? 0 : DDUCT_ENOMEM;
}

static int grow(struct dduct_filter *f) {
  size_t cap = f->cap ? f->cap * 2 : 8;
  pcre2_code **v = realloc(f->v, cap * sizeof(*v));
  if (v == NULL) return DDUCT_ENOMEM;
  f->v = v;
  f->cap = cap;
  return 0;
}

int dduct_filter_add(struct dduct_filter *f, const char *pattern, char *err, size_t errlen) {
  int code;
  PCRE2_SIZE off;
  pcre2_code *re;

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
  f->v[f->n++] = re;
  return 0;
}

int dduct_filter_match(const struct dduct_filter *f, const char *path, size_t len) {
  pcre2_match_data *md;
  if (f == NULL || path == NULL || f->n == 0) return 0;
  if ((md = thread_md()) == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < f->n; i++) {
    /* Paths come off the wire: they may hold invalid UTF-8, which must not match, not fail. The
     * JIT's stack is the default one on this thread's machine stack: nothing shared. */
    int rc = pcre2_match(f->v[i], (PCRE2_SPTR)path, len, 0, 0, md, NULL);
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
  for (size_t i = 0; i < f->n; i++) pcre2_code_free(f->v[i]);
  free(f->v);
  free(f);
}
