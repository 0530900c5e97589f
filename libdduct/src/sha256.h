/* SHA-256 (FIPS 180-4) for the cache's fill digest: the x86-64 SHA extensions when the CPU has
 * them (several times mbedTLS's portable C), mbedTLS's block function otherwise. Internal. */
#ifndef DDUCT_SHA256_H
#define DDUCT_SHA256_H

#include <stddef.h>
#include <stdint.h>

enum dduct__sha256_impl {
  DDUCT__SHA256_PORTABLE, /* mbedtls_internal_sha256_process, one block at a time */
  DDUCT__SHA256_SHANI,    /* SHA-NI: sha256rnds2/msg1/msg2 (x86-64 only) */
};

/* Incremental state. Plain data: no allocation, nothing to free, may be copied; one thread at a
 * time. */
struct dduct__sha256 {
  uint32_t state[8];
  uint64_t total;            /* bytes hashed so far; total % 64 of them wait in block */
  unsigned char block[64];   /* the partial block */
  enum dduct__sha256_impl impl;
};

/* Starts a hash with the fastest implementation this CPU runs (chosen once per process; the
 * environment variable DDUCT_SHA256=portable forces the portable one). Cannot fail. */
void dduct__sha256_init(struct dduct__sha256 *s);
/* Starts a hash with the given implementation if this CPU runs it, else the portable one;
 * returns the one chosen (for tests and bench/sha-speed). */
enum dduct__sha256_impl dduct__sha256_init_impl(struct dduct__sha256 *s,
                                                enum dduct__sha256_impl impl);
/* Hashes len bytes at data (any alignment; data may be NULL when len is 0). */
void dduct__sha256_update(struct dduct__sha256 *s, const void *data, size_t len);
/* Writes the digest to out; s must be initialised again before it is reused. */
void dduct__sha256_final(struct dduct__sha256 *s, unsigned char out[32]);
/* One shot: out = SHA-256(data[0..len)). */
void dduct__sha256(const void *data, size_t len, unsigned char out[32]);
/* The implementation dduct__sha256_init picks, and its name ("sha-ni" or "portable"). */
enum dduct__sha256_impl dduct__sha256_best(void);
const char *dduct__sha256_impl_name(enum dduct__sha256_impl impl);

#endif
