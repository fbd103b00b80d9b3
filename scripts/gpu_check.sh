#!/usr/bin/env bash
# Issue 15's GPU check, ONE command, under 8 minutes on one H100/H200:
#   - the GPU (nvidia-smi), the bundle (build-gpu/, from build/gpu-bundle.tar.gz),
#     a build with this machine's nvcc when there is none (or GPU_CHECK_REBUILD=1)
#   - bench/peers/torch_gpu_*.py (PyTorch) and bench/gpu.lua (moelua) on the same
#     GPU, side by side (first: the figures are what a short loan is for)
#   - every models/ script with --device cuda --smoke
#   - moe.distributed's NCCL collectives on cuda tensors, one rank (spec/distributed_cuda_spec.lua;
#     NCCL puts one rank on each GPU, so there is no mpirun run on a one-GPU machine)
#   - side by side: the whole suite (scripts/test.sh build-gpu; the CUDA specs
#     run on the GPU), and compute-sanitizer memcheck, racecheck and synccheck
#     on the MoE and optimizer specs (spec/cuda_spec.lua, backend_spec.lua's CUDA
#     rows, device_train_spec.lua's fit tests)
# Each stage has a timeout and its time printed; the log and a markdown summary
# go to $OUT (the device tool's output folder) or build/gpu-check/.
#
# On the GPU machine (no package registry, another OS image), after
# `scripts/gpu_bundle.sh` on the Debian machine:
#   run  command="scripts/gpu_check.sh"  carry=["build/gpu-bundle.tar.gz"]  timeout_s=500
#
# GPU_CHECK_DRY=1: a dry run without a GPU: no nvidia-smi, no compute-sanitizer,
#   the emulator build (build-emu/, MOE_CUDA_EMU=1) and the benchmarks' --quick
#   sizes; it stops early, and says so, where a real GPU is needed.
# GPU_CHECK_REBUILD=1: rebuild build-gpu/ with this machine's nvcc (make -j16 CUDA=1).
# GPU_CHECK_STAGES="bench models nccl suite sanitize": the stages to run (default all; they run in
#   this order, the figures first); GPU_CHECK_BUDGET=470: seconds for the whole run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/build/gpu-check}
mkdir -p "$out"
log=$out/gpu_check.log
summary=$out/gpu_check.md
: > "$log"
exec > >(tee -a "$log") 2>&1
dry=${GPU_CHECK_DRY:-}
stages=${GPU_CHECK_STAGES:-bench models nccl suite sanitize}
budget=${GPU_CHECK_BUDGET:-470} # seconds for the whole run: each stage's limit is cut to what is left
build=build-gpu
t_start=$(date +%s)
declare -a rows=()

die() { echo "gpu_check: $*"; echo "| stop | $* |" >> "$summary"; exit 1; }
# stage NAME LIMIT_S CMD...: runs CMD under `timeout`, prints and records its time and status
stage() {
  local name=$1 limit=$2; shift 2
  local t0 rc left
  t0=$(date +%s)
  left=$(( budget - (t0 - t_start) ))
  if [ "$left" -lt 15 ]; then
    echo "=== $name: skipped, out of time (GPU_CHECK_BUDGET=${budget}s)"
    rows+=("| $name | skipped: out of time | |")
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "=== $name (limit ${limit}s): $*"
  set +e
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  set -e
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ "$rc" -eq 0 ] || status="FAILED (exit $rc)"
  [ "$rc" -eq 124 ] && status="TIMED OUT after ${limit}s"
  echo "=== $name: $status in ${dt}s (total $(( $(date +%s) - t_start ))s)"
  rows+=("| $name | $status | ${dt}s |")
  return 0
}
want() { [[ " $stages " == *" $1 "* ]]; }

{
  echo "# scripts/gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
} > "$summary"

# --- the machine, the bundle, the build
if [ -n "$dry" ]; then
  echo "gpu_check: DRY RUN (GPU_CHECK_DRY=1): emulator build, no nvidia-smi/compute-sanitizer, quick benchmarks"
  build=build-emu
  export MOE_CUDA_EMU=1
  [ -x build-emu/moelua ] || die "dry run: no build-emu/moelua (make BUILD=build-emu CUDA=emu OPT=\"-O1 -g\" build-emu/moelua build-emu/moe/core.so build-emu/test_engine build-emu/public_api)"
  gpu="none (dry run on the CUDA host emulator)"
else
  command -v nvidia-smi >/dev/null || die "no nvidia-smi: this is not a GPU machine (GPU_CHECK_DRY=1 for a dry run)"
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader | head -1)
  echo "GPU: $gpu"
  nvidia-smi -L || true
fi
echo "GPU: $gpu" >> "$summary"
if [ ! -x build-gpu/moelua ] && [ -f build/gpu-bundle.tar.gz ]; then
  echo "gpu_check: unpacking build/gpu-bundle.tar.gz into build-gpu/"
  mkdir -p build-gpu && tar -C build-gpu -xzf build/gpu-bundle.tar.gz
fi
# shellcheck disable=SC1091
[ -f build-gpu/deps/env.sh ] && . build-gpu/deps/env.sh
export MOE_BUSTED=${MOE_BUSTED:-/usr/bin/busted}
[ -f "$MOE_BUSTED" ] || die "no busted: neither build-gpu/deps (scripts/gpu_bundle.sh) nor /usr/bin/busted"
# cuBLAS is opened at run time (src/cuda/matmul.cu): the toolkit's, else PyTorch's wheel's
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
if [ -z "$dry" ] && [ -z "${MOE_CUBLAS:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23]' &&
   ! ls /usr/local/cuda/lib64/libcublas.so.1[23] >/dev/null 2>&1; then
  c=$(python3 -c 'import glob, os, site
hits = [g for p in site.getsitepackages() for g in glob.glob(os.path.join(p, "nvidia", "**", "libcublas.so.1[23]"), recursive=True)]
print(sorted(hits)[0] if hits else "")' 2>/dev/null || true)
  if [ -n "$c" ]; then
    export MOE_CUBLAS=$c LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$c")"
    echo "cuBLAS: $c (PyTorch's wheel)"
  fi
fi
# NCCL too (src/dist/nccl.c): the toolkit's, else PyTorch's wheel's
if [ -z "$dry" ] && [ -z "${MOE_NCCL:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2' &&
   ! ls /usr/local/cuda/lib64/libnccl.so.2 >/dev/null 2>&1; then
  c=$(python3 -c 'import glob, os, site
hits = [g for p in site.getsitepackages() for g in glob.glob(os.path.join(p, "nvidia", "**", "libnccl.so.2"), recursive=True)]
print(sorted(hits)[0] if hits else "")' 2>/dev/null || true)
  if [ -n "$c" ]; then export MOE_NCCL=$c; echo "NCCL: $c (PyTorch's wheel)"; fi
fi
# a build with this machine's nvcc, into build-gpu/ (make's `deps` prerequisite,
# which would run apt-get, is marked up to date with -o deps)
rebuilt=""
rebuild() {
  command -v nvcc >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"
  command -v nvcc >/dev/null || die "cannot build here: no nvcc"
  command -v make >/dev/null && command -v cc >/dev/null || die "cannot build here: no make or cc"
  nvcc --version | tail -1
  rebuilt=1
  rm -rf build-gpu/obj build-gpu/libmoe.a
  stage "build (make -j16 CUDA=1, this machine's nvcc)" 240 \
    make --no-print-directory -j16 -o deps BUILD=build-gpu CUDA=1 OPT="-O3" \
      build-gpu/moelua build-gpu/moe/core.so build-gpu/test_engine build-gpu/public_api
}
# "" when $build/moelua runs and sees a device, else why not
why_not() {
  [ -x "$build/moelua" ] || { echo "no $build/moelua (run scripts/gpu_bundle.sh first and carry build/gpu-bundle.tar.gz)"; return; }
  local missing
  if missing=$(ldd "$build/moelua" | grep "not found"); then
    echo "shared libraries missing on this machine: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"; return
  fi
  local info built ndev
  info=$("$build/moelua" -e 'local c = require("moe").cuda.info(); print(c.built, c.device_count, c.reason or "")' 2>&1) ||
    { echo "$build/moelua does not start: $info"; return; }
  read -r built ndev _ <<< "$info"
  [ "$built" = true ] || { echo "$build/moelua was built without the CUDA backend"; return; }
  [ "${ndev:-0}" -gt 0 ] || { echo "$build/moelua sees no CUDA device ($info)"; return; }
}
if [ -z "$dry" ] && { [ -n "${GPU_CHECK_REBUILD:-}" ] || [ ! -x build-gpu/moelua ]; }; then rebuild; fi
why=$(why_not)
if [ -n "$why" ] && [ -z "$dry" ] && [ -z "$rebuilt" ] && command -v make >/dev/null; then
  # the carried binaries (this machine's nvcc may be newer, the driver older ...): build here once
  echo "gpu_check: the carried build does not run here ($why): rebuilding"
  rebuild
  why=$(why_not)
fi
[ -z "$why" ] || die "$why"
info=$("$build/moelua" -e 'local c = require("moe").cuda.info(); print(c.built, c.device_count, c.reason or "")')
echo "moelua CUDA backend: built, devices, reason = $info"
echo "moelua CUDA: $info" >> "$summary"
export MOELUA_BIN="$root/$build/moelua"

# --- the benchmarks: PyTorch, then moelua, on the same GPU; bench/gpu.lua prints
# the side-by-side table (and writes it to $out/bench.md)
if want bench; then
  q=(); [ -n "$dry" ] && q=(--quick)
  dev=cuda; [ -n "$dry" ] && dev=cpu # the dry run's peers run on the CPU
  if python3 -c "import torch" 2>/dev/null; then
    stage "bench/peers/torch_gpu_moe.py (PyTorch)" 150 python3 bench/peers/torch_gpu_moe.py --device "$dev" "${q[@]}" --json "$out/torch_gpu_moe.json"
    stage "bench/peers/torch_gpu_census.py (PyTorch)" 90 python3 bench/peers/torch_gpu_census.py --device "$dev" "${q[@]}" --json "$out/torch_gpu_census.json"
  else
    rows+=("| PyTorch peers | skipped: python3 cannot import torch | |")
  fi
  stage "bench/gpu.lua (moelua)" 150 "$build/moelua" bench/gpu.lua "${q[@]}" --json "$out/moelua_gpu.json" \
    --peers "$out" --markdown "$out/bench.md"
  if [ -f "$out/bench.md" ]; then cat "$out/bench.md" >> "$summary"; else echo "(no benchmark table: see the log)" >> "$summary"; fi
fi

# --- every model script on the device
if want models; then
  for m in models/*.lua; do
    stage "$(basename "$m") --device cuda --smoke" 60 "$build/moelua" run "$m" --device cuda --smoke
  done
fi

# --- moe.distributed on cuda tensors through NCCL: one rank (one GPU; NCCL cannot put two ranks on it)
if want nccl; then
  echo "moelua NCCL: $("$build/moelua" -e 'print(require("moe").distributed.info())' 2>&1 | sed 's/.*device tensors: //')" |
    tee -a "$summary"
  stage "NCCL collectives, one rank (spec/distributed_cuda_spec.lua)" 90 \
    "$build/moelua" "$MOE_BUSTED" -o TAP spec/distributed_cuda_spec.lua
fi

# --- the correctness stages, side by side (the benchmarks are done: nothing is
# timed now, and the machine has 16 cores): the whole suite, and compute-sanitizer
# on the MoE and optimizer specs; each writes its own log, appended below when done
bg=() bg_pids=()
bg_stage() { # SLUG NAME LIMIT CMD...: stage NAME in the background, output in $out/SLUG.log
  local slug=$1; shift
  ( rows=(); stage "$@" > "$out/$slug.log" 2>&1; printf '%s\n' "${rows[@]}" > "$out/$slug.row" ) &
  bg+=("$slug") bg_pids+=($!)
}
if want suite; then bg_stage suite "suite (scripts/test.sh $build)" 300 scripts/test.sh "$build"; fi

# (busted's --filter: Lua patterns on the test's full name, any one matching;
# not "moe", which every "moe.cuda ..." test name has. The specs: the device
# specs, backend_spec's CUDA rows, and the device training specs, whose steps
# run the optimizers' kernels on the device)
filters=("--filter=MoE" "--filter=Moe" "--filter=[Gg]rouped" "--filter=[Rr]out" "--filter=gate"
  "--filter=[Ee]xpert" "--filter=[Mm]ixture" "--filter=[Ss]parse" "--filter=[Aa]dam" "--filter=SGD"
  "--filter=[Oo]ptim" "--filter=bincount" "--filter=trained a step" "--filter=fit, evaluate and predict"
  "--filter-out=on the CPU" "--filter-out=models/ script")
sanitize_specs=(spec/cuda_spec.lua spec/backend_spec.lua spec/device_train_spec.lua)
if want sanitize; then
  if [ -n "$dry" ]; then
    # no compute-sanitizer without a GPU: the same filtered specs, plainly, on the emulator
    bg_stage sanitize_dry "the sanitizers' specs, no compute-sanitizer (dry run)" 300 \
      "$build/moelua" "$MOE_BUSTED" -o TAP "${filters[@]}" "${sanitize_specs[@]}"
  else
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    [ -x "$cs" ] || die "no compute-sanitizer"
    for tool in memcheck racecheck synccheck; do
      bg_stage "sanitize_$tool" "compute-sanitizer $tool (MoE and optimizer specs)" 300 \
        "$cs" --tool "$tool" --error-exitcode 99 --print-limit 20 \
          "$build/moelua" "$MOE_BUSTED" -o TAP "${filters[@]}" "${sanitize_specs[@]}"
    done
  fi
fi
# (their pids: a bare `wait` would also wait for the log's tee, which never ends)
[ ${#bg_pids[@]} -eq 0 ] || wait "${bg_pids[@]}" || true
for slug in "${bg[@]}"; do
  echo "----- $slug ($out/$slug.log)"
  cat "$out/$slug.log"
  while IFS= read -r r; do rows+=("$r"); done < "$out/$slug.row"
  if [ "$slug" = suite ]; then
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/suite.log" | tail -1 || true)
    rows+=("| suite result | ${last:-no summary line} | |")
  fi
done

{
  echo
  echo "| stage | status | time |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "total: $(( $(date +%s) - t_start ))s"
} >> "$summary"
echo
cat "$summary"
! grep -qE '\| (FAILED|TIMED OUT)' "$summary"
