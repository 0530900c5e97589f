/* chain.c: the upstream proxy URL and its bypass list, and the parent tier's rendezvous order. */
#include <stdio.h>
#include <string.h>

#include "chain.h"
#include "internal.h"
#include "tap.h"

static void test_proxy_url(void) {
  struct dduct_uproxy x;
  char err[256] = "";
  const char *np[] = {"*.corp.example", ".intra.example", "localhost", "10.0.0.0/8", "192.0.2.7"};
  CHECK_EQ_INT(dduct__uproxy_init(&x, NULL, NULL, 0, err, sizeof(err)), 0, "no proxy");
  CHECK(!dduct__uproxy_applies(&x, "example.com"), "no proxy: everything direct");
  dduct__uproxy_free(&x);

  CHECK_EQ_INT(dduct__uproxy_init(&x, "http://al%40ice:p%3Ass@proxy.corp:3128", np, 5, err,
                                  sizeof(err)),
               0, "a proxy with percent-encoded credentials");
  CHECK_EQ_STR(x.host, "proxy.corp", "host");
  CHECK_EQ_INT(x.port, 3128, "port");
  CHECK_EQ_STR(x.user, "al@ice", "user decoded");
  /* base64("al@ice:p:ss") */
  CHECK_EQ_STR(x.auth, "Basic YWxAaWNlOnA6c3M=", "Basic credentials");
  CHECK_EQ_STR(x.shown, "http://proxy.corp:3128", "shown without credentials");
  CHECK(dduct__uproxy_applies(&x, "registry-1.docker.io"), "other hosts go through it");
  CHECK(!dduct__uproxy_applies(&x, "git.corp.example"), "*.corp.example: a subdomain bypasses");
  CHECK(!dduct__uproxy_applies(&x, "A.B.CORP.EXAMPLE."), "case and a trailing dot ignored");
  CHECK(dduct__uproxy_applies(&x, "corp.example"), "*.corp.example: not the name itself");
  CHECK(dduct__uproxy_applies(&x, "intra.example"), ".intra.example: not the name itself");
  CHECK(!dduct__uproxy_applies(&x, "x.intra.example"), ".intra.example: a subdomain");
  CHECK(dduct__uproxy_applies(&x, "xintra.example"), "a suffix is not a subdomain");
  CHECK(!dduct__uproxy_applies(&x, "localhost"), "a name");
  CHECK(!dduct__uproxy_applies(&x, "a.localhost"), "a name covers its subdomains");
  CHECK(dduct__uproxy_applies(&x, "notlocalhost"), "but not a longer name");
  CHECK(!dduct__uproxy_applies(&x, "10.1.2.3"), "an IP in a CIDR");
  CHECK(!dduct__uproxy_applies(&x, "192.0.2.7"), "a bare address");
  CHECK(dduct__uproxy_applies(&x, "192.0.2.8"), "an IP outside the CIDRs");
  dduct__uproxy_free(&x);

  CHECK_EQ_INT(dduct__uproxy_init(&x, "https://[::1]:8443", NULL, 0, err, sizeof(err)), 0,
               "an https proxy on IPv6");
  CHECK(x.https && x.port == 8443 && strcmp(x.host, "::1") == 0 && x.auth == NULL, "parsed");
  dduct__uproxy_free(&x);
  CHECK_EQ_INT(dduct__uproxy_init(&x, "http://proxy", NULL, 0, err, sizeof(err)), 0,
               "default port");
  CHECK_EQ_INT(x.port, 80, "http default port 80");
  dduct__uproxy_free(&x);
  CHECK_EQ_INT(dduct__uproxy_init(&x, "socks5://p:1080", NULL, 0, err, sizeof(err)),
               DDUCT_ECONFIG, "another scheme is refused");
  CHECK_EQ_INT(dduct__uproxy_init(&x, "http://u:sekrit@p:1/path", NULL, 0, err, sizeof(err)),
               DDUCT_ECONFIG, "a path is refused");
  CHECK(strstr(err, "sekrit") == NULL, "the message never repeats the password");
  CHECK_EQ_INT(dduct__uproxy_init(&x, "http://u:%zz@p:1", NULL, 0, err, sizeof(err)),
               DDUCT_ECONFIG, "a bad escape is refused");
}

static void test_rendezvous(void) {
  const char *two[] = {"https://p1.test:4430", "https://p2.test:4430"};
  const char *three[] = {"https://p1.test:4430", "https://p2.test:4430", "https://p3.test:4430"};
  struct dduct_parents ps2, ps3;
  char err[256] = "", key[32];
  size_t order[DDUCT__PARENTS_MAX], count2[2] = {0, 0}, moved = 0, moved_to_new = 0;
  enum { KEYS = 3000 };
  CHECK_EQ_INT(dduct__parents_init(&ps2, two, 2, 1000, err, sizeof(err)), 0, "two parents");
  CHECK_EQ_INT(dduct__parents_init(&ps3, three, 3, 1000, err, sizeof(err)), 0, "three parents");
  for (int k = 0; k < KEYS; k++) {
    size_t n2, n3, first2;
    snprintf(key, sizeof(key), "c/%02x/key%d", k & 0xff, k);
    n2 = dduct__parents_order(&ps2, key, 0, order);
    first2 = order[0];
    if (n2 != 2) break;
    count2[first2]++;
    n3 = dduct__parents_order(&ps3, key, 0, order);
    if (n3 != 3) break;
    if (order[0] != first2) {
      moved++;
      if (order[0] == 2) moved_to_new++;
    }
  }
  CHECK(count2[0] + count2[1] == KEYS, "every key has an order of both parents");
  CHECK(count2[0] > KEYS * 4 / 10 && count2[1] > KEYS * 4 / 10,
        "two parents split the keys roughly evenly");
  CHECK(moved == moved_to_new, "adding a parent moves keys only to the new parent");
  CHECK(moved > KEYS / 4 && moved < KEYS * 4 / 10, "and about a third of them");
  dduct__parents_order(&ps2, "some/key", 0, order);
  {
    size_t first = order[0], second = order[1];
    CHECK(dduct__parents_mark_down(&ps2, first, 100) == 1, "marking down an up parent");
    CHECK(dduct__parents_mark_down(&ps2, first, 100) == 0, "twice: it was already down");
    CHECK_EQ_INT(dduct__parents_order(&ps2, "some/key", 500, order), 1, "a down parent is skipped");
    CHECK_EQ_INT(order[0], second, "the next in hash order takes the key");
    CHECK_EQ_INT(dduct__parents_order(&ps2, "some/key", 1100, order), 2, "up again after down_ms");
    CHECK_EQ_INT(order[0], first, "and first again");
  }
  dduct__parents_free(&ps2);
  dduct__parents_free(&ps3);
  CHECK_EQ_INT(dduct__parents_init(&ps2, (const char *[]){"https://p:1", "https://p:1"}, 2, 1,
                                   err, sizeof(err)),
               DDUCT_ECONFIG, "a parent listed twice");
  CHECK_EQ_INT(dduct__parents_init(&ps2, (const char *[]){"https://p:1/x"}, 1, 1, err,
                                   sizeof(err)),
               DDUCT_ECONFIG, "a parent with a path");
}

int main(void) {
  test_proxy_url();
  test_rendezvous();
  return tap_done();
}
