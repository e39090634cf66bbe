"""Session fixtures: snapshot roots written by the exporter, and the real servers that serve them.

Servers start on first use and stop at the end of the session (``empty_server`` per test, since
its tests publish into it):

- ``main_server``: ``py-student`` (f32, f16, int8; serves f32) and ``other-student``, no default
  model (so a request without ``model`` is 422 ``model_required``);
- ``limited_server``: ``py-student`` with tight limits, ``--max-inflight 1`` and a bucket plan whose
  bucket ``b`` names a model that does not exist (503 ``bucket_unavailable``);
- ``deadline_server``: ``--request-timeout-ms 1`` (504 ``timeout`` for a large request);
- ``dtype_server(dtype)``: ``py-student`` alone, served at ``--item-dtype dtype``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ScriptedServer, Server, publish_student

import prerank
from prerank.export import Snapshot, read_snapshot

MODEL = "py-student"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def student_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root with ``py-student/1`` only."""
    root = tmp_path_factory.mktemp("student-root")
    publish_student(root, MODEL)
    return root


@pytest.fixture(scope="session")
def student_dir(student_root: Path) -> Path:
    return student_root / MODEL / "1"


@pytest.fixture(scope="session")
def two_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two-models")
    publish_student(root, MODEL)
    publish_student(root, "other-student", seed=2, dtypes=("f32",))
    return root


def _server(root: Path, *args: str, logs: Path, name: str, models: tuple[str, ...]) -> Iterator[Server]:
    server = Server(root, *args, log_dir=logs, name=name)
    try:
        server.wait_live(*models)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def main_server(two_model_root: Path, logs: Path) -> Iterator[Server]:
    yield from _server(two_model_root, logs=logs, name="main", models=(MODEL, "other-student"))


@pytest.fixture(scope="session")
def limited_server(
    student_root: Path, logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    plan = tmp_path_factory.mktemp("plan") / "buckets.toml"
    plan.write_text(
        '[[bucket]]\nname = "a"\nmodel = "py-student"\nshare = 0.5\n\n'
        '[[bucket]]\nname = "b"\nmodel = "ghost"\nshare = 0.5\n'
    )
    yield from _server(
        student_root,
        "--max-inflight",
        "1",
        "--max-body-bytes",
        "16384",
        "--max-candidates",
        "500",
        "--max-behaviors",
        "4",
        "--max-k",
        "50",
        "--buckets",
        str(plan),
        "--request-timeout-ms",
        "0",
        logs=logs,
        name="limited",
        models=(MODEL,),
    )


@pytest.fixture(scope="session")
def deadline_server(student_root: Path, logs: Path) -> Iterator[Server]:
    yield from _server(student_root, "--request-timeout-ms", "1", logs=logs, name="deadline", models=(MODEL,))


@pytest.fixture(scope="session")
def dtype_server(student_root: Path, logs: Path) -> Iterator[Callable[[str], Server]]:
    started: dict[str, Server] = {}

    def get(dtype: str) -> Server:
        if dtype not in started:
            server = Server(student_root, "--item-dtype", dtype, log_dir=logs, name=f"dtype-{dtype}")
            started[dtype] = server
            server.wait_live(MODEL)
        return started[dtype]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture
def empty_server(tmp_path: Path, logs: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server over an empty model root (503 ``no_model`` until a test publishes into it)."""
    root = tmp_path / "models"
    root.mkdir()
    server = Server(root, log_dir=logs, name=f"empty-{request.node.name}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def user() -> dict[str, Any]:
    """A user with every kind of feature and behaviours over real ids (set by the tests)."""
    return {"id": 4242, "features": {"age": 31, "gender": "f"}, "behaviors": []}


@pytest.fixture(scope="session")
def snapshot(student_dir: Path) -> Snapshot:
    """The served snapshot, read back from its files."""
    return read_snapshot(student_dir)


MODES = ["sync-json", "sync-protobuf", "async-json", "async-protobuf"]


class Caller:
    """Runs one client call in one mode: the sync or the async client, over JSON or protobuf, so
    every behaviour is checked on all four. Clients are kept per URL and options (a client is meant
    to live long: creating one builds a TLS context), the async ones on the caller's own loop."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.is_async, self.transport = mode.split("-")[0] == "async", mode.split("-")[1]
        self._clients: dict[str, Any] = {}
        self._loop = asyncio.new_event_loop() if self.is_async else None

    def client(self, url: str, options: dict[str, Any]) -> Any:
        key = f"{url} {sorted(options.items())!r}"
        if key not in self._clients:
            cls = prerank.AsyncClient if self.is_async else prerank.Client
            self._clients[key] = cls(url, **options)
        return self._clients[key]

    def __call__(
        self, url: str, method: str, *args: Any, client_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        client = self.client(url, {"transport": self.transport, "model": MODEL, **(client_options or {})})
        if self._loop is None:
            return getattr(client, method)(*args, **kwargs)
        return self._loop.run_until_complete(getattr(client, method)(*args, **kwargs))

    def close(self) -> None:
        for client in self._clients.values():
            if self._loop is None:
                client.close()
            else:
                self._loop.run_until_complete(client.aclose())
        if self._loop is not None:
            self._loop.close()


@pytest.fixture(scope="session")
def callers() -> Iterator[dict[str, Caller]]:
    made = {mode: Caller(mode) for mode in MODES}
    yield made
    for caller in made.values():
        caller.close()


@pytest.fixture(params=MODES)
def call(request: pytest.FixtureRequest, callers: dict[str, Caller]) -> Caller:
    return callers[request.param]


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    try:
        yield server
    finally:
        server.stop()
