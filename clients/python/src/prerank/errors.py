"""Exceptions: every failure carries the server's stable error code, the HTTP status and the message.

The classes follow the failure, not the transport, so a future gRPC transport raises the same ones
(INVALID_ARGUMENT -> ``InvalidRequestError``, NOT_FOUND -> ``NotFoundError``, UNAVAILABLE and
RESOURCE_EXHAUSTED -> ``UnavailableError``, DEADLINE_EXCEEDED -> ``DeadlineExceededError``):

    PrerankError
    +-- InvalidRequestError      400 / 413 / 415 / 422: fix the request, do not retry
    +-- NotFoundError            404: ``model_not_found``, ``not_found``
    +-- UnavailableError         503 / 429 and connection failures: retryable (``Retry-After`` honoured)
    |   +-- OverloadedError      ``overloaded`` (503) and 429: load shedding
    |   +-- ConnectionFailedError  no HTTP response at all (refused, reset, DNS)
    +-- DeadlineExceededError    504 ``timeout`` (server side) or the client's own timeout
    +-- InternalError            500 and other 5xx
    +-- ProtocolError            a response this client cannot decode (e.g. a proxy's HTML page)

Codes made by the client itself (the server never sends them): ``connection_failed``,
``client_timeout``, ``bad_response``, and ``http_<status>`` for an error response without a prerank
error body (e.g. 431, or a proxy's 502).
"""

from __future__ import annotations

import email.utils
import time

#: Client-side codes (never sent by the server).
CONNECTION_FAILED = "connection_failed"
CLIENT_TIMEOUT = "client_timeout"
BAD_RESPONSE = "bad_response"


class PrerankError(Exception):
    """Base of every error this package raises about a call to the server."""

    #: Whether the client's retry policy may retry this error.
    retryable: bool = False

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        #: The stable machine-readable code (docs/api.md), or a client-side code (module doc).
        self.code = code
        #: The server's human-readable message (it names the offending field).
        self.message = message
        #: HTTP status; ``None`` when no response was received.
        self.status = status
        #: The request id the call was sent with (``x-request-id``, echoed by the server).
        self.request_id = request_id
        #: Seconds the server asked the client to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
        #: How many attempts the call made before raising (set by the client's retry loop).
        self.attempts = 1


class InvalidRequestError(PrerankError):
    """The server refused the request itself (400, 413, 415, 422): retrying cannot help."""


class NotFoundError(PrerankError):
    """404: the named model (``model_not_found``) or route (``not_found``) does not exist."""


class UnavailableError(PrerankError):
    """The server cannot serve the request now (503 / 429, or no connection): retry later."""

    retryable = True


class OverloadedError(UnavailableError):
    """The server shed the request (503 ``overloaded``, or 429)."""


class ConnectionFailedError(UnavailableError):
    """No HTTP response: connection refused or reset, DNS failure, broken protocol."""


class DeadlineExceededError(PrerankError, TimeoutError):
    """The server's request deadline passed (504 ``timeout``) or the client's own timeout did."""


class InternalError(PrerankError):
    """A server bug (500 ``internal``) or another 5xx; details are in the server's log."""


class ProtocolError(PrerankError):
    """A response this client cannot decode (code ``bad_response``)."""


_BY_CODE: dict[str, type[PrerankError]] = {
    "overloaded": OverloadedError,
    "timeout": DeadlineExceededError,
    "internal": InternalError,
}


def error_class(status: int, code: str) -> type[PrerankError]:
    """The exception class for an error response: by code where the code says more, else by status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status == 429:
        return OverloadedError
    if status == 404:
        return NotFoundError
    if status in (502, 503):
        return UnavailableError
    if status == 504:
        return DeadlineExceededError
    if 400 <= status < 500:
        return InvalidRequestError
    return InternalError


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3); ``None`` if absent
    or unparseable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
