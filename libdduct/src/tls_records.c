/* Records sealed and opened here (tls_records.h): why and how.
 * Debian's mbedTLS does ChaCha20 and Poly1305 in portable C (~350-440 MB/s per core here) and
 * AES-GCM with lookup tables (~250-330 MB/s), which made the cipher most of dduct's CPU per GiB.
 * With a suite that has a record cipher here (TLS 1.2 only: ChaCha20-Poly1305, and AES-128-GCM
 * and AES-256-GCM where aesgcm.c has an implementation for the CPU, i.e. AES-NI), application-data records are sealed and opened with libdduct's own AEAD and mbedTLS
 * keeps everything else. The keys come from mbedTLS's key export callback; the sequence numbers
 * (cur_out_ctr, in_ctr) stay in mbedTLS's context. A record is opened here only when mbedTLS
 * holds no part of one (in_left, in_offt, in_msglen empty, no kept message) and it is a whole
 * application-data record in the caller's input; anything else goes to mbedTLS. */
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/version.h>
#include <stdlib.h>
#include <string.h>

#include "aesgcm.h"
#include "chachapoly.h"
#include "internal.h"
#include "tls_records.h"

/* Every field read or written below is mbedtls_ssl_context's as laid out in 2.28 (3.x made them
 * private and moved them): another version needs this file reviewed, not just rebuilt. */
#if MBEDTLS_VERSION_NUMBER < 0x021C0000 || MBEDTLS_VERSION_NUMBER >= 0x021D0000
#error "tls_records.c touches mbedTLS 2.28's record state: review it for this mbedTLS version"
#endif

#define HDR 5 /* type, version (2), length (2) */

/* ---- the record ciphers ---------------------------------------------------------------- */

static int chachapoly_init(void *ctx, const unsigned char *key) {
  memcpy(ctx, key, 32);
  return 0;
}

static void chachapoly_seal(const void *ctx, const unsigned char nonce[12],
                            const unsigned char *aad, size_t aad_len, const unsigned char *in,
                            size_t len, unsigned char *out, unsigned char *tag) {
  dduct__chachapoly_seal(ctx, nonce, aad, aad_len, in, len, out, tag);
}

static int chachapoly_open(const void *ctx, const unsigned char nonce[12],
                           const unsigned char *aad, size_t aad_len, const unsigned char *in,
                           size_t len, const unsigned char *tag, unsigned char *out) {
  return dduct__chachapoly_open(ctx, nonce, aad, aad_len, in, len, tag, out);
}

const struct dduct_record_cipher dduct__record_chacha20_poly1305 = {
    .name = "ChaCha20-Poly1305",
    .type = MBEDTLS_CIPHER_CHACHA20_POLY1305,
    .key_len = 32,
    .fixed_iv_len = 12,
    .explicit_iv_len = 0,
    .tag_len = 16,
    .ctx_size = 32,
    .init = chachapoly_init,
    .seal = chachapoly_seal,
    .open = chachapoly_open,
};

/* AES-GCM (RFC 5288): the key block's 4-byte fixed IV is the nonce's implicit salt, the other 8
 * bytes travel in each record. Without AES-NI (or with DDUCT_AESGCM=off) init fails and mbedTLS
 * keeps the records. */
static int aes128gcm_init(void *ctx, const unsigned char *key) {
  return dduct__aesgcm_init(ctx, key, 16);
}

static int aes256gcm_init(void *ctx, const unsigned char *key) {
  return dduct__aesgcm_init(ctx, key, 32);
}

static void aesgcm_seal(const void *ctx, const unsigned char nonce[12], const unsigned char *aad,
                        size_t aad_len, const unsigned char *in, size_t len, unsigned char *out,
                        unsigned char *tag) {
  (void)dduct__aesgcm_seal(ctx, nonce, 12, aad, aad_len, in, len, out, tag); /* cannot fail */
}

static int aesgcm_open(const void *ctx, const unsigned char nonce[12], const unsigned char *aad,
                       size_t aad_len, const unsigned char *in, size_t len,
                       const unsigned char *tag, unsigned char *out) {
  return dduct__aesgcm_open(ctx, nonce, 12, aad, aad_len, in, len, tag, 16, out);
}

const struct dduct_record_cipher dduct__record_aes128gcm = {
    .name = "AES-128-GCM",
    .type = MBEDTLS_CIPHER_AES_128_GCM,
    .key_len = 16,
    .fixed_iv_len = 4,
    .explicit_iv_len = 8,
    .tag_len = 16,
    .ctx_size = sizeof(struct dduct__aesgcm),
    .init = aes128gcm_init,
    .seal = aesgcm_seal,
    .open = aesgcm_open,
};

const struct dduct_record_cipher dduct__record_aes256gcm = {
    .name = "AES-256-GCM",
    .type = MBEDTLS_CIPHER_AES_256_GCM,
    .key_len = 32,
    .fixed_iv_len = 4,
    .explicit_iv_len = 8,
    .tag_len = 16,
    .ctx_size = sizeof(struct dduct__aesgcm),
    .init = aes256gcm_init,
    .seal = aesgcm_seal,
    .open = aesgcm_open,
};

/* The ciphers records may use, matched by their key block shape (AES-CCM, ARIA-GCM and
 * Camellia-GCM share the GCM shapes: the suite's cipher type, checked after the handshake, sends
 * those back to mbedTLS). */
static const struct dduct_record_cipher *const record_ciphers[] = {
    &dduct__record_chacha20_poly1305,
    &dduct__record_aes128gcm,
    &dduct__record_aes256gcm,
};

/* ---- keys ------------------------------------------------------------------------------ */

static size_t ctx_span(const struct dduct_record_cipher *c) {
  return (c->ctx_size + 63) & ~(size_t)63;
}

void dduct__records_free(struct dduct_records *r) {
  const struct dduct_record_cipher *c = r->cipher != NULL ? r->cipher : r->pending;
  if (r->enc != NULL) {
    mbedtls_platform_zeroize(r->enc, 2 * ctx_span(c));
    free(r->enc);
  }
  mbedtls_platform_zeroize(r->enc_iv, sizeof(r->enc_iv));
  mbedtls_platform_zeroize(r->dec_iv, sizeof(r->dec_iv));
  r->enc = r->dec = NULL;
  r->cipher = r->pending = NULL;
}

void dduct__records_keys(struct dduct_records *r, int server, const unsigned char *kb,
                         size_t maclen, size_t keylen, size_t ivlen) {
  const struct dduct_record_cipher *c = NULL;
  const unsigned char *ck = kb, *sk = kb + keylen, *civ = kb + 2 * keylen, *siv = civ + ivlen;
  dduct__records_free(r);
  if (maclen != 0) return; /* not an AEAD suite */
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(record_ciphers) && c == NULL; i++)
    if (record_ciphers[i]->key_len == keylen && record_ciphers[i]->fixed_iv_len == ivlen)
      c = record_ciphers[i];
  if (c == NULL || ivlen > DDUCT_RECORD_NONCE_LEN) return;
  if ((r->enc = aligned_alloc(64, 2 * ctx_span(c))) == NULL) return;
  r->dec = (char *)r->enc + ctx_span(c);
  r->pending = c;
  if (c->init(r->enc, server ? sk : ck) != 0 || c->init(r->dec, server ? ck : sk) != 0) {
    dduct__records_free(r);
    return;
  }
  memcpy(r->enc_iv, server ? siv : civ, ivlen);
  memcpy(r->dec_iv, server ? civ : siv, ivlen);
}

int dduct__records_start(struct dduct_records *r, mbedtls_ssl_context *ssl, int disabled) {
  const mbedtls_ssl_ciphersuite_t *cs =
      mbedtls_ssl_ciphersuite_from_id(mbedtls_ssl_get_ciphersuite_id(mbedtls_ssl_get_ciphersuite(ssl)));
  int max = mbedtls_ssl_get_max_out_record_payload(ssl);
  const struct dduct_record_cipher *c = r->pending;
  if (c == NULL || disabled || cs == NULL || cs->cipher != c->type || ssl->major_ver != 3 ||
      ssl->minor_ver != 3 || max <= 0) {
    dduct__records_free(r);
    return 0;
  }
  r->cipher = c;
  r->pending = NULL;
  r->rec_max = (size_t)max;
  return 1;
}

/* ---- sealing and opening --------------------------------------------------------------- */

/* The nonce for sequence number ctr (explicit: the record's explicit bytes); aad = seq, type,
 * version, plaintext length. */
static void nonce_aad(const struct dduct_record_cipher *c, const unsigned char *iv,
                      const unsigned char ctr[8], const unsigned char *explicit, size_t len,
                      unsigned char nonce[12], unsigned char aad[13]) {
  if (c->explicit_iv_len == 0) {
    memcpy(nonce, iv, 12);
    for (int i = 0; i < 8; i++) nonce[4 + i] ^= ctr[i];
  } else {
    memcpy(nonce, iv, 12 - c->explicit_iv_len);
    memcpy(nonce + 12 - c->explicit_iv_len, explicit, c->explicit_iv_len);
  }
  memcpy(aad, ctr, 8);
  aad[8] = MBEDTLS_SSL_MSG_APPLICATION_DATA;
  aad[9] = 3;
  aad[10] = 3;
  aad[11] = (unsigned char)(len >> 8);
  aad[12] = (unsigned char)len;
}

/* Advance a sequence number; nonzero when it would wrap (then the connection must end). */
static int ctr_next(unsigned char ctr[8]) {
  for (int i = 7; i >= 0; i--)
    if (++ctr[i] != 0) return 0;
  return 1;
}

size_t dduct__records_sealed_size(const struct dduct_records *r, size_t len, size_t *n) {
  *n = DDUCT_MIN(len, r->rec_max);
  return HDR + r->cipher->explicit_iv_len + *n + r->cipher->tag_len;
}

int dduct__records_seal(struct dduct_records *r, mbedtls_ssl_context *ssl,
                        const unsigned char *data, size_t n, unsigned char *out) {
  const struct dduct_record_cipher *c = r->cipher;
  size_t body = c->explicit_iv_len + n + c->tag_len;
  unsigned char nonce[12], aad[13], *p = out + HDR;
  if (c->explicit_iv_len > 0) {
    memcpy(p, ssl->cur_out_ctr, c->explicit_iv_len);
    p += c->explicit_iv_len;
  }
  nonce_aad(c, r->enc_iv, ssl->cur_out_ctr, out + HDR, n, nonce, aad);
  if (ctr_next(ssl->cur_out_ctr) != 0) return MBEDTLS_ERR_SSL_COUNTER_WRAPPING;
  out[0] = MBEDTLS_SSL_MSG_APPLICATION_DATA;
  out[1] = 3;
  out[2] = 3;
  out[3] = (unsigned char)(body >> 8);
  out[4] = (unsigned char)body;
  c->seal(r->enc, nonce, aad, sizeof(aad), data, n, p, p + n);
  return 0;
}

/* mbedTLS holds no part of a record and no unread plaintext. */
static int mbedtls_idle(const mbedtls_ssl_context *s) {
  return s->in_left == 0 && s->in_offt == NULL && s->in_msglen == 0 && !s->keep_current_message;
}

int dduct__records_open(struct dduct_records *r, mbedtls_ssl_context *ssl,
                        const unsigned char *in, size_t avail, int eof, unsigned char *buf,
                        size_t cap, size_t *used) {
  const struct dduct_record_cipher *c = r->cipher;
  size_t clen, over, n;
  unsigned char nonce[12], aad[13];
  if (c == NULL || !mbedtls_idle(ssl)) return DDUCT_RECORDS_NOT_OURS;
  over = c->explicit_iv_len + c->tag_len;
  if (avail < HDR) return eof ? DDUCT_RECORDS_NOT_OURS : MBEDTLS_ERR_SSL_WANT_READ;
  if (in[0] != MBEDTLS_SSL_MSG_APPLICATION_DATA || in[1] != 3 || in[2] != 3)
    return DDUCT_RECORDS_NOT_OURS;
  clen = (size_t)in[3] << 8 | in[4];
  if (clen <= over || clen - over > MBEDTLS_SSL_IN_CONTENT_LEN) return DDUCT_RECORDS_NOT_OURS;
  n = clen - over;
  if (avail < HDR + clen) return eof ? DDUCT_RECORDS_NOT_OURS : MBEDTLS_ERR_SSL_WANT_READ;
  if (n > cap) return DDUCT_RECORDS_FULL;
  nonce_aad(c, r->dec_iv, ssl->in_ctr, in + HDR, n, nonce, aad);
  if (c->open(r->dec, nonce, aad, sizeof(aad), in + HDR + c->explicit_iv_len, n,
              in + HDR + c->explicit_iv_len + n, buf) != 0) {
    (void)mbedtls_ssl_send_alert_message(ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                         MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC);
    return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  if (ctr_next(ssl->in_ctr) != 0) return MBEDTLS_ERR_SSL_COUNTER_WRAPPING;
  ssl->nb_zero = 0; /* as mbedTLS does: its limit is on consecutive empty records */
  *used = HDR + clen;
  return (int)n;
}
