#!/usr/bin/env bash
# Load-test matrix for POST /v1/rank with oha: candidates N x concurrency x encoding (JSON, protobuf),
# each cell a closed-loop oha run of --duration seconds against a release `prerank serve` on
# 127.0.0.1 (a free port). Prints throughput and p50/p90/p99 per cell and writes every cell as JSON.
#
# The snapshot is a synthetic corpus (`prerank synth`, f32 + f16 + int8, generated once into
# target/loadtest-snapshots/, not in git) unless --snapshot names a version directory. Request bodies
# come from `prerank bodies`: candidates and behaviours drawn from the snapshot's real ids, the same
# request written as JSON and as protobuf, so the two encodings are compared on identical work.
#
# Usage: loadtest/matrix.sh [--items 1000000] [--dtype f32] [--ns 1000,10000,100000]
#                           [--concurrency 1,8,32,64] [--formats json,proto] [--duration 8]
#                           [--runs 1] [--snapshot VERSION_DIR] [--out FILE] [--keep]
#                           [-- extra prerank serve flags]
# Bounded in time: about cells x runs x (duration + 1) seconds plus start-up, e.g. the default
# 24 cells x 8 s = ~4 min. Results: loadtest/results/matrix-<dtype>-<date>.json (or --out).
# Needs oha (`cargo install oha --locked`, see loadtest/install-tools.sh), python3 and cargo.
# Env: OHA=/path/to/oha; PRERANK_BIN=/path/to/prerank to skip the build.
set -euo pipefail

ITEMS=1000000
DTYPE=f32
NS=1000,10000,100000
CONCURRENCY=1,8,32,64
FORMATS=json,proto
DURATION=8
RUNS=1
SNAPSHOT=""
OUT=""
KEEP=0
SERVE_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --items) ITEMS="$2"; shift 2 ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --ns) NS="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --formats) FORMATS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --snapshot) SNAPSHOT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --) shift; SERVE_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

[[ -n "$SNAPSHOT" ]] && SNAPSHOT="$(cd "$SNAPSHOT" && pwd)"
[[ -n "$OUT" && "$OUT" != /* ]] && OUT="$PWD/$OUT"
# shellcheck source=loadtest/common.sh
source "$(dirname "$0")/common.sh"

if [[ -z "$SNAPSHOT" ]]; then
  SNAPSHOT="${CARGO_TARGET_DIR:-target}/loadtest-snapshots/items-$ITEMS/bench/1"
  if [[ ! -f "$SNAPSHOT/manifest.json" ]]; then
    echo "== synthetic snapshot: $ITEMS items (f32, f16, int8) into $SNAPSHOT"
    rm -rf "$SNAPSHOT"
    mkdir -p "$(dirname "$SNAPSHOT")"
    "$BIN" synth "$SNAPSHOT" --items "$ITEMS" --dtypes f32,f16,int8 --golden 1 --model bench >/dev/null
  fi
fi
SNAPSHOT="$(cd "$SNAPSHOT" && pwd)"
MODEL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$SNAPSHOT/manifest.json")"
mkdir -p "$WORK/models/$MODEL"
ln -s "$SNAPSHOT" "$WORK/models/$MODEL/1"

IFS=, read -r -a NS_LIST <<< "$NS"
IFS=, read -r -a C_LIST <<< "$CONCURRENCY"
IFS=, read -r -a F_LIST <<< "$FORMATS"
for n in "${NS_LIST[@]}"; do
  "$BIN" bodies "$SNAPSHOT" --candidates "$n" --count 1 --out-dir "$WORK/bodies-$n" >/dev/null
done

MAX_C=0
for c in "${C_LIST[@]}"; do (( c > MAX_C )) && MAX_C=$c; done
echo "== serving $SNAPSHOT ($DTYPE)"
# In-flight limit above the highest concurrency: the matrix measures queueing, not shedding
# (loadtest/overload.sh covers shedding).
start_server --model-root "$WORK/models" --item-dtype "$DTYPE" --no-watch \
  --max-inflight $(( MAX_C * 2 )) --log-json "${SERVE_EXTRA[@]}"
content_type() { [[ "$1" == proto ]] && echo application/x-protobuf || echo application/json; }
ext() { [[ "$1" == proto ]] && echo pb || echo json; }

echo "== warm-up"
"$OHA" "http://$ADDR/v1/rank" -m POST -T application/json -D "$WORK/bodies-${NS_LIST[0]}/body-0.json" \
  -c 2 -z 2s -w --no-tui "${JSON_FLAG[@]}" > /dev/null

: > "$WORK/cells.jsonl"
for run in $(seq 1 "$RUNS"); do
  for n in "${NS_LIST[@]}"; do
    for c in "${C_LIST[@]}"; do
      for f in "${F_LIST[@]}"; do
        ct="$(content_type "$f")"
        "$OHA" "http://$ADDR/v1/rank" -m POST -T "$ct" -A "$ct" \
          -D "$WORK/bodies-$n/body-0.$(ext "$f")" -c "$c" -z "${DURATION}s" -w --no-tui \
          "${JSON_FLAG[@]}" > "$WORK/oha.json"
        python3 - "$WORK/oha.json" "$n" "$c" "$f" "$run" >> "$WORK/cells.jsonl" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lp = r.get("latencyPercentiles", {})
codes = r.get("statusCodeDistribution", {})
ms = lambda k: round(1000 * float(lp.get(k) or 0), 3)
print(json.dumps({
    "n": int(sys.argv[2]), "concurrency": int(sys.argv[3]), "format": sys.argv[4],
    "run": int(sys.argv[5]), "requests": sum(codes.values()),
    "non_2xx": sum(v for k, v in codes.items() if not k.startswith("2")),
    "errors": sum(r.get("errorDistribution", {}).values()),
    "rps": round(r["summary"]["requestsPerSec"], 1),
    "mean_ms": round(1000 * (r["summary"].get("average") or 0), 3),
    "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"),
    "max_ms": round(1000 * (r["summary"].get("slowest") or 0), 3),
}))
EOF
        tail -n 1 "$WORK/cells.jsonl" | python3 -c '
import json, sys
c = json.loads(sys.stdin.read())
print("run {run} N={n:>6} c={concurrency:>2} {format:<5} {rps:>8.0f} req/s  p50 {p50_ms:>7.2f}  p99 {p99_ms:>7.2f} ms  non-2xx {non_2xx} errors {errors}".format(**c))'
      done
    done
  done
done

kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server died" >&2; exit 1; }
mkdir -p loadtest/results
OUT="${OUT:-loadtest/results/matrix-$DTYPE-$(date -u +%Y%m%dT%H%M%SZ).json}"
python3 - "$WORK/cells.jsonl" "$OUT" "$ITEMS" "$DTYPE" "$SNAPSHOT" "$DURATION" <<'EOF'
import json, os, platform, statistics, sys
cells = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out, items, dtype, snapshot, duration = sys.argv[2:7]
groups = {}
for c in cells:
    groups.setdefault((c["n"], c["concurrency"], c["format"]), []).append(c)
summary = []
for (n, conc, fmt), cs in sorted(groups.items()):
    med = lambda k: statistics.median(c[k] for c in cs)
    summary.append({"n": n, "concurrency": conc, "format": fmt, "runs": len(cs),
                    **{k: med(k) for k in ("rps", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")},
                    "non_2xx": sum(c["non_2xx"] for c in cs), "errors": sum(c["errors"] for c in cs)})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
doc = {"items": int(items), "dtype": dtype, "snapshot": snapshot, "duration_s": int(duration),
       "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
       "cells": cells, "summary": summary}
json.dump(doc, open(out, "w"), indent=1)
print()
print(f"{'N':>7} {'conc':>4} {'enc':<5} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99/p50':>7} {'bad':>4}")
for s in summary:
    ratio = s["p99_ms"] / s["p50_ms"] if s["p50_ms"] else float("nan")
    print(f"{s['n']:>7} {s['concurrency']:>4} {s['format']:<5} {s['rps']:>8.0f} {s['p50_ms']:>8.2f} "
          f"{s['p90_ms']:>8.2f} {s['p99_ms']:>8.2f} {ratio:>7.2f} {s['non_2xx'] + s['errors']:>4}")
# Saturation check: throughput at the highest concurrency vs 2 cores / single-request service time.
for n in sorted({s["n"] for s in summary}):
    for fmt in sorted({s["format"] for s in summary}):
        row = {s["concurrency"]: s for s in summary if s["n"] == n and s["format"] == fmt}
        if 1 in row and len(row) > 1 and row[1]["mean_ms"]:
            ideal = (os.cpu_count() or 2) * 1000 / row[1]["mean_ms"]
            top = max(row.values(), key=lambda s: s["rps"])
            print(f"N={n} {fmt}: best {top['rps']:.0f} req/s at c={top['concurrency']} = "
                  f"{100 * top['rps'] / ideal:.0f}% of cores/service-time ({ideal:.0f} req/s)")
print(f"\nresults: {out}")
bad = sum(s["non_2xx"] + s["errors"] for s in summary)
sys.exit(1 if bad else 0)
EOF
