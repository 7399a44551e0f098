# Sourced by scripts/llama-wheel.sh and scripts/llama-server.sh: llama.cpp's CMake flags for
# this CPU, in $base. AMX is off on purpose: llama.cpp's AMX path segfaults in
# ggml_backend_amx_mul_mat on Xeons that advertise AMX (ggml-org/llama.cpp#20824). AVX512 only
# where this CPU has it: a build with it dies with "Illegal instruction" on CPUs without (an
# AMD EPYC with AVX2 only, seen here). The flags are part of both caches' keys.
base="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  base="$base -DGGML_AVX512=ON"
  grep -qw avx512_vnni /proc/cpuinfo && base="$base -DGGML_AVX512_VNNI=ON"
else
  base="$base -DGGML_AVX512=OFF"
fi
