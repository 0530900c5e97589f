/* The certificate authority against real openssl processes: the eight files, their modes and
 * log lines (first run, restart, `rm server.*`), chains, SANs and EKUs, PKCS#12 files, refusals
 * that name the file and leave it untouched, minted leaves, and the interception rule. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ecp.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pem.h>
#include <mbedtls/ssl.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "ca.h"
#include "sha256.h"
#include "x509.h"
#include "rng.h"
#include "dduct.h"
#include "tap.h"

static char tmp[256], dir[300], out[65536];

/* ---- helpers ---- */

#define MAX_LINES 64
static char lines[MAX_LINES][512];
static int nlines;

static void log_cb(void *ud, enum dduct_log_level level, const char *module, const char *msg) {
  (void)ud;
  if (strcmp(module, "ssl_certs") != 0 || level != DDUCT_LOG_INFO) return;
  if (nlines < MAX_LINES) snprintf(lines[nlines++], sizeof(lines[0]), "%s", msg);
}

/* A shell command through tap_sh: its stdout+stderr land in out. */
#define run(...) tap_sh(out, sizeof(out), __VA_ARGS__)

static const char *path(const char *name) {
  static char buf[8][512];
  static int i;
  i = (i + 1) % 8;
  snprintf(buf[i], sizeof(buf[i]), "%s%s", dir, name);
  return buf[i];
}

static int mode_of(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 ? (int)(st.st_mode & 0777) : -1;
}

static char *slurp(const char *p) {
  static char buf[4][16384];
  static int i;
  FILE *f = fopen(p, "rb");
  size_t n = 0;
  i = (i + 1) % 4;
  buf[i][0] = '\0';
  if (f != NULL) {
    n = fread(buf[i], 1, sizeof(buf[i]) - 1, f);
    fclose(f);
  }
  buf[i][n] = '\0';
  return buf[i];
}

static void spit(const char *p, const char *data) {
  FILE *f = fopen(p, "wb");
  if (f == NULL) return;
  fputs(data, f);
  fclose(f);
}

static const char *const dns[] = {"*.test", "Registry.Example.", "quay.io"};
static const char *const ips[] = {"127.0.0.1", "::1"};

static void options(struct dduct_ca_options *o) {
  dduct_ca_options_init(o);
  o->cert_dir = dir;
  o->rsa_key_bits = 2048; /* OpenSSL 3's default security level refuses less */
  o->server_dns_sans = dns;
  o->server_dns_sans_count = 2 + 1;
  o->server_ip_sans = ips;
  o->server_ip_sans_count = 2;
}

static int open_ca(struct dduct_ca **ca, char *err, size_t errlen) {
  struct dduct_ca_options o;
  options(&o);
  nlines = 0;
  return dduct_ca_open(&o, ca, err, errlen);
}

/* Compare captured lines with "Read"/"Write" per file, in the fixed order. */
static int lines_are(const char *const verbs[8]) {
  static const char *const names[8] = {"ca.key",     "ca.crt",     "server.key",
                                       "server.crt", "server.p12", "client.key",
                                       "client.crt", "client.p12"};
  char want[512];
  if (nlines != 8) {
    fprintf(stderr, "  %d log lines, expected 8\n", nlines);
    for (int i = 0; i < nlines; i++) fprintf(stderr, "  | %s\n", lines[i]);
    return 0;
  }
  for (int i = 0; i < 8; i++) {
    snprintf(want, sizeof(want), "%s \"%s\"", verbs[i], path(names[i]));
    if (strcmp(lines[i], want) != 0) {
      fprintf(stderr, "  line %d: '%s', expected '%s'\n", i, lines[i], want);
      return 0;
    }
  }
  return 1;
}

static int write_leaf_pem(const mbedtls_x509_crt *crt, const char *p) {
  unsigned char buf[8192];
  size_t olen;
  if (mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                               crt->raw.p, crt->raw.len, buf, sizeof(buf), &olen) != 0)
    return -1;
  spit(p, (const char *)buf);
  return 0;
}

/* ---- cases ---- */

static void test_normalise(void) {
  char h[300];
  CHECK(dduct__ca_host_normalise("Registry.Test.", h, sizeof(h)) == 0 &&
            strcmp(h, "registry.test") == 0,
        "hosts are lower-cased and lose one trailing dot");
  CHECK(dduct__ca_host_normalise("[::1]", h, sizeof(h)) == 0 && strcmp(h, "::1") == 0,
        "a bracketed IPv6 literal is unbracketed");
  CHECK(dduct__ca_host_normalise("0:0::1", h, sizeof(h)) == 0 && strcmp(h, "::1") == 0,
        "IPv6 literals are canonicalised");
  CHECK(dduct__ca_host_normalise("::ffff:127.0.0.1", h, sizeof(h)) == 0 &&
            strcmp(h, "127.0.0.1") == 0,
        "an IPv4-mapped IPv6 literal becomes IPv4");
  CHECK(dduct__ca_host_normalise("127.0.0.1", h, sizeof(h)) == 0 && strcmp(h, "127.0.0.1") == 0,
        "IPv4 literals pass");
  CHECK(dduct__ca_host_normalise("my_host-1.example", h, sizeof(h)) == 0,
        "underscores and hyphens pass");
  const char *bad[] = {"", ".", "a..b", ".a", "ex ample.com", "*.test", "a/b", "[a.b]",
                       "host:443", "[127.0.0.1]", "a\x80.test", "..", "a.b.."};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    CHECK(dduct__ca_host_normalise(bad[i], h, sizeof(h)) == DDUCT_EINVAL,
          "odd hosts are rejected");
  char longl[80], longh[300];
  memset(longl, 'a', 64), longl[64] = '\0';
  CHECK(dduct__ca_host_normalise(longl, h, sizeof(h)) == DDUCT_EINVAL,
        "a label over 63 characters is rejected");
  for (int i = 0; i < 254; i++) longh[i] = i % 2 ? '.' : 'a';
  longh[254] = 'a', longh[255] = '\0';
  CHECK(dduct__ca_host_normalise(longh, h, sizeof(h)) == DDUCT_EINVAL,
        "a name over 253 characters is rejected");
  CHECK(dduct__ca_host_normalise(NULL, h, sizeof(h)) == DDUCT_EINVAL, "NULL is rejected");
}

static void test_first_run(struct dduct_ca **ca) {
  static const char *const all_write[8] = {"Write", "Write", "Write", "Write",
                                           "Write", "Write", "Write", "Write"};
  char err[512] = "";
  int rc = open_ca(ca, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "  %s\n", err);
  CHECK_EQ_INT(rc, 0, "a CA is created in an empty, missing cert_dir");
  CHECK(lines_are(all_write), "first run logs Write for the eight files, in order");
  CHECK_EQ_INT(mode_of(dir), 0700, "cert_dir is created 0700");
  CHECK_EQ_INT(mode_of(path("ca.key")), 0600, "ca.key is 0600");
  CHECK_EQ_INT(mode_of(path("server.key")), 0600, "server.key is 0600");
  CHECK_EQ_INT(mode_of(path("client.key")), 0600, "client.key is 0600");
  CHECK_EQ_INT(mode_of(path("server.p12")), 0600, "server.p12 (it holds the key) is 0600");
  CHECK(run("ls -A '%s' | wc -l", dir) == 0 && atoi(out) == 9,
        "exactly the eight files and leaves/, no temp files left");
  CHECK_EQ_INT(mode_of(path("leaves")), 0700, "leaves/ (minted leaves and their keys) is 0700");
  CHECK(*ca != NULL && strcmp(dduct_ca_cert_pem(*ca), slurp(path("ca.crt"))) == 0,
        "dduct_ca_cert_pem is ca.crt's content");
  CHECK(strstr(slurp(path("ca.key")), "PRIVATE KEY-----") != NULL, "keys are PEM");
}

static void test_openssl_views(void) {
  CHECK(run("cd '%s' && openssl verify -CAfile ca.crt server.crt client.crt", dir) == 0 &&
            strstr(out, "server.crt: OK") && strstr(out, "client.crt: OK"),
        "openssl verify accepts server.crt and client.crt against ca.crt");
  CHECK(run("openssl x509 -in '%s' -noout -text", path("ca.crt")) == 0 &&
            strstr(out, "X509v3 Basic Constraints: critical") && strstr(out, "CA:TRUE") &&
            strstr(out, "Certificate Sign, CRL Sign") &&
            strstr(out, "X509v3 Subject Key Identifier") && strstr(out, "Subject: CN = dduct") &&
            strstr(out, "sha256WithRSAEncryption") && strstr(out, "Public-Key: (2048 bit)"),
        "ca.crt: CA:TRUE critical, keyCertSign+cRLSign, key id, CN, SHA-256, 2048 bits");
  CHECK(run("openssl x509 -in '%s' -noout -text", path("server.crt")) == 0 &&
            strstr(out, "DNS:*.test, DNS:registry.example, DNS:quay.io, IP Address:127.0.0.1, "
                        "IP Address:0:0:0:0:0:0:0:1") &&
            strstr(out, "TLS Web Server Authentication") && strstr(out, "Subject: CN = *.dduct.rs") &&
            strstr(out, "Issuer: CN = dduct") && strstr(out, "X509v3 Authority Key Identifier"),
        "server.crt: the configured SANs (normalised), serverAuth, CN, issuer, key ids");
  CHECK(run("openssl x509 -in '%s' -noout -text", path("client.crt")) == 0 &&
            strstr(out, "TLS Web Client Authentication") &&
            strstr(out, "Subject: CN = client.dduct.rs") && !strstr(out, "Alternative Name"),
        "client.crt: clientAuth, client_cn, no SANs");
  CHECK(run("openssl x509 -in '%s' -noout -serial", path("server.crt")) == 0 &&
            strlen(out) >= 7 + 38 && strlen(out) <= 7 + 41 && strchr("01234567", out[7]),
        "serials are ~159 random bits, positive");
  CHECK(run("openssl x509 -in '%s' -noout -startdate -enddate -checkend %d", path("ca.crt"),
            3000 * 86400) == 0 &&
            run("openssl x509 -in '%s' -noout -checkend %d", path("ca.crt"), 3080 * 86400) != 0,
        "ca.crt is valid for days_from_now (3072) days");
  for (int i = 0; i < 2; i++) {
    const char *p12 = path(i == 0 ? "server.p12" : "client.p12");
    CHECK(run("openssl pkcs12 -in '%s' -passin pass:dduct -info -noout", p12) == 0 &&
              strstr(out, "PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF hmacWithSHA256") &&
              strstr(out, "MAC: sha256, Iteration 2048"),
          "openssl pkcs12 -info accepts the p12 (PBES2/AES-256, HMAC-SHA256 MAC)");
    CHECK(run("openssl pkcs12 -in '%s' -passin pass:wrong -info -noout", p12) != 0,
          "openssl rejects the p12 with a wrong password");
  }
  CHECK(run("cd '%s' && openssl pkcs12 -in server.p12 -passin pass:dduct -nodes -nocerts | "
            "openssl pkey -pubout > p.a && openssl pkey -in server.key -pubout > p.b && "
            "cmp p.a p.b && rm p.a p.b",
            dir) == 0,
        "server.p12 holds server.key");
}

static void test_restart(void) {
  static const char *const all_read[8] = {"Read", "Read", "Read", "Read",
                                          "Read", "Read", "Read", "Read"};
  static const char *const srv_write[8] = {"Read",  "Read", "Write", "Write",
                                           "Write", "Read", "Read",  "Read"};
  struct dduct_ca *ca = NULL;
  char err[512] = "", before[8192];
  int rc;

  snprintf(before, sizeof(before), "%s", slurp(path("server.crt")));
  rc = open_ca(&ca, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "  %s\n", err);
  CHECK(rc == 0 && lines_are(all_read), "a restart reads all eight files");
  CHECK(strcmp(before, slurp(path("server.crt"))) == 0, "a restart changes nothing");
  dduct_ca_free(ca);

  run("rm -f '%s'server.*", dir);
  rc = open_ca(&ca, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "  %s\n", err);
  CHECK(rc == 0 && lines_are(srv_write), "after rm server.*, only server.* are written");
  CHECK(strcmp(before, slurp(path("server.crt"))) != 0, "server.crt is a new certificate");
  CHECK(run("cd '%s' && openssl verify -CAfile ca.crt server.crt client.crt", dir) == 0,
        "the regenerated server.crt chains to the existing CA");
  CHECK_EQ_INT(mode_of(path("server.key")), 0600, "the regenerated key is 0600");
  dduct_ca_free(ca);
}

static void expect_refusal(const char *file, const char *what) {
  struct dduct_ca *ca = (struct dduct_ca *)1;
  char err[512] = "";
  int rc = open_ca(&ca, err, sizeof(err));
  if (strstr(err, path(file)) == NULL) fprintf(stderr, "  err: %s\n", err);
  CHECK(rc < 0 && ca == NULL && strstr(err, path(file)) != NULL, what);
  for (int i = 0; i < nlines; i++)
    if (strncmp(lines[i], "Write", 5) == 0) {
      CHECK(0, "a refusal writes nothing");
      fprintf(stderr, "  | %s\n", lines[i]);
    }
}

static void test_refusals(void) {
  char saved[16384], saved2[16384];

  snprintf(saved, sizeof(saved), "%s", slurp(path("ca.crt")));
  spit(path("ca.crt"), "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
  expect_refusal("ca.crt", "a corrupt ca.crt is an error naming it");
  CHECK(strstr(slurp(path("ca.crt")), "not base64") != NULL, "the corrupt ca.crt is left as is");
  spit(path("ca.crt"), saved);

  chmod(path("client.key"), 0);
  if (access(path("client.key"), R_OK) != 0) /* root reads anything: skip then */
    expect_refusal("client.key", "an unreadable client.key is an error naming it");
  chmod(path("client.key"), 0600);

  snprintf(saved, sizeof(saved), "%s", slurp(path("server.crt")));
  CHECK(run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
            "/dev/null -subj /CN=stranger -days 2 -out '%s'",
            path("server.crt")) == 0,
        "a foreign self-signed server.crt is planted");
  expect_refusal("server.crt", "a server.crt that does not chain to ca.crt is an error");
  spit(path("server.crt"), saved);

  snprintf(saved, sizeof(saved), "%s", slurp(path("client.crt")));
  spit(path("client.crt"), slurp(path("server.crt")));
  expect_refusal("client.crt", "a client.crt that does not match client.key is an error");
  spit(path("client.crt"), saved);

  snprintf(saved, sizeof(saved), "%s", slurp(path("server.key")));
  unlink(path("server.key"));
  expect_refusal("server.key", "server.key missing while server.crt exists is an error");
  CHECK(strcmp(slurp(path("server.crt")), "") != 0, "server.crt is kept");
  spit(path("server.key"), saved);
  chmod(path("server.key"), 0600);

  snprintf(saved, sizeof(saved), "%s", slurp(path("ca.key")));
  unlink(path("ca.key"));
  expect_refusal("ca.key", "ca.key missing while ca.crt exists is an error");
  spit(path("ca.key"), saved);
  chmod(path("ca.key"), 0600);

  {
    struct dduct_ca_options o;
    struct dduct_ca *ca = NULL;
    char err[512] = "";
    options(&o);
    o.p12_pass = "another";
    nlines = 0;
    CHECK(dduct_ca_open(&o, &ca, err, sizeof(err)) < 0 && strstr(err, path("server.p12")),
          "a p12 whose MAC fails with p12_pass is an error naming it");
    dduct_ca_free(ca);
  }

  /* Key kept, certificate gone: a new certificate for the same key, and a p12 holding it. */
  {
    static const char *const crt_write[8] = {"Read",  "Read", "Read", "Write",
                                             "Write", "Read", "Read", "Read"};
    struct dduct_ca *ca = NULL;
    char err[512] = "";
    snprintf(saved2, sizeof(saved2), "%s", slurp(path("server.key")));
    unlink(path("server.crt"));
    int rc = open_ca(&ca, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "  %s\n", err);
    CHECK(rc == 0 && lines_are(crt_write),
          "server.crt missing: re-issued for the kept key, p12 rewritten");
    CHECK(strcmp(saved2, slurp(path("server.key"))) == 0, "the key is kept");
    dduct_ca_free(ca);
  }
}

static void test_leaves(struct dduct_ca *ca) {
  mbedtls_x509_crt *chain, *chain2;
  mbedtls_pk_context *key, *key2;
  struct timespec a, b;
  int rc;

  clock_gettime(CLOCK_MONOTONIC, &a);
  rc = dduct__ca_leaf(ca, "Registry.Test.", NULL, &chain, &key);
  clock_gettime(CLOCK_MONOTONIC, &b);
  CHECK_EQ_INT(rc, 0, "a leaf is minted for registry.test");
  printf("# leaf minting (P-256 keygen + sign): %.2f ms\n",
         (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
  if (rc != 0) return;
  CHECK(mbedtls_pk_check_pair(&chain->pk, key) == 0, "the leaf key matches the leaf");
  CHECK(chain->next != NULL && chain->next->raw.len > 0 &&
            strcmp(dduct_ca_cert_pem(ca), slurp(path("ca.crt"))) == 0,
        "the chain carries the CA certificate after the leaf");
  write_leaf_pem(chain, path("leaf1.pem"));
  CHECK(run("cd '%s' && openssl verify -CAfile ca.crt -purpose sslserver leaf1.pem", dir) == 0,
        "openssl verifies the registry.test leaf against ca.crt for serverAuth");
  CHECK(run("openssl x509 -in '%s' -noout -text", path("leaf1.pem")) == 0 &&
            strstr(out, "DNS:registry.test") && strstr(out, "Subject: CN = registry.test") &&
            strstr(out, "ecdsa-with-SHA256") == NULL && strstr(out, "prime256v1") &&
            strstr(out, "TLS Web Server Authentication") &&
            strstr(out, "Authority Key Identifier") && strstr(out, "Subject Key Identifier"),
        "the leaf: dNSName SAN, CN, P-256 key, RSA-signed, serverAuth, key ids");
  CHECK(run("openssl x509 -in '%s' -noout -checkend %d", path("leaf1.pem"), 364 * 86400) == 0 &&
            run("openssl x509 -in '%s' -noout -checkend %d", path("leaf1.pem"), 366 * 86400) != 0,
        "the leaf is valid for a year");
  CHECK(run("openssl verify -CAfile '%s' -verify_hostname registry.test '%s'", path("ca.crt"),
            path("leaf1.pem")) == 0 &&
            run("openssl verify -CAfile '%s' -verify_hostname other.test '%s'", path("ca.crt"),
                path("leaf1.pem")) != 0,
        "openssl's hostname check passes for registry.test only");

  CHECK(dduct__ca_leaf(ca, "registry.test", NULL, &chain2, &key2) == 0 && chain2 == chain &&
            key2 == key,
        "a second request returns the cached leaf");

  CHECK_EQ_INT(dduct__ca_leaf(ca, "127.0.0.1", NULL, &chain, &key), 0, "a leaf is minted for 127.0.0.1");
  write_leaf_pem(chain, path("leaf2.pem"));
  CHECK(run("openssl verify -CAfile '%s' -verify_ip 127.0.0.1 '%s'", path("ca.crt"),
            path("leaf2.pem")) == 0 &&
            run("openssl x509 -in '%s' -noout -ext subjectAltName", path("leaf2.pem")) == 0 &&
            strstr(out, "IP Address:127.0.0.1") && !strstr(out, "DNS:"),
        "the 127.0.0.1 leaf carries an iPAddress SAN and verifies for that IP");
  CHECK_EQ_INT(dduct__ca_leaf(ca, "[::1]", NULL, &chain, &key), 0, "a leaf is minted for [::1]");
  write_leaf_pem(chain, path("leaf3.pem"));
  CHECK(run("openssl verify -CAfile '%s' -verify_ip ::1 '%s'", path("ca.crt"), path("leaf3.pem")) ==
            0,
        "the ::1 leaf verifies for ::1");
  CHECK(dduct__ca_leaf(ca, "0:0::1", NULL, &chain2, &key2) == 0 && chain2 == chain,
        "IPv6 spellings share one leaf");
  CHECK_EQ_INT(dduct__ca_leaf(ca, "bad host", NULL, &chain, &key), DDUCT_EINVAL,
               "an invalid host is refused");
  run("rm -f '%s'leaf*.pem", dir);

  mbedtls_x509_crt *srv;
  mbedtls_pk_context *srv_key;
  CHECK(dduct__ca_server_identity(ca, &srv, &srv_key) == 0 &&
            mbedtls_pk_check_pair(&srv->pk, srv_key) == 0 && srv->next != NULL &&
            srv->next->ca_istrue,
        "the server identity is server.crt + ca.crt with server.key");
}


/* ---- one real handshake: mbedTLS server with SNI -> minted leaf, openssl s_client verifies ---- */

static int sni_cb(void *ud, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len) {
  char host[256];
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;
  if (len >= sizeof(host)) return -1;
  memcpy(host, name, len), host[len] = '\0';
  if (dduct__ca_leaf(ud, host, NULL, &chain, &key) != 0) return -1;
  return mbedtls_ssl_set_hs_own_cert(ssl, chain, key);
}

/* Serve one TLS connection to `openssl s_client <args>`; returns its exit status, output in out. */
static int handshake(struct dduct_ca *ca, const char *args) {
  mbedtls_net_context lst, cli;
  mbedtls_ssl_config conf;
  mbedtls_ssl_context ssl;
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;
  struct sockaddr_storage sa;
  socklen_t salen = sizeof(sa);
  char cmd[1024];
  FILE *client;
  int port, st, rc = -1;

  mbedtls_net_init(&lst), mbedtls_net_init(&cli);
  mbedtls_ssl_config_init(&conf), mbedtls_ssl_init(&ssl);
  if (mbedtls_net_bind(&lst, "127.0.0.1", "0", MBEDTLS_NET_PROTO_TCP) != 0) goto done;
  getsockname(lst.fd, (struct sockaddr *)&sa, &salen);
  port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
  snprintf(cmd, sizeof(cmd),
           "timeout 20 openssl s_client -connect 127.0.0.1:%d -CAfile '%s' -verify_return_error "
           "%s </dev/null 2>&1",
           port, path("ca.crt"), args);
  client = popen(cmd, "r");
  if (client == NULL) goto done;
  dduct__ca_server_identity(ca, &chain, &key);
  if (mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                  MBEDTLS_SSL_PRESET_DEFAULT) == 0 &&
      mbedtls_ssl_conf_own_cert(&conf, chain, key) == 0) {
    struct pollfd pfd = {.fd = lst.fd, .events = POLLIN};
    mbedtls_ssl_conf_rng(&conf, dduct__rng, NULL);
    mbedtls_ssl_conf_sni(&conf, sni_cb, ca);
    if (poll(&pfd, 1, 20000) == 1 && mbedtls_net_accept(&lst, &cli, NULL, 0, NULL) == 0 &&
        mbedtls_ssl_setup(&ssl, &conf) == 0) {
      mbedtls_ssl_set_bio(&ssl, &cli, mbedtls_net_send, mbedtls_net_recv, NULL);
      if (mbedtls_ssl_handshake(&ssl) == 0) {
        mbedtls_ssl_write(&ssl, (const unsigned char *)"hello\n", 6);
        mbedtls_ssl_close_notify(&ssl);
      }
    }
  }
  {
    size_t n = fread(out, 1, sizeof(out) - 1, client);
    out[n] = '\0';
  }
  st = pclose(client);
  rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
done:
  mbedtls_ssl_free(&ssl), mbedtls_ssl_config_free(&conf);
  mbedtls_net_free(&cli), mbedtls_net_free(&lst);
  return rc;
}

static void test_handshake(struct dduct_ca *ca) {
  CHECK(handshake(ca, "-servername handshake.test -verify_hostname handshake.test") == 0 &&
            strstr(out, "Verify return code: 0 (ok)") &&
            strstr(out, "subject=CN = handshake.test"),
        "s_client verifies a leaf minted from SNI during a real mbedTLS handshake");
  if (!strstr(out, "Verify return code: 0 (ok)")) fprintf(stderr, "%s\n", out);
  CHECK(handshake(ca, "-noservername -verify_ip 127.0.0.1") == 0 &&
            strstr(out, "Verify return code: 0 (ok)") && strstr(out, "subject=CN = *.dduct.rs"),
        "without SNI the server identity (server.crt + ca.crt) verifies for 127.0.0.1");
  if (!strstr(out, "Verify return code: 0 (ok)")) fprintf(stderr, "%s\n", out);
}

static void test_covers(struct dduct_ca *ca) {
  CHECK(dduct_ca_covers(ca, "a.test") == 1, "*.test covers a.test");
  CHECK(dduct_ca_covers(ca, "A.TEST.") == 1, "matching ignores case and a trailing dot");
  CHECK(dduct_ca_covers(ca, "test") == 0, "*.test does not cover test");
  CHECK(dduct_ca_covers(ca, "a.b.test") == 0, "*.test covers exactly one label");
  CHECK(dduct_ca_covers(ca, "atest") == 0, "*.test does not cover atest");
  CHECK(dduct_ca_covers(ca, "registry.example") == 1, "an exact name is covered");
  CHECK(dduct_ca_covers(ca, "x.registry.example") == 0, "an exact name covers no subdomain");
  CHECK(dduct_ca_covers(ca, "quay.io") == 1 && dduct_ca_covers(ca, "cdn.quay.io") == 0,
        "quay.io is exact");
  CHECK(dduct_ca_covers(ca, "127.0.0.1") == 1, "an IPv4 SAN covers its address");
  CHECK(dduct_ca_covers(ca, "127.0.0.2") == 0, "another IPv4 address is not covered");
  CHECK(dduct_ca_covers(ca, "::1") == 1 && dduct_ca_covers(ca, "[::1]") == 1 &&
            dduct_ca_covers(ca, "0:0:0:0:0:0:0:1") == 1,
        "an IPv6 SAN covers every spelling of its address");
  CHECK(dduct_ca_covers(ca, "::ffff:127.0.0.1") == 1, "an IPv4-mapped address counts as IPv4");
  CHECK(dduct_ca_covers(ca, "::2") == 0, "another IPv6 address is not covered");
  CHECK(dduct_ca_covers(ca, "example.org") == 0 && dduct_ca_covers(ca, "") == 0 &&
            dduct_ca_covers(ca, NULL) == 0 && dduct_ca_covers(NULL, "a.test") == 0,
        "others, empty and NULL are not covered");
}

/* A cache of two: the least recently used leaf is dropped for a new host (never a refusal); a
 * leaf held by a handshake stays valid after it was dropped, until its hold is released. */
static void test_leaf_lru(void) {
  struct dduct_ca_options o;
  struct dduct_ca *ca = NULL;
  struct dduct__leaf *held, *ref;
  mbedtls_x509_crt *a, *b, *x;
  mbedtls_pk_context *ka, *kx;
  char err[512] = "";
  options(&o);
  o.max_leaves = 2;
  if (dduct_ca_open(&o, &ca, err, sizeof(err)) != 0) {
    fprintf(stderr, "# %s\n", err);
    CHECK(0, "open with max_leaves = 2");
    return;
  }
  CHECK(dduct__ca_leaf(ca, "a.test", &held, &a, &ka) == 0 && held != NULL,
        "a.test minted and held");
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &b, &kx) == 0, "b.test minted");
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &x, &kx) == 0 && x == b, "b.test is cached");
  CHECK(dduct__ca_leaf(ca, "c.test", &ref, &x, &kx) == 0 && dduct__ca_leaf_count(ca) == 2,
        "c.test minted in a full cache: the oldest (a.test) made room, the count stays 2");
  dduct__ca_leaf_put(ref);
  CHECK(mbedtls_pk_check_pair(&a->pk, ka) == 0 && a->next != NULL && a->next->ca_istrue,
        "the dropped a.test leaf is still whole while its handshake holds it");
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &x, &kx) == 0 && x == b,
        "b.test (used after a.test) was kept");
  CHECK(dduct__ca_leaf(ca, "a.test", NULL, &x, &kx) == 0 && x != a,
        "a.test is minted again on its next use");
  dduct__ca_leaf_put(held); /* frees the dropped leaf: ASan checks it is freed once */

  /* Renewal: a year-long leaf is minted again once within 30 days of its end. */
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &b, &kx) == 0, "b.test again");
  dduct__ca_clock_skew = 300 * 86400;
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &x, &kx) == 0 && x == b,
        "300 days on, the leaf (valid 365) is still served");
  dduct__ca_clock_skew = 340 * 86400;
  CHECK(dduct__ca_leaf(ca, "b.test", NULL, &x, &kx) == 0 &&
            dduct__x509_not_after(x) > time(NULL) + 340 * 86400 + 300 * 86400,
        "340 days on (25 days before its end), a new leaf valid for another year is minted");
  dduct__ca_clock_skew = 0;
  dduct_ca_free(ca);
}

/* dduct__ca_leaf_async: a new host is minted on the pool while callers wait, once for all of
 * them; a withdrawn wait is never called; the result is cached for sync and async callers. */
struct mint_seen {
  int calls, status;
  struct dduct__leaf *ref;
  mbedtls_x509_crt *chain;
  pthread_t thread; /* where the callback ran */
};

static void mint_seen_cb(void *arg, int status, struct dduct__leaf *ref, mbedtls_x509_crt *chain,
                         mbedtls_pk_context *key) {
  struct mint_seen *m = arg;
  (void)key;
  m->calls++;
  m->status = status;
  m->ref = ref;
  m->chain = chain;
  m->thread = pthread_self();
}

static void test_leaf_async(void) {
  struct dduct_ca_options o;
  struct dduct_ca *ca = NULL;
  struct dduct__leaf_wait *w1, *w2, *w3;
  struct dduct__leaf *r1, *r2, *r3, *r4;
  struct mint_seen m1 = {0}, m2 = {0}, m3 = {0}, m4 = {0};
  mbedtls_x509_crt *c, *c4;
  mbedtls_pk_context *k;
  uv_loop_t loop;
  char err[512] = "";
  options(&o);
  if (uv_loop_init(&loop) != 0 || dduct_ca_open(&o, &ca, err, sizeof(err)) != 0) {
    fprintf(stderr, "# %s\n", err);
    CHECK(0, "open a CA and a loop");
    return;
  }
  CHECK_EQ_INT(dduct__ca_leaf_async(ca, &loop, "Burst.TEST", &r1, &c, &k, mint_seen_cb, &m1, &w1),
               DDUCT__CA_MINTING, "a new host is minted off the loop");
  CHECK_EQ_INT(dduct__ca_leaf_async(ca, &loop, "burst.test", &r2, &c, &k, mint_seen_cb, &m2, &w2),
               DDUCT__CA_MINTING, "a second handshake for it waits too");
  CHECK_EQ_INT(dduct__ca_leaf_async(ca, &loop, "burst.test", &r3, &c, &k, mint_seen_cb, &m3, &w3),
               DDUCT__CA_MINTING, "and a third");
  dduct__ca_leaf_cancel(w3);
  CHECK(m1.calls == 0 && m2.calls == 0 && dduct__ca_leaf_count(ca) == 0 && r1 == NULL,
        "nothing is called back inside the call, nothing cached yet");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(m1.calls == 1 && m2.calls == 1 && m1.status == 0 && m2.status == 0,
        "both waiting callers are called back once, with success");
  CHECK(m1.chain != NULL && m1.chain == m2.chain && m1.ref == m2.ref && m1.ref != NULL,
        "one mint for the burst: both got the same leaf");
  CHECK_EQ_INT(m3.calls, 0, "the withdrawn wait is never called");
  CHECK_EQ_INT(dduct__ca_leaf_count(ca), 1, "the minted leaf is cached");
  CHECK(dduct__ca_leaf(ca, "burst.test", NULL, &c, &k) == 0 && c == m1.chain &&
            mbedtls_pk_check_pair(&c->pk, k) == 0,
        "the synchronous lookup finds the same leaf, its key matching");
  CHECK(dduct__ca_leaf_async(ca, &loop, "burst.test", &r4, &c4, &k, mint_seen_cb, &m4, &w1) == 0 &&
            c4 == m1.chain && r4 == m1.ref && w1 == NULL,
        "a cached leaf is handed out at once, held");
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(m4.calls, 0, "no callback for a leaf handed out at once");
  CHECK(dduct__ca_leaf_async(ca, &loop, "bad host", &r4, &c4, &k, mint_seen_cb, &m4, &w1) ==
            DDUCT_EINVAL, "an invalid host is refused at once");
  dduct__ca_leaf_put(m1.ref);
  dduct__ca_leaf_put(m2.ref);
  dduct__ca_leaf_put(r4);
  dduct_ca_free(ca);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "the loop closes with nothing left on it");
}

/* Two loops on two threads share one CA, as the proxy's workers do. */
struct other_loop {
  struct dduct_ca *ca;
  uv_sem_t called;
  int rc, closed;
  struct dduct__leaf_wait *w;
  struct mint_seen m;
  pthread_t tid;
};

static void *other_loop_main(void *arg) {
  struct other_loop *o = arg;
  struct dduct__leaf *r;
  mbedtls_x509_crt *c;
  mbedtls_pk_context *k;
  uv_loop_t loop;
  uv_loop_init(&loop);
  o->rc = dduct__ca_leaf_async(o->ca, &loop, "shared.test", &r, &c, &k, mint_seen_cb, &o->m, &o->w);
  uv_sem_post(&o->called);
  uv_run(&loop, UV_RUN_DEFAULT); /* the wait's handle keeps it running until the wake-up */
  o->closed = uv_loop_close(&loop);
  return NULL;
}

/* Many threads, each its own loop, over more hosts than the table holds: sync and async calls,
 * holds, withdrawn waits, evictions and re-mints all at once (ASan checks every free). */
struct hammer {
  struct dduct_ca *ca;
  int id, bad;
  unsigned mints_waited;
};

static void hammer_check(struct hammer *h, const char *host, mbedtls_x509_crt *c) {
  char dn[512];
  if (c == NULL || mbedtls_x509_dn_gets(dn, sizeof(dn), &c->subject) < 0 || strstr(dn, host) == NULL ||
      c->next == NULL)
    h->bad++;
}

static void *hammer_main(void *arg) {
  struct hammer *h = arg;
  uv_loop_t loop;
  uv_loop_init(&loop);
  for (int i = 0; i < 24; i++) {
    char host[64];
    struct dduct__leaf *r = NULL;
    struct dduct__leaf_wait *w = NULL;
    struct mint_seen m = {0};
    mbedtls_x509_crt *c = NULL;
    mbedtls_pk_context *k;
    int rc;
    snprintf(host, sizeof(host), "h%d.hammer.test", (i * 7 + h->id * 3) % 12);
    if ((i + h->id) % 5 == 0) {
      rc = dduct__ca_leaf(h->ca, host, &r, &c, &k);
      if (rc != 0) h->bad++;
      else hammer_check(h, host, c);
      dduct__ca_leaf_put(r);
      continue;
    }
    rc = dduct__ca_leaf_async(h->ca, &loop, host, &r, &c, &k, mint_seen_cb, &m, &w);
    if (rc == 0) {
      hammer_check(h, host, c);
      dduct__ca_leaf_put(r);
    } else if (rc == DDUCT__CA_MINTING && (i + h->id) % 7 == 3) {
      dduct__ca_leaf_cancel(w); /* a handshake that closed while waiting */
      uv_run(&loop, UV_RUN_DEFAULT);
      if (m.calls != 0) h->bad++;
    } else if (rc == DDUCT__CA_MINTING) {
      uv_run(&loop, UV_RUN_DEFAULT);
      h->mints_waited++;
      if (m.calls != 1 || m.status != 0 || !pthread_equal(m.thread, pthread_self())) h->bad++;
      else hammer_check(h, host, m.chain);
      dduct__ca_leaf_put(m.ref);
    } else {
      h->bad++;
    }
  }
  if (uv_loop_close(&loop) != 0) h->bad++;
  return NULL;
}

static void test_leaf_loops(void) {
  struct dduct_ca_options o;
  struct dduct_ca *ca = NULL;
  struct dduct__leaf_wait *w;
  struct dduct__leaf *r;
  struct mint_seen m = {0};
  struct other_loop other = {0};
  struct hammer hs[4];
  pthread_t th[4];
  mbedtls_x509_crt *c;
  mbedtls_pk_context *k;
  uv_loop_t loop;
  char err[512] = "";
  unsigned waited = 0;
  int bad = 0;
  options(&o);
  if (uv_loop_init(&loop) != 0 || dduct_ca_open(&o, &ca, err, sizeof(err)) != 0 ||
      uv_sem_init(&other.called, 0) != 0) {
    fprintf(stderr, "# %s\n", err);
    CHECK(0, "open a CA and a loop");
    return;
  }
  CHECK_EQ_INT(dduct__ca_leaf_async(ca, &loop, "shared.test", &r, &c, &k, mint_seen_cb, &m, &w),
               DDUCT__CA_MINTING, "loop A starts a mint for shared.test");
  other.ca = ca;
  pthread_create(&other.tid, NULL, other_loop_main, &other);
  uv_sem_wait(&other.called); /* loop A has not run: its mint cannot have been linked yet */
  CHECK_EQ_INT(other.rc, DDUCT__CA_MINTING, "loop B, on another thread, waits for the same mint");
  uv_run(&loop, UV_RUN_DEFAULT);
  pthread_join(other.tid, NULL);
  CHECK(m.calls == 1 && other.m.calls == 1 && m.status == 0 && other.m.status == 0,
        "both loops are called back once, with success");
  CHECK(pthread_equal(m.thread, pthread_self()) && pthread_equal(other.m.thread, other.tid),
        "each callback ran on its own loop's thread (B was woken on B)");
  CHECK(m.ref != NULL && m.ref == other.m.ref && dduct__ca_leaf_count(ca) == 1,
        "one mint for both loops: the same leaf, cached once");
  CHECK_EQ_INT(other.closed, 0, "loop B closes with nothing left on it");
  dduct__ca_leaf_put(m.ref);
  dduct__ca_leaf_put(other.m.ref);
  uv_sem_destroy(&other.called);
  dduct_ca_free(ca);

  o.max_leaves = 8;
  if (dduct_ca_open(&o, &ca, err, sizeof(err)) != 0) {
    CHECK(0, "open a CA with max_leaves 8");
    return;
  }
  for (int i = 0; i < 4; i++) {
    hs[i] = (struct hammer){.ca = ca, .id = i};
    pthread_create(&th[i], NULL, hammer_main, &hs[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    bad += hs[i].bad;
    waited += hs[i].mints_waited;
  }
  printf("# 4 loops x 24 calls over 12 hosts (8 kept): %u waited for a mint\n", waited);
  CHECK_EQ_INT(bad, 0, "4 loops at once over 12 hosts with 8 kept: every leaf names its host, "
                       "every wake-up on the caller's thread, no withdrawn wait called");
  CHECK(dduct__ca_leaf_count(ca) <= 8, "the table stays within max_leaves");
  dduct_ca_free(ca);
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "loop A closes with nothing left on it");
}

/* ---- minted leaves on disk: cert_dir/leaves/<sha256(host)>.pem ---- */

static const char *leaf_path(const char *host) {
  static char buf[600];
  unsigned char d[32];
  int n = snprintf(buf, sizeof(buf), "%sleaves/", dir);
  dduct__sha256(host, strlen(host), d);
  for (int i = 0; i < 32; i++) n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%02x", d[i]);
  snprintf(buf + n, sizeof(buf) - (size_t)n, ".pem");
  return buf;
}

/* The DER of host's leaf from a CA opened now (a fresh process, as far as the CA knows). */
static int leaf_der(const char *host, unsigned char *der, size_t *len, int async) {
  struct dduct_ca_options o;
  struct dduct_ca *ca = NULL;
  struct dduct__leaf *ref = NULL;
  struct dduct__leaf_wait *w;
  struct mint_seen m = {0};
  mbedtls_x509_crt *c = NULL;
  mbedtls_pk_context *k = NULL;
  uv_loop_t loop;
  char err[512];
  int rc = -1;
  options(&o);
  nlines = 0;
  if (dduct_ca_open(&o, &ca, err, sizeof(err)) != 0) return -1;
  if (!async) {
    rc = dduct__ca_leaf(ca, host, &ref, &c, &k);
  } else if (uv_loop_init(&loop) == 0) {
    rc = dduct__ca_leaf_async(ca, &loop, host, &ref, &c, &k, mint_seen_cb, &m, &w);
    if (rc == DDUCT__CA_MINTING) {
      uv_run(&loop, UV_RUN_DEFAULT);
      rc = m.calls == 1 ? m.status : -1;
      ref = m.ref, c = m.chain;
      if (c != NULL) k = (mbedtls_pk_context *)&m; /* not used below: the pair is checked on ref */
    }
    uv_loop_close(&loop);
  }
  if (rc == 0 && c != NULL && c->raw.len <= *len && c->next != NULL && c->next->ca_istrue) {
    memcpy(der, c->raw.p, c->raw.len);
    *len = c->raw.len;
  } else {
    rc = -1;
  }
  dduct__ca_leaf_put(ref);
  dduct_ca_free(ca);
  return rc;
}

static int logged(const char *what) {
  for (int i = 0; i < nlines; i++)
    if (strstr(lines[i], what) != NULL) return 1;
  return 0;
}

static void test_leaf_files(void) {
  unsigned char a[4096], b[4096], c[4096];
  size_t alen = sizeof(a), blen = sizeof(b), clen = sizeof(c);
  char f[600], other[600], keep[600];

  snprintf(f, sizeof(f), "%s", leaf_path("disk.test"));
  run("rm -f '%sleaves/'*.pem", dir);
  CHECK(leaf_der("Disk.Test.", a, &alen, 0) == 0, "disk.test minted");
  CHECK_EQ_INT(mode_of(f), 0600, "its file (leaf and key) is 0600, named by the host's hash");
  CHECK(run("openssl verify -CAfile '%s' -purpose sslserver -verify_hostname disk.test '%s'",
            path("ca.crt"), f) == 0 &&
            run("openssl pkey -in '%s' -noout", f) == 0,
        "openssl reads the file: a leaf for disk.test signed by ca.crt, and its key");
  CHECK(leaf_der("disk.test", b, &blen, 0) == 0 && blen == alen && memcmp(a, b, alen) == 0,
        "a CA opened again presents the same leaf from the file (sync path)");
  blen = sizeof(b);
  CHECK(leaf_der("disk.test", b, &blen, 1) == 0 && blen == alen && memcmp(a, b, alen) == 0,
        "and on the async path (read on the pool)");
  CHECK(!logged("Ignoring"), "nothing was ignored");
  {
    unsigned char x[4096], y[4096];
    size_t xlen = sizeof(x), ylen = sizeof(y);
    int same = leaf_der("127.0.0.1", x, &xlen, 0) == 0 && leaf_der("127.0.0.1", y, &ylen, 1) == 0 &&
               xlen == ylen && memcmp(x, y, xlen) == 0;
    xlen = sizeof(x), ylen = sizeof(y);
    same = same && leaf_der("[::1]", x, &xlen, 0) == 0 && leaf_der("0:0::1", y, &ylen, 1) == 0 &&
           xlen == ylen && memcmp(x, y, xlen) == 0;
    CHECK(same && !logged("Ignoring"), "IP leaves (iPAddress SANs) are kept and read back too");
  }

  spit(f, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
  CHECK(leaf_der("disk.test", b, &blen, 1) == 0 && (blen != alen || memcmp(a, b, alen) != 0),
        "a corrupted file is not used: a new leaf");
  CHECK(logged("Ignoring") && logged("disk.test"), "the ignored file is logged");
  clen = sizeof(c);
  CHECK(leaf_der("disk.test", c, &clen, 0) == 0 && clen == blen && memcmp(b, c, blen) == 0 &&
            mode_of(f) == 0600,
        "the corrupted file was replaced by the new leaf (0600)");

  /* A leaf of this CA for another host, under disk.test's name. */
  alen = sizeof(a);
  CHECK(leaf_der("other.test", a, &alen, 0) == 0, "other.test minted");
  snprintf(other, sizeof(other), "%s", leaf_path("other.test"));
  run("cp '%s' '%s'", other, f);
  blen = sizeof(b);
  CHECK(leaf_der("disk.test", b, &blen, 0) == 0 && (blen != alen || memcmp(a, b, alen) != 0) &&
            logged("does not name the host"),
        "another host's leaf under disk.test's name is ignored and replaced");

  /* Signed by another CA: a self-signed P-256 certificate for disk.test. */
  CHECK(run("cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
            "-subj /CN=disk.test -addext subjectAltName=DNS:disk.test -addext "
            "extendedKeyUsage=serverAuth -days 30 -keyout fk.pem -out fc.pem && cat fc.pem fk.pem "
            "> '%s' && rm fk.pem fc.pem", dir, f) == 0,
        "a foreign leaf for disk.test is planted");
  CHECK(leaf_der("disk.test", b, &blen, 0) == 0 && logged("not signed by this CA"),
        "a leaf not signed by this CA is ignored");
  CHECK(run("openssl verify -CAfile '%s' '%s'", path("ca.crt"), f) == 0,
        "and replaced by one that is");

  /* This CA's leaf for disk.test with another leaf's key. */
  CHECK(run("cd '%sleaves' && openssl x509 -in '%s' > x.pem && openssl pkey -in '%s' >> x.pem && "
            "mv x.pem '%s'", dir, f, other, f) == 0,
        "disk.test's certificate with other.test's key is planted");
  blen = sizeof(b);
  CHECK(leaf_der("disk.test", b, &blen, 0) == 0 && logged("key does not match"),
        "a key that does not match its certificate is refused");

  /* Renewal: 340 days on, the year-long leaf on disk is due and minted again. */
  alen = sizeof(a);
  leaf_der("disk.test", a, &alen, 0);
  dduct__ca_clock_skew = 340 * 86400;
  blen = sizeof(b);
  CHECK(leaf_der("disk.test", b, &blen, 0) == 0 && (blen != alen || memcmp(a, b, alen) != 0) &&
            logged("due for renewal"),
        "a leaf file within 30 days of its end is not used: minted again");
  dduct__ca_clock_skew = 0;

  /* Bounded: max_leaves files, the oldest go; temp files a crash left go, others' files stay. */
  snprintf(keep, sizeof(keep), "%sleaves/README", dir);
  spit(keep, "not ours\n");
  run("cd '%sleaves' && touch -d '1 hour ago' .%064d.pem.AbC123", dir, 0);
  for (int i = 0; i < 4; i++) {
    char host[32];
    alen = sizeof(a);
    snprintf(host, sizeof(host), "q%d.test", i);
    leaf_der(host, a, &alen, 0);
  }
  {
    struct dduct_ca_options o;
    struct dduct_ca *ca = NULL;
    mbedtls_x509_crt *x;
    mbedtls_pk_context *k;
    char err[512], host[32];
    int ok = 1;
    options(&o);
    o.max_leaves = 3;
    if (dduct_ca_open(&o, &ca, err, sizeof(err)) != 0) ok = 0;
    CHECK(ok && run("ls -A '%sleaves' | grep -c pem", dir) == 0 && atoi(out) == 3,
          "6 leaf files: opening with max_leaves 3 prunes the directory to 3");
    for (int i = 0; ok && i < 6; i++) {
      snprintf(host, sizeof(host), "p%d.test", i);
      ok = dduct__ca_leaf(ca, host, NULL, &x, &k) == 0;
    }
    CHECK(ok && run("ls -A '%sleaves' | grep -c pem", dir) == 0 && atoi(out) == 3 &&
              mode_of(leaf_path("p5.test")) == 0600 && mode_of(leaf_path("p4.test")) == 0600 &&
              mode_of(leaf_path("p3.test")) == 0600,
          "six more hosts: still 3 files, the three newest");
    CHECK(mode_of(keep) != -1, "a file that is not a leaf is left alone");
    CHECK(run("ls -A '%sleaves' | grep -c '^[.]'", dir) != 0 || atoi(out) == 0,
          "a temp file a crash left an hour ago is removed");
    CHECK(run("ls -A '%sleaves' | grep -v README | grep -vcE '^[0-9a-f]{64}[.]pem$'", dir) != 0 ||
              atoi(out) == 0,
          "every file is named <64 hex>.pem: no host name reaches the file system");
    dduct_ca_free(ca);
  }
  remove(keep);
}

static void test_bad_options(void) {
  struct dduct_ca_options o;
  struct dduct_ca *ca = NULL;
  char err[512] = "";
  static const char *const bad_dns[] = {"ok.test", "bad name"};
  static const char *const bad_ip[] = {"300.1.1.1"};
  options(&o);
  o.server_dns_sans = bad_dns, o.server_dns_sans_count = 2;
  CHECK(dduct_ca_open(&o, &ca, err, sizeof(err)) == DDUCT_ECONFIG && strstr(err, "bad name"),
        "an invalid DNS SAN is a config error naming it");
  options(&o);
  o.server_ip_sans = bad_ip, o.server_ip_sans_count = 1;
  CHECK(dduct_ca_open(&o, &ca, err, sizeof(err)) == DDUCT_ECONFIG && strstr(err, "300.1.1.1"),
        "an invalid IP SAN is a config error naming it");
  options(&o);
  o.rsa_key_bits = 512;
  CHECK(dduct_ca_open(&o, &ca, err, sizeof(err)) == DDUCT_ECONFIG && ca == NULL,
        "rsa_key_bits 512 is refused");
}

static void test_defaults(void) {
  struct dduct_ca_options o;
  dduct_ca_options_init(&o);
  CHECK(strcmp(o.cert_dir, "/var/tmp/dduct/certs/") == 0 && o.rsa_key_bits == 3072 &&
            o.days_from_now == 3072 && strcmp(o.ca_cn, "dduct") == 0 &&
            strcmp(o.server_cn, "*.dduct.rs") == 0 && o.server_dns_sans_count == 8 &&
            strcmp(o.server_dns_sans[7], "quay.io") == 0 && o.server_ip_sans_count == 1 &&
            strcmp(o.server_ip_sans[0], "127.0.0.1") == 0 &&
            strcmp(o.client_cn, "client.dduct.rs") == 0 && strcmp(o.p12_pass, "dduct") == 0,
        "defaults are the seed's");
}

/* A user's P-256 server.key (read, with its public half: mbedTLS never multiplied by G with it):
 * the CA makes its group's table of multiples of G before the key is shared, or the first
 * handshakes on several loops would each build it into the shared group without a lock. */
static void test_ec_key_ready(void) {
  struct dduct_ca *ca = NULL;
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;
  char err[512] = "";
  int rc;

  run("rm -f '%s'server.*", dir);
  CHECK(run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '%s' 2>&1",
            path("server.key")) == 0 && run("chmod 600 '%s'", path("server.key")) == 0,
        "openssl makes a P-256 server.key");
  rc = open_ca(&ca, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "  %s\n", err);
  CHECK_EQ_INT(rc, 0, "the CA opens with the P-256 server.key (server.crt issued for it)");
  if (ca == NULL) return;
  CHECK_EQ_INT(dduct__ca_server_identity(ca, &chain, &key), 0, "the server identity");
  CHECK(mbedtls_pk_get_type(key) == MBEDTLS_PK_ECKEY, "server.key is an EC key");
  CHECK(mbedtls_pk_get_type(key) == MBEDTLS_PK_ECKEY && mbedtls_pk_ec(*key)->grp.T != NULL,
        "its group's table of multiples of G is made before any handshake");
  dduct_ca_free(ca);
  run("rm -f '%s'server.*", dir); /* the next tests start from dduct's own files */
  ca = NULL;
  CHECK_EQ_INT(open_ca(&ca, err, sizeof(err)), 0, "dduct's own server.* again");
  dduct_ca_free(ca);
}

/* A user's EC CA: the certificate's public key gets its table when the CA opens, before leaf
 * files are checked against it on several threads (mbedTLS would build it unlocked). */
static void test_ec_ca_ready(void) {
  struct dduct_ca *ca = NULL;
  char err[512] = "";
  int rc;

  run("rm -rf '%s'ca.* '%s'server.* '%s'client.* '%s'leaves", dir, dir, dir, dir);
  CHECK(run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '%s' 2>&1",
            path("ca.key")) == 0 && run("chmod 600 '%s'", path("ca.key")) == 0 &&
            run("openssl req -x509 -new -key '%s' -subj /CN=ec-ca -days 30 -addext "
                "basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign "
                "-out '%s' 2>&1", path("ca.key"), path("ca.crt")) == 0,
        "openssl makes a P-256 CA");
  rc = open_ca(&ca, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "  %s\n", err);
  CHECK_EQ_INT(rc, 0, "the CA opens with the P-256 CA");
  if (ca != NULL)
    CHECK(dduct__ca_ec_ready(ca), "its certificate's group has its table of multiples of G");
  dduct_ca_free(ca);
  run("rm -rf '%s'ca.* '%s'server.* '%s'client.* '%s'leaves", dir, dir, dir, dir);
  ca = NULL;
  CHECK_EQ_INT(open_ca(&ca, err, sizeof(err)), 0, "dduct's own CA again");
  dduct_ca_free(ca);
}

int main(void) {
  struct dduct_ca *ca = NULL;

  snprintf(tmp, sizeof(tmp), "/tmp/dduct-test-ca-XXXXXX");
  if (mkdtemp(tmp) == NULL) return 1;
  snprintf(dir, sizeof(dir), "%s/certs/", tmp);
  dduct_log_set(DDUCT_LOG_INFO, log_cb, NULL);

  test_normalise();
  test_defaults();
  test_bad_options();
  test_first_run(&ca);
  if (ca != NULL) {
    test_openssl_views();
    test_leaves(ca);
    test_handshake(ca);
    test_covers(ca);
    dduct_ca_free(ca);
    test_leaf_lru();
    test_leaf_async();
    test_leaf_loops();
    test_leaf_files();
    test_restart();
    test_ec_key_ready();
    test_ec_ca_ready();
    test_refusals();
  }
  run("rm -rf '%s'", tmp);
  return tap_done();
}
