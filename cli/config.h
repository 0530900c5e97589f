/* dduct.toml mapped onto one struct: the seed's schema plus dduct's [proxy] additions (see
 * docs/configuration.md). Every key is optional; config_init fills the defaults. */
#ifndef DDUCT_CLI_CONFIG_H
#define DDUCT_CLI_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dduct.h"

/* An owned array of owned strings. */
struct strv {
  char **v;
  size_t n;
};

/* Every string and array is owned by the struct (config_free releases them). */
struct config {
  /* [misc] */
  int log_level; /* enum dduct_log_level */
  char *cert_dir;
  char *file_dir;
  char *access_log; /* "" off, "-" stderr, else a file appended to (reopened on SIGHUP) */
  /* [proxy] */
  char *tcp_bind; /* "" disables the listener */
  char *tls_bind;
  char *admin_bind; /* admin listener (metrics, stats, health, CA, status page); "" disables */
  struct strv filters;
  char *upstream_ca_file; /* "" for none */
  int upstream_insecure;
  struct strv resolve;
  struct strv allow_clients;
  uint16_t *connect_ports;
  size_t connect_ports_count;
  int connect_any_port;
  unsigned max_connections;
  unsigned max_connections_per_client;
  unsigned head_timeout; /* seconds */
  unsigned idle_timeout;
  unsigned tunnel_idle_timeout;
  unsigned connect_timeout;
  unsigned upstream_timeout;
  unsigned shutdown_grace;
  int revalidate; /* enum dduct_revalidate */
  struct strv query_ignore; /* "HOSTGLOB:NAME[,NAME...]" */
  /* beyond one node (docs/cluster.md) */
  char *upstream_proxy; /* "" for none */
  struct strv no_upstream_proxy;
  struct strv parents;
  char *parent_ca_file; /* "" for upstream_ca_file */
  unsigned parent_down_time; /* seconds */
  unsigned workers;          /* event loops (threads) serving the listeners, 1..256; default:
                              * uv_available_parallelism() */
  /* [cache] */
  uint64_t cache_max_size;         /* bytes; 0: no budget */
  uint64_t cache_min_free;         /* bytes; 0: cache_min_free_percent applies */
  unsigned cache_min_free_percent; /* 0..99 */
  int cache_fsync;
  int cache_stale_if_error;
  int cache_share_private; /* 1: answers given with credentials are served to every client */
  int cache_verify_hits; /* enum dduct_verify_hits */
  int cache_checksum;    /* enum dduct_checksum */
  /* [certs] */
  unsigned rsa_key_bits;
  unsigned days_from_now;
  char *ca_cn;
  char *server_cn;
  struct strv server_dns_sans;
  struct strv server_ip_sans;
  char *client_cn;
  char *p12_pass;
  int ca_name_constraints;
};

/* [proxy] workers when absent: the CPUs this process may use (uv_available_parallelism: affinity
 * and cgroup limits counted), 1..256. */
unsigned config_default_workers(void);

/* Fill c with the defaults. Returns 0, or -1 when out of memory (c is then safe to free). */
int config_init(struct config *c);

/* Apply the TOML document text[0..len) over c. On error returns -1 and writes
 * "name:line:col: message" into err; c stays safe to free (possibly partly updated). */
int config_load(struct config *c, const char *name, const char *text, size_t len, char *err,
                size_t errlen);

/* Read path and config_load it; an unreadable file gives "path: cannot read: reason". */
int config_load_file(struct config *c, const char *path, char *err, size_t errlen);

/* Write the effective settings as a TOML document that config_load accepts. */
void config_print(const struct config *c, FILE *out);

/* The store options of c's [cache]. */
void config_store_options(const struct config *c, struct dduct_store_options *o);

/* Point o at c's [certs] and cert_dir (borrowed: valid while c is). */
void config_ca_options(const struct config *c, struct dduct_ca_options *o);

/* Field checks shared with the CLI; each returns 0 or -1 with a reason in why. */
int config_check_bind(const char *s, char *why, size_t len);
int config_check_cidr(const char *s, char *why, size_t len);
int config_check_resolve(const char *s, char *why, size_t len);
int config_check_ip(const char *s, char *why, size_t len);

/* "123", "50G", "64KiB" (powers of 1024) -> bytes: 0, -1 malformed, -2 too large. */
int config_parse_size(const char *s, uint64_t *out);

void config_free(struct config *c);

#endif
