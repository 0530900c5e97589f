/* AES-GCM (NIST SP 800-38D), written from the standard and Intel's instruction descriptions.
 *
 * Why: origins choose the cipher for dduct, and CDNs and registries prefer AES-GCM; Debian's
 * mbedTLS 2.28 does it in table-driven C (~250 MB/s per core here), which bound every miss from
 * such an origin. Here AES runs on AES-NI, 8 counter blocks in flight (or 16, four to a 512-bit
 * vector, with VAES), and GHASH on carry-less multiplies: a batch of blocks is multiplied by the
 * precomputed powers H^n .. H^1 and summed before one reduction (aggregated reduction). The SIMD
 * functions alone are compiled for their extension (target attribute), so the library stays
 * baseline x86-64 and the choice is made at run time from CPUID, as in chachapoly.c.
 *
 * GHASH works on bit-reflected blocks. Each block is byte-reversed on load, which turns it into
 * a polynomial in POLYVAL's bit order (RFC 8452); there, multiplying by H x (mulX of the reversed
 * H, computed once) and reducing with Montgomery's x^-128 gives the GHASH product, so no shift
 * by one is needed per multiplication. The state is reversed back once, for the tag.
 *
 * Constant time: AES and GHASH are instructions, not tables; no branch or memory index depends on
 * the key, the IV or the data, only on lengths. Without AES-NI there is no implementation here
 * (see aesgcm.h). */
#include "aesgcm.h"
#include "diag.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <immintrin.h>
#endif

/* GCM's limit on one message: 2^32 - 2 blocks. */
#define MAX_LEN (((uint64_t)1 << 36) - 32)

/* Key material must not outlive the call on the stack (see chachapoly.c). */
static void wipe(void *p, size_t n) {
#if defined(__GNUC__) || defined(__clang__)
  memset(p, 0, n);
  __asm__ __volatile__("" : : "r"(p) : "memory");
#else
  volatile unsigned char *v = p;
  while (n-- > 0) *v++ = 0;
#endif
}

#ifdef HAVE_X86
#define INLINE __attribute__((always_inline)) inline
#define AESNI __attribute__((target("aes,pclmul,ssse3,sse4.1")))
/* A superset of AESNI's features, so the AESNI helpers inline into these functions. */
#define VAES512                                                                                    \
  __attribute__((target("vaes,vpclmulqdq,avx512f,avx512bw,avx512vl,avx2,avx,aes,pclmul,ssse3,"   \
                        "sse4.1")))

#define LOAD(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define STORE(p, v) _mm_storeu_si128((__m128i *)(void *)(p), v)

/* ---- building blocks ---- */

AESNI INLINE static __m128i bswap128(__m128i x) {
  return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* Counter blocks are kept with their last 32-bit word (the big-endian block counter) byte-swapped
 * to little-endian, so adding to lane 3 counts and wraps modulo 2^32 as GCM's inc32 does; this
 * mask swaps it back (and is its own inverse). */
AESNI INLINE static __m128i ctr_mask(void) {
  return _mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

/* lo, mid, hi += the 256-bit carry-less product a * b (mid: the two cross products). */
AESNI INLINE static void mul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *mid, __m128i *hi) {
  *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
  *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
  *mid = _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01),
                                           _mm_clmulepi64_si128(a, b, 0x10)));
}

/* The product (lo, mid, hi) times x^-128 modulo x^128 + x^127 + x^126 + x^121 + 1: two
 * Montgomery steps of 64 bits, each one multiply by the polynomial's top word (0xc2 << 56). */
AESNI INLINE static __m128i reduce(__m128i lo, __m128i mid, __m128i hi) {
  const __m128i poly = _mm_set_epi64x((long long)0xc200000000000000ull, 1);
  __m128i t;
  lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
  hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
  t = _mm_clmulepi64_si128(lo, poly, 0x10);
  lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
  t = _mm_clmulepi64_si128(lo, poly, 0x10);
  lo = _mm_xor_si128(_mm_shuffle_epi32(lo, 0x4e), t);
  return _mm_xor_si128(lo, hi);
}

AESNI INLINE static __m128i dot(__m128i a, __m128i b) {
  __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
  mul_acc(a, b, &lo, &mid, &hi);
  return reduce(lo, mid, hi);
}

/* ---- AES ---- */

/* SubWord (FIPS 197 5.2) by AESKEYGENASSIST, whose lowest word is SubWord of the input's second. */
AESNI static uint32_t sub_word(uint32_t w) {
  return (uint32_t)_mm_cvtsi128_si32(_mm_aeskeygenassist_si128(_mm_set1_epi32((int)w), 0));
}

/* FIPS 197 5.2 KeyExpansion, word by word, for 16-, 24- and 32-byte keys (words little-endian, so
 * RotWord is a rotation right by 8 and Rcon goes into the low byte). */
AESNI static void expand(const unsigned char *key, size_t key_len, struct dduct__aesgcm *c) {
  static const uint8_t rcon[10] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36};
  const size_t nk = key_len / 4, total = 4 * (nk + 7);
  uint32_t w[60];
  size_t i;
  memcpy(w, key, key_len);
  for (i = nk; i < total; i++) {
    uint32_t t = w[i - 1];
    if (i % nk == 0) t = sub_word(t >> 8 | t << 24) ^ rcon[i / nk - 1];
    else if (nk > 6 && i % nk == 4) t = sub_word(t);
    w[i] = w[i - nk] ^ t;
  }
  memcpy(c->rk, w, total * 4);
  c->rounds = (int)nk + 6;
  wipe(w, sizeof(w));
}

AESNI INLINE static __m128i aes_block(const struct dduct__aesgcm *c, __m128i x) {
  int r;
  x = _mm_xor_si128(x, LOAD(c->rk[0]));
  for (r = 1; r < c->rounds; r++) x = _mm_aesenc_si128(x, LOAD(c->rk[r]));
  return _mm_aesenclast_si128(x, LOAD(c->rk[c->rounds]));
}

/* Eight counter blocks from cb (lane form, see ctr_mask) on, encrypted. */
AESNI INLINE static void aes8(const struct dduct__aesgcm *c, __m128i cb, __m128i b[8]) {
  const __m128i m = ctr_mask(), k0 = LOAD(c->rk[0]);
  __m128i k;
  int i, r;
  for (i = 0; i < 8; i++)
    b[i] = _mm_xor_si128(_mm_shuffle_epi8(_mm_add_epi32(cb, _mm_set_epi32(i, 0, 0, 0)), m), k0);
  for (r = 1; r < c->rounds; r++) {
    k = LOAD(c->rk[r]);
    for (i = 0; i < 8; i++) b[i] = _mm_aesenc_si128(b[i], k);
  }
  k = LOAD(c->rk[c->rounds]);
  for (i = 0; i < 8; i++) b[i] = _mm_aesenclast_si128(b[i], k);
}

/* ---- GHASH ---- */

/* n whole blocks into the state s: up to 8 at a time, block i of k times H^(k-i), one reduction
 * per group. htab holds H^16 .. H^1, so the k powers of a group are its last k entries. */
AESNI static __m128i ghash_aesni(const struct dduct__aesgcm *c, __m128i s, const unsigned char *d,
                                 size_t n) {
  while (n > 0) {
    size_t k = n < 8 ? n : 8, i;
    const unsigned char(*h)[16] = c->htab + 16 - k;
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
    mul_acc(_mm_xor_si128(bswap128(LOAD(d)), s), LOAD(h[0]), &lo, &mid, &hi);
    for (i = 1; i < k; i++) mul_acc(bswap128(LOAD(d + 16 * i)), LOAD(h[i]), &lo, &mid, &hi);
    s = reduce(lo, mid, hi);
    d += 16 * k;
    n -= k;
  }
  return s;
}

/* len bytes, the last block zero-padded. */
AESNI static __m128i ghash_bytes(const struct dduct__aesgcm *c, __m128i s, const unsigned char *d,
                                 size_t len) {
  if (len >= 16) s = ghash_aesni(c, s, d, len / 16);
  if (len % 16 != 0) {
    unsigned char b[16] = {0};
    memcpy(b, d + len / 16 * 16, len % 16);
    s = ghash_aesni(c, s, b, 1);
  }
  return s;
}

/* The last GHASH block: the bit lengths of the aad and the data (byte-reversed: data low). */
AESNI INLINE static __m128i ghash_lengths(const struct dduct__aesgcm *c, __m128i s,
                                          uint64_t aad_len, uint64_t len) {
  __m128i x = _mm_set_epi64x((long long)(aad_len * 8), (long long)(len * 8));
  return dot(_mm_xor_si128(s, x), LOAD(c->htab[15]));
}

/* ---- AES-NI: 8 blocks in flight ---- */

/* out = in ^ keystream from counter block *cb on, which it advances; when seal, the output is
 * hashed into *s as it goes (by batch, while it is in registers). */
AESNI static void ctr_aesni(const struct dduct__aesgcm *c, __m128i *cb, const unsigned char *in,
                            unsigned char *out, size_t len, __m128i *s, int seal) {
  const unsigned char(*h)[16] = c->htab + 8;
  __m128i b[8];
  int i;
  for (; len >= 128; len -= 128, in += 128, out += 128) {
    aes8(c, *cb, b);
    *cb = _mm_add_epi32(*cb, _mm_set_epi32(8, 0, 0, 0));
    for (i = 0; i < 8; i++) {
      b[i] = _mm_xor_si128(b[i], LOAD(in + 16 * i));
      STORE(out + 16 * i, b[i]);
    }
    if (seal) {
      __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
      mul_acc(_mm_xor_si128(bswap128(b[0]), *s), LOAD(h[0]), &lo, &mid, &hi);
      for (i = 1; i < 8; i++) mul_acc(bswap128(b[i]), LOAD(h[i]), &lo, &mid, &hi);
      *s = reduce(lo, mid, hi);
    }
  }
  if (len > 0) {
    unsigned char ks[128];
    size_t j, whole = len / 16 * 16;
    aes8(c, *cb, b);
    *cb = _mm_add_epi32(*cb, _mm_set_epi32((int)((len + 15) / 16), 0, 0, 0));
    for (j = 0; j < whole; j += 16) STORE(out + j, _mm_xor_si128(b[j / 16], LOAD(in + j)));
    if (whole < len) {
      STORE(ks, b[whole / 16]);
      for (j = whole; j < len; j++) out[j] = (unsigned char)(in[j] ^ ks[j - whole]);
      wipe(ks, 16);
    }
    if (seal) *s = ghash_bytes(c, *s, out, len);
  }
}

/* ---- VAES + VPCLMULQDQ: four blocks to a 512-bit vector, 16 in flight ---- */

VAES512 INLINE static __m512i bcast(const unsigned char *p) {
  return _mm512_broadcast_i32x4(LOAD(p));
}

/* Sixteen counter blocks from cb on, encrypted: vector j holds blocks 4j .. 4j + 3. */
VAES512 INLINE static void aes16(const struct dduct__aesgcm *c, __m128i cb, __m512i b[4]) {
  const __m512i m = _mm512_broadcast_i32x4(ctr_mask());
  const __m512i four = _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0);
  __m512i ctr = _mm512_add_epi32(_mm512_broadcast_i32x4(cb),
                                 _mm512_set_epi32(3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0));
  __m512i k = bcast(c->rk[0]);
  int j, r;
  for (j = 0; j < 4; j++, ctr = _mm512_add_epi32(ctr, four))
    b[j] = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, m), k);
  for (r = 1; r < c->rounds; r++) {
    k = bcast(c->rk[r]);
    for (j = 0; j < 4; j++) b[j] = _mm512_aesenc_epi128(b[j], k);
  }
  k = bcast(c->rk[c->rounds]);
  for (j = 0; j < 4; j++) b[j] = _mm512_aesenclast_epi128(b[j], k);
}

VAES512 INLINE static __m128i fold4(__m512i v) {
  __m256i a = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  return _mm_xor_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

/* Hash up to 16 blocks, given as nv vectors x (blocks in memory order, a short last block
 * already zero-padded; nb blocks in all), into s: block i times H^(nb - i), one reduction. */
VAES512 INLINE static __m128i ghash16(const struct dduct__aesgcm *c, __m128i s, const __m512i *x,
                                      int nv, int nb) {
  const __m512i bs = _mm512_broadcast_i32x4(
      _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const unsigned char(*h)[16] = c->htab + 16 - nb;
  __m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
  int j;
  for (j = 0; j < nv; j++) {
    __m512i v = _mm512_shuffle_epi8(x[j], bs), k = _mm512_loadu_si512(h + 4 * j);
    if (j == 0) v = _mm512_xor_si512(v, _mm512_zextsi128_si512(s));
    lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(v, k, 0x00));
    hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(v, k, 0x11));
    mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(v, k, 0x01),
                                    _mm512_clmulepi64_epi128(v, k, 0x10), 0x96);
  }
  return reduce(fold4(lo), fold4(mid), fold4(hi));
}

/* Byte mask of the first n (<= 64) bytes of a vector. */
VAES512 INLINE static __mmask64 first(size_t n) {
  return n >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1;
}

/* len bytes (< 256, > 0) at d as vectors, zero-padded; returns the vector count. */
VAES512 INLINE static int load_tail(const unsigned char *d, size_t len, __m512i x[4]) {
  int j;
  for (j = 0; (size_t)j * 64 < len; j++) x[j] = _mm512_maskz_loadu_epi8(first(len - 64 * j), d + 64 * j);
  return j;
}

VAES512 static __m128i ghash_vaes(const struct dduct__aesgcm *c, __m128i s, const unsigned char *d,
                                  size_t len) {
  __m512i x[4];
  int j, nv;
  for (; len >= 256; len -= 256, d += 256) {
    for (j = 0; j < 4; j++) x[j] = _mm512_loadu_si512(d + 64 * j);
    s = ghash16(c, s, x, 4, 16);
  }
  if (len > 0) {
    nv = load_tail(d, len, x);
    s = ghash16(c, s, x, nv, (int)((len + 15) / 16));
  }
  return s;
}

/* As ctr_aesni, 16 blocks at a time; the tail through masked loads and stores. */
VAES512 static void ctr_vaes(const struct dduct__aesgcm *c, __m128i *cb, const unsigned char *in,
                             unsigned char *out, size_t len, __m128i *s, int seal) {
  __m512i b[4], x[4], prev[4];
  int j, nv, have = 0;
  /* Sealing hashes each batch while the next one's rounds run (one loop body, no dependency
   * between the two), so the multiplier and the AES units work side by side. */
  for (; len >= 256; len -= 256, in += 256, out += 256) {
    aes16(c, *cb, b);
    *cb = _mm_add_epi32(*cb, _mm_set_epi32(16, 0, 0, 0));
    if (seal && have) *s = ghash16(c, *s, prev, 4, 16);
    for (j = 0; j < 4; j++) {
      b[j] = _mm512_xor_si512(b[j], _mm512_loadu_si512(in + 64 * j));
      _mm512_storeu_si512(out + 64 * j, b[j]);
      prev[j] = b[j];
    }
    have = 1;
  }
  if (seal && have) *s = ghash16(c, *s, prev, 4, 16);
  if (len > 0) {
    aes16(c, *cb, b);
    *cb = _mm_add_epi32(*cb, _mm_set_epi32((int)((len + 15) / 16), 0, 0, 0));
    nv = load_tail(in, len, x);
    for (j = 0; j < nv; j++) {
      x[j] = _mm512_xor_si512(x[j], b[j]);
      _mm512_mask_storeu_epi8(out + 64 * j, first(len - 64 * (size_t)j), x[j]);
      /* the padding is keystream now: zero it again for the hash */
      x[j] = _mm512_maskz_mov_epi8(first(len - 64 * (size_t)j), x[j]);
    }
    if (seal) *s = ghash16(c, *s, x, nv, (int)((len + 15) / 16));
  }
}

/* ---- key setup and the AEAD ---- */

/* H x in POLYVAL's order: the reversed H shifted left by one, reduced (RFC 8452, mulX_POLYVAL). */
AESNI static __m128i mulx(__m128i v) {
  uint64_t lo = (uint64_t)_mm_cvtsi128_si64(v), hi = (uint64_t)_mm_extract_epi64(v, 1);
  uint64_t mask = 0 - (hi >> 63);
  hi = hi << 1 | lo >> 63;
  lo <<= 1;
  hi ^= mask & 0xc200000000000000ull;
  lo ^= mask & 1;
  return _mm_set_epi64x((long long)hi, (long long)lo);
}

AESNI static void setup_x86(struct dduct__aesgcm *c, const unsigned char *key, size_t key_len) {
  __m128i h, p;
  int k;
  expand(key, key_len, c);
  h = mulx(bswap128(aes_block(c, _mm_setzero_si128())));
  p = h;
  for (k = 1; k <= 16; k++) { /* htab[16 - k] = H^k */
    STORE(c->htab[16 - k], p);
    p = dot(p, h);
  }
  memset(c->htab + 16, 0, 16 * 16);
}

/* The first counter block J0 (SP 800-38D 7.1), in lane form. */
AESNI static __m128i counter0(const struct dduct__aesgcm *c, const unsigned char *iv,
                              size_t iv_len) {
  __m128i j0;
  if (iv_len == 12) {
    unsigned char b[16];
    memcpy(b, iv, 12);
    b[12] = 0, b[13] = 0, b[14] = 0, b[15] = 1;
    j0 = LOAD(b);
  } else { /* GHASH(IV, padded, || 0^64 || [len(IV)]64) */
    __m128i s = ghash_bytes(c, _mm_setzero_si128(), iv, iv_len);
    j0 = bswap128(ghash_lengths(c, s, 0, iv_len));
  }
  return _mm_shuffle_epi8(j0, ctr_mask());
}

AESNI static int seal_x86(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                          const unsigned char *aad, size_t aad_len, const unsigned char *in,
                          size_t len, unsigned char *out, unsigned char tag[16]) {
  __m128i j0 = counter0(c, iv, iv_len), cb = _mm_add_epi32(j0, _mm_set_epi32(1, 0, 0, 0));
  __m128i s = ghash_bytes(c, _mm_setzero_si128(), aad, aad_len);
  if (len > 0) {
    if (c->impl == DDUCT__AESGCM_VAES512) ctr_vaes(c, &cb, in, out, len, &s, 1);
    else ctr_aesni(c, &cb, in, out, len, &s, 1);
  }
  s = ghash_lengths(c, s, aad_len, len);
  STORE(tag, _mm_xor_si128(bswap128(s), aes_block(c, _mm_shuffle_epi8(j0, ctr_mask()))));
  return 0;
}

AESNI static int open_x86(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                          const unsigned char *aad, size_t aad_len, const unsigned char *in,
                          size_t len, const unsigned char *tag, size_t tag_len,
                          unsigned char *out) {
  __m128i j0 = counter0(c, iv, iv_len), cb = _mm_add_epi32(j0, _mm_set_epi32(1, 0, 0, 0));
  __m128i s = ghash_bytes(c, _mm_setzero_si128(), aad, aad_len);
  unsigned char want[16], diff = 0;
  size_t i;
  if (len > 0) {
    if (c->impl == DDUCT__AESGCM_VAES512) s = ghash_vaes(c, s, in, len);
    else s = ghash_bytes(c, s, in, len);
  }
  s = ghash_lengths(c, s, aad_len, len);
  STORE(want, _mm_xor_si128(bswap128(s), aes_block(c, _mm_shuffle_epi8(j0, ctr_mask()))));
  for (i = 0; i < tag_len; i++) diff |= (unsigned char)(want[i] ^ tag[i]);
  wipe(want, sizeof(want));
  if (diff != 0) return -1;
  if (len > 0) {
    if (c->impl == DDUCT__AESGCM_VAES512) ctr_vaes(c, &cb, in, out, len, &s, 0);
    else ctr_aesni(c, &cb, in, out, len, &s, 0);
  }
  return 0;
}

/* GHASH alone, for the cache's checksum (checksum.c): the state crosses the API in the standard's
 * byte order, so the caller needs no knowledge of the reflected domain used here. */
AESNI static void ghash_x86(const struct dduct__aesgcm *c, unsigned char state[16],
                            const unsigned char *d, size_t len) {
  __m128i s = bswap128(LOAD(state));
  if (c->impl == DDUCT__AESGCM_VAES512) s = ghash_vaes(c, s, d, len);
  else s = ghash_bytes(c, s, d, len);
  STORE(state, bswap128(s));
}
#endif

/* ---- Choosing the implementation ---- */

/* AES-NI with PCLMULQDQ and the SSSE3/SSE4.1 shuffles; VAES also needs AVX-512 F, BW (byte
 * masks) and VL, AVX2 and VPCLMULQDQ. */
static int cpu_max(void) {
  const struct dduct_cpu *c = dduct__cpu();
#ifdef HAVE_X86
  if (!c->aesni || !c->pclmul || !c->ssse3 || !c->sse41) return DDUCT__AESGCM_NONE;
  if (!c->avx512f || !c->avx512bw || !c->avx512vl || !c->avx2 || !c->vaes || !c->vpclmul)
    return DDUCT__AESGCM_AESNI;
  return DDUCT__AESGCM_VAES512;
#else
  (void)c;
  return DDUCT__AESGCM_NONE;
#endif
}

enum dduct__aesgcm_impl dduct__aesgcm_best(void) {
  static atomic_int best = -1;
  int v = atomic_load_explicit(&best, memory_order_relaxed);
  if (v < 0) {
    const struct dduct_diag *d = dduct__diag();
    v = cpu_max();
    if (d->aesgcm_off) v = DDUCT__AESGCM_NONE;
    else if (d->aesgcm_aesni && v > DDUCT__AESGCM_AESNI) v = DDUCT__AESGCM_AESNI;
    atomic_store_explicit(&best, v, memory_order_relaxed);
  }
  return (enum dduct__aesgcm_impl)v;
}

static atomic_int forced = -1; /* set by dduct__aesgcm_use */

enum dduct__aesgcm_impl dduct__aesgcm_use(enum dduct__aesgcm_impl impl) {
  int v = (int)impl < cpu_max() ? (int)impl : cpu_max();
  if (v < 0) v = DDUCT__AESGCM_NONE;
  atomic_store_explicit(&forced, v, memory_order_relaxed);
  return (enum dduct__aesgcm_impl)v;
}

const char *dduct__aesgcm_impl_name(enum dduct__aesgcm_impl impl) {
  switch (impl) {
  case DDUCT__AESGCM_AESNI: return "aesni";
  case DDUCT__AESGCM_VAES512: return "vaes-avx512";
  default: return "none";
  }
}

int dduct__aesgcm_init(struct dduct__aesgcm *c, const unsigned char *key, size_t key_len) {
  int v = atomic_load_explicit(&forced, memory_order_relaxed);
  if (v < 0) v = (int)dduct__aesgcm_best();
  memset(c, 0, sizeof(*c));
  if ((key_len != 16 && key_len != 24 && key_len != 32) || v == DDUCT__AESGCM_NONE) return -1;
  c->impl = v;
#ifdef HAVE_X86
  setup_x86(c, key, key_len);
  return 0;
#else
  return -1;
#endif
}

void dduct__aesgcm_wipe(struct dduct__aesgcm *c) {
  wipe(c, sizeof(*c));
}

int dduct__aesgcm_seal(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                       const unsigned char *aad, size_t aad_len, const unsigned char *in,
                       size_t len, unsigned char *out, unsigned char tag[16]) {
  if (iv_len == 0 || (uint64_t)len > MAX_LEN || c->impl == DDUCT__AESGCM_NONE) return -1;
#ifdef HAVE_X86
  return seal_x86(c, iv, iv_len, aad, aad_len, in, len, out, tag);
#else
  (void)aad, (void)in, (void)out, (void)tag;
  return -1;
#endif
}

int dduct__aesgcm_open(const struct dduct__aesgcm *c, const unsigned char *iv, size_t iv_len,
                       const unsigned char *aad, size_t aad_len, const unsigned char *in,
                       size_t len, const unsigned char *tag, size_t tag_len, unsigned char *out) {
  if (iv_len == 0 || (uint64_t)len > MAX_LEN || tag_len == 0 || tag_len > 16 ||
      c->impl == DDUCT__AESGCM_NONE)
    return -1;
#ifdef HAVE_X86
  return open_x86(c, iv, iv_len, aad, aad_len, in, len, tag, tag_len, out);
#else
  (void)aad, (void)in, (void)out;
  return -1;
#endif
}

void dduct__aesgcm_ghash(const struct dduct__aesgcm *c, unsigned char state[16],
                         const unsigned char *d, size_t len) {
  if (len == 0 || c->impl == DDUCT__AESGCM_NONE) return;
#ifdef HAVE_X86
  ghash_x86(c, state, d, len);
#else
  (void)state, (void)d;
#endif
}
