"""One Diffusion-DPO micro-batch: shared noise/timestep, policy + reference errors, loss.

Pure training math on a transformer; the DeepSpeed engine only enters as the callable that runs
the policy forward (so its backward hooks are attached). No Ray in here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainers.config import TrainerConfig
from trainers.data import PairBatch, pair_seed
from trainers.dpo import dpo_loss, per_sample_error
from trainers.lora import reference_mode


class PolicyCall:
    """What ``family.predict`` calls: reads ``.config``/``.dtype`` of the diffusers module but
    runs the forward through ``forward`` (the DeepSpeed engine, which hooks its backward
    prologue onto the outputs, or the module itself)."""

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any] | None = None):
        self.config = module.config
        # diffusers' own rule (ModelMixin.dtype): the first floating parameter outside the modules it keeps
        # in float32 (Wan's norms, time embedder, ...), else a bf16 Wan is fed float32 inputs
        self.dtype = getattr(module, "dtype", None) or next(module.parameters()).dtype
        self._forward = forward or module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)


def shared_noise_and_timesteps(
    family, scheduler, batch: PairBatch, seed: int, epoch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: one noise tensor and one timestep, drawn from a generator seeded by
    (seed, epoch, pair_id); winner and loser of a pair get the same ones."""
    noises, ts = [], []
    for pid in batch.pair_ids:
        g = torch.Generator("cpu").manual_seed(pair_seed(seed, epoch, pid))
        ts.append(family.sample_timesteps(scheduler, 1, g, "cpu"))
        noises.append(torch.randn(batch.winner.shape[1:], generator=g, dtype=torch.float32))
    return torch.stack(noises).to(device), torch.cat(ts).to(device)


@dataclass(frozen=True)
class TrainedNetwork:
    """What a micro-batch runs: the family's training math, its noise scheduler, the transformer that
    carries the LoRA, and whether the reference is an adapter of its own (the previous round's LoRA)
    rather than the base network with the adapter disabled."""

    family: Any
    scheduler: Any
    module: torch.nn.Module
    reference_is_adapter: bool = False


def dpo_micro_batch(
    net: TrainedNetwork,
    policy: PolicyCall,
    batch: PairBatch,
    cfg: TrainerConfig,
    epoch: int,
    objective: str | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss (with graph through the policy's LoRA) and metrics of one micro-batch of pairs.

    Winner and loser are concatenated into one batch of 2B so the policy runs one forward and
    the reference one no-grad forward (adapter disabled / reference adapter active).
    ``objective`` (default ``cfg.objective``) ``"sft"``: the loss is the winners' denoising error alone
    (the SFT-on-winners baseline); the DPO metrics are still computed, so both objectives are watched
    alike. ``cfg.loss`` / ``cfg.label_smoothing``: the preference loss (trainers.dpo.preference_loss);
    ``cfg.seed`` with ``epoch`` and each pair id seeds the shared noise and timestep."""
    family, scheduler, module = net.family, net.scheduler, net.module
    device = next(module.parameters()).device
    b = len(batch.pair_ids)
    noise, t = shared_noise_and_timesteps(family, scheduler, batch, cfg.seed, epoch, device)
    x0 = torch.cat([batch.winner, batch.loser]).to(device=device, dtype=torch.float32)
    noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
    prompt = torch.cat([batch.prompt_embeds, batch.prompt_embeds]).to(device)
    image = None if batch.image_latents is None else torch.cat([batch.image_latents] * 2).to(device)
    noisy, target = family.noisy_and_target(scheduler, x0, noise2, t2, image_latents=image)

    # Reference first: no graph is alive while it runs, so peak memory is one policy graph.
    with reference_mode(family.lora_experts(module), net.reference_is_adapter):
        ref_pred = family.predict(PolicyCall(module), noisy, t2, prompt, image)
        ref_err = per_sample_error(ref_pred, target)
    pred = family.predict(policy, noisy, t2, prompt, image)
    err = per_sample_error(pred, target)
    loss, metrics = dpo_loss(err[:b], err[b:], ref_err[:b], ref_err[b:], cfg.beta, cfg.loss, cfg.label_smoothing)
    if (objective or cfg.objective) == "sft":
        loss = err[:b].mean()
        metrics = {**metrics, "dpo_loss": metrics["loss"], "loss": float(loss.detach())}
    return loss, metrics
