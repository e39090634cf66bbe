#!/usr/bin/env python3
"""Write a prerank snapshot (format v1) with numpy + safetensors only.

A self-contained example of docs/snapshot-format.md: replace the random weights and item vectors with
your trained student's (batch norm folded into tower.0 / tower.1) and keep the rest. It also computes
golden checks with its own numpy forward pass, so `prerank validate` proves this exporter and the
server agree.

    pip install numpy safetensors
    python3 docs/examples/export_snapshot.py /tmp/models/py-student/1
    prerank validate /tmp/models/py-student/1
"""
import hashlib
import json
import os
import struct
import sys
import tempfile
import time

import numpy as np
from safetensors.numpy import save_file

M64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def canonical(v) -> bytes:
    if isinstance(v, bool):
        return b"true" if v else b"false"
    if isinstance(v, float):
        assert v.is_integer(), "categorical floats must be integral"
        v = int(v)
    return str(v).encode()


def row_of(spec, value) -> int:
    """Embedding row of a raw value (section 3): row 0 is 'missing'."""
    if value is None:
        return 0
    if spec["kind"] == "hashed":
        return 1 + fnv1a64(canonical(value)) % spec["buckets"]
    return 1 + sum(1 for b in spec["boundaries"] if b <= float(value))


def rows(spec) -> int:
    return spec["buckets"] + 1 if spec["kind"] == "hashed" else len(spec["boundaries"]) + 2


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def vec_file(vectors: np.ndarray, dtype: str) -> bytes:
    count, dim = vectors.shape
    payload = {"f32": dim * 4, "f16": dim * 2, "int8": (dim + 3) // 4 * 4 + 4}[dtype]
    stride = (payload + 63) // 64 * 64
    code = {"f32": 1, "f16": 2, "int8": 3}[dtype]
    out = bytearray(64 + count * stride)
    struct.pack_into("<8sIIQIIQ", out, 0, b"PRRKVEC\0", 1, code, count, dim, stride, 64)
    for i, v in enumerate(vectors):
        at = 64 + i * stride
        if dtype == "f32":
            out[at:at + dim * 4] = v.astype("<f4").tobytes()
        elif dtype == "f16":
            out[at:at + dim * 2] = v.astype("<f2").tobytes()
        else:
            scale = float(np.abs(v).max()) / 127
            q = np.clip(np.round(v / scale), -127, 127).astype(np.int8)
            out[at:at + dim] = q.tobytes()
            struct.pack_into("<f", out, at + (dim + 3) // 4 * 4, scale)
    return bytes(out)


def index_file(ids) -> bytes:
    slots = max(16, 1 << (2 * len(ids) - 1).bit_length())
    keys, rws = [0] * slots, [0xFFFFFFFF] * slots
    for row, i in enumerate(ids):
        s = mix64(i) & (slots - 1)
        while rws[s] != 0xFFFFFFFF:
            s = (s + 1) & (slots - 1)
        keys[s], rws[s] = i, row
    head = struct.pack("<8sIIQQQQ16x", b"PRRKIDX\0", 1, 0, len(ids), slots, 64, 64 + 16 * slots)
    table = b"".join(struct.pack("<QII", k, r, 0) for k, r in zip(keys, rws))
    return head + table + np.asarray(ids, dtype="<u8").tobytes()


def attr_file(attrs: np.ndarray) -> bytes:
    count, n = attrs.shape
    head = struct.pack("<8sIIQQ32x", b"PRRKATR\0", 1, n, count, 64)
    return head + attrs.astype("<u8").tobytes()


def forward(t, features, arch, attr_names, id_row, attrs, user):
    """The student user tower of section 4, in numpy (float64)."""
    emb = lambda group, spec, v: t[f"emb.{group}.{spec['name']}"][row_of(spec, v)].astype(np.float64)
    lin = lambda name, x: x @ t[f"{name}.weight"].T.astype(np.float64) + t[f"{name}.bias"]

    def ln(name, x):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + arch["layer_norm_eps"]) * t[f"{name}.weight"] + t[f"{name}.bias"]

    beh = features["behavior"]
    tokens = []
    for b in user.get("behaviors", [])[: beh["max_len"]]:
        tok = []
        for spec in beh["item"]:
            name = spec["name"]
            if name == "item_id":
                v = b["item_id"]
            elif name in b:
                v = b[name]
            elif name in attr_names and b["item_id"] in id_row:
                v = int(attrs[id_row[b["item_id"]], attr_names.index(name)])
            else:
                v = None
            tok.append(emb("behavior", spec, v))
        tok += [emb("behavior", spec, b.get(spec["name"])) for spec in beh["extras"]]
        tokens.append(np.concatenate(tok))
    d, h = arch["d_model"], arch["heads"]
    if tokens:
        x = np.stack(tokens)
        q, k, v = lin("attn.q", x), lin("attn.k", x), lin("attn.v", x)
        dh = d // h
        heads = []
        for i in range(h):
            sl = slice(i * dh, (i + 1) * dh)
            s = q[:, sl] @ k[:, sl].T / np.sqrt(dh)
            p = np.exp(s - s.max(1, keepdims=True))
            heads.append((p / p.sum(1, keepdims=True)) @ v[:, sl])
        h1 = ln("attn.ln1", x + lin("attn.out", np.concatenate(heads, 1)))
        h2 = ln("attn.ln2", h1 + lin("attn.ffn2", np.maximum(lin("attn.ffn1", h1), 0)))
        pooled = h2.mean(0)
    else:
        pooled = np.zeros(d)
    parts = []
    for spec in features["user"]:
        v = user.get("id") if spec["name"] == "user_id" else user.get("features", {}).get(spec["name"])
        parts.append(emb("user", spec, v))
    z = np.concatenate(parts + [pooled])
    leaky = lambda a: np.where(a >= 0, a, arch["leaky_relu_slope"] * a)
    z = lin("tower.2", leaky(lin("tower.1", leaky(lin("tower.0", z)))))
    return z / max(np.linalg.norm(z), 1e-12)


def main(dest: str, count: int = 2000, seed: int = 3):
    rng = np.random.default_rng(seed)
    hashed = lambda n, b, d: {"name": n, "kind": "hashed", "buckets": b, "dim": d}
    bucketized = lambda n, bs, d: {"name": n, "kind": "bucketized", "boundaries": bs, "dim": d}
    features = {
        "user": [hashed("user_id", 1000, 8), bucketized("age", [18, 30, 45, 60], 4)],
        "behavior": {
            "max_len": 20,
            "item": [hashed("item_id", 4000, 8), hashed("category", 50, 4)],
            "extras": [hashed("action", 4, 2), bucketized("seconds_ago", [60, 3600, 86400], 2)],
        },
    }
    arch = {"kind": "pfd-user-tower-v1", "d_model": 16, "heads": 2, "ffn_dim": 32, "ffn_activation": "relu",
            "layer_norm_eps": 1e-5, "tower_widths": [64, 32, 16], "leaky_relu_slope": 0.01}
    dim = arch["tower_widths"][-1]

    # Weights, with the names and shapes of section 5.
    t = {}
    for spec in features["user"]:
        t[f"emb.user.{spec['name']}"] = rng.normal(0, 0.3, (rows(spec), spec["dim"]))
    for spec in features["behavior"]["item"] + features["behavior"]["extras"]:
        t[f"emb.behavior.{spec['name']}"] = rng.normal(0, 0.3, (rows(spec), spec["dim"]))
    d, f = arch["d_model"], arch["ffn_dim"]
    for p in ["q", "k", "v", "out"]:
        t[f"attn.{p}.weight"], t[f"attn.{p}.bias"] = rng.normal(0, d ** -0.5, (d, d)), rng.normal(0, 0.02, d)
    for p in ["ln1", "ln2"]:
        t[f"attn.{p}.weight"], t[f"attn.{p}.bias"] = 1 + rng.normal(0, 0.05, d), rng.normal(0, 0.05, d)
    t["attn.ffn1.weight"], t["attn.ffn1.bias"] = rng.normal(0, d ** -0.5, (f, d)), np.zeros(f)
    t["attn.ffn2.weight"], t["attn.ffn2.bias"] = rng.normal(0, f ** -0.5, (d, f)), np.zeros(d)
    inp = sum(s["dim"] for s in features["user"]) + d
    for i, w in enumerate(arch["tower_widths"]):
        t[f"tower.{i}.weight"], t[f"tower.{i}.bias"] = rng.normal(0, inp ** -0.5, (w, inp)), np.zeros(w)
        inp = w
    t = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}

    # Items: unique ids, one attribute column, L2-normalised vectors from your item tower.
    ids = [int(x) for x in rng.choice(10 ** 9, size=count, replace=False) + 1]
    attrs = rng.integers(0, 50, size=(count, 1), dtype=np.uint64)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    id_row = {i: r for r, i in enumerate(ids)}

    # Golden checks from this script's own forward pass.
    golden = []
    for g in range(3):
        user = {"id": int(rng.integers(1, 10 ** 6)), "features": {"age": int(rng.integers(15, 70))},
                "behaviors": [{"item_id": ids[int(j)], "action": "click", "seconds_ago": int(rng.integers(0, 10 ** 5))}
                              for j in rng.integers(0, count, size=g * 4)]}
        cands = [ids[int(j)] for j in rng.choice(count, size=100, replace=False)]
        u = forward(t, features, arch, ["category"], id_row, attrs, user)
        scores = 5.0 * (vectors[[id_row[c] for c in cands]].astype(np.float64) @ u)
        order = sorted(range(len(cands)), key=lambda i: (-scores[i], cands[i]))[:10]
        golden.append({"name": f"python-{g}", "request": {"user": user, "candidates": cands, "k": 10},
                       "user_vector": [float(x) for x in u],
                       "top": [{"item_id": cands[i], "score": float(scores[i])} for i in order],
                       "tolerance": 1e-4})

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)  # same filesystem, hidden from the server
    files = {"user_tower.safetensors": None, "items.f32.vec": vec_file(vectors, "f32"),
             "items.int8.vec": vec_file(vectors, "int8"), "items.idx": index_file(ids),
             "items.attr": attr_file(attrs)}
    save_file(t, os.path.join(tmp, "user_tower.safetensors"))
    entries = {}
    for name, data in files.items():
        path = os.path.join(tmp, name)
        if data is not None:
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        data = open(path, "rb").read()
        entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    model, version = os.path.basename(parent), int(os.path.basename(dest))
    manifest = {
        "format_version": 1, "model": model, "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tau": 5.0,
        "features": features, "architecture": arch,
        "items": {"count": count, "dim": dim,
                  "vectors": [{"dtype": "f32", "file": "items.f32.vec"}, {"dtype": "int8", "file": "items.int8.vec"}],
                  "index_file": "items.idx", "attributes_file": "items.attr", "attributes": ["category"]},
        "weights_file": "user_tower.safetensors", "files": entries,
        "provenance": {"producer": "docs/examples/export_snapshot.py", "method": "random-init example", "seed": seed},
        "golden": golden,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    dfd = os.open(tmp, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    os.rename(tmp, dest)  # atomic publish: fails if dest exists
    pfd = os.open(parent, os.O_RDONLY)
    os.fsync(pfd)
    os.close(pfd)
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1])
