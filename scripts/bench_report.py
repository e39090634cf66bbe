#!/usr/bin/env python3
"""Turns benchmark results into the tables and plots of docs/benchmarks.md.

Inputs (each optional):
  --criterion DIR[=ITEMS] ...
                    criterion output directories (default target/criterion), one per run (copy
                    target/criterion aside after each `cargo bench`); ITEMS is the corpus size of
                    that run (default 1000000). Every <bench>/new/{benchmark,estimates}.json is read;
                    scoring benchmarks are recognised by a function id `<dtype>` /
                    `<dtype>_read_floor` with the candidate count as value. Several runs of the same
                    benchmark are reduced to the median (kernel / floor: median of the per-run ratios).
  --matrix FILE...  loadtest/matrix.sh result files.
  --numpy FILE      scripts/numpy_scoring.py result file.
Outputs: markdown tables on stdout, PNG plots in --plots (default docs/img).

    python3 scripts/bench_report.py --matrix loadtest/results/matrix-f32-*.json \
        --numpy loadtest/results/numpy-scoring.json
"""
import argparse
import glob
import json
import os
import re
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DTYPES = ("f32", "f16", "int8")


def load_criterion(specs):
    rows = []
    for run, spec in enumerate(specs):
        root, _, items = spec.partition("=")
        for path in glob.glob(os.path.join(root, "**", "new", "benchmark.json"), recursive=True):
            bench = json.load(open(path))
            est = json.load(open(os.path.join(os.path.dirname(path), "estimates.json")))
            rows.append({"run": run, "items": int(items or 1_000_000), "group": bench["group_id"],
                         "function": bench.get("function_id") or "",
                         "value": bench.get("value_str") or "",
                         "median_ms": est["median"]["point_estimate"] / 1e6})
    return rows


def scoring_table(rows):
    """{(group, items, dtype, n): {"kernel": ms, "floor": ms, "ratio": x, "runs": r}}, medians over runs."""
    runs = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        m = re.fullmatch(r"(f32|f16|int8)(_read_floor)?", r["function"])
        if not m or not r["value"].isdigit():
            continue
        key = (r["group"], r["items"], m.group(1), int(r["value"]))
        runs[key][r["run"]]["floor" if m.group(2) else "kernel"] = r["median_ms"]
    table = {}
    for key, per_run in runs.items():
        kernels = [v["kernel"] for v in per_run.values() if "kernel" in v]
        floors = [v["floor"] for v in per_run.values() if "floor" in v]
        ratios = [v["kernel"] / v["floor"] for v in per_run.values() if "kernel" in v and "floor" in v]
        entry = {"runs": len(per_run)}
        if kernels:
            entry["kernel"] = statistics.median(kernels)
        if floors:
            entry["floor"] = statistics.median(floors)
        if ratios:
            entry["ratio"] = statistics.median(ratios)
        table[key] = entry
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", nargs="*", default=["target/criterion"])
    ap.add_argument("--matrix", nargs="*", default=[])
    ap.add_argument("--numpy")
    ap.add_argument("--plots", default="docs/img")
    args = ap.parse_args()
    os.makedirs(args.plots, exist_ok=True)

    rows = load_criterion([c for c in args.criterion if os.path.isdir(c.partition("=")[0])])
    table = scoring_table(rows)
    if table:
        print("| group | items | dtype | N | kernel ms | read floor ms | kernel / floor | runs |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for (group, items, dtype, n), v in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], DTYPES.index(kv[0][2]), kv[0][3])):
            k, f = v.get("kernel"), v.get("floor")
            ratio = f"{v['ratio']:.2f}" if "ratio" in v else "-"
            print(f"| {group} | {items:,} | {dtype} | {n:,} | {k or float('nan'):.3f} | {f or float('nan'):.3f} | {ratio} | {v['runs']} |")
        print()
        groups = sorted({(g, items) for g, items, _, _ in table})
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
        for ax, (group, items) in zip(axes[0], groups):
            for dtype, color in zip(DTYPES, ("C0", "C1", "C2")):
                pts = sorted((n, v) for (g, it, d, n), v in table.items() if g == group and it == items and d == dtype)
                if not pts:
                    continue
                ns = [n for n, _ in pts]
                ax.plot(ns, [v.get("kernel", float("nan")) for _, v in pts], "o-", color=color, label=f"{dtype} kernel")
                ax.plot(ns, [v.get("floor", float("nan")) for _, v in pts], "x--", color=color, alpha=0.6, label=f"{dtype} read floor")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("candidates N")
            ax.set_ylabel("median latency (ms)")
            ax.set_title(f"{group}: {items:,} items, k=1000")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.plots, "kernel-latency-vs-n.png"), dpi=110)
        plt.close(fig)
    others = defaultdict(list)
    for r in rows:
        if not re.fullmatch(r"(f32|f16|int8)(_read_floor)?", r["function"]) or not r["value"].isdigit():
            name = "/".join(x for x in (r["group"], r["function"], r["value"]) if x)
            others[(name, r["items"])].append(r["median_ms"])
    if others:
        print("| benchmark | items | median ms (median over runs) | runs |")
        print("|---|---:|---:|---:|")
        for (name, items), v in sorted(others.items()):
            print(f"| {name} | {items:,} | {statistics.median(v):.4f} | {len(v)} |")
        print()

    if args.numpy:
        doc = json.load(open(args.numpy))
        print(f"| numpy ({doc['items']:,} items) dtype | N | numpy median ms | prerank kernel ms | numpy / prerank |")
        print("|---|---:|---:|---:|---:|")
        for r in doc["results"]:
            ours = [v.get("kernel") for (g, items, d, n), v in table.items()
                    if items == doc["items"] and d == r["dtype"] and n == r["n"] and v.get("kernel")]
            k = min(ours) if ours else None
            ours_s = "-" if k is None else f"{k:.3f}"
            ratio_s = "-" if not k else f"{r['median_ms'] / k:.1f}x"
            print(f"| {r['dtype']} | {r['n']:,} | {r['median_ms']:.3f} | {ours_s} | {ratio_s} |")
        print()

    if args.matrix:
        docs = [json.load(open(p)) for p in args.matrix]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for d_i, doc in enumerate(docs):
            alpha = 1.0 if d_i == 0 else 0.45
            print(f"Service, {doc['items']:,} items, {doc['dtype']}, {doc['duration_s']} s per cell "
                  f"({doc['machine']['cores']} cores, {doc['machine']['cpu']}):")
            print()
            print("| N | concurrency | encoding | req/s | p50 ms | p90 ms | p99 ms | p99/p50 | non-2xx + errors |")
            print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
            for s in doc["summary"]:
                ratio = s["p99_ms"] / s["p50_ms"] if s["p50_ms"] else float("nan")
                print(f"| {s['n']:,} | {s['concurrency']} | {s['format']} | {s['rps']:.0f} | {s['p50_ms']:.2f} | "
                      f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {ratio:.2f} | {s['non_2xx'] + s['errors']} |")
            print()
            ns = sorted({s["n"] for s in doc["summary"]})
            for i, n in enumerate(ns):
                for fmt, style in (("json", "o-"), ("proto", "s--")):
                    pts = sorted((s["concurrency"], s["rps"]) for s in doc["summary"] if s["n"] == n and s["format"] == fmt)
                    if pts:
                        ax1.plot([c for c, _ in pts], [r for _, r in pts], style, color=f"C{i}", alpha=alpha, label=f"N={n:,} {fmt} ({doc['dtype']})")
            for fmt, style in (("json", "o-"), ("proto", "s--")):
                pts = sorted((s["n"], s["p50_ms"]) for s in doc["summary"] if s["concurrency"] == 1 and s["format"] == fmt)
                if pts:
                    ax2.plot([n for n, _ in pts], [p for _, p in pts], style, label=f"{fmt} ({doc['dtype']}), c=1")
        ax1.set_xscale("log", base=2)
        ax1.set_yscale("log")
        ax1.set_xlabel("concurrency (connections)")
        ax1.set_ylabel("throughput (req/s)")
        ax1.set_title("Throughput vs concurrency (oha)")
        ax1.grid(True, which="both", alpha=0.3)
        ax1.legend(fontsize=7)
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("candidates N")
        ax2.set_ylabel("p50 latency (ms)")
        ax2.set_title("Service p50 vs N, concurrency 1")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.plots, "service-throughput-latency.png"), dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
