"""What every HTML report here is built from: the page, tables, matplotlib plots and video figures.

Two reports use them: a run's report (``pipelines.report``, ``videogpa report``) and the miniature
experiment's (``benchmarks/miniature_lab/report.py``). Plots are PNG bytes (the caller decides
whether they go inline or into the report's media folder); videos are linked by paths relative
to the report, so a report folder can be moved, served or downloaded from S3 and still plays.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1280px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}.yes{color:#080;font-weight:bold}
.no{color:#a00}td.text,th.text{text-align:left}.plots img{margin:4px;max-width:100%}
.videos{display:flex;flex-wrap:wrap}figure{margin:4px;font-size:11px}video{image-rendering:pixelated}
pre{background:#f6f6f6;padding:6px;font-size:11px;overflow:auto}section{border-top:2px solid #888;margin-top:1.5em}
.pair{display:inline-block;vertical-align:top;border:1px solid #ddd;margin:4px;padding:4px;font-size:12px}
.pair .why{color:#555;max-width:560px}.pair figure{display:inline-block}.win{color:#080}.lose{color:#a00}"""

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
DASHES = ("-", "--", ":", "-.")  # lines of one color told apart by round

esc = html.escape


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell's text: '–' for missing or non-finite, small floats in 3 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 1e-2 else f"{value:.3g}"
    return esc(str(value))


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")


def table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], text_columns: int = 0) -> str:
    """Cells are HTML already (escape them with :func:`fmt` / :func:`esc`); the first ``text_columns``
    columns are left-aligned; ``header`` None: no header row."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag}{' class=text' if i < text_columns else ''}>{v}</{tag}>" for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head = f"<tr>{cells('th', [esc(h) for h in header])}</tr>" if header is not None else ""
    return f"<table>{head}{body}</table>"


def video(src: str, caption: str = "", width: int = 240) -> str:
    """A looping, muted video (autoplay is allowed muted) with a caption; ``src`` relative to the page."""
    return (f"<figure><video src='{esc(src)}' controls loop muted autoplay playsinline preload='auto' "
            f"width='{width}'></video><figcaption>{caption}</figcaption></figure>")


def img(src: str, alt: str) -> str:
    return f"<img alt='{esc(alt)}' src='{esc(src)}'>"


def inline_png(png: bytes, alt: str) -> str:
    return img(f"data:image/png;base64,{base64.b64encode(png).decode()}", alt)


def running_mean(points: Sequence[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """(x, mean of the last ``window`` y) per point: per-step DPO metrics see a few pairs each, so they jitter."""
    ys = [y for _, y in points]
    return [(x, sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]))
            for i, (x, _) in enumerate(points)]


Series = dict[str, dict[tuple[str, int | None], list[tuple]]]
"""Per plotted quantity (the plot's title): (line name, round or None) -> points (x, y) or (x, y, low, high).
Lines of one name share a color; a round number gives the line its own dash pattern."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def line_plots(series: Series, x_label: str = "round") -> list[tuple[str, bytes]]:
    """One small PNG line chart per quantity, (title, png) in order. Points with (low, high) get error
    bars, lines side by side so that equal x values do not hide each other, and a line at zero."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    names = dict.fromkeys(name for lines in series.values() for name, _ in lines)
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(names)}
    out = []
    for title, lines in series.items():
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
        for offset, (key, points) in enumerate(lines.items()):
            points = sorted(points)
            name, index = key
            style = {"color": colors[name], "label": name if index is None else f"{name} r{index}"}
            if index is not None:
                style["linestyle"] = DASHES[index % len(DASHES)]
            if len(points[0]) == 4:
                xs = [p[0] + 0.06 * (offset - (len(lines) - 1) / 2) for p in points]
                err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
                ax.errorbar(xs, [p[1] for p in points], yerr=err, marker="o", capsize=3, **style)
            else:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(xs) <= 12 else None, **style)
        ax.set_title(title, fontsize=9)
        ax.ticklabel_format(axis="y", useOffset=False)  # 0.69314 reads better than 1e-6 + 6.9314e-1
        ax.set_xlabel(x_label)
        if x_label == "round":
            ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if any(len(p) == 4 for pts in lines.values() for p in pts):  # deltas with CIs: where "no effect" is
            ax.axhline(0.0, color="#888", linewidth=0.8)
        if len(lines) > 1 or next(iter(lines))[0]:
            ax.legend(fontsize=7)
        out.append((title, _png(fig)))
    return out


def distributions(panels: Sequence[tuple[str, Sequence[float], dict[str, Sequence[float]]]]) -> bytes:
    """One PNG, a histogram per panel (title, values, marks): ``marks`` name -> values drawn as ticks
    under the histogram (e.g. the winners' and losers' scores), in the order given."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.7), dpi=90, squeeze=False)
    for ax, (title, values, marks) in zip(axes[0], panels):
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            ax.hist(finite, bins=min(30, max(5, len(finite) // 2)), color="#bbb", label=f"all ({len(finite)})")
            for (name, points), color in zip(marks.items(), ("#2ca02c", "#d62728", *COLORS)):
                shown = [v for v in points if math.isfinite(v)]
                if shown:
                    ax.plot(shown, [0] * len(shown), "|", markersize=14, markeredgewidth=2, color=color, label=name)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.locator_params(axis="x", nbins=4)  # small values (motion ~1e-4) need room for their digits
        ax.set_title(title, fontsize=9)
    return _png(fig)
