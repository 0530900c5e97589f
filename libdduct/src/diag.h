/* What one process reads once and never again, in one place (diag.c): the diagnostic environment
 * switches (they exist for measurements and tests; docs/architecture.md lists them) and the CPU's
 * instruction set extensions the hand-written ciphers and hashes choose from. Internal. */
#ifndef DDUCT_DIAG_H
#define DDUCT_DIAG_H

struct dduct_diag {
  int tls_records_mbedtls; /* DDUCT_TLS_RECORDS=mbedtls: mbedTLS seals and opens every record */
  int tls_offload_off;     /* DDUCT_TLS_OFFLOAD=off: no encryption on worker threads */
  int chachapoly_portable; /* DDUCT_CHACHAPOLY=portable: no SIMD ChaCha20-Poly1305 */
  int sha256_portable;     /* DDUCT_SHA256=portable: no SHA extensions */
  int aesgcm_off;          /* DDUCT_AESGCM=off: no AES-GCM written here */
  int aesgcm_aesni;        /* DDUCT_AESGCM=aesni: AES-NI, not VAES */
};

/* The switches as the environment set them when first asked (thread-safe). */
const struct dduct_diag *dduct__diag(void);

/* x86-64 extensions usable now: the CPU has them and, for the AVX families, the OS saves their
 * registers (XCR0). All 0 elsewhere. */
struct dduct_cpu {
  unsigned ssse3 : 1, sse41 : 1, aesni : 1, pclmul : 1, sha : 1;
  unsigned avx : 1, avx2 : 1;                               /* YMM state saved */
  unsigned avx512f : 1, avx512bw : 1, avx512vl : 1, avx512ifma : 1; /* ZMM and opmask saved */
  unsigned vaes : 1, vpclmul : 1;
};

/* The CPU's features, probed once per process (CPUID traps to the hypervisor on a VM: several
 * microseconds each). Thread-safe. */
const struct dduct_cpu *dduct__cpu(void);

#endif
