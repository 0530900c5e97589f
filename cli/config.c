/* The config layer: a table of every key (table, name, type, limits, check) drives defaults,
 * loading with positioned errors, and printing, so the three can never disagree. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "toml.h"

enum kind {
  K_STRING,     /* any string (min 1: must not be empty) */
  K_BIND,       /* '' or an address:port */
  K_LEVEL,      /* log level name */
  K_REVALIDATE, /* 'never' | 'always' */
  K_VERIFY,     /* 'never' | 'first' | 'always' */
  K_CHECKSUM,   /* 'gmac' | 'sha256' */
  K_BOOL,
  K_UINT,       /* integer in [min, max] */
  K_STRINGS,    /* array of strings, each passing check */
  K_PORTS,      /* array of integers in 1..65535 */
  K_PROXY_URL,  /* '' or http(s)://[user:pass@]host:port; printed without the password */
  K_SIZE,       /* bytes: an integer or a string with a K/M/G/T suffix (powers of 1024) */
  K_MINFREE,    /* K_SIZE, or a percentage string '0%'..'99%' */
};

typedef int (*check_fn)(const char *s, char *why, size_t len);

struct key {
  const char *table;
  const char *name;
  enum kind kind;
  size_t off;
  long long min, max;
  check_fn check;
};

static int check_filter(const char *s, char *why, size_t len);
static int check_nonempty(const char *s, char *why, size_t len);
static int check_query_ignore(const char *s, char *why, size_t len);
static int check_parent(const char *s, char *why, size_t len);
static int check_no_proxy(const char *s, char *why, size_t len);

#define F(field) offsetof(struct config, field)
static const struct key keys[] = {
    {"misc", "log_level", K_LEVEL, F(log_level), 0, 0, NULL},
    {"misc", "cert_dir", K_STRING, F(cert_dir), 1, 0, NULL},
    {"misc", "file_dir", K_STRING, F(file_dir), 1, 0, NULL},
    {"misc", "access_log", K_STRING, F(access_log), 0, 0, NULL},
    {"proxy", "tcp_bind", K_BIND, F(tcp_bind), 0, 0, NULL},
    {"proxy", "tls_bind", K_BIND, F(tls_bind), 0, 0, NULL},
    {"proxy", "admin_bind", K_BIND, F(admin_bind), 0, 0, NULL},
    {"proxy", "filters", K_STRINGS, F(filters), 0, 0, check_filter},
    {"proxy", "upstream_ca_file", K_STRING, F(upstream_ca_file), 0, 0, NULL},
    {"proxy", "upstream_insecure", K_BOOL, F(upstream_insecure), 0, 0, NULL},
    {"proxy", "resolve", K_STRINGS, F(resolve), 0, 0, config_check_resolve},
    {"proxy", "allow_clients", K_STRINGS, F(allow_clients), 0, 0, config_check_cidr},
    {"proxy", "connect_ports", K_PORTS, F(connect_ports), 1, 65535, NULL},
    {"proxy", "connect_any_port", K_BOOL, F(connect_any_port), 0, 0, NULL},
    {"proxy", "max_connections", K_UINT, F(max_connections), 1, 1000000, NULL},
    {"proxy", "max_connections_per_client", K_UINT, F(max_connections_per_client), 1, 1000000,
     NULL},
    {"proxy", "head_timeout", K_UINT, F(head_timeout), 1, 86400, NULL},
    {"proxy", "idle_timeout", K_UINT, F(idle_timeout), 1, 86400, NULL},
    {"proxy", "tunnel_idle_timeout", K_UINT, F(tunnel_idle_timeout), 1, 86400, NULL},
    {"proxy", "connect_timeout", K_UINT, F(connect_timeout), 1, 86400, NULL},
    {"proxy", "upstream_timeout", K_UINT, F(upstream_timeout), 1, 86400, NULL},
    {"proxy", "shutdown_grace", K_UINT, F(shutdown_grace), 1, 86400, NULL},
    {"proxy", "revalidate", K_REVALIDATE, F(revalidate), 0, 0, NULL},
    {"proxy", "query_ignore", K_STRINGS, F(query_ignore), 0, 0, check_query_ignore},
    {"proxy", "upstream_proxy", K_PROXY_URL, F(upstream_proxy), 0, 0, NULL},
    {"proxy", "no_upstream_proxy", K_STRINGS, F(no_upstream_proxy), 0, 0, check_no_proxy},
    {"proxy", "parents", K_STRINGS, F(parents), 0, 0, check_parent},
    {"proxy", "parent_ca_file", K_STRING, F(parent_ca_file), 0, 0, NULL},
    {"proxy", "parent_down_time", K_UINT, F(parent_down_time), 1, 86400, NULL},
    {"proxy", "workers", K_UINT, F(workers), 1, 256, NULL},
    {"cache", "max_size", K_SIZE, F(cache_max_size), 0, 0, NULL},
    {"cache", "min_free", K_MINFREE, F(cache_min_free), 0, 0, NULL},
    {"cache", "fsync", K_BOOL, F(cache_fsync), 0, 0, NULL},
    {"cache", "stale_if_error", K_BOOL, F(cache_stale_if_error), 0, 0, NULL},
    {"cache", "share_private", K_BOOL, F(cache_share_private), 0, 0, NULL},
    {"cache", "verify_hits", K_VERIFY, F(cache_verify_hits), 0, 0, NULL},
    {"cache", "checksum", K_CHECKSUM, F(cache_checksum), 0, 0, NULL},
    {"certs", "rsa_key_bits", K_UINT, F(rsa_key_bits), 2048, 8192, NULL},
    {"certs", "days_from_now", K_UINT, F(days_from_now), 1, 36500, NULL},
    {"certs", "ca_cn", K_STRING, F(ca_cn), 1, 0, NULL},
    {"certs", "server_cn", K_STRING, F(server_cn), 1, 0, NULL},
    {"certs", "server_dns_sans", K_STRINGS, F(server_dns_sans), 0, 0, check_nonempty},
    {"certs", "server_ip_sans", K_STRINGS, F(server_ip_sans), 0, 0, config_check_ip},
    {"certs", "client_cn", K_STRING, F(client_cn), 1, 0, NULL},
    {"certs", "p12_pass", K_STRING, F(p12_pass), 0, 0, NULL},
    {"certs", "ca_name_constraints", K_BOOL, F(ca_name_constraints), 0, 0, NULL},
};
#undef F

static const char *const tables[] = {"misc", "proxy", "cache", "certs"};

/* ---- defaults (the seed's values, and config-keys.md for dduct's additions) ---------------- */

static const char *const default_filters[] = {
    "^/v2/.*/blobs/sha256:\\w+$",
    "^/.*\\.(?:apk|deb|rpm)$",
    "^/.*\\.(?:tar|tbz|tgz|txz)$",
    "^/.*\\.(?:7z|bz2|gz|xz|zip|zst)$",
};
static const char *const default_allow[] = {"127.0.0.0/8",    "::1/128",        "10.0.0.0/8",
                                            "172.16.0.0/12",  "192.168.0.0/16", "fc00::/7"};
static const char *const default_dns_sans[] = {
    "*.dduct.rs", "*.docker.io", "*.gcr.io", "*.githubusercontent.com",
    "*.k8s.io",   "*.quay.io",   "ghcr.io",  "quay.io",
};
static const char *const default_ip_sans[] = {"127.0.0.1"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int set_str(char **dst, const char *s) {
  char *copy = strdup(s);
  if (copy == NULL) return -1;
  free(*dst);
  *dst = copy;
  return 0;
}

static void strv_free(struct strv *sv) {
  for (size_t i = 0; i < sv->n; i++) free(sv->v[i]);
  free(sv->v);
  sv->v = NULL;
  sv->n = 0;
}

static int strv_set(struct strv *sv, const char *const *src, size_t n) {
  char **v = calloc(n ? n : 1, sizeof(*v));
  if (v == NULL) return -1;
  for (size_t i = 0; i < n; i++) {
    if ((v[i] = strdup(src[i])) == NULL) {
      struct strv tmp = {v, i};
      strv_free(&tmp);
      return -1;
    }
  }
  strv_free(sv);
  sv->v = v;
  sv->n = n;
  return 0;
}

unsigned config_default_workers(void) {
  unsigned n = uv_available_parallelism();
  return n < 1 ? 1 : n > 256 ? 256 : n;
}

int config_init(struct config *c) {
  int rc = 0;
  memset(c, 0, sizeof(*c));
  c->log_level = DDUCT_LOG_INFO;
  rc |= set_str(&c->cert_dir, "/var/tmp/dduct/certs/");
  rc |= set_str(&c->file_dir, "/var/tmp/dduct/files/");
  rc |= set_str(&c->tcp_bind, "127.0.0.1:8000");
  rc |= set_str(&c->tls_bind, "0.0.0.0:4430");
  rc |= set_str(&c->admin_bind, "127.0.0.1:8001");
  rc |= set_str(&c->access_log, "");
  rc |= strv_set(&c->filters, default_filters, COUNT(default_filters));
  rc |= set_str(&c->upstream_ca_file, "");
  rc |= strv_set(&c->resolve, NULL, 0);
  rc |= strv_set(&c->query_ignore, NULL, 0);
  rc |= strv_set(&c->allow_clients, default_allow, COUNT(default_allow));
  if ((c->connect_ports = malloc(sizeof(*c->connect_ports))) == NULL) return -1;
  c->connect_ports[0] = 443;
  c->connect_ports_count = 1;
  c->max_connections = 1024;
  c->max_connections_per_client = 256;
  c->head_timeout = 30;
  c->idle_timeout = 60;
  c->tunnel_idle_timeout = 600;
  c->connect_timeout = 10;
  c->upstream_timeout = 60;
  c->shutdown_grace = 10;
  c->revalidate = DDUCT_REVALIDATE_NEVER;
  rc |= set_str(&c->upstream_proxy, "");
  rc |= strv_set(&c->no_upstream_proxy, NULL, 0);
  rc |= strv_set(&c->parents, NULL, 0);
  rc |= set_str(&c->parent_ca_file, "");
  c->parent_down_time = 30;
  c->workers = config_default_workers();
  c->cache_max_size = 0;
  c->cache_min_free = 0;
  c->cache_min_free_percent = 10;
  c->cache_fsync = 1;
  c->cache_stale_if_error = 1;
  c->cache_share_private = 0;
  c->cache_verify_hits = DDUCT_VERIFY_FIRST;
  c->cache_checksum = DDUCT_CHECKSUM_GMAC;
  c->rsa_key_bits = 3072;
  c->days_from_now = 3072;
  rc |= set_str(&c->ca_cn, "dduct");
  rc |= set_str(&c->server_cn, "*.dduct.rs");
  rc |= strv_set(&c->server_dns_sans, default_dns_sans, COUNT(default_dns_sans));
  rc |= strv_set(&c->server_ip_sans, default_ip_sans, COUNT(default_ip_sans));
  rc |= set_str(&c->client_cn, "client.dduct.rs");
  rc |= set_str(&c->p12_pass, "dduct");
  return rc != 0 ? -1 : 0;
}

void config_free(struct config *c) {
  free(c->cert_dir);
  free(c->file_dir);
  free(c->tcp_bind);
  free(c->tls_bind);
  free(c->admin_bind);
  free(c->access_log);
  strv_free(&c->filters);
  free(c->upstream_ca_file);
  strv_free(&c->resolve);
  strv_free(&c->query_ignore);
  strv_free(&c->allow_clients);
  free(c->connect_ports);
  if (c->upstream_proxy != NULL) memset(c->upstream_proxy, 0, strlen(c->upstream_proxy));
  free(c->upstream_proxy);
  strv_free(&c->no_upstream_proxy);
  strv_free(&c->parents);
  free(c->parent_ca_file);
  free(c->ca_cn);
  free(c->server_cn);
  strv_free(&c->server_dns_sans);
  strv_free(&c->server_ip_sans);
  free(c->client_cn);
  free(c->p12_pass);
  memset(c, 0, sizeof(*c));
}

/* ---- value checks -------------------------------------------------------------------------- */

static int why_f(char *why, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int why_f(char *why, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, len, fmt, ap);
  va_end(ap);
  return -1;
}

/* Digits only, no sign, no leading '+'; value in [min, max]. -1 if not a number, -2 if out of
 * range. */
static int parse_uint(const char *s, size_t n, long min, long max, long *out) {
  long v = 0;
  if (n == 0) return -1;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return -1;
  if (n > 6) return -2;
  for (size_t i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
  *out = v;
  return v < min || v > max ? -2 : 0;
}

static int is_ip(int af, const char *s, size_t n) {
  char buf[64];
  unsigned char addr[16];
  if (n == 0 || n >= sizeof(buf)) return 0;
  memcpy(buf, s, n);
  buf[n] = '\0';
  return inet_pton(af, buf, addr) == 1;
}

int config_check_ip(const char *s, char *why, size_t len) {
  size_t n = strlen(s);
  if (is_ip(AF_INET, s, n) || is_ip(AF_INET6, s, n)) return 0;
  return why_f(why, len, "invalid IP address '%s'", s);
}

/* "a.b.c.d:port" or "[v6]:port". */
int config_check_bind(const char *s, char *why, size_t len) {
  const char *colon, *host = s;
  size_t hlen;
  int af = AF_INET, rc;
  long port;

  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':') goto bad;
    host = s + 1;
    hlen = (size_t)(close - host);
    colon = close + 1;
    af = AF_INET6;
  } else {
    if ((colon = strrchr(s, ':')) == NULL) goto bad;
    hlen = (size_t)(colon - s);
  }
  if (!is_ip(af, host, hlen)) goto bad;
  rc = parse_uint(colon + 1, strlen(colon + 1), 1, 65535, &port);
  if (rc == -2) return why_f(why, len, "port out of range in '%s' (1..65535)", s);
  if (rc == 0) return 0;
bad:
  return why_f(why, len, "invalid address '%s' (expected 'a.b.c.d:port' or '[ipv6]:port')", s);
}

/* "a.b.c.d/n" or "v6/n". */
int config_check_cidr(const char *s, char *why, size_t len) {
  const char *slash = strchr(s, '/');
  long bits;
  if (slash != NULL) {
    size_t hlen = (size_t)(slash - s);
    size_t plen = strlen(slash + 1);
    if (is_ip(AF_INET, s, hlen) && parse_uint(slash + 1, plen, 0, 32, &bits) == 0) return 0;
    if (is_ip(AF_INET6, s, hlen) && parse_uint(slash + 1, plen, 0, 128, &bits) == 0) return 0;
  }
  return why_f(why, len, "invalid CIDR '%s' (expected 'a.b.c.d/n' or 'ipv6/n')", s);
}

static int is_host_char(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '.' || c == '_';
}

/* "HOSTGLOB:NAME[,NAME...]" or "HOSTGLOB:*" (libdduct's rule syntax, checked here for the
 * config's positioned errors). */
static int check_query_ignore(const char *s, char *why, size_t len) {
  const char *colon = strchr(s, ':'), *p;
  if (colon == NULL || colon == s) goto bad;
  p = colon + 1;
  if (strcmp(p, "*") == 0) return 0;
  for (;;) {
    size_t n = strcspn(p, ",");
    if (n == 0 || strcspn(p, "&=*") < n) goto bad;
    if (p[n] == '\0') return 0;
    p += n + 1;
  }
bad:
  return why_f(why, len,
               "invalid query_ignore rule '%s' (expected 'HOSTGLOB:NAME[,NAME...]' or "
               "'HOSTGLOB:*', e.g. '*.cdn.example:sig,expires')", s);
}

/* "host:a.b.c.d" or "host:[v6]", like curl --resolve without the port. */
int config_check_resolve(const char *s, char *why, size_t len) {
  const char *colon = strchr(s, ':'), *a;
  size_t alen;
  if (colon == NULL || colon == s) goto bad;
  for (const char *p = s; p < colon; p++)
    if (!is_host_char((unsigned char)*p)) goto bad;
  a = colon + 1;
  alen = strlen(a);
  if (is_ip(AF_INET, a, alen)) return 0;
  if (alen > 2 && a[0] == '[' && a[alen - 1] == ']' && is_ip(AF_INET6, a + 1, alen - 2)) return 0;
bad:
  return why_f(why, len,
               "invalid resolve entry '%s' (expected 'host:a.b.c.d' or 'host:[ipv6]')", s);
}

static int check_nonempty(const char *s, char *why, size_t len) {
  return s[0] != '\0' ? 0 : why_f(why, len, "must not be empty");
}

/* "http(s)://host[:port]": a parent dduct's listener (no path, no credentials). */
static int check_parent(const char *s, char *why, size_t len) {
  const char *p = strncmp(s, "https://", 8) == 0 ? s + 8 : strncmp(s, "http://", 7) == 0 ? s + 7 : NULL;
  if (p == NULL || *p == '\0' || *p == '/' || strpbrk(p, "@?#") != NULL ||
      (strchr(p, '/') != NULL && strcmp(strchr(p, '/'), "/") != 0))
    return why_f(why, len, "invalid parent '%s' (expected 'https://host:port')", s);
  return 0;
}

/* A host pattern, or a CIDR when it has a prefix length. */
static int check_no_proxy(const char *s, char *why, size_t len) {
  if (strchr(s, '/') != NULL) return config_check_cidr(s, why, len);
  return check_nonempty(s, why, len);
}

/* '' or "http(s)://[user:pass@]host[:port]"; the message never repeats the URL (a password). */
static int check_proxy_url(const char *s, char *why, size_t len) {
  const char *p = strncmp(s, "https://", 8) == 0 ? s + 8 : strncmp(s, "http://", 7) == 0 ? s + 7 : NULL;
  const char *at, *end;
  if (s[0] == '\0') return 0;
  if (p == NULL)
    return why_f(why, len, "expected 'http://[user:password@]host:port' or 'https://...'");
  end = p + strcspn(p, "/?#");
  if (*end != '\0' && strcmp(end, "/") != 0) return why_f(why, len, "no path allowed after host:port");
  at = NULL;
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q;
  if ((at != NULL ? at + 1 : p) == end) return why_f(why, len, "missing host");
  return 0;
}

static int check_filter(const char *s, char *why, size_t len) {
  struct dduct_filter *f;
  int rc;
  if (dduct_filter_new(&f) != 0) return why_f(why, len, "out of memory");
  rc = dduct_filter_add(f, s, why, len);
  dduct_filter_free(f);
  return rc == 0 ? 0 : -1;
}

/* ---- loading ------------------------------------------------------------------------------- */

struct loader {
  const char *name;
  char *err;
  size_t errlen;
};

static int lfail(struct loader *l, const struct toml_node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int lfail(struct loader *l, const struct toml_node *at, const char *fmt, ...) {
  va_list ap;
  int n = snprintf(l->err, l->errlen, "%s:%d:%d: ", l->name, at->line, at->col);
  if (n >= 0 && (size_t)n < l->errlen) {
    va_start(ap, fmt);
    vsnprintf(l->err + n, l->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int lfail_key(struct loader *l, const struct toml_node *kv, const char *fmt, const char *a,
                     const char *b) {
  struct toml_node at = *kv;
  at.line = kv->key_line;
  at.col = kv->key_col;
  return lfail(l, &at, fmt, a, b);
}

static const char *article(enum toml_type t) {
  return t == TOML_INTEGER || t == TOML_ARRAY ? "an" : "a";
}

static int want_type(struct loader *l, const struct key *k, const struct toml_node *v,
                     enum toml_type t) {
  if (v->type == t) return 0;
  return lfail(l, v, "%s: expected %s %s, found %s %s", k->name, article(t), toml_type_name(t),
               article(v->type), toml_type_name(v->type));
}

static int want_string(struct loader *l, const struct key *k, const struct toml_node *v) {
  if (want_type(l, k, v, TOML_STRING) != 0) return -1;
  if (strlen(v->str) != v->len) return lfail(l, v, "%s: strings must not contain NUL", k->name);
  return 0;
}

static int load_string(struct loader *l, const struct key *k, const struct toml_node *v,
                       struct config *c) {
  char why[512];
  char **dst = (char **)((char *)c + k->off);
  if (want_string(l, k, v) != 0) return -1;
  if (k->kind == K_STRING && k->min > 0 && v->len == 0)
    return lfail(l, v, "%s: must not be empty", k->name);
  if (k->kind == K_BIND && v->len > 0 && config_check_bind(v->str, why, sizeof(why)) != 0)
    return lfail(l, v, "%s: %s", k->name, why);
  if (k->kind == K_PROXY_URL && check_proxy_url(v->str, why, sizeof(why)) != 0)
    return lfail(l, v, "%s: %s", k->name, why);
  return set_str(dst, v->str) == 0 ? 0 : lfail(l, v, "out of memory");
}

static int load_enum(struct loader *l, const struct key *k, const struct toml_node *v,
                     struct config *c) {
  int *dst = (int *)((char *)c + k->off), val;
  if (want_string(l, k, v) != 0) return -1;
  if (k->kind == K_LEVEL) {
    if ((val = dduct_log_level_parse(v->str)) < 0)
      return lfail(l, v, "%s: invalid level '%s' (expected error, warn, info, debug or trace)",
                   k->name, v->str);
  } else if (k->kind == K_VERIFY) {
    if (strcmp(v->str, "never") == 0) val = DDUCT_VERIFY_NEVER;
    else if (strcmp(v->str, "first") == 0) val = DDUCT_VERIFY_FIRST;
    else if (strcmp(v->str, "always") == 0) val = DDUCT_VERIFY_ALWAYS;
    else
      return lfail(l, v, "%s: invalid value '%s' (expected 'first', 'always' or 'never')",
                   k->name, v->str);
  } else if (k->kind == K_CHECKSUM) {
    if (strcmp(v->str, "gmac") == 0) val = DDUCT_CHECKSUM_GMAC;
    else if (strcmp(v->str, "sha256") == 0) val = DDUCT_CHECKSUM_SHA256;
    else
      return lfail(l, v, "%s: invalid value '%s' (expected 'gmac' or 'sha256')", k->name, v->str);
  } else if (strcmp(v->str, "never") == 0 || strcmp(v->str, "always") == 0) {
    val = v->str[0] == 'a' ? DDUCT_REVALIDATE_ALWAYS : DDUCT_REVALIDATE_NEVER;
  } else {
    return lfail(l, v, "%s: invalid value '%s' (expected 'never' or 'always')", k->name, v->str);
  }
  *dst = val;
  return 0;
}

static int load_uint(struct loader *l, const struct key *k, const struct toml_node *v,
                     struct config *c) {
  if (want_type(l, k, v, TOML_INTEGER) != 0) return -1;
  if (v->integer < k->min || v->integer > k->max)
    return lfail(l, v, "%s: %lld is out of range (%lld..%lld)", k->name, (long long)v->integer,
                 k->min, k->max);
  *(unsigned *)((char *)c + k->off) = (unsigned)v->integer;
  return 0;
}

static int load_bool(struct loader *l, const struct key *k, const struct toml_node *v,
                     struct config *c) {
  if (want_type(l, k, v, TOML_BOOLEAN) != 0) return -1;
  *(int *)((char *)c + k->off) = (int)v->integer;
  return 0;
}

static int load_strings(struct loader *l, const struct key *k, const struct toml_node *v,
                        struct config *c) {
  const char **tmp;
  char why[512];
  int rc;
  if (want_type(l, k, v, TOML_ARRAY) != 0) return -1;
  for (size_t i = 0; i < v->count; i++) {
    const struct toml_node *e = &v->items[i];
    if (e->type != TOML_STRING)
      return lfail(l, e, "%s: expected an array of strings, found %s %s element", k->name,
                   article(e->type), toml_type_name(e->type));
    if (want_string(l, k, e) != 0) return -1;
    if (k->check != NULL && k->check(e->str, why, sizeof(why)) != 0)
      return lfail(l, e, "%s: %s", k->name, why);
  }
  if ((tmp = calloc(v->count ? v->count : 1, sizeof(*tmp))) == NULL)
    return lfail(l, v, "out of memory");
  for (size_t i = 0; i < v->count; i++) tmp[i] = v->items[i].str;
  rc = strv_set((struct strv *)((char *)c + k->off), tmp, v->count);
  free(tmp);
  return rc == 0 ? 0 : lfail(l, v, "out of memory");
}

static int load_ports(struct loader *l, const struct key *k, const struct toml_node *v,
                      struct config *c) {
  uint16_t *ports;
  if (want_type(l, k, v, TOML_ARRAY) != 0) return -1;
  for (size_t i = 0; i < v->count; i++) {
    const struct toml_node *e = &v->items[i];
    if (e->type != TOML_INTEGER)
      return lfail(l, e, "%s: expected an array of integers, found %s %s element", k->name,
                   article(e->type), toml_type_name(e->type));
    if (e->integer < k->min || e->integer > k->max)
      return lfail(l, e, "%s: port %lld is out of range (%lld..%lld)", k->name,
                   (long long)e->integer, k->min, k->max);
  }
  if ((ports = malloc((v->count ? v->count : 1) * sizeof(*ports))) == NULL)
    return lfail(l, v, "out of memory");
  for (size_t i = 0; i < v->count; i++) ports[i] = (uint16_t)v->items[i].integer;
  free(c->connect_ports);
  c->connect_ports = ports;
  c->connect_ports_count = v->count;
  return 0;
}

/* "123", "50G", "1.5G" is refused (whole numbers only); suffixes K, M, G, T (also KiB, MB, ...:
 * all powers of 1024). -1 when malformed, -2 when too large. */
int config_parse_size(const char *s, uint64_t *out) {
  static const char units[] = "KMGT";
  uint64_t v = 0, mul = 1;
  const char *p = s, *u;
  if (*p < '0' || *p > '9') return -1;
  for (; *p >= '0' && *p <= '9'; p++) {
    if (v > (UINT64_MAX - 9) / 10) return -2;
    v = v * 10 + (uint64_t)(*p - '0');
  }
  while (*p == ' ') p++;
  if (*p != '\0') {
    char c = (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    if ((u = strchr(units, c)) == NULL || c == '\0') return -1;
    for (const char *x = units; x <= u; x++) mul *= 1024;
    p++;
    if (strcmp(p, "") != 0 && strcmp(p, "B") != 0 && strcmp(p, "iB") != 0 && strcmp(p, "b") != 0 &&
        strcmp(p, "ib") != 0)
      return -1;
    if (v > UINT64_MAX / mul) return -2;
    v *= mul;
  }
  *out = v;
  return 0;
}

static int load_size(struct loader *l, const struct key *k, const struct toml_node *v,
                     struct config *c) {
  uint64_t *dst = (uint64_t *)((char *)c + k->off), val;
  int rc;
  if (v->type == TOML_INTEGER) {
    if (v->integer < 0) return lfail(l, v, "%s: must not be negative", k->name);
    *dst = (uint64_t)v->integer;
    if (k->kind == K_MINFREE) c->cache_min_free_percent = 0;
    return 0;
  }
  if (v->type != TOML_STRING)
    return lfail(l, v, "%s: expected an integer or a string like '50G'%s, found %s %s", k->name,
                 k->kind == K_MINFREE ? " or '10%'" : "", article(v->type),
                 toml_type_name(v->type));
  if (want_string(l, k, v) != 0) return -1;
  if (k->kind == K_MINFREE && v->len > 0 && v->str[v->len - 1] == '%') {
    long pct;
    if (parse_uint(v->str, v->len - 1, 0, 99, &pct) != 0)
      return lfail(l, v, "%s: invalid percentage '%s' (expected '0%%'..'99%%')", k->name, v->str);
    *dst = 0;
    c->cache_min_free_percent = (unsigned)pct;
    return 0;
  }
  rc = config_parse_size(v->str, &val);
  if (rc == -2) return lfail(l, v, "%s: '%s' is too large", k->name, v->str);
  if (rc != 0)
    return lfail(l, v, "%s: invalid size '%s' (expected bytes, or a number with K, M, G or T%s)",
                 k->name, v->str, k->kind == K_MINFREE ? ", or a percentage like '10%'" : "");
  *dst = val;
  if (k->kind == K_MINFREE) c->cache_min_free_percent = 0;
  return 0;
}

static int load_key(struct loader *l, const struct key *k, const struct toml_node *v,
                    struct config *c) {
  switch (k->kind) {
    case K_STRING:
    case K_BIND:
    case K_PROXY_URL: return load_string(l, k, v, c);
    case K_LEVEL:
    case K_REVALIDATE:
    case K_VERIFY:
    case K_CHECKSUM: return load_enum(l, k, v, c);
    case K_BOOL: return load_bool(l, k, v, c);
    case K_UINT: return load_uint(l, k, v, c);
    case K_STRINGS: return load_strings(l, k, v, c);
    case K_PORTS: return load_ports(l, k, v, c);
    case K_SIZE:
    case K_MINFREE: return load_size(l, k, v, c);
  }
  return -1;
}

static const struct key *find_key(const char *table, const char *name) {
  for (size_t i = 0; i < COUNT(keys); i++)
    if (strcmp(keys[i].table, table) == 0 && strcmp(keys[i].name, name) == 0) return &keys[i];
  return NULL;
}

static int load_table(struct loader *l, const struct toml_node *t, struct config *c) {
  for (size_t i = 0; i < t->count; i++) {
    const struct toml_node *kv = &t->items[i];
    const struct key *k = find_key(t->key, kv->key);
    if (k == NULL) return lfail_key(l, kv, "unknown key '%s' in [%s]", kv->key, t->key);
    if (load_key(l, k, kv, c) != 0) return -1;
  }
  return 0;
}

static int known_table(const char *name) {
  for (size_t i = 0; i < COUNT(tables); i++)
    if (strcmp(tables[i], name) == 0) return 1;
  return 0;
}

int config_load(struct config *c, const char *name, const char *text, size_t len, char *err,
                size_t errlen) {
  struct loader l = {name, err, errlen};
  struct toml_node *root;
  int rc = 0;

  if (toml_parse(name, text, len, &root, err, errlen) != 0) return -1;
  for (size_t i = 0; i < root->count && rc == 0; i++) {
    const struct toml_node *t = &root->items[i];
    if (t->type != TOML_TABLE)
      rc = lfail_key(&l, t, "unknown key '%s'%s", t->key,
                     " (settings belong in [misc], [proxy], [cache] or [certs])");
    else if (!known_table(t->key))
      rc = lfail_key(&l, t, "unknown table [%s]%s", t->key,
                     " (expected [misc], [proxy], [cache] or [certs])");
    else
      rc = load_table(&l, t, c);
  }
  toml_free(root);
  return rc;
}

int config_load_file(struct config *c, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  char *buf;
  size_t n;
  int rc;

  if (f == NULL) {
    snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    return -1;
  }
  if ((buf = malloc(TOML_MAX_SIZE + 1)) == NULL) {
    fclose(f);
    snprintf(err, errlen, "%s: out of memory", path);
    return -1;
  }
  n = fread(buf, 1, TOML_MAX_SIZE + 1, f);
  if (ferror(f)) {
    snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
    rc = -1;
  } else {
    rc = config_load(c, path, buf, n, err, errlen);
  }
  free(buf);
  fclose(f);
  return rc;
}

/* ---- printing ------------------------------------------------------------------------------ */

/* A literal string when it needs no escaping (the seed's style), else a basic string. */
static void print_string(FILE *out, const char *s) {
  int literal = 1;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p == '\'' || *p < 0x20 || *p == 0x7f) literal = 0;
  if (literal) {
    fprintf(out, "'%s'", s);
    return;
  }
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
    else if (*p == '\n') fputs("\\n", out);
    else if (*p == '\t') fputs("\\t", out);
    else if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\u%04X", *p);
    else fputc(*p, out);
  }
  fputc('"', out);
}

/* The password never leaves the config: 'http://user:***@host:port'. */
static void print_proxy_url(FILE *out, const char *s) {
  const char *p = strstr(s, "://"), *end, *at = NULL, *colon;
  char buf[1024];
  if (p == NULL) {
    print_string(out, s);
    return;
  }
  p += 3;
  end = p + strcspn(p, "/?#");
  for (const char *q = p; q < end; q++)
    if (*q == '@') at = q;
  colon = at != NULL ? memchr(p, ':', (size_t)(at - p)) : NULL;
  if (colon == NULL) {
    print_string(out, s);
    return;
  }
  snprintf(buf, sizeof(buf), "%.*s:***%s", (int)(colon - s), s, at);
  print_string(out, buf);
}

/* Bytes in the largest unit that divides them exactly ('50G'), or a plain integer. */
static void print_size(FILE *out, uint64_t v) {
  static const char units[] = "KMGT";
  int u = -1;
  if (v == 0) {
    fputs("0", out);
    return;
  }
  while (u < 3 && v % 1024 == 0) {
    v /= 1024;
    u++;
  }
  if (u < 0) fprintf(out, "%llu", (unsigned long long)v);
  else fprintf(out, "'%llu%c'", (unsigned long long)v, units[u]);
}

static void print_value(FILE *out, const struct key *k, const struct config *c) {
  const void *field = (const char *)c + k->off;
  switch (k->kind) {
    case K_STRING:
    case K_BIND: print_string(out, *(char *const *)field); break;
    case K_PROXY_URL: print_proxy_url(out, *(char *const *)field); break;
    case K_LEVEL: print_string(out, dduct_log_level_name(*(const int *)field)); break;
    case K_REVALIDATE: print_string(out, *(const int *)field ? "always" : "never"); break;
    case K_VERIFY: {
      int m = *(const int *)field;
      print_string(out, m == DDUCT_VERIFY_NEVER ? "never" : m == DDUCT_VERIFY_ALWAYS ? "always"
                                                                                  : "first");
      break;
    }
    case K_CHECKSUM:
      print_string(out, *(const int *)field == DDUCT_CHECKSUM_SHA256 ? "sha256" : "gmac");
      break;
    case K_BOOL: fputs(*(const int *)field ? "true" : "false", out); break;
    case K_UINT: fprintf(out, "%u", *(const unsigned *)field); break;
    case K_STRINGS: {
      const struct strv *sv = field;
      fputc('[', out);
      for (size_t i = 0; i < sv->n; i++) {
        fputs(sv->n > 1 ? "\n  " : "", out);
        print_string(out, sv->v[i]);
        fputs(sv->n > 1 ? "," : "", out);
      }
      fputs(sv->n > 1 ? "\n]" : "]", out);
      break;
    }
    case K_PORTS:
      fputc('[', out);
      for (size_t i = 0; i < c->connect_ports_count; i++)
        fprintf(out, "%s%u", i ? ", " : "", (unsigned)c->connect_ports[i]);
      fputc(']', out);
      break;
    case K_SIZE: print_size(out, *(const uint64_t *)field); break;
    case K_MINFREE:
      if (*(const uint64_t *)field == 0) fprintf(out, "'%u%%'", c->cache_min_free_percent);
      else print_size(out, *(const uint64_t *)field);
      break;
  }
}

void config_print(const struct config *c, FILE *out) {
  for (size_t t = 0; t < COUNT(tables); t++) {
    int width = 0;
    for (size_t i = 0; i < COUNT(keys); i++)
      if (strcmp(keys[i].table, tables[t]) == 0 && (int)strlen(keys[i].name) > width)
        width = (int)strlen(keys[i].name);
    fprintf(out, "%s[%s]\n", t ? "\n" : "", tables[t]);
    for (size_t i = 0; i < COUNT(keys); i++) {
      if (strcmp(keys[i].table, tables[t]) != 0) continue;
      fprintf(out, "%-*s = ", width, keys[i].name);
      print_value(out, &keys[i], c);
      fputc('\n', out);
    }
  }
}

void config_store_options(const struct config *c, struct dduct_store_options *o) {
  dduct_store_options_init(o);
  o->max_size = c->cache_max_size;
  o->min_free = c->cache_min_free;
  o->min_free_percent = c->cache_min_free == 0 ? c->cache_min_free_percent : 0;
  o->fsync = c->cache_fsync;
  o->verify_hits = (enum dduct_verify_hits)c->cache_verify_hits;
  o->checksum = (enum dduct_checksum)c->cache_checksum;
}

void config_ca_options(const struct config *c, struct dduct_ca_options *o) {
  memset(o, 0, sizeof(*o));
  o->cert_dir = c->cert_dir;
  o->rsa_key_bits = c->rsa_key_bits;
  o->days_from_now = c->days_from_now;
  o->ca_cn = c->ca_cn;
  o->server_cn = c->server_cn;
  o->server_dns_sans = (const char *const *)c->server_dns_sans.v;
  o->server_dns_sans_count = c->server_dns_sans.n;
  o->server_ip_sans = (const char *const *)c->server_ip_sans.v;
  o->server_ip_sans_count = c->server_ip_sans.n;
  o->client_cn = c->client_cn;
  o->p12_pass = c->p12_pass;
  o->ca_name_constraints = c->ca_name_constraints;
}
