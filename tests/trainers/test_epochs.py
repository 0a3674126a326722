"""EpochFeed over a real Ray Data iterator: every row once per epoch, seeded and resumable
orders, memory epochs only within the budget."""

from __future__ import annotations

import pytest

from trainers.epochs import EpochFeed

N = 12


@pytest.fixture(scope="module")
def iterator(ray_local):
    import ray.data

    rows = [{"pair_id": f"p{i:02d}", "winner_latents": bytes([i]) * 1000, "latent_shape": [1, 2, 3]}
            for i in range(N)]
    return ray.data.from_items(rows).iterator()


def _epoch_ids(feed: EpochFeed, epoch: int) -> list[str]:
    return [str(p) for b in feed.batches(epoch) for p in b["pair_id"]]


def _feed(iterator, cache_mb: float, micro: int = 2) -> EpochFeed:
    return EpochFeed(iterator, micro, shuffle=True, shuffle_buffer_size=4, seed=3, cache_mb=cache_mb)


def test_epochs_come_from_memory_after_the_first_and_hold_every_row_once(iterator):
    feed = _feed(iterator, cache_mb=1.0)
    epochs = [_epoch_ids(feed, e) for e in range(3)]
    assert feed.cached
    for ids in epochs:
        assert sorted(ids) == [f"p{i:02d}" for i in range(N)]
    assert epochs[1] != epochs[2]  # reshuffled per epoch
    batch = next(iter(feed.batches(3)))
    assert batch["winner_latents"][0] == bytes([int(batch["pair_id"][0][1:])]) * 1000
    assert list(batch["latent_shape"][0]) == [1, 2, 3]
    figures = feed.wait_figures()
    assert figures["first_batch_wait_s"] > 0 and 0 <= figures["data_wait_fraction"] <= 1


def test_a_resumed_feed_replays_the_same_memory_epochs(iterator):
    first = _feed(iterator, cache_mb=1.0)
    orders = [_epoch_ids(first, e) for e in range(3)]
    resumed = _feed(iterator, cache_mb=1.0)  # a restarted worker: starts straight at epoch 2
    assert _epoch_ids(resumed, 2) == orders[2]


def test_over_budget_shards_stream_every_epoch(iterator):
    feed = _feed(iterator, cache_mb=5000 / 2**20)  # room for 5 of the 12 rows
    a, b = _epoch_ids(feed, 0), _epoch_ids(feed, 1)
    assert not feed.cached
    assert sorted(a) == sorted(b) == [f"p{i:02d}" for i in range(N)]


def test_workers_that_disagree_all_stream(iterator):
    feed = EpochFeed(iterator, 2, shuffle=False, shuffle_buffer_size=4, seed=0, cache_mb=1.0,
                     all_agree=lambda ok: False)  # another worker's shard did not fit
    _epoch_ids(feed, 0)
    assert not feed.cached
    assert _epoch_ids(feed, 1) == [f"p{i:02d}" for i in range(N)]  # unshuffled stream order


def test_drop_last_keeps_whole_micro_batches(iterator):
    feed = _feed(iterator, cache_mb=1.0, micro=5)
    sizes = [len(b["pair_id"]) for b in feed.batches(0)] + [len(b["pair_id"]) for b in feed.batches(1)]
    assert sizes == [5, 5, 5, 5]
    assert feed.cached and len(set(_epoch_ids(feed, 2)) | set(_epoch_ids(feed, 3))) > 10  # no row left out for good


def test_a_prefetched_first_epoch_is_the_epoch_it_would_have_streamed(iterator):
    plain = _feed(iterator, cache_mb=1.0)
    expected = [_epoch_ids(plain, e) for e in range(2)]
    early = _feed(iterator, cache_mb=1.0)
    early.prefetch_first_epoch()
    assert [_epoch_ids(early, e) for e in range(2)] == expected
    assert early.cached and early.wait_figures()["first_batch_wait_s"] >= 0
    wrong = _feed(iterator, cache_mb=1.0)
    wrong.prefetch_first_epoch()
    with pytest.raises(RuntimeError, match="epoch 0 was prefetched but epoch 2"):
        next(iter(wrong.batches(2)))
    assert _epoch_ids(wrong, 0) == expected[0]  # the prefetched stream is still whole
