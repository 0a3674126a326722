"""Runs of `videogpa align` that several tests check, each made once per session (fixtures in
tests/conftest.py). A run costs minutes, mostly fixed per-command start-up (imports, Ray, actors,
the trainer's worker group), so a run that can carry the faults or checks of several tests does.

- :func:`interrupted_run`: one two-round run hit by every process fault in turn: pool actors and a
  trainer worker SIGKILLed mid-stage, the driver SIGKILLed between stages and again inside round 1
  (tests/faults/test_faults.py, tests/faults/test_resume.py).
- :func:`flaky_s3_run`: one run to S3 through a proxy failing a share of requests, which must
  still leave what a clean run leaves (tests/faults/test_faults.py, tests/e2e/test_align_e2e.py).
  It is also the cluster user's run: S3 configured by AWS_ENDPOINT_URL alone (no storage.* key), the
  prompts an official-format caption file in the bucket, the base model a diffusers directory there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from benchmarks.rehearsal.processes import cmdline, kill_marked, marked_pids, snapshot, start_cli
from tests.support.flaky_s3_proxy import FlakyS3Proxy

# ----------------------------------------------------------------------------- process faults


def kill_one(marker: str, title: str) -> int | None:
    """SIGKILL the one process of this run whose title names ``title`` (a Ray actor); its pid or None."""
    for pid in marked_pids(marker):
        if title in cmdline(pid):
            os.kill(pid, signal.SIGKILL)
            return pid
    return None


def registered_checkpoints(round_dir: Path) -> list[str]:
    """Checkpoints Ray Train has registered so far (from its manager snapshot; [] before the first)."""
    try:
        text = (round_dir / "checkpoints" / "checkpoint_manager_snapshot.json").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"checkpoint_\d{7}", text)))


def mp4s(folder: Path) -> int:
    return len(list(folder.glob("*.mp4"))) if folder.exists() else 0


@dataclasses.dataclass(frozen=True)
class Strike:
    """SIGKILL, once ``ready()`` holds, the actor whose process title names ``title``, or (title
    None) the driver, as a lost head node would; killing the driver ends the command."""

    name: str
    ready: Callable[[], bool]
    title: str | None = None


@dataclasses.dataclass
class Command:
    returncode: int | None  # None: the driver was killed
    log: str
    wall_s: float
    struck: dict[str, dict]  # name -> {"pid", "at_s"}


def drive(args: list[str], log: Path, strikes: list[Strike], env: dict | None = None,
          timeout_s: float = 900) -> Command:
    """Run one `videogpa` command (marked, output to ``log``) and strike in order as each becomes
    ready; afterwards stop whatever of it is left (its local Ray after a driver kill)."""
    marker, start = uuid.uuid4().hex, time.monotonic()
    proc = start_cli(args, marker, log, env=env)
    struck: dict[str, dict] = {}
    plan, driver_killed = list(strikes), False
    try:
        while proc.poll() is None:
            assert time.monotonic() - start < timeout_s, (plan[0].name if plan else None, log.read_text()[-3000:])
            if plan and plan[0].ready():
                strike = plan[0]
                if strike.title is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    struck[strike.name] = {"pid": proc.pid, "at_s": round(time.monotonic() - start, 1)}
                    plan.pop(0)
                    driver_killed = True
                    break
                pid = kill_one(marker, strike.title)
                if pid is not None:
                    struck[strike.name] = {"pid": pid, "at_s": round(time.monotonic() - start, 1)}
                    plan.pop(0)
            time.sleep(0.05)
        wall = time.monotonic() - start
    finally:
        assert kill_marked(marker) == []
    text = log.read_text(errors="replace")
    assert not plan, (f"never struck: {[s.name for s in plan]}", text[-3000:])
    return Command(None if driver_killed else proc.returncode, text, wall, struck)


# Two rounds (round 1 trains against round 0's LoRA), 2 prompts × 3 candidates, 6 steps with a
# checkpoint every 3 (the quickstart's), every step logged; 2 trainer workers under ZeRO-3, so the
# worker kill and the resume hit the partitioned build, the previous-round reference adapter and
# the export that gathers only the LoRA. Half a CPU each: the 2-CPU local Ray keeps one for
# the Ray Data read that feeds them (with both CPUs held by the workers that read never starts).
INTERRUPTED_ARGS = ["align", "--config", "configs/quickstart.yaml", "run_name=online", "rounds=2", "prompts.limit=2",
                    "trainer.reference=previous_round", "trainer.log_every=1", "trainer.zero_stage=3",
                    "trainer.num_workers=2", "trainer.cpus_per_worker=0.5"]


@dataclasses.dataclass
class InterruptedRun:
    """The run folder, the three commands (in order) and what was on disk after the first two."""

    run: Path
    commands: list[Command]
    after: list[dict[str, int]]  # snapshot(run) after the first and the second command
    secret: str

    def files_after(self, command: int, prefix: str) -> dict[str, int]:
        return {k: v for k, v in self.after[command].items() if k.startswith(prefix)}


def interrupted_run(tmp: Path) -> InterruptedRun:
    """One `videogpa align` run, every process fault in turn, the same command run again after each
    driver kill; AWS_SECRET_ACCESS_KEY is a unique value throughout (it must appear nowhere):

    1. the generation actor SIGKILLed once its first video is on disk, the scoring actor while its
       stage still has work, then the driver the moment round 0's pairs stage is marked done;
    2. (the same command) a Ray Train worker SIGKILLed once the step-3 checkpoint of round 0 is
       registered, then the driver once round 1's candidates stage has written a video;
    3. (the same command) runs to the end.
    """
    secret = f"secret-{uuid.uuid4().hex}"
    env = {"AWS_SECRET_ACCESS_KEY": secret}
    run = tmp / "online"
    r0, r1 = run / "round-000", run / "round-001"
    args = [*INTERRUPTED_ARGS, f"output_uri={tmp}"]
    first = drive(args, tmp / "first.log", [
        Strike("generation", lambda: mp4s(r0 / "videos") >= 1, "MapBatches(GenerateCandidates)"),
        # The 6th video is written before its batch is handed on: scoring still has work to do.
        Strike("scoring", lambda: mp4s(r0 / "videos") >= 6 and not (r0 / "candidates.done.json").exists(),
               "MapBatches(ScoreCandidates)"),
        Strike("driver", (r0 / "pairs.done.json").exists),
    ], env=env)
    after_first = snapshot(run)
    second = drive(args, tmp / "second.log", [
        # Once Ray Train has registered the step-3 checkpoint (it writes its manager snapshot then),
        # not the driver's log, which trails the worker by seconds under load.
        Strike("trainer", lambda: registered_checkpoints(r0) == ["checkpoint_0000003"], "RayTrainWorker"),
        Strike("driver", lambda: mp4s(r1 / "videos") >= 1),
    ], env=env)
    after_second = snapshot(run)
    third = drive(args, tmp / "third.log", [], env=env)
    assert third.returncode == 0, third.log[-4000:]
    return InterruptedRun(run, [first, second, third], [after_first, after_second], secret)


# ----------------------------------------------------------------------------- S3 faults


S3_ENV_BASE = {"AWS_ACCESS_KEY_ID": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

# The paper's released DL3DV captions as they are shaped (id → caption, CogVLM's whitespace kept).
DL3DV_CAPTIONS = {"1K/0a1b2c3d/images_8": " A slow orbit around a red brick house in a green garden.\n",
                  "1K/4e5f6a7b/images_8": " A camera moves through a library between tall bookshelves.\n",
                  "1K/8c9d0e1f/images_8": " An aerial orbit of a snowy mountain cabin.\n"}
PROMPTS_KEY, MODEL_PREFIX = "prompts/captions_1K.json", "models/tiny-cogvideox"


def s3_align_args(bucket: str) -> list[str]:
    """2 prompts × 2 candidates, 2 steps, to s3://BUCKET/runs/flaky, prompts and model from the bucket;
    no storage.* key: the endpoint is AWS_ENDPOINT_URL's (see :func:`s3_align`)."""
    return ["align", "--config", "configs/quickstart.yaml", "prompts.limit=2", "trainer.log_every=1",
            "run_name=flaky", "pairing.candidates_per_prompt=2", "trainer.max_steps=2",
            f"output_uri=s3://{bucket}/runs", f"prompts.path=s3://{bucket}/{PROMPTS_KEY}",
            f"model.pretrained=s3://{bucket}/{MODEL_PREFIX}"]


@dataclasses.dataclass
class S3Run:
    bucket: str
    root: str  # the run's prefix, bucket included
    command: Command
    proxy_stats: dict
    secret: str
    env: dict
    model: str  # model.pretrained: the s3:// diffusers directory
    model_cache: Path  # VIDEOGPA_MODEL_CACHE of the run's processes
    forwarded_gets: dict  # path → GETs the proxy passed to the server


def s3_align(bucket: str, proxy: FlakyS3Proxy, log: Path, env: dict, timeout_s: float) -> Command:
    return drive(s3_align_args(bucket), log, [], env={**env, "AWS_ENDPOINT_URL": proxy.endpoint_url},
                 timeout_s=timeout_s)


def flaky_s3_run(tmp: Path, s3_server: str) -> S3Run:
    """`videogpa align` to a fresh bucket through a proxy answering 500/503 or dropping the connection
    on ~15% of requests (seeded, at most 2 per request); AWS_SECRET_ACCESS_KEY is a unique value. The
    bucket holds the prompts (DL3DV caption format) and the tiny preset saved as a diffusers directory."""
    import json

    import boto3

    from tests.support.s3_model import upload_tiny_model

    bucket = f"videogpa-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=PROMPTS_KEY, Body=json.dumps(DL3DV_CAPTIONS).encode())
    model = upload_tiny_model(client, bucket, MODEL_PREFIX, tmp / "saved-model")
    secret = f"secret-{uuid.uuid4().hex}"
    env = {**S3_ENV_BASE, "AWS_SECRET_ACCESS_KEY": secret, "VIDEOGPA_MODEL_CACHE": str(tmp / "model-cache")}
    with FlakyS3Proxy(s3_server, fail_rate=0.15, seed=7, max_failures_per_key=2) as proxy:
        command = s3_align(bucket, proxy, tmp / "flaky.log", env, 900)
        stats, gets = dict(proxy.stats), dict(proxy.forwarded_gets)
    return S3Run(bucket, f"{bucket}/runs/flaky", command, stats, secret, env, model, tmp / "model-cache", gets)
