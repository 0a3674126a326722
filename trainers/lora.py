"""LoRA policy + reference on one network (peft through diffusers' PeftAdapterMixin).

The reference model of Diffusion-DPO is *the same transformer*: with ``reference="base"`` it is
the network with adapters disabled; with ``reference="previous_round"`` it is a frozen second
adapter (``"reference"``) holding the previous round's LoRA, and the trainable ``"policy"``
adapter starts as a copy of it (so policy == reference at step 0 and the loss starts at ln 2).
Either way no second copy of the 5B weights is held (see benchmarks/trainer.py for the saving).

A family with two experts (Wan2.2-A14B) gets one policy (and reference) adapter on each; every
function here takes the family's ``lora_experts`` (pipeline component name -> module) and each
expert exports to its own diffusers file (``actors.families.base.lora_weight_name``).

Warm start (``trainer.init_lora``): round 0's policy starts from a given LoRA, e.g. an official
release in PEFT format, exactly as that adapter computes (its r and alpha); the reference is the base.

Inference: the exported LoRA loads with ``pipe.load_lora_weights(dir)``. ``sampling.lora_scale`` is
the ``set_adapters`` weight, the update being scaled by weight × alpha / r: the recipes use 1.0 for
CogVideoX-5B, 0.2 for Wan and 0.1 for CogVideoX1.5 (the official script's absolute PEFT scaling 0.2
at alpha / r = 2). The scale is an inference-time choice; training always runs the adapter at
scale 1 (alpha / r).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from actors.errors import InputError
from actors.families.base import lora_weight_name
from actors.lora_formats import diffusers_lora_dir
from trainers.config import TrainerConfig

POLICY = "policy"
REFERENCE = "reference"


def lora_config(cfg: TrainerConfig, target_modules: tuple[str, ...] | list[str]) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(target_modules),
        init_lora_weights=True,  # B = 0: the policy starts equal to its reference
    )


def _tuner_layers(module: torch.nn.Module) -> Iterator[BaseTunerLayer]:
    return (m for m in module.modules() if isinstance(m, BaseTunerLayer))


def _set_active(module: torch.nn.Module, name: str, frozen: bool) -> None:
    # peft's set_adapter also flips requires_grad (active -> trainable unless inference_mode).
    for layer in _tuner_layers(module):
        layer.set_adapter(name, inference_mode=frozen)


def add_lora(
    experts: dict[str, torch.nn.Module],
    cfg: TrainerConfig,
    target_modules: tuple[str, ...] | list[str],
    previous_lora_dir: str | None = None,
    reference_is_previous: bool = False,
) -> list[torch.nn.Parameter]:
    """Freeze the base weights and add the trainable ``policy`` adapter to each expert. With a
    previous round's LoRA (a local diffusers-format dir) the policy starts from it; it is also kept
    as the frozen ``reference`` adapter when ``reference_is_previous`` (else the reference is the base).
    Without one, ``cfg.init_lora`` (any format ``actors.lora_formats`` reads) is the warm start.
    Returns the trainable parameters (exactly the policies' LoRA A/B matrices)."""
    start = previous_lora_dir or cfg.init_lora
    params: list[torch.nn.Parameter] = []
    with torch.random.fork_rng(devices=[]), \
            diffusers_lora_dir(start) if start else contextlib.nullcontext() as start_dir:
        # LoRA A is randomly initialised: seed it so every rank, and every rerun, starts identical.
        torch.manual_seed(cfg.seed)
        for name, expert in experts.items():
            if start_dir and not os.path.isfile(os.path.join(start_dir, lora_weight_name(name))):
                raise InputError(f"LoRA {start}: has no LoRA for the {name} expert ({lora_weight_name(name)}; "
                                 "a PEFT adapter holds one transformer's)")
            params += _add_expert_lora(expert, name, cfg, target_modules, start_dir, reference_is_previous)
    return params


def _add_expert_lora(transformer: torch.nn.Module, expert: str, cfg: TrainerConfig,
                     target_modules: tuple[str, ...] | list[str], start_dir: str | None,
                     reference_is_previous: bool) -> list[torch.nn.Parameter]:
    transformer.requires_grad_(False)
    if start_dir is None:
        transformer.add_adapter(lora_config(cfg, target_modules), adapter_name=POLICY)
    else:
        # rank/alpha come from the file's adapter metadata (written by export_lora or the conversion).
        transformer.load_lora_adapter(
            start_dir, weight_name=lora_weight_name(expert), prefix="transformer", adapter_name=REFERENCE
        )
        pol_cfg = copy.deepcopy(transformer.peft_config[REFERENCE])
        pol_cfg.inference_mode = False
        pol_cfg.lora_dropout = cfg.lora_dropout
        with warnings.catch_warnings():  # "multiple adapters": intended here
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            transformer.add_adapter(pol_cfg, adapter_name=POLICY)
        _copy_adapter(transformer, src=REFERENCE, dst=POLICY)
        if not reference_is_previous:
            transformer.delete_adapters(REFERENCE)
    _set_active(transformer, POLICY, frozen=False)
    params = [p for n, p in transformer.named_parameters() if f".{POLICY}." in n and "lora_" in n]
    for _n, p in transformer.named_parameters():
        p.requires_grad_(any(p is q for q in params))
    if not params:
        raise ValueError(f"no LoRA target module among {list(target_modules)} in {type(transformer).__name__}")
    return params


@torch.no_grad()
def _copy_adapter(transformer: torch.nn.Module, src: str, dst: str) -> None:
    for layer in _tuner_layers(transformer):
        for attr in ("lora_A", "lora_B"):
            mods = getattr(layer, attr, None)
            if mods is not None and src in mods:
                mods[dst].weight.copy_(mods[src].weight)


@contextlib.contextmanager
def reference_mode(experts: dict[str, torch.nn.Module], has_reference_adapter: bool) -> Iterator[None]:
    """Run the block as the frozen reference model (no grad), then restore the policy."""
    try:
        with torch.no_grad():
            for transformer in experts.values():
                if has_reference_adapter:
                    _set_active(transformer, REFERENCE, frozen=True)
                else:
                    transformer.disable_adapters()
            yield
    finally:
        for transformer in experts.values():
            if has_reference_adapter:
                _set_active(transformer, POLICY, frozen=False)
            else:
                transformer.enable_adapters()


def policy_state_dict(transformer: torch.nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full (un-partitioned) policy LoRA weights on CPU, keys as diffusers expects them.
    Collective under ZeRO-3: every rank must call it."""
    params = [p for n, p in transformer.named_parameters() if f".{POLICY}." in n]
    ctx: Any = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with ctx:
        state = get_peft_model_state_dict(transformer, adapter_name=POLICY)
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def export_lora(
    state: dict[str, torch.Tensor], transformer: torch.nn.Module, expert: str, pipeline_class: Any, out_dir: str
) -> str:
    """Write expert ``expert``'s policy LoRA to ``<out_dir>/<lora_weight_name(expert)>`` in diffusers
    format (+ the LoRA config as safetensors metadata, so loading uses the trained alpha / r)."""
    os.makedirs(out_dir, exist_ok=True)
    meta = transformer.peft_config[POLICY].to_dict()
    meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
    # diffusers saves every expert's layers under the "transformer" prefix; loading picks the expert.
    pipeline_class.save_lora_weights(
        out_dir,
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=meta,
        weight_name=lora_weight_name(expert),
    )
    return os.path.join(out_dir, lora_weight_name(expert))
