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
  int is_ca;                        /* basicConstraints CA:TRUE, pathlen:0 (critical),
                                     * keyCertSign+cRLSign */
  enum dduct__eku eku;
  const char *const *dns;           /* subjectAltName dNSName entries */
  size_t ndns;
  const struct dduct__ip *ips;      /* subjectAltName iPAddress entries */
  size_t nips;
  /* A CA only: nameConstraints (critical) permitting exactly these subtrees: dNSName bases
   * ("*.x" gives "x"; duplicates dropped) and single iPAddress hosts. */
  int name_constraints;
  const char *const *nc_dns;
  size_t nc_ndns;
  const struct dduct__ip *nc_ips;
  size_t nc_nips;
};

/* Issue a certificate per spec (SHA-256 signature, random 159-bit serial, subject and authority
 * key identifiers) and append it, parsed, to out (an initialised chain). Returns 0 or
 * DDUCT_ECRYPTO / DDUCT_ENOMEM / DDUCT_EINVAL (a date past 9999). */
int dduct__x509_issue(const struct dduct__cert_spec *spec, mbedtls_x509_crt *out);

/* Parse DER / every PEM certificate in a NUL-terminated buffer (len counts the NUL) into
 * chain, accepting a critical nameConstraints extension, which mbedTLS 2.28 cannot read (dduct
 * writes it into a CA with ca_name_constraints, and never checks a peer against its own CA).
 * 0 or a negative mbedTLS error. */
int dduct__x509_parse_der(mbedtls_x509_crt *chain, const unsigned char *der, size_t len);
int dduct__x509_parse(mbedtls_x509_crt *chain, const unsigned char *buf, size_t len);

/* Generate an RSA key (e = 65537) / an ECDSA P-256 key into an initialised, empty pk. */
int dduct__x509_gen_rsa(mbedtls_pk_context *pk, unsigned bits);
int dduct__x509_gen_p256(mbedtls_pk_context *pk);

/* PEM text of a DER certificate; malloc'ed, NUL-terminated (caller frees). */
int dduct__x509_crt_pem(const mbedtls_x509_crt *crt, char **out, size_t *outlen);

/* A certificate's notAfter / notBefore as time_t (UTC). */
time_t dduct__x509_not_after(const mbedtls_x509_crt *crt);
time_t dduct__x509_not_before(const mbedtls_x509_crt *crt);

/* Parse an IPv4/IPv6 literal (no brackets). Returns 0 or DDUCT_EINVAL. IPv4-mapped IPv6
 * addresses are folded to IPv4 so both spellings compare equal. */
int dduct__x509_parse_ip(const char *s, struct dduct__ip *out);

#endif
