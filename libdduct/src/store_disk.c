/* The store's blocking disk operations. They run on libuv's thread pool (or at open), never on
 * the loop thread, and touch only the paths they are given.
 *
 * Crash safety rests on ordering, not on luck: a "<name>.part" is locked by its writer for its
 * whole life (so a leftover whose lock can be taken belongs to a dead process), data reaches its
 * final name only complete and verified, and an entry counts as complete only when its sidecar
 * exists and names the data file's exact size. The sidecar of the previous version is removed
 * before new data is renamed into place, so old metadata never describes new bytes. With sync
 * (the default, [cache] fsync), data and sidecar are fsync'd before their renames and the
 * directory after them, so a commit also survives a power loss. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

#define SIDECAR_MAX (64 * 1024)

static atomic_uint tmp_counter;

static int join(char *out, size_t cap, const char *base, const char *suffix) {
  int n = snprintf(out, cap, "%s%s", base, suffix);
  return n < 0 || (size_t)n >= cap ? DDUCT_ETOOBIG : 0;
}

/* A unique temporary name beside base: "<base><kind>.<pid>.<n><end>". */
static int tmp_name(char *out, size_t cap, const char *base, const char *kind, const char *end) {
  unsigned n = atomic_fetch_add(&tmp_counter, 1);
  int len = snprintf(out, cap, "%s%s.%ld.%u%s", base, kind, (long)getpid(), n, end);
  return len < 0 || (size_t)len >= cap ? DDUCT_ETOOBIG : 0;
}

static int xclose(int fd) {
  int rc = close(fd);
  return rc == 0 || errno == EINTR ? 0 : -errno;
}

/* mkdir the two shard levels above base ("<dir>/c/ab/<name>"). */
static int make_parents(const char *base) {
  char p[PATH_MAX];
  char *slash;
  if (join(p, sizeof(p), base, "") != 0) return DDUCT_ETOOBIG;
  if ((slash = strrchr(p, '/')) == NULL) return DDUCT_EINVAL;
  *slash = '\0';
  if (mkdir(p, 0700) == 0 || errno == EEXIST) return 0;
  if (errno != ENOENT) return -errno;
  if ((slash = strrchr(p, '/')) == NULL) return DDUCT_EINVAL;
  *slash = '\0';
  if (mkdir(p, 0700) != 0 && errno != EEXIST) return -errno;
  *slash = '/';
  if (mkdir(p, 0700) != 0 && errno != EEXIST) return -errno;
  return 0;
}

/* ---- load --------------------------------------------------------------------------------- */

static int read_small(const char *path, char **out, size_t *outlen) {
  int rc = dduct__read_file(path, SIDECAR_MAX, out, outlen);
  /* Not a regular file, or bigger than any sidecar we write: not one of ours. */
  return rc == -EISDIR || rc == DDUCT_ETOOBIG ? DDUCT_ECORRUPT : rc;
}

static char *json_str(const cJSON *o, const char *name) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
  return strdup(cJSON_IsString(v) && v->valuestring != NULL ? v->valuestring : "");
}

int dduct__store_header_next(const char *block, size_t len, size_t *off, const char **name,
                             const char **value) {
  const char *n, *v, *end;
  if (block == NULL || *off >= len) return 0;
  n = block + *off;
  end = memchr(n, '\0', len - *off);
  if (end == NULL || end + 1 >= block + len) return 0;
  v = end + 1;
  end = memchr(v, '\0', (size_t)(block + len - v));
  if (end == NULL) return 0;
  *name = n;
  *value = v;
  *off = (size_t)(end + 1 - block);
  return 1;
}

/* "headers": [[name, value], ...] into a block; pairs that are not two strings, or whose name
 * is empty or holds what no header name can, are skipped (a sidecar is data, not trusted
 * code: nothing in it may split a response head). */
static int parse_headers(const cJSON *arr, struct dduct__store_loaded *l) {
  size_t cap = 0, len = 0;
  char *b = NULL;
  int n = cJSON_GetArraySize(arr);
  for (int i = 0; i < n; i++) {
    const cJSON *pair = cJSON_GetArrayItem(arr, i), *k, *v;
    size_t kl, vl;
    if (!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2) continue;
    k = cJSON_GetArrayItem(pair, 0);
    v = cJSON_GetArrayItem(pair, 1);
    if (!cJSON_IsString(k) || !cJSON_IsString(v) || k->valuestring == NULL ||
        v->valuestring == NULL)
      continue;
    kl = strlen(k->valuestring);
    vl = strlen(v->valuestring);
    if (kl == 0 || strpbrk(k->valuestring, " \t\r\n:") != NULL ||
        strpbrk(v->valuestring, "\r\n") != NULL)
      continue;
    if (len + kl + vl + 2 > cap) {
      size_t nc = (len + kl + vl + 2) * 2;
      char *nb = realloc(b, nc);
      if (nb == NULL) {
        free(b);
        return DDUCT_ENOMEM;
      }
      b = nb;
      cap = nc;
    }
    memcpy(b + len, k->valuestring, kl + 1);
    len += kl + 1;
    memcpy(b + len, v->valuestring, vl + 1);
    len += vl + 1;
  }
  if (b == NULL && (b = malloc(1)) == NULL) return DDUCT_ENOMEM; /* an empty list: known, none */
  l->headers = b;
  l->headers_len = len;
  return 0;
}

static int parse_sidecar(const char *text, size_t len, struct dduct__store_loaded *l) {
  cJSON *o = cJSON_ParseWithLength(text, len);
  const cJSON *size, *at;
  int rc = DDUCT_ECORRUPT;
  if (o == NULL) return DDUCT_ECORRUPT;
  size = cJSON_GetObjectItemCaseSensitive(o, "size");
  at = cJSON_GetObjectItemCaseSensitive(o, "stored_at");
  if (cJSON_IsNumber(size) && size->valuedouble >= 0) {
    l->size = (uint64_t)size->valuedouble;
    l->stored_at = cJSON_IsNumber(at) ? (int64_t)at->valuedouble : 0;
    l->is_private = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "private"));
    l->url = json_str(o, "url");
    l->content_type = json_str(o, "content_type");
    l->etag = json_str(o, "etag");
    l->last_modified = json_str(o, "last_modified");
    l->digest = json_str(o, "digest");
    rc = l->url && l->content_type && l->etag && l->last_modified && l->digest ? 0 : DDUCT_ENOMEM;
    {
      const cJSON *hs = cJSON_GetObjectItemCaseSensitive(o, "headers");
      if (rc == 0 && cJSON_IsArray(hs)) rc = parse_headers(hs, l);
    }
  }
  cJSON_Delete(o);
  return rc;
}

void dduct__store_loaded_free(struct dduct__store_loaded *l) {
  free(l->url);
  free(l->content_type);
  free(l->etag);
  free(l->last_modified);
  free(l->digest);
  l->url = l->content_type = l->etag = l->last_modified = l->digest = NULL;
  free(l->headers);
  l->headers = NULL;
  l->headers_len = 0;
}

int dduct__store_disk_load(const char *base, struct dduct__store_loaded *out) {
  char path[PATH_MAX];
  char *text = NULL;
  size_t len = 0;
  struct stat st;
  int rc;
  memset(out, 0, sizeof(*out));
  out->fd = -1;
  if (join(path, sizeof(path), base, ".json") != 0) return DDUCT_ETOOBIG;
  if ((rc = read_small(path, &text, &len)) != 0) return rc == UV_ENOENT ? UV_ENOENT : rc;
  rc = parse_sidecar(text, len, out);
  free(text);
  if (rc != 0) goto fail;
  out->fd = open(base, O_RDONLY | O_CLOEXEC);
  if (out->fd < 0) {
    rc = -errno;
    goto fail;
  }
  /* A sidecar that disagrees with its data describes some other version: not an entry. */
  if (fstat(out->fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != out->size) {
    rc = UV_ENOENT;
    goto fail;
  }
  return 0;
fail:
  if (out->fd >= 0) close(out->fd);
  out->fd = -1;
  dduct__store_loaded_free(out);
  return rc;
}

/* ---- reserve ------------------------------------------------------------------------------ */

int dduct__store_remove_if_stale(const char *path) {
  struct stat a, b;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return errno == ENOENT ? 1 : -errno;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd);
    return e == EWOULDBLOCK ? 0 : -e;
  }
  /* Only unlink the very file we locked: someone may have replaced a stale one meanwhile. */
  if (fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    unlink(path);
  close(fd);
  return 1;
}

/* The part appears under its name already locked (created under a temporary name, locked, then
 * linked), so no other process can ever see it unlocked while its writer lives. */
int dduct__store_disk_reserve(const char *base, int *out) {
  char part[PATH_MAX], tmp[PATH_MAX];
  int fd, rc = 0;
  *out = -1;
  if (join(part, sizeof(part), base, ".part") != 0) return DDUCT_ETOOBIG;
  if (tmp_name(tmp, sizeof(tmp), base, ".part", "") != 0) return DDUCT_ETOOBIG;
  if ((rc = make_parents(base)) != 0) return rc;
  fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    rc = -errno;
    goto out;
  }
  for (int attempt = 0; attempt < 3; attempt++) {
    if (link(tmp, part) == 0) {
      rc = 0;
      goto out;
    }
    if (errno != EEXIST) {
      rc = -errno;
      goto out;
    }
    rc = dduct__store_remove_if_stale(part);
    if (rc <= 0) {
      rc = rc == 0 ? DDUCT_EAGAIN : rc;
      goto out;
    }
    rc = DDUCT_EAGAIN;
  }
out:
  unlink(tmp);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  *out = fd;
  return 0;
}

int dduct__store_disk_pwrite(int fd, const char *buf, size_t len, uint64_t off) {
  while (len > 0) {
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return UV_EIO;
    buf += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

/* ---- commit ------------------------------------------------------------------------------- */

static int write_sidecar(const char *base, const char *json, size_t len, int sync) {
  char tmp[PATH_MAX], final[PATH_MAX];
  int fd, rc;
  if (tmp_name(tmp, sizeof(tmp), base, ".json", ".tmp") != 0 ||
      join(final, sizeof(final), base, ".json") != 0)
    return DDUCT_ETOOBIG;
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  (void)flock(fd, LOCK_EX | LOCK_NB); /* so a starting process does not take it for a leftover */
  rc = dduct__store_disk_pwrite(fd, json, len, 0);
  if (rc == 0 && sync && fdatasync(fd) != 0) rc = -errno;
  if (rc == 0 && rename(tmp, final) != 0) rc = -errno;
  if (xclose(fd) != 0 && rc == 0) rc = UV_EIO;
  if (rc != 0) unlink(tmp);
  return rc;
}

/* The directory holding base, so the renames in it survive a power loss. */
static int sync_dir(const char *base) {
  char p[PATH_MAX];
  char *slash;
  int fd, rc = 0;
  if (join(p, sizeof(p), base, "") != 0 || (slash = strrchr(p, '/')) == NULL) return DDUCT_EINVAL;
  *slash = '\0';
  if ((fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) return -errno;
  if (fsync(fd) != 0) rc = -errno;
  close(fd);
  return rc;
}

int dduct__store_disk_commit(const char *base, int fd, const char *json, size_t jsonlen,
                             int sync, int *created) {
  char part[PATH_MAX], side[PATH_MAX];
  int rc;
  *created = 0;
  if (join(part, sizeof(part), base, ".part") != 0 || join(side, sizeof(side), base, ".json") != 0)
    return DDUCT_ETOOBIG;
  /* Durable: the data reaches the disk before its name does, the sidecar before its name, and
   * the directory (both renames) last. */
  if (sync && fdatasync(fd) != 0) {
    rc = -errno;
    unlink(part);
    return rc;
  }
  if (unlink(side) == 0)
    *created = 0;
  else if (errno == ENOENT)
    *created = 1;
  else {
    rc = -errno;
    unlink(part);
    return rc;
  }
  if (rename(part, base) != 0) {
    rc = -errno;
    unlink(part);
    return rc;
  }
  if ((rc = write_sidecar(base, json, jsonlen, sync)) != 0) {
    unlink(base);
    return rc;
  }
  if (sync && (rc = sync_dir(base)) != 0) return rc == UV_EINVAL ? 0 : rc;
  return 0;
}

/* Once complete, the entry is kept open read-only (the fill's read-write descriptor would keep
 * "<name>.part (deleted)" open for writing: a remount read-only of file_dir fails with EBUSY).
 * dup3 swaps the descriptor in place, so reads in flight on fd finish on the same file. */
int dduct__store_disk_reopen_ro(const char *base, int fd) {
  struct stat a, b;
  int ro = open(base, O_RDONLY | O_CLOEXEC), rc = 0;
  if (ro < 0) return -errno;
  if (fstat(ro, &a) != 0 || fstat(fd, &b) != 0) rc = -errno;
  else if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) rc = DDUCT_EAGAIN; /* replaced already */
  else if (dup3(ro, fd, O_CLOEXEC) < 0) rc = -errno;
  close(ro);
  return rc;
}

void dduct__store_disk_discard(const char *base) {
  char part[PATH_MAX];
  if (join(part, sizeof(part), base, ".part") == 0) unlink(part);
}

void dduct__store_disk_remove(const char *base) {
  char side[PATH_MAX];
  /* The sidecar first: without it the data file is no entry, whatever happens next. */
  if (join(side, sizeof(side), base, ".json") == 0) (void)unlink(side);
  (void)unlink(base);
}
