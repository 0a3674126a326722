"""actors.models on the tiny offline presets: real diffusers pipelines, random weights, CPU."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from actors.errors import InputError
from actors.families import FAMILIES, get_family
from actors.families.base import lora_weight_name
from actors.model_config import ModelConfig, SamplingConfig
from actors.models import (
    build_denoiser,
    build_pipeline,
    encode_training_inputs,
    generate_videos,
    load_lora,
    tiny_sampling,
)
from tests.support.tiny import scheduler_settings, tiny_image, tiny_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red cube in a room, the camera orbits slowly"


def _image(family: str, seed: int = 0) -> np.ndarray | None:
    return tiny_image(family, seed) if get_family(family).requires_image else None


def _generate(pipe, family: str, seeds: list[int], image: np.ndarray | None = None) -> np.ndarray:
    if image is None:
        image = _image(family)
    return generate_videos(pipe, ModelConfig(family=family), tiny_sampling(family), PROMPT, seeds, image=image)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_shape_dtype_and_seed_determinism(family):
    pipe = tiny_pipe(family)
    s = tiny_sampling(family)
    videos = _generate(pipe, family, [0, 1])
    assert videos.shape == (2, s.num_frames, s.height, s.width, 3)
    assert videos.dtype == np.uint8
    again = _generate(pipe, family, [0, 1])
    np.testing.assert_array_equal(videos, again)
    assert not np.array_equal(videos[0], videos[1]), "different seeds must give different videos"
    # Each video depends on its own seed only, not on the rest of the batch.
    alone = _generate(pipe, family, [1])
    assert np.abs(alone[0].astype(int) - videos[1].astype(int)).max() <= 1


_DIGEST_CODE = """
import hashlib, sys
from actors.model_config import ModelConfig
from actors.models import build_denoiser
transformer, _ = build_denoiser(ModelConfig(family=sys.argv[1]))
digest = hashlib.sha256()
for key, value in sorted(transformer.state_dict().items()):
    digest.update(key.encode())
    digest.update(value.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def _digest(transformer: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(transformer.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_tiny_weights_are_identical_in_another_process():
    # A fresh interpreter (own str-hash salt, own RNG history) builds the very same weights.
    family = "wan2.2-ti2v"
    other = subprocess.run([sys.executable, "-c", _DIGEST_CODE, family], capture_output=True, text=True, check=True)
    transformer, _ = build_denoiser(ModelConfig(family=family))
    assert other.stdout.strip().splitlines()[-1] == _digest(transformer)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_builds_have_identical_weights(family):
    rng_before = torch.random.get_rng_state()
    a = build_pipeline(ModelConfig(family=family))
    assert torch.equal(rng_before, torch.random.get_rng_state()), "building must not consume the global RNG"
    b = tiny_pipe(family)
    for name in ("transformer", "vae", "text_encoder"):
        _assert_same_weights(getattr(a, name), getattr(b, name))
    denoiser, scheduler = build_denoiser(ModelConfig(family=family))
    for name, expert in get_family(family).lora_experts(denoiser).items():
        _assert_same_weights(expert, getattr(b, name))  # the trainer's base == the generator's base
    # Training keeps the checkpoint's scheduler; the pipeline samples with the family's sampler made from it.
    sampler = get_family(family).sampling_scheduler(scheduler)
    assert type(sampler) is type(b.scheduler)
    assert scheduler_settings(sampler) == scheduler_settings(b.scheduler)
    torch.testing.assert_close(scheduler.alphas_cumprod, b.scheduler.alphas_cumprod, rtol=0, atol=0)


def test_wan_text_and_image_modes():
    family = "wan2.2-ti2v"
    pipe = tiny_pipe(family)
    s = tiny_sampling(family)
    image = np.random.RandomState(3).randint(0, 256, (s.height, s.width, 3), dtype=np.uint8)
    with_image = _generate(pipe, family, [0], image=image)
    text_only = _generate(pipe, family, [0])
    assert with_image.shape == text_only.shape == (1, s.num_frames, s.height, s.width, 3)
    assert not np.array_equal(with_image, text_only)
    np.testing.assert_array_equal(with_image, _generate(pipe, family, [0], image=image))


@pytest.mark.parametrize(
    "family, image, message",
    [
        ("cogvideox-i2v", None, "image is required"),
        ("cogvideox-t2v", np.zeros((32, 32, 3), np.uint8), "text-to-video"),
        ("wan2.2-ti2v", np.zeros((64, 64), np.uint8), "uint8 [H,W,3]"),
    ],
)
def test_image_errors(family, image, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        generate_videos(tiny_pipe(family), ModelConfig(family=family), tiny_sampling(family), PROMPT, [0], image=image)


@pytest.mark.parametrize(
    "update, message",
    [({"num_frames": 8}, "num_frames"), ({"height": 40}, "height/width"), ({}, "seeds")],
)
def test_sampling_errors(update, message):
    family = "cogvideox-t2v"
    sampling = tiny_sampling(family).model_copy(update=update)
    seeds = [0] if update else []
    with pytest.raises(InputError, match=message):
        generate_videos(tiny_pipe(family), ModelConfig(family=family), sampling, PROMPT, seeds)


def test_configs_forbid_extra_keys_and_list_real_ids():
    with pytest.raises(ValueError):
        ModelConfig(family="cogvideox-t2v", pretrianed="x")
    with pytest.raises(ValueError):
        ModelConfig(family="sora")
    with pytest.raises(ValueError):
        SamplingConfig(steps=3)
    assert all(get_family(f).real_model_ids for f in FAMILIES)
    assert get_family("wan2.2-ti2v").real_model_ids == ("Wan-AI/Wan2.2-TI2V-5B-Diffusers",)
    assert get_family("wan2.1-t2v").real_model_ids == ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                                                       "Wan-AI/Wan2.1-T2V-14B-Diffusers")


_EXPECTED_LAYOUT = {
    # latents, image_latents for 9 frames (3 latent frames) of the tiny sampling size
    "cogvideox-t2v": ((2, 3, 4, 4, 4), None),
    "cogvideox-i2v": ((2, 3, 4, 4, 4), (1, 3, 4, 4, 4)),
    "cogvideox1.5-t2v": ((2, 4, 4, 4, 4), None),  # padded to a multiple of patch_size_t = 2
    "wan2.2-ti2v": ((2, 48, 3, 4, 4), (1, 48, 1, 4, 4)),
    "wan2.1-t2v": ((2, 16, 3, 4, 4), None),  # Wan2.1 VAE: 16 channels, 8x spatial
    "wan2.2-t2v-a14b": ((2, 16, 3, 4, 4), None),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_training_inputs_layout(family):
    pipe = tiny_pipe(family)
    videos = _generate(pipe, family, [0, 1])
    image = _image(family)
    if family == "wan2.2-ti2v":
        image = videos[0, 0]
    enc = encode_training_inputs(pipe, ModelConfig(family=family), videos, PROMPT, image)
    latents_shape, image_shape = _EXPECTED_LAYOUT[family]
    assert tuple(enc["latents"].shape) == latents_shape
    assert enc["latents"].dtype == torch.float32 and enc["latents"].device.type == "cpu"
    assert tuple(enc["prompt_embeds"].shape) == (1, 16, 32)
    if image_shape is None:
        assert enc["image_latents"] is None
    else:
        assert tuple(enc["image_latents"].shape) == image_shape
    if family == "cogvideox1.5-t2v":  # the padding frame repeats the first latent frame
        torch.testing.assert_close(enc["latents"][:, 0], enc["latents"][:, 1])
    if family == "cogvideox-i2v":  # first-frame latent, zero-padded over frames
        assert enc["image_latents"][:, 1:].abs().max() == 0 and enc["image_latents"][:, 0].abs().max() > 0
    if family == "wan2.2-ti2v":  # frame 0 holds the condition, as in the pipeline's own latents
        torch.testing.assert_close(enc["latents"][:, :, :1], enc["image_latents"].expand(2, -1, -1, -1, -1))
    # Deterministic: the same video encodes to the same latents.
    again = encode_training_inputs(pipe, ModelConfig(family=family), videos, PROMPT, image)
    assert torch.equal(enc["latents"], again["latents"])
    # Decoding the latents reproduces the video's layout (round trip through the pipeline's decode path).
    if family == "cogvideox-t2v":
        decoded = pipe.decode_latents(enc["latents"][:1])
        assert tuple(decoded.shape) == (1, 3, 9, 32, 32)


def test_encode_training_inputs_rejects_bad_videos():
    family = "cogvideox-t2v"
    with pytest.raises(InputError, match="videos"):
        encode_training_inputs(tiny_pipe(family), ModelConfig(family=family), np.zeros((9, 32, 32, 3)), PROMPT, None)


def _perturbed_lora_dir(family: str, tmp_path) -> str:
    """A diffusers-format LoRA as the trainer exports it: a peft adapter on each tiny expert, lora_B
    perturbed (peft initialises it to zero, which would be a no-op), one file per expert."""
    fam = get_family(family)
    denoiser, _ = build_denoiser(ModelConfig(family=family))
    out = str(tmp_path / family)
    gen = torch.Generator().manual_seed(0)
    for name, transformer in fam.lora_experts(denoiser).items():
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(fam.lora_target_modules)))
        with torch.no_grad():
            for param_name, param in transformer.named_parameters():
                if "lora_B" in param_name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        fam.pipeline_class.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                             weight_name=lora_weight_name(name))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_round_trip_changes_generation(family, tmp_path):
    lora_dir = _perturbed_lora_dir(family, tmp_path)
    base = _generate(tiny_pipe(family), family, [7])
    pipe = build_pipeline(ModelConfig(family=family))
    load_lora(pipe, ModelConfig(family=family), lora_dir, scale=1.0)
    adapted = _generate(pipe, family, [7])
    assert not np.array_equal(adapted, base)
    # Loading again replaces the adapter (online rounds); scale 0 switches it off.
    load_lora(pipe, ModelConfig(family=family), lora_dir, scale=0.0)
    np.testing.assert_array_equal(_generate(pipe, family, [7]), base)


def test_bfloat16_preset_keeps_fp32_modules_like_from_pretrained():
    family = "wan2.2-ti2v"
    model = ModelConfig(family=family, dtype="bfloat16")
    pipe = build_pipeline(model)
    params = dict(pipe.transformer.named_parameters())
    assert params["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert params["scale_shift_table"].dtype == torch.float32  # WanTransformer3DModel._keep_in_fp32_modules
    assert pipe.vae.dtype == torch.float32  # Wan decodes in float32
    videos = generate_videos(pipe, model, tiny_sampling(family), PROMPT, [0])
    assert videos.shape[0] == 1 and videos.dtype == np.uint8
    transformer, _ = build_denoiser(model)
    _assert_same_weights(transformer, pipe.transformer)
