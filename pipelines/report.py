"""A self-contained HTML report of a miniature experiment (``benchmarks/miniature.py``).

One file written next to the results JSON: a table of base vs each arm (3DCS, Epipolar, motion,
paired 95% CIs); plots, one color per arm throughout, of the held-out deltas with their CIs, the DPO
reward accuracy / train loss and the candidates' score statistics per round (matplotlib PNGs inlined
as base64; inline SVG when matplotlib is missing); and the side-by-side videos (base | aligned,
same seeds) that ``run_evaluate`` wrote, embedded by paths relative to the report so the run folder
can be moved or served as is.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 1e-2 else f"{value:.3g}"
    return html.escape(str(value))


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
    return f"<td>{_fmt(fit.get('mean'), 5)} {_ci(fit.get('ci95'))}</td>"


def _rows(arms: dict[str, dict]) -> list[tuple[str, int, dict]]:
    return [(name, r["round"], r) for name, arm in arms.items() for r in arm["rounds"]]


def table_html(arms: dict[str, dict]) -> str:
    head = ("<tr><th>arm</th><th>round</th><th>3DCS base ↓</th><th>3DCS aligned</th><th>Δ 3DCS (95% CI)</th>"
            "<th>Epipolar base ↓</th><th>Epipolar aligned</th><th>Δ Epipolar (95% CI)</th>"
            "<th>motion base</th><th>motion aligned</th><th>motion ratio</th><th>frame-change ratio</th>"
            "<th>sharpness ratio</th><th>Δ 3DCS at equal sharpness</th><th>Δ Epipolar at equal sharpness</th>"
            "<th>success</th></tr>")
    body = []
    for name, index, r in _rows(arms):
        ok = "yes" if r.get("success") else "no"
        body.append(
            f"<tr><td>{html.escape(name)}</td><td>{index}</td><td>{_fmt(r['3dcs_base'])}</td>"
            f"<td>{_fmt(r['3dcs_aligned'])}</td>"
            f"<td>{_fmt(r['3dcs_delta'], 5)} {_ci(r['3dcs_delta_ci95'])}{_n(r, '3dcs')}</td>"
            f"<td>{_fmt(r['epipolar_base'])}</td><td>{_fmt(r['epipolar_aligned'])}</td>"
            f"<td>{_fmt(r['epipolar_delta'], 5)} {_ci(r['epipolar_delta_ci95'])}{_n(r, 'epipolar')}</td>"
            f"<td>{_fmt(r['motion_base'])}</td><td>{_fmt(r['motion_aligned'])}</td>"
            f"<td>{_fmt(r['motion_ratio'], 3)}</td><td>{_fmt(r.get('frame_change_ratio'), 3)}</td>"
            f"<td>{_fmt(r.get('sharpness_ratio'), 3)}</td>"
            f"{_at_equal_sharpness(r, '3dcs')}{_at_equal_sharpness(r, 'epipolar')}"
            f"<td class='{ok}'>{ok}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


Series = dict[str, dict[tuple[str, int | None], list[tuple]]]
"""Per plotted quantity: (arm, round or None for a per-round line) -> points (x, y) or (x, y, low, high)."""


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
    reward accuracy is a running mean over 5 steps (each step sees only a few pairs)."""
    out: Series = {}
    for name, index, r in _rows(arms):
        history = r.get("train_history") or []
        for key, title, window in (("loss", "DPO train loss per step", 1),
                                   ("reward_accuracy", "reward accuracy per step (running mean of 5)", 5)):
            values = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
            smoothed = [(s, sum(v for _, v in values[max(0, i - window + 1): i + 1])
                         / len(values[max(0, i - window + 1): i + 1]))
                        for i, (s, _) in enumerate(values)]
            if smoothed:
                out.setdefault(title, {})[(name, index)] = smoothed
    return out


COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DASHES = ("-", "--", ":", "-.")  # per-step lines: one dash pattern per round


def _arm_colors(series: Series) -> dict[str, str]:
    """One color per arm on every plot, in the order the arms first appear."""
    arms = dict.fromkeys(arm for lines in series.values() for arm, _ in lines)
    return {arm: COLORS[i % len(COLORS)] for i, arm in enumerate(arms)}


def _label(key: tuple[str, int | None]) -> str:
    arm, index = key
    return arm if index is None else f"{arm} r{index}"


def _plots_matplotlib(series: Series) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _arm_colors(series)
    images = []
    for title, lines in series.items():
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
        for offset, (key, points) in enumerate(lines.items()):
            points = sorted(points)
            style = {"color": colors[key[0]], "label": _label(key)}
            if key[1] is not None:
                style["linestyle"] = DASHES[key[1] % len(DASHES)]
            if len(points[0]) == 4:  # a mean with its CI; arms side by side so equal rounds do not hide each other
                xs = [p[0] + 0.06 * (offset - (len(lines) - 1) / 2) for p in points]
                ys = [p[1] for p in points]
                err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, **style)
            else:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, **style)
        ax.set_title(title, fontsize=9)
        per_step = "per step" in title
        ax.set_xlabel("step" if per_step else "round")
        if not per_step:
            ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
        if any(len(p) == 4 for pts in lines.values() for p in pts):  # deltas with CIs: where "no effect" is
            ax.axhline(0.0, color="#888", linewidth=0.8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        images.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,"
                      f"{base64.b64encode(buf.getvalue()).decode()}'>")
    return images


def _plots_svg(series: Series) -> list[str]:
    """Fallback without matplotlib: one small inline SVG line chart per quantity (CIs as vertical bars)."""
    colors = _arm_colors(series)
    w, h, m = 360, 200, 30
    images = []
    for title, lines in series.items():
        values = [y for pts in lines.values() for p in pts for y in p[1:]]
        rounds = [p[0] for pts in lines.values() for p in pts]
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        xmax = max(max(rounds), 1)

        def xy(x: float, y: float, lo: float = lo, hi: float = hi, xmax: float = xmax) -> tuple[float, float]:
            return m + (w - 2 * m) * x / xmax, h - m - (h - 2 * m) * (y - lo) / (hi - lo)

        parts = [f"<text x='{w / 2}' y='14' text-anchor='middle' font-size='11'>{html.escape(title)}</text>",
                 f"<text x='2' y='{m}' font-size='9'>{hi:.4g}</text>"
                 f"<text x='2' y='{h - m}' font-size='9'>{lo:.4g}</text>"]
        for i, (key, points) in enumerate(lines.items()):
            points = sorted(points)
            pts = [xy(p[0], p[1]) for p in points]
            c = colors[key[0]]
            parts.append(f"<polyline fill='none' stroke='{c}' "
                         f"points='{' '.join(f'{a:.1f},{b:.1f}' for a, b in pts)}'/>")
            parts += [f"<circle cx='{a:.1f}' cy='{b:.1f}' r='3' fill='{c}'/>" for a, b in pts]
            for p in (p for p in points if len(p) == 4):
                (x, y_low), (_, y_high) = xy(p[0], p[2]), xy(p[0], p[3])
                parts.append(f"<line x1='{x:.1f}' y1='{y_low:.1f}' x2='{x:.1f}' y2='{y_high:.1f}' stroke='{c}'/>")
            parts.append(f"<text x='{w - m}' y='{30 + 12 * i}' font-size='9' fill='{c}'>"
                         f"{html.escape(_label(key))}</text>")
        images.append(f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'>{''.join(parts)}</svg>")
    return images


def plots_html(arms: dict[str, dict]) -> str:
    series = {**_delta_series(arms), **_step_series(arms), **_series(arms)}
    if not series:
        return "<p>no training metrics</p>"
    try:
        images = _plots_matplotlib(series)
    except ImportError:
        images = _plots_svg(series)
    return "<div class='plots'>" + "".join(images) + "</div>"


def videos_html(results: dict[str, dict], out_dir: str, per_round: int = 6) -> str:
    """base | aligned side-by-sides per arm and round, by paths relative to ``out_dir``: ``per_round``
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
            items = "".join(
                f"<figure><video src='{html.escape(rel)}' controls loop muted autoplay playsinline width='260'></video>"
                f"<figcaption>{html.escape(os.path.basename(rel))}</figcaption></figure>" for rel in shown)
            blocks.append(f"<h3>{html.escape(name)} · round {r['round']} (left: base, right: aligned; {len(shown)} of "
                          f"{len(clips)}, all in {html.escape(os.path.dirname(clips[0]))}/)</h3>"
                          f"<div class='videos'>{items}</div>")
    return "".join(blocks) or "<p>no videos</p>"


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}td.yes{color:#080;font-weight:bold}
td.no{color:#a00}.plots img,.plots svg{margin:4px}.videos{display:flex;flex-wrap:wrap}figure{margin:4px;font-size:10px}
video{image-rendering:pixelated}pre{background:#f6f6f6;padding:6px;font-size:11px;overflow:auto}"""


def render_report(figures: dict, results: dict[str, dict], out_dir: str) -> str:
    import json

    settings = json.dumps({k: figures.get(k) for k in ("mode", "ci_method", "success_criterion", "eval_gfm_checks",
                                                    "seconds")},
                          indent=1, default=str)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>VideoGPA in miniature</title>"
        f"<style>{STYLE}</style></head><body><h1>VideoGPA in miniature</h1>"
        f"<p>Held-out seeds, scored with the <b>evaluation</b> GFM (not the training reward). "
        f"Headline arm <b>{html.escape(str(figures.get('headline_arm')))}</b>: success = "
        f"<b>{'yes' if figures.get('success') else 'no'}</b> "
        f"({html.escape(str(figures.get('success_criterion')))}).</p>"
        f"<h2>Results</h2>{table_html(figures['arms'])}"
        f"<h2>Held-out effect and training per round</h2>{plots_html(figures['arms'])}"
        f"<h2>Side-by-side samples</h2>{videos_html(results, out_dir)}"
        f"<h2>Settings and timings</h2><pre>{html.escape(settings)}</pre></body></html>")


def write_report(figures: dict, results: dict[str, dict], out_dir: str, name: str = "report.html") -> str:
    """Write the report into ``out_dir`` (temp name, then rename); returns its path."""
    path = os.path.join(out_dir, name)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_report(figures, results, out_dir))
    os.replace(tmp, path)
    return path
