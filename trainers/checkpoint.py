"""Pickle-free trainer checkpoints for DeepSpeed ZeRO 1/2/3 (LoRA weights + AdamW state).

Why not ``engine.save_checkpoint``: DeepSpeed writes torch pickles and reads them back with
``torch.load(weights_only=False)``, and the project rule is no pickle on any data path read back
from storage (a checkpoint on shared S3 would then be code execution). Only the LoRA matrices
train, so their full fp32 values and AdamW moments are small: we gather them with DeepSpeed's
tensor-fragment API (``safe_get_full_*``, works for ZeRO 1/2/3, independent of world size) and
store them as safetensors; counters go to JSON. Randomness needs no saved state: noise and
timesteps derive from (seed, epoch, pair_id) and dropout RNG from (seed, step, rank).

Layout of one checkpoint directory::

    trainer_state.safetensors   "<param>::fp32" / "::exp_avg" / "::exp_avg_sq"   (rank 0)
    trainer_state.json          step, epoch, position, world_size, ...          (rank 0)
    rank-<r>.json               pair_ids this rank consumed in the current epoch (every rank)
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)
from safetensors.torch import load_file, save_file

ADAM_KEYS = ("exp_avg", "exp_avg_sq")
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    opt = engine.optimizer
    return opt if isinstance(opt, torch.optim.Optimizer) else opt.optimizer


def gather_state(engine, named_params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Full fp32 values + AdamW moments of the trainable params. Collective: all ranks call."""
    out: dict[str, torch.Tensor] = {}
    for name, p in named_params:
        out[f"{name}::fp32"] = safe_get_full_fp32_param(p).detach().float().cpu().contiguous()
        for key in ADAM_KEYS:
            out[f"{name}::{key}"] = safe_get_full_optimizer_state(p, key).detach().float().cpu().contiguous()
    return out


def save(
    ckpt_dir: str, rank: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], rank_state: dict[str, Any]
) -> None:
    os.makedirs(ckpt_dir, exist_ok=True)
    if rank == 0:
        save_file(tensors, os.path.join(ckpt_dir, STATE_TENSORS))
        with open(os.path.join(ckpt_dir, STATE_JSON), "w") as f:
            json.dump(state, f)
    with open(os.path.join(ckpt_dir, f"rank-{rank}.json"), "w") as f:
        json.dump(rank_state, f)


def load(ckpt_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[int, dict[str, Any]]]:
    """(tensors, state, {rank: rank_state}) of a checkpoint directory (any world size)."""
    tensors = load_file(os.path.join(ckpt_dir, STATE_TENSORS))
    with open(os.path.join(ckpt_dir, STATE_JSON)) as f:
        state = json.load(f)
    ranks = {}
    for fn in os.listdir(ckpt_dir):
        if fn.startswith("rank-") and fn.endswith(".json"):
            with open(os.path.join(ckpt_dir, fn)) as f:
                ranks[int(fn[5:-5])] = json.load(f)
    return tensors, state, ranks


def _ensure_adam_state(engine, adam_step: int) -> None:
    """torch AdamW creates its state lazily at the first step; a resumed run must create it
    (zeros, then overwritten) and re-link ZeRO's per-param views onto it."""
    opt = _inner_optimizer(engine)
    # ZeRO-3 hands its flat fp32 partitions to the optimizer only inside step() (param_groups are
    # empty between steps); its state is keyed by those partitions.
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    params = flat if flat is not None else [p for group in opt.param_groups for p in group["params"]]
    for p in params:
        st = opt.state[p]
        for key in ADAM_KEYS:
            if key not in st:
                st[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["step"] = torch.tensor(float(adam_step), dtype=torch.float32)
    zero_opt = engine.optimizer
    if hasattr(zero_opt, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1/2 fragment links
        zero_opt._hp_optimizer_states_linked = False
        zero_opt._lazy_init_hp_params_optimizer_state()


def restore(
    engine,
    named_params: list[tuple[str, torch.nn.Parameter]],
    tensors: dict[str, torch.Tensor],
    step: int,
    accum_steps: int,
    zero_stage: int,
) -> None:
    """Put LoRA weights, AdamW moments, LR schedule and DeepSpeed's counters back. Collective."""
    _ensure_adam_state(engine, adam_step=step)
    device = next(p for _, p in named_params).device
    for name, p in named_params:
        full = tensors[f"{name}::fp32"].to(device)
        safe_set_full_fp32_param(p, full)  # fp32 master copy held by the ZeRO optimizer
        for key in ADAM_KEYS:
            safe_set_full_optimizer_state(p, tensors[f"{name}::{key}"].to(device), key)
    load_weights(named_params, tensors, zero_stage)
    sched = engine.lr_scheduler
    if sched is not None:  # LambdaLR: the lr of the next update is base_lr * f(step)
        sched.last_epoch = step
        lrs = [base * lam(step) for base, lam in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs
    # DeepSpeed decides accumulation boundaries from micro_steps: keep them aligned.
    engine.global_steps = step
    engine.micro_steps = step * accum_steps
    engine.global_samples = step * engine.train_batch_size()


def load_weights(named_params: list[tuple[str, torch.nn.Parameter]], tensors: dict[str, torch.Tensor],
                 zero_stage: int) -> None:
    """Copy a checkpoint's LoRA weights into the module's (possibly bf16, possibly ZeRO-3-partitioned)
    working copy. Collective under ZeRO-3 (rank 0's values are the ones kept)."""
    params = [p for _, p in named_params]
    ctx: Any = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with ctx, torch.no_grad():
        for name, p in named_params:
            p.data.copy_(tensors[f"{name}::fp32"].to(p.device, p.dtype).reshape(p.data.shape))
