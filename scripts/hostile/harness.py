"""Shared machinery of the hostile-client suite and the memory soak (Python 3.11 standard library only).

- `Http`: a raw-socket HTTP/1.1 client. Raw because half the cases are things a normal client
  library refuses to do or hides: a Content-Length that lies, a body trickled a byte at a time, a
  stalled body, an unknown Transfer-Encoding, pipelining, header floods, half-closed connections,
  responses that are never read.
- `Server`: one real `prerank serve` process on a free loopback port with its own scratch model
  root, log file and (optionally) admin listener; RSS from /proc; SIGTERM on stop.
- `Snapshots`: synthetic snapshots made once with `prerank synth`, published with
  `prerank publish` or by hand (copy + atomic rename), and the mutations the cases need
  (manifest edits, a NaN inside a row with a matching checksum).
- `Case` / `case()`: the registry of cases; `Check` collects what a case expected and what it saw.

Nothing here knows about a particular finding; the cases are in cases_*.py.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[2]
MODEL = "m"
ADMIN_TOKEN = "hostile-suite-admin-token-0123456789"


# --------------------------------------------------------------------------------------------- binary


def find_binary(explicit: str | None = None) -> Path:
    """`--bin`, else PRERANK_BIN, else the cargo target dir's debug binary (what `cargo test` builds)."""
    cand = explicit or os.environ.get("PRERANK_BIN")
    if cand:
        p = Path(cand)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        p = target / "debug" / "prerank"
    if not p.is_file() or not os.access(p, os.X_OK):
        raise SystemExit(
            f"prerank binary not found at {p}: build it (cargo build --bin prerank) or set PRERANK_BIN"
        )
    return p.resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ raw HTTP


class ConnClosed(Exception):
    """The server closed (or reset) the connection before a complete response."""


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float  # seconds from the first byte sent (or the read started) to the full response

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def code(self) -> str | None:
        j = self.json()
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return j["error"].get("code")
        return None

    @property
    def message(self) -> str:
        j = self.json()
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return str(j["error"].get("message", ""))
        return ""

    def short(self) -> str:
        """What a failure line shows: status, code or body start, time."""
        what = self.code or self.body[:80].decode("utf-8", "replace") or "(empty body)"
        msg = f": {self.message[:120]}" if self.message else ""
        return f"{self.status} {what}{msg} in {self.elapsed:.2f} s"


class Http:
    """One client connection. `request` writes a request and reads one response; the lower-level
    `send` / `read_response` let a case interleave whatever it wants."""

    def __init__(self, addr: tuple[str, int], timeout: float = 10.0):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete response in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_response(self, timeout: float | None = None, head_request: bool = False) -> Response:
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else self.timeout)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise ConnClosed(f"closed after {len(self.buf)} bytes of a response head")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        hd = {k: v for k, v in headers}
        body = b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in hd.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill(deadline):
                        raise ConnClosed("closed inside a chunked response")
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._fill(deadline):
                        raise ConnClosed("closed inside a chunk")
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    break
        elif "content-length" in hd:
            n = int(hd["content-length"])
            while len(self.buf) < n:
                if not self._fill(deadline):
                    raise ConnClosed(f"closed after {len(self.buf)} of {n} body bytes")
            body, self.buf = self.buf[:n], self.buf[n:]
        else:
            while self._fill(deadline):
                pass
            body, self.buf = self.buf, b""
        return Response(status, reason, headers, body, time.monotonic() - started)

    def closed_by_peer(self, within: float) -> bool:
        """True if the server closes the connection within `within` seconds (data read is dropped)."""
        deadline = time.monotonic() + within
        try:
            while True:
                if not self._fill(deadline):
                    return True
        except (TimeoutError, socket.timeout):
            return False
        except OSError:
            return True

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        content_length: bool = True,
        timeout: float | None = None,
        version: str = "HTTP/1.1",
    ) -> Response:
        self.send(build_request(method, path, body, headers, content_length, version, self.addr))
        return self.read_response(timeout, head_request=(method == "HEAD"))


def build_request(method, path, body=None, headers=None, content_length=True, version="HTTP/1.1",
                  addr=("127.0.0.1", 0)) -> bytes:
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if "host" not in names and version == "HTTP/1.1":
        hs.insert(0, ("Host", f"{addr[0]}:{addr[1]}"))
    if body is not None and content_length and "content-length" not in names \
            and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def chunked(body: bytes, size: int = 1 << 14) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def one_request(addr, method, path, body=None, headers=None, timeout=10.0, **kw) -> Response:
    with Http(addr, timeout) as c:
        return c.request(method, path, body, headers, timeout=timeout, **kw)


# ------------------------------------------------------------------------------------------ processes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM of a process, in bytes (empty if it is gone)."""
    out = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"):
            parts = v.split()
            out[k] = int(parts[0]) * (1024 if k != "Threads" else 1)
    return out


class Server:
    """One `prerank serve` process on 127.0.0.1:<free port> over `root` (a scratch model root)."""

    def __init__(self, ctx: "Context", name: str, root: Path, args: Iterable[str] = (),
                 env: dict[str, str] | None = None, admin: bool = False,
                 token: str | None = ADMIN_TOKEN):
        self.ctx = ctx
        self.name = name
        self.root = root
        self.port = free_port()
        self.addr = ("127.0.0.1", self.port)
        self.admin_addr = ("127.0.0.1", free_port()) if admin else None
        self.args = ["serve", "--model-root", str(root), "--bind", f"127.0.0.1:{self.port}", *args]
        self.env = dict(os.environ)
        self.env.pop("PRERANK_ADMIN_TOKEN", None)
        self.env["RUST_LOG"] = self.env.get("RUST_LOG", "info")
        if self.admin_addr:
            self.args += ["--admin-bind", f"127.0.0.1:{self.admin_addr[1]}"]
            if token is not None:
                self.env["PRERANK_ADMIN_TOKEN"] = token
        self.env.update(env or {})
        self.log_path = ctx.scratch / f"server-{name}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> "Server":
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(self.ctx.bin), *self.args], env=self.env,
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.ctx.track(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server {self.name} exited ({self.proc.returncode}) before ready:\n"
                                   + self.log_tail())
            try:
                r = one_request(self.addr, "GET", "/readyz", timeout=2)
                if r.status == 200:
                    return
            except (OSError, ConnClosed, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server {self.name} not ready after {timeout:.0f} s:\n" + self.log_tail())

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(Exception):
            self.logf.close()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def rss(self) -> dict[str, int]:
        return proc_status(self.pid)

    # -- conveniences over one fresh connection each
    def get(self, path: str, headers=None, timeout: float = 10.0) -> Response:
        return one_request(self.addr, "GET", path, headers=headers, timeout=timeout)

    def post(self, path: str, body: bytes, headers=None, timeout: float = 10.0, **kw) -> Response:
        return one_request(self.addr, "POST", path, body, headers, timeout=timeout, **kw)

    def rank(self, req: dict | bytes, headers=None, timeout: float = 10.0) -> Response:
        body = req if isinstance(req, bytes) else json.dumps(req).encode()
        hs = {"Content-Type": "application/json"}
        hs.update(headers or {})
        return self.post("/v1/rank", body, hs, timeout)

    def rank_across(self, body: bytes, during: Callable[[], None], split: int = 10,
                    timeout: float = 8.0) -> "Response | str":
        """A rank request in flight while `during()` runs: the head and the first `split` body bytes
        are sent before it, the rest after. Returns the response, or what went wrong as text."""
        head = build_request("POST", "/v1/rank", None, {"Content-Type": "application/json",
                                                        "Content-Length": str(len(body))}, addr=self.addr)
        with Http(self.addr, timeout=timeout) as c:
            c.send(head + body[:split])
            time.sleep(0.2)
            during()
            try:
                c.send(body[split:])
                return c.read_response(timeout=timeout)
            except (OSError, ConnClosed, TimeoutError) as e:
                return f"{type(e).__name__} {e}"

    def models(self) -> dict:
        r = self.get("/v1/models")
        if r.status != 200:
            raise RuntimeError(f"/v1/models answered {r.short()}")
        return r.json()

    def model(self, name: str = MODEL) -> dict:
        for m in self.models()["models"]:
            if m["name"] == name:
                return m
        return {}

    def live(self, name: str = MODEL) -> dict | None:
        return self.model(name).get("live")

    def version_state(self, version: int, name: str = MODEL) -> dict | None:
        for v in self.model(name).get("versions", []):
            if v["version"] == version:
                return v
        return None

    def wait_live(self, version: int, timeout: float = 15.0, name: str = MODEL) -> bool:
        """Waits until `version` serves (by /v1/models); False if it does not within `timeout`."""
        return bool(wait_until(lambda: (self.live(name) or {}).get("version") == version, timeout, 0.1))

    def swap(self, src: Path, version: int | None = None, timeout: float = 15.0) -> int | None:
        """`prerank publish` of `src` as `version` (default: the next one) into this server's model
        directory, then waits for it to serve; returns the version, or None if it never went live."""
        v = int(self.ctx.snaps.publish(src, self.root / MODEL, version).name)
        return v if self.wait_live(v, timeout) else None

    def metrics(self) -> str:
        r = self.get("/metrics")
        return r.body.decode("utf-8", "replace") if r.status == 200 else ""

    def admin(self, method: str, path: str, token: str | None = ADMIN_TOKEN, scheme: str = "Bearer",
              headers=None, timeout: float = 30.0) -> Response:
        assert self.admin_addr, "server started without an admin listener"
        hs = dict(headers or {})
        if token is not None:
            hs["Authorization"] = f"{scheme} {token}"
        body = b"" if method == "POST" else None
        return one_request(self.admin_addr, method, path, body, hs, timeout=timeout)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest and rest[0] not in "{ ":
            continue
        lab = ""
        if rest.startswith("{"):
            lab, _, rest = rest[1:].partition("}")
        if labels and not all(f'{k}="{v}"' in lab for k, v in labels.items()):
            continue
        with contextlib.suppress(ValueError):
            total += float(rest.split()[0])
    return total


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# ------------------------------------------------------------------------------------------ snapshots


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(p: Path):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Snapshots:
    """Synthetic source snapshots, made once per run (`prerank synth`), keyed by (items, seed)."""

    def __init__(self, ctx: "Context"):
        self.ctx = ctx
        self.lock = threading.Lock()
        self.made: dict[tuple, Path] = {}
        self.ids_cache: dict[Path, list[int]] = {}

    def source(self, items: int = 500, seed: int = 1, model: str = MODEL, dtypes: str = "f32") -> Path:
        key = (items, seed, model, dtypes)
        with self.lock:
            if key not in self.made:
                dest = self.ctx.scratch / "src" / f"{model}-{items}-{seed}-{dtypes.replace(',', '_')}" / model / "1"
                if not dest.exists():
                    self.ctx.run_bin("synth", str(dest), "--items", str(items), "--seed", str(seed),
                                     "--golden", "1", "--model", model, "--dtypes", dtypes)
                self.made[key] = dest
            return self.made[key]

    def ids(self, src: Path) -> list[int]:
        with self.lock:
            if src not in self.ids_cache:
                out = self.ctx.run_bin("inspect", str(src), "--ids")
                self.ids_cache[src] = [int(x) for x in out.split()]
            return self.ids_cache[src]

    def new_root(self, name: str, *sources: Path, model: str = MODEL) -> Path:
        """A fresh model root with `sources` published as versions 1, 2, ..."""
        root = Path(tempfile.mkdtemp(prefix=f"root-{name}-", dir=self.ctx.scratch))
        for v, src in enumerate(sources, start=1):
            self.publish(src, root / model, v)
        return root

    def publish(self, src: Path, model_dir: Path, version: int | None = None, force_args=()) -> Path:
        args = ["publish", str(src), str(model_dir), *force_args]
        if version is not None:
            args += ["--version", str(version)]
        return Path(self.ctx.run_bin(*args).strip())

    def publish_rc(self, src: Path, model_dir: Path, version: int | None = None) -> subprocess.CompletedProcess:
        args = [str(self.ctx.bin), "publish", str(src), str(model_dir)]
        if version is not None:
            args += ["--version", str(version)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    @staticmethod
    def stage(src: Path, model_dir: Path, version: int, edit: Callable[[dict, Path], None] | None = None) -> Path:
        """Copies `src` into model_dir/.tmp-stage-<version>-<pid> with manifest version `version`,
        applies `edit(manifest, dir)`, fsyncs; returns the staged directory (not yet renamed)."""
        tmp = model_dir / f".tmp-stage-{version}-{os.getpid()}-{time.monotonic_ns()}"
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp)
        mpath = tmp / "manifest.json"
        m = json.loads(mpath.read_text())
        m["version"] = version
        if edit:
            edit(m, tmp)
        mpath.write_text(json.dumps(m, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        return tmp

    @staticmethod
    def rename_in(tmp: Path, dest: Path):
        os.rename(tmp, dest)
        fsync_dir(dest.parent)

    def publish_by_hand(self, src: Path, model_dir: Path, version: int,
                        edit: Callable[[dict, Path], None] | None = None) -> Path:
        """docs/operations.md 2.2: stage in the model directory, fsync, rename(2)."""
        tmp = self.stage(src, model_dir, version, edit)
        dest = model_dir / str(version)
        self.rename_in(tmp, dest)
        return dest


def nan_in_row(m: dict, d: Path):
    """Writes a NaN into the first row of the f32 vectors and fixes the file's checksum, so only the
    content check (finite, unit-norm rows) can catch it."""
    f = d / "items.f32.vec"
    data = bytearray(f.read_bytes())
    header = len(data) - m["items"]["count"] * m["items"]["dim"] * 4
    data[header:header + 4] = struct.pack("<f", float("nan"))
    f.write_bytes(bytes(data))
    m["files"]["items.f32.vec"]["sha256"] = sha256_file(f)


# ------------------------------------------------------------------------------------------- requests


def rank_body(ids: list[int], n: int = 50, k: int = 10, user_id: int = 42, **extra) -> dict:
    body = {"user": {"id": user_id, "features": {"age": 31, "gender": "f"},
                     "behaviors": [{"item_id": ids[0], "action": "click", "seconds_ago": 300}]},
            "candidates": ids[:n], "k": k}
    body.update(extra)
    return body


# ------------------------------------------------------------------------------------------ the cases


class CaseFailed(Exception):
    pass


class CaseSkipped(Exception):
    pass


@dataclass
class Check:
    """What a case expected and what it saw; a case fails if any expectation failed."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def expect(self, cond: bool, what: str) -> bool:
        if not cond:
            self.failures.append(what)
        return bool(cond)

    def status(self, r: Response, status: int | tuple[int, ...], code: str | None = None,
               label: str = "") -> bool:
        want = status if isinstance(status, tuple) else (status,)
        ok = r.status in want and (code is None or r.code == code)
        exp = "/".join(map(str, want)) + (f" {code}" if code else "")
        return self.expect(ok, f"{label + ': ' if label else ''}expected {exp}; got {r.short()}")

    def note(self, s: str):
        self.notes.append(s)


@dataclass
class Case:
    name: str
    fn: Callable[["Context", Check], None]
    expected: str  # the expected outcome, as the issue / docs/api.md define it
    finding: int | None = None
    long: bool = False  # long mode only
    background: bool = False  # has its own server and mostly waits: runs concurrently
    budget: float = 60.0  # seconds it may take at most (generous; only reported)

    @property
    def cls(self) -> str:
        return self.name.split(".", 1)[0]

    def matches(self, pattern: str) -> bool:
        return (self.name == pattern or self.cls == pattern or self.name.startswith(pattern + ".")
                or fnmatch.fnmatchcase(self.name, pattern))


CASES: list[Case] = []


def case(name: str, expected: str, finding: int | None = None, long: bool = False,
         background: bool = False, budget: float = 60.0):
    def deco(fn):
        if any(c.name == name for c in CASES):
            raise ValueError(f"duplicate case name {name}")
        CASES.append(Case(name, fn, expected, finding, long, background, budget))
        return fn

    return deco


class Context:
    """One run: the binary, the scratch directory, the shared servers, every process started."""

    def __init__(self, bin_path: Path, scratch: Path, long: bool):
        self.bin = bin_path
        self.scratch = scratch
        self.long = long
        self.snaps = Snapshots(self)
        self._servers: list[Server] = []
        self._lock = threading.RLock()
        self._shared: Server | None = None
        self._admin: Server | None = None

    def run_bin(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run([str(self.bin), *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"prerank {' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
        return r.stdout

    def track(self, s: Server):
        with self._lock:
            self._servers.append(s)

    def server(self, name: str, *sources: Path, args=(), env=None, admin=False, token=ADMIN_TOKEN,
               start=True, wait_ready=True) -> Server:
        """A server of its own over a fresh root holding `sources` as versions 1..n."""
        srcs = sources or (self.snaps.source(),)
        root = self.snaps.new_root(name, *srcs)
        s = Server(self, name, root, args, env, admin, token)
        return s.start(wait_ready) if start else s

    def shared(self) -> Server:
        """The server most request-level cases share (500 items, watcher on, admin on). Cases that
        change its repository or its process state must use a server of their own."""
        with self._lock:
            if self._shared is None:
                root = self.snaps.new_root("shared", self.snaps.source())
                self._shared = Server(self, "shared", root, ["--log-json"], admin=True)
                self._shared.start()
            return self._shared

    def shared_ids(self) -> list[int]:
        return self.snaps.ids(self.snaps.source())

    def cleanup(self):
        for s in self._servers:
            with contextlib.suppress(Exception):
                s.stop(timeout=15)


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.1):
    """Polls `pred` until it returns a truthy value (returned) or `timeout` passes (returns None)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ConnClosed, TimeoutError, RuntimeError):
            v = pred()
            if v:
                return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")
