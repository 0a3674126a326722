from pathlib import Path

import pytest
import yaml

from actors.errors import InputError
from pipelines.config import dump_config, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_every_shipped_config_validates():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_overrides_are_typed_and_nested():
    cfg = load_config(QUICKSTART, ["rounds=2", "trainer.zero_stage=3", "storage.endpoint_url=http://x:9000",
                                   "output_uri=s3://bucket/prefix"])
    assert (cfg.rounds, cfg.trainer.zero_stage, cfg.storage.endpoint_url) == (2, 3, "http://x:9000")
    assert cfg.output_uri == "s3://bucket/prefix"


@pytest.mark.parametrize(
    "override,message",
    [
        ("trainer.zero_stag=3", "trainer.zero_stag: unknown config key"),
        ("rounds=two", "rounds:"),
        ("trainer.zero_stage=5", "trainer.zero_stage:"),
        ("storage.aws_secret_access_key=abc", "credentials are not config keys"),
        ("generation_pool.max_size=0", "generation_pool.max_size"),
        ("run_name=../evil", "run_name"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(InputError, match=message) as info:
        load_config(QUICKSTART, [override])
    assert "\n" not in str(info.value)


def test_malformed_override():
    with pytest.raises(InputError, match="expected key.path=value"):
        parse_override("rounds")


@pytest.mark.parametrize(
    "content,message",
    [
        ("run_name: [unclosed\n", "is not valid YAML at line"),
        ("- a list\n", "must hold a mapping"),
        ("run_name: x\n", "model: required config key is missing"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips_and_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    cfg = load_config(QUICKSTART)
    text = dump_config(cfg)
    assert "super-secret-value" not in text
    again = load_config(QUICKSTART)
    assert yaml.safe_load(text) == again.model_dump(mode="json")


def test_every_family_has_a_real_recipe_naming_one_of_its_checkpoints():
    from actors.families import FAMILIES, get_family

    recipes = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        if cfg.model.pretrained != "tiny":
            recipes.setdefault(cfg.model.family, []).append(cfg.model.pretrained)
    assert set(recipes) == set(FAMILIES)
    for family, ids in recipes.items():
        assert set(ids) <= set(get_family(family).real_model_ids), (family, ids)


# Wan's own default negative prompt (Wan2.1/2.2 wan/configs/shared_config.py, sample_neg_prompt).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


def test_real_recipes_sample_and_train_as_the_official_code():
    recipes = {path.name: load_config(path) for path in sorted((ROOT / "configs").glob("*.yaml"))}
    real = {name: cfg for name, cfg in recipes.items() if cfg.model.pretrained != "tiny"}
    for name, cfg in real.items():
        s, t = cfg.sampling, cfg.trainer
        wan = cfg.model.family.startswith("wan")
        if wan:
            assert s.num_frames == 81, name
        assert s.negative_prompt == (WAN_NEGATIVE_PROMPT if wan else ""), name
        assert s.use_dynamic_cfg == (cfg.model.family == "cogvideox1.5-t2v"), name
        # AdamW weight decay: torch's default 0.01 (official CogVideoX/Wan training), 1e-3 for CogVideoX1.5.
        assert t.weight_decay == (1e-3 if cfg.model.family == "cogvideox1.5-t2v" else 0.01), name
        assert cfg.pairing.winner_threshold == 0.8 and cfg.scoring.scorer == "3dcs", name
        # The evaluation's Epipolar is the benchmark's (SuperPoint + LightGlue); training's reward stays 3DCS.
        assert cfg.evaluation.scoring.epipolar_matcher == "superpoint-lightglue", name
        assert (t.validation_fraction, t.loss) == (0.02, "sigmoid"), name  # the official 98/2 split, DPO loss
        if cfg.rounds == 1:  # online.yaml: 1,000 steps a round
            assert t.max_steps == (1500 if cfg.model.family == "cogvideox1.5-t2v" else 10_000), name
    # The LoRA strength at sampling, as the PEFT scaling (set_adapters weight × alpha / r) the official scripts use.
    effective = {name: cfg.sampling.lora_scale * cfg.trainer.lora_alpha / cfg.trainer.lora_rank
                 for name, cfg in real.items()}
    assert effective["cogvideox1.5-5b.yaml"] == pytest.approx(0.2)  # scaling set to 0.2
    assert effective["wan2.2-ti2v-5b.yaml"] == pytest.approx(0.2 * 2)  # 0.2 × the trained alpha / r
    assert effective["cogvideox-5b.yaml"] == effective["cogvideox-5b-i2v.yaml"] == 2  # merged at full strength
    assert (real["cogvideox1.5-5b.yaml"].sampling.fps, real["wan2.2-ti2v-5b.yaml"].sampling.fps) == (16, 24)
    # The paper's own choices where the official code sets them: Wan TI2V's size for a 16:9 image (Wan's
    # best_output_size over 704 x 1280 in steps of 32), the A14B's per-expert guidance and 16 fps.
    ti2v, a14b = real["wan2.2-ti2v-5b.yaml"].sampling, real["wan2.2-t2v-a14b.yaml"].sampling
    assert (ti2v.width, ti2v.height) == wan_best_output_size(16, 9, 32, 32, 704 * 1280) == (1248, 704)
    assert (a14b.guidance_scale, a14b.guidance_scale_2, a14b.fps) == (4.0, 3.0, 16)
    assert all(cfg.sampling.guidance_scale_2 is None for n, cfg in real.items() if n != "wan2.2-t2v-a14b.yaml")


def wan_best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """The (width, height) Wan's ``wan/utils/utils.py: best_output_size`` picks for a w:h image (re-derived here
    so the recipe's size is checked against the rule, not against itself)."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh1 = int(expected_area / ow1 // dh * dh)
    oh2 = int(oh // dh * dh)
    ow2 = int(expected_area / oh2 // dw * dw)
    r1, r2 = ow1 / oh1, ow2 / oh2
    return (ow1, oh1) if max(ratio / r1, r1 / ratio) < max(ratio / r2, r2 / ratio) else (ow2, oh2)


def test_a_recipe_states_only_what_differs_from_its_base(tmp_path):
    (tmp_path / "shared.yaml").write_text("run_name: a\nmodel: {family: cogvideox-t2v}\nsampling: {num_frames: 9, "
                                          "height: 32}\ntrainer: {max_steps: 7, lora_rank: 4}\n")
    (tmp_path / "mid.yaml").write_text("base: shared.yaml\nsampling: {height: 64}\n")
    (tmp_path / "top.yaml").write_text("base: mid.yaml\nrun_name: b\ntrainer: {max_steps: 9}\n")
    cfg = load_config(tmp_path / "top.yaml", ["sampling.width=48"])
    assert (cfg.run_name, cfg.model.family) == ("b", "cogvideox-t2v")
    assert (cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width) == (9, 64, 48)
    assert (cfg.trainer.max_steps, cfg.trainer.lora_rank) == (9, 4)  # sections merge key by key
    assert "base" not in yaml.safe_load(dump_config(cfg))  # the run records the resolved config


@pytest.mark.parametrize("files,message", [
    ({"top.yaml": "base: missing.yaml\n"}, "missing.yaml' does not exist"),
    ({"top.yaml": "base: top.yaml\n"}, "builds on itself"),
    ({"top.yaml": "base: b.yaml\n", "b.yaml": "base: top.yaml\n"}, "builds on itself"),
    ({"top.yaml": "base: [a]\n"}, "base must name a recipe file"),
])
def test_a_bad_base_is_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_config(tmp_path / "top.yaml")
    assert "\n" not in str(info.value)
