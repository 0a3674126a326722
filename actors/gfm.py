"""Geometry foundation model (GFM) backends: frames -> per-frame depth, confidence and cameras.

Every backend works at its own input size (``resolution``, default ``DEFAULT_RESOLUTION``:
vggt 518, da3 504, tiny 56, oracle the frames' own): ``prepare`` maps input frames
``[T,3,H,W]`` in [0,1] to the frames it actually sees, and ``predict`` returns a ``Geometry``
of those frames (``VideoScorer`` resizes the geometry to the prepared frames if a backend
returns another size), so reprojection always compares like with like. By default
(``input_layout: center_square``) ``prepare`` is the official scorer's: the largest centred
square, resized to ``resolution`` x ``resolution``; ``full_width`` keeps the whole width.

Backends: ``tiny`` (small built-in conv net, offline; random init unless weights are given),
``oracle`` (ground truth of the synthetic world, passed alongside the frames), ``vggt`` and
``da3`` (optional packages, imported lazily). ``random_weights`` says when a backend's
network is untrained (its scores then rank nothing); building one logs it.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from actors.errors import InputError
from actors.geometry import Geometry, center_square_resize, patch_transform, resize_geometry, transform_frames
from actors.model_config import RANDOM_FULL_SIZE
from actors.scoring_config import InputLayout, ScoringConfig

logger = logging.getLogger(__name__)

VGGT_DEFAULT_ID = "facebook/VGGT-1B"
DA3_DEFAULT_ID = "depth-anything/DA3-Large"  # the official evaluation GFM
TINY_SEED = 0
# The official sampler's square size: every frame becomes its central square at 518 x 518 before
# any GFM sees it (DA3 then resizes it to its own process_res).
OFFICIAL_SQUARE_SIZE = 518


def _as_uint8_frames(frames: Tensor) -> np.ndarray:
    """Float ``[T,3,H,W]`` in [0,1] -> uint8 ``[T,H,W,3]`` (exact for frames that came from uint8)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _as_float_frames(frames: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0


class GFMBackend(ABC):
    name: str = "base"
    DEFAULT_RESOLUTION: int | None = 518
    random_weights: bool = False  # True: an untrained network, whose scores rank nothing

    def __init__(
        self, resolution: int | None = None, device: torch.device | str = "cpu",
        input_layout: InputLayout = "center_square",
    ) -> None:
        self.resolution = resolution if resolution is not None else self.DEFAULT_RESOLUTION
        self.device = torch.device(device)
        self.input_layout = input_layout

    def prepare(self, frames: Tensor) -> Tensor:
        """Frames as the backend sees them: ``center_square`` (official: the central square, uint8,
        OpenCV bilinear to ``resolution``) or ``full_width`` (VGGT's "crop" preprocessing)."""
        if self.input_layout == "center_square":
            return _as_float_frames(center_square_resize(_as_uint8_frames(frames), self.resolution), frames.device)
        tf = patch_transform(frames.shape[-2], frames.shape[-1], self.resolution)
        return transform_frames(frames, tf)

    @abstractmethod
    def predict(self, frames: Tensor, ground_truth: Geometry | None = None) -> Geometry:
        """Geometry of ``frames [T,3,H,W]`` (already ``prepare``d, in [0,1])."""


# ----------------------------------------------------------------------------- tiny


def _axis_angle_to_matrix(v: Tensor) -> Tensor:
    skew = torch.zeros(*v.shape[:-1], 3, 3, device=v.device, dtype=v.dtype)
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    skew = skew - skew.transpose(-1, -2)
    return torch.linalg.matrix_exp(skew)


class TinyGFM(nn.Module):
    """~0.28M-parameter stand-in for a GFM with the same outputs as VGGT.

    Per frame: a strided conv encoder -> depth and confidence maps. Cameras: the pooled
    features of (first frame, frame t) -> relative pose (axis-angle + translation; the
    first camera is the world frame, as in VGGT); pooled features of all frames -> one
    shared focal length. Depth > 0 (softplus) and conf >= 1 (VGGT's 1 + exp form, softened).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(c3, c3, 3, padding=1), nn.GELU(),
        )  # fmt: skip
        self.dense_head = nn.Conv2d(c3, 2, 1)
        self.pose_head = nn.Sequential(nn.Linear(2 * c3, c3), nn.GELU(), nn.Linear(c3, 6))
        self.focal_head = nn.Linear(c3, 1)

    def forward(self, frames: Tensor) -> Geometry:
        t, _, h, w = frames.shape
        feats = self.encoder(frames * 2 - 1)
        dense = F.interpolate(self.dense_head(feats), size=(h, w), mode="bilinear", align_corners=False)
        depth = 1.0 + F.softplus(dense[:, 0])
        conf = 1.0 + F.softplus(dense[:, 1])
        pooled = feats.mean(dim=(2, 3))
        pair = torch.cat([pooled[:1].expand(t, -1), pooled], dim=1)
        pose = 0.1 * torch.tanh(self.pose_head(pair))  # small motions: outputs stay plausible untrained
        pose = pose * (torch.arange(t, device=frames.device) > 0)[:, None]  # first camera = world
        rot = _axis_angle_to_matrix(pose[:, :3])
        extrinsics = torch.cat([rot, pose[:, 3:, None]], dim=2)
        focal = w * (0.6 + 0.8 * torch.sigmoid(self.focal_head(pooled.mean(0))))  # horizontal FOV ~ 40-80 deg
        k = torch.zeros(t, 3, 3, device=frames.device, dtype=frames.dtype)
        k[:, 0, 0], k[:, 1, 1] = focal, focal
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = (w - 1) / 2, (h - 1) / 2, 1.0
        return Geometry(depth, conf, k, extrinsics)


def build_tiny_gfm(weights: str | None = None) -> TinyGFM:
    """``TinyGFM`` with weights from a safetensors file, or a fixed-seed random init
    (identical in every process, so scores from different Ray actors are comparable)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = TinyGFM()
    if weights is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(weights)
            model.load_state_dict(state, strict=True)
        except (OSError, SafetensorError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise InputError(f"scoring.weights: {weights}: not tiny-GFM safetensors weights ({reason})") from None
    return model.eval().requires_grad_(False)


class TinyBackend(GFMBackend):
    name = "tiny"
    DEFAULT_RESOLUTION = 56  # what the committed miniature GFM was trained at (benchmarks/miniature_lab)

    def __init__(
        self, weights: str | None = None, resolution: int | None = None, device: torch.device | str = "cpu",
        input_layout: InputLayout = "center_square",
    ) -> None:
        super().__init__(resolution, device, input_layout)
        self.model = build_tiny_gfm(weights).to(self.device)
        self.random_weights = weights is None

    @torch.no_grad()
    def predict(self, frames: Tensor, ground_truth: Geometry | None = None) -> Geometry:
        return self.model(frames.to(self.device, torch.float32))


# ----------------------------------------------------------------------------- oracle


class OracleBackend(GFMBackend):
    """Returns the ground truth passed alongside the frames (synthetic world), at the frames' size."""

    name = "oracle"
    DEFAULT_RESOLUTION = None

    def prepare(self, frames: Tensor) -> Tensor:
        return frames  # ground truth exists at the native resolution, for the whole frame: used as it is

    def predict(self, frames: Tensor, ground_truth: Geometry | None = None) -> Geometry:
        if ground_truth is None:
            raise InputError("GFM backend 'oracle' needs ground-truth geometry: score(video, geometry=...)")
        if ground_truth.num_frames != frames.shape[0]:
            raise InputError(f"oracle geometry has {ground_truth.num_frames} frames, the video {frames.shape[0]}")
        return resize_geometry(ground_truth.to(self.device), frames.shape[-2], frames.shape[-1])


# ----------------------------------------------------------------------------- vggt


def _missing(backend: str, package: str, hint: str) -> InputError:
    return InputError(f"GFM backend '{backend}' needs the {package} package: {hint}")


class VGGTBackend(GFMBackend):
    """VGGT (facebook/VGGT-1B): 518 px frames with patch 14; depth, depth_conf, the point map
    ``world_points`` and a pose encoding that ``pose_encoding_to_extri_intri`` turns into OpenCV
    world->camera extrinsics (first camera = world) and pixel intrinsics. ``points="point_map"``
    (official) re-renders VGGT's point map, filtered by ``depth_conf``; ``"depth"`` unprojects
    the depth head with the cameras. MVCS and motion use depth and cameras either way."""

    name = "vggt"
    DEFAULT_RESOLUTION = 518

    def __init__(
        self, weights: str | None = None, resolution: int | None = None, device: torch.device | str = "cpu",
        model: nn.Module | None = None, input_layout: InputLayout = "center_square",
        points: Literal["point_map", "depth"] = "point_map",
    ) -> None:
        super().__init__(resolution, device, input_layout)
        self.points = points
        try:
            from vggt.utils.pose_enc import pose_encoding_to_extri_intri
        except ImportError:
            raise _missing("vggt", *_BACKEND_PACKAGES["vggt"]) from None
        self._to_cameras = pose_encoding_to_extri_intri
        if model is None:
            from vggt.models.vggt import VGGT

            if weights == RANDOM_FULL_SIZE:  # VGGT's defaults are VGGT-1B's architecture
                self.random_weights = True
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model = VGGT()
            else:
                model = VGGT.from_pretrained(weights or VGGT_DEFAULT_ID)  # hub id or local directory
        self.model = model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def predict(self, frames: Tensor, ground_truth: Geometry | None = None) -> Geometry:
        images = frames.to(self.device, torch.float32)[None]  # [1,T,3,H,W] in [0,1]
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.model(images)
        extrinsics, intrinsics = self._to_cameras(out["pose_enc"].float(), images.shape[-2:])
        points = None
        if self.points == "point_map":
            if out.get("world_points") is None:
                raise InputError("GFM backend 'vggt': the model has no point-map head (world_points); "
                                 "use scoring.vggt_points=depth")
            points = out["world_points"][0].float()
        return Geometry(
            depth=out["depth"][0, ..., 0].float(),
            conf=out["depth_conf"][0].float(),
            intrinsics=intrinsics[0].float(),
            extrinsics=extrinsics[0].float(),
            points=points,
        )


# ----------------------------------------------------------------------------- da3


def upper_bound_resize(frames: np.ndarray, size: int, patch: int = 14) -> np.ndarray:
    """DA3's ``upper_bound_resize`` of uint8 ``[T,H,W,3]`` frames: the longest side to ``size``
    (OpenCV INTER_AREA down, INTER_CUBIC up), then each side to its nearest ``patch`` multiple."""

    def resize(x: np.ndarray, hw: tuple[int, int], up: bool) -> np.ndarray:
        interp = cv2.INTER_CUBIC if up else cv2.INTER_AREA
        return np.stack([cv2.resize(np.ascontiguousarray(f), hw[::-1], interpolation=interp) for f in x])

    h, w = frames.shape[1:3]
    if max(h, w) != size:
        scale = size / max(h, w)
        hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        frames, (h, w) = resize(frames, hw, scale > 1), hw

    def nearest(x: int) -> int:  # DA3's rule: the nearer multiple, up on a tie
        down = x // patch * patch
        return max(1, down + patch if down + patch - x <= x - down else down)

    hw = (nearest(h), nearest(w))
    if hw != (h, w):
        frames = resize(frames, hw, hw[0] > h or hw[1] > w)
    return frames


class DA3Backend(GFMBackend):
    """Depth Anything 3 through its ``DepthAnything3.inference`` API (numpy in, numpy out:
    ``depth``/``conf`` [N,H,W], ``extrinsics`` [N,3,4] OpenCV world->camera, ``intrinsics``
    [N,3,3], ``processed_images`` [N,H,W,3]). ``center_square`` prepares frames as the official
    evaluation feeds DA3-Large: the 518 x 518 central square, then DA3's own upper-bound resize
    to ``resolution`` (its process_res, 504), done here so the scored frames are the ones DA3
    sees (it keeps frames already at that size as they are). ``full_width``: a patch-14 size no
    larger than ``resolution``."""

    name = "da3"
    DEFAULT_RESOLUTION = 504

    def __init__(
        self, weights: str | None = None, resolution: int | None = None, device: torch.device | str = "cpu",
        model: nn.Module | None = None, input_layout: InputLayout = "center_square",
    ) -> None:
        super().__init__(resolution, device, input_layout)
        if model is None:
            try:
                from depth_anything_3.api import DepthAnything3
            except ImportError:
                raise _missing("da3", *_BACKEND_PACKAGES["da3"]) from None
            if weights == RANDOM_FULL_SIZE:
                self.random_weights = True
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model = DepthAnything3(model_name="da3-large")  # DA3-Large's preset, random init
            else:
                model = DepthAnything3.from_pretrained(weights or DA3_DEFAULT_ID)
        self.model = model.to(self.device).eval()

    def prepare(self, frames: Tensor) -> Tensor:
        if self.input_layout == "full_width":
            return super().prepare(frames)
        square = center_square_resize(_as_uint8_frames(frames), OFFICIAL_SQUARE_SIZE)
        return _as_float_frames(upper_bound_resize(square, self.resolution), frames.device)

    @torch.no_grad()
    def predict(self, frames: Tensor, ground_truth: Geometry | None = None) -> Geometry:
        images = list(_as_uint8_frames(frames))
        pred = self.model.inference(images, process_res=self.resolution, process_res_method="upper_bound_resize")
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)  # noqa: E731
        extrinsics = as_tensor(pred.extrinsics)[:, :3, :4]  # some versions return 4x4
        depth = as_tensor(pred.depth)
        conf = as_tensor(pred.conf) if pred.conf is not None else torch.ones_like(depth)  # as the official code
        geometry = Geometry(depth, conf, as_tensor(pred.intrinsics), extrinsics)
        return resize_geometry(geometry, frames.shape[-2], frames.shape[-1])


# ----------------------------------------------------------------------------- factory


def build_backend(cfg: ScoringConfig, device: torch.device | str = "cpu") -> GFMBackend:
    """The GFM backend named by ``cfg.backend``; optional packages are imported only here.
    Logs a warning when the backend's network has random weights."""
    layout = cfg.input_layout
    if cfg.backend == "tiny":
        backend: GFMBackend = TinyBackend(cfg.weights, cfg.resolution, device, layout)
    elif cfg.backend == "oracle":
        backend = OracleBackend(cfg.resolution, device, layout)
    elif cfg.backend == "vggt":
        backend = VGGTBackend(cfg.weights, cfg.resolution, device, input_layout=layout, points=cfg.vggt_points)
    elif cfg.backend == "da3":
        backend = DA3Backend(cfg.weights, cfg.resolution, device, input_layout=layout)
    else:
        raise InputError(f"scoring.backend: unknown GFM backend {cfg.backend!r}")
    if backend.random_weights:
        logger.warning("GFM backend '%s' has random weights (scoring.weights is not set): its geometry, and the "
                       "3DCS/MVCS/motion computed from it, mean nothing", backend.name)
    return backend


_BACKEND_PACKAGES = {  # backend -> (module it imports, how to install it)
    "vggt": ("vggt", "pip install 'videogpa[vggt]' && pip install --no-deps "
                     "'vggt @ https://github.com/facebookresearch/vggt/archive/"
                     "a288dd0f14786c93483e45524328726ab7b1b4ce.tar.gz' "
                     "(as cluster/Dockerfile does)"),
    "da3": ("depth_anything_3", "pip install 'videogpa[da3]' && pip install --no-deps depth-anything-3==0.1.1 "
                                "moviepy==1.0.3 evo (as cluster/Dockerfile does)"),
}


def check_backend(cfg: ScoringConfig) -> None:
    """What the driver can know before scoring actors start: the backend's package is installed
    and local weights exist. One InputError naming the key."""
    import importlib.util

    from actors.model_source import looks_local

    if cfg.backend in _BACKEND_PACKAGES:
        module, hint = _BACKEND_PACKAGES[cfg.backend]
        if importlib.util.find_spec(module) is None:
            raise _missing(cfg.backend, module, hint)
    if cfg.weights is None or (cfg.weights == RANDOM_FULL_SIZE and cfg.backend in ("vggt", "da3")):
        return
    local = cfg.backend == "tiny" or looks_local(cfg.weights)
    if local and not os.path.exists(os.path.expanduser(cfg.weights)):
        raise InputError(f"scoring.weights: {cfg.weights!r} does not exist")
    if cfg.backend == "tiny" and not os.path.isfile(os.path.expanduser(cfg.weights)):
        raise InputError(f"scoring.weights: {cfg.weights!r} is not a file (the tiny GFM takes one safetensors file)")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "GFMBackend",
    "ScoringConfig",
    "TinyGFM",
    "TinyBackend",
    "OracleBackend",
    "VGGTBackend",
    "DA3Backend",
    "build_backend",
    "check_backend",
    "upper_bound_resize",
    "build_tiny_gfm",
    "count_parameters",
]
