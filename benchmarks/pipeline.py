"""Ray Data generate+score graph vs a plain Python loop, 1 vs 2 actors per pool, and the trainer's data wait.

Same tiny models as the quickstart (``configs/quickstart.yaml``: tiny CogVideoX + tiny GFM), CPU,
local Ray, a temporary local run store. Everything runs the product code unchanged:

1. **Ray vs loop.** ``pipelines.stages.build_candidates_dataset`` with 1 generation actor and 1
   scoring actor, materialized; against one Python process that builds the pipeline and the scorer
   once and loops ``generate_videos`` + ``encode_mp4`` + ``RunStore.write_bytes`` +
   ``VideoScorer.score`` over the same prompts × seeds (same batches of one prompt's K seeds).
   Actor start-up (process spawn, imports, model build) is timed apart from the streaming part: the
   GCS actor table says when each pool actor turned ALIVE (its constructor had returned); start-up
   ends when the first actor of each pool is up, and ``*_incl_startup`` figures keep it in. The loop's
   model build is likewise reported apart. The headline loop runs at the actors' torch thread count,
   so ``overhead_ratio`` is Ray's own overhead; a second loop at torch's default thread count (what a
   plain script gets) is reported beside it (full mode only).
2. **1 → 2 actors per pool** on this machine. Two actors per pool of ``num_cpus=1`` would not fit a
   2-CPU Ray node, so the 2-actor run gives each actor ``num_cpus = cpus / 4`` (what a user of a
   2-core machine would set). ``torch.get_num_threads()`` inside an actor of each pool shape is read
   by a probe actor started with the product's own ``pool_args`` (Ray sets ``OMP_NUM_THREADS`` from
   the actor's CPU share, and torch takes its intra-op thread count from it).
3. **Trainer data wait.** ``trainers.train.train_dpo`` on pair shards made by the product's pairs
   stage from the candidates of run 1, as the trainer reports it (``trainers.epochs.EpochFeed``):
   time blocked waiting for a micro-batch / time since the first one arrived (the first batch's
   wait, dataset start-up, is reported apart). Run twice side by side: with the default
   ``data_cache_mb`` (epochs after the first from memory) and with ``data_cache_mb=0`` (every epoch
   restarts the Ray Data read, as before the cache).

    python benchmarks/pipeline.py            # 8 prompts x 3 candidates, trainer 12 steps (~8-10 min on 2 cores)
    python benchmarks/pipeline.py --quick    # smoke mode: 2 prompts x 2, trainer 2 steps

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
_t_process = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench +{time.perf_counter() - _t_process:6.1f}s] {msg}", flush=True)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# 1. plain Python loop
# ------------------------------------------------------------------------------------------------


def run_loop(cfg, rows: list[dict], store, videos_rel: str, threads: int | None) -> dict:
    """Build once, then generate + encode + store + score every candidate, one prompt's K seeds per call."""
    import torch

    from actors.models import build_pipeline, generate_videos
    from actors.scoring import VideoScorer
    from actors.video_io import encode_mp4

    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        t0 = time.perf_counter()
        pipe = build_pipeline(cfg.model, "cpu")
        scorer = VideoScorer(cfg.scoring, device="cpu")
        t_build = time.perf_counter() - t0
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["prompt_id"], []).append(row)
        scores, t_gen, t_store, t_score = [], 0.0, 0.0, 0.0
        t1 = time.perf_counter()
        for pid, group in groups.items():
            a = time.perf_counter()
            videos = generate_videos(pipe, cfg.model, cfg.sampling, group[0]["prompt"], [r["seed"] for r in group])
            b = time.perf_counter()
            for row, video in zip(group, videos):
                store.write_bytes(f"{videos_rel}/{pid}-s{row['seed']}.mp4", encode_mp4(video, fps=cfg.sampling.fps))
            c = time.perf_counter()
            for video in videos:
                scores.append(scorer.score(video)["score"])
            d = time.perf_counter()
            t_gen, t_store, t_score = t_gen + b - a, t_store + c - b, t_score + d - c
        t_run = time.perf_counter() - t1
    finally:
        torch.set_num_threads(saved)
    assert len(scores) == len(rows) and all(math.isfinite(s) for s in scores), scores
    return {"threads": used, "build_s": t_build, "run_s": t_run, "generate_s": t_gen, "encode_store_s": t_store,
            "score_s": t_score, "candidates": len(rows)}


# ------------------------------------------------------------------------------------------------
# 1 + 2. the Ray Data graph
# ------------------------------------------------------------------------------------------------


def _map_worker_start_times() -> dict[str, float]:
    """Ray Data pool actors (``_MapWorker``) of this job → when each turned ALIVE (epoch seconds).

    An actor turns ALIVE once its constructor (here: the product's model/scorer build) has returned.
    Read from the GCS actor table (works without the dashboard); {} if that private API moved."""
    try:
        from ray._private import state

        return {a["ActorID"]: (str(a["ActorClassName"]), a["StartTime"] / 1000.0) for a in state.actors().values()
                if "MapWorker" in str(a.get("ActorClassName", "")) and a.get("StartTime")}
    except Exception:  # noqa: BLE001 (only the start-up split is lost; totals are still reported)
        return {}


def run_ray(cfg, rows: list[dict], store, videos_rel: str, pool) -> dict:
    """Materialize the product's generate+score graph with ``pool`` for both pools."""
    from pipelines.stages import build_candidates_dataset
    from pipelines.text_stage import text_stage

    # The prompts' embeddings first, as a round makes them (the loop's pipeline encodes them itself).
    texts = text_stage(cfg, store, [r["prompt"] for r in rows])
    rows = [{**r, "text_file": texts.file(r["prompt"])} for r in rows]
    known = set(_map_worker_start_times())
    ds = build_candidates_dataset(rows, cfg.model, cfg.sampling, cfg.scoring, store, videos_rel, None, pool, pool,
                                  texts.negative)
    t0_epoch, t0 = time.time(), time.perf_counter()
    materialized = ds.materialize()
    total = time.perf_counter() - t0
    out = materialized.take_all()
    assert len(out) == len(rows), (len(out), len(rows))
    assert all(math.isfinite(r["score"]) for r in out), [r["score"] for r in out]
    pools: dict[str, list[float]] = {}
    for actor_id, (name, t) in _map_worker_start_times().items():
        if actor_id not in known:
            pools.setdefault(name, []).append(t - t0_epoch)
    ready = {name: sorted(ts) for name, ts in pools.items()}
    complete = len(ready) == 2 and sum(map(len, ready.values())) == 2 * pool.min_size
    # start-up: until the graph can flow end to end (the first actor of each pool is built); the
    # pools' remaining actors join while work flows, so their build time counts as pipeline time
    startup = max(ts[0] for ts in ready.values()) if complete else None
    all_ready = max(ts[-1] for ts in ready.values()) if complete else None
    return {"actors_per_pool": pool.min_size, "num_cpus_per_actor": pool.num_cpus, "total_s": total,
            "startup_s": startup, "steady_s": total - startup if startup is not None else None,
            "all_actors_ready_s": all_ready, "actor_ready_s": ready, "candidates": len(out),
            "materialized": materialized}


class _ThreadProbe:
    """A Ray Data actor launched with the product's pool_args: reports what torch sees in there."""

    def __init__(self):
        import torch

        self.threads = torch.get_num_threads()
        self.omp = os.environ.get("OMP_NUM_THREADS", "")

    def __call__(self, batch):
        import numpy as np

        n = len(batch["id"])
        return {"torch_threads": np.full(n, self.threads), "omp_num_threads": np.asarray([self.omp] * n)}


def probe_threads(*pools) -> list[dict]:
    """For each pool shape: torch.get_num_threads() and OMP_NUM_THREADS seen in an actor of that shape."""
    import ray

    from pipelines.stages import pool_args

    out = []
    for pool in pools:
        args = {**pool_args(pool), "batch_size": 1}
        rows = ray.data.range(pool.min_size * 2).map_batches(_ThreadProbe, **args).take_all()
        out.append({"torch_threads": sorted({int(r["torch_threads"]) for r in rows}),
                    "omp_num_threads": sorted({str(r["omp_num_threads"]) for r in rows})})
    return out


# ------------------------------------------------------------------------------------------------
# 3. trainer data wait
# ------------------------------------------------------------------------------------------------


def make_pair_shards(cfg, store, prompts, materialized) -> list[str]:
    """Pair shards from run 1's candidates, through the product's candidates marker + pairs stage."""
    from pipelines.rounds import _file_listing, run_round
    from pipelines.run_layout import RoundPaths

    paths = RoundPaths(0)
    materialized.write_parquet(store.path(paths.candidates), filesystem=store.fs)
    store.write_json(paths.marker("candidates"), {**_file_listing(store, paths.candidates), "seconds": 0.0})
    run_round(cfg, store, prompts, 0, stages=("pairs",))
    return [store.path(f["path"]) for f in store.read_json(paths.marker("pairs"))["files"]]


def run_trainer(cfg, pair_files: list[str], workdir: str, steps: int, cache_mb: float | None) -> dict:
    """The quickstart trainer as the pipeline's train stage runs it in round 0 (reference = base
    model), for ``steps`` optimizer steps; the data-wait figures are the trainer's own metrics."""
    from trainers.train import train_dpo

    update = {"max_steps": steps, "reference": "base"}
    if cache_mb is not None:
        update["data_cache_mb"] = cache_mb
    trainer_cfg = cfg.trainer.model_copy(update=update)
    tag = "stream" if cache_mb == 0 else "memory"
    t0 = time.perf_counter()
    metrics = train_dpo(trainer_cfg, cfg.model, pair_files=pair_files, filesystem=None,
                        storage_path=os.path.join(workdir, f"train-{tag}"), name="checkpoints",
                        lora_out_dir=os.path.join(workdir, f"lora-{tag}"))
    wall = time.perf_counter() - t0
    assert metrics.get("steps") == steps, metrics
    return {"steps": steps, "data_cache_mb": trainer_cfg.data_cache_mb, "train_dpo_wall_s": wall,
            **{k: metrics[k] for k in ("data_wait_fraction", "data_wait_s", "first_batch_wait_s", "loss")}}


# ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke mode: 2 prompts x 2 candidates, 2 trainer steps")
    ap.add_argument("--prompts", type=int, help="prompts (default 8; quick 2)")
    ap.add_argument("--candidates", type=int, help="candidates per prompt (default 3; quick 2)")
    ap.add_argument("--train-steps", type=int, help="trainer optimizer steps (default 12; quick 2)")
    ap.add_argument("--no-loop-default-threads", action="store_true",
                    help="skip the extra loop at torch's default thread count (always skipped with --quick)")
    a = ap.parse_args()
    n_prompts = a.prompts or (2 if a.quick else 8)
    k = a.candidates or (2 if a.quick else 3)
    steps = a.train_steps or (2 if a.quick else 12)
    loop_default_threads = not (a.quick or a.no_loop_default_threads)

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    import torch

    from pipelines.config import PoolConfig, load_config
    from pipelines.prompts import load_prompts
    from pipelines.run_layout import candidate_seed
    from pipelines.storage import RunStore, StorageSpec

    t_start = time.perf_counter()
    cpus = os.cpu_count() or 1
    workdir = tempfile.mkdtemp(prefix="videogpa-bench-")
    cfg = load_config(QUICKSTART, [f"output_uri={workdir}", "run_name=bench", f"prompts.limit={n_prompts}",
                                   f"pairing.candidates_per_prompt={k}", f"generation_pool.batch_size={k}",
                                   f"scoring_pool.batch_size={k}"])
    store = RunStore(StorageSpec(workdir), cfg.run_name)
    prompts = load_prompts(cfg.prompts.path, cfg.prompts.limit)
    rows = [{"round": 0, "prompt_id": p.prompt_id, "prompt": p.text, "image": "",
             "seed": candidate_seed(cfg.seed, 0, p.prompt_id, j)} for p in prompts for j in range(k)]
    n = len(rows)
    log(f"{n} candidates ({len(prompts)} prompts x {k}), {cpus} CPUs, load average {load_average()}, "
        f"driver torch threads {torch.get_num_threads()}, run store {workdir}")

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    pool1 = cfg.generation_pool.model_copy(update={"min_size": 1, "max_size": 1})
    pool2 = PoolConfig(min_size=2, max_size=2, num_cpus=cpus / 4, batch_size=pool1.batch_size)
    threads_1, threads_2 = probe_threads(pool1, pool2)
    log(f"torch threads inside actors: 1/pool (num_cpus={pool1.num_cpus}) {threads_1}; "
        f"2/pool (num_cpus={pool2.num_cpus}) {threads_2}")

    loads = {"start": load_average()}
    actor_threads = threads_1["torch_threads"][0] if len(threads_1["torch_threads"]) == 1 else None
    loop = run_loop(cfg, rows, store, "loop/videos", threads=actor_threads)
    log(f"loop ({loop['threads']} torch thread(s), as the actors): build {loop['build_s']:.1f}s, {n} candidates in "
        f"{loop['run_s']:.1f}s (generate {loop['generate_s']:.1f}, encode+store {loop['encode_store_s']:.1f}, "
        f"score {loop['score_s']:.1f})")
    ray1 = run_ray(cfg, rows, store, "round-000/videos", pool1)
    log(f"ray 1 actor/pool: {ray1['total_s']:.1f}s total, start-up {ray1['startup_s']}, steady {ray1['steady_s']}")
    loads["after_ray1"] = load_average()
    ray2 = run_ray(cfg, rows, store, "ray2/videos", pool2)
    log(f"ray 2 actors/pool: {ray2['total_s']:.1f}s total, start-up {ray2['startup_s']}, steady {ray2['steady_s']}, "
        f"all actors ready {ray2['all_actors_ready_s']}")
    loop_default = None
    if loop_default_threads and loop["threads"] != torch.get_num_threads():
        loop_default = run_loop(cfg, rows, store, "loop-default/videos", threads=None)
        log(f"loop ({loop_default['threads']} torch threads, torch default): build {loop_default['build_s']:.1f}s, "
            f"run {loop_default['run_s']:.1f}s (generate {loop_default['generate_s']:.1f}, "
            f"score {loop_default['score_s']:.1f})")
    loads["after_candidates"] = load_average()

    pair_files = make_pair_shards(cfg, store, prompts, ray1.pop("materialized"))
    ray2.pop("materialized")
    log(f"pair shards: {len(pair_files)} file(s)")
    train = run_trainer(cfg, pair_files, workdir, steps, cache_mb=None)
    train_stream = run_trainer(cfg, pair_files, workdir, steps, cache_mb=0)
    for label, t in (("epochs from memory (default)", train), ("every epoch streamed", train_stream)):
        log(f"trainer, {label}: {steps} steps in {t['train_dpo_wall_s']:.1f}s, data wait {t['data_wait_s']:.2f}s "
            f"({100 * t['data_wait_fraction']:.1f}%), first batch {t['first_batch_wait_s']:.2f}s")
    loads["end"] = load_average()
    ray.shutdown()

    def rate(t):
        return n / t if t else None

    steady1 = ray1["steady_s"] if ray1["steady_s"] is not None else ray1["total_s"]
    steady2 = ray2["steady_s"] if ray2["steady_s"] is not None else ray2["total_s"]
    result = {
        "benchmark": "pipeline_ray_vs_loop", "quick": a.quick, "cpus": cpus, "candidates": n,
        "prompts": len(prompts), "candidates_per_prompt": k, "batch_size": pool1.batch_size,
        "candidates_per_s_ray": rate(steady1),
        "candidates_per_s_loop": rate(loop["run_s"]),
        "overhead_ratio": steady1 / loop["run_s"],
        "speedup_2_actors": steady1 / steady2,
        "data_wait_fraction": train["data_wait_fraction"],
        "data_wait_fraction_streaming_every_epoch": train_stream["data_wait_fraction"],
        "candidates_per_s_ray_incl_startup": rate(ray1["total_s"]),
        "candidates_per_s_loop_incl_build": rate(loop["build_s"] + loop["run_s"]),
        "overhead_ratio_incl_startup": ray1["total_s"] / (loop["build_s"] + loop["run_s"]),
        "speedup_2_actors_incl_startup": ray1["total_s"] / ray2["total_s"],
        "candidates_per_s_ray_2_actors": rate(steady2),
        "loop_torch_threads": loop["threads"],
        "actor_torch_threads_1_per_pool": threads_1["torch_threads"],
        "actor_torch_threads_2_per_pool": threads_2["torch_threads"],
        "actor_omp_num_threads_1_per_pool": threads_1["omp_num_threads"],
        "actor_omp_num_threads_2_per_pool": threads_2["omp_num_threads"],
        "ray_1_actor": {k_: v for k_, v in ray1.items()},
        "ray_2_actors": {k_: v for k_, v in ray2.items()},
        "loop": loop,
        "trainer": train,
        "trainer_streaming_every_epoch": train_stream,
        "load_average_1min": loads,
        "wall_s": time.perf_counter() - t_start,
    }
    if loop_default is not None:
        result["loop_default_threads"] = loop_default
        result["candidates_per_s_loop_default_threads"] = rate(loop_default["run_s"])
        result["overhead_ratio_vs_loop_default_threads"] = steady1 / loop_default["run_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
