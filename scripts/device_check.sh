#!/usr/bin/env bash
# One call on the GPU machine: build, GPU tests, verify in every mode, bench; short table last.
# Usage (device tool): bash scripts/device_check.sh [build] [selftest] [profile] [overhead] [tests] [routes] [candidate] [verify] [bench] [small] [full]
# Env: TEST_K (a pytest -k expression), VERIFY_MODES / BENCH_MODES (e.g. "--precision_3xtf32 --dtype_bf16": '_' stands for a space),
#      TEST_FILES, TESTS_TIMEOUT, TEST_WORKERS (pytest-xdist processes; timing-sensitive files are best run
#      with none), CACHE_BACK=1 (the extension cache comes back as $OUT/cache.tgz, to carry into the next call:
#      unpack it into an ignored folder and set MISHBENCH_CACHE there), MISHBENCH_GIT_SHA (the commit, for the CSVs). Write the sha literally in the
#      device command: a `$(git rev-parse …)` there answered with a stale commit (the copy's .git is not this tree's).
# The device tool brings back at most 8 files from $OUT: logs go to $LOGS and come back as one
# $OUT/logs.tgz; $OUT also gets summary.txt, report.md and the results CSVs.
set -uo pipefail
FINAL_OUT=${OUT:-/tmp/mishbench-out}
OUT=/tmp/mishbench-logs
mkdir -p "$OUT" "$FINAL_OUT"
stages=${*:-build tests verify bench}
export PYTHONUNBUFFERED=1 MISHBENCH_CACHE=${MISHBENCH_CACHE:-/tmp/mishbench-cache}
# NVLink multicast stays off wherever NCCL runs (device README); the product itself sets nothing.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
py=python3
summary="$OUT/summary.txt"; : > "$summary"
note() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader | tee "$OUT/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for pkg in typer rich pandas; do $py -c "import $pkg" 2>/dev/null || note "missing python package: $pkg"; done

has() { [[ " $stages " == *" $1 "* ]]; }

if has build; then
  t0=$(date +%s)
  $py -m mishbench build --verbose > "$OUT/build.log" 2>&1; rc=$?
  note "build rc=$rc in $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || tail -30 "$OUT/build.log"
  # Resource usage of every kernel (registers, spills, smem): docs/perf-notes.md quotes it.
  so=$(find "$MISHBENCH_CACHE" -name '*.so' | head -1)
  [ -n "$so" ] && cuobjdump --dump-resource-usage "$so" > "$OUT/resource-usage.txt" 2>&1
fi

if has selftest; then
  # Tensor-core kernels: accuracy of every mode at odd and KernelBench shapes, then forward timings beside
  # eager -- the wgmma family (sm_90a default) and the mma.sync family (MISHBENCH_NO_WGMMA=1) in one run.
  timeout 240 $py scripts/tc_selftest.py > "$OUT/selftest-wgmma.log" 2>&1; note "selftest wgmma rc=$?"
  tail -12 "$OUT/selftest-wgmma.log"
  MISHBENCH_NO_WGMMA=1 timeout 240 $py scripts/tc_selftest.py > "$OUT/selftest-mma.log" 2>&1
  note "selftest mma.sync rc=$?"; tail -12 "$OUT/selftest-mma.log"
fi

if has profile; then
  # Nsight Compute on the GEMM kernels at the KernelBench shape (clocks left as found: --clock-control none).
  for m in ${PROFILE_MODES:-3xtf32}; do
    timeout 240 ncu --clock-control none --kernel-name regex:gemm_wgmma --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section SchedulerStats --section Occupancy \
      $py scripts/profile_gemm.py "$m" > "$OUT/ncu-$m.log" 2>&1
    note "ncu $m rc=$?"
    grep -E "Duration|Throughput|Pipe|Stall|Bank|Issue Slots|Eligible|Active Warps|Registers|Shared Memory" "$OUT/ncu-$m.log" | head -40
  done
fi

if has overhead; then
  timeout 120 $py scripts/host_overhead.py > "$OUT/host-overhead.log" 2>&1; note "host overhead rc=$?"
  cat "$OUT/host-overhead.log"
fi

if has candidate; then
  # Candidates on the GPU: a correct CUDA candidate's rows beside eager and mishbench in one table.
  timeout ${BENCH_CAND_TIMEOUT:-300} $py -m mishbench bench --candidate tests/candidates/cuda_fused_ok.py --preset small --mode all \
    --precision 3xtf32 --out "$OUT/results-candidate.csv" > "$OUT/bench-candidate.log" 2>&1
  note "bench --candidate cuda_fused_ok.py rc=$?"; tail -8 "$OUT/bench-candidate.log"
fi

if has candidates; then
  # Every candidate file's GPU verdict (tests/test_candidates.py::test_candidate_on_gpu), CAND_JOBS files at a
  # time, each with its own log and report JSON (per-check seconds) so a run cut short keeps what finished.
  # CAND_K: a grep -E filter on the file names; CAND_LIST: the names themselves, in the order to run. Timing-based checks (anti_cheat_*) share the GPU when
  # CAND_JOBS > 1: re-run a file that fails only those with CAND_JOBS=1.
  mkdir -p "$OUT/reports"
  export MISHBENCH_REPORT_DIR="$OUT/reports"
  if [ -n "${CAND_LIST:-}" ]; then tr ' ' '\n' <<< "$CAND_LIST" | grep . > "$OUT/cand-list.txt"
  else ls tests/candidates | grep -E "${CAND_K:-.}" | grep -v '^__' > "$OUT/cand-list.txt"; fi
  t0=$(date +%s)
  timeout ${CAND_TIMEOUT:-480} xargs -P ${CAND_JOBS:-3} -I{} sh -c 's=$(date +%s); timeout 300 '"$py"' -m pytest -q -rfE --tb=short -m cuda \
      "tests/test_candidates.py::test_candidate_on_gpu[{}]" > "'"$OUT"'/reports/{}.log" 2>&1; \
      echo "{} rc=$? $(( $(date +%s) - s )) s $(tail -1 "'"$OUT"'/reports/{}.log")"' < "$OUT/cand-list.txt" | tee -a "$summary"
  note "candidates in $(( $(date +%s) - t0 )) s"
fi

if has gdb; then
  # Native backtrace of the crash scripts/segv_probe.py found (wrong in_features through torch.ops).
  timeout 120 cuda-gdb -batch -ex run -ex bt --args $py -c "import torch, mishbench.op.ops as o; o.implementation('cuda'); torch.ops.mishbench.linear_mish_mish(torch.randn(4, 7, device='cuda'), torch.randn(3, 6, device='cuda'), torch.randn(3, device='cuda'), 'ieee')" > "$OUT/gdb.log" 2>&1
  note "gdb rc=$?"; grep -E "^#|SIG" "$OUT/gdb.log" | head -25
fi

if has probe; then
  timeout 120 $py scripts/segv_probe.py > "$OUT/segv-probe.log" 2>&1; note "segv probe rc=$?"; cat "$OUT/segv-probe.log"
fi

if has tests; then
  timeout ${TESTS_TIMEOUT:-300} $py -m pytest -q -rfE --tb=short -m "cuda" ${TEST_WORKERS:+-n $TEST_WORKERS} ${TEST_FILES:-tests} ${TEST_K:+-k "$TEST_K"} \
    > "$OUT/pytest-cuda.log" 2>&1; rc=$?
  note "pytest -m cuda rc=$rc: $(tail -1 "$OUT/pytest-cuda.log")"
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest-cuda.log" | cut -c1-400 | head -40
fi

if has routes; then
  # The skinny-shape routes (gemv, splitk, gemv+dz), which run only under MISHBENCH_ROUTES=next: their tests
  # at odd shapes in every mode (tests/test_cuda_routes.py, the full grid), then forward and forward+backward
  # timings beside eager at B in {1, 8, 32, 128} x K = N in {1024, 4096, 8192}.
  MISHBENCH_ROUTES=next timeout ${ROUTES_TIMEOUT:-400} $py -m pytest -q -rfE --tb=short -m cuda tests/test_cuda_routes.py \
    > "$OUT/pytest-routes.log" 2>&1; rc=$?
  note "pytest routes (MISHBENCH_ROUTES=next) rc=$rc: $(tail -1 "$OUT/pytest-routes.log")"
  [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest-routes.log" | cut -c1-400 | head -40
  MISHBENCH_ROUTES=next timeout 300 $py scripts/route_probe.py > "$OUT/route-probe.log" 2>&1
  note "route probe fwd rc=$?"; cat "$OUT/route-probe.log"
  MISHBENCH_ROUTES=next timeout 300 $py scripts/route_probe.py --bwd --modes 3xtf32,bf16 > "$OUT/route-probe-bwd.log" 2>&1
  note "route probe fwd+bwd rc=$?"; cat "$OUT/route-probe-bwd.log"
fi

if has verify; then
  for args in ${VERIFY_MODES:---precision_3xtf32 --precision_ieee --precision_tf32 --dtype_bf16 --dtype_fp16}; do
    args=${args//_/ }
    tag=$(echo "$args" | tr -d ' -')
    timeout ${VERIFY_TIMEOUT:-300} $py -X faulthandler -m mishbench verify --device cuda $args --seed 1234 --json "$OUT/verify-$tag.json" \
      > "$OUT/verify-$tag.log" 2>&1; rc=$?
    note "verify $args rc=$rc: $(grep -E 'PASSED|FAILED|INCOMPLETE' "$OUT/verify-$tag.log" | tail -1)"
    [ $rc -eq 0 ] || grep -E "fail|error" "$OUT/verify-$tag.log" | head -8
  done
fi

if has bench; then
  csv="$OUT/results-kernelbench.csv"
  for args in ${BENCH_MODES:---precision_3xtf32 --precision_ieee --precision_tf32 --dtype_bf16 --dtype_fp16}; do
    args=${args//_/ }
    timeout 400 $py -m mishbench bench --preset kernelbench --mode all $args --out "$csv" \
      > "$OUT/bench-$(echo "$args" | tr -d ' -').log" 2>&1
    note "bench kernelbench $args rc=$?"
  done
  if has small; then
    for args in ${BENCH_MODES:---precision_3xtf32 --precision_ieee --precision_tf32 --dtype_bf16 --dtype_fp16}; do
      args=${args//_/ }
      timeout 200 $py -m mishbench bench --preset small --mode all $args --out "$OUT/results-small.csv" \
        > "$OUT/bench-small-$(echo "$args" | tr -d ' -').log" 2>&1; note "bench small $args rc=$?"
    done
  fi
fi

if has full; then
  for args in "--dtype fp32 --precision 3xtf32" "--dtype bf16"; do
    timeout ${SWEEP_TIMEOUT:-500} $py -m mishbench bench --preset sweep --mode fwd $args --out "$OUT/results-sweep.csv" \
      > "$OUT/bench-sweep-$(echo "$args" | tr -d ' -').log" 2>&1; note "bench sweep $args rc=$?"
  done
fi

if ls "$OUT"/results-*.csv >/dev/null 2>&1; then
  $py -m mishbench report "$OUT"/results-*.csv --markdown > "$OUT/report.md" 2>&1
  cat "$OUT/report.md"
fi
cp "$summary" "$OUT"/results-*.csv "$OUT/report.md" "$FINAL_OUT/" 2>/dev/null
tar czf "$FINAL_OUT/logs.tgz" -C "$OUT" .
[ -n "${CACHE_BACK:-}" ] && tar czf "$FINAL_OUT/cache.tgz" -C "$(dirname "$MISHBENCH_CACHE")" "$(basename "$MISHBENCH_CACHE")"
echo "==== summary ===="; cat "$summary"
