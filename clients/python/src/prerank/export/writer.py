"""Writing a snapshot version directory (docs/snapshot-format.md), atomically.

``write_snapshot`` checks everything the server would check that it can check without the server
(names, spec, shapes, norms, unique ids), computes the golden checks with ``Reference``, encodes the
files (``layout_v1``), then publishes: every file into a temporary directory next to the
destination (its name starts with ``.``, which the server ignores), each fsynced, the manifest last,
the directory fsynced, one ``rename(2)`` to the integer version name, the parent fsynced. A reader
therefore sees no version or a complete one, never a partial one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors

from .. import __version__
from ..types import User, candidate_array
from . import layout_v1 as layout
from .dtypes import check_dtype
from .reference import Items, Reference, UserTower, sample_users

WEIGHTS_FILE = "user_tower.safetensors"
MANIFEST_FILE = "manifest.json"
PRODUCER = f"prerank-python {__version__}"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_VERSION = re.compile(r"[1-9][0-9]*\Z")


def check_model_name(name: str) -> str:
    if not _MODEL_NAME.match(name):
        raise ValueError(f"model: {name!r} is not a valid name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})")
    return name


def next_version(model_dir: str | os.PathLike[str]) -> int:
    """One more than the highest published version under ``model_dir`` (1 for a new model)."""
    d = Path(model_dir)
    versions = [int(p.name) for p in d.iterdir() if _VERSION.match(p.name)] if d.is_dir() else []
    return max(versions, default=0) + 1


def golden_check(
    reference: Reference, name: str, request: Mapping[str, Any], tolerance: float
) -> dict[str, Any]:
    """One golden check: ``request`` (a rank request body with ``user``, ``candidates``, ``k``) with
    the user vector and top scores of the reference forward pass."""
    user = User.of(request.get("user"))
    candidates = candidate_array(request["candidates"])
    k = int(request["k"])
    top = reference.rank(user, candidates, k)
    return {
        "name": name,
        "request": {"user": user.to_json(), "candidates": candidates.tolist(), "k": k},
        "user_vector": [float(x) for x in reference.user_vector(user)],
        "top": [{"item_id": i, "score": s} for i, s in top],
        "tolerance": tolerance,
    }


def sample_requests(tower: UserTower, items: Items, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rank requests over the snapshot's own items (100 candidates, k = 10) for golden checks."""
    rng = np.random.default_rng(seed)
    requests = []
    for user in sample_users(tower, items, n, rng):
        rows = rng.choice(items.count, size=min(100, items.count), replace=False)
        requests.append({"user": user, "candidates": items.ids[rows].tolist(), "k": min(10, rows.size)})
    return requests


def _write_chunks(path: Path, chunks: Sequence[layout.Chunk]) -> dict[str, Any]:
    """Writes and fsyncs ``path``; its manifest ``files`` entry."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "xb") as fh:
        for chunk in chunks:
            view = (
                memoryview(chunk) if isinstance(chunk, bytes) else np.ascontiguousarray(chunk).data.cast("B")
            )
            fh.write(view)
            digest.update(view)
            size += view.nbytes
        fh.flush()
        os.fsync(fh.fileno())
    return {"bytes": size, "sha256": digest.hexdigest()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    dest: str | os.PathLike[str],
    tower: UserTower,
    items: Items,
    *,
    tau: float = 5.0,
    dtypes: Sequence[str] = ("f32",),
    golden: int | Sequence[Mapping[str, Any]] = 3,
    golden_tolerance: float = 1e-4,
    provenance: Mapping[str, Any] | None = None,
    model: str | None = None,
    version: int | None = None,
    created_at: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes the version directory ``dest`` (``<root>/<model>/<version>``) and returns its manifest.

    - ``dtypes``: the item vector files to store; the first is the server's default.
    - ``golden``: how many sample requests to draw over the snapshot's items (seeded by ``seed``), or
      explicit request bodies (``user``, ``candidates``, ``k``); each gets the reference forward pass's
      user vector and top scores (against f32 when stored, else the first dtype), which the server
      must reproduce within ``golden_tolerance`` before it serves the version.
    - ``provenance``: free-form (training run, metrics, ...); ``producer`` defaults to this package.
    - ``model`` / ``version``: default to the names of ``dest``'s parent and of ``dest``.

    ``dest`` must not exist. Raises ``ValueError`` naming the field for anything the server would
    refuse, ``FileExistsError`` when ``dest`` exists.
    """
    dest = Path(dest)
    model = check_model_name(model if model is not None else dest.resolve().parent.name)
    if version is None:
        if not _VERSION.match(dest.name):
            raise ValueError(
                f"version: {dest.name!r} is not a positive integer without leading zeros; "
                "name the directory by its version or pass version="
            )
        version = int(dest.name)
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version: expected a positive integer, found {version!r}")
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau: expected a positive finite number, found {tau}")
    dtypes = [check_dtype(d) for d in dtypes]
    if not dtypes or len(set(dtypes)) != len(dtypes):
        raise ValueError(f"dtypes: expected distinct dtypes, at least one, found {dtypes}")
    if tower.dim != items.dim:
        raise ValueError(f"items.dim: expected {tower.dim} (last tower width), found {items.dim}")
    if not (np.isfinite(golden_tolerance) and golden_tolerance > 0):
        raise ValueError(f"golden_tolerance: expected > 0, found {golden_tolerance}")
    prov = dict(provenance or {})
    prov.setdefault("producer", PRODUCER)
    if not isinstance(prov["producer"], str):
        raise ValueError("provenance.producer: expected a string")
    if dest.exists():
        raise FileExistsError(f"{dest}: already exists (published versions are immutable)")

    reference = Reference(tower, items, tau, "f32" if "f32" in dtypes else dtypes[0])
    requests = sample_requests(tower, items, golden, seed) if isinstance(golden, int) else list(golden)
    checks = [golden_check(reference, f"python-{i}", r, golden_tolerance) for i, r in enumerate(requests)]

    files: dict[str, list[layout.Chunk]] = {WEIGHTS_FILE: [save_safetensors(dict(tower.weights))]}
    files.update(layout.encode_item_files(items.ids, items.vectors, items.attribute_table(), dtypes))
    manifest: dict[str, Any] = {
        "format_version": layout.FORMAT_VERSION,
        "model": model,
        "version": version,
        "created_at": created_at
        or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tau": float(tau),
        "features": tower.features,
        "architecture": tower.architecture,
        "items": {
            "count": items.count,
            "dim": items.dim,
            "vectors": [{"dtype": d, "file": layout.vectors_file_name(d)} for d in dtypes],
            "index_file": layout.INDEX_FILE,
            "attributes_file": layout.ATTRIBUTES_FILE,
            "attributes": list(items.attributes),
        },
        "weights_file": WEIGHTS_FILE,
        "files": {},
        "provenance": prov,
        "golden": checks,
    }

    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # not mkdtemp: its 0700 would make the version unreadable to other users
    try:
        for name, chunks in files.items():
            manifest["files"][name] = _write_chunks(tmp / name, chunks)
        text = json.dumps(manifest, indent=1, allow_nan=False).encode()
        _write_chunks(tmp / MANIFEST_FILE, [text])
        _fsync_dir(tmp)
        if dest.exists():  # rename(2) would replace an empty directory
            raise FileExistsError(f"{dest}: already exists (published versions are immutable)")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    return manifest
