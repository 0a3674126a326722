"""The run lease's figures (README, Reliability): real holder processes (benchmarks/rehearsal/lease_holder.py)
on a local folder and on a moto S3 server: how many win a race, how fast the losers are refused, how
fast a SIGKILLed holder's lease is taken over, and a SIGSTOPped holder's: taken over after the timeout
and refused once resumed, the new holder's file unchanged. ``python -m benchmarks.lease [--out DIR]``;
the last line of output is one JSON object."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from actors.errors import InputError
from benchmarks.rehearsal.processes import free_port
from pipelines.lease import acquire
from pipelines.storage import RunStore, StorageSpec

ROOT = Path(__file__).resolve().parents[1]


def _holder(spec: StorageSpec, run: str, timeout_s: float, start_at: float = 0.0) -> subprocess.Popen:
    args = [sys.executable, "-m", "benchmarks.rehearsal.lease_holder", spec.uri, run, str(timeout_s), str(start_at)]
    return subprocess.Popen(args + ([spec.endpoint_url] if spec.endpoint_url else []), cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def race(spec: StorageSpec, holders: int = 4, trials: int = 3) -> dict:
    winners, refused_after = [], []
    for _ in range(trials):
        run, start_at = f"race-{uuid.uuid4().hex[:6]}", time.time() + 3  # every holder has imported by then
        procs = [_holder(spec, run, 60, start_at) for _ in range(holders)]
        firsts = [p.stdout.readline() for p in procs]
        winners.append(sum(f.startswith("held ") for f in firsts))
        for proc, first in zip(procs, firsts):
            if not first.startswith("held "):
                proc.wait()
                refused_after.append(time.time() - start_at)
        for proc, first in zip(procs, firsts):
            if first.startswith("held "):
                proc.stdin.close()
                proc.wait()
    return {"winners_per_trial": winners, "last_refused_after_s": round(max(refused_after), 2)}


def sigkill(spec: StorageSpec) -> dict:
    run = f"kill-{uuid.uuid4().hex[:6]}"
    proc = _holder(spec, run, 3600)
    proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    lease = acquire(RunStore(spec, run), 3600, "benchmark")
    took = time.monotonic() - start
    lease.release()
    return {"takeover_s": round(took, 3), "timeout_s": 3600}


def sigstop(spec: StorageSpec, timeout_s: float = 2.0) -> dict:
    run = f"stop-{uuid.uuid4().hex[:6]}"
    proc = _holder(spec, run, timeout_s)
    proc.stdout.readline()
    proc.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    store = RunStore(spec, run)
    while True:
        try:
            lease = acquire(store, timeout_s, "benchmark")
            break
        except InputError:  # still its holder's
            time.sleep(0.1)
    taken = time.monotonic() - paused
    store.write_json("marker.json", {"writer": "new holder"})
    proc.stdin.write("marker.json\n")
    proc.stdin.flush()
    proc.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    returncode = proc.wait()
    result = {"timeout_s": timeout_s, "taken_over_after_pause_s": round(taken, 2), "resumed_exit": returncode,
              "refused_after_resume_s": round(time.monotonic() - resumed, 3),
              "new_holder_file_unchanged": store.read_json("marker.json") == {"writer": "new holder"}}
    lease.release()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="folder for the local runs (default: a temporary one)")
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="lease-benchmark")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, spec in (("local", StorageSpec(args.out or tmp)),
                           ("s3", StorageSpec("s3://lease-benchmark/runs", endpoint_url=endpoint, region="us-east-1",
                                              max_attempts=2))):
            results[kind] = {"race": race(spec), "sigkill": sigkill(spec), "sigstop": sigstop(spec)}
    server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
