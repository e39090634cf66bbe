"""The model a snapshot holds, in numpy: ``UserTower``, ``Items`` and the reference forward pass.

``Reference`` computes, in float64, exactly what docs/snapshot-format.md section 4 specifies and the
server computes in f32: the user vector of a request and ``tau * <u, v>`` for every known
candidate, against the values of a stored dtype. The exporter's golden checks come from it, and a
test can compare a live server's scores with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..types import Candidates, User, candidate_array
from .dtypes import stored_values
from .features import behavior_specs, check_features, row_of, table_rows, token_dim, user_dim

ARCH_KIND = "pfd-user-tower-v1"
F64 = npt.NDArray[np.float64]
#: The format's item limit (count < 2^32 - 1: rows are u32 and 0xFFFFFFFF marks an empty slot).
MAX_ITEMS = 2**32 - 2


def expected_tensors(
    features: Mapping[str, Any], architecture: Mapping[str, Any]
) -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor ``user_tower.safetensors`` holds (section 5)."""
    d, f = int(architecture["d_model"]), int(architecture["ffn_dim"])
    t: dict[str, tuple[int, ...]] = {}
    for spec in features["user"]:
        t[f"emb.user.{spec['name']}"] = (table_rows(spec), int(spec["dim"]))
    for spec in behavior_specs(features):
        t[f"emb.behavior.{spec['name']}"] = (table_rows(spec), int(spec["dim"]))
    for p in ("q", "k", "v", "out"):
        t[f"attn.{p}.weight"], t[f"attn.{p}.bias"] = (d, d), (d,)
    for p in ("ln1", "ln2"):
        t[f"attn.{p}.weight"], t[f"attn.{p}.bias"] = (d,), (d,)
    t["attn.ffn1.weight"], t["attn.ffn1.bias"] = (f, d), (f,)
    t["attn.ffn2.weight"], t["attn.ffn2.bias"] = (d, f), (d,)
    width = user_dim(features) + d
    for i, w in enumerate(architecture["tower_widths"]):
        t[f"tower.{i}.weight"], t[f"tower.{i}.bias"] = (int(w), width), (int(w),)
        width = int(w)
    return t


def check_architecture(features: Mapping[str, Any], a: Mapping[str, Any]) -> None:
    """Refuses an architecture the server would refuse (section 4)."""
    need = (
        "kind",
        "d_model",
        "heads",
        "ffn_dim",
        "ffn_activation",
        "layer_norm_eps",
        "tower_widths",
        "leaky_relu_slope",
    )
    missing = [k for k in need if k not in a]
    if missing:
        raise ValueError(f"architecture.{missing[0]}: missing")
    if a["kind"] != ARCH_KIND:
        raise ValueError(f"architecture.kind: expected {ARCH_KIND!r}, found {a['kind']!r}")
    if a["d_model"] != token_dim(features):
        raise ValueError(
            f"architecture.d_model: expected {token_dim(features)} (sum of behaviour "
            f"feature dims), found {a['d_model']}"
        )
    if a["heads"] <= 0 or a["d_model"] % a["heads"]:
        raise ValueError(
            f"architecture.heads: expected a divisor of d_model {a['d_model']}, found {a['heads']}"
        )
    if a["ffn_dim"] <= 0:
        raise ValueError("architecture.ffn_dim: expected > 0")
    if a["ffn_activation"] != "relu":
        raise ValueError(f"architecture.ffn_activation: expected 'relu', found {a['ffn_activation']!r}")
    if not (math.isfinite(a["layer_norm_eps"]) and a["layer_norm_eps"] > 0):
        raise ValueError("architecture.layer_norm_eps: expected > 0")
    if not math.isfinite(a["leaky_relu_slope"]):
        raise ValueError("architecture.leaky_relu_slope: expected a finite number")
    widths = a["tower_widths"]
    if len(widths) != 3 or any(int(w) <= 0 for w in widths):
        raise ValueError(f"architecture.tower_widths: expected three positive widths, found {widths}")


class UserTower:
    """The student's user tower: feature spec (manifest ``features``), ``architecture`` and weights
    by tensor name (PyTorch ``[out, in]`` convention, batch norm folded into ``tower.0``/``tower.1``).

    Construction checks the spec and every tensor's name, shape and finiteness; any float array is
    accepted and kept as contiguous f32.
    """

    def __init__(
        self,
        features: Mapping[str, Any],
        architecture: Mapping[str, Any],
        weights: Mapping[str, npt.ArrayLike],
    ) -> None:
        check_features(features)
        check_architecture(features, architecture)
        expected = expected_tensors(features, architecture)
        converted: dict[str, npt.NDArray[np.float32]] = {}
        for name, shape in expected.items():
            if name not in weights:
                raise ValueError(f"weights: tensor {name} missing (expected shape {list(shape)})")
            t = np.ascontiguousarray(weights[name], dtype=np.float32)
            if t.shape != shape:
                raise ValueError(
                    f"weights: shape of tensor {name}: expected {list(shape)}, found {list(t.shape)}"
                )
            if not np.isfinite(t).all():
                raise ValueError(f"weights: tensor {name} has non-finite values")
            converted[name] = t
        extra = sorted(set(weights) - set(expected))
        if extra:
            raise ValueError(
                f"weights: unexpected tensor {extra[0]} (the manifest's spec has no such tensor)"
            )
        #: The manifest's ``features`` object.
        self.features = features
        #: The manifest's ``architecture`` object.
        self.architecture = architecture
        #: Every tensor, f32, by name.
        self.weights = converted

    @property
    def dim(self) -> int:
        """Width of the user vector (= the item vectors' dim)."""
        return int(self.architecture["tower_widths"][-1])


class Items:
    """The item side: unique ``ids`` (row order), L2-normalised ``vectors`` (``[count, dim]``) and
    ``attributes``: raw attribute ids by name (``category``, ``shop``, ...), one ``[count]`` column
    each, in the column order of ``items.attr``. ``norm_tolerance`` is the largest deviation of a
    row's L2 norm from 1 (the Rust writer's)."""

    def __init__(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        attributes: Mapping[str, npt.ArrayLike] | None = None,
        norm_tolerance: float = 1e-4,
    ) -> None:
        uids = candidate_array(np.asarray(ids))
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != uids.size or vecs.shape[1] == 0:
            raise ValueError(f"items.vectors: expected shape [{uids.size}, dim], found {list(vecs.shape)}")
        if uids.size > MAX_ITEMS:
            raise ValueError(f"items.ids: at most {MAX_ITEMS} items, found {uids.size}")
        uniq, counts = np.unique(uids, return_counts=True)
        if uniq.size != uids.size:
            raise ValueError(f"items.ids: id {int(uniq[np.argmax(counts > 1)])} appears more than once")
        norms = np.linalg.norm(vecs.astype(np.float64), axis=1)
        bad = ~(np.abs(norms - 1.0) <= norm_tolerance)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"items.vectors: row {row} has L2 norm {norms[row]:.6f}, expected 1 ± "
                f"{norm_tolerance} (normalise the item tower's output)"
            )
        attrs: dict[str, npt.NDArray[np.uint64]] = {}
        for name, column in (attributes or {}).items():
            if name == "item_id":
                raise ValueError("items.attributes: `item_id` is the key, not an attribute")
            col = np.asarray(column)
            if col.shape != (uids.size,):
                raise ValueError(
                    f"items.attributes[{name!r}]: expected shape [{uids.size}], found {list(col.shape)}"
                )
            attrs[name] = candidate_array(col)
        #: Item ids, ``uint64``, row order.
        self.ids = uids
        #: ``[count, dim]`` f32, unit rows.
        self.vectors = vecs
        #: Attribute columns by name, ``uint64``, in file column order.
        self.attributes = attrs

    @property
    def count(self) -> int:
        return int(self.ids.size)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def attribute_table(self) -> npt.NDArray[np.uint64]:
        """``[count, n_attrs]`` in column order."""
        if not self.attributes:
            return np.zeros((self.count, 0), dtype=np.uint64)
        return np.stack(list(self.attributes.values()), axis=1).astype(np.uint64)


class Reference:
    """The reference forward pass and scoring of one snapshot at one stored dtype."""

    def __init__(
        self,
        tower: UserTower,
        items: Items,
        tau: float,
        dtype: str = "f32",
        vectors: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """``vectors``: the stored values when read back from files; default: ``items.vectors``
        converted to ``dtype`` as the writer stores them."""
        if tower.dim != items.dim:
            raise ValueError(f"items.dim: expected {tower.dim} (last tower width), found {items.dim}")
        self.tower = tower
        self.items = items
        self.tau = float(np.float32(tau))  # the manifest's tau is an f32
        self.dtype = dtype
        self._values = (
            stored_values(items.vectors, dtype) if vectors is None else np.asarray(vectors, dtype=np.float64)
        )
        self._row = {int(i): r for r, i in enumerate(items.ids.tolist())}
        self._w = {k: v.astype(np.float64) for k, v in tower.weights.items()}

    def _emb(self, group: str, spec: Mapping[str, Any], value: Any, path: str) -> F64:
        table = self._w[f"emb.{group}.{spec['name']}"]
        return np.asarray(table[row_of(spec, value, path)], dtype=np.float64)

    def _lin(self, name: str, x: F64) -> F64:
        return np.asarray(x @ self._w[f"{name}.weight"].T + self._w[f"{name}.bias"], dtype=np.float64)

    def _ln(self, name: str, x: F64) -> F64:
        eps = float(self.tower.architecture["layer_norm_eps"])
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return np.asarray((x - mu) / np.sqrt(var + eps) * self._w[f"{name}.weight"] + self._w[f"{name}.bias"])

    def _tokens(self, user: User) -> F64 | None:
        features = self.tower.features
        tokens = []
        for j, b in enumerate(user.behaviors[: int(features["behavior"]["max_len"])]):
            path = f"user.behaviors[{j}]"
            parts = []
            for spec in features["behavior"]["item"]:
                name = spec["name"]
                if name == "item_id":
                    value: Any = b.item_id
                elif name in b.fields:
                    value = b.fields[name]
                elif name in self.items.attributes and b.item_id in self._row:
                    value = int(self.items.attributes[name][self._row[b.item_id]])
                else:
                    value = None
                parts.append(self._emb("behavior", spec, value, f"{path}.{name}"))
            for spec in features["behavior"]["extras"]:
                name = spec["name"]
                parts.append(self._emb("behavior", spec, b.fields.get(name), f"{path}.{name}"))
            tokens.append(np.concatenate(parts))
        return np.stack(tokens) if tokens else None

    def _pooled(self, x: F64 | None) -> F64:
        a = self.tower.architecture
        d, heads = int(a["d_model"]), int(a["heads"])
        if x is None:
            return np.zeros(d)
        q, k, v = self._lin("attn.q", x), self._lin("attn.k", x), self._lin("attn.v", x)
        dh = d // heads
        out = []
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out.append((p / p.sum(axis=1, keepdims=True)) @ v[:, cols])
        h1 = self._ln("attn.ln1", x + self._lin("attn.out", np.concatenate(out, axis=1)))
        ffn = self._lin("attn.ffn2", np.maximum(self._lin("attn.ffn1", h1), 0.0))
        return np.asarray(self._ln("attn.ln2", h1 + ffn).mean(axis=0))

    def user_vector(self, user: User | Mapping[str, Any] | None) -> F64:
        """The L2-normalised user vector (float64, ``dim`` values)."""
        u = User.of(user)
        if u.id is not None and "user_id" in u.features:
            raise ValueError("user.features.user_id: given both as user.id and as a feature")
        values = {**u.features, **({"user_id": u.id} if u.id is not None else {})}
        parts = [
            self._emb("user", s, values.get(s["name"]), f"user.features.{s['name']}")
            for s in self.tower.features["user"]
        ]
        z = np.concatenate([*parts, self._pooled(self._tokens(u))])
        slope = float(self.tower.architecture["leaky_relu_slope"])

        def leaky(x: F64) -> F64:
            return np.where(x >= 0, x, slope * x)

        z = self._lin("tower.2", leaky(self._lin("tower.1", leaky(self._lin("tower.0", z)))))
        return np.asarray(z / max(float(np.linalg.norm(z)), 1e-12))

    def scores(
        self, user: User | Mapping[str, Any] | None, candidates: Candidates
    ) -> tuple[npt.NDArray[np.uint64], F64]:
        """``(ids, scores)`` of the known candidates, each once, in first-occurrence order."""
        ids = candidate_array(candidates)
        seen: set[int] = set()
        known = []
        for c in ids.tolist():
            if c in self._row and c not in seen:
                seen.add(c)
                known.append(c)
        rows = np.asarray([self._row[c] for c in known], dtype=np.int64)
        u = self.user_vector(user)
        return np.asarray(known, dtype=np.uint64), np.asarray(
            self.tau * (self._values[rows] @ u), dtype=np.float64
        )

    def rank(
        self, user: User | Mapping[str, Any] | None, candidates: Candidates, k: int
    ) -> list[tuple[int, float]]:
        """The top ``k`` ``(item_id, score)``: descending score, ties by ascending id."""
        ids, scores = self.scores(user, candidates)
        order = sorted(range(ids.size), key=lambda i: (-scores[i], int(ids[i])))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]


def sample_users(
    tower: UserTower, items: Items, n: int, rng: np.random.Generator, behaviors: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """``n`` plausible users for golden checks and smoke tests: an id, a value for every profile
    feature, and ``behaviors[i]`` (default ``0, 4, 8, ...``) behaviours over real item ids with
    every extra set."""

    def value(spec: Mapping[str, Any]) -> int | float:
        if spec["kind"] == "hashed":
            return int(rng.integers(0, 10**6))
        b = spec["boundaries"]
        lo, hi = (float(b[0]) - 1, float(b[-1]) + 1) if b else (0.0, 1.0)
        return round(float(rng.uniform(lo, hi)), 3)

    features = tower.features
    max_len = int(features["behavior"]["max_len"])
    users = []
    for g in range(n):
        count = behaviors[g] if behaviors is not None else 4 * g
        seq = []
        for j in rng.integers(0, items.count, size=min(count, max_len)):
            b: dict[str, Any] = {"item_id": int(items.ids[int(j)])}
            b.update({s["name"]: value(s) for s in features["behavior"]["extras"]})
            seq.append(b)
        users.append(
            {
                "id": int(rng.integers(1, 10**9)),
                "features": {s["name"]: value(s) for s in features["user"] if s["name"] != "user_id"},
                "behaviors": seq,
            }
        )
    return users
