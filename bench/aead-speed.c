/* aead-speed: single-core ChaCha20-Poly1305 and AES-GCM speed of mbedTLS 2.28 (Debian's: portable
 * C, table-driven AES) and of each implementation in libdduct's chachapoly.c and aesgcm.c this
 * CPU runs (and of OpenSSL's AES-GCM when built with -DHAVE_OPENSSL -lcrypto), sealing and
 * opening 16 KiB records (what a bulk transfer sends) and 4 KiB ones, with TLS 1.2's 13 bytes of
 * aad.
 *
 * Every byte of a cache hit is sealed once on its way to the client and every byte of a miss
 * opened once on its way from the origin, so these figures cap an intercepted stream.
 *
 * Build: cc -O2 -I../libdduct/src -o aead-speed aead-speed.c ../libdduct/src/chachapoly.c \
 *          ../libdduct/src/diag.c \
 *          ../libdduct/src/aesgcm.c -lmbedcrypto [-DHAVE_OPENSSL -lcrypto]
 * Run:   ./aead-speed [seconds-per-figure]     (default 0.3; 64 figures at most)
 * Prints one JSON object: {"seconds":..,"best":"avx512ifma","aead":{"mbedtls":{"seal-16k":MB/s,
 * "open-16k":..,"seal-4k":..,"open-4k":..},"portable":{..},"avx2":{..},"avx512":{..},
 * "avx512ifma":{..}},"aes_best":"vaes-avx512","aes128gcm":{"mbedtls":{..},"aesni":{..},
 * "vaes-avx512":{..},"openssl":{..}},"aes256gcm":{..}} with MB = 10^6 bytes; implementations
 * this CPU lacks are left out.
 * Seconds are this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), not wall time: on a machine
 * shared with other work the figures then move less, and CPU per byte is what the proxy pays. */
#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>
#ifdef HAVE_OPENSSL
#include <openssl/evp.h>
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aesgcm.h"
#include "chachapoly.h"

#define RECORD 16384
#define AAD_LEN 13 /* TLS 1.2 AEAD additional data: seq(8) type(1) version(2) length(2) */

static unsigned char in[RECORD], out[RECORD], tag[16];
static const unsigned char key[32] = {1}, aad[AAD_LEN] = {3};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The nonce changes per record the way TLS 1.2 does (sequence number in its last 8 bytes). */
static void next_nonce(unsigned char nonce[12], unsigned long long seq) {
  int i;
  for (i = 0; i < 8; i++) nonce[4 + i] = (unsigned char)(seq >> (56 - 8 * i));
}

/* impl < 0: mbedTLS. open: the records opened are sealed once up front (the same record each
 * time, as its tag must verify). Returns MB/s, or -1 on an error. */
static double run(int impl, int open, size_t len, double seconds) {
  mbedtls_chachapoly_context c;
  unsigned char nonce[12] = {2};
  unsigned long long n = 0;
  double start, elapsed;
  int err = 0;

  mbedtls_chachapoly_init(&c);
  mbedtls_chachapoly_setkey(&c, key);
  if (impl >= 0) dduct__chachapoly_use((enum dduct__chachapoly_impl)impl);
  if (open) mbedtls_chachapoly_encrypt_and_tag(&c, len, nonce, aad, AAD_LEN, in, in, tag);
  start = now();
  do {
    int k;
    for (k = 0; k < 16; k++, n++) {
      if (!open) next_nonce(nonce, n);
      if (impl < 0 && !open) {
        err |= mbedtls_chachapoly_encrypt_and_tag(&c, len, nonce, aad, AAD_LEN, in, out, tag);
      } else if (impl < 0) {
        err |= mbedtls_chachapoly_auth_decrypt(&c, len, nonce, aad, AAD_LEN, tag, in, out);
      } else if (!open) {
        dduct__chachapoly_seal(key, nonce, aad, AAD_LEN, in, len, out, tag);
      } else {
        err |= dduct__chachapoly_open(key, nonce, aad, AAD_LEN, in, len, tag, out);
      }
    }
    elapsed = now() - start;
  } while (elapsed < seconds);
  mbedtls_chachapoly_free(&c);
  return err != 0 ? -1 : (double)n * (double)len / elapsed / 1e6;
}

static void print_impl(int impl, double seconds) {
  printf("\"%s\":{\"seal-16k\":%.1f,\"open-16k\":%.1f,\"seal-4k\":%.1f,\"open-4k\":%.1f}",
         impl < 0 ? "mbedtls" : dduct__chachapoly_impl_name((enum dduct__chachapoly_impl)impl),
         run(impl, 0, RECORD, seconds), run(impl, 1, RECORD, seconds),
         run(impl, 0, 4096, seconds), run(impl, 1, 4096, seconds));
}

/* AES-GCM with a key of klen bytes: impl < 0 mbedTLS, impl == OPENSSL OpenSSL's EVP, else
 * libdduct's. As run() otherwise. */
#define OPENSSL 100
static double run_gcm(int impl, size_t klen, int open, size_t len, double seconds) {
  mbedtls_gcm_context m;
  struct dduct__aesgcm g;
  unsigned char nonce[12] = {2};
  unsigned long long n = 0;
  double start, elapsed;
  int err = 0;
#ifdef HAVE_OPENSSL
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  const EVP_CIPHER *ciph = klen == 16 ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
  int olen;
  err |= EVP_CipherInit_ex(x, ciph, NULL, key, nonce, !open) != 1;
#endif

  mbedtls_gcm_init(&m);
  mbedtls_gcm_setkey(&m, MBEDTLS_CIPHER_ID_AES, key, (unsigned)klen * 8);
  if (impl >= 0 && impl != OPENSSL) {
    dduct__aesgcm_use((enum dduct__aesgcm_impl)impl);
    if (dduct__aesgcm_init(&g, key, klen) != 0) return -1;
  }
  if (open) mbedtls_gcm_crypt_and_tag(&m, MBEDTLS_GCM_ENCRYPT, len, nonce, 12, aad, AAD_LEN, in, in,
                                      16, tag);
  start = now();
  do {
    int k;
    for (k = 0; k < 16; k++, n++) {
      if (!open) next_nonce(nonce, n);
      if (impl == OPENSSL) {
#ifdef HAVE_OPENSSL
        err |= EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, !open) != 1;
        err |= EVP_CipherUpdate(x, NULL, &olen, aad, AAD_LEN) != 1;
        if (open) err |= EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1;
        err |= EVP_CipherUpdate(x, out, &olen, in, (int)len) != 1;
        err |= EVP_CipherFinal_ex(x, out + olen, &olen) != 1;
        if (!open) err |= EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1;
#endif
      } else if (impl < 0 && !open) {
        err |= mbedtls_gcm_crypt_and_tag(&m, MBEDTLS_GCM_ENCRYPT, len, nonce, 12, aad, AAD_LEN, in,
                                         out, 16, tag);
      } else if (impl < 0) {
        err |= mbedtls_gcm_auth_decrypt(&m, len, nonce, 12, aad, AAD_LEN, tag, 16, in, out);
      } else if (!open) {
        err |= dduct__aesgcm_seal(&g, nonce, 12, aad, AAD_LEN, in, len, out, tag);
      } else {
        err |= dduct__aesgcm_open(&g, nonce, 12, aad, AAD_LEN, in, len, tag, 16, out);
      }
    }
    elapsed = now() - start;
  } while (elapsed < seconds);
  mbedtls_gcm_free(&m);
  if (impl >= 0 && impl != OPENSSL) dduct__aesgcm_wipe(&g);
#ifdef HAVE_OPENSSL
  EVP_CIPHER_CTX_free(x);
#endif
  return err != 0 ? -1 : (double)n * (double)len / elapsed / 1e6;
}

static void print_gcm(int impl, size_t klen, double seconds) {
  printf("\"%s\":{\"seal-16k\":%.1f,\"open-16k\":%.1f,\"seal-4k\":%.1f,\"open-4k\":%.1f}",
         impl < 0 ? "mbedtls" : impl == OPENSSL ? "openssl"
                                : dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)impl),
         run_gcm(impl, klen, 0, RECORD, seconds), run_gcm(impl, klen, 1, RECORD, seconds),
         run_gcm(impl, klen, 0, 4096, seconds), run_gcm(impl, klen, 1, 4096, seconds));
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 0.3;
  enum dduct__chachapoly_impl best = dduct__chachapoly_best();
  int i;

  if (seconds <= 0 || seconds > 10) {
    fprintf(stderr, "usage: %s [seconds-per-figure (0..10]]\n", argv[0]);
    return 2;
  }
  for (i = 0; i < RECORD; i++) in[i] = (unsigned char)(i * 131u + 7u);
  printf("{\"seconds\":%.2f,\"best\":\"%s\",\"aead\":{", seconds,
         dduct__chachapoly_impl_name(best));
  print_impl(-1, seconds);
  for (i = DDUCT__CHACHAPOLY_PORTABLE; i <= (int)best; i++) {
    printf(",");
    print_impl(i, seconds);
  }
  printf("},\"aes_best\":\"%s\"", dduct__aesgcm_impl_name(dduct__aesgcm_best()));
  for (size_t klen = 16; klen <= 32; klen += 16) {
    printf(",\"aes%zugcm\":{", klen * 8);
    print_gcm(-1, klen, seconds);
    for (i = DDUCT__AESGCM_AESNI; i <= (int)dduct__aesgcm_best(); i++) {
      printf(",");
      print_gcm(i, klen, seconds);
    }
#ifdef HAVE_OPENSSL
    printf(",");
    print_gcm(OPENSSL, klen, seconds);
#endif
    printf("}");
  }
  printf("}\n");
  return 0;
}
