/* aesgcm.h: AES-GCM (NIST SP 800-38D; 128- and 256-bit keys for TLS, 192 too) for TLS 1.2 bulk records (RFC 5288),
 * with AES-NI + PCLMULQDQ, or VAES + VPCLMULQDQ on AVX-512, chosen once from CPUID. There is no
 * portable implementation: without AES-NI, table-free AES in C is several times slower than
 * mbedTLS's (whose T-tables are indexed by secret data), so dduct__aesgcm_init fails and the
 * caller leaves the records to mbedTLS. Internal. Thread-safe (a key is read-only after init). */
#ifndef DDUCT_AESGCM_H
#define DDUCT_AESGCM_H

#include <stddef.h>

/* Ordered: each one runs on every CPU that runs the next. */
enum dduct__aesgcm_impl {
  DDUCT__AESGCM_NONE,    /* no AES-NI (or forced off): callers leave records to mbedTLS */
  DDUCT__AESGCM_AESNI,   /* AES-NI + PCLMULQDQ, 8 blocks in flight (x86-64 only) */
  DDUCT__AESGCM_VAES512, /* VAES + VPCLMULQDQ on 512-bit vectors, 16 blocks (x86-64 only) */
};

/* An expanded key: the AES round keys and the GHASH key's powers. Holds secrets: wipe it. */
struct dduct__aesgcm {
  unsigned char rk[15][16];
  unsigned char htab[32][16]; /* H^16 .. H^1 (GHASH-domain powers), then zeros */
  int rounds;                 /* 10, 12 or 14 */
  int impl;
};

/* Expands a 16-, 24- or 32-byte key for the implementation in effect (dduct__aesgcm_best, or the one
 * dduct__aesgcm_use forced). Returns 0, or -1 for another key length or when the implementation
 * in effect is DDUCT__AESGCM_NONE (then c holds no key material). */
int dduct__aesgcm_init(struct dduct__aesgcm *c, const unsigned char *key, size_t key_len);
void dduct__aesgcm_wipe(struct dduct__aesgcm *c);

/* Encrypts len bytes at in to out (out == in allowed; otherwise no overlap) and writes the
 * 16-byte tag. Any IV length from 1 byte on (12 is GCM's and TLS's: other lengths are hashed to
 * the first counter block, as the standard says). aad may be NULL when aad_len is 0, in and out
 * when len is 0. Returns 0, or -1 (nothing written) for an empty IV or len over GCM's 2^36 - 32
 * bytes. */
int dduct__aesgcm_seal(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                       const unsigned char *aad, size_t aad_len, const unsigned char *in,
                       size_t len, unsigned char *out, unsigned char tag[16]);
/* Verifies the tag (its first tag_len bytes, 1..16; TLS uses all 16) over aad and the
 * ciphertext, then decrypts to out (out == in allowed). Returns 0, or -1 when the tag does not
 * match (or the lengths are out of range); then out is left untouched. The comparison is
 * constant-time. */
int dduct__aesgcm_open(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                       const unsigned char *aad, size_t aad_len, const unsigned char *in,
                       size_t len, const unsigned char *tag, size_t tag_len, unsigned char *out);

/* GHASH (SP 800-38D 6.4) under c's hash key H = E_K(0^128), continuing from state (16 bytes in
 * the standard's byte order, zeros to start): state = (...((state ^ X1) * H ^ X2) * H ...) * H
 * over the blocks X of len bytes at d, a partial last block zero-padded (so only a message's last
 * call may have len % 16 != 0). For the cache's checksum (checksum.c); c must have been
 * initialised (dduct__aesgcm_init returned 0). */
void dduct__aesgcm_ghash(const struct dduct__aesgcm *c, unsigned char state[16],
                         const unsigned char *d, size_t len);

/* The fastest implementation this CPU runs; DDUCT_AESGCM=aesni in the environment forces AES-NI,
 * DDUCT_AESGCM=off none (records stay with mbedTLS). */
enum dduct__aesgcm_impl dduct__aesgcm_best(void);
/* For tests and bench: force one implementation for keys expanded from now on in this process
 * (returns the one in effect: the requested one if the CPU runs it, else the best lower one). */
enum dduct__aesgcm_impl dduct__aesgcm_use(enum dduct__aesgcm_impl impl);
/* "none", "aesni" or "vaes-avx512". */
const char *dduct__aesgcm_impl_name(enum dduct__aesgcm_impl impl);

#endif
