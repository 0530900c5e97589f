/* cipher-speed: single-core encrypt speed of the AEAD suites dduct can negotiate with Debian's
 * mbedTLS 2.28, on 16 KiB records (the TLS maximum, what a bulk transfer sends).
 *
 * This is the ceiling for one intercepted stream: every byte of a cache hit is encrypted once
 * on the way to the client, so bench/run compares dduct's large-hit MB/s with the figure printed
 * here for the suite that was negotiated.
 *
 * Build: cc -O2 -o cipher-speed cipher-speed.c -lmbedtls -lmbedx509 -lmbedcrypto
 * Run:   ./cipher-speed [seconds-per-cipher]     (default 1.0)
 * Prints one JSON object: {"record_bytes":16384,"seconds":..,"ciphers":{"AES-128-GCM":MB/s,..}}
 * with MB = 10^6 bytes. */
#include <mbedtls/chachapoly.h>
#include <mbedtls/gcm.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RECORD 16384
#define AAD_LEN 13 /* TLS 1.2 AEAD additional data: seq(8) type(1) version(2) length(2) */

static unsigned char in[RECORD];
static unsigned char out[RECORD];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Encrypts records until `seconds` have passed; returns MB/s, or a negative value on error.
 * The nonce changes per record the way TLS 1.2 does (explicit part = sequence number). */
static double run_gcm(unsigned key_bits, double seconds) {
  mbedtls_gcm_context gcm;
  unsigned char key[32] = {1}, iv[12] = {2}, aad[AAD_LEN] = {3}, tag[16];
  unsigned long long records = 0;
  double start, elapsed;

  mbedtls_gcm_init(&gcm);
  if (mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, key, key_bits) != 0) {
    mbedtls_gcm_free(&gcm);
    return -1;
  }
  start = now();
  do {
    int i;
    for (i = 0; i < 16; i++) {
      memcpy(iv + 4, &records, sizeof(records));
      if (mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, RECORD, iv, sizeof(iv), aad,
                                    AAD_LEN, in, out, sizeof(tag), tag) != 0) {
        mbedtls_gcm_free(&gcm);
        return -1;
      }
      records++;
    }
    elapsed = now() - start;
  } while (elapsed < seconds);
  mbedtls_gcm_free(&gcm);
  return (double) records * RECORD / elapsed / 1e6;
}

static double run_chachapoly(double seconds) {
  mbedtls_chachapoly_context ctx;
  unsigned char key[32] = {1}, nonce[12] = {2}, aad[AAD_LEN] = {3}, tag[16];
  unsigned long long records = 0;
  double start, elapsed;

  mbedtls_chachapoly_init(&ctx);
  if (mbedtls_chachapoly_setkey(&ctx, key) != 0) {
    mbedtls_chachapoly_free(&ctx);
    return -1;
  }
  start = now();
  do {
    int i;
    for (i = 0; i < 16; i++) {
      memcpy(nonce + 4, &records, sizeof(records));
      if (mbedtls_chachapoly_encrypt_and_tag(&ctx, RECORD, nonce, aad, AAD_LEN, in, out, tag) !=
          0) {
        mbedtls_chachapoly_free(&ctx);
        return -1;
      }
      records++;
    }
    elapsed = now() - start;
  } while (elapsed < seconds);
  mbedtls_chachapoly_free(&ctx);
  return (double) records * RECORD / elapsed / 1e6;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 1.0;
  double chacha, aes128, aes256;
  size_t i;

  if (seconds <= 0 || seconds > 60) {
    fprintf(stderr, "usage: %s [seconds-per-cipher (0..60]]\n", argv[0]);
    return 2;
  }
  for (i = 0; i < sizeof(in); i++)
    in[i] = (unsigned char) (i * 131u + 7u);

  chacha = run_chachapoly(seconds);
  aes128 = run_gcm(128, seconds);
  aes256 = run_gcm(256, seconds);
  if (chacha < 0 || aes128 < 0 || aes256 < 0) {
    fprintf(stderr, "cipher-speed: an mbedTLS call failed\n");
    return 1;
  }
  printf("{\"record_bytes\":%d,\"seconds\":%.2f,\"ciphers\":{\"CHACHA20-POLY1305\":%.1f,"
         "\"AES-128-GCM\":%.1f,\"AES-256-GCM\":%.1f}}\n",
         RECORD, seconds, chacha, aes128, aes256);
  return 0;
}
