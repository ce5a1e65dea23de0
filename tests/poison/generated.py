"""Poison inputs too big to keep as files: built here, byte for byte the same on every run.

Each entry is ``name -> (body, field the rejection must name)``; the corpus test feeds them
through the same intake path as the files in ``corpus/``.
"""

from __future__ import annotations

import json
import random

BASE = {
    "env": "CartPole-v1",
    "algorithm": "IMPALA",
    "stop": {"episode_reward_mean": 150, "time_total_s": 300},
}
LIMIT = 256 * 1024  # Settings.max_body_bytes default


def generated_inputs(limit: int = LIMIT) -> dict[str, tuple[bytes, str]]:
    rng = random.Random(20260101)
    valid = json.dumps({**BASE, "request_id": "g-padded"}).encode()
    one_over = json.dumps({**BASE, "request_id": "g-one-over"}).encode()
    return {
        # a valid request made too big by whitespace alone: the size check comes before parsing
        "gen-oversize-whitespace-300k": (valid[:-1] + b" " * (300 * 1024) + b"}", "(body)"),
        "gen-oversize-one-byte-over": (one_over[:-1] + b" " * (limit + 1 - len(one_over)) + b"}", "(body)"),
        "gen-oversize-tag-values": (
            json.dumps(
                {
                    **BASE,
                    "request_id": "g-tags",
                    "tags": {f"t{i}": "v" * 250 for i in range(32)},
                    "experiment": "x" * (300 * 1024),
                }
            ).encode(),
            "(body)",
        ),
        "gen-oversize-binary-1m": (rng.randbytes(1024 * 1024), "(body)"),
        "gen-deep-nesting-100k": (b"[" * 100_000 + b"]" * 100_000, "(body)"),
        # under the body limit, over the 16 KB config limit
        "gen-config-over-16k": (
            json.dumps({**BASE, "request_id": "g-cfg", "config": {"fcnet_hiddens": [256] * 5000}}).encode(),
            "config",
        ),
        "gen-many-unknown-keys": (
            json.dumps({**BASE, "request_id": "g-keys", **{f"x{i:04d}": i for i in range(2000)}}).encode(),
            "x0000",
        ),
    }
