"""The evaluation metrics on the synthetic world: clean vs corrupted clips, oracle (ground-truth) geometry.

    python -m benchmarks.metrics                  # 8 scenes x (clean + 4 corruptions), 10 frames, 128 px

For every clip: MSE, LPIPS, 3DCS, PSNR, SSIM, MVCS and Epipolar as ``VideoScorer`` returns them
(the official definitions), plus this project's variant ``mvcs_si`` (``mvcs_scale_invariant``). Per
condition it prints the means, and per corruption the AUROC of "corrupted scores worse than clean"
(direction-aware: higher PSNR/SSIM/MVCS is better) over all clean x corrupted pairs.

The oracle returns the *clean* scene's geometry for every clip (the corruptions change the frames
only), so MVCS is the same for a clean clip and its corrupted copies: it measures a GFM's geometry,
not the frames. Its rows therefore corrupt the geometry itself: ``depth_noise`` (depth times
``1 + U(0, 0.1)`` per pixel) and ``world_x10`` (the same scene in units 10x smaller: depths and
camera translations x10, which no image metric can see).

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from actors.geometry import Geometry
from actors.scoring import ScoringConfig, VideoScorer, mvcs, mvcs_scale_invariant
from benchmarks.miniature_lab.gfm_training import auroc, torch_threads
from benchmarks.miniature_lab.world import CORRUPTIONS, TRAJECTORIES, render_clip

FRAME_METRICS = ("mse", "lpips", "3dcs", "psnr", "ssim", "epipolar")
GEOMETRY_METRICS = ("mvcs", "mvcs_si")
HIGHER_IS_BETTER = {"psnr", "ssim", "mvcs", "mvcs_si"}


def scaled(geometry: Geometry, factor: float) -> Geometry:
    """The same scene in units ``factor`` times smaller: depths and camera translations times ``factor``."""
    ext = geometry.extrinsics.clone()
    ext[:, :, 3] *= factor
    return Geometry(geometry.depth * factor, geometry.conf, geometry.intrinsics, ext)


def depth_noise(geometry: Geometry, amount: float, seed: int) -> Geometry:
    noise = torch.rand(geometry.depth.shape, generator=torch.Generator().manual_seed(seed))
    return Geometry(geometry.depth * (1 + amount * noise), geometry.conf, geometry.intrinsics, geometry.extrinsics)


def score_clip(scorer: VideoScorer, clip) -> dict[str, float]:
    result = scorer.score(clip.frames, geometry=clip.geometry, with_epipolar=True)
    return {k: result[k] for k in FRAME_METRICS}


def worse(metric: str, corrupted: list[float], clean: list[float]) -> float:
    """AUROC that a corrupted clip scores worse than a clean one (NaN scores left out)."""
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    bad = [sign * v for v in corrupted if np.isfinite(v)]
    good = [sign * v for v in clean if np.isfinite(v)]
    return round(auroc(bad, good), 3) if bad and good else float("nan")


def mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 5) if finite else float("nan")


def run(num_scenes: int, num_frames: int, size: int, seed: int) -> dict:
    scorer = VideoScorer(ScoringConfig(backend="oracle", num_frames=num_frames, lpips_backbone="auto"))
    frame_scores: dict[str, dict[str, list[float]]] = {c: {m: [] for m in FRAME_METRICS}
                                                       for c in ("clean", *CORRUPTIONS)}
    geo_scores: dict[str, dict[str, list[float]]] = {c: {m: [] for m in GEOMETRY_METRICS}
                                                     for c in ("clean", "depth_noise", "world_x10")}
    for i in range(num_scenes):
        for corruption in (None, *CORRUPTIONS):
            clip = render_clip(seed + i, TRAJECTORIES[i % 3], corruption, num_frames, size)
            for k, v in score_clip(scorer, clip).items():
                frame_scores[corruption or "clean"][k].append(v)
            if corruption is None:
                geometry = clip.geometry
                for name, g in (("clean", geometry), ("depth_noise", depth_noise(geometry, 0.1, seed + i)),
                                ("world_x10", scaled(geometry, 10.0))):
                    geo_scores[name]["mvcs"].append(mvcs(g))
                    geo_scores[name]["mvcs_si"].append(mvcs_scale_invariant(g))
    means = {c: {m: mean(v) for m, v in per.items()} for c, per in frame_scores.items()}
    for c, per in geo_scores.items():
        means.setdefault(c, {}).update({f"{m}": mean(v) for m, v in per.items()})
    return {
        "backend": "oracle",
        "lpips_backbone": scorer.lpips_backbone_used,
        "num_scenes": num_scenes,
        "num_frames": num_frames,
        "size": size,
        "means": means,
        "auroc_worse_than_clean": {
            **{c: {m: worse(m, frame_scores[c][m], frame_scores["clean"][m]) for m in FRAME_METRICS}
               for c in CORRUPTIONS},
            **{c: {m: worse(m, geo_scores[c][m], geo_scores["clean"][m]) for m in GEOMETRY_METRICS}
               for c in ("depth_noise", "world_x10")},
        },
        "epipolar_unscorable": {c: int(sum(not np.isfinite(v) for v in per["epipolar"]))
                                for c, per in frame_scores.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with torch_threads(args.threads):
        figures = run(args.scenes, args.frames, args.size, args.seed)
    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    metrics = [*FRAME_METRICS, *GEOMETRY_METRICS]
    print(f"{'condition':<12}" + "".join(f"{m:>16}" for m in metrics))
    for cond, row in figures["means"].items():
        print(f"{cond:<12}" + "".join(f"{row.get(m, float('nan')):>16.5f}" for m in metrics))
    print("AUROC (corrupted scores worse than clean):")
    for cond, row in figures["auroc_worse_than_clean"].items():
        print(f"{cond:<12}" + "".join(f"{row.get(m, float('nan')):>16.3f}" for m in metrics))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
