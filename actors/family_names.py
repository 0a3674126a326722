"""The names of the supported families and where each one's module lives: a leaf module.

The config schema (``actors.model_config``) takes its choices from here, and ``actors.families``
imports the family modules lazily by these paths, so neither imports the other.
"""

from __future__ import annotations

from typing import Literal

# name -> "module:attribute" of its VideoFamily instance. A new family is one module and one line here.
REGISTRY: dict[str, str] = {
    "cogvideox-t2v": "actors.families.cogvideox:COGVIDEOX_T2V",
    "cogvideox-i2v": "actors.families.cogvideox:COGVIDEOX_I2V",
    "cogvideox1.5-t2v": "actors.families.cogvideox:COGVIDEOX15_T2V",
    "wan2.2-ti2v": "actors.families.wan22_ti2v:WAN22_TI2V",
    "wan2.1-t2v": "actors.families.wan21_t2v:WAN21_T2V",
    "wan2.2-t2v-a14b": "actors.families.wan22_a14b:WAN22_A14B",
}

FAMILIES: tuple[str, ...] = tuple(REGISTRY)
Family = Literal[FAMILIES]  # type: ignore[valid-type]  # the config schema's choices
