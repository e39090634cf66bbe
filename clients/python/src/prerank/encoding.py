"""The two encodings of ``POST /v1/rank``: JSON and protobuf (``proto/prerank/v1/rank.proto``).

Pure functions from a normalised ``RankRequest`` to body bytes and from body bytes to a
``RankResult``; no I/O, so the sync and async HTTP transports (and a gRPC transport, whose
serializer is exactly ``ProtobufEncoding.encode_rank``) share them.

Protobuf candidates are written without per-id work: ``candidates`` is ``repeated fixed64``
(packed), whose wire form is the field tag, a varint byte length and the ids as little-endian u64,
i.e. the ``uint64`` array's own bytes. The rest of the message is serialised by the protobuf runtime
and the candidates field is appended (protobuf parses concatenated fields as one message), so the
array is copied once, into the body, and never becomes Python ints.

Scores are returned as the exact f32 the server computed in both encodings (JSON's shortest
decimal is rounded back to f32), so the two give equal ``RankResult`` values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from .errors import BAD_RESPONSE, ProtocolError
from .types import FeatureValue, RankedItem, RankRequest, RankResult, User
from .v1 import rank_pb2 as pb

JSON_CONTENT_TYPE = "application/json"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
# Field 3 (candidates), wire type 2 (length-delimited): (3 << 3) | 2.
_CANDIDATES_TAG = b"\x1a"


class Encoding(Protocol):
    """How a rank request and its response are put on the wire."""

    #: ``json`` or ``protobuf``.
    name: str
    #: ``Content-Type`` of the request, and the ``Accept`` of the response.
    content_type: str

    def encode_rank(self, request: RankRequest) -> bytes: ...

    def decode_rank(self, body: bytes) -> RankResult: ...


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an integer, found {type(k).__name__}")
    if not I64_MIN <= k <= I64_MAX:
        raise ValueError(f"k: {k} does not fit a 64-bit integer")
    return k


class JsonEncoding:
    """``application/json``: the default encoding, readable in logs and with curl."""

    name = "json"
    content_type = JSON_CONTENT_TYPE

    def encode_rank(self, request: RankRequest) -> bytes:
        body: dict[str, Any] = {
            "user": request.user.to_json(),
            "candidates": request.candidates.tolist(),
            "k": _check_k(request.k),
        }
        if request.model is not None:
            body["model"] = request.model
        if request.bucket is not None:
            body["bucket"] = request.bucket
        if request.with_probability:
            body["with_probability"] = True
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    def decode_rank(self, body: bytes) -> RankResult:
        try:
            doc = json.loads(body)
            items = doc["items"]
            scores = np.asarray([i["score"] for i in items], dtype=np.float32).tolist()
            probs = [i.get("probability") for i in items]
            if any(p is not None for p in probs):
                probs = np.asarray(probs, dtype=np.float32).tolist()
            return RankResult(
                request_id=str(doc["request_id"]),
                bucket=str(doc["bucket"]),
                model=str(doc["model"]),
                version=int(doc["version"]),
                items=tuple(
                    RankedItem(int(i["item_id"]), s, p) for i, s, p in zip(items, scores, probs, strict=True)
                ),
                candidates=int(doc["candidates"]),
                unknown_candidates=int(doc["unknown_candidates"]),
                unknown_candidate_ids=tuple(int(i) for i in doc.get("unknown_candidate_ids", ())),
                duplicate_candidates=int(doc["duplicate_candidates"]),
                ignored_features=tuple(str(f) for f in doc.get("ignored_features", ())),
                dtype=str(doc["dtype"]),
                took_us=int(doc["took_us"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ProtocolError(BAD_RESPONSE, f"rank response is not the expected JSON: {e!r}") from e


def _set_value(out: pb.FeatureValue, value: FeatureValue) -> None:
    # bool before int: bool is an int in Python.
    if value is None:
        out.null_value = pb.NULL_VALUE
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if value > I64_MAX:
            out.uint_value = value
        else:
            out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    else:
        out.string_value = value


def _set_map(out: Any, values: Mapping[str, FeatureValue]) -> None:
    for name, value in values.items():
        _set_value(out[name], value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _user_message(user: User, out: pb.User) -> None:
    out.SetInParent()  # an empty user is still a user (absent `user` is 422 invalid_request)
    if user.id is not None:
        _set_value(out.id, user.id)
    _set_map(out.features, user.features)
    for b in user.behaviors:
        m = out.behaviors.add()
        m.item_id = b.item_id
        _set_map(m.fields, b.fields)


class ProtobufEncoding:
    """``application/x-protobuf``: packed ``fixed64`` candidates, ~8 bytes per id instead of ~11
    decimal digits, no number parsing on either side."""

    name = "protobuf"
    content_type = PROTOBUF_CONTENT_TYPE

    def encode_rank(self, request: RankRequest) -> bytes:
        msg = pb.RankRequest(k=_check_k(request.k), with_probability=request.with_probability)
        if request.model is not None:
            msg.model = request.model
        if request.bucket is not None:
            msg.bucket = request.bucket
        _user_message(request.user, msg.user)
        head = msg.SerializeToString()
        ids = request.candidates
        if ids.size == 0:
            return head
        return b"".join((head, _CANDIDATES_TAG, _varint(ids.nbytes), ids.data.cast("B")))

    def decode_rank(self, body: bytes) -> RankResult:
        try:
            r = pb.RankResponse.FromString(body)
        except Exception as e:  # the runtime's DecodeError type differs between backends
            raise ProtocolError(BAD_RESPONSE, f"rank response is not a RankResponse: {e}") from e
        return RankResult(
            request_id=r.request_id,
            bucket=r.bucket,
            model=r.model,
            version=r.version,
            items=tuple(
                RankedItem(i.item_id, i.score, i.probability if i.HasField("probability") else None)
                for i in r.items
            ),
            candidates=r.candidates,
            unknown_candidates=r.unknown_candidates,
            unknown_candidate_ids=tuple(r.unknown_candidate_ids),
            duplicate_candidates=r.duplicate_candidates,
            ignored_features=tuple(r.ignored_features),
            dtype=r.dtype,
            took_us=r.took_us,
        )


def decode_error_body(content_type: str, body: bytes) -> tuple[str, str] | None:
    """``(code, message)`` of a prerank error body in either encoding, or ``None`` if it is not one."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf"):
        try:
            e = pb.ErrorBody.FromString(body)
        except Exception:
            return None
        return (e.code, e.message) if e.code else None
    try:
        doc = json.loads(body)
        err = doc["error"]
        return str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        return None


ENCODINGS: dict[str, Encoding] = {"json": JsonEncoding(), "protobuf": ProtobufEncoding()}
