#!/usr/bin/env bash
# Overload test: offered load at N x the saturation rate (default 5x); the service must shed the
# excess at once (503 `overloaded` + Retry-After), keep the accepted requests' latency bounded, keep
# its memory bounded, and survive.
#
# Starts a release `prerank serve` on 127.0.0.1 only (a free port) over one synthetic model, then:
#   1. "saturation": closed-loop oha with --concurrency connections for --duration seconds; its
#      throughput is the saturation rate R;
#   2. "overload": open-loop oha at --factor x R requests/s (--latency-correction, so queueing in the
#      client is not hidden) with --overload-connections connections for --duration seconds.
# During both phases the server's RSS (VmRSS / VmHWM) is sampled. It prints, per phase, requests,
# status-code counts, accepted (2xx) p50/p99/max, shed fraction and peak RSS, then checks that the
# process is still alive and ready. Exit 1 if it died, if any response was a 5xx other than 503, or
# if any transport error happened.
#
# Usage: loadtest/overload.sh [--items N] [--candidates N] [--duration SECS] [--concurrency N]
#                             [--factor F] [--overload-connections N] [--max-inflight N]
#                             [--no-latency-correction] [--keep]
# --latency-correction (default) charges a request from its scheduled send time, so when the client
# itself cannot keep up (oha and server on the same small machine) the accepted p99 includes the
# client's backlog; --no-latency-correction reports the server's time from the actual send.
# Needs: oha (`cargo install oha --locked`), python3, cargo (builds the release binary).
# Env: OHA=/path/to/oha; PRERANK_BIN=/path/to/prerank to skip the build.
set -euo pipefail

ITEMS=100000
CANDIDATES=2000
DURATION=20
CONCURRENCY=8
FACTOR=5
OVERLOAD_CONNECTIONS=256
MAX_INFLIGHT=8
CORRECTION=(--latency-correction)
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --items) ITEMS="$2"; shift 2 ;;
    --candidates) CANDIDATES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --factor) FACTOR="$2"; shift 2 ;;
    --overload-connections) OVERLOAD_CONNECTIONS="$2"; shift 2 ;;
    --max-inflight) MAX_INFLIGHT="$2"; shift 2 ;;
    --no-latency-correction) CORRECTION=(); shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=loadtest/common.sh
source "$(dirname "$0")/common.sh"

MODEL=pfd-student
echo "== synthetic snapshot: $ITEMS items"
"$BIN" synth "$WORK/models/$MODEL/1" --items "$ITEMS" --golden 1 >/dev/null
"$BIN" inspect "$WORK/models/$MODEL/1" --ids > "$WORK/ids.txt"
python3 - "$WORK/ids.txt" "$CANDIDATES" > "$WORK/bodies.jsonl" <<'EOF'
import json, random, sys
ids = [int(l) for l in open(sys.argv[1]) if l.strip()]
n = min(int(sys.argv[2]), len(ids))
rng = random.Random(7)
for i in range(200):
    body = {
        "user": {"id": rng.randrange(1, 5_000_000),
                 "features": {"age": rng.randrange(16, 70), "gender": rng.choice("fm")},
                 "behaviors": [{"item_id": x, "action": "click", "seconds_ago": 60 * j}
                               for j, x in enumerate(rng.sample(ids, 20))]},
        "candidates": rng.sample(ids, n),
        "k": 100,
    }
    print(json.dumps(body, separators=(",", ":")))
EOF

echo "== --max-inflight $MAX_INFLIGHT"
start_server --model-root "$WORK/models" --no-watch --poll-seconds 0 --max-inflight "$MAX_INFLIGHT"

sample_rss() { # every 100 ms: VmRSS kB, to $1
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null >> "$1" || true
    sleep 0.1
  done
}
IDLE_RSS_KB="$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")"

echo "== phase 1: saturation, closed loop, $CONCURRENCY connections, ${DURATION}s"
sample_rss "$WORK/rss-saturation.txt" & SAMPLER_PID=$!; BACKGROUND_PIDS+=("$SAMPLER_PID")
"$OHA" "http://$ADDR/v1/rank" -m POST -T application/json -Z "$WORK/bodies.jsonl" \
  -c "$CONCURRENCY" -z "${DURATION}s" -w --no-tui --stats-success-breakdown "${JSON_FLAG[@]}" \
  > "$WORK/saturation.json"
kill "$SAMPLER_PID" 2>/dev/null || true
RATE="$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$WORK/saturation.json")"
OFFERED=$(( RATE * FACTOR ))
echo "   saturation rate: $RATE req/s -> offering $OFFERED req/s"

echo "== phase 2: overload, open loop at $OFFERED req/s, $OVERLOAD_CONNECTIONS connections, ${DURATION}s"
sample_rss "$WORK/rss-overload.txt" & SAMPLER_PID=$!; BACKGROUND_PIDS+=("$SAMPLER_PID")
"$OHA" "http://$ADDR/v1/rank" -m POST -T application/json -Z "$WORK/bodies.jsonl" \
  -c "$OVERLOAD_CONNECTIONS" -q "$OFFERED" "${CORRECTION[@]}" -z "${DURATION}s" -w --no-tui \
  --stats-success-breakdown "${JSON_FLAG[@]}" > "$WORK/overload.json"
kill "$SAMPLER_PID" 2>/dev/null || true

ALIVE=1
kill -0 "$SERVER_PID" 2>/dev/null || ALIVE=0
READY=0
"$BIN" probe --addr "$ADDR" --path /readyz 2>/dev/null && READY=1
HWM_KB="$(awk '/^VmHWM/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
curl -s "http://$ADDR/metrics" > "$WORK/metrics.txt" 2>/dev/null || true

python3 - "$WORK" "$IDLE_RSS_KB" "$HWM_KB" "$ALIVE" "$READY" "$FACTOR" <<'EOF'
import json, sys
work, idle_kb, hwm_kb, alive, ready, factor = sys.argv[1:7]
def rss_max(name):
    try:
        return max(int(x) for x in open(f"{work}/rss-{name}.txt") if x.strip()) / 1024
    except (OSError, ValueError):
        return 0.0
bad = 0
print()
print(f"{'phase':<11} {'requests':>8} {'req/s':>8} {'2xx':>7} {'503':>7} {'other':>6} {'errors':>6} "
      f"{'ok p50 ms':>9} {'ok p99 ms':>9} {'ok max ms':>9} {'RSS MiB':>8}")
for name in ("saturation", "overload"):
    r = json.load(open(f"{work}/{name}.json"))
    codes = {str(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
    errors = r.get("errorDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    shed = codes.get("503", 0)
    other = sum(v for k, v in codes.items() if not k.startswith("2") and k != "503")
    lp = r.get("latencyPercentilesSuccessful") or r.get("latencyPercentiles", {})
    ok_max = (r.get("summarySuccessful") or {}).get("slowest") or r["summary"].get("slowest") or 0
    ms = lambda k: 1000 * float(lp.get(k) or 0)
    total = ok + shed + other
    print(f"{name:<11} {total:>8} {r['summary']['requestsPerSec']:>8.0f} {ok:>7} {shed:>7} {other:>6} "
          f"{sum(errors.values()):>6} {ms('p50'):>9.2f} {ms('p99'):>9.2f} {1000 * ok_max:>9.2f} "
          f"{rss_max(name):>8.1f}")
    if other or errors:
        bad = 1
        print(f"   {name}: other statuses {codes}, errors {errors}")
print()
print(f"RSS idle {int(idle_kb) / 1024:.1f} MiB, peak (VmHWM) {int(hwm_kb) / 1024:.1f} MiB")
print(f"process alive after {factor}x overload: {'yes' if alive == '1' else 'NO'}; ready: {'yes' if ready == '1' else 'NO'}")
ok = alive == "1" and ready == "1" and not bad
print("RESULT:", "PASS (excess shed with 503, no other errors, process alive and ready)" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
