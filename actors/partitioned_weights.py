"""Building a frozen denoiser already partitioned over the trainer's ZeRO-3 ranks.

Inside ``deepspeed.zero.Init`` every parameter is split across the ranks as soon as its module is
constructed, so no rank ever holds the whole network (a 5B transformer in bf16 is ~11 GB; 14B
does not fit a host when every worker of a node builds it whole). Real weights then load tensor by
tensor: each rank reads from the safetensors files only the rows that cover the flat range of each
tensor its partition holds, and copies that range into its partition. No process ever holds the
checkpoint, or even one whole large tensor of it, except for the small ones.

Families do not call this module themselves: ``actors.families.base.load_transformer`` routes here
when a ZeRO-3 partitioned build is active (``trainers.worker`` opens it for ``zero_stage: 3``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from actors.errors import InputError

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def partitioned_build_active() -> bool:
    """True inside ``partitioned_build`` (or any ``deepspeed.zero.Init``). Never imports DeepSpeed:
    generation actors, which have no business with it, pay nothing for this check."""
    zero_init = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    return bool(zero_init is not None and zero_init.zero_init_context > 0)


@contextlib.contextmanager
def partitioned_build(ds_config: dict[str, Any], dtype: torch.dtype | None) -> Iterator[None]:
    """Modules constructed inside are partitioned over the ranks of ``ds_config``'s ZeRO-3 run.
    ``dtype``: the dtype every floating parameter is created in (the real weights' dtype, so a
    rank never holds a float32 partition of a bf16 model); ``None``: as the code builds them, for
    the tiny presets, which must stay bit-identical to the generator's and are cast afterwards."""
    import deepspeed
    import torch._dynamo  # noqa: F401  (its first import fails under zero.Init's patched Tensor.__new__)
    from deepspeed.runtime.zero.partition_parameters import DeepSpeedTensorOverride

    overrides = [DeepSpeedTensorOverride.device] if dtype is None else [DeepSpeedTensorOverride.device,
                                                                         DeepSpeedTensorOverride.dtype]
    # Only what partitioning reads: the batch keys would be checked against a world size that
    # DeepSpeed's config computes before it has joined the process group.
    config = {"train_micro_batch_size_per_gpu": 1,
              **{k: ds_config[k] for k in ("zero_optimization", "bf16", "fp16") if k in ds_config}}
    with deepspeed.zero.Init(config_dict_or_path=config, dtype=dtype or torch.float32, tensor_overrides=overrides):
        yield


def set_partition_dtype(param: torch.nn.Parameter, dtype: torch.dtype) -> None:
    """Cast a parameter partitioned by ZeRO-3: its rank's shard and its (empty) placeholder."""
    param.ds_tensor.data = param.ds_tensor.data.to(dtype)
    param.data = param.data.to(dtype)


def is_partitioned(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_tensor")


def checkpoint_dir(pretrained: str, subfolder: str, revision: str | None) -> str:
    """The local directory of one component's weights: ``pretrained/subfolder`` of a diffusers
    directory, or that folder of the hub snapshot (downloaded once into the HF cache, or read from it
    under ``HF_HUB_OFFLINE=1``)."""
    if os.path.isdir(pretrained):
        return os.path.join(pretrained, subfolder)
    from huggingface_hub import snapshot_download

    root = snapshot_download(pretrained, revision=revision, allow_patterns=[f"{subfolder}/*"])
    return os.path.join(root, subfolder)


def weight_files(directory: str) -> dict[str, str]:
    """Tensor name -> the safetensors file that holds it, from the sharded index or the single file."""
    index = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    single = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(single):
        raise InputError(f"{directory}: neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME} (a partitioned "
                         f"ZeRO-3 build reads safetensors weights only)")
    from safetensors import safe_open

    with safe_open(single, framework="pt") as f:
        return {name: single for name in f.keys()}


def _flat_range(sliced, start: int, end: int) -> torch.Tensor:
    """Elements [start, end) of the flattened tensor behind a safetensors slice, reading only the
    rows (first-dimension entries) that cover them."""
    shape = sliced.get_shape()
    if len(shape) == 0:
        return sliced[...].reshape(-1)[start:end]
    row = 1
    for d in shape[1:]:
        row *= d
    first, last = start // row, -(-end // row)
    return sliced[first:last].reshape(-1)[start - first * row:end - first * row]


def load_partitioned(module: torch.nn.Module, directory: str) -> None:
    """Copy the checkpoint in ``directory`` into ``module``'s ZeRO-3 partitions, each rank reading
    only its own range of every tensor; buffers (not partitioned) are read whole."""
    from deepspeed import comm as dist
    from safetensors import safe_open

    files = weight_files(directory)
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    missing = [n for n in names if n not in files and n in dict(module.named_parameters())]
    if missing:
        raise InputError(f"{directory}: the checkpoint lacks {len(missing)} of the model's tensors "
                         f"(first: {missing[0]})")
    handles: dict[str, Any] = {}
    try:
        def open_slice(name: str):
            path = files[name]
            if path not in handles:
                handles[path] = safe_open(path, framework="pt")
            return handles[path].get_slice(name)

        for name, param in module.named_parameters():
            part = param.ds_tensor
            rank = dist.get_rank(group=param.ds_process_group)
            start = rank * part.numel()
            end = min(start + part.numel(), param.ds_numel)
            if list(open_slice(name).get_shape()) != list(param.ds_shape):
                raise InputError(f"{directory}: {name} has shape {open_slice(name).get_shape()} in the checkpoint, "
                                 f"the model expects {list(param.ds_shape)}")
            with torch.no_grad():
                part.zero_()  # the padding past the tensor's end, on the last rank
                if start < end:
                    part[:end - start].copy_(_flat_range(open_slice(name), start, end))
        for name, buffer in module.named_buffers():
            if name in files:
                with torch.no_grad():
                    buffer.copy_(handles.setdefault(files[name], safe_open(files[name], framework="pt"))
                                 .get_tensor(name))
    finally:
        handles.clear()
    logger.info("loaded %s into ZeRO-3 partitions (%d tensors, this rank's share only)", directory, len(names))
