"""Faults survived: pool actors and a trainer worker killed mid-round, the driver killed between
stages, S3 failing a share of its requests (or all of them). Each fault hits the real process or
the real network path of a `videogpa align` run; nothing in the product is mocked or patched.

Every test prints one `FAULT-FIGURES {...}` line (run with `-s` to see it): the README's
Reliability table quotes those figures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from benchmarks.rehearsal.processes import cmdline, kill_driver_when, kill_marked, marked_pids, snapshot, start_cli
from tests.support.flaky_s3_proxy import FlakyS3Proxy

pytestmark = pytest.mark.slow

BASE_ARGS = ["align", "--config", "configs/quickstart.yaml", "prompts.limit=2", "trainer.log_every=1"]


def _kill_one(marker: str, title: str) -> int | None:
    """SIGKILL the one process of this run whose title names ``title`` (a Ray actor); its pid or None."""
    for pid in marked_pids(marker):
        if title in cmdline(pid):
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def _candidate_keys(read_table, manifest: dict) -> list[tuple[str, int]]:
    table = read_table([f["path"] for f in manifest["candidates"]["files"]])
    return list(zip(table["prompt_id"].to_pylist(), table["seed"].to_pylist()))


def _registered_checkpoints(run: Path) -> list[str]:
    """Checkpoints Ray Train has registered so far (from its manager snapshot; [] before the first)."""
    try:
        snapshot = (run / "checkpoints" / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"checkpoint_\d{7}", snapshot)))


def _figures(name: str, **figures) -> None:
    print(f"FAULT-FIGURES {json.dumps({'test': name, **figures}, default=str)}", flush=True)


def test_pool_actors_and_trainer_worker_killed_mid_round(tmp_path):
    """SIGKILL the generation actor, then the scoring actor, then a Ray Train worker, each once,
    while their stage runs: Ray restarts them, the round completes, every candidate appears exactly
    once and training resumes from its last checkpoint. AWS_SECRET_ACCESS_KEY is set to a unique
    value and must appear nowhere in the run folder or the logs."""
    secret = f"secret-{uuid.uuid4().hex}"
    marker, log = uuid.uuid4().hex, tmp_path / "align.log"
    run = tmp_path / "faults" / "round-000"
    start = time.monotonic()
    proc = start_cli([*BASE_ARGS, "run_name=faults", f"output_uri={tmp_path}"], marker, log,
                  env={"AWS_SECRET_ACCESS_KEY": secret})
    killed: dict[str, dict] = {}

    def mp4s() -> int:
        return len(list((run / "videos").glob("*.mp4"))) if (run / "videos").exists() else 0

    # (name, process title, when to strike) — each fires once, in order.
    plan = [
        ("generation", "MapBatches(GenerateCandidates)", lambda: mp4s() >= 1),
        # The 6th video is written before its batch is handed on: scoring still has work to do.
        ("scoring", "MapBatches(ScoreCandidates)", lambda: mp4s() >= 6 and not (run / "candidates.done.json").exists()),
        # Once Ray Train has registered the step-3 checkpoint (it writes its manager snapshot then),
        # not the driver's log, which trails the worker by seconds under load.
        ("trainer", "RayTrainWorker", lambda: _registered_checkpoints(run) == ["checkpoint_0000003"]),
    ]
    try:
        deadline = time.monotonic() + 900
        while proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if plan and plan[0][2]():
                name, title, _ = plan[0]
                pid = _kill_one(marker, title)
                if pid is not None:
                    killed[name] = {"pid": pid, "at_s": round(time.monotonic() - start, 1)}
                    plan.pop(0)
            time.sleep(0.1)
        wall = time.monotonic() - start
    finally:
        assert kill_marked(marker) == []
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert set(killed) == {"generation", "scoring", "trainer"}, (killed, text[-3000:])

    manifest = json.loads((run / "manifest.json").read_text())
    keys = _candidate_keys(lambda files: pq.ParquetDataset([str(run.parent / f) for f in files]).read(), manifest)
    assert len(keys) == len(set(keys)) == 2 * 3, "every candidate exactly once"
    assert sorted(p.name for p in (run / "videos").glob("*.mp4")) == sorted(f"{p}-s{s}.mp4" for p, s in keys)
    # A write cut by SIGKILL leaves only its temporary file (never a torn .mp4), which the stage removes.
    torn = sorted(p.name for p in (run / "videos").iterdir() if not p.name.endswith(".mp4"))
    assert torn == [], torn
    pairs = pq.ParquetDataset([str(run.parent / f["path"]) for f in manifest["pairs"]["files"]]).read()
    assert pairs.num_rows == 2 and len(set(pairs["pair_id"].to_pylist())) == 2

    # Training restarted from the step-3 checkpoint, not from scratch, and ran each step once.
    resumed = re.findall(r"resumed at step (\d+)", text)
    assert resumed == ["3"], (resumed, killed, text[-3000:])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6
    final = sorted((run / "checkpoints").glob("checkpoint_0*"))[-1]
    history = json.loads((final / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]

    # Secrets: only ever in the environment.
    needle = secret.encode()
    leaked = [str(p) for p in (tmp_path / "faults").rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaked == [] and secret not in text
    _figures("actors_and_trainer_killed", killed=killed, leftover_tmp_files=torn, wall_s=round(wall, 1),
             candidates=len(keys),
             distinct_candidates=len(set(keys)), stage_seconds=metrics["stage_seconds"])


def test_driver_killed_between_stages_resumes(tmp_path):
    """SIGKILL the driver (and its whole local Ray) the moment the pairs stage is marked done; the
    same command finishes the round without touching the candidates, videos or pair shards."""
    args = [*BASE_ARGS, "run_name=between", "pairing.candidates_per_prompt=2", "trainer.max_steps=2",
            f"output_uri={tmp_path}"]
    run = tmp_path / "between" / "round-000"
    marker = uuid.uuid4().hex
    proc = start_cli(args, marker, tmp_path / "first.log")
    try:
        kill_driver_when(proc, (run / "pairs.done.json").exists, tmp_path / "first.log", 600, "the pairs stage ending")
    finally:
        assert kill_marked(marker) == []
    assert not (run / "train.done.json").exists() and not (run / "manifest.json").exists()
    kept = {k: v for k, v in snapshot(run).items() if k.split("/")[0] in ("videos", "candidates", "pairs")
            or k in ("candidates.done.json", "pairs.done.json")}

    marker = uuid.uuid4().hex
    start = time.monotonic()
    resumed = start_cli(args, marker, tmp_path / "resume.log")
    try:
        resumed.wait(timeout=600)
    finally:
        assert kill_marked(marker) == []
    resume_s = time.monotonic() - start
    text = (tmp_path / "resume.log").read_text(errors="replace")
    assert resumed.returncode == 0, text[-4000:]
    assert "stage 1/3 candidates: already done" in text and "stage 2/3 pairs: already done" in text
    after = snapshot(run)
    assert {k: after.get(k) for k in kept} == kept, "nothing done before the kill was rewritten"
    manifest = json.loads((run / "manifest.json").read_text())
    shards = {f["path"].split("/", 1)[1] for f in manifest["pairs"]["files"]}
    assert shards == {k for k in kept if k.startswith("pairs/")}
    keys = _candidate_keys(lambda files: pq.ParquetDataset([str(run.parent / f) for f in files]).read(), manifest)
    assert len(keys) == len(set(keys)) == 2 * 2
    _figures("driver_killed_between_stages", files_kept=len(kept), rewritten=0, resume_wall_s=round(resume_s, 1))


def _objects(fs: pafs.FileSystem, root: str) -> dict[str, tuple[int, int]]:
    return {i.path: (i.size, i.mtime_ns) for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File}


def test_flaky_s3_run_completes_and_dead_s3_stops_cleanly(tmp_path, s3_server, s3_bucket):
    """An S3 endpoint answering 500/503 or dropping the connection on ~15% of requests: the run
    retries and completes, every candidate exactly once. Then the same command against an endpoint
    that fails every request: one clear line, exit 2, and the stored run untouched."""
    secret = f"secret-{uuid.uuid4().hex}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    direct = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    root = f"{s3_bucket}/runs/flaky"

    def align(proxy: FlakyS3Proxy, log: Path, timeout: float) -> tuple[int, str, float]:
        args = [*BASE_ARGS, "run_name=flaky", "pairing.candidates_per_prompt=2", "trainer.max_steps=2",
                f"output_uri=s3://{s3_bucket}/runs", f"storage.endpoint_url={proxy.endpoint_url}",
                "storage.region=us-east-1", "storage.max_attempts=5"]
        marker, start = uuid.uuid4().hex, time.monotonic()
        proc = start_cli(args, marker, log, env=env)
        try:
            proc.wait(timeout=timeout)
        finally:
            assert kill_marked(marker) == []
        return proc.returncode, log.read_text(errors="replace"), time.monotonic() - start

    with FlakyS3Proxy(s3_server, fail_rate=0.15, seed=7, max_failures_per_key=2) as proxy:
        rc, text, wall = align(proxy, tmp_path / "flaky.log", 900)
        stats = dict(proxy.stats)
    assert rc == 0, text[-4000:]
    injected = stats.get("error_500", 0) + stats.get("error_503", 0) + stats.get("drop", 0)
    assert injected >= 10, stats  # the faults did happen
    manifest = json.loads(direct.open_input_stream(f"{root}/round-000/manifest.json").read())
    keys = _candidate_keys(
        lambda files: pq.ParquetDataset([f"{root}/{f}" for f in files], filesystem=direct).read(), manifest)
    assert len(keys) == len(set(keys)) == 2 * 2
    listed = {f["path"] for f in manifest["pairs"]["files"]}
    on_s3 = {i.path[len(root) + 1:] for i in direct.get_file_info(pafs.FileSelector(f"{root}/round-000/pairs"))}
    assert listed == on_s3 and listed
    objects = _objects(direct, root)
    leaked = [p for p in objects if secret.encode() in direct.open_input_stream(p).read()]
    assert leaked == [] and secret not in text

    # S3 down: every request fails. The completed run must survive untouched.
    with FlakyS3Proxy(s3_server, fail_rate=1.0, seed=7) as dead:
        rc, text, dead_wall = align(dead, tmp_path / "dead.log", 300)
        dead_stats = dict(dead.stats)
    assert rc == 2, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("videogpa: error: storage error at ") and "Traceback" not in text, text[-3000:]
    assert _objects(direct, root) == objects
    _figures("flaky_s3", fail_rate=0.15, requests=stats["requests"], injected_failures=injected, stats=stats,
             wall_s=round(wall, 1), candidates=len(keys), dead_s3_exit=rc, dead_s3_seconds=round(dead_wall, 1),
             dead_s3_requests=dead_stats["requests"], dead_s3_message=last)
