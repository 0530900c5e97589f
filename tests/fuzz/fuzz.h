/* Shared by the fuzz drivers and the corpus replay main. Each driver defines both entry points;
 * libFuzzer calls them, or replay.c does in builds without libFuzzer. */
#ifndef DDUCT_FUZZ_H
#define DDUCT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant is a crash, so libFuzzer keeps the input and the replay test fails. */
#define FUZZ_CHECK(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond);              \
      fprintf(stderr, __VA_ARGS__);                                                             \
      fputc('\n', stderr);                                                                      \
      abort();                                                                                  \
    }                                                                                           \
  } while (0)

/* An invariant whose breakage is known and reported (the input sits in crashers/ until the
 * owner fixes it). It is checked like any other; DDUCT_FUZZ_SKIP_KNOWN=1 in the environment
 * skips it so a fuzzing run can look for other bugs instead of finding this one again. */
#define FUZZ_SKIP_KNOWN() (getenv("DDUCT_FUZZ_SKIP_KNOWN") != NULL)
#define FUZZ_KNOWN(cond, ...)                                                                   \
  do {                                                                                          \
    if (!FUZZ_SKIP_KNOWN()) FUZZ_CHECK(cond, __VA_ARGS__);                                      \
  } while (0)

#endif
