#!/usr/bin/env bash
# Builds llama-cpp-python once per (version, flags) and caches the wheel, so repeat installs
# take seconds instead of the ~12 minutes a source build takes on 2 cores.
#
# Usage: scripts/llama-wheel.sh PYTHON   -> prints the path of the cached wheel
#
# AMX is switched off on purpose: llama.cpp's AMX path segfaults in ggml_backend_amx_mul_mat on
# Xeons that advertise AMX (ggml-org/llama.cpp#20824). AVX512 is used only when the building
# CPU has it. Set TOWNSQUARE_LLAMA_CMAKE_ARGS to override the flags (for a wheel built here to
# run on other machines, leave AVX512 out).
set -euo pipefail
python=${1:-python3}
version=${TOWNSQUARE_LLAMA_VERSION:-0.3.36}
# the CPU's flags in $base (AMX off; AVX512 only where the CPU has it)
# shellcheck source=scripts/llama-cpu-flags.sh
. "$(dirname "$0")/llama-cpu-flags.sh"
flags=${TOWNSQUARE_LLAMA_CMAKE_ARGS:-"$base"}
key=$(printf '%s %s %s' "$version" "$flags" "$("$python" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
cache=${TOWNSQUARE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/townsquare/wheels}/llama-cpp-python-$version-$key
wheel=$(ls "$cache"/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "Building llama-cpp-python $version from source (about 12 minutes on 2 cores, once)..." >&2
  mkdir -p "$cache.tmp"
  CMAKE_ARGS="$flags" "$python" -m pip wheel --no-deps --no-cache-dir --quiet \
    "llama-cpp-python==$version" -w "$cache.tmp" >&2
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
  wheel=$(ls "$cache"/llama_cpp_python-*.whl | head -n 1)
fi
echo "$wheel"
