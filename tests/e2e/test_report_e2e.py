"""The shared quickstart run (tests/conftest.py) as an engineer watches and reads it: TensorBoard's
own reader and MLflow's client find every step and the round, the report opens in a real headless
Chromium with every image and video loading, `videogpa report` remakes it, and no credential of
the run's environment is in any file of the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.browser import broken_media, check_page, download_report
from tests.support.quickstart import QUICKSTART_ARGS, SECRET

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # the shared run; each check itself takes seconds

STEP_SCALARS = ("loss", "reward_accuracy", "reward_margin", "policy_ref_gap_w", "policy_ref_gap_l", "lr", "grad_norm",
                "data_wait_s", "step_s", "peak_memory_mb")


def test_tensorboard_has_every_step_and_the_round(quickstart_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = quickstart_run.root
    acc = EventAccumulator(str(root / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    for key in STEP_SCALARS:
        assert [e.step for e in acc.Scalars(f"train/{key}")] == [1, 2, 3, 4, 5, 6], key
    metrics = json.loads((root / "round-000" / "metrics.json").read_text())
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(metrics["train"]["loss"], rel=1e-6)

    def last(tag: str) -> float:
        (event,) = acc.Scalars(tag)
        assert event.step == 0
        return event.value

    assert last("round/candidates") == 9 and last("round/pairs_kept") == metrics["pairs_kept"]
    for score in ("3dcs", "epipolar", "motion", "sharpness", "lpips"):
        assert last(f"round/scores/{score}/mean") == pytest.approx(metrics["scores"][score]["mean"], rel=1e-6)
    assert {f"round/stage_seconds/{s}" for s in ("candidates", "pairs", "train")} <= set(tags["scalars"])
    assert "config/text_summary" in tags["tensors"]


def test_mlflow_store_holds_the_run(quickstart_run):
    from mlflow.tracking import MlflowClient

    root = quickstart_run.root
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("videogpa").experiment_id],
                                f"tags.`videogpa.run` = '{root.resolve()}'")
    assert run.info.run_name == "e2e" and run.info.status == "FINISHED"
    assert run.data.params["model.family"] == "cogvideox-t2v" and run.data.params["trainer.max_steps"] == "6"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward_accuracy")] == [1, 2, 3, 4, 5, 6]
    metrics = json.loads((root / "round-000" / "metrics.json").read_text())
    assert run.data.metrics["round/pairs_kept"] == metrics["pairs_kept"]
    assert run.data.metrics["round/scores/3dcs/mean"] == pytest.approx(metrics["scores"]["3dcs"]["mean"])


def test_report_opens_in_a_browser_from_a_download(quickstart_run, tmp_path):
    """report.html and report_files/ alone (what a user downloads from S3) show every round with
    its plots, its pairs (videos, scores, reason) and its unpaired candidates, nothing broken."""
    root = quickstart_run.root
    findings = check_page(download_report(root, tmp_path / "download"), tmp_path)
    metrics = json.loads((root / "round-000" / "metrics.json").read_text())
    assert findings["rounds"] == 1
    assert broken_media(findings) == []
    # score distributions + five training curves; a winner and a loser per pair and the 3 candidates in no
    # pair (an evaluation, when test_align_e2e has made one, adds its own section and videos)
    assert len(findings["images"]) == 6
    assert len([v for v in findings["videos"] if v["src"].startswith("report_files/round-000/")]) == 9
    assert metrics["pairs_kept"] == 3
    assert findings["pairs"] == metrics["pairs_kept"]
    assert all("lowest vs highest score of 3 candidates" in why for why in findings["reasons"])
    sources = [m["src"] for m in (*findings["images"], *findings["videos"])]
    assert all(src.startswith("report_files/") for src in sources), sources


def test_report_command_remakes_the_report(quickstart_run):
    """(A run that does not exist is refused in one line: tests/e2e/test_bad_input.py.)"""
    root = quickstart_run.root
    before = (root / "report.html").read_text()
    made = subprocess.run([sys.executable, "-m", "pipelines.cli", "report", *QUICKSTART_ARGS,
                           f"output_uri={quickstart_run.output_uri}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    assert made.stdout.strip().splitlines()[-1] == str(root / "report.html")
    after = (root / "report.html").read_text()
    # the same report from the same run folder, but for the time it was written (its first paragraph)
    assert after[after.index("</p>"):] == before[before.index("</p>"):]


def test_no_credential_of_the_environment_is_in_the_run(quickstart_run):
    files = [p for p in quickstart_run.root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("events.out.tfevents") for p in files) and any(p.name == "mlflow.db" for p in files)
    assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []
