#!/usr/bin/env python3
"""Write a prerank snapshot with the `prerank` Python package (clients/python).

Replace the random weights and item vectors with your trained student's (batch norm folded into
tower.0 / tower.1; PyTorch: `{k: v.detach().cpu().numpy() for k, v in state_dict.items()}` renamed
to the tensor names of docs/snapshot-format.md section 5). The package checks names, shapes and
norms, computes golden checks with its numpy forward pass and publishes atomically, so `prerank
validate` proves this exporter and the server agree.

    pip install ./clients/python
    python3 docs/examples/export_snapshot.py /tmp/models/py-student/1
    prerank validate /tmp/models/py-student/1
"""

import sys

import numpy as np

from prerank.export import Items, UserTower, expected_tensors, write_snapshot

hashed = lambda name, buckets, dim: {"name": name, "kind": "hashed", "buckets": buckets, "dim": dim}
bucketized = lambda name, bounds, dim: {"name": name, "kind": "bucketized", "boundaries": bounds, "dim": dim}
FEATURES = {
    "user": [hashed("user_id", 1000, 8), bucketized("age", [18, 30, 45, 60], 4)],
    "behavior": {
        "max_len": 20,
        "item": [hashed("item_id", 4000, 8), hashed("category", 50, 4)],
        "extras": [hashed("action", 4, 2), bucketized("seconds_ago", [60, 3600, 86400], 2)],
    },
}
ARCHITECTURE = {"kind": "pfd-user-tower-v1", "d_model": 16, "heads": 2, "ffn_dim": 32, "ffn_activation": "relu",
                "layer_norm_eps": 1e-5, "tower_widths": [64, 32, 16], "leaky_relu_slope": 0.01}


def main(dest: str, count: int = 2000, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    # Stand-ins for a trained student: every tensor the spec names, with its shape.
    weights = {name: rng.normal(0, shape[-1] ** -0.5, shape) for name, shape in
               expected_tensors(FEATURES, ARCHITECTURE).items()}
    weights |= {f"attn.{ln}.weight": np.ones(16) for ln in ("ln1", "ln2")}
    vectors = rng.normal(size=(count, 16))
    items = Items(ids=rng.choice(10**9, size=count, replace=False) + 1,
                  vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                  attributes={"category": rng.integers(0, 50, size=count)})
    write_snapshot(dest, UserTower(FEATURES, ARCHITECTURE, weights), items, tau=5.0, dtypes=("f32", "int8"),
                   provenance={"producer": "docs/examples/export_snapshot.py", "method": "random-init example",
                               "seed": seed}, seed=seed)
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1])
