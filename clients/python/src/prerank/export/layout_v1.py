"""Byte layouts of snapshot format v1 (docs/snapshot-format.md sections 6-8): vector, index and
attribute files, written and read with numpy (no per-row Python loop).

``encode_item_files`` is the one function that decides how the item side is laid out across files
(which file holds an int8 row's scale, what an index slot contains). A new format version that
moves the int8 scale into the index slot replaces that function (and ``read_item_files``); the
writer, the golden checks and the reference forward pass do not change.

Every encoder returns the file as a list of chunks (``bytes`` or numpy arrays) so that large files
are written and hashed without one more copy.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .dtypes import check_dtype, quantize_int8

FORMAT_VERSION = 1
HEADER_LEN = 64
EMPTY_ROW = 0xFFFFFFFF
VECTOR_MAGIC = b"PRRKVEC\0"
INDEX_MAGIC = b"PRRKIDX\0"
ATTR_MAGIC = b"PRRKATR\0"
DTYPE_CODES = {"f32": 1, "f16": 2, "int8": 3}
INDEX_FILE = "items.idx"
ATTRIBUTES_FILE = "items.attr"

Chunk = bytes | npt.NDArray[Any]
U64 = npt.NDArray[np.uint64]


def vectors_file_name(dtype: str) -> str:
    return f"items.{dtype}.vec"


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def row_payload(dtype: str, dim: int) -> int:
    return {"f32": dim * 4, "f16": dim * 2, "int8": _round_up(dim, 4) + 4}[check_dtype(dtype)]


def row_stride(dtype: str, dim: int) -> int:
    """Bytes per row: the payload rounded up to whole 64-byte cache lines."""
    return _round_up(row_payload(dtype, dim), 64)


def encode_vectors(vectors: npt.NDArray[np.float32], dtype: str) -> list[Chunk]:
    """``items.<dtype>.vec``: header, then one cache-line aligned row per item (section 6)."""
    count, dim = vectors.shape
    stride = row_stride(dtype, dim)
    head = struct.pack("<8sIIQIIQ24x", VECTOR_MAGIC, 1, DTYPE_CODES[dtype], count, dim, stride, HEADER_LEN)
    rows = np.zeros((count, stride), dtype=np.uint8)
    if dtype == "f32":
        rows[:, : dim * 4] = vectors.astype("<f4").view(np.uint8).reshape(count, dim * 4)
    elif dtype == "f16":
        rows[:, : dim * 2] = vectors.astype("<f2").view(np.uint8).reshape(count, dim * 2)
    else:
        q, scale = quantize_int8(vectors)
        at = _round_up(dim, 4)
        rows[:, :dim] = q.view(np.uint8)
        rows[:, at : at + 4] = scale.astype("<f4").view(np.uint8).reshape(count, 4)
    return [head, rows]


def mix64(z: U64) -> U64:
    """The SplitMix64 finaliser, elementwise, wrapping mod 2^64."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def index_slots(count: int) -> int:
    """``max(16, next_pow2(2 * count))``."""
    return max(16, 1 << max(0, 2 * count - 1).bit_length())


def build_table(ids: U64, slots: int) -> tuple[U64, npt.NDArray[np.uint32]]:
    """The open-addressing table (keys, rows) of ``ids``: inserted in row order, each at the first
    free slot probing linearly from ``mix64(id)``, exactly as the spec (and the Rust writer) do, so
    both writers produce the same bytes. The home slots are computed vectorised; the insertion is a
    plain Python loop (sequential by definition; seconds per 10^6 ids)."""
    mask = slots - 1
    rows = [EMPTY_ROW] * slots
    for row, home in enumerate((mix64(ids) & np.uint64(mask)).tolist()):
        s = home
        while rows[s] != EMPTY_ROW:
            s = (s + 1) & mask
        rows[s] = row
    table_rows = np.asarray(rows, dtype=np.uint32)
    keys = np.zeros(slots, dtype=np.uint64)
    used = table_rows != EMPTY_ROW
    keys[used] = ids[table_rows[used]]
    return keys, table_rows


def encode_index(ids: U64) -> list[Chunk]:
    """``items.idx``: header, ``slots`` 16-byte entries (key u64, row u32, zero u32), then the ids
    in row order (section 7)."""
    count = ids.size
    slots = index_slots(count)
    head = struct.pack("<8sIIQQQQ16x", INDEX_MAGIC, 1, 0, count, slots, HEADER_LEN, HEADER_LEN + 16 * slots)
    keys, rows = build_table(ids, slots)
    table = np.zeros(slots, dtype=[("key", "<u8"), ("row", "<u4"), ("reserved", "<u4")])
    table["key"] = keys
    table["row"] = rows
    return [head, table, ids.astype("<u8")]


def encode_attributes(attrs: U64) -> list[Chunk]:
    """``items.attr``: header, then ``count * n_attrs`` u64, row-major (section 8)."""
    count, n = attrs.shape
    head = struct.pack("<8sIIQQ32x", ATTR_MAGIC, 1, n, count, HEADER_LEN)
    return [head, np.ascontiguousarray(attrs, dtype="<u8")]


def encode_item_files(
    ids: U64, vectors: npt.NDArray[np.float32], attributes: U64, dtypes: Sequence[str]
) -> dict[str, list[Chunk]]:
    """Every item-side file of a v1 snapshot by file name: one vector file per dtype (int8 rows
    carry their own scale), the id index and the attribute table. (Module doc: the function a new
    layout replaces.)"""
    files = {vectors_file_name(d): encode_vectors(vectors, d) for d in dtypes}
    files[INDEX_FILE] = encode_index(ids)
    files[ATTRIBUTES_FILE] = encode_attributes(attributes)
    return files


def _header(data: bytes, magic: bytes, name: str) -> None:
    if len(data) < HEADER_LEN or data[:8] != magic:
        raise ValueError(f"{name}: magic: expected {magic!r}, found {data[:8]!r}")
    (version,) = struct.unpack_from("<I", data, 8)
    if version != 1:
        raise ValueError(f"{name}: version: expected 1, found {version}")


def decode_vectors(data: bytes, name: str) -> tuple[str, npt.NDArray[np.float32]]:
    """The dtype and the stored values (as f32) of a vector file."""
    _header(data, VECTOR_MAGIC, name)
    code, count, dim, stride, offset = struct.unpack_from("<IQIIQ", data, 12)
    dtype = next((d for d, c in DTYPE_CODES.items() if c == code), None)
    if dtype is None:
        raise ValueError(f"{name}: dtype: expected 1, 2 or 3, found {code}")
    rows = np.frombuffer(data, dtype=np.uint8, count=count * stride, offset=offset).reshape(count, stride)
    if dtype == "f32":
        return dtype, rows[:, : dim * 4].copy().view("<f4").astype(np.float32)
    if dtype == "f16":
        return dtype, rows[:, : dim * 2].copy().view("<f2").astype(np.float32)
    at = _round_up(dim, 4)
    q = rows[:, :dim].copy().view(np.int8).astype(np.float32)
    scale = rows[:, at : at + 4].copy().view("<f4").reshape(count)
    return dtype, (q * scale[:, None]).astype(np.float32)


def decode_index_ids(data: bytes) -> U64:
    """The ids of an index file, in row order."""
    _header(data, INDEX_MAGIC, INDEX_FILE)
    count, _slots, _table, ids_offset = struct.unpack_from("<QQQQ", data, 16)
    return np.frombuffer(data, dtype="<u8", count=count, offset=ids_offset).astype(np.uint64)


def decode_attributes(data: bytes) -> U64:
    """The ``[count, n_attrs]`` attribute table."""
    _header(data, ATTR_MAGIC, ATTRIBUTES_FILE)
    n, count, offset = struct.unpack_from("<IQQ", data, 12)
    return (
        np.frombuffer(data, dtype="<u8", count=count * n, offset=offset).reshape(count, n).astype(np.uint64)
    )


def read_item_files(
    files: Mapping[str, bytes], items: Mapping[str, Any]
) -> tuple[U64, dict[str, npt.NDArray[np.float32]], U64]:
    """Ids, stored vectors by dtype and attributes from a v1 snapshot's item files (``files`` by
    name, ``items`` the manifest's ``items`` object)."""
    ids = decode_index_ids(files[items["index_file"]])
    vectors = {}
    for entry in items["vectors"]:
        dtype, values = decode_vectors(files[entry["file"]], entry["file"])
        vectors[dtype] = values
    return ids, vectors, decode_attributes(files[items["attributes_file"]])
