"""Snapshot exporter: write a prerank snapshot (docs/snapshot-format.md, format v1) from numpy arrays.

    from prerank.export import Items, UserTower, write_snapshot
    tower = UserTower(features, architecture, weights)          # weights: name -> np.ndarray
    items = Items(ids, vectors, {"category": category_ids})     # vectors: L2-normalised rows
    write_snapshot("models/my-student/3", tower, items, dtypes=("f32", "int8"))

The weights come from any framework (PyTorch ``state_dict`` tensors ``.numpy()``, TensorFlow
variables ``.numpy()``), named and shaped as section 5 of the spec; ``UserTower`` checks them.
``Reference`` is the numpy forward pass the golden checks come from; ``read_snapshot`` reads a
version back.
"""

from .dtypes import DTYPES, quantize_int8, stored_values
from .features import canonical_bytes, fnv1a64, row_of, table_rows
from .layout_v1 import FORMAT_VERSION, encode_item_files
from .reader import Snapshot, read_snapshot
from .reference import Items, Reference, UserTower, expected_tensors, sample_users
from .writer import golden_check, next_version, sample_requests, write_snapshot

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "Items",
    "Reference",
    "Snapshot",
    "UserTower",
    "canonical_bytes",
    "encode_item_files",
    "expected_tensors",
    "fnv1a64",
    "golden_check",
    "next_version",
    "quantize_int8",
    "read_snapshot",
    "row_of",
    "sample_requests",
    "sample_users",
    "stored_values",
    "table_rows",
    "write_snapshot",
]
