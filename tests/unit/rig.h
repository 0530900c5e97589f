/* What the unit tests share: repeatable test bodies, and for those that run a real proxy on a real
 * loop, a free port to listen on and a plain-HTTP client that sends one request through the
 * proxy and reads the answer until close. */
#ifndef DDUCT_TEST_RIG_H
#define DDUCT_TEST_RIG_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* n bytes of a repeatable pseudo-random pattern (xorshift) chosen by seed: test bodies whose
 * every byte matters. */
void rig_fill_pattern(char *p, size_t n, uint32_t seed);

/* A loopback TCP port free right now (the listen API wants one; a race with another binder is
 * unlikely); 0 if none could be had. */
uint16_t rig_free_port(void);

struct rig_client {
  uv_tcp_t tcp;
  uv_connect_t conn;
  uv_write_t w;
  char req[512], resp[4096]; /* the answer, NUL-terminated, cut at 4095 bytes */
  size_t len;
  int done; /* the proxy closed the connection (or it failed) */
};

/* Send "GET http://127.0.0.1:origin_port<path>" with Connection: close to the proxy on
 * 127.0.0.1:proxy_port; the answer accumulates in c->resp until c->done. */
void rig_client_start(uv_loop_t *loop, struct rig_client *c, uint16_t proxy_port,
                      uint16_t origin_port, const char *path);
/* The body of the answer so far ("" before the head ended). */
const char *rig_client_body(const struct rig_client *c);
/* rig_client_start, then run loop until the connection closes: the body. */
const char *rig_fetch(uv_loop_t *loop, struct rig_client *c, uint16_t proxy_port,
                      uint16_t origin_port, const char *path);

#endif
