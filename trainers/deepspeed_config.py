"""DeepSpeed config + LR schedule for the DPO trainer (distribution only, no DPO math)."""

from __future__ import annotations

import math
from typing import Any

import torch

from actors.errors import InputError
from trainers.config import TrainerConfig


def resolve_precision(cfg: TrainerConfig, device_type: str) -> str:
    """"bf16" or "fp32": "auto" means bf16 on GPU (paper setting), fp32 on CPU."""
    if cfg.precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return cfg.precision


def gradient_accumulation_steps(cfg: TrainerConfig, world_size: int) -> int:
    """effective_batch = micro_batch × world_size × accumulation; refuse a non-integer split."""
    per_pass = cfg.micro_batch_size * world_size
    if cfg.effective_batch_size % per_pass:
        raise InputError(
            f"trainer.effective_batch_size={cfg.effective_batch_size} is not a multiple of "
            f"trainer.micro_batch_size × trainer.num_workers = {cfg.micro_batch_size}×{world_size}"
        )
    return cfg.effective_batch_size // per_pass


def build_deepspeed_config(cfg: TrainerConfig, world_size: int, device_type: str) -> dict[str, Any]:
    """The DeepSpeed JSON config for workers on ``device_type`` ("cuda" or "cpu"). The LR schedule
    is *not* in here: see :func:`lr_lambda`."""
    accum = gradient_accumulation_steps(cfg, world_size)
    bf16 = resolve_precision(cfg, device_type) == "bf16"
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if cfg.zero_stage == 3:
        # DeepSpeed's defaults (1e9 each) keep every gathered parameter of a model under 1B elements alive
        # between its uses: the frozen base is then held whole on every rank, next to its partition, and
        # ZeRO-3 saves nothing (benchmarks/trainer_scale.py). Release each module's parameters after use.
        zero.update({"stage3_max_live_parameters": cfg.zero3_max_live_parameters,
                     "stage3_prefetch_bucket_size": cfg.zero3_prefetch_bucket_size,
                     "stage3_max_reuse_distance": cfg.zero3_max_reuse_distance})
    return {
        "train_batch_size": cfg.effective_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.learning_rate,
                "betas": [0.9, 0.999],
                "eps": cfg.adam_eps,
                "weight_decay": cfg.weight_decay,
                # torch.optim.AdamW instead of DeepSpeed's fused/CPU Adam: no op is compiled
                # (CPU, fresh containers) and the optimizer state has the torch layout that the
                # pickle-free checkpoint in trainers/checkpoint.py reads and writes. For LoRA
                # (~1% of params) the fused kernel's speed-up is negligible.
                "torch_adam": True,
            },
        },
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }


# DeepSpeed's reduce_bucket_size when the config gives none (elements).
DEEPSPEED_REDUCE_BUCKET = 500_000_000


def size_gradient_bucket(ds_config: dict[str, Any], trainable_params: int) -> dict[str, Any]:
    """``ds_config`` with ZeRO's gradient bucket no larger than the trainable parameters. With
    contiguous gradients ZeRO allocates a ``reduce_bucket_size``-element buffer on every GPU up front;
    DeepSpeed's default (5e8) is 0.93 GiB in bf16 for a LoRA of 6.6e7 (CogVideoX-5B, r=64) that never
    fills a tenth of it. One bucket still holds every gradient: one reduction per step, as before."""
    zero = {**ds_config["zero_optimization"],
            "reduce_bucket_size": max(1, min(DEEPSPEED_REDUCE_BUCKET, trainable_params))}
    return {**ds_config, "zero_optimization": zero}


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate for the optimizer update with 0-based index ``step``:
    linear warmup (step+1)/warmup_steps (the first update is not wasted at lr 0), then cosine from 1
    to ``min_lr_ratio`` reached at ``total_steps``. The one LR schedule shape of the project (the DPO
    trainer's, and the miniature experiment's model training)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(cfg: TrainerConfig):
    """:func:`warmup_cosine_factor` over ``warmup_steps`` and ``max_steps`` down to ``min_lr_ratio``,
    as a function of the update index for ``torch.optim.lr_scheduler.LambdaLR`` (DeepSpeed's
    WarmupCosineLR forbids warmup 0 and defaults to a log warmup)."""
    warmup, total, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio

    def f(s: int) -> float:
        return warmup_cosine_factor(s, warmup, total, floor)

    return f


def make_lr_scheduler(cfg: TrainerConfig):
    """Callable for ``deepspeed.initialize(lr_scheduler=...)``: DeepSpeed hands it the (ZeRO-
    wrapped) optimizer; LambdaLR needs the inner torch optimizer, whose param_groups ZeRO
    shares, so lr changes reach the real update. DeepSpeed steps it after every update."""

    def build(optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        inner = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer
        return torch.optim.lr_scheduler.LambdaLR(inner, lr_lambda(cfg))

    return build
