#!/usr/bin/env bash
# One prepared check of the CUDA kernels on a lent GPU machine, from the repo
# root, in under 5 minutes: versions, an in-place build with CUDA for the local
# arch only, the CUDA tests, the float32 per-layer benchmark with the
# ResNet-20 step, the float16 ResNet-50 table (float and packed-pair kernels),
# ResNet-50 training steps (float32, autocast bfloat16 and float16, the 16-bit
# ones also with the packed kernels), the speed targets checked against
# them (targets.txt), a sweep of the tile shapes (tiles.json); then, while
# time is left, a profile. Everything is teed into $OUT (gpu_check.log,
# tests.log, benchmark*.json, step_*.json, tiles.json, benchmarks.md with
# one section per table, build_warnings.txt, summary.txt, targets.txt).
# Needs python + torch with CUDA, nvcc and pytest; no torchvision,
# OpenMMLab, pip or network.
#
#   OUT=/some/dir bash tools/gpu_check.sh     # $OUT defaults to work_dirs/gpu_check
#
# Each step's status goes to summary.txt; a failed test step does not stop the
# benchmark. Exit status: 0 when every step passed.
set -u
case "${1:-}" in
  -h | --help)
    # The comment block above, without its '#'.
    sed -n '2,/^set -u/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  "") ;;
  *)
    echo "gpu_check.sh: no arguments (set OUT=DIR); see --help" >&2
    exit 2
    ;;
esac

OUT=${OUT:-$PWD/work_dirs/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
: >"$LOG"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
# The tools import adder_mm from this checkout (built in place below).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
START=$(date +%s)
FAILED=0

# step NAME LIMIT_S CMD...: run with a time cap, record status and duration.
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo
  echo "===== $name (cap ${limit}s): $*"
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  rc=$?
  local dt=$(($(date +%s) - t0))
  if [ $rc -eq 0 ]; then
    echo "PASS  $name (${dt}s)" | tee -a "$SUMMARY"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "TIMEOUT $name after ${dt}s (cap ${limit}s)" | tee -a "$SUMMARY"
    FAILED=1
  else
    echo "FAIL  $name rc=$rc (${dt}s)" | tee -a "$SUMMARY"
    FAILED=1
  fi
  return $rc
}

# Seconds left of the script's 290-second budget (the profile runs only
# with time to spare).
seconds_left() { echo $((290 - ($(date +%s) - START))); }

echo "gpu_check: $(date -u) in $PWD, results in $OUT"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --short 2>/dev/null | wc -l) changed file(s)"

# ---- versions ----------------------------------------------------------------
echo
echo "===== versions"
timeout 30 nvidia-smi || echo "nvidia-smi failed"
timeout 60 "$PY" -c '
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(),
          "cc %d.%d" % torch.cuda.get_device_capability())
' || echo "torch import failed"
command -v nvcc && nvcc --version | tail -2
command -v "${CXX:-g++}" || echo "no ${CXX:-g++} (the host-emulation test skips)"

# ---- build in place for the local arch ---------------------------------------
ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)
NVCC=$(command -v nvcc || true)
# The real toolkit (bin/nvcc next to a libcudart): nvcc on PATH may be a
# wrapper script. Left unset when none is found: setup.py then resolves it.
TOOLKIT=
for c in ${CUDA_HOME:-} "$(dirname "$(dirname "$(readlink -f "${NVCC:-/none}")")")" \
  /usr/local/cuda /usr/local/cuda-*; do
  if [ -x "$c/bin/nvcc" ] && ls "$c"/lib64/libcudart* "$c"/lib/libcudart* \
    "$c"/targets/*/lib/libcudart* >/dev/null 2>&1; then
    TOOLKIT=$(readlink -f "$c")
    break
  fi
done
if [ -n "$TOOLKIT" ]; then export CUDA_HOME=$TOOLKIT; fi
echo "arch ${ARCH:-?}, CUDA_HOME=${CUDA_HOME:-unset}, nvcc ${NVCC:-missing}"
if [ -z "$ARCH" ]; then
  echo "FAIL  no CUDA device visible to torch; stopping" | tee -a "$SUMMARY"
  exit 1
fi
step build 200 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
  MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
grep -E "warning|spill" "$LOG" | grep -v "^=====" | sort | uniq -c | sort -rn |
  head -20 >"$OUT/build_warnings.txt" || true

step ext_info 60 "$PY" -c "
from adder_mm.ops import ext_info
info = ext_info()
print(info)
assert info['cuda'], 'adder_mm._ext has no CUDA kernels'
"

# ---- CUDA tests ---------------------------------------------------------------
# --noconftest: this file needs no shared fixture; torch and pytest suffice.
# -m cuda: the tests that need a GPU; the rest (host emulation, checks of the
# error bounds) runs in CI and would spend the device's minutes on the CPU.
step tests 150 bash -c "set -o pipefail; $PY -m pytest -q -ra -m cuda \
  -p no:cacheprovider --noconftest tests/test_ops_cuda.py 2>&1 |
  tee '$OUT/tests.log'"

# ---- benchmarks (run even when a test failed) --------------------------------
BENCH=tools/analysis_tools/benchmark_adder.py
MD=$OUT/benchmarks.md
# The paper's unfold form only where one [Cout, K, N*L] temporary is at most
# 1 GiB (the default): the ResNet-20 layers; ResNet-50's take 1.5 to 13.8
# GiB and would fill much of this step's time with numbers no target needs.
# The JSON is rewritten after every layer, so a step cut by its cap keeps
# what it measured.
step benchmark 120 "$PY" $BENCH --device cuda --suite all \
  --model-step resnet20 --out "$OUT/benchmark.json" --markdown "$MD"
step benchmark_fp16 60 "$PY" $BENCH --device cuda --dtype float16 \
  --suite resnet50 --no-unfold --out "$OUT/benchmark_fp16.json" \
  --markdown "$MD"
# The packed float16/bfloat16 kernels (ADDER_MM_CUDA_HALF2=1, opt-in until
# these numbers say they are faster), beside the float-arithmetic ones above.
step benchmark_fp16_packed 60 env ADDER_MM_CUDA_HALF2=1 "$PY" $BENCH \
  --device cuda --dtype float16 --suite resnet50 --no-unfold \
  --out "$OUT/benchmark_fp16_packed.json" --markdown "$MD" \
  --section cuda-float16-packed
for DT in float32 bfloat16 float16; do
  step "step_resnet50_$DT" 40 "$PY" $BENCH --device cuda --dtype $DT \
    --skip-layers --model-step resnet50 --step-batch 64 --repeat 5 \
    --out "$OUT/step_resnet50_$DT.json" --markdown "$MD" \
    --section "cuda-resnet50-step-$DT"
done
for DT in bfloat16 float16; do
  step "step_resnet50_${DT}_packed" 40 env ADDER_MM_CUDA_HALF2=1 "$PY" \
    $BENCH --device cuda --dtype $DT --skip-layers --model-step resnet50 \
    --step-batch 64 --repeat 5 --out "$OUT/step_resnet50_${DT}_packed.json" \
    --markdown "$MD" --section "cuda-resnet50-step-$DT-packed"
done

# ---- speed targets (adder vs cuDNN, steps vs CNN), from the JSON files above
"$PY" tools/analysis_tools/speed_targets.py "$OUT" | tee "$OUT/targets.txt"

# ---- tile shapes: every layer with the automatic choice and each forced
# shape, alternating call by call in one process; per layer the fastest
# shape for the forward and for the backward, and what the automatic choice
# (csrc/pytorch/cuda/adder2d_cuda_launch.cuh) costs against them.
step tile_sweep 90 "$PY" $BENCH --device cuda --suite all --tile-sweep \
  2,1,3,0 --repeat 3 --out "$OUT/tiles.json" --markdown "$MD" \
  --section cuda-float32-tiles

# ---- where a layer's time goes: GPU kernels vs host (torch.profiler) ---------
if [ "$(seconds_left)" -lt 30 ]; then
  echo "SKIP  profile ($(seconds_left)s left)" | tee -a "$SUMMARY"
else
step profile 60 "$PY" - <<'PYEOF'
import torch
from torch.profiler import ProfilerActivity, profile
from adder_mm.ops import adder2d
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True  # as the benchmark: cuDNN at its best
for n, c, hw, o, k, s in ((64, 16, 32, 16, 3, 1), (32, 256, 14, 256, 3, 1)):
    x = torch.randn(n, c, hw, hw, device='cuda', requires_grad=True)
    w = torch.randn(o, c, k, k, device='cuda', requires_grad=True)
    g = torch.randn(n, o, hw // s, hw // s, device='cuda')
    for _ in range(3):
        adder2d(x, w, None, s, k // 2).backward(g)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(10):
            adder2d(x, w, None, s, k // 2).backward(g)
        torch.cuda.synchronize()
    print(f'== adder2d f+b x10: N{n} C{c} {hw}x{hw} O{o} k{k} s{s}')
    print(p.key_averages().table(sort_by='self_device_time_total',
                                 row_limit=12, max_name_column_width=60))
PYEOF
fi

echo
echo "===== summary ($(($(date +%s) - START))s)"
cat "$SUMMARY"
[ -f "$OUT/targets.txt" ] && cat "$OUT/targets.txt"
[ -f "$MD" ] && cat "$MD"
exit $FAILED
