/* Fuzz target: a config file's text through the CLI's TOML reader and config layer (cli/).
 *
 * Invariants, beyond "no crash, leak or out-of-bounds read" (the sanitizers' part):
 * - toml_parse either returns a tree (every node's line:col a character of the input, strings
 *   NUL-terminated at their length, keys on table items only) or fails with *out NULL and an
 *   error "NAME:LINE:COL: message" whose LINE:COL lies inside the input (the column may be one
 *   past the end of its line: "unexpected end of line");
 * - config_load fails the same way, or succeeds, and then config_print's output loads back
 *   into a fresh config that prints identically (what --check shows is what runs). */
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "toml.h"

#define NAME "fuzz.toml"

struct text {
  const char *p;
  size_t len;
};

/* Bytes in line number `line` (1-based) without its '\n'; SIZE_MAX if there is no such line. */
static size_t line_bytes(struct text t, long line) {
  const char *p = t.p, *end = t.p + t.len;
  for (long l = 1; l < line; l++) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) return SIZE_MAX;
    p = nl + 1;
  }
  {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    return (size_t)((nl != NULL ? nl : end) - p);
  }
}

/* A position of a character (past_end: or one past the end of its line). Columns count
 * characters, so they are never more than the line's bytes. */
static int pos_ok(struct text t, long line, long col, int past_end) {
  size_t n;
  if (line < 1 || col < 1) return 0;
  n = line_bytes(t, line);
  if (n == SIZE_MAX) return 0;
  return (size_t)col <= n + (past_end ? 1 : 0);
}

static void check_error(struct text t, const char *err, const char *what) {
  long line, col;
  int used = 0;
  FUZZ_CHECK(strncmp(err, NAME ":", strlen(NAME ":")) == 0, "%s error without the name: %s",
             what, err);
  FUZZ_CHECK(sscanf(err + strlen(NAME ":"), "%ld:%ld: %n", &line, &col, &used) == 2 && used > 0,
             "%s error without LINE:COL: %s", what, err);
  FUZZ_CHECK(err[strlen(NAME ":") + (size_t)used] != '\0', "%s error without a message: %s", what,
             err);
  FUZZ_CHECK(pos_ok(t, line, col, 1), "%s error position %ld:%ld outside the input: %s", what,
             line, col, err);
}

static void check_node(struct text t, const struct toml_node *n, int keyed, int depth) {
  FUZZ_CHECK(depth <= TOML_MAX_DEPTH + 2, "tree deeper than the cap: %d", depth);
  FUZZ_CHECK(n->type >= TOML_TABLE && n->type <= TOML_ARRAY, "bad type %d", (int)n->type);
  FUZZ_CHECK(pos_ok(t, n->line, n->col, 0), "value at %d:%d outside the input", n->line, n->col);
  if (keyed) {
    FUZZ_CHECK(n->key != NULL, "table item without a key at %d:%d", n->line, n->col);
    FUZZ_CHECK(pos_ok(t, n->key_line, n->key_col, 0), "key '%s' at %d:%d outside the input",
               n->key, n->key_line, n->key_col);
  } else {
    FUZZ_CHECK(n->key == NULL, "array element with a key '%s'", n->key);
  }
  if (n->type == TOML_STRING) {
    FUZZ_CHECK(n->str != NULL && n->str[n->len] == '\0', "string at %d:%d not terminated",
               n->line, n->col);
    FUZZ_CHECK(n->len <= t.len * 4, "string of %zu bytes from %zu bytes of input", n->len,
               t.len);
  }
  if (n->type == TOML_BOOLEAN)
    FUZZ_CHECK(n->integer == 0 || n->integer == 1, "boolean %lld", (long long)n->integer);
  FUZZ_CHECK(n->count <= n->cap || n->cap == 0, "count %zu over cap %zu", n->count, n->cap);
  if (n->type == TOML_TABLE || n->type == TOML_ARRAY) {
    for (size_t i = 0; i < n->count; i++)
      check_node(t, &n->items[i], n->type == TOML_TABLE, depth + 1);
  } else {
    FUZZ_CHECK(n->count == 0, "scalar with %zu items", n->count);
  }
}

static void fuzz_toml(struct text t) {
  struct toml_node *root = (struct toml_node *)0x1;
  char err[512] = "";
  if (toml_parse(NAME, t.p, t.len, &root, err, sizeof(err)) != 0) {
    FUZZ_CHECK(root == NULL || root == (struct toml_node *)0x1, "failed parse left a tree");
    check_error(t, err, "toml_parse");
    return;
  }
  FUZZ_CHECK(root != NULL && root->type == TOML_TABLE && root->key == NULL, "bad root");
  for (size_t i = 0; i < root->count; i++) check_node(t, &root->items[i], 1, 1);
  toml_free(root);
}

/* config_print into a malloc'ed string (caller frees). */
static char *print(const struct config *c, size_t *len) {
  char *s = NULL;
  FILE *f = open_memstream(&s, len);
  FUZZ_CHECK(f != NULL, "open_memstream");
  config_print(c, f);
  FUZZ_CHECK(fclose(f) == 0, "fclose");
  return s;
}

static void fuzz_config(struct text t) {
  struct config c, again;
  char err[512] = "";
  FUZZ_CHECK(config_init(&c) == 0, "config_init");
  if (config_load(&c, NAME, t.p, t.len, err, sizeof(err)) != 0) {
    check_error(t, err, "config_load");
  } else {
    size_t n1, n2;
    char *p1 = print(&c, &n1), *p2;
    char err2[512] = "";
    FUZZ_CHECK(config_init(&again) == 0, "config_init");
    FUZZ_CHECK(config_load(&again, "printed.toml", p1, n1, err2, sizeof(err2)) == 0,
               "config_print's output does not load: %s\n--- printed:\n%s", err2, p1);
    p2 = print(&again, &n2);
    FUZZ_CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0,
               "printing is not stable:\n--- first:\n%s\n--- second:\n%s", p1, p2);
    free(p1);
    free(p2);
    config_free(&again);
  }
  config_free(&c);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  dduct_log_set(DDUCT_LOG_OFF, NULL, NULL);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct text t = {(const char *)data, size};
  /* Past the reader's cap the answer is one fixed error; fuzzing there is wasted time. */
  if (size > 64 * 1024) return 0;
  /* A '%' in a quoted key reaches a format string (crashers/toml-format-string-key.toml); when
   * skipping known bugs, stay clear of it so the run can look for others. */
  if (FUZZ_SKIP_KNOWN() && memchr(data, '%', size) != NULL) return 0;
  fuzz_toml(t);
  fuzz_config(t);
  return 0;
}
