/* The store's disk budget, on the thread pool: loading the index of complete entries from
 * file_dir, the journal that keeps processes sharing file_dir (and the next start) informed of
 * commits, removals and uses, and eviction's unlinks. Blocking; the caller holds the index lock
 * where stated.
 *
 * The journal ("<file_dir>/journal") is a file of fixed 56-byte records, appended with O_APPEND
 * in single writes (so records of several processes never interleave): '+' an entry was
 * committed, '-' removed, 'h' used (written in batches, at most once per entry while its visited
 * bit stays set and once per 10 minutes otherwise: no write per hit). A process applies the
 * records the others appended before each eviction and every few seconds, so all of them keep
 * one index and one budget. When it grows past its bound, the journal is rewritten (temporary
 * file and rename) to the 'h' records of the entries used since their last eviction pass; the
 * others notice the new file and read it from its start. The data files themselves are the
 * truth about what exists: at start the index is rebuilt from them, then the journal's uses are
 * applied. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

#define JOURNAL "journal"

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

int dduct__store_name_from_hex(const char *hex, unsigned char name[32]) {
  for (int i = 0; i < 32; i++) {
    int a = hexval(hex[2 * i]), b = hexval(hex[2 * i + 1]);
    if (a < 0 || b < 0) return -1;
    name[i] = (unsigned char)(a * 16 + b);
  }
  return 0;
}

int dduct__store_rel_name(const char *rel, char *kind, unsigned char name[32]) {
  if ((rel[0] != 'c' && rel[0] != 'u') || rel[1] != '/' || strlen(rel) != 5 + 64) return -1;
  *kind = rel[0];
  return dduct__store_name_from_hex(rel + 5, name);
}

void dduct__store_rel_of(char kind, const unsigned char name[32], char rel[72]) {
  char hex[65];
  dduct__store_hex(name, 32, hex);
  snprintf(rel, 72, "%c/%.2s/%s", kind, hex, hex);
}

static int jpath(char *out, size_t cap, const char *root, const char *name) {
  int n = snprintf(out, cap, "%s/%s", root, name);
  return n < 0 || (size_t)n >= cap ? DDUCT_ETOOBIG : 0;
}

/* ---- journal ------------------------------------------------------------------------------ */

int dduct__journal_append(const char *root, const struct dduct__jrec *r, size_t n) {
  char p[PATH_MAX];
  const char *b = (const char *)r;
  size_t len = n * sizeof(*r);
  int fd, rc = 0;
  if (n == 0) return 0;
  if (jpath(p, sizeof(p), root, JOURNAL) != 0) return DDUCT_ETOOBIG;
  /* Opened by name each time: after another process rewrote the journal, appends go to the new
   * file. One write per batch (O_APPEND): no other process's record lands inside ours. */
  if ((fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) < 0) return -errno;
  while (len > 0) {
    ssize_t w = write(fd, b, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      rc = w < 0 ? -errno : UV_EIO;
      break;
    }
    b += w;
    len -= (size_t)w;
  }
  close(fd);
  return rc;
}

static int rec_valid(const struct dduct__jrec *r) {
  return (r->type == '+' || r->type == '-' || r->type == 'h') && (r->kind == 'c' || r->kind == 'u');
}

static void apply_one(struct dduct__index *ix, const struct dduct__jrec *r, int adds) {
  uint32_t i;
  switch (r->type) {
  case '+':
    if (adds) (void)dduct__index_put(ix, (char)r->kind, r->name, r->size, r->order);
    break;
  case '-':
    (void)dduct__index_remove(ix, (char)r->kind, r->name, r->order);
    break;
  case 'h':
    i = dduct__index_find(ix, (char)r->kind, r->name);
    if (i != DDUCT__INDEX_NONE && ix->recs[i].order == r->order) {
      ix->recs[i].visited = 1;
      if (r->time > ix->recs[i].last_used) ix->recs[i].last_used = r->time;
    }
    break;
  }
}

/* Read the records appended since *off (in the journal file *ino; a rewritten journal is read
 * from its start) into ix. adds 0: ignore '+' (the caller indexed the disk itself). */
int dduct__journal_apply(const char *root, struct dduct__index *ix, uint64_t *off, uint64_t *ino,
                         int adds) {
  char p[PATH_MAX];
  struct dduct__jrec buf[256];
  struct stat st;
  int fd;
  if (jpath(p, sizeof(p), root, JOURNAL) != 0) return DDUCT_ETOOBIG;
  if ((fd = open(p, O_RDONLY | O_CLOEXEC)) < 0) return errno == ENOENT ? 0 : -errno;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return -errno;
  }
  if ((uint64_t)st.st_ino != *ino || (uint64_t)st.st_size < *off) {
    *ino = (uint64_t)st.st_ino;
    *off = 0;
  }
  *off -= *off % sizeof(struct dduct__jrec);
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof(buf), (off_t)*off);
    size_t k;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    k = (size_t)n / sizeof(buf[0]);
    if (k == 0) break; /* a record still being written */
    for (size_t i = 0; i < k; i++)
      if (rec_valid(&buf[i])) apply_one(ix, &buf[i], adds);
    *off += k * sizeof(buf[0]);
  }
  close(fd);
  return 0;
}

/* Rewrite the journal as the uses the index holds. Only one process does it at a time (a lock
 * on the journal's lock file); the others' appends racing with the rename may be lost (uses
 * only: the next start rebuilds entries from the disk). */
int dduct__journal_compact(const char *root, const struct dduct__index *ix, uint64_t *off,
                           uint64_t *ino) {
  char p[PATH_MAX], tmp[PATH_MAX], lk[PATH_MAX];
  struct dduct__jrec buf[256];
  size_t n = 0;
  struct stat st;
  int fd, lfd, rc = 0;
  if (jpath(p, sizeof(p), root, JOURNAL) != 0 || jpath(lk, sizeof(lk), root, JOURNAL ".lock") != 0 ||
      snprintf(tmp, sizeof(tmp), "%s/" JOURNAL ".%ld.tmp", root, (long)getpid()) >= (int)sizeof(tmp))
    return DDUCT_ETOOBIG;
  if ((lfd = open(lk, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) return -errno;
  if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
    close(lfd);
    return 0; /* another process is at it */
  }
  if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
    rc = -errno;
    goto out;
  }
  for (uint32_t i = ix->tail; i != DDUCT__INDEX_NONE && rc == 0; i = ix->recs[i].next) {
    const struct dduct__index_rec *r = &ix->recs[i];
    if (!r->visited) continue;
    memset(&buf[n], 0, sizeof(buf[n]));
    buf[n].type = 'h';
    buf[n].kind = (uint8_t)r->kind;
    buf[n].time = r->last_used;
    buf[n].size = r->size;
    buf[n].order = r->order;
    memcpy(buf[n].name, r->name, 32);
    if (++n == DDUCT_ARRAY_SIZE(buf)) {
      rc = dduct__store_disk_pwrite(fd, (const char *)buf, sizeof(buf), (uint64_t)lseek(fd, 0, SEEK_END));
      n = 0;
    }
  }
  if (rc == 0 && n > 0)
    rc = dduct__store_disk_pwrite(fd, (const char *)buf, n * sizeof(buf[0]), (uint64_t)lseek(fd, 0, SEEK_END));
  if (rc == 0 && fstat(fd, &st) != 0) rc = -errno;
  close(fd);
  if (rc == 0 && rename(tmp, p) != 0) rc = -errno;
  if (rc != 0) {
    unlink(tmp);
  } else {
    *ino = (uint64_t)st.st_ino;
    *off = (uint64_t)st.st_size; /* what we wrote is what we hold */
  }
out:
  close(lfd);
  return rc;
}

uint64_t dduct__journal_size(const char *root) {
  char p[PATH_MAX];
  struct stat st;
  if (jpath(p, sizeof(p), root, JOURNAL) != 0 || stat(p, &st) != 0) return 0;
  return (uint64_t)st.st_size;
}

/* ---- loading the index -------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_hex64(const char *s) {
  if (strlen(s) != 64) return 0;
  for (int i = 0; i < 64; i++)
    if (hexval(s[i]) < 0) return 0;
  return 1;
}

/* One shard directory: leftovers of dead processes go, complete entries (a data file with its
 * sidecar) are indexed by size and commit time. */
static void load_shard(const char *path, char kind, struct dduct__index *ix,
                       struct dduct__store_load *st) {
  char **names = NULL, p[PATH_MAX];
  size_t n = 0, cap = 0;
  struct dirent *d;
  DIR *dir = opendir(path);
  if (dir == NULL) return;
  while ((d = readdir(dir)) != NULL) {
    char *copy;
    if (d->d_name[0] == '.') continue;
    if (strstr(d->d_name, ".part") != NULL ||
        (strlen(d->d_name) > 4 && strcmp(d->d_name + strlen(d->d_name) - 4, ".tmp") == 0)) {
      struct stat sb;
      int k = snprintf(p, sizeof(p), "%s/%s", path, d->d_name);
      if (k <= 0 || (size_t)k >= sizeof(p)) continue;
      /* A temporary name ("<hex>.part.<pid>.<n>", "<hex>.json.<pid>.<n>.tmp") is unlocked for
       * an instant after its creation: only an old one is a leftover (another process may be
       * making this one right now). */
      if ((strlen(d->d_name) != 69 || strcmp(d->d_name + 64, ".part") != 0) &&
          (lstat(p, &sb) != 0 || time(NULL) - sb.st_mtime < 3600))
        continue;
      if (dduct__store_remove_if_stale(p) == 1) st->removed++;
      continue;
    }
    if (n == cap) {
      char **v = realloc(names, (cap = cap ? cap * 2 : 256) * sizeof(*v));
      if (v == NULL) break;
      names = v;
    }
    if ((copy = strdup(d->d_name)) == NULL) break;
    names[n++] = copy;
  }
  if (n > 1) qsort(names, n, sizeof(*names), cmp_str);
  for (size_t i = 0; i < n; i++) {
    unsigned char name[32];
    struct stat sb;
    if (!is_hex64(names[i])) continue;
    /* Sorted: the sidecar "<hex>.json" comes right after its data file. */
    if (i + 1 >= n || strncmp(names[i + 1], names[i], 64) != 0 ||
        strcmp(names[i + 1] + 64, ".json") != 0)
      continue;
    if (fstatat(dirfd(dir), names[i], &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
      continue;
    if (dduct__store_name_from_hex(names[i], name) != 0) continue;
    if (dduct__index_put(ix, kind, name, (uint64_t)sb.st_size,
                         (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec) == 0)
      st->entries++;
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  closedir(dir);
}

int dduct__store_load_index(const char *root, struct dduct__index *ix, struct dduct__store_load *st,
                            const atomic_int *cancel) {
  static const char tops[] = {'c', 'u'};
  char p[PATH_MAX];
  for (size_t t = 0; t < sizeof(tops); t++) {
    for (int sh = 0; sh < 256; sh++) {
      if (atomic_load(cancel)) return UV_ECANCELED;
      if (snprintf(p, sizeof(p), "%s/%c/%02x", root, tops[t], sh) >= (int)sizeof(p))
        return DDUCT_ETOOBIG;
      load_shard(p, tops[t], ix, st);
    }
  }
  dduct__index_sort(ix);
  return 0;
}

/* ---- eviction ----------------------------------------------------------------------------- */

/* Remove a complete entry, sidecar first (so nobody starts reading it anew), but only the
 * version indexed (its commit time): a newer one another process just renamed in stays. */
int dduct__store_disk_evict(const char *root, char kind, const unsigned char name[32],
                            int64_t order) {
  char rel[72], base[PATH_MAX], side[PATH_MAX];
  struct stat sb;
  dduct__store_rel_of(kind, name, rel);
  if (snprintf(base, sizeof(base), "%s/%s", root, rel) >= (int)sizeof(base) ||
      snprintf(side, sizeof(side), "%s/%s.json", root, rel) >= (int)sizeof(side))
    return DDUCT_ETOOBIG;
  if (lstat(base, &sb) != 0) return -errno;
  if (order != 0 && (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec != order)
    return DDUCT_EAGAIN;
  if (unlink(side) != 0 && errno != ENOENT) return -errno;
  if (unlink(base) != 0 && errno != ENOENT) return -errno;
  return 0;
}

int dduct__store_fs_space(const char *root, uint64_t *free_bytes, uint64_t *total) {
  struct statvfs v;
  if (statvfs(root, &v) != 0) return -errno;
  *free_bytes = (uint64_t)v.f_bavail * v.f_frsize;
  *total = (uint64_t)v.f_blocks * v.f_frsize;
  return 0;
}
