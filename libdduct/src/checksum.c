/* Body digests for the cache: SHA-256 (sha256.c) or GMAC-K0, behind one streaming interface.
 *
 * GMAC-K0 is the tag AES-128-GCM computes when it decrypts the body as ciphertext, with no AAD,
 * under the fixed K0 and IV0 (checksum.h): tag = GHASH_H(body, zero-padded || [0]64 || [8 len]64)
 * XOR E_K0(J0), H = E_K0(0^128), J0 = IV0 || 0^31 1 (SP 800-38D 7.2). The key is public: this
 * detects corruption (as ZFS's fletcher4 does), it authenticates nothing.
 *
 * GHASH runs in aesgcm.c (carry-less multiplies, 8 or 16 blocks per reduction) when that has an
 * implementation for this CPU; otherwise in portable C here, with 4-bit tables (Shoup's method,
 * SP 800-38D's algorithm 1 taken four bits at a time): the key and the data are not secret, so
 * table lookups indexed by them are acceptable. The two constants the key fixes, H and E_K0(J0),
 * come from mbedTLS's AES once per process. */
#include "checksum.h"

#include <mbedtls/aes.h>

#include <pthread.h>
#include <string.h>

/* ---- the constants K0 fixes ---- */

struct gf {
  uint64_t hi, lo; /* a block as a big-endian 128-bit number: bit 127 is the coefficient of x^0 */
};

static pthread_once_t consts_once = PTHREAD_ONCE_INIT;
static unsigned char ek0j0[16]; /* E_K0(J0): the tag of an empty body */
static struct gf mtab[16];      /* mtab[n] = H times the 4-bit polynomial n (bit 3: x^0) */
static uint64_t rem4[16];       /* x^4 of the four bits shifted out, as the top 64 bits */

static struct gf gf_load(const unsigned char *p) {
  struct gf v = {0, 0};
  for (int i = 0; i < 8; i++) v.hi = v.hi << 8 | p[i], v.lo = v.lo << 8 | p[8 + i];
  return v;
}

static void gf_store(struct gf v, unsigned char *p) {
  for (int i = 7; i >= 0; i--, v.hi >>= 8, v.lo >>= 8)
    p[i] = (unsigned char)v.hi, p[8 + i] = (unsigned char)v.lo;
}

/* v times x: a shift towards higher degrees, x^128 = 1 + x + x^2 + x^7 (R = 0xe1 || 0^120). */
static struct gf gf_mulx(struct gf v) {
  uint64_t carry = v.lo & 1;
  v.lo = v.lo >> 1 | v.hi << 63;
  v.hi = v.hi >> 1 ^ ((0 - carry) & 0xe100000000000000ull);
  return v;
}

static void consts_make(void) {
  static const unsigned char zero[16];
  unsigned char h[16], j0[16];
  mbedtls_aes_context aes;
  struct gf p;
  mbedtls_aes_init(&aes);
  (void)mbedtls_aes_setkey_enc(&aes, (const unsigned char *)DDUCT__GMAC_K0, 128);
  (void)mbedtls_aes_crypt_ecb(&aes, MBEDTLS_AES_ENCRYPT, zero, h);
  memcpy(j0, DDUCT__GMAC_IV0, 12);
  j0[12] = 0, j0[13] = 0, j0[14] = 0, j0[15] = 1;
  (void)mbedtls_aes_crypt_ecb(&aes, MBEDTLS_AES_ENCRYPT, j0, ek0j0);
  mbedtls_aes_free(&aes);
  /* A nibble's first bit (value 8) is its lowest degree: 8 H, 4 H x, 2 H x^2, 1 H x^3. */
  p = gf_load(h);
  for (int b = 8; b > 0; b >>= 1, p = gf_mulx(p)) mtab[b] = p;
  for (int n = 1; n < 16; n++) {
    int low = n & -n;
    if (n == low) continue;
    mtab[n].hi = mtab[low].hi ^ mtab[n ^ low].hi;
    mtab[n].lo = mtab[low].lo ^ mtab[n ^ low].lo;
  }
  /* The four lowest bits of a number are x^124 (value 8) .. x^127 (value 1); times x^4 they are
   * x^128 .. x^131 = R, R x, R x^2, R x^3, which as numbers are R >> 0 .. 3. */
  for (int n = 0; n < 16; n++) {
    uint64_t r = 0;
    for (int b = 0; b < 4; b++)
      if (n & (8 >> b)) r ^= 0xe100000000000000ull >> b;
    rem4[n] = r;
  }
}

static void consts(void) {
  (void)pthread_once(&consts_once, consts_make);
}

/* ---- portable GHASH ---- */

/* s = (s ^ x) * H, Horner's rule over the 32 nibbles from the highest degree (the low nibble of
 * the last byte) down. */
static struct gf ghash_block(struct gf s, const unsigned char *x) {
  unsigned char b[16];
  struct gf z = {0, 0};
  gf_store(s, b);
  for (int i = 0; i < 16; i++) b[i] ^= x[i];
  for (int i = 15; i >= 0; i--) {
    for (int half = 0; half < 2; half++) {
      unsigned n = half == 0 ? b[i] & 15u : (unsigned)b[i] >> 4;
      uint64_t out = z.lo & 15;
      z.lo = z.lo >> 4 | z.hi << 60;
      z.hi = z.hi >> 4 ^ rem4[out];
      z.hi ^= mtab[n].hi;
      z.lo ^= mtab[n].lo;
    }
  }
  return z;
}

/* len (a multiple of 16) bytes into g's state. */
static void ghash(struct dduct__gmac *g, const unsigned char *d, size_t len) {
  struct gf s;
  if (g->key.impl != DDUCT__AESGCM_NONE) {
    dduct__aesgcm_ghash(&g->key, g->s, d, len);
    return;
  }
  s = gf_load(g->s);
  for (; len >= 16; len -= 16, d += 16) s = ghash_block(s, d);
  gf_store(s, g->s);
}

/* ---- GMAC-K0 ---- */

void dduct__gmac_init_portable(struct dduct__gmac *g) {
  consts();
  memset(g, 0, sizeof(*g)); /* key.impl is DDUCT__AESGCM_NONE */
}

void dduct__gmac_init(struct dduct__gmac *g) {
  dduct__gmac_init_portable(g);
  if (dduct__aesgcm_init(&g->key, (const unsigned char *)DDUCT__GMAC_K0, 16) != 0)
    dduct__gmac_init_portable(g);
}

void dduct__gmac_update(struct dduct__gmac *g, const void *data, size_t len) {
  const unsigned char *d = data;
  size_t have = (size_t)(g->total % 16), whole;
  g->total += len;
  if (have > 0) {
    size_t n = len < 16 - have ? len : 16 - have;
    memcpy(g->block + have, d, n);
    d += n, len -= n, have += n;
    if (have < 16) return;
    ghash(g, g->block, 16);
  }
  whole = len / 16 * 16;
  if (whole > 0) ghash(g, d, whole);
  if (len > whole) memcpy(g->block, d + whole, len - whole);
}

void dduct__gmac_final(struct dduct__gmac *g, unsigned char tag[16]) {
  unsigned char lens[16] = {0};
  size_t have = (size_t)(g->total % 16);
  uint64_t bits = g->total * 8;
  if (have > 0) {
    memset(g->block + have, 0, 16 - have);
    ghash(g, g->block, 16);
  }
  for (int i = 15; i >= 8; i--, bits >>= 8) lens[i] = (unsigned char)bits; /* [0]64 || [8 len]64 */
  ghash(g, lens, 16);
  for (int i = 0; i < 16; i++) tag[i] = g->s[i] ^ ek0j0[i];
}

const char *dduct__gmac_impl_name(const struct dduct__gmac *g) {
  if (g->key.impl == DDUCT__AESGCM_NONE) return "portable";
  return dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)g->key.impl);
}

/* ---- either algorithm ---- */

void dduct__sum_init(struct dduct__sum *s, enum dduct__sum_alg alg) {
  s->alg = alg;
  if (alg == DDUCT__SUM_SHA256) dduct__sha256_init(&s->u.sha);
  else if (alg == DDUCT__SUM_GMAC) dduct__gmac_init(&s->u.gmac);
}

void dduct__sum_update(struct dduct__sum *s, const void *data, size_t len) {
  if (s->alg == DDUCT__SUM_SHA256) dduct__sha256_update(&s->u.sha, data, len);
  else if (s->alg == DDUCT__SUM_GMAC) dduct__gmac_update(&s->u.gmac, data, len);
}

enum dduct__sum_alg dduct__sum_for_fill(enum dduct__sum_alg want) {
  struct dduct__gmac g;
  if (want != DDUCT__SUM_GMAC) return want;
  dduct__gmac_init(&g);
  return g.key.impl != DDUCT__AESGCM_NONE ? DDUCT__SUM_GMAC : DDUCT__SUM_SHA256;
}

static void hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++)
    out[2 * i] = digits[in[i] >> 4], out[2 * i + 1] = digits[in[i] & 15];
  out[2 * n] = '\0';
}

void dduct__sum_final(struct dduct__sum *s, char out[DDUCT__SUM_MAX]) {
  unsigned char h[32];
  out[0] = '\0';
  if (s->alg == DDUCT__SUM_SHA256) {
    dduct__sha256_final(&s->u.sha, h);
    memcpy(out, "sha256:", 7);
    hex(h, 32, out + 7);
  } else if (s->alg == DDUCT__SUM_GMAC) {
    dduct__gmac_final(&s->u.gmac, h);
    memcpy(out, "gmac:", 5);
    hex(h, 16, out + 5);
  }
}

static int lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return s[n] == '\0';
}

enum dduct__sum_alg dduct__sum_alg_of(const char *digest) {
  if (digest == NULL) return DDUCT__SUM_NONE;
  if (strncmp(digest, "sha256:", 7) == 0 && strlen(digest) == 7 + 64 && lower_hex(digest + 7, 64))
    return DDUCT__SUM_SHA256;
  if (strncmp(digest, "gmac:", 5) == 0 && strlen(digest) == 5 + 32 && lower_hex(digest + 5, 32))
    return DDUCT__SUM_GMAC;
  return DDUCT__SUM_NONE;
}

const char *dduct__sum_alg_name(enum dduct__sum_alg alg) {
  switch (alg) {
  case DDUCT__SUM_SHA256: return "sha256";
  case DDUCT__SUM_GMAC: return "gmac";
  default: return "none";
  }
}
