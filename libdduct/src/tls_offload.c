/* Offloaded encryption: bulk mbedTLS encryption on libuv's thread pool (tls_internal.h).
 *
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
#include <mbedtls/ssl_ciphersuites.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"
#include "internal.h"
#include "tls_internal.h"

/* Not with records written here: libdduct's ChaCha20-Poly1305 (~3-4 GB/s per core) and AES-GCM
 * (~2.5-7 GB/s) cost less than the copy into wq, the hand-off and the worker's buffers (measured
 * with ChaCha20, 512 MiB hits and a 50-client stampede: as fast or faster on the loop, 0.68 vs
 * 0.94 CPU-s per GiB, half the peak RSS). The workers stay for the records mbedTLS keeps: AES-GCM
 * on a CPU without AES-NI (arm64 builds, DDUCT_AESGCM=off), and everything under
 * DDUCT_TLS_RECORDS=mbedtls (tls.c offers no CCM, ARIA or Camellia suite). */
int dduct__tls_offloadable(const struct tls_stream *t) {
  return t->aead && !t->own && t->below == NULL && !t->carry && !dduct__diag()->tls_offload_off;
}

static int suite_is_aead(const mbedtls_ssl_context *ssl) {
  const char *name = mbedtls_ssl_get_ciphersuite(ssl);
  const mbedtls_ssl_ciphersuite_t *cs;
  const mbedtls_cipher_info_t *ci;
  if (name == NULL) return 0;
  cs = mbedtls_ssl_ciphersuite_from_id(mbedtls_ssl_get_ciphersuite_id(name));
  if (cs == NULL || (ci = mbedtls_cipher_info_from_type(cs->cipher)) == NULL) return 0;
  return ci->mode == MBEDTLS_MODE_GCM || ci->mode == MBEDTLS_MODE_CCM ||
         ci->mode == MBEDTLS_MODE_CHACHAPOLY;
}

static void async_close_cb(uv_handle_t *h);

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

int dduct__tls_enqueue(struct tls_stream *t, const char *data, size_t len, dduct_stream_write_cb cb,
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
      int n = dduct__tls_record_write(t, p + off, w->len - off);
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
    if (rc != 0) dduct__tls_describe(t, rc);
    else if (dduct__tls_send_job_down(t, o->buf, o->len, o->w) != 0) rc = -1;
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
      dduct__tls_fail(t, DDUCT_ETLS);
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

/* A large write at the head starts a worker; small ones are encrypted here. */
void dduct__tls_run_queue(struct tls_stream *t) {
  while (!t->working && t->wq_head != NULL && !t->failed && !t->s.closing) {
    struct wq_node *w = t->wq_head;
    int rc;
    if (w->len >= OFFLOAD_MIN && dduct__tls_offloadable(t) && job_start(t) == 0) return;
    uv_mutex_lock(&t->mu);
    if ((t->wq_head = w->next) == NULL) t->wq_tail = NULL;
    t->wq_bytes -= w->len;
    uv_mutex_unlock(&t->mu);
    if (!w->carry && t->carry) { /* queued before the tunnel began: not records to align */
      t->carry = 0;
      rc = dduct__tls_write_sync(t, w->data, w->len, w->cb, w->arg);
      t->carry = 1;
    } else {
      rc = dduct__tls_write_sync(t, w->data, w->len, w->cb, w->arg);
    }
    free(w);
    if (rc != 0) {
      snprintf(t->err_text, sizeof(t->err_text), "TLS write failed (%d)", rc);
      drop_queue(t);
      dduct__tls_fail(t, rc);
      break; /* a shutdown that waited still shuts the lower layer */
    }
  }
  if (!t->working && t->wq_head == NULL && t->shut_pending && !t->s.closing) {
    t->shut_pending = 0;
    (void)dduct__tls_finish_shutdown(t);
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
    dduct__tls_fail(t, DDUCT_ETLS);
    return;
  }
  if (t->failed) { /* nothing more goes out; a shutdown that waited still shuts the lower layer */
    drop_queue(t);
    dduct__tls_run_queue(t);
    return;
  }
  /* Records that arrived meanwhile are read now, between two workers, so a long download does
   * not hold back what the peer sends (and read_cb may write: it queues behind what waits). */
  if (t->pump_deferred) {
    t->pump_deferred = 0;
    dduct__tls_pump(t);
    if (t->s.closing) return;
  }
  dduct__tls_run_queue(t);
}


void dduct__tls_defer_pump(struct tls_stream *t) {
  t->pump_deferred = 1;
  uv_mutex_lock(&t->mu);
  t->stop_worker = 1;
  uv_mutex_unlock(&t->mu);
  if (t->in_len - t->in_off >= OFFLOAD_IN_PAUSE) dduct__stream_read_stop(t->lower);
}



static void async_close_cb(uv_handle_t *h) {
  dduct__tls_closed_one(DDUCT_CONTAINER_OF((uv_async_t *)h, struct tls_stream, async));
}

int dduct__tls_offload_init(struct tls_stream *t) {
  return uv_mutex_init(&t->mu) != 0 ? DDUCT_ENOMEM : 0;
}

void dduct__tls_offload_ready(struct tls_stream *t) {
  t->aead = suite_is_aead(&t->ssl);
}

size_t dduct__tls_offload_queued(struct tls_stream *t) {
  size_t wq;
  uv_mutex_lock(&t->mu);
  wq = t->wq_bytes;
  uv_mutex_unlock(&t->mu);
  return wq;
}

void dduct__tls_offload_close(struct tls_stream *t) {
  /* A running worker may still signal async and uses t: job_done closes async, then the free. */
  if (t->working) {
    uv_mutex_lock(&t->mu);
    t->stop_worker = 1;
    uv_mutex_unlock(&t->mu);
  } else if (t->async_init) {
    uv_close((uv_handle_t *)&t->async, async_close_cb);
  }
}

void dduct__tls_offload_free(struct tls_stream *t) {
  drop_queue(t);
  drop_done(t);
  if (t->spare != NULL) enc_free(t->spare);
  uv_mutex_destroy(&t->mu);
}
