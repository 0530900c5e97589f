/* TLS as a stream layer: mbedTLS driven over memory buffers on top of any other stream (TCP or
 * another TLS layer), never on a socket, so TLS-in-TLS is just two layers.
 *
 * Server side: one shared configuration per proxy whose SNI callback picks the identity:
 * - a layer created with forced_host (an intercepted CONNECT) always presents the CA's leaf for
 *   exactly that host; the client's SNI is never trusted over the CONNECT line;
 * - otherwise (the tls_bind listener) it presents server.crt, unless the client's SNI names a
 *   host, in which case (transparent endpoint) a leaf for that host; the SNI is read from the
 *   buffered ClientHello before mbedTLS starts (tls_hello.h), so that leaf is minted off the loop.
 * Cipher suites, both sides: ECDHE with ChaCha20-Poly1305 or AES-GCM only (records written by
 * tls_records.c). To clients ChaCha20-Poly1305 first, then AES-GCM (our order decides); to
 * origins in mbedTLS's default order (the origin's order decides, if it has one).
 *
 * Client side: SNI, ALPN http/1.1, verification against the system bundle plus an optional extra
 * CA file, hostname check; an insecure configuration skips verification (logged loudly once).
 *
 * Writes are only allowed once the handshake callback reported success; the layer reports its
 * handshake through dduct__tls_on_handshake and later failures as read errors.
 *
 * Bulk encryption runs on libuv's thread pool: a write of 32 KiB or more on a layer right above
 * TCP with an AEAD suite is copied and encrypted by a worker (one worker per layer at a time,
 * going on by itself while writes wait), so the loop keeps doing I/O and several connections
 * encrypt on both cores. Queued writes count in dduct__stream_queued() (what a worker has taken,
 * at most 128 KiB, does not); their callbacks fire when the ciphertext went down, as before. A
 * failed worker is reported as a read error. Plaintext is read in batches
 * of up to 64 KiB (several records per read callback) so forwarded bodies arrive in writes large
 * enough to take that path. See tls_offload.c.
 *
 * Queries (stream.h) a TLS layer answers: DDUCT_STREAM_TLS_SNI, DDUCT_STREAM_TLS_ERROR, and
 * DDUCT_STREAM_CARRY_RECORDS (what the peer writes into the layer is itself TLS, a blind tunnel
 * through a TLS listener: the layer cuts its records where the carried ones end, see tls.c,
 * stacked_record, until the bytes stop looking like TLS records).
 */
#ifndef DDUCT_TLS_H
#define DDUCT_TLS_H

#include "dduct.h"
#include "stream.h"

struct dduct_tls_server_conf;
struct dduct_tls_client_conf;

int dduct__tls_server_conf_new(struct dduct_ca *ca, struct dduct_tls_server_conf **out, char *err,
                               size_t errlen);
void dduct__tls_server_conf_free(struct dduct_tls_server_conf *c);
/* c issues and reads session tickets with from's keys (from outlives c): a ticket one event loop
 * issued resumes on another. mbedTLS locks the ticket context (MBEDTLS_THREADING_C). */
void dduct__tls_server_conf_share_tickets(struct dduct_tls_server_conf *c,
                                          struct dduct_tls_server_conf *from);

/* system_ca_file may be NULL or missing (then only extra_ca_file is trusted); a given
 * extra_ca_file that cannot be loaded is an error. quiet: no warnings (a further event loop's
 * copy of a configuration the first loop already warned about). */
int dduct__tls_client_conf_new(const char *system_ca_file, const char *extra_ca_file, int insecure,
                               int quiet, struct dduct_tls_client_conf **out, char *err,
                               size_t errlen);
void dduct__tls_client_conf_free(struct dduct_tls_client_conf *c);
/* Handshakes of the layers made from a conf: out[0] failed, out[1] completed (metrics). */
void dduct__tls_server_handshakes(const struct dduct_tls_server_conf *c, uint64_t out[2]);
void dduct__tls_client_handshakes(const struct dduct_tls_client_conf *c, uint64_t out[2]);

/* Put a TLS server layer on top of lower (which it then owns). pre[0..prelen) are bytes already
 * read from lower (a ClientHello that arrived right behind the CONNECT head); they are copied.
 * forced_host: see above (copied; may be NULL). Returns NULL on allocation failure (lower is
 * then still the caller's). */
struct dduct_stream *dduct__tls_server_new(struct dduct_tls_server_conf *c,
                                           struct dduct_stream *lower, const char *forced_host,
                                           const char *pre, size_t prelen);

/* Put a TLS client layer on top of lower for host (SNI and the name verified). */
struct dduct_stream *dduct__tls_client_new(struct dduct_tls_client_conf *c,
                                           struct dduct_stream *lower, const char *host);

/* status 0: handshake done (the peer is verified for a client); else DDUCT_ETLS/DDUCT_EVERIFY or
 * a transport error, with the stream's DDUCT_STREAM_TLS_ERROR query saying why. Called once, unless the stream
 * is closed first. The handshake runs while the stream is reading. */
typedef void (*dduct_tls_handshake_cb)(struct dduct_stream *s, int status, void *arg);
/* s must be a layer dduct__tls_client_new or dduct__tls_server_new made. */
void dduct__tls_on_handshake(struct dduct_stream *s, dduct_tls_handshake_cb cb, void *arg);

#endif
