/* The cache store's internal API, called by the cache route from the event loop.
 *
 * Shape: a request maps to a key (dduct__store_key_make); a lookup on the key answers with a role:
 *   HIT     the entry is complete on disk: read it;
 *   FOLLOW  this process is filling it right now: read it, readers follow the growing file;
 *   FILL    nobody has it: you fetch it from the origin and feed the fill (you also read it);
 *   BYPASS  don't cache: the store is degraded (disk full), another process is filling the same
 *           key, or the disk failed; proxy the request uncached.
 * Every client of a cached response, the filler's included, is a reader of the file, so hits and
 * misses share one code path and one origin fetch serves any number of concurrent requests.
 *
 * On disk, under file_dir: "c/ab/<sha256 hex>" for content-addressed blobs (the file is named by
 * its digest) and "u/ab/<sha256 hex of scheme, host, port and path>" for everything else. Names are pure
 * hex, so no input can make a path that leaves file_dir. An entry is the data file plus
 * "<name>.json" (the sidecar); it is complete only when both exist and the sidecar's size is the
 * data file's size. A fill writes "<name>.part" (created exclusively and flock()ed for its whole
 * life, so another process sharing the directory sees it busy, and a leftover of a dead process is
 * recognisably stale), verifies length and digest, removes the old sidecar, renames the part into
 * place, then writes the sidecar through a temporary file and a rename.
 *
 * Threading: everything here may be called from the thread of any loop attached to the store
 * (the opening loop, or dduct_store_attach); the store finds the caller's loop itself (a
 * thread-local table), and every callback (lookup_cb, read_cb, a fill's drain_cb) runs on the
 * thread of the loop that started the operation, never inside the call that caused it. A lookup
 * or a reader is used from the thread that made it, a fill from the thread its FILL was
 * delivered to; the store's shared state is under one mutex. lookup_hot and
 * entry_pread stay synchronous: a short critical section, and a small held body is a copy.
 * Disk work runs on libuv's thread pool. */
#ifndef DDUCT_STORE_H
#define DDUCT_STORE_H

#include <stdint.h>
#include <sys/types.h>

#include <stdatomic.h>

#include "internal.h"
#include "store_index.h"

#define DDUCT__STORE_SIZE_UNKNOWN UINT64_MAX
/* Bytes per read from a cached file (one buffer per reader, allocated once). */
#define DDUCT__STORE_READ_CHUNK (128 * 1024)
/* A fill asks its feeder to pause once this much is queued for the disk. */
#define DDUCT__STORE_FILL_HIGH (1024 * 1024)

/* ---- keys --------------------------------------------------------------------------------- */

struct dduct__store_key {
  char rel[72];    /* "c/ab/<64 hex>" or "u/ab/<64 hex>": only [0-9a-f/cu], relative */
  char digest[72]; /* "sha256:<64 hex>" for content-addressed keys, "" otherwise */
};

/* Derive the key of a request. path may hold a query string (part of the key, byte for byte;
 * an empty one is none; apply the query rules first) and any bytes; dot segments are resolved
 * in the path ("/a/./b" and "/a/x/../b" are "/a/b"); scheme and host are compared
 * case-insensitively; port is dropped when it is scheme's default (80/443). An https key and an
 * http key never match (docs/cache.md has the hash layout: https keeps the first one). A path
 * "/v2/<name>/blobs/sha256:<64 lowercase hex>" is content-addressed: the key is the digest
 * alone (whatever the query), shared across schemes, hosts and repositories. Never fails on
 * odd input: DDUCT_EINVAL only for NULL pointers, DDUCT_ENOMEM. */
int dduct__store_key_make(const char *scheme, const char *host, size_t hostlen, unsigned port,
                          const char *path, size_t pathlen, struct dduct__store_key *out);

/* Query parameters left out of keys, per host: rules "HOSTGLOB:NAME[,NAME...]" (the glob is
 * fnmatch()ed case-insensitively against the request's host; the one NAME "*" drops the whole
 * query). Every rule whose glob matches applies (at most 64 per host). */
struct dduct__query_rules;
/* 0 or -1 with a reason in why: the shape of one rule. */
int dduct__query_rule_check(const char *spec, char *why, size_t len);
/* *out is NULL (no rules) when n is 0. DDUCT_ECONFIG with a message for a bad rule. */
int dduct__query_rules_new(const char *const *specs, size_t n, struct dduct__query_rules **out,
                           char *err, size_t errlen);
void dduct__query_rules_free(struct dduct__query_rules *r);
/* target[0..len) ("/path?query") with the parameters the rules drop for host removed ("name" or
 * "name=value" between '&'s; empty ones go too once anything is dropped; no '?' when nothing is
 * left) into out (room for len bytes). Returns the new length. r may be NULL (a copy). */
size_t dduct__query_rules_apply(const struct dduct__query_rules *r, const char *host,
                                const char *target, size_t len, char *out);

/* out[2n+1] gets the lowercase hex of in[0..n). */
void dduct__store_hex(const unsigned char *in, size_t n, char *out);
/* 1 if s is "sha256:" followed by exactly 64 lowercase hex digits. */
int dduct__store_is_digest(const char *s, size_t len);

/* ---- entries and lookups ------------------------------------------------------------------ */

/* What the store knows about an entry. Strings are never NULL ("" when unknown). */
struct dduct__store_meta {
  const char *url;           /* the request that filled it, without query string */
  const char *content_type;
  const char *etag;          /* the origin's ETag, as sent (quotes included) */
  const char *last_modified;
  const char *digest;        /* the body's: "sha256:<hex>" (a blob's, and ordinary entries of
                              * earlier versions or [cache] checksum = 'sha256') or "gmac:<hex>";
                              * "" while an ordinary fill runs */
  uint64_t size;             /* DDUCT__STORE_SIZE_UNKNOWN while a fill of unknown length runs */
  int64_t stored_at;         /* unix seconds of the commit; 0 while filling */
  /* The origin's end-to-end headers, in its order, as "name\0value\0name\0value\0..."
   * (headers_len bytes); NULL and 0 when unknown: an entry whose sidecar was written before
   * dduct kept them (the fields above are then all there is). Iterate with
   * dduct__store_header_next. */
  const char *headers;
  size_t headers_len;
  /* 1: the origin gave this answer to one client (credentials on the request that produced it,
   * or Cache-Control: private): the cache serves it only after that origin agrees again
   * (sidecar "private"; absent in sidecars of earlier versions: 0). */
  int is_private;
};

/* Step through a headers block: from *off, the next name and value (NUL-terminated, inside the
 * block); 0 at the end. */
int dduct__store_header_next(const char *block, size_t len, size_t *off, const char **name,
                             const char **value);

struct dduct__store_entry;
struct dduct__store_lookup;

enum dduct__store_role {
  DDUCT__STORE_HIT = 1,
  DDUCT__STORE_FOLLOW = 2,
  DDUCT__STORE_FILL = 3,
  DDUCT__STORE_BYPASS = 4,
};

/* Lookup flags. */
#define DDUCT__STORE_NO_FILL 1 /* never answer FILL (HEAD): a miss is BYPASS with status 0 */
#define DDUCT__STORE_REFRESH 2 /* ignore a complete entry (the origin's file changed): refill */

/* e carries one reference for HIT, FOLLOW and FILL (release it with dduct__store_entry_release);
 * it is NULL for BYPASS, where status says why: 0 (a miss with NO_FILL), DDUCT_EAGAIN (another
 * process fills this key), UV_ENOSPC (degraded after a disk error), or the disk error met. */
typedef void (*dduct__store_lookup_cb)(void *user_data, enum dduct__store_role role,
                                       struct dduct__store_entry *e, int status);

/* Start a lookup. cb runs exactly once, later, unless the lookup is cancelled first. *out (may be
 * NULL) is valid until cb runs or cancel is called. Concurrent lookups of one key share one disk
 * probe; at most one of them gets FILL, the others wait for the fill to begin (FOLLOW) or be
 * cancelled (BYPASS). */
int dduct__store_lookup(struct dduct_store *s, const struct dduct__store_key *key, int flags,
                        dduct__store_lookup_cb cb, void *user_data,
                        struct dduct__store_lookup **out);
/* cb will not run. Cancelling a lookup that was about to get FILL cancels that fill. */
void dduct__store_lookup_cancel(struct dduct__store_lookup *l);
/* The synchronous shortcut for the common case, next to the lookup above (which stays the only
 * way to FOLLOW, FILL or probe the disk): 1 when key's entry is complete and in memory (held open
 * after an earlier use, and its name still leads to that same, unchanged file: known from the
 * store's inotify watch on the file when the loop has had no news of it, from a stat otherwise;
 * a change another process makes is seen once the loop has read the kernel's notice of it);
 * *out then carries one HIT reference (counted as a hit), exactly as a lookup's callback would
 * have had it. 0 otherwise (nothing held; use dduct__store_lookup). Calls nothing back. */
int dduct__store_lookup_hot(struct dduct_store *s, const struct dduct__store_key *key, int flags,
                            struct dduct__store_entry **out);
/* How many times lookup_hot had to stat an entry's name (no watch, or the watch saw a change). */
uint64_t dduct__store_name_checks(const struct dduct_store *s);

/* Valid while the caller holds its reference; meta changes only at fill_begin and commit. */
const struct dduct__store_meta *dduct__store_entry_meta(const struct dduct__store_entry *e);
/* 1 once the entry is committed (size and digest final). */
int dduct__store_entry_complete(const struct dduct__store_entry *e);
/* 1 for a content-addressed entry (its digest is known before it is filled). */
int dduct__store_entry_addressed(const struct dduct__store_entry *e);
/* 0 while fine, or why the fill was discarded (DDUCT_ESHORT, DDUCT_EDIGEST, UV_ENOSPC, ...). */
int dduct__store_entry_error(const struct dduct__store_entry *e);
/* One more reference (for a second user of the same entry). */
void dduct__store_entry_ref(struct dduct__store_entry *e);
void dduct__store_entry_release(struct dduct__store_entry *e);

/* Read [off, off+len) of a complete entry right now, on the calling (loop) thread: meant for a
 * small body (a pread of page-cached bytes costs less than a reader's thread-pool or timer
 * round trip). The whole body of a small watched entry is read once and kept in memory (bounded
 * per store) until its watch sees a change or the entry is freed. Returns len, DDUCT_ESHORT if
 * the file is shorter than the entry (cut behind our back), DDUCT_EINVAL outside the entry or
 * for an incomplete one, or another negative error. Counted in bytes_served. */
ssize_t dduct__store_entry_pread(struct dduct__store_entry *e, char *buf, size_t len,
                                 uint64_t off);

/* ---- filling (only with role FILL) -------------------------------------------------------- */

/* The reference that comes with FILL is the filler's: it is given back by exactly one call to
 * fill_cancel or fill_end (never entry_release). To read its own response the filler opens a
 * reader like everybody else (readers hold their own reference). */

/* The origin answered 200: record its metadata (strings and the headers block copied; digest
 * ignored, the store computes it; size may be DDUCT__STORE_SIZE_UNKNOWN) and wake the waiting
 * lookups as FOLLOW. */
int dduct__store_fill_begin(struct dduct__store_entry *e, const struct dduct__store_meta *m);
/* Instead of fill_begin: nothing will be stored (non-200 answer, origin error). Waiting lookups
 * get BYPASS with status why; the next lookup starts afresh. Releases the filler's reference. */
void dduct__store_fill_cancel(struct dduct__store_entry *e, int why);
/* Queue body bytes (copied). Returns 0, or the error that discarded the fill (the caller stops
 * feeding it; its readers are told). */
int dduct__store_fill_write(struct dduct__store_entry *e, const char *data, size_t len);
/* 1 when DDUCT__STORE_FILL_HIGH bytes wait for the disk: pause the origin until drain_cb. */
int dduct__store_fill_full(const struct dduct__store_entry *e);
void dduct__store_fill_on_drain(struct dduct__store_entry *e, void (*drain_cb)(void *), void *ud);
/* The origin body ended: status 0 means cleanly (the store checks length and digest, then
 * commits), < 0 means broken (discarded with that reason, readers told). Releases the filler's
 * reference; e must not be used by the filler afterwards. */
void dduct__store_fill_end(struct dduct__store_entry *e, int status);

/* ---- reading ------------------------------------------------------------------------------ */

struct dduct__store_reader;

/* n > 0: data[0..n) (borrowed until the next reader_read or reader_free); n == 0: the range is
 * done; n < 0: the fill was discarded or the file unreadable (close the client early). */
typedef void (*dduct__store_read_cb)(void *user_data, ssize_t n, const char *data);

/* Read [offset, offset+len) of e (len DDUCT__STORE_SIZE_UNKNOWN: to the end, known at commit).
 * Takes its own reference on e. Nothing happens until reader_read. */
int dduct__store_reader_new(struct dduct__store_entry *e, uint64_t offset, uint64_t len,
                            dduct__store_read_cb cb, void *user_data,
                            struct dduct__store_reader **out);
/* Ask for the next chunk; cb runs once, later (data arrives as the fill lands it: readers of a
 * content-addressed fill of known size are held back from its last byte until it verifies).
 * DDUCT_EINVAL if a read is already outstanding. */
int dduct__store_reader_read(struct dduct__store_reader *r);
/* The consumer will not ask for a while (its client stopped reading): free the reader's
 * buffers, and drop a chunk read ahead (read again later). Only between reads (not while one
 * is in flight, where it does nothing); the next dduct__store_reader_read allocates again. */
void dduct__store_reader_trim(struct dduct__store_reader *r);
uint64_t dduct__store_reader_offset(const struct dduct__store_reader *r);
/* Safe at any time, also with a read outstanding (cb will not run). */
void dduct__store_reader_free(struct dduct__store_reader *r);

/* ---- store-wide --------------------------------------------------------------------------- */

/* Forget key's entry (RFC 9111 4.4: an unsafe request changed the resource): a complete entry
 * leaves the table (its readers finish with their open file) and its files are removed before
 * this returns (on the loop thread: two unlinks); a fill running for it completes for its
 * readers and is removed once committed. Nothing is called back. */
void dduct__store_invalidate(struct dduct_store *s, const struct dduct__store_key *key);

/* 1 while misses bypass the store after a disk error. */
int dduct__store_degraded(struct dduct_store *s);
/* verify_hits (dduct_store_options) after open, for tests: the whole body of a reader from 0 to
 * the end is hashed as it is read; the chunk holding its last byte goes out only once it
 * matched; on a mismatch the reader gets DDUCT_EDIGEST and the entry is removed. */
void dduct__store_set_verify_hits(struct dduct_store *s, enum dduct_verify_hits mode);
/* Bodies hashed by verify_hits since open, and how many did not match. */
void dduct__store_verify_counts(const struct dduct_store *s, uint64_t *verified,
                                uint64_t *failed);
/* How long a disk error keeps the store degraded (default 30 s); for tests and options. */
void dduct__store_set_degrade_ms(struct dduct_store *s, uint64_t ms);
uv_loop_t *dduct__store_loop(struct dduct_store *s);
/* Fills not stored, counted by enum dduct__fill_fail (stats.h): out has DDUCT__FF_COUNT slots. */
void dduct__store_fill_failures(const struct dduct_store *s, uint64_t *out);
/* A fill's progress for /stats: bytes received so far, the announced size
 * (DDUCT__STORE_SIZE_UNKNOWN: none yet) and the readers open on it. */
void dduct__store_entry_progress(const struct dduct__store_entry *e, uint64_t *received,
                                 uint64_t *expected, int *readers);
/* The directory without trailing slashes. */
const char *dduct__store_root(const struct dduct_store *s);
/* 1 once the background load of the index finished (its load_done ran on the loop). */
int dduct__store_index_loaded(const struct dduct_store *s);

/* ---- disk operations (store_disk.c; blocking, run on the thread pool) --------------------- */

/* base is "<file_dir>/<key.rel>". Each returns 0 or a negative error. */
struct dduct__store_loaded {
  int fd;
  uint64_t size;
  char *url, *content_type, *etag, *last_modified, *digest; /* malloc'd, never NULL */
  char *headers; /* malloc'd block (see dduct__store_meta), NULL when the sidecar has none */
  size_t headers_len;
  int64_t stored_at;
  int is_private;
};
/* Open a complete entry: UV_ENOENT when absent or incomplete, DDUCT_ECORRUPT for a bad sidecar. */
int dduct__store_disk_load(const char *base, struct dduct__store_loaded *out);
void dduct__store_loaded_free(struct dduct__store_loaded *l);
/* Create and lock "<base>.part" exclusively (removing a stale one); *fd is open read-write.
 * DDUCT_EAGAIN when a live process holds it. */
int dduct__store_disk_reserve(const char *base, int *fd);
/* Write all of buf at off. */
int dduct__store_disk_pwrite(int fd, const char *buf, size_t len, uint64_t off);
/* Publish a verified part (fd: its open descriptor): drop the old sidecar, rename the part into
 * place, write the sidecar (temp + rename). With sync, data and sidecar are fsync'd before their
 * renames and the directory after. *created is 1 when no entry existed before. On failure
 * nothing half-made is left behind (the part and any renamed data are removed). */
int dduct__store_disk_commit(const char *base, int fd, const char *json, size_t jsonlen, int sync,
                             int *created);
/* Make fd (the committed file, open read-write) a read-only descriptor of the same file. */
int dduct__store_disk_reopen_ro(const char *base, int fd);
/* Remove our own "<base>.part". */
void dduct__store_disk_discard(const char *base);
/* Remove the entry at base (sidecar first, then the data file); absent files are fine. */
void dduct__store_disk_remove(const char *base);

/* ---- budget and journal (store_budget.c; blocking, on the thread pool) --------------------- */

/* One journal record (see store_budget.c): 56 bytes, written whole. */
struct dduct__jrec {
  uint8_t type;  /* '+' committed, '-' removed, 'h' used */
  uint8_t kind;  /* 'c' or 'u' */
  uint8_t pad[2];
  uint32_t time; /* unix seconds */
  uint64_t size;
  int64_t order; /* the entry's commit time (data file mtime, ns) */
  unsigned char name[32];
};

struct dduct__store_load {
  uint64_t entries, removed;
};

/* "u/ab/<hex>" <-> kind and the 32 bytes its hex spells. */
int dduct__store_rel_name(const char *rel, char *kind, unsigned char name[32]);
void dduct__store_rel_of(char kind, const unsigned char name[32], char rel[72]);
int dduct__store_name_from_hex(const char *hex, unsigned char name[32]);
int dduct__journal_append(const char *root, const struct dduct__jrec *r, size_t n);
int dduct__journal_apply(const char *root, struct dduct__index *ix, uint64_t *off, uint64_t *ino,
                         int adds);
int dduct__journal_compact(const char *root, const struct dduct__index *ix, uint64_t *off,
                           uint64_t *ino);
uint64_t dduct__journal_size(const char *root);
/* Walk file_dir: remove dead processes' leftovers, index complete entries (sorted by commit). */
int dduct__store_load_index(const char *root, struct dduct__index *ix, struct dduct__store_load *st,
                            const atomic_int *cancel);
/* Remove the entry's sidecar and data file if its data file is still the version order names
 * (0: any). DDUCT_EAGAIN when a newer version replaced it. */
int dduct__store_disk_evict(const char *root, char kind, const unsigned char name[32],
                            int64_t order);
int dduct__store_fs_space(const char *root, uint64_t *free_bytes, uint64_t *total);
/* 1: path is gone or was a dead process's leftover and is removed; 0: a live process holds it. */
int dduct__store_remove_if_stale(const char *path);

#endif
