/* sha-speed: single-core SHA-256 speed of mbedTLS 2.28 (Debian's, portable C) and of libdduct's
 * sha256.c (the SHA extensions when the CPU has them), in 16 KiB and 1 MiB updates.
 *
 * Every cache fill hashes its whole body on the thread pool, so this speed caps a large miss
 * unless it is well above the cipher's (bench/cipher-speed.c).
 *
 * Build: cc -O2 -I../libdduct/src -o sha-speed sha-speed.c ../libdduct/src/sha256.c \
 *        ../libdduct/src/diag.c -lmbedcrypto
 * Run:   ./sha-speed [seconds-per-figure]     (default 0.5)
 * Prints one JSON object: {"seconds":..,"dduct_impl":"sha-ni","sha256":{"mbedtls-16k":MB/s,..}}
 * with MB = 10^6 bytes. */
#include <mbedtls/sha256.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sha256.h"

#define BUF (1u << 20)

static unsigned char in[BUF];
static unsigned char sink[32]; /* keeps the digests live */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Hashes 16 MiB per digest in `chunk`-sized updates until `seconds` have passed; MB/s. */
static double run_mbedtls(size_t chunk, double seconds) {
  unsigned long long bytes = 0;
  double start = now(), elapsed;
  do {
    mbedtls_sha256_context c;
    size_t off;
    mbedtls_sha256_init(&c);
    mbedtls_sha256_starts_ret(&c, 0);
    for (off = 0; off < 16 * BUF; off += chunk)
      mbedtls_sha256_update_ret(&c, in + off % BUF, chunk);
    mbedtls_sha256_finish_ret(&c, sink);
    mbedtls_sha256_free(&c);
    bytes += 16 * BUF;
    elapsed = now() - start;
  } while (elapsed < seconds);
  return (double)bytes / elapsed / 1e6;
}

static double run_dduct(enum dduct__sha256_impl impl, size_t chunk, double seconds) {
  unsigned long long bytes = 0;
  double start = now(), elapsed;
  do {
    struct dduct__sha256 s;
    size_t off;
    dduct__sha256_init_impl(&s, impl);
    for (off = 0; off < 16 * BUF; off += chunk) dduct__sha256_update(&s, in + off % BUF, chunk);
    dduct__sha256_final(&s, sink);
    bytes += 16 * BUF;
    elapsed = now() - start;
  } while (elapsed < seconds);
  return (double)bytes / elapsed / 1e6;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 0.5;
  struct dduct__sha256 probe;
  enum dduct__sha256_impl best = dduct__sha256_init_impl(&probe, DDUCT__SHA256_SHANI);
  size_t i;

  if (seconds <= 0 || seconds > 60) {
    fprintf(stderr, "usage: %s [seconds-per-figure (0..60]]\n", argv[0]);
    return 2;
  }
  for (i = 0; i < sizeof(in); i++) in[i] = (unsigned char)(i * 131u + 7u);
  printf("{\"seconds\":%.2f,\"dduct_impl\":\"%s\",\"sha256\":{"
         "\"mbedtls-16k\":%.1f,\"mbedtls-1m\":%.1f,"
         "\"dduct-portable-16k\":%.1f,\"dduct-portable-1m\":%.1f,"
         "\"dduct-16k\":%.1f,\"dduct-1m\":%.1f}}\n",
         seconds, dduct__sha256_impl_name(best), run_mbedtls(16384, seconds),
         run_mbedtls(BUF, seconds), run_dduct(DDUCT__SHA256_PORTABLE, 16384, seconds),
         run_dduct(DDUCT__SHA256_PORTABLE, BUF, seconds), run_dduct(best, 16384, seconds),
         run_dduct(best, BUF, seconds));
  return 0;
}
