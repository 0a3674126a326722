"""LoRAs as the official VideoGPA code saves them, made from the tiny presets, and what they compute
there: PEFT's own adapter on the transformer, as the official inference scripts apply them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from actors.families import get_family
from actors.model_config import ModelConfig
from actors.models import build_denoiser, encode_training_inputs, tiny_sampling

# r and alpha in the ratio of the official releases (r 64, alpha 128): PEFT scaling alpha / r = 2.
RANK, ALPHA = 4, 8
# diffusers' names of the Wan attention modules -> the original Wan code's.
_WAN_ORIGINAL = (("attn1.", "self_attn."), ("attn2.", "cross_attn."), ("to_q.", "q."), ("to_k.", "k."),
                 ("to_v.", "v."), ("to_out.0.", "o."))


def peft_lora(family: str, out_dir: Path, wan_original: bool = False, seed: int = 0,
              with_config: bool = True) -> PeftModel:
    """``get_peft_model(tiny transformer).save_pretrained(out_dir)`` with random (non-zero) A and B, as the
    official trainers save; ``wan_original``: then renamed to the original Wan module names (q, k, v, o
    in blocks.N.self_attn / cross_attn), as a LoRA trained on the original Wan code; ``with_config=False``:
    adapter_config.json deleted, as two official releases ship. Returns the adapter."""
    denoiser, _ = build_denoiser(ModelConfig(family=family))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(get_family(family).lora_target_modules),
                        init_lora_weights=False)  # A and B both random: the LoRA changes the output
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(denoiser, config)
    model.save_pretrained(str(out_dir))
    if wan_original:
        _rename_to_wan_original(out_dir)
    if not with_config:
        (out_dir / "adapter_config.json").unlink()
    return model.eval()


def _wan_name(key: str) -> str:
    for ours, theirs in _WAN_ORIGINAL:
        key = key.replace(ours, theirs)
    return key


def _rename_to_wan_original(peft_dir: Path) -> None:
    weights = peft_dir / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({_wan_name(k): v for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    config["target_modules"] = ["q", "k", "v", "o"]  # as the official Wan2.2-TI2V training's
    (peft_dir / "adapter_config.json").write_text(json.dumps(config))


def set_peft_scaling(model: PeftModel, fn) -> None:
    """Rewrite every LoRA layer's scaling as the official inference scripts do before merging."""
    for module in model.modules():
        if isinstance(getattr(module, "scaling", None), dict):
            for name in module.scaling:
                module.scaling[name] = fn(module.scaling[name])


class DenoiserProbe:
    """One fixed denoiser input of ``family``'s tiny preset (latents of a random video, its prompt
    embeddings, a timestep), to compare transformers by their output."""

    def __init__(self, pipe, family: str):
        self.family = get_family(family)
        s = tiny_sampling(family)
        video = np.random.RandomState(0).randint(0, 256, (1, s.num_frames, s.height, s.width, 3), dtype=np.uint8)
        image = video[0, 0] if self.family.requires_image else None
        enc = encode_training_inputs(pipe, ModelConfig(family=family), video, "a red cube", image)
        self.latents, self.prompt_embeds = enc["latents"], enc["prompt_embeds"]
        self.image_latents = enc["image_latents"]
        gen = torch.Generator().manual_seed(0)
        self.t = self.family.sample_timesteps(pipe.scheduler, 1, gen, "cpu")

    @torch.no_grad()
    def __call__(self, transformer: torch.nn.Module) -> torch.Tensor:
        return self.family.predict(transformer, self.latents, self.t, self.prompt_embeds, self.image_latents)
