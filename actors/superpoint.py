"""SuperPoint + LightGlue matches for the Epipolar metric, as the official benchmark computes them.

The official ``metrics/epipolar.py`` (``LightGlueMatcher``, the default of ``replicate_scorer.py``:
``SCORE_DESCRIPTOR_TYPE=lightglue``) matches consecutive frames with cvg/LightGlue's
``SuperPoint(max_num_keypoints=2048)`` and ``LightGlue(features="superpoint")``: each frame in grayscale
([0,1]), resized so its longer side is 1024 (bilinear, antialiased) for detection, keypoints mapped back to
the frame's pixels; a pair with fewer than 20 matches is unscorable.

kornia ships LightGlue (and its SuperPoint-descriptor weights, downloaded by URL) but not the SuperPoint
network, so it is written here: MagicLeap's published CNN (Detone et al. 2018), a shared VGG-style encoder
(8x downsampling), a keypoint head (65 channels: an 8x8 cell + "no keypoint") and a descriptor head (256-d,
bilinearly sampled at the keypoints), with cvg/LightGlue's extraction settings (NMS radius 4, detection
threshold 0.0005, 4-pixel border, top 2048). Its module names are the published weights'
(``superpoint_v1.pth``), which load as they are. The weights are MagicLeap's (non-commercial licence):
videogpa reads them from a local path, or downloads them where the cluster has internet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actors.errors import InputError

logger = logging.getLogger(__name__)

SUPERPOINT_URL = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/superpoint_v1.pth"
# metrics/epipolar.py: SuperPoint(max_num_keypoints=2048); cvg/LightGlue's Extractor resizes to 1024.
MAX_KEYPOINTS = 2048
DETECTION_SIZE = 1024
MIN_LIGHTGLUE_MATCHES = 20  # LightGlueMatcher(min_matches=20)
# Published weights: a path, "download" (SUPERPOINT_URL / kornia's LightGlue URL) or "random" (tests, offline).
RANDOM, DOWNLOAD = "random", "download"


class SuperPoint(nn.Module):
    """MagicLeap's SuperPoint with cvg/LightGlue's extraction: ``extract(gray)`` -> keypoints and descriptors."""

    def __init__(self, max_keypoints: int = MAX_KEYPOINTS, nms_radius: int = 4, detection_threshold: float = 5e-4,
                 remove_borders: int = 4, descriptor_dim: int = 256) -> None:
        super().__init__()
        self.max_keypoints, self.nms_radius = max_keypoints, nms_radius
        self.detection_threshold, self.remove_borders = detection_threshold, remove_borders
        widths = (1, 64, 64, 128, 128)

        def conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, kernel_size=k, stride=1, padding=k // 2)

        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):  # conv1a/1b ... conv4a/4b
            setattr(self, f"conv{i}a", conv(a, b))
            setattr(self, f"conv{i}b", conv(b, b))
        self.convPa, self.convPb = conv(128, 256), conv(256, 65, k=1)
        self.convDa, self.convDb = conv(128, 256), conv(256, descriptor_dim, k=1)

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for i in range(1, 5):
            x = F.relu(getattr(self, f"conv{i}b")(F.relu(getattr(self, f"conv{i}a")(x))))
            if i < 4:
                x = F.max_pool2d(x, 2, 2)
        return x

    def _nms(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep local maxima within ``nms_radius``, two rounds of suppression (SuperPoint's fast NMS)."""
        r = self.nms_radius

        def pool(x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, kernel_size=2 * r + 1, stride=1, padding=r)

        peaks = scores == pool(scores)
        for _ in range(2):
            suppressed = pool(peaks.float()) > 0
            rest = torch.where(suppressed, torch.zeros_like(scores), scores)
            peaks = peaks | ((rest == pool(rest)) & ~suppressed)
        return torch.where(peaks, scores, torch.zeros_like(scores))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One grayscale image ``[1,1,H,W]`` in [0,1] -> keypoints ``[N,2]`` (x, y pixels), scores ``[N]``,
        descriptors ``[N,D]`` (unit length)."""
        x = self._encode(image)
        logits = self.convPb(F.relu(self.convPa(x)))
        prob = logits.softmax(1)[:, :-1]  # drop the "no keypoint" bin
        _, _, h, w = prob.shape
        heat = prob.permute(0, 2, 3, 1).reshape(1, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, h * 8, w * 8)
        heat = self._nms(heat[:, None])[:, 0][0]
        b = self.remove_borders
        if b:
            heat[:b], heat[-b:], heat[:, :b], heat[:, -b:] = -1, -1, -1, -1
        ys, xs = torch.where(heat > self.detection_threshold)
        scores = heat[ys, xs]
        if self.max_keypoints and len(scores) > self.max_keypoints:
            scores, keep = torch.topk(scores, self.max_keypoints, dim=0, sorted=True)
            ys, xs = ys[keep], xs[keep]
        keypoints = torch.stack([xs, ys], dim=-1).float()

        desc = F.normalize(self.convDb(F.relu(self.convDa(x))), p=2, dim=1)  # [1,D,h,w]
        # Sample the 1/8-resolution descriptor map at the keypoints (cell centres at 8 k + 3.5).
        grid = (keypoints - 8 / 2 + 0.5) / keypoints.new_tensor([w * 8 - 8 / 2 - 0.5, h * 8 - 8 / 2 - 0.5])
        grid = (grid * 2 - 1).view(1, 1, -1, 2)
        sampled = F.grid_sample(desc, grid, mode="bilinear", align_corners=True).reshape(desc.shape[1], -1)
        return keypoints, scores, F.normalize(sampled, p=2, dim=0).t()

    @torch.no_grad()
    def extract(self, gray: torch.Tensor, size: int = DETECTION_SIZE) -> dict[str, torch.Tensor]:
        """cvg/LightGlue's ``Extractor.extract``: ``gray`` ``[1,1,H,W]`` resized (longer side ``size``), detected,
        keypoints mapped back to ``gray``'s pixels; LightGlue's input dict (batch of one)."""
        from kornia.geometry.transform import resize

        h, w = gray.shape[-2:]
        image = resize(gray, size, side="long", antialias=True)
        scale = gray.new_tensor([image.shape[-1] / w, image.shape[-2] / h])
        keypoints, scores, descriptors = self(image)
        keypoints = (keypoints + 0.5) / scale - 0.5
        return {"keypoints": keypoints[None], "keypoint_scores": scores[None], "descriptors": descriptors[None],
                "image_size": gray.new_tensor([[w, h]])}


def _state_dict(weights: str, url: str, what: str) -> dict[str, torch.Tensor]:
    if weights == DOWNLOAD:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    if not Path(weights).is_file():
        raise InputError(f"{what}: {weights} is not a file (a local weights file, {DOWNLOAD!r} or {RANDOM!r})")
    try:
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (any unreadable file is the same bad input)
        raise InputError(f"{what}: {weights} is not a readable torch weights file ({type(err).__name__})") from None


def build_superpoint(weights: str, device: torch.device | str = "cpu") -> SuperPoint:
    """SuperPoint with the published weights (a path, ``"download"``) or seeded random ones (``"random"``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SuperPoint()
    if weights != RANDOM:
        try:
            model.load_state_dict(_state_dict(weights, SUPERPOINT_URL, "scoring.superpoint_weights"))
        except RuntimeError as err:
            raise InputError(f"scoring.superpoint_weights: {weights} are not SuperPoint's published weights "
                             f"({str(err).splitlines()[0]})") from None
    return model.eval().to(device)


def build_lightglue(weights: str, device: torch.device | str = "cpu"):
    """kornia's LightGlue for SuperPoint descriptors: its published weights (kornia downloads them, or a local
    file) or seeded random ones (``"random"``)."""
    from kornia.feature import LightGlue

    if weights == DOWNLOAD:
        return LightGlue(features="superpoint").eval().to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LightGlue(features=None, **{**LightGlue.features["superpoint"], "weights": None})
    if weights != RANDOM:
        state = _state_dict(weights, "", "scoring.lightglue_weights")
        missing = model.load_state_dict(state, strict=False).missing_keys
        if any(k in dict(model.named_parameters()) for k in missing):
            raise InputError(f"scoring.lightglue_weights: {weights} are not LightGlue's SuperPoint weights "
                             f"(missing {missing[0]})")
    return model.eval().to(device)


class SuperPointLightGlue:
    """The official benchmark's matcher: ``matches(gray_a, gray_b)`` -> pixel matches or None."""

    name = "superpoint-lightglue"

    def __init__(self, superpoint_weights: str, lightglue_weights: str, device: torch.device | str = "cpu",
                 detection_size: int = DETECTION_SIZE, max_keypoints: int = MAX_KEYPOINTS,
                 filter_threshold: float | None = None) -> None:
        """The benchmark's settings by default; the smaller ``detection_size`` / ``max_keypoints`` and a
        ``filter_threshold`` of 0 let CPU tests with random weights reach the fit in seconds."""
        self.device = torch.device(device)
        self.superpoint = build_superpoint(superpoint_weights, self.device)
        self.superpoint.max_keypoints = max_keypoints
        self.lightglue = build_lightglue(lightglue_weights, self.device)
        if filter_threshold is not None:
            self.lightglue.conf.filter_threshold = filter_threshold
        self.detection_size = detection_size
        self.random_weights = RANDOM in (superpoint_weights, lightglue_weights)

    def features(self, gray: np.ndarray) -> dict[str, torch.Tensor]:
        """A uint8 grayscale frame (``cv2.COLOR_RGB2GRAY``, as the official code) -> its SuperPoint features."""
        x = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None].to(self.device)
        return self.superpoint.extract(x, self.detection_size)

    @torch.no_grad()
    def matches(self, feats0: dict, feats1: dict) -> tuple[np.ndarray, np.ndarray] | None:
        out = self.lightglue({"image0": feats0, "image1": feats1})
        idx = out["matches"][0]
        if len(idx) < MIN_LIGHTGLUE_MATCHES:
            return None
        x1 = feats0["keypoints"][0][idx[:, 0]].float().cpu().numpy()
        x2 = feats1["keypoints"][0][idx[:, 1]].float().cpu().numpy()
        return x1, x2


def gray_frames(frames: np.ndarray) -> list[np.ndarray]:
    """uint8 ``[T,H,W,3]`` RGB -> uint8 grayscale frames, as the official metric converts them."""
    return [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
