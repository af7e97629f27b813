#!/usr/bin/env bash
# Run the tests that compare numbers across process, thread or instruction-set layouts (pytest marker `layouts`)
# once under each layout this project's machines have, on this one machine:
#
#   OMP_NUM_THREADS=1           one thread per process (what torchrun gives each worker)
#   (nothing set)               the default thread count (2 on the project's machines)
#   ONEDNN_MAX_CPU_ISA=AVX2     oneDNN (convolutions, some matmuls) limited to AVX2, as on the AVX2-only EPYCs
#   ATEN_CPU_CAPABILITY=avx2    PyTorch's own vectorised kernels limited to AVX2, likewise
#
# A test that passes here does not depend on the last bits of float32 arithmetic that one layout gives and
# another does not. `make test` (what CI runs) is one of these layouts; this is for the day a test changes.
#
#   bash scripts/test-layouts.sh              the marked tests under each layout (about 2 minutes each on 2 cores)
#   bash scripts/test-layouts.sh tests        the whole suite under each layout (about 5 minutes each)
#   bash scripts/test-layouts.sh -k sigkill   any pytest arguments
#   REPEAT=20 bash scripts/test-layouts.sh tests/test_distributed.py
#                                             each layout 20 times back to back (a hunt for a flake); the whole
#                                             output of every run that does not pass is kept in LOGS (default
#                                             /tmp/convae-layouts), one file per run; LAYOUTS (comma-separated,
#                                             each one or more VAR=value words) replaces the four layouts
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-m layouts)
layouts=("OMP_NUM_THREADS=1" "" "ONEDNN_MAX_CPU_ISA=AVX2" "ATEN_CPU_CAPABILITY=avx2")
if [ -n "${LAYOUTS:-}" ]; then  # LAYOUTS="OMP_NUM_THREADS=1,OMP_NUM_THREADS=2,ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
  IFS=, read -r -a layouts <<<"$LAYOUTS"
fi

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p')"
echo "flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
REPEAT=${REPEAT:-1} LOGS=${LOGS:-/tmp/convae-layouts}
mkdir -p "$LOGS"
summary=() failed=0
for layout in "${layouts[@]}"; do
  for ((run = 1; run <= REPEAT; run++)); do
    echo "== ${layout:-default thread count}: pytest ${args[*]}  (run $run of $REPEAT)"
    started=$SECONDS log=$(mktemp)
    # shellcheck disable=SC2086  # the layout is one VAR=value word, or none
    env $layout "$PYTHON" -m pytest -q -p no:cacheprovider --tb=short "${args[@]}" >"$log" 2>&1
    code=$?
    grep -v -e "^  " -e "^$" "$log" | tail -n 25
    if [ "$code" -ne 0 ]; then
      kept="$LOGS/$(echo "${layout:-default}" | tr '= ' '-_')-run$run.log"
      mv "$log" "$kept" && echo "   (whole output kept in $kept)"
      failed=1
    else
      rm -f "$log"
    fi
    summary+=("$(printf '%-26s run %2d: exit %s, %4d s' "${layout:-default thread count}" "$run" "$code" $((SECONDS - started)))")
  done
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
