"""The quickstart as a user runs it, into a run many tests read."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

# `videogpa align` with its own local Ray, on 3 prompts.
QUICKSTART_ARGS = ("--config", "configs/quickstart.yaml", "run_name=e2e", "prompts.limit=3")


@dataclasses.dataclass(frozen=True)
class QuickstartRun:
    output_uri: Path
    result: subprocess.CompletedProcess

    @property
    def root(self) -> Path:
        return self.output_uri / "e2e"
