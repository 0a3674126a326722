"""Where a run keeps each round's work, and how it is read back: a leaf module.

The rounds (``pipelines.rounds``) write these files, the report (``pipelines.report``) and the
evaluation (``pipelines.evaluate``) read them; all three import the layout from here, so none of
them imports another to learn it (and ``videogpa report`` needs neither Ray nor torch).
"""

from __future__ import annotations

import hashlib
import math
import statistics
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from actors.scoring_config import SCORE_KEYS
from pipelines.config import VideoGPAConfig
from pipelines.storage import RunStore, StorageSpec

STAGES = ("candidates", "pairs", "train")

# A candidate row's metadata columns (the stored rows hold no frames).
CANDIDATE_META_COLUMNS = ["round", "prompt_id", "prompt", "image", "seed", "video_uri", "scorer", *SCORE_KEYS]


@dataclass(frozen=True)
class RoundPaths:
    """Run-relative paths of one round (the run layout of README and docs/CONTRACTS.md)."""

    index: int

    @property
    def dir(self) -> str:
        return f"round-{self.index:03d}"

    def _sub(self, name: str) -> str:
        return f"{self.dir}/{name}"

    candidates = property(lambda self: self._sub("candidates"))
    pairs = property(lambda self: self._sub("pairs"))
    videos = property(lambda self: self._sub("videos"))
    lora = property(lambda self: self._sub("lora"))
    manifest = property(lambda self: self._sub("manifest.json"))
    metrics = property(lambda self: self._sub("metrics.json"))

    def marker(self, stage: str) -> str:
        return self._sub(f"{stage}.done.json")


def storage_spec(cfg: VideoGPAConfig) -> StorageSpec:
    """Where the config's runs live (``output_uri``) and how to reach it."""
    s = cfg.storage
    return StorageSpec(cfg.output_uri, s.endpoint_url, s.region, s.max_attempts, s.connect_timeout_s,
                       s.request_timeout_s)


def candidate_seed(run_seed: int, round_index: int, prompt_id: str, k: int) -> int:
    """A fixed seed per (run, round, prompt, candidate): reruns regenerate the same videos."""
    digest = hashlib.sha256(f"{run_seed}|{round_index}|{prompt_id}|{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def read_candidates(store: RunStore, paths: RoundPaths) -> list[dict[str, Any]]:
    """The metadata rows (no frames) of the candidates a round's marker lists."""
    files = [store.path(f["path"]) for f in store.read_json(paths.marker("candidates"))["files"]]
    table = pq.ParquetDataset(files, filesystem=store.fs).read(columns=CANDIDATE_META_COLUMNS)
    return table.to_pylist()


def score_stats(values: list[float]) -> dict[str, float] | None:
    """mean, std, min, max and count of the finite values (a round's metrics.json and report); None when
    there is none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return {"mean": statistics.fmean(finite), "std": statistics.pstdev(finite), "min": min(finite),
            "max": max(finite), "count": len(finite)}
