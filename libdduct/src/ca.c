/* The certificate authority: the eight files in cert_dir, and per-host leaf certificates for
 * intercepted CONNECTs.
 *
 * Missing-file policy (decided before anything is written, so a refusal never leaves a half
 * updated directory):
 * - ca.key present: it is the root of trust. A missing ca.crt is re-issued from it (same key
 *   and name, so server/client certificates and clients trusting the old ca.crt keep working).
 * - ca.key missing: a new CA is created, but only if ca.crt and every server / client file are
 *   missing too; otherwise those files belong to a CA we no longer have: error naming them.
 * - Per set (server, client) the key is the root: key missing while its .crt or .p12 exists is
 *   an error (the fix, as in the seed, is `rm server.*`). Key present, .crt missing: a new
 *   certificate is issued for the key and the .p12 rewritten to hold it. Only the .p12 missing:
 *   written from the existing key and certificate.
 * - A file that exists but cannot be read or parsed, a certificate that does not match its key,
 *   a server/client certificate that does not chain to ca.crt, or a .p12 whose MAC fails with
 *   p12_pass: error naming the file; nothing is overwritten. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>

#include "ca.h"
#include "safedir.h"
#include "internal.h"
#include "pkcs12.h"
#include "rng.h"
#include "sha256.h"
#include "x509.h"

#define MOD "ssl_certs"
#define FILE_MAX (1 << 20) /* no key, certificate or p12 of ours comes near this */
#define KEY_PEM_MAX 16000
#define HOST_MAX 253
#define LEAF_BUCKETS 1024
#define DAY (24 * 60 * 60)
#define LEAF_DAYS 365
#define LEAF_RENEW_DAYS 30
#define SERVER_DAYS_MAX 825

enum { F_CA_KEY, F_CA_CRT, F_SRV_KEY, F_SRV_CRT, F_SRV_P12, F_CLI_KEY, F_CLI_CRT, F_CLI_P12, F_N };
static const char *const file_names[F_N] = {"ca.key",     "ca.crt",     "server.key",
                                            "server.crt", "server.p12", "client.key",
                                            "client.crt", "client.p12"};

/* A minted leaf. Linked leaves sit in a hash chain and in the LRU list (most recent first); an
 * evicted leaf still held by a handshake (refs > 0) is unlinked and freed by its last put. The
 * links, refs and linked are the CA's (under ca->lock); host, chain, key and renew_at are written
 * once before the leaf is published and only read afterwards, from any thread. */
struct dduct__leaf {
  struct dduct__leaf *next;           /* hash chain */
  struct dduct__leaf *newer, *older;  /* LRU list */
  struct dduct_ca *ca;
  char *host;
  mbedtls_x509_crt chain; /* leaf, then the CA certificate */
  mbedtls_pk_context key;
  time_t renew_at;        /* minted again by the first use after this */
  unsigned refs;          /* handshakes using it (dduct__ca_leaf with a ref) */
  int linked;
};
#define leaf dduct__leaf

/* A mint on the thread pool (dduct__ca_leaf_async), started from one loop, and the calls waiting
 * for it, from any loop. */
struct mint_job {
  struct mint_job *next;
  uv_work_t work;
  struct dduct_ca *ca;
  struct leaf *l; /* loaded or minted on the pool; linked by mint_done */
  int rc, loaded;
  struct dduct__leaf_wait *waiters;
};

/* One waiting call. Its async handle belongs to the caller's loop (initialised there), so the
 * caller is woken on its own loop whichever loop ran the mint. job != NULL while it waits;
 * mint_done sets job = NULL, status and l (held for the caller) under ca->lock and sends. */
struct dduct__leaf_wait {
  struct dduct__leaf_wait *next;
  struct mint_job *job;
  struct dduct_ca *ca;
  uv_async_t async;
  dduct__leaf_cb cb;
  void *arg;
  int status;
  struct leaf *l;
};

struct dduct_ca {
  char *dir; /* ends with '/' */
  mbedtls_pk_context ca_key, server_key;
  mbedtls_x509_crt ca_crt;       /* the CA certificate alone */
  mbedtls_x509_crt server_chain; /* server.crt, ca.crt */
  char *ca_pem;
  char **dns; /* normalised server_dns_sans, "*.x" wildcards kept */
  size_t ndns;
  struct dduct__ip *ips;
  size_t nips;
  time_t ca_not_after;
  size_t max_leaves;
  char *leaf_dir; /* cert_dir + "leaves/"; NULL: minted leaves are kept in memory only */
  /* Everything above is written by dduct_ca_open and only read afterwards (any thread). The
   * leaf table, the LRU list, the mints in flight and every leaf's refs are under lock: proxies
   * on several loops share one CA. Minting (ms of CPU) never runs under it. */
  uv_mutex_t lock;
  struct leaf *leaves[LEAF_BUCKETS];
  struct leaf *newest, *oldest; /* LRU list of the linked leaves */
  struct mint_job *minting;     /* mints on the pool, one per host */
  size_t nleaves;
  size_t leaf_writes; /* leaf files written since the last prune */
  int pruning;
};

/* State of one dduct_ca_open call. */
struct opener {
  struct dduct_ca *ca;
  const struct dduct_ca_options *o;
  char *err;
  size_t errlen;
  int present[F_N];
  char path[F_N][PATH_MAX];
};

/* Defaults ------------------------------------------------------------------------------- */

static const char *const default_dns_sans[] = {
    "*.dduct.rs", "*.docker.io", "*.gcr.io", "*.githubusercontent.com",
    "*.k8s.io",   "*.quay.io",   "ghcr.io",  "quay.io",
};
static const char *const default_ip_sans[] = {"127.0.0.1"};

void dduct_ca_options_init(struct dduct_ca_options *o) {
  memset(o, 0, sizeof(*o));
  o->cert_dir = "/var/tmp/dduct/certs/";
  o->rsa_key_bits = 3072;
  o->days_from_now = 3072;
  o->ca_cn = "dduct";
  o->server_cn = "*.dduct.rs";
  o->server_dns_sans = default_dns_sans;
  o->server_dns_sans_count = DDUCT_ARRAY_SIZE(default_dns_sans);
  o->server_ip_sans = default_ip_sans;
  o->server_ip_sans_count = DDUCT_ARRAY_SIZE(default_ip_sans);
  o->client_cn = "client.dduct.rs";
  o->p12_pass = "dduct";
}

/* Host names ----------------------------------------------------------------------------- */

static int valid_dns(const char *h, int allow_wildcard) {
  size_t label = 0;
  if (allow_wildcard && h[0] == '*' && h[1] == '.') h += 2;
  if (*h == '\0') return 0;
  for (; *h != '\0'; h++) {
    char c = *h;
    if (c == '.') {
      if (label == 0) return 0;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return label > 0;
}

/* Shared by leaf hosts and SAN entries: lower-case, strip [] and one trailing dot; IP literals
 * come out in canonical text form so "::1" and "0::1" share one leaf. */
static int normalise(const char *host, char *out, size_t outlen, int allow_wildcard) {
  size_t n;
  int bracketed = 0;
  struct dduct__ip ip;
  if (host == NULL) return DDUCT_EINVAL;
  n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') host++, n -= 2, bracketed = 1;
  if (n > 0 && host[n - 1] == '.' && !bracketed) n--;
  if (n == 0 || n > HOST_MAX || n >= outlen) return DDUCT_EINVAL;
  for (size_t i = 0; i < n; i++) {
    char c = host[i];
    out[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  }
  out[n] = '\0';
  if (dduct__x509_parse_ip(out, &ip) == 0 && (!bracketed || strchr(out, ':') != NULL)) {
    if (inet_ntop(ip.len == 4 ? AF_INET : AF_INET6, ip.b, out, (socklen_t)outlen) == NULL)
      return DDUCT_EINVAL;
    return 0;
  }
  return !bracketed && valid_dns(out, allow_wildcard) ? 0 : DDUCT_EINVAL;
}

int dduct__ca_host_normalise(const char *host, char *out, size_t outlen) {
  return normalise(host, out, outlen, 0);
}

/* Files ---------------------------------------------------------------------------------- */

#define fail(op, code, ...) dduct__errf((code), (op)->err, (op)->errlen, __VA_ARGS__)

static const char *mbed_reason(int rc, char *buf, size_t len) {
  mbedtls_strerror(rc, buf, len);
  return buf;
}

/* An existing directory or key file others may read or write: made private (0700 / 0600) with
 * a WARN, or refused when that fails (not our file): private keys must not be readable by
 * others, nor replaceable in a directory they can write. */
static int tighten(const char *path, const struct stat *st, mode_t want) {
  if ((st->st_mode & 077) == 0) return 0;
  if (chmod(path, want) != 0) {
    int e = -errno;
    LOG_ERROR(MOD, "\"%s\" is accessible to other users (mode %03o) and cannot be made %03o: %s",
              path, (unsigned)(st->st_mode & 0777), (unsigned)want, dduct_strerror(e));
    return DDUCT_EUNSAFE;
  }
  LOG_WARN(MOD, "\"%s\" was accessible to other users (mode %03o): made %03o", path,
           (unsigned)(st->st_mode & 0777), (unsigned)want);
  return 0;
}

/* Create dir and its parents; the last component 0700 (it holds private keys). */
static int make_dir(const char *dir) {
  char buf[PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof(buf)) return DDUCT_EINVAL;
  memcpy(buf, dir, n + 1);
  while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
  for (char *s = buf + 1; *s != '\0'; s++) {
    if (*s != '/') continue;
    *s = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
    *s = '/';
  }
  if (mkdir(buf, 0700) == 0) return chmod(buf, 0700) == 0 ? 0 : -errno;
  if (errno != EEXIST) return -errno;
  struct stat st;
  if (stat(buf, &st) != 0) return -errno;
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
  return tighten(buf, &st, 0700);
}

static int file_exists(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0) return 1;
  return errno == ENOENT ? 0 : -errno;
}

/* Whole file, NUL-terminated (PEM parsers want the NUL counted). */
static int read_all(const char *path, unsigned char **out, size_t *outlen) {
  return dduct__read_file(path, FILE_MAX, (char **)out, outlen);
}

static int write_fd(int fd, const unsigned char *data, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, data, len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Temp file in the same directory, fsync, rename, fsync the directory: a crash leaves either
 * no file or the whole file, never a truncated key. Without durable, no fsync: a crash may leave
 * an empty or partial file under the name (for files checked on every read, such as leaves). */
static int write_atomic(const char *dir, const char *name, const char *path,
                        const unsigned char *data, size_t len, mode_t mode, int durable) {
  char tmp[PATH_MAX];
  int fd, rc;
  if (snprintf(tmp, sizeof(tmp), "%s.%s.XXXXXX", dir, name) >= (int)sizeof(tmp))
    return DDUCT_EINVAL;
  fd = mkostemp(tmp, O_CLOEXEC); /* created 0600 whatever the umask */
  if (fd < 0) return -errno;
  rc = fchmod(fd, mode) != 0 ? -errno : 0;
  if (rc == 0) rc = write_fd(fd, data, len);
  if (rc == 0 && durable && fsync(fd) != 0) rc = -errno;
  if (close(fd) != 0 && rc == 0) rc = -errno;
  if (rc == 0 && rename(tmp, path) != 0) rc = -errno;
  if (rc != 0) {
    unlink(tmp);
    return rc;
  }
  if (!durable) return 0;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd); /* best effort: some file systems refuse fsync on directories */
    close(fd);
  }
  return 0;
}

static int save(struct opener *op, int f, const void *data, size_t len, mode_t mode) {
  int rc = write_atomic(op->ca->dir, file_names[f], op->path[f], data, len, mode, 1);
  if (rc != 0)
    return fail(op, rc, "cannot write \"%s\": %s", op->path[f], dduct_strerror(rc));
  LOG_INFO(MOD, "Write \"%s\"", op->path[f]);
  return 0;
}

static int load(struct opener *op, int f, unsigned char **buf, size_t *len) {
  int rc = read_all(op->path[f], buf, len);
  if (rc != 0) return fail(op, rc, "cannot read \"%s\": %s", op->path[f], dduct_strerror(rc));
  return 0;
}

/* Keys and certificates ------------------------------------------------------------------ */

/* An EC key's group keeps the base point's table of multiples, which mbedTLS 2.28 builds on the
 * first multiplication by G (every ECDSA signature is one) and stores into the group without a
 * lock. A key parsed with its public half never had one: the first signatures made with it at
 * once (mints signing with ca.key on several pool threads, handshakes presenting server.key on
 * several loops) would each build and store a table, and one frees the table another thread just
 * picked up. One multiplication here, before the key is shared, builds it for good. A minted or
 * loaded leaf's key already has it (its key generation, or leaf_check's multiplication). */
static int warm_ec_key(mbedtls_pk_context *pk) {
  mbedtls_ecp_keypair *kp;
  mbedtls_ecp_point q;
  mbedtls_mpi one;
  int rc;
  if (mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECKEY && mbedtls_pk_get_type(pk) != MBEDTLS_PK_ECDSA)
    return 0;
  kp = mbedtls_pk_ec(*pk);
  if (kp->grp.T != NULL) return 0;
  mbedtls_ecp_point_init(&q);
  mbedtls_mpi_init(&one);
  /* A certificate's public key has no d: any scalar builds the same table, so 1 for it. */
  rc = mbedtls_mpi_lset(&one, 1);
  if (rc == 0)
    rc = mbedtls_ecp_mul(&kp->grp, &q, mbedtls_mpi_cmp_int(&kp->d, 0) != 0 ? &kp->d : &one,
                         &kp->grp.G, dduct__rng, NULL);
  mbedtls_mpi_free(&one);
  mbedtls_ecp_point_free(&q);
  return rc;
}

static int read_key(struct opener *op, int f, mbedtls_pk_context *pk) {
  unsigned char *buf;
  size_t len;
  char why[128];
  int rc = load(op, f, &buf, &len);
  if (rc != 0) return rc;
  rc = mbedtls_pk_parse_key(pk, buf, len + 1, NULL, 0);
  mbedtls_platform_zeroize(buf, len);
  free(buf);
  if (rc == 0) rc = warm_ec_key(pk);
  if (rc != 0)
    return fail(op, DDUCT_ECORRUPT, "\"%s\" is not a valid private key: %s", op->path[f],
                mbed_reason(rc, why, sizeof(why)));
  LOG_INFO(MOD, "Read \"%s\"", op->path[f]);
  return 0;
}

static int create_key(struct opener *op, int f, mbedtls_pk_context *pk) {
  unsigned char *pem;
  int rc = dduct__x509_gen_rsa(pk, op->o->rsa_key_bits);
  if (rc != 0)
    return fail(op, rc, "cannot generate a key for \"%s\": %s", op->path[f], dduct_strerror(rc));
  pem = malloc(KEY_PEM_MAX);
  if (pem == NULL) return DDUCT_ENOMEM;
  rc = mbedtls_pk_write_key_pem(pk, pem, KEY_PEM_MAX);
  if (rc == 0) rc = save(op, f, pem, strlen((char *)pem), 0600);
  else rc = fail(op, DDUCT_ECRYPTO, "cannot encode \"%s\"", op->path[f]);
  mbedtls_platform_zeroize(pem, KEY_PEM_MAX);
  free(pem);
  return rc;
}

static int key_step(struct opener *op, int f, mbedtls_pk_context *pk) {
  return op->present[f] ? read_key(op, f, pk) : create_key(op, f, pk);
}

/* Parse the first certificate of a file into crt (an initialised, empty chain). */
static int read_crt(struct opener *op, int f, mbedtls_x509_crt *crt) {
  unsigned char *buf;
  size_t len;
  char why[128];
  int rc = load(op, f, &buf, &len);
  if (rc != 0) return rc;
  rc = dduct__x509_parse(crt, buf, len + 1);
  free(buf);
  if (rc != 0)
    return fail(op, DDUCT_ECORRUPT, "\"%s\" is not a valid certificate: %s", op->path[f],
                rc < 0 ? mbed_reason(rc, why, sizeof(why)) : "unparsable entries");
  return 0;
}

static int save_crt(struct opener *op, int f, const mbedtls_x509_crt *crt) {
  char *pem;
  size_t len;
  int rc = dduct__x509_crt_pem(crt, &pem, &len);
  if (rc != 0) return fail(op, rc, "cannot encode \"%s\"", op->path[f]);
  rc = save(op, f, pem, len, 0644);
  free(pem);
  return rc;
}

static int check_pair(struct opener *op, int f, const mbedtls_x509_crt *crt,
                      mbedtls_pk_context *key) {
  if (mbedtls_pk_check_pair((mbedtls_pk_context *)&crt->pk, key) == 0) return 0;
  return fail(op, DDUCT_ECORRUPT, "\"%s\" does not match its private key %s", op->path[f],
              file_names[f - 1]);
}

time_t dduct__ca_clock_skew; /* tests only: seconds added to the clock */

static time_t now(void) {
  return time(NULL) + dduct__ca_clock_skew;
}

static time_t not_after(struct opener *op, time_t from) {
  time_t t = from + (time_t)op->o->days_from_now * DAY;
  /* Nothing outlives the CA that signs it. */
  if (op->ca->ca_not_after != 0 && t > op->ca->ca_not_after) t = op->ca->ca_not_after;
  return t;
}

/* The CA ------------------------------------------------------------------------------- */

static int ca_crt_step(struct opener *op) {
  struct dduct_ca *ca = op->ca;
  int rc;
  if (op->present[F_CA_CRT]) {
    if ((rc = read_crt(op, F_CA_CRT, &ca->ca_crt)) != 0) return rc;
    if ((rc = check_pair(op, F_CA_CRT, &ca->ca_crt, &ca->ca_key)) != 0) return rc;
    if (!ca->ca_crt.ca_istrue)
      return fail(op, DDUCT_ECORRUPT, "\"%s\" is not a CA certificate (no CA:TRUE)",
                  op->path[F_CA_CRT]);
    LOG_INFO(MOD, "Read \"%s\"", op->path[F_CA_CRT]);
  } else {
    time_t t = now();
    struct dduct__cert_spec s = {
        .cn = op->o->ca_cn, .subject_key = &ca->ca_key, .issuer_key = &ca->ca_key,
        .not_before = t - DAY, .not_after = not_after(op, t), .is_ca = 1};
    if (op->o->ca_name_constraints) {
      /* A stolen ca.key then speaks only for the names dduct intercepts. */
      s.name_constraints = 1;
      s.nc_dns = (const char *const *)ca->dns, s.nc_ndns = ca->ndns;
      s.nc_ips = ca->ips, s.nc_nips = ca->nips;
      LOG_INFO(MOD, "\"%s\" is limited to server_dns_sans and server_ip_sans (nameConstraints)",
               op->path[F_CA_CRT]);
    }
    if ((rc = dduct__x509_issue(&s, &ca->ca_crt)) != 0)
      return fail(op, rc, "cannot issue \"%s\": %s", op->path[F_CA_CRT], dduct_strerror(rc));
    if ((rc = save_crt(op, F_CA_CRT, &ca->ca_crt)) != 0) return rc;
  }
  ca->ca_not_after = dduct__x509_not_after(&ca->ca_crt);
  if (ca->ca_not_after < now())
    LOG_WARN(MOD, "\"%s\" has expired: clients will refuse every certificate it signed",
             op->path[F_CA_CRT]);
  return 0;
}

/* server / client sets ------------------------------------------------------------------- */

struct set {
  int key, crt, p12; /* file indices */
  const char *cn;
  enum dduct__eku eku;
  int with_sans;
};

/* Accept any chain to ca.crt; validity dates only warn (a `rm server.*` fixes them). */
static int check_chain(struct opener *op, int f, mbedtls_x509_crt *crt) {
  static const mbedtls_x509_crt_profile any = {
      .allowed_mds = 0xffffff, .allowed_pks = 0xffffff, .allowed_curves = 0xffffff,
      .rsa_min_bitlen = 1024};
  uint32_t flags = 0;
  mbedtls_x509_crt_verify_with_profile(crt, &op->ca->ca_crt, NULL, &any, NULL, &flags, NULL,
                                       NULL);
  if ((flags & ~(uint32_t)(MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE)) != 0)
    return fail(op, DDUCT_EVERIFY, "\"%s\" is not signed by %s", op->path[f],
                op->path[F_CA_CRT]);
  if (flags != 0)
    LOG_WARN(MOD, "\"%s\" is outside its validity period; remove it to issue a new one",
             op->path[f]);
  return 0;
}

static int issue_set_crt(struct opener *op, const struct set *st, mbedtls_pk_context *key,
                         mbedtls_x509_crt *crt) {
  struct dduct_ca *ca = op->ca;
  time_t t = now();
  struct dduct__cert_spec s = {
      .cn = st->cn, .subject_key = key, .issuer_key = &ca->ca_key, .issuer = &ca->ca_crt,
      .not_before = t - DAY, .not_after = not_after(op, t), .eku = st->eku};
  int rc;
  if (st->eku == DDUCT__EKU_SERVER && s.not_after > t + (time_t)SERVER_DAYS_MAX * DAY) {
    /* Apple's clients refuse TLS server certificates valid for longer. */
    s.not_after = t + (time_t)SERVER_DAYS_MAX * DAY;
    LOG_WARN(MOD, "\"%s\" is valid for %d days, not days_from_now (%u): TLS clients such as "
             "Apple's refuse server certificates valid for longer", op->path[st->crt],
             SERVER_DAYS_MAX, op->o->days_from_now);
  }
  if (st->with_sans) {
    s.dns = (const char *const *)ca->dns, s.ndns = ca->ndns;
    s.ips = ca->ips, s.nips = ca->nips;
  }
  if ((rc = dduct__x509_issue(&s, crt)) != 0)
    return fail(op, rc, "cannot issue \"%s\": %s", op->path[st->crt], dduct_strerror(rc));
  return save_crt(op, st->crt, crt);
}

static int crt_step(struct opener *op, const struct set *st, mbedtls_pk_context *key,
                    mbedtls_x509_crt *crt) {
  int rc;
  if (!op->present[st->crt]) return issue_set_crt(op, st, key, crt);
  if ((rc = read_crt(op, st->crt, crt)) != 0) return rc;
  if ((rc = check_chain(op, st->crt, crt)) != 0) return rc;
  if ((rc = check_pair(op, st->crt, crt, key)) != 0) return rc;
  LOG_INFO(MOD, "Read \"%s\"", op->path[st->crt]);
  return 0;
}

static int p12_step(struct opener *op, const struct set *st, mbedtls_pk_context *key,
                    const mbedtls_x509_crt *crt, int crt_is_new) {
  unsigned char *buf;
  size_t len;
  int rc;
  if (op->present[st->p12] && !crt_is_new) {
    if ((rc = load(op, st->p12, &buf, &len)) != 0) return rc;
    rc = dduct__pkcs12_check(buf, len, op->o->p12_pass);
    free(buf);
    if (rc == DDUCT_EVERIFY)
      return fail(op, rc, "\"%s\": %s", op->path[st->p12],
                  "MAC check failed (p12_pass differs from the one it was written with?)");
    if (rc != 0)
      return fail(op, DDUCT_ECORRUPT, "\"%s\" is not a valid PKCS#12 file", op->path[st->p12]);
    LOG_INFO(MOD, "Read \"%s\"", op->path[st->p12]);
    return 0;
  }
  rc = dduct__pkcs12_write(key, crt, &op->ca->ca_crt, op->o->p12_pass, &buf, &len);
  if (rc != 0)
    return fail(op, rc, "cannot encode \"%s\": %s", op->path[st->p12], dduct_strerror(rc));
  rc = save(op, st->p12, buf, len, 0600);
  mbedtls_platform_zeroize(buf, len);
  free(buf);
  return rc;
}

/* key, crt, p12 in that order; key and crt are left in the caller's contexts. */
static int set_step(struct opener *op, const struct set *st, mbedtls_pk_context *key,
                    mbedtls_x509_crt *crt) {
  int rc;
  if ((rc = key_step(op, st->key, key)) != 0) return rc;
  if ((rc = crt_step(op, st, key, crt)) != 0) return rc;
  return p12_step(op, st, key, crt, !op->present[st->crt]);
}

static int server_step(struct opener *op) {
  struct set st = {F_SRV_KEY, F_SRV_CRT, F_SRV_P12, op->o->server_cn, DDUCT__EKU_SERVER, 1};
  struct dduct_ca *ca = op->ca;
  int rc = set_step(op, &st, &ca->server_key, &ca->server_chain);
  if (rc != 0) return rc;
  /* The listener presents server.crt followed by ca.crt. */
  if (dduct__x509_parse_der(&ca->server_chain, ca->ca_crt.raw.p, ca->ca_crt.raw.len) != 0)
    return DDUCT_ECRYPTO;
  return 0;
}

static int client_step(struct opener *op) {
  struct set st = {F_CLI_KEY, F_CLI_CRT, F_CLI_P12, op->o->client_cn, DDUCT__EKU_CLIENT, 0};
  mbedtls_pk_context key;
  mbedtls_x509_crt crt;
  int rc;
  mbedtls_pk_init(&key);
  mbedtls_x509_crt_init(&crt);
  rc = set_step(op, &st, &key, &crt);
  mbedtls_x509_crt_free(&crt);
  mbedtls_pk_free(&key);
  return rc;
}

/* Planning: refuse inconsistent directories before writing anything ---------------------- */

static int plan_set(struct opener *op, int key) {
  for (int f = key + 1; f <= key + 2; f++)
    if (!op->present[key] && op->present[f])
      return dduct__errf(DDUCT_ECORRUPT, op->err, op->errlen,
                         "\"%s\" is missing but \"%s\" exists; remove %.*s* to regenerate them",
                         op->path[key], op->path[f],
                         (int)(strchr(file_names[key], '.') - file_names[key] + 1),
                         file_names[key]);
  return 0;
}

static int plan(struct opener *op) {
  for (int f = 0; f < F_N; f++) {
    int rc = file_exists(op->path[f]);
    if (rc < 0) return fail(op, rc, "cannot access \"%s\": %s", op->path[f], dduct_strerror(rc));
    op->present[f] = rc;
    if (rc == 1 && (f == F_CA_KEY || f == F_SRV_KEY || f == F_SRV_P12 || f == F_CLI_KEY ||
                    f == F_CLI_P12)) {
      struct stat st; /* files holding a private key: 0600 */
      if (stat(op->path[f], &st) == 0 && tighten(op->path[f], &st, 0600) != 0)
        return fail(op, DDUCT_EUNSAFE,
                    "\"%s\" is accessible to other users and cannot be made 0600", op->path[f]);
    }
  }
  if (!op->present[F_CA_KEY]) {
    for (int f = F_CA_CRT; f < F_N; f++)
      if (op->present[f])
        return dduct__errf(DDUCT_ECORRUPT, op->err, op->errlen,
                           "\"%s\" is missing but \"%s\" exists; it belongs to that CA (remove "
                           "ca.* server.* client.* to start a new CA)",
                           op->path[F_CA_KEY], op->path[f]);
  }
  int rc = plan_set(op, F_SRV_KEY);
  return rc != 0 ? rc : plan_set(op, F_CLI_KEY);
}

/* Options -------------------------------------------------------------------------------- */

static int copy_sans(struct dduct_ca *ca, const struct dduct_ca_options *o, char *err,
                     size_t errlen) {
  char buf[HOST_MAX + 3];
  ca->dns = calloc(o->server_dns_sans_count + 1, sizeof(*ca->dns));
  ca->ips = calloc(o->server_ip_sans_count + 1, sizeof(*ca->ips));
  if (ca->dns == NULL || ca->ips == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < o->server_dns_sans_count; i++) {
    const char *s = o->server_dns_sans[i];
    if (normalise(s, buf, sizeof(buf), 1) != 0 || strchr(buf, ':') != NULL)
      return dduct__errf(DDUCT_ECONFIG, err, errlen, "server_dns_sans: invalid name '%s'",
                         s != NULL ? s : "(null)");
    if ((ca->dns[ca->ndns++] = dduct__strdup(buf)) == NULL) return DDUCT_ENOMEM;
  }
  for (size_t i = 0; i < o->server_ip_sans_count; i++) {
    const char *s = o->server_ip_sans[i];
    if (s == NULL || dduct__x509_parse_ip(s, &ca->ips[ca->nips]) != 0)
      return dduct__errf(DDUCT_ECONFIG, err, errlen, "server_ip_sans: invalid address '%s'",
                         s != NULL ? s : "(null)");
    ca->nips++;
  }
  return 0;
}

static void leaf_dir_open(struct dduct_ca *ca); /* with the leaves, below */

static int check_options(const struct dduct_ca_options *o, char *err, size_t errlen) {
  if (o->cert_dir == NULL || o->cert_dir[0] == '\0' || strlen(o->cert_dir) > PATH_MAX - 64)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "cert_dir: must be a directory path");
  if (o->rsa_key_bits < 1024 || o->rsa_key_bits > 8192)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "rsa_key_bits: %u is outside 1024..8192",
                       o->rsa_key_bits);
  if (o->days_from_now < 1 || o->days_from_now > 36500)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "days_from_now: %u is outside 1..36500",
                       o->days_from_now);
  if (o->ca_cn == NULL || o->ca_cn[0] == '\0' || o->server_cn == NULL ||
      o->server_cn[0] == '\0' || o->client_cn == NULL || o->client_cn[0] == '\0')
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "ca_cn, server_cn, client_cn: must not be empty");
  if (o->p12_pass == NULL)
    return dduct__errf(DDUCT_ECONFIG, err, errlen, "p12_pass: missing");
  return 0;
}

static int set_dir(struct opener *op) {
  const char *d = op->o->cert_dir;
  size_t n = strlen(d);
  int slash = d[n - 1] == '/';
  op->ca->dir = malloc(n + 2);
  if (op->ca->dir == NULL) return DDUCT_ENOMEM;
  snprintf(op->ca->dir, n + 2, "%s%s", d, slash ? "" : "/");
  for (int f = 0; f < F_N; f++)
    snprintf(op->path[f], sizeof(op->path[f]), "%s%s", op->ca->dir, file_names[f]);
  int rc = make_dir(d);
  if (rc == DDUCT_EUNSAFE)
    return fail(op, rc, "\"%s\" is accessible to other users and cannot be made 0700", d);
  if (rc != 0) return fail(op, rc, "cannot create \"%s\": %s", d, dduct_strerror(rc));
  {
    char why[512];
    if ((rc = dduct__dir_private(d, "cert_dir", MOD, why, sizeof(why))) != 0)
      return fail(op, rc, "%s", why);
  }
  return 0;
}

static int open_files(struct opener *op) {
  size_t len;
  int rc;
  if ((rc = set_dir(op)) != 0) return rc;
  if ((rc = plan(op)) != 0) return rc;
  if ((rc = key_step(op, F_CA_KEY, &op->ca->ca_key)) != 0) return rc;
  if ((rc = ca_crt_step(op)) != 0) return rc;
  /* Leaves read back from cert_dir/leaves are checked against the CA certificate's key on pool
   * threads and loops at once: for an EC CA, that key's group needs its table before then. */
  if ((rc = warm_ec_key(&op->ca->ca_crt.pk)) != 0) return rc;
  if ((rc = server_step(op)) != 0) return rc;
  if ((rc = client_step(op)) != 0) return rc;
  return dduct__x509_crt_pem(&op->ca->ca_crt, &op->ca->ca_pem, &len);
}

static struct dduct_ca *ca_alloc(void) {
  struct dduct_ca *ca = calloc(1, sizeof(*ca));
  if (ca == NULL) return NULL;
  mbedtls_pk_init(&ca->ca_key);
  mbedtls_pk_init(&ca->server_key);
  mbedtls_x509_crt_init(&ca->ca_crt);
  mbedtls_x509_crt_init(&ca->server_chain);
  if (uv_mutex_init(&ca->lock) != 0) {
    free(ca);
    return NULL;
  }
  return ca;
}

int dduct_ca_open(const struct dduct_ca_options *o, struct dduct_ca **out, char *err,
                  size_t errlen) {
  struct opener *op;
  int rc;

  if (o == NULL || out == NULL) return DDUCT_EINVAL;
  *out = NULL;
  if ((rc = check_options(o, err, errlen)) != 0) return rc;
  if (dduct__rng_init() != 0)
    return dduct__errf(DDUCT_ECRYPTO, err, errlen, "cannot seed the random generator");
  op = calloc(1, sizeof(*op)); /* eight PATH_MAX buffers: too big for a thread's stack */
  if (op == NULL) return DDUCT_ENOMEM;
  op->o = o, op->err = err, op->errlen = errlen;
  op->ca = ca_alloc();
  if (op->ca == NULL) rc = DDUCT_ENOMEM;
  if (rc == 0) {
    op->ca->max_leaves = o->max_leaves > 0 ? o->max_leaves : DDUCT__CA_MAX_LEAVES;
    rc = copy_sans(op->ca, o, err, errlen);
  }
  if (rc == 0) rc = open_files(op);
  if (rc == 0) leaf_dir_open(op->ca);
  if (rc == 0) *out = op->ca;
  else dduct_ca_free(op->ca);
  free(op);
  return rc;
}

/* Interception and leaves ---------------------------------------------------------------- */

static int wildcard_match(const char *pattern, const char *host) {
  const char *dot = strchr(host, '.');
  /* "*.x" covers "a.x", not "x" nor "a.b.x" (RFC 6125 one-label wildcards). */
  return dot != NULL && dot != host && strcmp(dot + 1, pattern + 2) == 0;
}

int dduct_ca_covers(const struct dduct_ca *ca, const char *host) {
  char h[HOST_MAX + 3];
  struct dduct__ip ip;
  if (ca == NULL || normalise(host, h, sizeof(h), 0) != 0) return 0;
  if (dduct__x509_parse_ip(h, &ip) == 0) {
    for (size_t i = 0; i < ca->nips; i++)
      if (ca->ips[i].len == ip.len && memcmp(ca->ips[i].b, ip.b, ip.len) == 0) return 1;
    return 0;
  }
  for (size_t i = 0; i < ca->ndns; i++) {
    const char *p = ca->dns[i];
    if (p[0] == '*' ? wildcard_match(p, h) : strcmp(p, h) == 0) return 1;
  }
  return 0;
}

const char *dduct_ca_cert_pem(const struct dduct_ca *ca) {
  return ca != NULL ? ca->ca_pem : NULL;
}

int dduct__ca_server_identity(struct dduct_ca *ca, mbedtls_x509_crt **chain,
                              mbedtls_pk_context **key) {
  if (ca == NULL) return DDUCT_EINVAL;
  *chain = &ca->server_chain;
  *key = &ca->server_key;
  return 0;
}

static size_t bucket_of(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s != '\0'; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h % LEAF_BUCKETS;
}

static void leaf_free(struct leaf *l) {
  if (l == NULL) return;
  mbedtls_x509_crt_free(&l->chain);
  mbedtls_pk_free(&l->key);
  free(l->host);
  free(l);
}

static struct leaf *leaf_new(struct dduct_ca *ca, const char *h) {
  struct leaf *l = calloc(1, sizeof(*l));
  if (l == NULL) return NULL;
  mbedtls_x509_crt_init(&l->chain);
  mbedtls_pk_init(&l->key);
  l->ca = ca;
  if ((l->host = dduct__strdup(h)) == NULL) {
    free(l);
    return NULL;
  }
  return l;
}

/* When a leaf valid from not_before (minted a day later) to not_after is minted again: a month
 * before it expires, or at two thirds of a short life, so a long-running process never presents
 * an expired leaf. */
static time_t renew_time(time_t not_before, time_t not_after) {
  time_t minted = not_before + DAY;
  return not_after - DDUCT_MIN((time_t)LEAF_RENEW_DAYS * DAY, (not_after - minted) / 3);
}

/* Any thread, no lock: touches only l, and reads the CA's key and certificate. */
static int mint(struct dduct_ca *ca, struct leaf *l) {
  struct dduct__ip ip;
  const char *dns[1] = {l->host};
  time_t t = now(), end = t + (time_t)LEAF_DAYS * DAY;
  int is_ip = dduct__x509_parse_ip(l->host, &ip) == 0;
  struct dduct__cert_spec s = {
      .cn = strlen(l->host) <= 64 ? l->host : NULL, /* X.520 caps CN at 64; the SAN is what counts */
      .subject_key = &l->key, .issuer_key = &ca->ca_key, .issuer = &ca->ca_crt,
      .not_before = t - DAY, .not_after = end < ca->ca_not_after ? end : ca->ca_not_after,
      .eku = DDUCT__EKU_SERVER};
  int rc;
  if (is_ip) s.ips = &ip, s.nips = 1;
  else s.dns = dns, s.ndns = 1;
  /* Generating the key also leaves P-256's comb table in the key's group, so the handshakes that
   * sign with it later (on any loop, at once) only read the group. */
  if ((rc = dduct__x509_gen_p256(&l->key)) != 0) return rc;
  if ((rc = dduct__x509_issue(&s, &l->chain)) != 0) return rc;
  l->renew_at = renew_time(s.not_before, s.not_after);
  if (dduct__x509_parse_der(&l->chain, ca->ca_crt.raw.p, ca->ca_crt.raw.len) != 0)
    return DDUCT_ECRYPTO;
  return 0;
}

/* ---- minted leaves on disk ----
 * cert_dir/leaves/<sha256 of the normalised host, hex>.pem holds a leaf and its key (0600, in a
 * 0700 directory), so a restart does not mint again. Written after a mint on the thread that
 * minted (the pool for dduct__ca_leaf_async), atomically (temp + rename; not fsynced: a file a
 * crash cut short fails the checks below and is minted again). Read on a miss in the table, on
 * the same thread, and used only if it is one leaf signed by this CA for serverAuth, naming the
 * host, not within its renewal window, with the P-256 key of the certificate; anything else is
 * ignored and replaced by the next mint. The directory holds at most max_leaves files: every
 * prune_every writes, the oldest (by mtime; a load touches its file) go. A cert_dir that cannot
 * hold the directory (read-only) keeps leaves in memory only. */

#define LEAF_NAME_LEN 68 /* 64 hex + ".pem" */
#define TEMP_MAX_AGE 600 /* a temp file older than this was left by a crash */

/* The file of normalised host h: a hash, so no host name can reach outside the directory. */
static void leaf_file(const struct dduct_ca *ca, const char *h, char name[LEAF_NAME_LEN + 1],
                      char *path, size_t pathlen) {
  static const char hex[] = "0123456789abcdef";
  unsigned char d[32];
  dduct__sha256(h, strlen(h), d);
  for (int i = 0; i < 32; i++) name[2 * i] = hex[d[i] >> 4], name[2 * i + 1] = hex[d[i] & 15];
  memcpy(name + 64, ".pem", 5);
  snprintf(path, pathlen, "%s%s", ca->leaf_dir, name);
}

static int names_host(const mbedtls_x509_crt *crt, const char *h) {
  const mbedtls_x509_sequence *san;
  struct dduct__ip ip;
  int is_ip = dduct__x509_parse_ip(h, &ip) == 0;
  size_t n = strlen(h);
  for (san = &crt->subject_alt_names; san != NULL && san->buf.p != NULL; san = san->next) {
    int tag = san->buf.tag & MBEDTLS_ASN1_TAG_VALUE_MASK;
    if (is_ip && tag == MBEDTLS_X509_SAN_IP_ADDRESS && san->buf.len == ip.len &&
        memcmp(san->buf.p, ip.b, ip.len) == 0)
      return 1;
    if (!is_ip && tag == MBEDTLS_X509_SAN_DNS_NAME && san->buf.len == n &&
        memcmp(san->buf.p, h, n) == 0)
      return 1;
  }
  return 0;
}

/* The checks a leaf read from disk passes before it is used; NULL or why not. On success the
 * key's group holds its comb table (computing the public point from the private key both
 * checks the pair and leaves the table there), so concurrent handshakes only read the key. */
static const char *leaf_check(struct dduct_ca *ca, struct leaf *l) {
  static const mbedtls_x509_crt_profile any = {
      .allowed_mds = 0xffffff, .allowed_pks = 0xffffff, .allowed_curves = 0xffffff,
      .rsa_min_bitlen = 1024};
  mbedtls_x509_crt *crt = &l->chain;
  mbedtls_ecp_keypair *kp;
  mbedtls_ecp_point q;
  uint32_t flags = 0;
  int same;
  if (crt->next != NULL) return "more than one certificate";
  if (mbedtls_x509_crt_verify_with_profile(crt, &ca->ca_crt, NULL, &any, NULL, &flags, NULL,
                                           NULL) != 0 || flags != 0)
    return "not signed by this CA, or outside its validity";
  if (crt->ca_istrue || mbedtls_x509_crt_check_extended_key_usage(
                            crt, MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)) != 0)
    return "not a TLS server certificate";
  if (!names_host(crt, l->host)) return "does not name the host";
  l->renew_at = renew_time(dduct__x509_not_before(crt), dduct__x509_not_after(crt));
  if (now() >= l->renew_at) return "due for renewal";
  if (mbedtls_pk_get_type(&l->key) != MBEDTLS_PK_ECKEY ||
      mbedtls_pk_get_type(&crt->pk) != MBEDTLS_PK_ECKEY ||
      mbedtls_pk_ec(l->key)->grp.id != MBEDTLS_ECP_DP_SECP256R1 ||
      mbedtls_pk_ec(crt->pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1)
    return "not a P-256 key";
  kp = mbedtls_pk_ec(l->key);
  mbedtls_ecp_point_init(&q);
  same = mbedtls_ecp_mul(&kp->grp, &q, &kp->d, &kp->grp.G, dduct__rng, NULL) == 0 &&
         mbedtls_ecp_point_cmp(&q, &mbedtls_pk_ec(crt->pk)->Q) == 0;
  mbedtls_ecp_point_free(&q);
  return same ? NULL : "the key does not match the certificate";
}

/* l (host set, chain and key empty) from its file: 0, or nonzero (l is then emptied again). */
static int leaf_load(struct dduct_ca *ca, struct leaf *l) {
  char path[PATH_MAX], name[LEAF_NAME_LEN + 1];
  unsigned char *buf;
  size_t len;
  const char *why = NULL;
  int rc;
  if (ca->leaf_dir == NULL) return UV_ENOENT;
  leaf_file(ca, l->host, name, path, sizeof(path));
  if ((rc = read_all(path, &buf, &len)) != 0) {
    if (rc != UV_ENOENT) LOG_DEBUG(MOD, "Cannot read \"%s\": %s", path, dduct_strerror(rc));
    return rc;
  }
  if (dduct__x509_parse(&l->chain, buf, len + 1) != 0) why = "no certificate";
  else if (mbedtls_pk_parse_key(&l->key, buf, len + 1, NULL, 0) != 0) why = "no private key";
  mbedtls_platform_zeroize(buf, len);
  free(buf);
  if (why == NULL) why = leaf_check(ca, l);
  if (why == NULL && dduct__x509_parse_der(&l->chain, ca->ca_crt.raw.p, ca->ca_crt.raw.len) != 0)
    why = "out of memory";
  if (why != NULL) {
    LOG_INFO(MOD, "Ignoring \"%s\" for \"%s\" (%s): a new certificate replaces it", path, l->host,
             why);
    mbedtls_x509_crt_free(&l->chain);
    mbedtls_pk_free(&l->key);
    mbedtls_x509_crt_init(&l->chain);
    mbedtls_pk_init(&l->key);
    return DDUCT_ECORRUPT;
  }
  (void)utimensat(AT_FDCWD, path, NULL, 0); /* recently used: the prune keeps it */
  return 0;
}

struct aged {
  struct timespec mtime;
  char name[LEAF_NAME_LEN + 1];
};

static int older_first(const void *a, const void *b) {
  const struct timespec *x = &((const struct aged *)a)->mtime, *y = &((const struct aged *)b)->mtime;
  if (x->tv_sec != y->tv_sec) return x->tv_sec < y->tv_sec ? -1 : 1;
  return x->tv_nsec < y->tv_nsec ? -1 : x->tv_nsec > y->tv_nsec;
}

/* s starts with 64 lower-case hex digits and ".pem". */
static int leaf_name_at(const char *s) {
  for (int i = 0; i < 64; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return strncmp(s + 64, ".pem", 4) == 0;
}

static int is_leaf_name(const char *s) {
  return strlen(s) == LEAF_NAME_LEN && leaf_name_at(s);
}

/* write_atomic's temp file for a leaf: "." name ".XXXXXX". */
static int is_temp_name(const char *s) {
  return strlen(s) == LEAF_NAME_LEN + 8 && s[0] == '.' && leaf_name_at(s + 1) &&
         s[LEAF_NAME_LEN + 1] == '.';
}

/* Down to max_leaves files, the least recently written or loaded first; temp files a crash left
 * go too. Files that are not ours are left alone. */
static void leaves_prune(struct dduct_ca *ca) {
  DIR *d = opendir(ca->leaf_dir);
  struct aged *v = NULL;
  size_t n = 0, cap = 0, gone = 0;
  time_t t = time(NULL);
  struct dirent *e;
  if (d == NULL) return;
  while ((e = readdir(d)) != NULL) {
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (is_temp_name(e->d_name)) {
      if (t - st.st_mtime > TEMP_MAX_AGE) (void)unlinkat(dirfd(d), e->d_name, 0);
      continue;
    }
    if (!is_leaf_name(e->d_name)) continue;
    if (n == cap) {
      size_t c = cap ? cap * 2 : 256;
      struct aged *nv = realloc(v, c * sizeof(*v));
      if (nv == NULL) break;
      v = nv, cap = c;
    }
    v[n].mtime = st.st_mtim;
    memcpy(v[n].name, e->d_name, LEAF_NAME_LEN + 1);
    n++;
  }
  if (n > ca->max_leaves) {
    qsort(v, n, sizeof(*v), older_first);
    for (size_t i = 0; i < n - ca->max_leaves; i++)
      if (unlinkat(dirfd(d), v[i].name, 0) == 0) gone++;
  }
  closedir(d);
  free(v);
  if (gone > 0) LOG_DEBUG(MOD, "Removed %zu least recently used certificates from \"%s\"", gone,
                          ca->leaf_dir);
}

/* After a mint, on the minting thread; a failure (full disk, read-only) only costs a mint after
 * the next restart. */
static void leaf_save(struct dduct_ca *ca, const struct leaf *l) {
  char path[PATH_MAX], name[LEAF_NAME_LEN + 1], *crt_pem = NULL;
  unsigned char key_pem[1024];
  unsigned char *buf = NULL;
  size_t crt_len = 0, key_len = 0;
  int rc, prune = 0;
  if (ca->leaf_dir == NULL) return;
  leaf_file(ca, l->host, name, path, sizeof(path));
  rc = dduct__x509_crt_pem(&l->chain, &crt_pem, &crt_len);
  if (rc == 0) rc = mbedtls_pk_write_key_pem((mbedtls_pk_context *)&l->key, key_pem, sizeof(key_pem)) == 0 ? 0 : DDUCT_ECRYPTO;
  if (rc == 0) {
    key_len = strlen((char *)key_pem);
    rc = (buf = malloc(crt_len + key_len)) != NULL ? 0 : DDUCT_ENOMEM;
  }
  if (rc == 0) {
    memcpy(buf, crt_pem, crt_len);
    memcpy(buf + crt_len, key_pem, key_len);
    rc = write_atomic(ca->leaf_dir, name, path, buf, crt_len + key_len, 0600, 0);
    mbedtls_platform_zeroize(buf, crt_len + key_len);
  }
  mbedtls_platform_zeroize(key_pem, sizeof(key_pem));
  free(buf);
  free(crt_pem);
  if (rc != 0) {
    LOG_DEBUG(MOD, "Cannot write \"%s\": %s", path, dduct_strerror(rc));
    return;
  }
  LOG_DEBUG(MOD, "Wrote \"%s\" for \"%s\"", path, l->host);
  uv_mutex_lock(&ca->lock);
  if (++ca->leaf_writes >= DDUCT_MAX((size_t)1, ca->max_leaves / 8) && !ca->pruning) {
    ca->leaf_writes = 0;
    ca->pruning = prune = 1;
  }
  uv_mutex_unlock(&ca->lock);
  if (prune) {
    leaves_prune(ca);
    uv_mutex_lock(&ca->lock);
    ca->pruning = 0;
    uv_mutex_unlock(&ca->lock);
  }
}

/* l from its file, else minted and written: any thread, no lock. *loaded says which. */
static int obtain(struct dduct_ca *ca, struct leaf *l, int *loaded) {
  int rc;
  *loaded = leaf_load(ca, l) == 0;
  if (*loaded) return 0;
  if ((rc = mint(ca, l)) != 0) return rc;
  leaf_save(ca, l);
  return 0;
}

/* cert_dir/leaves/, made like cert_dir (0700); NULL when it cannot be (leaves then live in
 * memory only). */
static void leaf_dir_open(struct dduct_ca *ca) {
  size_t n = strlen(ca->dir) + sizeof("leaves/");
  char *p = malloc(n);
  int rc;
  if (p == NULL) return;
  snprintf(p, n, "%sleaves/", ca->dir);
  if ((rc = make_dir(p)) != 0) {
    /* A read-only cert_dir (a Kubernetes Secret) is a setup of its own, not a fault. */
    LOG_INFO(MOD, "Minted certificates are kept in memory only: cannot create \"%s\" (%s)", p,
             dduct_strerror(rc));
    free(p);
    return;
  }
  ca->leaf_dir = p;
  leaves_prune(ca);
}

/* ---- the table: everything from here to the pool section runs under ca->lock ---- */

static void lru_unlink(struct dduct_ca *ca, struct leaf *l) {
  if (l->newer != NULL) l->newer->older = l->older;
  else ca->newest = l->older;
  if (l->older != NULL) l->older->newer = l->newer;
  else ca->oldest = l->newer;
  l->newer = l->older = NULL;
}

static void lru_push(struct dduct_ca *ca, struct leaf *l) {
  l->older = ca->newest;
  l->newer = NULL;
  if (ca->newest != NULL) ca->newest->newer = l;
  ca->newest = l;
  if (ca->oldest == NULL) ca->oldest = l;
}

static void put_locked(struct leaf *l) {
  if (--l->refs == 0 && !l->linked) leaf_free(l);
}

/* Out of the table; freed now, or by the last dduct__ca_leaf_put of a handshake using it. */
static void leaf_unlink(struct dduct_ca *ca, struct leaf *l) {
  struct leaf **pp = &ca->leaves[bucket_of(l->host)];
  while (*pp != l) pp = &(*pp)->next;
  *pp = l->next;
  lru_unlink(ca, l);
  l->linked = 0;
  ca->nleaves--;
  if (l->refs == 0) leaf_free(l);
}

/* Into the table and the LRU list as the newest; a leaf for the same host (a stale one, or one
 * another loop minted meanwhile) goes out. Full: the least recently used leaf makes room (never a
 * refusal: a client that minted many names must not stop others from being intercepted).
 * Returns how many leaves were dropped to make room (logged by the caller, outside the lock). */
static size_t link_leaf(struct dduct_ca *ca, struct leaf *l) {
  size_t b = bucket_of(l->host), dropped = 0;
  struct leaf *old;
  for (old = ca->leaves[b]; old != NULL; old = old->next)
    if (strcmp(old->host, l->host) == 0) break;
  if (old != NULL) leaf_unlink(ca, old);
  while (ca->nleaves >= ca->max_leaves && ca->oldest != NULL) {
    leaf_unlink(ca, ca->oldest);
    dropped++;
  }
  l->next = ca->leaves[b];
  ca->leaves[b] = l;
  l->linked = 1;
  lru_push(ca, l);
  ca->nleaves++;
  return dropped;
}

/* The cached leaf for normalised host h, made the most recent; NULL if there is none or it is
 * due for renewal. */
static struct leaf *cached(struct dduct_ca *ca, const char *h) {
  struct leaf *l;
  for (l = ca->leaves[bucket_of(h)]; l != NULL; l = l->next)
    if (strcmp(l->host, h) == 0) break;
  if (l == NULL || now() >= l->renew_at) return NULL;
  if (ca->newest != l) {
    lru_unlink(ca, l);
    lru_push(ca, l);
  }
  return l;
}

static void hand_out(struct leaf *l, struct dduct__leaf **ref, mbedtls_x509_crt **chain,
                     mbedtls_pk_context **key) {
  if (ref != NULL) {
    l->refs++;
    *ref = l;
  }
  *chain = &l->chain;
  *key = &l->key;
}

/* ---- end of the locked part ---- */

static void log_minted(const char *h, int loaded, const char *how, size_t dropped) {
  if (dropped > 0) LOG_DEBUG(MOD, "Leaf cache full: dropped %zu least recently used", dropped);
  if (loaded) LOG_DEBUG(MOD, "Loaded the certificate for \"%s\" from its file%s", h, how);
  else LOG_DEBUG(MOD, "Minted a certificate for \"%s\"%s", h, how);
}

int dduct__ca_leaf(struct dduct_ca *ca, const char *host, struct dduct__leaf **ref,
                   mbedtls_x509_crt **chain, mbedtls_pk_context **key) {
  char h[HOST_MAX + 3];
  struct leaf *l, *fresh;
  size_t dropped = 0;
  int rc, loaded;

  if (ref != NULL) *ref = NULL;
  if (ca == NULL || normalise(host, h, sizeof(h), 0) != 0) return DDUCT_EINVAL;
  uv_mutex_lock(&ca->lock);
  if ((l = cached(ca, h)) != NULL) hand_out(l, ref, chain, key);
  uv_mutex_unlock(&ca->lock);
  if (l != NULL) return 0;
  /* Read or minted outside the lock: other loops keep finding their leaves meanwhile. */
  if ((fresh = leaf_new(ca, h)) == NULL) return DDUCT_ENOMEM;
  if ((rc = obtain(ca, fresh, &loaded)) != 0) {
    leaf_free(fresh);
    return rc;
  }
  uv_mutex_lock(&ca->lock);
  if ((l = cached(ca, h)) == NULL) { /* else another loop minted it meanwhile: one leaf per host */
    dropped = link_leaf(ca, fresh);
    l = fresh;
    fresh = NULL;
  }
  hand_out(l, ref, chain, key);
  uv_mutex_unlock(&ca->lock);
  if (fresh == NULL) log_minted(h, loaded, "", dropped);
  leaf_free(fresh);
  return 0;
}

/* ---- minting on the pool ----
 * A leaf costs 2.6-8.8 ms to mint here (a P-256 key and the CA's RSA signature), during which the
 * loop served nobody; a burst of CONNECTs to one new host minted it once per connection until the
 * first was cached. Now the handshake waits while a pool thread mints, and every handshake for
 * that host, on whichever loop, waits for the same mint. What the pool thread touches: the new
 * leaf, the CA's key and certificate (read; mbedTLS 2.28 is built with MBEDTLS_THREADING_C, so the
 * RSA context's blinding values are under its own mutex, also against a mint on a loop), the RNG
 * (locked). The table is touched under ca->lock, in mint_done on the loop that started the mint;
 * each waiter is woken on its own loop through its async handle. */

static void mint_work(uv_work_t *w) {
  struct mint_job *j = DDUCT_CONTAINER_OF(w, struct mint_job, work);
  j->rc = obtain(j->ca, j->l, &j->loaded);
}

static void wait_closed(uv_handle_t *h) {
  free(DDUCT_CONTAINER_OF((uv_async_t *)h, struct dduct__leaf_wait, async));
}

/* On the waiting call's own loop: the mint is done (mint_done set status and l, then sent). */
static void wait_woken(uv_async_t *a) {
  struct dduct__leaf_wait *q = DDUCT_CONTAINER_OF(a, struct dduct__leaf_wait, async);
  dduct__leaf_cb cb = q->cb;
  void *arg = q->arg;
  struct leaf *l;
  int status;
  uv_mutex_lock(&q->ca->lock);
  l = q->l;
  status = q->status;
  q->l = NULL;
  uv_mutex_unlock(&q->ca->lock);
  uv_close((uv_handle_t *)a, wait_closed);
  if (l != NULL) cb(arg, 0, l, &l->chain, &l->key);
  else cb(arg, status != 0 ? status : DDUCT_ECRYPTO, NULL, NULL, NULL);
}

static void mint_done(uv_work_t *w, int status) {
  struct mint_job *j = DDUCT_CONTAINER_OF(w, struct mint_job, work);
  struct dduct_ca *ca = j->ca;
  struct mint_job **pp;
  struct dduct__leaf_wait *q;
  struct leaf *l = j->l;
  int rc = status != 0 ? DDUCT_ECRYPTO : j->rc, loaded = j->loaded;
  size_t dropped = 0;
  char host[HOST_MAX + 3];
  snprintf(host, sizeof(host), "%s", l->host);
  uv_mutex_lock(&ca->lock);
  for (pp = &ca->minting; *pp != j; pp = &(*pp)->next) {
  }
  *pp = j->next;
  if (rc == 0) dropped = link_leaf(ca, l);
  /* Every waiter, on whichever loop, gets its own hold and is woken on its loop. */
  while ((q = j->waiters) != NULL) {
    j->waiters = q->next;
    q->job = NULL;
    q->status = rc;
    if (rc == 0) {
      l->refs++;
      q->l = l;
    }
    uv_async_send(&q->async);
  }
  uv_mutex_unlock(&ca->lock);
  free(j);
  if (rc == 0) {
    log_minted(host, loaded, " (off the loop)", dropped);
  } else {
    LOG_WARN(MOD, "Cannot mint a certificate for \"%s\" (%d)", host, rc);
    leaf_free(l);
  }
}

int dduct__ca_leaf_async(struct dduct_ca *ca, uv_loop_t *loop, const char *host,
                         struct dduct__leaf **ref, mbedtls_x509_crt **chain,
                         mbedtls_pk_context **key, dduct__leaf_cb cb, void *arg,
                         struct dduct__leaf_wait **wait) {
  char h[HOST_MAX + 3];
  struct dduct__leaf_wait *q;
  struct mint_job *j;
  struct leaf *l;
  int rc = 0;

  *ref = NULL;
  *wait = NULL;
  if (ca == NULL || normalise(host, h, sizeof(h), 0) != 0) return DDUCT_EINVAL;
  uv_mutex_lock(&ca->lock);
  if ((l = cached(ca, h)) != NULL) {
    hand_out(l, ref, chain, key);
    uv_mutex_unlock(&ca->lock);
    return 0;
  }
  if ((q = calloc(1, sizeof(*q))) == NULL) {
    uv_mutex_unlock(&ca->lock);
    return DDUCT_ENOMEM;
  }
  /* On the caller's thread, for the caller's loop: the wake-up comes there. */
  if (uv_async_init(loop, &q->async, wait_woken) != 0) {
    free(q);
    q = NULL;
    rc = 1;
  }
  for (j = ca->minting; rc == 0 && j != NULL; j = j->next)
    if (strcmp(j->l->host, h) == 0) break;
  if (rc == 0 && j == NULL) {
    if ((j = calloc(1, sizeof(*j))) == NULL || (j->l = leaf_new(ca, h)) == NULL) {
      free(j);
      rc = DDUCT_ENOMEM;
    } else {
      j->ca = ca;
      if (uv_queue_work(loop, &j->work, mint_work, mint_done) != 0) {
        leaf_free(j->l);
        free(j);
        rc = 1;
      } else {
        j->next = ca->minting;
        ca->minting = j;
      }
    }
  }
  if (rc == 0) {
    q->job = j;
    q->ca = ca;
    q->cb = cb;
    q->arg = arg;
    q->next = j->waiters;
    j->waiters = q;
    *wait = q;
  }
  uv_mutex_unlock(&ca->lock);
  if (rc == 0) return DDUCT__CA_MINTING;
  if (q != NULL) uv_close((uv_handle_t *)&q->async, wait_closed);
  if (rc == 1) return dduct__ca_leaf(ca, h, ref, chain, key); /* no pool: mint here, as before */
  return rc;
}

void dduct__ca_leaf_cancel(struct dduct__leaf_wait *q) {
  struct dduct__leaf_wait **pp;
  if (q == NULL) return;
  uv_mutex_lock(&q->ca->lock);
  if (q->job != NULL) {
    for (pp = &q->job->waiters; *pp != q; pp = &(*pp)->next) {
    }
    *pp = q->next;
  } else if (q->l != NULL) { /* woken, not yet called back: its hold goes */
    put_locked(q->l);
    q->l = NULL;
  }
  uv_mutex_unlock(&q->ca->lock);
  uv_close((uv_handle_t *)&q->async, wait_closed); /* wait_woken never runs after this */
}

void dduct__ca_leaf_put(struct dduct__leaf *l) {
  struct dduct_ca *ca;
  if (l == NULL) return;
  ca = l->ca;
  uv_mutex_lock(&ca->lock);
  put_locked(l);
  uv_mutex_unlock(&ca->lock);
}

int dduct__ca_ec_ready(struct dduct_ca *ca) {
  mbedtls_pk_type_t t = mbedtls_pk_get_type(&ca->ca_crt.pk);
  if (t != MBEDTLS_PK_ECKEY && t != MBEDTLS_PK_ECDSA) return 0;
  return mbedtls_pk_ec(ca->ca_crt.pk)->grp.T != NULL;
}

size_t dduct__ca_leaf_count(struct dduct_ca *ca) {
  size_t n;
  if (ca == NULL) return 0;
  uv_mutex_lock(&ca->lock);
  n = ca->nleaves;
  uv_mutex_unlock(&ca->lock);
  return n;
}

void dduct_ca_free(struct dduct_ca *ca) {
  if (ca == NULL) return;
  if (ca->minting != NULL) { /* a pool thread may be signing with ca_key: leak rather than race */
    LOG_ERROR(MOD, "dduct_ca_free with a certificate still being minted: the CA is not freed "
                   "(run the loops until the proxies have closed first)");
    return;
  }
  for (size_t b = 0; b < LEAF_BUCKETS; b++) {
    while (ca->leaves[b] != NULL) {
      struct leaf *l = ca->leaves[b];
      ca->leaves[b] = l->next;
      leaf_free(l);
    }
  }
  for (size_t i = 0; i < ca->ndns; i++) free(ca->dns[i]);
  free(ca->dns);
  free(ca->ips);
  free(ca->ca_pem);
  mbedtls_x509_crt_free(&ca->server_chain);
  mbedtls_x509_crt_free(&ca->ca_crt);
  mbedtls_pk_free(&ca->server_key);
  mbedtls_pk_free(&ca->ca_key);
  uv_mutex_destroy(&ca->lock);
  free(ca->leaf_dir);
  free(ca->dir);
  free(ca);
}
