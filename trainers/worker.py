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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from actors.errors import InputError
from actors.model_config import ModelConfig
from trainers.config import TrainerConfig
from trainers.epochs import EpochFeed
from trainers.storage_dirs import local_copy, upload_dir
from trainers.tracking import Tracker, TrackingTarget

if TYPE_CHECKING:  # imported where used: the driver imports this module without peft and the DPO math
    from trainers.step import PolicyCall, TrainedNetwork

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


@dataclass(frozen=True)
class WorkerJob:
    """The driver's whole instruction to every trainer worker (``trainers.train.train_dpo`` makes it).
    Paths are inside ``filesystem`` (no scheme; None: local paths)."""

    trainer: TrainerConfig
    model: ModelConfig
    filesystem: Any
    lora_out_dir: str
    checkpoint_root: str  # where Ray Train puts this run's checkpoint_<step> folders (best-validated export)
    device: Literal["cpu", "cuda"]  # what the workers really have (trainers.train.workers_have_cuda)
    previous_lora_dir: str | None = None
    tracking: TrackingTarget | None = None
    fault: str | None = None  # FAULT_ENV's value (tests)
    model_card: str | None = None  # the exported LoRA directory's README.md (trainers.model_card)
    # Raises once the driver lost the run's lease (pipelines.lease): checked before anything lands in the run.
    fence: Callable[[], None] | None = None
    s3_env: dict[str, str] = field(default_factory=dict)  # the run's S3 settings (actors.s3.settings_env)

    def fence_check(self) -> None:
        if self.fence is not None:
            self.fence()


@dataclass
class Training:
    """One worker's built training: the network, its DeepSpeed engine and what the loop reads each step."""

    job: WorkerJob
    rank: int
    world: int
    device: torch.device
    net: TrainedNetwork
    engine: Any
    policy: PolicyCall
    experts: dict[str, torch.nn.Module]
    named: list[tuple[str, torch.nn.Parameter]]  # the trainable (LoRA) parameters
    accum: int
    feed: EpochFeed
    counts: dict[str, int]  # model_params, lora_params
    rss_before_model: float
    held_out: list = field(default_factory=list)  # this rank's validation pairs, decoded once

    @property
    def cfg(self) -> TrainerConfig:
        return self.job.trainer


@dataclass
class LoopState:
    """Where the loop is: what a checkpoint saves and a resume restores."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # rows of this epoch consumed per worker
    consumed: list[str] = field(default_factory=list)  # pair ids of this epoch this rank trained on
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last step's


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's entry point: build, resume, train, export, with rank 0's tracker closed however it ends."""
    import ray.train

    job: WorkerJob = config["job"]
    rank = ray.train.get_context().get_world_rank()
    with Tracker(job.tracking if rank == 0 else None, "trainer") as tracker:
        checkpoint = ray.train.get_checkpoint()
        run = build_training(job, fresh=checkpoint is None)
        state = resume(run, checkpoint) if checkpoint is not None else LoopState()
        train(run, state, tracker)
        export(run, state)
        if checkpoint is not None and state.step >= run.cfg.max_steps and not state.metrics:
            # resumed after the final checkpoint: report it again so the result carries metrics
            metrics = {"step": state.step, "epoch": state.epoch,
                       "pairs_seen": state.step * run.cfg.effective_batch_size}
            if state.history:
                metrics.update({k: state.history[-1][k] for k in ("loss", "reward_accuracy", "reward_margin")})
            ray.train.report(metrics)


def build_training(job: WorkerJob, fresh: bool) -> Training:
    """The frozen base transformer(s) with the LoRA policy (+ a frozen reference adapter) on each expert,
    wrapped by DeepSpeed; the data feed starts streaming first on a fresh run."""
    import ray.train

    from actors.families import objective_family
    from actors.models import build_denoiser
    from actors.s3 import export_settings
    from trainers.deepspeed_config import (
        build_deepspeed_config,
        gradient_accumulation_steps,
        make_lr_scheduler,
        size_gradient_bucket,
    )
    from trainers.lora import add_lora
    from trainers.step import PolicyCall, TrainedNetwork

    cfg = job.trainer
    job.fence_check()  # a retried worker group of a fenced driver stops at once
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_cpu = job.device == "cpu"
    device = torch.device("cpu") if on_cpu else ray.train.torch.get_device()
    feed = EpochFeed(ray.train.get_dataset_shard("train"), cfg.micro_batch_size, cfg.shuffle,
                     cfg.shuffle_buffer_size, cfg.seed, cfg.data_cache_mb,
                     all_agree=lambda ok: _allreduce_max(float(not ok), world, device) == 0.0)
    if fresh:  # a fresh run starts at epoch 0: its data arrives while the model is built
        feed.prefetch_first_epoch()
    if on_cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
    import deepspeed

    if on_cpu:
        skip_cpu_shm_op()
        return_freed_memory_to_the_os()  # host memory is the workers' device memory here

    export_settings(job.s3_env)  # before build_denoiser fetches an s3:// model
    family = objective_family(job.model.family, cfg.official_objective)
    ds_config = build_deepspeed_config(cfg, world, device.type)
    rss_before_model = _current_rss_mb()
    # ZeRO-3: the frozen base is built partitioned; no worker ever holds all of its weights.
    transformer, scheduler = build_denoiser(job.model, device, zero3=ds_config if cfg.zero_stage == 3 else None)
    experts = family.lora_experts(transformer)
    reference_is_adapter = bool(job.previous_lora_dir) and cfg.reference == "previous_round"
    prev = job.previous_lora_dir
    with local_copy(prev, job.filesystem) if prev else contextlib.nullcontext() as prev_local:
        add_lora(experts, cfg, family.lora_target_modules, prev_local, reference_is_previous=reference_is_adapter)
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
        config=size_gradient_bucket(ds_config, n_train),
        lr_scheduler=make_lr_scheduler(cfg),
        dist_init_required=False,  # Ray Train already created the process group; reuse it
    )
    _log(rank, f"{job.model.family}: {n_train:,} LoRA params ({100 * n_train / n_total:.2f}% of {n_total:,}), "
               f"ZeRO-{cfg.zero_stage}, {world} worker(s) × micro {cfg.micro_batch_size} × accum {accum}")
    return Training(job, rank, world, device, TrainedNetwork(family, scheduler, transformer, reference_is_adapter),
                    engine, PolicyCall(transformer, engine), experts, named, accum, feed,
                    {"model_params": n_total, "lora_params": n_train}, rss_before_model)


def resume(run: Training, checkpoint: Any) -> LoopState:
    """The state of the latest checkpoint, its LoRA and optimizer put back into the engine."""
    from trainers import checkpoint as ckpt_io

    with checkpoint.as_directory() as d:
        tensors, saved, ranks = ckpt_io.load(d)
    ckpt_io.restore(run.engine, run.named, tensors, saved["step"], run.accum, run.cfg.zero_stage)
    state = LoopState(step=saved["step"], epoch=saved["epoch"], history=saved.get("history", []))
    if saved["world_size"] == run.world:
        state.position = saved["position"]
        state.consumed = ranks.get(run.rank, {}).get("consumed_pair_ids", [])
    else:  # the split of an epoch depends on the world size: restart this epoch
        _log(run.rank, f"world size {saved['world_size']} -> {run.world}: epoch {state.epoch} restarts from its "
                       "first pair")
    _log(run.rank, f"resumed at step {state.step} (epoch {state.epoch}, {state.position} pairs/worker already "
                   "consumed)")
    return state


def train(run: Training, state: LoopState, tracker: Tracker) -> None:
    """Epochs of the worker's shard until ``max_steps`` optimizer steps; each step of ``accum`` micro-batches."""
    from trainers.data import decode_batch

    cfg, clock = run.cfg, _StepClock()
    while state.step < cfg.max_steps:
        rows, group, start_position, stepped = 0, [], state.position, False
        for raw in run.feed.batches(state.epoch):
            rows += cfg.micro_batch_size
            if rows <= state.position:
                continue  # consumed before the checkpoint we resumed from
            group.append(decode_batch(raw))
            if len(group) < run.accum:
                continue
            optimizer_step(run, state, group, rows, clock)
            group, stepped = [], True
            after_step(run, state, tracker, clock)
            if state.step >= cfg.max_steps:
                return
        if not stepped and start_position == 0:
            raise InputError(
                f"pair shards hold too few pairs for one optimizer step per worker "
                f"(effective_batch_size={cfg.effective_batch_size}, num_workers={run.world})"
            )
        state.epoch, state.position, state.consumed = state.epoch + 1, 0, []


class _StepClock:
    """Seconds per step: since the loop started (the logged average) and since the last step."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.steps = 0

    def lap(self) -> float:
        now = time.perf_counter()
        lap, self.last, self.steps = now - self.last, now, self.steps + 1
        return lap

    def mean(self) -> float:
        return (time.perf_counter() - self.start) / max(1, self.steps)


def optimizer_step(run: Training, state: LoopState, group: list, rows: int, clock: _StepClock) -> None:
    """One optimizer step over the micro-batches of ``group``; its metrics, averaged over workers, in ``state``."""
    from trainers.step import dpo_micro_batch

    cfg = run.cfg
    torch.manual_seed(cfg.seed * 1_000_003 + state.step * 1009 + run.rank)  # LoRA dropout only
    lr = run.engine.get_lr()[0]
    figures = []
    for mb in group:
        loss, m = dpo_micro_batch(run.net, run.policy, mb, cfg, state.epoch)
        run.engine.backward(loss)
        run.engine.step()
        figures.append(m)
    state.step, state.position = state.step + 1, rows
    state.consumed.extend(pid for mb in group for pid in mb.pair_ids)
    m = _allreduce_mean({**{k: float(np.mean([x[k] for x in figures])) for k in figures[0]},
                         **run.feed.wait_figures()}, run.world, run.device)
    gn = run.engine.get_global_grad_norm()
    state.metrics = {**m, "step": state.step, "epoch": state.epoch, "lr": lr,
                     "pairs_seen": state.step * cfg.effective_batch_size,
                     "grad_norm": float(gn) if gn is not None else float("nan"),
                     "step_s": _allreduce_max(clock.lap(), run.world, run.device), **run.counts}
    state.history.append({k: state.metrics[k] for k in ("step", "loss", "reward_accuracy", "reward_margin", "lr",
                                                        "grad_norm")})


def after_step(run: Training, state: LoopState, tracker: Tracker, clock: _StepClock) -> None:
    """Log, measure memory, validate and checkpoint where due, and hand the step to the trackers."""
    cfg, m, step = run.cfg, state.metrics, state.step
    done = step >= cfg.max_steps
    if step % cfg.log_every == 0 or done or step == 1:
        _log(run.rank, f"step {step}/{cfg.max_steps} epoch {state.epoch} loss {m['loss']:.4f} "
                       f"acc {m['reward_accuracy']:.2f} margin {m['reward_margin']:+.4g} lr {m['lr']:.3g} "
                       f"({clock.mean():.2f}s/step, data wait {100 * m['data_wait_fraction']:.1f}%"
                       f"{', epochs from memory' if run.feed.cached else ''})")
    m["peak_memory_mb"] = _allreduce_max(_peak_memory_mb(run.device), run.world, run.device)
    if run.device.type == "cpu":  # what the model and training added to a worker's host memory
        m["peak_rss_growth_mb"] = _allreduce_max(_peak_memory_mb(run.device) - run.rss_before_model, run.world,
                                                 run.device)
    at_checkpoint = step % cfg.checkpoint_every == 0 or done
    if at_checkpoint and cfg.validation_fraction > 0:  # at every checkpoint: the kept ones are the best by val_loss
        m.update(validate(run))
        state.history[-1].update({k: v for k, v in m.items() if k.startswith("val_")})
        _log(run.rank, f"step {step} validation loss {m['val_loss']:.4f} acc {m['val_reward_accuracy']:.2f}")
    tracker.log_train_step({k: v for k, v in m.items() if k not in _CONSTANT}, step)
    # Ray Train hears of checkpoints only: a report waits until the controller takes the one
    # before it (a queue of one, polled every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s), so
    # reporting every logged step held fast steps back. The curves go to the trackers.
    if at_checkpoint:
        save_checkpoint(run, state)
    _maybe_inject_fault(run.job.fault, step, run.rank)


def validate(run: Training) -> dict[str, float]:
    """Validation DPO figures of the current policy over all held-out pairs. Collective."""
    import ray.train

    from trainers.data import decode_batch
    from trainers.step import PolicyCall, dpo_micro_batch
    from trainers.validation import VALIDATION_EPOCH, rank_share, validation_figures, weighted_sums

    if not run.held_out:
        rows = [decode_batch(b) for b in ray.train.get_dataset_shard("validation").iter_batches(
            batch_size=1, batch_format="numpy")]
        run.held_out.extend(rank_share(rows, run.rank, run.world))
    module = run.net.module
    module.eval()
    with torch.no_grad():
        figures = [(dpo_micro_batch(run.net, PolicyCall(module), mb, run.cfg, VALIDATION_EPOCH, objective="dpo")[1],
                    w) for mb, w in run.held_out]
    module.train()
    return validation_figures(_allreduce_mean(weighted_sums(figures), run.world, run.device))


def save_checkpoint(run: Training, state: LoopState) -> None:
    """The LoRA, optimizer and loop state as a Ray Train checkpoint, reported with the step's metrics."""
    import ray.train

    from trainers import checkpoint as ckpt_io

    tensors = ckpt_io.gather_state(run.engine, run.named)  # collective
    run.job.fence_check()  # before the checkpoint lands in the run
    saved = {"step": state.step, "epoch": state.epoch, "position": state.position, "world_size": run.world,
             "accum": run.accum, "history": state.history}
    with tempfile.TemporaryDirectory() as d:
        ckpt_io.save(d, run.rank, tensors, saved, {"epoch": state.epoch, "consumed_pair_ids": state.consumed})
        ray.train.report(state.metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=f"checkpoint_{state.step:07d}")


def export(run: Training, state: LoopState) -> None:
    """The policy LoRA (the best-validated one where asked) in diffusers format, one file per expert."""
    from trainers.lora import export_lora, policy_state_dict
    from trainers.model_card import write_model_card

    cfg, job = run.cfg, run.job
    if cfg.export == "best_validation":
        _load_best_validated(job.checkpoint_root, job.filesystem, state.history, state.step, run.named,
                             cfg.zero_stage, run.rank)
    states = {name: policy_state_dict(expert, cfg.zero_stage) for name, expert in run.experts.items()}  # collective
    if run.rank == 0:
        job.fence_check()  # before the LoRA lands in the run
        with tempfile.TemporaryDirectory() as d:
            for name, expert in run.experts.items():
                export_lora(states[name], expert, name, run.net.family.pipeline_class, d)
            if job.model_card:
                write_model_card(d, job.model_card)
            upload_dir(d, job.lora_out_dir, job.filesystem)
        _log(run.rank, f"LoRA written to {job.lora_out_dir}")
