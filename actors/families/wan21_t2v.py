"""Wan2.1-T2V (1.3B, the research workhorse that fits one GPU, and 14B): text-to-video with the
Wan2.1 VAE (16 latent channels, 8x spatial, 4x temporal) and one transformer; at 480p its
scheduler shifts the flow sigmas by 3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from actors.families.wan import WanFamily, tiny_wan_transformer_kwargs
from actors.model_config import SamplingConfig


def tiny_wan21_vae_kwargs() -> dict:
    """The Wan2.1 VAE's structure at width 8: 3 RGB channels in and out, no pixel patchify, causal 3D
    convolutions, 3 spatial downsamples (8x) of which 2 also temporal (4x)."""
    return dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                is_residual=False, in_channels=3, out_channels=3, patch_size=None, scale_factor_spatial=8,
                scale_factor_temporal=4)


@dataclass(frozen=True)
class Wan21T2VFamily(WanFamily):
    flow_shift: float = 3.0
    tiny_latent_channels: ClassVar[int] = 16  # as the real Wan2.1 VAE

    def tiny_sampling(self) -> SamplingConfig:
        return SamplingConfig(num_frames=9, height=32, width=32, num_inference_steps=2, guidance_scale=5.0)

    def _tiny_transformer_kwargs(self):
        return tiny_wan_transformer_kwargs(self.tiny_latent_channels)

    def _tiny_vae_kwargs(self):
        return tiny_wan21_vae_kwargs()


WAN21_T2V = Wan21T2VFamily("wan2.1-t2v", ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"))
