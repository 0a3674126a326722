"""Preference pairs from scored candidates: per prompt, best (lowest score) against worst, or, with
``motion_matched`` / ``sharpness_matched``, the widest-gap pair whose winner moves at least as much
as its loser / is at least as sharp. With ``pairs_per_prompt`` > 1 the same choice is repeated on the
candidates not yet paired (best vs worst, then second best vs second worst, ...), so every video is in
at most one pair. With ``adjust_for``, candidates are ranked (and gaps measured) by their score less the
part a least-squares fit on the log of those covariates explains, so that pairs carry no systematic
difference in them; each pair keeps its raw scores.

Pure functions over small metadata rows; the videos themselves never pass through here.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pair:
    pair_id: str
    round: int
    prompt_id: str
    prompt: str
    image: str | None
    winner: dict[str, Any]
    loser: dict[str, Any]
    reason: str = ""  # why these two, in words (the run report shows it beside the videos)


@dataclass
class PairingReport:
    pairs: list[Pair] = field(default_factory=list)
    dropped_candidates: Counter = field(default_factory=Counter)  # reason -> candidates
    dropped_prompts: Counter = field(default_factory=Counter)  # reason -> prompts
    adjusted_for: dict[str, float] = field(default_factory=dict)  # covariate -> fitted score per unit of its log
    unpaired: list[dict[str, Any]] = field(default_factory=list)  # {prompt_id, seed, reason}: candidates in no pair

    def summary(self) -> dict[str, Any]:
        return {
            "pairs_kept": len(self.pairs),
            "candidates_dropped": dict(self.dropped_candidates),
            "prompts_dropped": dict(self.dropped_prompts),
            **({"adjusted_for": dict(self.adjusted_for)} if self.adjusted_for else {}),
        }


def pair_id(prompt_id: str, round_index: int, winner_seed: int, loser_seed: int) -> str:
    """Deterministic: the same prompt, round and seeds always give the same id."""
    key = f"{prompt_id}|{round_index}|{winner_seed}|{loser_seed}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


RANK = "pairing_score"  # the score candidates are ranked by: the raw score, or the adjusted one


def _best_and_worst(
    rows: list[dict[str, Any]], matched_on: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``rows`` sorted by (RANK, seed). Plain: the first against the last. Matched: the pair with the
    largest gap whose winner is at least its loser's on every key of ``matched_on`` (None if no
    pair is), so that no pair can teach the policy to slow its camera down or to blur."""
    if not matched_on:
        return rows[0], rows[-1]
    pairs = [(w, loser) for i, w in enumerate(rows) for loser in rows[i + 1:]
             if all(w[k] >= loser[k] for k in matched_on)]
    return max(pairs, key=lambda p: p[1][RANK] - p[0][RANK], default=None)


def _winner_good_enough(winner: dict[str, Any], threshold: float | None) -> bool:
    return threshold is None or winner["score"] < threshold


def covariate_adjusted(rows: list[dict[str, Any]], covariates: tuple[str, ...]) -> tuple[list[float], dict[str, float]]:
    """Each row's score less ``sum_k c_k * log(row[k])``, with the c_k fitted by least squares over all
    rows on values centred within each prompt (what differs between a prompt's candidates is what
    pairing sees). Where the reward also falls with slower or blurrier videos, best-vs-worst pairs teach
    slowing or blurring; on the adjusted score the winners are, on average, neither. Rows need
    finite scores and positive covariates."""
    import numpy as np

    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_prompt[row["prompt_id"]].append(i)
    x = np.log(np.asarray([[row[k] for k in covariates] for row in rows], float).reshape(len(rows), len(covariates)))
    y = np.asarray([row["score"] for row in rows], float)
    xc, yc = x.copy(), y.copy()
    for idx in by_prompt.values():
        xc[idx] -= x[idx].mean(axis=0)
        yc[idx] -= y[idx].mean()
    coef = np.linalg.lstsq(xc, yc, rcond=None)[0] if len(rows) else np.zeros(len(covariates))
    return (y - x @ coef).tolist(), dict(zip(covariates, map(float, coef)))


def make_pairs(
    candidates: Iterable[dict[str, Any]], round_index: int, min_gap: float, motion_threshold: float,
    motion_matched: bool = False, sharpness_matched: bool = False, pairs_per_prompt: int = 1,
    adjust_for: tuple[str, ...] = (), winner_threshold: float | None = None,
) -> PairingReport:
    """Rows need prompt_id, prompt, image, seed, score, motion (and sharpness when matched or adjusted
    on it). Lower score is better; ``min_gap`` applies to the adjusted score when ``adjust_for`` is set,
    ``winner_threshold`` to the raw score (a winner scoring it or worse is no winner, as in the official
    code, which checks it before the gap). A prompt is dropped (and counted) when not even its first pair
    can be made; further pairs stop at the first one that would break ``min_gap``, the threshold or the matching."""
    report = PairingReport()
    matched_on = (*(("motion",) if motion_matched else ()), *(("sharpness",) if sharpness_matched else ()))
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def unpaired(rows: Iterable[dict[str, Any]], reason: str) -> None:
        report.unpaired.extend({"prompt_id": r["prompt_id"], "seed": r["seed"], "reason": reason} for r in rows)

    for row in candidates:
        by_prompt[row["prompt_id"]]  # every prompt is accounted for, even one whose candidates all drop
        if not all(math.isfinite(row[k]) for k in ("score", "motion", *matched_on, *adjust_for)):
            reason = "non_finite_score"
        elif row["motion"] < motion_threshold:
            # A static video re-renders itself trivially well: it must not win on stillness.
            reason = "static"
        elif any(row[k] <= 0 for k in adjust_for):
            reason = "covariate_not_positive"
        else:
            by_prompt[row["prompt_id"]].append(row)
            continue
        report.dropped_candidates[reason] += 1
        unpaired([row], reason)
    kept = [row for rows in by_prompt.values() for row in rows]
    ranks, report.adjusted_for = (covariate_adjusted(kept, adjust_for) if adjust_for
                                  else ([r["score"] for r in kept], {}))
    ranked = iter(ranks)
    for rows in by_prompt.values():
        rows[:] = [{**row, RANK: next(ranked)} for row in rows]

    no_match = f"no_winner_matching_a_loser_on_{'_and_'.join(matched_on)}"
    for prompt_id in sorted(by_prompt):
        rows = sorted(by_prompt[prompt_id], key=lambda r: (r[RANK], r["seed"]))
        chosen = _best_and_worst(rows, matched_on) if len(rows) >= 2 else None
        # the official code checks the winner's score against the threshold before the gap
        why = ("fewer_than_two_moving_candidates" if len(rows) < 2 else no_match if chosen is None
               else "winner_not_below_threshold" if not _winner_good_enough(chosen[0], winner_threshold)
               else "gap_below_min_gap" if chosen[1][RANK] - chosen[0][RANK] < min_gap else None)
        if why:
            report.dropped_prompts[why] += 1
            unpaired(rows, why)
            continue
        for number in range(1, pairs_per_prompt + 1):
            if chosen is None or not _winner_good_enough(chosen[0], winner_threshold) \
                    or chosen[1][RANK] - chosen[0][RANK] < min_gap:
                why = ("neither_best_nor_worst" if len(rows) < 2 else no_match if chosen is None
                       else "winner_not_below_threshold" if not _winner_good_enough(chosen[0], winner_threshold)
                       else "gap_below_min_gap")
                break
            best, worst = chosen
            report.pairs.append(
                Pair(
                    pair_id=pair_id(prompt_id, round_index, best["seed"], worst["seed"]),
                    round=round_index,
                    prompt_id=prompt_id,
                    prompt=best["prompt"],
                    image=best.get("image"),
                    winner=best,
                    loser=worst,
                    reason=_pair_reason(number, len(rows), best[RANK], worst[RANK], min_gap, matched_on, adjust_for),
                )
            )
            rows = [r for r in rows if r is not best and r is not worst]
            chosen = _best_and_worst(rows, matched_on) if len(rows) >= 2 else None
        else:
            why = "neither_best_nor_worst"
        unpaired(rows, why)  # the candidates left between this prompt's pairs
    return report


def _pair_reason(number: int, candidates: int, best: float, worst: float, min_gap: float,
                 matched_on: tuple[str, ...], adjust_for: tuple[str, ...]) -> str:
    score = f"score adjusted for {' and '.join(adjust_for)}" if adjust_for else "score"
    choice = (f"widest {score} gap with the winner's {' and '.join(matched_on)} at least the loser's" if matched_on
              else f"lowest vs highest {score}")
    among = f"{candidates} candidates" + (" not yet paired" if number > 1 else "")
    return f"pair {number}: {choice} of {among}; gap {worst - best:.4g} ≥ min_gap {min_gap:g}"
