/* Process-wide random generator: one CTR_DRBG seeded lazily from the OS entropy source.
 * mbedTLS is built with MBEDTLS_THREADING_C (pthread), so the DRBG's own mutex makes
 * dduct__rng safe to call from any thread. Internal; not installed. */
#ifndef DDUCT_RNG_H
#define DDUCT_RNG_H

#include <stddef.h>

/* Seed the generator once per process. Idempotent and thread-safe; returns 0 or DDUCT_ECRYPTO.
 * dduct__rng calls it itself, but callers that want the error early may call it first. */
int dduct__rng_init(void);

/* Fill out[0..len) with random bytes. Usable directly as mbedTLS's f_rng with p_rng NULL
 * (the first argument is ignored). Returns 0, or a negative mbedTLS error (never on a seeded
 * generator in practice). */
int dduct__rng(void *unused, unsigned char *out, size_t len);

#endif
