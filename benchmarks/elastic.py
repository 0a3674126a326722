"""Elastic at cluster scale: `videogpa align` on an autoscaling Ray cluster that starts with no GPU node.

The cluster is ``cluster/raycluster.yaml`` rehearsed on this machine (``benchmarks/rehearsal/clusters.py``:
Ray's own autoscaler, its fake multi-node provider, the manifest's node groups; every node a real
raylet). The run goes in through ``ray job submit`` and writes to S3 (a moto server on 127.0.0.1),
since a node's disk dies with it. While it runs:

1. the generation and scoring pools (``num_gpus: 1``, ``max_size: 3``) grow as the autoscaler adds
   GPU nodes from zero;
2. one GPU node hosting a generation actor is killed whole (raylet and everything under it, as a
   preempted spot node) while the candidates stage runs;
3. one GPU node hosting a Ray Train worker (``trainer.num_workers=2``, one GPU each) is killed once
   the step-3 checkpoint is on S3; the trainer resumes from it on a replacement node;
4. after the run the idle GPU nodes are terminated back to zero.

    python -m benchmarks.elastic --out DIR

Writes ``DIR/run/`` (the finished run, downloaded from S3), ``DIR/timeline.json`` and
``DIR/timeline.png`` (GPU nodes and actors per pool over time, kills marked). The last line of
output is one JSON object with the figures (docs/CONTRACTS.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from benchmarks.rehearsal.clusters import AutoscalingCluster, Timeline
from benchmarks.rehearsal.processes import free_port

PROMPTS, CANDIDATES = 8, 6
RUN_NAME = "elastic"
# The quickstart's tiny models on pools shaped as on a GPU cluster. The tiny transformer takes ~3 ms
# a step: 600 steps make a video cost about 1.5 times its scoring (GFM input raised to 112 px; at 300
# steps, with prompts encoded once by the text stage, scoring was the bottleneck from the start), so
# the candidates stage outlasts the autoscaler's reaction (Ray Data asks for a node at most every
# 10 s), generation is the bottleneck at first, and scoring, fed by several generation actors, later.
# 6 candidates a prompt: with 4, one generation actor on a quiet machine wrote half the videos before a
# second one started, the node was killed then, and scoring never fell behind enough to grow.
# No larger than that needs: tests/e2e/test_elastic.py runs this scenario in every suite.
OVERRIDES = [
    f"prompts.limit={PROMPTS}", f"pairing.candidates_per_prompt={CANDIDATES}",
    "sampling.num_inference_steps=600", "scoring.resolution=112",
    *[f"{pool}_pool.{key}={value}" for pool in ("generation", "scoring")
      for key, value in (("num_gpus", 1), ("min_size", 1), ("max_size", 3), ("batch_size", 1))],
    "encoding_pool.num_gpus=1",
    "trainer.use_gpu=true", "trainer.num_workers=2", "trainer.max_steps=6", "trainer.checkpoint_every=3",
    # every pair in each step (4 micro-batches a worker): steps slow enough that the node is killed between
    # the first checkpoint (step 3) and the last (step 6), which the kill waits for
    "trainer.effective_batch_size=8", "trainer.log_every=1",
]
POOLS = {"generation": "GenerateCandidates", "scoring": "ScoreCandidates", "trainer": "RayTrainWorker"}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
JOB_TIMEOUT_S = 20 * 60
SCALE_DOWN_TIMEOUT_S = 180


def log(msg: str) -> None:
    print(f"[elastic {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class _Bucket:
    """The run's prefix on the S3 server, read directly (not through the run's code)."""

    def __init__(self, endpoint: str, bucket: str):
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http",
                                    region="us-east-1", access_key="testing", secret_key="testing")
        self.root = f"{bucket}/runs/{RUN_NAME}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/{rel}").type != pafs.FileType.NotFound

    def count(self, rel: str, suffix: str) -> int:
        selector = pafs.FileSelector(f"{self.root}/{rel}", allow_not_found=True)
        return sum(1 for i in self.fs.get_file_info(selector) if i.path.endswith(suffix))

    def text(self, rel: str) -> str:
        try:
            with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
                return f.read().decode()
        except (OSError, FileNotFoundError):
            return ""

    def download(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.root, str(dest), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())


def _checkpoints(bucket: _Bucket) -> list[str]:
    """Checkpoints Ray Train has registered so far (its manager snapshot is written after each)."""
    return sorted(set(re.findall(r"checkpoint_\d{7}",
                                 bucket.text("round-000/checkpoints/checkpoint_manager_snapshot.json"))))


def _strike(cluster: AutoscalingCluster, timeline: Timeline, pool: str, stage: str, t0: float) -> dict[str, Any]:
    """Kill the node of one actor of ``pool`` (the one that joined last: not the node others wait on)."""
    nodes = timeline.latest()["actors"][pool]
    node = nodes[-1]
    victims = cluster.kill_node(node)
    log(f"killed node {node[-5:]} ({len(victims)} processes) hosting a {pool} actor during {stage}")
    return {"stage": stage, "node": node, "processes": len(victims), "at_s": round(time.monotonic() - t0, 1)}


def run(out: Path, s3_endpoint: str | None = None, cluster: AutoscalingCluster | None = None) -> dict[str, Any]:
    """The scenario end to end; returns the figures (see the module docstring). Without
    ``s3_endpoint`` a moto server is started; without ``cluster`` (started, with no GPU node, and
    with ``AWS_ENV`` in its environment) a rehearsal cluster is."""
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        if s3_endpoint is None:
            from moto.server import ThreadedMotoServer

            port = free_port()
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
            server.start()
            stack.callback(server.stop)
            s3_endpoint = f"http://127.0.0.1:{port}"
        bucket_name = f"videogpa-elastic-{uuid.uuid4().hex[:8]}"
        import boto3

        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket_name)
        bucket = _Bucket(s3_endpoint, bucket_name)

        if cluster is None:
            cluster = AutoscalingCluster(Path(stack.enter_context(_short_tmpdir())), env=AWS_ENV)
            stack.callback(lambda: _assert_stopped(cluster))
            cluster.start()
        log(f"autoscaling cluster up: head {cluster.gcs_address}, GPU nodes {len(cluster.gpu_nodes())}")
        gpu_nodes_start = len(cluster.gpu_nodes())

        entrypoint = ["videogpa", "align", "--config", "configs/quickstart.yaml", f"run_name={RUN_NAME}",
                      f"output_uri=s3://{bucket_name}/runs", f"storage.endpoint_url={s3_endpoint}",
                      "storage.region=us-east-1", *OVERRIDES]
        timeline = stack.enter_context(Timeline(cluster, POOLS, every_s=2.0))
        t0 = time.monotonic()
        submission = cluster.submit(entrypoint, f"elastic-{uuid.uuid4().hex[:8]}")
        log(f"submitted {submission}")
        kills: list[dict[str, Any]] = []
        expected = PROMPTS * CANDIDATES
        status, first_gpu_at = None, None
        deadline = t0 + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            status = cluster.status(submission)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            latest = timeline.latest()
            if first_gpu_at is None and latest["gpu_nodes"]:
                first_gpu_at = time.monotonic() - t0
            done = {k["stage"] for k in kills}
            if ("candidates" not in done and latest["actors"]["generation"]
                    and (len(latest["actors"]["generation"]) >= 2
                         or bucket.count("round-000/videos", ".mp4") >= 3 * expected // 4)
                    and not bucket.exists("round-000/candidates.done.json")):
                kills.append(_strike(cluster, timeline, "generation", "candidates", t0))
            elif ("train" not in done and len(latest["actors"]["trainer"]) == 2
                  and _checkpoints(bucket) == ["checkpoint_0000003"]):  # between the first and the last checkpoint
                kills.append(_strike(cluster, timeline, "trainer", "train", t0))
            time.sleep(0.5)
        job_end = time.monotonic()
        logs = cluster.logs(submission)
        (out / "job.log").write_text(logs)
        log(f"job {status} after {job_end - t0:.0f} s; waiting for idle GPU nodes to go")
        if status != "SUCCEEDED":
            raise RuntimeError(f"job {submission} ended {status}; last lines:\n{logs[-6000:]}")
        cluster.wait_until(lambda: not cluster.gpu_nodes(), SCALE_DOWN_TIMEOUT_S, "idle GPU nodes terminated")
        time.sleep(2)  # one more sample at zero
        timeline.stop()
        wall = time.monotonic() - t0

        run_dir = out / "run"
        bucket.download(run_dir)
        figures = _figures(timeline.samples, kills, run_dir, logs)
        figures.update({
            "gpu_nodes_start": gpu_nodes_start, "gpu_nodes_end": len(cluster.gpu_nodes()),
            "scale_up_s": round(first_gpu_at, 1) if first_gpu_at is not None else None,
            "wall_s": round(wall, 1), "run_dir": str(run_dir),
            "timeline_png": str(out / "timeline.png"),
        })
        _write_timeline(out, timeline.samples, kills, figures)
        return figures


def _figures(samples: list[dict], kills: list[dict], run_dir: Path, logs: str) -> dict[str, Any]:
    manifest = json.loads((run_dir / "round-000" / "manifest.json").read_text())
    table = pq.ParquetDataset([str(run_dir / f["path"]) for f in manifest["candidates"]["files"]]).read(
        columns=["prompt_id", "seed"])
    keys = list(zip(table["prompt_id"].to_pylist(), table["seed"].to_pylist()))

    def peak(pool: str) -> int:
        return max((len(s["actors"][pool]) for s in samples), default=0)

    def nodes_of(pool: str, since_s: float = -1.0) -> list[str]:
        return sorted({n for s in samples if s["t"] > since_s for n in s["actors"][pool]})

    def trainer_restarted_at(kill_at: float) -> float:
        """When the worker group was torn down after the kill (the dead actor lingers a few samples)."""
        return next((s["t"] for s in samples if s["t"] > kill_at and len(s["actors"]["trainer"]) < 2), kill_at)

    train_kill_at = next((k["at_s"] for k in kills if k["stage"] == "train"), None)
    # Scale-down counts from the last GPU actor (the pools' actors hold the GPUs; a zero-resource actor
    # would not keep a node busy), not from the job's end: the run's last stages (report, tracking) need
    # no GPU, so the nodes may already be idle, or gone, when the job ends.
    last_busy = max((s["t"] for s in samples if any(s["actors"].values())), default=None)
    all_gone = None if last_busy is None else next(
        (s["t"] for s in samples if s["t"] > last_busy and not s["gpu_nodes"]), None)

    return {
        "gpu_nodes_peak": max((len(s["gpu_nodes"]) for s in samples), default=0),
        "generation_actors_peak": peak("generation"), "scoring_actors_peak": peak("scoring"),
        "generation_nodes": len(nodes_of("generation")), "scoring_nodes": len(nodes_of("scoring")),
        "candidates_expected": PROMPTS * CANDIDATES, "candidates_written": len(set(keys)), "candidate_rows": len(keys),
        "nodes_killed": [k["stage"] for k in kills], "kills": kills,
        "trainer_nodes": len(nodes_of("trainer")),
        "trainer_nodes_after_resume": (nodes_of("trainer", trainer_restarted_at(train_kill_at))
                                       if train_kill_at is not None else []),
        "trainer_resumed_at_step": [int(s) for s in re.findall(r"resumed at step (\d+)", logs)],
        "gpu_nodes_seen": len({n for s in samples for n in s["gpu_nodes"]}),
        "scale_down_s": round(all_gone - last_busy, 1) if all_gone is not None else None,
    }


def _write_timeline(out: Path, samples: list[dict], kills: list[dict], figures: dict) -> None:
    counts = [{"t": s["t"], "gpu_nodes": len(s["gpu_nodes"]),
               **{pool: len(nodes) for pool, nodes in s["actors"].items()}} for s in samples]
    (out / "timeline.json").write_text(json.dumps({"samples": samples, "counts": counts, "kills": kills}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    t = [c["t"] for c in counts]
    for key, label, style in (("gpu_nodes", "GPU nodes", "k-"), ("generation", "generation actors", "C0-"),
                              ("scoring", "scoring actors", "C1-"), ("trainer", "trainer workers", "C2-")):
        ax.step(t, [c[key] for c in counts], style, where="post", label=label,
                linewidth=2 if key == "gpu_nodes" else 1.5)
    for k in kills:
        ax.axvline(k["at_s"], color="red", linestyle="--", linewidth=1)
        ax.text(k["at_s"], ax.get_ylim()[1] * 0.95, f" node killed\n ({k['stage']})", color="red", fontsize=8, va="top")
    ax.set_xlabel("seconds since `ray job submit`")
    ax.set_ylabel("count")
    ax.set_title(f"videogpa align on an autoscaling Ray cluster: GPU nodes 0 → {figures['gpu_nodes_peak']} → "
                 f"{figures['gpu_nodes_end']}", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "timeline.png")
    plt.close(fig)


def _assert_stopped(cluster: AutoscalingCluster) -> None:
    left = cluster.stop()
    if left:
        raise RuntimeError(f"processes of the rehearsal cluster survived teardown: {left}")


def _short_tmpdir():
    # Ray's unix socket paths (sockets/plasma_store, raylet) must stay under 107 bytes.
    import tempfile

    return tempfile.TemporaryDirectory(prefix="vgpa-rc-", dir="/tmp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the run, the timeline and its plot go")
    args = parser.parse_args()
    figures = run(args.out)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
