/* The server_name a TLS client asks for, read from the first bytes it sent, before mbedTLS sees
 * them: mbedTLS 2.28 calls its SNI callback in the middle of the handshake and cannot wait
 * there, so a tls_bind listener reads the name itself, gets the name's leaf off the loop, and
 * only then lets mbedTLS start. Internal; not installed. */
#ifndef DDUCT_TLS_HELLO_H
#define DDUCT_TLS_HELLO_H

#include <stddef.h>

#define DDUCT__HELLO_MORE 1 /* the first record is not whole yet: call again with more bytes */
#define DDUCT__HELLO_NONE 2 /* not a ClientHello read here (SSLv2 form, split over records,
                             * malformed) or no host_name in it: mbedTLS decides as without */

/* p[0..len): the bytes received so far. If they start with a whole TLS record holding a whole
 * ClientHello whose server_name extension has a host_name entry (the first one), copies it
 * (1..cap-1 bytes, no NUL inside) to name, NUL-terminated, and returns 0. Reads nothing past
 * p + len; needs at most 5 + 16384 bytes to answer. */
int dduct__tls_hello_sni(const unsigned char *p, size_t len, char *name, size_t cap);

#endif
