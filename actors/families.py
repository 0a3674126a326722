"""Per-family training math for Diffusion-DPO: timesteps, noising, targets and the transformer call.

The trainer does, for a batch of latents ``x0`` (layout of ``actors.models.encode_training_inputs``)::

    family = get_family(model.family)
    t = family.sample_timesteps(scheduler, B, generator, device)
    noisy, target = family.noisy_and_target(scheduler, x0, noise, t, image_latents=image_latents)
    pred = family.predict(transformer, noisy, t, prompt_embeds, image_latents)
    err = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.ndim)))

``pred`` and ``target`` always have the same shape. Winner and loser share ``noise`` and ``t``.

* CogVideoX (all three families): v-prediction. ``t`` is an integer in ``[0, num_train_timesteps)``,
  ``noisy = scheduler.add_noise(x0, noise, t)``, ``target = scheduler.get_velocity(x0, noise, t)``.
* Wan2.2-TI2V: flow matching. ``t = 1000 * sigma`` (float) with sigma drawn from the shift-5 schedule,
  ``noisy = (1 - sigma) x0 + sigma * noise``, ``target = noise - x0``. With image latents the first
  latent frame is the clean condition (``expand_timesteps``), so it is not trained: ``predict`` returns
  zeros there and ``noisy_and_target(..., image_latents=...)`` returns a zero target there, so its
  squared error is exactly 0. (If a caller leaves ``image_latents`` out of ``noisy_and_target`` the
  frame's error is ``|noise - x0|^2``: a constant with no gradient that is identical for a winner and
  a loser sharing noise, because their frame 0 is the same condition — it cancels in the DPO loss.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from actors.errors import InputError

_COGVIDEOX_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# diffusers' WanTransformer3DModel names the original Wan q, k, v, o projections to_q, to_k, to_v,
# to_out.0 in both self-attention (attn1) and cross-attention (attn2).
_WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")

WAN_FLOW_SHIFT = 5.0


@dataclass(frozen=True)
class ModelFamily:
    """Common attributes; subclasses implement the math."""

    name: str
    prediction: Literal["v_prediction", "flow_matching"]
    lora_target_modules: tuple[str, ...]
    pipeline_class: type  # for ``pipeline_class.save_lora_weights``

    def sample_timesteps(
        self, scheduler, batch_size: int, generator: torch.Generator | None, device: str | torch.device
    ) -> torch.Tensor:
        raise NotImplementedError

    def noisy_and_target(
        self,
        scheduler,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        image_latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def predict(
        self,
        transformer,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        image_latents: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError


def _batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-prompt tensors ([1, ...]) are shared by every sample of the batch."""
    return x.expand(batch_size, *x.shape[1:]) if x.shape[0] == 1 and batch_size > 1 else x


def _rand_on(generator: torch.Generator | None, fn, *args, **kwargs) -> torch.Tensor:
    # Draw on the generator's own device so any generator works; callers move the result.
    device = generator.device if generator is not None else "cpu"
    return fn(*args, generator=generator, device=device, **kwargs)


# ------------------------------------------------------------------------------------------------
# CogVideoX: v-prediction on [B, F, C, H, W]
# ------------------------------------------------------------------------------------------------


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
            embed_dim=config.attention_head_dim,
            crops_coords=crops,
            grid_size=grid,
            temporal_size=num_frames,
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
class CogVideoXFamily(ModelFamily):
    def sample_timesteps(self, scheduler, batch_size, generator, device) -> torch.Tensor:
        num_train = scheduler.config.num_train_timesteps
        t = _rand_on(generator, torch.randint, 0, num_train, (batch_size,), dtype=torch.long)
        return t.to(device)

    def noisy_and_target(self, scheduler, latents, noise, timesteps, image_latents=None):
        # image_latents is accepted for a uniform call; CogVideoX-I2V trains every latent frame.
        timesteps = timesteps.to(latents.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps)
        return noisy, target

    def predict(self, transformer, noisy, timesteps, prompt_embeds, image_latents) -> torch.Tensor:
        """The transformer call of ``CogVideoX*Pipeline.__call__`` (without CFG): ``noisy`` and the
        returned v-prediction are ``[B, F, C, H, W]``; I2V concatenates ``image_latents`` on channels."""
        config = transformer.config
        batch, frames, _, height, width = noisy.shape
        dtype = transformer.dtype
        hidden = noisy.to(dtype)
        if image_latents is not None:
            hidden = torch.cat([hidden, _batch(image_latents.to(hidden), batch)], dim=2)
        rotary = (
            cogvideox_rotary_emb(config, frames, height, width, noisy.device)
            if config.use_rotary_positional_embeddings
            else None
        )
        # CogVideoX1.5-I2V has an "ofs" embedding; its pipeline always feeds 2.0.
        ofs = None if config.ofs_embed_dim is None else hidden.new_full((1,), 2.0)
        return transformer(
            hidden_states=hidden,
            encoder_hidden_states=_batch(prompt_embeds.to(device=noisy.device, dtype=dtype), batch),
            timestep=timesteps.to(noisy.device),
            ofs=ofs,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]


# ------------------------------------------------------------------------------------------------
# Wan2.2-TI2V: flow matching on [B, C, F, H, W]
# ------------------------------------------------------------------------------------------------


def _sigmas(timesteps: torch.Tensor, scheduler, ndim: int) -> torch.Tensor:
    sigma = timesteps.float() / scheduler.config.num_train_timesteps
    return sigma.view(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True)
class WanFamily(ModelFamily):
    flow_shift: float = WAN_FLOW_SHIFT

    def sample_timesteps(self, scheduler, batch_size, generator, device) -> torch.Tensor:
        """``1000 * sigma`` with ``sigma = s*u / (1 + (s-1)*u)``, ``u ~ U(0,1)``, ``s = 5``: the shifted
        schedule Wan samples with, so training sees the noise levels inference uses."""
        u = _rand_on(generator, torch.rand, (batch_size,), dtype=torch.float32)
        sigma = self.flow_shift * u / (1.0 + (self.flow_shift - 1.0) * u)
        return (sigma * scheduler.config.num_train_timesteps).to(device)

    def noisy_and_target(self, scheduler, latents, noise, timesteps, image_latents=None):
        sigma = _sigmas(timesteps.to(latents.device), scheduler, latents.ndim)
        noisy = (1.0 - sigma) * latents + sigma * noise
        target = noise - latents
        if image_latents is not None:  # the condition frame is given, not denoised: zero target
            target = torch.cat([torch.zeros_like(target[:, :, :1]), target[:, :, 1:]], dim=2)
        return noisy.to(latents.dtype), target.to(latents.dtype)

    def predict(self, transformer, noisy, timesteps, prompt_embeds, image_latents) -> torch.Tensor:
        """The transformer call of ``WanPipeline`` / ``WanImageToVideoPipeline(expand_timesteps=True)``
        (without CFG): ``noisy`` and the returned flow ``noise - x0`` are ``[B, C, F, H, W]``.

        With ``image_latents`` ``[1|B, C, 1, H, W]``: latent frame 0 is replaced by the condition, its
        tokens get timestep 0 (the rest ``timesteps``), and frame 0 of the returned prediction is zeroed
        so that, against ``noisy_and_target(..., image_latents=...)``, it carries no loss."""
        batch = noisy.shape[0]
        dtype = transformer.dtype
        hidden = noisy.to(dtype)
        timesteps = timesteps.to(device=noisy.device, dtype=torch.float32)
        if image_latents is not None:
            condition = _batch(image_latents.to(hidden), batch)
            hidden = torch.cat([condition, hidden[:, :, 1:]], dim=2)
            timesteps = _per_token_timesteps(transformer.config.patch_size, noisy.shape, timesteps)
        pred = transformer(
            hidden_states=hidden,
            timestep=timesteps,
            encoder_hidden_states=_batch(prompt_embeds.to(device=noisy.device, dtype=dtype), batch),
            return_dict=False,
        )[0]
        if image_latents is not None:
            pred = torch.cat([torch.zeros_like(pred[:, :, :1]), pred[:, :, 1:]], dim=2)
        return pred


def _per_token_timesteps(patch_size, shape, timesteps: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, tokens]: 0 for the condition frame's tokens, ``t`` elsewhere (the pipelines'
    ``first_frame_mask[0][0][:, ::p_h, ::p_w] * t``)."""
    p_t, p_h, p_w = patch_size
    _, _, frames, height, width = shape
    mask = torch.ones(frames // p_t, height // p_h, width // p_w, device=timesteps.device)
    mask[0] = 0
    return mask.flatten().unsqueeze(0) * timesteps.unsqueeze(1)


# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _families() -> dict[str, ModelFamily]:
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline, WanPipeline

    return {
        "cogvideox-t2v": CogVideoXFamily("cogvideox-t2v", "v_prediction", _COGVIDEOX_LORA_TARGETS, CogVideoXPipeline),
        "cogvideox-i2v": CogVideoXFamily(
            "cogvideox-i2v", "v_prediction", _COGVIDEOX_LORA_TARGETS, CogVideoXImageToVideoPipeline
        ),
        "cogvideox1.5-t2v": CogVideoXFamily(
            "cogvideox1.5-t2v", "v_prediction", _COGVIDEOX_LORA_TARGETS, CogVideoXPipeline
        ),
        "wan2.2-ti2v": WanFamily("wan2.2-ti2v", "flow_matching", _WAN_LORA_TARGETS, WanPipeline),
    }


def get_family(name: str) -> ModelFamily:
    """The training math of ``name`` (one of ``actors.models.FAMILIES``)."""
    families = _families()
    if name not in families:
        raise InputError(f"model.family: unknown family {name!r} (expected one of {', '.join(families)})")
    return families[name]
