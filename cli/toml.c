/* The TOML reader (see toml.h for the subset). A recursive-descent parser over a byte buffer
 * that tracks line and column so every error points at the character that caused it. */
#include "toml.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
  const char *name;
  const unsigned char *p, *end;
  int line, col;
  char *err;
  size_t errlen;
};

/* A growable byte buffer for decoded strings (capped by TOML_MAX_SIZE through the input). */
struct sbuf {
  char *s;
  size_t len, cap;
};

static int fail(struct parser *ps, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct parser *ps, int line, int col, const char *fmt, ...) {
  va_list ap;
  int n;
  if (ps->err == NULL || ps->errlen == 0) return -1;
  n = snprintf(ps->err, ps->errlen, "%s:%d:%d: ", ps->name, line, col);
  if (n >= 0 && (size_t)n < ps->errlen) {
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static int fail_here(struct parser *ps, const char *fmt, const char *what) {
  return fail(ps, ps->line, ps->col, fmt, what);
}

static int eof(const struct parser *ps) {
  return ps->p >= ps->end;
}

static int peek(const struct parser *ps, size_t ahead) {
  return ps->p + ahead < ps->end ? ps->p[ahead] : -1;
}

/* Columns count characters: the column advances once per UTF-8 sequence. */
static void advance(struct parser *ps) {
  unsigned char c = *ps->p++;
  if (c == '\n') {
    ps->line++;
    ps->col = 1;
  } else if (ps->p == ps->end || (*ps->p & 0xC0) != 0x80) {
    ps->col++;
  }
}

static void advance_n(struct parser *ps, size_t n) {
  while (n-- > 0 && !eof(ps)) advance(ps);
}

/* A printable description of the character at the cursor, for "found ..." messages. */
static const char *describe(const struct parser *ps, char *buf, size_t len) {
  int c = peek(ps, 0);
  size_t n = 1;
  if (c < 0) return "end of file";
  if (c == '\n' || (c == '\r' && peek(ps, 1) == '\n')) return "end of line";
  if (c < 0x20 || c == 0x7f) {
    snprintf(buf, len, "control character U+%04X", (unsigned)c);
    return buf;
  }
  if (c >= 0xf0) n = 4;
  else if (c >= 0xe0) n = 3;
  else if (c >= 0xc0) n = 2;
  snprintf(buf, len, "'%.*s'", (int)n, (const char *)ps->p);
  return buf;
}

static int fail_found(struct parser *ps, const char *fmt) {
  char buf[32];
  return fail_here(ps, fmt, describe(ps, buf, sizeof(buf)));
}

static int is_control(int c) {
  return (c >= 0 && c < 0x20 && c != '\t') || c == 0x7f;
}

static int is_newline(const struct parser *ps) {
  return peek(ps, 0) == '\n' || (peek(ps, 0) == '\r' && peek(ps, 1) == '\n');
}

static void skip_newline(struct parser *ps) {
  if (peek(ps, 0) == '\r') advance(ps);
  advance(ps);
}

static int is_bare_key_char(int c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '-';
}

/* ---- UTF-8 --------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (no overlongs, no surrogates, <= U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
  size_t n, i;
  unsigned long cp;
  if (p[0] < 0x80) return 1;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) n = 2, cp = p[0] & 0x1f;
  else if (p[0] >= 0xe0 && p[0] <= 0xef) n = 3, cp = p[0] & 0x0f;
  else if (p[0] >= 0xf0 && p[0] <= 0xf4) n = 4, cp = p[0] & 0x07;
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

static int check_utf8(struct parser *ps) {
  struct parser scan = *ps;
  while (!eof(&scan)) {
    size_t n = utf8_len(scan.p, scan.end);
    if (n == 0) return fail(ps, scan.line, scan.col, "invalid UTF-8");
    advance_n(&scan, n);
  }
  return 0;
}

static int sbuf_put(struct sbuf *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 32;
    char *s;
    while (cap < b->len + n + 1) cap *= 2;
    s = realloc(b->s, cap);
    if (s == NULL) return -1;
    b->s = s;
    b->cap = cap;
  }
  memcpy(b->s + b->len, data, n);
  b->len += n;
  b->s[b->len] = '\0';
  return 0;
}

static int sbuf_put_utf8(struct sbuf *b, unsigned long cp) {
  unsigned char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (unsigned char)cp, n = 1;
  } else if (cp < 0x800) {
    u[0] = (unsigned char)(0xc0 | (cp >> 6)), n = 2;
  } else if (cp < 0x10000) {
    u[0] = (unsigned char)(0xe0 | (cp >> 12)), n = 3;
  } else {
    u[0] = (unsigned char)(0xf0 | (cp >> 18)), n = 4;
  }
  for (size_t i = 1; i < n; i++) u[i] = (unsigned char)(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3f));
  return sbuf_put(b, u, n);
}

/* ---- nodes --------------------------------------------------------------------------------- */

static void node_clear(struct toml_node *n) {
  for (size_t i = 0; i < n->count; i++) node_clear(&n->items[i]);
  free(n->items);
  free(n->key);
  free(n->str);
  memset(n, 0, sizeof(*n));
}

/* Move child into parent's items (child is consumed on success and on failure). */
static int push(struct parser *ps, struct toml_node *parent, struct toml_node *child) {
  if (parent->count == parent->cap) {
    size_t cap = parent->cap ? parent->cap * 2 : 8;
    struct toml_node *v = realloc(parent->items, cap * sizeof(*v));
    if (v == NULL) {
      node_clear(child);
      return fail(ps, ps->line, ps->col, "out of memory");
    }
    parent->items = v;
    parent->cap = cap;
  }
  parent->items[parent->count++] = *child;
  return 0;
}

/* ---- whitespace and comments --------------------------------------------------------------- */

static void skip_ws(struct parser *ps) {
  while (peek(ps, 0) == ' ' || peek(ps, 0) == '\t') advance(ps);
}

static int skip_comment(struct parser *ps) {
  advance(ps); /* '#' */
  while (!eof(ps) && !is_newline(ps)) {
    if (is_control(peek(ps, 0))) return fail_found(ps, "%s is not allowed in a comment");
    advance(ps);
  }
  return 0;
}

/* After a key/value pair or a table header: optional comment, then a newline or the end. */
static int expect_eol(struct parser *ps) {
  skip_ws(ps);
  if (peek(ps, 0) == '#' && skip_comment(ps) != 0) return -1;
  if (eof(ps)) return 0;
  if (!is_newline(ps)) return fail_found(ps, "expected end of line, found %s");
  skip_newline(ps);
  return 0;
}

/* Inside arrays: whitespace, newlines and comments. */
static int skip_ws_nl(struct parser *ps) {
  for (;;) {
    skip_ws(ps);
    if (peek(ps, 0) == '#') {
      if (skip_comment(ps) != 0) return -1;
    } else if (is_newline(ps)) {
      skip_newline(ps);
    } else {
      return 0;
    }
  }
}

/* ---- strings ------------------------------------------------------------------------------- */

static int hex_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* At a backslash inside a basic string: decode one escape into b. */
static int parse_escape(struct parser *ps, struct sbuf *b) {
  int line = ps->line, col = ps->col, c, digits;
  unsigned long cp = 0;
  char simple = 0, shown[8];

  advance(ps); /* '\' */
  c = peek(ps, 0);
  switch (c) {
    case 'b': simple = '\b'; break;
    case 't': simple = '\t'; break;
    case 'n': simple = '\n'; break;
    case 'f': simple = '\f'; break;
    case 'r': simple = '\r'; break;
    case '"': simple = '"'; break;
    case '\\': simple = '\\'; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    default:
      if (c > 0x20 && c < 0x7f) {
        snprintf(shown, sizeof(shown), "\\%c", c);
        return fail(ps, line, col, "invalid escape sequence '%s'", shown);
      }
      return fail(ps, line, col, "invalid escape sequence");
  }
  advance(ps);
  if (simple != 0) return sbuf_put(b, &simple, 1) == 0 ? 0 : fail(ps, line, col, "out of memory");
  for (int i = 0; i < digits; i++) {
    int h = hex_value(peek(ps, 0));
    if (h < 0) return fail(ps, line, col, "\\%c needs %d hexadecimal digits", c, digits);
    cp = (cp << 4) | (unsigned long)h;
    advance(ps);
  }
  if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return fail(ps, line, col, "escape \\%c%0*lX is not a Unicode scalar value", c, digits, cp);
  return sbuf_put_utf8(b, cp) == 0 ? 0 : fail(ps, line, col, "out of memory");
}

static int put_char(struct parser *ps, struct sbuf *b) {
  size_t n = utf8_len(ps->p, ps->end); /* validated up front: n >= 1 */
  if (sbuf_put(b, ps->p, n) != 0) return fail(ps, ps->line, ps->col, "out of memory");
  advance_n(ps, n);
  return 0;
}

/* At a run of quote characters q inside a multi-line string: 1 if it closes the string (and
 * then up to two quotes before the closing three belong to the content), 0 if it does not. */
static int ml_close(struct parser *ps, struct sbuf *b, int q) {
  size_t run = 0;
  while (peek(ps, run) == q) run++;
  if (run < 3) {
    if (sbuf_put(b, ps->p, run) != 0) return fail(ps, ps->line, ps->col, "out of memory");
    advance_n(ps, run);
    return 0;
  }
  if (run > 5) {
    advance_n(ps, 5);
    return fail_here(ps, "%s", "too many quotes at the end of a multi-line string");
  }
  if (sbuf_put(b, ps->p, run - 3) != 0) return fail(ps, ps->line, ps->col, "out of memory");
  advance_n(ps, run);
  return 1;
}

/* A backslash followed by optional blanks and a newline: skip every blank and newline after. */
static int line_ending_backslash(struct parser *ps) {
  size_t i = 1;
  while (peek(ps, i) == ' ' || peek(ps, i) == '\t') i++;
  if (peek(ps, i) != '\n' && !(peek(ps, i) == '\r' && peek(ps, i + 1) == '\n')) return 0;
  advance_n(ps, i);
  while (peek(ps, 0) == ' ' || peek(ps, 0) == '\t' || is_newline(ps)) {
    if (peek(ps, 0) == '\r') advance(ps);
    advance(ps);
  }
  return 1;
}

/* q is '"' (basic: escapes) or '\'' (literal); multi says whether it opened with three. */
static int parse_string_body(struct parser *ps, int q, int multi, struct sbuf *b, int line,
                             int col) {
  for (;;) {
    int c = peek(ps, 0), r;
    if (c < 0 || (!multi && is_newline(ps)))
      return fail(ps, line, col, multi ? "unterminated multi-line string" : "unterminated string");
    if (c == q) {
      if (!multi) {
        advance(ps);
        return 0;
      }
      if ((r = ml_close(ps, b, q)) != 0) return r < 0 ? -1 : 0;
    } else if (multi && is_newline(ps)) {
      skip_newline(ps);
      if (sbuf_put(b, "\n", 1) != 0) return fail(ps, line, col, "out of memory");
    } else if (c == '\\' && q == '"') {
      if (multi && line_ending_backslash(ps)) continue;
      if (parse_escape(ps, b) != 0) return -1;
    } else if (is_control(c)) {
      return fail_found(ps, "%s must be escaped in a string");
    } else if (put_char(ps, b) != 0) {
      return -1;
    }
  }
}

/* At an opening quote: parse any of the four string forms into n (type STRING). */
static int parse_string(struct parser *ps, struct toml_node *n) {
  int q = peek(ps, 0), line = ps->line, col = ps->col;
  int multi = peek(ps, 1) == q && peek(ps, 2) == q;
  struct sbuf b = {NULL, 0, 0};

  advance_n(ps, multi ? 3 : 1);
  if (multi && is_newline(ps)) skip_newline(ps); /* a newline right after the opening is trimmed */
  if (sbuf_put(&b, "", 0) != 0) return fail(ps, line, col, "out of memory");
  if (parse_string_body(ps, q, multi, &b, line, col) != 0) {
    free(b.s);
    return -1;
  }
  n->type = TOML_STRING;
  n->str = b.s;
  n->len = b.len;
  return 0;
}

/* ---- keys ---------------------------------------------------------------------------------- */

/* A bare or quoted (single-line) key. what is "key" or "table name" for messages. */
static int parse_key(struct parser *ps, char **out, const char *what) {
  int c = peek(ps, 0);
  struct toml_node tmp;

  memset(&tmp, 0, sizeof(tmp));
  if (c == '"' || c == '\'') {
    int line = ps->line, col = ps->col;
    if (peek(ps, 1) == c && peek(ps, 2) == c)
      return fail(ps, line, col, "a %s cannot be a multi-line string", what);
    if (parse_string(ps, &tmp) != 0) return -1;
    if (strlen(tmp.str) != tmp.len) {
      free(tmp.str);
      return fail(ps, line, col, "a %s cannot contain a NUL character", what);
    }
    *out = tmp.str;
  } else {
    const unsigned char *start = ps->p;
    char buf[32];
    while (is_bare_key_char(peek(ps, 0))) advance(ps);
    if (ps->p == start)
      return fail(ps, ps->line, ps->col, "expected a %s, found %s", what,
                  describe(ps, buf, sizeof(buf)));
    *out = strndup((const char *)start, (size_t)(ps->p - start));
    if (*out == NULL) return fail(ps, ps->line, ps->col, "out of memory");
  }
  skip_ws(ps);
  if (peek(ps, 0) == '.') {
    free(*out);
    *out = NULL;
    return fail_here(ps, "%s", strcmp(what, "key") == 0 ? "dotted keys are not supported"
                                                        : "dotted table names are not supported");
  }
  return 0;
}

/* ---- values -------------------------------------------------------------------------------- */

static int is_token_char(int c) {
  return is_bare_key_char(c) || c == '+' || c == '.' || c == ':';
}

static int is_digit(int c) {
  return c >= '0' && c <= '9';
}

/* Decimal integer in tok[0..n) (ASCII, starting at the cursor's column). */
static int parse_decimal(struct parser *ps, const char *tok, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = 0;
  uint64_t v = 0, limit;

  if (tok[0] == '+' || tok[0] == '-') neg = tok[i++] == '-';
  limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  if (i == n || !is_digit(tok[i]))
    return fail(ps, ps->line, ps->col + (int)i, "expected a digit");
  if (tok[i] == '0' && i + 1 < n)
    return fail(ps, ps->line, ps->col + (int)i, "leading zeros are not allowed");
  for (; i < n; i++) {
    if (tok[i] == '_') {
      if (!is_digit(tok[i - 1]) || i + 1 == n || !is_digit(tok[i + 1]))
        return fail(ps, ps->line, ps->col + (int)i, "'_' must be between digits");
      continue;
    }
    if (!is_digit(tok[i]))
      return fail(ps, ps->line, ps->col + (int)i, "invalid character '%c' in integer", tok[i]);
    if (v > (limit - (uint64_t)(tok[i] - '0')) / 10)
      return fail(ps, ps->line, ps->col, "integer out of range");
    v = v * 10 + (uint64_t)(tok[i] - '0');
  }
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

static int is_date_or_time(const char *t, size_t n) {
  return (n >= 5 && is_digit(t[0]) && is_digit(t[1]) && is_digit(t[2]) && is_digit(t[3]) &&
          t[4] == '-') ||
         (n >= 3 && is_digit(t[0]) && is_digit(t[1]) && t[2] == ':');
}

static int token_is(const char *t, size_t n, const char *word) {
  return n == strlen(word) && memcmp(t, word, n) == 0;
}

/* true, false, or a number; everything else that is not a string or array ends up here. */
static int parse_scalar(struct parser *ps, struct toml_node *n) {
  const char *t = (const char *)ps->p, *u;
  size_t len = 0, ulen;

  while (is_token_char(peek(ps, len))) len++;
  if (len == 0) return fail_found(ps, "expected a value, found %s");
  u = (t[0] == '+' || t[0] == '-') ? t + 1 : t;
  ulen = len - (size_t)(u - t);
  if (token_is(t, len, "true") || token_is(t, len, "false")) {
    n->type = TOML_BOOLEAN;
    n->integer = t[0] == 't';
  } else if (token_is(u, ulen, "inf") || token_is(u, ulen, "nan")) {
    return fail_here(ps, "%s", "floats are not supported");
  } else if (u == t && !is_digit(t[0])) {
    return fail(ps, ps->line, ps->col,
                "invalid value '%.*s' (expected a string, integer, boolean or array)",
                (int)(len > 40 ? 40 : len), t);
  } else if (is_date_or_time(t, len)) {
    return fail_here(ps, "%s", "dates and times are not supported");
  } else if (ulen >= 2 && u[0] == '0' && (u[1] == 'x' || u[1] == 'o' || u[1] == 'b')) {
    return fail_here(ps, "%s", "hexadecimal, octal and binary integers are not supported");
  } else if (memchr(t, '.', len) != NULL || memchr(t, 'e', len) != NULL ||
             memchr(t, 'E', len) != NULL) {
    return fail_here(ps, "%s", "floats are not supported");
  } else {
    n->type = TOML_INTEGER;
    if (parse_decimal(ps, t, len, &n->integer) != 0) return -1;
  }
  advance_n(ps, len);
  return 0;
}

static int parse_value(struct parser *ps, struct toml_node *n, int depth);

static int parse_array(struct parser *ps, struct toml_node *n, int depth) {
  int line = ps->line, col = ps->col;

  n->type = TOML_ARRAY;
  if (depth >= TOML_MAX_DEPTH) return fail(ps, line, col, "arrays are nested too deeply");
  advance(ps); /* '[' */
  for (;;) {
    struct toml_node item;
    if (skip_ws_nl(ps) != 0) return -1;
    if (eof(ps)) return fail(ps, line, col, "unterminated array");
    if (peek(ps, 0) == ']') break;
    memset(&item, 0, sizeof(item));
    if (parse_value(ps, &item, depth + 1) != 0) {
      node_clear(&item);
      return -1;
    }
    if (push(ps, n, &item) != 0) return -1;
    if (skip_ws_nl(ps) != 0) return -1;
    if (eof(ps)) return fail(ps, line, col, "unterminated array");
    if (peek(ps, 0) == ']') break;
    if (peek(ps, 0) != ',') return fail_found(ps, "expected ',' or ']' in an array, found %s");
    advance(ps);
  }
  advance(ps); /* ']' */
  return 0;
}

static int parse_value(struct parser *ps, struct toml_node *n, int depth) {
  int c = peek(ps, 0);
  n->line = ps->line;
  n->col = ps->col;
  if (c == '"' || c == '\'') return parse_string(ps, n);
  if (c == '[') return parse_array(ps, n, depth);
  if (c == '{') return fail_here(ps, "%s", "inline tables are not supported");
  return parse_scalar(ps, n);
}

/* ---- document ------------------------------------------------------------------------------ */

const struct toml_node *toml_get(const struct toml_node *table, const char *key) {
  if (table == NULL || table->type != TOML_TABLE) return NULL;
  for (size_t i = 0; i < table->count; i++)
    if (table->items[i].key != NULL && strcmp(table->items[i].key, key) == 0)
      return &table->items[i];
  return NULL;
}

static int parse_keyval(struct parser *ps, struct toml_node *table) {
  struct toml_node kv;

  memset(&kv, 0, sizeof(kv));
  kv.key_line = ps->line;
  kv.key_col = ps->col;
  if (parse_key(ps, &kv.key, "key") != 0) return -1;
  if (toml_get(table, kv.key) != NULL) {
    fail(ps, kv.key_line, kv.key_col, "duplicate key '%s'", kv.key);
    node_clear(&kv);
    return -1;
  }
  if (peek(ps, 0) != '=') {
    /* The key is the user's text: it goes through %s, never into a format string. */
    char buf[32];
    int rc = fail(ps, ps->line, ps->col, "expected '=' after key '%.64s', found %s", kv.key,
                  describe(ps, buf, sizeof(buf)));
    node_clear(&kv);
    return rc;
  }
  advance(ps);
  skip_ws(ps);
  if (parse_value(ps, &kv, 0) != 0) {
    node_clear(&kv);
    return -1;
  }
  return push(ps, table, &kv);
}

/* At '[': a table header. On success *index is the new table's position in root's items. */
static int parse_header(struct parser *ps, struct toml_node *root, size_t *index) {
  struct toml_node t;
  const struct toml_node *old;

  memset(&t, 0, sizeof(t));
  if (peek(ps, 1) == '[') return fail_here(ps, "%s", "arrays of tables are not supported");
  advance(ps);
  skip_ws(ps);
  t.type = TOML_TABLE;
  t.key_line = t.line = ps->line;
  t.key_col = t.col = ps->col;
  if (parse_key(ps, &t.key, "table name") != 0) return -1;
  if (peek(ps, 0) != ']') {
    node_clear(&t);
    return fail_found(ps, "expected ']' after the table name, found %s");
  }
  advance(ps);
  if ((old = toml_get(root, t.key)) != NULL) {
    if (old->type == TOML_TABLE) fail(ps, t.line, t.col, "duplicate table [%s]", t.key);
    else fail(ps, t.line, t.col, "table [%s] conflicts with key '%s'", t.key, t.key);
    node_clear(&t);
    return -1;
  }
  *index = root->count;
  return push(ps, root, &t);
}

static int parse_document(struct parser *ps, struct toml_node *root) {
  size_t current = (size_t)-1; /* index of the open [table] in root, or -1 for the root */

  for (;;) {
    skip_ws(ps);
    if (eof(ps)) return 0;
    if (is_newline(ps)) {
      skip_newline(ps);
      continue;
    }
    if (peek(ps, 0) == '#') {
      if (expect_eol(ps) != 0) return -1;
      continue;
    }
    if (peek(ps, 0) == '[') {
      if (parse_header(ps, root, &current) != 0) return -1;
    } else if (parse_keyval(ps, current == (size_t)-1 ? root : &root->items[current]) != 0) {
      return -1;
    }
    if (expect_eol(ps) != 0) return -1;
  }
}

int toml_parse(const char *name, const char *text, size_t len, struct toml_node **out,
               char *err, size_t errlen) {
  struct parser ps = {name, (const unsigned char *)text, (const unsigned char *)text + len, 1, 1,
                      err, errlen};
  struct toml_node *root;

  *out = NULL;
  if (len > TOML_MAX_SIZE) return fail(&ps, 1, 1, "file is larger than %d bytes", TOML_MAX_SIZE);
  if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) ps.p += 3; /* byte order mark */
  if (check_utf8(&ps) != 0) return -1;
  root = calloc(1, sizeof(*root));
  if (root == NULL) return fail(&ps, 1, 1, "out of memory");
  root->type = TOML_TABLE;
  root->line = root->col = 1;
  if (parse_document(&ps, root) != 0) {
    toml_free(root);
    return -1;
  }
  *out = root;
  return 0;
}

const char *toml_type_name(enum toml_type t) {
  switch (t) {
    case TOML_TABLE: return "table";
    case TOML_STRING: return "string";
    case TOML_INTEGER: return "integer";
    case TOML_BOOLEAN: return "boolean";
    case TOML_ARRAY: return "array";
  }
  return "?";
}

void toml_free(struct toml_node *root) {
  if (root == NULL) return;
  node_clear(root);
  free(root);
}
