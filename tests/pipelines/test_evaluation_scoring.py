"""`videogpa evaluate`'s scorer (evaluation.scoring) and table (pure functions, no Ray)."""

from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.evaluate import base_samples_key, evaluation_scoring
from pipelines.evaluation_table import METRICS, format_table, summary

ROOT = Path(__file__).resolve().parents[2]
ROWS = [{"prompt_id": "p", "prompt": "a house", "image": "", "seed": 1}]


def test_evaluation_gfm_falls_back_to_the_scoring_section_and_keys_the_base_samples():
    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    assert evaluation_scoring(quick) is quick.scoring
    own = load_config(ROOT / "configs" / "quickstart.yaml", ["evaluation.scoring.backend=tiny",
                                                            "evaluation.scoring.resolution=112"])
    assert evaluation_scoring(own).resolution == 112 and own.scoring.resolution == 56
    assert base_samples_key(own, ROWS) != base_samples_key(quick, ROWS)  # other scorer: other base samples
    # the training reward does not change the base samples; the evaluation GFM does
    assert base_samples_key(load_config(ROOT / "configs" / "quickstart.yaml", ["scoring.scorer=epipolar"]), ROWS) \
        == base_samples_key(quick, ROWS)
    real = load_config(ROOT / "configs" / "cogvideox-5b.yaml")
    ev = evaluation_scoring(real)
    assert (real.scoring.backend, ev.backend, ev.weights, ev.resolution) == ("vggt", "da3", "depth-anything/DA3-Large",
                                                                             504)


def test_table_says_which_metrics_are_official():
    stats = {key: {"mean": 0.5, "sem": 0.01, "count": 2} for key, _ in METRICS}
    lines = format_table(stats, stats, 0).splitlines()
    assert [line.split()[0] for line in lines[1:-2]] == [key for key, _ in METRICS]
    assert "mvcs_si" in dict(METRICS) and "official" in lines[-1] and "mvcs_si" in lines[-1]


def test_table_names_the_epipolar_matcher_and_counts_unscorable_videos():
    """Unscorable (NaN) Epipolar: left out and counted, or averaged in as -1 as the official benchmark."""
    rows = [{key: 1.0 for key, _ in METRICS} for _ in range(3)]
    rows[0]["epipolar"] = float("nan")
    dropped, official = summary(rows), summary(rows, "minus_one")
    assert (dropped["epipolar"]["mean"], dropped["epipolar"]["count"], dropped["epipolar"]["unscorable"]) == (1.0, 2, 1)
    assert (official["epipolar"]["mean"], official["epipolar"]["count"]) == (pytest.approx(1 / 3), 3)
    assert official["3dcs"] == dropped["3dcs"]  # only Epipolar's unscorable videos are averaged in
    line = format_table(official, dropped, "LoRA", "superpoint-lightglue", "minus_one").splitlines()[-2]
    assert line == ("(epipolar: superpoint-lightglue matches; unscorable videos (no frame pair matched): base 1, "
                    "LoRA 1, averaged in as -1 (official))")
