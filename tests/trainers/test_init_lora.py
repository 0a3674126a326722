"""Warm start (``trainer.init_lora``): the policy the trainer starts from is the given LoRA, in any
format the official code releases, exactly as PEFT's own adapter computes it."""

from __future__ import annotations

import pytest
import torch

from actors.errors import InputError
from actors.families import get_family
from actors.model_config import ModelConfig
from actors.models import build_denoiser, build_pipeline, load_lora
from tests.support.lora import DenoiserProbe, peft_lora
from tests.support.tiny import tiny_pipe
from trainers.config import TrainerConfig
from trainers.lora import POLICY, add_lora, export_lora, policy_state_dict, reference_mode

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# The Wan LoRA as the official Wan2.2-TI2V release ships: no adapter_config.json.
@pytest.mark.parametrize(("family", "wan_original", "with_config"), [("cogvideox-t2v", False, True),
                                                                      ("wan2.2-ti2v", True, False)])
def test_warm_started_policy_is_the_given_lora(family, wan_original, with_config, tmp_path):
    adapter = peft_lora(family, tmp_path / "peft", wan_original=wan_original, with_config=with_config)
    probe = DenoiserProbe(tiny_pipe(family), family)
    fam, model = get_family(family), ModelConfig(family=family)
    denoiser, _ = build_denoiser(model)
    experts = fam.lora_experts(denoiser)
    params = add_lora(experts, TrainerConfig(init_lora=str(tmp_path / "peft")), fam.lora_target_modules)

    # Step 0's policy computes what the official adapter computes; only its A and B train.
    official = probe(adapter.base_model.model)
    torch.testing.assert_close(probe(denoiser), official, rtol=1e-5, atol=1e-6)
    given = [m for m in adapter.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    adapted = [m for m in denoiser.modules() if hasattr(m, "lora_A") and POLICY in m.lora_A]
    assert len(params) == 2 * len(adapted) == 2 * len(given) and all(p.requires_grad for p in params)
    assert not [n for n, p in denoiser.named_parameters() if p.requires_grad and f".{POLICY}." not in n]
    with reference_mode(experts, has_reference_adapter=False):  # the reference is the base model
        torch.testing.assert_close(probe(denoiser), probe(tiny_pipe(family).transformer))

    # What the trainer would export at this point loads back as the same LoRA.
    out = str(tmp_path / "exported")
    export_lora(policy_state_dict(denoiser, zero_stage=2), denoiser, "transformer", fam.pipeline_class, out)
    pipe = build_pipeline(model)
    load_lora(pipe, model, out, scale=1.0)
    torch.testing.assert_close(probe(pipe.transformer), official, rtol=1e-5, atol=1e-6)


def test_a_peft_warm_start_needs_one_lora_per_expert(tmp_path):
    peft_lora("wan2.1-t2v", tmp_path / "peft")
    fam = get_family("wan2.2-t2v-a14b")
    denoiser, _ = build_denoiser(ModelConfig(family="wan2.2-t2v-a14b"))
    with pytest.raises(InputError, match=r"LoRA .*/peft: has no LoRA for the transformer_2 expert"):
        add_lora(fam.lora_experts(denoiser), TrainerConfig(init_lora=str(tmp_path / "peft")), fam.lora_target_modules)


def test_a_bad_warm_start_dir_is_one_line_naming_it(tmp_path):
    fam = get_family("cogvideox-t2v")
    denoiser, _ = build_denoiser(ModelConfig(family="cogvideox-t2v"))
    with pytest.raises(InputError, match=f"^LoRA {tmp_path}: neither a diffusers LoRA"):
        add_lora(fam.lora_experts(denoiser), TrainerConfig(init_lora=str(tmp_path)), fam.lora_target_modules)
