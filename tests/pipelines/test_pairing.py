import math

import pytest

from pipelines.pairing import make_pairs, pair_id


def _row(pid, seed, score, motion=0.5):
    return {"prompt_id": pid, "prompt": f"prompt {pid}", "image": "", "seed": seed, "score": score, "motion": motion}


def test_best_against_worst_per_prompt():
    rows = [_row("a", 1, 0.30), _row("a", 2, 0.10), _row("a", 3, 0.50), _row("b", 4, 0.2), _row("b", 5, 0.9)]
    report = make_pairs(rows, round_index=0, min_gap=0.05, motion_threshold=0.001)
    pairs = {p.prompt_id: p for p in report.pairs}
    assert (pairs["a"].winner["seed"], pairs["a"].loser["seed"]) == (2, 3)
    assert (pairs["b"].winner["seed"], pairs["b"].loser["seed"]) == (4, 5)


def test_gap_below_min_gap_drops_the_prompt():
    report = make_pairs([_row("a", 1, 0.30), _row("a", 2, 0.33)], 0, min_gap=0.05, motion_threshold=0.001)
    assert report.pairs == [] and report.dropped_prompts["gap_below_min_gap"] == 1


def test_static_candidates_cannot_win():
    rows = [_row("a", 1, 0.01, motion=0.0), _row("a", 2, 0.2), _row("a", 3, 0.6)]
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001)
    assert report.pairs[0].winner["seed"] == 2
    assert report.dropped_candidates["static"] == 1


def test_all_static_prompt_is_dropped_and_counted():
    rows = [_row("a", 1, 0.1, motion=0.0), _row("a", 2, 0.9, motion=0.0)]
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001)
    assert report.pairs == []
    assert report.dropped_prompts["fewer_than_two_moving_candidates"] == 1
    assert report.dropped_candidates["static"] == 2


def test_non_finite_scores_are_dropped():
    rows = [_row("a", 1, math.nan), _row("a", 2, 0.1), _row("a", 3, math.inf), _row("a", 4, 0.5)]
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001)
    assert report.dropped_candidates["non_finite_score"] == 2
    assert (report.pairs[0].winner["seed"], report.pairs[0].loser["seed"]) == (2, 4)


def test_pair_id_is_deterministic_and_distinct():
    assert pair_id("a", 0, 1, 2) == pair_id("a", 0, 1, 2)
    assert len({pair_id("a", 0, 1, 2), pair_id("a", 1, 1, 2), pair_id("a", 0, 2, 1), pair_id("b", 0, 1, 2)}) == 4


def test_motion_matched_pairs_never_prefer_the_slower_camera():
    # best-vs-worst would pair seed 1 (slow, low score) against seed 4 (fast, high score)
    rows = [_row("a", 1, 0.10, motion=0.1), _row("a", 2, 0.20, motion=0.6), _row("a", 3, 0.35, motion=0.5),
            _row("a", 4, 0.90, motion=0.9), _row("b", 5, 0.1, motion=0.2), _row("b", 6, 0.8, motion=0.7)]
    plain = {p.prompt_id: p for p in make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001).pairs}
    assert (plain["a"].winner["seed"], plain["a"].loser["seed"]) == (1, 4)
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, motion_matched=True)
    pairs = {p.prompt_id: p for p in report.pairs}
    assert (pairs["a"].winner["seed"], pairs["a"].loser["seed"]) == (2, 3)  # widest gap with winner motion >= loser's
    assert all(p.winner["motion"] >= p.loser["motion"] for p in report.pairs)
    assert "b" not in pairs and report.dropped_prompts["no_winner_matching_a_loser_on_motion"] == 1
    # the chosen pair still has to clear min_gap
    gap = make_pairs(rows[:4], 0, min_gap=0.2, motion_threshold=0.001, motion_matched=True)
    assert gap.pairs == [] and gap.dropped_prompts["gap_below_min_gap"] == 1


def test_sharpness_matched_pairs_never_prefer_the_blurrier_video():
    def row(seed, score, motion, sharp):
        return {**_row("a", seed, score, motion), "sharpness": sharp}

    # motion-matched alone pairs seed 1 (blurry, low score) against seed 4
    rows = [row(1, 0.10, 0.9, 0.2), row(2, 0.20, 0.8, 0.6), row(3, 0.50, 0.7, 0.9), row(4, 0.90, 0.1, 0.5),
            {**row(5, 0.3, 0.5, math.nan), "prompt_id": "b"}, {**row(6, 0.9, 0.5, 0.5), "prompt_id": "b"}]
    motion = {p.prompt_id: p
              for p in make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, motion_matched=True).pairs}
    assert (motion["a"].winner["seed"], motion["a"].loser["seed"]) == (1, 4)
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, motion_matched=True, sharpness_matched=True)
    pairs = {p.prompt_id: p for p in report.pairs}
    assert (pairs["a"].winner["seed"], pairs["a"].loser["seed"]) == (2, 4)  # widest gap, winner as fast and as sharp
    # a candidate whose sharpness is unknown cannot be matched on it: dropped, and its prompt with it
    assert report.dropped_candidates["non_finite_score"] == 1 and "b" not in pairs
    none = make_pairs(rows[:2] + [row(7, 0.5, 0.95, 0.1)], 0, min_gap=0.05, motion_threshold=0.001,
                      motion_matched=True, sharpness_matched=True)
    assert none.pairs == [] and none.dropped_prompts["no_winner_matching_a_loser_on_motion_and_sharpness"] == 1


def test_several_disjoint_pairs_per_prompt():
    rows = [_row("a", s, score) for s, score in enumerate([0.1, 0.2, 0.3, 0.34, 0.6, 0.9], start=1)]
    one = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001)
    assert [(p.winner["seed"], p.loser["seed"]) for p in one.pairs] == [(1, 6)]  # the default: best vs worst only
    three = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, pairs_per_prompt=3)
    # best vs worst, then the next best vs the next worst; the third (0.30 vs 0.34) misses min_gap
    assert [(p.winner["seed"], p.loser["seed"]) for p in three.pairs] == [(1, 6), (2, 5)]
    assert len({p.pair_id for p in three.pairs}) == 2 and not three.dropped_prompts
    # matching holds for every pair, and no video is in two pairs
    moving = [{**r, "motion": m} for r, m in zip(rows, [0.1, 0.9, 0.5, 0.6, 0.4, 0.3])]
    matched = make_pairs(moving, 0, min_gap=0.0, motion_threshold=0.001, motion_matched=True, pairs_per_prompt=3)
    assert [(p.winner["seed"], p.loser["seed"]) for p in matched.pairs] == [(2, 6), (3, 5)]
    assert all(p.winner["motion"] >= p.loser["motion"] for p in matched.pairs)


def test_adjusted_pairs_rank_what_motion_does_not_explain():
    # The score rises with camera speed (0.1 per unit of log motion) in both prompts; on top of that,
    # seed 3 is inconsistent (+0.05) and seed 6 unusually consistent (-0.05), at middling speeds.
    motions = [1.0, 2.0, 4.0, 8.0]
    extra = {3: 0.05, 6: -0.05}
    rows = [_row(pid, seed, 0.1 * math.log(m) + extra.get(seed, 0.0), motion=m)
            for pid, seeds in (("a", (1, 2, 3, 4)), ("b", (5, 6, 7, 8))) for seed, m in zip(seeds, motions)]
    plain = make_pairs(rows, 0, min_gap=0.0, motion_threshold=0.0)
    assert [(p.winner["seed"], p.loser["seed"]) for p in plain.pairs] == [(1, 4), (5, 8)]  # slowest beats fastest
    adjusted = make_pairs(rows, 0, min_gap=0.0, motion_threshold=0.0, adjust_for=("motion",))
    pairs = {p.prompt_id: (p.winner["seed"], p.loser["seed"]) for p in adjusted.pairs}
    assert pairs["a"][1] == 3 and pairs["b"][0] == 6  # the inconsistent one loses, the consistent one wins
    assert adjusted.summary()["adjusted_for"]["motion"] == pytest.approx(0.1, abs=0.02)
    # pairs keep their raw scores; a covariate that cannot be logged drops its candidate
    assert all(p.winner["score"] == next(r["score"] for r in rows if r["seed"] == p.winner["seed"])
               for p in adjusted.pairs)
    zero = make_pairs([*rows, _row("a", 9, 0.0, motion=0.0)], 0, min_gap=0.0, motion_threshold=0.0,
                      adjust_for=("motion",))
    assert zero.dropped_candidates["covariate_not_positive"] == 1


def test_winner_threshold_drops_a_prompt_whose_best_is_not_below_it():
    # As the official code: winner_score >= threshold -> no pair, checked before the gap.
    rows = [_row("a", 1, 0.80), _row("a", 2, 0.95),  # best exactly at the threshold: dropped
            _row("b", 3, 0.79), _row("b", 4, 0.95),  # best below it: kept
            _row("c", 5, 0.85), _row("c", 6, 0.86)]  # both too bad and too close: counted as the threshold
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, winner_threshold=0.8)
    assert [p.prompt_id for p in report.pairs] == ["b"]
    assert report.summary()["prompts_dropped"] == {"winner_not_below_threshold": 2}
    assert len(make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001).pairs) == 2  # no threshold: a and b


def test_winner_threshold_stops_further_pairs_and_reads_the_raw_score():
    rows = [_row("a", 1, 0.1), _row("a", 2, 0.85), _row("a", 3, 0.9), _row("a", 4, 1.5)]
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001, pairs_per_prompt=2, winner_threshold=0.8)
    assert [(p.winner["seed"], p.loser["seed"]) for p in report.pairs] == [(1, 4)]  # 0.85 cannot win
    # Ranked by a covariate-adjusted score, the threshold applies to the winner's raw score: prompt a's
    # winner (seed 1, the slow one) is adjusted to 0.59 but scored 0.85.
    rows = [_row("a", 1, 0.85, motion=0.1), _row("a", 2, 0.82, motion=1.0), _row("a", 3, 1.3, motion=1.0),
            _row("b", 4, 0.2, motion=1.0), _row("b", 5, 0.9, motion=0.1), _row("b", 6, 0.95, motion=0.1)]
    unchecked = make_pairs(rows, 0, min_gap=0.0, motion_threshold=0.001, adjust_for=("motion",))
    assert {p.prompt_id: p.winner["seed"] for p in unchecked.pairs} == {"a": 1, "b": 4}
    assert unchecked.pairs[0].winner["pairing_score"] < 0.8
    report = make_pairs(rows, 0, min_gap=0.0, motion_threshold=0.001, adjust_for=("motion",), winner_threshold=0.8)
    assert [p.prompt_id for p in report.pairs] == ["b"]
    assert report.dropped_prompts == {"winner_not_below_threshold": 1}


def test_the_pairs_stage_applies_pairing_winner_threshold_and_reports_its_drops(tmp_path):
    # Before any pair is encoded: a round whose every prompt fails the threshold stops with the count
    # by reason that metrics.json would hold (its prompts_dropped).
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.errors import InputError
    from pipelines.config import load_config
    from pipelines.rounds import _pairs_stage
    from pipelines.run_layout import CANDIDATE_META_COLUMNS, RoundPaths, storage_spec
    from pipelines.storage import RunStore

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml",
                      [f"output_uri={tmp_path}", "pairing.winner_threshold=0.5"])
    store, paths = RunStore(storage_spec(cfg), cfg.run_name), RoundPaths(0)
    rows = [{**{k: 0.5 for k in CANDIDATE_META_COLUMNS}, **_row(p, s, score), "round": 0, "video_uri": "",
             "scorer": f"{cfg.scoring.scorer}:{cfg.scoring.backend}", cfg.scoring.scorer: score}
            for p, s, score in (("a", 1, 0.6), ("a", 2, 0.9), ("b", 3, 0.5), ("b", 4, 0.8))]
    Path(store.path(paths.candidates)).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), store.path(f"{paths.candidates}/part-0.parquet"))
    store.write_json(paths.marker("candidates"), {"files": [{"path": f"{paths.candidates}/part-0.parquet"}]})
    with pytest.raises(InputError, match=r"no preference pairs \(prompts dropped: \{'winner_not_below_threshold': 2\}"):
        _pairs_stage(cfg, store, [], paths)


def test_every_candidate_is_paired_or_has_a_reason():
    rows = [_row("a", 1, 0.10), _row("a", 2, 0.30), _row("a", 3, 0.50), _row("a", 4, 0.2, motion=0.0),
            _row("b", 5, 0.30), _row("b", 6, 0.31), _row("c", 7, math.nan), _row("c", 8, 0.4)]
    report = make_pairs(rows, 0, min_gap=0.05, motion_threshold=0.001)
    assert [(p.winner["seed"], p.loser["seed"]) for p in report.pairs] == [(1, 3)]
    assert report.pairs[0].reason == "pair 1: lowest vs highest score of 3 candidates; gap 0.4 ≥ min_gap 0.05"
    why = {u["seed"]: u["reason"] for u in report.unpaired}
    assert why == {2: "neither_best_nor_worst", 4: "static", 5: "gap_below_min_gap", 6: "gap_below_min_gap",
                   7: "non_finite_score", 8: "fewer_than_two_moving_candidates"}
    # A second pair per prompt that cannot be made leaves its candidates with the reason.
    more = make_pairs(rows[:3], 0, min_gap=0.05, motion_threshold=0.001, pairs_per_prompt=2)
    assert len(more.pairs) == 1 and more.unpaired == [{"prompt_id": "a", "seed": 2, "reason": "neither_best_nor_worst"}]
