"""Item vector dtypes: what value each stored component has (independent of the byte layout).

``f32`` is the vector as given; ``f16`` is IEEE binary16 (round to nearest even, as the server's
``half`` crate); ``int8`` is symmetric per-row quantisation, ``scale = max_j |v_j| / 127`` and
``q_j = round(v_j / scale)`` (half away from zero) clamped to [-127, 127], computed in f32 exactly
as the Rust writer does, so both writers store the same bytes. Where the scale is stored is the
layout's business (``layout_v1``), not this module's.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DTYPES = ("f32", "f16", "int8")
F32 = npt.NDArray[np.float32]


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, found {dtype!r}")
    return dtype


def quantize_int8(vectors: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """Per-row int8 codes and f32 scales of ``vectors`` (``[count, dim]`` f32)."""
    v = np.asarray(vectors, dtype=np.float32)
    scale = (np.abs(v).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    x = v / safe[:, None]
    t = np.trunc(x)  # x - t is exact, so ties are found exactly and rounded away from zero
    r = np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t)
    q = np.clip(r, -127, 127).astype(np.int8)
    return q, scale


def stored_values(vectors: F32, dtype: str) -> npt.NDArray[np.float64]:
    """The values the server scores with when ``vectors`` are stored as ``dtype``, as float64."""
    v = np.asarray(vectors, dtype=np.float32)
    if check_dtype(dtype) == "f32":
        return v.astype(np.float64)
    if dtype == "f16":
        return v.astype(np.float16).astype(np.float64)
    q, scale = quantize_int8(v)
    return (q.astype(np.float32) * scale[:, None]).astype(np.float64)
