"""The driver's side of tracking: the config as params (nothing secret) and a round as scalars."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import load_config
from pipelines.tracking import config_params, round_scalars

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_config_params_are_the_resolved_config_without_secrets():
    cfg = load_config(QUICKSTART, ["storage.endpoint_url=http://minio-user:pa55w0rd@minio:9000",
                                   "tracking.mlflow.enabled=true"])
    params = config_params(cfg)
    assert params["model.family"] == "cogvideox-t2v" and params["trainer.max_steps"] == "6"
    assert params["tracking.mlflow.enabled"] == "True"
    assert params["storage.endpoint_url"] == "http://minio:9000"
    assert not any("pa55w0rd" in value or "minio-user" in value for value in params.values())


def test_a_round_as_scalars():
    metrics = {"round": 1, "candidates": 12, "pairs_kept": 3, "candidates_dropped": {"static": 2},
               "prompts_dropped": {"gap_below_min_gap": 1},
               "scores": {"3dcs": {"mean": 0.2, "std": 0.01, "min": 0.1, "max": 0.3, "count": 12}, "epipolar": None},
               "stage_seconds": {"candidates": 30.5, "pairs": 10.0, "train": 55.0},
               "train": {"loss": 0.69, "reward_accuracy": 0.75, "checkpoint": "/x"}, "config": "config.yaml"}
    assert round_scalars(metrics) == {
        "candidates": 12, "pairs_kept": 3, "candidates_dropped/static": 2, "prompts_dropped/gap_below_min_gap": 1,
        "stage_seconds/candidates": 30.5, "stage_seconds/pairs": 10.0, "stage_seconds/train": 55.0,
        "scores/3dcs/mean": 0.2, "scores/3dcs/std": 0.01, "scores/3dcs/min": 0.1, "scores/3dcs/max": 0.3,
        "final/loss": 0.69, "final/reward_accuracy": 0.75}
