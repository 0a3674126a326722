"""Online rounds and crash safety of the driver: kill `videogpa align` inside a stage of round 1,
run the same command again, and check nothing was lost, duplicated or rewritten."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.rehearsal.processes import kill_driver_when, kill_marked, snapshot, start_cli

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

ARGS = ["align", "--config", "configs/quickstart.yaml", "run_name=online", "rounds=2", "prompts.limit=2",
        "trainer.reference=previous_round"]


def test_driver_killed_inside_round_one_resumes(tmp_path):
    run = tmp_path / "online"
    marker = uuid.uuid4().hex
    log = tmp_path / "first-attempt.log"
    proc = start_cli([*ARGS, f"output_uri={tmp_path}"], marker, log)
    try:
        # Once round 1 is inside its candidates stage (its first video is on disk).
        kill_driver_when(proc, lambda: bool(list((run / "round-001" / "videos").glob("*.mp4"))), log, 480,
                         "round 1 starting")
    finally:
        assert kill_marked(marker) == []
    assert not (run / "round-001" / "manifest.json").exists()
    round0 = snapshot(run / "round-000")

    resumed = subprocess.run([sys.executable, "-m", "pipelines.cli", *ARGS, f"output_uri={tmp_path}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "round 1/2 already complete" in resumed.stderr and "round 2/2 already complete" not in resumed.stderr

    # Round 0 was complete: not one of its files was touched.
    assert snapshot(run / "round-000") == round0
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
