/* glibc malloc tuning for the dduct executable: a long-running proxy whose buffers come and go
 * with its connections should give memory back when they go. The library never tunes the
 * allocator (it may live in someone else's process); the executable may. */
#ifndef DDUCT_CLI_MEMORY_H
#define DDUCT_CLI_MEMORY_H

#include "dduct.h"

struct memory_trim {
  uv_prepare_t prepare;
  uv_timer_t later;          /* a trim that waits for TRIM_GAP since the last one */
  struct dduct_proxy *proxy; /* borrowed */
  uint64_t was_active;       /* connections_active at the last loop turn */
  uint64_t last_trim;        /* uv_now of the last trim, 0: none yet */
  uint64_t trims;
  uint64_t last_check;       /* uv_now of the last look at the heap's free bytes while busy */
};

/* Set malloc's arena count and thresholds (see memory.c). Call first thing in main. A no-op
 * without glibc. */
void memory_tune(void);

/* Give free heap memory back to the kernel (malloc_trim) in the loop turn after the proxy's last
 * connection closed, at most once a second (later, by a timer, when the last trim was sooner:
 * a client that opens one connection per request must not pay a trim per request). m must stay valid until memory_trim_stop's close has run (the loop's end). */
int memory_trim_start(struct memory_trim *m, uv_loop_t *loop, struct dduct_proxy *proxy);
void memory_trim_stop(struct memory_trim *m);

#endif
