#!/usr/bin/env bash
# Measurement run for issue 5 (lead's session); logs to /work/results/measure.log
set -x
cd /work/main
export PRERANK_BENCH_DIR=/work/bench-snapshots
CB="--warm-up-time 1 --measurement-time 3 --noplot"
cargo bench -p prerank --bench scoring --no-run
cargo bench -p prerank --bench decode --no-run
cargo build --release --bin prerank
crit() { # name, env..., -- filter
  local name=$1; shift
  rm -rf target/criterion
  env "$@" cargo bench -p prerank --bench scoring -- $CB_FILTER $CB > /work/results/$name.txt 2>&1
  cp -r target/criterion /work/results/$name
}
for r in 1 2 3; do CB_FILTER='score_k1000/' crit crit-1e6-r$r PRERANK_BENCH_ITEMS=1000000; done
for r in 1 2; do CB_FILTER='score_k1000/' crit crit-1e7-r$r PRERANK_BENCH_ITEMS=10000000; done
CB_FILTER='score_k1000_parallel|user_tower|section3' crit crit-1e6-misc PRERANK_BENCH_ITEMS=1000000
CB_FILTER='score_k1000_parallel' crit crit-1e7-par PRERANK_BENCH_ITEMS=10000000
for r in 1 2 3; do CB_FILTER='score_k1000/f32/' crit crit-1e6-n20k-r$r PRERANK_BENCH_ITEMS=1000000 PRERANK_BENCH_NS=20000; done
rm -rf target/criterion
cargo bench -p prerank --bench decode -- $CB > /work/results/decode.txt 2>&1
cp -r target/criterion /work/results/crit-decode
echo CRITERION_DONE
export PRERANK_BIN=target/release/prerank
loadtest/matrix.sh --snapshot /work/bench-snapshots/items-1000000/bench/1 --dtype f32 --runs 3 --duration 6 --out /work/results/matrix-f32.json > /work/results/matrix-f32.txt 2>&1
loadtest/matrix.sh --snapshot /work/bench-snapshots/items-1000000/bench/1 --dtype f32 --ns 20000 --concurrency 1,32 --runs 3 --duration 8 --out /work/results/matrix-f32-n20k.json > /work/results/matrix-f32-n20k.txt 2>&1
loadtest/matrix.sh --snapshot /work/bench-snapshots/items-1000000/bench/1 --dtype int8 --runs 1 --duration 6 --out /work/results/matrix-int8.json > /work/results/matrix-int8.txt 2>&1
PRERANK_BENCH_DIR=/work/bench-snapshots loadtest/startup.sh --runs 5 > /work/results/startup.txt 2>&1
python3 scripts/numpy_scoring.py /work/bench-snapshots/items-1000000/bench/1 --repeats 20 --out /work/results/numpy.json > /work/results/numpy.txt 2>&1
echo ALL_DONE
