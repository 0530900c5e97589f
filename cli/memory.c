/* Why each setting (measured with bench/run, peak RSS per workload, see docs/performance.md):
 * - One arena. libuv's thread pool runs encryption and disk work; each thread that allocates
 *   gets an arena of its own by default, and each arena keeps its free memory for itself (the
 *   workers' record buffers are freed on the loop thread, into the arena they came from). The
 *   pool allocates a few times per 128 KiB chunk at most, so one lock costs nothing measurable.
 * - A fixed mmap threshold of 256 KiB. glibc's default starts at 128 KiB and rises to the size
 *   of the largest mmapped block freed so far (a fill's 1 MiB buffer): after that every buffer,
 *   the large ones included, comes from the heap and stays there. Fixed, the per-chunk buffers
 *   (128 KiB reads, queued writes and records) are reused from the heap without a syscall, and
 *   the large, long-lived ones (fill buffers, TLS input) are mmapped and unmapped when freed.
 * - A trim threshold of 1 MiB (fixed too; the dynamic one rises with the mmap threshold): free
 *   memory at the top of the heap beyond it goes back at once, while the churn of one chunk's
 *   buffers at the top does not pay a brk and page faults every time.
 * - malloc_trim once the last connection closed: what is free below the top (holes left by a
 *   stampede's 50 connections under a few small long-lived blocks) goes back too. One call per
 *   idle moment, never while connections are open. */
#include "memory.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#define MMAP_THRESHOLD (256 * 1024)
#define TRIM_THRESHOLD (1024 * 1024)

void memory_tune(void) {
#ifdef __GLIBC__
  (void)mallopt(M_ARENA_MAX, 1);
  (void)mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
  (void)mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
#endif
}

#define TRIM_GAP 1000 /* ms between two trims at most */
#define BUSY_CHECK_GAP 3000 /* ms between two looks at the free heap while connections are open */
#define BUSY_TRIM_FREE (8u << 20)

static size_t heap_free_bytes(void) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 mi = mallinfo2();
  return mi.fordblks;
#else
  return 0;
#endif
}

static void trim_now(struct memory_trim *m) {
#ifdef __GLIBC__
  (void)malloc_trim(0);
#endif
  m->trims++;
  m->last_trim = uv_now(m->prepare.loop);
  if (m->last_trim == 0) m->last_trim = 1;
}

static void later_cb(uv_timer_t *t) {
  struct memory_trim *m = t->data;
  if (dduct_proxy_connections(m->proxy) == 0) trim_now(m);
}

/* A prepare handle runs right before the loop blocks: after the closing phase in which the last
 * connection's memory was freed, so the trim comes before the next wait, not after it. */
static void prepare_cb(uv_prepare_t *h) {
  struct memory_trim *m = h->data;
  /* Every turn of the loop: one atomic read. dduct_proxy_stats would wait for each worker's
   * loop to copy its figures, so the first loop would run in step with the slowest one. */
  uint64_t active = dduct_proxy_connections(m->proxy);
  if (active == 0 && m->was_active > 0) {
    uint64_t now = uv_now(h->loop);
    if (m->last_trim == 0 || now - m->last_trim >= TRIM_GAP)
      trim_now(m);
    else if (!uv_is_active((uv_handle_t *)&m->later))
      (void)uv_timer_start(&m->later, later_cb, m->last_trim + TRIM_GAP - now, 0);
  }
  else if (active > 0) {
    /* Busy for long: connections that stopped reading dropped their buffers (the TLS layer's
     * output, the store reader's chunks), but freed heap in the middle stays resident until
     * trimmed. Look every few seconds; trim when a lot lies free. */
    uint64_t now = uv_now(h->loop);
    if (now - m->last_check >= BUSY_CHECK_GAP) {
      m->last_check = now;
      if (heap_free_bytes() >= BUSY_TRIM_FREE) trim_now(m);
    }
  }
  m->was_active = active;
}

int memory_trim_start(struct memory_trim *m, uv_loop_t *loop, struct dduct_proxy *proxy) {
  int rc;
  m->proxy = NULL;
  m->was_active = 0;
  m->last_trim = 0;
  m->trims = 0;
  if ((rc = uv_prepare_init(loop, &m->prepare)) != 0) return rc;
  if ((rc = uv_timer_init(loop, &m->later)) != 0) {
    uv_close((uv_handle_t *)&m->prepare, NULL);
    return rc;
  }
  m->prepare.data = m;
  m->later.data = m;
  m->proxy = proxy; /* from here on memory_trim_stop closes the handles */
  uv_unref((uv_handle_t *)&m->later); /* neither keeps the loop alive */
  if ((rc = uv_prepare_start(&m->prepare, prepare_cb)) != 0) return rc;
  uv_unref((uv_handle_t *)&m->prepare);
  return 0;
}

void memory_trim_stop(struct memory_trim *m) {
  if (m->proxy == NULL) return;
  uv_close((uv_handle_t *)&m->prepare, NULL);
  uv_close((uv_handle_t *)&m->later, NULL);
  m->proxy = NULL;
}
