#!/usr/bin/env python3
"""Regenerate ``src/prerank/v1/rank_pb2.py`` and ``.pyi`` from the repository's ``proto/``.

The generated code is committed (README, "Protobuf"): it is made with the protoc of
``grpcio-tools==1.71.0`` (libprotoc 29.0, gencode 5.29), the oldest gencode the package supports, so
it runs on every protobuf runtime from 5.29 on (a runtime may be newer than its gencode, never
older). Run it in a scratch environment after changing ``proto/``:

    python3 -m venv /tmp/gen && /tmp/gen/bin/pip install grpcio-tools==1.71.0
    /tmp/gen/bin/python clients/python/scripts/generate_proto.py

``tests/test_proto_gencode.py`` fails when the committed code no longer matches ``proto/``.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PACKAGE = Path(__file__).resolve().parents[1]
PROTO_ROOT = PACKAGE.parents[1] / "proto"
PROTO = "prerank/v1/rank.proto"
OUT = PACKAGE / "src" / "prerank" / "v1"
PROTOC_VERSION = "29.0"


def main() -> int:
    version = importlib.metadata.version("grpcio-tools")
    if version != "1.71.0":
        print(
            f"grpcio-tools {version} found; the committed gencode is made with 1.71.0 (protoc "
            f"{PROTOC_VERSION}): pip install grpcio-tools==1.71.0",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}", PROTO])
        if rc != 0:
            return int(rc)
        for name in ("rank_pb2.py", "rank_pb2.pyi"):
            shutil.copyfile(Path(tmp) / "prerank" / "v1" / name, OUT / name)
            print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
