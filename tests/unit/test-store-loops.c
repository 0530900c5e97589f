/* One store shared by two event loops on two threads (dduct_store_attach): loop A (this thread)
 * opens it, loop B (a second thread) attaches. Collapsing spans the loops (a lookup on B while A
 * fills gets FOLLOW, never a second FILL), B's reader follows A's fill byte by byte, hits and the
 * synchronous fast path work from B, a fill cancelled on A answers B's waiters, lookups racing
 * from both loops on many keys make exactly one fill per key, and every callback runs on the
 * thread of the loop that started its operation. CHECKs run on this thread only. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "rig.h"
#include "tap.h"

static uv_loop_t loop_a, loop_b;
static uv_thread_t thread_a, thread_b;
static uv_async_t cmd_async; /* on B: runs cmd there (and keeps B's loop alive) */
static void (*_Atomic cmd)(void); /* libuv's async is not instrumented: atomic for TSan */
static uv_sem_t cmd_done;
static uv_thread_t b_tid;
static struct dduct_store *store;
static atomic_int wrong_thread; /* a callback ran on a thread other than its loop's */

static char tmpdir[256];

static struct dduct__store_key url_key(const char *path) {
  struct dduct__store_key k;
  dduct__store_key_make("https", "loops.example", 13, 443, path, strlen(path), &k);
  return k;
}

static struct dduct__store_meta meta(const char *url, uint64_t size) {
  struct dduct__store_meta m = {0};
  m.url = url;
  m.content_type = "application/octet-stream";
  m.etag = "\"v1\"";
  m.size = size;
  return m;
}

static void on_thread(uv_thread_t want) {
  uv_thread_t self = uv_thread_self();
  if (!uv_thread_equal(&self, &want)) atomic_store(&wrong_thread, 1);
}

/* ---- running the two loops ---------------------------------------------------------------- */

static void cmd_cb(uv_async_t *a) {
  void (*f)(void) = atomic_exchange(&cmd, NULL);
  (void)a;
  if (f != NULL) {
    f();
    uv_sem_post(&cmd_done);
  }
}

/* Run f on B's thread (it starts work there and returns); A's loop does not turn meanwhile. */
static void on_b(void (*f)(void)) {
  cmd = f;
  uv_async_send(&cmd_async);
  uv_sem_wait(&cmd_done);
}

static void b_main(void *arg) {
  (void)arg;
  b_tid = uv_thread_self();
  uv_run(&loop_b, UV_RUN_DEFAULT);
}

/* Turn A's loop until *flag (set from either thread) is at least want. */
static void run_a_until(atomic_int *flag, int want) {
  struct timespec nap = {0, 200 * 1000};
  time_t deadline = time(NULL) + 30;
  while (atomic_load(flag) < want && time(NULL) < deadline) {
    uv_run(&loop_a, UV_RUN_NOWAIT);
    nanosleep(&nap, NULL);
  }
}

/* A few turns of both loops with nothing expected to happen. */
static void settle(void) {
  struct timespec nap = {0, 2 * 1000 * 1000};
  for (int i = 0; i < 10; i++) {
    uv_run(&loop_a, UV_RUN_NOWAIT);
    nanosleep(&nap, NULL);
  }
}

/* ---- lookups and readers on either loop --------------------------------------------------- */

struct look {
  atomic_int done;
  int role, status;
  struct dduct__store_entry *e;
  uv_thread_t want; /* the thread that asked */
};

static void look_cb(void *ud, enum dduct__store_role role, struct dduct__store_entry *e,
                    int status) {
  struct look *l = ud;
  on_thread(l->want);
  l->role = (int)role;
  l->e = e;
  l->status = status;
  atomic_store(&l->done, 1);
}

static void look_start(struct look *l, const struct dduct__store_key *k) {
  memset(l, 0, sizeof(*l));
  l->want = uv_thread_self();
  if (dduct__store_lookup(store, k, 0, look_cb, l, NULL) != 0) {
    l->role = -1;
    atomic_store(&l->done, 1);
  }
}

struct sink {
  struct dduct__store_reader *r;
  char *buf;
  atomic_size_t len;
  size_t cap;
  atomic_int done;
  int err;
  uv_thread_t want;
};

static void sink_cb(void *ud, ssize_t n, const char *data) {
  struct sink *k = ud;
  size_t len = atomic_load(&k->len);
  on_thread(k->want);
  if (n <= 0) {
    k->err = (int)n;
    atomic_store(&k->done, 1);
    return;
  }
  if (len + (size_t)n <= k->cap) memcpy(k->buf + len, data, (size_t)n);
  atomic_store(&k->len, len + (size_t)n);
  dduct__store_reader_read(k->r);
}

/* ---- what B does -------------------------------------------------------------------------- */

static struct dduct__store_key key_big, key_small, key_cancel;
static struct look b_look;
static struct sink b_sink;
static int b_rc;
static struct dduct__store_entry *b_hot;
static char b_small[4096];
static ssize_t b_pread;

static void b_attach(void) {
  b_rc = dduct_store_attach(store, &loop_b);
}
static void b_attach_again(void) {
  b_rc = dduct_store_attach(store, &loop_b);
}
static void b_lookup_big(void) {
  look_start(&b_look, &key_big);
}
static void b_read_big(void) {
  b_sink.want = uv_thread_self();
  b_rc = dduct__store_reader_new(b_look.e, 0, DDUCT__STORE_SIZE_UNKNOWN, sink_cb, &b_sink,
                                 &b_sink.r);
  if (b_rc == 0) b_rc = dduct__store_reader_read(b_sink.r);
}
static void b_done_big(void) {
  dduct__store_reader_free(b_sink.r);
  dduct__store_entry_release(b_look.e);
}
static void b_lookup_small(void) {
  look_start(&b_look, &key_small);
}
static void b_hot_small(void) {
  dduct__store_entry_release(b_look.e); /* the async lookup's HIT */
  b_hot = NULL;
  b_pread = -1;
  if (dduct__store_lookup_hot(store, &key_small, 0, &b_hot)) {
    b_pread = dduct__store_entry_pread(b_hot, b_small, sizeof(b_small), 0);
    b_pread = dduct__store_entry_pread(b_hot, b_small, sizeof(b_small), 0); /* the held body */
    dduct__store_entry_release(b_hot);
  }
}
static void b_lookup_cancel(void) {
  look_start(&b_look, &key_cancel);
}

/* ---- many keys, both loops at once -------------------------------------------------------- */

#define RACE_KEYS 200
#define RACE_BODY 3000
static struct dduct__store_key race_keys[RACE_KEYS];
static atomic_int race_fills[RACE_KEYS], race_other[RACE_KEYS], race_bad;
static atomic_int race_done;
static char race_body[RACE_BODY];

struct race {
  int i, role;
  uv_thread_t want;
};
static struct race race_a[RACE_KEYS], race_b[RACE_KEYS];

static void race_cb(void *ud, enum dduct__store_role role, struct dduct__store_entry *e,
                    int status) {
  struct race *r = ud;
  (void)status;
  on_thread(r->want);
  r->role = (int)role;
  if (role == DDUCT__STORE_FILL) {
    struct dduct__store_meta m = meta("https://loops.example/race", RACE_BODY);
    atomic_fetch_add(&race_fills[r->i], 1);
    if (dduct__store_fill_begin(e, &m) != 0) {
      atomic_store(&race_bad, 1);
      dduct__store_fill_cancel(e, 0);
    } else {
      if (dduct__store_fill_write(e, race_body, RACE_BODY) != 0) atomic_store(&race_bad, 1);
      dduct__store_fill_end(e, 0);
    }
  } else if (role == DDUCT__STORE_FOLLOW || role == DDUCT__STORE_HIT) {
    atomic_fetch_add(&race_other[r->i], 1);
    dduct__store_entry_release(e);
  } else {
    atomic_store(&race_bad, 1); /* nobody cancels a fill here: no BYPASS */
  }
  atomic_fetch_add(&race_done, 1);
}

static void race_start(struct race *rs) {
  for (int i = 0; i < RACE_KEYS; i++) {
    rs[i].i = i;
    rs[i].want = uv_thread_self();
    if (dduct__store_lookup(store, &race_keys[i], 0, race_cb, &rs[i], NULL) != 0)
      atomic_store(&race_bad, 1);
  }
}

static void b_race(void) {
  race_start(race_b);
}

static void b_detach(void) {
  dduct_store_detach(store, &loop_b);
  uv_close((uv_handle_t *)&cmd_async, NULL); /* B's loop ends once the port's handles close */
}

/* ---- the test ----------------------------------------------------------------------------- */

static void test_two_loops(void) {
  enum { BIG = 300 * 1024, FIRST = 100 * 1024 };
  char *big = malloc(BIG), small[4096];
  struct look a_look;
  struct dduct__store_meta m;
  struct dduct_store_stats st;

  rig_fill_pattern(big, BIG, 7);
  rig_fill_pattern(small, sizeof(small), 9);
  key_big = url_key("/big");
  key_small = url_key("/small");
  key_cancel = url_key("/cancel");

  on_b(b_attach);
  CHECK_EQ_INT(b_rc, 0, "loop B attaches to the store opened on loop A");
  on_b(b_attach_again);
  CHECK_EQ_INT(b_rc, DDUCT_EINVAL, "attaching the same loop twice is refused");

  /* A fills; B asks meanwhile and waits for the fill to begin. */
  look_start(&a_look, &key_big);
  run_a_until(&a_look.done, 1);
  CHECK_EQ_INT(a_look.role, DDUCT__STORE_FILL, "loop A's lookup of a new key gets FILL");
  on_b(b_lookup_big);
  settle();
  CHECK(!atomic_load(&b_look.done), "loop B's lookup waits while A's fill has not begun");
  m = meta("https://loops.example/big", BIG);
  CHECK_EQ_INT(dduct__store_fill_begin(a_look.e, &m), 0, "A begins the fill");
  run_a_until(&b_look.done, 1);
  CHECK_EQ_INT(b_look.role, DDUCT__STORE_FOLLOW, "B's lookup follows A's fill (one FILL only)");

  /* B reads while A's bytes land. */
  b_sink.buf = malloc(BIG);
  b_sink.cap = BIG;
  on_b(b_read_big);
  CHECK_EQ_INT(b_rc, 0, "B opens a reader on the filling entry");
  CHECK_EQ_INT(dduct__store_fill_write(a_look.e, big, FIRST), 0, "A writes the first part");
  {
    struct timespec nap = {0, 200 * 1000};
    time_t deadline = time(NULL) + 30;
    while (atomic_load(&b_sink.len) < FIRST && time(NULL) < deadline) {
      uv_run(&loop_a, UV_RUN_NOWAIT);
      nanosleep(&nap, NULL);
    }
  }
  CHECK_EQ_INT(atomic_load(&b_sink.len), FIRST, "B's reader has the first part before the rest "
               "is written");
  CHECK(!atomic_load(&b_sink.done), "B's reader waits for more");
  CHECK_EQ_INT(dduct__store_fill_write(a_look.e, big + FIRST, BIG - FIRST), 0, "A writes the rest");
  dduct__store_fill_end(a_look.e, 0);
  run_a_until(&b_sink.done, 1);
  CHECK_EQ_INT(b_sink.err, 0, "B's reader ends cleanly");
  CHECK_EQ_INT(atomic_load(&b_sink.len), BIG, "B's reader got every byte");
  CHECK(memcmp(b_sink.buf, big, BIG) == 0, "B's bytes are A's fill");
  on_b(b_done_big);

  /* A small entry filled on A: B hits it, asynchronously and on the fast path. */
  look_start(&a_look, &key_small);
  run_a_until(&a_look.done, 1);
  CHECK_EQ_INT(a_look.role, DDUCT__STORE_FILL, "A fills the small entry");
  m = meta("https://loops.example/small", sizeof(small));
  dduct__store_fill_begin(a_look.e, &m);
  dduct__store_fill_write(a_look.e, small, sizeof(small));
  dduct__store_fill_end(a_look.e, 0);
  {
    /* Committed once A's lookup of it is a hit. */
    struct look again;
    int tries = 0;
    int complete = 0;
    do {
      look_start(&again, &key_small);
      run_a_until(&again.done, 1);
      complete = again.role == DDUCT__STORE_HIT && dduct__store_entry_complete(again.e);
      if (again.e != NULL) dduct__store_entry_release(again.e);
    } while (!complete && ++tries < 1000);
  }
  on_b(b_lookup_small);
  run_a_until(&b_look.done, 1);
  CHECK_EQ_INT(b_look.role, DDUCT__STORE_HIT, "B's lookup of A's committed entry is a HIT");
  on_b(b_hot_small);
  CHECK_EQ_INT(b_pread, (ssize_t)sizeof(small), "B's lookup_hot and entry_pread read it at once");
  CHECK(memcmp(b_small, small, sizeof(small)) == 0, "B's fast path reads A's bytes");

  /* A fill cancelled on A answers B's waiting lookup with BYPASS. */
  look_start(&a_look, &key_cancel);
  run_a_until(&a_look.done, 1);
  CHECK_EQ_INT(a_look.role, DDUCT__STORE_FILL, "A fills a third key");
  on_b(b_lookup_cancel);
  settle();
  CHECK(!atomic_load(&b_look.done), "B waits for A's fill");
  dduct__store_fill_cancel(a_look.e, DDUCT_EPROTO);
  run_a_until(&b_look.done, 1);
  CHECK_EQ_INT(b_look.role, DDUCT__STORE_BYPASS, "A's cancelled fill sends B's lookup BYPASS");
  CHECK_EQ_INT(b_look.status, DDUCT_EPROTO, "with A's reason");

  /* Both loops race on many keys: one FILL per key, everyone else follows or hits. */
  for (int i = 0; i < RACE_KEYS; i++) {
    char path[32];
    snprintf(path, sizeof(path), "/race/%d", i);
    race_keys[i] = url_key(path);
  }
  rig_fill_pattern(race_body, sizeof(race_body), 11);
  cmd = b_race;
  uv_async_send(&cmd_async); /* B starts its lookups while A starts its own */
  race_start(race_a);
  uv_sem_wait(&cmd_done);
  run_a_until(&race_done, 2 * RACE_KEYS);
  CHECK_EQ_INT(atomic_load(&race_done), 2 * RACE_KEYS, "every racing lookup was answered");
  if (atomic_load(&race_done) != 2 * RACE_KEYS) {
    int fa = 0, fb = 0, oa = 0, ob = 0;
    for (int i = 0; i < RACE_KEYS; i++) {
      fa += race_a[i].role == DDUCT__STORE_FILL, fb += race_b[i].role == DDUCT__STORE_FILL;
      oa += race_a[i].role > DDUCT__STORE_FILL || (race_a[i].role > 0 && race_a[i].role < 3);
      ob += race_b[i].role > DDUCT__STORE_FILL || (race_b[i].role > 0 && race_b[i].role < 3);
    }
    fprintf(stderr, "  answered: A %d fills %d others, B %d fills %d others\n", fa, oa, fb, ob);
  }
  {
    int one_fill = 1, all = 1;
    for (int i = 0; i < RACE_KEYS; i++) {
      one_fill &= atomic_load(&race_fills[i]) == 1;
      all &= atomic_load(&race_fills[i]) + atomic_load(&race_other[i]) == 2;
    }
    CHECK(one_fill, "exactly one FILL per key across both loops");
    CHECK(all, "the other lookup of each key followed or hit");
    CHECK(!atomic_load(&race_bad), "no fill failed, no lookup was bypassed");
  }
  settle();
  dduct_store_stats(store, &st);
  CHECK(st.misses >= RACE_KEYS + 3 && st.hits >= RACE_KEYS, "stats count both loops' lookups");
  CHECK(!atomic_load(&wrong_thread), "every callback ran on the thread of its own loop");

  on_b(b_detach);
  free(b_sink.buf);
  free(big);
}

static void rm_rf(const char *dir) {
  char out[256];
  tap_sh(out, sizeof(out), "rm -rf '%s'", dir);
}

int main(void) {
  char dir[512], err[256] = "";

  alarm(120);
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/dduct-test-store-loops-XXXXXX");
  if (mkdtemp(tmpdir) == NULL) return 1;
  snprintf(dir, sizeof(dir), "%s/files", tmpdir);
  uv_loop_init(&loop_a);
  uv_loop_init(&loop_b);
  uv_async_init(&loop_b, &cmd_async, cmd_cb);
  uv_sem_init(&cmd_done, 0);
  thread_a = uv_thread_self();
  (void)thread_a;
  CHECK_EQ_INT(dduct_store_open(&loop_a, dir, &store, err, sizeof(err)), 0, "the store opens on A");
  CHECK_EQ_INT(uv_thread_create(&thread_b, b_main, NULL), 0, "loop B's thread starts");

  test_two_loops();

  CHECK_EQ_INT(uv_thread_join(&thread_b), 0, "loop B ran dry after detaching");
  CHECK_EQ_INT(uv_loop_close(&loop_b), 0, "B's loop has no handle of the store left");
  dduct_store_free(store);
  uv_run(&loop_a, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(&loop_a), 0, "every handle and request on A is finished");
  uv_sem_destroy(&cmd_done);
  rm_rf(tmpdir);
  return tap_done();
}
