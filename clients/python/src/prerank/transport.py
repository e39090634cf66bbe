"""Transports: how one attempt of a call reaches the server.

``Transport`` (sync) and ``AsyncTransport`` are the interface the clients use; a transport makes
exactly one attempt per call and raises ``prerank.errors`` exceptions, and the client owns retries,
request ids and budgets. The HTTP transports speak JSON or protobuf (``encoding``) over one pooled
``httpx`` client; a gRPC transport (``prerank.grpc``, drafted) will implement the same protocols.

The HTTP work is split so the sync and async classes share everything but the ``send`` call:
``_HttpCalls`` builds each ``httpx.Request`` and turns each ``httpx.Response`` into a result or an
exception (no I/O), and ``_network_errors`` maps httpx's exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, Protocol, TypeVar

import httpx

from . import __version__
from .encoding import ENCODINGS, Encoding, decode_error_body
from .errors import (
    BAD_RESPONSE,
    CLIENT_TIMEOUT,
    CONNECTION_FAILED,
    ConnectionFailedError,
    DeadlineExceededError,
    PrerankError,
    ProtocolError,
    error_class,
    parse_retry_after,
)
from .types import (
    BucketStatus,
    LiveSnapshot,
    ModelStatus,
    RankRequest,
    RankResult,
    ServerStatus,
    VersionStatus,
)

REQUEST_ID_HEADER = "x-request-id"
USER_AGENT = f"prerank-python/{__version__}"


class Transport(Protocol):
    """One attempt of each call, synchronously."""

    def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult: ...

    def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus: ...

    def ready(self, *, timeout: float | None) -> bool: ...

    def live(self, *, timeout: float | None) -> bool: ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """One attempt of each call, on asyncio."""

    async def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult: ...

    async def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus: ...

    async def ready(self, *, timeout: float | None) -> bool: ...

    async def live(self, *, timeout: float | None) -> bool: ...

    async def aclose(self) -> None: ...


def error_from_response(response: httpx.Response, request_id: str | None = None) -> PrerankError:
    """The exception for an error response: the server's code and message when the body is a prerank
    error body (JSON or protobuf), else ``http_<status>`` with the start of the body."""
    rid = response.headers.get(REQUEST_ID_HEADER, request_id)
    parsed = decode_error_body(response.headers.get("content-type", ""), response.content)
    if parsed is None:
        text = response.content[:200].decode("utf-8", "replace").strip()
        code, message = f"http_{response.status_code}", text or response.reason_phrase
    else:
        code, message = parsed
    return error_class(response.status_code, code)(
        code,
        message,
        status=response.status_code,
        request_id=rid,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


@contextmanager
def _network_errors(request_id: str | None) -> Iterator[None]:
    """httpx's exceptions as ``prerank.errors`` ones (no response was received)."""
    try:
        yield
    except (httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise ConnectionFailedError(
            CONNECTION_FAILED, f"could not connect in time: {e!r}", request_id=request_id
        ) from e
    except httpx.TimeoutException as e:
        raise DeadlineExceededError(
            CLIENT_TIMEOUT, f"no response within the client's timeout: {e!r}", request_id=request_id
        ) from e
    except httpx.TransportError as e:
        raise ConnectionFailedError(CONNECTION_FAILED, repr(e), request_id=request_id) from e


def _status_from_json(doc: Mapping[str, Any]) -> ServerStatus:
    def live(s: Mapping[str, Any] | None) -> LiveSnapshot | None:
        if s is None:
            return None
        return LiveSnapshot(
            model=s["model"],
            version=int(s["version"]),
            path=str(s["path"]),
            item_count=int(s["item_count"]),
            dim=int(s["dim"]),
            dtype=s["dtype"],
            dtypes=tuple(s["dtypes"]),
            tau=float(s["tau"]),
            created_at=s["created_at"],
            loaded_at=int(s["loaded_at"]),
            load_ms=int(s["load_ms"]),
            mapped_bytes=int(s["mapped_bytes"]),
            golden_checks=int(s["golden_checks"]),
            provenance=s.get("provenance") or {},
        )

    models = tuple(
        ModelStatus(
            name=m["name"],
            live=live(m.get("live")),
            versions=tuple(
                VersionStatus(int(v["version"]), v["state"], v.get("reason")) for v in m["versions"]
            ),
        )
        for m in doc["models"]
    )
    buckets = tuple(
        BucketStatus(
            name=b["name"],
            model=b["model"],
            share=float(b["share"]),
            version=b.get("version"),
            served_here=bool(b["served_here"]),
            live_version=b.get("live_version"),
        )
        for b in doc.get("buckets", ())
    )
    return ServerStatus(models, buckets)


class _HttpCalls:
    """Requests and response handling of the HTTP API, without I/O (shared by sync and async)."""

    def __init__(self, url: str, encoding: str | Encoding, headers: Mapping[str, str] | None) -> None:
        if isinstance(encoding, str):
            if encoding not in ENCODINGS:
                raise ValueError(f"encoding: expected one of {sorted(ENCODINGS)}, found {encoding!r}")
            encoding = ENCODINGS[encoding]
        self.encoding = encoding
        self.base = url.rstrip("/")
        self.headers = {"user-agent": USER_AGENT, **(headers or {})}

    def rank(
        self, http: httpx.Client | httpx.AsyncClient, req: RankRequest, rid: str, timeout: float | None
    ) -> httpx.Request:
        return http.build_request(
            "POST",
            f"{self.base}/v1/rank",
            content=self.encoding.encode_rank(req),
            headers={
                **self.headers,
                "content-type": self.encoding.content_type,
                "accept": self.encoding.content_type,
                REQUEST_ID_HEADER: rid,
            },
            timeout=timeout,
        )

    def rank_result(self, response: httpx.Response, rid: str) -> RankResult:
        self._raise_for_status(response, rid)
        media = response.headers.get("content-type", "").split(";", 1)[0].strip()
        if media != self.encoding.content_type:
            raise ProtocolError(
                BAD_RESPONSE,
                f"expected a {self.encoding.content_type} response, found {media or 'no content type'}",
                status=response.status_code,
                request_id=rid,
            )
        return self.encoding.decode_rank(response.content)

    def get(
        self, http: httpx.Client | httpx.AsyncClient, path: str, rid: str | None, timeout: float | None
    ) -> httpx.Request:
        headers = {**self.headers, "accept": "application/json"}
        if rid is not None:
            headers[REQUEST_ID_HEADER] = rid
        return http.build_request("GET", f"{self.base}{path}", headers=headers, timeout=timeout)

    def status_result(self, response: httpx.Response, rid: str) -> ServerStatus:
        self._raise_for_status(response, rid)
        try:
            return _status_from_json(json.loads(response.content))
        except (ValueError, KeyError, TypeError) as e:
            raise ProtocolError(
                BAD_RESPONSE,
                f"/v1/models response is not the expected JSON: {e!r}",
                status=response.status_code,
                request_id=rid,
            ) from e

    def probe_result(self, response: httpx.Response) -> bool:
        """``/readyz`` and ``/healthz``: 200 is yes, 503 is no, anything else is an error."""
        if response.status_code == 200:
            return True
        if response.status_code == 503:
            return False
        raise error_from_response(response)

    @staticmethod
    def _raise_for_status(response: httpx.Response, rid: str) -> None:
        if response.status_code >= 400:
            raise error_from_response(response, rid)


_H = TypeVar("_H", httpx.Client, httpx.AsyncClient)


class _HttpTransportBase(Generic[_H]):
    """What the sync and async HTTP transports hold: the calls and one pooled httpx client."""

    _client_class: type[_H]

    def __init__(
        self,
        url: str,
        *,
        encoding: str | Encoding = "json",
        timeout: float | None = 5.0,
        headers: Mapping[str, str] | None = None,
        http_client: _H | None = None,
    ) -> None:
        self._calls = _HttpCalls(url, encoding, headers)
        self._owned = http_client is None
        self._http: _H = (
            self._client_class(timeout=timeout, follow_redirects=False)
            if http_client is None
            else http_client
        )

    @property
    def encoding(self) -> str:
        """``json`` or ``protobuf``."""
        return self._calls.encoding.name


class HttpTransport(_HttpTransportBase[httpx.Client]):
    """``POST /v1/rank`` over HTTP/1.1 with a pooled, keep-alive ``httpx.Client``.

    ``encoding`` is ``"json"`` or ``"protobuf"``. Pass ``http_client`` to bring your own (TLS,
    proxies, limits, event hooks); it is used as it is and stays yours to close. ``timeout`` is
    httpx's: a limit on each network operation (connect, each read, each write) of an attempt.
    """

    _client_class = httpx.Client

    def _send(self, request: httpx.Request, rid: str | None) -> httpx.Response:
        with _network_errors(rid):
            return self._http.send(request)

    def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult:
        r = self._send(self._calls.rank(self._http, request, request_id, timeout), request_id)
        return self._calls.rank_result(r, request_id)

    def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus:
        r = self._send(self._calls.get(self._http, "/v1/models", request_id, timeout), request_id)
        return self._calls.status_result(r, request_id)

    def ready(self, *, timeout: float | None) -> bool:
        return self._calls.probe_result(
            self._send(self._calls.get(self._http, "/readyz", None, timeout), None)
        )

    def live(self, *, timeout: float | None) -> bool:
        return self._calls.probe_result(
            self._send(self._calls.get(self._http, "/healthz", None, timeout), None)
        )

    def close(self) -> None:
        if self._owned:
            self._http.close()


class AsyncHttpTransport(_HttpTransportBase[httpx.AsyncClient]):
    """``HttpTransport`` on asyncio, with a pooled ``httpx.AsyncClient``."""

    _client_class = httpx.AsyncClient

    async def _send(self, request: httpx.Request, rid: str | None) -> httpx.Response:
        with _network_errors(rid):
            return await self._http.send(request)

    async def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult:
        r = await self._send(self._calls.rank(self._http, request, request_id, timeout), request_id)
        return self._calls.rank_result(r, request_id)

    async def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus:
        r = await self._send(self._calls.get(self._http, "/v1/models", request_id, timeout), request_id)
        return self._calls.status_result(r, request_id)

    async def ready(self, *, timeout: float | None) -> bool:
        r = await self._send(self._calls.get(self._http, "/readyz", None, timeout), None)
        return self._calls.probe_result(r)

    async def live(self, *, timeout: float | None) -> bool:
        r = await self._send(self._calls.get(self._http, "/healthz", None, timeout), None)
        return self._calls.probe_result(r)

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()
