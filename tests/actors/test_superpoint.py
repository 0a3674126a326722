"""actors.superpoint: MagicLeap's SuperPoint as cvg/LightGlue extracts with it, and the official benchmark's
SuperPoint + LightGlue Epipolar path, offline (random weights: it runs, and an unmatched video is unscorable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.errors import InputError
from actors.scoring import ScoringConfig, VideoScorer, epipolar_score
from actors.superpoint import SuperPoint, SuperPointLightGlue, build_lightglue, build_superpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# superpoint_v1.pth (MagicLeap's release, the file cvg/LightGlue downloads): every tensor's name and shape.
_PUBLISHED = {
    **{f"conv{i}{ab}.{k}": s for i, (c_in, c) in enumerate([(1, 64), (64, 64), (64, 128), (128, 128)], start=1)
       for ab, cin in (("a", c_in), ("b", c)) for k, s in (("weight", (c, cin, 3, 3)), ("bias", (c,)))},
    "convPa.weight": (256, 128, 3, 3), "convPa.bias": (256,), "convPb.weight": (65, 256, 1, 1), "convPb.bias": (65,),
    "convDa.weight": (256, 128, 3, 3), "convDa.bias": (256,), "convDb.weight": (256, 256, 1, 1), "convDb.bias": (256,),
}


def test_the_network_has_the_published_weights_layout(tmp_path):
    assert {k: tuple(v.shape) for k, v in SuperPoint().state_dict().items()} == _PUBLISHED
    torch.save({k: torch.zeros(s) for k, s in _PUBLISHED.items()}, tmp_path / "superpoint_v1.pth")
    loaded = build_superpoint(str(tmp_path / "superpoint_v1.pth"))
    assert all(not v.any() for v in loaded.state_dict().values())


@torch.no_grad()
def test_keypoints_follow_the_cell_layout_borders_top_k_and_the_resize():
    """A keypoint head that prefers bin 8*3+5 of every 8x8 cell puts a keypoint at (x, y) = (5, 3) mod 8 in
    each cell (NMS radius 4 keeps them all) but within 4 pixels of the border, the top-k by score."""
    sp = SuperPoint(max_keypoints=1000)
    sp.convPb.weight.zero_()
    sp.convPb.bias.zero_()
    sp.convPb.bias[8 * 3 + 5] = 10.0
    image = torch.rand(1, 1, 48, 64, generator=torch.Generator().manual_seed(0))
    kpts, scores, desc = sp(image)
    expected = {(x, y) for x in range(5, 64, 8) for y in range(3, 48, 8) if 4 <= x < 60 and 4 <= y < 44}
    assert set(map(tuple, kpts.tolist())) == expected and len(kpts) == len(expected) == 35
    assert desc.shape == (35, 256)
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(35))
    sp.max_keypoints = 7
    top, top_scores, _ = sp(image)
    assert len(top) == 7 and torch.all(top_scores[:-1] >= top_scores[1:])
    # extract: detected at the longer side 128 (x2 here), keypoints in the input's pixels ((k + .5) / 2 - .5)
    sp.max_keypoints = 1000
    feats = sp.extract(image, size=128)
    big, _, _ = sp(torch.nn.functional.interpolate(image, size=(96, 128), mode="bilinear", antialias=True))
    assert feats["image_size"].tolist() == [[64, 48]]
    assert set(map(tuple, ((big + 0.5) / 2 - 0.5).tolist())) == set(map(tuple, feats["keypoints"][0].tolist()))


def test_the_benchmark_matcher_runs_offline_and_a_video_it_cannot_match_is_unscorable():
    video = np.random.RandomState(0).randint(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    matcher = SuperPointLightGlue("random", "random", detection_size=96, max_keypoints=64)
    assert matcher.random_weights and matcher.lightglue.conf.filter_threshold == 0.1  # the benchmark's
    assert np.isnan(epipolar_score(video, 0, matcher))  # random weights match nothing: unscorable
    # The scorer builds the benchmark's matcher (1024 px, 2048 keypoints) from its config.
    scorer = VideoScorer(ScoringConfig(epipolar_matcher="superpoint-lightglue", superpoint_weights="random",
                                       lightglue_weights="random"))
    m = scorer.epipolar_matcher
    assert isinstance(m, SuperPointLightGlue) and (m.detection_size, m.superpoint.max_keypoints) == (1024, 2048)
    assert VideoScorer(ScoringConfig()).epipolar_matcher is None  # SIFT


def test_bad_weights_are_one_line_naming_them(tmp_path):
    with pytest.raises(InputError, match=f"^scoring.superpoint_weights: {tmp_path}/nope is not a file"):
        build_superpoint(str(tmp_path / "nope"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(InputError, match="^scoring.lightglue_weights: .*junk.pth is not a readable torch weights"):
        build_lightglue(str(tmp_path / "junk.pth"))
    torch.save({"conv1a.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="^scoring.superpoint_weights: .*other.pth are not SuperPoint's published"):
        build_superpoint(str(tmp_path / "other.pth"))
