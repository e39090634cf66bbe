"""Request and result types shared by every transport, and by the exporter's reference forward pass.

Inputs are normalised once, here, into plain Python values (``User``, ``Behavior``, a ``uint64``
candidate array) before any transport encodes them, so JSON and protobuf send the same request and
refuse the same unencodable input with the same ``ValueError`` / ``TypeError`` naming the field.
Everything the server can judge (``k``, limits, unknown features or models) is left to the server,
whose error the client raises as it is (``prerank.errors``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

#: A raw feature value: what a JSON request may carry (``None`` means missing).
FeatureValue = str | int | float | bool | None
#: Candidate item ids: a ``numpy`` integer array (``uint64`` is used without conversion) or any
#: sequence of Python ints.
Candidates = npt.NDArray[np.integer[Any]] | Sequence[int] | Iterable[int]

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)


def feature_value(value: object, path: str) -> FeatureValue:
    """``value`` as a plain JSON scalar, numpy scalars included; refuses what no encoding can carry."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        v = int(value)
        if not I64_MIN <= v <= U64_MAX:
            raise ValueError(f"{path}: the integer {v} is outside the i64/u64 range")
        return v
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"{path}: {f} is not a valid feature value (JSON has no NaN or infinity)")
        return f
    raise TypeError(f"{path}: expected a string, integer, float, bool or None, found {type(value).__name__}")


def item_id(value: object, path: str) -> int:
    """A u64 item id, or a ``ValueError`` / ``TypeError`` naming ``path``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{path}: expected an integer item id, found {type(value).__name__}")
    v = int(value)
    if not 0 <= v <= U64_MAX:
        raise ValueError(f"{path}: {v} is not a u64 item id")
    return v


@dataclass(frozen=True)
class Behavior:
    """One entry of the behaviour sequence: the item and its per-behaviour fields.

    ``fields`` holds the extras (``action``, ``seconds_ago``, ``dwell_seconds``, ...) and, optionally,
    item attributes (``category``, ...) that override the snapshot's table.
    """

    item_id: int
    fields: Mapping[str, FeatureValue] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Behavior | Mapping[str, Any], path: str = "behavior") -> Behavior:
        """A normalised copy of ``value``: a ``Behavior`` or the JSON shape ``{"item_id": ..., **fields}``."""
        if isinstance(value, Behavior):
            raw_id: object = value.item_id
            raw_fields: Mapping[str, Any] = value.fields
        elif isinstance(value, Mapping):
            if "item_id" not in value:
                raise ValueError(f"{path}.item_id: missing")
            raw_id = value["item_id"]
            raw_fields = {k: v for k, v in value.items() if k != "item_id"}
        else:
            raise TypeError(f"{path}: expected a Behavior or a mapping, found {type(value).__name__}")
        fields = {}
        for name, v in raw_fields.items():
            if name == "item_id":
                raise ValueError(f"{path}.fields: `item_id` is the behaviour's own id, not a field")
            fields[_name(name, f"{path}.fields")] = feature_value(v, f"{path}.{name}")
        return cls(item_id(raw_id, f"{path}.item_id"), fields)


@dataclass(frozen=True)
class User:
    """The user of one request: id, profile features and behaviour sequence (most recent first).

    Every part is optional: ``User()`` is a valid cold-start user.
    """

    id: FeatureValue = None
    features: Mapping[str, FeatureValue] = field(default_factory=dict)
    behaviors: Sequence[Behavior] = ()

    @classmethod
    def of(cls, value: User | Mapping[str, Any] | None) -> User:
        """A normalised copy of ``value``: a ``User``, ``None`` (cold start) or the JSON shape
        ``{"id": ..., "features": {...}, "behaviors": [...]}``."""
        if value is None:
            return cls()
        if isinstance(value, User):
            raw_id: object = value.id
            raw_features: Mapping[str, Any] = value.features
            raw_behaviors: Iterable[Any] = value.behaviors
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - {"id", "features", "behaviors"})
            if unknown:
                raise ValueError(f"user: unknown field {unknown[0]!r} (expected id, features, behaviors)")
            raw_id = value.get("id")
            raw_features = value.get("features") or {}
            raw_behaviors = value.get("behaviors") or ()
        else:
            raise TypeError(f"user: expected a User, a mapping or None, found {type(value).__name__}")
        if not isinstance(raw_features, Mapping):
            raise TypeError(f"user.features: expected a mapping, found {type(raw_features).__name__}")
        if isinstance(raw_behaviors, (str, bytes, Mapping)):
            raise TypeError(f"user.behaviors: expected a sequence, found {type(raw_behaviors).__name__}")
        features = {
            _name(k, "user.features"): feature_value(v, f"user.features.{k}") for k, v in raw_features.items()
        }
        behaviors = tuple(Behavior.of(b, f"user.behaviors[{i}]") for i, b in enumerate(raw_behaviors))
        return cls(feature_value(raw_id, "user.id"), features, behaviors)

    def to_json(self) -> dict[str, Any]:
        """The JSON request shape (``docs/api.md``)."""
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.features:
            out["features"] = dict(self.features)
        if self.behaviors:
            out["behaviors"] = [{"item_id": b.item_id, **b.fields} for b in self.behaviors]
        return out


def _name(name: object, path: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{path}: names must be strings, found {type(name).__name__}")
    return name


def candidate_array(candidates: Candidates) -> npt.NDArray[np.uint64]:
    """``candidates`` as a contiguous little-endian ``uint64`` array.

    A contiguous ``uint64`` array is returned as it is (no copy); other integer arrays are checked
    for negative ids and converted; Python sequences are converted once, in C, by numpy.
    """
    if not isinstance(candidates, np.ndarray):
        seq = candidates if isinstance(candidates, Sequence) else list(candidates)
        if isinstance(seq, (str, bytes)):
            raise TypeError("candidates: expected a sequence of integer item ids, found a string")
        if len(seq) == 0:
            return np.zeros(0, dtype="<u8")
        try:
            arr = np.asarray(seq)
        except (OverflowError, ValueError):
            arr = None
        if arr is None or arr.dtype.kind not in "iu":
            # Not plain ints (numpy infers float64 for ints above i64::MAX mixed with small ones):
            # check each value, so 1.5 or "3" is refused instead of silently converted.
            return np.fromiter(
                (item_id(v, f"candidates[{i}]") for i, v in enumerate(seq)), dtype="<u8", count=len(seq)
            )
        candidates = arr
    if candidates.ndim != 1:
        raise ValueError(f"candidates: expected a 1-D array, found shape {candidates.shape}")
    if candidates.dtype.kind == "u":
        return np.ascontiguousarray(candidates, dtype="<u8")
    if candidates.dtype.kind == "i":
        if candidates.size and candidates.min() < 0:
            at = int(np.argmax(candidates < 0))
            raise ValueError(f"candidates[{at}]: {int(candidates[at])} is not a u64 item id")
        return np.ascontiguousarray(candidates, dtype="<u8")
    raise TypeError(f"candidates: expected integer item ids, found dtype {candidates.dtype}")


@dataclass(frozen=True)
class RankRequest:
    """One normalised ``POST /v1/rank`` request, before a transport encodes it."""

    user: User
    candidates: npt.NDArray[np.uint64]
    k: int
    model: str | None = None
    bucket: str | None = None
    with_probability: bool = False


@dataclass(frozen=True)
class RankedItem:
    """One ranked item: ``score`` is the click logit ``tau * <u, v>``."""

    item_id: int
    score: float
    #: ``sigmoid(score)``; only when the request set ``with_probability``.
    probability: float | None = None


@dataclass(frozen=True)
class RankResult:
    """The response of ``POST /v1/rank`` (same fields as the JSON body, ``docs/api.md``)."""

    request_id: str
    bucket: str
    model: str
    version: int
    #: Top-k by descending score (ties: ascending item id).
    items: tuple[RankedItem, ...]
    candidates: int
    unknown_candidates: int
    #: The first 100 unknown ids.
    unknown_candidate_ids: tuple[int, ...]
    duplicate_candidates: int
    ignored_features: tuple[str, ...]
    dtype: str
    took_us: int

    @cached_property
    def item_ids(self) -> npt.NDArray[np.uint64]:
        """The ranked ids as a ``uint64`` array."""
        return np.fromiter((i.item_id for i in self.items), dtype=np.uint64, count=len(self.items))

    @cached_property
    def scores(self) -> npt.NDArray[np.float32]:
        """The scores as a ``float32`` array (the server computes and sends f32)."""
        return np.fromiter((i.score for i in self.items), dtype=np.float32, count=len(self.items))

    @cached_property
    def probabilities(self) -> npt.NDArray[np.float32] | None:
        """``sigmoid(score)`` as a ``float32`` array, or ``None`` without ``with_probability``."""
        if not self.items or self.items[0].probability is None:
            return None
        return np.fromiter(
            (float(i.probability or 0.0) for i in self.items), dtype=np.float32, count=len(self.items)
        )


@dataclass(frozen=True)
class LiveSnapshot:
    """The snapshot a model serves now (``GET /v1/models``, ``live``)."""

    model: str
    version: int
    path: str
    item_count: int
    dim: int
    dtype: str
    dtypes: tuple[str, ...]
    tau: float
    created_at: str
    loaded_at: int
    load_ms: int
    mapped_bytes: int
    golden_checks: int
    provenance: Mapping[str, Any]


@dataclass(frozen=True)
class VersionStatus:
    """One version the server has seen: ``state`` is ``not_loaded``, ``incomplete``, ``loading``,
    ``available`` or ``failed`` (with ``reason``)."""

    version: int
    state: str
    reason: str | None = None


@dataclass(frozen=True)
class ModelStatus:
    """One model: its live snapshot (``None`` when no version serves) and every version tried."""

    name: str
    live: LiveSnapshot | None
    versions: tuple[VersionStatus, ...]


@dataclass(frozen=True)
class BucketStatus:
    """One A/B bucket of the server's plan and what it serves now."""

    name: str
    model: str
    share: float
    #: The pinned version, if the plan pins one.
    version: int | None
    served_here: bool
    #: The version live for this bucket now (``None``: the bucket is not ready).
    live_version: int | None


@dataclass(frozen=True)
class ServerStatus:
    """``GET /v1/models``: every model and, with a bucket config, the bucket plan."""

    models: tuple[ModelStatus, ...]
    buckets: tuple[BucketStatus, ...] = ()

    def model(self, name: str) -> ModelStatus | None:
        """The status of model ``name``, if the server knows it."""
        return next((m for m in self.models if m.name == name), None)
