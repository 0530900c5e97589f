/* The TLS stream layer's parts, shared by tls.c (the layer: handshake, reading, writing on the
 * loop, lifetime) and tls_offload.c (bulk encryption on libuv's thread pool). The record format
 * itself is behind tls_records.h. Internal to those files. */
#ifndef DDUCT_TLS_INTERNAL_H
#define DDUCT_TLS_INTERNAL_H

#include <mbedtls/ssl.h>

#include "tls.h"
#include "tls_records.h"

#define TLS_PLAIN_CHUNK (16 * 1024)
/* Writes this large are encrypted on libuv's thread pool (tls_offload.c): below it the hand-off
 * costs more than it saves. A 128 KiB store chunk is 8 records. */
#define OFFLOAD_MIN (32 * 1024)
#define JOB_MAX (128 * 1024) /* plaintext a worker takes from wq at once: one store chunk */
/* While a job runs no record is read; stop reading below once this much ciphertext waits. */
#define OFFLOAD_IN_PAUSE (256 * 1024)

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
  uint64_t *handshakes; /* the conf's counters: [0] failed, [1] ok */
  int lower_eof; /* 0, or the UV_EOF/error the lower layer reported */
  int eof_delivered;
  char *forced_host;
  struct dduct__leaf *leaf; /* server: the minted leaf held until the handshake is over */
  struct dduct__leaf_wait *leaf_wait; /* server: its leaf is being minted (the handshake waits) */
  /* Server on tls_bind: the ClientHello's server_name is read before mbedTLS starts (its SNI
   * callback cannot wait), and a covered name's leaf obtained off the loop (tls_hello.h). */
  struct dduct_ca *sni_ca;
  int sni_peeked; /* done (whatever it found) */
  int sni_leaf;   /* sni holds the peeked name, whose leaf is set or being minted */
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
  /* Offloaded encryption (tls_offload.c). While working is set a worker owns
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
  /* Application records sealed and opened here (tls_records.h). */
  struct dduct_records rec;
  int own;                /* rec has a cipher: application records are ours, not mbedTLS's */
};


/* Where ciphertext goes: the worker's own output while it encrypts (sized for the group, so it
 * does not grow), never out, which the loop reads; out otherwise (wout is NULL whenever the loop
 * calls mbedTLS or seals records). */
struct out_buf {
  char **p;
  size_t *len, *cap;
};

/* tls.c */
/* mbedtls_ssl_write's contract: one record of data[0..len) into the current output. */
int dduct__tls_record_write(struct tls_stream *t, const unsigned char *data, size_t len);
/* Encrypt on the loop thread, now (no job may be in flight), and send down. */
int dduct__tls_write_sync(struct tls_stream *t, const char *data, size_t len,
                          dduct_stream_write_cb cb, void *arg);
/* A job's records go down in one write; each of its writes' callbacks fires when that one does. */
int dduct__tls_send_job_down(struct tls_stream *t, const char *buf, size_t len,
                             const struct wq_node *w);
void dduct__tls_describe(struct tls_stream *t, int rc);
void dduct__tls_fail(struct tls_stream *t, int code);
void dduct__tls_pump(struct tls_stream *t);
/* close_notify (after the handshake), then the layer below shuts down. */
int dduct__tls_finish_shutdown(struct tls_stream *t);
void dduct__tls_closed_one(struct tls_stream *t);

/* tls_offload.c */
int dduct__tls_offload_init(struct tls_stream *t);
/* After the handshake: whether the suite's records may be encrypted by a worker. */
void dduct__tls_offload_ready(struct tls_stream *t);
/* 1 if a write of OFFLOAD_MIN bytes or more goes to a worker. */
int dduct__tls_offloadable(const struct tls_stream *t);
/* Queue a copy of a write (a running worker takes it too). */
int dduct__tls_enqueue(struct tls_stream *t, const char *data, size_t len,
                       dduct_stream_write_cb cb, void *arg);
/* Work the queue while no worker runs, then a deferred shutdown. */
void dduct__tls_run_queue(struct tls_stream *t);
/* A worker owns ssl: ask it to stop; its end reads (pump). */
void dduct__tls_defer_pump(struct tls_stream *t);
/* Plaintext bytes waiting in the queue (not what a worker took). */
size_t dduct__tls_offload_queued(struct tls_stream *t);
/* Closing: stop a running worker, or close the async handle (ends in dduct__tls_closed_one). */
void dduct__tls_offload_close(struct tls_stream *t);
void dduct__tls_offload_free(struct tls_stream *t);

#endif
