#!/usr/bin/env bash
# Memory soak (issue 15, finding 2): 10^6 requests against a release `prerank serve` with a publish/swap
# every 30 s, RSS sampled from /proc, reported as bytes per request and per swap (least-squares fit with
# Newey-West standard errors); run twice: without a /metrics scraper, then with one every 15 s.
#
# Usage: loadtest/soak.sh [--requests N] [--swap-seconds S] [--workers N] [--rate R] [--only no-scraper|scraper]
#                         [--max-bytes-per-request B] [--max-bytes-per-swap B] [any other scripts/hostile/soak.py flag]
# Env: PRERANK_BIN=/path/to/prerank to skip the release build.
# Writes loadtest/results/soak-{no-scraper,scraper}.json (every sample, the fits). Exit 1 if a bound given
# with --max-bytes-per-* is exceeded or the server died. Needs python3 (standard library only).
# Takes (requests / rate) per run: ~5-10 minutes each at 2,000-3,000 requests/s on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ -z "${PRERANK_BIN:-}" ]]; then
  echo "== building the release binary"
  cargo build --release --bin prerank
  PRERANK_BIN="${CARGO_TARGET_DIR:-target}/release/prerank"
fi
mkdir -p loadtest/results
rc=0
for mode in no-scraper scraper; do
  [[ -n "$ONLY" && "$ONLY" != "$mode" ]] && continue
  scrape=0
  [[ "$mode" == scraper ]] && scrape=15
  echo "== soak, $mode"
  python3 scripts/hostile/soak.py --bin "$PRERANK_BIN" --scrape-seconds "$scrape" \
    --json "loadtest/results/soak-$mode.json" "${ARGS[@]+"${ARGS[@]}"}" || rc=1
done
exit "$rc"
