/* The diagnostic environment switches (diag.h). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"

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
