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
 * - Threads. A dduct_proxy, and everything it hands out, belongs to the thread running the
 *   loop it was created on. A dduct_store belongs to the loop it was opened on and to every
 *   loop attached with dduct_store_attach: each attached loop's thread uses it at once (one
 *   table, so one fill per key across them; see dduct_store_attach). A dduct_ca may be shared
 *   by proxies on any number of loops (its table of minted leaves is locked; dduct_ca_covers
 *   and dduct_ca_cert_pem only read): open it on any thread before handing it out, free it
 *   after every loop using it is done. A dduct_filter is read-only once given to a proxy and
 *   matched from any number of threads at once. dduct_log_set's callback may be called from
 *   any of these threads. A proxy with workers > 1 (struct dduct_proxy_options) runs its own
 *   threads: it uses its ca, store and filter, and calls the embedder's callbacks, from each
 *   of them.
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
  XX(EINTERNAL, -30018, "internal error")                                 \
  XX(EPROXY, -30019, "the upstream proxy refused the request")

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

/* module names the part of dduct speaking, in the names the original tool's log lines used
 * ("ssl_certs": the CA, "serve": the cache's files, "http_proxy": the plain listener and
 * connections, "tls_mitm": the TLS listener and interception, ...);
 * message is one line without a trailing newline, printable ASCII only: any other byte (peers'
 * bytes quoted in a message included) comes escaped as \xNN. Both are borrowed for the call. */
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
 * Immutable once handed to a proxy. dduct_filter_match is safe from any number of threads at
 * once, without a lock (each thread matches with scratch space of its own, freed when the
 * thread ends); dduct_filter_new, _add and _free from one thread, before or after matching. */
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
  const char *const *server_dns_sans; /* default: *.dduct.rs, *.docker.io, *.gcr.io,
                                       * *.githubusercontent.com, *.k8s.io, *.quay.io,
                                       * ghcr.io, quay.io */
  size_t server_dns_sans_count;
  const char *const *server_ip_sans;  /* default: {"127.0.0.1"} */
  size_t server_ip_sans_count;
  const char *client_cn;         /* default "client.dduct.rs" */
  const char *p12_pass;          /* default "dduct" */
  /* Minted leaves kept for intercepted hosts; the least recently used is dropped (and minted
   * again on its next use) when a new host needs room. 0: 4096. Also about the number of leaf
   * files kept in cert_dir/leaves/ (see dduct_ca_open). */
  size_t max_leaves;
  /* 1: a CA created now carries nameConstraints permitting exactly server_dns_sans (a "*.x"
   * entry permits x and its subdomains) and server_ip_sans, so its key cannot sign for any
   * other name; adding a name later means a new CA to distribute. Default 0. Every CA created
   * gets pathLenConstraint 0. */
  int ca_name_constraints;
};

/* Fill o with the defaults above (pointers to static storage). */
DDUCT_EXTERN void dduct_ca_options_init(struct dduct_ca_options *o);

/* Load or create ca.key ca.crt server.key server.crt server.p12 client.key client.crt client.p12
 * in cert_dir, in that order, logging `Read "path"` or `Write "path"` (module "ssl_certs") for
 * each. Keys are written 0600 and atomically. Missing server.* files are regenerated from the
 * existing CA. A corrupt or unreadable file fails with a message naming it; nothing is
 * overwritten. Blocking (key generation takes seconds at 3072 bits): call at start-up.
 * Leaves minted later for intercepted hosts are kept in cert_dir/leaves/ (0700; one file per
 * host named by the SHA-256 of its name, leaf and key, 0600) and read back, checked against this
 * CA, the host and the key, instead of minting again after a restart; a cert_dir where leaves/
 * cannot be made keeps them in memory only (logged at INFO). */
DDUCT_EXTERN int dduct_ca_open(const struct dduct_ca_options *o, struct dduct_ca **out, char *err,
                               size_t errlen);
/* 1 if host (a DNS name or an IP literal, no port) is covered by server_dns_sans ("*.x" matches
 * exactly one label) or server_ip_sans: such CONNECT targets are intercepted. */
DDUCT_EXTERN int dduct_ca_covers(const struct dduct_ca *ca, const char *host);
/* The CA certificate as PEM, NUL-terminated, owned by ca. Like dduct_ca_covers, safe from any
 * thread at once. */
DDUCT_EXTERN const char *dduct_ca_cert_pem(const struct dduct_ca *ca);
/* After every proxy using ca is freed and its loop has run to the end (a leaf still being minted
 * on the thread pool keeps its loop alive). */
DDUCT_EXTERN void dduct_ca_free(struct dduct_ca *ca);

/* ---- cache store -------------------------------------------------------------------------- */

/* The on-disk cache under one directory (file_dir). Entries are data files plus JSON sidecars;
 * a fill writes "*.part" and renames into place only when complete and verified. */
struct dduct_store;

struct dduct_store_stats {
  uint64_t hits;             /* requests answered from a complete or filling entry */
  uint64_t misses;           /* requests that started a fill */
  uint64_t fills_completed;
  uint64_t fills_discarded;  /* short body, digest mismatch, disk full, ... */
  uint64_t bytes_served;     /* body bytes sent to clients from the store */
  uint64_t bytes_fetched;    /* body bytes received from origins into the store */
  uint64_t entries;          /* complete entries indexed now (evictions, removals and
                              * invalidations take them off); counted as size_bytes is */
  uint64_t size_bytes;       /* data bytes of the complete entries indexed (all processes
                              * sharing dir; as far as known while the index loads) */
  uint64_t evictions;        /* entries this process evicted to keep within the budget */
  uint64_t bytes_evicted;
  int index_loaded;          /* 1 once the background index load finished */
};

/* How much of the disk the store may use, and how carefully it commits. */
/* When a hit is checked against its digest (a blob's sha256, or the digest its fill recorded in
 * the sidecar, by the algorithm its prefix names: see enum dduct_checksum): the whole body is
 * hashed as it is read and its last bytes go out only once they match; on a mismatch the
 * response is cut, the entry removed and fetched again next time. A sidecar digest this version
 * does not know (or none) is not checked. */
enum dduct_verify_hits {
  DDUCT_VERIFY_FIRST = 0,  /* the first full read after open and after any change to the file */
  DDUCT_VERIFY_ALWAYS = 1, /* every full read */
  DDUCT_VERIFY_NEVER = 2,  /* never (the fill's own check only) */
};

/* The digest a fill records for an entry that is not a content-addressed blob (a blob's digest
 * is always its sha256, its name). It only detects corruption of the file later (verify_hits,
 * dduct_store_verify): GMAC is a 128-bit checksum, GHASH under a fixed published key
 * (docs/cache.md), several times cheaper than SHA-256; it is not a MAC. */
enum dduct_checksum {
  DDUCT_CHECKSUM_GMAC = 0,   /* "gmac:<32 hex>" (default); sha256 on a CPU without the AES-NI
                              * and PCLMULQDQ dduct's GHASH needs (faster there) */
  DDUCT_CHECKSUM_SHA256 = 1, /* "sha256:<64 hex>", as earlier versions recorded for every entry */
};

struct dduct_store_options {
  uint64_t max_size;         /* budget in bytes for the data files under dir; 0: none (default) */
  uint64_t min_free;         /* bytes to keep free on dir's file system; 0: use min_free_percent */
  unsigned min_free_percent; /* used when min_free is 0: percent of the file system's size to keep
                              * free (0..99); default 10. Both 0: no free-space floor */
  int fsync;                 /* 1 (default): fsync data, sidecar and directory at each commit */
  enum dduct_verify_hits verify_hits; /* default DDUCT_VERIFY_FIRST */
  enum dduct_checksum checksum;       /* default DDUCT_CHECKSUM_GMAC */
};
DDUCT_EXTERN void dduct_store_options_init(struct dduct_store_options *o);

/* Create dir (0700) if missing and log `Files "dir"` (module "serve"). The index of complete
 * entries loads in the background on libuv's pool (removing "*.part" leftovers of dead
 * processes), so open returns at once whatever the number of entries. The store keeps
 * max_size and min_free by evicting entries (SIEVE, docs/cache.md); several processes sharing
 * dir keep one budget. o may be NULL (the defaults). The store is bound to loop (its handles
 * live there; more loops may use it: dduct_store_attach); file I/O runs on libuv's pool. */
DDUCT_EXTERN int dduct_store_open_with(uv_loop_t *loop, const char *dir,
                                       const struct dduct_store_options *o,
                                       struct dduct_store **out, char *err, size_t errlen);
/* dduct_store_open_with(loop, dir, NULL, ...). */
DDUCT_EXTERN int dduct_store_open(uv_loop_t *loop, const char *dir, struct dduct_store **out,
                                  char *err, size_t errlen);
DDUCT_EXTERN void dduct_store_stats(const struct dduct_store *s, struct dduct_store_stats *out);
/* Let the thread running loop use s too (s was opened on another loop). Call on loop's thread
 * before that thread's first use of s; every callback of work started from this thread then runs
 * on loop. dduct_store_detach(s, loop) on the same thread after the last use (it closes a
 * handle: run loop once more before closing it). The opening loop is attached by open.
 * 0, DDUCT_EINVAL (already attached), DDUCT_ENOMEM.
 * Every loop shares one table: a lookup on one loop follows a fill running on another, and a
 * reader there gets its bytes as they land. Work the store started from loop (a fill's last
 * writes and its commit) may still finish on loop after detach: run it until it has nothing
 * left. A lookup or reader waiting for another loop keeps its own loop alive. dduct_store_stats,
 * dduct_store_dir and the inspection calls below are safe from any thread. */
DDUCT_EXTERN int dduct_store_attach(struct dduct_store *s, uv_loop_t *loop);
DDUCT_EXTERN void dduct_store_detach(struct dduct_store *s, uv_loop_t *loop);
/* ---- inspection and purge (blocking: for tools and maintenance threads, never the loop
 * thread). Safe while dduct processes serve the same directory: removals take the sidecar first
 * and are journaled, and a running dduct stops serving a removed entry at once. */

/* One complete entry. Strings are borrowed for the callback. */
struct dduct_store_entry_info {
  const char *id;      /* "u/ab/<hex>" or "c/ab/<hex>": its place under dir */
  const char *url;     /* the request that filled it, without query string */
  const char *digest;  /* the sidecar's digest of the body: "sha256:<hex>" or "gmac:<hex>"
                        * (enum dduct_checksum); "" when it has none */
  uint64_t size;
  int64_t stored_at;   /* unix seconds */
  int64_t last_used;   /* unix seconds of the last recorded use, 0 none since stored */
};
/* Return 0 to go on, < 0 to stop with that error. */
typedef int (*dduct_store_entry_cb)(void *user_data, const struct dduct_store_entry_info *e);
typedef void (*dduct_store_problem_cb)(void *user_data, const struct dduct_store_entry_info *e,
                                       const char *problem, int removed);

/* Call cb for every complete entry. */
DDUCT_EXTERN int dduct_store_entries(struct dduct_store *s, dduct_store_entry_cb cb,
                                     void *user_data);
/* Remove the entries what names: a URL ("https://host/path", as the proxy keys it, or as a
 * sidecar records it), "sha256:<hex>" (a blob), or "re:<PCRE2>" matched against sidecar URLs.
 * cb (may be NULL) sees each one removed. Returns how many were removed (0: none matched), or
 * a negative error (DDUCT_EINVAL for an unparsable what, DDUCT_EPATTERN for a bad pattern). */
DDUCT_EXTERN int dduct_store_remove(struct dduct_store *s, const char *what,
                                    dduct_store_entry_cb cb, void *user_data);
/* Re-hash every data file: blobs against their names, others against the digest their sidecar
 * records, by the algorithm its prefix names (one this version does not know is not checked);
 * sizes against sidecars; data files without sidecars (older than an hour) and sidecars
 * without data are orphans. cb sees each problem; with repair, the entry is removed. Returns the
 * number of problems found, or a negative error. */
DDUCT_EXTERN int dduct_store_verify(struct dduct_store *s, int repair, dduct_store_problem_cb cb,
                                    void *user_data);
/* Evict by the store's policy (SIEVE, with the uses the journal records) until the complete
 * entries' data bytes are at most to. cb sees each entry removed; *bytes_after (may be NULL)
 * gets what is left. Returns how many were removed, or a negative error. */
DDUCT_EXTERN int dduct_store_prune(struct dduct_store *s, uint64_t to, dduct_store_entry_cb cb,
                                   void *user_data, uint64_t *bytes_after);

/* The directory, as given to open. Owned by s. */
DDUCT_EXTERN const char *dduct_store_dir(const struct dduct_store *s);
/* Free after every proxy using it has closed and every other loop has detached, on the
 * opening loop's thread. */
DDUCT_EXTERN void dduct_store_free(struct dduct_store *s);

/* ---- proxy -------------------------------------------------------------------------------- */

struct dduct_proxy;
struct dduct_access_record;

enum dduct_revalidate {
  DDUCT_REVALIDATE_NEVER = 0,  /* hits never contact the origin */
  DDUCT_REVALIDATE_ALWAYS = 1, /* a hit first asks the origin (HEAD, client's headers) */
};

struct dduct_proxy_options {
  /* Origins. */
  const char *system_ca_file;   /* default "/etc/ssl/certs/ca-certificates.crt" */
  const char *upstream_ca_file; /* extra PEM bundle trusted for origins; NULL: none */
  int upstream_insecure;        /* 1: origins' certificates are not verified (logged loudly) */
  const char *const *resolve;   /* "host:address" pins, like curl --resolve; IPv6 as [addr] */
  size_t resolve_count;
  /* Clients. */
  const char *const *allow_clients; /* CIDRs; default loopback and private ranges */
  size_t allow_clients_count;
  const uint16_t *connect_ports;    /* ports CONNECT may reach; default {443} */
  size_t connect_ports_count;
  int connect_any_port;             /* 1: CONNECT to any port */
  unsigned max_connections;         /* default 1024; beyond it new connections wait */
  /* Connections one client address may hold at once; past it new ones from that address are
   * closed at accept (so idle sockets from one host cannot lock everyone out). Default 256. */
  unsigned max_connections_per_client;
  /* Timeouts in milliseconds (0 keeps the default). */
  unsigned head_timeout_ms;         /* reading a request head; default 30 s (a sixth of it, 1 s
                                     * at least, for connections accepted while 3/4 of
                                     * max_connections are in use) */
  unsigned idle_timeout_ms;         /* idle keep-alive client connection; default 60 s */
  unsigned tunnel_idle_timeout_ms;  /* blind tunnel with no traffic either way; default 600 s */
  unsigned connect_timeout_ms;      /* DNS + TCP + TLS to an origin; default 10 s */
  unsigned upstream_timeout_ms;     /* origin silent while we wait for bytes; default 60 s */
  unsigned shutdown_grace_ms;       /* in-flight transfers after close; default 10 s */
  /* Cache. */
  enum dduct_revalidate revalidate; /* default NEVER */
  /* Query parameters left out of cache keys (keys hold the query by default), as rules
   * "HOSTGLOB:NAME[,NAME...]": for a host matching the glob (fnmatch, case-insensitive), the
   * named parameters are dropped from the key ('*' as the one NAME: the whole query); for
   * origins whose URLs carry per-request signatures. NULL: none. */
  const char *const *query_ignore;
  size_t query_ignore_count;
  int stale_if_error;               /* 1 (default): with ALWAYS, a hit whose revalidation cannot
                                     * reach the origin (connect, TLS, timeout, 5xx) is served
                                     * from the cache with a WARN; 0: the error passes through */
  /* Per-request veto over caching (NULL: the filters alone decide). Called on the loop thread
   * serving the request (with workers > 1: any of the loops' threads, several at once) for
   * each GET/HEAD whose path matched the filters, with borrowed strings (path as sent, query
   * included); return 1 to cache, 0 to forward the request uncached. For full control, use a
   * filter of "^/" and decide here. */
  int (*cacheable_cb)(void *user_data, const char *method, int https, const char *host,
                      uint16_t port, const char *path);
  void *cacheable_data;
  /* Beyond one node (docs/cluster.md). */
  const char *upstream_proxy; /* "http://[user:pass@]host:port" or "https://...": every origin
                                 connection and blind tunnel goes through it (CONNECT for https
                                 and tunnels, absolute-form for http); NULL: direct */
  const char *const *no_upstream_proxy; /* host globs ("*.corp.example", ".x", "localhost", "*")
                                           and CIDRs that bypass upstream_proxy */
  size_t no_upstream_proxy_count;
  const char *const *parents; /* "https://host:port" of parent dducts: cacheable misses go to the
                                 one the cache key's rendezvous hash picks */
  size_t parents_count;
  const char *parent_ca_file; /* PEM trusted for the parents' listeners (with the system
                                 bundle); NULL: upstream_ca_file's */
  unsigned parent_down_ms;    /* a parent that failed is skipped this long; default 30 s */
  /* Observability. Called on the loop thread serving the request (with workers > 1: any of the
   * loops' threads, several at once) once per finished request (tunnels and intercepted
   * CONNECTs included) with a record borrowed for the call; NULL: no records are made. */
  void (*access_cb)(void *user_data, const struct dduct_access_record *r);
  void *access_data;
  /* Event loops serving the listeners. 0 and 1 (default): the loop given to dduct_proxy_new
   * only, no threads. N > 1: that loop plus N-1 threads started by dduct_proxy_new, each running
   * its own loop with its own connections, origin pool and TLS state; every listener is bound
   * on each loop with SO_REUSEPORT and the kernel spreads new connections over them (the admin
   * listener stays on the caller's loop). ca, store and filter are then used from every loop's
   * thread, and access_cb, cacheable_cb and the log callback run on any of those threads, for
   * any of them at once. max_connections and max_connections_per_client count the whole
   * process (a loop at the limit takes its next connection when one of its own ends, or within
   * 50 ms of one ending on another loop). */
  unsigned workers;
  /* 0 (default): an answer the origin gave one client (the request that produced it carried
   * Authorization or Cookie and the answer is not Cache-Control: public or s-maxage, or the
   * answer says private) is served from the cache only to a request for the same scheme, host
   * and port, after a HEAD with that request's own headers agrees, and never stale. 1: such
   * answers are served to every client like any other (a single-tenant cache; docs/cache.md
   * says what that risks). Cache-Control: no-store answers are never stored either way. */
  int share_private;
};

/* Fill o with the defaults above (pointers to static storage). */
DDUCT_EXTERN void dduct_proxy_options_init(struct dduct_proxy_options *o);

/* Create a proxy on loop. ca is required (interception, tls listeners); store and filter may be
 * NULL (no caching). ca, store and filter are borrowed and must outlive the proxy. Option
 * strings are copied. Fails with a message for a bad CIDR, resolve entry or CA file. */
DDUCT_EXTERN int dduct_proxy_new(uv_loop_t *loop, const struct dduct_proxy_options *o,
                                 struct dduct_ca *ca, struct dduct_store *store,
                                 struct dduct_filter *filter, struct dduct_proxy **out,
                                 char *err, size_t errlen);

enum dduct_listen_kind {
  DDUCT_LISTEN_TCP = 0, /* plain HTTP proxy: logs `Listening on addr` as "http_proxy" */
  DDUCT_LISTEN_TLS = 1, /* TLS first (server.crt), then the same protocol; "tls_mitm" */
  DDUCT_LISTEN_ADMIN = 2, /* plain HTTP/1.1 admin surface, never a proxy: GET /metrics, /stats,
                           * /healthz, /ca.crt and / (status page); allow_clients applies;
                           * logs `Admin listening on addr` as "admin" */
};

/* Bind and listen on "a.b.c.d:port" or "[v6]:port". May be called several times. */
DDUCT_EXTERN int dduct_proxy_listen(struct dduct_proxy *p, enum dduct_listen_kind kind,
                                    const char *addr, char *err, size_t errlen);

/* Stop accepting, let in-flight transfers finish for shutdown_grace_ms, close everything, then
 * call cb (may be NULL) from the loop. Free the proxy in or after cb. */
typedef void (*dduct_proxy_close_cb)(struct dduct_proxy *p, void *user_data);
DDUCT_EXTERN void dduct_proxy_close(struct dduct_proxy *p, dduct_proxy_close_cb cb,
                                    void *user_data);
DDUCT_EXTERN void dduct_proxy_free(struct dduct_proxy *p);

struct dduct_proxy_stats {
  uint64_t connections_accepted;
  uint64_t connections_active;
  uint64_t requests;        /* HTTP requests served (all routes) */
  uint64_t tunnels;         /* blind CONNECT tunnels */
  uint64_t intercepts;      /* intercepted CONNECTs */
  uint64_t errors;          /* answers 4xx/5xx generated by the proxy itself */
  uint64_t upstream_connects;
  uint64_t upstream_reuses; /* requests sent on a pooled keep-alive origin connection */
};
/* On the proxy's loop thread. With workers > 1 each worker's loop copies its own figures while
 * the caller waits (a round trip per worker, as long as that loop's current turn): not for every
 * turn of a loop (see dduct_proxy_connections), and never from access_cb or cacheable_cb, which
 * may run on a worker's thread. */
DDUCT_EXTERN void dduct_proxy_stats(const struct dduct_proxy *p, struct dduct_proxy_stats *out);
/* Live client connections on every loop of p (dduct_proxy_stats' connections_active): one
 * atomic read, no wait for the workers' loops. Callable from any thread while p lives. */
DDUCT_EXTERN uint64_t dduct_proxy_connections(const struct dduct_proxy *p);

/* ---- metrics ------------------------------------------------------------------------------ */

/* Every figure the admin listener serves is also a library call: read them from the proxy's
 * loop thread (the loop given to dduct_proxy_new; plain counters, nothing is locked; a full
 * read costs microseconds). With workers > 1 each call sums every loop's figures: a round trip
 * to each worker's loop, as dduct_proxy_stats; never from access_cb or cacheable_cb. */

enum dduct_route {
  DDUCT_ROUTE_CACHE = 0,     /* GET/HEAD matched by the filters */
  DDUCT_ROUTE_FORWARD = 1,   /* forwarded uncached */
  DDUCT_ROUTE_TUNNEL = 2,    /* blind CONNECT tunnel */
  DDUCT_ROUTE_INTERCEPT = 3, /* CONNECT answered by dduct's TLS (the requests inside count apart) */
  DDUCT_ROUTE_LOCAL = 4,     /* answered by dduct itself: admin pages, /ca.crt, refusals */
  DDUCT_ROUTE_COUNT = 5,
};
/* "cache", "forward", "tunnel", "intercept", "local". */
DDUCT_EXTERN const char *dduct_route_name(enum dduct_route r);

enum dduct_cache_status {
  DDUCT_CACHE_NONE = 0,        /* local answers, intercepted CONNECTs */
  DDUCT_CACHE_HIT = 1,         /* served from a complete entry */
  DDUCT_CACHE_MISS = 2,        /* started a fill */
  DDUCT_CACHE_COLLAPSED = 3,   /* joined a fill in flight */
  DDUCT_CACHE_REVALIDATED = 4, /* served from the cache after the origin confirmed it */
  DDUCT_CACHE_STALE = 5,       /* served from the cache because the origin failed */
  DDUCT_CACHE_BYPASS = 6,      /* not cacheable, or the cache handed it on: forwarded */
  DDUCT_CACHE_TUNNEL = 7,      /* blind tunnel */
  DDUCT_CACHE_STATUS_COUNT = 8,
};
/* "-", "HIT", "MISS", "COLLAPSED", "REVALIDATED", "STALE", "BYPASS", "TUNNEL". */
DDUCT_EXTERN const char *dduct_cache_status_name(enum dduct_cache_status s);

/* One finished request, for access logs. Strings are borrowed for the callback. */
struct dduct_access_record {
  int64_t time_us;          /* wall clock (unix microseconds) when the request head was routed */
  const char *client;       /* "address:port" */
  const char *method;
  const char *url;          /* scheme://host[:port]/path?query (never credentials); for CONNECT
                             * "host:port"; the target as sent when it could not be parsed */
  int status;               /* status sent to the client (0: none, the connection was cut) */
  uint64_t bytes;           /* body bytes sent to the client (both directions for tunnels) */
  uint64_t duration_us;     /* routed .. response complete */
  enum dduct_route route;
  enum dduct_cache_status cache;
  int origin_status;        /* the origin's status for this request, 0 when none was asked */
  int64_t origin_us;        /* request start .. origin's response head; -1 when none */
};

/* r as one JSON object plus '\n' into buf[len] (NUL-terminated). Returns the line's length,
 * or the length it needs (>= len: nothing usable was written), like snprintf. */
DDUCT_EXTERN size_t dduct_access_record_json(const struct dduct_access_record *r, char *buf,
                                             size_t len);

enum dduct_metric_type {
  DDUCT_METRIC_COUNTER = 0,
  DDUCT_METRIC_GAUGE = 1,
  DDUCT_METRIC_HISTOGRAM = 2,
};

struct dduct_histogram {
  size_t nbounds;        /* upper bounds, increasing; a +Inf bucket follows them */
  const double *bounds;
  const uint64_t *counts; /* nbounds + 1 counts, per bucket (not cumulative) */
  uint64_t count;
  double sum;
};

/* One sample: samples of a family come one after another. Everything is borrowed for the
 * callback. */
struct dduct_metric {
  const char *name; /* family, Prometheus style: "dduct_requests_total" */
  const char *help;
  enum dduct_metric_type type;
  size_t nlabels;
  const char *const *label_names;
  const char *const *label_values;
  double value;                        /* counters and gauges */
  const struct dduct_histogram *hist;  /* histograms */
};

/* Also walk the process_* figures (CPU, RSS, open fds, start time: Linux /proc). */
#define DDUCT_METRICS_PROCESS 1u

/* Call cb for every sample of p (and its store); a non-zero return from cb stops the walk and
 * is returned. dduct_requests_total and dduct_upstream_requests_total (one sample per status
 * code seen) show a label set once it is non-zero; every other family shows all of its label
 * sets, zeros included. */
typedef int (*dduct_metric_cb)(void *user_data, const struct dduct_metric *m);
DDUCT_EXTERN int dduct_proxy_metrics_each(const struct dduct_proxy *p, unsigned flags,
                                          dduct_metric_cb cb, void *user_data);

/* The same as Prometheus text exposition 0.0.4, or as a JSON document (the /stats body: the
 * metrics plus fills in flight, recent errors, the last hour per minute and the top entries).
 * *out is malloc'd and NUL-terminated (free() it), *len its length. 0 or DDUCT_ENOMEM. */
DDUCT_EXTERN int dduct_proxy_metrics_prometheus(const struct dduct_proxy *p, unsigned flags,
                                                char **out, size_t *len);
DDUCT_EXTERN int dduct_proxy_stats_json(const struct dduct_proxy *p, unsigned flags, char **out,
                                        size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* DDUCT_H */
