"""Long mode only: the memory soak (issue 15, finding 2), with and without a scraper. Sizes from the
environment: HOSTILE_SOAK_REQUESTS (default 10^6), HOSTILE_SOAK_SWAP_SECONDS (30),
HOSTILE_SOAK_WORKERS (3), HOSTILE_SOAK_RATE (0: as fast as answered). Use a release binary."""

from __future__ import annotations

import os

from harness import Check, Context, case
from soak import soak

MAX_BYTES_PER_REQUEST = 2.0
MAX_BYTES_PER_SWAP = 32 * 1024


def _soak(ctx: Context, check: Check, scrape_seconds: float):
    res = soak(ctx.bin, requests=int(os.environ.get("HOSTILE_SOAK_REQUESTS", 1_000_000)),
               swap_seconds=float(os.environ.get("HOSTILE_SOAK_SWAP_SECONDS", 30)),
               scrape_seconds=scrape_seconds, workers=int(os.environ.get("HOSTILE_SOAK_WORKERS", 3)),
               rate=float(os.environ.get("HOSTILE_SOAK_RATE", 0)),
               out=lambda line: (print(line, flush=True), check.note(line)),
               scratch=ctx.scratch / f"soak-{scrape_seconds:g}")
    f = res.get("anon")
    if not check.expect(f is not None, "too few samples for a fit"):
        return
    check.expect(res["server_alive"], "the server died during the soak")
    check.expect(res["errors"] == 0, f"{res['errors']} non-200 responses or errors during the soak")
    check.expect(f["bytes_per_request"] < MAX_BYTES_PER_REQUEST,
                 f"RssAnon {f['bytes_per_request']:.1f} +- {f['bytes_per_request_se']:.1f} B/request over "
                 f"{res['requests']} requests (bound {MAX_BYTES_PER_REQUEST:g}; {f['start_mib']:.1f} -> "
                 f"{f['end_mib']:.1f} MiB)")
    check.expect(f["bytes_per_swap"] < MAX_BYTES_PER_SWAP,
                 f"RssAnon {f['bytes_per_swap'] / 1024:.0f} +- {f['bytes_per_swap_se'] / 1024:.0f} KiB/swap over "
                 f"{res['swaps']} swaps (bound {MAX_BYTES_PER_SWAP // 1024} KiB)")


@case("soak.rss_no_scraper", finding=2, long=True, budget=1800,
      expected=f"10^6 requests, a swap every 30 s, no scraper: RssAnon slope < {MAX_BYTES_PER_REQUEST:g} B/request "
               f"and < {MAX_BYTES_PER_SWAP // 1024} KiB/swap, zero errors (flat within noise)")
def _(ctx, check):
    _soak(ctx, check, 0)


@case("soak.rss_with_scraper", long=True, budget=1800,
      expected=f"the same with /metrics scraped every 15 s: slope < {MAX_BYTES_PER_REQUEST:g} B/request and "
               f"< {MAX_BYTES_PER_SWAP // 1024} KiB/swap")
def _(ctx, check):
    _soak(ctx, check, 15)
