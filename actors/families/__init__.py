"""The supported base-model families: one module each, registered by name in ``actors.family_names``.

A family module owns everything model-specific (pipeline classes, loading real weights, the tiny
preset, latent layout and encoding, text length, image conditioning, sampling constraints, the
Diffusion-DPO training math, LoRA targets and export); see ``actors.families.base.VideoFamily``.
Generation, encoding, training and validation ask the family and never compare names.

That registry is a torch-free leaf: the config schema takes its choices from there without importing a family.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from actors.errors import InputError
from actors.family_names import FAMILIES, REGISTRY, Family

if TYPE_CHECKING:
    from actors.families.base import VideoFamily

__all__ = ["FAMILIES", "Family", "get_family"]


def get_family(name: str) -> VideoFamily:
    """The family ``name`` (one of ``FAMILIES``), or an InputError naming ``model.family``."""
    if name not in REGISTRY:
        raise InputError(f"model.family: unknown family {name!r} (expected one of {', '.join(FAMILIES)})")
    module, attribute = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)
