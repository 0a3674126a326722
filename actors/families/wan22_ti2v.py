"""Wan2.2-TI2V-5B: text- and image-to-video in one model (Wan2.2 VAE: 48 channels, 16x spatial).

With an image, generation runs ``WanImageToVideoPipeline(expand_timesteps=True)`` on the same
modules: latent frame 0 is the clean image latent (``[1, C, 1, H, W]``), its tokens get timestep 0
and it is not denoised. Training follows: ``noisy_and_target(..., image_latents=...)`` gives a zero
target there and ``predict`` returns zeros there, so its squared error is exactly 0. (Leaving
``image_latents`` out of ``noisy_and_target`` makes the frame's error ``|noise - x0|^2``: a constant
with no gradient, identical for a winner and a loser sharing noise, since their frame 0 is the same
condition — it cancels in the DPO loss.)

``official_objective`` (trainer.official_objective), as the official ``train/Wan2.2-TI2V-5B/03_train.py``:
an integer ``t ~ U{1..999}`` noises at the shifted ``sigma = s t' / (1 + (s-1) t')`` (``t' = t/1000``) but
the transformer is fed the raw ``t`` (inference feeds ``1000 sigma``); latent frame 0's tokens always get
timestep 0 (with or without an image) and frame 0 stays in the loss (target ``noise - x0`` there too); the
image is scaled to cover the video size and centre-cropped (the pipeline stretches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from actors.families.base import batch_like, rand_on, vae_mean
from actors.families.wan import WanFamily, flow_sigmas, normalise_latents, tiny_wan_transformer_kwargs
from actors.model_config import SamplingConfig


def per_token_timesteps(patch_size, shape, timesteps: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, tokens]: 0 for the condition frame's tokens, ``t`` elsewhere (the pipelines'
    ``first_frame_mask[0][0][:, ::p_h, ::p_w] * t``)."""
    p_t, p_h, p_w = patch_size
    _, _, frames, height, width = shape
    mask = torch.ones(frames // p_t, height // p_h, width // p_w, device=timesteps.device)
    mask[0] = 0
    return mask.flatten().unsqueeze(0) * timesteps.unsqueeze(1)


@dataclass(frozen=True)
class Wan22TI2VFamily(WanFamily):
    accepts_image: ClassVar[bool] = True
    tiny_latent_channels: ClassVar[int] = 48  # as the real Wan2.2 VAE
    official_training: ClassVar[str | None] = "train/Wan2.2-TI2V-5B/03_train.py"

    def tiny_sampling(self) -> SamplingConfig:
        # The VAE compresses 16x spatially and the transformer patches 2x2.
        return SamplingConfig(num_frames=9, height=64, width=64, num_inference_steps=2, guidance_scale=5.0)

    def _tiny_transformer_kwargs(self):
        return tiny_wan_transformer_kwargs(self.tiny_latent_channels)

    def _tiny_vae_kwargs(self):
        # Wan2.2 VAE structure: 2x2 pixel patchify (12 input channels), residual blocks, 16x/4x compression.
        return dict(base_dim=8, decoder_base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                    patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)

    def _tiny_pipeline_extras(self):
        return {"expand_timesteps": True}  # as its model_index.json

    def generation_call(self, pipe, kwargs, image, sampling):
        if image is None:
            return pipe, kwargs
        kwargs["image"] = image  # encoded once and shared by the batch
        if "prompt_embeds" in kwargs:  # encoded by the text stage
            return _image_pipeline(pipe), kwargs
        # diffusers' WanImageToVideoPipeline cleans prompts with ftfy unconditionally (an optional
        # package); WanPipeline.encode_prompt guards it, so the embeddings are made there.
        # Under no_grad, as the pipelines encode (autograd mode changes the float rounding).
        with torch.no_grad():
            kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"] = pipe.encode_prompt(
                kwargs.pop("prompt"),
                negative_prompt=kwargs.pop("negative_prompt", None),
                do_classifier_free_guidance=sampling.guidance_scale > 1.0,
                max_sequence_length=kwargs["max_sequence_length"],
                device=pipe._execution_device,
            )
        return _image_pipeline(pipe), kwargs

    def encode_image(self, pipe, image, height, width, latent_frames):
        vae = pipe.vae
        # official 02_encode.py: scaled to cover the size, centre-cropped; else stretched, as the pipeline does
        resize_mode = "crop" if self.official_objective else "default"
        pixels = pipe.video_processor.preprocess(image, height=height, width=width, resize_mode=resize_mode)
        z = vae_mean(vae, pixels.unsqueeze(2).to(vae.device, vae.dtype)).float()  # [1,C,1,h,w]
        return normalise_latents(vae, z)  # replaces latent frame 0 (expand_timesteps)

    def condition_latents(self, latents, image_latents):
        # What the pipeline's own denoised latents hold: it pastes the condition back before decoding.
        latents[:, :, :1] = image_latents
        return latents

    def sample_timesteps(self, scheduler, batch_size, generator, device):
        if not self.official_objective:
            return super().sample_timesteps(scheduler, batch_size, generator, device)
        num_train = scheduler.config.num_train_timesteps
        return rand_on(generator, torch.randint, 1, num_train, (batch_size,)).float().to(device)

    def noisy_and_target(self, scheduler, latents, noise, timesteps, image_latents=None):
        if self.official_objective:  # noised at the shifted sigma of the raw t; every frame in the loss
            shift = float(scheduler.config.flow_shift)
            u = flow_sigmas(timesteps.to(latents.device), scheduler, latents.ndim)
            sigma = shift * u / (1.0 + (shift - 1.0) * u)
            noisy = (1.0 - sigma) * latents + sigma * noise
            return noisy.to(latents.dtype), (noise - latents).to(latents.dtype)
        noisy, target = super().noisy_and_target(scheduler, latents, noise, timesteps)
        if image_latents is not None:  # the condition frame is given, not denoised: zero target
            target = torch.cat([torch.zeros_like(target[:, :, :1]), target[:, :, 1:]], dim=2)
        return noisy, target

    def predict(self, denoiser, noisy, timesteps, prompt_embeds, image_latents):
        """With ``image_latents`` ``[1|B, C, 1, H, W]``: latent frame 0 is replaced by the condition, its
        tokens get timestep 0 (the rest ``timesteps``), and frame 0 of the returned prediction is zeroed
        so that, against ``noisy_and_target(..., image_latents=...)``, it carries no loss."""
        if image_latents is None and not self.official_objective:
            return super().predict(denoiser, noisy, timesteps, prompt_embeds, None)
        batch = noisy.shape[0]
        dtype = denoiser.dtype
        hidden = noisy.to(dtype)
        if image_latents is not None:
            condition = batch_like(image_latents.to(device=noisy.device, dtype=dtype), batch)
            hidden = torch.cat([condition, hidden[:, :, 1:]], dim=2)
        t = per_token_timesteps(denoiser.config.patch_size, noisy.shape,
                                timesteps.to(device=noisy.device, dtype=torch.float32))
        pred = denoiser(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=batch_like(prompt_embeds.to(device=noisy.device, dtype=dtype), batch),
            return_dict=False,
        )[0]
        if self.official_objective:  # frame 0's prediction stays in the loss
            return pred
        return torch.cat([torch.zeros_like(pred[:, :, :1]), pred[:, :, 1:]], dim=2)


def _image_pipeline(pipe):
    """WanImageToVideoPipeline with ``expand_timesteps`` sharing every module (and so any loaded LoRA)
    with the text-to-video pipeline."""
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


WAN22_TI2V = Wan22TI2VFamily("wan2.2-ti2v", ("Wan-AI/Wan2.2-TI2V-5B-Diffusers",))
