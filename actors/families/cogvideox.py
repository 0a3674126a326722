"""CogVideoX-5B (T2V), CogVideoX-5B-I2V and CogVideoX1.5-5B: v-prediction on latents ``[B, F, C, H, W]``.

* Latents are scaled by ``vae.config.scaling_factor`` (the layout ``CogVideoXPipeline.prepare_latents``
  denoises in). CogVideoX1.5 pads the latent frames to a multiple of ``patch_size_t`` by repeating
  the first latent frame in front, as the official CogVideoX fine-tuning code does.
* I2V: image latents ``[1, F, C, H, W]`` (the first frame's latent zero-padded over frames) are
  concatenated on channels; every latent frame is trained.
* Training: ``t`` is an integer in ``[0, num_train_timesteps)``, ``noisy = scheduler.add_noise``,
  ``target = scheduler.get_velocity``.
* Sampling: CogVideoX-5B (T2V) and CogVideoX1.5 sample with ``CogVideoXDPMScheduler`` and trailing
  timesteps, as the official ``generate/CogVideoX-5B.py`` and ``generate/CogVideoX1.5-5B.py`` set it; the
  I2V family keeps its checkpoint's scheduler, as ``generate/CogVideoX-5B-I2V.py`` does.
* ``official_objective`` (trainer.official_objective): as the official ``train/CogVideoX*/02_encode.py`` and
  ``03_train.py``: videos encoded from [0,1] pixels (not [-1,1]) with a posterior sample (seeded by the
  video's bytes, so every process gets the same), scaled by ``scaling_factor`` for CogVideoX1.5 only;
  CogVideoX1.5's odd latent frame count trimmed to even (21 -> 20) instead of padded; I2V image latents
  from the [0,1] image resized (nearest) to the video size, a posterior sample × ``scaling_factor``; the
  transformer called without its rotary embeddings.
* The whole pipeline runs in ``model.dtype`` (CogVideoX decodes latents in the transformer's dtype);
  real VAEs decode with slicing and tiling, the documented setting for full-resolution 49 frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from actors.families.base import (
    VideoFamily,
    batch_like,
    load_transformer,
    rand_on,
    vae_mean,
    video_to_vae_input,
)
from actors.families.tiny import TINY_MAX_SEQUENCE_LENGTH, TINY_TEXT_DIM, seeded
from actors.model_config import ModelConfig, SamplingConfig, SamplingShape

_TINY_Z = 4  # latent channels of the tiny VAE (16 in the real one)


def cogvideox_rotary_emb(config, num_frames: int, latent_height: int, latent_width: int, device):
    """``CogVideoX*Pipeline._prepare_rotary_positional_embeddings`` computed from latent sizes
    (the pipeline takes pixel sizes and divides by the VAE factor first; the grid is the same)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p, p_t = config.patch_size, config.patch_size_t
    grid = (latent_height // p, latent_width // p)
    base_height, base_width = config.sample_height // p, config.sample_width // p
    if p_t is None:  # CogVideoX 1.0
        crops = get_resize_crop_region_for_grid(grid, base_width, base_height)
        return get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim, crops_coords=crops, grid_size=grid, temporal_size=num_frames,
            device=device,
        )
    return get_3d_rotary_pos_embed(  # CogVideoX 1.5
        embed_dim=config.attention_head_dim,
        crops_coords=None,
        grid_size=grid,
        temporal_size=(num_frames + p_t - 1) // p_t,
        grid_type="slice",
        max_size=(base_height, base_width),
        device=device,
    )


@dataclass(frozen=True)
class CogVideoXFamily(VideoFamily):
    image_to_video: bool = False
    version_1_5: bool = False  # temporal patching, no patch bias, RoPE sliced from a max size
    # Sample with CogVideoXDPMScheduler, trailing timesteps (the official T2V scripts), not the checkpoint's.
    dpm_trailing_sampler: bool = False

    prediction: ClassVar = "v_prediction"
    real_text_len: ClassVar[int] = 226
    latent_frames_dim: ClassVar[int] = 1
    cfg_in_one_batch: ClassVar[bool] = True
    vae_tiled: ClassVar[bool] = True

    @property
    def requires_image(self) -> bool:  # type: ignore[override]
        return self.image_to_video

    @property
    def official_training(self) -> str:  # type: ignore[override]
        name = "CogVideoX1.5-5B" if self.version_1_5 else "CogVideoX-I2V-5B" if self.image_to_video else "CogVideoX-5B"
        return f"train/{name}/03_train.py"

    @property
    def accepts_image(self) -> bool:  # type: ignore[override]
        return self.image_to_video

    @property
    def pipeline_class(self) -> type:
        from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline

        return CogVideoXImageToVideoPipeline if self.image_to_video else CogVideoXPipeline

    # ---- tiny preset ---------------------------------------------------------------------------

    def tiny_sampling(self) -> SamplingConfig:
        return SamplingConfig(num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=6.0)

    @property
    def patch_size_t(self) -> int | None:
        """The published checkpoints' temporal patch (CogVideoX1.5: frames in pairs; 1.0: none)."""
        return 2 if self.version_1_5 else None

    def _tiny_transformer(self, component: str = "transformer"):
        from diffusers import CogVideoXTransformer3DModel

        common = dict(
            num_attention_heads=2,
            attention_head_dim=16,  # >= 16 so the 3D RoPE split (t: d/4, h,w: 3d/8) has even parts
            out_channels=_TINY_Z,
            time_embed_dim=16,
            text_embed_dim=TINY_TEXT_DIM,
            num_layers=2,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=TINY_MAX_SEQUENCE_LENGTH,
            use_rotary_positional_embeddings=True,  # as all 5B checkpoints
        )
        with seeded(f"{self.name}/{component}"):
            if self.version_1_5:
                return CogVideoXTransformer3DModel(
                    in_channels=_TINY_Z, patch_size_t=self.patch_size_t, patch_bias=False, sample_height=16,
                    sample_width=16, sample_frames=9, **common,
                ).eval()
            # I2V: + image latents on channels. The real 5B-I2V also uses learned positional embeddings,
            # which pin it to one resolution; the tiny preset leaves them off so any tiny resolution works.
            in_channels = 2 * _TINY_Z if self.image_to_video else _TINY_Z
            return CogVideoXTransformer3DModel(
                in_channels=in_channels, sample_height=4, sample_width=4, sample_frames=9, **common
            ).eval()

    def _tiny_vae(self):
        from diffusers import AutoencoderKLCogVideoX

        with seeded(f"{self.name}/vae"):
            return AutoencoderKLCogVideoX(
                in_channels=3,
                out_channels=3,
                down_block_types=("CogVideoXDownBlock3D",) * 4,
                up_block_types=("CogVideoXUpBlock3D",) * 4,
                block_out_channels=(8, 8, 8, 8),
                latent_channels=_TINY_Z,
                layers_per_block=1,
                norm_num_groups=2,
                temporal_compression_ratio=4,
                scaling_factor=0.7,  # CogVideoX-5B value
                invert_scale_latents=self.version_1_5,  # as in the CogVideoX1.5 VAE config
            ).eval()

    def tiny_scheduler(self):
        from diffusers import CogVideoXDDIMScheduler

        # The CogVideoX checkpoints' scheduler: CogVideoXDDIMScheduler, zero-terminal-SNR scaled-linear betas,
        # v-prediction, trailing steps.
        return CogVideoXDDIMScheduler(
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

    def sampling_scheduler(self, scheduler):
        if not self.dpm_trailing_sampler:
            return scheduler
        from diffusers import CogVideoXDPMScheduler

        return CogVideoXDPMScheduler.from_config(scheduler.config, timestep_spacing="trailing")

    # ---- real weights --------------------------------------------------------------------------

    def full_size_transformer_class(self) -> type:
        from diffusers import CogVideoXTransformer3DModel

        return CogVideoXTransformer3DModel

    def vae_class(self) -> type:
        from diffusers import AutoencoderKLCogVideoX

        return AutoencoderKLCogVideoX

    def load_denoiser(self, model: ModelConfig):
        from diffusers import CogVideoXDPMScheduler, CogVideoXTransformer3DModel

        transformer = load_transformer(CogVideoXTransformer3DModel, model, "transformer")
        scheduler = CogVideoXDPMScheduler.from_pretrained(model.pretrained, subfolder="scheduler",
                                                          revision=model.revision)
        return transformer, scheduler

    def sampling_shape(self, vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> SamplingShape:
        temporal, spatial = vae["temporal_compression_ratio"], 2 ** (len(vae["block_out_channels"]) - 1)
        fixed = None
        if transformer.get("use_learned_positional_embeddings"):
            fixed = (transformer["sample_height"] * spatial, transformer["sample_width"] * spatial)
        return SamplingShape(int(temporal), int(spatial * transformer["patch_size"]), fixed, dynamic_cfg=True)

    # ---- generation and encoding ---------------------------------------------------------------

    def generation_call(self, pipe, kwargs, image, sampling):
        kwargs["use_dynamic_cfg"] = sampling.use_dynamic_cfg
        if image is not None:
            kwargs["image"] = [image] * len(kwargs["generator"])  # CogVideoX-I2V encodes one image per generator
        return pipe, kwargs

    def encode_video(self, pipe, video):
        vae = pipe.vae
        if self.official_objective:
            return self._official_video_latents(vae, video)
        z = vae_mean(vae, video_to_vae_input(video, vae.device, vae.dtype)).float()  # [1,C,F,H,W]
        z = (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)  # [1,F,C,H,W]
        p_t = self.patch_size_t  # the encoding actor holds no transformer to ask
        if p_t is not None and z.shape[1] % p_t:
            # CogVideoX1.5 patches frames in pairs: repeat the first latent frame in front (official fine-tuning).
            z = torch.cat([z[:, :1].repeat(1, p_t - z.shape[1] % p_t, 1, 1, 1), z], dim=1)
        return z

    def _official_video_latents(self, vae, video: np.ndarray) -> torch.Tensor:
        """02_encode.py: frames / 255 (no [-1,1] shift), ``latent_dist.sample()``, × scaling_factor for 1.5 only;
        03_train.py of CogVideoX1.5 trims the frames to an even count."""
        x = torch.from_numpy(np.ascontiguousarray(video)).to(vae.device, torch.float32)
        x = x.permute(3, 0, 1, 2)[None] / 255.0  # [1,3,F,H,W] in [0,1]
        z = _posterior_sample(vae, x.to(vae.dtype), video).float()
        if self.version_1_5:
            z = z * vae.config.scaling_factor
        z = z.permute(0, 2, 1, 3, 4)  # [1,F,C,H,W]
        return z[:, : z.shape[1] - z.shape[1] % 2] if self.version_1_5 else z

    def encode_image(self, pipe, image, height, width, latent_frames):
        vae = pipe.vae
        if self.official_objective:
            # 03_train.py (I2V): the [0,1] image resized (nearest) to the video, a posterior sample × scaling_factor.
            arr = np.array(image.convert("RGB"))
            x = torch.from_numpy(arr).to(vae.device, torch.float32).permute(2, 0, 1)[None] / 255.0
            x = torch.nn.functional.interpolate(x, size=(height, width))
            z = _posterior_sample(vae, x.unsqueeze(2).to(vae.dtype), arr).float() * vae.config.scaling_factor
            z = z.permute(0, 2, 1, 3, 4)
            return torch.cat([z, z.new_zeros(1, latent_frames - 1, *z.shape[2:])], dim=1)
        pixels = pipe.video_processor.preprocess(image, height=height, width=width)  # [1,3,H,W] in [-1,1]
        z = vae_mean(vae, pixels.unsqueeze(2).to(vae.device, vae.dtype)).float()  # [1,C,1,h,w]
        # CogVideoXImageToVideoPipeline.prepare_latents: scale, then zero-pad over the latent frames.
        z = z.permute(0, 2, 1, 3, 4)
        scale = vae.config.scaling_factor
        z = z / scale if vae.config.invert_scale_latents else z * scale
        padding = z.new_zeros(1, latent_frames - 1, *z.shape[2:])
        return torch.cat([z, padding], dim=1)  # [1,F,C,h,w]

    # ---- training ------------------------------------------------------------------------------

    def sample_timesteps(self, scheduler, batch_size, generator, device):
        num_train = scheduler.config.num_train_timesteps
        t = rand_on(generator, torch.randint, 0, num_train, (batch_size,), dtype=torch.long)
        return t.to(device)

    def noisy_and_target(self, scheduler, latents, noise, timesteps, image_latents=None):
        # image_latents is accepted for a uniform call; CogVideoX-I2V trains every latent frame.
        timesteps = timesteps.to(latents.device)
        return scheduler.add_noise(latents, noise, timesteps), scheduler.get_velocity(latents, noise, timesteps)

    def predict(self, denoiser, noisy, timesteps, prompt_embeds, image_latents):
        """The transformer call of ``CogVideoX*Pipeline.__call__`` (without CFG): ``noisy`` and the
        returned v-prediction are ``[B, F, C, H, W]``; I2V concatenates ``image_latents`` on channels."""
        config = denoiser.config
        batch, frames, _, height, width = noisy.shape
        dtype = denoiser.dtype
        hidden = noisy.to(dtype)
        if image_latents is not None:
            hidden = torch.cat([hidden, batch_like(image_latents.to(hidden), batch)], dim=2)
        rotary = (  # the official 03_train.py calls the transformer without them
            cogvideox_rotary_emb(config, frames, height, width, noisy.device)
            if config.use_rotary_positional_embeddings and not self.official_objective
            else None
        )
        # CogVideoX1.5-I2V has an "ofs" embedding; its pipeline always feeds 2.0.
        ofs = None if config.ofs_embed_dim is None else hidden.new_full((1,), 2.0)
        return denoiser(
            hidden_states=hidden,
            encoder_hidden_states=batch_like(prompt_embeds.to(device=noisy.device, dtype=dtype), batch),
            timestep=timesteps.to(noisy.device),
            ofs=ofs,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]


def _posterior_sample(vae, x: torch.Tensor, source: np.ndarray) -> torch.Tensor:
    """``vae.encode(x).latent_dist.sample()`` under a generator seeded by ``source``'s bytes: the official
    encoding's draw, the same for the same video in every process."""
    generator = torch.Generator(vae.device).manual_seed(zlib.crc32(np.ascontiguousarray(source).tobytes()))
    return vae.encode(x).latent_dist.sample(generator=generator)


COGVIDEOX_T2V = CogVideoXFamily("cogvideox-t2v", ("THUDM/CogVideoX-5b",), dpm_trailing_sampler=True)
COGVIDEOX_I2V = CogVideoXFamily("cogvideox-i2v", ("THUDM/CogVideoX-5b-I2V",), image_to_video=True)
COGVIDEOX15_T2V = CogVideoXFamily("cogvideox1.5-t2v", ("THUDM/CogVideoX1.5-5B",), version_1_5=True,
                                  dpm_trailing_sampler=True)
