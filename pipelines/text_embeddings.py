"""The text-encoding stage: each prompt, and the negative prompt under classifier-free guidance,
encoded once per run by the text encoder alone, on its own elastic pool (``text_pool``).

Generation, pair encoding, evaluation and every online round read the embeddings from the run
instead of holding a text encoder. Layout, under the run::

    text/<model key>/<batch>/*.parquet    one row per text: text_id, text, embeds (safetensors bytes)
    text/<model key>/<batch>.done.json    the batch's commit marker (its files and text ids), written last

``<model key>`` digests the model section (family, weights, revision, dtype): embeddings of another
model are never reused. A call encodes only the texts no marker lists yet, as one new batch; a batch
cut short (no marker) is removed and redone, so a rerun redoes nothing already committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actors.model_config import ModelConfig, SamplingConfig
from actors.models import PromptEmbeds, uses_cfg
from pipelines.storage import RunStore, StorageSpec
from trainers.schema import tensor_from_bytes

log = logging.getLogger(__name__)

TEXT_DIR = "text"
TEXT_SCHEMA = pa.schema([
    pa.field("text_id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("embeds", pa.binary(), nullable=False),  # [1, L, D] in the text encoder's dtype
])


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def model_key(model: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(model.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def texts_to_encode(prompts: list[str], sampling: SamplingConfig) -> list[str]:
    """The prompts, plus the negative prompt ("" when none is set) where sampling uses CFG."""
    texts = list(dict.fromkeys(prompts))
    if uses_cfg(sampling) and sampling.negative_prompt not in texts:
        texts.append(sampling.negative_prompt)
    return texts


def committed(store: RunStore, model: ModelConfig) -> dict[str, str]:
    """text_id → the run-relative file holding its embeddings, over every committed batch."""
    index: dict[str, str] = {}
    for marker in store.list_files(f"{TEXT_DIR}/{model_key(model)}", ".done.json"):
        index.update(store.read_json(marker)["texts"])
    return index


# Texts a Parquet file holds at most: a reader loads a whole file to find one text, so a file stays
# small (Wan's 512 x 4096 bf16 embeddings: 16 texts = 64 MiB) however many prompts a run has.
TEXTS_PER_FILE = 16


class EmbeddingReader:
    """Reads texts' embeddings from the run's text stage (in an actor). A file is read whole, once,
    and its texts kept while it is among the last ``keep_files`` used: an actor's rows come prompt by
    prompt, and under CFG every call also needs the negative prompt, which lives in another file."""

    def __init__(self, storage: StorageSpec, run_name: str, keep_files: int = 2):
        self.store, self.keep_files = RunStore(storage, run_name), keep_files
        self._files: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def get(self, text: str, file: str) -> torch.Tensor:
        if file not in self._files:
            # whole-file reads go through the store's retries (S3 misreports some transient errors)
            table = pq.read_table(pa.BufferReader(self.store.read_bytes(file)), columns=["text_id", "embeds"])
            ids, embeds = table.column("text_id").to_pylist(), table.column("embeds")
            self._files[file] = {i: tensor_from_bytes(embeds[n].as_py()) for n, i in enumerate(ids)}
            while len(self._files) > self.keep_files:
                self._files.popitem(last=False)
        self._files.move_to_end(file)
        texts = self._files[file]
        key = text_id(text)
        if key not in texts:
            raise RuntimeError(f"text: {self.store.uri(file)} holds no row for text {key}")
        return texts[key]

    def embeds(self, prompt: str, file: str, negative: tuple[str, str] | None) -> PromptEmbeds:
        """The prompt's embeddings and, given (negative prompt, its file), the negative prompt's."""
        return PromptEmbeds(self.get(prompt, file), None if negative is None else self.get(*negative))
