/* The store's index of complete entries and its eviction policy (SIEVE), with no I/O: the store
 * (store.c) and the policy simulator (bench/sim) share this code.
 *
 * An entry is named by its kind ('c' content-addressed, 'u' anything else) and the 32 bytes its
 * file name spells in hex. Each has a size, an order (the nanosecond mtime of its data file: the
 * moment it was committed, so a restart rebuilds the queue from the disk alone), a visited bit
 * and the unix time of its last use.
 *
 * SIEVE (Zhang et al., NSDI '24): one FIFO queue, newest at the head; a hit only sets the
 * entry's visited bit (no queue move, so a hit costs a hash lookup and a store). To evict, a
 * hand walks from the tail towards the head: a visited entry has its bit cleared and stays where
 * it is, the first unvisited one goes; the hand stays there for the next eviction and wraps to
 * the tail past the head. Entries used once (a build's own artifacts, a scan) are never visited
 * and leave at the hand's first pass, while entries used again keep their place: a scan of
 * unique files cannot flush the popular ones, as it does under LRU.
 *
 * Not thread-safe: the caller locks. */
#ifndef DDUCT_STORE_INDEX_H
#define DDUCT_STORE_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define DDUCT__INDEX_NONE UINT32_MAX

struct dduct__index_rec {
  unsigned char name[32];
  char kind;             /* 'c' or 'u' */
  unsigned char visited;
  uint32_t last_used;    /* unix seconds, 0 never since it was indexed */
  uint64_t size;
  int64_t order;         /* commit time (data file mtime), nanoseconds */
  uint32_t prev, next;   /* queue: prev towards the tail (older), next towards the head */
  uint32_t chain;        /* hash bucket chain, or the free list */
};

struct dduct__index {
  struct dduct__index_rec *recs;
  uint32_t cap, used;    /* slots allocated, slots ever handed out */
  uint32_t free_head;    /* reusable slots */
  uint32_t *buckets;
  uint32_t nbuckets;     /* a power of two */
  uint32_t head, tail, hand;
  uint64_t count, bytes;
};

void dduct__index_init(struct dduct__index *ix);
void dduct__index_free(struct dduct__index *ix);
/* The slot of an entry, or DDUCT__INDEX_NONE. */
uint32_t dduct__index_find(const struct dduct__index *ix, char kind, const unsigned char name[32]);
/* Add an entry at the head (newest), or update it: an entry whose order changed is a new version
 * (unvisited, moved to the head); otherwise only its size is set. 0, or DDUCT_ENOMEM. */
int dduct__index_put(struct dduct__index *ix, char kind, const unsigned char name[32],
                     uint64_t size, int64_t order);
/* A use: sets the visited bit and last_used. Returns 1 when the bit was clear (worth recording),
 * 0 when it was set already, -1 when the entry is not indexed. */
int dduct__index_touch(struct dduct__index *ix, char kind, const unsigned char name[32],
                       uint32_t now);
/* Remove an entry (any order when order is 0, else only that version). Returns its size, or
 * UINT64_MAX when absent. */
uint64_t dduct__index_remove(struct dduct__index *ix, char kind, const unsigned char name[32],
                             int64_t order);
/* The next entry to evict by SIEVE (the hand moves; visited bits it passes are cleared and, when
 * cleared is not NULL, counted there). The entry stays indexed: copy it, then remove it.
 * DDUCT__INDEX_NONE when the index is empty. */
uint32_t dduct__index_victim(struct dduct__index *ix, uint64_t *cleared);
/* Put the queue in order (oldest at the tail): after a bulk load in directory order. */
void dduct__index_sort(struct dduct__index *ix);

#endif
