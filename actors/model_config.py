"""The model and sampling sections of a run's config, and the video sizes a model can sample.

Torch-free on purpose: the CLI validates a config (and refuses a bad one) before it imports any
model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from actors.errors import InputError
from actors.family_names import Family

# ``model.pretrained`` of the real-size rehearsal: every component (denoiser, text encoder, VAE) at its
# published size with random weights, no download (CogVideoX-5B and Wan2.2-TI2V-5B).
RANDOM_FULL_SIZE = "random-full-size"

class ModelConfig(BaseModel):
    """Which base model to run and how to load it."""

    model_config = ConfigDict(extra="forbid")

    family: Family
    # hub id, local diffusers directory, "tiny" (offline random-init preset), or "random-full-size"
    # (every component at its published size, random weights: a real-size rehearsal)
    pretrained: str = "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None


class SamplingConfig(BaseModel):
    """How candidates are sampled. Defaults are the paper's CogVideoX-5B settings."""

    model_config = ConfigDict(extra="forbid")

    num_frames: int = Field(49, ge=1)
    height: int = Field(480, gt=0)
    width: int = Field(720, gt=0)
    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(6.0, ge=0.0)  # <= 1 disables classifier-free guidance
    # Two-expert models (Wan2.2-T2V-A14B): the guidance of the low-noise expert (transformer_2; diffusers'
    # ``guidance_scale_2``), ``guidance_scale`` then being the high-noise expert's. None: guidance_scale for both.
    # The official A14B sampling (Wan's sample_guide_scale) is 3.0 low-noise / 4.0 high-noise.
    guidance_scale_2: float | None = Field(None, ge=0.0)
    # Strength of the LoRA when sampling from base + LoRA, as diffusers' ``set_adapters`` weight: the
    # LoRA's update is multiplied by lora_scale × lora_alpha / r. The official scripts: CogVideoX-5B(-I2V)
    # at full strength (1.0); CogVideoX1.5 sets the PEFT scaling itself to 0.2, which for its LoRAs
    # (r 64, alpha 128) is lora_scale 0.1; Wan2.2-TI2V multiplies the trained scaling by 0.2 (lora_scale 0.2).
    lora_scale: float = 1.0
    # CogVideoX's dynamic classifier-free guidance (the scale rises over the steps), as the official
    # CogVideoX1.5 sampling uses; Wan pipelines have none.
    use_dynamic_cfg: bool = False
    # What classifier-free guidance steers away from; "" is the plain unconditional prompt. The Wan recipes
    # set Wan's own default negative prompt, as Wan's (and the official VideoGPA Wan) sampling does.
    negative_prompt: str = ""
    fps: int = Field(8, gt=0)
    # Two-expert models (Wan2.2-T2V-A14B): keep the expert that is not denoising in host memory and move
    # it in at the boundary step (once per video), so both experts never sit on the GPU together.
    offload_idle_expert: bool = True


@dataclass(frozen=True)
class SamplingShape:
    """What a model can sample: ``temporal``k+1 frames, sides that are multiples of ``multiple`` (VAE
    compression × patch), only ``fixed`` (height, width) where the transformer learned its positional
    embeddings for one size (CogVideoX-5B-I2V), and ``dynamic_cfg`` where its pipeline has it (CogVideoX)."""

    temporal: int
    multiple: int
    fixed: tuple[int, int] | None = None
    dynamic_cfg: bool = False
    second_expert: bool = False  # a low-noise expert with its own guidance (guidance_scale_2)


def check_sampling(shape: SamplingShape, model: ModelConfig, sampling: SamplingConfig) -> None:
    """One InputError naming the sampling key that ``model`` cannot generate."""
    if (sampling.num_frames - 1) % shape.temporal != 0:
        raise InputError(f"sampling.num_frames: {model.family} needs {shape.temporal}k+1 frames "
                         f"(e.g. {shape.temporal * 2 + 1}), got {sampling.num_frames}")
    if sampling.height % shape.multiple or sampling.width % shape.multiple:
        raise InputError(f"sampling.height/width: {model.family} needs multiples of {shape.multiple}, "
                         f"got {sampling.height}x{sampling.width}")
    if sampling.use_dynamic_cfg and not shape.dynamic_cfg:
        raise InputError(f"sampling.use_dynamic_cfg: {model.family} pipelines have no dynamic CFG (CogVideoX only)")
    if sampling.guidance_scale_2 is not None and not shape.second_expert:
        raise InputError(f"sampling.guidance_scale_2: {model.family} has one denoising expert; drop it")
    if shape.fixed is not None and (sampling.height, sampling.width) != shape.fixed:
        raise InputError(f"sampling.height/width: {model.pretrained} only generates {shape.fixed[0]}x{shape.fixed[1]}, "
                         f"got {sampling.height}x{sampling.width}")
