/* The part of cJSON's API that libdduct uses, for the static executable only.
 *
 * Debian's libcjson-dev ships no static archive (libcjson.a), so `-Dstatic=true` links this
 * file instead when the system has none. It is written here against the system's own header
 * (<cjson/cJSON.h>, same struct layout, same list convention: an array's or object's child
 * chain runs through next, and child->prev is the last item), and implements parsing,
 * printing, creation, lookup and deletion; the shared-library build always uses the real
 * cJSON. A call libdduct starts to use that is missing here fails the static link, which
 * `tests/packaging` builds on every CI run. */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#define NESTING_LIMIT 1000

static const char *error_ptr;

CJSON_PUBLIC(const char *) cJSON_Version(void) { return "1.7.15-lite"; }
CJSON_PUBLIC(void *) cJSON_malloc(size_t size) { return malloc(size); }
CJSON_PUBLIC(void) cJSON_free(void *object) { free(object); }
CJSON_PUBLIC(const char *) cJSON_GetErrorPtr(void) { return error_ptr; }

static cJSON *new_item(int type) {
  cJSON *it = calloc(1, sizeof(*it));
  if (it != NULL) it->type = type;
  return it;
}

CJSON_PUBLIC(void) cJSON_Delete(cJSON *item) {
  while (item != NULL) {
    cJSON *next = item->next;
    if (!(item->type & cJSON_IsReference) && item->child != NULL) cJSON_Delete(item->child);
    if (!(item->type & cJSON_IsReference)) free(item->valuestring);
    if (!(item->type & cJSON_StringIsConst)) free(item->string);
    free(item);
    item = next;
  }
}

/* ---- parsing --------------------------------------------------------------------------- */

struct in {
  const char *s;
  size_t len, pos;
  int depth;
};

static int more(const struct in *p) { return p->pos < p->len; }
static char cur(const struct in *p) { return p->s[p->pos]; }

static void skip_ws(struct in *p) {
  while (more(p) && (unsigned char)cur(p) <= 32) p->pos++;
}

static int parse_value(struct in *p, cJSON *it);

static int hex4(const struct in *p, size_t at, unsigned *out) {
  unsigned v = 0;
  if (at + 4 > p->len) return -1;
  for (size_t i = 0; i < 4; i++) {
    char c = p->s[at + i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) {
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12));
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18));
  o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* At the opening quote; returns a malloc'd NUL-terminated string, position past the quote. */
static char *parse_string_raw(struct in *p) {
  size_t start = ++p->pos, end = start, n = 0;
  char *out, *o;
  while (end < p->len && p->s[end] != '"') {
    if (p->s[end] == '\\') end++;
    end++;
  }
  if (end >= p->len) return NULL;
  /* Escapes never grow the text: \uXXXX (6 bytes) is at most 3 UTF-8 bytes, a pair 4 of 12. */
  if ((out = malloc(end - start + 1)) == NULL) return NULL;
  o = out;
  for (size_t i = start; i < end; i++) {
    char c = p->s[i];
    if (c != '\\') { o[n++] = c; continue; } /* raw control bytes pass, as in cJSON */
    c = p->s[++i];
    switch (c) {
    case '"': case '\\': case '/': o[n++] = c; break;
    case 'b': o[n++] = '\b'; break;
    case 'f': o[n++] = '\f'; break;
    case 'n': o[n++] = '\n'; break;
    case 'r': o[n++] = '\r'; break;
    case 't': o[n++] = '\t'; break;
    case 'u': {
      unsigned cp, lo;
      if (hex4(p, i + 1, &cp) != 0) goto fail;
      i += 4;
      if (cp >= 0xDC00 && cp <= 0xDFFF) goto fail;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (i + 6 >= end || p->s[i + 1] != '\\' || p->s[i + 2] != 'u' ||
            hex4(p, i + 3, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
          goto fail;
        i += 6;
        cp = 0x10000 + (((cp & 0x3FF) << 10) | (lo & 0x3FF));
      }
      n += put_utf8(o + n, cp);
      break;
    }
    default: goto fail;
    }
  }
  o[n] = '\0';
  p->pos = end + 1;
  return out;
fail:
  free(out);
  return NULL;
}

static int parse_number(struct in *p, cJSON *it) {
  char buf[64], *endp;
  size_t n = 0;
  double d;
  while (more(p) && n < sizeof(buf) - 1 && strchr("0123456789+-eE.", cur(p)) != NULL &&
         cur(p) != '\0')
    buf[n++] = p->s[p->pos++];
  buf[n] = '\0';
  d = strtod(buf, &endp);
  if (n == 0 || endp != buf + n) return -1;
  it->type = cJSON_Number;
  it->valuedouble = d;
  it->valueint = d >= INT_MAX ? INT_MAX : d <= (double)INT_MIN ? INT_MIN : (int)d;
  return 0;
}

static int literal(struct in *p, const char *word) {
  size_t n = strlen(word);
  if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return 0;
  p->pos += n;
  return 1;
}

static void append(cJSON *parent, cJSON *child) {
  if (parent->child == NULL) {
    parent->child = child;
    child->prev = child;
  } else {
    cJSON *last = parent->child->prev;
    last->next = child;
    child->prev = last;
    parent->child->prev = child;
  }
}

static int parse_container(struct in *p, cJSON *it, int object) {
  char close = object ? '}' : ']';
  if (++p->depth > NESTING_LIMIT) return -1;
  it->type = object ? cJSON_Object : cJSON_Array;
  p->pos++;
  skip_ws(p);
  if (more(p) && cur(p) == close) {
    p->pos++;
    p->depth--;
    return 0;
  }
  for (;;) {
    cJSON *child = new_item(cJSON_Invalid);
    if (child == NULL) return -1;
    append(it, child);
    skip_ws(p);
    if (object) {
      if (!more(p) || cur(p) != '"' || (child->string = parse_string_raw(p)) == NULL) return -1;
      skip_ws(p);
      if (!more(p) || cur(p) != ':') return -1;
      p->pos++;
      skip_ws(p);
    }
    if (parse_value(p, child) != 0) return -1;
    skip_ws(p);
    if (!more(p)) return -1;
    if (cur(p) == close) break;
    if (cur(p) != ',') return -1;
    p->pos++;
  }
  p->pos++;
  p->depth--;
  return 0;
}

static int parse_value(struct in *p, cJSON *it) {
  if (!more(p)) return -1;
  if (literal(p, "null")) { it->type = cJSON_NULL; return 0; }
  if (literal(p, "false")) { it->type = cJSON_False; return 0; }
  if (literal(p, "true")) { it->type = cJSON_True; it->valueint = 1; return 0; }
  switch (cur(p)) {
  case '"':
    if ((it->valuestring = parse_string_raw(p)) == NULL) return -1;
    it->type = cJSON_String;
    return 0;
  case '[': return parse_container(p, it, 0);
  case '{': return parse_container(p, it, 1);
  default:
    if (cur(p) == '-' || isdigit((unsigned char)cur(p))) return parse_number(p, it);
    return -1;
  }
}

CJSON_PUBLIC(cJSON *) cJSON_ParseWithLengthOpts(const char *value, size_t buffer_length,
                                                const char **return_parse_end,
                                                cJSON_bool require_null_terminated) {
  struct in p = {value, buffer_length, 0, 0};
  cJSON *it;
  error_ptr = NULL;
  if (value == NULL || buffer_length == 0) return NULL;
  if (p.len >= 3 && memcmp(value, "\xEF\xBB\xBF", 3) == 0) p.pos = 3;
  if ((it = new_item(cJSON_Invalid)) == NULL) return NULL;
  skip_ws(&p);
  if (parse_value(&p, it) != 0) goto fail;
  if (require_null_terminated) {
    skip_ws(&p);
    if (more(&p) && cur(&p) != '\0') goto fail;
  }
  if (return_parse_end != NULL) *return_parse_end = value + p.pos;
  return it;
fail:
  cJSON_Delete(it);
  error_ptr = value + (p.pos < p.len ? p.pos : p.len > 0 ? p.len - 1 : 0);
  if (return_parse_end != NULL) *return_parse_end = error_ptr;
  return NULL;
}

CJSON_PUBLIC(cJSON *) cJSON_ParseWithOpts(const char *value, const char **return_parse_end,
                                          cJSON_bool require_null_terminated) {
  if (value == NULL) return NULL;
  return cJSON_ParseWithLengthOpts(value, strlen(value) + 1, return_parse_end,
                                   require_null_terminated);
}

CJSON_PUBLIC(cJSON *) cJSON_Parse(const char *value) { return cJSON_ParseWithOpts(value, NULL, 0); }

CJSON_PUBLIC(cJSON *) cJSON_ParseWithLength(const char *value, size_t buffer_length) {
  return cJSON_ParseWithLengthOpts(value, buffer_length, NULL, 0);
}

/* ---- printing -------------------------------------------------------------------------- */

struct out {
  char *b;
  size_t len, cap;
  int failed;
};

static void put(struct out *o, const char *s, size_t n) {
  if (o->failed) return;
  if (o->len + n + 1 > o->cap) {
    size_t cap = o->cap ? o->cap : 256;
    char *nb;
    while (cap < o->len + n + 1) cap *= 2;
    if ((nb = realloc(o->b, cap)) == NULL) { o->failed = 1; return; }
    o->b = nb;
    o->cap = cap;
  }
  memcpy(o->b + o->len, s, n);
  o->len += n;
  o->b[o->len] = '\0';
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

static void print_string(struct out *o, const char *s) {
  put(o, "\"", 1);
  for (; s != NULL && *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    switch (c) {
    case '"': puts_(o, "\\\""); break;
    case '\\': puts_(o, "\\\\"); break;
    case '\b': puts_(o, "\\b"); break;
    case '\f': puts_(o, "\\f"); break;
    case '\n': puts_(o, "\\n"); break;
    case '\r': puts_(o, "\\r"); break;
    case '\t': puts_(o, "\\t"); break;
    default:
      if (c < 0x20) {
        snprintf(esc, sizeof(esc), "\\u%04x", c);
        puts_(o, esc);
      } else {
        put(o, (const char *)&c, 1);
      }
    }
  }
  put(o, "\"", 1);
}

static void print_number(struct out *o, double d) {
  char buf[32];
  double back;
  if (isnan(d) || isinf(d)) {
    puts_(o, "null");
    return;
  }
  snprintf(buf, sizeof(buf), "%1.15g", d);
  if (sscanf(buf, "%lg", &back) != 1 || back != d) snprintf(buf, sizeof(buf), "%1.17g", d);
  puts_(o, buf);
}

static void indent(struct out *o, int fmt, int depth) {
  if (fmt)
    for (int i = 0; i < depth; i++) put(o, "\t", 1);
}

static void print_value(struct out *o, const cJSON *it, int fmt, int depth) {
  switch (it->type & 0xFF) {
  case cJSON_NULL: puts_(o, "null"); break;
  case cJSON_False: puts_(o, "false"); break;
  case cJSON_True: puts_(o, "true"); break;
  case cJSON_Number: print_number(o, it->valuedouble); break;
  case cJSON_String: print_string(o, it->valuestring); break;
  case cJSON_Raw: if (it->valuestring != NULL) puts_(o, it->valuestring); else o->failed = 1; break;
  case cJSON_Array:
  case cJSON_Object: {
    int object = (it->type & 0xFF) == cJSON_Object;
    put(o, object ? "{" : "[", 1);
    if (object && fmt && it->child != NULL) put(o, "\n", 1);
    for (const cJSON *c = it->child; c != NULL; c = c->next) {
      if (object) {
        indent(o, fmt, depth + 1);
        print_string(o, c->string);
        puts_(o, fmt ? ":\t" : ":");
      }
      print_value(o, c, fmt, depth + 1);
      if (c->next != NULL) puts_(o, fmt && !object ? ", " : ",");
      if (object && fmt) put(o, "\n", 1);
    }
    if (object && fmt && it->child != NULL) indent(o, fmt, depth);
    put(o, object ? "}" : "]", 1);
    break;
  }
  default: o->failed = 1;
  }
}

static char *print(const cJSON *it, int fmt) {
  struct out o = {NULL, 0, 0, 0};
  if (it == NULL) return NULL;
  print_value(&o, it, fmt, 0);
  if (o.failed) {
    free(o.b);
    return NULL;
  }
  return o.b;
}

CJSON_PUBLIC(char *) cJSON_Print(const cJSON *item) { return print(item, 1); }
CJSON_PUBLIC(char *) cJSON_PrintUnformatted(const cJSON *item) { return print(item, 0); }

/* ---- lookup ---------------------------------------------------------------------------- */

CJSON_PUBLIC(int) cJSON_GetArraySize(const cJSON *array) {
  int n = 0;
  if (array == NULL) return 0;
  for (const cJSON *c = array->child; c != NULL; c = c->next) n++;
  return n;
}

CJSON_PUBLIC(cJSON *) cJSON_GetArrayItem(const cJSON *array, int index) {
  cJSON *c;
  if (array == NULL || index < 0) return NULL;
  for (c = array->child; c != NULL && index > 0; c = c->next) index--;
  return c;
}

static cJSON *find(const cJSON *object, const char *name, int case_sensitive) {
  if (object == NULL || name == NULL) return NULL;
  for (cJSON *c = object->child; c != NULL; c = c->next)
    if (c->string != NULL &&
        (case_sensitive ? strcmp(c->string, name) : strcasecmp(c->string, name)) == 0)
      return c;
  return NULL;
}

CJSON_PUBLIC(cJSON *) cJSON_GetObjectItem(const cJSON *const object, const char *const string) {
  return find(object, string, 0);
}
CJSON_PUBLIC(cJSON *) cJSON_GetObjectItemCaseSensitive(const cJSON *const object,
                                                       const char *const string) {
  return find(object, string, 1);
}
CJSON_PUBLIC(cJSON_bool) cJSON_HasObjectItem(const cJSON *object, const char *string) {
  return find(object, string, 0) != NULL;
}

CJSON_PUBLIC(char *) cJSON_GetStringValue(const cJSON *const item) {
  return cJSON_IsString(item) ? item->valuestring : NULL;
}
CJSON_PUBLIC(double) cJSON_GetNumberValue(const cJSON *const item) {
  return cJSON_IsNumber(item) ? item->valuedouble : (double)NAN;
}

#define IS(name, t) \
  CJSON_PUBLIC(cJSON_bool) cJSON_Is##name(const cJSON *const item) { \
    return item != NULL && (item->type & 0xFF) == (t); \
  }
IS(Invalid, cJSON_Invalid)
IS(False, cJSON_False)
IS(True, cJSON_True)
IS(Null, cJSON_NULL)
IS(Number, cJSON_Number)
IS(String, cJSON_String)
IS(Array, cJSON_Array)
IS(Object, cJSON_Object)
IS(Raw, cJSON_Raw)
CJSON_PUBLIC(cJSON_bool) cJSON_IsBool(const cJSON *const item) {
  return item != NULL && (item->type & (cJSON_True | cJSON_False)) != 0;
}

/* ---- creation -------------------------------------------------------------------------- */

CJSON_PUBLIC(cJSON *) cJSON_CreateNull(void) { return new_item(cJSON_NULL); }
CJSON_PUBLIC(cJSON *) cJSON_CreateTrue(void) { return new_item(cJSON_True); }
CJSON_PUBLIC(cJSON *) cJSON_CreateFalse(void) { return new_item(cJSON_False); }
CJSON_PUBLIC(cJSON *) cJSON_CreateBool(cJSON_bool b) { return new_item(b ? cJSON_True : cJSON_False); }
CJSON_PUBLIC(cJSON *) cJSON_CreateArray(void) { return new_item(cJSON_Array); }
CJSON_PUBLIC(cJSON *) cJSON_CreateObject(void) { return new_item(cJSON_Object); }

CJSON_PUBLIC(double) cJSON_SetNumberHelper(cJSON *object, double number) {
  object->valueint = number >= INT_MAX ? INT_MAX : number <= (double)INT_MIN ? INT_MIN : (int)number;
  return object->valuedouble = number;
}

CJSON_PUBLIC(cJSON *) cJSON_CreateNumber(double num) {
  cJSON *it = new_item(cJSON_Number);
  if (it != NULL) cJSON_SetNumberHelper(it, num);
  return it;
}

CJSON_PUBLIC(cJSON *) cJSON_CreateString(const char *string) {
  cJSON *it;
  if (string == NULL) return NULL;
  if ((it = new_item(cJSON_String)) != NULL && (it->valuestring = strdup(string)) == NULL) {
    free(it);
    return NULL;
  }
  return it;
}

CJSON_PUBLIC(cJSON *) cJSON_CreateRaw(const char *raw) {
  cJSON *it = cJSON_CreateString(raw);
  if (it != NULL) it->type = cJSON_Raw;
  return it;
}

CJSON_PUBLIC(cJSON_bool) cJSON_AddItemToArray(cJSON *array, cJSON *item) {
  if (array == NULL || item == NULL || array == item) return 0;
  append(array, item);
  return 1;
}

CJSON_PUBLIC(cJSON_bool) cJSON_AddItemToObject(cJSON *object, const char *string, cJSON *item) {
  char *name;
  if (object == NULL || string == NULL || item == NULL || object == item) return 0;
  if ((name = strdup(string)) == NULL) return 0;
  if (!(item->type & cJSON_StringIsConst)) free(item->string);
  item->string = name;
  item->type &= ~cJSON_StringIsConst;
  append(object, item);
  return 1;
}

CJSON_PUBLIC(cJSON_bool) cJSON_AddItemToObjectCS(cJSON *object, const char *string, cJSON *item) {
  return cJSON_AddItemToObject(object, string, item);
}

static cJSON *add(cJSON *object, const char *name, cJSON *item) {
  if (cJSON_AddItemToObject(object, name, item)) return item;
  cJSON_Delete(item);
  return NULL;
}

CJSON_PUBLIC(cJSON *) cJSON_AddNullToObject(cJSON *const object, const char *const name) {
  return add(object, name, cJSON_CreateNull());
}
CJSON_PUBLIC(cJSON *) cJSON_AddTrueToObject(cJSON *const object, const char *const name) {
  return add(object, name, cJSON_CreateTrue());
}
CJSON_PUBLIC(cJSON *) cJSON_AddFalseToObject(cJSON *const object, const char *const name) {
  return add(object, name, cJSON_CreateFalse());
}
CJSON_PUBLIC(cJSON *) cJSON_AddBoolToObject(cJSON *const object, const char *const name,
                                            const cJSON_bool boolean) {
  return add(object, name, cJSON_CreateBool(boolean));
}
CJSON_PUBLIC(cJSON *) cJSON_AddNumberToObject(cJSON *const object, const char *const name,
                                              const double number) {
  return add(object, name, cJSON_CreateNumber(number));
}
CJSON_PUBLIC(cJSON *) cJSON_AddStringToObject(cJSON *const object, const char *const name,
                                              const char *const string) {
  return add(object, name, cJSON_CreateString(string));
}
CJSON_PUBLIC(cJSON *) cJSON_AddObjectToObject(cJSON *const object, const char *const name) {
  return add(object, name, cJSON_CreateObject());
}
CJSON_PUBLIC(cJSON *) cJSON_AddArrayToObject(cJSON *const object, const char *const name) {
  return add(object, name, cJSON_CreateArray());
}

/* ---- removal --------------------------------------------------------------------------- */

CJSON_PUBLIC(cJSON *) cJSON_DetachItemViaPointer(cJSON *parent, cJSON *const item) {
  if (parent == NULL || item == NULL || parent->child == NULL) return NULL;
  if (item != parent->child) item->prev->next = item->next;
  if (item->next != NULL) item->next->prev = item->prev;
  if (item == parent->child) {
    parent->child = item->next;
    if (parent->child != NULL) parent->child->prev = item->prev;
  } else if (item->next == NULL) {
    parent->child->prev = item->prev;
  }
  item->prev = item->next = NULL;
  return item;
}

CJSON_PUBLIC(cJSON *) cJSON_DetachItemFromObject(cJSON *object, const char *string) {
  return cJSON_DetachItemViaPointer(object, find(object, string, 0));
}
CJSON_PUBLIC(cJSON *) cJSON_DetachItemFromObjectCaseSensitive(cJSON *object, const char *string) {
  return cJSON_DetachItemViaPointer(object, find(object, string, 1));
}
CJSON_PUBLIC(void) cJSON_DeleteItemFromObject(cJSON *object, const char *string) {
  cJSON_Delete(cJSON_DetachItemFromObject(object, string));
}
CJSON_PUBLIC(void) cJSON_DeleteItemFromObjectCaseSensitive(cJSON *object, const char *string) {
  cJSON_Delete(cJSON_DetachItemFromObjectCaseSensitive(object, string));
}
CJSON_PUBLIC(cJSON *) cJSON_DetachItemFromArray(cJSON *array, int which) {
  return cJSON_DetachItemViaPointer(array, cJSON_GetArrayItem(array, which));
}
CJSON_PUBLIC(void) cJSON_DeleteItemFromArray(cJSON *array, int which) {
  cJSON_Delete(cJSON_DetachItemFromArray(array, which));
}
