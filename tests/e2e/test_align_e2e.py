"""The main job end to end through the real CLI: `videogpa align --config configs/quickstart.yaml`,
to a local path and to S3 on a real S3 API server, then the outputs read back as a user would.
Both runs are shared session fixtures (tests/conftest.py): the local one with test_bad_input, the
S3 one with test_faults, which sends it through a flaky proxy."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from actors.model_config import ModelConfig
from actors.models import build_pipeline
from tests.support.browser import broken_media, check_page, download_report
from tests.support.quickstart import QUICKSTART_ARGS
from tests.support.ray_runtime import local_ray
from trainers.schema import PAIR_SCHEMA, tensor_from_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SPEC_COLUMNS = [
    "schema_version", "pair_id", "round", "prompt_id", "prompt", "model_id", "scorer", "winner_seed", "loser_seed",
    "winner_score", "loser_score", "winner_motion", "loser_motion", "winner_latents", "loser_latents",
    "latent_shape", "latent_dtype", "prompt_embeds", "image_latents",
]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _align(output_uri: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = run_cli("align", *QUICKSTART_ARGS, f"output_uri={output_uri}", *extra, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _check_run(fs: pafs.FileSystem, root: str, candidates: int = 9) -> dict:
    """SPEC §3 run layout, manifest and shard columns; returns the manifest."""
    manifest = json.loads(fs.open_input_stream(f"{root}/round-000/manifest.json").read())
    for name in ("config.yaml", "round-000/metrics.json", "round-000/lora/pytorch_lora_weights.safetensors",
                 "round-000/lora/README.md"):  # the LoRA's model card
        assert fs.get_file_info(f"{root}/{name}").type == pafs.FileType.File, name
    for stage in ("candidates", "pairs"):
        listed = {f["path"] for f in manifest[stage]["files"]}
        on_disk = {i.path[len(root) + 1:] for i in fs.get_file_info(pafs.FileSelector(f"{root}/round-000/{stage}"))}
        assert listed == on_disk and listed, stage
    metrics = json.loads(fs.open_input_stream(f"{root}/round-000/metrics.json").read())
    assert metrics["candidates"] == candidates and metrics["pairs_kept"] == manifest["pairs"]["rows"] > 0
    assert {"loss", "reward_accuracy", "steps"} <= set(metrics["train"])
    return manifest


def _check_shards(uri: str, filesystem=None, ray=None) -> list[dict]:
    """Read the shards as a user would, with Ray Data (in ``ray``, or a runtime that ends before the next run)."""
    with contextlib.nullcontext(ray) if ray is not None else local_ray() as ray:
        ds = ray.data.read_parquet(uri, filesystem=filesystem)
        assert ds.schema().names == SPEC_COLUMNS
        rows = ds.take_all()
    assert len({r["pair_id"] for r in rows}) == len(rows)
    for row in rows:
        assert row["schema_version"] == 1 and row["image_latents"] is None and row["round"] == 0
        latents = tensor_from_bytes(row["winner_latents"])
        assert list(latents.shape) == list(row["latent_shape"]) and row["latent_dtype"] == "float32"
        assert row["winner_score"] <= row["loser_score"]
        assert torch.isfinite(latents).all() and not torch.equal(latents, tensor_from_bytes(row["loser_latents"]))
    return rows


def _lora_changes_output(lora_dir: str) -> None:
    """The exported LoRA loads with diffusers' own loader and changes a fixed-seed sample."""
    def sample(pipe) -> np.ndarray:
        out = pipe("a slow orbit around a red house", num_frames=9, height=64, width=64, num_inference_steps=2,
                   generator=torch.Generator().manual_seed(0), output_type="latent", max_sequence_length=16)
        return out.frames.float().numpy()

    pipe = build_pipeline(ModelConfig(family="cogvideox-t2v", pretrained="tiny"))
    base = sample(pipe)
    pipe.load_lora_weights(lora_dir)
    assert np.abs(sample(pipe) - base).max() > 0


def test_quickstart_output_reads_as_a_log(quickstart_run):
    """Off a terminal (captured here): at most 80 lines, with the stage lines, one-line progress instead of Ray
    Data's blocks, each repeated library warning once, and the summary; the run's log file keeps everything."""
    result = quickstart_run.result
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert len(lines) <= 80, f"{len(lines)} lines:\n" + "\n".join(lines)
    for number, stage in enumerate(("candidates", "pairs", "train"), start=1):
        assert sum(f"round 0 · stage {number}/3 {stage}: starting" in line for line in lines) == 1, stage
        assert sum(f"round 0 · stage {stage}: done in" in line for line in lines) == 1, stage
    assert any(re.search(r"INFO pipelines.progress: round 0 · candidates: GenerateCandidates \d+/(\d+|\?), "
                         r"ScoreCandidates \d+/(\d+|\?) rows", line) for line in lines)
    assert not [line for line in lines if "logging_progress" in line or "Running Dataset" in line]
    assert json.loads(result.stdout.strip().splitlines()[-1])["rounds"] == 1
    # Each warning once, whatever process and batch it came from (they differ in quoted, listed or counted parts)
    warnings = [re.sub(r"^.*?\) |^[\d :,-]+", "", line) for line in lines
                if re.search(r"warn|truncated|longer than", line, re.IGNORECASE)]
    shapes = [re.sub(r"\[[^]]*\]|\([^)]*\)|\d+", "#", w) for w in warnings]
    assert len(shapes) == len(set(shapes)), warnings
    assert sum("truncated" in line for line in lines) == 1
    assert not [line for line in lines if "not writable" in line or "RayDeprecationWarning" in line]
    log_text = sorted(Path(quickstart_run.root, "logs").glob("*-align.log"))[0].read_text()
    assert log_text.count("truncated") > 1 and "logging_progress" in log_text


def test_align_local_then_resume(quickstart_run, ray_test, tmp_path_factory):
    # The later commands join the test's Ray runtime (RAY_ADDRESS, as on a cluster) instead of each
    # starting and stopping a local one; it also serves the shard read.
    joined = {"RAY_ADDRESS": ray_test.get_runtime_context().gcs_address}
    tmp_path = quickstart_run.output_uri
    summary = json.loads(quickstart_run.result.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 1
    root = f"{tmp_path}/e2e"
    manifest = _check_run(pafs.LocalFileSystem(), root)
    _check_shards(f"{root}/round-000/pairs", ray=ray_test)
    _lora_changes_output(f"{root}/round-000/lora")
    # The text stage encoded each prompt and the CFG negative prompt ("") once, as one committed batch.
    def text_batches() -> list[int]:  # the number of texts of each committed batch
        return sorted(len(json.loads(p.read_text())["texts"]) for p in Path(root, "text").glob("*/*.done.json"))

    prompts = set(pq.read_table(f"{root}/round-000/candidates", columns=["prompt"]).column(0).to_pylist())
    assert text_batches() == [len(prompts) + 1]

    # The same command again: the completed round is skipped and nothing is rewritten (nor the
    # report, TensorBoard or MLflow); the only new file is the second command's own driver log.
    def stamps() -> dict:
        return {p: p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file() and p.parent.name != "logs"}

    before, logs_before = stamps(), set(Path(root, "logs").iterdir())
    again = _align(str(tmp_path), env=joined)
    assert "already complete" in again.stderr
    assert stamps() == before
    new_logs = set(Path(root, "logs").iterdir()) - logs_before
    assert len(new_logs) == 1 and "already complete" in new_logs.pop().read_text()
    assert json.loads(Path(root, "round-000/manifest.json").read_text()) == manifest

    # Held-out evaluation of the round's LoRA against the base model, through the CLI.
    def evaluate(*extra: str) -> subprocess.CompletedProcess:
        ev = run_cli("evaluate", "--config", "configs/quickstart.yaml", f"output_uri={tmp_path}", "run_name=e2e",
                     "evaluation.prompts.limit=2", "evaluation.seeds_per_prompt=1", *extra, env=joined)
        assert ev.returncode == 0, ev.stderr[-4000:]
        return ev

    ev = evaluate()
    assert text_batches() == sorted([len(prompts) + 1, 2])  # the 2 held-out prompts, added as a batch
    table = ev.stdout.strip().splitlines()
    assert [line.split()[0] for line in table[1:-2]] == ["psnr", "ssim", "lpips", "mvcs", "mvcs_si", "3dcs", "epipolar",
                                                        "motion", "frame_change", "sharpness"]
    assert "mvcs_si: this project's scale-invariant MVCS" in table[-1]
    assert table[-2].startswith("(epipolar: sift matches; unscorable videos (no frame pair matched): base ")
    card = Path(root, "round-000/lora/README.md").read_text()  # the round's model card now holds the table
    assert "\n".join(table) in card and "preference pairs (this round): " in card
    results = json.loads(Path(root, "evaluation/round-000/results.json").read_text())
    assert results["samples"] == 2 and all(math.isfinite(results[arm]["epipolar"]["mean"]) or
                                           results[arm]["epipolar"]["count"] == 0 for arm in ("base", "aligned"))
    assert len(list(Path(root, "evaluation/round-000/side_by_side").glob("*.mp4"))) == 2
    # The run's report now shows the evaluation: its table, and side-by-side videos that play.
    out = tmp_path_factory.mktemp("report")
    findings = check_page(download_report(Path(root), out / "download"), out)
    assert findings["evaluations"] == 1 and broken_media(findings) == []
    assert len([v for v in findings["videos"] if v["src"].startswith("report_files/evaluation/round-000/")]) == 2

    # The base samples do not depend on the round: a second evaluation reuses them untouched, and
    # evaluation.base_run makes (then reuses) them in another run of the same output_uri.
    base_files = {p: p.stat().st_mtime_ns for p in Path(root, "evaluation").glob("base-*/**/*") if p.is_file()}
    assert len([p for p in base_files if p.suffix == ".mp4"]) == 2
    assert "reusing" in evaluate().stderr
    assert base_files == {p: p.stat().st_mtime_ns for p in Path(root, "evaluation").glob("base-*/**/*") if p.is_file()}
    assert json.loads(Path(root, "evaluation/round-000/results.json").read_text())["per_sample"]["base"] == \
        results["per_sample"]["base"]
    assert "reusing" not in evaluate("evaluation.base_run=shared-base").stderr
    shared = list(Path(tmp_path, "shared-base", "evaluation").glob("base-*/videos/*.mp4"))
    assert len(shared) == 2 and "reusing" in evaluate("evaluation.base_run=shared-base").stderr
    assert len(list(Path(root, "evaluation/round-000/side_by_side").glob("*.mp4"))) == 2
    assert text_batches() == sorted([len(prompts) + 1, 2])  # every later command reused them


def test_align_to_s3(tmp_path, s3_server, flaky_s3_run):
    """The run to S3 is the shared one that went through a proxy failing ~15% of requests
    (tests/support/shared_runs.py; tests/faults/test_faults.py checks the faults): surviving them,
    it must leave exactly what a clean run leaves."""
    assert flaky_s3_run.command.returncode == 0, flaky_s3_run.command.log[-4000:]
    fs = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    root = flaky_s3_run.root
    _check_run(fs, root, candidates=2 * 2)
    rows = _check_shards(f"s3://{root}/round-000/pairs", filesystem=fs)
    # It ran as a cluster user's run: the endpoint from AWS_ENDPOINT_URL alone, the prompts from the
    # caption file (its keys as ids), the model fetched once from the bucket into the node's cache.
    assert {r["prompt_id"] for r in rows} <= {"1K_0a1b2c3d_images_8", "1K_4e5f6a7b_images_8"}
    assert {r["model_id"] for r in rows} == {flaky_s3_run.model}
    recorded = yaml.safe_load(fs.open_input_stream(f"{root}/config.yaml").read())
    assert recorded["storage"]["endpoint_url"] is None and recorded["storage"]["region"] is None
    cached = [p for p in flaky_s3_run.model_cache.iterdir() if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "model_index.json").is_file()
    # One download for the node, though its generation and encoding actors and its trainer worker all load it.
    weights = f"/{flaky_s3_run.model[len('s3://'):]}/transformer/diffusion_pytorch_model.safetensors"
    assert flaky_s3_run.forwarded_gets[weights] == 1, flaky_s3_run.forwarded_gets
    # Nothing was written to the local working directory instead of the bucket.
    assert not (ROOT / "runs" / "flaky").exists()
    lora = tmp_path / "lora"
    lora.mkdir()
    data = fs.open_input_stream(f"{root}/round-000/lora/pytorch_lora_weights.safetensors").read()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(data)
    _lora_changes_output(str(lora))
    # Its TensorBoard events and its report, downloaded from the bucket, read and open as a local run's.
    local = tmp_path / "download"
    for part in ("tensorboard", "report_files"):
        (local / part).mkdir(parents=True)
        pafs.copy_files(f"{root}/{part}", str(local / part), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    (local / "report.html").write_bytes(fs.open_input_stream(f"{root}/report.html").read())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(local / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2] and events.Scalars("round/candidates")
    findings = check_page(local / "report.html", tmp_path)
    assert findings["rounds"] == 1 and findings["pairs"] >= 1 and broken_media(findings) == []


def test_pair_schema_is_the_spec_columns():
    assert PAIR_SCHEMA.names == SPEC_COLUMNS
