/* TLS stream layer on mbedTLS 2.28 over memory buffers (see tls.h). */
#include <arpa/inet.h>
#include <mbedtls/error.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"
#include "chachapoly.h"
#include "internal.h"
#include "rng.h"
#include "tls.h"

#define TLS_IN_CAP (512 * 1024) /* ciphertext waiting for mbedTLS; bounded by read_stop */
#define TLS_PLAIN_CHUNK (16 * 1024)
#define TLS_READ_BATCH (64 * 1024)
/* Writes this large are encrypted on libuv's thread pool (see "offloaded encryption" below):
 * below it the hand-off costs more than it saves. A 128 KiB store chunk is 8 records. */
#define OFFLOAD_MIN (32 * 1024)
#define JOB_MAX (128 * 1024) /* plaintext a worker takes from wq at once: one store chunk */
/* While a job runs no record is read; stop reading below once this much ciphertext waits. */
#define OFFLOAD_IN_PAUSE (256 * 1024)

static const int server_suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

static const char *alpn_list[] = {"http/1.1", NULL};

/* ECDHE groups, fastest first: mbedTLS's default list starts at secp521r1, which made each
 * handshake ~3x dearer (docs/performance.md). The client list keeps the larger curves at the
 * end because it also limits which origin ECDSA certificates verify. */
static const mbedtls_ecp_group_id server_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};
static const mbedtls_ecp_group_id client_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_SECP521R1,  MBEDTLS_ECP_DP_NONE,
};

/* Session tickets let a returning client (apt, docker, browsers: one connection after another
 * to the same host) resume without the ECDHE key exchange and the leaf signature that make a full
 * handshake cost ~2 ms of CPU here. The ticket key is random per process and mbedTLS rotates it
 * every TICKET_LIFETIME seconds (the previous key stays valid for one more period). */
#define TICKET_LIFETIME (60 * 60)

struct dduct_tls_server_conf {
  mbedtls_ssl_config conf;
  mbedtls_ssl_ticket_context ticket;
  struct dduct_ca *ca;
};

struct dduct_tls_client_conf {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt roots;
  int insecure;
};

struct cb_node { /* a write callback waiting for the layer below */
  struct cb_node *next;
  dduct_stream_write_cb cb;
  void *arg;
  int more; /* the next node's bytes went down in the same write below (one job) */
};

/* A write queued behind an encryption job (its bytes copied: the caller's buffer is free). */
struct wq_node {
  struct wq_node *next;
  dduct_stream_write_cb cb;
  void *arg;
  size_t len;
  int carry; /* written after dduct__tls_carry_records (bytes written before are not records) */
  char data[];
};

/* The records a worker made of a group of queued writes, waiting for the loop to send them
 * down (bio_send appends to the worker's current one, t->wout). */
struct enc_out {
  struct enc_out *next;
  struct wq_node *w; /* the writes, in order: their callbacks fire when these records went down */
  char *buf;
  size_t len, cap;
  int rc; /* 0 or the mbedTLS error that ended the worker */
};

struct tls_stream {
  struct dduct_stream s;
  struct dduct_stream *lower;
  struct tls_stream *below; /* lower, when it is a TLS layer too (TLS inside TLS) */
  int carry;                /* our plaintext is a stream of TLS records (dduct__tls_carry_records) */
  size_t carry_left;        /* bytes left of the carried record's body */
  unsigned char carry_hdr[5];
  size_t carry_hdr_len;
  mbedtls_ssl_context ssl;
  int server;
  int handshaken;
  int failed;
  int lower_eof; /* 0, or the UV_EOF/error the lower layer reported */
  int eof_delivered;
  char *forced_host;
  struct dduct__leaf *leaf; /* server: the minted leaf held until the handshake is over */
  unsigned char vip[16]; /* client: an IP-literal origin, checked against iPAddress SANs */
  size_t vip_len;        /* 0: a DNS name, checked by mbedTLS */
  char sni[256];
  char err_text[256];
  dduct_tls_handshake_cb hs_cb;
  void *hs_arg;
  /* Ciphertext in (from lower) and out (to lower). */
  char *in;
  size_t in_len, in_off, in_cap;
  char *out;
  size_t out_len, out_cap;
  struct cb_node *cbs_head, *cbs_tail;
  uv_idle_t idle; /* deferred pumping after read_start with buffered data */
  int idle_active;
  int pending_closes;
  /* Offloaded encryption (see "offloaded encryption" below). While working is set a worker owns
   * ssl: the loop calls no mbedtls_ssl_* function on it (no read, no close_notify) and every
   * write waits in wq. mu guards wq, done, spare, stop_worker and worker_err. */
  int aead;               /* the negotiated suite is an AEAD (no RNG, no shared state per record) */
  int offload_logged;
  int working;            /* loop: a work item exists, until job_done */
  int async_init;         /* async was initialised (at the first job) */
  int rec_exp;            /* bytes a record adds, for sizing a worker's output */
  uv_work_t work;
  uv_async_t async;       /* the worker's "records ready" */
  uv_mutex_t mu;
  struct wq_node *wq_head, *wq_tail;
  size_t wq_bytes;
  struct enc_out *done_head, *done_tail;
  int stop_worker;        /* the loop wants ssl back (records to read, closing) */
  int worker_err;         /* the worker dropped writes (out of memory): the stream must fail */
  struct enc_out *wout;   /* the worker's current output; touched by the worker only */
  struct enc_out *spare;  /* an output (with its buffer) sent down, for the worker's next group */
  int shut_pending;       /* tls_shutdown came while writes waited */
  int pump_deferred;      /* records arrived (or read_start) while a job ran */
  int read_held;          /* held_rc ended a read batch and is still to be reported */
  int held_rc;
  /* Records written here (see "ChaCha20-Poly1305 records written here" below). */
  int keys_ok;            /* export_keys_cb saw a ChaCha20-Poly1305-shaped key block */
  int own;                /* application records are sealed and opened here, not by mbedTLS */
  size_t rec_max;         /* plaintext per record we write */
  unsigned char enc_key[32], enc_iv[12], dec_key[32], dec_iv[12];
};

static void pump(struct tls_stream *t);

/* ---- memory bio ------------------------------------------------------------------------- */

/* Where ciphertext goes: the worker's own output while it encrypts (sized for the group, so it
 * does not grow), never out, which the loop reads; out otherwise (wout is NULL whenever the loop
 * calls mbedTLS or seals records). */
struct out_buf {
  char **p;
  size_t *len, *cap;
};

static struct out_buf cur_out(struct tls_stream *t) {
  if (t->wout != NULL) return (struct out_buf){&t->wout->buf, &t->wout->len, &t->wout->cap};
  return (struct out_buf){&t->out, &t->out_len, &t->out_cap};
}

/* Room for n more bytes at the end of o (growing by doubling); NULL when it cannot grow. The
 * caller adds what it wrote to *o.len. */
static unsigned char *reserve(struct out_buf o, size_t n) {
  if (*o.len + n > *o.cap) {
    size_t c = DDUCT_MAX(*o.cap * 2, *o.len + n);
    char *q = realloc(*o.p, c);
    if (q == NULL) return NULL;
    *o.p = q;
    *o.cap = c;
  }
  return (unsigned char *)*o.p + *o.len;
}

/* mbedTLS's send callback: everything is taken at once. */
static int bio_send(void *ctx, const unsigned char *buf, size_t len) {
  struct out_buf o = cur_out(ctx);
  unsigned char *d = reserve(o, len);
  if (d == NULL) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  memcpy(d, buf, len);
  *o.len += len;
  return (int)len;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len) {
  struct tls_stream *t = ctx;
  size_t avail = t->in_len - t->in_off;
  if (avail == 0) return t->lower_eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
  if (len > avail) len = avail;
  memcpy(buf, t->in + t->in_off, len);
  t->in_off += len;
  if (t->in_off == t->in_len) t->in_off = t->in_len = 0;
  return (int)len;
}

static int in_append(struct tls_stream *t, const char *data, size_t len) {
  if (t->in_off > 0 && t->in_len + len > t->in_cap) {
    memmove(t->in, t->in + t->in_off, t->in_len - t->in_off);
    t->in_len -= t->in_off;
    t->in_off = 0;
  }
  if (t->in_len + len > t->in_cap) {
    size_t cap = DDUCT_MAX(t->in_cap * 2, t->in_len + len);
    char *p;
    if (cap > TLS_IN_CAP) return DDUCT_ETOOBIG;
    p = realloc(t->in, cap);
    if (p == NULL) return DDUCT_ENOMEM;
    t->in = p;
    t->in_cap = cap;
  }
  memcpy(t->in + t->in_len, data, len);
  t->in_len += len;
  return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

static void lower_write_cb(struct dduct_stream *lower, int status, void *arg) {
  struct tls_stream *t = arg;
  int more;
  do { /* every write whose records went down in this one */
    struct cb_node *n = t->cbs_head;
    if (n == NULL) return;
    t->cbs_head = n->next;
    if (t->cbs_head == NULL) t->cbs_tail = NULL;
    more = n->more;
    if (n->cb != NULL && !t->s.closing) n->cb(&t->s, status, n->arg);
    free(n);
  } while (more);
}

static void push_cb(struct tls_stream *t, struct cb_node *n) {
  if (t->cbs_tail != NULL) t->cbs_tail->next = n;
  else t->cbs_head = n;
  t->cbs_tail = n;
}

/* Hand ciphertext to the layer below; cb fires when it took it. */
static int send_down(struct tls_stream *t, const char *buf, size_t len, dduct_stream_write_cb cb,
                     void *arg) {
  struct cb_node *n;
  int rc;
  n = malloc(sizeof(*n));
  if (n == NULL) return DDUCT_ENOMEM;
  n->next = NULL;
  n->cb = cb;
  n->arg = arg;
  n->more = 0;
  rc = dduct__stream_write(t->lower, buf, len, lower_write_cb, t);
  if (rc != 0) {
    free(n);
    return rc;
  }
  push_cb(t, n);
  return 0;
}

/* A job's records go down in one write; each of its writes' callbacks fires when that one does. */
static int send_job_down(struct tls_stream *t, const char *buf, size_t len,
                         const struct wq_node *w) {
  struct cb_node *first = NULL, *last = NULL;
  int rc;
  for (; w != NULL; w = w->next) {
    struct cb_node *n = malloc(sizeof(*n));
    if (n == NULL) {
      rc = DDUCT_ENOMEM;
      goto fail;
    }
    n->next = NULL;
    n->cb = w->cb;
    n->arg = w->arg;
    n->more = w->next != NULL;
    if (last != NULL) last->next = n;
    else first = n;
    last = n;
  }
  rc = dduct__stream_write(t->lower, buf, len, lower_write_cb, t);
  if (rc != 0) goto fail;
  if (t->cbs_tail != NULL) t->cbs_tail->next = first;
  else t->cbs_head = first;
  t->cbs_tail = last;
  return 0;
fail:
  while (first != NULL) {
    struct cb_node *n = first;
    first = n->next;
    free(n);
  }
  return rc;
}

/* Hand the ciphertext produced so far on the loop to the layer below. */
static int flush(struct tls_stream *t, dduct_stream_write_cb cb, void *arg) {
  int rc;
  if (t->out_len == 0 && cb == NULL) return 0;
  rc = send_down(t, t->out, t->out_len, cb, arg);
  if (rc == 0) t->out_len = 0;
  return rc;
}

/* Inside another TLS layer, one record below must never carry the end of one of our records and
 * the start of the next: a client that stacks TLS sessions and asks only the inner one whether it
 * holds data before waiting on the socket (apt's https method behind an https:// proxy) would
 * wait forever for the end of an answer already decrypted in its outer session. So our records
 * are sized to fill exactly one record below, and a record of any other size goes down alone.
 * Returns the size of a record below (0: not stacked) and in *plain what fills it. */
static size_t stacked_record(struct tls_stream *t, size_t *plain) {
  int below, exp;
  *plain = (size_t)-1;
  if (t->below == NULL) return 0;
  below = mbedtls_ssl_get_max_out_record_payload(&t->below->ssl);
  exp = mbedtls_ssl_get_record_expansion(&t->ssl);
  if (below <= 0) return (size_t)-1; /* no size to fill: every record goes down alone */
  if (exp >= 0 && below > exp) *plain = (size_t)(below - exp);
  return (size_t)below;
}

/* How many of the len bytes at p belong to the carried record they continue (all of them when
 * it does not end there). Stops carrying at a header that is not TLS's. */
static size_t carried_span(struct tls_stream *t, const unsigned char *p, size_t len) {
  size_t n = 0;
  while (n < len) {
    if (t->carry_left > 0) {
      size_t k = DDUCT_MIN(t->carry_left, len - n);
      t->carry_left -= k;
      n += k;
      if (t->carry_left == 0) return n;
      continue;
    }
    t->carry_hdr[t->carry_hdr_len++] = p[n++];
    if (t->carry_hdr_len < 5) continue;
    t->carry_hdr_len = 0;
    if (t->carry_hdr[0] < 20 || t->carry_hdr[0] > 24 || t->carry_hdr[1] != 3) {
      t->carry = 0;
      return len;
    }
    t->carry_left = (size_t)t->carry_hdr[3] << 8 | t->carry_hdr[4];
    if (t->carry_left == 0) return n;
  }
  return n;
}

void dduct__tls_carry_records(struct dduct_stream *s) {
  DDUCT_CONTAINER_OF(s, struct tls_stream, s)->carry = 1;
}

/* ---- ChaCha20-Poly1305 records written here ----------------------------------------------
 * Debian's mbedTLS does ChaCha20 and Poly1305 in portable C (~350-440 MB/s per core here), which
 * made the cipher most of dduct's CPU per GiB. With that suite negotiated (TLS 1.2, RFC 7905),
 * application-data records are sealed and opened here with libdduct's own ChaCha20-Poly1305
 * (chachapoly.c: SIMD, tested against RFC 8439 and mbedTLS), and mbedTLS keeps everything else:
 * the handshake, alerts, close_notify, any other record type, every other suite.
 * The keys come from mbedTLS's key export callback (the TLS 1.2 key block: client key, server key,
 * client IV, server IV); the record sequence numbers stay in mbedTLS's context (cur_out_ctr and
 * in_ctr, public fields in 2.28), advanced by both, so either may write or read the next record.
 * A record is opened here only when mbedTLS holds no part of one (in_left, in_offt, in_msglen all
 * empty) and it is a whole application-data record in `in`; anything else goes to mbedTLS.
 * DDUCT_TLS_RECORDS=mbedtls in the environment leaves every record to mbedTLS. */

#define REC_FULL (-0x10001) /* record_read: the next record does not fit what is left of buf */

/* The stream whose handshake step runs on this thread: the export callback has no ssl pointer. */
static _Thread_local struct tls_stream *deriving;

static int export_keys_cb(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                          size_t keylen, size_t ivlen, const unsigned char client_random[32],
                          const unsigned char server_random[32], mbedtls_tls_prf_types prf) {
  struct tls_stream *t = deriving;
  const unsigned char *ck = kb, *sk = kb + 32, *civ = kb + 64, *siv = kb + 76;
  (void)p, (void)ms, (void)client_random, (void)server_random, (void)prf;
  if (t == NULL) return 0;
  t->keys_ok = 0;
  /* An AEAD suite with a 32-byte key and a 12-byte fixed IV: ChaCha20-Poly1305 (AES-256-GCM's
   * fixed IV is 4 bytes); the suite is checked again once the handshake is over. */
  if (maclen != 0 || keylen != 32 || ivlen != 12) return 0;
  memcpy(t->enc_key, t->server ? sk : ck, 32);
  memcpy(t->enc_iv, t->server ? siv : civ, 12);
  memcpy(t->dec_key, t->server ? ck : sk, 32);
  memcpy(t->dec_iv, t->server ? civ : siv, 12);
  t->keys_ok = 1;
  return 0;
}

static int records_disabled(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("DDUCT_TLS_RECORDS");
    v = e != NULL && strcmp(e, "mbedtls") == 0;
  }
  return v;
}

static void wipe_keys(struct tls_stream *t) {
  mbedtls_platform_zeroize(t->enc_key, sizeof(t->enc_key));
  mbedtls_platform_zeroize(t->dec_key, sizeof(t->dec_key));
  mbedtls_platform_zeroize(t->enc_iv, sizeof(t->enc_iv));
  mbedtls_platform_zeroize(t->dec_iv, sizeof(t->dec_iv));
}

/* After the handshake: take the records over if the suite is ChaCha20-Poly1305 on TLS 1.2. */
static void own_records_setup(struct tls_stream *t) {
  const mbedtls_ssl_ciphersuite_t *cs =
      mbedtls_ssl_ciphersuite_from_id(mbedtls_ssl_get_ciphersuite_id(mbedtls_ssl_get_ciphersuite(&t->ssl)));
  int max = mbedtls_ssl_get_max_out_record_payload(&t->ssl);
  t->own = t->keys_ok && cs != NULL && cs->cipher == MBEDTLS_CIPHER_CHACHA20_POLY1305 &&
           t->ssl.major_ver == 3 && t->ssl.minor_ver == 3 && max > 0 && !records_disabled();
  t->rec_max = max > 0 ? (size_t)max : 0;
  if (!t->own) {
    wipe_keys(t);
    return;
  }
  LOG_DEBUG("tls", "application records sealed and opened by libdduct (%s)",
            mbedtls_ssl_get_ciphersuite(&t->ssl));
}

/* nonce = IV xor the 64-bit sequence number (RFC 7905); aad = seq, type, version, length. */
static void record_nonce_aad(const unsigned char iv[12], const unsigned char ctr[8], size_t len,
                             unsigned char nonce[12], unsigned char aad[13]) {
  memcpy(nonce, iv, 12);
  for (int i = 0; i < 8; i++) nonce[4 + i] ^= ctr[i];
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

/* mbedtls_ssl_write's contract: one record of up to rec_max bytes of data[0..len) into the
 * current output (the worker's or the loop's, as cur_out chooses); bytes taken or an error. */
static int own_write(struct tls_stream *t, const unsigned char *data, size_t len) {
  struct out_buf o = cur_out(t);
  unsigned char nonce[12], aad[13], *r;
  size_t n = DDUCT_MIN(len, t->rec_max), rec = 5 + n + 16;
  if ((r = reserve(o, rec)) == NULL) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  record_nonce_aad(t->enc_iv, t->ssl.cur_out_ctr, n, nonce, aad);
  if (ctr_next(t->ssl.cur_out_ctr) != 0) return MBEDTLS_ERR_SSL_COUNTER_WRAPPING;
  r[0] = MBEDTLS_SSL_MSG_APPLICATION_DATA;
  r[1] = 3;
  r[2] = 3;
  r[3] = (unsigned char)((n + 16) >> 8);
  r[4] = (unsigned char)(n + 16);
  dduct__chachapoly_seal(t->enc_key, nonce, aad, sizeof(aad), data, n, r + 5, r + 5 + n);
  *o.len += rec;
  return (int)n;
}

static int record_write(struct tls_stream *t, const unsigned char *data, size_t len) {
  return t->own ? own_write(t, data, len) : mbedtls_ssl_write(&t->ssl, data, len);
}

/* mbedTLS holds no part of a record and no unread plaintext. */
static int own_read_ready(const struct tls_stream *t) {
  const mbedtls_ssl_context *s = &t->ssl;
  return t->own && s->in_left == 0 && s->in_offt == NULL && s->in_msglen == 0 &&
         !s->keep_current_message;
}

/* mbedtls_ssl_read's contract (plus REC_FULL): the plaintext of the next record. */
static int record_read(struct tls_stream *t, unsigned char *buf, size_t cap) {
  if (own_read_ready(t)) {
    const unsigned char *h = (const unsigned char *)t->in + t->in_off;
    size_t avail = t->in_len - t->in_off, clen, n;
    unsigned char nonce[12], aad[13];
    if (avail < 5 && !t->lower_eof) return MBEDTLS_ERR_SSL_WANT_READ;
    if (avail >= 5 && h[0] == MBEDTLS_SSL_MSG_APPLICATION_DATA && h[1] == 3 && h[2] == 3 &&
        (clen = (size_t)h[3] << 8 | h[4]) > 16 && clen - 16 <= MBEDTLS_SSL_IN_CONTENT_LEN) {
      n = clen - 16;
      if (avail < 5 + clen && !t->lower_eof) return MBEDTLS_ERR_SSL_WANT_READ;
      if (avail >= 5 + clen) {
        if (n > cap) return REC_FULL;
        record_nonce_aad(t->dec_iv, t->ssl.in_ctr, n, nonce, aad);
        if (dduct__chachapoly_open(t->dec_key, nonce, aad, sizeof(aad), h + 5, n, h + 5 + n,
                                   buf) != 0) {
          (void)mbedtls_ssl_send_alert_message(&t->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                               MBEDTLS_SSL_ALERT_MSG_BAD_RECORD_MAC);
          return MBEDTLS_ERR_SSL_INVALID_MAC;
        }
        if (ctr_next(t->ssl.in_ctr) != 0) return MBEDTLS_ERR_SSL_COUNTER_WRAPPING;
        t->ssl.nb_zero = 0; /* as mbedTLS does: its limit is on consecutive empty records */
        t->in_off += 5 + clen;
        if (t->in_off == t->in_len) t->in_off = t->in_len = 0;
        return (int)n;
      }
    }
  }
  /* Another record type, an empty or oversized record, the end of the stream: mbedTLS's. */
  return mbedtls_ssl_read(&t->ssl, buf, cap);
}

/* Encrypt on the loop thread, now (no job may be in flight). */
static int write_sync(struct tls_stream *t, const char *data, size_t len, dduct_stream_write_cb cb,
                      void *arg) {
  size_t off = 0, end = 0, plain, below;
  below = stacked_record(t, &plain);
  while (off < len) {
    size_t before = t->out_len;
    int n;
    if (off == end) /* our records end where a carried one does */
      end = t->carry ? off + carried_span(t, (const unsigned char *)data + off, len - off) : len;
    n = record_write(t, (const unsigned char *)data + off, DDUCT_MIN(end - off, plain));
    if (n < 0) {
      t->failed = 1;
      return DDUCT_ETLS;
    }
    off += (size_t)n;
    if (below != 0 && off < len && t->out_len - before != below) {
      int rc = flush(t, NULL, NULL);
      if (rc != 0) return rc;
    }
  }
  return flush(t, cb, arg);
}

/* ---- offloaded encryption ----------------------------------------------------------------
 * mbedTLS encrypts one core's worth (~420 MB/s ChaCha20 here); done on the loop thread, file
 * reads, socket writes and every other connection wait for it. A large write on a layer right
 * above TCP is therefore copied into wq and a worker on libuv's thread pool encrypts it with
 * mbedtls_ssl_write, while the loop goes on with I/O and other connections' workers use the other
 * core. One worker per layer at a time (an ssl context is never used by two threads at once),
 * and it does not return after one write: it takes group after group (up to JOB_MAX each) from
 * wq, under mu, handing each group's records to the loop through async, until wq is empty or
 * the loop wants ssl back (records to read: pump sets stop_worker). Going through the pool for
 * every 128 KiB chunk cost two thread wake-ups each (~0.2 ms here, measured), which held a single
 * download to ~240 MB/s. Writes that come while a worker runs or others wait queue behind, so
 * bytes keep their order; with nothing queued a small write is encrypted synchronously as before
 * (no copy, no hand-off), and so is a small write at the head of wq when no worker runs.
 * Why this is safe: with renegotiation disabled (mbedTLS's default) mbedtls_ssl_write on an
 * established context only encrypts and calls bio_send; an AEAD suite's record needs no RNG
 * (the nonce is the record counter), and nothing in the record path is global. Not offloaded:
 * TLS inside TLS (stacked_record reads the layer below) and carried records, both rare. */

static void fail(struct tls_stream *t, int code);
static void closed_one(struct tls_stream *t);
static void describe(struct tls_stream *t, int rc);
static void async_close_cb(uv_handle_t *h);

/* DDUCT_TLS_OFFLOAD=off keeps every encryption on the loop (for measurements). */
static int offload_disabled(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("DDUCT_TLS_OFFLOAD");
    v = e != NULL && strcmp(e, "off") == 0;
  }
  return v;
}

/* Not with records written here: libdduct's ChaCha20-Poly1305 (~2 GB/s per core) costs less
 * than the copy into wq, the hand-off and the worker's buffers (measured, 512 MiB hits and a
 * 50-client stampede: as fast or faster on the loop, 0.68 vs 0.94 CPU-s per GiB, half the peak
 * RSS). The workers stay for mbedTLS's suites (AES-GCM ~250 MB/s). */
static int offloadable(const struct tls_stream *t) {
  return t->aead && !t->own && t->below == NULL && !t->carry && !offload_disabled();
}

static int suite_is_aead(mbedtls_ssl_context *ssl) {
  const char *name = mbedtls_ssl_get_ciphersuite(ssl);
  const mbedtls_ssl_ciphersuite_t *cs;
  const mbedtls_cipher_info_t *ci;
  if (name == NULL) return 0;
  cs = mbedtls_ssl_ciphersuite_from_id(mbedtls_ssl_get_ciphersuite_id(name));
  if (cs == NULL || (ci = mbedtls_cipher_info_from_type(cs->cipher)) == NULL) return 0;
  return ci->mode == MBEDTLS_MODE_GCM || ci->mode == MBEDTLS_MODE_CCM ||
         ci->mode == MBEDTLS_MODE_CHACHAPOLY;
}

static void free_nodes(struct wq_node *w) {
  while (w != NULL) {
    struct wq_node *next = w->next;
    free(w);
    w = next;
  }
}

static void enc_free(struct enc_out *o) {
  free_nodes(o->w);
  free(o->buf);
  free(o);
}

static void drop_queue(struct tls_stream *t) {
  struct wq_node *w;
  uv_mutex_lock(&t->mu);
  w = t->wq_head;
  t->wq_head = t->wq_tail = NULL;
  t->wq_bytes = 0;
  uv_mutex_unlock(&t->mu);
  free_nodes(w);
}

static void drop_done(struct tls_stream *t) {
  struct enc_out *o;
  uv_mutex_lock(&t->mu);
  o = t->done_head;
  t->done_head = t->done_tail = NULL;
  uv_mutex_unlock(&t->mu);
  while (o != NULL) {
    struct enc_out *next = o->next;
    enc_free(o);
    o = next;
  }
}

/* Queue a copy of a write (a running worker takes it too). */
static int enqueue(struct tls_stream *t, const char *data, size_t len, dduct_stream_write_cb cb,
                   void *arg) {
  struct wq_node *w = malloc(sizeof(*w) + len);
  if (w == NULL) return DDUCT_ENOMEM;
  w->next = NULL;
  w->cb = cb;
  w->arg = arg;
  w->len = len;
  w->carry = t->carry;
  memcpy(w->data, data, len);
  uv_mutex_lock(&t->mu);
  if (t->wq_tail != NULL) t->wq_tail->next = w;
  else t->wq_head = w;
  t->wq_tail = w;
  t->wq_bytes += len;
  uv_mutex_unlock(&t->mu);
  return 0;
}

/* Detach the writes at the head of wq, up to JOB_MAX bytes (at least one). Under mu. */
static struct wq_node *take_group(struct tls_stream *t, size_t *bytes, size_t *records) {
  struct wq_node *w = t->wq_head, *last = w;
  *bytes = w->len;
  *records = w->len / TLS_PLAIN_CHUNK + 1;
  while (last->next != NULL && *bytes + last->next->len <= JOB_MAX) {
    last = last->next;
    *bytes += last->len;
    *records += last->len / TLS_PLAIN_CHUNK + 1;
  }
  t->wq_head = last->next;
  if (t->wq_head == NULL) t->wq_tail = NULL;
  last->next = NULL;
  t->wq_bytes -= *bytes;
  return w;
}

static int encrypt_group(struct tls_stream *t, const struct wq_node *w) {
  for (; w != NULL; w = w->next) {
    const unsigned char *p = (const unsigned char *)w->data;
    size_t off = 0;
    while (off < w->len) {
      int n = record_write(t, p + off, w->len - off);
      if (n < 0) return n;
      off += (size_t)n;
    }
  }
  return 0;
}

/* The worker: encrypt what waits in wq, group after group, handing each group's records to the
 * loop through async, until wq is empty or the loop wants ssl back. It goes on by itself from one
 * group to the next: a hand-off through the thread pool and back costs two thread wake-ups
 * (~0.1-0.2 ms on this kind of VM, measured), half the time a 128 KiB chunk takes to encrypt. */
static void work_cb(uv_work_t *req) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(req, struct tls_stream, work);
  for (;;) {
    struct enc_out *o;
    struct wq_node *w;
    size_t bytes, records, need;
    int rc;
    uv_mutex_lock(&t->mu);
    if (t->stop_worker || t->wq_head == NULL) {
      uv_mutex_unlock(&t->mu);
      return;
    }
    w = take_group(t, &bytes, &records);
    o = t->spare; /* the output the loop gave back, buffer and all: no allocation per group */
    t->spare = NULL;
    uv_mutex_unlock(&t->mu);
    if (o == NULL) o = calloc(1, sizeof(*o));
    if (o == NULL) { /* nothing to report it in: job_done sees worker_err */
      free_nodes(w);
      uv_mutex_lock(&t->mu);
      t->worker_err = 1;
      uv_mutex_unlock(&t->mu);
      return;
    }
    o->w = w;
    o->next = NULL;
    o->len = 0;
    o->rc = 0;
    need = bytes + records * (size_t)t->rec_exp; /* each record adds rec_exp bytes */
    if (o->cap < need) { /* sized once for a full group of any shape */
      size_t cap = DDUCT_MAX(need, JOB_MAX + (JOB_MAX / TLS_PLAIN_CHUNK + 32) * (size_t)t->rec_exp);
      char *p = realloc(o->buf, cap);
      if (p != NULL) {
        o->buf = p;
        o->cap = cap;
      }
    }
    if (o->cap < need) {
      o->rc = MBEDTLS_ERR_SSL_ALLOC_FAILED;
    } else {
      t->wout = o;
      o->rc = encrypt_group(t, w);
      t->wout = NULL;
    }
    rc = o->rc; /* o is the loop's once it is in done */
    uv_mutex_lock(&t->mu);
    if (t->done_tail != NULL) t->done_tail->next = o;
    else t->done_head = o;
    t->done_tail = o;
    uv_mutex_unlock(&t->mu);
    uv_async_send(&t->async);
    if (rc != 0) return;
  }
}

/* Send down, in order, the records the worker made. */
static void deliver_done(struct tls_stream *t) {
  for (;;) {
    struct enc_out *o;
    int rc;
    uv_mutex_lock(&t->mu);
    o = t->done_head;
    if (o != NULL && (t->done_head = o->next) == NULL) t->done_tail = NULL;
    uv_mutex_unlock(&t->mu);
    if (o == NULL) return;
    if (t->failed || t->s.closing) {
      enc_free(o);
      continue;
    }
    rc = o->rc;
    if (rc != 0) describe(t, rc);
    else if (send_job_down(t, o->buf, o->len, o->w) != 0) rc = -1;
    free_nodes(o->w); /* the layer below copied what it did not take: the buffer is free */
    o->w = NULL;
    uv_mutex_lock(&t->mu);
    if (t->spare == NULL) {
      t->spare = o;
      o = NULL;
    }
    uv_mutex_unlock(&t->mu);
    if (o != NULL) enc_free(o);
    if (rc != 0) {
      if (t->err_text[0] == '\0') snprintf(t->err_text, sizeof(t->err_text), "TLS write failed");
      drop_queue(t);
      fail(t, DDUCT_ETLS);
    }
  }
}

static void async_cb(uv_async_t *h) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(h, struct tls_stream, async);
  if (!t->s.closing) deliver_done(t);
}

static void job_done(uv_work_t *req, int status);

/* Start a worker on wq (its head is a large write). Nonzero: not started. */
static int job_start(struct tls_stream *t) {
  int exp = mbedtls_ssl_get_record_expansion(&t->ssl);
  if (!t->async_init) {
    if (uv_async_init(t->s.loop, &t->async, async_cb) != 0) return DDUCT_ENOMEM;
    t->async_init = 1;
  }
  t->rec_exp = exp < 0 ? 64 : exp;
  uv_mutex_lock(&t->mu);
  t->stop_worker = 0;
  uv_mutex_unlock(&t->mu);
  t->working = 1;
  if (uv_queue_work(t->s.loop, &t->work, work_cb, job_done) != 0) {
    t->working = 0;
    return DDUCT_ENOMEM;
  }
  if (!t->offload_logged) {
    t->offload_logged = 1;
    LOG_DEBUG("tls", "encrypting writes of %d KiB and more on the thread pool (%s)",
              OFFLOAD_MIN / 1024, mbedtls_ssl_get_ciphersuite(&t->ssl));
  }
  return 0;
}

static void finish_shutdown(struct tls_stream *t) {
  if (t->handshaken && !t->failed) {
    (void)mbedtls_ssl_close_notify(&t->ssl);
    (void)flush(t, NULL, NULL);
  }
  (void)dduct__stream_shutdown(t->lower);
}

/* Work the queue from its head while no worker runs: a large write starts one, small ones are
 * encrypted here. Then the deferred shutdown. */
static void run_queue(struct tls_stream *t) {
  while (!t->working && t->wq_head != NULL && !t->failed && !t->s.closing) {
    struct wq_node *w = t->wq_head;
    int rc;
    if (w->len >= OFFLOAD_MIN && offloadable(t) && job_start(t) == 0) return;
    uv_mutex_lock(&t->mu);
    if ((t->wq_head = w->next) == NULL) t->wq_tail = NULL;
    t->wq_bytes -= w->len;
    uv_mutex_unlock(&t->mu);
    if (!w->carry && t->carry) { /* queued before the tunnel began: not records to align */
      t->carry = 0;
      rc = write_sync(t, w->data, w->len, w->cb, w->arg);
      t->carry = 1;
    } else {
      rc = write_sync(t, w->data, w->len, w->cb, w->arg);
    }
    free(w);
    if (rc != 0) {
      snprintf(t->err_text, sizeof(t->err_text), "TLS write failed (%d)", rc);
      drop_queue(t);
      fail(t, rc);
      break; /* a shutdown that waited still shuts the lower layer */
    }
  }
  if (!t->working && t->wq_head == NULL && t->shut_pending && !t->s.closing) {
    t->shut_pending = 0;
    finish_shutdown(t);
  }
}

/* The worker returned: ssl is the loop's again. */
static void job_done(uv_work_t *req, int status) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(req, struct tls_stream, work);
  t->working = 0;
  if (t->s.closing) { /* tls_close left async open for us: closing it ends in the free */
    uv_close((uv_handle_t *)&t->async, async_close_cb);
    return;
  }
  deliver_done(t); /* async may not have run for the last group yet */
  if (t->s.closing) return;
  uv_mutex_lock(&t->mu);
  if (t->worker_err) status = DDUCT_ENOMEM; /* writes were lost: the stream cannot go on */
  uv_mutex_unlock(&t->mu);
  if (status != 0 && !t->failed) {
    snprintf(t->err_text, sizeof(t->err_text), "TLS write failed (worker %d)", status);
    drop_queue(t);
    fail(t, DDUCT_ETLS);
    return;
  }
  if (t->failed) { /* nothing more goes out; a shutdown that waited still shuts the lower layer */
    drop_queue(t);
    run_queue(t);
    return;
  }
  /* Records that arrived meanwhile are read now, between two workers, so a long download does
   * not hold back what the peer sends (and read_cb may write: it queues behind what waits). */
  if (t->pump_deferred) {
    t->pump_deferred = 0;
    pump(t);
    if (t->s.closing) return;
  }
  run_queue(t);
}

static int tls_write(struct dduct_stream *s, const char *data, size_t len,
                     dduct_stream_write_cb cb, void *arg) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  int rc;
  if (!t->handshaken || t->failed) return DDUCT_ETLS;
  if (!t->working && t->wq_head == NULL && (len < OFFLOAD_MIN || !offloadable(t)))
    return write_sync(t, data, len, cb, arg);
  rc = enqueue(t, data, len, cb, arg);
  /* Not taken by a running worker: the loop works the queue now, or job_done does once the
   * worker that is just returning is gone. */
  if (rc == 0 && !t->working) run_queue(t);
  return rc;
}

static int tls_shutdown(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  if (t->working || t->wq_head != NULL) { /* close_notify goes after what waits */
    t->shut_pending = 1;
    return 0;
  }
  if (t->handshaken && !t->failed) {
    (void)mbedtls_ssl_close_notify(&t->ssl);
    (void)flush(t, NULL, NULL);
  }
  return dduct__stream_shutdown(t->lower);
}

static size_t tls_queued(const struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF((struct dduct_stream *)s, struct tls_stream, s);
  size_t wq;
  /* What a worker took and is encrypting is not counted: a producer waiting for the low-water
   * mark would otherwise resume only once the worker has nothing left, and it would idle while
   * the next chunk is read and handed over. At most JOB_MAX (its plaintext and its records) is
   * outside this figure. A queued plaintext byte counts twice: it will also be a ciphertext byte
   * while it waits below (10 readers of one cold file: 34 -> 30 MiB peak RSS). */
  uv_mutex_lock(&t->mu);
  wq = t->wq_bytes;
  uv_mutex_unlock(&t->mu);
  return t->out_len + 2 * wq + dduct__stream_queued(t->lower);
}

/* ---- reading ------------------------------------------------------------------------------ */

static void describe(struct tls_stream *t, int rc) {
  char buf[160];
  uint32_t flags;
  if (!t->server && (flags = mbedtls_ssl_get_verify_result(&t->ssl)) != 0 && flags != (uint32_t)-1) {
    char info[200];
    size_t n;
    mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
    n = strlen(info);
    while (n > 0 && (info[n - 1] == '\n' || info[n - 1] == ' ')) info[--n] = '\0';
    for (size_t i = 0; i < n; i++)
      if (info[i] == '\n') info[i] = ';';
    snprintf(t->err_text, sizeof(t->err_text), "certificate verification failed: %s", info);
    return;
  }
  mbedtls_strerror(rc, buf, sizeof(buf));
  snprintf(t->err_text, sizeof(t->err_text), "%s: %s",
           t->handshaken ? "TLS failed" : "TLS handshake failed", buf);
}

static void fail(struct tls_stream *t, int code) {
  dduct_tls_handshake_cb cb = t->hs_cb;
  t->failed = 1;
  (void)flush(t, NULL, NULL); /* the alert, if any */
  if (!t->handshaken && cb != NULL) {
    t->hs_cb = NULL;
    cb(&t->s, code, t->hs_arg);
    return;
  }
  if (!t->eof_delivered && t->s.read_cb != NULL && !t->s.closing) {
    t->eof_delivered = 1;
    t->s.read_cb(&t->s, code, NULL);
  }
}

/* mbedTLS 2.28 matches a hostname against dNSName SANs and the CN only, so an origin addressed
 * by IP literal never verified; its certificate must name that address in an iPAddress SAN. */
static int peer_names_ip(struct tls_stream *t) {
  const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&t->ssl);
  const mbedtls_x509_sequence *san;
  if (crt == NULL) return 0;
  for (san = &crt->subject_alt_names; san != NULL && san->buf.p != NULL; san = san->next)
    if ((san->buf.tag & MBEDTLS_ASN1_TAG_VALUE_MASK) == MBEDTLS_X509_SAN_IP_ADDRESS &&
        san->buf.len == t->vip_len && memcmp(san->buf.p, t->vip, t->vip_len) == 0)
      return 1;
  return 0;
}

static int handshake(struct tls_stream *t) {
  int rc;
  deriving = t; /* export_keys_cb runs inside, without a pointer to t */
  rc = mbedtls_ssl_handshake(&t->ssl);
  deriving = NULL;
  (void)flush(t, NULL, NULL);
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
    if (t->lower_eof) {
      snprintf(t->err_text, sizeof(t->err_text), "peer closed during the TLS handshake");
      fail(t, DDUCT_ETLS);
      return -1;
    }
    return 1;
  }
  if (rc != 0) {
    int verify = !t->server && mbedtls_ssl_get_verify_result(&t->ssl) != 0 &&
                 mbedtls_ssl_get_verify_result(&t->ssl) != (uint32_t)-1;
    describe(t, rc);
    fail(t, verify ? DDUCT_EVERIFY : DDUCT_ETLS);
    return -1;
  }
  if (!t->server && t->vip_len > 0 && !peer_names_ip(t)) {
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(t->vip_len == 4 ? AF_INET : AF_INET6, t->vip, ip, sizeof(ip));
    snprintf(t->err_text, sizeof(t->err_text),
             "certificate verification failed: the certificate does not name IP address %s", ip);
    fail(t, DDUCT_EVERIFY);
    return -1;
  }
  t->handshaken = 1;
  dduct__ca_leaf_put(t->leaf); /* mbedTLS dropped its pointers with the handshake state */
  t->leaf = NULL;
  t->aead = suite_is_aead(&t->ssl);
  own_records_setup(t);
  if (t->hs_cb != NULL) {
    dduct_tls_handshake_cb cb = t->hs_cb;
    t->hs_cb = NULL;
    cb(&t->s, 0, t->hs_arg);
  }
  return 0;
}

static void deliver_eof(struct tls_stream *t, int code) {
  if (t->eof_delivered || t->s.closing) return;
  t->eof_delivered = 1;
  t->s.reading = 0;
  if (t->s.read_cb != NULL) t->s.read_cb(&t->s, code, NULL);
}

/* Plaintext goes up in pieces of up to TLS_READ_BATCH (the records already received, read one
 * after the other): a forwarded body then reaches the other side's tls_write in writes large
 * enough to be encrypted off the loop, and the owner runs once per batch instead of per record. */
static void read_records(struct tls_stream *t) {
  char buf[TLS_READ_BATCH];
  /* Stops as soon as a worker runs: read_cb may write, and a large write starts one; from then
   * on the worker owns ssl, and job_done reads the rest (pump). */
  while (t->s.reading && !t->s.closing && !t->failed && !t->eof_delivered && !t->working) {
    size_t got = 0;
    int n;
    if (t->read_held) { /* what ended the last batch, after its data */
      t->read_held = 0;
      n = t->held_rc;
    } else {
      do {
        n = record_read(t, (unsigned char *)buf + got, sizeof(buf) - got);
        if (n > 0) got += (size_t)n;
      } while (n > 0 && got < sizeof(buf));
      if (got > 0) {
        if (n <= 0 && n != MBEDTLS_ERR_SSL_WANT_READ && n != MBEDTLS_ERR_SSL_WANT_WRITE &&
            n != REC_FULL) {
          t->read_held = 1; /* EOF, close_notify or an error: reported after the data */
          t->held_rc = n;
        }
        t->s.read_cb(&t->s, (ssize_t)got, buf);
        continue;
      }
    }
    (void)flush(t, NULL, NULL);
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE) {
      if (t->lower_eof && t->in_len == t->in_off) deliver_eof(t, t->lower_eof);
      return;
    }
    if (n == 0 || n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
      deliver_eof(t, UV_EOF);
      return;
    }
    describe(t, n);
    fail(t, DDUCT_ETLS);
    return;
  }
}

/* A worker owns ssl: ask it to stop; job_done reads. */
static void defer_pump(struct tls_stream *t) {
  t->pump_deferred = 1;
  uv_mutex_lock(&t->mu);
  t->stop_worker = 1;
  uv_mutex_unlock(&t->mu);
  if (t->in_len - t->in_off >= OFFLOAD_IN_PAUSE) dduct__stream_read_stop(t->lower);
}

static void pump(struct tls_stream *t) {
  if (t->s.closing || t->failed) return;
  if (t->working) {
    defer_pump(t);
    return;
  }
  if (!t->handshaken && handshake(t) < 0) return;
  if (t->s.closing) return;
  /* The handshake callback and read_cb may write, and a large write starts a worker: from then
   * on no mbedtls_ssl_* call here (a read that answers with an alert would write records
   * beside the worker's). */
  if (t->handshaken && !t->working) read_records(t);
  if (t->s.closing || t->failed) return;
  if (t->working) {
    defer_pump(t);
    return;
  }
  /* Keep ciphertext flowing only while someone wants plaintext (or the handshake needs it). */
  if ((t->s.reading || !t->handshaken) && !t->lower_eof)
    (void)dduct__stream_read_start(t->lower, t->lower->read_cb);
  else
    dduct__stream_read_stop(t->lower);
}

static void lower_read_cb(struct dduct_stream *lower, ssize_t nread, const char *data) {
  struct tls_stream *t = lower->data;
  if (nread < 0) {
    t->lower_eof = (int)nread;
  } else if (in_append(t, data, (size_t)nread) != 0) {
    snprintf(t->err_text, sizeof(t->err_text), "TLS input over its cap");
    fail(t, DDUCT_ETOOBIG);
    return;
  }
  pump(t);
}

static void idle_cb(uv_idle_t *h) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(h, struct tls_stream, idle);
  uv_idle_stop(h);
  t->idle_active = 0;
  pump(t);
}

static int tls_read_start(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  /* Buffered records or ciphertext may already hold what the reader waits for: never wait on
   * the socket for them. Deferred so read_cb never runs inside read_start. */
  if (!t->idle_active) {
    t->idle_active = 1;
    uv_idle_start(&t->idle, idle_cb);
  }
  return 0;
}

static void tls_read_stop(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  if (t->handshaken) dduct__stream_read_stop(t->lower);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

static void tls_free(struct tls_stream *t) {
  while (t->cbs_head != NULL) {
    struct cb_node *n = t->cbs_head;
    t->cbs_head = n->next;
    free(n);
  }
  drop_queue(t);
  drop_done(t);
  if (t->spare != NULL) enc_free(t->spare);
  uv_mutex_destroy(&t->mu);
  mbedtls_ssl_free(&t->ssl);
  dduct__ca_leaf_put(t->leaf);
  wipe_keys(t);
  free(t->forced_host);
  free(t->in);
  free(t->out);
  free(t);
}

static void closed_one(struct tls_stream *t) {
  if (--t->pending_closes > 0) return;
  if (t->s.close_cb != NULL) t->s.close_cb(&t->s);
  tls_free(t);
}

static void lower_close_cb(struct dduct_stream *lower) {
  closed_one(lower->data);
}

static void idle_close_cb(uv_handle_t *h) {
  closed_one(DDUCT_CONTAINER_OF((uv_idle_t *)h, struct tls_stream, idle));
}

static void async_close_cb(uv_handle_t *h) {
  closed_one(DDUCT_CONTAINER_OF((uv_async_t *)h, struct tls_stream, async));
}

static void tls_close(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  t->pending_closes = 2 + t->async_init;
  uv_close((uv_handle_t *)&t->idle, idle_close_cb);
  dduct__stream_close(t->lower, lower_close_cb);
  /* A running worker may still signal async and uses t: job_done closes async, then the free. */
  if (t->working) {
    uv_mutex_lock(&t->mu);
    t->stop_worker = 1;
    uv_mutex_unlock(&t->mu);
  } else if (t->async_init) {
    uv_close((uv_handle_t *)&t->async, async_close_cb);
  }
}

static const struct dduct_stream_vt tls_vt = {
    tls_write, tls_read_start, tls_read_stop, tls_shutdown, tls_close, tls_queued,
};

static struct tls_stream *tls_new(const mbedtls_ssl_config *conf, struct dduct_stream *lower) {
  struct tls_stream *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  mbedtls_ssl_init(&t->ssl);
  if (mbedtls_ssl_setup(&t->ssl, conf) != 0 || uv_mutex_init(&t->mu) != 0) {
    mbedtls_ssl_free(&t->ssl);
    free(t);
    return NULL;
  }
  if (uv_idle_init(lower->loop, &t->idle) != 0) {
    uv_mutex_destroy(&t->mu);
    mbedtls_ssl_free(&t->ssl);
    free(t);
    return NULL;
  }
  mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
  t->s.vt = &tls_vt;
  t->s.loop = lower->loop;
  t->lower = lower;
  if (lower->vt == &tls_vt) t->below = DDUCT_CONTAINER_OF(lower, struct tls_stream, s);
  lower->data = t;
  lower->read_cb = lower_read_cb;
  return t;
}

static void tls_abandon(struct tls_stream *t) {
  /* Creation failed after the idle handle existed: close it, keep lower for the caller. */
  t->lower = NULL;
  t->pending_closes = 1;
  uv_close((uv_handle_t *)&t->idle, idle_close_cb);
}

/* ---- server ------------------------------------------------------------------------------- */

static int sni_cb(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len) {
  struct dduct_tls_server_conf *c = arg;
  struct tls_stream *t = DDUCT_CONTAINER_OF(ssl, struct tls_stream, ssl);
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;

  if (len >= sizeof(t->sni)) return -1;
  memcpy(t->sni, name, len);
  t->sni[len] = '\0';
  if (t->forced_host != NULL) return 0; /* the CONNECT line decides, set before the handshake */
  /* Only names we intercept get a minted leaf; any other name gets server.crt. Minting for
   * every SNI would sign certificates for hosts outside server_dns_sans (and churn the CA's leaf
   * cache). The listener checked allow_clients before this handshake began. */
  if (len == 0 || !dduct_ca_covers(c->ca, t->sni)) return 0;
  dduct__ca_leaf_put(t->leaf);
  t->leaf = NULL;
  if (dduct__ca_leaf(c->ca, t->sni, &t->leaf, &chain, &key) != 0) {
    LOG_WARN("tls_mitm", "no certificate for SNI \"%s\"", t->sni);
    return -1;
  }
  return mbedtls_ssl_set_hs_own_cert(ssl, chain, key);
}

int dduct__tls_server_conf_new(struct dduct_ca *ca, struct dduct_tls_server_conf **out, char *err,
                               size_t errlen) {
  struct dduct_tls_server_conf *c;
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;
  int rc;

  *out = NULL;
  c = calloc(1, sizeof(*c));
  if (c == NULL) return DDUCT_ENOMEM;
  c->ca = ca;
  mbedtls_ssl_config_init(&c->conf);
  mbedtls_ssl_ticket_init(&c->ticket);
  rc = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc == 0) rc = dduct__rng_init();
  if (rc != 0) goto fail;
  mbedtls_ssl_conf_rng(&c->conf, dduct__rng, NULL);
  mbedtls_ssl_conf_ciphersuites(&c->conf, server_suites);
  mbedtls_ssl_conf_curves(&c->conf, server_curves);
  mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_alpn_protocols(&c->conf, alpn_list);
  mbedtls_ssl_conf_sni(&c->conf, sni_cb, c);
  mbedtls_ssl_conf_export_keys_ext_cb(&c->conf, export_keys_cb, NULL);
  rc = mbedtls_ssl_ticket_setup(&c->ticket, dduct__rng, NULL, MBEDTLS_CIPHER_AES_256_GCM,
                                TICKET_LIFETIME);
  if (rc != 0) goto fail;
  mbedtls_ssl_conf_session_tickets_cb(&c->conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
                                      &c->ticket);
  rc = dduct__ca_server_identity(ca, &chain, &key);
  if (rc == 0) rc = mbedtls_ssl_conf_own_cert(&c->conf, chain, key);
  if (rc != 0) goto fail;
  *out = c;
  return 0;
fail:
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_ssl_ticket_free(&c->ticket);
  free(c);
  return dduct__errf(DDUCT_ETLS, err, errlen, "TLS server configuration failed (%d)", rc);
}

void dduct__tls_server_conf_free(struct dduct_tls_server_conf *c) {
  if (c == NULL) return;
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_ssl_ticket_free(&c->ticket);
  free(c);
}

struct dduct_stream *dduct__tls_server_new(struct dduct_tls_server_conf *c,
                                           struct dduct_stream *lower, const char *forced_host,
                                           const char *pre, size_t prelen) {
  dduct_stream_read_cb saved_cb = lower->read_cb;
  void *saved_data = lower->data;
  struct tls_stream *t = tls_new(&c->conf, lower);
  if (t == NULL) return NULL;
  t->server = 1;
  if (forced_host != NULL) {
    mbedtls_x509_crt *chain;
    mbedtls_pk_context *key;
    t->forced_host = dduct__strdup(forced_host);
    if (t->forced_host == NULL ||
        dduct__ca_leaf(c->ca, forced_host, &t->leaf, &chain, &key) != 0 ||
        mbedtls_ssl_set_hs_own_cert(&t->ssl, chain, key) != 0)
      goto fail;
  }
  if (prelen > 0 && in_append(t, pre, prelen) != 0) goto fail;
  return &t->s;
fail:
  lower->read_cb = saved_cb;
  lower->data = saved_data;
  tls_abandon(t);
  return NULL;
}

/* ---- client ------------------------------------------------------------------------------- */

static int is_ip_literal(const char *host) {
  unsigned char b[16];
  return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

int dduct__tls_client_conf_new(const char *system_ca_file, const char *extra_ca_file, int insecure,
                               struct dduct_tls_client_conf **out, char *err, size_t errlen) {
  struct dduct_tls_client_conf *c;
  int rc, loaded = 0;

  *out = NULL;
  c = calloc(1, sizeof(*c));
  if (c == NULL) return DDUCT_ENOMEM;
  mbedtls_ssl_config_init(&c->conf);
  mbedtls_x509_crt_init(&c->roots);
  c->insecure = insecure;
  if (system_ca_file != NULL && *system_ca_file != '\0' &&
      mbedtls_x509_crt_parse_file(&c->roots, system_ca_file) >= 0)
    loaded = 1;
  if (extra_ca_file != NULL && *extra_ca_file != '\0') {
    rc = mbedtls_x509_crt_parse_file(&c->roots, extra_ca_file);
    if (rc < 0) {
      char buf[128];
      mbedtls_strerror(rc, buf, sizeof(buf));
      rc = dduct__errf(DDUCT_ECONFIG, err, errlen, "upstream_ca_file \"%s\": %s", extra_ca_file,
                       buf);
      goto fail;
    }
    loaded = 1;
  }
  if (!loaded && !insecure)
    LOG_WARN("upstream", "no CA certificates loaded: every origin TLS verification will fail");
  rc = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc == 0) rc = dduct__rng_init();
  if (rc != 0) {
    rc = dduct__errf(DDUCT_ETLS, err, errlen, "TLS client configuration failed (%d)", rc);
    goto fail;
  }
  mbedtls_ssl_conf_rng(&c->conf, dduct__rng, NULL);
  mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_alpn_protocols(&c->conf, alpn_list);
  mbedtls_ssl_conf_ca_chain(&c->conf, &c->roots, NULL);
  mbedtls_ssl_conf_curves(&c->conf, client_curves);
  mbedtls_ssl_conf_export_keys_ext_cb(&c->conf, export_keys_cb, NULL);
  mbedtls_ssl_conf_authmode(&c->conf,
                            insecure ? MBEDTLS_SSL_VERIFY_NONE : MBEDTLS_SSL_VERIFY_REQUIRED);
  if (insecure)
    LOG_WARN("upstream", "upstream_insecure is set: origin certificates are NOT verified; "
                         "anyone on the path can impersonate any origin");
  *out = c;
  return 0;
fail:
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_x509_crt_free(&c->roots);
  free(c);
  return rc;
}

void dduct__tls_client_conf_free(struct dduct_tls_client_conf *c) {
  if (c == NULL) return;
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_x509_crt_free(&c->roots);
  free(c);
}

struct dduct_stream *dduct__tls_client_new(struct dduct_tls_client_conf *c,
                                           struct dduct_stream *lower, const char *host) {
  dduct_stream_read_cb saved_cb = lower->read_cb;
  void *saved_data = lower->data;
  struct tls_stream *t = tls_new(&c->conf, lower);
  struct in6_addr a6;
  if (t == NULL) return NULL;
  if (inet_pton(AF_INET, host, t->vip) == 1) {
    t->vip_len = 4;
  } else if (inet_pton(AF_INET6, host, &a6) == 1) {
    int mapped = IN6_IS_ADDR_V4MAPPED(&a6);
    t->vip_len = mapped ? 4 : 16;
    memcpy(t->vip, a6.s6_addr + (mapped ? 12 : 0), t->vip_len);
  }
  /* An IP literal is neither sent as SNI (RFC 6066) nor given to mbedTLS's name check, which
   * cannot match it; the handshake checks the iPAddress SANs instead (unless insecure). */
  if (c->insecure) t->vip_len = 0;
  if (!is_ip_literal(host) && mbedtls_ssl_set_hostname(&t->ssl, host) != 0) {
    lower->read_cb = saved_cb;
    lower->data = saved_data;
    tls_abandon(t);
    return NULL;
  }
  return &t->s;
}

/* ---- queries ------------------------------------------------------------------------------ */

void dduct__tls_on_handshake(struct dduct_stream *s, dduct_tls_handshake_cb cb, void *arg) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  t->hs_cb = cb;
  t->hs_arg = arg;
  /* The client speaks first: start the handshake now rather than on the first read. */
  if (!t->server && !t->handshaken) {
    (void)handshake(t);
    if (!t->failed) (void)dduct__stream_read_start(t->lower, lower_read_cb);
  }
}

const char *dduct__tls_sni(const struct dduct_stream *s) {
  return DDUCT_CONTAINER_OF(s, const struct tls_stream, s)->sni;
}

const char *dduct__tls_error_text(const struct dduct_stream *s) {
  const struct tls_stream *t = DDUCT_CONTAINER_OF(s, const struct tls_stream, s);
  return t->err_text[0] != '\0' ? t->err_text : "TLS failure";
}
