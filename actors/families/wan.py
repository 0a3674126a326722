"""What the Wan families share: flow matching on latents ``[B, C, F, H, W]`` through diffusers'
``WanPipeline`` (UMT5 text encoder, ``AutoencoderKLWan`` normalised with its ``latents_mean`` /
``latents_std``, ``WanTransformer3DModel``, UniPC on shifted flow sigmas).

* Training: ``t = 1000 * sigma`` with sigma drawn from the scheduler's own shifted schedule
  (``flow_shift``), ``noisy = (1 - sigma) x0 + sigma * noise``, ``target = noise - x0``.
* The VAE runs in float32 (the pipeline casts latents to the VAE's dtype before decoding); the
  transformer and text encoder in ``model.dtype``.

The family modules (``wan21_t2v``, ``wan22_ti2v``, ``wan22_a14b``) give the tiny preset's sizes,
the hub ids and what differs (image conditioning, a second expert).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from actors.families.base import (
    VideoFamily,
    batch_like,
    load_transformer,
    rand_on,
    vae_mean,
    video_to_vae_input,
)
from actors.families.tiny import TINY_SEED, TINY_TEXT_DIM, seeded
from actors.model_config import ModelConfig, SamplingShape


def normalise_latents(vae, z: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return (z - mean) / std


def flow_sigmas(timesteps: torch.Tensor, scheduler, ndim: int) -> torch.Tensor:
    sigma = timesteps.float() / scheduler.config.num_train_timesteps
    return sigma.view(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class WanFamily(VideoFamily):
    """A Wan model: subclasses give ``_tiny_transformer_kwargs`` and ``_tiny_vae_kwargs``."""

    flow_shift: float = 5.0  # the tiny scheduler's; real checkpoints carry theirs in scheduler_config.json

    prediction: ClassVar = "flow_matching"
    real_text_len: ClassVar[int] = 512
    latent_frames_dim: ClassVar[int] = 2
    umt5_text_encoder: ClassVar[bool] = True
    vae_float32: ClassVar[bool] = True
    tiny_latent_channels: ClassVar[int]

    @property
    def pipeline_class(self) -> type:
        from diffusers import WanPipeline

        return WanPipeline

    # ---- tiny preset ---------------------------------------------------------------------------

    def _tiny_transformer_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _tiny_vae_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def _tiny_transformer(self, component: str = "transformer"):
        from diffusers import WanTransformer3DModel

        with seeded(f"{self.name}/{component}"):
            return WanTransformer3DModel(**self._tiny_transformer_kwargs()).eval()

    def _tiny_vae(self):
        from diffusers import AutoencoderKLWan

        with seeded(f"{self.name}/vae"):
            z = self.tiny_latent_channels
            gen = torch.Generator().manual_seed(TINY_SEED)
            return AutoencoderKLWan(
                z_dim=z,
                latents_mean=(torch.randn(z, generator=gen) * 0.1).tolist(),
                latents_std=(1.0 + torch.rand(z, generator=gen)).tolist(),
                **self._tiny_vae_kwargs(),
            ).eval()

    def tiny_scheduler(self):
        from diffusers import UniPCMultistepScheduler

        # The Wan scheduler configs: UniPC on flow sigmas with the family's shift.
        return UniPCMultistepScheduler(
            num_train_timesteps=1000,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=self.flow_shift,
            solver_order=2,
        )

    # ---- real weights --------------------------------------------------------------------------

    def full_size_transformer_class(self) -> type:
        from diffusers import WanTransformer3DModel

        return WanTransformer3DModel

    def vae_class(self) -> type:
        from diffusers import AutoencoderKLWan

        return AutoencoderKLWan

    def _real_scheduler(self, model: ModelConfig):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler.from_pretrained(model.pretrained, subfolder="scheduler", revision=model.revision)

    def load_denoiser(self, model: ModelConfig):
        from diffusers import WanTransformer3DModel

        transformer = load_transformer(WanTransformer3DModel, model, "transformer")
        return transformer, self._real_scheduler(model)

    def sampling_shape(self, vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> SamplingShape:
        patch = transformer["patch_size"]
        patch = patch[-1] if isinstance(patch, (list, tuple)) else patch
        return SamplingShape(int(vae["scale_factor_temporal"]), int(vae["scale_factor_spatial"] * patch))

    # ---- encoding ------------------------------------------------------------------------------

    def encode_video(self, pipe, video):
        vae = pipe.vae
        z = vae_mean(vae, video_to_vae_input(video, vae.device, vae.dtype)).float()  # [1,C,F,H,W]
        return normalise_latents(vae, z)

    # ---- training ------------------------------------------------------------------------------

    def sample_timesteps(self, scheduler, batch_size, generator, device):
        """``1000 * sigma`` with ``sigma = s*u / (1 + (s-1)*u)``, ``u ~ U(0,1)``, ``s`` the scheduler's
        ``flow_shift``: the shifted schedule it samples with, so training sees the noise levels inference uses."""
        shift = float(scheduler.config.flow_shift)
        u = rand_on(generator, torch.rand, (batch_size,), dtype=torch.float32)
        sigma = shift * u / (1.0 + (shift - 1.0) * u)
        return (sigma * scheduler.config.num_train_timesteps).to(device)

    def noisy_and_target(self, scheduler, latents, noise, timesteps, image_latents=None):
        sigma = flow_sigmas(timesteps.to(latents.device), scheduler, latents.ndim)
        noisy = (1.0 - sigma) * latents + sigma * noise
        return noisy.to(latents.dtype), (noise - latents).to(latents.dtype)

    def predict(self, denoiser, noisy, timesteps, prompt_embeds, image_latents):
        """The transformer call of ``WanPipeline.__call__`` (without CFG): ``noisy`` and the returned
        flow ``noise - x0`` are ``[B, C, F, H, W]``."""
        batch = noisy.shape[0]
        dtype = denoiser.dtype
        return denoiser(
            hidden_states=noisy.to(dtype),
            timestep=timesteps.to(device=noisy.device, dtype=torch.float32),
            encoder_hidden_states=batch_like(prompt_embeds.to(device=noisy.device, dtype=dtype), batch),
            return_dict=False,
        )[0]


def tiny_wan_transformer_kwargs(latent_channels: int) -> dict[str, Any]:
    """A 2-layer ``WanTransformer3DModel`` with the real layout: patch (1,2,2), in/out = VAE z_dim,
    RMS qk-norm across heads, cross-attention norm."""
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=latent_channels,
        out_channels=latent_channels,
        text_dim=TINY_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=None,
        added_kv_proj_dim=None,
        rope_max_seq_len=64,
    )
