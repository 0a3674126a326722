"""The Ray Train worker loop: DeepSpeed engine, data shard iteration, checkpoints, reports.

Distribution only; the DPO math is in trainers.step / trainers.dpo.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np
import torch

from actors.errors import InputError
from trainers.storage_dirs import local_copy, upload_dir
from trainers.tracking import Tracker

logger = logging.getLogger("videogpa.trainer")

FAULT_ENV = "VIDEOGPA_TRAIN_FAULT_AT_STEP"  # "<step>:<marker file>" — fault injection for tests
_CONSTANT = ("step", "model_params", "lora_params")  # not curves: step is the x axis, the counts never change


def _log(rank: int, msg: str) -> None:
    # Ray Train sends worker root-logger records to the driver's console. A bare print() would be
    # shown twice: Ray Train's print patch logs it and also tees it to the (wrapped) stdout.
    if rank == 0:
        logger.info(f"[videogpa.train] {msg}")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _allreduce_mean(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return dict(zip(keys, t.tolist()))


def _allreduce_max(x: float, world: int, device: torch.device) -> float:
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _maybe_inject_fault(spec: str | None, step: int, rank: int) -> None:
    """Test hook: raise once (per marker file) right after optimizer step ``k`` on rank 0."""
    if not spec or rank != 0:
        return
    at, marker = spec.split(":", 1)
    if step == int(at) and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(step))
        raise RuntimeError(f"injected fault after step {step}")


def _load_best_validated(checkpoint_root: str, filesystem, history: list[dict[str, Any]], step: int,
                         named: list[tuple[str, torch.nn.Parameter]], zero_stage: int, rank: int) -> None:
    """Put the LoRA of the step with the lowest validation loss (a kept checkpoint) back into the
    policy, so that it is the one exported. Collective under ZeRO-3."""
    from trainers import checkpoint as ckpt_io

    best = min((h for h in history if "val_loss" in h), key=lambda h: (h["val_loss"], -h["step"]))
    _log(rank, f"exporting the policy of step {best['step']} (lowest validation loss, {best['val_loss']:.4f})")
    if best["step"] == step:
        return
    with local_copy(f"{checkpoint_root}/checkpoint_{best['step']:07d}", filesystem) as d:
        tensors, _, _ = ckpt_io.load(d)
    ckpt_io.load_weights(named, tensors, zero_stage)


def return_freed_memory_to_the_os() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which blocks of that size
    come from the heap, which it rarely gives back: the all-gathered ZeRO-3 parameters and the build's
    temporaries then stay resident (a 0.6B model's 2-worker ZeRO-3 peak held 1.3 GB more than its
    1-worker one). A fixed threshold serves every block of 128 KiB or more by mmap, returned on free."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    m_mmap_threshold = -3  # <malloc.h>; setting it also turns the dynamic adjustment off
    if libc is not None and hasattr(libc, "mallopt"):  # glibc (musl has no mallopt)
        libc.mallopt(m_mmap_threshold, 128 * 1024)


def skip_cpu_shm_op() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles a shared-memory all-reduce C++ op when it wraps
    the process group (needs a compiler, ~1 min the first time). Only its *inference* all-reduce
    uses it; training collectives go through torch.distributed (gloo). Mark it unavailable."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def train_loop(config: dict[str, Any]) -> None:
    """The loop, with rank 0's tracker (trainers.tracking) closed however it ends."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with Tracker(config.get("tracking") if rank == 0 else None, "trainer") as tracker:
        _train_loop(config, tracker)


def _train_loop(config: dict[str, Any], tracker: Tracker) -> None:  # noqa: C901 (one readable loop)
    import ray.train

    from actors.families import get_family
    from actors.model_config import ModelConfig
    from actors.models import build_denoiser
    from actors.s3 import export_settings
    from trainers.config import TrainerConfig
    from trainers.deepspeed_config import (
        build_deepspeed_config,
        gradient_accumulation_steps,
        make_lr_scheduler,
    )
    from trainers.epochs import EpochFeed

    cfg = TrainerConfig(**config["trainer"])
    on_cpu = config["device"] == "cpu"  # what the workers really have (trainers.train.workers_have_cuda)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cpu") if on_cpu else ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    feed = EpochFeed(ray.train.get_dataset_shard("train"), cfg.micro_batch_size, cfg.shuffle,
                     cfg.shuffle_buffer_size, cfg.seed, cfg.data_cache_mb,
                     all_agree=lambda ok: _allreduce_max(float(not ok), world, device) == 0.0)
    if checkpoint is None:  # a fresh run starts at epoch 0: its data arrives while the model is built
        feed.prefetch_first_epoch()
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
    import deepspeed

    if on_cpu:
        skip_cpu_shm_op()
        return_freed_memory_to_the_os()  # host memory is the workers' device memory here
    from trainers import checkpoint as ckpt_io
    from trainers.data import decode_batch
    from trainers.lora import add_lora, export_lora, policy_state_dict
    from trainers.step import PolicyCall, dpo_micro_batch
    from trainers.validation import VALIDATION_EPOCH, rank_share, validation_figures, weighted_sums

    model = ModelConfig(**config["model"])
    export_settings(config.get("s3_env"))  # before build_denoiser fetches an s3:// model
    filesystem = config.get("filesystem")

    # -- model: base transformer(s) (frozen) + LoRA policy (+ frozen reference adapter) on each expert --
    family = get_family(model.family)
    ds_config = build_deepspeed_config(cfg, world, device.type)
    rss_before_model = _current_rss_mb()
    # ZeRO-3: the frozen base is built partitioned; no worker ever holds all of its weights.
    transformer, scheduler = build_denoiser(model, device, zero3=ds_config if cfg.zero_stage == 3 else None)
    experts = family.lora_experts(transformer)
    prev_dir = config.get("previous_lora_dir")
    has_ref_adapter = bool(prev_dir) and cfg.reference == "previous_round"
    with local_copy(prev_dir, filesystem) if prev_dir else contextlib.nullcontext() as prev_local:
        add_lora(experts, cfg, family.lora_target_modules, prev_local, reference_is_previous=has_ref_adapter)
    if cfg.gradient_checkpointing:
        for expert in experts.values():
            expert.enable_gradient_checkpointing()
    transformer.train()
    named = [(n, p) for n, p in transformer.named_parameters() if p.requires_grad]
    n_train = sum(p.numel() for _, p in named)
    # a ZeRO-3 partitioned parameter is an empty placeholder: its full size is ds_numel
    n_total = sum(getattr(p, "ds_numel", p.numel()) for p in transformer.parameters())

    accum = gradient_accumulation_steps(cfg, world)
    engine, _, _, _ = deepspeed.initialize(
        model=transformer,
        model_parameters=[p for _, p in named],
        config=ds_config,
        lr_scheduler=make_lr_scheduler(cfg),
        dist_init_required=False,  # Ray Train already created the process group; reuse it
    )
    policy = PolicyCall(transformer, engine)
    _log(rank, f"{model.family}: {n_train:,} LoRA params ({100 * n_train / n_total:.2f}% of {n_total:,}), "
               f"ZeRO-{cfg.zero_stage}, {world} worker(s) × micro {cfg.micro_batch_size} × accum {accum}")

    # -- resume --
    step, epoch, position, consumed, history = 0, 0, 0, [], []
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            tensors, state, ranks = ckpt_io.load(d)
        ckpt_io.restore(engine, named, tensors, state["step"], accum, cfg.zero_stage)
        step, epoch, history = state["step"], state["epoch"], state.get("history", [])
        if state["world_size"] == world:
            position = state["position"]
            consumed = ranks.get(rank, {}).get("consumed_pair_ids", [])
        else:  # the split of an epoch depends on the world size: restart this epoch
            _log(rank, f"world size {state['world_size']} -> {world}: epoch {epoch} restarts from its first pair")
        _log(rank, f"resumed at step {step} (epoch {epoch}, {position} pairs/worker already consumed)")

    t_start, window = time.perf_counter(), []
    t_step = t_start
    fault = config.get("fault")
    validating = cfg.validation_fraction > 0
    held_out: list = []  # this rank's share of the validation pairs, decoded once

    def validate() -> dict[str, float]:
        """Validation DPO figures of the current policy over all held-out pairs. Collective."""
        if not held_out:
            rows = [decode_batch(b) for b in ray.train.get_dataset_shard("validation").iter_batches(
                batch_size=1, batch_format="numpy")]
            held_out.extend(rank_share(rows, rank, world))
        transformer.eval()
        with torch.no_grad():
            figures = [(dpo_micro_batch(family, scheduler, transformer, PolicyCall(transformer), mb, cfg.beta,
                                        cfg.seed, VALIDATION_EPOCH, has_ref_adapter, "dpo", cfg.loss,
                                        cfg.label_smoothing)[1], w) for mb, w in held_out]
        transformer.train()
        return validation_figures(_allreduce_mean(weighted_sums(figures), world, device))

    def save_and_report(metrics: dict[str, Any]) -> None:
        tensors = ckpt_io.gather_state(engine, named)  # collective
        state = {"step": step, "epoch": epoch, "position": position, "world_size": world,
                 "accum": accum, "history": history}
        with tempfile.TemporaryDirectory() as d:
            ckpt_io.save(d, rank, tensors, state, {"epoch": epoch, "consumed_pair_ids": consumed})
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                             checkpoint_dir_name=f"checkpoint_{step:07d}")

    metrics: dict[str, Any] = {}
    while step < cfg.max_steps:
        rows, group, start_position, stepped = 0, [], position, False
        for raw in feed.batches(epoch):
            rows += cfg.micro_batch_size
            if rows <= position:
                continue  # consumed before the checkpoint we resumed from
            group.append(decode_batch(raw))
            if len(group) < accum:
                continue
            # -- one optimizer step over `accum` micro-batches --
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)  # LoRA dropout only
            lr = engine.get_lr()[0]
            ms = []
            for mb in group:
                loss, m = dpo_micro_batch(family, scheduler, transformer, policy, mb, cfg.beta,
                                          cfg.seed, epoch, has_ref_adapter, cfg.objective, cfg.loss,
                                          cfg.label_smoothing)
                engine.backward(loss)
                engine.step()
                ms.append(m)
            step, position, stepped = step + 1, rows, True
            consumed.extend(pid for mb in group for pid in mb.pair_ids)
            group = []
            m = _allreduce_mean({**{k: float(np.mean([x[k] for x in ms])) for k in ms[0]}, **feed.wait_figures()},
                                world, device)
            gn = engine.get_global_grad_norm()
            now = time.perf_counter()
            metrics = {**m, "step": step, "epoch": epoch, "lr": lr, "pairs_seen": step * cfg.effective_batch_size,
                       "grad_norm": float(gn) if gn is not None else float("nan"),
                       "step_s": _allreduce_max(now - t_step, world, device),
                       "model_params": n_total, "lora_params": n_train}
            t_step = now
            history.append({k: metrics[k] for k in ("step", "loss", "reward_accuracy", "reward_margin", "lr",
                                                    "grad_norm")})
            window.append(metrics)
            done = step >= cfg.max_steps
            if step % cfg.log_every == 0 or done or step == 1:
                sps = (time.perf_counter() - t_start) / max(1, len(window))
                _log(rank, f"step {step}/{cfg.max_steps} epoch {epoch} loss {m['loss']:.4f} "
                           f"acc {m['reward_accuracy']:.2f} margin {m['reward_margin']:+.4g} lr {lr:.3g} "
                           f"({sps:.2f}s/step, data wait {100 * m['data_wait_fraction']:.1f}%"
                           f"{', epochs from memory' if feed.cached else ''})")
            metrics["peak_memory_mb"] = _allreduce_max(_peak_memory_mb(device), world, device)
            if device.type == "cpu":  # what the model and training added to a worker's host memory
                metrics["peak_rss_growth_mb"] = _allreduce_max(_peak_memory_mb(device) - rss_before_model,
                                                               world, device)
            at_checkpoint = step % cfg.checkpoint_every == 0 or done
            if at_checkpoint and validating:  # at every checkpoint: the kept ones are the best by val_loss
                metrics.update(validate())
                history[-1].update({k: v for k, v in metrics.items() if k.startswith("val_")})
                _log(rank, f"step {step} validation loss {metrics['val_loss']:.4f} "
                           f"acc {metrics['val_reward_accuracy']:.2f}")
            tracker.log_train_step({k: v for k, v in metrics.items() if k not in _CONSTANT}, step)
            # Ray Train hears of checkpoints only: a report waits until the controller takes the one
            # before it (a queue of one, polled every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), so
            # reporting every logged step held fast steps back. The curves go to the trackers.
            if at_checkpoint:
                save_and_report(metrics)
            _maybe_inject_fault(fault, step, rank)
            if done:
                break
        else:  # epoch exhausted
            if not stepped and start_position == 0:
                raise InputError(
                    f"pair shards hold too few pairs for one optimizer step per worker "
                    f"(effective_batch_size={cfg.effective_batch_size}, num_workers={world})"
                )
            epoch, position, consumed = epoch + 1, 0, []
            continue
        break

    if cfg.export == "best_validation":
        _load_best_validated(config["checkpoint_root"], filesystem, history, step, named, cfg.zero_stage, rank)
    # -- export the policy LoRA (diffusers format) --
    states = {name: policy_state_dict(expert, cfg.zero_stage) for name, expert in experts.items()}  # collective
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            for name, expert in experts.items():
                export_lora(states[name], expert, name, family.pipeline_class, d)
            upload_dir(d, config["lora_out_dir"], filesystem)
        _log(rank, f"LoRA written to {config['lora_out_dir']}")
    if checkpoint is not None and step >= cfg.max_steps and not metrics:
        # resumed after the final checkpoint: report it again so the result carries metrics
        metrics = {"step": step, "epoch": epoch, "pairs_seen": step * cfg.effective_batch_size}
        if history:
            metrics.update({k: history[-1][k] for k in ("loss", "reward_accuracy", "reward_margin")})
        ray.train.report(metrics)
