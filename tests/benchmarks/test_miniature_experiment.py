"""benchmarks/miniature (VideoGPA in miniature, issue 6) runs end to end in its --smoke mode:
its last line is the JSON figures, the CIs are ordered, and the HTML report embeds the videos."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_paired_bootstrap_ci_is_paired_and_seeded():
    from benchmarks.miniature import paired_ci

    base = [{"prompt_id": "p", "seed": s, "3dcs": 1.0 + s} for s in range(6)]
    aligned = [{"prompt_id": "p", "seed": s, "3dcs": 0.9 + s + 0.01 * (s % 2)} for s in reversed(range(6))]
    aligned.append({"prompt_id": "q", "seed": 0, "3dcs": 5.0})  # no base partner: left out
    ci = paired_ci(base, aligned, "3dcs")
    assert ci["count"] == 6 and ci["mean"] == pytest.approx(-0.095)
    assert ci["ci95"][0] <= ci["mean"] <= ci["ci95"][1] < 0
    assert paired_ci(base, aligned, "3dcs") == ci
    nan = [{**r, "3dcs": float("nan")} for r in base]
    assert paired_ci(nan, aligned, "3dcs")["count"] == 0


def test_delta_at_equal_sharpness_removes_a_gain_that_came_from_blur():
    from benchmarks.miniature import delta_at_equal_sharpness

    base = [{"prompt_id": "p", "seed": s, "3dcs": 1.0, "sharpness": 1.0} for s in range(40)]
    blur = [0.7 + 0.3 * (s % 5) / 4 for s in range(40)]  # aligned sharpness ratios 0.7 ... 1.0
    # pure blur: every sample's gain is 0.5 x its sharpness loss -> nothing left at equal sharpness
    blurred = [{"prompt_id": "p", "seed": s, "3dcs": 1.0 + 0.5 * (blur[s] - 1), "sharpness": blur[s]}
               for s in range(40)]
    only_blur = delta_at_equal_sharpness(base, blurred, "3dcs")
    assert only_blur["count"] == 40 and only_blur["mean"] == pytest.approx(0.0, abs=1e-9)
    assert only_blur["ci95"][0] <= 0.0 <= only_blur["ci95"][1] + 1e-9
    # a real gain of -0.1 on top of the blur is what remains
    real = [{**r, "3dcs": r["3dcs"] - 0.1 + 0.01 * (r["seed"] % 3 - 1)} for r in blurred]
    kept = delta_at_equal_sharpness(base, real, "3dcs")
    assert kept["mean"] == pytest.approx(-0.1, abs=0.01) and kept["ci95"][1] < 0
    assert delta_at_equal_sharpness(base, real, "3dcs") == kept  # seeded


def test_success_needs_both_cis_below_zero_moving_pixels_and_no_blur():
    from benchmarks.miniature import judge

    good = {"3dcs_delta_ci95": [-0.2, -0.1], "epipolar_delta_ci95": [-0.3, -0.01], "3dcs_pairs": 48,
            "epipolar_pairs": 48, "motion_ratio": 0.9, "frame_change_ratio": 0.95, "sharpness_ratio": 0.92}
    assert judge(dict(good))["success"] is True
    for change in ({"epipolar_delta_ci95": [-0.3, 0.01]}, {"3dcs_delta_ci95": [None, None]}, {"motion_ratio": 0.7},
                   {"frame_change_ratio": 0.5}, {"frame_change_ratio": None}, {"epipolar_pairs": 6},
                   {"sharpness_ratio": 0.6}, {"sharpness_ratio": None}):
        assert judge({**good, **change})["success"] is False, change
    # a frozen video: the CIs alone would pass (success_ci_only), the pixel-motion guard does not
    frozen = judge({**good, "frame_change_ratio": 0.1})
    assert frozen["success_ci_only"] is True and frozen["success"] is False


def test_headline_is_the_online_loop_then_offline():
    from benchmarks import miniature

    arms = {name: {"arm": name} for name in ("sft", "offline", "online", "epipolar")}
    assert miniature.headline_arm(arms)["arm"] == "online"
    assert miniature.headline_arm({k: v for k, v in arms.items() if k != "online"})["arm"] == "offline"
    assert miniature.headline_arm({"sft": arms["sft"]})["arm"] == "sft"


def test_committed_models_are_the_defaults(tmp_path, monkeypatch):
    # The full experiment finds its base model and both GFMs among the committed ones, by the cache
    # keys of its current default settings: a settings change without recommitted weights fails here.
    monkeypatch.setenv("VIDEOGPA_MINIATURE_CACHE", str(tmp_path))  # an empty cache
    from benchmarks.miniature import COMMITTED_MODELS, FULL, fetch_gfm
    from benchmarks.miniature_lab.base_model import train_tiny_base_model

    dirs = (str(COMMITTED_MODELS),)
    base = train_tiny_base_model(**FULL["base"], train_if_missing=False, read_only_dirs=dirs)
    assert base is not None and base["cached"] and Path(base["path"]).parent == COMMITTED_MODELS
    assert (Path(base["path"]) / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    for role in ("reward", "eval"):
        gfm = fetch_gfm(train_if_missing=False, read_only_dirs=dirs, **FULL["gfm"], seed=FULL[f"{role}_gfm_seed"])
        assert gfm is not None and Path(gfm["path"]).parent == COMMITTED_MODELS, role
    assert train_tiny_base_model(**FULL["base"], train_if_missing=False) is None  # not without the committed dir
    assert list(tmp_path.iterdir()) == []  # nothing written
    # A user's cache entry under the same key (e.g. retrained on this CPU) does not replace the committed one.
    local = tmp_path / Path(base["path"]).name
    local.mkdir()
    (local / "miniature.json").write_text(json.dumps({"size": 32}))
    assert (Path(train_tiny_base_model(**FULL["base"], train_if_missing=False, read_only_dirs=dirs)["path"])
            == Path(base["path"]))
    assert Path(train_tiny_base_model(**FULL["base"], train_if_missing=False)["path"]) == local


def test_arms_take_round0_stages_from_the_offline_run(tmp_path):
    from benchmarks.miniature import OFFLINE_RUN, reuse_round0

    assert reuse_round0(str(tmp_path), "miniature-sft-winners", ("candidates", "pairs")) is False  # no offline run yet
    src = tmp_path / OFFLINE_RUN / "round-000"
    for sub in ("videos", "candidates", "pairs"):
        (src / sub).mkdir(parents=True)
        (src / sub / f"{sub}.bin").write_text(sub)
    (src / "candidates.done.json").write_text('{"files": []}')
    assert reuse_round0(str(tmp_path), "miniature-sft-winners", ("candidates", "pairs")) is False  # pairs unfinished
    (src / "pairs.done.json").write_text('{"files": [], "pairing": {}}')

    dst = tmp_path / "miniature-sft-winners" / "round-000"
    (dst / "pairs").mkdir(parents=True)
    (dst / "pairs" / "torn.parquet").write_text("left by a copy cut short")  # no marker: copied again
    assert reuse_round0(str(tmp_path), "miniature-sft-winners", ("candidates", "pairs")) is True
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "candidates.done.json", "candidates/candidates.bin", "pairs.done.json", "pairs/pairs.bin", "videos/videos.bin"]
    (dst / "pairs" / "trained-on.txt").write_text("x")  # a finished copy is never redone
    assert reuse_round0(str(tmp_path), "miniature-sft-winners", ("candidates", "pairs")) is True
    assert (dst / "pairs" / "trained-on.txt").is_file()
    assert reuse_round0(str(tmp_path), "miniature-videogpa-x", ()) is False


def test_report_plots_and_links_videos(tmp_path):
    from benchmarks.miniature_lab import report

    row = {"round": 0, "3dcs_base": 0.1, "3dcs_aligned": 0.09, "3dcs_delta": -0.01, "3dcs_delta_ci95": [-0.02, 0.0],
           "epipolar_base": None, "epipolar_aligned": None, "epipolar_delta": None, "epipolar_delta_ci95": [None, None],
           "motion_base": 0.2, "motion_aligned": 0.19, "motion_ratio": 0.95, "success": False,
           "train": {"train": {"loss": 0.69, "reward_accuracy": 0.5}, "scores": {"3dcs": {"mean": 0.1}}},
           "train_history": [{"step": s, "loss": 0.69 - 0.01 * s, "reward_accuracy": s % 2, "reward_margin": 0.0}
                             for s in range(1, 8)]}
    results = {"offline": {"run_name": "r",
                           "rounds": [{**row, "side_by_side": ["evaluation/round-000/side_by_side/a.mp4"]}]}}
    path = report.write_report({"arms": {"offline": {"rounds": [row]}}, "success": False}, results, str(tmp_path))
    text = Path(path).read_text()
    assert text.count("src='data:image/png;base64,") == 6 and "src='r/evaluation/round-000/side_by_side/a.mp4'" in text
    assert "reward accuracy per step" in text and "–" in text  # undefined epipolar shown as a dash
    # the held-out effect is plotted (with its CI bar); an undefined metric gets no plot
    assert "alt='held-out Δ 3DCS" in text and "held-out Δ Epipolar" not in text
    assert "href='r/report.html'" in text  # each arm's own run report (pipelines.report)
    # many side-by-sides: a few, spread over the prompts, are embedded
    many = [f"evaluation/round-000/side_by_side/{p}-s{k}.mp4" for p in ("dolly", "orbit", "pan") for k in range(48)]
    shown = re.findall(r"<video src='([^']+)'", report.videos_html({"a": {"run_name": "r", "rounds": [
        {"round": 0, "side_by_side": many}]}}))
    assert len(shown) == 6 and {s.split("/")[-1].split("-")[0] for s in shown} == {"dolly", "orbit", "pan"}


def test_report_plots_each_candidate_metric_on_its_own_axis():
    from benchmarks.miniature_lab import report

    def arm(reward: float, epipolar: dict | None) -> dict:
        scores = {"score": {"mean": reward}, "3dcs": {"mean": 0.019}, "motion": {"mean": 0.004}, "epipolar": epipolar}
        return {"rounds": [{"round": 0, "train": {"scores": scores}}]}

    series = report._series({"offline": arm(0.019, None), "epipolar": arm(0.37, {"mean": 0.37})})
    assert not any("mean score" in title for title in series)  # 3DCS and Epipolar rewards differ ~20x in scale
    assert series["candidates: mean Epipolar"] == {("epipolar", None): [(0, 0.37)]}
    assert set(series["candidates: mean 3DCS (training reward GFM)"]) == {("offline", None), ("epipolar", None)}


@pytest.mark.runs_ray
@pytest.mark.slow
def test_miniature_smoke_end_to_end(tmp_path):
    # Own process: the experiment starts (and shuts down) its own local Ray runtime.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.miniature", "--smoke",
                           "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=1100, check=False)  # ~5 min alone; twice that on a shared 2-core machine
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for metric in ("3dcs", "epipolar"):
        for key in (f"{metric}_base", f"{metric}_aligned", f"{metric}_delta_ci95"):
            assert key in result, key
        low, high = result[f"{metric}_delta_ci95"]
        if low is not None:  # epipolar can be undefined (too few matches) on every 32 px sample
            assert math.isfinite(low) and math.isfinite(high) and low <= high
    assert result["3dcs_delta_ci95"][0] is not None, "3DCS must be defined for every sample"
    assert result["motion_ratio"] is None or result["motion_ratio"] > 0
    assert result["frame_change_ratio"] > 0 and result["sharpness_ratio"] > 0
    assert isinstance(result["success"], bool) and result["mode"] == "smoke"
    assert set(result["epipolar_delta_at_equal_sharpness"]) == {"mean", "ci95", "count"}
    assert result["seconds"]["total"] > 0 and result["settings"]["config"]["scoring"]["scorer"] == "3dcs"
    assert result["models"]["reward_gfm"]["path"] != result["models"]["eval_gfm"]["path"]
    checks = result["eval_gfm_checks"]
    assert 0.0 <= checks["auroc_mean"] <= 1.0 and -1.0 <= checks["motion_spearman_vs_true_motion"] <= 1.0
    weights = Path(result["models"]["eval_gfm"]["path"])  # the checks are cached beside the weights
    assert json.loads(weights.with_name(weights.stem + ".checks-6scenes.json").read_text()) == checks

    report = Path(result["report"])
    assert report.is_file() and report.parent == Path(result["output"])
    assert (report.parent / "miniature-results.json").is_file()
    html = report.read_text()
    videos = re.findall(r"<video src='([^']+)'", html)
    assert videos, "the report embeds the side-by-side videos"
    assert "Δ Epipolar at equal sharpness" in html
    for rel in videos:
        assert not os.path.isabs(rel) and (report.parent / rel).is_file(), rel
