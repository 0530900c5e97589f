/* The diagnostic environment switches and the CPU's features (diag.h). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define HAVE_CPUID 1
#endif

static struct dduct_diag diag;
static pthread_once_t diag_once = PTHREAD_ONCE_INIT;

static int env_is(const char *name, const char *value) {
  const char *e = getenv(name);
  return e != NULL && strcmp(e, value) == 0;
}

static void diag_read(void) {
  diag.tls_records_mbedtls = env_is("DDUCT_TLS_RECORDS", "mbedtls");
  diag.tls_offload_off = env_is("DDUCT_TLS_OFFLOAD", "off");
  diag.chachapoly_portable = env_is("DDUCT_CHACHAPOLY", "portable");
  diag.sha256_portable = env_is("DDUCT_SHA256", "portable");
  diag.aesgcm_off = env_is("DDUCT_AESGCM", "off");
  diag.aesgcm_aesni = env_is("DDUCT_AESGCM", "aesni");
}

const struct dduct_diag *dduct__diag(void) {
  (void)pthread_once(&diag_once, diag_read);
  return &diag;
}

static struct dduct_cpu cpu;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_read(void) {
#ifdef HAVE_CPUID
  unsigned a, b, c, d;
  uint64_t xcr0 = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return;
  cpu.ssse3 = (c & bit_SSSE3) != 0;
  cpu.sse41 = (c & bit_SSE4_1) != 0;
  cpu.aesni = (c & bit_AES) != 0;
  cpu.pclmul = (c & bit_PCLMUL) != 0;
  if ((c & bit_OSXSAVE) && (c & bit_AVX)) {
    __asm__("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
    xcr0 = (uint64_t)d << 32 | a;
  }
  /* XCR0 bits 1-2: XMM and YMM state; 5-7: opmask and both halves of ZMM. */
  cpu.avx = (xcr0 & 0x6) == 0x6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
  cpu.sha = (b & bit_SHA) != 0; /* XMM only: every x86-64 OS saves it */
  cpu.avx2 = cpu.avx && (b & bit_AVX2) != 0;
  if (cpu.avx && (xcr0 & 0xe0) == 0xe0) {
    cpu.avx512f = (b & bit_AVX512F) != 0;
    cpu.avx512bw = (b & bit_AVX512BW) != 0;
    cpu.avx512vl = (b & bit_AVX512VL) != 0;
    cpu.avx512ifma = (b & bit_AVX512IFMA) != 0;
  }
  cpu.vaes = cpu.avx && (c & bit_VAES) != 0;
  cpu.vpclmul = cpu.avx && (c & bit_VPCLMULQDQ) != 0;
#endif
}

const struct dduct_cpu *dduct__cpu(void) {
  (void)pthread_once(&cpu_once, cpu_read);
  return &cpu;
}
