/* The cache's body digests ("digest" in a sidecar): SHA-256 for content-addressed blobs (the digest
 * is the blob's name), and for every other entry a 128-bit checksum against corruption on disk,
 * GMAC under a fixed, published key (docs/cache.md): the AES-128-GCM tag of decrypting the body
 * (no AAD) under K0 and IV0 below. It is not a MAC: anyone can compute it. It costs a GHASH, one
 * carry-less multiply per 16 bytes, where SHA-256 costs 64 rounds per 64. Internal. */
#ifndef DDUCT_CHECKSUM_H
#define DDUCT_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#include "aesgcm.h"
#include "sha256.h"

/* The fixed key and IV: ASCII, published in docs/cache.md; changing either changes every
 * "gmac:" digest (a new algorithm name would be needed). */
#define DDUCT__GMAC_K0 "dduct-checksum-1" /* 16 bytes: AES-128 */
#define DDUCT__GMAC_IV0 "dduct-gmac-1"    /* 12 bytes: J0 = IV0 || 0x00000001 */

/* A streaming GMAC-K0. Plain data: no allocation, nothing to free, may be copied; one thread at
 * a time. */
struct dduct__gmac {
  struct dduct__aesgcm key; /* K0 for aesgcm.c's GHASH; impl NONE: the portable GHASH */
  unsigned char s[16];      /* GHASH state, the standard's byte order */
  unsigned char block[16];  /* the partial block: total % 16 bytes */
  uint64_t total;
};

/* Starts with aesgcm.c's implementation in effect (dduct__aesgcm_best, or the one forced by
 * dduct__aesgcm_use; DDUCT_AESGCM=off in the environment turns it off), else the portable one.
 * Cannot fail. */
void dduct__gmac_init(struct dduct__gmac *g);
/* Starts with the portable GHASH whatever the CPU (for tests and bench). */
void dduct__gmac_init_portable(struct dduct__gmac *g);
/* Any chunk sizes, any alignment; data may be NULL when len is 0. */
void dduct__gmac_update(struct dduct__gmac *g, const void *data, size_t len);
/* The tag; g must be initialised again before it is reused. */
void dduct__gmac_final(struct dduct__gmac *g, unsigned char tag[16]);
/* "portable", "aesni" or "vaes-avx512". */
const char *dduct__gmac_impl_name(const struct dduct__gmac *g);

enum dduct__sum_alg {
  DDUCT__SUM_NONE,   /* nothing to compute or check: final gives "" */
  DDUCT__SUM_SHA256, /* "sha256:<64 lowercase hex>" */
  DDUCT__SUM_GMAC,   /* "gmac:<32 lowercase hex>" */
};

#define DDUCT__SUM_MAX 72 /* bytes of the longest digest string with its NUL */

/* A body digest of either algorithm, so the store does not care which. Plain data, as above. */
struct dduct__sum {
  enum dduct__sum_alg alg;
  union {
    struct dduct__sha256 sha;
    struct dduct__gmac gmac;
  } u;
};

void dduct__sum_init(struct dduct__sum *s, enum dduct__sum_alg alg);
void dduct__sum_update(struct dduct__sum *s, const void *data, size_t len);
/* "alg:hex" to out; s must be initialised again before it is reused. */
void dduct__sum_final(struct dduct__sum *s, char out[DDUCT__SUM_MAX]);
/* The algorithm a new ordinary entry's digest is made with when want is asked for: want, except
 * gmac where aesgcm.c has no GHASH for this CPU (or DDUCT_AESGCM=off): there sha256, as
 * mbedTLS's portable SHA-256 runs about twice the portable GHASH here. */
enum dduct__sum_alg dduct__sum_for_fill(enum dduct__sum_alg want);
/* The algorithm a stored digest string names when it is well formed (its prefix and exactly
 * its number of lowercase hex digits), else DDUCT__SUM_NONE (NULL, "", an unknown prefix). */
enum dduct__sum_alg dduct__sum_alg_of(const char *digest);
/* "sha256" or "gmac" ("none"), as in digests and in [cache] checksum. */
const char *dduct__sum_alg_name(enum dduct__sum_alg alg);

#endif
