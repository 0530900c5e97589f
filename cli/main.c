/* dduct: the executable. Finds and validates the config, sets up logging, opens the CA, then
 * hands over to run_proxy (run.c) until SIGINT/SIGTERM.
 * Exit status: 0 done, 1 runtime failure, 2 usage or configuration error. */
#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef DDUCT_STATIC
#include <nss.h>
#endif

#include "cache_cmd.h"
#include "config.h"
#include "dduct.h"
#include "log.h"
#include "memory.h"
#include "run.h"

#define EXIT_CONFIG 2

struct args {
  const char *cfg; /* NULL: look beside the executable, then defaults */
  int check;
};

static void usage(FILE *out) {
  fprintf(out,
          "Usage: dduct [--cfg FILE] [--check]\n"
          "       dduct cache ls|du|rm|verify|prune [--cfg FILE] ...  (dduct cache --help)\n"
          "A caching man-in-the-middle HTTP(S) proxy.\n"
          "\n"
          "  -c, --cfg FILE  read the TOML config FILE (default: dduct.toml beside the\n"
          "                  executable if it exists, else built-in defaults)\n"
          "      --check     validate the config, print the effective settings, exit\n"
          "  -h, --help      show this help and exit\n"
          "  -V, --version   print the version and exit\n"
          "\n"
          "Configuration reference: docs/configuration.md\n");
}

static void usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "dduct: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'dduct --help'.\n");
  exit(EXIT_CONFIG);
}

static void parse_args(int argc, char **argv, struct args *a) {
  memset(a, 0, sizeof(*a));
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    if (strcmp(s, "-c") == 0 || strcmp(s, "--cfg") == 0) {
      if (i + 1 == argc) usage_error("option '%s' needs a file name", s);
      a->cfg = argv[++i];
    } else if (strncmp(s, "--cfg=", 6) == 0) {
      a->cfg = s + 6;
    } else if (strcmp(s, "--check") == 0) {
      a->check = 1;
    } else if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
      usage(stdout);
      exit(0);
    } else if (strcmp(s, "-V") == 0 || strcmp(s, "--version") == 0) {
      printf("dduct %s\n", dduct_version());
      exit(0);
    } else {
      usage_error(s[0] == '-' ? "unknown option '%s'" : "unexpected argument '%s'", s);
    }
  }
  if (a->cfg != NULL && a->cfg[0] == '\0') usage_error("%s", "--cfg needs a file name");
}

/* "<dir of the executable>/dduct.toml" if that file exists. */
static int config_beside_exe(char *path, size_t len) {
  char exe[PATH_MAX];
  size_t n = sizeof(exe);
  char *slash;
  if (uv_exepath(exe, &n) != 0 || (slash = strrchr(exe, '/')) == NULL) return 0;
  *slash = '\0';
  if ((size_t)snprintf(path, len, "%s/dduct.toml", exe) >= len) return 0;
  return access(path, F_OK) == 0;
}

/* Fill cfg from the chosen source; *source names it for --check. Exits 2 on any error. */
static void load_config(const struct args *a, struct config *cfg, char *source, size_t len) {
  char err[1024];
  const char *path = a->cfg;
  if (config_init(cfg) != 0) {
    fprintf(stderr, "dduct: out of memory\n");
    exit(1);
  }
  if (path == NULL && config_beside_exe(source, len)) path = source;
  if (path == NULL) {
    snprintf(source, len, "built-in defaults");
    return;
  }
  if (path != source) snprintf(source, len, "%s", path);
  if (config_load_file(cfg, path, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    config_free(cfg);
    exit(EXIT_CONFIG);
  }
}

/* The soft open-files limit up to the hard one, as nginx (worker_rlimit_nofile) and Go do:
 * Debian's soft default of 1024 is below max_connections' default, and dduct uses epoll, so
 * nothing here needs descriptors below 1024. The proxy keeps max_connections within what is
 * then allowed (and says so when it has to lower it). */
static void raise_nofile(void) {
  struct rlimit rl;
  rlim_t was;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    /* An unlimited hard limit is capped by fs.nr_open: try that. */
    FILE *f = fopen("/proc/sys/fs/nr_open", "r");
    unsigned long long n = 0;
    if (f != NULL) {
      if (fscanf(f, "%llu", &n) != 1) n = 0;
      fclose(f);
    }
    rl.rlim_cur = (rlim_t)n;
    if (n <= was || setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      log_line(DDUCT_LOG_WARN, "main", "cannot raise the open files limit from %llu",
               (unsigned long long)was);
      return;
    }
  }
  log_line(DDUCT_LOG_INFO, "main", "Open files limit raised from %llu to %llu",
           (unsigned long long)was, (unsigned long long)rl.rlim_cur);
}

static int open_ca(const struct config *cfg, struct dduct_ca **ca) {
  struct dduct_ca_options o;
  char err[1024] = "";
  int rc;
  config_ca_options(cfg, &o);
  /* Tests only (not a config key): a small leaf cache shows eviction with a few hosts. */
  if (getenv("DDUCT_TEST_MAX_LEAVES") != NULL)
    o.max_leaves = (size_t)strtoul(getenv("DDUCT_TEST_MAX_LEAVES"), NULL, 10);
  rc = dduct_ca_open(&o, ca, err, sizeof(err));
  if (rc != 0)
    log_line(DDUCT_LOG_ERROR, "ssl_certs", "%s", err[0] ? err : dduct_strerror(rc));
  return rc;
}

/* The static executable (-Dstatic=true) resolves names with glibc's built-in /etc/hosts and
 * DNS (/etc/resolv.conf) code only. Any other NSS module a host's nsswitch.conf names
 * (myhostname, mdns, resolve, ldap) would be dlopen()ed from the host's shared glibc, which a
 * static binary must never load (a different glibc version breaks it); in an empty root there
 * is none to load anyway. See docs/install.md. */
static void static_lookups(void) {
#ifdef DDUCT_STATIC
  (void)__nss_configure_lookup("hosts", "files dns");
  (void)__nss_configure_lookup("passwd", "files"); /* libuv links getpwuid_r in */
  (void)__nss_configure_lookup("group", "files");
#endif
}

/* The config for `dduct cache`: found as the daemon finds it. */
static int load_for_cache(const char *cfg, struct config *out) {
  char source[PATH_MAX + 32], err[1024];
  if (config_init(out) != 0) return -1;
  if (cfg == NULL && config_beside_exe(source, sizeof(source))) cfg = source;
  if (cfg == NULL) return 0;
  if (config_load_file(out, cfg, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    config_free(out);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  struct args a;
  struct config cfg;
  struct dduct_ca *ca = NULL;
  char source[PATH_MAX + 32];
  int rc;

  memory_tune(); /* before the first allocation */
  static_lookups();
  setvbuf(stderr, NULL, _IOLBF, 4096); /* one write per log line */
  if (argc > 1 && strcmp(argv[1], "cache") == 0) return cache_main(argc - 1, argv + 1, load_for_cache);
  parse_args(argc, argv, &a);
  load_config(&a, &cfg, source, sizeof(source));
  if (a.check) {
    printf("# dduct %s: effective configuration (from %s)\n", dduct_version(), source);
    config_print(&cfg, stdout);
    config_free(&cfg);
    return 0;
  }
  log_setup((enum dduct_log_level)cfg.log_level);
  signal(SIGPIPE, SIG_IGN); /* a peer closing mid-write is an error code, not a death */
  raise_nofile();
  if (open_ca(&cfg, &ca) != 0) {
    config_free(&cfg);
    return 1;
  }
  rc = run_proxy(&cfg, ca);
  dduct_ca_free(ca);
  config_free(&cfg);
  return rc;
}
