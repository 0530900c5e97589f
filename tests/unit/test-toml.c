/* The CLI's TOML reader: valid documents (the seed's example verbatim, every string form and
 * escape, integers, booleans, arrays, comments, CRLF) and every error class with its exact
 * FILE:LINE:COL. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "seed-config.h"
#include "tap.h"
#include "toml.h"


static struct toml_node *parse(const char *text, size_t len) {
  struct toml_node *root = NULL;
  char err[512] = "";
  if (toml_parse("t.toml", text, len, &root, err, sizeof(err)) != 0)
    fprintf(stderr, "  unexpected error: %s\n", err);
  return root;
}

static struct toml_node *ok(const char *text) {
  return parse(text, strlen(text));
}

/* Parse text expecting failure with exactly msg ("t.toml:" is prepended). */
static void bad(const char *text, const char *msg, const char *what) {
  struct toml_node *root = NULL;
  char err[512] = "", want[512];
  int rc = toml_parse("t.toml", text, strlen(text), &root, err, sizeof(err));
  snprintf(want, sizeof(want), "t.toml:%s", msg);
  CHECK(rc == -1 && root == NULL, what);
  CHECK_EQ_STR(err, want, what);
  toml_free(root);
}

static const struct toml_node *get(const struct toml_node *root, const char *table,
                                   const char *key) {
  return toml_get(toml_get(root, table), key);
}

static const char *str(const struct toml_node *n) {
  return n != NULL && n->type == TOML_STRING ? n->str : NULL;
}

static void test_seed(void) {
  struct toml_node *root = ok(seed);
  const struct toml_node *n;
  CHECK(root != NULL, "the seed's example parses");
  if (root == NULL) return;
  CHECK_EQ_INT(root->count, 3, "three tables, no root keys");
  CHECK_EQ_STR(root->items[0].key, "misc", "tables keep document order");
  CHECK_EQ_STR(root->items[2].key, "certs", "tables keep document order (last)");
  CHECK_EQ_STR(str(get(root, "misc", "log_level")), "info", "literal string value");
  CHECK_EQ_STR(str(get(root, "misc", "cert_dir")), "/var/tmp/dduct/certs/", "cert_dir");
  n = get(root, "proxy", "filters");
  CHECK(n != NULL && n->type == TOML_ARRAY && n->count == 4, "filters: an array of four");
  if (n != NULL && n->count == 4) {
    CHECK_EQ_STR(n->items[0].str, "^/v2/.*/blobs/sha256:\\w+$",
                 "literal strings keep backslashes");
    CHECK_EQ_STR(n->items[3].str, "^/.*\\.(?:7z|bz2|gz|xz|zip|zst)$", "last filter");
    CHECK_EQ_INT(n->items[1].line, 11, "array element line");
    CHECK_EQ_INT(n->items[1].col, 3, "array element column");
  }
  n = get(root, "certs", "rsa_key_bits");
  CHECK(n != NULL && n->type == TOML_INTEGER && n->integer == 3072, "integer value");
  if (n != NULL) {
    CHECK_EQ_INT(n->line, 17, "value line");
    CHECK_EQ_INT(n->col, 19, "value column");
    CHECK_EQ_INT(n->key_line, 17, "key line");
    CHECK_EQ_INT(n->key_col, 1, "key column");
  }
  n = get(root, "certs", "server_dns_sans");
  CHECK(n != NULL && n->count == 8 && strcmp(n->items[7].str, "quay.io") == 0, "eight DNS SANs");
  n = get(root, "certs", "server_ip_sans");
  CHECK(n != NULL && n->count == 1 && strcmp(n->items[0].str, "127.0.0.1") == 0, "one IP SAN");
  CHECK_EQ_STR(str(get(root, "certs", "p12_pass")), "dduct", "last key");
  CHECK(toml_get(root, "nope") == NULL && get(root, "misc", "nope") == NULL, "absent keys");
  toml_free(root);
}

static void test_strings(void) {
  struct toml_node *root = ok(
      "a = \"q\\\" b\\\\ \\b\\t\\n\\f\\r \\u00e9 \\U0001F600 \\u0041\"\n"
      "b = 'C:\\path\\to \"x\"'\n"
      "c = \"\"\"\nline1\n  line2\\\n     \n   line3 \\\n\n  end\"\"\"\n"
      "d = '''\nraw \\n 'quoted' \"\"\n'''\n"
      "e = \"\"\"two quotes at the end\"\"\"\"\"\n"
      "f = ''''one''''\n"
      "g = \"\"\n"
      "h = ''\n"
      "i = \"tab\tinside\"\n"
      "j = \"nul\\u0000inside\"\n"
      "\"quoted key\" = 1\n"
      "'lit key' = 2\n"
      "\"\" = 3\n");
  const struct toml_node *j;
  CHECK(root != NULL, "every string form parses");
  if (root == NULL) return;
  CHECK_EQ_STR(str(toml_get(root, "a")),
               "q\" b\\ \b\t\n\f\r \xc3\xa9 \xf0\x9f\x98\x80 A", "basic string escapes");
  CHECK_EQ_STR(str(toml_get(root, "b")), "C:\\path\\to \"x\"", "literal strings: no escapes");
  CHECK_EQ_STR(str(toml_get(root, "c")), "line1\n  line2line3 end",
               "multi-line basic: first newline trimmed, line-ending backslashes");
  CHECK_EQ_STR(str(toml_get(root, "d")), "raw \\n 'quoted' \"\"\n", "multi-line literal");
  CHECK_EQ_STR(str(toml_get(root, "e")), "two quotes at the end\"\"",
               "up to two quotes before the closing three");
  CHECK_EQ_STR(str(toml_get(root, "f")), "'one'", "quotes inside a multi-line literal");
  CHECK_EQ_STR(str(toml_get(root, "g")), "", "empty basic string");
  CHECK_EQ_STR(str(toml_get(root, "h")), "", "empty literal string");
  CHECK_EQ_STR(str(toml_get(root, "i")), "tab\tinside", "a raw tab is allowed in a string");
  j = toml_get(root, "j");
  CHECK(j != NULL && j->len == 10 && memcmp(j->str, "nul\0inside", 10) == 0,
        "\\u0000 decodes to a NUL kept in len");
  CHECK(toml_get(root, "quoted key") != NULL && toml_get(root, "lit key") != NULL &&
            toml_get(root, "") != NULL,
        "quoted keys, including the empty one");
  toml_free(root);
}

static void test_scalars_and_arrays(void) {
  struct toml_node *root = ok(
      "\xEF\xBB\xBF# a byte order mark, then comments everywhere\r\n"
      "top = true # root key\r\n"
      "[ spaced ]   # header with blanks\r\n"
      "i1 = +0\r\n"
      "i2 = -0\r\n"
      "i3 = 1_000_000\r\n"
      "i4 = -9223372036854775808\r\n"
      "i5 = 9223372036854775807\r\n"
      "f = false\r\n"
      "e = []\r\n"
      "n = [ [1, 2], ['a'], [], ]\r\n"
      "m = [\r\n"
      "  1, # one\r\n"
      "  # a comment line\r\n"
      "\r\n"
      "  'two',\r\n"
      "  [true]\r\n"
      "]\r\n"
      "[\"quoted table\"]\n"
      "last = 'no newline at the end'");
  const struct toml_node *t, *n;
  CHECK(root != NULL, "scalars, arrays, comments, CRLF and a BOM parse");
  if (root == NULL) return;
  n = toml_get(root, "top");
  CHECK(n != NULL && n->type == TOML_BOOLEAN && n->integer == 1, "true");
  t = toml_get(root, "spaced");
  CHECK(t != NULL && t->type == TOML_TABLE, "a header with blanks names the table");
  CHECK_EQ_INT(toml_get(t, "i1")->integer, 0, "+0");
  CHECK_EQ_INT(toml_get(t, "i2")->integer, 0, "-0");
  CHECK_EQ_INT(toml_get(t, "i3")->integer, 1000000, "underscores between digits");
  CHECK(toml_get(t, "i4")->integer == INT64_MIN, "the smallest integer");
  CHECK(toml_get(t, "i5")->integer == INT64_MAX, "the largest integer");
  n = toml_get(t, "f");
  CHECK(n->type == TOML_BOOLEAN && n->integer == 0, "false");
  n = toml_get(t, "e");
  CHECK(n->type == TOML_ARRAY && n->count == 0, "empty array");
  n = toml_get(t, "n");
  CHECK(n->count == 3 && n->items[0].count == 2 && n->items[0].items[1].integer == 2 &&
            n->items[2].type == TOML_ARRAY && n->items[2].count == 0,
        "nested arrays and a trailing comma");
  n = toml_get(t, "m");
  CHECK(n->count == 3 && n->items[0].integer == 1 && strcmp(n->items[1].str, "two") == 0 &&
            n->items[2].items[0].integer == 1,
        "multi-line array with comments and blank lines (mixed types are the config's call)");
  CHECK_EQ_INT(n->items[1].line, 16, "CRLF counts as one line");
  CHECK_EQ_STR(str(get(root, "quoted table", "last")), "no newline at the end",
               "quoted table name; last line without a newline");
  toml_free(root);

  root = ok("");
  CHECK(root != NULL && root->count == 0, "an empty document");
  toml_free(root);
  root = ok("# only a comment");
  CHECK(root != NULL && root->count == 0, "a comment-only document");
  toml_free(root);
}

static void test_errors(void) {
  /* syntax */
  bad("a = 1 2\n", "1:7: expected end of line, found '2'", "garbage after a value");
  bad("a 1\n", "1:3: expected '=' after key 'a', found '1'", "missing '='");
  bad("\"%s%s%n%s\" x\n", "1:12: expected '=' after key '%s%s%n%s', found 'x'",
      "a key holding printf directives is shown as text, never used as a format");
  bad("= 1\n", "1:1: expected a key, found '='", "missing key");
  bad("a =\n", "1:4: expected a value, found end of line", "missing value");
  bad("a = hello\n",
      "1:5: invalid value 'hello' (expected a string, integer, boolean or array)",
      "bare word as value");
  bad("a = True\n", "1:5: invalid value 'True' (expected a string, integer, boolean or array)",
      "booleans are lower-case");
  bad("[misc\nx = 1\n", "1:6: expected ']' after the table name, found end of line",
      "unclosed table header");
  bad("[]\n", "1:2: expected a table name, found ']'", "empty table header");
  bad("[a] x\n", "1:5: expected end of line, found 'x'", "garbage after a header");
  /* strings */
  bad("a = \"abc\n", "1:5: unterminated string", "unterminated basic string");
  bad("\n  a = 'abc", "2:7: unterminated string", "unterminated literal string");
  bad("a = \"\"\"abc\n\n", "1:5: unterminated multi-line string", "unterminated multi-line");
  bad("a = '''abc''''''\n", "1:16: too many quotes at the end of a multi-line string",
      "six closing quotes");
  bad("a = \"x\\qy\"\n", "1:7: invalid escape sequence '\\q'", "unknown escape");
  bad("a = \"x\\e\"\n", "1:7: invalid escape sequence '\\e'", "\\e is TOML 1.1, not 1.0");
  bad("a = \"\\u12G4\"\n", "1:6: \\u needs 4 hexadecimal digits", "short \\u escape");
  bad("a = \"\\UD800\"\n", "1:6: \\U needs 8 hexadecimal digits", "short \\U escape");
  bad("a = \"\\uD800\"\n", "1:6: escape \\uD800 is not a Unicode scalar value", "surrogate");
  bad("a = \"\\U00110000\"\n", "1:6: escape \\U00110000 is not a Unicode scalar value",
      "beyond U+10FFFF");
  bad("a = \"x\x01\"\n", "1:7: control character U+0001 must be escaped in a string",
      "control character in a string");
  bad("a = 'x\ry'\n", "1:7: control character U+000D must be escaped in a string",
      "bare CR in a string");
  bad("a = 1 # \x7f\n", "1:9: control character U+007F is not allowed in a comment",
      "DEL in a comment");
  bad("a = 'caf\xc3\xa9' x\n", "1:12: expected end of line, found 'x'",
      "columns count characters, not bytes");
  bad("a = 'x'\nb = '\xc3\x28'\n", "2:6: invalid UTF-8", "invalid UTF-8 is located");
  bad("a = '\xed\xa0\x80'\n", "1:6: invalid UTF-8", "UTF-8 surrogates are invalid");
  bad("\"\"\"k\"\"\" = 1\n", "1:1: a key cannot be a multi-line string", "multi-line key");
  bad("\"a\\u0000\" = 1\n", "1:1: a key cannot contain a NUL character", "NUL in a key");
  /* integers */
  bad("a = 0123\n", "1:5: leading zeros are not allowed", "leading zero");
  bad("a = -01\n", "1:6: leading zeros are not allowed", "leading zero after a sign");
  bad("a = 1__2\n", "1:6: '_' must be between digits", "double underscore");
  bad("a = 12_\n", "1:7: '_' must be between digits", "trailing underscore");
  bad("a = +_1\n", "1:6: expected a digit", "underscore after a sign");
  bad("a = 12ab\n", "1:7: invalid character 'a' in integer", "letters in an integer");
  bad("a = 9223372036854775808\n", "1:5: integer out of range", "overflow");
  bad("a = -9223372036854775809\n", "1:5: integer out of range", "negative overflow");
  /* unsupported */
  bad("a = 1.5\n", "1:5: floats are not supported", "float");
  bad("a = 1e3\n", "1:5: floats are not supported", "exponent float");
  bad("a = -inf\n", "1:5: floats are not supported", "inf");
  bad("a = nan\n", "1:5: floats are not supported", "nan");
  bad("a = 1979-05-27\n", "1:5: dates and times are not supported", "date");
  bad("a = 1979-05-27T07:32:00Z\n", "1:5: dates and times are not supported", "date-time");
  bad("a = 07:32:00\n", "1:5: dates and times are not supported", "time");
  bad("a = 0x1F\n", "1:5: hexadecimal, octal and binary integers are not supported", "hex");
  bad("a = 0o17\n", "1:5: hexadecimal, octal and binary integers are not supported", "octal");
  bad("a = {x = 1}\n", "1:5: inline tables are not supported", "inline table");
  bad("[[a]]\n", "1:1: arrays of tables are not supported", "array of tables");
  bad("a.b = 1\n", "1:2: dotted keys are not supported", "dotted key");
  bad("[a . b]\n", "1:4: dotted table names are not supported", "dotted table name");
  /* arrays */
  bad("a = [1 2]\n", "1:8: expected ',' or ']' in an array, found '2'", "missing comma");
  bad("a = [1,,2]\n", "1:8: expected a value, found ','", "double comma");
  bad("a = [,]\n", "1:6: expected a value, found ','", "leading comma");
  bad("a = [1,\n 2\n", "1:5: unterminated array", "unterminated array");
  bad("a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
      "1:37: arrays are nested too deeply", "nesting cap");
  /* duplicates */
  bad("a = 1\nb = 2\na = 3\n", "3:1: duplicate key 'a'", "duplicate key");
  bad("[t]\nx = 1\n[u]\n[ t ]\n", "4:3: duplicate table [t]", "duplicate table");
  bad("t = 1\n[t]\n", "2:2: table [t] conflicts with key 't'", "table named like a key");
  bad("[t]\nx = 1\n'x' = 2\n", "3:1: duplicate key 'x'", "a quoted key equal to a bare one");
}

static void test_limits(void) {
  size_t n = TOML_MAX_SIZE + 1;
  char *big = malloc(n), err[256] = "";
  struct toml_node *root = NULL;
  memset(big, '#', n);
  CHECK(toml_parse("big.toml", big, n, &root, err, sizeof(err)) == -1 && root == NULL,
        "documents over the size cap are refused");
  CHECK(strstr(err, "big.toml:1:1: file is larger than") == err, "with a positioned message");
  free(big);
  CHECK(toml_parse("t.toml", "a = 'x'", 7, &root, NULL, 0) == 0, "err may be NULL on success");
  toml_free(root);
  CHECK(toml_parse("t.toml", "a = ", 4, &root, NULL, 0) == -1, "err may be NULL on failure");
  toml_free(NULL);
}

/* 1 if err is "t.toml:LINE:COL: message" with LINE:COL inside (or just past) text[0..len). */
static int well_formed_error(const char *err, const char *text, size_t len) {
  int line, col, n = 0, lines = 1;
  if (sscanf(err, "t.toml:%d:%d: %n", &line, &col, &n) != 2 || n == 0 || err[n] == '\0')
    return 0;
  for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
  return line >= 1 && line <= lines && col >= 1 && (size_t)col <= len + 1;
}

/* Every prefix of a rich document, and every byte of it replaced by a troublemaker, either
 * parses or fails with a positioned message; under ASan this also proves no read goes past the
 * buffer (the parser never relies on a terminating NUL). */
static void test_mutations(void) {
  static const char extra[] =
      "\n[more]\nb = \"q\\\" \\u00e9 \\U0001F600\"\nm = \"\"\"\nx \\\n  y\"\"\"\n"
      "l = '''\nz'''\nn = [ [1, -2_000], [], 'w', ] # c\nt = true\n";
  static const char bytes[] = {'"', '\'', '[', ']', '\n', '\\', '=', '#', '\0', ',', '.',
                               '\r', '{', '_', '+', '0', (char)0xff, (char)0xc3};
  size_t len = strlen(seed) + strlen(extra);
  char *doc = malloc(len), *copy;
  char err[512];
  int prefixes_ok = 1, mutants_ok = 1;

  memcpy(doc, seed, strlen(seed));
  memcpy(doc + strlen(seed), extra, strlen(extra));
  for (size_t n = 0; n <= len; n++) {
    struct toml_node *root = NULL;
    copy = malloc(n ? n : 1); /* an exact-size copy so ASan sees any overread */
    memcpy(copy, doc, n);
    err[0] = '\0';
    if (toml_parse("t.toml", copy, n, &root, err, sizeof(err)) != 0 &&
        !well_formed_error(err, copy, n)) {
      if (prefixes_ok) fprintf(stderr, "  prefix %zu: %s\n", n, err);
      prefixes_ok = 0;
    }
    toml_free(root);
    free(copy);
  }
  CHECK(prefixes_ok, "every prefix parses or fails with FILE:LINE:COL");
  copy = malloc(len);
  for (size_t i = 0; i < len; i++) {
    for (size_t b = 0; b < sizeof(bytes); b++) {
      struct toml_node *root = NULL;
      memcpy(copy, doc, len);
      copy[i] = bytes[b];
      err[0] = '\0';
      if (toml_parse("t.toml", copy, len, &root, err, sizeof(err)) != 0 &&
          !well_formed_error(err, copy, len)) {
        if (mutants_ok) fprintf(stderr, "  byte %zu = %d: %s\n", i, bytes[b], err);
        mutants_ok = 0;
      }
      toml_free(root);
    }
  }
  CHECK(mutants_ok, "every one-byte mutant parses or fails with FILE:LINE:COL");
  free(doc);
  free(copy);
}

int main(void) {
  test_mutations();
  test_seed();
  test_strings();
  test_scalars_and_arrays();
  test_errors();
  test_limits();
  return tap_done();
}
