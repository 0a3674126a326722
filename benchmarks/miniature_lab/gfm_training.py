"""Train the ``tiny`` GFM (``actors.gfm.TinyGFM``) on the synthetic world, and measure what it learned.

Supervision comes from ``benchmarks.miniature_lab.world`` clean clips (exact depth, intrinsics, world->camera poses):

* depth: scale-invariant log-depth loss ``Var(log d_pred - log d_gt)`` over pixels that hit a surface;
* poses: relative to the first camera (the GFM's world, as in VGGT). Rotations by the chordal
  distance ``|R_pred - R_gt|_F``; translations against ``s * t_gt`` where ``s`` is the clip's
  depth scale ``exp(mean(log d_pred - log d_gt))``, so depth and translation share one scale (the
  only thing a reprojection needs) and nothing depends on the world's absolute units;
* intrinsics: ``|log f_pred - log f_gt|`` (TinyGFM predicts one shared focal length);
* confidence: VGGT-style aleatoric term ``conf * |depth residual| - alpha * log conf``.

Frames go through the same preparation as ``VideoScorer`` (``patch_transform`` to ``resolution``),
and ground truth through ``transform_geometry``, so the network is trained on what it scores.

Architectural limit of ``TinyGFM`` (``actors/gfm.py``, not changed here): its pose head is
``0.1 * tanh(.)``, so each relative axis-angle component is at most 0.1 rad and each translation
component at most 0.1, while depth is ``1 + softplus(.) >= 1``. A reprojection needs translation and
depth on one scale, so the motion it can express is ``|t| / near depth <= ~0.1`` and a rotation of
at most ~0.1 rad per axis. The synthetic world at ``speed=1`` moves far beyond that (orbit: ~0.45 rad
and ``|t| / near depth ~ 0.7``; pan ~0.45 rad). So the tiny GFM is trained and used at slow camera
speeds (``SPEED_RANGE``); ``evaluate_gfm(..., speed=1.0)`` shows what happens beyond it.

CLI: ``python -m benchmarks.miniature_lab.gfm_training --out PATH.safetensors [--steps N] [--eval]`` writes the
weights (safetensors) and ``PATH.json`` (training figures; with ``--eval`` also the held-out AUROCs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from actors.geometry import Geometry, patch_transform, transform_frames, transform_geometry
from actors.gfm import TINY_SEED, TinyGFM, build_tiny_gfm
from benchmarks.miniature_lab.world import CORRUPTIONS, TRAJECTORIES, render_clip
from trainers.deepspeed_config import warmup_cosine_factor

# Camera speeds (``render_clip(speed=...)``) the tiny GFM can express (see the module docstring).
SPEED_RANGE = (0.05, 0.25)
EVAL_SPEED = 0.15
HELD_OUT_SEED = 1_000_000  # training seeds are below this, evaluation seeds at or above it
ALPHA_CONF = 0.05

logger = logging.getLogger(__name__)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is). These networks are small: on a shared,
    loaded 2-core machine one thread is ~10x faster than two (measured 0.09 s vs 1.0 s per TinyGFM
    forward+backward), because two threads wait on each other."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The trainer's schedule (``warmup_cosine_factor``): linear warm-up over the first 5% of
    ``steps`` (at least one step), then cosine decay to 5%."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warm, steps, 0.05)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class _Clip:
    frames: Tensor  # [T,3,h,w] in [0,1], prepared as the scorer prepares them
    depth: Tensor  # [T,h,w] (0 = no hit)
    focal: float  # pixels of the prepared frames
    rot: Tensor  # [T,3,3] relative to frame 0
    trans: Tensor  # [T,3]


def relative_poses(extrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """World->camera ``[T,3,4]`` -> poses relative to camera 0 (camera 0 = world): ``R_i R_0^T``,
    ``t_i - R_rel t_0``."""
    r0, t0 = extrinsics[0, :, :3], extrinsics[0, :, 3]
    rot = extrinsics[:, :, :3] @ r0.T
    trans = extrinsics[:, :, 3] - torch.einsum("tij,j->ti", rot, t0)
    return rot, trans


def _prepare(frames_u8: np.ndarray, geometry: Geometry, resolution: int) -> _Clip:
    frames = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255.0
    tf = patch_transform(frames.shape[-2], frames.shape[-1], resolution)
    x = transform_frames(frames, tf)
    g = transform_geometry(geometry, tf)
    rot, trans = relative_poses(g.extrinsics)
    return _Clip(x, g.depth, float(g.intrinsics[0, 0, 0]), rot, trans)


def render_training_clips(
    num_clips: int, size: int, num_frames: int, resolution: int, seed: int, speed_range=SPEED_RANGE
) -> list[_Clip]:
    """Clean clips of every trajectory, ``2 * num_frames - 1`` frames each (windows of them are
    drawn during training), at speeds drawn from ``speed_range`` (10% static)."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(num_clips):
        # stride-2 windows: this speed; stride 1: half
        speed = 0.0 if rng.uniform() < 0.1 else float(rng.uniform(*speed_range))
        clip = render_clip(int(seed * 10_000 + i) % HELD_OUT_SEED, TRAJECTORIES[i % 3], None, 2 * num_frames - 1,
                           size, speed)
        clips.append(_prepare(clip.frames, clip.geometry, resolution))
    return clips


def _window(clip: _Clip, num_frames: int, rng: np.random.Generator) -> _Clip:
    """A random sub-clip: stride 1 (half the sweep) or 2 (the whole sweep), maybe reversed; poses
    re-expressed relative to the new first frame."""
    total = clip.frames.shape[0]
    stride = int(rng.integers(1, 3))
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, total - span + 1))
    idx = torch.arange(start, start + span, stride)
    if rng.uniform() < 0.5:
        idx = idx.flip(0)
    # back to world->camera in clip-0 coordinates, then relative to the window's first frame
    ext = torch.cat([clip.rot[idx], clip.trans[idx, :, None]], dim=2)
    rot, trans = relative_poses(ext)
    return _Clip(clip.frames[idx], clip.depth[idx], clip.focal, rot, trans)


def gfm_loss(model: TinyGFM, clip: _Clip) -> tuple[Tensor, dict[str, float]]:
    pred = model(clip.frames)
    valid = clip.depth > 0
    g = torch.log(pred.depth[valid]) - torch.log(clip.depth[valid])
    mean_g = g.mean()
    depth_loss = ((g - mean_g) ** 2).mean()
    scale = torch.exp(mean_g)  # pred depth ~ scale * gt depth
    rot_pred, trans_pred = pred.extrinsics[:, :, :3], pred.extrinsics[:, :, 3]
    rot_loss = (rot_pred - clip.rot).flatten(1).norm(dim=1)[1:].mean()
    trans_loss = (trans_pred - scale * clip.trans).norm(dim=1)[1:].mean()
    focal_loss = (torch.log(pred.intrinsics[0, 0, 0]) - math.log(clip.focal)).abs()
    resid = (g - mean_g).detach().abs()
    conf = pred.conf[valid]
    conf_loss = (conf * resid - ALPHA_CONF * torch.log(conf)).mean()
    loss = depth_loss + 10.0 * rot_loss + 10.0 * trans_loss + focal_loss + 0.1 * conf_loss
    parts = {k: v.item() for k, v in dict(depth=depth_loss, rot=rot_loss, trans=trans_loss, focal=focal_loss).items()}
    return loss, parts


def train_tiny_gfm(
    steps: int = 500,
    size: int = 64,
    num_frames: int = 10,
    seed: int = 0,
    out_path: str | None = None,
    num_clips: int = 96,
    batch_size: int = 4,
    lr: float = 2e-3,
    resolution: int = 56,
    log_every: int = 25,
    num_threads: int | None = 1,
) -> dict:
    """Train ``TinyGFM`` from its fixed-seed init on clean synthetic clips; save safetensors weights
    to ``out_path`` (and ``<out_path minus .safetensors>.json`` with the figures). Returns the figures."""
    with torch_threads(num_threads):
        model, figures = fit_tiny_gfm(steps, size, num_frames, seed, num_clips, batch_size, lr, resolution, log_every)
    if out_path is not None:
        save_gfm(model, out_path, figures)
    return figures


@torch.no_grad()
def fixed_loss(model: TinyGFM, clips: list[_Clip], num_frames: int) -> dict[str, float]:
    """Mean loss (and parts) over the full stride-2 window of each clip: deterministic, for before/after."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for clip in clips:
        idx = torch.arange(0, clip.frames.shape[0], 2)[:num_frames]
        ext = torch.cat([clip.rot[idx], clip.trans[idx, :, None]], dim=2)
        rot, trans = relative_poses(ext)
        loss, parts = gfm_loss(model, _Clip(clip.frames[idx], clip.depth[idx], clip.focal, rot, trans))
        for k, v in {"loss": loss.item(), **parts}.items():
            totals[k] = totals.get(k, 0.0) + v / len(clips)
    model.train(was_training)
    return {k: round(v, 6) for k, v in totals.items()}


def fit_tiny_gfm(
    steps: int = 500,
    size: int = 64,
    num_frames: int = 10,
    seed: int = 0,
    num_clips: int = 96,
    batch_size: int = 4,
    lr: float = 2e-3,
    resolution: int = 56,
    log_every: int = 25,
) -> tuple[TinyGFM, dict]:
    """``train_tiny_gfm`` without saving: the trained model (eval mode, no grad) and its figures."""
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    clips = render_training_clips(num_clips, size, num_frames, resolution, seed)
    held_out = render_training_clips(4, size, num_frames, resolution, seed + 7919)
    t_render = time.perf_counter() - t_start

    model = build_tiny_gfm().train().requires_grad_(True)
    before = fixed_loss(model, held_out, num_frames)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    rng = np.random.default_rng(seed + 1)
    curve: list[dict] = []
    running: dict[str, float] = {}
    count = 0
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(batch_size):
            loss, parts = gfm_loss(model, _window(clips[int(rng.integers(len(clips)))], num_frames, rng))
            (loss / batch_size).backward()
            total += loss.item() / batch_size
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v / batch_size
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running["loss"] = running.get("loss", 0.0) + total
        count += 1
        if (step + 1) % log_every == 0 or step == 0 or step == steps - 1:
            curve.append({"step": step + 1, **{k: round(v / count, 6) for k, v in running.items()}})
            if (step + 1) % 250 == 0 or step == steps - 1:
                logger.info("tiny GFM step %d/%d: loss %.4f", step + 1, steps, curve[-1]["loss"])
            running, count = {}, 0
    model.eval().requires_grad_(False)
    after = fixed_loss(model, held_out, num_frames)
    figures = {
        "steps": steps,
        "size": size,
        "resolution": resolution,
        "num_frames": num_frames,
        "num_clips": num_clips,
        "batch_size": batch_size,
        "seed": seed,
        "speed_range": list(SPEED_RANGE),
        "loss_start": curve[0]["loss"] if curve else None,
        "loss_end": curve[-1]["loss"] if curve else None,
        "held_out_loss_before": before,
        "held_out_loss_after": after,
        "curve": curve,
        "render_s": round(t_render, 1),
        "train_s": round(time.perf_counter() - t_start - t_render, 1),
        "init_seed": TINY_SEED,
    }
    return model, figures


def save_gfm(model: TinyGFM, out_path: str, figures: dict | None = None) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out_path, metadata={"format": "pt", "model": "videogpa.TinyGFM"})
    if figures is not None:
        with open(figures_path(out_path), "w") as f:
            json.dump(figures, f, indent=1)


def figures_path(out_path: str) -> str:
    return (out_path[: -len(".safetensors")] if out_path.endswith(".safetensors") else out_path) + ".json"


# ----------------------------------------------------------------------------- evaluation


def auroc(positives: list[float], negatives: list[float]) -> float:
    """P(positive > negative), ties counting half (Mann-Whitney U / (n_pos n_neg))."""
    pos, neg = np.asarray(positives, float)[:, None], np.asarray(negatives, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def evaluate_gfm(
    weights: str | None,
    num_scenes: int = 6,
    size: int = 64,
    num_frames: int = 10,
    speed: float = EVAL_SPEED,
    resolution: int = 56,
    corruptions: tuple[str, ...] = CORRUPTIONS,
    motion_speeds: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25),
    seed: int = HELD_OUT_SEED,
    num_threads: int | None = 1,
) -> dict:
    """3DCS of the tiny GFM (``weights`` or the random init if None) on held-out scenes: AUROC of
    "corrupted scores worse (higher 3DCS) than clean" per corruption, over all clean x corrupted
    pairs of ``num_scenes`` scenes (trajectories cycled); and the Spearman correlation of the
    motion score with the true camera speed over clean clips at ``motion_speeds``."""
    with torch_threads(num_threads):
        return _evaluate_gfm(weights, num_scenes, size, num_frames, speed, resolution, corruptions, motion_speeds, seed)


def _evaluate_gfm(weights, num_scenes, size, num_frames, speed, resolution, corruptions, motion_speeds, seed) -> dict:
    from actors.scoring import ScoringConfig, VideoScorer, motion_score

    cfg = ScoringConfig(backend="tiny", weights=weights, num_frames=num_frames, resolution=resolution,
                        lpips_backbone="auto")
    scorer = VideoScorer(cfg)
    scores: dict[str, list[float]] = {c: [] for c in ("clean", *corruptions)}
    for i in range(num_scenes):
        for corruption in (None, *corruptions):
            clip = render_clip(seed + i, TRAJECTORIES[i % 3], corruption, num_frames, size, speed)
            scores[corruption or "clean"].append(scorer.score(clip.frames)["3dcs"])
    result = {
        "weights": weights or "random-init",
        "lpips_backbone": scorer.lpips_backbone_used,
        "speed": speed,
        "num_scenes": num_scenes,
        "auroc": {c: round(auroc(scores[c], scores["clean"]), 3) for c in corruptions},
        "mean_3dcs": {c: round(float(np.mean(v)), 4) for c, v in scores.items()},
    }
    result["auroc_mean"] = round(float(np.mean(list(result["auroc"].values()))), 3)
    true_speed, pred_motion, true_motion = [], [], []
    for i in range(num_scenes):
        for sp in motion_speeds:
            clip = render_clip(seed + 500 + i, TRAJECTORIES[i % 3], None, num_frames, size, sp)
            pred_motion.append(scorer.score(clip.frames)["motion"])
            true_speed.append(sp)
            true_motion.append(motion_score(clip.geometry.extrinsics))
    result["motion_spearman_vs_speed"] = round(spearman(pred_motion, true_speed), 3)
    result["motion_spearman_vs_true_motion"] = round(spearman(pred_motion, true_motion), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.miniature_lab.gfm_training",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output .safetensors path (figures go to the .json beside it)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--num-frames", type=int, default=10)
    p.add_argument("--num-clips", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="also score held-out clips: AUROC trained vs random init")
    p.add_argument("--eval-scenes", type=int, default=6)
    args = p.parse_args(argv)
    figures = train_tiny_gfm(args.steps, args.size, args.num_frames, args.seed, args.out, num_clips=args.num_clips)
    if args.eval:
        t = time.perf_counter()
        for speed in (EVAL_SPEED, 0.3, 1.0):
            key = f"eval_speed_{speed:g}"
            figures[key] = {
                "trained": evaluate_gfm(args.out, args.eval_scenes, args.size, args.num_frames, speed=speed),
                "random": evaluate_gfm(None, args.eval_scenes, args.size, args.num_frames, speed=speed),
            }
        figures["eval_s"] = round(time.perf_counter() - t, 1)
        with open(figures_path(args.out), "w") as f:
            json.dump(figures, f, indent=1)
    summary = {k: v for k, v in figures.items() if k != "curve"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
