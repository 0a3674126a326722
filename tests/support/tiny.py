"""The tiny presets as the unit tests use them: one shared read-only pipeline per family, and
conditioning images of its sampling size."""

from __future__ import annotations

import functools

import numpy as np

from actors.model_config import ModelConfig
from actors.models import build_pipeline, tiny_sampling


@functools.cache
def tiny_pipe(family: str):
    """One pipeline per family for read-only tests (a test that loads a LoRA builds its own)."""
    return build_pipeline(ModelConfig(family=family))


def tiny_image(family: str, seed: int = 0) -> np.ndarray:
    """A random uint8 [H,W,3] image of ``family``'s tiny sampling size."""
    s = tiny_sampling(family)
    return np.random.RandomState(seed).randint(0, 256, (s.height, s.width, 3), dtype=np.uint8)


def scheduler_settings(scheduler) -> dict:
    """A scheduler's config without diffusers' bookkeeping keys (``_class_name``, ... added on saving)."""
    return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
