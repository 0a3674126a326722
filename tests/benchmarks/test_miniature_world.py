import numpy as np
import pytest
import torch

from actors.errors import InputError
from actors.geometry import depth_to_world, project
from benchmarks.miniature_lab.world import CORRUPTIONS, TRAJECTORIES, render_clip


@pytest.mark.parametrize("trajectory", TRAJECTORIES)
def test_clip_shapes_and_determinism(trajectory):
    a = render_clip(11, trajectory, num_frames=7, size=(48, 64))
    b = render_clip(11, trajectory, num_frames=7, size=(48, 64))
    assert a.frames.shape == (7, 48, 64, 3) and a.frames.dtype == np.uint8
    np.testing.assert_array_equal(a.frames, b.frames)
    g = a.geometry
    assert g.depth.shape == g.conf.shape == (7, 48, 64)
    assert g.intrinsics.shape == (7, 3, 3) and g.extrinsics.shape == (7, 3, 4)
    assert (g.depth > 0).all() and (g.conf > 0).all()  # the room encloses the camera: every ray hits
    rot = g.extrinsics[:, :, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(7, 3, 3), atol=1e-5, rtol=0)


def test_ground_truth_depth_is_exact_across_views():
    """A pixel of frame 0 lifted with its depth lands in frame 1 where frame 1's depth agrees."""
    g = render_clip(5, "orbit", num_frames=10, size=96).geometry.select([0, 1])
    world = depth_to_world(g)[0].reshape(-1, 3)
    u, v, z = project(world, g.intrinsics[1:], g.extrinsics[1:])
    ui, vi = torch.floor(u[0] + 0.5).long(), torch.floor(v[0] + 0.5).long()
    inside = (ui >= 0) & (ui < 96) & (vi >= 0) & (vi < 96)
    rel = (g.depth[1][vi[inside], ui[inside]] - z[0][inside]).abs() / z[0][inside]
    # rounding to the nearest pixel moves up to half a pixel along slanted surfaces
    assert rel.median() < 0.005 and (rel < 0.05).float().mean() > 0.95  # the rest: occlusion edges


def test_corruptions_change_frames_not_ground_truth():
    clean = render_clip(21, "orbit", num_frames=6, size=48)
    for corruption in CORRUPTIONS:
        bad = render_clip(21, "orbit", corruption=corruption, num_frames=6, size=48)
        torch.testing.assert_close(bad.geometry.depth, clean.geometry.depth)
        torch.testing.assert_close(bad.geometry.extrinsics, clean.geometry.extrinsics)
        diff = np.abs(bad.frames.astype(int) - clean.frames).mean(axis=(1, 2, 3))
        assert diff[-1] > 1.0, corruption  # visible by the last frame
        if corruption in ("deform", "drift"):
            assert diff[0] == 0  # they start from the clean scene and grow


def test_static_camera_and_bad_names():
    clip = render_clip(2, "dolly", num_frames=5, size=32, speed=0.0)
    assert torch.equal(clip.geometry.extrinsics[0], clip.geometry.extrinsics[-1])
    with pytest.raises(InputError, match="trajectory"):
        render_clip(0, "spiral")
    with pytest.raises(InputError, match="corruption"):
        render_clip(0, corruption="melt")
