"""Test harness: real ``prerank serve`` processes on free ports, and snapshot fixtures.

One place for what every test module needs (text-embeddings-inference's ``tests/common.rs`` is the
model): the binary (``PRERANK_BIN``, else the workspace's ``target/debug/prerank``), a server
started on ``127.0.0.1:0`` whose bound address is read from its JSON log, readiness waits, and
the student snapshot the tests serve, written by this package's own exporter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from prerank.export import Items, UserTower, expected_tensors, write_snapshot

REPO = Path(__file__).resolve().parents[3]
IN_CI = bool(os.environ.get("CI"))
START_TIMEOUT = 120.0  # a debug binary on a busy 2-core machine


def prerank_bin() -> Path:
    """The server binary, or a skip (outside CI) / failure (in CI) saying how to get one."""
    explicit = os.environ.get("PRERANK_BIN")
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(explicit) if explicit else target / "debug" / "prerank"
    if not path.is_file():
        msg = f"no prerank binary at {path}: run `cargo build` (or set PRERANK_BIN)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``prerank ARGS``; output captured."""
    return subprocess.run(
        [str(prerank_bin()), *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )


class Server:
    """One ``prerank serve`` process on a free loopback port (stopped with SIGTERM)."""

    def __init__(self, root: Path, *args: str, log_dir: Path, name: str) -> None:
        self.root = root
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                str(prerank_bin()),
                "serve",
                "--model-root",
                str(root),
                "--bind",
                "127.0.0.1:0",
                "--log-json",
                "--poll-seconds",
                "1",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.addr = self._wait_for_address()
        self.url = f"http://{self.addr}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_address(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"prerank listening"' in line:
                    return str(json.loads(line)["fields"]["addr"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"prerank serve exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"prerank serve did not start listening:\n{self.log()}")

    def wait_live(self, *models: str) -> None:
        """Until every model in ``models`` has a live version."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            doc = httpx.get(f"{self.url}/v1/models", timeout=5).json()
            live = {m["name"] for m in doc["models"] if m.get("live")}
            if set(models) <= live:
                return
            time.sleep(0.1)
        raise RuntimeError(f"models {models} never went live:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# The tests' student: every feature kind, item attributes from the snapshot, extras, 4 heads.
def _hashed(name: str, buckets: int, dim: int) -> dict[str, Any]:
    return {"name": name, "kind": "hashed", "buckets": buckets, "dim": dim}


def _bucketized(name: str, bounds: list[float], dim: int) -> dict[str, Any]:
    return {"name": name, "kind": "bucketized", "boundaries": bounds, "dim": dim}


FEATURES: dict[str, Any] = {
    "user": [_hashed("user_id", 5000, 8), _bucketized("age", [18, 25, 35, 50], 4), _hashed("gender", 4, 2)],
    "behavior": {
        "max_len": 10,
        "item": [_hashed("item_id", 6000, 8), _hashed("category", 40, 4), _hashed("shop", 200, 4)],
        "extras": [
            _hashed("action", 6, 2),
            _bucketized("seconds_ago", [60, 3600, 86400], 4),
            _bucketized("dwell_seconds", [1, 10, 60], 2),
        ],
    },
}
ARCHITECTURE: dict[str, Any] = {
    "kind": "pfd-user-tower-v1",
    "d_model": 24,
    "heads": 4,
    "ffn_dim": 32,
    "ffn_activation": "relu",
    "layer_norm_eps": 1e-5,
    "tower_widths": [48, 32, 16],
    "leaky_relu_slope": 0.01,
}


def student(seed: int, count: int = 3000) -> tuple[UserTower, Items]:
    """A random-init student (reproducible from ``seed``) over ``count`` items."""
    rng = np.random.default_rng(seed)
    weights = {
        name: rng.normal(0, 0.5 * shape[-1] ** -0.5 if len(shape) > 1 else 0.05, shape)
        for name, shape in expected_tensors(FEATURES, ARCHITECTURE).items()
    }
    for name, shape in expected_tensors(FEATURES, ARCHITECTURE).items():
        if name.startswith("emb."):
            weights[name] = rng.normal(0, 0.4, shape)
        elif name.endswith(("ln1.weight", "ln2.weight")):
            weights[name] = 1 + rng.normal(0, 0.05, shape)
    vectors = rng.normal(size=(count, 16))
    items = Items(
        ids=rng.choice(10**12, size=count, replace=False).astype(np.uint64) + 1,
        vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        attributes={"category": rng.integers(0, 40, size=count), "shop": rng.integers(0, 200, size=count)},
    )
    return UserTower(FEATURES, ARCHITECTURE, weights), items


def publish_student(
    root: Path, model: str, version: int = 1, *, seed: int = 1, dtypes: Sequence[str] = ("f32", "f16", "int8")
) -> dict[str, Any]:
    tower, items = student(seed)
    return write_snapshot(
        root / model / str(version),
        tower,
        items,
        dtypes=dtypes,
        seed=seed,
        provenance={"producer": "clients/python tests", "seed": seed},
    )


def rank_json(server_url: str, body: Mapping[str, Any], **headers: str) -> httpx.Response:
    """``POST /v1/rank`` with a JSON body built by the test itself (not by the client)."""
    return httpx.post(f"{server_url}/v1/rank", json=body, headers=headers, timeout=30)


class ScriptedServer:
    """A tiny HTTP server that answers from a script, for what a real prerank server cannot be made
    to send (429, a 500, a proxy's 502 page, a response that never comes). Records every request's
    headers."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[dict[str, str]] = []
        #: While set, requests are held (no response) until the client gives up.
        self.hang = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                owner.requests.append({k.lower(): v for k, v in self.headers.items()})
                if owner.hang.is_set():
                    time.sleep(3)
                    return
                status, headers, body = owner.script.pop(0) if owner.script else (200, {}, b"")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, status: int, body: bytes | Mapping[str, Any] = b"", **headers: str) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
        self.script.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, body))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
