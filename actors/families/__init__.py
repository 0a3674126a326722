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

__all__ = ["FAMILIES", "Family", "get_family", "objective_family"]


def get_family(name: str) -> VideoFamily:
    """The family ``name`` (one of ``FAMILIES``), or an InputError naming ``model.family``."""
    if name not in REGISTRY:
        raise InputError(f"model.family: unknown family {name!r} (expected one of {', '.join(FAMILIES)})")
    module, attribute = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def objective_family(name: str, official_objective: bool) -> VideoFamily:
    """The family ``name`` encoding and training as videogpa does, or (``official_objective``) exactly as the
    official VideoGPA training script of that model does (``VideoFamily.official_training``); an InputError
    for a family the official code has no training script for."""
    import dataclasses

    family = get_family(name)
    if not official_objective:
        return family
    if family.official_training is None:
        raise InputError(f"trainer.official_objective: the official VideoGPA code has no training script for "
                         f"{name}; set it false")
    return dataclasses.replace(family, official_objective=True)
