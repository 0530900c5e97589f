#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int dduct__read_file(const char *path, size_t max, char **out, size_t *len) {
  struct stat st;
  char *buf = NULL;
  size_t got = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
  if (fd < 0) return -errno;
  if (fstat(fd, &st) != 0) rc = -errno;
  else if (!S_ISREG(st.st_mode)) rc = -EISDIR;
  else if ((uint64_t)st.st_size > max) rc = DDUCT_ETOOBIG;
  else if ((buf = malloc((size_t)st.st_size + 1)) == NULL) rc = DDUCT_ENOMEM;
  if (rc != 0) {
    close(fd);
    return rc;
  }
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return 0;
}
