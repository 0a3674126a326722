"""Video scoring: 3D-consistency (3DCS) by re-rendering, plus motion, epipolar and eval metrics.

3DCS (lower = more 3D-consistent): back-project every frame with the GFM's depth and
cameras (or its point map) into one point cloud, splat it into every frame's camera, and
compare: ``3DCS = mean_t [ MSE_t + lambda * LPIPS_t ]`` with MSE on [0,1] images and
LPIPS-VGG on [-1,1] images. The static-camera filter (motion < threshold) is the pipeline's job.

The evaluation metrics are the official benchmark's definitions (github Hongyang-Du/VideoGPA,
``metrics/``): PSNR from the video-level MSE, SSIM = ``piq.ssim``, MVCS in raw depth units
with bilinear sampling, Epipolar = mean Sampson distance under an 8-point least-squares F of
all SIFT ratio-test matches. ``mvcs_scale_invariant`` (score key ``mvcs_si``) is this
project's variant, under its own name: it does not depend on the GFM's depth units.
"""

from __future__ import annotations

import math
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
    pixel_grid,
    reproject_frames,
    resize_geometry,
    sample_frame_indices,
)
from actors.gfm import build_backend
from actors.scoring_config import SCORE_KEYS, ScoringConfig

VGG16_CHECKPOINT = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 file name in the hub cache
LPIPS_RANDOM_SEED = 0
SIFT_RATIO = 0.75
MIN_KEYPOINTS = 8
MIN_MATCHES = 20


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


def video_psnr(mse: Tensor | float) -> float:
    """PSNR of images in [0,1] from the video-level MSE (over all frames and pixels), as the official
    benchmark: ``10 log10(1 / MSE)``, and 100 for identical videos."""
    mse = float(mse)
    return 100.0 if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: Tensor, b: Tensor) -> float:
    """SSIM of two videos ``[T,3,H,W]`` in [0,1]: ``piq.ssim`` with its defaults (11 px Gaussian
    window, sigma 1.5, average-pooled by ``round(min(H, W) / 256)`` first: 2x at 518 px), mean over
    frames, as the official benchmark. Only frames under 11 px (which piq refuses) get the largest
    odd window that fits."""
    import piq

    window = min(11, (min(a.shape[-2:]) - 1) // 2 * 2 + 1)
    return float(piq.ssim(a.float(), b.float(), kernel_size=window, data_range=1.0, reduction="mean"))


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
    ``mse`` (video-level: over all frames and pixels), ``lpips`` (mean over frames), ``psnr``
    (from the video-level MSE) and ``ssim`` (``piq.ssim``, mean over frames), as the official benchmark.
    """
    _check_frames(frames)
    frames = frames.to(geometry.depth.device, torch.float32)
    rendered = reproject_frames(frames, geometry, conf_threshold)
    mse_t = ((rendered - frames) ** 2).mean(dim=(1, 2, 3))
    mse = F.mse_loss(rendered, frames)  # = mse_t.mean(): every frame has the same size
    model = lpips_model if lpips_model is not None else _default_lpips(frames.device)
    lpips_t = lpips_distance(model, rendered, frames)
    return {
        "3dcs": float((mse_t + lpips_weight * lpips_t).mean()),
        "mse": float(mse),
        "lpips": float(lpips_t.mean()),
        "psnr": video_psnr(mse),
        "ssim": ssim(frames, rendered),
    }


# ----------------------------------------------------------------------------- geometry metrics


def _homogeneous(extrinsics: Tensor) -> Tensor:
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=extrinsics.device, dtype=extrinsics.dtype)
    return torch.cat([extrinsics, bottom.expand(extrinsics.shape[0], 1, 4)], dim=1)


@torch.no_grad()
def mvcs(geometry: Geometry) -> float:
    """Multi-view consistency score (higher = more consistent), the official definition
    (``metrics/mvcs.py``): for each consecutive pair (i, i+1) every pixel of frame i goes with
    its depth into camera i+1 (relative pose ``E_{i+1} E_i^-1``); where it lands inside the image
    in front of the camera, its depth there is compared with frame i+1's depth sampled
    bilinearly at that point (zeros outside, ``align_corners=True``). The pair's error is the
    mean squared difference, in the GFM's raw depth units (not scale-invariant, no confidence
    filter); ``MVCS = exp(-mean over pairs)``. 0 when no pixel of any pair lands in view (as the
    official code), NaN for a single frame.
    """
    t = geometry.num_frames
    if t < 2:
        return float("nan")
    h, w = geometry.hw
    depth = geometry.depth.float()
    k = geometry.intrinsics.float()
    ext = _homogeneous(geometry.extrinsics.float())
    rel = ext[1:] @ torch.linalg.inv(ext[:-1])  # camera i -> camera i+1, [T-1,4,4]
    pix = pixel_grid(h, w, depth.device).reshape(-1, 3).T  # [3,HW]
    cam_i = (torch.linalg.inv(k[:-1]) @ pix) * depth[:-1].reshape(t - 1, 1, -1)
    cam_j = rel[:, :3, :3] @ cam_i + rel[:, :3, 3:]
    img_j = k[1:] @ cam_j
    z = img_j[:, 2].clamp(min=1e-8)
    u, v = img_j[:, 0] / z, img_j[:, 1] / z
    projected_depth = cam_j[:, 2]
    grid = torch.stack([2 * u / (w - 1) - 1, 2 * v / (h - 1) - 1], dim=-1).view(t - 1, h, w, 2)
    sampled = F.grid_sample(depth[1:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    keep = (u >= 0) & (u < w) & (v >= 0) & (v < h) & (projected_depth > 0)
    sq_err = (sampled.view(t - 1, -1) - projected_depth) ** 2
    counts = keep.sum(dim=1)
    pair_err = torch.where(keep, sq_err, torch.zeros_like(sq_err)).sum(dim=1) / counts.clamp(min=1)
    if not bool((counts > 0).any()):
        return 0.0
    return float(torch.exp(-pair_err[counts > 0].double().mean()))


@torch.no_grad()
def mvcs_scale_invariant(geometry: Geometry) -> float:
    """This project's MVCS variant: ``exp(-mean squared depth-reprojection error)`` over all
    consecutive pairs' pixels, with depths divided by the clip's median depth first (so the
    figure does not depend on the GFM's arbitrary scale), nearest-pixel lookup, and pixels with
    conf <= 1e-5 (either end) skipped. NaN when nothing can be compared.
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
    """Frames -> uint8 luma, converted as the official metric does: floats in [0,1] times 255,
    clipped and truncated to uint8 (exact for frames that came from uint8), then OpenCV RGB2GRAY."""
    if isinstance(frames, Tensor):  # float [T,3,H,W] in [0,1]
        frames = frames.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames: expected [T,3,H,W] float or [T,H,W,3] uint8, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(frames * 255.0, 0, 255).astype(np.uint8)
    return [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]


def sift_matches(feats: tuple, other: tuple, matcher: cv2.BFMatcher) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel coordinates ``[N,2]`` (float32) of the SIFT matches of two frames that pass Lowe's ratio
    test (0.75); None when a frame has fewer than 8 keypoints or fewer than 20 matches pass."""
    (kp1, d1), (kp2, d2) = feats, other
    if d1 is None or d2 is None or len(kp1) < MIN_KEYPOINTS or len(kp2) < MIN_KEYPOINTS:
        return None
    good = [m for m, n in (p for p in matcher.knnMatch(d1, d2, k=2) if len(p) == 2)
            if m.distance < SIFT_RATIO * n.distance]
    if len(good) < MIN_MATCHES:
        return None
    x1 = np.float32([kp1[m.queryIdx].pt for m in good])
    x2 = np.float32([kp2[m.trainIdx].pt for m in good])
    return x1, x2


def fit_fundamental(x1: np.ndarray, x2: np.ndarray) -> np.ndarray | None:
    """F ``[3,3]`` with ``x2^T F x1 = 0`` from matches ``[N,2]`` (N >= 8): kornia's normalized 8-point
    least squares over all matches, in float32, as the official metric (no RANSAC). None when the
    fit is not finite."""
    from kornia.geometry.epipolar import find_fundamental

    fmat = find_fundamental(torch.from_numpy(x1).float()[None], torch.from_numpy(x2).float()[None])[0]
    return fmat.numpy() if torch.isfinite(fmat).all() else None


def sampson_distance(fmat: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels of matches ``x1 [N,2] -> x2 [N,2]`` under ``fmat``, as the official
    metric: ``sqrt(d^2 + 1e-8)`` with ``d^2`` kornia's squared Sampson distance
    ``(x2^T F x1)^2 / ((F x1)_1^2 + (F x1)_2^2 + (F^T x2)_1^2 + (F^T x2)_2^2)``."""
    from kornia.geometry.epipolar import sampson_epipolar_distance

    f = torch.from_numpy(np.asarray(fmat, dtype=np.float32))
    d2 = sampson_epipolar_distance(torch.from_numpy(x1).float(), torch.from_numpy(x2).float(), f, squared=True)
    return torch.sqrt(d2 + 1e-8).numpy()


def epipolar_score(frames: Tensor | np.ndarray, min_size: int = 0, matcher=None) -> float:
    """The official SIFT Epipolar (``metrics/epipolar.py``; lower = more consistent): the mean Sampson
    distance of SIFT matches under a fundamental matrix, per consecutive frame pair.

    SIFT (OpenCV defaults), brute-force L2 matching with Lowe's ratio test 0.75; a pair with
    fewer than 8 keypoints in a frame or fewer than 20 matches is skipped; F is fitted to all
    matches by 8-point least squares and the mean Sampson distance of all of them is the pair's
    error (non-rigid motion shows up as matches no single F explains). Returns the mean over
    scored pairs, NaN if no pair could be scored (the official code returns -1): callers treat
    NaN as "unscorable". ``min_size``: frames with a shorter side below it are upscaled to it
    first (bicubic; distances are then in its pixels; 0, the default and official, never).
    ``matcher``: the official benchmark's SuperPoint + LightGlue (``actors.superpoint.SuperPointLightGlue``)
    instead of SIFT; the fit and the distances are the same.
    """
    gray = _to_gray_u8(frames)
    short = min(gray[0].shape) if gray else 0
    if 0 < short < min_size:
        f = min_size / short
        gray = [cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC) for g in gray]
    if matcher is not None:
        feats = [matcher.features(g) for g in gray]
        pair_matches = matcher.matches
    else:
        sift = cv2.SIFT_create()
        bf = cv2.BFMatcher(cv2.NORM_L2)
        feats = [sift.detectAndCompute(g, None) for g in gray]

        def pair_matches(a, b):
            return sift_matches(a, b, bf)
    errors = []
    for i in range(len(gray) - 1):
        matches = pair_matches(feats[i], feats[i + 1])
        fmat = fit_fundamental(*matches) if matches is not None else None
        if fmat is not None:
            error = float(sampson_distance(fmat, *matches).mean())
            if math.isfinite(error):  # a degenerate F (both epilines vanish) scores nothing
                errors.append(error)
    return float(np.mean(errors)) if errors else float("nan")


# ----------------------------------------------------------------------------- scorer


def video_to_tensor(video: np.ndarray) -> Tensor:
    """uint8 ``[F,H,W,3]`` (or float in [0,1]) -> float ``[F,3,H,W]`` in [0,1]; NaN/inf -> InputError."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise InputError(f"video: expected [F,H,W,3], got shape {video.shape}")
    # Frames from Ray's object store are read-only, which torch cannot share (it warns): the one
    # copy the float conversion makes anyway is done in NumPy, so torch only gets writable arrays.
    if video.dtype == np.uint8:
        return torch.from_numpy(video.astype(np.float32)).permute(0, 3, 1, 2).div_(255.0)
    if not np.issubdtype(video.dtype, np.floating):
        raise InputError(f"video: expected uint8 or float frames, got {video.dtype}")
    if not np.isfinite(video).all():
        raise InputError("video: contains NaN or inf values")
    return torch.from_numpy(np.array(video, dtype=np.float32)).permute(0, 3, 1, 2).clamp_(0, 1)


class VideoScorer:
    """Scores videos with one GFM backend and one LPIPS network (built once, reused).

    ``score`` samples ``cfg.num_frames`` frames uniformly (``linspace`` floored, as the official
    code), prepares them as the GFM sees them (default: the centred square at the backend's own
    resolution) and returns floats, all computed on those prepared frames as the official
    benchmark does, except the image-only guards: ``score`` (the reward, lower is better: 3DCS or
    epipolar per ``cfg.scorer``), ``3dcs``, ``mse``, ``lpips``, ``psnr``, ``ssim``, ``mvcs``
    (official), ``mvcs_si`` (``mvcs_scale_invariant``), ``motion``, ``epipolar``, and
    ``sharpness`` and ``frame_change`` (of the sampled frames as decoded). Epipolar (``cfg.epipolar_matcher``:
    SIFT on CPU, or SuperPoint + LightGlue on the scorer's device) is computed when it is the reward or when
    asked (``with_epipolar=True``), NaN otherwise.
    """

    def __init__(self, cfg: ScoringConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.backend = build_backend(cfg, self.device)
        self.lpips_model, self._lpips_used = build_lpips(cfg.lpips_backbone, self.device)
        self.epipolar_matcher = None  # SIFT
        if cfg.epipolar_matcher == "superpoint-lightglue":
            from actors.superpoint import SuperPointLightGlue

            self.epipolar_matcher = SuperPointLightGlue(cfg.superpoint_weights, cfg.lightglue_weights, self.device)

    @property
    def lpips_backbone_used(self) -> str:
        return self._lpips_used

    @property
    def gfm_weights(self) -> str:
        """``random`` (an untrained GFM: its scores rank nothing), ``ground-truth`` (oracle) or ``trained``."""
        if self.backend.random_weights:
            return "random"
        return "ground-truth" if self.cfg.backend == "oracle" else "trained"

    def sample(self, video: np.ndarray, geometry: Geometry | None = None) -> tuple[Tensor, Geometry | None]:
        """The T frames that are scored (and the matching frames of a full-clip ground truth)."""
        frames = video_to_tensor(video)
        idx = sample_frame_indices(frames.shape[0], self.cfg.num_frames, self.cfg.frame_indices)
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
        tensors = (geom.depth, geom.conf, geom.intrinsics, geom.extrinsics, geom.points)
        if not all(torch.isfinite(t).all() for t in tensors if t is not None):
            # A broken model output makes this one video unscorable, not the whole batch.
            raise InputError(f"{self.backend.name} GFM: geometry contains NaN or inf")
        geom = resize_geometry(geom, *x.shape[-2:])  # no-op when the backend kept the size
        result = reprojection_score(x, geom, self.cfg.conf_threshold, self.cfg.lpips_weight, self.lpips_model)
        result["mvcs"] = mvcs(geom)
        result["mvcs_si"] = mvcs_scale_invariant(geom)
        result["motion"] = motion_score(geom.extrinsics)
        result["sharpness"] = sharpness(frames)
        result["frame_change"] = frame_change(frames)
        want_epi = self.cfg.scorer == "epipolar" if with_epipolar is None else with_epipolar
        result["epipolar"] = (epipolar_score(x, self.cfg.epipolar_min_size, self.epipolar_matcher) if want_epi
                              else float("nan"))
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
    "mvcs_scale_invariant",
    "reprojection_score",
    "sampson_distance",
    "sharpness",
    "ssim",
    "video_psnr",
]
