/* CIDR lists (allow_clients) and address helpers. Pure: no I/O. */
#ifndef DDUCT_ACL_H
#define DDUCT_ACL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct dduct_cidr {
  int family;            /* AF_INET or AF_INET6 */
  unsigned char addr[16];
  unsigned bits;
};

struct dduct_acl {
  struct dduct_cidr *v;
  size_t n;
};

/* Parse "a.b.c.d/n", "v6/n" or a bare address (a host route). 0 or DDUCT_ECONFIG. */
int dduct__cidr_parse(const char *s, struct dduct_cidr *out);
/* Build an ACL from strings; on a bad entry returns DDUCT_ECONFIG naming it in err. */
int dduct__acl_init(struct dduct_acl *acl, const char *const *cidrs, size_t n, char *err,
                    size_t errlen);
void dduct__acl_free(struct dduct_acl *acl);
/* 1 if sa (AF_INET or AF_INET6; v4-mapped v6 counts as v4) is in any CIDR. */
int dduct__acl_match(const struct dduct_acl *acl, const struct sockaddr *sa);

/* Format "1.2.3.4:80" / "[::1]:80" into out (at least 64 bytes). */
void dduct__addr_str(const struct sockaddr *sa, char *out, size_t outlen);
/* 1 if a and b hold the same address (port ignored; v4-mapped v6 equals v4). */
int dduct__addr_same_ip(const struct sockaddr *a, const struct sockaddr *b);
int dduct__addr_is_any(const struct sockaddr *sa);
int dduct__addr_is_loopback(const struct sockaddr *sa);
uint16_t dduct__addr_port(const struct sockaddr *sa);

/* Connections per client address (max_connections_per_client): a small hash table of counts,
 * an entry per address with connections open (v4-mapped v6 counts as v4; the port is
 * ignored). Loop thread only. */
struct dduct_client_count;
struct dduct_clients {
  struct dduct_client_count **b;
  size_t nb;
};
/* One more connection from sa: 0, DDUCT_EAGAIN when sa already has max, DDUCT_ENOMEM. */
int dduct__clients_take(struct dduct_clients *t, const struct sockaddr *sa, unsigned max);
/* The connection taken for sa closed. */
void dduct__clients_release(struct dduct_clients *t, const struct sockaddr *sa);
void dduct__clients_free(struct dduct_clients *t);

#endif
