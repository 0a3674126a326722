"""Online rounds and crash safety of the driver: kill `videogpa align` inside a stage of round 1,
run the same command again, and check nothing was lost, duplicated or rewritten.

The run is the shared two-round ``interrupted_run`` (tests/support/shared_runs.py): its second
command is killed once round 1's candidates stage has written a video, and its third finishes
the run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.rehearsal.processes import snapshot

pytestmark = pytest.mark.slow


def test_driver_killed_inside_round_one_resumes(interrupted_run):
    run = interrupted_run.run
    _, killed, resumed = interrupted_run.commands
    assert "driver" in killed.struck and killed.returncode is None
    assert "round-001/manifest.json" not in interrupted_run.after[1]
    round0 = interrupted_run.files_after(1, "round-000/")

    assert resumed.returncode == 0, resumed.log[-4000:]
    assert "round 1/2 already complete" in resumed.log and "round 2/2 already complete" not in resumed.log

    # Round 0 was complete: not one of its files was touched.
    assert {k: v for k, v in snapshot(run).items() if k.startswith("round-000/")} == round0
    for index in (0, 1):
        folder = run / f"round-{index:03d}"
        manifest = json.loads((folder / "manifest.json").read_text())
        candidates = pq.ParquetDataset([str(run / f["path"]) for f in manifest["candidates"]["files"]]).read()
        keys = list(zip(candidates["prompt_id"].to_pylist(), candidates["seed"].to_pylist()))
        assert len(keys) == len(set(keys)) == 2 * 3, "every candidate exactly once"
        assert {f.name for f in (folder / "candidates").iterdir()} == {
            Path(f["path"]).name for f in manifest["candidates"]["files"]}, "no leftovers of the killed attempt"
        pairs = pq.ParquetDataset([str(run / f["path"]) for f in manifest["pairs"]["files"]]).read()
        assert len(set(pairs["pair_id"].to_pylist())) == pairs.num_rows > 0
        assert set(pairs["round"].to_pylist()) == {index}
    assert (run / "round-001" / "lora" / "pytorch_lora_weights.safetensors").exists()
