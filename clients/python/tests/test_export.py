"""The exporter: round trip through ``prerank validate`` and a live server (scores within 1e-5 of
the numpy reference, per stored dtype), byte-identical files and agreeing forward passes with the
Rust writer, atomic publishing, and refusals that name the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Caller
from harness import Server, run_cli, student

from prerank.export import Items, UserTower, read_snapshot, write_snapshot
from prerank.export.layout_v1 import encode_item_files
from prerank.export.writer import _write_chunks


def test_exported_snapshot_passes_prerank_validate(student_dir: Path) -> None:
    out = run_cli("validate", student_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3000 items x 16" in out.stdout and "3 golden checks verified" in out.stdout


@pytest.mark.parametrize("dtype", ["f32", "f16", "int8"])
def test_served_scores_equal_the_numpy_reference(
    callers: dict[str, Caller], dtype: str, dtype_server: Callable[[str], Server], student_dir: Path
) -> None:
    server = dtype_server(dtype)
    snap = read_snapshot(student_dir)
    reference = snap.reference(dtype)
    rng = np.random.default_rng(11)
    ids = snap.items.ids
    for mode in ("sync-json", "async-protobuf"):
        for n_behaviors in (0, 3, 12):  # 12 > max_len 10: truncated on both sides
            user: dict[str, Any] = {
                "id": int(rng.integers(1, 10**6)),
                "features": {
                    "age": float(rng.uniform(10, 70)),
                    "gender": ["f", "m"][int(rng.integers(0, 2))],
                },
                "behaviors": [
                    {"item_id": int(ids[j]), "action": "cart", "seconds_ago": int(rng.integers(0, 10**5))}
                    for j in rng.integers(0, ids.size, size=n_behaviors)
                ],
            }
            if n_behaviors:
                user["behaviors"][0]["category"] = 3  # overrides the snapshot's attribute
                user["behaviors"].append(
                    {"item_id": 99, "dwell_seconds": 2}
                )  # unknown item: attributes missing
            candidates = ids[rng.choice(ids.size, size=1500, replace=False)]
            result = callers[mode](server.url, "rank", user, candidates, k=100)
            assert result.dtype == dtype
            want = dict(reference.rank(user, candidates, 1500))
            got = result.scores.astype(np.float64)
            assert np.abs(got - np.array([want[i] for i in result.item_ids.tolist()])).max() <= 1e-5
            # The reference's top 100, in order (neighbours whose scores tie within 1e-5 may swap).
            expected = [i for i, _ in reference.rank(user, candidates, 100)]
            got_ids = result.item_ids.tolist()
            assert len(got_ids) == len(expected) == 100
            assert all(
                a == b or abs(want[a] - want[b]) <= 2e-5 for a, b in zip(got_ids, expected, strict=True)
            )


def test_item_files_are_byte_identical_to_the_rust_writer(tmp_path: Path) -> None:
    dest = tmp_path / "synth" / "1"
    out = run_cli("synth", dest, "--items", "2500", "--dtypes", "f32,f16,int8", "--seed", "5")
    assert out.returncode == 0, out.stderr
    snap = read_snapshot(dest)
    files = encode_item_files(
        snap.items.ids, snap.items.vectors, snap.items.attribute_table(), ["f32", "f16", "int8"]
    )
    for name, chunks in files.items():
        written = tmp_path / f"py-{name}"
        _write_chunks(written, chunks)
        assert written.read_bytes() == (dest / name).read_bytes(), name
    # The reference forward pass reproduces the Rust producer's golden checks.
    reference = snap.reference("f32")
    for g in snap.manifest["golden"]:
        req = g["request"]
        assert np.abs(reference.user_vector(req["user"]) - np.array(g["user_vector"])).max() < 1e-5
        top = reference.rank(req["user"], req["candidates"], len(g["top"]))
        assert [i for i, _ in top] == [t["item_id"] for t in g["top"]]
        assert max(abs(s - t["score"]) for (_, s), t in zip(top, g["top"], strict=True)) < 1e-4


def test_publish_is_atomic_and_versions_are_immutable(tmp_path: Path) -> None:
    tower, items = student(3, count=200)
    manifest = write_snapshot(tmp_path / "m" / "2", tower, items, golden=2)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["2"]  # no temporary left behind
    on_disk = json.loads((tmp_path / "m" / "2" / "manifest.json").read_text())
    assert on_disk == manifest and (on_disk["model"], on_disk["version"]) == ("m", 2)
    assert set(on_disk["files"]) == {"user_tower.safetensors", "items.f32.vec", "items.idx", "items.attr"}
    assert on_disk["provenance"]["producer"].startswith("prerank-python ")
    with pytest.raises(FileExistsError):
        write_snapshot(tmp_path / "m" / "2", tower, items)
    (tmp_path / "m" / "3").mkdir()  # even an empty directory: rename(2) would replace it
    with pytest.raises(FileExistsError):
        write_snapshot(tmp_path / "m" / "3", tower, items)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["2", "3"]


def test_explicit_golden_requests(tmp_path: Path) -> None:
    tower, items = student(4, count=100)
    req = {
        "user": {"id": "alice", "behaviors": [{"item_id": int(items.ids[0]), "action": "click"}]},
        "candidates": items.ids[:20].tolist(),
        "k": 5,
    }
    manifest = write_snapshot(tmp_path / "m" / "1", tower, items, golden=[req], dtypes=("int8",))
    (check,) = manifest["golden"]
    assert check["request"]["candidates"] == req["candidates"] and len(check["top"]) == 5
    out = run_cli("validate", tmp_path / "m" / "1")
    assert out.returncode == 0, out.stdout + out.stderr


def refusal(
    tmp_path: Path,
    match: str,
    *,
    tower: Callable[[UserTower], UserTower] | None = None,
    items: Callable[[Items], Items] | None = None,
    **kwargs: Any,
) -> None:
    t, i = student(5, count=50)
    with pytest.raises(ValueError, match=match):
        write_snapshot(
            kwargs.pop("dest", tmp_path / "m" / "1"),
            tower(t) if tower else t,
            items(i) if items else i,
            **kwargs,
        )
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


def with_weight(t: UserTower, name: str, value: Any) -> UserTower:
    weights = {**t.weights, name: value}
    if value is None:
        del weights[name]
    return UserTower(t.features, t.architecture, weights)


def test_refusals_name_the_field(tmp_path: Path) -> None:
    refusal(tmp_path, "model: 'bad name'", dest=tmp_path / "bad name" / "1")
    refusal(tmp_path, "version: '01'", dest=tmp_path / "m" / "01")
    refusal(tmp_path, "dtype: expected one of f32, f16, int8, found 'bf16'", dtypes=("bf16",))
    refusal(tmp_path, "tau: expected a positive", tau=0.0)
    refusal(
        tmp_path,
        r"shape of tensor tower.0.weight: expected \[48, 38\], found \[48, 37\]",
        tower=lambda t: with_weight(t, "tower.0.weight", np.zeros((48, 37))),
    )
    refusal(tmp_path, "tensor attn.q.bias missing", tower=lambda t: with_weight(t, "attn.q.bias", None))
    refusal(tmp_path, "unexpected tensor extra", tower=lambda t: with_weight(t, "extra", np.zeros(1)))
    refusal(
        tmp_path,
        "tensor emb.user.age has non-finite values",
        tower=lambda t: with_weight(t, "emb.user.age", np.full((6, 4), np.nan)),
    )
    refusal(
        tmp_path,
        "architecture.d_model: expected 24",
        tower=lambda t: UserTower(t.features, {**t.architecture, "d_model": 32}, t.weights),
    )
    refusal(
        tmp_path,
        "row 3 has L2 norm",
        items=lambda i: Items(
            i.ids, np.where(np.arange(50)[:, None] == 3, 2 * i.vectors, i.vectors), i.attributes
        ),
    )
    refusal(
        tmp_path,
        "id .* appears more than once",
        items=lambda i: Items(np.concatenate([i.ids[:49], i.ids[:1]]), i.vectors, i.attributes),
    )
    refusal(
        tmp_path,
        r"items.attributes\['shop'\]: expected shape \[50\]",
        items=lambda i: Items(i.ids, i.vectors, {"shop": np.zeros(3, dtype=np.uint64)}),
    )
