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

echo "== C checks ($build/test_engine)"
"$build/test_engine" 2>&1 | tee -a "$log"

echo "== busted specs (interpreter: $build/moelua)"
"$build/moelua" /usr/bin/busted -o TAP spec 2>&1 | tee -a "$log"

passed=$(grep -cE '^ok [0-9]+' "$log")
failed=$(grep -cE '^not ok [0-9]+' "$log")
if [ "$passed" -eq 0 ]; then failed=$((failed + 1)); fi   # nothing ran: that is a failure
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
