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
