"""Bad input is refused clearly: one `videogpa: error: ...` line on stderr, a non-zero exit, no
traceback (unless --debug), and what was there before left intact. Everything goes through the
real CLI in a subprocess; commands that need Ray join the test session's local cluster through
RAY_ADDRESS (as a `ray job submit` would) instead of starting one each.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from actors.scoring_config import SCORE_KEYS
from actors.video_io import encode_mp4
from benchmarks.miniature_lab.world import render_clip
from benchmarks.rehearsal.processes import free_port
from pipelines.pairing import make_pairs
from pipelines.run_layout import CANDIDATE_META_COLUMNS
from pipelines.stages import ScoreCandidates
from tests.support.quickstart import QUICKSTART_ARGS

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
SCORING = dict(backend="tiny", scorer="3dcs", num_frames=9, resolution=56, lpips_backbone="random")


def run_cli(*args: str, env: dict | None = None, drop_env: tuple[str, ...] = (), timeout: int = 300):
    full = {k: v for k, v in os.environ.items() if k not in drop_env}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one `videogpa:` line on stderr and it is the last one."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("videogpa:")]
    assert len(ours) == 1 and result.stderr.strip().splitlines()[-1] == ours[0], result.stderr[-3000:]
    line = ours[0]
    assert line.startswith("videogpa: error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


def write_config(path: Path, **changes) -> Path:
    cfg = {**QUICKSTART, **changes}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- the table
# Each bad input goes through the real CLI against (or beside) one good, complete run (the shared
# quickstart run), which must come out byte-identical: a refused command writes nothing into a run
# it was pointed at. The commands run three at a time (most of each is imports and a Ray connection).


@dataclass(frozen=True)
class Bad:
    """One bad input: the command line (``{out}``: the good run's output_uri, ``{tmp}``: this case's
    folder, made by ``setup``), what the one error line must name, and the environment."""

    argv: str
    fragments: tuple[str, ...]
    setup: Callable[[Path, Path], None] | None = None
    env: tuple[tuple[str, str], ...] = ()
    on_ray: bool = True  # join the test session's Ray cluster (False: the CLI starts its own)


GOOD = " ".join(QUICKSTART_ARGS) + " output_uri={out}"
I2V = f"{GOOD} model.family=cogvideox-i2v"


def _write(name: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda tmp, out: (tmp / name).write_bytes(data)


def _jsonl(image: str) -> Callable[[Path, Path], None]:
    def setup(tmp: Path, out: Path) -> None:
        (tmp / "not-an-image.png").write_text("hello")
        (tmp / "frame.png").write_bytes(_png())
        (tmp / "p.jsonl").write_text(json.dumps({"prompt": "a house", "image": image.format(tmp=tmp)}) + "\n")
    return setup


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _broken_lora_copy(tmp: Path, out: Path) -> None:
    """Another run beside the good one whose round-0 LoRA file is not safetensors."""
    shutil.copytree(out / "e2e", out / "broken-lora", ignore=shutil.ignore_patterns("evaluation"))
    (out / "broken-lora" / "round-000" / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"not safetensors")


BAD_INPUTS = {
    # config
    "unknown-key": Bad(f"align {GOOD} pairing.bogus=1", ("pairing.bogus: unknown config key",)),
    "wrong-type": Bad(f"align {GOOD} rounds=many", ("rounds:", "integer", "'many'")),
    "broken-yaml": Bad("align --config {tmp}/bad.yaml", ("is not valid YAML at line 3",),
                       _write("bad.yaml", b"run_name: x\nrounds: [1, 2\n")),
    "credential-key": Bad(f"align {GOOD} storage.secret_access_key=abc-secret", ("credentials are not config keys",)),
    "config-is-a-directory": Bad("align --config configs", ("config file 'configs' is a directory",)),
    "config-missing": Bad("align --config {tmp}/nope.yaml", ("nope.yaml' does not exist",)),
    "override-without-value": Bad(f"align {GOOD} trainer.zero_stage",
                                  ("'trainer.zero_stage': expected key.path=value",)),
    # model
    "unknown-family": Bad(f"align {GOOD} model.family=sora", ("model.family:", "'sora'")),
    "model-dir-missing": Bad(f"align {GOOD} model.pretrained={{tmp}}/no-such-model",
                             ("model.pretrained: directory", "no-such-model' does not exist")),
    "model-dir-not-diffusers": Bad(f"align {GOOD} model.pretrained={{tmp}}", ("model.pretrained:",
                                   "holds no diffusers model (no model_index.json)")),
    "model-id-malformed": Bad(f"align {GOOD} model.pretrained=not--a//model", ("model.pretrained: 'not--a//model'",)),
    "model-id-offline-uncached": Bad(f"align {GOOD} model.pretrained=THUDM/CogVideoX-5b",
                                     ("model.pretrained: 'THUDM/CogVideoX-5b' is not in the Hugging Face cache",
                                      "HF_HUB_OFFLINE"), env=(("HF_HUB_OFFLINE", "1"), ("HF_HOME", "{tmp}/hf"))),
    # sampling
    "frames-not-4k+1": Bad(f"align {GOOD} sampling.num_frames=10",
                           ("sampling.num_frames: cogvideox-t2v needs 4k+1 frames", "got 10")),
    "size-not-a-multiple": Bad(f"align {GOOD} sampling.height=40", ("sampling.height/width", "multiples of 16")),
    # scoring
    "gfm-package-missing": Bad(f"align {GOOD} scoring.backend=vggt", ("GFM backend 'vggt' needs the vggt package",)),
    "gfm-weights-missing": Bad(f"align {GOOD} scoring.weights={{tmp}}/gfm.safetensors",
                               ("scoring.weights:", "gfm.safetensors' does not exist")),
    "gfm-weights-corrupt-in-actor": Bad(f"generate {GOOD} run_name=other scoring.weights={{tmp}}/gfm.safetensors",
                                        ("scoring.weights:", "not tiny-GFM safetensors weights"),
                                        _write("gfm.safetensors", b"\x00" * 64)),
    # prompts
    "prompts-empty": Bad(f"align {GOOD} prompts.path={{tmp}}/empty.txt", ("empty.txt'", "holds no prompts"),
                         _write("empty.txt", b"")),
    "prompts-malformed-jsonl": Bad(f"align {GOOD} prompts.path={{tmp}}/bad.jsonl",
                                   ("bad.jsonl'", "line 2: not valid JSON"),
                                   _write("bad.jsonl", b'{"prompt": "a house"}\n{"prompt": "a car"\n')),
    "prompts-not-utf8": Bad(f"align {GOOD} prompts.path={{tmp}}/latin1.txt", ("latin1.txt'", "is not UTF-8"),
                            _write("latin1.txt", "a caf\u00e9 in Paris\n".encode("latin-1"))),
    "prompts-missing": Bad(f"align {GOOD} prompts.path={{tmp}}/none.txt",
                           ("none.txt' does not exist", "set prompts.path=FILE")),
    "image-missing": Bad(f"align {I2V} prompts.path={{tmp}}/p.jsonl", ("p.jsonl'", "gone.png' does not exist"),
                         _jsonl("{tmp}/gone.png")),
    "image-not-an-image": Bad(f"align {I2V} prompts.path={{tmp}}/p.jsonl",
                              ("not-an-image.png' is not a readable image",),
                              _jsonl("{tmp}/not-an-image.png")),
    "image-for-text-to-video": Bad(f"align {GOOD} prompts.path={{tmp}}/p.jsonl", ("has an image", "is text-to-video"),
                                   _jsonl("{tmp}/frame.png")),
    "image-to-video-without-image": Bad(f"align {I2V}", ("the built-in prompts", "has no \"image\"",
                                                         "cogvideox-i2v (image-to-video) needs")),
    # storage
    "endpoint-malformed": Bad(f"align {GOOD} output_uri=s3://bucket/runs storage.endpoint_url=http//127.0.0.1:9",
                              ("storage.endpoint_url:", "expected http(s)://host[:port]", "'http//127.0.0.1:9'")),
    "output-uri-scheme": Bad(f"align {GOOD} output_uri=gs://bucket/runs", ("output_uri 'gs://bucket/runs'",
                                                                            "only local paths and s3://")),
    # cluster resources
    "gpu-pool-on-a-cluster-without-gpus": Bad(f"align {GOOD} generation_pool.num_gpus=1",
                                              ("generation_pool.num_gpus:", "0 GPU", "cannot add nodes"), on_ray=False),
    # rounds of the good run
    "train-before-pairs": Bad(f"train {GOOD} --round 1", ("round 1 has no pairs yet", "videogpa pairs --round 1")),
    "round-before-its-previous": Bad(f"generate {GOOD} --round 2", ("round 2 starts from round 1's LoRA",
                                                                     "round 1 is not complete")),
    "evaluate-a-round-without-lora": Bad(f"evaluate {GOOD} --round 4", ("round 4 of run", "has no LoRA at")),
    "rescore-a-complete-round": Bad(f"score {GOOD} --round 0", ("round 0 is complete", "rescoring would rewrite it")),
    "report-of-no-run": Bad(f"report {GOOD} run_name=no-such-run", ("no run at", "no-such-run (it has no config")),
    "align-with-another-recipe": Bad(f"align {GOOD} sampling.num_inference_steps=3",
                                     ("config differs from", "sampling.num_inference_steps", "--allow-config-change")),
    # LoRA found broken inside the evaluation's generation actors
    "evaluate-a-corrupt-lora": Bad(f"evaluate {GOOD} run_name=broken-lora evaluation.prompts.limit=1 "
                                   "evaluation.seeds_per_prompt=1",
                                   ("LoRA ", "broken-lora/round-000/lora: pytorch_lora_weights.safetensors is not a "
                                    "readable safetensors file"), _broken_lora_copy),
    # videos
    "video-one-frame": Bad("score-video {tmp}/one.mp4 --num-frames 9 --lpips-backbone random",
                           ("one.mp4: video: needs at least 2 frames",),
                           lambda tmp, out: (tmp / "one.mp4").write_bytes(
                               encode_mp4(np.zeros((1, 32, 32, 3), np.uint8)))),
    "video-missing": Bad("score-video {tmp}/gone.mp4 --num-frames 9 --lpips-backbone random", ("gone.mp4",)),
}


def _run_case(case: Bad, tmp: Path, out: Path, ray_address: str) -> subprocess.CompletedProcess:
    if case.setup:
        case.setup(tmp, out)
    argv = [part.format(out=out, tmp=tmp) for part in shlex.split(case.argv)]
    env = {key: value.format(tmp=tmp) for key, value in case.env}
    if case.on_ray:
        env["RAY_ADDRESS"] = ray_address
    return run_cli(*argv, env=env, drop_env=() if case.on_ray else ("RAY_ADDRESS",), timeout=600)


@pytest.fixture(scope="module")
def bad_input_results(quickstart_run, ray_address, tmp_path_factory) -> tuple[dict, dict, dict]:
    """Every case's result, and the good run's files before and after all of them."""
    from concurrent.futures import ThreadPoolExecutor

    before = _snapshot(quickstart_run.root)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_case, case, tmp_path_factory.mktemp(name), quickstart_run.output_uri,
                                     ray_address) for name, case in BAD_INPUTS.items()}
        results = {name: future.result() for name, future in futures.items()}
    return results, before, _snapshot(quickstart_run.root)


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(name: str, bad_input_results):
    results, before, after = bad_input_results
    if "vggt" in BAD_INPUTS[name].argv and importlib.util.find_spec("vggt") is not None:
        pytest.skip("vggt is installed here")
    line = assert_one_line_error(results[name], *BAD_INPUTS[name].fragments)
    assert "abc-secret" not in results[name].stderr  # a credential value is never echoed
    assert len(line) < 600, line
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"the good run changed: {changed}"


def test_debug_shows_the_traceback():
    debug = run_cli("--debug", "align", "--config", "configs/quickstart.yaml", "trainer.zero_stage=seven")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InputError" in debug.stderr
    assert "trainer.zero_stage" in debug.stderr


# ----------------------------------------------------------------------------- videos


@pytest.fixture(scope="module")
def good_video(tmp_path_factory) -> tuple[Path, bytes]:
    data = encode_mp4(render_clip(3, "orbit", num_frames=9, size=64).frames)
    path = tmp_path_factory.mktemp("videos") / "good.mp4"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("make_bad, good_first", [
    (lambda data: b"", False),
    # scoring the good video first takes ~40 s on a 2-core CPU (GFM at 518 px): slow
    pytest.param(lambda data: data[: len(data) // 2], True, marks=pytest.mark.slow),
    (lambda data: b"\x00\x00\x00\x18ftypisom" + os.urandom(2000), False),
], ids=["empty", "truncated-after-a-good-one", "corrupt"])
def test_score_video_refuses_bad_files(tmp_path, good_video, make_bad, good_first):
    good, data = good_video
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(make_bad(data))
    videos = [str(good), str(bad)] if good_first else [str(bad)]
    result = run_cli("score-video", *videos, "--num-frames", "9", "--lpips-backbone", "random")
    assert_one_line_error(result, str(bad), "not a decodable video")
    # A video before the bad one was scored and printed: earlier output is intact.
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["video"] for r in rows] == videos[:-1]
    assert all(math.isfinite(r["3dcs"]) for r in rows)


# ----------------------------------------------------------------------------- NaN / inf, static


def _batch(videos: np.ndarray, seeds: list[int], prompt_id: str = "a") -> dict[str, np.ndarray]:
    n = len(seeds)
    return {"round": np.zeros(n, dtype=np.int64), "prompt_id": np.asarray([prompt_id] * n),
            "prompt": np.asarray([f"prompt {prompt_id}"] * n), "image": np.asarray([""] * n),
            "seed": np.asarray(seeds), "video_uri": np.asarray([f"v/{prompt_id}-s{s}.mp4" for s in seeds]),
            "frames": videos}


def score_in_actor(ray, scoring: dict, batch: dict) -> dict:
    """The scoring stage's actor class, run in a real Ray actor as the pool runs it."""
    @ray.remote(num_cpus=1)
    class Scorer:
        def __init__(self, scoring):
            self.inner = ScoreCandidates(scoring)

        def score(self, batch):
            return self.inner(batch)

    actor = Scorer.remote(scoring)
    try:
        return ray.get(actor.score.remote(batch))
    finally:
        ray.kill(actor)


def test_nan_and_inf_inputs_become_unscorable_rows_dropped_at_pairing(ray_local):
    """The real scoring actor class with the tiny GFM: a video holding NaN or inf is recorded as
    unscorable (NaN scores) instead of failing the batch, and pairing drops and counts it."""
    clips = [render_clip(s, "orbit", num_frames=9, size=64).frames.astype(np.float32) / 255 for s in (1, 2, 3, 4)]
    clips[1][3, 10, 10, 0] = np.nan
    clips[2][5, 0, 0, 2] = np.inf
    out = score_in_actor(ray_local, SCORING, _batch(np.stack(clips), [11, 12, 13, 14]))
    assert math.isfinite(out["score"][0]) and math.isfinite(out["score"][3])
    assert math.isnan(out["score"][1]) and math.isnan(out["score"][2]) and math.isnan(out["motion"][1])
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in out.items()} for i in range(4)]
    report = make_pairs(rows, 0, min_gap=0.0, motion_threshold=0.0)
    assert report.summary()["candidates_dropped"] == {"non_finite_score": 2}
    assert len(report.pairs) == 1 and {report.pairs[0].winner["seed"], report.pairs[0].loser["seed"]} == {11, 14}


def test_nan_from_the_gfm_becomes_an_unscorable_row(tmp_path, ray_local):
    import torch
    from safetensors.torch import save_file

    from actors.gfm import build_tiny_gfm

    weights = tmp_path / "nan-gfm.safetensors"
    save_file({k: torch.full_like(v, float("nan")) for k, v in build_tiny_gfm().state_dict().items()}, str(weights))
    clip = render_clip(1, "orbit", num_frames=9, size=64).frames
    out = score_in_actor(ray_local, {**SCORING, "weights": str(weights)}, _batch(np.stack([clip, clip]), [1, 2]))
    assert all(not math.isfinite(s) for s in out["score"])


def _prepared_round(tmp_path: Path, candidates: list[dict]) -> tuple[Path, Path]:
    """A run whose candidates stage is done (real mp4 videos, scored rows, marker), as `videogpa
    generate` leaves it; returns (config, round folder)."""
    run = tmp_path / "out" / "prepared"
    rnd = run / "round-000"
    (rnd / "videos").mkdir(parents=True)
    (rnd / "candidates").mkdir()
    rows = []
    for c in candidates:
        uri = f"round-000/videos/{c['prompt_id']}-s{c['seed']}.mp4"
        (run / uri).write_bytes(encode_mp4(render_clip(c["seed"], "orbit", num_frames=9, size=64).frames))
        row = {"round": 0, "prompt": f"prompt {c['prompt_id']}", "image": "", "video_uri": uri, "scorer": "3dcs:tiny",
               **{k: float("nan") for k in SCORE_KEYS}, **c}
        rows.append({k: row[k] for k in CANDIDATE_META_COLUMNS})
    pq.write_table(pa.Table.from_pylist(rows), rnd / "candidates" / "part-0.parquet")
    (rnd / "candidates.done.json").write_text(json.dumps(
        {"files": [{"path": "round-000/candidates/part-0.parquet", "sha256": "-", "rows": len(rows)}],
         "rows": len(rows), "seconds": 0.0}))
    config = write_config(tmp_path / "cfg.yaml", run_name="prepared", output_uri=str(tmp_path / "out"),
                          pairing={"candidates_per_prompt": 3, "min_gap": 0.0, "motion_threshold": 0.001})
    return config, rnd


def test_no_pair_left_is_one_clear_line(tmp_path, ray_address):
    """Every candidate static or unscorable: each prompt is dropped and counted, and with no pair
    left at all the pairs stage stops with one line saying why; the candidates stay as they were."""
    config, rnd = _prepared_round(tmp_path, [
        {"prompt_id": "a", "seed": 1, "score": 0.1, "motion": 0.0},
        {"prompt_id": "a", "seed": 2, "score": 0.3, "motion": 0.0},
        {"prompt_id": "b", "seed": 3, "score": math.nan, "motion": 0.2},
        {"prompt_id": "b", "seed": 4, "score": 0.2, "motion": math.inf},
    ])
    before = _snapshot(rnd)
    result = run_cli("pairs", "--config", str(config), env={"RAY_ADDRESS": ray_address})
    line = assert_one_line_error(result, "round 0: no preference pairs")
    assert "'fewer_than_two_moving_candidates': 2" in line
    assert "'static': 2" in line and "'non_finite_score': 2" in line
    assert _snapshot(rnd) == before and not (rnd / "pairs.done.json").exists()


def test_pairing_under_a_reward_the_candidates_lack_is_one_clear_line(tmp_path, ray_address):
    """Candidates scored by 3DCS without Epipolar scores (rescored from their videos) cannot be paired
    by Epipolar: one line naming the missing reward and the way out; nothing written."""
    config, rnd = _prepared_round(tmp_path, [
        {"prompt_id": "a", "seed": 1, "score": 0.1, "3dcs": 0.1, "motion": 0.2},
        {"prompt_id": "a", "seed": 2, "score": 0.3, "3dcs": 0.3, "motion": 0.2},
    ])
    before = _snapshot(rnd)
    result = run_cli("pairs", "--config", str(config), "scoring.scorer=epipolar", env={"RAY_ADDRESS": ray_address})
    assert_one_line_error(result, "round 0: its candidates have no epipolar scores (scored as 3dcs:tiny)",
                          "scoring.scorer=epipolar")
    assert _snapshot(rnd) == before and not (rnd / "pairs.done.json").exists()


@pytest.mark.slow
def test_unscorable_and_static_candidates_are_dropped_and_counted(tmp_path, ray_address):
    """One prompt keeps a pair although one of its candidates scored NaN; a prompt whose candidates
    are all static is dropped. The counts land in the pairs marker that metrics.json copies."""
    config, rnd = _prepared_round(tmp_path, [
        {"prompt_id": "a", "seed": 1, "score": 0.1, "motion": 0.2},
        {"prompt_id": "a", "seed": 2, "score": math.nan, "motion": 0.2},
        {"prompt_id": "a", "seed": 3, "score": 0.4, "motion": 0.3},
        {"prompt_id": "b", "seed": 4, "score": 0.1, "motion": 0.0},
        {"prompt_id": "b", "seed": 5, "score": 0.5, "motion": 0.0},
    ])
    result = run_cli("pairs", "--config", str(config), "encoding_pool.num_cpus=0.5", env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr[-3000:]
    marker = json.loads((rnd / "pairs.done.json").read_text())
    assert marker["pairing"] == {"pairs_kept": 1, "candidates_dropped": {"non_finite_score": 1, "static": 2},
                                 "prompts_dropped": {"fewer_than_two_moving_candidates": 1}}
    shard = pq.read_table(rnd.parent / marker["files"][0]["path"])
    assert shard.num_rows == 1 and shard["winner_seed"][0].as_py() == 1 and shard["loser_seed"][0].as_py() == 3


# ----------------------------------------------------------------------------- shards


def test_train_refuses_a_shard_of_another_schema_version(tmp_path, ray_address):
    from tests.support.pairs import synthetic_pairs
    from trainers.schema import PAIR_SCHEMA

    run = tmp_path / "out" / "old"
    (run / "round-000" / "pairs").mkdir(parents=True)
    shard = run / "round-000" / "pairs" / "part-0.parquet"
    rows = [{**r, "schema_version": 2} for r in synthetic_pairs(4)]
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA.with_metadata({b"videogpa.schema_version": b"2"})),
                   shard)
    (run / "round-000" / "pairs.done.json").write_text(json.dumps(
        {"files": [{"path": "round-000/pairs/part-0.parquet", "sha256": "-", "rows": 4}], "rows": 4, "seconds": 0.0,
         "pairing": {"pairs_kept": 4, "candidates_dropped": {}, "prompts_dropped": {}}}))
    before = _snapshot(run / "round-000")
    result = run_cli("train", "--config", "configs/quickstart.yaml", "run_name=old", f"output_uri={tmp_path / 'out'}",
                     env={"RAY_ADDRESS": ray_address})
    assert_one_line_error(result, "part-0.parquet", "schema_version 2 found, expected 1")
    assert _snapshot(run / "round-000") == before and not (run / "round-000" / "checkpoints").exists()


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_with_auth():
    """A separate S3 API server (its own process) that checks credentials on every request."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


NO_AWS_FILES = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.mark.parametrize("creds, fragment", [
    ({"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"},
     "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ({}, "no AWS credentials in the environment (AWS_ACCESS_KEY_ID is not set)"),
], ids=["wrong-credentials", "missing-credentials"])
def test_s3_credentials_refused_clearly(tmp_path, ray_address, s3_with_auth, creds, fragment):
    result = run_cli("align", "--config", "configs/quickstart.yaml", "output_uri=s3://videogpa-auth/runs",
                     f"storage.endpoint_url={s3_with_auth}", "storage.region=us-east-1", "storage.max_attempts=2",
                     env={**NO_AWS_FILES, **creds, "RAY_ADDRESS": ray_address}, drop_env=AWS_VARS)
    line = assert_one_line_error(result, "storage error at s3://videogpa-auth/runs/quickstart", fragment)
    assert "wrong-secret-value" not in result.stderr + result.stdout and "wrong-secret-value" not in line


def test_unreachable_s3_endpoint(tmp_path, ray_address):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    result = run_cli("align", "--config", "configs/quickstart.yaml", "output_uri=s3://bucket/runs",
                     f"storage.endpoint_url=http://127.0.0.1:{port}", "storage.max_attempts=2",
                     "storage.connect_timeout_s=1", "storage.request_timeout_s=2", env={"RAY_ADDRESS": ray_address})
    assert_one_line_error(result, "S3 endpoint unreachable: check storage.endpoint_url")
    assert time.monotonic() - start < 120


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, ray_address, s3_server):
    """`align --dry-run` runs every check (here: prompts in the paper's caption format, storage found
    through AWS_ENDPOINT_URL alone) and exits 0 without starting a pool or writing anything; a check
    that fails it is the one line the real run would print."""
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "captions_1K.json").write_text(json.dumps({"1K/a/images_8": " A hall.\n", "1K/b/images_8": "A yard."}))
    common = ("align", "--config", "configs/quickstart.yaml", "--dry-run", f"prompts.path={tmp_path}/captions_1K.json")
    env = {"RAY_ADDRESS": ray_address, "AWS_ENDPOINT_URL": s3_server}
    with ThreadPoolExecutor(max_workers=2) as pool:
        good = pool.submit(run_cli, *common, f"output_uri={tmp_path}/out", env=env)
        bad = pool.submit(run_cli, *common, "output_uri=s3://no-such-bucket-dry/runs", env=env)
        good, bad = good.result(), bad.result()
    assert good.returncode == 0, good.stderr[-3000:]
    assert json.loads(good.stdout.strip().splitlines()[-1])["prompts"] == 2
    assert not (tmp_path / "out").exists() and "MapBatches" not in good.stderr
    assert_one_line_error(bad, "bucket 'no-such-bucket-dry' does not exist")


# ----------------------------------------------------------------------------- security


def _code_only(source: str) -> str:
    """The source without comments and string literals (docstrings may name what the code avoids)."""
    import io
    import tokenize

    kept = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type not in (tokenize.COMMENT, tokenize.STRING)]
    return " ".join(kept).replace(" ( ", "(").replace(" (", "(").replace("( ", "(").replace(" )", ")").replace(
        " . ", ".").replace(" = ", "=")


def test_no_pickle_on_any_data_path():
    """No module deserialises pickles: no pickle/dill/joblib loads, torch.load only with
    weights_only=True, numpy loads without allow_pickle."""
    bad = []
    patterns = [r"\bimport (c?pickle|dill|joblib)\b", r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True",
                r"\bpd\.read_pickle\(", r"\bcloudpickle\.loads?\("]
    for folder in ("actors", "pipelines", "trainers", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = _code_only(path.read_text())
            for pattern in patterns:
                bad += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
            for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in m.group(0):
                    bad.append(f"{path.relative_to(ROOT)}: {m.group(0)[:80]}")
    assert bad == []


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture()
def small_disk(tmp_path):
    """A real size-limited filesystem (a 2 MiB tmpfs) as output_uri; mounting one needs root."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; the file to delete to free them again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_disk_full_mid_candidates_is_one_line_then_resumes(small_disk, ray_address, tmp_path):
    """The disk fills up once the first video is written: one line naming the cause and the disk (the
    run's logs/ cannot take the log, so the line names its local copy); with space freed the same
    command resumes, drivers racing it are refused or fence it off, and every candidate and pair is
    there exactly once."""
    args = ("--config", "configs/quickstart.yaml", "run_name=full", "prompts.limit=2",
            "pairing.candidates_per_prompt=2", "generation_pool.batch_size=1", f"output_uri={small_disk}")
    videos = small_disk / "full" / "round-000" / "videos"
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "generate", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while not (videos.exists() and any(p.suffix == ".mp4" for p in videos.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    filler, filled_at = _fill(small_disk), time.monotonic()
    _, stderr = proc.communicate(timeout=300)
    seconds = {"disk_full_to_exit": time.monotonic() - filled_at}  # the README's figures (printed below)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("videogpa:")]
    assert len(ours) == 1 and stderr.strip().splitlines()[-1] == ours[0], stderr[-3000:]
    line = ours[0]
    assert line.startswith(f"videogpa: failed: storage error at {small_disk}/full"), line
    assert "no space left on device" in line and "run the same command again" in line, line
    local_log = Path(line.rsplit("(full log: ", 1)[1].rstrip(")"))
    kept = local_log.read_text()
    assert line.split(" (full log: ")[0] in kept and "not saved into the run" in kept, kept[-3000:]
    local_log.unlink()

    filler.unlink()
    # The same command resumes. Paused as soon as it holds the run, a second driver is refused
    # before it writes anything, naming it; a third, for which the pause outlasts its
    # storage.lease_timeout_s, takes the run over and completes it; the first, resumed, is fenced
    # off in one line and leaves the third's files as they were, byte for byte.
    output = tmp_path / "resumed.log"
    with open(output, "w") as out:
        resumed = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "generate", *args], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    while not list((small_disk / "full" / "lease").glob("*.json")):
        assert resumed.poll() is None and time.monotonic() < deadline + 300, output.read_text()[-3000:]
        time.sleep(0.05)
    resumed.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        rival = run_cli("generate", *args, env={"RAY_ADDRESS": ray_address})
        seconds["refused_command"] = time.monotonic() - start
        assert_one_line_error(rival, f"run {small_disk}/full is being written by `videogpa generate` "
                                     f"(pid {resumed.pid} on ")
        start = time.monotonic()
        taker = run_cli("generate", *args, "storage.lease_timeout_s=1", env={"RAY_ADDRESS": ray_address})
        seconds["takeover_command"] = time.monotonic() - start
        assert taker.returncode == 0, taker.stderr[-3000:]
        assert f"took over the lease of run {small_disk}/full from `videogpa generate` (pid {resumed.pid} on " \
               in taker.stderr and "(storage.lease_timeout_s=1)" in taker.stderr
        theirs = _snapshot(small_disk / "full")
    finally:
        resumed.send_signal(signal.SIGCONT)
        start = time.monotonic()
    assert resumed.wait(timeout=300) == 2, output.read_text()[-3000:]
    seconds["fenced_after_resume"] = time.monotonic() - start
    last = output.read_text().strip().splitlines()[-1]
    # The third has ended and released the run: who took it is no longer there to name.
    assert last.startswith(f"videogpa: error: run {small_disk}/full: this command's lease (generation 1) was "
                           "released or taken over by another command; it stops without writing more"), last
    assert _snapshot(small_disk / "full") == theirs
    result = run_cli("pairs", *args, env={"RAY_ADDRESS": ray_address})
    assert result.returncode == 0, result.stderr[-3000:]
    root = small_disk / "full" / "round-000"
    candidates = pq.read_table(root / "candidates").to_pylist()
    assert sorted((c["prompt_id"], c["seed"]) for c in candidates) == sorted(
        {(c["prompt_id"], c["seed"]) for c in candidates}) and len(candidates) == 4
    assert sorted(p.name for p in videos.iterdir()) == sorted(Path(c["video_uri"]).name for c in candidates)
    marker = json.loads((root / "pairs.done.json").read_text())
    pair_ids = pq.read_table(root / "pairs", columns=["pair_id"]).column("pair_id").to_pylist()
    assert len(pair_ids) == len(set(pair_ids)) == marker["rows"] > 0
    assert not (small_disk / "full" / "lease").exists()  # released after the failure and after each command
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in seconds.items()}, "disk_full": line,
                      "refused": rival.stderr.strip().splitlines()[-1], "fenced": last}))
