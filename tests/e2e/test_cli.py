"""The `videogpa` console script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors.video_io import encode_mp4
from benchmarks.miniature_lab.world import render_clip

ROOT = Path(__file__).resolve().parents[2]


def test_score_video_prints_metrics_per_file(tmp_path):
    paths = []
    for seed, corruption in ((0, None), (1, "warp")):
        clip = render_clip(seed, corruption=corruption, num_frames=10, size=64)
        path = tmp_path / f"clip{seed}.mp4"
        path.write_bytes(encode_mp4(clip.frames))
        paths.append(str(path))
    out = subprocess.run(["videogpa", "score-video", *paths, "--backend", "tiny", "--lpips-backbone", "random",
                          "--resolution", "56"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [r["video"] for r in rows] == paths
    for row in rows:
        assert {"3dcs", "mse", "lpips", "psnr", "ssim", "mvcs", "motion", "epipolar"} <= set(row)
        assert row["3dcs"] > 0 and 0 <= row["ssim"] <= 1


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True)
    for command in ("align", "generate", "pairs", "train", "evaluate", "report", "score-video"):
        assert command in out.stdout


@pytest.mark.slow
def test_stages_one_by_one_with_rescoring(tmp_path, ray_address):
    """generate → score (again, with the epipolar scorer) → pairs → train: the round completes as with align.
    Each command joins the module's Ray runtime (RAY_ADDRESS, as on a cluster) instead of starting its own."""
    # Epipolar on upscaled frames: at the tiny model's 64 px, SIFT finds fewer than 20 matches on
    # most candidates (NaN, no pair), and whether two per prompt pass was down to float noise.
    common = ["--config", "configs/quickstart.yaml", f"output_uri={tmp_path}", "run_name=stages", "prompts.limit=2",
              "trainer.effective_batch_size=1", "scoring.epipolar_min_size=256"]

    def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ray_address, **(env or {})})
        return out

    assert cli("generate", *common).returncode == 0
    run = tmp_path / "stages" / "round-000"
    first_config = (run.parent / "config.yaml").read_bytes()
    before = json.loads((run / "candidates.done.json").read_text())
    # The 3DCS-scored candidates carry their Epipolar scores too: they pair under that reward as they are.
    candidates = pq.ParquetDataset([str(tmp_path / "stages" / f["path"]) for f in before["files"]]).read().to_pylist()
    assert {c["scorer"] for c in candidates} == {"3dcs:tiny"}
    out = cli("pairs", *common, "scoring.scorer=epipolar")
    assert out.returncode == 0, out.stderr[-3000:]
    pairs = pq.read_table(run / "pairs").to_pylist()
    epipolar = {(c["prompt_id"], c["seed"]): c["epipolar"] for c in candidates}
    assert pairs and {p["scorer"] for p in pairs} == {"epipolar:tiny"}
    for p in pairs:
        assert (p["winner_score"], p["loser_score"]) == (epipolar[p["prompt_id"], p["winner_seed"]],
                                                         epipolar[p["prompt_id"], p["loser_seed"]])
    rescored = cli("score", *common, "scoring.scorer=epipolar")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    after = json.loads((run / "candidates.done.json").read_text())
    assert after["rows"] == before["rows"] == 6 and after["rescored"]
    assert {f["path"] for f in after["files"]}.isdisjoint(f["path"] for f in before["files"])
    assert {p.name for p in (run / "candidates").iterdir()} == {Path(f["path"]).name for f in after["files"]}
    scores = pq.ParquetDataset([str(tmp_path / "stages" / f["path"]) for f in after["files"]]).read()
    assert set(scores["scorer"].to_pylist()) == {"epipolar:tiny"}
    np.testing.assert_array_equal(scores["score"].to_numpy(), scores["epipolar"].to_numpy())
    assert np.isfinite(scores["score"].to_numpy()).sum() >= 4, scores["score"]  # two per prompt: pairs possible

    out = cli("pairs", *common, "scoring.scorer=epipolar")
    assert out.returncode == 0, out.stderr[-3000:]
    # A failure that is no input error: one line naming the stage and the log, and the traceback in the
    # log only (the driver's, and the one Ray forwards from the failed worker).
    failed = cli("train", *common, "scoring.scorer=epipolar", "trainer.max_failures=0",
                 env={"VIDEOGPA_TRAIN_FAULT_AT_STEP": f"1:{tmp_path / 'fault-marker'}"})
    ours = [line for line in failed.stderr.splitlines() if line.startswith("videogpa: ")]
    assert failed.returncode == 1 and len(ours) == 1, failed.stderr[-3000:]
    assert "Traceback (most recent call last)" not in failed.stderr, failed.stderr[-3000:]
    last = ours[0]
    assert last.startswith("videogpa: failed in round 0 · stage train: ") and "full log: " in last, last
    log_file = Path(last.rsplit("full log: ", 1)[1].rstrip(")"))
    assert log_file.parent == run.parent / "logs" and "injected fault after step 1" in log_file.read_text()
    assert "Traceback" in log_file.read_text() and last in log_file.read_text()

    out = cli("train", *common, "scoring.scorer=epipolar")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "manifest.json").exists() and (run / "lora" / "pytorch_lora_weights.safetensors").exists()

    refused = cli("score", *common)
    assert refused.returncode == 2 and "rescoring would rewrite it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()[-1]) < 300

    # Provenance: config.yaml is the first command's, never rewritten; each later config is recorded
    # beside it, and each round's metrics name the one it was finished under; every command left its log.
    assert (run.parent / "config.yaml").read_bytes() == first_config
    recorded = sorted(p.name for p in (run.parent / "configs").iterdir())
    assert sorted(name.rsplit("-", 1)[1] for name in recorded) == sorted(["pairs.yaml", "score.yaml", "train.yaml",
                                                                           "pairs.yaml", "train.yaml"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"].startswith("configs/") and metrics["config"].endswith("-train.yaml")
    assert "scorer: epipolar" in (run.parent / metrics["config"]).read_text()
    logs = sorted(p.name.rsplit("-", 1)[1] for p in (run.parent / "logs").iterdir())
    # The refused `score` (above) wrote nothing into the run, not even its log.
    assert logs == sorted(["generate.log", "pairs.log", "score.log", "train.log", "pairs.log", "train.log"]), logs
    changed = cli("align", *common, "sampling.num_inference_steps=5")
    assert changed.returncode == 2 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
    line = changed.stderr.strip().splitlines()[-1]
    assert line.startswith("videogpa: error: config differs from ") and "sampling.num_inference_steps" in line
    assert (run.parent / "config.yaml").read_bytes() == first_config
