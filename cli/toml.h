/* A small TOML reader for dduct's config: the subset the schema needs, strictly.
 *
 * Supported: [table] headers (one level, bare or quoted names), bare and quoted keys, comments,
 * basic / literal / multi-line strings with TOML 1.0 escapes, decimal integers (sign, '_'
 * separators), booleans, arrays (nested, multi-line, trailing comma, comments inside).
 * Rejected as unsupported with a clear message: floats, dates and times, hex/octal/binary
 * integers, inline tables, arrays of tables, dotted keys and dotted table names.
 * Errors are reported as "NAME:LINE:COL: message" with the 1-based line and column (in
 * characters) of the offending character. */
#ifndef DDUCT_CLI_TOML_H
#define DDUCT_CLI_TOML_H

#include <stddef.h>
#include <stdint.h>

/* Documents larger than this are refused: a config file is a few kilobytes. */
#define TOML_MAX_SIZE (1024 * 1024)
/* Arrays nested deeper than this are refused (the parser recurses on nesting). */
#define TOML_MAX_DEPTH 32

enum toml_type {
  TOML_TABLE = 0,
  TOML_STRING,
  TOML_INTEGER,
  TOML_BOOLEAN,
  TOML_ARRAY,
};

/* One node of the document. The root is a TABLE without key; its items are its own keys and
 * the [tables] in document order; a table's items are its keys; an array's items are its
 * elements (without keys). Everything is owned by the root. */
struct toml_node {
  enum toml_type type;
  char *key;           /* NUL-terminated; NULL for the root and for array elements */
  int key_line, key_col;
  int line, col;       /* where the value starts (for a [table]: its name) */
  char *str;           /* STRING: NUL-terminated, may also hold NULs inside (see len) */
  size_t len;          /* STRING: length in bytes */
  int64_t integer;     /* INTEGER; BOOLEAN: 0 or 1 */
  struct toml_node *items;
  size_t count, cap;
};

/* Parse text[0..len) (need not be NUL-terminated). name is used in error messages only. On
 * success *out is a new root (free with toml_free) and 0 is returned; on failure -1 is returned
 * and err receives "name:line:col: message". */
int toml_parse(const char *name, const char *text, size_t len, struct toml_node **out,
               char *err, size_t errlen);

/* Look up key in a table (NULL if absent). */
const struct toml_node *toml_get(const struct toml_node *table, const char *key);

/* "string", "integer", "boolean", "array", "table". */
const char *toml_type_name(enum toml_type t);

void toml_free(struct toml_node *root);

#endif
