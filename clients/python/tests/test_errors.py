"""Every error class: the right exception, the server's own code, status and message, in all four
modes. Real servers produce every status they can; ``ScriptedServer`` only the rest (429, 500, a
proxy's 502, garbage, silence)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import MODEL, Caller
from harness import ScriptedServer, Server, rank_json

import prerank
from prerank import NO_RETRY, RetryPolicy
from prerank.errors import PrerankError
from prerank.export import Snapshot
from prerank.transport import error_from_response

NO_RETRIES = {"retry": NO_RETRY}


def raises(
    call: Caller, url: str, kind: type[PrerankError], code: str, status: int | None, *args: Any, **kwargs: Any
) -> PrerankError:
    with pytest.raises(kind) as info:
        call(url, "rank", *args, client_options=NO_RETRIES, **kwargs)
    err = info.value
    assert (err.code, err.status) == (code, status), str(err)
    return err


def server_error(url: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """Status, code and message the server's JSON API gives for ``body``."""
    r = rank_json(url, body)
    return r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"k": 0}, "invalid_k"),
        ({"k": 10_001}, "invalid_k"),
        ({"candidates": []}, "empty_candidates"),
        ({"user": {"features": {"age": "old"}}}, "invalid_feature"),
        ({"user": {"features": {"gender": 1.5}}}, "invalid_feature"),
        ({"user": {"id": 7, "features": {"user_id": 7}}}, "invalid_feature"),
    ],
)
def test_invalid_requests(call: Caller, main_server: Server, body: dict[str, Any], code: str) -> None:
    req = {"user": {}, "candidates": [1, 2], "k": 1, **body}
    err = raises(
        call,
        main_server.url,
        prerank.InvalidRequestError,
        code,
        422,
        req["user"],
        req["candidates"],
        k=req["k"],
    )
    # Exactly what the service says over JSON.
    assert (err.status, err.code, err.message) == server_error(main_server.url, {"model": MODEL, **req})
    assert err.retryable is False and err.attempts == 1


def test_limits(call: Caller, limited_server: Server, snapshot: Snapshot) -> None:
    url = limited_server.url
    err = raises(
        call, url, prerank.InvalidRequestError, "too_many_candidates", 422, None, list(range(1, 502)), k=1
    )
    assert err.message == "candidates: at most 500 allowed, found 501"
    seq = [{"item_id": int(i)} for i in snapshot.items.ids[:5]]
    err = raises(
        call, url, prerank.InvalidRequestError, "too_many_behaviors", 422, {"behaviors": seq}, [1], k=1
    )
    assert err.message == "user.behaviors: at most 4 allowed, found 5"
    raises(call, url, prerank.InvalidRequestError, "invalid_k", 422, None, [1], k=51)
    err = raises(
        call,
        url,
        prerank.InvalidRequestError,
        "body_too_large",
        413,
        {"features": {"gender": "x" * 20_000}},
        [1],
        k=1,
    )
    assert err.message == "request body is larger than the limit of 16384 bytes"


def test_model_errors(call: Caller, main_server: Server) -> None:
    err = raises(
        call, main_server.url, prerank.NotFoundError, "model_not_found", 404, None, [1], k=1, model="nope"
    )
    assert (err.status, err.code, err.message) == server_error(
        main_server.url, {"model": "nope", "user": {}, "candidates": [1], "k": 1}
    )
    # Two models, no default: the request must name one.
    with pytest.raises(prerank.InvalidRequestError) as info:
        call(main_server.url, "rank", None, [1], k=1, client_options={"model": None, **NO_RETRIES})
    assert (info.value.code, info.value.status) == ("model_required", 422)


def test_bucket_errors(call: Caller, limited_server: Server) -> None:
    raises(
        call,
        limited_server.url,
        prerank.InvalidRequestError,
        "unknown_bucket",
        422,
        None,
        [1],
        k=1,
        bucket="zzz",
    )
    err = raises(
        call,
        limited_server.url,
        prerank.UnavailableError,
        "bucket_unavailable",
        503,
        None,
        [1],
        k=1,
        bucket="b",
    )
    assert err.retry_after == 1.0 and err.retryable
    served = call(limited_server.url, "rank", None, [1], k=1, bucket="a")
    assert served.bucket == "a"


def test_no_model_yet(call: Caller, empty_server: Server) -> None:
    err = raises(call, empty_server.url, prerank.UnavailableError, "no_model", 503, None, [1], k=1)
    assert err.retry_after == 1.0
    assert call(empty_server.url, "is_ready") is False


def test_server_deadline(deadline_server: Server) -> None:
    """A real 504: a request whose body stops short of its content-length outlives the server's
    1 ms deadline. (Read off a raw socket: through any HTTP client, a large body still being sent
    when the server answers and closes races the response with a connection reset.)"""
    host, port = deadline_server.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/rank HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"x-request-id: dl-1\r\ncontent-length: 100\r\n\r\n{"
        )
        raw = b""
        while not _complete(raw):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = [(name, value) for name, value in (line.split(": ", 1) for line in lines)]
    err = error_from_response(httpx.Response(int(status_line.split()[1]), headers=headers, content=body))
    assert type(err) is prerank.DeadlineExceededError and isinstance(err, TimeoutError)
    assert (err.status, err.code, err.request_id) == (504, "timeout", "dl-1")
    assert err.message == "the request took longer than its limit of 1 ms"


def _complete(raw: bytes) -> bool:
    """A whole HTTP response with a content-length body is in ``raw``."""
    if b"\r\n\r\n" not in raw:
        return False
    head, body = raw.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


@pytest.mark.parametrize(
    ("content_type", "body", "cls", "status", "code", "message"),
    [
        (
            "application/json",
            b'{"user": {}, "candidates": [1,',
            prerank.InvalidRequestError,
            400,
            "malformed_json",
            "malformed JSON: ",
        ),
        (
            "application/json",
            b'{"user": {}, "candidates": ["x"], "k": 1}',
            prerank.InvalidRequestError,
            422,
            "invalid_request",
            "invalid request: candidates[0]: invalid type: string",
        ),
        (
            "application/x-protobuf",
            b"\x1a\x08\x01",
            prerank.InvalidRequestError,
            400,
            "malformed_protobuf",
            "malformed protobuf: ",
        ),
        (
            "text/plain",
            b"hello",
            prerank.InvalidRequestError,
            415,
            "unsupported_media_type",
            'content type "text/plain" is not supported',
        ),
    ],
)
def test_bodies_the_client_never_sends_map_too(
    main_server: Server,
    content_type: str,
    body: bytes,
    cls: type[PrerankError],
    status: int,
    code: str,
    message: str,
) -> None:
    """Real server responses to hand-made bodies (JSON and protobuf error bodies), through the
    client's response-to-error mapping."""
    r = httpx.post(
        f"{main_server.url}/v1/rank",
        content=body,
        headers={"content-type": content_type, "x-request-id": "raw-1"},
    )
    err = error_from_response(r)
    assert type(err) is cls
    assert (err.status, err.code, err.request_id) == (status, code, "raw-1")
    assert err.message.startswith(message), err.message


def test_unknown_route_and_oversized_headers(main_server: Server) -> None:
    err = error_from_response(httpx.get(f"{main_server.url}/v1/nope"))
    assert (type(err), err.code, err.status) == (prerank.NotFoundError, "not_found", 404)
    with (
        prerank.Client(
            main_server.url, model=MODEL, headers={"x-padding": "p" * 20_000}, retry=NO_RETRY
        ) as c,
        pytest.raises(prerank.InvalidRequestError) as info,
    ):
        c.rank(None, [1], k=1)
    assert (info.value.code, info.value.status) == ("http_431", 431)


@pytest.mark.parametrize("mode", ["sync-json", "async-protobuf"])
def test_statuses_only_a_stand_in_can_send(
    scripted: ScriptedServer, callers: dict[str, Caller], mode: str
) -> None:
    call = callers[mode]
    scripted.add(500, {"error": {"code": "internal", "message": "internal error"}}, x_request_id="s-1")
    err = raises(call, scripted.url, prerank.InternalError, "internal", 500, None, [1], k=1)
    assert (err.message, err.request_id) == ("internal error", "s-1")
    scripted.add(429, b"slow down", retry_after="3")
    err = raises(call, scripted.url, prerank.OverloadedError, "http_429", 429, None, [1], k=1)
    assert (err.message, err.retry_after, err.retryable) == ("slow down", 3.0, True)
    scripted.add(502, b"<html>bad gateway</html>", content_type="text/html")
    err = raises(call, scripted.url, prerank.UnavailableError, "http_502", 502, None, [1], k=1)
    assert err.message == "<html>bad gateway</html>"
    content_type = "application/json" if call.transport == "json" else "application/x-protobuf"
    scripted.add(200, b"\xff\x00 not a response", content_type=content_type)
    raises(call, scripted.url, prerank.ProtocolError, "bad_response", None, None, [1], k=1)
    scripted.add(200, b"{}", content_type="text/html")
    raises(call, scripted.url, prerank.ProtocolError, "bad_response", 200, None, [1], k=1)


def test_client_timeout_and_connection_failure(scripted: ScriptedServer) -> None:
    scripted.hang.set()
    with (
        prerank.Client(scripted.url, timeout=0.3, retry=NO_RETRY) as client,
        pytest.raises(prerank.DeadlineExceededError) as info,
    ):
        client.rank(None, [1], k=1, request_id="t-1")
    assert (info.value.code, info.value.status, info.value.request_id) == ("client_timeout", None, "t-1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        prerank.Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=2, jitter=0)) as client,
        pytest.raises(prerank.ConnectionFailedError) as conn,
    ):
        client.rank(None, [1], k=1)
    assert (conn.value.code, conn.value.status, conn.value.attempts) == ("connection_failed", None, 2)


def test_unencodable_input_is_refused_before_sending(call: Caller, scripted: ScriptedServer) -> None:
    for user, candidates, match in [
        (None, [1, -2], r"candidates\[1\]: -2 is not a u64 item id"),
        (None, np.array([1.5]), "candidates: expected integer item ids"),
        ({"features": {"age": float("nan")}}, [1], "user.features.age: nan is not a valid feature value"),
        ({"features": {"age": [1]}}, [1], "user.features.age: expected a string"),
        ({"behaviors": [{"action": "click"}]}, [1], r"user.behaviors\[0\].item_id: missing"),
        ({"name": "x"}, [1], "user: unknown field 'name'"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            call(scripted.url, "rank", user, candidates, k=1)
    assert scripted.requests == []
