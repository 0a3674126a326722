"""Sampling options of the official scripts: CogVideoX's dynamic CFG and a negative prompt."""

from __future__ import annotations

import numpy as np
import pytest

from actors.errors import InputError
from actors.model_config import ModelConfig
from actors.model_source import check_model
from actors.models import generate_videos, tiny_sampling
from tests.support.tiny import tiny_image, tiny_pipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red cube in a room, the camera orbits slowly"


def _generate(family: str, image=None, **options) -> np.ndarray:
    sampling = tiny_sampling(family).model_copy(update=options)
    return generate_videos(tiny_pipe(family), ModelConfig(family=family), sampling, PROMPT, [3], image=image)


def test_dynamic_cfg_reaches_the_cogvideox_pipeline():
    family = "cogvideox-t2v"  # the pipeline class of CogVideoX1.5 too, whose recipe turns it on
    plain = _generate(family)
    np.testing.assert_array_equal(_generate(family, use_dynamic_cfg=False), plain)
    assert not np.array_equal(_generate(family, use_dynamic_cfg=True), plain)


def test_dynamic_cfg_is_refused_where_the_pipeline_has_none():
    family = "wan2.1-t2v"
    sampling = tiny_sampling(family).model_copy(update={"use_dynamic_cfg": True})
    with pytest.raises(InputError, match="^sampling.use_dynamic_cfg: wan2.1-t2v pipelines have no dynamic CFG"):
        check_model(ModelConfig(family=family), sampling)  # on the driver, before any actor
    with pytest.raises(InputError, match="^sampling.use_dynamic_cfg"):
        _generate(family, use_dynamic_cfg=True)


@pytest.mark.parametrize("with_image", [False, True])
def test_negative_prompt_steers_guidance(with_image):
    family = "wan2.2-ti2v"  # text-to-video, and image-to-video through its own prompt encoding
    image = tiny_image(family) if with_image else None
    plain = _generate(family, image)
    np.testing.assert_array_equal(_generate(family, image, negative_prompt=""), plain)
    assert not np.array_equal(_generate(family, image, negative_prompt="static, blurry, deformed"), plain)


def test_low_noise_expert_guidance_reaches_the_a14b_pipeline():
    """sampling.guidance_scale_2 is diffusers' guidance of transformer_2 (the official A14B's 3.0 low-noise,
    guidance_scale 4.0 high-noise); unset, both experts use guidance_scale."""
    import torch

    family = "wan2.2-t2v-a14b"
    plain = _generate(family)
    np.testing.assert_array_equal(_generate(family, guidance_scale_2=tiny_sampling(family).guidance_scale), plain)
    official = _generate(family, guidance_scale_2=3.0)
    assert not np.array_equal(official, plain)
    s = tiny_sampling(family)
    direct = tiny_pipe(family)(prompt=[PROMPT], num_frames=s.num_frames, height=s.height, width=s.width,
                               num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                               guidance_scale_2=3.0, generator=[torch.Generator("cpu").manual_seed(3)],
                               output_type="np", max_sequence_length=16).frames
    np.testing.assert_array_equal(official[0], (np.clip(direct[0], 0, 1) * 255).round().astype(np.uint8))


def test_low_noise_expert_guidance_is_refused_with_one_expert():
    sampling = tiny_sampling("wan2.2-ti2v").model_copy(update={"guidance_scale_2": 3.0})
    with pytest.raises(InputError, match="^sampling.guidance_scale_2: wan2.2-ti2v has one denoising expert"):
        check_model(ModelConfig(family="wan2.2-ti2v"), sampling)
