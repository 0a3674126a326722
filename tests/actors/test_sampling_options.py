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
