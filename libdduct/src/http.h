/* HTTP/1.1 message heads: a bounded header list, llhttp-driven parsing (strict), serialization,
 * hop-by-hop rules (RFC 9110 7.6.1, RFC 9112) and body framing. No I/O here. */
#ifndef DDUCT_HTTP_H
#define DDUCT_HTTP_H

#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>

#define DDUCT_HTTP_HEAD_MAX (64 * 1024) /* bytes of a head (request line + headers); 431 beyond */
#define DDUCT_HTTP_HEADERS_MAX 200

struct dduct_http_header {
  uint32_t name, value; /* offsets of NUL-terminated strings in head->buf */
  uint32_t name_len, value_len;
};

/* A request or response head. Strings live in buf (capped at DDUCT_HTTP_HEAD_MAX). */
struct dduct_http_head {
  uint32_t method;       /* request: offset of the method in buf */
  uint32_t target;       /* request: offset of the request-target */
  int status;            /* response */
  uint32_t reason;       /* response: offset of the reason phrase */
  int major, minor;
  struct dduct_http_header h[DDUCT_HTTP_HEADERS_MAX];
  size_t n;
  char *buf;
  size_t len, cap;
};

void dduct__http_head_init(struct dduct_http_head *h);
void dduct__http_head_reset(struct dduct_http_head *h);
void dduct__http_head_free(struct dduct_http_head *h);
/* Copy src into dst (dst initialised). */
int dduct__http_head_copy(struct dduct_http_head *dst, const struct dduct_http_head *src);

/* Accessors for the strings in buf ("" when unset). */
const char *dduct__http_str(const struct dduct_http_head *h, uint32_t off);
#define dduct__http_method(h) dduct__http_str((h), (h)->method)
#define dduct__http_target(h) dduct__http_str((h), (h)->target)
#define dduct__http_reason(h) dduct__http_str((h), (h)->reason)
const char *dduct__http_hname(const struct dduct_http_head *h, size_t i);
const char *dduct__http_hvalue(const struct dduct_http_head *h, size_t i);

/* Builders: 0, or DDUCT_ETOOBIG when the head would pass its caps. */
int dduct__http_set_request_line(struct dduct_http_head *h, const char *method, const char *target);
int dduct__http_set_status(struct dduct_http_head *h, int status, const char *reason);
/* RFC 9110 6.4.1: a response to HEAD, a 1xx, 204 or 304 has no body, whatever its
 * Content-Length says (the one no-body rule: conn.c frames by it, upstream.c reads by it). */
int dduct__http_no_body(int is_head, int status);
/* The status a proxy answers for an origin failure: 508 loop, 504 timeout, else 502. */
int dduct__http_status_for_error(int err);

/* An origin: scheme, host (an IPv6 literal without brackets), port. */
struct dduct_origin {
  int https;
  const char *host;
  unsigned port;
};
#define DDUCT_ORIGIN_PORT 1u      /* always write the port (else the scheme's default is left out) */
#define DDUCT_ORIGIN_NO_SCHEME 2u /* host[:port] alone (a Host header, a CONNECT authority) */
/* The one formatter of "scheme://host[:port]": an IPv6 literal host goes in brackets. Writes at
 * most len bytes, always terminated (len > 0), like snprintf; returns the length it wanted. */
int dduct__origin_format(char *buf, size_t len, const struct dduct_origin *o, unsigned flags);
int dduct__http_add(struct dduct_http_head *h, const char *name, const char *value);
int dduct__http_addn(struct dduct_http_head *h, const char *name, size_t nlen, const char *value,
                     size_t vlen);
/* Remove every header with this name (case-insensitive); returns how many. */
size_t dduct__http_remove(struct dduct_http_head *h, const char *name);
/* The first value of name, or NULL. */
const char *dduct__http_get(const struct dduct_http_head *h, const char *name);
/* Call fn for each comma-separated, trimmed token of every `name` header until it returns
 * non-zero; returns 1 then, else 0. */
int dduct__http_each_token(const struct dduct_http_head *h, const char *name,
                           int (*fn)(const char *tok, size_t len, void *arg), void *arg);
/* 1 if a comma-separated header name (e.g. Connection) lists token (case-insensitive). */
int dduct__http_has_token(const struct dduct_http_head *h, const char *name, const char *token);

/* The header table: what dduct knows of a header name's role. */
#define DDUCT_HDR_HOP 1u    /* hop-by-hop (RFC 9110 7.6.1): never passed on to the next hop */
#define DDUCT_HDR_ENGINE 2u /* framing and connection management dduct writes itself:
                             * Connection, Keep-Alive, Proxy-Connection, Content-Length,
                             * Transfer-Encoding (never copied from a head it answers with) */
/* The classes of a header name (len bytes, case-insensitive): 0 for an end-to-end header. */
unsigned dduct__http_header_class(const char *name, size_t len);

/* Drop the hop-by-hop headers: Connection and every header it names, Keep-Alive,
 * Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding,
 * Upgrade. Content-Length is kept: framing decides about it. */
void dduct__http_strip_hop_by_hop(struct dduct_http_head *h);

/* Serialize "METHOD target HTTP/1.1" or "HTTP/1.1 status reason", the headers and the blank
 * line into out[0..cap); returns the length, or DDUCT_ETOOBIG. */
int dduct__http_serialize_request(const struct dduct_http_head *h, char *out, size_t cap);
int dduct__http_serialize_response(const struct dduct_http_head *h, char *out, size_t cap);

/* A chunk header for len bytes ("1a2b\r\n") into out[20]; returns its length. */
size_t dduct__http_chunk_header(char *out, size_t len);

/* Split an absolute URL "http://host[:port]/path?q" (or authority "host:port" for CONNECT).
 * host is copied without brackets into host[hostcap]; path points into url ("/" if empty).
 * Returns 0 or DDUCT_EPROTO. is_https is set from the scheme. */
int dduct__http_parse_url(const char *url, int *is_https, char *host, size_t hostcap,
                          uint16_t *port, const char **path);
int dduct__http_parse_authority(const char *auth, char *host, size_t hostcap, uint16_t *port,
                                uint16_t default_port);

/* ---- parser ------------------------------------------------------------------------------- */

struct dduct_http_parser;
struct dduct_http_parser_cbs {
  /* The head is complete in p->head. Return 0 to continue, 1 to skip the body (responses to
   * HEAD), or 2 to pause right after the head (execute returns DDUCT_HTTP_PAUSED). */
  int (*on_head)(struct dduct_http_parser *p);
  void (*on_body)(struct dduct_http_parser *p, const char *data, size_t len);
  /* Return 1 to pause after the message (pipelining), 0 to keep parsing. */
  int (*on_done)(struct dduct_http_parser *p);
};

#define DDUCT_HTTP_PAUSED 1
#define DDUCT_HTTP_UPGRADE 2

struct dduct_http_parser {
  llhttp_t ll;
  llhttp_settings_t settings;
  const struct dduct_http_parser_cbs *cbs;
  void *data;
  struct dduct_http_head head;
  int in_head;         /* still collecting the head */
  int too_big;         /* 431 (a request), 502 (a response) */
  int target_too_big;  /* the request target alone went past the limit: 414 */
  int response;        /* parsing responses */
  int hdr_open;        /* a string (url, reason, field or value) is being collected */
  size_t head_bytes;
  const char *err_reason;
  const char *bad_reason; /* set by our callbacks when they refuse what llhttp accepted */
  /* Where the current execute's bytes are, and where the current header value's last piece
   * ended: a value whose next piece does not start right there was folded (fold()). */
  const char *exec_start, *exec_end;
  unsigned exec_no, val_exec_no;
  const char *val_end;
  int val_pieces, val_end_at_buf_end;
};

void dduct__http_parser_init(struct dduct_http_parser *p, int response,
                             const struct dduct_http_parser_cbs *cbs, void *data);
void dduct__http_parser_free(struct dduct_http_parser *p);
/* Feed data. Returns 0 (all consumed), DDUCT_HTTP_PAUSED or DDUCT_HTTP_UPGRADE with *consumed
 * telling how much was used, or DDUCT_EPROTO (malformed: p->err_reason) / DDUCT_ETOOBIG (the head
 * is over DDUCT_HTTP_HEAD_MAX: 431, or 414 when p->target_too_big; err_reason says "request
 * head too large", "request target too long" or, for a response, "response head too large"). */
int dduct__http_parser_execute(struct dduct_http_parser *p, const char *data, size_t len,
                               size_t *consumed);
/* Continue after a pause (or an upgrade, for a CONNECT handled by the caller). */
void dduct__http_parser_resume(struct dduct_http_parser *p);
/* The peer closed: 0 if that ends the message cleanly (close-delimited body), else EPROTO. */
int dduct__http_parser_finish(struct dduct_http_parser *p);
/* Facts about the current message, valid from on_head. */
int dduct__http_parser_keep_alive(const struct dduct_http_parser *p);
int dduct__http_parser_chunked(const struct dduct_http_parser *p);
/* Content-Length, or -1 when absent. */
int64_t dduct__http_parser_content_length(const struct dduct_http_parser *p);
/* 1 if the message carries a body (a length > 0, chunked, or close-delimited response). */
int dduct__http_parser_has_body(const struct dduct_http_parser *p);

#endif
