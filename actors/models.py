"""Model building, candidate generation and latent encoding for the supported video families.

Every family runs through its real diffusers pipeline class. ``pretrained`` is a Hugging Face id,
a local diffusers directory, or ``"tiny"``: an offline preset built from configs in code with
random weights under fixed seeds, so every process builds bit-identical weights and the whole
code path of a real model runs on CPU in seconds.

Latent layouts (what ``encode_training_inputs`` returns and ``actors.families`` consumes):

* CogVideoX (all three families): latents ``[N, F, C, H, W]`` scaled by ``vae.config.scaling_factor``
  (the layout ``CogVideoXPipeline.prepare_latents`` denoises in). CogVideoX1.5 pads the latent frames
  to a multiple of ``patch_size_t`` by repeating the first latent frame in front, as the official
  CogVideoX fine-tuning code does.
* Wan2.2-TI2V: latents ``[N, C, F, H, W]`` normalised with the VAE's ``latents_mean``/``latents_std``.
"""

from __future__ import annotations

import contextlib
import logging
import string
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from actors.errors import InputError

logger = logging.getLogger(__name__)

Family = Literal["cogvideox-t2v", "cogvideox-i2v", "cogvideox1.5-t2v", "wan2.2-ti2v"]
FAMILIES: tuple[str, ...] = get_args(Family)

REAL_MODEL_IDS: dict[str, str] = {
    "cogvideox-t2v": "THUDM/CogVideoX-5b",
    "cogvideox-i2v": "THUDM/CogVideoX-5b-I2V",
    "cogvideox1.5-t2v": "THUDM/CogVideoX1.5-5B",
    "wan2.2-ti2v": "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Text length the real checkpoints were trained with; the tiny preset keeps prompts short for speed.
_REAL_TEXT_LEN = {"cogvideox": 226, "wan": 512}
TINY_MAX_SEQUENCE_LENGTH = 16
_TINY_SEED = 1234
_TINY_TEXT_DIM = 32
_TINY_COG_Z = 4  # CogVideoX latent channels (16 in the real VAE)
_TINY_WAN_Z = 48  # Wan2.2 VAE latent channels, as the real one


class ModelConfig(BaseModel):
    """Which base model to run and how to load it."""

    model_config = ConfigDict(extra="forbid")

    family: Family
    pretrained: str = "tiny"  # hub id, local diffusers directory, or "tiny" (offline random-init preset)
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
    lora_scale: float = 1.0
    fps: int = Field(8, gt=0)


def tiny_sampling(family: str) -> SamplingConfig:
    """Sampling settings that fit the tiny preset of ``family`` (CPU, about a second per call)."""
    _check_family(family)
    if family == "wan2.2-ti2v":  # Wan2.2 VAE compresses 16x spatially and the transformer patches 2x2
        return SamplingConfig(num_frames=9, height=64, width=64, num_inference_steps=2, guidance_scale=5.0)
    return SamplingConfig(num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=6.0)


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def is_cogvideox(family: str) -> bool:
    return family.startswith("cogvideox")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise InputError(f"model.family: unknown family {family!r} (expected one of {', '.join(FAMILIES)})")


def requires_image(family: str) -> bool:
    return family == "cogvideox-i2v"


def accepts_image(family: str) -> bool:
    return family in ("cogvideox-i2v", "wan2.2-ti2v")


# --------------------------------------------------------------------------------------------
# Tiny preset: every component from a config in code, each under its own fixed seed so that a
# component's weights do not depend on what else was built before it (the trainer builds only the
# transformer and must get exactly the weights the generator's pipeline has).
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(component: str) -> Iterator[None]:
    # crc32, not hash(): Python's str hash is salted per process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED + zlib.crc32(component.encode()))
        yield


def _tiny_tokenizer():
    """A T5-style Unigram (SentencePiece-like) tokenizer built in memory: a few whole words plus
    single characters, so any prompt tokenizes and different prompts give different ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]  # T5 order: pad=0, eos=1, unk=2
    words = (
        "a an the of in on at to and with is are moving camera orbit around scene room street city car "
        "house tree dog cat person walking red blue green white black cube sphere table chair view slowly"
    ).split()
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = (
        [(s, 0.0) for s in specials]
        + [("\u2581" + w, -2.0) for w in words]
        + [("\u2581", -3.0)]
        + [(c, -5.0) for c in chars]
        + [("\u2581" + c, -5.5) for c in chars]
    )
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TINY_MAX_SEQUENCE_LENGTH,
    )


def _tiny_text_encoder(family: str, vocab_size: int):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=vocab_size,
        d_model=_TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    with _seeded(f"{family}/text_encoder"):
        if is_cogvideox(family):
            return T5EncoderModel(T5Config(**kwargs)).eval()
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()


def _tiny_transformer(family: str):
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    with _seeded(f"{family}/transformer"):
        if family == "wan2.2-ti2v":
            # Wan2.2-TI2V-5B layout: patch (1,2,2), in/out = VAE z_dim, RMS qk-norm across heads.
            return WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=16,
                in_channels=_TINY_WAN_Z,
                out_channels=_TINY_WAN_Z,
                text_dim=_TINY_TEXT_DIM,
                freq_dim=32,
                ffn_dim=64,
                num_layers=2,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                eps=1e-6,
                image_dim=None,
                added_kv_proj_dim=None,
                rope_max_seq_len=64,
            ).eval()
        common = dict(
            num_attention_heads=2,
            attention_head_dim=16,  # >= 16 so the 3D RoPE split (t: d/4, h,w: 3d/8) has even parts
            out_channels=_TINY_COG_Z,
            time_embed_dim=16,
            text_embed_dim=_TINY_TEXT_DIM,
            num_layers=2,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=TINY_MAX_SEQUENCE_LENGTH,
            use_rotary_positional_embeddings=True,  # as all 5B checkpoints
        )
        if family == "cogvideox1.5-t2v":
            # CogVideoX1.5 layout: temporal patching, no patch bias, RoPE grid sliced from a max size.
            return CogVideoXTransformer3DModel(
                in_channels=_TINY_COG_Z,
                patch_size_t=2,
                patch_bias=False,
                sample_height=16,
                sample_width=16,
                sample_frames=9,
                **common,
            ).eval()
        in_channels = 2 * _TINY_COG_Z if family == "cogvideox-i2v" else _TINY_COG_Z  # I2V: + image latents
        # The real 5B-I2V also uses learned positional embeddings, which pin it to one resolution;
        # the tiny preset leaves them off so any tiny resolution works.
        return CogVideoXTransformer3DModel(
            in_channels=in_channels, sample_height=4, sample_width=4, sample_frames=9, **common
        ).eval()



def _tiny_vae(family: str):
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    with _seeded(f"{family}/vae"):
        if family == "wan2.2-ti2v":
            # Wan2.2 VAE structure: 2x2 pixel patchify (12 input channels), residual blocks,
            # 16x spatial / 4x temporal compression, 48 latent channels.
            gen = torch.Generator().manual_seed(_TINY_SEED)
            return AutoencoderKLWan(
                base_dim=8,
                decoder_base_dim=8,
                z_dim=_TINY_WAN_Z,
                dim_mult=[1, 2, 2, 2],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
                is_residual=True,
                in_channels=12,
                out_channels=12,
                patch_size=2,
                scale_factor_spatial=16,
                scale_factor_temporal=4,
                latents_mean=(torch.randn(_TINY_WAN_Z, generator=gen) * 0.1).tolist(),
                latents_std=(1.0 + torch.rand(_TINY_WAN_Z, generator=gen)).tolist(),
            ).eval()
        return AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=_TINY_COG_Z,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            scaling_factor=0.7,  # CogVideoX-5B value
            invert_scale_latents=family == "cogvideox1.5-t2v",  # as in the CogVideoX1.5 VAE config
        ).eval()


def _tiny_scheduler(family: str):
    from diffusers import CogVideoXDPMScheduler, UniPCMultistepScheduler

    if family == "wan2.2-ti2v":
        # Wan2.2-TI2V-5B scheduler config: UniPC on flow sigmas with shift 5.
        return UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=5.0,
            solver_order=2,
        )
    # CogVideoX-5B scheduler config: zero-terminal-SNR scaled-linear betas, v-prediction, trailing steps.
    return CogVideoXDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
    )


def _pipeline_class(family: str, with_image: bool = False):
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline, WanImageToVideoPipeline, WanPipeline

    if family == "cogvideox-i2v":
        return CogVideoXImageToVideoPipeline
    if is_cogvideox(family):
        return CogVideoXPipeline
    return WanImageToVideoPipeline if with_image else WanPipeline


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast as ``from_pretrained(torch_dtype=...)`` does: modules listed in ``_keep_in_fp32_modules``
    (Wan's norms, time embedder, ...) stay float32, so the tiny preset runs the real mixed precision."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not any(k in name.split(".") for k in keep):
            tensor.data = tensor.data.to(dtype)


def _build_tiny_pipeline(family: str):
    tokenizer = _tiny_tokenizer()
    components: dict[str, Any] = dict(
        tokenizer=tokenizer,
        text_encoder=_tiny_text_encoder(family, vocab_size=len(tokenizer)),
        vae=_tiny_vae(family),
        transformer=_tiny_transformer(family),
        scheduler=_tiny_scheduler(family),
    )
    if family == "wan2.2-ti2v":
        components["expand_timesteps"] = True  # as Wan2.2-TI2V-5B's model_index.json
    return _pipeline_class(family)(**components)


def _load_real_pipeline(model: ModelConfig):
    dtype = torch_dtype(model.dtype)
    cls = _pipeline_class(model.family)
    kwargs: dict[str, Any] = dict(torch_dtype=dtype, revision=model.revision)
    if model.family == "wan2.2-ti2v":
        from diffusers import AutoencoderKLWan

        # Wan's VAE is run in float32 (the Wan pipeline casts latents to the VAE dtype before decoding).
        kwargs["vae"] = AutoencoderKLWan.from_pretrained(
            model.pretrained, subfolder="vae", torch_dtype=torch.float32, revision=model.revision
        )
    pipe = cls.from_pretrained(model.pretrained, **kwargs)
    if is_cogvideox(model.family):
        # Full-resolution 49-frame decodes do not fit otherwise; tiling is the documented setting.
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    return pipe


def build_pipeline(model: ModelConfig, device: str | torch.device = "cpu"):
    """The family's diffusers pipeline (CogVideoXPipeline, CogVideoXImageToVideoPipeline or WanPipeline)
    on ``device``. CogVideoX runs wholly in ``model.dtype``; Wan keeps its VAE in float32."""
    _check_family(model.family)
    if model.pretrained == "tiny":
        logger.info("building tiny %s pipeline (random init, seed %d, dtype %s)", model.family, _TINY_SEED, model.dtype)
        pipe = _build_tiny_pipeline(model.family)
        dtype = torch_dtype(model.dtype)
        _cast_like_from_pretrained(pipe.transformer, dtype)
        pipe.text_encoder.to(dtype)
        if is_cogvideox(model.family):  # CogVideoX decodes latents in the transformer's dtype
            _cast_like_from_pretrained(pipe.vae, dtype)
    else:
        logger.info(
            "loading %s pipeline from %s (revision %s, dtype %s)",
            model.family,
            model.pretrained,
            model.revision,
            model.dtype,
        )
        pipe = _load_real_pipeline(model)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_transformer_and_scheduler(model: ModelConfig, device: str | torch.device = "cpu"):
    """Only what training needs: the denoising transformer (in ``model.dtype``) and the scheduler.
    For ``"tiny"`` the transformer is bit-identical to the one ``build_pipeline`` builds."""
    _check_family(model.family)
    dtype = torch_dtype(model.dtype)
    if model.pretrained == "tiny":
        logger.info("building tiny %s transformer and scheduler", model.family)
        transformer, scheduler = _tiny_transformer(model.family), _tiny_scheduler(model.family)
        _cast_like_from_pretrained(transformer, dtype)
    else:
        from diffusers import (
            CogVideoXDPMScheduler,
            CogVideoXTransformer3DModel,
            UniPCMultistepScheduler,
            WanTransformer3DModel,
        )

        logger.info("loading %s transformer and scheduler from %s", model.family, model.pretrained)
        cog = is_cogvideox(model.family)
        transformer_cls = CogVideoXTransformer3DModel if cog else WanTransformer3DModel
        scheduler_cls = CogVideoXDPMScheduler if cog else UniPCMultistepScheduler
        transformer = transformer_cls.from_pretrained(
            model.pretrained, subfolder="transformer", torch_dtype=dtype, revision=model.revision
        )
        scheduler = scheduler_cls.from_pretrained(model.pretrained, subfolder="scheduler", revision=model.revision)
    return transformer.to(device), scheduler


def load_lora(pipe, lora_dir: str, scale: float, adapter_name: str = "videogpa", source: str | None = None) -> None:
    """Load a diffusers-format LoRA directory into ``pipe`` and activate it at ``scale``.
    Loading again under the same ``adapter_name`` replaces the previous adapter (online rounds).
    ``source``: where the directory came from (a run's URI), for the error message."""
    from safetensors import SafetensorError

    logger.info("loading LoRA %s as adapter %r at scale %s", source or lora_dir, adapter_name, scale)
    if adapter_name in _adapter_names(pipe):
        pipe.delete_adapters(adapter_name)
    try:
        pipe.load_lora_weights(lora_dir, adapter_name=adapter_name)
    except (OSError, SafetensorError, ValueError, KeyError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise InputError(f"LoRA {source or lora_dir}: not a diffusers LoRA of this {pipe.__class__.__name__} "
                         f"({type(err).__name__}: {reason})") from None
    pipe.set_adapters([adapter_name], adapter_weights=[scale])


def _adapter_names(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _text_len(model: ModelConfig) -> int:
    if model.pretrained == "tiny":
        return TINY_MAX_SEQUENCE_LENGTH
    return _REAL_TEXT_LEN["cogvideox" if is_cogvideox(model.family) else "wan"]


def _check_image(model: ModelConfig, image: np.ndarray | None):
    """Validate the conditioning image and return it as a PIL image (or None)."""
    from PIL import Image

    if image is None:
        if requires_image(model.family):
            raise InputError(f"{model.family}: an image is required (image-to-video model)")
        return None
    if not accepts_image(model.family):
        raise InputError(f"{model.family}: text-to-video model got an image; drop it or use an I2V family")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image: expected uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
    return Image.fromarray(image)


@dataclass(frozen=True)
class SamplingShape:
    """The video sizes a model can sample: ``temporal``k+1 frames, sides that are multiples of
    ``multiple`` (VAE compression × patch), and only ``fixed`` (height, width) where the transformer
    learned its positional embeddings for one size (CogVideoX-5B-I2V)."""

    temporal: int
    multiple: int
    fixed: tuple[int, int] | None = None


def sampling_shape_from_configs(family: str, vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> SamplingShape:
    """From the VAE's and transformer's configs, as the family's diffusers pipeline derives them."""
    if is_cogvideox(family):
        temporal, spatial = vae["temporal_compression_ratio"], 2 ** (len(vae["block_out_channels"]) - 1)
    else:
        temporal, spatial = vae["scale_factor_temporal"], vae["scale_factor_spatial"]
    patch = transformer["patch_size"]
    patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
    fixed = None
    if transformer.get("use_learned_positional_embeddings"):
        fixed = (transformer["sample_height"] * spatial, transformer["sample_width"] * spatial)
    return SamplingShape(int(temporal), int(spatial * patch), fixed)


def check_sampling(shape: SamplingShape, model: ModelConfig, sampling: SamplingConfig) -> None:
    """One InputError naming the sampling key that ``model`` cannot generate."""
    if (sampling.num_frames - 1) % shape.temporal != 0:
        raise InputError(f"sampling.num_frames: {model.family} needs {shape.temporal}k+1 frames "
                         f"(e.g. {shape.temporal * 2 + 1}), got {sampling.num_frames}")
    if sampling.height % shape.multiple or sampling.width % shape.multiple:
        raise InputError(f"sampling.height/width: {model.family} needs multiples of {shape.multiple}, "
                         f"got {sampling.height}x{sampling.width}")
    if shape.fixed is not None and (sampling.height, sampling.width) != shape.fixed:
        raise InputError(f"sampling.height/width: {model.pretrained} only generates {shape.fixed[0]}x{shape.fixed[1]}, "
                         f"got {sampling.height}x{sampling.width}")


def _check_sampling(pipe, model: ModelConfig, sampling: SamplingConfig) -> None:
    check_sampling(sampling_shape_from_configs(model.family, pipe.vae.config, pipe.transformer.config), model, sampling)


def _wan_image_pipeline(pipe):
    """Wan2.2-TI2V conditions on an image through WanImageToVideoPipeline with ``expand_timesteps``;
    it shares every module (and so any loaded LoRA) with the text-to-video pipeline."""
    from diffusers import WanImageToVideoPipeline

    if isinstance(pipe, WanImageToVideoPipeline):
        return pipe
    i2v = WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        transformer=pipe.transformer,
        transformer_2=getattr(pipe, "transformer_2", None),
        boundary_ratio=pipe.config.get("boundary_ratio"),
        expand_timesteps=True,
    )
    i2v.set_progress_bar_config(disable=True)
    return i2v


def generate_videos(
    pipe,
    model: ModelConfig,
    sampling: SamplingConfig,
    prompt: str,
    seeds: list[int],
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Sample one video per seed: uint8 ``[K, F, H, W, 3]``. The K seeds run as one batch with one
    ``torch.Generator(device).manual_seed(seed)`` per video, so each video depends only on its seed
    (up to float reduction order when the batch composition changes)."""
    if not seeds:
        raise InputError("seeds: need at least one seed")
    pil_image = _check_image(model, image)
    _check_sampling(pipe, model, sampling)
    device = pipe._execution_device
    generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = dict(
        # CogVideoX ignores num_videos_per_prompt, so the batch is spelled out as K prompts.
        prompt=[prompt] * len(seeds),
        num_frames=sampling.num_frames,
        height=sampling.height,
        width=sampling.width,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale,
        generator=generators,
        output_type="np",
        max_sequence_length=_text_len(model),
    )
    runner = pipe
    if pil_image is not None and model.family == "wan2.2-ti2v":
        runner = _wan_image_pipeline(pipe)
        kwargs["image"] = pil_image  # encoded once and shared by the batch
        # diffusers' WanImageToVideoPipeline cleans prompts with ftfy unconditionally (an optional
        # package); WanPipeline.encode_prompt guards it, so the embeddings are made there.
        kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = pipe.encode_prompt(
            kwargs.pop("prompt"),
            do_classifier_free_guidance=sampling.guidance_scale > 1.0,
            max_sequence_length=kwargs["max_sequence_length"],
            device=device,
        )
    elif pil_image is not None:
        kwargs["image"] = [pil_image] * len(seeds)  # CogVideoX-I2V encodes one image per generator
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
    frames = runner(**kwargs).frames
    frames = np.asarray(frames, dtype=np.float32)  # [K, F, H, W, 3] in [0, 1]
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Training inputs
# --------------------------------------------------------------------------------------------


def _video_tensor(video: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 [F,H,W,3] -> [1,3,F,H,W] in [-1,1] (the VAE's input convention)."""
    x = torch.from_numpy(np.ascontiguousarray(video)).to(device=device, dtype=torch.float32)
    return (x.permute(3, 0, 1, 2).unsqueeze(0) / 127.5 - 1.0).to(dtype)


def _wan_norm(vae, z: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def _vae_mean(vae, x: torch.Tensor) -> torch.Tensor:
    # The posterior mean, not a sample: the same video must give the same latents in every process.
    return vae.encode(x).latent_dist.mode()


def _encode_video(pipe, family: str, video: np.ndarray) -> torch.Tensor:
    vae = pipe.vae
    z = _vae_mean(vae, _video_tensor(video, vae.device, vae.dtype)).float()  # [1,C,F,H,W]
    if family == "wan2.2-ti2v":
        return _wan_norm(vae, z)
    z = (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)  # [1,F,C,H,W]
    p_t = pipe.transformer.config.patch_size_t
    if p_t is not None and z.shape[1] % p_t:
        # CogVideoX1.5 patches frames in pairs: repeat the first latent frame in front (official fine-tuning).
        z = torch.cat([z[:, :1].repeat(1, p_t - z.shape[1] % p_t, 1, 1, 1), z], dim=1)
    return z


def _encode_image(pipe, family: str, image, height: int, width: int, latent_frames: int) -> torch.Tensor:
    vae = pipe.vae
    pixels = pipe.video_processor.preprocess(image, height=height, width=width)  # [1,3,H,W] in [-1,1]
    z = _vae_mean(vae, pixels.unsqueeze(2).to(vae.device, vae.dtype)).float()  # [1,C,1,h,w]
    if family == "wan2.2-ti2v":
        return _wan_norm(vae, z)  # [1,C,1,h,w]: replaces latent frame 0 (expand_timesteps)
    # CogVideoXImageToVideoPipeline.prepare_latents: scale, then zero-pad over the latent frames.
    z = z.permute(0, 2, 1, 3, 4)
    scale = vae.config.scaling_factor
    z = z / scale if vae.config.invert_scale_latents else z * scale
    padding = z.new_zeros(1, latent_frames - 1, *z.shape[2:])
    return torch.cat([z, padding], dim=1)  # [1,F,C,h,w]


def encode_training_inputs(
    pipe,
    model: ModelConfig,
    videos: np.ndarray,
    prompt: str,
    image: np.ndarray | None,
) -> dict[str, torch.Tensor | None]:
    """VAE latents, prompt embeddings and image latents for training, as float32 CPU tensors.

    Returns ``latents`` (CogVideoX ``[N,F,C,H,W]`` scaled; Wan ``[N,C,F,H,W]`` normalised),
    ``prompt_embeds`` ``[1,L,D]`` (no CFG) and ``image_latents``: CogVideoX-I2V ``[1,F,C,H,W]``
    (first-frame latent zero-padded over frames), Wan2.2-TI2V ``[1,C,1,H,W]`` or ``None``.

    Wan2.2-TI2V with an image: latent frame 0 of every video is set to the image latent, which is
    exactly what the pipeline's own denoised latents hold (it pastes the condition back before
    decoding); that frame is not trained (see ``actors.families``).
    """
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
        raise InputError(f"videos: expected uint8 [N,F,H,W,3], got {videos.dtype} {list(videos.shape)}")
    pil_image = _check_image(model, image)
    device = pipe._execution_device
    with torch.no_grad():
        # One video at a time: a full-resolution VAE encode is the memory peak.
        latents = torch.cat([_encode_video(pipe, model.family, v) for v in videos])
        prompt_embeds, _ = pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=_text_len(model),
            device=device,
        )
        image_latents = None
        if pil_image is not None:
            frames_dim = 2 if model.family == "wan2.2-ti2v" else 1
            height, width = videos.shape[2], videos.shape[3]
            image_latents = _encode_image(
                pipe, model.family, pil_image, height, width, latents.shape[frames_dim]
            )
            if model.family == "wan2.2-ti2v":
                latents[:, :, :1] = image_latents
    logger.info("encoded %d video(s) to latents %s", len(videos), list(latents.shape))
    return {
        "latents": latents.float().cpu(),
        "prompt_embeds": prompt_embeds.float().cpu(),
        "image_latents": None if image_latents is None else image_latents.float().cpu(),
    }
