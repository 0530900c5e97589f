/* Certificate issuance on mbedtls_x509write_crt. mbedTLS 2.28 has no setters for
 * subjectAltName or extendedKeyUsage, so those extensions are DER built here. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

#include "internal.h"
#include "rng.h"
#include "x509.h"

#define SERIAL_LEN 20 /* 160 bits with the top one clear: positive, at most 20 octets (RFC 5280) */
#define CRT_DER_MAX 8192
#define SAN_MAX 16384

static int set_serial(mbedtls_x509write_cert *w) {
  unsigned char b[SERIAL_LEN];
  mbedtls_mpi serial;
  int rc;
  if (dduct__rng(NULL, b, sizeof(b)) != 0) return DDUCT_ECRYPTO;
  b[0] &= 0x7f;
  b[0] |= 0x01; /* never zero, never shorter than intended by more than a few bits */
  mbedtls_mpi_init(&serial);
  rc = mbedtls_mpi_read_binary(&serial, b, sizeof(b));
  if (rc == 0) rc = mbedtls_x509write_crt_set_serial(w, &serial);
  mbedtls_mpi_free(&serial);
  return rc == 0 ? 0 : DDUCT_ECRYPTO;
}

static int format_time(time_t t, char out[16]) {
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 1950)
    return DDUCT_EINVAL;
  return strftime(out, 16, "%Y%m%d%H%M%S", &tm) == 14 ? 0 : DDUCT_EINVAL;
}

static int set_validity(mbedtls_x509write_cert *w, time_t from, time_t to) {
  char a[16], b[16];
  if (format_time(from, a) != 0 || format_time(to, b) != 0) return DDUCT_EINVAL;
  return mbedtls_x509write_crt_set_validity(w, a, b) == 0 ? 0 : DDUCT_EINVAL;
}

/* Prepend one attribute to a name list. The writer emits the list head last, so building the
 * list in certificate order reproduces that order. Freed by mbedtls_x509write_crt_free. */
static int name_add(mbedtls_asn1_named_data **head, const unsigned char *oid, size_t oid_len,
                    int tag, const unsigned char *val, size_t val_len) {
  mbedtls_asn1_named_data *n = calloc(1, sizeof(*n));
  if (n == NULL) return DDUCT_ENOMEM;
  n->oid.p = malloc(oid_len);
  n->val.p = malloc(val_len > 0 ? val_len : 1);
  if (n->oid.p == NULL || n->val.p == NULL) {
    free(n->oid.p), free(n->val.p), free(n);
    return DDUCT_ENOMEM;
  }
  n->oid.tag = MBEDTLS_ASN1_OID;
  n->oid.len = oid_len;
  memcpy(n->oid.p, oid, oid_len);
  n->val.tag = tag;
  n->val.len = val_len;
  if (val_len > 0) memcpy(n->val.p, val, val_len);
  n->next = *head;
  *head = n;
  return 0;
}

/* Copy the issuer's subject byte for byte (string types included), so chains match exactly
 * whatever tool wrote ca.crt. */
static int copy_name(mbedtls_asn1_named_data **head, const mbedtls_x509_name *name) {
  for (; name != NULL; name = name->next) {
    if (name->oid.p == NULL) continue;
    int rc = name_add(head, name->oid.p, name->oid.len, name->val.tag, name->val.p,
                      name->val.len);
    if (rc != 0) return rc;
  }
  return 0;
}

static int set_cn(mbedtls_asn1_named_data **head, const char *cn) {
  if (cn == NULL) return 0;
  return name_add(head, (const unsigned char *)MBEDTLS_OID_AT_CN,
                  MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_CN), MBEDTLS_ASN1_UTF8_STRING,
                  (const unsigned char *)cn, strlen(cn));
}

/* SEQUENCE { [2] dNSName..., [7] iPAddress... } */
static int set_san(mbedtls_x509write_cert *w, const struct dduct__cert_spec *s) {
  unsigned char *buf, *p;
  size_t len = 0;
  int ret, rc;

  if (s->ndns == 0 && s->nips == 0) return 0;
  buf = malloc(SAN_MAX);
  if (buf == NULL) return DDUCT_ENOMEM;
  p = buf + SAN_MAX;
#define ADD(f)                  \
  do {                          \
    if ((ret = (f)) < 0) goto fail; \
    len += (size_t)ret;         \
  } while (0)
  for (size_t i = s->nips; i-- > 0;) {
    ADD(mbedtls_asn1_write_raw_buffer(&p, buf, s->ips[i].b, s->ips[i].len));
    ADD(mbedtls_asn1_write_len(&p, buf, s->ips[i].len));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7));
  }
  for (size_t i = s->ndns; i-- > 0;) {
    size_t n = strlen(s->dns[i]);
    ADD(mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)s->dns[i], n));
    ADD(mbedtls_asn1_write_len(&p, buf, n));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2));
  }
  ADD(mbedtls_asn1_write_len(&p, buf, len));
  ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
#undef ADD
  /* Critical only when the subject is empty (RFC 5280 4.2.1.6). */
  rc = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                           MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                                           s->cn == NULL, p, len);
  free(buf);
  return rc == 0 ? 0 : DDUCT_ECRYPTO;
fail:
  free(buf);
  return DDUCT_ETOOBIG;
}

/* NameConstraints ::= SEQUENCE { permittedSubtrees [0] SEQUENCE OF GeneralSubtree }, a
 * GeneralSubtree being SEQUENCE { base GeneralName } (minimum 0, no maximum): dNSName [2] bases
 * and iPAddress [7] address + all-ones mask. Critical (RFC 5280 4.2.1.10). */
static int set_name_constraints(mbedtls_x509write_cert *w, const struct dduct__cert_spec *s) {
  unsigned char *buf, *p;
  size_t len = 0;
  int ret, rc;
  if (!s->name_constraints || (s->nc_ndns == 0 && s->nc_nips == 0)) return 0;
  buf = malloc(SAN_MAX);
  if (buf == NULL) return DDUCT_ENOMEM;
  p = buf + SAN_MAX;
#define ADD(f)                      \
  do {                              \
    if ((ret = (f)) < 0) goto fail; \
    len += (size_t)ret;             \
    sub += (size_t)ret;             \
  } while (0)
  for (size_t i = s->nc_nips; i-- > 0;) {
    unsigned char ipm[32];
    size_t n = s->nc_ips[i].len, sub = 0;
    memcpy(ipm, s->nc_ips[i].b, n);
    memset(ipm + n, 0xff, n);
    ADD(mbedtls_asn1_write_raw_buffer(&p, buf, ipm, 2 * n));
    ADD(mbedtls_asn1_write_len(&p, buf, 2 * n));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 7));
    ADD(mbedtls_asn1_write_len(&p, buf, sub));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  }
  for (size_t i = s->nc_ndns; i-- > 0;) {
    const char *base = s->nc_dns[i];
    size_t n, sub = 0;
    int dup = 0;
    if (base[0] == '*' && base[1] == '.') base += 2;
    for (size_t j = 0; j < i && !dup; j++) { /* the first of equal bases is written */
      const char *o = s->nc_dns[j];
      dup = strcmp(o[0] == '*' && o[1] == '.' ? o + 2 : o, base) == 0;
    }
    if (dup) continue;
    n = strlen(base);
    ADD(mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)base, n));
    ADD(mbedtls_asn1_write_len(&p, buf, n));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 2));
    ADD(mbedtls_asn1_write_len(&p, buf, sub));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  }
  {
    size_t sub = 0;
    ADD(mbedtls_asn1_write_len(&p, buf, len));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC |
                                            MBEDTLS_ASN1_CONSTRUCTED | 0));
    ADD(mbedtls_asn1_write_len(&p, buf, len));
    ADD(mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
  }
#undef ADD
  rc = mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_NAME_CONSTRAINTS,
                                           MBEDTLS_OID_SIZE(MBEDTLS_OID_NAME_CONSTRAINTS), 1, p,
                                           len);
  free(buf);
  return rc == 0 ? 0 : DDUCT_ECRYPTO;
fail:
  free(buf);
  return DDUCT_ETOOBIG;
}

/* SEQUENCE { id-kp-serverAuth | id-kp-clientAuth } */
static int set_eku(mbedtls_x509write_cert *w, enum dduct__eku eku) {
  unsigned char buf[32], *p = buf + sizeof(buf);
  const char *oid = eku == DDUCT__EKU_SERVER ? MBEDTLS_OID_SERVER_AUTH : MBEDTLS_OID_CLIENT_AUTH;
  size_t oid_len = eku == DDUCT__EKU_SERVER ? MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)
                                            : MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH);
  int a, b, c;
  if (eku == DDUCT__EKU_NONE) return 0;
  a = mbedtls_asn1_write_oid(&p, buf, oid, oid_len);
  b = mbedtls_asn1_write_len(&p, buf, (size_t)a);
  c = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  if (a < 0 || b < 0 || c < 0) return DDUCT_ECRYPTO;
  return mbedtls_x509write_crt_set_extension(w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0,
                                             p, (size_t)(a + b + c)) == 0
             ? 0
             : DDUCT_ECRYPTO;
}

static int set_usage(mbedtls_x509write_cert *w, const struct dduct__cert_spec *s) {
  unsigned ku;
  /* A CA of ours signs leaves only, never another CA: pathlen 0. */
  if (mbedtls_x509write_crt_set_basic_constraints(w, s->is_ca, s->is_ca ? 0 : -1) != 0)
    return DDUCT_ECRYPTO;
  if (s->is_ca)
    ku = MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN;
  else if (mbedtls_pk_get_type(s->subject_key) == MBEDTLS_PK_RSA)
    ku = MBEDTLS_X509_KU_DIGITAL_SIGNATURE | MBEDTLS_X509_KU_KEY_ENCIPHERMENT;
  else
    ku = MBEDTLS_X509_KU_DIGITAL_SIGNATURE;
  if (mbedtls_x509write_crt_set_key_usage(w, ku) != 0) return DDUCT_ECRYPTO;
  if (mbedtls_x509write_crt_set_subject_key_identifier(w) != 0 ||
      mbedtls_x509write_crt_set_authority_key_identifier(w) != 0)
    return DDUCT_ECRYPTO;
  return set_eku(w, s->eku);
}

static int fill(mbedtls_x509write_cert *w, const struct dduct__cert_spec *s) {
  int rc;
  mbedtls_x509write_crt_set_version(w, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(w, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(w, s->subject_key);
  mbedtls_x509write_crt_set_issuer_key(w, s->issuer_key);
  if ((rc = set_serial(w)) != 0) return rc;
  if ((rc = set_validity(w, s->not_before, s->not_after)) != 0) return rc;
  if ((rc = set_cn(&w->subject, s->cn)) != 0) return rc;
  if (s->issuer != NULL)
    rc = copy_name(&w->issuer, &s->issuer->subject);
  else
    rc = set_cn(&w->issuer, s->cn);
  if (rc != 0) return rc;
  if ((rc = set_usage(w, s)) != 0) return rc;
  if ((rc = set_name_constraints(w, s)) != 0) return rc;
  return set_san(w, s);
}

static int ext_cb(void *ctx, mbedtls_x509_crt const *crt, mbedtls_x509_buf const *oid,
                  int critical, const unsigned char *p, const unsigned char *end) {
  (void)ctx, (void)crt, (void)critical, (void)p, (void)end;
  if (oid->len == MBEDTLS_OID_SIZE(MBEDTLS_OID_NAME_CONSTRAINTS) &&
      memcmp(oid->p, MBEDTLS_OID_NAME_CONSTRAINTS, oid->len) == 0)
    return 0;
  return MBEDTLS_ERR_X509_FEATURE_UNAVAILABLE;
}

int dduct__x509_parse_der(mbedtls_x509_crt *chain, const unsigned char *der, size_t len) {
  return mbedtls_x509_crt_parse_der_with_ext_cb(chain, der, len, 1, ext_cb, NULL);
}

int dduct__x509_parse(mbedtls_x509_crt *chain, const unsigned char *buf, size_t len) {
  int n = 0;
  if (len == 0 || buf[len - 1] != '\0' || strstr((const char *)buf, "-----BEGIN") == NULL)
    return dduct__x509_parse_der(chain, buf, len);
  while (len > 1) {
    mbedtls_pem_context pem;
    size_t used = 0;
    int rc;
    mbedtls_pem_init(&pem);
    rc = mbedtls_pem_read_buffer(&pem, "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----",
                                 buf, NULL, 0, &used);
    if (rc == 0) rc = dduct__x509_parse_der(chain, pem.buf, pem.buflen);
    mbedtls_pem_free(&pem);
    if (rc == MBEDTLS_ERR_PEM_NO_HEADER_FOOTER_PRESENT) break;
    if (rc != 0) return rc;
    n++;
    buf += used;
    len -= used;
  }
  return n > 0 ? 0 : MBEDTLS_ERR_X509_CERT_UNKNOWN_FORMAT;
}

int dduct__x509_issue(const struct dduct__cert_spec *spec, mbedtls_x509_crt *out) {
  mbedtls_x509write_cert w;
  unsigned char *buf = malloc(CRT_DER_MAX + SAN_MAX);
  int rc, len;

  if (buf == NULL) return DDUCT_ENOMEM;
  mbedtls_x509write_crt_init(&w);
  rc = fill(&w, spec);
  if (rc == 0) {
    len = mbedtls_x509write_crt_der(&w, buf, CRT_DER_MAX + SAN_MAX, dduct__rng, NULL);
    if (len < 0)
      rc = DDUCT_ECRYPTO;
    else if (dduct__x509_parse_der(out, buf + CRT_DER_MAX + SAN_MAX - len, (size_t)len) != 0)
      rc = DDUCT_ECRYPTO;
  }
  mbedtls_x509write_crt_free(&w);
  free(buf);
  return rc;
}

int dduct__x509_gen_rsa(mbedtls_pk_context *pk, unsigned bits) {
  if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) != 0) return DDUCT_ECRYPTO;
  if (mbedtls_rsa_gen_key(mbedtls_pk_rsa(*pk), dduct__rng, NULL, bits, 65537) != 0)
    return DDUCT_ECRYPTO;
  return 0;
}

int dduct__x509_gen_p256(mbedtls_pk_context *pk) {
  if (mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) != 0) return DDUCT_ECRYPTO;
  if (mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk), dduct__rng, NULL) != 0)
    return DDUCT_ECRYPTO;
  return 0;
}

int dduct__x509_crt_pem(const mbedtls_x509_crt *crt, char **out, size_t *outlen) {
  size_t cap = crt->raw.len * 4 / 3 + crt->raw.len / 32 + 128, olen = 0;
  unsigned char *buf = malloc(cap);
  if (buf == NULL) return DDUCT_ENOMEM;
  if (mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                               crt->raw.p, crt->raw.len, buf, cap, &olen) != 0) {
    free(buf);
    return DDUCT_ECRYPTO;
  }
  *out = (char *)buf;
  *outlen = olen - 1; /* olen counts the NUL */
  return 0;
}

static time_t x509_time(const mbedtls_x509_time *t) {
  struct tm tm = {0};
  tm.tm_year = t->year - 1900;
  tm.tm_mon = t->mon - 1;
  tm.tm_mday = t->day;
  tm.tm_hour = t->hour;
  tm.tm_min = t->min;
  tm.tm_sec = t->sec;
  return timegm(&tm);
}

time_t dduct__x509_not_after(const mbedtls_x509_crt *crt) {
  return x509_time(&crt->valid_to);
}

time_t dduct__x509_not_before(const mbedtls_x509_crt *crt) {
  return x509_time(&crt->valid_from);
}

int dduct__x509_parse_ip(const char *s, struct dduct__ip *out) {
  static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (inet_pton(AF_INET, s, out->b) == 1) {
    out->len = 4;
    return 0;
  }
  if (inet_pton(AF_INET6, s, out->b) != 1) return DDUCT_EINVAL;
  out->len = 16;
  if (memcmp(out->b, mapped, sizeof(mapped)) == 0) {
    memmove(out->b, out->b + 12, 4);
    out->len = 4;
  }
  return 0;
}
