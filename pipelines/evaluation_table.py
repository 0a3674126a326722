"""The evaluation table: which metrics it shows, their summary over a set of samples, and the table
as the evaluation prints it and the report shows it. A leaf: the report reads it without the evaluation's
Ray and models."""

from __future__ import annotations

import math
import statistics
from typing import Any

# metric, direction shown in the table (↑ higher is better, ↓ lower is better)
METRICS = (("psnr", "↑"), ("ssim", "↑"), ("lpips", "↓"), ("mvcs", "↑"), ("mvcs_si", "↑"), ("3dcs", "↓"),
           ("epipolar", "↓"), ("motion", ""), ("frame_change", ""), ("sharpness", ""))
TABLE_NOTE = ("psnr, ssim, lpips, mvcs, 3dcs, epipolar: the official benchmark's definitions; "
              "mvcs_si: this project's scale-invariant MVCS")


def summary(rows: list[dict[str, Any]], epipolar_unscorable: str = "drop") -> dict[str, dict[str, float]]:
    """Mean, standard error and count of each metric over the rows; ``unscorable``: the rows without a
    finite value, dropped, or (``epipolar_unscorable="minus_one"``, the official benchmark's) Epipolar at -1."""
    out = {}
    for key, _ in METRICS:
        values = [r[key] for r in rows if math.isfinite(r[key])]
        unscorable = len(rows) - len(values)
        if key == "epipolar" and epipolar_unscorable == "minus_one":
            values += [-1.0] * unscorable
        mean = statistics.fmean(values) if values else float("nan")
        sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        out[key] = {"mean": mean, "sem": sem, "count": len(values), "unscorable": unscorable}
    return out


def format_table(base: dict, aligned: dict, label: str, epipolar_matcher: str = "sift",
                 epipolar_unscorable: str = "drop") -> str:
    lines = [f"{'metric':<12}{'base':>18}{label:>22}{'delta':>10}"]
    for key, arrow in METRICS:
        b, a = base[key], aligned[key]
        lines.append(f"{key + ' ' + arrow:<12}{b['mean']:>11.4f} ± {b['sem']:<5.3f}"
                     f"{a['mean']:>15.4f} ± {a['sem']:<5.3f}{a['mean'] - b['mean']:>+10.4f}")
    handling = "averaged in as -1 (official)" if epipolar_unscorable == "minus_one" else "left out"
    epi = (f"epipolar: {epipolar_matcher} matches; unscorable videos (no frame pair matched): "
           f"base {base['epipolar'].get('unscorable', 0)}, LoRA {aligned['epipolar'].get('unscorable', 0)}, {handling}")
    return "\n".join([*lines, f"({epi})", f"({TABLE_NOTE})"])
