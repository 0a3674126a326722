"""Scoring: splatting, 3DCS, motion, epipolar, MVCS, backends and the VideoScorer (CPU, offline)."""

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from actors.errors import InputError
from actors.geometry import (
    confidence_mask,
    patch_transform,
    project,
    reproject_frames,
    sample_frame_indices,
    splat,
    transform_frames,
    transform_geometry,
    unproject,
)
from actors.gfm import build_tiny_gfm
from actors.scoring import (
    ScoringConfig,
    VideoScorer,
    build_lpips,
    epipolar_score,
    frame_change,
    motion_score,
    reprojection_score,
    ssim,
    video_to_tensor,
)
from benchmarks.miniature_lab.world import CORRUPTIONS, TRAJECTORIES, render_clip


@pytest.fixture(scope="module")
def lpips_model():
    return build_lpips("auto")[0]  # random backbone unless torchvision's VGG16 is cached


def as_frames(clip) -> torch.Tensor:
    return torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255.0


def auroc(positives, negatives) -> float:
    """P(score of a corrupted clip > score of a consistent clip), ties count half."""
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def eye_camera(num: int = 1, f: float = 10.0, c: float = 2.0):
    k = torch.tensor([[f, 0, c], [0, f, c], [0, 0, 1.0]]).expand(num, 3, 3).clone()
    ext = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1).expand(num, 3, 4).clone()
    return k, ext


# ----------------------------------------------------------------------------- splatting


def test_splat_z_buffer_nearest_point_wins_in_any_order():
    k, ext = eye_camera()
    near, far = [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]  # both on the ray through pixel (2, 2)
    red, blue = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    for pts, cols in [([near, far], [red, blue]), ([far, near], [blue, red])]:
        img, mask = splat(torch.tensor(pts), torch.tensor(cols), k, ext, 5, 5, return_mask=True)
        assert img.shape == (1, 3, 5, 5)
        torch.testing.assert_close(img[0, :, 2, 2], torch.tensor(red))
        assert mask.sum() == 1 and mask[0, 2, 2]
        assert img.sum() == 1.0  # every other pixel is black


def test_splat_all_frames_at_once_with_rounding_and_culling():
    k, ext = eye_camera(2)
    ext[1, 2, 3] = -2.0  # second camera 2 units further forward along +z: the far point is now in front
    points = torch.tensor([[0.0, 0.0, 1.0], [0.14, 0.0, 3.0], [0.0, 0.0, -1.0], [10.0, 0.0, 1.0]])
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    img = splat(points, colors, k, ext, 5, 5)
    # frame 0: point 2 projects to u = 2 + 10*0.14/3 = 2.47 -> pixel 2, behind point 0
    torch.testing.assert_close(img[0, :, 2, 2], colors[0])
    assert img[0].sum() == 1.0
    # frame 1: point 0 is behind the camera (culled), point 1 at z=1: u = 2 + 1.4 = 3.4 -> pixel 3
    torch.testing.assert_close(img[1, :, 2, 3], colors[1])
    assert img[1].sum() == 1.0  # the point behind the camera and the one out of view left no trace


def splat_per_frame(points, colors, intrinsics, extrinsics, h, w):
    """Reference: one frame at a time; sort points by (pixel, depth), the first per pixel wins."""
    out = []
    for k, e in zip(intrinsics, extrinsics):
        cam = points @ e[:, :3].T + e[:, 3]
        z = cam[:, 2]
        pix = cam @ k.T
        u = torch.floor(pix[:, 0] / z.clamp(min=1e-6) + 0.5).long()
        v = torch.floor(pix[:, 1] / z.clamp(min=1e-6) + 0.5).long()
        ok = ((z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)).numpy()
        flat = (v * w + u).numpy()[ok]
        order = np.lexsort((z.numpy()[ok], flat))
        first = np.unique(flat[order], return_index=True)[1]
        img = torch.zeros(h * w, 3)
        img[flat[order][first]] = colors[ok][order[first]]
        out.append(img.view(h, w, 3).permute(2, 0, 1))
    return torch.stack(out)


def test_vectorized_splat_matches_per_frame_reference():
    clip = render_clip(4, "orbit", num_frames=5, size=40)
    points, colors = unproject(clip.geometry, as_frames(clip))
    points = points + 1e-3 * torch.randn(points.shape, generator=torch.Generator().manual_seed(0))  # no exact ties
    g = clip.geometry
    fast = splat(points, colors, g.intrinsics, g.extrinsics, 40, 40)
    slow = splat_per_frame(points, colors, g.intrinsics, g.extrinsics, 40, 40)
    torch.testing.assert_close(fast, slow)


def splat_brute_force(points, colors, intrinsics, extrinsics, h, w):
    """One candidate at a time: per pixel keep the smallest (depth, point index).
    Uses ``project`` and torch rounding so only the z-buffer logic is under test."""
    u, v, z = project(points, intrinsics, extrinsics)
    ui, vi = torch.floor(u + 0.5).long().tolist(), torch.floor(v + 0.5).long().tolist()
    image, mask = torch.zeros(len(intrinsics), 3, h, w), torch.zeros(len(intrinsics), h, w, dtype=torch.bool)
    stats = {"ties": 0, "behind_in_view": 0, "off_image": 0}
    for t in range(len(intrinsics)):
        best = {}
        for i, d in enumerate(z[t].tolist()):
            x, y = ui[t][i], vi[t][i]
            inside = 0 <= x < w and 0 <= y < h
            if d <= 1e-6:
                stats["behind_in_view"] += inside
                continue
            if not inside:
                stats["off_image"] += 1
                continue
            if (x, y) in best and best[x, y][0] == d:
                stats["ties"] += 1
            best[x, y] = min(best.get((x, y), (math.inf, -1)), (d, i))
        for (x, y), (_, i) in best.items():
            image[t, :, y, x], mask[t, y, x] = colors[i], True
    return image, mask, stats


def test_splat_matches_brute_force_with_exact_ties_and_culling():
    g = torch.Generator().manual_seed(3)
    # coarse grid: many points share a depth and a pixel exactly; z in [-1, 3] puts some
    # behind or on the first camera's image plane, x, y in [-2, 2] some off the image
    points = (torch.randint(-4, 5, (400, 3), generator=g).float() * torch.tensor([0.5, 0.5, 0.5])
              + torch.tensor([0, 0, 1.0]))
    points = torch.cat([points, points[:50]])[torch.randperm(450, generator=g)]  # exact duplicates, either order
    colors = torch.rand(450, 3, generator=g)
    k = torch.tensor([[4.0, 0, 3.5], [0, 4.0, 2.5], [0, 0, 1]]).expand(3, 3, 3).clone()
    c, s = math.cos(0.3), math.sin(0.3)
    ext = torch.tensor([
        [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
        [[c, 0, s, 0.2], [0, 1, 0, -0.1], [-s, 0, c, 0.5]],
        [[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, -1.5]],
    ])  # fmt: skip
    img, mask = splat(points, colors, k, ext, 6, 8, return_mask=True)
    ref_img, ref_mask, stats = splat_brute_force(points, colors, k, ext, 6, 8)
    assert stats["ties"] > 20 and stats["behind_in_view"] > 20 and stats["off_image"] > 20, stats
    assert torch.equal(mask, ref_mask) and torch.equal(img, ref_img)
    assert img.dtype == colors.dtype and img[~mask[:, None].expand_as(img)].eq(0).all()


def test_splat_in_several_frame_groups_matches_frame_by_frame():
    # enough points that splat works through the frames in groups (of one frame here)
    g = torch.Generator().manual_seed(5)
    points = torch.rand((1 << 22) + 1, 3, generator=g) * torch.tensor([4.0, 3.0, 4.0]) - torch.tensor([2.0, 1.5, 0.5])
    colors = torch.rand(points.shape[0], 3, generator=g)
    k, ext = eye_camera(3, f=8.0, c=7.5)
    ext[1, 0, 3], ext[2, 2, 3] = 0.3, -0.7
    img, mask = splat(points, colors, k, ext, 12, 16, return_mask=True)
    for t in range(3):
        one, one_mask = splat(points, colors, k[t : t + 1], ext[t : t + 1], 12, 16, return_mask=True)
        assert torch.equal(img[t : t + 1], one) and torch.equal(mask[t : t + 1], one_mask)
    assert mask.all() and not torch.equal(img[0], img[1])


def test_consistent_clip_re_renders_itself():
    for trajectory in TRAJECTORIES:
        clip = render_clip(8, trajectory, num_frames=10, size=64)
        frames = as_frames(clip)
        rendered, covered = reproject_frames(frames, clip.geometry, return_mask=True)
        assert covered.float().mean() > 0.99  # each pixel at least gets its own point back
        err = ((rendered - frames) ** 2).mean(dim=1)[covered].mean()
        assert err < 0.006, (trajectory, float(err))


# ----------------------------------------------------------------------------- confidence, sampling, resizing


def test_confidence_filter_keeps_the_right_fraction():
    conf = torch.rand(4, 30, 40, generator=torch.Generator().manual_seed(1)) + 0.01
    n = conf.numel()
    assert confidence_mask(conf, 0.0).all()
    for th in (10.0, 50.0, 90.0):
        mask = confidence_mask(conf, th)
        assert mask.sum() == n - int(n * th / 100)
        assert conf[mask].min() >= conf[~mask].max()  # the kept ones are the most confident
    conf[0] = 0.0  # th = 0 keeps only conf > 1e-5
    assert confidence_mask(conf, 0.0).sum() == 3 * 30 * 40
    with pytest.raises(InputError, match="conf_threshold"):
        confidence_mask(conf, 100.0)


def test_frame_sampling():
    # linspace(0, 48, 10) = 0, 5.33, 10.67, 16, 21.33, 26.67, 32, 37.33, 42.67, 48: floored (official)
    assert sample_frame_indices(49, 10) == [0, 5, 10, 16, 21, 26, 32, 37, 42, 48]
    assert sample_frame_indices(49, 10, "round") == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48]
    # the example: 3-4 of 10 indices differ between the rules on common clip lengths
    for frames, differ in ((49, 3), (81, 4)):
        floor, rounded = sample_frame_indices(frames, 10), sample_frame_indices(frames, 10, "round")
        assert sum(a != b for a, b in zip(floor, rounded)) == differ, frames
    assert sample_frame_indices(6, 10) == list(range(6))
    with pytest.raises(InputError, match="floor|round"):
        sample_frame_indices(49, 10, "ceil")


def test_patch_resize_keeps_intrinsics_consistent():
    clip = render_clip(9, "orbit", num_frames=6, size=(60, 80))
    tf = patch_transform(60, 80, resolution=70)
    assert tf.out_hw == (56, 70) and tf.out_hw[0] % 14 == 0
    frames, geom = transform_frames(as_frames(clip), tf), transform_geometry(clip.geometry, tf)
    original = reprojection_score(as_frames(clip), clip.geometry, lpips_weight=0.0)["mse"]
    resized = reprojection_score(frames, geom, lpips_weight=0.0)["mse"]
    assert resized < 2 * original + 0.002  # a wrong principal point or focal would blow this up


# ----------------------------------------------------------------------------- metrics


def test_3dcs_definition_and_image_metrics(lpips_model):
    clip = render_clip(12, "dolly", num_frames=6, size=48)
    r1 = reprojection_score(as_frames(clip), clip.geometry, lpips_model=lpips_model)
    r2 = reprojection_score(as_frames(clip), clip.geometry, lpips_weight=2.0, lpips_model=lpips_model)
    assert set(r1) == {"3dcs", "mse", "lpips", "psnr", "ssim"}
    assert r1["3dcs"] == pytest.approx(r1["mse"] + r1["lpips"], rel=1e-5)
    assert r2["3dcs"] == pytest.approx(r1["mse"] + 2 * r1["lpips"], rel=1e-5)
    assert r1["psnr"] > 20 and 0.5 < r1["ssim"] <= 1.0
    x = torch.rand(2, 3, 32, 32)
    assert ssim(x, x) == pytest.approx(1.0)  # piq.ssim, mean over frames (tests/actors/test_metrics.py)
    assert ssim(x, torch.rand(2, 3, 32, 32)) < 0.2
    with pytest.raises(InputError, match="NaN"):
        reprojection_score(torch.full((6, 3, 48, 48), float("nan")), clip.geometry, lpips_model=lpips_model)


def test_3dcs_ranks_consistent_clips_first_smoke(lpips_model):
    """Fast version of the AUROC test below: few clips, every corruption."""

    def score(seed, corruption):
        clip = render_clip(seed, TRAJECTORIES[seed % 3], corruption, num_frames=8, size=48)
        return reprojection_score(as_frames(clip), clip.geometry, lpips_model=lpips_model)["3dcs"]

    clean = [score(s, None) for s in range(5)]
    for corruption in CORRUPTIONS:
        bad = [score(100 + s, corruption) for s in range(5)]
        assert auroc(bad, clean) >= 0.9, corruption


@pytest.mark.slow
def test_3dcs_auroc_over_many_clips(lpips_model):
    """Oracle geometry: consistent clips score lower than corrupted ones, AUROC >= 0.98 on
    100 consistent + 100 corrupted clips (200 per corruption), all three trajectories."""
    n = 100

    def score(seed, corruption):
        clip = render_clip(seed, TRAJECTORIES[seed % 3], corruption, num_frames=8, size=48)
        return reprojection_score(as_frames(clip), clip.geometry, lpips_model=lpips_model)["3dcs"]

    clean = [score(10_000 + s, None) for s in range(n)]
    for i, corruption in enumerate(CORRUPTIONS):
        bad = [score(20_000 + 1000 * i + s, corruption) for s in range(n)]
        assert auroc(bad, clean) >= 0.98, (corruption, auroc(bad, clean))


def test_epipolar_flags_non_rigid_warps():
    clean = [epipolar_score(as_frames(render_clip(s, TRAJECTORIES[s % 3], None, 10, 128))) for s in range(12)]
    warped = [epipolar_score(render_clip(50 + s, TRAJECTORIES[s % 3], "warp", 10, 128).frames) for s in range(12)]
    assert all(np.isfinite(clean)) and all(np.isfinite(warped))
    assert auroc(warped, clean) >= 0.9
    assert np.isnan(epipolar_score(np.zeros((4, 64, 64, 3), dtype=np.uint8)))  # textureless: unscorable


def test_motion_score_static_and_proportional_to_speed():
    static = render_clip(3, "dolly", num_frames=8, size=16, speed=0.0).geometry.extrinsics
    assert motion_score(static) == 0.0
    slow = motion_score(render_clip(3, "dolly", num_frames=8, size=16, speed=0.5).geometry.extrinsics)
    fast = motion_score(render_clip(3, "dolly", num_frames=8, size=16, speed=1.0).geometry.extrinsics)
    assert slow > 0 and fast == pytest.approx(2 * slow, rel=1e-4)
    # pure rotation: 0.1 * angle per step
    angle = 0.2
    rot = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    ext = torch.stack([torch.cat([torch.linalg.matrix_power(rot, i), torch.zeros(3, 1)], 1) for i in range(4)])
    assert motion_score(ext) == pytest.approx(0.1 * angle, rel=1e-5)
    assert motion_score(ext.numpy()) == pytest.approx(0.1 * angle, rel=1e-5)


def test_sharpness_falls_with_blur_and_frame_change_with_a_static_camera():
    from actors.scoring import sharpness

    clip = torch.from_numpy(render_clip(3, "orbit", num_frames=6, size=32).frames).permute(0, 3, 1, 2).float() / 255
    blurred = torch.nn.functional.avg_pool2d(clip, 3, stride=1, padding=1, count_include_pad=False)
    assert sharpness(blurred) < 0.6 * sharpness(clip)
    flat = torch.full((2, 3, 8, 8), 0.5)
    assert sharpness(flat) == 0.0
    # a vertical step edge of height 1 in luma: |laplacian| 1 on the two columns beside it
    edge = torch.zeros(1, 3, 6, 6)
    edge[..., 3:] = 1.0
    assert sharpness(edge) == pytest.approx(2 * 4 / 16, rel=1e-5)  # valid conv: 4x4 outputs, 8 of them 1

    static = render_clip(3, "orbit", num_frames=6, size=32, speed=0.0).frames
    assert frame_change(torch.from_numpy(static).permute(0, 3, 1, 2).float() / 255) == 0.0
    assert frame_change(clip) > 0.01
    assert frame_change(clip[:1]) == 0.0
    with pytest.raises(InputError, match="frames"):
        sharpness(clip[:, :1])


def test_scores_stable_under_frame_resolution(lpips_model):
    """The same scenes rendered at two sizes keep their 3DCS ordering and similar MSE."""
    small, large = [], []
    for s, corruption in enumerate([None, None, "drift", "warp"]):
        for size, out in ((48, small), (72, large)):
            clip = render_clip(300 + s, "orbit", corruption, 8, size)
            out.append(reprojection_score(as_frames(clip), clip.geometry, lpips_model=lpips_model))
    assert max(r["3dcs"] for r in large[:2]) < min(r["3dcs"] for r in large[2:])
    assert max(r["3dcs"] for r in small[:2]) < min(r["3dcs"] for r in small[2:])
    for a, b in zip(small, large):
        assert a["mse"] == pytest.approx(b["mse"], rel=0.5, abs=0.002)


# ----------------------------------------------------------------------------- backends and scorer


def test_tiny_backend_deterministic_and_loads_safetensors(tmp_path):
    a, b = build_tiny_gfm(), build_tiny_gfm()
    assert 100_000 < sum(p.numel() for p in a.parameters()) < 1_000_000
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    state = {k: v + 0.01 for k, v in a.state_dict().items()}
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    loaded = build_tiny_gfm(str(path))
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, state[name]), name
    frames = torch.rand(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    ga, gl = a(frames), loaded(frames)
    assert not torch.allclose(ga.depth, gl.depth)
    assert (ga.depth > 0).all() and (ga.conf >= 1).all()
    torch.testing.assert_close(ga.extrinsics[0], torch.eye(3, 4))  # first camera = world
    with pytest.raises(InputError, match="scoring.weights"):
        build_tiny_gfm(str(tmp_path / "missing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="scoring.weights"):
        build_tiny_gfm(str(tmp_path / "bad.safetensors"))


def test_video_scorer_tiny_and_oracle():
    clip = render_clip(7, "orbit", num_frames=13, size=64)
    tiny = VideoScorer(ScoringConfig(backend="tiny", resolution=56, num_frames=6))
    assert tiny.lpips_backbone_used in ("pretrained", "random")
    out = tiny.score(clip.frames)
    keys = {"score", "3dcs", "mse", "lpips", "psnr", "ssim", "mvcs", "mvcs_si", "motion", "epipolar", "sharpness",
            "frame_change"}
    assert set(out) == keys and all(isinstance(v, float) for v in out.values())
    assert out["score"] == out["3dcs"] and math.isnan(out["epipolar"])
    again = tiny.score(clip.frames)
    assert all(again[k] == out[k] for k in keys - {"epipolar"})  # deterministic
    # the tiny backend works at its own resolution: a larger copy of the video scores about the same
    big = np.repeat(np.repeat(clip.frames, 2, axis=1), 2, axis=2)
    assert tiny.score(big)["3dcs"] == pytest.approx(out["3dcs"], rel=0.15)

    oracle = VideoScorer(ScoringConfig(backend="oracle", scorer="epipolar", num_frames=6), device="cpu")
    res = oracle.score(clip.frames, geometry=clip.geometry)
    assert res["score"] == res["epipolar"] and np.isfinite(res["epipolar"])
    # official MVCS is below 1 even for ground truth (occlusions, bilinear sampling across depth edges)
    assert 0.5 < res["mvcs"] < 1 and res["mvcs_si"] > 0.95 and res["motion"] > 0 and res["3dcs"] < out["3dcs"]
    with pytest.raises(InputError, match="oracle"):
        oracle.score(clip.frames)
    with pytest.raises(InputError, match="NaN"):
        tiny.score(np.full((4, 32, 32, 3), np.nan, dtype=np.float32))


def test_config_and_lpips_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError):
        ScoringConfig(backend="tiny", bogus=1)
    with pytest.raises(ValueError):
        ScoringConfig(resolution=500)  # not a patch-14 multiple
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InputError, match="vgg16-397923af.pth"):
        build_lpips("pretrained")
    model, used = build_lpips("auto")
    assert used == "random"
    other, _ = build_lpips("random")
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)  # the random backbone is the same in every process


def test_optional_backends_explain_how_to_install():
    for name, module in (("vggt", "vggt"), ("da3", "depth_anything_3")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(InputError, match=f"GFM backend '{name}' needs the"):
                VideoScorer(ScoringConfig(backend=name))


def test_vggt_adapter_with_tiny_random_model():
    pytest.importorskip("vggt")
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.models.aggregator import Aggregator
    from vggt.models.vggt import VGGT

    from actors.gfm import VGGTBackend

    # VGGT's constructor always builds the 1.2B aggregator: assemble the same modules at toy width
    torch.manual_seed(0)
    model = VGGT.__new__(VGGT)
    torch.nn.Module.__init__(model)
    model.aggregator = Aggregator(img_size=56, patch_size=14, embed_dim=32, depth=24, num_heads=2, patch_embed="conv")
    model.camera_head = CameraHead(dim_in=64, trunk_depth=1, num_heads=2)
    heads = dict(conf_activation="expp1", features=16, out_channels=[16, 16, 16, 16])
    model.depth_head = DPTHead(dim_in=64, output_dim=2, activation="exp", **heads)
    model.point_head = DPTHead(dim_in=64, output_dim=4, activation="inv_log", **heads)
    model.track_head = None
    backend = VGGTBackend(resolution=56, model=model)
    frames = backend.prepare(torch.rand(3, 3, 40, 60))
    assert frames.shape == (3, 3, 56, 56)  # the official centred square
    geometry = backend.predict(frames)
    assert geometry.depth.shape == (3, 56, 56) and geometry.extrinsics.shape == (3, 3, 4)
    assert geometry.points.shape == (3, 56, 56, 3)  # the point map is what gets re-rendered (official)
    depth_only = VGGTBackend(resolution=56, model=model, points="depth").predict(frames)
    assert depth_only.points is None and torch.equal(depth_only.depth, geometry.depth)
    model.point_head = None
    with pytest.raises(InputError, match="point-map head"):
        backend.predict(frames)


def test_da3_adapter_with_random_model():
    pytest.importorskip("depth_anything_3")
    from depth_anything_3.api import DepthAnything3

    from actors.gfm import DA3Backend

    torch.manual_seed(0)
    backend = DA3Backend(resolution=56, model=DepthAnything3(model_name="da3-small"))
    frames = backend.prepare(torch.rand(3, 3, 40, 60))
    assert frames.shape == (3, 3, 56, 56)  # the 518 square, then DA3's own resize to its process_res
    geometry = backend.predict(frames)
    assert geometry.hw == (56, 56) and geometry.extrinsics.shape == (3, 3, 4)


def test_epipolar_upscales_tiny_frames_so_sift_can_score_them():
    from actors.scoring import epipolar_score

    clean = [render_clip(s, ("orbit", "dolly", "pan")[s % 3], None, 9, 32).frames for s in range(6)]
    native = [epipolar_score(f) for f in clean]
    upscaled = [epipolar_score(f, min_size=128) for f in clean]
    assert all(np.isfinite(upscaled)) and not all(np.isfinite(native))  # 32 px: too few SIFT matches
    assert np.array_equal([epipolar_score(f, min_size=32) for f in clean], native, equal_nan=True)  # big enough
    warped = [epipolar_score(render_clip(s, "pan", "warp", 9, 32).frames, min_size=128) for s in range(6)]
    assert np.nanmean(warped) > np.mean(upscaled)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_video_to_tensor_takes_read_only_frames_without_a_warning(dtype, monkeypatch):
    """Ray hands actors read-only arrays: converting them must not trip torch's "not writable" warning."""
    frames = np.random.default_rng(0).integers(0, 255, (2, 4, 5, 3)).astype(dtype)
    if dtype == np.float32:
        frames /= 255.0
    frames.flags.writeable = False
    # torch warns once per process, so an earlier test may have used it up: also see what torch is given
    given, from_numpy = [], torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: given.append(a.flags.writeable) or from_numpy(a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = video_to_tensor(frames)
    assert given == [True]
    expected = frames.astype(np.float32) / (255.0 if dtype == np.uint8 else 1.0)
    assert out.shape == (2, 3, 4, 5) and torch.equal(out, torch.from_numpy(expected.copy()).permute(0, 3, 1, 2))
