/* The cache's checksum (libdduct/src/checksum.c): GMAC-K0 through every implementation this CPU
 * runs (vaes-avx512, aesni: aesgcm.c's GHASH; portable: checksum.c's tables) equals the tag
 * mbedTLS's GCM computes decrypting the same bytes under K0 and IV0 with no AAD, at every length
 * 0..1024 and at 64 KiB and 1 MiB + 7, fed in chunks of 1, 15, 16, 17, 255, 256, 4096 bytes and
 * random sizes, from several buffer alignments; known answers computed independently (Python's
 * cryptography, i.e. OpenSSL: the GCM tag of the plaintext whose ciphertext is the body); the
 * "alg:hex" strings and their parsing; SHA-256 through the same interface. */
#include <mbedtls/gcm.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checksum.h"
#include "sha256.h"
#include "tap.h"

#define BIG ((1u << 20) + 7)
#define SLACK 64

enum { PORTABLE = -1 }; /* next to enum dduct__aesgcm_impl's values */

static uint64_t rng = 0x243f6a8885a308d3u;
static uint64_t next_rand(void) { /* xorshift64: reproducible */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static void reference(const unsigned char *d, size_t len, unsigned char tag[16]) {
  static unsigned char scratch[BIG];
  mbedtls_gcm_context g;
  mbedtls_gcm_init(&g);
  CHECK(mbedtls_gcm_setkey(&g, MBEDTLS_CIPHER_ID_AES, (const unsigned char *)DDUCT__GMAC_K0,
                           128) == 0 &&
            mbedtls_gcm_crypt_and_tag(&g, MBEDTLS_GCM_DECRYPT, len,
                                      (const unsigned char *)DDUCT__GMAC_IV0, 12, NULL, 0, d,
                                      scratch, 16, tag) == 0,
        "mbedTLS computes the reference tag");
  mbedtls_gcm_free(&g);
}

static void start(struct dduct__gmac *g, int impl) {
  if (impl == PORTABLE) dduct__gmac_init_portable(g);
  else dduct__gmac_init(g); /* the one dduct__aesgcm_use forced */
}

/* chunk 0: random sizes up to 5000 */
static void ours(int impl, const unsigned char *d, size_t len, size_t chunk,
                 unsigned char tag[16]) {
  struct dduct__gmac g;
  size_t off = 0;
  start(&g, impl);
  while (off < len) {
    size_t n = chunk != 0 ? chunk : (size_t)(next_rand() % 5000) + 1;
    if (n > len - off) n = len - off;
    dduct__gmac_update(&g, d + off, n);
    off += n;
  }
  dduct__gmac_final(&g, tag);
}

static const size_t chunks[] = {1, 15, 16, 17, 255, 256, 4096, 0, (size_t)-1 /* all at once */};
static const size_t aligns[] = {0, 1, 8, 15};

/* Every length 0..1024, every chunk size, every alignment: one check per length. */
static void test_lengths(int impl, const char *name, const unsigned char *src) {
  static unsigned char buf[1024 + SLACK];
  int bad = 0;
  for (size_t len = 0; len <= 1024; len++) {
    unsigned char want[16], got[16];
    reference(src, len, want);
    for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
      memcpy(buf + aligns[a], src, len);
      for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        ours(impl, buf + aligns[a], len, chunks[c] == (size_t)-1 ? len + 1 : chunks[c], got);
        if (memcmp(got, want, 16) != 0) {
          if (bad++ < 5)
            fprintf(stderr, "  %s: length %zu, alignment %zu, chunk %zu differs\n", name, len,
                    aligns[a], chunks[c]);
        }
      }
    }
  }
  printf("# %s: lengths 0..1024 x %zu chunkings x %zu alignments\n", name,
         sizeof(chunks) / sizeof(chunks[0]), sizeof(aligns) / sizeof(aligns[0]));
  CHECK_EQ_INT(bad, 0, "equals mbedTLS's GCM decryption tag at every length 0..1024");
}

static void test_large(int impl, const char *name, const unsigned char *src) {
  static unsigned char buf[BIG + SLACK];
  const size_t lens[] = {64u << 10, (64u << 10) + 1, BIG};
  int bad = 0;
  for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
    unsigned char want[16], got[16];
    reference(src, lens[l], want);
    for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
      memcpy(buf + aligns[a], src, lens[l]);
      for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        ours(impl, buf + aligns[a], lens[l], chunks[c] == (size_t)-1 ? lens[l] : chunks[c], got);
        if (memcmp(got, want, 16) != 0 && bad++ < 5)
          fprintf(stderr, "  %s: length %zu, alignment %zu, chunk %zu differs\n", name, lens[l],
                  aligns[a], chunks[c]);
      }
    }
  }
  CHECK_EQ_INT(bad, 0, "equals mbedTLS's tag at 64 KiB, 64 KiB + 1 and 1 MiB + 7, every chunking");
}

static void hexs(const unsigned char *t, char out[33]) {
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", t[i]);
}

/* Computed with Python's cryptography (OpenSSL), not with mbedTLS nor this code:
 * AES-CTR(K0, IV0 || 2) turns the body into the plaintext whose GCM ciphertext it is. */
static void test_known(int impl, const char *name) {
  static const char fox[] = "The quick brown fox jumps over the lazy dog";
  static unsigned char pat[100000];
  unsigned char t[16];
  char h[33];
  for (size_t i = 0; i < sizeof(pat); i++) pat[i] = (unsigned char)(i * 7 + 3);
  ours(impl, NULL, 0, 1, t);
  hexs(t, h);
  CHECK_EQ_STR(h, "2cb690a0b5d192c5e620ed7d8bc27c1d", "known answer: the empty body");
  ours(impl, (const unsigned char *)fox, strlen(fox), 5, t);
  hexs(t, h);
  CHECK_EQ_STR(h, "cb06b0e341d399399fc2d70ae5f447ac", "known answer: the quick brown fox");
  ours(impl, pat, sizeof(pat), 0, t);
  hexs(t, h);
  CHECK_EQ_STR(h, "047e3f1fc2843d299f49bc3423eb9bfc", "known answer: 100000 patterned bytes");
  (void)name;
}

static void test_impl(int impl, const unsigned char *src) {
  struct dduct__gmac g;
  const char *name;
  start(&g, impl);
  name = dduct__gmac_impl_name(&g);
  printf("# GMAC-K0 through %s\n", name);
  if (impl != PORTABLE)
    CHECK_EQ_STR(name, dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)impl),
                 "the forced implementation is the one used");
  else
    CHECK_EQ_STR(name, "portable", "the portable GHASH can be forced");
  test_known(impl, name);
  test_lengths(impl, name, src);
  test_large(impl, name, src);
}

static void test_strings(void) {
  struct dduct__sum s;
  char out[DDUCT__SUM_MAX], want[DDUCT__SUM_MAX];
  unsigned char h[32];
  dduct__sum_init(&s, DDUCT__SUM_GMAC);
  dduct__sum_update(&s, "The quick brown fox ", 20);
  dduct__sum_update(&s, "jumps over the lazy dog", 23);
  dduct__sum_final(&s, out);
  CHECK_EQ_STR(out, "gmac:cb06b0e341d399399fc2d70ae5f447ac", "a gmac digest string");
  CHECK_EQ_INT(dduct__sum_alg_of(out), DDUCT__SUM_GMAC, "parses back as gmac");
  dduct__sum_init(&s, DDUCT__SUM_SHA256);
  dduct__sum_update(&s, "abc", 3);
  dduct__sum_final(&s, out);
  dduct__sha256("abc", 3, h);
  strcpy(want, "sha256:");
  for (int i = 0; i < 32; i++) snprintf(want + 7 + 2 * i, 3, "%02x", h[i]);
  CHECK_EQ_STR(out, want, "a sha256 digest string, as sha256.c computes it");
  CHECK_EQ_STR(out, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
               "FIPS 180-4's abc");
  CHECK_EQ_INT(dduct__sum_alg_of(out), DDUCT__SUM_SHA256, "parses back as sha256");
  dduct__sum_init(&s, DDUCT__SUM_NONE);
  dduct__sum_update(&s, "abc", 3);
  dduct__sum_final(&s, out);
  CHECK_EQ_STR(out, "", "no algorithm: an empty digest");
  CHECK_EQ_INT(dduct__sum_alg_of(NULL), DDUCT__SUM_NONE, "NULL names none");
  CHECK_EQ_INT(dduct__sum_alg_of(""), DDUCT__SUM_NONE, "'' names none");
  CHECK_EQ_INT(dduct__sum_alg_of("md5:d41d8cd98f00b204e9800998ecf8427e"), DDUCT__SUM_NONE,
               "an unknown prefix names none");
  CHECK_EQ_INT(dduct__sum_alg_of("gmac:CB06B0E341D399399FC2D70AE5F447AC"), DDUCT__SUM_NONE,
               "uppercase hex is not a digest");
  CHECK_EQ_INT(dduct__sum_alg_of("gmac:cb06b0e341d399399fc2d70ae5f447a"), DDUCT__SUM_NONE,
               "a short gmac is not a digest");
  CHECK_EQ_INT(dduct__sum_alg_of("gmac:cb06b0e341d399399fc2d70ae5f447acc"), DDUCT__SUM_NONE,
               "a long gmac is not a digest");
  CHECK_EQ_INT(dduct__sum_alg_of("sha256:ba7816bf"), DDUCT__SUM_NONE,
               "a short sha256 is not a digest");
  CHECK_EQ_STR(dduct__sum_alg_name(DDUCT__SUM_GMAC), "gmac", "names");
  CHECK_EQ_INT(dduct__sum_for_fill(DDUCT__SUM_SHA256), DDUCT__SUM_SHA256, "sha256 asked: sha256");
  dduct__aesgcm_use(DDUCT__AESGCM_NONE);
  CHECK_EQ_INT(dduct__sum_for_fill(DDUCT__SUM_GMAC), DDUCT__SUM_SHA256,
               "gmac asked without a fast GHASH: sha256 (faster than the portable GHASH)");
  if (dduct__aesgcm_use(DDUCT__AESGCM_VAES512) != DDUCT__AESGCM_NONE)
    CHECK_EQ_INT(dduct__sum_for_fill(DDUCT__SUM_GMAC), DDUCT__SUM_GMAC,
                 "gmac asked with a fast GHASH: gmac");
}

int main(void) {
  static unsigned char src[BIG];
  struct dduct__gmac g;
  int best = dduct__aesgcm_best();
  for (size_t i = 0; i < sizeof(src); i++) src[i] = (unsigned char)next_rand();
  dduct__gmac_init(&g);
  printf("# this CPU: %s\n", dduct__gmac_impl_name(&g));
  CHECK_EQ_STR(dduct__gmac_impl_name(&g),
               best == DDUCT__AESGCM_NONE
                   ? "portable"
                   : dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)best),
               "by default the checksum uses aesgcm.c's best implementation");
  for (int impl = best; impl > DDUCT__AESGCM_NONE; impl--) {
    dduct__aesgcm_use((enum dduct__aesgcm_impl)impl);
    test_impl(impl, src);
  }
  test_impl(PORTABLE, src);
  test_strings();
  return tap_done();
}
