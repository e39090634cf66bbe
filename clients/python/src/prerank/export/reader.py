"""Reading a snapshot version directory back into numpy (``read_snapshot``).

For tests, notebooks and comparisons (e.g. a served score against ``Reference`` over the bytes the
server mapped); it checks sizes, checksums and headers, not everything ``prerank validate`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_safetensors

from . import layout_v1 as layout
from .reference import Items, Reference, UserTower
from .writer import MANIFEST_FILE


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read from disk: its manifest, tower, items and the stored vectors of each dtype."""

    path: Path
    manifest: Mapping[str, Any]
    tower: UserTower
    items: Items
    #: The values each stored dtype decodes to, as f32 (``[count, dim]``).
    stored: Mapping[str, npt.NDArray[np.float32]]

    def reference(self, dtype: str | None = None) -> Reference:
        """The reference forward pass over the stored values of ``dtype`` (default: the first)."""
        dtype = dtype or self.manifest["items"]["vectors"][0]["dtype"]
        if dtype not in self.stored:
            raise ValueError(f"dtype: {dtype!r} is not stored (stored: {', '.join(self.stored)})")
        return Reference(self.tower, self.items, float(self.manifest["tau"]), dtype, self.stored[dtype])


def read_snapshot(path: str | os.PathLike[str], *, verify: bool = True) -> Snapshot:
    """Reads the version directory ``path``; with ``verify``, every file's size and sha256 are checked
    against the manifest first."""
    root = Path(path)
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    if manifest.get("format_version") != layout.FORMAT_VERSION:
        raise ValueError(
            f"{MANIFEST_FILE}: format_version: expected {layout.FORMAT_VERSION}, "
            f"found {manifest.get('format_version')}"
        )
    data = {}
    for name, entry in manifest["files"].items():
        raw = (root / name).read_bytes()
        if verify:
            if len(raw) != entry["bytes"]:
                raise ValueError(f"{name}: size: manifest says {entry['bytes']}, file has {len(raw)}")
            digest = hashlib.sha256(raw).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(
                    f"{name}: sha256 mismatch: manifest says {entry['sha256']}, file has {digest}"
                )
        data[name] = raw
    spec = manifest["items"]
    ids, stored, attrs = layout.read_item_files(data, spec)
    tower = UserTower(
        manifest["features"], manifest["architecture"], load_safetensors(data[manifest["weights_file"]])
    )
    first = next(iter(stored.values()))
    # Items wants unit rows: the f32 file when stored, else the first dtype's values renormalised
    # (only to satisfy the check: scoring uses `stored`).
    base = stored.get("f32", first / np.linalg.norm(first, axis=1, keepdims=True))
    items = Items(ids, base, {n: attrs[:, j] for j, n in enumerate(spec["attributes"])}, norm_tolerance=1e-3)
    return Snapshot(root, manifest, tower, items, stored)
