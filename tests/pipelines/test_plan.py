"""`videogpa plan` and preflight's memory check: configs on the meta device, no weights, no Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actors.errors import InputError
from pipelines.config import load_config
from pipelines.plan import GIB, STAGES, memory_plan, plan_stages
from pipelines.preflight import check_gpu_memory

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))
A14B = REPO / "configs" / "wan2.2-t2v-a14b.yaml"


def test_a14b_generation_fits_80_gib_with_the_default_offload():
    default = plan_stages(load_config(A14B))["generate"]
    both = plan_stages(load_config(A14B, ["sampling.offload_idle_expert=false"]))["generate"]
    assert default.total < 80 * GIB and default.total <= default.budget_gib * GIB
    expert = both.weights - default.weights  # the expert kept in host memory
    assert 26 * GIB < expert < 27 * GIB  # 14.3B parameters in bf16
    assert both.weights > 2 * expert
    # At Wan's 720p the activations grow: both experts on the GPU no longer fit, one does.
    hd = ["sampling.height=720", "sampling.width=1280"]
    assert plan_stages(load_config(A14B, hd))["generate"].total < 80 * GIB
    assert plan_stages(load_config(A14B, [*hd, "sampling.offload_idle_expert=false"]))["generate"].total > 80 * GIB


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_only_the_text_stage_lists_a_text_encoder(recipe):
    plan = memory_plan(load_config(recipe))
    assert set(plan["stages"]) == set(STAGES)
    for stage, entry in plan["stages"].items():
        assert ("text_encoder" in entry["components"]) == (stage == "text"), (stage, entry["components"])
        assert entry["total_gib"] == pytest.approx(entry["weights_gib"] + entry["activations_gib"], abs=0.011)
    assert plan["stages"]["encode"]["components"] == ["vae"]


@pytest.mark.parametrize("family, params, lora", [
    ("cogvideox-t2v", 5.64e9, 66.1e6),  # README, Measured: real_size.py (transformer + LoRA r=64, and the LoRA)
    ("wan2.2-ti2v", 5.09e9, 94.4e6),
])
def test_meta_parameter_counts_match_the_published_architectures(family, params, lora):
    from actors.families import get_family
    from pipelines.plan import _components, _lora_params

    cfg = load_config(REPO / "configs" / "quickstart.yaml",
                      [f"model.family={family}", "model.pretrained=random-full-size", "model.dtype=bfloat16"])
    fam = get_family(family)
    modules, source = _components(cfg, fam, {"transformer"})
    transformer = modules["transformer"]
    assert next(transformer.parameters()).is_meta and "published configs" in source
    counted_lora = _lora_params(transformer, fam.lora_target_modules, 64)
    assert counted_lora == pytest.approx(lora, rel=1e-3)
    assert sum(p.numel() for p in transformer.parameters()) + counted_lora == pytest.approx(params, rel=1e-3)


def test_cli_json_is_the_last_line_and_starts_no_ray(tmp_path):
    code = ("import sys; from pipelines.cli import main; "
            f"rc = main(['plan', '--config', {str(REPO / 'configs' / 'quickstart.yaml')!r}, '--json']); "
            "assert 'ray' not in sys.modules, 'plan imported ray'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("videogpa plan: cogvideox-t2v")
    plan = json.loads(lines[-1])
    assert set(plan) == {"stages", "gpu_memory_gib", "gpu_hours_per_round"}
    assert plan["gpu_memory_gib"] == 80.0 and plan["gpu_hours_per_round"] >= 0
    for entry in plan["stages"].values():
        assert set(entry) == {"components", "weights_gib", "activations_gib", "total_gib", "fits"}


def test_preflight_refuses_a_gpu_pool_its_actors_cannot_fit():
    too_small = load_config(A14B, ["generation_pool.gpu_memory_gib=40"])
    with pytest.raises(InputError) as err:
        check_gpu_memory(too_small, "generate")
    message = str(err.value)
    total = plan_stages(too_small)["generate"].total / GIB
    assert "\n" not in message
    assert message.startswith("generation_pool.gpu_memory_gib: generation_pool needs")
    assert f"{total:.1f} GiB" in message and "1 GPU of 40 GiB" in message
    check_gpu_memory(load_config(A14B), "generate")  # the recipe fits its 80 GiB GPUs
    # Pools without GPUs are not checked, however little memory they name.
    check_gpu_memory(load_config(A14B, ["generation_pool.num_gpus=0", "scoring_pool.num_gpus=0",
                                        "generation_pool.gpu_memory_gib=1"]), "generate")
