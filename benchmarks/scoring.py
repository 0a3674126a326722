"""Scoring speed: vectorized splatting vs a per-frame loop, and VideoScorer throughput.

    python benchmarks/scoring.py                       # CPU defaults
    python benchmarks/scoring.py --device cuda --gfm-size vggt1b   # GPU: GFM vs re-render vs LPIPS share

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from actors.geometry import Geometry, reproject_frames, splat, unproject
from actors.scoring import ScoringConfig, VideoScorer, lpips_distance, reprojection_score
from benchmarks.miniature_lab.world import render_clip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timeit_alternating(fns: dict, device: torch.device, repeat: int) -> dict:
    """Median seconds of each of ``fns`` over ``repeat`` alternating rounds after one warm-up
    each: load from other processes then hits every contender alike, and their ratio holds."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def splat_loop(points, colors, intrinsics, extrinsics, h, w):
    """The straightforward version: one frame at a time, z-buffer by sorting far-to-near
    and letting the nearest write land last (numpy fancy assignment is sequential)."""
    pts, cols = points.cpu().numpy(), colors.cpu().numpy()
    out = np.zeros((len(intrinsics), h, w, 3), dtype=cols.dtype)
    for i, (k, e) in enumerate(zip(intrinsics.cpu().numpy(), extrinsics.cpu().numpy())):
        cam = pts @ e[:, :3].T + e[:, 3]
        z = cam[:, 2]
        front = z > 1e-6
        cam, z, c = cam[front], z[front], cols[front]
        pix = cam @ k.T
        u = np.floor(pix[:, 0] / z + 0.5).astype(np.int64)
        v = np.floor(pix[:, 1] / z + 0.5).astype(np.int64)
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        order = np.argsort(-z[ok], kind="stable")
        out[i, v[ok][order], u[ok][order]] = c[ok][order]
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def bench_splat(size: int, frames: int, device: torch.device, repeat: int) -> dict:
    clip = render_clip(0, "orbit", num_frames=frames, size=size)
    video = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255).to(device)
    g = clip.geometry.to(device)
    points, colors = unproject(g, video)
    fast = lambda: splat(points, colors, g.intrinsics, g.extrinsics, size, size)  # noqa: E731
    slow = lambda: splat_loop(points, colors, g.intrinsics, g.extrinsics, size, size)  # noqa: E731
    agree = float((fast().cpu() == slow()).all(dim=1).float().mean())  # pixels with identical colour
    times = timeit_alternating({"fast": fast, "slow": slow}, device, repeat)
    t_fast, t_slow = times["fast"], times["slow"]
    return {
        "splat_points": int(points.shape[0]),
        "splat_frames": frames,
        "splat_size": size,
        "splat_vectorized_s": round(t_fast, 4),
        "splat_loop_s": round(t_slow, 4),
        "splat_speedup": round(t_slow / t_fast, 2),
        "splat_pixels_agree": round(agree, 4),
    }


def bench_scorer(size: int, resolution: int, device: torch.device, repeat: int) -> dict:
    clip = render_clip(1, "orbit", num_frames=17, size=size)
    scorer = VideoScorer(ScoringConfig(backend="tiny", resolution=resolution), device=device)
    t = timeit(lambda: scorer.score(clip.frames), device, repeat)
    return {
        "scorer_backend": "tiny",
        "scorer_video": f"17x{size}x{size}",
        "scorer_resolution": resolution,
        "scorer_videos_per_s": round(1.0 / t, 2),
        "lpips_backbone": scorer.lpips_backbone_used,
    }


# ----------------------------------------------------------------------------- VGGT-1B stand-in


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class StandInGFM(nn.Module):
    """Random-init transformer with VGGT-1B's size and token layout (for timing only):
    a 24-block per-frame patch encoder, then alternating frame / global attention blocks,
    a per-patch depth+confidence head and a pooled camera head."""

    def __init__(
        self, dim: int = 1024, heads: int = 16, encoder_depth: int = 24, pairs: int = 36, patch: int = 14
    ) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.encoder = nn.ModuleList(Block(dim, heads) for _ in range(encoder_depth))
        self.frame_blocks = nn.ModuleList(Block(dim, heads) for _ in range(pairs))
        self.global_blocks = nn.ModuleList(Block(dim, heads) for _ in range(pairs))
        self.dense = nn.Linear(dim, 2 * patch * patch)
        self.camera = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 7))

    def forward(self, frames: torch.Tensor) -> Geometry:
        t, _, h, w = frames.shape
        x = self.embed(frames).flatten(2).transpose(1, 2)  # [T, P, D]
        for block in self.encoder:
            x = block(x)
        for frame_block, global_block in zip(self.frame_blocks, self.global_blocks):
            x = frame_block(x)
            x = global_block(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)
        dense = F.pixel_shuffle(self.dense(x).transpose(1, 2).reshape(t, -1, h // self.patch, w // self.patch),
                                self.patch)
        depth, conf = 1 + F.softplus(dense[:, 0].float()), 1 + F.softplus(dense[:, 1].float())
        cam = 0.01 * torch.tanh(self.camera(x.mean(1)).float())
        rot = torch.linalg.matrix_exp(torch.stack([
            torch.stack([torch.zeros_like(cam[:, 0]), -cam[:, 2], cam[:, 1]], -1),
            torch.stack([cam[:, 2], torch.zeros_like(cam[:, 0]), -cam[:, 0]], -1),
            torch.stack([-cam[:, 1], cam[:, 0], torch.zeros_like(cam[:, 0])], -1),
        ], 1))  # fmt: skip
        k = torch.tensor([[w * 0.8, 0, (w - 1) / 2], [0, w * 0.8, (h - 1) / 2], [0, 0, 1.0]], device=frames.device)
        return Geometry(depth, conf, k.expand(t, 3, 3).clone(), torch.cat([rot, cam[:, 3:6, None]], 2))


def bench_gfm_share(device: torch.device, repeat: int, pairs: int, encoder_depth: int, resolution: int) -> dict:
    """Per-video time of the stand-in GFM vs re-rendering vs LPIPS at ``resolution`` px, 10 frames."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = StandInGFM(encoder_depth=encoder_depth, pairs=pairs).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    frames = torch.rand(10, 3, resolution, resolution, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    scorer = VideoScorer(ScoringConfig(backend="tiny", resolution=resolution), device=device)

    @torch.no_grad()
    def gfm():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return model(frames)

    geometry = gfm()
    t_gfm = timeit(gfm, device, repeat)
    t_render = timeit(lambda: reproject_frames(frames, geometry), device, repeat)
    rendered = reproject_frames(frames, geometry)
    t_lpips = timeit(lambda: lpips_distance(scorer.lpips_model, rendered, frames), device, repeat)
    t_total = timeit(lambda: reprojection_score(frames, gfm(), lpips_model=scorer.lpips_model), device, repeat)
    return {
        "gfm_params": params,
        "gfm_resolution": resolution,
        "gfm_s": round(t_gfm, 4),
        "rerender_s": round(t_render, 4),
        "lpips_s": round(t_lpips, 4),
        "gfm_share": round(t_gfm / (t_gfm + t_render + t_lpips), 3),
        "gfm_videos_per_s": round(1.0 / t_total, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--splat-size", type=int, default=256)
    parser.add_argument("--splat-frames", type=int, default=10)
    parser.add_argument("--scorer-size", type=int, default=128)
    parser.add_argument("--scorer-resolution", type=int, default=126)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gfm-size", choices=["none", "vggt1b", "toy"], default="none",
                        help="vggt1b: ~1.2B-param random stand-in at 518 px (GPU); toy: 2 blocks, to check the path")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    figures = {"device": str(device), "torch_threads": torch.get_num_threads()}
    figures.update(bench_splat(args.splat_size, args.splat_frames, device, args.repeat))
    print(f"splat: vectorized {figures['splat_vectorized_s']}s vs per-frame loop {figures['splat_loop_s']}s "
          f"-> {figures['splat_speedup']}x ({figures['splat_points']} points x {args.splat_frames} frames)", flush=True)
    figures.update(bench_scorer(args.scorer_size, args.scorer_resolution, device, args.repeat))
    print(f"VideoScorer(tiny): {figures['scorer_videos_per_s']} videos/s", flush=True)
    if args.gfm_size != "none":
        depth, pairs, res = (24, 36, 518) if args.gfm_size == "vggt1b" else (1, 1, 56)
        figures.update(bench_gfm_share(device, args.repeat, pairs, depth, res))
        print(f"GFM stand-in {figures['gfm_params'] / 1e9:.2f}B params: GFM {figures['gfm_s']}s, "
              f"re-render {figures['rerender_s']}s, LPIPS {figures['lpips_s']}s per video", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
