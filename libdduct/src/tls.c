/* TLS stream layer on mbedTLS 2.28 over memory buffers (see tls.h); bulk encryption on workers
 * in tls_offload.c, records sealed and opened here in tls_records.c. */
#include <arpa/inet.h>
#include <assert.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"
#include "diag.h"
#include "internal.h"
#include "rng.h"
#include "tls_hello.h"
#include "tls_internal.h"

#define TLS_IN_CAP (512 * 1024) /* ciphertext waiting for mbedTLS; bounded by read_stop */
#define TLS_READ_BATCH (64 * 1024)

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
  uint64_t handshakes[2]; /* failed, ok */
};

struct dduct_tls_client_conf {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt roots;
  int insecure;
  uint64_t handshakes[2];
  int suites[DDUCT_ARRAY_SIZE(server_suites)]; /* offered to origins (client_suites) */
};

/* The suites offered to origins: server_suites (ECDHE with ChaCha20-Poly1305 or AES-GCM, whose
 * records tls_records.c seals and opens itself), in mbedTLS's default order, so an origin that
 * follows the client's order picks what it picked before. Not offered any more: CBC, CCM, ARIA
 * and Camellia suites, and key exchanges without forward secrecy (static RSA) or with slow
 * finite-field DHE; their records all went through mbedTLS, mostly on the encryption workers. */
static void client_suites(int *out) {
  size_t n = 0;
  for (const int *s = mbedtls_ssl_list_ciphersuites(); *s != 0; s++)
    for (size_t i = 0; server_suites[i] != 0; i++)
      if (*s == server_suites[i]) out[n++] = *s;
  out[n] = 0;
}

/* ---- memory bio ------------------------------------------------------------------------- */

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
int dduct__tls_send_job_down(struct tls_stream *t, const char *buf, size_t len,
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
#define OUT_KEEP (20 * 1024) /* a full record and change */
static int flush(struct tls_stream *t, dduct_stream_write_cb cb, void *arg) {
  int rc;
  if (t->out_len == 0 && cb == NULL) return 0;
  rc = send_down(t, t->out, t->out_len, cb, arg);
  if (rc == 0) t->out_len = 0;
  /* The layer below copied what it could not send at once: out is free again. Once the peer
   * stops reading, keep no large buffer on top of that copy (a stalled reader held both), nor on
   * an idle connection. */
  if (rc == 0 && t->out_cap > OUT_KEEP && dduct__stream_queued(t->lower) > 0) {
    free(t->out);
    t->out = NULL;
    t->out_cap = 0;
  }
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


/* ---- records ------------------------------------------------------------------------------ */

/* The stream whose handshake step runs on this thread: the export callback has no ssl pointer. */
static _Thread_local struct tls_stream *deriving;

static int export_keys_cb(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                          size_t keylen, size_t ivlen, const unsigned char client_random[32],
                          const unsigned char server_random[32], mbedtls_tls_prf_types prf) {
  struct tls_stream *t = deriving;
  (void)p, (void)ms, (void)client_random, (void)server_random, (void)prf;
  if (t != NULL) dduct__records_keys(&t->rec, t->server, kb, maclen, keylen, ivlen);
  return 0;
}

/* After the handshake: take the application records over when tls_records.c has the suite's
 * cipher (DDUCT_TLS_RECORDS=mbedtls leaves every record to mbedTLS). */
static void own_records_setup(struct tls_stream *t) {
  t->own = dduct__records_start(&t->rec, &t->ssl, dduct__diag()->tls_records_mbedtls);
  if (t->own)
    LOG_DEBUG("tls", "application records sealed and opened by libdduct (%s)",
              mbedtls_ssl_get_ciphersuite(&t->ssl));
}

/* Seal one record into the current output (the worker's or the loop's, as cur_out chooses). */
static int own_write(struct tls_stream *t, const unsigned char *data, size_t len) {
  struct out_buf o = cur_out(t);
  size_t n, rec = dduct__records_sealed_size(&t->rec, len, &n);
  unsigned char *r;
  int rc;
  if ((r = reserve(o, rec)) == NULL) return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  if ((rc = dduct__records_seal(&t->rec, &t->ssl, data, n, r)) != 0) return rc;
  *o.len += rec;
  return (int)n;
}

int dduct__tls_record_write(struct tls_stream *t, const unsigned char *data, size_t len) {
  return t->own ? own_write(t, data, len) : mbedtls_ssl_write(&t->ssl, data, len);
}

/* mbedtls_ssl_read's contract (plus DDUCT_RECORDS_FULL): the plaintext of the next record. */
static int record_read(struct tls_stream *t, unsigned char *buf, size_t cap) {
  if (t->own) {
    size_t used = 0;
    int n = dduct__records_open(&t->rec, &t->ssl, (const unsigned char *)t->in + t->in_off,
                                t->in_len - t->in_off, t->lower_eof != 0, buf, cap, &used);
    if (n != DDUCT_RECORDS_NOT_OURS) {
      if (n > 0 && (t->in_off += used) == t->in_len) t->in_off = t->in_len = 0;
      return n;
    }
  }
  /* Another record type, an empty or oversized record, the end of the stream: mbedTLS's. */
  return mbedtls_ssl_read(&t->ssl, buf, cap);
}

int dduct__tls_write_sync(struct tls_stream *t, const char *data, size_t len,
                          dduct_stream_write_cb cb, void *arg) {
  size_t off = 0, end = 0, plain, below;
  below = stacked_record(t, &plain);
  while (off < len) {
    size_t before = t->out_len;
    int n;
    if (off == end) /* our records end where a carried one does */
      end = t->carry ? off + carried_span(t, (const unsigned char *)data + off, len - off) : len;
    n = dduct__tls_record_write(t, (const unsigned char *)data + off, DDUCT_MIN(end - off, plain));
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


int dduct__tls_finish_shutdown(struct tls_stream *t) {
  if (t->handshaken && !t->failed) {
    (void)mbedtls_ssl_close_notify(&t->ssl);
    (void)flush(t, NULL, NULL);
  }
  return dduct__stream_shutdown(t->lower);
}

static int tls_write(struct dduct_stream *s, const char *data, size_t len,
                     dduct_stream_write_cb cb, void *arg) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  int rc;
  if (!t->handshaken || t->failed) return DDUCT_ETLS;
  if (!t->working && t->wq_head == NULL && (len < OFFLOAD_MIN || !dduct__tls_offloadable(t)))
    return dduct__tls_write_sync(t, data, len, cb, arg);
  rc = dduct__tls_enqueue(t, data, len, cb, arg);
  /* Not taken by a running worker: the loop works the queue now, or job_done does once the
   * worker that is just returning is gone. */
  if (rc == 0 && !t->working) dduct__tls_run_queue(t);
  return rc;
}

static int tls_shutdown(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  if (t->working || t->wq_head != NULL) { /* close_notify goes after what waits */
    t->shut_pending = 1;
    return 0;
  }
  return dduct__tls_finish_shutdown(t);
}

static size_t tls_queued(const struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF((struct dduct_stream *)s, struct tls_stream, s);
  /* What a worker took and is encrypting is not counted: a producer waiting for the low-water
   * mark would otherwise resume only once the worker has nothing left, and it would idle while
   * the next chunk is read and handed over. At most JOB_MAX (its plaintext and its records) is
   * outside this figure. A queued plaintext byte counts twice: it will also be a ciphertext byte
   * while it waits below (10 readers of one cold file: 34 -> 30 MiB peak RSS). */
  return t->out_len + 2 * dduct__tls_offload_queued(t) + dduct__stream_queued(t->lower);
}

/* ---- reading ------------------------------------------------------------------------------ */

void dduct__tls_describe(struct tls_stream *t, int rc) {
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

void dduct__tls_fail(struct tls_stream *t, int code) {
  dduct_tls_handshake_cb cb = t->hs_cb;
  if (!t->handshaken && !t->failed) t->handshakes[0]++;
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

static void leaf_ready_cb(void *arg, int status, struct dduct__leaf *ref, mbedtls_x509_crt *chain,
                          mbedtls_pk_context *key);

/* tls_bind: the server_name of the buffered ClientHello, before mbedTLS reads it. A name we
 * intercept gets its leaf now (held; set as the handshake's certificate) or, not cached, minted
 * off the loop while the handshake waits, as for a CONNECT. A ClientHello not read here (no SNI,
 * another form, split over records) or a name not covered: mbedTLS's SNI callback decides, as
 * before. Returns 1 while the first record is not whole yet (wait for more bytes), else 0. */
static int peek_sni(struct tls_stream *t) {
  char name[sizeof(t->sni)];
  mbedtls_x509_crt *chain;
  mbedtls_pk_context *key;
  int rc = dduct__tls_hello_sni((const unsigned char *)t->in + t->in_off, t->in_len - t->in_off,
                                name, sizeof(name));
  if (rc == DDUCT__HELLO_MORE && !t->lower_eof) return 1;
  t->sni_peeked = 1;
  if (rc != 0 || !dduct_ca_covers(t->sni_ca, name)) return 0;
  rc = dduct__ca_leaf_async(t->sni_ca, t->s.loop, name, &t->leaf, &chain, &key, leaf_ready_cb, t,
                            &t->leaf_wait);
  if (rc == 0 && mbedtls_ssl_set_hs_own_cert(&t->ssl, chain, key) != 0) {
    dduct__ca_leaf_put(t->leaf);
    t->leaf = NULL;
    return 0;
  }
  if (rc != 0 && rc != DDUCT__CA_MINTING) return 0;
  memcpy(t->sni, name, strlen(name) + 1);
  t->sni_leaf = 1;
  return 0;
}

static int handshake(struct tls_stream *t) {
  int rc;
  if (t->leaf_wait != NULL) return 1; /* leaf_ready_cb pumps once the certificate is there */
  if (t->sni_ca != NULL && !t->sni_peeked && (peek_sni(t) > 0 || t->leaf_wait != NULL)) return 1;
  deriving = t; /* export_keys_cb runs inside, without a pointer to t */
  rc = mbedtls_ssl_handshake(&t->ssl);
  deriving = NULL;
  (void)flush(t, NULL, NULL);
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
    if (t->lower_eof) {
      snprintf(t->err_text, sizeof(t->err_text), "peer closed during the TLS handshake");
      dduct__tls_fail(t, DDUCT_ETLS);
      return -1;
    }
    return 1;
  }
  if (rc != 0) {
    int verify = !t->server && mbedtls_ssl_get_verify_result(&t->ssl) != 0 &&
                 mbedtls_ssl_get_verify_result(&t->ssl) != (uint32_t)-1;
    dduct__tls_describe(t, rc);
    dduct__tls_fail(t, verify ? DDUCT_EVERIFY : DDUCT_ETLS);
    return -1;
  }
  if (!t->server && t->vip_len > 0 && !peer_names_ip(t)) {
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(t->vip_len == 4 ? AF_INET : AF_INET6, t->vip, ip, sizeof(ip));
    snprintf(t->err_text, sizeof(t->err_text),
             "certificate verification failed: the certificate does not name IP address %s", ip);
    dduct__tls_fail(t, DDUCT_EVERIFY);
    return -1;
  }
  t->handshaken = 1;
  dduct__ca_leaf_put(t->leaf); /* mbedTLS dropped its pointers with the handshake state */
  t->leaf = NULL;
  dduct__tls_offload_ready(t);
  t->handshakes[1]++;
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
            n != DDUCT_RECORDS_FULL) {
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
    dduct__tls_describe(t, n);
    dduct__tls_fail(t, DDUCT_ETLS);
    return;
  }
}

void dduct__tls_pump(struct tls_stream *t) {
  if (t->s.closing || t->failed) return;
  if (t->working) {
    dduct__tls_defer_pump(t);
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
    dduct__tls_defer_pump(t);
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
    dduct__tls_fail(t, DDUCT_ETOOBIG);
    return;
  }
  dduct__tls_pump(t);
}

static void idle_cb(uv_idle_t *h) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(h, struct tls_stream, idle);
  uv_idle_stop(h);
  t->idle_active = 0;
  dduct__tls_pump(t);
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

/* A mint this layer waits for no longer calls it back (the mint goes on and is cached). */
static void stop_waiting(struct tls_stream *t) {
  dduct__ca_leaf_cancel(t->leaf_wait);
  t->leaf_wait = NULL;
}

static void tls_free(struct tls_stream *t) {
  stop_waiting(t);
  while (t->cbs_head != NULL) {
    struct cb_node *n = t->cbs_head;
    t->cbs_head = n->next;
    free(n);
  }
  dduct__tls_offload_free(t);
  mbedtls_ssl_free(&t->ssl);
  dduct__ca_leaf_put(t->leaf);
  dduct__records_free(&t->rec);
  free(t->forced_host);
  free(t->in);
  free(t->out);
  free(t);
}

void dduct__tls_closed_one(struct tls_stream *t) {
  if (--t->pending_closes > 0) return;
  if (t->s.close_cb != NULL) t->s.close_cb(&t->s);
  tls_free(t);
}

static void lower_close_cb(struct dduct_stream *lower) {
  dduct__tls_closed_one(lower->data);
}

static void idle_close_cb(uv_handle_t *h) {
  dduct__tls_closed_one(DDUCT_CONTAINER_OF((uv_idle_t *)h, struct tls_stream, idle));
}

static void tls_close(struct dduct_stream *s) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  stop_waiting(t);
  t->pending_closes = 2 + t->async_init;
  uv_close((uv_handle_t *)&t->idle, idle_close_cb);
  dduct__stream_close(t->lower, lower_close_cb);
  dduct__tls_offload_close(t);
}

static int tls_query(struct dduct_stream *s, enum dduct_stream_query what, void *out) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  switch (what) {
  case DDUCT_STREAM_TLS_SNI: *(const char **)out = t->sni; return 0;
  case DDUCT_STREAM_TLS_ERROR:
    *(const char **)out = t->err_text[0] != '\0' ? t->err_text : "TLS failure";
    return 0;
  case DDUCT_STREAM_CARRY_RECORDS: t->carry = 1; return 0;
  default: return dduct__stream_query(t->lower, what, out);
  }
}

static const struct dduct_stream_vt tls_vt = {
    tls_write, tls_read_start, tls_read_stop, tls_shutdown, tls_close, tls_queued, tls_query,
};

static struct tls_stream *tls_new(const mbedtls_ssl_config *conf, struct dduct_stream *lower) {
  struct tls_stream *t = calloc(1, sizeof(*t));
  if (t == NULL) return NULL;
  mbedtls_ssl_init(&t->ssl);
  if (mbedtls_ssl_setup(&t->ssl, conf) != 0 || dduct__tls_offload_init(t) != 0) {
    mbedtls_ssl_free(&t->ssl);
    free(t);
    return NULL;
  }
  if (uv_idle_init(lower->loop, &t->idle) != 0) {
    dduct__tls_offload_free(t);
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
  stop_waiting(t);
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
  if (t->sni_leaf && strlen(t->sni) == len && memcmp(t->sni, name, len) == 0)
    return 0; /* its leaf was set before the handshake began (peek_sni) */
  if (t->forced_host == NULL && t->leaf != NULL) {
    /* A second, different server_name in one ClientHello (mbedTLS calls back once per name):
     * the first name's leaf is already the handshake's, and dropping our hold on it here would
     * leave mbedTLS presenting a leaf another loop may free. One name per handshake. */
    LOG_WARN("tls_mitm", "refused a ClientHello naming two hosts (\"%s\", then another)", t->sni);
    return -1;
  }
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

void dduct__tls_server_conf_share_tickets(struct dduct_tls_server_conf *c,
                                          struct dduct_tls_server_conf *from) {
  mbedtls_ssl_conf_session_tickets_cb(&c->conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse,
                                      &from->ticket);
}

void dduct__tls_server_conf_free(struct dduct_tls_server_conf *c) {
  if (c == NULL) return;
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_ssl_ticket_free(&c->ticket);
  free(c);
}

/* The CONNECT's (or the peeked SNI's) leaf, minted on the thread pool (dduct__ca_leaf_async): the
 * handshake waited for it (the ClientHello stays buffered), and goes on now. */
static void leaf_ready_cb(void *arg, int status, struct dduct__leaf *ref, mbedtls_x509_crt *chain,
                          mbedtls_pk_context *key) {
  struct tls_stream *t = arg;
  t->leaf_wait = NULL;
  if (status != 0 || mbedtls_ssl_set_hs_own_cert(&t->ssl, chain, key) != 0) {
    dduct__ca_leaf_put(ref);
    snprintf(t->err_text, sizeof(t->err_text), "no certificate for \"%.200s\"",
             t->forced_host != NULL ? t->forced_host : t->sni);
    dduct__tls_fail(t, DDUCT_ETLS);
    return;
  }
  t->leaf = ref;
  dduct__tls_pump(t);
}

struct dduct_stream *dduct__tls_server_new(struct dduct_tls_server_conf *c,
                                           struct dduct_stream *lower, const char *forced_host,
                                           const char *pre, size_t prelen) {
  dduct_stream_read_cb saved_cb = lower->read_cb;
  void *saved_data = lower->data;
  struct tls_stream *t = tls_new(&c->conf, lower);
  if (t == NULL) return NULL;
  t->server = 1;
  t->handshakes = c->handshakes;
  if (forced_host != NULL) {
    mbedtls_x509_crt *chain;
    mbedtls_pk_context *key;
    int rc;
    t->forced_host = dduct__strdup(forced_host);
    if (t->forced_host == NULL) goto fail;
    /* A leaf not cached yet is minted off the loop while the handshake waits (several ms of
     * CPU: every other connection would wait for it); a burst to one host mints it once. */
    rc = dduct__ca_leaf_async(c->ca, lower->loop, forced_host, &t->leaf, &chain, &key,
                              leaf_ready_cb, t, &t->leaf_wait);
    if (rc != 0 && rc != DDUCT__CA_MINTING) goto fail;
    if (rc == 0 && mbedtls_ssl_set_hs_own_cert(&t->ssl, chain, key) != 0) goto fail;
  } else {
    t->sni_ca = c->ca; /* tls_bind: peek_sni reads the name first */
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
                               int quiet, struct dduct_tls_client_conf **out, char *err,
                               size_t errlen) {
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
  if (!loaded && !insecure && !quiet)
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
  client_suites(c->suites);
  mbedtls_ssl_conf_ciphersuites(&c->conf, c->suites);
  mbedtls_ssl_conf_alpn_protocols(&c->conf, alpn_list);
  mbedtls_ssl_conf_ca_chain(&c->conf, &c->roots, NULL);
  mbedtls_ssl_conf_curves(&c->conf, client_curves);
  mbedtls_ssl_conf_export_keys_ext_cb(&c->conf, export_keys_cb, NULL);
  mbedtls_ssl_conf_authmode(&c->conf,
                            insecure ? MBEDTLS_SSL_VERIFY_NONE : MBEDTLS_SSL_VERIFY_REQUIRED);
  if (insecure && !quiet)
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
  t->handshakes = c->handshakes;
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

/* ---- handshake callback ------------------------------------------------------------------------------ */

void dduct__tls_on_handshake(struct dduct_stream *s, dduct_tls_handshake_cb cb, void *arg) {
  struct tls_stream *t = DDUCT_CONTAINER_OF(s, struct tls_stream, s);
  assert(s->vt == &tls_vt);
  t->hs_cb = cb;
  t->hs_arg = arg;
  /* The client speaks first: start the handshake now rather than on the first read. */
  if (!t->server && !t->handshaken) {
    (void)handshake(t);
    if (!t->failed) (void)dduct__stream_read_start(t->lower, lower_read_cb);
  }
}

void dduct__tls_server_handshakes(const struct dduct_tls_server_conf *c, uint64_t out[2]) {
  if (c != NULL) memcpy(out, c->handshakes, sizeof(c->handshakes));
}

void dduct__tls_client_handshakes(const struct dduct_tls_client_conf *c, uint64_t out[2]) {
  if (c != NULL) memcpy(out, c->handshakes, sizeof(c->handshakes));
}
