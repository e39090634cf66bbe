#!/usr/bin/env python3
"""A straightforward numpy implementation of prerank's scoring, timed on the same snapshot files.

What a data scientist would write to serve the same model from Python: the item files memory-mapped
with np.memmap, ids resolved by np.searchsorted over the sorted id list, the candidate rows gathered
by fancy indexing, one matrix-vector product, np.argpartition for the top k, then a sort of the k.
It follows docs/snapshot-format.md (sections 6 and 7) and nothing from the Rust code, so it is also a
second reading of the format. Timings are the median of --repeats calls per (dtype, N), after one
warm-up call; the candidate sets are random samples of the snapshot's ids (seeded).

    python3 scripts/numpy_scoring.py target/bench-snapshots/items-1000000/bench/1 \
        --ns 1000,10000,100000 --k 1000 --repeats 20 --out loadtest/results/numpy-scoring.json
"""
import argparse
import json
import os
import statistics
import struct
import time

import numpy as np


def read_vectors(path):
    with open(path, "rb") as f:
        head = f.read(64)
    magic, _version, code, count, dim, stride, offset = struct.unpack_from("<8sIIQIIQ", head)
    assert magic == b"PRRKVEC\0", path
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(count, stride))
    if code == 1:
        return "f32", raw, lambda rows: rows[:, : 4 * dim].view("<f4")
    if code == 2:
        return "f16", raw, lambda rows: rows[:, : 2 * dim].view("<f2").astype(np.float32)
    if code == 3:
        pad = (dim + 3) // 4 * 4

        def decode(rows):
            scale = rows[:, pad : pad + 4].copy().view("<f4")
            return rows[:, :dim].view(np.int8).astype(np.float32) * scale

        return "int8", raw, decode
    raise ValueError(f"unknown dtype code {code}")


def read_ids(path):
    with open(path, "rb") as f:
        head = f.read(64)
    magic, _v, _r, count, _slots, _table, ids_offset = struct.unpack_from("<8sIIQQQQ", head)
    assert magic == b"PRRKIDX\0", path
    return np.memmap(path, dtype="<u8", mode="r", offset=ids_offset, shape=(count,))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot")
    ap.add_argument("--ns", default="1000,10000,100000")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(args.snapshot, "manifest.json")))
    tau = float(manifest["tau"])
    ids = np.asarray(read_ids(os.path.join(args.snapshot, "items.idx")))
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    rng = np.random.default_rng(1)
    results = []
    for name in sorted(os.listdir(args.snapshot)):
        if not name.endswith(".vec"):
            continue
        dtype, raw, decode = read_vectors(os.path.join(args.snapshot, name))
        dim = manifest["items"]["dim"]
        u = rng.standard_normal(dim).astype(np.float32)
        u /= np.linalg.norm(u)
        for n in (int(x) for x in args.ns.split(",")):
            cands = rng.choice(ids, size=min(n, len(ids)), replace=False)

            def score():
                pos = np.searchsorted(sorted_ids, cands)
                pos = np.minimum(pos, len(sorted_ids) - 1)
                known = sorted_ids[pos] == cands
                rows = order[pos[known]]
                vecs = decode(raw[rows])
                scores = tau * (vecs @ u)
                k = min(args.k, len(scores))
                top = np.argpartition(-scores, k - 1)[:k]
                top = top[np.lexsort((cands[known][top], -scores[top]))]
                return cands[known][top], scores[top]

            score()
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                score()
                times.append(time.perf_counter() - t)
            med = statistics.median(times) * 1000
            results.append({"dtype": dtype, "n": n, "k": args.k, "median_ms": round(med, 3),
                            "min_ms": round(min(times) * 1000, 3), "repeats": args.repeats})
            print(f"numpy {dtype:<5} N={n:>7}: median {med:8.3f} ms  (min {min(times) * 1000:.3f})")
    doc = {"snapshot": os.path.abspath(args.snapshot), "items": int(len(ids)),
           "numpy": np.__version__, "threads_note": "numpy BLAS may use both cores", "results": results}
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        json.dump(doc, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
