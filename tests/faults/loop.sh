#!/usr/bin/env bash
# Runs the fault scenarios N times in a row and stops at the first failure; prints each run's result and time, then
# "N passed, M failed". Not part of `make test`: the 10-run loops of the fault suite are run and reported by hand.
#
#   tests/faults/loop.sh N [EXPR | -k EXPR] [more pytest args]
#   tests/faults/loop.sh 10 sigkilled          # the SIGKILL scenario, 10 times
#   tests/faults/loop.sh 10 -k "broker or postgres"
#   tests/faults/loop.sh 3                     # the whole fault suite (every scenario, then the replay), 3 times
#
# Every run is a fresh pytest process: its own local broker, PostgreSQL cluster and mail sink (unless
# KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / SMTP_HOST point at external ones), its own workers. A run counts as
# passed only when pytest exits 0 and at least one test passed (a run whose scenarios were all skipped or
# deselected is a failure: it proved nothing). Logs: .run/fault-loop/<start time>/run-<i>.log.
# LOOP_TESTS overrides what is collected (default tests/faults; e.g. LOOP_TESTS=tests/integration/test_runtime_faults.py).
set -uo pipefail

usage() { echo "usage: $0 N [EXPR | -k EXPR] [pytest args...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
runs=$1; shift
[[ $runs =~ ^[1-9][0-9]*$ ]] || usage
expr=""
if [ $# -ge 1 ]; then
  if [ "$1" = "-k" ]; then
    [ $# -ge 2 ] || usage
    expr=$2; shift 2
  elif [[ $1 != -* ]]; then
    expr=$1; shift
  fi
fi

cd "$(dirname "$0")/../.." || exit 2
pytest=.venv/bin/pytest
[ -x "$pytest" ] || { echo "$pytest not found: run 'make setup' first" >&2; exit 2; }
logs=.run/fault-loop/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$logs"
args=(-q -s -p no:cacheprovider --timeout=1200 "${LOOP_TESTS:-tests/faults}")
[ -n "$expr" ] && args+=(-k "$expr")
args+=("$@")

echo "fault loop: $runs run(s) of: pytest ${args[*]}  (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), logs $logs)"
passed=0
failed=0
began=$(date +%s)
for ((i = 1; i <= runs; i++)); do
  start=$(date +%s)
  # its own --basetemp: pytest prunes all but the newest three basetemps of the user, other people's runs included
  "$pytest" "${args[@]}" --basetemp="$logs/tmp-$i" >"$logs/run-$i.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  summary=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)|(passed|failed|skipped|deselected|error)[^ ]* in [0-9.]+s' \
            "$logs/run-$i.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
  if [ "$rc" -eq 0 ] && [[ $summary =~ [0-9]+\ passed ]]; then
    passed=$((passed + 1))
    printf 'run %d/%d: pass  %4ds  %s\n' "$i" "$runs" "$took" "$summary"
    find "$logs/tmp-$i" -maxdepth 1 -name 'kafka*' -type d -exec rm -rf {} +  # keep the workers' logs, not the log segments
  else
    failed=$((failed + 1))
    printf 'run %d/%d: FAIL  %4ds  %s (exit %d)\n' "$i" "$runs" "$took" "${summary:-no summary}" "$rc"
    grep -E '^(FAILED|ERROR) tests/|^E   ' "$logs/run-$i.log" | head -n 40 | sed 's/^/    /'
    echo "    full log: $logs/run-$i.log; workers' logs: $logs/tmp-$i/"
    break
  fi
done
echo "$passed passed, $failed failed  ($(( $(date +%s) - began ))s in all)"
[ "$failed" -eq 0 ]
