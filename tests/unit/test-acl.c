/* allow_clients CIDRs, resolve pins and the address helpers used for loop detection. */
#include <arpa/inet.h>
#include <string.h>

#include "acl.h"
#include "internal.h"
#include "resolve.h"
#include "tap.h"

static struct sockaddr_storage ip(const char *s) {
  struct sockaddr_storage ss;
  if (dduct__ip_literal(s, 1234, &ss) != 0) memset(&ss, 0, sizeof(ss));
  return ss;
}

#define SA(x) ((const struct sockaddr *)&(x))

static void test_cidrs(void) {
  const char *list[] = {"127.0.0.1/32", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7", "192.0.2.7"};
  struct dduct_acl acl;
  char err[128] = "";
  struct sockaddr_storage a;
  CHECK_EQ_INT(dduct__acl_init(&acl, list, 5, err, sizeof(err)), 0, "a valid list loads");
  a = ip("127.0.0.1");
  CHECK(dduct__acl_match(&acl, SA(a)), "127.0.0.1 is in 127.0.0.1/32");
  a = ip("127.0.0.2");
  CHECK(!dduct__acl_match(&acl, SA(a)), "127.0.0.2 is not in 127.0.0.1/32");
  a = ip("172.31.255.255");
  CHECK(dduct__acl_match(&acl, SA(a)), "last address of 172.16.0.0/12 matches");
  a = ip("172.32.0.0");
  CHECK(!dduct__acl_match(&acl, SA(a)), "first address after 172.16.0.0/12 does not");
  a = ip("fdff::1");
  CHECK(dduct__acl_match(&acl, SA(a)), "fdff::1 is in fc00::/7");
  a = ip("fe00::1");
  CHECK(!dduct__acl_match(&acl, SA(a)), "fe00::1 is not in fc00::/7");
  a = ip("::ffff:10.1.2.3");
  CHECK(dduct__acl_match(&acl, SA(a)), "a v4-mapped v6 address matches its v4 CIDR");
  a = ip("192.0.2.7");
  CHECK(dduct__acl_match(&acl, SA(a)), "a bare address is a host route");
  dduct__acl_free(&acl);
}

static void test_bad_cidrs(void) {
  const char *bad[][1] = {{"10.0.0.0/33"}, {"::/129"}, {"10.0.0/8"}, {"10.0.0.0/"}, {"x"},
                          {"10.0.0.0/8x"}};
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(bad); i++) {
    struct dduct_acl acl;
    char err[128] = "";
    CHECK_EQ_INT(dduct__acl_init(&acl, bad[i], 1, err, sizeof(err)), DDUCT_ECONFIG,
                 "an invalid CIDR is refused");
    CHECK(strstr(err, bad[i][0]) != NULL, "the message names the bad entry");
  }
}

static void test_pins(void) {
  const char *list[] = {"Registry.Test:127.0.0.1", "v6.test:[::1]", "bare6.test:::1"};
  const char *bad[] = {"noaddress"};
  struct dduct_pins pins;
  const struct sockaddr *sa;
  char err[128] = "", s[80];
  CHECK_EQ_INT(dduct__pins_init(&pins, list, 3, err, sizeof(err)), 0, "pins load");
  sa = dduct__pins_lookup(&pins, "registry.test");
  CHECK(sa != NULL && sa->sa_family == AF_INET, "lookup is case-insensitive");
  sa = dduct__pins_lookup(&pins, "v6.test");
  CHECK(sa != NULL && sa->sa_family == AF_INET6, "bracketed IPv6 pin");
  if (sa != NULL) {
    dduct__addr_str(sa, s, sizeof(s));
    CHECK_EQ_STR(s, "[::1]:0", "IPv6 formats with brackets");
  }
  CHECK(dduct__pins_lookup(&pins, "bare6.test") != NULL, "bare IPv6 pin");
  CHECK(dduct__pins_lookup(&pins, "other.test") == NULL, "unpinned host is not found");
  dduct__pins_free(&pins);
  CHECK_EQ_INT(dduct__pins_init(&pins, bad, 1, err, sizeof(err)), DDUCT_ECONFIG,
               "an entry without an address is refused");
  CHECK(strstr(err, "noaddress") != NULL, "the message names it");
}

static void test_addr_helpers(void) {
  struct sockaddr_storage a = ip("127.0.0.5"), b = ip("::ffff:127.0.0.5"), any = ip("0.0.0.0"),
                          any6 = ip("::"), lo6 = ip("::1"), pub = ip("192.0.2.1");
  CHECK(dduct__addr_same_ip(SA(a), SA(b)), "v4 equals its v4-mapped form");
  CHECK(dduct__addr_is_any(SA(any)) && dduct__addr_is_any(SA(any6)), "wildcards");
  CHECK(dduct__addr_is_loopback(SA(a)) && dduct__addr_is_loopback(SA(lo6)), "loopbacks");
  CHECK(!dduct__addr_is_loopback(SA(pub)), "a public address is not loopback");
  CHECK_EQ_INT(dduct__addr_port(SA(a)), 1234, "port read back");
}

static void test_client_counts(void) {
  struct dduct_clients t = {0};
  struct sockaddr_storage a = ip("192.0.2.1"), b = ip("::ffff:192.0.2.1"), c = ip("2001:db8::1");
  CHECK(dduct__clients_take(&t, SA(a), 2) == 0 && dduct__clients_take(&t, SA(b), 2) == 0,
        "two connections from 192.0.2.1 (one as a v4-mapped v6 address)");
  CHECK_EQ_INT(dduct__clients_take(&t, SA(a), 2), DDUCT_EAGAIN, "a third is refused");
  CHECK(dduct__clients_take(&t, SA(c), 2) == 0, "another address has its own count");
  dduct__clients_release(&t, SA(b));
  CHECK(dduct__clients_take(&t, SA(a), 2) == 0, "a released slot can be taken again");
  dduct__clients_release(&t, SA(a));
  dduct__clients_release(&t, SA(a));
  dduct__clients_release(&t, SA(c));
  CHECK(dduct__clients_take(&t, SA(a), 1) == 0, "all released: the entry starts over");
  dduct__clients_release(&t, SA(a));
  dduct__clients_free(&t);
}

int main(void) {
  test_cidrs();
  test_client_counts();
  test_bad_cidrs();
  test_pins();
  test_addr_helpers();
  return tap_done();
}
