"""Per-frame geometry, frame sampling/resizing, back-projection and z-buffer splatting.

Conventions (shared by every GFM backend and the synthetic world):
- pixel centres sit at integer coordinates (OpenCV): pixel (u, v) covers [u-0.5, u+0.5);
- ``intrinsics`` are in pixels of the geometry's own H x W;
- ``extrinsics`` map world -> camera, ``x_cam = R x_world + t``, OpenCV axes
  (x right, y down, z forward); ``depth`` is the camera z of the surface seen at a pixel.
All functions are pure tensor code that runs on whatever device the inputs are on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from actors.errors import InputError

# Points with confidence at or below this never count (the reference's `conf > 1e-5`).
MIN_CONF = 1e-5
# Points closer than this to a camera are not splatted (behind / on the image plane).
NEAR = 1e-6


@dataclass
class Geometry:
    """What a GFM predicts for T frames: depth and confidence ``[T,H,W]``,
    pixel intrinsics ``[T,3,3]``, world->camera extrinsics ``[T,3,4]`` (OpenCV axes), and
    optionally a point map ``points [T,H,W,3]``: the world point seen at each pixel, as a
    point-map head predicts it (VGGT's ``world_points``). With a point map, the re-rendered
    cloud is built from it (``conf`` still filters it); without, from depth and cameras."""

    depth: Tensor
    conf: Tensor
    intrinsics: Tensor
    extrinsics: Tensor
    points: Tensor | None = None

    def __post_init__(self) -> None:
        t, h, w = self.depth.shape if self.depth.ndim == 3 else (None, None, None)
        if t is None or self.conf.shape != self.depth.shape:
            raise InputError(f"geometry: depth/conf must both be [T,H,W], got {tuple(self.depth.shape)} / "
                             f"{tuple(self.conf.shape)}")
        if self.intrinsics.shape != (t, 3, 3) or self.extrinsics.shape != (t, 3, 4):
            raise InputError(
                f"geometry: expected intrinsics [{t},3,3] and extrinsics [{t},3,4], got "
                f"{tuple(self.intrinsics.shape)} / {tuple(self.extrinsics.shape)}"
            )
        if self.points is not None and self.points.shape != (t, h, w, 3):
            raise InputError(f"geometry: points must be [{t},{h},{w},3], got {tuple(self.points.shape)}")

    @property
    def num_frames(self) -> int:
        return self.depth.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return self.depth.shape[1], self.depth.shape[2]

    def _map(self, fn) -> Geometry:
        return Geometry(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                           for f in fields(self)})

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Geometry:
        return self._map(lambda x: x.to(device=device, dtype=dtype))

    def select(self, indices: list[int] | Tensor) -> Geometry:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.depth.device)
        return self._map(lambda x: x[idx])


def sample_frame_indices(num_frames: int, num_samples: int, rule: Literal["floor", "round"] = "floor") -> list[int]:
    """``num_samples`` indices spread uniformly over ``[0, num_frames)``, first and last included:
    ``linspace(0, F-1, T)`` floored to integers (the official code's rule) or rounded.

    A clip with fewer frames than requested is used whole (no duplicated frames:
    a repeated frame would re-render itself perfectly and flatter the score).
    """
    if num_frames <= 0 or num_samples <= 0:
        raise InputError(f"frame sampling: need positive counts, got num_frames={num_frames}, T={num_samples}")
    if rule not in ("floor", "round"):
        raise InputError(f"frame sampling: rule must be floor|round, got {rule!r}")
    if num_frames <= num_samples:
        return list(range(num_frames))
    positions = np.linspace(0, num_frames - 1, num_samples)
    return (np.floor(positions) if rule == "floor" else positions.round()).astype(int).tolist()


# ----------------------------------------------------------------------------- resizing


@dataclass(frozen=True)
class FrameTransform:
    """Resize ``in_hw -> resized_hw`` then crop ``out_hw`` at ``(top, left)``."""

    in_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    top: int
    left: int
    out_hw: tuple[int, int]


def patch_transform(h: int, w: int, resolution: int = 518, patch: int = 14) -> FrameTransform:
    """VGGT's "crop" preprocessing: width -> ``resolution``, height scaled to keep the
    aspect ratio and rounded to a ``patch`` multiple, then centre-cropped to at most
    ``resolution`` (tall videos)."""
    if resolution % patch:
        raise InputError(f"scoring.resolution: must be a multiple of {patch}, got {resolution}")
    new_w = resolution
    new_h = max(patch, int(round(h * new_w / w / patch)) * patch)
    out_h = min(new_h, resolution)
    return FrameTransform((h, w), (new_h, new_w), (new_h - out_h) // 2, 0, (out_h, new_w))


def center_square_resize(frames: np.ndarray, size: int) -> np.ndarray:
    """The official scorer's input: the largest centred square of each ``[T,H,W,3]`` frame, resized
    to ``size x size`` by OpenCV's bilinear ``INTER_LINEAR`` (no antialiasing), in the frames' dtype
    (720x480 -> its central 480x480 -> 518x518)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames: expected [T,H,W,3], got shape {frames.shape}")
    if size <= 0:
        raise InputError(f"scoring.resolution: must be positive, got {size}")
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = frames[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=cv2.INTER_LINEAR)
                     for f in square])


def resize_transform(h: int, w: int, out_h: int, out_w: int) -> FrameTransform:
    return FrameTransform((h, w), (out_h, out_w), 0, 0, (out_h, out_w))


def _crop(x: Tensor, tf: FrameTransform) -> Tensor:
    return x[..., tf.top : tf.top + tf.out_hw[0], tf.left : tf.left + tf.out_hw[1]]


def transform_frames(frames: Tensor, tf: FrameTransform) -> Tensor:
    """Apply ``tf`` to float frames ``[T,3,H,W]`` (antialiased bilinear)."""
    if tuple(frames.shape[-2:]) != tf.resized_hw:
        frames = F.interpolate(frames, size=tf.resized_hw, mode="bilinear", align_corners=False, antialias=True)
    return _crop(frames, tf).clamp(0, 1)


def transform_geometry(geometry: Geometry, tf: FrameTransform) -> Geometry:
    """Apply ``tf`` to a geometry: nearest resampling for depth/conf/points (no blending across
    depth edges), intrinsics rescaled and shifted so they still describe the pixels."""
    if geometry.hw != tf.in_hw:
        raise InputError(f"geometry: size {geometry.hw} does not match the frames {tf.in_hw}")
    channels = [geometry.depth[:, None], geometry.conf[:, None]]
    if geometry.points is not None:
        channels.append(geometry.points.permute(0, 3, 1, 2))
    maps = torch.cat(channels, dim=1)
    if tf.resized_hw != tf.in_hw:
        maps = F.interpolate(maps, size=tf.resized_hw, mode="nearest-exact")
    maps = _crop(maps, tf)
    points = maps[:, 2:].permute(0, 2, 3, 1).contiguous() if geometry.points is not None else None
    sy = tf.resized_hw[0] / tf.in_hw[0]
    sx = tf.resized_hw[1] / tf.in_hw[1]
    k = geometry.intrinsics.clone()
    # continuous coordinate u+0.5 scales linearly; pixel centres stay at integers
    k[:, 0, 0] *= sx
    k[:, 0, 1] *= sx
    k[:, 1, 1] *= sy
    k[:, 0, 2] = (k[:, 0, 2] + 0.5) * sx - 0.5 - tf.left
    k[:, 1, 2] = (k[:, 1, 2] + 0.5) * sy - 0.5 - tf.top
    return Geometry(maps[:, 0].contiguous(), maps[:, 1].contiguous(), k, geometry.extrinsics.clone(), points)


def resize_geometry(geometry: Geometry, out_h: int, out_w: int) -> Geometry:
    """Resize a geometry to ``out_h x out_w`` (e.g. a backend's output to its input frames)."""
    if geometry.hw == (out_h, out_w):
        return geometry
    return transform_geometry(geometry, resize_transform(*geometry.hw, out_h, out_w))


# ----------------------------------------------------------------------------- point cloud


def confidence_mask(conf: Tensor, conf_threshold: float = 0.0) -> Tensor:
    """Keep the top ``(100 - conf_threshold)``% of points by confidence (percentile
    threshold over all frames, as in the reference), and never points with conf <= 1e-5."""
    if not 0.0 <= conf_threshold < 100.0:
        raise InputError(f"conf_threshold: must be a percentage in [0, 100), got {conf_threshold}")
    mask = conf > MIN_CONF
    if conf_threshold > 0:
        flat = conf.reshape(-1)
        k = min(int(flat.numel() * conf_threshold / 100.0), flat.numel() - 1)
        # the k-th smallest value (0-based) is the percentile; >= keeps exactly n-k without ties
        threshold = torch.kthvalue(flat.float().cpu(), k + 1).values.to(conf.device)
        mask &= conf >= threshold
    return mask


def pixel_grid(h: int, w: int, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Homogeneous pixel centres ``[H,W,3]`` = (u, v, 1)."""
    v, u = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([u, v, torch.ones_like(u)], dim=-1)


def depth_to_world(geometry: Geometry) -> Tensor:
    """World coordinates ``[T,H,W,3]`` of every pixel: ``R^T (d K^-1 [u,v,1] - t)``."""
    t, h, w = geometry.depth.shape
    rays = torch.einsum("tij,hwj->thwi", torch.linalg.inv(geometry.intrinsics), pixel_grid(h, w, geometry.depth.device))
    cam = rays * geometry.depth[..., None]
    rot, trans = geometry.extrinsics[:, :, :3], geometry.extrinsics[:, :, 3]
    return torch.einsum("tji,thwj->thwi", rot, cam - trans[:, None, None, :])


def unproject(geometry: Geometry, frames: Tensor, conf_threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Back-project every kept pixel of every frame into one world point cloud: the point map
    where the geometry has one, else depth and cameras (pixels with depth > 0).

    ``frames`` float ``[T,3,H,W]`` give the colours. Returns ``points [N,3]`` and ``colors [N,3]``.
    """
    if frames.shape[0] != geometry.num_frames or tuple(frames.shape[-2:]) != geometry.hw:
        raise InputError(f"frames {tuple(frames.shape)} do not match geometry {geometry.num_frames}x{geometry.hw}")
    mask = confidence_mask(geometry.conf, conf_threshold)
    if geometry.points is None:
        mask &= geometry.depth > 0
        points = depth_to_world(geometry)[mask]
    else:
        mask &= torch.isfinite(geometry.points).all(dim=-1)
        points = geometry.points[mask]
    colors = frames.permute(0, 2, 3, 1)[mask]
    return points, colors


def project(points: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Project ``[N,3]`` world points into all T cameras: pixel ``u, v`` and depth ``z``, each ``[T,N]``."""
    # One matmul with the composed K [R|t] (3x4 per frame) gives u*z, v*z, z: no [T,N,3]
    # camera-space intermediate. K's last row is (0,0,1), so z is the camera z.
    dtype = torch.promote_types(points.dtype, torch.float32)
    proj = (intrinsics.to(dtype) @ extrinsics.to(dtype)).transpose(0, 1).reshape(-1, 4)  # [3T,4]
    uz, vz, z = torch.addmm(proj[:, 3:], proj[:, :3], points.to(dtype).T).view(3, intrinsics.shape[0], -1)
    safe_z = torch.where(z > NEAR, z, torch.ones_like(z))
    return uz / safe_z, vz / safe_z, z


def splat(
    points: Tensor,
    colors: Tensor,
    intrinsics: Tensor,
    extrinsics: Tensor,
    height: int,
    width: int,
    return_mask: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Render a coloured point cloud into T cameras at once: ``[T,3,H,W]``.

    Each point goes to its rounded pixel in every frame and the nearest depth wins, exact
    depth ties to the lowest point index - deterministic on every device. Two scatters per
    group of frames: ``amin`` of the float32 depth bits (positive floats order like their
    int32 patterns) into a per-pixel z-buffer, then ``amin`` of the point index over the
    few candidates whose depth equals their pixel's minimum. Points behind a camera or
    outside its image go to a dump slot. Pixels no point reaches stay black. With
    ``return_mask`` also returns the coverage mask ``[T,H,W]``.
    """
    num_t, n = intrinsics.shape[0], points.shape[0]
    device = points.device
    hw = height * width
    # Flat pixel indices are built in the projection's float dtype: float32 holds integers
    # exactly only below 2**24, so a group of frames stays under that (float64 beyond).
    dtype = torch.promote_types(points.dtype, torch.float32)
    max_frames = (2**24 - 1) // max(hw, 1) if dtype == torch.float32 else num_t
    if max_frames == 0:
        dtype, max_frames = torch.float64, num_t
    # Up to ~8M (frame, point) candidates a group bounds the temporaries (~25 bytes each).
    # Smaller groups gain little on an idle CPU and lose a lot when its cores are shared
    # (twice the passes, each a thread barrier); a GPU wants big passes anyway.
    group = max(1, min(num_t, max_frames, (1 << 23) // max(n, 1)))
    proj = (intrinsics.to(dtype) @ extrinsics.to(dtype)).transpose(0, 1)  # K [R|t]: [3,T,4]
    points_t = points.to(dtype).T
    winners = []
    for t0 in range(0, num_t, group):
        p = proj[:, t0 : t0 + group].reshape(-1, 4)
        num_f = p.shape[0] // 3
        num_px = num_f * hw
        # One matmul gives u*z, v*z, z; everything after is in place on it (fresh
        # frames x points buffers cost page faults on CPU).
        u, v, z = torch.addmm(p[:, 3:], p[:, :3], points_t).view(3, num_f, n)
        u.div_(z).add_(0.5).floor_()  # round half up: pixel centres are integers
        v.div_(z).add_(0.5).floor_()
        valid = z > NEAR  # a NaN fails every test
        valid &= u >= 0
        valid &= u < width
        valid &= v >= 0
        valid &= v < height
        u.add_(v, alpha=width).add_(torch.arange(num_f, device=device, dtype=dtype)[:, None] * hw)
        flat = u.masked_fill_(valid.logical_not_(), num_px).view(-1).long()  # dump slot: num_px

        depth = z.reshape(-1).float().view(torch.int32)  # z > 0 wherever it matters
        zbuf = torch.full((num_px + 1,), torch.iinfo(torch.int32).max, device=device, dtype=torch.int32)
        zbuf.scatter_reduce_(0, flat, depth, reduce="amin")
        # Candidates at their pixel's minimum depth: ~one per covered pixel. All of a
        # pixel's candidates share its frame, so the lowest flat index is the lowest point.
        hit = (zbuf.index_select(0, flat) == depth).nonzero().squeeze(1)
        best = torch.full((num_px + 1,), n, device=device, dtype=torch.long)
        best.scatter_reduce_(0, flat[hit], hit % n, reduce="amin")
        winners.append(best[:num_px])

    # point per pixel, n = none (T = 0: an empty image)
    best = winners[0] if len(winners) == 1 else torch.cat([torch.zeros(0, dtype=torch.long, device=device), *winners])
    palette = torch.cat([colors, colors.new_zeros(1, colors.shape[1])])  # row n: black
    image = palette[best].view(num_t, height, width, colors.shape[1]).permute(0, 3, 1, 2).contiguous()
    if return_mask:
        return image, (best != n).view(num_t, height, width)
    return image


def reproject_frames(
    frames: Tensor, geometry: Geometry, conf_threshold: float = 0.0, return_mask: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Back-project all frames into one cloud and splat it into every frame's camera."""
    points, colors = unproject(geometry, frames, conf_threshold)
    h, w = geometry.hw
    return splat(points, colors, geometry.intrinsics, geometry.extrinsics, h, w, return_mask=return_mask)
