"""Wan2.2-T2V-A14B: two 14B expert transformers in one ``WanPipeline`` (Wan2.1 VAE). ``transformer``
denoises the high-noise steps (``t >= boundary_ratio * num_train_timesteps``), ``transformer_2`` the
low-noise ones; the pipeline switches between them by timestep.

Diffusion-DPO trains a LoRA on each expert. The training denoiser (``WanExperts``) routes every
sample by its sampled timestep to the expert that serves that timestep at inference, so each LoRA
learns exactly the noise levels its expert sees. The two adapters export as two diffusers files
(``pytorch_lora_weights.safetensors`` and ``pytorch_lora_weights_transformer_2.safetensors``) and
load back with ``pipe.load_lora_weights(dir, weight_name=...)``, the second with
``load_into_transformer_2=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from actors.families.base import cast_like_from_pretrained, load_transformer, lora_weight_name
from actors.families.wan import WanFamily, tiny_wan_transformer_kwargs
from actors.families.wan21_t2v import tiny_wan21_vae_kwargs
from actors.model_config import ModelConfig, SamplingConfig, SamplingShape


class WanExperts(torch.nn.Module):
    """The two experts as one network for the trainer (one DeepSpeed engine, one optimizer).
    ``forward`` takes the transformer's arguments and routes each sample by its timestep."""

    def __init__(self, transformer: torch.nn.Module, transformer_2: torch.nn.Module, boundary_timestep: float):
        super().__init__()
        self.transformer, self.transformer_2 = transformer, transformer_2
        self.boundary_timestep = float(boundary_timestep)

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False) -> tuple[torch.Tensor]:
        high = timestep >= self.boundary_timestep
        out = None
        for expert, rows in ((self.transformer, high), (self.transformer_2, ~high)):
            if not rows.any():
                if torch.is_grad_enabled():
                    # Every rank runs every expert each step, so ZeRO's gradient reductions line up;
                    # a zero-weighted forward of one sample gives this expert zero gradients.
                    dummy = expert(hidden_states=hidden_states[:1], timestep=timestep[:1],
                                   encoder_hidden_states=encoder_hidden_states[:1], return_dict=False)[0]
                    out = (0.0 * dummy.sum()) if out is None else out + 0.0 * dummy.sum()
                continue
            pred = expert(hidden_states=hidden_states[rows], timestep=timestep[rows],
                          encoder_hidden_states=encoder_hidden_states[rows], return_dict=False)[0]
            full = pred.new_zeros(hidden_states.shape[0], *pred.shape[1:])
            full[rows] = pred
            out = full if out is None else out + full
        return (out,)


@dataclass(frozen=True)
class Wan22A14BFamily(WanFamily):
    flow_shift: float = 12.0  # Wan2.2-T2V-A14B's sample shift
    boundary_ratio: float = 0.875  # its switch from the high-noise to the low-noise expert

    tiny_latent_channels: ClassVar[int] = 16  # the Wan2.1 VAE
    experts: ClassVar[tuple[str, ...]] = ("transformer", "transformer_2")

    def tiny_sampling(self) -> SamplingConfig:
        # 4 steps: with shift 12 and boundary 0.875, both experts denoise some of them.
        return SamplingConfig(num_frames=9, height=32, width=32, num_inference_steps=4, guidance_scale=4.0)

    def sampling_shape(self, vae, transformer) -> SamplingShape:
        return replace(super().sampling_shape(vae, transformer), second_expert=True)

    def generation_call(self, pipe, kwargs, image, sampling):
        if sampling.guidance_scale_2 is not None:  # the low-noise expert's own guidance (official: 3.0 vs 4.0)
            kwargs["guidance_scale_2"] = sampling.guidance_scale_2
        return super().generation_call(pipe, kwargs, image, sampling)

    def _tiny_transformer_kwargs(self):
        return tiny_wan_transformer_kwargs(self.tiny_latent_channels)

    def _tiny_vae_kwargs(self):
        return tiny_wan21_vae_kwargs()

    def _tiny_pipeline_extras(self):
        return {"boundary_ratio": self.boundary_ratio}

    def _boundary_timestep(self, scheduler, boundary_ratio: float) -> float:
        return boundary_ratio * scheduler.config.num_train_timesteps

    def tiny_denoiser(self, dtype: torch.dtype):
        high, low = self._tiny_transformer(), self._tiny_transformer("transformer_2")
        for expert in (high, low):
            cast_like_from_pretrained(expert, dtype)
        scheduler = self.tiny_scheduler()
        return WanExperts(high, low, self._boundary_timestep(scheduler, self.boundary_ratio)), scheduler

    def load_denoiser(self, model: ModelConfig):
        from diffusers import DiffusionPipeline, WanTransformer3DModel

        experts = [load_transformer(WanTransformer3DModel, model, name) for name in self.experts]
        # The boundary is the checkpoint's (model_index.json), so training routes as its pipeline does.
        boundary = DiffusionPipeline.load_config(model.pretrained, revision=model.revision)["boundary_ratio"]
        scheduler = self._real_scheduler(model)
        return WanExperts(*experts, self._boundary_timestep(scheduler, boundary)), scheduler

    def lora_experts(self, denoiser):
        return {"transformer": denoiser.transformer, "transformer_2": denoiser.transformer_2}

    def load_lora(self, pipe, lora_dir, adapter_name):
        pipe.load_lora_weights(lora_dir, weight_name=lora_weight_name("transformer"), adapter_name=adapter_name)
        pipe.load_lora_weights(lora_dir, weight_name=lora_weight_name("transformer_2"), adapter_name=adapter_name,
                               load_into_transformer_2=True)


WAN22_A14B = Wan22A14BFamily("wan2.2-t2v-a14b", ("Wan-AI/Wan2.2-T2V-A14B-Diffusers",))
