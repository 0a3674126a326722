"""The quickstart as a user runs it, into a run many tests read."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

# `videogpa align` with its own local Ray, on 3 prompts; MLflow on (its local store in the run), as
# TensorBoard is by default: tests/e2e/test_report_e2e.py reads both back.
QUICKSTART_ARGS = ("--config", "configs/quickstart.yaml", "run_name=e2e", "prompts.limit=3",
                   "tracking.mlflow.enabled=true")

# The non-interactive progress lines every 5 s instead of 30 (pipelines/progress.py), so that this short run
# has some to check, and its output still reads in at most 80 lines (tests/e2e/test_align_e2e.py).
PROGRESS_ENV = {"RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL": "5"}

# Credentials in the run's environment, as on a cluster: none of them may reach a file of the run.
SECRET = "canary-s3cr3t-7f1c"
QUICKSTART_ENV = {name: f"{SECRET}-{name}" for name in (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD")}


@dataclasses.dataclass(frozen=True)
class QuickstartRun:
    output_uri: Path
    result: subprocess.CompletedProcess

    @property
    def root(self) -> Path:
        return self.output_uri / "e2e"
