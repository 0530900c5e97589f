/* subprojects/cjson-lite (the static build's cJSON) on its own: parsing from buffers that are
 * not NUL-terminated, escapes and UTF-16 surrogates, numbers past int, errors on every
 * truncation and malformed escape, the nesting limit, printing what cJSON prints, and the
 * list links through creation, detach and delete. Linked with cjson-lite only (no libcjson);
 * the same file linked with Debian's libcjson passes too (cc test-cjson-lite.c tap.c -lcjson),
 * which is how the expected texts were checked. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tap.h"

/* A heap copy without a terminating NUL, so ASan catches any read past the length. */
static cJSON *parse_exact(const char *s, size_t n) {
  char *b = malloc(n ? n : 1);
  cJSON *j;
  memcpy(b, s, n);
  j = cJSON_ParseWithLength(b, n);
  free(b);
  return j;
}

static const char DOC[] =
    "{ \"size\": 10737418240, \"etag\": \"\\\"abc\\\"\", \"ok\": true, \"n\": null,\n"
    "  \"arr\": [1, \"two\", [], {}], \"u\": \"\\u00e9\\ud83d\\ude00\", \"neg\": -2.5e3 }";
static const char PRINTED[] =
    "{\"size\":10737418240,\"etag\":\"\\\"abc\\\"\",\"ok\":true,\"n\":null,"
    "\"arr\":[1,\"two\",[],{}],\"u\":\"\xc3\xa9\xf0\x9f\x98\x80\",\"neg\":-2500}";

static void test_parse_and_print(void) {
  cJSON *j = parse_exact(DOC, strlen(DOC)), *arr;
  char *out;
  CHECK(j != NULL && cJSON_IsObject(j), "a document without a NUL parses");
  if (j == NULL) return;
  CHECK(cJSON_GetObjectItemCaseSensitive(j, "size")->valuedouble == 10737418240.0,
        "a number past 32 bits keeps its value");
  CHECK_EQ_INT(cJSON_GetObjectItemCaseSensitive(j, "size")->valueint, INT_MAX,
               "valueint saturates as cJSON's does");
  CHECK_EQ_STR(cJSON_GetObjectItemCaseSensitive(j, "etag")->valuestring, "\"abc\"",
               "escaped quotes");
  CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "u")),
               "\xc3\xa9\xf0\x9f\x98\x80", "\\u escapes and a surrogate pair become UTF-8");
  CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "ok")), "true");
  CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "n")), "null");
  CHECK(cJSON_GetObjectItemCaseSensitive(j, "Size") == NULL, "case-sensitive lookup");
  CHECK(cJSON_GetObjectItem(j, "Size") != NULL, "case-insensitive lookup");
  arr = cJSON_GetObjectItemCaseSensitive(j, "arr");
  CHECK_EQ_INT(cJSON_GetArraySize(arr), 4, "array size");
  CHECK_EQ_STR(cJSON_GetArrayItem(arr, 1)->valuestring, "two", "array item");
  CHECK(arr->child->prev == cJSON_GetArrayItem(arr, 3), "child->prev is the last item");
  out = cJSON_PrintUnformatted(j);
  CHECK_EQ_STR(out, PRINTED, "printed as cJSON prints it");
  cJSON_Delete(j);
  j = cJSON_Parse(out);
  free(out);
  out = cJSON_PrintUnformatted(j);
  CHECK_EQ_STR(out, PRINTED, "print, parse, print: the same text");
  free(out);
  out = cJSON_Print(j);
  cJSON_Delete(j);
  j = cJSON_Parse(out);
  cJSON_free(out);
  out = cJSON_PrintUnformatted(j);
  CHECK_EQ_STR(out, PRINTED, "the formatted print parses back to the same document");
  free(out);
  cJSON_Delete(j);
}

static void test_errors(void) {
  static const char *bad[] = {
      "\"\\x\"", "\"\\udc00\"", "\"\\ud800x\"", "\"\\ud800\\u0041\"", "[1,]",
      "{\"a\" 1}", "{\"a\":}", "{1:2}", "tru", "-", "[1 2]", "\"\\u12\"", "",
  };
  size_t n = strlen(DOC), fails = 0;
  char deep[2100];
  cJSON *j;
  for (size_t i = 0; i < n; i++) {
    j = parse_exact(DOC, i);
    if (j == NULL) fails++;
    cJSON_Delete(j);
  }
  CHECK_EQ_INT(fails, n, "every truncation of the document is an error");
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    j = parse_exact(bad[i], strlen(bad[i]));
    CHECK(j == NULL, bad[i]);
    cJSON_Delete(j);
  }
  memset(deep, '[', 1000);
  memset(deep + 1000, ']', 1000);
  j = parse_exact(deep, 2000);
  CHECK(j != NULL, "1000 nested arrays parse");
  cJSON_Delete(j);
  memset(deep, '[', 1001);
  memset(deep + 1001, ']', 1001);
  j = parse_exact(deep, 2002);
  CHECK(j == NULL, "1001 nested arrays are refused (cJSON's nesting limit)");
  cJSON_Delete(j);
}

static void test_build_and_detach(void) {
  cJSON *o = cJSON_CreateObject(), *a;
  char *out;
  CHECK(cJSON_AddNumberToObject(o, "a", 1) != NULL, "add a number");
  CHECK(cJSON_AddStringToObject(o, "b", "x\n\x01\"\\/") != NULL, "add a string");
  a = cJSON_AddArrayToObject(o, "c");
  CHECK(a != NULL && cJSON_AddItemToArray(a, cJSON_CreateString("s")), "add to an array");
  CHECK(cJSON_AddItemToArray(a, cJSON_CreateNumber(0.1)), "add a fraction");
  CHECK(cJSON_AddNullToObject(o, "d") != NULL && cJSON_AddBoolToObject(o, "e", 0) != NULL,
        "add null and false");
  out = cJSON_PrintUnformatted(o);
  CHECK_EQ_STR(out, "{\"a\":1,\"b\":\"x\\n\\u0001\\\"\\\\/\",\"c\":[\"s\",0.1],\"d\":null,"
                    "\"e\":false}", "control characters escaped, 0.1 printed short");
  free(out);
  cJSON_Delete(cJSON_DetachItemFromObjectCaseSensitive(o, "b")); /* the middle */
  cJSON_DeleteItemFromObject(o, "a");                             /* the first */
  cJSON_DeleteItemFromObjectCaseSensitive(o, "e");                /* the last */
  CHECK(o->child->prev == cJSON_GetObjectItem(o, "d"), "the last item after deletes");
  CHECK(cJSON_AddNumberToObject(o, "f", -7) != NULL, "append after deletes");
  cJSON_DeleteItemFromArray(a, 0);
  out = cJSON_PrintUnformatted(o);
  CHECK_EQ_STR(out, "{\"c\":[0.1],\"d\":null,\"f\":-7}", "the links after detach and delete");
  free(out);
  cJSON_Delete(o);
}

int main(void) {
  test_parse_and_print();
  test_errors();
  test_build_and_detach();
  return tap_done();
}
