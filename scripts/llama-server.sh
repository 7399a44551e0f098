#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` from the llama.cpp that llama-cpp-python vendors (same
# version, same AMX-off flags as scripts/llama-wheel.sh) and caches the binary, for the serving
# benchmark's side-by-side figures (bench/serving.py) and the openai: backend's contract tests
# (tests/backends/test_llama_server.py). townsquare itself does not need it.
#
# Usage: scripts/llama-server.sh PYTHON [--cached-only]  -> prints the path of the cached
# llama-server (--cached-only: exit 3 instead of building; tests/llama_server.py)
set -euo pipefail
python=${1:-python3}
only_cached=${2:-}
version=${TOWNSQUARE_LLAMA_VERSION:-0.3.36}
# the CPU's flags in $base (AMX off; AVX512 only where the CPU has it)
# shellcheck source=scripts/llama-cpu-flags.sh
. "$(dirname "$0")/llama-cpu-flags.sh"
flags=${TOWNSQUARE_LLAMA_CMAKE_ARGS:-"$base"}
key=$(printf 'server %s %s' "$version" "$flags" | sha256sum | cut -c1-16)
cache=${TOWNSQUARE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/townsquare/wheels}/llama-server-$version-$key
if [ ! -x "$cache/llama-server" ] && [ "$only_cached" = "--cached-only" ]; then
  exit 3
fi
if [ ! -x "$cache/llama-server" ]; then
  echo "Building llama-server $version from source (several minutes on 2 cores, once)..." >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" \
    -d "$work" >&2
  tar xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
  src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  # shellcheck disable=SC2086  # the flags are a list
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF $flags >&2
  cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$cache.tmp"
  cp "$work/build/bin/llama-server" "$cache.tmp/"
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
echo "$cache/llama-server"
