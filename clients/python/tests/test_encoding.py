"""The two encodings without a server: same request either way, candidates written from the
array's own bytes, values mapped onto the protobuf oneof as the server maps JSON scalars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prerank.encoding import JsonEncoding, ProtobufEncoding, decode_error_body
from prerank.types import Behavior, RankRequest, User, candidate_array
from prerank.v1 import rank_pb2 as pb


def request(candidates: np.ndarray) -> RankRequest:
    user = User.of(
        {
            "id": "u-9",
            "features": {"age": 31.5, "vip": True, "big": 2**64 - 1, "neg": -3, "none": None},
            "behaviors": [{"item_id": 2**63 + 5, "action": "buy", "dwell_seconds": 1.25}],
        }
    )
    return RankRequest(user, candidate_array(candidates), k=7, model="m", bucket="b", with_probability=True)


def test_uint64_arrays_are_not_copied_and_go_on_the_wire_as_their_bytes() -> None:
    ids = np.arange(10**6, 10**6 + 5000, dtype=np.uint64)
    assert candidate_array(ids) is ids
    body = ProtobufEncoding().encode_rank(request(ids))
    assert body.endswith(ids.tobytes())
    assert body[-ids.nbytes - 4 : -ids.nbytes] == b"\x1a\xc0\xb8\x02"  # tag 3/LEN, varint 40000
    assert list(pb.RankRequest.FromString(body).candidates) == ids.tolist()


def test_other_integer_arrays_are_converted_once() -> None:
    ids = np.array([3, 1, 2], dtype=np.int32)
    out = candidate_array(ids)
    assert out.dtype == np.dtype("<u8") and out.tolist() == [3, 1, 2]
    strided = np.arange(10, dtype=np.uint64)[::2]
    assert candidate_array(strided).tolist() == [0, 2, 4, 6, 8]
    assert candidate_array(np.array([5, 6], dtype=">u8")).tolist() == [5, 6]


def test_json_and_protobuf_say_the_same() -> None:
    req = request(np.array([11, 12, 2**64 - 1], dtype=np.uint64))
    doc = json.loads(JsonEncoding().encode_rank(req))
    msg = pb.RankRequest.FromString(ProtobufEncoding().encode_rank(req))
    assert doc["candidates"] == list(msg.candidates) == [11, 12, 2**64 - 1]
    assert (doc["k"], doc["model"], doc["bucket"], doc["with_probability"]) == (
        msg.k,
        msg.model,
        msg.bucket,
        msg.with_probability,
    )
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in msg.user.features.items()}
    assert values == {"age": 31.5, "vip": True, "big": 2**64 - 1, "neg": -3, "none": 0}
    assert msg.user.features["big"].WhichOneof("kind") == "uint_value"
    assert msg.user.features["none"].WhichOneof("kind") == "null_value"
    assert doc["user"]["features"] == {"age": 31.5, "vip": True, "big": 2**64 - 1, "neg": -3, "none": None}
    assert msg.user.id.string_value == doc["user"]["id"] == "u-9"
    (b,) = msg.user.behaviors
    assert (b.item_id, b.fields["action"].string_value, b.fields["dwell_seconds"].double_value) == (
        2**63 + 5,
        "buy",
        1.25,
    )
    assert doc["user"]["behaviors"] == [{"item_id": 2**63 + 5, "action": "buy", "dwell_seconds": 1.25}]


def test_empty_user_is_still_sent() -> None:
    req = RankRequest(User(), candidate_array([1]), k=1)
    msg = pb.RankRequest.FromString(ProtobufEncoding().encode_rank(req))
    assert msg.HasField("user") and msg.HasField("k")
    assert json.loads(JsonEncoding().encode_rank(req)) == {"user": {}, "candidates": [1], "k": 1}


def test_protobuf_response_decoding() -> None:
    r = pb.RankResponse(
        request_id="r",
        bucket="default",
        model="m",
        version=3,
        candidates=4,
        unknown_candidates=1,
        unknown_candidate_ids=[99],
        dtype="f16",
        took_us=12,
        items=[pb.RankedItem(item_id=2**64 - 2, score=1.5, probability=0.8)],
    )
    out = ProtobufEncoding().decode_rank(r.SerializeToString())
    assert (out.version, out.unknown_candidate_ids, out.items[0].item_id, out.items[0].score) == (
        3,
        (99,),
        2**64 - 2,
        1.5,
    )
    assert out.items[0].probability == pytest.approx(0.8) and out.probabilities is not None


def test_error_bodies_in_both_encodings() -> None:
    assert decode_error_body("application/json", b'{"error": {"code": "invalid_k", "message": "k: x"}}') == (
        "invalid_k",
        "k: x",
    )
    proto = pb.ErrorBody(code="invalid_k", message="k: x").SerializeToString()
    assert decode_error_body("application/x-protobuf; charset=x", proto) == ("invalid_k", "k: x")
    assert decode_error_body("text/html", b"<html>") is None


def test_behavior_fields_may_not_shadow_the_item_id() -> None:
    with pytest.raises(ValueError, match="item_id"):
        Behavior.of(Behavior(1, {"item_id": 2}))
