#!/usr/bin/env python3
"""Memory soak (issue 15, finding 2): N requests against a real `prerank serve` with a publish/swap
every --swap-seconds, RSS sampled from /proc, reported as a slope in bytes per request and per swap
with a fit and its uncertainty. Python 3.11 standard library only; `loadtest/soak.sh` wraps it.

    python3 scripts/hostile/soak.py --bin target/release/prerank                 # 10^6 requests, no scraper
    python3 scripts/hostile/soak.py --bin target/release/prerank --scrape-seconds 15   # with a scraper

Load: --workers processes, each one keep-alive connection sending rank requests (--candidates ids
drawn from the snapshot, k 10, a few behaviours) as fast as the server answers, or at --rate
requests/s in total. Swaps: `prerank publish` of the same source as the next version every
--swap-seconds while the load runs, then --idle-swaps more swaps with no traffic (so the per-swap
term is not collinear with the per-request one). Samples: every --sample-seconds, VmRSS / RssAnon /
RssFile of the server and the running request and swap counts.

Fit: RssAnon = a + b * requests + c * swaps by least squares over the samples after the warm-up
(--warmup-fraction of the requests, default 20%: the allocator's own growth comes first); the
uncertainties are Newey-West (HAC) standard errors, because consecutive samples are autocorrelated
(plain OLS errors would be far too small). The same fit is reported for VmRSS. `--refit JSON` fits
a saved run again (e.g. with another warm-up). Exit 1 if a bound (--max-bytes-per-request,
--max-bytes-per-swap) is exceeded or the server died.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Context, Server, proc_status  # noqa: E402


# --------------------------------------------------------------------------------------------- fit


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (small systems)."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-300:
            raise ValueError("singular design matrix (a regressor does not vary)")
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                for k in range(col, n + 1):
                    m[r][k] -= f * m[col][k]
    return [m[i][n] / m[i][i] for i in range(n)]


def _inverse(a: list[list[float]]) -> list[list[float]]:
    n = len(a)
    cols = [_solve(a, [1.0 if i == j else 0.0 for i in range(n)]) for j in range(n)]
    return [[cols[j][i] for j in range(n)] for i in range(n)]


def ols_hac(xs: list[list[float]], ys: list[float], lags: int | None = None) -> tuple[list[float], list[float]]:
    """Least squares of ys on the rows of xs (each row includes its own 1 for the intercept);
    returns (coefficients, Newey-West standard errors with `lags` lags, default ~ n^(1/4) * 4)."""
    n, p = len(xs), len(xs[0])
    # Scale columns for conditioning; undo at the end.
    scale = [max(abs(r[j]) for r in xs) or 1.0 for j in range(p)]
    x = [[r[j] / scale[j] for j in range(p)] for r in xs]
    xtx = [[sum(r[i] * r[j] for r in x) for j in range(p)] for i in range(p)]
    xty = [sum(r[i] * y for r, y in zip(x, ys)) for i in range(p)]
    beta = _solve(xtx, xty)
    resid = [y - sum(b * v for b, v in zip(beta, r)) for r, y in zip(x, ys)]
    if lags is None:
        lags = max(1, int(4 * (n / 100) ** (2 / 9)))
    s = [[0.0] * p for _ in range(p)]
    for lag in range(lags + 1):
        w = 1.0 if lag == 0 else 1.0 - lag / (lags + 1)
        for t in range(lag, n):
            for i in range(p):
                ui = x[t][i] * resid[t]
                for j in range(p):
                    v = ui * x[t - lag][j] * resid[t - lag]
                    s[i][j] += w * v if lag == 0 else w * (v + x[t - lag][i] * resid[t - lag] * x[t][j] * resid[t])
    inv = _inverse(xtx)
    cov = [[sum(inv[i][k] * s[k][l] * inv[l][j] for k in range(p) for l in range(p)) for j in range(p)]
           for i in range(p)]
    cov = [[cov[i][j] * n / max(1, n - p) for j in range(p)] for i in range(p)]
    se = [max(cov[i][i], 0.0) ** 0.5 / scale[i] for i in range(p)]
    return [beta[i] / scale[i] for i in range(p)], se


# ----------------------------------------------------------------------------------------- load


def _worker(addr, bodies: list[bytes], counter, errors, stop, rate: float):
    """One keep-alive connection; counts answered requests (any status) and non-200s."""
    reqs = [harness.build_request("POST", "/v1/rank", b, {"Content-Type": "application/json"}, addr=addr)
            for b in bodies]
    c = None
    i = 0
    next_at = time.monotonic()
    local = 0
    while not stop.is_set():
        if rate > 0:
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + 1.0 / rate, time.monotonic() - 1.0)
        try:
            c = c or harness.Http(addr, timeout=30)
            c.send(reqs[i % len(reqs)])
            r = c.read_response()
            if r.status != 200:
                with errors.get_lock():
                    errors.value += 1
        except (OSError, harness.ConnClosed, TimeoutError):
            with errors.get_lock():
                errors.value += 1
            if c:
                c.close()
            c = None
            time.sleep(0.05)
            continue
        i += 1
        local += 1
        if local == 50:
            with counter.get_lock():
                counter.value += local
            local = 0
    with counter.get_lock():
        counter.value += local
    if c:
        c.close()


def soak(bin_path: Path, requests: int = 1_000_000, swap_seconds: float = 30, scrape_seconds: float = 0,
         workers: int = 3, rate: float = 0, items: int = 20_000, candidates: int = 100, sample_seconds: float = 1,
         idle_swaps: int = 5, warmup_fraction: float = 0.2, out=print, scratch: Path | None = None,
         max_seconds: float = 3600) -> dict:
    scratch = scratch or Path(tempfile.mkdtemp(prefix="prerank-soak-"))
    ctx = Context(bin_path, scratch, long=True)
    try:
        return _soak(ctx, requests, swap_seconds, scrape_seconds, workers, rate, items, candidates,
                     sample_seconds, idle_swaps, warmup_fraction, out, max_seconds)
    finally:
        ctx.cleanup()


def _soak(ctx, requests, swap_seconds, scrape_seconds, workers, rate, items, candidates, sample_seconds,
          idle_swaps, warmup_fraction, out, max_seconds) -> dict:
    src = ctx.snaps.source(items, seed=9)
    ids = ctx.snaps.ids(src)
    root = ctx.snaps.new_root("soak", src)
    s = Server(ctx, "soak", root, ["--poll-seconds", "1"]).start()
    rng = random.Random(1)
    bodies = [json.dumps({"user": {"id": rng.randrange(1, 10**6),
                                   "features": {"age": rng.randrange(16, 70), "gender": rng.choice("fm")},
                                   "behaviors": [{"item_id": x, "action": "click", "seconds_ago": 60 * j}
                                                 for j, x in enumerate(rng.sample(ids, 5))]},
                          "candidates": rng.sample(ids, min(candidates, len(ids))), "k": 10}).encode()
              for _ in range(32)]
    counter = mp.Value("q", 0)
    errors = mp.Value("q", 0)
    stop = mp.Event()
    procs = [mp.Process(target=_worker, args=(s.addr, bodies[i::workers] or bodies, counter, errors, stop,
                                              rate / workers if rate else 0), daemon=True)
             for i in range(workers)]
    samples: list[dict] = []
    swaps = {"n": 0, "failed": 0}
    done = threading.Event()
    scrapes = {"n": 0}
    out(f"soak: {requests} requests, swap every {swap_seconds:g} s, "
        f"{'scrape every %g s' % scrape_seconds if scrape_seconds else 'no scraper'}, {workers} workers"
        f"{', %g req/s' % rate if rate else ''}; server pid {s.pid} on {s.addr[0]}:{s.addr[1]}, {items} items")

    def sample():
        st = proc_status(s.pid)
        if st:
            samples.append({"t": time.monotonic() - t0, "requests": counter.value, "swaps": swaps["n"],
                            "rss": st.get("VmRSS", 0), "anon": st.get("RssAnon", 0), "file": st.get("RssFile", 0)})

    def sampler():
        while not done.is_set():
            sample()
            done.wait(sample_seconds)

    def swap_once():
        if s.swap(src, timeout=60):
            swaps["n"] += 1
        else:
            swaps["failed"] += 1

    def publisher():
        while not done.is_set():
            if done.wait(swap_seconds):
                break
            swap_once()

    def scraper():
        while not done.wait(scrape_seconds):
            try:
                s.get("/metrics", timeout=30)
                scrapes["n"] += 1
            except (OSError, harness.ConnClosed, TimeoutError):
                pass

    t0 = time.monotonic()
    threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=publisher, daemon=True)]
    if scrape_seconds:
        threads.append(threading.Thread(target=scraper, daemon=True))
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    last_report = 0.0
    while counter.value < requests and time.monotonic() - t0 < max_seconds:
        time.sleep(0.5)
        now = time.monotonic() - t0
        if now - last_report >= 30:
            last_report = now
            st = proc_status(s.pid)
            out(f"  {now:6.0f} s  {counter.value:>9} requests ({counter.value / now:,.0f}/s)  swaps {swaps['n']}  "
                f"RssAnon {st.get('RssAnon', 0) / 2**20:.1f} MiB  VmRSS {st.get('VmRSS', 0) / 2**20:.1f} MiB  "
                f"errors {errors.value}")
        if not s.alive():
            break
    stop.set()
    for p in procs:
        p.join(10)
    load_seconds = time.monotonic() - t0
    served = counter.value
    # Swaps with no traffic: they separate the per-swap term from the per-request one.
    for _ in range(idle_swaps):
        time.sleep(min(3.0, swap_seconds))
        swap_once()
        sample()
    time.sleep(2 * sample_seconds)
    sample()
    done.set()
    for t in threads:
        t.join(5)

    res = {"requests": served, "errors": errors.value, "load_seconds": round(load_seconds, 1),
           "rate": round(served / load_seconds, 1), "swaps": swaps["n"], "failed_swaps": swaps["failed"],
           "scrape_seconds": scrape_seconds, "scrapes": scrapes["n"], "server_alive": s.alive(), "items": items,
           "candidates": candidates, "workers": workers,
           "series": [[round(p["t"], 1), p["requests"], p["swaps"], p["anon"], p["rss"], p["file"]] for p in samples]}
    fit(res, warmup_fraction)
    report(res, out)
    return res


SERIES_COLUMNS = ("t", "requests", "swaps", "anon", "rss", "file")


def fit(res: dict, warmup_fraction: float) -> dict:
    """Adds the fits of RssAnon and VmRSS on (requests, swaps) over the samples after the warm-up."""
    samples = [dict(zip(SERIES_COLUMNS, row)) for row in res["series"]]
    pts = [p for p in samples if p["requests"] >= warmup_fraction * res["requests"]]
    res["warmup_fraction"] = warmup_fraction
    res["samples"] = len(pts)
    for key in ("anon", "rss"):
        res.pop(key, None)
        if len(pts) >= 8 and len({p["swaps"] for p in pts}) > 1:
            beta, se = ols_hac([[1.0, p["requests"], p["swaps"]] for p in pts], [float(p[key]) for p in pts])
            res[key] = {"bytes_per_request": beta[1], "bytes_per_request_se": se[1],
                        "bytes_per_swap": beta[2], "bytes_per_swap_se": se[2],
                        "start_mib": pts[0][key] / 2**20, "end_mib": pts[-1][key] / 2**20}
    return res


def report(res: dict, out=print):
    out(f"soak done: {res['requests']} requests in {res['load_seconds']} s ({res['rate']:,.0f}/s), "
        f"{res['errors']} non-200/errors, {res['swaps']} swaps ({res['failed_swaps']} never went live), "
        f"{'%d scrapes' % res['scrapes'] if res['scrape_seconds'] else 'no scraper'}, {res['samples']} samples "
        f"fitted (after the first {res['warmup_fraction']:.0%} of the requests)")
    for key, label in (("anon", "RssAnon"), ("rss", "VmRSS")):
        f = res.get(key)
        if not f:
            out(f"  {label}: too few samples for a fit")
            continue
        out(f"  {label}: {f['start_mib']:.1f} -> {f['end_mib']:.1f} MiB;  "
            f"{f['bytes_per_request']:.2f} +- {f['bytes_per_request_se']:.2f} B/request,  "
            f"{f['bytes_per_swap'] / 1024:.1f} +- {f['bytes_per_swap_se'] / 1024:.1f} KiB/swap  (fit +- 1 HAC s.e.)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="prerank binary (default: $PRERANK_BIN, else target/debug/prerank)")
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--swap-seconds", type=float, default=30)
    ap.add_argument("--scrape-seconds", type=float, default=0, help="GET /metrics this often (0: no scraper)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0, help="total requests/s (0: as fast as answered)")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--sample-seconds", type=float, default=1)
    ap.add_argument("--idle-swaps", type=int, default=5)
    ap.add_argument("--max-seconds", type=float, default=3600, help="stop the load after this long regardless")
    ap.add_argument("--max-bytes-per-request", type=float, help="exit 1 if the RssAnon slope is above this")
    ap.add_argument("--max-bytes-per-swap", type=float, help="exit 1 if the RssAnon per-swap slope is above this")
    ap.add_argument("--warmup-fraction", type=float, default=0.2,
                    help="leave the first fraction of the requests out of the fit (allocator warm-up)")
    ap.add_argument("--json", help="write the result (with every sample) to this file")
    ap.add_argument("--refit", metavar="JSON", help="no run: fit the samples of an earlier --json again")
    args = ap.parse_args()
    if args.refit:
        res = fit(json.loads(Path(args.refit).read_text()), args.warmup_fraction)
        report(res)
    else:
        res = soak(harness.find_binary(args.bin), args.requests, args.swap_seconds, args.scrape_seconds,
                   args.workers, args.rate, args.items, args.candidates, args.sample_seconds, args.idle_swaps,
                   args.warmup_fraction, max_seconds=args.max_seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(res))
    bad = []
    f = res.get("anon") or {}
    if args.max_bytes_per_request is not None and f.get("bytes_per_request", 0) > args.max_bytes_per_request:
        bad.append(f"{f['bytes_per_request']:.1f} B/request > {args.max_bytes_per_request:g}")
    if args.max_bytes_per_swap is not None and f.get("bytes_per_swap", 0) > args.max_bytes_per_swap:
        bad.append(f"{f['bytes_per_swap']:.0f} B/swap > {args.max_bytes_per_swap:g}")
    if not res["server_alive"]:
        bad.append("the server died")
    for b in bad:
        print("FAIL:", b)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
