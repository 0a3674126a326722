"""The text-encoding stage's run: each text the run has not encoded yet goes through the text pool
(``pipelines.stages.EncodeTexts``) once, as one committed batch (``pipelines.text_embeddings``: the
layout and the reader the actors use)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from actors.model_config import ModelConfig
from actors.models import uses_cfg
from pipelines.config import PoolConfig, VideoGPAConfig
from pipelines.stages import build_text_dataset, write_parquet
from pipelines.storage import RunStore
from pipelines.text_embeddings import TEXT_DIR, TEXTS_PER_FILE, committed, model_key, text_id, texts_to_encode

log = logging.getLogger(__name__)


def ensure_text_embeddings(store: RunStore, model: ModelConfig, texts: list[str], pool: PoolConfig) -> dict[str, str]:
    """Encode the texts no committed batch holds (on ``pool``); returns text_id → file for all ``texts``."""
    index = committed(store, model)
    missing = {text_id(t): t for t in texts if text_id(t) not in index}
    if missing:
        root = f"{TEXT_DIR}/{model_key(model)}"
        batch = f"{root}/{hashlib.sha256(''.join(sorted(missing)).encode()).hexdigest()[:16]}"
        store.delete_dir(batch)  # a batch cut short before its marker
        log.info("text: encoding %d text(s) once for the run (%d already encoded)", len(missing),
                 len(texts) - len(missing))
        rows = [{"text_id": i, "text": t} for i, t in missing.items()]
        write_parquet(build_text_dataset(rows, model, store, pool), store, batch, max_rows_per_file=TEXTS_PER_FILE)
        written = {}
        for f in store.list_files(batch, ".parquet"):
            table = pq.read_table(pa.BufferReader(store.read_bytes(f)), columns=["text_id"])  # with retries
            for i in table.column(0).to_pylist():
                written[i] = f
        lost = set(missing) - set(written)
        if lost:
            raise RuntimeError(f"text: {len(lost)} text(s) missing from {store.uri(batch)} after encoding")
        store.write_json(f"{batch}.done.json", {"texts": written})
        index.update(written)
    else:
        log.info("text: all %d text(s) already encoded", len(texts))
    return {text_id(t): index[text_id(t)] for t in texts}


@dataclass(frozen=True)
class TextFiles:
    """Where the run's text stage keeps the embeddings a graph's actors read."""

    index: dict[str, str]  # text_id -> run-relative file
    negative: tuple[str, str] | None  # (negative prompt, its file) under CFG, else None

    def file(self, text: str) -> str:
        return self.index[text_id(text)]


def text_stage(cfg: VideoGPAConfig, store: RunStore, prompts: list[str]) -> TextFiles:
    """The text stage for ``prompts`` (and the negative prompt under CFG): encodes what the run has
    not encoded yet, on ``text_pool``."""
    index = ensure_text_embeddings(store, cfg.model, texts_to_encode(prompts, cfg.sampling), cfg.text_pool)
    negative = cfg.sampling.negative_prompt
    return TextFiles(index, (negative, index[text_id(negative)]) if uses_cfg(cfg.sampling) else None)
