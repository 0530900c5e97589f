/* Placeholder until the TOML config and CLI land (issue 2). */
#include <stdio.h>

#include "dduct.h"

int main(void) {
  printf("dduct %s\n", dduct_version());
  return 0;
}
