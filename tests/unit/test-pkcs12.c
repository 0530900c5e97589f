/* The PKCS#12 writer against OpenSSL 3: accepted by `openssl pkcs12 -info`, extraction gives
 * back the same key and certificates, a wrong password is refused (by openssl and by our MAC
 * check), for RSA and P-256 keys and for non-ASCII and empty passwords. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include "dduct.h"
#include "pkcs12.h"
#include "tap.h"
#include "x509.h"

static char dir[256], out[65536];

/* A shell command through tap_sh: its stdout+stderr land in out. */
#define run(...) tap_sh(out, sizeof(out), __VA_ARGS__)

static int save(const char *name, const void *data, size_t len) {
  char p[512];
  FILE *f;
  snprintf(p, sizeof(p), "%s/%s", dir, name);
  f = fopen(p, "wb");
  if (f == NULL) return -1;
  fwrite(data, 1, len, f);
  return fclose(f);
}

static int save_crt(const char *name, const mbedtls_x509_crt *c) {
  unsigned char buf[8192];
  size_t olen;
  if (mbedtls_pem_write_buffer("-----BEGIN CERTIFICATE-----\n", "-----END CERTIFICATE-----\n",
                               c->raw.p, c->raw.len, buf, sizeof(buf), &olen) != 0)
    return -1;
  return save(name, buf, olen - 1);
}

static int save_key(const char *name, mbedtls_pk_context *k) {
  unsigned char buf[16000];
  if (mbedtls_pk_write_key_pem(k, buf, sizeof(buf)) != 0) return -1;
  return save(name, buf, strlen((char *)buf));
}

/* A CA and a leaf issued by it, with the leaf's key of the given kind. */
struct fixture {
  mbedtls_pk_context ca_key, key;
  mbedtls_x509_crt ca, leaf;
};

static int fixture_init(struct fixture *f, int rsa) {
  time_t t = time(NULL);
  static const char *const dns[] = {"p12.test"};
  int rc;
  mbedtls_pk_init(&f->ca_key), mbedtls_pk_init(&f->key);
  mbedtls_x509_crt_init(&f->ca), mbedtls_x509_crt_init(&f->leaf);
  if ((rc = dduct__x509_gen_p256(&f->ca_key)) != 0) return rc;
  rc = rsa ? dduct__x509_gen_rsa(&f->key, 2048) : dduct__x509_gen_p256(&f->key);
  if (rc != 0) return rc;
  struct dduct__cert_spec ca = {.cn = "p12 test CA", .subject_key = &f->ca_key,
                                .issuer_key = &f->ca_key, .not_before = t - 60,
                                .not_after = t + 86400, .is_ca = 1};
  if ((rc = dduct__x509_issue(&ca, &f->ca)) != 0) return rc;
  struct dduct__cert_spec leaf = {.cn = "p12.test", .subject_key = &f->key,
                                  .issuer_key = &f->ca_key, .issuer = &f->ca,
                                  .not_before = t - 60, .not_after = t + 86400,
                                  .eku = DDUCT__EKU_SERVER, .dns = dns, .ndns = 1};
  return dduct__x509_issue(&leaf, &f->leaf);
}

static void fixture_free(struct fixture *f) {
  mbedtls_pk_free(&f->ca_key), mbedtls_pk_free(&f->key);
  mbedtls_x509_crt_free(&f->ca), mbedtls_x509_crt_free(&f->leaf);
}

static void round_trip(struct fixture *f, const char *kind, const char *pass) {
  unsigned char *der = NULL;
  size_t len = 0;
  char what[256];

#define SAY(...) (snprintf(what, sizeof(what), __VA_ARGS__), what)
  CHECK_EQ_INT(dduct__pkcs12_write(&f->key, &f->leaf, &f->ca, pass, &der, &len), 0,
               SAY("%s key, password '%s': a PFX is written", kind, pass));
  if (der == NULL) return;
  save("x.p12", der, len);
  save_crt("leaf.pem", &f->leaf);
  save_crt("ca.pem", &f->ca);
  save_key("key.pem", &f->key);

  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin 'pass:%s' -info -noout", dir, pass) ==
            0 && strstr(out, "MAC: sha256, Iteration 2048") &&
            strstr(out, "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 2048, PRF "
                        "hmacWithSHA256") &&
            strstr(out, "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC"),
        SAY("%s key, password '%s': openssl pkcs12 -info accepts it", kind, pass));
  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin 'pass:%s' -nodes -nocerts | "
            "openssl pkey -out k1.der -outform DER && "
            "openssl pkey -in key.pem -out k2.der -outform DER && cmp k1.der k2.der",
            dir, pass) == 0,
        SAY("%s key, password '%s': extraction gives back the same private key", kind, pass));
  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin 'pass:%s' -nokeys -clcerts | "
            "openssl x509 -outform DER > c1.der && "
            "openssl x509 -in leaf.pem -outform DER > c2.der && cmp c1.der c2.der",
            dir, pass) == 0,
        SAY("%s key, password '%s': the client certificate is the leaf", kind, pass));
  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin 'pass:%s' -nokeys -cacerts | "
            "openssl x509 -outform DER > c1.der && "
            "openssl x509 -in ca.pem -outform DER > c2.der && cmp c1.der c2.der",
            dir, pass) == 0,
        SAY("%s key, password '%s': the CA certificate is included", kind, pass));
  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin 'pass:%s' -nodes -clcerts | "
            "grep -c localKeyID",
            dir, pass) == 0 && atoi(out) == 2,
        SAY("%s key, password '%s': localKeyID links the key and the leaf", kind, pass));
  CHECK(run("cd '%s' && openssl pkcs12 -in x.p12 -passin pass:wr0ng -info -noout", dir) != 0 &&
            strstr(out, "Mac verify error"),
        SAY("%s key: openssl refuses a wrong password", kind));
  CHECK_EQ_INT(dduct__pkcs12_check(der, len, pass), 0,
               SAY("%s key, password '%s': our MAC check accepts it", kind, pass));
  CHECK_EQ_INT(dduct__pkcs12_check(der, len, "wr0ng"), DDUCT_EVERIFY,
               SAY("%s key: our MAC check refuses a wrong password", kind));
  der[len / 2] ^= 0x01;
  CHECK(dduct__pkcs12_check(der, len, pass) < 0,
        SAY("%s key: a flipped bit fails our check", kind));
  CHECK_EQ_INT(dduct__pkcs12_check(der, len / 2, pass), DDUCT_ECORRUPT,
               SAY("%s key: a truncated file is corrupt", kind));
  free(der);
#undef SAY
}

int main(void) {
  struct fixture rsa, ec;
  unsigned char *der = NULL;
  size_t len;

  snprintf(dir, sizeof(dir), "/tmp/dduct-test-pkcs12-XXXXXX");
  if (mkdtemp(dir) == NULL) return 1;

  CHECK_EQ_INT(fixture_init(&ec, 0), 0, "a P-256 fixture is issued");
  CHECK_EQ_INT(fixture_init(&rsa, 1), 0, "an RSA-2048 fixture is issued");
  round_trip(&rsa, "RSA", "dduct");
  round_trip(&ec, "P-256", "dduct");
  round_trip(&rsa, "RSA", "p\xc3\xa4ss w\xc3\xb6rd \xe2\x82\xac");
  round_trip(&ec, "P-256", "");

  CHECK_EQ_INT(dduct__pkcs12_write(&ec.key, &ec.leaf, NULL, "x", &der, &len), 0,
               "a PFX without CA certificates can be written");
  save("y.p12", der, len);
  CHECK(run("openssl pkcs12 -in '%s/y.p12' -passin pass:x -nokeys | grep -c 'BEGIN CERT'", dir) ==
            0 && atoi(out) == 1,
        "it holds the one certificate");
  free(der);
  CHECK_EQ_INT(dduct__pkcs12_write(&ec.key, &ec.leaf, NULL, "\xff", &der, &len), DDUCT_EINVAL,
               "a password that is not UTF-8 is refused");
  CHECK_EQ_INT(dduct__pkcs12_check((const unsigned char *)"\x30\x03\x02\x01\x03", 5, "x"),
               DDUCT_ECORRUPT, "a bare PFX header is corrupt");

  fixture_free(&rsa);
  fixture_free(&ec);
  run("rm -rf '%s'", dir);
  return tap_done();
}
