/* Internal CA interface for the proxy engine. Not installed.
 * Every pointer returned here is owned by the CA and stays valid until dduct_ca_free(); the
 * caller must not modify or free it. Threads: proxies on several loops share one CA, so every
 * call here may run on any loop thread at once (the leaf table, its LRU list, the holds and the
 * mints in flight are under the CA's lock; the rest is written by dduct_ca_open only). Chains and
 * keys handed out are only read afterwards, so handshakes on several threads may use one leaf at
 * once. dduct_ca_free runs after every loop using the CA is done. */
#ifndef DDUCT_CA_H
#define DDUCT_CA_H

#include <time.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <uv.h>

#include "dduct.h"

/* The static server identity for the tls_bind listener: *chain is server.crt followed by
 * ca.crt, *key is server.key. Returns 0 (never fails on an opened CA). */
int dduct__ca_server_identity(struct dduct_ca *ca, mbedtls_x509_crt **chain,
                              mbedtls_pk_context **key);

/* A leaf certificate for exactly host (DNS name -> dNSName SAN, IP literal -> iPAddress SAN,
 * CN = host): ECDSA P-256 key, signed by the CA with SHA-256, extendedKeyUsage serverAuth,
 * subject/authority key identifiers, valid from now - 1 day to now + 365 days (capped at the
 * CA's notAfter), random serial. Read from cert_dir/leaves/ (if a valid file for the host is there)
 * or minted (a few ms, then written there) on first use, and cached; later calls for the
 * same normalised host return the same pointers until the leaf is within 30 days of its end
 * (then a new one is minted: a long-running process never presents an expired leaf) or was
 * dropped from the cache. The cache holds max_leaves (dduct_ca_options, default
 * DDUCT__CA_MAX_LEAVES) leaves and drops the least recently used one to make room: it never
 * refuses a host. host may carry upper case or a trailing dot (normalised), must not carry a
 * port; IPv6 without brackets (brackets are accepted and stripped). *chain is leaf then CA cert.
 * With ref != NULL the leaf is held (*ref) until dduct__ca_leaf_put(*ref): chain and key stay
 * valid that long even if the cache drops it (a handshake holds its leaf). With ref == NULL
 * they are valid only until the next call on this CA from any thread: tests and single-loop
 * callers only. Mints on the calling thread (the loop waits); two loops asking at once for a
 * host not cached may both mint, and one leaf is kept and handed to both.
 * Returns 0, DDUCT_EINVAL for an invalid host, DDUCT_ENOMEM or DDUCT_ECRYPTO. */
#define DDUCT__CA_MAX_LEAVES 4096
struct dduct__leaf;
int dduct__ca_leaf(struct dduct_ca *ca, const char *host, struct dduct__leaf **ref,
                   mbedtls_x509_crt **chain, mbedtls_pk_context **key);
/* The same leaf without minting on the loop: if it is cached (and not due for renewal) it is held
 * and returned now, as dduct__ca_leaf with a ref does (0). Otherwise it is minted on libuv's
 * thread pool (DDUCT__CA_MINTING, *wait set): cb(arg, 0, ref, chain, key) runs later on loop (the
 * caller's, which must be the loop of the calling thread) with the leaf held for the caller
 * (release with dduct__ca_leaf_put), or cb(arg, error, NULL, NULL, NULL). Every call for a host
 * while its mint runs waits for that one mint, whichever loop started it: a waiter on loop B of a
 * mint started on loop A is woken on B (each wait has an async handle on its caller's loop).
 * Before cb has run, dduct__ca_leaf_cancel(*wait) on the caller's thread withdraws the call (cb
 * never runs; the mint goes on and is cached). A mint keeps the loop that started it alive, a wait
 * its own loop; dduct_ca_free refuses (leaks, logs) while a mint is pending.
 * Returns 0, DDUCT__CA_MINTING, DDUCT_EINVAL for an invalid host or DDUCT_ENOMEM. */
#define DDUCT__CA_MINTING 1
struct dduct__leaf_wait;
typedef void (*dduct__leaf_cb)(void *arg, int status, struct dduct__leaf *ref,
                               mbedtls_x509_crt *chain, mbedtls_pk_context *key);
int dduct__ca_leaf_async(struct dduct_ca *ca, uv_loop_t *loop, const char *host,
                         struct dduct__leaf **ref, mbedtls_x509_crt **chain,
                         mbedtls_pk_context **key, dduct__leaf_cb cb, void *arg,
                         struct dduct__leaf_wait **wait);
void dduct__ca_leaf_cancel(struct dduct__leaf_wait *wait);
/* Release a hold taken by dduct__ca_leaf or _async, from any thread; NULL is ignored. */
void dduct__ca_leaf_put(struct dduct__leaf *ref);
/* Tests only: seconds added to the CA's clock (leaf renewal without waiting a year). */
extern time_t dduct__ca_clock_skew;
/* Tests: 1 when the CA certificate's key is EC and its group's table of multiples of G is built
 * (leaf files are checked against that key on several threads at once). */
int dduct__ca_ec_ready(struct dduct_ca *ca);
/* Leaves in the cache now (for tests). */
size_t dduct__ca_leaf_count(struct dduct_ca *ca);

/* Normalise host into out[outlen]: lower-case, strip one trailing dot, strip [] around an IPv6
 * literal; IP literals come out in canonical text (IPv4-mapped IPv6 as IPv4). Rejects empty or
 * overlong (> 253) names, labels over 63, empty labels, characters outside [a-z0-9_-.] for DNS
 * names, ports, and wildcards. Returns 0 or DDUCT_EINVAL. Exposed for tests. */
int dduct__ca_host_normalise(const char *host, char *out, size_t outlen);

#endif
