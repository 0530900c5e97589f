/* The cache store: entries in memory, lookups that collapse onto one disk probe and one fill per
 * key, fills that stream to disk through the thread pool, and readers that follow a growing file.
 * Disk work itself lives in store_disk.c.
 *
 * Threads. The store may be used from several event loops at once (dduct_store_attach): each
 * attached loop is a port (its own timer, an async handle, lists of deliveries waiting for it),
 * and a thread finds its port through a thread-local table. One mutex (s->mu) guards the table,
 * the entries, fills, readers' shared state, the ports' lists and the counters; ix_lock (the
 * budget, below) nests inside it. Work belongs to the port that started it: a lookup's callback,
 * a reader's reads and callbacks, a fill's writes, commit and drain_cb all run on the thread of
 * the loop that started them. Whatever another thread has to do for it (a probe done on loop A
 * answering a lookup of loop B, a fill's bytes landing for a reader of B) is queued on the
 * owner's port and the owner woken by uv_async_send; on the owner's own thread it is the port's
 * timer, as with one loop. Handles (the maintenance timer, the inotify poll) live on the opening
 * ("home") loop. No user callback runs with s->mu held; entries published to other threads keep
 * their metadata in immutable versions (publish_meta), so dduct__store_entry_meta needs no lock. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "checksum.h"
#include "stats.h"
#include "safedir.h"
#include "store.h"

#define NBUCKETS 256
/* Complete entries nobody uses stay in the table with their data file open, up to this many
 * (least recently used first out): a hit on one needs no sidecar read and no open, only a stat
 * of the data file's name to see it is still the same file. Bounds the fds held while idle. */
#define IDLE_MAX 64
/* A read of a complete entry up to this size is done right on the loop thread: a page-cache
 * hit of a few KiB costs microseconds, a thread-pool hand-off (queue, futex, eventfd) more. */
#define SMALL_READ (64 * 1024)
/* The whole body of a complete entry up to BODY_MAX is kept in memory once read for a hot hit
 * (no pread per hit), up to BODY_BUDGET bytes per store; entry_free gives it back. The idle list
 * (IDLE_MAX) bounds what entries nobody uses keep. */
#define BODY_MAX (16 * 1024)
#define BODY_BUDGET (4 * 1024 * 1024)
/* What another process can do to a data file we hold: replace or remove its name (the link count
 * drops: IN_ATTRIB), cut or write it (IN_MODIFY), move it away. */
#define WATCH_MASK (IN_ATTRIB | IN_MODIFY | IN_MOVE_SELF | IN_DELETE_SELF)
/* A fill buffer's size once it stopped doubling: the high-water mark plus what a feeder may
 * still hand over after fill_full said pause (a TLS read batch, 64 KiB, and parser leftovers). */
#define FILL_CAP (DDUCT__STORE_FILL_HIGH + 128 * 1024)
#define DEGRADE_MS_DEFAULT 30000
/* Journal batches are written, other processes' records read and the budget checked this often. */
#define MAINT_MS 2000
/* A used entry's use is recorded again after this long (its last-used time), else once per
 * eviction pass (its visited bit). */
#define TOUCH_REFRESH_S 600
/* The journal is rewritten once it is larger than this. */
#define JOURNAL_MAX (16u << 20)
#define LOG_MOD "cache"

struct list {
  struct list *prev, *next;
};

static void list_init(struct list *l) {
  l->prev = l->next = l;
}
static int list_empty(const struct list *l) {
  return l->next == l;
}
static void list_push(struct list *head, struct list *n) {
  n->prev = head->prev;
  n->next = head;
  head->prev->next = n;
  head->prev = n;
}
static void list_del(struct list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  list_init(n);
}
/* Move all of from to the (empty) to. */
static void list_move(struct list *from, struct list *to) {
  list_init(to);
  if (list_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  list_init(from);
}

enum state { ST_LOOKUP, ST_PENDING, ST_FILLING, ST_COMPLETE, ST_DEAD };
enum probe_result { PR_HIT, PR_RESERVED, PR_MISS, PR_FAIL };
enum rstate { R_IDLE, R_WAIT, R_READING, R_READY };
enum pstate { P_NONE, P_READING, P_DONE }; /* a reader's read ahead */

struct port;

struct fill {
  struct port *port; /* the filler's: its writes, commit and drain_cb run there */
  struct list drain_link; /* in port->drains while a drain_cb is owed (holds the entry) */
  int drain_queued;
  struct dduct__store_entry *drain_e;
  char *acc, *out; /* acc gathers origin bytes while out is being written by the pool */
  size_t acc_len, acc_cap, out_len, out_cap;
  uint64_t out_off, written, received;
  uv_work_t work;
  int busy, work_rc, ended, committing, was_full, created;
  struct dduct__sum sum; /* touched only by the one work item in flight */
  void (*drain_cb)(void *);
  void *drain_ud;
  uint64_t t0;
  char digest[DDUCT__SUM_MAX];
  int64_t stored_at;
  uint64_t reserved, counted; /* in s->reserved and s->parts_written (under ix_lock) */
  /* Relay (a disk error): what could not be written goes to the readers from memory, a window
   * [rbase, rbase + rlen) the slowest reader holds; nothing is stored. */
  int relay, relay_done;
  char *rbuf;
  size_t rlen, rcap;
  uint64_t rbase;
};

struct dduct__store_entry {
  struct dduct_store *s;
  struct list link; /* bucket chain while in the table */
  struct dduct__store_key key;
  char *base;
  int refs;  /* callers: lookups, fillers, readers */
  int holds; /* the store's own: work in flight */
  enum state state;
  int in_table, fd, error, addressed, part_ours;
  int invalidated; /* dduct__store_invalidate met it while filling: remove once committed */
  /* The entry's bytes were hashed to its digest (a blob's name, or its sidecar's) since this
   * process last had reason to doubt them: its own fill, or a full read (verify_hits); cleared by
   * any change to the file (watch, or a new mtime under the same name). */
  int verified;
  struct timespec mtime; /* the data file's, when it was opened */
  struct dduct__store_meta meta; /* the working copy, under s->mu */
  /* What dduct__store_entry_meta hands out: an immutable copy of meta made at each change
   * (creation, load, fill_begin, the end of the body, the commit), so a thread reading it never
   * races with the one changing it. Versions live as long as the entry (strings too). */
  struct dduct__store_meta mv[4];
  unsigned nmv;
  _Atomic(const struct dduct__store_meta *) pub;
  atomic_int complete; /* state reached ST_COMPLETE (it never leaves it) */
  unsigned watch_gen; /* bumped by every change the watch reports */
  char *strs[5]; /* owned strings behind meta */
  char *headers; /* owned block behind meta.headers */
  uint64_t avail; /* bytes readers may read now */
  struct list idle; /* in s->idle while complete, unused and kept (IDLE_MAX) */
  int idle_in, have_ino;
  dev_t dev; /* the data file behind fd, once complete: what a hit compares the name with */
  ino_t ino;
  struct fill *fill;
  struct list waiters; /* lookups waiting for the probe or the fill to begin */
  struct list readers; /* readers waiting for bytes */
  struct list all_readers; /* every reader (a relay's window waits for the slowest) */
  int nreaders;        /* readers open on it (for /stats) */
  uv_work_t probe;
  int probe_may_fill, probe_flags, probe_rc;
  int probe_retried; /* the probe ran again after EMFILE/ENFILE freed idle descriptors */
  enum probe_result probe_result;
  struct dduct__store_loaded loaded;
  /* A complete entry's data file is watched (inotify, on our open fd's inode) so a hot hit needs
   * no stat of its name: wd >= 0 while in s->watched; changed once the kernel reported anything
   * (then hot hits stat the name again, as without a watch). */
  int wd, changed;
  struct list watch;
  char *body; /* the whole body, BODY_MAX at most, once read (counted in s->body_bytes) */
};

struct dduct__store_lookup {
  struct list link;
  struct port *port; /* the caller's: cb runs there */
  struct dduct__store_entry *e;
  dduct__store_lookup_cb cb;
  void *ud;
  int flags, status;
  enum dduct__store_role role; /* set once ready */
};

struct dduct__store_reader {
  struct list link; /* in e->readers, or one of its port's lists */
  struct port *port; /* the creator's: reads and callbacks happen there */
  int held;          /* waiting for a fill's bytes: its port keeps its loop alive */
  struct list all; /* in e->all_readers */
  struct dduct__store_entry *e;
  uint64_t off, end;
  dduct__store_read_cb cb;
  void *ud;
  char *buf;
  size_t cap; /* bytes of buf: one chunk, or the whole range when smaller */
  uv_fs_t req;
  enum rstate state;
  int result, freed;
  /* Read ahead, complete entries only: while the consumer encrypts and sends buf, the next chunk
   * is read into ahead (allocated once, on the first chunk that has a successor). At most one of
   * req and preq is in flight. */
  char *ahead;
  uv_fs_t preq;
  enum pstate pstate;
  ssize_t pres;
  int want; /* the consumer asked while preq was in flight */
  int slow; /* the last read needed the thread pool (not in the page cache): read ahead */
  int verify; /* hashing the whole body as it is read, checked before its last byte goes */
  struct dduct__sum sum;
  int trimmed; /* dduct__store_reader_trim while idle: a prefetch that lands is dropped */
};

/* One attached loop. */
struct port {
  struct dduct_store *s;
  uv_loop_t *loop;
  uv_timer_t *timer; /* deliveries queued from the port's own thread (next loop turn) */
  uv_async_t *async; /* deliveries queued from other threads; never keeps the loop alive */
  struct list lookups, readers; /* answered lookups, finished reads: call back */
  struct list pumps;            /* readers woken by another thread: read on (theirs) */
  struct list drains;           /* fills whose drain_cb is owed */
  struct list link;             /* in s->ports, or s->gone once detached */
  /* Detached: its handles are closed, but work the loop started (a fill's last writes, its
   * commit) may still finish there, so the port stays its thread's until the store goes. */
  int detached;
  /* Lookups not yet answered and readers waiting for a fill: while any, the async handle keeps
   * the loop alive, as a probe or write on the loop itself would (the answer may come from
   * another loop). Counted and ref'd on the port's own thread only. */
  unsigned waits;
};

struct dduct_store {
  uv_loop_t *loop; /* the home loop: open's */
  uint64_t id;     /* tells this store from an earlier one at the same address */
  uv_mutex_t mu;
  struct port *home;
  struct list ports, gone; /* attached; detached (freed with the store) */
  int destroying;
  int maint_wanted, ino_wanted; /* asked of the home loop by another thread */
  char *dir;  /* as given */
  char *root; /* without trailing slashes */
  struct list buckets[NBUCKETS];
  struct dduct_store_stats stats;
  uint64_t degraded_until, degrade_ms;
  unsigned live; /* entries not yet freed */
  struct list idle; /* complete entries with no user, least recently used first */
  unsigned idle_count;
  int freeing;
  int ino_fd;           /* inotify instance: -1 not yet made, -2 unavailable (stat every hit) */
  uv_poll_t *ino_poll;  /* its readiness on the home loop; freed in its close callback */
  struct list watched;  /* entries with a watch */
  size_t body_bytes;    /* bodies held in memory */
  uint64_t name_checks; /* stats of an entry's name by hot lookups */
  uint64_t verifications, verify_failures; /* verify_hits: bodies hashed, mismatches */
  uint64_t fill_failures[DDUCT__FF_COUNT]; /* by dduct__fill_fail_reason */
  /* The budget (store_budget.c). ix, reserved, parts_written, fs_* and the journal position are
   * shared with the pool's work and guarded by ix_lock. */
  struct dduct_store_options o;
  uv_mutex_t ix_lock;
  struct dduct__index ix;
  uint64_t reserved;      /* bytes our fills in flight take: their known size, or written */
  uint64_t parts_written; /* of which on disk already */
  uint64_t fs_free, fs_total;
  uint64_t j_off, j_ino;  /* how far the journal was read */
  atomic_int cancel;      /* the store is being freed: the load stops */
  int loaded;             /* the background load finished (loop thread) */
  unsigned works;         /* load and maintenance work in flight */
  uv_work_t load_w, maint_w;
  struct dduct__index load_ix;
  struct dduct__store_load load_st;
  int maint_busy, maint_again;
  uv_timer_t *maint_timer;
  struct dduct__jrec *jq, *jq_out; /* uses not yet written (ix_lock), the batch being written */
  size_t jq_n, jq_cap, jq_out_n;
  char (*victims)[72];             /* what the last maintenance evicted (rels) */
  size_t nvictims;
  uint64_t ev_count, ev_bytes, ev_need;
  int ev_why;                      /* 1 max_size, 2 min_free */
};

static void entry_ref(struct dduct__store_entry *e) {
  e->refs++;
}
static void store_destroy(struct dduct_store *s);
static void abort_fill(struct dduct__store_entry *e, int why);
static void entry_kill(struct dduct__store_entry *e, int why);
static void pump(struct dduct__store_reader *r);
static void entry_maybe_free(struct dduct__store_entry *e);
static void entry_free(struct dduct__store_entry *e);
static void relay_end(struct dduct__store_entry *e);
static int relay_write(struct dduct__store_entry *e, const char *data, size_t len);
static int relay_read(struct dduct__store_reader *r, uint64_t end);
/* The budget (below). */
static void maint_kick(struct dduct_store *s);
static int budget_on(const struct dduct_store *s);
static int needs_room(const struct dduct_store *s, uint64_t size);
static void unreserve_locked(struct dduct_store *s, struct fill *f);
static void unreserve(struct dduct__store_entry *e);
static void touch(struct dduct_store *s, const struct dduct__store_key *k);
static const char *fits(struct dduct_store *s, uint64_t size);
static void budget_check(struct dduct_store *s);
static void index_forget(struct dduct_store *s, const struct dduct__store_key *k);

/* ---- table -------------------------------------------------------------------------------- */

static unsigned bucket_of(const struct dduct__store_key *k) {
  unsigned v = 0;
  for (int i = 2; i < 4; i++) {
    char c = k->rel[i];
    v = v * 16 + (unsigned)(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  return v % NBUCKETS;
}

static struct dduct__store_entry *table_find(struct dduct_store *s,
                                             const struct dduct__store_key *k) {
  struct list *h = &s->buckets[bucket_of(k)];
  for (struct list *n = h->next; n != h; n = n->next) {
    struct dduct__store_entry *e = DDUCT_CONTAINER_OF(n, struct dduct__store_entry, link);
    if (strcmp(e->key.rel, k->rel) == 0) return e;
  }
  return NULL;
}

static void table_remove(struct dduct__store_entry *e) {
  if (!e->in_table) return;
  list_del(&e->link);
  e->in_table = 0;
}

/* ---- ports: which loop does what -------------------------------------------------------- */

/* The ports this thread uses, by store (one, in the proxy; a few in tests). */
#define TL_MAX 16
static _Thread_local struct {
  const struct dduct_store *s;
  uint64_t id;
  struct port *p;
} tl[TL_MAX];
static _Thread_local unsigned tl_n;
static atomic_uint_fast64_t store_ids;

/* The calling thread's port; the home port for a thread that never attached (one loop). */
static struct port *cur(const struct dduct_store *s) {
  for (unsigned i = 0; i < tl_n; i++)
    if (tl[i].s == s && tl[i].id == s->id) return tl[i].p;
  return s->home;
}

static void tl_del(const struct dduct_store *s) {
  for (unsigned i = 0; i < tl_n; i++)
    if (tl[i].s == s) tl[i--] = tl[--tl_n];
}

static int tl_add(const struct dduct_store *s, struct port *p) {
  tl_del(s); /* a store freed elsewhere may have left its address here */
  if (tl_n == TL_MAX) return DDUCT_ENOMEM;
  tl[tl_n].s = s;
  tl[tl_n].id = s->id;
  tl[tl_n++].p = p;
  return 0;
}

static void store_lock(const struct dduct_store *s) {
  uv_mutex_lock((uv_mutex_t *)&s->mu);
}

/* Unlock; the last use of a store being freed destroys it (on the home thread: every other
 * loop has detached by then). s must not be used afterwards by a caller that freed entries. */
static void store_unlock(struct dduct_store *s) {
  int destroy = s->freeing && s->live == 0 && s->works == 0 && !s->destroying;
  if (destroy) s->destroying = 1;
  uv_mutex_unlock(&s->mu);
  if (destroy) store_destroy(s);
}

static void port_timer_cb(uv_timer_t *t);

/* Wake p's loop to run its deliveries: its timer from its own thread, its async from another. */
static void port_kick(struct port *p) {
  if (p->detached) return; /* nothing of its own is left to deliver (dduct_store_detach) */
  if (p == cur(p->s)) {
    if (!uv_is_active((uv_handle_t *)p->timer)) uv_timer_start(p->timer, port_timer_cb, 0, 0);
  } else {
    uv_async_send(p->async);
  }
}

static void port_hold(struct port *p) {
  if (p->waits++ == 0 && !p->detached) uv_ref((uv_handle_t *)p->async);
}

static void port_unhold(struct port *p) {
  if (--p->waits == 0 && !p->detached) uv_unref((uv_handle_t *)p->async);
}

static void reader_unhold(struct dduct__store_reader *r) {
  if (!r->held) return;
  r->held = 0;
  port_unhold(r->port);
}

/* The lookup's callback, s->mu not held. */
static void deliver_lookup(struct dduct__store_lookup *l) {
  struct dduct__store_entry *e = l->e;
  if (l->role == DDUCT__STORE_HIT) touch(e->s, &e->key);
  if (l->role == DDUCT__STORE_BYPASS) {
    l->cb(l->ud, l->role, NULL, l->status);
    dduct__store_entry_release(e);
  } else {
    l->cb(l->ud, l->role, e, 0);
  }
  free(l);
}

static void ino_poll_start(struct dduct_store *s);

/* Everything queued for p, on p's thread. Snapshots: callbacks may queue more, which run on the
 * next turn. The local lists hold only p's own lookups and readers, which only this thread
 * cancels or frees (and their references keep s alive while any is left). */
static void port_run(struct port *p) {
  struct dduct_store *s = p->s;
  struct list pumps, lookups, readers, drains;
  store_lock(s);
  if (p == s->home && s->ino_wanted) ino_poll_start(s);
  if (p == s->home && s->maint_wanted) {
    s->maint_wanted = 0;
    maint_kick(s);
  }
  /* Woken readers read first, so what they get now is called back in this same run. */
  list_move(&p->pumps, &pumps);
  while (!list_empty(&pumps)) {
    struct dduct__store_reader *r = DDUCT_CONTAINER_OF(pumps.next, struct dduct__store_reader,
                                                       link);
    list_del(&r->link);
    r->state = R_IDLE;
    reader_unhold(r);
    pump(r); /* may drop and retake the lock around a read */
  }
  list_move(&p->lookups, &lookups);
  list_move(&p->readers, &readers);
  list_move(&p->drains, &drains);
  store_unlock(s);
  while (!list_empty(&lookups)) {
    struct dduct__store_lookup *l;
    store_lock(s);
    l = DDUCT_CONTAINER_OF(lookups.next, struct dduct__store_lookup, link);
    list_del(&l->link);
    port_unhold(p);
    if (l->role == DDUCT__STORE_HIT || l->role == DDUCT__STORE_FOLLOW) s->stats.hits++;
    if (l->role == DDUCT__STORE_FILL) s->stats.misses++;
    store_unlock(s);
    deliver_lookup(l);
  }
  while (!list_empty(&readers)) {
    struct dduct__store_reader *r;
    int result;
    store_lock(s);
    r = DDUCT_CONTAINER_OF(readers.next, struct dduct__store_reader, link);
    list_del(&r->link);
    r->state = R_IDLE;
    result = r->result;
    store_unlock(s);
    r->cb(r->ud, result, result > 0 ? r->buf : NULL);
  }
  while (!list_empty(&drains)) {
    struct dduct__store_entry *e;
    void (*cb)(void *);
    void *ud;
    store_lock(s);
    {
      struct fill *f = DDUCT_CONTAINER_OF(drains.next, struct fill, drain_link);
      list_del(&f->drain_link);
      f->drain_queued = 0;
      e = f->drain_e;
      cb = f->drain_cb;
      ud = f->drain_ud;
    }
    store_unlock(s);
    if (cb != NULL) cb(ud);
    store_lock(s);
    e->holds--;
    entry_maybe_free(e);
    store_unlock(s);
  }
}

static void port_timer_cb(uv_timer_t *t) {
  port_run(t->data);
}

static void port_async_cb(uv_async_t *a) {
  port_run(a->data);
}

static void port_close_cb(uv_handle_t *h) {
  free(h);
}

/* A port for loop, on loop's thread; not yet in s->ports. */
static struct port *port_new(struct dduct_store *s, uv_loop_t *loop) {
  struct port *p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  p->timer = malloc(sizeof(*p->timer));
  p->async = malloc(sizeof(*p->async));
  if (p->timer == NULL || p->async == NULL || uv_async_init(loop, p->async, port_async_cb) != 0) {
    free(p->timer);
    free(p->async);
    free(p);
    return NULL;
  }
  uv_timer_init(loop, p->timer);
  p->s = s;
  p->loop = loop;
  p->timer->data = p->async->data = p;
  uv_unref((uv_handle_t *)p->async);
  list_init(&p->lookups);
  list_init(&p->readers);
  list_init(&p->pumps);
  list_init(&p->drains);
  list_init(&p->link);
  return p;
}

/* On p's thread; its lists are empty (every use of the store from it has ended). */
static void port_close(struct port *p) {
  uv_close((uv_handle_t *)p->timer, port_close_cb);
  uv_close((uv_handle_t *)p->async, port_close_cb);
  free(p);
}

static void ready_lookup(struct dduct__store_lookup *l, enum dduct__store_role role, int status) {
  l->role = role;
  l->status = status;
  list_del(&l->link);
  list_push(&l->port->lookups, &l->link);
  port_kick(l->port);
}

static void ready_reader(struct dduct__store_reader *r, int result) {
  r->state = R_READY;
  r->result = result;
  list_push(&r->port->readers, &r->link);
  port_kick(r->port);
}

/* Answer every waiting lookup the same way. */
static void wake_waiters(struct dduct__store_entry *e, enum dduct__store_role role, int status) {
  while (!list_empty(&e->waiters))
    ready_lookup(DDUCT_CONTAINER_OF(e->waiters.next, struct dduct__store_lookup, link), role,
                 status);
}

/* Waiting readers read on from their port's next run, on their own thread (this one's too:
 * their reads drop the lock, which the operation waking them must not see). */
static void wake_readers(struct dduct__store_entry *e) {
  while (!list_empty(&e->readers)) {
    struct dduct__store_reader *r = DDUCT_CONTAINER_OF(e->readers.next,
                                                       struct dduct__store_reader, link);
    list_del(&r->link);
    list_push(&r->port->pumps, &r->link);
    port_kick(r->port);
  }
}

/* The filler's drain_cb is owed (its queue went below the mark): called on its loop, later. */
static void queue_drain(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  if (f->drain_queued || f->ended || f->drain_cb == NULL || f->port->detached) return;
  f->drain_queued = 1;
  f->drain_e = e;
  e->holds++;
  list_push(&f->port->drains, &f->drain_link);
  port_kick(f->port);
}

/* The metadata other threads may read now (see mv). */
static void publish_meta(struct dduct__store_entry *e) {
  unsigned i = e->nmv < DDUCT_ARRAY_SIZE(e->mv) ? e->nmv++ : DDUCT_ARRAY_SIZE(e->mv) - 1;
  e->mv[i] = e->meta;
  atomic_store_explicit(&e->pub, &e->mv[i], memory_order_release);
}

/* ---- entries ------------------------------------------------------------------------------ */

static void set_meta_str(struct dduct__store_entry *e, int i, char *v, const char **field) {
  free(e->strs[i]);
  e->strs[i] = v;
  *field = v != NULL ? v : "";
}

static struct dduct__store_entry *entry_new(struct dduct_store *s,
                                            const struct dduct__store_key *k) {
  struct dduct__store_entry *e = calloc(1, sizeof(*e));
  size_t n = strlen(s->root) + 1 + strlen(k->rel) + 1;
  if (e == NULL || (e->base = malloc(n)) == NULL) {
    free(e);
    return NULL;
  }
  snprintf(e->base, n, "%s/%s", s->root, k->rel);
  e->s = s;
  e->key = *k;
  e->fd = -1;
  e->addressed = k->digest[0] != '\0';
  e->meta.url = e->meta.content_type = e->meta.etag = e->meta.last_modified = "";
  e->meta.digest = e->addressed ? e->key.digest : "";
  e->meta.size = DDUCT__STORE_SIZE_UNKNOWN;
  list_init(&e->waiters);
  list_init(&e->readers);
  list_init(&e->all_readers);
  list_init(&e->idle);
  list_init(&e->watch);
  e->wd = -1;
  atomic_init(&e->complete, 0);
  atomic_init(&e->pub, NULL);
  publish_meta(e);
  list_push(&s->buckets[bucket_of(k)], &e->link);
  e->in_table = 1;
  s->live++;
  return e;
}

static void close_cb(uv_fs_t *req) {
  uv_fs_req_cleanup(req);
  free(req);
}

/* Closing may free a large unlinked file's blocks: keep it off the loop thread. */
static void close_async(uv_loop_t *loop, int fd) {
  uv_fs_t *req = malloc(sizeof(*req));
  if (req == NULL || uv_fs_close(loop, req, fd, close_cb) != 0) {
    free(req);
    close(fd);
  }
}

static void fill_free(struct fill *f) {
  if (f == NULL) return;
  free(f->rbuf);
  free(f->acc);
  free(f->out);
  free(f);
}

/* ---- watching held data files ------------------------------------------------------------ */

/* The name still leads to the very file we hold open, at the size we know: another process
 * sharing file_dir may have replaced it (a refill renames a new file into place) or removed it.
 * Our open fd keeps the old inode alive, so its number cannot be reused by a replacement; same
 * device, inode and size mean the same, unchanged entry (entries are never written in place). An
 * entry whose sidecar alone was removed is still served: its data file is the one that was
 * complete. */
static int same_time(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* The name still leads to the file we hold, at its size. The same file written in place (a new
 * mtime) stays, but its bytes are in doubt again (verify_hits). */
static int name_matches(struct dduct__store_entry *e) {
  struct stat st;
  if (stat(e->base, &st) != 0 || st.st_dev != e->dev || st.st_ino != e->ino ||
      (uint64_t)st.st_size != e->meta.size)
    return 0;
  if (!same_time(&st.st_mtim, &e->mtime)) {
    e->mtime = st.st_mtim;
    e->verified = 0;
  }
  return 1;
}

static void drop_body(struct dduct__store_entry *e) {
  if (e->body == NULL) return;
  free(e->body);
  e->body = NULL;
  e->s->body_bytes -= (size_t)e->meta.size;
}

/* Something happened to the watched file of every entry with this wd (one inode can be held by
 * an old entry out of the table and its successor): from now on their names are checked again,
 * and their bytes come from the disk (a cut file reads short). wd -1: the kernel's queue
 * overflowed, so every watch may have missed something. */
static void watch_changed(struct dduct_store *s, int wd) {
  for (struct list *n = s->watched.next; n != &s->watched; n = n->next) {
    struct dduct__store_entry *e = DDUCT_CONTAINER_OF(n, struct dduct__store_entry, watch);
    if (wd != -1 && e->wd != wd) continue;
    e->changed = 1;
    e->verified = 0;
    e->watch_gen++;
    drop_body(e);
  }
}

static void ino_cb(uv_poll_t *h, int status, int events) {
  struct dduct_store *s = h->data;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  (void)events;
  store_lock(s);
  if (status < 0) {
    watch_changed(s, -1);
    store_unlock(s);
    return;
  }
  for (;;) {
    ssize_t n = read(s->ino_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      watch_changed(s, (ev->mask & IN_Q_OVERFLOW) ? -1 : ev->wd);
      p += sizeof(*ev) + ev->len;
    }
  }
  store_unlock(s);
}

static void ino_close_cb(uv_handle_t *h) {
  free(h);
}

static void watch_stop(struct dduct__store_entry *e);

/* The poll of the inotify instance, on the home loop (s->mu held, home thread). Its handle never
 * keeps the loop alive. Without it nobody would hear of changes: every watch goes, and hot hits
 * stat names again. */
static void ino_poll_start(struct dduct_store *s) {
  uv_poll_t *h;
  s->ino_wanted = 0;
  if (s->ino_poll != NULL || s->ino_fd < 0) return;
  if ((h = malloc(sizeof(*h))) != NULL && uv_poll_init(s->loop, h, s->ino_fd) == 0) {
    h->data = s;
    if (uv_poll_start(h, UV_READABLE, ino_cb) == 0) {
      uv_unref((uv_handle_t *)h);
      s->ino_poll = h;
      return;
    }
    uv_close((uv_handle_t *)h, ino_close_cb);
    h = NULL;
  }
  free(h);
  while (!list_empty(&s->watched)) {
    struct dduct__store_entry *e = DDUCT_CONTAINER_OF(s->watched.next, struct dduct__store_entry,
                                                      watch);
    e->changed = 1;
    e->watch_gen++;
    drop_body(e);
    watch_stop(e);
  }
  close(s->ino_fd);
  s->ino_fd = -2;
}

/* The store's inotify instance, made at the first watch (stores that never hold a complete entry
 * need none); its poll starts on the home loop (now, or when another thread made it: at the home
 * loop's next turn, which reads what the kernel queued meanwhile). */
static int ino_open(struct dduct_store *s) {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return -errno;
  s->ino_fd = fd;
  if (cur(s) == s->home) {
    ino_poll_start(s);
  } else {
    s->ino_wanted = 1;
    port_kick(s->home);
  }
  return 0;
}

static void ino_close(struct dduct_store *s) {
  if (s->ino_poll != NULL) uv_close((uv_handle_t *)s->ino_poll, ino_close_cb); /* stops polling */
  if (s->ino_fd >= 0) close(s->ino_fd);
  s->ino_poll = NULL;
  s->ino_fd = -1;
}

/* inotify hears only of changes made through this kernel: on NFS, CIFS, FUSE or 9p another host
 * (a dduct sharing file_dir, docs/cache.md) may replace an entry without an event. Trust a watch
 * only on file systems that are local by nature; elsewhere hot hits stat the name every time. */
static int fs_is_local(int fd) {
  struct statfs f;
  if (fstatfs(fd, &f) != 0) return 0;
  switch ((unsigned long)f.f_type) {
  case 0xEF53UL:     /* ext2/3/4 */
  case 0x58465342UL: /* xfs */
  case 0x9123683EUL: /* btrfs */
  case 0x01021994UL: /* tmpfs */
  case 0xF2F52010UL: /* f2fs */
  case 0x2FC12FC1UL: /* zfs */
  case 0x794C7630UL: /* overlayfs (containers) */
    return 1;
  default:
    return 0;
  }
}

/* A complete entry with its file open: watch that inode through our own fd (never a file that
 * replaced it meanwhile), then check the name once, for whatever happened before the watch.
 * Without a watch (no inotify, no /proc, watch limit, a network file system) hot hits stat the
 * name every time. */
static void watch_start(struct dduct__store_entry *e) {
  struct dduct_store *s = e->s;
  char path[64];
  int wd;
  if (e->wd >= 0 || !e->have_ino || e->fd < 0 || e->state != ST_COMPLETE || s->freeing) return;
  if (s->ino_fd == -1 && ino_open(s) != 0) s->ino_fd = -2;
  if (s->ino_fd < 0 || !fs_is_local(e->fd)) return;
  snprintf(path, sizeof(path), "/proc/self/fd/%d", e->fd);
  if ((wd = inotify_add_watch(s->ino_fd, path, WATCH_MASK)) < 0) return;
  e->wd = wd;
  list_push(&s->watched, &e->watch);
  e->changed = !name_matches(e);
}

/* The kernel's watch goes with the last entry that uses it. */
static void watch_stop(struct dduct__store_entry *e) {
  struct dduct_store *s = e->s;
  int shared = 0;
  if (e->wd < 0) return;
  list_del(&e->watch);
  for (struct list *n = s->watched.next; n != &s->watched && !shared; n = n->next)
    shared = DDUCT_CONTAINER_OF(n, struct dduct__store_entry, watch)->wd == e->wd;
  if (!shared) (void)inotify_rm_watch(s->ino_fd, e->wd);
  e->wd = -1;
}

static void idle_del(struct dduct__store_entry *e) {
  if (!e->idle_in) return;
  list_del(&e->idle);
  e->idle_in = 0;
  e->s->idle_count--;
}

/* Keep a complete, unused entry (fd and metadata) for the next hit; the oldest goes if full. */
static int idle_park(struct dduct__store_entry *e) {
  struct dduct_store *s = e->s;
  if (s->freeing || !e->in_table || e->state != ST_COMPLETE || e->fd < 0 || !e->have_ino)
    return 0;
  if (!e->idle_in) {
    list_push(&s->idle, &e->idle);
    e->idle_in = 1;
    s->idle_count++;
  }
  while (s->idle_count > IDLE_MAX) {
    struct dduct__store_entry *old = DDUCT_CONTAINER_OF(s->idle.next, struct dduct__store_entry,
                                                        idle);
    idle_del(old);
    entry_free(old);
  }
  return 1;
}

/* Free every idle entry but keep (its fd is in use). */
static void idle_shed(struct dduct_store *s, struct dduct__store_entry *keep) {
  struct list *n = s->idle.next;
  while (n != &s->idle) {
    struct dduct__store_entry *old = DDUCT_CONTAINER_OF(n, struct dduct__store_entry, idle);
    n = n->next;
    if (old == keep) continue;
    idle_del(old);
    entry_free(old);
  }
}

/* The store itself goes at the next store_unlock once freeing and nothing is left. */
static void entry_maybe_free(struct dduct__store_entry *e) {
  if (e->refs > 0 || e->holds > 0) return;
  if (idle_park(e)) return;
  entry_free(e);
}

/* Unconditional: the caller knows nobody uses e. Never destroys the store itself. */
static void entry_free(struct dduct__store_entry *e) {
  struct dduct_store *s = e->s;
  idle_del(e);
  table_remove(e);
  watch_stop(e);
  drop_body(e);
  if (e->fd >= 0) close_async(cur(s)->loop, e->fd);
  unreserve(e);
  fill_free(e->fill);
  for (size_t i = 0; i < DDUCT_ARRAY_SIZE(e->strs); i++) free(e->strs[i]);
  free(e->headers);
  dduct__store_loaded_free(&e->loaded);
  free(e->base);
  free(e);
  s->live--;
}

void dduct__store_entry_ref(struct dduct__store_entry *e) {
  store_lock(e->s);
  entry_ref(e);
  store_unlock(e->s);
}

static void entry_release(struct dduct__store_entry *e) {
  e->refs--;
  /* Nobody is left to end a fill: it can never complete. */
  if (e->refs == 0 && e->state == ST_PENDING) entry_kill(e, UV_ECANCELED);
  if (e->refs == 0 && e->state == ST_FILLING && e->fill != NULL && !e->fill->ended)
    abort_fill(e, UV_ECANCELED);
  entry_maybe_free(e);
}

void dduct__store_entry_release(struct dduct__store_entry *e) {
  struct dduct_store *s;
  if (e == NULL) return;
  s = e->s;
  store_lock(s);
  entry_release(e);
  store_unlock(s);
}

const struct dduct__store_meta *dduct__store_entry_meta(const struct dduct__store_entry *e) {
  return atomic_load_explicit(&((struct dduct__store_entry *)e)->pub, memory_order_acquire);
}
int dduct__store_entry_complete(const struct dduct__store_entry *e) {
  return atomic_load_explicit(&((struct dduct__store_entry *)e)->complete, memory_order_acquire);
}
int dduct__store_entry_addressed(const struct dduct__store_entry *e) {
  return e->addressed;
}
int dduct__store_entry_error(const struct dduct__store_entry *e) {
  int why;
  store_lock(e->s);
  why = e->error;
  store_unlock(e->s);
  return why;
}

/* ---- degraded mode ------------------------------------------------------------------------ */

static int is_disk_error(int rc) {
  return rc == UV_ENOSPC || rc == UV_EFBIG || rc == UV_EIO || rc == UV_EROFS || rc == -EDQUOT;
}

/* Every loop's clock is the same monotonic one, cached per turn: the caller's. */
static uint64_t now_ms(const struct dduct_store *s) {
  return uv_now(cur(s)->loop);
}

static int degraded(const struct dduct_store *s) {
  return s->degraded_until != 0 && now_ms(s) < s->degraded_until;
}

static void degrade(struct dduct_store *s, int rc) {
  if (!is_disk_error(rc)) return;
  if (!degraded(s))
    LOG_WARN(LOG_MOD, "Disk error in \"%s\" (%s): caching paused for %llu s", s->dir,
             dduct_strerror(rc), (unsigned long long)(s->degrade_ms / 1000));
  s->degraded_until = now_ms(s) + s->degrade_ms;
}

/* Remove key's files now, on the loop thread (two unlinks, as cheap as the stat of a hot hit):
 * done before the unsafe request's answer goes out, so no lookup that follows can load them. */
static void remove_files(struct dduct_store *s, const struct dduct__store_key *key) {
  char base[PATH_MAX];
  if ((size_t)snprintf(base, sizeof(base), "%s/%s", s->root, key->rel) < sizeof(base))
    dduct__store_disk_remove(base);
  index_forget(s, key);
}

/* e became complete after an invalidation met it: out of the table (not kept idle), files
 * removed. The caller's entry_maybe_free frees it once unused. */
static void drop_invalidated(struct dduct__store_entry *e) {
  table_remove(e);
  idle_del(e);
  remove_files(e->s, &e->key);
}

void dduct__store_invalidate(struct dduct_store *s, const struct dduct__store_key *key) {
  struct dduct__store_entry *e;
  store_lock(s);
  e = table_find(s, key);
  if (e != NULL && e->state != ST_COMPLETE && e->state != ST_DEAD) {
    /* A probe or fill in flight: probe_done or commit_done drops the entry once it is
     * complete. A fill's part is its own; a probe may be reading the old files: remove them. */
    e->invalidated = 1;
    if (e->state == ST_LOOKUP) remove_files(s, key);
    store_unlock(s);
    return;
  }
  if (e != NULL) {
    table_remove(e);
    idle_del(e);
    entry_maybe_free(e);
  }
  remove_files(s, key);
  store_unlock(s);
}

int dduct__store_degraded(struct dduct_store *s) {
  int d;
  store_lock(s);
  d = degraded(s);
  store_unlock(s);
  return d;
}

void dduct__store_set_verify_hits(struct dduct_store *s, enum dduct_verify_hits mode) {
  store_lock(s);
  s->o.verify_hits = mode;
  store_unlock(s);
}

void dduct__store_verify_counts(const struct dduct_store *s, uint64_t *verified,
                                uint64_t *failed) {
  store_lock(s);
  *verified = s->verifications;
  *failed = s->verify_failures;
  uv_mutex_unlock((uv_mutex_t *)&s->mu);
}

void dduct__store_set_degrade_ms(struct dduct_store *s, uint64_t ms) {
  store_lock(s);
  s->degrade_ms = ms;
  if (s->degraded_until > now_ms(s) + ms) s->degraded_until = now_ms(s) + ms;
  store_unlock(s);
}

uv_loop_t *dduct__store_loop(struct dduct_store *s) {
  return s->loop;
}

/* ---- discarding a part -------------------------------------------------------------------- */

/* Unlink our part while its lock (our fd) is still held, so we never remove another process's.
 * Done right here: a directory entry goes away quickly (the blocks are freed at the async close)
 * and the next lookup of the key must find the name free. */
static void discard_part(struct dduct__store_entry *e) {
  if (!e->part_ours) return;
  e->part_ours = 0;
  dduct__store_disk_discard(e->base);
}

/* Out of the table for good: later lookups start afresh. */
static void entry_kill(struct dduct__store_entry *e, int why) {
  e->state = ST_DEAD;
  e->error = why;
  unreserve(e);
  table_remove(e);
  discard_part(e);
  wake_waiters(e, DDUCT__STORE_BYPASS, why);
  wake_readers(e);
}

/* ---- lookups ------------------------------------------------------------------------------ */

static int probe_start(struct dduct__store_entry *e, int flags);

static void probe_work(uv_work_t *w) {
  struct dduct__store_entry *e = w->data;
  int rc, fd;
  if (!(e->probe_flags & DDUCT__STORE_REFRESH)) {
    rc = dduct__store_disk_load(e->base, &e->loaded);
    if (rc == 0) {
      struct stat st;
      e->probe_result = PR_HIT;
      if (fstat(e->loaded.fd, &st) == 0) {
        e->dev = st.st_dev;
        e->ino = st.st_ino;
        e->mtime = st.st_mtim;
        e->have_ino = 1;
      }
      return;
    }
    if (rc != UV_ENOENT && rc != DDUCT_ECORRUPT && rc != UV_ENOTDIR) {
      e->probe_result = PR_FAIL;
      e->probe_rc = rc;
      return;
    }
  }
  if (!e->probe_may_fill) {
    e->probe_result = PR_MISS;
    return;
  }
  rc = dduct__store_disk_reserve(e->base, &fd);
  e->probe_result = rc == 0 ? PR_RESERVED : PR_FAIL;
  e->probe_rc = rc;
  e->loaded.fd = rc == 0 ? fd : -1;
}

static void take_loaded(struct dduct__store_entry *e) {
  struct dduct__store_loaded *l = &e->loaded;
  e->fd = l->fd;
  l->fd = -1;
  set_meta_str(e, 0, l->url, &e->meta.url);
  set_meta_str(e, 1, l->content_type, &e->meta.content_type);
  set_meta_str(e, 2, l->etag, &e->meta.etag);
  set_meta_str(e, 3, l->last_modified, &e->meta.last_modified);
  set_meta_str(e, 4, l->digest, &e->meta.digest);
  l->url = l->content_type = l->etag = l->last_modified = l->digest = NULL;
  free(e->headers);
  e->headers = l->headers;
  e->meta.headers = l->headers;
  e->meta.headers_len = l->headers != NULL ? l->headers_len : 0;
  l->headers = NULL;
  l->headers_len = 0;
  e->meta.size = l->size;
  e->meta.stored_at = l->stored_at;
  e->meta.is_private = l->is_private;
  e->avail = l->size;
}

/* The first waiter that may fill gets FILL; the rest wait for fill_begin or fill_cancel. */
static void hand_fill(struct dduct__store_entry *e) {
  for (struct list *n = e->waiters.next; n != &e->waiters; n = n->next) {
    struct dduct__store_lookup *l = DDUCT_CONTAINER_OF(n, struct dduct__store_lookup, link);
    if (!(l->flags & DDUCT__STORE_NO_FILL)) {
      ready_lookup(l, DDUCT__STORE_FILL, 0);
      return;
    }
  }
  entry_kill(e, 0); /* only HEADs asked: nobody will fetch */
}

static void probe_done(uv_work_t *w, int status) {
  struct dduct__store_entry *e = w->data;
  struct dduct_store *s = e->s;
  store_lock(s);
  e->holds--;
  switch (e->probe_result) {
  case PR_HIT:
    take_loaded(e);
    e->state = ST_COMPLETE;
    publish_meta(e);
    atomic_store_explicit(&e->complete, 1, memory_order_release);
    watch_start(e);
    wake_waiters(e, DDUCT__STORE_HIT, 0);
    /* Invalidated while probing: the lookups that were waiting asked before; nobody else. */
    if (e->invalidated) drop_invalidated(e);
    break;
  case PR_RESERVED:
    e->fd = e->loaded.fd;
    e->loaded.fd = -1;
    e->part_ours = 1;
    e->state = ST_PENDING;
    hand_fill(e);
    break;
  case PR_MISS:
    entry_kill(e, degraded(e->s) ? UV_ENOSPC : 0);
    break;
  case PR_FAIL:
    /* Out of descriptors: the idle entries' files are only a shortcut for later hits, this
     * lookup is a request now. Close them and try once more before giving up. */
    if ((e->probe_rc == UV_EMFILE || e->probe_rc == UV_ENFILE) && !e->probe_retried &&
        e->s->idle_count > 0) {
      LOG_WARN(LOG_MOD, "Cache entry \"%s\": %s; closing %zu idle entries' files", e->base,
               dduct_strerror(e->probe_rc), (size_t)e->s->idle_count);
      e->probe_retried = 1;
      idle_shed(e->s, e);
      if (probe_start(e, e->probe_flags) == 0) break;
    }
    if (e->probe_rc != DDUCT_EAGAIN)
      LOG_WARN(LOG_MOD, "Cache entry \"%s\": %s", e->base, dduct_strerror(e->probe_rc));
    degrade(e->s, e->probe_rc);
    entry_kill(e, e->probe_rc);
    break;
  }
  entry_maybe_free(e);
  store_unlock(s);
}

static int probe_start(struct dduct__store_entry *e, int flags) {
  int rc;
  e->probe.data = e;
  e->probe_flags = flags;
  e->probe_may_fill = !degraded(e->s);
  e->loaded.fd = -1;
  e->holds++;
  rc = uv_queue_work(cur(e->s)->loop, &e->probe, probe_work, probe_done);
  if (rc != 0) e->holds--;
  return rc;
}

/* A complete entry in memory is served only while its name still leads to the file we hold open
 * (name_matches). One stat on the loop thread instead of two opens, two fstats, a sidecar read
 * and two closes on the thread pool; a hot hit (trust_watch) of an entry whose watch has seen
 * nothing needs not even that: the kernel would have told the loop about a replacement, removal
 * or cut before this turn's reads (a change racing with the request itself may be seen one
 * request later; the bytes served are still those of the complete entry). */
static int still_on_disk(struct dduct__store_entry *e, int trust_watch) {
  if (!e->have_ino) return 1; /* nothing to compare with: the old behaviour */
  if (trust_watch && e->wd >= 0 && !e->changed) return 1;
  if (trust_watch) e->s->name_checks++;
  return name_matches(e);
}

/* The table's entry for key, minus a complete one that must not be served any more (REFRESH, or
 * replaced or removed on disk): that one leaves the table, and its readers carry on with the old
 * file. */
static struct dduct__store_entry *find_current(struct dduct_store *s,
                                               const struct dduct__store_key *key, int flags,
                                               int trust_watch) {
  struct dduct__store_entry *e = table_find(s, key);
  if (e != NULL && e->state == ST_COMPLETE &&
      ((flags & DDUCT__STORE_REFRESH) || !still_on_disk(e, trust_watch))) {
    table_remove(e);
    idle_del(e);
    entry_maybe_free(e);
    e = NULL;
  }
  return e;
}

int dduct__store_lookup_hot(struct dduct_store *s, const struct dduct__store_key *key, int flags,
                            struct dduct__store_entry **out) {
  struct dduct__store_entry *e;
  if (s == NULL || key == NULL || out == NULL || (flags & DDUCT__STORE_REFRESH))
    return 0; /* a refill is the async lookup's business */
  store_lock(s);
  e = s->freeing ? NULL : table_find(s, key);
  if (e == NULL || e->state != ST_COMPLETE) {
    store_unlock(s);
    return 0;
  }
  idle_del(e);
  entry_ref(e);
  if (e->have_ino && !(e->wd >= 0 && !e->changed)) {
    /* No watch to trust (still_on_disk): the name is checked with a stat, made without the
     * lock so that other loops' hits need not wait for it; our reference keeps e. */
    struct stat st;
    dev_t dev = e->dev;
    ino_t ino = e->ino;
    uint64_t size = e->meta.size;
    int same;
    s->name_checks++;
    uv_mutex_unlock(&s->mu);
    same = stat(e->base, &st) == 0 && st.st_dev == dev && st.st_ino == ino &&
           (uint64_t)st.st_size == size;
    store_lock(s);
    if (!same) { /* replaced or removed: out of the table, its readers keep the old file */
      table_remove(e);
      entry_release(e);
      store_unlock(s);
      return 0;
    }
    if (!same_time(&st.st_mtim, &e->mtime)) { /* written in place: its bytes are in doubt */
      e->mtime = st.st_mtim;
      e->verified = 0;
    }
  }
  s->stats.hits++;
  store_unlock(s);
  touch(s, key);
  *out = e;
  return 1;
}

/* The digest e's body must hash to: a blob's own, or the one its fill recorded in the sidecar
 * (every fill hashes what it writes), so a corrupted .deb is caught like a corrupted blob. Its
 * prefix names the algorithm: sidecars of earlier versions say sha256 for every entry; one this
 * version cannot parse (or none) is not checked. */
static const char *expected_digest(const struct dduct__store_entry *e) {
  if (e->addressed) return e->key.digest;
  return dduct__sum_alg_of(e->meta.digest) != DDUCT__SUM_NONE ? e->meta.digest : NULL;
}

/* Starts the hash a verifying read of e needs (must_verify(e) said so). */
static void verify_start(const struct dduct__store_entry *e, struct dduct__sum *sum) {
  dduct__sum_init(sum, dduct__sum_alg_of(expected_digest(e)));
}

/* 1 when a read of e's whole body must be checked against its digest now. */

static int must_verify(const struct dduct__store_entry *e) {
  enum dduct_verify_hits mode = e->s->o.verify_hits;
  return e->state == ST_COMPLETE && mode != DDUCT_VERIFY_NEVER &&
         (mode == DDUCT_VERIFY_ALWAYS || !e->verified) && expected_digest(e) != NULL;
}

/* The body's hash is final: 0 when it is the digest (the entry is verified), else the entry is
 * dropped (out of the table, files removed: the next request fetches it again) and
 * DDUCT_EDIGEST. */
static int verify_end(struct dduct__store_entry *e, struct dduct__sum *sum) {
  char got[DDUCT__SUM_MAX];
  dduct__sum_final(sum, got);
  e->s->verifications++;
  if (strcmp(got, expected_digest(e)) == 0) {
    e->verified = 1;
    return 0;
  }
  e->s->verify_failures++;
  LOG_WARN(LOG_MOD, "Cache entry \"%s\" (%s) does not match its digest: removed, fetched again "
           "next time", e->meta.url, e->key.rel);
  if (e->in_table) {
    table_remove(e);
    idle_del(e);
    remove_files(e->s, &e->key);
  }
  drop_body(e);
  return DDUCT_EDIGEST;
}

static ssize_t pread_exact(int fd, char *buf, size_t len, uint64_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return DDUCT_ESHORT; /* the file is shorter than the store believed */
    got += (size_t)n;
  }
  return (ssize_t)got;
}

/* Whether a small watched entry's whole body may be kept: read once, later hits copy it, no
 * pread. Only while its watch has seen nothing (a change drops the body: then reads go to the
 * file and a cut one reads short). */
static int body_wanted(const struct dduct__store_entry *e) {
  return e->body == NULL && e->wd >= 0 && !e->changed && e->meta.size > 0 &&
         e->meta.size <= BODY_MAX && e->s->body_bytes + (size_t)e->meta.size <= BODY_BUDGET;
}

/* The body read without s->mu (gen: e->watch_gen when the read began) becomes e's, unless
 * something changed meanwhile. */
static void keep_body(struct dduct__store_entry *e, char **b, unsigned gen) {
  if (!body_wanted(e) || e->watch_gen != gen) return;
  e->body = *b;
  *b = NULL;
  e->s->body_bytes += (size_t)e->meta.size;
}

ssize_t dduct__store_entry_pread(struct dduct__store_entry *e, char *buf, size_t len,
                                 uint64_t off) {
  struct dduct_store *s;
  ssize_t got;
  char *fresh = NULL;
  int fd, verify;
  if (e == NULL) return DDUCT_EINVAL;
  s = e->s;
  store_lock(s);
  if (e->state != ST_COMPLETE || e->fd < 0 || len > SSIZE_MAX || off > e->meta.size ||
      len > e->meta.size - off) {
    store_unlock(s);
    return DDUCT_EINVAL;
  }
  fd = e->fd; /* open until the entry is freed: our caller's reference keeps it */
  if (e->body != NULL) {
    memcpy(buf, e->body + off, len); /* the 4 KiB hit: a copy under the lock, no system call */
    got = (ssize_t)len;
  } else {
    /* The disk read goes without the lock (other loops' lookups must not wait for it). */
    size_t size = (size_t)e->meta.size;
    unsigned gen = e->watch_gen;
    int want = body_wanted(e);
    store_unlock(s);
    if (want && (fresh = malloc(size)) != NULL &&
        pread_exact(fd, fresh, size, 0) == (ssize_t)size) {
      memcpy(buf, fresh + off, len);
      got = (ssize_t)len;
    } else {
      free(fresh);
      fresh = NULL;
      got = pread_exact(fd, buf, len, off);
    }
    store_lock(s);
    if (fresh != NULL) keep_body(e, &fresh, gen);
    if (got < 0) {
      store_unlock(s);
      free(fresh);
      return got;
    }
  }
  verify = off == 0 && len == e->meta.size && must_verify(e);
  if (verify) {
    struct dduct__sum sum;
    int rc;
    verify_start(e, &sum);
    store_unlock(s);
    dduct__sum_update(&sum, buf, len);
    store_lock(s);
    if ((rc = verify_end(e, &sum)) != 0) {
      store_unlock(s);
      free(fresh);
      return rc;
    }
  }
  s->stats.bytes_served += (uint64_t)got;
  store_unlock(s);
  free(fresh);
  return got;
}

uint64_t dduct__store_name_checks(const struct dduct_store *s) {
  uint64_t n;
  store_lock(s);
  n = s->name_checks;
  uv_mutex_unlock((uv_mutex_t *)&s->mu);
  return n;
}

/* l (in no list) joins key's entry, or a new one whose probe starts now; on success it holds a
 * reference on it (l->e). */
static int lookup_join(struct dduct_store *s, struct dduct__store_lookup *l,
                       const struct dduct__store_key *key) {
  struct dduct__store_entry *e = find_current(s, key, l->flags, 0);
  if (e != NULL) idle_del(e);
  if (e == NULL) {
    if ((e = entry_new(s, key)) == NULL) return DDUCT_ENOMEM;
    if (probe_start(e, l->flags) != 0) {
      table_remove(e);
      entry_maybe_free(e);
      return DDUCT_EINTERNAL;
    }
  }
  entry_ref(e);
  l->e = e;
  list_push(&e->waiters, &l->link);
  /* A fill whose every byte is on disk and verified, committing now, is as good as a hit; not
   * for a refill (the origin's file changed since that fetch): it waits for the commit to end,
   * then starts afresh (refresh_waiters). */
  if (e->state == ST_FILLING && !(e->fill->committing && (l->flags & DDUCT__STORE_REFRESH)))
    ready_lookup(l, e->fill->committing ? DDUCT__STORE_HIT : DDUCT__STORE_FOLLOW, 0);
  if (e->state == ST_COMPLETE) ready_lookup(l, DDUCT__STORE_HIT, 0);
  return 0;
}

/* e's commit ended (complete now, or dead): refills that waited for it look up again, which
 * replaces the entry just committed. Caller holds a reference on e. */
static void refresh_waiters(struct dduct__store_entry *e) {
  struct list ws;
  list_move(&e->waiters, &ws);
  while (!list_empty(&ws)) {
    struct dduct__store_lookup *l = DDUCT_CONTAINER_OF(ws.next, struct dduct__store_lookup, link);
    int rc;
    list_del(&l->link);
    if ((rc = lookup_join(e->s, l, &e->key)) == 0) {
      e->refs--; /* the lookup's old reference; the caller's keeps e */
    } else {
      l->e = e;
      ready_lookup(l, DDUCT__STORE_BYPASS, rc);
    }
  }
}

int dduct__store_lookup(struct dduct_store *s, const struct dduct__store_key *key, int flags,
                        dduct__store_lookup_cb cb, void *user_data,
                        struct dduct__store_lookup **out) {
  struct dduct__store_lookup *l;
  int rc;
  if (s == NULL || key == NULL || cb == NULL) return DDUCT_EINVAL;
  if ((l = calloc(1, sizeof(*l))) == NULL) return DDUCT_ENOMEM;
  l->cb = cb;
  l->ud = user_data;
  l->flags = flags;
  list_init(&l->link);
  store_lock(s);
  if (s->freeing) {
    store_unlock(s);
    free(l);
    return DDUCT_ECLOSED;
  }
  l->port = cur(s);
  port_hold(l->port);
  if ((rc = lookup_join(s, l, key)) != 0) {
    port_unhold(l->port);
    store_unlock(s);
    free(l);
    return rc;
  }
  if (out != NULL) *out = l;
  store_unlock(s);
  return 0;
}

void dduct__store_lookup_cancel(struct dduct__store_lookup *l) {
  struct dduct__store_entry *e;
  struct dduct_store *s;
  if (l == NULL) return;
  e = l->e;
  s = e->s;
  store_lock(s);
  list_del(&l->link);
  port_unhold(l->port);
  if (l->role == DDUCT__STORE_FILL && e->state == ST_PENDING) entry_kill(e, UV_ECANCELED);
  entry_release(e);
  store_unlock(s);
  free(l);
}

/* ---- filling ------------------------------------------------------------------------------ */

static char *strdup_or_empty(const char *s) {
  return strdup(s != NULL ? s : "");
}

static char *strip_query(const char *url) {
  char *u = strdup_or_empty(url), *q;
  if (u != NULL && (q = strpbrk(u, "?#")) != NULL) *q = '\0';
  return u;
}

static void update_avail(struct dduct__store_entry *e) {
  const struct fill *f = e->fill;
  e->avail = f->written;
  /* The last byte of a content-addressed body waits for its digest: a client never receives a
   * whole body that has not verified. */
  if (e->addressed && e->meta.size != DDUCT__STORE_SIZE_UNKNOWN && e->meta.size > 0 &&
      e->avail >= e->meta.size)
    e->avail = e->meta.size - 1;
}

static int fill_begin(struct dduct__store_entry *e, const struct dduct__store_meta *m) {
  struct fill *f;
  const char *why;
  if (e->state != ST_PENDING) return DDUCT_EINVAL;
  /* A file that cannot fit even after evicting everything else is not stored at all: the caller
   * streams it through. */
  if (m->size != DDUCT__STORE_SIZE_UNKNOWN && budget_on(e->s) && (why = fits(e->s, m->size))) {
    char *u = strip_query(m->url);
    LOG_INFO(LOG_MOD, "Not cached \"%s\" (%llu bytes): %s; streaming it through",
             u != NULL ? u : "?", (unsigned long long)m->size, why);
    free(u);
    return DDUCT_ETOOBIG;
  }
  if ((f = calloc(1, sizeof(*f))) == NULL) return DDUCT_ENOMEM;
  f->port = cur(e->s);
  list_init(&f->drain_link);
  /* A blob's digest is its name; any other entry's only guards against corruption on disk. */
  dduct__sum_init(&f->sum, e->addressed || e->s->o.checksum == DDUCT_CHECKSUM_SHA256
                               ? DDUCT__SUM_SHA256
                               : dduct__sum_for_fill(DDUCT__SUM_GMAC));
  f->t0 = uv_hrtime();
  f->work.data = e;
  e->fill = f;
  set_meta_str(e, 0, strip_query(m->url), &e->meta.url);
  set_meta_str(e, 1, strdup_or_empty(m->content_type), &e->meta.content_type);
  set_meta_str(e, 2, strdup_or_empty(m->etag), &e->meta.etag);
  set_meta_str(e, 3, strdup_or_empty(m->last_modified), &e->meta.last_modified);
  free(e->headers);
  e->headers = NULL;
  e->meta.headers = NULL;
  e->meta.headers_len = 0;
  if (m->headers != NULL && m->headers_len > 0 && (e->headers = malloc(m->headers_len)) != NULL) {
    memcpy(e->headers, m->headers, m->headers_len);
    e->meta.headers = e->headers;
    e->meta.headers_len = m->headers_len;
  }
  e->meta.size = m->size;
  e->meta.is_private = m->is_private;
  e->state = ST_FILLING;
  publish_meta(e);
  if (m->size != DDUCT__STORE_SIZE_UNKNOWN && budget_on(e->s)) {
    int look;
    uv_mutex_lock(&e->s->ix_lock);
    f->reserved = m->size;
    e->s->reserved += m->size;
    look = needs_room(e->s, m->size);
    uv_mutex_unlock(&e->s->ix_lock);
    if (look) maint_kick(e->s); /* room for it now, and a look at the file system */
  }
  wake_waiters(e, DDUCT__STORE_FOLLOW, 0);
  return 0;
}

int dduct__store_fill_begin(struct dduct__store_entry *e, const struct dduct__store_meta *m) {
  int rc;
  if (e == NULL || m == NULL) return DDUCT_EINVAL;
  store_lock(e->s);
  rc = fill_begin(e, m);
  store_unlock(e->s);
  return rc;
}

void dduct__store_fill_cancel(struct dduct__store_entry *e, int why) {
  struct dduct_store *s;
  if (e == NULL) return;
  s = e->s;
  store_lock(s);
  if (e->state == ST_PENDING && why != 0) s->fill_failures[dduct__fill_fail_reason(why)]++;
  if (e->state == ST_PENDING) entry_kill(e, why);
  entry_release(e);
  store_unlock(s);
}

static void log_discard(struct dduct__store_entry *e, int why) {
  LOG_WARN(LOG_MOD, "Fill discarded \"%s\" after %llu bytes: %s", e->meta.url,
           (unsigned long long)e->fill->received, dduct_strerror(why));
}

static int relay_start(struct dduct__store_entry *e, int why);

static void abort_fill(struct dduct__store_entry *e, int why) {
  if (e->state != ST_FILLING) return;
  if (e->fill != NULL && e->fill->relay) { /* counted and logged when the relay began */
    entry_kill(e, why);
    return;
  }
  e->s->stats.fills_discarded++;
  e->s->fill_failures[dduct__fill_fail_reason(why)]++;
  log_discard(e, why);
  degrade(e->s, why);
  /* A full or failing disk must not cut the clients already reading: they get the rest from
   * memory, and nothing is stored: a full disk degrades to pass-through. */
  if (is_disk_error(why) && relay_start(e, why) == 0) return;
  entry_kill(e, why);
}

static void flush(struct dduct__store_entry *e);

static void write_work(uv_work_t *w) {
  struct dduct__store_entry *e = w->data;
  struct fill *f = e->fill;
  f->work_rc = dduct__store_disk_pwrite(e->fd, f->out, f->out_len, f->out_off);
  if (f->work_rc == 0)
    dduct__sum_update(&f->sum, f->out, f->out_len);
}

/* The store's hold on e is kept until the end: drain_cb may lead the feeder to end the fill and
 * drop its reference. */
static void write_done(uv_work_t *w, int status) {
  struct dduct__store_entry *e = w->data;
  struct dduct_store *s = e->s;
  struct fill *f = e->fill;
  void (*drain)(void *) = NULL;
  void *drain_ud = NULL;
  store_lock(s);
  f->busy = 0;
  if (e->state == ST_FILLING) {
    if (f->work_rc != 0) {
      abort_fill(e, f->work_rc);
    } else {
      f->written += f->out_len;
      if (budget_on(s)) {
        uv_mutex_lock(&s->ix_lock);
        f->counted += f->out_len;
        s->parts_written += f->out_len;
        if (f->reserved < f->written) { /* unknown length: the part is what it wrote */
          s->reserved += f->written - f->reserved;
          f->reserved = f->written;
        }
        uv_mutex_unlock(&s->ix_lock);
        budget_check(s);
      }
      update_avail(e);
      wake_readers(e);
      if (e->state == ST_FILLING) flush(e);
    }
  }
  /* A paused feeder resumes also after a failure: its next fill_write reports the error. This
   * is the filler's loop: called right here, without the lock (the hold keeps e). */
  if (f->was_full && (f->acc_len < DDUCT__STORE_FILL_HIGH || e->state != ST_FILLING)) {
    f->was_full = 0;
    drain = f->drain_cb;
    drain_ud = f->drain_ud;
  }
  if (drain != NULL) {
    store_unlock(s);
    drain(drain_ud);
    store_lock(s);
  }
  e->holds--;
  entry_maybe_free(e);
  store_unlock(s);
}

static void json_add_str(cJSON *o, const char *k, const char *v) {
  cJSON_AddStringToObject(o, k, v != NULL ? v : "");
}

static char *sidecar_json(const struct dduct__store_entry *e, uint64_t size, const char *digest,
                          int64_t stored_at, double fetch_s) {
  cJSON *o = cJSON_CreateObject();
  char *text;
  if (o == NULL) return NULL;
  json_add_str(o, "url", e->meta.url);
  cJSON_AddNumberToObject(o, "size", (double)size);
  json_add_str(o, "content_type", e->meta.content_type);
  json_add_str(o, "etag", e->meta.etag);
  json_add_str(o, "last_modified", e->meta.last_modified);
  json_add_str(o, "digest", digest);
  cJSON_AddNumberToObject(o, "stored_at", (double)stored_at);
  cJSON_AddNumberToObject(o, "fetch_seconds", fetch_s);
  if (e->meta.is_private) cJSON_AddTrueToObject(o, "private");
  if (e->meta.headers != NULL) {
    /* [[name, value], ...]: an array keeps the origin's order and repeated names. */
    cJSON *arr = cJSON_AddArrayToObject(o, "headers");
    const char *name, *value;
    size_t off = 0;
    while (arr != NULL &&
           dduct__store_header_next(e->meta.headers, e->meta.headers_len, &off, &name, &value)) {
      cJSON *pair = cJSON_CreateArray();
      if (pair == NULL || !cJSON_AddItemToArray(arr, pair)) {
        cJSON_Delete(pair);
        cJSON_Delete(o);
        return NULL;
      }
      cJSON_AddItemToArray(pair, cJSON_CreateString(name));
      cJSON_AddItemToArray(pair, cJSON_CreateString(value));
    }
  }
  text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return text;
}

static void commit_work(uv_work_t *w) {
  struct dduct__store_entry *e = w->data;
  struct fill *f = e->fill;
  char *json;
  json = sidecar_json(e, f->written, f->digest, f->stored_at, (uv_hrtime() - f->t0) / 1e9);
  if (json == NULL) {
    dduct__store_disk_discard(e->base);
    f->work_rc = DDUCT_ENOMEM;
    return;
  }
  f->work_rc = dduct__store_disk_commit(e->base, e->fd, json, strlen(json), e->s->o.fsync,
                                        &f->created);
  free(json);
  if (f->work_rc == 0) {
    struct stat st; /* the part was renamed, not copied: our fd is the published file */
    (void)dduct__store_disk_reopen_ro(e->base, e->fd);
    if (fstat(e->fd, &st) == 0) {
      struct dduct__jrec r;
      struct dduct_store *s = e->s;
      e->dev = st.st_dev;
      e->ino = st.st_ino;
      e->mtime = st.st_mtim;
      e->have_ino = 1;
      memset(&r, 0, sizeof(r));
      r.type = '+';
      r.time = (uint32_t)f->stored_at;
      r.size = f->written;
      r.order = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
      if (dduct__store_rel_name(e->key.rel, (char *)&r.kind, r.name) == 0) {
        uv_mutex_lock(&s->ix_lock);
        unreserve_locked(s, f); /* the index counts it from now on */
        (void)dduct__index_put(&s->ix, (char)r.kind, r.name, r.size, r.order);
        uv_mutex_unlock(&s->ix_lock);
        (void)dduct__journal_append(s->root, &r, 1);
      }
    }
  }
}

static void log_commit(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  double secs = (uv_hrtime() - f->t0) / 1e9;
  double mib = f->written / (1024.0 * 1024.0);
  LOG_INFO(LOG_MOD, "Fill completed \"%s\" %llu bytes in %.3f s (%.1f MiB/s)", e->meta.url,
           (unsigned long long)f->written, secs, secs > 0 ? mib / secs : 0.0);
}

static void commit_done(uv_work_t *w, int status) {
  struct dduct__store_entry *e = w->data;
  struct dduct_store *s = e->s;
  struct fill *f = e->fill;
  store_lock(s);
  e->holds--;
  if (e->state == ST_FILLING) {
    e->part_ours = 0; /* renamed into place, or already removed by the work */
    if (f->work_rc != 0) {
      abort_fill(e, f->work_rc);
    } else {
      e->state = ST_COMPLETE;
      e->meta.size = f->written;
      e->meta.stored_at = f->stored_at;
      set_meta_str(e, 4, strdup(f->digest), &e->meta.digest);
      publish_meta(e);
      atomic_store_explicit(&e->complete, 1, memory_order_release);
      e->avail = f->written;
      e->verified = 1; /* hashed as it was written (a blob's fill checks its digest) */
      e->s->stats.fills_completed++;
      e->s->stats.entries += (uint64_t)f->created;
      watch_start(e);
      log_commit(e);
      wake_readers(e);
      if (e->invalidated) drop_invalidated(e);
      entry_ref(e);
      refresh_waiters(e);
      e->refs--;
    }
  }
  entry_maybe_free(e);
  store_unlock(s);
}

/* On the filler's loop (fill_write, fill_end and the work's done callbacks run there). */
static int queue(struct dduct__store_entry *e, uv_work_cb work, uv_after_work_cb done) {
  int rc;
  e->holds++;
  rc = uv_queue_work(e->fill->port->loop, &e->fill->work, work, done);
  if (rc != 0) e->holds--;
  return rc;
}

static void finish(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  if (e->meta.size != DDUCT__STORE_SIZE_UNKNOWN && f->written != e->meta.size) {
    abort_fill(e, DDUCT_ESHORT);
    return;
  }
  /* Every byte is on disk: the two buffers (up to FILL_CAP each) would otherwise stay with the
   * entry while it is kept idle for hits (IDLE_MAX entries). */
  free(f->acc);
  free(f->out);
  f->acc = f->out = NULL;
  f->acc_cap = f->out_cap = 0;
  /* The digest now, on the loop (one last block; no write is in flight), so readers have the
   * whole, verified body at once: the commit's fsyncs (milliseconds) must not hold back the end
   * of their responses, nor the next request on their connections. */
  dduct__sum_final(&f->sum, f->digest);
  if (e->addressed && strcmp(f->digest, e->key.digest) != 0) {
    abort_fill(e, DDUCT_EDIGEST);
    return;
  }
  if (e->meta.size == DDUCT__STORE_SIZE_UNKNOWN) e->meta.size = f->written;
  f->stored_at = e->meta.stored_at = (int64_t)time(NULL);
  publish_meta(e);
  e->avail = f->written;
  wake_readers(e);
  f->committing = 1;
  if (queue(e, commit_work, commit_done) != 0) abort_fill(e, DDUCT_EINTERNAL);
}

static void flush(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  char *tmp;
  size_t cap;
  if (f->relay) return; /* nothing goes to the disk any more */
  if (f->busy || f->committing) return;
  if (f->acc_len == 0) {
    if (f->ended) finish(e);
    return;
  }
  tmp = f->out, cap = f->out_cap;
  f->out = f->acc, f->out_cap = f->acc_cap, f->out_len = f->acc_len;
  f->acc = tmp, f->acc_cap = cap, f->acc_len = 0;
  f->out_off = f->written;
  f->busy = 1;
  if (queue(e, write_work, write_done) != 0) {
    f->busy = 0;
    abort_fill(e, DDUCT_EINTERNAL);
  }
}

/* acc grows by doubling up to FILL_CAP: the feeder pauses at DDUCT__STORE_FILL_HIGH but may
 * overshoot it by what it already holds (a read batch), and doubling past the high-water mark
 * would make both buffers twice that size for good. Only a single write larger than that grows
 * acc beyond it. */
static int reserve(struct fill *f, size_t need) {
  size_t cap = f->acc_cap ? f->acc_cap : 64 * 1024;
  char *p;
  if (f->acc_len + need <= f->acc_cap) return 0;
  while (cap < f->acc_len + need) cap *= 2;
  if (cap > FILL_CAP) cap = DDUCT_MAX((size_t)FILL_CAP, f->acc_len + need);
  if ((p = realloc(f->acc, cap)) == NULL) return DDUCT_ENOMEM;
  f->acc = p;
  f->acc_cap = cap;
  return 0;
}

static int fill_write(struct dduct__store_entry *e, const char *data, size_t len) {
  struct fill *f = e->fill;
  if (e->state != ST_FILLING || f->ended) return e->error != 0 ? e->error : DDUCT_EINVAL;
  if (f->relay) return relay_write(e, data, len);
  if (e->meta.size != DDUCT__STORE_SIZE_UNKNOWN && f->received + len > e->meta.size) {
    abort_fill(e, DDUCT_ETOOBIG);
    return DDUCT_ETOOBIG;
  }
  if (reserve(f, len) != 0) {
    abort_fill(e, DDUCT_ENOMEM);
    return DDUCT_ENOMEM;
  }
  memcpy(f->acc + f->acc_len, data, len);
  f->acc_len += len;
  f->received += len;
  e->s->stats.bytes_fetched += len;
  if (f->acc_len >= DDUCT__STORE_FILL_HIGH) f->was_full = 1;
  flush(e);
  return 0;
}

int dduct__store_fill_write(struct dduct__store_entry *e, const char *data, size_t len) {
  int rc;
  store_lock(e->s);
  rc = fill_write(e, data, len);
  store_unlock(e->s);
  return rc;
}

int dduct__store_fill_full(const struct dduct__store_entry *e) {
  int full = 0;
  store_lock(e->s);
  if (e->state == ST_FILLING)
    full = e->fill->relay ? e->fill->rlen >= DDUCT__STORE_FILL_HIGH
                          : e->fill->acc_len >= DDUCT__STORE_FILL_HIGH;
  uv_mutex_unlock((uv_mutex_t *)&e->s->mu);
  return full;
}

void dduct__store_fill_on_drain(struct dduct__store_entry *e, void (*drain_cb)(void *),
                                void *ud) {
  store_lock(e->s);
  if (e->fill != NULL) {
    e->fill->drain_cb = drain_cb;
    e->fill->drain_ud = ud;
  }
  store_unlock(e->s);
}

void dduct__store_fill_end(struct dduct__store_entry *e, int status) {
  struct dduct_store *s;
  if (e == NULL) return;
  s = e->s;
  store_lock(s);
  if (e->state == ST_FILLING && !e->fill->ended) {
    e->fill->ended = 1;
    /* The feeder is done and may be freed as soon as we return: a write still in flight must not
     * call it back (a fill paused at its high-water mark that ended before the write caught up
     * called a freed cache job; ASan, the apt rig). */
    e->fill->drain_cb = NULL;
    if (status < 0)
      abort_fill(e, status);
    else if (e->fill->relay)
      relay_end(e);
    else
      flush(e);
  }
  entry_release(e);
  store_unlock(s);
}

/* ---- relay after a disk error ------------------------------------------------------------- */

/* The disk failed (full, quota, I/O): the bytes not written (the failed batch and what came
 * after) become the relay's window, the part's name goes (its written bytes stay readable
 * through our fd), the entry leaves the table (later requests are proxied uncached: the store
 * is degraded), and the readers go on: below the window from the file, in it from memory. */
static int relay_start(struct dduct__store_entry *e, int why) {
  struct fill *f = e->fill;
  size_t out_len, acc_len;
  unsigned n = 0;
  if (f == NULL || f->busy || list_empty(&e->all_readers)) return -1;
  out_len = f->out != NULL ? f->out_len : 0;
  acc_len = f->acc != NULL ? f->acc_len : 0;
  if (out_len + acc_len > 0) {
    if ((f->rbuf = malloc(out_len + acc_len)) == NULL) return -1;
    if (out_len > 0) memcpy(f->rbuf, f->out, out_len);
    if (acc_len > 0) memcpy(f->rbuf + out_len, f->acc, acc_len);
    if (!f->committing) dduct__sum_update(&f->sum, f->rbuf, out_len + acc_len);
  }
  f->rlen = f->rcap = out_len + acc_len;
  f->rbase = f->written;
  free(f->out);
  free(f->acc);
  f->out = f->acc = NULL;
  f->out_len = f->acc_len = f->out_cap = f->acc_cap = 0;
  f->relay = 1;
  f->relay_done = f->committing; /* a failed commit: every byte was verified and written */
  e->avail = f->written;
  table_remove(e);
  discard_part(e);
  unreserve(e);
  for (struct list *l = e->all_readers.next; l != &e->all_readers; l = l->next) n++;
  wake_waiters(e, DDUCT__STORE_BYPASS, why); /* refills waiting for a commit that failed */
  LOG_WARN(LOG_MOD, "Relaying \"%s\" to %u client(s) without storing it (%s)", e->meta.url, n,
           dduct_strerror(why));
  wake_readers(e);
  return 0;
}

/* Drop what every reader has passed; resume a paused feeder once the window is small. */
static void relay_trim(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  uint64_t low = f->rbase + f->rlen;
  for (struct list *l = e->all_readers.next; l != &e->all_readers; l = l->next) {
    const struct dduct__store_reader *r = DDUCT_CONTAINER_OF(l, struct dduct__store_reader, all);
    if (!r->freed && r->off < low) low = r->off;
  }
  if (low > f->rbase) {
    size_t d = (size_t)(low - f->rbase);
    memmove(f->rbuf, f->rbuf + d, f->rlen - d);
    f->rlen -= d;
    f->rbase = low;
  }
  if (f->was_full && f->rlen < DDUCT__STORE_FILL_HIGH) {
    f->was_full = 0;
    queue_drain(e); /* we may be a reader's thread, and under the lock */
  }
}

static int relay_write(struct dduct__store_entry *e, const char *data, size_t len) {
  struct fill *f = e->fill;
  if (list_empty(&e->all_readers)) { /* nobody left to relay to */
    entry_kill(e, UV_ENOSPC);
    return UV_ENOSPC;
  }
  if (f->rlen + len > f->rcap) {
    size_t cap = DDUCT_MAX(f->rlen + len, f->rcap * 2);
    char *p = realloc(f->rbuf, cap);
    if (p == NULL) {
      entry_kill(e, DDUCT_ENOMEM);
      return DDUCT_ENOMEM;
    }
    f->rbuf = p;
    f->rcap = cap;
  }
  memcpy(f->rbuf + f->rlen, data, len);
  f->rlen += len;
  f->received += len;
  e->s->stats.bytes_fetched += len;
  if (!f->committing) dduct__sum_update(&f->sum, data, len);
  if (f->rlen >= DDUCT__STORE_FILL_HIGH) f->was_full = 1;
  wake_readers(e);
  return 0;
}

/* The origin's body ended cleanly: the length and (for a blob) the digest decide whether the
 * readers get the end of it. */
static void relay_end(struct dduct__store_entry *e) {
  struct fill *f = e->fill;
  if (e->meta.size == DDUCT__STORE_SIZE_UNKNOWN) {
    e->meta.size = f->received;
    publish_meta(e);
  }
  if (f->received != e->meta.size) {
    entry_kill(e, DDUCT_ESHORT);
    return;
  }
  if (!f->relay_done && e->addressed) {
    char digest[DDUCT__SUM_MAX];
    dduct__sum_final(&f->sum, digest);
    if (strcmp(digest, e->key.digest) != 0) {
      entry_kill(e, DDUCT_EDIGEST);
      return;
    }
  }
  f->relay_done = 1;
  wake_readers(e);
}

/* A reader past the file's written bytes, in the window: copy what it may have now. 0 when it
 * must wait. */
static int relay_read(struct dduct__store_reader *r, uint64_t end) {
  struct dduct__store_entry *e = r->e;
  struct fill *f = e->fill;
  uint64_t lim = DDUCT_MIN(f->rbase + f->rlen, end);
  size_t n;
  /* A blob's last byte waits for its digest, as in a fill. */
  if (e->addressed && !f->relay_done && e->meta.size != DDUCT__STORE_SIZE_UNKNOWN &&
      lim >= e->meta.size)
    lim = e->meta.size - 1;
  if (r->off < f->rbase || r->off >= lim) return 0;
  if (r->buf == NULL && (r->buf = malloc(r->cap)) == NULL) { /* trimmed */
    ready_reader(r, DDUCT_ENOMEM);
    return 1;
  }
  n = (size_t)DDUCT_MIN(lim - r->off, (uint64_t)r->cap);
  memcpy(r->buf, f->rbuf + (r->off - f->rbase), n);
  r->off += n;
  e->s->stats.bytes_served += n;
  ready_reader(r, (int)n);
  relay_trim(e);
  return 1;
}

/* ---- readers ------------------------------------------------------------------------------ */

/* ---- verifying hits (verify_hits) --------------------------------------------------------- */

/* n bytes at buf were read for r at r->off: advance, count and, for a verifying reader, hash
 * them; the chunk that holds the last byte is handed out only once the whole body matched its
 * digest (DDUCT_EDIGEST instead). */
static ssize_t got_bytes(struct dduct__store_reader *r, const char *buf, ssize_t n) {
  struct dduct__store_entry *e = r->e;
  if (n <= 0) return n;
  if (r->verify) {
    /* The hash without the lock (a first hit of a large entry hashes all of it): the reader's
     * own state, and every caller owns the lock at its top (read_unlocked says which). */
    uv_mutex_unlock(&e->s->mu);
    dduct__sum_update(&r->sum, buf, (size_t)n);
    store_lock(e->s);
    if (r->off + (uint64_t)n >= e->meta.size) {
      int rc = verify_end(e, &r->sum);
      r->verify = 0;
      if (rc != 0) return rc;
    }
  }
  r->off += (uint64_t)n;
  e->s->stats.bytes_served += (uint64_t)n;
  return n;
}

int dduct__store_reader_new(struct dduct__store_entry *e, uint64_t offset, uint64_t len,
                            dduct__store_read_cb cb, void *user_data,
                            struct dduct__store_reader **out) {
  struct dduct__store_reader *r;
  struct dduct_store *s;
  if (e == NULL || cb == NULL || out == NULL) return DDUCT_EINVAL;
  if (len != DDUCT__STORE_SIZE_UNKNOWN && offset > UINT64_MAX - len - 1) return DDUCT_EINVAL;
  if ((r = calloc(1, sizeof(*r))) == NULL) return DDUCT_ENOMEM;
  s = e->s;
  store_lock(s);
  r->port = cur(s);
  r->cap = DDUCT__STORE_READ_CHUNK;
  if (e->state == ST_COMPLETE) { /* a small body needs no full chunk */
    uint64_t end = len != DDUCT__STORE_SIZE_UNKNOWN ? offset + len : e->meta.size;
    uint64_t want = end > offset ? end - offset : 1;
    if (want < r->cap) r->cap = (size_t)want;
  }
  if ((r->buf = malloc(r->cap)) == NULL) {
    store_unlock(s);
    free(r);
    return DDUCT_ENOMEM;
  }
  list_init(&r->link);
  r->e = e;
  r->off = offset;
  r->end = len == DDUCT__STORE_SIZE_UNKNOWN ? len : offset + len;
  r->cb = cb;
  r->ud = user_data;
  /* Only a read of the whole body can be checked (a range is served as stored). */
  if (offset == 0 && (len == DDUCT__STORE_SIZE_UNKNOWN || len >= e->meta.size) &&
      must_verify(e) && e->meta.size > 0) {
    r->verify = 1;
    verify_start(e, &r->sum);
  }
  list_push(&e->all_readers, &r->all);
  entry_ref(e);
  e->nreaders++;
  store_unlock(s);
  *out = r;
  return 0;
}

static void reader_destroy(struct dduct__store_reader *r) {
  struct dduct__store_entry *e = r->e;
  list_del(&r->all);
  e->nreaders--;
  free(r->ahead);
  free(r->buf);
  free(r);
  entry_release(e);
}

/* Read what the page cache holds, on the loop thread, never waiting for the disk
 * (preadv2 with RWF_NOWAIT). Going through the thread pool costs two thread wake-ups: measured
 * ~0.5 ms per 128 KiB chunk on a 2-core VM whose cores are busy encrypting, against ~20 us for
 * the copy itself, and large hits were bound by it. Returns the bytes read (maybe fewer than
 * len), or UV_EAGAIN when nothing could be had without waiting (then use the thread pool). */
static ssize_t pread_cached(int fd, char *buf, size_t len, uint64_t off) {
#ifdef RWF_NOWAIT
  static atomic_int unsupported; /* an old kernel or a file system without it: ask once */
  struct iovec v = {buf, len};
  ssize_t n;
  if (atomic_load_explicit(&unsupported, memory_order_relaxed)) return UV_EAGAIN;
  do
    n = preadv2(fd, &v, 1, (off_t)off, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  if (n > 0) return n;
  if (n < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL))
    atomic_store_explicit(&unsupported, 1, memory_order_relaxed);
#else
  (void)fd, (void)buf, (void)len, (void)off;
#endif
  return UV_EAGAIN; /* 0 (a short file) too: the thread pool's read reports it */
}

static void prefetch_cb(uv_fs_t *req);

/* Start reading the chunk after the one just handed out. */
static void prefetch(struct dduct__store_reader *r) {
  struct dduct__store_entry *e = r->e;
  uint64_t end = r->end == DDUCT__STORE_SIZE_UNKNOWN ? e->meta.size : r->end;
  uv_buf_t b;
  /* Reading ahead pays only where a read waits for the disk: a page-cache read on the loop is
   * a copy, and a second buffer per reader is memory for nothing (50 readers: 6 MiB). */
  if (!r->slow) return;
  if (e->state != ST_COMPLETE || r->freed || r->pstate != P_NONE || r->off >= end) return;
  if (r->ahead == NULL && (r->ahead = malloc(r->cap)) == NULL) return; /* plain reads then */
  b = uv_buf_init(r->ahead, (unsigned)DDUCT_MIN(end - r->off, (uint64_t)r->cap));
  if ((r->pres = pread_cached(e->fd, b.base, b.len, r->off)) > 0) {
    r->pstate = P_DONE; /* taken by the next dduct__store_reader_read */
    r->slow = 0;        /* cached again: no more reading ahead */
    return;
  }
  r->pstate = P_READING;
  r->preq.data = r;
  if (uv_fs_read(r->port->loop, &r->preq, e->fd, &b, 1, (int64_t)r->off, prefetch_cb) != 0) {
    uv_fs_req_cleanup(&r->preq);
    r->pstate = P_NONE;
  }
}

/* The chunk read ahead becomes the consumer's: swap the buffers, account, return its result. */
static ssize_t take_ahead(struct dduct__store_reader *r) {
  char *t = r->buf;
  ssize_t n = r->pres;
  r->buf = r->ahead;
  r->ahead = t;
  r->pstate = P_NONE;
  if (n == 0) n = DDUCT_ESHORT; /* the file is shorter than the store believed */
  return got_bytes(r, r->buf, n);
}

static void prefetch_cb(uv_fs_t *req) {
  struct dduct__store_reader *r = req->data;
  struct dduct_store *s = r->e->s;
  ssize_t n;
  store_lock(s);
  r->pres = req->result;
  uv_fs_req_cleanup(req);
  r->pstate = P_DONE;
  if (r->freed) {
    reader_destroy(r);
    store_unlock(s);
    return;
  }
  if (!r->want && r->trimmed) { /* the consumer waits on a stalled client: keep nothing */
    free(r->ahead);
    r->ahead = NULL;
    r->pstate = P_NONE;
    store_unlock(s);
    return;
  }
  if (!r->want) { /* kept until the consumer asks */
    store_unlock(s);
    return;
  }
  r->want = 0;
  r->state = R_IDLE;
  n = take_ahead(r);
  if (n > 0) prefetch(r); /* into the buffer the consumer gave back by asking */
  store_unlock(s);
  r->cb(r->ud, n, n > 0 ? r->buf : NULL);
}

static void read_cb(uv_fs_t *req) {
  struct dduct__store_reader *r = req->data;
  struct dduct__store_entry *e = r->e;
  struct dduct_store *s = e->s;
  ssize_t n = req->result;
  store_lock(s);
  uv_fs_req_cleanup(req);
  r->state = R_IDLE;
  if (r->freed) {
    reader_destroy(r);
    store_unlock(s);
    return;
  }
  if (e->state == ST_DEAD) n = e->error != 0 ? e->error : DDUCT_ECLOSED;
  else if (n == 0) n = DDUCT_ESHORT; /* the file is shorter than the store believed */
  n = got_bytes(r, r->buf, n);
  if (n > 0) prefetch(r);
  store_unlock(s);
  r->cb(r->ud, n, n > 0 ? r->buf : NULL);
}

static ssize_t pread_once(int fd, char *buf, size_t len, uint64_t off) {
  ssize_t got;
  do
    got = pread(fd, buf, len, (off_t)off);
  while (got < 0 && errno == EINTR);
  if (got < 0) return -errno;
  return got == 0 ? DDUCT_ESHORT : got; /* 0: the file is shorter than the store believed */
}

/* A read of bytes already on disk ([off, avail)), on the reader's own thread, without s->mu:
 * other loops' lookups do not wait for a page-cache copy. Only from a call that owns the lock
 * at the top (reader_read, a port's pumps), never from inside another operation: the entry
 * (the reader's reference keeps it) may change meanwhile, its fd and these bytes do not. */
static ssize_t read_unlocked(struct dduct__store_reader *r, char *buf, size_t len, int cached) {
  struct dduct_store *s = r->e->s;
  int fd = r->e->fd;
  uint64_t off = r->off;
  ssize_t got;
  uv_mutex_unlock(&s->mu);
  got = cached ? pread_cached(fd, buf, len, off) : pread_once(fd, buf, len, off);
  store_lock(s);
  return got;
}

/* The whole rest of a small complete range in one pread on the loop thread; delivered later. */
static void read_now(struct dduct__store_reader *r, size_t n) {
  ssize_t got = read_unlocked(r, r->buf, n, 0);
  ready_reader(r, (int)got_bytes(r, r->buf, got));
}

static void start_read(struct dduct__store_reader *r, uint64_t end) {
  struct dduct__store_entry *e = r->e;
  uint64_t n = DDUCT_MIN(e->avail, end) - r->off;
  uv_buf_t b;
  int rc;
  ssize_t got;
  if (r->buf == NULL && (r->buf = malloc(r->cap)) == NULL) { /* trimmed */
    ready_reader(r, DDUCT_ENOMEM);
    return;
  }
  b = uv_buf_init(r->buf, (unsigned)DDUCT_MIN(n, (uint64_t)r->cap));
  if (e->state == ST_COMPLETE && n <= SMALL_READ && n <= r->cap) {
    read_now(r, (size_t)n);
    return;
  }
  r->slow = (got = read_unlocked(r, b.base, b.len, 1)) <= 0;
  if (got > 0) {
    ready_reader(r, (int)got_bytes(r, r->buf, got));
    return;
  }
  r->state = R_READING;
  r->req.data = r;
  rc = uv_fs_read(r->port->loop, &r->req, e->fd, &b, 1, (int64_t)r->off, read_cb);
  if (rc != 0) {
    uv_fs_req_cleanup(&r->req);
    ready_reader(r, rc);
  }
}

static void pump(struct dduct__store_reader *r) {
  struct dduct__store_entry *e = r->e;
  uint64_t end = r->end;
  /* The size is known at the commit, or before: from the origin's length, or at the fill's end
   * (finish). A reader that has every byte is done without waiting for the commit. */
  if (end == DDUCT__STORE_SIZE_UNKNOWN) end = e->meta.size;
  if (e->state == ST_DEAD)
    ready_reader(r, e->error != 0 ? e->error : DDUCT_ECLOSED);
  else if (r->off >= end)
    ready_reader(r, 0);
  else if (r->off < e->avail)
    start_read(r, end);
  else if (e->state == ST_FILLING && e->fill->relay && relay_read(r, end))
    ; /* from the relay's memory */
  else if (e->state == ST_COMPLETE)
    ready_reader(r, DDUCT_ESHORT); /* a range past the end of the file */
  else {
    r->state = R_WAIT;
    list_push(&e->readers, &r->link);
    if (!r->held) {
      r->held = 1;
      port_hold(r->port);
    }
  }
}

void dduct__store_reader_trim(struct dduct__store_reader *r) {
  if (r == NULL) return;
  store_lock(r->e->s);
  if (r->state != R_IDLE || r->freed) {
    store_unlock(r->e->s);
    return;
  }
  free(r->buf);
  r->buf = NULL;
  if (r->pstate == P_DONE) r->pstate = P_NONE; /* not taken: off still points at its bytes */
  if (r->pstate == P_NONE) {
    free(r->ahead);
    r->ahead = NULL;
  }
  r->trimmed = 1;
  store_unlock(r->e->s);
}

int dduct__store_reader_read(struct dduct__store_reader *r) {
  struct dduct_store *s;
  if (r == NULL) return DDUCT_EINVAL;
  s = r->e->s;
  store_lock(s);
  if (r->state != R_IDLE || r->freed) {
    store_unlock(s);
    return DDUCT_EINVAL;
  }
  r->trimmed = 0;
  if (r->pstate == P_READING) { /* delivered by prefetch_cb */
    r->want = 1;
    r->state = R_READING;
  } else if (r->pstate == P_DONE) {
    ssize_t n = take_ahead(r);
    if (n > 0) prefetch(r);
    ready_reader(r, (int)n);
  } else {
    pump(r);
  }
  store_unlock(s);
  return 0;
}

uint64_t dduct__store_reader_offset(const struct dduct__store_reader *r) {
  return r->off;
}

void dduct__store_reader_free(struct dduct__store_reader *r) {
  struct dduct_store *s;
  if (r == NULL) return;
  s = r->e->s;
  store_lock(s);
  list_del(&r->link); /* out of a wait or ready list, if in one */
  reader_unhold(r);
  if (r->state == R_READING || r->pstate == P_READING)
    r->freed = 1; /* read_cb or prefetch_cb finishes the job */
  else
    reader_destroy(r);
  store_unlock(s);
}

/* ---- the budget --------------------------------------------------------------------------- */

static uint64_t min_free_bytes(const struct dduct_store *s, uint64_t total) {
  if (s->o.min_free != 0) return s->o.min_free;
  return total / 100 * s->o.min_free_percent;
}

static int budget_on(const struct dduct_store *s) {
  return s->o.max_size != 0 || s->o.min_free != 0 || s->o.min_free_percent != 0;
}

/* A fill of size bytes was just reserved: does it need the maintenance now (evict, look at the
 * file system) rather than at its next turn (MAINT_MS)? When the budget is already exceeded
 * with it, when the last look at the file system leaves it no margin, or when it is large
 * (ROOM_LOOK_BYTES: worth a fresh look). A pass for every small fill cost a pool hand-off, a
 * statfs and a read of the journal each: ~15 % of a 4 KiB miss. Caller holds ix_lock. */
#define ROOM_LOOK_BYTES (16u << 20)
static int needs_room(const struct dduct_store *s, uint64_t size) {
  uint64_t keep = min_free_bytes(s, s->fs_total), pending = s->reserved - s->parts_written;
  if (size >= ROOM_LOOK_BYTES || s->fs_total == 0) return 1;
  if (s->o.max_size != 0 && s->ix.bytes + s->reserved > s->o.max_size) return 1;
  /* Twice what our fills still have to write: other processes write too, and the last look
   * may be MAINT_MS old. */
  return keep != 0 && s->fs_free < keep + 2 * pending;
}

/* A fill's bytes leave the budget's in-flight count (committed: the index has them now). Caller
 * holds ix_lock. */
static void unreserve_locked(struct dduct_store *s, struct fill *f) {
  if (f == NULL) return;
  s->reserved -= f->reserved;
  s->parts_written -= f->counted;
  f->reserved = f->counted = 0;
}

static void unreserve(struct dduct__store_entry *e) {
  if (e->fill == NULL || (e->fill->reserved == 0 && e->fill->counted == 0)) return;
  uv_mutex_lock(&e->s->ix_lock);
  unreserve_locked(e->s, e->fill);
  uv_mutex_unlock(&e->s->ix_lock);
}

/* Caller holds ix_lock (uses come from every loop). */
static void jq_push(struct dduct_store *s, const struct dduct__jrec *r) {
  if (s->jq_n == s->jq_cap) {
    size_t cap = s->jq_cap ? s->jq_cap * 2 : 64;
    struct dduct__jrec *v;
    if (cap > 65536 || (v = realloc(s->jq, cap * sizeof(*v))) == NULL) return; /* a lost use */
    s->jq = v;
    s->jq_cap = cap;
  }
  s->jq[s->jq_n++] = *r;
}

/* A hit: SIEVE's visited bit and the last-used time. Recorded in the journal (in the next batch)
 * only when the bit was clear or the time is old, so hits cost no writes. */
static void touch(struct dduct_store *s, const struct dduct__store_key *k) {
  struct dduct__jrec r;
  uint32_t i, now = (uint32_t)time(NULL);
  int record = 0;
  memset(&r, 0, sizeof(r));
  if (dduct__store_rel_name(k->rel, (char *)&r.kind, r.name) != 0) return;
  uv_mutex_lock(&s->ix_lock);
  i = dduct__index_find(&s->ix, (char)r.kind, r.name);
  if (i != DDUCT__INDEX_NONE) {
    struct dduct__index_rec *x = &s->ix.recs[i];
    record = !x->visited || now - x->last_used >= TOUCH_REFRESH_S;
    x->visited = 1;
    x->last_used = now;
    r.size = x->size;
    r.order = x->order;
  }
  if (record) {
    r.type = 'h';
    r.time = now;
    jq_push(s, &r);
  }
  uv_mutex_unlock(&s->ix_lock);
}

/* The entry's files were removed here (invalidation, cache rm): out of the budget, and the other
 * processes sharing file_dir are told (in the next journal batch). */
static void index_forget(struct dduct_store *s, const struct dduct__store_key *k) {
  struct dduct__jrec r;
  uint32_t i;
  memset(&r, 0, sizeof(r));
  if (dduct__store_rel_name(k->rel, (char *)&r.kind, r.name) != 0) return;
  uv_mutex_lock(&s->ix_lock);
  if ((i = dduct__index_find(&s->ix, (char)r.kind, r.name)) != DDUCT__INDEX_NONE) {
    r.order = s->ix.recs[i].order;
    r.size = s->ix.recs[i].size;
    (void)dduct__index_remove(&s->ix, (char)r.kind, r.name, r.order);
    r.type = '-';
    r.time = (uint32_t)time(NULL);
    jq_push(s, &r);
  }
  uv_mutex_unlock(&s->ix_lock);
}

/* Whether a fill of size bytes can be stored at all (NULL) or why not. */
static const char *fits(struct dduct_store *s, uint64_t size) {
  const char *why = NULL;
  uv_mutex_lock(&s->ix_lock);
  if (s->o.max_size != 0 && size > s->o.max_size) {
    why = "larger than [cache] max_size";
  } else if (s->fs_total != 0) {
    uint64_t keep = min_free_bytes(s, s->fs_total);
    uint64_t pending = s->reserved - s->parts_written;
    uint64_t could = s->fs_free + s->ix.bytes; /* free space once every entry is evicted */
    if (keep != 0 && (could < pending || could - pending < keep || could - pending - keep < size))
      why = "no room on the file system even after eviction ([cache] min_free)";
  }
  uv_mutex_unlock(&s->ix_lock);
  return why;
}

/* Evict by SIEVE until the budget holds: max_size over the entries plus our fills in flight
 * (their announced size, or what they wrote), and min_free over the file system counting what
 * our fills will still write. Removing what is evicted is disk work: done right here, on the
 * pool, with the lock released around each unlink. Caller holds ix_lock. */
static void evict_locked(struct dduct_store *s) {
  struct dduct__jrec batch[64];
  size_t nb = 0, cap = 0;
  uint64_t need = 0, freed = 0, used = s->ix.bytes + s->reserved;
  uint64_t keep = min_free_bytes(s, s->fs_total), pending = s->reserved - s->parts_written;
  s->ev_why = 0;
  if (s->o.max_size != 0 && used > s->o.max_size) {
    need = used - s->o.max_size;
    s->ev_why = 1;
  }
  if (keep != 0 && s->fs_total != 0 && s->fs_free < keep + pending &&
      keep + pending - s->fs_free > need) {
    need = keep + pending - s->fs_free;
    s->ev_why = 2;
  }
  s->ev_need = need;
  while (freed < need) {
    uint32_t i = dduct__index_victim(&s->ix, NULL);
    struct dduct__index_rec v;
    int rc;
    if (i == DDUCT__INDEX_NONE) break;
    v = s->ix.recs[i];
    (void)dduct__index_remove(&s->ix, v.kind, v.name, v.order);
    uv_mutex_unlock(&s->ix_lock);
    rc = dduct__store_disk_evict(s->root, v.kind, v.name, v.order);
    if (rc == 0) {
      memset(&batch[nb], 0, sizeof(batch[nb]));
      batch[nb].type = '-';
      batch[nb].kind = (uint8_t)v.kind;
      batch[nb].time = (uint32_t)time(NULL);
      batch[nb].size = v.size;
      batch[nb].order = v.order;
      memcpy(batch[nb].name, v.name, 32);
      if (++nb == DDUCT_ARRAY_SIZE(batch)) {
        (void)dduct__journal_append(s->root, batch, nb);
        nb = 0;
      }
    }
    uv_mutex_lock(&s->ix_lock);
    if (rc != 0) continue; /* gone already, or replaced by a newer version (indexed by its '+') */
    freed += v.size;
    s->ev_count++;
    s->ev_bytes += v.size;
    if (s->nvictims == cap) {
      char(*nv)[72] = realloc(s->victims, (cap = cap ? cap * 2 : 16) * sizeof(*nv));
      if (nv == NULL) continue;
      s->victims = nv;
    }
    dduct__store_rel_of(v.kind, v.name, s->victims[s->nvictims++]);
  }
  if (nb > 0) {
    uv_mutex_unlock(&s->ix_lock);
    (void)dduct__journal_append(s->root, batch, nb);
    uv_mutex_lock(&s->ix_lock);
  }
}

/* Maintenance on the pool: write the batch of uses, read the other processes' records, check
 * the file system, evict what the budget needs, rewrite an oversized journal. */
static void maint_work(uv_work_t *w) {
  struct dduct_store *s = w->data;
  uint64_t fs_free = 0, fs_total = 0;
  int have_fs;
  (void)dduct__journal_append(s->root, s->jq_out, s->jq_out_n);
  have_fs = dduct__store_fs_space(s->root, &fs_free, &fs_total) == 0;
  uv_mutex_lock(&s->ix_lock);
  if (have_fs) {
    s->fs_free = fs_free;
    s->fs_total = fs_total;
  }
  (void)dduct__journal_apply(s->root, &s->ix, &s->j_off, &s->j_ino, 1);
  if (s->loaded) {
    evict_locked(s);
    if (dduct__journal_size(s->root) > JOURNAL_MAX)
      (void)dduct__journal_compact(s->root, &s->ix, &s->j_off, &s->j_ino);
  }
  uv_mutex_unlock(&s->ix_lock);
}

/* Entries evicted are served no more; one nobody reads is closed now, so its blocks are freed
 * (readers keep theirs open and finish: the file goes when the last of them closes it). */
static void drop_victims(struct dduct_store *s) {
  for (size_t i = 0; i < s->nvictims; i++) {
    struct dduct__store_key k;
    struct dduct__store_entry *e;
    memset(&k, 0, sizeof(k));
    memcpy(k.rel, s->victims[i], sizeof(k.rel));
    if ((e = table_find(s, &k)) == NULL || e->state != ST_COMPLETE) continue;
    table_remove(e);
    idle_del(e);
    entry_maybe_free(e);
  }
  s->nvictims = 0;
}

static void maint_done(uv_work_t *w, int status) {
  struct dduct_store *s = w->data;
  uint64_t n, bytes, need;
  int why;
  (void)status;
  store_lock(s);
  s->works--;
  s->maint_busy = 0;
  free(s->jq_out);
  s->jq_out = NULL;
  s->jq_out_n = 0;
  uv_mutex_lock(&s->ix_lock);
  n = s->ev_count, bytes = s->ev_bytes, need = s->ev_need, why = s->ev_why;
  s->ev_count = s->ev_bytes = 0;
  uv_mutex_unlock(&s->ix_lock);
  if (n > 0) {
    s->stats.evictions += n;
    s->stats.bytes_evicted += bytes;
    LOG_INFO(LOG_MOD, "Evicted %llu entr%s (%llu bytes) to keep [cache] %s", (unsigned long long)n,
             n == 1 ? "y" : "ies", (unsigned long long)bytes, why == 2 ? "min_free" : "max_size");
  } else if (need > 0 && why != 0) {
    LOG_DEBUG(LOG_MOD, "Over [cache] %s by %llu bytes with nothing left to evict",
              why == 2 ? "min_free" : "max_size", (unsigned long long)need);
  }
  drop_victims(s);
  if (!s->freeing && s->maint_again) {
    s->maint_again = 0;
    maint_kick(s);
  }
  store_unlock(s);
}

/* Maintenance runs from the home loop; another loop's thread asks it to. s->mu held. */
static void maint_kick(struct dduct_store *s) {
  if (s->freeing) return;
  if (cur(s) != s->home) {
    s->maint_wanted = 1;
    port_kick(s->home);
    return;
  }
  if (s->maint_busy) {
    s->maint_again = 1;
    return;
  }
  s->maint_busy = 1;
  uv_mutex_lock(&s->ix_lock);
  s->jq_out = s->jq;
  s->jq_out_n = s->jq_n;
  s->jq = NULL;
  s->jq_n = s->jq_cap = 0;
  uv_mutex_unlock(&s->ix_lock);
  s->maint_w.data = s;
  s->works++;
  if (uv_queue_work(s->loop, &s->maint_w, maint_work, maint_done) != 0) {
    s->works--;
    s->maint_busy = 0;
    free(s->jq_out);
    s->jq_out = NULL;
  }
}

static void maint_timer_cb(uv_timer_t *t) {
  struct dduct_store *s = t->data;
  store_lock(s);
  maint_kick(s);
  store_unlock(s);
}

/* After our fills grew: evict now when over max_size (min_free is checked by the next
 * maintenance, which asks the file system). */
static void budget_check(struct dduct_store *s) {
  int over;
  if (!budget_on(s)) return;
  uv_mutex_lock(&s->ix_lock);
  over = s->o.max_size != 0 && s->ix.bytes + s->reserved > s->o.max_size;
  uv_mutex_unlock(&s->ix_lock);
  if (over) maint_kick(s);
}

/* ---- loading the index in the background -------------------------------------------------- */

static void load_work(uv_work_t *w) {
  struct dduct_store *s = w->data;
  uint64_t off = 0, ino = 0, fs_free = 0, fs_total = 0;
  int have_fs = dduct__store_fs_space(s->root, &fs_free, &fs_total) == 0;
  dduct__index_init(&s->load_ix);
  if (dduct__store_load_index(s->root, &s->load_ix, &s->load_st, &s->cancel) != 0) {
    dduct__index_free(&s->load_ix);
    return;
  }
  /* Uses recorded by earlier runs and by the other processes (not their commits: the disk just
   * told us what exists). */
  (void)dduct__journal_apply(s->root, &s->load_ix, &off, &ino, 0);
  uv_mutex_lock(&s->ix_lock);
  /* Entries committed while we walked are the newest. */
  for (uint32_t i = s->ix.tail; i != DDUCT__INDEX_NONE; i = s->ix.recs[i].next) {
    const struct dduct__index_rec *r = &s->ix.recs[i];
    (void)dduct__index_put(&s->load_ix, r->kind, r->name, r->size, r->order);
  }
  dduct__index_free(&s->ix);
  s->ix = s->load_ix;
  dduct__index_init(&s->load_ix);
  s->j_off = off;
  s->j_ino = ino;
  if (have_fs) {
    s->fs_free = fs_free;
    s->fs_total = fs_total;
  }
  s->loaded = 1;
  uv_mutex_unlock(&s->ix_lock);
}

static void load_done(uv_work_t *w, int status) {
  struct dduct_store *s = w->data;
  uint64_t n, bytes;
  (void)status;
  store_lock(s);
  s->works--;
  uv_mutex_lock(&s->ix_lock);
  n = s->ix.count, bytes = s->ix.bytes;
  uv_mutex_unlock(&s->ix_lock);
  s->stats.entries += s->load_st.entries;
  s->stats.index_loaded = 1;
  if (s->load_st.removed > 0)
    LOG_INFO(LOG_MOD, "Removed %llu unfinished file(s) of an earlier run",
             (unsigned long long)s->load_st.removed);
  LOG_INFO(LOG_MOD, "Index loaded: %llu entries, %llu bytes", (unsigned long long)n,
           (unsigned long long)bytes);
  if (!s->freeing) maint_kick(s);
  store_unlock(s);
}

int dduct__store_index_loaded(const struct dduct_store *s) {
  int loaded;
  store_lock(s);
  loaded = s->stats.index_loaded;
  uv_mutex_unlock((uv_mutex_t *)&s->mu);
  return loaded;
}

/* ---- public API --------------------------------------------------------------------------- */

static int mkdir_p(char *path) {
  struct stat st;
  for (char *p = path + 1; *p != '\0'; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
      int e = -errno;
      *p = '/';
      return e;
    }
    *p = '/';
  }
  if (mkdir(path, 0700) != 0 && errno != EEXIST) return -errno;
  if (stat(path, &st) != 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : UV_ENOTDIR;
}

static void timer_close_cb(uv_handle_t *h) {
  free(h);
}

/* On the home thread, once nothing is left (every other loop detached). */
static void store_destroy(struct dduct_store *s) {
  ino_close(s);
  dduct__index_free(&s->ix);
  uv_mutex_destroy(&s->ix_lock);
  uv_mutex_destroy(&s->mu);
  free(s->jq);
  free(s->victims);
  list_del(&s->home->link);
  if (!list_empty(&s->ports))
    LOG_ERROR(LOG_MOD, "Store \"%s\" freed while another loop is attached", s->dir);
  port_close(s->home);
  while (!list_empty(&s->gone)) {
    struct port *p = DDUCT_CONTAINER_OF(s->gone.next, struct port, link);
    list_del(&p->link);
    free(p);
  }
  tl_del(s);
  free(s->dir);
  free(s->root);
  free(s);
}

static int prepare_dir(const char *dir, char **root, char *err, size_t errlen) {
  size_t n = strlen(dir);
  int rc;
  if (n == 0 || n > PATH_MAX - 200)
    return dduct__errf(DDUCT_EINVAL, err, errlen, "file_dir \"%s\": bad length", dir);
  if ((*root = strdup(dir)) == NULL) return DDUCT_ENOMEM;
  while (n > 1 && (*root)[n - 1] == '/') (*root)[--n] = '\0';
  if ((rc = mkdir_p(*root)) != 0 || (access(*root, W_OK | X_OK) != 0 && (rc = -errno) != 0)) {
    free(*root);
    *root = NULL;
    return dduct__errf(rc, err, errlen, "file_dir \"%s\": %s", dir, dduct_strerror(rc));
  }
  /* Ours alone: another user who can write in it, or rename it, chooses what we serve. */
  if ((rc = dduct__dir_private(*root, "file_dir", LOG_MOD, err, errlen)) != 0) {
    free(*root);
    *root = NULL;
    return rc;
  }
  return 0;
}

void dduct_store_options_init(struct dduct_store_options *o) {
  if (o == NULL) return;
  memset(o, 0, sizeof(*o));
  o->min_free_percent = 10;
  o->fsync = 1;
}

int dduct_store_open_with(uv_loop_t *loop, const char *dir, const struct dduct_store_options *o,
                          struct dduct_store **out, char *err, size_t errlen) {
  struct dduct_store *s;
  int rc;
  if (loop == NULL || dir == NULL || out == NULL)
    return dduct__errf(DDUCT_EINVAL, err, errlen, "store: missing loop or directory");
  if (o != NULL && o->min_free_percent > 99)
    return dduct__errf(DDUCT_EINVAL, err, errlen, "store: min_free_percent above 99");
  *out = NULL;
  if ((s = calloc(1, sizeof(*s))) == NULL) return DDUCT_ENOMEM;
  if ((rc = prepare_dir(dir, &s->root, err, errlen)) != 0) {
    free(s);
    return rc;
  }
  if (o != NULL) s->o = *o;
  else dduct_store_options_init(&s->o);
  s->loop = loop;
  s->id = atomic_fetch_add(&store_ids, 1) + 1;
  s->degrade_ms = DEGRADE_MS_DEFAULT;
  s->dir = strdup(dir);
  s->maint_timer = malloc(sizeof(*s->maint_timer));
  if (s->dir == NULL || s->maint_timer == NULL || uv_mutex_init(&s->ix_lock) != 0) {
    free(s->maint_timer);
    free(s->dir);
    free(s->root);
    free(s);
    return DDUCT_ENOMEM;
  }
  if (uv_mutex_init(&s->mu) != 0 || (s->home = port_new(s, loop)) == NULL) {
    if (s->home == NULL) uv_mutex_destroy(&s->mu);
    uv_mutex_destroy(&s->ix_lock);
    free(s->maint_timer);
    free(s->dir);
    free(s->root);
    free(s);
    return DDUCT_ENOMEM;
  }
  list_init(&s->ports);
  list_init(&s->gone);
  list_push(&s->ports, &s->home->link);
  (void)tl_add(s, s->home); /* without room, cur() falls back to the home port anyway */
  uv_timer_init(loop, s->maint_timer);
  s->maint_timer->data = s;
  uv_timer_start(s->maint_timer, maint_timer_cb, MAINT_MS, MAINT_MS);
  uv_unref((uv_handle_t *)s->maint_timer);
  for (size_t i = 0; i < NBUCKETS; i++) list_init(&s->buckets[i]);
  list_init(&s->idle);
  list_init(&s->watched);
  s->ino_fd = -1;
  dduct__index_init(&s->ix);
  dduct__index_init(&s->load_ix);
  atomic_init(&s->cancel, 0);
  /* The walk of file_dir (a million entries take seconds) runs on the pool: open returns now. */
  s->load_w.data = s;
  s->works++;
  if (uv_queue_work(loop, &s->load_w, load_work, load_done) != 0) s->works--;
  LOG_INFO("serve", "Files \"%s\"", dir);
  *out = s;
  return 0;
}

int dduct_store_open(uv_loop_t *loop, const char *dir, struct dduct_store **out, char *err,
                     size_t errlen) {
  return dduct_store_open_with(loop, dir, NULL, out, err, errlen);
}

void dduct_store_stats(const struct dduct_store *s, struct dduct_store_stats *out) {
  if (s == NULL || out == NULL) return;
  store_lock(s);
  *out = s->stats;
  uv_mutex_lock((uv_mutex_t *)&s->ix_lock);
  out->entries = s->ix.count; /* like size_bytes, it goes down on eviction, rm and invalidation */
  out->size_bytes = s->ix.bytes;
  uv_mutex_unlock((uv_mutex_t *)&s->ix_lock);
  uv_mutex_unlock((uv_mutex_t *)&s->mu);
}

void dduct__store_fill_failures(const struct dduct_store *s, uint64_t *out) {
  store_lock(s);
  memcpy(out, s->fill_failures, sizeof(s->fill_failures));
  uv_mutex_unlock((uv_mutex_t *)&s->mu);
}

void dduct__store_entry_progress(const struct dduct__store_entry *e, uint64_t *received,
                                 uint64_t *expected, int *readers) {
  store_lock(e->s);
  *received = e->fill != NULL ? e->fill->received : e->avail;
  *expected = e->state == ST_PENDING ? DDUCT__STORE_SIZE_UNKNOWN : e->meta.size;
  *readers = e->nreaders;
  uv_mutex_unlock((uv_mutex_t *)&e->s->mu);
}

const char *dduct__store_root(const struct dduct_store *s) {
  return s->root;
}

const char *dduct_store_dir(const struct dduct_store *s) {
  return s != NULL ? s->dir : NULL;
}

void dduct_store_free(struct dduct_store *s) {
  if (s == NULL) return;
  store_lock(s);
  s->freeing = 1;
  atomic_store(&s->cancel, 1);
  uv_close((uv_handle_t *)s->maint_timer, timer_close_cb);
  /* The last uses, so the next start knows them (one small write). */
  uv_mutex_lock(&s->ix_lock);
  (void)dduct__journal_append(s->root, s->jq, s->jq_n);
  s->jq_n = 0;
  uv_mutex_unlock(&s->ix_lock);
  while (!list_empty(&s->idle))
    entry_free(DDUCT_CONTAINER_OF(s->idle.next, struct dduct__store_entry, idle));
  store_unlock(s);
}

int dduct_store_attach(struct dduct_store *s, uv_loop_t *loop) {
  struct port *p;
  int rc = 0;
  if (s == NULL || loop == NULL) return DDUCT_EINVAL;
  store_lock(s);
  for (struct list *n = s->ports.next; n != &s->ports && rc == 0; n = n->next)
    if (DDUCT_CONTAINER_OF(n, struct port, link)->loop == loop) rc = DDUCT_EINVAL;
  if (rc == 0 && (p = port_new(s, loop)) == NULL) rc = DDUCT_ENOMEM;
  if (rc == 0 && (rc = tl_add(s, p)) != 0) port_close(p);
  if (rc == 0) list_push(&s->ports, &p->link);
  store_unlock(s);
  return rc;
}

void dduct_store_detach(struct dduct_store *s, uv_loop_t *loop) {
  struct port *p = NULL;
  if (s == NULL || loop == NULL) return;
  store_lock(s);
  for (struct list *n = s->ports.next; n != &s->ports; n = n->next)
    if (DDUCT_CONTAINER_OF(n, struct port, link)->loop == loop)
      p = DDUCT_CONTAINER_OF(n, struct port, link);
  if (p == s->home) p = NULL; /* the home loop goes with dduct_store_free */
  if (p != NULL) {
    list_del(&p->link);
    list_push(&s->gone, &p->link);
    p->detached = 1;
    while (!list_empty(&p->drains)) { /* fills that ended: nobody to resume */
      struct fill *f = DDUCT_CONTAINER_OF(p->drains.next, struct fill, drain_link);
      list_del(&f->drain_link);
      f->drain_queued = 0;
      f->drain_e->holds--;
      entry_maybe_free(f->drain_e);
    }
    if (!list_empty(&p->lookups) || !list_empty(&p->readers) || !list_empty(&p->pumps))
      LOG_ERROR(LOG_MOD, "Store \"%s\": a loop detached with lookups or readers left", s->dir);
  }
  store_unlock(s);
  if (p != NULL) {
    uv_close((uv_handle_t *)p->timer, port_close_cb);
    uv_close((uv_handle_t *)p->async, port_close_cb);
  }
}
