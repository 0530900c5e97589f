/* Reading a ClientHello's server_name before mbedTLS (tls_hello.c): the name from well-formed
 * hellos built here field by field, "more bytes" for every cut of the first record, and "mbedTLS
 * decides" for the forms not read here (no SNI, no extensions, split over records, SSLv2 form,
 * a name that does not fit, a NUL in the name). */
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "tls_hello.h"

static unsigned char msg[4096];
static size_t len;

static void put(const void *p, size_t n) {
  memcpy(msg + len, p, n);
  len += n;
}
static void u8(unsigned v) {
  msg[len++] = (unsigned char)v;
}
static void u16(unsigned v) {
  u8(v >> 8), u8(v & 255);
}

/* One record holding one ClientHello; sni NULL: no server_name; exts 0: no extensions at all. */
static void hello(const char *sni, int exts) {
  size_t rec, hs, ext;
  unsigned char random[32] = {7};
  len = 0;
  u8(22), u16(0x0301), rec = len, u16(0);
  u8(1), hs = len, u8(0), u16(0);
  u16(0x0303), put(random, 32);
  u8(32), put(random, 32);                /* session id */
  u16(4), u16(0xc02b), u16(0xcca9);      /* cipher suites */
  u8(1), u8(0);                           /* compression: null */
  if (exts) {
    ext = len, u16(0);
    u16(10), u16(4), u16(2), u16(29);     /* supported_groups: x25519 */
    if (sni != NULL) {
      size_t n = strlen(sni);
      u16(0), u16((unsigned)(n + 5)), u16((unsigned)(n + 3)), u8(0), u16((unsigned)n), put(sni, n);
    }
    u16(0x17), u16(0);                    /* extended_master_secret */
    msg[ext] = (unsigned char)((len - ext - 2) >> 8), msg[ext + 1] = (unsigned char)(len - ext - 2);
  }
  msg[rec] = (unsigned char)((len - rec - 2) >> 8), msg[rec + 1] = (unsigned char)(len - rec - 2);
  msg[hs + 1] = (unsigned char)((len - hs - 3) >> 8), msg[hs + 2] = (unsigned char)(len - hs - 3);
}

int main(void) {
  char name[256];
  int cuts_ok = 1;

  hello("Registry.Example", 1);
  CHECK(dduct__tls_hello_sni(msg, len, name, sizeof(name)) == 0 &&
            strcmp(name, "Registry.Example") == 0,
        "the host_name of a ClientHello, as sent");
  for (size_t n = 0; n < len; n++)
    if (dduct__tls_hello_sni(msg, n, name, sizeof(name)) != DDUCT__HELLO_MORE) cuts_ok = 0;
  CHECK(cuts_ok, "every cut of the first record asks for more bytes");
  msg[len++] = 23; /* the next record's first byte */
  CHECK(dduct__tls_hello_sni(msg, len, name, sizeof(name)) == 0,
        "bytes after the record change nothing");
  hello("Registry.Example", 1);
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, 16), DDUCT__HELLO_NONE,
               "a name that does not fit the buffer: mbedTLS decides");
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, 17), 0, "one that just fits is read");
  hello(NULL, 1);
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "no server_name: mbedTLS decides");
  hello(NULL, 0);
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "no extensions at all: mbedTLS decides");
  hello("ab", 1);
  msg[len - 6] = '\0'; /* the name's first byte (the 4-byte last extension follows "ab") */
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "a NUL inside the name: mbedTLS decides");
  hello("split.test", 1);
  msg[3] = 0, msg[4] = 40; /* the record ends inside the hello: the rest would be in the next */
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "a ClientHello split over records: mbedTLS decides");
  hello("x.test", 1);
  msg[0] = 23;
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "not a handshake record: mbedTLS decides");
  {
    static const unsigned char v2[] = {0x80, 0x2e, 0x01, 0x03, 0x01, 0, 0x15, 0, 0, 0, 0x10};
    CHECK_EQ_INT(dduct__tls_hello_sni(v2, sizeof(v2), name, sizeof(name)), DDUCT__HELLO_NONE,
                 "an SSLv2-form hello: mbedTLS decides");
  }
  hello("x.test", 1);
  msg[3] = 0x40, msg[4] = 0x01; /* 16385: longer than any TLS record */
  CHECK_EQ_INT(dduct__tls_hello_sni(msg, len, name, sizeof(name)), DDUCT__HELLO_NONE,
               "a record length over 2^14: mbedTLS decides (nothing waits for it)");
  return tap_done();
}
