"""What every family provides, and the helpers their modules share.

The model-agnostic layers call only these methods:

* ``actors.models`` builds each stage's pipeline (``build_stage_pipeline``: only the components of
  ``stage_components()``), the training
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

import contextlib
import importlib
import inspect
import logging
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from actors.errors import InputError
from actors.families.tiny import tiny_text_encoder, tiny_tokenizer
from actors.model_config import RANDOM_FULL_SIZE, ModelConfig, SamplingConfig, SamplingShape

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The diffusers LoRA file of the (first) transformer; a second expert's file is named after it.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# diffusers' attention of CogVideoX and Wan names the q, k, v, o projections alike.
ATTENTION_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The modules of a diffusers VAE (AutoencoderKLCogVideoX, AutoencoderKLWan) that only decoding runs.
VAE_DECODER_MODULES = ("decoder", "post_quant_conv")


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
    umt5_text_encoder: ClassVar[bool] = False  # UMT5 (Wan) rather than T5 (CogVideoX)
    # How its pipeline spends GPU memory beyond the weights (`videogpa plan`): classifier-free guidance as one
    # doubled batch (CogVideoX) rather than two passes (Wan); the VAE kept in float32 whatever model.dtype
    # (Wan); the VAE decoding one video at a time in tiles (CogVideoX loads it with slicing and tiling).
    cfg_in_one_batch: ClassVar[bool] = False
    vae_float32: ClassVar[bool] = False
    vae_tiled: ClassVar[bool] = False
    # The official VideoGPA training script of this model (Hongyang-Du/VideoGPA), None where there is none.
    official_training: ClassVar[str | None] = None

    # ---- what each stage's actors load ---------------------------------------------------------

    def stage_components(self) -> dict[str, tuple[str, ...]]:
        """The pipeline components each model-bearing stage loads, and nothing else: prompts are
        encoded once per run by the text stage, so generation holds no text encoder and pair encoding
        only the VAE, without its decoder (``vae_decodes``). Scoring loads no component of the video
        model (GFM + LPIPS). A family whose stages need more (an image encoder for image
        conditioning) overrides this in its module."""
        return {
            "text": ("tokenizer", "text_encoder"),
            "generate": (*self.experts, "vae"),
            "encode": ("vae",),
            "train": self.experts,
        }

    def vae_decodes(self, stage: str | None) -> bool:
        """Whether ``stage``'s VAE decodes. Pair encoding only encodes (videos, and images where the
        family conditions on them), so its actors hold the VAE without its decoder: Wan2.2's decoder
        is 555M of the VAE's 705M parameters, CogVideoX's 123M of 216M."""
        return stage != "encode"

    # ---- building ------------------------------------------------------------------------------

    def pipeline_components(self) -> tuple[str, ...]:
        """Every model component of its diffusers pipeline (the scheduler aside)."""
        return ("tokenizer", "text_encoder", "vae", *self.experts)

    def build_stage_pipeline(self, model: ModelConfig, components: tuple[str, ...], vae_decoder: bool = True):
        """Its diffusers pipeline holding only ``components`` (the others None) and the scheduler.
        Each component is built alone: ``tiny`` under its own seed (so the weights are those of the
        whole preset), ``random-full-size`` from its published config, real weights with
        ``from_pretrained(..., subfolder=component)``. ``vae_decoder=False``: the VAE without the
        modules only decoding runs (``vae_decodes``); random-full-size never builds them, real weights
        drop them before the pipeline moves to its device."""
        dtype = DTYPES[model.dtype]
        unknown = set(components) - set(self.pipeline_components())
        if unknown:
            raise InputError(f"{self.name}: no pipeline component {sorted(unknown)[0]!r}")
        built: dict[str, Any] = dict.fromkeys(self.pipeline_components())
        if model.pretrained in ("tiny", RANDOM_FULL_SIZE):
            full = model.pretrained == RANDOM_FULL_SIZE
            for name in components:
                built[name] = (self._full_size_component(name, dtype, vae_decoder) if full
                               else self._tiny_component(name))
                self._cast_component(name, built[name], dtype)
            scheduler, extras = self.tiny_scheduler(), self._tiny_pipeline_extras()
        else:
            index = self._model_index(model)
            for name in components:
                built[name] = self._load_component(model, name, index)
            scheduler = _index_class(index, "scheduler").from_pretrained(model.pretrained, subfolder="scheduler",
                                                                         revision=model.revision)
            parameters = inspect.signature(self.pipeline_class.__init__).parameters
            extras = {k: v for k, v in index.items() if k in parameters and k not in built and k != "scheduler"}
        if built["vae"] is not None and not vae_decoder:
            drop_vae_decoder(built["vae"])
        # the scheduler it samples with: the checkpoint's, or the official scripts' where the family says so
        return self.pipeline_class(**built, scheduler=self.sampling_scheduler(scheduler), **extras)

    def _tiny_component(self, name: str) -> Any:
        """One component of the tiny preset, built under its own seed (see ``actors.families.tiny``)."""
        if name == "tokenizer":
            return tiny_tokenizer()
        if name == "text_encoder":
            return tiny_text_encoder(self.name, vocab_size=len(tiny_tokenizer()), umt5=self.umt5_text_encoder)
        if name == "vae":
            return self._tiny_vae()
        return self._tiny_transformer(name)

    def _full_size_component(self, name: str, dtype: torch.dtype, vae_decoder: bool = True) -> Any:
        """One component at its published size with random weights (fixed seed), built in ``dtype``
        directly: a float32 build of a 5B transformer would need 4 bytes per parameter first. The text
        encoder and an encoder-only VAE are laid out on the meta device first and only then given memory,
        so nothing they do not keep is ever written (see ``random_text_encoder``, ``random_vae_encoder``)."""
        if name == "tokenizer":
            # No tokenizer files are written in code: the tiny tokenizer's ids index the random embedding.
            return tiny_tokenizer()
        config = self.full_size_config(name)
        with torch.random.fork_rng(devices=[]), default_dtype(torch.float32 if self._float32(name) else dtype):
            torch.manual_seed(zlib.crc32(f"{self.name}/{name}".encode()))
            if name == "text_encoder":
                from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

                config_class, model_class = ((UMT5Config, UMT5EncoderModel) if self.umt5_text_encoder
                                             else (T5Config, T5EncoderModel))
                return random_text_encoder(model_class, config_class(**config))
            if name == "vae" and not vae_decoder:
                return random_vae_encoder(self.vae_class(), config)
            cls = self.full_size_transformer_class() if name in self.experts else self.vae_class()
            return cls.from_config(config).eval()

    def full_size_config(self, name: str) -> dict[str, Any]:
        """Component ``name``'s published config of ``real_model_ids[0]`` (``actors.families.published``)
        completed with its class's defaults (which the published files leave out where they agree),
        tuples as the config.json files' lists (some modules concatenate them)."""
        from actors.families.published import PUBLISHED

        configs = PUBLISHED.get(self.real_model_ids[0], {})
        if name not in configs:
            raise InputError(f"model.pretrained: {RANDOM_FULL_SIZE} has no published {name} config for {self.name} "
                             "here")
        defaults: dict[str, Any] = {}
        if name != "text_encoder":  # transformers configs fill their own defaults
            cls = self.full_size_transformer_class() if name in self.experts else self.vae_class()
            defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                        if k != "self" and p.default is not inspect.Parameter.empty}
        config = {**defaults, **configs[name]}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    def _float32(self, name: str) -> bool:
        """Whether component ``name`` runs in float32 whatever ``model.dtype`` (a Wan VAE)."""
        return name == "vae" and self.vae_float32

    def _cast_component(self, name: str, module: Any, dtype: torch.dtype) -> None:
        """The dtypes ``from_pretrained(torch_dtype=dtype)`` gives: text encoder in ``dtype``, the
        denoiser and VAE in ``dtype`` but for the modules they keep in float32 (a float32 VAE stays so)."""
        if name == "text_encoder":
            module.to(dtype)
        elif name != "tokenizer" and not self._float32(name):
            cast_like_from_pretrained(module, dtype)

    def _tiny_pipeline_extras(self) -> dict[str, Any]:
        """Pipeline arguments besides components of the tiny and full-size presets (a real model's
        come from its model_index.json)."""
        return {}

    def _model_index(self, model: ModelConfig) -> dict[str, Any]:
        from diffusers import DiffusionPipeline

        return dict(DiffusionPipeline.load_config(model.pretrained, revision=model.revision))

    def _load_component(self, model: ModelConfig, name: str, index: Mapping[str, Any]) -> Any:
        """One component from real weights, as ``pipeline_class.from_pretrained`` loads it."""
        cls = _index_class(index, name)
        if name in self.experts:
            return load_transformer(cls, model, name)
        kwargs = {} if name == "tokenizer" else {
            "torch_dtype": torch.float32 if self._float32(name) else DTYPES[model.dtype]}
        component = cls.from_pretrained(model.pretrained, subfolder=name, revision=model.revision, **kwargs)
        if name == "vae" and self.vae_tiled:  # the documented setting for full-resolution videos
            component.enable_slicing()
            component.enable_tiling()
        return component

    def vae_class(self) -> type:
        raise NotImplementedError


    @property
    def pipeline_class(self) -> type:
        """The diffusers pipeline it generates with (text only), whose ``save_lora_weights`` exports."""
        raise NotImplementedError

    def text_len(self, model: ModelConfig) -> int:
        return self.tiny_text_len if model.pretrained == "tiny" else self.real_text_len

    def tiny_sampling(self) -> SamplingConfig:
        """Sampling settings that fit the tiny preset (CPU, about a second per call)."""
        raise NotImplementedError

    def tiny_scheduler(self):
        """The tiny preset's scheduler: the real checkpoints' scheduler (class and config)."""
        raise NotImplementedError

    def sampling_scheduler(self, scheduler):
        """The scheduler its pipeline samples with, given the checkpoint's: the checkpoint's own unless the
        family's module says otherwise (the official scripts' sampler). Tiny presets follow the same rule."""
        return scheduler

    def _tiny_transformer(self, component: str = "transformer") -> torch.nn.Module:
        """The tiny preset's transformer (or second expert ``component``), built under its own seed."""
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
        config = self.full_size_config("transformer")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            transformer = self.full_size_transformer_class().from_config(config).eval()
        cast_like_from_pretrained(transformer, dtype)
        return transformer, self.tiny_scheduler()

    def full_size_transformer_class(self) -> type:
        raise NotImplementedError

    def tiny_component_configs(self) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The tiny preset's VAE and transformer configs (for ``sampling_shape``)."""
        return self._tiny_vae().config, self._tiny_transformer().config


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


def drop_vae_decoder(vae: torch.nn.Module) -> None:
    """The VAE without the modules only decoding runs; ``encode`` never reaches them."""
    for name in VAE_DECODER_MODULES:
        setattr(vae, name, None)


def vae_encoding_modules(vae: torch.nn.Module) -> list[torch.nn.Module]:
    """The VAE's modules that encoding runs: what pair encoding's actors hold of it (``vae_decodes``)."""
    return [module for name, module in vae.named_children() if name not in VAE_DECODER_MODULES]


def random_text_encoder(model_class: type, config: Any) -> torch.nn.Module:
    """A T5 / UMT5 encoder with transformers' own random init, laid out on the meta device first.
    Built directly, its stack makes an embedding table of its own that ``post_init`` then ties to
    ``shared``: for umT5-XXL a 2 GiB bf16 table written only to be dropped (the text actor's peak
    exceeded its weights by that much). ``to_empty`` reserves untouched pages, so tying before the
    init writes one table. Built on the default device (meta, inside ``with torch.device("meta")``)."""
    device = torch.get_default_device()
    with torch.device("meta"):
        encoder = model_class(config)
    encoder.to_empty(device=device)
    encoder.tie_weights()
    encoder.apply(encoder._init_weights)
    return encoder.eval()


def random_vae_encoder(vae_class: type, config: Mapping[str, Any]) -> torch.nn.Module:
    """The VAE of ``config`` without its decoder (``drop_vae_decoder``), random weights: laid out on
    the meta device, the decoder dropped, the rest given memory and initialised as its modules' own
    ``reset_parameters`` do (norm scales without one, such as Wan's RMS norms, to one)."""
    device = torch.get_default_device()
    with torch.device("meta"):
        vae = vae_class.from_config(config)
    drop_vae_decoder(vae)
    if next(vae.buffers(), None) is not None:  # to_empty would leave them unset; the diffusers VAEs have none
        raise NotImplementedError(f"{vae_class.__name__} has buffers: build it whole")
    vae.to_empty(device=device)
    for module in vae.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
            continue
        for name, param in module.named_parameters(recurse=False):
            param.data.fill_(0.0 if name == "bias" else 1.0)
    return vae.eval()


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


def _index_class(index: Mapping[str, Any], name: str) -> type:
    """The class model_index.json names for component ``name`` (``[library, class]``)."""
    library, class_name = index[name]
    return getattr(importlib.import_module(library), class_name)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters in ``dtype`` (a random-full-size build never holds a float32 copy)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
