"""The supported base-model families: one module each, registered here.

A family module owns everything model-specific (pipeline classes, loading real weights, the tiny
preset, latent layout and encoding, text length, image conditioning, sampling constraints, the
Diffusion-DPO training math, LoRA targets and export); see ``actors.families.base.VideoFamily``.
Generation, encoding, training and validation ask the family and never compare names.

This module is torch-free: the config schema takes its family names from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal

from actors.errors import InputError

if TYPE_CHECKING:
    from actors.families.base import VideoFamily

# name -> "module:attribute" of its VideoFamily instance. A new family is one module and one line here.
_REGISTRY: dict[str, str] = {
    "cogvideox-t2v": "actors.families.cogvideox:COGVIDEOX_T2V",
    "cogvideox-i2v": "actors.families.cogvideox:COGVIDEOX_I2V",
    "cogvideox1.5-t2v": "actors.families.cogvideox:COGVIDEOX15_T2V",
    "wan2.2-ti2v": "actors.families.wan22_ti2v:WAN22_TI2V",
    "wan2.1-t2v": "actors.families.wan21_t2v:WAN21_T2V",
    "wan2.2-t2v-a14b": "actors.families.wan22_a14b:WAN22_A14B",
}

FAMILIES: tuple[str, ...] = tuple(_REGISTRY)
Family = Literal[FAMILIES]  # type: ignore[valid-type]  # the config schema's choices


def get_family(name: str) -> VideoFamily:
    """The family ``name`` (one of ``FAMILIES``), or an InputError naming ``model.family``."""
    if name not in _REGISTRY:
        raise InputError(f"model.family: unknown family {name!r} (expected one of {', '.join(FAMILIES)})")
    module, attribute = _REGISTRY[name].split(":")
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
