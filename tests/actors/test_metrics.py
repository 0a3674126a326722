"""The evaluation metrics against their official definitions (github Hongyang-Du/VideoGPA, ``metrics/``):
hand-derived values and brute-force references on small inputs, and the scorer's official inputs."""

import math

import cv2
import numpy as np
import pytest
import torch

from actors.errors import InputError
from actors.geometry import Geometry, center_square_resize, depth_to_world, reproject_frames, resize_geometry
from actors.gfm import DA3Backend, OracleBackend, TinyBackend, VGGTBackend, upper_bound_resize
from actors.scoring import (
    ScoringConfig,
    VideoScorer,
    build_lpips,
    epipolar_score,
    fit_fundamental,
    mvcs,
    mvcs_scale_invariant,
    reprojection_score,
    sampson_distance,
    ssim,
    video_psnr,
)
from benchmarks.miniature_lab.world import render_clip


@pytest.fixture(scope="module")
def lpips_model():
    return build_lpips("random")[0]


def as_frames(clip) -> torch.Tensor:
    return torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255.0


def rotation(axis: list[float], angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    skew = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], dtype=torch.float64)
    return torch.linalg.matrix_exp(angle * skew)


# ----------------------------------------------------------------------------- PSNR, SSIM


def test_psnr_is_from_the_video_level_mse():
    assert video_psnr(0.01) == pytest.approx(20.0)
    assert video_psnr(torch.tensor(1e-4)) == pytest.approx(40.0)
    assert video_psnr(0.0) == 100.0  # the official cap for identical videos
    # two frames with MSE 0.01 and 0.0001: PSNR of their mean MSE 0.00505 (22.97 dB), not the mean PSNR (30 dB)
    assert video_psnr((0.01 + 0.0001) / 2) == pytest.approx(10 * math.log10(1 / 0.00505))


def test_reprojection_psnr_ssim_as_the_official_benchmark(lpips_model):
    clip = render_clip(12, "orbit", "drift", num_frames=5, size=40)
    frames = as_frames(clip)
    rendered = reproject_frames(frames, clip.geometry).double()
    per_frame_mse = ((rendered - frames.double()) ** 2).mean(dim=(1, 2, 3))
    assert per_frame_mse.std() > 0.1 * per_frame_mse.mean()  # frames differ: the two PSNR definitions differ too
    r = reprojection_score(frames, clip.geometry, lpips_model=lpips_model)
    mse = float(per_frame_mse.mean())
    assert r["mse"] == pytest.approx(mse, rel=1e-5)
    assert r["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert abs(r["psnr"] - float((10 * torch.log10(1 / per_frame_mse)).mean())) > 0.1
    import piq

    assert r["ssim"] == pytest.approx(float(piq.ssim(frames, rendered.float(), data_range=1.0)), rel=1e-6)


def test_ssim_hand_values_and_its_2x_downsampling():
    # constant images: sigma = 0, so SSIM = (2ab + c1) / (a^2 + b^2 + c1) with c1 = 0.01^2
    a, b = torch.full((2, 3, 64, 64), 0.5), torch.full((2, 3, 64, 64), 0.25)
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.25 + 1e-4) / (0.5**2 + 0.25**2 + 1e-4), rel=1e-5)
    assert ssim(a, a) == pytest.approx(1.0)
    # a one-pixel checkerboard vs its mean: at 512 px piq averages 2x2 blocks first (round(512 / 256) = 2),
    # which turns the checkerboard into the constant 0.5, so SSIM is exactly 1; at 256 px (no
    # downsampling) the same pattern is far from its mean
    for size, expected in ((512, 1.0), (256, None)):
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = ((yy + xx) % 2).float().expand(1, 3, size, size)
        value = ssim(checker, torch.full_like(checker, 0.5))
        assert value == pytest.approx(expected, abs=1e-6) if expected else value < 0.01
    # frames under 11 px (piq's window) still get a value
    assert ssim(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)) < 0.9


# ----------------------------------------------------------------------------- MVCS


def mvcs_brute_force(depth: np.ndarray, k: np.ndarray, ext: np.ndarray) -> float:
    """The official MVCS one pixel at a time in float64: back-project with depth i, move by
    E_j E_i^-1, project with K_j, bilinear-sample depth j (zeros outside), keep u in [0, W),
    v in [0, H) and projected depth > 0; exp(-mean over pairs of the mean squared error)."""
    t, h, w = depth.shape

    def sample(img: np.ndarray, u: float, v: float) -> float:
        x0, y0 = math.floor(u), math.floor(v)
        total = 0.0
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            x, y = x0 + dx, y0 + dy
            weight = (1 - abs(u - x)) * (1 - abs(v - y))
            if 0 <= x < w and 0 <= y < h:
                total += weight * img[y, x]
        return total

    homog = [np.vstack([e, [0, 0, 0, 1]]) for e in ext]
    pair_errors = []
    for i in range(t - 1):
        rel = homog[i + 1] @ np.linalg.inv(homog[i])
        errors = []
        for y in range(h):
            for x in range(w):
                p = depth[i, y, x] * np.linalg.inv(k[i]) @ np.array([x, y, 1.0])
                q = rel[:3, :3] @ p + rel[:3, 3]
                uvw = k[i + 1] @ q
                z = max(uvw[2], 1e-8)
                u, v = uvw[0] / z, uvw[1] / z
                if 0 <= u < w and 0 <= v < h and q[2] > 0:
                    errors.append((sample(depth[i + 1], u, v) - q[2]) ** 2)
        if errors:
            pair_errors.append(np.mean(errors))
    return math.exp(-np.mean(pair_errors)) if pair_errors else 0.0


def test_mvcs_hand_value():
    # identity cameras, frame 0 at depth 2 and frame 1 at depth 2.5 everywhere: every pixel of frame 0
    # lands on itself, error (2.5 - 2)^2 = 0.25 -> MVCS = exp(-0.25)
    k = torch.tensor([[5.0, 0, 3.5], [0, 5.0, 2.5], [0, 0, 1]]).expand(2, 3, 3)
    ext = torch.eye(3, 4).expand(2, 3, 4)
    depth = torch.stack([torch.full((6, 8), 2.0), torch.full((6, 8), 2.5)])
    g = Geometry(depth, torch.ones_like(depth), k, ext)
    assert mvcs(g) == pytest.approx(math.exp(-0.25), rel=1e-6)
    # raw depth units: the same scene in 10x smaller units has a 100x larger error
    g10 = Geometry(10 * depth, torch.ones_like(depth), k, ext)
    assert mvcs(g10) == pytest.approx(math.exp(-25.0), rel=1e-4)
    assert mvcs_scale_invariant(g10) == pytest.approx(mvcs_scale_invariant(g), rel=1e-6)
    # every point behind the next camera: nothing to compare -> 0, as the official code
    behind = ext.clone()
    behind[1, 2, 3] = -10.0
    assert mvcs(Geometry(depth, torch.ones_like(depth), k, behind)) == 0.0
    assert math.isnan(mvcs(Geometry(depth[:1], depth[:1], k[:1], ext[:1])))


def test_mvcs_matches_a_brute_force_loop_on_hand_made_geometry():
    g = torch.Generator().manual_seed(4)
    t, h, w = 3, 7, 9
    depth = 1.5 + torch.rand(t, h, w, generator=g, dtype=torch.float64)
    depth[1, 2:4, 3:6] = 0.6  # a near occluder: depth edges, where bilinear sampling blends
    k = torch.tensor([[6.0, 0, 4.0], [0, 6.5, 3.0], [0, 0, 1]], dtype=torch.float64).expand(t, 3, 3).clone()
    k[2, 0, 0] = 7.0
    ext = torch.zeros(t, 3, 4, dtype=torch.float64)
    for i, (axis, angle, shift) in enumerate(([[0, 1, 0], 0.0, [0, 0, 0]], [[0, 1, 0], 0.08, [0.15, -0.05, 0.1]],
                                              [[1, 1, 0], 0.12, [0.3, 0.02, -0.2]])):
        ext[i, :, :3] = rotation(axis, angle)
        ext[i, :, 3] = torch.tensor(shift)
    geometry = Geometry(depth.float(), torch.ones(t, h, w), k.float(), ext.float())
    reference = mvcs_brute_force(depth.numpy(), k.numpy(), ext.numpy())
    assert 0.05 < reference < 0.99  # a case where both the bilinear edges and the out-of-view pixels matter
    assert mvcs(geometry) == pytest.approx(reference, rel=1e-4)


def test_mvcs_official_vs_scale_invariant_on_ground_truth():
    g = render_clip(6, "orbit", num_frames=6, size=48).geometry
    noisy = Geometry(g.depth * (1 + 0.3 * torch.rand(g.depth.shape, generator=torch.Generator().manual_seed(0))),
                     g.conf, g.intrinsics, g.extrinsics)
    # ground truth is not 1 officially: occlusions and depth edges (bilinear sampling) cost error
    assert 0.7 < mvcs(g) < 0.95 and mvcs(noisy) < mvcs(g)
    assert mvcs_scale_invariant(g) > 0.98 and mvcs_scale_invariant(noisy) < mvcs_scale_invariant(g) - 0.01


# ----------------------------------------------------------------------------- Epipolar


def two_views(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact matches ``[N,2]`` of random 3D points in two cameras, and the true F."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], (n, 3))
    k = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
    rot = rotation([0.2, 1, 0.1], 0.15).numpy()
    trans = np.array([0.6, 0.1, 0.2])
    x1h = points @ k.T
    x2h = (points @ rot.T + trans) @ k.T
    skew = np.array([[0, -trans[2], trans[1]], [trans[2], 0, -trans[0]], [-trans[1], trans[0], 0]])
    fmat = np.linalg.inv(k).T @ skew @ rot @ np.linalg.inv(k)
    return (x1h[:, :2] / x1h[:, 2:]).astype(np.float32), (x2h[:, :2] / x2h[:, 2:]).astype(np.float32), fmat


def eight_point_reference(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Textbook normalized 8-point least squares (Hartley & Zisserman 11.2), float64, F[2,2] = 1."""

    def normalize(x):
        centre = x.mean(0)
        scale = math.sqrt(2) / np.linalg.norm(x - centre, axis=1).mean()
        return np.array([[scale, 0, -scale * centre[0]], [0, scale, -scale * centre[1]], [0, 0, 1]])

    x1, x2 = x1.astype(np.float64), x2.astype(np.float64)
    t1, t2 = normalize(x1), normalize(x2)
    p1 = np.c_[x1, np.ones(len(x1))] @ t1.T
    p2 = np.c_[x2, np.ones(len(x2))] @ t2.T
    a = np.einsum("ni,nj->nij", p2, p1).reshape(-1, 9)
    f = np.linalg.svd(a)[2][-1].reshape(3, 3)
    u, s, vt = np.linalg.svd(f)
    f = t2.T @ (u @ np.diag([s[0], s[1], 0]) @ vt) @ t1
    return f / f[2, 2]


def test_eight_point_fit_is_the_least_squares_one_and_exact_matches_score_zero():
    x1, x2, true_f = two_views(200, 0)
    fitted = fit_fundamental(x1, x2)
    np.testing.assert_allclose(fitted / fitted[2, 2], true_f / true_f[2, 2], rtol=2e-2, atol=1e-6)
    assert sampson_distance(fitted, x1, x2).mean() < 1e-2  # exact matches: ~0 (the official floor is 1e-4)
    # with noise the fit is the least-squares one: it equals the textbook normalized 8-point
    rng = np.random.default_rng(1)
    n1, n2 = x1 + rng.normal(0, 1.0, x1.shape).astype(np.float32), x2 + rng.normal(0, 1.0, x2.shape).astype(np.float32)
    fitted = fit_fundamental(n1, n2)
    np.testing.assert_allclose(fitted / fitted[2, 2], eight_point_reference(n1, n2), rtol=1e-3, atol=1e-6)


def test_sampson_distance_hand_value_and_noise_expectation():
    # F = [e]_x for e = (1, 0, 0): the epipolar constraint is y2 = y1 (rectified stereo)
    f = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    x1 = np.float32([[10, 20], [5, 7]])
    x2 = np.float32([[40, 23], [9, 7]])
    # x2^T F x1 = y1 - y2; |F x1|_12^2 = 1, |F^T x2|_12^2 = 1 -> d = |y1 - y2| / sqrt(2)
    np.testing.assert_allclose(sampson_distance(f, x1, x2), [3 / math.sqrt(2), 1e-4], rtol=1e-5)
    # isotropic noise sigma on both points: the Sampson distance is, to first order, |N(0, sigma^2)|,
    # whose mean is sigma * sqrt(2 / pi), whatever F and the points are
    x1, x2, true_f = two_views(4000, 2)
    rng = np.random.default_rng(3)
    sigma = 0.5
    n1, n2 = (x + rng.normal(0, sigma, x.shape).astype(np.float32) for x in (x1, x2))
    expected = sigma * math.sqrt(2 / math.pi)
    assert sampson_distance(true_f, n1, n2).mean() == pytest.approx(expected, rel=0.04)
    assert sampson_distance(fit_fundamental(n1, n2), n1, n2).mean() == pytest.approx(expected, rel=0.04)


def epipolar_reference(frames_u8: np.ndarray) -> float:
    """The official SIFT Epipolar re-derived step by step from ``metrics/epipolar.py``: per
    consecutive pair, SIFT on RGB2GRAY, brute-force 2-NN, ratio 0.75, >= 8 keypoints and >= 20
    matches, kornia's 8-point F over all matches, mean of sqrt(squared Sampson + 1e-8)."""
    from kornia.geometry.epipolar import find_fundamental, sampson_epipolar_distance

    sift = cv2.SIFT_create()
    errors = []
    for a, b in zip(frames_u8[:-1], frames_u8[1:]):
        kp1, d1 = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
        kp2, d2 = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
        if len(kp1) < 8 or len(kp2) < 8:
            continue
        pairs = cv2.BFMatcher().knnMatch(d1, d2, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
        if len(good) < 20:
            continue
        p1 = torch.tensor([kp1[m.queryIdx].pt for m in good], dtype=torch.float32)[None]
        p2 = torch.tensor([kp2[m.trainIdx].pt for m in good], dtype=torch.float32)[None]
        fm = find_fundamental(p1, p2)
        errors.append(float(torch.sqrt(sampson_epipolar_distance(p1, p2, fm, squared=True) + 1e-8).mean()))
    return float(np.mean(errors)) if errors else float("nan")


def test_epipolar_score_equals_the_official_recipe_on_rendered_clips():
    for seed, corruption in ((1, None), (2, "warp")):
        clip = render_clip(seed, ("orbit", "pan")[seed % 2], corruption, num_frames=4, size=96)
        reference = epipolar_reference(clip.frames)
        assert np.isfinite(reference)
        assert epipolar_score(clip.frames) == pytest.approx(reference, rel=1e-6)
        assert epipolar_score(as_frames(clip)) == pytest.approx(reference, rel=1e-6)  # float frames: same bytes
        # floats between uint8 levels are truncated, as the official conversion does (k + 0.6 -> k)
        between = torch.where(as_frames(clip) < 1, as_frames(clip) + 0.6 / 255, as_frames(clip))
        assert epipolar_score(between) == pytest.approx(reference, rel=1e-6)
    assert np.isnan(epipolar_score(np.zeros((3, 64, 64, 3), dtype=np.uint8)))  # textureless: unscorable


# ----------------------------------------------------------------------------- scorer inputs


def test_center_square_crop_is_the_official_one():
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 72, 3), dtype=np.uint8)
    out = center_square_resize(frames, 56)
    assert out.shape == (2, 56, 56, 3) and out.dtype == np.uint8
    for f, o in zip(frames, out):  # the central 48 x 48 (columns 12..59), OpenCV bilinear
        np.testing.assert_array_equal(o, cv2.resize(f[:, 12:60], (56, 56), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(center_square_resize(frames, 48), frames[:, :, 12:60])
    # the example: 720x480 keeps its central 480x480 (official) or the full width (518x350)
    video = torch.rand(2, 3, 480, 720)
    assert TinyBackend(resolution=518).prepare(video).shape == (2, 3, 518, 518)
    assert TinyBackend(resolution=518, input_layout="full_width").prepare(video).shape == (2, 3, 350, 518)


def test_da3_input_is_the_518_square_then_its_own_upper_bound_resize():
    square = np.random.default_rng(1).integers(0, 256, (2, 518, 518, 3), dtype=np.uint8)
    out = upper_bound_resize(square, 504)
    assert out.shape == (2, 504, 504, 3)
    np.testing.assert_array_equal(out[0], cv2.resize(square[0], (504, 504), interpolation=cv2.INTER_AREA))
    assert upper_bound_resize(np.zeros((1, 480, 720, 3), np.uint8), 504).shape == (1, 336, 504, 3)
    # 300x500 -> 302x504 -> the nearer multiples of 14: 308 (302 is 6 below it, 8 above 294) x 504
    assert upper_bound_resize(np.zeros((1, 300, 500, 3), np.uint8), 504).shape == (1, 308, 504, 3)
    np.testing.assert_array_equal(upper_bound_resize(out, 504), out)  # DA3 keeps a 504 square as it is


def test_each_backend_brings_its_own_input_size():
    defaults = (TinyBackend.DEFAULT_RESOLUTION, VGGTBackend.DEFAULT_RESOLUTION, DA3Backend.DEFAULT_RESOLUTION)
    assert defaults == (56, 518, 504)
    assert TinyBackend().prepare(torch.rand(2, 3, 32, 48)).shape == (2, 3, 56, 56)
    assert OracleBackend().prepare(torch.rand(2, 3, 32, 48)).shape == (2, 3, 32, 48)
    assert TinyBackend(resolution=112).prepare(torch.rand(2, 3, 32, 48)).shape == (2, 3, 112, 112)
    with pytest.raises(ValueError):
        ScoringConfig(resolution=500)  # not a patch-14 multiple


def test_scorer_says_when_its_gfm_weights_are_random(tmp_path, caplog):
    from safetensors.torch import save_file

    from actors.gfm import build_backend, build_tiny_gfm

    with caplog.at_level("WARNING", logger="actors.gfm"):
        assert VideoScorer(ScoringConfig(backend="tiny", lpips_backbone="random")).gfm_weights == "random"
    assert "GFM backend 'tiny' has random weights" in caplog.text
    caplog.clear()
    path = tmp_path / "tiny.safetensors"
    save_file(build_tiny_gfm().state_dict(), str(path))
    with caplog.at_level("WARNING", logger="actors.gfm"):
        assert not build_backend(ScoringConfig(backend="tiny", weights=str(path))).random_weights
        assert not build_backend(ScoringConfig(backend="oracle")).random_weights
    assert "random weights" not in caplog.text


def test_point_map_geometry_re_renders_from_its_points(lpips_model):
    clip = render_clip(3, "dolly", num_frames=4, size=32)
    frames, g = as_frames(clip), clip.geometry
    with_points = Geometry(g.depth, g.conf, g.intrinsics, g.extrinsics, depth_to_world(g))
    # a point map that agrees with depth and cameras re-renders identically ...
    assert torch.equal(reproject_frames(frames, with_points), reproject_frames(frames, g))
    # ... and one that does not is what gets re-rendered (depth, cameras unchanged)
    shifted = Geometry(g.depth, g.conf, g.intrinsics, g.extrinsics, depth_to_world(g) + torch.tensor([0.3, 0, 0]))
    a = reprojection_score(frames, g, lpips_model=lpips_model)
    b = reprojection_score(frames, shifted, lpips_model=lpips_model)
    assert b["mse"] > 2 * a["mse"]
    # resizing and frame selection carry the point map along
    assert with_points.select([0, 2]).points.shape == (2, 32, 32, 3)
    assert with_points.to("cpu", torch.float64).points.dtype == torch.float64
    assert resize_geometry(with_points, 16, 16).points.shape == (4, 16, 16, 3)
    with pytest.raises(InputError, match="points"):
        Geometry(g.depth, g.conf, g.intrinsics, g.extrinsics, torch.zeros(4, 32, 31, 3))
