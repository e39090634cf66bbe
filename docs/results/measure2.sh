#!/usr/bin/env bash
set -x
cd /work/main
export PRERANK_BIN=target/release/prerank
S=/work/bench-snapshots/items-1000000/bench/1
loadtest/matrix.sh --snapshot $S --dtype f32 --ns 20000 --concurrency 1,32 --runs 3 --duration 6 --out /work/results/matrix-f32-n20k.json > /work/results/matrix-f32-n20k.txt 2>&1
loadtest/matrix.sh --snapshot $S --dtype f32 --runs 3 --duration 5 --out /work/results/matrix-f32.json > /work/results/matrix-f32.txt 2>&1
loadtest/matrix.sh --snapshot $S --dtype int8 --runs 1 --duration 5 --out /work/results/matrix-int8.json > /work/results/matrix-int8.txt 2>&1
mkdir -p /tmp/k6root/bench && ln -sfn $S /tmp/k6root/bench/1
target/release/prerank serve --model-root /tmp/k6root --bind 127.0.0.1:8080 --no-watch > /work/results/k6-server.log 2>&1 &
SP=$!
for i in $(seq 1 300); do target/release/prerank probe --addr 127.0.0.1:8080 --path /readyz 2>/dev/null && break; sleep 0.2; done
for f in json proto; do N=20000 FORMAT=$f VUS=8 DURATION=20s P99_MS=50 loadtest/k6.sh $S > /work/results/k6-$f.txt 2>&1; echo "k6 $f exit $?" >> /work/results/k6-exit.txt; done
N=20000 FORMAT=json VUS=8 DURATION=10s P99_MS=2 loadtest/k6.sh $S > /work/results/k6-json-strict.txt 2>&1; echo "k6 json strict (p99<2ms) exit $?" >> /work/results/k6-exit.txt
kill -TERM $SP; wait $SP
echo ALL_DONE
