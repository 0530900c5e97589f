/* `dduct cache ls|du|rm|verify|prune`: inspection and purge of file_dir through the store's
 * library calls, safe while dduct serves the same directory.
 * Exit status: 0 done, 1 failure (nothing matched for rm, problems left by verify), 2 usage. */
#include "cache_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "config.h"
#include "dduct.h"

static void usage(FILE *out) {
  fprintf(out,
          "Usage: dduct cache COMMAND [--cfg FILE] [ARGS]\n"
          "Inspect and purge the cache in file_dir (safe while dduct runs on it).\n"
          "\n"
          "  ls [--json] [REGEX]       entries: URL, size, digest, stored and last-used times\n"
          "  du                        entries, bytes, budget ([cache] max_size, min_free), free space\n"
          "  rm URL|sha256:DIGEST      remove one entry (a running dduct stops serving it at once)\n"
          "  rm --match REGEX          remove every entry whose URL matches\n"
          "  verify [--repair]         re-hash entries, check sizes, find orphans (--repair removes)\n"
          "  prune --to SIZE           evict by the cache's policy down to SIZE ('10G', bytes)\n"
          "\n"
          "  -c, --cfg FILE            the daemon's config (default: as dduct finds it)\n");
}

struct ctx {
  struct config cfg;
  uv_loop_t loop;
  struct dduct_store *store;
  int json, first;
  struct dduct_filter *re;
  uint64_t n, bytes;
};

static void when(char *out, size_t cap, int64_t t) {
  struct tm tm;
  time_t tt = (time_t)t;
  if (t <= 0 || gmtime_r(&tt, &tm) == NULL) {
    snprintf(out, cap, "-");
    return;
  }
  strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void human(char *out, size_t cap, uint64_t v) {
  static const char units[] = "KMGT";
  double d = (double)v;
  int u = -1;
  while (d >= 1024 && u < 3) {
    d /= 1024;
    u++;
  }
  if (u < 0) snprintf(out, cap, "%llu", (unsigned long long)v);
  else snprintf(out, cap, "%.1f%c", d, units[u]);
}

static void json_str(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') printf("\\%c", *p);
    else if (*p < 0x20) printf("\\u%04x", *p);
    else putchar(*p);
  }
  putchar('"');
}

static void print_entry(struct ctx *c, const struct dduct_store_entry_info *e) {
  char st[32], lu[32], sz[16];
  if (c->json) {
    printf("%s\n  {\"url\": ", c->first ? "" : ",");
    json_str(e->url);
    printf(", \"size\": %llu, \"digest\": ", (unsigned long long)e->size);
    json_str(e->digest);
    printf(", \"id\": \"%s\", \"stored_at\": %lld, \"last_used\": %lld}", e->id,
           (long long)e->stored_at, (long long)e->last_used);
  } else {
    when(st, sizeof(st), e->stored_at);
    when(lu, sizeof(lu), e->last_used);
    human(sz, sizeof(sz), e->size);
    printf("%8s  %-20s  %-20s  %-19.19s  %s\n", sz, st, lu,
           e->digest[0] ? e->digest : "-", e->url[0] ? e->url : e->id);
  }
  c->first = 0;
}

static int ls_cb(void *ud, const struct dduct_store_entry_info *e) {
  struct ctx *c = ud;
  if (c->re != NULL && dduct_filter_match(c->re, e->url, strlen(e->url)) != 1) return 0;
  c->n++;
  c->bytes += e->size;
  print_entry(c, e);
  return 0;
}

static int count_cb(void *ud, const struct dduct_store_entry_info *e) {
  struct ctx *c = ud;
  c->n++;
  c->bytes += e->size;
  return 0;
}

static int removed_cb(void *ud, const struct dduct_store_entry_info *e) {
  struct ctx *c = ud;
  char sz[16];
  human(sz, sizeof(sz), e->size);
  printf("removed  %8s  %s\n", sz, e->url[0] ? e->url : e->id);
  c->n++;
  c->bytes += e->size;
  return 0;
}

static void problem_cb(void *ud, const struct dduct_store_entry_info *e, const char *why,
                       int removed) {
  (void)ud;
  printf("%-8s %s: %s\n", removed ? "removed" : "PROBLEM", e->url[0] ? e->url : e->id, why);
}

static int open_store(struct ctx *c) {
  struct dduct_store_options o;
  char err[512] = "";
  config_store_options(&c->cfg, &o);
  if (uv_loop_init(&c->loop) != 0) return -1;
  if (dduct_store_open_with(&c->loop, c->cfg.file_dir, &o, &c->store, err, sizeof(err)) != 0) {
    fprintf(stderr, "dduct cache: %s\n", err);
    return -1;
  }
  return 0;
}

static void close_store(struct ctx *c) {
  dduct_store_free(c->store);
  uv_run(&c->loop, UV_RUN_DEFAULT);
  uv_loop_close(&c->loop);
}

static int cmd_ls(struct ctx *c, int argc, char **argv) {
  char err[512];
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      c->json = 1;
    } else if (c->re == NULL && argv[i][0] != '-') {
      if (dduct_filter_new(&c->re) != 0 || dduct_filter_add(c->re, argv[i], err, sizeof(err)) != 0) {
        fprintf(stderr, "dduct cache ls: %s\n", err);
        return 2;
      }
    } else {
      fprintf(stderr, "dduct cache ls: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (open_store(c) != 0) return 1;
  c->first = 1;
  if (c->json) printf("[");
  else printf("%8s  %-20s  %-20s  %-19s  %s\n", "SIZE", "STORED", "LAST USED", "DIGEST", "URL");
  dduct_store_entries(c->store, ls_cb, c);
  if (c->json) printf("%s]\n", c->first ? "" : "\n");
  close_store(c);
  return 0;
}

static int cmd_du(struct ctx *c) {
  struct statvfs v;
  char b[16], f[16], t[16];
  if (open_store(c) != 0) return 1;
  dduct_store_entries(c->store, count_cb, c);
  close_store(c);
  human(b, sizeof(b), c->bytes);
  printf("entries      %llu\n", (unsigned long long)c->n);
  printf("bytes        %llu (%s)\n", (unsigned long long)c->bytes, b);
  if (c->cfg.cache_max_size) {
    human(t, sizeof(t), c->cfg.cache_max_size);
    printf("max_size     %llu (%s)\n", (unsigned long long)c->cfg.cache_max_size, t);
  } else {
    printf("max_size     none\n");
  }
  if (c->cfg.cache_min_free) printf("min_free     %llu\n", (unsigned long long)c->cfg.cache_min_free);
  else printf("min_free     %u%%\n", c->cfg.cache_min_free_percent);
  if (statvfs(c->cfg.file_dir, &v) == 0) {
    uint64_t fr = (uint64_t)v.f_bavail * v.f_frsize, tot = (uint64_t)v.f_blocks * v.f_frsize;
    human(f, sizeof(f), fr);
    human(t, sizeof(t), tot);
    printf("free         %llu (%s of %s)\n", (unsigned long long)fr, f, t);
  }
  return 0;
}

static int cmd_rm(struct ctx *c, int argc, char **argv) {
  char what[8192];
  int rc;
  if (argc == 2 && strcmp(argv[0], "--match") == 0) {
    snprintf(what, sizeof(what), "re:%s", argv[1]);
  } else if (argc == 1 && argv[0][0] != '-') {
    snprintf(what, sizeof(what), "%s", argv[0]);
  } else {
    fprintf(stderr, "dduct cache rm: expected URL, sha256:DIGEST or --match REGEX\n");
    return 2;
  }
  if (open_store(c) != 0) return 1;
  rc = dduct_store_remove(c->store, what, removed_cb, c);
  close_store(c);
  if (rc < 0) {
    fprintf(stderr, "dduct cache rm: %s: %s\n", what, dduct_strerror(rc));
    return rc == DDUCT_EINVAL || rc == DDUCT_EPATTERN ? 2 : 1;
  }
  if (rc == 0) {
    fprintf(stderr, "dduct cache rm: no entry matches %s\n", argv[argc - 1]);
    return 1;
  }
  printf("%d entr%s removed\n", rc, rc == 1 ? "y" : "ies");
  return 0;
}

static int cmd_verify(struct ctx *c, int argc, char **argv) {
  int repair = 0, rc;
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "--repair") == 0) {
      repair = 1;
    } else {
      fprintf(stderr, "dduct cache verify: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (open_store(c) != 0) return 1;
  rc = dduct_store_verify(c->store, repair, problem_cb, c);
  close_store(c);
  if (rc < 0) {
    fprintf(stderr, "dduct cache verify: %s\n", dduct_strerror(rc));
    return 1;
  }
  printf("%d problem%s%s\n", rc, rc == 1 ? "" : "s", rc > 0 && repair ? " (removed)" : "");
  return rc > 0 && !repair ? 1 : 0;
}

static int cmd_prune(struct ctx *c, int argc, char **argv) {
  uint64_t to, left = 0;
  char h[16];
  int rc;
  if (argc != 2 || strcmp(argv[0], "--to") != 0 || config_parse_size(argv[1], &to) != 0) {
    fprintf(stderr, "dduct cache prune: expected --to SIZE (bytes, or a number with K, M, G or T)\n");
    return 2;
  }
  if (open_store(c) != 0) return 1;
  rc = dduct_store_prune(c->store, to, removed_cb, c, &left);
  close_store(c);
  if (rc < 0) {
    fprintf(stderr, "dduct cache prune: %s\n", dduct_strerror(rc));
    return 1;
  }
  human(h, sizeof(h), left);
  printf("%d entr%s removed, %llu bytes (%s) left\n", rc, rc == 1 ? "y" : "ies",
         (unsigned long long)left, h);
  return left <= to ? 0 : 1;
}

int cache_main(int argc, char **argv, int (*load)(const char *cfg, struct config *out)) {
  struct ctx c;
  const char *cfg = NULL, *cmd;
  char *rest[64];
  int n = 0, rc;
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  cmd = argv[1];
  for (int i = 2; i < argc; i++) {
    if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--cfg") == 0) && i + 1 < argc)
      cfg = argv[++i];
    else if (strncmp(argv[i], "--cfg=", 6) == 0)
      cfg = argv[i] + 6;
    else if (n < 64)
      rest[n++] = argv[i];
  }
  memset(&c, 0, sizeof(c));
  if (load(cfg, &c.cfg) != 0) return 2;
  dduct_log_set(DDUCT_LOG_OFF, NULL, NULL); /* the table is the output */
  if (strcmp(cmd, "ls") == 0) rc = cmd_ls(&c, n, rest);
  else if (strcmp(cmd, "du") == 0 && n == 0) rc = cmd_du(&c);
  else if (strcmp(cmd, "rm") == 0) rc = cmd_rm(&c, n, rest);
  else if (strcmp(cmd, "verify") == 0) rc = cmd_verify(&c, n, rest);
  else if (strcmp(cmd, "prune") == 0) rc = cmd_prune(&c, n, rest);
  else {
    fprintf(stderr, "dduct cache: unknown command or arguments '%s'\n", cmd);
    usage(stderr);
    rc = 2;
  }
  dduct_filter_free(c.re);
  config_free(&c.cfg);
  return rc;
}
