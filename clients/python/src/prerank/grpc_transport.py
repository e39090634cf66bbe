"""DRAFT, NOT IMPLEMENTED: the gRPC transport, for the ``prerank.v1.Ranker`` service that does not
exist yet (issue 14, item 1). Constructing it raises ``NotImplementedError``.

It is here to fix the shape the gRPC transport will have, so it slots in behind the same interface
as the HTTP ones (``Client(url, transport="grpc")``, ``prerank.transport.Transport``):

- one ``grpc.Channel`` (``grpc.aio`` for the async twin) to ``host:port``, reused for every call;
- ``Rank`` as ``channel.unary_unary("/prerank.v1.Ranker/Rank",
  request_serializer=ProtobufEncoding().encode_rank, response_deserializer=...)``: the request is
  the same ``RankRequest`` bytes the HTTP protobuf transport sends, candidates written from the
  ``uint64`` array's bytes, so no repeated field is ever filled from Python ints;
- ``ListModels`` decoded into the same ``ServerStatus``;
- the request id as ``x-request-id`` metadata, the attempt timeout as the call deadline
  (``grpc-timeout``);
- status codes onto the same exceptions (``prerank.errors``): INVALID_ARGUMENT ->
  ``InvalidRequestError``, NOT_FOUND -> ``NotFoundError``, UNAVAILABLE -> ``UnavailableError``,
  RESOURCE_EXHAUSTED -> ``OverloadedError`` (with the retry delay the server sends),
  DEADLINE_EXCEEDED -> ``DeadlineExceededError``, INTERNAL -> ``InternalError``; the stable code
  from the status details / metadata the service will define;
- readiness through ``grpc.health.v1`` (``ready``), liveness as a channel connectivity check.

The retry loop, request ids and budgets stay in the client, unchanged.
"""

from __future__ import annotations

from typing import NoReturn

from .types import RankRequest, RankResult, ServerStatus

_MESSAGE = (
    "the gRPC transport is not implemented yet: it waits for the prerank.v1.Ranker gRPC service "
    "(issue 14, item 1); use transport='json' or 'protobuf'"
)


def _unavailable() -> NoReturn:
    raise NotImplementedError(_MESSAGE)


class GrpcTransport:
    """DRAFT (module doc): raises ``NotImplementedError``."""

    def __init__(self, target: str, *, timeout: float | None = 5.0) -> None:
        _unavailable()

    def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult:
        _unavailable()

    def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus:
        _unavailable()

    def ready(self, *, timeout: float | None) -> bool:
        _unavailable()

    def live(self, *, timeout: float | None) -> bool:
        _unavailable()

    def close(self) -> None:
        _unavailable()


class AsyncGrpcTransport:
    """DRAFT (module doc): raises ``NotImplementedError``."""

    def __init__(self, target: str, *, timeout: float | None = 5.0) -> None:
        _unavailable()

    async def rank(self, request: RankRequest, *, request_id: str, timeout: float | None) -> RankResult:
        _unavailable()

    async def list_models(self, *, request_id: str, timeout: float | None) -> ServerStatus:
        _unavailable()

    async def ready(self, *, timeout: float | None) -> bool:
        _unavailable()

    async def live(self, *, timeout: float | None) -> bool:
        _unavailable()

    async def aclose(self) -> None:
        _unavailable()
