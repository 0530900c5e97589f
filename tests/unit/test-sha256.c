/* SHA-256 (libdduct/src/sha256.c): both implementations against the FIPS 180-4 / NIST examples
 * and against mbedTLS's sha256 for every length 0..300 and random lengths up to 4 MiB fed in
 * awkward pieces from unaligned pointers. Says which implementation this CPU uses, and checks
 * that a CPU with sha_ni really gets the SHA-NI one (a silent fallback would pass the digests). */
#include <mbedtls/sha256.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"
#include "tap.h"

#define BIG (4u << 20)

static const enum dduct__sha256_impl impls[] = {DDUCT__SHA256_PORTABLE, DDUCT__SHA256_SHANI};
static int cpu_shani; /* /proc/cpuinfo says sha_ni */

static uint64_t rng = 0x9e3779b97f4a7c15u;
static uint64_t next_rand(void) { /* xorshift64: reproducible, no libc state */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static void hex(const unsigned char *d, char out[65]) {
  int i;
  for (i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static int cpuinfo_has_shani(void) {
  char line[4096];
  int found = 0;
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == NULL) return 0;
  while (!found && fgets(line, sizeof(line), f) != NULL)
    found = strncmp(line, "flags", 5) == 0 && strstr(line, " sha_ni") != NULL;
  fclose(f);
  return found;
}

/* Hashes data with impl, fed in pieces of the sizes in `pieces` (cycled; 0 = random 1..20000). */
static void hash_pieces(enum dduct__sha256_impl impl, const unsigned char *data, size_t len,
                        const size_t *pieces, size_t npieces, unsigned char out[32]) {
  struct dduct__sha256 s;
  size_t off = 0, i = 0;
  dduct__sha256_init_impl(&s, impl);
  while (off < len) {
    size_t n = pieces[i++ % npieces];
    if (n == 0) n = 1 + (size_t)(next_rand() % 20000);
    if (n > len - off) n = len - off;
    dduct__sha256_update(&s, data + off, n);
    off += n;
  }
  dduct__sha256_final(&s, out);
}

static void test_choice(const char *self) {
  struct dduct__sha256 s;
  char out[256];
  const char *env = getenv("DDUCT_SHA256");
  printf("# CPU flag sha_ni: %s; implementation used: %s\n", cpu_shani ? "yes" : "no",
         dduct__sha256_impl_name(dduct__sha256_best()));
  CHECK_EQ_INT(dduct__sha256_init_impl(&s, DDUCT__SHA256_SHANI),
               cpu_shani ? DDUCT__SHA256_SHANI : DDUCT__SHA256_PORTABLE,
               "SHA-NI is used exactly when /proc/cpuinfo lists sha_ni");
  CHECK_EQ_INT(s.impl, cpu_shani ? DDUCT__SHA256_SHANI : DDUCT__SHA256_PORTABLE,
               "the state records the implementation its updates run");
  CHECK_EQ_INT(dduct__sha256_init_impl(&s, DDUCT__SHA256_PORTABLE), DDUCT__SHA256_PORTABLE,
               "the portable implementation can always be chosen");
  if (env == NULL || strcmp(env, "portable") != 0) {
    dduct__sha256_init(&s);
    CHECK_EQ_INT(s.impl, cpu_shani ? DDUCT__SHA256_SHANI : DDUCT__SHA256_PORTABLE,
                 "dduct__sha256_init picks SHA-NI on a CPU that has it, else portable");
  }
  CHECK_EQ_INT(tap_sh(out, sizeof(out), "DDUCT_SHA256=portable '%s' --best", self), 0,
               "the test re-runs itself with DDUCT_SHA256=portable");
  CHECK_EQ_STR(out, "portable\n", "DDUCT_SHA256=portable forces the portable implementation");
}

static void test_vectors(enum dduct__sha256_impl impl) {
  static const struct {
    const char *msg, *digest;
  } v[] = {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
       "lmnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
  };
  static const size_t one[] = {1}, odd[] = {7, 64, 65, 1, 63, 4096, 3};
  unsigned char d[32], *a;
  char h[65];
  size_t i;
  struct dduct__sha256 s;

  for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    dduct__sha256_init_impl(&s, impl);
    dduct__sha256_update(&s, v[i].msg, strlen(v[i].msg));
    dduct__sha256_final(&s, d);
    hex(d, h);
    CHECK_EQ_STR(h, v[i].digest, "FIPS 180-4 example digest, one update");
    hash_pieces(impl, (const unsigned char *)v[i].msg, strlen(v[i].msg), one, 1, d);
    hex(d, h);
    CHECK_EQ_STR(h, v[i].digest, "FIPS 180-4 example digest, one byte per update");
  }
  a = malloc(1000000);
  memset(a, 'a', 1000000);
  hash_pieces(impl, a, 1000000, odd, sizeof(odd) / sizeof(odd[0]), d);
  hex(d, h);
  CHECK_EQ_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
               "one million 'a' in odd pieces");
  free(a);
}

/* Every length 0..300 (all the padding cases, one to six blocks), one update and two. */
static void test_short_lengths(enum dduct__sha256_impl impl, const unsigned char *buf) {
  unsigned char ref[32], d[32];
  size_t len, bad = 0;
  for (len = 0; len <= 300; len++) {
    size_t third = len / 3 + 1;
    mbedtls_sha256_ret(buf, len, ref, 0);
    hash_pieces(impl, buf, len, &third, 1, d);
    if (memcmp(d, ref, 32) != 0) bad++, fprintf(stderr, "  length %zu differs\n", len);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for every length 0..300 (in pieces of a third)");
}

static void test_random(enum dduct__sha256_impl impl, const unsigned char *buf) {
  static const size_t sizes[][4] = {{0, 0, 0, 0}, {1, 63, 64, 65}, {4096, 16384, 131072, 0},
                                    {127, 129, 191, 193}, {1 << 20, 5, 0, 64}};
  unsigned char ref[32], d[32];
  size_t round, bad = 0;
  for (round = 0; round < 10; round++) {
    size_t len = (size_t)(next_rand() % BIG), off = (size_t)(next_rand() % 16);
    const size_t *p = sizes[round % (sizeof(sizes) / sizeof(sizes[0]))];
    if (round == 0) len = BIG - 16; /* the largest */
    mbedtls_sha256_ret(buf + off, len, ref, 0);
    hash_pieces(impl, buf + off, len, p, 4, d);
    if (memcmp(d, ref, 32) != 0) bad++, fprintf(stderr, "  length %zu at +%zu differs\n", len, off);
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS for 10 random lengths up to 4 MiB in random pieces");
}

/* The same bytes at every offset 0..15 from a 16-byte boundary hash the same. */
static void test_alignment(enum dduct__sha256_impl impl, const unsigned char *buf) {
  unsigned char ref[32], d[32], *copy = aligned_alloc(64, 4096 + 64);
  size_t off, bad = 0;
  mbedtls_sha256_ret(buf, 4000, ref, 0);
  for (off = 0; off < 16; off++) {
    static const size_t pieces[] = {3, 64, 128, 1000};
    memcpy(copy + off, buf, 4000);
    hash_pieces(impl, copy + off, 4000, pieces, 4, d);
    if (memcmp(d, ref, 32) != 0) bad++;
  }
  CHECK_EQ_INT(bad, 0, "equal to mbedTLS from every alignment 0..15");
  free(copy);
}

/* A state copied mid-stream is a fork: both halves finish independently. */
static void test_copy(enum dduct__sha256_impl impl, const unsigned char *buf) {
  struct dduct__sha256 s, t;
  unsigned char ref[32], d[32];
  dduct__sha256_init_impl(&s, impl);
  dduct__sha256_update(&s, buf, 100);
  t = s;
  dduct__sha256_update(&s, buf + 100, 200);
  dduct__sha256_final(&s, d);
  mbedtls_sha256_ret(buf, 300, ref, 0);
  CHECK(memcmp(d, ref, 32) == 0, "a state hashes on after its copy was taken");
  dduct__sha256_update(&t, buf + 100, 200);
  dduct__sha256_final(&t, d);
  CHECK(memcmp(d, ref, 32) == 0, "the copy finishes the same digest");
}

int main(int argc, char **argv) {
  unsigned char *buf, ref[32], d[32];
  size_t i;

  if (argc > 1 && strcmp(argv[1], "--best") == 0) {
    printf("%s\n", dduct__sha256_impl_name(dduct__sha256_best()));
    return 0;
  }
  cpu_shani = cpuinfo_has_shani();
  test_choice(argv[0]);
  buf = malloc(BIG);
  for (i = 0; i < BIG; i++) buf[i] = (unsigned char)next_rand();
  for (i = 0; i < sizeof(impls) / sizeof(impls[0]); i++) {
    enum dduct__sha256_impl impl = impls[i];
    if (impl == DDUCT__SHA256_SHANI && !cpu_shani) {
      printf("# skip SHA-NI: this CPU lacks it (the portable path was tested)\n");
      continue;
    }
    printf("# implementation: %s\n", dduct__sha256_impl_name(impl));
    test_vectors(impl);
    test_short_lengths(impl, buf);
    test_random(impl, buf);
    test_alignment(impl, buf);
    test_copy(impl, buf);
  }
  mbedtls_sha256_ret(buf, 1000, ref, 0);
  dduct__sha256(buf, 1000, d);
  CHECK(memcmp(d, ref, 32) == 0, "the one-shot helper equals mbedTLS");
  free(buf);
  return tap_done();
}
