#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

const char *dduct_strerror(int err) {
  switch (err) {
#define XX(name, code, msg) \
  case DDUCT_##name:        \
    return msg;
    DDUCT_ERRNO_MAP(XX)
#undef XX
  case 0:
    return "success";
  default:
    return uv_strerror(err);
  }
}

const char *dduct_err_name(int err) {
  switch (err) {
#define XX(name, code, msg) \
  case DDUCT_##name:        \
    return "DDUCT_" #name;
    DDUCT_ERRNO_MAP(XX)
#undef XX
  case 0:
    return "OK";
  default:
    return uv_err_name(err);
  }
}

int dduct__errf(int code, char *err, size_t errlen, const char *fmt, ...) {
  if (err != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

char *dduct__strdup(const char *s) {
  return s != NULL ? strdup(s) : NULL;
}
