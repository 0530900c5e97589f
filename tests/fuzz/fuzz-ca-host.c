/* Fuzz target: the CA's host normalisation (dduct__ca_host_normalise in libdduct/src/ca.c),
 * which sees the host of every intercepted CONNECT and picks the leaf certificate for it.
 *
 * Input: byte 0 picks the output buffer size (0: 256, else 1..255), the rest is the host (a
 * C string: it stops at the first NUL, as the CONNECT authority does).
 *
 * Invariants: the answer is 0 or DDUCT_EINVAL, and nothing is written past outlen; a normalised
 * host is NUL-terminated, non-empty, at most 253 bytes, has no upper case, no brackets, no
 * trailing dot, and is either an IP literal in its canonical text form (IPv4-mapped IPv6 as
 * IPv4) or a DNS name of [a-z0-9_-] labels of 1..63 bytes; normalising it again gives itself;
 * the input's letter case does not change the result. */
#include <arpa/inet.h>
#include <string.h>

#include "ca.h"
#include "fuzz.h"
#include "internal.h"

#define CANARY 0xA5

static void check_dns(const char *s) {
  size_t label = 0;
  for (const char *p = s; *p != '\0'; p++) {
    if (*p == '.') {
      FUZZ_CHECK(label > 0, "empty label in '%s'", s);
      label = 0;
      continue;
    }
    FUZZ_CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_',
               "byte 0x%02x in '%s'", (unsigned char)*p, s);
    FUZZ_CHECK(++label <= 63, "label over 63 in '%s'", s);
  }
  FUZZ_CHECK(label > 0, "'%s' ends with an empty label", s);
}

/* An IP literal must come out exactly as inet_ntop writes it. */
static int check_ip(const char *s) {
  unsigned char b[16];
  char canon[INET6_ADDRSTRLEN];
  int af = strchr(s, ':') != NULL ? AF_INET6 : AF_INET;
  if (inet_pton(af, s, b) != 1) return 0;
  FUZZ_CHECK(inet_ntop(af, b, canon, sizeof(canon)) != NULL && strcmp(canon, s) == 0,
             "IP '%s' is not canonical ('%s')", s, canon);
  if (af == AF_INET6) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    FUZZ_CHECK(memcmp(b, mapped, 12) != 0, "IPv4-mapped '%s' not folded to IPv4", s);
  }
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  dduct_log_set(DDUCT_LOG_OFF, NULL, NULL);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t outlen, n;
  char *host, *out, *upper, again[256];
  int rc;
  if (size < 1 || size > 1024) return 0;
  outlen = data[0] == 0 ? 256 : data[0];
  n = size - 1;
  host = malloc(n + 1);
  memcpy(host, data + 1, n);
  host[n] = '\0';
  /* Exactly outlen bytes plus a guard byte we own: ASan catches writes further out. */
  out = malloc(outlen + 1);
  memset(out, CANARY, outlen + 1);
  rc = dduct__ca_host_normalise(host, out, outlen);
  FUZZ_CHECK(rc == 0 || rc == DDUCT_EINVAL, "rc %d", rc);
  FUZZ_CHECK((unsigned char)out[outlen] == CANARY, "wrote past outlen %zu", outlen);
  if (rc == 0) {
    size_t len = strnlen(out, outlen);
    FUZZ_CHECK(len < outlen, "result not NUL-terminated within %zu", outlen);
    FUZZ_CHECK(len > 0 && len <= 253, "result of %zu bytes", len);
    FUZZ_CHECK(strpbrk(out, "ABCDEFGHIJKLMNOPQRSTUVWXYZ[]") == NULL, "'%s' keeps upper case or "
               "brackets", out);
    FUZZ_CHECK(out[len - 1] != '.', "'%s' keeps a trailing dot", out);
    if (!check_ip(out)) check_dns(out);
    /* Idempotent. */
    FUZZ_CHECK(dduct__ca_host_normalise(out, again, sizeof(again)) == 0 && strcmp(again, out) == 0,
               "'%s' normalises again to '%s'", out, again);
  }
  /* Case-insensitive: the upper-cased host gives the same answer (checked with a full buffer). */
  upper = malloc(n + 1);
  for (size_t i = 0; i <= n; i++)
    upper[i] = (char)(host[i] >= 'a' && host[i] <= 'z' ? host[i] - 'a' + 'A' : host[i]);
  if (outlen == 256) {
    int rc2 = dduct__ca_host_normalise(upper, again, sizeof(again));
    FUZZ_CHECK(rc2 == rc && (rc != 0 || strcmp(again, out) == 0),
               "case changes the answer: %d '%s' vs %d '%s'", rc, rc == 0 ? out : "", rc2,
               rc2 == 0 ? again : "");
  }
  free(upper);
  free(out);
  free(host);
  return 0;
}
