"""The committed ``prerank/v1/rank_pb2.py`` matches ``proto/``: the file descriptor compiled from the
repository's ``.proto`` equals the one embedded in the generated module (regenerate with
``scripts/generate_proto.py`` when this fails)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from prerank.v1 import rank_pb2

PROTO_ROOT = Path(__file__).resolve().parents[3] / "proto"


def without_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """protoc fills in the derived ``json_name`` for descriptor sets and leaves it out of gencode."""
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        without_json_names(m.nested_type)


def test_generated_code_matches_the_proto() -> None:
    if not PROTO_ROOT.is_dir():
        pytest.skip("not in a prerank checkout (proto/ not found)")
    try:
        from grpc_tools import protoc
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("grpcio-tools not installed (pip install './clients/python[test]')")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        assert (
            protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", "prerank/v1/rank.proto"])
            == 0
        )
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    without_json_names(compiled.message_type)
    committed = descriptor_pb2.FileDescriptorProto()
    rank_pb2.DESCRIPTOR.CopyToProto(committed)
    assert committed == compiled, (
        "clients/python/src/prerank/v1/rank_pb2.py is stale: run scripts/generate_proto.py"
    )
