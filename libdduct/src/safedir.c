/* A cache or certificate directory another local user could swap files in would let them
 * choose what dduct serves (review-sec2 #1: a file_dir pre-created 0777 under /var/tmp by
 * another user had its entries replaced, digest and all). This checks the directory and the
 * path above it the way ssh's StrictModes does. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "safedir.h"

static int others_may_replace(const struct stat *st) {
  if (st->st_mode & S_ISVTX) return 0; /* sticky: only an entry's owner may rename it */
  if (st->st_mode & S_IWOTH) return 1;
  return (st->st_mode & S_IWGRP) && st->st_gid != 0 && st->st_gid != getegid();
}

int dduct__dir_private(const char *dir, const char *what, const char *mod, char *err,
                       size_t errlen) {
  char *real = realpath(dir, NULL), *slash;
  struct stat st;
  uid_t me = geteuid();
  int rc = 0;
  if (real == NULL) {
    rc = -errno;
    return dduct__errf(rc, err, errlen, "%s \"%s\": %s", what, dir, dduct_strerror(rc));
  }
  if (stat(real, &st) != 0) {
    rc = -errno;
    dduct__errf(rc, err, errlen, "%s \"%s\": %s", what, dir, dduct_strerror(rc));
    goto out;
  }
  if (st.st_uid != me) {
    rc = dduct__errf(DDUCT_EUNSAFE, err, errlen,
                     "%s \"%s\" is owned by uid %u, not by this process's user (uid %u): that "
                     "user could replace what dduct keeps there; chown it or choose another",
                     what, dir, (unsigned)st.st_uid, (unsigned)me);
    goto out;
  }
  if ((st.st_mode & 077) != 0) {
    if (chmod(real, 0700) != 0) {
      rc = -errno;
      dduct__errf(rc, err, errlen, "%s \"%s\" is open to other users (mode %03o) and cannot be "
                  "made 0700: %s", what, dir, (unsigned)(st.st_mode & 0777), dduct_strerror(rc));
      goto out;
    }
    LOG_WARN(mod, "%s \"%s\" was open to other users (mode %03o): made 0700", what, dir,
             (unsigned)(st.st_mode & 0777));
  }
  /* Every directory above: a user who may rename an entry there may swap ours for theirs. */
  while ((slash = strrchr(real, '/')) != NULL) {
    if (slash == real) slash[1] = '\0'; /* "/x" -> "/" */
    else *slash = '\0';
    if (stat(real, &st) != 0) {
      rc = -errno;
      dduct__errf(rc, err, errlen, "%s \"%s\": %s: %s", what, dir, real, dduct_strerror(rc));
      goto out;
    }
    if (st.st_uid != 0 && st.st_uid != me) {
      rc = dduct__errf(DDUCT_EUNSAFE, err, errlen,
                       "%s \"%s\": \"%s\" above it is owned by uid %u, who could replace it; "
                       "choose a directory under one owned by root or by this user", what, dir,
                       real, (unsigned)st.st_uid);
      goto out;
    }
    if (others_may_replace(&st)) {
      rc = dduct__errf(DDUCT_EUNSAFE, err, errlen,
                       "%s \"%s\": \"%s\" above it is writable by other users (mode %03o) "
                       "without the sticky bit, who could replace it", what, dir, real,
                       (unsigned)(st.st_mode & 07777));
      goto out;
    }
    if (strcmp(real, "/") == 0) break;
  }
out:
  free(real);
  return rc;
}
