/* ChaCha20-Poly1305 AEAD (RFC 8439), written from the RFC.
 *
 * Why: ChaCha20-Poly1305 records are most of dduct's CPU per GiB, and Debian's mbedTLS 2.28 does
 * both halves in portable C (~400 MB/s on 16 KiB records). Here ChaCha20 runs 8 (AVX2) or 16
 * (AVX-512) blocks at once with the state transposed (one vector per state word). Poly1305 uses
 * 64-bit limbs with 128-bit products, its multiplies interleaved with the vector rounds when
 * sealing, or, with AVX-512 IFMA, 8 blocks at a time in 52-bit multiply-adds (7-8x mbedTLS on 16
 * KiB records; bench/aead-speed.c). The SIMD functions alone are compiled for their extension
 * (target attribute), so the library stays baseline x86-64 and the choice is made at run time
 * from CPUID, as in sha256.c.
 *
 * Constant time: no branch or table index depends on the key, the nonce or the data; only on
 * lengths. */
#include "chachapoly.h"
#include "diag.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <immintrin.h>
#endif

/* 64x64 -> 128-bit products for Poly1305; where the compiler has no 128-bit integer (32-bit
 * targets), 26-bit limbs (DDUCT_CHACHAPOLY_POLY32 forces them, for the test). */
#if defined(__SIZEOF_INT128__) && !defined(DDUCT_CHACHAPOLY_POLY32)
#define POLY64 1
typedef unsigned __int128 u128;
#endif

/* Bytes sealed per slice (portable, IFMA): each slice is encrypted, then MACed while it is still
 * in L1. */
#define SLICE 2048
#define SLICE_IFMA 4096

#if defined(__GNUC__) || defined(__clang__)
#define INLINE __attribute__((always_inline)) inline
#else
#define INLINE inline
#endif

INLINE static uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#ifdef POLY64
INLINE static uint64_t le64(const unsigned char *p) {
  return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}
#endif

static void put_le32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}

static void put_le64(unsigned char *p, uint64_t v) {
  put_le32(p, (uint32_t)v);
  put_le32(p + 4, (uint32_t)(v >> 32));
}

/* Key material must not outlive the call on the stack. The empty asm that may read the memory
 * keeps the compiler from dropping the memset as a dead store. */
static void wipe(void *p, size_t n) {
#if defined(__GNUC__) || defined(__clang__)
  memset(p, 0, n);
  __asm__ __volatile__("" : : "r"(p) : "memory");
#else
  volatile unsigned char *v = p;
  while (n-- > 0) *v++ = 0;
#endif
}

/* ---- ChaCha20 (RFC 8439 2.3) ---- */

/* The state before the rounds: constants, key, block counter, nonce. */
static void chacha_init(uint32_t s[16], const unsigned char key[32], const unsigned char nonce[12],
                        uint32_t counter) {
  int i;
  /* "expand 32-byte k" */
  s[0] = 0x61707865, s[1] = 0x3320646e, s[2] = 0x79622d32, s[3] = 0x6b206574;
  for (i = 0; i < 8; i++) s[4 + i] = le32(key + 4 * i);
  s[12] = counter;
  for (i = 0; i < 3; i++) s[13 + i] = le32(nonce + 4 * i);
}

#define ROTL32(v, n) ((uint32_t)((v) << (n)) | ((v) >> (32 - (n))))
#define QR(a, b, c, d)                                  \
  do {                                                  \
    a += b, d ^= a, d = ROTL32(d, 16);                  \
    c += d, b ^= c, b = ROTL32(b, 12);                  \
    a += b, d ^= a, d = ROTL32(d, 8);                   \
    c += d, b ^= c, b = ROTL32(b, 7);                   \
  } while (0)

/* One 64-byte keystream block for state s (s[12] is its counter), xored with in into out (in
 * NULL: the keystream itself). Locals rather than an array, so they can live in registers. */
static void chacha_block_xor(const uint32_t s[16], const unsigned char *in, unsigned char *out) {
  uint32_t x0 = s[0], x1 = s[1], x2 = s[2], x3 = s[3], x4 = s[4], x5 = s[5], x6 = s[6];
  uint32_t x7 = s[7], x8 = s[8], x9 = s[9], x10 = s[10], x11 = s[11], x12 = s[12];
  uint32_t x13 = s[13], x14 = s[14], x15 = s[15];
  int i;
  for (i = 0; i < 10; i++) {
    QR(x0, x4, x8, x12);
    QR(x1, x5, x9, x13);
    QR(x2, x6, x10, x14);
    QR(x3, x7, x11, x15);
    QR(x0, x5, x10, x15);
    QR(x1, x6, x11, x12);
    QR(x2, x7, x8, x13);
    QR(x3, x4, x9, x14);
  }
#define OUT(j, x) put_le32(out + 4 * (j), (in != NULL ? le32(in + 4 * (j)) : 0) ^ (x + s[j]))
  OUT(0, x0), OUT(1, x1), OUT(2, x2), OUT(3, x3), OUT(4, x4), OUT(5, x5), OUT(6, x6);
  OUT(7, x7), OUT(8, x8), OUT(9, x9), OUT(10, x10), OUT(11, x11), OUT(12, x12);
  OUT(13, x13), OUT(14, x14), OUT(15, x15);
#undef OUT
}

static void chacha_block(const uint32_t s[16], unsigned char out[64]) {
  chacha_block_xor(s, NULL, out);
}

/* out = in ^ keystream from block s[12] on (the counter wraps at 2^32 like mbedTLS's; TLS
 * records are far shorter). out == in allowed. */
typedef void xor_fn(const uint32_t s[16], const unsigned char *in, unsigned char *out, size_t len);

static void xor_portable(const uint32_t s[16], const unsigned char *in, unsigned char *out,
                         size_t len) {
  uint32_t st[16];
  memcpy(st, s, sizeof(st));
  for (; len >= 64; len -= 64, in += 64, out += 64, st[12]++) chacha_block_xor(st, in, out);
  if (len > 0) { /* the last partial block through a copy */
    unsigned char b[64] = {0};
    memcpy(b, in, len);
    chacha_block_xor(st, b, b);
    memcpy(out, b, len);
    wipe(b, sizeof(b));
  }
  wipe(st, sizeof(st));
}

/* ---- Poly1305 (RFC 8439 2.5) ---- */

#ifdef POLY64
/* h = h0 + h1 2^64 + h2 2^128, kept below 2^130 + 2^128 between blocks. r1 is a multiple of 4
 * (clamped), so h1 r1 2^128 = h1 (r1/4) 2^130 = 5 h1 r1/4 = h1 s1 (mod 2^130 - 5). */
struct poly {
  uint64_t r0, r1, s1, h0, h1, h2, k0, k1;
};

static void poly_init(struct poly *p, const unsigned char key[32]) {
  p->r0 = le64(key) & 0x0ffffffc0fffffffu;
  p->r1 = le64(key + 8) & 0x0ffffffc0ffffffcu;
  p->s1 = p->r1 + (p->r1 >> 2);
  p->h0 = p->h1 = p->h2 = 0;
  p->k0 = le64(key + 16);
  p->k1 = le64(key + 24);
}

/* n whole 16-byte blocks, each with 2^128 added when hibit is 1 (always, but for the raw MAC's
 * last partial block, which carries its own 1 byte). */
/* Inlined everywhere: a call from the SIMD rounds would spill every vector register around it. */
INLINE static void poly_blocks(struct poly *p, const unsigned char *m, size_t n, uint64_t hibit) {
  const uint64_t r0 = p->r0, r1 = p->r1, s1 = p->s1;
  uint64_t h0 = p->h0, h1 = p->h1, h2 = p->h2;
  for (; n > 0; n--, m += 16) {
    u128 t, d0, d1;
    uint64_t d2, c;
    t = (u128)h0 + le64(m);
    h0 = (uint64_t)t;
    t = (u128)h1 + le64(m + 8) + (uint64_t)(t >> 64);
    h1 = (uint64_t)t;
    h2 += (uint64_t)(t >> 64) + hibit;
    /* h * r: each product < 2^124, h2 < 8; every sum stays below 2^127. */
    d0 = (u128)h0 * r0 + (u128)h1 * s1;
    d1 = (u128)h0 * r1 + (u128)h1 * r0 + h2 * s1;
    d2 = h2 * r0;
    d1 += (uint64_t)(d0 >> 64);
    d2 += (uint64_t)(d1 >> 64);
    h0 = (uint64_t)d0;
    h1 = (uint64_t)d1;
    /* Bits 130 and up, times 5, back to the bottom: 2^130 = 5. */
    h2 = d2 & 3;
    c = (d2 & ~(uint64_t)3) + (d2 >> 2);
    t = (u128)h0 + c;
    h0 = (uint64_t)t;
    t = (u128)h1 + (uint64_t)(t >> 64);
    h1 = (uint64_t)t;
    h2 += (uint64_t)(t >> 64);
  }
  p->h0 = h0, p->h1 = h1, p->h2 = h2;
}

static void poly_finish(struct poly *p, unsigned char tag[16]) {
  uint64_t g0, g1, g2, mask;
  u128 t;
  /* h < 2^130 + 2^128 < 2p, so h mod p is h or h - p = h + 5 - 2^130, whichever is >= 0: the
   * one where h + 5 reaches 2^130. Selected by mask, not a branch. */
  t = (u128)p->h0 + 5;
  g0 = (uint64_t)t;
  t = (u128)p->h1 + (uint64_t)(t >> 64);
  g1 = (uint64_t)t;
  g2 = p->h2 + (uint64_t)(t >> 64);
  mask = 0 - (g2 >> 2);
  g0 = (p->h0 & ~mask) | (g0 & mask);
  g1 = (p->h1 & ~mask) | (g1 & mask);
  t = (u128)g0 + p->k0;
  put_le64(tag, (uint64_t)t);
  put_le64(tag + 8, g1 + p->k1 + (uint64_t)(t >> 64));
  wipe(p, sizeof(*p));
}
#else
/* 26-bit limbs: 32x32 -> 64-bit products only. */
struct poly {
  uint32_t r[5], s[4], h[5], k[4];
};

static void poly_init(struct poly *p, const unsigned char key[32]) {
  int i;
  p->r[0] = le32(key) & 0x3ffffff;
  p->r[1] = (le32(key + 3) >> 2) & 0x3ffff03;
  p->r[2] = (le32(key + 6) >> 4) & 0x3ffc0ff;
  p->r[3] = (le32(key + 9) >> 6) & 0x3f03fff;
  p->r[4] = (le32(key + 12) >> 8) & 0x00fffff;
  for (i = 0; i < 4; i++) p->s[i] = p->r[i + 1] * 5;
  for (i = 0; i < 5; i++) p->h[i] = 0;
  for (i = 0; i < 4; i++) p->k[i] = le32(key + 16 + 4 * i);
}

static void poly_blocks(struct poly *p, const unsigned char *m, size_t n, uint32_t hibit) {
  const uint64_t r0 = p->r[0], r1 = p->r[1], r2 = p->r[2], r3 = p->r[3], r4 = p->r[4];
  const uint64_t s1 = p->s[0], s2 = p->s[1], s3 = p->s[2], s4 = p->s[3];
  uint32_t h0 = p->h[0], h1 = p->h[1], h2 = p->h[2], h3 = p->h[3], h4 = p->h[4];
  for (; n > 0; n--, m += 16) {
    uint64_t d0, d1, d2, d3, d4;
    uint32_t c;
    h0 += le32(m) & 0x3ffffff;
    h1 += (le32(m + 3) >> 2) & 0x3ffffff;
    h2 += (le32(m + 6) >> 4) & 0x3ffffff;
    h3 += (le32(m + 9) >> 6) & 0x3ffffff;
    h4 += (le32(m + 12) >> 8) | hibit << 24;
    d0 = h0 * r0 + h1 * s4 + h2 * s3 + h3 * s2 + h4 * s1;
    d1 = h0 * r1 + h1 * r0 + h2 * s4 + h3 * s3 + h4 * s2;
    d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s4 + h4 * s3;
    d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s4;
    d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0;
    c = (uint32_t)(d0 >> 26), h0 = (uint32_t)d0 & 0x3ffffff;
    d1 += c, c = (uint32_t)(d1 >> 26), h1 = (uint32_t)d1 & 0x3ffffff;
    d2 += c, c = (uint32_t)(d2 >> 26), h2 = (uint32_t)d2 & 0x3ffffff;
    d3 += c, c = (uint32_t)(d3 >> 26), h3 = (uint32_t)d3 & 0x3ffffff;
    d4 += c, c = (uint32_t)(d4 >> 26), h4 = (uint32_t)d4 & 0x3ffffff;
    h0 += c * 5, c = h0 >> 26, h0 &= 0x3ffffff;
    h1 += c;
  }
  p->h[0] = h0, p->h[1] = h1, p->h[2] = h2, p->h[3] = h3, p->h[4] = h4;
}

static void poly_finish(struct poly *p, unsigned char tag[16]) {
  uint32_t h0 = p->h[0], h1 = p->h[1], h2 = p->h[2], h3 = p->h[3], h4 = p->h[4];
  uint32_t g0, g1, g2, g3, g4, c, mask;
  uint64_t f;
  /* Carry fully, then h mod p = h or h + 5 - 2^130 (mask, not a branch). */
  c = h1 >> 26, h1 &= 0x3ffffff, h2 += c;
  c = h2 >> 26, h2 &= 0x3ffffff, h3 += c;
  c = h3 >> 26, h3 &= 0x3ffffff, h4 += c;
  c = h4 >> 26, h4 &= 0x3ffffff, h0 += c * 5;
  c = h0 >> 26, h0 &= 0x3ffffff, h1 += c;
  g0 = h0 + 5, c = g0 >> 26, g0 &= 0x3ffffff;
  g1 = h1 + c, c = g1 >> 26, g1 &= 0x3ffffff;
  g2 = h2 + c, c = g2 >> 26, g2 &= 0x3ffffff;
  g3 = h3 + c, c = g3 >> 26, g3 &= 0x3ffffff;
  g4 = h4 + c - (1u << 26);
  mask = (g4 >> 31) - 1; /* all ones when h + 5 - 2^130 >= 0 */
  h0 = (h0 & ~mask) | (g0 & mask), h1 = (h1 & ~mask) | (g1 & mask);
  h2 = (h2 & ~mask) | (g2 & mask), h3 = (h3 & ~mask) | (g3 & mask);
  h4 = (h4 & ~mask) | (g4 & mask);
  /* To four 32-bit words, plus the second half of the key. */
  f = (uint64_t)(h0 | h1 << 26) + p->k[0], put_le32(tag, (uint32_t)f);
  f = (uint64_t)(h1 >> 6 | h2 << 20) + p->k[1] + (f >> 32), put_le32(tag + 4, (uint32_t)f);
  f = (uint64_t)(h2 >> 12 | h3 << 14) + p->k[2] + (f >> 32), put_le32(tag + 8, (uint32_t)f);
  f = (uint64_t)(h3 >> 18 | h4 << 8) + p->k[3] + (f >> 32), put_le32(tag + 12, (uint32_t)f);
  wipe(p, sizeof(*p));
}
#endif

/* MACs len bytes as the AEAD does: whole blocks, then the rest zero-padded to 16. */
static void poly_padded(struct poly *p, const unsigned char *m, size_t len) {
  size_t whole = len / 16;
  if (whole > 0) poly_blocks(p, m, whole, 1);
  if (len % 16 != 0) {
    unsigned char b[16] = {0};
    memcpy(b, m + whole * 16, len % 16);
    poly_blocks(p, b, 1, 1);
  }
}

static void poly_lengths(struct poly *p, size_t aad_len, size_t len) {
  unsigned char b[16];
  put_le64(b, (uint64_t)aad_len);
  put_le64(b + 8, (uint64_t)len);
  poly_blocks(p, b, 1, 1);
}


#ifdef HAVE_X86
/* ---- ChaCha20, 8 and 16 blocks at a time ----
 * Vector i holds state word i of consecutive blocks (block k in lane k), so a quarter round is
 * the scalar one on whole vectors; the counters differ per lane. At the end the lanes are
 * transposed back into 64-byte blocks. */
#define AVX2 __attribute__((target("avx2")))
#define AVX512 __attribute__((target("avx512f,avx2")))

#define VQR(a, b, c, d, ADD, XOR, R16, R12, R8, R7)              \
  do {                                                           \
    a = ADD(a, b), d = XOR(d, a), d = R16(d);                    \
    c = ADD(c, d), b = XOR(b, c), b = R12(b);                    \
    a = ADD(a, b), d = XOR(d, a), d = R8(d);                     \
    c = ADD(c, d), b = XOR(b, c), b = R7(b);                     \
  } while (0)
#define DOUBLE_ROUND(Q)                                                                  \
  do {                                                                                   \
    Q(x0, x4, x8, x12); Q(x1, x5, x9, x13); Q(x2, x6, x10, x14); Q(x3, x7, x11, x15);    \
    Q(x0, x5, x10, x15); Q(x1, x6, x11, x12); Q(x2, x7, x8, x13); Q(x3, x4, x9, x14);    \
  } while (0)

/* Rotations by 16 and 8 are byte shuffles (one instruction instead of three). */
#define A2_R16(x) _mm256_shuffle_epi8(x, rot16)
#define A2_R8(x) _mm256_shuffle_epi8(x, rot8)
#define A2_R12(x) _mm256_or_si256(_mm256_slli_epi32(x, 12), _mm256_srli_epi32(x, 20))
#define A2_R7(x) _mm256_or_si256(_mm256_slli_epi32(x, 7), _mm256_srli_epi32(x, 25))
#define A2_QR(a, b, c, d) \
  VQR(a, b, c, d, _mm256_add_epi32, _mm256_xor_si256, A2_R16, A2_R12, A2_R8, A2_R7)

/* Words w..w+7 of 8 blocks (a[j] = word w+j, lane k = block k) to bytes 4w..4w+31 of each block
 * of out = in ^ keystream. */
AVX2 static inline void out8_avx2(const __m256i a[8], const unsigned char *in, unsigned char *out) {
  __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
  __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
  __m256i t4 = _mm256_unpacklo_epi32(a[4], a[5]), t5 = _mm256_unpackhi_epi32(a[4], a[5]);
  __m256i t6 = _mm256_unpacklo_epi32(a[6], a[7]), t7 = _mm256_unpackhi_epi32(a[6], a[7]);
  /* u[k] / v[k]: words w..w+3 / w+4..w+7 of block k (low lane) and block k+4 (high lane). */
  __m256i u[4], v[4];
  int k;
  u[0] = _mm256_unpacklo_epi64(t0, t2), u[1] = _mm256_unpackhi_epi64(t0, t2);
  u[2] = _mm256_unpacklo_epi64(t1, t3), u[3] = _mm256_unpackhi_epi64(t1, t3);
  v[0] = _mm256_unpacklo_epi64(t4, t6), v[1] = _mm256_unpackhi_epi64(t4, t6);
  v[2] = _mm256_unpacklo_epi64(t5, t7), v[3] = _mm256_unpackhi_epi64(t5, t7);
  for (k = 0; k < 4; k++) {
    __m256i lo = _mm256_permute2x128_si256(u[k], v[k], 0x20);
    __m256i hi = _mm256_permute2x128_si256(u[k], v[k], 0x31);
    const unsigned char *i0 = in + 64 * k, *i4 = in + 64 * (k + 4);
    _mm256_storeu_si256((__m256i *)(out + 64 * k),
                        _mm256_xor_si256(lo, _mm256_loadu_si256((const __m256i *)i0)));
    _mm256_storeu_si256((__m256i *)(out + 64 * (k + 4)),
                        _mm256_xor_si256(hi, _mm256_loadu_si256((const __m256i *)i4)));
  }
}

/* 512 bytes: blocks s[12] .. s[12] + 7. When mac is not NULL, also MACs the 512 bytes there (the
 * batch sealed before), a few blocks per double round: the scalar multiplies of Poly1305 then run
 * beside the vector rounds instead of after them. */
AVX2 static void chacha8_avx2(const uint32_t s[16], const unsigned char *in, unsigned char *out,
                              struct poly *p, const unsigned char *mac) {
  const __m256i rot16 = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2,
                                         3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  const __m256i rot8 = _mm256_setr_epi8(3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14, 3, 0,
                                        1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14);
  const __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32((int)s[12]),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i x0 = _mm256_set1_epi32((int)s[0]), x1 = _mm256_set1_epi32((int)s[1]);
  __m256i x2 = _mm256_set1_epi32((int)s[2]), x3 = _mm256_set1_epi32((int)s[3]);
  __m256i x4 = _mm256_set1_epi32((int)s[4]), x5 = _mm256_set1_epi32((int)s[5]);
  __m256i x6 = _mm256_set1_epi32((int)s[6]), x7 = _mm256_set1_epi32((int)s[7]);
  __m256i x8 = _mm256_set1_epi32((int)s[8]), x9 = _mm256_set1_epi32((int)s[9]);
  __m256i x10 = _mm256_set1_epi32((int)s[10]), x11 = _mm256_set1_epi32((int)s[11]);
  __m256i x12 = ctr, x13 = _mm256_set1_epi32((int)s[13]);
  __m256i x14 = _mm256_set1_epi32((int)s[14]), x15 = _mm256_set1_epi32((int)s[15]);
  __m256i a[8];
  int i;
  for (i = 0; i < 10; i++) {
    DOUBLE_ROUND(A2_QR);
    if (mac != NULL) { /* 32 blocks over 10 double rounds: 3 or 4 each */
      size_t nb = (size_t)(32 * (i + 1) / 10 - 32 * i / 10);
      poly_blocks(p, mac, nb, 1);
      mac += 16 * nb;
    }
  }
#define A2_FIN(j, x) a[j] = _mm256_add_epi32(x, _mm256_set1_epi32((int)s[(j) + base]))
  {
    const int base = 0;
    A2_FIN(0, x0), A2_FIN(1, x1), A2_FIN(2, x2), A2_FIN(3, x3);
    A2_FIN(4, x4), A2_FIN(5, x5), A2_FIN(6, x6), A2_FIN(7, x7);
    out8_avx2(a, in, out);
  }
  {
    const int base = 8;
    A2_FIN(0, x8), A2_FIN(1, x9), A2_FIN(2, x10), A2_FIN(3, x11);
    a[4] = _mm256_add_epi32(x12, ctr);
    A2_FIN(5, x13), A2_FIN(6, x14), A2_FIN(7, x15);
    out8_avx2(a, in + 32, out + 32);
  }
#undef A2_FIN
}

/* A last part shorter than a batch: the batch runs on a copy. */
typedef void batch_fn(const uint32_t s[16], const unsigned char *in, unsigned char *out,
                      struct poly *p, const unsigned char *mac);

static void xor_tail(const uint32_t s[16], const unsigned char *in, unsigned char *out, size_t len,
                     batch_fn *batch, size_t size) {
  unsigned char buf[1024];
  memcpy(buf, in, len);
  memset(buf + len, 0, size - len);
  batch(s, buf, buf, NULL, NULL);
  memcpy(out, buf, len);
  wipe(buf, size);
}

AVX2 static void xor_avx2(const uint32_t s[16], const unsigned char *in, unsigned char *out,
                          size_t len) {
  uint32_t st[16];
  memcpy(st, s, sizeof(st));
  for (; len >= 512; len -= 512, in += 512, out += 512, st[12] += 8)
    chacha8_avx2(st, in, out, NULL, NULL);
  if (len > 128) {
    xor_tail(st, in, out, len, chacha8_avx2, 512);
  } else if (len > 0) { /* one or two blocks cost less than a batch of 8 */
    xor_portable(st, in, out, len);
  }
  wipe(st, sizeof(st));
}

#define A5_R16(x) _mm512_rol_epi32(x, 16)
#define A5_R12(x) _mm512_rol_epi32(x, 12)
#define A5_R8(x) _mm512_rol_epi32(x, 8)
#define A5_R7(x) _mm512_rol_epi32(x, 7)
#define A5_QR(a, b, c, d) \
  VQR(a, b, c, d, _mm512_add_epi32, _mm512_xor_si512, A5_R16, A5_R12, A5_R8, A5_R7)

/* Words 4g..4g+3 (g = 0..3) of 16 blocks: k[j] lane L (128 bits) = those words of block 4L + j. */
AVX512 static inline void group16(__m512i a, __m512i b, __m512i c, __m512i d, __m512i k[4]) {
  __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpackhi_epi32(a, b);
  __m512i t2 = _mm512_unpacklo_epi32(c, d), t3 = _mm512_unpackhi_epi32(c, d);
  k[0] = _mm512_unpacklo_epi64(t0, t2), k[1] = _mm512_unpackhi_epi64(t0, t2);
  k[2] = _mm512_unpacklo_epi64(t1, t3), k[3] = _mm512_unpackhi_epi64(t1, t3);
}

AVX512 static inline void out16(__m512i v, const unsigned char *in, unsigned char *out) {
  _mm512_storeu_si512(out, _mm512_xor_si512(v, _mm512_loadu_si512(in)));
}

/* 1024 bytes: blocks s[12] .. s[12] + 15; mac as for chacha8_avx2 (1024 bytes). */
AVX512 static void chacha16_avx512(const uint32_t s[16], const unsigned char *in,
                                   unsigned char *out, struct poly *p, const unsigned char *mac) {
  const __m512i ctr = _mm512_add_epi32(
      _mm512_set1_epi32((int)s[12]),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i x0 = _mm512_set1_epi32((int)s[0]), x1 = _mm512_set1_epi32((int)s[1]);
  __m512i x2 = _mm512_set1_epi32((int)s[2]), x3 = _mm512_set1_epi32((int)s[3]);
  __m512i x4 = _mm512_set1_epi32((int)s[4]), x5 = _mm512_set1_epi32((int)s[5]);
  __m512i x6 = _mm512_set1_epi32((int)s[6]), x7 = _mm512_set1_epi32((int)s[7]);
  __m512i x8 = _mm512_set1_epi32((int)s[8]), x9 = _mm512_set1_epi32((int)s[9]);
  __m512i x10 = _mm512_set1_epi32((int)s[10]), x11 = _mm512_set1_epi32((int)s[11]);
  __m512i x12 = ctr, x13 = _mm512_set1_epi32((int)s[13]);
  __m512i x14 = _mm512_set1_epi32((int)s[14]), x15 = _mm512_set1_epi32((int)s[15]);
  __m512i g[4][4];
  int i, j;
  for (i = 0; i < 10; i++) {
    DOUBLE_ROUND(A5_QR);
    if (mac != NULL) { /* 64 blocks over 10 double rounds: 6 or 7 each */
      size_t nb = (size_t)(64 * (i + 1) / 10 - 64 * i / 10);
      poly_blocks(p, mac, nb, 1);
      mac += 16 * nb;
    }
  }
#define A5_FIN(x, w) _mm512_add_epi32(x, _mm512_set1_epi32((int)s[w]))
  group16(A5_FIN(x0, 0), A5_FIN(x1, 1), A5_FIN(x2, 2), A5_FIN(x3, 3), g[0]);
  group16(A5_FIN(x4, 4), A5_FIN(x5, 5), A5_FIN(x6, 6), A5_FIN(x7, 7), g[1]);
  group16(A5_FIN(x8, 8), A5_FIN(x9, 9), A5_FIN(x10, 10), A5_FIN(x11, 11), g[2]);
  group16(_mm512_add_epi32(x12, ctr), A5_FIN(x13, 13), A5_FIN(x14, 14), A5_FIN(x15, 15), g[3]);
#undef A5_FIN
  /* Block 4L + j is lane L of g[0][j], g[1][j], g[2][j], g[3][j]: a 4x4 transpose of lanes. */
  for (j = 0; j < 4; j++) {
    __m512i p0 = _mm512_shuffle_i32x4(g[0][j], g[1][j], 0x44);
    __m512i p1 = _mm512_shuffle_i32x4(g[0][j], g[1][j], 0xee);
    __m512i p2 = _mm512_shuffle_i32x4(g[2][j], g[3][j], 0x44);
    __m512i p3 = _mm512_shuffle_i32x4(g[2][j], g[3][j], 0xee);
    out16(_mm512_shuffle_i32x4(p0, p2, 0x88), in + 64 * j, out + 64 * j);
    out16(_mm512_shuffle_i32x4(p0, p2, 0xdd), in + 64 * (4 + j), out + 64 * (4 + j));
    out16(_mm512_shuffle_i32x4(p1, p3, 0x88), in + 64 * (8 + j), out + 64 * (8 + j));
    out16(_mm512_shuffle_i32x4(p1, p3, 0xdd), in + 64 * (12 + j), out + 64 * (12 + j));
  }
}

/* Whole 1 KiB batches, then the rest. */
AVX512 static void xor_avx512(const uint32_t s[16], const unsigned char *in, unsigned char *out,
                              size_t len) {
  uint32_t st[16];
  memcpy(st, s, sizeof(st));
  for (; len >= 1024; len -= 1024, in += 1024, out += 1024, st[12] += 16)
    chacha16_avx512(st, in, out, NULL, NULL);
  if (len > 128) { /* a batch of 16 here costs less than one of 8 with AVX2 */
    xor_tail(st, in, out, len, chacha16_avx512, 1024);
  } else if (len > 0) {
    xor_portable(st, in, out, len);
  }
  wipe(st, sizeof(st));
}

/* Seals whole batches, each one's MAC stitched into the next one's rounds; the last batch and
 * the rest after them. Advances s[12]. */
static void seal_batches(batch_fn *batch, size_t size, xor_fn *xor_rest, uint32_t s[16],
                         const unsigned char *in, unsigned char *out, size_t len, struct poly *p) {
  const unsigned char *prev = NULL;
  for (; len >= size; in += size, out += size, len -= size) {
    batch(s, in, out, p, prev);
    prev = out;
    s[12] += (uint32_t)(size / 64);
  }
  if (prev != NULL) poly_blocks(p, prev, size / 16, 1);
  if (len > 0) {
    xor_rest(s, in, out, len);
    poly_padded(p, out, len);
  }
}
#ifdef POLY64
#define HAVE_IFMA 1
/* ---- Poly1305, 8 blocks at a time (AVX-512 IFMA) ----
 * Lane j of each vector carries blocks j, j + 8, j + 16, ... (Horner's rule with r^8), and the
 * last 8 are multiplied by r^8 .. r^1 before the lanes are summed. Numbers are three limbs of 44,
 * 44 and 42 bits (2^132 = 20 mod p), which the 52-bit multiply-adds take whole; a product's high
 * part (bits 52..103) is shifted by 8 to line up with the next 44-bit limb. */
#define IFMA __attribute__((target("avx512ifma,avx512f,avx2")))
#define M44 0xfffffffffffu
#define M42 0x3ffffffffffu

/* Per lane j, the multipliers of the 8-block steps: all[i][j] = limb i of r^8, last[i][j] = limb
 * i of r^(8 - j) (the last step); limbs 3 and 4 are 20 times limbs 1 and 2. */
struct powers {
  uint64_t all[5][8], last[5][8];
};

/* h mod p from h < 2p (as in poly_finish), with its top bits. */
static void reduce_full(uint64_t *h0, uint64_t *h1, uint64_t *h2) {
  uint64_t g0, g1, g2, mask;
  u128 t = (u128)*h0 + 5;
  g0 = (uint64_t)t;
  t = (u128)*h1 + (uint64_t)(t >> 64);
  g1 = (uint64_t)t;
  g2 = *h2 + (uint64_t)(t >> 64);
  mask = 0 - (g2 >> 2);
  *h0 = (*h0 & ~mask) | (g0 & mask);
  *h1 = (*h1 & ~mask) | (g1 & mask);
  *h2 = (*h2 & ~mask) | (g2 & 3 & mask);
}

static void to44(uint64_t h0, uint64_t h1, uint64_t h2, uint64_t l[3]) {
  l[0] = h0 & M44;
  l[1] = (h0 >> 44 | h1 << 20) & M44;
  l[2] = h1 >> 24 | h2 << 40;
}

static void poly_powers(const struct poly *p, struct powers *w) {
  static const unsigned char zero[16];
  struct poly q = *p;
  uint64_t pw[8][5]; /* r^(k+1) */
  int k, i;
  q.h0 = p->r0, q.h1 = p->r1, q.h2 = 0;
  for (k = 0; k < 8; k++) {
    uint64_t h0 = q.h0, h1 = q.h1, h2 = q.h2;
    reduce_full(&h0, &h1, &h2);
    to44(h0, h1, h2, pw[k]);
    pw[k][3] = 20 * pw[k][1], pw[k][4] = 20 * pw[k][2];
    poly_blocks(&q, zero, 1, 0); /* q.h *= r */
  }
  for (i = 0; i < 5; i++) {
    for (k = 0; k < 8; k++) w->all[i][k] = pw[7][i], w->last[i][k] = pw[7 - k][i];
  }
  wipe(&q, sizeof(q));
  wipe(pw, sizeof(pw));
}

/* a * (r, s1 = 20 r1, s2 = 20 r2) per lane, carried back to 44/44/42-bit limbs (plus a little). */
IFMA static inline void mul44(__m512i a0, __m512i a1, __m512i a2, const __m512i r[5], __m512i *h0,
                              __m512i *h1, __m512i *h2) {
  const __m512i z = _mm512_setzero_si512(), m44 = _mm512_set1_epi64(M44);
  __m512i l0, l1, l2, u0, u1, u2, c;
  l0 = _mm512_madd52lo_epu64(z, a0, r[0]), u0 = _mm512_madd52hi_epu64(z, a0, r[0]);
  l1 = _mm512_madd52lo_epu64(z, a0, r[1]), u1 = _mm512_madd52hi_epu64(z, a0, r[1]);
  l2 = _mm512_madd52lo_epu64(z, a0, r[2]), u2 = _mm512_madd52hi_epu64(z, a0, r[2]);
  l0 = _mm512_madd52lo_epu64(l0, a1, r[4]), u0 = _mm512_madd52hi_epu64(u0, a1, r[4]);
  l1 = _mm512_madd52lo_epu64(l1, a1, r[0]), u1 = _mm512_madd52hi_epu64(u1, a1, r[0]);
  l2 = _mm512_madd52lo_epu64(l2, a1, r[1]), u2 = _mm512_madd52hi_epu64(u2, a1, r[1]);
  l0 = _mm512_madd52lo_epu64(l0, a2, r[3]), u0 = _mm512_madd52hi_epu64(u0, a2, r[3]);
  l1 = _mm512_madd52lo_epu64(l1, a2, r[4]), u1 = _mm512_madd52hi_epu64(u1, a2, r[4]);
  l2 = _mm512_madd52lo_epu64(l2, a2, r[0]), u2 = _mm512_madd52hi_epu64(u2, a2, r[0]);
  c = _mm512_add_epi64(_mm512_srli_epi64(l0, 44), _mm512_slli_epi64(u0, 8));
  *h0 = _mm512_and_si512(l0, m44);
  l1 = _mm512_add_epi64(l1, c);
  c = _mm512_add_epi64(_mm512_srli_epi64(l1, 44), _mm512_slli_epi64(u1, 8));
  *h1 = _mm512_and_si512(l1, m44);
  l2 = _mm512_add_epi64(l2, c);
  c = _mm512_add_epi64(_mm512_srli_epi64(l2, 42), _mm512_slli_epi64(u2, 10));
  *h2 = _mm512_and_si512(l2, _mm512_set1_epi64(M42));
  *h0 = _mm512_add_epi64(*h0, _mm512_add_epi64(c, _mm512_slli_epi64(c, 2))); /* 2^130 = 5 */
  c = _mm512_srli_epi64(*h0, 44);
  *h0 = _mm512_and_si512(*h0, m44);
  *h1 = _mm512_add_epi64(*h1, c);
}

/* n whole blocks (hibit set); whole groups of 8 by vector, the rest by poly_blocks. */
IFMA static void poly_blocks_ifma(struct poly *p, const struct powers *w, const unsigned char *m,
                                  size_t n) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  const __m512i m44 = _mm512_set1_epi64(M44), hibit = _mm512_set1_epi64((int64_t)1 << 40);
  size_t groups = n / 8, g;
  __m512i r8[5], rl[5], h0, h1, h2;
  uint64_t l[3], L0, L1, L2, c;
  int i;
  if (groups < 2) {
    poly_blocks(p, m, n, 1);
    return;
  }
  for (i = 0; i < 5; i++) {
    r8[i] = _mm512_loadu_si512(w->all[i]);
    rl[i] = _mm512_loadu_si512(w->last[i]);
  }
  to44(p->h0, p->h1, p->h2, l); /* the state so far joins the first block */
  h0 = _mm512_setr_epi64((int64_t)l[0], 0, 0, 0, 0, 0, 0, 0);
  h1 = _mm512_setr_epi64((int64_t)l[1], 0, 0, 0, 0, 0, 0, 0);
  h2 = _mm512_setr_epi64((int64_t)l[2], 0, 0, 0, 0, 0, 0, 0);
  for (g = 0; g < groups; g++, m += 128) {
    __m512i x = _mm512_loadu_si512(m), y = _mm512_loadu_si512(m + 64);
    __m512i lo = _mm512_permutex2var_epi64(x, even, y), hi = _mm512_permutex2var_epi64(x, odd, y);
    __m512i a0 = _mm512_add_epi64(h0, _mm512_and_si512(lo, m44));
    __m512i a1 = _mm512_add_epi64(
        h1, _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi64(lo, 44), _mm512_slli_epi64(hi, 20)),
                             m44));
    __m512i a2 = _mm512_add_epi64(h2, _mm512_or_si512(_mm512_srli_epi64(hi, 24), hibit));
    mul44(a0, a1, a2, g + 1 < groups ? r8 : rl, &h0, &h1, &h2);
  }
  /* Sum the lanes (each below 2^45) and carry to 44/44/42 bits, then to 64-bit limbs. */
  L0 = (uint64_t)_mm512_reduce_add_epi64(h0);
  L1 = (uint64_t)_mm512_reduce_add_epi64(h1);
  L2 = (uint64_t)_mm512_reduce_add_epi64(h2);
  c = L0 >> 44, L0 &= M44, L1 += c;
  c = L1 >> 44, L1 &= M44, L2 += c;
  c = L2 >> 42, L2 &= M42, L0 += c * 5;
  c = L0 >> 44, L0 &= M44, L1 += c;
  c = L1 >> 44, L1 &= M44, L2 += c; /* L2 <= 2^42: h2 <= 4 as poly_blocks keeps it */
  p->h0 = L0 | L1 << 44;
  p->h1 = L1 >> 20 | L2 << 24;
  p->h2 = L2 >> 40;
  n -= groups * 8;
  if (n > 0) poly_blocks(p, m, n, 1);
}

/* poly_padded with the vector blocks. */
IFMA static void poly_padded_ifma(struct poly *p, const struct powers *w, const unsigned char *m,
                                  size_t len) {
  size_t whole = len / 16;
  if (whole > 0) poly_blocks_ifma(p, w, m, whole);
  if (len % 16 != 0) poly_padded(p, m + whole * 16, len % 16);
}
#endif
#endif

/* ---- Choosing the implementation ---- */

/* The best the CPU and the OS support (dduct__cpu checks that the OS saves the registers). */
static int cpu_max(void) {
  const struct dduct_cpu *c = dduct__cpu();
#ifdef HAVE_X86
  if (!c->avx2) return DDUCT__CHACHAPOLY_PORTABLE;
  if (!c->avx512f) return DDUCT__CHACHAPOLY_AVX2;
#ifdef HAVE_IFMA
  if (c->avx512ifma) return DDUCT__CHACHAPOLY_AVX512IFMA;
#endif
  return DDUCT__CHACHAPOLY_AVX512;
#else
  (void)c;
  return DDUCT__CHACHAPOLY_PORTABLE;
#endif
}

enum dduct__chachapoly_impl dduct__chachapoly_best(void) {
  static atomic_int best = -1;
  int v = atomic_load_explicit(&best, memory_order_relaxed);
  if (v < 0) {
    v = dduct__diag()->chachapoly_portable ? DDUCT__CHACHAPOLY_PORTABLE : cpu_max();
    atomic_store_explicit(&best, v, memory_order_relaxed);
  }
  return (enum dduct__chachapoly_impl)v;
}

static atomic_int forced = -1; /* set by dduct__chachapoly_use */

enum dduct__chachapoly_impl dduct__chachapoly_use(enum dduct__chachapoly_impl impl) {
  int v = (int)impl < cpu_max() ? (int)impl : cpu_max();
  if (v < 0) v = DDUCT__CHACHAPOLY_PORTABLE;
  atomic_store_explicit(&forced, v, memory_order_relaxed);
  return (enum dduct__chachapoly_impl)v;
}

const char *dduct__chachapoly_impl_name(enum dduct__chachapoly_impl impl) {
  switch (impl) {
  case DDUCT__CHACHAPOLY_AVX2: return "avx2";
  case DDUCT__CHACHAPOLY_AVX512: return "avx512";
  case DDUCT__CHACHAPOLY_AVX512IFMA: return "avx512ifma";
  default: return "portable";
  }
}

static int current(void) {
  int v = atomic_load_explicit(&forced, memory_order_relaxed);
  return v < 0 ? (int)dduct__chachapoly_best() : v;
}

static xor_fn *impl_xor(int impl) {
#ifdef HAVE_X86
  if (impl >= DDUCT__CHACHAPOLY_AVX512) return xor_avx512;
  if (impl == DDUCT__CHACHAPOLY_AVX2) return xor_avx2;
#endif
  return xor_portable;
}

/* out = in ^ keystream from block s[12], MACed into p as it goes. */
static void seal_data(int impl, uint32_t s[16], const unsigned char *in, unsigned char *out,
                      size_t len, struct poly *p) {
  size_t off, n;
#ifdef HAVE_IFMA
  if (impl == DDUCT__CHACHAPOLY_AVX512IFMA) { /* both vector: one after the other, per slice */
    struct powers w;
    if (len < 256) { /* the powers of r cost more than they save */
      xor_avx512(s, in, out, len);
      poly_padded(p, out, len);
      return;
    }
    poly_powers(p, &w);
    for (off = 0; off < len; off += n) {
      n = len - off < SLICE_IFMA ? len - off : SLICE_IFMA;
      xor_avx512(s, in + off, out + off, n);
      poly_padded_ifma(p, &w, out + off, n);
      s[12] += SLICE_IFMA / 64;
    }
    wipe(&w, sizeof(w));
    return;
  }
#endif
#ifdef HAVE_X86
  if (impl == DDUCT__CHACHAPOLY_AVX512) {
    seal_batches(chacha16_avx512, 1024, xor_avx512, s, in, out, len, p);
    return;
  }
  if (impl == DDUCT__CHACHAPOLY_AVX2) {
    seal_batches(chacha8_avx2, 512, xor_avx2, s, in, out, len, p);
    return;
  }
#endif
  for (off = 0; off < len; off += n) {
    n = len - off < SLICE ? len - off : SLICE;
    xor_portable(s, in + off, out + off, n);
    poly_padded(p, out + off, n); /* only the last slice can be partial */
    s[12] += SLICE / 64;
  }
}

/* MACs len bytes (padded) into p. */
static void mac_data(int impl, struct poly *p, const unsigned char *m, size_t len) {
#ifdef HAVE_IFMA
  if (impl == DDUCT__CHACHAPOLY_AVX512IFMA && len >= 256) {
    struct powers w;
    poly_powers(p, &w);
    poly_padded_ifma(p, &w, m, len);
    wipe(&w, sizeof(w));
    return;
  }
#endif
  poly_padded(p, m, len);
}

void dduct__poly1305(const unsigned char key[32], const unsigned char *m, size_t len,
                     unsigned char tag[16]) {
  struct poly p;
  size_t whole = len / 16;
  poly_init(&p, key);
  if (whole > 0) mac_data(current(), &p, m, whole * 16);
  if (len % 16 != 0) { /* RFC 8439 2.5: the last block gets a 1 byte, then zeros */
    unsigned char b[16] = {0};
    memcpy(b, m + whole * 16, len % 16);
    b[len % 16] = 1;
    poly_blocks(&p, b, 1, 0);
  }
  poly_finish(&p, tag);
}

/* ---- The AEAD (RFC 8439 2.8) ---- */

/* The Poly1305 key is the first half of block 0; the data starts at block 1. */
static void aead_start(struct poly *p, uint32_t s[16], const unsigned char key[32],
                       const unsigned char nonce[12], const unsigned char *aad, size_t aad_len) {
  unsigned char block0[64];
  chacha_init(s, key, nonce, 0);
  chacha_block(s, block0);
  poly_init(p, block0);
  wipe(block0, sizeof(block0));
  if (aad_len > 0) poly_padded(p, aad, aad_len);
  s[12] = 1;
}

void dduct__chachapoly_seal(const unsigned char key[32], const unsigned char nonce[12],
                            const unsigned char *aad, size_t aad_len,
                            const unsigned char *in, size_t len, unsigned char *out,
                            unsigned char tag[16]) {
  struct poly p;
  uint32_t s[16];
  aead_start(&p, s, key, nonce, aad, aad_len);
  seal_data(current(), s, in, out, len, &p);
  poly_lengths(&p, aad_len, len);
  poly_finish(&p, tag);
  wipe(s, sizeof(s));
}

int dduct__chachapoly_open(const unsigned char key[32], const unsigned char nonce[12],
                           const unsigned char *aad, size_t aad_len,
                           const unsigned char *in, size_t len, const unsigned char tag[16],
                           unsigned char *out) {
  int impl = current();
  xor_fn *xor_stream = impl_xor(impl);
  struct poly p;
  uint32_t s[16];
  unsigned char want[16], diff = 0;
  int i;
  aead_start(&p, s, key, nonce, aad, aad_len);
  if (len > 0) mac_data(impl, &p, in, len);
  poly_lengths(&p, aad_len, len);
  poly_finish(&p, want);
  for (i = 0; i < 16; i++) diff |= (unsigned char)(want[i] ^ tag[i]);
  if (diff != 0) {
    wipe(s, sizeof(s));
    return -1;
  }
  if (len > 0) xor_stream(s, in, out, len);
  wipe(s, sizeof(s));
  return 0;
}
