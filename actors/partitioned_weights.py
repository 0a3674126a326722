"""Building a frozen denoiser already partitioned over the trainer's ZeRO-3 ranks.

Inside ``deepspeed.zero.Init`` every parameter is split across the ranks as soon as its module is
constructed, so no rank ever holds the whole network (a 5B transformer in bf16 is ~11 GB; 14B
does not fit a host when every worker of a node builds it whole). Real weights then load tensor by
tensor: each rank reads from the safetensors files exactly the bytes of the flat range of each tensor
its partition holds (plain reads, no memory map: mapped pages would count in every rank's resident
memory), and copies that range into its partition. No process ever holds the checkpoint, or even one
whole large tensor of it, except for the small ones.

Families do not call this module themselves: ``actors.families.base.load_transformer`` routes here
when a ZeRO-3 partitioned build is active (``trainers.worker`` opens it for ``zero_stage: 3``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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


# safetensors dtype names -> torch dtypes (the format's own table)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes are in a safetensors file: row-major, little-endian, from ``offset``."""

    path: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _safetensors_header(path: str) -> dict[str, StoredTensor]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in _SAFETENSORS_DTYPES:
            raise InputError(f"{path}: tensor {name} has dtype {meta['dtype']}, which this loader does not read")
        out[name] = StoredTensor(path, _SAFETENSORS_DTYPES[meta["dtype"]], tuple(meta["shape"]),
                                 8 + size + meta["data_offsets"][0])
    return out


def stored_tensors(directory: str) -> dict[str, StoredTensor]:
    """Every tensor of the checkpoint in ``directory`` (sharded with an index, or one file), by name."""
    index = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(directory, WEIGHTS_NAME)):
        files = [WEIGHTS_NAME]
    else:
        raise InputError(f"{directory}: neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME} (a partitioned "
                         f"ZeRO-3 build reads safetensors weights only)")
    out: dict[str, StoredTensor] = {}
    for file in files:
        out.update(_safetensors_header(os.path.join(directory, file)))
    return out


def read_elements(stored: StoredTensor, start: int, end: int) -> torch.Tensor:
    """Elements [start, end) of the flattened tensor, read with plain file reads of exactly those bytes:
    no memory map, so a rank's resident memory holds its share and not the pages of the whole file."""
    if end <= start:
        return torch.empty(0, dtype=stored.dtype)
    itemsize = stored.dtype.itemsize  # not torch.empty(...).element_size(): zero.Init overrides its dtype
    length = (end - start) * itemsize
    with open(stored.path, "rb") as f:
        data = os.pread(f.fileno(), length, stored.offset + start * itemsize)
    if len(data) != length:
        raise InputError(f"{stored.path}: truncated (a tensor ends past the end of the file)")
    return torch.frombuffer(bytearray(data), dtype=stored.dtype)


def load_partitioned(module: torch.nn.Module, directory: str) -> None:
    """Copy the checkpoint in ``directory`` into ``module``'s ZeRO-3 partitions, each rank reading
    only its own range of every tensor; buffers (not partitioned) are read whole."""
    from deepspeed import comm as dist

    stored = stored_tensors(directory)
    params = dict(module.named_parameters())
    missing = [n for n in params if n not in stored]
    if missing:
        raise InputError(f"{directory}: the checkpoint lacks {len(missing)} of the model's tensors "
                         f"(first: {missing[0]})")
    for name, param in params.items():
        part, where = param.ds_tensor, stored[name]
        if list(where.shape) != list(param.ds_shape):
            raise InputError(f"{directory}: {name} has shape {list(where.shape)} in the checkpoint, "
                             f"the model expects {list(param.ds_shape)}")
        rank = dist.get_rank(group=param.ds_process_group)
        start = rank * part.numel()
        end = min(start + part.numel(), param.ds_numel)
        with torch.no_grad():
            part.zero_()  # the padding past the tensor's end, on the last rank
            if start < end:
                part[:end - start].copy_(read_elements(where, start, end))
    names = list(params)
    for name, buffer in module.named_buffers():
        names.append(name)
        if name in stored:
            with torch.no_grad():
                buffer.copy_(read_elements(stored[name], 0, stored[name].numel).reshape(stored[name].shape))
    logger.info("loaded %s into ZeRO-3 partitions (%d tensors, this rank's share only)", directory, len(names))
