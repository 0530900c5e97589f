/* Corpus replay: the fuzz drivers' LLVMFuzzerTestOneInput run over every file named on the
 * command line (directories are walked one level, in name order), so the corpora are regression
 * tests in builds without libFuzzer (gcc, plain and ASan+UBSan). A driver reports a broken
 * invariant by aborting; this main only reads files and says how many it ran. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define REPLAY_FILE_MAX (4 * 1024 * 1024) /* corpus files are small; refuse anything absurd */

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf;
  size_t n;
  if (f == NULL) {
    fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
    return -1;
  }
  /* One byte more than the cap tells an oversized file from one of exactly the cap. */
  buf = malloc(REPLAY_FILE_MAX + 1);
  if (buf == NULL) {
    fclose(f);
    return -1;
  }
  n = fread(buf, 1, REPLAY_FILE_MAX + 1, f);
  if (ferror(f) || n > REPLAY_FILE_MAX) {
    fprintf(stderr, "replay: %s: unreadable or over %d bytes\n", path, REPLAY_FILE_MAX);
    fclose(f);
    free(buf);
    return -1;
  }
  fclose(f);
  /* Print before running: if the driver aborts, the last line names the input. */
  fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
  /* libFuzzer hands over exactly n bytes; a malloc of exactly n lets ASan catch overreads. */
  {
    unsigned char *exact = malloc(n > 0 ? n : 1);
    if (exact == NULL) {
      free(buf);
      return -1;
    }
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
  }
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, size_t *ran) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  if (d == NULL) {
    fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
    return -1;
  }
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue; /* ".", "..", and editor droppings */
    if (n == cap) {
      char **p = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));
      if (p == NULL) {
        rc = -1;
        break;
      }
      names = p;
    }
    names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
    if (names[n] == NULL) {
      rc = -1;
      break;
    }
    sprintf(names[n], "%s/%s", dir, e->d_name);
    n++;
  }
  closedir(d);
  if (n > 0) qsort(names, n, sizeof(*names), by_name);
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (rc == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
      if (run_file(names[i]) != 0) rc = -1;
      else (*ran)++;
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  size_t ran = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  if (LLVMFuzzerInitialize(&argc, &argv) != 0) return 1;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
      return 1;
    }
    if (S_ISDIR(st.st_mode) ? run_dir(argv[i], &ran) != 0 : run_file(argv[i]) != 0) return 1;
    if (!S_ISDIR(st.st_mode)) ran++;
  }
  /* An empty corpus would make the test pass without testing anything. */
  if (ran == 0) {
    fprintf(stderr, "replay: no input files\n");
    return 1;
  }
  printf("replayed %zu inputs\n", ran);
  return 0;
}
