/* The diagnostic environment switches, read once per process in one place (diag.c). They exist
 * for measurements and tests; docs/architecture.md lists them. Internal. */
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

#endif
