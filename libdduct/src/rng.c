/* The process-wide CTR_DRBG. One generator for everything (key generation, serials, salts, TLS
 * handshakes): seeding costs an entropy read, and mbedTLS's threading layer locks the DRBG
 * around each call, so sharing it across loop threads is safe. */
#include <pthread.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>

#include "internal.h"
#include "rng.h"

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int seed_rc; /* written once inside pthread_once, read after it */

static const unsigned char personalisation[] = "libdduct rng";

static void seed_once(void) {
  mbedtls_entropy_init(&entropy);
  mbedtls_ctr_drbg_init(&drbg);
  /* Prediction resistance off: reseeding on the default interval is plenty for our uses. */
  seed_rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, personalisation,
                                  sizeof(personalisation) - 1);
}

int dduct__rng_init(void) {
  if (pthread_once(&once, seed_once) != 0) return DDUCT_ECRYPTO;
  return seed_rc == 0 ? 0 : DDUCT_ECRYPTO;
}

int dduct__rng(void *unused, unsigned char *out, size_t len) {
  int rc = dduct__rng_init();
  (void)unused;
  if (rc != 0) return MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
  /* The DRBG caps one request; callers (RSA prime search, salts) may ask for more. */
  while (len > 0) {
    size_t n = DDUCT_MIN(len, (size_t)MBEDTLS_CTR_DRBG_MAX_REQUEST);
    rc = mbedtls_ctr_drbg_random(&drbg, out, n);
    if (rc != 0) return rc;
    out += n;
    len -= n;
  }
  return 0;
}
