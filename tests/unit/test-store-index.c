/* The store's index and its SIEVE eviction, without I/O: what a victim is, that a use saves an
 * entry from one pass of the hand, that a scan of entries used once cannot push out one used
 * again, removal by version, bulk sorting, and growth to many entries. */
#include <stdlib.h>
#include <string.h>

#include "store_index.h"
#include "tap.h"

static const unsigned char *nm(unsigned v) {
  static unsigned char n[32];
  memset(n, 0, sizeof(n));
  memcpy(n, &v, sizeof(v));
  n[31] = (unsigned char)(v * 7);
  return n;
}

static unsigned victim_id(struct dduct__index *ix) {
  uint32_t i = dduct__index_victim(ix, NULL);
  unsigned v;
  if (i == DDUCT__INDEX_NONE) return 0;
  memcpy(&v, ix->recs[i].name, sizeof(v));
  return v;
}

static unsigned evict(struct dduct__index *ix) {
  uint32_t i = dduct__index_victim(ix, NULL);
  unsigned v;
  if (i == DDUCT__INDEX_NONE) return 0;
  memcpy(&v, ix->recs[i].name, sizeof(v));
  dduct__index_remove(ix, ix->recs[i].kind, ix->recs[i].name, 0);
  return v;
}

int main(void) {
  struct dduct__index ix;
  dduct__index_init(&ix);
  CHECK_EQ_INT(victim_id(&ix), 0, "an empty index has no victim");
  for (unsigned v = 1; v <= 3; v++) dduct__index_put(&ix, 'u', nm(v), 100 * v, v);
  CHECK(ix.count == 3 && ix.bytes == 600, "three entries, their bytes counted");
  CHECK_EQ_INT(victim_id(&ix), 1, "unused, the oldest goes first (FIFO order)");
  CHECK_EQ_INT(dduct__index_touch(&ix, 'u', nm(1), 1000), 1, "a first use flips the bit");
  CHECK_EQ_INT(dduct__index_touch(&ix, 'u', nm(1), 1001), 0, "a second one does not");
  CHECK_EQ_INT(dduct__index_touch(&ix, 'c', nm(1), 1001), -1, "kinds are distinct names");
  CHECK_EQ_INT(evict(&ix), 2, "a used entry is passed over: the next one goes");
  CHECK(!ix.recs[dduct__index_find(&ix, 'u', nm(1))].visited, "and the hand cleared its bit");
  CHECK_EQ_INT(evict(&ix), 3, "the hand moves on from where it stopped");
  CHECK_EQ_INT(evict(&ix), 1, "then wraps around to the entry it cleared");
  CHECK(ix.count == 0 && ix.bytes == 0, "empty again");

  /* A popular entry used between scans survives any number of entries used once. */
  dduct__index_put(&ix, 'c', nm(1000), 10, 1);
  for (unsigned v = 1; v <= 5000; v++) {
    dduct__index_put(&ix, 'u', nm(v), 10, (int64_t)v + 1);
    if (ix.count > 50) evict(&ix);
    if (v % 20 == 0) dduct__index_touch(&ix, 'c', nm(1000), v);
  }
  CHECK(dduct__index_find(&ix, 'c', nm(1000)) != DDUCT__INDEX_NONE,
        "a scan of 5000 one-use entries through 50 slots never evicts the popular one");
  CHECK_EQ_INT(ix.count, 50, "the budget held");

  /* Versions: a put with another order is a new version; a removal names its version. */
  dduct__index_put(&ix, 'u', nm(9999), 5, 100);
  dduct__index_touch(&ix, 'u', nm(9999), 1);
  dduct__index_put(&ix, 'u', nm(9999), 7, 200);
  CHECK(!ix.recs[dduct__index_find(&ix, 'u', nm(9999))].visited, "a new version starts unused");
  CHECK_EQ_INT(dduct__index_remove(&ix, 'u', nm(9999), 100), UINT64_MAX,
               "removing the old version leaves the new one");
  CHECK_EQ_INT(dduct__index_remove(&ix, 'u', nm(9999), 200), 7, "its own version goes");
  dduct__index_free(&ix);

  /* A bulk load in directory order, sorted by commit time; many entries. */
  dduct__index_init(&ix);
  for (unsigned v = 1; v <= 100000; v++)
    dduct__index_put(&ix, 'u', nm(v), 1, (int64_t)((v * 2654435761u) % 1000003));
  dduct__index_sort(&ix);
  {
    int sorted = 1;
    for (uint32_t i = ix.tail; ix.recs[i].next != DDUCT__INDEX_NONE; i = ix.recs[i].next)
      if (ix.recs[i].order > ix.recs[ix.recs[i].next].order) sorted = 0;
    CHECK(sorted, "sorted oldest (tail) to newest (head)");
  }
  CHECK(ix.count == 100000 && dduct__index_find(&ix, 'u', nm(77777)) != DDUCT__INDEX_NONE,
        "100000 entries, each found");
  dduct__index_free(&ix);
  return tap_done();
}
