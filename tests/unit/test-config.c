/* The CLI's config layer: the schema's defaults, the seed's example giving exactly the seed's
 * values, partial configs, dduct's additions, unknown keys and tables, and every invalid value
 * reported at its FILE:LINE:COL; --check's printout reads back to the same settings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "seed-config.h"
#include "tap.h"


static const char *const seed_filters[] = {
    "^/v2/.*/blobs/sha256:\\w+$", "^/.*\\.(?:apk|deb|rpm)$", "^/.*\\.(?:tar|tbz|tgz|txz)$",
    "^/.*\\.(?:7z|bz2|gz|xz|zip|zst)$"};
static const char *const seed_dns[] = {"*.dduct.rs", "*.docker.io", "*.gcr.io",
                                       "*.githubusercontent.com", "*.k8s.io", "*.quay.io",
                                       "ghcr.io", "quay.io"};
static const char *const default_allow[] = {"127.0.0.0/8", "::1/128", "10.0.0.0/8",
                                            "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"};

static int strv_eq(const struct strv *sv, const char *const *want, size_t n) {
  if (sv->n != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(sv->v[i], want[i]) != 0) return 0;
  return 1;
}

/* Every seed key at its seed value. */
static void check_seed_values(const struct config *c, const char *what) {
  char msg[128];
#define SEED(cond, field)                                      \
  do {                                                         \
    snprintf(msg, sizeof(msg), "%s: %s", what, field);         \
    CHECK(cond, msg);                                          \
  } while (0)
  SEED(c->log_level == DDUCT_LOG_INFO, "log_level 'info'");
  SEED(strcmp(c->cert_dir, "/var/tmp/dduct/certs/") == 0, "cert_dir");
  SEED(strcmp(c->file_dir, "/var/tmp/dduct/files/") == 0, "file_dir");
  SEED(strcmp(c->tcp_bind, "127.0.0.1:8000") == 0, "tcp_bind");
  SEED(strcmp(c->tls_bind, "0.0.0.0:4430") == 0, "tls_bind");
  SEED(strv_eq(&c->filters, seed_filters, 4), "the four filters");
  SEED(c->rsa_key_bits == 3072, "rsa_key_bits");
  SEED(c->days_from_now == 3072, "days_from_now");
  SEED(strcmp(c->ca_cn, "dduct") == 0, "ca_cn");
  SEED(strcmp(c->server_cn, "*.dduct.rs") == 0, "server_cn");
  SEED(strv_eq(&c->server_dns_sans, seed_dns, 8), "the eight DNS SANs");
  SEED(c->server_ip_sans.n == 1 && strcmp(c->server_ip_sans.v[0], "127.0.0.1") == 0,
       "server_ip_sans");
  SEED(strcmp(c->client_cn, "client.dduct.rs") == 0, "client_cn");
  SEED(strcmp(c->p12_pass, "dduct") == 0, "p12_pass");
#undef SEED
}

static void check_proxy_defaults(const struct config *c) {
  CHECK_EQ_STR(c->upstream_ca_file, "", "upstream_ca_file defaults to none");
  CHECK(c->upstream_insecure == 0, "origins are verified by default");
  CHECK(c->resolve.n == 0, "no resolve pins by default");
  CHECK(strv_eq(&c->allow_clients, default_allow, 6), "allow_clients: loopback and private");
  CHECK(c->connect_ports_count == 1 && c->connect_ports[0] == 443, "CONNECT to 443 only");
  CHECK(c->connect_any_port == 0, "connect_any_port off");
  CHECK_EQ_INT(c->max_connections, 1024, "max_connections");
  CHECK_EQ_INT(c->max_connections_per_client, 256, "max_connections_per_client");
  CHECK_EQ_INT(c->head_timeout, 30, "head_timeout");
  CHECK_EQ_INT(c->idle_timeout, 60, "idle_timeout");
  CHECK_EQ_INT(c->tunnel_idle_timeout, 600, "tunnel_idle_timeout");
  CHECK_EQ_INT(c->connect_timeout, 10, "connect_timeout");
  CHECK_EQ_INT(c->upstream_timeout, 60, "upstream_timeout");
  CHECK_EQ_INT(c->shutdown_grace, 10, "shutdown_grace");
  CHECK(c->revalidate == DDUCT_REVALIDATE_NEVER, "revalidate never");
}

static int load(struct config *c, const char *text, char *err, size_t len) {
  return config_load(c, "c.toml", text, strlen(text), err, len);
}

static char *print(const struct config *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  config_print(c, f);
  fclose(f);
  return buf;
}

/* 1 if the --check listing p has a line starting with key ("\nname ") that holds val. */
static int prints(const char *p, const char *key, const char *val) {
  const char *line = strstr(p, key);
  const char *eol = line != NULL ? strchr(line + 1, '\n') : NULL;
  const char *v = line != NULL ? strstr(line, val) : NULL;
  return v != NULL && eol != NULL && v < eol;
}

static void test_defaults_and_seed(void) {
  struct config d, s;
  char err[512] = "";
  char *pd, *ps;
  CHECK_EQ_INT(config_init(&d), 0, "defaults");
  check_seed_values(&d, "default");
  check_proxy_defaults(&d);
  config_init(&s);
  CHECK_EQ_INT(load(&s, seed, err, sizeof(err)), 0, "the seed's example loads");
  CHECK_EQ_STR(err, "", "without a message");
  check_seed_values(&s, "seed");
  check_proxy_defaults(&s);
  pd = print(&d);
  ps = print(&s);
  CHECK_EQ_STR(ps, pd, "the seed example and the defaults are the same settings");
  free(pd);
  free(ps);
  config_free(&d);
  config_free(&s);
}

static void test_partial_and_additions(void) {
  struct config c;
  char err[512] = "";
  static const char *const resolve[] = {"registry.test:127.0.0.1", "v6.test:[::1]"};
  static const char *const allow[] = {"127.0.0.1/32"};

  config_init(&c);
  CHECK_EQ_INT(load(&c, "[certs]\nrsa_key_bits = 2048\n", err, sizeof(err)), 0, "one key");
  CHECK_EQ_INT(c.rsa_key_bits, 2048, "the key is set");
  CHECK_EQ_INT(c.days_from_now, 3072, "its neighbours keep their defaults");
  CHECK_EQ_STR(c.tcp_bind, "127.0.0.1:8000", "other tables keep their defaults");
  CHECK_EQ_INT(load(&c, "", err, sizeof(err)), 0, "an empty file");
  CHECK_EQ_INT(load(&c, "[misc]\n[proxy]\n[certs]\n", err, sizeof(err)), 0, "empty tables");
  config_free(&c);

  config_init(&c);
  CHECK_EQ_INT(load(&c,
                    "[misc]\nlog_level = 'trace'\n"
                    "[proxy]\n"
                    "tcp_bind = '[::1]:8080'\ntls_bind = ''\nfilters = []\n"
                    "upstream_ca_file = '/tmp/origin-ca.pem'\nupstream_insecure = true\n"
                    "resolve = ['registry.test:127.0.0.1', 'v6.test:[::1]']\n"
                    "allow_clients = ['127.0.0.1/32']\nconnect_ports = [443, 8443, 65535]\n"
                    "connect_any_port = true\nmax_connections = 7\nhead_timeout = 1\n"
                    "idle_timeout = 2\ntunnel_idle_timeout = 3\nconnect_timeout = 4\n"
                    "upstream_timeout = 5\nshutdown_grace = 6\nrevalidate = 'always'\n"
                    "query_ignore = ['*.cdn.test:sig,expires', 'mirror.test:*']\n"
                    "[certs]\nserver_dns_sans = []\nserver_ip_sans = ['::1', '10.1.2.3']\n"
                    "p12_pass = ''\n",
                    err, sizeof(err)),
               0, "every addition loads");
  CHECK_EQ_STR(err, "", "no message");
  CHECK(c.log_level == DDUCT_LOG_TRACE, "log_level trace");
  CHECK_EQ_STR(c.tcp_bind, "[::1]:8080", "an IPv6 bind address");
  CHECK_EQ_STR(c.tls_bind, "", "'' disables a listener");
  CHECK(c.filters.n == 0, "no filters: nothing cached");
  CHECK_EQ_STR(c.upstream_ca_file, "/tmp/origin-ca.pem", "upstream_ca_file");
  CHECK(c.upstream_insecure == 1 && c.connect_any_port == 1, "booleans");
  CHECK(strv_eq(&c.resolve, resolve, 2), "resolve pins, IPv4 and [IPv6]");
  CHECK(strv_eq(&c.allow_clients, allow, 1), "allow_clients");
  CHECK(c.connect_ports_count == 3 && c.connect_ports[1] == 8443 && c.connect_ports[2] == 65535,
        "connect_ports");
  CHECK(c.max_connections == 7 && c.head_timeout == 1 && c.idle_timeout == 2 &&
            c.tunnel_idle_timeout == 3 && c.connect_timeout == 4 && c.upstream_timeout == 5 &&
            c.shutdown_grace == 6,
        "limits and timeouts");
  CHECK(c.revalidate == DDUCT_REVALIDATE_ALWAYS, "revalidate always");
  {
    static const char *const qi[] = {"*.cdn.test:sig,expires", "mirror.test:*"};
    CHECK(strv_eq(&c.query_ignore, qi, 2), "query_ignore rules");
  }
  CHECK(c.server_dns_sans.n == 0 && c.server_ip_sans.n == 2, "SAN lists replace the defaults");
  CHECK_EQ_STR(c.p12_pass, "", "an empty p12 password is allowed");
  {
    struct config again;
    char *p1 = print(&c), *p2;
    config_init(&again);
    CHECK_EQ_INT(config_load(&again, "printed", p1, strlen(p1), err, sizeof(err)), 0,
                 "the printout loads");
    p2 = print(&again);
    CHECK_EQ_STR(p2, p1, "and prints the same settings");
    free(p1);
    free(p2);
    config_free(&again);
  }
  {
    struct dduct_ca_options o;
    config_ca_options(&c, &o);
    CHECK(o.cert_dir == c.cert_dir && o.rsa_key_bits == 3072 && o.server_dns_sans_count == 0 &&
              o.server_ip_sans_count == 2 && strcmp(o.server_ip_sans[0], "::1") == 0 &&
              o.p12_pass == c.p12_pass,
          "CA options point at the config");
  }
  config_free(&c);
}

/* Load text expecting failure with exactly "c.toml:" msg. */
static void bad(const char *text, const char *msg, const char *what) {
  struct config c;
  char err[512] = "", want[512];
  config_init(&c);
  snprintf(want, sizeof(want), "c.toml:%s", msg);
  CHECK(load(&c, text, err, sizeof(err)) == -1, what);
  CHECK_EQ_STR(err, want, what);
  config_free(&c);
}

static void test_errors(void) {
  bad("[misc]\nlog_lvl = 'info'\n", "2:1: unknown key 'log_lvl' in [misc]", "unknown key");
  bad("[certs]\n  tcp_bind = ''\n", "2:3: unknown key 'tcp_bind' in [certs]",
      "a key in the wrong table");
  bad("[cert]\n", "1:2: unknown table [cert] (expected [misc], [proxy], [cache] or [certs])",
      "unknown table");
  bad("log_level = 'info'\n",
      "1:1: unknown key 'log_level' (settings belong in [misc], [proxy], [cache] or [certs])",
      "keys outside a table");
  bad("[misc]\nlog_level = 'verbose'\n",
      "2:13: log_level: invalid level 'verbose' (expected error, warn, info, debug or trace)",
      "bad log level");
  bad("[misc]\nlog_level = 3\n", "2:13: log_level: expected a string, found an integer",
      "log level type");
  bad("[misc]\ncert_dir = ''\n", "2:12: cert_dir: must not be empty", "empty cert_dir");
  bad("[misc]\nfile_dir = ['/x']\n", "2:12: file_dir: expected a string, found an array",
      "array for a string");
  bad("[misc]\ncert_dir = \"/x\\u0000y\"\n", "2:12: cert_dir: strings must not contain NUL",
      "NUL in a path");
  bad("[proxy]\ntcp_bind = '127.0.0.1'\n",
      "2:12: tcp_bind: invalid address '127.0.0.1' (expected 'a.b.c.d:port' or '[ipv6]:port')",
      "bind without a port");
  bad("[proxy]\ntls_bind = 'localhost:4430'\n",
      "2:12: tls_bind: invalid address 'localhost:4430' (expected 'a.b.c.d:port' or "
      "'[ipv6]:port')",
      "bind to a name");
  bad("[proxy]\ntcp_bind = '::1:8000'\n",
      "2:12: tcp_bind: invalid address '::1:8000' (expected 'a.b.c.d:port' or '[ipv6]:port')",
      "IPv6 without brackets");
  bad("[proxy]\ntcp_bind = '127.0.0.1:65536'\n",
      "2:12: tcp_bind: port out of range in '127.0.0.1:65536' (1..65535)", "port too large");
  bad("[proxy]\ntcp_bind = '[::]:0'\n", "2:12: tcp_bind: port out of range in '[::]:0' (1..65535)",
      "port zero");
  bad("[proxy]\ntcp_bind = '1.2.3.4:+80'\n",
      "2:12: tcp_bind: invalid address '1.2.3.4:+80' (expected 'a.b.c.d:port' or '[ipv6]:port')",
      "signed port");
  bad("[proxy]\ntcp_bind = true\n", "2:12: tcp_bind: expected a string, found a boolean",
      "bind type");
  bad("[proxy]\nfilters = ['^/ok$', '(']\n",
      "2:21: filters: filter '(': offset 1: missing closing parenthesis",
      "a pattern PCRE2 refuses, at its element");
  bad("[proxy]\nfilters = [\n  '^/a$',\n  42,\n]\n",
      "4:3: filters: expected an array of strings, found an integer element",
      "mixed types in an array");
  bad("[proxy]\nfilters = '^/a$'\n", "2:11: filters: expected an array, found a string",
      "a string for an array");
  bad("[proxy]\nupstream_insecure = 'yes'\n",
      "2:21: upstream_insecure: expected a boolean, found a string", "boolean type");
  bad("[proxy]\nquery_ignore = ['*.cdn.test:sig', 'h.test']\n",
      "2:35: query_ignore: invalid query_ignore rule 'h.test' (expected 'HOSTGLOB:NAME[,NAME...]' "
      "or 'HOSTGLOB:*', e.g. '*.cdn.example:sig,expires')",
      "a query_ignore rule without names");
  bad("[proxy]\nquery_ignore = ['h.test:a=b']\n",
      "2:17: query_ignore: invalid query_ignore rule 'h.test:a=b' (expected "
      "'HOSTGLOB:NAME[,NAME...]' or 'HOSTGLOB:*', e.g. '*.cdn.example:sig,expires')",
      "a query_ignore name with '='");
  bad("[proxy]\nresolve = ['registry.test']\n",
      "2:12: resolve: invalid resolve entry 'registry.test' (expected 'host:a.b.c.d' or "
      "'host:[ipv6]')",
      "resolve without an address");
  bad("[proxy]\nresolve = ['v6.test:::1']\n",
      "2:12: resolve: invalid resolve entry 'v6.test:::1' (expected 'host:a.b.c.d' or "
      "'host:[ipv6]')",
      "resolve IPv6 without brackets");
  bad("[proxy]\nresolve = ['a:1.2.3']\n",
      "2:12: resolve: invalid resolve entry 'a:1.2.3' (expected 'host:a.b.c.d' or "
      "'host:[ipv6]')",
      "resolve with a bad address");
  bad("[proxy]\nallow_clients = ['10.0.0.0/33']\n",
      "2:18: allow_clients: invalid CIDR '10.0.0.0/33' (expected 'a.b.c.d/n' or 'ipv6/n')",
      "CIDR prefix too long");
  bad("[proxy]\nallow_clients = ['::1/128', 'fe80::/129']\n",
      "2:29: allow_clients: invalid CIDR 'fe80::/129' (expected 'a.b.c.d/n' or 'ipv6/n')",
      "IPv6 prefix too long");
  bad("[proxy]\nallow_clients = ['10.0.0.0']\n",
      "2:18: allow_clients: invalid CIDR '10.0.0.0' (expected 'a.b.c.d/n' or 'ipv6/n')",
      "CIDR without a prefix");
  bad("[proxy]\nconnect_ports = [443, 0]\n",
      "2:23: connect_ports: port 0 is out of range (1..65535)", "port 0");
  bad("[proxy]\nconnect_ports = [65536]\n",
      "2:18: connect_ports: port 65536 is out of range (1..65535)", "port 65536");
  bad("[proxy]\nconnect_ports = ['443']\n",
      "2:18: connect_ports: expected an array of integers, found a string element",
      "port as a string");
  bad("[proxy]\nmax_connections = 0\n", "2:19: max_connections: 0 is out of range (1..1000000)",
      "max_connections zero");
  bad("[proxy]\nhead_timeout = -5\n", "2:16: head_timeout: -5 is out of range (1..86400)",
      "negative timeout");
  bad("[proxy]\nrevalidate = 'sometimes'\n",
      "2:14: revalidate: invalid value 'sometimes' (expected 'never' or 'always')",
      "bad revalidate");
  bad("[certs]\nrsa_key_bits = 1024\n", "2:16: rsa_key_bits: 1024 is out of range (2048..8192)",
      "RSA too small");
  bad("[certs]\nrsa_key_bits = 8193\n", "2:16: rsa_key_bits: 8193 is out of range (2048..8192)",
      "RSA too large");
  bad("[certs]\ndays_from_now = 0\n", "2:17: days_from_now: 0 is out of range (1..36500)",
      "zero days");
  bad("[certs]\nrsa_key_bits = '3072'\n",
      "2:16: rsa_key_bits: expected an integer, found a string", "a number as a string");
  bad("[certs]\nserver_ip_sans = ['127.0.0.1', 'localhost']\n",
      "2:32: server_ip_sans: invalid IP address 'localhost'", "a name as an IP SAN");
  bad("[certs]\nserver_dns_sans = ['a', '']\n", "2:25: server_dns_sans: must not be empty",
      "an empty DNS SAN");
  bad("[certs]\nca_cn = ''\n", "2:9: ca_cn: must not be empty", "an empty CN");
  bad("[proxy]\nupstream_proxy = 'socks5://u:pw@h:1'\n",
      "2:18: upstream_proxy: expected 'http://[user:password@]host:port' or 'https://...'",
      "an upstream proxy of another scheme (the message does not repeat the password)");
  bad("[proxy]\nparents = ['p1:4430']\n",
      "2:12: parents: invalid parent 'p1:4430' (expected 'https://host:port')", "a parent URL");
  bad("[proxy]\nno_upstream_proxy = ['*.corp', '10.0.0.0/99']\n",
      "2:32: no_upstream_proxy: invalid CIDR '10.0.0.0/99' (expected 'a.b.c.d/n' or 'ipv6/n')",
      "a bad CIDR in no_upstream_proxy");
  bad("[certs]\nca_cn = 'x'\n[misc]\n[certs]\n", "4:2: duplicate table [certs]",
      "TOML errors come through");
  bad("[cache]\nmax_size = '12X'\n",
      "2:12: max_size: invalid size '12X' (expected bytes, or a number with K, M, G or T)",
      "a size with an unknown unit");
  bad("[cache]\nmax_size = '1.5G'\n",
      "2:12: max_size: invalid size '1.5G' (expected bytes, or a number with K, M, G or T)",
      "a fractional size");
  bad("[cache]\nmax_size = '99999999999T'\n", "2:12: max_size: '99999999999T' is too large",
      "a size past 64 bits");
  bad("[cache]\nmax_size = -1\n", "2:12: max_size: must not be negative", "a negative size");
  bad("[cache]\nmax_size = '10%'\n",
      "2:12: max_size: invalid size '10%' (expected bytes, or a number with K, M, G or T)",
      "a percentage is only for min_free");
  bad("[cache]\nmin_free = '100%'\n",
      "2:12: min_free: invalid percentage '100%' (expected '0%'..'99%')", "100% free");
  bad("[cache]\nmin_free = true\n",
      "2:12: min_free: expected an integer or a string like '50G' or '10%', found a boolean",
      "min_free of the wrong type");
  bad("[cache]\nfsync = 'yes'\n", "2:9: fsync: expected a boolean, found a string",
      "fsync is a boolean");
  bad("[cache]\nverify_hits = 'sometimes'\n",
      "2:15: verify_hits: invalid value 'sometimes' (expected 'first', 'always' or 'never')",
      "verify_hits names a mode");
  bad("[cache]\nchecksum = 'md5'\n",
      "2:12: checksum: invalid value 'md5' (expected 'gmac' or 'sha256')",
      "checksum names an algorithm");
}

static void test_cache_table(void) {
  struct config c;
  char err[512] = "", *p;
  struct dduct_store_options o;
  config_init(&c);
  CHECK(c.cache_max_size == 0 && c.cache_min_free == 0 && c.cache_min_free_percent == 10 &&
            c.cache_fsync == 1 && c.cache_stale_if_error == 1,
        "[cache] defaults: no budget, 10% free, fsync, stale-if-error");
  CHECK(c.cache_verify_hits == DDUCT_VERIFY_FIRST, "verify_hits defaults to 'first'");
  CHECK(c.cache_share_private == 0, "share_private defaults to false (review-sec #2)");
  CHECK_EQ_INT(load(&c, "[cache]\nshare_private = true\n", err, sizeof(err)), 0,
               "share_private loads");
  CHECK(c.cache_share_private == 1, "share_private = true is kept");
  p = print(&c);
  CHECK(prints(p, "\nshare_private ", "= true"), "--check prints share_private");
  free(p);
  CHECK_EQ_INT(load(&c, "[cache]\nverify_hits = 'always'\n", err, sizeof(err)), 0,
               "verify_hits loads");
  config_store_options(&c, &o);
  CHECK(c.cache_verify_hits == DDUCT_VERIFY_ALWAYS && o.verify_hits == DDUCT_VERIFY_ALWAYS,
        "verify_hits 'always' reaches the store options");
  p = print(&c);
  CHECK(prints(p, "\nverify_hits ", "= 'always'"), "--check prints it");
  free(p);
  CHECK_EQ_INT(load(&c, "[cache]\nverify_hits = 'first'\n", err, sizeof(err)), 0, "first");
  CHECK(c.cache_checksum == DDUCT_CHECKSUM_GMAC, "checksum defaults to 'gmac'");
  CHECK_EQ_INT(load(&c, "[cache]\nchecksum = 'sha256'\n", err, sizeof(err)), 0, "checksum loads");
  config_store_options(&c, &o);
  CHECK(o.checksum == DDUCT_CHECKSUM_SHA256, "checksum 'sha256' reaches the store options");
  p = print(&c);
  CHECK(prints(p, "\nchecksum ", "= 'sha256'"), "--check prints checksum");
  free(p);
  CHECK_EQ_INT(load(&c, "[cache]\nchecksum = 'gmac'\n", err, sizeof(err)), 0, "gmac");
  config_store_options(&c, &o);
  CHECK(o.checksum == DDUCT_CHECKSUM_GMAC, "checksum 'gmac' reaches the store options");
  CHECK_EQ_INT(load(&c, "[cache]\nmax_size = '50G'\nmin_free = '20g'\nfsync = false\n"
                        "stale_if_error = false\n", err, sizeof(err)), 0, "[cache] loads");
  CHECK(c.cache_max_size == 50ull << 30 && c.cache_min_free == 20ull << 30 && c.cache_fsync == 0 &&
            c.cache_stale_if_error == 0,
        "suffixes are powers of 1024, either case");
  config_store_options(&c, &o);
  CHECK(o.max_size == 50ull << 30 && o.min_free == 20ull << 30 && o.min_free_percent == 0 &&
            o.fsync == 0,
        "store options from [cache]");
  p = print(&c);
  CHECK(strstr(p, "max_size       = '50G'\nmin_free       = '20G'\n") != NULL,
        "--check prints sizes with their unit");
  free(p);
  CHECK_EQ_INT(load(&c, "[cache]\nmax_size = 1000\nmin_free = '5%'\n", err, sizeof(err)), 0,
               "bytes and a percentage");
  CHECK(c.cache_max_size == 1000 && c.cache_min_free == 0 && c.cache_min_free_percent == 5,
        "min_free as a percentage");
  p = print(&c);
  CHECK(strstr(p, "max_size       = 1000\nmin_free       = '5%'\n") != NULL,
        "printed back as given");
  free(p);
  CHECK_EQ_INT(load(&c, "[cache]\nmax_size = '64KiB'\nmin_free = 0\n", err, sizeof(err)), 0,
               "KiB and 0");
  config_store_options(&c, &o);
  CHECK(o.max_size == 65536 && o.min_free == 0 && o.min_free_percent == 0, "0: no floor");
  config_free(&c);
}

static void test_chain_keys(void) {
  struct config c;
  char err[512] = "", *p;
  config_init(&c);
  CHECK_EQ_STR(c.upstream_proxy, "", "upstream_proxy defaults to none");
  CHECK(c.parents.n == 0 && c.no_upstream_proxy.n == 0 && c.parent_down_time == 30,
        "no parents, nothing bypassed, 30 s down time");
  CHECK_EQ_INT(load(&c,
                    "[proxy]\nupstream_proxy = 'http://bob:hunter2@proxy.corp:3128'\n"
                    "no_upstream_proxy = ['*.corp', '10.0.0.0/8']\n"
                    "parents = ['https://p1:4430', 'https://p2:4430']\n"
                    "parent_ca_file = '/etc/dduct/parents.pem'\nparent_down_time = 5\n",
                    err, sizeof(err)),
               0, "the chaining keys load");
  CHECK(c.parents.n == 2 && c.no_upstream_proxy.n == 2 && c.parent_down_time == 5, "values");
  p = print(&c);
  CHECK(strstr(p, "hunter2") == NULL, "--check never prints the password");
  CHECK(strstr(p, "'http://bob:***@proxy.corp:3128'") != NULL, "it masks it");
  free(p);
  config_free(&c);
}

static void test_workers(void) {
  struct config c;
  char err[512] = "", *p;
  config_init(&c);
  CHECK_EQ_INT(c.workers, config_default_workers(), "one event loop per usable CPU by default");
  CHECK(c.workers >= 1 && c.workers <= 256 &&
            (uv_available_parallelism() > 256 || c.workers == uv_available_parallelism()),
        "that is uv_available_parallelism(), within 1..256");
  CHECK_EQ_INT(load(&c, "[proxy]\nworkers = 4\n", err, sizeof(err)), 0, "workers loads");
  CHECK_EQ_INT(c.workers, 4, "value");
  p = print(&c);
  CHECK(strstr(p, "\nworkers ") != NULL && strstr(p, " = 4\n") != NULL, "--check prints it");
  free(p);
  config_free(&c);
  bad("[proxy]\nworkers = 0\n", "2:11: workers: 0 is out of range (1..256)", "workers 0");
  bad("[proxy]\nworkers = 257\n", "2:11: workers: 257 is out of range (1..256)", "workers 257");
}

static void test_files(void) {
  struct config c;
  char err[512] = "", path[] = "/tmp/dduct-test-config-XXXXXX";
  int fd = mkstemp(path);
  config_init(&c);
  CHECK(fd >= 0 && write(fd, "[misc]\nlog_level = 'warn'\nx = 1\n", 32) == 32, "temp file");
  close(fd);
  CHECK_EQ_INT(config_load_file(&c, path, err, sizeof(err)), -1, "errors from a file");
  CHECK(strncmp(err, path, strlen(path)) == 0 &&
            strcmp(err + strlen(path), ":3:1: unknown key 'x' in [misc]") == 0,
        "name the file as given");
  unlink(path);
  CHECK_EQ_INT(config_load_file(&c, path, err, sizeof(err)), -1, "a missing file");
  CHECK(strstr(err, ": cannot read: No such file or directory") != NULL, "says why");
  config_free(&c);
}

static void test_checks(void) {
  char why[256];
  CHECK(config_check_bind("0.0.0.0:4430", why, sizeof(why)) == 0, "IPv4 any");
  CHECK(config_check_bind("[::]:1", why, sizeof(why)) == 0, "IPv6 any");
  CHECK(config_check_bind("[fe80::1%eth0]:80", why, sizeof(why)) != 0, "no zone ids");
  CHECK(config_check_bind("[::1]80", why, sizeof(why)) != 0, "colon after the bracket");
  CHECK(config_check_bind("1.2.3.4:", why, sizeof(why)) != 0, "empty port");
  CHECK(config_check_bind("1.2.3.4:0080", why, sizeof(why)) == 0, "leading zeros in a port");
  CHECK(config_check_bind("256.1.1.1:80", why, sizeof(why)) != 0, "octet out of range");
  CHECK(config_check_cidr("0.0.0.0/0", why, sizeof(why)) == 0, "everything, IPv4");
  CHECK(config_check_cidr("::/0", why, sizeof(why)) == 0, "everything, IPv6");
  CHECK(config_check_cidr("10.0.0.0/", why, sizeof(why)) != 0, "empty prefix");
  CHECK(config_check_cidr("10.0.0.0/-1", why, sizeof(why)) != 0, "negative prefix");
  CHECK(config_check_resolve("x:[::1]", why, sizeof(why)) == 0, "resolve IPv6");
  CHECK(config_check_resolve(":1.2.3.4", why, sizeof(why)) != 0, "resolve without host");
  CHECK(config_check_resolve("a b:1.2.3.4", why, sizeof(why)) != 0, "resolve host with blank");
  CHECK(config_check_ip("::ffff:1.2.3.4", why, sizeof(why)) == 0, "v4-mapped IPv6");
  CHECK(config_check_ip("1.2.3.4/32", why, sizeof(why)) != 0, "a CIDR is not an IP");
}

static void test_log_format(void) {
  char line[64];
  size_t n = log_format(line, sizeof(line), 1704112496, DDUCT_LOG_INFO, "ssl_certs",
                        "Write \"/p\"");
  CHECK_EQ_STR(line, "[2024-01-01T12:34:56Z INFO  dduct::ssl_certs] Write \"/p\"\n",
               "the seed's log line, to the second in UTC");
  CHECK_EQ_INT(n, strlen(line), "the length is returned");
  log_format(line, sizeof(line), 0, DDUCT_LOG_ERROR, "main", "x");
  CHECK_EQ_STR(line, "[1970-01-01T00:00:00Z ERROR dduct::main] x\n", "five-column level");
  log_format(line, sizeof(line), 0, DDUCT_LOG_WARN, "serve", "y");
  CHECK_EQ_STR(line, "[1970-01-01T00:00:00Z WARN  dduct::serve] y\n", "WARN is padded");
  log_format(line, sizeof(line), 0, DDUCT_LOG_TRACE, "m", "z");
  CHECK_EQ_STR(line, "[1970-01-01T00:00:00Z TRACE dduct::m] z\n", "TRACE");
  n = log_format(line, sizeof(line), 0, DDUCT_LOG_DEBUG, "m",
                 "a message far longer than the sixty-four bytes of this buffer");
  CHECK(n == sizeof(line) - 1 && line[n - 1] == '\n' && line[n] == '\0',
        "a truncated line still ends with a newline");
}

int main(void) {
  test_log_format();
  test_defaults_and_seed();
  test_partial_and_additions();
  test_errors();
  test_cache_table();
  test_files();
  test_checks();
  test_chain_keys();
  test_workers();
  return tap_done();
}
