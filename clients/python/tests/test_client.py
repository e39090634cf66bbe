"""The client against a real server: results equal the service's own JSON, in all four modes
(sync / async x JSON / protobuf), numpy in and out, model status, probes, request ids, pooling."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import MODEL, Caller
from harness import Server, rank_json

import prerank
from prerank import Behavior, RankResult, User
from prerank.export import Snapshot


def behaviors(snapshot: Snapshot, n: int = 3) -> list[dict[str, Any]]:
    ids = snapshot.items.ids
    return [
        {"item_id": int(ids[i]), "action": "click", "seconds_ago": 30 * (i + 1), "dwell_seconds": 4.5}
        for i in range(n)
    ]


def assert_same_as_json(result: RankResult, doc: dict[str, Any]) -> None:
    """``result`` carries exactly what the service's JSON said (scores as the f32 it computed)."""
    assert [i.item_id for i in result.items] == [i["item_id"] for i in doc["items"]]
    assert [i.score for i in result.items] == [float(np.float32(i["score"])) for i in doc["items"]]
    if "probability" in doc["items"][0]:
        assert [i.probability for i in result.items] == [
            float(np.float32(i["probability"])) for i in doc["items"]
        ]
    for field in (
        "bucket",
        "model",
        "version",
        "candidates",
        "unknown_candidates",
        "duplicate_candidates",
        "dtype",
    ):
        assert getattr(result, field) == doc[field], field
    assert list(result.unknown_candidate_ids) == doc.get("unknown_candidate_ids", [])
    assert list(result.ignored_features) == doc.get("ignored_features", [])


def test_results_equal_the_services_own_json(call: Caller, main_server: Server, snapshot: Snapshot) -> None:
    ids = snapshot.items.ids
    candidates = [*ids[:400].tolist(), 7, 8, 9, int(ids[0]), int(ids[1])]  # 3 unknown, 2 repeated
    user = {
        "id": 4242,
        "features": {"age": 31, "gender": "f", "not_a_feature": 1},
        "behaviors": behaviors(snapshot),
    }
    doc = rank_json(
        main_server.url,
        {"model": MODEL, "user": user, "candidates": candidates, "k": 25, "with_probability": True},
    ).json()
    result = call(main_server.url, "rank", user, candidates, k=25, with_probability=True)
    assert_same_as_json(result, doc)
    assert result.unknown_candidate_ids == (7, 8, 9)
    assert result.duplicate_candidates == 2
    assert result.ignored_features == ("not_a_feature",)
    assert len(result.items) == 25
    assert result.took_us >= 0


def test_numpy_candidates_and_result_arrays(call: Caller, main_server: Server, snapshot: Snapshot) -> None:
    ids = snapshot.items.ids[:1000]
    as_list = call(main_server.url, "rank", None, ids.tolist(), k=50)
    as_u64 = call(main_server.url, "rank", None, ids, k=50)
    as_i64 = call(main_server.url, "rank", None, ids.astype(np.int64), k=50)
    assert as_list.items == as_u64.items == as_i64.items
    assert as_u64.item_ids.dtype == np.uint64 and as_u64.scores.dtype == np.float32
    assert as_u64.item_ids.tolist() == [i.item_id for i in as_u64.items]
    assert np.all(np.diff(as_u64.scores) <= 0)  # descending
    assert as_u64.probabilities is None


def test_user_dataclass_equals_the_json_shape(call: Caller, main_server: Server, snapshot: Snapshot) -> None:
    seq = behaviors(snapshot, 2)
    as_dict = {"id": "u-1", "features": {"age": 40}, "behaviors": seq}
    as_types = User(
        id="u-1",
        features={"age": np.int64(40)},
        behaviors=[Behavior(b["item_id"], {k: v for k, v in b.items() if k != "item_id"}) for b in seq],
    )
    ids = snapshot.items.ids[:300]
    assert (
        call(main_server.url, "rank", as_dict, ids, k=10).items
        == call(main_server.url, "rank", as_types, ids, k=10).items
    )


def test_model_argument_overrides_the_clients_default(
    call: Caller, main_server: Server, snapshot: Snapshot
) -> None:
    other = call(main_server.url, "rank", None, [1, 2, 3], k=1, model="other-student")
    assert other.model == "other-student"
    assert other.unknown_candidates == 3 and other.items == ()


def test_list_models(call: Caller, main_server: Server) -> None:
    status = call(main_server.url, "list_models")
    assert [m.name for m in status.models] == ["other-student", MODEL]
    model = status.model(MODEL)
    assert model is not None
    live = model.live
    assert live is not None
    assert (live.version, live.item_count, live.dim, live.dtype, live.dtypes, live.golden_checks) == (
        1,
        3000,
        16,
        "f32",
        ("f32", "f16", "int8"),
        3,
    )
    assert live.provenance["producer"] == "clients/python tests"
    assert [(v.version, v.state) for v in model.versions] == [(1, "available")]
    assert status.buckets == ()


def test_list_models_reports_the_bucket_plan(call: Caller, limited_server: Server) -> None:
    status = call(limited_server.url, "list_models")
    assert [(b.name, b.model, b.share, b.live_version) for b in status.buckets] == [
        ("a", MODEL, 0.5, 1),
        ("b", "ghost", 0.5, None),
    ]


def test_probes(call: Caller, main_server: Server, limited_server: Server) -> None:
    assert call(main_server.url, "is_live") is True
    assert call(main_server.url, "is_ready") is True
    # Bucket b's model does not exist, so the limited server is up but never ready.
    assert call(limited_server.url, "is_live") is True
    assert call(limited_server.url, "is_ready") is False


def test_request_id_is_sent_and_echoed(call: Caller, main_server: Server) -> None:
    result = call(main_server.url, "rank", None, [1], k=1, request_id="frontend-7f3a")
    assert result.request_id == "frontend-7f3a"
    generated = call(main_server.url, "rank", None, [1], k=1)
    assert len(generated.request_id) == 32 and int(generated.request_id, 16) >= 0
    with pytest.raises(prerank.InvalidRequestError) as err:
        call(main_server.url, "rank", None, [1], k=0, request_id="frontend-7f3b")
    assert err.value.request_id == "frontend-7f3b"
    with pytest.raises(ValueError, match="request_id"):
        call(main_server.url, "rank", None, [1], k=1, request_id="has space")


def test_request_id_header_on_the_wire(main_server: Server) -> None:
    seen: list[tuple[str, str]] = []

    def hook(response: httpx.Response) -> None:
        seen.append((response.request.headers["x-request-id"], response.headers["x-request-id"]))

    with (
        httpx.Client(event_hooks={"response": [hook]}) as http,
        prerank.Client(main_server.url, model=MODEL, http_client=http) as client,
    ):
        client.rank(None, [1], k=1, request_id="abc-123")
        client.list_models(request_id="abc-124")
    assert seen == [("abc-123", "abc-123"), ("abc-124", "abc-124")]


@pytest.mark.parametrize("transport", ["json", "protobuf"])
def test_one_connection_is_reused(main_server: Server, transport: str) -> None:
    local_addrs = []

    def hook(response: httpx.Response) -> None:
        local_addrs.append(response.extensions["network_stream"].get_extra_info("client_addr"))

    with (
        httpx.Client(event_hooks={"response": [hook]}) as http,
        prerank.Client(main_server.url, transport=transport, model=MODEL, http_client=http) as client,
    ):
        for _ in range(5):
            client.rank(None, [1, 2], k=1)
        client.list_models()
    assert len(local_addrs) == 6 and len(set(local_addrs)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["json", "protobuf"])
async def test_async_client_runs_calls_concurrently_on_one_pool(
    main_server: Server, snapshot: Snapshot, transport: str
) -> None:
    ids = snapshot.items.ids[:200]
    async with prerank.AsyncClient(main_server.url, transport=transport, model=MODEL) as client:
        results = await asyncio.gather(*(client.rank({"id": u}, ids, k=5) for u in range(16)))
    assert len({r.request_id for r in results}) == 16
    # Different users, different rankings; the same user (id 0) again gives the same one.
    assert len({tuple(r.item_ids.tolist()) for r in results}) > 1
    async with prerank.AsyncClient(main_server.url, transport=transport, model=MODEL) as client:
        again = await client.rank({"id": 0}, ids, k=5)
    assert again.items == results[0].items


def test_grpc_transport_is_not_available_yet() -> None:
    with pytest.raises(NotImplementedError, match=r"prerank\.v1\.Ranker"):
        prerank.Client("127.0.0.1:50051", transport="grpc")
