#!/usr/bin/env bash
# Hot-swap load test: p99 and non-2xx before vs during version swaps.
#
# Starts a release `prerank serve` on 127.0.0.1 only (a free port) over a fresh model repository with
# one synthetic model, then runs oha twice for the same bounded time:
#   1. "before": steady load, no publishing;
#   2. "during": the same load while `prerank publish` adds a new version every --interval seconds
#      (each one is verified, warmed up and swapped in by the server under load).
# It prints p50/p99/max, requests/s, the status-code distribution and transport errors of both phases,
# checks that the last published version is the one being served, and exits 1 if any response was
# not 2xx or any request failed.
#
# Usage: loadtest/swap.sh [--items N] [--candidates N] [--duration SECS] [--interval SECS]
#                         [--concurrency N] [--keep]
# Needs: oha (`cargo install oha --locked`), python3 (report), cargo (builds the release binary).
# Env: OHA=/path/to/oha to use a specific oha; PRERANK_BIN=/path/to/prerank to skip the build.
set -euo pipefail

ITEMS=100000
CANDIDATES=2000
DURATION=20
INTERVAL=4
CONCURRENCY=8
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --items) ITEMS="$2"; shift 2 ;;
    --candidates) CANDIDATES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=loadtest/common.sh
source "$(dirname "$0")/common.sh"

MODEL=pfd-student
SRC="$WORK/src/$MODEL/1"
REPO="$WORK/models"
echo "== synthetic snapshot: $ITEMS items"
"$BIN" synth "$SRC" --items "$ITEMS" --golden 1 >/dev/null
"$BIN" publish "$SRC" "$REPO/$MODEL" >/dev/null

echo "== request bodies from the snapshot's ids ($CANDIDATES candidates each)"
"$BIN" inspect "$SRC" --ids > "$WORK/ids.txt"
python3 - "$WORK/ids.txt" "$CANDIDATES" > "$WORK/bodies.jsonl" <<'EOF'
import json, random, sys
ids = [int(l) for l in open(sys.argv[1]) if l.strip()]
n = min(int(sys.argv[2]), len(ids))
rng = random.Random(7)
for i in range(200):
    cands = rng.sample(ids, n)
    body = {
        "user": {"id": rng.randrange(1, 5_000_000),
                 "features": {"age": rng.randrange(16, 70), "gender": rng.choice("fm"),
                              "city_tier": rng.randrange(1, 6)},
                 "behaviors": [{"item_id": x, "action": "click", "seconds_ago": 60 * j}
                               for j, x in enumerate(rng.sample(ids, 20))]},
        "candidates": cands,
        "k": 100,
    }
    print(json.dumps(body, separators=(",", ":")))
EOF

start_server --model-root "$REPO" --poll-seconds 1 --log-json
run_oha() {
  "$OHA" "http://$ADDR/v1/rank" -m POST -T application/json -Z "$WORK/bodies.jsonl" \
    -c "$CONCURRENCY" -z "${DURATION}s" -w --no-tui "${JSON_FLAG[@]}" > "$1"
}

echo "== phase 1: ${DURATION}s steady load, no swaps"
run_oha "$WORK/before.json"

SWAPS=$(( DURATION / INTERVAL ))
(( SWAPS >= 1 )) || SWAPS=1
echo "== phase 2: ${DURATION}s load while publishing $SWAPS versions (every ${INTERVAL}s)"
(
  for _ in $(seq 1 "$SWAPS"); do
    sleep "$INTERVAL"
    "$BIN" publish "$SRC" "$REPO/$MODEL" >> "$WORK/published.txt"
  done
) &
PUBLISHER_PID=$!
BACKGROUND_PIDS+=("$PUBLISHER_PID")
run_oha "$WORK/during.json"
wait "$PUBLISHER_PID"
LAST=$(( SWAPS + 1 ))
# The last publish may still be loading: give it a moment, then read what is served.
for _ in $(seq 1 100); do
  served="$(python3 - "$ADDR" <<'EOF'
import json, sys, urllib.request
m = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/v1/models"))
print(m["models"][0]["live"]["version"])
EOF
)"
  [[ "$served" == "$LAST" ]] && break
  sleep 0.1
done

python3 - "$WORK/before.json" "$WORK/during.json" "$served" "$LAST" "$WORK/server.log" <<'EOF'
import json, sys
before, during = (json.load(open(p)) for p in sys.argv[1:3])
served, last, log = sys.argv[3], sys.argv[4], sys.argv[5]

def row(name, r):
    lp = r.get("latencyPercentiles", {})
    codes = r.get("statusCodeDistribution", {})
    errors = r.get("errorDistribution", {})
    total = sum(codes.values())
    non2xx = sum(n for c, n in codes.items() if not c.startswith("2"))
    ms = lambda k: 1000 * float(lp.get(k) or 0)
    print(f"{name:<8} {total:>8} {r['summary']['requestsPerSec']:>9.0f} "
          f"{ms('p50'):>8.2f} {ms('p99'):>8.2f} {ms('p99.9'):>8.2f} "
          f"{1000 * r['summary']['slowest']:>8.2f} {non2xx:>7} {sum(errors.values()):>7}")
    return non2xx, errors

print()
print(f"{'phase':<8} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8} "
      f"{'max ms':>8} {'non-2xx':>7} {'errors':>7}")
nb, eb = row("before", before)
nd, ed = row("during", during)
def events(msg):
    out = []
    for line in open(log):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("fields", {}).get("message") == msg:
            out.append(e["fields"])
    return out
swaps = sum(1 for f in events("serving version swapped") if f.get("from") != "None")
rejected = len(events("snapshot rejected; the current version keeps serving"))
print()
print(f"swaps done by the server under load: {swaps}; rejected versions: {rejected}; "
      f"serving version at the end: {served} (expected {last})")
p99b = before["latencyPercentiles"]["p99"]; p99d = during["latencyPercentiles"]["p99"]
if p99b:
    print(f"p99 during swaps / before: {p99d / p99b:.2f}x")
for name, e in (("before", eb), ("during", ed)):
    if e:
        print(f"{name} transport errors: {e}")
ok = nb == 0 and nd == 0 and not eb and not ed and served == last
print("RESULT:", "PASS (zero non-2xx, zero errors, last version live)" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
