/* Fuzz target: reading the server_name of a ClientHello before mbedTLS sees it
 * (dduct__tls_hello_sni in libdduct/src/tls_hello.c), which runs on the first bytes of every
 * client of a tls_bind listener.
 *
 * Input: byte 0 picks the name buffer's size (0: 256, else 1..255), the rest is what the client
 * sent.
 *
 * Invariants: the answer is 0, DDUCT__HELLO_MORE or DDUCT__HELLO_NONE, and nothing is written
 * past the buffer; a name found is NUL-terminated inside the buffer, 1..cap-1 bytes, and appears
 * in the input; MORE only while the input is shorter than its first record (5 + its length
 * field); the answer does not depend on bytes after the first record (more bytes appended give
 * the same answer and name), nor is the input read past its end (ASan: the input is copied into
 * a buffer of exactly its size). */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "tls_hello.h"

#define CANARY 0xA5

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t cap, n;
  unsigned char *in, *more;
  char *name, again[257];
  int rc, rc2;
  if (size < 1 || size > 20000) return 0;
  cap = data[0] == 0 ? 256 : data[0];
  n = size - 1;
  in = malloc(n ? n : 1);
  memcpy(in, data + 1, n);
  name = malloc(cap + 1);
  memset(name, CANARY, cap + 1);
  rc = dduct__tls_hello_sni(in, n, name, cap);
  FUZZ_CHECK(rc == 0 || rc == DDUCT__HELLO_MORE || rc == DDUCT__HELLO_NONE, "rc %d", rc);
  FUZZ_CHECK((unsigned char)name[cap] == CANARY, "wrote past cap %zu", cap);
  if (rc == 0) {
    size_t len = strnlen(name, cap);
    FUZZ_CHECK(len > 0 && len < cap, "name of %zu bytes in a buffer of %zu", len, cap);
    FUZZ_CHECK(n >= len && memmem(in, n, name, len) != NULL, "name '%s' is not in the input",
               name);
  }
  if (rc == DDUCT__HELLO_MORE)
    FUZZ_CHECK(n < 5 || n < 5 + ((size_t)in[3] << 8 | in[4]), "MORE with a whole record of %zu",
               n);
  /* Bytes after the input change nothing once it answered. */
  if (rc != DDUCT__HELLO_MORE) {
    more = malloc(n + 64);
    memcpy(more, in, n);
    memset(more + n, 0x16, 64);
    rc2 = dduct__tls_hello_sni(more, n + 64, again, cap);
    FUZZ_CHECK(rc2 == rc && (rc != 0 || strcmp(again, name) == 0),
               "appended bytes change the answer: %d vs %d", rc, rc2);
    free(more);
  }
  free(name);
  free(in);
  return 0;
}
