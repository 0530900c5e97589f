/* chachapoly.h: ChaCha20-Poly1305 AEAD (RFC 8439) for TLS 1.2 bulk records (RFC 7905): ChaCha20
 * with AVX-512 or AVX2 when the CPU has them (chosen once from CPUID), portable C otherwise.
 * Internal. Thread-safe (no shared state after the one-time CPU check). */
#ifndef DDUCT_CHACHAPOLY_H
#define DDUCT_CHACHAPOLY_H

#include <stddef.h>

/* Ordered: each one runs on every CPU that runs the next. */
enum dduct__chachapoly_impl {
  DDUCT__CHACHAPOLY_PORTABLE, /* plain C, one 64-byte block at a time */
  DDUCT__CHACHAPOLY_AVX2,     /* 8 blocks at a time (x86-64 only) */
  DDUCT__CHACHAPOLY_AVX512,   /* 16 blocks at a time, AVX-512F (x86-64 only) */
  DDUCT__CHACHAPOLY_AVX512IFMA, /* and Poly1305 8 blocks at a time with AVX-512 IFMA */
};

/* Encrypts len bytes at in to out (out == in allowed; otherwise no overlap) and writes the tag.
 * aad may be NULL when aad_len is 0, in and out when len is 0. */
void dduct__chachapoly_seal(const unsigned char key[32], const unsigned char nonce[12],
                            const unsigned char *aad, size_t aad_len,
                            const unsigned char *in, size_t len, unsigned char *out,
                            unsigned char tag[16]);
/* Verifies the tag over aad and the ciphertext, then decrypts to out (out == in allowed).
 * Returns 0, or -1 when the tag does not match; then out is left untouched. The tag comparison
 * is constant-time. */
int dduct__chachapoly_open(const unsigned char key[32], const unsigned char nonce[12],
                           const unsigned char *aad, size_t aad_len,
                           const unsigned char *in, size_t len, const unsigned char tag[16],
                           unsigned char *out);
/* The fastest implementation this CPU runs; the environment variable DDUCT_CHACHAPOLY=portable
 * forces the portable one. Seal and open use it unless dduct__chachapoly_use was called. */
enum dduct__chachapoly_impl dduct__chachapoly_best(void);
/* For tests and bench: force one implementation for this process (returns the one in effect:
 * the requested one if the CPU runs it, else the best lower one). */
enum dduct__chachapoly_impl dduct__chachapoly_use(enum dduct__chachapoly_impl impl);
/* The raw Poly1305 MAC of len bytes at m under a one-time key (RFC 8439 2.5), for the tests. */
void dduct__poly1305(const unsigned char key[32], const unsigned char *m, size_t len,
                     unsigned char tag[16]);
/* "portable", "avx2", "avx512" or "avx512ifma". */
const char *dduct__chachapoly_impl_name(enum dduct__chachapoly_impl impl);

#endif
