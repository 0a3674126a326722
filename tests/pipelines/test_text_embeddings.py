"""The embedding reader of the text stage (pipelines.text_embeddings): a file is read once per actor
for all its texts, the last files used are kept, and a text missing from its file is one clear error."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.errors import InputError
from pipelines.storage import RunStore, StorageSpec
from pipelines.text_embeddings import TEXT_SCHEMA, EmbeddingReader, text_id
from trainers.schema import tensor_to_bytes


def _write(store: RunStore, rel: str, texts: dict[str, torch.Tensor]) -> None:
    rows = [{"text_id": text_id(t), "text": t, "embeds": tensor_to_bytes(e)} for t, e in texts.items()]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=TEXT_SCHEMA), sink)
    store.write_bytes(rel, sink.getvalue().to_pybytes())


def test_each_file_is_read_once_for_all_its_texts_and_the_last_two_are_kept(tmp_path):
    spec = StorageSpec(str(tmp_path))
    store = RunStore(spec, "run")
    embeds = {f"prompt {i}": torch.full((1, 3, 4), float(i), dtype=torch.bfloat16) for i in range(5)}
    _write(store, "text/a.parquet", {k: embeds[k] for k in ("prompt 0", "prompt 1")})
    _write(store, "text/b.parquet", {k: embeds[k] for k in ("prompt 2", "prompt 3")})
    _write(store, "text/c.parquet", {"prompt 4": embeds["prompt 4"]})
    reader = EmbeddingReader(spec, "run")

    assert torch.equal(reader.get("prompt 0", "text/a.parquet"), embeds["prompt 0"])
    store.delete_file("text/a.parquet")  # from here on, a.parquet can only come from what was read
    assert torch.equal(reader.get("prompt 1", "text/a.parquet"), embeds["prompt 1"])
    assert torch.equal(reader.get("prompt 2", "text/b.parquet"), embeds["prompt 2"])
    assert torch.equal(reader.get("prompt 0", "text/a.parquet"), embeds["prompt 0"])  # a is the latest again
    assert torch.equal(reader.get("prompt 4", "text/c.parquet"), embeds["prompt 4"])  # b leaves, a stays
    assert torch.equal(reader.get("prompt 1", "text/a.parquet"), embeds["prompt 1"])
    assert torch.equal(reader.get("prompt 3", "text/b.parquet"), embeds["prompt 3"])  # read again: c leaves
    assert torch.equal(reader.get("prompt 4", "text/c.parquet"), embeds["prompt 4"])  # read again: a leaves
    with pytest.raises(InputError, match="a.parquet: file not found"):
        reader.get("prompt 0", "text/a.parquet")

    with pytest.raises(RuntimeError, match=f"c.parquet holds no row for text {text_id('prompt 9')}"):
        reader.get("prompt 9", "text/c.parquet")
