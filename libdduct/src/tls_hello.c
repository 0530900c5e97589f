/* Reading the server_name of a ClientHello (RFC 5246 7.4.1.2, RFC 6066 3). See tls_hello.h. */
#include <string.h>

#include "tls_hello.h"

#define RECORD_MAX 16384 /* TLSPlaintext.length at most 2^14 */

/* A bounded reader: every take checks what is left first. */
struct rd {
  const unsigned char *p, *end;
};

static int take(struct rd *r, size_t n, const unsigned char **out) {
  if ((size_t)(r->end - r->p) < n) return -1;
  if (out != NULL) *out = r->p;
  r->p += n;
  return 0;
}

static int u8(struct rd *r, size_t *v) {
  const unsigned char *b;
  if (take(r, 1, &b) != 0) return -1;
  *v = b[0];
  return 0;
}

static int u16(struct rd *r, size_t *v) {
  const unsigned char *b;
  if (take(r, 2, &b) != 0) return -1;
  *v = (size_t)b[0] << 8 | b[1];
  return 0;
}

/* A sub-reader over the next n bytes (a vector of length n), which r skips. */
static int sub(struct rd *r, size_t n, struct rd *s) {
  const unsigned char *b;
  if (take(r, n, &b) != 0) return -1;
  s->p = b;
  s->end = b + n;
  return 0;
}

/* ServerNameList: the first host_name entry. */
static int host_name(struct rd *ext, char *name, size_t cap) {
  struct rd list;
  size_t n;
  if (u16(ext, &n) != 0 || sub(ext, n, &list) != 0) return DDUCT__HELLO_NONE;
  while (list.p < list.end) {
    size_t type, len;
    const unsigned char *b;
    if (u8(&list, &type) != 0 || u16(&list, &len) != 0 || take(&list, len, &b) != 0)
      return DDUCT__HELLO_NONE;
    if (type != 0) continue; /* host_name is the only NameType defined */
    if (len == 0 || len >= cap || memchr(b, '\0', len) != NULL) return DDUCT__HELLO_NONE;
    memcpy(name, b, len);
    name[len] = '\0';
    return 0;
  }
  return DDUCT__HELLO_NONE;
}

int dduct__tls_hello_sni(const unsigned char *p, size_t len, char *name, size_t cap) {
  struct rd r = {p, p + len}, hello, exts;
  size_t rlen, hlen, n;
  const unsigned char *h;
  if (len < 5) return DDUCT__HELLO_MORE;
  /* ContentType handshake, a 3.x record version. */
  if (p[0] != 22 || p[1] != 3) return DDUCT__HELLO_NONE;
  rlen = (size_t)p[3] << 8 | p[4];
  if (rlen < 4 || rlen > RECORD_MAX) return DDUCT__HELLO_NONE;
  if (len - 5 < rlen) return DDUCT__HELLO_MORE;
  r.p = p + 5;
  r.end = r.p + rlen;
  /* HandshakeType client_hello, then a body that must fit in this record (one split over several
   * records is left to mbedTLS). */
  if (take(&r, 4, &h) != 0 || h[0] != 1) return DDUCT__HELLO_NONE;
  hlen = (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (sub(&r, hlen, &hello) != 0) return DDUCT__HELLO_NONE;
  /* client_version, random, session_id<0..32>, cipher_suites<2..2^16-2>,
   * compression_methods<1..2^8-1>, then extensions<0..2^16-1> if any bytes are left. */
  if (take(&hello, 2 + 32, NULL) != 0) return DDUCT__HELLO_NONE;
  if (u8(&hello, &n) != 0 || n > 32 || take(&hello, n, NULL) != 0) return DDUCT__HELLO_NONE;
  if (u16(&hello, &n) != 0 || take(&hello, n, NULL) != 0) return DDUCT__HELLO_NONE;
  if (u8(&hello, &n) != 0 || take(&hello, n, NULL) != 0) return DDUCT__HELLO_NONE;
  if (hello.p == hello.end) return DDUCT__HELLO_NONE; /* no extensions */
  if (u16(&hello, &n) != 0 || sub(&hello, n, &exts) != 0) return DDUCT__HELLO_NONE;
  while (exts.p < exts.end) {
    size_t type, elen;
    struct rd ext;
    if (u16(&exts, &type) != 0 || u16(&exts, &elen) != 0 || sub(&exts, elen, &ext) != 0)
      return DDUCT__HELLO_NONE;
    if (type == 0) return host_name(&ext, name, cap); /* server_name */
  }
  return DDUCT__HELLO_NONE;
}
