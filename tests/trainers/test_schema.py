"""Pair-shard schema: columns, pickle-free tensor encoding, schema-version refusal."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.errors import InputError
from trainers.data import decode_batch
from trainers.schema import (
    PAIR_SCHEMA,
    SCHEMA_VERSION,
    check_schema_version,
    tensor_from_bytes,
    tensor_to_bytes,
)

SPEC_COLUMNS = [
    "schema_version", "pair_id", "round", "prompt_id", "prompt", "model_id", "scorer",
    "winner_seed", "loser_seed", "winner_score", "loser_score", "winner_motion", "loser_motion",
    "winner_latents", "loser_latents", "latent_shape", "latent_dtype", "prompt_embeds", "image_latents",
]


def make_row(i: int, version: int = SCHEMA_VERSION, shape=(3, 4, 4, 4), image: bool = False) -> dict:
    g = torch.Generator().manual_seed(i)
    return dict(
        schema_version=version, pair_id=f"p{i:04d}", round=0, prompt_id=f"q{i}", prompt="a red cube",
        model_id="tiny:cogvideox-t2v", scorer="3dcs:oracle", winner_seed=1, loser_seed=2,
        winner_score=0.1, loser_score=0.5, winner_motion=0.2, loser_motion=0.2,
        winner_latents=tensor_to_bytes(torch.randn(shape, generator=g)),
        loser_latents=tensor_to_bytes(torch.randn(shape, generator=g)),
        latent_shape=list(shape), latent_dtype="float32",
        prompt_embeds=tensor_to_bytes(torch.randn(16, 32, generator=g)),
        image_latents=tensor_to_bytes(torch.randn(shape, generator=g)) if image else None,
    )


def to_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A Ray Data "numpy" batch of the table (what iter_batches hands the trainer)."""
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def test_schema_has_exactly_the_spec_columns():
    assert PAIR_SCHEMA.names == SPEC_COLUMNS
    assert SCHEMA_VERSION == 1
    types = {f.name: f.type for f in PAIR_SCHEMA}
    assert types["latent_shape"] == pa.list_(pa.int64())
    for col in ("winner_latents", "loser_latents", "prompt_embeds", "image_latents"):
        assert types[col] == pa.binary()
    assert pa.types.is_integer(types["schema_version"]) and pa.types.is_string(types["pair_id"])
    assert PAIR_SCHEMA.field("image_latents").nullable  # null for T2V


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_tensor_bytes_roundtrip_is_safetensors(dtype):
    t = (torch.randn(2, 3, 5) * 10).to(dtype)
    b = tensor_to_bytes(t)
    # safetensors layout: u64 little-endian header length + JSON header naming one tensor
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8 : 8 + n])
    assert [k for k in header if k != "__metadata__"] == ["tensor"]
    out = tensor_from_bytes(b)
    assert out.dtype == dtype and torch.equal(out, t)


def test_tensor_from_bytes_refuses_pickle_and_garbage():
    buf = io.BytesIO()
    torch.save(torch.ones(2), buf)  # a pickle: must never be unpickled
    for bad in (buf.getvalue(), b"not a tensor", None):
        with pytest.raises(InputError):
            tensor_from_bytes(bad)


def test_pair_rows_round_trip_through_parquet(tmp_path):
    rows = [make_row(i, image=(i == 0)) for i in range(2)]
    rows[1]["image_latents"] = rows[0]["image_latents"]
    f = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), f)
    table = pq.read_table(f)
    check_schema_version(table, source=str(f))
    b = decode_batch(to_batch(table))
    assert b.pair_ids == ["p0000", "p0001"]
    assert b.winner.shape == (2, 3, 4, 4, 4) and b.prompt_embeds.shape == (2, 16, 32)
    assert b.image_latents is not None and b.image_latents.shape == (2, 3, 4, 4, 4)
    assert torch.equal(b.loser[0], tensor_from_bytes(rows[0]["loser_latents"]))


def test_other_schema_version_is_refused_with_one_line_naming_file(tmp_path):
    f = tmp_path / "old-shard.parquet"
    pq.write_table(pa.Table.from_pylist([make_row(0, version=2)], schema=PAIR_SCHEMA), f)
    table = pq.read_table(f)
    with pytest.raises(InputError) as err:
        check_schema_version(table, source=str(f))
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "2" in msg and f"expected {SCHEMA_VERSION}" in msg
    # the in-worker path (every batch) refuses it too
    with pytest.raises(InputError, match="schema_version 2 found"):
        decode_batch(to_batch(table))
    check_schema_version(SCHEMA_VERSION)
    with pytest.raises(InputError):
        check_schema_version({"pair_id": np.array(["x"])})  # no version column at all


def test_driver_refuses_bad_shard_before_starting_workers(tmp_path):
    from trainers.train import read_pair_ids

    good, bad = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist([make_row(0)], schema=PAIR_SCHEMA), good)
    pq.write_table(pa.Table.from_pylist([make_row(1, version=7)], schema=PAIR_SCHEMA), bad)
    assert read_pair_ids([str(good)]) == [make_row(0)["pair_id"]]
    with pytest.raises(InputError, match=r"b\.parquet: schema_version 7 found, expected 1"):
        read_pair_ids([str(good), str(bad)])
    with pytest.raises(InputError, match="missing.parquet"):
        read_pair_ids([str(tmp_path / "missing.parquet")])
