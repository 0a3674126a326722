"""Building, generating and encoding with any supported family, through its real diffusers pipeline.

``pretrained`` is a Hugging Face id, a local diffusers directory, ``s3://`` of one (fetched once per
node: ``actors.model_source.local_model``), or ``"tiny"``: an offline preset
built from configs in code with random weights under fixed seeds, so every process builds
bit-identical weights and the whole code path of a real model runs on CPU in seconds. What differs
between models (classes, dtypes, latent layouts, conditioning) is asked of the family
(``actors.families``); nothing here compares family names.
"""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actors.errors import InputError
from actors.families import get_family, objective_family
from actors.families.base import DTYPES, lora_weight_name
from actors.families.tiny import TINY_SEED
from actors.lora_formats import check_lora, diffusers_lora_dir, lora_module_names
from actors.model_config import RANDOM_FULL_SIZE, ModelConfig, SamplingConfig, check_sampling
from actors.model_source import local_model
from actors.partitioned_weights import partitioned_build

logger = logging.getLogger(__name__)


def tiny_sampling(family: str) -> SamplingConfig:
    """Sampling settings that fit the tiny preset of ``family`` (CPU, about a second per call)."""
    return get_family(family).tiny_sampling()


def build_pipeline(model: ModelConfig, device: str | torch.device = "cpu", stage: str | None = None,
                   offload_idle_expert: bool = False):
    """The family's diffusers pipeline on ``device``, in ``model.dtype`` where the family runs it so.
    ``stage``: a key of the family's ``stage_components()`` ("text", "generate", "encode"); the
    pipeline then holds only that stage's components, the others are None (None: every component),
    and pair encoding's VAE no decoder (``vae_decodes``). ``offload_idle_expert``: a two-expert model
    keeps the expert that is not denoising in host memory (``IdleExpertOffload``)."""
    model = local_model(model)  # an s3:// model: its copy on this node
    family = get_family(model.family)
    components = family.pipeline_components() if stage is None else family.stage_components()[stage]
    if model.pretrained == "tiny":
        logger.info("building tiny %s %s (random init, seed %d, dtype %s)", model.family, ", ".join(components),
                    TINY_SEED, model.dtype)
    elif model.pretrained == RANDOM_FULL_SIZE:
        logger.info("building %s %s at the published size, random weights (dtype %s)", model.family,
                    ", ".join(components), model.dtype)
    else:
        logger.info("loading %s %s from %s (revision %s, dtype %s)", model.family, ", ".join(components),
                    model.pretrained, model.revision, model.dtype)
    pipe = family.build_stage_pipeline(model, components, vae_decoder=family.vae_decodes(stage))
    experts = [e for e in family.experts if getattr(pipe, e, None) is not None]
    if offload_idle_expert and len(experts) > 1:
        pipe.idle_expert_offload = IdleExpertOffload(pipe, experts, device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class IdleExpertOffload:
    """Two-expert pipelines (Wan2.2-T2V-A14B): only the expert that is denoising sits on the device,
    the other waits in host memory. The pipeline calls the high-noise expert for the first steps and
    the low-noise one after the boundary, so a forward pre-hook swaps them once at the boundary and
    once back when the next video starts. ``moves`` counts the swaps."""

    def __init__(self, pipe, experts: list[str], device: str | torch.device, host: str | torch.device = "cpu"):
        self.device, self.host = torch.device(device), torch.device(host)
        self.experts = {name: getattr(pipe, name) for name in experts}
        self.moves = 0
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name not in self.experts:
                component.to(self.device)
        self.resident = experts[0]
        for name, module in self.experts.items():
            module.to(self.device if name == self.resident else self.host)
            module.register_forward_pre_hook(functools.partial(self._before_forward, name))

    def _before_forward(self, name: str, module: torch.nn.Module, args: tuple) -> None:
        if name == self.resident:
            return
        self.experts[self.resident].to(self.host)  # out first: both never sit on the device together
        module.to(self.device)
        self.resident = name
        self.moves += 1
        logger.debug("expert offload: %s moved in (%d moves)", name, self.moves)


def build_denoiser(model: ModelConfig, device: str | torch.device = "cpu", zero3: dict[str, Any] | None = None):
    """Only what training needs: the denoising network (in ``model.dtype``) and the scheduler.
    For ``"tiny"`` its weights are bit-identical to those ``build_pipeline`` builds; ``"random-full-size"``
    is the family's published architecture with random weights. ``zero3``: the DeepSpeed config of
    a ZeRO-3 run, to build the network already partitioned over its ranks (on their device)."""
    model = local_model(model)  # an s3:// model: its copy on this node
    family = get_family(model.family)
    dtype = DTYPES[model.dtype]
    with partitioned_build(zero3, None if model.pretrained == "tiny" else dtype) if zero3 else nullcontext():
        if model.pretrained == "tiny":
            logger.info("building tiny %s denoiser and scheduler%s", model.family, ", partitioned" if zero3 else "")
            denoiser, scheduler = family.tiny_denoiser(dtype)
        elif model.pretrained == RANDOM_FULL_SIZE:
            logger.info("building %s denoiser with the published architecture, random weights%s", model.family,
                        ", partitioned" if zero3 else "")
            denoiser, scheduler = family.full_size_denoiser(dtype)
        else:
            logger.info("loading %s denoiser and scheduler from %s%s", model.family, model.pretrained,
                        ", partitioned" if zero3 else "")
            denoiser, scheduler = family.load_denoiser(model)
    return (denoiser if zero3 else denoiser.to(device)), scheduler


def load_lora(pipe, model: ModelConfig, lora_dir: str, scale: float, adapter_name: str = "videogpa",
              source: str | None = None) -> None:
    """Load a LoRA directory into ``pipe`` and activate it at ``scale``: diffusers format, or a PEFT
    adapter such as the official VideoGPA releases (``actors.lora_formats``). ``scale`` is the
    ``set_adapters`` weight: the LoRA's update is scaled by ``scale × lora_alpha / r``.
    Loading again under the same ``adapter_name`` replaces the previous adapter (online rounds).
    ``source``: where the directory came from (a run's URI), for the error message."""
    from safetensors import SafetensorError

    name = source or lora_dir
    family = get_family(model.family)
    fmt = check_lora(model, lora_dir, name)
    if adapter_name in _adapter_names(pipe):
        pipe.delete_adapters(adapter_name)
    with diffusers_lora_dir(lora_dir, name) as local:
        try:
            family.load_lora(pipe, local, adapter_name)
        except (OSError, SafetensorError, ValueError, KeyError, RuntimeError, TypeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise InputError(f"LoRA {name}: not a LoRA of this {pipe.__class__.__name__} "
                             f"({type(err).__name__}: {reason})") from None
        for expert in family.experts:
            # diffusers only warns about LoRA weights whose module it does not find: a LoRA of another
            # architecture would load as (partly) nothing.
            modules = lora_module_names(local, lora_weight_name(expert))
            missing = modules - set(_lora_layers(getattr(pipe, expert), adapter_name))
            if missing:
                pipe.delete_adapters(adapter_name)
                raise InputError(f"LoRA {name}: {len(missing)} of its {len(modules)} modules are not in this "
                                 f"{model.family} {expert} (e.g. {sorted(missing)[0]}); is it a LoRA of another model?")
    pipe.set_adapters([adapter_name], adapter_weights=[scale])
    logger.info("loaded LoRA %s (%s format) as adapter %r at scale %s: its update is scaled by %.4g", name, fmt,
                adapter_name, scale, _scaling(pipe.transformer, adapter_name))


def _adapter_names(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _lora_layers(module: torch.nn.Module, adapter_name: str) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A}


def _scaling(module: torch.nn.Module, adapter_name: str) -> float:
    """The factor its LoRA update is multiplied by (PEFT's ``scaling``: weight × alpha / r)."""
    layer = next(iter(_lora_layers(module, adapter_name).values()))
    return float(layer.scaling[adapter_name])


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _check_sampling(pipe, model: ModelConfig, sampling: SamplingConfig) -> None:
    family = get_family(model.family)
    check_sampling(family.sampling_shape(pipe.vae.config, pipe.transformer.config), model, sampling)


def generate_videos(
    pipe,
    model: ModelConfig,
    sampling: SamplingConfig,
    prompt: str,
    seeds: list[int],
    image: np.ndarray | None = None,
    embeds: PromptEmbeds | None = None,
) -> np.ndarray:
    """Sample one video per seed: uint8 ``[K, F, H, W, 3]``. The K seeds run as one batch with one
    ``torch.Generator(device).manual_seed(seed)`` per video, so each video depends only on its seed
    (up to float reduction order when the batch composition changes). ``embeds``: the prompt's (and,
    under classifier-free guidance, the negative prompt's) embeddings from ``encode_prompts``, for a
    pipeline without a text encoder; None: the pipeline encodes ``prompt`` itself."""
    if not seeds:
        raise InputError("seeds: need at least one seed")
    family = get_family(model.family)
    pil_image = family.check_image(image)
    _check_sampling(pipe, model, sampling)
    device = pipe._execution_device
    kwargs: dict[str, Any] = dict(
        num_frames=sampling.num_frames,
        height=sampling.height,
        width=sampling.width,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale,
        generator=[torch.Generator(device).manual_seed(int(s)) for s in seeds],
        output_type="np",
        max_sequence_length=family.text_len(model),
    )
    if embeds is None:
        # CogVideoX ignores num_videos_per_prompt, so the batch is spelled out as K prompts.
        kwargs["prompt"] = [prompt] * len(seeds)
        if sampling.negative_prompt:
            kwargs["negative_prompt"] = [sampling.negative_prompt] * len(seeds)
    else:
        # What encode_prompt returns for K prompts: the embeddings repeated, in the text encoder's dtype.
        dtype = DTYPES[model.dtype]
        kwargs["prompt_embeds"] = embeds.prompt.to(device, dtype).repeat(len(seeds), 1, 1)
        if uses_cfg(sampling):
            if embeds.negative is None:
                raise InputError("negative prompt embeddings: required under classifier-free guidance "
                                 "(sampling.guidance_scale > 1)")
            kwargs["negative_prompt_embeds"] = embeds.negative.to(device, dtype).repeat(len(seeds), 1, 1)
    runner, kwargs = family.generation_call(pipe, kwargs, pil_image, sampling)
    logger.info(
        "generating %d video(s) %s: %dx%dx%d, %d steps, cfg %.2f",
        len(seeds),
        model.family,
        sampling.num_frames,
        sampling.height,
        sampling.width,
        sampling.num_inference_steps,
        sampling.guidance_scale,
    )
    frames = np.asarray(runner(**kwargs).frames, dtype=np.float32)  # [K, F, H, W, 3] in [0, 1]
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Training inputs
# --------------------------------------------------------------------------------------------


def encode_training_inputs(
    pipe,
    model: ModelConfig,
    videos: np.ndarray,
    prompt: str,
    image: np.ndarray | None,
    prompt_embeds: torch.Tensor | None = None,
    *,
    official_objective: bool = False,
) -> dict[str, torch.Tensor | None]:
    """VAE latents, prompt embeddings and image latents for training, as float32 CPU tensors.
    ``prompt_embeds``: the prompt's embeddings from ``encode_prompts`` (copied: the encoding stage
    holds only the VAE's encoder); None: the pipeline's text encoder encodes ``prompt``. ``official_objective``:
    encoded as the official training scripts do (``objective_family``).

    Returns ``latents`` ``[N, ...]`` in the layout the family denoises in, ``prompt_embeds``
    ``[1,L,D]`` (no CFG) and ``image_latents`` (the family's ``encode_image``) or ``None``.
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise InputError(f"videos: expected uint8 [N,F,H,W,3], got {videos.dtype} {list(videos.shape)}")
    family = objective_family(model.family, official_objective)
    pil_image = family.check_image(image)
    with torch.no_grad():
        # One video at a time: a full-resolution VAE encode is the memory peak.
        latents = torch.cat([family.encode_video(pipe, v) for v in videos])
        if prompt_embeds is None:
            prompt_embeds = encode_prompts(pipe, model, [prompt])[0]
        image_latents = None
        if pil_image is not None:
            height, width = videos.shape[2], videos.shape[3]
            image_latents = family.encode_image(pipe, pil_image, height, width, latents.shape[family.latent_frames_dim])
            latents = family.condition_latents(latents, image_latents)
    logger.info("encoded %d video(s) to latents %s", len(videos), list(latents.shape))
    return {
        "latents": latents.float().cpu(),
        "prompt_embeds": prompt_embeds.float().cpu(),
        "image_latents": None if image_latents is None else image_latents.float().cpu(),
    }


# --------------------------------------------------------------------------------------------
# Prompt embeddings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEmbeds:
    """A prompt's embeddings ``[1, L, D]`` and, under classifier-free guidance, the negative prompt's."""

    prompt: torch.Tensor
    negative: torch.Tensor | None = None


def uses_cfg(sampling: SamplingConfig) -> bool:
    """Whether sampling runs classifier-free guidance (the pipelines' ``guidance_scale > 1``), which
    then needs the negative prompt's embeddings ("" when ``sampling.negative_prompt`` is empty)."""
    return sampling.guidance_scale > 1.0


def encode_prompts(pipe, model: ModelConfig, texts: list[str]) -> list[torch.Tensor]:
    """Each text's embeddings ``[1, L, D]`` on CPU, in the text encoder's dtype: exactly what the
    pipeline computes for it when called with the text (``pipe.encode_prompt``, no CFG)."""
    family = get_family(model.family)
    out = []
    with torch.no_grad():
        for text in texts:
            embeds, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, num_videos_per_prompt=1,
                                           max_sequence_length=family.text_len(model),
                                           device=pipe._execution_device)
            out.append(embeds.cpu())
    return out
