/* Certificate and key creation for the CA on mbedTLS's writer. Internal; not installed. */
#ifndef DDUCT_X509_H
#define DDUCT_X509_H

#include <stddef.h>
#include <time.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

struct dduct__ip {
  unsigned char b[16];
  size_t len; /* 4 or 16 */
};

enum dduct__eku { DDUCT__EKU_NONE = 0, DDUCT__EKU_SERVER, DDUCT__EKU_CLIENT };

struct dduct__cert_spec {
  const char *cn;                   /* subject commonName (UTF-8); NULL: empty subject */
  mbedtls_pk_context *subject_key;  /* its public half is certified */
  mbedtls_pk_context *issuer_key;   /* signs; == subject_key for a self-signed CA */
  const mbedtls_x509_crt *issuer;   /* issuer's certificate; NULL: self-signed */
  time_t not_before, not_after;
  int is_ca;                        /* basicConstraints CA:TRUE (critical), keyCertSign+cRLSign */
  enum dduct__eku eku;
  const char *const *dns;           /* subjectAltName dNSName entries */
  size_t ndns;
  const struct dduct__ip *ips;      /* subjectAltName iPAddress entries */
  size_t nips;
};

/* Issue a certificate per spec (SHA-256 signature, random 159-bit serial, subject and authority
 * key identifiers) and append it, parsed, to out (an initialised chain). Returns 0 or
 * DDUCT_ECRYPTO / DDUCT_ENOMEM / DDUCT_EINVAL (a date past 9999). */
int dduct__x509_issue(const struct dduct__cert_spec *spec, mbedtls_x509_crt *out);

/* Generate an RSA key (e = 65537) / an ECDSA P-256 key into an initialised, empty pk. */
int dduct__x509_gen_rsa(mbedtls_pk_context *pk, unsigned bits);
int dduct__x509_gen_p256(mbedtls_pk_context *pk);

/* PEM text of a DER certificate; malloc'ed, NUL-terminated (caller frees). */
int dduct__x509_crt_pem(const mbedtls_x509_crt *crt, char **out, size_t *outlen);

/* A certificate's notAfter as time_t (UTC). */
time_t dduct__x509_not_after(const mbedtls_x509_crt *crt);

/* Parse an IPv4/IPv6 literal (no brackets). Returns 0 or DDUCT_EINVAL. IPv4-mapped IPv6
 * addresses are folded to IPv4 so both spellings compare equal. */
int dduct__x509_parse_ip(const char *s, struct dduct__ip *out);

#endif
