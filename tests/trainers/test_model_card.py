"""The model card of an exported LoRA: what it says, and that its diffusers snippet loads the LoRA."""

from __future__ import annotations

import pytest
import torch

from actors.families import get_family
from actors.families.base import lora_weight_name
from actors.model_config import ModelConfig
from actors.models import build_denoiser, build_pipeline
from tests.support.lora import DenoiserProbe
from trainers.config import TrainerConfig
from trainers.lora import add_lora, export_lora, policy_state_dict
from trainers.model_card import CardInfo, model_card, write_model_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(family: str, base_model: str, evaluation: str | None = None) -> CardInfo:
    fam = get_family(family)
    return CardInfo(base_model=base_model, family=family, pipeline_class=fam.pipeline_class.__name__,
                    recipe="quickstart (s3://b/run/config.yaml)", round_index=1, rounds=3, pairs=42, lora_scale=0.2,
                    expert_files=tuple(lora_weight_name(e) for e in fam.experts), evaluation=evaluation)


def test_card_says_base_recipe_rounds_pairs_and_evaluation():
    table = "metric  base  LoRA  delta\n3dcs ↑  0.5   0.6   +0.1"
    card = model_card(_info("wan2.2-t2v-a14b", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", table))
    assert card.startswith("---\nbase_model: Wan-AI/Wan2.2-T2V-A14B-Diffusers\nlibrary_name: diffusers\n")
    for line in ("- recipe: `quickstart (s3://b/run/config.yaml)`", "- rounds: 2 of 3", "- preference pairs (this "
                 "round): 42", table, "load_into_transformer_2=True", "pytorch_lora_weights_transformer_2.safetensors",
                 'pipe.set_adapters(["videogpa"], [0.2])'):
        assert line in card, line
    assert "No evaluation yet" in model_card(_info("wan2.2-t2v-a14b", "x"))


def test_exported_lora_card_loads_with_its_own_snippet(tmp_path):
    """The exported directory with its card; the card's code, run as written, loads the LoRA into the base."""
    family = "cogvideox-t2v"
    fam, model = get_family(family), ModelConfig(family=family)
    base = tmp_path / "base"
    build_pipeline(model).save_pretrained(base)
    denoiser, _ = build_denoiser(model)
    experts = fam.lora_experts(denoiser)
    add_lora(experts, TrainerConfig(lora_rank=4, lora_alpha=8), fam.lora_target_modules)
    with torch.no_grad():
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a LoRA that changes the output
    out = tmp_path / "lora"
    export_lora(policy_state_dict(denoiser, zero_stage=2), denoiser, "transformer", fam.pipeline_class, str(out))
    write_model_card(str(out), model_card(_info(family, str(base))))
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0].replace("<this directory>", str(out))
    scope: dict = {}
    exec(snippet.replace("torch.bfloat16", "torch.float32"), scope)  # noqa: S102 (the card's own code)
    pipe = scope["pipe"]
    assert pipe.get_list_adapters() == {"transformer": ["videogpa"]}
    pipe.set_adapters(["videogpa"], [1.0])
    probe = DenoiserProbe(pipe, family)
    torch.testing.assert_close(probe(pipe.transformer), probe(denoiser), rtol=1e-5, atol=1e-6)
