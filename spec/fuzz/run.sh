#!/usr/bin/env bash
# spec/fuzz/run.sh [--tap] [SECONDS [HARNESS...]]
#   Runs each libFuzzer harness (build-fuzz/<name>_fuzz; default: csv ckpt) for
#   SECONDS (default 30) on its committed seed corpus spec/fuzz/<name>/. New
#   inputs go to a scratch corpus ($FUZZ_CORPUS/<name>, default a temp dir that
#   is removed) and crash inputs to $FUZZ_ARTIFACTS (default a temp dir, kept
#   and printed when something crashed): nothing is written into the source tree.
#   --tap: one TAP line per harness (for scripts/test.sh), libFuzzer's output
#   summarised on "#" lines. FUZZ_ARGS adds libFuzzer flags (e.g. -seed=1);
#   FUZZ_LOGS=DIR keeps each full libFuzzer log there as <name>.log.
# spec/fuzz/run.sh --can-build: exit 0 if clang and its libFuzzer runtime are installed.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

if [ "${1:-}" = "--can-build" ]; then
  command -v clang >/dev/null 2>&1 || exit 1
  rt=$(clang --print-runtime-dir 2>/dev/null)
  [ -n "$rt" ] && ls "$rt"/libclang_rt.fuzzer*.a >/dev/null 2>&1 && exit 0
  # older layouts: ask for the file by name
  [ -f "$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ]
  exit
fi

tap=0
if [ "${1:-}" = "--tap" ]; then tap=1; shift; fi
secs=${1:-30}
shift || true
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(csv ckpt)

scratch=$(mktemp -d)
keep_scratch=0
trap '[ "$keep_scratch" = 1 ] || rm -rf "$scratch"' EXIT
corpus_root=${FUZZ_CORPUS:-$scratch/corpus}
artifacts=${FUZZ_ARTIFACTS:-$scratch/crashes}
mkdir -p "$artifacts"

[ "$tap" = 1 ] && echo "1..${#names[@]}"
failed=0
i=0
for name in "${names[@]}"; do
  i=$((i + 1))
  bin="$root/build-fuzz/${name}_fuzz"
  seeds="$root/spec/fuzz/$name"
  work="$corpus_root/$name"
  log="$scratch/$name.log"
  mkdir -p "$work"
  if [ ! -x "$bin" ]; then
    failed=$((failed + 1))
    if [ "$tap" = 1 ]; then echo "not ok $i - fuzz $name: $bin was not built (see the build output above)"
    else echo "run.sh: $bin is missing: run make fuzz-build" >&2; fi
    continue
  fi
  # the scratch corpus first: libFuzzer adds new inputs to the first directory only
  # shellcheck disable=SC2086
  (cd "$scratch" && "$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$name-" ${FUZZ_ARGS:-} "$work" "$seeds") > "$log" 2>&1
  rc=$?
  [ -n "${FUZZ_LOGS:-}" ] && mkdir -p "$FUZZ_LOGS" && cp "$log" "$FUZZ_LOGS/$name.log"
  # what the checkpoint driver lists instead of failing (FUZZ_LUA_ERRORS=log)
  if grep -q '^ckpt_driver: ' "$log"; then
    if [ "$tap" = 1 ]; then grep '^ckpt_driver: ' "$log" | sed 's/^/# /'; else grep '^ckpt_driver: ' "$log"; fi
  fi
  stats=$(grep -E '^#[0-9]+' "$log" | tail -1)
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  summary="${runs:-?} runs in ${secs} s; last: ${stats:-no stats}"
  if [ "$rc" -eq 0 ]; then
    if [ "$tap" = 1 ]; then echo "ok $i - fuzz $name: $summary"; else echo "fuzz $name: $summary"; fi
  else
    failed=$((failed + 1))
    keep_scratch=1
    if [ "$tap" = 1 ]; then
      echo "not ok $i - fuzz $name: libFuzzer exit status $rc; crash inputs in $artifacts"
      tail -n 60 "$log" | sed 's/^/# /'
    else
      tail -n 60 "$log"
      echo "fuzz $name: FAILED (exit status $rc); crash inputs in $artifacts, full log $log"
    fi
  fi
done
[ "$tap" = 1 ] || echo "fuzz: ${#names[@]} harnesses, $failed failed"
[ "$failed" -eq 0 ]
