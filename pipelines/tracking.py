"""The driver's side of tracking (``trainers.tracking``): where a run's metrics go, its config as
params, and each round's figures.

Per round (step = round index, group ``round``): candidates, pairs kept, candidates and prompts
dropped by reason, mean / std / min / max of every score, each stage's duration, and the final DPO
figures. The per-step figures come from the trainer's rank 0, which gets :func:`tracking_target`.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow.fs as pafs
import yaml

from pipelines.config import VideoGPAConfig
from pipelines.storage import RunStore
from trainers.tracking import Tracker, TrackingTarget

TENSORBOARD_DIR = "tensorboard"
_SECRET_KEY = re.compile(r"(secret|access_key|password|passwd|token|credential|api_key|apikey)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def redact(text: str) -> str:
    """A value with any ``user:password@`` of a URL in it removed."""
    return _URL_USERINFO.sub("", text)


def config_params(cfg: VideoGPAConfig) -> dict[str, str]:
    """The resolved config as flat ``section.key -> text`` params. The schema has no place for
    credentials; a key that looks like one and a URL's user:password are left out all the same."""
    flat = _flatten(cfg.model_dump(mode="json"))
    return {k: redact(str(v))[:500] for k, v in flat.items() if not _SECRET_KEY.search(k)}


def tracking_target(cfg: VideoGPAConfig, store: RunStore, train_step_offset: int = 0) -> TrackingTarget:
    local = isinstance(store.fs, pafs.LocalFileSystem)
    return TrackingTarget(
        config=cfg.tracking, run_name=cfg.run_name, run_uri=redact(store.uri()), params=config_params(cfg),
        tensorboard_dir=store.path(TENSORBOARD_DIR), filesystem=None if local else store.fs,
        local_run_dir=store.path() if local else None, train_step_offset=train_step_offset)


def round_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """A round's metrics.json as flat scalars: counts, drops by reason, score statistics, stage seconds."""
    out: dict[str, Any] = {"candidates": metrics["candidates"], "pairs_kept": metrics["pairs_kept"]}
    for section in ("candidates_dropped", "prompts_dropped", "stage_seconds"):
        out.update({f"{section}/{k}": v for k, v in (metrics.get(section) or {}).items()})
    for key, stats in (metrics.get("scores") or {}).items():
        out.update({f"scores/{key}/{k}": v for k, v in (stats or {}).items() if k != "count"})
    train = metrics.get("train") or {}
    out.update({f"final/{k}": train[k] for k in ("loss", "reward_accuracy", "reward_margin", "steps") if k in train})
    return out


def log_round(cfg: VideoGPAConfig, store: RunStore, metrics: dict[str, Any]) -> None:
    """One complete round's figures and the config it ran under, on every enabled backend."""
    with Tracker(tracking_target(cfg, store), "driver") as tracker:
        params = config_params(cfg)
        tracker.text("config", "\n".join(f"    {line}" for line in yaml.safe_dump(params).splitlines()),
                     metrics["round"])
        tracker.log("round", round_scalars(metrics), metrics["round"])
