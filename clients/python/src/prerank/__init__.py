"""prerank: Python client and snapshot exporter for the prerank coarse-ranking service.

    import prerank
    with prerank.Client("http://127.0.0.1:8080", transport="protobuf") as client:
        result = client.rank({"id": 42}, candidate_ids, k=100)

- ``Client`` / ``AsyncClient`` (``prerank.client``): ranking, model status and probes over HTTP
  (JSON or protobuf, ``prerank.transport``), with retries (``prerank.retry``) and typed errors
  (``prerank.errors``).
- ``prerank.export``: writes snapshot directories (docs/snapshot-format.md) from numpy arrays, with
  golden checks from a reference numpy forward pass of the user tower.
"""

__version__ = "0.1.0"

from .client import AsyncClient, Client, new_request_id
from .errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PrerankError,
    ProtocolError,
    UnavailableError,
)
from .retry import NO_RETRY, RetryEvent, RetryPolicy
from .transport import AsyncHttpTransport, AsyncTransport, HttpTransport, Transport
from .types import (
    Behavior,
    BucketStatus,
    LiveSnapshot,
    ModelStatus,
    RankedItem,
    RankResult,
    ServerStatus,
    User,
    VersionStatus,
)

__all__ = [
    "NO_RETRY",
    "AsyncClient",
    "AsyncHttpTransport",
    "AsyncTransport",
    "Behavior",
    "BucketStatus",
    "Client",
    "ConnectionFailedError",
    "DeadlineExceededError",
    "HttpTransport",
    "InternalError",
    "InvalidRequestError",
    "LiveSnapshot",
    "ModelStatus",
    "NotFoundError",
    "OverloadedError",
    "PrerankError",
    "ProtocolError",
    "RankResult",
    "RankedItem",
    "RetryEvent",
    "RetryPolicy",
    "ServerStatus",
    "Transport",
    "UnavailableError",
    "User",
    "VersionStatus",
    "__version__",
    "new_request_id",
]
