"""Preference pairs from scored candidates: per prompt, best (lowest score) against worst, or, with
``motion_matched`` / ``sharpness_matched``, the widest-gap pair whose winner moves at least as much
as its loser / is at least as sharp.

Pure functions over small metadata rows; the videos themselves never pass through here.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class Pair:
    pair_id: str
    round: int
    prompt_id: str
    prompt: str
    image: str | None
    winner: dict[str, Any]
    loser: dict[str, Any]


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    dropped_candidates: Counter = field(default_factory=Counter)  # reason -> candidates
    dropped_prompts: Counter = field(default_factory=Counter)  # reason -> prompts

    def summary(self) -> dict[str, Any]:
        return {
            "pairs_kept": len(self.pairs),
            "candidates_dropped": dict(self.dropped_candidates),
            "prompts_dropped": dict(self.dropped_prompts),
        }


def pair_id(prompt_id: str, round_index: int, winner_seed: int, loser_seed: int) -> str:
    """Deterministic: the same prompt, round and seeds always give the same id."""
    key = f"{prompt_id}|{round_index}|{winner_seed}|{loser_seed}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def _best_and_worst(rows: list[dict[str, Any]], matched_on: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``rows`` sorted by (score, seed). Plain: the first against the last. Matched: the pair with the
    largest score gap whose winner is at least its loser's on every key of ``matched_on`` (None if no
    pair is), so that no pair can teach the policy to slow its camera down or to blur."""
    if not matched_on:
        return rows[0], rows[-1]
    pairs = [(w, l) for i, w in enumerate(rows) for l in rows[i + 1:] if all(w[k] >= l[k] for k in matched_on)]
    return max(pairs, key=lambda p: p[1]["score"] - p[0]["score"], default=None)


def make_pairs(
    candidates: Iterable[dict[str, Any]], round_index: int, min_gap: float, motion_threshold: float,
    motion_matched: bool = False, sharpness_matched: bool = False,
) -> PairingReport:
    """Rows need prompt_id, prompt, image, seed, score, motion (and sharpness when ``sharpness_matched``).
    Lower score is better."""
    report = PairingReport()
    matched_on = (*(("motion",) if motion_matched else ()), *(("sharpness",) if sharpness_matched else ()))
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in candidates:
        by_prompt[row["prompt_id"]]  # every prompt is accounted for, even one whose candidates all drop
        if not all(math.isfinite(row[k]) for k in ("score", "motion", *matched_on)):
            report.dropped_candidates["non_finite_score"] += 1
        elif row["motion"] < motion_threshold:
            # A static video re-renders itself trivially well: it must not win on stillness.
            report.dropped_candidates["static"] += 1
        else:
            by_prompt[row["prompt_id"]].append(row)

    for prompt_id in sorted(by_prompt):
        rows = sorted(by_prompt[prompt_id], key=lambda r: (r["score"], r["seed"]))
        if len(rows) < 2:
            report.dropped_prompts["fewer_than_two_moving_candidates"] += 1
            continue
        chosen = _best_and_worst(rows, matched_on)
        if chosen is None:
            report.dropped_prompts[f"no_winner_matching_a_loser_on_{'_and_'.join(matched_on)}"] += 1
            continue
        best, worst = chosen
        if worst["score"] - best["score"] < min_gap:
            report.dropped_prompts["gap_below_min_gap"] += 1
            continue
        report.pairs.append(
            Pair(
                pair_id=pair_id(prompt_id, round_index, best["seed"], worst["seed"]),
                round=round_index,
                prompt_id=prompt_id,
                prompt=best["prompt"],
                image=best.get("image"),
                winner=best,
                loser=worst,
            )
        )
    return report
