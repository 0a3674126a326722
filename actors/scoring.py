"""Video scoring: 3D-consistency (3DCS) by re-rendering, plus motion, epipolar and eval metrics.

3DCS (lower = more 3D-consistent): back-project every frame with the GFM's depth and
cameras into one point cloud, splat it into every frame's camera, and compare:
``3DCS = mean_t [ MSE_t + lambda * LPIPS_t ]`` with MSE on [0,1] images and LPIPS-VGG on
[-1,1] images. The static-camera filter (motion < threshold) is the pipeline's job.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from actors.errors import InputError
from actors.geometry import (
    Geometry,
    confidence_mask,
    depth_to_world,
    reproject_frames,
    resize_geometry,
    sample_frame_indices,
)
from actors.gfm import ScoringConfig, build_backend

VGG16_CHECKPOINT = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 file name in the hub cache
LPIPS_RANDOM_SEED = 0
SIFT_RATIO = 0.75
MIN_MATCHES = 20
RANSAC_THRESHOLD_PX = 1.0


# ----------------------------------------------------------------------------- LPIPS


def vgg16_cached() -> bool:
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_CHECKPOINT))


def build_lpips(
    backbone: Literal["auto", "pretrained", "random"] = "auto", device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, str]:
    """LPIPS-VGG from the ``lpips`` package and which backbone it got ("pretrained"|"random").

    Never downloads: ImageNet VGG16 weights are used only when already in the torch hub
    cache; the LPIPS linear layers ship inside the package. The random backbone is built
    under a fixed seed so every process (every Ray actor) gets the same network.
    """
    import lpips

    if backbone not in ("auto", "pretrained", "random"):
        raise InputError(f"scoring.lpips_backbone: expected auto|pretrained|random, got {backbone!r}")
    cached = vgg16_cached()
    if backbone == "pretrained" and not cached:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_CHECKPOINT)
        raise InputError(f"scoring.lpips_backbone=pretrained: {path} is missing "
                         "(copy torchvision's VGG16 weights there, or use 'random')")
    used = "pretrained" if (backbone == "pretrained" or (backbone == "auto" and cached)) else "random"
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" noise
        torch.manual_seed(LPIPS_RANDOM_SEED)
        model = lpips.LPIPS(net="vgg", pnet_rand=(used == "random"), verbose=False)
    return model.to(device).eval().requires_grad_(False), used


_DEFAULT_LPIPS: dict[tuple[str, str], torch.nn.Module] = {}


def _default_lpips(device: torch.device) -> torch.nn.Module:
    key = ("auto", str(device))
    if key not in _DEFAULT_LPIPS:
        _DEFAULT_LPIPS[key] = build_lpips("auto", device)[0]
    return _DEFAULT_LPIPS[key]


# ----------------------------------------------------------------------------- image metrics


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM ``[N]`` of ``[N,3,H,W]`` images in [0,1] (Gaussian window, valid region)."""
    if min(a.shape[-2:]) < window:  # tiny images: largest odd window that fits
        window = (min(a.shape[-2:]) - 1) // 2 * 2 + 1
    win = _gaussian_window(window, sigma, a.device, a.dtype)
    c1, c2 = 0.01**2, 0.03**2
    blur = lambda x: F.conv2d(x, win, groups=3)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(mse_per_image: Tensor) -> Tensor:
    return 10 * torch.log10(1.0 / mse_per_image.clamp(min=1e-10))


@torch.no_grad()
def lpips_distance(model: torch.nn.Module, a: Tensor, b: Tensor, batch: int = 32) -> Tensor:
    """Per-image LPIPS ``[N]`` of [0,1] images (rescaled to [-1,1] as LPIPS expects)."""
    out = [model(x * 2 - 1, y * 2 - 1).flatten() for x, y in zip(a.split(batch), b.split(batch))]
    return torch.cat(out)


# ----------------------------------------------------------------------------- 3DCS


def _check_frames(frames: Tensor) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"frames: expected float [T,3,H,W], got shape {tuple(frames.shape)}")
    if not torch.isfinite(frames).all():
        raise InputError("frames: contain NaN or inf")


@torch.no_grad()
def reprojection_score(
    frames: Tensor,
    geometry: Geometry,
    conf_threshold: float = 0.0,
    lpips_weight: float = 1.0,
    lpips_model: torch.nn.Module | None = None,
) -> dict[str, float]:
    """3DCS and the eval metrics of re-rendered vs original frames.

    ``frames`` float ``[T,3,H,W]`` in [0,1] at the geometry's size. Returns ``3dcs``,
    ``mse``, ``lpips`` (means over frames), ``psnr``, ``ssim`` (means of per-frame values).
    """
    _check_frames(frames)
    frames = frames.to(geometry.depth.device, torch.float32)
    rendered = reproject_frames(frames, geometry, conf_threshold)
    mse_t = ((rendered - frames) ** 2).mean(dim=(1, 2, 3))
    model = lpips_model if lpips_model is not None else _default_lpips(frames.device)
    lpips_t = lpips_distance(model, rendered, frames)
    return {
        "3dcs": float((mse_t + lpips_weight * lpips_t).mean()),
        "mse": float(mse_t.mean()),
        "lpips": float(lpips_t.mean()),
        "psnr": float(psnr(mse_t).mean()),
        "ssim": float(ssim(rendered, frames).mean()),
    }


# ----------------------------------------------------------------------------- geometry metrics


@torch.no_grad()
def mvcs(geometry: Geometry) -> float:
    """Multi-view consistency ``exp(-mean squared depth-reprojection error)`` over consecutive frames.

    Pixels of frame i go to the world with their depth and into camera i+1; their camera
    depth is compared with frame i+1's depth at the (rounded) pixel they land on. Depths
    are divided by the clip's median depth first, so the figure does not depend on the
    GFM's arbitrary scale. Pixels that leave the image or have conf <= 1e-5 are skipped.
    """
    if geometry.num_frames < 2:
        return float("nan")
    h, w = geometry.hw
    valid_px = confidence_mask(geometry.conf) & (geometry.depth > 0)
    scale = geometry.depth[valid_px].median().clamp(min=1e-8)
    world = depth_to_world(geometry)[:-1].reshape(geometry.num_frames - 1, -1, 3)  # [T-1,HW,3]
    cam = torch.einsum("tij,tnj->tni", geometry.extrinsics[1:, :, :3], world) + geometry.extrinsics[1:, None, :, 3]
    z = cam[..., 2]
    pix = torch.einsum("tij,tnj->tni", geometry.intrinsics[1:], cam)
    z_safe = torch.where(z > 1e-6, z, torch.ones_like(z))
    u, v = torch.floor(pix[..., 0] / z_safe + 0.5), torch.floor(pix[..., 1] / z_safe + 0.5)
    inside = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    idx = (v.clamp(0, h - 1) * w + u.clamp(0, w - 1)).long()
    target = torch.gather(geometry.depth[1:].reshape(geometry.num_frames - 1, -1), 1, idx)
    target_ok = torch.gather(valid_px[1:].reshape(geometry.num_frames - 1, -1), 1, idx)
    keep = inside & target_ok & valid_px[:-1].reshape(geometry.num_frames - 1, -1)
    if not keep.any():
        return float("nan")
    err = ((z - target) / scale)[keep] ** 2
    return float(torch.exp(-err.mean()))


def motion_score(extrinsics: Tensor | np.ndarray) -> float:
    """Camera motion: ``mean ||t_i - t_{i-1}|| + 0.1 * mean geodesic angle(R_i, R_{i-1})`` (rad).

    ``t`` is the translation column of the world->camera pose, as in the reference
    implementation (not the camera centre ``-R^T t``): for a camera orbiting while looking
    at a fixed point ``t`` barely changes and the rotation term carries the motion.
    0 for a static camera; for a pure translation it is the per-frame step length.
    """
    ext = torch.as_tensor(np.asarray(extrinsics) if not isinstance(extrinsics, Tensor) else extrinsics).double()
    if ext.ndim != 3 or ext.shape[1:] != (3, 4):
        raise InputError(f"extrinsics: expected [T,3,4], got {tuple(ext.shape)}")
    if ext.shape[0] < 2:
        return 0.0
    rot, trans = ext[:, :, :3], ext[:, :, 3]
    step = (trans[1:] - trans[:-1]).norm(dim=-1).mean()
    rel = rot[1:] @ rot[:-1].transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return float(step + 0.1 * torch.arccos(cos).mean())


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _gray(frames: Tensor) -> Tensor:
    """Float ``[T,3,H,W]`` -> float32 ``[T,1,H,W]`` luma (BT.601 weights, as OpenCV's RGB2GRAY)."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise InputError(f"frames: expected [T,3,H,W], got shape {tuple(frames.shape)}")
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device)
    return (frames.float() * weights[None, :, None, None]).sum(1, keepdim=True)


def sharpness(frames: Tensor) -> float:
    """Mean absolute Laplacian of the luma of float ``[T,3,H,W]`` frames in [0,1].

    Not a consistency metric: a guard. Blurry frames are easy to re-render from a point cloud
    (lower 3DCS) and give SIFT few, stable matches (lower Epipolar), so a model could "improve"
    both by blurring; comparing sharpness before and after alignment shows whether it did.
    """
    gray = _gray(frames)
    return float(torch.nn.functional.conv2d(gray, _LAPLACIAN.to(gray.device)[None, None]).abs().mean())


def frame_change(frames: Tensor) -> float:
    """Mean absolute luma change between consecutive float ``[T,3,H,W]`` frames: image motion,
    which needs no GFM (a frozen video scores 0)."""
    gray = _gray(frames)
    return float((gray[1:] - gray[:-1]).abs().mean()) if gray.shape[0] > 1 else 0.0


def _to_gray_u8(frames: Tensor | np.ndarray) -> list[np.ndarray]:
    if isinstance(frames, Tensor):  # float [T,3,H,W] in [0,1]
        frames = (frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames: expected [T,3,H,W] float or [T,H,W,3] uint8, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def sampson_distance(fmat: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels of matches ``x1 [N,2] -> x2 [N,2]`` under ``fmat``.

    The square root of the Sampson error ``(x2^T F x1)^2 / (|F x1|_12^2 + |F^T x2|_12^2)``
    (which is what ``cv2.sampsonDistance`` returns): a first-order geometric distance to the
    epipolar lines, in pixels, so a few mismatches cannot dominate the mean quadratically.
    """
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], axis=1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], axis=1)
    fx1 = h1 @ fmat.T
    ftx2 = h2 @ fmat
    num = np.einsum("ni,ni->n", h2, fx1) ** 2
    den = fx1[:, 0] ** 2 + fx1[:, 1] ** 2 + ftx2[:, 0] ** 2 + ftx2[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-12))


def _pair_epipolar_error(sift: cv2.SIFT, matcher: cv2.BFMatcher, feats: list, i: int) -> float | None:
    (kp1, d1), (kp2, d2) = feats[i], feats[i + 1]
    if d1 is None or d2 is None or len(kp1) < 2 or len(kp2) < 2:
        return None
    good = [m for m, n in (p for p in matcher.knnMatch(d1, d2, k=2) if len(p) == 2)
            if m.distance < SIFT_RATIO * n.distance]
    if len(good) < MIN_MATCHES:
        return None
    x1 = np.float64([kp1[m.queryIdx].pt for m in good])
    x2 = np.float64([kp2[m.trainIdx].pt for m in good])
    fmat, _ = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, RANSAC_THRESHOLD_PX, 0.999)
    if fmat is None or fmat.shape != (3, 3):
        return None
    return float(sampson_distance(fmat, x1, x2).mean())


def epipolar_score(frames: Tensor | np.ndarray, min_size: int = 0) -> float:
    """Mean Sampson distance of SIFT matches under a fundamental matrix per consecutive frame pair.

    SIFT, ratio test 0.75; a pair with fewer than 20 matches (or no F) is skipped; F is fitted
    by OpenCV's FM_RANSAC (normalized 8-point inside RANSAC, 1 px threshold) and the error is
    averaged over *all* ratio-test matches (non-rigid motion shows up as matches no single F
    explains). Returns the mean over scored pairs, NaN if no pair could be scored
    (textureless or too small frames): callers treat NaN as "unscorable". ``min_size``: frames
    with a shorter side below it are upscaled to it first (distances are then in its pixels).
    """
    gray = _to_gray_u8(frames)
    short = min(gray[0].shape) if gray else 0
    if 0 < short < min_size:
        f = min_size / short
        gray = [cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC) for g in gray]
    sift = cv2.SIFT_create()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    feats = [sift.detectAndCompute(g, None) for g in gray]
    errors = [e for i in range(len(gray) - 1) if (e := _pair_epipolar_error(sift, matcher, feats, i)) is not None]
    return float(np.mean(errors)) if errors else float("nan")


# ----------------------------------------------------------------------------- scorer

# The keys of ``VideoScorer.score``'s result: every per-candidate metric, in the order of the
# candidate rows' score columns.
SCORE_KEYS = ("score", "3dcs", "mse", "lpips", "psnr", "ssim", "mvcs", "motion", "epipolar", "sharpness",
              "frame_change")


def video_to_tensor(video: np.ndarray) -> Tensor:
    """uint8 ``[F,H,W,3]`` (or float in [0,1]) -> float ``[F,3,H,W]`` in [0,1]; NaN/inf -> InputError."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise InputError(f"video: expected [F,H,W,3], got shape {video.shape}")
    if video.dtype == np.uint8:
        return torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255.0
    if not np.issubdtype(video.dtype, np.floating):
        raise InputError(f"video: expected uint8 or float frames, got {video.dtype}")
    if not np.isfinite(video).all():
        raise InputError("video: contains NaN or inf values")
    return torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)).permute(0, 3, 1, 2).clamp(0, 1)


class VideoScorer:
    """Scores videos with one GFM backend and one LPIPS network (built once, reused).

    ``score`` samples ``cfg.num_frames`` frames uniformly, runs the GFM at its working
    resolution and returns floats: ``score`` (the reward, lower is better: 3DCS or epipolar
    per ``cfg.scorer``), ``3dcs``, ``mse``, ``lpips``, ``psnr``, ``ssim``, ``mvcs``, ``motion``,
    ``epipolar``, and the image-only guards ``sharpness`` and ``frame_change``. Epipolar (SIFT
    on CPU) is computed when it is the reward or when asked (``with_epipolar=True``), NaN otherwise.
    """

    def __init__(self, cfg: ScoringConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.backend = build_backend(cfg, self.device)
        self.lpips_model, self._lpips_used = build_lpips(cfg.lpips_backbone, self.device)

    @property
    def lpips_backbone_used(self) -> str:
        return self._lpips_used

    def sample(self, video: np.ndarray, geometry: Geometry | None = None) -> tuple[Tensor, Geometry | None]:
        """The T frames that are scored (and the matching frames of a full-clip ground truth)."""
        frames = video_to_tensor(video)
        idx = sample_frame_indices(frames.shape[0], self.cfg.num_frames)
        if geometry is not None and geometry.num_frames == frames.shape[0]:
            geometry = geometry.select(idx)
        return frames[idx], geometry

    @torch.no_grad()
    def score(
        self, video: np.ndarray, geometry: Geometry | None = None, with_epipolar: bool | None = None
    ) -> dict[str, float]:
        frames, gt = self.sample(video, geometry)
        if frames.shape[0] < 2:
            raise InputError(f"video: needs at least 2 frames to score, got {frames.shape[0]}")
        x = self.backend.prepare(frames.to(self.device))
        geom = self.backend.predict(x, ground_truth=gt)
        if not all(torch.isfinite(t).all() for t in (geom.depth, geom.conf, geom.intrinsics, geom.extrinsics)):
            # A broken model output makes this one video unscorable, not the whole batch.
            raise InputError(f"{self.backend.name} GFM: geometry contains NaN or inf")
        geom = resize_geometry(geom, *x.shape[-2:])  # no-op when the backend kept the size
        result = reprojection_score(x, geom, self.cfg.conf_threshold, self.cfg.lpips_weight, self.lpips_model)
        result["mvcs"] = mvcs(geom)
        result["motion"] = motion_score(geom.extrinsics)
        result["sharpness"] = sharpness(frames)
        result["frame_change"] = frame_change(frames)
        want_epi = self.cfg.scorer == "epipolar" if with_epipolar is None else with_epipolar
        result["epipolar"] = epipolar_score(frames, self.cfg.epipolar_min_size) if want_epi else float("nan")
        result["score"] = result["epipolar"] if self.cfg.scorer == "epipolar" else result["3dcs"]
        return result


__all__ = [
    "SCORE_KEYS",
    "ScoringConfig",
    "VideoScorer",
    "build_lpips",
    "epipolar_score",
    "frame_change",
    "motion_score",
    "mvcs",
    "reprojection_score",
    "sampson_distance",
    "sharpness",
    "ssim",
]
