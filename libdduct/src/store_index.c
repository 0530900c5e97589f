/* The index of complete entries and SIEVE eviction (see store_index.h). Slots live in one array
 * linked by 32-bit indexes (64 bytes per entry: a million entries take 64 MiB), so the index
 * grows by realloc and needs no allocation per entry. */
#include "store_index.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NONE DDUCT__INDEX_NONE

void dduct__index_init(struct dduct__index *ix) {
  memset(ix, 0, sizeof(*ix));
  ix->free_head = ix->head = ix->tail = ix->hand = NONE;
}

void dduct__index_free(struct dduct__index *ix) {
  free(ix->recs);
  free(ix->buckets);
  dduct__index_init(ix);
}

/* Names are SHA-256 outputs already: their first bytes are a good hash. */
static uint32_t hash_of(char kind, const unsigned char *name) {
  uint32_t h;
  memcpy(&h, name, 4);
  return h ^ (uint32_t)(unsigned char)kind;
}

uint32_t dduct__index_find(const struct dduct__index *ix, char kind, const unsigned char name[32]) {
  uint32_t i;
  if (ix->nbuckets == 0) return NONE;
  for (i = ix->buckets[hash_of(kind, name) & (ix->nbuckets - 1)]; i != NONE;
       i = ix->recs[i].chain)
    if (ix->recs[i].kind == kind && memcmp(ix->recs[i].name, name, 32) == 0) return i;
  return NONE;
}

static int rehash(struct dduct__index *ix, uint32_t n) {
  uint32_t *b = malloc((size_t)n * sizeof(*b));
  if (b == NULL) return DDUCT_ENOMEM;
  for (uint32_t i = 0; i < n; i++) b[i] = NONE;
  /* Every live slot is in the queue. */
  for (uint32_t i = ix->head; i != NONE; i = ix->recs[i].prev) {
    uint32_t h = hash_of(ix->recs[i].kind, ix->recs[i].name) & (n - 1);
    ix->recs[i].chain = b[h];
    b[h] = i;
  }
  free(ix->buckets);
  ix->buckets = b;
  ix->nbuckets = n;
  return 0;
}

static uint32_t slot_new(struct dduct__index *ix) {
  uint32_t i;
  if (ix->free_head != NONE) {
    i = ix->free_head;
    ix->free_head = ix->recs[i].chain;
    return i;
  }
  if (ix->used == ix->cap) {
    uint32_t cap = ix->cap ? ix->cap * 2 : 1024;
    struct dduct__index_rec *r;
    if (cap >= NONE || (r = realloc(ix->recs, (size_t)cap * sizeof(*r))) == NULL) return NONE;
    ix->recs = r;
    ix->cap = cap;
  }
  return ix->used++;
}

/* Queue links: head is the newest; prev points towards the tail. */
static void q_unlink(struct dduct__index *ix, uint32_t i) {
  struct dduct__index_rec *r = &ix->recs[i];
  if (ix->hand == i) ix->hand = r->next; /* towards the head; NONE wraps to the tail */
  if (r->prev != NONE) ix->recs[r->prev].next = r->next;
  else ix->tail = r->next;
  if (r->next != NONE) ix->recs[r->next].prev = r->prev;
  else ix->head = r->prev;
  r->prev = r->next = NONE;
}

static void q_push_head(struct dduct__index *ix, uint32_t i) {
  struct dduct__index_rec *r = &ix->recs[i];
  r->next = NONE;
  r->prev = ix->head;
  if (ix->head != NONE) ix->recs[ix->head].next = i;
  else ix->tail = i;
  ix->head = i;
}

int dduct__index_put(struct dduct__index *ix, char kind, const unsigned char name[32],
                     uint64_t size, int64_t order) {
  uint32_t i = dduct__index_find(ix, kind, name), h;
  struct dduct__index_rec *r;
  if (i != NONE) {
    r = &ix->recs[i];
    ix->bytes = ix->bytes - r->size + size;
    r->size = size;
    if (r->order != order) {
      r->order = order;
      r->visited = 0;
      q_unlink(ix, i);
      q_push_head(ix, i);
    }
    return 0;
  }
  if (ix->count + 1 > (uint64_t)ix->nbuckets && rehash(ix, ix->nbuckets ? ix->nbuckets * 2 : 1024))
    return DDUCT_ENOMEM;
  if ((i = slot_new(ix)) == NONE) return DDUCT_ENOMEM;
  r = &ix->recs[i];
  memset(r, 0, sizeof(*r));
  memcpy(r->name, name, 32);
  r->kind = kind;
  r->size = size;
  r->order = order;
  h = hash_of(kind, name) & (ix->nbuckets - 1);
  r->chain = ix->buckets[h];
  ix->buckets[h] = i;
  q_push_head(ix, i);
  ix->count++;
  ix->bytes += size;
  return 0;
}

int dduct__index_touch(struct dduct__index *ix, char kind, const unsigned char name[32],
                       uint32_t now) {
  uint32_t i = dduct__index_find(ix, kind, name);
  int was;
  if (i == NONE) return -1;
  was = ix->recs[i].visited;
  ix->recs[i].visited = 1;
  ix->recs[i].last_used = now;
  return !was;
}

uint64_t dduct__index_remove(struct dduct__index *ix, char kind, const unsigned char name[32],
                             int64_t order) {
  uint32_t h, *p, i;
  uint64_t size;
  if (ix->nbuckets == 0) return UINT64_MAX;
  h = hash_of(kind, name) & (ix->nbuckets - 1);
  for (p = &ix->buckets[h]; (i = *p) != NONE; p = &ix->recs[i].chain)
    if (ix->recs[i].kind == kind && memcmp(ix->recs[i].name, name, 32) == 0) break;
  if (i == NONE || (order != 0 && ix->recs[i].order != order)) return UINT64_MAX;
  *p = ix->recs[i].chain;
  q_unlink(ix, i);
  size = ix->recs[i].size;
  ix->count--;
  ix->bytes -= size;
  ix->recs[i].chain = ix->free_head;
  ix->recs[i].kind = 0;
  ix->free_head = i;
  return size;
}

uint32_t dduct__index_victim(struct dduct__index *ix, uint64_t *cleared) {
  uint32_t i = ix->hand != NONE ? ix->hand : ix->tail;
  /* At most two laps: the first clears every bit it passes. */
  for (uint64_t steps = 0; i != NONE && steps <= 2 * ix->count; steps++) {
    struct dduct__index_rec *r = &ix->recs[i];
    if (!r->visited) {
      ix->hand = i;
      return i;
    }
    r->visited = 0;
    if (cleared != NULL) (*cleared)++;
    i = r->next != NONE ? r->next : ix->tail;
  }
  return NONE;
}

static int cmp_order(const void *a, const void *b, void *arg) {
  const struct dduct__index_rec *recs = arg;
  const struct dduct__index_rec *x = &recs[*(const uint32_t *)a], *y = &recs[*(const uint32_t *)b];
  if (x->order != y->order) return x->order < y->order ? -1 : 1;
  return memcmp(x->name, y->name, 32);
}

void dduct__index_sort(struct dduct__index *ix) {
  uint32_t *v, n = 0;
  if (ix->count < 2 || (v = malloc((size_t)ix->count * sizeof(*v))) == NULL) return;
  for (uint32_t i = ix->tail; i != NONE; i = ix->recs[i].next) v[n++] = i;
  qsort_r(v, n, sizeof(*v), cmp_order, ix->recs);
  ix->head = ix->tail = NONE;
  for (uint32_t k = 0; k < n; k++) q_push_head(ix, v[k]);
  ix->hand = NONE;
  free(v);
}
