"""Official-format LoRAs (PEFT ``save_pretrained``, Wan LoRAs in the original Wan module names) load into
the family pipelines and compute what PEFT's own adapter computes, at the recipes' official strengths;
the convert command writes a directory plain diffusers loads; bad directories are one line naming them."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from actors.errors import InputError
from actors.families import get_family
from actors.families.base import LORA_WEIGHT_NAME
from actors.lora_formats import check_lora, lora_format
from actors.model_config import ModelConfig
from actors.models import build_pipeline, load_lora
from pipelines.cli import build_parser
from pipelines.config import load_config
from tests.support.lora import ALPHA, RANK, DenoiserProbe, peft_lora, set_peft_scaling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _diffusers_equivalent(adapter, family: str, out: Path) -> Path:
    """The same LoRA as a diffusers user exports it: ``save_lora_weights`` with the adapter's config as metadata."""
    state = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(adapter).items()}
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in adapter.peft_config["default"].to_dict().items()}
    get_family(family).pipeline_class.save_lora_weights(str(out), transformer_lora_layers=state,
                                                        transformer_lora_adapter_metadata=meta)
    return out


@pytest.mark.parametrize(("family", "wan_original", "with_config"), [
    ("cogvideox-t2v", False, True),
    ("wan2.2-ti2v", True, True),
    # The releases without adapter_config.json: VideoGPA-I2V-1K-lora, VideoGPA-Wan2.2TI2V-lora.
    ("cogvideox-i2v", False, False),
    ("wan2.2-ti2v", True, False),
])
def test_official_format_lora_computes_what_peft_computes(family, wan_original, with_config, tmp_path, caplog):
    adapter = peft_lora(family, tmp_path / "peft", wan_original=wan_original, with_config=with_config)
    assert lora_format(str(tmp_path / "peft")) == ("peft-wan" if wan_original else "peft")
    model = ModelConfig(family=family)
    pipe = build_pipeline(model)
    probe = DenoiserProbe(pipe, family)
    base, official = probe(pipe.transformer), probe(adapter.base_model.model)
    assert (official - base).abs().max() > 1e-3, "the test LoRA must change the output"

    with caplog.at_level(logging.WARNING, logger="actors.lora_formats"):
        load_lora(pipe, model, str(tmp_path / "peft"), scale=1.0)
    assumed = [r.getMessage() for r in caplog.records if "assuming the official training's config" in r.getMessage()]
    if with_config:
        assert not assumed
    else:  # one line saying what was assumed: r from the shapes, alpha 2 r, the attention projections
        n = len([m for m in adapter.modules() if hasattr(m, "lora_A") and "default" in m.lora_A])
        assert len(assumed) == 1 and f"r {RANK} " in assumed[0] and f"lora_alpha {ALPHA} " in assumed[0]
        assert f"the {n} modules it holds" in assumed[0]
    from_peft = probe(pipe.transformer)
    _close(from_peft, official)
    # The diffusers-format equivalent gives the same outputs (loaded again under the same adapter name).
    load_lora(pipe, model, str(_diffusers_equivalent(adapter, family, tmp_path / "diffusers")), scale=1.0)
    _close(probe(pipe.transformer), from_peft)


@pytest.mark.parametrize(("family", "recipe", "official_scaling", "wan_original"), [
    # generate/CogVideoX1.5-5B.py: every PEFT scaling set to 0.2, absolute
    ("cogvideox1.5-t2v", "cogvideox1.5-5b.yaml", lambda trained: 0.2, False),
    # generate/Wan2.2-TI2V-5B.py: every PEFT scaling multiplied by 0.2
    ("wan2.2-ti2v", "wan2.2-ti2v-5b.yaml", lambda trained: trained * 0.2, True),
])
def test_recipe_lora_scale_is_the_official_strength(family, recipe, official_scaling, wan_original, tmp_path):
    cfg = load_config(ROOT / "configs" / recipe)
    assert cfg.model.family == family
    # The test LoRA has the official releases' alpha / r (128 / 64), as the recipe trains.
    assert cfg.trainer.lora_alpha / cfg.trainer.lora_rank == ALPHA / RANK == 2
    adapter = peft_lora(family, tmp_path / "peft", wan_original=wan_original)
    set_peft_scaling(adapter, official_scaling)
    model = ModelConfig(family=family)
    pipe = build_pipeline(model)
    probe = DenoiserProbe(pipe, family)
    official = probe(adapter.base_model.model)
    load_lora(pipe, model, str(tmp_path / "peft"), scale=cfg.sampling.lora_scale)
    _close(probe(pipe.transformer), official)


def test_convert_command_writes_what_plain_diffusers_loads(tmp_path):
    family = "wan2.2-ti2v"
    adapter = peft_lora(family, tmp_path / "peft", wan_original=True, with_config=False)  # as released
    out = tmp_path / "converted"
    args = build_parser().parse_args(["convert-lora", str(tmp_path / "peft"), str(out)])
    assert args.handler(args) == 0
    assert sorted(os.listdir(out)) == ["README.md", LORA_WEIGHT_NAME]  # the source's card (peft writes one)
    pipe = build_pipeline(ModelConfig(family=family))
    probe = DenoiserProbe(pipe, family)
    pipe.load_lora_weights(str(out))  # diffusers alone: no weight_name, no videogpa code
    _close(probe(pipe.transformer), probe(adapter.base_model.model))
    with pytest.raises(InputError, match="already exists"):
        args.handler(args)
    with pytest.raises(InputError, match=f"LoRA {out}: already in diffusers format"):
        args.handler(build_parser().parse_args(["convert-lora", str(out), str(tmp_path / "again")]))


def _bad_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    peft_dir = tmp_path / "peft"
    peft_lora("cogvideox-t2v", peft_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_config = tmp_path / "no-config"  # and ranks that differ: r cannot be read from the shapes
    no_config.mkdir()
    state = load_file(str(peft_dir / "adapter_model.safetensors"))
    first = sorted(k for k in state if ".lora_A." in k)[0]
    state[first] = torch.cat([state[first], state[first]])
    state[first.replace(".lora_A.", ".lora_B.")] = torch.cat([state[first.replace(".lora_A.", ".lora_B.")]] * 2, 1)
    save_file(state, str(no_config / "adapter_model.safetensors"), metadata={"format": "pt"})
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (garbage / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    not_lora = tmp_path / "not-lora"
    not_lora.mkdir()
    save_file({"transformer.proj_out.weight": torch.zeros(2, 2)}, str(not_lora / LORA_WEIGHT_NAME))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    # A Wan LoRA of a deeper model: a block the tiny transformer does not have.
    deeper = tmp_path / "deeper"
    peft_lora("wan2.1-t2v", deeper)
    state = load_file(str(deeper / "adapter_model.safetensors"))
    state.update({k.replace("blocks.1.", "blocks.7."): v.clone()
                  for k, v in state.items() if "blocks.1.attn1.to_q." in k})
    save_file(state, str(deeper / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {
        "missing": (tmp_path / "nope", "not a directory"),
        "empty": (empty, "neither a diffusers LoRA"),
        "no-config": (no_config, rf"no adapter_config.json and its lora_A ranks differ \(\[{RANK}, {2 * RANK}\]\)"),
        "garbage": (garbage, "not a readable safetensors file"),
        "pickled": (pickled, "pickled PEFT weights"),
        "not-lora": (not_lora, "pytorch_lora_weights.safetensors holds no LoRA weights"),
        "other-model": (peft_dir, "not a LoRA of this WanPipeline"),  # a CogVideoX LoRA
        "deeper": (deeper, "1 of its 17 modules are not in this wan2.1-t2v transformer .e.g. blocks.7.attn1.to_q."),
    }


def test_a_bad_lora_dir_is_one_line_naming_it(tmp_path):
    model = ModelConfig(family="wan2.1-t2v")
    pipe = build_pipeline(model)
    for _, (path, message) in _bad_dirs(tmp_path).items():
        with pytest.raises(InputError, match=message) as err:
            load_lora(pipe, model, str(path), scale=1.0, source=f"s3://bucket/{path.name}")
        assert str(err.value).startswith(f"LoRA s3://bucket/{path.name}: ") and "\n" not in str(err.value)
    assert not pipe.get_list_adapters().get("transformer"), "a refused LoRA leaves no adapter behind"


def test_two_experts_need_a_diffusers_lora_file_each(tmp_path):
    adapter = peft_lora("wan2.1-t2v", tmp_path / "peft")  # same transformer layout as one A14B expert
    model = ModelConfig(family="wan2.2-t2v-a14b")
    with pytest.raises(InputError, match="wan2.2-t2v-a14b has 2 experts and needs a diffusers LoRA"):
        load_lora(build_pipeline(model), model, str(tmp_path / "peft"), scale=1.0)
    one_file = _diffusers_equivalent(adapter, "wan2.1-t2v", tmp_path / "one-file")
    with pytest.raises(InputError, match="has no pytorch_lora_weights_transformer_2.safetensors, the LoRA of "
                                         "wan2.2-t2v-a14b's transformer_2"):
        check_lora(model, str(one_file))


def test_convert_command_bad_dir_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "convert-lora", str(tmp_path), str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1] == (f"videogpa: error: LoRA {tmp_path}: neither a diffusers LoRA "
                         "(pytorch_lora_weights.safetensors) nor a PEFT adapter (adapter_model.safetensors, with or "
                         "without adapter_config.json)")
    assert not (tmp_path / "o").exists()


def test_convert_to_peft_writes_the_official_layout_and_converts_back(tmp_path):
    """A videogpa LoRA as the official releases' PEFT layout: PEFT itself loads it and computes what
    the diffusers LoRA computes; converted back, every tensor is the same; the model card goes along."""
    from peft import PeftModel

    family = "cogvideox-t2v"
    adapter = peft_lora(family, tmp_path / "peft")
    ours = _diffusers_equivalent(adapter, family, tmp_path / "ours")
    (ours / "README.md").write_text("# card\n")
    args = build_parser().parse_args(["convert-lora", "--to", "peft", str(ours), str(tmp_path / "release")])
    assert args.handler(args) == 0
    release = tmp_path / "release"
    assert sorted(os.listdir(release)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((release / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (RANK, ALPHA)
    assert sorted(config["target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]  # as the official releases
    pipe = build_pipeline(ModelConfig(family=family))
    probe = DenoiserProbe(pipe, family)
    loaded = PeftModel.from_pretrained(build_pipeline(ModelConfig(family=family)).transformer, str(release))
    _close(probe(loaded.base_model.model), probe(adapter.base_model.model))

    back = tmp_path / "back"
    assert args.handler(build_parser().parse_args(["convert-lora", str(release), str(back)])) == 0
    a, b = load_file(str(ours / LORA_WEIGHT_NAME)), load_file(str(back / LORA_WEIGHT_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (back / "README.md").read_text() == "# card\n"
    with pytest.raises(InputError, match="already a PEFT adapter"):
        args.handler(build_parser().parse_args(["convert-lora", "--to", "peft", str(release), str(tmp_path / "x")]))
