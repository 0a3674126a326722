"""``python -m benchmarks.real_size --round``: one round of ``videogpa align`` at the published 5B
sizes with random weights, each stage's peak resident memory measured (see ``benchmarks.real_size``)."""

from __future__ import annotations

import os
import secrets
from typing import Any

import torch
import yaml

from benchmarks.rehearsal.processes import MARKER_VAR
from benchmarks.rehearsal.stage_memory import StageMemory, import_baseline_mib

GIB = 2**30
MIB = 2**20
# The smallest each model accepts: CogVideoX 4k+1 frames at multiples of 16 px, Wan2.2-TI2V 4k+1
# frames at multiples of 32 px; 5 frames (two latent frames), so the GFM sees camera motion.
SAMPLING = {"cogvideox-t2v": dict(num_frames=5, height=16, width=16, guidance_scale=6.0),
            "wan2.2-ti2v": dict(num_frames=5, height=32, width=32, guidance_scale=5.0)}
GFM_RESOLUTION = 28  # DA3: two patches of 14 a side


def round_config(family: str, run_dir: str) -> dict[str, Any]:
    pool = {"min_size": 1, "max_size": 1, "num_cpus": 1, "batch_size": 2}
    return {
        "run_name": f"real-size-{family}", "output_uri": run_dir, "rounds": 1, "seed": 0,
        "prompts": {"path": None, "limit": 2},
        "model": {"family": family, "pretrained": "random-full-size", "dtype": "bfloat16"},
        "sampling": {**SAMPLING[family], "num_inference_steps": 1},
        "scoring": {"backend": "da3", "weights": "random-full-size", "scorer": "3dcs", "num_frames": 2,
                    "resolution": GFM_RESOLUTION, "lpips_backbone": "random"},
        "pairing": {"candidates_per_prompt": 2, "min_gap": 0.0, "motion_threshold": 0.0},
        "text_pool": pool, "generation_pool": pool, "scoring_pool": pool, "encoding_pool": pool,
        "trainer": {"num_workers": 2, "zero_stage": 3, "precision": "bf16", "lora_rank": 64, "lora_alpha": 128,
                    "learning_rate": 1e-4, "warmup_steps": 0, "max_steps": 2, "micro_batch_size": 1,
                    "effective_batch_size": 2, "checkpoint_every": 2, "gradient_checkpointing": True},
    }


def _gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def component_gib(family: str) -> dict[str, float]:
    """Weight GiB of each pipeline component at its published size in the dtype the stages run it
    (built on the meta device: no memory), and of the scoring networks (DA3-Large, LPIPS-VGG)."""
    from actors.families import get_family
    from actors.families.base import vae_encoding_modules
    from actors.scoring import build_lpips

    f = get_family(family)
    out = {}
    for name in f.pipeline_components():
        if name == "tokenizer":
            continue
        with torch.device("meta"):
            module = f._full_size_component(name, torch.bfloat16)
            f._cast_component(name, module, torch.bfloat16)
        out[name] = _gib(module)
        if name == "vae":  # what pair encoding holds of it (``vae_decodes``)
            out["vae_encoder"] = sum(map(_gib, vae_encoding_modules(module)))
    from accelerate import init_empty_weights
    from depth_anything_3.api import DepthAnything3

    with init_empty_weights():  # parameters on the meta device (DA3's constructor computes on tensors)
        out["gfm"] = _gib(DepthAnything3(model_name="da3-large"))
    out["lpips"] = _gib(build_lpips("random", "cpu")[0])
    return out


def stage_components(family: str) -> dict[str, list[str]]:
    from actors.families import get_family

    stages = {k: list(v) for k, v in get_family(family).stage_components().items()}
    stages["score"] = ["gfm", "lpips"]
    return stages


def stage_weights_gib(family: str, stage: str, names: list[str], sizes: dict[str, float]) -> float:
    from actors.families import get_family

    if stage == "encode" and not get_family(family).vae_decodes(stage):
        names = ["vae_encoder" if n == "vae" else n for n in names]
    return sum(sizes[c] for c in names if c in sizes)


def within_plan(model_mib: float, plan_gib: float) -> bool:
    """The issue's rule: a stage's memory is within 20% or 1.5 GiB of its plan."""
    gap = abs(model_mib * MIB - plan_gib * GIB)
    return gap <= max(0.2 * plan_gib * GIB, 1.5 * GIB)


def memory_plan_gib(cfg_dict: dict[str, Any]) -> dict[str, float] | None:
    """The plan's total per stage (``pipelines.plan.memory_plan``), or None where this tree has no plan."""
    try:
        from pipelines.plan import memory_plan
    except ImportError:
        return None
    from pipelines.config import VideoGPAConfig

    plan = memory_plan(VideoGPAConfig(**cfg_dict))
    return {stage: row["total_gib"] for stage, row in plan["stages"].items()}


def run_round_benchmark(family: str, run_dir: str) -> dict[str, Any]:
    import ray

    from pipelines.cli import main as videogpa

    cfg = round_config(family, run_dir)
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, f"real-size-{family}.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    sizes = component_gib(family)
    marker = f"real-size-{secrets.token_hex(4)}"
    os.environ[MARKER_VAR] = marker  # every process Ray starts for this run carries it
    # 3 logical CPUs: the 2 trainer workers and the Ray Data read that feeds them (on 2 cores).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=True)
    stages = stage_components(family)
    baseline = {stage: import_baseline_mib(stage) for stage in stages}  # before any model, one probe at a time
    with StageMemory(marker, save_to=os.path.join(run_dir, f"real-size-{family}-peak-rss-mib.json")) as memory:
        code = videogpa(["align", "--config", config_path])  # joins this Ray; leaves it at the end
    run = os.path.join(run_dir, cfg["run_name"])
    plan = memory_plan_gib(cfg)
    whole = [c for c in sizes if c not in ("gfm", "lpips", "vae_encoder")]

    def figures(stage: str) -> dict[str, Any]:
        peak, planned = memory.peak_mib.get(stage), None if plan is None else plan.get(stage)
        model = None if peak is None else peak - baseline[stage]
        return {"baseline_mib": round(baseline[stage], 1), "model_mib": None if model is None else round(model, 1),
                "within_plan": None if model is None or planned is None else within_plan(model, planned)}

    return {
        "benchmark": "real_size_round",
        "family": family,
        "round_completed": code == 0 and os.path.exists(os.path.join(run, "round-000", "manifest.json")),
        "run_dir": run,
        "whole_pipeline_weights_gib": round(sum(sizes[c] for c in whole), 3),
        "stages": {
            stage: {"components": names,
                    "weights_gib": round(stage_weights_gib(family, stage, names, sizes), 3),
                    "plan_gib": None if plan is None or stage not in plan else round(plan[stage], 3),
                    "peak_rss_mib": round(memory.peak_mib[stage], 1) if stage in memory.peak_mib else None,
                    # the peak less the interpreter and libraries such a process starts with (measured
                    # before the run): the part a GPU plan predicts
                    **figures(stage)}
            for stage, names in stages.items()
        },
    }
