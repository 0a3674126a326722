"""trainers.tracking on the real backends: TensorBoard read back with TensorBoard's own reader
(also from S3, on the moto server), MLflow's file store queried with its client, W&B's offline
run file parsed record by record; a failing backend is one warning line; nothing secret is written."""

from __future__ import annotations

import glob
import json
import logging
import struct
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from trainers.tracking import MLflowConfig, Tracker, TrackingConfig, TrackingTarget, WandbConfig

SECRET = "canary-s3cr3t-0d9f"  # in every credential variable of the environment: must appear in no file


def _target(tmp: Path, **config) -> TrackingTarget:
    return TrackingTarget(config=TrackingConfig(**config), run_name="unit", run_uri=str(tmp / "unit"),
                          params={"model.family": "cogvideox-t2v", "trainer.beta": "1.0"},
                          tensorboard_dir=str(tmp / "unit" / "tensorboard"), local_run_dir=str(tmp / "unit"),
                          train_step_offset=10)


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _steps(tracker: Tracker, steps: range) -> None:
    for step in steps:
        tracker.log_train_step({"loss": 1.0 / step, "reward_accuracy": 0.5, "grad_norm": float("nan"),
                                "note": "not a number"}, step)


def test_tensorboard_events_read_back_and_a_resume_adds_a_file(tmp_path):
    target = _target(tmp_path)
    with Tracker(target, "trainer") as tracker:
        _steps(tracker, range(1, 4))
        tracker.log("round", {"pairs_kept": 3}, 0)
    with Tracker(target, "trainer") as tracker:  # a resumed trainer: a second writer
        _steps(tracker, range(3, 5))
    files = sorted(Path(target.tensorboard_dir).glob("events.out.tfevents.*"))
    assert len(files) == 2
    scalars = _scalars(target.tensorboard_dir)
    # the round's offset (10) puts every round on one x axis; non-finite and non-numeric values are left out
    assert [s for s, _ in scalars["train/loss"]] == [11, 12, 13, 13, 14]
    assert scalars["train/loss"][1][1] == pytest.approx(0.5)
    assert scalars["round/pairs_kept"] == [(0, 3.0)]
    assert "train/grad_norm" not in scalars and "train/note" not in scalars


def test_tensorboard_to_s3_uploads_whole_files_and_keeps_earlier_ones(tmp_path, s3_server, s3_bucket):
    fs = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    root = f"{s3_bucket}/runs/unit/tensorboard"
    target = TrackingTarget(config=TrackingConfig(), run_name="unit", run_uri=f"s3://{s3_bucket}/runs/unit",
                            params={}, tensorboard_dir=root, filesystem=fs)
    for steps in (range(1, 4), range(3, 6)):  # a first trainer, then a resumed one
        with Tracker(target, "trainer") as tracker:
            _steps(tracker, steps)
    objects = [i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File]
    assert len(objects) == 2
    local = tmp_path / "downloaded"
    local.mkdir()
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    assert [s for s, _ in _scalars(str(local))["train/loss"]] == [1, 2, 3, 3, 4, 5]


def test_mlflow_file_store_holds_steps_rounds_and_params(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    target = _target(tmp_path, tensorboard=False, mlflow=MLflowConfig(enabled=True, tracking_uri=uri))
    with Tracker(target, "trainer") as tracker:  # the trainer logs first and makes the MLflow run
        _steps(tracker, range(1, 3))
    with Tracker(target, "driver") as tracker:  # the driver finds the same run by its tag
        tracker.log("round", {"pairs_kept": 3, "scores/3dcs/mean": 0.25}, 0)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("videogpa")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params == {"model.family": "cogvideox-t2v", "trainer.beta": "1.0"}
    assert run.data.tags["videogpa.run"] == target.run_uri and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(11, 1.0),
                                                                                                    (12, 0.5)]
    assert run.data.metrics["round/scores/3dcs/mean"] == 0.25


def _wandb_records(run_file: Path):
    """The records of a W&B run file (LevelDB log format: 7-byte header, 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record
        elif kind == 0:
            break


def _finished_wandb_run(folder: Path) -> Path:
    """The offline run file under ``folder``, complete once the tracker is closed (its exit record written)."""
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    assert "exit" in {r.WhichOneof("record_type") for r in _wandb_records(run_file)}, "the W&B run is unfinished"
    return run_file


def test_wandb_offline_run_holds_the_steps(tmp_path):
    target = _target(tmp_path, tensorboard=False, wandb=WandbConfig(enabled=True))
    with Tracker(target, "trainer") as tracker:
        _steps(tracker, range(1, 3))
    run_file = _finished_wandb_run(Path(target.local_run_dir))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in _wandb_records(run_file) if r.WhichOneof("record_type") == "history"]
    assert [(h["train/step"], h["train/loss"]) for h in history] == [(11, 1.0), (12, 0.5)]


def test_a_failing_backend_is_one_warning_and_the_others_go_on(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    blocker = tmp_path / "unit" / "tensorboard"
    blocker.parent.mkdir()
    blocker.write_text("a file where the event folder should be")
    # MLflow has no URI to go to (a run on S3 with none set) and TensorBoard cannot make its folder.
    target = TrackingTarget(config=TrackingConfig(mlflow=MLflowConfig(enabled=True)), run_name="unit",
                            run_uri="s3://bucket/unit", params={}, tensorboard_dir=str(blocker))
    with caplog.at_level(logging.WARNING, logger="videogpa.tracking"):
        with Tracker(target, "trainer") as tracker:
            _steps(tracker, range(1, 20))
            assert not tracker.active
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("tracking: tensorboard is off for the trainer after an error")
    assert lines[1].startswith("tracking: mlflow is off for the trainer after an error") and "tracking_uri" in lines[1]


def test_nothing_secret_reaches_any_backend(tmp_path, monkeypatch):
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "HF_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    uri = (tmp_path / "mlruns").as_uri()
    target = _target(tmp_path, mlflow=MLflowConfig(enabled=True, tracking_uri=uri), wandb=WandbConfig(enabled=True))
    with Tracker(target, "trainer") as tracker:
        _steps(tracker, range(1, 3))
        tracker.text("config", "    model.family: cogvideox-t2v", 0)
    _finished_wandb_run(Path(target.local_run_dir))
    written = [Path(p) for p in glob.glob(f"{tmp_path}/**/*", recursive=True) if Path(p).is_file()]
    assert any("tfevents" in p.name for p in written) and any(p.suffix == ".wandb" for p in written)
    assert [p for p in written if SECRET.encode() in p.read_bytes()] == []
