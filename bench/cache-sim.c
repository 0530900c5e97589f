/* Cache policy simulator: replays a synthetic CI-cache trace through LRU, FIFO and dduct's
 * policy (SIEVE, compiled from libdduct/src/store_index.c: the store's own code) and prints the
 * byte hit ratio of each at several budgets.
 *
 * The trace: a catalogue of popular objects (base layers, packages, toolchains) requested with
 * Zipf popularity, interleaved with scans of unique objects requested once (a build's own
 * artifacts, one-off downloads). Sizes are log-normal (median ~2 MiB, a tail of large layers up
 * to 1 GiB), the same law for both kinds.
 *
 *   cc -O2 -D_GNU_SOURCE -I libdduct/src -I libdduct/include -o cache-sim bench/cache-sim.c \
 *      libdduct/src/store_index.c -lm
 *   ./cache-sim [requests] [seed]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_index.h"

#define NPOP 20000       /* popular objects */
#define ZIPF_S 0.9       /* popularity skew */
#define SCAN_SHARE 0.35  /* requests that belong to scans of unique objects */
#define SCAN_LEN_MAX 400 /* objects per scan: 1..this */

static uint64_t rng_state = 88172645463325252ull;
static double urand(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}

static uint64_t size_draw(void) {
  /* log-normal: median e^14.5 ~ 2 MiB, sigma 1.6; 1 KiB .. 1 GiB */
  double u1 = urand() + 1e-12, u2 = urand();
  double z = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
  double v = exp(14.5 + 1.6 * z);
  if (v < 1024) v = 1024;
  if (v > 1073741824.0) v = 1073741824.0;
  return (uint64_t)v;
}

struct req {
  uint32_t id;
  uint64_t size;
};

/* ---- LRU and FIFO on arrays indexed by object id ---------------------------------------- */

struct q {
  uint32_t *prev, *next;
  unsigned char *in;
  uint32_t head, tail; /* head newest */
  uint64_t bytes;
};
#define NIL UINT32_MAX

static void q_init(struct q *q, uint32_t n) {
  q->prev = malloc(n * sizeof(uint32_t));
  q->next = malloc(n * sizeof(uint32_t));
  q->in = calloc(n, 1);
  q->head = q->tail = NIL;
  q->bytes = 0;
}
static void q_free(struct q *q) {
  free(q->prev), free(q->next), free(q->in);
}
static void q_unlink(struct q *q, uint32_t i) {
  if (q->prev[i] != NIL) q->next[q->prev[i]] = q->next[i];
  else q->tail = q->next[i];
  if (q->next[i] != NIL) q->prev[q->next[i]] = q->prev[i];
  else q->head = q->prev[i];
}
static void q_push(struct q *q, uint32_t i) {
  q->next[i] = NIL;
  q->prev[i] = q->head;
  if (q->head != NIL) q->next[q->head] = i;
  else q->tail = i;
  q->head = i;
}

/* lru: 1 moves hits to the head; 0 is FIFO. Returns the byte hit ratio. */
static double run_queue(const struct req *t, size_t n, uint32_t nobj, const uint64_t *sizes,
                        uint64_t budget, int lru) {
  struct q q;
  uint64_t hit = 0, all = 0;
  q_init(&q, nobj);
  for (size_t k = 0; k < n; k++) {
    uint32_t i = t[k].id;
    all += t[k].size;
    if (q.in[i]) {
      hit += t[k].size;
      if (lru) {
        q_unlink(&q, i);
        q_push(&q, i);
      }
      continue;
    }
    if (t[k].size > budget) continue; /* never fits: streamed through */
    while (q.bytes + t[k].size > budget) {
      uint32_t v = q.tail;
      q_unlink(&q, v);
      q.in[v] = 0;
      q.bytes -= sizes[v];
    }
    q_push(&q, i);
    q.in[i] = 1;
    q.bytes += t[k].size;
  }
  q_free(&q);
  return all ? (double)hit / (double)all : 0;
}

/* dduct's store: the index and victim choice of store_index.c, as store.c drives them (a miss
 * that fits is admitted after evicting down to the budget; a hit touches). */
static double run_dduct(const struct req *t, size_t n, uint64_t budget) {
  struct dduct__index ix;
  uint64_t hit = 0, all = 0;
  dduct__index_init(&ix);
  for (size_t k = 0; k < n; k++) {
    unsigned char name[32] = {0};
    memcpy(name, &t[k].id, sizeof(t[k].id));
    all += t[k].size;
    if (dduct__index_touch(&ix, 'u', name, (uint32_t)k) >= 0) {
      hit += t[k].size;
      continue;
    }
    if (t[k].size > budget) continue;
    while (ix.bytes + t[k].size > budget) {
      uint32_t v = dduct__index_victim(&ix, NULL);
      if (v == DDUCT__INDEX_NONE) break;
      dduct__index_remove(&ix, ix.recs[v].kind, ix.recs[v].name, 0);
    }
    dduct__index_put(&ix, 'u', name, t[k].size, (int64_t)k + 1);
  }
  dduct__index_free(&ix);
  return all ? (double)hit / (double)all : 0;
}

int main(int argc, char **argv) {
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 400000;
  double *cdf = malloc(NPOP * sizeof(double)), z = 0;
  uint64_t *sizes, pop_bytes = 0;
  struct req *t = malloc(n * sizeof(*t));
  uint32_t nobj = NPOP;
  static const double fractions[] = {0.01, 0.02, 0.05, 0.10, 0.20, 0.40, 0.80};
  if (argc > 2) rng_state ^= strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull;
  sizes = malloc((NPOP + n) * sizeof(*sizes));
  for (uint32_t i = 0; i < NPOP; i++) {
    z += 1.0 / pow(i + 1, ZIPF_S);
    cdf[i] = z;
    sizes[i] = size_draw();
    pop_bytes += sizes[i];
  }
  for (size_t k = 0; k < n;) {
    /* A scan starts after a popular request with the probability that makes scans
     * SCAN_SHARE of all requests (scans average SCAN_LEN_MAX / 2 objects). */
    if (k > 0 && urand() < SCAN_SHARE / ((1 - SCAN_SHARE) * (SCAN_LEN_MAX / 2.0))) {
      /* a scan: unique objects, each asked once */
      size_t len = 1 + (size_t)(urand() * SCAN_LEN_MAX);
      for (size_t j = 0; j < len && k < n; j++, k++) {
        sizes[nobj] = size_draw();
        t[k].id = nobj++;
        t[k].size = sizes[t[k].id];
      }
    } else {
      double u = urand() * z;
      size_t lo = 0, hi = NPOP - 1;
      while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cdf[mid] < u) lo = mid + 1;
        else hi = mid;
      }
      t[k].id = (uint32_t)lo;
      t[k].size = sizes[lo];
      k++;
    }
  }
  printf("# %zu requests, %u popular objects (Zipf s=%.1f, %.1f GiB), %u unique scan objects "
         "(%.0f%% of requests in scans of 1..%d)\n",
         n, NPOP, ZIPF_S, pop_bytes / 1073741824.0, nobj - NPOP, SCAN_SHARE * 100, SCAN_LEN_MAX);
  printf("# byte hit ratio by budget (as a share of the popular set's bytes)\n");
  printf("%-8s %10s %8s %8s %8s %s\n", "budget", "GiB", "LRU", "FIFO", "dduct", "dduct-LRU");
  for (size_t f = 0; f < sizeof(fractions) / sizeof(fractions[0]); f++) {
    uint64_t b = (uint64_t)(pop_bytes * fractions[f]);
    double lru = run_queue(t, n, nobj, sizes, b, 1), fifo = run_queue(t, n, nobj, sizes, b, 0);
    double dd = run_dduct(t, n, b);
    printf("%6.0f%% %10.1f %8.4f %8.4f %8.4f %+.4f\n", fractions[f] * 100, b / 1073741824.0, lru,
           fifo, dd, dd - lru);
  }
  free(cdf), free(sizes), free(t);
  return 0;
}
