"""A run's HTML report: ``<run>/report.html`` and its media in ``<run>/report_files/``.

Written after every round of ``videogpa align``, after ``videogpa evaluate`` and by ``videogpa
report`` for any run, from what the run folder holds (markers, metrics, shards, the trainer's
history), so it can be remade at any time. Per round, one ``<section class="round">``: stage
durations, the score distributions of the candidates (3DCS, Epipolar, motion, sharpness) with the
winners and losers marked, score statistics, the training curves, a gallery of pairs (winner and
loser videos side by side with their scores and the reason they were paired) and the candidates
left out of every pair with their reason; then each evaluation's table and side-by-side videos.

Self-contained: plots and the videos shown are files in ``report_files/`` linked by relative paths,
so the folder works from a local path as is, and from S3 once ``report.html`` and ``report_files/``
are downloaded. Candidate videos are H.264 mp4 (``actors.video_io``), which browsers play (Debian's
Chromium, whose build has H.264, in tests/e2e/test_report_e2e.py), so they are copied as they are. A
round's videos are final once its candidates stage is done, so a copy already there is kept;
evaluation videos are copied again (a new evaluation rewrites them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import yaml

from actors.scoring_config import SCORE_KEYS
from pipelines.evaluation_table import METRICS
from pipelines.report_parts import Series, distributions, esc, fmt, img, line_plots, page, running_mean, table, video
from pipelines.run_layout import STAGES, RoundPaths, read_candidates, score_stats
from pipelines.storage import RunStore

REPORT = "report.html"
MEDIA = "report_files"
DISTRIBUTIONS = (("3dcs", "3DCS ↓"), ("epipolar", "Epipolar ↓"), ("motion", "motion (camera)"),
                 ("sharpness", "sharpness"))
GALLERY_SCORES = (("3dcs", "3DCS ↓"), ("epipolar", "Epipolar ↓"), ("motion", "motion"), ("sharpness", "sharpness"))
CURVES = (("loss", "DPO loss", 1), ("reward_accuracy", "reward accuracy (running mean of 5)", 5),
          ("reward_margin", "reward margin", 1), ("lr", "learning rate", 1), ("grad_norm", "grad norm", 1))


@dataclass
class _Round:
    """What the run folder holds of one round."""

    index: int
    candidates: list[dict[str, Any]]
    markers: dict[str, dict]
    metrics: dict | None
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def candidate(self, prompt_id: str, seed: int) -> dict[str, Any]:
        return self._by_key.get((prompt_id, int(seed)), {})

    def __post_init__(self) -> None:
        self._by_key = {(c["prompt_id"], int(c["seed"])): c for c in self.candidates}


def _read_round(store: RunStore, index: int) -> _Round:
    paths = RoundPaths(index)
    markers = {stage: store.read_json(paths.marker(stage)) for stage in STAGES}
    markers = {stage: m for stage, m in markers.items() if m is not None}
    rnd = _Round(index, read_candidates(store, paths), markers, store.read_json(paths.metrics))
    pairs_marker = markers.get("pairs")
    if pairs_marker:
        files = [store.path(f["path"]) for f in pairs_marker["files"]]
        columns = ["pair_id", "prompt_id", "prompt", "winner_seed", "loser_seed", "winner_score", "loser_score"]
        rows = pq.ParquetDataset(files, filesystem=store.fs).read(columns=columns).to_pylist() if files else []
        reasons = pairs_marker.get("pair_reasons", {})
        rnd.pairs = sorted(({**r, "reason": reasons.get(r["pair_id"], "")} for r in rows),
                           key=lambda r: (r["winner_score"] - r["loser_score"], r["pair_id"]))  # widest gap first
    return rnd


class _Media:
    """The report's media folder in the run's storage; each method returns the path the page links."""

    def __init__(self, store: RunStore):
        self.store = store

    def png(self, name: str, data: bytes) -> str:
        rel = f"{MEDIA}/{name}"
        self.store.write_bytes(rel, data)
        return rel

    def video(self, run_rel: str, replace: bool = False) -> str:
        rel = f"{MEDIA}/{run_rel}"
        if replace or not self.store.exists(rel):
            self.store.write_bytes(rel, self.store.read_bytes(run_rel))
        return rel


def _spread(items: list, count: int) -> list:
    """``count`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] if count > 1 else items[:1]


def _reason(text: str) -> str:
    return esc(text.replace("_", " "))


def _score_block(rnd: _Round, media: _Media) -> str:
    winners = [rnd.candidate(p["prompt_id"], p["winner_seed"]) for p in rnd.pairs]
    losers = [rnd.candidate(p["prompt_id"], p["loser_seed"]) for p in rnd.pairs]
    panels = [(label, [c[key] for c in rnd.candidates],
               {"winners": [w.get(key, math.nan) for w in winners], "losers": [x.get(key, math.nan) for x in losers]})
              for key, label in DISTRIBUTIONS]
    src = media.png(f"{RoundPaths(rnd.index).dir}-scores.png", distributions(panels))
    stats = [(key, score_stats([c[key] for c in rnd.candidates]) or {}) for key in SCORE_KEYS]
    rows = [[esc(key), *(fmt(s.get(f)) for f in ("mean", "std", "min", "max")), str(s.get("count", 0))]
            for key, s in stats]
    scorer = rnd.candidates[0]["scorer"] if rnd.candidates else "–"
    return (f"<h3>Scores of the {len(rnd.candidates)} candidates (scored as {esc(scorer)}; "
            f"ticks: winners and losers of the pairs)</h3><div class='plots'>{img(src, 'score distributions')}</div>"
            f"<details><summary>score statistics</summary>"
            f"{table(['score', 'mean', 'std', 'min', 'max', 'count'], rows, text_columns=1)}</details>")


def _curves_block(rnd: _Round, media: _Media) -> str:
    history = (rnd.markers.get("train") or {}).get("history") or []
    series: Series = {}
    for key, title, window in CURVES:
        points = [(h["step"], float(h[key])) for h in history
                  if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])]
        if points:
            series[title] = {("", None): running_mean(points, window)}
    if not series:
        return "<h3>Training</h3><p>no training history (the train stage has not run)</p>"
    final = (rnd.markers["train"].get("metrics") or {})
    images = "".join(img(media.png(f"{RoundPaths(rnd.index).dir}-{i}-curve.png", png), title)
                     for i, (title, png) in enumerate(line_plots(series, x_label="step")))
    summary = ", ".join(f"{k.replace('_', ' ')} {fmt(final.get(k))}" for k in
                        ("loss", "reward_accuracy", "reward_margin", "policy_ref_gap_w", "policy_ref_gap_l"))
    return (f"<h3>Training ({len(history)} steps; final {summary})</h3><div class='plots'>{images}</div>")


def _side(rnd: _Round, media: _Media, seed: int, prompt_id: str, role: str, score: float) -> str:
    c = rnd.candidate(prompt_id, seed)
    caption = f"<b class='{'win' if role == 'winner' else 'lose'}'>{role}</b> seed {seed} · score {fmt(score)}"
    return video(media.video(c["video_uri"]), caption) if c.get("video_uri") else f"<p>{caption} (no video)</p>"


def _gallery_block(rnd: _Round, media: _Media, count: int) -> str:
    if "pairs" not in rnd.markers:
        return "<h3>Pairs</h3><p>the pairs stage has not run</p>"
    summary = rnd.markers["pairs"].get("pairing") or {}
    dropped = {**summary.get("candidates_dropped", {}), **{f"prompt {k}": v for k, v in
                                                           summary.get("prompts_dropped", {}).items()}}
    shown = _spread(rnd.pairs, count)
    cards = []
    for p in shown:
        win, lose = rnd.candidate(p["prompt_id"], p["winner_seed"]), rnd.candidate(p["prompt_id"], p["loser_seed"])
        rows = [[esc(label), fmt(win.get(key)), fmt(lose.get(key))] for key, label in GALLERY_SCORES]
        cards.append(
            f"<div class='pair'><div><b>{esc(p['prompt'])}</b> ({esc(p['prompt_id'])})</div>"
            f"{_side(rnd, media, p['winner_seed'], p['prompt_id'], 'winner', p['winner_score'])}"
            f"{_side(rnd, media, p['loser_seed'], p['prompt_id'], 'loser', p['loser_score'])}"
            f"{table(['', 'winner', 'loser'], rows, text_columns=1)}"
            f"<div class='why'>why: {esc(p['reason']) or 'not recorded'}</div></div>")
    counts = ", ".join(f"{_reason(k)}: {v}" for k, v in dropped.items()) or "none"
    return (f"<h3>Pairs: {len(rnd.pairs)} kept (dropped: {counts}); {len(shown)} shown, widest gap first</h3>"
            f"<div class='gallery'>{''.join(cards)}</div>")


def _unpaired_block(rnd: _Round, media: _Media, count: int) -> str:
    if "pairs" not in rnd.markers:
        return ""
    paired = {(p["prompt_id"], int(s)) for p in rnd.pairs for s in (p["winner_seed"], p["loser_seed"])}
    reasons = {(u["prompt_id"], int(u["seed"])): u["reason"] for u in rnd.markers["pairs"].get("unpaired", [])}
    left = [c for c in rnd.candidates if (c["prompt_id"], int(c["seed"])) not in paired]
    if not left:
        return "<h3>Candidates in no pair</h3><p>none</p>"
    left.sort(key=lambda c: (reasons.get((c["prompt_id"], int(c["seed"])), ""), c["prompt_id"], c["seed"]))
    rows = []
    for i, c in enumerate(left[:50]):
        clip = video(media.video(c["video_uri"]), "", width=120) if i < count and c.get("video_uri") else ""
        rows.append([esc(c["prompt"]), str(c["seed"]), _reason(reasons.get((c["prompt_id"], int(c["seed"])),
                                                                          "not recorded")),
                     *(fmt(c.get(key)) for key in ("score", "3dcs", "epipolar", "motion", "sharpness")), clip])
    more = f"<p>… and {len(left) - 50} more</p>" if len(left) > 50 else ""
    header = ["prompt", "seed", "reason", "score", "3DCS", "Epipolar", "motion", "sharpness", "video"]
    return f"<h3>Candidates in no pair ({len(left)}), and why</h3>{table(header, rows, text_columns=3)}{more}"


def _round_section(store: RunStore, media: _Media, index: int, gallery: int) -> str:
    rnd = _read_round(store, index)
    done = [s for s in STAGES if s in rnd.markers]
    state = "complete" if rnd.metrics is not None else f"incomplete (stages done: {', '.join(done) or 'none'})"
    seconds = ", ".join(f"{s} {rnd.markers[s].get('seconds', '–')} s" for s in done)
    return (f"<section class='round' id='{RoundPaths(index).dir}'><h2>Round {index}: {state}</h2>"
            f"<p>stage durations: {seconds or '–'}</p>{_score_block(rnd, media)}{_curves_block(rnd, media)}"
            f"{_gallery_block(rnd, media, gallery)}{_unpaired_block(rnd, media, gallery)}</section>")


def _evaluation_section(store: RunStore, media: _Media, rel: str, per_round: int = 6) -> str:
    result = store.read_json(f"{rel}/results.json")
    base, aligned, index = result["base"], result["aligned"], result["round"]
    rows = [[esc(f"{key} {arrow}"), f"{fmt(base[key]['mean'])} ± {fmt(base[key]['sem'], 3)}",
             f"{fmt(aligned[key]['mean'])} ± {fmt(aligned[key]['sem'], 3)}",
             fmt(aligned[key]["mean"] - base[key]["mean"])] for key, arrow in METRICS if key in base]
    epipolar = ""
    if "epipolar_matcher" in result:  # evaluations made before the matcher was recorded have no such line
        official = result.get("epipolar_unscorable") == "minus_one"
        epipolar = (f"<p>epipolar: {esc(result['epipolar_matcher'])} matches; unscorable videos: base "
                    f"{base['epipolar'].get('unscorable', 0)}, LoRA {aligned['epipolar'].get('unscorable', 0)} "
                    f"{'(averaged in as -1, as the official benchmark)' if official else '(left out)'}</p>")
    clips = _spread(sorted(result.get("side_by_side", [])), per_round)
    videos = "".join(video(media.video(c, replace=True), esc(c.rsplit("/", 1)[-1]), width=300) for c in clips)
    return (f"<section class='evaluation' id='evaluation-{index:03d}'><h2>Evaluation of round {index}'s LoRA "
            f"({result['samples']} held-out samples, mean ± s.e.m.)</h2>"
            f"{table(['metric', 'base', f'round {index} LoRA', 'delta'], rows, text_columns=1)}{epipolar}"
            f"<h3>Side by side (left: base, right: aligned; {len(clips)} of {len(result.get('side_by_side', []))})"
            f"</h3><div class='videos'>{videos}</div></section>")


def _overview(store: RunStore, config: dict, indices: list[int], media: _Media) -> str:
    model, scoring, pairing = (config.get(k) or {} for k in ("model", "scoring", "pairing"))
    facts = [("run", store.uri()), ("model", f"{model.get('family')} ({model.get('pretrained')})"),
             ("reward", f"{scoring.get('scorer')} scored by the {scoring.get('backend')} GFM"),
             ("candidates per prompt", pairing.get("candidates_per_prompt")),
             ("rounds", f"{len(indices)} started of {config.get('rounds')}")]
    rows, series = [], {}
    for index in indices:
        metrics = store.read_json(RoundPaths(index).metrics)
        if metrics is None:
            continue
        train = metrics.get("train") or {}
        rows.append([str(index), str(metrics["candidates"]), str(metrics["pairs_kept"]),
                     fmt((metrics["scores"].get("3dcs") or {}).get("mean")), fmt(train.get("loss")),
                     fmt(train.get("reward_accuracy"))])
        for key, title in (("3dcs", "candidates: mean 3DCS ↓"), ("epipolar", "candidates: mean Epipolar ↓")):
            mean = (metrics["scores"].get(key) or {}).get("mean")
            if isinstance(mean, float) and math.isfinite(mean):
                series.setdefault(title, {}).setdefault(("", None), []).append((index, mean))
    plots = "".join(img(media.png(f"rounds-{i}.png", png), title) for i, (title, png) in
                    enumerate(line_plots(series))) if len(rows) > 1 else ""
    summary = table(["round", "candidates", "pairs", "mean 3DCS", "final loss", "final reward accuracy"], rows)
    return (table(None, [[esc(k), esc(str(v))] for k, v in facts], text_columns=2)
            + (f"<h2>Rounds</h2>{summary}<div class='plots'>{plots}</div>" if rows else ""))


def _round_indices(store: RunStore) -> list[int]:
    return sorted(int(d.split("-")[1]) for d in store.list_dirs("")
                  if d.startswith("round-") and store.exists(RoundPaths(int(d.split("-")[1])).marker("candidates")))


def write_run_report(store: RunStore, gallery: int = 8) -> str:
    """(Re)write the run's report from its folder; returns its URI. ``gallery``: pairs shown per round."""
    media = _Media(store)
    config = yaml.safe_load(store.read_bytes("config.yaml")) if store.exists("config.yaml") else {}
    indices = _round_indices(store)
    rounds = "".join(_round_section(store, media, i, gallery) for i in indices)
    evaluations = "".join(_evaluation_section(store, media, rel) for rel in store.list_dirs("evaluation")
                          if rel.rsplit("/", 1)[-1].startswith("round-") and store.exists(f"{rel}/results.json"))
    body = (f"<p>written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>"
            f"{_overview(store, config, indices, media)}{rounds or '<p>no round has candidates yet</p>'}"
            f"{evaluations}<h2>Config</h2><details><summary>config.yaml</summary>"
            f"<pre>{esc(yaml.safe_dump(config, sort_keys=False))}</pre></details>")
    store.write_bytes(REPORT, page(f"videogpa run {store.run_name}", body).encode("utf-8"))
    return store.uri(REPORT)
