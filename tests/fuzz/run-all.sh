#!/bin/sh
# Run every libFuzzer target for N minutes each, one after the other (or J at a time), each
# seeded from its committed corpus into a scratch directory, and report what was found.
#
#   tests/fuzz/run-all.sh [-m MINUTES] [-j JOBS] [-b BUILD_DIR] [-o OUT_DIR] [-t 'toml http']
#
# BUILD_DIR (default build-fuzz-clang) must be set up with `CC=clang meson setup BUILD_DIR
# -Dfuzzing=true`; the targets are (re)built first. Everything runs under `nice -n 19`.
# OUT_DIR (default /tmp/dduct-fuzz) gets, per target: corpus/<target>/ (the scratch corpus),
# <target>.log (libFuzzer's output), crash-*, leak-*, timeout-*, oom-* artifacts, and
# new/<target>/ (the inputs that add coverage over the committed corpus, merged at the end,
# to copy into tests/fuzz/corpus/<target>/ as fz-<sha1> once they pass the replay test).
# Exit status: 0 when no target left an artifact, 1 otherwise. See README.md here.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
minutes=10
jobs=1
build="$src/build-fuzz-clang"
out=/tmp/dduct-fuzz
targets="toml http store-key ca-host tls-hello"

while getopts m:j:b:o:t: opt; do
  case $opt in
  m) minutes=$OPTARG ;;
  j) jobs=$OPTARG ;;
  b) build=$OPTARG ;;
  o) out=$OPTARG ;;
  t) targets=$OPTARG ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
  esac
done

[ -f "$build/build.ninja" ] || {
  echo "run-all.sh: $build is not a build directory; run: CC=clang meson setup $build -Dfuzzing=true" >&2
  exit 2
}
exes=""
for t in $targets; do exes="$exes tests/fuzz/fuzz-$t"; done
# shellcheck disable=SC2086
nice -n 19 ninja -C "$build" $exes >/dev/null

mkdir -p "$out"
seconds=$((minutes * 60))

run_one() {
  t=$1
  exe="$build/tests/fuzz/fuzz-$t"
  corpus="$out/corpus/$t"
  mkdir -p "$corpus" "$out/artifacts/$t"
  cp -n "$here/corpus/$t/"* "$corpus/" 2>/dev/null || true
  extra=""
  [ -f "$here/$t.dict" ] && extra="-dict=$here/$t.dict"
  [ "$t" = toml ] && extra="$extra -max_len=4096"
  echo "fuzz-$t: $minutes min -> $out/$t.log"
  # shellcheck disable=SC2086
  DDUCT_FUZZ_SKIP_KNOWN=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    nice -n 19 "$exe" $extra -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "$corpus" \
    >"$out/$t.log" 2>&1 || true
  # Inputs that add coverage over the committed corpus, ready to be reviewed and committed.
  # The committed files go in first, so the merge keeps only what adds to them; then they go.
  rm -rf "$out/new/$t" && mkdir -p "$out/new/$t"
  cp "$here/corpus/$t/"* "$out/new/$t/"
  # shellcheck disable=SC2086
  nice -n 19 "$exe" -merge=1 $extra "$out/new/$t" "$corpus" >"$out/$t.merge.log" 2>&1 || true
  for f in "$here/corpus/$t/"*; do rm -f "$out/new/$t/$(basename "$f")"; done
}

running=0
for t in $targets; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait
    running=0
  fi
done
wait

status=0
printf '\n%-10s %12s %8s %6s %10s\n' target execs cov new artifacts
for t in $targets; do
  log="$out/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  new=$(find "$out/new/$t" -type f | wc -l)
  arts=$(find "$out/artifacts/$t" -type f | wc -l)
  printf '%-10s %12s %8s %6s %10s\n' "$t" "${execs:-?}" "${cov:-?}" "$new" "$arts"
  [ "$arts" -eq 0 ] || status=1
done
[ "$status" -eq 0 ] || echo "artifacts in $out/artifacts/<target>/: minimise and replay them (README.md)"
exit $status
