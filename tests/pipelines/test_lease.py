"""One writer per run (pipelines.lease), against a local folder and moto's real S3 server, with real
holder processes (benchmarks/rehearsal/lease_holder.py) that race, are SIGKILLed, and are paused (SIGSTOP)
past the timeout and resumed (SIGCONT) after another command took the run over."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from actors.errors import InputError
from pipelines.lease import LEASE_DIR, acquire
from pipelines.storage import RunStore, StorageSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path) -> tuple[StorageSpec, str]:
    """A run's storage: a local folder, or a bucket of the session's moto server."""
    if request.param == "local":
        return StorageSpec(str(tmp_path / "out")), f"run-{uuid.uuid4().hex[:6]}"
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return StorageSpec(f"s3://{bucket}/runs", endpoint_url=endpoint, region="us-east-1", max_attempts=2), "run"


def start_holder(spec: StorageSpec, run_name: str, timeout_s: float, start_at: float = 0.0) -> subprocess.Popen:
    args = [sys.executable, "-m", "benchmarks.rehearsal.lease_holder", spec.uri, run_name, str(timeout_s),
            str(start_at)]
    return subprocess.Popen(args + ([spec.endpoint_url] if spec.endpoint_url else []), cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_held(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.startswith("held "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return int(line.split()[1])


def snapshot(store: RunStore) -> dict[str, bytes]:
    """Every file of the run but its lease files."""
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info(pafs.FileSelector(store.path(""), recursive=True, allow_not_found=True))
    rels = [i.path[len(store.root) + 1:] for i in infos if i.type == pafs.FileType.File]
    return {rel: store.read_bytes(rel) for rel in rels if not rel.startswith(LEASE_DIR + "/")}


def one_error_line(proc: subprocess.Popen) -> str:
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 2 and "Traceback" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("videogpa:")]
    assert len(ours) == 1 and err.strip().splitlines()[-1] == ours[0], err  # log lines may come before it
    assert ours[0].startswith("videogpa: error: "), err
    return ours[0]


def test_racing_writers_one_wins_the_others_are_refused(run):
    spec, run_name = run
    start_at = time.time() + 2.5  # every holder has imported and waits: they try within milliseconds
    holders = [start_holder(spec, run_name, 60, start_at) for _ in range(4)]
    outs = [p.stdout.readline() for p in holders]
    winners = [p for p, out in zip(holders, outs) if out.startswith("held ")]
    assert len(winners) == 1, outs
    winner = winners[0]
    for proc in holders:
        if proc is not winner:
            line = one_error_line(proc)
            assert f"run {RunStore(spec, run_name).uri()} is being written by `videogpa lease-holder` (pid " \
                   f"{winner.pid} on " in line and "storage.lease_timeout_s=60" in line, line
    winner.stdin.write("round-000/candidates.done.json\n")
    winner.stdin.close()
    assert winner.stdout.readline().startswith("wrote ") and winner.wait(timeout=30) == 0, winner.stderr.read()
    store = RunStore(spec, run_name)
    assert store.list_files(LEASE_DIR) == []  # released: the next command needs no takeover
    assert store.read_json("round-000/candidates.done.json") == {"writer": winner.pid}


def test_a_sigkilled_holder_on_this_host_is_taken_over_at_once(run, caplog):
    spec, run_name = run
    holder = start_holder(spec, run_name, 3600)
    generation = wait_held(holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipelines.lease"):
        lease = acquire(RunStore(spec, run_name), 3600, "align")
    assert time.monotonic() - start < 5  # not the hour of the timeout
    assert lease.generation == generation + 1
    assert f"from `videogpa lease-holder` (pid {holder.pid} on " in caplog.text
    assert f"its process {holder.pid} on this host is gone" in caplog.text
    lease.release()


def test_a_paused_holder_is_fenced_after_takeover_and_refused_when_resumed(run, caplog):
    spec, run_name = run
    timeout_s = 2.5  # room for a loaded machine: the first refusal must come while the heartbeat is fresh
    holder = start_holder(spec, run_name, timeout_s)
    wait_held(holder)
    holder.stdin.write("round-000/candidates.done.json\n")
    holder.stdin.flush()
    assert holder.stdout.readline().startswith("wrote ")
    holder.send_signal(signal.SIGSTOP)
    try:
        store = RunStore(spec, run_name)
        with pytest.raises(InputError, match=f"is being written by .*pid {holder.pid} on "):
            acquire(store, timeout_s, "align")  # paused, but its heartbeat is recent: still the holder
        time.sleep(timeout_s + 0.5)
        with caplog.at_level(logging.WARNING, logger="pipelines.lease"):
            lease = acquire(store, timeout_s, "align")
        assert "its last heartbeat was" in caplog.text and f"pid {holder.pid}" in caplog.text
        store.write_json("round-000/candidates.done.json", {"writer": "second"})
        store.write_json("round-000/pairs.done.json", {"writer": "second"})
        ours = snapshot(store)
        holder.stdin.write("round-000/candidates.done.json\n")  # what the paused holder does next
        holder.stdin.flush()
    finally:
        holder.send_signal(signal.SIGCONT)
    line = one_error_line(holder)
    assert "lease (generation 1) was taken over by `videogpa align`" in line and "it stops without writing" in line
    assert holder.stdout.read() == ""  # it wrote nothing once resumed
    assert snapshot(store) == ours  # the new holder's files, byte for byte
    store.write_json("round-000/manifest.json", {"writer": "second"})  # still the holder
    lease.release()
    with pytest.raises(InputError, match="released or taken over"):
        store.write_json("round-000/late.json", {})  # a released lease fences its own store too
