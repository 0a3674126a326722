"""The Ray Data graphs of a round: texts → embeddings, prompts → candidates → scores, and pairs →
latents → shards.

Each model-bearing step is a callable class run on its own elastic actor pool
(``ActorPoolStrategy(min_size, max_size)``), so generation, scoring and encoding scale
independently and Ray Data's streaming executor applies backpressure between them. Videos
go from the generation actors straight to storage and to the scoring actors through the
object store; the driver only sees small metadata rows.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from PIL import Image, UnidentifiedImageError

from actors import s3
from actors.errors import InputError
from actors.model_config import ModelConfig, SamplingConfig
from actors.models import build_pipeline, encode_prompts, encode_training_inputs, generate_videos, load_lora
from actors.scoring import VideoScorer
from actors.scoring_config import SCORE_KEYS, ScoringConfig
from actors.video_io import decode_video, encode_mp4
from pipelines.config import PoolConfig
from pipelines.storage import RunStore, StorageSpec, make_filesystem, read_bytes, storage_error
from pipelines.text_embeddings import TEXT_SCHEMA, EmbeddingReader
from trainers.schema import PAIR_SCHEMA, SCHEMA_VERSION, tensor_to_bytes
from trainers.storage_dirs import local_copy

log = logging.getLogger(__name__)


def _device() -> str:
    """The actor's device; on CPU, also pin torch's threads to the CPUs Ray gave this actor.

    Ray sets OMP_NUM_THREADS for its workers only when the environment does not, and actors
    sharing cores with more threads than CPUs ran 3-4x slower in benchmarks/pipeline.py.
    """
    if torch.cuda.is_available():
        return "cuda"
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    return "cpu"


def _use_run_s3_settings(storage: StorageSpec) -> None:
    """An actor that loads the model: the run's S3 settings reach its clients, for an s3:// model."""
    s3.export_settings(s3.settings_env(storage.endpoint_url, storage.region))


def _load_image(store: RunStore, uri: str) -> np.ndarray | None:
    """An I2V first frame as uint8 [H,W,3] from a local path or s3:// URI; None when not given."""
    if not uri:
        return None
    fs, path = make_filesystem(StorageSpec(uri, store.spec.endpoint_url, store.spec.region))
    try:
        return np.asarray(Image.open(io.BytesIO(read_bytes(fs, path))).convert("RGB"))
    except UnidentifiedImageError:
        raise InputError(f"image {uri!r}: not a readable image file") from None


def pool_args(pool: PoolConfig) -> dict[str, Any]:
    """map_batches arguments for an elastic actor pool.

    A pool actor that dies (node lost, OOM-killed, preempted) is restarted without limit and its
    in-flight batch retried on a live actor (Ray Data's default for actor pools, max_restarts and
    max_task_retries -1; passing them is deprecated); outputs are keyed by (prompt, seed), so a retried
    batch overwrites its own files and every candidate still appears exactly once (tests/faults/test_faults.py).
    """
    return dict(
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        num_gpus=pool.num_gpus,
        num_cpus=pool.num_cpus,
        batch_size=pool.batch_size,
    )


class EncodeTexts:
    """Actor: texts → embedding rows (``pipelines.text_embeddings``). It loads the tokenizer and the
    text encoder, nothing else."""

    def __init__(self, model: dict, storage: StorageSpec):
        self.model = ModelConfig(**model)
        _use_run_s3_settings(storage)
        self.pipe = build_pipeline(self.model, _device(), stage="text")

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        texts = [str(t) for t in batch["text"]]
        embeds = encode_prompts(self.pipe, self.model, texts)
        return pa.Table.from_pylist(
            [{"text_id": str(i), "text": t, "embeds": tensor_to_bytes(e)}
             for i, t, e in zip(batch["text_id"], texts, embeds)], schema=TEXT_SCHEMA)


class GenerateCandidates:
    """Actor: rows (prompt, seed, text_file) → one video each, written to storage as mp4 and passed on
    as frames. It holds the denoiser(s) and the VAE; the prompts' embeddings come from the text stage
    (``text_file``: the file holding the row's prompt; ``negative``: the negative prompt and its file
    under CFG)."""

    def __init__(self, model: dict, sampling: dict, storage: StorageSpec, run_name: str, videos_rel: str,
                 lora_rel: str | None, negative: tuple[str, str] | None, fence: Callable[[], None] | None = None):
        self.model, self.sampling = ModelConfig(**model), SamplingConfig(**sampling)
        _use_run_s3_settings(storage)
        self.store, self.videos_rel = RunStore(storage, run_name), videos_rel
        self.store.fence = fence  # the driver's lease (pipelines.lease): no video lands once it is lost
        self.texts, self.negative = EmbeddingReader(storage, run_name), negative
        self.pipe = build_pipeline(self.model, _device(), stage="generate",
                                   offload_idle_expert=self.sampling.offload_idle_expert)
        if lora_rel:
            # Online rounds sample from the current policy: base + the previous round's LoRA.
            try:
                with local_copy(self.store.path(lora_rel), self.store.fs) as lora_dir:
                    load_lora(self.pipe, self.model, lora_dir, self.sampling.lora_scale,
                              source=self.store.uri(lora_rel))
            except OSError as err:  # fetching it from storage failed
                raise storage_error(self.store.uri(lora_rel), err) from None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for i, pid in enumerate(batch["prompt_id"]):
            groups.setdefault(str(pid), []).append(i)
        out: dict[str, list] = {k: [] for k in ("round", "prompt_id", "prompt", "image", "seed", "video_uri", "frames")}
        for pid, rows in groups.items():
            first = rows[0]
            seeds = [int(batch["seed"][i]) for i in rows]
            image = _load_image(self.store, str(batch["image"][first]))
            prompt = str(batch["prompt"][first])
            embeds = self.texts.embeds(prompt, str(batch["text_file"][first]), self.negative)
            videos = generate_videos(self.pipe, self.model, self.sampling, prompt, seeds, image, embeds)
            for i, seed, video in zip(rows, seeds, videos):
                # deterministic: a retried task overwrites, never duplicates
                rel = f"{self.videos_rel}/{pid}-s{seed}.mp4"
                self.store.write_bytes(rel, encode_mp4(video, fps=self.sampling.fps))
                for key in ("round", "prompt_id", "prompt", "image"):
                    out[key].append(batch[key][i])
                out["seed"].append(seed)
                out["video_uri"].append(rel)
                out["frames"].append(video)
        return {k: np.stack(v) if k == "frames" else np.asarray(v) for k, v in out.items()}


class ScoreCandidates:
    """Actor: frames → geometry scores; the frames column is dropped so only metadata is written.

    Rows without frames (re-scoring stored candidates) are read from their ``video_uri``.
    """

    def __init__(self, scoring: dict, with_epipolar: bool = False, storage: StorageSpec | None = None,
                 run_name: str | None = None):
        self.store = RunStore(storage, run_name) if storage is not None else None
        self.scorer = VideoScorer(ScoringConfig(**scoring), device=_device())
        self.scorer_name = f"{scoring['scorer']}:{scoring['backend']}"
        self.with_epipolar = with_epipolar or None  # None: only when epipolar is the training scorer

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        scores: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
        videos = batch["frames"] if "frames" in batch else (
            decode_video(self.store.read_bytes(str(uri))) for uri in batch["video_uri"])
        for frames in videos:
            try:
                result = self.scorer.score(frames, with_epipolar=self.with_epipolar)
            except InputError as err:
                # One broken candidate must not sink the round: it is recorded as unscorable and dropped at pairing.
                log.warning("candidate not scorable: %s", err)
                result = {}
            for key in SCORE_KEYS:
                scores[key].append(float(result.get(key, float("nan"))))
        out = {k: v for k, v in batch.items() if k != "frames" and k not in SCORE_KEYS}
        out["scorer"] = np.asarray([self.scorer_name] * len(batch["seed"]))
        out["lpips_backbone"] = np.asarray([self.scorer.lpips_backbone_used] * len(batch["seed"]))
        out.update({k: np.asarray(v, dtype=np.float64) for k, v in scores.items()})
        return out


class EncodePairs:
    """Actor: winner/loser videos → VAE latents + prompt embeddings (+ image latents) as shard rows.
    It holds the VAE without its decoder; the prompt's embeddings are copied from the text stage (``text_file``).

    Each input row carries its pair's two candidate rows as ``winner`` and ``loser``; the shard's
    per-side columns (``winner_seed`` … ``loser_motion``) are built from them here and only here.
    """

    def __init__(self, model: dict, storage: StorageSpec, run_name: str, official_objective: bool = False):
        self.model = ModelConfig(**model)
        self.official_objective = official_objective  # trainer.official_objective: the official latent encoding
        _use_run_s3_settings(storage)
        self.store = RunStore(storage, run_name)
        self.texts = EmbeddingReader(storage, run_name)
        self.pipe = build_pipeline(self.model, _device(), stage="encode")
        self.model_id = self.model.pretrained if self.model.pretrained != "tiny" else f"tiny:{self.model.family}"

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["pair_id"])):
            sides = {side: batch[side][i] for side in ("winner", "loser")}  # each side's candidate row
            videos = np.stack([decode_video(self.store.read_bytes(str(row["video_uri"]))) for row in sides.values()])
            image = _load_image(self.store, str(batch["image"][i]))
            prompt = str(batch["prompt"][i])
            embeds = self.texts.get(prompt, str(batch["text_file"][i]))
            enc = encode_training_inputs(self.pipe, self.model, videos, prompt, image, prompt_embeds=embeds,
                                         official_objective=self.official_objective)
            latents = enc["latents"].cpu()
            rows.append({
                "schema_version": SCHEMA_VERSION,
                "pair_id": str(batch["pair_id"][i]),
                "round": int(batch["round"][i]),
                "prompt_id": str(batch["prompt_id"][i]),
                "prompt": str(batch["prompt"][i]),
                "model_id": self.model_id,
                "scorer": str(batch["scorer"][i]),
                **{f"{side}_{key}": (int if key == "seed" else float)(row[key])
                   for side, row in sides.items() for key in ("seed", "score", "motion")},
                "winner_latents": tensor_to_bytes(latents[0]),
                "loser_latents": tensor_to_bytes(latents[1]),
                "latent_shape": list(latents.shape[1:]),
                "latent_dtype": str(latents.dtype).removeprefix("torch."),
                "prompt_embeds": tensor_to_bytes(enc["prompt_embeds"][0].cpu()),
                "image_latents": (None if enc["image_latents"] is None
                                  else tensor_to_bytes(enc["image_latents"][0].cpu())),
            })
        return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def build_text_dataset(rows: list[dict[str, str]], model: ModelConfig, store: RunStore,
                       text_pool: PoolConfig) -> ray.data.Dataset:
    """(text_id, text) rows → embedding rows (``pipelines.text_embeddings.TEXT_SCHEMA``)."""
    return ray.data.from_items(rows).map_batches(
        EncodeTexts, fn_constructor_kwargs=dict(model=model.model_dump(), storage=store.spec), **pool_args(text_pool))


def build_candidates_dataset(rows: list[dict[str, Any]], model: ModelConfig, sampling: SamplingConfig,
                             scoring: ScoringConfig, store: RunStore, videos_rel: str, lora_rel: str | None,
                             generation_pool: PoolConfig, scoring_pool: PoolConfig,
                             negative: tuple[str, str] | None, with_epipolar: bool = False) -> ray.data.Dataset:
    """prompts × seeds (each row with its prompt's ``text_file``) → generated videos → scored
    candidate rows (metadata only). ``negative``: the negative prompt and its file under CFG."""
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(
        GenerateCandidates,
        fn_constructor_kwargs=dict(model=model.model_dump(), sampling=sampling.model_dump(), storage=store.spec,
                                   run_name=store.run_name, videos_rel=videos_rel, lora_rel=lora_rel,
                                   negative=negative, fence=store.fence),
        **pool_args(generation_pool),
    )
    return ds.map_batches(ScoreCandidates,
                          fn_constructor_kwargs=dict(scoring=scoring.model_dump(), with_epipolar=with_epipolar),
                          **pool_args(scoring_pool))


def build_rescoring_dataset(rows: list[dict[str, Any]], scoring: ScoringConfig, store: RunStore,
                            scoring_pool: PoolConfig) -> ray.data.Dataset:
    """stored candidate rows (with video_uri) → the same rows scored anew by ``scoring``."""
    return ray.data.from_items(rows).map_batches(
        ScoreCandidates,
        fn_constructor_kwargs=dict(scoring=scoring.model_dump(), storage=store.spec, run_name=store.run_name),
        **pool_args(scoring_pool),
    )


def build_pairs_dataset(pair_rows: list[dict[str, Any]], model: ModelConfig, store: RunStore,
                        encoding_pool: PoolConfig, official_objective: bool = False) -> ray.data.Dataset:
    """pair metadata (each row with its prompt's ``text_file``) → encoded preference-pair shard rows (PAIR_SCHEMA)."""
    return ray.data.from_items(pair_rows).map_batches(
        EncodePairs,
        fn_constructor_kwargs=dict(model=model.model_dump(), storage=store.spec, run_name=store.run_name,
                                   official_objective=official_objective),
        **pool_args(encoding_pool),
    )


def write_parquet(ds: Any, store: RunStore, rel: str, max_rows_per_file: int | None = None) -> None:
    """Write the dataset's blocks as Parquet files under ``rel`` (of at most ``max_rows_per_file``
    rows, where given); with the run's lease (``pipelines.lease``), each write task checks it first,
    so a driver that lost the run while its tasks were in flight adds no file to the new holder's stage."""
    fence = store.fence
    if fence is not None:
        def fenced(block: Any) -> Any:
            fence()
            return block

        ds = ds.map_batches(fenced, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    ds.write_parquet(store.path(rel), filesystem=store.fs, max_rows_per_file=max_rows_per_file)
