"""trainer.official_objective: the family encodes and trains exactly as the official VideoGPA training
script of its model does (train/*/02_encode.py, 03_train.py), and differs from videogpa's objective in
those inputs and nothing else."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from actors.errors import InputError
from actors.families import get_family, objective_family
from actors.model_config import ModelConfig
from actors.models import build_denoiser, encode_training_inputs, tiny_sampling
from tests.support.tiny import tiny_image, tiny_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red cube in a room"


def _encode(family: str, official: bool, frames: int | None = None):
    s = tiny_sampling(family)
    video = np.random.RandomState(1).randint(0, 256, (1, frames or s.num_frames, s.height, s.width, 3), dtype=np.uint8)
    image = tiny_image(family, 2) if get_family(family).requires_image else None
    enc = encode_training_inputs(tiny_pipe(family), ModelConfig(family=family), video, PROMPT, image,
                                 official_objective=official)
    return video, image, enc


def _sample(vae, x: torch.Tensor, source: np.ndarray) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(np.ascontiguousarray(source).tobytes()))
    return vae.encode(x).latent_dist.sample(generator=g).float()


@pytest.mark.parametrize("family", ["cogvideox-t2v", "cogvideox-i2v", "cogvideox1.5-t2v"])
def test_cogvideox_official_encoding_is_the_scripts(family):
    fam, vae = get_family(family), tiny_pipe(family).vae
    video, image, official = _encode(family, True)
    _, _, ours = _encode(family, False)
    # 02_encode.py: frames / 255, latent_dist.sample(), scaling_factor only for CogVideoX1.5 (which 03_train.py
    # trims to an even frame count: 3 latent frames -> 2, where videogpa pads to 4)
    x = torch.from_numpy(video[0]).float().permute(3, 0, 1, 2)[None] / 255.0
    z = _sample(vae, x, video[0]) * (vae.config.scaling_factor if fam.version_1_5 else 1.0)
    z = z.permute(0, 2, 1, 3, 4)
    if fam.version_1_5:
        assert (z.shape[1], ours["latents"].shape[1]) == (3, 4)
        z = z[:, :2]
    torch.testing.assert_close(official["latents"], z, rtol=0, atol=0)
    assert official["latents"].shape[2:] == ours["latents"].shape[2:]
    torch.testing.assert_close(official["prompt_embeds"], ours["prompt_embeds"], rtol=0, atol=0)  # unchanged
    if fam.image_to_video:  # 03_train.py: the [0,1] image resized (nearest) to the video, sample x scaling_factor
        s = tiny_sampling(family)
        img = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255.0
        img = torch.nn.functional.interpolate(img, size=(s.height, s.width))
        zi = (_sample(vae, img.unsqueeze(2), image) * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(official["image_latents"][:, :1], zi, rtol=0, atol=0)
        assert not official["image_latents"][:, 1:].any()
        assert not torch.equal(official["image_latents"], ours["image_latents"])


@pytest.mark.parametrize("family", ["cogvideox-t2v", "cogvideox1.5-t2v"])
def test_cogvideox_official_training_drops_only_the_rotary_embeddings(family):
    ours, official = get_family(family), objective_family(family, True)
    denoiser, scheduler = build_denoiser(ModelConfig(family=family))
    _, _, enc = _encode(family, False)
    x0, noise = enc["latents"], torch.randn_like(enc["latents"])
    g = [torch.Generator().manual_seed(3) for _ in range(2)]
    t = ours.sample_timesteps(scheduler, 1, g[0], "cpu")
    assert torch.equal(t, official.sample_timesteps(scheduler, 1, g[1], "cpu"))
    for a, b in zip(ours.noisy_and_target(scheduler, x0, noise, t), official.noisy_and_target(scheduler, x0, noise, t)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    noisy = ours.noisy_and_target(scheduler, x0, noise, t)[0]
    with torch.no_grad():
        pred = official.predict(denoiser, noisy, t, enc["prompt_embeds"], None)
        script = denoiser(hidden_states=noisy, encoder_hidden_states=enc["prompt_embeds"], timestep=t,
                          return_dict=False)[0]  # 03_train.py's call: no image_rotary_emb
        torch.testing.assert_close(pred, script, rtol=0, atol=0)
        assert not torch.allclose(pred, ours.predict(denoiser, noisy, t, enc["prompt_embeds"], None))


def test_wan_ti2v_official_training_feeds_the_raw_t_and_keeps_frame_0():
    family = "wan2.2-ti2v"
    ours, official = get_family(family), objective_family(family, True)
    s = tiny_sampling(family)
    video = np.random.RandomState(1).randint(0, 256, (1, s.num_frames, s.height, s.width, 3), dtype=np.uint8)
    image = tiny_image(family, 2)
    model = ModelConfig(family=family)
    mine = encode_training_inputs(tiny_pipe(family), model, video, PROMPT, image, official_objective=False)
    theirs = encode_training_inputs(tiny_pipe(family), model, video, PROMPT, image, official_objective=True)
    for key in ("latents", "prompt_embeds", "image_latents"):  # a square image: crop and stretch agree
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=0)

    denoiser, scheduler = build_denoiser(model)
    t = official.sample_timesteps(scheduler, 64, torch.Generator().manual_seed(0), "cpu")
    assert t.dtype == torch.float32 and torch.equal(t, t.round()) and 1 <= t.min() and t.max() <= 999
    x0, cond = mine["latents"], mine["image_latents"]
    noise, t = torch.randn_like(x0), t[:1]
    noisy, target = official.noisy_and_target(scheduler, x0, noise, t, image_latents=cond)
    shift, u = float(scheduler.config.flow_shift), float(t) / 1000  # 03_train.py get_sigma_from_timestep
    sigma = shift * u / (1 + (shift - 1) * u)
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(target, noise - x0, rtol=0, atol=0)  # frame 0 too
    with torch.no_grad():
        pred = official.predict(denoiser, noisy, t, mine["prompt_embeds"], cond)
        hidden = torch.cat([cond, noisy[:, :, 1:]], dim=2)
        p = denoiser.config.patch_size
        tokens = torch.full((x0.shape[2] // p[0], x0.shape[3] // p[1], x0.shape[4] // p[2]), float(t))
        tokens[0] = 0  # create_ti2v_timestep_tensor: frame 0's tokens at 0, the rest the raw t
        script = denoiser(hidden_states=hidden, timestep=tokens.flatten()[None], encoder_hidden_states=
                          mine["prompt_embeds"], return_dict=False)[0]
        torch.testing.assert_close(pred, script, rtol=0, atol=0)
        assert pred[:, :, :1].abs().max() > 0  # frame 0 stays in the loss
    # videogpa noises at sigma = t / 1000 for the t it feeds; the script at the shifted sigma of the t it feeds
    assert not torch.allclose(ours.noisy_and_target(scheduler, x0, noise, t, image_latents=cond)[0], noisy)


@pytest.mark.parametrize("family", ["wan2.1-t2v", "wan2.2-t2v-a14b"])
def test_official_objective_is_refused_without_an_official_training_script(family):
    with pytest.raises(InputError, match=f"^trainer.official_objective: the official VideoGPA code has no training "
                                         f"script for {family}; set it false"):
        objective_family(family, True)
    assert objective_family(family, False) is get_family(family)
