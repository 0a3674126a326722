"""`videogpa evaluate`: the base model against base + a round's LoRA on held-out prompts and seeds,
or base + a LoRA directory from elsewhere (``--lora``: diffusers or PEFT format, e.g. an official
VideoGPA release), copied into the run so that generation actors on any node read it.

Both arms sample the same prompts with the same seeds through the same Ray Data graph as
training candidates, and are scored with the paper's evaluation metrics on reprojected vs
original frames (PSNR, SSIM, LPIPS, MVCS, 3DCS, Epipolar) plus guards against winning without
being consistent: camera motion (GFM) and frame change (pixels), so a model cannot look
consistent by freezing its camera, and sharpness, so it cannot by blurring.

The base model's samples do not depend on the round, so they are made once per settings and
reused: ``evaluation/base-<key>/`` of the run (or of ``evaluation.base_run``, to share them
between runs in one ``output_uri``), keyed by the model, sampling and scoring settings and the
held-out prompts and seeds. The key covers configuration, not file contents: a model or weights
file replaced in place under the same path is not noticed (write it under a new path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.errors import InputError
from actors.families.base import LORA_WEIGHT_NAME
from actors.lora_formats import MODEL_CARD, lora_files
from actors.scoring_config import ScoringConfig
from actors.video_io import decode_video, encode_mp4
from pipelines.config import VideoGPAConfig
from pipelines.evaluation_table import METRICS, format_table, summary
from pipelines.prompts import BUILTIN_EVAL_PROMPTS, Prompt, load_prompts
from pipelines.rounds import open_run, round_model_card
from pipelines.run_layout import RoundPaths, candidate_seed, storage_spec
from pipelines.stages import build_candidates_dataset
from pipelines.storage import RunStore, StorageSpec
from pipelines.text_stage import text_stage

log = logging.getLogger(__name__)


def evaluation_scoring(cfg: VideoGPAConfig) -> ScoringConfig:
    """The scorer of the held-out samples: ``evaluation.scoring`` or, unset, the training ``scoring`` section."""
    return cfg.evaluation.scoring or cfg.scoring


def last_complete_round(store: RunStore, rounds: int) -> int:
    done = [i for i in range(rounds) if store.exists(RoundPaths(i).manifest)]
    if not done:
        raise InputError(f"run {store.uri()} has no complete round to evaluate; run `videogpa align` first")
    return done[-1]


def round_to_evaluate(store: RunStore, rounds: int, round_index: int | None) -> int:
    """The round whose LoRA is evaluated (default: the last complete one); it must have its LoRA."""
    index = last_complete_round(store, rounds) if round_index is None else round_index
    lora = RoundPaths(index).lora
    if not store.exists(f"{lora}/{LORA_WEIGHT_NAME}"):
        raise InputError(f"round {index} of run {store.uri()} has no LoRA at {store.uri(lora)}")
    return index


@ray.remote(num_cpus=1)
def _side_by_side(spec: StorageSpec, base_run: str, left_rel: str, run_name: str, right_rel: str, out_rel: str,
                  fps: int, fence: Callable[[], None] | None) -> str:
    """base | aligned for one prompt and seed, written next to the results (runs on a worker, not the driver)."""
    store = RunStore(spec, run_name)
    store.fence = fence  # the driver's lease (pipelines.lease): nothing lands once it is lost
    left = decode_video(RunStore(spec, base_run).read_bytes(left_rel))
    right = decode_video(store.read_bytes(right_rel))
    gap = np.full((*left.shape[:2], 2, 3), 255, dtype=np.uint8)  # a white bar between the two
    store.write_bytes(out_rel, encode_mp4(np.concatenate([left, gap, right], axis=2), fps=fps))
    return out_rel


def base_samples_key(cfg: VideoGPAConfig, rows: list[dict[str, Any]]) -> str:
    """What the base model's held-out samples depend on: model, sampling, scoring, prompts and seeds."""
    # Not the reward (scoring.scorer): every evaluation metric is computed whatever the reward.
    scoring = {k: v for k, v in evaluation_scoring(cfg).model_dump(mode="json").items() if k != "scorer"}
    ident = {"model": cfg.model.model_dump(mode="json"), "sampling": cfg.sampling.model_dump(mode="json"),
             "scoring": scoring,
             "rows": [[r["prompt_id"], r["prompt"], r["image"], r["seed"]] for r in rows]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _sample(cfg: VideoGPAConfig, store: RunStore, rows: list[dict[str, Any]], out: str,
            lora_rel: str | None) -> list[dict[str, Any]]:
    texts = text_stage(cfg, store, [r["prompt"] for r in rows])  # encoded once per run, as for training
    rows = [{**r, "text_file": texts.file(r["prompt"])} for r in rows]
    ds = build_candidates_dataset(rows, cfg.model, cfg.sampling, evaluation_scoring(cfg), store, f"{out}/videos",
                                  lora_rel, cfg.generation_pool, cfg.scoring_pool, texts.negative,
                                  with_epipolar=True)
    return sorted(ds.take_all(), key=lambda r: (r["prompt_id"], r["seed"]))


def _base_samples(cfg: VideoGPAConfig, base_store: RunStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The base model's scored samples: read back when made before with the same settings, else made now
    (their rows file is written after the videos, so a half-made set is never reused)."""
    out = f"evaluation/base-{base_samples_key(cfg, rows)}"
    saved = base_store.read_json(f"{out}/rows.json")
    if saved is not None:
        log.info("base samples: reusing %s", base_store.uri(out))
        return saved
    samples = [{k: r[k] for k in ("prompt_id", "seed", "video_uri", *dict(METRICS))}
               for r in _sample(cfg, base_store, rows, out, None)]
    base_store.write_json(f"{out}/rows.json", samples)
    return samples


def stage_lora(store: RunStore, lora_dir: str) -> str:
    """Copy the LoRA files of ``lora_dir`` into the run, under a name from their contents; returns
    their directory in the run (``evaluation/lora-<digest>/lora``)."""
    blobs = {name: (Path(lora_dir) / name).read_bytes() for name in lora_files(lora_dir)}
    digest = hashlib.sha256()
    for name, data in blobs.items():
        digest.update(name.encode())
        digest.update(data)
    rel = f"evaluation/lora-{digest.hexdigest()[:16]}/lora"
    for name, data in blobs.items():
        store.write_bytes(f"{rel}/{name}", data)
    return rel


def run_evaluate(cfg: VideoGPAConfig, round_index: int | None = None, store: RunStore | None = None,
                 prompts: list[Prompt] | None = None, lora_dir: str | None = None) -> dict[str, Any]:
    """Base vs the round's LoRA (or the LoRA directory ``lora_dir``) on the evaluation prompts
    (``prompts``: those the command's preflight read, else they are read here)."""
    store = store or open_run(cfg, "evaluate")
    if lora_dir is None:
        index: int | None = round_to_evaluate(store, cfg.rounds, round_index)
        lora, out, label = RoundPaths(index).lora, f"evaluation/round-{index:03d}", f"round-{index:03d} LoRA"
    else:
        index, lora = None, stage_lora(store, lora_dir)
        out, label = lora.removesuffix("/lora"), f"LoRA {Path(lora_dir).name}"
    ev = cfg.evaluation
    if prompts is None:
        prompts = load_prompts(ev.prompts.path, ev.prompts.limit, storage_spec(cfg), builtin=BUILTIN_EVAL_PROMPTS,
                               key="evaluation.prompts.path")
    rows = [{"round": -1 if index is None else index, "prompt_id": p.prompt_id, "prompt": p.text,
             "image": p.image or "", "seed": candidate_seed(ev.seed, 0, p.prompt_id, k)}
            for p in prompts for k in range(ev.seeds_per_prompt)]
    log.info("evaluating %s: %d prompts × %d seeds, base vs LoRA", label, len(prompts), ev.seeds_per_prompt)
    base_store = RunStore(store.spec, ev.base_run) if ev.base_run else store
    arms = {"base": _base_samples(cfg, base_store, rows), "aligned": _sample(cfg, store, rows, f"{out}/aligned", lora)}
    result = {
        "round": index,
        **({"lora": lora_dir} if lora_dir else {}),
        "samples": len(rows),
        "base": summary(arms["base"], ev.epipolar_unscorable),
        "aligned": summary(arms["aligned"], ev.epipolar_unscorable),
        "epipolar_matcher": evaluation_scoring(cfg).epipolar_matcher,
        "epipolar_unscorable": ev.epipolar_unscorable,
        "per_sample": {arm: [{k: r[k] for k in ("prompt_id", "seed", "video_uri", *dict(METRICS))} for r in v]
                       for arm, v in arms.items()},
        "base_run": base_store.run_name,  # the base videos' video_uri are relative to this run
    }
    result["side_by_side"] = ray.get([
        _side_by_side.remote(store.spec, base_store.run_name, b["video_uri"], store.run_name, a["video_uri"],
                             f"{out}/side_by_side/{b['prompt_id']}-s{b['seed']}.mp4", cfg.sampling.fps, store.fence)
        for b, a in zip(arms["base"], arms["aligned"])
    ])
    store.write_json(f"{out}/results.json", result)
    result["table"] = format_table(result["base"], result["aligned"], label, result["epipolar_matcher"],
                                   ev.epipolar_unscorable)
    if index is not None:  # the round's LoRA directory: its model card gets the table
        store.write_bytes(f"{lora}/{MODEL_CARD}", round_model_card(cfg, store, index, result["table"]).encode())
    return result
