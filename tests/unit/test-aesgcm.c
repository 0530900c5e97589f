/* AES-GCM (libdduct/src/aesgcm.c): every implementation this CPU runs through the GCM spec's test
 * cases (McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 1-6 and 13-18, also
 * in NIST's GCM validation data), a selection of Project Wycheproof's aes_gcm_test.json (and the
 * whole file when DDUCT_WYCHEPROOF_DIR names a directory holding it: it is not in the tree), and
 * against mbedTLS and OpenSSL's libcrypto for every length 0..1100, random lengths up to 64 KiB,
 * every input and output alignment, in place and not, 128-, 192- and 256-bit keys, IVs of 12
 * bytes (TLS's) and of other lengths (hashed to the first counter block); tampered tags,
 * ciphertexts, aad, IVs and lengths are rejected with the output untouched. Says which
 * implementation this CPU uses and checks that a CPU with the flags really gets it. */
#include <cjson/cJSON.h>
#include <mbedtls/gcm.h>
#ifdef HAVE_OPENSSL
#include <openssl/evp.h>
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aesgcm.h"
#include "tap.h"

#define BIG (64u << 10)
#define SLACK 256 /* room for every alignment and the byte past the end */

static int cpu_level; /* from /proc/cpuinfo: the best implementation this CPU should get */

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void) { /* xorshift64: reproducible, no libc state */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static void fill_rand(unsigned char *p, size_t n) {
  while (n-- > 0) *p++ = (unsigned char)next_rand();
}

/* Hex digits to bytes, skipping anything else; returns the byte count. */
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
  int level = DDUCT__AESGCM_NONE;
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == NULL) return level;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, "flags", 5) != 0) continue;
    if (strstr(line, " aes ") != NULL && strstr(line, " pclmulqdq ") != NULL &&
        strstr(line, " ssse3 ") != NULL && strstr(line, " sse4_1 ") != NULL)
      level = DDUCT__AESGCM_AESNI;
    if (level == DDUCT__AESGCM_AESNI && strstr(line, " avx512f ") != NULL &&
        strstr(line, " avx512bw ") != NULL && strstr(line, " avx512vl ") != NULL &&
        strstr(line, " vaes ") != NULL && strstr(line, " vpclmulqdq ") != NULL)
      level = DDUCT__AESGCM_VAES512;
    break;
  }
  fclose(f);
  return level;
}

static void test_choice(const char *self) {
  char out[256];
  const char *env = getenv("DDUCT_AESGCM");
  int i;
  printf("# CPU supports: %s; implementation used: %s\n",
         dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)cpu_level),
         dduct__aesgcm_impl_name(dduct__aesgcm_best()));
  if (env == NULL)
    CHECK_EQ_INT(dduct__aesgcm_best(), cpu_level,
                 "the best implementation is the one /proc/cpuinfo's flags allow");
  for (i = DDUCT__AESGCM_NONE; i <= DDUCT__AESGCM_VAES512; i++)
    CHECK_EQ_INT(dduct__aesgcm_use((enum dduct__aesgcm_impl)i), i < cpu_level ? i : cpu_level,
                 "forcing an implementation gets it, or the best lower one the CPU runs");
  CHECK_EQ_INT(tap_sh(out, sizeof(out), "DDUCT_AESGCM=off '%s' --best", self), 0,
               "the test re-runs itself with DDUCT_AESGCM=off");
  CHECK_EQ_STR(out, "none\n", "DDUCT_AESGCM=off: no implementation (records stay with mbedTLS)");
  if (cpu_level >= DDUCT__AESGCM_AESNI) {
    CHECK_EQ_INT(tap_sh(out, sizeof(out), "DDUCT_AESGCM=aesni '%s' --best", self), 0,
                 "the test re-runs itself with DDUCT_AESGCM=aesni");
    CHECK_EQ_STR(out, "aesni\n", "DDUCT_AESGCM=aesni forces AES-NI");
  }
  {
    struct dduct__aesgcm c;
    unsigned char key[32] = {0};
    dduct__aesgcm_use(DDUCT__AESGCM_NONE);
    CHECK(dduct__aesgcm_init(&c, key, 16) == -1, "with no implementation a key is refused");
    dduct__aesgcm_use(DDUCT__AESGCM_VAES512);
    CHECK(dduct__aesgcm_init(&c, key, 20) == -1, "a 20-byte key is refused");
  }
}

struct vec {
  int id, valid;
  const char *what, *key, *iv, *aad, *msg, *ct, *tag;
};

/* Seal msg and compare with ct and tag, open ct (into a separate buffer and in place) and
 * compare with msg; for an invalid vector, the open must fail and leave out untouched. Returns
 * 0 when everything is as the vector says. */
static int run_vec(const struct vec *v) {
  static unsigned char key[32], iv[300], aad[600], msg[1100], ct[1100], tag[16], out[1100],
      got[1100], gtag[16];
  size_t klen = unhex(v->key, key, sizeof(key)), ivlen = unhex(v->iv, iv, sizeof(iv));
  size_t alen = unhex(v->aad, aad, sizeof(aad)), mlen = unhex(v->msg, msg, sizeof(msg));
  size_t clen = unhex(v->ct, ct, sizeof(ct)), tlen = unhex(v->tag, tag, sizeof(tag));
  struct dduct__aesgcm c;
  int rc = 0;
  if (dduct__aesgcm_init(&c, key, klen) != 0) return 1;
  if (ivlen == 0) { /* GCM forbids it: both directions refuse */
    memset(out, 0xa5, sizeof(out));
    if (dduct__aesgcm_seal(&c, iv, 0, aad, alen, msg, mlen, got, gtag) != -1) rc = 2;
    if (dduct__aesgcm_open(&c, iv, 0, aad, alen, ct, clen, tag, tlen, out) != -1) rc = 3;
    if (out[0] != 0xa5) rc = 4;
    dduct__aesgcm_wipe(&c);
    return v->valid ? 5 : rc;
  }
  if (dduct__aesgcm_seal(&c, iv, ivlen, aad, alen, msg, mlen, got, gtag) != 0) rc = 6;
  else if (v->valid && (clen != mlen || memcmp(got, ct, clen) != 0 || memcmp(gtag, tag, tlen) != 0))
    rc = 7;
  memset(out, 0xa5, sizeof(out));
  if (v->valid) {
    if (dduct__aesgcm_open(&c, iv, ivlen, aad, alen, ct, clen, tag, tlen, out) != 0 ||
        memcmp(out, msg, mlen) != 0)
      rc = 8;
    memcpy(out, ct, clen);
    if (dduct__aesgcm_open(&c, iv, ivlen, aad, alen, out, clen, tag, tlen, out) != 0 ||
        memcmp(out, msg, mlen) != 0)
      rc = 9;
  } else {
    size_t i;
    if (dduct__aesgcm_open(&c, iv, ivlen, aad, alen, ct, clen, tag, tlen, out) != -1) rc = 10;
    for (i = 0; i <= clen; i++)
      if (out[i] != 0xa5) rc = 11;
  }
  dduct__aesgcm_wipe(&c);
  return rc;
}

/* McGrew & Viega test cases 1-6 (AES-128) and 13-18 (AES-256): empty and one-block messages
 * under a zero key, then 64 and 60 bytes with and without aad, IVs of 12, 8 and 60 bytes. */
#define MV_K "feffe9928665731c6d6a8f9467308308"
#define MV_P                                                                                       \
  "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"                               \
  "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
#define MV_P64 MV_P "1aafd255"
#define MV_A "feedfacedeadbeeffeedfacedeadbeefabaddad2"
#define MV_IV60                                                                                    \
  "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e242"      \
  "9a6b525416aedbf5a0de6a57a637b39b"
static const struct vec spec[] = {
    {1, 1, "test case 1", "00000000000000000000000000000000", "000000000000000000000000", "", "",
     "", "58e2fccefa7e3061367f1d57a4e7455a"},
    {2, 1, "test case 2", "00000000000000000000000000000000", "000000000000000000000000", "",
     "00000000000000000000000000000000", "0388dace60b6a392f328c2b971b2fe78",
     "ab6e47d42cec13bdf53a67b21257bddf"},
    {3, 1, "test case 3", MV_K, "cafebabefacedbaddecaf888", "", MV_P64,
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
     "4d5c2af327cd64a62cf35abd2ba6fab4"},
    {4, 1, "test case 4", MV_K, "cafebabefacedbaddecaf888", MV_A, MV_P,
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
     "5bc94fbc3221a5db94fae95ae7121a47"},
    {5, 1, "test case 5 (8-byte IV)", MV_K, "cafebabefacedbad", MV_A, MV_P,
     "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c7423"
     "73806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598",
     "3612d2e79e3b0785561be14aaca2fccb"},
    {6, 1, "test case 6 (60-byte IV)", MV_K, MV_IV60, MV_A, MV_P,
     "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7"
     "01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
     "619cc5aefffe0bfa462af43c1699d050"},
    {13, 1, "test case 13", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {14, 1, "test case 14", "0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "00000000000000000000000000000000",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {15, 1, "test case 15", MV_K MV_K, "cafebabefacedbaddecaf888", "", MV_P64,
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"},
    {16, 1, "test case 16", MV_K MV_K, "cafebabefacedbaddecaf888", MV_A, MV_P,
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
    {17, 1, "test case 17 (8-byte IV)", MV_K MV_K, "cafebabefacedbad", MV_A, MV_P,
     "c3762df1ca787d32ae47c13bf19844cbaf1ae14d0b976afac52ff7d79bba9de0"
     "feb582d33934a4f0954cc2363bc73f7862ac430e64abe499f47c9b1f",
     "3a337dbf46a792c45e454913fe2ea8f2"},
    {18, 1, "test case 18 (60-byte IV)", MV_K MV_K, MV_IV60, MV_A, MV_P,
     "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf4"
     "0fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f",
     "a44a8266ee1c8eb0c8b5d4cf5ae9f19a"},
};

static void test_spec(void) {
  size_t i, bad = 0;
  for (i = 0; i < sizeof(spec) / sizeof(spec[0]); i++) {
    int rc = run_vec(&spec[i]);
    if (rc != 0) bad++, fprintf(stderr, "  %s: failure %d\n", spec[i].what, rc);
  }
  CHECK_EQ_INT(bad, 0, "the GCM spec's test cases 1-6 and 13-18 (IVs of 12, 8 and 60 bytes)");
}

/* From Project Wycheproof, testvectors_v1/aes_gcm_test.json (C2SP/wycheproof, Apache 2.0): known
 * answers, lengths around the block and batch sizes, aad lengths, the special-case IVs, modified
 * tags (single and double bit flips, all zero, all ones, msbs, lsbs), the counter wrapping modulo
 * 2^32 from a hashed 16-byte IV, small and long IVs, the empty IV (refused). */
static const struct vec wycheproof[] = {
    {1, 1, "Ktv, 128-bit key, 96-bit IV, 16 bytes",
     "5b9604fe14eadba931b0ccf34843dab9",
     "028318abc1824029138141a2",
     "",
     "001d0c231287c1182784554ca3a21908",
     "26073cc1d851beff176384dc9896d5ff",
     "0a3ea7a5487cb5f7d70fb6c58d038554"},
    {2, 1, "Ktv, 128-bit key, 96-bit IV, 16 bytes",
     "5b9604fe14eadba931b0ccf34843dab9",
     "921d2507fa8007b7bd067d34",
     "00112233445566778899aabbccddeeff",
     "001d0c231287c1182784554ca3a21908",
     "49d8b9783e911913d87094d1f63cc765",
     "1e348ba07cca2cf04c618cb4d43a5b92"},
    {4, 1, "Pseudorandom, 128-bit key, 96-bit IV, 0 bytes",
     "bedcfb5a011ebc84600fcb296c15af0d",
     "438a547a94ea88dce46c6c85",
     "",
     "",
     "",
     "960247ba5cde02e41a313c4c0136edc3"},
    {9, 1, "Pseudorandom, 128-bit key, 96-bit IV, 17 bytes",
     "c15ed227dd2e237ecd087eaaaad19ea4",
     "965ff6643116ac1443a2dec7",
     "",
     "fee62fde973fe025ad6b322dcdf3c63fc7",
     "0de51fe4f7f2d1f0f917569f5c6d1b009c",
     "6cd8521422c0177e83ef1b7a845d97db"},
    {23, 1, "Pseudorandom, 128-bit key, 96-bit IV, 257 bytes",
     "a294e70fa2ac10a1fb00c588b888b673",
     "dfe20d1c4350e6235d987af1",
     "",
     "6ed1d7d618d158741f52078006f28494ba72a2454f27160ae8722793fcebc538ebc2f67c3ace3e0fe7c47b9e"
     "74e081182b47c930144e3fc80d0ad50611c3afcfe2dbc5279edbbba087c0e390355f3daffcd25ad4dea007c2"
     "84ad92e7fcbecb438fb60623ff89a599dca2aac141b26651386ca55b739b94901ef6db609c344d8acf454456"
     "8e31bb09361112754b1c0c6a3c875bd9453b0ee0081412151398a294ecad75add521611db5288b60ac3c0128"
     "f6e94366b69e659e6aa66f058a3a3571064edbb0f05c11e5dde938fb46c3935dd5193a4e5664688f0ae67c29"
     "b7cc49a7963140f82e311a20c98cd34fbcab7b4b515ae86557e62099e3fc37b9595c85a75c",
     "5bc6dbafc401101c7a08c81d6c2791aa147ce093aad172be18379c747384a54a41a747ba955cade8fdfb8967"
     "aa808b43fee3d757cc80f11163b800e5e59df932757f76c40b3d9cba449aaf11e4f80e003b1f384eafa4f76e"
     "81b13c09ec1ad88e7650c750d442fe46d225a373e8a1b564b4915a5c6c513cfdfa22d929d5741ca5ebefaedc"
     "ba636c7c3bbef18863fdc126b4b451611049c35d814fc2eb7e4b8f1a8995ecb4a3c86652a068c0b2a3e1c594"
     "1d59c210b458d5d5d3b06420ec2053465ccceca7c20f67404985460379e2ee806a46e8409dfab2e0dd67ea3c"
     "f46d5ad4eb78756827358c3ef1fdbd07c33834f3d9eca3ff13b744a01059a6c17a315a8fd4",
     "c7587e7da41bed682c37377ea4324029"},
    {29, 1, "Pseudorandom, 128-bit key, 96-bit IV, 20 bytes",
     "f64d1bc47b081afb21181bdc16ffbcca",
     "2c03293704f79612181609d3",
     "a883d23e25a62b492f1271d3d79b8689dde7250a0575b8175a6b69d48d1b4bc2df1b4dc4a2b1eb506bc0e8c1"
     "1e7dc2f3d08b475214551df7c53e581ec55c0d0a2d",
     "85b24904bf12ced33d78df7437b36fff83d1e817",
     "b00975863c673f0f19326294ebc4c77f7287c279",
     "ae57622c1d175ebbca77bd4ee812ed89"},
    {39, 1, "special case IV, 128-bit key, 96-bit IV, 16 bytes",
     "00112233445566778899aabbccddeeff",
     "000000000000000000000000",
     "",
     "ebd4a3e10cf6d41c50aeae007563b072",
     "f62d84d649e56bc8cfedc5d74a51e2f7",
     "ffffffffffffffffffffffffffffffff"},
    {40, 1, "special case IV, 128-bit key, 96-bit IV, 16 bytes",
     "00112233445566778899aabbccddeeff",
     "ffffffffffffffffffffffff",
     "",
     "d593c4d8224f1b100c35e4f6c4006543",
     "431f31e6840931fd95f94bf88296ff69",
     "00000000000000000000000000000000"},
    {41, 0, "Flipped bit 0 in tag, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "d9847dbc326a06e988c77ad3863e6083"},
    {48, 0, "Flipped bit 63 in tag, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "d8847dbc326a066988c77ad3863e6083"},
    {59, 0, "Flipped bit 127 in tag, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "d8847dbc326a06e988c77ad3863e6003"},
    {63, 0, "all bits of tag flipped, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "277b8243cd95f9167738852c79c19f7c"},
    {64, 0, "Tag changed to all zero, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "00000000000000000000000000000000"},
    {66, 0, "msbs changed in tag, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "5804fd3cb2ea86690847fa5306bee003"},
    {67, 0, "lsbs changed in tag, 128-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "eb156d081ed6b6b55f4612f021d87b39",
     "d9857cbd336b07e889c67bd2873f6182"},
    {68, 1, "Ktv, 128-bit key, 64-bit IV, 16 bytes",
     "aa023d0478dcb2b2312498293d9a9129",
     "0432bc49ac344120",
     "aac39231129872a2",
     "2035af313d1346ab00154fea78322105",
     "64c36bb3b732034e3a7d04efc5197785",
     "b7d0dd70b00d65b97cfd080ff4b819d1"},
    {69, 1, "small IV sizes, 128-bit key, 64-bit IV, 0 bytes",
     "f3434725c82a7f8bb07df1f8122fb6c9",
     "28e9b7851724bae3",
     "",
     "",
     "",
     "44aca00f42e4199b829a55e69b073d9e"},
    {77, 1, "J0:000102030405060708090a0b0c0d0e0f, 128-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff",
     "f95fde4a751913202aeeee32a0b55753",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "00078d109d92143fcd5df56721b884fac64ac7762cc09eea2a3c68e92a17bdb575f87bda18be564e",
     "152a65045fe674f97627427af5be22da"},
    {79, 1, "J0:ffffffffffffffffffffffffffffffff, 128-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff",
     "1a552e67cdc4dc1a33b824874ebf0bed",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "948ca37a8e6649e88aeffb1c598f3607007702417ea0e0bc3c60ad5a949886de968cf53ea6462aed",
     "99b381bfa2af9751c39d1b6e86d1be6a"},
    {82, 1, "J0:000102030405060708090a0bffffffff, 128-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff",
     "99821c2dd5daecded07300f577f7aff1",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "127af9b39ecdfc57bb11a2847c7c2d3d8f938f40f877e0c4af37d0fe9af033052bd537c4ae978f60",
     "07eb2fe4a958f8434d40684899507c7c"},
    {88, 1, "J0:000102030405060708090a0bffff7ffe, 128-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff",
     "c4dcd9fcce24d3522b66f1469a1e8bb9",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "149fde9abbd3a43c2548575e0db9fb84a197a37a5d79697078536bc27fe46cd8d475526d9044aa94",
     "62a4b6875c288345d6a454399eac1afa"},
    {89, 1, "special case IV, 128-bit key, 128-bit IV, 16 bytes",
     "00112233445566778899aabbccddeeff",
     "00000000000000000000000000000000",
     "",
     "bec6fa05c1718b9b84c47345bbed7dcb",
     "45a3f89d02918bfd0c8161658ccc9795",
     "00000000000000000000000000000000"},
    {91, 1, "Ktv, 256-bit key, 96-bit IV, 10 bytes",
     "92ace3e348cd821092cd921aa3546374299ab46209691bc28b8752d17f123c20",
     "00112233445566778899aabb",
     "00000000ffffffff",
     "00010203040506070809",
     "e27abdd2d2a53d2f136b",
     "9a4a2579529301bcfb71c78d4060f52c"},
    {92, 1, "Ktv, 256-bit key, 96-bit IV, 0 bytes",
     "29d3a44f8723dc640239100c365423a312934ac80239212ac3df3421a2098123",
     "00112233445566778899aabb",
     "aabbccddeeff",
     "",
     "",
     "2a7d77fa526b8250cb296078926b5020"},
    {113, 1, "Pseudorandom, 256-bit key, 96-bit IV, 511 bytes",
     "4f62e56f7b15035f427849714beb97e6acf88371e1f69b388129bb447273d6b8",
     "137d5c98a92f6dcee4f29d7c",
     "",
     "a147b716b86ac8dac7447d5ba60ee8a4191d2c64a3aa04276aee7bf7dc824962c09ace20a7e614cc9e177b5b"
     "11819b8f17008a9408e8cd8bb34b401be35368f492c17629b6467299bfd2ec4d9a7f17dea6f9ca084e871fb7"
     "fc78c2bf299b810522062726c5cae14b839722ecff499a2b3f082b6d1bfedb752f84a4e77459c9268d631993"
     "15363e9aaa39bea7fbbcc60a5eedc8a1a982ad6fa67c295b932eb3999047e0a99b3823032b6b3b7c4c553970"
     "afca50cb4e5ce859c25c598eb682005f17aec5526e26493208483679a23ccef6f7403a3f3055affd531a1cb7"
     "d183892dd577d526e8da8aa8b8b980a36e176b8d9293e785ac01bdd4dac8cf8dbdd82926f1e31408284fb3aa"
     "01f4414ac7aa7832d2ec02dd2db9b6b4b61d8c1cbb31dac7b6afa8d08b6877e439600c4a6fc07511877df2e9"
     "ce3a9538a726002a46c083d98124b185730f3b2aea2a01cb626be809f87b2ac100511c5b8fa0e9d40c9c999e"
     "a0aa87aad08cfb62c1ba869178be986156f7622d8c48ad80a552e9d08c36671ae232efefc8619c562e715f04"
     "ae52db2ad8e4a09e8c671b12289558117f9562d51beb59e29b10dd9eb232e8fcdb1cfdd14899acd693de14a7"
     "c076a4656386e23b06415b2c7a93b166cad1048bc605a49a79df3c03a3380de68a4f013e05e5283745d4078e"
     "be308dc8881ced62ed571a93c69e8aae6e51f5e61e4ff75699aa32",
     "b194e6c8f83e09515d4ea95c00578fdaee8f9d35ad09a560ba81a51accc49416598516c747e16dbc5c44bfd5"
     "c790ba59b47a6f573a43b26cdbb240230b1dca00447770c4cf647df2a79eca3f4a8b2de08f9fbc4489c30f6b"
     "cfcd096f1aa4177fa281248e8e19e2ea7d1f049b7053947a3a67e946ebbed67466e009b63debceba54cc881e"
     "55e2d68f3f584380d6fb7b0e9a3fdbd709adac3a47d6f9a5fcaf03218e18cca5a7a0e340a774cd5c39d7031b"
     "63b5b5b896e1e705b4ded099c3c11150738b2107f61f1423fb72ed0a16070cd6f8a18ae90b167b707c23ddc8"
     "5a1b6ff5a3ec5e654b1446c6eae787c31a94bc9ab5376dfea31bf8dfbdabce45c750111946e64c22d23c46d7"
     "ef644ca02c69205d59b1815a6a6e8b14fe7e2d8ad17fc75e656706b67f257523d517d9f8b83150a88359e56d"
     "6432859f8f90eaba70cf90f86995afc85c33992591536ba353ae14a6932dc96ad72687ac34c2d4d5c92e51da"
     "246f557785df1944d2c3c83536739b7d8475ba39c639df4ce69859c6ffb9e994545699a3a19d53979bfa34fd"
     "ec856a9f12ac70bdeacf172721496d76d8073a76e8160d99f4b7466e05a8f006cb448d2af7ee308ca19440aa"
     "ca08f34422da830e476269c829a2b5b64acea4f1143d1857cc2699ea3bf2e076b16e50a9071cf15352189edf"
     "278984102ebcc751d46510b816afafdb3fea37a7d49662ff090392",
     "79e64c4c0e8bb3a214955584d2bc8b16"},
    {128, 1, "special case IV, 256-bit key, 96-bit IV, 16 bytes",
     "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f",
     "000000000000000000000000",
     "",
     "561008fa07a68f5c61285cd013464eaf",
     "23293e9b07ca7d1b0cae7cc489a973b3",
     "ffffffffffffffffffffffffffffffff"},
    {129, 1, "special case IV, 256-bit key, 96-bit IV, 16 bytes",
     "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f",
     "ffffffffffffffffffffffff",
     "",
     "c6152244cea1978d3e0bc274cf8c0b3b",
     "7cb6fc7c6abc009efe9551a99f36a421",
     "00000000000000000000000000000000"},
    {137, 0, "Flipped bit 63 in tag, 256-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "b2061457c0759fc1749f174ee1ccadfa",
     "9ce8fef6d8ab1b71bf887232eab590dd"},
    {153, 0, "Tag changed to all zero, 256-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "b2061457c0759fc1749f174ee1ccadfa",
     "00000000000000000000000000000000"},
    {155, 0, "msbs changed in tag, 256-bit key, 96-bit IV, 16 bytes",
     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
     "505152535455565758595a5b",
     "",
     "202122232425262728292a2b2c2d2e2f",
     "b2061457c0759fc1749f174ee1ccadfa",
     "1c687e76582b9b713f08f2b26a35105d"},
    {160, 1, "J0:fffffffffffffffffffffffffffffffe, 192-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff1021324354657687",
     "40bb0abebc483ff6d5671241ff5d66c6",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "2a818888d1f09f32aa7beedd2869b446575e2ecec2b3c72d4e80830d0d859ad9e42c29c4a68d8d9d",
     "dc481f172545268eff63ab0490403dc3"},
    {242, 1, "J0:ffffffffffffffffffffffffffffffff, 256-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f",
     "ce20a7e870696a5e68533c465bad2ba1",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "4f4350565d91d9aa8c5f4048550492ad6d6fdabf66da5d1e2af7bfe1a8aadaa0baa3de38a41d9713",
     "155da6441ec071ef2d8e6cffbacc1c7c"},
    {245, 1, "J0:000102030405060708090a0bffffffff, 256-bit key, 128-bit IV, 40 bytes",
     "00112233445566778899aabbccddeeff102132435465768798a9bacbdcedfe0f",
     "ecd52120af240e9b4bf3b9d1eeb49434",
     "",
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000",
     "36b3fbecd09178d04527fb37544f5579d20d60a41266f685c48098e1a52804ca387d90709d3268dd",
     "033e0ef2953ebfd8425737c7d393f89a"},
    {259, 1, "unusual IV size, 128-bit key, 120-bit IV, 12 bytes",
     "34c74e28182948e03af02a01f46eb4f7",
     "b0a73119a97d623806b49d45ddf4c7",
     "",
     "fe82ba66cf2e265741f2c86c",
     "2bc3ef8e7402b4631f48e9be",
     "4b6f6f5be291a90b9e93a8a82ddbc8d8"},
    {267, 1, "long IV size, 128-bit key, 1024-bit IV, 12 bytes",
     "7e5a39dcda7e066988f19adf4de4d501",
     "494356c3459d60e3a83433c9bcf2c0454a763e496e4ec99bfbe4bbb83a4fda76b542213899dcf5521cd9bbbe"
     "5d11545bda44a3f4a681ce2843acea730d83d3930ea30991ee1a68ebf6d1a5a40f9b02a1aab091298df8dd68"
     "9dc7613bcbff94d35f2ca43377d81618562bcf6573411ec9bc97c5a6276b554054c0fa787073d067",
     "",
     "b04729b4adbaac63c2aaf8d8",
     "5291dd4da91ccc2e77306d83",
     "a7f7b21a3b7ece509e922647fd905f06"},
    {277, 1, "small IV sizes, 128-bit key, 8-bit IV, 0 bytes",
     "59a284f50aedd8d3e2a91637d3815579",
     "80",
     "",
     "",
     "",
     "af498f701d2470695f6e7c8327a2398b"},
    {311, 0, "0 size IV is not valid, 128-bit key, 0-bit IV, 0 bytes",
     "8f3f52e3c75c58f5cb261f518f4ad30a",
     "",
     "",
     "",
     "",
     "cf71978ffcc778f3c85ac9c31b6fe191"},
    {316, 0, "0 size IV is not valid, 256-bit key, 0-bit IV, 16 bytes",
     "7660d10966c6503903a552dde2a809ede9da490e5e5cc3e349da999671809883",
     "",
     "",
     "c314235341debfafa1526bb61044a7f1",
     "7772ea358901f571d3d35c19497639d9",
     "8fe0520ad744a11f0ccfd228454363fa"},
};

static void test_wycheproof(void) {
  size_t i, bad = 0, valid = 0, n = sizeof(wycheproof) / sizeof(wycheproof[0]);
  for (i = 0; i < n; i++) {
    int rc = run_vec(&wycheproof[i]);
    valid += wycheproof[i].valid;
    if (rc != 0)
      bad++, fprintf(stderr, "  tcId %d (%s): failure %d\n", wycheproof[i].id, wycheproof[i].what,
                     rc);
  }
  printf("# %zu Wycheproof vectors in the test: %zu valid, %zu invalid\n", n, valid, n - valid);
  CHECK_EQ_INT(bad, 0, "the selected Wycheproof vectors: valid ones seal and open, modified "
                       "tags and the empty IV are refused with the output untouched");
}

/* A member of a JSON object, or NULL (by hand: only the cJSON calls subprojects/cjson-lite also
 * has, for the static build). */
static const cJSON *member(const cJSON *o, const char *name) {
  const cJSON *c;
  for (c = o != NULL ? o->child : NULL; c != NULL; c = c->next)
    if (c->string != NULL && strcmp(c->string, name) == 0) return c;
  return NULL;
}

static const char *member_str(const cJSON *o, const char *name) {
  const cJSON *c = member(o, name);
  return c != NULL && cJSON_IsString(c) ? c->valuestring : NULL;
}

/* The whole aes_gcm_test.json when DDUCT_WYCHEPROOF_DIR points at a directory that has it. */
static void test_wycheproof_file(const char *impl) {
  const char *dir = getenv("DDUCT_WYCHEPROOF_DIR");
  char path[4096];
  FILE *f;
  char *text;
  long size;
  cJSON *doc;
  const cJSON *groups, *g, *t;
  size_t total = 0, valid = 0, invalid = 0, bad = 0, skipped = 0;
  if (dir == NULL || *dir == '\0') {
    printf("# DDUCT_WYCHEPROOF_DIR not set: the whole aes_gcm_test.json is not run\n");
    return;
  }
  snprintf(path, sizeof(path), "%s/aes_gcm_test.json", dir);
  f = fopen(path, "rb");
  CHECK(f != NULL, "DDUCT_WYCHEPROOF_DIR holds aes_gcm_test.json");
  if (f == NULL) return;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  rewind(f);
  text = malloc((size_t)size + 1);
  CHECK(text != NULL && fread(text, 1, (size_t)size, f) == (size_t)size, "the file is read");
  fclose(f);
  text[size] = '\0';
  doc = cJSON_ParseWithLengthOpts(text, (size_t)size, NULL, 0);
  free(text);
  groups = member(doc, "testGroups");
  CHECK(groups != NULL && groups->child != NULL, "the file has testGroups");
  for (g = groups != NULL ? groups->child : NULL; g != NULL; g = g->next) {
    const cJSON *tests = member(g, "tests");
    for (t = tests != NULL ? tests->child : NULL; t != NULL; t = t->next) {
      struct vec v;
      const char *result = member_str(t, "result");
      const cJSON *id = member(t, "tcId");
      int rc;
      v.id = id != NULL && cJSON_IsNumber(id) ? id->valueint : -1;
      v.valid = result != NULL && strcmp(result, "valid") == 0;
      v.what = member_str(t, "comment");
      v.key = member_str(t, "key"), v.iv = member_str(t, "iv"), v.aad = member_str(t, "aad");
      v.msg = member_str(t, "msg"), v.ct = member_str(t, "ct"), v.tag = member_str(t, "tag");
      total++;
      if (result == NULL || strcmp(result, "acceptable") == 0 || v.key == NULL || v.iv == NULL ||
          v.aad == NULL || v.msg == NULL || v.ct == NULL || v.tag == NULL ||
          strlen(v.msg) > 2 * 1100 || strlen(v.iv) > 2 * 300 || strlen(v.aad) > 2 * 600) {
        skipped++;
        continue;
      }
      rc = run_vec(&v);
      if (rc != 0) {
        bad++;
        fprintf(stderr, "  tcId %d (%s): failure %d\n", v.id, v.what, rc);
      } else if (v.valid) {
        valid++;
      } else {
        invalid++;
      }
    }
  }
  cJSON_Delete(doc);
  printf("# wycheproof aes_gcm_test.json, %s: %zu tests: %zu valid passed, %zu invalid refused, "
         "%zu failed, %zu skipped\n", impl, total, valid, invalid, bad, skipped);
  CHECK(total > 0 && bad == 0 && skipped == 0, "every vector of aes_gcm_test.json as it says");
}

/* ---- against mbedTLS and OpenSSL ---- */

struct ref {
  mbedtls_gcm_context m;
  struct dduct__aesgcm ours;
  unsigned char key[32];
  size_t klen;
};

static void new_key(struct ref *r, size_t klen) {
  r->klen = klen;
  fill_rand(r->key, klen);
  mbedtls_gcm_setkey(&r->m, MBEDTLS_CIPHER_ID_AES, r->key, (unsigned)klen * 8);
  dduct__aesgcm_wipe(&r->ours);
  if (dduct__aesgcm_init(&r->ours, r->key, klen) != 0) abort();
}

#ifdef HAVE_OPENSSL
static int openssl_seal(const struct ref *r, const unsigned char *iv, size_t ivl,
                        const unsigned char *aad, size_t alen, const unsigned char *pt, size_t len,
                        unsigned char *ct, unsigned char tag[16]) {
  EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
  const EVP_CIPHER *ciph = r->klen == 16 ? EVP_aes_128_gcm()
                           : r->klen == 24 ? EVP_aes_192_gcm() : EVP_aes_256_gcm();
  int n, ok;
  ok = x != NULL && EVP_EncryptInit_ex(x, ciph, NULL, NULL, NULL) == 1 &&
       EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_IVLEN, (int)ivl, NULL) == 1 &&
       EVP_EncryptInit_ex(x, NULL, NULL, r->key, iv) == 1 &&
       (alen == 0 || EVP_EncryptUpdate(x, NULL, &n, aad, (int)alen) == 1) &&
       (len == 0 || EVP_EncryptUpdate(x, ct, &n, pt, (int)len) == 1) &&
       EVP_EncryptFinal_ex(x, ct + len, &n) == 1 &&
       EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
  EVP_CIPHER_CTX_free(x);
  return ok ? 0 : -1;
}
#endif

/* Seals with mbedTLS (and OpenSSL) and with ours (in place or not, input at in_off, output at
 * out_off), compares, opens mbedTLS's output with ours (in place or not); returns 0 when
 * everything agrees. */
static int one(struct ref *r, const unsigned char *iv, size_t ivl, const unsigned char *pt,
               size_t len, const unsigned char *aad, size_t alen, int in_place, size_t in_off,
               size_t out_off, unsigned char *a, unsigned char *b, unsigned char *c) {
  unsigned char rtag[16], tag[16];
  unsigned char *ct = a, *src = b + in_off, *work = in_place ? src : c + out_off;
  if (mbedtls_gcm_crypt_and_tag(&r->m, MBEDTLS_GCM_ENCRYPT, len, iv, ivl, aad, alen, pt, ct, 16,
                                rtag) != 0)
    return 1;
#ifdef HAVE_OPENSSL
  {
    unsigned char otag[16];
    if (openssl_seal(r, iv, ivl, aad, alen, pt, len, c, otag) != 0 || memcmp(c, ct, len) != 0 ||
        memcmp(otag, rtag, 16) != 0)
      return 5; /* the two references disagree: the test itself is wrong */
  }
#endif
  memcpy(src, pt, len);
  work[len] = 0x5a;
  if (dduct__aesgcm_seal(&r->ours, iv, ivl, aad, alen, src, len, work, tag) != 0) return 6;
  if (memcmp(work, ct, len) != 0 || memcmp(tag, rtag, 16) != 0) return 2;
  if (work[len] != 0x5a) return 7; /* nothing written past the end */
  memcpy(src, ct, len);
  if (!in_place) memset(work, 0, len);
  if (dduct__aesgcm_open(&r->ours, iv, ivl, aad, alen, src, len, rtag, 16, work) != 0) return 3;
  if (work[len] != 0x5a) return 7;
  return memcmp(work, pt, len) != 0 ? 4 : 0;
}

static void test_cross(const unsigned char *buf, unsigned char *a, unsigned char *b,
                       unsigned char *c) {
  /* Around the 16-byte block, the 8- and 16-block batches, records. */
  static const size_t edges[] = {128, 256, 512, 1024, 2048, 4096, 8192, 16384, 16384 + 256, 32768};
  static const size_t klens[] = {16, 24, 32};
  struct ref r;
  unsigned char aad[41], iv[64];
  size_t len, i, k, bad = 0;
  int d;
  mbedtls_gcm_init(&r.m);
  memset(&r.ours, 0, sizeof(r.ours));
  fill_rand(aad, sizeof(aad));
  for (k = 0; k < 3; k++) {
    new_key(&r, klens[k]);
    for (len = 0; len <= 1100; len++) {
      if (len % 97 == 0) new_key(&r, klens[k]);
      fill_rand(iv, 12);
      d = one(&r, iv, 12, buf + len % 13, len, aad, len % 41, (int)(len & 1), len % 64,
              (len * 7) % 64, a, b, c);
      if (d != 0) bad++, fprintf(stderr, "  key %zu length %zu: mismatch %d\n", klens[k], len, d);
    }
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS and OpenSSL for every length 0..1100 (128-, 192- and "
                       "256-bit keys, aad 0..40, in place and not)");
  bad = 0;
  new_key(&r, 16);
  for (i = 0; i < 64; i++) {
    for (k = 0; k < 64; k++) {
      len = 1 + (size_t)(next_rand() % 700);
      if ((d = one(&r, iv, 12, buf + i, len, aad, 13, 0, i, k, a, b, c)) != 0)
        bad++, fprintf(stderr, "  offsets %zu/%zu length %zu: mismatch %d\n", i, k, len, d);
    }
    if ((d = one(&r, iv, 12, buf + i, 300 + i, aad, 13, 1, i, 0, a, b, c)) != 0)
      bad++, fprintf(stderr, "  in place at offset %zu: mismatch %d\n", i, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for every input and output alignment (0..63 each)");
  bad = 0;
  for (i = 1; i <= 64; i++) { /* IVs of 1..64 bytes: hashed into the first counter block */
    fill_rand(iv, i);
    if ((d = one(&r, iv, i, buf, 100 + i, aad, i % 41, (int)i & 1, 3, 5, a, b, c)) != 0)
      bad++, fprintf(stderr, "  IV of %zu bytes: mismatch %d\n", i, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for IVs of 1..64 bytes");
  bad = 0;
  for (k = 0; k < 3; k++) {
    new_key(&r, klens[k]);
    for (i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
      for (len = edges[i] - 17; len <= edges[i] + 17; len++)
        if ((d = one(&r, iv, 12, buf + 1, len, aad, 13, (int)len & 1, 3, 9, a, b, c)) != 0)
          bad++, fprintf(stderr, "  length %zu: mismatch %d\n", len, d);
    }
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS around every block and batch boundary (+-17 bytes)");
  bad = 0;
  for (i = 0; i < 150; i++) {
    len = (size_t)(next_rand() % (BIG - SLACK));
    if (i == 0) len = BIG - SLACK;
    new_key(&r, i % 2 ? 32 : 16);
    fill_rand(iv, 12);
    if ((d = one(&r, iv, 12, buf + i % 16, len, aad, i % 41, (int)i & 1, (i * 5) % 64, i % 64, a,
                 b, c)) != 0)
      bad++, fprintf(stderr, "  length %zu: mismatch %d\n", len, d);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for 150 random lengths up to 64 KiB");
  mbedtls_gcm_free(&r.m);
  dduct__aesgcm_wipe(&r.ours);
}

/* A flipped bit anywhere (tag, ciphertext, aad, IV), a shorter ciphertext or aad: -1, out
 * untouched. */
static void test_tamper(const unsigned char *buf, unsigned char *a, unsigned char *b) {
  static const size_t lens[] = {0, 1, 15, 16, 17, 255, 256, 1000, 16384};
  struct dduct__aesgcm c;
  unsigned char key[32], iv[12], aad[13], tag[16], bad_tag[16];
  size_t i, j, wrong = 0, touched = 0, klen;
  for (klen = 16; klen <= 32; klen += 16) {
    fill_rand(key, klen);
    fill_rand(iv, 12);
    fill_rand(aad, sizeof(aad));
    dduct__aesgcm_init(&c, key, klen);
    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
      size_t len = lens[i];
      dduct__aesgcm_seal(&c, iv, 12, aad, sizeof(aad), buf, len, a, tag);
      for (j = 0; j < 7; j++) {
        unsigned char iv2[12], *aad2 = b + BIG; /* past the largest len */
        memcpy(bad_tag, tag, 16);
        memcpy(iv2, iv, 12);
        memcpy(aad2, aad, sizeof(aad));
        if (j == 0) bad_tag[next_rand() % 16] ^= (unsigned char)(1u << next_rand() % 8);
        if ((j == 1 || j == 4) && len == 0) continue;
        if (j == 1) a[next_rand() % len] ^= 0x80;
        if (j == 2) aad2[next_rand() % sizeof(aad)] ^= 0x01;
        if (j == 3) iv2[next_rand() % 12] ^= 0x10;
        memset(b, 0xa5, len + 1);
        if (j == 4) { /* one byte short */
          if (dduct__aesgcm_open(&c, iv2, 12, aad2, sizeof(aad), a, len - 1, bad_tag, 16, b) != -1)
            wrong++;
        } else if (j == 5) { /* one byte less aad */
          if (dduct__aesgcm_open(&c, iv2, 12, aad2, sizeof(aad) - 1, a, len, bad_tag, 16, b) != -1)
            wrong++;
        } else if (j == 6) { /* the aad moved into the ciphertext's place */
          if (dduct__aesgcm_open(&c, iv2, 12, NULL, 0, a, len, bad_tag, 16, b) != -1) wrong++;
        } else if (dduct__aesgcm_open(&c, iv2, 12, aad2, sizeof(aad), a, len, bad_tag, 16, b) !=
                   -1) {
          wrong++;
        }
        for (size_t k = 0; k <= len; k++) touched += b[k] != 0xa5;
        if (j == 1) dduct__aesgcm_seal(&c, iv, 12, aad, sizeof(aad), buf, len, a, tag);
      }
      /* In place: the ciphertext must survive a failed open. */
      tag[15] ^= 0x80;
      memcpy(b, a, len);
      if (dduct__aesgcm_open(&c, iv, 12, aad, sizeof(aad), b, len, tag, 16, b) != -1) wrong++;
      if (memcmp(b, a, len) != 0) touched++;
      tag[15] ^= 0x80;
      if (dduct__aesgcm_open(&c, iv, 12, aad, sizeof(aad), b, len, tag, 16, b) != 0 ||
          memcmp(b, buf, len) != 0)
        wrong++;
    }
    dduct__aesgcm_wipe(&c);
  }
  CHECK_EQ_INT(wrong, 0, "a changed tag, ciphertext, aad, IV or length is rejected, the "
                         "untouched record accepted");
  CHECK_EQ_INT(touched, 0, "a rejected open leaves out untouched (in place too)");
}

int main(int argc, char **argv) {
  unsigned char *buf, *a, *b, *c;
  int i;

  if (argc > 1 && strcmp(argv[1], "--best") == 0) {
    printf("%s\n", dduct__aesgcm_impl_name(dduct__aesgcm_best()));
    return 0;
  }
  cpu_level = cpuinfo_level();
  test_choice(argv[0]);
  buf = malloc(BIG);
  a = aligned_alloc(64, BIG + SLACK);
  b = aligned_alloc(64, BIG + SLACK);
  c = aligned_alloc(64, BIG + SLACK);
  fill_rand(buf, BIG);
#ifndef HAVE_OPENSSL
  printf("# built without OpenSSL's libcrypto: the differential tests use mbedTLS only\n");
#endif
  for (i = DDUCT__AESGCM_AESNI; i <= DDUCT__AESGCM_VAES512; i++) {
    const char *name = dduct__aesgcm_impl_name((enum dduct__aesgcm_impl)i);
    if ((int)dduct__aesgcm_use((enum dduct__aesgcm_impl)i) != i) {
      printf("# skip %s: this CPU lacks it (or this build)\n", name);
      continue;
    }
    printf("# implementation: %s\n", name);
    test_spec();
    test_wycheproof();
    test_wycheproof_file(name);
    test_cross(buf, a, b, c);
    test_tamper(buf, a, b);
  }
  free(buf);
  free(a);
  free(b);
  free(c);
  return tap_done();
}
