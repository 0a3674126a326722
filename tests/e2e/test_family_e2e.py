"""The families added as one module each (Wan2.1-T2V, Wan2.2-T2V-A14B) run the quickstart path end to
end: preflight, Ray Data generation + scoring + encoding pools, pairing, Ray Train + DeepSpeed DPO,
and a diffusers-format LoRA per expert that loads back into the family's pipeline.

In-process on one shared local Ray runtime (``run_align`` is what ``videogpa align`` runs after its
CLI), with the quickstart config cut to 2 prompts × 2 candidates and 2 optimizer steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from actors.families import get_family
from actors.families.base import lora_weight_name
from actors.model_config import ModelConfig
from actors.models import build_pipeline, generate_videos, load_lora
from pipelines.config import load_config
from pipelines.preflight import preflight
from pipelines.rounds import run_align
from trainers.schema import tensor_from_bytes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["prompts.limit=2", "pairing.candidates_per_prompt=2", "sampling.height=32", "sampling.width=32",
             "trainer.max_steps=2", "trainer.checkpoint_every=2", "trainer.warmup_steps=1"]
NEW_FAMILIES = ("wan2.1-t2v", "wan2.2-t2v-a14b")
# A14B trains on 2 workers, 1 pair each per step: the two ranks' samples meet different experts (an expert
# without a sample on a rank still runs, zero-weighted), and ZeRO's gradient reduction must still line up.
FAMILY_OVERRIDES = {"wan2.2-t2v-a14b": ["trainer.num_workers=2", "trainer.cpus_per_worker=0.5"]}


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory) -> dict[str, Path]:
    """One complete round per new family, each in its own run of one output root."""
    out = tmp_path_factory.mktemp("families")
    for family in NEW_FAMILIES:
        cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                          [f"output_uri={out}", f"run_name={family}", f"model.family={family}", *OVERRIDES,
                           *FAMILY_OVERRIDES.get(family, [])])
        prompts = preflight(cfg, "align", None, started_here=True)
        run_align(cfg, prompts=prompts)
    return {family: out / family / "round-000" for family in NEW_FAMILIES}


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_round_completes_with_the_family_latents(runs, family):
    run = runs[family]
    manifest = json.loads((run / "manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and np.isfinite(metrics["train"]["loss"])
    pairs = pq.ParquetDataset([str(run.parent / f["path"]) for f in manifest["pairs"]["files"]]).read()
    assert pairs.num_rows == manifest["pairs"]["rows"] == 2
    row = pairs.slice(0, 1).to_pylist()[0]
    latents = tensor_from_bytes(row["winner_latents"])
    assert tuple(latents.shape) == (16, 3, 4, 4)  # Wan2.1 VAE: 16 channels, 4x temporal, 8x spatial


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_each_expert_exports_a_lora_that_loads_back(runs, family):
    fam = get_family(family)
    lora_dir = runs[family] / "lora"
    assert sorted(p.name for p in lora_dir.glob("*.safetensors")) == sorted(lora_weight_name(e) for e in fam.experts)
    trained = 0
    for expert in fam.experts:
        state = load_file(str(lora_dir / lora_weight_name(expert)))
        assert state and all(k.startswith("transformer.") for k in state), expert
        trained += any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())
    assert trained >= 1  # B starts at 0: a non-zero B is a trained adapter

    model = ModelConfig(family=family)
    pipe = build_pipeline(model)
    sampling = fam.tiny_sampling()
    base = generate_videos(pipe, model, sampling, "a red cube", [3])
    load_lora(pipe, model, str(lora_dir), scale=1.0)
    for expert in fam.experts:  # every expert carries the adapter, as load_lora_weights put it there
        names = {n for n, _ in getattr(pipe, expert).named_parameters()}
        assert any(".videogpa." in n for n in names), expert
    with torch.no_grad():
        adapted = generate_videos(pipe, model, sampling, "a red cube", [3])
    assert not np.array_equal(adapted, base)
