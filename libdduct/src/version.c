#include "internal.h"

#define STR_(x) #x
#define STR(x) STR_(x)

const char *dduct_version(void) {
  return STR(DDUCT_VERSION_MAJOR) "." STR(DDUCT_VERSION_MINOR) "." STR(DDUCT_VERSION_PATCH);
}
