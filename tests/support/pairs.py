"""Synthetic preference-pair shards in the SPEC schema, for training and shard-reading tests."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from trainers.schema import PAIR_SCHEMA, SCHEMA_VERSION, tensor_to_bytes

SHAPE = (3, 4, 4, 4)  # [F, C, H, W] latents of the tiny cogvideox-t2v preset


def synthetic_pairs(n: int, seed: int = 0, swapped: frozenset[str] = frozenset()) -> list[dict]:
    """Preference pairs with a learnable preference: winners are near-constant latent fields,
    losers white noise (what an 'easier', smoother winner looks like to the model). The pairs named
    in ``swapped`` prefer the noise: they disagree with all the others."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        winner = torch.full(SHAPE, float(torch.randn(1, generator=g)) * 0.3)
        loser = torch.randn(SHAPE, generator=g)
        if f"pair-{i:03d}" in swapped:
            winner, loser = loser, winner
        rows.append(dict(
            schema_version=SCHEMA_VERSION, pair_id=f"pair-{i:03d}", round=0, prompt_id=f"q{i}", prompt="a cube",
            model_id="tiny:cogvideox-t2v", scorer="3dcs:oracle", winner_seed=2 * i, loser_seed=2 * i + 1,
            winner_score=0.1, loser_score=0.5, winner_motion=0.1, loser_motion=0.1,
            winner_latents=tensor_to_bytes(winner), loser_latents=tensor_to_bytes(loser),
            latent_shape=list(SHAPE), latent_dtype="float32",
            prompt_embeds=tensor_to_bytes(torch.randn(16, 32, generator=g)), image_latents=None,
        ))
    return rows


def write_shards(root: str, n: int, files: int = 2, filesystem=None,
                 swapped: frozenset[str] = frozenset()) -> list[str]:
    rows, per, out = synthetic_pairs(n, swapped=swapped), n // files, []
    if filesystem is None:
        os.makedirs(root, exist_ok=True)
    for k in range(files):
        path = f"{root}/pairs-{k:03d}.parquet"
        part = rows[k * per:(k + 1) * per if k < files - 1 else n]  # the last file takes the remainder
        pq.write_table(pa.Table.from_pylist(part, schema=PAIR_SCHEMA), path,
                       filesystem=filesystem)
        out.append(path)
    return out
