/* libdduct: a caching man-in-the-middle HTTP(S) proxy on libuv.
 *
 * Conventions (they hold for every declaration below):
 * - Functions return 0 or a negative error: a DDUCT_E* code, or a libuv code (UV_E*, negative
 *   errno) for system errors. dduct_strerror()/dduct_err_name() name both kinds.
 * - Objects are opaque. x_new/x_open create, x_free destroys and is safe on NULL.
 * - Strings passed in are copied unless stated otherwise; pointers handed to callbacks are
 *   borrowed and valid only during the callback.
 * - Functions that can fail with a detail a human needs take `char *err, size_t errlen`: on
 *   failure a NUL-terminated one-line message is written there (err may be NULL).
 * - The embedder owns the uv_loop_t; every object bound to a loop is used from that loop's thread.
 */
#ifndef DDUCT_H
#define DDUCT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DDUCT_EXTERN __attribute__((visibility("default")))
#else
#define DDUCT_EXTERN
#endif

/* ---- version ------------------------------------------------------------------------------ */

#define DDUCT_VERSION_MAJOR 0
#define DDUCT_VERSION_MINOR 1
#define DDUCT_VERSION_PATCH 0
#define DDUCT_VERSION_HEX \
  ((DDUCT_VERSION_MAJOR << 16) | (DDUCT_VERSION_MINOR << 8) | DDUCT_VERSION_PATCH)

/* "0.1.0": the version of the library actually linked. */
DDUCT_EXTERN const char *dduct_version(void);

/* ---- errors ------------------------------------------------------------------------------- */

/* Codes are never renumbered; new ones are appended. They live far below libuv's range. */
#define DDUCT_ERRNO_MAP(XX)                                                \
  XX(EINVAL, -30001, "invalid argument")                                   \
  XX(ENOMEM, -30002, "out of memory")                                      \
  XX(ECONFIG, -30003, "invalid configuration")                             \
  XX(ECORRUPT, -30004, "file is corrupt or not in the expected format")    \
  XX(ECRYPTO, -30005, "cryptographic operation failed")                    \
  XX(EPATTERN, -30006, "invalid filter pattern")                           \
  XX(EUNSAFE, -30007, "path would leave its directory")                    \
  XX(ETLS, -30008, "TLS failure")                                          \
  XX(EVERIFY, -30009, "certificate verification failed")                   \
  XX(EPROTO, -30010, "HTTP protocol error")                                \
  XX(ETOOBIG, -30011, "too large")                                         \
  XX(ECLOSED, -30012, "object is closing or closed")                       \
  XX(EDIGEST, -30013, "content does not match its digest")                 \
  XX(ESHORT, -30014, "body ended before its announced length")             \
  XX(ELOOP, -30015, "request would loop back into the proxy")              \
  XX(EDENIED, -30016, "not allowed")                                       \
  XX(EAGAIN, -30017, "try again later")                                    \
  XX(EINTERNAL, -30018, "internal error")

enum dduct_errno {
#define XX(name, code, msg) DDUCT_##name = code,
  DDUCT_ERRNO_MAP(XX)
#undef XX
};

/* A static string for any error this library returns (including libuv codes). */
DDUCT_EXTERN const char *dduct_strerror(int err);
/* "DDUCT_ECORRUPT", "UV_ECONNREFUSED", ... */
DDUCT_EXTERN const char *dduct_err_name(int err);

/* ---- logging ------------------------------------------------------------------------------ */

enum dduct_log_level {
  DDUCT_LOG_OFF = 0,
  DDUCT_LOG_ERROR = 1,
  DDUCT_LOG_WARN = 2,
  DDUCT_LOG_INFO = 3,
  DDUCT_LOG_DEBUG = 4,
  DDUCT_LOG_TRACE = 5,
};

/* module is the seed's module name ("ssl_certs", "serve", "http_proxy", "tls_mitm", ...);
 * message is one line without a trailing newline. Both are borrowed for the call. */
typedef void (*dduct_log_cb)(void *user_data, enum dduct_log_level level, const char *module,
                             const char *message);

/* Process-wide: messages at or below `max` go to cb (NULL: dropped). Set it before creating
 * objects; the callback may be called from any loop thread using libdduct. Default: OFF. */
DDUCT_EXTERN void dduct_log_set(enum dduct_log_level max, dduct_log_cb cb, void *user_data);
DDUCT_EXTERN enum dduct_log_level dduct_log_level(void);
/* "error", "warn", "info", "debug", "trace" <-> level; returns -1 for an unknown name. */
DDUCT_EXTERN int dduct_log_level_parse(const char *name);
DDUCT_EXTERN const char *dduct_log_level_name(enum dduct_log_level level);

/* ---- filter set --------------------------------------------------------------------------- */

/* An ordered set of PCRE2 patterns matched against URL paths (JIT-compiled where available).
 * Immutable once handed to a proxy. Matching uses per-pattern scratch space: match from one
 * thread at a time. */
struct dduct_filter;

DDUCT_EXTERN int dduct_filter_new(struct dduct_filter **out);
/* Compile and append one pattern. On a syntax error returns DDUCT_EPATTERN with a message
 * naming the pattern, the offset and PCRE2's reason. */
DDUCT_EXTERN int dduct_filter_add(struct dduct_filter *f, const char *pattern, char *err,
                                  size_t errlen);
/* 1 if any pattern matches path[0..len), 0 if none, negative on a matching error. */
DDUCT_EXTERN int dduct_filter_match(const struct dduct_filter *f, const char *path, size_t len);
DDUCT_EXTERN size_t dduct_filter_count(const struct dduct_filter *f);
DDUCT_EXTERN void dduct_filter_free(struct dduct_filter *f);

/* ---- certificate authority ---------------------------------------------------------------- */

struct dduct_ca;

struct dduct_ca_options {
  const char *cert_dir;          /* created 0700 if missing; default "/var/tmp/dduct/certs/" */
  unsigned rsa_key_bits;         /* default 3072 */
  unsigned days_from_now;        /* default 3072 */
  const char *ca_cn;             /* default "dduct" */
  const char *server_cn;         /* default "*.dduct.rs" */
  const char *const *server_dns_sans; /* default: the seed's eight names */
  size_t server_dns_sans_count;
  const char *const *server_ip_sans;  /* default: {"127.0.0.1"} */
  size_t server_ip_sans_count;
  const char *client_cn;         /* default "client.dduct.rs" */
  const char *p12_pass;          /* default "dduct" */
};

/* Fill o with the defaults above (pointers to static storage). */
DDUCT_EXTERN void dduct_ca_options_init(struct dduct_ca_options *o);

/* Load or create ca.key ca.crt server.key server.crt server.p12 client.key client.crt client.p12
 * in cert_dir, in that order, logging `Read "path"` or `Write "path"` (module "ssl_certs") for
 * each. Keys are written 0600 and atomically. Missing server.* files are regenerated from the
 * existing CA. A corrupt or unreadable file fails with a message naming it; nothing is
 * overwritten. Blocking (key generation takes seconds at 3072 bits): call at start-up. */
DDUCT_EXTERN int dduct_ca_open(const struct dduct_ca_options *o, struct dduct_ca **out, char *err,
                               size_t errlen);
/* 1 if host (a DNS name or an IP literal, no port) is covered by server_dns_sans ("*.x" matches
 * exactly one label) or server_ip_sans: such CONNECT targets are intercepted. */
DDUCT_EXTERN int dduct_ca_covers(const struct dduct_ca *ca, const char *host);
/* The CA certificate as PEM, NUL-terminated, owned by ca. */
DDUCT_EXTERN const char *dduct_ca_cert_pem(const struct dduct_ca *ca);
DDUCT_EXTERN void dduct_ca_free(struct dduct_ca *ca);

#ifdef __cplusplus
}
#endif

#endif /* DDUCT_H */
