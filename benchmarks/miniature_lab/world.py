"""A procedural 3D world with exact geometry, for testing scorers without any model.

A scene is a textured room (floor, walls, ceiling: the planes) holding a few
textured boxes and thin panels. Frames are ray-cast analytically (slab test
against oriented boxes, all frames x rays x objects at once), so depth,
intrinsics and world->camera extrinsics are exact. Colours are supersampled
(``supersample**2`` rays per pixel) to avoid aliasing; depth comes from the ray
through the pixel centre, matching ``actors.geometry``'s pixel convention.

Corruptions break 3D consistency in controlled ways; the returned ``geometry`` is
always the ground truth of the *clean* rigid scene (what the ``oracle`` GFM returns):
- ``deform``:  one box changes shape over time;
- ``drift``:   one box slides across the floor, independently of the scene;
- ``warp``:    a smooth non-rigid image warp whose amplitude grows over time;
- ``flicker``: per-frame brightness changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from actors.errors import InputError
from actors.geometry import Geometry, pixel_grid

TRAJECTORIES = ("orbit", "dolly", "pan")
CORRUPTIONS = ("deform", "drift", "warp", "flicker")
_LIGHT = torch.tensor([0.35, 0.85, 0.4]) / math.sqrt(0.35**2 + 0.85**2 + 0.4**2)
_NEAR = 1e-4


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 [F,H,W,3]
    geometry: Geometry  # ground truth of the clean rigid scene, [F,H,W] at the frames' size
    trajectory: str
    corruption: str | None
    seed: int


@dataclass
class Scene:
    """Oriented boxes, per frame so corruptions can animate them: ``center [F,B,3]``,
    ``rot [F,B,3,3]`` (columns = box axes in world), ``half [F,B,3]``; static appearance
    ``color [B,3]``, ``cell [B]`` (checker size), ``phase [B,3]``, ``wave [B,3]``;
    ``inside [B]`` marks the room (seen from inside)."""

    center: Tensor
    rot: Tensor
    half: Tensor
    color: Tensor
    cell: Tensor
    phase: Tensor
    wave: Tensor
    inside: Tensor


def _yaw(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _make_scene(rng: np.random.Generator, num_frames: int) -> Scene:
    centers, rots, halves, colors, cells, inside = [], [], [], [], [], []

    def add(center, yaw, half, color, cell, is_room=False):
        centers.append(torch.tensor(center, dtype=torch.float32))
        rots.append(_yaw(yaw))
        halves.append(torch.tensor(half, dtype=torch.float32))
        colors.append(torch.tensor(color, dtype=torch.float32))
        cells.append(cell)
        inside.append(is_room)

    # room: floor at y=0, walls at |x|,|z| = 3.5, ceiling at y=3
    add([0.0, 1.5, 0.0], rng.uniform(0, math.pi / 2), [3.5, 1.5, 3.5], rng.uniform(0.45, 0.95, 3),
        rng.uniform(0.4, 0.7), True)
    for i in range(int(rng.integers(2, 5))):  # boxes on the floor; the first is the central "hero"
        # the others stay lower than the hero so they rarely hide it
        half = rng.uniform(0.25, 0.4, 3) if i == 0 else rng.uniform([0.15, 0.1, 0.15], [0.3, 0.2, 0.3])
        r, a = (rng.uniform(0.0, 0.2) if i == 0 else rng.uniform(0.55, 0.8)), rng.uniform(0, 2 * math.pi)
        add([r * math.cos(a), half[1], r * math.sin(a)], rng.uniform(0, math.pi), half, rng.uniform(0.1, 1.0, 3),
            rng.uniform(0.1, 0.22))
    if rng.uniform() < 0.7:  # a thin standing panel: a textured plane inside the room
        a = rng.uniform(0, 2 * math.pi)
        half = [rng.uniform(0.25, 0.45), rng.uniform(0.3, 0.6), 0.02]
        add([0.9 * math.cos(a), half[1], 0.9 * math.sin(a)], rng.uniform(0, math.pi), half, rng.uniform(0.1, 1.0, 3),
            rng.uniform(0.1, 0.22))

    b = len(centers)
    expand = lambda xs: torch.stack(xs)[None].repeat(num_frames, *([1] * (xs[0].ndim + 1)))  # noqa: E731
    return Scene(
        center=expand(centers),
        rot=expand(rots),
        half=expand(halves),
        color=torch.stack(colors),
        cell=torch.tensor(cells, dtype=torch.float32),
        phase=torch.tensor(rng.uniform(0, 1, (b, 3)), dtype=torch.float32),
        wave=torch.tensor(rng.uniform(1.0, 4.0, (b, 3)), dtype=torch.float32),
        inside=torch.tensor(inside),
    )


# ----------------------------------------------------------------------------- cameras


def _look_at(eye: Tensor, forward: Tensor) -> Tensor:
    """World->camera ``[3,4]`` for a camera at ``eye`` looking along ``forward`` (world y is up)."""
    f = forward / forward.norm()
    right = torch.linalg.cross(f, torch.tensor([0.0, 1.0, 0.0]))
    right = right / right.norm()
    down = torch.linalg.cross(f, right)
    rot = torch.stack([right, down, f])
    return torch.cat([rot, (-rot @ eye)[:, None]], dim=1)


def camera_path(rng: np.random.Generator, trajectory: str, num_frames: int, speed: float) -> Tensor:
    """World->camera extrinsics ``[F,3,4]``; ``speed`` scales how far the camera moves (0 = static)."""
    if trajectory not in TRAJECTORIES:
        raise InputError(f"trajectory: expected one of {TRAJECTORIES}, got {trajectory!r}")
    s = torch.linspace(0.0, 1.0, num_frames)
    theta0, radius, height = rng.uniform(0, 2 * math.pi), rng.uniform(2.0, 2.4), rng.uniform(1.0, 1.5)
    target = torch.tensor([rng.uniform(-0.15, 0.15), rng.uniform(0.25, 0.45), rng.uniform(-0.15, 0.15)])
    sweep = {"orbit": rng.uniform(0.35, 0.6), "dolly": rng.uniform(0.3, 0.5), "pan": rng.uniform(0.25, 0.4)}[trajectory]
    sweep *= speed * (1 if rng.uniform() < 0.5 else -1)

    def orbit_eye(theta: float) -> Tensor:
        return torch.tensor([radius * math.cos(theta), height, radius * math.sin(theta)])

    eye0 = orbit_eye(theta0)
    poses = []
    for si in s.tolist():  # F <= ~20 poses: building them is not the hot path
        if trajectory == "orbit":
            eye = orbit_eye(theta0 + sweep * si)
            poses.append(_look_at(eye, target - eye))
        elif trajectory == "dolly":
            fwd = (target - eye0) / (target - eye0).norm()
            poses.append(_look_at(eye0 + abs(sweep) * si * fwd, fwd))
        else:  # pan across the target, so the centre of the scene stays in view
            poses.append(_look_at(eye0, _yaw(sweep * (si - 0.5)) @ (target - eye0)))
    return torch.stack(poses)


def pinhole(height: int, width: int, num_frames: int, fov_deg: float = 50.0) -> Tensor:
    """Pixel intrinsics ``[F,3,3]`` with a horizontal field of view ``fov_deg``."""
    fx = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    k = torch.tensor([[fx, 0.0, (width - 1) / 2], [0.0, fx, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return k[None].repeat(num_frames, 1, 1)


# ----------------------------------------------------------------------------- ray casting


def _camera_rays(intrinsics: Tensor, extrinsics: Tensor, h: int, w: int, sub: int) -> tuple[Tensor, Tensor]:
    """Ray origins ``[F,3]`` and world directions ``[F,P,3]`` (unit camera z, so hit t = depth),
    ``sub x sub`` rays per pixel placed at sub-pixel centres (``sub=1``: the pixel centre)."""
    offsets = (torch.arange(sub, dtype=torch.float32) + 0.5) / sub - 0.5
    grid = pixel_grid(h, w, "cpu")[:, :, None, None, :].repeat(1, 1, sub, sub, 1)
    grid[..., 0] += offsets[None, None, None, :]
    grid[..., 1] += offsets[None, None, :, None]
    cam = torch.einsum("fij,pj->fpi", torch.linalg.inv(intrinsics), grid.reshape(-1, 3))
    rot, trans = extrinsics[:, :, :3], extrinsics[:, :, 3]
    origins = -torch.einsum("fji,fj->fi", rot, trans)
    return origins, torch.einsum("fji,fpj->fpi", rot, cam)


def _cast(scene: Scene, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest hit of every ray: distance ``t [F,P]`` (inf = miss), shaded colour ``[F,P,3]``,
    and ``|cos|`` between ray and surface normal ``[F,P]``."""
    rot_t = scene.rot.transpose(-1, -2)  # world -> box
    o_l = torch.einsum("fbij,fbj->fbi", rot_t, origins[:, None] - scene.center)  # [F,B,3]
    d_l = torch.einsum("fbij,fpj->fbpi", rot_t, dirs)  # [F,B,P,3]
    d_safe = torch.where(d_l.abs() < 1e-9, torch.full_like(d_l, 1e-9), d_l)
    half = scene.half[:, :, None]
    t1 = (-half - o_l[:, :, None]) / d_safe
    t2 = (half - o_l[:, :, None]) / d_safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    inside = scene.inside[None, :, None]
    t_hit = torch.where(inside, t_far, t_near)
    ok = torch.where(inside, t_far > _NEAR, (t_near <= t_far) & (t_near > _NEAR))
    t_hit = torch.where(ok, t_hit, torch.full_like(t_hit, float("inf")))
    t, box = t_hit.min(dim=1)  # [F,P]

    d_hit = torch.gather(d_l, 1, box[:, None, :, None].expand(-1, 1, -1, 3))[:, 0]
    o_hit = torch.gather(o_l, 1, box[..., None].expand(*box.shape, 3))
    p_l = o_hit + torch.where(torch.isfinite(t), t, torch.zeros_like(t))[..., None] * d_hit
    half_hit = torch.gather(scene.half, 1, box[..., None].expand(*box.shape, 3))

    # face normal: the axis where the hit point touches the box surface
    axis = (p_l.abs() / half_hit).argmax(-1, keepdim=True)
    sign = torch.gather(p_l, -1, axis).sign()
    sign = torch.where(scene.inside[box][..., None], -sign, sign)  # room faces point inwards
    rot_hit = torch.gather(scene.rot, 1, box[..., None, None].expand(*box.shape, 3, 3))  # [F,P,3,3]
    normal = torch.gather(rot_hit, -1, axis[..., None, :].expand(*box.shape, 3, 1))[..., 0] * sign
    shade = 0.45 + 0.55 * (normal @ _LIGHT).clamp(min=0)
    cos = (normal * dirs).sum(-1).abs() / dirs.norm(dim=-1)

    # texture in box coordinates: checker cells plus a smooth wave, so every face has features
    cell, phase, wave = scene.cell[box], scene.phase[box], scene.wave[box]
    checker = torch.floor(p_l / cell[..., None] + phase).sum(-1).remainder(2)
    smooth = torch.sin(2 * math.pi * (p_l * wave).sum(-1) + 6.0 * phase[..., 0])
    albedo = scene.color[box] * (0.6 + 0.4 * checker + 0.12 * smooth)[..., None]
    color = (albedo * shade[..., None]).clamp(0, 1)
    miss = ~torch.isfinite(t)
    return t, color.masked_fill(miss[..., None], 0.0), cos.masked_fill(miss, 0.0)


# ----------------------------------------------------------------------------- corruptions


def _animate_object(scene: Scene, rng: np.random.Generator, kind: str, extrinsics: Tensor) -> Scene:
    """Deform or drift the central hero box (index 1, right after the room) over time:
    like a generated video's main subject, it is in view in every frame."""
    f = scene.center.shape[0]
    s = torch.linspace(0.0, 1.0, f)
    center, half = scene.center.clone(), scene.half.clone()
    b = 1
    if kind == "deform":  # widen in both horizontal axes and squash vertically, growing over time
        amount = rng.uniform(0.6, 0.9)
        half[:, b, 0] *= 1 + amount * s
        half[:, b, 2] *= 1 + amount * s
        half[:, b, 1] *= 1 - 0.4 * amount * s
        center[:, b, 1] = half[:, b, 1]  # stay on the floor
    else:  # drift: slide across the floor, roughly sideways in the first view so it shows
        right = extrinsics[0, 0, :3]
        a = math.atan2(float(right[2]), float(right[0])) + rng.uniform(-math.pi / 4, math.pi / 4)
        a += math.pi * (rng.uniform() < 0.5)
        dist = rng.uniform(0.6, 0.9)
        center[:, b, 0] += dist * s * math.cos(a)
        center[:, b, 2] += dist * s * math.sin(a)
    return Scene(center, scene.rot, half, scene.color, scene.cell, scene.phase, scene.wave, scene.inside)


def _warp(frames: Tensor, rng: np.random.Generator) -> Tensor:
    """Smooth non-rigid warp ``[F,3,H,W]``: a low-frequency displacement field whose
    amplitude grows over time and whose phase moves every frame."""
    f, _, h, w = frames.shape
    amp = rng.uniform(0.1, 0.16)  # in normalized [-1,1] coordinates: up to 5-8% of the width
    kx, ky = rng.uniform(0.6, 1.4, 2)
    growth = torch.linspace(0.3, 1.0, f)[:, None, None]
    phase = torch.tensor(rng.uniform(0, 2 * math.pi) + 1.7 * np.arange(f), dtype=torch.float32)[:, None, None]
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    dx = amp * growth * torch.sin(math.pi * (kx * ys + 0.5 * xs) + phase)
    dy = amp * growth * torch.sin(math.pi * (ky * xs - 0.5 * ys) + 1.3 * phase)
    grid = torch.stack([xs + dx, ys + dy], dim=-1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _flicker(frames: Tensor, rng: np.random.Generator) -> Tensor:
    f = frames.shape[0]  # every frame 10-25% brighter or darker than the scene's true colours
    gain = torch.tensor(1 + rng.choice([-1.0, 1.0], f) * rng.uniform(0.1, 0.25, f), dtype=torch.float32)
    return (frames * gain[:, None, None, None]).clamp(0, 1)


# ----------------------------------------------------------------------------- public API


def render_clip(
    seed: int,
    trajectory: str = "orbit",
    corruption: str | None = None,
    num_frames: int = 10,
    size: int | tuple[int, int] = 64,
    speed: float = 1.0,
    supersample: int = 2,
) -> SyntheticClip:
    """Render one clip of a random scene (``seed`` fixes scene, path and corruption).

    ``size`` is ``S`` or ``(H, W)``; ``speed = 0`` gives a static camera. The same seed
    gives the same scene and camera path at every size and for every corruption.
    """
    if corruption is not None and corruption not in CORRUPTIONS:
        raise InputError(f"corruption: expected None or one of {CORRUPTIONS}, got {corruption!r}")
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    scene = _make_scene(rng, num_frames)
    extrinsics = camera_path(rng, trajectory, num_frames, speed)
    intrinsics = pinhole(h, w, num_frames)
    corr_rng = np.random.default_rng([seed, 1 + (CORRUPTIONS.index(corruption) if corruption else 0)])

    origins, center_dirs = _camera_rays(intrinsics, extrinsics, h, w, 1)
    depth, _, cos = _cast(scene, origins, center_dirs)
    hit = torch.isfinite(depth)
    geometry = Geometry(
        depth=torch.where(hit, depth, torch.zeros_like(depth)).view(num_frames, h, w),
        conf=(hit * (0.05 + cos)).view(num_frames, h, w),  # grazing surfaces are less certain
        intrinsics=intrinsics,
        extrinsics=extrinsics,
    )

    shown = _animate_object(scene, corr_rng, corruption, extrinsics) if corruption in ("deform", "drift") else scene
    _, sub_dirs = _camera_rays(intrinsics, extrinsics, h, w, supersample)
    _, color, _ = _cast(shown, origins, sub_dirs)
    frames = color.view(num_frames, h, w, supersample * supersample, 3).mean(3).permute(0, 3, 1, 2)
    if corruption == "warp":
        frames = _warp(frames, corr_rng)
    elif corruption == "flicker":
        frames = _flicker(frames, corr_rng)
    frames_u8 = (frames.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return SyntheticClip(frames_u8, geometry, trajectory, corruption, seed)
