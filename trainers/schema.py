"""Preference-pair shard schema (docs/CONTRACTS.md): the one contract between ``pipelines`` (writer)
and the trainer (reader). It lives on the consumer's side so ``trainers`` never imports
``pipelines``.

Tensors travel as safetensors bytes holding one tensor named ``"tensor"``: self-describing
(dtype + shape), zero-copy to decode and, unlike pickle, safe to read from shared storage.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from actors.errors import InputError

SCHEMA_VERSION = 1

PAIR_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("schema_version", pa.int64(), nullable=False),
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("round", pa.int64(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("winner_seed", pa.int64(), nullable=False),
        pa.field("loser_seed", pa.int64(), nullable=False),
        pa.field("winner_score", pa.float64(), nullable=False),
        pa.field("loser_score", pa.float64(), nullable=False),
        pa.field("winner_motion", pa.float64(), nullable=False),
        pa.field("loser_motion", pa.float64(), nullable=False),
        pa.field("winner_latents", pa.binary(), nullable=False),
        pa.field("loser_latents", pa.binary(), nullable=False),
        pa.field("latent_shape", pa.list_(pa.int64()), nullable=False),
        pa.field("latent_dtype", pa.string(), nullable=False),
        pa.field("prompt_embeds", pa.binary(), nullable=False),
        pa.field("image_latents", pa.binary(), nullable=True),  # null for T2V
    ],
    metadata={b"videogpa.schema_version": str(SCHEMA_VERSION).encode()},
)

_TENSOR_KEY = "tensor"


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Serialise one tensor as safetensors bytes (little-endian, dtype and shape included)."""
    return _st_save({_TENSOR_KEY: t.detach().to("cpu").contiguous()})


def tensor_from_bytes(b: bytes | memoryview | None) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`; refuses anything that is not our one-tensor layout."""
    if b is None:
        raise InputError("tensor column is null where a tensor is required")
    try:
        d = _st_load(bytes(b))
    except Exception as e:  # safetensors raises its own SafetensorError on bad headers
        raise InputError(f"tensor column is not valid safetensors bytes ({e})") from None
    if list(d) != [_TENSOR_KEY]:
        raise InputError(f"tensor column holds keys {sorted(d)}, expected ['{_TENSOR_KEY}']")
    return d[_TENSOR_KEY]


def _versions_in(obj: Any) -> set[int]:
    """Collect the schema version(s) carried by a table, schema, column, batch dict or value."""
    if isinstance(obj, pa.Schema):
        raw = (obj.metadata or {}).get(b"videogpa.schema_version")
        if raw is None:
            if "schema_version" not in obj.names:
                raise InputError("shard has no schema_version column (not a videogpa pair shard)")
            return set()  # the schema alone says nothing; the rows decide
        return {int(raw)}
    if isinstance(obj, pa.Table):
        if "schema_version" not in obj.column_names:
            raise InputError("shard has no schema_version column (not a videogpa pair shard)")
        return _versions_in(obj.column("schema_version"))
    if isinstance(obj, (pa.ChunkedArray, pa.Array)):
        return {int(v) for v in obj.unique().to_pylist() if v is not None}
    if isinstance(obj, dict):  # a Ray Data batch in "numpy" or "pandas"-like dict format
        if "schema_version" not in obj:
            raise InputError("batch has no schema_version column (not a videogpa pair shard)")
        return _versions_in(obj["schema_version"])
    if hasattr(obj, "tolist"):  # numpy array / pandas Series
        return {int(v) for v in set(obj.tolist())}
    if isinstance(obj, (list, tuple, set)):
        return {int(v) for v in obj}
    return {int(obj)}


def check_schema_version(obj: Any, source: str = "pair shard") -> None:
    """Raise InputError (one line, naming ``source`` and the versions) unless every row is
    ``SCHEMA_VERSION``. ``obj``: pyarrow Table/Schema/Array, a batch dict, an array or an int."""
    found = _versions_in(obj)
    bad = sorted(v for v in found if v != SCHEMA_VERSION)
    if bad:
        raise InputError(
            f"{source}: schema_version {', '.join(map(str, bad))} found, expected {SCHEMA_VERSION} "
            "(rewrite the shards with this videogpa version)"
        )
