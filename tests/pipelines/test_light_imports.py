"""What needs no model loads no model code: validating a config, `videogpa --help` and `videogpa report`
import neither torch nor Ray (each is seconds of start-up, and neither is needed to refuse a bad config
or to redraw a report)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "cv2", "diffusers")

PROBES = {
    "config validation": "from pipelines.config import load_config\nload_config('configs/quickstart.yaml')",
    "videogpa --help": "from pipelines.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    # the report command's own imports (tests/e2e/test_report_e2e.py runs it on a real run)
    "videogpa report": "from pipelines.cli import _cmd_report\nimport pipelines.report, pipelines.run_layout",
}


@pytest.mark.parametrize("what", sorted(PROBES))
def test_loads_neither_torch_nor_ray(what):
    code = PROBES[what] + f"\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", f"{what} imported {out.strip().splitlines()[-1]}"
