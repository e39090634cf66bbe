#!/usr/bin/env bash
# Start-up to ready on a large int8 snapshot, lazy paging vs --prefault.
#
# Generates (once) a 10^7-item int8 snapshot with one golden check, then starts the release server
# RUNS times (default 5) in each mode and measures the wall time from exec to the first 200 on
# /readyz, and afterwards the process RSS (VmRSS, /proc/PID/status) and the snapshot's mapped /
# resident / huge-page bytes (from /metrics). Prints medians and writes JSON to loadtest/results/.
#
#   loadtest/startup.sh [--items N] [--runs R] [--dir PATH] [--extra "FLAGS"]
#   env: PRERANK_STARTUP_DIR (snapshot root, default $PRERANK_BENCH_DIR/startup-int8-<N>, where
#        PRERANK_BENCH_DIR defaults to target/bench-snapshots),
#        PRERANK_BIN (release binary; built otherwise)
#
# Modes: `lazy`  = --verify deferred --warmup-rounds 0 (item files checked in the background)
#        `prefault` = lazy + --prefault (served files faulted in before the version goes live)
#        `full`  = the defaults (--verify full, one warm-up round), run once for reference.
# Page caches are dropped before every run when /proc/sys/vm/drop_caches is writable (root), so
# runs are cold-cache; otherwise they are warm-cache and the JSON says so.
set -euo pipefail

ITEMS=10000000
RUNS=5
EXTRA=""
DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --items) ITEMS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --extra) EXTRA="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
DIR="${DIR:-${PRERANK_STARTUP_DIR:-${PRERANK_BENCH_DIR:-target/bench-snapshots}/startup-int8-$ITEMS}}"
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${PRERANK_BIN:-}" ]]; then
  BIN="$PRERANK_BIN"
else
  cargo build --release --bin prerank
  BIN="${CARGO_TARGET_DIR:-target}/release/prerank"
fi

if [[ ! -f "$DIR/bench/1/manifest.json" ]]; then
  echo "== generating $ITEMS int8 items into $DIR/bench/1"
  mkdir -p "$DIR/bench"
  /usr/bin/time -f "generated in %e s, peak RSS %M KiB" \
    "$BIN" synth "$DIR/bench/1" --items "$ITEMS" --dtypes int8 --golden 1 --model bench
fi

CACHE=warm
if [[ -w /proc/sys/vm/drop_caches ]] && sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
  CACHE=cold
fi
PORT=$((20000 + RANDOM % 20000))
OUT=loadtest/results
mkdir -p "$OUT"
RAW=$(mktemp)

run_once() { # mode flags...
  local mode="$1"; shift
  [[ "$CACHE" == cold ]] && sync && echo 3 > /proc/sys/vm/drop_caches
  local log; log=$(mktemp)
  local t0; t0=$(date +%s%N)
  "$BIN" serve --model-root "$DIR" --bind "127.0.0.1:$PORT" --no-watch --poll-seconds 0 "$@" $EXTRA \
    >"$log" 2>&1 &
  local pid=$!
  local ready=""
  for _ in $(seq 1 6000); do
    if curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" 2>/dev/null | grep -q 200; then
      ready=$(date +%s%N); break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  if [[ -z "$ready" ]]; then
    echo "server did not become ready ($mode); log:" >&2; cat "$log" >&2; kill "$pid" 2>/dev/null || true; exit 1
  fi
  local rss; rss=$(awk '/^VmRSS:/ {printf "%.0f", $2 * 1024}' "/proc/$pid/status")
  local metrics; metrics=$(curl -s "http://127.0.0.1:$PORT/metrics")
  local mapped resident huge
  mapped=$(echo "$metrics" | awk '/^prerank_model_mapped_bytes\{/ {s += $2} END {printf "%.0f", s}')
  resident=$(echo "$metrics" | awk '/^prerank_model_resident_bytes\{/ {s += $2} END {printf "%.0f", s}')
  huge=$(echo "$metrics" | awk '/^prerank_model_huge_page_bytes\{/ {s += $2} END {printf "%.0f", s}')
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  echo "$mode $(( (ready - t0) / 1000000 )) $rss $mapped $resident $huge" >> "$RAW"
  printf '%-9s ready in %6d ms  rss %6d MiB  mapped %6d MiB  resident %6d MiB  huge %6d MiB\n' \
    "$mode" $(( (ready - t0) / 1000000 )) $((rss >> 20)) $((mapped >> 20)) $((resident >> 20)) $((huge >> 20))
  rm -f "$log"
}

echo "== $RUNS runs per mode, $CACHE page cache, snapshot $DIR"
for _ in $(seq 1 "$RUNS"); do
  run_once lazy --verify deferred --warmup-rounds 0
  run_once prefault --verify deferred --warmup-rounds 0 --prefault
done
run_once full

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
python3 - "$RAW" "$OUT/startup-$STAMP.json" "$CACHE" "$DIR" "$ITEMS" <<'PY'
import json, statistics, sys
raw, out, cache, d, items = sys.argv[1:6]
rows = {}
for line in open(raw):
    mode, ms, rss, mapped, resident, huge = line.split()
    rows.setdefault(mode, []).append(dict(ready_ms=int(ms), rss=int(rss), mapped=int(mapped),
                                         resident=int(resident), huge=int(huge)))
summary = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"runs": len(rs)}
           for m, rs in rows.items()}
json.dump(dict(items=int(items), snapshot=d, page_cache=cache, runs=rows, median=summary),
          open(out, "w"), indent=1)
print(f"== medians ({cache} page cache)")
for m, s in summary.items():
    print(f"{m:9s} ready {s['ready_ms']:7.0f} ms  rss {s['rss']/2**20:7.0f} MiB  mapped "
          f"{s['mapped']/2**20:7.0f} MiB  resident {s['resident']/2**20:7.0f} MiB  huge "
          f"{s['huge']/2**20:5.0f} MiB  ({s['runs']} runs)")
print("wrote", out)
PY
rm -f "$RAW"
