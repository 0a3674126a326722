"""Runs of the project's own trainer (``trainers.train.train_dpo``: Ray Train workers, DeepSpeed, peft)
on random preference pairs of a given latent and text shape, for the trainer benchmarks.

Each run is a fresh Ray Train run on the benchmark's local Ray; what a run measures comes back in
the trainer's own final metrics (peak host RSS and its growth per worker, step seconds, parameter
counts), so a benchmark measures exactly what users run.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actors.model_config import ModelConfig
from trainers.config import TrainerConfig
from trainers.schema import PAIR_SCHEMA, SCHEMA_VERSION, tensor_to_bytes


def write_random_pairs(root: str, n: int, latent_shape: tuple[int, ...], text_shape: tuple[int, int],
                       seed: int = 0) -> list[str]:
    """``n`` pairs of random latents ``latent_shape`` and prompt embeddings ``text_shape`` in one shard."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        latents = [torch.randn(latent_shape, generator=g) for _ in range(2)]
        rows.append(dict(
            schema_version=SCHEMA_VERSION, pair_id=f"pair-{i:04d}", round=0, prompt_id=f"q{i}", prompt="a scene",
            model_id="benchmark", scorer="benchmark", winner_seed=2 * i, loser_seed=2 * i + 1,
            winner_score=0.1, loser_score=0.5, winner_motion=0.1, loser_motion=0.1,
            winner_latents=tensor_to_bytes(latents[0]), loser_latents=tensor_to_bytes(latents[1]),
            latent_shape=list(latent_shape), latent_dtype="float32",
            prompt_embeds=tensor_to_bytes(torch.randn(text_shape, generator=g)), image_latents=None,
        ))
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "pairs-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), path)
    return [path]


def train_run(model: ModelConfig, trainer: dict[str, Any], pair_files: list[str]) -> dict[str, Any]:
    """One trainer run to a temporary store; its final metrics plus its per-step ``history``, whether
    the exported LoRA has a non-zero B (it trained) and its tensor count."""
    from safetensors.torch import load_file

    from trainers.train import train_dpo

    cfg = TrainerConfig(**trainer)
    with tempfile.TemporaryDirectory(prefix="videogpa-bench-") as d:
        lora = os.path.join(d, "lora")
        metrics = train_dpo(cfg, model, pair_files, None, os.path.join(d, "store"), "bench", lora)
        exported = {}
        for f in sorted(os.listdir(lora)):
            exported.update(load_file(os.path.join(lora, f)))
        with open(os.path.join(metrics["checkpoint"], "trainer_state.json")) as f:
            metrics["history"] = json.load(f)["history"]  # read before the run's directory goes
    metrics["lora_nonzero"] = any("lora_B" in k and bool(v.abs().sum() > 0) for k, v in exported.items())
    metrics["lora_tensors"] = len(exported)
    return metrics
