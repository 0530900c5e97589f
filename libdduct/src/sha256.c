/* SHA-256 (FIPS 180-4). The padding and buffering are here; the compression of 64-byte blocks
 * is either the x86-64 SHA extensions (written from Intel's description of SHA256RNDS2,
 * SHA256MSG1 and SHA256MSG2) or mbedTLS's portable C, which stays the reference.
 *
 * Why: every cache fill hashes its whole body, and Debian's mbedTLS 2.28 does ~230 MB/s in C,
 * which capped large misses; SHA-NI does several GB/s. The SHA-NI function alone is compiled
 * for the extension (target attribute), so the library stays baseline x86-64 and the choice is
 * made at run time from CPUID. */
#include "diag.h"
#include "sha256.h"

#include <mbedtls/sha256.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SHANI 1
#include <immintrin.h>
#endif

typedef void blocks_fn(uint32_t state[8], const unsigned char *p, size_t n);

/* FIPS 180-4 4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64
 * primes. Aligned for 16-byte loads. */
static _Alignas(16) const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

/* FIPS 180-4 5.3.3: first 32 bits of the fractional parts of the square roots of the first 8
 * primes. */
static const uint32_t H0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* mbedTLS's compression function on our state (its context is only a carrier here). */
static void blocks_portable(uint32_t state[8], const unsigned char *p, size_t n) {
  mbedtls_sha256_context c;
  mbedtls_sha256_init(&c);
  memcpy(c.state, state, sizeof(c.state));
  for (; n > 0; n--, p += 64) (void)mbedtls_internal_sha256_process(&c, p);
  memcpy(state, c.state, sizeof(c.state));
  mbedtls_sha256_free(&c);
}

#ifdef HAVE_SHANI
#define SHANI __attribute__((target("sha,sse4.1")))

/* Four rounds t..t+3 with w = W[t..t+3]. SHA256RNDS2 does two rounds on the state split as
 * ABEF (dwords 3..0 = A, B, E, F) and CDGH, takes W+K of its two rounds from the low 64 bits of
 * its third operand and returns the new ABEF; the new CDGH is the old ABEF. */
SHANI static inline void four_rounds(__m128i *abef, __m128i *cdgh, __m128i w, const uint32_t *k) {
  __m128i wk = _mm_add_epi32(w, _mm_load_si128((const __m128i *)k));
  __m128i abef1 = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
  __m128i abef2 = _mm_sha256rnds2_epu32(*abef, abef1, _mm_shuffle_epi32(wk, 0x0e));
  *cdgh = abef1;
  *abef = abef2;
}

/* W[t..t+3] from a = W[t-16..t-13], b = W[t-12..t-9], c = W[t-8..t-5], d = W[t-4..t-1]:
 * W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16]. MSG1 adds s0(W[t-15]) to W[t-16]; the
 * alignr picks W[t-7..t-4]; MSG2 adds s1 of W[t-2], W[t-1] and of its own first two results. */
SHANI static inline __m128i next_w(__m128i a, __m128i b, __m128i c, __m128i d) {
  __m128i x = _mm_sha256msg1_epu32(a, b);
  x = _mm_add_epi32(x, _mm_alignr_epi8(d, c, 4));
  return _mm_sha256msg2_epu32(x, d);
}

/* Four big-endian message words into dwords 0..3. */
SHANI static inline __m128i load_be(const unsigned char *p) {
  const __m128i swap = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), swap);
}

SHANI static void blocks_shani(uint32_t state[8], const unsigned char *p, size_t n) {
  uint32_t out[8];
  /* _mm_set_epi32 takes dword 3 first. */
  __m128i abef = _mm_set_epi32((int)state[0], (int)state[1], (int)state[4], (int)state[5]);
  __m128i cdgh = _mm_set_epi32((int)state[2], (int)state[3], (int)state[6], (int)state[7]);

  for (; n > 0; n--, p += 64) {
    __m128i abef0 = abef, cdgh0 = cdgh;
    __m128i w0 = load_be(p), w1 = load_be(p + 16), w2 = load_be(p + 32), w3 = load_be(p + 48);
    int t;
    four_rounds(&abef, &cdgh, w0, K + 0);
    four_rounds(&abef, &cdgh, w1, K + 4);
    four_rounds(&abef, &cdgh, w2, K + 8);
    four_rounds(&abef, &cdgh, w3, K + 12);
    for (t = 16; t < 64; t += 16) {
      w0 = next_w(w0, w1, w2, w3);
      four_rounds(&abef, &cdgh, w0, K + t);
      w1 = next_w(w1, w2, w3, w0);
      four_rounds(&abef, &cdgh, w1, K + t + 4);
      w2 = next_w(w2, w3, w0, w1);
      four_rounds(&abef, &cdgh, w2, K + t + 8);
      w3 = next_w(w3, w0, w1, w2);
      four_rounds(&abef, &cdgh, w3, K + t + 12);
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
  }
  /* Back from dwords (F, E, B, A) and (H, G, D, C) to A..H. */
  _mm_storeu_si128((__m128i *)out, abef);
  _mm_storeu_si128((__m128i *)(out + 4), cdgh);
  state[0] = out[3], state[1] = out[2], state[4] = out[1], state[5] = out[0];
  state[2] = out[7], state[3] = out[6], state[6] = out[5], state[7] = out[4];
}
#endif

static blocks_fn *impl_blocks(enum dduct__sha256_impl impl) {
#ifdef HAVE_SHANI
  if (impl == DDUCT__SHA256_SHANI) return blocks_shani;
#endif
  return blocks_portable;
}

/* SHA-NI works on XMM registers only, which every x86-64 OS saves. */
static int shani_usable(void) {
#ifdef HAVE_SHANI
  const struct dduct_cpu *c = dduct__cpu();
  return c->sha && c->ssse3 && c->sse41;
#else
  return 0;
#endif
}

enum dduct__sha256_impl dduct__sha256_best(void) {
  static atomic_int best = -1;
  int v = atomic_load_explicit(&best, memory_order_relaxed);
  if (v < 0) {
    v = !dduct__diag()->sha256_portable && shani_usable() ? DDUCT__SHA256_SHANI : DDUCT__SHA256_PORTABLE;
    atomic_store_explicit(&best, v, memory_order_relaxed);
  }
  return (enum dduct__sha256_impl)v;
}

const char *dduct__sha256_impl_name(enum dduct__sha256_impl impl) {
  return impl == DDUCT__SHA256_SHANI ? "sha-ni" : "portable";
}

enum dduct__sha256_impl dduct__sha256_init_impl(struct dduct__sha256 *s,
                                                enum dduct__sha256_impl impl) {
  if (impl != DDUCT__SHA256_SHANI || !shani_usable()) impl = DDUCT__SHA256_PORTABLE;
  memcpy(s->state, H0, sizeof(s->state));
  s->total = 0;
  s->impl = impl;
  return impl;
}

void dduct__sha256_init(struct dduct__sha256 *s) {
  dduct__sha256_init_impl(s, dduct__sha256_best());
}

void dduct__sha256_update(struct dduct__sha256 *s, const void *data, size_t len) {
  const unsigned char *p = data;
  size_t used = (size_t)(s->total % 64), whole;
  blocks_fn *blocks = impl_blocks(s->impl);

  if (len == 0) return;
  s->total += len;
  if (used > 0) {
    size_t take = 64 - used < len ? 64 - used : len;
    memcpy(s->block + used, p, take);
    p += take, len -= take;
    if (used + take < 64) return;
    blocks(s->state, s->block, 1);
  }
  whole = len / 64;
  if (whole > 0) blocks(s->state, p, whole);
  p += whole * 64, len -= whole * 64;
  if (len > 0) memcpy(s->block, p, len);
}

/* FIPS 180-4 5.1.1: a 1 bit, zeros up to 56 mod 64, the length in bits as 64 bits big-endian. */
void dduct__sha256_final(struct dduct__sha256 *s, unsigned char out[32]) {
  size_t used = (size_t)(s->total % 64);
  uint64_t bits = s->total * 8;
  blocks_fn *blocks = impl_blocks(s->impl);
  int i;

  s->block[used++] = 0x80;
  if (used > 56) {
    memset(s->block + used, 0, 64 - used);
    blocks(s->state, s->block, 1);
    used = 0;
  }
  memset(s->block + used, 0, 56 - used);
  for (i = 0; i < 8; i++) s->block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
  blocks(s->state, s->block, 1);
  for (i = 0; i < 32; i++) out[i] = (unsigned char)(s->state[i / 4] >> (24 - 8 * (i % 4)));
}

void dduct__sha256(const void *data, size_t len, unsigned char out[32]) {
  struct dduct__sha256 s;
  dduct__sha256_init(&s);
  dduct__sha256_update(&s, data, len);
  dduct__sha256_final(&s, out);
}
