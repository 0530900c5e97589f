/* The proxy's lifetime on a real loop: listen, close, and a close callback that frees the proxy
 * (as uv_close callbacks free handles). Under ASan this catches any use of the proxy after its
 * close callback. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dduct.h"
#include "internal.h"
#include "rig.h"
#include "tap.h"

static uv_loop_t loop;
static int closed_calls;

static void freeing_close_cb(struct dduct_proxy *p, void *user_data) {
  closed_calls++;
  CHECK(user_data == &loop, "the close callback gets its user data");
  dduct_proxy_free(p); /* the proxy must not be touched after this */
}


static void test_close_callback_may_free(void) {
  char dir[] = "/tmp/dduct-test-proxy-XXXXXX";
  char err[256] = "", path[300];
  struct dduct_ca_options co;
  struct dduct_ca *ca = NULL;
  struct dduct_proxy *p = NULL;
  static const char *const files[] = {"ca.key",     "ca.crt",     "server.key", "server.crt",
                                      "server.p12", "client.key", "client.crt", "client.p12"};

  CHECK(mkdtemp(dir) != NULL, "a temp cert_dir");
  snprintf(path, sizeof(path), "%s/", dir);
  dduct_ca_options_init(&co);
  co.cert_dir = path;
  co.rsa_key_bits = 2048;
  CHECK_EQ_INT(dduct_ca_open(&co, &ca, err, sizeof(err)), 0, "a CA in the temp dir");
  CHECK_EQ_INT(dduct_proxy_new(&loop, NULL, ca, NULL, NULL, &p, err, sizeof(err)), 0,
               "a proxy with default options");
  snprintf(path, sizeof(path), "127.0.0.1:%u", rig_free_port());
  CHECK_EQ_INT(dduct_proxy_listen(p, DDUCT_LISTEN_TCP, path, err, sizeof(err)), 0,
               "listening on a free port");
  dduct_proxy_close(p, freeing_close_cb, &loop);
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0, "the loop ends once the proxy closed");
  CHECK_EQ_INT(closed_calls, 1, "the close callback ran once");
  dduct_ca_free(ca);
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(files); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    (void)unlink(path);
  }
  rmdir(dir);
}

int main(void) {
  uv_loop_init(&loop);
  test_close_callback_may_free();
  CHECK_EQ_INT(uv_loop_close(&loop), 0, "every handle closed");
  return tap_done();
}
