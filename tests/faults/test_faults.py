"""Faults survived: pool actors and a trainer worker killed mid-round, the driver killed between
stages, S3 failing a share of its requests (or all of them). Each fault hits the real process or
the real network path of a `videogpa align` run; nothing in the product is mocked or patched.

The process faults all hit one two-round run, in turn (``interrupted_run``, see
tests/support/shared_runs.py; tests/faults/test_resume.py checks its round 1), and the flaky-S3
run is the one tests/e2e/test_align_e2e.py checks as a run to S3: each test checks its promises
on a shared run.

Every test prints one `FAULT-FIGURES {...}` line (run with `-s` to see it): the README's
Reliability table quotes those figures.
"""

from __future__ import annotations

import json
import math
import re

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from benchmarks.rehearsal.processes import snapshot
from tests.support.flaky_s3_proxy import FlakyS3Proxy
from tests.support.shared_runs import s3_align

pytestmark = pytest.mark.slow


def _candidate_keys(read_table, manifest: dict) -> list[tuple[str, int]]:
    table = read_table([f["path"] for f in manifest["candidates"]["files"]])
    return list(zip(table["prompt_id"].to_pylist(), table["seed"].to_pylist()))


def _figures(name: str, **figures) -> None:
    print(f"FAULT-FIGURES {json.dumps({'test': name, **figures}, default=str)}", flush=True)


def test_pool_actors_and_trainer_worker_killed_mid_round(interrupted_run):
    """SIGKILL the generation actor, then the scoring actor (first command), then a Ray Train worker
    (second command), each once, while their stage of round 0 runs: Ray restarts them, the round
    completes, every candidate appears exactly once and training resumes from its last checkpoint.
    AWS_SECRET_ACCESS_KEY is set to a unique value and must appear nowhere in the run folder or the logs."""
    first, second, _ = interrupted_run.commands
    killed = {**{k: v for k, v in first.struck.items() if k != "driver"},
              **{k: v for k, v in second.struck.items() if k != "driver"}}
    assert set(killed) == {"generation", "scoring", "trainer"}, killed
    run = interrupted_run.run / "round-000"

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
    resumed = re.findall(r"resumed at step (\d+)", second.log)
    assert resumed == ["3"], (resumed, killed, second.log[-3000:])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6
    final = sorted((run / "checkpoints").glob("checkpoint_0*"))[-1]
    history = json.loads((final / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert "ZeRO-3, 2 worker(s)" in second.log  # the partitioned build, killed and resumed
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)

    # Secrets: only ever in the environment.
    secret = interrupted_run.secret
    needle = secret.encode()
    leaked = [str(p) for p in interrupted_run.run.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaked == [] and not any(secret in c.log for c in interrupted_run.commands)
    _figures("actors_and_trainer_killed", killed=killed, leftover_tmp_files=torn, candidates=len(keys),
             distinct_candidates=len(set(keys)), stage_seconds=metrics["stage_seconds"])


def test_driver_killed_between_stages_resumes(interrupted_run):
    """SIGKILL the driver (and its whole local Ray) the moment the pairs stage is marked done; the
    same command finishes the round without touching the candidates, videos or pair shards."""
    first, second, _ = interrupted_run.commands
    assert "driver" in first.struck and first.returncode is None
    # What was on disk when the driver died, relative to the round (as the round's own snapshot).
    before = {k.split("/", 1)[1]: v for k, v in interrupted_run.after[0].items() if k.startswith("round-000/")}
    assert "train.done.json" not in before and "manifest.json" not in before
    kept = {k: v for k, v in before.items() if k.split("/")[0] in ("videos", "candidates", "pairs")
            or k in ("candidates.done.json", "pairs.done.json")}

    text = second.log
    assert "stage 1/3 candidates: already done" in text and "stage 2/3 pairs: already done" in text
    run = interrupted_run.run / "round-000"
    after = snapshot(run)
    assert {k: after.get(k) for k in kept} == kept, "nothing done before the kill was rewritten"
    manifest = json.loads((run / "manifest.json").read_text())
    shards = {f["path"].split("/", 1)[1] for f in manifest["pairs"]["files"]}
    assert shards == {k for k in kept if k.startswith("pairs/")}
    keys = _candidate_keys(lambda files: pq.ParquetDataset([str(run.parent / f) for f in files]).read(), manifest)
    assert len(keys) == len(set(keys)) == 2 * 3
    _figures("driver_killed_between_stages", files_kept=len(kept), rewritten=0,
             killed_at_s=first.struck["driver"]["at_s"])
def _objects(fs: pafs.FileSystem, root: str) -> dict[str, tuple[int, int]]:
    return {i.path: (i.size, i.mtime_ns) for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File}


def test_flaky_s3_run_completes_and_dead_s3_stops_cleanly(flaky_s3_run, tmp_path, s3_server):
    """An S3 endpoint answering 500/503 or dropping the connection on ~15% of requests: the run
    retries and completes, every candidate exactly once. Then the same command against an endpoint
    that fails every request: one clear line, exit 2, and the stored run untouched."""
    run = flaky_s3_run
    secret, root, text, stats = run.secret, run.root, run.command.log, run.proxy_stats
    direct = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    assert run.command.returncode == 0, text[-4000:]
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
        down = s3_align(run.bucket, dead, tmp_path / "dead.log", run.env, 300)
        dead_stats = dict(dead.stats)
    assert down.returncode == 2, down.log[-3000:]
    last = down.log.strip().splitlines()[-1]
    assert last.startswith("videogpa: error: storage error at ") and "Traceback" not in down.log, down.log[-3000:]
    assert _objects(direct, root) == objects
    _figures("flaky_s3", fail_rate=0.15, requests=stats["requests"], injected_failures=injected, stats=stats,
             wall_s=round(run.command.wall_s, 1), candidates=len(keys), dead_s3_exit=down.returncode,
             dead_s3_seconds=round(down.wall_s, 1), dead_s3_requests=dead_stats["requests"], dead_s3_message=last)
