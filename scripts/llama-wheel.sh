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
# AVX512 only where this CPU has it: a wheel built with it dies with "Illegal instruction" on
# CPUs without (an AMD EPYC with AVX2 only, seen here). The flags are part of the cache key.
base="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  base="$base -DGGML_AVX512=ON"
  grep -qw avx512_vnni /proc/cpuinfo && base="$base -DGGML_AVX512_VNNI=ON"
else
  base="$base -DGGML_AVX512=OFF"
fi
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
