"""Retries: the real server's 503s (overloaded, no model yet, bucket unavailable) with their
``Retry-After``, 429 and backoff from a stand-in, the caps and the budget, and the policy itself."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from conftest import MODEL
from harness import ScriptedServer, Server, publish_student

import prerank
from prerank import RetryEvent, RetryPolicy
from prerank.errors import InvalidRequestError, OverloadedError, UnavailableError, parse_retry_after
from prerank.retry import Attempts

EXACT: dict[str, Any] = {"jitter": 0.0}  # waits exactly as computed, so the tests can check them


@contextmanager
def permit_held(server: Server) -> Iterator[socket.socket]:
    """Holds the server's only in-flight permit (``--max-inflight 1``): a ranking request whose body
    never finishes (the server has no request deadline). Yields once a request is refused with
    ``overloaded``, i.e. the permit is taken; closing the socket frees it."""
    host, port = server.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/rank HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )
    try:
        with prerank.Client(server.url, model=MODEL, retry=None) as probe:
            for _ in range(600):
                try:
                    probe.rank(None, [1], k=1)
                except OverloadedError:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the trickling request never took the permit")
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize("transport", ["json", "protobuf"])
def test_overloaded_is_retried_after_retry_after(limited_server: Server, transport: str) -> None:
    events: list[RetryEvent] = []
    with permit_held(limited_server) as sock:

        def free_the_permit(event: RetryEvent) -> None:
            events.append(event)
            sock.close()

        with prerank.Client(
            limited_server.url,
            transport=transport,
            model=MODEL,
            retry=RetryPolicy(**EXACT),
            on_retry=free_the_permit,
        ) as client:
            result = client.rank(None, [1, 2], k=1, request_id="retry-1")
    assert result.request_id == "retry-1"
    assert events and events[0].attempt == 1 and events[0].delay == 1.0  # Retry-After: 1
    assert {e.error.code for e in events} == {"overloaded"}
    assert {e.error.request_id for e in events} == {"retry-1"}


@pytest.mark.anyio
async def test_async_client_retries_too(limited_server: Server) -> None:
    events: list[RetryEvent] = []
    with permit_held(limited_server) as sock:

        def free_the_permit(event: RetryEvent) -> None:
            events.append(event)
            sock.close()

        async with prerank.AsyncClient(
            limited_server.url,
            transport="protobuf",
            model=MODEL,
            retry=RetryPolicy(**EXACT),
            on_retry=free_the_permit,
        ) as client:
            result = await client.rank(None, [1, 2], k=1)
    assert result.model == MODEL
    assert events[0].delay == 1.0 and events[0].error.code == "overloaded"


def test_retries_carry_a_call_through_server_start_up(empty_server: Server) -> None:
    """No model yet (503 ``no_model``): the client keeps retrying while a model is published."""
    events: list[RetryEvent] = []

    def publish_once(event: RetryEvent) -> None:
        events.append(event)
        if len(events) == 1:
            publish_student(empty_server.root, MODEL, dtypes=("f32",))

    policy = RetryPolicy(max_attempts=100, budget=100.0, **EXACT)
    with prerank.Client(empty_server.url, model=MODEL, retry=policy, on_retry=publish_once) as client:
        result = client.rank(None, [1], k=1)
    assert (result.model, result.version) == (MODEL, 1)
    assert events[0].error.code == "no_model"
    assert all(e.delay == 1.0 and isinstance(e.error, UnavailableError) for e in events)


def test_max_attempts(limited_server: Server) -> None:
    events: list[RetryEvent] = []
    with (
        prerank.Client(
            limited_server.url,
            model=MODEL,
            retry=RetryPolicy(max_attempts=3, **EXACT),
            on_retry=events.append,
        ) as client,
        pytest.raises(UnavailableError) as info,
    ):
        client.rank(None, [1], k=1, bucket="b")
    assert info.value.code == "bucket_unavailable" and info.value.attempts == 3
    assert [(e.attempt, e.delay) for e in events] == [(1, 1.0), (2, 1.0)]


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(budget=0.5),  # Retry-After: 1 would end past the budget
        RetryPolicy(max_retry_after=0.5, budget=None),  # the server asks for more than we wait
    ],
)
def test_budget_and_retry_after_cap_end_retrying(limited_server: Server, policy: RetryPolicy) -> None:
    events: list[RetryEvent] = []
    with (
        prerank.Client(limited_server.url, model=MODEL, retry=policy, on_retry=events.append) as client,
        pytest.raises(UnavailableError) as info,
    ):
        client.rank(None, [1], k=1, bucket="b")
    assert (info.value.code, info.value.retry_after, info.value.attempts) == ("bucket_unavailable", 1.0, 1)
    assert events == []


def test_client_errors_are_never_retried(main_server: Server) -> None:
    events: list[RetryEvent] = []
    with (
        prerank.Client(main_server.url, model=MODEL, on_retry=events.append) as client,
        pytest.raises(InvalidRequestError) as info,
    ):
        client.rank(None, [1], k=0)
    assert info.value.attempts == 1 and events == []


@pytest.mark.parametrize("is_async", [False, True])
def test_429_with_http_date_then_backoff(
    scripted: ScriptedServer, main_server: Server, is_async: bool
) -> None:
    body = httpx.post(
        f"{main_server.url}/v1/rank", json={"model": MODEL, "user": {}, "candidates": [1], "k": 1}
    )
    scripted.add(429, b"", retry_after=formatdate(time.time() + 2, usegmt=True))
    scripted.add(429, b"")  # no Retry-After: the client's own backoff
    scripted.add(503, {"error": {"code": "overloaded", "message": "busy"}}, retry_after="0")
    scripted.add(200, body.content, content_type="application/json")
    events: list[RetryEvent] = []
    policy = RetryPolicy(initial_backoff=0.01, backoff_multiplier=3.0, **EXACT)
    options = {"retry": policy, "on_retry": events.append}
    if is_async:

        async def run() -> prerank.RankResult:
            async with prerank.AsyncClient(scripted.url, **options) as client:  # type: ignore[arg-type]
                return await client.rank(None, [1], k=1)

        result = asyncio.run(run())
    else:
        with prerank.Client(scripted.url, **options) as client:  # type: ignore[arg-type]
            result = client.rank(None, [1], k=1)
    assert result.candidates == 1
    assert [e.error.status for e in events] == [429, 429, 503]
    assert 0 < events[0].delay <= 2.0  # the date, to the second
    assert events[1].delay == pytest.approx(0.03)  # attempt 2 without Retry-After: 0.01 * 3
    assert events[2].delay == 0.0
    assert len({r["x-request-id"] for r in scripted.requests}) == 1 and len(scripted.requests) == 4


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def unavailable(retry_after: float | None = None) -> UnavailableError:
    return UnavailableError("no_model", "no model is loaded yet", status=503, retry_after=retry_after)


def test_policy_backoff_growth_cap_and_attempts() -> None:
    clock = FakeClock()
    a = Attempts(
        RetryPolicy(
            max_attempts=5, initial_backoff=0.1, backoff_multiplier=2, max_backoff=0.3, budget=None, jitter=0
        ),
        clock=clock,
    )
    assert [a.delay_after(unavailable()) for _ in range(5)] == [0.1, 0.2, 0.3, 0.3, None]
    assert a.attempt == 5


def test_policy_retry_after_jitter_and_budget() -> None:
    clock = FakeClock()
    a = Attempts(RetryPolicy(budget=3.0, jitter=0.2, max_retry_after=5), clock=clock, rng=lambda: 0.5)
    assert a.delay_after(unavailable(1.0)) == pytest.approx(1.1)  # Retry-After plus 10% (half the jitter)
    assert a.timeout(5.0) == pytest.approx(3.0)  # cut to the budget
    clock.now += 2.5
    assert a.timeout(5.0) == pytest.approx(0.5)
    assert a.delay_after(unavailable(1.0)) is None  # would end past the budget
    b = Attempts(RetryPolicy(max_retry_after=2), clock=clock)
    assert b.delay_after(unavailable(2.5)) is None
    c = Attempts(RetryPolicy(), clock=clock)
    assert c.delay_after(InvalidRequestError("invalid_k", "k", status=422)) is None


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="budget"):
        RetryPolicy(budget=0)


def test_parse_retry_after() -> None:
    now = 1_000_000_000.0
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert parse_retry_after(formatdate(now - 7, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
