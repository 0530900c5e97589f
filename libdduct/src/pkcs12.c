/* PKCS#12 writer: DER is produced back to front with mbedTLS's ASN.1 writer, one buffer per
 * nesting level that must be encrypted or MACed before its parent can be written. */
#include <stdlib.h>
#include <string.h>

#include <mbedtls/aes.h>
#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/md.h>
#include <mbedtls/oid.h>
#include <mbedtls/pkcs12.h>
#include <mbedtls/pkcs5.h>
#include <mbedtls/platform_util.h>

#include "internal.h"
#include "pkcs12.h"
#include "rng.h"

#define OID_PKCS7_DATA MBEDTLS_OID_PKCS "\x07\x01"
#define OID_PKCS7_ENCRYPTED MBEDTLS_OID_PKCS "\x07\x06"
#define OID_BAG_SHROUDED_KEY MBEDTLS_OID_PKCS12 "\x0a\x01\x02"
#define OID_BAG_CERT MBEDTLS_OID_PKCS12 "\x0a\x01\x03"
#define OID_CERT_X509 MBEDTLS_OID_PKCS9 "\x16\x01"
#define OID_LOCAL_KEY_ID MBEDTLS_OID_PKCS9 "\x15"
#define OID_AES256_CBC MBEDTLS_OID_AES "\x2a"
#define OID(s) (s), MBEDTLS_OID_SIZE(s)

#define SEQ (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)
#define SET (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SET)
#define EXPLICIT0 (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0)
#define IMPLICIT0 (MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0)

#define SALT_LEN 8 /* what OpenSSL uses for both the PBE and the MAC salt */
#define IV_LEN 16
#define KEY_LEN 32
#define KEY_ID_LEN 20
#define MAX_CERTS 16
#define KEY_DER_MAX 8192 /* an RSA-8192 key in PKCS#1 DER is under 5 KiB */

/* Add a writer's result to len, or return its error. Needs `int ret; size_t len`. */
#define CHK(f)                 \
  do {                         \
    ret = (f);                 \
    if (ret < 0) return ret;   \
    len += (size_t)ret;        \
  } while (0)

struct pbe {
  unsigned char salt[SALT_LEN];
  unsigned char iv[IV_LEN];
};

/* Tag + length in front of the content_len bytes just written. */
static int wrap(unsigned char **p, unsigned char *start, size_t content_len, unsigned char tag) {
  int ret;
  size_t len = 0;
  CHK(mbedtls_asn1_write_len(p, start, content_len));
  CHK(mbedtls_asn1_write_tag(p, start, tag));
  return (int)len;
}

/* AlgorithmIdentifier { id-PBES2, { PBKDF2 { salt, iterations, hmacWithSHA256 }, aes256-CBC iv } } */
static int write_pbes2_alg(unsigned char **p, unsigned char *start, const struct pbe *pbe) {
  int ret;
  size_t len = 0, mark;
  CHK(mbedtls_asn1_write_octet_string(p, start, pbe->iv, IV_LEN));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_AES256_CBC)));
  CHK(wrap(p, start, len, SEQ));
  mark = len;
  CHK(mbedtls_asn1_write_algorithm_identifier(p, start, OID(MBEDTLS_OID_HMAC_SHA256), 0));
  CHK(mbedtls_asn1_write_int(p, start, DDUCT__PKCS12_ITERATIONS));
  CHK(mbedtls_asn1_write_octet_string(p, start, pbe->salt, SALT_LEN));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(mbedtls_asn1_write_oid(p, start, OID(MBEDTLS_OID_PKCS5_PBKDF2)));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len, SEQ));
  CHK(mbedtls_asn1_write_oid(p, start, OID(MBEDTLS_OID_PKCS5_PBES2)));
  CHK(wrap(p, start, len, SEQ));
  return (int)len;
}

/* bagAttributes: SET { SEQ { localKeyId, SET { OCTET STRING id } } } */
static int write_key_id_attr(unsigned char **p, unsigned char *start, const unsigned char *id) {
  int ret;
  size_t len = 0;
  CHK(mbedtls_asn1_write_octet_string(p, start, id, KEY_ID_LEN));
  CHK(wrap(p, start, len, SET));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_LOCAL_KEY_ID)));
  CHK(wrap(p, start, len, SEQ));
  CHK(wrap(p, start, len, SET));
  return (int)len;
}

/* SafeBag { certBag, [0] CertBag { x509Certificate, [0] OCTET STRING der }, attrs } */
static int write_cert_bag(unsigned char **p, unsigned char *start, const mbedtls_x509_crt *crt,
                          const unsigned char *key_id) {
  int ret;
  size_t len = 0, mark;
  if (key_id != NULL) CHK(write_key_id_attr(p, start, key_id));
  mark = len;
  CHK(mbedtls_asn1_write_octet_string(p, start, crt->raw.p, crt->raw.len));
  CHK(wrap(p, start, len - mark, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_CERT_X509)));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len - mark, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_BAG_CERT)));
  CHK(wrap(p, start, len, SEQ));
  return (int)len;
}

/* SafeBag { pkcs8ShroudedKeyBag, [0] EncryptedPrivateKeyInfo { alg, OCTET STRING }, attrs } */
static int write_key_bag(unsigned char **p, unsigned char *start, const struct pbe *pbe,
                         const unsigned char *ct, size_t ctlen, const unsigned char *key_id) {
  int ret;
  size_t len = 0, mark;
  CHK(write_key_id_attr(p, start, key_id));
  mark = len;
  CHK(mbedtls_asn1_write_octet_string(p, start, ct, ctlen));
  CHK(write_pbes2_alg(p, start, pbe));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len - mark, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_BAG_SHROUDED_KEY)));
  CHK(wrap(p, start, len, SEQ));
  return (int)len;
}

/* PKCS#8 PrivateKeyInfo at the end of buf; mbedTLS writes only PKCS#1 / SEC1 bodies. */
static int write_pkcs8(mbedtls_pk_context *key, unsigned char *buf, size_t size) {
  int ret, par;
  size_t len = 0;
  unsigned char *p, **pp = &p;
  const char *coid;
  size_t coid_len;

  ret = mbedtls_pk_write_key_der(key, buf, size);
  if (ret < 0) return ret;
  len = (size_t)ret;
  p = buf + size - len;
  CHK(wrap(pp, buf, len, MBEDTLS_ASN1_OCTET_STRING));
  switch (mbedtls_pk_get_type(key)) {
  case MBEDTLS_PK_RSA:
    CHK(mbedtls_asn1_write_algorithm_identifier(pp, buf, OID(MBEDTLS_OID_PKCS1_RSA), 0));
    break;
  case MBEDTLS_PK_ECKEY:
    ret = mbedtls_oid_get_oid_by_ec_grp(mbedtls_pk_ec(*key)->grp.id, &coid, &coid_len);
    if (ret != 0) return ret;
    par = mbedtls_asn1_write_oid(pp, buf, coid, coid_len);
    if (par < 0) return par;
    CHK(mbedtls_asn1_write_algorithm_identifier(pp, buf, OID(MBEDTLS_OID_EC_ALG_UNRESTRICTED),
                                                (size_t)par));
    break;
  default:
    return MBEDTLS_ERR_PK_FEATURE_UNAVAILABLE;
  }
  CHK(mbedtls_asn1_write_int(pp, buf, 0));
  CHK(wrap(pp, buf, len, SEQ));
  return (int)len;
}

/* PBES2 encryption: PBKDF2-HMAC-SHA256 over the UTF-8 password (as OpenSSL does for PBES2),
 * AES-256-CBC with PKCS#7 padding. *out is malloc'ed. */
static int pbe_encrypt(const char *pass, const struct pbe *pbe, const unsigned char *in,
                       size_t inlen, unsigned char **out, size_t *outlen) {
  unsigned char key[KEY_LEN], iv[IV_LEN];
  size_t padded = (inlen / 16 + 1) * 16;
  unsigned char *buf = malloc(padded);
  mbedtls_md_context_t md;
  mbedtls_aes_context aes;
  int rc;

  if (buf == NULL) return DDUCT_ENOMEM;
  memcpy(buf, in, inlen);
  memset(buf + inlen, (int)(padded - inlen), padded - inlen);
  mbedtls_md_init(&md);
  mbedtls_aes_init(&aes);
  rc = mbedtls_md_setup(&md, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), 1);
  if (rc == 0)
    rc = mbedtls_pkcs5_pbkdf2_hmac(&md, (const unsigned char *)pass, strlen(pass), pbe->salt,
                                   SALT_LEN, DDUCT__PKCS12_ITERATIONS, KEY_LEN, key);
  if (rc == 0) rc = mbedtls_aes_setkey_enc(&aes, key, KEY_LEN * 8);
  memcpy(iv, pbe->iv, IV_LEN);
  if (rc == 0) rc = mbedtls_aes_crypt_cbc(&aes, MBEDTLS_AES_ENCRYPT, padded, iv, buf, buf);
  mbedtls_aes_free(&aes);
  mbedtls_md_free(&md);
  mbedtls_platform_zeroize(key, sizeof(key));
  if (rc != 0) {
    mbedtls_platform_zeroize(buf, padded);
    free(buf);
    return DDUCT_ECRYPTO;
  }
  *out = buf;
  *outlen = padded;
  return 0;
}

/* The PKCS#12 KDF wants the password as a NUL-terminated big-endian BMPString (UTF-16). */
static int bmp_password(const char *pass, unsigned char **out, size_t *outlen) {
  size_t n = strlen(pass), o = 0;
  const unsigned char *s = (const unsigned char *)pass;
  unsigned char *b = malloc(n * 4 + 2);
  if (b == NULL) return DDUCT_ENOMEM;
  for (size_t i = 0; i < n;) {
    unsigned long cp;
    size_t extra;
    if (s[i] < 0x80) cp = s[i], extra = 0;
    else if ((s[i] & 0xe0) == 0xc0) cp = s[i] & 0x1f, extra = 1;
    else if ((s[i] & 0xf0) == 0xe0) cp = s[i] & 0x0f, extra = 2;
    else if ((s[i] & 0xf8) == 0xf0) cp = s[i] & 0x07, extra = 3;
    else goto bad;
    if (i + extra >= n) goto bad;
    for (size_t k = 1; k <= extra; k++) {
      if ((s[i + k] & 0xc0) != 0x80) goto bad;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    i += extra + 1;
    if (cp >= 0x10000) { /* surrogate pair */
      unsigned long v = cp - 0x10000, hi = 0xd800 | (v >> 10), lo = 0xdc00 | (v & 0x3ff);
      b[o++] = (unsigned char)(hi >> 8), b[o++] = (unsigned char)hi;
      b[o++] = (unsigned char)(lo >> 8), b[o++] = (unsigned char)lo;
    } else {
      b[o++] = (unsigned char)(cp >> 8), b[o++] = (unsigned char)cp;
    }
  }
  b[o++] = 0, b[o++] = 0;
  *out = b;
  *outlen = o;
  return 0;
bad:
  free(b);
  return DDUCT_EINVAL;
}

static int compute_mac(const char *pass, const unsigned char *salt, size_t salt_len, int iter,
                       mbedtls_md_type_t md_type, const unsigned char *data, size_t len,
                       unsigned char *mac) {
  const mbedtls_md_info_t *info = mbedtls_md_info_from_type(md_type);
  unsigned char key[MBEDTLS_MD_MAX_SIZE], *bmp;
  size_t bmp_len, key_len;
  int rc;

  if (info == NULL) return DDUCT_ECORRUPT;
  key_len = mbedtls_md_get_size(info);
  rc = bmp_password(pass, &bmp, &bmp_len);
  if (rc != 0) return rc;
  rc = mbedtls_pkcs12_derivation(key, key_len, bmp, bmp_len, salt, salt_len, md_type,
                                 MBEDTLS_PKCS12_DERIVE_MAC_KEY, iter);
  if (rc == 0) rc = mbedtls_md_hmac(info, key, key_len, data, len, mac);
  mbedtls_platform_zeroize(key, sizeof(key));
  mbedtls_platform_zeroize(bmp, bmp_len);
  free(bmp);
  return rc == 0 ? 0 : DDUCT_ECRYPTO;
}

struct bufs {
  size_t cap;
  unsigned char *certs, *key, *safe, *pfx;
  unsigned char *ct_certs, *ct_key;
  size_t ct_certs_len, ct_key_len;
};

static void bufs_free(struct bufs *b) {
  if (b->key != NULL) mbedtls_platform_zeroize(b->key, b->cap);
  free(b->certs), free(b->key), free(b->safe), free(b->pfx);
  free(b->ct_certs), free(b->ct_key);
}

/* SafeContents { cert bag (with localKeyId), CA cert bags... }, encrypted. */
static int encrypt_certs(struct bufs *b, const mbedtls_x509_crt *cert, const mbedtls_x509_crt *ca,
                         const unsigned char *key_id, const char *pass, const struct pbe *pbe) {
  const mbedtls_x509_crt *v[MAX_CERTS];
  size_t n = 0, len = 0;
  unsigned char *p = b->certs + b->cap;
  int ret;

  for (; ca != NULL && ca->raw.len > 0 && n < MAX_CERTS; ca = ca->next) v[n++] = ca;
  while (n > 0) { /* back to front: the last bag first */
    ret = write_cert_bag(&p, b->certs, v[--n], NULL);
    if (ret < 0) return DDUCT_ECRYPTO;
    len += (size_t)ret;
  }
  ret = write_cert_bag(&p, b->certs, cert, key_id);
  if (ret < 0) return DDUCT_ECRYPTO;
  len += (size_t)ret;
  ret = wrap(&p, b->certs, len, SEQ);
  if (ret < 0) return DDUCT_ECRYPTO;
  len += (size_t)ret;
  return pbe_encrypt(pass, pbe, p, len, &b->ct_certs, &b->ct_certs_len);
}

static int encrypt_key(struct bufs *b, mbedtls_pk_context *key, const char *pass,
                       const struct pbe *pbe) {
  int len = write_pkcs8(key, b->key, b->cap);
  if (len < 0) return DDUCT_ECRYPTO;
  return pbe_encrypt(pass, pbe, b->key + b->cap - len, (size_t)len, &b->ct_key, &b->ct_key_len);
}

/* AuthenticatedSafe { ContentInfo encryptedData(certs), ContentInfo data(key bag) } */
static int write_auth_safe(unsigned char **p, unsigned char *start, const struct bufs *b,
                           const struct pbe *pbe_certs, const struct pbe *pbe_key,
                           const unsigned char *key_id) {
  int ret;
  size_t len = 0, mark;
  CHK(write_key_bag(p, start, pbe_key, b->ct_key, b->ct_key_len, key_id));
  CHK(wrap(p, start, len, SEQ));
  CHK(wrap(p, start, len, MBEDTLS_ASN1_OCTET_STRING));
  CHK(wrap(p, start, len, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_PKCS7_DATA)));
  CHK(wrap(p, start, len, SEQ));
  mark = len;
  CHK(mbedtls_asn1_write_raw_buffer(p, start, b->ct_certs, b->ct_certs_len));
  CHK(wrap(p, start, len - mark, IMPLICIT0));
  CHK(write_pbes2_alg(p, start, pbe_certs));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_PKCS7_DATA)));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(mbedtls_asn1_write_int(p, start, 0));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len - mark, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_PKCS7_ENCRYPTED)));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len, SEQ));
  return (int)len;
}

/* PFX { 3, ContentInfo data(auth safe), MacData { DigestInfo { sha256, mac }, salt, iter } } */
static int write_pfx(unsigned char **p, unsigned char *start, const unsigned char *safe,
                     size_t safe_len, const unsigned char *mac, const unsigned char *salt) {
  int ret;
  size_t len = 0, mark;
  CHK(mbedtls_asn1_write_int(p, start, DDUCT__PKCS12_ITERATIONS));
  CHK(mbedtls_asn1_write_octet_string(p, start, salt, SALT_LEN));
  mark = len;
  CHK(mbedtls_asn1_write_octet_string(p, start, mac, 32));
  CHK(mbedtls_asn1_write_algorithm_identifier(p, start, OID(MBEDTLS_OID_DIGEST_ALG_SHA256), 0));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(wrap(p, start, len, SEQ));
  mark = len;
  CHK(mbedtls_asn1_write_raw_buffer(p, start, safe, safe_len));
  CHK(wrap(p, start, len - mark, MBEDTLS_ASN1_OCTET_STRING));
  CHK(wrap(p, start, len - mark, EXPLICIT0));
  CHK(mbedtls_asn1_write_oid(p, start, OID(OID_PKCS7_DATA)));
  CHK(wrap(p, start, len - mark, SEQ));
  CHK(mbedtls_asn1_write_int(p, start, 3));
  CHK(wrap(p, start, len, SEQ));
  return (int)len;
}

static int random_params(struct pbe *a, struct pbe *b, unsigned char *mac_salt) {
  if (dduct__rng(NULL, (unsigned char *)a, sizeof(*a)) != 0 ||
      dduct__rng(NULL, (unsigned char *)b, sizeof(*b)) != 0 ||
      dduct__rng(NULL, mac_salt, SALT_LEN) != 0)
    return DDUCT_ECRYPTO;
  return 0;
}

static int assemble(struct bufs *b, mbedtls_pk_context *key, const mbedtls_x509_crt *cert,
                    const mbedtls_x509_crt *ca, const char *pass, unsigned char **out,
                    size_t *outlen) {
  unsigned char key_id[KEY_ID_LEN], mac_salt[SALT_LEN], mac[32], *p;
  struct pbe pbe_certs, pbe_key;
  int rc, safe_len, pfx_len;

  rc = mbedtls_md(mbedtls_md_info_from_type(MBEDTLS_MD_SHA1), cert->raw.p, cert->raw.len, key_id);
  if (rc != 0 || random_params(&pbe_certs, &pbe_key, mac_salt) != 0) return DDUCT_ECRYPTO;
  if ((rc = encrypt_certs(b, cert, ca, key_id, pass, &pbe_certs)) != 0) return rc;
  if ((rc = encrypt_key(b, key, pass, &pbe_key)) != 0) return rc;
  p = b->safe + b->cap;
  safe_len = write_auth_safe(&p, b->safe, b, &pbe_certs, &pbe_key, key_id);
  if (safe_len < 0) return DDUCT_ECRYPTO;
  rc = compute_mac(pass, mac_salt, SALT_LEN, DDUCT__PKCS12_ITERATIONS, MBEDTLS_MD_SHA256, p,
                   (size_t)safe_len, mac);
  if (rc != 0) return rc;
  {
    unsigned char *q = b->pfx + b->cap;
    pfx_len = write_pfx(&q, b->pfx, p, (size_t)safe_len, mac, mac_salt);
    if (pfx_len < 0) return DDUCT_ECRYPTO;
    *out = malloc((size_t)pfx_len);
    if (*out == NULL) return DDUCT_ENOMEM;
    memcpy(*out, q, (size_t)pfx_len);
    *outlen = (size_t)pfx_len;
  }
  return 0;
}

int dduct__pkcs12_write(mbedtls_pk_context *key, const mbedtls_x509_crt *cert,
                        const mbedtls_x509_crt *ca, const char *pass, unsigned char **out,
                        size_t *outlen) {
  struct bufs b = {0};
  size_t certs_len = 0;
  int rc;

  if (key == NULL || cert == NULL || cert->raw.len == 0 || pass == NULL || out == NULL ||
      outlen == NULL)
    return DDUCT_EINVAL;
  certs_len = cert->raw.len;
  for (const mbedtls_x509_crt *c = ca; c != NULL; c = c->next) certs_len += c->raw.len;
  /* Every level adds a few dozen bytes of headers and at most a block of padding. */
  b.cap = 2 * certs_len + 2 * KEY_DER_MAX + 4096;
  b.certs = malloc(b.cap), b.key = malloc(b.cap), b.safe = malloc(b.cap), b.pfx = malloc(b.cap);
  if (b.certs == NULL || b.key == NULL || b.safe == NULL || b.pfx == NULL)
    rc = DDUCT_ENOMEM;
  else
    rc = assemble(&b, key, cert, ca, pass, out, outlen);
  bufs_free(&b);
  return rc;
}

/* ---- reading back: enough to verify the MAC of a file we (or OpenSSL) wrote ------------- */

static int get(unsigned char **p, const unsigned char *end, size_t *len, int tag) {
  return mbedtls_asn1_get_tag(p, end, len, tag) == 0 ? 0 : DDUCT_ECORRUPT;
}

struct mac_data {
  mbedtls_md_type_t md;
  const unsigned char *mac, *salt;
  size_t mac_len, salt_len;
  int iter;
};

static int parse_mac_data(unsigned char **p, const unsigned char *end, struct mac_data *m) {
  mbedtls_asn1_buf alg, params;
  unsigned char *di_end;
  size_t len;

  if (get(p, end, &len, SEQ) != 0) return DDUCT_ECORRUPT;
  end = *p + len;
  if (get(p, end, &len, SEQ) != 0) return DDUCT_ECORRUPT;
  di_end = *p + len;
  if (mbedtls_asn1_get_alg(p, di_end, &alg, &params) != 0 ||
      mbedtls_oid_get_md_alg(&alg, &m->md) != 0)
    return DDUCT_ECORRUPT;
  if (get(p, di_end, &m->mac_len, MBEDTLS_ASN1_OCTET_STRING) != 0) return DDUCT_ECORRUPT;
  m->mac = *p;
  *p += m->mac_len;
  if (get(p, end, &m->salt_len, MBEDTLS_ASN1_OCTET_STRING) != 0) return DDUCT_ECORRUPT;
  m->salt = *p;
  *p += m->salt_len;
  m->iter = 1;
  if (*p < end && mbedtls_asn1_get_int(p, end, &m->iter) != 0) return DDUCT_ECORRUPT;
  /* A bound so a hostile file cannot pin the CPU for minutes. */
  if (m->iter < 1 || m->iter > 10000000) return DDUCT_ECORRUPT;
  return 0;
}

int dduct__pkcs12_check(const unsigned char *der, size_t len, const char *pass) {
  unsigned char *p = (unsigned char *)der, *end = p + len, *ci_end;
  unsigned char mac[MBEDTLS_MD_MAX_SIZE], diff = 0;
  const unsigned char *safe;
  size_t l, safe_len;
  struct mac_data m;
  int ver, rc;

  if (der == NULL || pass == NULL) return DDUCT_EINVAL;
  if (get(&p, end, &l, SEQ) != 0 || p + l != end) return DDUCT_ECORRUPT;
  if (mbedtls_asn1_get_int(&p, end, &ver) != 0 || ver != 3) return DDUCT_ECORRUPT;
  if (get(&p, end, &l, SEQ) != 0) return DDUCT_ECORRUPT;
  ci_end = p + l;
  if (get(&p, ci_end, &l, MBEDTLS_ASN1_OID) != 0 || l != MBEDTLS_OID_SIZE(OID_PKCS7_DATA) ||
      memcmp(p, OID_PKCS7_DATA, l) != 0)
    return DDUCT_ECORRUPT;
  p += l;
  if (get(&p, ci_end, &l, EXPLICIT0) != 0) return DDUCT_ECORRUPT;
  if (get(&p, ci_end, &safe_len, MBEDTLS_ASN1_OCTET_STRING) != 0) return DDUCT_ECORRUPT;
  safe = p;
  p += safe_len;
  if (p != ci_end || parse_mac_data(&p, end, &m) != 0) return DDUCT_ECORRUPT;
  rc = compute_mac(pass, m.salt, m.salt_len, m.iter, m.md, safe, safe_len, mac);
  if (rc != 0) return rc == DDUCT_ECRYPTO || rc == DDUCT_ECORRUPT ? DDUCT_ECORRUPT : rc;
  if (m.mac_len != mbedtls_md_get_size(mbedtls_md_info_from_type(m.md))) return DDUCT_ECORRUPT;
  for (size_t i = 0; i < m.mac_len; i++) diff |= mac[i] ^ m.mac[i];
  return diff == 0 ? 0 : DDUCT_EVERIFY;
}
