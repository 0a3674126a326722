"""Diffusion-DPO LoRA training on Ray Train (TorchTrainer) + DeepSpeed ZeRO — driver side.

``train_dpo`` validates inputs on the driver (so bad shards fail in one line, before any worker
starts), then runs :func:`trainers.worker.train_loop` on ``num_workers`` Ray Train workers.
Resume is Ray Train V2's: calling again with the same ``name`` + ``storage_path`` continues from
the latest checkpoint (``ray.train.get_checkpoint()`` in the loop); a worker failure is retried
up to ``max_failures`` times from the latest checkpoint. Data order is deterministic
(``preserve_order`` split + seeded per-epoch local shuffle), so a resumed run skips exactly the
pairs of the current epoch it had already trained on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq

from actors.errors import InputError
from actors.model_config import ModelConfig
from trainers.config import TrainerConfig
from trainers.data import TRAIN_COLUMNS
from trainers.deepspeed_config import gradient_accumulation_steps
from trainers.schema import check_schema_version
from trainers.tracking import TrackingTarget
from trainers.validation import rows_where, validation_pair_ids
from trainers.worker import FAULT_ENV, WorkerJob, train_loop

logger = logging.getLogger("videogpa.trainer")


def _strip_scheme(path: str, filesystem) -> str:
    # pyarrow filesystems (and Ray with storage_filesystem) take paths without a scheme.
    if filesystem is not None and "://" in path:
        return path.split("://", 1)[1]
    return path


def workers_have_cuda(cfg: TrainerConfig) -> bool:
    """Whether the trainer's workers will really have a CUDA device.

    ``trainer.use_gpu`` asks Ray for one GPU per worker (placement); the device is what the
    process gets. A ``GPU`` resource without a GPU behind it (a CPU-only rehearsal cluster, a
    mislabelled node) would otherwise fail in NCCL or torch.cuda. Asked once, of a task with a
    worker's resources, so it lands where the workers will (and an autoscaler starts that node).
    """
    if not cfg.use_gpu:
        return False
    import ray

    @ray.remote(num_gpus=1, num_cpus=cfg.cpus_per_worker)
    def probe() -> bool:
        import torch

        return torch.cuda.is_available()

    has_cuda = ray.get(probe.remote())
    if not has_cuda:
        logger.warning("trainer.use_gpu: the GPU workers see no CUDA device; training on their CPUs (gloo)")
    return has_cuda


def read_pair_ids(pair_files: list[str], filesystem=None) -> list[str]:
    """The pair ids of every shard (one small column each); refuses missing files and other schema
    versions, naming the file."""
    if not pair_files:
        raise InputError("train: no pair shards given (did the pairs stage keep any pair?)")
    ids: list[str] = []
    for f in pair_files:
        try:
            table = pq.read_table(f, columns=["schema_version", "pair_id"], filesystem=filesystem)
        except (OSError, ValueError, KeyError) as e:  # missing file, not Parquet, no such column
            raise InputError(f"{f}: cannot read pair shard ({str(e).splitlines()[0]})") from None
        check_schema_version(table, source=f)
        ids += [str(p) for p in table.column("pair_id").to_pylist()]
    return ids


# Ray Data's Parquet listing (datasource V2) reads footers on RAY_DATA_PARQUET_FOOTER_NUM_ACTORS actors, 32
# by default, started afresh for every read: before the trainer's first batch, 32 worker processes to start
# for a round's few shards. Where the nodes have few cores they start one after another, throttled by the
# raylet (a first batch of 50-120 s on the elastic rehearsal). A round's shards are few: two readers suffice.
FOOTER_READERS = "2"


def read_pair_shards(pair_files: list[str], filesystem) -> Any:
    """The trainer's columns of the pair shards as a Ray Data dataset (``path`` kept to name a bad row's file)."""
    import ray.data

    knob = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
    saved = os.environ.get(knob)
    os.environ.setdefault(knob, FOOTER_READERS)  # read once, on this driver, as the read is planned
    try:
        # include_paths: a bad row found inside a worker can still name its file.
        return ray.data.read_parquet(pair_files, filesystem=filesystem, include_paths=True).select_columns(
            [*TRAIN_COLUMNS, "path"]  # pushed down into the Parquet read: metadata columns are not read
        )
    finally:
        if saved is None:
            os.environ.pop(knob, None)


def _datasets(pairs: Any, held_out: frozenset[str], n_pairs: int) -> dict[str, Any]:
    """The trainer's datasets: every pair for training, or the training and validation pairs apart."""
    if not held_out:
        return {"train": pairs}
    logger.info(f"validation: {len(held_out)} of {n_pairs} pairs held out")
    # whole blocks (batch_size=None): a row of real-size latents is megabytes
    return {"train": pairs.map_batches(rows_where(held_out, held_out=False), batch_format="pyarrow",
                                       batch_size=None, zero_copy_batch=True),
            "validation": pairs.map_batches(rows_where(held_out, held_out=True), batch_format="pyarrow",
                                            batch_size=None, zero_copy_batch=True)}


def _run_config(cfg: TrainerConfig, name: str, storage_path: str, filesystem, validating: bool) -> Any:
    """Where Ray Train keeps the run (resume: the same name + storage_path), its retries and checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        # the latest checkpoint is always kept (resume); with validation the others are the best
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints,
            checkpoint_score_attribute="val_loss" if validating else None,
            checkpoint_score_order="min",
        ),
    )


def train_dpo(
    cfg: TrainerConfig,
    model: ModelConfig,
    pair_files: list[str],
    filesystem,
    storage_path: str,
    name: str,
    lora_out_dir: str,
    previous_lora_dir: str | None = None,
    tracking: TrackingTarget | None = None,
    model_card: str | None = None,
    fence: Callable[[], None] | None = None,
    s3_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train the policy LoRA with Diffusion-DPO on the pair shards; export it to
    ``<lora_out_dir>/pytorch_lora_weights.safetensors`` (with ``model_card`` as its README.md).

    ``filesystem``: the pyarrow filesystem of every path here (None = local paths). ``tracking``:
    where rank 0 logs each step's metrics (``trainers.tracking``; None: nowhere). ``fence``: a
    picklable check the workers call before they write a checkpoint or the LoRA, which raises once
    this command may no longer write the run (its lease was taken over). ``s3_env``: the run's S3
    settings as environment variables (``actors.s3.settings_env``), for an s3:// model.
    Returns the final metrics: loss, reward_accuracy, reward_margin, policy_ref_gap_w/l, steps,
    pairs_seen, epoch, lr, grad_norm, peak_memory_mb, plus ``checkpoint`` (its path) and ``lora_dir``.
    """
    from ray.data import ExecutionOptions
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gradient_accumulation_steps(cfg, cfg.num_workers)  # one-line error before any worker starts
    if cfg.reference == "previous_round" and not previous_lora_dir:
        raise InputError("trainer.reference=previous_round needs the previous round's LoRA (none given)")
    pair_files = [_strip_scheme(p, filesystem) for p in pair_files]
    pair_ids = read_pair_ids(pair_files, filesystem)
    held_out = validation_pair_ids(pair_ids, cfg.validation_fraction, cfg.seed)
    n_train = len(pair_ids) - len(held_out)
    if n_train < cfg.effective_batch_size:
        raise InputError(
            f"train: {n_train} training pairs ({len(held_out)} of {len(pair_ids)} held out for validation) "
            f"< trainer.effective_batch_size={cfg.effective_batch_size} (one optimizer step)"
        )

    device = "cuda" if workers_have_cuda(cfg) else "cpu"
    job = WorkerJob(
        trainer=cfg,
        model=model,
        filesystem=filesystem,
        lora_out_dir=_strip_scheme(lora_out_dir, filesystem),
        previous_lora_dir=_strip_scheme(previous_lora_dir, filesystem) if previous_lora_dir else None,
        fault=os.environ.get(FAULT_ENV),
        checkpoint_root=_strip_scheme(storage_path, filesystem).rstrip("/") + "/" + name,
        device=device,
        tracking=tracking,
        model_card=model_card,
        fence=fence,
        s3_env=s3_env or {},
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="nccl" if device == "cuda" else "gloo"),
        datasets=_datasets(read_pair_shards(pair_files, filesystem), held_out, len(pair_ids)),
        # preserve_order makes the split across workers (and so each worker's order) deterministic,
        # which is what lets a resumed run skip exactly the pairs it had consumed. Every worker reads
        # all validation pairs and takes its own share (trainers.validation.rank_share).
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ExecutionOptions(preserve_order=True)),
        run_config=_run_config(cfg, name, _strip_scheme(storage_path, filesystem), filesystem, bool(held_out)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    metrics = dict(result.metrics or {})
    metrics["steps"] = metrics.pop("step", None)
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint is not None else None
    metrics["lora_dir"] = lora_out_dir
    return metrics
