"""The miniature experiment's HTML report (``benchmarks/miniature.py``), built from ``pipelines.report_parts``.

One file written next to the results JSON: a table of base vs each arm (3DCS, Epipolar, motion,
paired 95% CIs); plots, one color per arm throughout, of the held-out deltas with their CIs, the DPO
reward accuracy / train loss and the candidates' score statistics per round (PNGs inline); and the
side-by-side videos (base | aligned, same seeds) that ``run_evaluate`` wrote, linked by paths
relative to the report so the output folder can be moved or served as is. Each arm's run also has
its own report (``<run>/report.html``, ``pipelines.report``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pipelines.report_parts import Series, esc, fmt, inline_png, line_plots, page, running_mean, table, video


def _ci(ci: list | None) -> str:
    if not ci or ci[0] is None:
        return "–"
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _n(row: dict, key: str) -> str:
    count = row.get(f"{key}_pairs")
    return f" n={count}" if count is not None else ""


def _at_equal_sharpness(row: dict, key: str) -> str:
    """The delta left where samples kept their sharpness (benchmarks/miniature.py): a gain from blurring drops out."""
    fit = row.get(f"{key}_delta_at_equal_sharpness") or {}
    return f"{fmt(fit.get('mean'), 5)} {_ci(fit.get('ci95'))}"


def _rows(arms: dict[str, dict]) -> list[tuple[str, int, dict]]:
    return [(name, r["round"], r) for name, arm in arms.items() for r in arm["rounds"]]


HEADER = ("arm", "round", "3DCS base ↓", "3DCS aligned", "Δ 3DCS (95% CI)", "Epipolar base ↓", "Epipolar aligned",
          "Δ Epipolar (95% CI)", "motion base", "motion aligned", "motion ratio", "frame-change ratio",
          "sharpness ratio", "Δ 3DCS at equal sharpness", "Δ Epipolar at equal sharpness", "success")


def table_html(arms: dict[str, dict]) -> str:
    rows = []
    for name, index, r in _rows(arms):
        ok = "yes" if r.get("success") else "no"
        rows.append([
            esc(name), str(index), fmt(r["3dcs_base"]), fmt(r["3dcs_aligned"]),
            f"{fmt(r['3dcs_delta'], 5)} {_ci(r['3dcs_delta_ci95'])}{_n(r, '3dcs')}",
            fmt(r["epipolar_base"]), fmt(r["epipolar_aligned"]),
            f"{fmt(r['epipolar_delta'], 5)} {_ci(r['epipolar_delta_ci95'])}{_n(r, 'epipolar')}",
            fmt(r["motion_base"]), fmt(r["motion_aligned"]), fmt(r["motion_ratio"], 3),
            fmt(r.get("frame_change_ratio"), 3), fmt(r.get("sharpness_ratio"), 3),
            _at_equal_sharpness(r, "3dcs"), _at_equal_sharpness(r, "epipolar"), f"<b class='{ok}'>{ok}</b>"])
    return table(HEADER, rows, text_columns=1)


def _add(out: Series, metric: str, arm: str, index: int, value: Any, ci: list | None = None) -> None:
    """One per-round point of ``arm`` (with its CI when given), if the value is a finite number."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        point = (index, float(value), *ci) if ci and ci[0] is not None else (index, float(value))
        out.setdefault(metric, {}).setdefault((arm, None), []).append(point)


def _delta_series(arms: dict[str, dict]) -> Series:
    """The held-out effect per arm and round: mean(aligned − base) with its paired 95% CI."""
    out: Series = {}
    for name, index, r in _rows(arms):
        for key, label in (("3dcs", "3DCS"), ("epipolar", "Epipolar")):
            _add(out, f"held-out Δ {label}, aligned − base (95% CI)", name, index, r.get(f"{key}_delta"),
                 r.get(f"{key}_delta_ci95"))
    return out


def _series(arms: dict[str, dict]) -> Series:
    """The training figures per round: final DPO metrics and the candidates' reward statistics."""
    out: Series = {}
    for name, index, r in _rows(arms):
        train = r.get("train") or {}
        tm = train.get("train") or {}
        _add(out, "DPO reward accuracy (final)", name, index, tm.get("reward_accuracy"))
        _add(out, "DPO train loss (final)", name, index, tm.get("loss"))
        _add(out, "DPO reward margin (final)", name, index, tm.get("reward_margin"))
        scores = train.get("scores") or {}
        # One plot per metric, never "score": that is 3DCS for one arm and Epipolar for another,
        # whose scales differ twentyfold.
        for key, label in (("3dcs", "3DCS (training reward GFM)"), ("epipolar", "Epipolar"),
                           ("motion", "motion (training reward GFM)")):
            stats = scores.get(key)
            if stats:
                _add(out, f"candidates: mean {label}", name, index, stats.get("mean"))
        _add(out, "pairs kept", name, index, train.get("pairs_kept"))
    return out


def _step_series(arms: dict[str, dict]) -> Series:
    """Per-step curves from the trainer's history (x = optimizer step), one line per arm and round;
    reward accuracy is a running mean over 5 steps."""
    out: Series = {}
    for name, index, r in _rows(arms):
        history = r.get("train_history") or []
        for key, title, window in (("loss", "DPO train loss per step", 1),
                                   ("reward_accuracy", "reward accuracy per step (running mean of 5)", 5)):
            values = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
            if values:
                out.setdefault(title, {})[(name, index)] = running_mean(values, window)
    return out


def plots_html(arms: dict[str, dict]) -> str:
    plots = [*line_plots(_delta_series(arms)), *line_plots(_step_series(arms), x_label="step"),
             *line_plots(_series(arms))]
    if not plots:
        return "<p>no training metrics</p>"
    return "<div class='plots'>" + "".join(inline_png(png, title) for title, png in plots) + "</div>"


def videos_html(results: dict[str, dict], per_round: int = 6) -> str:
    """base | aligned side-by-sides per arm and round, by paths relative to the report: ``per_round``
    of them, evenly spaced over the (prompt, seed)-sorted list so every prompt shows (a page of
    hundreds of autoplaying videos does not play); the folder holds them all."""
    seen: set[str] = set()
    blocks = []
    for name, arm in results.items():
        for r in arm["rounds"]:
            clips = [f"{arm['run_name']}/{rel}" for rel in r.get("side_by_side", [])]
            if not clips or clips[0] in seen:  # arms sharing a run (offline/online round 0) show it once
                continue
            seen.add(clips[0])
            shown = clips[:: -(-len(clips) // per_round)]
            items = "".join(video(rel, esc(os.path.basename(rel)), width=260) for rel in shown)
            blocks.append(f"<h3>{esc(name)} · round {r['round']} (left: base, right: aligned; {len(shown)} of "
                          f"{len(clips)}, all in {esc(os.path.dirname(clips[0]))}/)</h3>"
                          f"<div class='videos'>{items}</div>")
    return "".join(blocks) or "<p>no videos</p>"


def render_report(figures: dict, results: dict[str, dict]) -> str:
    settings = json.dumps({k: figures.get(k) for k in ("mode", "ci_method", "success_criterion", "eval_gfm_checks",
                                                    "seconds")},
                          indent=1, default=str)
    runs = "".join(f"<li><a href='{esc(arm['run_name'])}/report.html'>{esc(name)}: {esc(arm['run_name'])}</a></li>"
                   for name, arm in results.items())
    return page("VideoGPA in miniature", (
        f"<p>Held-out seeds, scored with the <b>evaluation</b> GFM (not the training reward). "
        f"Headline arm <b>{esc(str(figures.get('headline_arm')))}</b>: success = "
        f"<b>{'yes' if figures.get('success') else 'no'}</b> "
        f"({esc(str(figures.get('success_criterion')))}).</p>"
        f"<h2>Results</h2>{table_html(figures['arms'])}"
        f"<h2>Held-out effect and training per round</h2>{plots_html(figures['arms'])}"
        f"<h2>Side-by-side samples</h2>{videos_html(results)}"
        f"<h2>Each arm's run report (candidates, pairs, training curves)</h2><ul>{runs}</ul>"
        f"<h2>Settings and timings</h2><pre>{esc(settings)}</pre>"))


def write_report(figures: dict, results: dict[str, dict], out_dir: str, name: str = "report.html") -> str:
    """Write the report into ``out_dir`` (temp name, then rename); returns its path."""
    path = os.path.join(out_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_report(figures, results))
    os.replace(tmp, path)
    return path
