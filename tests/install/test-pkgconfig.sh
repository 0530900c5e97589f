#!/usr/bin/env bash
# Proves that an installed libdduct is usable by another C program through pkg-config:
# `meson install` into a staging dir, then compile and run a program against dduct.pc alone.
# Args: BUILD_DIR SOURCE_DIR SANITIZE(none|address,undefined...)
set -euo pipefail
build=$1 src=$2 sanitize=$3
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

meson install -C "$build" --no-rebuild --destdir "$stage" --quiet >/dev/null
pcdir=$(dirname "$(find "$stage" -name dduct.pc | head -1)")
[ -n "$pcdir" ] || { echo "dduct.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$pcdir PKG_CONFIG_SYSROOT_DIR=$stage
echo "dduct.pc: version $(pkg-config --modversion dduct)"

flags=()
[ "$sanitize" != none ] && flags+=("-fsanitize=$sanitize")
# The public header must be clean C11 under -pedantic and valid C++.
# uv.h itself needs POSIX types (pthread_rwlock_t) that strict C11 hides.
cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wpedantic -Werror "${flags[@]}" -o "$stage/consumer" \
  "$src/tests/install/consumer.c" $(pkg-config --cflags --libs dduct)
if command -v c++ >/dev/null; then
  c++ -x c++ -std=c++11 -Wall -Wextra -Werror -fsyntax-only $(pkg-config --cflags dduct) \
    "$src/tests/install/consumer.c"
  echo "ok - dduct.h compiles as C++"
fi
libdir=$(dirname "$pcdir")
LD_LIBRARY_PATH="$libdir" "$stage/consumer" "$(pkg-config --modversion dduct)"
