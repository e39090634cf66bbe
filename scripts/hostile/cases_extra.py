"""Classes of our own, beyond the campaign (attacker and careless operator):
json (nesting, huge numbers, duplicate keys, NUL, ids, k), pb (protobuf field-number and wire-type
games), wire (HTTP/1.0, pipelining, header floods, smuggling shapes, half-close, garbage), admin
(concurrent calls, publish races), op (operator mistakes at start-up). Expected outcomes are those of
docs/api.md and docs/operations.md; these hold today unless listed in KNOWN_FAILING."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import random
import socket
import struct
import subprocess
import time

from harness import (MODEL, Check, ConnClosed, Context, Http, build_request, case, chunked, fsync_dir,
                     nan_in_row, one_request, rank_body, wait_until)
from cases_findings import _must_refuse

J = {"Content-Type": "application/json"}
PB = {"Content-Type": "application/x-protobuf"}


def _raw(ctx: Context, body: bytes, headers=None, timeout: float = 15.0):
    return ctx.shared().post("/v1/rank", body, headers or J, timeout=timeout)


def _alive(ctx: Context, check: Check):
    r = ctx.shared().rank(rank_body(ctx.shared_ids(), n=5, k=1))
    check.status(r, 200, label="a good request afterwards")


def _json_case(name: str, body, want, code=None, expected: str = ""):
    """A JSON body (bytes, or a function of the shared ids) and its expected status(es) and code."""

    @case(f"json.{name}", expected=expected or f"{want} {code or ''}".strip())
    def _(ctx: Context, check: Check):
        b = body(ctx.shared_ids()) if callable(body) else body
        if isinstance(b, (dict, list)):
            b = json.dumps(b).encode()
        r = _raw(ctx, b)
        check.status(r, want, code)
        check.expect(r.status < 500, f"a 5xx for a client mistake: {r.short()}")
        _alive(ctx, check)


def _ok(ids, **kw):
    return rank_body(ids, n=5, k=3, **kw)


_json_case("nesting_depth_100k", b'{"user": {"features": {"age": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}}",
           (400, 422), expected="100,000 nested arrays in a feature value: 400 malformed_json or 422, no crash")
_json_case("nesting_depth_object_10k", lambda ids: (b'{"candidates": [%d], "k": 1, "user": {"features": {"a": '
                                                     % ids[0]) + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}}}",
           (400, 422), expected="10,000 nested objects: 400 or 422, no crash")
_json_case("k_1e400", lambda ids: json.dumps(_ok(ids)).replace('"k": 3', '"k": 1e400').encode(), (400, 422),
           expected="k = 1e400 (overflows a double): 400 or 422, no crash")
_json_case("k_2_pow_64", lambda ids: json.dumps(_ok(ids)).replace('"k": 3', '"k": 18446744073709551616').encode(),
           422, expected="k = 2^64: 422")
_json_case("k_zero", lambda ids: {**_ok(ids), "k": 0}, 422, "invalid_k")
_json_case("k_negative", lambda ids: {**_ok(ids), "k": -5}, 422, "invalid_k")
_json_case("k_over_max", lambda ids: {**_ok(ids), "k": 10_001}, 422, "invalid_k")
_json_case("k_i64_max", lambda ids: {**_ok(ids), "k": 2**63 - 1}, 422, "invalid_k")
_json_case("k_float", lambda ids: {**_ok(ids), "k": 1.5}, 422, "invalid_request")
_json_case("k_string", lambda ids: {**_ok(ids), "k": "3"}, 422, "invalid_request")
_json_case("duplicate_keys", lambda ids: (b'{"k": 1, "k": 2, "candidates": [%d], "user": {}}' % ids[0]), 422,
           "invalid_request", expected="duplicate key k: 422 invalid_request (no silent last-wins)")
_json_case("nul_in_string_value", lambda ids: {**_ok(ids), "user": {"features": {"gender": "f\u0000m"}}},
           (200, 422), expected="a NUL character inside a feature string: 200 (a value like any) or 422")
_json_case("raw_nul_byte", lambda ids: b'{"k": 1,\x00 "candidates": [%d], "user": {}}' % ids[0], 400,
           "malformed_json")
_json_case("invalid_utf8", lambda ids: b'{"k": 1, "candidates": [%d], "user": {"features": {"gender": "\xff\xfe"}}}'
           % ids[0], 400, "malformed_json")
_json_case("candidate_negative", lambda ids: {**_ok(ids), "candidates": [-1]}, 422, "invalid_request")
_json_case("candidate_float", lambda ids: {**_ok(ids), "candidates": [ids[0] + 0.5]}, 422, "invalid_request")
_json_case("candidate_string", lambda ids: {**_ok(ids), "candidates": [str(ids[0])]}, 422, "invalid_request")
_json_case("candidate_2_pow_64", lambda ids: json.dumps(_ok(ids)).replace(str(ids[0]), "18446744073709551616", 1)
           .encode(), 422, "invalid_request")
_json_case("candidate_1e30", lambda ids: json.dumps({**_ok(ids), "candidates": [1]}).replace("[1]", "[1e30]")
           .encode(), 422, "invalid_request")
_json_case("candidates_null", lambda ids: {**_ok(ids), "candidates": None}, 422, "invalid_request")
_json_case("empty_candidates", lambda ids: {**_ok(ids), "candidates": []}, 422, "empty_candidates")
_json_case("too_many_candidates", lambda ids: {**_ok(ids), "candidates": [ids[0]] * 200_001}, 422,
           "too_many_candidates")
_json_case("too_many_behaviors", lambda ids: {**_ok(ids), "user": {"behaviors": [{"item_id": ids[0]}] * 1001}},
           422, "too_many_behaviors")
_json_case("unknown_field", lambda ids: {**_ok(ids), "kk": 1}, 422, "invalid_request")
_json_case("missing_user", lambda ids: {"candidates": ids[:3], "k": 1}, 422, "invalid_request")
_json_case("top_level_array", b"[1, 2, 3]", 422, "invalid_request")
_json_case("top_level_string", b'"rank me"', 422, "invalid_request")
_json_case("empty_body", b"", 400, "malformed_json")
_json_case("truncated", lambda ids: json.dumps(_ok(ids)).encode()[:-3], 400, "malformed_json")
_json_case("feature_array", lambda ids: {**_ok(ids), "user": {"features": {"age": [1, 2]}}}, 422, "invalid_feature")
_json_case("feature_float_categorical", lambda ids: {**_ok(ids), "user": {"features": {"gender": 1.5}}},
           (200, 422), expected="a fraction for a categorical feature: 422 invalid_feature (or 200 if hashed as text)")
_json_case("user_id_object", lambda ids: {**_ok(ids), "user": {"id": {"nested": 1}}}, (200, 422),
           expected="user.id an object: 200 (hashed as its JSON text) or 422, no 5xx")
_json_case("huge_string_feature", lambda ids: {**_ok(ids), "user": {"features": {"gender": "x" * (4 << 20)}}},
           (200, 422), expected="a 4 MiB string feature value under the body limit: 200 or 422, no 5xx")
_json_case("model_traversal", lambda ids: {**_ok(ids), "model": "../../etc/passwd"}, 404, "model_not_found")
_json_case("unknown_bucket", lambda ids: {**_ok(ids), "bucket": "nope"}, 422, "unknown_bucket")
_json_case("all_unknown_candidates", lambda ids: {**_ok(ids), "candidates": [1, 2, 3]}, 200,
           expected="every candidate unknown: 200 with no items, unknown_candidates 3 (not fatal)")
_json_case("body_over_limit", lambda ids: b'{"pad": "' + b"x" * ((8 << 20) + 10) + b'"}', 413, "body_too_large")


@case("json.with_probability_and_ids", expected="200; ties/ordering: scores descending, probability = sigmoid(score)")
def _(ctx, check):
    r = ctx.shared().rank(_ok(ctx.shared_ids(), with_probability=True))
    if check.status(r, 200):
        items = r.json()["items"]
        import math
        check.expect(all(abs(i["probability"] - 1 / (1 + math.exp(-i["score"]))) < 1e-5 for i in items),
                     "probability is not sigmoid(score)")
        check.expect(all(a["score"] >= b["score"] for a, b in zip(items, items[1:])), "scores not descending")


@case("json.bucket_header_non_ascii", expected="x-prerank-bucket with non-ASCII bytes: 422 invalid_request")
def _(ctx, check):
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    r = one_request(ctx.shared().addr, "POST", "/v1/rank", body, [*J.items(), ("x-prerank-bucket", "b\xe9")])
    check.status(r, 422, "invalid_request")


@case("json.header_request_id_rules",
      expected="x-request-id header: echoed when 1..128 visible ASCII; a 200-char or control-char header id "
               "is replaced by a generated 32-hex id (docs/api.md 'Request ids')")
def _(ctx, check):
    s = ctx.shared()
    body = _ok(ctx.shared_ids())
    r = s.rank(body, {"x-request-id": "abc-123"})
    check.expect(r.header("x-request-id") == "abc-123", f"valid header id not echoed: {r.header('x-request-id')}")
    check.expect((r.json() or {}).get("request_id") == "abc-123", "body request_id differs from the header id")
    for bad in ("x" * 200, "a\tb"):
        r = s.rank(body, {"x-request-id": bad})
        hid = r.header("x-request-id") or ""
        check.expect(len(hid) == 32 and all(c in "0123456789abcdef" for c in hid)
                     and (r.json() or {}).get("request_id") == hid,
                     f"bad header id {bad[:10]!r}...: header {hid[:40]!r}, body {(r.json() or {}).get('request_id')!r}")


@case("json.unsupported_content_type", expected="Content-Type: text/plain: 415 unsupported_media_type")
def _(ctx, check):
    check.status(_raw(ctx, json.dumps(_ok(ctx.shared_ids())).encode(), {"Content-Type": "text/plain"}), 415,
                 "unsupported_media_type")


# --------------------------------------------------------------------------------------------- protobuf


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def key(field: int, wt: int) -> bytes:
    return varint((field << 3) | wt)


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def pb_request(ids, k: int = 3, extra: bytes = b"", user: bytes | None = None) -> bytes:
    fv_int = lambda n: key(2, 0) + varint(n)  # noqa: E731  FeatureValue.int_value
    feature = ld(1, b"age") + ld(2, fv_int(31))
    u = user if user is not None else ld(1, fv_int(42)) + ld(2, feature)
    return ld(2, u) + ld(3, b"".join(struct.pack("<Q", i) for i in ids)) + key(4, 0) + varint(k) + extra


def _pb_case(name: str, make, want, code=None, expected: str = "", check_items=None):
    @case(f"pb.{name}", expected=expected or f"{want} {code or ''}".strip())
    def _(ctx: Context, check: Check):
        body = make(ctx.shared_ids()[:5])
        r = _raw(ctx, body, {**PB, "Accept": "application/json"})
        check.status(r, want, code)
        if check_items is not None and r.status == 200:
            n = len((r.json() or {}).get("items", []))
            check.expect(n == check_items, f"{n} items, expected {check_items}")
        _alive(ctx, check)


_pb_case("valid", lambda ids: pb_request(ids), 200, check_items=3, expected="a valid protobuf request: 200, 3 items")
_pb_case("unknown_field_ignored", lambda ids: pb_request(ids, extra=key(99, 0) + varint(7)), 200, check_items=3,
         expected="an unknown field number (99): ignored, 200")
_pb_case("max_field_number_ignored", lambda ids: pb_request(ids, extra=ld(536_870_911, b"xyz")), 200,
         check_items=3, expected="field number 2^29-1 (the largest): ignored, 200")
_pb_case("field_number_zero", lambda ids: pb_request(ids, extra=key(0, 0) + varint(1)), 400, "malformed_protobuf")
_pb_case("candidates_as_varint", lambda ids: pb_request([], extra=key(3, 0) + varint(ids[0])), 400,
         "malformed_protobuf", expected="candidates sent with the varint wire type: 400 malformed_protobuf")
_pb_case("packed_misaligned", lambda ids: ld(2, b"") + ld(3, b"\x01" * 7) + key(4, 0) + varint(1), 400,
         "malformed_protobuf", expected="packed fixed64 candidates of 7 bytes: 400 malformed_protobuf")
_pb_case("length_beyond_buffer", lambda ids: pb_request(ids) + key(5, 2) + varint(1 << 20) + b"ab", 400,
         "malformed_protobuf", expected="a length prefix past the end of the body: 400 malformed_protobuf")
_pb_case("varint_11_bytes", lambda ids: pb_request(ids) + key(4, 0) + b"\xff" * 10 + b"\x01", 400,
         "malformed_protobuf", expected="an 11-byte varint: 400 malformed_protobuf")
_pb_case("unmatched_start_group", lambda ids: pb_request(ids) + key(9, 3), 400, "malformed_protobuf",
         expected="a start-group with no end: 400 malformed_protobuf")
_pb_case("nested_groups_100k", lambda ids: pb_request(ids) + key(9, 3) * 100_000 + key(9, 4) * 100_000,
         (200, 400), expected="100,000 nested groups in an unknown field: 400 (recursion limit) or 200, no crash")
_pb_case("repeated_k_last_wins", lambda ids: pb_request(ids, k=0) + key(4, 0) + varint(2), 200, check_items=2,
         expected="k sent twice (0 then 2): proto3 last-wins, 200 with 2 items")
_pb_case("repeated_k_last_zero", lambda ids: pb_request(ids, k=2) + key(4, 0) + varint(0), 422, "invalid_k")
_pb_case("negative_k", lambda ids: pb_request(ids, k=-3), 422, "invalid_k")
_pb_case("no_user", lambda ids: ld(3, b"".join(struct.pack("<Q", i) for i in ids)) + key(4, 0) + varint(1), 422,
         "invalid_request")
_pb_case("no_candidates", lambda ids: ld(2, b"") + key(4, 0) + varint(1), 422, "empty_candidates")
_pb_case("nan_double_feature", lambda ids: pb_request(ids, user=ld(2, ld(1, b"age") + ld(2, key(4, 1)
         + struct.pack("<d", float("nan"))))), 422, "invalid_feature")
_pb_case("empty_feature_value", lambda ids: pb_request(ids, user=ld(2, ld(1, b"age") + ld(2, b""))), 422,
         "invalid_feature")
_pb_case("invalid_utf8_model", lambda ids: pb_request(ids, extra=ld(5, b"\xff\xfe")), 400, "malformed_protobuf")
_pb_case("garbage", lambda ids: bytes(random.Random(5).randrange(256) for _ in range(4096)), (400, 422),
         expected="4 KiB of random bytes as protobuf: 400 (or 422), no crash")


@case("pb.error_is_protobuf", expected="a protobuf request without Accept that fails gets a protobuf ErrorBody "
                                      "(same status and code as JSON)")
def _(ctx, check):
    r = _raw(ctx, pb_request(ctx.shared_ids()[:3], k=0), PB)
    check.expect(r.status == 422 and "protobuf" in (r.header("content-type") or "") and b"invalid_k" in r.body,
                 f"got {r.status} {r.header('content-type')} {r.body[:60]!r}")


# ------------------------------------------------------------------------------------------------ wire


@case("wire.http10_no_host", expected="HTTP/1.0 without Host: a response (200), then the connection closes")
def _(ctx, check):
    s = ctx.shared()
    with Http(s.addr) as c:
        r = c.request("GET", "/healthz", version="HTTP/1.0")
        check.status(r, 200)
        check.expect(c.closed_by_peer(3), "HTTP/1.0 connection not closed after the response")


@case("wire.pipelining_5", expected="5 requests written at once on one connection: 5 responses, in order")
def _(ctx, check):
    s = ctx.shared()
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    data = b"".join(build_request("POST", "/v1/rank", body, {**J, "x-request-id": f"pipe-{i}"}, addr=s.addr)
                    for i in range(5))
    with Http(s.addr) as c:
        c.send(data)
        got = [c.read_response() for _ in range(5)]
    check.expect([r.status for r in got] == [200] * 5, f"statuses {[r.status for r in got]}")
    check.expect([r.header("x-request-id") for r in got] == [f"pipe-{i}" for i in range(5)],
                 f"out of order: {[r.header('x-request-id') for r in got]}")


def _head_refused(ctx: Context, check: Check, path: str, headers, want=(431,)):
    """A request head the server must refuse with a status (not a bare close), then keep serving."""
    try:
        check.status(one_request(ctx.shared().addr, "GET", path, headers=headers), want)
    except (ConnClosed, OSError) as e:
        check.expect(False, f"closed without a {'/'.join(map(str, want))}: {e}")
    _alive(ctx, check)


@case("wire.header_count_431", expected="120 one-byte headers (over hyper's 100-header limit): 431, server fine")
def _(ctx, check):
    _head_refused(ctx, check, "/healthz", [(f"X-H{i}", "1") for i in range(120)])


@case("wire.header_flood_431", expected="400 headers (~40 KiB head, over --max-header-bytes 16 KiB): 431, "
                                       "server fine")
def _(ctx, check):
    _head_refused(ctx, check, "/healthz", [(f"X-Flood-{i}", "v" * 90) for i in range(400)])


@case("wire.many_small_headers", expected="90 small headers (under the head size limit and hyper's 100-header "
                                         "limit): served, 200")
def _(ctx, check):
    r = one_request(ctx.shared().addr, "GET", "/healthz", headers=[(f"X-H{i}", "1") for i in range(90)])
    check.status(r, 200)


@case("wire.long_uri_431", expected="a 20 KiB request target: 431 or 414, server fine")
def _(ctx, check):
    _head_refused(ctx, check, "/v1/models?" + "a" * (20 << 10), None, want=(414, 431))


@case("wire.te_and_cl_conflict", expected="Transfer-Encoding: chunked and Content-Length together (smuggling "
                                         "shape): 400, or chunked wins and the framing stays intact")
def _(ctx, check):
    s = ctx.shared()
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    with Http(s.addr) as c:
        c.send(build_request("POST", "/v1/rank", chunked(body), {**J, "Transfer-Encoding": "chunked",
                                                                  "Content-Length": "5"}, addr=s.addr))
        r = c.read_response()
        if r.status == 200:  # chunked won (RFC 9112 6.3): the next request on the connection must parse
            try:
                c.send(build_request("GET", "/healthz", addr=s.addr))
                r2 = c.read_response(timeout=5)
                check.status(r2, 200, label="next request on the connection")
            except (ConnClosed, OSError):
                pass  # closing the connection after a conflicting message is also safe
        else:
            check.status(r, 400)


@case("wire.conflicting_content_lengths", expected="two different Content-Length headers: 400")
def _(ctx, check):
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    try:
        r = one_request(ctx.shared().addr, "POST", "/v1/rank", body,
                        [*J.items(), ("Content-Length", str(len(body))), ("Content-Length", "3")])
        check.status(r, 400)
    except ConnClosed:
        pass


@case("wire.invalid_chunk_size", expected="a chunk size that is not hex: 400 (bad_body) or the connection "
                                         "closed; server fine")
def _(ctx, check):
    s = ctx.shared()
    try:
        r = one_request(s.addr, "POST", "/v1/rank", b"zz\r\nabc\r\n0\r\n\r\n", {**J, "Transfer-Encoding": "chunked"})
        check.status(r, 400)
    except ConnClosed:
        pass
    _alive(ctx, check)


@case("wire.te_not_chunked_final_400", expected="Transfer-Encoding: x-hostile (chunked not last): 400 and the "
                                               "connection closed (RFC 9112 6.3 MUST)")
def _(ctx, check):
    s = ctx.shared()
    with Http(s.addr) as c:
        c.send(build_request("POST", "/v1/rank", b"{}", {**J, "Transfer-Encoding": "x-hostile"}, addr=s.addr))
        try:
            r = c.read_response()
            check.status(r, 400)
        except ConnClosed:
            check.expect(False, "closed without a 400")
            return
        check.expect(c.closed_by_peer(3), "connection left open after an unframeable body")


@case("wire.half_close_after_request", expected="a request then shutdown(SHUT_WR): a 200 response or a clean "
                                               "close; the server keeps serving")
def _(ctx, check):
    s = ctx.shared()
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    with Http(s.addr) as c:
        c.send(build_request("POST", "/v1/rank", body, J, addr=s.addr))
        c.sock.shutdown(socket.SHUT_WR)
        try:
            r = c.read_response(timeout=5)
            check.status(r, 200)
        except ConnClosed:
            check.note("closed without a response (hyper does not answer half-closed connections)")
    _alive(ctx, check)


@case("wire.disconnect_mid_body", expected="20 clients that disconnect halfway through their bodies: the "
                                          "server keeps serving, /healthz 200")
def _(ctx, check):
    s = ctx.shared()
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    for _ in range(20):
        with Http(s.addr) as c:
            c.send(build_request("POST", "/v1/rank", None, {**J, "Content-Length": str(len(body))}, addr=s.addr)
                   + body[: len(body) // 2])
    time.sleep(0.2)
    _alive(ctx, check)


@case("wire.garbage_request_line", expected="random bytes instead of a request line: 400 or closed; server fine")
def _(ctx, check):
    s = ctx.shared()
    for seed in range(5):
        with Http(s.addr) as c:
            c.send(bytes(random.Random(seed).randrange(256) for _ in range(300)) + b"\r\n\r\n")
            try:
                r = c.read_response(timeout=5)
                check.status(r, (400, 431, 505))
            except (ConnClosed, TimeoutError):
                pass
    _alive(ctx, check)


@case("wire.http2_preface", expected="an HTTP/2 prior-knowledge preface on the HTTP/1 port: refused (4xx/505 or "
                                    "closed), server fine")
def _(ctx, check):
    s = ctx.shared()
    with Http(s.addr) as c:
        c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        try:
            r = c.read_response(timeout=5)
            check.expect(400 <= r.status < 600 and r.status != 500, f"got {r.short()}")
        except (ConnClosed, TimeoutError):
            pass
    _alive(ctx, check)


@case("wire.lowercase_method", expected="method 'post' (methods are case-sensitive): 405 or 400, not 200")
def _(ctx, check):
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    r = one_request(ctx.shared().addr, "post", "/v1/rank", body, J)
    check.status(r, (400, 405, 501))


@case("wire.absolute_form_target", expected="POST http://host/v1/rank (absolute form): 200 (RFC 9112 3.2.2)")
def _(ctx, check):
    s = ctx.shared()
    body = json.dumps(_ok(ctx.shared_ids())).encode()
    r = one_request(s.addr, "POST", f"http://127.0.0.1:{s.port}/v1/rank", body, J)
    check.status(r, 200)


@case("wire.unknown_route_json_404", expected="an unknown route: 404 not_found with the JSON error body")
def _(ctx, check):
    check.status(ctx.shared().get("/v2/nope"), 404, "not_found")


@case("wire.head_healthz", expected="HEAD /healthz: 200 with no body")
def _(ctx, check):
    with Http(ctx.shared().addr) as c:
        r = c.request("HEAD", "/healthz")
        check.status(r, 200)


# ----------------------------------------------------------------------------------------------- admin


@case("admin.concurrent_calls", background=True, budget=120,
      expected="240 concurrent admin calls (pin/unpin/rollback/load/unload/status) over 3 versions: every "
               "answer 200/404/409, no 5xx, no dropped connection; afterwards unpin + load serve v3 again")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source()
    s = ctx.server("admin-concurrent", src, src, src, admin=True)
    if not wait_until(lambda: (s.live() or {}).get("version") == 3, 15):
        check.expect(False, "v3 never went live")
        return
    ops = [("POST", f"/admin/v1/models/{MODEL}/rollback"), ("POST", f"/admin/v1/models/{MODEL}/unpin"),
           ("POST", f"/admin/v1/models/{MODEL}/versions/1/pin"), ("POST", f"/admin/v1/models/{MODEL}/versions/2/load"),
           ("POST", f"/admin/v1/models/{MODEL}/load"), ("POST", f"/admin/v1/models/{MODEL}/unload"),
           ("GET", f"/admin/v1/models/{MODEL}"), ("GET", "/admin/v1/models"), ("GET", "/admin/v1/buckets"),
           ("POST", f"/admin/v1/models/{MODEL}/versions/9/pin")]
    rng = random.Random(11)
    plan = [rng.choice(ops) for _ in range(240)]
    statuses: dict[str, int] = {}

    def call(op):
        try:
            r = s.admin(*op, timeout=60)
            return f"{r.status}"
        except (OSError, ConnClosed, TimeoutError) as e:
            return type(e).__name__

    with cf.ThreadPoolExecutor(16) as pool:
        for st in pool.map(call, plan):
            statuses[st] = statuses.get(st, 0) + 1
    check.note(f"statuses {statuses}")
    check.expect(set(statuses) <= {"200", "404", "409"}, f"unexpected answers: {statuses}")
    check.status(s.admin("POST", f"/admin/v1/models/{MODEL}/unpin"), 200, label="unpin")
    check.status(s.admin("POST", f"/admin/v1/models/{MODEL}/load"), 200, label="load")
    check.expect(bool(wait_until(lambda: (s.live() or {}).get("version") == 3, 15)), "v3 not live after unpin+load")
    check.status(s.rank(rank_body(ctx.snaps.ids(src), n=5, k=1)), 200, label="rank afterwards")


@case("admin.publish_race", background=True,
      expected="two `prerank publish --version 5` at once into one model directory: exactly one succeeds")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source()
    md = ctx.scratch / "race" / MODEL
    md.mkdir(parents=True)
    procs = [subprocess.Popen([str(ctx.bin), "publish", str(src), str(md), "--version", "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [p.wait(120) for p in procs]
    check.expect(sorted(codes) == [0, 1], f"exit codes {codes}")
    leftovers = [p.name for p in md.iterdir() if p.name != "5"]
    check.expect(not leftovers, f"left behind: {leftovers}")


# ------------------------------------------------------------------------------------------ operator


@case("op.bind_busy_port", background=True,
      expected="--bind on a port already in use: exit 1 with 'cannot listen' naming the address")
def _(ctx: Context, check: Check):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        s = ctx.server("op-busy", start=False)
        s.args[s.args.index("--bind") + 1] = f"127.0.0.1:{port}"
        s.start(wait_ready=False)
        try:
            code = s.proc.wait(15)
        except subprocess.TimeoutExpired:
            check.expect(False, "still running on a busy port")
            return
    check.expect(code == 1 and "cannot listen" in s.log_text(), f"exit {code}: {s.log_tail(2)!r}")


@case("op.bucket_shares_not_one", background=True,
      expected="bucket shares summing to 0.9: refuses to start, naming the shares")
def _(ctx, check):
    f = ctx.scratch / "shares.toml"
    f.write_text(f'[[bucket]]\nname = "a"\nmodel = "{MODEL}"\nshare = 0.5\n\n'
                 f'[[bucket]]\nname = "b"\nmodel = "{MODEL}"\nshare = 0.4\n')
    _must_refuse(ctx, check, "op-shares", args=["--buckets", str(f)], mention=("share",))


@case("op.buckets_file_missing", background=True, expected="--buckets naming a missing file: refuses, naming it")
def _(ctx, check):
    _must_refuse(ctx, check, "op-nobuckets", args=["--buckets", str(ctx.scratch / "absent.toml")],
                 mention=("absent.toml",))


@case("op.whitespace_token_file_refused", background=True,
      expected="--admin-token-file holding only whitespace: refuses to start, naming the token")
def _(ctx, check):
    f = ctx.scratch / "blank-token"
    f.write_text("  \n\t\n")
    _must_refuse(ctx, check, "op-tokenfile", args=["--admin-token-file", str(f)], admin=True, token=None,
                 mention=("token",))


@case("op.admin_without_token_refused", background=True,
      expected="--admin-bind without any token: refuses to start, naming the token")
def _(ctx, check):
    _must_refuse(ctx, check, "op-notoken", admin=True, token=None, mention=("token",))


@case("op.unknown_bucket_pin_refused", background=True,
      expected="--bucket naming a bucket absent from the plan: refuses to start, naming it")
def _(ctx, check):
    f = ctx.scratch / "one.toml"
    f.write_text(f'[[bucket]]\nname = "a"\nmodel = "{MODEL}"\nshare = 1.0\n')
    _must_refuse(ctx, check, "op-pin", args=["--buckets", str(f), "--bucket", "zzz"], mention=("zzz",))


@case("op.empty_model_root", background=True,
      expected="an empty model root: the process runs, /healthz 200, /readyz 503 not_ready, rank 503 no_model")
def _(ctx: Context, check: Check):
    from harness import Server
    root = ctx.scratch / "empty-root"
    root.mkdir()
    s = Server(ctx, "op-empty", root).start(wait_ready=False)
    ok = wait_until(lambda: s.get("/healthz").status == 200, 15)
    check.expect(bool(ok), "never answered /healthz")
    check.status(s.get("/readyz"), 503, "not_ready", label="/readyz")
    r = s.rank({"user": {}, "candidates": [1], "k": 1})
    check.status(r, 503, "no_model", label="rank")
    check.expect(r.header("retry-after") is not None, "503 without Retry-After")


@case("op.garbage_version_dirs_ignored", background=True,
      expected="non-integer, zero-padded and dot directories next to v1 (03, 1.old, .tmp-2, -1, a file named 7): "
               "ignored; v1 serves")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source()
    s = ctx.server("op-garbage", src, args=["--poll-seconds", "1"])
    md = s.root / MODEL
    for d in ("03", "1.old", ".tmp-2", "-1"):
        (md / d).mkdir()
        (md / d / "manifest.json").write_text("{}")
    (md / "7").write_text("a file, not a directory")
    time.sleep(2.5)
    check.expect((s.live() or {}).get("version") == 1, f"live is {s.live()}")
    check.status(s.rank(rank_body(ctx.snaps.ids(src), n=5, k=1)), 200, label="rank")



@case("op.versions_on_disk_all_listed", background=True,
      expected="a bad version published just before a good one (v2 with a NaN row, then v3) is still listed in "
               "/v1/models (not_loaded = 'on disk: not tried yet', or failed), as docs/api.md says")
def _(ctx: Context, check: Check):
    src = ctx.snaps.source()
    s = ctx.server("op-listed", src, args=["--poll-seconds", "1"])
    md = s.root / MODEL
    bad, good = ctx.snaps.stage(src, md, 2, nan_in_row), ctx.snaps.stage(src, md, 3)
    os.rename(bad, md / "2")  # back to back (microseconds): one rescan sees both
    os.rename(good, md / "3")
    fsync_dir(md)
    check.expect(s.wait_live(3), "v3 never went live")
    time.sleep(2.5)  # a couple of rescans
    states = {v["version"]: v["state"] for v in s.model().get("versions", [])}
    check.expect(2 in states, f"v2 is on disk but /v1/models lists only {states}")
