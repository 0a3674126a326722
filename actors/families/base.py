"""What every family provides, and the helpers their modules share.

The model-agnostic layers call only these methods:

* ``actors.models`` builds pipelines (``build_tiny_pipeline`` / ``load_pipeline``), the training
  network (``tiny_denoiser`` / ``load_denoiser``), generates (``generation_call``) and encodes
  (``encode_video``, ``encode_image``, ``condition_latents``);
* ``actors.model_source`` checks sampling sizes from configs (``sampling_shape``);
* the trainer runs Diffusion-DPO: for a batch of latents ``x0`` (the layout ``encode_video`` returns)::

      t = family.sample_timesteps(scheduler, B, generator, device)
      noisy, target = family.noisy_and_target(scheduler, x0, noise, t, image_latents=image_latents)
      pred = family.predict(denoiser, noisy, t, prompt_embeds, image_latents)

  ``pred`` and ``target`` have the same shape; winner and loser share ``noise`` and ``t``. The
  LoRA goes on each of ``lora_experts(denoiser)`` and is exported one diffusers file per expert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from actors.errors import InputError
from actors.model_config import RANDOM_FULL_SIZE, ModelConfig, SamplingConfig, SamplingShape

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The diffusers LoRA file of the (first) transformer; a second expert's file is named after it.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# diffusers' attention of CogVideoX and Wan names the q, k, v, o projections alike.
ATTENTION_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_weight_name(expert: str) -> str:
    """The LoRA file of pipeline component ``expert`` ("transformer" or "transformer_2")."""
    if expert == "transformer":
        return LORA_WEIGHT_NAME
    return LORA_WEIGHT_NAME.replace(".safetensors", f"_{expert}.safetensors")


@dataclass(frozen=True)
class VideoFamily:
    """One base-model family. Subclasses set the class attributes and implement the methods that raise."""

    name: str
    real_model_ids: tuple[str, ...]  # hub ids of its checkpoints; the first is the default recipe's
    # The published transformer config of ``real_model_ids[0]`` (items), for the ``random-full-size``
    # rehearsal; None where the family has none.
    full_size_config: tuple[tuple[str, Any], ...] | None = None
    # Encode and train exactly as the official VideoGPA training script (``official_training``) does, where
    # it departs from the model's own inference (trainer.official_objective; ``objective_family``).
    official_objective: bool = False

    prediction: ClassVar[Literal["v_prediction", "flow_matching"]]
    lora_target_modules: ClassVar[tuple[str, ...]] = ATTENTION_LORA_TARGETS
    real_text_len: ClassVar[int]  # prompt tokens the real checkpoints were trained with
    tiny_text_len: ClassVar[int] = 16  # the tiny preset keeps prompts short for speed
    requires_image: ClassVar[bool] = False
    accepts_image: ClassVar[bool] = False
    latent_frames_dim: ClassVar[int]  # where the frames are in the latents ``encode_video`` returns
    experts: ClassVar[tuple[str, ...]] = ("transformer",)  # the pipeline's denoising transformers
    # The official VideoGPA training script of this model (Hongyang-Du/VideoGPA), None where there is none.
    official_training: ClassVar[str | None] = None

    # ---- what each stage's actors load ---------------------------------------------------------

    def stage_components(self) -> dict[str, tuple[str, ...]]:
        """The pipeline components each model-bearing stage loads, and nothing else: prompts are
        encoded once per run by the text stage, so generation holds no text encoder and pair encoding
        only the VAE. Scoring loads no component of the video model (GFM + LPIPS). A family whose
        stages need more (an image encoder for image conditioning) overrides this in its module."""
        return {
            "text": ("tokenizer", "text_encoder"),
            "generate": (*self.experts, "vae"),
            "encode": ("vae",),
            "train": self.experts,
        }

    # ---- building ------------------------------------------------------------------------------

    @property
    def pipeline_class(self) -> type:
        """The diffusers pipeline it generates with (text only), whose ``save_lora_weights`` exports."""
        raise NotImplementedError

    def text_len(self, model: ModelConfig) -> int:
        return self.tiny_text_len if model.pretrained == "tiny" else self.real_text_len

    def tiny_sampling(self) -> SamplingConfig:
        """Sampling settings that fit the tiny preset (CPU, about a second per call)."""
        raise NotImplementedError

    def build_tiny_pipeline(self, dtype: torch.dtype):
        """The pipeline with every component built from a config in code under fixed seeds."""
        raise NotImplementedError

    def tiny_scheduler(self):
        """The tiny preset's scheduler: the real checkpoints' scheduler (class and config)."""
        raise NotImplementedError

    def sampling_scheduler(self, scheduler):
        """The scheduler its pipeline samples with, given the checkpoint's: the checkpoint's own unless the
        family's module says otherwise (the official scripts' sampler). Tiny presets follow the same rule."""
        return scheduler

    def _tiny_transformer(self) -> torch.nn.Module:
        """The tiny preset's transformer, built under its own seed."""
        raise NotImplementedError

    def _tiny_vae(self) -> torch.nn.Module:
        """The tiny preset's VAE, built under its own seed."""
        raise NotImplementedError

    def tiny_denoiser(self, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
        """What training needs of the tiny preset: the denoiser, bit-identical to the pipeline's, and the scheduler."""
        transformer = self._tiny_transformer()
        cast_like_from_pretrained(transformer, dtype)
        return transformer, self.tiny_scheduler()


    def full_size_denoiser(self, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
        """The ``random-full-size`` preset: the real architecture, random weights, the tiny scheduler
        (the real checkpoints' scheduler config)."""
        if self.full_size_config is None:
            raise InputError(f"model.pretrained: {RANDOM_FULL_SIZE} has no published config for {self.name} here")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformer = self.full_size_transformer_class().from_config(dict(self.full_size_config)).eval()
        cast_like_from_pretrained(transformer, dtype)
        return transformer, self.tiny_scheduler()

    def full_size_transformer_class(self) -> type:
        raise NotImplementedError

    def tiny_component_configs(self) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The tiny preset's VAE and transformer configs (for ``sampling_shape``)."""
        return self._tiny_vae().config, self._tiny_transformer().config

    def load_pipeline(self, model: ModelConfig):
        """The pipeline from real weights (``model.pretrained``: hub id or diffusers directory)."""
        raise NotImplementedError

    def load_denoiser(self, model: ModelConfig) -> tuple[torch.nn.Module, Any]:
        """The denoiser (in ``model.dtype``) and scheduler from real weights."""
        raise NotImplementedError

    def sampling_shape(self, vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> SamplingShape:
        """The sizes it can sample, from the VAE's and transformer's configs as its pipeline derives them."""
        raise NotImplementedError

    # ---- generation ----------------------------------------------------------------------------

    def check_image(self, image: np.ndarray | None):
        """The conditioning image as a PIL image (or None), or an InputError."""
        from PIL import Image

        if image is None:
            if self.requires_image:
                raise InputError(f"{self.name}: an image is required (image-to-video model)")
            return None
        if not self.accepts_image:
            raise InputError(f"{self.name}: text-to-video model got an image; drop it or use an I2V family")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"image: expected uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image)

    def generation_call(self, pipe, kwargs: dict[str, Any], image, sampling: SamplingConfig):
        """The pipeline to call and its kwargs, given the text-to-video kwargs and a PIL image or None."""
        return pipe, kwargs

    # ---- encoding ------------------------------------------------------------------------------

    def encode_video(self, pipe, video: np.ndarray) -> torch.Tensor:
        """uint8 ``[F,H,W,3]`` -> training latents ``[1, ...]`` (float32) in the layout it denoises in."""
        raise NotImplementedError

    def encode_image(self, pipe, image, height: int, width: int, latent_frames: int) -> torch.Tensor:
        """A PIL image -> the image latents its training forward takes."""
        raise NotImplementedError

    def condition_latents(self, latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
        """The video latents as the pipeline denoises them given the image (unchanged by default)."""
        return latents

    # ---- training ------------------------------------------------------------------------------

    def lora_experts(self, denoiser: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Each of ``experts`` (pipeline component name -> module) inside the training ``denoiser``:
        each gets its own LoRA, exported to its own file."""
        return {"transformer": denoiser}

    def sample_timesteps(self, scheduler, batch_size: int, generator: torch.Generator | None,
                         device: str | torch.device) -> torch.Tensor:
        raise NotImplementedError

    def noisy_and_target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                         image_latents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                image_latents: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ---- LoRA at inference ---------------------------------------------------------------------

    def load_lora(self, pipe, lora_dir: str, adapter_name: str) -> None:
        """Load each expert's diffusers LoRA file of ``lora_dir`` into ``pipe`` as ``adapter_name``."""
        pipe.load_lora_weights(lora_dir, weight_name=LORA_WEIGHT_NAME, adapter_name=adapter_name)


# ---- helpers the family modules share ----------------------------------------------------------


def batch_like(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-prompt tensors ([1, ...]) are shared by every sample of the batch."""
    return x.expand(batch_size, *x.shape[1:]) if x.shape[0] == 1 and batch_size > 1 else x


def rand_on(generator: torch.Generator | None, fn, *args, **kwargs) -> torch.Tensor:
    # Draw on the generator's own device so any generator works; callers move the result.
    device = generator.device if generator is not None else "cpu"
    return fn(*args, generator=generator, device=device, **kwargs)


def video_to_vae_input(video: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 [F,H,W,3] -> [1,3,F,H,W] in [-1,1] (the VAE's input convention)."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device=device, dtype=torch.float32)
    return (x.permute(3, 0, 1, 2).unsqueeze(0) / 127.5 - 1.0).to(dtype)


def vae_mean(vae, x: torch.Tensor) -> torch.Tensor:
    # The posterior mean, not a sample: the same video must give the same latents in every process.
    return vae.encode(x).latent_dist.mode()


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast as ``from_pretrained(torch_dtype=...)`` does: modules listed in ``_keep_in_fp32_modules``
    (Wan's norms, time embedder, ...) are float32, so the tiny preset runs the real mixed precision.
    A parameter partitioned by ZeRO-3 (``actors.partitioned_weights``) has its shard cast."""
    from actors.partitioned_weights import is_partitioned, set_partition_dtype

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        target = torch.float32 if any(k in name.split(".") for k in keep) else dtype
        if is_partitioned(tensor):
            set_partition_dtype(tensor, target)
        else:
            tensor.data = tensor.data.to(target)


def load_transformer(cls: type, model: ModelConfig, subfolder: str) -> torch.nn.Module:
    """``cls.from_pretrained`` of one component in ``model.dtype``. Inside a ZeRO-3 partitioned build
    (the trainer's ``zero_stage: 3``) it is built from its config already partitioned and each rank
    reads only its share of every tensor (``actors.partitioned_weights``), with the same dtype rules."""
    from actors import partitioned_weights as pw

    dtype = DTYPES[model.dtype]
    if not pw.partitioned_build_active():
        return cls.from_pretrained(model.pretrained, subfolder=subfolder, torch_dtype=dtype, revision=model.revision)
    directory = pw.checkpoint_dir(model.pretrained, subfolder, model.revision)
    module = cls.from_config(cls.load_config(directory)).eval()
    cast_like_from_pretrained(module, dtype)
    pw.load_partitioned(module, directory)
    return module
