"""Pair shards -> training tensors, and the per-pair randomness (no distribution concerns)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actors.errors import InputError
from trainers.schema import check_schema_version, tensor_from_bytes

# Columns the trainer reads (Ray Data reads only these from Parquet: the rest are metadata).
TRAIN_COLUMNS = [
    "schema_version",
    "pair_id",
    "winner_latents",
    "loser_latents",
    "latent_shape",
    "prompt_embeds",
    "image_latents",
]


@dataclass
class PairBatch:
    pair_ids: list[str]
    winner: torch.Tensor  # [B, ...] x0 latents in the transformer's layout
    loser: torch.Tensor
    prompt_embeds: torch.Tensor  # [B, L, D]
    image_latents: torch.Tensor | None  # [B, ...] or None (T2V)


def _stack(cells: Any, column: str, source: str) -> torch.Tensor:
    ts = [tensor_from_bytes(c) for c in cells]
    shapes = {tuple(t.shape) for t in ts}
    if len(shapes) != 1:
        raise InputError(f"{source}: column {column} mixes tensor shapes {sorted(shapes)} in one batch")
    return torch.stack(ts)


def decode_batch(batch: dict[str, np.ndarray]) -> PairBatch:
    """Decode a Ray Data numpy batch of pair rows; refuses other schema versions (every batch:
    a dataset can mix shards from different writers)."""
    source = "pair shard"
    if "path" in batch and len(batch["path"]):
        source = f"pair shard {sorted(set(map(str, batch['path'])))[0]}"
    check_schema_version(batch, source=source)
    winner = _stack(batch["winner_latents"], "winner_latents", source)
    loser = _stack(batch["loser_latents"], "loser_latents", source)
    shape = tuple(int(x) for x in batch["latent_shape"][0])
    if winner.shape != loser.shape or tuple(winner.shape[1:]) != shape:
        raise InputError(
            f"{source}: latents {tuple(winner.shape[1:])}/{tuple(loser.shape[1:])} disagree with latent_shape {shape}"
        )
    # one prompt per pair, stored as [L, D] (or [1, L, D]) -> [B, L, D]
    prompt = _stack(batch["prompt_embeds"], "prompt_embeds", source)
    if prompt.dim() == 4 and prompt.shape[1] == 1:
        prompt = prompt.flatten(0, 1)
    img_cells = batch.get("image_latents")
    image = None
    if img_cells is not None and any(c is not None for c in img_cells):
        if any(c is None for c in img_cells):
            raise InputError(f"{source}: image_latents is null for some pairs and set for others")
        image = _stack(img_cells, "image_latents", source)
        if image.dim() == winner.dim() + 1 and image.shape[1] == 1:  # stored with a leading 1
            image = image.flatten(0, 1)
    return PairBatch([str(p) for p in batch["pair_id"]], winner, loser, prompt, image)


def pair_seed(seed: int, epoch: int, pair_id: str) -> int:
    """Seed of one pair's noise and timestep in one epoch: independent of world size, batch
    split and resumption, so runs with different worker counts see the same noise per pair."""
    h = hashlib.sha256(f"{seed}:{epoch}:{pair_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
