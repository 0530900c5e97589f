/* The transport chain: TCP at the bottom, any number of TLS layers above it (tls.h), all behind
 * one small interface so that plain HTTP, HTTPS-proxy, an intercepted CONNECT and TLS-in-TLS
 * compose without special cases (curl's connection filters are the model).
 *
 * Rules every layer keeps:
 * - Writes copy their bytes: the caller's buffer is free again when write() returns. The optional
 *   callback fires once the bytes left this process (or the layer below took them), which is the
 *   moment to check dduct__stream_queued() and resume a paused producer. A TLS layer may still
 *   be encrypting queued bytes on a worker thread (tls.h); queued() counts them, and callbacks
 *   fire in write order either way.
 * - Backpressure: a producer stops reading its source while dduct__stream_queued() of its sink is
 *   above DDUCT_STREAM_HIGH_WATER and resumes from a write callback once it is below
 *   DDUCT_STREAM_LOW_WATER. Together with read_stop() this bounds every queue.
 * - Read data handed to read_cb is borrowed for the call. nread < 0 is UV_EOF or an error and is
 *   the last read callback.
 * - After dduct__stream_close() no callback fires except the close callback (pending write
 *   callbacks are dropped): the owner tears its state down in one place.
 * - A layer owns the layer below it: closing the top closes the chain.
 * - Nobody casts a stream to its layer's type: a property of the chain (a TLS layer's SNI name, its
 *   error text) is asked through query(), which a layer answers or passes down (as curl's
 *   connection filters answer queries down the chain).
 */
#ifndef DDUCT_STREAM_H
#define DDUCT_STREAM_H

#include <stddef.h>
#include <uv.h>

#define DDUCT_STREAM_HIGH_WATER (256 * 1024)
#define DDUCT_STREAM_LOW_WATER (64 * 1024)

struct dduct_stream;

/* What query() asks; a layer that does not know passes it to the layer below. */
enum dduct_stream_query {
  DDUCT_STREAM_TLS_SNI,       /* out: const char **, the SNI name the client sent ("" if none) */
  DDUCT_STREAM_TLS_ERROR,     /* out: const char **, why the TLS layer failed (owned by it) */
  DDUCT_STREAM_CARRY_RECORDS, /* out: NULL; a request: the peer's bytes are TLS records (tls.h) */
};

typedef void (*dduct_stream_read_cb)(struct dduct_stream *s, ssize_t nread, const char *data);
typedef void (*dduct_stream_write_cb)(struct dduct_stream *s, int status, void *arg);
typedef void (*dduct_stream_close_cb)(struct dduct_stream *s);

struct dduct_stream_vt {
  int (*write)(struct dduct_stream *s, const char *data, size_t len, dduct_stream_write_cb cb,
               void *arg);
  int (*read_start)(struct dduct_stream *s);
  void (*read_stop)(struct dduct_stream *s);
  int (*shutdown)(struct dduct_stream *s); /* no more writes: FIN / close_notify after queue */
  void (*close)(struct dduct_stream *s);   /* begin closing; ends in s->close_cb then free */
  size_t (*queued)(const struct dduct_stream *s);
  int (*query)(struct dduct_stream *s, enum dduct_stream_query what, void *out); /* may be NULL */
};

struct dduct_stream {
  const struct dduct_stream_vt *vt;
  void *data;                 /* the owner's pointer */
  dduct_stream_read_cb read_cb;
  dduct_stream_close_cb close_cb;
  uv_loop_t *loop;
  int reading;
  int closing;
};

/* A TCP stream around an initialised uv_tcp_t the stream now owns (it is embedded in a
 * heap block the stream frees after uv_close). Used for accepted and outgoing sockets. */
struct dduct_stream *dduct__tcp_stream_new(uv_loop_t *loop);
uv_tcp_t *dduct__tcp_stream_handle(struct dduct_stream *s);

int dduct__stream_write(struct dduct_stream *s, const char *data, size_t len,
                        dduct_stream_write_cb cb, void *arg);
int dduct__stream_read_start(struct dduct_stream *s, dduct_stream_read_cb cb);
void dduct__stream_read_stop(struct dduct_stream *s);
int dduct__stream_shutdown(struct dduct_stream *s);
void dduct__stream_close(struct dduct_stream *s, dduct_stream_close_cb cb);
size_t dduct__stream_queued(const struct dduct_stream *s);
/* 0 when a layer of the chain answered, DDUCT_EINVAL when none did (out untouched). */
int dduct__stream_query(struct dduct_stream *s, enum dduct_stream_query what, void *out);
/* The chain's answer to a query for a string, or fallback. */
const char *dduct__stream_query_str(struct dduct_stream *s, enum dduct_stream_query what,
                                    const char *fallback);

#endif
