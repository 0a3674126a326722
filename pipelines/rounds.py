"""One alignment round as resumable stages, and the run as a sequence of rounds.

A stage is done when its marker exists; a round is done when its manifest exists (written
last). Starting the same command again skips done rounds and done stages, and redoes an
unfinished stage from a clean slate, so nothing is lost, duplicated or rewritten.

    text         each prompt (+ negative prompt) → embeddings, once per run   (text/<model>/<batch>.done.json)
    candidates   prompts × K seeds → videos → geometry scores   (candidates.done.json)
    pairs        best vs worst per prompt → latents → shards      (pairs.done.json)
    train        Diffusion-DPO on the shards → LoRA               (train.done.json)
    manifest     shard list, row counts, checksums, metrics        (manifest.json)

After each round the driver logs its figures to the tracking backends (``pipelines.tracking``) and
rewrites the run's report (``pipelines.report``); neither can fail the round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import pyarrow.parquet as pq

from actors import s3
from actors.errors import InputError
from actors.families.base import LORA_WEIGHT_NAME
from actors.scoring_config import SCORE_KEYS
from pipelines.config import VideoGPAConfig
from pipelines.pairing import make_pairs
from pipelines.progress import set_label
from pipelines.prompts import Prompt, load_prompts
from pipelines.provenance import command_stamp, record_config
from pipelines.run_layout import STAGES, RoundPaths, candidate_seed, read_candidates, score_stats, storage_spec
from pipelines.stages import (
    build_candidates_dataset,
    build_pairs_dataset,
    build_rescoring_dataset,
    write_parquet,
)
from pipelines.storage import TEMP_MARK, RunStore
from pipelines.text_stage import text_stage
from pipelines.tracking import log_round, tracking_target
from trainers.schema import SCHEMA_VERSION
from trainers.train import train_dpo

log = logging.getLogger(__name__)

def open_run(cfg: VideoGPAConfig, command: str = "align", stamp: str | None = None,
             allow_config_change: bool = False, store: RunStore | None = None) -> RunStore:
    """The run's store (``store``: one already holding the run's lease), with this command's config
    recorded in it (``pipelines.provenance``)."""
    store = store or RunStore(storage_spec(cfg), cfg.run_name)
    store.config_rel = record_config(store, cfg, command, stamp or command_stamp(), allow_config_change)
    return store


# What each stage reads from earlier work, and the command that makes it.
_STAGE_NEEDS = {"pairs": ("candidates", "videogpa generate"), "train": ("pairs", "videogpa pairs"),
                "score": ("candidates", "videogpa generate")}


def check_stage_inputs(store: RunStore, stage: str, index: int) -> None:
    """One InputError naming what ``stage`` of round ``index`` needs and the command that makes it
    (``score``: a complete round is refused, its pairs were made from the scores it would replace)."""
    paths = RoundPaths(index)
    if stage == "score" and store.exists(paths.manifest):
        raise InputError(f"round {index} is complete ({store.uri(paths.manifest)}); rescoring would rewrite it: "
                         "use a new run_name")
    if stage in _STAGE_NEEDS:
        needed, command = _STAGE_NEEDS[stage]
        if not store.exists(paths.marker(needed)):
            raise InputError(f"round {index} has no {needed} yet ({store.uri(paths.marker(needed))} is missing); "
                             f"run `{command} --round {index}` first")
    if stage in ("candidates", "train") and index > 0 and not store.exists(RoundPaths(index - 1).manifest):
        raise InputError(f"round {index} starts from round {index - 1}'s LoRA, but round {index - 1} is not complete "
                         f"({store.uri(RoundPaths(index - 1).manifest)} is missing); run `videogpa align` first")


def run_align(cfg: VideoGPAConfig, store: RunStore | None = None,
              prompts: list[Prompt] | None = None) -> list[dict[str, Any]]:
    """Every round, resuming where the run stopped; returns each round's metrics. ``prompts``: those
    the command's preflight read (else they are read here)."""
    store = store or open_run(cfg)
    if prompts is None:
        prompts = load_prompts(cfg.prompts.path, cfg.prompts.limit, storage_spec(cfg))
    results = []
    for index in range(cfg.rounds):
        paths = RoundPaths(index)
        if store.exists(paths.manifest):
            log.info("round %d/%d already complete (%s): skipped", index + 1, cfg.rounds, store.uri(paths.manifest))
            results.append(store.read_json(paths.metrics))
            continue
        results.append(run_round(cfg, store, prompts, index))
    log.info("run complete: %s", store.uri())
    return results


def run_round(cfg: VideoGPAConfig, store: RunStore, prompts: list[Prompt], index: int,
              stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    paths = RoundPaths(index)
    timings: dict[str, float] = {}
    for number, stage in enumerate(STAGES, start=1):
        if stage not in stages:
            continue
        if store.exists(paths.marker(stage)):
            log.info("round %d · stage %d/%d %s: already done", index, number, len(STAGES), stage)
            continue
        check_stage_inputs(store, stage, index)
        log.info("round %d · stage %d/%d %s: starting", index, number, len(STAGES), stage)
        start = time.perf_counter()
        set_label(f"round {index} · {stage}")  # names the progress lines of the datasets the stage runs
        try:
            marker = _STAGE_FUNCTIONS[stage](cfg, store, prompts, paths)
        except Exception as err:
            err.add_note(f"round {index} · stage {stage}")  # the CLI's one failure line names it
            raise
        timings[stage] = round(time.perf_counter() - start, 2)
        marker["seconds"] = timings[stage]
        store.write_json(paths.marker(stage), marker)
        log.info("round %d · stage %s: done in %.1f s", index, stage, timings[stage])
    if store.exists(paths.manifest):  # a complete round is never rewritten
        return store.read_json(paths.metrics)
    if all(store.exists(paths.marker(stage)) for stage in STAGES):
        metrics = finish_round(cfg, store, paths)  # also when the last stage was run alone
        log_round(cfg, store, metrics)
        write_report(store)
        return metrics
    return {}


def write_report(store: RunStore) -> str | None:
    """Rewrite the run's report; a failure is one warning line (``videogpa report`` can remake it)."""
    from pipelines.report import write_run_report  # it imports matplotlib: only once a round is done

    try:
        uri = write_run_report(store)
    except Exception as err:  # noqa: BLE001 - the work is done and recorded; the report is a view of it
        log.warning("report: not written: %s: %s", type(err).__name__, str(err).splitlines()[0][:300] if str(err)
                    else "")
        return None
    log.info("report: %s", uri)
    return uri


def _candidates_stage(cfg: VideoGPAConfig, store: RunStore, prompts: list[Prompt], paths: RoundPaths) -> dict:
    store.delete_dir(paths.candidates)
    texts = text_stage(cfg, store, [p.text for p in prompts])  # once per run: later rounds reuse them
    k = cfg.pairing.candidates_per_prompt
    rows = [
        {"round": paths.index, "prompt_id": p.prompt_id, "prompt": p.text, "image": p.image or "",
         "seed": candidate_seed(cfg.seed, paths.index, p.prompt_id, j), "text_file": texts.file(p.text)}
        for p in prompts for j in range(k)
    ]
    log.info("generating and scoring %d candidates (%d prompts × %d)", len(rows), len(prompts), k)
    lora_rel = RoundPaths(paths.index - 1).lora if paths.index > 0 else None
    # Every candidate also gets its Epipolar score (SIFT, cheap next to the GFM), from the frames in
    # memory: the same candidates can then be paired under either reward, and each round reports both.
    ds = build_candidates_dataset(rows, cfg.model, cfg.sampling, cfg.scoring, store, paths.videos, lora_rel,
                                  cfg.generation_pool, cfg.scoring_pool, texts.negative, with_epipolar=True)
    write_parquet(ds, store, paths.candidates)
    _remove_torn_writes(store, paths.videos)
    return _file_listing(store, paths.candidates)


def _remove_torn_writes(store: RunStore, rel: str) -> None:
    """Temporary files of video writes cut short by a killed actor (its retry wrote the video again):
    every writer is done once the candidates are written, so nothing live can own them."""
    torn = [f for f in store.list_files(rel) if TEMP_MARK in f.rsplit("/", 1)[-1]]
    for f in torn:
        store.delete_file(f)
    if torn:
        log.info("removed %d temporary file(s) of interrupted video writes", len(torn))


def rescore_round(cfg: VideoGPAConfig, store: RunStore, index: int) -> dict:
    """Score a round's stored candidates again with the configured scorer (e.g. another GFM backend).

    Crash-safe order: downstream markers go first (their pairs were made from the old scores), the
    new files are written beside the old ones, the marker switches to them, and only then are the
    old files removed; a completed round is never rewritten.
    """
    paths = RoundPaths(index)
    check_stage_inputs(store, "score", index)
    old = store.read_json(paths.marker("candidates"))
    for stage in ("train", "pairs"):
        store.delete_file(paths.marker(stage))
    rows = read_candidates(store, paths)
    set_label(f"round {index} · score")
    log.info("re-scoring %d candidates of round %d with %s:%s", len(rows), index, cfg.scoring.scorer,
             cfg.scoring.backend)
    write_parquet(build_rescoring_dataset(rows, cfg.scoring, store, cfg.scoring_pool), store, paths.candidates)
    old_files = {f["path"] for f in old["files"]}
    listing = _file_listing(store, paths.candidates, exclude=old_files)
    store.write_json(paths.marker("candidates"), {**listing, "seconds": old.get("seconds"), "rescored": True})
    for path in old_files:
        store.delete_file(path)
    return listing


def _pairs_stage(cfg: VideoGPAConfig, store: RunStore, prompts: list[Prompt], paths: RoundPaths) -> dict:
    store.delete_dir(paths.pairs)
    candidates = read_candidates(store, paths)
    reward, scored_as = cfg.scoring.scorer, (candidates[0]["scorer"] if candidates else "")
    if candidates and scored_as.split(":")[0] != reward:
        # Scored under the other reward: pair on this reward's column (every candidate has both, see
        # _candidates_stage), so one set of candidates serves both rewards.
        if not any(math.isfinite(c[reward]) for c in candidates):
            raise InputError(f"round {paths.index}: its candidates have no {reward} scores (scored as {scored_as}); "
                             f"score them again with scoring.scorer={reward} (videogpa score)")
        scored_as = f"{reward}:{scored_as.split(':', 1)[-1]}"
        candidates = [{**c, "score": c[reward], "scorer": scored_as} for c in candidates]
    report = make_pairs(candidates, paths.index, cfg.pairing.min_gap, cfg.pairing.motion_threshold,
                         cfg.pairing.motion_matched, cfg.pairing.sharpness_matched, cfg.pairing.pairs_per_prompt,
                         tuple(cfg.pairing.adjust_for), cfg.pairing.winner_threshold)
    summary = report.summary()
    log.info("pairing: %d pairs kept from %d candidates; candidates dropped %s, prompts dropped %s%s",
             len(report.pairs), len(candidates), summary["candidates_dropped"] or "none",
             summary["prompts_dropped"] or "none",
             f"; ranked by {cfg.scoring.scorer} adjusted for {report.adjusted_for}" if report.adjusted_for else "")
    if not report.pairs:
        raise InputError(
            f"round {paths.index}: no preference pairs (prompts dropped: {summary['prompts_dropped']}, "
            f"candidates dropped: {summary['candidates_dropped']}); lower pairing.min_gap or raise "
            "pairing.candidates_per_prompt"
        )
    texts = text_stage(cfg, store, sorted({p.prompt for p in report.pairs}))  # encoded with the candidates
    rows = [
        {"pair_id": p.pair_id, "round": p.round, "prompt_id": p.prompt_id, "prompt": p.prompt, "image": p.image or "",
         "scorer": p.winner["scorer"], "winner": p.winner, "loser": p.loser, "text_file": texts.file(p.prompt)}
        for p in report.pairs
    ]
    write_parquet(build_pairs_dataset(rows, cfg.model, store, cfg.encoding_pool, cfg.trainer.official_objective),
                  store, paths.pairs)
    return {**_file_listing(store, paths.pairs), "pairing": summary, "scorer": scored_as,
            "pair_reasons": {p.pair_id: p.reason for p in report.pairs}, "unpaired": report.unpaired}


def _train_stage(cfg: VideoGPAConfig, store: RunStore, prompts: list[Prompt], paths: RoundPaths) -> dict:
    files = [store.path(f["path"]) for f in store.read_json(paths.marker("pairs"))["files"]]
    previous = RoundPaths(paths.index - 1).lora if paths.index > 0 else None
    # Round 0 has no earlier policy: its reference is the base model whatever the config says.
    trainer_cfg = cfg.trainer if previous else cfg.trainer.model_copy(update={"reference": "base"})
    metrics = train_dpo(
        trainer_cfg, cfg.model, pair_files=files, filesystem=store.fs, storage_path=store.path(paths.dir),
        name="checkpoints", lora_out_dir=store.path(paths.lora),
        previous_lora_dir=store.path(previous) if previous else None,
        tracking=tracking_target(cfg, store, train_step_offset=paths.index * cfg.trainer.max_steps),
        model_card=round_model_card(cfg, store, paths.index),
        fence=store.fence,
        s3_env=s3.settings_env(cfg.storage.endpoint_url, cfg.storage.region),
    )
    return {"metrics": metrics, "lora": _describe(store, f"{paths.lora}/{LORA_WEIGHT_NAME}"),
            "history": _train_history(store, metrics.get("checkpoint"))}


def round_model_card(cfg: VideoGPAConfig, store: RunStore, index: int, evaluation: str | None = None) -> str:
    """The README.md of round ``index``'s LoRA directory (``evaluation``: the evaluate command's table)."""
    from actors.families import get_family
    from actors.families.base import lora_weight_name
    from trainers.model_card import CardInfo, model_card

    family = get_family(cfg.model.family)
    pairs = store.read_json(RoundPaths(index).marker("pairs")) or {}
    return model_card(CardInfo(
        base_model=cfg.model.pretrained, family=cfg.model.family, pipeline_class=family.pipeline_class.__name__,
        recipe=f"{cfg.run_name} ({store.uri(store.config_rel)})", round_index=index, rounds=cfg.rounds,
        pairs=int(pairs.get("rows", 0)), lora_scale=cfg.sampling.lora_scale,
        expert_files=tuple(lora_weight_name(e) for e in family.experts), evaluation=evaluation))


def _train_history(store: RunStore, checkpoint: str | None) -> list[dict[str, float]]:
    """The per-step figures the trainer keeps in its checkpoints' state (for the report's curves)."""
    if not checkpoint:
        return []
    from trainers.checkpoint import STATE_JSON  # it imports deepspeed: not for every command that reads rounds

    try:
        state = json.loads(store.fs.open_input_stream(f"{checkpoint}/{STATE_JSON}").read())
    except (OSError, ValueError) as err:
        log.warning("train: no step history for the report (%s: %s)", type(err).__name__, str(err)[:200])
        return []
    return state.get("history", [])


_STAGE_FUNCTIONS = {"candidates": _candidates_stage, "pairs": _pairs_stage, "train": _train_stage}


def _describe(store: RunStore, rel: str) -> dict[str, Any]:
    return {"path": rel, "sha256": store.sha256(rel)}


def _file_listing(store: RunStore, rel: str, exclude: set[str] = frozenset()) -> dict[str, Any]:
    files = []
    for path in store.list_files(rel, ".parquet"):
        if path in exclude:
            continue
        rows = pq.read_metadata(store.path(path), filesystem=store.fs).num_rows
        files.append({**_describe(store, path), "rows": rows})
    return {"files": files, "rows": sum(f["rows"] for f in files)}


def finish_round(cfg: VideoGPAConfig, store: RunStore, paths: RoundPaths) -> dict[str, Any]:
    """Write metrics.json, then the manifest: the round counts as complete only once both exist."""
    candidates = read_candidates(store, paths)
    markers = {stage: store.read_json(paths.marker(stage)) for stage in STAGES}
    pairs_marker, train_marker = markers["pairs"], markers["train"]
    metrics = {
        "round": paths.index,
        "candidates": len(candidates),
        "scorer": pairs_marker.get("scorer") or (candidates[0]["scorer"] if candidates else None),
        "pairs_kept": pairs_marker["pairing"]["pairs_kept"],
        "candidates_dropped": pairs_marker["pairing"]["candidates_dropped"],
        "prompts_dropped": pairs_marker["pairing"]["prompts_dropped"],
        "scores": {key: score_stats([c[key] for c in candidates]) for key in SCORE_KEYS},
        "train": train_marker["metrics"],
        "stage_seconds": {stage: markers[stage]["seconds"] for stage in STAGES},
        "config": store.config_rel,
    }
    store.write_json(paths.metrics, metrics)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_name": cfg.run_name,
        "round": paths.index,
        "candidates": markers["candidates"],
        "pairs": {"files": pairs_marker["files"], "rows": pairs_marker["rows"]},
        "lora": train_marker["lora"],
        "metrics": _describe(store, paths.metrics),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_json(paths.manifest, manifest)
    log.info("round %d complete: %s", paths.index, store.uri(paths.manifest))
    return metrics
