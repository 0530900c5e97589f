/* Inspection and purge of a store's directory: list, remove, verify, prune. Blocking calls for
 * tools (`dduct cache ...`) and maintenance threads, safe while dduct processes serve the same
 * file_dir: removals take the sidecar first and are journaled, and a running dduct stops serving
 * a removed entry at once (its inotify watch on the held data file, or the name check, sees the
 * unlink; an entry it does not hold is looked up on disk at the next request). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "store.h"


struct item {
  char kind;
  unsigned char name[32];
  uint64_t size;      /* data file */
  int64_t order;      /* data file mtime, ns */
  int has_data, has_side;
  char *url, *digest; /* from the sidecar ("" when unreadable) */
  int64_t stored_at;
  int64_t side_size;  /* the sidecar's "size", -1 when unreadable */
  uint32_t last_used;
};

struct items {
  struct item *v;
  size_t n, cap;
};

static void items_free(struct items *it) {
  for (size_t i = 0; i < it->n; i++) {
    free(it->v[i].url);
    free(it->v[i].digest);
  }
  free(it->v);
  memset(it, 0, sizeof(*it));
}

static int hex64(const char *s) {
  for (int i = 0; i < 64; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

static void read_sidecar(const char *path, struct item *x) {
  char *buf;
  size_t n;
  cJSON *o;
  x->side_size = -1;
  if (dduct__read_file(path, 65535, &buf, &n) != 0) return;
  o = n > 0 ? cJSON_ParseWithLength(buf, n) : NULL;
  free(buf);
  if (o == NULL) return;
  {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "url");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "digest");
    const cJSON *sz = cJSON_GetObjectItemCaseSensitive(o, "size");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(o, "stored_at");
    if (cJSON_IsString(u)) x->url = strdup(u->valuestring);
    if (cJSON_IsString(d)) x->digest = strdup(d->valuestring);
    if (cJSON_IsNumber(sz) && sz->valuedouble >= 0) x->side_size = (int64_t)sz->valuedouble;
    if (cJSON_IsNumber(at)) x->stored_at = (int64_t)at->valuedouble;
  }
  cJSON_Delete(o);
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every data file and sidecar under root (temporaries and parts aside), paired. */
static int walk(const char *root, struct items *it) {
  static const char tops[] = {'c', 'u'};
  char p[PATH_MAX];
  for (size_t t = 0; t < sizeof(tops); t++) {
    for (int sh = 0; sh < 256; sh++) {
      struct dirent *d;
      DIR *dir;
      char **names = NULL;
      size_t nn = 0, cap = 0;
      snprintf(p, sizeof(p), "%s/%c/%02x", root, tops[t], sh);
      if ((dir = opendir(p)) == NULL) continue;
      while ((d = readdir(dir)) != NULL) {
        size_t len = strlen(d->d_name);
        if ((len != 64 && !(len == 69 && strcmp(d->d_name + 64, ".json") == 0)) ||
            !hex64(d->d_name))
          continue;
        if (nn == cap) {
          char **v = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*v));
          if (v == NULL) break;
          names = v;
        }
        names[nn++] = strdup(d->d_name);
      }
      if (nn > 1) qsort(names, nn, sizeof(*names), cmp_name);
      for (size_t i = 0; i < nn; i++) {
        unsigned char name[32];
        struct item *x;
        struct stat sb;
        char f[PATH_MAX + 80];
        if (names[i] == NULL || dduct__store_name_from_hex(names[i], name) != 0) continue;
        /* Sorted: "<hex>" comes right before "<hex>.json". */
        x = it->n > 0 && it->v[it->n - 1].kind == tops[t] &&
                    memcmp(it->v[it->n - 1].name, name, 32) == 0
                ? &it->v[it->n - 1]
                : NULL;
        if (x == NULL) {
          if (it->n == it->cap) {
            struct item *v = realloc(it->v, (it->cap = it->cap ? it->cap * 2 : 256) * sizeof(*v));
            if (v == NULL) break;
            it->v = v;
          }
          x = &it->v[it->n++];
          memset(x, 0, sizeof(*x));
          x->kind = tops[t];
          memcpy(x->name, name, 32);
          x->side_size = -1;
        }
        snprintf(f, sizeof(f), "%s/%s", p, names[i]);
        if (strlen(names[i]) == 64) {
          if (lstat(f, &sb) == 0 && S_ISREG(sb.st_mode)) {
            x->has_data = 1;
            x->size = (uint64_t)sb.st_size;
            x->order = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
          }
        } else {
          x->has_side = 1;
          read_sidecar(f, x);
        }
      }
      for (size_t i = 0; i < nn; i++) free(names[i]);
      free(names);
      closedir(dir);
    }
  }
  return 0;
}

/* Last-used times from the journal, through an index of the complete entries. */
static void apply_uses(const char *root, struct items *it) {
  struct dduct__index ix;
  uint64_t off = 0, ino = 0;
  dduct__index_init(&ix);
  for (size_t i = 0; i < it->n; i++)
    if (it->v[i].has_data && it->v[i].has_side)
      (void)dduct__index_put(&ix, it->v[i].kind, it->v[i].name, it->v[i].size, it->v[i].order);
  (void)dduct__journal_apply(root, &ix, &off, &ino, 0);
  for (size_t i = 0; i < it->n; i++) {
    uint32_t k = dduct__index_find(&ix, it->v[i].kind, it->v[i].name);
    if (k != DDUCT__INDEX_NONE) it->v[i].last_used = ix.recs[k].last_used;
  }
  dduct__index_free(&ix);
}

static void fill_info(const char *root, const struct item *x, char *rel,
                      struct dduct_store_entry_info *e) {
  (void)root;
  dduct__store_rel_of(x->kind, x->name, rel);
  memset(e, 0, sizeof(*e));
  e->id = rel;
  e->url = x->url != NULL ? x->url : "";
  e->digest = x->digest != NULL ? x->digest : "";
  e->size = x->size;
  e->stored_at = x->stored_at;
  e->last_used = x->last_used;
}

static int complete(const struct item *x) {
  return x->has_data && x->has_side && x->side_size >= 0 && (uint64_t)x->side_size == x->size;
}

int dduct_store_entries(struct dduct_store *s, dduct_store_entry_cb cb, void *user_data) {
  struct items it;
  int rc = 0;
  if (s == NULL || cb == NULL) return DDUCT_EINVAL;
  memset(&it, 0, sizeof(it));
  walk(dduct__store_root(s), &it);
  apply_uses(dduct__store_root(s), &it);
  for (size_t i = 0; i < it.n && rc == 0; i++) {
    char rel[72];
    struct dduct_store_entry_info e;
    if (!complete(&it.v[i])) continue;
    fill_info(dduct__store_root(s), &it.v[i], rel, &e);
    rc = cb(user_data, &e);
  }
  items_free(&it);
  return rc > 0 ? 0 : rc;
}

static int remove_item(const char *root, const struct item *x) {
  struct dduct__jrec r;
  int rc = dduct__store_disk_evict(root, x->kind, x->name, 0);
  if (rc != 0 && rc != UV_ENOENT) return rc;
  memset(&r, 0, sizeof(r));
  r.type = '-';
  r.kind = (uint8_t)x->kind;
  r.time = (uint32_t)time(NULL);
  r.size = x->size;
  r.order = x->order;
  memcpy(r.name, x->name, 32);
  (void)dduct__journal_append(root, &r, 1);
  return 0;
}

/* "scheme://host[:port]/path?query" -> key (as the proxy makes it for that request). */
static int key_of_url(const char *url, struct dduct__store_key *k) {
  const char *p = strstr(url, "://"), *host, *hend, *path;
  char scheme[8];
  unsigned port;
  if (p == NULL || p - url >= (int)sizeof(scheme)) return DDUCT_EINVAL;
  memcpy(scheme, url, (size_t)(p - url));
  scheme[p - url] = '\0';
  port = strcmp(scheme, "http") == 0 ? 80 : 443;
  host = p + 3;
  path = host + strcspn(host, "/");
  hend = path;
  if (*host == '[') { /* [v6]:port */
    const char *close = memchr(host, ']', (size_t)(path - host));
    if (close == NULL) return DDUCT_EINVAL;
    if (close[1] == ':') port = (unsigned)atoi(close + 2);
    return dduct__store_key_make(scheme, host + 1, (size_t)(close - host - 1), port,
                                 *path ? path : "/", *path ? strlen(path) : 1, k);
  }
  {
    const char *colon = memchr(host, ':', (size_t)(path - host));
    if (colon != NULL) {
      port = (unsigned)atoi(colon + 1);
      hend = colon;
    }
  }
  return dduct__store_key_make(scheme, host, (size_t)(hend - host), port, *path ? path : "/",
                               *path ? strlen(path) : 1, k);
}

int dduct_store_remove(struct dduct_store *s, const char *what, dduct_store_entry_cb cb,
                       void *user_data) {
  struct items it;
  struct dduct__store_key k;
  struct dduct_filter *re = NULL;
  int rc = 0, removed = 0, by_url = 0;
  char kind = 0;
  unsigned char name[32];
  if (s == NULL || what == NULL) return DDUCT_EINVAL;
  if (strncmp(what, "re:", 3) == 0) {
    if ((rc = dduct_filter_new(&re)) != 0) return rc;
    if ((rc = dduct_filter_add(re, what + 3, NULL, 0)) != 0) {
      dduct_filter_free(re);
      return rc;
    }
  } else if (dduct__store_is_digest(what, strlen(what))) {
    kind = 'c';
    dduct__store_name_from_hex(what + 7, name);
  } else if (key_of_url(what, &k) == 0) {
    by_url = 1;
    dduct__store_rel_name(k.rel, &kind, name);
  } else {
    return DDUCT_EINVAL;
  }
  memset(&it, 0, sizeof(it));
  walk(dduct__store_root(s), &it);
  for (size_t i = 0; i < it.n; i++) {
    struct item *x = &it.v[i];
    int hit;
    if (!x->has_data && !x->has_side) continue;
    if (re != NULL)
      hit = x->url != NULL && dduct_filter_match(re, x->url, strlen(x->url)) == 1;
    else
      hit = (x->kind == kind && memcmp(x->name, name, 32) == 0) ||
            (by_url && x->url != NULL && strcmp(x->url, what) == 0);
    if (!hit) continue;
    if ((rc = remove_item(dduct__store_root(s), x)) != 0) break;
    removed++;
    if (cb != NULL) {
      char rel[72];
      struct dduct_store_entry_info e;
      fill_info(dduct__store_root(s), x, rel, &e);
      cb(user_data, &e);
    }
  }
  items_free(&it);
  dduct_filter_free(re);
  if (rc != 0) return rc;
  return removed;
}

/* Reads the whole file, hashing it with alg ("" in out for DDUCT__SUM_NONE: only readable). */
static int hash_file(const char *path, enum dduct__sum_alg alg, uint64_t *size,
                     char out[DDUCT__SUM_MAX]) {
  static char buf[1 << 16];
  struct dduct__sum c;
  ssize_t n;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  dduct__sum_init(&c, alg);
  *size = 0;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    dduct__sum_update(&c, buf, (size_t)n);
    *size += (uint64_t)n;
  }
  close(fd);
  if (n < 0) return UV_EIO;
  dduct__sum_final(&c, out);
  return 0;
}

int dduct_store_verify(struct dduct_store *s, int repair, dduct_store_problem_cb cb,
                       void *user_data) {
  const char *root;
  struct items it;
  int problems = 0;
  time_t now = time(NULL);
  if (s == NULL) return DDUCT_EINVAL;
  root = dduct__store_root(s);
  memset(&it, 0, sizeof(it));
  walk(root, &it);
  for (size_t i = 0; i < it.n; i++) {
    struct item *x = &it.v[i];
    char rel[72], path[PATH_MAX], got[DDUCT__SUM_MAX];
    const char *why = NULL;
    /* A blob's digest is its name (sha256); another entry's, the algorithm its sidecar's prefix
     * names (sha256 from earlier versions or checksum = 'sha256', else gmac); none: unchecked. */
    enum dduct__sum_alg alg = x->kind == 'c' ? DDUCT__SUM_SHA256 : dduct__sum_alg_of(x->digest);
    uint64_t size = 0;
    struct dduct_store_entry_info e;
    dduct__store_rel_of(x->kind, x->name, rel);
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    /* A data file without its sidecar for a moment is a commit in progress: only an old one is
     * an orphan. */
    if (!x->has_side && x->has_data && now - x->order / 1000000000 < 3600) continue;
    if (!x->has_data) why = "orphaned sidecar (no data file)";
    else if (!x->has_side) why = "orphaned data file (no sidecar)";
    else if (x->side_size < 0) why = "unreadable sidecar";
    else if ((uint64_t)x->side_size != x->size) why = "size differs from its sidecar";
    else if (hash_file(path, alg, &size, got) != 0) why = "unreadable data file";
    else if (x->kind == 'c' && memcmp(got + 7, rel + 5, 64) != 0)
      why = "content does not match its digest";
    else if (alg != DDUCT__SUM_NONE && dduct__sum_alg_of(x->digest) == alg &&
             strcmp(got, x->digest) != 0)
      why = "content does not match the digest its sidecar records";
    if (why == NULL) continue;
    problems++;
    fill_info(root, x, rel, &e);
    if (repair) (void)remove_item(root, x);
    if (cb != NULL) cb(user_data, &e, why, repair);
  }
  items_free(&it);
  return problems;
}

int dduct_store_prune(struct dduct_store *s, uint64_t to, dduct_store_entry_cb cb,
                      void *user_data, uint64_t *bytes_after) {
  const char *root;
  struct items it;
  struct dduct__index ix;
  uint64_t off = 0, ino = 0;
  int removed = 0;
  if (s == NULL) return DDUCT_EINVAL;
  root = dduct__store_root(s);
  memset(&it, 0, sizeof(it));
  walk(root, &it);
  dduct__index_init(&ix);
  for (size_t i = 0; i < it.n; i++)
    if (complete(&it.v[i]))
      (void)dduct__index_put(&ix, it.v[i].kind, it.v[i].name, it.v[i].size, it.v[i].order);
  dduct__index_sort(&ix);
  (void)dduct__journal_apply(root, &ix, &off, &ino, 0);
  while (ix.bytes > to) {
    uint32_t v = dduct__index_victim(&ix, NULL);
    struct item tmp;
    struct item *x = NULL;
    if (v == DDUCT__INDEX_NONE) break;
    for (size_t i = 0; i < it.n && x == NULL; i++)
      if (it.v[i].kind == ix.recs[v].kind && memcmp(it.v[i].name, ix.recs[v].name, 32) == 0)
        x = &it.v[i];
    if (x == NULL) {
      memset(&tmp, 0, sizeof(tmp));
      tmp.kind = ix.recs[v].kind;
      memcpy(tmp.name, ix.recs[v].name, 32);
      x = &tmp;
    }
    (void)dduct__index_remove(&ix, x->kind, x->name, 0);
    if (remove_item(root, x) != 0) continue;
    removed++;
    if (cb != NULL) {
      char rel[72];
      struct dduct_store_entry_info e;
      fill_info(root, x, rel, &e);
      cb(user_data, &e);
    }
  }
  if (bytes_after != NULL) *bytes_after = ix.bytes;
  dduct__index_free(&ix);
  items_free(&it);
  return removed;
}
