"""What held in issue 15's campaign, kept as regressions (class `held`): publishes under load with
zero non-2xx, RSS flat across swaps when scraped, slowloris headers, 2,000 idle keep-alive
connections, SIGTERM/SIGINT drain, admin token checks and path traversal."""

from __future__ import annotations

import json
import os
import resource
import signal
import threading
import time

from harness import (ADMIN_TOKEN, MODEL, CaseSkipped, Check, ConnClosed, Context, Http, build_request, case,
                     nan_in_row, one_request, rank_body)

SETTLE_S = 15.0


class Load:
    """`workers` keep-alive clients sending rank requests until stopped; every status counted."""

    def __init__(self, addr, body: bytes, workers: int = 2):
        self.addr = addr
        self.req = build_request("POST", "/v1/rank", body, {"Content-Type": "application/json"}, addr=addr)
        self.stop = threading.Event()
        self.statuses: dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _count(self, k: str):
        with self.lock:
            self.statuses[k] = self.statuses.get(k, 0) + 1

    def _run(self):
        c = None
        while not self.stop.is_set():
            try:
                c = c or Http(self.addr, timeout=10)
                c.send(self.req)
                r = c.read_response()
                self._count(str(r.status) if r.status == 200 else f"{r.status} {r.code}")
            except (OSError, ConnClosed, TimeoutError) as e:
                self._count(type(e).__name__)
                if c:
                    c.close()
                c = None
        if c:
            c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def non_2xx(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.statuses.items() if k != "200"}

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())


@case("held.publishes_under_load_zero_non2xx", background=True, budget=150,
      expected="under continuous load: good publishes, NaN tau, NaN inside a row, mismatched dims, a directory "
               "copied file by file, chmod 000, the model directory replaced by a file: zero non-2xx, "
               "zero transport errors; the copied version ends up live")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source()
    s = ctx.server("held-publish", src, args=["--poll-seconds", "1"])
    md = s.root / MODEL
    body = json.dumps(rank_body(ctx.snaps.ids(src), n=30, k=5)).encode()

    with Load(s.addr, body) as load:
        check.expect(s.swap(src, 2, SETTLE_S) == 2, "good v2 never went live")
        # NaN tau: the manifest text says NaN (not valid JSON)
        tmp = ctx.snaps.stage(src, md, 3)
        mp = tmp / "manifest.json"
        mp.write_text(mp.read_text().replace('"tau": 5.0', '"tau": NaN'))
        ctx.snaps.rename_in(tmp, md / "3")
        ctx.snaps.publish_by_hand(src, md, 4, nan_in_row)
        ctx.snaps.publish_by_hand(src, md, 5, lambda m, d: m["items"].__setitem__("dim", 64))
        # chmod 000 on the weights of v6 (root reads it anyway; either outcome is fine, no non-2xx)
        ctx.snaps.publish_by_hand(src, md, 6, lambda m, d: os.chmod(d / "user_tower.safetensors", 0))
        time.sleep(2)
        # v7: created file by file, slowly
        d7 = md / "7"
        d7.mkdir()
        for f in sorted(src.iterdir(), key=lambda p: p.name == "manifest.json"):
            data = f.read_bytes()
            if f.name == "manifest.json":
                m = json.loads(data)
                m["version"] = 7
                data = json.dumps(m).encode()
            with open(d7 / f.name, "wb") as out:
                half = len(data) // 2
                out.write(data[:half])
                out.flush()
                time.sleep(0.4)
                out.write(data[half:])
            time.sleep(0.3)
        check.expect(s.wait_live(7, SETTLE_S), f"v7 copied file by file never went live (state "
                                       f"{(s.version_state(7) or {}).get('state')!r})")
        # The model directory replaced by a file, then restored.
        aside = s.root / ".m-aside"
        os.rename(md, aside)
        (s.root / MODEL).write_text("not a directory\n")
        time.sleep(3)
        os.remove(s.root / MODEL)
        os.rename(aside, md)
        time.sleep(2)
    bad = load.non_2xx()
    check.note(f"{load.total()} requests: {load.statuses}")
    check.expect(load.total() > 50, f"only {load.total()} requests ran")
    check.expect(not bad, f"non-2xx / errors under publishes: {bad} of {load.total()}")
    check.expect(s.alive(), "server died")
    states = {v["version"]: v["state"] for v in s.model().get("versions", [])}
    check.note(f"states: {states}")
    for v in (3, 4, 5):
        check.expect(states.get(v) not in ("available",), f"bad v{v} is {states.get(v)!r}")


@case("held.rss_flat_across_swaps_scraped", background=True, budget=150,
      expected="12 swaps of a 5,000-item snapshot with /metrics scraped after each: RSS (anon + file) after the "
               "last within 12 MiB of after the 3rd (old versions' memory released)")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source(5000, seed=4)
    s = ctx.server("held-rss", src, args=["--poll-seconds", "1"])
    body = rank_body(ctx.snaps.ids(src), n=50, k=5)
    rss = []
    for v in range(2, 14):
        if not check.expect(s.swap(src, v, SETTLE_S) == v, f"v{v} never went live"):
            return
        for _ in range(20):
            s.rank(body)
        s.metrics()
        time.sleep(0.5)  # the reaper drops the replaced snapshot a few times a second
        r = s.rss()
        rss.append(r["RssAnon"] + r["RssFile"])
    check.note("RSS after each swap (MiB): " + " ".join(f"{x / 2**20:.1f}" for x in rss))
    check.expect(rss[-1] - rss[2] < (12 << 20), f"RSS grew {(rss[-1] - rss[2]) / 2**20:.1f} MiB over "
                                                f"{len(rss) - 3} swaps with scrapes")


@case("held.slowloris_headers_closed", background=True, budget=40,
      expected="a request head trickled a byte a second is closed after the 10 s header timeout (between "
               "8 and 25 s); normal requests are served meanwhile")
def _(ctx: Context, check: Check):
    s = ctx.shared()
    c = Http(s.addr, timeout=30)
    head = build_request("POST", "/v1/rank", None, {"Content-Type": "application/json",
                                                    "X-Padding": "a" * 100}, addr=s.addr)
    t = time.monotonic()
    closed_at = None
    served = 0
    for i in range(len(head) - 2):
        try:
            c.send(head[i:i + 1])
        except OSError:
            closed_at = time.monotonic() - t
            break
        if c.closed_by_peer(1.0):
            closed_at = time.monotonic() - t
            break
        if i % 5 == 0 and s.get("/healthz").status == 200:
            served += 1
        if time.monotonic() - t > 30:
            break
    c.close()
    check.expect(closed_at is not None and 8 <= closed_at <= 25,
                 f"slow head closed after {closed_at if closed_at is None else round(closed_at, 1)} s "
                 f"(expected 8..25 s)")
    check.expect(served >= 1, "no normal request was served while the slow head ran")


@case("held.idle_keepalive_2000", background=True, budget=120,
      expected="2,000 keep-alive connections each served once and left idle: all 2,000 got 200, and a rank "
               "request on a new connection still gets 200 within 5 s")
def _(ctx: Context, check: Check):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2200:
        raise CaseSkipped(f"RLIMIT_NOFILE is {soft} (hostile.py raises it to the hard limit; 2,200 needed)")
    s = ctx.server("held-idle")
    body = json.dumps(rank_body(ctx.shared_ids(), n=20, k=5)).encode()
    conns, ok, errors = [], 0, {}
    for _ in range(2000):
        try:
            c = Http(s.addr, timeout=10)
            r = c.request("GET", "/healthz")
            ok += r.status == 200
            conns.append(c)
        except (OSError, ConnClosed, TimeoutError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    r = s.rank(body, timeout=10)
    check.expect(ok == 2000, f"{ok} of 2000 keep-alive connections served (errors {errors})")
    check.status(r, 200, label="rank with 2,000 idle connections open")
    check.expect(r.elapsed < 5.0, f"rank took {r.elapsed:.1f} s with 2,000 idle connections")
    check.expect(s.alive(), "server died")
    for c in conns:
        c.close()


def _drain(ctx: Context, check: Check, sig: int):
    s = ctx.server(f"held-drain-{sig}")
    body = json.dumps(rank_body(ctx.shared_ids(), n=20, k=5)).encode()
    t = time.monotonic()
    probe = {}

    def signal_then_probe():
        os.kill(s.pid, sig)
        time.sleep(0.3)
        try:
            probe["r"] = one_request(s.addr, "GET", "/readyz", timeout=2)
        except (OSError, ConnClosed, TimeoutError):
            pass

    r = s.rank_across(body, signal_then_probe, split=15)
    if check.expect(not isinstance(r, str), f"request in flight when the signal came: {r}"):
        check.status(r, 200, label="request in flight when the signal came")
    ready = probe.get("r")
    if ready is not None:
        check.status(ready, 503, "shutting_down", label="/readyz while draining")
    try:
        code = s.proc.wait(25)
    except Exception:  # noqa: BLE001
        code = None
    check.expect(code == 0, f"exit status {code} {time.monotonic() - t:.1f} s after the signal (expected 0)")


@case("held.sigterm_drains_exit0", background=True,
      expected="SIGTERM: /readyz 503 shutting_down, the in-flight request completes with 200, exit 0")
def _(ctx, check):
    _drain(ctx, check, signal.SIGTERM)


@case("held.sigint_drains_exit0", background=True,
      expected="SIGINT: the in-flight request completes with 200, exit 0")
def _(ctx, check):
    _drain(ctx, check, signal.SIGINT)


@case("held.admin_token_checks",
      expected="admin calls without the exact bearer token are 401 unauthorized with WWW-Authenticate (no "
               "header, wrong token, token prefix, token + suffix, Basic, empty, unknown route); with it 200")
def _(ctx, check):
    s = ctx.shared()
    p = "/admin/v1/models"
    tries = [("no header", None, "Bearer", p), ("wrong token", "nope", "Bearer", p),
             ("prefix", ADMIN_TOKEN[:-1], "Bearer", p), ("suffix", ADMIN_TOKEN + "x", "Bearer", p),
             ("basic", ADMIN_TOKEN, "Basic", p), ("empty", "", "Bearer", p),
             ("unknown route", None, "Bearer", "/admin/v1/nope"), ("double space", " " + ADMIN_TOKEN, "Bearer", p)]
    for label, tok, scheme, path in tries:
        r = s.admin("GET", path, token=tok, scheme=scheme)
        check.status(r, 401, "unauthorized", label=label)
        check.expect(r.header("www-authenticate") is not None, f"{label}: no WWW-Authenticate")
    check.status(s.admin("GET", p), 200, label="right token")


@case("held.admin_path_traversal",
      expected="model names and versions in admin paths are validated: .., %2F, .hidden, 01, 0, -1 -> 400 "
               "invalid_name (404 when the path matches no route); never a file outside the root")
def _(ctx, check):
    s = ctx.shared()
    for path in ["/admin/v1/models/..", "/admin/v1/models/..%2F..%2Fetc", "/admin/v1/models/.hidden",
                 "/admin/v1/models/%2e%2e", f"/admin/v1/models/{MODEL}/versions/01/pin",
                 f"/admin/v1/models/{MODEL}/versions/0/pin", f"/admin/v1/models/{MODEL}/versions/-1/load",
                 f"/admin/v1/models/{MODEL}/versions/1e3/load", "/admin/v1/models/a%00b",
                 "/admin/v1/models/" + "a" * 100]:
        method = "POST" if path.endswith(("pin", "load")) else "GET"
        r = s.admin(method, path)
        check.expect(r.status in (400, 404) and (r.status != 400 or r.code == "invalid_name"),
                     f"{method} {path}: expected 400 invalid_name (or 404); got {r.short()}")
    check.expect((s.live() or {}).get("version") == 1, "the shared model stopped serving v1")

