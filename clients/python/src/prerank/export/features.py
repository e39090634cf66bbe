"""Feature specs and the mapping from raw values to embedding rows (docs/snapshot-format.md section 3).

This mapping must agree with the server's bit for bit: FNV-1a 64 over the value's canonical bytes
for ``hashed`` features, the count of boundaries ``<=`` the value for ``bucketized`` ones, and row 0
for a missing value. ``check_features`` refuses the specs the server would refuse, with the same
kind of message, before any file is written.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..types import FeatureValue

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_M64 = (1 << 64) - 1
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1

#: A feature spec as it appears in the manifest: ``{"name", "kind", "dim", "buckets" | "boundaries"}``.
FeatureSpec = Mapping[str, Any]


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64-bit (offset basis ``0xcbf29ce484222325``, prime ``0x100000001b3``)."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _M64
    return h


def canonical_bytes(value: FeatureValue, path: str) -> bytes:
    """The bytes a categorical value is hashed from: a string's UTF-8, an integer's decimal form,
    ``true`` / ``false``, an integral float as that integer; any other float is an error."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer() and _I64_MIN <= value < _I64_MAX):
            raise ValueError(
                f"{path}: a categorical value must be a string, an integer or a boolean, "
                f"found the float {value}"
            )
        return str(int(value)).encode()
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"{path}: cannot hash a {type(value).__name__}")


def table_rows(spec: FeatureSpec) -> int:
    """Rows of the feature's embedding table, the missing row 0 included."""
    if spec["kind"] == "hashed":
        return int(spec["buckets"]) + 1
    return len(spec["boundaries"]) + 2


def row_of(spec: FeatureSpec, value: FeatureValue, path: str) -> int:
    """The embedding row of ``value`` under ``spec``."""
    if value is None:
        return 0
    if spec["kind"] == "hashed":
        return 1 + fnv1a64(canonical_bytes(value, path)) % int(spec["buckets"])
    if isinstance(value, (str, bool)):
        raise ValueError(f"{path}: expected a number, found a {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{path}: expected a finite number")
    return 1 + sum(1 for b in spec["boundaries"] if b <= x)


def behavior_specs(features: Mapping[str, Any]) -> Iterator[FeatureSpec]:
    """The behaviour item features, then the extras (token order)."""
    yield from features["behavior"]["item"]
    yield from features["behavior"]["extras"]


def user_dim(features: Mapping[str, Any]) -> int:
    return sum(int(s["dim"]) for s in features["user"])


def token_dim(features: Mapping[str, Any]) -> int:
    return sum(int(s["dim"]) for s in behavior_specs(features))


def _check_spec(spec: FeatureSpec, path: str) -> None:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}.name: expected a non-empty string")
    dim = spec.get("dim")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"{path}.dim: expected a positive integer, found {dim!r}")
    kind = spec.get("kind")
    if kind == "hashed":
        buckets = spec.get("buckets")
        if not isinstance(buckets, int) or not 1 <= buckets <= 2**32:
            raise ValueError(f"{path}.buckets: must be in 1..=2^32, found {buckets!r}")
    elif kind == "bucketized":
        bounds = spec.get("boundaries")
        if not isinstance(bounds, Sequence) or not all(
            isinstance(b, (int, float)) and math.isfinite(b) for b in bounds
        ):
            raise ValueError(f"{path}.boundaries: expected a list of finite numbers")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{path}.boundaries: must be strictly increasing")
    else:
        raise ValueError(f"{path}.kind: expected 'hashed' or 'bucketized', found {kind!r}")


def check_features(features: Mapping[str, Any]) -> None:
    """Refuses a feature spec the server would refuse (section 3)."""
    try:
        user, behavior = features["user"], features["behavior"]
        items, extras, max_len = behavior["item"], behavior["extras"], behavior["max_len"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"features: missing {e} (expected user, behavior.item, behavior.extras, behavior.max_len)"
        ) from e
    if not isinstance(max_len, int) or max_len < 0:
        raise ValueError(f"features.behavior.max_len: expected a non-negative integer, found {max_len!r}")
    for group, specs in (("user", user), ("behavior.item", items), ("behavior.extras", extras)):
        for i, spec in enumerate(specs):
            _check_spec(spec, f"features.{group}[{i}]")
    for group, specs in (("user", user), ("behavior", [*items, *extras])):
        names = [s["name"] for s in specs]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"features.{group}: feature {dup!r} listed twice")
