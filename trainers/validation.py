"""Held-out preference pairs: which pairs validate, and how their DPO figures are computed.

The split is a pure function of (seed, pair_id), as the official trainer's seeded 98/2
``random_split`` is of the dataset order, but independent of shard order, world size and resumes.
Validation pairs get one fixed noise and timestep each (``VALIDATION_EPOCH``), so the validation
loss of two steps compares the policies, not two draws of noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

T = TypeVar("T")

# The "epoch" the noise and timestep of a validation pair are drawn for (trainers.data.pair_seed);
# training epochs count from 0, so this never repeats a training draw.
VALIDATION_EPOCH = -1
# The figures of dpo_loss that validation reports, each as "val_<name>".
VALIDATION_METRICS = ("loss", "reward_accuracy", "reward_margin", "policy_reward_accuracy")


def validation_pair_ids(pair_ids: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """The ``max(1, round(fraction·n))`` pairs of lowest hash(seed, pair_id); none for fraction 0."""
    unique = sorted(set(pair_ids))
    if fraction <= 0 or not unique:
        return frozenset()
    n = max(1, round(fraction * len(unique)))
    ranked = sorted(unique, key=lambda p: hashlib.sha256(f"validation:{seed}:{p}".encode()).digest())
    return frozenset(ranked[:n])


def rows_where(pair_ids: frozenset[str], held_out: bool) -> Callable[[pa.Table], pa.Table]:
    """A Ray Data ``map_batches`` function (pyarrow format) keeping the held-out rows, or the others."""
    value_set = pa.array(sorted(pair_ids), type=pa.string())

    def keep(batch: pa.Table) -> pa.Table:
        held = pc.is_in(batch["pair_id"], value_set=value_set)
        return batch.filter(held if held_out else pc.invert(held))

    return keep


def rank_share(items: Sequence[T], rank: int, world: int) -> list[tuple[T, float]]:
    """Rank ``rank``'s strided share of ``items`` as (item, weight), padded with weight-0 repeats to
    ``ceil(n / world)`` entries: every rank runs the same number of forwards, which ZeRO-3 needs
    (each forward gathers parameters collectively)."""
    if not items:
        return []
    per_rank = -(-len(items) // world)
    mine = [(items[i], 1.0) for i in range(rank, len(items), world)]
    return mine + [(items[0], 0.0)] * (per_rank - len(mine))


def weighted_sums(figures: Sequence[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Sums of w·figure over this rank's share, and of w as ``"count"``; the mean over all ranks is
    sum/count after summing (or averaging) both across ranks."""
    sums = {k: 0.0 for k in VALIDATION_METRICS}
    count = 0.0
    for m, w in figures:
        for k in VALIDATION_METRICS:
            sums[k] += w * m[k]
        count += w
    return {**sums, "count": count}


def validation_figures(summed: dict[str, float]) -> dict[str, float]:
    """``val_<metric>`` means from the (all-reduced) weighted sums."""
    return {f"val_{k}": summed[k] / summed["count"] for k in VALIDATION_METRICS}
