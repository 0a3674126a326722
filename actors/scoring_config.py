"""The scoring section of a run's config: which GFM scores the candidates, and how.

Torch-free on purpose, as ``actors.model_config``: the CLI validates a config before it imports any
model or scoring code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The keys of ``actors.scoring.VideoScorer.score``'s result: every per-candidate metric, in the order of the
# candidate rows' score columns.
SCORE_KEYS = ("score", "3dcs", "mse", "lpips", "psnr", "ssim", "mvcs", "mvcs_si", "motion", "epipolar", "sharpness",
              "frame_change")

# How frames become the GFM's square input (actors.gfm.GFMBackend.prepare).
InputLayout = Literal["center_square", "full_width"]


class ScoringConfig(BaseModel):
    """The ``scoring`` section (and ``evaluation.scoring``); actors.gfm builds the backend it names,
    actors.scoring scores with it and re-exports it."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["tiny", "oracle", "vggt", "da3"] = "tiny"
    # tiny: safetensors file; vggt/da3: hub id, local dir, or "random-full-size" (the published
    # architecture, VGGT-1B / DA3-Large, with random weights: a real-size rehearsal, no download)
    weights: str | None = None
    scorer: Literal["3dcs", "epipolar"] = "3dcs"
    num_frames: int = Field(10, ge=2)
    # linspace(0, F-1, T) floored (official) or rounded (this project's earlier rule)
    frame_indices: Literal["floor", "round"] = "floor"
    conf_threshold: float = Field(0.0, ge=0.0, lt=100.0)  # percent of lowest-confidence points dropped
    lpips_weight: float = Field(1.0, ge=0.0)
    lpips_backbone: Literal["auto", "pretrained", "random"] = "auto"
    # GFM input size; null: the backend's own (vggt 518, da3 504 = DA3's process_res, tiny 56;
    # oracle: always the frames' own size).
    resolution: int | None = Field(None, gt=0, multiple_of=14)
    # center_square (official): the largest centred square resized to resolution x resolution;
    # full_width: width -> resolution, height to a patch-14 multiple (cropped to resolution if taller).
    input_layout: InputLayout = "center_square"
    # VGGT's re-rendered cloud: its point-map head (world_points, filtered by depth_conf: official)
    # or its depth head unprojected with its cameras.
    vggt_points: Literal["point_map", "depth"] = "point_map"
    # Epipolar: frames whose shorter side is below this are upscaled (bicubic) to it before SIFT,
    # which finds too few keypoints on tiny frames (32 px) to fit F; 0 = native size.
    epipolar_min_size: int = Field(0, ge=0)
    # The Epipolar metric's matches: "sift" (the official metric class's default) or "superpoint-lightglue"
    # (the official benchmark's, replicate_scorer.py: SCORE_DESCRIPTOR_TYPE=lightglue; actors.superpoint).
    epipolar_matcher: Literal["sift", "superpoint-lightglue"] = "sift"
    # Their weights: a local file, "download" (by URL; a cluster with internet) or "random" (offline tests:
    # exercises the code path, scores rank nothing).
    superpoint_weights: str = "download"
    lightglue_weights: str = "download"
