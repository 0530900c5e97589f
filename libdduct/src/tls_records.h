/* TLS 1.2 application-data records sealed and opened by libdduct instead of mbedTLS: the one
 * place that reads and writes mbedTLS's record state (its sequence numbers and input offsets,
 * fields of mbedtls_ssl_context that 3.x makes private). tls_records.c refuses to build against
 * any mbedTLS but the 2.28 branch it was written for. Internal.
 *
 * mbedTLS keeps the handshake, alerts, close_notify, every other record type and every suite
 * without a record cipher here; the sequence numbers stay in its context, advanced by both, so
 * either side may write or read the next record.
 *
 * A record cipher is an AEAD plus its nonce layout. To add one: define a struct
 * dduct_record_cipher and list it in `record_ciphers` in tls_records.c. Its key and fixed IV come
 * from the TLS 1.2 key block (client key, server key, client IV, server IV, no MAC keys), matched
 * by (key_len, fixed_iv_len); the suite's mbedTLS cipher type confirms it after the handshake. */
#ifndef DDUCT_TLS_RECORDS_H
#define DDUCT_TLS_RECORDS_H

#include <mbedtls/ssl.h>
#include <stddef.h>

#define DDUCT_RECORD_NONCE_LEN 12
#define DDUCT_RECORD_AAD_LEN 13 /* sequence number, type, version, plaintext length */

struct dduct_record_cipher {
  const char *name;
  mbedtls_cipher_type_t type; /* the suite's cipher in mbedTLS's terms */
  size_t key_len;             /* key bytes per direction in the key block */
  size_t fixed_iv_len;        /* IV bytes per direction in the key block */
  /* Nonce layout. 0: nonce = fixed IV xor the 64-bit sequence number, right-aligned (RFC 7905;
   * fixed_iv_len 12). 8: nonce = fixed IV (4 bytes) || 8 explicit bytes carried at the head of
   * each record's body; records written here carry the sequence number (RFC 5288). */
  size_t explicit_iv_len;
  size_t tag_len;
  size_t ctx_size; /* bytes of per-direction state (key schedule), made by init */
  int (*init)(void *ctx, const unsigned char *key); /* 0 or nonzero: cipher unusable */
  void (*seal)(const void *ctx, const unsigned char nonce[DDUCT_RECORD_NONCE_LEN],
               const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
               unsigned char *out, unsigned char *tag);
  /* 0, or nonzero when the tag does not match (out is then garbage or untouched). */
  int (*open)(const void *ctx, const unsigned char nonce[DDUCT_RECORD_NONCE_LEN],
              const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
              const unsigned char *tag, unsigned char *out);
};

extern const struct dduct_record_cipher dduct__record_chacha20_poly1305;
extern const struct dduct_record_cipher dduct__record_aes128gcm, dduct__record_aes256gcm;

/* One TLS layer's record state. Zeroed memory is the initial state. */
struct dduct_records {
  const struct dduct_record_cipher *cipher; /* set: application records are ours */
  const struct dduct_record_cipher *pending; /* keys exported for it, not yet confirmed */
  void *enc, *dec;                           /* cipher contexts (one block, enc first) */
  unsigned char enc_iv[DDUCT_RECORD_NONCE_LEN], dec_iv[DDUCT_RECORD_NONCE_LEN];
  size_t rec_max; /* plaintext per record we write */
};

/* From mbedTLS's key export callback (TLS 1.2 key block kb): keep the keys of a cipher listed
 * here, drop any earlier ones. */
void dduct__records_keys(struct dduct_records *r, int server, const unsigned char *kb,
                         size_t maclen, size_t keylen, size_t ivlen);
/* After the handshake: 1 if the negotiated suite's records are sealed and opened here (disabled:
 * never), else 0 and every key is wiped. */
int dduct__records_start(struct dduct_records *r, mbedtls_ssl_context *ssl, int disabled);
/* Wipe and free the keys. */
void dduct__records_free(struct dduct_records *r);

/* The record for the first *n bytes of len (*n <= rec_max, set here): its size on the wire. */
size_t dduct__records_sealed_size(const struct dduct_records *r, size_t len, size_t *n);
/* Seal n bytes into out (dduct__records_sealed_size bytes); 0 or an MBEDTLS_ERR_SSL_* code. */
int dduct__records_seal(struct dduct_records *r, mbedtls_ssl_context *ssl,
                        const unsigned char *data, size_t n, unsigned char *out);

/* dduct__records_open: the next record is not one to open here (mbedTLS holds part of one, it is
 * another type, empty or oversized): read it with mbedtls_ssl_read. */
#define DDUCT_RECORDS_NOT_OURS (-0x10002)
/* dduct__records_open: the next record does not fit in cap. */
#define DDUCT_RECORDS_FULL (-0x10001)
/* Open the record at the head of in[0..avail) (eof: no more bytes will come) into buf[0..cap):
 * the plaintext length with *used set to the bytes taken from in, MBEDTLS_ERR_SSL_WANT_READ,
 * DDUCT_RECORDS_FULL, DDUCT_RECORDS_NOT_OURS, or an MBEDTLS_ERR_SSL_* error (a bad tag sends
 * the fatal alert through mbedTLS first). */
int dduct__records_open(struct dduct_records *r, mbedtls_ssl_context *ssl,
                        const unsigned char *in, size_t avail, int eof, unsigned char *buf,
                        size_t cap, size_t *used);

#endif
