"""benchmarks/pipeline.py runs end to end in its --quick mode and ends with its JSON figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.runs_ray
@pytest.mark.slow
def test_pipeline_benchmark_quick():
    # Own process: the benchmark starts (and shuts down) its own local Ray runtime.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1100, check=False)  # ~4.5 min alone
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("candidates_per_s_ray", "candidates_per_s_loop", "overhead_ratio", "speedup_2_actors",
                "data_wait_fraction"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["candidates"] == result["ray_1_actor"]["candidates"] == result["ray_2_actors"]["candidates"]
    assert 0 <= result["data_wait_fraction"] < 1 and 0 <= result["data_wait_fraction_streaming_every_epoch"] < 1
    assert result["actor_torch_threads_1_per_pool"] and result["trainer"]["steps"] >= 1
