"""The validation split and the per-rank shares of held-out pairs (no Ray here)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from trainers.validation import (
    rank_share,
    rows_where,
    validation_figures,
    validation_pair_ids,
    weighted_sums,
)

IDS = [f"pair-{i:03d}" for i in range(50)]


def test_split_is_a_function_of_seed_and_ids_only():
    held = validation_pair_ids(IDS, 0.02, seed=0)
    assert len(held) == 1 and held <= set(IDS)  # the official 98/2 split of 50 pairs holds out one
    assert validation_pair_ids(list(reversed(IDS)) + IDS[:5], 0.02, seed=0) == held  # order, duplicates
    assert len(validation_pair_ids(IDS, 0.2, seed=0)) == 10
    assert validation_pair_ids(IDS, 0.2, seed=0) != validation_pair_ids(IDS, 0.2, seed=1)
    assert validation_pair_ids(IDS, 0.0, seed=0) == frozenset()
    assert len(validation_pair_ids(IDS[:3], 0.01, seed=0)) == 1  # at least one pair once asked for


def test_rows_where_splits_a_block_into_held_out_and_training_rows():
    table = pa.table({"pair_id": IDS, "x": list(range(50))})
    held = validation_pair_ids(IDS, 0.2, seed=0)
    val, train = rows_where(held, held_out=True)(table), rows_where(held, held_out=False)(table)
    assert set(val["pair_id"].to_pylist()) == held
    assert set(train["pair_id"].to_pylist()) == set(IDS) - held
    assert val.num_rows + train.num_rows == 50


@pytest.mark.parametrize("n,world", [(3, 2), (5, 3), (2, 4), (4, 2), (1, 1)])
def test_rank_shares_are_equal_length_and_weigh_each_item_once(n, world):
    items = list(range(n))
    shares = [rank_share(items, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # ZeRO-3: the same number of forwards on every rank
    weights: dict[int, float] = {}
    for share in shares:
        for item, w in share:
            weights[item] = weights.get(item, 0.0) + w
    assert weights == {i: 1.0 for i in items}


def test_figures_are_weighted_means_over_all_ranks():
    def fig(loss):
        return {"loss": loss, "reward_accuracy": 1.0, "reward_margin": 0.5, "policy_reward_accuracy": 0.0}

    rank0 = weighted_sums([(fig(1.0), 1.0), (fig(2.0), 1.0)])
    rank1 = weighted_sums([(fig(4.0), 1.0), (fig(100.0), 0.0)])  # a padding repeat counts for nothing
    summed = {k: rank0[k] + rank1[k] for k in rank0}
    out = validation_figures(summed)
    assert out["val_loss"] == pytest.approx(7.0 / 3)
    assert out["val_reward_accuracy"] == 1.0 and out["val_policy_reward_accuracy"] == 0.0
