"""``Client`` and ``AsyncClient``: the public entry points.

A client owns one transport (a connection pool), a default model, a timeout and a retry policy. Per
call it normalises the request once (``prerank.types``), picks one request id (the caller's, or a
fresh 32-hex-digit one) that every attempt sends as ``x-request-id``, and runs the retry loop of
``prerank.retry`` around single transport attempts. The two clients differ only in ``await`` and
``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from .errors import PrerankError
from .grpc_transport import AsyncGrpcTransport, GrpcTransport
from .retry import NO_RETRY, Attempts, RetryEvent, RetryPolicy
from .transport import AsyncHttpTransport, AsyncTransport, HttpTransport, Transport
from .types import Candidates, RankRequest, RankResult, ServerStatus, User, candidate_array

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"


def new_request_id() -> str:
    """A fresh request id in the server's own format (32 lowercase hex digits)."""
    return uuid.uuid4().hex


def check_request_id(request_id: str) -> str:
    """The server keeps an ``x-request-id`` of 1..128 visible ASCII characters and replaces any
    other; refuse such ids here, so the id in the logs is the one the caller chose."""
    if not (
        isinstance(request_id, str)
        and 1 <= len(request_id) <= 128
        and all("!" <= c <= "~" for c in request_id)
    ):
        raise ValueError(f"request_id: expected 1..128 visible ASCII characters, found {request_id!r}")
    return request_id


_T = TypeVar("_T")  # Transport or AsyncTransport
_HC = TypeVar("_HC")  # httpx.Client or httpx.AsyncClient


class _ClientBase(Generic[_T, _HC]):
    """What both clients hold and do before any I/O; the constructor's arguments are documented
    on ``Client``."""

    _http_class: Callable[..., _T]
    _grpc_class: Callable[..., _T]

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: str | _T = "json",
        model: str | None = None,
        timeout: float | None = 5.0,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 (frozen, shared safely)
        on_retry: Callable[[RetryEvent], None] | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: _HC | None = None,
    ) -> None:
        #: Default model of ``rank`` (``None``: the server's default).
        self.model = model
        #: Per-attempt timeout of each call that does not give one.
        self.timeout = timeout
        self.retry = retry or NO_RETRY
        self.on_retry = on_retry
        if not isinstance(transport, str):
            self.transport: _T = transport
        elif transport == "grpc":
            self.transport = self._grpc_class(url, timeout=timeout)
        else:
            self.transport = self._http_class(
                url, encoding=transport, timeout=timeout, headers=headers, http_client=http_client
            )

    def _rank_request(
        self,
        user: User | Mapping[str, Any] | None,
        candidates: Candidates,
        k: int,
        model: str | None,
        bucket: str | None,
        with_probability: bool,
    ) -> RankRequest:
        return RankRequest(
            user=User.of(user),
            candidates=candidate_array(candidates),
            k=k,
            model=model if model is not None else self.model,
            bucket=bucket,
            with_probability=bool(with_probability),
        )

    def _start(self, request_id: str | None, timeout: float | None) -> tuple[str, Attempts, float | None]:
        """A call's request id, retry state and per-attempt timeout."""
        rid = new_request_id() if request_id is None else check_request_id(request_id)
        return rid, Attempts(self.retry), self.timeout if timeout is None else timeout

    def _probe_timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _retry_delay(self, attempts: Attempts, error: PrerankError, request_id: str) -> float:
        """The wait before the next attempt, or raises ``error`` (retries exhausted or not allowed)."""
        if error.request_id is None:
            error.request_id = request_id
        delay = attempts.delay_after(error)
        if delay is None:
            raise error
        if self.on_retry is not None:
            self.on_retry(RetryEvent(attempts.attempt - 1, error, delay))
        return delay


class Client(_ClientBase[Transport, httpx.Client]):
    """A synchronous prerank client (thread-safe: one connection pool shared by all threads).

    ``transport`` is ``"json"`` (default), ``"protobuf"`` (smaller bodies for large candidate lists)
    or a ``Transport`` instance. ``timeout`` applies to each network operation of an attempt;
    ``retry`` bounds attempts, waits and the whole call (``None``: never retry). ``model`` is the
    default model of ``rank``. Use as a context manager, or call ``close()``.
    """

    _http_class = HttpTransport
    _grpc_class = GrpcTransport

    def _call(
        self, request_id: str | None, timeout: float | None, attempt: Callable[[str, float | None], T]
    ) -> T:
        rid, attempts, per_attempt = self._start(request_id, timeout)
        while True:
            try:
                return attempt(rid, attempts.timeout(per_attempt))
            except PrerankError as e:
                time.sleep(self._retry_delay(attempts, e, rid))

    def rank(
        self,
        user: User | Mapping[str, Any] | None,
        candidates: Candidates,
        *,
        k: int,
        model: str | None = None,
        bucket: str | None = None,
        with_probability: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> RankResult:
        """Scores ``candidates`` for ``user`` and returns the top ``k`` (``POST /v1/rank``).

        ``user`` is a ``User``, the JSON shape as a dict, or ``None`` (cold start); ``candidates`` a
        ``numpy`` integer array (``uint64`` is sent without conversion) or a sequence of ints.
        Raises ``prerank.errors.PrerankError`` subclasses with the server's code and message.
        """
        req = self._rank_request(user, candidates, k, model, bucket, with_probability)
        return self._call(
            request_id, timeout, lambda rid, t: self.transport.rank(req, request_id=rid, timeout=t)
        )

    def list_models(self, *, request_id: str | None = None, timeout: float | None = None) -> ServerStatus:
        """Every model, its live snapshot and version states, and the bucket plan (``GET /v1/models``)."""
        return self._call(
            request_id, timeout, lambda rid, t: self.transport.list_models(request_id=rid, timeout=t)
        )

    def is_ready(self, *, timeout: float | None = None) -> bool:
        """``/readyz``: a verified model is live (and every served bucket has its model). Not retried."""
        return self.transport.ready(timeout=self._probe_timeout(timeout))

    def is_live(self, *, timeout: float | None = None) -> bool:
        """``/healthz``: the process is up. Not retried."""
        return self.transport.live(timeout=self._probe_timeout(timeout))

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_ClientBase[AsyncTransport, httpx.AsyncClient]):
    """The asyncio twin of ``Client`` (same arguments, same results, same errors); ``async with``
    it, or ``await client.aclose()``."""

    _http_class = AsyncHttpTransport
    _grpc_class = AsyncGrpcTransport

    async def _call(
        self,
        request_id: str | None,
        timeout: float | None,
        attempt: Callable[[str, float | None], Awaitable[T]],
    ) -> T:
        rid, attempts, per_attempt = self._start(request_id, timeout)
        while True:
            try:
                return await attempt(rid, attempts.timeout(per_attempt))
            except PrerankError as e:
                await asyncio.sleep(self._retry_delay(attempts, e, rid))

    async def rank(
        self,
        user: User | Mapping[str, Any] | None,
        candidates: Candidates,
        *,
        k: int,
        model: str | None = None,
        bucket: str | None = None,
        with_probability: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> RankResult:
        """``Client.rank``, awaited."""
        req = self._rank_request(user, candidates, k, model, bucket, with_probability)
        return await self._call(
            request_id, timeout, lambda rid, t: self.transport.rank(req, request_id=rid, timeout=t)
        )

    async def list_models(
        self, *, request_id: str | None = None, timeout: float | None = None
    ) -> ServerStatus:
        """``Client.list_models``, awaited."""
        return await self._call(
            request_id, timeout, lambda rid, t: self.transport.list_models(request_id=rid, timeout=t)
        )

    async def is_ready(self, *, timeout: float | None = None) -> bool:
        """``Client.is_ready``, awaited."""
        return await self.transport.ready(timeout=self._probe_timeout(timeout))

    async def is_live(self, *, timeout: float | None = None) -> bool:
        """``Client.is_live``, awaited."""
        return await self.transport.live(timeout=self._probe_timeout(timeout))

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
