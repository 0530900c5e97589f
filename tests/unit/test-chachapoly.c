/* ChaCha20-Poly1305 (libdduct/src/chachapoly.c): every implementation this CPU runs against the
 * RFC 8439 test vectors and against mbedTLS's chachapoly for every length 0..1100, random lengths
 * up to 64 KiB, aad lengths 0..40, in place and not, from unaligned pointers, across the SIMD
 * batch and seal-slice boundaries; tampered tags, ciphertexts and aad are rejected with the
 * output untouched. Says which implementation this CPU uses, and checks that a CPU with avx2 /
 * avx512f really gets it (a silent fallback would pass every vector). */
#include <mbedtls/chachapoly.h>
#include <mbedtls/poly1305.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chachapoly.h"
#include "tap.h"

#define BIG (64u << 10)

static int cpu_level; /* from /proc/cpuinfo: the best implementation this CPU should get */

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void) { /* xorshift64: reproducible, no libc state */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static void fill_rand(unsigned char *p, size_t n) {
  while (n-- > 0) *p++ = (unsigned char)next_rand();
}

/* Hex digits to bytes, skipping spaces, colons and newlines; returns the byte count. */
static size_t unhex(const char *s, unsigned char *out, size_t cap) {
  size_t n = 0;
  int hi = -1;
  for (; *s != '\0'; s++) {
    int v = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
          : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10 : -1;
    if (v < 0) continue;
    if (hi < 0) {
      hi = v;
    } else if (n < cap) {
      out[n++] = (unsigned char)(hi << 4 | v), hi = -1;
    }
  }
  return n;
}

static int cpuinfo_level(void) {
  char line[8192];
  int level = DDUCT__CHACHAPOLY_PORTABLE;
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == NULL) return level;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, "flags", 5) != 0) continue;
    if (strstr(line, " avx2") != NULL) level = DDUCT__CHACHAPOLY_AVX2;
    if (level == DDUCT__CHACHAPOLY_AVX2 && strstr(line, " avx512f") != NULL)
      level = DDUCT__CHACHAPOLY_AVX512;
#ifndef DDUCT_CHACHAPOLY_POLY32 /* the vector Poly1305 needs the 64-bit-limb one */
    if (level == DDUCT__CHACHAPOLY_AVX512 && strstr(line, " avx512ifma") != NULL)
      level = DDUCT__CHACHAPOLY_AVX512IFMA;
#endif
    break;
  }
  fclose(f);
  return level;
}

static void test_choice(const char *self) {
  char out[256];
  const char *env = getenv("DDUCT_CHACHAPOLY");
  int i;
  printf("# CPU supports: %s; implementation used: %s\n",
         dduct__chachapoly_impl_name((enum dduct__chachapoly_impl)cpu_level),
         dduct__chachapoly_impl_name(dduct__chachapoly_best()));
  if (env == NULL || strcmp(env, "portable") != 0)
    CHECK_EQ_INT(dduct__chachapoly_best(), cpu_level,
                 "the best implementation is the one /proc/cpuinfo's flags allow");
  for (i = DDUCT__CHACHAPOLY_PORTABLE; i <= DDUCT__CHACHAPOLY_AVX512IFMA; i++)
    CHECK_EQ_INT(dduct__chachapoly_use((enum dduct__chachapoly_impl)i),
                 i < cpu_level ? i : cpu_level,
                 "forcing an implementation gets it, or the best lower one the CPU runs");
  CHECK_EQ_INT(tap_sh(out, sizeof(out), "DDUCT_CHACHAPOLY=portable '%s' --best", self), 0,
               "the test re-runs itself with DDUCT_CHACHAPOLY=portable");
  CHECK_EQ_STR(out, "portable\n", "DDUCT_CHACHAPOLY=portable forces the portable implementation");
}

/* RFC 8439 2.3.2, 2.4.2, 2.8.2 and A.5 through seal and open (2.3.2 and 2.4.2 are the AEAD's
 * ciphertext: ChaCha20 from block 1 on). */
static const char SUNSCREEN[] =
    "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    "sunscreen would be it.";

static void test_rfc(void) {
  unsigned char key[32], nonce[12], aad[16], want[300], got[300], tag[16], wtag[16];
  size_t n, alen, i;

  /* 2.3.2: block 1 of key 00..1f, nonce 000000090000004a00000000, over zeros. */
  for (i = 0; i < 32; i++) key[i] = (unsigned char)i;
  unhex("00 00 00 09 00 00 00 4a 00 00 00 00", nonce, 12);
  memset(got, 0, 64);
  dduct__chachapoly_seal(key, nonce, NULL, 0, got, 64, got, tag);
  n = unhex("10 f1 e7 e4 d1 3b 59 15 50 0f dd 1f a3 20 71 c4 c7 d1 f4 c7 33 c0 68 03 04 22 aa 9a"
            "c3 d4 6c 4e d2 82 64 46 07 9f aa 09 14 c2 d7 05 d9 8b 02 a2 b5 12 9c d1 de 16 4e b9"
            "cb d0 83 e8 a2 50 3c 4e", want, sizeof(want));
  CHECK(n == 64 && memcmp(got, want, 64) == 0, "RFC 8439 2.3.2: the ChaCha20 block function");

  /* 2.4.2: the sunscreen text from block 1. */
  unhex("00 00 00 00 00 00 00 4a 00 00 00 00", nonce, 12);
  dduct__chachapoly_seal(key, nonce, NULL, 0, (const unsigned char *)SUNSCREEN, 114, got, tag);
  n = unhex("6e 2e 35 9a 25 68 f9 80 41 ba 07 28 dd 0d 69 81 e9 7e 7a ec 1d 43 60 c2 0a 27 af cc"
            "fd 9f ae 0b f9 1b 65 c5 52 47 33 ab 8f 59 3d ab cd 62 b3 57 16 39 d6 24 e6 51 52 ab"
            "8f 53 0c 35 9f 08 61 d8 07 ca 0d bf 50 0d 6a 61 56 a3 8e 08 8a 22 b6 5e 52 bc 51 4d"
            "16 cc f8 06 81 8c e9 1a b7 79 37 36 5a f9 0b bf 74 a3 5b e6 b4 0b 8e ed f2 78 5e 42"
            "87 4d", want, sizeof(want));
  CHECK(n == 114 && memcmp(got, want, 114) == 0, "RFC 8439 2.4.2: ChaCha20 encryption");

  /* 2.8.2: the AEAD. */
  for (i = 0; i < 32; i++) key[i] = (unsigned char)(0x80 + i);
  unhex("07 00 00 00 40 41 42 43 44 45 46 47", nonce, 12);
  alen = unhex("50 51 52 53 c0 c1 c2 c3 c4 c5 c6 c7", aad, sizeof(aad));
  n = unhex("d3 1a 8d 34 64 8e 60 db 7b 86 af bc 53 ef 7e c2 a4 ad ed 51 29 6e 08 fe a9 e2 b5 a7"
            "36 ee 62 d6 3d be a4 5e 8c a9 67 12 82 fa fb 69 da 92 72 8b 1a 71 de 0a 9e 06 0b 29"
            "05 d6 a5 b6 7e cd 3b 36 92 dd bd 7f 2d 77 8b 8c 98 03 ae e3 28 09 1b 58 fa b3 24 e4"
            "fa d6 75 94 55 85 80 8b 48 31 d7 bc 3f f4 de f0 8e 4b 7a 9d e5 76 d2 65 86 ce c6 4b"
            "61 16", want, sizeof(want));
  unhex("1a:e1:0b:59:4f:09:e2:6a:7e:90:2e:cb:d0:60:06:91", wtag, 16);
  dduct__chachapoly_seal(key, nonce, aad, alen, (const unsigned char *)SUNSCREEN, 114, got, tag);
  CHECK(n == 114 && memcmp(got, want, 114) == 0, "RFC 8439 2.8.2: AEAD ciphertext");
  CHECK(memcmp(tag, wtag, 16) == 0, "RFC 8439 2.8.2: AEAD tag");
  CHECK(dduct__chachapoly_open(key, nonce, aad, alen, want, 114, wtag, got) == 0 &&
            memcmp(got, SUNSCREEN, 114) == 0,
        "RFC 8439 2.8.2: opens back to the plaintext");

  /* A.5: decryption. */
  unhex("1c 92 40 a5 eb 55 d3 8a f3 33 88 86 04 f6 b5 f0 47 39 17 c1 40 2b 80 09 9d ca 5c bc 20 70"
        "75 c0", key, 32);
  unhex("00 00 00 00 01 02 03 04 05 06 07 08", nonce, 12);
  alen = unhex("f3 33 88 86 00 00 00 00 00 00 4e 91", aad, sizeof(aad));
  unhex("ee ad 9d 67 89 0c bb 22 39 23 36 fe a1 85 1f 38", wtag, 16);
  n = unhex("64 a0 86 15 75 86 1a f4 60 f0 62 c7 9b e6 43 bd 5e 80 5c fd 34 5c f3 89 f1 08 67 0a"
            "c7 6c 8c b2 4c 6c fc 18 75 5d 43 ee a0 9e e9 4e 38 2d 26 b0 bd b7 b7 3c 32 1b 01 00"
            "d4 f0 3b 7f 35 58 94 cf 33 2f 83 0e 71 0b 97 ce 98 c8 a8 4a bd 0b 94 81 14 ad 17 6e"
            "00 8d 33 bd 60 f9 82 b1 ff 37 c8 55 97 97 a0 6e f4 f0 ef 61 c1 86 32 4e 2b 35 06 38"
            "36 06 90 7b 6a 7c 02 b0 f9 f6 15 7b 53 c8 67 e4 b9 16 6c 76 7b 80 4d 46 a5 9b 52 16"
            "cd e7 a4 e9 90 40 c5 a4 04 33 22 5e e2 82 a1 b0 a0 6c 52 3e af 45 34 d7 f8 3f a1 15"
            "5b 00 47 71 8c bc 54 6a 0d 07 2b 04 b3 56 4e ea 1b 42 22 73 f5 48 27 1a 0b b2 31 60"
            "53 fa 76 99 19 55 eb d6 31 59 43 4e ce bb 4e 46 6d ae 5a 10 73 a6 72 76 27 09 7a 10"
            "49 e6 17 d9 1d 36 10 94 fa 68 f0 ff 77 98 71 30 30 5b ea ba 2e da 04 df 99 7b 71 4d"
            "6c 6f 2c 29 a6 ad 5c b4 02 2b 02 70 9b", want, sizeof(want));
  memset(got, 0, sizeof(got));
  CHECK(n == 265 && dduct__chachapoly_open(key, nonce, aad, alen, want, n, wtag, got) == 0,
        "RFC 8439 A.5: the tag verifies");
  CHECK(memcmp(got, "Internet-Drafts are draft documents valid for a maximum of six months",
               69) == 0 && memcmp(got + 256, "ress./\xe2\x80\x9d", 9) == 0 && got[265] == 0,
        "RFC 8439 A.5: the plaintext, all 265 bytes of it and no more");
}

/* Poly1305 alone (the vector one from 16 blocks on): RFC 8439 2.5.2, the A.3 vectors that aim at
 * the carries and the final reduction, and mbedTLS on random and all-ones keys and messages. */
static void test_poly1305(void) {
  static const struct {
    const char *key, *msg, *tag;
  } v[] = {
      {"85:d6:be:78:57:55:6d:33:7f:44:52:fe:42:d5:06:a8:01:03:80:8a:fb:0d:b2:fd:4a:bf:f6:af:41:49:"
       "f5:1b", "43727970746f6772617068696320466f72756d2052657365617263682047726f7570",
       "a8:06:1d:c1:30:51:36:c6:c2:2b:8b:af:0c:01:27:a9"},
      /* A.3 #5: the partially reduced result is not fully reduced. */
      {"02" "000000000000000000000000000000" "00000000000000000000000000000000",
       "ffffffffffffffffffffffffffffffff", "03000000000000000000000000000000"},
      /* #6: adding s overflows 2^128. */
      {"02" "000000000000000000000000000000" "ffffffffffffffffffffffffffffffff",
       "02000000000000000000000000000000", "03000000000000000000000000000000"},
      /* #7: an all-ones limb with a carry from below. */
      {"01" "000000000000000000000000000000" "00000000000000000000000000000000",
       "ffffffffffffffffffffffffffffffff" "f0ffffffffffffffffffffffffffffff"
       "11000000000000000000000000000000", "05000000000000000000000000000000"},
      /* #8: the polynomial part is exactly 2^130 - 5. */
      {"01" "000000000000000000000000000000" "00000000000000000000000000000000",
       "ffffffffffffffffffffffffffffffff" "fbfefefefefefefefefefefefefefefe"
       "01010101010101010101010101010101", "00000000000000000000000000000000"},
      /* #9: exactly 2^130 - 6. */
      {"02" "000000000000000000000000000000" "00000000000000000000000000000000",
       "fdffffffffffffffffffffffffffffff", "faffffffffffffffffffffffffffffff"},
      /* #10, #11: the 5*H + L reduction makes a 131-bit intermediate / final result. */
      {"0100000000000000" "0400000000000000" "00000000000000000000000000000000",
       "e33594d7505e43b900000000000000003394d7505e4379cd010000000000000000000000000000000000000000"
       "000000" "01000000000000000000000000000000", "14000000000000005500000000000000"},
      {"0100000000000000" "0400000000000000" "00000000000000000000000000000000",
       "e33594d7505e43b900000000000000003394d7505e4379cd010000000000000000000000000000000000000000"
       "000000", "13000000000000000000000000000000"},
  };
  unsigned char key[32], msg[2000], tag[16], want[16], ref[16];
  size_t i, n, bad = 0;
  for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    unhex(v[i].key, key, 32);
    n = unhex(v[i].msg, msg, sizeof(msg));
    unhex(v[i].tag, want, 16);
    dduct__poly1305(key, msg, n, tag);
    mbedtls_poly1305_mac(key, msg, n, ref);
    if (memcmp(tag, want, 16) != 0) bad++, fprintf(stderr, "  vector %zu differs\n", i);
    if (memcmp(ref, want, 16) != 0) fprintf(stderr, "  (mbedTLS disagrees on vector %zu)\n", i);
  }
  CHECK_EQ_INT(bad, 0, "RFC 8439 2.5.2 and the A.3 edge-case vectors #5..#11");
  bad = 0;
  for (i = 0; i < 3000; i++) {
    n = (size_t)(next_rand() % sizeof(msg));
    if (i < 200) n = i;
    fill_rand(key, 32);
    fill_rand(msg, n);
    if (i % 3 == 1) memset(key, 0xff, 32);     /* the largest clamped r */
    if (i % 5 == 2) memset(msg, 0xff, n);      /* every limb full */
    dduct__poly1305(key, msg, n, tag);
    mbedtls_poly1305_mac(key, msg, n, ref);
    if (memcmp(tag, ref, 16) != 0) bad++;
  }
  CHECK_EQ_INT(bad, 0, "Poly1305 equals mbedTLS's on 3000 messages (lengths 0..199 and random)");
}

struct ref {
  mbedtls_chachapoly_context ctx;
  unsigned char key[32], nonce[12];
};

/* Seals with mbedTLS and with ours (in place or not, from data at offset off), compares, opens
 * mbedTLS's output with ours; returns 0 when everything agrees. */
static int one(struct ref *r, const unsigned char *pt, size_t len, const unsigned char *aad,
               size_t aad_len, int in_place, size_t off, unsigned char *a, unsigned char *b) {
  unsigned char rtag[16], tag[16];
  unsigned char *ct = a + off, *work = b + (off * 7) % 16;
  if (mbedtls_chachapoly_encrypt_and_tag(&r->ctx, len, r->nonce, aad, aad_len, pt, ct, rtag) != 0)
    return 1;
  if (in_place) {
    memcpy(work, pt, len);
    dduct__chachapoly_seal(r->key, r->nonce, aad, aad_len, work, len, work, tag);
  } else {
    dduct__chachapoly_seal(r->key, r->nonce, aad, aad_len, pt, len, work, tag);
  }
  if (memcmp(work, ct, len) != 0 || memcmp(tag, rtag, 16) != 0) return 2;
  if (in_place) {
    memcpy(work, ct, len);
    if (dduct__chachapoly_open(r->key, r->nonce, aad, aad_len, work, len, rtag, work) != 0)
      return 3;
  } else {
    memset(work, 0, len);
    if (dduct__chachapoly_open(r->key, r->nonce, aad, aad_len, ct, len, rtag, work) != 0) return 3;
  }
  return memcmp(work, pt, len) != 0 ? 4 : 0;
}

static void new_key(struct ref *r) {
  fill_rand(r->key, 32);
  fill_rand(r->nonce, 12);
  mbedtls_chachapoly_setkey(&r->ctx, r->key);
}

static void test_cross(const unsigned char *buf, unsigned char *a, unsigned char *b) {
  /* Around the 64-byte block, the 8- and 16-block batches and the 2 KiB seal slice; the first
   * data block is block 1, so batches end 64 bytes before these multiples too. */
  static const size_t edges[] = {448, 512, 960, 1024, 1984, 2048, 2112, 3008, 3072, 4032, 4096,
                                 8128, 8192, 16320, 16384, 16448, 32768};
  struct ref r;
  unsigned char aad[41];
  size_t len, i, bad = 0;
  int d;
  mbedtls_chachapoly_init(&r.ctx);
  new_key(&r);
  fill_rand(aad, sizeof(aad));
  for (len = 0; len <= 1100; len++) {
    if (len % 97 == 0) new_key(&r);
    d = one(&r, buf + len % 13, len, aad, len % 41, (int)(len & 1), len % 16, a, b);
    if (d != 0) bad++, fprintf(stderr, "  length %zu: mismatch %d\n", len, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for every length 0..1100 (aad 0..40, in place and not)");
  bad = 0;
  for (i = 0; i <= 40; i++) {
    static const size_t lens[] = {0, 1, 15, 16, 17, 64, 300, 4096};
    size_t j;
    for (j = 0; j < sizeof(lens) / sizeof(lens[0]); j++)
      if ((d = one(&r, buf, lens[j], i == 0 ? NULL : aad, i, (int)j & 1, i % 16, a, b)) != 0)
        bad++, fprintf(stderr, "  aad %zu length %zu: mismatch %d\n", i, lens[j], d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for every aad length 0..40");
  bad = 0;
  for (i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
    for (len = edges[i] - 3; len <= edges[i] + 3; len++)
      if ((d = one(&r, buf + 1, len, aad, 13, (int)len & 1, 3, a, b)) != 0)
        bad++, fprintf(stderr, "  length %zu: mismatch %d\n", len, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS around every block, batch and slice boundary");
  bad = 0;
  for (i = 0; i < 150; i++) {
    len = (size_t)(next_rand() % (BIG - 16));
    if (i == 0) len = BIG - 16;
    new_key(&r);
    if ((d = one(&r, buf + i % 16, len, aad, i % 41, (int)i & 1, (i * 5) % 16, a, b)) != 0)
      bad++, fprintf(stderr, "  length %zu: mismatch %d\n", len, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for 150 random lengths up to 64 KiB");
  mbedtls_chachapoly_free(&r.ctx);
}

/* A flipped bit anywhere (tag, ciphertext, aad) or a changed nonce: -1, out untouched. */
static void test_tamper(const unsigned char *buf, unsigned char *a, unsigned char *b) {
  static const size_t lens[] = {0, 1, 63, 64, 1000, 16384};
  unsigned char key[32], nonce[12], aad[13], tag[16], bad_tag[16];
  size_t i, j, wrong = 0, touched = 0;
  fill_rand(key, 32);
  fill_rand(nonce, 12);
  fill_rand(aad, sizeof(aad));
  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    size_t len = lens[i];
    dduct__chachapoly_seal(key, nonce, aad, sizeof(aad), buf, len, a, tag);
    for (j = 0; j < 6; j++) {
      unsigned char n2[12], *aad2 = b + BIG; /* past the largest len */
      memcpy(bad_tag, tag, 16);
      memcpy(n2, nonce, 12);
      memcpy(aad2, aad, sizeof(aad));
      if (j == 0) bad_tag[next_rand() % 16] ^= (unsigned char)(1u << next_rand() % 8);
      if (j == 1 && len == 0) continue;
      if (j == 1) a[next_rand() % len] ^= 0x80;
      if (j == 2) aad2[next_rand() % sizeof(aad)] ^= 0x01;
      if (j == 3) n2[next_rand() % 12] ^= 0x10;
      if (j == 4 && len == 0) continue;
      memset(b, 0xa5, len + 1);
      if (j == 4) { /* one byte short */
        if (dduct__chachapoly_open(key, n2, aad2, sizeof(aad), a, len - 1, bad_tag, b) != -1)
          wrong++;
      } else if (j == 5) { /* the aad moved into the ciphertext's place: one byte less aad */
        if (dduct__chachapoly_open(key, n2, aad2, sizeof(aad) - 1, a, len, bad_tag, b) != -1)
          wrong++;
      } else if (dduct__chachapoly_open(key, n2, aad2, sizeof(aad), a, len, bad_tag, b) != -1) {
        wrong++;
      }
      for (size_t k = 0; k <= len; k++) touched += b[k] != 0xa5;
      if (j == 1) dduct__chachapoly_seal(key, nonce, aad, sizeof(aad), buf, len, a, tag);
    }
    /* In place: the ciphertext must survive a failed open. */
    tag[0] ^= 1;
    memcpy(b, a, len);
    if (dduct__chachapoly_open(key, nonce, aad, sizeof(aad), b, len, tag, b) != -1) wrong++;
    if (memcmp(b, a, len) != 0) touched++;
    tag[0] ^= 1;
    if (dduct__chachapoly_open(key, nonce, aad, sizeof(aad), b, len, tag, b) != 0 ||
        memcmp(b, buf, len) != 0)
      wrong++;
  }
  CHECK_EQ_INT(wrong, 0, "a changed tag, ciphertext, aad, nonce or length is rejected, the "
                         "untouched record accepted");
  CHECK_EQ_INT(touched, 0, "a rejected open leaves out untouched (in place too)");
}

int main(int argc, char **argv) {
  unsigned char *buf, *a, *b;
  int i;

  if (argc > 1 && strcmp(argv[1], "--best") == 0) {
    printf("%s\n", dduct__chachapoly_impl_name(dduct__chachapoly_best()));
    return 0;
  }
  cpu_level = cpuinfo_level();
  test_choice(argv[0]);
  buf = malloc(BIG);
  a = malloc(BIG + 64);
  b = malloc(BIG + 64);
  fill_rand(buf, BIG);
  for (i = DDUCT__CHACHAPOLY_PORTABLE; i <= DDUCT__CHACHAPOLY_AVX512IFMA; i++) {
    if ((int)dduct__chachapoly_use((enum dduct__chachapoly_impl)i) != i) {
      printf("# skip %s: this CPU lacks it (or this build)\n",
             dduct__chachapoly_impl_name((enum dduct__chachapoly_impl)i));
      continue;
    }
    printf("# implementation: %s\n", dduct__chachapoly_impl_name((enum dduct__chachapoly_impl)i));
    test_poly1305();
    test_rfc();
    test_cross(buf, a, b);
    test_tamper(buf, a, b);
  }
  free(buf);
  free(a);
  free(b);
  return tap_done();
}
