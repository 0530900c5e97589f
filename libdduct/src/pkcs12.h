/* A minimal PKCS#12 (RFC 7292) writer and MAC checker on mbedTLS primitives, which have no
 * PKCS#12 writer. The layout is what OpenSSL 3 writes by default, so `openssl pkcs12`, browsers
 * and OS keychains import it: the certificates in a PBES2-encrypted SafeContents, the key in a
 * pkcs8ShroudedKeyBag (PBES2: PBKDF2-HMAC-SHA256, 2048 iterations, AES-256-CBC), localKeyId
 * linking the two, and an HMAC-SHA256 MAC keyed with the PKCS#12 KDF. Internal; not installed. */
#ifndef DDUCT_PKCS12_H
#define DDUCT_PKCS12_H

#include <stddef.h>

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#define DDUCT__PKCS12_ITERATIONS 2048

/* Encode key + cert (only the first certificate of that chain) + the certificates of ca (a
 * chain, may be NULL) as a DER PFX protected by pass (UTF-8, may be empty but not NULL).
 * RSA and EC keys are supported. On success *out is malloc'ed (caller frees) and *outlen set.
 * Returns 0, DDUCT_EINVAL, DDUCT_ENOMEM or DDUCT_ECRYPTO. */
int dduct__pkcs12_write(mbedtls_pk_context *key, const mbedtls_x509_crt *cert,
                        const mbedtls_x509_crt *ca, const char *pass, unsigned char **out,
                        size_t *outlen);

/* Check that der[0..len) is a PFX whose MAC verifies with pass. Returns 0, DDUCT_ECORRUPT (not
 * a PFX we understand) or DDUCT_EVERIFY (MAC mismatch: wrong password or altered file). */
int dduct__pkcs12_check(const unsigned char *der, size_t len, const char *pass);

#endif
