#!/usr/bin/env bash
# Runs the C checks and every busted spec with the given build dir's moelua,
# then prints the single summary line "N passed, N failed".
set -uo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export MOELUA_BIN="$root/$build/moelua"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

crashed=0
# busted: the Debian one, or the bundled one of scripts/gpu_bundle.sh (MOE_BUSTED, set by its env.sh)
busted=${MOE_BUSTED:-/usr/bin/busted}
# a runner that dies, or prints fewer results than its plan, counts as one more failure
run() {
  local name=$1; shift
  local part
  part=$(mktemp)
  "$@" 2>&1 | tee "$part"
  local rc=${PIPESTATUS[0]}
  local plan n
  plan=$(grep -oE '^1\.\.[0-9]+' "$part" | tail -1 | cut -d. -f3)
  n=$(grep -cE '^(not )?ok [0-9]+' "$part")
  if [ -z "$plan" ] || [ "$plan" != "$n" ]; then
    echo "# $name: ran $n of ${plan:-?} planned tests (exit status $rc)"
    crashed=$((crashed + 1))
  elif [ "$rc" -ne 0 ] && ! grep -qE '^not ok' "$part"; then
    echo "# $name: exit status $rc without a failing test"
    crashed=$((crashed + 1))
  fi
  cat "$part" >> "$log"
  rm -f "$part"
}

# what git sees before the tests, to check afterwards that they wrote nothing
# into the checkout (a developer's own uncommitted edits are in both lists)
git_state() { git -C "$root" status --porcelain --untracked-files=all 2>/dev/null | LC_ALL=C sort; }
git_before=""
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git_before=$(mktemp)
  git_state > "$git_before"
fi

echo "== C checks ($build/test_engine)"
run "C checks" "$build/test_engine"

echo "== the public header alone ($build/public_api)"
run "public API" "$build/public_api"
if [ -z "${MOE_CUDA_EMU:-}" ] && [ -x "$root/build-emu/public_api" ]; then
  echo "== the public header alone, on the emulator's device (build-emu/public_api)"
  MOE_CUDA_EMU=1 run "public API on the emulator" "$root/build-emu/public_api"
fi

# the sources follow .clang-format (one TAP line; `make format` fixes the tree)
format_check() {
  local files
  files=$(cd "$root" && ls src/*.c src/*/*.c src/*/*.h src/cuda/*.cu src/cuda/*.cuh src/cuda/emu/*.cc src/cuda/emu/*.h \
    spec/c/*.c spec/fuzz/*.c bench/*.c 2>/dev/null)
  if ! command -v clang-format >/dev/null; then
    echo "not ok 1 - the C/CUDA sources follow .clang-format (clang-format is not installed: scripts/deps.sh clang-format)"
  elif out=$(cd "$root" && clang-format --dry-run --Werror $files 2>&1); then
    echo "ok 1 - the C/CUDA sources follow .clang-format ($(echo "$files" | wc -l) files)"
  else
    echo "not ok 1 - the C/CUDA sources follow .clang-format (make format fixes them)"
    echo "$out" | grep -E "error:" | head -5 | sed 's/^/# /'
  fi
  echo "1..1"
}
echo "== format ($root/.clang-format)"
run "format" format_check

echo "== busted specs (interpreter: $build/moelua)"
run "busted" "$build/moelua" "$busted" -o TAP spec

# the CUDA backend's kernels on the host emulator (src/cuda/emu; built by
# `make test` as build-emu): the device specs run here even without a GPU
# (distributed_cuda_spec: the error of a device collective without NCCL)
emu_root="$root/build-emu"
if [ -z "${MOE_CUDA_EMU:-}" ] && [ -x "$emu_root/moelua" ]; then
  echo "== CUDA specs on the host emulator (build-emu/moelua)"
  emu_part=$(mktemp)
  MOE_CUDA_EMU=1 MOELUA_BIN="$emu_root/moelua" run "CUDA emulator" "$emu_root/moelua" "$busted" -o TAP spec/cuda_spec.lua spec/emu_spec.lua spec/backend_spec.lua spec/device_train_spec.lua spec/distributed_cuda_spec.lua > "$emu_part"
  cat "$emu_part"
  emu_pass=$(grep -cE '^ok [0-9]+' "$emu_part")
  echo "CUDA specs on the emulator: $emu_pass passed"
  rm -f "$emu_part"
fi

# the libFuzzer harnesses, briefly: `make test` builds them and sets MOE_FUZZ_TIME
# where clang is installed (spec/fuzz/README.md)
if [ -n "${MOE_FUZZ_TIME:-}" ]; then
  echo "== libFuzzer: each harness for ${MOE_FUZZ_TIME} s (spec/fuzz/run.sh)"
  run "fuzz" spec/fuzz/run.sh --tap "$MOE_FUZZ_TIME"
fi

if [ -n "$git_before" ]; then
  echo "== the checkout after the tests (git status)"
  git_check() {
    local new
    new=$(git_state | LC_ALL=C comm -13 "$git_before" -)
    echo "1..1"
    if [ -z "$new" ]; then
      echo "ok 1 - the tests left no new or changed file in the checkout"
    else
      echo "not ok 1 - the tests wrote into the checkout (git status --porcelain):"
      printf '%s\n' "$new" | sed 's/^/#   /'
    fi
  }
  run "git status" git_check
  rm -f "$git_before"
fi

skipped=$(grep -cE '^ok [0-9]+ - # SKIP' "$log")
passed=$(( $(grep -cE '^ok [0-9]+' "$log") - skipped ))
failed=$(( $(grep -cE '^not ok [0-9]+' "$log") + crashed ))
if [ "$skipped" -gt 0 ]; then
  # (the GPU specs skip without a CUDA device; the distributed ones without mpirun or MPI)
  echo "$skipped skipped, by reason:"
  grep -E '^ok [0-9]+ - # SKIP' "$log" | sed -E 's/^ok [0-9]+ - # SKIP ([^ ]+:[0-9]+: )?//' | LC_ALL=C sort | uniq -c |
    sed -E 's/^ *([0-9]+) /  \1 x /' || true
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
